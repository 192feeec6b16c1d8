//! Validated DHCP and boot settings: `[dhcp]`, `[[dhcp.subnets]]`, `[boot]` and the option
//! and boot overrides that profiles and hosts carry.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::wire;
use crate::model::boot::OptionSet;

use crate::util::key_error::KeyError;

/// An inclusive range of IPv4 addresses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddrRange {
    /// First address.
    pub first: Ipv4Addr,
    /// Last address (inclusive).
    pub last: Ipv4Addr,
}

/// Why a value is not an address range.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AddrRangeError {
    /// One end is not an IPv4 address.
    #[error("{range:?}: {addr:?} is not an IPv4 address")]
    Address {
        /// The value.
        range: String,
        /// The end that is not an address.
        addr: String,
    },
    /// A above B.
    #[error("{0:?}: first address is above the last")]
    Reversed(String),
}

impl AddrRange {
    /// Parses `A-B` or a single address `A`.
    pub fn parse(s: &str) -> Result<Self, AddrRangeError> {
        let (a, b) = s.split_once('-').unwrap_or((s, s));
        let p = |x: &str| {
            x.trim()
                .parse::<Ipv4Addr>()
                .map_err(|_| AddrRangeError::Address {
                    range: s.to_owned(),
                    addr: x.to_owned(),
                })
        };
        let (first, last) = (p(a)?, p(b)?);
        if first > last {
            return Err(AddrRangeError::Reversed(s.to_owned()));
        }
        Ok(Self { first, last })
    }

    /// Whether `ip` is in the range.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        self.first <= ip && ip <= self.last
    }
}

/// One `[[dhcp.subnets]]` entry.
#[derive(Clone, Debug)]
pub struct SubnetConfig {
    /// The network.
    pub net: Ipv4Net,
    /// Directly attached interface, if any.
    pub interface: Option<String>,
    /// Dynamic ranges.
    pub pools: Vec<AddrRange>,
    /// Exclusions from the ranges.
    pub exclude: Vec<AddrRange>,
    /// Subnet-level options.
    pub options: OptionSet,
}

/// What the DHCP service answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhcpMode {
    /// A full server: addresses, options and boot information.
    Server,
    /// proxyDHCP (PXE spec): boot information only, to PXE, iPXE and HTTP-boot clients, on
    /// ports 67 and 4011, for networks whose addresses another DHCP server hands out.
    Proxy,
}

/// The validated `[dhcp]` section.
#[derive(Clone, Debug)]
pub struct DhcpConfig {
    /// Server or proxyDHCP.
    pub mode: DhcpMode,
    /// NAK requests for unknown addresses on our subnets.
    pub authoritative: bool,
    /// Packets per second per client before dropping.
    pub rate_limit: u32,
    /// Group-commit window of the lease journal, milliseconds.
    pub commit_delay_ms: u32,
    /// Global options.
    pub options: OptionSet,
    /// Subnets, in config order.
    pub subnets: Vec<SubnetConfig>,
    /// What the server accepts from whom, and how much it lets storage fall behind.
    pub guards: DhcpGuards,
    /// `dhcp.ipxe_no_pxedhcp`: offers and ACKs to iPXE carry its no-pxedhcp setting
    /// (175.176), so that it does not wait about 2 s for proxyDHCP offers. A switch so that
    /// the wait it saves can be measured (bench/demo) and turned off where a proxyDHCP
    /// server on the segment must be heard.
    pub ipxe_no_pxedhcp: bool,
}

/// Limits on what the provisioning network may make the server do: which relays it
/// trusts, how many DECLINEs it takes, and how far lease commits may queue behind a slow
/// disk. `Default` is the documented defaults.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhcpGuards {
    /// `dhcp.relays`: when set, relayed requests (giaddr set) are accepted only from these
    /// source addresses; `None` trusts a giaddr from anyone.
    pub relays: Option<Vec<Ipv4Net>>,
    /// `dhcp.decline_burst`: DECLINEs a subnet takes at once.
    pub decline_burst: u32,
    /// `dhcp.decline_per_hour`: the rate a subnet's DECLINE bucket refills.
    pub decline_per_hour: u32,
    /// `dhcp.commit_queue`: lease commits in flight before new ones are refused.
    pub commit_queue: u32,
    /// `dhcp.commit_timeout_ms`: how long an ACK waits for its lease to be durable.
    pub commit_timeout: std::time::Duration,
}

impl Default for DhcpGuards {
    fn default() -> Self {
        Self {
            relays: None,
            decline_burst: 10,
            decline_per_hour: 60,
            commit_queue: 4096,
            commit_timeout: std::time::Duration::from_millis(3000),
        }
    }
}

