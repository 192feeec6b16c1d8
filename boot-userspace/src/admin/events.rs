//! `GET /api/v1/events`: the ledger's event log as Server-Sent Events (WHATWG HTML §9.2).
//!
//! `?types=host.booted,host.failed` and `?host=node07` filter; `Last-Event-ID` (or
//! `?last_event_id=`) replays what the ring still holds after that id. A reader the ring lapped
//! gets `event: gap` (`{"from","to"}`, the ids it missed) before the rest; a reader whose id is
//! from another run of the daemon gets `event: reset` (`{"epoch","last_id"}`): it must re-list
//! what it follows. Then events as they come, a keep-alive comment every
//! [`KEEPALIVE`], `retry:` on connect.
//!
//! A stream is a task writing frames into a small bounded channel the response body reads:
//! a reader whose channel stays full for seconds is disconnected (it resumes by `Last-Event-ID`) and never slows
//! the ledger, which only appends. At most `admin.max_event_streams` streams at once (503
//! beyond), and the rack view's `/ui/events` from a pool of its own; the admin server's
//! shutdown ends them all.
//!
//! The parsing of a request and the framing of events are pure functions; [`EventStreams`] is
//! the I/O shell.

use std::{
    convert::Infallible,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use http_body_util::{combinators::BoxBody, BodyExt as _, Full};
use hyper::{
    body::{Body, Bytes, Frame},
    header::{HeaderMap, HeaderValue, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER},
    Response, StatusCode,
};
use prometheus::{IntCounter, IntGauge, Registry};
use tokio::sync::{mpsc, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::model::ledger::{
    events::{EventType, TypeSet, UnknownEventType},
    ApiEvent, Ledger,
};

/// The route.
pub const PATH: &str = "/api/v1/events";
/// A comment is sent after this long without an event, so proxies and clients see the stream
/// alive (and a vanished reader is noticed).
pub const KEEPALIVE: Duration = Duration::from_secs(15);
/// What a client waits before reconnecting (`retry:`), in milliseconds.
const RETRY_MS: u64 = 3_000;
/// Frames buffered per stream.
const BUFFER: usize = 256;
/// A reader whose buffer stays full this long is disconnected (it resumes by
/// `Last-Event-ID`): a replay or a burst that fills the buffer only waits for it.
const SLOW_AFTER: Duration = Duration::from_secs(10);
/// Events read from the log per page.
const PAGE: usize = 256;
/// Longest `?host=` accepted (host names are short).
const MAX_HOST: usize = 253;

/// A streaming response body (SSE) or a whole one, as the admin server sends them.
pub type AdminBody = BoxBody<Bytes, Infallible>;

/// What a stream shows and where it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// Types shown (every type when `?types=` is absent).
    pub types: TypeSet,
    /// Only this host's events, when given.
    pub host: Option<String>,
    /// Replay after this id (`Last-Event-ID`, else `?last_event_id=`); live only without.
    pub last_event_id: Option<u64>,
    /// Whether frames leave out the host's MAC (`"mac": null`): the rack view's stream,
    /// which needs no token.
    pub hide_mac: bool,
}

/// Why a subscription request is refused (400).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum SubscriptionError {
    /// An unknown name in `?types=`.
    #[error("types: {0}")]
    Type(#[from] UnknownEventType),
    /// `Last-Event-ID` or `?last_event_id=` is not a number.
    #[error("last event id {0:?} is not a number")]
    LastEventId(String),
    /// `?host=` is empty or too long.
    #[error("host: give a host name of 1 to {MAX_HOST} characters")]
    Host,
    /// A query parameter this route does not know.
    #[error("unknown query parameter {0:?} (known: types, host, last_event_id)")]
    Unknown(String),
}

impl Subscription {
    /// The subscription a request asks for, from its query and headers.
    pub fn parse(query: Option<&str>, headers: &HeaderMap) -> Result<Self, SubscriptionError> {
        let mut sub = Self {
            types: TypeSet::ALL,
            host: None,
            last_event_id: None,
            hide_mac: false,
        };
        let number = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| SubscriptionError::LastEventId(s.chars().take(32).collect()))
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v).decode_utf8_lossy();
            match k {
                "types" => sub.types = TypeSet::parse_list(&v)?,
                "host" if (1..=MAX_HOST).contains(&v.len()) => sub.host = Some(v.into_owned()),
                "host" => return Err(SubscriptionError::Host),
                "last_event_id" => sub.last_event_id = Some(number(&v)?),
                other => return Err(SubscriptionError::Unknown(other.chars().take(32).collect())),
            }
        }
        // The header is what a reconnecting EventSource sends: it wins over the query.
        if let Some(h) = headers.get("last-event-id") {
            let text = String::from_utf8_lossy(h.as_bytes());
            if !text.trim().is_empty() {
                sub.last_event_id = Some(number(&text)?);
            }
        }
        Ok(sub)
    }

    /// Whether `event` is shown.
    pub fn shows(&self, event: &ApiEvent) -> bool {
        self.types.contains(event.kind)
            && self
                .host
                .as_deref()
                .is_none_or(|h| event.host.as_deref() == Some(h))
    }
}

