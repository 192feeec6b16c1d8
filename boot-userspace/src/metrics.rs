//! Prometheus metrics and the admin server that exports them.
//!
//! One explicit [`Registry`] is built at start-up and handed to each service, which defines
//! its own metrics in one place. The admin server (hyper, HTTP/1.1) serves `/metrics` in the
//! text exposition format, `/healthz`, the ledger's views (`/api/bandwidth`, `/api/timeline`)
//! and the reboot scheduler (`/api/reboot`), to the source networks in `admin.allow` only.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{
    body::{Bytes, Incoming},
    header::{HeaderValue, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Method, Request, Response, StatusCode,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use ipnet::IpNet;

use crate::{
    inventory::Mac,
    ledger::Ledger,
    scheduler::{report::Selection, runner::StartError, Reboots},
};
use http_body_util::BodyExt as _;
use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// Error registering a metric (a name clash is a bug, reported at start-up).
pub type MetricsError = prometheus::Error;

/// Metrics every daemon exports regardless of configuration.
#[derive(Clone)]
pub struct CoreMetrics {
    /// `bootfabric_service_up{service}`: 1 while a service runs.
    pub service_up: IntGaugeVec,
}

impl CoreMetrics {
    /// Registers `bootfabric_build_info` and `bootfabric_service_up` in `registry`.
    pub fn register(registry: &Registry) -> Result<Self, MetricsError> {
        let build_info = IntGaugeVec::new(
            Opts::new(
                "bootfabric_build_info",
                "Build of the running daemon; the value is always 1.",
            ),
            &["version", "ebpf"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
        let ebpf = if crate::xdp::embedded_object().is_some() {
            "embedded"
        } else {
            "absent"
        };
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION"), ebpf])
            .set(1);

        let service_up = IntGaugeVec::new(
            Opts::new(
                "bootfabric_service_up",
                "1 while the service runs, 0 once it has stopped or failed.",
            ),
            &["service"],
        )?;
        registry.register(Box::new(service_up.clone()))?;

        let start = IntGauge::new(
            "bootfabric_start_time_seconds",
            "Start time of the daemon, seconds since the Unix epoch.",
        )?;
        registry.register(Box::new(start.clone()))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        start.set(i64::try_from(now).unwrap_or(i64::MAX));
        Ok(Self { service_up })
    }
}

/// Renders every metric in `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 * 1024);
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut out) {
        warn!(error = %e, "encoding metrics failed");
    }
    out
}

/// What the admin server serves from.
pub struct Admin {
    /// Every service's metrics.
    pub registry: Registry,
    /// The boot ledger.
    pub ledger: Ledger,
    /// The reboot scheduler.
    pub reboots: Arc<Reboots>,
}

/// Largest request body the admin API reads (a reboot selection).
const MAX_BODY: usize = 1 << 20;

/// Serves the admin API on `listener` until `cancel` fires.
pub async fn serve_admin(
    listener: TcpListener,
    admin: Admin,
    allow: Vec<IpNet>,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    let local = listener.local_addr()?;
    info!(addr = %local, "admin server listening on {local}");
    let admin = Arc::new(admin);
    let allow = Arc::new(allow);
    let connections = tokio_util::task::TaskTracker::new();
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: keep serving the others.
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !allowed(&allow, peer) {
            debug!(%peer, "admin connection refused by admin.allow");
            continue;
        }
        let admin = Arc::clone(&admin);
        let cancel = cancel.clone();
        connections.spawn(async move {
            let service = service_fn(move |req| {
                let admin = Arc::clone(&admin);
                async move { Ok::<_, Infallible>(route(&admin, req).await) }
            });
            let conn = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        debug!(%peer, error = %e, "admin connection ended with an error");
                    }
                }
                _ = cancel.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
    connections.close();
    connections.wait().await;
    Ok(())
}

fn allowed(allow: &[IpNet], peer: SocketAddr) -> bool {
    let ip = match peer.ip() {
        std::net::IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(std::net::IpAddr::V4)
            .unwrap_or(peer.ip()),
        v4 => v4,
    };
    allow.is_empty() || allow.iter().any(|net| net.contains(&ip))
}

/// `/api/bandwidth`: the fabric's measured egress (HTTP and TFTP), as the scheduler reads it.
fn bandwidth_json(ledger: &Ledger) -> String {
    let rates = ledger.egress_rates();
    let total: f64 = rates.iter().map(|(_, r)| r).sum();
    let ifaces: Vec<String> = rates
        .iter()
        .map(|(i, r)| format!("{}:{r:.0}", json_string(i)))
        .collect();
    format!(
        "{{\"window_s\":{},\"bytes_per_second\":{{{}}},\"total_bytes_per_second\":{total:.0}}}\n",
        crate::ledger::EGRESS_WINDOW_S,
        ifaces.join(",")
    )
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
                e.phase.as_str(),
                e.ip.map_or("null".to_owned(), |ip| format!("\"{ip}\"")),
                e.detail.as_deref().map_or("null".to_owned(), json_string)
            )
        })
        .collect();
    format!("{{\"mac\":\"{mac}\",\"events\":[{}]}}\n", events.join(","))
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

