//! The XDP DHCP fast path, held side by side with the userspace server: the same requests go
//! through `BPF_PROG_TEST_RUN` and through `Server::handle`, and the replies must be the same
//! bytes. What legitimately differs is named where it is checked:
//! - the IP destination of an unrelayed reply without the broadcast flag and without ciaddr:
//!   the kernel unicasts to yiaddr at chaddr (RFC 2131 §4.1), which a UDP socket cannot;
//! - the Ethernet and IP headers as a whole (userspace leaves them to the kernel's stack).

use std::net::{Ipv4Addr, SocketAddrV4};

use bootfabric::services::dhcp::{
    encode_reply,
    server::{Handled, Ingress},
    wire::{decode_request, DropReason},
};
use bootfabric_abi::dhcp::*;
use bootfabric_lab::{
    dhcp_client::Client as DhcpClient,
    have_program, http_get, require, require_root, require_xdp, sample, wait_for,
    xdp_harness::{checksum, frame, Harness, SERVER_MAC},
    Bridge, Daemon, Netns, TempDir,
};
use std::time::Duration;

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;

const SERVER_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(10, 88, 0, 1);

const INVENTORY: &str = r#"
[profiles.installer]
kernel = "debian/linux"
initrd = ["debian/initrd.gz"]

[profiles.rescue]
kernel = "rescue/vmlinuz"
boot = { ipxe_script = "rescue.ipxe", uefi_x64 = "snponly.efi" }

[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.11"
profile = "installer"

[[hosts]]
name = "node-with-a-much-longer-name-02"
mac = "52:54:00:b0:0f:02"
ip = "10.77.0.12"
profile = "installer"

[[hosts]]
name = "r3"
mac = "52:54:00:b0:0f:03"
ip = "10.77.0.13"
profile = "rescue"
options = { lease_time = 300, mtu = 9000 }

[[hosts]]
name = "far04"
mac = "52:54:00:b0:0f:04"
ip = "10.88.0.20"
profile = "installer"

[[hosts]]
name = "denied06"
mac = "52:54:00:b0:0f:06"
ip = "10.77.0.16"
profile = "installer"
netboot = "deny"
"#;

const CONFIG: &str = r#"
[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[dhcp]
authoritative = true
[dhcp.options]
dns = ["10.77.0.53"]
domain = "rack1.example"
lease_time = 600
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
options = { router = "10.77.0.1" }
[[dhcp.subnets]]
cidr = "10.88.0.0/24"
pools = ["10.88.0.100-10.88.0.199"]
options = { router = "10.88.0.1", ntp = ["10.88.0.5"] }
[boot]
bios = "undionly.kpxe"
uefi_x64 = "ipxe.efi"
uefi_arm64 = "ipxe-arm64.efi"
uefi_http_x64 = "boot/ipxe.efi"
ipxe_script = "boot.ipxe"
http_base = "http://{server}"
"#;

/// `bootfabric_xdp_dhcp_packets_total{action, reason}` in the metrics text `m`; 0 while
/// the kernel has not counted such a packet yet (the series appears on its first one).
fn xdp_packets(m: &str, action: &str, reason: &str) -> f64 {
    sample(
        m,
        "bootfabric_xdp_dhcp_packets_total",
        &[("action", action), ("reason", reason)],
    )
    .unwrap_or(0.0)
}

fn mac(n: u8) -> [u8; 6] {
    [0x52, 0x54, 0, 0xb0, 0x0f, n]
}

/// What a client says about itself, shaped after real firmware and OS clients.
#[derive(Clone, Copy, Debug)]
enum Client {
    /// dhclient-like: option 55, 57, 61 and a host name.
    Plain,
    /// QEMU's iPXE ROM: user class iPXE, option 175 with HTTP, PXEClient arch 0, UUID.
    Ipxe,
    /// iPXE built without HTTP.
    IpxeNoHttp,
    /// A PXE ROM of architecture `arch` (OVMF sends 7), with UUID and option 94.
    Pxe(u16),
    /// UEFI HTTP boot of architecture `arch`.
    HttpBoot(u16),
}

#[derive(Clone, Copy)]
struct Req {
    client: Client,
    kind: u8,
    mac: [u8; 6],
    broadcast: bool,
    ciaddr: Ipv4Addr,
    giaddr: Ipv4Addr,
    server_id: Option<Ipv4Addr>,
    requested: Option<Ipv4Addr>,
    relay_info: bool,
    xid: u32,
}

fn opt(out: &mut Vec<u8>, code: u8, v: &[u8]) {
    out.push(code);
    out.push(v.len() as u8);
    out.extend_from_slice(v);
}

fn payload(r: &Req) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[3] = u8::from(!r.giaddr.is_unspecified());
    p[4..8].copy_from_slice(&r.xid.to_be_bytes());
    p[8..10].copy_from_slice(&[0, 4]); // secs
    if r.broadcast {
        p[10] = 0x80;
    }
    p[12..16].copy_from_slice(&r.ciaddr.octets());
    p[24..28].copy_from_slice(&r.giaddr.octets());
    p[28..34].copy_from_slice(&r.mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    opt(&mut p, 53, &[r.kind]);
    if let Some(s) = r.server_id {
        opt(&mut p, 54, &s.octets());
    }
    if let Some(ip) = r.requested {
        opt(&mut p, 50, &ip.octets());
    }
    opt(&mut p, 57, &1472u16.to_be_bytes());
    let uuid: Vec<u8> = std::iter::once(0).chain(1..=16).collect();
    match r.client {
        Client::Plain => {
            opt(&mut p, 55, &[1, 3, 6, 12, 15, 26, 28, 42, 119]);
            let mut id = vec![1];
            id.extend_from_slice(&r.mac);
            opt(&mut p, 61, &id);
            opt(&mut p, 12, b"client-says-hi");
        }
        Client::Ipxe | Client::IpxeNoHttp => {
            opt(&mut p, 93, &[0, 0]);
            opt(&mut p, 94, &[1, 2, 1]);
            opt(&mut p, 60, b"PXEClient:Arch:00000:UNDI:002001");
            opt(&mut p, 77, b"iPXE");
            opt(
                &mut p,
                55,
                &[1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 175],
            );
            let http = u8::from(matches!(r.client, Client::Ipxe));
            opt(
                &mut p,
                175,
                &[
                    177, 5, 1, 0x10, 0xec, 0x81, 0x39, 19, 1, http, 235, 3, 1, 21, 1,
                ],
            );
            opt(&mut p, 97, &uuid);
        }
        Client::Pxe(arch) => {
            opt(&mut p, 93, &arch.to_be_bytes());
            opt(&mut p, 94, &[1, 3, 0]);
            opt(
                &mut p,
                60,
                format!("PXEClient:Arch:{arch:05}:UNDI:003000").as_bytes(),
            );
            opt(
                &mut p,
                55,
                &[
                    1, 2, 3, 4, 5, 6, 12, 13, 15, 17, 18, 22, 23, 28, 40, 41, 42, 43, 50, 51, 54,
                    58, 59, 60, 66, 67, 97, 128, 129, 130, 131, 132, 133, 134, 135,
                ],
            );
            opt(&mut p, 97, &uuid);
        }
        Client::HttpBoot(arch) => {
            opt(&mut p, 93, &arch.to_be_bytes());
            opt(
                &mut p,
                60,
                format!("HTTPClient:Arch:{arch:05}:UNDI:003001").as_bytes(),
            );
            opt(&mut p, 97, &uuid);
        }
    }
    if r.relay_info {
        opt(
            &mut p,
            82,
            &[1, 5, b'p', b'o', b'r', b't', b'7', 2, 2, 0xab, 0xcd],
        );
    }
    p.push(255);
    p
}

/// A reserved host's DISCOVER or REQUEST (selecting `addr` from this server), straight from
/// the host or through the relay at `giaddr` (with option 82).
fn exchange(
    client: Client,
    kind: u8,
    host: u8,
    addr: Ipv4Addr,
    giaddr: Ipv4Addr,
    broadcast: bool,
    xid: u32,
) -> Req {
    Req {
        client,
        kind,
        mac: mac(host),
        broadcast,
        ciaddr: Ipv4Addr::UNSPECIFIED,
        giaddr,
        server_id: (kind == DHCPREQUEST).then_some(SERVER_IP),
        requested: (kind == DHCPREQUEST).then_some(addr),
        relay_info: !giaddr.is_unspecified(),
        xid,
    }
}

fn request_frame(r: &Req, vlan: Option<u16>) -> Vec<u8> {
    request_frame_from(r, vlan, RELAY_IP)
}

/// The frame of `r`, sent from `relay` when `r` is relayed.
fn request_frame_from(r: &Req, vlan: Option<u16>, relay: Ipv4Addr) -> Vec<u8> {
    let relayed = !r.giaddr.is_unspecified();
    let (src, dst) = if relayed {
        ((relay, 67), (SERVER_IP, 67))
    } else if !r.ciaddr.is_unspecified() {
        ((r.ciaddr, 68), (SERVER_IP, 67))
    } else {
        ((Ipv4Addr::UNSPECIFIED, 68), (Ipv4Addr::BROADCAST, 67))
    };
    let src_mac = if relayed {
        [2, 0x88, 0, 0, 0, 1]
    } else {
        r.mac
    };
    frame(src_mac, [0xff; 6], src, dst, vlan, &payload(r))
}

struct Parsed {
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    dst_port: u16,
    payload: Vec<u8>,
}

/// Parses the frame the program sent, checking its lengths and both checksums.
fn parse_reply(f: &[u8], vlan: Option<u16>) -> Parsed {
    let l3 = if vlan.is_some() { 18 } else { 14 };
    if let Some(tag) = vlan {
        assert_eq!(&f[12..14], &[0x81, 0x00], "VLAN tag kept");
        assert_eq!(&f[14..16], &tag.to_be_bytes());
    }
    assert_eq!(&f[l3 - 2..l3], &[0x08, 0x00]);
    let ip = &f[l3..l3 + 20];
    assert_eq!(ip[0], 0x45);
    assert_eq!(ip[9], 17);
    assert_eq!(checksum(ip, 0), 0, "IPv4 header checksum");
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert_eq!(total, f.len() - l3, "IPv4 total length");
    let udp = &f[l3 + 20..];
    let ulen = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    assert_eq!(ulen, udp.len(), "UDP length");
    let src_ip = Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]);
    let dst_ip = Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]);
    let s = src_ip.octets();
    let d = dst_ip.octets();
    let pseudo = u32::from(u16::from_be_bytes([s[0], s[1]]))
        + u32::from(u16::from_be_bytes([s[2], s[3]]))
        + u32::from(u16::from_be_bytes([d[0], d[1]]))
        + u32::from(u16::from_be_bytes([d[2], d[3]]))
        + 17
        + ulen as u32;
    assert_ne!(&udp[6..8], &[0, 0], "UDP checksum present");
    assert_eq!(checksum(udp, pseudo), 0, "UDP checksum");
    assert_eq!(&udp[0..2], &67u16.to_be_bytes(), "source port");
    Parsed {
        dst_mac: f[0..6].try_into().expect("6"),
        src_mac: f[6..12].try_into().expect("6"),
        src_ip,
        dst_ip,
        dst_port: u16::from_be_bytes([udp[2], udp[3]]),
        payload: udp[8..].to_vec(),
    }
}

