//! The boot ledger: a per-host timeline of boot events that every service reports to, and
//! that metrics, the CLI, the admin API and the scheduler read.
//!
//! Anyone on the provisioning network can make up MACs, so the ledger keeps two classes of
//! timelines. Inventory hosts' are always recorded and never evicted: they are what a reboot
//! run and an operator follow. Every other MAC lives in a bounded LRU ([`OTHER_HOSTS`] by
//! default), the least recently seen evicted first and counted
//! (`bootfabric_ledger_evictions_total`), so a flood of random MACs costs bounded memory and
//! hides nobody. Recording is O(1) whatever the number of hosts; only [`Ledger::set_inventory`]
//! (start and reload) walks the inventory.
//!
//! The ledger also keeps the control plane's event log (SSE and webhooks read it): a ring of
//! the last [`EVENT_LOG`] API events with one id sequence, appended under the same lock as the
//! timelines, in O(1) and without formatting anything (the JSON is built when a reader reads).
//! Only inventory hosts make boot events there, only for phase changes ([`BootTrack`]), at a
//! capped rate per host; control-plane events come through [`Ledger::emit`].

use std::{
    collections::{HashMap, VecDeque},
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock},
    time::{SystemTime, UNIX_EPOCH},
};

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};
use tokio::sync::Notify;

pub mod events;
pub mod history;

pub use events::{ApiEvent, EventPage, EventType};
use events::{BootTrack, Payload};

use crate::model::inventory::{Host, Inventory, Mac, Netboot};

/// Events kept per inventory host (the newest win).
pub const EVENTS_PER_HOST: usize = 32;
/// Events kept per MAC outside the inventory: enough for one whole boot (DHCP, TFTP, script,
/// downloads, `booted`), and half the inventory's, since anyone can make up these MACs and
/// [`OTHER_HOSTS`] of them at this length is the ledger's worst case (88-byte events, since
/// an event's address may be IPv6: about 92 MiB, plus the names of TFTP and HTTP events, at most `DETAIL_MAX + 3` bytes each, which
/// only MACs holding a lease get).
const OTHER_EVENTS_PER_HOST: usize = 16;
/// MACs outside the inventory tracked at once, by default; the least recently seen is evicted
/// to make room for a new one.
pub const OTHER_HOSTS: usize = 65_536;
/// Addresses whose holder (from DHCP ACKs) is remembered for MACs outside the inventory;
/// inventory hosts' leases are always remembered.
const MAX_HOLDERS: usize = 65_536;

/// A step of a boot: what an [`EventKind`] is, without what it concerned (metric labels,
/// matching).
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
    /// A TFTP transfer was sent completely.
    TftpSent,
    /// A TFTP transfer ended before its last block was acknowledged.
    TftpFailed,
    /// An iPXE script was served to the host.
    IpxeScript,
    /// An HTTP download of an image began.
    HttpStarted,
    /// An HTTP download ended with every byte sent.
    HttpSent,
    /// An HTTP download ended early.
    HttpFailed,
    /// The installed system called back: the boot is done.
    Booted,
    /// The reboot scheduler's BMC accepted the boot override and the reset.
    BmcReset,
    /// The reboot scheduler's BMC operation failed.
    BmcFailed,
    /// The reboot scheduler let the host through its admission gate: a download slot is its.
    Admitted,
    /// A provisioning config was delivered, once for this boot.
    ConfigServed,
    /// A config request was refused.
    ConfigRefused,
    /// The reboot scheduler gave up on the host's boot (a timeout, a refused reset).
    BootFailed,
}

impl Phase {
    /// Every phase, in a fixed order.
    pub const ALL: [Self; 18] = [
        Self::DhcpOffer,
        Self::DhcpAck,
        Self::DhcpNak,
        Self::DhcpRelease,
        Self::DhcpDecline,
        Self::TftpSent,
        Self::TftpFailed,
        Self::IpxeScript,
        Self::HttpStarted,
        Self::HttpSent,
        Self::HttpFailed,
        Self::Booted,
        Self::BmcReset,
        Self::BmcFailed,
        Self::Admitted,
        Self::ConfigServed,
        Self::ConfigRefused,
        Self::BootFailed,
    ];

    /// The phase labelled `s` ([`Phase::as_str`]): how another fabric's shared timeline
    /// entries (cluster mode) are read back.
    pub fn from_label(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }

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
            Self::BootFailed => "boot_failed",
        }
    }
}

/// What happened, with what it concerned: the typed form every reader (the reboot runner, the
/// admin API, config delivery) matches on. Strings that come from the network (file names,
/// paths) are cut to [`DETAIL_MAX`] bytes when recorded, so an event's size stays bounded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventKind {
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
    /// A TFTP transfer was sent completely.
    TftpSent {
        /// The file name as requested.
        file: String,
    },
    /// A TFTP transfer ended before its last block was acknowledged.
    TftpFailed {
        /// The file name as requested.
        file: String,
        /// How it ended (the transfer metric's outcome label).
        why: &'static str,
    },
    /// An iPXE script was served to the host.
    IpxeScript {
        /// The request path.
        path: String,
    },
    /// An HTTP download of an image began.
    HttpStarted {
        /// The request path.
        path: String,
    },
    /// An HTTP download ended with every byte sent.
    HttpSent {
        /// The request path.
        path: String,
        /// Body bytes sent.
        bytes: u64,
    },
    /// An HTTP download ended early.
    HttpFailed {
        /// The request path.
        path: String,
        /// Body bytes sent before it ended.
        bytes: u64,
    },
    /// The installed system called back: the boot is done.
    Booted,
    /// The reboot scheduler's BMC accepted the boot override and the reset.
    BmcReset {
        /// The reset type the BMC was asked for.
        reset_type: String,
    },
    /// The reboot scheduler's BMC operation failed.
    BmcFailed {
        /// Why.
        why: String,
    },
    /// The reboot scheduler let the host through its admission gate: a download slot is its.
    Admitted,
    /// A provisioning config was delivered, once for this boot.
    ConfigServed {
        /// The config's name.
        name: String,
    },
    /// A config request was refused.
    ConfigRefused {
        /// The config's name.
        name: String,
        /// Why.
        why: ConfigRefusal,
    },
    /// The reboot scheduler gave up on the host's boot: it timed out in a phase, or its BMC
    /// refused every attempt. Only the scheduler's state knew this before; the event log
    /// (`host.failed`) needs it in the ledger.
    BootFailed {
        /// Why, for an operator.
        reason: String,
    },
}

/// Why a host's config request was refused (the reasons worth a ledger line; malformed
/// requests are only counted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConfigRefusal {
    /// The path names another host's folder.
    Owner(String),
    /// No boot of the host is in progress.
    NoBoot,
    /// The request carried another boot's nonce.
    WrongNonce,
    /// The config was already delivered in this boot, first to this address.
    Again {
        /// Who fetched it first.
        first: IpAddr,
    },
    /// The template did not render for the host (the daemon's log says where and why).
    Template,
}

impl std::fmt::Display for ConfigRefusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Owner(owner) => write!(f, "for {owner}"),
            Self::NoBoot => f.write_str("no boot in progress"),
            Self::WrongNonce => f.write_str("wrong nonce"),
            Self::Again { first } => write!(f, "again, first served to {first}"),
            Self::Template => f.write_str("template error"),
        }
    }
}

