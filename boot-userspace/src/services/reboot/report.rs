//! What a reboot run looks like from outside: the selection the admin API takes, and the
//! status it returns (a plan, a run in progress, or a finished run's report), with the
//! text the CLI prints for each. Serialized as JSON between the daemon and `bootfabric reboot`.

use std::{collections::BTreeMap, fmt::Write as _};

use serde::{Deserialize, Serialize};

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
    /// Its phase (a scheduler phase label).
    pub phase: String,
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
    /// `planned`, `running`, `done` or `cancelled`.
    pub state: String,
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
    pub phases: BTreeMap<String, usize>,
    /// BMC operations in flight.
    pub bmc_operations_in_flight: usize,
    /// Every host.
    pub hosts: Vec<HostLine>,
}

fn secs(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{s:.1}"))
}

fn mbit(bps: f64) -> String {
    format!("{:.0} Mbit/s", bps * 8.0 / 1e6)
}

impl RunStatus {
    /// Hosts in `phase`.
    pub fn count(&self, phase: &str) -> usize {
        self.phases.get(phase).copied().unwrap_or(0)
    }

    /// Whether the run is over.
    pub fn finished(&self) -> bool {
        matches!(self.state.as_str(), "done" | "cancelled" | "planned")
    }

    /// One line of progress: a bar of booted (`#`) and failed (`x`) hosts and the counts.
    pub fn progress_line(&self, width: usize) -> String {
        let n = self.hosts.len().max(1);
        let booted = self.count("booted");
        let failed = self.count("failed");
        let b = booted * width / n;
        let f = (failed * width / n).min(width - b);
        format!(
            "[{}{}{}] {booted}/{} booted, {failed} failed | resetting {} posting {} queued {} downloading {} starting {} | {} | {:.0} s",
            "#".repeat(b),
            "x".repeat(f),
            "-".repeat(width - b - f),
            self.hosts.len(),
            self.count("resetting"),
            self.count("posting"),
            self.count("queued"),
            self.count("downloading"),
            self.count("starting"),
            mbit(self.capacity_bps),
            self.elapsed_s,
        )
    }

    /// The report: summary, per-host timeline and failures with their reason.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let title = match self.state.as_str() {
            "planned" => "Reboot plan (dry run: no BMC was touched)",
            "done" => "Reboot report",
            "cancelled" => "Reboot report (cancelled)",
            _ => "Reboot in progress",
        };
        let _ = writeln!(out, "{title}");
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
            Some(m) if self.state == "planned" => {
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
            self.count("booted"),
            self.count("failed"),
            self.hosts.len() - self.count("booted") - self.count("failed")
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
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_report_show_counts_and_failures() {
        let mut s = RunStatus {
            state: "done".into(),
            capacity_bps: 125e6,
            capacity_cap_bps: 125e6,
            per_host_bps: 12.5e6,
            slots: 10,
            lower_bound_s: 10.0,
            makespan_s: Some(12.0),
            ..RunStatus::default()
        };
        s.phases.insert("booted".into(), 1);
        s.phases.insert("failed".into(), 1);
        s.hosts = vec![
            HostLine {
                name: "a".into(),
                phase: "booted".into(),
                booted_s: Some(11.5),
                ..HostLine::default()
            },
            HostLine {
                name: "b".into(),
                phase: "failed".into(),
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
}