/// The userspace server's answer to the same payload: (bytes as sent, destination).
fn userspace(h: &mut Harness, r: &Req) -> Option<(Vec<u8>, SocketAddrV4)> {
    match handle_from(h, r, RELAY_IP) {
        // The same encoder and padding the daemon's socket loop uses.
        Handled::Reply(reply) => Some((encode_reply(&reply.msg).expect("encode"), reply.dest)),
        _ => None,
    }
}

/// What the userspace server does with `r`, sent from `relay` when `r` is relayed.
fn handle_from(h: &mut Harness, r: &Req, relay: Ipv4Addr) -> Handled {
    let msg = decode_request(&payload(r)).expect("userspace decodes it");
    let peer = if r.giaddr.is_unspecified() {
        SocketAddrV4::new(r.ciaddr, 68)
    } else {
        SocketAddrV4::new(relay, 67)
    };
    let ingress = Ingress {
        iface: "fabric0",
        server_ip: SERVER_IP,
        port: 67,
        peer,
    };
    h.server.handle(&msg, &ingress, 1_000)
}

fn harness(test: &str) -> Option<(Harness, TempDir)> {
    harness_with(test, CONFIG)
}

fn harness_with(test: &str, config: &str) -> Option<(Harness, TempDir)> {
    if !require_root(test) {
        return None;
    }
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(dir.path.join("hosts.toml"), INVENTORY).expect("inventory");
    std::fs::write(dir.path.join("bootfabric.toml"), config).expect("config");
    let h = Harness::new(&dir.path.join("bootfabric.toml"), SERVER_IP).expect("harness");
    if !require(
        h.is_some(),
        test,
        "the binary has no eBPF object (build with `cargo xtask build`)",
    ) {
        return None;
    }
    h.map(|h| (h, dir))
}

/// Runs `f` with a harness inside a namespace of its own: test runs report the caller's
/// loopback as the ingress device, and the lab's must not be the host's.
fn with_harness(test: &'static str, f: impl FnOnce(&mut Harness) + Send + 'static) {
    let ns = Netns::new("xdp").expect("netns");
    ns.run(move || {
        if let Some((mut h, _dir)) = harness(test) {
            f(&mut h);
        }
    })
    .expect("namespace");
}

#[test]
fn kernel_replies_equal_userspace_replies() {
    // Test runs report loopback as the ingress device: run them in a namespace of our own.
    with_harness("kernel_replies_equal_userspace_replies", |h| {
        let clients = [
            Client::Plain,
            Client::Ipxe,
            Client::IpxeNoHttp,
            Client::Pxe(0),
            Client::Pxe(7),
            Client::Pxe(9),
            Client::Pxe(11),
            Client::Pxe(6),
            Client::HttpBoot(16),
            Client::HttpBoot(19),
        ];
        let mut answered = 0;
        // Answers with an event: all but an ACK whose host's previous answer was an ACK (the
        // same lease, reported already; see `report` in the program).
        let mut reported = 0;
        let mut last_kind = std::collections::HashMap::new();
        let mut xid = 0x1000;
        for (host, addr, giaddr) in [
            (1u8, Ipv4Addr::new(10, 77, 0, 11), Ipv4Addr::UNSPECIFIED),
            (2, Ipv4Addr::new(10, 77, 0, 12), Ipv4Addr::UNSPECIFIED),
            (3, Ipv4Addr::new(10, 77, 0, 13), Ipv4Addr::UNSPECIFIED),
            (4, Ipv4Addr::new(10, 88, 0, 20), RELAY_IP),
            // netboot = deny: address and network options only, from the kernel as well.
            (6, Ipv4Addr::new(10, 77, 0, 16), Ipv4Addr::UNSPECIFIED),
        ] {
            for client in clients {
                for (kind, broadcast, vlan) in [
                    (DHCPDISCOVER, true, None),
                    (DHCPDISCOVER, false, None),
                    (DHCPREQUEST, true, None),
                    (DHCPREQUEST, false, Some(0x0123)),
                ] {
                    xid += 1;
                    let r = exchange(client, kind, host, addr, giaddr, broadcast, xid);
                    let case = format!(
                        "host {host} {client:?} type {kind} broadcast {broadcast} vlan {vlan:?}"
                    );
                    let (action, out) = h.run(&request_frame(&r, vlan)).expect("test run");
                    assert_eq!(action, XDP_TX, "{case}: answered in the kernel");
                    let (expect, dest) = userspace(h, &r).expect("userspace replies");
                    let got = parse_reply(&out, vlan);
                    assert_eq!(got.payload.len(), expect.len(), "{case}: length");
                    if got.payload != expect {
                        let at = got
                            .payload
                            .iter()
                            .zip(&expect)
                            .position(|(a, b)| a != b)
                            .unwrap_or(0);
                        panic!(
                            "{case}: first difference at byte {at}\nkernel:    {:02x?}\nuserspace: {:02x?}",
                            &got.payload[at.saturating_sub(8)..(at + 24).min(got.payload.len())],
                            &expect[at.saturating_sub(8)..(at + 24).min(expect.len())]
                        );
                    }
                    assert_eq!(got.src_mac, SERVER_MAC, "{case}");
                    assert_eq!(got.src_ip, SERVER_IP, "{case}");
                    if giaddr.is_unspecified() && !broadcast {
                        // The one named difference: RFC 2131 unicast to yiaddr at chaddr.
                        assert_eq!(got.dst_ip, addr, "{case}");
                        assert_eq!(got.dst_mac, mac(host), "{case}");
                        assert_eq!(*dest.ip(), Ipv4Addr::BROADCAST, "{case}");
                        assert_eq!(got.dst_port, dest.port(), "{case}");
                    } else {
                        assert_eq!(got.dst_ip, *dest.ip(), "{case}: destination");
                        assert_eq!(got.dst_port, dest.port(), "{case}: port");
                        let want_mac = if giaddr.is_unspecified() {
                            [0xff; 6]
                        } else {
                            [2, 0x88, 0, 0, 0, 1]
                        };
                        assert_eq!(got.dst_mac, want_mac, "{case}");
                    }
                    answered += 1;
                    if last_kind.insert(host, kind) != Some(DHCPREQUEST) || kind != DHCPREQUEST {
                        reported += 1;
                    }
                }
            }
        }
        // RENEWING: ciaddr set, no server id, no requested address: unicast to ciaddr.
        let r = Req {
            client: Client::Plain,
            kind: DHCPREQUEST,
            mac: mac(1),
            broadcast: false,
            ciaddr: Ipv4Addr::new(10, 77, 0, 11),
            giaddr: Ipv4Addr::UNSPECIFIED,
            server_id: None,
            requested: None,
            relay_info: false,
            xid: 77,
        };
        let (action, out) = h.run(&request_frame(&r, None)).expect("run");
        assert_eq!(action, XDP_TX, "renewal answered in the kernel");
        let (expect, dest) = userspace(h, &r).expect("userspace");
        let got = parse_reply(&out, None);
        assert_eq!(got.payload, expect, "renewal ACK");
        assert_eq!(got.dst_ip, *dest.ip());
        assert_eq!(got.dst_mac, mac(1), "unicast to the renewing client");
        // Host 1's last answer was an ACK of the same lease: the renewal is not reported.
        answered += 1;

        let events = h.events();
        assert_eq!(events.len(), reported, "one event per reported answer");
        let stats = h.stats();
        assert_eq!(
            stats[STAT_ANSWERED_OFFER as usize] + stats[STAT_ANSWERED_ACK as usize],
            answered as u64
        );
        assert_eq!(
            stats[STAT_ACK_UNREPORTED as usize],
            (answered - reported) as u64,
            "every answer is either reported or counted as unreported"
        );
        println!("{answered} kernel replies identical to the userspace server's");
    });
}

