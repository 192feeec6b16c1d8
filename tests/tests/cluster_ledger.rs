//! The boot ledger shared through etcd (cluster mode): a machine gets its lease from fabric
//! A, A dies, and the machine fetches its script and kernel from fabric B; B's timeline
//! shows the whole boot, A's phases and its own, in order, each naming its fabric. With
//! etcd's quorum lost, B still answers from its own ledger and says the view is partial.

use std::{net::Ipv4Addr, time::Duration};

use bootfabric_lab::{
    cluster_lab::Fabric, etcd::EtcdCluster, require_programs, require_root, sample,
    simhost::SimHost, wait_for, TempDir,
};
use serde_json::Value;

const MAC: &str = "52:54:00:1e:d6:01";
const RESERVED: Ipv4Addr = Ipv4Addr::new(10, 90, 0, 60);

const INVENTORY: &str = r#"[profiles.linux]
kernel = "linux/vmlinuz"
cmdline = "console=ttyS0 bootfabric.booted={http_base}/booted"

[[hosts]]
name = "node01"
mac = "52:54:00:1e:d6:01"
ip = "10.90.0.60"
profile = "linux"
"#;

/// A fabric on the etcd bridge at `10.90.0.<host>`, serving `images` over HTTP, and DHCP
/// when `dhcp`.
fn fabric(etcd: &mut EtcdCluster, name: &str, host: u8, images: &TempDir, dhcp: bool) -> Fabric {
    let mut f = Fabric::on(etcd, name, host)
        .inventory(INVENTORY)
        .section(&format!("[http]\nroot = \"{}\"\n", images.path.display()));
    if dhcp {
        f = f.section(
            "[dhcp]\n[[dhcp.subnets]]\ncidr = \"10.90.0.0/24\"\ninterface = \"fabric0\"\npools = [\"10.90.0.100-10.90.0.150\"]\n",
        );
    }
    f.start().expect("fabric")
}

