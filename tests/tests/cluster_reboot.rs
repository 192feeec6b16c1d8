//! A reboot run across two racks, each served by its own fabric, that outlives its leader.
//! The machines' BMCs are the lab's Redfish BMC (one per machine, on the etcd bridge, each
//! counting the resets it receives); a machine whose BMC was reset boots through the fabric
//! of its rack (from its reserved address: `POST /booted` there), as the test lets it.
//!
//! 1. fab-a (rack-a) leads and starts the run of three hosts: one in rack-a, two in rack-b.
//! 2. The rack-a machine boots at fab-a, the first rack-b machine at fab-b: the leader's
//!    report shows both booted, the rack-b one only through the shared timeline.
//! 3. fab-a is SIGKILLed mid-run (the second rack-b machine has not booted). fab-b takes the
//!    run over; the rack-a machine's boot is known to it only from fab-a's shared entries.
//! 4. The last machine boots at fab-b; fab-b ends the run with every host booted.
//!
//! Counted at the BMCs: every machine was reset exactly once (none booted was reset again).

use std::{net::TcpListener, time::Duration};

use bootfabric_lab::{
    api::Api,
    etcd::EtcdCluster,
    http_get,
    redfish_server::{Quirks, QuirkyBmc},
    require_programs, require_root, run, wait_for, Daemon, Netns, TempDir,
};
use serde_json::Value;

/// The BMCs' namespace address on the etcd bridge.
const BMC_IP: &str = "10.90.0.50";

/// (name, rack, MAC, reserved address).
const MACHINES: [(&str, &str, &str, &str); 3] = [
    ("rack-a-n1", "rack-a", "52:54:00:c2:00:01", "10.90.0.61"),
    ("rack-b-n1", "rack-b", "52:54:00:c2:00:02", "10.90.0.62"),
    ("rack-b-n2", "rack-b", "52:54:00:c2:00:03", "10.90.0.63"),
];

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
) -> (Netns, Daemon) {
    let ns = Netns::new(name).expect("netns");
    etcd.bridge
        .plug(&ns, "fabric0", &format!("{}/24", fabric_ip(rack)))
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
[http]
root = "{root}"
[cluster]
name = "{name}"
rack = "{rack}"
etcd = {endpoints}
ttl_s = 3
timeout_s = 2
[scheduler]
# Slots for every host at once: the run resets them all right away.
capacity_mbps = 1000
per_host_mbps = 10
reset_attempts = 1
# Long enough that a host is never failed for being slow here: a host not seen booting
# would make the test wait far past its bounds.
post_timeout_s = 120
boot_timeout_s = 120
"#,
        root = images.path.display(),
        endpoints = etcd.endpoints_toml()
    );
    let mut hosts = String::from("[profiles.p]\n");
    for ((host, r, mac, ip), port) in MACHINES.iter().zip(ports) {
        hosts += &format!(
            "[[hosts]]\nname = \"{host}\"\nmac = \"{mac}\"\nip = \"{ip}\"\nprofile = \"p\"\n\
             rack = \"{r}\"\nbmc = {{ url = \"http://{BMC_IP}:{port}\", username = \"admin\", \
             password_file = \"bmc.pass\", allow_plaintext = true, timeout_s = 5, attempts = 1 }}\n"
        );
    }
    let daemon = Daemon::start(
        &ns,
        &config,
        &[("hosts.toml", &hosts), ("bmc.pass", "password\n")],
    )
    .expect("daemon");
    (ns, daemon)
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

