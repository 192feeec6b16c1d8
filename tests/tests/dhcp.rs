//! The DHCP server against real clients in namespace labs: dhclient, udhcpc and dhcpcd
//! get addresses and options, renew and release; reserved hosts get their reservation;
//! a relayed client is served through Debian's isc-dhcp-relay; and a SIGKILL in the middle
//! of a burst loses no acknowledged lease.

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use bootfabric_lab::{
    dhcp_client::{Client, Outcome},
    have_program, require, require_root, veth, wait_for, Daemon, Netns, PairLab, TempDir,
};

const INVENTORY: &str = r#"
[profiles.installer]
kernel = "debian/linux"

[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.11"
profile = "installer"
"#;

fn config(extra: &str) -> String {
    config_with_lease(600, extra)
}

/// The standard lab config with a given lease time (short leases make clients renew soon).
fn config_with_lease(lease: u32, extra: &str) -> String {
    format!(
        r#"
[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[dhcp]
rate_limit = 1000
[dhcp.options]
dns = ["10.77.0.53"]
domain = "rack1.example"
lease_time = {lease}
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
options = {{ router = "10.77.0.1" }}
{extra}
"#
    )
}

const WAIT: Duration = Duration::from_secs(30);

/// A client script that records what the DHCP client tells it, one line per event, and
/// configures the address (never resolv.conf: the namespace shares the host's /etc).
fn recorder(dir: &TempDir, body: &str) -> std::path::PathBuf {
    let path = dir.path.join("script.sh");
    let out = dir.path.join("events");
    std::fs::write(
        &path,
        format!("#!/bin/sh\nOUT={}\n{body}\nexit 0\n", out.display()),
    )
    .expect("script");
    let mut perm = std::fs::metadata(&path).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&path, perm).expect("chmod");
    path
}

fn events(dir: &TempDir) -> String {
    std::fs::read_to_string(dir.path.join("events")).unwrap_or_default()
}

fn wait_event(dir: &TempDir, what: &str) -> String {
    wait_for(WAIT, || {
        let e = events(dir);
        e.lines().any(|l| l.starts_with(what)).then_some(e)
    })
    .unwrap_or_else(|| panic!("no {what:?} event; events so far:\n{}", events(dir)))
}

fn lease_lines(daemon: &Daemon) -> String {
    daemon.cli(&["leases"]).expect("bootfabric leases")
}

use bootfabric_lab::KillOnDrop as Kill;

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig);
}

const UDHCPC_SCRIPT: &str = r#"echo "$1 ip=$ip mask=$mask router=$router dns=$dns domain=$domain lease=$lease serverid=$serverid hostname=$hostname" >> "$OUT"
case "$1" in bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;; deconfig) ip addr flush dev "$interface" ;; esac"#;

fn udhcpc(ns: &Netns, iface: &str, script: &std::path::Path, extra: &[&str]) -> Kill {
    Kill(
        ns.command("udhcpc")
            .args(["-f", "-i", iface, "-t", "10", "-T", "2"])
            .args(extra)
            .arg("-s")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("udhcpc"),
    )
}

/// The common start of a real-client test: skips (with the reason) unless root and
/// `program` are there, then builds a lab whose client interface `ifname` has `mac` and no
/// address, and starts the daemon on the standard config.
fn client_lab(t: &str, program: &str, ifname: &str, mac: &str) -> Option<(PairLab, Daemon)> {
    client_lab_with(t, program, ifname, mac, &config(""))
}

/// [`client_lab`] with a config of the test's own.
fn client_lab_with(
    t: &str,
    program: &str,
    ifname: &str,
    mac: &str,
    config: &str,
) -> Option<(PairLab, Daemon)> {
    let missing = format!("{program} is not installed (cargo xtask setup)");
    if !require_root(t) || !require(have_program(program), t, &missing) {
        return None;
    }
    let lab = PairLab::unaddressed_client(ifname).expect("lab");
    lab.client
        .ip(&["link", "set", ifname, "address", mac])
        .expect("mac");
    let daemon = Daemon::start(&lab.server, config, &[("hosts.toml", INVENTORY)]).expect("daemon");
    Some((lab, daemon))
}

