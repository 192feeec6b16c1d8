//! Who may start a transfer: caps on transfers in flight (in all, and per client address) and
//! on new requests per second (in all, and per client address). Pure: the socket loop passes
//! the clock in and sends what the verdict says; no sockets and no clock here.
//!
//! A read request costs the server a transfer port, an open file and a task until the
//! transfer ends, while it costs the client one datagram: without these caps, one machine
//! holds every transfer port with a burst of requests it never acknowledges.
//!
//! Memory stays bounded whatever the sources are (spoofed addresses included): the per-client
//! rate buckets are a fixed table indexed by a keyed hash of the address (two clients may
//! share a bucket, which only makes both stricter), and per-client counts exist only for
//! clients with a transfer in flight, so there are at most `max_transfers` of them.

use std::{
    collections::{hash_map::RandomState, HashMap},
    hash::BuildHasher,
    net::IpAddr,
    time::Instant,
};

/// Rate buckets shared by all clients (a power of two).
const CLIENT_BUCKETS: usize = 4096;

/// The caps, from `tftp.*` in the config.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Transfers in flight, all clients together.
    pub max_transfers: u32,
    /// Transfers in flight from one client address.
    pub max_transfers_per_client: u32,
    /// New requests per second, all clients together (also the burst).
    pub requests_per_second: u32,
    /// New requests per second from one client address (also the burst).
    pub requests_per_second_per_client: u32,
}

/// Why a request is not admitted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Over the global request rate: dropped without an answer.
    #[error("request rate exceeded")]
    Rate,
    /// Over the client's request rate: dropped without an answer.
    #[error("request rate exceeded for this client")]
    ClientRate,
    /// Every transfer slot is taken: refused with an ERROR.
    #[error("server busy, try again")]
    Busy,
    /// The client already has its share of transfers in flight: refused with an ERROR.
    #[error("too many transfers from this client, try again")]
    ClientBusy,
}

impl Refusal {
    /// The label of `bootfabric_tftp_refused_total`.
    pub fn reason(self) -> &'static str {
        match self {
            Self::Rate => "rate",
            Self::ClientRate => "client_rate",
            Self::Busy => "busy",
            Self::ClientBusy => "client_busy",
        }
    }

    /// Whether the client gets an ERROR. Over-rate requests get nothing: an answer to each
    /// would make the server a reflector for spoofed floods.
    pub fn answered(self) -> bool {
        matches!(self, Self::Busy | Self::ClientBusy)
    }
}

/// A token bucket: `rate` tokens a second, at most `rate` saved up.
#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Option<Instant>,
}

impl Bucket {
    const FULL: Bucket = Bucket {
        tokens: f64::INFINITY,
        at: None,
    };

    /// Refills for the time since the last call, then takes a token if there is one.
    fn take(&mut self, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate);
        let elapsed = self
            .at
            .map(|t| now.saturating_duration_since(t).as_secs_f64())
            .unwrap_or(f64::INFINITY);
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.at = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The admission state of one TFTP service.
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    in_flight: u32,
    per_client: HashMap<IpAddr, u32>,
    global: Bucket,
    clients: Vec<Bucket>,
    /// Keys the bucket index, so an attacker cannot pick addresses that share a victim's.
    hasher: RandomState,
}

impl Admission {
    /// Nothing in flight, every bucket full.
    pub fn new(limits: AdmissionLimits) -> Self {
        Self {
            limits,
            in_flight: 0,
            per_client: HashMap::new(),
            global: Bucket::FULL,
            clients: vec![Bucket::FULL; CLIENT_BUCKETS],
            hasher: RandomState::new(),
        }
    }

    /// Decides on a new request from `client` at `now`; when admitted, the transfer counts
    /// until [`Admission::release`] is called for it.
    pub fn admit(&mut self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        // The client's own bucket first: one client over its rate must not use up the
        // global tokens that other clients need.
        let i = (self.hasher.hash_one(client) as usize) & (CLIENT_BUCKETS - 1);
        if !self.clients[i].take(self.limits.requests_per_second_per_client, now) {
            return Err(Refusal::ClientRate);
        }
        if !self.global.take(self.limits.requests_per_second, now) {
            return Err(Refusal::Rate);
        }
        if self.in_flight >= self.limits.max_transfers {
            return Err(Refusal::Busy);
        }
        let mine = self.per_client.entry(client).or_insert(0);
        if *mine >= self.limits.max_transfers_per_client {
            return Err(Refusal::ClientBusy);
        }
        *mine += 1;
        self.in_flight += 1;
        Ok(())
    }

    /// A transfer admitted for `client` ended.
    pub fn release(&mut self, client: IpAddr) {
        if let Some(n) = self.per_client.get_mut(&client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_client.remove(&client);
            }
            self.in_flight = self.in_flight.saturating_sub(1);
        }
    }

    /// Transfers in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Clients with a transfer in flight.
    pub fn clients(&self) -> usize {
        self.per_client.len()
    }
}

/// One memory budget for all netascii conversions together (they are the only transfers
/// that hold a file's bytes in memory). A conversion reserves its worst case up front (every
/// byte a line end: twice the file) and gives back what it did not use.
#[derive(Debug)]
pub struct Budget {
    limit: u64,
    used: std::sync::atomic::AtomicU64,
}

