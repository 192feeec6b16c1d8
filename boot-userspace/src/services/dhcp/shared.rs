//! Cluster mode for DHCP: the service's use of the shared leases in etcd
//! ([`crate::cluster::leases`]). A dynamic binding is ACKed only once this fabric has won
//! its address in etcd (as it is only once the journal has it); what other fabrics hold
//! comes back from the mirror into this fabric's lease table, so offers skip it and a client
//! another (perhaps dead) fabric bound renews here. Reserved hosts never touch etcd: every
//! fabric has the same inventory and the kernel answers them.

use std::{net::Ipv4Addr, sync::Arc};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{
    journal::{LeaseRecord, LeaseState},
    service::{Committed, DhcpService},
    table::Lease,
    unix_now,
};
use crate::cluster::leases::{Change, ClaimRecord, Claimed, Leases};

/// Where this fabric's allocations start in each pool: a stable hash (FNV-1a) of its name,
/// so two fabrics answering one DISCOVER storm mostly offer different addresses and lose
/// few claims. Stable across restarts and builds (not `DefaultHasher`, which is seeded).
pub fn preference(fabric: &str) -> u64 {
    fabric.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The shared record of a local `record` granted by `fabric`.
pub fn claim_of(record: &LeaseRecord, fabric: &str) -> ClaimRecord {
    ClaimRecord {
        mac: record.mac.to_string(),
        client_id: None,
        expires: record.expires,
        fabric: fabric.to_owned(),
        declined: record.state == LeaseState::Declined,
    }
}

/// What a change seen in etcd does to this fabric's table, which has `local` at the address:
/// the record to apply, or nothing. A record the table already has (our own claim coming
/// back, or an older copy) is not applied again, so the host name the client gave stays; a
/// deletion frees the address only if the table still gives it to the deleted holder.
pub fn to_apply(change: &Change, local: Option<&Lease>) -> Option<LeaseRecord> {
    match change {
        Change::Held(ip, rec) => {
            let mac = rec.holder()?;
            let state = if rec.declined {
                LeaseState::Declined
            } else {
                LeaseState::Bound
            };
            if local.is_some_and(|l| l.mac == mac && l.state == state && l.expires >= rec.expires) {
                return None;
            }
            Some(LeaseRecord {
                ip: *ip,
                mac,
                state,
                expires: rec.expires,
                hostname: local
                    .filter(|l| l.mac == mac)
                    .and_then(|l| l.hostname.clone()),
            })
        }
        Change::Gone(ip, rec) => {
            let mac = rec.holder()?;
            local.filter(|l| l.mac == mac).map(|l| LeaseRecord {
                ip: *ip,
                mac,
                state: LeaseState::Released,
                expires: 0,
                hostname: l.hostname.clone(),
            })
        }
    }
}

impl DhcpService {
    /// Shares `record` with the cluster before it is journaled: `Durable` if the reply may
    /// go. A lost claim puts the winner in the table and the client is NAKed (its next
    /// DISCOVER gets another address); without etcd only the client's own lease,
    /// as the mirror knows it, is renewed (written back later), and a new address is refused.
    pub(super) async fn share(&self, leases: &Leases, record: &LeaseRecord) -> Committed {
        let reserved = self
            .server
            .lock()
            .is_ok_and(|s| s.table.reserved_for(record.ip) == Some(record.mac));
        if reserved {
            return Committed::Durable;
        }
        let (ip, mac) = (record.ip, record.mac);
        if record.state == LeaseState::Released {
            if let Err(e) = leases.release(ip, mac).await {
                // The record expires in etcd on its own; the local table frees it now.
                warn!(%ip, %mac, error = %e, "cluster leases: a release not written to etcd");
            }
            return Committed::Durable;
        }
        let claim = claim_of(record, leases.fabric());
        match leases.claim(ip, mac, &claim, unix_now()).await {
            Ok(Claimed::Won(_)) => Committed::Durable,
            Ok(Claimed::Lost(by)) => {
                debug!(%ip, %mac, holder = by.mac, fabric = by.fabric, "cluster leases: claim lost");
                self.apply_changes(&[Change::Held(ip, by)]);
                Committed::Lost
            }
            Err(e) => {
                let own = leases
                    .held(ip)
                    .is_some_and(|h| !h.record.declined && h.record.holder() == Some(mac));
                if record.state == LeaseState::Declined {
                    // The quarantine holds here; the others learn of the address when it
                    // answers their ARP probe.
                    return Committed::Durable;
                }
                if own {
                    leases.queue_renewal(ip, claim);
                    return Committed::Durable;
                }
                leases.refused_new();
                warn!(%ip, %mac, error = %e, "cluster leases: etcd cannot be written (no quorum?): new address refused");
                if let Ok(mut s) = self.server.lock() {
                    if s.table.lease_at(ip).is_some_and(|l| l.mac == mac) {
                        s.table.apply(&LeaseRecord {
                            state: LeaseState::Released,
                            ..record.clone()
                        });
                    }
                }
                Committed::Failed
            }
        }
    }

    /// Applies what the mirror saw to the lease table.
    pub(super) fn apply_changes(&self, changes: &[Change]) {
        let Ok(mut s) = self.server.lock() else {
            return;
        };
        for c in changes {
            let ip: Ipv4Addr = match c {
                Change::Held(ip, _) | Change::Gone(ip, _) => *ip,
            };
            if let Some(r) = to_apply(c, s.table.lease_at(ip)) {
                s.table.apply(&r);
            }
        }
    }

    /// Runs the mirror and feeds its changes to the table until `cancel`.
    pub(super) async fn follow_leases(self: Arc<Self>, leases: Leases, cancel: CancellationToken) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mirror = tokio::spawn(leases.run(tx, cancel.clone()));
        while let Some(batch) = rx.recv().await {
            self.apply_changes(&batch);
        }
        let _ = mirror.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::inventory::Mac;

    fn mac(n: u8) -> Mac {
        Mac([0x52, 0x54, 0, 0, 0, n])
    }

    fn claim(n: u8, expires: u64) -> ClaimRecord {
        ClaimRecord {
            mac: mac(n).to_string(),
            client_id: None,
            expires,
            fabric: "fab-b".to_owned(),
            declined: false,
        }
    }

    fn lease(n: u8, expires: u64) -> Lease {
        Lease {
            mac: mac(n),
            state: LeaseState::Bound,
            expires,
            hostname: Some("h".to_owned()),
        }
    }

    const IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 9);

    #[test]
    fn another_fabrics_binding_enters_the_table() {
        let r = to_apply(&Change::Held(IP, claim(2, 900)), None).expect("applied");
        assert_eq!(
            (r.mac, r.state, r.expires),
            (mac(2), LeaseState::Bound, 900)
        );
        // It replaces an older binding of another client (that claim lost in etcd).
        let r = to_apply(&Change::Held(IP, claim(2, 900)), Some(&lease(1, 500))).expect("applied");
        assert_eq!(r.mac, mac(2));
    }

    #[test]
    fn our_own_claim_coming_back_changes_nothing() {
        assert_eq!(
            to_apply(&Change::Held(IP, claim(1, 900)), Some(&lease(1, 900))),
            None
        );
        // A renewal elsewhere extends it, keeping the host name.
        let r = to_apply(&Change::Held(IP, claim(1, 1900)), Some(&lease(1, 900))).expect("applied");
        assert_eq!((r.expires, r.hostname.as_deref()), (1900, Some("h")));
    }

    #[test]
    fn a_deletion_frees_only_the_deleted_holders_binding() {
        let r = to_apply(&Change::Gone(IP, claim(1, 900)), Some(&lease(1, 900))).expect("freed");
        assert_eq!(r.state, LeaseState::Released);
        assert_eq!(
            to_apply(&Change::Gone(IP, claim(1, 900)), Some(&lease(2, 900))),
            None
        );
        assert_eq!(to_apply(&Change::Gone(IP, claim(1, 900)), None), None);
    }

    #[test]
    fn fabrics_prefer_different_addresses_the_same_each_time() {
        assert_eq!(preference("fab-a"), preference("fab-a"));
        assert_ne!(preference("fab-a") % 100, preference("fab-b") % 100);
    }

    #[test]
    fn the_shared_record_says_who_and_until_when() {
        let r = LeaseRecord {
            ip: IP,
            mac: mac(3),
            state: LeaseState::Declined,
            expires: 77,
            hostname: None,
        };
        let c = claim_of(&r, "fab-a");
        assert_eq!(c.holder(), Some(mac(3)));
        assert!(c.declined);
        assert_eq!((c.expires, c.fabric.as_str()), (77, "fab-a"));
    }
}