impl EventKind {
    /// The step of the boot this event is.
    pub fn phase(&self) -> Phase {
        match self {
            Self::DhcpOffer => Phase::DhcpOffer,
            Self::DhcpAck => Phase::DhcpAck,
            Self::DhcpNak => Phase::DhcpNak,
            Self::DhcpRelease => Phase::DhcpRelease,
            Self::DhcpDecline => Phase::DhcpDecline,
            Self::TftpSent { .. } => Phase::TftpSent,
            Self::TftpFailed { .. } => Phase::TftpFailed,
            Self::IpxeScript { .. } => Phase::IpxeScript,
            Self::HttpStarted { .. } => Phase::HttpStarted,
            Self::HttpSent { .. } => Phase::HttpSent,
            Self::HttpFailed { .. } => Phase::HttpFailed,
            Self::Booted => Phase::Booted,
            Self::BmcReset { .. } => Phase::BmcReset,
            Self::BmcFailed { .. } => Phase::BmcFailed,
            Self::Admitted => Phase::Admitted,
            Self::ConfigServed { .. } => Phase::ConfigServed,
            Self::ConfigRefused { .. } => Phase::ConfigRefused,
            Self::BootFailed { .. } => Phase::BootFailed,
        }
    }

    /// The downloaded file's path, for a completed download (HTTP or TFTP).
    pub fn sent_path(&self) -> Option<&str> {
        match self {
            Self::HttpSent { path, .. } => Some(path),
            Self::TftpSent { file } => Some(file),
            _ => None,
        }
    }

    /// What it concerned, as one line of text (the admin API's `detail`), at most
    /// [`DETAIL_MAX`] bytes.
    pub fn detail(&self) -> Option<String> {
        let text = match self {
            Self::DhcpOffer
            | Self::DhcpAck
            | Self::DhcpNak
            | Self::DhcpRelease
            | Self::DhcpDecline
            | Self::Booted
            | Self::Admitted => return None,
            Self::TftpSent { file } => file.clone(),
            Self::TftpFailed { file, why } => format!("{file}: {why}"),
            Self::IpxeScript { path } | Self::HttpStarted { path } => path.clone(),
            Self::HttpSent { path, bytes } | Self::HttpFailed { path, bytes } => {
                format!("{path}: {bytes} bytes")
            }
            Self::BmcReset { reset_type } => reset_type.clone(),
            Self::BmcFailed { why } => why.clone(),
            Self::ConfigServed { name } => name.clone(),
            Self::ConfigRefused { name, why } => format!("{why}: {name}"),
            Self::BootFailed { reason } => reason.clone(),
        };
        Some(cut(text))
    }

    /// The event with every free-form string cut to [`DETAIL_MAX`] bytes.
    fn bounded(self) -> Self {
        match self {
            Self::TftpSent { file } => Self::TftpSent { file: bound(file) },
            Self::TftpFailed { file, why } => Self::TftpFailed {
                file: bound(file),
                why,
            },
            Self::IpxeScript { path } => Self::IpxeScript { path: bound(path) },
            Self::HttpStarted { path } => Self::HttpStarted { path: bound(path) },
            Self::HttpSent { path, bytes } => Self::HttpSent {
                path: bound(path),
                bytes,
            },
            Self::HttpFailed { path, bytes } => Self::HttpFailed {
                path: bound(path),
                bytes,
            },
            Self::BmcReset { reset_type } => Self::BmcReset {
                reset_type: bound(reset_type),
            },
            Self::BmcFailed { why } => Self::BmcFailed { why: bound(why) },
            Self::ConfigServed { name } => Self::ConfigServed { name: bound(name) },
            Self::ConfigRefused { name, why } => Self::ConfigRefused {
                name: bound(name),
                why: match why {
                    ConfigRefusal::Owner(o) => ConfigRefusal::Owner(bound(o)),
                    other => other,
                },
            },
            Self::BootFailed { reason } => Self::BootFailed {
                reason: bound(reason),
            },
            other => other,
        }
    }
}

/// `s` cut to at most [`DETAIL_MAX`] bytes, on a character boundary: the admin API's
/// `detail`, as it always was.
fn cut(s: String) -> String {
    let mut end = s.len().min(DETAIL_MAX);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    if end == s.len() {
        s
    } else {
        s[..end].to_owned()
    }
}

/// A field `s` as stored: every character that starts within the first [`DETAIL_MAX`] bytes
/// (at most `DETAIL_MAX + 3` bytes), in a fresh allocation, since a path from the network
/// may arrive in a buffer of kilobytes. Keeping the character that straddles the limit whole
/// makes the rendered `detail` identical to cutting the uncut text.
fn bound(mut s: String) -> String {
    if s.len() <= DETAIL_MAX {
        // A short name may still sit in a large buffer.
        s.shrink_to_fit();
        return s;
    }
    let mut end = DETAIL_MAX;
    while !s.is_char_boundary(end) {
        end += 1;
    }
    s[..end].to_owned()
}

/// One event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Event {
    /// Unix milliseconds.
    pub at_ms: u64,
    /// The address involved, if any.
    pub ip: Option<IpAddr>,
    /// What happened.
    pub kind: EventKind,
}

impl Event {
    /// The step of the boot this event is.
    pub fn phase(&self) -> Phase {
        self.kind.phase()
    }
}

/// Longest detail kept per event: names come from the network.
pub const DETAIL_MAX: usize = 128;

struct State {
    /// Timelines of the inventory's hosts, one entry per inventory MAC (empty until its first
    /// event): never refused, never evicted.
    inventory: HashMap<Mac, VecDeque<Event>>,
    /// Timelines of every other MAC, bounded.
    others: Lru,
    // Who holds an address now, from DHCP ACKs: how services that see only an address (TFTP,
    // HTTP) find the host behind it.
    holders: HashMap<IpAddr, Mac>,
    /// The control plane's event log.
    log: EventLog,
    /// The inventory's `netboot = "once"` hosts, by MAC: the kernels their profiles name,
    /// and whether one was sent whole since the host last reported `booted`.
    once: HashMap<Mac, OnceWatch>,
    /// `once` hosts that reported `booted`, not yet taken by the consumption task
    /// ([`Ledger::take_booted`]), with whether that boot fetched a kernel: one entry per
    /// MAC, so bounded by the inventory.
    booted: HashMap<Mac, bool>,
}

/// What the ledger watches of a `netboot = "once"` host's boot.
#[derive(Debug, Default)]
struct OnceWatch {
    /// The kernels of its profile and menu profiles, relative to the image root.
    kernels: Vec<String>,
    /// Whether one was sent whole since its last `booted`.
    fetched: bool,
}

/// API events kept for readers (SSE replay, webhook cursors): the newest win, and a reader
/// that falls further behind is told of the gap.
pub const EVENT_LOG: usize = 4096;

/// One API event as stored: typed, the JSON built only when read.
#[derive(Clone, Debug)]
struct Logged {
    id: u64,
    at_ms: u64,
    kind: EventType,
    host: Option<Arc<str>>,
    mac: Option<Mac>,
    payload: Payload,
}

impl Logged {
    fn api(&self) -> ApiEvent {
        ApiEvent {
            id: self.id,
            at_ms: self.at_ms,
            kind: self.kind,
            host: self.host.as_deref().map(str::to_owned),
            mac: self.mac,
            data: self.payload.data(),
        }
    }
}

/// The ring of API events and what decides which boot events enter it.
struct EventLog {
    /// Ids of this daemon run are all above it (see [`Ledger::epoch`]).
    epoch: u64,
    /// The id the next event gets.
    next_id: u64,
    ring: VecDeque<Logged>,
    cap: usize,
    /// Inventory hosts' boot progress and rate budgets, by MAC.
    tracks: HashMap<Mac, BootTrack>,
}

impl EventLog {
    fn append(
        &mut self,
        at_ms: u64,
        kind: EventType,
        host: Option<Arc<str>>,
        mac: Option<Mac>,
        payload: Payload,
    ) -> u64 {
        if self.ring.len() >= self.cap {
            self.ring.pop_front();
        }
        let id = self.next_id;
        self.next_id += 1;
        self.ring.push_back(Logged {
            id,
            at_ms,
            kind,
            host,
            mac,
            payload,
        });
        id
    }

    fn last_id(&self) -> u64 {
        self.next_id - 1
    }

