//! DHCP high availability on etcd: two fabrics on one client segment both answer, never
//! hand out one address twice, and when one dies the other serves its clients, including
//! renewing the leases the dead one granted. A flood of invented MACs writes to etcd no more
//! than the pool and the timeline's budget.

use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use bootfabric_lab::{
    cluster_lab::{client_on, Fabric, FabricBuilder},
    dhcp_client::{Client, Outcome},
    etcd::EtcdCluster,
    require_programs, require_root, require_xdp, sample, wait_for, Bridge, Daemon, Netns,
};

const WAIT: Duration = Duration::from_secs(3);

/// One reserved host: every fabric answers it from the inventory, without etcd.
const INVENTORY: &str = r#"
[profiles.installer]
kernel = "debian/linux"

[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.11"
profile = "installer"
"#;

const NODE01: [u8; 6] = [0x52, 0x54, 0, 0xb0, 0x0f, 0x01];

/// A fabric on the etcd bridge (`etcd0`, 10.90.0.<host>) and the clients' bridge
/// (`fabric0`, 10.77.0.<host>), serving DHCP on `fabric0` with one shared pool.
fn fabric(etcd: &mut EtcdCluster, lan: &mut Bridge, name: &str, host: u8) -> Fabric {
    lan_fabric(etcd, lan, name, host, Lan::SMALL)
        .start()
        .expect("fabric")
}

/// The clients' segment and how a fabric serves DHCP on it.
struct Lan {
    /// The prefix length of 10.77.0.0 (the fabrics' and clients' addresses too).
    prefix: u8,
    /// `dhcp.rate_limit`.
    rate_limit: u32,
    /// `dhcp.options.lease_time`, seconds.
    lease_time: u32,
    /// The shared pool.
    pool: &'static str,
}

impl Lan {
    const SMALL: Lan = Lan {
        prefix: 24,
        rate_limit: 1000,
        lease_time: 600,
        pool: "10.77.0.100-10.77.0.199",
    };
}

/// The builder of a fabric on the etcd bridge (`etcd0`) and the clients' bridge (`fabric0`,
/// 10.77.0.<host>), serving DHCP on `fabric0` as `dhcp` says, with the reserved host.
fn lan_fabric<'a>(
    etcd: &'a mut EtcdCluster,
    lan: &'a mut Bridge,
    name: &str,
    host: u8,
    dhcp: Lan,
) -> FabricBuilder<'a> {
    let Lan {
        prefix,
        rate_limit,
        lease_time,
        pool,
    } = dhcp;
    Fabric::on(etcd, name, host)
        .lan(lan, &format!("10.77.0.{host}/{prefix}"))
        .rack(&format!("rack-{name}"))
        .inventory(INVENTORY)
        .section(&format!(
            r#"[dhcp]
rate_limit = {rate_limit}
[dhcp.options]
lease_time = {lease_time}
[[dhcp.subnets]]
cidr = "10.77.0.0/{prefix}"
interface = "fabric0"
pools = ["{pool}"]
"#
        ))
}

fn mac(i: u32) -> [u8; 6] {
    let b = i.to_be_bytes();
    [0x02, 0x17, b[0], b[1], b[2], b[3]]
}

fn mac_text(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Leases `range` from the client namespace, one exchange each (DISCOVER, the first OFFER,
/// REQUEST to its server), again after a NAK: each client's outcome.
fn lease_all(ns: &Netns, range: std::ops::Range<u32>) -> Vec<(u32, Outcome)> {
    ns.run(move || {
        let c = Client::bind().expect("client socket");
        range
            .map(|i| {
                // A NAK (a claim lost to another fabric) sends a real client back to
                // DISCOVER: so does this one, twice at most.
                let mut o = Outcome::NoAnswer;
                for attempt in 0..3 {
                    o = c
                        .lease(mac(i), 0x1700_0000 + i * 4 + attempt, WAIT)
                        .expect("lease");
                    if o != Outcome::Nak {
                        break;
                    }
                }
                (i, o)
            })
            .collect()
    })
    .expect("client namespace")
}

/// How many lease records in etcd each fabric claimed last.
fn etcd_fabrics(etcd: &EtcdCluster, via: usize) -> HashMap<String, usize> {
    let out = etcd
        .etcdctl(
            via,
            &[
                "get",
                "--prefix",
                "--print-value-only",
                "/bootfabric/leases/",
            ],
        )
        .expect("etcdctl get");
    let mut by = HashMap::new();
    for line in out.lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            *by.entry(v["fabric"].as_str().unwrap_or("?").to_owned())
                .or_insert(0) += 1;
        }
    }
    by
}

