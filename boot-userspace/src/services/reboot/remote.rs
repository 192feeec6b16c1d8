//! A run as the cluster's records show it: what a fabric that does not run a run (a
//! follower) answers for its status, read from etcd instead of a runner it does not have.
//! Pure: the run, its hosts' records and the time in; a status out.
//!
//! Coarser than the leader's own status, and marked so (`"source": "cluster"`): etcd holds
//! only what the leader records before and after each BMC call and each host's end, so a
//! host is `waiting` (nothing recorded), `resetting` (the intent), `posting` (the BMC took the
//! reset; from here to its boot only the leader's ledger knows more), `booted` or `failed`.
//! No capacity or slots: those are the leader's figures.

use super::report::{HostLine, PhaseLabel, RunState, RunStatus, StatusSource};
use crate::cluster::runs::{HostRecord, HostState, RunPhase, RunRecord};

/// The status of `run` from its hosts' `records` (by name) at `now_ms`; `leader` as last
/// read; `mac_of` a host's boot NIC as this fabric's inventory has it (blank when unknown).
pub fn status_of(
    run: &RunRecord,
    records: &[(String, HostRecord)],
    now_ms: u64,
    leader: Option<String>,
    mac_of: impl Fn(&str) -> Option<String>,
) -> RunStatus {
    let at = |ms: u64| ms.saturating_sub(run.started_ms) as f64 / 1000.0;
    let mut status = RunStatus {
        id: run.id,
        state: match run.phase {
            RunPhase::Requested => RunState::Requested,
            RunPhase::Running => RunState::Running,
            RunPhase::Done => RunState::Done,
            RunPhase::Cancelled => RunState::Cancelled,
        },
        started_unix_ms: run.started_ms,
        source: Some(StatusSource::Cluster),
        leader,
        ..RunStatus::default()
    };
    let mut last_ms = run.started_ms;
    for h in &run.hosts {
        let mut line = HostLine {
            name: h.name.clone(),
            mac: mac_of(&h.name).unwrap_or_default(),
            rack: h.rack.clone(),
            phase: PhaseLabel::Waiting,
            ..HostLine::default()
        };
        if let Some((_, r)) = records.iter().find(|(name, _)| name == &h.name) {
            last_ms = last_ms.max(r.at_ms);
            line.attempts = r.attempts;
            line.reason = r.reason.clone();
            match r.state {
                HostState::Resetting => {
                    line.phase = PhaseLabel::Resetting;
                    line.reset_s = Some(at(r.at_ms));
                }
                // The record keeps the intent's time: when the reset was sent.
                HostState::Reset => {
                    line.phase = PhaseLabel::Posting;
                    line.reset_s = Some(at(r.at_ms));
                }
                HostState::Booted => {
                    line.phase = PhaseLabel::Booted;
                    line.booted_s = Some(at(r.at_ms));
                }
                HostState::Failed => {
                    line.phase = PhaseLabel::Failed;
                    line.failed_s = Some(at(r.at_ms));
                }
            }
        }
        *status.phases.entry(line.phase).or_default() += 1;
        status.hosts.push(line);
    }
    // A run over ends at its last record; one going on is as old as it is now.
    status.elapsed_s = if status.finished() {
        at(last_ms)
    } else {
        at(now_ms)
    };
    if status.state == RunState::Done {
        status.makespan_s = Some(status.elapsed_s);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::runs::RunHost;

    fn run(phase: RunPhase) -> RunRecord {
        RunRecord {
            id: 3,
            started_by: "fab-b".into(),
            started_ms: 10_000,
            hosts: ["h0", "h1", "h2", "h3", "h4"]
                .map(|n| RunHost {
                    name: n.into(),
                    rack: "rack-a".into(),
                })
                .to_vec(),
            phase,
        }
    }

    fn rec(state: HostState, at_ms: u64, reason: Option<&str>) -> HostRecord {
        HostRecord {
            state,
            fabric: "fab-a".into(),
            at_ms,
            attempts: 1,
            reason: reason.map(str::to_owned),
        }
    }

    #[test]
    fn each_host_shows_its_last_record_and_the_status_says_where_it_came_from() {
        let records = [
            ("h1".to_owned(), rec(HostState::Resetting, 11_000, None)),
            ("h2".to_owned(), rec(HostState::Reset, 12_000, None)),
            ("h3".to_owned(), rec(HostState::Booted, 40_000, None)),
            (
                "h4".to_owned(),
                rec(HostState::Failed, 50_000, Some("no DHCP")),
            ),
        ];
        let mac = |n: &str| (n == "h0").then(|| "02:00:00:00:00:00".to_owned());
        let s = status_of(
            &run(RunPhase::Running),
            &records,
            70_000,
            Some("fab-a".into()),
            mac,
        );
        assert_eq!((s.id, s.state), (3, RunState::Running));
        assert_eq!(s.source, Some(StatusSource::Cluster));
        assert_eq!(s.leader.as_deref(), Some("fab-a"));
        let phases: Vec<PhaseLabel> = s.hosts.iter().map(|h| h.phase).collect();
        use PhaseLabel::*;
        assert_eq!(phases, [Waiting, Resetting, Posting, Booted, Failed]);
        assert_eq!(s.hosts[0].mac, "02:00:00:00:00:00");
        assert_eq!(s.hosts[1].reset_s, Some(1.0));
        assert_eq!(s.hosts[3].booted_s, Some(30.0));
        assert_eq!(
            (s.hosts[4].failed_s, s.hosts[4].reason.as_deref()),
            (Some(40.0), Some("no DHCP"))
        );
        assert_eq!(
            (s.count(Booted), s.count(Failed), s.count(Waiting)),
            (1, 1, 1)
        );
        assert_eq!(s.elapsed_s, 60.0, "going on: as old as it is now");
        let text = s.report();
        assert!(
            text.contains("run 3 as recorded in etcd (the leader fab-a runs it"),
            "{text}"
        );
        let json = serde_json::to_string(&s).expect("json");
        assert!(
            json.contains(r#""source":"cluster","leader":"fab-a""#),
            "{json}"
        );
        let back: RunStatus = serde_json::from_str(&json).expect("the CLI reads it");
        assert_eq!(back, s);
    }

    #[test]
    fn a_requested_run_waits_and_a_done_one_ends_at_its_last_record() {
        let s = status_of(&run(RunPhase::Requested), &[], 99_000, None, |_| None);
        assert_eq!(s.state, RunState::Requested);
        assert!(!s.finished(), "the CLI follows it");
        assert_eq!(s.count(PhaseLabel::Waiting), 5);
        assert!(s.report().contains("(the leader (none now) runs it"));
        let records = [("h0".to_owned(), rec(HostState::Booted, 25_000, None))];
        let s = status_of(&run(RunPhase::Done), &records, 99_000, None, |_| None);
        assert_eq!(s.state, RunState::Done);
        assert_eq!((s.elapsed_s, s.makespan_s), (15.0, Some(15.0)));
    }
}
