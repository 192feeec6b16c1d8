//! The event log seen from outside: an SSE client (a raw TCP stream, chunked and SSE framing
//! decoded here) and a webhook receiver (a minimal HTTP/1.1 server that checks every signature
//! with the `hmac` crate, never the daemon's code) follow the boots of a machine on the
//! provisioning network, and must see the same events, in order, once each; the receiver's 500
//! to the first delivery is retried; a reader that reconnects with `Last-Event-ID` gets
//! exactly what it missed.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    os::unix::fs::PermissionsExt as _,
    sync::mpsc,
    time::Duration,
};

use bootfabric_lab::{
    http_get, require_programs, require_root, sample, wait_for, Bridge, Daemon, Netns, TempDir,
};
use hmac::{Hmac, Mac as _};
use sha2::Sha256;

const INVENTORY: &str = r#"
[profiles.installer]
kernel = "debian/linux"

[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.2"
profile = "installer"
"#;

const SECRET: &str = "lab-webhook-secret-0123456789";

/// A bound on every wait (never a timing check).
const BOUND: Duration = Duration::from_secs(60);

/// One SSE event: `id:`, `event:`, `data:`.
#[derive(Clone, Debug, PartialEq)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: String,
}

/// An SSE client on a raw TCP stream: the HTTP head, then chunked transfer coding, then SSE
/// framing, all decoded here.
struct SseClient {
    reader: BufReader<TcpStream>,
    /// Decoded body bytes not yet split into events.
    pending: String,
}

impl SseClient {
    fn connect(ns: &Netns, admin: SocketAddr, last_event_id: Option<u64>) -> Self {
        let stream = ns
            .run(move || TcpStream::connect_timeout(&admin, BOUND))
            .expect("namespace")
            .expect("connect");
        stream.set_read_timeout(Some(BOUND)).expect("timeout");
        let mut s = stream.try_clone().expect("clone");
        let header = last_event_id.map_or(String::new(), |id| format!("Last-Event-ID: {id}\r\n"));
        write!(
            s,
            "GET /api/v1/events HTTP/1.1\r\nHost: {admin}\r\nAccept: text/event-stream\r\n{header}\r\n"
        )
        .expect("request");
        let mut reader = BufReader::new(stream);
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        let mut chunked = false;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            let lower = line.to_ascii_lowercase();
            chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
            if lower.starts_with("content-type:") {
                assert!(lower.contains("text/event-stream"), "{line}");
            }
        }
        assert!(chunked, "a stream of unknown length is chunked");
        Self {
            reader,
            pending: String::new(),
        }
    }

    /// The next chunk's bytes, appended to `pending`.
    fn read_chunk(&mut self) {
        let mut size = String::new();
        self.reader.read_line(&mut size).expect("chunk size");
        let size = usize::from_str_radix(size.trim(), 16).expect("hex chunk size");
        assert!(size > 0, "the stream ended");
        let mut data = vec![0; size + 2];
        self.reader.read_exact(&mut data).expect("chunk");
        assert_eq!(&data[size..], b"\r\n");
        self.pending
            .push_str(std::str::from_utf8(&data[..size]).expect("utf-8"));
    }

    /// The next event (comments and `retry:` skipped).
    fn next(&mut self) -> Sse {
        loop {
            while let Some(end) = self.pending.find("\n\n") {
                let block: String = self.pending.drain(..end + 2).collect();
                let mut e = Sse {
                    id: None,
                    event: "message".to_owned(),
                    data: String::new(),
                };
                let mut any = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("id: ") {
                        e.id = Some(v.parse().expect("numeric id"));
                    } else if let Some(v) = line.strip_prefix("event: ") {
                        e.event = v.to_owned();
                        any = true;
                    } else if let Some(v) = line.strip_prefix("data: ") {
                        e.data.push_str(v);
                        any = true;
                    }
                }
                if any {
                    return e;
                }
            }
            self.read_chunk();
        }
    }
}

/// One delivery as the receiver saw it.
#[derive(Debug)]
struct Delivery {
    event_id: u64,
    timestamp: String,
    signature: String,
    body: String,
    /// What the receiver answered.
    answered: u16,
}

