//! `bootfabric explain` and `bootfabric leases`: what the DHCP server would answer, and
//! what it has handed out. Both read the lease journal without changing it, so they are
//! safe to run next to the daemon.

use std::{net::Ipv4Addr, path::PathBuf};

use clap::Args;
use dhcproto::v4::{Architecture, DhcpOption, Message, MessageType, OptionCode, UnknownOption};

use crate::{
    commands::output::{json, lease6_rows, lease_rows, lease_table, Output},
    config::Config,
    fabric::Fabric,
    model::inventory::Mac,
    services::dhcp::{
        self,
        policy::arch,
        server::{Handled, Ingress, Server},
    },
};

/// Arguments of `bootfabric explain`.
#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Config file (TOML).
    #[arg(short, long, default_value = "/etc/bootfabric/bootfabric.toml")]
    pub config: PathBuf,
    /// Client MAC address.
    #[arg(long)]
    pub mac: String,
    /// Client architecture (option 93): 0 BIOS, 6 IA32 UEFI, 7/9 x64 UEFI, 11 arm64 UEFI,
    /// 15/16/19 UEFI HTTP boot. Without it the client is a plain DHCP client.
    #[arg(long)]
    pub arch: Option<u16>,
    /// Vendor class (option 60); defaults to PXEClient, or HTTPClient for arch 15/16/19.
    #[arg(long)]
    pub vendor_class: Option<String>,
    /// User class (option 77), e.g. iPXE.
    #[arg(long)]
    pub user_class: Option<String>,
    /// iPXE's features (its option 175, which also marks the client as iPXE), comma
    /// separated: `http`, `https`, `tftp`, `dns`, `efi`, `bzimage`, `menu` or a feature
    /// number. Debian 12's iPXE sends `http,dns,tftp,...` without `https`.
    #[arg(long, value_delimiter = ',', value_parser = ipxe_feature)]
    pub ipxe_features: Option<Vec<u8>>,
    /// Relay address (giaddr), for relayed clients.
    #[arg(long)]
    pub giaddr: Option<Ipv4Addr>,
    /// Interface the request arrives on (default: the first of fabric.interfaces).
    #[arg(long)]
    pub iface: Option<String>,
    /// The server's address on that interface (default: the interface's, else the
    /// subnet's first host address).
    #[arg(long)]
    pub server_ip: Option<Ipv4Addr>,
    /// Explain the DHCPv6 server's Advertise instead (`[dhcp6]`): the client's DUID is a
    /// DUID-LL of `--mac`, its option 61 `--arch`, option 16 `--vendor-class`, option 15
    /// `--user-class`; it asks on `--iface`'s link.
    #[arg(long)]
    pub ipv6: bool,
}

/// One of iPXE's DHCP feature codes (its `DHCP_EB_FEATURE_*`), by name or number.
fn ipxe_feature(s: &str) -> Result<u8, String> {
    let code = match s.trim().to_ascii_lowercase().as_str() {
        "http" => 0x13,
        "https" => 0x14,
        "tftp" => 0x15,
        "dns" => 0x17,
        "bzimage" => 0x18,
        "efi" => 0x24,
        "menu" => 0x27,
        other => other.parse::<u8>().map_err(|_| {
            format!(
                "{other:?} is not an iPXE feature: http, https, tftp, dns, bzimage, efi, menu or a number"
            )
        })?,
    };
    // Sub-options 1-15 and 176+ are iPXE's settings, not features.
    if !(0x10..0x80).contains(&code) {
        return Err(format!("{code} is not an iPXE feature code (16-127)"));
    }
    Ok(code)
}

/// Option 175 as iPXE sends it: each feature as a sub-option of length 1, version 1.
fn ipxe_option(features: &[u8]) -> Vec<u8> {
    features.iter().flat_map(|&f| [f, 1, 1]).collect()
}

