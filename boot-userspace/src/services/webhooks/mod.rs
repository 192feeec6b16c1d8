//! Webhooks: the event log POSTed to receivers named in `[[webhooks]]`, signed with
//! HMAC-SHA256 (RFC 2104 over SHA-256, FIPS 180-4).
//!
//! Each hook is a task with its own cursor into the ledger's event log: the ring *is* the
//! queue, so a slow or dead receiver costs no memory and never holds up a boot (the packet
//! paths only append to the ring). A hook delivers in id order, one event at a time; an event
//! is retried with exponential backoff and jitter on a connect error, a timeout, 408, 429 or
//! 5xx, and given up after `max_attempts` (counted and logged); any other answer is final. A
//! hook the ring laps is sent one `gap` delivery naming the ids it missed.
//!
//! Pure parts (the signature, the backoff schedule, the verdict on an answer, the bodies) are
//! functions below; [`WebhookService::run`] is the I/O shell.

use std::{sync::Arc, time::Duration};

use hmac::{Hmac, Mac as _};
use hyper::{
    body::Bytes,
    header::{HeaderName, HeaderValue},
    Method, StatusCode,
};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use sha2::Sha256;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::{secrets::token, webhooks::WebhookConfig},
    model::ledger::{events::TypeSet, unix_ms, ApiEvent, Ledger},
    redfish::{tls, transport::Endpoint, RedfishError},
    util::xorshift::XorShift,
};

/// Events read from the log per page.
const PAGE: usize = 64;
/// First retry delay; doubled per attempt up to [`BACKOFF_MAX`].
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest retry delay.
const BACKOFF_MAX: Duration = Duration::from_secs(60);
/// Jitter: each delay is spread by up to this fraction either way, so hooks that failed
/// together do not retry together.
const JITTER: f64 = 0.2;

/// Why the webhook service cannot start.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A hook's secret file is no longer acceptable (it was checked when the config loaded).
    #[error("webhook {hook}: secret_file: {source}")]
    Secret {
        /// The hook.
        hook: String,
        /// Why.
        source: token::TokenFileError,
    },
    /// A hook's TLS policy or URL cannot make a client.
    #[error("webhook {hook}: {reason}")]
    Client {
        /// The hook.
        hook: String,
        /// Why.
        reason: String,
    },
    /// Its metrics could not be registered.
    #[error("webhook metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// `HMAC-SHA256(secret, "{timestamp}.{body}")` as `sha256=<lowercase hex>`: what
/// `Bootfabric-Signature` carries. The timestamp is inside the MAC so a receiver can refuse
/// replays outside its window.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    format!("sha256={}", hex(&hmac_sha256(secret, timestamp, body)))
}

/// Lowercase hex, no separators.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

fn hmac_sha256(secret: &[u8], timestamp: u64, body: &[u8]) -> [u8; 32] {
    // HMAC takes a key of any length (RFC 2104 §3); `new_from_slice` cannot fail for it.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return [0; 32];
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().into()
}

/// The delay before attempt `attempt + 1` after `attempt` failed (1-based): 1, 2, 4 … 60 s,
/// spread by ±[`JITTER`] with `unit` drawn from [0, 1).
pub fn backoff(attempt: u32, unit: f64) -> Duration {
    let base = BACKOFF_FIRST
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(16))
        .min(BACKOFF_MAX);
    base.mul_f64(1.0 - JITTER + 2.0 * JITTER * unit.clamp(0.0, 1.0))
}

/// What an attempt's result means for the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx: delivered.
    Delivered,
    /// Worth another attempt: no connection, no answer in time, 408, 429, 5xx.
    Retry,
    /// Any other answer (3xx, 4xx): the receiver will not take it; trying again will not help.
    Refused,
}

/// The verdict on one attempt.
pub fn verdict(result: &Result<StatusCode, RedfishError>) -> Verdict {
    match result {
        Ok(s) if s.is_success() => Verdict::Delivered,
        Ok(s) if s.is_server_error() || matches!(s.as_u16(), 408 | 429) => Verdict::Retry,
        Ok(_) => Verdict::Refused,
        Err(RedfishError::Connect(_) | RedfishError::Timeout(_)) => Verdict::Retry,
        // TLS failures (a wrong certificate) and protocol errors do not heal by waiting, but a
        // receiver restarting mid-answer looks like a protocol error: retry those too.
        Err(RedfishError::Protocol(_)) => Verdict::Retry,
        Err(_) => Verdict::Refused,
    }
}

/// The body of a `gap` delivery: ids `from..=to` were lapped before this hook sent them. Its
/// id is `to`, so `Bootfabric-Event-Id` still only grows.
pub fn gap_body(from: u64, to: u64, at_ms: u64) -> String {
    serde_json::json!({
        "id": to,
        "type": "gap",
        "at": crate::model::ledger::events::rfc3339(at_ms),
        "host": null,
        "mac": null,
        "data": { "from": from, "to": to },
    })
    .to_string()
}

