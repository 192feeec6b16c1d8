//! The control plane's event vocabulary: what the event log (in [`crate::model::ledger`]) holds,
//! what SSE streams and webhooks deliver, and the pure rules that turn a host's boot events into
//! them. No locks, no clock, no I/O here.
//!
//! The boot events of the data plane are many and anyone on the provisioning network can cause
//! them; the API's events are few: [`BootTrack`] reports only the *first* event of each phase of
//! a boot (`host.phase`), the end of a boot (`host.booted`, `host.failed`) and config deliveries
//! (`host.config_fetched`), and a per-host token bucket caps even those.

use std::{fmt, str::FromStr, sync::Arc};

use serde::ser::{Serialize, SerializeMap, Serializer};

use crate::model::{
    inventory::Mac,
    ledger::{EventKind, Phase},
};

/// The type of an API event (`"type"` in its JSON, `event:` in SSE).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    /// The first event of a phase of a boot: `{"phase":"dhcp|loader|script|kernel|config"}`.
    HostPhase,
    /// The installed system called back.
    HostBooted,
    /// A boot failed: a transfer ended early, the BMC failed, the scheduler gave up
    /// (`{"reason":…}`).
    HostFailed,
    /// A provisioning config was delivered (`{"name":…}`).
    HostConfigFetched,
    /// A host was added to the inventory.
    HostCreated,
    /// A host of the inventory was changed.
    HostUpdated,
    /// A host left the inventory.
    HostDeleted,
    /// A profile was added.
    ProfileCreated,
    /// A profile was changed.
    ProfileUpdated,
    /// A profile was removed.
    ProfileDeleted,
    /// A new configuration was published (`{"generation":n}`).
    ConfigGeneration,
}

impl EventType {
    /// Every type, in a fixed order.
    pub const ALL: [Self; 11] = [
        Self::HostPhase,
        Self::HostBooted,
        Self::HostFailed,
        Self::HostConfigFetched,
        Self::HostCreated,
        Self::HostUpdated,
        Self::HostDeleted,
        Self::ProfileCreated,
        Self::ProfileUpdated,
        Self::ProfileDeleted,
        Self::ConfigGeneration,
    ];

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::HostPhase => "host.phase",
            Self::HostBooted => "host.booted",
            Self::HostFailed => "host.failed",
            Self::HostConfigFetched => "host.config_fetched",
            Self::HostCreated => "host.created",
            Self::HostUpdated => "host.updated",
            Self::HostDeleted => "host.deleted",
            Self::ProfileCreated => "profile.created",
            Self::ProfileUpdated => "profile.updated",
            Self::ProfileDeleted => "profile.deleted",
            Self::ConfigGeneration => "config.generation",
        }
    }

    /// A bit of its own, for sets of types ([`TypeSet`]).
    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is not an event type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event type {name:?} (known: host.phase, host.booted, host.failed, host.config_fetched, host.created, host.updated, host.deleted, profile.created, profile.updated, profile.deleted, config.generation)")]
pub struct UnknownEventType {
    /// The name given (cut to 64 bytes).
    pub name: String,
}

impl FromStr for EventType {
    type Err = UnknownEventType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownEventType {
                name: s.chars().take(64).collect(),
            })
    }
}