/// Issue 14 item 7, the kernel's half: with `dhcp.relays` set, a relayed request for a
/// reserved host's MAC from a source that is not a listed relay must not be answered in the
/// kernel, which would send the host's reservation to whatever giaddr:67 the sender names (a
/// reflector past `dhcp.relays`). It goes to userspace, which drops it as
/// `relay_not_allowed`. The listed relays (an address and a CIDR) are answered in the kernel
/// with the userspace server's bytes, and a resync after a reload follows the list.
#[test]
fn attack_forged_relayed_request_for_a_reserved_host_is_not_answered_in_the_kernel() {
    let t = "attack_forged_relayed_request_for_a_reserved_host_is_not_answered_in_the_kernel";
    let ns = Netns::new("xdp").expect("netns");
    ns.run(move || {
        let config = CONFIG.replace(
            "[dhcp]\n",
            "[dhcp]\nrelays = [\"10.88.0.1\", \"10.99.0.0/16\"]\n",
        );
        let Some((mut h, _dir)) = harness_with(t, &config) else {
            return;
        };
        // A machine on the fabric, forging the relayed subnet's gateway as giaddr.
        let attacker = Ipv4Addr::new(10, 77, 0, 2);
        let far = Ipv4Addr::new(10, 88, 0, 20);
        let relayed = |client: Client, kind: u8, broadcast: bool, xid: u32| Req {
            client,
            kind,
            mac: mac(4),
            broadcast,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: RELAY_IP,
            server_id: (kind == DHCPREQUEST).then_some(SERVER_IP),
            requested: (kind == DHCPREQUEST).then_some(far),
            relay_info: true,
            xid,
        };
        let name = |kind: u8| if kind == DHCPDISCOVER { "DISCOVER" } else { "REQUEST" };
        // Not answered in the kernel, and dropped as relay_not_allowed by userspace.
        let refused = |h: &mut Harness, r: &Req, src: Ipv4Addr, why: &str| {
            let (action, out) = h.run(&request_frame_from(r, None, src)).expect("test run");
            if action == XDP_TX {
                let got = parse_reply(&out, None);
                panic!(
                    "a forged relayed {} for reserved host far04 from {src} ({why}) was answered in the kernel: {} sent to {}:{}",
                    name(r.kind),
                    Ipv4Addr::new(got.payload[16], got.payload[17], got.payload[18], got.payload[19]),
                    got.dst_ip,
                    got.dst_port
                );
            }
            assert_eq!(action, XDP_PASS, "{} from {src}: passed to userspace", name(r.kind));
            match handle_from(h, r, src) {
                Handled::Drop(DropReason::RelayNotAllowed) => {}
                other => panic!("userspace did not drop the relayed request from {src}: {other:?}"),
            }
        };
        // Answered in the kernel with exactly the userspace server's reply, sent to giaddr:67
        // through the relay's MAC.
        let answered = |h: &mut Harness, r: &Req, vlan: Option<u16>, src: Ipv4Addr| {
            let case = format!("{:?} {} broadcast {} from {src}", r.client, name(r.kind), r.broadcast);
            let (action, out) = h.run(&request_frame_from(r, vlan, src)).expect("test run");
            assert_eq!(action, XDP_TX, "{case}: answered in the kernel");
            let (expect, dest) = match handle_from(h, r, src) {
                Handled::Reply(reply) => {
                    (encode_reply(&reply.msg).expect("encode"), reply.dest)
                }
                other => panic!("{case}: userspace did not answer: {other:?}"),
            };
            let got = parse_reply(&out, vlan);
            assert_eq!(got.payload, expect, "{case}: kernel and userspace bytes");
            assert_eq!((got.dst_ip, got.dst_port), (*dest.ip(), dest.port()), "{case}");
            assert_eq!((got.dst_ip, got.dst_port), (RELAY_IP, 67), "{case}: to giaddr");
            assert_eq!(got.dst_mac, [2, 0x88, 0, 0, 0, 1], "{case}: to the relay's MAC");
        };

        let before = h.stats();
        for (kind, xid) in [(DHCPDISCOVER, 0x7001), (DHCPREQUEST, 0x7002)] {
            let r = relayed(Client::Pxe(7), kind, false, xid);
            refused(&mut h, &r, attacker, "not in dhcp.relays");
        }
        // Outside the /16 by one bit, and the listed address's neighbour.
        refused(
            &mut h,
            &relayed(Client::Plain, DHCPDISCOVER, true, 0x7003),
            Ipv4Addr::new(10, 98, 255, 255),
            "not in dhcp.relays",
        );
        refused(
            &mut h,
            &relayed(Client::Plain, DHCPDISCOVER, true, 0x7004),
            Ipv4Addr::new(10, 88, 0, 2),
            "not in dhcp.relays",
        );
        let after = h.stats();
        let d = |i: u32| after[i as usize] - before[i as usize];
        assert_eq!(d(STAT_PASSED_RELAY_NOT_ALLOWED), 4, "counted by reason");
        assert_eq!(d(STAT_ANSWERED_OFFER) + d(STAT_ANSWERED_ACK), 0);
        assert!(h.events().is_empty(), "no event for what the kernel did not answer");

        // The listed relays, every client variant: the kernel answers as userspace does.
        let mut xid = 0x7100;
        for src in [RELAY_IP, Ipv4Addr::new(10, 99, 3, 4)] {
            for client in [
                Client::Plain,
                Client::Ipxe,
                Client::IpxeNoHttp,
                Client::Pxe(0),
                Client::Pxe(7),
                Client::HttpBoot(16),
            ] {
                for (kind, broadcast, vlan) in [
                    (DHCPDISCOVER, true, None),
                    (DHCPDISCOVER, false, Some(0x0123)),
                    (DHCPREQUEST, false, None),
                ] {
                    xid += 1;
                    answered(&mut h, &relayed(client, kind, broadcast, xid), vlan, src);
                }
            }
        }
        h.events();

        // A reload to `relays = []` trusts no relay, in the kernel too once resynced...
        let mut guards = h.server.dhcp.guards.clone();
        guards.relays = Some(Vec::new());
        h.server.set_guards(guards.clone());
        h.fast_path.sync(&h.server).expect("resync");
        refused(
            &mut h,
            &relayed(Client::Pxe(7), DHCPDISCOVER, false, 0x7201),
            RELAY_IP,
            "dhcp.relays = []",
        );
        // ...and one that removes the key trusts a giaddr from anyone, as userspace does.
        guards.relays = None;
        h.server.set_guards(guards);
        h.fast_path.sync(&h.server).expect("resync");
        answered(
            &mut h,
            &relayed(Client::Pxe(7), DHCPDISCOVER, false, 0x7202),
            None,
            attacker,
        );
    })
    .expect("namespace");
}