    /// Up to `max` events with ids above `after`, and the ids after it the ring has lost.
    fn after(&self, after: u64, max: usize) -> (Vec<Logged>, Option<(u64, u64)>) {
        let from = after.max(self.epoch) + 1;
        let first = self.ring.front().map_or(self.next_id, |e| e.id);
        let gap = (from < first).then(|| (from, first - 1));
        // Ids in the ring are consecutive: the start is found by arithmetic.
        let skip = from.saturating_sub(first) as usize;
        let events = self.ring.iter().skip(skip).take(max).cloned().collect();
        (events, gap)
    }
}

/// No slot (the end of the recency list).
const NIL: usize = usize::MAX;

/// One MAC's timeline in the [`Lru`], linked to its neighbours in recency order.
struct Slot {
    mac: Mac,
    events: VecDeque<Event>,
    /// The more recently seen neighbour.
    prev: usize,
    /// The less recently seen neighbour.
    next: usize,
}

/// Timelines of at most `cap` MACs, the least recently seen evicted first. A doubly linked
/// list threaded through a vector by index (no pointers, no unsafe), with a map from MAC to
/// slot, so finding, touching, adding and evicting are all O(1).
struct Lru {
    cap: usize,
    slots: Vec<Slot>,
    index: HashMap<Mac, usize>,
    /// Slots emptied by [`Lru::remove`], reused first.
    free: Vec<usize>,
    /// Most recently seen.
    head: usize,
    /// Least recently seen: the next to go.
    tail: usize,
}

