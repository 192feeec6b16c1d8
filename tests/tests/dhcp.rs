//! The DHCP server against real clients in namespace labs: dhclient, udhcpc and dhcpcd
//! get addresses and options, renew and release; reserved hosts get their reservation;
//! a relayed client is served through Debian's isc-dhcp-relay; and a SIGKILL after a burst
//! loses no acknowledged lease (power loss under concurrent clients: tests/durability.rs).

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    process::{Child, Command, Stdio},
    time::Duration,
};

use dhcproto::v4::{DhcpOption, MessageType};

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
    config_with(lease, "", extra)
}

/// The standard lab config with keys of its own in `[dhcp]` (`dhcp_keys`).
fn config_with(lease: u32, dhcp_keys: &str, extra: &str) -> String {
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
{dhcp_keys}
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

use bootfabric_lab::freeze::FreezableFs;
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
    // Only the relay's address may relay (dhcp.relays): dhcrelay sends from 10.77.0.254.
    let daemon = Daemon::start(
        &server,
        &config_with(600, r#"relays = ["10.77.0.254"]"#, relayed),
        &[("hosts.toml", INVENTORY)],
    )
    .expect("daemon");
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
    // 40 clients one after the other, then SIGKILL. A killed process cannot lose what it
    // wrote (the page cache keeps it), and one client at a time has at most one ACK in
    // flight: this proves replay after a crash of the process; a power cut under concurrent
    // clients is `durability::power_cut_under_concurrent_clients_loses_no_acknowledged_lease`.
    // Each try waits 2 s, a bound on a busy machine's fdatasync, not a timing check.
    let acked: Vec<(u32, Ipv4Addr)> = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            let mut acked = Vec::new();
            for i in 0..40u32 {
                match c.lease(burst_mac(i), 0x1000 + i, Duration::from_secs(2)) {
                    Ok(Outcome::Ack(ip, _)) => acked.push((i, ip)),
                    Ok(other) => panic!("client {i}: {other:?}"),
                    Err(e) => panic!("client socket: {e}"),
                }
            }
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
            acked
        })
        .expect("client namespace");
    assert_eq!(acked.len(), 40);
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
    // An iPXE that says (option 175) it has no HTTP gets its script over TFTP.
    let ipxe = |features: &str| {
        explain(&[
            "--mac",
            "52:54:00:b0:0f:01",
            "--arch",
            "7",
            "--ipxe-features",
            features,
        ])
    };
    let out = ipxe("tftp,dns");
    assert!(
        out.contains("\"boot.ipxe\"") && out.contains("iPXE without HTTP (option 175)"),
        "{out}"
    );
    let out = explain(&["--mac", "52:54:00:00:00:99"]);
    assert!(
        out.contains("10.77.0.100") && out.contains("not a PXE"),
        "{out}"
    );
    // Under an https base, an iPXE without HTTPS is told why it will stop there.
    std::fs::write(&cfg, config("[boot]\nhttp_base = \"https://{server}\"\n")).expect("config");
    let lacks = "this iPXE has no HTTPS";
    let out = ipxe("http,dns,tftp");
    assert!(
        out.contains("https://10.77.0.1/boot.ipxe") && out.contains(lacks),
        "{out}"
    );
    let out = ipxe("http,https,dns");
    assert!(
        out.contains("https://10.77.0.1/boot.ipxe") && !out.contains(lacks),
        "{out}"
    );
    // A name that is no feature is refused, saying which.
    let mut c = Command::new(bootfabric_lab::bootfabric_bin());
    c.arg("explain").arg("--config").arg(&cfg).args([
        "--mac",
        "52:54:00:b0:0f:01",
        "--ipxe-features",
        "http,gopher",
    ]);
    let refused = c.output().expect("explain");
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && said.contains("\"gopher\" is not an iPXE feature"),
        "{said}"
    );
}

