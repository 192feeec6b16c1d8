//! The boot history's form on disk and what is read back from it, with no file I/O: one JSON
//! object per line for each event of an inventory host ([`Line`]), and the boots that a
//! host's lines make ([`boots`]), by the rules the event log uses ([`BootTrack::advance`]).
//!
//! A line names the host as well as its MAC, so `bootfabric history --host` finds boots of a
//! host that has since been renamed or removed from the inventory.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use serde::{Deserialize, Serialize};

use super::{
    events::{BootTrack, EventType, Payload},
    ConfigRefusal, Event, EventKind,
};
use crate::model::inventory::Mac;

/// One journaled event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    /// Unix milliseconds.
    pub at: u64,
    /// The host's name when it happened.
    pub host: String,
    /// Its MAC (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// The address concerned, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
    /// What happened.
    #[serde(flatten)]
    pub what: Stored,
}

/// [`EventKind`] as stored: tagged by the phase's label, its fields by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
#[allow(missing_docs)]
pub enum Stored {
    DhcpOffer,
    DhcpAck,
    DhcpNak,
    DhcpRelease,
    DhcpDecline,
    TftpSent { file: String },
    TftpFailed { file: String, why: String },
    IpxeScript { path: String },
    HttpStarted { path: String },
    HttpSent { path: String, bytes: u64 },
    HttpFailed { path: String, bytes: u64 },
    Booted,
    BmcReset { reset_type: String },
    BmcFailed { why: String },
    Admitted,
    ConfigServed { name: String },
    ConfigRefused { name: String, why: String },
    BootFailed { reason: String },
}

/// How a TFTP transfer ended, as the transfer metric labels it; a label this build does not
/// know (a line from another version) reads back as `failed`.
const TFTP_ENDINGS: [&str; 5] = [
    "client_error",
    "io_error",
    "lifetime",
    "send_error",
    "timeout",
];

impl Line {
    /// The line for `event` of host `host` (`mac`).
    pub fn new(host: &str, mac: Mac, event: &Event) -> Self {
        let what = match &event.kind {
            EventKind::DhcpOffer => Stored::DhcpOffer,
            EventKind::DhcpAck => Stored::DhcpAck,
            EventKind::DhcpNak => Stored::DhcpNak,
            EventKind::DhcpRelease => Stored::DhcpRelease,
            EventKind::DhcpDecline => Stored::DhcpDecline,
            EventKind::TftpSent { file } => Stored::TftpSent { file: file.clone() },
            EventKind::TftpFailed { file, why } => Stored::TftpFailed {
                file: file.clone(),
                why: (*why).to_owned(),
            },
            EventKind::IpxeScript { path } => Stored::IpxeScript { path: path.clone() },
            EventKind::HttpStarted { path } => Stored::HttpStarted { path: path.clone() },
            EventKind::HttpSent { path, bytes } => Stored::HttpSent {
                path: path.clone(),
                bytes: *bytes,
            },
            EventKind::HttpFailed { path, bytes } => Stored::HttpFailed {
                path: path.clone(),
                bytes: *bytes,
            },
            EventKind::Booted => Stored::Booted,
            EventKind::BmcReset { reset_type } => Stored::BmcReset {
                reset_type: reset_type.clone(),
            },
            EventKind::BmcFailed { why } => Stored::BmcFailed { why: why.clone() },
            EventKind::Admitted => Stored::Admitted,
            EventKind::ConfigServed { name } => Stored::ConfigServed { name: name.clone() },
            EventKind::ConfigRefused { name, why } => Stored::ConfigRefused {
                name: name.clone(),
                why: why.to_string(),
            },
            EventKind::BootFailed { reason } => Stored::BootFailed {
                reason: reason.clone(),
            },
        };
        Self {
            at: event.at_ms,
            host: host.to_owned(),
            mac: mac.to_string(),
            ip: event.ip,
            what,
        }
    }