/// Runs `explain`; returns the exit code.
pub fn explain(cfg: &Config, args: &ExplainArgs) -> i32 {
    if args.ipv6 {
        return explain6(cfg, args);
    }
    let Some(dhcp) = cfg.dhcp.clone() else {
        return nothing_to_explain(cfg, "dhcp");
    };
    let Some((mac, iface)) = client(cfg, args) else {
        return 2;
    };
    let server_ip = args
        .server_ip
        .or_else(|| {
            Fabric::resolve(std::slice::from_ref(&iface))
                .get(&iface)?
                .ipv4
        })
        .or_else(|| {
            let s = dhcp
                .subnets
                .iter()
                .find(|s| s.interface.as_deref() == Some(iface.as_str()))
                .or(dhcp.subnets.first())?;
            s.net.hosts().next()
        })
        .unwrap_or(Ipv4Addr::UNSPECIFIED);

    let live = dhcp::read_leases(&dhcp::journal_path(&cfg.state_dir)).unwrap_or_default();
    let now = dhcp::unix_now();
    let mut server = Server::new(dhcp, cfg.boot.clone(), cfg.inventory.clone(), &live, now);

    let mut msg = Message::new_with_id(
        1,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        args.giaddr.unwrap_or(Ipv4Addr::UNSPECIFIED),
        &mac.0,
    );
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Discover));
    let http = matches!(
        args.arch,
        Some(arch::HTTP_IA32 | arch::HTTP_X64 | arch::HTTP_ARM64)
    );
    if let Some(a) = args.arch {
        opts.insert(DhcpOption::ClientSystemArchitecture(Architecture::from(a)));
    }
    let vendor = args.vendor_class.clone().or_else(|| {
        args.arch
            .map(|_| if http { "HTTPClient" } else { "PXEClient" }.to_owned())
    });
    if let Some(v) = &vendor {
        opts.insert(DhcpOption::ClassIdentifier(v.as_bytes().to_vec()));
    }
    if let Some(u) = &args.user_class {
        opts.insert(DhcpOption::UserClass(u.as_bytes().to_vec()));
    }
    if let Some(features) = &args.ipxe_features {
        opts.insert(DhcpOption::Unknown(UnknownOption::new(
            OptionCode::Unknown(175),
            ipxe_option(features),
        )));
    }

    println!(
        "client   {mac}  arch {}  vendor class {}  user class {}{}{}",
        args.arch
            .map(|a| a.to_string())
            .unwrap_or_else(|| "-".into()),
        vendor.as_deref().unwrap_or("-"),
        args.user_class.as_deref().unwrap_or("-"),
        args.ipxe_features
            .as_ref()
            .map(|f| format!("  iPXE features {f:?} (option 175)"))
            .unwrap_or_default(),
        args.giaddr
            .map(|g| format!("  via relay {g}"))
            .unwrap_or_default(),
    );
    let ingress = Ingress {
        iface: &iface,
        server_ip,
        port: dhcp::server::SERVER_PORT,
        // A relayed request is taken as sent from its giaddr (what `dhcp.relays` is checked
        // against); a direct one from a client without an address.
        peer: match args.giaddr {
            Some(g) => std::net::SocketAddrV4::new(g, dhcp::server::SERVER_PORT),
            None => std::net::SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, dhcp::server::CLIENT_PORT),
        },
    };
    match server.subnet_for(&msg, &ingress) {
        Some(i) => println!(
            "subnet   {} (dhcp.subnets[{i}], chosen by {})",
            server.dhcp.subnets[i].net,
            if args.giaddr.is_some() {
                "giaddr"
            } else {
                "arrival interface"
            }
        ),
        None => println!("subnet   none matches (interface {iface:?}, server {server_ip})"),
    }
    match server.handle(&msg, &ingress, now) {
        Handled::Reply(r) => {
            println!("reply    {:?} to {}", r.kind, r.dest);
            println!("  yiaddr     {}", r.msg.yiaddr());
            println!("  siaddr     {}", r.msg.siaddr());
            let file = r.msg.fname_str().and_then(Result::ok).unwrap_or("");
            println!("  file       {}", if file.is_empty() { "-" } else { file });
            for (code, opt) in r.msg.opts().iter() {
                println!("  option {:<3} {}", u8::from(*code), describe(opt));
            }
            println!("decided by");
            for (part, why) in r.rules.iter().chain(r.boot.rules.iter()) {
                println!("  {part:<18} {why}");
            }
            0
        }
        Handled::Drop(reason) => {
            println!("reply    none: dropped ({})", reason.as_str());
            1
        }
        Handled::Silent(why) => {
            println!("reply    none: {why}");
            1
        }
        Handled::Commit(_) => {
            println!("reply    none: the request only changes a lease");
            1
        }
    }
}

/// The exit code and message for a config without the section `explain` reads.
fn nothing_to_explain(cfg: &Config, section: &str) -> i32 {
    eprintln!(
        "bootfabric: {}: no [{section}] section: there is nothing to explain",
        cfg.path.display()
    );
    2
}

