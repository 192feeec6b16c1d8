//! The in-memory lease table: who holds which address, what is on offer, what is free.
//!
//! The journal is the durable truth; this table is rebuilt from it at start and updated in
//! step with every record committed. Free dynamic addresses sit in one ordered set per
//! subnet, so an allocation is O(log n) however large the pool and the fleet.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::Ipv4Addr,
};

use crate::config::{AddrRange, SubnetConfig};
use crate::model::inventory::{Inventory, Mac};
use crate::services::dhcp::journal::{LeaseRecord, LeaseState};

/// How long an offered address is held for the client that was offered it.
pub const OFFER_HOLD_SECS: u64 = 60;

/// A binding or a quarantine of one address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease {
    /// Holder.
    pub mac: Mac,
    /// Bound, or Declined (quarantined).
    pub state: LeaseState,
    /// Unix seconds.
    pub expires: u64,
    /// Host name the client gave or was given.
    pub hostname: Option<String>,
}

/// Whether a reserved address can go to its owner now (see [`LeaseTable::reservation_state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReservationState {
    /// Nobody else holds, is offered or quarantines it: the owner may have it.
    Free,
    /// Another client holds it (a live binding or offer), or its DECLINE quarantines it,
    /// until `until` (Unix seconds): the owner waits.
    HeldBy {
        /// The holder (for a quarantine, the client that declined it).
        mac: Mac,
        /// How it is held.
        how: Blocker,
        /// When the hold ends at the latest.
        until: u64,
    },
}

/// How a reserved address is held by someone other than its owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blocker {
    /// A live binding.
    Leased,
    /// A live offer.
    Offered,
    /// A DECLINE quarantine.
    Declined,
}

impl Blocker {
    /// How `explain` and the log say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Blocker::Leased => "leased to",
            Blocker::Offered => "offered to",
            Blocker::Declined => "declined by",
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Offer {
    mac: Mac,
    until: u64,
}

/// Per-subnet dynamic pool.
#[derive(Debug)]
struct Pool {
    ranges: Vec<AddrRange>,
    exclude: Vec<AddrRange>,
    free: BTreeSet<u32>,
    size: usize,
}

impl Pool {
    /// The first free address at or after the point `prefer` picks in the pool's span,
    /// wrapping to the lowest one.
    fn first_free_from(&self, prefer: u64) -> Option<u32> {
        let (lo, hi) = (*self.free.first()?, *self.free.last()?);
        let span = u64::from(hi - lo) + 1;
        // `prefer % span` < span <= 2^32, so the start is within lo..=hi.
        let start = lo.saturating_add(u32::try_from(prefer % span).unwrap_or(0));
        self.free
            .range(start..)
            .next()
            .or_else(|| self.free.iter().next())
            .copied()
    }

    fn is_dynamic(&self, ip: Ipv4Addr) -> bool {
        self.ranges.iter().any(|r| r.contains(ip)) && !self.exclude.iter().any(|r| r.contains(ip))
    }
}

/// All leases and pools of the server.
#[derive(Debug)]
pub struct LeaseTable {
    leases: HashMap<Ipv4Addr, Lease>,
    by_mac: HashMap<Mac, Ipv4Addr>,
    offers: HashMap<Ipv4Addr, Offer>,
    /// The address on offer to each client (index of `offers`, so lookups stay O(1)).
    offer_by_mac: HashMap<Mac, Ipv4Addr>,
    pools: Vec<Pool>,
    /// Addresses reserved in the inventory, with their owner: never dynamic.
    reserved: HashMap<Ipv4Addr, Mac>,
    /// Where in each pool a fresh allocation starts looking (cluster mode: a hash of the
    /// fabric's name, so fabrics on one segment rarely offer the same address at once).
    /// 0 standalone: the lowest free address, as always.
    prefer: u64,
}

impl LeaseTable {
    /// Builds the table for `subnets`, with the inventory's reservations held out of the
    /// pools and the journal's live records applied.
    pub fn new(
        subnets: &[SubnetConfig],
        inventory: &Inventory,
        records: &[LeaseRecord],
        now: u64,
    ) -> Self {
        let reserved: HashMap<Ipv4Addr, Mac> = inventory
            .hosts()
            .iter()
            .filter_map(|h| h.ip.map(|ip| (ip, h.mac)))
            .collect();
        let pools = subnets
            .iter()
            .map(|s| {
                let mut pool = Pool {
                    ranges: s.pools.clone(),
                    exclude: s.exclude.clone(),
                    free: BTreeSet::new(),
                    size: 0,
                };
                let mut seen = HashSet::new();
                for r in &s.pools {
                    for ip in u32::from(r.first)..=u32::from(r.last) {
                        let addr = Ipv4Addr::from(ip);
                        if pool.is_dynamic(addr) && !reserved.contains_key(&addr) && seen.insert(ip)
                        {
                            pool.free.insert(ip);
                        }
                    }
                }
                pool.size = pool.free.len();
                pool
            })
            .collect();
        let mut t = LeaseTable {
            leases: HashMap::new(),
            by_mac: HashMap::new(),
            offers: HashMap::new(),
            offer_by_mac: HashMap::new(),
            pools,
            reserved,
            prefer: 0,
        };
        for r in records {
            t.apply(r);
        }
        t.reclaim_expired(now);
        t
    }

