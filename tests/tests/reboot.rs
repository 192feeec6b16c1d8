//! The reboot scheduler live, end to end: `bootfabric reboot` asks the daemon, whose runner
//! drives sushy-emulator (PyPI sushy-tools, fake driver) for three machines and two BMCs that
//! fail (one never answers, one refuses connections). Each of the three machines is played
//! by the test the way firmware behaves: once sushy shows its boot override and power on,
//! it asks DHCP with udhcpc, fetches its iPXE script with curl (waiting while the fabric's
//! admission gate says so), downloads its kernel and initrd at a NIC-like rate, and calls
//! `POST /booted`. The machines boot one at a time (one download slot), the failing BMCs
//! are retried and then isolated while the others boot, and the CLI's report says so.

use std::{
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    time::{Duration, Instant},
};

use bootfabric_lab::{
    bootfabric_bin, content, http_get, require_programs, require_root, run, sample,
    sushy::{FakeSystem, Sushy},
    wait_for, Bridge, Daemon, Netns, TempDir,
};
use serde_json::Value;

const USER: &str = "admin";
const PASSWORD: &str = "s3cret-bmc";
/// Bound on any one machine's whole boot in this lab (a bound, not a timing check).
const BOOT_BOUND: Duration = Duration::from_secs(180);

const MACHINES: [(&str, &str, &str, &str, &str); 3] = [
    (
        "node01",
        "11111111-0000-0000-0000-000000000001",
        "Off",
        "52:54:00:b0:0f:01",
        "10.77.0.11",
    ),
    (
        "node02",
        "11111111-0000-0000-0000-000000000002",
        "On",
        "52:54:00:b0:0f:02",
        "10.77.0.12",
    ),
    (
        "node03",
        "11111111-0000-0000-0000-000000000003",
        "On",
        "52:54:00:b0:0f:03",
        "10.77.0.13",
    ),
];

