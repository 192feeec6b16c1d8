//! What a reboot run looks like from outside: the selection the admin API takes, and the
//! status it returns (a plan, a run in progress, or a finished run's report), with the
//! text the CLI prints for each. Serialized as JSON between the daemon and `bootfabric reboot`.

use std::{cmp::Ordering, collections::BTreeMap, fmt, fmt::Write as _};

use serde::{Deserialize, Serialize};

/// Where a run is. Serialized as the lowercase name (`"running"`), as the CLI reads it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunState {
    /// A dry run's plan: no BMC was touched.
    Planned,
    /// Cluster mode: asked through a fabric that does not lead, waiting for the leader to
    /// take it (nothing reset yet).
    Requested,
    /// Resetting and following hosts. (The default only fills a status being built: every
    /// status the service hands out has its state set.)
    #[default]
    Running,
    /// Every host booted or failed.
    Done,
    /// Cancelled by the operator: no further resets.
    Cancelled,
}

impl RunState {
    /// The name in the JSON, the logs and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Planned => "planned",
            Self::Requested => "requested",
            Self::Running => "running",
            Self::Done => "done",
            Self::Cancelled => "cancelled",
        }
    }
}

impl fmt::Display for RunState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A host's phase as reported: a scheduler phase's label, or a plan's verdict. Serialized as
/// the lowercase name (`"booted"`), which is also the `phase` label of
/// `bootfabric_reboot_hosts`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PhaseLabel {
    /// Not reset yet, or waiting for a retry.
    #[default]
    Waiting,
    /// Reset sent to its BMC, not acknowledged yet.
    Resetting,
    /// Reset done, in POST.
    Posting,
    /// Seen on DHCP, waiting at the admission gate.
    Queued,
    /// Admitted: fetching its boot files.
    Downloading,
    /// Fetched its files, starting its OS.
    Starting,
    /// Booted.
    Booted,
    /// Given up on.
    Failed,
    /// In a plan: its download has a predicted end.
    Planned,
    /// In a plan: no predicted end.
    Unplanned,
}

impl PhaseLabel {
    /// The scheduler's phases, in boot order (for metrics that show each phase, empty or
    /// not).
    pub const SCHEDULER: [Self; 8] = [
        Self::Waiting,
        Self::Resetting,
        Self::Posting,
        Self::Queued,
        Self::Downloading,
        Self::Starting,
        Self::Booted,
        Self::Failed,
    ];

    /// The name in the JSON, the metric label and the report.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Waiting => "waiting",
            Self::Resetting => "resetting",
            Self::Posting => "posting",
            Self::Queued => "queued",
            Self::Downloading => "downloading",
            Self::Starting => "starting",
            Self::Booted => "booted",
            Self::Failed => "failed",
            Self::Planned => "planned",
            Self::Unplanned => "unplanned",
        }
    }
}