/// The run's report on a fabric: each host's phase, by name.
fn phases(ns: &Netns, d: &Daemon) -> Vec<(String, String, String)> {
    let (code, body) = http_get(ns, d.admin, "/api/reboot").expect("report");
    if code != 200 {
        return Vec::new();
    }
    let v: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
    v["hosts"]
        .as_array()
        .map(|hs| {
            hs.iter()
                .map(|h| {
                    let s = |k: &str| h[k].as_str().unwrap_or("").to_owned();
                    (s("name"), s("rack"), s("phase"))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn booted(p: &[(String, String, String)], host: &str) -> bool {
    p.iter().any(|(n, _, ph)| n == host && ph == "booted")
}

#[test]
fn a_two_rack_run_outlives_its_leader_and_no_booted_machine_is_reset_twice() {
    const TEST: &str = "a_two_rack_run_outlives_its_leader_and_no_booted_machine_is_reset_twice";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl", "curl"])) {
        return;
    }
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
                    ..Quirks::default()
                };
                QuirkyBmc::on(l, quirks).expect("bmc")
            })
            .collect()
    };
    let ports: Vec<u16> = bmcs.iter().map(|b| b.addr.port()).collect();
    let machines: Vec<Netns> = MACHINES
        .iter()
        .map(|(_, _, mac, ip)| machine(&mut etcd, mac, ip))
        .collect();
    let images = TempDir::new().expect("images");

    let (ns_a, mut a) = fabric(&mut etcd, "fab-a", "rack-a", &ports, &images);
    let leads = |ns: &Netns, d: &Daemon| {
        let (_, body) = http_get(ns, d.admin, "/api/v1/status").unwrap_or_default();
        serde_json::from_str::<Value>(&body).is_ok_and(|v| v["cluster"]["leading"] == true)
    };
    assert!(
        wait_for(Duration::from_secs(40), || leads(&ns_a, &a).then_some(())).is_some(),
        "fab-a does not lead\n{}",
        a.log()
    );
    let (ns_b, b) = fabric(&mut etcd, "fab-b", "rack-b", &ports, &images);
    let r = Api::new(&ns_a, a.admin, None)
        .post("/api/reboot", &serde_json::json!({"all": true}))
        .expect("POST /api/reboot");
    assert_eq!(r.status, 202, "the leader starts the run: {}", r.body);

    // Every machine is reset once by fab-a.
    let all_reset = wait_for(Duration::from_secs(30), || {
        let n = resets(&bmcs);
        n.iter().all(|&c| c >= 1).then_some(n)
    });
    assert!(
        all_reset.is_some(),
        "resets {:?}\n{}",
        resets(&bmcs),
        a.log()
    );
    // rack-a-n1 boots at fab-a, rack-b-n1 at fab-b: the leader sees both.
    boots(&machines[0], MACHINES[0].1);
    boots(&machines[1], MACHINES[1].1);
    let seen = wait_for(Duration::from_secs(20), || {
        let p = phases(&ns_a, &a);
        (booted(&p, "rack-a-n1") && booted(&p, "rack-b-n1")).then_some(p)
    });
    assert!(
        seen.is_some(),
        "the leader does not see both boots: {:?}\n{}",
        phases(&ns_a, &a),
        a.log()
    );
    assert!(
        !booted(&phases(&ns_a, &a), "rack-b-n2"),
        "rack-b-n2 has not booted yet"
    );

    // fab-a dies mid-run; fab-b takes the run over.
    a.stop_with(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL fab-a");
    let took = wait_for(Duration::from_secs(30), || {
        b.log()
            .contains("taking over a reboot run left running")
            .then_some(())
    });
    assert!(took.is_some(), "fab-b did not take over\n{}", b.log());
    // The last machine boots at fab-b; the run ends there with every host booted.
    boots(&machines[2], MACHINES[2].1);
    let get = |key: &str| {
        etcd.etcdctl(0, &["get", key, "--print-value-only"])
            .unwrap_or_default()
    };
    let done = wait_for(Duration::from_secs(30), || {
        let run: Value =
            serde_json::from_str(&get("/bootfabric/runs/00000000000000000001")).ok()?;
        (run["phase"] == "done").then_some(run)
    });
    assert!(
        done.is_some(),
        "run 1 not finished by fab-b: {:?}\n{}",
        phases(&ns_b, &b),
        b.log()
    );
    for (host, ..) in MACHINES {
        let key = format!("/bootfabric/run-hosts/00000000000000000001/{host}");
        let r: Value = serde_json::from_str(&get(&key)).unwrap_or(Value::Null);
        assert_eq!(r["state"], "booted", "{host}: {r}\n{}", b.log());
        assert_eq!(r["fabric"], "fab-b", "{host}: {r}");
    }
    // The new leader's report has both racks, every host booted.
    let p = phases(&ns_b, &b);
    assert_eq!(p.len(), MACHINES.len(), "{p:?}");
    for (host, rack, ..) in MACHINES {
        assert!(
            p.iter()
                .any(|(n, r, ph)| n == host && r == rack && ph == "booted"),
            "{host} in {rack}: {p:?}"
        );
    }
    // Counted at the BMCs: each machine was reset once, none booted was reset again.
    assert_eq!(resets(&bmcs), vec![1; MACHINES.len()], "resets per machine");
    drop((ns_a, machines, bmc_ns));
}
