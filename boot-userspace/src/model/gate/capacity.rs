//! The capacity a live run plans with: the configured cap until the fabric has seen itself
//! busy, then what it measures on itself. Pure: the runner feeds it the ledger's egress rate.
//!
//! Only a saturated fabric (every download slot taken for a whole measuring window) says
//! anything about capacity; an idle one only says that nobody asked. When a saturated fabric
//! sends clearly less than planned, the link (or the disk) is slower than the cap: the
//! estimate drops to what was measured. When it sends what was planned, the estimate grows by
//! one host's share to probe for more, up to the cap. After each judgement the next waits for
//! a fresh window, so that hosts admitted on the new estimate are what is measured.

use crate::model::ledger::EGRESS_WINDOW_S;

/// Below this fraction of the estimate, a saturated fabric is judged slower than planned
/// (loose, since freshly admitted downloads are still ramping up).
const SHORTFALL: f64 = 0.75;

/// The capacity estimate.
#[derive(Clone, Debug, PartialEq)]
pub struct Capacity {
    cap: f64,
    step: f64,
    estimate: f64,
    busy_since: Option<f64>,
}

impl Capacity {
    /// Starts at `cap` bytes per second; `per_host` is the smallest estimate and the probing
    /// step.
    pub fn new(cap: f64, per_host: f64) -> Self {
        Self {
            cap,
            step: per_host.min(cap),
            estimate: cap,
            busy_since: None,
        }
    }

    /// The current estimate, bytes per second.
    pub fn estimate(&self) -> f64 {
        self.estimate
    }

    /// Takes one measurement at `now` (seconds): `measured` is the fabric's egress over the
    /// ledger's window, `busy` whether every download slot is taken. Returns the estimate.
    pub fn observe(&mut self, now: f64, measured: f64, busy: bool) -> f64 {
        if !busy {
            self.busy_since = None;
            return self.estimate;
        }
        let since = *self.busy_since.get_or_insert(now);
        // The window must hold busy seconds only, and the second in progress is not counted.
        if now - since < EGRESS_WINDOW_S as f64 + 1.0 {
            return self.estimate;
        }
        self.estimate = if measured < SHORTFALL * self.estimate {
            measured.max(self.step)
        } else {
            (self.estimate + self.step).min(self.cap)
        };
        self.busy_since = Some(now);
        self.estimate
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_fabric_keeps_the_cap() {
        let mut c = Capacity::new(1000.0, 100.0);
        for t in 0..100 {
            assert_eq!(c.observe(f64::from(t), 5.0, false), 1000.0);
        }
    }

    #[test]
    fn a_slower_link_lowers_the_estimate_and_a_recovered_one_raises_it_to_the_cap() {
        let mut c = Capacity::new(1000.0, 100.0);
        // Busy, but the link gives 400: judged once a whole window has passed.
        assert_eq!(c.observe(0.0, 400.0, true), 1000.0);
        assert_eq!(c.observe(5.0, 400.0, true), 1000.0);
        assert_eq!(c.observe(6.0, 400.0, true), 400.0);
        // The link keeps giving 400 = the estimate: probe one host's share up at a time.
        assert_eq!(c.observe(9.0, 400.0, true), 400.0, "a fresh window first");
        assert_eq!(c.observe(12.0, 400.0, true), 500.0);
        // 500 planned, 400 delivered is within the ramp-up allowance: keep probing...
        assert_eq!(c.observe(18.0, 400.0, true), 600.0);
        // ...until the shortfall is clear.
        assert_eq!(c.observe(24.0, 400.0, true), 400.0);
        // The link recovers: back up to the cap, never above.
        let mut t = 30.0;
        while t < 200.0 {
            c.observe(t, 2000.0, true);
            t += 6.0;
        }
        assert_eq!(c.estimate(), 1000.0);
    }

    #[test]
    fn never_below_one_host() {
        let mut c = Capacity::new(1000.0, 100.0);
        c.observe(0.0, 0.0, true);
        assert_eq!(c.observe(6.0, 0.0, true), 100.0);
    }
}