/// Where a stream begins, from the reader's last id and the log's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Start {
    /// After this id (the reader's, or the newest for a reader without one).
    After(u64),
    /// The reader's id is from another run: tell it to re-list, then send what this run has.
    Reset,
}

/// [`Start`] for a reader with `last` (or none) when the log's epoch is `epoch` and its newest
/// id `newest`.
pub fn start(last: Option<u64>, epoch: u64, newest: u64) -> Start {
    match last {
        None => Start::After(newest),
        Some(id) if id < epoch || id > newest => Start::Reset,
        Some(id) => Start::After(id),
    }
}

/// One event as an SSE frame. `data` is single-line JSON (serde_json escapes newlines inside
/// strings), so one `data:` line carries it whole.
pub fn frame(event: &ApiEvent) -> String {
    format!(
        "id: {}\nevent: {}\ndata: {}\n\n",
        event.id,
        event.kind,
        event.to_json()
    )
}

/// The frame telling a lapped reader which ids it missed. It carries the last missed id, so
/// a reconnect after it does not ask for them again.
pub fn gap_frame(from: u64, to: u64) -> String {
    format!("id: {to}\nevent: gap\ndata: {{\"from\":{from},\"to\":{to}}}\n\n")
}

/// The frame telling a reader of another run to re-list.
pub fn reset_frame(epoch: u64, newest: u64) -> String {
    format!("event: reset\ndata: {{\"epoch\":{epoch},\"last_id\":{newest}}}\n\n")
}

/// The SSE endpoint's shared state: the log, the stream limits, the shutdown token.
#[derive(Clone)]
pub struct EventStreams {
    ledger: Ledger,
    /// `/api/v1/events`'s streams (`admin.max_event_streams`).
    permits: Arc<Semaphore>,
    /// `/ui/events`'s streams, a pool of their own.
    view_permits: Arc<Semaphore>,
    cancel: CancellationToken,
    open: IntGauge,
    slow: IntCounter,
}

impl EventStreams {
    /// At most `max` streams of `/api/v1/events` and `view_max` of `/ui/events` at once
    /// (separate pools), all ended when `cancel` fires. Registers `bootfabric_event_streams`
    /// and `bootfabric_event_streams_slow_total`.
    pub fn new(
        ledger: Ledger,
        max: usize,
        view_max: usize,
        cancel: CancellationToken,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        let open = IntGauge::new(
            "bootfabric_event_streams",
            "Event streams (GET /api/v1/events and /ui/events) open now.",
        )?;
        let slow = IntCounter::new(
            "bootfabric_event_streams_slow_total",
            "Event streams disconnected because their reader fell too far behind.",
        )?;
        registry.register(Box::new(open.clone()))?;
        registry.register(Box::new(slow.clone()))?;
        Ok(Self {
            ledger,
            permits: Arc::new(Semaphore::new(max)),
            view_permits: Arc::new(Semaphore::new(view_max)),
            cancel,
            open,
            slow,
        })
    }

    /// Answers `HEAD /api/v1/events`: the head a GET would get (or its 400), no stream.
    pub fn head(&self, query: Option<&str>, headers: &HeaderMap) -> Response<AdminBody> {
        if let Err(e) = Subscription::parse(query, headers) {
            return problem(StatusCode::BAD_REQUEST, e.to_string());
        }
        stream_head(Response::new(Full::new(Bytes::new()).boxed()))
    }