fn config(images: &Path) -> String {
    format!(
        r#"
[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[xdp]
mode = "off"
[dhcp]
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
[http]
root = "{}"
[scheduler]
# One download slot: 8 Mbit/s of capacity, 8 Mbit/s per host.
capacity_mbps = 8
per_host_mbps = 8
post_guess_s = 3
lookahead_s = 600
max_bmc_operations = 5
reset_attempts = 3
retry_backoff_s = 1
post_timeout_s = 120
boot_timeout_s = 120
gate_retry_s = 1
"#,
        images.display()
    )
}

fn inventory(sushy: &str, systems: &[String], hung: &str, refused: &str) -> String {
    let mut inv = String::from(
        "[profiles.linux]\nkernel = \"linux/vmlinuz\"\ninitrd = [\"linux/initrd.img\"]\ncmdline = \"console=ttyS0\"\n",
    );
    let bmc = |url: &str, extra: &str| {
        format!("bmc = {{ url = \"{url}\", username = \"{USER}\", password_file = \"bmc.pass\", allow_plaintext = true{extra} }}\n")
    };
    for ((name, _, _, mac, ip), system) in MACHINES.iter().zip(systems) {
        inv.push_str(&format!(
            "[[hosts]]\nname = \"{name}\"\nmac = \"{mac}\"\nip = \"{ip}\"\nprofile = \"linux\"\nmodel = \"sushy-fake\"\nrack = \"r1\"\n"
        ));
        inv.push_str(&bmc(sushy, &format!(", system = \"{system}\"")));
    }
    for (name, mac, ip, url) in [
        ("hung01", "52:54:00:de:ad:01", "10.77.0.21", hung),
        ("refused01", "52:54:00:de:ad:02", "10.77.0.22", refused),
    ] {
        inv.push_str(&format!(
            "[[hosts]]\nname = \"{name}\"\nmac = \"{mac}\"\nip = \"{ip}\"\nprofile = \"linux\"\nrack = \"r2\"\n"
        ));
        inv.push_str(&bmc(url, ", timeout_s = 1, attempts = 2"));
    }
    inv
}

/// GETs a Redfish resource from sushy (in the server namespace) with curl.
fn redfish(srv: &Netns, base: &str, path: &str) -> Result<Value, String> {
    let out = run(srv.command("curl").args([
        "-sS",
        "--fail",
        "--max-time",
        "10",
        "-u",
        &format!("{USER}:{PASSWORD}"),
        &format!("{base}{path}"),
    ]))
    .map_err(|e| e.to_string())?;
    serde_json::from_str(&out).map_err(|e| format!("{path}: {e}"))
}

/// The paths of sushy's systems, in the order of [`MACHINES`].
fn system_paths(srv: &Netns, base: &str) -> Vec<String> {
    let list = redfish(srv, base, "/redfish/v1/Systems").expect("systems");
    let paths: Vec<String> = list["Members"]
        .as_array()
        .expect("members")
        .iter()
        .filter_map(|m| m["@odata.id"].as_str().map(str::to_owned))
        .collect();
    MACHINES
        .iter()
        .map(|(name, ..)| {
            paths
                .iter()
                .find(|p| redfish(srv, base, p).expect("system")["Name"].as_str() == Some(name))
                .cloned()
                .unwrap_or_else(|| panic!("sushy has no system {name}: {paths:?}"))
        })
        .collect()
}

const UDHCPC_SCRIPT: &str =
    r#"case "$1" in bound|renew) ip addr replace "$ip/$mask" dev "$interface" ;; esac"#;

/// Plays one machine: waits for its BMC to be told to network-boot and power on, then
/// boots through the fabric like firmware and iPXE would. Returns how many times the
/// admission gate told it to wait.
fn machine(
    client: &Netns,
    srv: &Netns,
    sushy: &str,
    system: &str,
    mac: &str,
    script: &Path,
    together: &std::sync::Barrier,
) -> Result<u32, String> {
    let deadline = Instant::now() + BOOT_BOUND;
    let powered = (|| loop {
        let s = redfish(srv, sushy, system)?;
        if s["Boot"]["BootSourceOverrideTarget"] == "Pxe" && s["PowerState"] == "On" {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{system} was never set to PXE and powered on: {s}"));
        }
        std::thread::sleep(Duration::from_millis(300));
    })();
    // sushy's fake driver powers machines on 1-11 s after the reset; real racks power on
    // together, which is what the gate is for. Every machine arrives here, failed or not.
    together.wait();
    powered?;
    run(client
        .command("udhcpc")
        .args(["-f", "-q", "-n", "-i", "c0", "-t", "10", "-T", "1", "-s"])
        .arg(script))
    .map_err(|e| format!("udhcpc: {e}"))?;
    let curl = |args: &[&str]| -> Result<String, String> {
        run(client
            .command("curl")
            .args(["-sS", "--fail", "--max-time", "30"])
            .args(args))
        .map_err(|e| e.to_string())
    };
    let mut waits = 0;
    let ipxe = loop {
        let s = curl(&[&format!("http://10.77.0.1/boot.ipxe?mac={mac}")])?;
        if !s.contains("waits for a download slot") {
            break s;
        }
        if Instant::now() > deadline {
            return Err("held at the gate until the bound".into());
        }
        waits += 1;
        // What the script says: sleep, then ask again.
        std::thread::sleep(Duration::from_secs(1));
    };
    let urls: Vec<&str> = ipxe
        .lines()
        .filter(|l| l.starts_with("kernel ") || l.starts_with("initrd "))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
        .collect();
    if urls.len() != 2 {
        return Err(format!("unexpected script:\n{ipxe}"));
    }
    for url in urls {
        // 4 MiB/s: each machine's download takes about two seconds, long enough for the
        // others to reach the gate meanwhile.
        curl(&["--limit-rate", "4M", "-o", "/dev/null", url])?;
    }
    curl(&["-X", "POST", "http://10.77.0.1/booted"])?;
    Ok(waits)
}

fn port() -> u16 {
    20000 + ((std::process::id() + 7) % 20000) as u16
}

fn reboot_cli(srv: &Netns, daemon: &Daemon, args: &[&str]) -> std::process::Output {
    srv.command(bootfabric_bin())
        .arg("reboot")
        .args(args)
        .args(["--admin", &daemon.admin.to_string()])
        .output()
        .expect("bootfabric reboot")
}

#[test]
fn a_rack_reboots_one_slot_at_a_time_and_failing_bmcs_are_isolated() {
    let t = "a_rack_reboots_one_slot_at_a_time_and_failing_bmcs_are_isolated";
    if !require_root(t) || !require_programs(t, &["sushy-emulator", "udhcpc", "curl"]) {
        return;
    }
    let dir = TempDir::new().expect("dir");
    let images = dir.path.join("images");
    std::fs::create_dir_all(images.join("linux")).expect("images");
    // Larger than the socket buffers, so that the server's sends, and the slot, last until
    // the machine has taken most of the file.
    std::fs::write(images.join("linux/vmlinuz"), content(6 << 20, 1)).expect("kernel");
    std::fs::write(images.join("linux/initrd.img"), content(2 << 20, 2)).expect("initrd");

    let srv = Netns::new("srv").expect("netns");
    srv.ip(&["link", "set", "lo", "up"]).expect("lo");
    let mut bridge = Bridge::new().expect("bridge");
    bridge.plug(&srv, "fabric0", "10.77.0.1/24").expect("plug");
    let clients: Vec<Netns> = MACHINES
        .iter()
        .map(|(_, _, _, mac, _)| {
            let ns = Netns::new("cli").expect("netns");
            bridge.plug(&ns, "c0", "").expect("plug");
            ns.ip(&["link", "set", "c0", "address", mac]).expect("mac");
            ns
        })
        .collect();

    let systems: Vec<FakeSystem> = MACHINES
        .iter()
        .map(|(name, uuid, power, mac, _)| FakeSystem {
            name,
            uuid,
            power,
            mac,
        })
        .collect();
    let sushy = Sushy::start(&srv, &dir.path, port(), &systems, (USER, PASSWORD), None);
    let paths = system_paths(&srv, &sushy.url);
    // A BMC that accepts connections and never answers, and one that refuses them.
    let hung: TcpListener = srv
        .run(|| TcpListener::bind("127.0.0.1:0").expect("bind"))
        .expect("namespace");
    let hung_url = format!("http://{}", hung.local_addr().expect("addr"));
    let refused_url = {
        let l: TcpListener = srv
            .run(|| TcpListener::bind("127.0.0.1:0").expect("bind"))
            .expect("namespace");
        format!("http://{}", l.local_addr().expect("addr"))
    };
    let inv = inventory(&sushy.url, &paths, &hung_url, &refused_url);
    let mut daemon = Daemon::start(
        &srv,
        &config(&images),
        &[("hosts.toml", &inv), ("bmc.pass", &format!("{PASSWORD}\n"))],
    )
    .expect("daemon");

    // The plan first: it touches no BMC.
    let plan = reboot_cli(&srv, &daemon, &["--all", "--dry-run"]);
    let plan_text = String::from_utf8_lossy(&plan.stdout);
    assert!(plan.status.success(), "{plan:?}");
    assert!(
        plan_text.contains("dry run: no BMC was touched"),
        "{plan_text}"
    );
    assert!(plan_text.contains("slots 1"), "{plan_text}");
    for name in ["node01", "node02", "node03", "hung01", "refused01"] {
        assert!(plan_text.contains(name), "{plan_text}");
    }
    for p in &paths {
        let s = redfish(&srv, &sushy.url, p).expect("system");
        assert_ne!(s["Boot"]["BootSourceOverrideTarget"], "Pxe", "{s}");
    }
    // Bad selections are refused with the reason.
    let bad = reboot_cli(&srv, &daemon, &["--host", "nosuch"]);
    assert_eq!(bad.status.code(), Some(2), "{bad:?}");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no host named \"nosuch\""));

    // The machines, each in its own namespace, waiting for their BMC.
    let script = dir.path.join("udhcpc.sh");
    std::fs::write(&script, format!("#!/bin/sh\n{UDHCPC_SCRIPT}\n")).expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let started = Instant::now();
    let together = std::sync::Barrier::new(MACHINES.len());
    let results: Vec<Result<u32, String>> = std::thread::scope(|scope| {
        let handles: Vec<_> = clients
            .iter()
            .zip(&paths)
            .zip(MACHINES.iter())
            .map(|((ns, path), (_, _, _, mac, _))| {
                let (srv, url, script) = (&srv, sushy.url.as_str(), script.as_path());
                let together = &together;
                scope.spawn(move || machine(ns, srv, url, path, mac, script, together))
            })
            .collect();
        let cli = reboot_cli(&srv, &daemon, &["--all"]);
        let out = String::from_utf8_lossy(&cli.stdout).to_string();
        let err = String::from_utf8_lossy(&cli.stderr).to_string();
        assert_eq!(cli.status.code(), Some(1), "two hosts fail:\n{out}\n{err}");
        eprintln!("{err}{out}");
        check_report(&out, &daemon);
        handles
            .into_iter()
            .map(|h| h.join().expect("machine thread"))
            .collect()
    });
    let waits: u32 = results
        .into_iter()
        .map(|r| r.expect("machine booted"))
        .sum();
    assert!(
        waits > 0,
        "with one slot, machines that came up together must have waited at the gate"
    );
    eprintln!(
        "{t}: done in {:.1} s, {waits} gate waits",
        started.elapsed().as_secs_f64()
    );

    // The last run's report stays available.
    let status = reboot_cli(&srv, &daemon, &["--status"]);
    assert_eq!(status.status.code(), Some(1), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("booted 3, failed 2"));

    // The ledger has each machine's timeline in order, and the metrics the counts.
    for (name, _, _, mac, _) in MACHINES {
        let (_, tl) =
            http_get(&srv, daemon.admin, &format!("/api/timeline?mac={mac}")).expect("timeline");
        let order = ["bmc_reset", "dhcp_offer", "admitted", "http_sent", "booted"];
        let mut from = 0;
        for phase in order {
            let at = tl[from..]
                .find(&format!("\"phase\":\"{phase}\""))
                .unwrap_or_else(|| panic!("{name}: no {phase} after the previous phase in {tl}"));
            from += at;
        }
    }
    let (_, hung_tl) =
        http_get(&srv, daemon.admin, "/api/timeline?mac=52:54:00:de:ad:01").expect("timeline");
    assert_eq!(hung_tl.matches("bmc_failed").count(), 3, "{hung_tl}");
    let (_, m) = http_get(&srv, daemon.admin, "/metrics").expect("metrics");
    let metric = |name: &str, labels: &[(&str, &str)]| sample(&m, name, labels).unwrap_or(-1.0);
    assert_eq!(
        metric("bootfabric_reboot_hosts", &[("phase", "booted")]),
        3.0
    );
    assert_eq!(
        metric("bootfabric_reboot_hosts", &[("phase", "failed")]),
        2.0
    );
    assert_eq!(
        metric("bootfabric_reboot_resets_total", &[("outcome", "accepted")]),
        3.0
    );
    assert_eq!(
        metric("bootfabric_reboot_resets_total", &[("outcome", "failed")]),
        6.0
    );
    assert_eq!(
        metric("bootfabric_reboot_bmc_operations_in_flight", &[]),
        0.0
    );
    assert!(
        metric(
            "bootfabric_http_requests_total",
            &[("route", "gate"), ("code", "200")]
        ) >= 1.0,
        "{m}"
    );

    // Ctrl-C cancels a run: no further resets, and the hosts already reset leave the gate.
    let mut cli = srv
        .command(bootfabric_bin())
        .args(["reboot", "--host", "node01,node02", "--admin"])
        .arg(daemon.admin.to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("bootfabric reboot");
    let running = wait_for(Duration::from_secs(20), || {
        let (_, s) = http_get(&srv, daemon.admin, "/api/reboot").ok()?;
        (s.contains("\"id\":2")
            && (s.contains("\"phase\":\"resetting\"") || s.contains("\"phase\":\"posting\"")))
        .then_some(())
    });
    assert!(running.is_some(), "the second run did not start");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(cli.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .expect("SIGINT");
    let ended = wait_for(Duration::from_secs(30), || cli.try_wait().ok().flatten());
    if ended.is_none() {
        let _ = cli.kill();
    }
    let out = cli.wait_with_output().expect("reboot output");
    let report = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(130), "{report}");
    assert!(report.contains("Reboot report (cancelled)"), "{report}");
    let (_, script) = http_get(
        &srv,
        "10.77.0.1:80".parse().expect("addr"),
        "/boot.ipxe?mac=52:54:00:b0:0f:01",
    )
    .expect("script");
    assert!(
        !script.contains("waits for a download slot"),
        "a cancelled run left the host at the gate:\n{script}"
    );

    // A restart keeps the last run's report (the status until the next run) and the boots
    // of the first run in the history; run numbers go on from it.
    daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("stop");
    daemon.restart().expect("restart");
    let (code, status) = http_get(&srv, daemon.admin, "/api/reboot").expect("status");
    assert_eq!(code, 200, "{status}");
    let status: Value = serde_json::from_str(&status).expect("status json");
    assert_eq!(
        (status["id"].as_u64(), status["state"].as_str()),
        (Some(2), Some("cancelled")),
        "{status}"
    );
    let history = daemon
        .cli(&["history", "--host", "node01", "--output", "json"])
        .expect("history");
    let history: Value = serde_json::from_str(&history).expect("history json");
    assert!(
        history["boots"]
            .as_array()
            .is_some_and(|b| b.iter().any(|b| b["ending"] == "booted")),
        "{history}"
    );
    drop(hung);
}

