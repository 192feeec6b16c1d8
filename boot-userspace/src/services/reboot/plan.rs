//! The dry run: the scheduler run against its own predictions (every reset accepted at once,
//! every host at DHCP after its model's planned POST, every download at one host's rate), so
//! the plan is exactly what the live run would do if the fleet behaved as planned.

use super::{Action, Event, HostSpec, Params, PostSeen, Scheduler};

/// Predicted times of one host, seconds from the start.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Predicted {
    /// Reset sent.
    pub reset_s: Option<f64>,
    /// At DHCP.
    pub dhcp_s: Option<f64>,
    /// Through the admission gate.
    pub admitted_s: Option<f64>,
    /// Last byte of its files sent.
    pub fetched_s: Option<f64>,
}

/// Simulated steps at most: the step grows with the fleet's lower bound to stay within this.
const STEPS: f64 = 20_000.0;

/// Total bytes over capacity plus the shortest POST (no byte flows before the first host is
/// at DHCP): no schedule finishes its downloads sooner.
pub fn lower_bound(params: &Params, hosts: &[HostSpec], post_of: impl Fn(&str) -> f64) -> f64 {
    let bytes: u64 = hosts.iter().map(|h| h.demand_bytes).sum();
    let shortest = hosts
        .iter()
        .map(|h| post_of(&h.model))
        .fold(f64::INFINITY, f64::min);
    if hosts.is_empty() {
        return 0.0;
    }
    bytes as f64 / params.capacity_bps + shortest
}

/// Plans the reboot of `hosts`: each host's predicted times and the end of the last download.
pub fn plan(params: Params, hosts: Vec<HostSpec>, seen: PostSeen) -> (Vec<Predicted>, f64) {
    let mut s = Scheduler::new(params, hosts).with_post_seen(seen);
    let n = s.hosts().len();
    let bound = lower_bound(s.params(), s.hosts(), |m| s.post_estimate(m));
    let step = (bound / STEPS).max(1.0);
    // A schedule slower than 100 lower bounds is not a plan worth printing.
    let horizon = (bound * 100.0).max(3600.0);
    let mut out = vec![Predicted::default(); n];
    let mut due: Vec<(f64, usize, Event)> = Vec::new();
    let mut t = 0.0;
    while !s.done() && t <= horizon {
        due.sort_by(|a, b| b.0.total_cmp(&a.0));
        while due.last().is_some_and(|d| d.0 <= t) {
            let Some((at, h, ev)) = due.pop() else { break };
            match ev {
                Event::DhcpSeen => out[h].dhcp_s = Some(at),
                Event::Fetched => out[h].fetched_s = Some(at),
                _ => {}
            }
            let fetched = ev == Event::Fetched;
            s.on_event(at, h, ev);
            if fetched {
                // Booting after the download holds no slot: the plan ends at the last byte.
                s.on_event(at, h, Event::Booted);
            }
        }
        for Action::Reset(h) in s.next_actions(t) {
            out[h].reset_s = Some(t);
            s.on_event(t, h, Event::ResetDone);
            let post = s.post_estimate(&s.hosts()[h].model);
            due.push((t + post, h, Event::DhcpSeen));
        }
        for h in s.admit(t) {
            out[h].admitted_s = Some(t);
            due.push((t + s.download_time(h), h, Event::Fetched));
        }
        t += step;
    }
    let end = out.iter().filter_map(|p| p.fetched_s).fold(0.0, f64::max);
    (out, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_keeps_slots_busy_and_ends_near_the_bound() {
        let params = Params {
            post_guess_s: 60.0,
            ..crate::services::reboot::tests::params()
        };
        let hosts: Vec<HostSpec> = (0..12)
            .map(|i| HostSpec {
                name: format!("h{i}"),
                model: "m".into(),
                rack: "r".into(),
                demand_bytes: 2500,
            })
            .collect();
        let bound = lower_bound(&params, &hosts, |_| 60.0);
        assert_eq!(bound, 12.0 * 2500.0 / 1000.0 + 60.0);
        let (p, end) = plan(params, hosts, PostSeen::new());
        // Four slots, three waves of ten seconds after the first POST.
        assert_eq!(p.iter().filter(|h| h.reset_s == Some(0.0)).count(), 4);
        assert!(p.iter().all(|h| h.fetched_s.is_some()));
        assert!((90.0..=92.0).contains(&end), "{end}");
        for h in &p {
            let (Some(r), Some(d), Some(a), Some(f)) =
                (h.reset_s, h.dhcp_s, h.admitted_s, h.fetched_s)
            else {
                panic!("incomplete prediction {h:?}");
            };
            assert!(r < d && d <= a && a < f, "{h:?}");
        }
    }
}