impl fmt::Display for PhaseLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// Ordered by name, so that `RunStatus::phases` keeps the alphabetical key order its JSON had
// when the keys were strings.
impl Ord for PhaseLabel {
    fn cmp(&self, other: &Self) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

impl PartialOrd for PhaseLabel {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Which hosts to reboot. Names or `all` choose the base set (every host with a BMC when
/// neither is given but a filter is); racks, models and profiles narrow it (any of the values
/// of one kind, all kinds given).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Selection {
    /// Host names.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Every host with a BMC.
    #[serde(default)]
    pub all: bool,
    /// Racks (or power domains).
    #[serde(default)]
    pub racks: Vec<String>,
    /// Hardware models.
    #[serde(default)]
    pub models: Vec<String>,
    /// Boot profiles.
    #[serde(default)]
    pub profiles: Vec<String>,
    /// Plan only: touch no BMC.
    #[serde(default)]
    pub dry_run: bool,
}

/// One host in a plan or run. Times are seconds since the run started (predicted in a plan).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct HostLine {
    /// Host name.
    pub name: String,
    /// Boot NIC.
    pub mac: String,
    /// Rack.
    pub rack: String,
    /// Hardware model.
    pub model: String,
    /// Bytes its profile fetches.
    pub demand_bytes: u64,
    /// Its phase.
    pub phase: PhaseLabel,
    /// Why it failed.
    pub reason: Option<String>,
    /// Reset attempts made.
    pub attempts: u32,
    /// Reset sent.
    pub reset_s: Option<f64>,
    /// The BMC accepted the reset.
    pub reset_done_s: Option<f64>,
    /// First DHCP offer after the reset.
    pub dhcp_s: Option<f64>,
    /// First bootloader file sent (iPXE by TFTP or HTTP boot), when there was one.
    #[serde(default)]
    pub loader_s: Option<f64>,
    /// Let through the admission gate.
    pub admitted_s: Option<f64>,
    /// Kernel sent.
    #[serde(default)]
    pub kernel_s: Option<f64>,
    /// Every file of its profile sent.
    pub fetched_s: Option<f64>,
    /// Reported booted.
    pub booted_s: Option<f64>,
    /// Given up on.
    pub failed_s: Option<f64>,
}

/// A plan, a run in progress or a finished run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStatus {
    /// Run number (0 for a plan).
    pub id: u64,
    /// Planned, running, done or cancelled.
    pub state: RunState,
    /// Unix milliseconds when it started.
    pub started_unix_ms: u64,
    /// Seconds since it started (or the plan's predicted end).
    pub elapsed_s: f64,
    /// Capacity planned with now, bytes per second.
    pub capacity_bps: f64,
    /// The configured cap, bytes per second.
    pub capacity_cap_bps: f64,
    /// What one host takes, bytes per second.
    pub per_host_bps: f64,
    /// Download slots.
    pub slots: usize,
    /// Total bytes / capacity + the shortest boot: no schedule can be faster.
    pub lower_bound_s: f64,
    /// Seconds from the first reset to the last host booted or failed, once done (predicted
    /// end of the last download in a plan).
    pub makespan_s: Option<f64>,
    /// Hosts per phase.
    pub phases: BTreeMap<PhaseLabel, usize>,
    /// BMC operations in flight.
    pub bmc_operations_in_flight: usize,
    /// Every host.
    pub hosts: Vec<HostLine>,
    /// Selected hosts the run leaves alone, with why: a host whose boot answer is not a
    /// network boot (`netboot = deny`, or `once` already used) would boot from its disk, so
    /// it is not reset, not enrolled at the gate and not waited for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<SkippedHost>,
    /// Where this status was read: absent from the fabric that runs the run; `cluster` when
    /// a fabric that does not run it read the run's records in etcd (coarser: only what the
    /// records hold, see `services::reboot::remote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<StatusSource>,
    /// With `source`: the fabric that leads the cluster (and so runs the run), as the fabric
    /// that answers last read it; `null` when it knows none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
}

/// Where a status was read, when not from the run's own runner.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusSource {
    /// The run's records in etcd, read by a fabric that does not run it.
    Cluster,
}

/// A selected host a run does not reboot.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedHost {
    /// Its name.
    pub name: String,
    /// Why (`netboot = deny: not rebooted`).
    pub reason: String,
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"))
}

fn mbit(bps: f64) -> String {
    format!("{:.0} Mbit/s", bps * 8.0 / 1e6)
}

impl RunStatus {
    /// Hosts in `phase`.
    pub fn count(&self, phase: PhaseLabel) -> usize {
        self.phases.get(&phase).copied().unwrap_or(0)
    }

    /// Whether the run is over.
    pub fn finished(&self) -> bool {
        matches!(
            self.state,
            RunState::Done | RunState::Cancelled | RunState::Planned
        )
    }

    /// One line of progress: a bar of booted (`#`) and failed (`x`) hosts and the counts.
    pub fn progress_line(&self, width: usize) -> String {
        let n = self.hosts.len().max(1);
        let booted = self.count(PhaseLabel::Booted);
        let failed = self.count(PhaseLabel::Failed);
        let b = booted * width / n;
        let f = (failed * width / n).min(width - b);
        format!(
            "[{}{}{}] {booted}/{} booted, {failed} failed | resetting {} posting {} queued {} downloading {} starting {} | {} | {:.0} s",
            "#".repeat(b),
            "x".repeat(f),
            "-".repeat(width - b - f),
            self.hosts.len(),
            self.count(PhaseLabel::Resetting),
            self.count(PhaseLabel::Posting),
            self.count(PhaseLabel::Queued),
            self.count(PhaseLabel::Downloading),
            self.count(PhaseLabel::Starting),
            mbit(self.capacity_bps),
            self.elapsed_s,
        )
    }

