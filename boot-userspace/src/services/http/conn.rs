//! What both transports share: the site and its limits, metrics, the per-client connection
//! count, and the bookkeeping of one response (metrics, egress, ledger).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
    time::Duration,
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use super::{
    origin::Waiter,
    request::{self, ParseError},
    response::Response,
    routes::{self, Routed, Site},
};
use tracing::info;

use crate::{
    model::inventory::Mac,
    model::ledger::EventKind,
    util::logs::{Untrusted, EXCHANGE_LOG},
};

/// Largest request head (`431` beyond it).
pub const MAX_HEAD: usize = 8192;
/// Largest request body (callbacks only).
pub const MAX_BODY: usize = 4096;

/// Connection limits and timeouts.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections at most, all clients together.
    pub max_connections: usize,
    /// Open connections at most from one client address.
    pub max_per_client: u32,
    /// Time allowed to send a complete request head once it began.
    pub header_timeout: Duration,
    /// Time a kept-alive connection may sit idle.
    pub idle_timeout: Duration,
    /// Time a response may go without the client taking any byte.
    pub send_timeout: Duration,
}

/// HTTP metrics.
#[derive(Clone)]
pub struct Metrics {
    requests: IntCounterVec,
    bytes: IntCounter,
    active: IntGauge,
    ranges: IntCounter,
    refused: IntCounterVec,
}

impl Metrics {
    /// Registers the `bootfabric_http_*` metrics.
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let requests = IntCounterVec::new(
            Opts::new(
                "bootfabric_http_requests_total",
                "HTTP requests answered, by route and status code.",
            ),
            // `code`, as Prometheus' own and most exporters' HTTP metrics name it.
            &["route", "code"],
        )?;
        let bytes = IntCounter::new(
            "bootfabric_http_bytes_total",
            "Response bytes sent (heads and bodies).",
        )?;
        let active = IntGauge::new(
            "bootfabric_http_connections_active",
            "HTTP connections open.",
        )?;
        let ranges = IntCounter::new(
            "bootfabric_http_range_requests_total",
            "Requests answered with 206 Partial Content.",
        )?;
        let refused = IntCounterVec::new(
            Opts::new(
                "bootfabric_http_connections_refused_total",
                "Connections closed at accept or ended early, by reason.",
            ),
            &["reason"],
        )?;
        r.register(Box::new(requests.clone()))?;
        r.register(Box::new(bytes.clone()))?;
        r.register(Box::new(active.clone()))?;
        r.register(Box::new(ranges.clone()))?;
        r.register(Box::new(refused.clone()))?;
        Ok(Self {
            requests,
            bytes,
            active,
            ranges,
            refused,
        })
    }

    /// Counts a connection ended early or refused.
    pub fn refused(&self, reason: &str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}

/// Why a connection was refused at accept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// `http.max_connections` are open.
    MaxConnections,
    /// The client has `http.max_per_client` open.
    MaxPerClient,
}

impl Refused {
    /// The `reason` label of `bootfabric_http_connections_refused_total`, and the word logged.
    pub fn as_label(self) -> &'static str {
        match self {
            Self::MaxConnections => "max_connections",
            Self::MaxPerClient => "max_per_client",
        }
    }
}

/// Everything the transports share.
pub struct Shared {
    /// What is served.
    pub site: Site,
    /// Limits.
    pub limits: Limits,
    /// Metrics.
    pub metrics: Metrics,
    /// Interface name by local address (for egress accounting).
    pub ifaces: Vec<(IpAddr, String)>,
    open: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, u32>>,
}

impl Shared {
    /// Shared state for the transports.
    pub fn new(
        site: Site,
        limits: Limits,
        metrics: Metrics,
        ifaces: Vec<(IpAddr, String)>,
    ) -> Self {
        Self {
            site,
            limits,
            metrics,
            ifaces,
            open: AtomicUsize::new(0),
            per_client: Mutex::default(),
        }
    }

    /// Admits a new connection from `peer`, or says why not.
    pub fn admit(&self, peer: IpAddr) -> Result<(), Refused> {
        if self.open.fetch_add(1, Ordering::Relaxed) >= self.limits.max_connections {
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.metrics.refused(Refused::MaxConnections.as_label());
            return Err(Refused::MaxConnections);
        }
        let Ok(mut map) = self.per_client.lock() else {
            return Ok(());
        };
        let n = map.entry(peer).or_insert(0);
        if *n >= self.limits.max_per_client {
            drop(map);
            self.open.fetch_sub(1, Ordering::Relaxed);
            self.metrics.refused(Refused::MaxPerClient.as_label());
            return Err(Refused::MaxPerClient);
        }
        *n += 1;
        self.metrics.active.inc();
        Ok(())
    }

