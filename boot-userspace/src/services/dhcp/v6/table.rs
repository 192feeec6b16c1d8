//! DHCPv6 bindings in memory and in the journal: an address per (DUID, IAID), offered
//! (Advertise, memory only), bound (journaled before the Reply) or declined (quarantined).

use std::{collections::HashMap, net::Ipv6Addr};

use crate::model::inventory::Mac;
use crate::services::dhcp::journal::{LeaseState, Record};

/// An identity association: the client's DUID and its IAID.
pub type IaKey = (Vec<u8>, u32);

/// One journal line of a DHCPv6 binding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lease6Record {
    /// The address.
    pub ip: Ipv6Addr,
    /// The client's DUID.
    pub duid: Vec<u8>,
    /// The IA's identifier.
    pub iaid: u32,
    /// The client's MAC, when the server learnt it.
    pub mac: Option<Mac>,
    /// Bound, released or declined.
    pub state: LeaseState,
    /// Unix seconds.
    pub expires: u64,
}

impl Record for Lease6Record {
    type Key = Ipv6Addr;
    const HEADER: &'static str = "# bootfabric leases6 v1\n";

    fn key(&self) -> Ipv6Addr {
        self.ip
    }

    fn body(&self) -> String {
        let duid: String = self.duid.iter().map(|b| format!("{b:02x}")).collect();
        let mac = self.mac.map_or_else(|| "-".to_owned(), |m| m.to_string());
        format!(
            "{} {} {duid} {} {mac} {}",
            self.state.letter(),
            self.ip,
            self.iaid,
            self.expires
        )
    }

    fn parse(body: &str) -> Result<Self, &'static str> {
        const BAD: &str = "malformed record";
        let f: Vec<&str> = body.split(' ').collect();
        let [state, ip, duid, iaid, mac, expires] = f.as_slice() else {
            return Err(BAD);
        };
        if duid.len() % 2 != 0 || duid.len() > 2 * super::wire::MAX_DUID || duid.len() < 4 {
            return Err(BAD);
        }
        let duid = (0..duid.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&duid[i..i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| BAD)?;
        Ok(Self {
            ip: ip.parse().map_err(|_| BAD)?,
            duid,
            iaid: iaid.parse().map_err(|_| BAD)?,
            mac: match *mac {
                "-" => None,
                m => Some(m.parse().map_err(|_| BAD)?),
            },
            state: LeaseState::from_letter(state).ok_or(BAD)?,
            expires: expires.parse().map_err(|_| BAD)?,
        })
    }

    /// Released and expired bindings are left out at compaction: an IPv6 pool is too large
    /// for every address ever handed out to stay in the journal.
    fn is_dead(&self, now: u64) -> bool {
        self.state == LeaseState::Released || self.expires <= now
    }
}

/// What an address is in the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State6 {
    /// Advertised, held until `until` for the client to Request it.
    Offered,
    /// Bound (journaled).
    Bound,
    /// Declined by its client: kept from everyone until it expires.
    Declined,
}

/// One address in use.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Binding {
    /// Who holds it.
    pub ia: IaKey,
    /// The client's MAC, if known.
    pub mac: Option<Mac>,
    /// Offered, bound or declined.
    pub state: State6,
    /// Unix seconds.
    pub expires: u64,
}

/// The bindings, by address and by IA.
#[derive(Debug, Default)]
pub struct Table6 {
    by_addr: HashMap<Ipv6Addr, Binding>,
    by_ia: HashMap<IaKey, Ipv6Addr>,
    /// Entries of `by_addr` in `Declined`: kept, not counted per message.
    declined: usize,
}

impl Table6 {
    /// The table the journal's live records describe. They come one per address; should
    /// one IA hold two (a move whose release of the old address was lost), the binding that
    /// lasts longer, the newer one, wins.
    pub fn from_records(records: &[Lease6Record]) -> Self {
        let mut order: Vec<&Lease6Record> = records.iter().collect();
        order.sort_by_key(|r| r.expires);
        let mut t = Self::default();
        for r in order {
            t.apply(r);
        }
        t
    }

    /// Applies one journal record.
    pub fn apply(&mut self, r: &Lease6Record) {
        let state = match r.state {
            LeaseState::Bound => State6::Bound,
            LeaseState::Declined => State6::Declined,
            LeaseState::Released => {
                self.remove(r.ip);
                return;
            }
        };
        self.put(r.ip, (r.duid.clone(), r.iaid), r.mac, state, r.expires);
    }

    /// Puts `ip` in `state` for `ia`, dropping whatever either held before.
    pub fn put(&mut self, ip: Ipv6Addr, ia: IaKey, mac: Option<Mac>, state: State6, expires: u64) {
        self.remove(ip);
        if let Some(old) = self.by_ia.get(&ia).copied() {
            self.remove(old);
        }
        if state == State6::Declined {
            self.declined += 1;
        } else {
            self.by_ia.insert(ia.clone(), ip);
        }
        self.by_addr.insert(
            ip,
            Binding {
                ia,
                mac,
                state,
                expires,
            },
        );
    }