    /// Answers `GET /api/v1/events` with `query` and `headers`: a stream, or a problem (400,
    /// 503).
    pub fn serve(&self, query: Option<&str>, headers: &HeaderMap) -> Response<AdminBody> {
        match Subscription::parse(query, headers) {
            Ok(sub) => self.stream(sub, &self.permits),
            Err(e) => problem(StatusCode::BAD_REQUEST, e.to_string()),
        }
    }

    /// Answers `GET /ui/events` (or its HEAD, `head`): the stream of [`Subscription::parse`],
    /// narrowed to the types of `only` (the rack view's, which needs no token), without MACs,
    /// from the view's own pool of streams.
    pub fn serve_only(
        &self,
        query: Option<&str>,
        headers: &HeaderMap,
        only: &[EventType],
        head: bool,
    ) -> Response<AdminBody> {
        let mut sub = match Subscription::parse(query, headers) {
            Ok(s) => s,
            Err(e) => return problem(StatusCode::BAD_REQUEST, e.to_string()),
        };
        let asked = sub.types;
        sub.types = only
            .iter()
            .copied()
            .filter(|t| asked.contains(*t))
            .collect();
        sub.hide_mac = true;
        if head {
            return stream_head(Response::new(Full::new(Bytes::new()).boxed()));
        }
        self.stream(sub, &self.view_permits)
    }

    /// The stream of `sub`, or 503 when all of `permits` are taken.
    fn stream(&self, mut sub: Subscription, permits: &Arc<Semaphore>) -> Response<AdminBody> {
        // A live-only stream starts at the newest event as the request is answered, not when
        // its task first runs: whatever happens after the client sees the 200 is on it.
        sub.last_event_id
            .get_or_insert_with(|| self.ledger.last_event_id());
        let Ok(permit) = Arc::clone(permits).try_acquire_owned() else {
            let mut r = problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "too many event streams open; retry later".to_owned(),
            );
            r.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("5"));
            return r;
        };
        let (tx, rx) = mpsc::channel(BUFFER);
        let (ledger, cancel, open, slow) = (
            self.ledger.clone(),
            self.cancel.clone(),
            self.open.clone(),
            self.slow.clone(),
        );
        open.inc();
        tokio::spawn(async move {
            if pump(&ledger, &sub, &tx, &cancel).await == End::Slow {
                slow.inc();
                debug!("event stream reader too slow; disconnected");
            }
            open.dec();
            drop(permit);
        });
        stream_head(Response::new(BoxBody::new(Frames { rx })))
    }
}

/// How a stream ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum End {
    /// The server is shutting down.
    Shutdown,
    /// The reader went away.
    Gone,
    /// The reader's buffer ([`BUFFER`] frames) stayed full for [`SLOW_AFTER`].
    Slow,
}

/// Queues `text` for the reader, waiting while its buffer is full, at most [`SLOW_AFTER`].
async fn deliver(
    tx: &mpsc::Sender<Bytes>,
    text: String,
    cancel: &CancellationToken,
) -> Result<(), End> {
    tokio::select! {
        _ = cancel.cancelled() => Err(End::Shutdown),
        sent = tokio::time::timeout(SLOW_AFTER, tx.send(Bytes::from(text))) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_closed)) => Err(End::Gone),
            Err(_elapsed) => Err(End::Slow),
        },
    }
}

/// Writes `sub`'s stream into `tx` until the reader goes, falls behind, or `cancel` fires.
pub async fn pump(
    ledger: &Ledger,
    sub: &Subscription,
    tx: &mpsc::Sender<Bytes>,
    cancel: &CancellationToken,
) -> End {
    let send = |text: String| deliver(tx, text, cancel);
    let (epoch, newest) = (ledger.epoch(), ledger.last_event_id());
    let mut cursor = match start(sub.last_event_id, epoch, newest) {
        Start::After(id) => id,
        Start::Reset => {
            if let Err(end) = send(reset_frame(epoch, newest)).await {
                return end;
            }
            epoch
        }
    };
    if let Err(end) = send(format!("retry: {RETRY_MS}\n\n")).await {
        return end;
    }
    loop {
        let page = ledger.events_after(cursor, PAGE);
        if let Some((from, to)) = page.gap {
            if let Err(end) = send(gap_frame(from, to)).await {
                return end;
            }
            cursor = to;
        }
        if page.events.is_empty() {
            tokio::select! {
                _ = cancel.cancelled() => return End::Shutdown,
                _ = tx.closed() => return End::Gone,
                _ = ledger.wait_events(cursor) => {}
                _ = tokio::time::sleep(KEEPALIVE) => {
                    if let Err(end) = send(":\n\n".to_owned()).await {
                        return end;
                    }
                }
            }
            continue;
        }
        for event in &page.events {
            if sub.shows(event) {
                let text = if sub.hide_mac && event.mac.is_some() {
                    frame(&ApiEvent {
                        mac: None,
                        ..event.clone()
                    })
                } else {
                    frame(event)
                };
                if let Err(end) = send(text).await {
                    return end;
                }
            }
            cursor = event.id;
        }
        if cancel.is_cancelled() {
            return End::Shutdown;
        }
    }
}

