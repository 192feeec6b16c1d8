//! HTTPS through the kernel's TLS (kTLS), on a kernel that has it: the daemon runs in a Debian
//! guest (QEMU, TCG, Debian's 6.1 kernel with `tls.ko`; the lab host's kernel may have no
//! kTLS), clients in the lab's namespace on the guest's tap. curl fetches files and ranges
//! byte for byte over TLS 1.3 and 1.2 with AES-GCM and ChaCha20-Poly1305; the guest's
//! `/proc/net/tls_stat` and the daemon's metrics say the kernel carried every session. A
//! client of rustls hand-built here sends its requests in the same write as its Finished (and
//! the last request's record split across writes), which the hand-over must keep; it reads a
//! `close_notify` at the end. A client that sends a forged record is cut off, and the daemon
//! goes on serving.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use bootfabric_lab::{
    bootfabric_bin, content, have_program,
    ktls_guest::{Guest, GUEST_IP},
    pki, require, require_programs, require_root, sample, wait_for, TempDir,
};

fn cache() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab-cache")
}

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
header_timeout_s = 10
tls_cert = "/srv/server.pem"
tls_key = "/srv/server.key"
"#;

/// The guest's kernel TLS counters (`/proc/net/tls_stat`), by name.
fn tls_stat(guest: &Guest) -> BTreeMap<String, u64> {
    let text = guest
        .http_get("tls_stat")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_owned(), w.next()?.parse().ok()?))
        })
        .collect()
}

fn metrics(guest: &Guest) -> String {
    guest
        .http_get("metrics")
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// `curl -v` over HTTPS: (what curl said on stderr, the body).
fn curl(guest: &Guest, ca: &Path, path: &str, args: &[&str]) -> (String, Vec<u8>) {
    let out = guest
        .ns
        .command("curl")
        .args(["-sS", "-v", "--max-time", "120", "--cacert"])
        .arg(ca)
        .args(args)
        .arg(format!("https://{GUEST_IP}/{path}"))
        .output()
        .expect("curl");
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "curl {path} {args:?}:\n{said}");
    (said, out.stdout)
}

