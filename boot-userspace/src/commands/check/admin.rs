//! Whether the admin API's control calls are reachable from the networks Bootfabric serves
//! (DHCP subnets, fabric interfaces) without a token: a machine being provisioned could
//! then reboot the fleet or cancel a run, or at least read every host's timeline.
//!
//! [`exposure`] is pure (the config's admin settings and the served networks in, one item
//! out); [`control`] gathers the fabric interfaces' networks from this machine.

use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use nix::ifaddrs::getifaddrs;

use super::Item;
use crate::config::Config;

/// A network the fabric serves, with what names it (`dhcp.subnets[0]`, `interface fabric0`).
pub type Served = (String, IpNet);

const SUBJECT: &str = "admin control";

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The verdict for an admin server on `listen` open to `allow` (empty: everyone), with or
/// without a token file and TLS, next to the `served` networks.
pub fn exposure(
    listen: SocketAddr,
    allow: &[IpNet],
    token: bool,
    tls: bool,
    served: &[Served],
) -> Item {
    if listen.ip().is_loopback() {
        let how = if token {
            "the token of admin.token_file"
        } else {
            "a loopback peer"
        };
        return Item::pass(
            SUBJECT,
            format!("admin.listen {listen} is loopback only; control needs {how}"),
        );
    }
    let reachable: Vec<&Served> = served
        .iter()
        .filter(|(_, net)| allow.is_empty() || allow.iter().any(|a| overlaps(a, net)))
        .collect();
    let names = reachable
        .iter()
        .map(|(name, net)| format!("{name} {net}"))
        .collect::<Vec<_>>()
        .join(", ");
    let allow_text = if allow.is_empty() {
        "admin.allow is empty (every address)".to_owned()
    } else {
        format!(
            "admin.allow {}",
            allow
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )
    };
    match (token, reachable.is_empty()) {
        (false, false) => Item::fail(
            SUBJECT,
            format!(
                "admin.listen {listen} with {allow_text} is reachable from {names}, and there is \
                 no admin.token_file"
            ),
            "run `bootfabric admin token create` and set admin.token_file, and narrow \
             admin.allow to the management network (or listen on 127.0.0.1)",
        ),
        (true, false) => Item::warn(
            SUBJECT,
            format!(
                "control needs the token, but the read-only endpoints (metrics, host \
                 timelines) are reachable from {names} ({allow_text})"
            ),
            "narrow admin.allow to the management network",
        ),
        (false, true) => Item::warn(
            SUBJECT,
            format!(
                "admin.listen {listen}, {allow_text}: no served network can reach it, and \
                 without admin.token_file control is accepted from loopback only"
            ),
            "run `bootfabric admin token create` and set admin.token_file to allow control \
             from the management network",
        ),
        (true, true) if !tls => Item::warn(
            SUBJECT,
            format!(
                "control needs the token; {allow_text}; but the token crosses the network in clear"
            ),
            "set admin.tls_cert and admin.tls_key (and admin.client_ca for client certificates)",
        ),
        (true, true) => Item::pass(
            SUBJECT,
            format!("control needs the token, over TLS; {allow_text}"),
        ),
    }
}

/// The served networks of `config` on this machine: its DHCP subnets and the IPv4 networks
/// of its fabric interfaces. An error when the interfaces cannot be listed: a check that
/// then saw no fabric network would pass a config it cannot judge.
pub fn served(config: &Config) -> Result<Vec<Served>, nix::Error> {
    let mut out: Vec<Served> = config
        .dhcp
        .iter()
        .flat_map(|d| &d.subnets)
        .enumerate()
        .map(|(i, s)| (format!("dhcp.subnets[{i}]"), IpNet::V4(s.net)))
        .collect();
    // Every address with its netmask (the fabric keeps one per interface): what the admin
    // port would be reachable from.
    for a in getifaddrs()? {
        if !config.interfaces.contains(&a.interface_name) {
            continue;
        }
        let ip = a
            .address
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip());
        let mask = a
            .netmask
            .as_ref()
            .and_then(|s| s.as_sockaddr_in())
            .map(|s| s.ip());
        if let (Some(ip), Some(mask)) = (ip, mask) {
            let prefix = u32::from(mask).leading_ones() as u8;
            if let Ok(net) = IpNet::new(IpAddr::V4(ip), prefix) {
                out.push((format!("interface {}", a.interface_name), net.trunc()));
            }
        }
    }
    Ok(out)
}

/// The admin control item for `config`.
pub fn control(config: &Config) -> Item {
    match served(config) {
        Ok(served) => exposure(
            config.admin.listen,
            &config.admin.allow,
            config.admin.token_file.is_some(),
            config.admin.tls.is_some(),
            &served,
        ),
        Err(e) => Item::fail(
            SUBJECT,
            format!("cannot list this machine's interfaces to see who reaches admin.listen: {e}"),
            "run bootfabric check where it can read the interfaces (as the daemon's user)",
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::check::Status;

    fn net(s: &str) -> IpNet {
        s.parse().expect("cidr")
    }

    fn served() -> Vec<Served> {
        vec![
            ("dhcp.subnets[0]".into(), net("10.77.0.0/24")),
            ("interface fabric0".into(), net("10.77.0.0/24")),
        ]
    }

    fn status(listen: &str, allow: &[&str], token: bool, tls: bool) -> Item {
        let allow: Vec<IpNet> = allow.iter().map(|a| net(a)).collect();
        exposure(listen.parse().expect("addr"), &allow, token, tls, &served())
    }

    #[test]
    fn control_reachable_from_a_served_network_without_a_token_fails() {
        // The old Kubernetes manifest: 0.0.0.0 and a /8 that holds the provisioning subnet.
        let i = status("0.0.0.0:9370", &["10.0.0.0/8", "127.0.0.0/8"], false, false);
        assert_eq!(i.status, Status::Fail, "{i:?}");
        assert!(i.detail.contains("dhcp.subnets[0] 10.77.0.0/24"), "{i:?}");
        assert!(i
            .fix
            .as_deref()
            .unwrap_or("")
            .contains("admin token create"));
        assert_eq!(
            status("0.0.0.0:9370", &[], false, false).status,
            Status::Fail
        );
        // A narrower allow inside the subnet still overlaps it.
        assert_eq!(
            status("10.77.0.1:9370", &["10.77.0.5/32"], false, false).status,
            Status::Fail
        );
    }

    #[test]
    fn loopback_tokens_and_the_management_network_pass_or_warn() {
        assert_eq!(
            status("127.0.0.1:9370", &[], false, false).status,
            Status::Pass
        );
        assert_eq!(status("[::1]:9370", &[], true, false).status, Status::Pass);
        assert_eq!(
            status("0.0.0.0:9370", &["10.20.0.0/24"], true, true).status,
            Status::Pass
        );
        let clear = status("0.0.0.0:9370", &["10.20.0.0/24"], true, false);
        assert_eq!(clear.status, Status::Warn);
        assert!(clear.detail.contains("in clear"), "{clear:?}");
        assert_eq!(
            status("0.0.0.0:9370", &["10.0.0.0/8"], true, true).status,
            Status::Warn
        );
        assert_eq!(
            status("0.0.0.0:9370", &["10.20.0.0/24"], false, false).status,
            Status::Warn
        );
    }
}
