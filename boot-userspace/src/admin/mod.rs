//! The admin server (hyper, HTTP/1.1, optionally TLS): `/metrics`, `/healthz`, the ledger's
//! views (`/api/bandwidth`, `/api/timeline`), the reboot scheduler (`/api/reboot`), and the
//! versioned control plane under `/api/v1` (hosts, profiles, status, the OpenAPI document),
//! whose errors are RFC 9457 problems ([`problem`]), and the live rack view (`/`, `/ui/…`,
//! [`view`]).
//!
//! Every connection must come from `admin.allow`. Every request is then read-only or
//! control by its method ([`auth::Access::of`]), decided before a route is looked up;
//! control calls pass [`auth::authorize`] and are logged with their caller and outcome.
//! [`auth`] and the route table are pure; this module is the I/O shell around them.

pub mod api;
pub mod auth;
pub mod consume;
pub mod events;
pub mod hosts;
pub mod openapi;
pub mod problem;
pub mod profiles;
pub mod routes;
pub mod view;

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt as _, Full};
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;
use prometheus::Registry;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{
    config::secrets::{tls, token},
    model::inventory::Mac,
    model::ledger::Ledger,
    services::reboot::{
        report::Selection,
        runner::{RequestError, StartError},
        RebootService,
    },
    util::metrics::render,
};
use api::{ApiState, Precondition};
use auth::{Access, Caller, Policy, Refusal};
use problem::Problem;
use routes::{lookup, Endpoint};

/// What the admin server serves from.
pub struct Admin {
    /// Every service's metrics.
    pub registry: Registry,
    /// The boot ledger.
    pub ledger: Ledger,
    /// The reboot scheduler.
    pub reboots: Arc<RebootService>,
    /// The configuration snapshot (its generation in `/healthz`).
    pub live: Arc<crate::model::snapshot::Live>,
    /// Concurrent event streams served at most (`admin.max_event_streams`).
    pub max_event_streams: usize,
    /// The `/api/v1` resources: the same live snapshot and the API's overlay file.
    pub api: Arc<ApiState>,
    /// What this fabric last saw of its cluster (`None`: standalone).
    pub cluster: Option<Arc<arc_swap::ArcSwap<crate::cluster::membership::ClusterView>>>,
    /// The cluster's shared boot timelines, merged into `/api/timeline` (`None`:
    /// standalone, this fabric's ledger alone).
    pub timeline: Option<crate::cluster::timeline::Reader>,
    /// The rack view's last `/ui/state` body, shared by the requests of its second.
    pub view_state: view::StateCache,
}

/// Who may reach the admin server, and what control calls need.
#[derive(Clone, Debug, Default)]
pub struct AdminAccess {
    /// Source networks that may connect (`admin.allow`); empty means every address.
    pub allow: Vec<IpNet>,
    /// Token and client-certificate requirements for control calls.
    pub policy: Policy,
}

/// Why the admin server cannot start with the loaded config (its files changed since).
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// `admin.token_file` is no longer acceptable.
    #[error("admin.token_file: {0}")]
    Token(#[from] token::TokenFileError),
    /// A TLS file is no longer usable.
    #[error("{key}: {reason}")]
    Tls {
        /// The config key of the file.
        key: String,
        /// Why.
        reason: String,
    },
}

/// The admin server's access rules and TLS configuration from `config`, reading the token
/// file again (it was checked when the config loaded; it may have changed since). Logs a
/// warning when control rests on loopback alone.
pub fn settings(
    config: &crate::config::AdminConfig,
) -> Result<(AdminAccess, Option<Arc<rustls::ServerConfig>>), SettingsError> {
    let token = match &config.token_file {
        Some(path) => Some(token::load(path)?),
        None => {
            warn!(
                listen = %config.listen,
                "admin.token_file is not set: control calls (POST and DELETE /api/reboot) are \
                 accepted from loopback only, without a credential; create a token with \
                 `bootfabric admin token create`"
            );
            None
        }
    };
    let tls = match &config.tls {
        Some(t) => Some(tls::server_config(t).map_err(
            |crate::util::key_error::KeyError { key, reason }| SettingsError::Tls { key, reason },
        )?),
        None => None,
    };
    let access = AdminAccess {
        allow: config.allow.clone(),
        policy: Policy {
            token,
            client_ca: config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        },
    };
    Ok((access, tls))
}