#[test]
fn udhcpc_leases_renews_and_releases() {
    let Some((lab, daemon)) = client_lab(
        "udhcpc_leases_renews_and_releases",
        "udhcpc",
        "client0",
        "52:54:00:00:aa:01",
    ) else {
        return;
    };
    let dir = TempDir::new().expect("dir");
    let script = recorder(&dir, UDHCPC_SCRIPT);
    let child = udhcpc(&lab.client, "client0", &script, &[]);
    let ev = wait_event(&dir, "bound");
    let bound = ev
        .lines()
        .find(|l| l.starts_with("bound"))
        .unwrap_or_default()
        .to_owned();
    assert!(bound.contains("ip=10.77.0.100 "), "{bound}");
    for want in [
        "mask=24",
        "router=10.77.0.1",
        "dns=10.77.0.53",
        "domain=rack1.example",
        "lease=600",
        "serverid=10.77.0.1",
    ] {
        assert!(bound.contains(want), "{want} missing: {bound}");
    }
    assert!(
        lease_lines(&daemon).contains("52:54:00:00:aa:01"),
        "{}",
        lease_lines(&daemon)
    );

    // SIGUSR1: renew (unicast REQUEST with ciaddr: RENEWING).
    signal(&child.0, nix::sys::signal::Signal::SIGUSR1);
    let ev = wait_event(&dir, "renew");
    assert!(
        ev.lines()
            .any(|l| l.starts_with("renew") && l.contains("ip=10.77.0.100 ")),
        "{ev}"
    );

    // SIGUSR2: release; the server frees the lease.
    signal(&child.0, nix::sys::signal::Signal::SIGUSR2);
    let freed = wait_for(WAIT, || {
        (!lease_lines(&daemon).contains("52:54:00:00:aa:01")).then_some(())
    });
    assert!(
        freed.is_some(),
        "lease still listed after release:\n{}\n{}",
        lease_lines(&daemon),
        daemon.log()
    );
}

#[test]
fn reserved_host_gets_its_reserved_address() {
    let Some((lab, daemon)) = client_lab(
        "reserved_host_gets_its_reserved_address",
        "udhcpc",
        "client0",
        "52:54:00:b0:0f:01",
    ) else {
        return;
    };
    let dir = TempDir::new().expect("dir");
    let script = recorder(&dir, UDHCPC_SCRIPT);
    // It asks for a pool address first: a reserved host must still end up on its reservation.
    let _child = udhcpc(&lab.client, "client0", &script, &["-r", "10.77.0.150"]);
    let ev = wait_event(&dir, "bound");
    assert!(
        ev.contains("ip=10.77.0.11 ") && ev.contains("hostname=node01"),
        "{ev}\n{}",
        daemon.log()
    );
}