/// A rustls client connected to the guest, its handshake done up to the point where its
/// Finished is ready to send (not sent).
fn handshaken(ca: &Path) -> (TcpStream, rustls::ClientConnection) {
    use rustls_pki_types::{pem::PemObject as _, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(cert.expect("ca cert")).expect("root");
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from(GUEST_IP).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut sock = TcpStream::connect((GUEST_IP, 443)).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    while conn.is_handshaking() {
        while conn.wants_write() {
            conn.write_tls(&mut sock).expect("write");
        }
        if conn.is_handshaking() {
            conn.read_tls(&mut sock).expect("read");
            conn.process_new_packets().expect("handshake");
        }
    }
    (sock, conn)
}

/// Reads what the server sends until `enough` says so of the plaintext, or until the end:
/// the plaintext, and whether the end was a clean `close_notify` (rustls reads 0 bytes then)
/// rather than a bare close (false also when `enough` stopped the reading).
fn read_until(
    sock: &mut TcpStream,
    conn: &mut rustls::ClientConnection,
    enough: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, bool) {
    let mut plain = Vec::new();
    loop {
        let mut buf = [0u8; 65536];
        match conn.reader().read(&mut buf) {
            Ok(0) => return (plain, true),
            Ok(n) => {
                plain.extend_from_slice(&buf[..n]);
                if enough(&plain) {
                    return (plain, false);
                }
                continue;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return (plain, false),
        }
        match conn.read_tls(sock) {
            Ok(0) | Err(_) => return (plain, false),
            Ok(_) => {
                if conn.process_new_packets().is_err() {
                    return (plain, false);
                }
            }
        }
    }
}

/// Everything until the server's `close_notify` (see [`read_until`]).
fn read_to_close(sock: &mut TcpStream, conn: &mut rustls::ClientConnection) -> (Vec<u8>, bool) {
    read_until(sock, conn, |_| false)
}

/// A range request for the initrd's first ten bytes.
fn first_ten() -> String {
    format!("GET /debian/initrd.gz HTTP/1.1\r\nHost: {GUEST_IP}\r\nRange: bytes=0-9\r\n\r\n")
}

/// A connection whose session the kernel holds: handshaken, [`first_ten`] sent with the
/// Finished and its answer read (the plaintext read, for the caller to check).
fn handed_over(ca: &Path) -> (TcpStream, rustls::ClientConnection, Vec<u8>) {
    let (mut sock, mut conn) = handshaken(ca);
    conn.writer()
        .write_all(first_ten().as_bytes())
        .expect("plaintext");
    while conn.wants_write() {
        conn.write_tls(&mut sock).expect("finished");
    }
    let (first, _) = read_until(&mut sock, &mut conn, |p| {
        responses(p).first().is_some_and(|(_, b)| b.len() == 10)
    });
    (sock, conn, first)
}

/// The responses in `plain`: (status, body) each, by `Content-Length`.
fn responses(mut plain: &[u8]) -> Vec<(u16, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(end) = plain.windows(4).position(|w| w == b"\r\n\r\n") {
        let head = String::from_utf8_lossy(&plain[..end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let body = &plain[end + 4..];
        let len = len.min(body.len());
        out.push((status, body[..len].to_vec()));
        plain = &body[len..];
    }
    out
}

#[test]
fn https_sessions_are_handed_to_the_kernel_tls_of_a_debian_guest() {
    let t = "https_sessions_are_handed_to_the_kernel_tls_of_a_debian_guest";
    if !require_root(t)
        || !require_programs(
            t,
            &["qemu-system-x86_64", "curl", "openssl", "strip", "ldd"],
        )
        || !require(
            have_program("apt-get"),
            t,
            "apt-get is missing: the guest's kernel is Debian's package",
        )
    {
        return;
    }
    let pki_dir = TempDir::new().expect("pki");
    pki::issue(
        &pki_dir.path,
        &[pki::Leaf {
            name: "server",
            cn: "bootfabric-ktls",
            ext: "subjectAltName = IP:10.77.9.2",
        }],
    )
    .expect("openssl");
    let read = |n: &str| std::fs::read(pki_dir.path.join(n)).expect(n);
    let ca = pki_dir.path.join("ca.pem");
    let linux = content(3 * 1024 * 1024 + 17, 1);
    let initrd = content(700_001, 2);
    let files = [
        ("hosts.toml", Vec::new()),
        ("server.pem", read("server.pem")),
        ("server.key", read("server.key")),
        ("images/debian/linux", linux.clone()),
        ("images/debian/initrd.gz", initrd.clone()),
    ];
    let guest = Guest::start(&cache(), &bootfabric_bin(), CONFIG, &files).expect("guest");
    // The guest's loop copies the daemon's metrics once the daemon answers.
    guest
        .wait_serving("metrics", Duration::from_secs(300))
        .expect("guest");
    let console = guest.console();
    assert!(
        console.contains("upper layer protocols:") && console.contains("tls"),
        "the guest's kernel has no kTLS:\n{console}"
    );
    let m = metrics(&guest);
    assert_eq!(
        sample(
            &m,
            "bootfabric_http_tls_data_path",
            &[("path", "kernel"), ("reason", "ktls")]
        ),
        Some(1.0),
        "{m}"
    );

    // The daemon's start-up probe made sessions of its own: count from here.
    let start = tls_stat(&guest);
    let mut sessions = 0u64;
    // Whole files and ranges, TLS 1.3 with each AEAD the kernel takes, TLS 1.2 with two.
    for (args, said) in [
        (vec![], "TLSv1.3 / TLS_AES_256_GCM_SHA384"),
        (
            vec!["--tls13-ciphers", "TLS_AES_128_GCM_SHA256"],
            "TLSv1.3 / TLS_AES_128_GCM_SHA256",
        ),
        (
            vec!["--tls13-ciphers", "TLS_CHACHA20_POLY1305_SHA256"],
            "TLSv1.3 / TLS_CHACHA20_POLY1305_SHA256",
        ),
        (
            vec![
                "--tls-max",
                "1.2",
                "--ciphers",
                "ECDHE-ECDSA-AES128-GCM-SHA256",
            ],
            "TLSv1.2 / ECDHE-ECDSA-AES128-GCM-SHA256",
        ),
        (
            vec![
                "--tls-max",
                "1.2",
                "--ciphers",
                "ECDHE-ECDSA-CHACHA20-POLY1305",
            ],
            "TLSv1.2 / ECDHE-ECDSA-CHACHA20-POLY1305",
        ),
    ] {
        let (log, body) = curl(&guest, &ca, "debian/linux", &args);
        sessions += 1;
        assert!(log.contains(said), "{args:?} did not give {said}:\n{log}");
        assert!(body == linux, "{args:?}: the body differs");
        let (_, part) = curl(
            &guest,
            &ca,
            "debian/linux",
            &[&args[..], &["-H", "Range: bytes=1000000-1065540"]].concat(),
        );
        sessions += 1;
        assert!(
            part == linux[1_000_000..=1_065_540],
            "{args:?}: the range differs"
        );
    }
    // Several requests on one connection: the kernel reads the second request too.
    let (log, _) = curl(
        &guest,
        &ca,
        "debian/linux",
        &[
            "-o",
            "/dev/null",
            &format!("https://{GUEST_IP}/debian/initrd.gz"),
        ],
    );
    sessions += 1;
    assert!(log.contains("Re-using existing connection"), "{log}");

    // Requests in the same write as the client's Finished, the second one's record split
    // across two writes: rustls decrypts some before the hand-over, the kernel the rest.
    let (plain, clean) = guest
        .ns
        .run({
            let ca = ca.clone();
            move || {
                let (mut sock, mut conn) = handshaken(&ca);
                let requests = format!(
                    "GET /debian/initrd.gz HTTP/1.1\r\nHost: {GUEST_IP}\r\nRange: bytes=0-99\r\n\r\n"
                );
                conn.writer()
                    .write_all(requests.as_bytes())
                    .expect("plaintext");
                let mut flight = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut flight).expect("records");
                }
                let mut second = Vec::new();
                conn.writer()
                    .write_all(
                        format!("GET /debian/initrd.gz HTTP/1.1\r\nHost: {GUEST_IP}\r\nRange: bytes=100-199\r\nConnection: close\r\n\r\n")
                            .as_bytes(),
                    )
                    .expect("plaintext");
                while conn.wants_write() {
                    conn.write_tls(&mut second).expect("records");
                }
                // The Finished, the first request and 7 bytes of the second one's record.
                flight.extend_from_slice(&second[..7]);
                sock.write_all(&flight).expect("flight");
                std::thread::sleep(Duration::from_millis(500));
                sock.write_all(&second[7..]).expect("rest");
                read_to_close(&mut sock, &mut conn)
            }
        })
        .expect("client namespace");
    sessions += 1;
    let got = responses(&plain);
    assert_eq!(got.len(), 2, "{}", String::from_utf8_lossy(&plain));
    assert_eq!(got[0], (206, initrd[..100].to_vec()));
    assert_eq!(got[1], (206, initrd[100..200].to_vec()));
    assert!(clean, "the daemon closed without a close_notify");

    // A forged record once the kernel has the session (a request answered first): the kernel
    // fails to decrypt it, the connection ends, nothing more is answered.
    let before = tls_stat(&guest);
    let (first, answered) = guest
        .ns
        .run({
            let ca = ca.clone();
            move || {
                let (mut sock, mut conn, first) = handed_over(&ca);
                let mut forged = vec![23u8, 3, 3, 0, 64];
                forged.extend((0..64u8).map(|i| i.wrapping_mul(37)));
                sock.write_all(&forged).expect("forged");
                let (more, _) = read_to_close(&mut sock, &mut conn);
                (first, more)
            }
        })
        .expect("client namespace");
    assert_eq!(responses(&first), vec![(206, initrd[..10].to_vec())]);
    sessions += 1;
    assert!(answered.is_empty(), "a forged record was answered");

    // A key update once the kernel has the session (this kernel does not rekey kTLS): the
    // kernel hands the record to the daemon as an error, and the daemon closes the
    // connection rather than read on; the request after it is not answered. Closed, not
    // left open: a daemon that retried the read would hold the connection (and a core).
    let (first, ended) = guest
        .ns
        .run({
            let ca = ca.clone();
            move || {
                let (mut sock, mut conn, first) = handed_over(&ca);
                conn.refresh_traffic_keys().expect("key update");
                conn.writer()
                    .write_all(first_ten().as_bytes())
                    .expect("plaintext");
                while conn.wants_write() {
                    conn.write_tls(&mut sock).expect("key update");
                }
                // Raw bytes until the end: any answer would be records here.
                let mut rest = Vec::new();
                let ended = loop {
                    let mut b = [0u8; 4096];
                    match sock.read(&mut b) {
                        Ok(0) => break Ok(rest),
                        Ok(n) => rest.extend_from_slice(&b[..n]),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                            break Ok(rest)
                        }
                        Err(e) => break Err(e.to_string()),
                    }
                };
                (first, ended)
            }
        })
        .expect("client namespace");
    assert_eq!(responses(&first), vec![(206, initrd[..10].to_vec())]);
    sessions += 1;
    let rest = ended.expect("the daemon closed the connection after the key update");
    // At most an alert and the TLS 1.3 tickets' kin; never a response (over 10 bytes of
    // body and its head, well past 100 bytes of records).
    assert!(
        rest.len() < 100,
        "{} bytes after the key update",
        rest.len()
    );

    // Every session went to the kernel; the kernel says so too.
    let counted = wait_for(Duration::from_secs(30), || {
        let m = metrics(&guest);
        let kernel = sample(
            &m,
            "bootfabric_http_tls_sessions_total",
            &[("path", "kernel")],
        );
        (kernel == Some(sessions as f64)).then_some(m)
    });
    let m = counted.unwrap_or_else(|| metrics(&guest));
    assert_eq!(
        sample(
            &m,
            "bootfabric_http_tls_sessions_total",
            &[("path", "kernel")]
        ),
        Some(sessions as f64),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            "bootfabric_http_tls_sessions_total",
            &[("path", "userspace")]
        ),
        None,
        "{m}"
    );
    let stat = wait_for(Duration::from_secs(30), || {
        let s = tls_stat(&guest);
        (s.get("TlsDecryptError") > before.get("TlsDecryptError")).then_some(s)
    })
    .unwrap_or_else(|| tls_stat(&guest));
    assert!(
        ["TlsTxSw", "TlsRxSw"].iter().all(|k| {
            stat.get(*k).copied().unwrap_or(0) - start.get(*k).copied().unwrap_or(0) >= sessions
        }),
        "{sessions} sessions: {start:?} then {stat:?}"
    );
    assert!(
        stat.get("TlsDecryptError") > before.get("TlsDecryptError"),
        "the forged record was not refused by the kernel: {stat:?}"
    );
    // The daemon goes on serving.
    let (_, body) = curl(&guest, &ca, "debian/initrd.gz", &[]);
    assert!(body == initrd);
    // For the record (shown with --nocapture): the guest's own lines and the kernel's counters.
    for l in guest
        .console()
        .lines()
        .filter(|l| l.contains("ktls-guest") || l.contains("HTTPS"))
    {
        eprintln!("guest: {l}");
    }
    eprintln!("guest: /proc/net/tls_stat {stat:?}");
}
