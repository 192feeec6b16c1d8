//! A reboot run across two racks, each served by its own fabric, that outlives its leader.
//!
//! The BMCs are sushy-emulator (PyPI sushy-tools, fake driver), one emulator for all the
//! machines (one system path each) on the etcd bridge, where both fabrics reach it. Its
//! fake driver reports every change to a system (the reset that takes it down or on, the
//! power applied) to a [`PowerLog`] the test holds: the resets are counted there, by
//! something the daemons do not control. Each rack is its own provisioning segment (a
//! bridge), on which its fabric serves DHCP and HTTP. A machine whose reset sushy has
//! applied (its boot override set, its power On after the reset) boots as firmware and iPXE
//! would, through its rack's fabric ([`SimHost`]): udhcpc for its reserved address, its
//! script, kernel and initrd by curl, `POST /booted`.
//!
//! 1. fab-a (rack-a) leads and starts the run of three hosts: one in rack-a, two in rack-b.
//! 2. The rack-a machine boots at fab-a, the first rack-b machine at fab-b: the leader's
//!    report shows both booted, the rack-b one only through the shared timeline; the leader
//!    writes both boots to etcd as they happen, so the follower's report (read from etcd)
//!    shows them too.
//! 3. fab-a is SIGKILLed (by PID) mid-run: the test holds the second rack-b machine back
//!    until then. fab-b takes the run over; the two boots are on record, so it waits only
//!    for the third.
//! 4. The last machine boots at fab-b; fab-b ends the run with every host booted and its
//!    report shows both racks.
//!
//! Counted at sushy: every machine was reset exactly once (none booted was reset again).

use std::{net::Ipv4Addr, time::Duration};

use bootfabric_lab::{
    cluster_lab::Fabric,
    etcd::EtcdCluster,
    require_programs, require_root, run,
    simhost::SimHost,
    sushy::{Driver, FakeSystem, PowerChange, PowerLog, Sushy},
    wait_for, Bridge, Netns, TempDir,
};
use serde_json::Value;

/// sushy's address on the etcd bridge, and its port (the namespace is the test's own).
const SUSHY_IP: &str = "10.90.0.50";
const SUSHY_PORT: u16 = 8000;
const USER: &str = "admin";
const PASSWORD: &str = "s3cret-bmc";

/// One machine: its name, rack, NIC, reserved address, sushy UUID and power at the start
/// (rack-a-n1 is off and gets `On`; the others are on and get a restart).
struct Machine {
    name: &'static str,
    rack: &'static str,
    mac: &'static str,
    ip: Ipv4Addr,
    uuid: &'static str,
    power: &'static str,
}

const MACHINES: [Machine; 3] = [
    Machine {
        name: "rack-a-n1",
        rack: "rack-a",
        mac: "52:54:00:c2:00:01",
        ip: Ipv4Addr::new(10, 91, 1, 11),
        uuid: "22222222-0000-0000-0000-000000000001",
        power: "Off",
    },
    Machine {
        name: "rack-b-n1",
        rack: "rack-b",
        mac: "52:54:00:c2:00:02",
        ip: Ipv4Addr::new(10, 91, 2, 11),
        uuid: "22222222-0000-0000-0000-000000000002",
        power: "On",
    },
    Machine {
        name: "rack-b-n2",
        rack: "rack-b",
        mac: "52:54:00:c2:00:03",
        ip: Ipv4Addr::new(10, 91, 2, 12),
        uuid: "22222222-0000-0000-0000-000000000003",
        power: "On",
    },
];

/// A rack's segment: its third octet in 10.91.<n>.0/24 (the fabric is .1 there).
fn segment(rack: &str) -> u8 {
    if rack == "rack-a" {
        1
    } else {
        2
    }
}

/// The fabric's address on its rack's segment, where its machines boot from.
fn fabric_ip(rack: &str) -> String {
    format!("10.91.{}.1", segment(rack))
}

/// The machines' system paths at sushy (the fake driver's identity is the UUID).
fn system_path(m: &Machine) -> String {
    format!("/redfish/v1/Systems/{}", m.uuid)
}

