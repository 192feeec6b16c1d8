//! Cluster mode on a real etcd (Debian's etcd-server, three members in namespaces): fabrics
//! register under a lease and see each other; a fabric that dies disappears; one etcd member
//! down changes nothing; quorum lost is seen and recovered from without a restart. Over TLS
//! with client certificates, a fabric with the right certificate registers, and one with no
//! certificate or another CA's is refused, `bootfabric check` saying why in one line.

use bootfabric_lab::{
    cluster_lab::Fabric,
    etcd::{CertPair, EtcdCluster},
    require_programs, require_root, sample,
};
use serde_json::Value;

/// A fabric daemon on the etcd cluster's bridge, at `10.90.0.<host>`, in cluster mode.
fn fabric(etcd: &mut EtcdCluster, name: &str, rack: &str, host: u8) -> Fabric {
    Fabric::on(etcd, name, host)
        .rack(rack)
        .start()
        .expect("fabric")
}

fn names(cluster: &Value) -> Vec<String> {
    cluster["fabrics"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|f| f["name"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn ready(test: &str) -> bool {
    require_root(test) && require_programs(test, &["etcd", "etcdctl"])
}

#[test]
fn fabrics_see_each_other_and_a_dead_one_disappears() {
    const TEST: &str = "fabrics_see_each_other_and_a_dead_one_disappears";
    if !ready(TEST) {
        return;
    }
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let a = fabric(&mut etcd, "fab-a", "rack-a", 21);
    let mut b = fabric(&mut etcd, "fab-b", "rack-b", 22);

    let both = |v: &Value| v["etcd"] == "up" && names(v) == ["fab-a", "fab-b"];
    let seen_a = a
        .wait_view(both)
        .unwrap_or_else(|v| panic!("fab-a sees {v}\n{}\n{}", a.log(), etcd.logs()));
    b.wait_view(both)
        .unwrap_or_else(|v| panic!("fab-b sees {v}\n{}", b.log()));
    let racks: Vec<&str> = seen_a["fabrics"]
        .as_array()
        .expect("fabrics")
        .iter()
        .filter_map(|f| f["rack"].as_str())
        .collect();
    assert_eq!(racks, ["rack-a", "rack-b"]);
    assert_eq!(seen_a["fabric"], "fab-a");
    let m = a.metrics().expect("metrics");
    assert_eq!(sample(&m, "bootfabric_cluster_etcd_up", &[]), Some(1.0));
    assert_eq!(sample(&m, "bootfabric_cluster_fabrics", &[]), Some(2.0));

    // The records are etcd's, under the prefix, with a lease: read them with etcdctl.
    let keys = etcd
        .etcdctl(
            0,
            &["get", "--prefix", "--keys-only", "/bootfabric/fabrics/"],
        )
        .expect("etcdctl get");
    assert!(
        keys.contains("/bootfabric/fabrics/fab-a") && keys.contains("/bootfabric/fabrics/fab-b"),
        "{keys}"
    );

    // A second fabric started under fab-a's name (another rack): etcd keeps the first's
    // record, the newcomer says why it is not registered, and check fails on the name.
    let dup = fabric(&mut etcd, "fab-a", "rack-z", 23);
    let refused = dup
        .wait_view(|v| {
            v["error"]
                .as_str()
                .is_some_and(|e| e.contains("held by another live fabric"))
        })
        .unwrap_or_else(|v| panic!("the duplicate sees {v}\n{}", dup.log()));
    assert!(
        refused["error"]
            .as_str()
            .is_some_and(|e| e.contains("rack rack-a")),
        "{refused}"
    );
    let record = etcd
        .etcdctl(
            0,
            &["get", "--print-value-only", "/bootfabric/fabrics/fab-a"],
        )
        .expect("etcdctl get");
    assert!(record.contains("\"rack\":\"rack-a\""), "{record}");
    let report = check_cluster(&dup);
    assert!(
        line(&report, "cluster.name").starts_with(
            "FAIL  cluster.name: \"fab-a\" is held by another live fabric (rack rack-a"
        ),
        "{report}"
    );
    drop(dup);

    // fab-b dies without a word: its lease runs out and fab-a sees it gone.
    b.stop_with(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL fab-b");
    a.wait_view(|v| v["etcd"] == "up" && names(v) == ["fab-a"])
        .unwrap_or_else(|v| panic!("after fab-b died, fab-a sees {v}\n{}", a.log()));
    drop(b.ns);
}

#[test]
fn one_etcd_member_down_changes_nothing_and_quorum_comes_back_without_a_restart() {
    const TEST: &str =
        "one_etcd_member_down_changes_nothing_and_quorum_comes_back_without_a_restart";
    if !ready(TEST) {
        return;
    }
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let a = fabric(&mut etcd, "fab-a", "rack-a", 21);
    a.wait_view(|v| v["etcd"] == "up" && names(v) == ["fab-a"])
        .unwrap_or_else(|v| panic!("fab-a sees {v}\n{}\n{}", a.log(), etcd.logs()));
    let check = |skip_cluster: bool| {
        let skip = if skip_cluster {
            "xdp,bmc,dhcp,checksums,cluster"
        } else {
            "xdp,bmc,dhcp,checksums"
        };
        // In fab-a's namespace, where etcd is reachable; a FAIL makes the exit status 1.
        a.check(skip).expect("check")
    };
    let report = check(false);
    assert!(
        report.contains("PASS  cluster.etcd") && report.contains("3 member(s)"),
        "{report}"
    );
    assert!(report.contains("fab-a (rack rack-a)"), "{report}");

    // One member down: the fabric stays registered, and a second fabric joins.
    etcd.kill(2);
    let b = fabric(&mut etcd, "fab-b", "rack-b", 22);
    a.wait_view(|v| v["etcd"] == "up" && names(v) == ["fab-a", "fab-b"])
        .unwrap_or_else(|v| panic!("one member down, fab-a sees {v}\n{}", a.log()));

    // Two members down: no quorum. The fabric sees etcd down, says so, and keeps running.
    etcd.kill(1);
    let down = a
        .wait_view(|v| v["etcd"] == "down")
        .unwrap_or_else(|v| panic!("quorum lost, fab-a sees {v}\n{}", a.log()));
    assert!(down["error"].is_string(), "{down}");
    let m = a.metrics().expect("metrics");
    assert_eq!(sample(&m, "bootfabric_cluster_etcd_up", &[]), Some(0.0));
    let report = check(false);
    assert!(report.contains("FAIL  cluster.etcd"), "{report}");
    assert!(
        !check(true).contains("cluster.etcd"),
        "--skip cluster leaves etcd alone"
    );

    // Quorum back: both fabrics register again on their own, no restart.
    etcd.restart(1).expect("restart m1");
    etcd.restart(2).expect("restart m2");
    etcd.wait_healthy(&[0, 1, 2]).expect("healthy");
    a.wait_view(|v| v["etcd"] == "up" && names(v) == ["fab-a", "fab-b"])
        .unwrap_or_else(|v| panic!("after recovery, fab-a sees {v}\n{}", a.log()));
    let m = a.metrics().expect("metrics");
    assert!(
        sample(&m, "bootfabric_cluster_registrations_total", &[]).unwrap_or(0.0) >= 1.0,
        "{m}"
    );
    drop(b);
}

/// `bootfabric check` (etcd and the config only) on `f`'s config, in its namespace.
fn check_cluster(f: &Fabric) -> String {
    f.check("xdp,bmc,dhcp,checksums").expect("check")
}

/// The line of `report` about `subject`.
fn line<'a>(report: &'a str, subject: &str) -> &'a str {
    report
        .lines()
        .find(|l| l.contains(subject))
        .unwrap_or_else(|| panic!("no {subject} line in:\n{report}"))
}

#[test]
fn over_tls_only_a_fabric_with_the_cluster_client_certificate_registers() {
    const TEST: &str = "over_tls_only_a_fabric_with_the_cluster_client_certificate_registers";
    if !(ready(TEST) && require_programs(TEST, &["openssl"])) {
        return;
    }
    let mut etcd = EtcdCluster::start_tls(3).expect("etcd over TLS");
    let pki = etcd.pki.as_ref().expect("pki");
    let (ca, client, rogue) = (pki.ca.clone(), pki.client.clone(), pki.rogue.clone());
    let fabric_with = |etcd: &mut EtcdCluster, name, rack, host, cert: Option<&CertPair>| {
        Fabric::on(etcd, name, host)
            .rack(rack)
            .tls(&ca, cert)
            .start()
            .expect("fabric")
    };
    assert!(etcd.endpoints_toml().contains("https://10.90.0.10:2379"));

    // The cluster's client certificate: registers, and check passes over TLS.
    let a = fabric_with(&mut etcd, "fab-a", "rack-a", 21, Some(&client));
    a.wait_view(|v| v["etcd"] == "up" && names(v) == ["fab-a"])
        .unwrap_or_else(|v| panic!("fab-a over mTLS sees {v}\n{}\n{}", a.log(), etcd.logs()));
    let report = check_cluster(&a);
    assert!(
        line(&report, "cluster.etcd").starts_with("PASS  cluster.etcd: https://"),
        "{report}"
    );

    // A certificate from another CA: etcd refuses the handshake; the fabric runs, sees etcd
    // down and never appears; check names the certificate and the TLS failure in one line.
    let b = fabric_with(&mut etcd, "fab-b", "rack-b", 22, Some(&rogue));
    let down = b
        .wait_view(|v| v["etcd"] == "down" && v["error"].is_string())
        .unwrap_or_else(|v| panic!("fab-b (rogue cert) sees {v}\n{}", b.log()));
    let report = check_cluster(&b);
    let fail = line(&report, "cluster.etcd");
    eprintln!("{report}");
    assert!(fail.starts_with("FAIL  cluster.etcd: "), "{report}");
    assert!(
        fail.contains(&rogue.cert.display().to_string()) && fail.contains("TLS"),
        "the line names the certificate and the TLS failure: {fail}\n{down}"
    );

    // No client certificate at all: refused too, and said so.
    let c = fabric_with(&mut etcd, "fab-c", "rack-c", 23, None);
    c.wait_view(|v| v["etcd"] == "down" && v["error"].is_string())
        .unwrap_or_else(|v| panic!("fab-c (no cert) sees {v}\n{}", c.log()));
    let report = check_cluster(&c);
    let fail = line(&report, "cluster.etcd");
    eprintln!("{report}");
    assert!(
        fail.starts_with("FAIL  cluster.etcd: ") && fail.contains("no client certificate"),
        "{report}"
    );

    // Neither got in: only fab-a is registered, as etcd itself says.
    let keys = etcd
        .etcdctl(
            0,
            &["get", "--prefix", "--keys-only", "/bootfabric/fabrics/"],
        )
        .expect("etcdctl get");
    assert_eq!(
        keys.split_whitespace().collect::<Vec<_>>(),
        ["/bootfabric/fabrics/fab-a"]
    );
    drop((b, c));
}
