//! Issue 20, the live rack view: headless Chromium (Debian's `chromium`) opens the admin
//! server's page from the operator's network (the control namespace, no token) while
//! machines on the fabric boot for real (udhcpc for DHCP, curl playing firmware: the iPXE
//! script through the admission gate, kernel and initrd over HTTP, `POST /booted`).
//!
//! One page instance stays open throughout: the test reads its DOM over the DevTools
//! protocol and sees a host booted before the page opened, then a second host boot and a
//! third fail (a download cut short) without a reload, the measured bandwidth of the
//! downloads, the gate's slots and the failure's reason; a file name made of markup, fetched
//! by a machine, shows as text and makes no element; the rack filter hides the other racks'
//! hosts. A screenshot of the page is kept (its path is printed).

use std::{path::PathBuf, time::Duration};

use bootfabric_lab::{
    api::Api,
    browser::Browser,
    control::{ControlLab, SERVER_CTL},
    require_programs, require_root,
    simhost::SimHost,
    Daemon,
};

/// Bounds every wait for the page to show something (never a timing check).
const BOUND: Duration = Duration::from_secs(60);
/// Less than the page's 30 s refresh: a stale state must be read again because the stream
/// said so, not because the page refreshes anyway.
const STALE_BOUND: Duration = Duration::from_secs(10);
const HTTP_BASE: &str = "http://10.77.0.1";
const KERNEL_BYTES: usize = 6 << 20;
const INITRD_BYTES: usize = 10 << 20;
/// The rescue kernel, whose download is cut: larger than every socket buffer between the
/// server and curl can hold, so the server cannot have sent it all when curl gives up.
const RESCUE_BYTES: u64 = 256 << 20;

/// Three hosts in two racks, two models; four download slots (200 Mb/s over 50 each).
const INVENTORY: &str = r#"[profiles.linux]
kernel = "linux/vmlinuz"
initrd = ["linux/initrd.img"]
cmdline = "console=ttyS0 bootfabric.booted={{ http_base }}/booted"

[profiles.rescue]
kernel = "rescue/vmlinuz"
initrd = ["linux/initrd.img"]
cmdline = "console=ttyS0 rescue bootfabric.booted={{ http_base }}/booted"

[[hosts]]
name = "node01"
mac = "52:54:00:d0:00:01"
ip = "10.77.0.11"
profile = "linux"
rack = "r1"
model = "r650"

[[hosts]]
name = "node02"
mac = "52:54:00:d0:00:02"
ip = "10.77.0.12"
profile = "linux"
rack = "r1"
model = "r650"

[[hosts]]
name = "node03"
mac = "52:54:00:d0:00:03"
ip = "10.77.0.13"
profile = "rescue"
rack = "r2"
model = "r760"
"#;

fn config(lab: &ControlLab, images: &std::path::Path) -> String {
    format!(
        r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
{admin}
[xdp]
mode = "off"
[http]
root = "{images}"
[dhcp]
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
[scheduler]
gate = "always"
capacity_mbps = 200
per_host_mbps = 50
"#,
        admin = lab.admin_section(),
        images = images.display(),
    )
}

/// A served file's name that is markup, as a machine on the fabric can make a ledger detail.
const MARKUP: &str = "<b id=injected>.img";

/// Where the screenshot and the DOM are kept after the test (the lab's folder is removed).
fn artifacts() -> PathBuf {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/rack-view");
    let _ = std::fs::create_dir_all(&dir);
    dir
}

/// A host's DHCP and boot as its machine makes them; the boot's files all fetched.
fn boot(sim: &SimHost) {
    let ip = sim.dhcp().expect("lease");
    let b = sim.boot(HTTP_BASE, None).expect("boot");
    assert_eq!(b.script_status, 200, "{}: {}", sim.mac, b.script);
    assert_eq!(b.files.len(), 2, "{}: kernel and initrd: {b:?}", sim.mac);
    assert!(b.files.iter().all(|f| f.1 == 200), "{}: {b:?}", sim.mac);
    assert_eq!(b.booted, Some(204), "{} at {ip}: {b:?}", sim.mac);
}

/// The JavaScript that reads one host row's phase.
fn phase_of(host: &str) -> String {
    format!("(document.querySelector('tr[data-host=\"{host}\"]') || {{dataset: {{}}}}).dataset.phase || ''")
}