/// Bytes held from a [`Budget`]; given back on drop.
#[derive(Debug)]
pub struct Grant {
    budget: std::sync::Arc<Budget>,
    bytes: u64,
}

impl Budget {
    /// A budget of `limit` bytes, none used.
    pub fn new(limit: u64) -> std::sync::Arc<Self> {
        std::sync::Arc::new(Self {
            limit,
            used: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Reserves `bytes`, or `None` when they do not fit beside what is held.
    pub fn reserve(self: &std::sync::Arc<Self>, bytes: u64) -> Option<Grant> {
        use std::sync::atomic::Ordering;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                used.checked_add(bytes).filter(|&total| total <= self.limit)
            })
            .ok()?;
        Some(Grant {
            budget: std::sync::Arc::clone(self),
            bytes,
        })
    }

    /// Bytes held now.
    pub fn used(&self) -> u64 {
        self.used.load(std::sync::atomic::Ordering::Acquire)
    }
}

impl Grant {
    /// Gives back all but `bytes` (never grows the grant).
    pub fn shrink_to(&mut self, bytes: u64) {
        if bytes < self.bytes {
            self.budget
                .used
                .fetch_sub(self.bytes - bytes, std::sync::atomic::Ordering::AcqRel);
            self.bytes = bytes;
        }
    }
}

impl Drop for Grant {
    fn drop(&mut self) {
        self.budget
            .used
            .fetch_sub(self.bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const LIMITS: AdmissionLimits = AdmissionLimits {
        max_transfers: 10,
        max_transfers_per_client: 3,
        requests_per_second: 1000,
        requests_per_second_per_client: 1000,
    };

    fn ip(n: u32) -> IpAddr {
        std::net::Ipv4Addr::from(0x0a00_0000 + n).into()
    }

    #[test]
    fn one_client_gets_its_share_and_no_more() {
        let mut a = Admission::new(LIMITS);
        let now = Instant::now();
        for _ in 0..3 {
            assert_eq!(a.admit(ip(1), now), Ok(()));
        }
        assert_eq!(a.admit(ip(1), now), Err(Refusal::ClientBusy));
        // Another client is not affected.
        assert_eq!(a.admit(ip(2), now), Ok(()));
        a.release(ip(1));
        assert_eq!(a.admit(ip(1), now), Ok(()));
    }

    #[test]
    fn the_global_cap_holds_across_clients() {
        let mut a = Admission::new(LIMITS);
        let now = Instant::now();
        for n in 0..10 {
            assert_eq!(a.admit(ip(n), now), Ok(()), "client {n}");
        }
        assert_eq!(a.admit(ip(99), now), Err(Refusal::Busy));
        assert_eq!(a.in_flight(), 10);
        for n in 0..10 {
            a.release(ip(n));
        }
        assert_eq!((a.in_flight(), a.clients()), (0, 0), "nothing left behind");
        // A release for a client with nothing in flight changes nothing.
        a.release(ip(5));
        assert_eq!(a.in_flight(), 0);
    }

    #[test]
    fn rates_refill_with_time() {
        let mut a = Admission::new(AdmissionLimits {
            max_transfers: 1000,
            max_transfers_per_client: 1000,
            requests_per_second: 100,
            requests_per_second_per_client: 5,
        });
        let t0 = Instant::now();
        for _ in 0..5 {
            assert_eq!(a.admit(ip(1), t0), Ok(()));
        }
        assert_eq!(a.admit(ip(1), t0), Err(Refusal::ClientRate));
        // A fifth of a second later, one more token.
        let t1 = t0 + Duration::from_millis(200);
        assert_eq!(a.admit(ip(1), t1), Ok(()));
        assert_eq!(a.admit(ip(1), t1), Err(Refusal::ClientRate));
        // The global rate: 100 a second over many clients.
        let mut a = Admission::new(AdmissionLimits {
            requests_per_second: 100,
            ..LIMITS
        });
        let admitted = (0..300)
            .filter(|&n| match a.admit(ip(n), t0) {
                Ok(()) => {
                    a.release(ip(n));
                    true
                }
                Err(r) => {
                    assert_eq!(r, Refusal::Rate);
                    false
                }
            })
            .count();
        assert_eq!(admitted, 100, "the global bucket held 100 tokens");
        assert_eq!(a.admit(ip(500), t0 + Duration::from_secs(1)), Ok(()));
    }

    #[test]
    fn the_budget_holds_what_is_granted_and_no_more() {
        let b = Budget::new(100);
        let mut g1 = b.reserve(60).expect("fits");
        assert!(b.reserve(41).is_none(), "over the limit");
        g1.shrink_to(20);
        g1.shrink_to(50);
        assert_eq!(b.used(), 20, "shrinking never grows");
        let g2 = b.reserve(80).expect("fits after the shrink");
        assert!(b.reserve(1).is_none());
        drop(g1);
        drop(g2);
        assert_eq!(b.used(), 0);
        assert!(b.reserve(u64::MAX).is_none(), "no overflow");
    }

    #[test]
    fn only_slot_refusals_are_answered() {
        assert!(Refusal::Busy.answered() && Refusal::ClientBusy.answered());
        assert!(!Refusal::Rate.answered() && !Refusal::ClientRate.answered());
    }
}
