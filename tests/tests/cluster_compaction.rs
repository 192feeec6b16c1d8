//! A fabric cut off from etcd while the cluster moves on, and etcd's history compacted
//! past where its watches stood, catches up when it is back, without a restart: its
//! inventory watch finds its revision compacted and loads the inventory whole (a host
//! deleted meanwhile is gone, one created meanwhile is served), and its lease mirror
//! reloads and knows the lease the other fabric granted meanwhile.
//!
//! The cut is iptables in the fabric's namespace: what it sends to etcd's client port is
//! reset (its connections fail at their next keepalive instead of stalling), what etcd
//! sends it is dropped, and so are DHCP requests, so the client's lease during the cut can
//! only come from the other fabric.

use std::{process::Command, time::Duration};

use bootfabric_lab::{
    api::Api, bootfabric_bin, dhcp_client, etcd::EtcdCluster, require_programs, require_root, run,
    sample, wait_for, Daemon, Netns, TempDir,
};
use serde_json::{json, Value};

const INVENTORY: &str = r#"
[profiles.linux]
kernel = "linux/vmlinuz"
"#;

/// A fabric daemon on the etcd cluster's bridge at `10.90.0.<host>`, in cluster mode,
/// serving DHCP there, its admin API on loopback behind `token_file`.
fn fabric(
    etcd: &mut EtcdCluster,
    name: &str,
    host: u8,
    token_file: &std::path::Path,
) -> (Netns, Daemon) {
    let ns = Netns::new(name).expect("netns");
    etcd.bridge
        .plug(&ns, "fabric0", &format!("10.90.0.{host}/24"))
        .expect("plug");
    let config = format!(
        r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:9370"
token_file = "{token}"
[xdp]
mode = "off"
[dhcp]
[[dhcp.subnets]]
cidr = "10.90.0.0/24"
interface = "fabric0"
pools = ["10.90.0.200-10.90.0.220"]
[cluster]
name = "{name}"
rack = "rack-{name}"
etcd = {endpoints}
ttl_s = 3
timeout_s = 2
"#,
        token = token_file.display(),
        endpoints = etcd.endpoints_toml()
    );
    let daemon = Daemon::start(&ns, &config, &[("hosts.toml", INVENTORY)]).expect("daemon");
    (ns, daemon)
}

fn logs(a: &Daemon, b: &Daemon) -> String {
    format!("A:\n{}\nB:\n{}", a.log(), b.log())
}

fn metric(api: &Api, name: &str) -> f64 {
    let m = api.get("/metrics").expect("metrics");
    sample(&m.body, name, &[]).unwrap_or(0.0)
}

/// Waits (bounded) until `api`'s `GET path` answers `status`.
fn wait_status(api: &Api, path: &str, status: u16) -> bool {
    wait_for(Duration::from_secs(30), || {
        (api.get(path).expect("get").status == status).then_some(())
    })
    .is_some()
}

/// etcd's current revision, as a member reports it.
fn revision(etcd: &EtcdCluster) -> i64 {
    let out = etcd
        .etcdctl(0, &["endpoint", "status", "-w", "json"])
        .expect("etcdctl endpoint status");
    let status: Value = serde_json::from_str(&out).expect("status json");
    status[0]["Status"]["header"]["revision"]
        .as_i64()
        .unwrap_or_else(|| panic!("no revision in {out}"))
}