impl Lru {
    fn new(cap: usize) -> Self {
        Self {
            cap: cap.max(1),
            slots: Vec::new(),
            index: HashMap::new(),
            free: Vec::new(),
            head: NIL,
            tail: NIL,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn get(&self, mac: &Mac) -> Option<&VecDeque<Event>> {
        self.index.get(mac).map(|&i| &self.slots[i].events)
    }

    fn unlink(&mut self, i: usize) {
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        match prev {
            NIL => self.head = next,
            p => self.slots[p].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n].prev = prev,
        }
        self.slots[i].prev = NIL;
        self.slots[i].next = NIL;
    }

    fn push_front(&mut self, i: usize) {
        self.slots[i].prev = NIL;
        self.slots[i].next = self.head;
        match self.head {
            NIL => self.tail = i,
            h => self.slots[h].prev = i,
        }
        self.head = i;
    }

    /// The timeline of `mac`, made the most recently seen (a new, empty one if `mac` was not
    /// tracked), and the MAC evicted to make room for it, if one was.
    fn touch(&mut self, mac: Mac) -> (&mut VecDeque<Event>, Option<Mac>) {
        if let Some(&i) = self.index.get(&mac) {
            self.unlink(i);
            self.push_front(i);
            return (&mut self.slots[i].events, None);
        }
        let mut evicted = None;
        let i = if self.index.len() >= self.cap && self.tail != NIL {
            // Full: the least recently seen slot is reused, allocation and all.
            let t = self.tail;
            self.unlink(t);
            let old = std::mem::replace(&mut self.slots[t].mac, mac);
            self.index.remove(&old);
            self.slots[t].events.clear();
            evicted = Some(old);
            t
        } else if let Some(i) = self.free.pop() {
            self.slots[i].mac = mac;
            i
        } else {
            self.slots.push(Slot {
                mac,
                events: VecDeque::new(),
                prev: NIL,
                next: NIL,
            });
            self.slots.len() - 1
        };
        self.index.insert(mac, i);
        self.push_front(i);
        (&mut self.slots[i].events, evicted)
    }

    /// Takes `mac`'s timeline out (a MAC that joined the inventory).
    fn remove(&mut self, mac: &Mac) -> Option<VecDeque<Event>> {
        let i = self.index.remove(mac)?;
        self.unlink(i);
        self.free.push(i);
        Some(std::mem::take(&mut self.slots[i].events))
    }
}

/// Appends `event` to `q`, dropping the oldest beyond `max`.
fn push_bounded(q: &mut VecDeque<Event>, event: Event, max: usize) {
    while q.len() >= max {
        q.pop_front();
    }
    q.push_back(event);
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

impl OnceWatch {
    /// Notes `kind`; for `booted`, whether this boot fetched a kernel (and starts the next).
    fn observe(&mut self, kind: &EventKind) -> Option<bool> {
        if kind.phase() == Phase::Booted {
            return Some(std::mem::take(&mut self.fetched));
        }
        if let Some(path) = kind.sent_path() {
            if self.kernels.iter().any(|k| names(path, k)) {
                self.fetched = true;
            }
        }
        None
    }
}

/// Where the ledger also hands every event it records: cluster mode's shared timeline
/// (`cluster::timeline`), which lives above this layer. Called on the boot path, outside the
/// ledger's lock: it must only queue, never wait.
pub trait Tap: Send + Sync {
    /// `event` was recorded for `mac`; `known`: `mac` is an inventory host's.
    fn offer(&self, mac: Mac, known: bool, event: &Event);
}

/// Where the ledger hands every inventory host's event to be kept past a restart (the boot
/// history on disk). Called outside the ledger's lock, once per event, on the recording
/// thread: an implementation queues and returns.
pub trait Journal: Send + Sync {
    /// `event` was recorded for inventory host `host` (`mac`).
    fn append(&self, host: &str, mac: Mac, event: &Event);
}

/// Shared handle to the ledger.
#[derive(Clone)]
pub struct Ledger {
    inner: Arc<Mutex<State>>,
    /// Set once when the fabric joins a cluster; standalone, never.
    tap: Arc<OnceLock<Arc<dyn Tap>>>,
    /// Set once at start when boot history is kept on disk.
    journal: Arc<OnceLock<Arc<dyn Journal>>>,
    boot_seconds: HistogramVec,
    egress: Arc<Mutex<HashMap<String, Meter>>>,
    events: IntCounterVec,
    evictions: IntCounter,
    inventory_hosts: IntGauge,
    other_hosts: IntGauge,
    events_dropped: IntCounter,
    history_capped: IntCounter,
    /// Woken on every append to the event log.
    appended: Arc<Notify>,
    /// Woken when a `once` host reports `booted` (one stored permit: one consumer).
    booted: Arc<Notify>,
}

/// `bootfabric_boot_duration_seconds` buckets: a DHCP exchange takes a second, a fleet's
/// install up to an hour ([`events::BOOT_TTL_MS`] ends a boot).
const BOOT_BUCKETS: [f64; 14] = [
    0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0, 3600.0,
];

/// Observes, for each phase `events` reached (`host.phase`, `host.booted`, `host.failed`),
/// `since_ms` since its boot started.
fn observe_boot(
    histogram: &HistogramVec,
    labels: &(String, String),
    events: &[(EventType, events::Payload)],
    since_ms: u64,
) {
    for (t, payload) in events {
        let phase = match (t, payload) {
            (EventType::HostPhase, Payload::Phase(p)) => p.as_str(),
            (EventType::HostBooted, _) => "booted",
            (EventType::HostFailed, _) => "failed",
            _ => continue,
        };
        histogram
            .with_label_values(&[labels.0.as_str(), labels.1.as_str(), phase])
            .observe(since_ms as f64 / 1000.0);
    }
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
    /// A ledger exporting `bootfabric_ledger_events_total{phase}`, tracking up to
    /// [`OTHER_HOSTS`] MACs outside the inventory.
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        Self::with_capacity(registry, OTHER_HOSTS)
    }

    /// A ledger tracking up to `other_hosts` (at least 1) MACs outside the inventory, with
    /// `bootfabric_ledger_events_total{phase}`, `bootfabric_ledger_evictions_total` and
    /// `bootfabric_ledger_hosts{class}`.
    pub fn with_capacity(
        registry: &Registry,
        other_hosts: usize,
    ) -> Result<Self, prometheus::Error> {
        Self::with_capacities(registry, other_hosts, EVENT_LOG)
    }

    /// [`Ledger::with_capacity`] with an event log of `events` entries (at least 1).
    pub fn with_capacities(
        registry: &Registry,
        other_hosts: usize,
        event_log: usize,
    ) -> Result<Self, prometheus::Error> {
        let events = IntCounterVec::new(
            Opts::new(
                "bootfabric_ledger_events_total",
                "Boot events recorded in the ledger, by phase.",
            ),
            &["phase"],
        )?;
        let evictions = IntCounter::new(
            "bootfabric_ledger_evictions_total",
            "Timelines of MACs outside the inventory evicted (least recently seen first) to make room for a new MAC.",
        )?;
        let hosts = IntGaugeVec::new(
            Opts::new(
                "bootfabric_ledger_hosts",
                "Timelines held by the ledger: inventory hosts (never evicted) and other MACs (bounded, least recently seen evicted first).",
            ),
            &["class"],
        )?;
        registry.register(Box::new(events.clone()))?;
        registry.register(Box::new(evictions.clone()))?;
        let events_dropped = IntCounter::new(
            "bootfabric_events_dropped_total",
            "Host events kept out of the event log by the per-host rate cap.",
        )?;
        registry.register(Box::new(hosts.clone()))?;
        registry.register(Box::new(events_dropped.clone()))?;
        let history_capped = IntCounter::new(
            "bootfabric_history_capped_total",
            "Host events kept out of the boot history on disk by its per-host budget (the timeline in memory still has them).",
        )?;
        registry.register(Box::new(history_capped.clone()))?;
        let boot_seconds = HistogramVec::new(
            HistogramOpts::new(
                "bootfabric_boot_duration_seconds",
                "Seconds from the start of an inventory host's boot (its BMC reset, else its first DISCOVER or iPXE script) to each phase it reached: dhcp, loader, script, kernel, config, and its end (booted or failed).",
            )
            .buckets(BOOT_BUCKETS.to_vec()),
            &["profile", "model", "phase"],
        )?;
        registry.register(Box::new(boot_seconds.clone()))?;
        // Ids count up from the start time in milliseconds times 1000: a later run's ids are
        // above every earlier run's (it would take 1000 events a millisecond to catch up), so
        // a reader's `Last-Event-ID` from before a restart is below this run's epoch and tells
        // a restart from a gap. Below 2^53 until the year 2255: exact in JavaScript.
        let epoch = unix_ms().saturating_mul(1000);
        Ok(Self {
            inner: Arc::new(Mutex::new(State {
                inventory: HashMap::new(),
                others: Lru::new(other_hosts),
                holders: HashMap::new(),
                log: EventLog {
                    epoch,
                    next_id: epoch + 1,
                    ring: VecDeque::new(),
                    cap: event_log.max(1),
                    tracks: HashMap::new(),
                },
                once: HashMap::new(),
                booted: HashMap::new(),
            })),
            egress: Arc::default(),
            tap: Arc::default(),
            journal: Arc::default(),
            boot_seconds,
            events,
            evictions,
            inventory_hosts: hosts.with_label_values(&["inventory"]),
            other_hosts: hosts.with_label_values(&["other"]),
            events_dropped,
            history_capped,
            appended: Arc::new(Notify::new()),
            booted: Arc::new(Notify::new()),
        })
    }

    /// Makes `inventory`'s hosts the protected class (at start and on every reload): a MAC
    /// that joins keeps the events it had as an unknown one; a MAC that leaves becomes an
    /// unknown one, the most recently seen.
    pub fn set_inventory(&self, inventory: &Inventory) {
        let Ok(mut state) = self.inner.lock() else {
            return;
        };
        let state = &mut *state;
        let mut tracks = std::mem::take(&mut state.log.tracks);
        for h in inventory.hosts() {
            // A host that stays keeps its boot in progress and its budget.
            let mut track = match tracks.remove(&h.mac) {
                Some(mut t) => {
                    if *t.name != *h.name {
                        t.name = Arc::from(h.name.as_str());
                    }
                    t
                }
                None => BootTrack::new(Arc::from(h.name.as_str())),
            };
            let labels = (h.profile.clone(), h.model.clone().unwrap_or_default());
            if *track.labels != labels {
                track.labels = Arc::new(labels);
            }
            state.log.tracks.insert(h.mac, track);
        }
        let mut old = std::mem::take(&mut state.inventory);
        for h in inventory.hosts() {
            let events = old
                .remove(&h.mac)
                .or_else(|| state.others.remove(&h.mac))
                .unwrap_or_default();
            state.inventory.insert(h.mac, events);
        }
        for (mac, mut events) in old {
            while events.len() > OTHER_EVENTS_PER_HOST {
                events.pop_front();
            }
            let (q, evicted) = state.others.touch(mac);
            *q = events;
            if evicted.is_some() {
                self.evictions.inc();
            }
        }
        let mut once = std::mem::take(&mut state.once);
        for h in inventory
            .hosts()
            .iter()
            .filter(|h| h.netboot == Netboot::Once)
        {
            let kernels = std::iter::once(&h.profile)
                .chain(&h.menu)
                .filter_map(|p| inventory.profile(p)?.kernel.as_deref())
                .map(|k| k.trim_start_matches('/').to_owned())
                .collect();
            // A host that stays keeps what its boot in progress fetched.
            let fetched = once.remove(&h.mac).is_some_and(|w| w.fetched);
            state.once.insert(h.mac, OnceWatch { kernels, fetched });
        }
        state.booted.retain(|mac, _| state.once.contains_key(mac));
        self.inventory_hosts.set(state.inventory.len() as i64);
        self.other_hosts.set(state.others.len() as i64);
    }

    /// Hands every event recorded from now on to `tap` too (cluster mode). Only the first
    /// call takes effect: a fabric joins one cluster.
    pub fn set_tap(&self, tap: Arc<dyn Tap>) {
        let _ = self.tap.set(tap);
    }

    /// Hands every inventory host's event recorded from now on to `journal` too. Only the
    /// first call takes effect.
    pub fn set_journal(&self, journal: Arc<dyn Journal>) {
        let _ = self.journal.set(journal);
    }

    /// Puts events from before a restart (the boot history on disk, oldest first) back into
    /// the inventory hosts' timelines, as they would hold them had the daemon not stopped.
    /// Nothing else happens: no API event, no metric, no journal line. Call it after
    /// [`Ledger::set_inventory`] and before services record; events of MACs outside the
    /// inventory are left out (a restart forgets strangers, as it always did).
    pub fn restore(&self, events: impl IntoIterator<Item = (Mac, Event)>) -> usize {
        let Ok(mut state) = self.inner.lock() else {
            return 0;
        };
        let mut restored = 0;
        for (mac, event) in events {
            if let Some(q) = state.inventory.get_mut(&mac) {
                push_bounded(
                    q,
                    Event {
                        kind: event.kind.bounded(),
                        ..event
                    },
                    EVENTS_PER_HOST,
                );
                restored += 1;
            }
        }
        restored
    }

    /// Records an event for `mac` now.
    pub fn record(&self, mac: Mac, kind: EventKind, ip: Option<IpAddr>) {
        self.record_at(mac, kind, ip, unix_ms());
    }

    /// Records an event for `mac` at `at_ms` (unix milliseconds), for a caller that reads its
    /// own clock: the reboot runner, whose unit tests run on tokio's paused time. A timeline
    /// is kept in the order events are recorded, so `at_ms` must not go back for a host.
    pub fn record_at(&self, mac: Mac, kind: EventKind, ip: Option<IpAddr>, at_ms: u64) {
        let phase = kind.phase();
        self.events.with_label_values(&[phase.as_str()]).inc();
        let Ok(mut guard) = self.inner.lock() else {
            return;
        };
        let state = &mut *guard;
        // Before the path is cut to DETAIL_MAX: a long kernel path still matches.
        let booted = state.once.get_mut(&mac).and_then(|w| w.observe(&kind));
        if let Some(fetched) = booted {
            *state.booted.entry(mac).or_default() |= fetched;
        }
        let kind = kind.bounded();
        let known = state.inventory.contains_key(&mac);
        if let Some(ip) = ip {
            match phase {
                Phase::DhcpAck
                    if known
                        || state.holders.len() < MAX_HOLDERS
                        || state.holders.contains_key(&ip) =>
                {
                    state.holders.insert(ip, mac);
                }
                Phase::DhcpRelease | Phase::DhcpDecline if state.holders.get(&ip) == Some(&mac) => {
                    state.holders.remove(&ip);
                }
                _ => {}
            }
        }
        let mut appended = false;
        let mut journaled = None;
        if let Some(track) = state.log.tracks.get_mut(&mac) {
            let advanced = track.advance(&kind, at_ms);
            if let Some(start) = advanced.boot_ms {
                observe_boot(
                    &self.boot_seconds,
                    &track.labels,
                    &advanced.events,
                    at_ms.saturating_sub(start),
                );
            }
            let observed = track.spend(advanced.events, at_ms);
            if observed.dropped > 0 {
                self.events_dropped.inc_by(observed.dropped);
            }
            let name = Arc::clone(&track.name);
            if let Some(j) = self.journal.get().filter(|_| known) {
                if track.journal(at_ms) {
                    journaled = Some((Arc::clone(j), Arc::clone(&name)));
                } else {
                    self.history_capped.inc();
                }
            }
            for (t, payload) in observed.events {
                state
                    .log
                    .append(at_ms, t, Some(Arc::clone(&name)), Some(mac), payload);
                appended = true;
            }
        }
        let event = Event { at_ms, ip, kind };
        let tapped = self.tap.get().map(|tap| (tap, known, event.clone()));
        let journaled = journaled.map(|(j, name)| (j, name, event.clone()));
        match state.inventory.get_mut(&mac) {
            Some(q) => push_bounded(q, event, EVENTS_PER_HOST),
            None => {
                let (q, evicted) = state.others.touch(mac);
                push_bounded(q, event, OTHER_EVENTS_PER_HOST);
                if evicted.is_some() {
                    self.evictions.inc();
                } else {
                    self.other_hosts.set(state.others.len() as i64);
                }
            }
        }
        drop(guard);
        if let Some((tap, known, event)) = tapped {
            tap.offer(mac, known, &event);
        }
        if let Some((journal, name, event)) = journaled {
            journal.append(&name, mac, &event);
        }
        if appended {
            self.appended.notify_waiters();
        }
        if booted.is_some() {
            self.booted.notify_one();
        }
    }

    /// Takes the `netboot = "once"` hosts that reported `booted` since the last call, each
    /// once, with whether that boot fetched one of the host's kernels (`netboot = once` is
    /// spent from this, never from the rate-capped event log, which may drop a `booted`).
    pub fn take_booted(&self) -> Vec<(Mac, bool)> {
        self.inner
            .lock()
            .map(|mut s| s.booted.drain().collect())
            .unwrap_or_default()
    }

    /// Returns once a `once` host reported `booted` since the last [`Ledger::take_booted`]
    /// (at once if one did before this call). For one consumer.
    pub async fn wait_booted(&self) {
        self.booted.notified().await;
    }

    /// Appends a control-plane event (`host.created`, `config.generation`, …) to the event
    /// log now, and returns its id. Not rate-capped: only the admin API and the config
    /// publisher call it.
    pub fn emit(
        &self,
        kind: EventType,
        host: Option<&str>,
        mac: Option<Mac>,
        data: serde_json::Value,
    ) -> u64 {
        let Ok(mut state) = self.inner.lock() else {
            return 0;
        };
        let id = state.log.append(
            unix_ms(),
            kind,
            host.map(Arc::from),
            mac,
            Payload::Json(data),
        );
        drop(state);
        self.appended.notify_waiters();
        id
    }

    /// Up to `max` events with ids above `after`, oldest first, and the ids after `after`
    /// that the ring has already dropped (the reader was lapped). `after` below
    /// [`Ledger::epoch`] (0, or an id of an earlier run) reads from the start of this run.
    pub fn events_after(&self, after: u64, max: usize) -> EventPage {
        let Ok(state) = self.inner.lock() else {
            return EventPage::default();
        };
        let (logged, gap) = state.log.after(after, max);
        drop(state);
        // The JSON values are built here, outside the lock the packet paths take.
        EventPage {
            events: logged.iter().map(Logged::api).collect(),
            gap,
        }
    }

    /// Returns once the log holds an event with an id above `after`.
    pub async fn wait_events(&self, after: u64) {
        loop {
            let notified = self.appended.notified();
            tokio::pin!(notified);
            // Registered before the check, so an append between the check and the await
            // still wakes this waiter.
            notified.as_mut().enable();
            if self.last_event_id() > after {
                return;
            }
            notified.await;
        }
    }

    /// The id of the newest event (the epoch if there is none yet).
    pub fn last_event_id(&self) -> u64 {
        self.inner.lock().map_or(0, |s| s.log.last_id())
    }

    /// This run's epoch: every id of this run is above it, every id of an earlier run at or
    /// below it. A `Last-Event-ID` below it (or above [`Ledger::last_event_id`]) is from
    /// another run: the reader must re-list, not just fill a gap.
    pub fn epoch(&self) -> u64 {
        self.inner.lock().map_or(0, |s| s.log.epoch)
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
    pub fn holder(&self, ip: IpAddr) -> Option<Mac> {
        self.inner.lock().ok()?.holders.get(&ip).copied()
    }

    /// The inventory host at address `ip`: the client DHCP last acknowledged it to, else the
    /// host it is reserved for. The holder comes first: a reservation moved to another MAC
    /// waits while the previous holder's lease lives (services::dhcp), and until then the
    /// machine on the address is the holder, not the new owner (who must not have its
    /// configs fetched or its `booted` posted by another machine). A holder outside the
    /// inventory is no host at all.
    pub fn host_at<'a>(&self, inventory: &'a Inventory, ip: IpAddr) -> Option<&'a Host> {
        let owner = match ip {
            IpAddr::V4(v4) => inventory.host_by_ip(v4),
            IpAddr::V6(v6) => inventory.host_by_ipv6(v6),
        };
        match (owner, self.holder(ip)) {
            (Some(owner), Some(holder)) if owner.mac != holder => inventory.host_by_mac(&holder),
            (Some(owner), _) => Some(owner),
            (None, holder) => holder.and_then(|mac| inventory.host_by_mac(&mac)),
        }
    }

