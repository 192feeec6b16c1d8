//! Storage never blocks the network, and the ledger cannot be flooded (issue 14, items 6
//! and 9), tested as an attacker and a failing disk would do it, from a client namespace:
//!
//! - 100,000 DISCOVERs with random MACs leave a reserved host's next exchange in its
//!   timeline, and the evictions they cause are counted;
//! - an image store whose reads and opens never answer (a FUSE file system served by
//!   `hung_store`, mounted inside `tftp.root` and `http.root`) holds every file-serving
//!   thread, and DHCP still leases and `/metrics` still answers.

use std::{
    collections::BTreeSet,
    ffi::CString,
    io::{BufRead as _, BufReader},
    net::UdpSocket,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use bootfabric_lab::{
    http_get, metrics, packets, require, require_programs, require_root, sample, wait_for, Daemon,
    KillOnDrop, Netns, PairLab, Rng, TempDir,
};

const INVENTORY: &str = r#"
[profiles.installer]
kernel = "debian/linux"

[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.11"
profile = "installer"
"#;

const RESERVED_MAC: &str = "52:54:00:b0:0f:01";

/// How long a real client may take to get its lease (a bound on a wait, not a timing check).
const LEASE_BOUND: Duration = Duration::from_secs(60);

/// A udhcpc script that only records what it is told (one line per event) and configures
/// nothing, so the client interface keeps the address other clients in the test use.
fn recorder(dir: &TempDir) -> PathBuf {
    let path = dir.path.join("udhcpc.sh");
    let out = dir.path.join("events");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\necho \"$1 ip=$ip serverid=$serverid\" >> {}\nexit 0\n",
            out.display()
        ),
    )
    .expect("script");
    let mut perm = std::fs::metadata(&path).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&path, perm).expect("chmod");
    path
}

/// Runs udhcpc on `iface` of `ns` until it reports `bound`; the bound line, or what it said.
fn udhcpc_lease(ns: &Netns, iface: &str) -> Result<String, String> {
    let dir = TempDir::new()?;
    let script = recorder(&dir);
    let _client = KillOnDrop(
        ns.command("udhcpc")
            .args(["-f", "-i", iface, "-t", "20", "-T", "2", "-s"])
            .arg(&script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("udhcpc: {e}"))?,
    );
    let events = || std::fs::read_to_string(dir.path.join("events")).unwrap_or_default();
    wait_for(LEASE_BOUND, || {
        events()
            .lines()
            .find(|l| l.starts_with("bound"))
            .map(str::to_owned)
    })
    .ok_or_else(|| {
        format!(
            "udhcpc got no lease within {LEASE_BOUND:?}; its events: {:?}",
            events()
        )
    })
}

// ---------------------------------------------------------------------------------------
// The ledger under a random-MAC flood.

/// The DISCOVERs of the flood.
const FLOOD: u32 = 100_000;
/// DISCOVERs in flight (sent, not yet offered): enough to keep the daemon busy, few enough
/// that the offers fit in the client socket's receive buffer.
const WINDOW: u32 = 64;
/// Bound on the whole flood; it stops there with what it has sent.
const FLOOD_BOUND: Duration = Duration::from_secs(300);
/// The ledger's default room for MACs outside the inventory (and the unchanged code's
/// cap on all MACs).
const OTHER_HOSTS: f64 = 65_536.0;

/// What the flood did, seen from the attacker's side.
#[derive(Debug)]
struct Flooded {
    sent: u32,
    offered: u32,
    first: [u8; 6],
    last_offered: [u8; 6],
    elapsed: Duration,
}

fn mac_text(m: [u8; 6]) -> String {
    format!(
        "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        m[0], m[1], m[2], m[3], m[4], m[5]
    )
}