#[test]
fn dhclient_leases_renews_reboots_into_the_same_address_and_releases() {
    // A 60 s lease: dhclient renews at T1 = 30 s on its own.
    let Some((lab, daemon)) = client_lab_with(
        "dhclient_leases_renews_reboots_into_the_same_address_and_releases",
        "dhclient",
        "dhc0",
        "52:54:00:00:bb:01",
        &config_with_lease(60, ""),
    ) else {
        return;
    };
    let dir = TempDir::new().expect("dir");
    let script = recorder(
        &dir,
        r#"echo "$reason ip=$new_ip_address mask=$new_subnet_mask router=$new_routers dns=$new_domain_name_servers domain=$new_domain_name lease=$new_dhcp_lease_time" >> "$OUT"
case "$reason" in BOUND|RENEW|REBIND|REBOOT) ip addr replace "$new_ip_address/24" dev "$interface" ;; esac"#,
    );
    let leases = dir.path.join("dhclient.leases");
    let pid = dir.path.join("dhclient.pid");
    let dhclient = |extra: &[&str]| {
        let mut c = lab.client.command("dhclient");
        c.args(["-4", "-1", "-v", "-sf"])
            .arg(&script)
            .arg("-lf")
            .arg(&leases)
            .arg("-pf")
            .arg(&pid);
        c.args(extra).arg("dhc0");
        bootfabric_lab::run(&mut c)
    };
    dhclient(&[]).expect("dhclient gets a lease");
    let ev = wait_event(&dir, "BOUND");
    assert!(
        ev.contains("ip=10.77.0.100 ")
            && ev.contains("mask=255.255.255.0")
            && ev.contains("router=10.77.0.1"),
        "{ev}"
    );
    assert!(
        ev.contains("dns=10.77.0.53")
            && ev.contains("domain=rack1.example")
            && ev.contains("lease=60"),
        "{ev}"
    );
    // RENEWING at T1: a unicast REQUEST from the bound address, ACKed with the same one.
    let ev = wait_for(Duration::from_secs(90), || {
        let e = events(&dir);
        e.lines().any(|l| l.starts_with("RENEW")).then_some(e)
    })
    .unwrap_or_else(|| {
        panic!(
            "dhclient never renewed:\n{}\n{}",
            events(&dir),
            daemon.log()
        )
    });
    assert!(
        ev.lines()
            .any(|l| l.starts_with("RENEW") && l.contains("ip=10.77.0.100 ")),
        "{ev}"
    );

    // Stop the daemonised client without releasing, then start again: the INIT-REBOOT of
    // the address in its lease file must be ACKed with the same address.
    dhclient(&["-x"]).expect("dhclient -x");
    dhclient(&[]).expect("dhclient again");
    let ev = wait_event(&dir, "REBOOT");
    assert!(
        ev.lines()
            .any(|l| l.starts_with("REBOOT") && l.contains("ip=10.77.0.100 ")),
        "{ev}\n{}",
        daemon.log()
    );

    dhclient(&["-r"]).expect("dhclient -r");
    let freed = wait_for(WAIT, || {
        (!lease_lines(&daemon).contains("52:54:00:00:bb:01")).then_some(())
    });
    assert!(
        freed.is_some(),
        "lease still listed after release:\n{}",
        lease_lines(&daemon)
    );
}

#[test]
fn dhcpcd_gets_an_address_and_options_renews_and_releases() {
    // A unique interface name: dhcpcd keeps per-interface lease files under /var/lib/dhcpcd.
    let ifname = format!("dcd{}", std::process::id() % 100_000);
    let Some((lab, daemon)) = client_lab(
        "dhcpcd_gets_an_address_and_options_renews_and_releases",
        "dhcpcd",
        &ifname,
        "52:54:00:00:cc:01",
    ) else {
        return;
    };
    let dir = TempDir::new().expect("dir");
    let script = recorder(
        &dir,
        r#"echo "$reason ip=$new_ip_address mask=$new_subnet_cidr router=$new_routers dns=$new_domain_name_servers domain=$new_domain_name" >> "$OUT""#,
    );
    let conf = dir.path.join("dhcpcd.conf");
    std::fs::write(
        &conf,
        "option domain_name_servers, domain_name, routers\nnohook resolv.conf\n",
    )
    .expect("conf");
    let _dhcpcd = Kill(
        lab.client
            .command("dhcpcd")
            .args(["-4", "-B", "-t", "30", "-A", "-L", "--clientid", "-f"])
            .arg(&conf)
            .arg("-c")
            .arg(&script)
            .arg(&ifname)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dhcpcd"),
    );
    let ev = wait_event(&dir, "BOUND");
    assert!(
        ev.contains("ip=10.77.0.100 ") && ev.contains("mask=24"),
        "{ev}"
    );
    assert!(
        ev.contains("router=10.77.0.1")
            && ev.contains("dns=10.77.0.53")
            && ev.contains("domain=rack1.example"),
        "{ev}"
    );
    let addrs = lab
        .client
        .ip(&["-4", "addr", "show", &ifname])
        .expect("addr");
    assert!(addrs.contains("10.77.0.100/24"), "{addrs}");

    // `dhcpcd -n`: renew now (through the running daemon's control socket).
    bootfabric_lab::run(lab.client.command("dhcpcd").args(["-4", "-n"]).arg(&ifname))
        .expect("dhcpcd -n");
    let ev = wait_event(&dir, "RENEW");
    assert!(
        ev.lines()
            .any(|l| l.starts_with("RENEW") && l.contains("ip=10.77.0.100 ")),
        "{ev}"
    );
    // `dhcpcd -k`: release; the server frees the lease.
    bootfabric_lab::run(lab.client.command("dhcpcd").args(["-4", "-k"]).arg(&ifname))
        .expect("dhcpcd -k");
    let freed = wait_for(WAIT, || {
        (!lease_lines(&daemon).contains("52:54:00:00:cc:01")).then_some(())
    });
    assert!(
        freed.is_some(),
        "lease still listed after release:\n{}",
        lease_lines(&daemon)
    );
}