    /// `host`'s address now: its reservation, unless another client still holds that (the
    /// reservation waits, see [`Ledger::host_at`]); else `peer` if the host holds it as a
    /// lease.
    pub fn address_of(&self, host: &Host, peer: IpAddr) -> Option<IpAddr> {
        let reserved = match peer {
            IpAddr::V4(_) => host.ip.map(IpAddr::V4),
            IpAddr::V6(_) => host.ipv6.map(IpAddr::V6),
        };
        reserved
            .filter(|ip| self.holder(*ip).is_none_or(|m| m == host.mac))
            .or_else(|| (self.holder(peer) == Some(host.mac)).then_some(peer))
    }

    /// The events of `mac` at or after `from_ms`, oldest first. Reading is not "seeing": it
    /// does not keep an unknown MAC from eviction.
    pub fn events_since(&self, mac: Mac, from_ms: u64) -> Vec<Event> {
        self.inner
            .lock()
            .ok()
            .and_then(|s| {
                s.inventory
                    .get(&mac)
                    .or_else(|| s.others.get(&mac))
                    .map(|q| q.iter().filter(|e| e.at_ms >= from_ms).cloned().collect())
            })
            .unwrap_or_default()
    }

    /// The timeline of `mac`, oldest first.
    pub fn timeline(&self, mac: Mac) -> Vec<Event> {
        self.events_since(mac, 0)
    }