fn timeline(f: &Fabric) -> Value {
    let (status, body) = f
        .get(&format!("/api/timeline?mac={MAC}"))
        .expect("timeline");
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// (phase, fabric) of every event, in the order given.
fn steps(t: &Value) -> Vec<(String, String)> {
    t["events"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["phase"].as_str().unwrap_or("?").to_owned(),
                        e["fabric"].as_str().unwrap_or("?").to_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn has(t: &Value, phase: &str, fabric: &str) -> bool {
    steps(t).iter().any(|(p, f)| p == phase && f == fabric)
}

#[test]
fn a_boot_across_two_fabrics_shows_whole_on_either_and_partial_without_etcd() {
    const TEST: &str = "a_boot_across_two_fabrics_shows_whole_on_either_and_partial_without_etcd";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl", "udhcpc", "curl"])) {
        return;
    }
    let images = TempDir::new().expect("images");
    std::fs::create_dir_all(images.path.join("linux")).expect("mkdir");
    std::fs::write(images.path.join("linux/vmlinuz"), vec![7u8; 256 * 1024]).expect("kernel");

    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let mut a = fabric(&mut etcd, "fab-a", 21, &images, true);
    let b = fabric(&mut etcd, "fab-b", 22, &images, false);
    let host = SimHost::new(&mut etcd.bridge, MAC).expect("sim host");

    // DHCP from A (B serves no DHCP): the reservation.
    let ip = host
        .dhcp()
        .unwrap_or_else(|e| panic!("{e}\nfab-a:\n{}", a.log()));
    assert_eq!(ip, RESERVED);
    // A's DHCP phases reach etcd (written asynchronously), then A dies without a word.
    let dir = format!("/bootfabric/timeline/{MAC}/");
    wait_for(Duration::from_secs(30), || {
        let keys = etcd
            .etcdctl(0, &["get", "--prefix", "--keys-only", &dir])
            .ok()?;
        keys.contains("-fab-a-").then_some(())
    })
    .unwrap_or_else(|| panic!("no fab-a entry in etcd\n{}", a.log()));
    a.stop_with(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL fab-a");
    drop(a.ns);

    // The rest of the boot from B: script, kernel, `booted`.
    let boot = host
        .boot("http://10.90.0.22", None)
        .expect("boot from fab-b");
    assert_eq!(boot.script_status, 200, "{}", boot.script);
    assert!(
        boot.files.iter().all(|(_, code, _)| *code == 200) && !boot.files.is_empty(),
        "{:?}",
        boot.files
    );
    assert_eq!(boot.booted, Some(204));

    // B's timeline: A's DHCP phases from etcd and B's own, in time order, each named.
    let mut last = Value::Null;
    let whole = wait_for(Duration::from_secs(20), || {
        last = timeline(&b);
        (has(&last, "dhcp_ack", "fab-a") && has(&last, "booted", "fab-b")).then(|| last.clone())
    })
    .unwrap_or_else(|| panic!("fab-b's timeline: {last}\n{}", b.log()));
    assert_eq!(whole["partial"], false, "{whole}");
    assert_eq!(whole["fabric"], "fab-b");
    let s = steps(&whole);
    let at: Vec<u64> = whole["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["at_ms"].as_u64())
        .collect();
    assert_eq!(at.len(), s.len(), "{whole}");
    assert!(
        at.windows(2).all(|w| w[0] <= w[1]),
        "not in time order: {whole}"
    );
    let pos = |phase: &str, fabric: &str| {
        s.iter()
            .position(|(p, f)| p == phase && f == fabric)
            .unwrap_or_else(|| panic!("no {phase} from {fabric}: {whole}"))
    };
    assert!(pos("dhcp_offer", "fab-a") < pos("dhcp_ack", "fab-a"));
    assert!(pos("dhcp_ack", "fab-a") < pos("ipxe_script", "fab-b"));
    assert!(pos("ipxe_script", "fab-b") < pos("http_sent", "fab-b"));
    assert!(pos("http_sent", "fab-b") < pos("booted", "fab-b"));
    // Nothing twice: B's own entries are in etcd too, but shown once.
    assert_eq!(
        s.iter().filter(|(p, _)| p == "booted").count(),
        1,
        "{whole}"
    );

    // Every entry lives under a lease (the retention), none without one.
    let raw = etcd
        .etcdctl(0, &["get", "--prefix", "-w", "json", &dir])
        .expect("etcdctl get");
    let raw: Value = serde_json::from_str(&raw).expect("etcdctl json");
    let kvs = raw["kvs"].as_array().expect("kvs");
    assert!(kvs.len() >= s.len(), "{raw}");
    assert!(
        kvs.iter().all(|kv| kv["lease"].as_i64().unwrap_or(0) != 0),
        "an entry without a lease: {raw}"
    );
    // Each entry stays small (the budget's arithmetic counts on it): key and value in base64.
    let largest = kvs
        .iter()
        .map(|kv| {
            let b64 = |v: &Value| v.as_str().map_or(0, str::len) * 3 / 4;
            b64(&kv["key"]) + b64(&kv["value"])
        })
        .max()
        .unwrap_or(0);
    eprintln!("largest shared entry: {largest} bytes (key and value)");
    assert!(largest <= 1024, "{raw}");
    let m = b.metrics().expect("metrics");
    assert!(
        sample(
            &m,
            "bootfabric_cluster_timeline_writes_total",
            &[("outcome", "ok")]
        )
        .unwrap_or(0.0)
            >= 3.0,
        "{m}"
    );

    // Quorum lost: B answers from its own ledger, marked partial, within its etcd timeout.
    etcd.kill(1);
    etcd.kill(2);
    let partial = timeline(&b);
    assert_eq!(partial["partial"], true, "{partial}");
    assert!(partial["error"].is_string(), "{partial}");
    let s = steps(&partial);
    assert!(
        !s.is_empty() && s.iter().all(|(_, f)| f == "fab-b"),
        "{partial}"
    );
    assert!(has(&partial, "booted", "fab-b"), "{partial}");
    drop(host);
}