#[test]
fn relayed_clients_are_served_through_isc_dhcp_relay() {
    let t = "relayed_clients_are_served_through_isc_dhcp_relay";
    if !require_root(t)
        || !require(
            have_program("dhcrelay"),
            t,
            "dhcrelay is not installed (cargo xtask setup)",
        )
        || !require(
            have_program("udhcpc"),
            t,
            "udhcpc is not installed (cargo xtask setup)",
        )
    {
        return;
    }
    // client (rc0) --- (down0 10.88.0.1) relay (up0 10.77.0.254) --- (fabric0 10.77.0.1) server
    let server = Netns::new("srv").expect("server");
    let relay = Netns::new("rly").expect("relay");
    let client = Netns::new("cli").expect("client");
    veth(
        &server,
        "fabric0",
        "10.77.0.1/24",
        &relay,
        "up0",
        "10.77.0.254/24",
    )
    .expect("veth up");
    veth(&relay, "down0", "10.88.0.1/24", &client, "rc0", "").expect("veth down");
    server
        .ip(&["route", "add", "10.88.0.0/24", "via", "10.77.0.254"])
        .expect("route");
    client
        .ip(&["link", "set", "rc0", "address", "52:54:00:00:dd:01"])
        .expect("mac");
    let relayed = r#"
[[dhcp.subnets]]
cidr = "10.88.0.0/24"
pools = ["10.88.0.100-10.88.0.150"]
options = { router = "10.88.0.1" }
"#;
    let daemon =
        Daemon::start(&server, &config(relayed), &[("hosts.toml", INVENTORY)]).expect("daemon");
    let _relay = Kill(
        relay
            .command("dhcrelay")
            .args(["-d", "-4", "-a", "-iu", "up0", "-id", "down0", "10.77.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dhcrelay"),
    );
    let dir = TempDir::new().expect("dir");
    let script = recorder(&dir, UDHCPC_SCRIPT);
    let _client = udhcpc(&client, "rc0", &script, &[]);
    let ev = wait_event(&dir, "bound");
    assert!(
        ev.contains("ip=10.88.0.100 ") && ev.contains("router=10.88.0.1"),
        "{ev}\n{}",
        daemon.log()
    );
    assert!(lease_lines(&daemon).contains("52:54:00:00:dd:01"));
}

fn burst_mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x52, 0x54, 0x01, b[1], b[2], b[3]]
}

