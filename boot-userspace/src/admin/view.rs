//! The live rack view: a page served at `GET /` (its script and style under `/ui/`), built
//! into the binary so it works on a provisioning network without internet, and the reads it
//! is fed by: `/ui/state` (every inventory host with its ledger timeline, the bandwidth and
//! the gate), `/ui/pulse` (bandwidth and gate only, polled) and `/ui/events` (the boot events
//! of the event log as SSE, for live updates).
//!
//! Viewing needs no token, so these reads carry a host's name, rack, model and profile and its
//! boot events (phase, time, detail), and never its MAC or address (no open read maps names
//! to MACs: `/api/timeline` answers only a reader who gives the MAC, and the reserved MACs
//! are what a spoofer lacks), its `meta`, BMC or command line. The event stream here is the
//! log's `host.phase`, `host.booted` and `host.failed` only (`host.created` and
//! `host.updated` carry a host's whole record), with `"mac": null`, from a pool of streams of
//! its own ([`MAX_STREAMS`]). `/ui/state` is built at most once a second, off the runtime's
//! workers, and shared ([`StateCache`]).
//!
//! Names, paths and reasons in the ledger come from the network: the page puts them into the
//! document as text only, and the Content-Security-Policy lets it load nothing but its own
//! script and style and talk to nothing but this server.

use http_body_util::Full;
use hyper::{
    body::Bytes,
    header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, ETAG, IF_NONE_MATCH},
    Response, StatusCode,
};
use serde::Serialize;
use serde_json::{json, Value};
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::time::Instant;

use super::{api::ApiState, routes::Endpoint, Admin};
use crate::{
    model::ledger::{events::EventType, Ledger, Phase, EGRESS_WINDOW_S},
    services::reboot::RebootService,
};

const INDEX: &str = include_str!("view/index.html");
const SCRIPT: &str = include_str!("view/app.js");
const STYLE: &str = include_str!("view/app.css");

/// What the page may load and where it may connect: its own origin only, no inline script or
/// style, no framing (clickjacking), no forms.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; base-uri 'none'; form-action 'none'; \
                       frame-ancestors 'none'";

/// Boot events per host in `/ui/state`, newest last: all the ledger keeps per inventory host
/// (the page shows the last boot; a host that asked DHCP all night cannot make it heavy).
pub const EVENTS_PER_HOST: usize = crate::model::ledger::EVENTS_PER_HOST;

/// `/ui/events` streams open at once, from a pool of their own: anonymous viewers can fill
/// it (503 beyond), never the token-holders' `admin.max_event_streams`.
pub const MAX_STREAMS: usize = 8;

/// The event types `/ui/events` sends: a host's progress, never its record.
pub const STREAM_TYPES: [EventType; 3] = [
    EventType::HostPhase,
    EventType::HostBooted,
    EventType::HostFailed,
];

/// One of the page's files: its body and `Content-Type`.
fn asset(endpoint: Endpoint) -> Option<(&'static str, &'static str)> {
    match endpoint {
        Endpoint::View => Some((INDEX, "text/html; charset=utf-8")),
        Endpoint::ViewScript => Some((SCRIPT, "text/javascript; charset=utf-8")),
        Endpoint::ViewStyle => Some((STYLE, "text/css; charset=utf-8")),
        _ => None,
    }
}

/// The ETag of a file: FNV-1a of its bytes (a fresh binary with a changed page gets a new
/// tag; the files are a few kilobytes, so hashing per request costs nothing worth caching).
pub fn etag(body: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in body.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("\"{h:016x}\"")
}

/// The headers every answer of the view carries.
fn harden(resp: &mut Response<Full<Bytes>>) {
    let h = resp.headers_mut();
    h.insert("content-security-policy", HeaderValue::from_static(CSP));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("referrer-policy", HeaderValue::from_static("no-referrer"));
}

/// Whether `If-None-Match` names `tag` (or `*`).
fn not_modified(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| crate::services::http::conditional::none_match(v, tag))
}

