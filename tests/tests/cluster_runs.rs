//! Reboot runs asked through a fabric that does not lead, on a real etcd (three members in
//! namespaces) with two fabrics, one per rack, and the lab's Redfish BMC for each machine
//! (counting the resets it receives). A machine whose BMC was reset reports its boot to the
//! fabric of its rack (from its reserved address: `POST /booted` there), as the test lets it.
//!
//! 1. fab-a leads. On fab-b, a run naming an unknown host is refused with the name; a run of
//!    every host is stored in etcd for the leader: 202, `requested`, the leader named.
//! 2. fab-a takes it and resets each machine once; each boots at its rack's fabric.
//! 3. The report asked on fab-b is read from etcd (`source: cluster`): done, both booted;
//!    `bootfabric reboot --status` against fab-b prints it.
//! 4. While fab-a drives a second run (its machines never boot again), requests pile up on
//!    fab-b: as many as may wait are stored, the next is refused (429), nothing more stored.
//! 5. Quorum lost (two etcd members killed): fab-b refuses a run with 503 and Retry-After.
//!
//! And a leader SIGKILLed between its reset intents and the BMCs' answers (slow BMCs): the
//! new leader asks each BMC's power state (Redfish) instead of resetting again; the machine
//! found on waits for its boot, the one found off fails with the reason; no BMC is reset.

use std::{net::TcpListener, time::Duration};

use bootfabric_lab::{
    bootfabric_bin,
    cluster_lab::Fabric,
    etcd::EtcdCluster,
    redfish_server::{Quirks, QuirkyBmc},
    require_programs, require_root, run, wait_for, Netns, TempDir,
};
use serde_json::{json, Value};

/// The BMCs' namespace address on the etcd bridge.
const BMC_IP: &str = "10.90.0.50";

/// (name, rack, MAC, reserved address).
const MACHINES: [(&str, &str, &str, &str); 2] = [
    ("rack-a-n1", "rack-a", "52:54:00:c3:00:01", "10.90.0.61"),
    ("rack-b-n1", "rack-b", "52:54:00:c3:00:02", "10.90.0.62"),
];

/// Runs that may wait for the leader at once (`cluster::runs::MAX_REQUESTED`).
const MAX_REQUESTED: usize = 4;

/// The fabrics' addresses on the bridge, by rack.
fn fabric_ip(rack: &str) -> &'static str {
    if rack == "rack-a" {
        "10.90.0.21"
    } else {
        "10.90.0.22"
    }
}

/// A fabric daemon on the etcd cluster's bridge, in cluster mode, for `rack`; every fabric
/// has the same inventory (as a shared one would be).
fn fabric(
    etcd: &mut EtcdCluster,
    name: &str,
    rack: &str,
    ports: &[u16],
    images: &TempDir,
) -> Fabric {
    let mut hosts = String::from("[profiles.p]\n");
    for ((host, r, mac, ip), port) in MACHINES.iter().zip(ports) {
        hosts += &format!(
            "[[hosts]]\nname = \"{host}\"\nmac = \"{mac}\"\nip = \"{ip}\"\nprofile = \"p\"\n\
             rack = \"{r}\"\nbmc = {{ url = \"http://{BMC_IP}:{port}\", username = \"admin\", \
             password_file = \"bmc.pass\", allow_plaintext = true, timeout_s = 5, attempts = 1 }}\n"
        );
    }
    let host = if rack == "rack-a" { 21 } else { 22 };
    Fabric::on(etcd, name, host)
        .rack(rack)
        .section(&format!(
            r#"[http]
root = "{root}"
[scheduler]
# Slots for every host at once: the run resets them all right away.
capacity_mbps = 1000
per_host_mbps = 10
reset_attempts = 1
# Long: a run whose machines do not boot stays in progress for the rest of the test.
post_timeout_s = 120
boot_timeout_s = 120
"#,
            root = images.path.display()
        ))
        .inventory(&hosts)
        .file("bmc.pass", "password\n")
        .start()
        .expect("fabric")
}

/// A machine's NIC on the bridge: its MAC and its reserved address.
fn machine(etcd: &mut EtcdCluster, mac: &str, ip: &str) -> Netns {
    let ns = Netns::new("machine").expect("netns");
    etcd.bridge
        .plug(&ns, "nic0", &format!("{ip}/24"))
        .expect("plug");
    ns.ip(&["link", "set", "nic0", "down"]).expect("down");
    ns.ip(&["link", "set", "nic0", "address", mac])
        .expect("mac");
    ns.ip(&["link", "set", "nic0", "up"]).expect("up");
    ns
}