    /// Applies a committed record (also used when replaying the journal).
    pub fn apply(&mut self, r: &LeaseRecord) {
        self.drop_offer_at(r.ip);
        if let Some(old) = self.leases.remove(&r.ip) {
            if self.by_mac.get(&old.mac) == Some(&r.ip) {
                self.by_mac.remove(&old.mac);
            }
        }
        match r.state {
            LeaseState::Released => self.make_free(r.ip),
            LeaseState::Bound | LeaseState::Declined => {
                self.take(r.ip);
                if r.state == LeaseState::Bound {
                    // A client holds one address: a new binding replaces its old one.
                    if let Some(prev) = self.by_mac.insert(r.mac, r.ip) {
                        if prev != r.ip && self.leases.get(&prev).is_some_and(|l| l.mac == r.mac) {
                            self.leases.remove(&prev);
                            self.make_free(prev);
                        }
                    }
                }
                self.leases.insert(
                    r.ip,
                    Lease {
                        mac: r.mac,
                        state: r.state,
                        expires: r.expires,
                        hostname: r.hostname.clone(),
                    },
                );
            }
        }
    }

    fn pool_of(&self, ip: Ipv4Addr) -> Option<usize> {
        self.pools.iter().position(|p| p.is_dynamic(ip))
    }

    fn take(&mut self, ip: Ipv4Addr) {
        if let Some(i) = self.pool_of(ip) {
            self.pools[i].free.remove(&u32::from(ip));
        }
    }

    fn make_free(&mut self, ip: Ipv4Addr) {
        if self.reserved.contains_key(&ip) {
            return;
        }
        if let Some(i) = self.pool_of(ip) {
            self.pools[i].free.insert(u32::from(ip));
        }
    }

    /// Replaces the reservations with the inventory's (a config reload). Newly reserved
    /// addresses leave the pools; released ones return to them unless leased or offered.
    /// A dynamic lease on a newly reserved address stays until it ends.
    pub fn set_reservations(&mut self, inventory: &Inventory) {
        let new: HashMap<Ipv4Addr, Mac> = inventory
            .hosts()
            .iter()
            .filter_map(|h| h.ip.map(|ip| (ip, h.mac)))
            .collect();
        let old = std::mem::replace(&mut self.reserved, new);
        for ip in self.reserved.keys().copied().collect::<Vec<_>>() {
            self.take(ip);
        }
        for ip in old.keys() {
            if !self.reserved.contains_key(ip)
                && !self.leases.contains_key(ip)
                && !self.offers.contains_key(ip)
            {
                self.make_free(*ip);
            }
        }
        for p in &mut self.pools {
            let mut seen = HashSet::new();
            for r in &p.ranges {
                for ip in u32::from(r.first)..=u32::from(r.last) {
                    let addr = Ipv4Addr::from(ip);
                    if p.is_dynamic(addr) && !self.reserved.contains_key(&addr) {
                        seen.insert(ip);
                    }
                }
            }
            p.size = seen.len();
        }
    }

    /// Whether `ip` is in subnet `subnet`'s dynamic ranges.
    pub fn is_dynamic(&self, subnet: usize, ip: Ipv4Addr) -> bool {
        self.pools.get(subnet).is_some_and(|p| p.is_dynamic(ip)) && !self.reserved.contains_key(&ip)
    }

