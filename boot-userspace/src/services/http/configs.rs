//! Who gets which provisioning config, and how often. Pure: a request path, the inventory's
//! host names and a host's ledger events in, a decision out. The clock and the random source
//! are the caller's (`now_ms`, [`os_nonce`]); [`routes`](super::routes) renders the
//! snapshot's compiled template ([`Templates`](crate::model::render::Templates)) and sends
//! the answer.
//!
//! Three rules, each closing an attack a machine on the provisioning network can make:
//! - A path is refused before any lookup when it has an empty, `.` or `..` segment, a
//!   backslash, a control character or a `%` left after decoding (a double encoding); the
//!   owner check then applies to the path as resolved, and a host's folder cannot be named
//!   below another's.
//! - One delivery per boot: a config is served once per host, config and boot. A boot opens
//!   at the host's BMC reset, or at its first DHCP offer or iPXE script when none is in
//!   progress, and closes at `booted` or after the TTL. A second fetch in the same boot is
//!   the sign of a second machine wearing the host's address, and is refused.
//! - A per-boot nonce, rendered into the host's script as `{{ nonce }}`: a request carrying one
//!   must carry the boot's.
//!
//! What this can and cannot promise is in `docs/security/configs.md`.

use std::{collections::HashMap, net::IpAddr, sync::Mutex, time::Duration};

use prometheus::{IntCounterVec, Opts, Registry};
use subtle::ConstantTimeEq as _;

use crate::{
    model::inventory::Mac,
    model::ledger::{Event, Phase},
};

/// Why a config path is refused before any lookup (`400`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Nothing after `/configs/` (or after the owner's folder).
    #[error("no config named")]
    Empty,
    /// `//`, or a trailing `/`.
    #[error("empty path segment")]
    EmptySegment,
    /// A `.` or `..` segment (`%2e` arrives decoded as `.`).
    #[error("`.` or `..` path segment")]
    DotSegment,
    /// A backslash, which some file systems and proxies take for a separator.
    #[error("backslash in the path")]
    Backslash,
    /// A `%` left after the request's one decoding: a double encoding such as `%252e`.
    #[error("percent sign after decoding (double encoding)")]
    Percent,
    /// A control character (NUL, newline, ...).
    #[error("control character in the path")]
    Control,
    /// A host's folder named below another (`/configs/node01/node02/x`), which the shared
    /// lookup would otherwise reach.
    #[error("a host's folder named below another host's")]
    HostFolder,
}

/// A config path as resolved: the host folder it names, if any, and the config's name.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigPath<'a> {
    /// `<host>` of `/configs/<host>/<file>`.
    pub owner: Option<&'a str>,
    /// The config's name below the configs folder (or below the owner's folder); the same
    /// for `/configs/<file>` and `/configs/<host>/<file>`, so both count as one delivery.
    pub name: String,
}

/// Resolves `rest`, the percent-decoded request path after `/configs` (the request parser
/// decoded it once: `%2e` is `.` and `%2f` is `/` here), with `is_host` telling the
/// inventory's host names. Every check is made on the path as resolved, before any lookup.
pub fn parse_path(rest: &str, is_host: impl Fn(&str) -> bool) -> Result<ConfigPath<'_>, PathError> {
    let rest = rest.strip_prefix('/').unwrap_or(rest);
    if rest.is_empty() {
        return Err(PathError::Empty);
    }
    if rest.contains('\\') {
        return Err(PathError::Backslash);
    }
    if rest.contains('%') {
        return Err(PathError::Percent);
    }
    if rest.chars().any(char::is_control) {
        return Err(PathError::Control);
    }
    let segments: Vec<&str> = rest.split('/').collect();
    for s in &segments {
        match *s {
            "" => return Err(PathError::EmptySegment),
            "." | ".." => return Err(PathError::DotSegment),
            _ => {}
        }
    }
    let (owner, tail) = match segments.split_first() {
        Some((first, tail)) if is_host(first) => (Some(*first), tail),
        _ => (None, &segments[..]),
    };
    match tail.first() {
        None => Err(PathError::Empty),
        Some(first) if is_host(first) => Err(PathError::HostFolder),
        Some(_) => Ok(ConfigPath {
            owner,
            name: tail.join("/"),
        }),
    }
}