/// `--mac` parsed and the interface asked on (`--iface`, else the fabric's first); `None`
/// (said on stderr) for a MAC that does not parse.
fn client(cfg: &Config, args: &ExplainArgs) -> Option<(Mac, String)> {
    let mac: Mac = args
        .mac
        .parse()
        .map_err(|e| eprintln!("bootfabric: --mac: {e}"))
        .ok()?;
    let iface = args
        .iface
        .clone()
        .or_else(|| cfg.interfaces.first().cloned())
        .unwrap_or_default();
    Some((mac, iface))
}

/// `explain --ipv6`: the Advertise the DHCPv6 server would send a Solicit with these facts.
fn explain6(cfg: &Config, args: &ExplainArgs) -> i32 {
    use crate::services::dhcp::v6::{
        server::{client_mac, Link, Server6},
        table::Lease6Record,
        wire::{self, msg, opt, Writer},
    };
    let Some(d6) = cfg.dhcp6.clone() else {
        return nothing_to_explain(cfg, "dhcp6");
    };
    let Some((mac, iface)) = client(cfg, args) else {
        return 2;
    };
    let Some(subnet) = d6.subnet_on(&iface) else {
        eprintln!("bootfabric: no dhcp6.subnets entry is on interface {iface:?}");
        return 2;
    };
    let fabric = Fabric::resolve(std::slice::from_ref(&iface));
    let server = fabric
        .get(&iface)
        .and_then(|f| f.ipv6)
        .unwrap_or_else(|| d6.subnets[subnet].net.network());
    let live = dhcp::journal::read_live::<Lease6Record>(&dhcp::v6::journal_path(&cfg.state_dir))
        .unwrap_or_default();
    let snap = std::sync::Arc::new(crate::model::snapshot::Snapshot {
        generation: 0,
        inventory: cfg.inventory.clone(),
        boot: cfg.boot.clone(),
        scripts: Vec::new(),
        templates: cfg.templates.clone(),
    });
    let mut server6 = Server6::new(
        d6,
        Server6::duid_ll([0; 6]),
        &live,
        std::sync::Arc::clone(&snap),
    );
    let http = matches!(
        args.arch,
        Some(arch::HTTP_IA32 | arch::HTTP_X64 | arch::HTTP_ARM64)
    );
    let vendor = args.vendor_class.clone().or_else(|| {
        args.arch.map(|a| {
            format!(
                "{}:Arch:{a:05}",
                if http { "HTTPClient" } else { "PXEClient" }
            )
        })
    });
    let mut w = Writer::message(msg::SOLICIT, [0, 0, 1]);
    w.opt(opt::CLIENTID, &Server6::duid_ll(mac.0))
        .nested(opt::IA_NA, |w| {
            w.raw(&[0; 12]);
        })
        .opt(opt::ORO, &[0, 59, 0, 23]);
    if let Some(a) = args.arch {
        w.opt(opt::CLIENT_ARCH_TYPE, &a.to_be_bytes());
    }
    if let Some(v) = &vendor {
        let mut body = 343u32.to_be_bytes().to_vec();
        body.extend_from_slice(&(v.len() as u16).to_be_bytes());
        body.extend_from_slice(v.as_bytes());
        w.opt(opt::VENDOR_CLASS, &body);
    }
    if let Some(u) = &args.user_class {
        let mut body = (u.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(u.as_bytes());
        w.opt(opt::USER_CLASS, &body);
    }
    let packet = w.finish();
    let Ok(decoded) = wire::decode(&packet) else {
        eprintln!("bootfabric: the explained Solicit does not decode (a class too long?)");
        return 2;
    };
    println!(
        "client   {mac} (DUID-LL)  arch {}  vendor class {}  user class {}",
        args.arch.map_or_else(|| "-".into(), |a| a.to_string()),
        vendor.as_deref().unwrap_or("-"),
        args.user_class.as_deref().unwrap_or("-"),
    );
    println!(
        "subnet   {} (dhcp6.subnets[{subnet}], on {iface})",
        cfg.dhcp6
            .as_ref()
            .map_or_else(String::new, |d| d.subnets[subnet].net.to_string())
    );
    let found = client_mac(&decoded, std::net::Ipv6Addr::UNSPECIFIED);
    match server6.handle(
        snap,
        &decoded,
        found,
        Link { subnet, server },
        dhcp::unix_now(),
    ) {
        Ok(out) => {
            println!("reply    {}", out.kind);
            for o in wire::options(&out.reply[4..]).flatten() {
                match o {
                    (opt::IA_NA, body) => {
                        let addrs: Vec<String> = wire::options(body.get(12..).unwrap_or(&[]))
                            .flatten()
                            .filter(|(c, _)| *c == opt::IAADDR)
                            .filter_map(|(_, a)| <[u8; 16]>::try_from(a.get(..16)?).ok())
                            .map(|a| std::net::Ipv6Addr::from(a).to_string())
                            .collect();
                        println!(
                            "  IA_NA      {}",
                            if addrs.is_empty() {
                                "no address".into()
                            } else {
                                addrs.join(", ")
                            }
                        );
                    }
                    (opt::BOOTFILE_URL, url) => {
                        println!("  option 59  {:?}", String::from_utf8_lossy(url))
                    }
                    (opt::VENDOR_CLASS, _) => println!("  option 16  HTTPClient"),
                    (opt::STATUS_CODE, b) => println!(
                        "  status     {}",
                        String::from_utf8_lossy(b.get(2..).unwrap_or(&[]))
                    ),
                    _ => {}
                }
            }
            if let Some(h) = found.and_then(|m| cfg.inventory.host_by_mac(&m)) {
                match h.ipv6 {
                    Some(ip) => println!(
                        "decided by\n  address            hosts[{}].ipv6 = {ip} (reservation)",
                        h.name
                    ),
                    None => println!(
                        "decided by\n  address            the pool (hosts[{}] has no ipv6)",
                        h.name
                    ),
                }
            } else {
                println!("decided by\n  address            the pool (not an inventory host)");
            }
            for (part, why) in out.boot.iter().flat_map(|b| b.rules.iter()) {
                println!("  {part:<18} {why}");
            }
            0
        }
        Err(reason) => {
            println!("reply    none: dropped ({reason})");
            1
        }
    }
}

fn describe(opt: &DhcpOption) -> String {
    match opt {
        DhcpOption::BootfileName(b)
        | DhcpOption::TFTPServerName(b)
        | DhcpOption::ClassIdentifier(b) => format!("{:?}", String::from_utf8_lossy(b)),
        other => format!("{other:?}"),
    }
}

/// Runs `leases`; returns the exit code.
pub fn leases(cfg: &Config, all: bool, output: Output) -> i32 {
    let path = dhcp::journal_path(&cfg.state_dir);
    let records = match dhcp::read_leases(&path) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("bootfabric: {e}");
            return 1;
        }
    };
    let mut list = lease_rows(&records, dhcp::unix_now(), all);
    let path6 = dhcp::v6::journal_path(&cfg.state_dir);
    match dhcp::journal::read_live::<dhcp::v6::table::Lease6Record>(&path6) {
        Ok(r) => lease6_rows(&mut list, &r, dhcp::unix_now(), all, |mac| {
            cfg.inventory.host_by_mac(mac).map(|h| h.name.clone())
        }),
        Err(e) => {
            eprintln!("bootfabric: {e}");
            return 1;
        }
    }
    match output {
        Output::Table => print!("{}", lease_table(&list)),
        Output::Json => match json(&list) {
            Ok(text) => print!("{text}"),
            Err(e) => {
                eprintln!("bootfabric: {e}");
                return 1;
            }
        },
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::dhcp::policy::ClientFacts;

    #[test]
    fn ipxe_features_become_the_option_175_the_policy_reads() {
        let parse = |list: &str| {
            list.split(',')
                .map(ipxe_feature)
                .collect::<Result<Vec<_>, _>>()
        };
        let facts = |features: &[u8]| ClientFacts {
            ipxe: Some(ipxe_option(features)),
            ..Default::default()
        };
        let bookworm = parse("http,dns,TFTP").expect("names");
        assert_eq!(bookworm, [0x13, 0x17, 0x15]);
        let f = facts(&bookworm);
        assert!(f.is_ipxe() && f.ipxe_has_http() && f.ipxe_lacks_https());
        let f = facts(&parse("http, https").expect("names"));
        assert!(f.ipxe_has_http() && !f.ipxe_lacks_https());
        assert!(!facts(&parse("tftp,36").expect("number")).ipxe_has_http());
        for bad in ["gopher", "", "300", "1", "176"] {
            assert!(ipxe_feature(bad).is_err(), "{bad:?}");
        }
    }
}
