//! Lease durability against power loss, not only a killed process: the lease journal lives on
//! `volatile_disk`, a FUSE disk whose unflushed writes vanish at a power cut (written data
//! survives a SIGKILL, so a SIGKILL cannot show a missing fdatasync; this machine has no
//! device mapper for dm-flakey or dm-log-writes). With several clients in flight at once, the
//! power is cut; the daemon is restarted on what the disk had made durable, and every lease
//! any client was ACKed must be there. A second test makes the disk's flushes fail and checks
//! that the ACK is withheld, counted and logged, and that service resumes once the disk does.
//!
//! Both run the userspace DHCP path (`xdp.dhcp_fast_path = false`): it sends an ACK only after
//! the fdatasync covering its record has returned. The XDP path's ACKs leave before userspace
//! hears of them, and their records are written lazily (docs/operations.md, "The lease journal").

use std::{
    collections::{HashMap, HashSet},
    ffi::CString,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    os::{fd::FromRawFd as _, unix::ffi::OsStrExt as _},
    path::{Path, PathBuf},
    process::{Child, ChildStdin, Command, Stdio},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use dhcproto::{
    v4::{DhcpOption, Message, MessageType, OptionCode},
    Decodable, Decoder, Encodable, Encoder,
};

use bootfabric_lab::{
    dhcp_client::{Client, Outcome},
    metrics, require_root, sample, wait_for, Daemon, PairLab, TempDir,
};

/// A generous bound on waits for events (lines, metrics), never a timing assertion.
const WAIT: Duration = Duration::from_secs(30);

/// Reserved hosts: `r<i>` with MAC `52:54:02:00:00:<i>` at `10.77.0.<20+i>`.
const RESERVED: u8 = 8;

fn inventory() -> String {
    let mut inv = String::from("[profiles.installer]\nkernel = \"debian/linux\"\n");
    for i in 0..RESERVED {
        inv.push_str(&format!(
            "\n[[hosts]]\nname = \"r{i}\"\nmac = \"52:54:02:00:00:{i:02x}\"\nip = \"10.77.0.{}\"\nprofile = \"installer\"\n",
            20 + u32::from(i)
        ));
    }
    inv
}

/// The lab config with the journal's folder at `state_dir` and every DHCP answer from
/// userspace.
fn config(state_dir: &Path) -> String {
    format!(
        r#"
[daemon]
state_dir = "{}"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[xdp]
dhcp_fast_path = false
[dhcp]
rate_limit = 1000
[dhcp.options]
lease_time = 600
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.250"]
options = {{ router = "10.77.0.1" }}
"#,
        state_dir.display()
    )
}

fn mac_text(m: [u8; 6]) -> String {
    m.map(|b| format!("{b:02x}")).join(":")
}

/// `bootfabric leases` as MAC → address.
fn listed(daemon: &Daemon) -> HashMap<String, String> {
    let text = daemon.cli(&["leases"]).expect("bootfabric leases");
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let ip = f.next()?.to_owned();
            Some((f.next()?.to_owned(), ip))
        })
        .collect()
}

/// The record lines (not the header) of a journal file; none if it is missing.
fn records(path: &Path) -> HashSet<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `volatile_disk` FUSE server mounted at `<dir>/state`; on a `cut` it writes the durable
/// image to `<dir>/durable`, on `quit` the volatile one to `<dir>/volatile`. Killed by PID
/// and unmounted (lazily) on drop.
struct VolatileDisk {
    child: Child,
    stdin: Arc<Mutex<Option<ChildStdin>>>,
    lines: Arc<Mutex<Vec<String>>>,
    mounted: bool,
    mountpoint: PathBuf,
    durable: PathBuf,
    volatile: PathBuf,
    _dir: TempDir,
}