/// `ip → mac` as etcd holds it.
fn etcd_leases(etcd: &EtcdCluster, via: usize) -> HashMap<Ipv4Addr, String> {
    let out = etcd
        .etcdctl(via, &["get", "--prefix", "/bootfabric/leases/"])
        .expect("etcdctl get");
    let lines: Vec<&str> = out.lines().collect();
    lines
        .chunks(2)
        .filter_map(|kv| {
            let ip = kv
                .first()?
                .strip_prefix("/bootfabric/leases/")?
                .parse()
                .ok()?;
            let v: serde_json::Value = serde_json::from_str(kv.get(1)?).ok()?;
            Some((ip, v["mac"].as_str()?.to_owned()))
        })
        .collect()
}

#[test]
fn two_fabrics_never_share_an_address_and_the_survivor_renews_the_dead_ones_leases() {
    const TEST: &str =
        "two_fabrics_never_share_an_address_and_the_survivor_renews_the_dead_ones_leases";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl"])) {
        return;
    }
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let mut lan = Bridge::new().expect("client bridge");
    let mut a = fabric(&mut etcd, &mut lan, "fab-a", 21);
    let b = fabric(&mut etcd, &mut lan, "fab-b", 22);
    let clients = client_on(&mut lan, "cli", "client0", "10.77.0.2/24").expect("client ns");

    // Phase 1: both fabrics answer; each client takes the first OFFER.
    let first = lease_all(&clients, 0..40);
    let mut bound: HashMap<u32, (Ipv4Addr, Ipv4Addr)> = HashMap::new();
    for (i, o) in &first {
        match o {
            Outcome::Ack(ip, server) => {
                bound.insert(*i, (*ip, *server));
            }
            other => panic!("client {i}: {other:?}\n{}\n{}", a.log(), b.log()),
        }
    }
    let by_a = bound
        .values()
        .filter(|(_, s)| *s == Ipv4Addr::new(10, 77, 0, 21))
        .count();
    assert!(by_a > 0, "fab-a answered nobody: {bound:?}");

    // fab-a dies without a word.
    a.stop_with(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL fab-a");

    // Phase 2: new clients bind on the survivor.
    for (i, o) in lease_all(&clients, 40..70) {
        match o {
            Outcome::Ack(ip, server) => {
                assert_eq!(server, Ipv4Addr::new(10, 77, 0, 22), "client {i}");
                bound.insert(i, (ip, server));
            }
            other => panic!("client {i} after fab-a died: {other:?}\n{}", b.log()),
        }
    }

    // No address on two clients, across both phases (so across both fabrics).
    let mut owner: HashMap<Ipv4Addr, u32> = HashMap::new();
    for (i, (ip, _)) in &bound {
        if let Some(other) = owner.insert(*ip, *i) {
            panic!("{ip} went to clients {other} and {i}");
        }
    }
    // etcd agrees: every binding is there, held by its client.
    let shared = etcd_leases(&etcd, 0);
    for (i, (ip, _)) in &bound {
        assert_eq!(
            shared.get(ip).map(String::as_str),
            Some(mac_text(mac(*i)).as_str()),
            "{ip} in etcd: {shared:?}"
        );
    }
    assert_eq!(shared.len(), bound.len(), "{shared:?}");

    // A client fab-a bound renews (INIT-REBOOT) on the survivor, same address.
    let (&i, &(ip, _)) = bound
        .iter()
        .find(|(_, (_, s))| *s == Ipv4Addr::new(10, 77, 0, 21))
        .expect("a client of fab-a");
    let renewed = clients
        .run(move || {
            Client::bind()
                .expect("client socket")
                .reboot(mac(i), 0x1800_0000 + i, ip, WAIT)
                .expect("reboot")
        })
        .expect("client namespace");
    assert_eq!(
        renewed,
        Outcome::Ack(ip, Ipv4Addr::new(10, 77, 0, 22)),
        "{}",
        b.log()
    );
    let renewed_by = etcd
        .etcdctl(
            0,
            &[
                "get",
                "--print-value-only",
                &format!("/bootfabric/leases/{ip}"),
            ],
        )
        .expect("etcdctl");
    assert!(renewed_by.contains("\"fabric\":\"fab-b\""), "{renewed_by}");

    // The survivor's own table has each address once.
    let table = b.cli(&["leases"]).expect("bootfabric leases");
    let mut seen = HashMap::new();
    for line in table.lines() {
        if let Some(ip) = line
            .split_whitespace()
            .find_map(|w| w.parse::<Ipv4Addr>().ok())
        {
            assert!(seen.insert(ip, line.to_owned()).is_none(), "{table}");
        }
    }
    let m = b.metrics().expect("metrics");
    assert!(
        sample(
            &m,
            "bootfabric_cluster_lease_claims_total",
            &[("result", "won")]
        )
        .unwrap_or(0.0)
            >= 31.0,
        "{m}"
    );
    assert!(
        sample(&m, "bootfabric_cluster_lease_mirror", &[]).unwrap_or(0.0) >= bound.len() as f64,
        "{m}"
    );
    drop(a.ns);
}