    /// `f` of the timeline of `mac`, oldest first, read in place for an inventory host (a
    /// copy for another MAC): an iPXE script reads its host's timeline on every request. The
    /// ledger stays locked while `f` runs, so `f` must be short and must not call the ledger.
    pub fn with_timeline<R>(&self, mac: Mac, f: impl FnOnce(&[Event]) -> R) -> R {
        let Ok(mut guard) = self.inner.lock() else {
            return f(&[]);
        };
        let state = &mut *guard;
        if let Some(q) = state.inventory.get_mut(&mac) {
            return f(q.make_contiguous());
        }
        let other: Vec<Event> = state
            .others
            .get(&mac)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default();
        drop(guard);
        f(&other)
    }
}

// Reading a boot's progress from its events: the reboot runner and the admission gate
// judge "every file of the profile sent" with the same functions.

/// Whether `path` (as requested) names `file` (relative to the image root, maybe under the
/// `http_base` path).
pub fn names(path: &str, file: &str) -> bool {
    path.trim_start_matches('/') == file
        || path
            .strip_suffix(file)
            .is_some_and(|head| head.ends_with('/'))
}

/// When `file` was first sent completely at or after `from_ms`.
pub fn sent_at(file: &str, events: &[Event], from_ms: u64) -> Option<u64> {
    events.iter().find_map(|e| {
        let path = e.kind.sent_path()?;
        (e.at_ms >= from_ms && names(path, file)).then_some(e.at_ms)
    })
}

