//! The boot ledger: a per-host timeline of boot events that every service reports to, and
//! that metrics, the CLI, the admin API and the scheduler read.

use std::{
    collections::{HashMap, VecDeque},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus::{IntCounterVec, Opts, Registry};

use crate::inventory::Mac;

/// Events kept per host (the newest win).
const EVENTS_PER_HOST: usize = 32;
/// Hosts tracked at once; a flood of unknown MACs cannot grow it beyond this.
const MAX_HOSTS: usize = 65_536;

/// A step of a boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// DHCPOFFER sent.
    DhcpOffer,
    /// DHCPACK sent (lease durable).
    DhcpAck,
    /// DHCPNAK sent.
    DhcpNak,
    /// The client released its lease.
    DhcpRelease,
    /// The client declined its address.
    DhcpDecline,
}

impl Phase {
    /// Metric and display label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DhcpOffer => "dhcp_offer",
            Self::DhcpAck => "dhcp_ack",
            Self::DhcpNak => "dhcp_nak",
            Self::DhcpRelease => "dhcp_release",
            Self::DhcpDecline => "dhcp_decline",
        }
    }
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// What happened.
    pub phase: Phase,
    /// The address involved, if any.
    pub ip: Option<Ipv4Addr>,
}

/// Shared handle to the ledger.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Mutex<HashMap<Mac, VecDeque<Event>>>>,
    events: IntCounterVec,
}

impl Ledger {
    /// A ledger exporting `bootfabric_ledger_events_total{phase}`.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "bootfabric_ledger_events_total",
                "Boot events recorded in the ledger, by phase.",
            ),
            &["phase"],
        )?;
        registry.register(Box::new(events.clone()))?;
        Ok(Self {
            inner: Arc::default(),
            events,
        })
    }

    /// Records an event for `mac` now.
    pub fn record(&self, mac: Mac, phase: Phase, ip: Option<Ipv4Addr>) {
        let at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        self.events.with_label_values(&[phase.as_str()]).inc();
        let Ok(mut map) = self.inner.lock() else {
            return;
        };
        if map.len() >= MAX_HOSTS && !map.contains_key(&mac) {
            return;
        }
        let q = map.entry(mac).or_default();
        if q.len() == EVENTS_PER_HOST {
            q.pop_front();
        }
        q.push_back(Event { at_ms, phase, ip });
    }

    /// The timeline of `mac`, oldest first.
    pub fn timeline(&self, mac: Mac) -> Vec<Event> {
        self.inner
            .lock()
            .map(|m| {
                m.get(&mac)
                    .map(|q| q.iter().cloned().collect())
                    .unwrap_or_default()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_newest_events_per_host() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let m = Mac([2, 0, 0, 0, 0, 1]);
        for _ in 0..40 {
            l.record(m, Phase::DhcpOffer, None);
        }
        l.record(m, Phase::DhcpAck, Some(Ipv4Addr::new(10, 0, 0, 1)));
        let t = l.timeline(m);
        assert_eq!(t.len(), EVENTS_PER_HOST);
        assert_eq!(t.last().map(|e| e.phase), Some(Phase::DhcpAck));
    }
}