#[test]
fn sigkill_during_a_burst_loses_no_acknowledged_lease() {
    let t = "sigkill_during_a_burst_loses_no_acknowledged_lease";
    if !require_root(t) {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let mut daemon =
        Daemon::start(&lab.server, &config(""), &[("hosts.toml", INVENTORY)]).expect("daemon");
    let pid = daemon.pid() as i32;
    // 60 clients; the daemon is SIGKILLed right after the 40th ACK arrives, so the ACKs of
    // the clients around it are in flight when the process dies.
    let acked: Vec<(u32, Ipv4Addr)> = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            let mut acked = Vec::new();
            for i in 0..60u32 {
                match c.lease(burst_mac(i), 0x1000 + i, Duration::from_millis(300)) {
                    Ok(Outcome::Ack(ip, _)) => acked.push((i, ip)),
                    Ok(_) => {}
                    Err(e) => panic!("client socket: {e}"),
                }
                if acked.len() == 40 {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(pid),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            acked
        })
        .expect("client namespace");
    assert!(
        acked.len() >= 40,
        "only {} ACKs before the kill",
        acked.len()
    );
    let distinct: HashSet<Ipv4Addr> = acked.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "an address was ACKed twice: {acked:?}"
    );

    daemon.restart().expect("restart after SIGKILL");
    // Every acknowledged lease is in the journal, bound to the same client.
    let listed = lease_lines(&daemon);
    let by_mac: HashMap<String, String> = listed
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let ip = f.next()?.to_owned();
            let mac = f.next()?.to_owned();
            Some((mac, ip))
        })
        .collect();
    for (i, ip) in &acked {
        let m = burst_mac(*i);
        let m = format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        );
        assert_eq!(
            by_mac.get(&m),
            Some(&ip.to_string()),
            "ACKed lease of {m} lost:\n{listed}"
        );
    }
    // The restarted server honours them: each client re-requesting its address gets it,
    // and new clients get addresses nobody holds.
    let acked2 = acked.clone();
    let (reboots, fresh) = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            let reboots: Vec<Outcome> = acked2
                .iter()
                .map(|(i, ip)| {
                    c.reboot(burst_mac(*i), 0x2000 + i, *ip, Duration::from_secs(2))
                        .expect("socket")
                })
                .collect();
            let fresh: Vec<Outcome> = (1000..1010)
                .map(|i| {
                    c.lease(burst_mac(i), 0x3000 + i, Duration::from_secs(2))
                        .expect("socket")
                })
                .collect();
            (reboots, fresh)
        })
        .expect("client namespace");
    for ((_, ip), got) in acked.iter().zip(&reboots) {
        assert!(
            matches!(got, Outcome::Ack(a, _) if a == ip),
            "re-request of {ip}: {got:?}"
        );
    }
    for got in &fresh {
        match got {
            Outcome::Ack(ip, _) => assert!(!distinct.contains(ip), "{ip} handed out twice"),
            other => panic!(
                "new client not served after restart: {other:?}\n{}",
                daemon.log()
            ),
        }
    }
}

#[test]
fn explain_names_the_rule_behind_each_part() {
    let dir = TempDir::new().expect("dir");
    std::fs::write(dir.path.join("hosts.toml"), INVENTORY).expect("hosts");
    let cfg = dir.path.join("bootfabric.toml");
    std::fs::write(&cfg, config("")).expect("config");
    let explain = |args: &[&str]| {
        let mut c = Command::new(bootfabric_lab::bootfabric_bin());
        c.arg("explain")
            .arg("--config")
            .arg(&cfg)
            .args(["--server-ip", "10.77.0.1"])
            .args(args);
        bootfabric_lab::run(&mut c).expect("explain")
    };
    let out = explain(&["--mac", "52:54:00:b0:0f:01", "--arch", "7"]);
    assert!(
        out.contains("10.77.0.11") && out.contains("reservation of host node01"),
        "{out}"
    );
    assert!(
        out.contains("\"ipxe.efi\"") && out.contains("boot.uefi_x64"),
        "{out}"
    );
    let out = explain(&["--mac", "52:54:00:b0:0f:01", "--arch", "0"]);
    assert!(
        out.contains("\"undionly.kpxe\"") && out.contains("boot.bios"),
        "{out}"
    );
    let out = explain(&[
        "--mac",
        "52:54:00:b0:0f:01",
        "--arch",
        "7",
        "--user-class",
        "iPXE",
    ]);
    assert!(out.contains("http://10.77.0.1/boot.ipxe"), "{out}");
    let out = explain(&["--mac", "52:54:00:00:00:99"]);
    assert!(
        out.contains("10.77.0.100") && out.contains("not a PXE"),
        "{out}"
    );
}
