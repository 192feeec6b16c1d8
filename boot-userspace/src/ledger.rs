//! The boot ledger: a per-host timeline of boot events that every service reports to, and
//! that metrics, the CLI, the admin API and the scheduler read.

use std::{
    collections::{HashMap, VecDeque},
    net::Ipv4Addr,
    sync::{Arc, Mutex},
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus::{IntCounterVec, Opts, Registry};

use crate::inventory::{Host, Inventory, Mac};

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
    /// A TFTP transfer was sent completely (detail: the file name).
    TftpSent,
    /// A TFTP transfer ended before its last block was acknowledged (detail: file and why).
    TftpFailed,
    /// An iPXE script was served to the host (detail: the path).
    IpxeScript,
    /// An HTTP download of an image began (detail: the path).
    HttpStarted,
    /// An HTTP download ended with every byte sent (detail: path and bytes).
    HttpSent,
    /// An HTTP download ended early (detail: path and bytes sent).
    HttpFailed,
    /// The installed system called back: the boot is done.
    Booted,
    /// The reboot scheduler's BMC accepted the boot override and the reset (detail: the
    /// reset type).
    BmcReset,
    /// The reboot scheduler's BMC operation failed (detail: why).
    BmcFailed,
    /// The reboot scheduler let the host through its admission gate: a download slot is its.
    Admitted,
    /// A provisioning config was delivered, once for this boot (detail: the config's name).
    ConfigServed,
    /// A config request was refused (detail: why, the first fetcher's address when the
    /// config was already delivered this boot, and the config's name).
    ConfigRefused,
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
            Self::TftpSent => "tftp_sent",
            Self::TftpFailed => "tftp_failed",
            Self::IpxeScript => "ipxe_script",
            Self::HttpStarted => "http_started",
            Self::HttpSent => "http_sent",
            Self::HttpFailed => "http_failed",
            Self::Booted => "booted",
            Self::BmcReset => "bmc_reset",
            Self::BmcFailed => "bmc_failed",
            Self::Admitted => "admitted",
            Self::ConfigServed => "config_served",
            Self::ConfigRefused => "config_refused",
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
    /// What it concerned, e.g. a file name (at most [`DETAIL_MAX`] bytes).
    pub detail: Option<String>,
}

/// Longest detail kept per event: names come from the network.
pub const DETAIL_MAX: usize = 128;

#[derive(Default)]
struct State {
    timelines: HashMap<Mac, VecDeque<Event>>,
    // Who holds an address now, from DHCP ACKs: how services that see only an address (TFTP,
    // HTTP) find the host behind it.
    holders: HashMap<Ipv4Addr, Mac>,
}

/// Seconds of egress history a rate is taken over.
pub const EGRESS_WINDOW_S: u64 = 5;

/// Bytes sent per second over the last [`EGRESS_WINDOW_S`] complete seconds.
#[derive(Default)]
struct Meter {
    /// Bytes per second, indexed by unix second modulo the ring size.
    buckets: [u64; EGRESS_WINDOW_S as usize + 1],
    /// The unix second each bucket holds.
    seconds: [u64; EGRESS_WINDOW_S as usize + 1],
}

impl Meter {
    fn add(&mut self, now: u64, bytes: u64) {
        let i = (now % self.buckets.len() as u64) as usize;
        if self.seconds[i] != now {
            self.seconds[i] = now;
            self.buckets[i] = 0;
        }
        self.buckets[i] += bytes;
    }

    fn rate(&self, now: u64) -> f64 {
        let from = now.saturating_sub(EGRESS_WINDOW_S);
        let total: u64 = self
            .seconds
            .iter()
            .zip(&self.buckets)
            .filter(|(s, _)| **s >= from && **s < now)
            .map(|(_, b)| *b)
            .sum();
        total as f64 / EGRESS_WINDOW_S as f64
    }
}

/// Shared handle to the ledger.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Mutex<State>>,
    egress: Arc<Mutex<HashMap<String, Meter>>>,
    events: IntCounterVec,
}