impl VolatileDisk {
    fn mount() -> Result<Self, String> {
        let dir = TempDir::new()?;
        let mountpoint = dir.path.join("state");
        std::fs::create_dir(&mountpoint).map_err(|e| e.to_string())?;
        let (durable, volatile) = (dir.path.join("durable"), dir.path.join("volatile"));
        let mut child = Command::new(env!("CARGO_BIN_EXE_volatile_disk"))
            .arg(&mountpoint)
            .arg(&durable)
            .arg(&volatile)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("volatile_disk: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout pipe")?;
        let stdin = Arc::new(Mutex::new(child.stdin.take()));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(mut l) = sink.lock() {
                    l.push(line);
                }
            }
        });
        let mut disk = VolatileDisk {
            child,
            stdin,
            lines,
            mounted: false,
            mountpoint,
            durable,
            volatile,
            _dir: dir,
        };
        disk.wait_line("mounted")?;
        disk.mounted = true;
        Ok(disk)
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().map(|l| l.clone()).unwrap_or_default()
    }

    /// Waits for a line starting with `start` (the server prints one per command).
    fn wait_line(&self, start: &str) -> Result<String, String> {
        wait_for(WAIT, || {
            self.lines().into_iter().find(|l| l.starts_with(start))
        })
        .ok_or_else(|| format!("volatile_disk never said {start:?}: {:?}", self.lines()))
    }

    fn command(&self, cmd: &str, answer: &str) -> Result<String, String> {
        send(&self.stdin, cmd)?;
        self.wait_line(answer)
    }

    /// Ends the server: it writes the volatile image and exits, which aborts the FUSE
    /// connection (so a daemon stuck in a held fdatasync can finish dying); then unmounts.
    fn quit(&mut self) -> Result<(), String> {
        send(&self.stdin, "quit")?;
        let deadline = Instant::now() + WAIT;
        while self.child.try_wait().map_err(|e| e.to_string())?.is_none() {
            if Instant::now() > deadline {
                return Err("volatile_disk did not quit".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.unmount();
        Ok(())
    }

    fn unmount(&mut self) {
        if std::mem::take(&mut self.mounted) {
            if let Ok(path) = CString::new(self.mountpoint.as_os_str().as_bytes()) {
                // SAFETY: a valid C string for the duration of the call.
                let _ = unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
    }
}

fn send(stdin: &Mutex<Option<ChildStdin>>, cmd: &str) -> Result<(), String> {
    let mut guard = stdin.lock().map_err(|_| "stdin lock poisoned")?;
    let pipe = guard.as_mut().ok_or("volatile_disk's stdin is closed")?;
    writeln!(pipe, "{cmd}")
        .and_then(|()| pipe.flush())
        .map_err(|e| format!("volatile_disk stdin: {e}"))
}

impl Drop for VolatileDisk {
    fn drop(&mut self) {
        // Killing the server closes its /dev/fuse descriptor: the kernel aborts the
        // connection and every call still waiting on the disk fails with ENOTCONN.
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.unmount();
    }
}

/// A DHCP client socket on port 68 that shares the port with the other clients of the test
/// (`SO_REUSEADDR`): the server broadcasts its replies, so each socket sees all of them and
/// keeps those with its own xids.
fn shared_client_socket() -> std::io::Result<UdpSocket> {
    // SAFETY: plain socket(2); the descriptor is owned by the UdpSocket below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    let sock = unsafe { UdpSocket::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEADDR, libc::SO_BROADCAST] {
        // SAFETY: `one` outlives the call and its size is passed.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 68u16.to_be(),
        sin_addr: libc::in_addr { s_addr: 0 },
        sin_zero: [0; 8],
    };
    // SAFETY: `addr` is a valid sockaddr_in for the duration of the call.
    let rc = unsafe {
        libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(sock)
}

/// Sends `m` (broadcast) and waits up to `wait` for the reply with its xid.
fn ask(sock: &UdpSocket, m: &Message, wait: Duration) -> Option<Message> {
    let mut out = Vec::new();
    m.encode(&mut Encoder::new(&mut out)).ok()?;
    sock.send_to(&out, SocketAddr::from(([255, 255, 255, 255], 67)))
        .ok()?;
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; 1500];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        let (n, _) = sock.recv_from(&mut buf).ok()?;
        if let Ok(r) = Message::decode(&mut Decoder::new(&buf[..n])) {
            if r.xid() == m.xid() {
                return Some(r);
            }
        }
    }
}

/// DISCOVER → OFFER → REQUEST → ACK on a shared socket, each step tried up to 3 times.
fn lease(sock: &UdpSocket, mac: [u8; 6], xid: u32, wait: Duration) -> Outcome {
    let discover = Client::message(mac, xid, MessageType::Discover);
    let Some(offer) = (0..3).find_map(|_| {
        ask(sock, &discover, wait).filter(|r| r.opts().msg_type() == Some(MessageType::Offer))
    }) else {
        return Outcome::NoAnswer;
    };
    let Some(DhcpOption::ServerIdentifier(server)) =
        offer.opts().get(OptionCode::ServerIdentifier).cloned()
    else {
        return Outcome::NoAnswer;
    };
    let mut req = Client::message(mac, xid, MessageType::Request);
    req.opts_mut().insert(DhcpOption::ServerIdentifier(server));
    req.opts_mut()
        .insert(DhcpOption::RequestedIpAddress(offer.yiaddr()));
    for _ in 0..3 {
        match ask(sock, &req, wait).and_then(|r| r.opts().msg_type().map(|t| (t, r))) {
            Some((MessageType::Ack, r)) => return Outcome::Ack(r.yiaddr(), server),
            Some((MessageType::Nak, _)) => return Outcome::Nak,
            _ => {}
        }
    }
    Outcome::NoAnswer
}

/// A client's MAC and the address its ACK gave it.
type Acked = ([u8; 6], Ipv4Addr);

/// Client threads at once, and MACs each leases in turn (until the cut).
const THREADS: u32 = 8;
const PER_THREAD: u32 = 12;
/// The power is cut once this many ACKs have arrived.
const CUT_AT: usize = 40;

/// MAC number `n` of thread `t`: one reserved host per thread (its fourth MAC), the rest
/// from the pool.
fn burst_mac(t: u32, n: u32) -> [u8; 6] {
    if n == 3 && t < u32::from(RESERVED) {
        [0x52, 0x54, 0x02, 0, 0, t as u8]
    } else {
        [0x52, 0x54, 0x03, 0, t as u8, n as u8]
    }
}

#[test]
fn power_cut_under_concurrent_clients_loses_no_acknowledged_lease() {
    let t = "power_cut_under_concurrent_clients_loses_no_acknowledged_lease";
    if !require_root(t)
        || !bootfabric_lab::require(Path::new("/dev/fuse").exists(), t, "needs /dev/fuse")
    {
        return;
    }
    let mut disk = VolatileDisk::mount().expect("volatile disk");
    let lab = PairLab::new().expect("lab");
    let mut daemon = Daemon::start(
        &lab.server,
        &config(&disk.mountpoint),
        &[("hosts.toml", &inventory())],
    )
    .expect("daemon");

    // Clients in THREADS threads lease at once; the one whose ACK is the CUT_AT-th cuts the
    // power while the others' REQUESTs are in flight, then every thread makes one more
    // attempt, so records are surely written after the cut and never flushed.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let cut = Arc::new(AtomicBool::new(false));
    let after_cut = Arc::new(AtomicUsize::new(0));
    let (stdin, lines) = (Arc::clone(&disk.stdin), Arc::clone(&disk.lines));
    let (acked2, cut2, after2) = (Arc::clone(&acked), Arc::clone(&cut), Arc::clone(&after_cut));
    lab.client
        .run(move || {
            let threads: Vec<_> = (0..THREADS)
                .map(|t| {
                    let (acked, cut, after) =
                        (Arc::clone(&acked2), Arc::clone(&cut2), Arc::clone(&after2));
                    let (stdin, lines) = (Arc::clone(&stdin), Arc::clone(&lines));
                    std::thread::spawn(move || {
                        let sock = shared_client_socket().expect("client socket on port 68");
                        for n in 0..PER_THREAD {
                            let was_cut = cut.load(Ordering::SeqCst);
                            let mac = burst_mac(t, n);
                            let got =
                                lease(&sock, mac, 0x7000_0000 | t << 8 | n, Duration::from_secs(1));
                            if let Outcome::Ack(ip, _) = got {
                                let mut a = acked.lock().expect("acked");
                                a.push((mac, ip));
                                if a.len() == CUT_AT {
                                    send(&stdin, "cut").expect("cut");
                                    let said = wait_for(WAIT, || {
                                        lines
                                            .lock()
                                            .ok()?
                                            .iter()
                                            .any(|l| l.starts_with("cut "))
                                            .then_some(())
                                    });
                                    assert!(said.is_some(), "volatile_disk did not cut");
                                    cut.store(true, Ordering::SeqCst);
                                }
                            }
                            if was_cut {
                                after.fetch_add(1, Ordering::SeqCst);
                                break;
                            }
                        }
                    })
                })
                .collect();
            for th in threads {
                th.join().expect("client thread");
            }
        })
        .expect("client namespace");
    let acked = acked.lock().expect("acked").clone();
    assert!(
        cut.load(Ordering::SeqCst),
        "only {} ACKs: the power was never cut\n{}",
        acked.len(),
        daemon.log()
    );
    assert!(
        after_cut.load(Ordering::SeqCst) > 0,
        "no client asked after the cut"
    );
    let distinct: HashSet<Ipv4Addr> = acked.iter().map(|(_, ip)| *ip).collect();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "an address was ACKed twice: {acked:?}"
    );

    // The machine is dead: the daemon is killed (its journal thread waits in an fdatasync
    // that never returns until the disk's server goes), the disk's server quits (writing
    // what was only in the volatile layer, for the comparison below), and the daemon starts
    // again on the durable image alone.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(daemon.pid() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("SIGKILL");
    disk.quit().expect("volatile_disk quit");
    let journal = "leases.journal";
    let durable = records(&disk.durable.join(journal));
    let lost = records(&disk.volatile.join(journal))
        .difference(&durable)
        .count();
    // Not a premise of the check below but of its meaning: the cut threw written records
    // away (a SIGKILL would have kept them), so an ACK sent before its fdatasync returned
    // would be caught.
    assert!(lost > 0, "the cut dropped no written record");
    eprintln!(
        "{} ACKs ({} after the cut was ordered), {} durable records, {lost} written but lost at the cut",
        acked.len(),
        after_cut.load(Ordering::SeqCst),
        durable.len()
    );
    for entry in std::fs::read_dir(&disk.durable).expect("durable image") {
        let entry = entry.expect("entry");
        std::fs::copy(entry.path(), disk.mountpoint.join(entry.file_name()))
            .expect("copy the durable image");
    }
    daemon.restart().expect("restart on the durable image");

    let by_mac = listed(&daemon);
    for (mac, ip) in &acked {
        let m = mac_text(*mac);
        assert_eq!(
            by_mac.get(&m),
            Some(&ip.to_string()),
            "the ACKed lease of {m} did not survive the power cut:\n{by_mac:?}\n{}",
            daemon.log()
        );
    }
    // The restarted server honours them: each client re-requesting its address gets it.
    let acked2 = acked.clone();
    let reboots = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            acked2
                .iter()
                .enumerate()
                .map(|(i, (mac, ip))| {
                    c.reboot(*mac, 0x7100_0000 + i as u32, *ip, Duration::from_secs(2))
                        .expect("socket")
                })
                .collect::<Vec<_>>()
        })
        .expect("client namespace");
    for ((_, ip), got) in acked.iter().zip(&reboots) {
        assert!(
            matches!(got, Outcome::Ack(a, _) if a == ip),
            "re-request of {ip} after the power cut: {got:?}"
        );
    }
}