/// Per-hook metrics.
#[derive(Clone)]
struct Metrics {
    deliveries: IntCounterVec,
    lag: IntGaugeVec,
    missed: IntCounterVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let deliveries = IntCounterVec::new(
            Opts::new(
                "bootfabric_webhook_deliveries_total",
                "Webhook delivery attempts by hook and outcome: delivered, retried (a failed attempt that will be tried again), gave_up (the last attempt failed), refused (a final answer such as 4xx).",
            ),
            &["hook", "outcome"],
        )?;
        let lag = IntGaugeVec::new(
            Opts::new(
                "bootfabric_webhook_lag_events",
                "Events in the log after the hook's cursor (not yet delivered or skipped).",
            ),
            &["hook"],
        )?;
        let missed = IntCounterVec::new(
            Opts::new(
                "bootfabric_webhook_missed_events_total",
                "Events the event log dropped before the hook delivered them (it was lapped; a gap delivery says which).",
            ),
            &["hook"],
        )?;
        registry.register(Box::new(deliveries.clone()))?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(missed.clone()))?;
        Ok(Self {
            deliveries,
            lag,
            missed,
        })
    }
}

/// One receiver, ready to deliver.
struct Hook {
    name: String,
    endpoint: Endpoint,
    path: String,
    events: TypeSet,
    secret: Vec<u8>,
    max_attempts: u32,
}

/// The webhook service: a task per hook.
pub struct WebhookService {
    hooks: Vec<Hook>,
    ledger: Ledger,
    metrics: Metrics,
}

impl WebhookService {
    /// Reads each hook's secret (again: it may have changed since the config loaded) and
    /// builds its client.
    pub fn start(
        hooks: &[WebhookConfig],
        ledger: Ledger,
        registry: &Registry,
    ) -> Result<Self, WebhookError> {
        let metrics = Metrics::register(registry)?;
        let mut ready = Vec::with_capacity(hooks.len());
        for h in hooks {
            let secret =
                token::load_secret(&h.secret_file).map_err(|source| WebhookError::Secret {
                    hook: h.name.clone(),
                    source,
                })?;
            let client = |reason: String| WebhookError::Client {
                hook: h.name.clone(),
                reason,
            };
            let tls = match &h.tls {
                Some(policy) => {
                    Some(tls::client_config(policy).map_err(|e| client(e.to_string()))?)
                }
                None => None,
            };
            let endpoint =
                Endpoint::new(&h.base, tls, h.timeout).map_err(|e| client(e.to_string()))?;
            for outcome in ["delivered", "retried", "gave_up", "refused"] {
                metrics.deliveries.with_label_values(&[&h.name, outcome]);
            }
            metrics.lag.with_label_values(&[&h.name]);
            metrics.missed.with_label_values(&[&h.name]);
            ready.push(Hook {
                name: h.name.clone(),
                endpoint,
                path: h.path.clone(),
                events: h.events,
                secret,
                max_attempts: h.max_attempts,
            });
        }
        Ok(Self {
            hooks: ready,
            ledger,
            metrics,
        })
    }

    /// Delivers until `cancel` fires. Each hook starts at the beginning of this run's log.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), WebhookError> {
        let mut tasks = tokio::task::JoinSet::new();
        for hook in self.hooks {
            info!(hook = %hook.name, url = ?hook.endpoint, path = %hook.path, "webhook delivering");
            let (ledger, metrics, cancel) =
                (self.ledger.clone(), self.metrics.clone(), cancel.clone());
            tasks.spawn(async move { deliver_all(Arc::new(hook), ledger, metrics, cancel).await });
        }
        while tasks.join_next().await.is_some() {}
        Ok(())
    }
}

/// A hook's loop: read after the cursor, deliver what it subscribed to, wait for more.
async fn deliver_all(hook: Arc<Hook>, ledger: Ledger, metrics: Metrics, cancel: CancellationToken) {
    let mut rng = XorShift::from_time();
    let lag = metrics.lag.with_label_values(&[&hook.name]);
    let mut cursor = ledger.epoch();
    loop {
        let page = ledger.events_after(cursor, PAGE);
        if let Some((from, to)) = page.gap {
            metrics
                .missed
                .with_label_values(&[&hook.name])
                .inc_by(to - from + 1);
            warn!(hook = %hook.name, from, to, "webhook lapped by the event log: events {from} to {to} were never delivered");
            let body = gap_body(from, to, unix_ms());
            if !deliver(&hook, &metrics, &mut rng, to, body, &cancel).await {
                return;
            }
            cursor = to;
        }
        if page.events.is_empty() {
            lag.set(0);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = ledger.wait_events(cursor) => continue,
            }
        }
        for event in page.events {
            let id = event.id;
            if hook.events.contains(event.kind)
                && !deliver(&hook, &metrics, &mut rng, id, body_of(&event), &cancel).await
            {
                return;
            }
            cursor = id;
            lag.set(ledger.last_event_id().saturating_sub(cursor) as i64);
        }
    }
}

fn body_of(event: &ApiEvent) -> String {
    event.to_json()
}

