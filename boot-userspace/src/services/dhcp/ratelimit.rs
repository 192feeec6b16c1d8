//! Token buckets: per client, so one noisy or hostile client cannot crowd out the others;
//! per subnet for DECLINEs, so no client can quarantine a whole pool.

use std::collections::HashMap;

use crate::model::inventory::Mac;

/// Most clients tracked at once; beyond it, idle (full) buckets are forgotten first, and a
/// flood of random MACs cannot grow memory without bound.
const MAX_CLIENTS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

/// Token buckets keyed by client (its MAC for DHCPv4, its DUID for DHCPv6): `rate` packets
/// per second, bursts of `2 * rate`.
#[derive(Debug)]
pub struct RateLimiter<K = Mac> {
    rate: f64,
    burst: f64,
    buckets: HashMap<K, Bucket>,
    /// When idle buckets were last swept; sweeps are O(clients), so at most one a second.
    last_sweep_ms: Option<u64>,
}

impl<K: Eq + std::hash::Hash> RateLimiter<K> {
    /// A limiter allowing `rate` packets per second per client.
    pub fn new(rate: u32) -> Self {
        let rate = f64::from(rate.max(1));
        Self {
            rate,
            burst: rate * 2.0,
            buckets: HashMap::new(),
            last_sweep_ms: None,
        }
    }

    /// Whether a packet from `mac` at `now_ms` (milliseconds, monotonic) may pass.
    pub fn allow(&mut self, mac: K, now_ms: u64) -> bool {
        if self.buckets.len() >= MAX_CLIENTS && !self.buckets.contains_key(&mac) {
            if self
                .last_sweep_ms
                .is_none_or(|t| now_ms.saturating_sub(t) >= 1000)
            {
                self.last_sweep_ms = Some(now_ms);
                self.forget_idle(now_ms);
            }
            if self.buckets.len() >= MAX_CLIENTS {
                // Still full of active clients: a flood. New clients wait their turn.
                return false;
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        let b = self.buckets.entry(mac).or_insert(Bucket {
            tokens: burst,
            last_ms: now_ms,
        });
        let elapsed = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
        b.tokens = (b.tokens + elapsed * rate).min(burst);
        b.last_ms = now_ms;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn forget_idle(&mut self, now_ms: u64) {
        let (rate, burst) = (self.rate, self.burst);
        self.buckets.retain(|_, b| {
            let elapsed = now_ms.saturating_sub(b.last_ms) as f64 / 1000.0;
            b.tokens + elapsed * rate < burst
        });
    }

    /// Clients currently tracked.
    pub fn tracked(&self) -> usize {
        self.buckets.len()
    }
}

/// One token bucket per subnet for DECLINEs: each accepted DECLINE quarantines an address
/// for a lease time, so without a bound one client could decline its way through a whole
/// pool (take an offer, decline it, take the next). Pure: the caller supplies the time.
#[derive(Debug)]
pub struct DeclineLimiter {
    /// Tokens per second.
    rate: f64,
    burst: f64,
    /// (tokens, last refill in Unix seconds), by subnet index; grown on first use.
    buckets: Vec<(f64, u64)>,
}

impl DeclineLimiter {
    /// `burst` DECLINEs at once per subnet, refilled at `per_hour`.
    pub fn new(burst: u32, per_hour: u32) -> Self {
        Self {
            rate: f64::from(per_hour) / 3600.0,
            burst: f64::from(burst.max(1)),
            buckets: Vec::new(),
        }
    }

    /// Takes new limits, keeping each subnet's tokens (capped at the new burst).
    pub fn reconfigure(&mut self, burst: u32, per_hour: u32) {
        let fresh = Self::new(burst, per_hour);
        self.rate = fresh.rate;
        self.burst = fresh.burst;
        for b in &mut self.buckets {
            b.0 = b.0.min(fresh.burst);
        }
    }

    /// Whether a DECLINE on `subnet` at Unix second `now` may quarantine an address.
    pub fn allow(&mut self, subnet: usize, now: u64) -> bool {
        if self.buckets.len() <= subnet {
            self.buckets.resize(subnet + 1, (self.burst, now));
        }
        let b = &mut self.buckets[subnet];
        let elapsed = now.saturating_sub(b.1) as f64;
        b.0 = (b.0 + elapsed * self.rate).min(self.burst);
        b.1 = b.1.max(now);
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declines_burst_then_refill_per_subnet() {
        let mut d = DeclineLimiter::new(3, 60);
        assert_eq!((0..10).filter(|_| d.allow(0, 1000)).count(), 3);
        // Subnets are apart.
        assert!(d.allow(1, 1000));
        // One token a minute.
        assert!(!d.allow(0, 1059));
        assert!(d.allow(0, 1060));
        assert!(!d.allow(0, 1060));
        // A clock that steps back does not mint tokens.
        assert!(!d.allow(0, 10));
        assert!(!d.allow(0, 1061));
        d.reconfigure(1, 3600);
        assert!(d.allow(0, 1062));
        assert!(!d.allow(0, 1062));
    }

    #[test]
    fn bursts_then_refills_at_rate() {
        let mut r = RateLimiter::new(5);
        let m = Mac([2, 0, 0, 0, 0, 1]);
        let passed = (0..20).filter(|_| r.allow(m, 1000)).count();
        assert_eq!(passed, 10);
        assert!(!r.allow(m, 1000));
        assert!(r.allow(m, 1200));
        assert!(!r.allow(m, 1200));
        // Another client is unaffected.
        assert!(r.allow(Mac([2, 0, 0, 0, 0, 2]), 1200));
    }

    #[test]
    fn a_random_mac_flood_is_bounded() {
        let mut r = RateLimiter::new(1);
        for i in 0..(MAX_CLIENTS as u32 + 5000) {
            let b = i.to_be_bytes();
            r.allow(Mac([2, 0, b[0], b[1], b[2], b[3]]), 0);
        }
        assert!(r.tracked() <= MAX_CLIENTS);
    }
}