/// The machine reports its boot to the fabric of its rack, as its installed system does.
fn boots(ns: &Netns, rack: &str) {
    let url = format!("http://{}/booted", fabric_ip(rack));
    let out = run(ns.command("curl").args([
        "-sS",
        "--max-time",
        "10",
        "-X",
        "POST",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        &url,
    ]))
    .expect("curl");
    assert_eq!(out.trim(), "204", "POST {url}");
}

/// The resets each BMC received, in [`MACHINES`] order.
fn resets(bmcs: &[QuirkyBmc]) -> Vec<usize> {
    bmcs.iter()
        .map(|b| b.state.lock().map_or(0, |s| s.resets.len()))
        .collect()
}

/// A fabric's `/api/reboot` document, when it answers 200.
fn report(f: &Fabric) -> Option<Value> {
    let (code, body) = f.get("/api/reboot").ok()?;
    (code == 200).then(|| serde_json::from_str(&body).ok())?
}

/// Each host's phase in a report, by name, in order.
fn phases(v: &Value) -> Vec<(String, String)> {
    v["hosts"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let s = |k: &str| h[k].as_str().unwrap_or("").to_owned();
                    (s("name"), s("phase"))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The cluster's view on a fabric (`/api/v1/status` `cluster`), `null` when it does not
/// answer.
fn view(f: &Fabric) -> Value {
    f.view().unwrap_or(Value::Null)
}

/// The runs stored in etcd, by number: their phases.
fn run_phases(etcd: &EtcdCluster) -> Vec<String> {
    let out = etcd
        .etcdctl(
            0,
            &["get", "/bootfabric/runs/", "--prefix", "--print-value-only"],
        )
        .unwrap_or_default();
    out.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["phase"].as_str().unwrap_or("").to_owned())
        .collect()
}

/// The lab of a test: three etcd members, a Redfish BMC per machine (answering after
/// `delay`), each machine's NIC on the bridge, an image root.
struct Lab {
    // Dropped in this order: the BMCs before the runtime that serves them.
    bmcs: Vec<QuirkyBmc>,
    _rt: tokio::runtime::Runtime,
    ports: Vec<u16>,
    machines: Vec<Netns>,
    _bmc_ns: Netns,
    images: TempDir,
    etcd: EtcdCluster,
}

impl Lab {
    fn start(delay: Duration) -> Self {
        let mut etcd = EtcdCluster::start(3).expect("etcd");
        // One BMC per machine, on the bridge where both fabrics reach them.
        let bmc_ns = Netns::new("bmcs").expect("netns");
        etcd.bridge
            .plug(&bmc_ns, "bmc0", &format!("{BMC_IP}/24"))
            .expect("plug");
        let listeners: Vec<TcpListener> = bmc_ns
            .run(|| {
                (0..MACHINES.len())
                    .map(|_| TcpListener::bind(format!("{BMC_IP}:0")).expect("bind"))
                    .collect()
            })
            .expect("namespace");
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let bmcs: Vec<QuirkyBmc> = {
            let _in = rt.enter();
            listeners
                .into_iter()
                .map(|l| {
                    let quirks = Quirks {
                        reset_types: ["On", "ForceOff", "ForceRestart"]
                            .map(String::from)
                            .to_vec(),
                        delay,
                        ..Quirks::default()
                    };
                    QuirkyBmc::on(l, quirks).expect("bmc")
                })
                .collect()
        };
        let ports = bmcs.iter().map(|b| b.addr.port()).collect();
        let machines = MACHINES
            .iter()
            .map(|(_, _, mac, ip)| machine(&mut etcd, mac, ip))
            .collect();
        Self {
            bmcs,
            _rt: rt,
            ports,
            machines,
            _bmc_ns: bmc_ns,
            images: TempDir::new().expect("images"),
            etcd,
        }
    }
}

#[test]
fn a_run_asked_on_a_follower_is_run_by_the_leader_and_reported_on_the_follower() {
    const TEST: &str =
        "a_run_asked_on_a_follower_is_run_by_the_leader_and_reported_on_the_follower";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl", "curl"])) {
        return;
    }
    let mut lab = Lab::start(Duration::ZERO);
    let Lab {
        ref mut etcd,
        ref bmcs,
        ref ports,
        ref machines,
        ref images,
        ..
    } = lab;
    let a = fabric(etcd, "fab-a", "rack-a", ports, images);
    let led = wait_for(Duration::from_secs(40), || {
        (view(&a)["leading"] == true).then_some(())
    });
    assert!(led.is_some(), "fab-a does not lead\n{}", a.log());
    let b = fabric(etcd, "fab-b", "rack-b", ports, images);
    let knows = wait_for(Duration::from_secs(40), || {
        (view(&b)["leader"] == "fab-a").then_some(())
    });
    assert!(
        knows.is_some(),
        "fab-b does not see fab-a lead\n{}",
        b.log()
    );

    // 1. On the follower: the same validation as on the leader, then stored for the leader.
    let api_b = b.api(None);
    let r = api_b
        .post("/api/reboot", &json!({"hosts": ["rack-a-n1", "nope"]}))
        .expect("POST /api/reboot");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("no host named \"nope\""), "{}", r.body);
    assert!(run_phases(etcd).is_empty(), "a refused run is not stored");
    let r = api_b
        .post("/api/reboot", &json!({"all": true}))
        .expect("POST /api/reboot");
    assert_eq!(r.status, 202, "{}", r.body);
    let first = r.json().expect("json");
    assert_eq!(first["state"], "requested", "{first}");
    assert_eq!(first["leader"], "fab-a", "{first}");
    assert_eq!(first["source"], "cluster", "{first}");
    let id = first["id"].as_u64().expect("id");

    // 2. The leader takes it and resets each machine once.
    let all_reset = wait_for(Duration::from_secs(30), || {
        let n = resets(bmcs);
        n.iter().all(|&c| c >= 1).then_some(n)
    });
    assert!(
        all_reset.is_some(),
        "resets {:?}\n{}\n{}",
        resets(bmcs),
        a.log(),
        b.log()
    );
    assert!(
        a.logged("taking a reboot run requested through another fabric"),
        "{}",
        a.log()
    );
    for ((_, rack, ..), ns) in MACHINES.iter().zip(machines) {
        boots(ns, rack);
    }
    let done = wait_for(Duration::from_secs(30), || {
        report(&a).filter(|v| v["state"] == "done")
    });
    assert!(
        done.is_some(),
        "the leader did not finish the run: {:?}\n{}",
        report(&a),
        a.log()
    );

    // 3. The follower reads the report from etcd, and says so.
    let on_b = wait_for(Duration::from_secs(20), || {
        report(&b).filter(|v| v["state"] == "done")
    })
    .unwrap_or_else(|| panic!("fab-b's report: {:?}\n{}", report(&b), b.log()));
    assert_eq!(on_b["id"].as_u64(), Some(id), "{on_b}");
    assert_eq!(on_b["source"], "cluster", "{on_b}");
    assert_eq!(on_b["leader"], "fab-a", "{on_b}");
    let want: Vec<(String, String)> = MACHINES
        .iter()
        .map(|(n, ..)| (n.to_string(), "booted".to_owned()))
        .collect();
    assert_eq!(phases(&on_b), want, "{on_b}");
    let cli = run(b
        .ns
        .command(bootfabric_bin())
        .args(["reboot", "--status", "--config"])
        .arg(b.config_path()))
    .expect("bootfabric reboot --status against fab-b");
    assert!(cli.contains("Reboot report"), "{cli}");
    assert!(
        cli.contains(&format!(
            "run {id} as recorded in etcd (the leader fab-a runs it"
        )),
        "{cli}"
    );
    assert_eq!(resets(bmcs), vec![1; MACHINES.len()], "resets per machine");
    // Only the leader cancels: the follower says where to.
    let r = api_b
        .request("DELETE", "/api/reboot", &[], None)
        .expect("DELETE /api/reboot");
    assert_eq!(r.status, 409, "{}", r.body);
    assert!(r.body.contains("cancel it on fab-a"), "{}", r.body);

    // 4. A second run keeps the leader busy (its machines do not boot again); requests pile
    //    up on the follower, as many as may wait, and no more.
    let r = api_b
        .post("/api/reboot", &json!({"all": true}))
        .expect("POST /api/reboot");
    assert_eq!(r.status, 202, "{}", r.body);
    let busy = wait_for(Duration::from_secs(20), || {
        report(&a).filter(|v| v["state"] == "running")
    });
    assert!(busy.is_some(), "the second run did not start\n{}", a.log());
    for n in 0..MAX_REQUESTED {
        let r = api_b
            .post("/api/reboot", &json!({"hosts": ["rack-b-n1"]}))
            .expect("POST /api/reboot");
        assert_eq!(r.status, 202, "request {n}: {}", r.body);
    }
    let r = api_b
        .post("/api/reboot", &json!({"hosts": ["rack-b-n1"]}))
        .expect("POST /api/reboot");
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("already wait for the leader"), "{}", r.body);
    let stored = run_phases(etcd);
    assert_eq!(
        stored.iter().filter(|p| *p == "requested").count(),
        MAX_REQUESTED,
        "{stored:?}"
    );
    assert_eq!(stored.len(), 2 + MAX_REQUESTED, "{stored:?}");

    // 5. Without quorum the follower stores nothing and says when to come back.
    etcd.kill(1);
    etcd.kill(2);
    let refused = wait_for(Duration::from_secs(20), || {
        let r = api_b.post("/api/reboot", &json!({"all": true})).ok()?;
        (r.status == 503).then_some(r)
    })
    .unwrap_or_else(|| panic!("no 503 without quorum\n{}", b.log()));
    assert!(
        refused
            .header("retry-after")
            .is_some_and(|s| s.trim().parse::<u64>().is_ok_and(|n| n >= 1)),
        "{refused:?}"
    );
    drop(a);
}