/// Largest request body the admin API reads (a reboot selection).
const MAX_BODY: usize = 1 << 20;
/// Bound on a TLS handshake, so a silent peer does not hold a task.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `bootfabric_admin_control_calls_total{outcome}`: control calls by outcome.
#[derive(Clone)]
struct ControlMetrics {
    calls: prometheus::IntCounterVec,
}

impl ControlMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let calls = prometheus::IntCounterVec::new(
            prometheus::Opts::new(
                "bootfabric_admin_control_calls_total",
                "Admin API control calls (POST/DELETE), by outcome: allowed, or the refusal.",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(calls.clone()))?;
        for outcome in [
            "allowed",
            "missing_token",
            "wrong_token",
            "not_loopback",
            "foreign_host",
            "no_client_certificate",
            "not_json",
        ] {
            calls.with_label_values(&[outcome]);
        }
        Ok(Self { calls })
    }
}

/// What the server knows about one connection.
#[derive(Clone, Debug)]
struct Conn {
    peer: SocketAddr,
    /// The verified client certificate, described for the log.
    client_cert: Option<String>,
}

/// Serves the admin API on `listener` until `cancel` fires; over TLS when `tls` is given.
pub async fn serve(
    listener: TcpListener,
    admin: Admin,
    access: AdminAccess,
    tls: Option<Arc<rustls::ServerConfig>>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(addr = %local, scheme, "admin server listening on {local}");
    let metrics = ControlMetrics::register(&admin.registry).map_err(std::io::Error::other)?;
    let streams = events::EventStreams::new(
        admin.ledger.clone(),
        admin.max_event_streams,
        view::MAX_STREAMS,
        cancel.clone(),
        &admin.registry,
    )
    .map_err(std::io::Error::other)?;
    let admin = Arc::new((admin, metrics, streams));
    let access = Arc::new(access);
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: keep serving the others.
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !allowed(&access.allow, peer) {
            debug!(%peer, "admin connection refused by admin.allow");
            continue;
        }
        let admin = Arc::clone(&admin);
        let access = Arc::clone(&access);
        let cancel = cancel.clone();
        let acceptor = acceptor.clone();
        connections.spawn(async move {
            match acceptor {
                None => {
                    let conn = Conn {
                        peer,
                        client_cert: None,
                    };
                    serve_connection(TokioIo::new(stream), conn, admin, access, cancel).await;
                }
                Some(acceptor) => {
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream))
                        .await
                    {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            debug!(%peer, error = %e, "admin TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(%peer, "admin TLS handshake timed out");
                            return;
                        }
                    };
                    let client_cert = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .map(|c| tls::describe_client_cert(c.as_ref()));
                    let conn = Conn { peer, client_cert };
                    serve_connection(TokioIo::new(tls), conn, admin, access, cancel).await;
                }
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

async fn serve_connection<I>(
    io: I,
    conn: Conn,
    admin: Arc<(Admin, ControlMetrics, events::EventStreams)>,
    access: Arc<AdminAccess>,
    cancel: CancellationToken,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let peer = conn.peer;
    let conn = Arc::new(conn);
    let service = service_fn(move |req| {
        let admin = Arc::clone(&admin);
        let access = Arc::clone(&access);
        let conn = Arc::clone(&conn);
        async move {
            let (admin, metrics, streams) = &*admin;
            // The event stream has a body that never ends on its own, so it is answered
            // before the whole-body routes; it needs the token as the other private reads.
            let stream = lookup(req.method(), req.uri().path());
            if matches!(stream, Ok((Endpoint::Events, _))) {
                let mut resp = match authorize(admin, metrics, &access.policy, &conn, &req) {
                    Err(refused) => (*refused).map(|b| b.boxed()),
                    Ok(_) if req.method() == Method::HEAD => {
                        streams.head(req.uri().query(), req.headers())
                    }
                    Ok(_) => streams.serve(req.uri().query(), req.headers()),
                };
                with_generation(&mut resp, admin.api.live.generation());
                return Ok::<_, Infallible>(resp);
            }
            // The rack view's stream: an open read (admin.allow is enough), of the boot
            // events only, without MACs, from a pool of its own (anonymous viewers cannot
            // take the token-holders' streams).
            if matches!(stream, Ok((Endpoint::ViewEvents, _))) {
                let mut resp = match authorize(admin, metrics, &access.policy, &conn, &req) {
                    Err(refused) => (*refused).map(|b| b.boxed()),
                    Ok(_) => streams.serve_only(
                        req.uri().query(),
                        req.headers(),
                        &view::STREAM_TYPES,
                        req.method() == Method::HEAD,
                    ),
                };
                view::harden_stream(&mut resp);
                return Ok::<_, Infallible>(resp);
            }
            let resp = handle(admin, metrics, &access.policy, &conn, req).await;
            Ok::<_, Infallible>(resp.map(|b| b.boxed()))
        }
    });
    let http = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(io, service);
    tokio::pin!(http);
    tokio::select! {
        res = http.as_mut() => {
            if let Err(e) = res {
                debug!(%peer, error = %e, "admin connection ended with an error");
            }
        }
        _ = cancel.cancelled() => http.as_mut().graceful_shutdown(),
    }
}

/// The peer's address, IPv4-mapped IPv6 unmapped (a dual-stack listener sees those).
fn peer_ip(peer: SocketAddr) -> IpAddr {
    match peer.ip() {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer.ip()),
        v4 => v4,
    }
}

fn allowed(allow: &[IpNet], peer: SocketAddr) -> bool {
    let ip = peer_ip(peer);
    allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
}

/// Checks a request's access, then routes it; control calls are logged with the outcome.
async fn handle(
    admin: &Admin,
    metrics: &ControlMetrics,
    policy: &Policy,
    conn: &Conn,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let control = Access::of(req.method()) == Access::Control;
    let proof = match authorize(admin, metrics, policy, conn, &req) {
        Ok(Some(proof)) => proof,
        // An open read.
        Ok(None) => return dispatch(admin, req).await,
        Err(refused) => return *refused,
    };
    if !control {
        // A private read: lock-free, not rate limited, not logged as a change.
        return dispatch(admin, req).await;
    }
    let (method, path, peer) = (req.method().clone(), req.uri().path().to_owned(), conn.peer);
    let cert = conn.client_cert.as_deref().unwrap_or("none");
    // A leaked token must not rewrite the state file without bound.
    let resp = if is_v1(&path) && !admin.api.admit(peer_ip(peer)) {
        let mut r = Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too many writes from this address; retry in a second",
        )
        .response();
        r.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from_static("1"));
        with_generation(&mut r, admin.api.live.generation());
        r
    } else {
        dispatch(admin, req).await
    };
    info!(
        %peer, %method, %path, credential = %proof, client_cert = cert,
        status = resp.status().as_u16(),
        "admin control call by {proof}: {}", resp.status()
    );
    resp
}