/// The inventory every fabric has (as a shared one would be): the machines of both racks.
fn inventory(sushy_url: &str) -> String {
    let mut inv = String::from(
        "[profiles.linux]\nkernel = \"linux/vmlinuz\"\ninitrd = [\"linux/initrd.img\"]\n\
         cmdline = \"console=ttyS0 bootfabric.booted={http_base}/booted\"\n",
    );
    for m in &MACHINES {
        inv += &format!(
            "[[hosts]]\nname = \"{}\"\nmac = \"{}\"\nip = \"{}\"\nprofile = \"linux\"\n\
             rack = \"{}\"\nbmc = {{ url = \"{sushy_url}\", system = \"{}\", username = \"{USER}\", \
             password_file = \"bmc.pass\", allow_plaintext = true, timeout_s = 5, attempts = 1 }}\n",
            m.name,
            m.mac,
            m.ip,
            m.rack,
            system_path(m)
        );
    }
    inv
}

/// A fabric daemon for `rack`, in cluster mode: `etcd0` on the etcd bridge (etcd and sushy)
/// at `10.90.0.<host>`, its provisioning link `fabric0` on the rack's bridge, where it serves
/// DHCP and HTTP.
fn fabric(
    etcd: &mut EtcdCluster,
    rack_bridge: &mut Bridge,
    (name, host): (&str, u8),
    rack: &str,
    inventory: &str,
    images: &TempDir,
) -> Fabric {
    let n = segment(rack);
    Fabric::on(etcd, name, host)
        .rack(rack)
        .lan(rack_bridge, &format!("{}/24", fabric_ip(rack)))
        .inventory(inventory)
        .file("bmc.pass", &format!("{PASSWORD}\n"))
        .section(&format!(
            r#"[dhcp]
[[dhcp.subnets]]
cidr = "10.91.{n}.0/24"
interface = "fabric0"
pools = ["10.91.{n}.100-10.91.{n}.150"]
[http]
root = "{root}"
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
        ))
        .start()
        .expect("fabric")
}

/// GETs a Redfish resource from sushy with curl, in sushy's namespace. Reading a system is
/// also what makes the fake driver apply a pending power change whose time has come.
fn redfish(ns: &Netns, base: &str, path: &str) -> Option<Value> {
    let out = run(ns.command("curl").args([
        "-sS",
        "--fail",
        "--max-time",
        "10",
        "-u",
        &format!("{USER}:{PASSWORD}"),
        &format!("{base}{path}"),
    ]))
    .ok()?;
    serde_json::from_str(&out).ok()
}

/// The changes sushy reported for `m`, in order.
fn changes_of(log: &PowerLog, m: &Machine) -> Vec<PowerChange> {
    log.changes()
        .into_iter()
        .filter(|c| c.uuid == m.uuid)
        .collect()
}

/// The resets sushy applied to each machine, in [`MACHINES`] order: the changes that left a
/// power change pending. A reset that changes the power (`On` of an off machine, any
/// restart) always reports one; the boot override set before it, with nothing pending yet,
/// does not. A second reset at any time would report another.
fn resets(log: &PowerLog) -> Vec<usize> {
    MACHINES
        .iter()
        .map(|m| {
            changes_of(log, m)
                .iter()
                .filter(|c| c.pending.is_some())
                .count()
        })
        .collect()
}

/// Waits (bounded) until sushy shows `m` reset, set to boot from the network, and powered on
/// after the reset: the moment its firmware would start. Polls the system, which applies the
/// pending power once its time has come (the fake driver takes 1-11 s).
fn powered_on_for_pxe(bmc_ns: &Netns, sushy: &Sushy, log: &PowerLog, m: &Machine) {
    let mut last = Value::Null;
    let on = wait_for(Duration::from_secs(40), || {
        last = redfish(bmc_ns, &sushy.url, &system_path(m))?;
        let changes = changes_of(log, m);
        let reset = changes.iter().position(|c| c.pending.is_some())?;
        let applied = changes[reset..]
            .iter()
            .any(|c| c.power == "On" && c.pending.is_none());
        (applied && last["Boot"]["BootSourceOverrideTarget"] == "Pxe" && last["PowerState"] == "On")
            .then_some(())
    });
    assert!(
        on.is_some(),
        "{}: sushy never showed it reset for PXE and on: {last}\n{:?}",
        m.name,
        changes_of(log, m)
    );
}