/// Unix milliseconds now (the ledger's time base).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
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
            egress: Arc::default(),
            events,
        })
    }

    /// Records an event for `mac` now.
    pub fn record(&self, mac: Mac, phase: Phase, ip: Option<Ipv4Addr>) {
        self.record_detail(mac, phase, ip, None);
    }

    /// Records an event for `mac` now, with what it concerned.
    pub fn record_detail(
        &self,
        mac: Mac,
        phase: Phase,
        ip: Option<Ipv4Addr>,
        detail: Option<&str>,
    ) {
        let at_ms = unix_ms();
        self.events.with_label_values(&[phase.as_str()]).inc();
        let detail = detail.map(|d| {
            let mut end = d.len().min(DETAIL_MAX);
            while !d.is_char_boundary(end) {
                end -= 1;
            }
            d[..end].to_owned()
        });
        let Ok(mut state) = self.inner.lock() else {
            return;
        };
        if let Some(ip) = ip {
            match phase {
                Phase::DhcpAck
                    if state.holders.len() < MAX_HOSTS || state.holders.contains_key(&ip) =>
                {
                    state.holders.insert(ip, mac);
                }
                Phase::DhcpRelease | Phase::DhcpDecline if state.holders.get(&ip) == Some(&mac) => {
                    state.holders.remove(&ip);
                }
                _ => {}
            }
        }
        if state.timelines.len() >= MAX_HOSTS && !state.timelines.contains_key(&mac) {
            return;
        }
        let q = state.timelines.entry(mac).or_default();
        if q.len() == EVENTS_PER_HOST {
            q.pop_front();
        }
        q.push_back(Event {
            at_ms,
            phase,
            ip,
            detail,
        });
    }

    /// Counts `bytes` sent to boot clients on `iface` (the fabric's measured bandwidth).
    pub fn egress(&self, iface: &str, bytes: u64) {
        let now = unix_seconds();
        if let Ok(mut m) = self.egress.lock() {
            match m.get_mut(iface) {
                Some(meter) => meter.add(now, bytes),
                None => {
                    let mut meter = Meter::default();
                    meter.add(now, bytes);
                    m.insert(iface.to_owned(), meter);
                }
            }
        }
    }

    /// Egress in bytes per second per interface, over the last [`EGRESS_WINDOW_S`] complete
    /// seconds, sorted by interface.
    pub fn egress_rates(&self) -> Vec<(String, f64)> {
        let now = unix_seconds();
        let mut rates: Vec<(String, f64)> = self
            .egress
            .lock()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.rate(now))).collect())
            .unwrap_or_default();
        rates.sort_by(|a, b| a.0.cmp(&b.0));
        rates
    }

    /// The host that was last acknowledged `ip` and has not given it back.
    pub fn holder(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.inner.lock().ok()?.holders.get(&ip).copied()
    }

    /// The inventory host at address `ip`: its reservation, or the lease it holds.
    pub fn host_at<'a>(&self, inventory: &'a Inventory, ip: Ipv4Addr) -> Option<&'a Host> {
        inventory
            .host_by_ip(ip)
            .or_else(|| self.holder(ip).and_then(|mac| inventory.host_by_mac(&mac)))
    }

    /// `host`'s address now: its reservation, else `peer` if the host holds it as a lease.
    pub fn address_of(&self, host: &Host, peer: Ipv4Addr) -> Option<Ipv4Addr> {
        host.ip
            .or_else(|| (self.holder(peer) == Some(host.mac)).then_some(peer))
    }

    /// The events of `mac` at or after `from_ms`, oldest first.
    pub fn events_since(&self, mac: Mac, from_ms: u64) -> Vec<Event> {
        self.inner
            .lock()
            .ok()
            .and_then(|s| {
                s.timelines
                    .get(&mac)
                    .map(|q| q.iter().filter(|e| e.at_ms >= from_ms).cloned().collect())
            })
            .unwrap_or_default()
    }

    /// The timeline of `mac`, oldest first.
    pub fn timeline(&self, mac: Mac) -> Vec<Event> {
        self.events_since(mac, 0)
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

    #[test]
    fn egress_rates_cover_complete_seconds() {
        let mut m = Meter::default();
        for s in 100..=110 {
            m.add(s, 1000);
        }
        m.add(110, 5000);
        // Seconds 105..=109 are complete at 110: 5 x 1000 over 5 s.
        assert_eq!(m.rate(110), 1000.0);
        assert_eq!(m.rate(200), 0.0);
    }

    #[test]
    fn knows_who_holds_an_address_until_it_is_given_back() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let (a, b) = (Mac([2, 0, 0, 0, 0, 1]), Mac([2, 0, 0, 0, 0, 2]));
        let ip = Ipv4Addr::new(10, 0, 0, 9);
        l.record(a, Phase::DhcpOffer, Some(ip));
        assert_eq!(l.holder(ip), None, "an offer is not a lease");
        l.record(a, Phase::DhcpAck, Some(ip));
        assert_eq!(l.holder(ip), Some(a));
        l.record(b, Phase::DhcpRelease, Some(ip));
        assert_eq!(l.holder(ip), Some(a), "only the holder gives it back");
        l.record(a, Phase::DhcpRelease, Some(ip));
        assert_eq!(l.holder(ip), None);
        let long = "é".repeat(DETAIL_MAX);
        l.record_detail(a, Phase::TftpSent, Some(ip), Some(&long));
        let detail = l.timeline(a).pop().and_then(|e| e.detail).expect("detail");
        assert!(detail.len() <= DETAIL_MAX && long.starts_with(&detail));
    }
}