#[test]
fn a_fabric_cut_off_while_history_is_compacted_catches_up_without_a_restart() {
    const TEST: &str = "a_fabric_cut_off_while_history_is_compacted_catches_up_without_a_restart";
    if !require_root(TEST) || !require_programs(TEST, &["etcd", "etcdctl", "iptables"]) {
        return;
    }
    let dir = TempDir::new().expect("dir");
    let token_file = dir.path.join("admin.token");
    let token = run(Command::new(bootfabric_bin())
        .args(["admin", "token", "create", "--print", "--file"])
        .arg(&token_file))
    .expect("token")
    .trim()
    .to_owned();
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let (ns_a, a) = fabric(&mut etcd, "cmp-a", 21, &token_file);
    let (ns_b, b) = fabric(&mut etcd, "cmp-b", 22, &token_file);
    let client = Netns::new("cmp-dc").expect("client netns");
    etcd.bridge
        .plug(&client, "eth1", "10.90.0.30/24")
        .expect("plug client");
    // A limited broadcast (the DISCOVER) leaves by the default route.
    client
        .ip(&["route", "add", "default", "dev", "eth1"])
        .expect("route");
    let api_a = Api::new(&ns_a, a.admin, Some(&token));
    let api_b = Api::new(&ns_b, b.admin, Some(&token));
    for d in [&a, &b] {
        wait_for(Duration::from_secs(20), || {
            d.log()
                .contains("cluster inventory: loaded from etcd")
                .then_some(())
        })
        .unwrap_or_else(|| panic!("no load from etcd\n{}", logs(&a, &b)));
    }
    // A host both fabrics serve before the cut.
    api_a
        .post(
            "/api/v1/hosts",
            &json!({"name": "old01", "mac": "52:54:00:c3:00:01", "profile": "linux"}),
        )
        .expect("post")
        .expect(201)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&a, &b)));
    assert!(
        wait_status(&api_b, "/api/v1/hosts/old01", 200),
        "B never saw old01\n{}",
        logs(&a, &b)
    );
    let reloads_before = metric(&api_b, "bootfabric_cluster_inventory_reloads_total");
    assert_eq!(reloads_before, 1.0, "one load at start\n{}", b.log());

    // The cut: B's connections to etcd are reset, DHCP requests to B are dropped.
    for rule in [
        &[
            "-A",
            "OUTPUT",
            "-p",
            "tcp",
            "--dport",
            "2379",
            "-j",
            "REJECT",
            "--reject-with",
            "tcp-reset",
        ][..],
        &["-A", "INPUT", "-p", "tcp", "--sport", "2379", "-j", "DROP"][..],
        &["-A", "INPUT", "-p", "udp", "--dport", "67", "-j", "DROP"][..],
    ] {
        run(ns_b.command("iptables").args(rule)).expect("iptables");
    }
    // Both watches broke (each connection fails when B next sends on it: a keepalive).
    wait_for(Duration::from_secs(30), || {
        let log = b.log();
        (log.contains("cluster inventory: watch lost")
            && log.contains("cluster leases: mirror out of date"))
        .then_some(())
    })
    .unwrap_or_else(|| panic!("B's watches never broke\n{}", b.log()));

    // Meanwhile, through A: old01 deleted, new01 created, and a client leased by A.
    let old = api_a.get("/api/v1/hosts/old01").expect("get");
    let tag = old.etag().expect("etag");
    let deleted = api_a.delete("/api/v1/hosts/old01", &tag).expect("delete");
    assert_eq!(deleted.status, 204, "{deleted:?}");
    api_a
        .post(
            "/api/v1/hosts",
            &json!({"name": "new01", "mac": "52:54:00:c3:00:02", "profile": "linux"}),
        )
        .expect("post")
        .expect(201)
        .unwrap_or_else(|e| panic!("{e}\n{}", logs(&a, &b)));
    let leased = client
        .run(|| {
            dhcp_client::Client::bind()
                .expect("bind 68")
                .lease(
                    [0x52, 0x54, 0, 0xc3, 0, 0x10],
                    0xc3c3,
                    Duration::from_secs(3),
                )
                .expect("socket")
        })
        .expect("client namespace");
    let dhcp_client::Outcome::Ack(ip, server) = leased else {
        panic!("no lease from A: {leased:?}\n{}", logs(&a, &b));
    };
    assert_eq!(server.octets(), [10, 90, 0, 21], "only A can answer");
    let mirror_b = metric(&api_b, "bootfabric_cluster_lease_mirror");
    assert_eq!(
        mirror_b,
        0.0,
        "B cannot have seen A's lease yet\n{}",
        b.log()
    );
    // The history B's watch would resume from is compacted away.
    let rev = revision(&etcd);
    etcd.etcdctl(0, &["compact", &rev.to_string()])
        .expect("etcdctl compact");
    // Still cut off, B serves what it had: old01 (the last inventory it saw).
    assert_eq!(api_b.get("/api/v1/hosts/old01").expect("get").status, 200);

    // Back: B reloads its inventory whole and its lease mirror, without a restart.
    run(ns_b.command("iptables").arg("-F")).expect("iptables -F");
    assert!(
        wait_status(&api_b, "/api/v1/hosts/new01", 200),
        "B never served new01\n{}",
        logs(&a, &b)
    );
    assert!(
        wait_status(&api_b, "/api/v1/hosts/old01", 404),
        "B still serves the deleted old01\n{}",
        logs(&a, &b)
    );
    assert!(
        b.log()
            .contains("the watch's revision was compacted; loading whole"),
        "B caught up, but not through the compaction path\n{}",
        b.log()
    );
    assert_eq!(
        metric(&api_b, "bootfabric_cluster_inventory_reloads_total"),
        2.0,
        "start + the compaction\n{}",
        b.log()
    );
    wait_for(Duration::from_secs(30), || {
        (metric(&api_b, "bootfabric_cluster_lease_mirror") >= 1.0).then_some(())
    })
    .unwrap_or_else(|| panic!("B's mirror never learned A's lease of {ip}\n{}", b.log()));
    // The mirror holds it under A's client: B will not offer it to anyone else.
    let offer = client
        .run(|| {
            dhcp_client::Client::bind()
                .expect("bind 68")
                .offer(
                    [0x52, 0x54, 0, 0xc3, 0, 0x11],
                    0xc3c4,
                    Duration::from_secs(3),
                )
                .expect("socket")
                .map(|m| m.yiaddr())
        })
        .expect("client namespace");
    assert_ne!(offer, Some(ip), "{ip} offered to a second client");
    drop((a, b));
}