/// Sends `FLOOD` DISCOVERs with random (locally administered, unicast) MACs from port 68,
/// at most `WINDOW` unanswered at a time; a window that gets no answer for a second is
/// given up and the flood goes on. Runs inside the client namespace.
fn flood() -> std::io::Result<Flooded> {
    let sock = UdpSocket::bind("0.0.0.0:68")?;
    sock.set_broadcast(true)?;
    sock.set_read_timeout(Some(Duration::from_secs(1)))?;
    let mut rng = Rng(0x5eed_f100d);
    let macs: Vec<[u8; 6]> = (0..FLOOD)
        .map(|_| {
            let b = rng.next_u64().to_be_bytes();
            [(b[0] & 0xfe) | 0x02, b[1], b[2], b[3], b[4], b[5]]
        })
        .collect();
    const XID: u32 = 0x4000_0000;
    let started = Instant::now();
    let (mut sent, mut answered_up_to, mut offered) = (0u32, 0u32, 0u32);
    let mut last_offered = macs[0];
    let mut buf = [0u8; 1500];
    while answered_up_to < FLOOD && started.elapsed() < FLOOD_BOUND {
        while sent < FLOOD && sent - answered_up_to < WINDOW {
            let p = packets::dhcp_discover(XID + sent, macs[sent as usize]);
            sock.send_to(&p, "255.255.255.255:67")?;
            sent += 1;
        }
        match sock.recv_from(&mut buf) {
            Ok((n, _)) if n >= 34 && buf[0] == 2 => {
                let xid = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                let i = xid.wrapping_sub(XID);
                if i < sent {
                    offered += 1;
                    answered_up_to = answered_up_to.max(i + 1);
                    last_offered = macs[i as usize];
                }
            }
            Ok(_) => {}
            // Nothing for a second: what is in flight is lost; go on with the next.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => answered_up_to = sent,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => answered_up_to = sent,
            Err(e) => return Err(e),
        }
    }
    Ok(Flooded {
        sent,
        offered,
        first: macs[0],
        last_offered,
        elapsed: started.elapsed(),
    })
}

fn flood_config() -> String {
    // A /10 whose pool holds every flooded MAC's offer (held 60 s each), so that every
    // DISCOVER is answered and recorded, as the attacker wants.
    config("10.64.0.0/10", "10.100.0.1-10.101.255.254", "")
}

/// The config both daemons of this file run on: one subnet `cidr` on `fabric0` with the pool
/// `pool`, then `rest` (more sections).
fn config(cidr: &str, pool: &str, rest: &str) -> String {
    format!(
        r#"
[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[dhcp]
rate_limit = 1000
[dhcp.options]
lease_time = 600
[[dhcp.subnets]]
cidr = "{cidr}"
interface = "fabric0"
pools = ["{pool}"]
{rest}"#
    )
}

#[test]
fn random_mac_flood_leaves_a_reserved_hosts_exchange_in_its_timeline() {
    let t = "random_mac_flood_leaves_a_reserved_hosts_exchange_in_its_timeline";
    if !require_root(t) || !require_programs(t, &["udhcpc"]) {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let daemon =
        Daemon::start(&lab.server, &flood_config(), &[("hosts.toml", INVENTORY)]).expect("daemon");

    let f = lab
        .client
        .run(flood)
        .expect("client namespace")
        .expect("flood");
    let rate = f64::from(f.offered) / f.elapsed.as_secs_f64();
    eprintln!(
        "flood: {} DISCOVERs sent, {} offered, in {:.1} s ({rate:.0} offers/s)",
        f.sent,
        f.offered,
        f.elapsed.as_secs_f64()
    );
    let status = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()));
    let memory: Vec<String> = status
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect();
    eprintln!("daemon memory after the flood: {memory:?}");
    assert!(
        f64::from(f.offered) > OTHER_HOSTS,
        "the flood must outgrow the ledger to test it: only {} of {} DISCOVERs were offered \
         in {:?}\n{}",
        f.offered,
        f.sent,
        f.elapsed,
        daemon.log()
    );

    // The reserved host boots now: a real client from its own MAC.
    for args in [
        &["link", "set", "client0", "down"][..],
        &["link", "set", "client0", "address", RESERVED_MAC],
        &["link", "set", "client0", "up"],
    ] {
        lab.client.ip(args).expect("client link");
    }
    let bound = udhcpc_lease(&lab.client, "client0").unwrap_or_else(|e| panic!("{e}"));
    assert!(bound.contains("ip=10.77.0.11 "), "{bound}");

    let timeline = |mac: &str| {
        http_get(
            &lab.server,
            daemon.admin,
            &format!("/api/timeline?mac={mac}"),
        )
        .map(|(_, body)| body)
        .unwrap_or_else(|e| panic!("timeline of {mac}: {e}"))
    };
    let seen = wait_for(Duration::from_secs(30), || {
        let t = timeline(RESERVED_MAC);
        t.contains("\"dhcp_ack\"").then_some(t)
    });
    let text = metrics(&lab.server, &daemon).expect("metrics");
    let offers = sample(
        &text,
        "bootfabric_ledger_events_total",
        &[("phase", "dhcp_offer")],
    );
    assert!(
        seen.is_some(),
        "the reserved host's exchange is not in its timeline after {} random MACs were \
         offered (the ledger recorded {offers:?} offers): {}",
        f.offered,
        timeline(RESERVED_MAC)
    );

    // Unknown MACs: the newest stay, the oldest went, and every eviction was counted.
    let evictions = sample(&text, "bootfabric_ledger_evictions_total", &[]).unwrap_or(0.0);
    assert!(
        evictions >= f64::from(f.offered) - OTHER_HOSTS,
        "{} offered, {evictions} evictions counted",
        f.offered
    );
    assert!(
        !timeline(&mac_text(f.last_offered)).contains("\"events\":[]"),
        "the last flooded MAC (the most recently seen) is missing: {}",
        timeline(&mac_text(f.last_offered))
    );
    assert!(
        timeline(&mac_text(f.first)).contains("\"events\":[]"),
        "the first flooded MAC (the least recently seen) was not evicted: {}",
        timeline(&mac_text(f.first))
    );
    assert_eq!(
        sample(&text, "bootfabric_ledger_hosts", &[("class", "other")]),
        Some(OTHER_HOSTS),
        "{text}"
    );
}