    /// A connection admitted by [`Shared::admit`] closed.
    pub fn release(&self, peer: IpAddr) {
        self.open.fetch_sub(1, Ordering::Relaxed);
        self.metrics.active.dec();
        if let Ok(mut map) = self.per_client.lock() {
            if let Some(n) = map.get_mut(&peer) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&peer);
                }
            }
        }
    }

    fn iface(&self, local: IpAddr) -> &str {
        self.ifaces
            .iter()
            .find(|(a, _)| *a == local)
            .map(|(_, n)| n.as_str())
            .unwrap_or("other")
    }
}

/// The next thing a connection does with the bytes it has received.
pub enum Next {
    /// Answer this (the request's bytes are consumed).
    Answer(Box<Exchange>),
    /// Wait for more bytes.
    Read,
    /// Wait for the origin fetch of the file asked for, then take the same request again
    /// (its bytes stay in the buffer).
    Wait(Waiter),
}

/// One request and its response, followed to the end for metrics and the ledger.
pub struct Exchange {
    /// The response to send.
    pub response: Response,
    fetch: Option<(Mac, String)>,
    local: IpAddr,
    peer: IpAddr,
    sent: u64,
    head: u64,
}

impl Exchange {
    /// Notes that the response's first `n` bytes are its head (not counted as the body).
    pub fn head_len(&mut self, n: usize) {
        self.head = n as u64;
    }

    /// Counts `n` bytes of this response as sent.
    pub fn sent(&mut self, shared: &Shared, n: u64) {
        self.sent += n;
        shared.metrics.bytes.inc_by(n);
        shared.site.ledger.egress(shared.iface(self.local), n);
    }

    /// The response ended: completely (`done`) or not.
    pub fn finish(self, shared: &Shared, done: bool) {
        if let Some((mac, path)) = self.fetch {
            let bytes = self.sent.saturating_sub(self.head);
            info!(
                target: EXCHANGE_LOG,
                proto = "http",
                peer = %self.peer,
                %mac,
                path = %Untrusted(&path),
                bytes,
                outcome = if done { "completed" } else { "ended_early" },
                "HTTP download to {}: {} bytes",
                self.peer,
                bytes
            );
            let event = if done {
                EventKind::HttpSent { path, bytes }
            } else {
                EventKind::HttpFailed { path, bytes }
            };
            shared.site.ledger.record(mac, event, Some(self.peer));
        }
    }
}

/// Takes the next request from the front of `buf` (removing its bytes) and routes it.
pub fn next(shared: &Shared, buf: &mut Vec<u8>, peer: IpAddr, local: IpAddr) -> Next {
    let (routed, used) = match request::parse(buf, MAX_HEAD, MAX_BODY) {
        Ok((req, used)) => {
            let mut routed = routes::route(&shared.site, &req, peer, local);
            if let Some(w) = routed.wait.take() {
                return Next::Wait(w);
            }
            (routed, used)
        }
        Err(ParseError::Incomplete) => return Next::Read,
        Err(e) => {
            let status = if e == ParseError::TooLarge { 431 } else { 400 };
            let mut response = Response::text(status, &e.to_string());
            // What follows a request we could not read cannot be trusted to be a request.
            response.close = true;
            let used = buf.len();
            (
                Routed {
                    response,
                    route: "other",
                    fetch: None,
                    wait: None,
                },
                used,
            )
        }
    };
    buf.drain(..used);
    Next::Answer(Box::new(start(shared, routed, peer, local)))
}

fn start(shared: &Shared, routed: Routed, peer: IpAddr, local: IpAddr) -> Exchange {
    let status = routed.response.status;
    shared
        .metrics
        .requests
        .with_label_values(&[routed.route, &status.to_string()])
        .inc();
    if status == 206 {
        shared.metrics.ranges.inc();
    }
    if let Some((mac, path)) = &routed.fetch {
        if !routed.response.body.is_empty() {
            let path = path.clone();
            let started = EventKind::HttpStarted { path };
            shared.site.ledger.record(*mac, started, Some(peer));
        }
    }
    Exchange {
        fetch: routed.fetch.filter(|_| !routed.response.body.is_empty()),
        response: routed.response,
        local,
        peer,
        sent: 0,
        head: 0,
    }
}

/// Sets or clears TCP_CORK on the socket `s`; whether that took. Uncorking pushes the last
/// partial segment at once (sockets have TCP_NODELAY).
pub fn set_cork(s: &impl std::os::fd::AsRawFd, on: bool) -> bool {
    let v = libc::c_int::from(on);
    // SAFETY: setsockopt on a socket the caller holds, from an int that lives through the
    // call.
    unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_CORK,
            std::ptr::addr_of!(v).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ) == 0
    }
}