    /// The MAC and the event this line holds; `None` when the MAC does not parse (a line
    /// written by hand, or damaged).
    pub fn event(&self) -> Option<(Mac, Event)> {
        let mac = self.mac.parse().ok()?;
        let kind = match &self.what {
            Stored::DhcpOffer => EventKind::DhcpOffer,
            Stored::DhcpAck => EventKind::DhcpAck,
            Stored::DhcpNak => EventKind::DhcpNak,
            Stored::DhcpRelease => EventKind::DhcpRelease,
            Stored::DhcpDecline => EventKind::DhcpDecline,
            Stored::TftpSent { file } => EventKind::TftpSent { file: file.clone() },
            Stored::TftpFailed { file, why } => EventKind::TftpFailed {
                file: file.clone(),
                why: TFTP_ENDINGS
                    .into_iter()
                    .find(|e| e == why)
                    .unwrap_or("failed"),
            },
            Stored::IpxeScript { path } => EventKind::IpxeScript { path: path.clone() },
            Stored::HttpStarted { path } => EventKind::HttpStarted { path: path.clone() },
            Stored::HttpSent { path, bytes } => EventKind::HttpSent {
                path: path.clone(),
                bytes: *bytes,
            },
            Stored::HttpFailed { path, bytes } => EventKind::HttpFailed {
                path: path.clone(),
                bytes: *bytes,
            },
            Stored::Booted => EventKind::Booted,
            Stored::BmcReset { reset_type } => EventKind::BmcReset {
                reset_type: reset_type.clone(),
            },
            Stored::BmcFailed { why } => EventKind::BmcFailed { why: why.clone() },
            Stored::Admitted => EventKind::Admitted,
            Stored::ConfigServed { name } => EventKind::ConfigServed { name: name.clone() },
            Stored::ConfigRefused { name, why } => EventKind::ConfigRefused {
                name: name.clone(),
                why: refusal(why)?,
            },
            Stored::BootFailed { reason } => EventKind::BootFailed {
                reason: reason.clone(),
            },
        };
        Some((
            mac,
            Event {
                at_ms: self.at,
                ip: self.ip,
                kind,
            },
        ))
    }
}

/// A config refusal read back from its text ([`ConfigRefusal`]'s `Display`).
fn refusal(why: &str) -> Option<ConfigRefusal> {
    let fixed = [
        ConfigRefusal::NoBoot,
        ConfigRefusal::WrongNonce,
        ConfigRefusal::Template,
    ];
    if let Some(r) = fixed.into_iter().find(|r| r.to_string() == why) {
        return Some(r);
    }
    if let Some(first) = why.strip_prefix("again, first served to ") {
        return Some(ConfigRefusal::Again {
            first: first.parse().ok()?,
        });
    }
    why.strip_prefix("for ")
        .map(|owner| ConfigRefusal::Owner(owner.to_owned()))
}

/// How a boot ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Ending {
    /// The installed system reported `booted`.
    Booted,
    /// A download failed, the BMC refused, or the scheduler gave up.
    Failed,
    /// No end was seen (still running, powered off, or cut by the history's start).
    Open,
}

/// One boot of one host, as the history shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Boot {
    /// The host's name (as its last line names it).
    pub host: String,
    /// Its MAC.
    pub mac: String,
    /// Start, unix milliseconds.
    pub started_ms: u64,
    /// How it ended.
    pub ending: Ending,
    /// Seconds from the start to its end (to its last event when open).
    pub seconds: f64,
    /// Each phase reached and the seconds from the start it took, in order.
    pub phases: Vec<(String, f64)>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The address it had (its last DHCP ACK in the boot).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<IpAddr>,
}

