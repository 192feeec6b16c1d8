//! A run shared through the cluster: what a new leader does with each host of a run it takes
//! over, and how fast each rack is paced. Pure: the records read from etcd, what the BMC and
//! the timelines say of a host, and the membership view in; decisions out.
//!
//! The rule that cannot bend: a host that booted is never reset twice (a booted machine reset
//! again loses its work, or is installed a second time). A host recorded `reset` or `booted`
//! is therefore never reset again. A host recorded `resetting` is the one case where the
//! record cannot tell: the old leader wrote its intent and died before it learned the BMC's
//! answer. The new leader then finds out ([`Found`]): a boot since the intent (its ledger or
//! the shared timeline), and the BMC's power state. The decision table:
//!
//! | record      | boot seen since the intent | power (BMC)                 | decision                                   |
//! |-------------|----------------------------|-----------------------------|--------------------------------------------|
//! | none        | -                          | not asked                   | reset as planned                           |
//! | `reset`     | -                          | not asked                   | wait for its boot, no reset                |
//! | `booted`, `failed` | -                   | not asked                   | ended: nothing                             |
//! | `resetting` | yes                        | any                         | booted                                     |
//! | `resetting` | no                         | On / PoweringOn             | wait for its boot (POST and boot timeouts from the takeover), no reset |
//! | `resetting` | no                         | unknown / PoweringOff / no answer | the same: no answer is no licence to reset |
//! | `resetting` | no                         | Off                         | failed, [`POWERED_OFF`]: not reset         |
//!
//! Off is not reset, although a reset of a powered-off machine cannot hit a running one:
//! Off and no boot seen is also what a machine looks like that booted, did its work (an
//! installer) and powered itself off while the report of its boot was lost (the fabric that
//! saw it was cut off from etcd). Resetting it would boot it a second time. The operator who
//! knows it did not boot starts a run for it again.

use super::Capacity;
use crate::cluster::{
    runs::{HostRecord, HostState},
    FabricRecord,
};
use crate::redfish::PowerState;

/// What a BMC says of its host's power.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Power {
    /// Powered on (or powering on).
    On,
    /// Powered off.
    Off,
    /// The BMC did not say (unreachable, powering off, or an unexpected answer).
    Unknown,
}

impl From<PowerState> for Power {
    fn from(p: PowerState) -> Self {
        match p {
            PowerState::On | PowerState::PoweringOn => Self::On,
            PowerState::Off => Self::Off,
            // Powering off is neither: a machine on its way down after a boot, or a reset
            // in progress. Nothing to reset on.
            PowerState::PoweringOff | PowerState::Unknown => Self::Unknown,
        }
    }
}

/// What the new leader found out about a host whose reset outcome is unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Found {
    /// Its BMC's power state (`Unknown` when the BMC did not answer).
    pub power: Power,
    /// When it reported booted at or after the intent (unix ms), at any fabric.
    pub booted_ms: Option<u64>,
}

/// What a new leader does with a host of a run it takes over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resume {
    /// Never touched: reset it.
    Reset,
    /// Its reset was (or may have been) done at `since_ms`: wait for its boot evidence, do
    /// not reset it.
    AwaitBoot {
        /// Unix ms of the reset (or of the intent, when the outcome is unknown).
        since_ms: u64,
    },
    /// Its outcome is unknown: find out (the BMC's power state, a boot since the intent),
    /// then decide again.
    AskPower,
    /// It booted at `at_ms` after the old leader's intent: done with.
    Booted {
        /// Unix ms of its boot.
        at_ms: u64,
    },
    /// It cannot be waited on and must not be reset: failed, for `reason`.
    Fail {
        /// Why.
        reason: &'static str,
    },
    /// Booted or failed: nothing to do.
    Ended,
}

/// The decision for a host whose record is `record` (`None`: nothing was done to it), once
/// `found` out about it (see the module's table).
pub fn resume(record: Option<&HostRecord>, found: Option<Found>) -> Resume {
    let Some(r) = record else {
        return Resume::Reset;
    };
    match r.state {
        HostState::Booted | HostState::Failed => Resume::Ended,
        HostState::Reset => Resume::AwaitBoot { since_ms: r.at_ms },
        HostState::Resetting => match found {
            None => Resume::AskPower,
            Some(Found {
                booted_ms: Some(at_ms),
                ..
            }) => Resume::Booted { at_ms },
            Some(Found {
                power: Power::Off, ..
            }) => Resume::Fail {
                reason: POWERED_OFF,
            },
            Some(Found {
                power: Power::On | Power::Unknown,
                ..
            }) => Resume::AwaitBoot { since_ms: r.at_ms },
        },
    }
}

/// Why a host whose reset outcome was unknown, found powered off and never seen booting,
/// failed.
pub const POWERED_OFF: &str =
    "off after a reset of unknown outcome, no boot seen: not reset twice (run it again)";

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

    fn found(power: Power, booted_ms: Option<u64>) -> Option<Found> {
        Some(Found { power, booted_ms })
    }

    #[test]
    fn a_host_recorded_reset_or_ended_is_never_reset_again() {
        assert_eq!(resume(None, None), Resume::Reset, "never touched");
        for f in [
            None,
            found(Power::On, None),
            found(Power::Off, None),
            found(Power::Unknown, Some(8)),
        ] {
            assert_eq!(
                resume(Some(&rec(HostState::Reset, 7)), f),
                Resume::AwaitBoot { since_ms: 7 },
                "{f:?}"
            );
            assert_eq!(resume(Some(&rec(HostState::Booted, 7)), f), Resume::Ended);
            assert_eq!(resume(Some(&rec(HostState::Failed, 7)), f), Resume::Ended);
        }
    }

    #[test]
    fn an_unknown_outcome_is_found_out_and_never_reset() {
        let r = rec(HostState::Resetting, 9);
        assert_eq!(resume(Some(&r), None), Resume::AskPower);
        assert_eq!(
            resume(Some(&r), found(Power::On, None)),
            Resume::AwaitBoot { since_ms: 9 },
            "it may be in POST after the old leader's reset"
        );
        assert_eq!(
            resume(Some(&r), found(Power::Unknown, None)),
            Resume::AwaitBoot { since_ms: 9 },
            "a BMC that does not answer is no licence to reset"
        );
        assert_eq!(
            resume(Some(&r), found(Power::Off, None)),
            Resume::Fail {
                reason: POWERED_OFF
            },
            "off may be a machine that booted and powered itself off"
        );
        for power in [Power::On, Power::Off, Power::Unknown] {
            assert_eq!(
                resume(Some(&r), found(power, Some(12))),
                Resume::Booted { at_ms: 12 },
                "{power:?}: its boot says the reset went through"
            );
        }
    }

    #[test]
    fn redfish_power_states_map_to_what_the_decision_needs() {
        assert_eq!(Power::from(PowerState::On), Power::On);
        assert_eq!(Power::from(PowerState::PoweringOn), Power::On);
        assert_eq!(Power::from(PowerState::Off), Power::Off);
        assert_eq!(Power::from(PowerState::PoweringOff), Power::Unknown);
        assert_eq!(Power::from(PowerState::Unknown), Power::Unknown);
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