impl Serialize for EventType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for EventType {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of event types (a subscription's filter): a bitset, so matching is one AND.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TypeSet(u16);

impl TypeSet {
    /// Every type.
    pub const ALL: Self = Self(u16::MAX);

    /// No type.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// Whether `t` is in the set.
    pub fn contains(self, t: EventType) -> bool {
        self.0 & t.bit() != 0
    }

    /// The set with `t` added.
    pub fn with(self, t: EventType) -> Self {
        Self(self.0 | t.bit())
    }

    /// Whether no type is in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The set of a comma-separated list of wire names (`host.booted,host.failed`).
    pub fn parse_list(list: &str) -> Result<Self, UnknownEventType> {
        list.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .try_fold(Self::empty(), |set, t| Ok(set.with(t.parse()?)))
    }
}

impl FromIterator<EventType> for TypeSet {
    fn from_iter<I: IntoIterator<Item = EventType>>(iter: I) -> Self {
        iter.into_iter().fold(Self::empty(), Self::with)
    }
}

/// A step of a boot as the API names it (`host.phase`'s `data.phase`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootPhase {
    /// The host's DHCP exchange (its DISCOVER was answered).
    Dhcp,
    /// Its network loader (iPXE, or the first file of a UEFI HTTP boot) was sent.
    Loader,
    /// Its iPXE script was served.
    Script,
    /// Its kernel or an image began downloading (after the script).
    Kernel,
    /// Its provisioning config was delivered.
    Config,
}

impl BootPhase {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dhcp => "dhcp",
            Self::Loader => "loader",
            Self::Script => "script",
            Self::Kernel => "kernel",
            Self::Config => "config",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// What an event carries beyond its type, kept in the typed form it was recorded in: the
/// packet path only moves values, and the JSON is built when a reader asks ([`Payload::data`]).
#[derive(Clone, Debug, PartialEq)]
pub enum Payload {
    /// Nothing (`{}`).
    None,
    /// `host.phase`.
    Phase(BootPhase),
    /// The ledger event that made a `host.failed` or `host.config_fetched` (already bounded).
    Boot(EventKind),
    /// A control-plane event's data, as given.
    Json(serde_json::Value),
}

impl Payload {
    /// The event's `data` object.
    pub fn data(&self) -> serde_json::Value {
        use serde_json::json;
        match self {
            Self::None => json!({}),
            Self::Phase(p) => json!({ "phase": p.as_str() }),
            Self::Boot(kind) => match kind {
                EventKind::ConfigServed { name } => json!({ "name": name }),
                other => json!({ "reason": failure_reason(other) }),
            },
            Self::Json(v) => v.clone(),
        }
    }
}

/// One line saying why a boot failed, from the ledger event that says so.
fn failure_reason(kind: &EventKind) -> String {
    match kind {
        EventKind::TftpFailed { file, why } => format!("tftp {file}: {why}"),
        EventKind::HttpFailed { path, bytes } => {
            format!("http {path}: ended after {bytes} bytes")
        }
        EventKind::BmcFailed { why } => format!("bmc: {why}"),
        EventKind::BootFailed { reason } => reason.clone(),
        other => other.phase().as_str().to_owned(),
    }
}

/// One event as the API delivers it.
#[derive(Clone, Debug, PartialEq)]
pub struct ApiEvent {
    /// Its place in the log: strictly increasing, consecutive within one daemon run.
    pub id: u64,
    /// Unix milliseconds.
    pub at_ms: u64,
    /// Its type.
    pub kind: EventType,
    /// The host's name, for host events.
    pub host: Option<String>,
    /// The host's MAC, for host events.
    pub mac: Option<Mac>,
    /// Type-specific data (an object).
    pub data: serde_json::Value,
}

impl Serialize for ApiEvent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(6))?;
        m.serialize_entry("id", &self.id)?;
        m.serialize_entry("type", self.kind.as_str())?;
        m.serialize_entry("at", &rfc3339(self.at_ms))?;
        m.serialize_entry("host", &self.host)?;
        m.serialize_entry("mac", &self.mac.map(|m| m.to_string()))?;
        m.serialize_entry("data", &self.data)?;
        m.end()
    }
}

impl ApiEvent {
    /// The event's JSON, on one line.
    pub fn to_json(&self) -> String {
        // Serializing a map of strings, numbers and a `Value` cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// A page of the event log.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct EventPage {
    /// Events after the cursor, oldest first.
    pub events: Vec<ApiEvent>,
    /// Ids after the cursor that the log no longer holds (first, last; inclusive): the reader
    /// was lapped and must re-list what it follows.
    pub gap: Option<(u64, u64)>,
}

/// `at_ms` (unix milliseconds) as RFC 3339 UTC with milliseconds (`2026-11-30T18:19:12.345Z`).
pub fn rfc3339(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        at_ms % 1000
    )
}