/// A webhook receiver in `ns` on 127.0.0.1: answers 500 to the very first delivery and 204 to
/// every later one, and sends each delivery down the channel.
fn receiver(ns: &Netns) -> (SocketAddr, mpsc::Receiver<Delivery>) {
    let listener = ns
        .run(|| TcpListener::bind("127.0.0.1:0"))
        .expect("namespace")
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut first = true;
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            conn.set_read_timeout(Some(BOUND)).expect("timeout");
            let mut reader = BufReader::new(conn.try_clone().expect("clone"));
            let mut request = String::new();
            reader.read_line(&mut request).expect("request line");
            assert!(
                request.starts_with("POST /hooks/boot HTTP/1.1"),
                "{request}"
            );
            let (mut len, mut event_id, mut timestamp, mut signature) =
                (0, 0, String::new(), String::new());
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("header");
                if line == "\r\n" {
                    break;
                }
                let (k, v) = line.split_once(':').expect("header line");
                let v = v.trim().to_owned();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.parse().expect("length"),
                    "bootfabric-event-id" => event_id = v.parse().expect("event id"),
                    "bootfabric-timestamp" => timestamp = v,
                    "bootfabric-signature" => signature = v,
                    _ => {}
                }
            }
            let mut body = vec![0; len];
            reader.read_exact(&mut body).expect("body");
            let answered = if first { 500 } else { 204 };
            first = false;
            let mut w = conn;
            let _ = write!(
                w,
                "HTTP/1.1 {answered} X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            );
            let d = Delivery {
                event_id,
                timestamp,
                signature,
                body: String::from_utf8(body).expect("utf-8"),
                answered,
            };
            if tx.send(d).is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// Whether `d`'s signature is HMAC-SHA256(SECRET, "{timestamp}.{body}"), checked with the
/// `hmac` crate.
fn signed(d: &Delivery) -> bool {
    let Some(hex) = d.signature.strip_prefix("sha256=") else {
        return false;
    };
    let Some(sig) = (0..hex.len())
        .step_by(2)
        .map(|i| {
            hex.get(i..i + 2)
                .and_then(|b| u8::from_str_radix(b, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()
    else {
        return false;
    };
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("key");
    mac.update(format!("{}.", d.timestamp).as_bytes());
    mac.update(d.body.as_bytes());
    mac.verify_slice(&sig).is_ok()
}

fn curl(client: &Netns, path: &str, args: &[&str]) -> u16 {
    let out = client
        .command("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .arg(format!("http://10.77.0.1{path}"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "curl {path}");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("status")
}

/// One boot of node01 as its machine makes it: script, kernel, the installed system's callback.
fn boot(client: &Netns) {
    assert_eq!(curl(client, "/boot.ipxe", &[]), 200);
    assert_eq!(curl(client, "/debian/linux", &[]), 200);
    assert_eq!(curl(client, "/booted", &["-X", "POST"]), 204);
}

/// (type, phase) of an event's JSON.
fn shape(data: &str) -> (String, String) {
    let v: serde_json::Value = serde_json::from_str(data).expect("event json");
    assert_eq!(v["host"], "node01");
    assert_eq!(v["mac"], "52:54:00:b0:0f:01");
    (
        v["type"].as_str().expect("type").to_owned(),
        v["data"]["phase"].as_str().unwrap_or("").to_owned(),
    )
}

#[test]
fn sse_and_a_signed_webhook_see_each_boot_event_once_in_order() {
    let t = "sse_and_a_signed_webhook_see_each_boot_event_once_in_order";
    if !require_root(t) || !require_programs(t, &["curl"]) {
        return;
    }
    let dir = TempDir::new().expect("dir");
    let images = dir.path.join("images");
    std::fs::create_dir_all(images.join("debian")).expect("images");
    std::fs::write(images.join("debian/linux"), b"kernel").expect("kernel");
    let secret = dir.path.join("webhook.secret");
    std::fs::write(&secret, format!("{SECRET}\n")).expect("secret");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let mut switch = Bridge::new().expect("switch");
    let server = Netns::new("srv").expect("server");
    let client = Netns::new("node01").expect("client");
    switch
        .plug(&server, "fabric0", "10.77.0.1/24")
        .expect("server port");
    switch
        .plug(&client, "client0", "10.77.0.2/24")
        .expect("client port");
    let (hook, deliveries) = receiver(&server);
    let config = format!(
        "[daemon]\nstate_dir = \"state\"\ninventory = \"hosts.toml\"\n[fabric]\ninterfaces = [\"fabric0\"]\n\
         [admin]\nlisten = \"127.0.0.1:0\"\n[xdp]\nmode = \"off\"\n\
         [http]\nroot = \"{}\"\nbackend = \"epoll\"\n\
         [[webhooks]]\nname = \"lab\"\nurl = \"http://{hook}/hooks/boot\"\nsecret_file = \"{}\"\n\
         events = [\"host.phase\", \"host.booted\", \"host.failed\"]\ntimeout_s = 5\n",
        images.display(),
        secret.display()
    );
    let daemon = Daemon::start(&server, &config, &[("hosts.toml", INVENTORY)]).expect("daemon");

    // Live from now: the stream is open (its `retry:` came) before the first boot.
    let mut sse = SseClient::connect(&server, daemon.admin, None);
    boot(&client);
    let first: Vec<Sse> = (0..3).map(|_| sse.next()).collect();
    let kinds: Vec<(String, String)> = first.iter().map(|e| shape(&e.data)).collect();
    let expected = [
        ("host.phase".to_owned(), "script".to_owned()),
        ("host.phase".to_owned(), "kernel".to_owned()),
        ("host.booted".to_owned(), String::new()),
    ];
    assert_eq!(kinds, expected);
    for e in &first {
        let (t, _) = shape(&e.data);
        assert_eq!(e.event, t, "event: names the type");
    }
    // The stream drops (the controller restarts); a second boot happens meanwhile.
    drop(sse);
    boot(&client);
    let last_seen = first[2].id.expect("id");
    let mut resumed = SseClient::connect(&server, daemon.admin, Some(last_seen));
    let second: Vec<Sse> = (0..3).map(|_| resumed.next()).collect();
    let kinds: Vec<(String, String)> = second.iter().map(|e| shape(&e.data)).collect();
    assert_eq!(
        kinds, expected,
        "the resumed stream replays exactly the second boot"
    );

    // Ids: strictly increasing and consecutive on the unfiltered stream, no duplicates.
    let ids: Vec<u64> = first
        .iter()
        .chain(&second)
        .map(|e| e.id.expect("id"))
        .collect();
    assert!(
        ids.windows(2).all(|w| w[1] == w[0] + 1),
        "ids not consecutive: {ids:?}"
    );

    // The receiver: the first delivery refused with 500 and retried, then every event once,
    // in the same order as SSE, every signature valid.
    let mut got = Vec::new();
    while got.iter().filter(|d: &&Delivery| d.answered == 204).count() < ids.len() {
        got.push(deliveries.recv_timeout(BOUND).expect("a webhook delivery"));
    }
    assert!(
        got.iter().all(signed),
        "a signature did not verify: {got:?}"
    );
    assert_eq!(got[0].answered, 500);
    assert_eq!(
        got[0].event_id, got[1].event_id,
        "the 500 was retried, same event"
    );
    assert_eq!(got[0].body, got[1].body);
    let delivered: Vec<u64> = got
        .iter()
        .filter(|d| d.answered == 204)
        .map(|d| d.event_id)
        .collect();
    assert_eq!(
        delivered, ids,
        "the hook saw what SSE saw, in order, once each"
    );
    for (d, e) in got
        .iter()
        .filter(|d| d.answered == 204)
        .zip(first.iter().chain(&second))
    {
        assert_eq!(d.body, e.data, "the webhook body is the SSE data");
    }
    // A forged signature would not pass the same check.
    let forged = Delivery {
        event_id: got[1].event_id,
        timestamp: got[1].timestamp.clone(),
        signature: got[1].signature.clone(),
        body: got[1].body.replace("node01", "node02"),
        answered: 0,
    };
    assert!(!signed(&forged));

    // The receiver records a delivery before its 204 reaches the daemon, which counts the
    // delivery only then: wait (bounded) for the count to catch up with what was received.
    let scrape = || {
        http_get(&server, daemon.admin, "/metrics")
            .expect("metrics")
            .1
    };
    let delivered_count = |m: &str| {
        sample(
            m,
            "bootfabric_webhook_deliveries_total",
            &[("hook", "lab"), ("outcome", "delivered")],
        )
    };
    let metrics = wait_for(BOUND, || {
        let m = scrape();
        (delivered_count(&m) == Some(ids.len() as f64)).then_some(m)
    })
    .unwrap_or_else(scrape);
    let count = |outcome| {
        sample(
            &metrics,
            "bootfabric_webhook_deliveries_total",
            &[("hook", "lab"), ("outcome", outcome)],
        )
    };
    assert_eq!(count("retried"), Some(1.0));
    assert_eq!(count("delivered"), Some(ids.len() as f64));
    assert_eq!(count("gave_up"), Some(0.0));
}