/// The value of `key` in etcd, as JSON.
fn etcd_json(etcd: &EtcdCluster, key: &str) -> Value {
    let out = etcd
        .etcdctl(0, &["get", key, "--print-value-only"])
        .unwrap_or_default();
    serde_json::from_str(&out).unwrap_or(Value::Null)
}

#[test]
fn a_new_leader_asks_the_power_state_of_a_reset_left_unknown_and_resets_nothing() {
    const TEST: &str =
        "a_new_leader_asks_the_power_state_of_a_reset_left_unknown_and_resets_nothing";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl", "curl"])) {
        return;
    }
    // Each BMC answer takes 1.5 s: a reset (service root, system, boot override, read back,
    // reset) takes several seconds after its intent is in etcd, time to kill the leader in.
    let mut lab = Lab::start(Duration::from_millis(1500));
    let Lab {
        ref mut etcd,
        ref bmcs,
        ref ports,
        ref machines,
        ref images,
        ..
    } = lab;
    let mut a = fabric(etcd, "fab-a", "rack-a", ports, images);
    let led = wait_for(Duration::from_secs(40), || {
        (view(&a)["leading"] == true).then_some(())
    });
    assert!(led.is_some(), "fab-a does not lead\n{}", a.log());
    let b = fabric(etcd, "fab-b", "rack-b", ports, images);
    let r = a
        .api(None)
        .post("/api/reboot", &json!({"all": true}))
        .expect("POST /api/reboot");
    assert_eq!(r.status, 202, "{}", r.body);
    let record = |host: &str| {
        etcd_json(
            etcd,
            &format!("/bootfabric/run-hosts/00000000000000000001/{host}"),
        )
    };
    let intents = wait_for(Duration::from_secs(20), || {
        MACHINES
            .iter()
            .all(|(host, ..)| record(host)["state"] == "resetting")
            .then_some(())
    });
    assert!(intents.is_some(), "no intents in etcd\n{}", a.log());
    // The leader dies with both resets under way, before any reached its BMC's reset action.
    a.stop_with(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL fab-a");
    assert_eq!(resets(bmcs), [0, 0], "killed before any reset arrived");
    // What the machines did meanwhile, as their BMCs will say: the first is on (in POST or
    // booting), the second stayed off.
    if let Ok(mut s) = bmcs[0].state.lock() {
        s.power = "On".into();
    }
    let took = wait_for(Duration::from_secs(40), || {
        b.log()
            .contains("taking over a reboot run left running")
            .then_some(())
    });
    assert!(took.is_some(), "fab-b did not take over\n{}", b.log());
    // The machine found off fails, saying why; the one found on waits for its boot.
    // (Its record in etcd is written when the run ends; the new leader's status says it first.)
    let failed_on_b = wait_for(Duration::from_secs(40), || {
        let v = report(&b)?;
        let h1 = v["hosts"][1].clone();
        (h1["phase"] == "failed").then_some(h1)
    })
    .unwrap_or_else(|| panic!("{:?}\n{}", report(&b), b.log()));
    assert!(
        failed_on_b["reason"]
            .as_str()
            .is_some_and(|r| r.contains("off after a reset of unknown outcome")),
        "{failed_on_b}"
    );
    assert_eq!(report(&b).expect("report")["hosts"][0]["phase"], "posting");
    // The first machine boots (reporting at fab-b): the run ends there.
    boots(&machines[0], "rack-b");
    let done = wait_for(Duration::from_secs(30), || {
        let run = etcd_json(etcd, "/bootfabric/runs/00000000000000000001");
        (run["phase"] == "done").then_some(run)
    });
    assert!(done.is_some(), "run 1 not finished\n{}", b.log());
    let r0 = record(MACHINES[0].0);
    assert_eq!(
        (r0["state"].as_str(), r0["fabric"].as_str()),
        (Some("booted"), Some("fab-b")),
        "{r0}"
    );
    let r1 = record(MACHINES[1].0);
    assert_eq!(r1["state"], "failed", "{r1}");
    // Each BMC was asked its power state by the new leader, and none was reset.
    for bmc in bmcs {
        let s = bmc.state.lock().expect("bmc state");
        assert!(s.resets.is_empty(), "{:?}", s.resets);
    }
    assert!(
        b.logged("the previous leader's reset outcome is unknown: found out"),
        "{}",
        b.log()
    );
    drop(a);
}
