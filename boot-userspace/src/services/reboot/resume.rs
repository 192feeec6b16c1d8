//! A run shared through the cluster: what a new leader does with each host of a run it takes
//! over, and how fast each rack is paced. Pure: the records read from etcd, the BMC's power
//! state and the membership view in; decisions out.
//!
//! The rule that cannot bend: a host recorded `reset` or `booted` is never reset again (a
//! booted machine reset twice loses its work). A host recorded `resetting` is the one case
//! where the record cannot tell: the old leader wrote its intent and died before it learned
//! the BMC's answer. The decision is then the BMC's power state's:
//! - off: the reset did not power it on (or it never happened); resetting it cannot hit a
//!   running machine: reset it;
//! - on, or unknown (the BMC does not answer): the reset may have gone through and the host
//!   be in POST or booting; treat it as reset and wait for its boot evidence. If none comes
//!   within the POST and boot timeouts it fails, with a reason that says so, rather than be
//!   reset a second time on a guess.
//!
//! A host with no record was never touched: it is reset as planned.

use super::Capacity;
use crate::cluster::{
    runs::{HostRecord, HostState},
    FabricRecord,
};

/// What a BMC says of its host's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// Powered on.
    On,
    /// Powered off.
    Off,
    /// The BMC did not say (unreachable, or an unexpected answer).
    Unknown,
}

/// What a new leader does with a host of a run it takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Never touched, or its reset certainly did not happen: reset it.
    Reset,
    /// Its reset was (or may have been) done at `since_ms`: wait for its boot evidence, do
    /// not reset it.
    AwaitBoot {
        /// Unix ms of the reset (or of the intent, when the outcome is unknown).
        since_ms: u64,
    },
    /// Its outcome is unknown: ask the BMC for its power state, then decide again.
    AskPower,
    /// Booted or failed: nothing to do.
    Ended,
}

/// The decision for a host whose record is `record` (`None`: nothing was done to it), the
/// BMC's power state `power` once asked.
pub fn resume(record: Option<&HostRecord>, power: Option<Power>) -> Resume {
    let Some(r) = record else {
        return Resume::Reset;
    };
    match r.state {
        HostState::Booted | HostState::Failed => Resume::Ended,
        HostState::Reset => Resume::AwaitBoot { since_ms: r.at_ms },
        HostState::Resetting => match power {
            None => Resume::AskPower,
            Some(Power::Off) => Resume::Reset,
            Some(Power::On | Power::Unknown) => Resume::AwaitBoot { since_ms: r.at_ms },
        },
    }
}

/// Why a host whose reset outcome was unknown, and that never showed boot evidence, failed.
pub const UNCONFIRMED: &str =
    "the previous leader's reset outcome is unknown and the host showed no boot: not reset twice";

/// Each rack's pace in a run across racks: one capacity estimate per rack (the same rules as
/// a standalone run's, [`Capacity`]), fed by the measured egress of the fabric that serves
/// that rack (its [`FabricRecord`] in the membership view). An idle rack says nothing about
/// its link and keeps the cap; a saturated one that sends less is paced by what it sends.
#[derive(Clone, Debug)]
pub struct RackPacing {
    racks: Vec<(String, Capacity)>,
}

impl RackPacing {
    /// The racks of a run, each starting at `cap_bps` (this leader's `[scheduler]` cap),
    /// stepping by `per_host_bps`.
    pub fn new(racks: &[String], cap_bps: f64, per_host_bps: f64) -> Self {
        let mut out: Vec<(String, Capacity)> = Vec::new();
        for rack in racks {
            if !out.iter().any(|(r, _)| r == rack) {
                out.push((rack.clone(), Capacity::new(cap_bps, per_host_bps)));
            }
        }
        Self { racks: out }
    }