// ---- Attacks from a machine on the provisioning network (issue 14, items 7 and 8). ----

const RELAYED: &str = r#"
[[dhcp.subnets]]
cidr = "10.88.0.0/24"
pools = ["10.88.0.100-10.88.0.150"]
options = { router = "10.88.0.1" }
"#;

fn metrics(lab: &PairLab, daemon: &Daemon) -> String {
    bootfabric_lab::metrics(&lab.server, daemon).expect("GET /metrics")
}

fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    bootfabric_lab::sample(text, name, labels).unwrap_or(0.0)
}

fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// A machine that is not a relay agent sends a relayed DISCOVER (giaddr in a relayed subnet)
/// as a relay would, to the server's address: with `dhcp.relays` set it gets no offer and
/// takes no address of that subnet. The same packet from the listed relay address is served.
#[test]
fn attack_relayed_discover_from_an_unlisted_source_gets_no_offer() {
    let t = "attack_relayed_discover_from_an_unlisted_source_gets_no_offer";
    if !require_root(t) {
        return;
    }
    let lab = PairLab::new().expect("lab");
    // The attacker (10.77.0.2) also answers for the giaddr it forges, so that an offer sent
    // to giaddr:67 comes back to it: what a rogue machine on the fabric can do.
    lab.server
        .ip(&["route", "add", "10.88.0.0/24", "via", "10.77.0.2"])
        .expect("route");
    lab.client
        .ip(&["addr", "add", "10.88.0.1/32", "dev", "client0"])
        .expect("giaddr");
    let daemon = Daemon::start(
        &lab.server,
        &config_with(600, r#"relays = ["10.77.0.254"]"#, RELAYED),
        &[("hosts.toml", INVENTORY)],
    )
    .expect("daemon");
    let relayed = |xid: u32| {
        lab.client
            .run(move || {
                let c = Client::bind_port(67).expect("bind 67");
                let mut m =
                    Client::message([0x52, 0x54, 0, 0x66, 0, 1], xid, MessageType::Discover);
                m.set_giaddr(Ipv4Addr::new(10, 88, 0, 1)).set_hops(1);
                c.send_to(&m, "10.77.0.1:67".parse().expect("addr"))
                    .expect("send");
                c.reply(xid, Duration::from_secs(3))
            })
            .expect("client namespace")
    };
    let got = relayed(0x5101);
    assert!(
        got.is_none(),
        "a relayed DISCOVER from 10.77.0.2 (not in dhcp.relays) was answered: {:?} offered",
        got.map(|m| m.yiaddr())
    );
    let text = wait_for(WAIT, || {
        let m = metrics(&lab, &daemon);
        (metric(
            &m,
            "bootfabric_dhcp_dropped_total",
            &[("reason", "relay_not_allowed")],
        ) >= 1.0)
            .then_some(m)
    })
    .unwrap_or_else(|| panic!("drop not counted:\n{}", metrics(&lab, &daemon)));
    assert_eq!(
        metric(
            &text,
            "bootfabric_dhcp_leases_active",
            &[("subnet", "10.88.0.0/24")]
        ),
        0.0,
        "an address of the relayed subnet was taken"
    );
    // The listed relay: the same packet from 10.77.0.254 is served.
    lab.client_speaks_as("10.77.0.254/24", Ipv4Addr::new(10, 77, 0, 1))
        .expect("relay address");
    let got = relayed(0x5102);
    assert_eq!(
        got.map(|m| m.yiaddr()),
        Some(Ipv4Addr::new(10, 88, 0, 100)),
        "the listed relay was not served:\n{}",
        daemon.log()
    );
}

/// A machine releases another host's lease: a RELEASE with the victim's chaddr and ciaddr,
/// sent from the attacker's own address. The lease stays the victim's.
#[test]
fn attack_release_of_another_hosts_lease_is_ignored() {
    let t = "attack_release_of_another_hosts_lease_is_ignored";
    if !require_root(t) {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let daemon =
        Daemon::start(&lab.server, &config(""), &[("hosts.toml", INVENTORY)]).expect("daemon");
    let victim = [0x52, 0x54, 0, 0x66, 0, 2];
    let (leased, _) = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            match c
                .lease(victim, 0x5201, Duration::from_secs(2))
                .expect("socket")
            {
                Outcome::Ack(ip, server) => (ip, server),
                other => panic!("victim not served: {other:?}"),
            }
        })
        .expect("client namespace");
    assert!(lease_lines(&daemon).contains(&mac_text(victim)));
    // The attacker, at 10.77.0.2, forges the victim's RELEASE.
    lab.client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            let mut m = Client::message(victim, 0x5202, MessageType::Release);
            m.set_flags(Default::default()).set_ciaddr(leased);
            m.opts_mut()
                .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 77, 0, 1)));
            c.send_to(&m, "10.77.0.1:67".parse().expect("addr"))
                .expect("send");
        })
        .expect("client namespace");
    // Wait until the server has handled it, whichever way it decided.
    wait_for(WAIT, || {
        let m = metrics(&lab, &daemon);
        let handled = metric(
            &m,
            "bootfabric_dhcp_packets_total",
            &[("type", "release"), ("outcome", "committed")],
        ) + metric(
            &m,
            "bootfabric_dhcp_packets_total",
            &[("type", "release"), ("outcome", "silent")],
        ) + metric(
            &m,
            "bootfabric_dhcp_dropped_total",
            &[("reason", "release_not_from_client")],
        );
        (handled >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("RELEASE never handled:\n{}", metrics(&lab, &daemon)));
    let listed = lease_lines(&daemon);
    assert!(
        listed.contains(&mac_text(victim)) && listed.contains(&leased.to_string()),
        "a RELEASE from 10.77.0.2 freed the lease of {leased}:\n{listed}"
    );
    // A new client does not get the victim's address.
    let fresh = lab
        .client
        .run(|| {
            let c = Client::bind().expect("bind 68");
            c.lease([0x52, 0x54, 0, 0x66, 0, 3], 0x5203, Duration::from_secs(2))
                .expect("socket")
        })
        .expect("client namespace");
    assert!(
        matches!(fresh, Outcome::Ack(ip, _) if ip != leased),
        "{fresh:?}"
    );
    let m = metrics(&lab, &daemon);
    assert!(
        metric(
            &m,
            "bootfabric_dhcp_dropped_total",
            &[("reason", "release_not_from_client")]
        ) >= 1.0,
        "{m}"
    );
}

/// One client declines every address it is offered, walking the pool: only a handful of
/// addresses are quarantined, the rest stay offerable, and the refused DECLINEs are counted.
#[test]
fn attack_decline_flood_cannot_exhaust_the_pool() {
    let t = "attack_decline_flood_cannot_exhaust_the_pool";
    if !require_root(t) {
        return;
    }
    let lab = PairLab::new().expect("lab");
    // The default burst (10) with the slowest refill there is (one an hour): no token comes
    // back within the test, so the count quarantined is the burst exactly.
    const BURST: usize = 10;
    let daemon = Daemon::start(
        &lab.server,
        &config_with(600, "decline_burst = 10\ndecline_per_hour = 1", ""),
        &[("hosts.toml", INVENTORY)],
    )
    .expect("daemon");
    const POOL: u32 = 100;
    let attacker = [0x52, 0x54, 0, 0x66, 0, 4];
    let sent = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            let mut sent = 0u32;
            for i in 0..POOL {
                let Some(offer) = c
                    .offer(attacker, 0x5300 + i, Duration::from_secs(2))
                    .expect("socket")
                else {
                    // The pool is exhausted.
                    break;
                };
                let mut d = Client::message(attacker, 0x5300 + i, MessageType::Decline);
                d.opts_mut()
                    .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
                d.opts_mut()
                    .insert(DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 77, 0, 1)));
                c.send_to(&d, "255.255.255.255:67".parse().expect("addr"))
                    .expect("send");
                sent += 1;
            }
            sent
        })
        .expect("client namespace");
    // Every DECLINE handled, whichever way.
    let text = wait_for(WAIT, || {
        let m = metrics(&lab, &daemon);
        let handled = metric(
            &m,
            "bootfabric_dhcp_packets_total",
            &[("type", "decline"), ("outcome", "committed")],
        ) + metric(
            &m,
            "bootfabric_dhcp_packets_total",
            &[("type", "decline"), ("outcome", "silent")],
        ) + metric(
            &m,
            "bootfabric_dhcp_dropped_total",
            &[("reason", "decline_rate_limited")],
        );
        (handled >= f64::from(sent)).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "{sent} DECLINEs not all handled:\n{}",
            metrics(&lab, &daemon)
        )
    });
    // A DECLINE is counted when the server takes it and reaches the journal in the
    // background: wait for the journal to hold the burst (or the wait to end), then check
    // that it holds no more.
    let declined_now = || {
        lease_lines_all(&daemon)
            .lines()
            .filter(|l| l.contains("declined"))
            .count()
    };
    let declined = wait_for(WAIT, || {
        let n = declined_now();
        (n >= BURST).then_some(n)
    })
    .unwrap_or_else(declined_now);
    eprintln!(
        "{sent} DECLINEs sent: {declined} addresses declined, {} refused",
        metric(
            &text,
            "bootfabric_dhcp_dropped_total",
            &[("reason", "decline_rate_limited")]
        )
    );
    assert_eq!(
        declined, BURST,
        "{declined} of {POOL} addresses declined by one client ({sent} DECLINEs sent)"
    );
    // The server's own count, final once every DECLINE is handled: no more than the burst.
    assert_eq!(
        metric(
            &text,
            "bootfabric_dhcp_packets_total",
            &[("type", "decline"), ("outcome", "committed")],
        ),
        BURST as f64,
        "{text}"
    );
    let used = metric(
        &text,
        "bootfabric_dhcp_leases_active",
        &[("subnet", "10.77.0.0/24")],
    );
    assert!(
        used <= 25.0,
        "{used} of {POOL} addresses in use after the flood"
    );
    assert!(
        metric(
            &text,
            "bootfabric_dhcp_dropped_total",
            &[("reason", "decline_rate_limited")]
        ) >= 1.0,
        "{text}"
    );
    // Other clients are still served.
    let outcomes = lab
        .client
        .run(|| {
            let c = Client::bind().expect("bind 68");
            (0..10u8)
                .map(|i| {
                    c.lease(
                        [0x52, 0x54, 0, 0x67, 0, i],
                        0x5400 + u32::from(i),
                        Duration::from_secs(2),
                    )
                    .expect("socket")
                })
                .collect::<Vec<_>>()
        })
        .expect("client namespace");
    assert!(
        outcomes.iter().all(|o| matches!(o, Outcome::Ack(..))),
        "{outcomes:?}"
    );
}