/// The machine boots through its rack's fabric as firmware and iPXE would: its reserved
/// address by DHCP, then its script, kernel and initrd, then `POST /booted`.
fn boots(host: &SimHost, m: &Machine, fabric: &Fabric) {
    let ip = host
        .dhcp()
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", m.name, fabric.log()));
    assert_eq!(ip, m.ip, "{}: the reservation", m.name);
    let boot = host
        .boot(&format!("http://{}", fabric_ip(m.rack)), None)
        .unwrap_or_else(|e| panic!("{}: {e}\n{}", m.name, fabric.log()));
    assert_eq!(boot.script_status, 200, "{}: {}", m.name, boot.script);
    assert!(
        boot.files.len() == 2 && boot.files.iter().all(|(_, code, _)| *code == 200),
        "{}: kernel and initrd: {:?}\n{}",
        m.name,
        boot.files,
        boot.script
    );
    assert_eq!(boot.booted, Some(204), "{}: POST /booted", m.name);
}

/// The run's report on a fabric: each host's (name, rack, phase).
fn phases(f: &Fabric) -> Vec<(String, String, String)> {
    let Ok((200, body)) = f.get("/api/reboot") else {
        return Vec::new();
    };
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
    if !(require_root(TEST)
        && require_programs(
            TEST,
            &["etcd", "etcdctl", "sushy-emulator", "udhcpc", "curl"],
        ))
    {
        return;
    }
    let images = TempDir::new().expect("images");
    std::fs::create_dir_all(images.path.join("linux")).expect("mkdir");
    std::fs::write(images.path.join("linux/vmlinuz"), vec![7u8; 256 * 1024]).expect("kernel");
    std::fs::write(images.path.join("linux/initrd.img"), vec![9u8; 128 * 1024]).expect("initrd");

    let mut etcd = EtcdCluster::start(3).expect("etcd");
    // sushy, with its notifications to the test's log, on the bridge both fabrics reach.
    let bmc_ns = Netns::new("sushy").expect("netns");
    etcd.bridge
        .plug(&bmc_ns, "bmc0", &format!("{SUSHY_IP}/24"))
        .expect("plug");
    let sushy_dir = TempDir::new().expect("sushy dir");
    let power_log = PowerLog::start(&bmc_ns).expect("notification listener");
    let systems: Vec<FakeSystem> = MACHINES
        .iter()
        .map(|m| FakeSystem {
            name: m.name,
            uuid: m.uuid,
            power: m.power,
            mac: m.mac,
        })
        .collect();
    let sushy = Sushy::start_with(
        &bmc_ns,
        &sushy_dir.path,
        (SUSHY_IP, SUSHY_PORT),
        Driver::FakeNotifying {
            systems: &systems,
            url: &power_log.url,
        },
        (USER, PASSWORD),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let inv = inventory(&sushy.url);

    // Each rack's segment, its machines on it.
    let mut rack_a = Bridge::new().expect("rack-a bridge");
    let mut rack_b = Bridge::new().expect("rack-b bridge");
    let hosts: Vec<SimHost> = MACHINES
        .iter()
        .map(|m| {
            let bridge = if m.rack == "rack-a" {
                &mut rack_a
            } else {
                &mut rack_b
            };
            SimHost::new(bridge, m.mac).expect("machine")
        })
        .collect();

    let mut a = fabric(
        &mut etcd,
        &mut rack_a,
        ("fab-a", 21),
        "rack-a",
        &inv,
        &images,
    );
    assert!(
        a.wait_view(|v| v["leading"] == true).is_ok(),
        "fab-a does not lead\n{}",
        a.log()
    );
    let b = fabric(
        &mut etcd,
        &mut rack_b,
        ("fab-b", 22),
        "rack-b",
        &inv,
        &images,
    );
    let r = a
        .api(None)
        .post("/api/reboot", &serde_json::json!({"all": true}))
        .expect("POST /api/reboot");
    assert_eq!(r.status, 202, "the leader starts the run: {}", r.body);

    // fab-a resets every machine through sushy, once each.
    let all_reset = wait_for(Duration::from_secs(30), || {
        let n = resets(&power_log);
        n.iter().all(|&c| c >= 1).then_some(n)
    });
    assert!(
        all_reset.is_some(),
        "resets at sushy {:?}\n{}",
        resets(&power_log),
        a.log()
    );
    // rack-a-n1 boots at fab-a, rack-b-n1 at fab-b: the leader sees both.
    for (host, m, fabric) in [(&hosts[0], &MACHINES[0], &a), (&hosts[1], &MACHINES[1], &b)] {
        powered_on_for_pxe(&bmc_ns, &sushy, &power_log, m);
        boots(host, m, fabric);
    }
    let seen = wait_for(Duration::from_secs(20), || {
        let p = phases(&a);
        (booted(&p, "rack-a-n1") && booted(&p, "rack-b-n1")).then_some(p)
    });
    assert!(
        seen.is_some(),
        "the leader does not see both boots: {:?}\n{}",
        phases(&a),
        a.log()
    );
    assert!(
        !booted(&phases(&a), "rack-b-n2"),
        "rack-b-n2 has not booted yet"
    );
    // The held-back machine's reset is on record (`reset`, not just the intent), so what
    // the new leader must do with it is certain: wait for its boot, not reset it again.
    let get = |key: &str| {
        etcd.etcdctl(0, &["get", key, "--print-value-only"])
            .unwrap_or_default()
    };
    let n2_key = "/bootfabric/run-hosts/00000000000000000001/rack-b-n2";
    let recorded = wait_for(Duration::from_secs(20), || {
        let r: Value = serde_json::from_str(&get(n2_key)).ok()?;
        (r["state"] == "reset").then_some(())
    });
    assert!(recorded.is_some(), "{n2_key}: {}\n{}", get(n2_key), a.log());
    // The two boots are in etcd as they happened, not only at the run's end: the follower's
    // report, read from etcd, shows them.
    for m in &MACHINES[..2] {
        let key = format!("/bootfabric/run-hosts/00000000000000000001/{}", m.name);
        let written = wait_for(Duration::from_secs(20), || {
            let r: Value = serde_json::from_str(&get(&key)).ok()?;
            (r["state"] == "booted" && r["fabric"] == "fab-a").then_some(())
        });
        assert!(written.is_some(), "{key}: {}\n{}", get(&key), a.log());
    }
    let on_b = phases(&b);
    assert!(
        booted(&on_b, "rack-a-n1") && booted(&on_b, "rack-b-n1") && !booted(&on_b, "rack-b-n2"),
        "the follower's report from etcd: {on_b:?}"
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
    powered_on_for_pxe(&bmc_ns, &sushy, &power_log, &MACHINES[2]);
    boots(&hosts[2], &MACHINES[2], &b);
    let done = wait_for(Duration::from_secs(30), || {
        let run: Value =
            serde_json::from_str(&get("/bootfabric/runs/00000000000000000001")).ok()?;
        (run["phase"] == "done").then_some(run)
    });
    assert!(
        done.is_some(),
        "run 1 not finished by fab-b: {:?}\n{}",
        phases(&b),
        b.log()
    );
    for m in &MACHINES {
        let key = format!("/bootfabric/run-hosts/00000000000000000001/{}", m.name);
        let r: Value = serde_json::from_str(&get(&key)).unwrap_or(Value::Null);
        assert_eq!(r["state"], "booted", "{}: {r}\n{}", m.name, b.log());
        // Each boot recorded by the leader of the moment: the first two by fab-a.
        let by = if m.name == "rack-b-n2" {
            "fab-b"
        } else {
            "fab-a"
        };
        assert_eq!(r["fabric"], by, "{}: {r}", m.name);
    }
    // The new leader's report has both racks, every host booted.
    let p = phases(&b);
    assert_eq!(p.len(), MACHINES.len(), "{p:?}");
    for m in &MACHINES {
        assert!(
            p.iter()
                .any(|(n, r, ph)| n == m.name && r == m.rack && ph == "booted"),
            "{} in {}: {p:?}",
            m.name,
            m.rack
        );
    }
    // Counted at sushy: each machine was reset once, none booted was reset again.
    assert_eq!(
        resets(&power_log),
        vec![1; MACHINES.len()],
        "resets per machine at sushy: {:?}",
        power_log.changes()
    );
}