/// The same attack over a veth, as a machine on the fabric makes it: it forges a relay's
/// DISCOVER for reserved host far04 (giaddr 10.88.0.1, which it also holds, so that an answer
/// to giaddr:67 comes back to it) and sends it to the daemon, which runs the XDP fast path
/// with `dhcp.relays = ["10.77.0.254"]`. No answer comes: the program passes it
/// (`relay_not_allowed`) and userspace drops it (`relay_not_allowed`). The listed relay gets
/// the kernel's answer; after a SIGHUP to `relays = []` it does not.
#[test]
fn attack_forged_relay_over_a_veth_gets_no_kernel_answer() {
    let t = "attack_forged_relay_over_a_veth_gets_no_kernel_answer";
    if !require_root(t) {
        return;
    }
    let lab = bootfabric_lab::PairLab::new().expect("lab");
    lab.client
        .ip(&["addr", "add", "10.88.0.1/32", "dev", "client0"])
        .expect("giaddr");
    // Userspace answers relayed requests through the routing table; the kernel through the
    // request's source MAC.
    lab.server
        .ip(&["route", "add", "10.88.0.0/24", "via", "10.77.0.2"])
        .expect("route");
    let config = |relays: &str| CONFIG.replace("[dhcp]\n", &format!("[dhcp]\nrelays = {relays}\n"));
    let daemon = Daemon::start(
        &lab.server,
        &config(r#"["10.77.0.254"]"#),
        &[("hosts.toml", INVENTORY)],
    )
    .expect("daemon");
    let metrics = || bootfabric_lab::metrics(&lab.server, &daemon).expect("metrics");
    if !require_xdp(t, &lab.server, &daemon) {
        return;
    }
    let relayed = |xid: u32| {
        lab.client
            .run(move || {
                let c = DhcpClient::bind_port(67).expect("bind 67");
                let mut m = DhcpClient::message(mac(4), xid, dhcproto::v4::MessageType::Discover);
                m.set_giaddr(RELAY_IP).set_hops(1);
                c.send_to(&m, "10.77.0.1:67".parse().expect("addr"))
                    .expect("send");
                c.reply(xid, Duration::from_secs(3))
            })
            .expect("client namespace")
    };
    let userspace_drops = |m: &str| {
        sample(
            m,
            "bootfabric_dhcp_dropped_total",
            &[("reason", "relay_not_allowed")],
        )
        .unwrap_or(0.0)
    };
    // Waits until the program passed `n` forged requests and userspace dropped them.
    let refused = |n: f64| {
        wait_for(Duration::from_secs(30), || {
            let m = metrics();
            (xdp_packets(&m, "passed", "relay_not_allowed") >= n && userspace_drops(&m) >= n)
                .then_some(())
        })
        .unwrap_or_else(|| {
            panic!(
                "not passed and dropped as relay_not_allowed:\n{}",
                metrics()
            )
        })
    };

    let got = relayed(0x7301);
    assert!(
        got.is_none(),
        "a forged relayed DISCOVER for reserved host far04 from 10.77.0.2 (not in dhcp.relays) was answered: {:?} offered to 10.88.0.1:67 (kernel offers: {})",
        got.map(|m| m.yiaddr()),
        xdp_packets(&metrics(), "answered", "offer")
    );
    refused(1.0);
    assert_eq!(xdp_packets(&metrics(), "answered", "offer"), 0.0);

    // The listed relay: the same request from 10.77.0.254 is answered in the kernel.
    lab.client_speaks_as("10.77.0.254/24", Ipv4Addr::new(10, 77, 0, 1))
        .expect("relay address");
    let got = relayed(0x7302);
    assert_eq!(
        got.map(|m| m.yiaddr()),
        Some(Ipv4Addr::new(10, 88, 0, 20)),
        "the listed relay was not served:\n{}",
        daemon.log()
    );
    assert_eq!(
        xdp_packets(&metrics(), "answered", "offer"),
        1.0,
        "the listed relay's request was answered in the kernel"
    );

    // SIGHUP with `relays = []`: no relay is trusted, in the kernel as in userspace.
    std::fs::write(daemon.config_path(), config("[]")).expect("config");
    daemon.reload("fast path resynced").expect("reload");
    let got = relayed(0x7303);
    assert!(
        got.is_none(),
        "after the reload to relays = [], the relay was answered: {:?}",
        got.map(|m| m.yiaddr())
    );
    refused(2.0);
    assert_eq!(xdp_packets(&metrics(), "answered", "offer"), 1.0);
}

#[test]
fn requests_the_kernel_does_not_own_pass_and_malformed_ones_drop() {
    with_harness(
        "requests_the_kernel_does_not_own_pass_and_malformed_ones_drop",
        |h| {
            let base = |kind: u8, m: [u8; 6]| Req {
                client: Client::Pxe(7),
                kind,
                mac: m,
                broadcast: true,
                ciaddr: Ipv4Addr::UNSPECIFIED,
                giaddr: Ipv4Addr::UNSPECIFIED,
                server_id: None,
                requested: None,
                relay_info: false,
                xid: 9,
            };
            let run = |f: Vec<u8>| h.run(&f).expect("run").0;
            let before = h.stats();
            // Passed, each with its reason.
            let unknown = base(DHCPDISCOVER, [0x52, 0x54, 0, 0xee, 0xee, 1]);
            assert_eq!(run(request_frame(&unknown, None)), XDP_PASS, "unknown MAC");
            let mut other = base(DHCPREQUEST, mac(1));
            other.server_id = Some(Ipv4Addr::new(10, 77, 0, 2));
            other.requested = Some(Ipv4Addr::new(10, 77, 0, 11));
            assert_eq!(
                run(request_frame(&other, None)),
                XDP_PASS,
                "another server's offer"
            );
            let mut wrong = base(DHCPREQUEST, mac(1));
            wrong.requested = Some(Ipv4Addr::new(10, 77, 0, 150));
            assert_eq!(
                run(request_frame(&wrong, None)),
                XDP_PASS,
                "INIT-REBOOT elsewhere"
            );
            let mut far = base(DHCPDISCOVER, mac(4));
            far.giaddr = Ipv4Addr::UNSPECIFIED;
            assert_eq!(
                run(request_frame(&far, None)),
                XDP_PASS,
                "reservation on another subnet"
            );
            for kind in [DHCPRELEASE, DHCPDECLINE, DHCPINFORM] {
                assert_eq!(
                    run(request_frame(&base(kind, mac(1)), None)),
                    XDP_PASS,
                    "type {kind}"
                );
            }
            let odd = base(DHCPDISCOVER, mac(1));
            let mut p = payload(&odd);
            p.pop();
            p.extend_from_slice(&[52, 1, 3, 255]); // option overload
            let f = frame(
                mac(1),
                [0xff; 6],
                (Ipv4Addr::UNSPECIFIED, 68),
                (Ipv4Addr::BROADCAST, 67),
                None,
                &p,
            );
            assert_eq!(run(f), XDP_PASS, "option overload is userspace's");
            let mut arch = base(DHCPDISCOVER, mac(1));
            arch.client = Client::Pxe(0x1234);
            assert_eq!(
                run(request_frame(&arch, None)),
                XDP_PASS,
                "unknown architecture"
            );

            // Dropped, each with its reason; the userspace decoder refuses each one too, so no
            // request is answered by one path and refused by the other.
            let good = payload(&base(DHCPDISCOVER, mac(1)));
            let with = |f: &dyn Fn(&mut Vec<u8>)| {
                let mut p = good.clone();
                f(&mut p);
                p
            };
            let opts = |tail: &[u8]| {
                let mut p = good[..240].to_vec();
                p.extend_from_slice(tail);
                p
            };
            let bad: Vec<(&str, Vec<u8>)> = vec![
                ("bad cookie", with(&|p| p[236] = 0)),
                ("BOOTREPLY to the server port", with(&|p| p[0] = 2)),
                ("multicast chaddr", with(&|p| p[28] = 1)),
                ("truncated", good[..200].to_vec()),
                ("option runs past the end", opts(&[53, 1, 1, 60, 40, b'P'])),
                ("option 53 of length 2", opts(&[53, 2, 1, 1, 255])),
                (
                    "an OFFER sent to the server",
                    opts(&[53, 1, DHCPOFFER, 255]),
                ),
                ("no message type", opts(&[60, 3, b'a', b'b', b'c', 255])),
            ];
            for (what, p) in &bad {
                let f = frame(
                    mac(1),
                    [0xff; 6],
                    (Ipv4Addr::UNSPECIFIED, 68),
                    (Ipv4Addr::BROADCAST, 67),
                    None,
                    p,
                );
                assert_eq!(run(f), XDP_DROP, "{what}");
                assert!(decode_request(p).is_err(), "userspace accepts {what}");
            }
            let after = h.stats();
            let d = |i: u32| after[i as usize] - before[i as usize];
            assert_eq!(d(STAT_PASSED_UNKNOWN_HOST), 1);
            assert_eq!(d(STAT_PASSED_NOT_OURS), 3);
            assert_eq!(d(STAT_PASSED_MESSAGE_TYPE), 3);
            assert_eq!(d(STAT_PASSED_UNSUPPORTED), 2);
            assert_eq!(d(STAT_DROP_BAD_COOKIE), 1);
            assert_eq!(d(STAT_DROP_WRONG_OP), 1);
            assert_eq!(d(STAT_DROP_BAD_HARDWARE), 1);
            assert_eq!(d(STAT_DROP_TRUNCATED), 1);
            assert_eq!(d(STAT_DROP_BAD_OPTION), 2);
            assert_eq!(d(STAT_DROP_UNEXPECTED_TYPE), 1);
            assert_eq!(d(STAT_DROP_NO_MESSAGE_TYPE), 1);
            assert_eq!(d(STAT_ANSWERED_OFFER) + d(STAT_ANSWERED_ACK), 0);
        },
    );
}

/// Real clients in a namespace lab: reserved hosts get their address from the kernel (the
/// XDP counters say so, and the lease table learned the binding from the program's events),
/// an unknown client still gets a pool address from userspace.
#[test]
fn real_clients_get_reserved_addresses_from_the_kernel() {
    let t = "real_clients_get_reserved_addresses_from_the_kernel";
    if !require_root(t)
        || !require(
            have_program("udhcpc"),
            t,
            "udhcpc is missing (cargo xtask setup)",
        )
        || !require(
            have_program("dhclient"),
            t,
            "dhclient is missing (cargo xtask setup)",
        )
    {
        return;
    }
    let server = Netns::new("srv").expect("netns");
    let clients: Vec<Netns> = (0..3).map(|_| Netns::new("cli").expect("netns")).collect();
    let mut bridge = Bridge::new().expect("bridge");
    bridge
        .plug(&server, "fabric0", "10.77.0.1/24")
        .expect("plug");
    let macs = [
        "52:54:00:b0:0f:01",
        "52:54:00:b0:0f:02",
        "52:54:00:ee:ee:03",
    ];
    for (i, ns) in clients.iter().enumerate() {
        bridge.plug(ns, "c0", "").expect("plug");
        ns.ip(&["link", "set", "c0", "address", macs[i]])
            .expect("mac");
    }
    let daemon = Daemon::start(&server, CONFIG, &[("hosts.toml", INVENTORY)]).expect("daemon");
    if !require_xdp(t, &server, &daemon) {
        return;
    }
    let dir = TempDir::new().expect("dir");
    let out = |n: usize| dir.path.join(format!("events{n}"));
    let script = |n: usize| {
        let p = dir.path.join(format!("script{n}.sh"));
        std::fs::write(
            &p,
            format!(
                "#!/bin/sh\ncase \"$1$reason\" in bound*|*BOUND) echo \"ip=$ip$new_ip_address host=$hostname$new_host_name\" >> {} ;; esac\nexit 0\n",
                out(n).display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        p
    };
    let mut children = Vec::new();
    for n in [0usize, 2] {
        children.push(Kill(
            clients[n]
                .command("udhcpc")
                .args(["-f", "-q", "-i", "c0", "-t", "10", "-T", "2", "-s"])
                .arg(script(n))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("udhcpc"),
        ));
    }
    let leases = dir.path.join("dhclient.leases");
    let mut dhclient = clients[1].command("dhclient");
    dhclient
        .args(["-4", "-1", "-sf"])
        .arg(script(1))
        .arg("-lf")
        .arg(&leases)
        .arg("-pf")
        .arg(dir.path.join("dhclient.pid"))
        .arg("c0");
    bootfabric_lab::run(&mut dhclient).expect("dhclient gets a lease");
    let got = |n: usize| {
        wait_for(Duration::from_secs(30), || {
            std::fs::read_to_string(out(n))
                .ok()
                .filter(|s| s.contains("ip="))
        })
        .unwrap_or_else(|| panic!("client {n} got no lease\n{}", daemon.log()))
    };
    assert!(got(0).contains("ip=10.77.0.11 host=node01"), "{}", got(0));
    assert!(got(1).contains("ip=10.77.0.12 "), "{}", got(1));
    assert!(
        got(2).contains("ip=10.77.0.100 "),
        "pool address: {}",
        got(2)
    );
    if let Ok(pid) = std::fs::read_to_string(dir.path.join("dhclient.pid")) {
        if let Ok(pid) = pid.trim().parse::<i32>() {
            let _ =
                nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
        }
    }

    let scrape = || {
        http_get(&server, daemon.admin, "/metrics")
            .expect("metrics")
            .1
    };
    let userspace = |m: &str| {
        sample(
            m,
            "bootfabric_dhcp_packets_total",
            &[("type", "request"), ("outcome", "ack")],
        )
        .unwrap_or(0.0)
    };
    // Userspace counts its ACK after sending it (and after the journal commit): the client
    // can hold its lease before the counter moves, so wait for it rather than scrape once.
    let m = wait_for(Duration::from_secs(30), || {
        let m = scrape();
        (userspace(&m) >= 1.0).then_some(m)
    })
    .unwrap_or_else(|| panic!("userspace never counted its ACK\n{}", scrape()));
    let xdp = |action: &str, reason: &str| xdp_packets(&m, action, reason);
    assert!(xdp("answered", "offer") >= 2.0, "{m}");
    assert!(xdp("answered", "ack") >= 2.0, "{m}");
    assert!(xdp("passed", "unknown_host") >= 2.0, "{m}");
    assert_eq!(
        userspace(&m),
        1.0,
        "only the unknown client's REQUEST reached userspace\n{m}"
    );
    // The kernel's ACKs reached the lease table (and the journal) through the ring buffer.
    let listed = wait_for(Duration::from_secs(10), || {
        let l = daemon.cli(&["leases"]).ok()?;
        (l.contains("10.77.0.11") && l.contains("10.77.0.12")).then_some(l)
    });
    assert!(listed.is_some(), "{:?}", daemon.cli(&["leases"]));
    // The kernel's answers reach the ledger through the ring buffer, after the client has
    // them: wait for both phases.
    let timeline = || {
        http_get(&server, daemon.admin, "/api/timeline?mac=52:54:00:b0:0f:01")
            .expect("timeline")
            .1
    };
    assert!(
        wait_for(Duration::from_secs(30), || {
            let t = timeline();
            (t.contains("dhcp_offer") && t.contains("dhcp_ack")).then_some(())
        })
        .is_some(),
        "{}",
        timeline()
    );
}

use bootfabric_lab::KillOnDrop as Kill;

/// GCRA parameters under which exactly `burst` packets pass at once and no further token
/// comes back for an hour: the count that passes a test's flood is then the burst, whatever
/// the machine's speed, instead of the burst plus whatever refilled while the loop ran.
fn frozen_bucket(burst: u64) -> (u64, u64) {
    const HOUR_NS: u64 = 3_600_000_000_000;
    // The program lets a packet through while the theoretical arrival time is at most
    // `burst_ns` ahead of now, and each pass moves it one interval further.
    (HOUR_NS, HOUR_NS * (burst.max(1) - 1))
}

/// The shield: a flood from one unknown client, and one through a relay, reach userspace
/// only up to their buckets; the rest dies in XDP, counted. The buckets are frozen (no refill
/// within the test) so the counts are the bursts exactly; `gcra` (the daemon's conversion of
/// a rate into a bucket) is checked by its unit test.
#[test]
fn floods_are_stopped_in_the_kernel() {
    with_harness("floods_are_stopped_in_the_kernel", |h| {
        const CLIENT_BURST: u64 = 20;
        const RELAY_BURST: u64 = 100;
        let (client_interval_ns, client_burst_ns) = frozen_bucket(CLIENT_BURST);
        let (relay_interval_ns, relay_burst_ns) = frozen_bucket(RELAY_BURST);
        h.configure(bootfabric_abi::ClassifyConfig {
            dhcp_fast_path: bootfabric_abi::DHCP_PATH_ANSWER,
            client_interval_ns,
            client_burst_ns,
            relay_interval_ns,
            relay_burst_ns,
            ..Default::default()
        })
        .expect("configure");
        let before = h.stats();
        let one = Req {
            client: Client::Plain,
            kind: DHCPDISCOVER,
            mac: [0x52, 0x54, 0, 0xee, 0, 1],
            broadcast: true,
            ciaddr: Ipv4Addr::UNSPECIFIED,
            giaddr: Ipv4Addr::UNSPECIFIED,
            server_id: None,
            requested: None,
            relay_info: false,
            xid: 1,
        };
        let f = request_frame(&one, None);
        let mut passed = 0;
        for _ in 0..200 {
            if h.run(&f).expect("run").0 == XDP_PASS {
                passed += 1;
            }
        }
        assert_eq!(passed, CLIENT_BURST, "{passed} of 200 passed");
        // Many clients behind one relay: each client is within its own rate, the relay not.
        let mut relayed = 0;
        for n in 0..400u32 {
            let r = Req {
                mac: [0x52, 0x54, 0, 0xdd, (n >> 8) as u8, n as u8],
                giaddr: RELAY_IP,
                relay_info: true,
                ..one
            };
            if h.run(&request_frame(&r, None)).expect("run").0 == XDP_PASS {
                relayed += 1;
            }
        }
        assert_eq!(relayed, RELAY_BURST, "{relayed} of 400 relayed passed");
        // A reserved host is still answered in the kernel during the flood.
        let known = Req { mac: mac(1), ..one };
        assert_eq!(h.run(&request_frame(&known, None)).expect("run").0, XDP_TX);
        let after = h.stats();
        let d = |i: u32| after[i as usize] - before[i as usize];
        assert_eq!(d(STAT_DROP_RATE_LIMITED_CLIENT), 200 - passed);
        assert_eq!(d(STAT_DROP_RATE_LIMITED_RELAY), 400 - relayed);
        assert_eq!(d(STAT_PASSED_UNKNOWN_HOST), passed + relayed);
    });
}

/// Attack: spoofed DISCOVERs and REQUESTs for one reserved MAC, with the broadcast flag, as
/// fast as the attacker can send them. The kernel answers exactly the per-MAC bucket (frozen:
/// the default rate's burst, and no refill within the test), drops the rest with its own
/// reason, and every event it emits is one of those answers.
#[test]
fn a_spoofed_flood_for_a_reserved_mac_gets_at_most_its_bucket_of_answers() {
    with_harness(
        "a_spoofed_flood_for_a_reserved_mac_gets_at_most_its_bucket_of_answers",
        |h| {
            // The burst of the daemon's default dhcp.rate_limit (20/s, bursts of 40), with
            // the refill frozen so that the count answered is the burst, not the burst plus
            // whatever refilled while the loop ran.
            const BURST: u64 = 40;
            let (client_interval_ns, client_burst_ns) = frozen_bucket(BURST);
            h.configure(bootfabric_abi::ClassifyConfig {
                dhcp_fast_path: bootfabric_abi::DHCP_PATH_ANSWER,
                client_interval_ns,
                client_burst_ns,
                ..Default::default()
            })
            .expect("configure");
            let before = h.stats();
            let spoof = |kind: u8, xid: u32| Req {
                client: Client::Pxe(7),
                kind,
                mac: mac(1),
                broadcast: true,
                ciaddr: Ipv4Addr::UNSPECIFIED,
                giaddr: Ipv4Addr::UNSPECIFIED,
                server_id: (kind == DHCPREQUEST).then_some(SERVER_IP),
                requested: (kind == DHCPREQUEST).then_some(Ipv4Addr::new(10, 77, 0, 11)),
                relay_info: false,
                xid,
            };
            let frames = [
                request_frame(&spoof(DHCPDISCOVER, 1), None),
                request_frame(&spoof(DHCPREQUEST, 2), None),
            ];
            const FLOOD: usize = 5_000;
            let mut answers = 0u64;
            for i in 0..FLOOD {
                if h.run(&frames[i % 2]).expect("run").0 == XDP_TX {
                    answers += 1;
                }
            }
            assert_eq!(
                answers, BURST,
                "{answers} of {FLOOD} spoofed requests for one reserved MAC were answered; its \
                 bucket holds {BURST}"
            );
            let after = h.stats();
            let d = |i: u32| {
                after.get(i as usize).copied().unwrap_or(0)
                    - before.get(i as usize).copied().unwrap_or(0)
            };
            assert_eq!(
                d(STAT_DROP_RATE_LIMITED_ANSWER),
                FLOOD as u64 - answers,
                "the rest is dropped with its own reason"
            );
            assert_eq!(d(STAT_ANSWERED_OFFER) + d(STAT_ANSWERED_ACK), answers);
            let events = h.events().len() as u64;
            assert!(
                events <= answers,
                "{events} ring-buffer events for {answers} answers"
            );
            assert_eq!(events + d(STAT_ACK_UNREPORTED), answers);
            // Another reserved host is answered meanwhile: buckets are per MAC.
            let other = Req {
                mac: mac(2),
                ..spoof(DHCPDISCOVER, 3)
            };
            assert_eq!(h.run(&request_frame(&other, None)).expect("run").0, XDP_TX);
            println!("{answers} of {FLOOD} answered, {events} events");
        },
    );
}

/// Attack (and honest renewals): a reserved host's REQUESTs repeated within the first half of
/// its lease are each answered, but report nothing new (no event, so no journal record); a
/// DISCOVER starts a new exchange whose ACK is reported again.
#[test]
fn renewals_in_the_first_half_of_a_lease_emit_no_events() {
    with_harness(
        "renewals_in_the_first_half_of_a_lease_emit_no_events",
        |h| {
            let addr = Ipv4Addr::new(10, 77, 0, 11);
            let req = |kind: u8, xid: u32| Req {
                client: Client::Plain,
                kind,
                mac: mac(1),
                broadcast: false,
                ciaddr: Ipv4Addr::UNSPECIFIED,
                giaddr: Ipv4Addr::UNSPECIFIED,
                server_id: (kind == DHCPREQUEST).then_some(SERVER_IP),
                requested: (kind == DHCPREQUEST).then_some(addr),
                relay_info: false,
                xid,
            };
            let renew = |xid: u32| Req {
                ciaddr: addr,
                server_id: None,
                requested: None,
                ..req(DHCPREQUEST, xid)
            };
            for r in [req(DHCPDISCOVER, 1), req(DHCPREQUEST, 2)] {
                assert_eq!(h.run(&request_frame(&r, None)).expect("run").0, XDP_TX);
            }
            let first = h.events();
            assert_eq!(first.len(), 2, "the exchange is reported: {first:?}");
            assert_eq!(first[1].lease_secs, 600, "with the lease it granted");
            const RENEWALS: u32 = 200;
            for i in 0..RENEWALS {
                let (action, out) = h.run(&request_frame(&renew(100 + i), None)).expect("run");
                assert_eq!(action, XDP_TX, "renewal {i} answered");
                assert_eq!(parse_reply(&out, None).dst_ip, addr);
            }
            let repeated = h.events();
            assert!(
                repeated.is_empty(),
                "{} ring-buffer events for {RENEWALS} renewals of the same lease in its first half",
                repeated.len()
            );
            assert_eq!(h.stats()[STAT_ACK_UNREPORTED as usize], u64::from(RENEWALS));
            // A new exchange (a reboot's DISCOVER) is reported whole again.
            for r in [req(DHCPDISCOVER, 3), req(DHCPREQUEST, 4)] {
                assert_eq!(h.run(&request_frame(&r, None)).expect("run").0, XDP_TX);
            }
            assert_eq!(h.events().len(), 2);
        },
    );
}

/// Sends `count` datagrams to 255.255.255.255:67 from namespace `ns`, cycling through
/// `payloads`, as fast as the socket takes them (an attacker's flood, bounded in count).
fn flood(ns: &Netns, payloads: Vec<Vec<u8>>, count: usize) {
    ns.run(move || {
        let sock = std::net::UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        sock.set_broadcast(true).expect("broadcast");
        for i in 0..count {
            let p = &payloads[i % payloads.len()];
            // A full queue drops a datagram: the attacker's loss, counted by the daemon as
            // fewer frames seen, which the callers wait on.
            let _ = sock.send_to(p, (Ipv4Addr::BROADCAST, 67));
        }
    })
    .expect("namespace");
}

/// The spoofed DISCOVER and REQUEST of reserved host `n` (broadcast flag, PXE ROM-like).
fn spoofed_exchange(n: u8, ip: Ipv4Addr) -> Vec<Vec<u8>> {
    [DHCPDISCOVER, DHCPREQUEST]
        .into_iter()
        .map(|kind| {
            payload(&Req {
                client: Client::Pxe(7),
                kind,
                mac: mac(n),
                broadcast: true,
                ciaddr: Ipv4Addr::UNSPECIFIED,
                giaddr: Ipv4Addr::UNSPECIFIED,
                server_id: (kind == DHCPREQUEST).then_some(SERVER_IP),
                requested: (kind == DHCPREQUEST).then_some(ip),
                relay_info: false,
                xid: 0x5eed,
            })
        })
        .collect()
}

/// Lines of the daemon's lease journal that record `ip`.
fn journal_records(daemon: &Daemon, ip: &str) -> usize {
    let path = daemon
        .config_path()
        .with_file_name("state")
        .join("leases.journal");
    let needle = format!(" {ip} ");
    std::fs::read_to_string(path)
        .map(|j| j.lines().filter(|l| l.contains(&needle)).count())
        .unwrap_or(0)
}

/// Waits until the journal holds a record of `ip`: the barrier behind which every event the
/// kernel wrote before `ip`'s exchange has been through the lease table and the journal (one
/// ring, drained in order, into one committer queue).
fn journal_barrier(daemon: &Daemon, ip: &str) {
    assert!(
        wait_for(Duration::from_secs(30), || (journal_records(daemon, ip)
            > 0)
        .then_some(()))
        .is_some(),
        "no journal record of {ip}\n{}",
        daemon.log()
    );
}

/// Attack, from a client namespace over a veth: 5,000 spoofed DISCOVERs and REQUESTs with the
/// broadcast flag for one reserved MAC. At most the MAC's bucket is answered (burst plus rate
/// times the flood's duration), the rest dropped as `rate_limited_answer`, and the journal
/// gains a handful of records, not thousands.
#[test]
fn a_spoofed_flood_over_a_veth_costs_a_bucket_of_answers_and_a_handful_of_records() {
    let t = "a_spoofed_flood_over_a_veth_costs_a_bucket_of_answers_and_a_handful_of_records";
    if !require_root(t) {
        return;
    }
    let lab = bootfabric_lab::PairLab::new().expect("lab");
    let daemon = Daemon::start(&lab.server, CONFIG, &[("hosts.toml", INVENTORY)]).expect("daemon");
    let metrics = || bootfabric_lab::metrics(&lab.server, &daemon).expect("metrics");
    if !require_xdp(t, &lab.server, &daemon) {
        return;
    }
    let xdp = |m: &str, action: &str, reason: &str| xdp_packets(m, action, reason) as u64;
    let answered = |m: &str| xdp(m, "answered", "offer") + xdp(m, "answered", "ack");
    let limited = |m: &str| xdp(m, "dropped", "rate_limited_answer");
    let ledger = |m: &str| {
        ["dhcp_offer", "dhcp_ack"]
            .iter()
            .map(|p| {
                sample(m, "bootfabric_ledger_events_total", &[("phase", p)]).unwrap_or(0.0) as u64
            })
            .sum::<u64>()
    };
    const FLOOD: usize = 5_000;
    // CONFIG leaves dhcp.rate_limit at its default.
    let rate = 20u64;
    let started = std::time::Instant::now();
    flood(
        &lab.client,
        spoofed_exchange(1, Ipv4Addr::new(10, 77, 0, 11)),
        FLOOD,
    );
    // Every frame that reached the program was either answered or dropped for its bucket.
    let m = wait_for(Duration::from_secs(30), || {
        let m = metrics();
        (answered(&m) + limited(&m) >= FLOOD as u64).then_some(m)
    })
    .unwrap_or_else(|| panic!("the flood did not arrive\n{}", metrics()));
    let elapsed = started.elapsed().as_secs_f64();
    let answers = answered(&m);
    // The upper bound counts refills over a span that encloses the flood (from before the
    // first frame to after the last was counted), so it holds however slow the machine; the
    // lower one is the fresh bucket's burst, which no timing can take away.
    assert!(
        answers >= 2 * rate,
        "{answers} answers: less than the burst of a fresh bucket"
    );
    let bound = 2 * rate + (rate as f64 * elapsed).ceil() as u64 + 2;
    assert!(
        answers <= bound,
        "{answers} of {FLOOD} spoofed requests for one reserved MAC were answered (broadcast) \
         in {elapsed:.2} s; its bucket allows at most {bound}"
    );
    assert_eq!(limited(&m), FLOOD as u64 - answers, "{m}");

    // Barrier: another reserved host's exchange, behind every event of the flood.
    flood(
        &lab.client,
        spoofed_exchange(2, Ipv4Addr::new(10, 77, 0, 12)),
        2,
    );
    journal_barrier(&daemon, "10.77.0.12");
    let records = journal_records(&daemon, "10.77.0.11");
    assert!(
        (1..=3).contains(&records),
        "{records} journal records of 10.77.0.11 after {answers} answers to the flood"
    );
    let m = metrics();
    let events = ledger(&m);
    assert!(
        events <= answers + 2,
        "{events} ledger events (one per ring-buffer event) for {answers} answers"
    );
    println!(
        "{answers} of {FLOOD} answered in {elapsed:.2} s; {records} journal records, {events} events"
    );
}

/// For a udhcpc test of the kernel path: a lab whose client interface `c0` wears `mac` and
/// has no address yet, and the daemon on [`CONFIG`] with the XDP object loaded; `None`
/// when the test is skipped.
fn udhcpc_lab(t: &str, mac: &str) -> Option<(bootfabric_lab::PairLab, Daemon)> {
    if !require_root(t) || !require(have_program("udhcpc"), t, "udhcpc is missing") {
        return None;
    }
    let lab = bootfabric_lab::PairLab::unaddressed_client("c0").expect("lab");
    lab.client
        .ip(&["link", "set", "c0", "address", mac])
        .expect("mac");
    let daemon = Daemon::start(&lab.server, CONFIG, &[("hosts.toml", INVENTORY)]).expect("daemon");
    if !require_xdp(t, &lab.server, &daemon) {
        // The daemon goes before its namespace, as everywhere else.
        drop(daemon);
        return None;
    }
    Some((lab, daemon))
}

/// Attack and honest renewals from a real client: udhcpc renewing its reserved lease many
/// times within the lease's first half gets every ACK from the kernel, and the journal gains
/// no record for any of them.
#[test]
fn renewals_within_the_first_half_of_a_lease_add_no_journal_records() {
    let t = "renewals_within_the_first_half_of_a_lease_add_no_journal_records";
    let Some((lab, daemon)) = udhcpc_lab(t, "52:54:00:b0:0f:01") else {
        return;
    };
    let dir = TempDir::new().expect("dir");
    let out = dir.path.join("events");
    let script = dir.path.join("script.sh");
    // Configure the address on bound, so that unicast renewals and their ACKs flow.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh
case \"$1\" in
 bound) ip addr add $ip/$mask dev $interface; echo bound >> {o} ;;
 renew) echo renew >> {o} ;;
esac
exit 0
",
            o = out.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let client = Kill(
        lab.client
            .command("udhcpc")
            .args(["-f", "-i", "c0", "-t", "10", "-T", "2", "-s"])
            .arg(&script)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("udhcpc"),
    );
    let count = |what: &str| {
        std::fs::read_to_string(&out)
            .map(|s| s.lines().filter(|l| *l == what).count())
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(30), || (count("bound") == 1)
            .then_some(()))
        .is_some(),
        "no lease\n{}",
        daemon.log()
    );
    journal_barrier(&daemon, "10.77.0.11");
    let bound = journal_records(&daemon, "10.77.0.11");
    // udhcpc renews on SIGUSR1 (a unicast REQUEST with ciaddr, as at T1); the lease is 600 s,
    // so all of these fall in its first half.
    const RENEWALS: usize = 20;
    for i in 1..=RENEWALS {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(client.0.id() as i32),
            nix::sys::signal::SIGUSR1,
        )
        .expect("SIGUSR1");
        assert!(
            wait_for(Duration::from_secs(30), || (count("renew") >= i)
                .then_some(()))
            .is_some(),
            "renewal {i} not acknowledged\n{}",
            daemon.log()
        );
    }
    // Barrier: another reserved host's exchange, behind every renewal's event.
    lab.client
        .ip(&["route", "add", "default", "dev", "c0"])
        .expect("route");
    flood(
        &lab.client,
        spoofed_exchange(2, Ipv4Addr::new(10, 77, 0, 12)),
        2,
    );
    journal_barrier(&daemon, "10.77.0.12");
    let (_, m) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    let acks = xdp_packets(&m, "answered", "ack");
    assert!(
        acks >= (1 + RENEWALS + 1) as f64,
        "the renewals were answered in the kernel\n{m}"
    );
    let records = journal_records(&daemon, "10.77.0.11");
    assert_eq!(
        records,
        bound,
        "{} journal records of 10.77.0.11 added by {RENEWALS} renewals in the lease's first half",
        records - bound
    );
}