fn lease_lines_all(daemon: &Daemon) -> String {
    daemon
        .cli(&["leases", "--all"])
        .expect("bootfabric leases --all")
}

/// A lease journal with a corrupt complete line in the middle (a flipped byte, not a
/// crash's torn tail): the daemon refuses to start and says where and how to repair; the
/// repair keeps a copy, drops only that line, and the acknowledged leases after it survive.
#[test]
fn attack_corrupt_journal_line_refuses_start_and_repair_keeps_later_leases() {
    let t = "attack_corrupt_journal_line_refuses_start_and_repair_keeps_later_leases";
    if !require_root(t) {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let mut daemon =
        Daemon::start(&lab.server, &config(""), &[("hosts.toml", INVENTORY)]).expect("daemon");
    let macs: Vec<[u8; 6]> = (1..=3u8).map(|i| [0x52, 0x54, 0, 0x68, 0, i]).collect();
    let m2 = macs.clone();
    let acked: Vec<Ipv4Addr> = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            m2.iter()
                .enumerate()
                .map(|(i, mac)| {
                    match c
                        .lease(*mac, 0x5500 + i as u32, Duration::from_secs(2))
                        .expect("socket")
                    {
                        Outcome::Ack(ip, _) => ip,
                        other => panic!("not served: {other:?}"),
                    }
                })
                .collect()
        })
        .expect("client namespace");
    daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("stop");
    let state = daemon.config_path().with_file_name("state");
    let journal = state.join("leases.journal");
    let original = std::fs::read_to_string(&journal).expect("journal");
    // Flip one byte inside the second client's record (a line in the middle).
    let victim = format!(" {} ", acked[1]);
    let line_no = original
        .lines()
        .position(|l| l.contains(&victim))
        .expect("second record")
        + 1;
    let offset: usize = original
        .lines()
        .take(line_no - 1)
        .map(|l| l.len() + 1)
        .sum();
    let mut bytes = original.clone().into_bytes();
    bytes[offset + 12] ^= 0x01;
    std::fs::write(&journal, &bytes).expect("corrupt");

    let refused = daemon.restart();
    let Err(why) = refused else {
        panic!(
            "the daemon started on a journal with a corrupt line in the middle; leases now:\n{}",
            lease_lines(&daemon)
        );
    };
    eprintln!("refused as expected:\n{why}");
    let at = format!("leases.journal:{line_no}:");
    for want in [
        at.as_str(),
        &format!("byte offset {offset}"),
        "bootfabric leases repair",
    ] {
        assert!(why.contains(want), "{want:?} missing from:\n{why}");
    }

    let out = daemon.cli(&["leases", "repair"]).expect("leases repair");
    eprintln!("bootfabric leases repair:\n{out}");
    assert!(
        out.contains(&format!("line {line_no}")) && out.contains(&mac_text(macs[1])),
        "{out}"
    );
    let copies: Vec<_> = std::fs::read_dir(&state)
        .expect("state")
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("leases.journal.corrupt-")
        })
        .collect();
    assert_eq!(copies.len(), 1, "one copy of the original expected");
    assert_eq!(std::fs::read(copies[0].path()).expect("copy"), bytes);

    daemon.restart().expect("the repaired journal starts");
    let listed = lease_lines(&daemon);
    for (mac, ip) in [(macs[0], acked[0]), (macs[2], acked[2])] {
        assert!(
            listed
                .lines()
                .any(|l| l.contains(&mac_text(mac)) && l.contains(&ip.to_string())),
            "lease of {} lost:\n{listed}",
            mac_text(mac)
        );
    }
    // The last client's address is still its own, and nobody else gets it.
    let last = (macs[2], acked[2]);
    let (again, fresh) = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            let again = c
                .reboot(last.0, 0x5600, last.1, Duration::from_secs(2))
                .expect("socket");
            let fresh = c
                .lease([0x52, 0x54, 0, 0x68, 0, 9], 0x5601, Duration::from_secs(2))
                .expect("socket");
            (again, fresh)
        })
        .expect("client namespace");
    assert!(
        matches!(again, Outcome::Ack(ip, _) if ip == last.1),
        "{again:?}"
    );
    assert!(
        matches!(fresh, Outcome::Ack(ip, _) if ip != last.1 && ip != acked[0]),
        "{fresh:?}"
    );
}

