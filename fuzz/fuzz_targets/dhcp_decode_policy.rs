//! Any bytes on UDP port 67: decoding must refuse or accept them without panicking, and an
//! accepted request must go through the server's decisions (address, boot policy, reply
//! encoding) without panicking either, whatever state earlier inputs left behind.
//!
//! The request comes from one of three sources (a client, the one listed relay, or the
//! request's own `ciaddr`), so the trust checks hold for any datagram: a relayed request
//! (giaddr set) from a source not in `dhcp.relays` gets nothing; a RELEASE commits only when
//! it comes from the address it releases; and, the clock standing still, the two subnets
//! never take more DECLINEs than twice `dhcp.decline_burst` in all.
#![no_main]

use std::{cell::Cell, cell::RefCell, net::Ipv4Addr, net::SocketAddrV4, path::Path};

use bootfabric::{
    config::{wire::ConfigFile, Config, DhcpMode},
    model::inventory::Inventory,
    services::dhcp::{
        journal::LeaseState,
        server::{Handled, Ingress, Server, PXE_PORT, SERVER_PORT},
        wire::decode_request,
    },
};
use dhcproto::{Encodable, Encoder};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[fabric]
interfaces = ["fabric0"]
[dhcp]
relays = ["10.0.0.254"]
decline_burst = 3
[dhcp.options]
dns = ["10.0.0.53"]
lease_time = 600
[[dhcp.subnets]]
cidr = "10.0.0.0/24"
interface = "fabric0"
pools = ["10.0.0.100-10.0.0.120"]
[[dhcp.subnets]]
cidr = "10.9.0.0/24"
pools = ["10.9.0.10-10.9.0.12"]
"#;

const INVENTORY: &str = r#"
[profiles.p]
boot = { uefi_x64 = "shimx64.efi" }
[[hosts]]
name = "h1"
mac = "52:54:00:00:00:01"
ip = "10.0.0.5"
profile = "p"
"#;

fn server() -> Server {
    let wire: ConfigFile = toml::from_str(CONFIG).expect("fuzz config parses");
    let inventory = Inventory::from_wire(
        Path::new("h"),
        toml::from_str(INVENTORY).expect("inventory parses"),
    )
    .expect("inventory is valid");
    let cfg = Config::from_wire(Path::new("f"), wire, inventory.clone()).expect("config is valid");
    let dhcp = cfg.dhcp.expect("dhcp configured");
    Server::new(dhcp, cfg.boot, inventory, &[], 0)
}

/// The listed relay (`dhcp.relays`).
const RELAY: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 254);
/// `dhcp.decline_burst`.
const DECLINE_BURST: usize = 3;
/// Subnets in the config, each with its own DECLINE bucket.
const SUBNETS: usize = 2;

thread_local! {
    static SERVER: RefCell<Server> = RefCell::new(server());
    /// DECLINEs committed so far: the clock stands still, so no bucket ever refills.
    static DECLINED: Cell<usize> = const { Cell::new(0) };
}

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = decode_request(data) else {
        return;
    };
    let port = if data.first().is_some_and(|b| b & 1 == 1) {
        PXE_PORT
    } else {
        SERVER_PORT
    };
    // The last byte (after the options' end, or padding) picks the source, as it does the mode.
    let source = match data.last().map(|b| (b >> 1) & 3) {
        Some(1) => RELAY,
        Some(2) => msg.ciaddr(),
        _ => Ipv4Addr::new(10, 0, 0, 7),
    };
    let ingress = Ingress {
        iface: "fabric0",
        server_ip: Ipv4Addr::new(10, 0, 0, 1),
        port,
        peer: SocketAddrV4::new(source, 68),
    };
    let relayed_by_stranger = !msg.giaddr().is_unspecified() && source != RELAY;
    let kind = msg.opts().msg_type();
    SERVER.with(|s| {
        let mut s = s.borrow_mut();
        s.dhcp.mode = if data.last().is_some_and(|b| b & 1 == 1) {
            DhcpMode::Proxy
        } else {
            DhcpMode::Server
        };
        let handled = s.handle(&msg, &ingress, 1_000);
        // Gets nothing: no answer, and no lease record written for it.
        if relayed_by_stranger {
            assert!(
                matches!(handled, Handled::Drop(_) | Handled::Silent(_)),
                "a relayed {kind:?} from {source}, not a listed relay, got {handled:?}"
            );
        }
        match handled {
            Handled::Reply(reply) => {
                let mut out = Vec::new();
                reply
                    .msg
                    .encode(&mut Encoder::new(&mut out))
                    .expect("our replies always encode");
            }
            Handled::Commit(r) if r.state == LeaseState::Released => {
                assert_eq!(r.ip, source, "a RELEASE from another address committed");
            }
            Handled::Commit(r) if r.state == LeaseState::Declined => {
                let n = DECLINED.get() + 1;
                DECLINED.set(n);
                assert!(
                    n <= DECLINE_BURST * SUBNETS,
                    "DECLINE {n} ({}) accepted: {SUBNETS} subnets with a burst of {DECLINE_BURST}, no time passing",
                    r.ip
                );
            }
            _ => {}
        }
    });
});