/// Start (unix ms) of the boot in progress at `now_ms`, from a host's events, oldest first.
///
/// A BMC reset always begins a new boot (only the scheduler makes one); a DHCP offer (the
/// host's DISCOVER) or its iPXE script begins one when none is in progress, so the second
/// DISCOVER of a boot (iPXE's, the installer's) does not reopen it. `booted` ends it, and so
/// does `ttl_ms` after its start. A DHCP ACK does not begin one: a running system's renewals
/// would reopen the window after every boot.
pub fn boot_start(events: &[Event], ttl_ms: u64, now_ms: u64) -> Option<u64> {
    let mut open: Option<u64> = None;
    for e in events {
        if open.is_some_and(|s| e.at_ms >= s.saturating_add(ttl_ms)) {
            open = None;
        }
        match e.phase() {
            Phase::BmcReset => open = Some(e.at_ms),
            Phase::DhcpOffer | Phase::IpxeScript if open.is_none() => open = Some(e.at_ms),
            Phase::Booted => open = None,
            _ => {}
        }
    }
    open.filter(|s| now_ms < s.saturating_add(ttl_ms))
}

/// What a config request gets.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delivery {
    /// The first delivery of this config this boot; render it with the boot's nonce.
    Granted {
        /// The boot's nonce (`{{ nonce }}`), if one could be drawn.
        nonce: Option<String>,
    },
    /// Already delivered this boot, to `first` (`409`).
    Again {
        /// The address the config was delivered to.
        first: IpAddr,
    },
    /// The request's nonce is not the boot's (`403`).
    WrongNonce,
    /// No boot is in progress for the host (`409`).
    NoBoot,
}

/// A config request, as [`Boots::deliver`] weighs it.
#[derive(Clone, Copy, Debug)]
pub struct Ask<'a> {
    /// The config's name ([`ConfigPath::name`]).
    pub name: &'a str,
    /// The address asking.
    pub peer: IpAddr,
    /// `?nonce=`, if given.
    pub nonce: Option<&'a str>,
}

/// One host's boot on record.
struct Boot {
    start_ms: u64,
    nonce: Option<String>,
    /// Config name → the address it was delivered to.
    served: HashMap<String, IpAddr>,
    /// `booted` was reported. Kept here because the ledger's bounded timeline can lose the
    /// event: anyone can push a host's events out (DISCOVERs with its MAC in `chaddr`,
    /// scripts by `?mac=`), which would keep the ended boot open and refuse the host's
    /// next boot its configs.
    ended: bool,
}

/// The boots in progress of inventory hosts (callers pass inventory MACs only, so this holds
/// at most one entry per host), with what each has been delivered.
pub struct Boots {
    ttl_ms: u64,
    hosts: Mutex<HashMap<Mac, Boot>>,
}

