//! bench/https-ktls's runner: Bootfabric against nginx, both handing HTTPS sessions to the
//! kernel's TLS, in one QEMU guest (TCG, one vCPU) on Debian 12's kernel, which has kTLS (the
//! lab host's kernel may not). wrk fetches over the guest's tap from the lab's namespace, the
//! servers taking turns (the order flips every repeat). Each measurement reads the guest's
//! `/proc/stat` before and after (through a CGI of busybox's httpd in the guest) for the
//! guest's busy CPU time, and `/proc/net/tls_stat` to check that both servers' sessions went
//! to the kernel. Prints raw lines on stdout; writes `table.md` into the results folder.
//!
//! Usage: `ktls_bench <results folder> <daemon> <duration s> <repeats> <rows>`, rows as
//! `image:1 range:1 image:8` (request kind and connections).

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use bootfabric_lab::{
    content,
    ktls_guest::{Guest, GUEST_IP},
    pki, TempDir,
};

/// The image both serve (16 MiB: whole GETs complete within a run at TCG speed).
const IMAGE_MIB: usize = 16;

const CONFIG: &str = r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["guest0"] # the guest's NIC, ktls_guest::GUEST_IF
[admin]
listen = "127.0.0.1:9370"
[xdp]
mode = "off"
[http]
root = "/srv/images"
tls_cert = "/srv/server.pem"
tls_key = "/srv/server.key"
"#;

/// nginx as bench/http runs it, on port 8443 with `Options KTLS`, and on 8444 without.
const NGINX: &str = r#"worker_processes 1;
daemon on;
user root;
pid /run/nginx.pid;
error_log stderr warn;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  tcp_nopush on;
  tcp_nodelay on;
  open_file_cache max=1000 inactive=60s;
  open_file_cache_valid 60s;
  open_file_cache_min_uses 1;
  keepalive_requests 1000000;
  default_type application/octet-stream;
  server {
    listen 8443 ssl;
    ssl_certificate /srv/server.pem;
    ssl_certificate_key /srv/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_conf_command Options KTLS;
    root /srv/images;
  }
  # The same without kTLS: OpenSSL makes the records in nginx (SSL_write, no sendfile).
  server {
    listen 8444 ssl;
    ssl_certificate /srv/server.pem;
    ssl_certificate_key /srv/server.key;
    ssl_protocols TLSv1.2 TLSv1.3;
    root /srv/images;
  }
}
"#;

/// Run after the daemon starts: nginx, and busybox's httpd on port 8080 with the CGI that
/// reads the guest's counters.
const MORE_INIT: &str = r#"#!/bin/sh
echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
echo "root:x:0:" > /etc/group
mkdir -p /var/lib/nginx /var/log/nginx /run
/usr/sbin/nginx -c /srv/nginx.conf -e stderr > /dev/console 2>&1
httpd -p 8080 -h /www
echo "ktls-guest: nginx and the counters' httpd started"
"#;

const STAT_CGI: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nhead -1 /proc/stat\ncat /proc/net/tls_stat\n";

/// The implementations registered in the guest's crypto API for the AEADs kTLS asked for
/// (the highest priority of each name is the one used): the kernel's share of the comparison
/// is only fair with the CPU's AES-NI and CLMUL in use, as OpenSSL's is.
const CRYPTO_CGI: &str = "#!/bin/sh\necho 'Content-Type: text/plain'\necho\nawk '/^name/ {n = $3} /^driver/ {print n \" \" $3}' /proc/crypto | grep -E '^(gcm|rfc4106|rfc7539|chacha|aes|ghash)' | sort -u\n";

/// 1 MiB ranges at random whole-MiB offsets, as bench/http's.
const RANGE_LUA: &str = r#"local mib = 1048576
request = function()
  local at = math.random(0, 15) * mib
  return wrk.format("GET", nil, { ["Range"] = "bytes=" .. at .. "-" .. (at + mib - 1) })
