//! Test helpers: a DHCP service with a journal in a temporary directory, on the interfaces
//! a test gives it (none at all, or loopback on a port the kernel picks).

use prometheus::Registry;

use super::{journal_path, DhcpService, Ports, Sources};
use crate::{
    config::{dhcp::AddrRange, DhcpConfig, DhcpMode, SubnetConfig},
    fabric::Iface,
    model::{
        boot::{BootSettings, OptionSet},
        inventory::Inventory,
        ledger::Ledger,
    },
};

/// `[dhcp]` with one subnet, `net`, local to `iface`, whose pool is `pool`.
pub fn dhcp(net: &str, iface: &str, pool: &str) -> DhcpConfig {
    DhcpConfig {
        commit_delay_ms: 0,
        mode: DhcpMode::Server,
        authoritative: true,
        rate_limit: 10,
        options: OptionSet {
            lease_time: Some(600),
            ..Default::default()
        },
        subnets: vec![SubnetConfig {
            net: net.parse().expect("net"),
            interface: Some(iface.to_owned()),
            pools: vec![AddrRange::parse(pool).expect("range")],
            exclude: vec![],
            options: OptionSet::default(),
        }],
        guards: Default::default(),
        ipxe_no_pxedhcp: true,
    }
}

/// The inventory of `text` (hosts.toml syntax).
pub fn inventory(text: &str) -> Inventory {
    Inventory::from_wire(
        std::path::Path::new("hosts.toml"),
        toml::from_str(text).expect("toml"),
    )
    .expect("inventory")
}

/// A started service (not running yet), its ledger, and the directory of its journal.
pub struct Started {
    /// The service.
    pub service: DhcpService,
    /// Its ledger.
    pub ledger: Ledger,
    /// Its metrics.
    pub registry: Registry,
    /// Holds the journal; removed on drop.
    pub dir: tempfile::TempDir,
}

/// Starts a service of `dhcp` and `inventory` on `ifaces`, each on a port the kernel picks.
pub fn start(dhcp: DhcpConfig, inventory: Inventory, ifaces: &[Iface]) -> Started {
    let dir = tempfile::tempdir().expect("tempdir");
    let registry = Registry::new();
    let ledger = Ledger::new(&registry).expect("ledger");
    let sources = Sources {
        inventory,
        boot: BootSettings::defaults(),
        ledger: ledger.clone(),
        journal: journal_path(dir.path()),
        config_path: dir.path().join("bootfabric.toml"),
    };
    let ports = Ports { server: 0, pxe: 0 };
    let service =
        DhcpService::start_on(ports, dhcp, ifaces, sources, &registry).expect("DHCP service");
    Started {
        service,
        ledger,
        registry,
        dir,
    }
}
