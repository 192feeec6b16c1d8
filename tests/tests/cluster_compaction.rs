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

use std::time::Duration;

use bootfabric_lab::{
    api::Api,
    cluster_lab::{client_on, AdminToken, Fabric},
    dhcp_client,
    etcd::EtcdCluster,
    require_programs, require_root, run, sample, wait_for, Daemon,
};
use serde_json::{json, Value};

const INVENTORY: &str = r#"
[profiles.linux]
kernel = "linux/vmlinuz"
"#;

/// A fabric daemon on the etcd cluster's bridge at `10.90.0.<host>`, in cluster mode,
/// serving DHCP there, its admin API on loopback behind `token`.
fn fabric(etcd: &mut EtcdCluster, name: &str, host: u8, token: &AdminToken) -> Fabric {
    Fabric::on(etcd, name, host)
        .rack(&format!("rack-{name}"))
        .admin_token(token)
        .inventory(INVENTORY)
        .section(
            r#"[dhcp]
[[dhcp.subnets]]
cidr = "10.90.0.0/24"
interface = "fabric0"
pools = ["10.90.0.200-10.90.0.220"]
"#,
        )
        .start()
        .expect("fabric")
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
    let admin = AdminToken::create().expect("admin token");
    let token = admin.token.as_str();
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let a = fabric(&mut etcd, "cmp-a", 21, &admin);
    let b = fabric(&mut etcd, "cmp-b", 22, &admin);
    let client = client_on(&mut etcd.bridge, "cmp-dc", "eth1", "10.90.0.30/24").expect("client");
    let api_a = a.api(Some(token));
    let api_b = b.api(Some(token));
    for f in [&a, &b] {
        assert!(
            f.wait_log(
                "cluster inventory: loaded from etcd",
                Duration::from_secs(20)
            ),
            "no load from etcd\n{}",
            logs(&a, &b)
        );
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
        run(b.ns.command("iptables").args(rule)).expect("iptables");
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
    run(b.ns.command("iptables").arg("-F")).expect("iptables -F");
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
        b.logged("the watch's revision was compacted; loading whole"),
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
