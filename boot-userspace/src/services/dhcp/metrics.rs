//! The DHCP service's metrics, defined in one place.

use prometheus::{Histogram, HistogramOpts, IntCounterVec, IntGaugeVec, Opts, Registry};

/// The server's metrics, defined in one place.
#[derive(Clone)]
pub(super) struct Metrics {
    pub(super) packets: IntCounterVec,
    pub(super) dropped: IntCounterVec,
    pub(super) decision: Histogram,
    pub(super) commit: Histogram,
    pub(super) leases: IntGaugeVec,
    pub(super) pool: IntGaugeVec,
    pub(super) exhausted: IntCounterVec,
    pub(super) commit_errors: prometheus::IntCounter,
    pub(super) commit_refused: IntCounterVec,
    pub(super) commits_in_flight: prometheus::IntGauge,
}

impl Metrics {
    pub(super) fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let packets = IntCounterVec::new(
            Opts::new(
                "bootfabric_dhcp_packets_total",
                "DHCP requests handled, by message type and outcome.",
            ),
            &["type", "outcome"],
        )?;
        let dropped = IntCounterVec::new(
            Opts::new(
                "bootfabric_dhcp_dropped_total",
                "DHCP packets dropped without an answer, by reason.",
            ),
            &["reason"],
        )?;
        let decision = Histogram::with_opts(
            HistogramOpts::new(
                "bootfabric_dhcp_decision_seconds",
                "Time to decide the answer to a request.",
            )
            .buckets(vec![1e-6, 5e-6, 1e-5, 5e-5, 1e-4, 5e-4, 1e-3, 1e-2]),
        )?;
        let commit = Histogram::with_opts(
            HistogramOpts::new(
                "bootfabric_dhcp_lease_commit_seconds",
                "Time from decision to a durable lease record.",
            )
            .buckets(vec![1e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5]),
        )?;
        let leases = IntGaugeVec::new(
            Opts::new(
                "bootfabric_dhcp_leases_active",
                "Addresses in use (bound, offered or quarantined) per subnet.",
            ),
            &["subnet"],
        )?;
        let pool = IntGaugeVec::new(
            Opts::new("bootfabric_dhcp_pool_size", "Dynamic addresses per subnet."),
            &["subnet"],
        )?;
        let exhausted = IntCounterVec::new(
            Opts::new(
                "bootfabric_dhcp_pool_exhausted_total",
                "DISCOVERs that found no free address, per subnet.",
            ),
            &["subnet"],
        )?;
        let commit_errors = prometheus::IntCounter::new(
            "bootfabric_dhcp_lease_commit_errors_total",
            "Lease records that could not be made durable (their ACKs were not sent).",
        )?;
        r.register(Box::new(packets.clone()))?;
        r.register(Box::new(dropped.clone()))?;
        r.register(Box::new(decision.clone()))?;
        r.register(Box::new(commit.clone()))?;
        r.register(Box::new(leases.clone()))?;
        r.register(Box::new(pool.clone()))?;
        r.register(Box::new(exhausted.clone()))?;
        let commit_refused = IntCounterVec::new(
            Opts::new(
                "bootfabric_dhcp_commit_refused_total",
                "Lease commits given up while storage lagged (their ACKs were not sent), by reason: queue_full (dhcp.commit_queue records in flight already) or timeout (not durable within dhcp.commit_timeout_ms).",
            ),
            &["reason"],
        )?;
        r.register(Box::new(commit_errors.clone()))?;
        let commits_in_flight = prometheus::IntGauge::new(
            "bootfabric_dhcp_commits_in_flight",
            "Lease records queued for or being written to the journal (at most dhcp.commit_queue).",
        )?;
        r.register(Box::new(commit_refused.clone()))?;
        r.register(Box::new(commits_in_flight.clone()))?;
        Ok(Self {
            packets,
            dropped,
            decision,
            commit,
            leases,
            pool,
            exhausted,
            commit_errors,
            commit_refused,
            commits_in_flight,
        })
    }
}