/// Whether `req` may go on: `Ok(None)` for an open read (admin.allow is enough),
/// `Ok(Some(proof))` for a control call or a private read ([`Endpoint::private`]) whose
/// credentials hold, else the refusal to answer (logged and counted).
fn authorize<B>(
    admin: &Admin,
    metrics: &ControlMetrics,
    policy: &Policy,
    conn: &Conn,
    req: &Request<B>,
) -> Result<Option<auth::Proof>, Box<Response<Full<Bytes>>>> {
    let (method, path) = (req.method(), req.uri().path());
    let private = lookup(method, path).is_ok_and(|(e, _)| e.private());
    if Access::of(method) == Access::Read && !private {
        return Ok(None);
    }
    let peer = conn.peer;
    let cert = conn.client_cert.as_deref().unwrap_or("none");
    let verdict = if auth::body_type_ok(method, req.headers()) {
        auth::authorize(
            policy,
            &Caller {
                peer: peer_ip(peer),
                authorization: req.headers().get(AUTHORIZATION).map(|v| v.as_bytes()),
                client_cert: conn.client_cert.as_deref(),
                host: req
                    .headers()
                    .get(hyper::header::HOST)
                    .map(|v| v.as_bytes())
                    .or_else(|| req.uri().authority().map(|a| a.as_str().as_bytes())),
            },
        )
    } else {
        Err(Refusal::NotJson)
    };
    match verdict {
        Ok(proof) => {
            metrics.calls.with_label_values(&["allowed"]).inc();
            Ok(Some(proof))
        }
        Err(refusal) => {
            metrics.calls.with_label_values(&[refusal.label()]).inc();
            let status = refusal.status().as_u16();
            if private {
                info!(
                    %peer, %method, %path, client_cert = cert, status,
                    "admin private read refused: {}", refusal.reason()
                );
            } else {
                info!(
                    %peer, %method, %path, client_cert = cert, status,
                    "admin control call refused: {}", refusal.reason()
                );
            }
            let mut resp = if is_v1(path) {
                let mut r = Problem::new(refusal.status(), refusal.reason()).response();
                with_generation(&mut r, admin.api.live.generation());
                r
            } else {
                text(refusal.status(), format!("{}\n", refusal.reason()))
            };
            if refusal.status() == StatusCode::UNAUTHORIZED {
                resp.headers_mut()
                    .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            Err(Box::new(resp))
        }
    }
}

/// Sets `Bootfabric-Generation` where an answer has none: every `/api/v1` answer carries it,
/// problems and the event stream included.
fn with_generation<B>(resp: &mut Response<B>, generation: u64) {
    resp.headers_mut()
        .entry("bootfabric-generation")
        .or_insert_with(|| HeaderValue::from(generation));
}

/// Whether `path` is under the versioned API, whose errors are problems.
fn is_v1(path: &str) -> bool {
    path == "/api/v1" || path.starts_with("/api/v1/")
}

async fn dispatch(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    let (endpoint, name) = match lookup(req.method(), &path) {
        Ok(e) => e,
        Err(status) if is_v1(&path) => {
            let detail = if status == StatusCode::METHOD_NOT_ALLOWED {
                format!("{} is not a method of {path}", req.method())
            } else {
                format!("no resource at {path}")
            };
            let mut r = Problem::new(status, detail).response();
            with_generation(&mut r, admin.api.live.generation());
            return r;
        }
        Err(StatusCode::METHOD_NOT_ALLOWED) => {
            return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here\n")
        }
        Err(status) => return text(status, "not found\n"),
    };
    if is_v1(&path) {
        let generation = admin.api.live.generation();
        let mut resp = match v1(admin, endpoint, name, req).await {
            Ok(a) => a.response(),
            Err(p) => p.response(),
        };
        with_generation(&mut resp, generation);
        return resp;
    }
    if let Some(resp) = view::serve(admin, endpoint, req.headers()).await {
        return resp;
    }
    legacy(admin, endpoint, req).await
}

/// The `/api/v1` endpoints.
async fn v1(
    admin: &Admin,
    endpoint: Endpoint,
    name: Option<String>,
    req: Request<Incoming>,
) -> Result<Answer, Problem> {
    let name = name.unwrap_or_default();
    // Reads never lock: a write holds the overlay's lock across an fsync and the followers,
    // a SIGHUP across a whole config load, and this runs on a worker that answers DHCP.
    let view = admin.api.view();
    let (snap, overlay) = (&view.snapshot, &*view.overlay);
    let answer = match endpoint {
        Endpoint::Status => Ok(Answer::json(
            StatusCode::OK,
            serde_json::json!({
                "generation": snap.generation,
                "hosts": hosts::counts(&snap.inventory, overlay),
                "profiles": profiles::counts(&snap.inventory, overlay),
                "cluster": admin.cluster.as_ref().map(|c| c.load().to_json()),
            }),
            snap.generation,
        )),
        Endpoint::OpenApi => Ok(Answer::json(
            StatusCode::OK,
            openapi::document(),
            snap.generation,
        )),
        Endpoint::HostList => {
            let query = query_pairs(req.uri().query().unwrap_or(""));
            hosts::list(snap, overlay, &query)
        }
        Endpoint::HostGet => hosts::get(snap, overlay, &name),
        Endpoint::ProfileList => Ok(profiles::list(snap, overlay)),
        Endpoint::ProfileGet => profiles::get(snap, overlay, &name),
        Endpoint::HostCreate
        | Endpoint::HostReplace
        | Endpoint::HostPatch
        | Endpoint::HostDelete
        | Endpoint::HostNetbootReset
        | Endpoint::ProfileCreate
        | Endpoint::ProfileReplace
        | Endpoint::ProfilePatch
        | Endpoint::ProfileDelete => {
            let pre = Precondition::from_header(
                req.headers()
                    .get(hyper::header::IF_MATCH)
                    .map(|v| v.as_bytes()),
            );
            let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => {
                    return Err(Problem::new(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("the body is larger than {MAX_BODY} bytes"),
                    ))
                }
            };
            // Writes fsync the overlay file and wait for the followers (kernel maps): a
            // blocking thread, never a worker of the runtime that answers DHCP.
            let api = Arc::clone(&admin.api);
            let write = tokio::task::spawn_blocking(move || {
                let api = &*api;
                match endpoint {
                    Endpoint::HostCreate => hosts::create(api, &body),
                    Endpoint::HostReplace => hosts::replace(api, &name, &pre, &body),
                    Endpoint::HostPatch => hosts::patch(api, &name, &pre, &body),
                    Endpoint::HostDelete => hosts::delete(api, &name, &pre),
                    Endpoint::HostNetbootReset => hosts::netboot_reset(api, &name),
                    Endpoint::ProfileCreate => profiles::create(api, &body),
                    Endpoint::ProfileReplace => profiles::replace(api, &name, &pre, &body),
                    Endpoint::ProfilePatch => profiles::patch(api, &name, &pre, &body),
                    _ => profiles::delete(api, &name, &pre),
                }
            })
            .await;
            write.unwrap_or_else(|_| {
                Err(Problem::new(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the write failed",
                ))
            })
        }
        other => Err(Problem::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("{other:?} is not an /api/v1 endpoint"),
        )),
    };
    answer
}