#[test]
fn without_quorum_reservations_and_known_renewals_are_answered_new_clients_wait() {
    const TEST: &str =
        "without_quorum_reservations_and_known_renewals_are_answered_new_clients_wait";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl"])) {
        return;
    }
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let mut lan = Bridge::new().expect("client bridge");
    let a = fabric(&mut etcd, &mut lan, "fab-a", 21);
    let clients = client_on(&mut lan, "cli", "client0", "10.77.0.2/24").expect("client ns");
    let Outcome::Ack(ip, _) = lease_all(&clients, 0..1)[0].1 else {
        panic!("no lease with quorum\n{}", a.log());
    };

    // Two members of three down: no quorum, etcd refuses every write at once.
    etcd.kill(1);
    etcd.kill(2);
    let reserved = clients
        .run(|| {
            Client::bind()
                .expect("client socket")
                .lease(NODE01, 0x1900_0001, WAIT)
                .expect("lease")
        })
        .expect("client namespace");
    assert!(
        matches!(reserved, Outcome::Ack(ip, _) if ip == Ipv4Addr::new(10, 77, 0, 11)),
        "{reserved:?}\n{}",
        a.log()
    );
    let renewed = clients
        .run(move || {
            Client::bind()
                .expect("client socket")
                .reboot(mac(0), 0x1900_0002, ip, WAIT)
                .expect("reboot")
        })
        .expect("client namespace");
    assert!(
        matches!(renewed, Outcome::Ack(got, _) if got == ip),
        "{renewed:?}\n{}",
        a.log()
    );
    let new = lease_all(&clients, 1..2)[0].1;
    assert!(
        !matches!(new, Outcome::Ack(..)),
        "a new client bound without quorum: {new:?}"
    );
    let m = a.metrics().expect("metrics");
    for kind in ["new", "renewal_queued"] {
        assert!(
            sample(
                &m,
                "bootfabric_cluster_lease_refused_total",
                &[("kind", kind)]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{kind}: {m}"
        );
    }

    // Quorum back: a new client binds, no restart; the queued renewal reaches etcd.
    etcd.restart(1).expect("restart m1");
    etcd.restart(2).expect("restart m2");
    etcd.wait_healthy(&[0, 1, 2]).expect("healthy");
    let mut last = None;
    let bound = bootfabric_lab::wait_for(Duration::from_secs(40), || {
        let o = lease_all(&clients, 1..2)[0].1;
        last = Some(o);
        matches!(o, Outcome::Ack(..)).then_some(o)
    });
    assert!(bound.is_some(), "after recovery: {last:?}\n{}", a.log());
    let shared = etcd_leases(&etcd, 0);
    assert_eq!(
        shared.get(&ip).map(String::as_str),
        Some(mac_text(mac(0)).as_str()),
        "{shared:?}"
    );
    assert!(
        !shared.contains_key(&Ipv4Addr::new(10, 77, 0, 11)),
        "reservations stay out of etcd: {shared:?}"
    );
}

/// perfdhcp's simulated clients: `-b mac=02:17:00:00:00:00 -R 1000` makes client r
/// `02:17:00:00:HI:LO`.
const STORM_CLIENTS: u32 = 1000;
/// Real clients (udhcpc, which retries on its own) running through the storm.
const UDHCPC_MACS: [&str; 3] = [
    "52:54:00:ee:17:01",
    "52:54:00:ee:17:02",
    "52:54:00:ee:17:03",
];