/// The proleptic Gregorian date of a count of days since 1970-01-01 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// A boot lasts at most this long for the event log: a host that stops reporting mid-boot (it
/// was powered off) opens a new boot with its next DISCOVER after this, and reports its phases
/// again.
pub const BOOT_TTL_MS: u64 = 60 * 60 * 1000;
/// Host events a host may cause in a burst…
pub const RATE_BURST: u32 = 20;
/// …and one more every this many milliseconds (20 a minute): a host whose address repeats
/// failing downloads cannot lap the ring and hide other hosts' events.
pub const RATE_REFILL_MS: u64 = 3_000;
/// Ledger events of one host the boot history on disk takes in a burst (a whole boot, its
/// retries included, is a few dozen)…
pub const JOURNAL_BURST: u32 = 256;
/// …and one more every this many milliseconds: a machine that asks for a host's script or
/// files in a loop (any machine can send from a host's address) writes at most one line a
/// second, so it cannot roll the other hosts' history off the disk, nor spend the daemon's
/// CPU on writing it.
pub const JOURNAL_REFILL_MS: u64 = 1_000;

/// A token bucket: `burst` at most, one more every `refill_ms`.
#[derive(Clone, Copy, Debug)]
pub struct Budget {
    tokens: u32,
    /// When `tokens` was last refilled.
    refilled_ms: u64,
    burst: u32,
    refill_ms: u64,
}

impl Budget {
    /// A full bucket.
    pub const fn new(burst: u32, refill_ms: u64) -> Self {
        Self {
            tokens: burst,
            refilled_ms: 0,
            burst,
            refill_ms,
        }
    }