    /// One look at `now` (seconds): `fabrics` as the membership view last saw them, `busy`
    /// whether a rack's download slots are all taken. Returns each rack's capacity, for
    /// [`super::Scheduler::set_rack_capacity`]. A rack whose fabric is not registered (dead,
    /// or never joined) keeps its last estimate: nothing was measured.
    pub fn observe(
        &mut self,
        now: f64,
        fabrics: &[FabricRecord],
        busy: impl Fn(&str) -> bool,
    ) -> Vec<(String, f64)> {
        self.racks
            .iter_mut()
            .map(|(rack, capacity)| {
                // Two fabrics on one rack (a hand-over) share its link: the faster's figure.
                let measured = fabrics
                    .iter()
                    .filter(|f| &f.rack == rack && f.egress_bps.is_finite())
                    .map(|f| f.egress_bps)
                    .reduce(f64::max);
                let bps = match measured {
                    Some(m) => capacity.observe(now, m, busy(rack)),
                    None => capacity.estimate(),
                };
                (rack.clone(), bps)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(state: HostState, at_ms: u64) -> HostRecord {
        HostRecord {
            state,
            fabric: "fab-a".into(),
            at_ms,
            attempts: 1,
            reason: None,
        }
    }

    #[test]
    fn a_host_recorded_reset_or_ended_is_never_reset_again() {
        assert_eq!(resume(None, None), Resume::Reset, "never touched");
        for power in [
            None,
            Some(Power::On),
            Some(Power::Off),
            Some(Power::Unknown),
        ] {
            assert_eq!(
                resume(Some(&rec(HostState::Reset, 7)), power),
                Resume::AwaitBoot { since_ms: 7 },
                "{power:?}"
            );
            assert_eq!(
                resume(Some(&rec(HostState::Booted, 7)), power),
                Resume::Ended
            );
            assert_eq!(
                resume(Some(&rec(HostState::Failed, 7)), power),
                Resume::Ended
            );
        }
    }

    #[test]
    fn an_unknown_outcome_asks_the_bmc_and_resets_only_a_powered_off_host() {
        let r = rec(HostState::Resetting, 9);
        assert_eq!(resume(Some(&r), None), Resume::AskPower);
        assert_eq!(resume(Some(&r), Some(Power::Off)), Resume::Reset);
        assert_eq!(
            resume(Some(&r), Some(Power::On)),
            Resume::AwaitBoot { since_ms: 9 },
            "it may be in POST after the old leader's reset"
        );
        assert_eq!(
            resume(Some(&r), Some(Power::Unknown)),
            Resume::AwaitBoot { since_ms: 9 },
            "a BMC that does not answer is no licence to reset"
        );
    }

    fn fabric(name: &str, rack: &str, egress: f64) -> FabricRecord {
        FabricRecord {
            name: name.into(),
            rack: rack.into(),
            version: "0".into(),
            started: 0,
            egress_bps: egress,
            generation: 1,
        }
    }

    #[test]
    fn each_rack_is_paced_by_its_own_fabrics_measured_egress() {
        let racks: Vec<String> = ["rack-a", "rack-b", "rack-c", "rack-a"]
            .map(String::from)
            .to_vec();
        let mut p = RackPacing::new(&racks, 1000.0, 100.0);
        let fabrics = [
            fabric("fab-a", "rack-a", 400.0),
            fabric("fab-b", "rack-b", 400.0),
            fabric("fab-a2", "rack-a", 300.0),
        ];
        let busy = |r: &str| r == "rack-a";
        let start = p.observe(0.0, &fabrics, busy);
        assert_eq!(
            start,
            [
                ("rack-a".to_owned(), 1000.0),
                ("rack-b".to_owned(), 1000.0),
                ("rack-c".to_owned(), 1000.0)
            ],
            "the cap until a rack has been busy for a whole window"
        );
        let mut last = start;
        // Judged once a whole window (5 s, and the second in progress) was busy.
        for t in 1..=6 {
            last = p.observe(f64::from(t), &fabrics, busy);
        }
        assert_eq!(
            last[0],
            ("rack-a".to_owned(), 400.0),
            "busy and sending 400 (the faster of its two fabrics)"
        );
        assert_eq!(last[1], ("rack-b".to_owned(), 1000.0), "idle: says nothing");
        assert_eq!(last[2], ("rack-c".to_owned(), 1000.0), "no fabric: the cap");
    }
}
