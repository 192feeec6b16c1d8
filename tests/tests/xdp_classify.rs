//! The XDP classifier, attached to a veth in a namespace lab, counts DHCP, TFTP and TFTP
//! data packets sent by a client namespace, and `/metrics` shows exactly those counts.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket},
    time::Duration,
};

use bootfabric_lab::{
    http_get,
    packets::{dhcp_discover, tftp_ack, tftp_rrq},
    require, require_root, sample, wait_for, Bridge, Daemon, Netns, PairLab,
};

const CONFIG: &str = r#"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[xdp]
mode = "auto"
[tftp]
transfer_ports = "50000-50099"
"#;

/// Ethernet + IPv4 + UDP header bytes in front of every payload.
const HDRS: u64 = 14 + 20 + 8;

#[test]
fn xdp_counts_each_class_per_interface() {
    if !require_root("xdp_counts_each_class_per_interface") {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let daemon = Daemon::start(&lab.server, CONFIG, &[]).expect("daemon");
    let (_, before) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    let embedded = before.contains("ebpf=\"embedded\"");
    if !require(
        embedded,
        "xdp_counts_each_class_per_interface",
        "the bootfabric binary has no eBPF object (build it with `cargo xtask build`)",
    ) {
        return;
    }
    let mode = |m: &str| {
        sample(
            &before,
            "bootfabric_xdp_attach_mode",
            &[("iface", "fabric0"), ("mode", m)],
        )
    };
    assert_eq!(
        mode("none"),
        Some(0.0),
        "XDP did not attach:\n{}",
        daemon.log()
    );
    assert_eq!(
        mode("native").unwrap_or(0.0) + mode("generic").unwrap_or(0.0),
        1.0
    );
    let count = |text: &str, metric: &str, class: &str| {
        sample(
            text,
            metric,
            &[("iface", "fabric0"), ("class", class), ("action", "pass")],
        )
        .unwrap_or_else(|| panic!("no {metric} for {class} in:\n{text}")) as u64
    };
    // Zero series exist before any packet (count() panics on a missing one). "other" may
    // already have moved: the client's link sends IPv6 router solicitations as it comes up.
    count(&before, "bootfabric_xdp_packets_total", "other");
    for class in ["dhcp", "tftp", "tftp_data"] {
        assert_eq!(
            count(&before, "bootfabric_xdp_packets_total", class),
            0,
            "{class}"
        );
    }

    let server = SocketAddrV4::new(Ipv4Addr::from(PairLab::SERVER_IP), 0);
    let discover = dhcp_discover(0x1234_5678, [0x52, 0x54, 0x00, 0x12, 0x34, 0x56]);
    let rrq = tftp_rrq("ipxe.efi");
    let big = vec![0xaau8; 3000];
    lab.client
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:68").expect("bind 68");
            s.set_broadcast(true).expect("broadcast");
            for _ in 0..3 {
                s.send_to(&discover, "255.255.255.255:67").expect("dhcp");
            }
            let s = UdpSocket::bind("10.77.0.2:0").expect("bind");
            let to = |port| SocketAddr::V4(SocketAddrV4::new(*server.ip(), port));
            for _ in 0..2 {
                s.send_to(&rrq, to(69)).expect("rrq");
            }
            for port in [50000, 50050, 50099, 50099] {
                s.send_to(&tftp_ack(1), to(port)).expect("ack");
            }
            // Just outside the range, and a datagram that IPv4 fragments: only its first
            // fragment carries the UDP header.
            s.send_to(&tftp_ack(1), to(50100)).expect("other");
            s.send_to(&big, to(69)).expect("fragmented");
        })
        .expect("client namespace");

    // A send returns once the frame is queued on the veth; the program runs on it later
    // (the peer's NAPI poll), so wait until every class has at least its count, then
    // check that it is exactly that.
    let scrape = || {
        http_get(&lab.server, daemon.admin, "/metrics")
            .expect("metrics")
            .1
    };
    let after = wait_for(Duration::from_secs(30), || {
        let text = scrape();
        let p = |class| count(&text, "bootfabric_xdp_packets_total", class);
        (p("dhcp") >= 3 && p("tftp") >= 3 && p("tftp_data") >= 4 && p("other") >= 3).then_some(text)
    })
    .unwrap_or_else(|| panic!("the frames were not all counted:\n{}", scrape()));
    let p = |class| count(&after, "bootfabric_xdp_packets_total", class);
    let b = |class| count(&after, "bootfabric_xdp_bytes_total", class);
    assert_eq!(p("dhcp"), 3, "{after}");
    assert_eq!(b("dhcp"), 3 * (HDRS + 300));
    assert_eq!(p("tftp"), 3, "two RRQs and the first fragment:\n{after}");
    assert_eq!(b("tftp"), 2 * (HDRS + rrq_len()) + 1514);
    assert_eq!(p("tftp_data"), 4, "{after}");
    assert_eq!(b("tftp_data"), 4 * (HDRS + 4));
    // Port 50100, the two trailing fragments, and whatever ARP/IPv6 the link carried.
    assert!(p("other") >= 3, "{after}");
}

fn rrq_len() -> u64 {
    tftp_rrq("ipxe.efi").len() as u64
}

#[test]
fn xdp_counts_broadcasts_from_clients_on_a_bridge() {
    if !require_root("xdp_counts_broadcasts_from_clients_on_a_bridge") {
        return;
    }
    let server = Netns::new("srv").expect("server ns");
    let mut switch = Bridge::new().expect("bridge");
    switch
        .plug(&server, "fabric0", "10.77.0.1/24")
        .expect("plug server");
    let clients: Vec<Netns> = (0..3)
        .map(|i| {
            let ns = Netns::new("cli").expect("client ns");
            switch
                .plug(&ns, "cli0", &format!("10.77.0.{}/24", 10 + i))
                .expect("plug client");
            ns.ip(&["route", "add", "default", "dev", "cli0"])
                .expect("route");
            ns
        })
        .collect();
    let daemon = Daemon::start(&server, CONFIG, &[]).expect("daemon");
    let (_, text) = http_get(&server, daemon.admin, "/metrics").expect("metrics");
    if !require(
        text.contains("ebpf=\"embedded\""),
        "xdp_counts_broadcasts_from_clients_on_a_bridge",
        "the bootfabric binary has no eBPF object (build it with `cargo xtask build`)",
    ) {
        return;
    }
    for (i, ns) in clients.iter().enumerate() {
        let mac = [0x52, 0x54, 0x00, 0, 0, i as u8];
        ns.run(move || {
            let s = UdpSocket::bind("0.0.0.0:68").expect("bind 68");
            s.set_broadcast(true).expect("broadcast");
            s.send_to(&dhcp_discover(i as u32, mac), "255.255.255.255:67")
                .expect("discover");
        })
        .expect("client namespace");
    }
    // Counted when the program runs on the bridge port's receive path, after the sends
    // return: wait for three, then check there are not more.
    let scrape = || {
        http_get(&server, daemon.admin, "/metrics")
            .expect("metrics")
            .1
    };
    let dhcp = |text: &str| {
        sample(
            text,
            "bootfabric_xdp_packets_total",
            &[("iface", "fabric0"), ("class", "dhcp"), ("action", "pass")],
        )
    };
    let text = wait_for(Duration::from_secs(30), || {
        let text = scrape();
        dhcp(&text).is_some_and(|n| n >= 3.0).then_some(text)
    })
    .unwrap_or_else(|| panic!("three DISCOVERs were not counted:\n{}", scrape()));
    assert_eq!(dhcp(&text), Some(3.0), "{text}");
}