/// The journal's disk hangs (its file system frozen): REQUESTs get no ACK (their leases are
/// not durable), at most `dhcp.commit_queue` records wait, commits beyond it are refused at
/// once and those waiting time out, all counted; DISCOVERs and /metrics are still answered;
/// once the disk is back, clients get their ACKs again.
#[test]
fn a_hung_journal_disk_withholds_acks_within_bounds_and_dhcp_keeps_answering() {
    let t = "a_hung_journal_disk_withholds_acks_within_bounds_and_dhcp_keeps_answering";
    if !require_root(t)
        || !bootfabric_lab::require_programs(t, &["mkfs.ext4", "mount", "umount", "fsfreeze"])
    {
        return;
    }
    let fs = FreezableFs::new().expect("loop file system");
    let lab = PairLab::new().expect("lab");
    let cfg = config_with(
        600,
        "commit_delay_ms = 0\ncommit_queue = 4\ncommit_timeout_ms = 1000",
        "",
    )
    .replace(
        "state_dir = \"state\"",
        &format!("state_dir = \"{}\"", fs.mnt.display()),
    );
    let daemon = Daemon::start(&lab.server, &cfg, &[("hosts.toml", INVENTORY)]).expect("daemon");
    let mac = |i: u8| [0x52, 0x54, 0, 0x69, 0, i];
    let before = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            c.lease(mac(0), 0x5700, Duration::from_secs(2))
                .expect("socket")
        })
        .expect("client namespace");
    assert!(matches!(before, Outcome::Ack(..)), "{before:?}");

    let frozen = fs.freeze().expect("fsfreeze");
    let (during, offered) = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            let during: Vec<Outcome> = (1..=12u8)
                .map(|i| {
                    c.lease(mac(i), 0x5700 + u32::from(i), Duration::from_millis(500))
                        .expect("socket")
                })
                .collect();
            let offered = c
                .offer(mac(50), 0x5750, Duration::from_secs(5))
                .expect("socket")
                .map(|m| m.yiaddr());
            (during, offered)
        })
        .expect("client namespace");
    assert!(
        during.iter().all(|o| *o == Outcome::NoAnswer),
        "an ACK left without a durable lease: {during:?}"
    );
    assert!(
        offered.is_some(),
        "DISCOVER unanswered while the disk hangs"
    );
    let text = wait_for(WAIT, || {
        let m = metrics(&lab, &daemon);
        let refused = |r| metric(&m, "bootfabric_dhcp_commit_refused_total", &[("reason", r)]);
        (refused("timeout") >= 1.0 && refused("queue_full") >= 1.0).then_some(m)
    })
    .unwrap_or_else(|| panic!("refusals not counted:\n{}", metrics(&lab, &daemon)));
    let in_flight = metric(&text, "bootfabric_dhcp_commits_in_flight", &[]);
    assert!(
        (1.0..=4.0).contains(&in_flight),
        "{in_flight} commits in flight with dhcp.commit_queue = 4"
    );
    eprintln!(
        "during the hang: in flight {in_flight}, refused queue_full {}, timeout {}",
        metric(
            &text,
            "bootfabric_dhcp_commit_refused_total",
            &[("reason", "queue_full")]
        ),
        metric(
            &text,
            "bootfabric_dhcp_commit_refused_total",
            &[("reason", "timeout")]
        ),
    );

    drop(frozen);
    let after = wait_for(WAIT, || {
        let got = lab
            .client
            .run(move || {
                let c = Client::bind().expect("bind 68");
                c.lease(mac(99), 0x5799, Duration::from_secs(2))
                    .expect("socket")
            })
            .expect("client namespace");
        matches!(got, Outcome::Ack(..)).then_some(got)
    });
    assert!(
        after.is_some(),
        "no ACK after the disk came back:\n{}",
        daemon.log()
    );
}

