//! Validated DHCPv6 settings: `[dhcp6]` and `[[dhcp6.subnets]]`.

use std::net::Ipv6Addr;

use ipnet::Ipv6Net;
use serde::Deserialize;

use crate::util::key_error::KeyError;

/// `[dhcp6]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireDhcp6 {
    /// Serve DHCPv6 (default true when the section exists).
    pub enabled: Option<bool>,
    /// Seconds a bound address stays preferred (default 3600).
    pub preferred_lifetime_s: Option<u32>,
    /// Seconds a bound address stays valid (default 7200).
    pub valid_lifetime_s: Option<u32>,
    /// Answer a Solicit carrying Rapid Commit with a committed Reply (default true).
    pub rapid_commit: Option<bool>,
    /// Messages per second one client (DUID) may send before its messages are dropped.
    pub rate_limit: Option<u32>,
    /// Relay agents (addresses or CIDRs) whose Relay-forward messages are accepted.
    pub relays: Option<Vec<String>>,
    /// DNS recursive name servers (option 23).
    #[serde(default)]
    pub dns_servers: Vec<String>,
    /// Milliseconds the lease journal gathers bindings before one fdatasync covers them all.
    pub commit_delay_ms: Option<u32>,
    /// Addresses held (advertised, bound, declined) at most, over every pool.
    pub max_leases: Option<usize>,
    /// `[[dhcp6.subnets]]`.
    #[serde(default)]
    pub subnets: Vec<WireSubnet6>,
}

/// `[[dhcp6.subnets]]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireSubnet6 {
    /// The prefix, `2001:db8:77::/64`.
    pub cidr: Option<String>,
    /// Interface the prefix is on-link at; absent for relayed links.
    pub interface: Option<String>,
    /// Dynamic ranges, `FIRST-LAST`.
    #[serde(default)]
    pub pools: Vec<String>,
}

/// An inclusive range of IPv6 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range6 {
    /// First address.
    pub first: Ipv6Addr,
    /// Last address (inclusive).
    pub last: Ipv6Addr,
}

impl Range6 {
    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        self.first <= ip && ip <= self.last
    }

    /// The number of addresses in the range, minus one (a full /0 would not fit a `u128`
    /// otherwise).
    pub fn span(&self) -> u128 {
        u128::from(self.last) - u128::from(self.first)
    }

    /// The address `offset` past the first (`offset <= span()`).
    pub fn nth(&self, offset: u128) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.first) + offset.min(self.span()))
    }

    fn parse(s: &str) -> Result<Self, String> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let p = |x: &str| {
            x.trim()
                .parse::<Ipv6Addr>()
                .map_err(|_| format!("{s:?}: {x:?} is not an IPv6 address"))
        };
        let (first, last) = (p(a)?, p(b)?);
        if first > last {
            return Err(format!("{s:?}: first address is above the last"));
        }
        Ok(Self { first, last })
    }
}

/// One `[[dhcp6.subnets]]` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subnet6 {
    /// The prefix.
    pub net: Ipv6Net,
    /// The interface it is on-link at, if directly attached.
    pub interface: Option<String>,
    /// Dynamic ranges.
    pub pools: Vec<Range6>,
}

/// The validated `[dhcp6]` section.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dhcp6Config {
    /// Preferred lifetime of a binding, seconds.
    pub preferred_lifetime_s: u32,
    /// Valid lifetime of a binding, seconds.
    pub valid_lifetime_s: u32,
    /// Whether a Solicit with Rapid Commit is answered with a committed Reply.
    pub rapid_commit: bool,
    /// Messages per second per client.
    pub rate_limit: u32,
    /// Trusted relay agents; `None` trusts any.
    pub relays: Option<Vec<Ipv6Net>>,
    /// Option 23.
    pub dns_servers: Vec<Ipv6Addr>,
    /// Group-commit window of the lease journal, milliseconds.
    pub commit_delay_ms: u32,
    /// Addresses held at most: an IPv6 pool is too large to bound what a flood of made-up
    /// DUIDs could make the server remember and journal, so this does.
    pub max_leases: usize,
    /// Subnets, in config order.
    pub subnets: Vec<Subnet6>,
}

impl Dhcp6Config {
    /// The first subnet (in config order) whose prefix holds `ip`.
    pub fn subnet_of(&self, ip: Ipv6Addr) -> Option<usize> {
        self.subnets.iter().position(|s| s.net.contains(&ip))
    }

