//! Prometheus metrics.
//!
//! One explicit [`Registry`] is built at start-up and handed to each service, which defines
//! its own metrics in one place. The admin server ([`crate::admin`]) exports them at
//! `/metrics` in the text exposition format.

use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use tracing::warn;

/// Error registering a metric (a name clash is a bug, reported at start-up).
pub type MetricsError = prometheus::Error;

/// Metrics every daemon exports regardless of configuration.
#[derive(Clone)]
pub struct CoreMetrics {
    /// `bootfabric_service_up{service}`: 1 while a service runs.
    pub service_up: IntGaugeVec,
}

impl CoreMetrics {
    /// Registers `bootfabric_build_info`, `bootfabric_service_up`, the start time and the
    /// standard `process_*` metrics in `registry`; `ebpf` says whether the build carries the
    /// XDP object (`embedded` or `absent`).
    pub fn register(registry: &Registry, ebpf: &str) -> Result<Self, MetricsError> {
        let build_info = IntGaugeVec::new(
            Opts::new(
                "bootfabric_build_info",
                "Build of the running daemon; the value is always 1.",
            ),
            &["version", "ebpf"],
        )?;
        registry.register(Box::new(build_info.clone()))?;
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

        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds,
        // process_max_fds, process_virtual_memory_bytes, process_start_time_seconds and
        // process_threads, read from /proc/self at each scrape: the names every exporter
        // uses, so the usual dashboards and alerts (fd exhaustion, memory growth) apply.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn core_metrics_render() {
        let registry = Registry::new();
        let core = CoreMetrics::register(&registry, "absent").expect("register");
        core.service_up.with_label_values(&["admin"]).set(1);
        let text = String::from_utf8(render(&registry)).expect("utf8");
        assert!(
            text.contains("bootfabric_service_up{service=\"admin\"} 1"),
            "{text}"
        );
        assert!(text.contains("process_open_fds "), "{text}");
        assert!(text.contains("bootfabric_build_info{"), "{text}");
    }
}