impl Boots {
    /// Boots that close `ttl` after they open at the latest.
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
            hosts: Mutex::default(),
        }
    }

    /// The boot of `mac` in progress, opened on record (with a nonce from `fresh`) the first
    /// time it is seen.
    fn current<'a>(
        &self,
        hosts: &'a mut HashMap<Mac, Boot>,
        mac: Mac,
        events: &[Event],
        now_ms: u64,
        fresh: impl FnOnce() -> Option<String>,
    ) -> Option<&'a mut Boot> {
        // The boot on record goes on until `booted`, a new reset or its TTL, even when the
        // ledger's bounded timeline has since dropped the event that opened it: otherwise a
        // later DISCOVER of the same boot would look like a new boot and allow a second
        // delivery.
        let recorded = hosts.get(&mac).map(|b| b.start_ms);
        if let Some(s) = recorded {
            let ended = hosts.get(&mac).is_some_and(|b| b.ended)
                || now_ms >= s.saturating_add(self.ttl_ms)
                || events
                    .iter()
                    .any(|e| e.at_ms > s && matches!(e.phase(), Phase::Booted | Phase::BmcReset));
            if !ended {
                return hosts.get_mut(&mac);
            }
        }
        let Some(start) = boot_start(events, self.ttl_ms, now_ms)
            .filter(|start| recorded.is_none_or(|r| *start > r))
        else {
            // The ended boot stays on record: its start still bounds the next one's.
            return None;
        };
        hosts.insert(
            mac,
            Boot {
                start_ms: start,
                nonce: fresh(),
                served: HashMap::new(),
                ended: false,
            },
        );
        hosts.get_mut(&mac)
    }

    /// Ends `mac`'s boot on record: the host reported `booted` (from its own address).
    pub fn end(&self, mac: Mac) {
        if let Some(b) = self
            .hosts
            .lock()
            .ok()
            .as_mut()
            .and_then(|h| h.get_mut(&mac))
        {
            b.ended = true;
        }
    }

    /// The nonce of `mac`'s boot in progress, for its iPXE script; `None` outside a boot.
    pub fn nonce(
        &self,
        mac: Mac,
        events: &[Event],
        now_ms: u64,
        fresh: impl FnOnce() -> Option<String>,
    ) -> Option<String> {
        let mut hosts = self.hosts.lock().ok()?;
        self.current(&mut hosts, mac, events, now_ms, fresh)?
            .nonce
            .clone()
    }

    /// Decides a request for one of `mac`'s configs (an empty nonce counts as none: a script
    /// rendered without a nonce passes `?nonce=`). A granted delivery is on record at once,
    /// so that of two racing requests one is refused.
    pub fn deliver(
        &self,
        mac: Mac,
        events: &[Event],
        now_ms: u64,
        ask: Ask<'_>,
        fresh: impl FnOnce() -> Option<String>,
    ) -> Delivery {
        let Ask { name, peer, nonce } = ask;
        let Ok(mut hosts) = self.hosts.lock() else {
            return Delivery::NoBoot;
        };
        let Some(boot) = self.current(&mut hosts, mac, events, now_ms, fresh) else {
            return Delivery::NoBoot;
        };
        if let Some(asked) = nonce.filter(|n| !n.is_empty()) {
            if !boot.nonce.as_deref().is_some_and(|n| same(n, asked)) {
                return Delivery::WrongNonce;
            }
        }
        if let Some(first) = boot.served.get(name) {
            return Delivery::Again { first: *first };
        }
        boot.served.insert(name.to_owned(), peer);
        Delivery::Granted {
            nonce: boot.nonce.clone(),
        }
    }
}