#[test]
fn a_failed_fdatasync_withholds_the_ack_and_service_resumes_after() {
    let t = "a_failed_fdatasync_withholds_the_ack_and_service_resumes_after";
    if !require_root(t)
        || !bootfabric_lab::require(Path::new("/dev/fuse").exists(), t, "needs /dev/fuse")
    {
        return;
    }
    let disk = VolatileDisk::mount().expect("volatile disk");
    let lab = PairLab::new().expect("lab");
    let daemon = Daemon::start(
        &lab.server,
        &config(&disk.mountpoint),
        &[("hosts.toml", &inventory())],
    )
    .expect("daemon");
    let mac = |i: u8| [0x52, 0x54, 0x04, 0, 0, i];
    // Reserved host r1 and a pool client: one healthy ACK each first.
    let reserved = [0x52, 0x54, 0x02, 0, 0, 1];
    let before = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            [reserved, mac(0)].map(|m| c.lease(m, 0x7200, Duration::from_secs(2)).expect("socket"))
        })
        .expect("client namespace");
    assert!(
        before.iter().all(|o| matches!(o, Outcome::Ack(..))),
        "{before:?}"
    );

    // The disk fails every flush: three clients' REQUESTs (three tries each) get no ACK; a
    // DISCOVER is still answered.
    disk.command("fail", "failing").expect("fail");
    let failing: Vec<[u8; 6]> = vec![mac(1), mac(2), [0x52, 0x54, 0x02, 0, 0, 2]];
    let f2 = failing.clone();
    let (during, offered) = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            let during: Vec<Outcome> = f2
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    c.lease(*m, 0x7300 + i as u32, Duration::from_secs(1))
                        .expect("socket")
                })
                .collect();
            let offered = c
                .offer(mac(9), 0x7309, Duration::from_secs(2))
                .expect("socket")
                .is_some();
            (during, offered)
        })
        .expect("client namespace");
    assert!(
        during.iter().all(|o| *o == Outcome::NoAnswer),
        "an ACK left although its record's fdatasync failed: {during:?}"
    );
    assert!(offered, "DISCOVER unanswered while the disk fails");
    // Each REQUEST the clients sent (3 clients × 3 tries) is a commit that failed.
    let errors = |m: &str| sample(m, "bootfabric_dhcp_lease_commit_errors_total", &[]);
    let m = wait_for(WAIT, || {
        let m = metrics(&lab.server, &daemon).ok()?;
        (errors(&m) == Some(9.0)).then_some(m)
    })
    .unwrap_or_else(|| {
        panic!(
            "commit errors not counted as 9:\n{}",
            metrics(&lab.server, &daemon).unwrap_or_default()
        )
    });
    assert_eq!(
        sample(&m, "bootfabric_dhcp_lease_commit_errors_total", &[]),
        Some(9.0)
    );
    assert!(
        daemon.logged("lease record not durable: reply withheld"),
        "{}",
        daemon.log()
    );
    // No record of theirs is in the journal: the failed batch was cut back.
    let now = listed(&daemon);
    for m in &failing {
        assert!(!now.contains_key(&mac_text(*m)), "{m:?} recorded: {now:?}");
    }
    let failed = disk.lines().iter().filter(|l| *l == "failed fsync").count();
    assert!(failed >= 9, "only {failed} failed flushes");

    // The disk is back: the same clients get their ACKs, and the leases are journalled.
    disk.command("heal", "healed").expect("heal");
    let f2 = failing.clone();
    let after = lab
        .client
        .run(move || {
            let c = Client::bind().expect("bind 68");
            f2.iter()
                .enumerate()
                .map(|(i, m)| {
                    c.lease(*m, 0x7400 + i as u32, Duration::from_secs(2))
                        .expect("socket")
                })
                .collect::<Vec<_>>()
        })
        .expect("client namespace");
    assert!(
        after.iter().all(|o| matches!(o, Outcome::Ack(..))),
        "no ACK after the disk came back: {after:?}\n{}",
        daemon.log()
    );
    let now = listed(&daemon);
    let first = mac(0);
    let served = failing.iter().chain([&reserved, &first]);
    for (m, got) in served.zip(after.iter().chain(&before)) {
        match got {
            Outcome::Ack(ip, _) => {
                assert_eq!(now.get(&mac_text(*m)), Some(&ip.to_string()), "{now:?}")
            }
            other => panic!("{m:?}: {other:?}"),
        }
    }
}