/// A fabric with the XDP fast path on (generic mode, as the DHCP bench: a veth on a bridge)
/// and a pool big enough for the storm; the shield's rates lifted, as perfdhcp is one relay
/// carrying every client.
fn storm_fabric(etcd: &mut EtcdCluster, lan: &mut Bridge, name: &str, host: u8) -> Fabric {
    let storm = Lan {
        prefix: 21,
        rate_limit: 100_000,
        lease_time: 3600,
        pool: "10.77.1.0-10.77.7.254",
    };
    lan_fabric(etcd, lan, name, host, storm)
        .log("warn")
        .xdp("mode = \"generic\"\nrelay_rate_limit = 10000000")
        .start()
        .expect("fabric")
}

/// A namespace on the client bridge whose `c0` has `mac`, running udhcpc with a script
/// that appends `ip=<address>` to `out` once bound.
fn udhcpc(
    lan: &mut Bridge,
    mac: &str,
    dir: &std::path::Path,
    n: usize,
) -> (Netns, bootfabric_lab::KillOnDrop, std::path::PathBuf) {
    let ns = Netns::new("udh").expect("netns");
    lan.plug(&ns, "c0", "").expect("plug");
    ns.ip(&["link", "set", "c0", "address", mac]).expect("mac");
    let out = dir.join(format!("bound{n}"));
    let script = dir.join(format!("script{n}.sh"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\ncase \"$1\" in bound|renew) echo \"ip=$ip\" >> {} ;; esac\nexit 0\n",
            out.display()
        ),
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    // -t 5 -T 1 -A 1: five DISCOVERs a second apart, then a second's pause and again,
    // for as long as it runs (no -n); -q: exit once bound.
    let child = ns
        .command("udhcpc")
        .args([
            "-f", "-q", "-i", "c0", "-t", "5", "-T", "1", "-A", "1", "-s",
        ])
        .arg(&script)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("udhcpc");
    (ns, bootfabric_lab::KillOnDrop(child), out)
}

/// The number after `label` in perfdhcp's statistics section `section`
/// (`DISCOVER-OFFER`, `REQUEST-ACK`).
fn perf_stat(out: &str, section: &str, label: &str) -> Option<u64> {
    let start = out.find(&format!("Statistics for: {section}"))?;
    out[start..]
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|v| v.trim_start_matches(':').trim().parse().ok())
}

/// A fabric's lease table as `bootfabric leases -o json` reads it from its journal (so also
/// a dead fabric's): bound `ip → mac`, failing on an address listed twice.
fn table(d: &Daemon, who: &str) -> HashMap<Ipv4Addr, String> {
    let text = d.cli(&["leases", "-o", "json"]).expect("bootfabric leases");
    let v: serde_json::Value = serde_json::from_str(&text).expect("leases json");
    let mut out = HashMap::new();
    for item in v["items"].as_array().expect("items") {
        let ip: Ipv4Addr = item["ip"].as_str().expect("ip").parse().expect("ip");
        let mac = item["mac"].as_str().expect("mac").to_owned();
        if let Some(other) = out.insert(ip, mac.clone()) {
            panic!("{who}'s table holds {ip} for {other} and {mac}");
        }
    }
    out
}