    /// Takes one token at `at_ms`; false when the bucket is empty.
    pub fn take(&mut self, at_ms: u64) -> bool {
        let earned = at_ms.saturating_sub(self.refilled_ms) / self.refill_ms.max(1);
        if earned > 0 {
            let tokens = u64::from(self.tokens).saturating_add(earned);
            self.tokens = tokens.min(u64::from(self.burst)) as u32;
            self.refilled_ms = if self.tokens == self.burst {
                at_ms
            } else {
                self.refilled_ms + earned * self.refill_ms
            };
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// What the event log knows about one inventory host's boot: which phases it has reported in
/// the boot in progress, and its rate budget.
#[derive(Clone, Debug)]
pub struct BootTrack {
    /// The host's name.
    pub name: Arc<str>,
    /// Its profile and model (empty when it has none): the duration histogram's labels.
    pub labels: Arc<(String, String)>,
    /// Start (unix ms) of the boot in progress.
    open_ms: Option<u64>,
    /// [`BootPhase`] bits reported in it.
    seen: u8,
    /// The event log's rate cap for it.
    budget: Budget,
    /// The boot history's ([`JOURNAL_BURST`], [`JOURNAL_REFILL_MS`]).
    journal: Budget,
}

/// What [`BootTrack::advance`] found: the API events a ledger event makes, and when the boot
/// it belongs to started (`None`: it belongs to none, e.g. a renewing system's ACK).
#[derive(Debug, Default, PartialEq)]
pub struct Advanced {
    /// The events, in order.
    pub events: Vec<(EventType, Payload)>,
    /// Start (unix ms) of the boot the event is part of.
    pub boot_ms: Option<u64>,
}

/// What [`BootTrack::observe`] decided for one ledger event: up to two API events (a config
/// delivery is both the `config` phase and `host.config_fetched`), and how many it had to
/// drop for the rate cap.
#[derive(Debug, Default, PartialEq)]
pub struct Observed {
    /// The events to append, in order.
    pub events: Vec<(EventType, Payload)>,
    /// Events refused by the rate cap.
    pub dropped: u64,
}

impl BootTrack {
    /// A host with no boot in progress and a full budget.
    pub fn new(name: Arc<str>) -> Self {
        Self {
            name,
            labels: Arc::default(),
            open_ms: None,
            seen: 0,
            budget: Budget::new(RATE_BURST, RATE_REFILL_MS),
            journal: Budget::new(JOURNAL_BURST, JOURNAL_REFILL_MS),
        }
    }

    /// The API events that the ledger event `kind` at `at_ms` makes.
    ///
    /// A boot is opened as config delivery (`services::http::configs`) opens one: a BMC reset always
    /// begins a new boot; a DHCP offer (a DISCOVER) or an iPXE script begins one when none is
    /// open, so the second DISCOVER of a boot (iPXE's, the installer's) does not reopen it; a
    /// DHCP ACK never does (a running system renews). `booted` and a failure end it, and so does
    /// [`BOOT_TTL_MS`]. Downloads before the script are the loader, after it the kernel.
    pub fn observe(&mut self, kind: &EventKind, at_ms: u64) -> Observed {
        let advanced = self.advance(kind, at_ms);
        self.spend(advanced.events, at_ms)
    }

    /// The rate cap applied to `events` (from [`BootTrack::advance`]) at `at_ms`.
    pub fn spend(&mut self, events: Vec<(EventType, Payload)>, at_ms: u64) -> Observed {
        let mut out = Observed::default();
        for e in events {
            if self.budget.take(at_ms) {
                out.events.push(e);
            } else {
                out.dropped += 1;
            }
        }
        out
    }

    /// The boot rules of [`BootTrack::observe`] without the rate cap: every API event the
    /// ledger event makes, with the start of the boot it belongs to. The duration histogram
    /// and `bootfabric history` read boots from this, so what they see does not depend on
    /// the event log's budget.
    pub fn advance(&mut self, kind: &EventKind, at_ms: u64) -> Advanced {
        if self
            .open_ms
            .is_some_and(|s| at_ms >= s.saturating_add(BOOT_TTL_MS))
        {
            self.open_ms = None;
        }
        let phase = kind.phase();
        match phase {
            Phase::BmcReset => self.open(at_ms),
            Phase::DhcpOffer | Phase::IpxeScript if self.open_ms.is_none() => self.open(at_ms),
            _ => {}
        }
        // The boot this event belongs to, before `booted` or a failure closes it.
        let started = self.open_ms;
        let mut wanted: Vec<(EventType, Payload)> = Vec::new();
        match phase {
            Phase::DhcpOffer | Phase::DhcpAck => wanted.extend(self.phase_once(BootPhase::Dhcp)),
            Phase::TftpSent | Phase::HttpStarted => {
                let p = if self.seen & BootPhase::Script.bit() != 0 {
                    BootPhase::Kernel
                } else {
                    BootPhase::Loader
                };
                wanted.extend(self.phase_once(p));
            }
            Phase::IpxeScript => wanted.extend(self.phase_once(BootPhase::Script)),
            Phase::ConfigServed => {
                wanted.extend(self.phase_once(BootPhase::Config));
                wanted.push((EventType::HostConfigFetched, Payload::Boot(kind.clone())));
            }
            Phase::Booted => {
                self.open_ms = None;
                wanted.push((EventType::HostBooted, Payload::None));
            }
            Phase::TftpFailed | Phase::HttpFailed | Phase::BmcFailed | Phase::BootFailed => {
                self.open_ms = None;
                wanted.push((EventType::HostFailed, Payload::Boot(kind.clone())));
            }
            Phase::DhcpNak
            | Phase::DhcpRelease
            | Phase::DhcpDecline
            | Phase::HttpSent
            | Phase::BmcReset
            | Phase::Admitted
            | Phase::ConfigRefused => {}
        }
        Advanced {
            events: wanted,
            boot_ms: started,
        }
    }

    /// When the boot in progress started (unix ms), if one is open.
    pub fn open_ms(&self) -> Option<u64> {
        self.open_ms
    }

    /// `host.phase` for `p` if a boot is open and has not reported `p` yet.
    fn phase_once(&mut self, p: BootPhase) -> Option<(EventType, Payload)> {
        if self.open_ms.is_none() || self.seen & p.bit() != 0 {
            return None;
        }
        self.seen |= p.bit();
        Some((EventType::HostPhase, Payload::Phase(p)))
    }

    fn open(&mut self, at_ms: u64) {
        self.open_ms = Some(at_ms);
        self.seen = 0;
    }

    /// Whether the boot history on disk takes one more of this host's ledger events at
    /// `at_ms` (its own budget, apart from the event log's: the history keeps every event of
    /// a boot, the event log only its phases).
    pub fn journal(&mut self, at_ms: u64) -> bool {
        self.journal.take(at_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn phases(o: &Observed) -> Vec<String> {
        o.events
            .iter()
            .map(|(t, p)| match p {
                Payload::Phase(ph) => format!("{t}:{}", ph.as_str()),
                _ => t.to_string(),
            })
            .collect()
    }

    fn walk(track: &mut BootTrack, steps: &[(EventKind, u64)]) -> Vec<String> {
        steps
            .iter()
            .flat_map(|(k, at)| phases(&track.observe(k, *at)))
            .collect()
    }

    fn path(p: &str) -> String {
        p.to_owned()
    }

    #[test]
    fn a_boot_reports_each_phase_once_and_its_end() {
        let mut t = BootTrack::new("n1".into());
        let boot = [
            (EventKind::DhcpOffer, 1_000),
            (EventKind::DhcpAck, 1_001),
            (
                EventKind::TftpSent {
                    file: path("ipxe.efi"),
                },
                1_100,
            ),
            // iPXE's own DISCOVER: the same boot.
            (EventKind::DhcpOffer, 1_200),
            (EventKind::DhcpAck, 1_201),
            (
                EventKind::IpxeScript {
                    path: path("/boot.ipxe"),
                },
                1_300,
            ),
            (
                EventKind::HttpStarted {
                    path: path("/vmlinuz"),
                },
                1_400,
            ),
            (
                EventKind::HttpSent {
                    path: path("/vmlinuz"),
                    bytes: 9,
                },
                1_500,
            ),
            (
                EventKind::HttpStarted {
                    path: path("/initrd"),
                },
                1_600,
            ),
            // The installer's DHCP.
            (EventKind::DhcpOffer, 2_000),
            (
                EventKind::ConfigServed {
                    name: path("ks.cfg"),
                },
                2_100,
            ),
            (EventKind::Booted, 9_000),
            // A running system renews: nothing.
            (EventKind::DhcpAck, 99_000),
        ];
        assert_eq!(
            walk(&mut t, &boot),
            [
                "host.phase:dhcp",
                "host.phase:loader",
                "host.phase:script",
                "host.phase:kernel",
                "host.phase:config",
                "host.config_fetched",
                "host.booted"
            ]
        );
        // The next boot reports its phases again; a UEFI HTTP boot's first download is its
        // loader.
        let next = [
            (EventKind::DhcpOffer, 100_000),
            (
                EventKind::HttpStarted {
                    path: path("/ipxe.efi"),
                },
                100_100,
            ),
            (
                EventKind::HttpFailed {
                    path: path("/ipxe.efi"),
                    bytes: 3,
                },
                100_200,
            ),
        ];
        assert_eq!(
            walk(&mut t, &next),
            ["host.phase:dhcp", "host.phase:loader", "host.failed"]
        );
    }

    #[test]
    fn a_reset_opens_a_new_boot_and_a_stale_boot_expires() {
        let mut t = BootTrack::new("n1".into());
        walk(&mut t, &[(EventKind::DhcpOffer, 0)]);
        let reset = EventKind::BmcReset {
            reset_type: "ForceRestart".into(),
        };
        assert_eq!(
            walk(&mut t, &[(reset, 10), (EventKind::DhcpOffer, 20)]),
            ["host.phase:dhcp"]
        );
        // Powered off mid-boot, back an hour later: a new boot.
        assert_eq!(
            walk(&mut t, &[(EventKind::DhcpOffer, 20 + BOOT_TTL_MS)]),
            ["host.phase:dhcp"]
        );
    }

    #[test]
    fn a_host_is_capped_and_its_drops_counted() {
        let mut t = BootTrack::new("n1".into());
        let fail = EventKind::HttpFailed {
            path: path("/x"),
            bytes: 0,
        };
        let mut sent = 0;
        let mut dropped = 0;
        for i in 0..100 {
            let o = t.observe(&fail, 1_000 + i);
            sent += o.events.len();
            dropped += o.dropped;
        }
        assert_eq!(
            (sent, dropped),
            (RATE_BURST as usize, 100 - u64::from(RATE_BURST))
        );
        // One more per refill period, not a burst after a short pause.
        assert_eq!(t.observe(&fail, 1_100 + RATE_REFILL_MS).events.len(), 1);
        assert_eq!(t.observe(&fail, 1_101 + RATE_REFILL_MS).dropped, 1);
        // A quiet hour gives the whole burst back, never more.
        let later = 10 * BOOT_TTL_MS;
        let n: usize = (0..100)
            .map(|i| t.observe(&fail, later + i).events.len())
            .sum();
        assert_eq!(n, RATE_BURST as usize);
        // A clock that goes back takes nothing and grants nothing.
        assert_eq!(t.observe(&fail, 0).dropped, 1);
    }

    #[test]
    fn data_is_built_from_the_typed_event() {
        let failed = Payload::Boot(EventKind::TftpFailed {
            file: "ipxe.efi".into(),
            why: "timeout",
        });
        assert_eq!(
            failed.data(),
            serde_json::json!({"reason": "tftp ipxe.efi: timeout"})
        );
        let fetched = Payload::Boot(EventKind::ConfigServed { name: "ks".into() });
        assert_eq!(fetched.data(), serde_json::json!({"name": "ks"}));
        assert_eq!(
            Payload::Phase(BootPhase::Kernel).data(),
            serde_json::json!({"phase": "kernel"})
        );
    }

    #[test]
    fn an_event_serializes_as_the_api_says() {
        let e = ApiEvent {
            id: 7,
            at_ms: 1_764_527_952_345,
            kind: EventType::HostBooted,
            host: Some("node07".into()),
            mac: Some(Mac([0x52, 0x54, 0, 0, 0, 7])),
            data: serde_json::json!({}),
        };
        assert_eq!(
            e.to_json(),
            r#"{"id":7,"type":"host.booted","at":"2025-11-30T18:39:12.345Z","host":"node07","mac":"52:54:00:00:00:07","data":{}}"#
        );
        let control = ApiEvent {
            host: None,
            mac: None,
            kind: EventType::ConfigGeneration,
            data: serde_json::json!({"generation": 3}),
            ..e
        };
        assert!(control
            .to_json()
            .contains(r#""host":null,"mac":null,"data":{"generation":3}"#));
    }

    #[test]
    fn rfc3339_matches_known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 (a leap day of a century divisible by 400) and 2100-03-01.
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(4_107_542_400_001), "2100-03-01T00:00:00.001Z");
        assert_eq!(rfc3339(1_709_251_199_999), "2024-02-29T23:59:59.999Z");
    }

    #[test]
    fn type_lists_parse_and_unknown_names_are_refused() {
        let set = TypeSet::parse_list("host.booted, host.failed,").expect("types");
        assert!(set.contains(EventType::HostBooted) && set.contains(EventType::HostFailed));
        assert!(!set.contains(EventType::HostPhase));
        assert!(TypeSet::parse_list("").expect("empty").is_empty());
        assert!(TypeSet::parse_list("host.booted,nope").is_err());
        for t in EventType::ALL {
            assert_eq!(t.as_str().parse::<EventType>(), Ok(t));
            assert!(TypeSet::ALL.contains(t));
        }
        let json: Vec<EventType> =
            serde_json::from_str(r#"["host.phase","config.generation"]"#).expect("json");
        assert_eq!(json, [EventType::HostPhase, EventType::ConfigGeneration]);
    }
}