/// SIGHUP re-reads the inventory: a host added to it is answered by the kernel from then
/// on, with its new reservation, and a host removed from it goes back to userspace.
#[test]
fn reload_keeps_the_kernel_maps_in_step_with_the_inventory() {
    let t = "reload_keeps_the_kernel_maps_in_step_with_the_inventory";
    let Some((lab, daemon)) = udhcpc_lab(t, "52:54:00:b0:0f:05") else {
        return;
    };
    let metrics = || bootfabric_lab::metrics(&lab.server, &daemon).expect("metrics");
    let dir = TempDir::new().expect("dir");
    let lease = |n: u32| {
        let out = dir.path.join(format!("ev{n}"));
        let script = dir.path.join(format!("s{n}.sh"));
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\n[ \"$1\" = bound ] && echo \"ip=$ip\" >> {}\nexit 0\n",
                out.display()
            ),
        )
        .expect("script");
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
        let _c = Kill(
            lab.client
                .command("udhcpc")
                .args(["-f", "-q", "-i", "c0", "-t", "10", "-T", "2", "-s"])
                .arg(&script)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("udhcpc"),
        );
        wait_for(Duration::from_secs(30), || {
            std::fs::read_to_string(&out)
                .ok()
                .filter(|s| s.contains("ip="))
        })
        .unwrap_or_else(|| panic!("no lease\n{}", daemon.log()))
    };
    let answered = |m: &str| xdp_packets(m, "answered", "ack");
    // Not in the inventory yet: a pool address, from userspace.
    assert!(lease(1).contains("ip=10.77.0.100"), "{}", daemon.log());
    assert_eq!(answered(&metrics()), 0.0);

    let hosts = daemon.config_path().with_file_name("hosts.toml");
    let added = format!(
        "{INVENTORY}\n[[hosts]]\nname = \"node05\"\nmac = \"52:54:00:b0:0f:05\"\nip = \"10.77.0.15\"\nprofile = \"installer\"\n"
    );
    std::fs::write(&hosts, &added).expect("inventory");
    daemon.reload("fast path resynced").expect("reload");
    assert!(lease(2).contains("ip=10.77.0.15"), "{}", daemon.log());
    assert!(
        answered(&metrics()) >= 1.0,
        "answered in the kernel after the reload"
    );

    // A config that does not load is refused whole: the running one stays.
    std::fs::write(&hosts, "[[hosts]]\nname = 5\n").expect("inventory");
    daemon
        .reload("config not reloaded")
        .expect("reload refused");
    // Removed again: back to userspace, which no longer reserves 10.77.0.15 for it.
    std::fs::write(&hosts, INVENTORY).expect("inventory");
    daemon.reload("fast path resynced").expect("reload");
    let before = answered(&metrics());
    let third = lease(3);
    assert!(!third.contains("ip=10.77.0.15"), "{third}");
    assert_eq!(
        answered(&metrics()),
        before,
        "no kernel answer for a removed host"
    );
}