/// The done-when of DHCP HA at full size. Two fabrics with the XDP fast path on serve ONE
/// segment, 3 etcd members. A reserved host is answered by the kernel of both fabrics (each
/// fabric's XDP `answered/offer` counter rises). Then the storm: perfdhcp (acting as a relay,
/// broadcasting, so both fabrics see every exchange and race for it) runs 1,000 clients at
/// 200 exchanges/s for 8 s while 3 udhcpc clients start, and fab-a is SIGKILLed 3 s in, in
/// the middle of it.
///
/// perfdhcp does not retry a lost exchange, so the phases are: (1) the storm itself, in
/// which exchanges in flight at fab-a when it dies are lost (perfdhcp counts them as drops;
/// they are printed, not judged); (2) the same fixed 1,000 clients again, against the
/// survivor, in perfdhcp's avalanche scenario, which retransmits each client's exchange
/// until it is answered and ends only when every one of the 1,000 holds an ACK. A client
/// bound in the storm (by either fabric) is given its own address again. The udhcpc clients
/// retry on their own and must all bind.
///
/// Then no address is held by two MACs: not in fab-a's table (read from its journal, it is
/// dead), not in fab-b's, not between them, not against etcd (`etcdctl get --prefix
/// /bootfabric/leases/`), and no MAC holds two addresses in etcd; every storm client and
/// every udhcpc client is in etcd under its own MAC.
#[test]
fn a_storm_of_a_thousand_clients_survives_a_fabric_killed_mid_storm() {
    const TEST: &str = "a_storm_of_a_thousand_clients_survives_a_fabric_killed_mid_storm";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl", "perfdhcp", "udhcpc"])) {
        return;
    }
    let started = std::time::Instant::now();
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let mut lan = Bridge::new().expect("client bridge");
    let mut a = storm_fabric(&mut etcd, &mut lan, "fab-a", 21);
    let b = storm_fabric(&mut etcd, &mut lan, "fab-b", 22);
    if !(require_xdp(TEST, &a.ns, &a) && require_xdp(TEST, &b.ns, &b)) {
        return;
    }
    let answered_offers = |f: &Fabric| {
        let m = f.metrics().expect("metrics");
        sample(
            &m,
            "bootfabric_xdp_dhcp_packets_total",
            &[("action", "answered"), ("reason", "offer")],
        )
        .unwrap_or(0.0)
    };
    let dir = bootfabric_lab::TempDir::new().expect("dir");

    // The reserved host, before the storm: both kernels answer its DISCOVER.
    let (before_a, before_b) = (answered_offers(&a), answered_offers(&b));
    {
        let (_ns, _child, out) = udhcpc(&mut lan, "52:54:00:b0:0f:01", &dir.path, 9);
        let got = wait_for(Duration::from_secs(30), || {
            std::fs::read_to_string(&out)
                .ok()
                .filter(|s| s.contains("ip="))
        });
        assert_eq!(
            got.as_deref().map(str::trim),
            Some("ip=10.77.0.11"),
            "node01\n{}\n{}",
            a.log(),
            b.log()
        );
    }
    for (who, f, before) in [("fab-a", &a, before_a), ("fab-b", &b, before_b)] {
        let after = answered_offers(f);
        assert!(
            after > before,
            "{who}'s kernel did not answer node01 ({before} -> {after})"
        );
    }

    // The storm.
    let clients = Netns::new("cli").expect("client ns");
    lan.plug(&clients, "client0", "10.77.0.2/21")
        .expect("plug client");
    let perfdhcp = |args: &[&str]| {
        let mut cmd = clients.command("timeout");
        cmd.args(["-k", "5", "90", "perfdhcp", "-4", "-l", "10.77.0.2"])
            .args(["-b", "mac=02:17:00:00:00:00", "-R"])
            .arg(STORM_CLIENTS.to_string())
            .args(args);
        cmd
    };
    let storm_started = std::time::Instant::now();
    let mut storm = perfdhcp(&["-r", "200", "-p", "8", "-W", "1000000", "all"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("perfdhcp");
    let real: Vec<_> = UDHCPC_MACS
        .iter()
        .enumerate()
        .map(|(n, mac)| udhcpc(&mut lan, mac, &dir.path, n))
        .collect();
    std::thread::sleep(Duration::from_secs(3));
    // fab-a took its share of the storm, and dies while perfdhcp is still sending.
    let won_by_a = sample(
        &a.metrics().expect("metrics"),
        "bootfabric_cluster_lease_claims_total",
        &[("result", "won")],
    )
    .unwrap_or(0.0);
    assert!(
        won_by_a > 0.0,
        "fab-a won no claim in the storm\n{}",
        a.log()
    );
    assert!(
        matches!(storm.try_wait(), Ok(None)),
        "perfdhcp ended before fab-a was killed"
    );
    a.stop_with(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL fab-a");
    let killed_at = storm_started.elapsed();
    let storm = storm.wait_with_output().expect("perfdhcp");
    let storm_out = String::from_utf8_lossy(&storm.stdout).into_owned()
        + &String::from_utf8_lossy(&storm.stderr);
    let stat = |section, label| perf_stat(&storm_out, section, label).unwrap_or(0);
    let storm_acks = stat("REQUEST-ACK", "received packets");
    println!(
        "storm: fab-a killed {:.1} s into the 8 s storm after winning {won_by_a} claims; DISCOVER {} sent, {} OFFERs, {} drops; REQUEST {} sent, {} ACKs, {} drops",
        killed_at.as_secs_f64(),
        stat("DISCOVER-OFFER", "sent packets"),
        stat("DISCOVER-OFFER", "received packets"),
        stat("DISCOVER-OFFER", "drops"),
        stat("REQUEST-ACK", "sent packets"),
        storm_acks,
        stat("REQUEST-ACK", "drops"),
    );
    assert!(
        storm_acks > 0,
        "no ACK in the storm:\n{storm_out}\n{}",
        b.log()
    );
    println!("{storm_out}");
    // Who claimed what in the storm, before the avalanche renews it all on fab-b.
    let by_fabric = etcd_fabrics(&etcd, 0);
    println!("after the storm, etcd leases by fabric: {by_fabric:?}");

    // Every storm client, retried until answered, on the survivor.
    let again = perfdhcp(&["--scenario", "avalanche", "-r", "200", "10.77.0.22"])
        .output()
        .expect("perfdhcp avalanche");
    let again_out = String::from_utf8_lossy(&again.stdout).into_owned()
        + &String::from_utf8_lossy(&again.stderr);
    assert!(
        again.status.success(),
        "avalanche: {:?}\n{again_out}\n{}",
        again.status,
        b.log()
    );
    println!("avalanche on fab-b:\n{again_out}");

    // Every real client bound, whichever fabric it met.
    for (n, (_, _, out)) in real.iter().enumerate() {
        let got = wait_for(Duration::from_secs(30), || {
            std::fs::read_to_string(out)
                .ok()
                .filter(|s| s.contains("ip="))
        });
        assert!(
            got.is_some(),
            "udhcpc {} never bound\n{}",
            UDHCPC_MACS[n],
            b.log()
        );
    }

    // No address on two MACs, anywhere.
    let shared = etcd_leases(&etcd, 0);
    let tables = [("fab-a", table(&a, "fab-a")), ("fab-b", table(&b, "fab-b"))];
    for (who, t) in &tables {
        for (ip, mac) in t {
            if let Some(held) = shared.get(ip) {
                assert_eq!(held, mac, "{ip}: {who}'s table says {mac}, etcd {held}");
            }
        }
    }
    for (ip, mac) in &tables[0].1 {
        if let Some(other) = tables[1].1.get(ip) {
            assert_eq!(
                other, mac,
                "{ip}: fab-a's table says {mac}, fab-b's {other}"
            );
        }
    }
    let mut by_mac: HashMap<&str, Ipv4Addr> = HashMap::new();
    for (ip, mac) in &shared {
        if let Some(other) = by_mac.insert(mac, *ip) {
            panic!("{mac} holds {other} and {ip} in etcd");
        }
    }
    let missing: Vec<String> = (0..STORM_CLIENTS)
        .map(|r| format!("02:17:00:00:{:02x}:{:02x}", r >> 8, r & 0xff))
        .chain(UDHCPC_MACS.iter().map(|m| m.to_string()))
        .filter(|m| !by_mac.contains_key(m.as_str()))
        .collect();
    assert!(missing.is_empty(), "not in etcd: {missing:?}");
    println!(
        "storm: {} clients bound ({} perfdhcp + {} udhcpc), {} in etcd, fab-a's table {}, fab-b's {}; {:.1} s in all",
        STORM_CLIENTS as usize + UDHCPC_MACS.len(),
        STORM_CLIENTS,
        UDHCPC_MACS.len(),
        shared.len(),
        tables[0].1.len(),
        tables[1].1.len(),
        started.elapsed().as_secs_f64()
    );
    let m = b.metrics().expect("metrics");
    let lost = sample(
        &m,
        "bootfabric_cluster_lease_claims_total",
        &[("result", "lost")],
    )
    .unwrap_or(0.0);
    println!("fab-b lost {lost} claims to fab-a");
    drop(real);
}

/// Keys under `dir` (`/bootfabric/leases/`, ...) in etcd.
fn etcd_keys(etcd: &EtcdCluster, dir: &str) -> usize {
    etcd.etcdctl(0, &["get", "--prefix", "--keys-only", dir])
        .expect("etcdctl get")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .count()
}

/// The hourly window of the shared timeline's budgets (`cluster::timeline`) now.
fn hour_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / 3600)
}