/// `key=value` pairs of a query string, percent-decoded.
fn query_pairs(query: &str) -> Vec<(String, String)> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8_lossy()
            .into_owned()
    };
    query
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// The answer of a `/api/v1` call: a JSON body (with its ETag when it is one resource) or
/// none, and the generation it was answered from.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    body: Option<serde_json::Value>,
    etag: Option<String>,
    generation: u64,
    /// `Location`, for a created resource.
    pub location: Option<String>,
}

impl Answer {
    /// A JSON body.
    pub fn json(status: StatusCode, body: serde_json::Value, generation: u64) -> Self {
        Self {
            status,
            body: Some(body),
            etag: None,
            generation,
            location: None,
        }
    }

    /// One resource, with its ETag.
    pub fn resource(status: StatusCode, body: serde_json::Value, generation: u64) -> Self {
        Self {
            etag: Some(api::etag(&body)),
            ..Self::json(status, body, generation)
        }
    }

    /// No body.
    pub fn empty(status: StatusCode, generation: u64) -> Self {
        Self {
            status,
            body: None,
            etag: None,
            generation,
            location: None,
        }
    }

    fn response(self) -> Response<Full<Bytes>> {
        let mut resp = match &self.body {
            Some(v) => json(format!("{v}\n")),
            None => Response::new(Full::new(Bytes::new())),
        };
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        if let Some(tag) = self.etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
            h.insert(hyper::header::ETAG, tag);
        }
        if let Some(loc) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            h.insert(hyper::header::LOCATION, loc);
        }
        h.insert("bootfabric-generation", HeaderValue::from(self.generation));
        resp
    }
}