/// When every file of `files` has been sent completely since `from_ms` (HTTP or TFTP), the
/// time of the last one. A profile with no files is never "fetched": its slot frees at
/// `booted`.
pub fn fetched_at(files: &[String], events: &[Event], from_ms: u64) -> Option<u64> {
    if files.is_empty() {
        return None;
    }
    files
        .iter()
        .map(|f| sent_at(f, events, from_ms))
        .try_fold(0, |last, at| at.map(|a| a.max(last)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// The detail as the ledger rendered it before events were typed: the whole line, cut.
    fn old_detail(line: &str) -> String {
        let mut end = line.len().min(DETAIL_MAX);
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line[..end].to_owned()
    }

    #[test]
    fn long_names_are_stored_bounded_and_render_as_before() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let m = Mac([2, 0, 0, 0, 0, 9]);
        l.set_inventory(&inventory(&[m]));
        // Odd-aligned multibyte text straddles byte 128; a big buffer must not be kept.
        for name in [
            "a".to_owned() + &"é".repeat(100),
            "x".repeat(4096),
            "é".repeat(70),
        ] {
            let mut path = String::with_capacity(8192);
            path.push_str(&name);
            let kinds = [
                (
                    EventKind::HttpSent { path, bytes: 42 },
                    format!("{name}: 42 bytes"),
                ),
                (
                    EventKind::TftpFailed {
                        file: name.clone(),
                        why: "timeout",
                    },
                    format!("{name}: timeout"),
                ),
                (
                    EventKind::ConfigRefused {
                        name: name.clone(),
                        why: ConfigRefusal::Owner(name.clone()),
                    },
                    format!("for {name}: {name}"),
                ),
                (EventKind::IpxeScript { path: name.clone() }, name.clone()),
            ];
            for (kind, line) in kinds {
                l.record(m, kind, None);
                let stored = l.timeline(m).pop().expect("event").kind;
                assert_eq!(stored.detail(), Some(old_detail(&line)), "{line}");
                let strings: Vec<&String> = match &stored {
                    EventKind::HttpSent { path, .. } | EventKind::IpxeScript { path } => vec![path],
                    EventKind::TftpFailed { file, .. } => vec![file],
                    EventKind::ConfigRefused {
                        name,
                        why: ConfigRefusal::Owner(owner),
                    } => vec![name, owner],
                    other => panic!("unexpected {other:?}"),
                };
                for s in strings {
                    assert!(
                        s.capacity() <= DETAIL_MAX + 3,
                        "{} bytes kept",
                        s.capacity()
                    );
                }
            }
        }
    }

    #[test]
    fn an_event_stays_88_bytes() {
        // The worst-case memory in OTHER_EVENTS_PER_HOST's comment counts on it.
        assert!(
            std::mem::size_of::<Event>() <= 88,
            "{}",
            std::mem::size_of::<Event>()
        );
    }

    #[test]
    fn a_download_path_near_the_limit_is_still_recognised() {
        // Before events were typed, the path was parsed back out of the cut detail, so a
        // path of 120-odd bytes lost its ": N bytes" and never counted as fetched.
        let path = format!("/{}", "p".repeat(126));
        let sent = EventKind::HttpSent {
            path: path.clone(),
            bytes: 1,
        }
        .bounded();
        assert_eq!(sent.sent_path(), Some(path.as_str()));
    }

    #[test]
    fn keeps_the_newest_events_per_inventory_host() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let m = Mac([2, 0, 0, 0, 0, 1]);
        l.set_inventory(&inventory(&[m]));
        for _ in 0..40 {
            l.record(m, EventKind::DhcpOffer, None);
        }
        l.record(
            m,
            EventKind::DhcpAck,
            Some(Ipv4Addr::new(10, 0, 0, 1).into()),
        );
        let t = l.timeline(m);
        assert_eq!(t.len(), EVENTS_PER_HOST);
        assert_eq!(t.last().map(|e| e.phase()), Some(Phase::DhcpAck));
    }

    #[test]
    fn record_at_stamps_the_given_time_and_record_stamps_now() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let m = Mac([2, 0, 0, 0, 0, 2]);
        l.set_inventory(&inventory(&[m]));
        let before = unix_ms();
        l.record(m, EventKind::DhcpOffer, None);
        let after = unix_ms();
        l.record_at(m, EventKind::Booted, None, after + 60_000);
        let t = l.timeline(m);
        assert!((before..=after).contains(&t[0].at_ms), "{}", t[0].at_ms);
        assert_eq!(t[1].at_ms, after + 60_000);
        let later = l.events_since(m, after + 1);
        assert_eq!(later.len(), 1);
        assert_eq!(later[0].kind, EventKind::Booted);
    }

    #[test]
    fn the_event_log_holds_inventory_hosts_phase_changes_in_one_order() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let (known, other) = (Mac([2, 0, 0, 0, 0, 1]), random_mac(1));
        l.set_inventory(&inventory(&[known]));
        let start = l.last_event_id();
        assert_eq!(start, l.epoch());
        for m in [known, other] {
            l.record(m, EventKind::DhcpOffer, None);
            l.record(m, EventKind::DhcpOffer, None);
            l.record(m, EventKind::Booted, None);
        }
        let id = l.emit(
            EventType::ConfigGeneration,
            None,
            None,
            serde_json::json!({"generation": 2}),
        );
        let page = l.events_after(start, 100);
        assert_eq!(page.gap, None);
        let seen: Vec<(u64, &str, Option<&str>)> = page
            .events
            .iter()
            .map(|e| (e.id - start, e.kind.as_str(), e.host.as_deref()))
            .collect();
        assert_eq!(
            seen,
            [
                (1, "host.phase", Some("h0")),
                (2, "host.booted", Some("h0")),
                (3, "config.generation", None)
            ]
        );
        assert_eq!(id, start + 3);
        assert_eq!(l.last_event_id(), id);
        assert_eq!(page.events[0].data, serde_json::json!({"phase": "dhcp"}));
        assert_eq!(page.events[0].mac, Some(known));
        // A page is bounded, and the next one starts after it.
        let first = l.events_after(start, 1);
        assert_eq!(first.events.len(), 1);
        let rest = l.events_after(first.events[0].id, 100);
        assert_eq!(rest.events.len(), 2);
        assert!(l.events_after(id, 100).events.is_empty());
    }

    #[test]
    fn a_lapped_reader_is_told_the_gap_and_a_reader_of_another_run_reads_from_the_start() {
        let l = Ledger::with_capacities(&Registry::new(), 16, 4).expect("ledger");
        let epoch = l.epoch();
        for n in 0..10 {
            l.emit(
                EventType::HostCreated,
                Some("h"),
                None,
                serde_json::json!({ "n": n }),
            );
        }
        // Ids epoch+1..=epoch+10; the ring holds the last 4.
        let page = l.events_after(epoch + 2, 100);
        assert_eq!(page.gap, Some((epoch + 3, epoch + 6)));
        let ids: Vec<u64> = page.events.iter().map(|e| e.id - epoch).collect();
        assert_eq!(ids, [7, 8, 9, 10]);
        let page = l.events_after(epoch + 6, 100);
        assert_eq!((page.gap, page.events.len()), (None, 4));
        // An id from before this run (or 0): everything this run still has, and the gap.
        for before in [0, epoch - 5] {
            let page = l.events_after(before, 100);
            assert_eq!(page.gap, Some((epoch + 1, epoch + 6)));
            assert_eq!(page.events.len(), 4);
        }
    }

    #[test]
    fn the_rate_cap_drops_are_counted() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let m = Mac([2, 0, 0, 0, 0, 1]);
        l.set_inventory(&inventory(&[m]));
        let fail = EventKind::TftpFailed {
            file: "x".into(),
            why: "timeout",
        };
        for _ in 0..50 {
            l.record_at(m, fail.clone(), None, 5_000);
        }
        let page = l.events_after(0, 1000);
        assert_eq!(
            page.events.len(),
            crate::model::ledger::events::RATE_BURST as usize
        );
        assert_eq!(
            l.events_dropped.get(),
            50 - u64::from(crate::model::ledger::events::RATE_BURST)
        );
    }

    /// A journal that counts the lines it is handed, by host.
    #[derive(Default)]
    struct Counted(Mutex<HashMap<String, u64>>);

    impl Journal for Counted {
        fn append(&self, host: &str, _: Mac, _: &Event) {
            if let Ok(mut m) = self.0.lock() {
                *m.entry(host.to_owned()).or_default() += 1;
            }
        }
    }

    #[test]
    fn a_flood_from_one_hosts_address_takes_only_its_own_history_budget() {
        use crate::model::ledger::events::{JOURNAL_BURST, JOURNAL_REFILL_MS};
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let (a, b) = (Mac([2, 0, 0, 0, 0, 1]), Mac([2, 0, 0, 0, 0, 2]));
        l.set_inventory(&inventory(&[a, b]));
        let journal = Arc::new(Counted::default());
        l.set_journal(journal.clone());
        let script = || EventKind::IpxeScript {
            path: "/boot.ipxe".into(),
        };
        // A machine asks for a's script in a loop: 10,000 requests within one second.
        for i in 0..10_000u64 {
            l.record_at(a, script(), None, 5_000 + i / 10);
        }
        // b boots meanwhile: every one of its events is kept.
        for _ in 0..30 {
            l.record_at(b, script(), None, 5_999);
        }
        let count = |h: &str| journal.0.lock().expect("lock").get(h).copied().unwrap_or(0);
        assert_eq!(count("h0"), u64::from(JOURNAL_BURST));
        assert_eq!(count("h1"), 30);
        assert_eq!(l.history_capped.get(), 10_000 - u64::from(JOURNAL_BURST));
        // The budget refills one line per JOURNAL_REFILL_MS; the timeline in memory kept
        // the newest events all along.
        for k in 1..=5 {
            l.record_at(a, script(), None, 6_000 + k * JOURNAL_REFILL_MS);
        }
        assert_eq!(count("h0"), u64::from(JOURNAL_BURST) + 5);
        assert_eq!(l.timeline(a).len(), EVENTS_PER_HOST);
    }

    #[tokio::test]
    async fn wait_events_returns_once_a_newer_event_exists() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let last = l.last_event_id();
        // Already there: at once.
        l.emit(
            EventType::HostCreated,
            Some("a"),
            None,
            serde_json::json!({}),
        );
        l.wait_events(last).await;
        let now = l.last_event_id();
        let waiter = {
            let l = l.clone();
            tokio::spawn(async move { l.wait_events(now).await })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        l.emit(
            EventType::HostDeleted,
            Some("a"),
            None,
            serde_json::json!({}),
        );
        waiter.await.expect("waiter");
    }

    fn inventory(macs: &[Mac]) -> Inventory {
        let mut text = String::from("[profiles.p]\n");
        for (i, m) in macs.iter().enumerate() {
            text.push_str(&format!(
                "[[hosts]]\nname = 'h{i}'\nmac = '{m}'\nprofile = 'p'\n"
            ));
        }
        let wire = toml::from_str(&text).expect("toml");
        Inventory::from_wire(std::path::Path::new("hosts.toml"), wire).expect("inventory")
    }

    fn random_mac(i: u32) -> Mac {
        let b = i.to_be_bytes();
        Mac([0x02, 0xee, b[0], b[1], b[2], b[3]])
    }

    #[test]
    fn a_flood_of_unknown_macs_never_hides_an_inventory_host() {
        let registry = Registry::new();
        let l = Ledger::with_capacity(&registry, 100).expect("ledger");
        let known = Mac([0x52, 0x54, 0, 0, 0, 1]);
        l.set_inventory(&inventory(&[known]));
        l.record(
            known,
            EventKind::DhcpAck,
            Some(Ipv4Addr::new(10, 0, 0, 1).into()),
        );
        for i in 0..10_000 {
            l.record(random_mac(i), EventKind::DhcpOffer, None);
        }
        l.record(known, EventKind::Booted, None);
        let t: Vec<Phase> = l.timeline(known).iter().map(|e| e.phase()).collect();
        assert_eq!(t, [Phase::DhcpAck, Phase::Booted]);
        // The newest unknown MACs are there, the oldest gone, and every eviction counted.
        assert_eq!(l.timeline(random_mac(9_999)).len(), 1);
        assert_eq!(l.timeline(random_mac(9_900)).len(), 1);
        assert!(l.timeline(random_mac(9_899)).is_empty());
        assert!(l.timeline(random_mac(0)).is_empty());
        assert_eq!(l.evictions.get() as f64, 9_900.0);
        assert_eq!(l.other_hosts.get() as f64, 100.0);
        assert_eq!(l.inventory_hosts.get() as f64, 1.0);
    }

    #[test]
    fn the_least_recently_seen_unknown_mac_goes_first() {
        let l = Ledger::with_capacity(&Registry::new(), 3).expect("ledger");
        let [a, b, c, d] = [1, 2, 3, 4].map(random_mac);
        for m in [a, b, c] {
            l.record(m, EventKind::DhcpOffer, None);
        }
        // Reading a timeline is not seeing the host; a new event is.
        let _ = l.timeline(a);
        l.record(a, EventKind::DhcpAck, None);
        l.record(d, EventKind::DhcpOffer, None);
        assert!(l.timeline(b).is_empty(), "b was the least recently seen");
        for m in [a, c, d] {
            assert!(!l.timeline(m).is_empty(), "{m} evicted");
        }
    }

    #[test]
    fn unknown_timelines_are_shorter_but_bounded_too() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let m = random_mac(7);
        for _ in 0..100 {
            l.record(m, EventKind::DhcpOffer, None);
        }
        assert_eq!(l.timeline(m).len(), OTHER_EVENTS_PER_HOST);
    }

    #[test]
    fn a_reload_protects_new_hosts_with_their_events_and_releases_old_ones() {
        let registry = Registry::new();
        let l = Ledger::with_capacity(&registry, 10).expect("ledger");
        let (old, new) = (Mac([0x52, 0x54, 0, 0, 0, 1]), Mac([0x52, 0x54, 0, 0, 0, 2]));
        l.set_inventory(&inventory(&[old]));
        l.record(old, EventKind::Booted, None);
        l.record(new, EventKind::DhcpOffer, None);
        // `new` joins the inventory (SIGHUP), `old` leaves it.
        l.set_inventory(&inventory(&[new]));
        for i in 0..1_000 {
            l.record(random_mac(i), EventKind::DhcpOffer, None);
        }
        assert_eq!(
            l.timeline(new)
                .iter()
                .map(|e| e.phase())
                .collect::<Vec<_>>(),
            [Phase::DhcpOffer],
            "a host added by reload keeps what it had and is never evicted"
        );
        assert!(
            l.timeline(old).is_empty(),
            "a host removed from the inventory is evicted like any other MAC"
        );
        assert_eq!(l.inventory_hosts.get() as f64, 1.0);
    }

    #[test]
    fn the_live_holder_of_a_moved_reservation_is_the_host_at_its_address() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let (a, b) = (Mac([0x52, 0x54, 0, 0, 0, 1]), Mac([0x52, 0x54, 0, 0, 0, 2]));
        let ip: IpAddr = Ipv4Addr::new(10, 77, 0, 11).into();
        // node07's reservation moved from A (now host "old", without one) to B.
        let text = "[profiles.p]\n[[hosts]]\nname = 'old'\nmac = '52:54:00:00:00:01'\nprofile = 'p'\n\
                    [[hosts]]\nname = 'node07'\nmac = '52:54:00:00:00:02'\nip = '10.77.0.11'\nprofile = 'p'\n";
        let inv = Inventory::from_wire(
            std::path::Path::new("hosts.toml"),
            toml::from_str(text).expect("toml"),
        )
        .expect("inventory");
        let name = |h: Option<&Host>| h.map(|h| h.name.clone());
        let node07 = inv.host_by_mac(&b).expect("node07");
        assert_eq!(
            name(l.host_at(&inv, ip)),
            Some("node07".into()),
            "nobody holds it"
        );
        l.record(a, EventKind::DhcpAck, Some(ip));
        assert_eq!(
            name(l.host_at(&inv, ip)),
            Some("old".into()),
            "A is still on the address: requests from it are A's, never node07's"
        );
        let pool: IpAddr = Ipv4Addr::new(10, 77, 0, 100).into();
        l.record(b, EventKind::DhcpAck, Some(pool));
        assert_eq!(name(l.host_at(&inv, pool)), Some("node07".into()));
        assert_eq!(
            l.address_of(node07, pool),
            Some(pool),
            "B's address while it waits"
        );
        // A holder outside the inventory is nobody, not the reservation's owner.
        l.record(Mac([2, 0, 0, 0, 0, 9]), EventKind::DhcpAck, Some(ip));
        assert_eq!(name(l.host_at(&inv, ip)), None);
        l.record(Mac([2, 0, 0, 0, 0, 9]), EventKind::DhcpRelease, Some(ip));
        assert_eq!(name(l.host_at(&inv, ip)), Some("node07".into()));
        l.record(b, EventKind::DhcpAck, Some(ip));
        assert_eq!(name(l.host_at(&inv, ip)), Some("node07".into()));
        assert_eq!(l.address_of(node07, pool), Some(ip));
    }

    #[test]
    fn inventory_hosts_leases_are_remembered_when_the_holders_are_full() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let known = Mac([0x52, 0x54, 0, 0, 0, 1]);
        l.set_inventory(&inventory(&[known]));
        for i in 0..MAX_HOLDERS as u32 {
            l.record(
                random_mac(i),
                EventKind::DhcpAck,
                Some(Ipv4Addr::from(0x0a00_0000 + i).into()),
            );
        }
        let ip: IpAddr = Ipv4Addr::new(192, 0, 2, 1).into();
        l.record(random_mac(u32::MAX), EventKind::DhcpAck, Some(ip));
        assert_eq!(l.holder(ip), None, "an unknown MAC's lease past the cap");
        l.record(known, EventKind::DhcpAck, Some(ip));
        assert_eq!(l.holder(ip), Some(known));
    }

    #[test]
    fn the_lru_agrees_with_a_plain_list() {
        // Random touches and removals against the obvious O(n) model.
        let mut lru = Lru::new(8);
        let mut model: VecDeque<Mac> = VecDeque::new(); // front: most recent
        let mut rng = crate::util::xorshift::XorShift::new(42);
        for step in 0..20_000 {
            let mac = random_mac((rng.next_u64() % 20) as u32);
            if rng.next_u64().is_multiple_of(5) {
                let had = lru.remove(&mac).is_some();
                let pos = model.iter().position(|m| *m == mac);
                assert_eq!(had, pos.is_some(), "step {step}");
                if let Some(p) = pos {
                    model.remove(p);
                }
            } else {
                let (_, evicted) = lru.touch(mac);
                let expected = match model.iter().position(|m| *m == mac) {
                    Some(p) => {
                        model.remove(p);
                        None
                    }
                    None if model.len() == 8 => model.pop_back(),
                    None => None,
                };
                model.push_front(mac);
                assert_eq!(evicted, expected, "step {step}");
            }
            assert_eq!(lru.len(), model.len(), "step {step}");
            let mut order = Vec::new();
            let mut i = lru.head;
            while i != NIL {
                order.push(lru.slots[i].mac);
                i = lru.slots[i].next;
            }
            assert!(order.iter().eq(model.iter()), "step {step}");
        }
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
        let ip: IpAddr = Ipv4Addr::new(10, 0, 0, 9).into();
        l.record(a, EventKind::DhcpOffer, Some(ip));
        assert_eq!(l.holder(ip), None, "an offer is not a lease");
        l.record(a, EventKind::DhcpAck, Some(ip));
        assert_eq!(l.holder(ip), Some(a));
        l.record(b, EventKind::DhcpRelease, Some(ip));
        assert_eq!(l.holder(ip), Some(a), "only the holder gives it back");
        l.record(a, EventKind::DhcpRelease, Some(ip));
        assert_eq!(l.holder(ip), None);
        let long = "é".repeat(DETAIL_MAX);
        let file = long.clone();
        l.record(a, EventKind::TftpSent { file }, Some(ip));
        let event = l.timeline(a).pop().expect("event");
        let detail = event.kind.detail().expect("detail");
        assert!(detail.len() <= DETAIL_MAX && long.starts_with(&detail));
        assert_eq!(
            event.kind.sent_path(),
            Some(detail.as_str()),
            "stored cut too"
        );
        // The rendered line is cut as a whole, as before events were typed.
        let path = long.clone();
        let sent = EventKind::HttpSent { path, bytes: 7 };
        let line = sent.detail().expect("detail");
        assert!(
            line.len() <= DETAIL_MAX && !line.ends_with("bytes"),
            "{line}"
        );
    }

    /// A tap that keeps what it is offered.
    #[derive(Default)]
    struct Kept(Mutex<Vec<(Mac, bool, Phase, u64)>>);

    impl Tap for Kept {
        fn offer(&self, mac: Mac, known: bool, event: &Event) {
            if let Ok(mut k) = self.0.lock() {
                k.push((mac, known, event.phase(), event.at_ms));
            }
        }
    }

    #[test]
    fn the_tap_gets_every_recorded_event_saying_whether_its_host_is_known() {
        let l = Ledger::new(&Registry::new()).expect("ledger");
        let known = Mac([0x52, 0x54, 0, 0, 0, 1]);
        l.set_inventory(&inventory(&[known]));
        // Before a tap is set (standalone), nothing is handed anywhere.
        l.record_at(known, EventKind::DhcpOffer, None, 1);
        let kept = Arc::new(Kept::default());
        l.set_tap(Arc::clone(&kept) as Arc<dyn Tap>);
        l.record_at(known, EventKind::DhcpAck, None, 2);
        l.record_at(random_mac(7), EventKind::DhcpOffer, None, 3);
        // The ledger itself keeps everything as before.
        assert_eq!(l.timeline(known).len(), 2);
        let got = kept.0.lock().expect("kept").clone();
        assert_eq!(
            got,
            [
                (known, true, Phase::DhcpAck, 2),
                (random_mac(7), false, Phase::DhcpOffer, 3)
            ]
        );
    }

    #[test]
    fn every_phase_label_reads_back() {
        for p in Phase::ALL {
            assert_eq!(Phase::from_label(p.as_str()), Some(p));
        }
        assert_eq!(Phase::from_label("nope"), None);
    }
}