    /// Frees `ip`.
    pub fn remove(&mut self, ip: Ipv6Addr) {
        if let Some(b) = self.by_addr.remove(&ip) {
            if b.state == State6::Declined {
                self.declined -= 1;
            }
            if self.by_ia.get(&b.ia) == Some(&ip) {
                self.by_ia.remove(&b.ia);
            }
        }
    }

    /// What `ip` is, if anything.
    pub fn at(&self, ip: Ipv6Addr) -> Option<&Binding> {
        self.by_addr.get(&ip)
    }

    /// The address `ia` holds (offered or bound), expired or not.
    pub fn of(&self, ia: &IaKey) -> Option<(Ipv6Addr, &Binding)> {
        let ip = *self.by_ia.get(ia)?;
        Some((ip, self.by_addr.get(&ip)?))
    }

    /// Whether `ia` may take `ip` at `now`: free, its own, or left expired by another.
    pub fn free_for(&self, ip: Ipv6Addr, ia: &IaKey, now: u64) -> bool {
        match self.by_addr.get(&ip) {
            None => true,
            Some(b) if &b.ia == ia && b.state != State6::Declined => true,
            Some(b) => b.expires <= now,
        }
    }

    /// Addresses held (offered, bound or declined), expired ones included until reclaimed.
    pub fn len(&self) -> usize {
        self.by_addr.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.by_addr.is_empty()
    }

    /// Addresses in quarantine (expired ones included until reclaimed).
    pub fn declined(&self) -> usize {
        self.declined
    }

    /// Drops every entry expired at `now`; returns how many.
    pub fn reclaim(&mut self, now: u64) -> usize {
        let gone: Vec<Ipv6Addr> = self
            .by_addr
            .iter()
            .filter(|(_, b)| b.expires <= now)
            .map(|(ip, _)| *ip)
            .collect();
        for ip in &gone {
            self.remove(*ip);
        }
        gone.len()
    }

    /// Bound, unexpired bindings at `now`, by address: what `bootfabric leases` shows.
    pub fn active(&self, now: u64) -> Vec<(Ipv6Addr, Binding)> {
        let mut v: Vec<_> = self
            .by_addr
            .iter()
            .filter(|(_, b)| b.state == State6::Bound && b.expires > now)
            .map(|(ip, b)| (*ip, b.clone()))
            .collect();
        v.sort_by_key(|(ip, _)| *ip);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(last: u16, state: LeaseState) -> Lease6Record {
        Lease6Record {
            ip: Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, last),
            duid: vec![0, 3, 0, 1, 2, 0, 0, 0, 0, last as u8],
            iaid: 7,
            mac: Some(Mac([2, 0, 0, 0, 0, last as u8])),
            state,
            expires: 1_800_000_000,
        }
    }

    #[test]
    fn records_round_trip_through_their_line() {
        for r in [
            rec(1, LeaseState::Bound),
            Lease6Record {
                mac: None,
                ..rec(2, LeaseState::Declined)
            },
        ] {
            assert_eq!(
                Lease6Record::parse(&r.body()),
                Ok(r.clone()),
                "{}",
                r.body()
            );
        }
        for bad in [
            "B 2001:db8::1 03 7 - 1",
            "B 2001:db8::1 000 7 - 1 x",
            "B 2001:db8::1 zz 7 - 1",
            "X 2001:db8::1 0003 7 - 1",
            "B 10.0.0.1 0003 7 - 1",
        ] {
            assert!(Lease6Record::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_ia_holds_one_address_and_a_release_frees_it() {
        let mut t = Table6::default();
        let a = rec(1, LeaseState::Bound);
        t.apply(&a);
        let ia = (a.duid.clone(), a.iaid);
        assert_eq!(t.of(&ia).map(|(ip, _)| ip), Some(a.ip));
        // The same IA moved to another address: the first is free again.
        let mut b = a.clone();
        b.ip = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9);
        t.apply(&b);
        assert!(t.at(a.ip).is_none());
        assert_eq!(t.len(), 1);
        assert!(!t.free_for(b.ip, &(vec![9], 1), 0), "held by another IA");
        assert!(t.free_for(b.ip, &(vec![9], 1), b.expires), "expired");
        t.apply(&Lease6Record {
            state: LeaseState::Released,
            ..b.clone()
        });
        assert!(t.is_empty());
        // A declined address belongs to nobody's IA.
        t.apply(&Lease6Record {
            state: LeaseState::Declined,
            ..a.clone()
        });
        assert!(t.of(&ia).is_none());
        assert!(!t.free_for(a.ip, &ia, 0));
        assert_eq!(t.reclaim(a.expires), 1);
    }
}
