//! The cluster's leader on a real etcd (three members in namespaces): of two fabrics exactly
//! one leads, both say which, and only the leader starts reboot runs (the other refuses and
//! names it); the leader killed without a word, the other takes over once the dead one's
//! lease runs out, and runs start there.

use std::time::Duration;

use bootfabric_lab::{
    api::Api, etcd::EtcdCluster, http_get, metrics, require_programs, require_root, sample,
    wait_for, Daemon, Netns,
};
use serde_json::Value;

/// A fabric daemon on the etcd cluster's bridge, at `10.90.0.<host>`, in cluster mode.
fn fabric(etcd: &mut EtcdCluster, name: &str, rack: &str, host: u8) -> (Netns, Daemon) {
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
[xdp]
mode = "off"
[cluster]
name = "{name}"
rack = "{rack}"
etcd = {endpoints}
ttl_s = 3
timeout_s = 2
"#,
        endpoints = etcd.endpoints_toml()
    );
    // One host whose BMC nobody answers: a run of it starts (or is refused); what the BMC
    // does is not this test's.
    let hosts = format!(
        "[profiles.p]\n[[hosts]]\nname = \"{rack}-n1\"\nmac = \"52:54:00:c1:00:{host:02x}\"\n\
         profile = \"p\"\nrack = \"{rack}\"\nbmc = {{ url = \"http://10.90.0.250:9\", \
         username = \"admin\", password_file = \"bmc.pass\", allow_plaintext = true, \
         timeout_s = 1, attempts = 1 }}\n"
    );
    let daemon = Daemon::start(
        &ns,
        &config,
        &[("hosts.toml", &hosts), ("bmc.pass", "pw\n")],
    )
    .expect("daemon");
    (ns, daemon)
}

/// The `cluster` member of `/api/v1/status`.
fn view(ns: &Netns, d: &Daemon) -> Value {
    let (status, body) = http_get(ns, d.admin, "/api/v1/status").expect("status");
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).expect("json");
    v["cluster"].clone()
}

fn wait_view(ns: &Netns, d: &Daemon, ok: impl Fn(&Value) -> bool) -> Result<Value, Value> {
    let mut last = Value::Null;
    wait_for(Duration::from_secs(40), || {
        last = view(ns, d);
        ok(&last).then(|| last.clone())
    })
    .ok_or(last)
}

/// `POST /api/reboot` of every host: the status code and the body.
fn start_run(ns: &Netns, d: &Daemon) -> (u16, String) {
    let r = Api::new(ns, d.admin, None)
        .post("/api/reboot", &serde_json::json!({"all": true}))
        .expect("POST /api/reboot");
    (r.status, r.body)
}

fn leader_metric(ns: &Netns, d: &Daemon) -> Option<f64> {
    let m = metrics(ns, d).expect("metrics");
    sample(&m, "bootfabric_cluster_leader", &[])
}

#[test]
fn one_fabric_leads_and_another_takes_over_when_it_dies() {
    const TEST: &str = "one_fabric_leads_and_another_takes_over_when_it_dies";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl"])) {
        return;
    }
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let (ns_a, mut a) = fabric(&mut etcd, "fab-a", "rack-a", 21);
    // fab-a campaigns alone first: it leads.
    wait_view(&ns_a, &a, |v| {
        v["leader"] == "fab-a" && v["leading"] == true
    })
    .unwrap_or_else(|v| panic!("fab-a sees {v}\n{}\n{}", a.log(), etcd.logs()));
    let (ns_b, b) = fabric(&mut etcd, "fab-b", "rack-b", 22);
    let seen_b = wait_view(&ns_b, &b, |v| v["leader"].is_string())
        .unwrap_or_else(|v| panic!("fab-b sees {v}\n{}", b.log()));
    assert_eq!(seen_b["leader"], "fab-a", "{seen_b}");
    assert_eq!(seen_b["leading"], false, "one leader at a time: {seen_b}");
    assert_eq!(leader_metric(&ns_a, &a), Some(1.0));
    assert_eq!(leader_metric(&ns_b, &b), Some(0.0));
    // The key is etcd's, under the prefix, held under fab-a's lease.
    let key = etcd
        .etcdctl(
            0,
            &["get", "/bootfabric/leader/reboot", "--print-value-only"],
        )
        .expect("etcdctl get");
    assert_eq!(key.trim(), "fab-a");
    // Only the leader runs reboot runs: the other refuses and says whom to ask.
    let (code, body) = start_run(&ns_b, &b);
    assert_eq!(code, 409, "{body}");
    assert!(
        body.contains("does not lead the cluster") && body.contains("ask fab-a"),
        "{body}"
    );
    let (code, body) = start_run(&ns_a, &a);
    assert_eq!(code, 202, "the leader starts it: {body}");

    // fab-a dies without resigning: its lease runs out (ttl 3 s) and fab-b takes over.
    a.stop_with(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL fab-a");
    let now_b = wait_view(&ns_b, &b, |v| v["leading"] == true)
        .unwrap_or_else(|v| panic!("after fab-a died, fab-b sees {v}\n{}", b.log()));
    assert_eq!(now_b["leader"], "fab-b");
    assert_eq!(leader_metric(&ns_b, &b), Some(1.0));
    assert!(
        b.log().contains("this fabric leads the cluster"),
        "{}",
        b.log()
    );
    drop(ns_a);
}
