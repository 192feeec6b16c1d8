//! The 300-host storm: hosts nobody reset ask for their iPXE scripts all at once, and the
//! admission gate (`scheduler.gate = "always"`) lets 16 of them download at a time.
//!
//! One client namespace holds 300 addresses on one interface, each an inventory host's
//! reservation in one of six uneven racks (150/50/50/25/15/10); the daemon knows a host by
//! the address it asks from, so no DHCP is needed. 300 threads, one per host, each bound to
//! its address: ask for the script until it says go (sleeping as the gate's script says),
//! download the kernel (read at about 4 MB/s, so downloads overlap) and the small initrd,
//! then `POST /booted`. A sampler reads `/metrics` every 250 ms.
//!
//! What is checked: images downloading at once never exceed the slots (counted by the
//! clients, and `bootfabric_gate_admitted_max` from the daemon), every host booted, each was
//! admitted once from the queue (`bootfabric_gate_wait_seconds_count` = 300, none let
//! through unpaced: `bootfabric_gate_unplaced_total` = 0), and racks took turns (the
//! smallest rack's mean wait is below the biggest's). The waits are printed.
//!
//! The client count covers the kernel downloads; the initrd comes after them and is what
//! frees a slot (every file of the profile sent). The daemon counts a file sent once its last
//! byte is written to the socket, before the client has read it; counting the kernel only,
//! a host leaves the count before the daemon can free its slot, so the client count is exact
//! against the gate's rule and any admission beyond the slots shows in it.

use std::{
    io::{Read, Write},
    net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bootfabric_lab::{content, metrics, require_root, sample, veth, Daemon, Netns, TempDir};

const HOSTS: usize = 300;
const RACKS: [(&str, usize); 6] = [
    ("r150", 150),
    ("r50a", 50),
    ("r50b", 50),
    ("r25", 25),
    ("r15", 15),
    ("r10", 10),
];
const SLOTS: usize = 16;
const KERNEL: usize = 1 << 20;
const INITRD: usize = 4096;
/// The whole storm must be over by then (a bound, not a timing check).
const BOUND: Duration = Duration::from_secs(120);

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);

fn host_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, 1 + (i / 200) as u8, 1 + (i % 200) as u8)
}

fn inventory() -> String {
    let mut text = String::from(
        "[profiles.storm]\nkernel = \"storm/vmlinuz\"\ninitrd = [\"storm/initrd.img\"]\n",
    );
    let mut i = 0;
    for (rack, n) in RACKS {
        for _ in 0..n {
            text.push_str(&format!(
                "\n[[hosts]]\nname = \"h{i:03}\"\nmac = \"52:54:00:5e:{:02x}:{:02x}\"\nip = \"{}\"\nprofile = \"storm\"\nrack = \"{rack}\"\n",
                i / 256,
                i % 256,
                host_ip(i)
            ));
            i += 1;
        }
    }
    text
}