/// Answers a route of the view that has a whole body (`/ui/events` is answered with the
/// other stream); `None` for every other endpoint.
pub async fn serve(
    admin: &Admin,
    endpoint: Endpoint,
    headers: &HeaderMap,
) -> Option<Response<Full<Bytes>>> {
    let mut resp = match endpoint {
        Endpoint::ViewState => cached_state(admin).await,
        Endpoint::ViewPulse => json_bytes(Bytes::from(format!(
            "{}\n",
            pulse(&admin.ledger, &admin.reboots)
        ))),
        other => {
            let (body, content_type) = asset(other)?;
            let tag = etag(body);
            let mut r = if not_modified(headers, &tag) {
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NOT_MODIFIED;
                r
            } else {
                let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
                r
            };
            // Revalidated on every load (cheap, by ETag): an upgraded daemon's page is never
            // mixed with the old one's script.
            r.headers_mut()
                .insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
            if let Ok(v) = HeaderValue::from_str(&tag) {
                r.headers_mut().insert(ETAG, v);
            }
            r
        }
    };
    harden(&mut resp);
    Some(resp)
}

fn json_bytes(body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Hardens `/ui/events`'s answer (a stream, or its refusal) as the view's other answers:
/// nothing in it is a page, so only `nosniff` applies.
pub fn harden_stream<B>(resp: &mut Response<B>) {
    let h = resp.headers_mut();
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
}

/// The fabric's measured egress and the admission gate, as `/ui/pulse` and `/ui/state` give
/// them.
pub fn pulse(ledger: &Ledger, reboots: &RebootService) -> Value {
    let gate = reboots.gate();
    let (admitted, slots) = gate.load();
    json!({
        "now_ms": crate::model::ledger::unix_ms(),
        "bandwidth": bandwidth(ledger),
        "gate": {
            "mode": gate.settings().mode.as_str(),
            "slots": slots,
            "admitted": admitted,
            "waiting": gate.waiting(),
        },
    })
}

/// The fabric's measured egress (HTTP and TFTP), as the scheduler reads it: `/api/bandwidth`
/// and the view's pulse.
pub fn bandwidth(ledger: &Ledger) -> Value {
    let rates = ledger.egress_rates();
    let total: f64 = rates.iter().map(|(_, r)| r).sum();
    let per: serde_json::Map<String, Value> = rates
        .into_iter()
        .map(|(i, r)| (i, json!(r.round() as u64)))
        .collect();
    json!({
        "window_s": EGRESS_WINDOW_S,
        "bytes_per_second": per,
        "total_bytes_per_second": total.round() as u64,
    })
}

/// `/ui/state`'s body, as serialized.
#[derive(Serialize)]
struct StateBody<'a> {
    #[serde(flatten)]
    pulse: Value,
    generation: u64,
    last_event_id: u64,
    phases: [&'static str; Phase::ALL.len()],
    hosts: Vec<HostBody<'a>>,
}

/// One host in `/ui/state`: never its MAC, address, `meta`, BMC or command line.
#[derive(Serialize)]
struct HostBody<'a> {
    name: &'a str,
    rack: &'a Option<String>,
    model: &'a Option<String>,
    profile: &'a str,
    events: Vec<EventBody>,
}

#[derive(Serialize)]
struct EventBody {
    at_ms: u64,
    phase: &'static str,
    detail: Option<String>,
}

