//! Any bytes on UDP port 67: decoding must refuse or accept them without panicking, and an
//! accepted request must go through the server's decisions (address, boot policy, reply
//! encoding) without panicking either, whatever state earlier inputs left behind.
#![no_main]

use std::{cell::RefCell, net::Ipv4Addr, net::SocketAddrV4, path::Path};

use bootfabric::{
    config::{wire::ConfigFile, Config, DhcpMode},
    dhcp::{
        server::{Handled, Ingress, Server, PXE_PORT, SERVER_PORT},
        table::LeaseTable,
        wire::decode_request,
    },
    inventory::Inventory,
};
use dhcproto::{Encodable, Encoder};
use libfuzzer_sys::fuzz_target;

const CONFIG: &str = r#"
[fabric]
interfaces = ["fabric0"]
[dhcp]
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
    let table = LeaseTable::new(&dhcp.subnets, &inventory, &[], 0);
    Server {
        dhcp,
        boot: cfg.boot,
        inventory,
        table,
    }
}

thread_local! {
    static SERVER: RefCell<Server> = RefCell::new(server());
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
    let ingress = Ingress {
        iface: "fabric0",
        server_ip: Ipv4Addr::new(10, 0, 0, 1),
        port,
        peer: SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 7), 68),
    };
    SERVER.with(|s| {
        let mut s = s.borrow_mut();
        s.dhcp.mode = if data.last().is_some_and(|b| b & 1 == 1) {
            DhcpMode::Proxy
        } else {
            DhcpMode::Server
        };
        if let Handled::Reply(reply) = s.handle(&msg, &ingress, 1_000) {
            let mut out = Vec::new();
            reply
                .msg
                .encode(&mut Encoder::new(&mut out))
                .expect("our replies always encode");
        }
    });
});