/// Equality that takes the same time wherever the strings differ, so that a nonce cannot be
/// guessed a byte at a time from response times.
fn same(a: &str, b: &str) -> bool {
    // `subtle`, as the admin token compare uses: unequal lengths are simply unequal.
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

/// A fresh nonce: 128 bits from the OS random source, in hex. `None` (and a warning) if the
/// source cannot be read; configs are then served without one.
pub fn os_nonce() -> Option<String> {
    let mut bytes = [0u8; 16];
    // The OS source the admin token generator uses too (getrandom(2)).
    if let Err(e) = getrandom::getrandom(&mut bytes) {
        tracing::warn!(error = %e, "cannot read the OS random source: boots get no nonce");
        return None;
    }
    Some(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Reasons a config request is refused, as the metric labels them.
pub const REFUSALS: [&str; 7] = [
    "path",
    "unknown_host",
    "owner",
    "nonce",
    "again",
    "no_boot",
    "template",
];

/// `bootfabric_http_config_refused_total{reason}`.
#[derive(Clone)]
pub struct Metrics {
    refused: IntCounterVec,
}

impl Metrics {
    /// Registers the counter, every reason at 0 (so that `increase()` sees the first one).
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let refused = IntCounterVec::new(
            Opts::new(
                "bootfabric_http_config_refused_total",
                "Config requests refused, by reason.",
            ),
            &["reason"],
        )?;
        r.register(Box::new(refused.clone()))?;
        for reason in REFUSALS {
            refused.with_label_values(&[reason]);
        }
        Ok(Self { refused })
    }

    /// Counts one refusal.
    pub fn refused(&self, reason: &'static str) {
        self.refused.with_label_values(&[reason]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ledger::EventKind;

    fn hosts(n: &str) -> bool {
        n == "node01" || n == "node02"
    }

    fn path(p: &str) -> Result<ConfigPath<'_>, PathError> {
        parse_path(p, hosts)
    }

    #[test]
    fn paths_resolve_to_an_owner_and_a_name() {
        let ok = |p, owner: Option<&str>, name: &str| {
            assert_eq!(
                path(p),
                Ok(ConfigPath {
                    owner,
                    name: name.to_owned()
                }),
                "{p}"
            )
        };
        ok("/node.ign", None, "node.ign");
        ok("/node02/node.ign", Some("node02"), "node.ign");
        ok("/ignition/node.ign", None, "ignition/node.ign");
        ok("/node01/sub/node.ign", Some("node01"), "sub/node.ign");
        ok("/a..b/...", None, "a..b/...");
        ok("/node 1.cfg", None, "node 1.cfg");
    }

    #[test]
    fn dot_empty_encoded_and_odd_forms_are_refused() {
        use PathError::*;
        // As the request parser hands them over: decoded once.
        for (p, why) in [
            ("", Empty),
            ("/", Empty),
            ("/node02", Empty),
            ("/node02/", EmptySegment),
            ("/./node02/node.ign", DotSegment),
            ("/../node02/node.ign", DotSegment),
            ("/node01/../node02/node.ign", DotSegment),
            ("/node01/./node.ign", DotSegment),
            ("/x/.", DotSegment),
            ("//node02/node.ign", EmptySegment),
            ("/node01//node02/node.ign", EmptySegment),
            ("/node.ign/", EmptySegment),
            ("/%2e/node02/node.ign", Percent),
            ("/%2E%2fnode02/node.ign", Percent),
            ("/%252e/node02/node.ign", Percent),
            ("/.\\node02/node.ign", Backslash),
            ("/node02\\node.ign", Backslash),
            ("/node.ign\0.txt", Control),
            ("/node.ign\n", Control),
            ("/node01/node02/node.ign", HostFolder),
            ("/node02/node01/node.ign", HostFolder),
            ("/node01/node01/node.ign", HostFolder),
        ] {
            assert_eq!(path(p), Err(why), "{p:?}");
        }
    }

    /// An event of `phase`; delivery looks at phases only, so what it concerned is made up.
    fn ev(at_ms: u64, phase: Phase) -> Event {
        let kind = match phase {
            Phase::DhcpOffer => EventKind::DhcpOffer,
            Phase::DhcpAck => EventKind::DhcpAck,
            Phase::Booted => EventKind::Booted,
            Phase::IpxeScript => EventKind::IpxeScript {
                path: "/boot.ipxe".into(),
            },
            Phase::BmcReset => EventKind::BmcReset {
                reset_type: "ForceRestart".into(),
            },
            other => panic!("no test event for {other:?}"),
        };
        Event {
            at_ms,
            ip: None,
            kind,
        }
    }

    #[test]
    fn a_boot_runs_from_reset_or_first_discover_to_booted_or_ttl() {
        use Phase::*;
        let ttl = 1000;
        assert_eq!(boot_start(&[], ttl, 5), None);
        // The first DISCOVER opens it; later ones (iPXE's, the installer's) do not move it.
        let boot = [
            ev(10, DhcpOffer),
            ev(20, DhcpAck),
            ev(30, IpxeScript),
            ev(40, DhcpOffer),
        ];
        assert_eq!(boot_start(&boot, ttl, 50), Some(10));
        // ... until the TTL, after which nothing is open until the next opener.
        assert_eq!(boot_start(&boot, ttl, 1010), None);
        let late = [ev(10, DhcpOffer), ev(1500, DhcpOffer)];
        assert_eq!(boot_start(&late, ttl, 1600), Some(1500));
        // `booted` closes it; a renewal (ACK) does not reopen it; a DISCOVER does.
        let done = [ev(10, DhcpOffer), ev(60, Booted), ev(70, DhcpAck)];
        assert_eq!(boot_start(&done, ttl, 80), None);
        let next = [ev(10, DhcpOffer), ev(60, Booted), ev(90, DhcpOffer)];
        assert_eq!(boot_start(&next, ttl, 95), Some(90));
        // A BMC reset always begins a new boot.
        let reset = [ev(10, DhcpOffer), ev(50, BmcReset), ev(60, DhcpOffer)];
        assert_eq!(boot_start(&reset, ttl, 70), Some(50));
    }

    fn ip(last: u8) -> IpAddr {
        std::net::Ipv4Addr::new(10, 77, 0, last).into()
    }

    #[test]
    fn a_config_is_delivered_once_per_boot() {
        use Phase::*;
        let boots = Boots::new(Duration::from_millis(1000));
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let nonce = || Some("n1".to_owned());
        let mut events = vec![ev(10, DhcpOffer)];
        let ask = |events: &[Event], now, name, peer, n| {
            boots.deliver(
                mac,
                events,
                now,
                Ask {
                    name,
                    peer,
                    nonce: n,
                },
                nonce,
            )
        };
        assert_eq!(ask(&[], 5, "a", ip(2), None), Delivery::NoBoot);
        assert_eq!(
            ask(&events, 20, "a", ip(2), Some("n1")),
            Delivery::Granted {
                nonce: Some("n1".into())
            }
        );
        assert_eq!(
            ask(&events, 21, "a", ip(2), None),
            Delivery::Again { first: ip(2) }
        );
        assert_eq!(
            ask(&events, 21, "a", ip(9), Some("n1")),
            Delivery::Again { first: ip(2) }
        );
        assert_eq!(
            ask(&events, 22, "a", ip(2), Some("bad")),
            Delivery::WrongNonce
        );
        assert_eq!(
            ask(&events, 22, "a", ip(2), Some("n")),
            Delivery::WrongNonce
        );
        // Another config of the same boot is its own delivery; an empty nonce is none.
        assert!(matches!(
            ask(&events, 23, "b", ip(2), Some("")),
            Delivery::Granted { .. }
        ));
        // The ledger's bounded timeline dropped the opener: the boot on record goes on.
        let dropped = [ev(500, DhcpOffer)];
        assert_eq!(
            ask(&dropped, 600, "a", ip(2), None),
            Delivery::Again { first: ip(2) }
        );
        // After `booted`, nothing until the next boot; then a fresh delivery and nonce.
        events.push(ev(700, Booted));
        assert_eq!(ask(&events, 710, "a", ip(2), None), Delivery::NoBoot);
        events.push(ev(800, DhcpOffer));
        let fresh = boots.deliver(
            mac,
            &events,
            810,
            Ask {
                name: "a",
                peer: ip(2),
                nonce: None,
            },
            || Some("n2".into()),
        );
        assert_eq!(
            fresh,
            Delivery::Granted {
                nonce: Some("n2".into())
            }
        );
        assert_eq!(boots.nonce(mac, &events, 820, nonce), Some("n2".into()));
        // The TTL ends it too.
        assert_eq!(ask(&events, 1800, "a", ip(2), None), Delivery::NoBoot);
        assert_eq!(boots.nonce(mac, &events, 1800, nonce), None);
        // A reset begins a new boot even inside the TTL of the last one.
        events.push(ev(1900, DhcpOffer));
        assert!(matches!(
            ask(&events, 1910, "a", ip(2), None),
            Delivery::Granted { .. }
        ));
        events.push(ev(1950, BmcReset));
        assert!(matches!(
            ask(&events, 1960, "a", ip(2), None),
            Delivery::Granted { .. }
        ));
    }

    /// The attack: after the host reports `booted`, a machine anywhere on the network pushes
    /// the host's events out of the ledger's bounded timeline (32 DISCOVERs with the host's
    /// MAC in `chaddr`). The timeline then shows offers only, no `booted`: the boot on record
    /// looked open until its TTL, and the host's own next boot was refused its config.
    #[test]
    fn a_flushed_timeline_does_not_keep_an_ended_boot_open() {
        use Phase::*;
        let boots = Boots::new(Duration::from_millis(10_000));
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        let ask = |events: &[Event], now| {
            boots.deliver(
                mac,
                events,
                now,
                Ask {
                    name: "a",
                    peer: ip(2),
                    nonce: None,
                },
                || None,
            )
        };
        assert!(matches!(
            ask(&[ev(10, DhcpOffer)], 20),
            Delivery::Granted { .. }
        ));
        // What `/booted` does: the ledger event, and the boot on record ended.
        boots.end(mac);
        // The flood: the timeline keeps its last 32 events, all the attacker's offers; then
        // the host reboots (its own DISCOVER, its script) and asks for its config.
        let flushed: Vec<Event> = (0..32)
            .map(|i| ev(100 + i, DhcpOffer))
            .chain([ev(500, DhcpOffer), ev(510, IpxeScript)])
            .collect();
        assert!(
            matches!(ask(&flushed, 520,), Delivery::Granted { .. }),
            "the host's next boot was refused its config: {:?}",
            ask(&flushed, 521)
        );
    }

    #[test]
    fn nonces_are_128_random_bits_and_compared_whole() {
        let (a, b) = (os_nonce().expect("nonce"), os_nonce().expect("nonce"));
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b) && !same(&a, &a[..31]) && !same("", "x"));
    }
}