/// The routes that came before `/api/v1`, with their text errors.
async fn legacy(
    admin: &Admin,
    endpoint: Endpoint,
    req: Request<Incoming>,
) -> Response<Full<Bytes>> {
    match endpoint {
        Endpoint::Metrics => {
            let mut resp = Response::new(Full::new(Bytes::from(render(&admin.registry))));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        Endpoint::Healthz => {
            // The first line stays `ok` (probes read the status only); the generation tells
            // an operator whether a reload took.
            let generation = admin.live.generation();
            let mut resp = text(StatusCode::OK, format!("ok\ngeneration {generation}\n"));
            resp.headers_mut()
                .insert("bootfabric-generation", HeaderValue::from(generation));
            resp
        }
        Endpoint::Bandwidth => json(format!("{}\n", view::bandwidth(&admin.ledger))),
        Endpoint::Timeline => {
            let mac = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("mac="))
                .map(|m| m.replace("%3A", ":").replace("%3a", ":"))
                .and_then(|m| m.parse::<Mac>().ok());
            match (mac, &admin.timeline) {
                (Some(mac), None) => json(timeline_json(&admin.ledger, mac)),
                (Some(mac), Some(shared)) => {
                    json(cluster_timeline_json(&admin.ledger, shared, mac).await)
                }
                (None, _) => text(StatusCode::BAD_REQUEST, "give ?mac=aa:bb:cc:dd:ee:ff\n"),
            }
        }
        // Cluster mode, on a fabric that does not run the run: read from etcd (marked so).
        Endpoint::RebootStatus => match admin.reboots.shared_status().await {
            None => match admin.reboots.status() {
                Some(s) => status_json(&s, StatusCode::OK),
                None => text(StatusCode::NOT_FOUND, "no reboot run yet\n"),
            },
            Some(Ok(Some(s))) => status_json(&s, StatusCode::OK),
            Some(Ok(None)) => text(StatusCode::NOT_FOUND, "no reboot run yet in the cluster\n"),
            Some(Err(e)) => retry_after(
                text(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("cannot read the cluster's reboot runs in etcd: {e}\n"),
                ),
                admin.reboots.retry_after_s(),
            ),
        },
        Endpoint::RebootCancel => match (admin.reboots.cancel(), admin.reboots.led_elsewhere()) {
            (Some(id), _) => json(format!("{{\"cancelled\":{id}}}\n")),
            // Cluster mode: only the leader runs (so cancels) runs; say where to ask.
            (None, Some(leader)) => text(
                StatusCode::CONFLICT,
                format!(
                    "this fabric does not run reboot runs (the cluster's leader does): {}\n",
                    leader.map_or(
                        "no leader now; try again within the cluster's ttl".to_owned(),
                        |l| format!("cancel it on {l}")
                    )
                ),
            ),
            (None, None) => text(StatusCode::CONFLICT, "no reboot run in progress\n"),
        },
        Endpoint::RebootStart => {
            let body = match http_body_util::Limited::new(req.into_body(), MAX_BODY)
                .collect()
                .await
            {
                Ok(b) => b.to_bytes(),
                Err(_) => return text(StatusCode::PAYLOAD_TOO_LARGE, "body too large\n"),
            };
            let sel: Selection = match serde_json::from_slice(&body) {
                Ok(s) => s,
                Err(e) => return text(StatusCode::BAD_REQUEST, format!("selection: {e}\n")),
            };
            // Planning sizes each host's images (open and stat under the roots): a hung
            // image store must hold a blocking thread, never a worker of the runtime that
            // answers DHCP and the admin API.
            let reboots = Arc::clone(&admin.reboots);
            let dry_run = sel.dry_run;
            let started = tokio::task::spawn_blocking(move || reboots.start(&sel)).await;
            let Ok(started) = started else {
                return text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "planning the run failed\n",
                );
            };
            match started {
                Ok(s) if dry_run => status_json(&s, StatusCode::OK),
                Ok(s) => status_json(&s, StatusCode::ACCEPTED),
                Err(e @ StartError::Selection(_)) => {
                    text(StatusCode::BAD_REQUEST, format!("{e}\n"))
                }
                Err(e @ (StartError::Busy(_) | StartError::NotLeader(_))) => {
                    text(StatusCode::CONFLICT, format!("{e}\n"))
                }
                // Cluster mode, on a follower: stored in etcd for the leader, or refused
                // with nothing stored (never a silent queue), or, etcd not confirming the
                // write, a 503 that says the run may be stored.
                Err(StartError::ForLeader(fwd)) => match admin.reboots.request(fwd).await {
                    Ok(s) => status_json(&s, StatusCode::ACCEPTED),
                    Err(e @ RequestError::Full { .. }) => {
                        text(StatusCode::TOO_MANY_REQUESTS, format!("{e}\n"))
                    }
                    Err(
                        ref e @ (RequestError::NoLeader { retry_after_s }
                        | RequestError::Cluster { retry_after_s, .. }
                        | RequestError::Unconfirmed { retry_after_s, .. }),
                    ) => retry_after(
                        text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")),
                        retry_after_s,
                    ),
                },
            }
        }
        other => text(
            StatusCode::NOT_FOUND,
            format!("{other:?} is served under /api/v1\n"),
        ),
    }
}

