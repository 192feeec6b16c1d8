//! DHCPv6 against clients we did not write: rdisc6 reads the managed router advertisement,
//! ISC dhclient -6 gets its host's reservation (matched by the MAC in its DUID) and a pool
//! address, renews and releases; a binding survives a SIGKILL; perfdhcp -6 is served through
//! Relay-forward; HTTP and TFTP answer over IPv6 (curl, tftp-hpa) and the ledger places the
//! host at its IPv6 address.

use std::time::Duration;

use bootfabric_lab::{
    have_program, http_get, require, require_root, run, sample, wait_for, Daemon, PairLab, TempDir,
};

const SERVER6: &str = "2001:db8:77::1";
const RESERVED: &str = "2001:db8:77::11";
const HOST_MAC: &str = "52:54:00:b0:06:01";

fn config(lifetimes: &str) -> String {
    format!(
        r#"
[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[xdp]
mode = "off"
[tftp]
root = "root"
[http]
root = "root"
port = 8080
[boot]
http_base = "http://{{server}}:8080"
[dhcp6]
{lifetimes}
[[dhcp6.subnets]]
cidr = "2001:db8:77::/64"
interface = "fabric0"
pools = ["2001:db8:77::1000-2001:db8:77::1fff"]
"#
    )
}

const INVENTORY: &str = r#"
[profiles.installer]
kernel = "vmlinuz"
[[hosts]]
name = "node01"
mac = "52:54:00:b0:06:01"
ipv6 = "2001:db8:77::11"
profile = "installer"
"#;

/// A lab with IPv6 on both ends, the server at 2001:db8:77::1, and the daemon running;
/// `None` (skipped) without root or the client programs.
fn lab(t: &str, lifetimes: &str, programs: &[&str]) -> Option<(PairLab, Daemon, TempDir)> {
    if !require_root(t) {
        return None;
    }
    for p in programs {
        if !require(
            have_program(p),
            t,
            &format!("{p} is missing (cargo xtask setup)"),
        ) {
            return None;
        }
    }
    let lab = PairLab::new().expect("lab");
    lab.client
        .ip(&["link", "set", "client0", "address", HOST_MAC])
        .expect("mac");
    lab.server
        .ip(&[
            "addr",
            "add",
            &format!("{SERVER6}/64"),
            "dev",
            "fabric0",
            "nodad",
        ])
        .expect("address");
    let root = TempDir::new().expect("root");
    let files = root.path.join("root");
    std::fs::create_dir_all(&files).expect("root folder");
    std::fs::write(files.join("vmlinuz"), vec![7u8; 300_000]).expect("kernel");
    let mut cfg = config(lifetimes);
    cfg = cfg.replace(
        "root = \"root\"",
        &format!("root = \"{}\"", files.display()),
    );
    let daemon = Daemon::start(&lab.server, &cfg, &[("hosts.toml", INVENTORY)]).expect("daemon");
    // The link-local addresses finish duplicate address detection before clients can send.
    wait_for(Duration::from_secs(20), || {
        let a = lab
            .client
            .ip(&["-6", "addr", "show", "dev", "client0"])
            .ok()?;
        (a.contains("fe80") && !a.contains("tentative")).then_some(())
    })
    .expect("client link-local address");
    Some((lab, daemon, root))
}

fn metric(lab: &PairLab, daemon: &Daemon, name: &str, labels: &[(&str, &str)]) -> f64 {
    let (_, m) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    sample(&m, name, labels).unwrap_or(0.0)
}

/// A dhclient-script that adds the address it was given and records each event.
fn recorder(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.path.join("script.sh");
    let out = dir.path.join("events");
    std::fs::write(
        &path,
        format!(
            // The address first, then the event: the test acts on the event at once. With
            // its prefix length: the test is of DHCPv6 and the servers behind it; whether the
            // namespace's kernel has taken the advertisement's on-link prefix yet is a race
            // (rdisc6 checks the advertisement itself on the wire).
            "#!/bin/sh\ncase \"$reason\" in BOUND6|RENEW6|REBIND6) ip -6 addr replace \"$new_ip6_address/64\" dev \"$interface\" nodad ;; esac\necho \"$reason ip6=$new_ip6_address pref=$new_preferred_life max=$new_max_life\" >> {}\nexit 0\n",
            out.display()
        ),
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

fn wait_event(dir: &TempDir, what: &str, daemon: &Daemon) -> String {
    wait_for(Duration::from_secs(60), || {
        let e = events(dir);
        e.lines().any(|l| l.starts_with(what)).then_some(e)
    })
    .unwrap_or_else(|| panic!("no {what} event:\n{}\n{}", events(dir), daemon.log()))
}

#[test]
fn dhclient_gets_its_reservation_renews_releases_and_a_crash_loses_no_binding() {
    let t = "dhclient_gets_its_reservation_renews_releases_and_a_crash_loses_no_binding";
    // Preferred 20 s: dhclient renews at T1 = 10 s.
    let Some((lab, mut daemon, _root)) = lab(
        t,
        "preferred_lifetime_s = 20\nvalid_lifetime_s = 40",
        &["dhclient", "rdisc6"],
    ) else {
        return;
    };
    // The advertisement says: addresses from DHCPv6, the prefix on-link, not a router.
    let ra = wait_for(Duration::from_secs(20), || {
        run(lab
            .client
            .command("rdisc6")
            .args(["-1", "-w", "1500", "-r", "2", "client0"]))
        .ok()
    })
    .unwrap_or_else(|| panic!("no router advertisement:\n{}", daemon.log()));
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    for want in [
        "Stateful address conf. : Yes",
        "Stateful other conf. : Yes",
        "Router lifetime : 0 (0x00000000) seconds",
        "Prefix : 2001:db8:77::/64",
        "On-link : Yes",
        "Autonomous address conf.: No",
    ] {
        assert!(squeeze(&ra).contains(want), "{want:?} not in\n{ra}");
    }

    let dir = TempDir::new().expect("dir");
    let script = recorder(&dir);
    let (leases, pid) = (
        dir.path.join("dhclient6.leases"),
        dir.path.join("dhclient6.pid"),
    );
    let dhclient = |extra: &[&str]| {
        let mut c = lab.client.command("dhclient");
        // -D LLT: a DUID with the MAC in it, as ISC dhclient makes by default.
        c.args(["-6", "-1", "-v", "-D", "LLT", "-sf"])
            .arg(&script)
            .arg("-lf")
            .arg(&leases)
            .arg("-pf")
            .arg(&pid);
        c.args(extra).arg("client0");
        run(&mut c)
    };
    dhclient(&[]).expect("dhclient -6 binds");
    let ev = wait_event(&dir, "BOUND6", &daemon);
    assert!(
        ev.contains(&format!("ip6={RESERVED} ")),
        "the host's reservation: {ev}"
    );
    assert!(ev.contains("pref=20 max=40"), "{ev}");
    let journal =
        std::fs::read_to_string(daemon.config_path().with_file_name("state/leases6.journal"))
            .expect("journal");
    assert!(
        journal.contains(&format!("B {RESERVED} ")) && journal.contains(HOST_MAC),
        "{journal}"
    );

    // The ledger places node01 at its IPv6 address: HTTP over IPv6 from there gets its script.
    let (status, body) = {
        let out = lab
            .client
            .command("curl")
            .args([
                "-sg",
                "-w",
                "\n%{http_code}",
                &format!("http://[{SERVER6}]:8080/boot.ipxe"),
            ])
            .output()
            .expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", ""));
        (code.to_owned(), body.to_owned())
    };
    assert_eq!(status, "200", "{body}\n{}", daemon.log());
    assert!(body.contains("#!ipxe") && body.contains("node01"), "{body}");
    assert!(
        body.contains(&format!("http://[{SERVER6}]:8080/vmlinuz")),
        "URLs name the server by its IPv6 address: {body}"
    );
    // A file over HTTP and TFTP over IPv6, byte for byte.
    let got = dir.path.join("vmlinuz.http");
    run(lab
        .client
        .command("curl")
        .args(["-sgf", "-o"])
        .arg(&got)
        .arg(format!("http://[{SERVER6}]:8080/vmlinuz")))
    .expect("curl over IPv6");
    assert_eq!(std::fs::read(&got).expect("file").len(), 300_000);
    if have_program("tftp") {
        let got = dir.path.join("vmlinuz.tftp");
        run(lab
            .client
            .command("tftp")
            .args(["-6", SERVER6, "-m", "binary", "-c", "get", "vmlinuz"])
            .arg(&got))
        .expect("tftp -6");
        assert_eq!(std::fs::read(&got).expect("file").len(), 300_000);
    }
    let (_, timeline) = http_get(
        &lab.server,
        daemon.admin,
        &format!("/api/timeline?mac={HOST_MAC}"),
    )
    .expect("timeline");
    assert!(timeline.contains(RESERVED), "{timeline}");

    // Renew at T1, answered with the same address.
    let ev = wait_event(&dir, "RENEW6", &daemon);
    assert!(
        ev.lines()
            .any(|l| l.starts_with("RENEW6") && l.contains(RESERVED)),
        "{ev}"
    );
    assert!(
        metric(
            &lab,
            &daemon,
            "bootfabric_dhcp6_received_total",
            &[("type", "renew")]
        ) >= 1.0
    );

    // SIGKILL and restart: the binding is on disk, so a new Solicit from the same client
    // (a reboot) gets the same address back and no other client could have taken it.
    daemon
        .stop_with(nix::sys::signal::Signal::SIGKILL)
        .expect("kill");
    daemon.restart().expect("restart");
    run(lab
        .client
        .command("dhclient")
        .args(["-6", "-x", "-pf"])
        .arg(&pid))
    .ok();
    dhclient(&[]).expect("dhclient -6 again");
    let ev = wait_for(Duration::from_secs(60), || {
        let e = events(&dir);
        (e.lines().filter(|l| l.starts_with("BOUND6")).count() >= 2).then_some(e)
    })
    .unwrap_or_else(|| panic!("no second BOUND6:\n{}\n{}", events(&dir), daemon.log()));
    assert!(
        ev.lines()
            .filter(|l| l.starts_with("BOUND6"))
            .all(|l| l.contains(RESERVED)),
        "{ev}"
    );

    // Release: the binding is journaled released.
    dhclient(&["-r"]).expect("dhclient -6 -r");
    let released = wait_for(Duration::from_secs(20), || {
        let j =
            std::fs::read_to_string(daemon.config_path().with_file_name("state/leases6.journal"))
                .ok()?;
        j.lines()
            .last()
            .filter(|l| l.contains(&format!(" R {RESERVED} ")))
            .map(str::to_owned)
    });
    assert!(released.is_some(), "{}", daemon.log());
}

#[test]
fn perfdhcp_is_served_through_relay_forward_and_unknown_duids_get_pool_addresses() {
    let t = "perfdhcp_is_served_through_relay_forward_and_unknown_duids_get_pool_addresses";
    let Some((lab, daemon, _root)) = lab(t, "", &["perfdhcp"]) else {
        return;
    };
    lab.client
        .ip(&[
            "addr",
            "add",
            "2001:db8:77::2/64",
            "dev",
            "client0",
            "nodad",
        ])
        .expect("relay address");
    // 100 made-up clients, relayed (-A 1): each completes Solicit, Advertise, Request, Reply.
    let out = lab
        .client
        .command("timeout")
        .args([
            "30", "perfdhcp", "-6", "-l", "client0", "-A", "1", "-r", "50", "-R", "100", "-n",
            "100", "-p", "10", SERVER6,
        ])
        .output()
        .expect("perfdhcp");
    let text = String::from_utf8_lossy(&out.stdout);
    let received = |what: &str| {
        text.lines()
            .skip_while(|l| !l.contains(what))
            .find_map(|l| {
                l.trim()
                    .strip_prefix("received packets: ")
                    .map(str::to_owned)
            })
    };
    assert!(
        received("SOLICIT-ADVERTISE").and_then(|n| n.parse::<u32>().ok()) >= Some(95),
        "{text}\n{}",
        daemon.log()
    );
    assert!(
        received("REQUEST-REPLY").and_then(|n| n.parse::<u32>().ok()) >= Some(95),
        "{text}"
    );
    assert!(
        metric(
            &lab,
            &daemon,
            "bootfabric_dhcp6_sent_total",
            &[("type", "reply")]
        ) >= 95.0
    );
    let journal =
        std::fs::read_to_string(daemon.config_path().with_file_name("state/leases6.journal"))
            .expect("journal");
    assert!(
        journal
            .lines()
            .filter(|l| l.contains(" B 2001:db8:77::1"))
            .count()
            >= 95,
        "{journal}"
    );
    // A relay outside `dhcp6.relays` is not believed.
    assert_eq!(
        metric(
            &lab,
            &daemon,
            "bootfabric_dhcp6_dropped_total",
            &[("reason", "untrusted_relay")]
        ),
        0.0
    );
}

/// Sends `count` Solicits from the client namespace's link-local address, each with a new
/// DUID-LLT (another time field) that carries `mac`: invented identities for one machine.
const SOLICIT_FLOOD: &str = r#"
import socket, struct, sys
iface, mac, count = sys.argv[1], bytes.fromhex(sys.argv[2].replace(":", "")), int(sys.argv[3])
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
s.bind(("::", 546))
idx = socket.if_nametoindex(iface)
for i in range(count):
    duid = struct.pack("!HHI", 1, 1, i) + mac
    ia = struct.pack("!HHIII", 3, 12, 1, 0, 0)
    msg = bytes([1, 0, 0, i & 0xff]) + struct.pack("!HH", 1, len(duid)) + duid + ia
    s.sendto(msg, ("ff02::1:2", 547, 0, idx))
"#;

/// A machine inventing DUIDs for an inventory host's MAC is held to that MAC's rate, so it
/// can neither make the server answer each one nor push the host's events out of its
/// timeline.
#[test]
fn invented_duids_for_one_mac_are_held_to_its_rate() {
    let t = "invented_duids_for_one_mac_are_held_to_its_rate";
    let Some((lab, daemon, _root)) = lab(t, "", &["python3"]) else {
        return;
    };
    run(lab
        .client
        .command("python3")
        .args(["-c", SOLICIT_FLOOD, "client0", HOST_MAC, "500"]))
    .expect("flood");
    // Every message the socket took is answered or dropped as over the rate (the socket
    // itself may drop some of a burst this fast: those never count).
    let counts = || {
        let get = |name: &str, labels: &[(&str, &str)]| metric(&lab, &daemon, name, labels);
        (
            get("bootfabric_dhcp6_received_total", &[("type", "solicit")]),
            get("bootfabric_dhcp6_sent_total", &[("type", "advertise")]),
            get(
                "bootfabric_dhcp6_dropped_total",
                &[("reason", "rate_limited")],
            ),
        )
    };
    let settled = wait_for(Duration::from_secs(10), || {
        let (received, answered, limited) = counts();
        (received >= 100.0 && answered + limited == received).then_some((received, answered))
    });
    let Some((received, answered)) = settled else {
        panic!("{:?}\n{}", counts(), daemon.log());
    };
    // Twice the rate (20/s) as a burst, and the rate for the second the flood lasts.
    assert!(
        answered <= 60.0,
        "{answered} Advertises for one MAC's flood of {received}"
    );
}
