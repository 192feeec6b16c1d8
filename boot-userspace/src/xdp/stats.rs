//! `bootfabric_xdp_packets_total` and `bootfabric_xdp_bytes_total`, read from the kernel's
//! per-CPU counters at scrape time (no polling task, no stale values).

use std::{collections::HashMap, sync::Mutex};

use aya::maps::{MapData, PerCpuArray, PerCpuHashMap};
use bootfabric_abi::{
    action_name, class_name,
    dhcp::{stat_labels, MAP_STATS, STAT_ACK_UNREPORTED, STAT_COUNT, STAT_EVENTS_LOST},
    CounterKey, Counters, ACTION_PASS, CLASS_COUNT, MAP_COUNTERS,
};
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntCounterVec, Opts,
};
use tracing::warn;

/// Why the XDP counters cannot be exported.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// The object lacks the counter map.
    #[error("no map {0}")]
    NoMap(&'static str),
    /// The map is not what the ABI says.
    #[error("{map}: {reason}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Why.
        reason: aya::maps::MapError,
    },
    /// A metric could not be defined.
    #[error("{0}")]
    Metric(prometheus::Error),
}

/// Prometheus collector over the XDP counter map.
pub struct XdpStats {
    map: Mutex<PerCpuHashMap<MapData, CounterKey, Counters>>,
    /// Interface names by index, in the daemon's namespace.
    ifnames: HashMap<u32, String>,
    packets: IntCounterVec,
    bytes: IntCounterVec,
    /// The DHCP fast path's counters, when the object has them.
    dhcp: Option<Mutex<PerCpuArray<MapData, u64>>>,
    dhcp_packets: IntCounterVec,
    events_lost: prometheus::IntCounter,
    acks_unreported: prometheus::IntCounter,
}

impl XdpStats {
    /// Takes the counter map out of `ebpf`.
    pub fn new(ebpf: &mut aya::Ebpf, ifnames: HashMap<u32, String>) -> Result<Self, StatsError> {
        let map = ebpf
            .take_map(MAP_COUNTERS)
            .ok_or(StatsError::NoMap(MAP_COUNTERS))?;
        let map = PerCpuHashMap::try_from(map).map_err(|reason| StatsError::Map {
            map: MAP_COUNTERS,
            reason,
        })?;
        let labels = &["iface", "class", "action"];
        let packets = IntCounterVec::new(
            Opts::new(
                "bootfabric_xdp_packets_total",
                "Frames seen by the XDP program, by ingress interface, class and action.",
            ),
            labels,
        )
        .map_err(StatsError::Metric)?;
        let bytes = IntCounterVec::new(
            Opts::new(
                "bootfabric_xdp_bytes_total",
                "Bytes of the frames seen by the XDP program (from the Ethernet header on).",
            ),
            labels,
        )
        .map_err(StatsError::Metric)?;
        let dhcp = ebpf
            .take_map(MAP_STATS)
            .and_then(|m| PerCpuArray::try_from(m).ok())
            .map(Mutex::new);
        let dhcp_packets = IntCounterVec::new(
            Opts::new(
                "bootfabric_xdp_dhcp_packets_total",
                "DHCP requests seen by the XDP fast path: answered in the kernel, passed to \
                 userspace or dropped, by reason.",
            ),
            &["action", "reason"],
        )
        .map_err(StatsError::Metric)?;
        let events_lost = prometheus::IntCounter::new(
            "bootfabric_xdp_dhcp_events_lost_total",
            "Exchanges answered in the kernel whose event did not fit in the ring buffer.",
        )
        .map_err(StatsError::Metric)?;
        let acks_unreported = prometheus::IntCounter::new(
            "bootfabric_xdp_dhcp_acks_unreported_total",
            "ACKs answered in the kernel without an event (so without a lease record): the \
             host's same lease was reported less than half its lease time ago.",
        )
        .map_err(StatsError::Metric)?;
        for i in 0..STAT_COUNT {
            if let Some((a, r)) = stat_labels(i) {
                dhcp_packets.with_label_values(&[a, r]);
            }
        }
        // Zero series for every interface and class, so dashboards and rate() see them
        // before the first packet.
        for name in ifnames.values() {
            for class in 0..CLASS_COUNT {
                let l = [name.as_str(), class_name(class), action_name(ACTION_PASS)];
                packets.with_label_values(&l);
                bytes.with_label_values(&l);
            }
        }
        Ok(Self {
            map: Mutex::new(map),
            ifnames,
            packets,
            bytes,
            dhcp,
            dhcp_packets,
            events_lost,
            acks_unreported,
        })
    }

    /// Copies the fast path's per-CPU totals into its counters.
    fn refresh_dhcp(&self, map: &PerCpuArray<MapData, u64>) {
        for i in 0..STAT_COUNT {
            let total: u64 = match map.get(&i, 0) {
                Ok(per_cpu) => per_cpu.iter().sum(),
                Err(e) => {
                    warn!(error = %e, "reading XDP DHCP counters failed");
                    return;
                }
            };
            let c = match stat_labels(i) {
                Some((a, r)) => self.dhcp_packets.with_label_values(&[a, r]),
                None if i == STAT_EVENTS_LOST => {
                    self.events_lost.reset();
                    self.events_lost.inc_by(total);
                    continue;
                }
                None if i == STAT_ACK_UNREPORTED => {
                    self.acks_unreported.reset();
                    self.acks_unreported.inc_by(total);
                    continue;
                }
                None => continue,
            };
            c.reset();
            c.inc_by(total);
        }
    }

    /// Copies the kernel's totals into the counters. The caller holds the map lock for the
    /// whole scrape, so concurrent scrapes never see a counter between reset and refill.
    fn refresh(&self, map: &PerCpuHashMap<MapData, CounterKey, Counters>) {
        for entry in map.iter() {
            let (key, per_cpu) = match entry {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "reading XDP counters failed");
                    continue;
                }
            };
            let Some(iface) = self.ifnames.get(&key.ifindex) else {
                // Interfaces the daemon was not configured for (e.g. renamed or re-created).
                continue;
            };
            let (p, b) = per_cpu
                .iter()
                .fold((0u64, 0u64), |(p, b), c| (p + c.packets, b + c.bytes));
            let l = [
                iface.as_str(),
                class_name(key.class),
                action_name(key.action),
            ];
            // The kernel holds the running totals; the counters mirror them exactly.
            let pc = self.packets.with_label_values(&l);
            pc.reset();
            pc.inc_by(p);
            let bc = self.bytes.with_label_values(&l);
            bc.reset();
            bc.inc_by(b);
        }
    }
}

impl Collector for XdpStats {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.packets.desc();
        d.extend(self.bytes.desc());
        if self.dhcp.is_some() {
            d.extend(self.dhcp_packets.desc());
            d.extend(self.events_lost.desc());
            d.extend(self.acks_unreported.desc());
        }
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Ok(map) = self.map.lock() else {
            return Vec::new();
        };
        self.refresh(&map);
        let mut out = self.packets.collect();
        out.extend(self.bytes.collect());
        drop(map);
        if let Some(dhcp) = &self.dhcp {
            if let Ok(m) = dhcp.lock() {
                self.refresh_dhcp(&m);
                out.extend(self.dhcp_packets.collect());
                out.extend(self.events_lost.collect());
                out.extend(self.acks_unreported.collect());
            }
        }
        out
    }
}