/// A reservation moved (SIGHUP) from udhcpc A to MAC B while A holds it, with the fast path
/// loaded: B is left to userspace (a pool address) while it waits, and once A releases the
/// address the housekeeping tick puts B in the kernel's maps, which then answer B with it.
#[test]
fn a_moved_reservation_reaches_the_kernel_once_the_old_holder_releases_it() {
    let t = "a_moved_reservation_reaches_the_kernel_once_the_old_holder_releases_it";
    let Some((lab, daemon)) = udhcpc_lab(t, "52:54:00:b0:0f:01") else {
        return;
    };
    let dir = TempDir::new().expect("dir");
    let out = dir.path.join("events");
    let script = dir.path.join("s.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 ip=$ip\" >> {}\ncase \"$1\" in bound|renew) ip addr replace \"$ip/$mask\" dev \"$interface\" ;; deconfig) ip addr flush dev \"$interface\" ;; esac\nexit 0\n",
            out.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let a = Kill(
        lab.client
            .command("udhcpc")
            .args(["-f", "-i", "c0", "-t", "10", "-T", "2", "-s"])
            .arg(&script)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("udhcpc"),
    );
    wait_for(Duration::from_secs(30), || {
        std::fs::read_to_string(&out)
            .ok()
            .filter(|s| s.contains("bound ip=10.77.0.11"))
    })
    .unwrap_or_else(|| panic!("A not bound to its reservation\n{}", daemon.log()));

    let hosts = daemon.config_path().with_file_name("hosts.toml");
    std::fs::write(
        &hosts,
        INVENTORY.replace("52:54:00:b0:0f:01", "52:54:00:b0:0f:07"),
    )
    .expect("inventory");
    daemon.reload("fast path resynced").expect("reload");
    assert!(
        daemon.logged("reservation waits for the previous holder's lease"),
        "{}",
        daemon.log()
    );
    let lease_b = |xid: u32| {
        lab.client
            .ip(&["addr", "replace", "10.77.0.250/24", "dev", "c0"])
            .expect("addr");
        lab.client
            .ip(&["route", "replace", "default", "dev", "c0"])
            .expect("route");
        lab.client
            .run(move || DhcpClient::bind()?.lease(mac(7), xid, Duration::from_secs(2)))
            .expect("namespace")
            .expect("client")
    };
    let answered = || {
        xdp_packets(
            &bootfabric_lab::metrics(&lab.server, &daemon).expect("metrics"),
            "answered",
            "ack",
        )
    };
    let kernel_acks = answered();
    match lease_b(0xb001) {
        bootfabric_lab::dhcp_client::Outcome::Ack(ip, _) => {
            assert_ne!(ip, Ipv4Addr::new(10, 77, 0, 11), "{}", daemon.log())
        }
        other => panic!("B got {other:?}\n{}", daemon.log()),
    }
    assert_eq!(answered(), kernel_acks, "B waits in userspace");

    // A releases: within a housekeeping tick the kernel holds B's reservation.
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(a.0.id() as i32),
        nix::sys::signal::Signal::SIGUSR2,
    );
    wait_for(Duration::from_secs(30), || {
        daemon
            .log()
            .contains("a waiting reservation was freed")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no resync after the release\n{}", daemon.log()));
    assert_eq!(
        lease_b(0xb002),
        bootfabric_lab::dhcp_client::Outcome::Ack(Ipv4Addr::new(10, 77, 0, 11), SERVER_IP),
        "{}",
        daemon.log()
    );
    assert!(
        answered() > kernel_acks,
        "B's reservation ACKed in the kernel"
    );
}

/// Both checksums of every kernel reply hold whatever the request's transaction id, client
/// kind, message type, broadcast flag and relay: a client drops a reply whose UDP checksum is
/// wrong without a word, and with the same xid on every retry (udhcpc keeps one per round) a
/// content-dependent error would cost that host its lease every time. 38 400 replies, the
/// bucket opened so that each request is answered.
#[test]
fn kernel_reply_checksums_hold_over_many_requests() {
    with_harness("kernel_reply_checksums_hold_over_many_requests", |h| {
        h.configure(bootfabric_abi::ClassifyConfig {
            dhcp_fast_path: bootfabric_abi::DHCP_PATH_ANSWER,
            client_interval_ns: 1,
            client_burst_ns: u64::MAX / 4,
            relay_interval_ns: 1,
            relay_burst_ns: u64::MAX / 4,
            ..Default::default()
        })
        .expect("configure");
        // A fixed linear congruential sequence: the same xids on every run.
        let mut xid: u32 = 0x1234_5678;
        let mut answered = 0;
        for (host, addr, giaddr) in [
            (1u8, Ipv4Addr::new(10, 77, 0, 11), Ipv4Addr::UNSPECIFIED),
            (2, Ipv4Addr::new(10, 77, 0, 12), Ipv4Addr::UNSPECIFIED),
            (3, Ipv4Addr::new(10, 77, 0, 13), Ipv4Addr::UNSPECIFIED),
            (4, Ipv4Addr::new(10, 88, 0, 20), RELAY_IP),
        ] {
            for client in [
                Client::Plain,
                Client::Ipxe,
                Client::Pxe(7),
                Client::HttpBoot(16),
            ] {
                for i in 0..2400u32 {
                    xid = xid.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                    let kind = if i % 2 == 0 {
                        DHCPDISCOVER
                    } else {
                        DHCPREQUEST
                    };
                    let broadcast = i % 4 < 2;
                    let r = exchange(client, kind, host, addr, giaddr, broadcast, xid);
                    let case = format!(
                        "host {host} {client:?} type {kind} broadcast {broadcast} xid {xid:#010x}"
                    );
                    let (action, out) = h.run(&request_frame(&r, None)).expect("test run");
                    assert_eq!(action, XDP_TX, "{case}: answered in the kernel");
                    if std::panic::catch_unwind(|| parse_reply(&out, None)).is_err() {
                        panic!("{case}: reply {out:02x?}");
                    }
                    answered += 1;
                    // Drain the event ring so that a full ring never changes what is tested.
                    if answered % 512 == 0 {
                        h.events();
                    }
                }
            }
        }
        println!("{answered} kernel replies with both checksums right");
    });
}