    /// The owner of a reserved address.
    pub fn reserved_for(&self, ip: Ipv4Addr) -> Option<Mac> {
        self.reserved.get(&ip).copied()
    }

    /// Whether the reserved address `ip` can go to its `owner` at `now`. A reservation moved
    /// to another MAC (a reload) while the address is leased or offered to a client, or
    /// quarantined by a DECLINE, waits until that ends: handing it over at once would put
    /// one address on two machines.
    pub fn reservation_state(&self, ip: Ipv4Addr, owner: Mac, now: u64) -> ReservationState {
        // Only another client's hold counts. Those exist only from before the reservation
        // was moved (nobody else can take a reserved address), so a reservation starts to
        // wait at a reload and nowhere else, which is when the XDP maps are derived again. The
        // owner's own DECLINE never made it wait, and does not now.
        if let Some(l) = self
            .leases
            .get(&ip)
            .filter(|l| l.expires > now && l.mac != owner)
        {
            let how = match l.state {
                LeaseState::Bound => Some(Blocker::Leased),
                LeaseState::Declined => Some(Blocker::Declined),
                LeaseState::Released => None,
            };
            if let Some(how) = how {
                return ReservationState::HeldBy {
                    mac: l.mac,
                    how,
                    until: l.expires,
                };
            }
        }
        match self.offers.get(&ip) {
            Some(o) if o.mac != owner && o.until > now => ReservationState::HeldBy {
                mac: o.mac,
                how: Blocker::Offered,
                until: o.until,
            },
            _ => ReservationState::Free,
        }
    }

    /// The reserved addresses that wait for another client's hold to end at `now`, with
    /// their owner and state, in address order. O(reservations): for reloads and the
    /// housekeeping tick, not per packet.
    pub fn waiting(&self, now: u64) -> Vec<(Ipv4Addr, Mac, ReservationState)> {
        let mut v: Vec<_> = self
            .reserved
            .iter()
            .filter_map(
                |(ip, owner)| match self.reservation_state(*ip, *owner, now) {
                    ReservationState::Free => None,
                    held => Some((*ip, *owner, held)),
                },
            )
            .collect();
        v.sort_by_key(|(ip, _, _)| *ip);
        v
    }

    /// The current lease at `ip`, if any (bound or quarantined, expired or not).
    pub fn lease_at(&self, ip: Ipv4Addr) -> Option<&Lease> {
        self.leases.get(&ip)
    }

    /// The address bound to `mac`, with its lease.
    pub fn lease_of(&self, mac: Mac) -> Option<(Ipv4Addr, &Lease)> {
        let ip = *self.by_mac.get(&mac)?;
        self.leases.get(&ip).map(|l| (ip, l))
    }

    /// The address on offer to `mac`, if the offer still holds.
    pub fn offer_of(&self, mac: Mac, now: u64) -> Option<Ipv4Addr> {
        let ip = *self.offer_by_mac.get(&mac)?;
        self.offers
            .get(&ip)
            .filter(|o| o.mac == mac && o.until > now)
            .map(|_| ip)
    }

    fn drop_offer_at(&mut self, ip: Ipv4Addr) -> Option<Offer> {
        let o = self.offers.remove(&ip)?;
        if self.offer_by_mac.get(&o.mac) == Some(&ip) {
            self.offer_by_mac.remove(&o.mac);
        }
        Some(o)
    }

    /// Whether `mac` may be given `ip` now: nobody else holds, is offered or reserved it,
    /// and it is not quarantined.
    pub fn available_to(&self, ip: Ipv4Addr, mac: Mac, now: u64) -> bool {
        if self.reserved.get(&ip).is_some_and(|owner| *owner != mac) {
            return false;
        }
        if let Some(l) = self.leases.get(&ip) {
            let live = l.expires > now;
            if live && (l.mac != mac || l.state == LeaseState::Declined) {
                return false;
            }
        }
        !self
            .offers
            .get(&ip)
            .is_some_and(|o| o.mac != mac && o.until > now)
    }

