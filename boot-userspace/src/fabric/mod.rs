//! The fabric: the interfaces the daemon serves, resolved once at start.
//!
//! Every service used to walk the kernel's address list on its own, at its own moment, and
//! each walk could see a different picture. `commands::serve` now resolves the configured
//! interfaces here, in one walk, and hands each service the [`Iface`]s it serves. Resolving
//! never fails: a missing interface or address is a fact each service judges by its own needs
//! (DHCP refuses to start without an IPv4 address, router advertisements skip an interface
//! without IPv6), so the error texts stay with the services.

use std::{
    ffi::CString,
    net::{Ipv4Addr, Ipv6Addr},
};

/// One fabric interface as the kernel showed it at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Iface {
    /// Interface name, as configured.
    pub name: String,
    /// Its index; `None` when there is no such interface in this network namespace.
    pub index: Option<u32>,
    /// Its first IPv4 address.
    pub ipv4: Option<Ipv4Addr>,
    /// Its hardware address.
    pub mac: Option<[u8; 6]>,
    /// Whether it has an IPv6 link-local address (router advertisements need one).
    pub ipv6_link_local: bool,
    /// Its first IPv6 address beyond the link (DHCPv6 names it in boot URLs).
    pub ipv6: Option<Ipv6Addr>,
}

impl Iface {
    /// An interface with nothing resolved yet.
    fn unresolved(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            index: None,
            ipv4: None,
            mac: None,
            ipv6_link_local: false,
            ipv6: None,
        }
    }
}

/// The resolved fabric interfaces, in configuration order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fabric {
    ifaces: Vec<Iface>,
}

impl Fabric {
    /// Resolves `names` in the current network namespace with one walk of its addresses.
    pub fn resolve(names: &[String]) -> Self {
        let mut ifaces: Vec<Iface> = names.iter().map(|n| Iface::unresolved(n)).collect();
        for iface in &mut ifaces {
            iface.index = if_index(&iface.name);
        }
        // No address list (an exotic sandbox) reads as "no addresses": each service then
        // reports the missing address in its own words.
        if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
            for a in addrs {
                let Some(iface) = ifaces.iter_mut().find(|i| i.name == a.interface_name) else {
                    continue;
                };
                let Some(addr) = a.address else { continue };
                if let Some(v4) = addr.as_sockaddr_in() {
                    // The first address wins, as the kernel lists them (primary first).
                    iface.ipv4.get_or_insert(v4.ip());
                } else if let Some(v6) = addr.as_sockaddr_in6() {
                    let ip = v6.ip();
                    iface.ipv6_link_local |= ip.is_unicast_link_local();
                    if !ip.is_unicast_link_local() && !ip.is_loopback() && !ip.is_multicast() {
                        iface.ipv6.get_or_insert(ip);
                    }
                } else if let Some(mac) = addr.as_link_addr().and_then(|l| l.addr()) {
                    iface.mac.get_or_insert(mac);
                }
            }
        }
        Self { ifaces }
    }

    /// The interfaces, in configuration order.
    pub fn ifaces(&self) -> &[Iface] {
        &self.ifaces
    }

    /// The interface called `name`, if it is part of the fabric.
    pub fn get(&self, name: &str) -> Option<&Iface> {
        self.ifaces.iter().find(|i| i.name == name)
    }
}

/// Loopback as the fabric resolves it: what unit tests serve on, without root.
#[cfg(test)]
pub fn loopback() -> Iface {
    let fabric = Fabric::resolve(&["lo".to_owned()]);
    fabric.ifaces()[0].clone()
}

/// Index of a network interface in the current network namespace.
fn if_index(name: &str) -> Option<u32> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    (idx != 0).then_some(idx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_resolves_and_a_missing_interface_does_not_fail() {
        let fabric = Fabric::resolve(&["lo".to_owned(), "bf-no-such0".to_owned()]);
        let [lo, missing] = fabric.ifaces() else {
            panic!("one entry per configured name, in order: {fabric:?}");
        };
        assert_eq!(lo.name, "lo");
        assert!(lo.index.is_some());
        assert_eq!(lo.ipv4, Some(Ipv4Addr::LOCALHOST));
        // Loopback has no link-local IPv6 address (only ::1).
        assert!(!lo.ipv6_link_local);
        assert_eq!(
            missing,
            &Iface::unresolved("bf-no-such0"),
            "listed even when missing"
        );
    }
}