// ---------------------------------------------------------------------------------------
// A hung image store.

/// The `hung_store` FUSE server, mounted at `mountpoint` for as long as this lives.
struct HungStore {
    child: Child,
    mountpoint: PathBuf,
    lines: Arc<Mutex<Vec<String>>>,
}

impl HungStore {
    /// Mounts a store at `at` (created) and waits for the server's `mounted` line.
    fn mount(at: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(at).map_err(|e| format!("{}: {e}", at.display()))?;
        let mut child = Command::new(env!("CARGO_BIN_EXE_hung_store"))
            .arg(at)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("hung_store: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let store = HungStore {
            child,
            mountpoint: at.to_owned(),
            lines,
        };
        let up = wait_for(Duration::from_secs(30), || {
            store.lines().iter().any(|l| l == "mounted").then_some(())
        });
        if up.is_none() {
            return Err(format!("hung_store did not mount {}", at.display()));
        }
        Ok(store)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Files with a request held: each is a caller (a thread of the daemon) stuck in a
    /// system call.
    fn held_files(&self) -> BTreeSet<String> {
        self.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("held "))
            .filter_map(|l| l.split_whitespace().nth(1).map(str::to_owned))
            .collect()
    }
}

impl Drop for HungStore {
    fn drop(&mut self) {
        // Killing the server closes its /dev/fuse descriptor: the kernel aborts the
        // connection and every call still waiting on the store fails with ENOTCONN, so
        // nothing hangs at teardown (this machine has no fusectl mounted to write `abort`
        // to; the descriptor's close does the same). Then the mount point goes, lazily.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(path) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
            // SAFETY: a valid C string for the duration of the call.
            let _ = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

/// The daemon's config with `tftp.root` (when `tftp`) and `http.root` at `root`, HTTP on
/// the epoll transport (where routes run on tokio; io_uring has threads of its own).
fn hung_config(root: &Path, tftp: bool, http_extra: &str) -> String {
    let tftp = if tftp {
        format!(
            "[tftp]\nroot = \"{}\"\ntransfer_ports = \"50000-50099\"\n",
            root.display()
        )
    } else {
        String::new()
    };
    let http = format!(
        "[http]\nroot = \"{}\"\nbackend = \"epoll\"\n{http_extra}",
        root.display()
    );
    config("10.77.0.0/24", "10.77.0.100-10.77.0.199", &(tftp + &http))
}

/// The pieces of a hung-store test, in the order they must be torn down (fields drop in
/// declaration order): the clients, then the store, whose end aborts the FUSE connection and
/// so frees the daemon's threads stuck on it, then the daemon, which cannot exit before
/// (a FUSE request already read by its server waits uninterruptibly, even through SIGKILL).
struct HungLab {
    clients: Vec<KillOnDrop>,
    store: HungStore,
    daemon: Daemon,
    dir: TempDir,
    lab: PairLab,
}

impl HungLab {
    /// Skips (or fails under `BOOTFABRIC_REQUIRE_LAB=1`) without root, the clients or FUSE;
    /// else mounts the store at `<root>/store` and starts the daemon on `root`.
    fn start(t: &str, tftp: bool) -> Option<Self> {
        Self::start_with(t, tftp, |_| Some(String::new()))
    }

    /// [`HungLab::start`], with `http_extra(dir)` added to `[http]` (`None` skips the test).
    fn start_with(
        t: &str,
        tftp: bool,
        http_extra: impl FnOnce(&Path) -> Option<String>,
    ) -> Option<Self> {
        if !require_root(t)
            || !require_programs(t, &["udhcpc", "tftp", "curl"])
            || !require(
                Path::new("/dev/fuse").exists(),
                t,
                "/dev/fuse is missing (the fuse module)",
            )
        {
            return None;
        }
        let lab = PairLab::new().expect("lab");
        let dir = TempDir::new().expect("dir");
        let http_extra = http_extra(&dir.path)?;
        let root = dir.path.join("images");
        // Mounted before the daemon starts: `ip netns exec` gives the daemon a copy of the
        // mount table as it is then.
        let store = HungStore::mount(&root.join("store")).expect("hung store");
        std::fs::write(root.join("ok.txt"), "served from a healthy disk\n").expect("file");
        let daemon = Daemon::start(
            &lab.server,
            &hung_config(&root, tftp, &http_extra),
            &[("hosts.toml", INVENTORY)],
        )
        .expect("daemon");
        Some(HungLab {
            clients: Vec::new(),
            store,
            daemon,
            dir,
            lab,
        })
    }

    /// Starts tftp-hpa fetching `store/<name>`.
    fn tftp(&mut self, name: &str) {
        let tftp = self
            .lab
            .client
            .tftp_get(&format!("store/{name}"), &self.dir.path.join(name), None)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("tftp");
        self.clients.push(KillOnDrop(tftp));
    }

    /// Starts curl fetching `/store/<name>`.
    fn curl(&mut self, name: &str) {
        self.curl_url(&format!("http://10.77.0.1/store/{name}"));
    }

    /// Starts curl fetching `url` (certificates not checked).
    fn curl_url(&mut self, url: &str) {
        let curl = self
            .lab
            .client
            .command("curl")
            .args(["-s", "-k", "-o", "/dev/null", "--max-time", "600"])
            .arg(url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("curl");
        self.clients.push(KillOnDrop(curl));
    }

    /// Waits until the store holds a request: a thread of the daemon is stuck for good.
    fn wait_stuck(&self) -> BTreeSet<String> {
        let stuck = wait_for(Duration::from_secs(60), || {
            let held = self.store.held_files();
            (!held.is_empty()).then_some(held)
        })
        .unwrap_or_else(|| {
            panic!(
                "the store held no request after 60 s\n{}",
                self.daemon.log()
            )
        });
        eprintln!("held by the store: {stuck:?}");
        stuck
    }
}

/// More clients of each kind than the machine has cores (the file runtime's workers).
fn clients_per_kind() -> usize {
    std::thread::available_parallelism().map_or(2, |n| n.get()) + 1
}

#[test]
fn a_hung_image_store_leaves_dhcp_and_metrics_answering() {
    let t = "a_hung_image_store_leaves_dhcp_and_metrics_answering";
    let Some(mut l) = HungLab::start(t, true) else {
        return;
    };
    // TFTP transfers whose first read hangs, HTTP downloads whose read or open hangs. One
    // thread stuck is enough to wait for: a tokio worker blocked in a system call stalls its
    // whole runtime, not a share of it (the I/O driver is polled by a parked worker, and the
    // others are not woken to take it over), as the unchanged daemon shows.
    for i in 0..clients_per_kind() {
        l.tftp(&format!("read-{i}.img"));
        l.curl(&format!("read-{}.img", 100 + i));
        l.curl(&format!("open-{}.img", 100 + i));
    }
    let stuck = l.wait_stuck();

    // The threads that served those files are stuck now, for good. The network must not
    // notice.
    let t0 = Instant::now();
    let scraped = metrics(&l.lab.server, &l.daemon);
    let scrape_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let leased = udhcpc_lease(&l.lab.client, "client0");
    let lease_s = t0.elapsed().as_secs_f64();
    eprintln!("with the store hung: /metrics in {scrape_s:.2} s, a DHCP lease in {lease_s:.2} s");
    assert!(
        scraped.is_ok() && leased.is_ok(),
        "with threads of the daemon stuck on the store ({} requests held: {stuck:?}):\n\
         /metrics: {:?}\nDHCP: {:?}\n{}",
        stuck.len(),
        scraped.as_ref().map(|t| t.len()),
        leased,
        l.daemon.log()
    );
    assert!(
        scraped.is_ok_and(|t| t.contains("bootfabric_service_up{service=\"dhcp\"} 1")),
        "metrics incomplete"
    );
    let text = metrics(&l.lab.server, &l.daemon).expect("metrics after the lease");
    let acks = sample(
        &text,
        "bootfabric_dhcp_packets_total",
        &[("type", "request"), ("outcome", "ack")],
    );
    assert!(acks.is_some_and(|n| n >= 1.0), "no ACK counted: {acks:?}");

    // SIGTERM still takes the daemon to its exit although some of its threads will not
    // come back until the store answers (or is aborted, below).
    let pid = nix::unistd::Pid::from_raw(l.daemon.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).expect("SIGTERM");
    let stopped = wait_for(Duration::from_secs(60), || {
        let log = l.daemon.log();
        log.lines()
            .find(|line| line.contains("bootfabric stopped"))
            .map(str::to_owned)
    });
    assert!(
        stopped.is_some(),
        "SIGTERM did not stop the daemon with the store hung:\n{}",
        l.daemon.log()
    );
    drop(l.clients);
    drop(l.store);
    let status = l
        .daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("exited once the store was aborted: {status}");
}

#[test]
fn http_epoll_serves_a_healthy_file_while_downloads_hang_on_the_store() {
    let t = "http_epoll_serves_a_healthy_file_while_downloads_hang_on_the_store";
    let Some(mut l) = HungLab::start(t, false) else {
        return;
    };
    for i in 0..clients_per_kind() {
        l.curl(&format!("read-{i}.img"));
        l.curl(&format!("open-{i}.img"));
    }
    let stuck = l.wait_stuck();
    let got = http_get(
        &l.lab.client,
        "10.77.0.1:80".parse().expect("addr"),
        "/ok.txt",
    );
    assert!(
        matches!(&got, Ok((200, body)) if body == "served from a healthy disk\n"),
        "with {} downloads stuck on the store ({stuck:?}), /ok.txt: {got:?}\n{}",
        stuck.len(),
        l.daemon.log()
    );
}

/// HTTPS routes requests on its own runtime's workers (`services/http/tls.rs`). Downloads
/// stuck on a hung store there, more of them than it has workers, stall HTTPS only: TFTP, on
/// the file runtime, still serves a healthy file. Routed on the file runtime's workers
/// instead, they would stall TFTP with them.
#[test]
fn https_stuck_on_a_hung_store_leaves_tftp_serving() {
    use bootfabric_lab::pki::{issue, Leaf};
    let t = "https_stuck_on_a_hung_store_leaves_tftp_serving";
    if !require_programs(t, &["openssl", "tftp"]) {
        return;
    }
    let Some(mut l) = HungLab::start_with(t, true, |dir| {
        let pki = dir.join("pki");
        std::fs::create_dir_all(&pki).expect("pki");
        issue(
            &pki,
            &[Leaf {
                name: "server",
                cn: "bootfabric-https",
                ext: "subjectAltName = IP:10.77.0.1",
            }],
        )
        .expect("openssl");
        Some(format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_port = 443\n",
            pki.join("server.pem").display(),
            pki.join("server.key").display()
        ))
    }) else {
        return;
    };
    for i in 0..clients_per_kind() {
        l.curl_url(&format!("https://10.77.0.1/store/open-{i}.img"));
        l.curl_url(&format!("https://10.77.0.1/store/read-{i}.img"));
    }
    let stuck = l.wait_stuck();
    let out = l.dir.path.join("ok-by-tftp.txt");
    let got = l
        .lab
        .client
        .tftp_get("ok.txt", &out, Some(60))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("tftp");
    let body = std::fs::read_to_string(&out).unwrap_or_default();
    assert!(
        got.success() && body == "served from a healthy disk\n",
        "with {} HTTPS downloads stuck on the store ({stuck:?}), TFTP of ok.txt: {got}, {body:?}\n{}",
        stuck.len(),
        l.daemon.log()
    );
}