/// `resp` with `Retry-After: secs`.
fn retry_after(mut resp: Response<Full<Bytes>>, secs: u64) -> Response<Full<Bytes>> {
    resp.headers_mut()
        .insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
    resp
}

fn status_json(
    s: &crate::services::reboot::report::RunStatus,
    code: StatusCode,
) -> Response<Full<Bytes>> {
    let mut r = json(serde_json::to_string(s).unwrap_or_default());
    *r.status_mut() = code;
    r
}

/// `/api/timeline?mac=…`: one host's boot events, oldest first.
fn timeline_json(ledger: &Ledger, mac: Mac) -> String {
    let events: Vec<String> = ledger
        .timeline(mac)
        .iter()
        .map(|e| {
            format!(
                "{{\"at_ms\":{},\"phase\":\"{}\",\"ip\":{},\"detail\":{}}}",
                e.at_ms,
                e.phase().as_str(),
                e.ip.map_or("null".to_owned(), |ip| format!("\"{ip}\"")),
                e.kind
                    .detail()
                    .map_or("null".to_owned(), |d| json_string(&d))
            )
        })
        .collect();
    format!("{{\"mac\":\"{mac}\",\"events\":[{}]}}\n", events.join(","))
}

/// `/api/timeline?mac=…` in cluster mode: this fabric's ledger merged with every fabric's
/// entries in etcd, oldest first, each naming its fabric. etcd unreachable: the local entries
/// alone, with `"partial": true` and the error.
async fn cluster_timeline_json(
    ledger: &Ledger,
    shared: &crate::cluster::timeline::Reader,
    mac: Mac,
) -> String {
    let local = ledger.timeline(mac);
    let (entries, error) = match shared.host(mac).await {
        Ok(e) => (e, None),
        Err(e) => (Vec::new(), Some(e.to_string())),
    };
    let merged = crate::cluster::timeline::merge(shared.fabric(), &local, entries);
    let events: Vec<serde_json::Value> = merged
        .iter()
        .map(|e| {
            serde_json::json!({
                "at_ms": e.at_ms,
                "phase": e.phase.as_str(),
                "ip": e.ip,
                "detail": e.detail,
                "fabric": e.fabric,
            })
        })
        .collect();
    let mut body = serde_json::json!({
        "mac": mac.to_string(),
        "fabric": shared.fabric(),
        "partial": error.is_some(),
        "events": events,
    });
    if let Some(e) = error {
        body["error"] = serde_json::Value::String(e);
    }
    body.to_string() + "\n"
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn json(body: String) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_list_matches_v4_and_mapped_v6() {
        let allow = vec![crate::config::parse_cidr("10.0.0.0/8").expect("cidr")];
        assert!(allowed(&allow, "10.1.2.3:5".parse().expect("addr")));
        assert!(allowed(
            &allow,
            "[::ffff:10.1.2.3]:5".parse().expect("addr")
        ));
        assert!(!allowed(&allow, "192.0.2.1:5".parse().expect("addr")));
        assert!(allowed(&[], "192.0.2.1:5".parse().expect("addr")));
        assert!(peer_ip("[::ffff:127.0.0.1]:5".parse().expect("addr")).is_loopback());
    }
}