/// The CLI's report: three booted, two failed with their reasons, downloads never
/// overlapping (one slot), and the failing BMCs did not hold the others up.
fn check_report(out: &str, daemon: &Daemon) {
    let row = |name: &str| -> Vec<String> {
        out.lines()
            .find(|l| l.trim_start().starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("no row for {name}:\n{out}\n{}", daemon.log()))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    let num = |v: &str| v.parse::<f64>().ok();
    let mut windows: Vec<(f64, f64)> = Vec::new();
    let mut accepted = Vec::new();
    for (name, ..) in MACHINES {
        let r = row(name);
        assert_eq!(
            r.last().map(String::as_str),
            Some("booted"),
            "{name}:\n{out}"
        );
        // HOST RACK RESET ACCEPT DHCP LOADER ADMITTED KERNEL FETCHED BOOTED PHASE
        accepted.push(num(&r[3]).unwrap_or_else(|| panic!("{name} accepted:\n{out}")));
        let admitted = num(&r[6]).unwrap_or_else(|| panic!("{name} admitted:\n{out}"));
        let kernel = num(&r[7]).unwrap_or_else(|| panic!("{name} kernel:\n{out}"));
        let fetched = num(&r[8]).unwrap_or_else(|| panic!("{name} fetched:\n{out}"));
        assert!(admitted <= kernel && kernel <= fetched, "{name}:\n{out}");
        windows.push((admitted, fetched));
    }
    windows.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in windows.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "two machines downloaded at once with one slot: {windows:?}\n{out}"
        );
    }
    for (name, why) in [
        ("hung01", "no answer within"),
        ("refused01", "cannot connect"),
    ] {
        assert_eq!(
            row(name).last().map(String::as_str),
            Some("failed"),
            "{out}"
        );
        let failure = out
            .lines()
            .find(|l| l.contains(name) && l.contains("attempt(s)"))
            .unwrap_or_else(|| panic!("no failure line for {name}:\n{out}"));
        assert!(
            failure.contains("after 3 attempt(s)") && failure.contains(why),
            "{failure}"
        );
    }
    // The hanging BMC took its three attempts of two timed-out requests each; meanwhile every
    // other machine's reset went through (the runner never waits on a BMC).
    let hung_failed = out
        .lines()
        .find(|l| l.contains("hung01") && l.contains("attempt(s)"))
        .and_then(|l| l.split(" at ").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(num)
        .unwrap_or_else(|| panic!("no failure time for hung01:\n{out}"));
    assert!(
        accepted.iter().all(|a| *a < hung_failed),
        "resets waited for the hanging BMC: accepted at {accepted:?}, hung01 failed at {hung_failed}"
    );
    assert!(out.contains("makespan"), "{out}");
    assert!(out.contains("booted 3, failed 2"), "{out}");
    assert!(
        !out.contains(PASSWORD),
        "the password must never be printed"
    );
}