async fn route(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    if req.uri().path() == "/api/reboot" {
        return reboot(admin, req).await;
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(render(&admin.registry))));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/api/bandwidth" => json(bandwidth_json(&admin.ledger)),
        "/api/timeline" => {
            let mac = req
                .uri()
                .query()
                .unwrap_or("")
                .split('&')
                .find_map(|kv| kv.strip_prefix("mac="))
                .map(|m| m.replace("%3A", ":").replace("%3a", ":"))
                .and_then(|m| m.parse::<Mac>().ok());
            match mac {
                Some(mac) => json(timeline_json(&admin.ledger, mac)),
                None => text(StatusCode::BAD_REQUEST, "give ?mac=aa:bb:cc:dd:ee:ff\n"),
            }
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

/// `/api/reboot`: POST a selection to plan (`dry_run`) or start a run, GET its status,
/// DELETE to cancel it.
async fn reboot(admin: &Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let as_json = |s: &crate::scheduler::report::RunStatus, code: StatusCode| {
        let mut r = json(serde_json::to_string(s).unwrap_or_default());
        *r.status_mut() = code;
        r
    };
    match method {
        Method::GET | Method::HEAD => match admin.reboots.status() {
            Some(s) => as_json(&s, StatusCode::OK),
            None => text(StatusCode::NOT_FOUND, "no reboot run yet\n"),
        },
        Method::DELETE => match admin.reboots.cancel() {
            Some(id) => json(format!("{{\"cancelled\":{id}}}\n")),
            None => text(StatusCode::CONFLICT, "no reboot run in progress\n"),
        },
        Method::POST => {
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
            match admin.reboots.start(&sel) {
                Ok(s) if sel.dry_run => as_json(&s, StatusCode::OK),
                Ok(s) => as_json(&s, StatusCode::ACCEPTED),
                Err(e @ StartError::Selection(_)) => {
                    text(StatusCode::BAD_REQUEST, format!("{e}\n"))
                }
                Err(e @ StartError::Busy(_)) => text(StatusCode::CONFLICT, format!("{e}\n")),
            }
        }
        _ => text(
            StatusCode::METHOD_NOT_ALLOWED,
            "GET, POST or DELETE /api/reboot\n",
        ),
    }
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
    }

    #[test]
    fn core_metrics_render() {
        let registry = Registry::new();
        let core = CoreMetrics::register(&registry).expect("register");
        core.service_up.with_label_values(&["admin"]).set(1);
        let text = String::from_utf8(render(&registry)).expect("utf8");
        assert!(
            text.contains("bootfabric_service_up{service=\"admin\"} 1"),
            "{text}"
        );
        assert!(text.contains("bootfabric_build_info{"), "{text}");
    }
}