/// `bootfabric leases` as (address, MAC) pairs of live bindings.
fn bound_pairs(daemon: &Daemon) -> Vec<(String, String)> {
    lease_lines(daemon)
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            Some((f.next()?.to_owned(), f.next()?.to_owned()))
        })
        .collect()
}

/// No address listed for two MACs.
fn assert_no_shared_address(daemon: &Daemon) {
    let mut owners: HashMap<String, HashSet<String>> = HashMap::new();
    for (ip, mac) in bound_pairs(daemon) {
        owners.entry(ip).or_default().insert(mac);
    }
    assert!(
        owners.values().all(|m| m.len() == 1),
        "one address for two MACs:\n{}",
        lease_lines(daemon)
    );
}

/// A reservation moved (SIGHUP) from MAC A to MAC B while udhcpc A holds it: B is a pool
/// client until A lets go, `bootfabric leases` never lists the address for both, and once
/// A releases it B's next exchange gets the reservation.
#[test]
fn a_reservation_moved_while_leased_waits_for_the_old_holder() {
    const A: &str = "52:54:00:b0:0f:01";
    const B: [u8; 6] = [0x52, 0x54, 0, 0xb0, 0x0f, 0x02];
    let Some((lab, daemon)) = client_lab(
        "a_reservation_moved_while_leased_waits_for_the_old_holder",
        "udhcpc",
        "client0",
        A,
    ) else {
        return;
    };
    let dir = TempDir::new().expect("dir");
    let script = recorder(&dir, UDHCPC_SCRIPT);
    let child = udhcpc(&lab.client, "client0", &script, &[]);
    let ev = wait_event(&dir, "bound");
    assert!(ev.contains("ip=10.77.0.11 "), "{ev}");

    // node01's reservation moves to B.
    let hosts = daemon
        .config_path()
        .parent()
        .expect("config dir")
        .join("hosts.toml");
    std::fs::write(&hosts, INVENTORY.replace(A, "52:54:00:b0:0f:02")).expect("hosts.toml");
    daemon.reload("config reloaded").expect("reload");

    // B (a scripted client on the same link; udhcpc A holds no socket while bound).
    let lease_b = |xid: u32| {
        // A source address and a route for its broadcasts that udhcpc's deconfig (an address
        // flush) cannot take away between the two exchanges.
        lab.client
            .ip(&["addr", "replace", "10.77.0.250/24", "dev", "client0"])
            .expect("addr");
        lab.client
            .ip(&["route", "replace", "default", "dev", "client0"])
            .expect("route");
        lab.client
            .run(move || -> std::io::Result<Outcome> {
                Client::bind()?.lease(B, xid, Duration::from_secs(2))
            })
            .expect("namespace")
            .expect("client")
    };
    let pool = match lease_b(0xb001) {
        Outcome::Ack(ip, _) => ip,
        other => panic!("B got {other:?}\n{}", daemon.log()),
    };
    assert_ne!(
        pool,
        Ipv4Addr::new(10, 77, 0, 11),
        "{}",
        lease_lines(&daemon)
    );
    assert!(
        (100..=199).contains(&pool.octets()[3]),
        "B waits on a pool address: {pool}"
    );
    assert_no_shared_address(&daemon);
    assert!(
        daemon.logged(
            "reservation 10.77.0.11 of host node01 waits: leased to 52:54:00:b0:0f:01 until "
        ),
        "the log says why B got a pool address:\n{}",
        daemon.log()
    );
    assert!(
        bound_pairs(&daemon).contains(&("10.77.0.11".to_owned(), A.to_owned())),
        "A keeps its lease:\n{}",
        lease_lines(&daemon)
    );

    // A releases: the address is free for its new owner.
    signal(&child.0, nix::sys::signal::Signal::SIGUSR2);
    wait_for(WAIT, || (!lease_lines(&daemon).contains(A)).then_some(()))
        .unwrap_or_else(|| panic!("A's lease still listed:\n{}", lease_lines(&daemon)));
    assert_eq!(
        lease_b(0xb002),
        Outcome::Ack(Ipv4Addr::new(10, 77, 0, 11), Ipv4Addr::new(10, 77, 0, 1)),
        "{}",
        daemon.log()
    );
    assert_no_shared_address(&daemon);
}