/// Delivers one body, retrying as [`verdict`] says; false when cancelled.
async fn deliver(
    hook: &Hook,
    metrics: &Metrics,
    rng: &mut XorShift,
    id: u64,
    body: String,
    cancel: &CancellationToken,
) -> bool {
    let count = |outcome: &str| {
        metrics
            .deliveries
            .with_label_values(&[&hook.name, outcome])
            .inc();
    };
    let body = Bytes::from(body);
    for attempt in 1..=hook.max_attempts {
        let timestamp = unix_ms() / 1000;
        let headers = headers(id, timestamp, &signature(&hook.secret, timestamp, &body));
        let sent = tokio::select! {
            _ = cancel.cancelled() => return false,
            r = hook.endpoint.send(Method::POST, &hook.path, &headers, Some(body.clone())) => r,
        };
        let result = sent.map(|r| r.status);
        match verdict(&result) {
            Verdict::Delivered => {
                count("delivered");
                return true;
            }
            Verdict::Refused => {
                count("refused");
                warn!(hook = %hook.name, id, answer = ?result.map_err(|e| e.to_string()), "webhook refused the event; not retried");
                return true;
            }
            Verdict::Retry if attempt == hook.max_attempts => {
                count("gave_up");
                warn!(hook = %hook.name, id, attempts = attempt, answer = ?result.map_err(|e| e.to_string()), "webhook delivery given up");
                return true;
            }
            Verdict::Retry => {
                count("retried");
                let delay = backoff(attempt, rng.unit());
                info!(hook = %hook.name, id, attempt, ?delay, answer = ?result.map_err(|e| e.to_string()), "webhook delivery failed; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return false,
                    _ = tokio::time::sleep(delay) => {}
                }
            }
        }
    }
    true
}

fn headers(id: u64, timestamp: u64, signature: &str) -> Vec<(HeaderName, HeaderValue)> {
    let value = |s: String| HeaderValue::from_str(&s).unwrap_or(HeaderValue::from_static(""));
    vec![
        (
            HeaderName::from_static("bootfabric-event-id"),
            HeaderValue::from(id),
        ),
        (
            HeaderName::from_static("bootfabric-timestamp"),
            HeaderValue::from(timestamp),
        ),
        (
            HeaderName::from_static("bootfabric-signature"),
            value(signature.to_owned()),
        ),
        (
            hyper::header::USER_AGENT,
            HeaderValue::from_static(concat!("bootfabric/", env!("CARGO_PKG_VERSION"))),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_sha256_matches_rfc_4231_test_case_2() {
        // Key "Jefe", data "what do ya want for nothing?" (RFC 4231 §4.3). Our MAC covers
        // "{timestamp}.{body}"; split the data the same way to reach the published vector.
        let data = b"what do ya want for nothing?";
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(data);
        let expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843";
        assert_eq!(hex(&mac.finalize().into_bytes()), expected);
        // And through our own function: the timestamp and the dot are the first bytes.
        let key = b"Jefe";
        let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("key");
        mac.update(b"1700000000.");
        mac.update(data);
        assert_eq!(
            signature(key, 1_700_000_000, data),
            format!("sha256={}", hex(&mac.finalize().into_bytes()))
        );
        assert_ne!(
            signature(key, 1_700_000_001, data),
            signature(key, 1_700_000_000, data)
        );
    }

    #[test]
    fn backoff_doubles_to_a_minute_with_bounded_jitter() {
        let secs = |a, u| backoff(a, u).as_secs_f64();
        assert_eq!(secs(1, 0.5), 1.0);
        assert_eq!(secs(2, 0.5), 2.0);
        assert_eq!(secs(4, 0.5), 8.0);
        assert_eq!(secs(7, 0.5), 60.0);
        assert_eq!(secs(40, 0.5), 60.0);
        assert!((secs(3, 0.0) - 3.2).abs() < 1e-9);
        assert!((secs(3, 0.999_999) - 4.8).abs() < 1e-4);
    }

    #[test]
    fn verdicts_retry_only_what_may_heal() {
        let status = |s: u16| verdict(&Ok(StatusCode::from_u16(s).expect("status")));
        assert_eq!(status(200), Verdict::Delivered);
        assert_eq!(status(204), Verdict::Delivered);
        for s in [408, 429, 500, 502, 503] {
            assert_eq!(status(s), Verdict::Retry, "{s}");
        }
        for s in [301, 400, 401, 404, 413] {
            assert_eq!(status(s), Verdict::Refused, "{s}");
        }
        assert_eq!(
            verdict(&Err(RedfishError::Connect("refused".into()))),
            Verdict::Retry
        );
        assert_eq!(
            verdict(&Err(RedfishError::Timeout(Duration::from_secs(5)))),
            Verdict::Retry
        );
        assert_eq!(
            verdict(&Err(RedfishError::Tls("bad certificate".into()))),
            Verdict::Refused
        );
    }

    #[test]
    fn a_gap_body_names_the_missing_ids() {
        let v: serde_json::Value = serde_json::from_str(&gap_body(5, 9, 0)).expect("json");
        assert_eq!(v["type"], "gap");
        assert_eq!(v["id"], 9);
        assert_eq!(v["data"], serde_json::json!({"from": 5, "to": 9}));
    }
}