/// What a machine on the provisioning network can make a fabric write to etcd by inventing
/// MACs: a DISCOVER flood writes no lease (offers are not claimed); a full DORA flood claims
/// at most the pool; the boot timeline shares at most the unknown MACs' hourly budget (256)
/// of all the entries the flood makes. Everything else is counted and dropped.
#[test]
fn a_flood_of_invented_macs_writes_to_etcd_no_more_than_the_pool_and_the_budget() {
    const TEST: &str =
        "a_flood_of_invented_macs_writes_to_etcd_no_more_than_the_pool_and_the_budget";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl", "perfdhcp"])) {
        return;
    }
    /// `cluster::timeline`'s hourly budget for all unknown MACs together.
    const UNKNOWN_BUDGET: usize = 256;
    /// Larger than the budget, so the flood's OFFERs and ACKs alone outrun it.
    const POOL: usize = 400;
    let first_hour = hour_now();
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let mut lan = Bridge::new().expect("lan");
    let flood = Lan {
        prefix: 21,
        rate_limit: 100_000,
        lease_time: 3600,
        pool: "10.77.1.0-10.77.2.143",
    };
    let f = lan_fabric(&mut etcd, &mut lan, "flood-a", 21, flood)
        .log("warn")
        .xdp("mode = \"generic\"\nrelay_rate_limit = 10000000")
        .start()
        .expect("fabric");
    let attacker = Netns::new("atk").expect("netns");
    lan.plug(&attacker, "atk0", "10.77.0.2/21").expect("plug");
    // perfdhcp as one relay carrying 2,000 invented clients, 500 exchanges/s for 4 s.
    let perfdhcp = |args: &[&str]| {
        let out = attacker
            .command("timeout")
            .args(["-k", "5", "60", "perfdhcp", "-4", "-l", "10.77.0.2"])
            .args([
                "-b",
                "mac=02:18:00:00:00:00",
                "-R",
                "2000",
                "-r",
                "500",
                "-p",
                "4",
            ])
            .args(args)
            .arg("10.77.0.21")
            .output()
            .expect("perfdhcp");
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };

    // DISCOVERs only: answered, and not one lease in etcd.
    let discovers = perfdhcp(&["-i"]);
    let offers = perf_stat(&discovers, "DISCOVER-OFFER", "received packets").unwrap_or(0);
    assert!(
        offers > 0,
        "no OFFER to the flood:\n{discovers}\n{}",
        f.log()
    );
    let leases = etcd_keys(&etcd, "/bootfabric/leases/");
    assert_eq!(leases, 0, "a DISCOVER flood wrote leases to etcd");

    // Whole exchanges: the pool is claimed, never more.
    let dora = perfdhcp(&[]);
    let acks = perf_stat(&dora, "REQUEST-ACK", "received packets").unwrap_or(0);
    assert!(acks > 0, "no ACK to the flood:\n{dora}\n{}", f.log());
    let leases = etcd_keys(&etcd, "/bootfabric/leases/");
    assert!(
        (1..=POOL).contains(&leases),
        "{leases} leases in etcd from a pool of {POOL}"
    );
    println!(
        "flood: {offers} OFFERs to DISCOVERs only, then {acks} ACKs of whole exchanges; {leases} leases in etcd"
    );

    // The timeline: the unknown MACs' budget of each hourly window the flood spanned, and
    // what went past it counted as dropped.
    let dropped = wait_for(Duration::from_secs(20), || {
        let m = f.metrics().ok()?;
        sample(
            &m,
            "bootfabric_cluster_timeline_writes_total",
            &[("outcome", "dropped_budget")],
        )
        .filter(|d| *d > 0.0)
    });
    assert!(
        dropped.is_some(),
        "no entry refused for the budget\n{}",
        f.log()
    );
    let windows = (hour_now() - first_hour + 1) as usize;
    let entries = etcd_keys(&etcd, "/bootfabric/timeline/");
    assert!(
        entries <= UNKNOWN_BUDGET * windows,
        "{entries} timeline entries in etcd, over {windows} window(s) of {UNKNOWN_BUDGET}"
    );
    println!(
        "timeline: {entries} entries shared, {} dropped for the budget",
        dropped.unwrap_or(0.0)
    );
}
