//! The network-namespace test lab.
//!
//! Every test that puts packets on a wire builds its own little network: uniquely named
//! namespaces ([`Netns`]) joined by veth pairs ([`veth`]) or a bridge ([`Bridge`]), the daemon
//! started inside the server namespace ([`Daemon`]), and real client programs in client
//! namespaces ([`Netns::command`]). Every piece is an RAII guard that tears itself down in
//! `Drop`, also when the test panics, and a new lab first removes what a killed earlier run
//! left behind. Nothing here touches the host's own interfaces.
//!
//! Tests that need root call [`require_root`] first: without root they print why they are
//! skipped, and with `BOOTFABRIC_REQUIRE_LAB=1` (set by `cargo xtask test`) they fail instead,
//! so CI can never pass by skipping.

use std::{
    fs::File,
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicU32, Ordering},
        mpsc, Arc, Mutex,
    },
    time::{Duration, Instant},
};

use nix::sched::{setns, CloneFlags};

pub mod api;
pub mod arm64;
pub mod bootimage;
pub mod browser;
pub mod capture;
pub mod cluster_lab;
pub mod control;
pub mod deb;
pub mod dhcp_client;
pub mod etcd;
pub mod freeze;
pub mod fuse;
pub mod image_origin;
pub mod ipxe;
pub mod ktls_guest;
pub mod layering;
pub mod packets;
pub mod pki;
pub mod qemu;
pub mod rack;
pub mod redfish_server;
pub mod relay;
pub mod simhost;
pub mod sockets;
pub mod sse;
pub mod sushy;
pub mod tftp_client;
pub mod webhook;
#[cfg(feature = "daemon")]
pub mod xdp_harness;

/// A child process (a client, a relay, a VM) killed by PID and reaped when the test ends,
/// also when it fails.
pub struct KillOnDrop(pub std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// splitmix64: small and seedable, so lab impairments and simulations are reproducible.
#[derive(Clone, Debug)]
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Prefix of every namespace the lab creates; nothing else on the machine uses it.
pub const NS_PREFIX: &str = "bft-";

/// Error type of the lab: a message saying which step failed and why.
pub type LabError = String;

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEPT: std::sync::Once = std::sync::Once::new();

/// Whether the lab must run (`BOOTFABRIC_REQUIRE_LAB=1`): then a missing prerequisite fails
/// the test instead of skipping it.
pub fn lab_required() -> bool {
    std::env::var("BOOTFABRIC_REQUIRE_LAB").is_ok_and(|v| v == "1")
}

/// Skips (prints the reason, returns `false`) or fails when `ok` is false.
pub fn require(ok: bool, test: &str, reason: &str) -> bool {
    if ok {
        return true;
    }
    if lab_required() {
        panic!("{test}: {reason} (BOOTFABRIC_REQUIRE_LAB=1, so this is a failure, not a skip)");
    }
    eprintln!("SKIP {test}: {reason}");
    false
}

/// [`require`] for each of `programs` on the PATH (all installed by `cargo xtask setup`).
pub fn require_programs(test: &str, programs: &[&str]) -> bool {
    programs.iter().all(|p| {
        require(
            have_program(p),
            test,
            &format!("{p} is missing (cargo xtask setup)"),
        )
    })
}

/// True when running as root (network namespaces, veth and XDP need it).
pub fn require_root(test: &str) -> bool {
    require(
        nix::unistd::geteuid().is_root(),
        test,
        "needs root for network namespaces and XDP (run `cargo xtask test` as root)",
    )
}

/// True when `program` is on PATH.
pub fn have_program(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// The `bootfabric` binary under test: `BOOTFABRIC_BIN`, else the workspace's debug build.
pub fn bootfabric_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("BOOTFABRIC_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../target/debug/bootfabric")
        .to_path_buf()
}

/// Runs a command to completion; an error names the command and its stderr.
pub fn run(cmd: &mut Command) -> Result<String, LabError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn ip(args: &[&str]) -> Result<String, LabError> {
    run(Command::new("ip").args(args))
}

/// Removes namespaces left by lab runs whose process is gone (a `kill -9`ed test run).
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/run/netns") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let owner: Option<u32> = rest.split('-').next().and_then(|p| p.parse().ok());
        if let Some(pid) = owner {
            if Path::new(&format!("/proc/{pid}")).exists() {
                continue;
            }
        }
        kill_all_in(&name);
        let _ = ip(&["netns", "del", &name]);
    }
}