/// `/ui/state`: every inventory host (name order) with its last [`EVENTS_PER_HOST`] ledger
/// events (all the ledger keeps), the pulse, and the event log's position to follow from
/// (`last_event_id`), serialized straight to its bytes. Reads the whole inventory: run it on
/// a blocking thread ([`StateCache`]), never on a worker of the runtime that answers DHCP.
pub fn state(ledger: &Ledger, api: &ApiState, reboots: &RebootService) -> Vec<u8> {
    // The log's position first: an event recorded while the hosts are read is then both in
    // the timelines and on the stream (the page merges by time), never in neither.
    let last_event_id = ledger.last_event_id();
    let view = api.view();
    let mut hosts: Vec<&crate::model::inventory::Host> =
        view.snapshot.inventory.hosts().iter().collect();
    hosts.sort_by(|a, b| a.name.cmp(&b.name));
    let hosts: Vec<HostBody<'_>> = hosts
        .into_iter()
        .map(|h| {
            let timeline = ledger.timeline(h.mac);
            let from = timeline.len().saturating_sub(EVENTS_PER_HOST);
            HostBody {
                name: &h.name,
                rack: &h.rack,
                model: &h.model,
                profile: &h.profile,
                events: timeline[from..]
                    .iter()
                    .map(|e| EventBody {
                        at_ms: e.at_ms,
                        phase: e.phase().as_str(),
                        detail: e.kind.detail(),
                    })
                    .collect(),
            }
        })
        .collect();
    let body = StateBody {
        pulse: pulse(ledger, reboots),
        generation: view.snapshot.generation,
        last_event_id,
        phases: Phase::ALL.map(Phase::as_str),
        hosts,
    };
    let mut out = Vec::with_capacity(4096);
    // Strings, numbers and a `Value` into a Vec: cannot fail.
    let _ = serde_json::to_writer(&mut out, &body);
    out.push(b'\n');
    out
}

/// How long a built `/ui/state` body is served again.
pub const STATE_FRESH: Duration = Duration::from_secs(1);

/// `/ui/state`'s last body, shared by every request within [`STATE_FRESH`] of its build:
/// one allocation however many readers hold it, and at most one build at a time (the others
/// wait for it and take its result), so a peer of `admin.allow` polling the route costs at
/// most one inventory walk a second, on a blocking thread.
///
/// The body is keyed by the config generation: a reload or an API write is shown at the next
/// request. New ledger events do not invalidate it within the second (under a boot storm
/// they come every millisecond, which would make every request a build): the body carries the
/// `last_event_id` it was read at, and the page's stream replays what came after it.
#[derive(Default)]
pub struct StateCache {
    slot: tokio::sync::Mutex<Option<Cached>>,
    builds: AtomicU64,
}

struct Cached {
    generation: u64,
    at: Instant,
    body: Bytes,
}

impl StateCache {
    /// The body for `generation`: the cached one if it is that generation's and under
    /// [`STATE_FRESH`] old, else `build`'s (run on a blocking thread), cached.
    pub async fn get<F>(&self, generation: u64, build: F) -> Bytes
    where
        F: FnOnce() -> Vec<u8> + Send + 'static,
    {
        let mut slot = self.slot.lock().await;
        if let Some(c) = slot.as_ref() {
            if c.generation == generation && c.at.elapsed() < STATE_FRESH {
                return c.body.clone();
            }
        }
        self.builds.fetch_add(1, Ordering::Relaxed);
        let body = match tokio::task::spawn_blocking(build).await {
            Ok(b) => Bytes::from(b),
            // The build panicked: nothing to cache.
            Err(_) => return Bytes::new(),
        };
        *slot = Some(Cached {
            generation,
            at: Instant::now(),
            body: body.clone(),
        });
        body
    }

    /// Bodies built so far.
    pub fn builds(&self) -> u64 {
        self.builds.load(Ordering::Relaxed)
    }
}