end
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, results, daemon, duration, repeats, rows] = &args[..] else {
        eprintln!("usage: ktls_bench <results folder> <daemon> <duration s> <repeats> <rows>");
        std::process::exit(2);
    };
    let (Ok(duration), Ok(repeats)) = (duration.parse::<u64>(), repeats.parse::<usize>()) else {
        eprintln!("duration and repeats are numbers");
        std::process::exit(2);
    };
    if let Err(e) = run(
        Path::new(results),
        Path::new(daemon),
        duration,
        repeats,
        rows,
    ) {
        eprintln!("ktls_bench: {e}");
        std::process::exit(1);
    }
}

/// One measurement: (MiB/s, guest busy CPU seconds per GiB, requests, slowest response).
struct Measured {
    mib_s: f64,
    cpu_per_gib: f64,
    busy: f64,
    requests: u64,
    slowest: String,
}

fn run(
    results: &Path,
    daemon: &Path,
    duration: u64,
    repeats: usize,
    rows: &str,
) -> Result<(), String> {
    let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/lab-cache");
    let pki_dir = TempDir::new()?;
    pki::issue(
        &pki_dir.path,
        &[pki::Leaf {
            name: "server",
            cn: "bootfabric-ktls-bench",
            ext: "subjectAltName = IP:10.77.9.2",
        }],
    )?;
    let read = |n: &str| std::fs::read(pki_dir.path.join(n)).map_err(|e| format!("{n}: {e}"));
    let files = vec![
        ("srv/hosts.toml".to_owned(), 0o644, Vec::new()),
        ("srv/server.pem".to_owned(), 0o644, read("server.pem")?),
        ("srv/server.key".to_owned(), 0o600, read("server.key")?),
        (
            "srv/images/rack/image.bin".to_owned(),
            0o644,
            content(IMAGE_MIB << 20, 7),
        ),
        (
            "srv/nginx.conf".to_owned(),
            0o644,
            NGINX.as_bytes().to_vec(),
        ),
        (
            "srv/more-init".to_owned(),
            0o755,
            MORE_INIT.as_bytes().to_vec(),
        ),
        (
            "www/cgi-bin/stat".to_owned(),
            0o755,
            STAT_CGI.as_bytes().to_vec(),
        ),
        (
            "www/cgi-bin/crypto".to_owned(),
            0o755,
            CRYPTO_CGI.as_bytes().to_vec(),
        ),
    ];
    let nginx = Path::new("/usr/sbin/nginx");
    let guest = Guest::start_with(&cache, daemon, CONFIG, &files, &[nginx])?;
    guest.wait_serving("metrics", Duration::from_secs(300))?;
    let work = TempDir::new()?;
    let lua = work.path.join("range.lua");
    std::fs::write(&lua, RANGE_LUA).map_err(|e| e.to_string())?;
    let servers = [
        ("bootfabric", 443u16),
        ("nginx", 8443),
        ("nginx-openssl", 8444),
    ];
    // Bootfabric and nginx on 8443 hand their sessions to the kernel: each fetch adds a
    // kernel TX session; nginx on 8444 adds none.
    for (name, port) in servers {
        let before = counters(&guest)?.1;
        let out = guest
            .ns
            .command("curl")
            .args(["-sS", "-v", "-k", "-o", "/dev/null"])
            .arg(format!("https://{GUEST_IP}:{port}/rack/image.bin"))
            .output()
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(format!(
                "{name} did not serve: {}\n{}",
                String::from_utf8_lossy(&out.stderr),
                guest.console()
            ));
        }
        let said = String::from_utf8_lossy(&out.stderr);
        if let Some(l) = said.lines().find(|l| l.contains("SSL connection using")) {
            println!("{name}: {}", l.trim_start_matches(['*', ' ']));
        }
        let after = counters(&guest)?.1;
        let sessions = after.get("TlsTxSw").unwrap_or(&0) - before.get("TlsTxSw").unwrap_or(&0);
        println!("kernel TLS: {name}: {sessions} kernel TX session(s) for one fetch");
        if (sessions == 0) != (name == "nginx-openssl") {
            return Err(format!("{name}: {sessions} kernel TX sessions: {after:?}"));
        }
    }
    let crypto = guest
        .get(&format!("http://{GUEST_IP}:8080/cgi-bin/crypto"), 20)
        .unwrap_or_default();
    let drivers = String::from_utf8_lossy(&crypto).into_owned();
    println!(
        "guest crypto, registered (algorithm driver): {}",
        drivers.lines().collect::<Vec<_>>().join(" | ")
    );
    // kTLS asks for `gcm(aes)`; with `aesni_intel` loaded its instance is `generic-gcm-aesni`.
    if !drivers.lines().any(|l| l == "gcm(aes) generic-gcm-aesni") {
        return Err(format!(
            "the guest's kernel has no AES-NI gcm(aes) (registered: {drivers:?}): the comparison with OpenSSL on AES-NI would not be fair"
        ));
    }
    println!(
        "guest: {}",
        guest
            .console()
            .lines()
            .filter(|l| l.contains("ktls-guest:"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let mut all: BTreeMap<(String, &str), Vec<Measured>> = BTreeMap::new();
    for r in 0..repeats {
        for row in rows.split_whitespace() {
            let mut order = servers.to_vec();
            if r % 2 == 1 {
                order.reverse();
            }
            for (name, port) in order {
                let m = measure(&guest, row, port, duration, &lua)?;
                println!(
                    "repeat {r} row {row} server {name}: {:.1} MiB/s, {} requests, guest busy {:.2} s, {:.2} s/GiB, slowest {}",
                    m.mib_s, m.requests, m.busy, m.cpu_per_gib, m.slowest
                );
                all.entry((row.to_owned(), name)).or_default().push(m);
            }
        }
    }
    let mut table = String::from(
        "| request | connections | repeats | Bootfabric (kTLS) | nginx (kTLS) | ratio, median of repeats | range | nginx (OpenSSL) | ratio, median of repeats | Bootfabric CPU | nginx (kTLS) CPU | nginx (OpenSSL) CPU |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for row in rows.split_whitespace() {
        let got = |name: &'static str| all.get(&(row.to_owned(), name));
        let (Some(b), Some(n), Some(o)) = (got("bootfabric"), got("nginx"), got("nginx-openssl"))
        else {
            continue;
        };
        let ratios = |peer: &[Measured]| -> Vec<f64> {
            b.iter().zip(peer).map(|(b, p)| b.mib_s / p.mib_s).collect()
        };
        let rate = |v: &[Measured]| median(v.iter().map(|m| m.mib_s).collect());
        let cpu = |v: &[Measured]| median(v.iter().map(|m| m.cpu_per_gib).collect());
        let kernel = ratios(n);
        let (kind, conns) = row.split_once(':').unwrap_or((row, "1"));
        table.push_str(&format!(
            "| https-{kind} | {conns} | {} | {:.1} MiB/s | {:.1} MiB/s | {:.2} | {:.2}–{:.2} | {:.1} MiB/s | {:.2} | {:.1} s/GiB | {:.1} s/GiB | {:.1} s/GiB |\n",
            b.len(),
            rate(b),
            rate(n),
            median(kernel.clone()),
            kernel.iter().copied().fold(f64::MAX, f64::min),
            kernel.iter().copied().fold(f64::MIN, f64::max),
            rate(o),
            median(ratios(o)),
            cpu(b),
            cpu(n),
            cpu(o),
        ));
    }
    // What the servers logged in the guest (nginx's errors, the daemon's warnings).
    for l in guest.console().lines().filter(|l| {
        ["[error]", "[crit]", "[alert]", "[warn]", "WARN", "ERROR"]
            .iter()
            .any(|w| l.contains(w))
    }) {
        println!("guest console: {l}");
    }
    print!("{table}");
    std::fs::write(results.join("table.md"), table).map_err(|e| e.to_string())?;
    Ok(())
}

/// The guest's busy CPU seconds so far (user, nice, system, irq, softirq of `/proc/stat`, at
/// 100 ticks a second) and its kernel TLS counters.
fn counters(guest: &Guest) -> Result<(f64, BTreeMap<String, u64>), String> {
    let out = guest
        .get(&format!("http://{GUEST_IP}:8080/cgi-bin/stat"), 20)
        .unwrap_or_default();
    let text = String::from_utf8_lossy(&out);
    let mut lines = text.lines();
    let cpu: Vec<u64> = lines
        .next()
        .filter(|l| l.starts_with("cpu "))
        .ok_or_else(|| format!("no /proc/stat from the guest: {text}"))?
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .filter_map(|i| cpu.get(*i))
        .sum::<u64>() as f64
        / 100.0;
    let tls = lines
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect();
    Ok((busy, tls))
}

fn measure(
    guest: &Guest,
    row: &str,
    port: u16,
    duration: u64,
    lua: &Path,
) -> Result<Measured, String> {
    let (kind, conns) = row
        .split_once(':')
        .ok_or(format!("row {row}: kind:connections"))?;
    let mut cmd = guest.ns.command("wrk");
    cmd.args(["-t1", &format!("-c{conns}"), &format!("-d{duration}s")])
        .args(["--timeout", &format!("{}s", duration + 30), "--latency"]);
    match kind {
        "image" => {}
        "range" => {
            cmd.arg("-s").arg(lua);
        }
        other => return Err(format!("row {row}: no request kind {other}")),
    }
    cmd.arg(format!("https://{GUEST_IP}:{port}/rack/image.bin"));
    let (busy0, _) = counters(guest)?;
    let out = cmd.output().map_err(|e| format!("wrk: {e}"))?;
    let (busy1, _) = counters(guest)?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    for l in text
        .lines()
        .chain(String::from_utf8_lossy(&out.stderr).lines())
    {
        println!("  wrk: {l}");
    }
    // "N requests in 10.01s, 1.23GB read"
    let line = text
        .lines()
        .find(|l| l.contains("requests in"))
        .ok_or_else(|| format!("wrk said:\n{text}{}", String::from_utf8_lossy(&out.stderr)))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let requests = words.first().and_then(|w| w.parse().ok()).unwrap_or(0);
    let secs: f64 = words
        .get(3)
        .and_then(|w| w.trim_end_matches(',').trim_end_matches('s').parse().ok())
        .ok_or_else(|| format!("wrk line: {line}"))?;
    let bytes = words
        .get(4)
        .and_then(|w| size(w))
        .ok_or_else(|| format!("wrk line: {line}"))?;
    let slowest = text
        .lines()
        .find(|l| l.trim_start().starts_with("Latency"))
        .and_then(|l| l.split_whitespace().nth(3))
        .unwrap_or("?")
        .to_owned();
    let gib = bytes / f64::from(1u32 << 30);
    let busy = busy1 - busy0;
    Ok(Measured {
        mib_s: bytes / f64::from(1u32 << 20) / secs,
        cpu_per_gib: if gib > 0.0 { busy / gib } else { f64::NAN },
        busy,
        requests,
        slowest,
    })
}

/// wrk's sizes: `1.23GB`, `512.00MB`, `10KB`, `100B` (powers of 1024).
fn size(word: &str) -> Option<f64> {
    let split = word.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = word.split_at(split);
    let n: f64 = n.parse().ok()?;
    let scale = match unit {
        "B" => 1.0,
        "KB" => 1024.0,
        "MB" => 1024.0 * 1024.0,
        "GB" => 1024.0 * 1024.0 * 1024.0,
        "TB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        _ => return None,
    };
    Some(n * scale)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}
