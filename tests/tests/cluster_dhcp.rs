//! DHCP high availability on etcd: two fabrics on one client segment both answer, never
//! hand out one address twice, and when one dies the other serves its clients, including
//! renewing the leases the dead one granted.

use std::{collections::HashMap, net::Ipv4Addr, time::Duration};

use bootfabric_lab::{
    dhcp_client::{Client, Outcome},
    etcd::EtcdCluster,
    metrics, require_programs, require_root, sample, Bridge, Daemon, Netns,
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
fn fabric(etcd: &mut EtcdCluster, lan: &mut Bridge, name: &str, host: u8) -> (Netns, Daemon) {
    let ns = Netns::new(name).expect("netns");
    etcd.bridge
        .plug(&ns, "etcd0", &format!("10.90.0.{host}/24"))
        .expect("plug etcd");
    lan.plug(&ns, "fabric0", &format!("10.77.0.{host}/24"))
        .expect("plug lan");
    let config = format!(
        r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:9370"
[xdp]
mode = "off"
[dhcp]
rate_limit = 1000
[dhcp.options]
lease_time = 600
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
[cluster]
name = "{name}"
rack = "rack-{name}"
etcd = {endpoints}
ttl_s = 3
timeout_s = 2
"#,
        endpoints = etcd.endpoints_toml()
    );
    let daemon = Daemon::start(&ns, &config, &[("hosts.toml", INVENTORY)]).expect("daemon");
    (ns, daemon)
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
    let (ns_a, mut a) = fabric(&mut etcd, &mut lan, "fab-a", 21);
    let (ns_b, b) = fabric(&mut etcd, &mut lan, "fab-b", 22);
    let clients = Netns::new("cli").expect("client ns");
    lan.plug(&clients, "client0", "10.77.0.2/24")
        .expect("plug client");
    clients
        .ip(&["route", "add", "default", "dev", "client0"])
        .expect("route");

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
    let m = metrics(&ns_b, &b).expect("metrics");
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
    drop(ns_a);
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
    let (ns_a, a) = fabric(&mut etcd, &mut lan, "fab-a", 21);
    let clients = Netns::new("cli").expect("client ns");
    lan.plug(&clients, "client0", "10.77.0.2/24")
        .expect("plug client");
    clients
        .ip(&["route", "add", "default", "dev", "client0"])
        .expect("route");
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
    let m = metrics(&ns_a, &a).expect("metrics");
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