/// `/ui/state`'s answer, from `admin`'s cache.
async fn cached_state(admin: &Admin) -> Response<Full<Bytes>> {
    let (ledger, api, reboots) = (
        admin.ledger.clone(),
        Arc::clone(&admin.api),
        Arc::clone(&admin.reboots),
    );
    let body = admin
        .view_state
        .get(admin.api.view().snapshot.generation, move || {
            state(&ledger, &api, &reboots)
        })
        .await;
    if body.is_empty() {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"the state could not be built\n",
        )));
        *r.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
        return r;
    }
    json_bytes(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etags_differ_by_content_and_if_none_match_is_read_as_a_list() {
        assert_ne!(etag(INDEX), etag(SCRIPT));
        assert_eq!(etag("x"), etag("x"));
        let tag = etag(SCRIPT);
        let mut h = HeaderMap::new();
        assert!(!not_modified(&h, &tag));
        h.insert(
            IF_NONE_MATCH,
            HeaderValue::from_str(&format!("\"0000\", W/{tag}")).expect("value"),
        );
        assert!(not_modified(&h, &tag));
        assert!(!not_modified(&h, &etag(STYLE)));
    }

    /// The page loads nothing from elsewhere and runs no inline script: every `<script>` has a
    /// `src` under `/ui/`, no inline handlers, no third-party URL.
    #[test]
    fn the_page_refers_to_its_own_files_only() {
        let lower = INDEX.to_ascii_lowercase();
        for (i, _) in lower.match_indices("<script") {
            let tag = &lower[i..i + lower[i..].find('>').expect("closed tag")];
            assert!(tag.contains("src=\"/ui/app.js\""), "{tag}");
        }
        for (i, _) in lower.match_indices(" on") {
            let name: String = lower[i + 1..]
                .chars()
                .take_while(char::is_ascii_alphabetic)
                .collect();
            assert!(
                !lower[i + 1 + name.len()..].starts_with('='),
                "an inline handler in the page: {name}"
            );
        }
        assert!(!lower.contains("style="), "an inline style in the page");
        for text in [INDEX, SCRIPT, STYLE] {
            // The SVG namespace is a name, not a place the page loads from.
            let text = text.replace("\"http://www.w3.org/2000/svg\"", "");
            assert!(!text.contains("http://") && !text.contains("https://"));
        }
        // The script never turns data into markup.
        assert!(!SCRIPT.contains("innerHTML") && !SCRIPT.contains("outerHTML"));
        assert!(!SCRIPT.contains("insertAdjacentHTML") && !SCRIPT.contains("document.write"));
        assert!(!SCRIPT.contains("eval("));
    }

    /// Requests within a second share one body (one build, one allocation); another
    /// generation or an older body is built again.
    #[tokio::test(start_paused = true)]
    async fn state_bodies_are_shared_within_their_second() {
        let cache = StateCache::default();
        let built = Arc::new(AtomicU64::new(0));
        let build = |n: &Arc<AtomicU64>| {
            let n = Arc::clone(n);
            move || {
                let i = n.fetch_add(1, Ordering::Relaxed);
                format!("{{\"build\":{i}}}\n").into_bytes()
            }
        };
        let a = cache.get(3, build(&built)).await;
        let b = cache.get(3, build(&built)).await;
        assert_eq!(a, b);
        assert_eq!(a.as_ptr(), b.as_ptr(), "one allocation shared");
        assert_eq!((cache.builds(), built.load(Ordering::Relaxed)), (1, 1));
        // Concurrent requests wait for one build and share it.
        tokio::time::advance(STATE_FRESH).await;
        let (c, d) = tokio::join!(cache.get(3, build(&built)), cache.get(3, build(&built)));
        assert_eq!(c.as_ptr(), d.as_ptr());
        assert_ne!(a, c, "a second-old body is built again");
        assert_eq!(cache.builds(), 2);
        // A reload is shown at once.
        let e = cache.get(4, build(&built)).await;
        assert_ne!(c, e);
        assert_eq!(cache.builds(), 3);
    }

    #[test]
    fn each_page_file_has_its_type() {
        assert_eq!(
            asset(Endpoint::View).map(|a| a.1),
            Some("text/html; charset=utf-8")
        );
        assert!(asset(Endpoint::ViewScript).is_some_and(|a| a.1.starts_with("text/javascript")));
        assert!(asset(Endpoint::ViewStyle).is_some_and(|a| a.1.starts_with("text/css")));
        assert!(asset(Endpoint::Metrics).is_none());
    }
}
