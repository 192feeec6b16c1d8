// Bootfabric rack view. Plain script, no build step, no library: it loads /ui/state, follows
// /ui/events (EventSource resumes with Last-Event-ID by itself) and polls /ui/pulse.
//
// Everything shown comes from the ledger, and host names, paths and reasons come from the
// network: they only ever enter the page as text (textContent, attribute values), never as
// markup.
"use strict";

(function () {
  // The columns of a boot, in order, and the ledger phases that mark each.
  const COLUMNS = ["reset", "dhcp", "loader", "gate", "script", "download", "config", "booted"];
  const COLUMN_OF = {
    bmc_reset: "reset",
    dhcp_offer: "dhcp",
    dhcp_ack: "dhcp",
    tftp_sent: "loader",
    admitted: "gate",
    ipxe_script: "script",
    http_started: "download",
    http_sent: "download",
    config_served: "config",
    booted: "booted",
    tftp_failed: "failed",
    http_failed: "failed",
    bmc_failed: "failed",
    boot_failed: "failed",
    config_refused: "failed",
    dhcp_nak: "failed",
    dhcp_decline: "failed",
  };
  // host.phase's data.phase, as the columns name them.
  const API_PHASE = { dhcp: "dhcp", loader: "loader", script: "script", kernel: "download", config: "config" };
  // How a failing event reads in the Failure column, before its ledger detail.
  const FAILURE = {
    tftp_failed: "TFTP transfer failed",
    http_failed: "download ended early",
    bmc_failed: "BMC operation failed",
    boot_failed: "boot given up",
    config_refused: "config refused",
    dhcp_nak: "DHCP NAK",
    dhcp_decline: "address declined",
  };
  const FILTERS = ["rack", "model", "profile"];
  const PULSE_MS = 2000;
  const FETCH_MS = 10000;
  // The whole state is read again this often even without events (a safety net: the
  // stream's events only trigger reads).
  const REFRESH_MS = 30000;
  const HISTORY = 180; // samples of the chart: six minutes at PULSE_MS
  const SVG = "http://www.w3.org/2000/svg";

  // /ui/state is shared for a second (admin/view.rs, STATE_FRESH): a body read just after an
  // event may predate it. Such a body is read again once it has expired.
  const STALE_MS = 1100;
  const state = { hosts: [], lastEventId: 0, seenEventId: 0, history: [], peak: 0, source: null };
  let refetching = false;
  let refetchAgain = false;
  let refetchTimer = null;

  const $ = (id) => document.getElementById(id);

  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k of Object.keys(attrs || {})) e.setAttribute(k, String(attrs[k]));
    return e;
  }

  function rate(bps) {
    const units = ["B/s", "kB/s", "MB/s", "GB/s"];
    let v = Number(bps) || 0;
    let i = 0;
    while (v >= 1000 && i < units.length - 1) { v /= 1000; i++; }
    return (i === 0 ? v.toFixed(0) : v.toFixed(1)) + " " + units[i];
  }

  function clock(ms) {
    return new Date(ms).toLocaleTimeString([], { hour12: false });
  }

  const terminal = (p) => p === "booted" || p === "boot_failed";

  // The last boot of a timeline: the events after the previous boot's end (booted,
  // boot_failed), from the last BMC reset among them. DHCP alone after an end is the
  // installed system renewing its lease, not a new boot: the ended boot stays the last.
  function lastBoot(events) {
    let end = -1;
    events.forEach((e, i) => { if (terminal(e.phase)) end = i; });
    let boot = events.slice(end + 1);
    if (end >= 0 && boot.every((e) => e.phase.startsWith("dhcp_"))) {
      let before = -1;
      for (let i = 0; i < end; i++) if (terminal(events[i].phase)) before = i;
      boot = events.slice(before + 1, end + 1);
    }
    const reset = boot.map((e) => e.phase).lastIndexOf("bmc_reset");
    return reset > 0 ? boot.slice(reset) : boot;
  }

  // What a host's row shows: its last boot's first time in each column, its phase now, and
  // the reason of its last failure in that boot.
  function summarize(host) {
    const boot = lastBoot(host.events || []);
    const s = { boot: boot, at: {}, phase: "idle", reason: null, failedAt: null, start: null };
    for (const e of boot) {
      const col = COLUMN_OF[e.phase] || "other";
      if (s.start === null) s.start = e.at_ms;
      if (col === "failed") {
        const what = FAILURE[e.phase] || e.phase;
        s.reason = e.detail ? what + ": " + e.detail : what;
        s.failedAt = e.at_ms;
      }
      if (col !== "failed" && col !== "other" && s.at[col] === undefined) s.at[col] = e.at_ms;
    }
    for (let i = boot.length - 1; i >= 0; i--) {
      const col = COLUMN_OF[boot[i].phase];
      if (col) { s.phase = col; break; }
    }
    return s;
  }

  function matches(host) {
    for (const key of FILTERS) {
      const want = $("filter-" + key).value;
      if (want && (host[key] || "") !== want) return false;
    }
    return true;
  }

  // One host's last boot on the rack's shared time axis (range.t0 to range.t1): a bar from
  // its first to its last event, a dot per event in its column's colour.
  function timelineSvg(sum, range) {
    const box = svg("svg", { class: "tl", viewBox: "0 0 240 16" });
    box.appendChild(svg("line", { x1: 4, y1: 8, x2: 236, y2: 8 }));
    const boot = sum.boot;
    if (!boot.length) return box;
    const t0 = boot[0].at_ms;
    const span = Math.max(range.t1 - range.t0, 1);
    const at = (ms) => 4 + ((ms - range.t0) / span) * 232;
    box.appendChild(svg("rect", {
      class: "span",
      x: at(t0).toFixed(1),
      y: 5,
      width: Math.max(at(boot[boot.length - 1].at_ms) - at(t0), 1).toFixed(1),
      height: 6,
    }));
    for (const e of boot) {
      const col = COLUMN_OF[e.phase] || "other";
      const x = at(e.at_ms);
      const dot = svg("circle", { cx: x.toFixed(1), cy: 8, r: 4, class: col });
      const title = svg("title");
      title.textContent = e.phase + " +" + ((e.at_ms - t0) / 1000).toFixed(1) + " s" + (e.detail ? ": " + e.detail : "");
      dot.appendChild(title);
      box.appendChild(dot);
    }
    return box;
  }

  function renderHead() {
    const head = $("hosts-head");
    const cells = ["Host", "Rack", "Model", "Profile", "Phase", "Started"]
      .concat(COLUMNS)
      .map((c) => el("th", c));
    const timeline = el("th", "Timeline ");
    timeline.appendChild(el("span", "", "axis"));
    timeline.lastChild.id = "timeline-axis";
    cells.push(timeline, el("th", "Failure"));
    head.replaceChildren(...cells);
  }

  function renderHosts() {
    const body = $("hosts-body");
    const rows = [];
    const failures = [];
    let shown = 0, booted = 0, failed = 0, busy = 0;
    const sums = state.hosts.map((h) => [h, summarize(h)]);
    // The shared axis: from the earliest shown boot's start to the latest event shown.
    const range = { t0: Infinity, t1: -Infinity };
    for (const [h, sum] of sums) {
      if (!sum.boot.length || !matches(h)) continue;
      range.t0 = Math.min(range.t0, sum.boot[0].at_ms);
      range.t1 = Math.max(range.t1, sum.boot[sum.boot.length - 1].at_ms);
    }
    const axis = $("timeline-axis");
    if (axis) {
      axis.textContent = Number.isFinite(range.t0)
        ? clock(range.t0) + " to " + clock(range.t1) + " (" + ((range.t1 - range.t0) / 1000).toFixed(1) + " s)"
        : "";
    }
    for (const [host, sum] of sums) {
      const tr = document.createElement("tr");
      tr.dataset.host = host.name;
      tr.dataset.phase = sum.phase;
      tr.dataset.rack = host.rack || "";
      tr.dataset.model = host.model || "";
      tr.dataset.profile = host.profile || "";
      tr.dataset.events = String((host.events || []).length);
      tr.hidden = !matches(host);
      tr.appendChild(el("td", host.name));
      tr.appendChild(el("td", host.rack || "-"));
      tr.appendChild(el("td", host.model || "-"));
      tr.appendChild(el("td", host.profile || "-"));
      const badgeCell = document.createElement("td");
      const badge = el("span", sum.phase, "badge");
      badge.dataset.phase = sum.phase;
      badgeCell.appendChild(badge);
      tr.appendChild(badgeCell);
      tr.appendChild(el("td", sum.start === null ? "-" : clock(sum.start), "t"));
      for (const col of COLUMNS) {
        const at = sum.at[col];
        const td = el("td", at === undefined ? "" : "+" + ((at - sum.start) / 1000).toFixed(1) + " s", "t");
        td.dataset.col = col;
        if (at !== undefined) { td.classList.add("done"); td.dataset.atMs = String(at); }
        tr.appendChild(td);
      }
      const tl = document.createElement("td");
      tl.appendChild(timelineSvg(sum, range));
      tr.appendChild(tl);
      const why = el("td", sum.reason || "", "reason");
      why.dataset.col = "failure";
      tr.appendChild(why);
      rows.push(tr);
      if (!tr.hidden) {
        shown++;
        if (sum.phase === "booted") booted++;
        else if (sum.phase === "failed") failed++;
        else if (sum.phase !== "idle") busy++;
        if (sum.reason) failures.push([host.name, sum.reason, sum.failedAt]);
      }
    }
    body.replaceChildren(...rows);
    const list = failures.sort((a, b) => b[2] - a[2]).map(([name, reason, at]) => {
      const li = document.createElement("li");
      li.dataset.host = name;
      li.appendChild(el("span", name, "who"));
      li.appendChild(el("span", reason));
      li.appendChild(el("span", " (" + clock(at) + ")"));
      return li;
    });
    if (!list.length) list.push(el("li", "none", "none"));
    $("failures").replaceChildren(...list);
    const counts = $("counts");
    counts.dataset.hosts = String(shown);
    counts.dataset.booted = String(booted);
    counts.dataset.failed = String(failed);
    counts.dataset.busy = String(busy);
    counts.textContent = shown + " hosts: " + booted + " booted, " + busy + " booting, " + failed + " failed";
  }

  function renderFilters() {
    const params = new URLSearchParams(location.search);
    for (const key of FILTERS) {
      const select = $("filter-" + key);
      const current = select.options.length ? select.value : (params.get(key) || "");
      const values = [...new Set(state.hosts.map((h) => h[key]).filter((v) => v))].sort();
      const options = [el("option", "all")];
      options[0].value = "";
      for (const v of values) {
        const o = el("option", v);
        o.value = v;
        options.push(o);
      }
      select.replaceChildren(...options);
      select.value = values.includes(current) ? current : "";
    }
  }

  function onFilter() {
    const params = new URLSearchParams();
    for (const key of FILTERS) {
      const v = $("filter-" + key).value;
      if (v) params.set(key, v);
    }
    const q = params.toString();
    history.replaceState(null, "", q ? "?" + q : location.pathname);
    renderHosts();
  }

  function renderPulse(p) {
    if (!p || !p.bandwidth || !p.gate) return;
    const bps = Number(p.bandwidth.total_bytes_per_second) || 0;
    state.peak = Math.max(state.peak, bps);
    const b = $("bandwidth");
    b.dataset.bps = String(bps);
    b.dataset.peakBps = String(state.peak);
    b.textContent = rate(bps) + " now, peak " + rate(state.peak) + " (over " + p.bandwidth.window_s + " s)";
    const g = $("gate");
    g.dataset.mode = p.gate.mode;
    g.dataset.slots = String(p.gate.slots);
    g.dataset.admitted = String(p.gate.admitted);
    g.dataset.waiting = String(p.gate.waiting);
    g.textContent = p.gate.mode === "off"
      ? "off: nobody waits"
      : p.gate.mode + ": " + p.gate.admitted + " of " + p.gate.slots + " download slots in use, " + p.gate.waiting + " waiting";
    state.history.push({ at: Number(p.now_ms) || Date.now(), bps: bps, slots: p.gate.admitted, max: p.gate.slots });
    while (state.history.length > HISTORY) state.history.shift();
    renderChart();
    $("updated").textContent = "updated " + clock(Date.now());
  }

  function renderChart() {
    const chart = $("bandwidth-chart");
    const W = 600, top = 14, bottom = 130;
    const h = state.history;
    const nodes = [];
    const maxBps = Math.max(1, ...h.map((s) => s.bps));
    const maxSlots = Math.max(1, ...h.map((s) => Math.max(s.slots, s.max)));
    // The samples kept (at most HISTORY) across the whole width, the newest at the right.
    const x = (i) => (h.length < 2 ? W : (i / (h.length - 1)) * W);
    const y = (v, max) => bottom - (v / max) * (bottom - top);
    const line = (cls, f, max) => svg("polyline", {
      class: cls,
      points: h.map((s, i) => x(i).toFixed(1) + "," + y(f(s), max).toFixed(1)).join(" "),
    });
    nodes.push(svg("line", { x1: 0, y1: bottom, x2: W, y2: bottom, stroke: "#d9d9d4" }));
    if (h.length) {
      nodes.push(line("slots", (s) => s.slots, maxSlots));
      nodes.push(line("bps", (s) => s.bps, maxBps));
    }
    chart.replaceChildren(...nodes);
    const seconds = h.length < 2 ? 0 : (h[h.length - 1].at - h[0].at) / 1000;
    $("chart-scale").textContent = "last " + seconds.toFixed(0) + " s; top: " + rate(maxBps) + ", " + maxSlots + " slots";
    chart.dataset.samples = String(h.length);
  }

  // A read that cannot hang the page: a request without an answer is given up after
  // FETCH_MS (a refetch in flight holds back the next ones).
  async function fetchJson(path) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), FETCH_MS);
    try {
      const r = await fetch(path, { cache: "no-store", credentials: "same-origin", signal: abort.signal });
      if (!r.ok) throw new Error(path + ": " + r.status);
      return await r.json();
    } finally {
      clearTimeout(timer);
    }
  }

  // Reloads the whole state (on load, after events, after a gap or a daemon restart); one
  // request at a time, a burst of events coalesced into one more.
  async function refetch() {
    if (refetching) { refetchAgain = true; return; }
    refetching = true;
    try {
      const s = await fetchJson("/ui/state");
      state.hosts = Array.isArray(s.hosts) ? s.hosts : [];
      state.lastEventId = Number(s.last_event_id) || 0;
      renderFilters();
      renderHosts();
      renderPulse(s);
      document.body.dataset.loaded = "true";
      if (state.lastEventId < state.seenEventId) setTimeout(schedule, STALE_MS);
    } catch (e) {
      setLive("lost", "state: " + e.message);
    } finally {
      refetching = false;
      if (refetchAgain) { refetchAgain = false; schedule(); }
    }
  }

  function schedule() {
    if (refetchTimer !== null) return;
    refetchTimer = setTimeout(() => { refetchTimer = null; refetch(); }, 300);
  }

  function setLive(s, why) {
    const l = $("live");
    l.dataset.state = s;
    l.textContent = s === "live" ? "live" : s === "lost" ? "reconnecting" : "connecting";
    l.title = why || "";
  }

  // An event changes its host's badge at once; the refetch that follows brings its times.
  function onHostEvent(ev) {
    let data;
    try { data = JSON.parse(ev.data); } catch (_) { return; }
    if (!data || typeof data.host !== "string") return;
    const id = Number(ev.lastEventId) || 0;
    if (id > state.seenEventId) state.seenEventId = id;
    let phase = null;
    if (data.type === "host.booted") phase = "booted";
    else if (data.type === "host.failed") phase = "failed";
    else if (data.type === "host.phase" && data.data) phase = API_PHASE[data.data.phase] || null;
    if (phase) {
      for (const tr of $("hosts-body").children) {
        if (tr.dataset.host !== data.host) continue;
        tr.dataset.phase = phase;
        const badge = tr.querySelector(".badge");
        if (badge) { badge.dataset.phase = phase; badge.textContent = phase; }
      }
    }
    document.body.dataset.events = String((Number(document.body.dataset.events) || 0) + 1);
    schedule();
  }

  function follow() {
    const src = new EventSource("/ui/events?last_event_id=" + encodeURIComponent(state.lastEventId));
    state.source = src;
    src.onopen = () => setLive("live");
    src.onerror = () => setLive("lost", "event stream interrupted; the browser reconnects");
    for (const t of ["host.phase", "host.booted", "host.failed"]) src.addEventListener(t, onHostEvent);
    // Missed events, or a restarted daemon: what the ledger holds now is the truth.
    src.addEventListener("gap", schedule);
    src.addEventListener("reset", schedule);
  }

  async function pulse() {
    try {
      renderPulse(await fetchJson("/ui/pulse"));
    } catch (e) {
      setLive("lost", "pulse: " + e.message);
    }
  }

  async function start() {
    renderHead();
    for (const key of FILTERS) $("filter-" + key).addEventListener("change", onFilter);
    await refetch();
    follow();
    setInterval(pulse, PULSE_MS);
    setInterval(schedule, REFRESH_MS);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