/// One request from `src` with `Connection: close`; the body is read at `pace` bytes per
/// 10 ms when given. Returns (status, body).
fn request(src: Ipv4Addr, head: &str, pace: Option<usize>) -> Result<(u16, Vec<u8>), String> {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
        .map_err(|e| format!("socket: {e}"))?;
    sock.bind(&SocketAddr::V4(SocketAddrV4::new(src, 0)).into())
        .map_err(|e| format!("bind {src}: {e}"))?;
    let to = SocketAddr::V4(SocketAddrV4::new(SERVER, 80));
    sock.connect_timeout(&to.into(), Duration::from_secs(20))
        .map_err(|e| format!("connect from {src}: {e}"))?;
    let mut s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(|e| e.to_string())?;
    s.write_all(head.as_bytes())
        .map_err(|e| format!("send from {src}: {e}"))?;
    let mut raw = Vec::new();
    let mut buf = vec![0u8; pace.unwrap_or(64 * 1024)];
    loop {
        let n = s
            .read(&mut buf)
            .map_err(|e| format!("read from {src}: {e}"))?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
        if pace.is_some() {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| format!("no header end from {src}"))?;
    let status = String::from_utf8_lossy(&raw[..end])
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line for {src}"))?;
    Ok((status, raw[end + 4..].to_vec()))
}

fn get(src: Ipv4Addr, path: &str, pace: Option<usize>) -> Result<(u16, Vec<u8>), String> {
    let head = format!("GET {path} HTTP/1.1\r\nHost: {SERVER}\r\nConnection: close\r\n\r\n");
    request(src, &head, pace)
}

/// Images downloading now, and the most at once.
#[derive(Default)]
struct InFlight {
    now: AtomicUsize,
    max: AtomicUsize,
}

impl InFlight {
    fn enter(&self) {
        let n = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(n, Ordering::SeqCst);
    }

    fn leave(&self) {
        self.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One host's boot: the script until it says go, the kernel (counted), the initrd,
/// `/booted`. Returns seconds from its first ask to its go.
fn boot(i: usize, flight: &InFlight, deadline: Instant) -> Result<f64, String> {
    let src = host_ip(i);
    let first = Instant::now();
    let script = loop {
        let (status, body) = get(src, "/boot.ipxe", None)?;
        let text = String::from_utf8_lossy(&body).into_owned();
        if status != 200 {
            return Err(format!("h{i:03}: script answered {status}: {text}"));
        }
        if !text.contains("waits for a download slot") {
            break text;
        }
        if Instant::now() > deadline {
            return Err(format!("h{i:03}: still waiting at the bound"));
        }
        // What the gate's script says: sleep, then ask again.
        let secs = text
            .lines()
            .find_map(|l| l.strip_prefix("sleep "))
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| format!("h{i:03}: no sleep in the gate script:\n{text}"))?;
        std::thread::sleep(Duration::from_secs(secs));
    };
    let waited = first.elapsed().as_secs_f64();
    let path = |line: &str| {
        script
            .lines()
            .find(|l| l.starts_with(line))
            .and_then(|l| l.split_whitespace().find(|w| w.starts_with("http://")))
            .and_then(|u| u.strip_prefix(&format!("http://{SERVER}")))
            .map(str::to_owned)
            .ok_or_else(|| format!("h{i:03}: no {line}in the script:\n{script}"))
    };
    let (kernel, initrd) = (path("kernel ")?, path("initrd ")?);
    flight.enter();
    let got = get(src, &kernel, Some(40 * 1024));
    flight.leave();
    let (status, body) = got?;
    if status != 200 || body.len() != KERNEL {
        return Err(format!("h{i:03}: kernel {status}, {} bytes", body.len()));
    }
    let (status, body) = get(src, &initrd, None)?;
    if status != 200 || body.len() != INITRD {
        return Err(format!("h{i:03}: initrd {status}, {} bytes", body.len()));
    }
    let post = format!(
        "POST /booted HTTP/1.1\r\nHost: {SERVER}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let (status, _) = request(src, &post, None)?;
    if status != 204 {
        return Err(format!("h{i:03}: /booted answered {status}"));
    }
    Ok(waited)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[test]
fn three_hundred_hosts_nobody_reset_share_the_slots() {
    let t = "three_hundred_hosts_nobody_reset_share_the_slots";
    if !require_root(t) {
        return;
    }
    let dir = TempDir::new().expect("dir");
    let images = dir.path.join("images/storm");
    std::fs::create_dir_all(&images).expect("images");
    std::fs::write(images.join("vmlinuz"), content(KERNEL, 7)).expect("kernel");
    std::fs::write(images.join("initrd.img"), content(INITRD, 8)).expect("initrd");
    // 1600 / 100 Mbit/s = 16 slots, and min_slots keeps them while the paced clients take
    // less than the capacity (the estimate would follow the measurement down).
    let config = format!(
        "[daemon]\nstate_dir = \"state\"\ninventory = \"hosts.toml\"\n[fabric]\ninterfaces = [\"fabric0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[xdp]\nmode = \"off\"\n[http]\nroot = \"{}\"\n[scheduler]\ngate = \"always\"\ncapacity_mbps = 1600\nper_host_mbps = 100\nmin_slots = {SLOTS}\ngate_retry_s = 1\n",
        dir.path.join("images").display()
    );
    let server = Netns::new("srv").expect("server ns");
    let client = Netns::new("cli").expect("client ns");
    veth(&server, "fabric0", "10.78.0.1/16", &client, "client0", "").expect("veth");
    // 300 addresses in one `ip -batch`: one process instead of 300.
    let batch = dir.path.join("addrs");
    let lines: String = (0..HOSTS)
        .map(|i| format!("addr add {}/16 dev client0\n", host_ip(i)))
        .collect();
    std::fs::write(&batch, lines).expect("batch");
    client
        .ip(&["-batch", &batch.display().to_string()])
        .expect("addresses");
    let daemon = Daemon::start(&server, &config, &[("hosts.toml", &inventory())]).expect("daemon");

    // The sampler: the gate's gauges every 250 ms until the storm is over.
    let done = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new((0.0f64, 0.0f64, 0usize)));
    let sampler = {
        let (done, seen) = (Arc::clone(&done), Arc::clone(&seen));
        let admin = daemon.admin;
        let ns = server.name().to_owned();
        std::thread::spawn(move || {
            let path = format!("/run/netns/{ns}");
            let file = std::fs::File::open(&path).expect("netns");
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            while !done.load(Ordering::SeqCst) {
                if let Ok(text) = scrape(admin) {
                    let mut s = seen.lock().expect("seen");
                    let admitted = sample(&text, "bootfabric_gate_admitted", &[]).unwrap_or(0.0);
                    let slots = sample(&text, "bootfabric_gate_slots", &[]).unwrap_or(0.0);
                    s.0 = s.0.max(admitted);
                    s.1 = s.1.max(slots);
                    s.2 += 1;
                }
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };

    let flight = Arc::new(InFlight::default());
    let started = Instant::now();
    let deadline = started + BOUND;
    let results = {
        let flight = Arc::clone(&flight);
        client
            .run(move || {
                let handles: Vec<_> = (0..HOSTS)
                    .map(|i| {
                        let flight = Arc::clone(&flight);
                        std::thread::Builder::new()
                            .stack_size(256 * 1024)
                            .spawn(move || boot(i, &flight, deadline))
                            .expect("thread")
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or_else(|_| Err("panicked".into())))
                    .collect::<Vec<_>>()
            })
            .expect("client namespace")
    };
    let elapsed = started.elapsed();
    done.store(true, Ordering::SeqCst);
    let _ = sampler.join();

    let failures: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failures.is_empty(),
        "{} host(s) failed, first: {:?}\n{}",
        failures.len(),
        failures.first(),
        daemon.log()
    );
    let waits: Vec<f64> = results
        .iter()
        .filter_map(|r| r.as_ref().ok())
        .copied()
        .collect();
    let text = metrics(&server, &daemon).expect("metrics");
    let (admitted_seen, slots_seen, samples) = *seen.lock().expect("seen");
    let admitted_max = sample(&text, "bootfabric_gate_admitted_max", &[]).expect("admitted_max");
    let wait_count = sample(&text, "bootfabric_gate_wait_seconds_count", &[]).expect("count");
    let booted = sample(
        &text,
        "bootfabric_ledger_events_total",
        &[("phase", "booted")],
    )
    .expect("booted");
    let unplaced = sample(&text, "bootfabric_gate_unplaced_total", &[]);
    let revoked: f64 = ["idle", "timeout", "no_netboot"]
        .iter()
        .filter_map(|r| sample(&text, "bootfabric_gate_revoked_total", &[("reason", r)]))
        .sum();

    let mut sorted = waits.clone();
    sorted.sort_by(f64::total_cmp);
    let mut by_rack = Vec::new();
    let mut first = 0;
    for (rack, n) in RACKS {
        let mean = waits[first..first + n].iter().sum::<f64>() / n as f64;
        by_rack.push((rack, mean));
        first += n;
    }
    println!(
        "storm: {HOSTS} hosts in {:.1} s; wait p50 {:.2} s, p90 {:.2} s, max {:.2} s; \
         kernels in flight at most {} (client), admitted at most {admitted_max} (gate), \
         sampled {admitted_seen}/{slots_seen} over {samples} samples; mean wait by rack {by_rack:?}",
        elapsed.as_secs_f64(),
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.9),
        percentile(&sorted, 1.0),
        flight.max.load(Ordering::SeqCst),
    );

    assert!(samples > 0, "the sampler read /metrics");
    assert_eq!(slots_seen, SLOTS as f64, "the slots the config makes");
    assert!(
        flight.max.load(Ordering::SeqCst) <= SLOTS,
        "clients downloaded {} kernels at once over {SLOTS} slots",
        flight.max.load(Ordering::SeqCst)
    );
    assert!(
        admitted_max <= slots_seen && admitted_seen <= slots_seen,
        "the gate admitted {admitted_max} at once over {slots_seen} slots"
    );
    assert_eq!(booted, HOSTS as f64, "every host booted");
    assert_eq!(
        wait_count, HOSTS as f64,
        "each host admitted once, from the queue"
    );
    assert_eq!(revoked, 0.0, "no slot revoked");
    assert_eq!(
        unplaced,
        Some(0.0),
        "every host placed by its address, none let through unpaced"
    );
    let (small, big) = (by_rack[5].1, by_rack[0].1);
    assert!(
        small < big,
        "racks take turns: rack of 10 waited {small:.2} s on average, rack of 150 {big:.2} s"
    );
}

/// `GET /metrics` on this thread (already in the server's namespace).
fn scrape(admin: SocketAddr) -> Result<String, String> {
    let mut s =
        TcpStream::connect_timeout(&admin, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = String::new();
    s.read_to_string(&mut raw).map_err(|e| e.to_string())?;
    Ok(raw)
}