/// Kills, by PID, every process still inside one of the lab's own namespaces.
fn kill_all_in(ns: &str) {
    if let Ok(pids) = ip(&["netns", "pids", ns]) {
        for pid in pids
            .split_whitespace()
            .filter_map(|p| p.parse::<i32>().ok())
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

/// A network namespace owned by this test; deleted (with its processes) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `bft-<pid>-<n>-<role>` with its loopback up.
    pub fn new(role: &str) -> Result<Self, LabError> {
        SWEPT.call_once(sweep_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{NS_PREFIX}{}-{n}-{role}", std::process::id());
        // Clean up before starting: a namespace of this name can only be ours, from a PID reuse.
        let _ = ip(&["netns", "del", &name]);
        ip(&["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name (for `ip netns exec`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Runs `ip -n <ns> ARGS`.
    pub fn ip(&self, args: &[&str]) -> Result<String, LabError> {
        let mut full = vec!["-n", self.name.as_str()];
        full.extend_from_slice(args);
        ip(&full)
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// tftp-hpa in this namespace fetching `remote` in binary mode from the lab's server
    /// (10.77.0.1) into `dest`: the command, for the caller to run, spawn or read. With
    /// `bound`, `timeout` ends it after that many seconds (tftp-hpa alone retries for 25 s,
    /// longer than some checks should wait for an answer).
    pub fn tftp_get(&self, remote: &str, dest: &Path, bound: Option<u32>) -> Command {
        let mut c = match bound {
            Some(secs) => {
                let mut c = self.command("timeout");
                c.arg(secs.to_string()).arg("tftp");
                c
            }
            None => self.command("tftp"),
        };
        c.args(["-m", "binary", "10.77.0.1", "-c", "get", remote])
            .arg(dest);
        c
    }

    /// Runs `f` on a thread that has entered this namespace. Sockets created inside `f`
    /// stay in this namespace wherever they are used afterwards.
    pub fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, LabError> {
        let path = format!("/run/netns/{}", self.name);
        let file = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
        std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).map_err(|e| format!("setns {path}: {e}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| "namespace thread panicked".to_owned())?
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        kill_all_in(&self.name);
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            // Never panic in drop: this may run while a failed test unwinds.
            eprintln!("lab cleanup: {e}");
        }
    }
}

/// Joins two namespaces with a veth pair and brings both ends up. Addresses are CIDRs
/// (`10.77.0.1/24`) or empty for none. The pair vanishes with either namespace.
pub fn veth(
    a: &Netns,
    a_if: &str,
    a_addr: &str,
    b: &Netns,
    b_if: &str,
    b_addr: &str,
) -> Result<(), LabError> {
    ip(&[
        "link",
        "add",
        a_if,
        "netns",
        a.name(),
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "netns",
        b.name(),
    ])?;
    for (ns, ifname, addr) in [(a, a_if, a_addr), (b, b_if, b_addr)] {
        if !addr.is_empty() {
            ns.ip(&["addr", "add", addr, "dev", ifname])?;
        }
        ns.ip(&["link", "set", ifname, "up"])?;
    }
    Ok(())
}

/// A switch: a namespace holding a Linux bridge that other namespaces plug into.
#[derive(Debug)]
pub struct Bridge {
    ns: Netns,
    ports: u32,
}

impl Bridge {
    /// Creates the switch namespace and its bridge `br0`.
    pub fn new() -> Result<Self, LabError> {
        let ns = Netns::new("switch")?;
        ns.ip(&["link", "add", "br0", "type", "bridge"])?;
        ns.ip(&["link", "set", "br0", "up"])?;
        Ok(Bridge { ns, ports: 0 })
    }

    /// The switch's own namespace (to put a tap for a VM on the bridge).
    pub fn ns(&self) -> &Netns {
        &self.ns
    }

    /// Plugs `ns` in through a veth whose end in `ns` is `ifname` with `addr` (may be empty).
    pub fn plug(&mut self, ns: &Netns, ifname: &str, addr: &str) -> Result<(), LabError> {
        let port = format!("p{}", self.ports);
        self.ports += 1;
        veth(&self.ns, &port, "", ns, ifname, addr)?;
        self.ns.ip(&["link", "set", &port, "master", "br0"])?;
        Ok(())
    }
}

/// The daemon running inside a namespace; killed by PID on drop.
pub struct Daemon {
    child: Child,
    /// Where its admin server listens, inside its namespace.
    pub admin: SocketAddr,
    log: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
    ns: String,
    env: Vec<(String, String)>,
    _dir: TempDir,
}

/// How long a daemon may take to come up before the test fails (a bound, not a timing check).
const STARTUP_BOUND: Duration = Duration::from_secs(60);

/// How long a log line is waited for after the effect that logs it (see [`Daemon::logged`]).
pub const LOG_BOUND: Duration = Duration::from_secs(10);

impl Daemon {
    /// Writes `config` to a fresh folder and runs `bootfabric serve` on it inside `ns`, then
    /// waits for the admin server's "listening on" line. `extra_files` are written beside
    /// the config (e.g. an inventory).
    pub fn start(ns: &Netns, config: &str, extra_files: &[(&str, &str)]) -> Result<Self, LabError> {
        Self::start_with_env(ns, config, extra_files, &[])
    }

    /// [`Daemon::start`] with `env` set for the daemon (e.g. a service manager's
    /// `NOTIFY_SOCKET`).
    pub fn start_with_env(
        ns: &Netns,
        config: &str,
        extra_files: &[(&str, &str)],
        env: &[(&str, &str)],
    ) -> Result<Self, LabError> {
        let dir = TempDir::new()?;
        let cfg = dir.path.join("bootfabric.toml");
        std::fs::write(&cfg, config).map_err(|e| format!("{}: {e}", cfg.display()))?;
        for (name, text) in extra_files {
            let p = dir.path.join(name);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
        }
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let (child, log, reader, admin) = launch(ns.name(), &cfg, &env)?;
        Ok(Daemon {
            env,
            child,
            admin,
            log,
            reader: Some(reader),
            ns: ns.name().to_owned(),
            _dir: dir,
        })
    }

    /// Starts the daemon again on the same config and state (after a stop or a kill).
    pub fn restart(&mut self) -> Result<(), LabError> {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let (child, log, reader, admin) = launch(&self.ns, &self.config_path(), &self.env)?;
        self.child = child;
        self.log = log;
        self.reader = Some(reader);
        self.admin = admin;
        Ok(())
    }

    /// The config file the daemon runs on.
    pub fn config_path(&self) -> PathBuf {
        self._dir.path.join("bootfabric.toml")
    }

    /// Runs `bootfabric ARGS --config <this daemon's config>` to completion (outside any
    /// namespace: for commands that only read files, such as `leases`).
    pub fn cli(&self, args: &[&str]) -> Result<String, LabError> {
        run(Command::new(bootfabric_bin())
            .args(args)
            .arg("--config")
            .arg(self.config_path()))
    }

    /// Everything the daemon has logged so far.
    pub fn log(&self) -> String {
        self.log.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits (bounded by [`LOG_BOUND`]) until some line the daemon logged holds `text`;
    /// whether one did. A line reaches the test after the effect a test observes (an answer,
    /// a metric): the daemon writes logs from a thread of its own and the lab reads them
    /// from a pipe, so a line is waited for, never read once.
    pub fn logged(&self, text: &str) -> bool {
        self.log_when(|log| log.contains(text)).is_some()
    }

    /// Waits (bounded by [`LOG_BOUND`]) until the whole log satisfies `ok`; the log then.
    pub fn log_when(&self, ok: impl Fn(&str) -> bool) -> Option<String> {
        wait_for(LOG_BOUND, || {
            let log = self.log();
            ok(&log).then_some(log)
        })
    }

    /// The daemon's PID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGHUP and waits (30 s at most) for one more log line holding `line` than
    /// there were before it, so an earlier reload's line does not pass for this one's.
    pub fn reload(&self, line: &str) -> Result<(), LabError> {
        let before = self.log().matches(line).count();
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGHUP)
            .map_err(|e| format!("SIGHUP {pid}: {e}"))?;
        wait_for(Duration::from_secs(30), || {
            (self.log().matches(line).count() > before).then_some(())
        })
        .ok_or_else(|| format!("no {line:?} after SIGHUP:\n{}", self.log()))
    }

    /// Sends `signal` and waits (bounded) for the daemon to exit.
    pub fn stop_with(&mut self, signal: nix::sys::signal::Signal) -> Result<ExitStatus, LabError> {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        nix::sys::signal::kill(pid, signal).map_err(|e| format!("kill {pid}: {e}"))?;
        let deadline = Instant::now() + STARTUP_BOUND;
        loop {
            if let Some(status) = self.child.try_wait().map_err(|e| e.to_string())? {
                // The pipe closed with the process: the reader ends after its last line.
                if let Some(reader) = self.reader.take() {
                    let _ = reader.join();
                }
                return Ok(status);
            }
            if Instant::now() > deadline {
                return Err(format!("daemon ignored {signal}:\n{}", self.log()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

type Launched = (
    Child,
    Arc<Mutex<String>>,
    std::thread::JoinHandle<()>,
    SocketAddr,
);

/// Starts `bootfabric serve --config cfg` in namespace `ns` and waits for its admin line.
fn launch(ns: &str, cfg: &Path, env: &[(String, String)]) -> Result<Launched, LabError> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns])
        .arg(bootfabric_bin())
        .args(["serve", "--config"])
        .arg(cfg)
        .env(
            "RUST_LOG",
            std::env::var("BOOTFABRIC_TEST_LOG").unwrap_or_else(|_| "info".into()),
        )
        .env("NO_COLOR", "1")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", bootfabric_bin().display()))?;
    let stderr = child.stderr.take().ok_or("no stderr pipe")?;
    let log = Arc::new(Mutex::new(String::new()));
    let (tx, rx) = mpsc::channel();
    let sink = Arc::clone(&log);
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = listening_addr(&line) {
                let _ = tx.send(addr);
            }
            if let Ok(mut l) = sink.lock() {
                l.push_str(&line);
                l.push('\n');
            }
        }
    });
    let text = |log: &Arc<Mutex<String>>| log.lock().map(|l| l.clone()).unwrap_or_default();
    let deadline = Instant::now() + STARTUP_BOUND;
    loop {
        match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(addr) => return Ok((child, log, reader, addr)),
            Err(_) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("daemon did not start:\n{}", text(&log)));
            }
            Err(_) => {
                if let Ok(Some(status)) = child.try_wait() {
                    let _ = reader.join();
                    return Err(format!("daemon exited with {status}:\n{}", text(&log)));
                }
            }
        }
    }
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `bound` (a bound on a
/// wait for an event, not a timing assertion).
pub fn wait_for<T>(bound: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + bound;
    loop {
        if let Some(v) = check() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Parses the admin server's start-up line (`... admin server listening on IP:PORT ...`).
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("admin server listening on ").nth(1)?;
    // Text lines end the address at a space, JSON lines at the message's closing quote.
    rest.split(|c: char| c.is_whitespace() || c == '"')
        .next()?
        .parse()
        .ok()
}

/// A deterministic pseudo-random file body of `len` bytes (the same for the same seed).
pub fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

/// A folder removed on drop.
#[derive(Debug)]
pub struct TempDir {
    /// Its path.
    pub path: PathBuf,
}

impl TempDir {
    /// Creates a fresh folder under the system temp dir.
    pub fn new() -> Result<Self, LabError> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("bootfabric-lab-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(TempDir { path })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// `GET path` over HTTP/1.1 to `addr` from inside `ns`; returns (status, body).
pub fn http_get(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String), LabError> {
    let path = path.to_owned();
    ns.run(move || -> Result<(u16, String), LabError> {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .map_err(|e| format!("connect {addr}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(|e| e.to_string())?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .map_err(|e| e.to_string())?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw)
            .map_err(|e| format!("read {addr}: {e}"))?;
        let text = String::from_utf8_lossy(&raw).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").ok_or("no HTTP header end")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line: {head}"))?;
        Ok((status, body.to_owned()))
    })?
}

/// `GET /metrics` from `daemon`'s admin server, from inside `ns`; an error unless it answers
/// 200 (a half-started daemon must not read as "every counter is zero").
pub fn metrics(ns: &Netns, daemon: &Daemon) -> Result<String, LabError> {
    match http_get(ns, daemon.admin, "/metrics")? {
        (200, text) => Ok(text),
        (status, text) => Err(format!("/metrics answered {status}: {text}")),
    }
}

/// [`require`] that `daemon` (running in `ns`) loaded the XDP object, for tests of the
/// kernel path: without it they would pass on userspace answers alone.
pub fn require_xdp(test: &str, ns: &Netns, daemon: &Daemon) -> bool {
    let text = metrics(ns, daemon).unwrap_or_else(|e| panic!("{test}: {e}"));
    require(
        text.contains("ebpf=\"embedded\""),
        test,
        "the daemon has no eBPF object (build with `cargo xtask build`)",
    )
}

/// The value of one sample in Prometheus text output, e.g.
/// `sample(&text, "bootfabric_xdp_packets_total", &[("class", "dhcp")])`. Labels not
/// given are not checked; the first matching sample wins.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, r)) => (m, r.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.split(',').any(|kv| kv == format!("{k}=\"{v}\"")));
            if all {
                value.parse().ok()
            } else {
                None
            }
        })
}

/// A server namespace and one client namespace joined by a veth pair:
/// `fabric0` (10.77.0.1/24) in the server, `client0` (10.77.0.2/24) in the client.
pub struct PairLab {
    /// The daemon's namespace.
    pub server: Netns,
    /// The client's namespace.
    pub client: Netns,
}

impl PairLab {
    /// Server-side interface name, as the example configs use it.
    pub const SERVER_IF: &'static str = "fabric0";
    /// Server address.
    pub const SERVER_IP: [u8; 4] = [10, 77, 0, 1];

    /// Builds the two namespaces and the link.
    pub fn new() -> Result<Self, LabError> {
        let lab = Self::unaddressed_client("client0")?;
        lab.client
            .ip(&["addr", "add", "10.77.0.2/24", "dev", "client0"])?;
        // Lets clients broadcast to 255.255.255.255 as DHCP clients do.
        lab.client
            .ip(&["route", "add", "default", "dev", "client0"])?;
        Ok(lab)
    }

    /// Like [`PairLab::new`], but the client interface `client_if` has no address: a
    /// machine about to ask DHCP for one.
    pub fn unaddressed_client(client_if: &str) -> Result<Self, LabError> {
        let server = Netns::new("srv")?;
        let client = Netns::new("cli")?;
        veth(
            &server,
            Self::SERVER_IF,
            "10.77.0.1/24",
            &client,
            client_if,
            "",
        )?;
        Ok(PairLab { server, client })
    }

    /// Gives the client a second address, `addr` (in `prefix` notation, e.g.
    /// `10.77.0.254/24`), and makes it the source of what the client sends to `to`: the
    /// client then speaks as another machine on the link, e.g. a DHCP relay. For a lab from
    /// [`PairLab::new`], whose client interface is `client0`.
    pub fn client_speaks_as(&self, addr: &str, to: Ipv4Addr) -> Result<(), LabError> {
        let dev = "client0";
        self.client.ip(&["addr", "add", addr, "dev", dev])?;
        let src = addr.split_once('/').map_or(addr, |(ip, _)| ip);
        self.client
            .ip(&["route", "add", &format!("{to}/32"), "dev", dev, "src", src])?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_listening_line() {
        let l = "2026-01-01T00:00:00Z  INFO bootfabric::util::metrics: admin server listening on 127.0.0.1:9370 addr=127.0.0.1:9370";
        assert_eq!(
            listening_addr(l),
            Some("127.0.0.1:9370".parse().expect("addr"))
        );
        assert_eq!(listening_addr("nothing here"), None);
    }

    #[test]
    fn finds_samples_by_labels() {
        let text = "# HELP x y\nx_total{a=\"1\",b=\"2\"} 5\nx_total{a=\"3\",b=\"2\"} 7\nup 1\n";
        assert_eq!(sample(text, "x_total", &[("a", "3")]), Some(7.0));
        assert_eq!(
            sample(text, "x_total", &[("b", "2"), ("a", "1")]),
            Some(5.0)
        );
        assert_eq!(sample(text, "up", &[]), Some(1.0));
        assert_eq!(sample(text, "x_total", &[("a", "9")]), None);
    }
}
