//! What an operator relies on around the protocols, seen from outside the daemon:
//!
//! - the boot history: a machine boots with real clients (udhcpc for DHCP, curl for the
//!   script, the kernel and the installed system's callback); after the daemon restarts,
//!   `bootfabric history` and the admin API's timeline still show that boot, and the next
//!   boot is added to it;
//! - the logs: with `daemon.log_format = "json"` every line the daemon writes is a JSON
//!   object, with no terminal colour codes, and each exchange (DHCP ACK, download, boot) has
//!   its own line naming the MAC, address, xid, interface and path;
//! - the service manager: with `NOTIFY_SOCKET` and `WATCHDOG_USEC` set, as systemd sets them
//!   for `Type=notify` and `WatchdogSec=`, the daemon says READY=1 once it listens,
//!   RELOADING=1 (with MONOTONIC_USEC) then READY=1 around a SIGHUP reload, WATCHDOG=1
//!   while it runs and STOPPING=1 on SIGTERM; the socket here is the test's own.

use std::{
    os::unix::{fs::PermissionsExt as _, net::UnixDatagram},
    path::Path,
    time::Duration,
};

use bootfabric_lab::{
    http_get, require_programs, require_root, run, sample, wait_for, Daemon, PairLab, TempDir,
};

const MAC: &str = "52:54:00:0a:00:01";

const INVENTORY: &str = r#"
[profiles.installer]
kernel = "debian/linux"

[[hosts]]
name = "node01"
mac = "52:54:00:0a:00:01"
ip = "10.77.0.11"
profile = "installer"
model = "r650"
"#;

/// A bound on every wait (never a timing check).
const BOUND: Duration = Duration::from_secs(60);

fn config(images: &Path, extra_daemon: &str) -> String {
    format!(
        r#"
[daemon]
state_dir = "state"
inventory = "hosts.toml"
{extra_daemon}
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[xdp]
mode = "off"
[http]
root = "{}"
backend = "epoll"
[dhcp]
rate_limit = 1000
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
options = {{ router = "10.77.0.1" }}
"#,
        images.display()
    )
}

/// The lab: the daemon's namespace and a machine with node01's MAC and no address yet.
fn lab() -> (PairLab, TempDir) {
    let lab = PairLab::unaddressed_client("client0").expect("lab");
    lab.client
        .ip(&["link", "set", "client0", "address", MAC])
        .expect("mac");
    let dir = TempDir::new().expect("dir");
    std::fs::create_dir_all(dir.path.join("images/debian")).expect("images");
    std::fs::write(dir.path.join("images/debian/linux"), vec![7u8; 256 * 1024]).expect("kernel");
    (lab, dir)
}

/// One boot of node01 as its machine makes it: DHCP with udhcpc (its script puts the address
/// on the interface), then the iPXE script, the kernel and the installed system's callback
/// with curl.
fn boot(lab: &PairLab, dir: &TempDir) {
    let script = dir.path.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr replace \"$ip/24\" dev \"$interface\";; esac\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    run(lab
        .client
        .command("udhcpc")
        .args([
            "-f", "-q", "-n", "-t", "5", "-T", "2", "-i", "client0", "-s",
        ])
        .arg(&script))
    .expect("udhcpc gets node01's reservation");
    // Routes for broadcasts are not needed any more: the reservation is on the interface.
    for (path, method, code) in [
        ("/boot.ipxe", "GET", "200"),
        ("/debian/linux", "GET", "200"),
        ("/booted", "POST", "204"),
    ] {
        let out = run(lab
            .client
            .command("curl")
            .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .arg(format!("http://10.77.0.1{path}")))
        .expect("curl");
        assert_eq!(out.trim(), code, "{method} {path}");
    }
}

fn history(daemon: &Daemon) -> serde_json::Value {
    let out = daemon
        .cli(&["history", "--host", "node01", "--output", "json"])
        .expect("bootfabric history");
    serde_json::from_str(&out).expect("history json")
}