/// The boots that `lines` (any hosts, oldest first) make, oldest first by start.
pub fn boots(lines: &[Line]) -> Vec<Boot> {
    let mut by_mac: BTreeMap<&str, Vec<&Line>> = BTreeMap::new();
    for l in lines {
        by_mac.entry(l.mac.as_str()).or_default().push(l);
    }
    let mut out = Vec::new();
    for host_lines in by_mac.into_values() {
        let mut track = BootTrack::new(Arc::from(""));
        let mut current: Option<Boot> = None;
        for line in host_lines {
            let Some((_, event)) = line.event() else {
                continue;
            };
            let before = track.open_ms();
            let advanced = track.advance(&event.kind, event.at_ms);
            let Some(start) = advanced.boot_ms else {
                continue;
            };
            if before != Some(start) {
                // A new boot began (a reset, or a DISCOVER after the last one ended).
                out.extend(current.take());
            }
            let boot = current.get_or_insert_with(|| Boot {
                host: line.host.clone(),
                mac: line.mac.clone(),
                started_ms: start,
                ending: Ending::Open,
                seconds: 0.0,
                phases: Vec::new(),
                reason: None,
                ip: None,
            });
            let since = event.at_ms.saturating_sub(start) as f64 / 1000.0;
            boot.host.clone_from(&line.host);
            boot.seconds = since;
            if event.kind == EventKind::DhcpAck {
                boot.ip = event.ip;
            }
            for (t, payload) in advanced.events {
                match (t, payload) {
                    (EventType::HostPhase, Payload::Phase(p)) => {
                        boot.phases.push((p.as_str().to_owned(), since));
                    }
                    (EventType::HostBooted, _) => {
                        boot.ending = Ending::Booted;
                        boot.phases.push(("booted".to_owned(), since));
                    }
                    (EventType::HostFailed, _) => {
                        boot.ending = Ending::Failed;
                        boot.reason = event
                            .kind
                            .detail()
                            .or_else(|| Some(event.kind.phase().as_str().to_owned()));
                        boot.phases.push(("failed".to_owned(), since));
                    }
                    _ => {}
                }
            }
            if boot.ending != Ending::Open {
                out.extend(current.take());
            }
        }
        out.extend(current);
    }
    out.sort_by(|a, b| a.started_ms.cmp(&b.started_ms).then(a.host.cmp(&b.host)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn line(host: &str, n: u8, at: u64, kind: EventKind) -> Line {
        Line::new(
            host,
            mac(n),
            &Event {
                at_ms: at,
                ip: Some("10.0.0.11".parse().expect("ip")),
                kind,
            },
        )
    }

    #[test]
    fn every_event_kind_reads_back_as_it_was_written() {
        let kinds = [
            EventKind::DhcpOffer,
            EventKind::DhcpAck,
            EventKind::TftpSent {
                file: "undionly.kpxe".into(),
            },
            EventKind::TftpFailed {
                file: "x".into(),
                why: "timeout",
            },
            EventKind::IpxeScript {
                path: "/boot.ipxe".into(),
            },
            EventKind::HttpStarted {
                path: "/vmlinuz".into(),
            },
            EventKind::HttpSent {
                path: "/vmlinuz".into(),
                bytes: 9,
            },
            EventKind::HttpFailed {
                path: "/initrd".into(),
                bytes: 3,
            },
            EventKind::Booted,
            EventKind::BmcReset {
                reset_type: "ForceRestart".into(),
            },
            EventKind::BmcFailed { why: "401".into() },
            EventKind::Admitted,
            EventKind::ConfigServed {
                name: "user-data".into(),
            },
            EventKind::ConfigRefused {
                name: "user-data".into(),
                why: ConfigRefusal::NoBoot,
            },
            EventKind::BootFailed {
                reason: "timed out in kernel".into(),
            },
        ];
        for kind in kinds {
            let l = line("node01", 1, 5, kind.clone());
            let text = serde_json::to_string(&l).expect("json");
            let back: Line = serde_json::from_str(&text).expect("parse");
            let (m, e) = back.event().expect("event");
            assert_eq!((m, e.kind, e.at_ms), (mac(1), kind, 5), "{text}");
        }
    }

    #[test]
    fn a_line_from_the_network_cannot_break_out_of_its_json_string() {
        let l = line(
            "node01",
            1,
            5,
            EventKind::HttpStarted {
                path: "/a\"}\n{\"phase\":\"booted".into(),
            },
        );
        let text = serde_json::to_string(&l).expect("json");
        assert!(!text.contains('\n'));
        let back: Line = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, l);
    }

    #[test]
    fn lines_make_boots_with_phases_and_endings() {
        let lines = [
            line("node01", 1, 1_000, EventKind::DhcpOffer),
            line("node02", 2, 1_500, EventKind::DhcpOffer),
            line("node01", 1, 1_100, EventKind::DhcpAck),
            line(
                "node01",
                1,
                2_000,
                EventKind::TftpSent {
                    file: "undionly.kpxe".into(),
                },
            ),
            line(
                "node01",
                1,
                3_000,
                EventKind::IpxeScript {
                    path: "/boot.ipxe".into(),
                },
            ),
            line(
                "node01",
                1,
                4_000,
                EventKind::HttpStarted {
                    path: "/vmlinuz".into(),
                },
            ),
            line(
                "node02",
                2,
                4_500,
                EventKind::HttpFailed {
                    path: "/initrd".into(),
                    bytes: 7,
                },
            ),
            line("node01", 1, 31_000, EventKind::Booted),
            // A renewal after the boot: part of no boot.
            line("node01", 1, 40_000, EventKind::DhcpAck),
            line(
                "node01",
                1,
                50_000,
                EventKind::BmcReset {
                    reset_type: "ForceRestart".into(),
                },
            ),
        ];
        let b = boots(&lines);
        assert_eq!(b.len(), 3, "{b:#?}");
        assert_eq!(b[0].host, "node01");
        assert_eq!(b[0].ending, Ending::Booted);
        assert_eq!(b[0].seconds, 30.0);
        let phases: Vec<&str> = b[0].phases.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(phases, ["dhcp", "loader", "script", "kernel", "booted"]);
        assert_eq!(b[1].host, "node02");
        assert_eq!(b[1].ending, Ending::Failed);
        assert_eq!(b[1].reason.as_deref(), Some("/initrd: 7 bytes"));
        assert_eq!(
            (b[2].ending.clone(), b[2].started_ms),
            (Ending::Open, 50_000)
        );
    }
}