#[test]
fn the_rack_view_follows_a_lab_boot_live_in_headless_chromium() {
    let t = "the_rack_view_follows_a_lab_boot_live_in_headless_chromium";
    if !require_root(t) || !require_programs(t, &["udhcpc", "curl", "chromium"]) {
        return;
    }
    let began = std::time::Instant::now();
    let step = |what: &str| {
        eprintln!(
            "rack_view: {what} at {:.1} s",
            began.elapsed().as_secs_f64()
        )
    };
    let mut lab = ControlLab::new().expect("lab");
    let images = lab.folder("images/linux").expect("images");
    std::fs::write(
        images.join("vmlinuz"),
        bootfabric_lab::content(KERNEL_BYTES, 1),
    )
    .expect("kernel");
    std::fs::write(
        images.join("initrd.img"),
        bootfabric_lab::content(INITRD_BYTES, 2),
    )
    .expect("initrd");
    let rescue = lab.folder("images/rescue").expect("rescue images");
    std::fs::File::create(rescue.join("vmlinuz"))
        .and_then(|f| f.set_len(RESCUE_BYTES))
        .expect("rescue kernel (sparse)");
    let cfg = config(&lab, lab.dir.path.join("images").as_path());
    let sims: Vec<SimHost> = (1..=3)
        .map(|i| SimHost::new(&mut lab.fabric, &format!("52:54:00:d0:00:{i:02x}")).expect("sim"))
        .collect();
    let mut daemon =
        Daemon::start(&lab.server, &cfg, &[("hosts.toml", INVENTORY)]).expect("daemon");
    let base = format!("http://{}", daemon.admin);
    assert!(
        base.contains(SERVER_CTL),
        "the admin server is on the control network: {base}"
    );

    // The page and its feeds need no token (admin.allow lets the control network in); the
    // private reads still do. The page is served with a strict policy.
    let anon = Api::new(&lab.ctl, daemon.admin, None);
    let page = anon.get("/").expect("GET /");
    assert_eq!(page.status, 200, "{page:?}");
    assert!(page
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/html"));
    let csp = page.header("content-security-policy").unwrap_or("");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "connect-src 'self'",
    ] {
        assert!(csp.contains(directive), "CSP {csp:?} lacks {directive}");
    }
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let tag = page.etag().expect("etag");
    let again = anon
        .request("GET", "/", &[("If-None-Match", tag.as_str())], None)
        .expect("GET / again");
    assert_eq!(again.status, 304, "{again:?}");
    let script = anon.get("/ui/app.js").expect("script");
    assert_eq!(script.status, 200);
    assert!(script
        .header("content-type")
        .unwrap_or("")
        .starts_with("text/javascript"));
    let state = anon.get("/ui/state").expect("state");
    assert_eq!(state.status, 200);
    // No open read lists the reserved hosts' MACs.
    assert!(state.body.contains("node01"), "{}", state.body);
    assert!(
        !state.body.to_ascii_lowercase().contains("52:54:00:d0"),
        "a MAC in /ui/state: {}",
        state.body
    );
    assert_eq!(anon.get("/api/v1/hosts").expect("hosts").status, 401);

    // node01 boots before the page is opened: the page shows what the ledger holds at load.
    boot(&sims[0]);
    step("node01 booted");

    let mut browser = Browser::open(&lab.ctl, &format!("{base}/"), 1500, 700).expect("chromium");
    let (loaded, _) = browser.wait_until("document.body.dataset.loaded === 'true'", BOUND);
    assert!(
        loaded,
        "the page did not load its state:\n{}",
        browser.log()
    );
    let (live, state) = browser.wait_until(
        "document.getElementById('live').dataset.state === 'live'",
        BOUND,
    );
    assert!(live, "the event stream did not connect: {state}");
    step("page loaded and live");
    // The state this page loaded may be the body this test read above, before node01 booted:
    // one body is shared for a second. The stream then told the page of node01's events, and
    // the page reads the state again once that body has expired (not at its 30 s refresh).
    let (caught_up, cols) = browser.wait_until(
        "['dhcp', 'gate', 'script', 'download', 'booted'].every(c => document.querySelector(`tr[data-host=\"node01\"] td.done[data-col=\"${c}\"]`))",
        STALE_BOUND,
    );
    assert!(caught_up, "node01's row never got its times: {cols}");
    step("node01's times shown");
    // A mark in this page instance: a reload would lose it.
    browser
        .eval("window.rackViewMark = 'same page'; true")
        .expect("mark");
    let rows = browser
        .eval("[...document.querySelectorAll('tr[data-host]')].map(r => r.dataset.host + ':' + r.dataset.phase)")
        .expect("rows");
    assert_eq!(
        rows,
        serde_json::json!(["node01:booted", "node02:idle", "node03:idle"]),
        "at load"
    );
    let cols = browser
        .eval("[...document.querySelectorAll('tr[data-host=\"node01\"] td.done')].map(c => c.dataset.col)")
        .expect("node01's columns");
    for col in ["dhcp", "gate", "script", "download", "booted"] {
        assert!(
            cols.as_array().is_some_and(|a| a.iter().any(|c| c == col)),
            "node01's row has no time for {col}: {cols}"
        );
    }

    // node02 boots while the page is open: its row changes in place.
    boot(&sims[1]);
    let (booted, last) = browser.wait_until(&format!("{} === 'booted'", phase_of("node02")), BOUND);
    assert!(booted, "node02 never showed booted: {last}");
    step("node02 booted on the page");

    // node03 asks DHCP and its script, then its kernel download is cut short (the machine
    // gives up after a second, reading at 100 kB/s): a failure, with its reason.
    sims[2].dhcp().expect("node03 lease");
    // A machine on the fabric fetches a file whose name is markup: its path reaches the
    // ledger as the machine sent it, and the page must show it as text, never as markup.
    std::fs::write(rescue.join(MARKUP), b"x").expect("markup file");
    let (status, _) = sims[2]
        .curl(
            &[],
            &format!("{HTTP_BASE}/rescue/%3Cb%20id%3Dinjected%3E.img"),
        )
        .expect("markup file fetch");
    assert_eq!(status, 200);
    let (status, script) = sims[2]
        .curl(&[], &format!("{HTTP_BASE}/boot.ipxe"))
        .expect("node03 script");
    assert_eq!(status, 200, "{script}");
    let cut = sims[2]
        .ns
        .command("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "--limit-rate",
            "100K",
            "--max-time",
            "1",
        ])
        .arg(format!("{HTTP_BASE}/rescue/vmlinuz"))
        .output()
        .expect("curl");
    assert!(
        !cut.status.success(),
        "the download was meant to be cut short"
    );
    let (failed, last) = browser.wait_until(&format!("{} === 'failed'", phase_of("node03")), BOUND);
    assert!(failed, "node03 never showed failed: {last}");
    step("node03 failed on the page");
    let (shown, title) = browser.wait_until(
        "document.querySelector('tr[data-host=\"node03\"] svg.tl').textContent",
        BOUND,
    );
    assert!(
        shown && title.as_str().is_some_and(|t| t.contains(MARKUP)),
        "node03's timeline does not show the markup path as text: {title}"
    );
    assert_eq!(
        browser
            .eval("document.getElementById('injected') === null && document.querySelectorAll('b').length === 0")
            .expect("no injected element"),
        true,
        "a path from the network became markup"
    );
    let (reason, text) = browser.wait_until(
        "(document.querySelector('#failures li[data-host=\"node03\"]') || {}).textContent || ''",
        BOUND,
    );
    assert!(
        reason,
        "no failure listed for node03; the page says {}; the state: {}",
        browser
            .eval("document.getElementById('live').title + ' / ' + document.body.dataset.events + ' / ' + document.querySelector('tr[data-host=\"node03\"]').outerHTML")
            .unwrap_or_default(),
        anon.get("/ui/state").map(|r| r.body).unwrap_or_default()
    );
    assert!(
        text.as_str()
            .is_some_and(|s| s.contains("download ended early: /rescue/vmlinuz")),
        "the reason names the download: {text}"
    );

    // The downloads were measured (the page polls the fabric's egress), and the gate is shown.
    let (measured, peak) = browser.wait_until(
        "Number(document.getElementById('bandwidth').dataset.peakBps)",
        BOUND,
    );
    assert!(measured, "no bandwidth measured: {peak}");
    let gate = browser
        .eval("Object.assign({}, document.getElementById('gate').dataset)")
        .expect("gate");
    assert_eq!(gate["mode"], "always", "{gate}");
    assert_eq!(gate["slots"], "4", "{gate}");
    let (charted, samples) = browser.wait_until(
        "Number(document.getElementById('bandwidth-chart').dataset.samples) >= 3",
        BOUND,
    );
    assert!(charted, "the chart has too few samples: {samples}");
    step("bandwidth and gate shown");

    // Every update came into this page instance: no reload happened.
    assert_eq!(
        browser.eval("window.rackViewMark").expect("mark"),
        "same page"
    );
    let events = browser
        .eval("Number(document.body.dataset.events || 0)")
        .expect("events");
    assert!(
        events.as_f64().is_some_and(|n| n >= 3.0),
        "the page saw too few live events: {events}"
    );

    // The rack filter shows r2 alone, then all again.
    let visible = "[...document.querySelectorAll('tr[data-host]')].filter(r => !r.hidden).map(r => r.dataset.host)";
    let select = |v: &str| {
        format!(
            "(() => {{ const s = document.getElementById('filter-rack'); s.value = '{v}'; \
             s.dispatchEvent(new Event('change')); return s.value; }})()"
        )
    };
    assert_eq!(browser.eval(&select("r2")).expect("filter"), "r2");
    assert_eq!(
        browser.eval(visible).expect("visible"),
        serde_json::json!(["node03"])
    );
    assert_eq!(browser.eval(&select("")).expect("filter"), "");
    assert_eq!(
        browser
            .eval(visible)
            .expect("visible")
            .as_array()
            .map(Vec::len),
        Some(3)
    );

    // The screenshot: a real PNG of the page with every host's phases.
    let png = browser.screenshot().expect("screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(png.len() > 20_000, "a blank page? {} bytes", png.len());
    let width = u32::from_be_bytes([png[16], png[17], png[18], png[19]]);
    assert!(width >= 1000, "screenshot width {width}");
    let out = artifacts();
    let shot = out.join("rack-view.png");
    std::fs::write(&shot, &png).expect("write screenshot");
    let dom = browser
        .eval("document.documentElement.outerHTML")
        .expect("dom");
    std::fs::write(out.join("rack-view.html"), dom.as_str().unwrap_or("")).expect("write DOM");
    eprintln!(
        "rack view screenshot: {} ({} bytes); DOM: {}",
        shot.display(),
        png.len(),
        out.join("rack-view.html").display()
    );

    // The daemon restarts: the boots from before it are still on a freshly opened page (the
    // ledger reads them back from the boot history), and in `bootfabric history`.
    drop(browser);
    daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("stop");
    daemon.restart().expect("restart");
    step("daemon restarted");
    let base = format!("http://{}", daemon.admin);
    let mut browser = Browser::open(&lab.ctl, &format!("{base}/"), 1500, 700).expect("chromium");
    let (loaded, _) = browser.wait_until("document.body.dataset.loaded === 'true'", BOUND);
    assert!(
        loaded,
        "the page did not load after the restart:\n{}",
        browser.log()
    );
    let rows = browser
        .eval("[...document.querySelectorAll('tr[data-host]')].map(r => r.dataset.host + ':' + r.dataset.phase)")
        .expect("rows");
    assert_eq!(
        rows,
        serde_json::json!(["node01:booted", "node02:booted", "node03:failed"]),
        "after the restart"
    );
    let history = daemon
        .cli(&["history", "--output", "json"])
        .expect("bootfabric history");
    let history: serde_json::Value = serde_json::from_str(&history).expect("history json");
    let ends: Vec<(String, String)> = history["boots"]
        .as_array()
        .expect("boots")
        .iter()
        .map(|b| {
            (
                b["host"].as_str().unwrap_or("").to_owned(),
                b["ending"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    for (host, ending) in [
        ("node01", "booted"),
        ("node02", "booted"),
        ("node03", "failed"),
    ] {
        assert!(
            ends.contains(&(host.to_owned(), ending.to_owned())),
            "{host} {ending} in the history: {history}"
        );
    }
    step("boots from before the restart shown");
}