    /// Picks a dynamic address in `subnet` for `mac`: its current binding or offer, else the
    /// address it asks for if free, else the lowest free one. `None` when the pool is exhausted.
    pub fn allocate(
        &mut self,
        subnet: usize,
        mac: Mac,
        requested: Option<Ipv4Addr>,
        now: u64,
    ) -> Option<Ipv4Addr> {
        if let Some((ip, l)) = self.lease_of(mac) {
            if l.state == LeaseState::Bound && self.is_dynamic(subnet, ip) {
                return Some(ip);
            }
        }
        if let Some(ip) = self.offer_of(mac, now) {
            if self.is_dynamic(subnet, ip) {
                return Some(ip);
            }
        }
        if let Some(ip) = requested {
            let free = self
                .pools
                .get(subnet)
                .is_some_and(|p| p.free.contains(&u32::from(ip)));
            if free && self.available_to(ip, mac, now) {
                return Some(ip);
            }
        }
        for attempt in 0..2 {
            let pool = self.pools.get(subnet)?;
            if let Some(ip) = pool.first_free_from(self.prefer) {
                return Some(Ipv4Addr::from(ip));
            }
            if attempt == 0 && self.reclaim_expired(now) == 0 {
                return None;
            }
        }
        None
    }

    /// Makes fresh allocations start at a point `seed` picks in each pool rather than at its
    /// lowest free address (cluster mode; see `prefer`).
    pub fn prefer_from(&mut self, seed: u64) {
        self.prefer = seed;
    }

    /// Holds `ip` for `mac` until `until`.
    pub fn offer(&mut self, ip: Ipv4Addr, mac: Mac, until: u64) {
        // One offer per client: a new DISCOVER moves it.
        if let Some(old) = self
            .offer_by_mac
            .get(&mac)
            .copied()
            .filter(|old| *old != ip)
        {
            self.drop_offer_at(old);
            if !self.leases.contains_key(&old) {
                self.make_free(old);
            }
        }
        self.drop_offer_at(ip);
        self.take(ip);
        self.offers.insert(ip, Offer { mac, until });
        self.offer_by_mac.insert(mac, ip);
    }

    /// Drops the offer held for `mac` (it chose another server).
    pub fn withdraw_offer(&mut self, mac: Mac) {
        if let Some(ip) = self.offer_by_mac.get(&mac).copied() {
            self.drop_offer_at(ip);
            if !self.leases.contains_key(&ip) {
                self.make_free(ip);
            }
        }
    }

    /// Returns expired leases, quarantines and offers to their pools; how many were freed.
    pub fn reclaim_expired(&mut self, now: u64) -> usize {
        let expired: Vec<Ipv4Addr> = self
            .leases
            .iter()
            .filter(|(_, l)| l.expires <= now)
            .map(|(ip, _)| *ip)
            .collect();
        let stale: Vec<Ipv4Addr> = self
            .offers
            .iter()
            .filter(|(ip, o)| o.until <= now && !self.leases.contains_key(ip))
            .map(|(ip, _)| *ip)
            .collect();
        let n = expired.len() + stale.len();
        for ip in expired {
            if let Some(l) = self.leases.remove(&ip) {
                if self.by_mac.get(&l.mac) == Some(&ip) {
                    self.by_mac.remove(&l.mac);
                }
            }
            self.make_free(ip);
        }
        for ip in stale {
            self.drop_offer_at(ip);
            self.make_free(ip);
        }
        n
    }

    /// (addresses in use, dynamic pool size) of `subnet`; in use counts bound leases,
    /// quarantines and offers.
    pub fn utilization(&self, subnet: usize) -> (usize, usize) {
        self.pools
            .get(subnet)
            .map(|p| (p.size - p.free.len(), p.size))
            .unwrap_or((0, 0))
    }