/// The response body: the frames the stream's task writes, until it drops its sender.
struct Frames {
    rx: mpsc::Receiver<Bytes>,
}

impl Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx
            .poll_recv(cx)
            .map(|chunk| chunk.map(|b| Ok(Frame::data(b))))
    }
}

/// The headers of a stream's answer.
fn stream_head(mut resp: Response<AdminBody>) -> Response<AdminBody> {
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// An error of the stream, as every `/api/v1` error: an RFC 9457 problem.
fn problem(status: StatusCode, detail: String) -> Response<AdminBody> {
    super::problem::Problem::new(status, detail)
        .response()
        .map(|b| b.boxed())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ledger::EventType;

    fn event(id: u64, kind: EventType, host: Option<&str>) -> ApiEvent {
        ApiEvent {
            id,
            at_ms: 0,
            kind,
            host: host.map(str::to_owned),
            mac: None,
            data: serde_json::json!({"reason": "line one\nline two"}),
        }
    }

    #[test]
    fn a_frame_is_one_data_line_however_the_data_reads() {
        let f = frame(&event(7, EventType::HostFailed, Some("n1")));
        let lines: Vec<&str> = f.split('\n').collect();
        assert_eq!(lines[0], "id: 7");
        assert_eq!(lines[1], "event: host.failed");
        assert!(lines[2].starts_with("data: {\"id\":7,"), "{f}");
        assert!(lines[2].contains(r#"line one\nline two"#));
        assert_eq!(&lines[3..], ["", ""], "a frame ends with a blank line");
        assert_eq!(
            gap_frame(3, 9),
            "id: 9\nevent: gap\ndata: {\"from\":3,\"to\":9}\n\n"
        );
    }

    #[test]
    fn requests_parse_and_the_header_wins() {
        let mut headers = HeaderMap::new();
        let sub = Subscription::parse(
            Some("types=host.booted%2Chost.failed&host=node07&last_event_id=5"),
            &headers,
        )
        .expect("valid");
        assert_eq!(sub.host.as_deref(), Some("node07"));
        assert_eq!(sub.last_event_id, Some(5));
        assert!(sub.shows(&event(1, EventType::HostBooted, Some("node07"))));
        assert!(!sub.shows(&event(1, EventType::HostBooted, Some("node08"))));
        assert!(!sub.shows(&event(1, EventType::HostPhase, Some("node07"))));
        headers.insert("last-event-id", HeaderValue::from_static("42"));
        let sub = Subscription::parse(Some("last_event_id=5"), &headers).expect("valid");
        assert_eq!(sub.last_event_id, Some(42));
        for bad in ["types=host.nope", "last_event_id=x", "host=", "mac=1"] {
            assert!(
                Subscription::parse(Some(bad), &HeaderMap::new()).is_err(),
                "{bad}"
            );
        }
        let all = Subscription::parse(None, &HeaderMap::new()).expect("valid");
        assert!(all.shows(&event(1, EventType::ConfigGeneration, None)));
    }

    #[test]
    fn a_reader_of_another_run_is_reset_and_one_of_this_run_resumes() {
        assert_eq!(start(None, 1000, 1010), Start::After(1010));
        assert_eq!(start(Some(1005), 1000, 1010), Start::After(1005));
        assert_eq!(start(Some(1000), 1000, 1010), Start::After(1000));
        assert_eq!(start(Some(999), 1000, 1010), Start::Reset);
        assert_eq!(start(Some(1011), 1000, 1010), Start::Reset);
    }

    fn ledger(ring: usize) -> Ledger {
        Ledger::with_capacities(&Registry::new(), 16, ring).expect("ledger")
    }

    async fn next(rx: &mut mpsc::Receiver<Bytes>) -> String {
        let b = rx.recv().await.expect("frame");
        String::from_utf8(b.to_vec()).expect("utf-8")
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_replays_reports_the_gap_then_goes_live_and_keeps_alive() {
        let l = ledger(4);
        let epoch = l.epoch();
        for _ in 0..6 {
            l.emit(
                EventType::HostCreated,
                Some("a"),
                None,
                serde_json::json!({}),
            );
        }
        let sub = Subscription {
            types: TypeSet::ALL,
            host: None,
            last_event_id: Some(epoch + 1),
            hide_mac: false,
        };
        let (tx, mut rx) = mpsc::channel(64);
        let cancel = CancellationToken::new();
        let task = {
            let (l, cancel) = (l.clone(), cancel.clone());
            tokio::spawn(async move { pump(&l, &sub, &tx, &cancel).await })
        };
        assert_eq!(next(&mut rx).await, "retry: 3000\n\n");
        // Ids epoch+2 were lapped (the ring holds +3..=+6).
        assert_eq!(next(&mut rx).await, gap_frame(epoch + 2, epoch + 2));
        for n in 3..=6 {
            assert!(next(&mut rx)
                .await
                .starts_with(&format!("id: {}\n", epoch + n)));
        }
        l.emit(
            EventType::HostDeleted,
            Some("a"),
            None,
            serde_json::json!({}),
        );
        assert!(next(&mut rx)
            .await
            .starts_with(&format!("id: {}\nevent: host.deleted\n", epoch + 7)));
        // Nothing for a while: a keep-alive comment (paused time jumps to it).
        assert_eq!(next(&mut rx).await, ":\n\n");
        cancel.cancel();
        assert_eq!(task.await.expect("pump"), End::Shutdown);
        assert!(rx.recv().await.is_none(), "the body ends with the stream");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_reader_is_cut_off_and_never_holds_up_the_ledger() {
        let l = ledger(4096);
        let sub = Subscription {
            types: TypeSet::ALL,
            host: None,
            last_event_id: Some(l.epoch()),
            hide_mac: false,
        };
        for _ in 0..10 {
            l.emit(
                EventType::HostCreated,
                Some("a"),
                None,
                serde_json::json!({}),
            );
        }
        // A reader that reads nothing, with room for 4 frames.
        let (tx, _rx) = mpsc::channel(4);
        let end = pump(&l, &sub, &tx, &CancellationToken::new()).await;
        assert_eq!(end, End::Slow);
        let (tx, rx) = mpsc::channel(4);
        drop(rx);
        assert_eq!(
            pump(&l, &sub, &tx, &CancellationToken::new()).await,
            End::Gone
        );
    }

    /// A resume with more events than the buffer holds waits for its reader, which gets them
    /// all: a full buffer is not a slow reader until it stays full.
    #[tokio::test(start_paused = true)]
    async fn a_replay_longer_than_the_buffer_waits_for_its_reader() {
        let l = ledger(4096);
        let sub = Subscription {
            types: TypeSet::ALL,
            host: None,
            last_event_id: Some(l.epoch()),
            hide_mac: false,
        };
        for _ in 0..20 {
            l.emit(
                EventType::HostCreated,
                Some("a"),
                None,
                serde_json::json!({}),
            );
        }
        let (tx, mut rx) = mpsc::channel(4);
        let cancel = CancellationToken::new();
        let task = {
            let (l, sub, cancel) = (l.clone(), sub.clone(), cancel.clone());
            tokio::spawn(async move { pump(&l, &sub, &tx, &cancel).await })
        };
        let mut events = 0;
        while events < 20 {
            // A reader slower than the replay, but within the limit.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let chunk = rx.recv().await.expect("a frame, not a cut");
            if chunk.starts_with(b"id:") {
                events += 1;
            }
        }
        cancel.cancel();
        assert_eq!(task.await.expect("pump"), End::Shutdown);
    }

    #[tokio::test]
    async fn streams_beyond_the_limit_get_503() {
        let l = ledger(16);
        let cancel = CancellationToken::new();
        let s = EventStreams::new(l, 1, 1, cancel.clone(), &Registry::new()).expect("streams");
        let first = s.serve(None, &HeaderMap::new());
        assert_eq!(first.status(), StatusCode::OK);
        assert_eq!(
            first.headers().get(CONTENT_TYPE).map(|v| v.as_bytes()),
            Some(&b"text/event-stream"[..])
        );
        let second = s.serve(None, &HeaderMap::new());
        assert_eq!(second.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            s.serve(Some("types=nope"), &HeaderMap::new()).status(),
            StatusCode::BAD_REQUEST
        );
        // Shutdown ends the stream, which frees its place.
        cancel.cancel();
        let mut body = first.into_body();
        while body.frame().await.is_some() {}
        let again = EventStreams {
            cancel: CancellationToken::new(),
            ..s.clone()
        };
        let mut tries = 0;
        while again.serve(None, &HeaderMap::new()).status() != StatusCode::OK {
            tries += 1;
            assert!(tries < 1000, "the permit was never released");
            tokio::task::yield_now().await;
        }
    }

    /// Anonymous viewers filling the rack view's pool get 503 there; the token-holders'
    /// pool is untouched, and the view's frames carry no MAC.
    #[tokio::test]
    async fn the_views_streams_have_their_own_pool_and_no_macs() {
        let l = ledger(16);
        let s = EventStreams::new(l.clone(), 1, 2, CancellationToken::new(), &Registry::new())
            .expect("streams");
        let only = [EventType::HostBooted];
        let view = |s: &EventStreams| s.serve_only(None, &HeaderMap::new(), &only, false);
        let mut first = view(&s);
        assert_eq!(first.status(), StatusCode::OK);
        let second = view(&s);
        assert_eq!(second.status(), StatusCode::OK);
        assert_eq!(view(&s).status(), StatusCode::SERVICE_UNAVAILABLE);
        // The private API's one stream still connects, and then its pool is full.
        let api = s.serve(None, &HeaderMap::new());
        assert_eq!(api.status(), StatusCode::OK);
        assert_eq!(
            s.serve(None, &HeaderMap::new()).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        // The view still refuses: its pool is its own, in both directions.
        assert_eq!(view(&s).status(), StatusCode::SERVICE_UNAVAILABLE);

        l.emit(
            EventType::HostBooted,
            Some("node07"),
            Some(crate::model::inventory::Mac([0x52, 0x54, 0, 0, 0, 7])),
            serde_json::json!({}),
        );
        let text = |b: Bytes| String::from_utf8(b.to_vec()).expect("utf-8");
        let mut api = api.into_body();
        let frame_of = |chunk: String| chunk.starts_with("id:").then_some(chunk);
        let mut api_frame = None;
        while api_frame.is_none() {
            let f = api.frame().await.expect("frame").expect("data");
            api_frame = frame_of(text(f.into_data().expect("data")));
        }
        let api_frame = api_frame.expect("frame");
        assert!(
            api_frame.contains(r#""mac":"52:54:00:00:00:07""#),
            "{api_frame}"
        );
        let body = first.body_mut();
        let mut view_frame = None;
        while view_frame.is_none() {
            let f = body.frame().await.expect("frame").expect("data");
            view_frame = frame_of(text(f.into_data().expect("data")));
        }
        let view_frame = view_frame.expect("frame");
        assert!(view_frame.contains(r#""host":"node07""#), "{view_frame}");
        assert!(view_frame.contains(r#""mac":null"#), "{view_frame}");
        assert!(!view_frame.contains("52:54:00"), "{view_frame}");
    }

    #[tokio::test]
    async fn the_streams_errors_are_problems_and_head_opens_none() {
        let registry = Registry::new();
        let ledger = Ledger::new(&registry).expect("ledger");
        let streams =
            EventStreams::new(ledger, 1, 1, CancellationToken::new(), &registry).expect("streams");
        let media = |r: &Response<AdminBody>| {
            r.headers()
                .get(CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let bad = streams.serve(Some("types=host.exploded"), &HeaderMap::new());
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert_eq!(media(&bad).as_deref(), Some(super::super::problem::MEDIA));
        let head = streams.head(None, &HeaderMap::new());
        assert_eq!(head.status(), StatusCode::OK);
        assert_eq!(media(&head).as_deref(), Some("text/event-stream"));
        // HEAD holds no stream: the one allowed is still free.
        let open = streams.serve(None, &HeaderMap::new());
        assert_eq!(open.status(), StatusCode::OK);
        let full = streams.serve(None, &HeaderMap::new());
        assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(media(&full).as_deref(), Some(super::super::problem::MEDIA));
        assert!(full.headers().contains_key(RETRY_AFTER));
    }
}