impl DhcpGuards {
    /// Validates the guard keys of `[dhcp]`; `commit_delay_ms` is the validated group-commit
    /// window, which a commit timeout must leave room for.
    fn from_wire(w: &wire::Dhcp, commit_delay_ms: u32) -> Result<Self, KeyError> {
        let d = Self::default();
        let relays = w
            .relays
            .as_ref()
            .map(|v| {
                v.iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let key = format!("dhcp.relays[{i}]");
                        let net = if r.contains('/') {
                            super::parse_cidr(r)
                                .map_err(|why| KeyError::new(key.clone(), why.to_string()))?
                        } else {
                            let ip: std::net::IpAddr = r.parse().map_err(|_| {
                                KeyError::new(
                                    key.clone(),
                                    format!("{r:?} is not an IP address or CIDR"),
                                )
                            })?;
                            ipnet::IpNet::from(ip)
                        };
                        match net {
                            ipnet::IpNet::V4(n) => Ok(n),
                            ipnet::IpNet::V6(_) => {
                                Err(KeyError::new(key, format!("{r:?} is not IPv4")))
                            }
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let positive = |key: &str, v: Option<u32>, default: u32, max: u32| {
            let v = v.unwrap_or(default);
            if v == 0 || v > max {
                return Err(KeyError::new(
                    key.to_owned(),
                    format!("{v} is not between 1 and {max}"),
                ));
            }
            Ok(v)
        };
        let decline_burst = positive(
            "dhcp.decline_burst",
            w.decline_burst,
            d.decline_burst,
            100_000,
        )?;
        let decline_per_hour = positive(
            "dhcp.decline_per_hour",
            w.decline_per_hour,
            d.decline_per_hour,
            3_600_000,
        )?;
        let commit_queue = positive(
            "dhcp.commit_queue",
            w.commit_queue,
            d.commit_queue,
            1_000_000,
        )?;
        let timeout_ms = w
            .commit_timeout_ms
            .unwrap_or(d.commit_timeout.as_millis() as u32);
        if !(100..=60_000).contains(&timeout_ms) || timeout_ms <= commit_delay_ms {
            return Err(KeyError::new(
                "dhcp.commit_timeout_ms".to_owned(),
                format!(
                    "{timeout_ms} ms is not between 100 and 60000 ms and above dhcp.commit_delay_ms ({commit_delay_ms} ms)"
                ),
            ));
        }
        Ok(Self {
            relays,
            decline_burst,
            decline_per_hour,
            commit_queue,
            commit_timeout: std::time::Duration::from_millis(u64::from(timeout_ms)),
        })
    }

    /// Whether a relayed request from `source` may be served.
    pub fn relay_allowed(&self, source: Ipv4Addr) -> bool {
        self.relays
            .as_ref()
            .is_none_or(|nets| nets.iter().any(|n| n.contains(&source)))
    }
}

/// Default lease time when no level sets one.
pub const DEFAULT_LEASE_TIME: u32 = 3600;

impl DhcpConfig {
    /// The first subnet (in config order) whose network holds `ip`: the one pool lookup
    /// that request handling, DECLINE accounting and the XDP fast path share.
    pub fn subnet_of(&self, ip: Ipv4Addr) -> Option<usize> {
        self.subnets.iter().position(|s| s.net.contains(&ip))
    }

    /// Validates `[dhcp]`.
    pub fn from_wire(w: &wire::Dhcp) -> Result<Self, KeyError> {
        let options = OptionSet::from_wire(&w.options, "dhcp.options")?;
        let mut subnets: Vec<SubnetConfig> = Vec::new();
        for (i, s) in w.subnets.iter().enumerate() {
            let key = |f: &str| format!("dhcp.subnets[{i}].{f}");
            let cidr = s
                .cidr
                .as_deref()
                .ok_or_else(|| KeyError::new(key("cidr"), "missing".to_owned()))?;
            let net = match super::parse_cidr(cidr)
                .map_err(|r| KeyError::new(key("cidr"), r.to_string()))?
            {
                ipnet::IpNet::V4(n) => n,
                ipnet::IpNet::V6(_) => {
                    return Err(KeyError::new(key("cidr"), format!("{cidr:?} is not IPv4")))
                }
            };
            if net.trunc() != net {
                return Err(KeyError::new(
                    key("cidr"),
                    format!("{cidr:?} has host bits set (did you mean {}?)", net.trunc()),
                ));
            }
            if let Some(j) = subnets
                .iter()
                .position(|o| o.net.contains(&net) || net.contains(&o.net))
            {
                return Err(KeyError::new(
                    key("cidr"),
                    format!("{cidr:?} overlaps dhcp.subnets[{j}]"),
                ));
            }
            let ranges = |field: &str, v: &[String]| -> Result<Vec<AddrRange>, KeyError> {
                v.iter()
                    .enumerate()
                    .map(|(j, r)| {
                        let k = format!("dhcp.subnets[{i}].{field}[{j}]");
                        let range = AddrRange::parse(r)
                            .map_err(|e| KeyError::new(k.clone(), e.to_string()))?;
                        if !net.contains(&range.first) || !net.contains(&range.last) {
                            return Err(KeyError::new(k, format!("{r:?} is not inside {net}")));
                        }
                        Ok(range)
                    })
                    .collect()
            };
            let pools = ranges("pools", &s.pools)?;
            for (j, p) in pools.iter().enumerate() {
                if p.first == net.network() || p.last == net.broadcast() {
                    return Err(KeyError::new(
                        format!("dhcp.subnets[{i}].pools[{j}]"),
                        format!("includes the network or broadcast address of {net}"),
                    ));
                }
            }
            subnets.push(SubnetConfig {
                net,
                interface: s.interface.clone(),
                exclude: ranges("exclude", &s.exclude)?,
                pools,
                options: OptionSet::from_wire(&s.options, &format!("dhcp.subnets[{i}].options"))?,
            });
        }
        let mode = match w.mode.as_deref().unwrap_or("server") {
            "server" => DhcpMode::Server,
            "proxy" => DhcpMode::Proxy,
            other => {
                return Err(KeyError::new(
                    "dhcp.mode".to_owned(),
                    format!("{other:?} is not \"server\" or \"proxy\""),
                ))
            }
        };
        let rate_limit = w.rate_limit.unwrap_or(20);
        if rate_limit == 0 {
            return Err(KeyError::new(
                "dhcp.rate_limit".to_owned(),
                "must be at least 1".to_owned(),
            ));
        }
        let commit_delay_ms = w.commit_delay_ms.unwrap_or(5);
        if commit_delay_ms > 1000 {
            return Err(KeyError::new(
                "dhcp.commit_delay_ms".to_owned(),
                format!("{commit_delay_ms} ms would hold every ACK past a second"),
            ));
        }
        let guards = DhcpGuards::from_wire(w, commit_delay_ms)?;
        Ok(Self {
            mode,
            commit_delay_ms,
            authoritative: w.authoritative.unwrap_or(true),
            rate_limit,
            options,
            subnets,
            guards,
            ipxe_no_pxedhcp: w.ipxe_no_pxedhcp.unwrap_or(true),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dhcp(keys: &str) -> Result<DhcpConfig, KeyError> {
        let w: wire::Dhcp = toml::from_str(keys).expect("toml");
        DhcpConfig::from_wire(&w)
    }

    #[test]
    fn ipxe_no_pxedhcp_is_on_unless_turned_off() {
        assert!(dhcp("").expect("defaults").ipxe_no_pxedhcp);
        assert!(dhcp("ipxe_no_pxedhcp = true").expect("on").ipxe_no_pxedhcp);
        assert!(
            !dhcp("ipxe_no_pxedhcp = false")
                .expect("off")
                .ipxe_no_pxedhcp
        );
        // A typed key: a string is refused by the TOML layer, not read as "truthy".
        assert!(toml::from_str::<wire::Dhcp>("ipxe_no_pxedhcp = \"off\"").is_err());
    }

    #[test]
    fn guards_have_defaults_and_bad_values_name_the_key() {
        let d = dhcp("").expect("defaults");
        assert_eq!(d.guards, DhcpGuards::default());
        assert!(d.guards.relay_allowed(Ipv4Addr::new(192, 0, 2, 1)));
        let d = dhcp(
            "relays = [\"10.77.0.254\", \"10.99.0.0/16\"]\ndecline_burst = 3\ndecline_per_hour = 6\ncommit_queue = 64\ncommit_timeout_ms = 1500\n",
        )
        .expect("guards");
        assert!(d.guards.relay_allowed(Ipv4Addr::new(10, 77, 0, 254)));
        assert!(d.guards.relay_allowed(Ipv4Addr::new(10, 99, 3, 4)));
        assert!(!d.guards.relay_allowed(Ipv4Addr::new(10, 77, 0, 2)));
        assert_eq!(
            (
                d.guards.decline_burst,
                d.guards.decline_per_hour,
                d.guards.commit_queue
            ),
            (3, 6, 64)
        );
        assert_eq!(
            d.guards.commit_timeout,
            std::time::Duration::from_millis(1500)
        );
        let d = dhcp("relays = []\n").expect("no relay at all");
        assert!(!d.guards.relay_allowed(Ipv4Addr::new(10, 77, 0, 254)));
        for (text, key) in [
            ("relays = [\"relay1\"]", "dhcp.relays[0]"),
            ("relays = [\"10.0.0.1\", \"fd00::1\"]", "dhcp.relays[1]"),
            ("relays = [\"10.0.0.0/33\"]", "dhcp.relays[0]"),
            ("decline_burst = 0", "dhcp.decline_burst"),
            ("decline_per_hour = 0", "dhcp.decline_per_hour"),
            ("commit_queue = 0", "dhcp.commit_queue"),
            ("commit_timeout_ms = 50", "dhcp.commit_timeout_ms"),
            ("commit_timeout_ms = 90000", "dhcp.commit_timeout_ms"),
            (
                "commit_delay_ms = 500\ncommit_timeout_ms = 400",
                "dhcp.commit_timeout_ms",
            ),
        ] {
            let KeyError {
                key: k,
                reason: why,
            } = dhcp(text).expect_err(text);
            assert_eq!(k, key, "{text}: {why}");
            assert!(!why.is_empty());
        }
    }
}