    /// Active bindings (unexpired, bound), in address order.
    pub fn active(&self, now: u64) -> Vec<(Ipv4Addr, Lease)> {
        let mut v: Vec<(Ipv4Addr, Lease)> = self
            .leases
            .iter()
            .filter(|(_, l)| l.state == LeaseState::Bound && l.expires > now)
            .map(|(ip, l)| (*ip, l.clone()))
            .collect();
        v.sort_by_key(|(ip, _)| *ip);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{config::SubnetConfig, model::boot::OptionSet};

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn subnet() -> SubnetConfig {
        SubnetConfig {
            net: "10.0.0.0/24".parse().expect("net"),
            interface: None,
            pools: vec![AddrRange::parse("10.0.0.10-10.0.0.14").expect("range")],
            exclude: vec![AddrRange::parse("10.0.0.12").expect("range")],
            options: OptionSet::default(),
        }
    }

    fn inventory() -> Inventory {
        let text = "[profiles.p]\n[[hosts]]\nname='r'\nmac='52:54:00:00:00:63'\nip='10.0.0.11'\nprofile='p'\n";
        let wire = toml::from_str(text).expect("toml");
        Inventory::from_wire(std::path::Path::new("h"), wire).expect("inventory")
    }

    fn bind(ip: &str, m: Mac, expires: u64) -> LeaseRecord {
        LeaseRecord {
            ip: ip.parse().expect("ip"),
            mac: m,
            state: LeaseState::Bound,
            expires,
            hostname: None,
        }
    }

    #[test]
    fn pool_excludes_exclusions_and_reservations() {
        let t = LeaseTable::new(&[subnet()], &inventory(), &[], 0);
        assert_eq!(t.utilization(0), (0, 3)); // .10 .13 .14
        assert!(!t.is_dynamic(0, "10.0.0.11".parse().expect("ip")));
        assert!(!t.is_dynamic(0, "10.0.0.12".parse().expect("ip")));
    }

    #[test]
    fn allocation_prefers_binding_then_request_then_lowest() {
        let mut t = LeaseTable::new(
            &[subnet()],
            &inventory(),
            &[bind("10.0.0.13", mac(1), 1000)],
            0,
        );
        assert_eq!(
            t.allocate(0, mac(1), None, 10),
            Some("10.0.0.13".parse().expect("ip"))
        );
        assert_eq!(
            t.allocate(0, mac(2), Some("10.0.0.14".parse().expect("ip")), 10),
            Some("10.0.0.14".parse().expect("ip"))
        );
        assert_eq!(
            t.allocate(0, mac(2), Some("10.0.0.13".parse().expect("ip")), 10),
            Some("10.0.0.10".parse().expect("ip"))
        );
    }

    #[test]
    fn exhaustion_returns_none_and_expiry_reclaims() {
        let mut t = LeaseTable::new(&[subnet()], &inventory(), &[], 0);
        for (i, ip) in ["10.0.0.10", "10.0.0.13", "10.0.0.14"].iter().enumerate() {
            let got = t.allocate(0, mac(i as u8), None, 0).expect("free address");
            assert_eq!(got, ip.parse::<Ipv4Addr>().expect("ip"));
            t.apply(&bind(ip, mac(i as u8), 100));
        }
        assert_eq!(t.allocate(0, mac(9), None, 50), None);
        assert_eq!(t.utilization(0), (3, 3));
        assert_eq!(
            t.allocate(0, mac(9), None, 100),
            Some("10.0.0.10".parse().expect("ip"))
        );
    }

    #[test]
    fn a_preference_starts_allocations_inside_the_pool_and_wraps() {
        // Free: .10 .13 .14 (span .10-.14). A seed of 3 starts at .13, then .14, then wraps.
        let mut t = LeaseTable::new(&[subnet()], &inventory(), &[], 0);
        t.prefer_from(3 + 5 * 1000);
        for (i, ip) in ["10.0.0.13", "10.0.0.14", "10.0.0.10"].iter().enumerate() {
            let got = t.allocate(0, mac(i as u8), None, 0).expect("free address");
            assert_eq!(got, ip.parse::<Ipv4Addr>().expect("ip"));
            t.apply(&bind(ip, mac(i as u8), 100));
        }
        assert_eq!(t.allocate(0, mac(9), None, 50), None);
    }

    #[test]
    fn offers_hold_addresses_until_they_lapse() {
        let mut t = LeaseTable::new(&[subnet()], &inventory(), &[], 0);
        let a = t.allocate(0, mac(1), None, 0).expect("ip");
        t.offer(a, mac(1), 60);
        assert!(!t.available_to(a, mac(2), 30));
        assert_ne!(t.allocate(0, mac(2), None, 30), Some(a));
        assert_eq!(t.allocate(0, mac(1), None, 30), Some(a));
        assert!(t.available_to(a, mac(2), 61));
        t.withdraw_offer(mac(1));
        assert_eq!(t.allocate(0, mac(3), None, 30), Some(a));
    }

    #[test]
    fn reserved_addresses_belong_to_their_host_only() {
        let t = LeaseTable::new(&[subnet()], &inventory(), &[], 0);
        let r: Ipv4Addr = "10.0.0.11".parse().expect("ip");
        assert!(t.available_to(r, mac(0x63), 0));
        assert!(!t.available_to(r, mac(1), 0));
    }

    #[test]
    fn release_and_decline() {
        let mut t = LeaseTable::new(
            &[subnet()],
            &inventory(),
            &[bind("10.0.0.10", mac(1), 100)],
            0,
        );
        let ip: Ipv4Addr = "10.0.0.10".parse().expect("ip");
        t.apply(&LeaseRecord {
            state: LeaseState::Released,
            ..bind("10.0.0.10", mac(1), 0)
        });
        assert!(t.lease_of(mac(1)).is_none());
        assert_eq!(t.utilization(0), (0, 3));
        t.apply(&LeaseRecord {
            state: LeaseState::Declined,
            ..bind("10.0.0.10", mac(2), 500)
        });
        assert!(!t.available_to(ip, mac(3), 10));
        assert!(!t.available_to(ip, mac(2), 10));
        assert_ne!(t.allocate(0, mac(3), Some(ip), 10), Some(ip));
        assert_eq!(t.reclaim_expired(500), 1);
        assert!(t.available_to(ip, mac(3), 500));
    }

    #[test]
    fn a_reservation_waits_for_another_clients_hold_only() {
        // 10.0.0.11 is reserved for 0x63; 0x01 leased it before the reservation moved there.
        let mut t = LeaseTable::new(
            &[subnet()],
            &inventory(),
            &[bind("10.0.0.11", mac(1), 100)],
            0,
        );
        let r: Ipv4Addr = "10.0.0.11".parse().expect("ip");
        let held = ReservationState::HeldBy {
            mac: mac(1),
            how: Blocker::Leased,
            until: 100,
        };
        assert_eq!(t.reservation_state(r, mac(0x63), 99), held);
        assert_eq!(t.waiting(99), vec![(r, mac(0x63), held)]);
        assert_eq!(
            t.reservation_state(r, mac(0x63), 100),
            ReservationState::Free
        );
        assert!(t.waiting(100).is_empty());
        // The owner's own binding or quarantine is no wait.
        t.apply(&bind("10.0.0.11", mac(0x63), 500));
        assert_eq!(
            t.reservation_state(r, mac(0x63), 10),
            ReservationState::Free
        );
        t.apply(&LeaseRecord {
            state: LeaseState::Declined,
            ..bind("10.0.0.11", mac(0x63), 500)
        });
        assert_eq!(
            t.reservation_state(r, mac(0x63), 10),
            ReservationState::Free
        );
        // Another client's quarantine or offer is.
        t.apply(&LeaseRecord {
            state: LeaseState::Declined,
            ..bind("10.0.0.11", mac(2), 500)
        });
        assert!(matches!(
            t.reservation_state(r, mac(0x63), 10),
            ReservationState::HeldBy {
                how: Blocker::Declined,
                until: 500,
                ..
            }
        ));
        t.apply(&LeaseRecord {
            state: LeaseState::Released,
            ..bind("10.0.0.11", mac(2), 0)
        });
        t.offer(r, mac(3), 60);
        assert!(matches!(
            t.reservation_state(r, mac(0x63), 10),
            ReservationState::HeldBy {
                how: Blocker::Offered,
                until: 60,
                ..
            }
        ));
        assert_eq!(
            t.reservation_state(r, mac(0x63), 60),
            ReservationState::Free
        );
    }

    #[test]
    fn rebinding_a_client_frees_its_old_address() {
        let mut t = LeaseTable::new(
            &[subnet()],
            &inventory(),
            &[bind("10.0.0.10", mac(1), 100)],
            0,
        );
        t.apply(&bind("10.0.0.13", mac(1), 100));
        assert_eq!(
            t.lease_of(mac(1)).map(|(ip, _)| ip),
            Some("10.0.0.13".parse().expect("ip"))
        );
        assert!(t.lease_at("10.0.0.10".parse().expect("ip")).is_none());
        assert_eq!(t.utilization(0), (1, 3));
    }
}