    /// The directly attached subnet of `interface`.
    pub fn subnet_on(&self, interface: &str) -> Option<usize> {
        self.subnets
            .iter()
            .position(|s| s.interface.as_deref() == Some(interface))
    }

    /// Validates `[dhcp6]`; `interfaces` are the fabric's.
    pub fn from_wire(w: &WireDhcp6, interfaces: &[String]) -> Result<Self, KeyError> {
        let err = |k: String, r: String| KeyError::new(k, r);
        let preferred_lifetime_s = w.preferred_lifetime_s.unwrap_or(3600);
        let valid_lifetime_s = w.valid_lifetime_s.unwrap_or(7200);
        if preferred_lifetime_s == 0 {
            return Err(err(
                "dhcp6.preferred_lifetime_s".into(),
                "must be at least 1".into(),
            ));
        }
        if valid_lifetime_s < preferred_lifetime_s {
            return Err(err(
                "dhcp6.valid_lifetime_s".into(),
                format!(
                    "{valid_lifetime_s} is below dhcp6.preferred_lifetime_s ({preferred_lifetime_s}); RFC 8415 §21.6 has the client drop such an address"
                ),
            ));
        }
        let rate_limit = w.rate_limit.unwrap_or(20);
        if rate_limit == 0 {
            return Err(err("dhcp6.rate_limit".into(), "must be at least 1".into()));
        }
        let commit_delay_ms = w.commit_delay_ms.unwrap_or(5);
        if commit_delay_ms > 1000 {
            return Err(err(
                "dhcp6.commit_delay_ms".into(),
                format!("{commit_delay_ms} ms would hold every Reply past a second"),
            ));
        }
        let max_leases = w.max_leases.unwrap_or(65_536);
        if !(1..=16_777_216).contains(&max_leases) {
            return Err(err(
                "dhcp6.max_leases".into(),
                format!("{max_leases}: give 1 to 16777216"),
            ));
        }
        let relays = w
            .relays
            .as_ref()
            .map(|v| {
                v.iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let k = format!("dhcp6.relays[{i}]");
                        match super::parse_cidr(r).map_err(|e| err(k.clone(), e.to_string()))? {
                            ipnet::IpNet::V6(n) => Ok(n),
                            ipnet::IpNet::V4(_) => Err(err(k, format!("{r:?} is not IPv6"))),
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let dns_servers = w
            .dns_servers
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.parse::<Ipv6Addr>().map_err(|_| {
                    err(
                        format!("dhcp6.dns_servers[{i}]"),
                        format!("{s:?} is not an IPv6 address"),
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut subnets: Vec<Subnet6> = Vec::new();
        for (i, s) in w.subnets.iter().enumerate() {
            let key = |f: &str| format!("dhcp6.subnets[{i}].{f}");
            let cidr = s
                .cidr
                .as_deref()
                .ok_or_else(|| err(key("cidr"), "missing".into()))?;
            let net = match super::parse_cidr(cidr).map_err(|r| err(key("cidr"), r.to_string()))? {
                ipnet::IpNet::V6(n) => n,
                ipnet::IpNet::V4(_) => {
                    return Err(err(key("cidr"), format!("{cidr:?} is not IPv6")));
                }
            };
            if net.trunc() != net {
                return Err(err(
                    key("cidr"),
                    format!("{cidr:?} has host bits set (did you mean {}?)", net.trunc()),
                ));
            }
            let first = net.network();
            if first.is_multicast() || first.is_unicast_link_local() || first.is_loopback() {
                return Err(err(
                    key("cidr"),
                    format!("{cidr:?} is not a unicast prefix a DHCPv6 server can hand out"),
                ));
            }
            if let Some(j) = subnets
                .iter()
                .position(|o| o.net.contains(&net) || net.contains(&o.net))
            {
                return Err(err(
                    key("cidr"),
                    format!("{cidr:?} overlaps dhcp6.subnets[{j}]"),
                ));
            }
            if let Some(ifname) = &s.interface {
                if !interfaces.contains(ifname) {
                    return Err(err(
                        key("interface"),
                        format!("{ifname:?} is not in fabric.interfaces"),
                    ));
                }
                if let Some(j) = subnets
                    .iter()
                    .position(|o| o.interface.as_deref() == Some(ifname))
                {
                    return Err(err(
                        key("interface"),
                        format!("{ifname:?} is dhcp6.subnets[{j}]'s already (one prefix per link)"),
                    ));
                }
            }
            let mut pools = Vec::new();
            for (j, p) in s.pools.iter().enumerate() {
                let k = format!("dhcp6.subnets[{i}].pools[{j}]");
                let r = Range6::parse(p).map_err(|e| err(k.clone(), e))?;
                if !net.contains(&r.first) || !net.contains(&r.last) {
                    return Err(err(k, format!("{p:?} is not inside {net}")));
                }
                if r.contains(first) {
                    // RFC 4291 §2.6.1: the all-zero interface identifier is the routers'
                    // anycast address.
                    return Err(err(
                        k,
                        format!("includes {first}, the subnet-router anycast address"),
                    ));
                }
                pools.push(r);
            }
            subnets.push(Subnet6 {
                net,
                interface: s.interface.clone(),
                pools,
            });
        }
        if subnets.is_empty() {
            return Err(err(
                "dhcp6.subnets".into(),
                "[dhcp6] has no [[dhcp6.subnets]]".into(),
            ));
        }
        Ok(Self {
            preferred_lifetime_s,
            valid_lifetime_s,
            rapid_commit: w.rapid_commit.unwrap_or(true),
            rate_limit,
            relays,
            dns_servers,
            commit_delay_ms,
            max_leases,
            subnets,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Dhcp6Config, KeyError> {
        let w: WireDhcp6 = toml::from_str(text).expect("toml");
        Dhcp6Config::from_wire(&w, &["fabric0".to_owned()])
    }

    #[test]
    fn a_subnet_with_a_pool_loads_with_defaults() {
        let c = parse(
            "[[subnets]]\ncidr = \"2001:db8:77::/64\"\ninterface = \"fabric0\"\npools = [\"2001:db8:77::1000-2001:db8:77::1fff\"]\n",
        )
        .expect("valid");
        assert_eq!(c.valid_lifetime_s, 7200);
        assert!(c.rapid_commit);
        assert_eq!(c.subnets[0].pools[0].span(), 0xfff);
        assert_eq!(c.subnet_on("fabric0"), Some(0));
        assert_eq!(c.subnet_of("2001:db8:77::5".parse().expect("ip")), Some(0));
    }

    #[test]
    fn bad_values_name_their_key() {
        let cases = [
            ("[[subnets]]\ncidr = \"10.0.0.0/8\"\n", "dhcp6.subnets[0].cidr"),
            ("[[subnets]]\ncidr = \"2001:db8::1/64\"\n", "dhcp6.subnets[0].cidr"),
            ("[[subnets]]\ncidr = \"fe80::/64\"\n", "dhcp6.subnets[0].cidr"),
            (
                "[[subnets]]\ncidr = \"2001:db8::/64\"\npools = [\"2001:db9::1-2001:db9::2\"]\n",
                "dhcp6.subnets[0].pools[0]",
            ),
            (
                "[[subnets]]\ncidr = \"2001:db8::/64\"\npools = [\"2001:db8::-2001:db8::2\"]\n",
                "dhcp6.subnets[0].pools[0]",
            ),
            (
                "[[subnets]]\ncidr = \"2001:db8::/64\"\ninterface = \"eth9\"\n",
                "dhcp6.subnets[0].interface",
            ),
            (
                "[[subnets]]\ncidr = \"2001:db8::/64\"\n[[subnets]]\ncidr = \"2001:db8::/48\"\n",
                "dhcp6.subnets[1].cidr",
            ),
            (
                "valid_lifetime_s = 10\npreferred_lifetime_s = 20\n[[subnets]]\ncidr = \"2001:db8::/64\"\n",
                "dhcp6.valid_lifetime_s",
            ),
            ("relays = [\"10.0.0.1\"]\n[[subnets]]\ncidr = \"2001:db8::/64\"\n", "dhcp6.relays[0]"),
            ("dns_servers = [\"x\"]\n[[subnets]]\ncidr = \"2001:db8::/64\"\n", "dhcp6.dns_servers[0]"),
            ("", "dhcp6.subnets"),
        ];
        for (text, key) in cases {
            let e = parse(text).expect_err(text);
            assert_eq!(e.key, key, "{text}: {e:?}");
        }
    }
}