    /// The report: summary, per-host timeline and failures with their reason.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let title = match self.state {
            RunState::Planned => "Reboot plan (dry run: no BMC was touched)",
            RunState::Requested => "Reboot run requested (waiting for the cluster's leader)",
            RunState::Done => "Reboot report",
            RunState::Cancelled => "Reboot report (cancelled)",
            RunState::Running => "Reboot in progress",
        };
        let _ = writeln!(out, "{title}");
        if self.source == Some(StatusSource::Cluster) {
            let _ = writeln!(
                out,
                "  run {} as recorded in etcd (the leader {} runs it; ask it for the full report)",
                self.id,
                self.leader.as_deref().unwrap_or("(none now)")
            );
        }
        let _ = writeln!(
            out,
            "  hosts {}, slots {} ({} capacity{} / {} per host)",
            self.hosts.len(),
            self.slots,
            mbit(self.capacity_bps),
            if (self.capacity_bps - self.capacity_cap_bps).abs() > 1.0 {
                format!(", cap {}", mbit(self.capacity_cap_bps))
            } else {
                String::new()
            },
            mbit(self.per_host_bps),
        );
        let bound = self.lower_bound_s;
        match self.makespan_s {
            Some(m) if self.state == RunState::Planned => {
                let _ = writeln!(
                    out,
                    "  predicted: last download ends at {m:.1} s; lower bound {bound:.1} s"
                );
            }
            Some(m) => {
                let _ = writeln!(
                    out,
                    "  makespan {m:.1} s; lower bound at the planned capacity {bound:.1} s ({:.2}x){}",
                    if bound > 0.0 { m / bound } else { 0.0 },
                    if m < bound {
                        ": the link carried more than planned, raise scheduler.capacity_mbps"
                    } else {
                        ""
                    }
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  elapsed {:.1} s; lower bound {bound:.1} s",
                    self.elapsed_s
                );
            }
        }
        let _ = writeln!(
            out,
            "  booted {}, failed {}, other {}",
            self.count(PhaseLabel::Booted),
            self.count(PhaseLabel::Failed),
            self.hosts.len() - self.count(PhaseLabel::Booted) - self.count(PhaseLabel::Failed)
        );
        let _ = writeln!(
            out,
            "\n  {:<20} {:<12} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>8} {:>7}  PHASE",
            "HOST",
            "RACK",
            "RESET",
            "ACCEPT",
            "DHCP",
            "LOADER",
            "ADMITTED",
            "KERNEL",
            "FETCHED",
            "BOOTED"
        );
        for h in &self.hosts {
            let _ = writeln!(
                out,
                "  {:<20} {:<12} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7} {:>8} {:>7}  {}",
                h.name,
                h.rack,
                secs(h.reset_s),
                secs(h.reset_done_s),
                secs(h.dhcp_s),
                secs(h.loader_s),
                secs(h.admitted_s),
                secs(h.kernel_s),
                secs(h.fetched_s),
                secs(h.booted_s),
                h.phase
            );
        }
        let failed: Vec<&HostLine> = self.hosts.iter().filter(|h| h.reason.is_some()).collect();
        if !failed.is_empty() {
            let _ = writeln!(out, "\n  Failures:");
            for h in failed {
                let _ = writeln!(
                    out,
                    "  {:<20} after {} attempt(s) at {} s: {}",
                    h.name,
                    h.attempts,
                    secs(h.failed_s),
                    h.reason.as_deref().unwrap_or("")
                );
            }
        }
        if !self.skipped.is_empty() {
            let _ = writeln!(out, "\n  Not rebooted:");
            for h in &self.skipped {
                let _ = writeln!(out, "  {:<20} {}", h.name, h.reason);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_report_show_counts_and_failures() {
        let mut s = RunStatus {
            state: RunState::Done,
            capacity_bps: 125e6,
            capacity_cap_bps: 125e6,
            per_host_bps: 12.5e6,
            slots: 10,
            lower_bound_s: 10.0,
            makespan_s: Some(12.0),
            ..RunStatus::default()
        };
        s.phases.insert(PhaseLabel::Booted, 1);
        s.phases.insert(PhaseLabel::Failed, 1);
        s.hosts = vec![
            HostLine {
                name: "a".into(),
                phase: PhaseLabel::Booted,
                booted_s: Some(11.5),
                ..HostLine::default()
            },
            HostLine {
                name: "b".into(),
                phase: PhaseLabel::Failed,
                attempts: 3,
                reason: Some("reset failed 3 times: no answer within 1s".into()),
                ..HostLine::default()
            },
        ];
        assert!(s
            .progress_line(10)
            .starts_with("[#####xxxxx] 1/2 booted, 1 failed"));
        let r = s.report();
        assert!(
            r.contains("makespan 12.0 s; lower bound at the planned capacity 10.0 s (1.20x)\n"),
            "{r}"
        );
        s.makespan_s = Some(8.0);
        assert!(s
            .report()
            .contains("(0.80x): the link carried more than planned"));
        assert!(r.contains("b                    after 3 attempt(s)"), "{r}");
        assert!(r.contains("11.5"), "{r}");
    }

    #[test]
    fn the_json_is_what_it_was_with_strings() {
        // The admin API's answer and the CLI's input: the byte-for-byte shape it had when the
        // state, the phases and their counts were strings.
        let mut s = RunStatus {
            id: 7,
            state: RunState::Cancelled,
            started_unix_ms: 1,
            slots: 2,
            ..RunStatus::default()
        };
        for (p, n) in [
            (PhaseLabel::Waiting, 1),
            (PhaseLabel::Booted, 2),
            (PhaseLabel::Unplanned, 3),
            (PhaseLabel::Failed, 4),
            (PhaseLabel::Starting, 5),
            (PhaseLabel::Downloading, 6),
        ] {
            s.phases.insert(p, n);
        }
        s.hosts = vec![HostLine {
            name: "a".into(),
            phase: PhaseLabel::Queued,
            ..HostLine::default()
        }];
        let json = serde_json::to_string(&s).expect("json");
        assert_eq!(
            json,
            "{\"id\":7,\"state\":\"cancelled\",\"started_unix_ms\":1,\"elapsed_s\":0.0,\
             \"capacity_bps\":0.0,\"capacity_cap_bps\":0.0,\"per_host_bps\":0.0,\"slots\":2,\
             \"lower_bound_s\":0.0,\"makespan_s\":null,\"phases\":{\"booted\":2,\
             \"downloading\":6,\"failed\":4,\"starting\":5,\"unplanned\":3,\"waiting\":1},\
             \"bmc_operations_in_flight\":0,\"hosts\":[{\"name\":\"a\",\"mac\":\"\",\
             \"rack\":\"\",\"model\":\"\",\"demand_bytes\":0,\"phase\":\"queued\",\
             \"reason\":null,\"attempts\":0,\"reset_s\":null,\"reset_done_s\":null,\
             \"dhcp_s\":null,\"loader_s\":null,\"admitted_s\":null,\"kernel_s\":null,\
             \"fetched_s\":null,\"booted_s\":null,\"failed_s\":null}]}"
        );
        let back: RunStatus = serde_json::from_str(&json).expect("the CLI reads it back");
        assert_eq!(back, s);
        for state in [
            RunState::Planned,
            RunState::Running,
            RunState::Done,
            RunState::Cancelled,
        ] {
            let text = serde_json::to_string(&state).expect("json");
            assert_eq!(text, format!("\"{state}\""));
        }
        for p in PhaseLabel::SCHEDULER
            .into_iter()
            .chain([PhaseLabel::Planned, PhaseLabel::Unplanned])
        {
            let text = serde_json::to_string(&p).expect("json");
            assert_eq!(text, format!("\"{p}\""));
        }
    }
}