fn endings(h: &serde_json::Value) -> Vec<String> {
    h["boots"]
        .as_array()
        .expect("boots")
        .iter()
        .map(|b| b["ending"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[test]
fn boots_from_before_a_restart_stay_in_history_and_timeline_and_every_log_line_is_json() {
    let t = "boots_from_before_a_restart_stay_in_history_and_timeline_and_every_log_line_is_json";
    if !require_root(t) || !require_programs(t, &["udhcpc", "curl"]) {
        return;
    }
    let (lab, dir) = lab();
    let cfg = config(&dir.path.join("images"), "log_format = \"json\"\n");
    let mut daemon =
        Daemon::start(&lab.server, &cfg, &[("hosts.toml", INVENTORY)]).expect("daemon");
    boot(&lab, &dir);

    // The boot, from the history on disk, while the daemon runs.
    let h = wait_for(BOUND, || {
        let h = history(&daemon);
        (endings(&h) == ["booted"]).then_some(h)
    })
    .unwrap_or_else(|| panic!("one booted boot in history: {}", history(&daemon)));
    let boot0 = &h["boots"][0];
    assert_eq!(boot0["mac"], MAC);
    assert_eq!(boot0["ip"], "10.77.0.11");
    let phases: Vec<&str> = boot0["phases"]
        .as_array()
        .expect("phases")
        .iter()
        .filter_map(|p| p[0].as_str())
        .collect();
    assert_eq!(phases, ["dhcp", "script", "kernel", "booted"], "{h}");

    // The duration histogram counted the boot's end, under the host's profile and model.
    let text = bootfabric_lab::metrics(&lab.server, &daemon).expect("metrics");
    assert_eq!(
        sample(
            &text,
            "bootfabric_boot_duration_seconds_count",
            &[
                ("profile", "installer"),
                ("model", "r650"),
                ("phase", "booted")
            ]
        ),
        Some(1.0),
        "{text}"
    );

    // Every line is a JSON object; none carries a colour code; the exchanges have theirs.
    let log = daemon.log();
    assert!(!log.contains('\u{1b}'), "colour codes in the log:\n{log}");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let exchange = |f: &dyn Fn(&serde_json::Value) -> bool| {
        lines
            .iter()
            .find(|l| l["target"] == "bootfabric::exchange" && f(l))
            .cloned()
    };
    let ack = exchange(&|l| l["proto"] == "dhcp" && l["reply"] == "ack")
        .unwrap_or_else(|| panic!("no DHCP ACK line:\n{log}"));
    assert_eq!(ack["mac"], MAC);
    assert_eq!(ack["ip"], "10.77.0.11");
    assert_eq!(ack["iface"], "fabric0");
    assert_eq!(ack["path"], "userspace");
    assert_eq!(ack["level"], "INFO");
    assert!(
        ack["xid"]
            .as_str()
            .is_some_and(|x| x.starts_with("0x") && x.len() == 10),
        "{ack}"
    );
    let download = exchange(&|l| l["proto"] == "http" && l["path"] == "/debian/linux")
        .unwrap_or_else(|| panic!("no download line:\n{log}"));
    assert_eq!(download["bytes"], 256 * 1024);
    assert_eq!(download["outcome"], "completed");
    assert!(
        exchange(&|l| l["host"] == "node01"
            && l["mac"] == MAC
            && l["proto"] == "http"
            && l["message"].as_str().is_some_and(|m| m.ends_with("booted")))
        .is_some(),
        "no boot line:\n{log}"
    );

    // A restart: the history and the timeline keep the boot from before it.
    daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("stop");
    daemon.restart().expect("restart");
    assert_eq!(endings(&history(&daemon)), ["booted"]);
    assert!(
        daemon
            .log()
            .contains("events put back into the hosts' timelines"),
        "{}",
        daemon.log()
    );
    let (code, body) = http_get(
        &lab.server,
        daemon.admin,
        &format!("/api/timeline?mac={MAC}"),
    )
    .expect("timeline");
    assert_eq!(code, 200, "{body}");
    let timeline: serde_json::Value = serde_json::from_str(&body).expect("timeline json");
    let restored: Vec<&str> = timeline["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["phase"].as_str())
        .collect();
    assert_eq!(restored.last(), Some(&"booted"), "{body}");
    assert!(restored.contains(&"dhcp_ack"), "{body}");

    // The next boot joins the history after the first.
    boot(&lab, &dir);
    wait_for(BOUND, || {
        (endings(&history(&daemon)) == ["booted", "booted"]).then_some(())
    })
    .unwrap_or_else(|| panic!("two boots: {}", history(&daemon)));
    let table = daemon
        .cli(&["history", "--host", "node01"])
        .expect("history table");
    assert_eq!(
        table.lines().filter(|l| l.contains(" booted ")).count(),
        2,
        "{table}"
    );
    // --since after both boots: none.
    let later = daemon
        .cli(&["history", "--since", "2999-01-01T00:00:00Z"])
        .expect("history since");
    assert_eq!(later, "no boots in the history\n");
}

/// Reads the notifications that have arrived, each as its lines.
fn drain(sock: &UnixDatagram, got: &mut Vec<String>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = sock.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
}

fn wait_message(sock: &UnixDatagram, got: &mut Vec<String>, from: usize, want: &str) -> usize {
    wait_for(BOUND, || {
        drain(sock, got);
        got[from..]
            .iter()
            .position(|m| m.lines().any(|l| l == want))
            .map(|i| from + i)
    })
    .unwrap_or_else(|| panic!("no {want:?} after message {from}: {got:?}"))
}

#[test]
fn the_daemon_tells_its_service_manager_ready_reloading_watchdog_and_stopping() {
    let t = "the_daemon_tells_its_service_manager_ready_reloading_watchdog_and_stopping";
    if !require_root(t) {
        return;
    }
    let (lab, dir) = lab();
    let path = dir.path.join("notify.sock");
    let sock = UnixDatagram::bind(&path).expect("notify socket");
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    let cfg = config(&dir.path.join("images"), "");
    let socket = path.to_string_lossy().into_owned();
    let mut daemon = Daemon::start_with_env(
        &lab.server,
        &cfg,
        &[("hosts.toml", INVENTORY)],
        &[("NOTIFY_SOCKET", &socket), ("WATCHDOG_USEC", "400000")],
    )
    .expect("daemon");
    let mut got = Vec::new();
    let ready = wait_message(&sock, &mut got, 0, "READY=1");
    assert!(
        got[ready]
            .lines()
            .any(|l| l.starts_with("STATUS=serving generation")),
        "{got:?}"
    );
    // Keep-alives at half the interval.
    wait_message(&sock, &mut got, ready + 1, "WATCHDOG=1");

    daemon.reload("config reloaded").expect("reload");
    let reloading = wait_message(&sock, &mut got, ready + 1, "RELOADING=1");
    assert!(
        got[reloading]
            .lines()
            .any(|l| l.starts_with("MONOTONIC_USEC=")),
        "{got:?}"
    );
    wait_message(&sock, &mut got, reloading + 1, "READY=1");

    let before = got.len();
    let status = daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .expect("stop");
    assert!(status.success(), "{status}");
    wait_message(&sock, &mut got, before, "STOPPING=1");
}
