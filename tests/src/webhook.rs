//! A webhook receiver: an HTTP/1.1 listener inside a namespace of the lab that records every
//! delivery (headers, body, what it answered), answers 500 to the first `fail_first` ones (so
//! the daemon's retry is exercised: a retry must not turn into a duplicate) and 200 after.
//!
//! [`verify`] checks `Bootfabric-Signature: sha256=<hex HMAC-SHA256(secret,
//! "{timestamp}.{body}")>` with the RustCrypto `hmac` crate, never with the daemon's code, so a
//! daemon that signs the wrong bytes fails here.

use std::{
    io::{BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{
    api::{read_body, read_head, Head},
    wait_for, LabError, Netns,
};

/// One POST the receiver got.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// Its head (request line and headers).
    pub head: Head,
    /// Its body.
    pub body: Vec<u8>,
    /// The status the receiver answered.
    pub answered: u16,
}

impl Delivery {
    /// The body as JSON.
    pub fn json(&self) -> Option<serde_json::Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The event id in the body.
    pub fn id(&self) -> Option<u64> {
        self.json()?.get("id")?.as_u64()
    }

    /// Accepted (answered 2xx).
    pub fn accepted(&self) -> bool {
        (200..300).contains(&self.answered)
    }
}

/// The running receiver; stops on drop.
pub struct Receiver {
    /// Where it listens.
    pub addr: SocketAddr,
    deliveries: Arc<Mutex<Vec<Delivery>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Listens on `bind` (e.g. `10.78.0.2:0`) inside `ns`; the first `fail_first` deliveries
    /// get 500.
    pub fn start(ns: &Netns, bind: &str, fail_first: usize) -> Result<Receiver, LabError> {
        let bind = bind.to_owned();
        let listener = ns
            .run(move || TcpListener::bind(&bind))?
            .map_err(|e| format!("webhook receiver bind: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let deliveries = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicUsize::new(fail_first));
        let (sink, halt) = (Arc::clone(&deliveries), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut conns = Vec::new();
            while !halt.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((s, _)) => {
                        let (sink, failures) = (Arc::clone(&sink), Arc::clone(&failures));
                        conns.push(std::thread::spawn(move || serve(s, &sink, &failures)));
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => break,
                }
            }
            // Connection threads end at their peer's close or their read timeout.
            drop(conns);
        });
        Ok(Receiver {
            addr,
            deliveries,
            stop,
            thread: Some(thread),
        })
    }

    /// Every delivery so far, in arrival order.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.deliveries
            .lock()
            .map(|d| d.clone())
            .unwrap_or_default()
    }

    /// Waits (at most `bound`) until `done` holds for the deliveries so far.
    pub fn wait(
        &self,
        bound: Duration,
        done: impl Fn(&[Delivery]) -> bool,
    ) -> Result<Vec<Delivery>, LabError> {
        wait_for(bound, || {
            let d = self.deliveries();
            done(&d).then_some(d)
        })
        .ok_or_else(|| {
            format!(
                "the webhook receiver did not get there within {bound:?}; it has:\n{}",
                self.deliveries()
                    .iter()
                    .map(|d| format!("{} {}", d.answered, String::from_utf8_lossy(&d.body)))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        })
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answers requests on one connection until the peer closes it (keep-alive allowed).
fn serve(s: TcpStream, sink: &Mutex<Vec<Delivery>>, failures: &AtomicUsize) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
    let Ok(mut out) = s.try_clone() else {
        return;
    };
    let mut r = BufReader::new(s);
    loop {
        let Ok(Some(head)) = read_head(&mut r) else {
            return;
        };
        let Ok(body) = read_body_of_request(&head, &mut r) else {
            return;
        };
        let fail = failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        let answered = if fail { 500 } else { 200 };
        if let Ok(mut d) = sink.lock() {
            d.push(Delivery {
                head,
                body,
                answered,
            });
        }
        let reason = if fail { "Internal Server Error" } else { "OK" };
        let reply = format!("HTTP/1.1 {answered} {reason}\r\nContent-Length: 0\r\n\r\n");
        if out.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// A request without `Content-Length` or chunks has no body (RFC 9112 §6.3), unlike a
/// response.
fn read_body_of_request(head: &Head, r: &mut BufReader<TcpStream>) -> Result<Vec<u8>, LabError> {
    if head.chunked() || head.content_length().is_some() {
        read_body(head, r)
    } else {
        Ok(Vec::new())
    }
}

/// Checks a delivery's signature: `Bootfabric-Signature: sha256=<hex>` over
/// `"{Bootfabric-Timestamp}.{body}"` with `secret`, and that `Bootfabric-Event-Id` is the
/// body's id. The error says what is wrong.
pub fn verify(secret: &[u8], d: &Delivery) -> Result<(), LabError> {
    let ts = d
        .head
        .header("bootfabric-timestamp")
        .ok_or("no Bootfabric-Timestamp")?;
    ts.parse::<u64>()
        .map_err(|_| format!("Bootfabric-Timestamp {ts:?} is not unix seconds"))?;
    let sig = d
        .head
        .header("bootfabric-signature")
        .ok_or("no Bootfabric-Signature")?;
    let hex = sig
        .strip_prefix("sha256=")
        .ok_or_else(|| format!("signature {sig:?} lacks sha256="))?;
    let want = decode_hex(hex).ok_or_else(|| format!("signature {sig:?} is not hex"))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).map_err(|e| e.to_string())?;
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(&d.body);
    mac.verify_slice(&want).map_err(|_| {
        format!(
            "signature {sig} does not match the body signed at {ts}: {}",
            String::from_utf8_lossy(&d.body)
        )
    })?;
    let id = d.id().ok_or("the body has no numeric id")?;
    let header = d.head.header("bootfabric-event-id").unwrap_or("");
    if header.trim() != id.to_string() {
        return Err(format!(
            "Bootfabric-Event-Id {header:?} but the body's id is {id}"
        ));
    }
    Ok(())
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 through the same calls [`verify`] makes.
    #[test]
    fn hmac_sha256_matches_rfc_4231_case_2() {
        let mut mac = Hmac::<Sha256>::new_from_slice(b"Jefe").expect("key");
        mac.update(b"what do ya want ");
        mac.update(b"for nothing?");
        let want = decode_hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")
            .expect("hex");
        assert!(mac.verify_slice(&want).is_ok());
    }

    fn delivery(ts: &str, sig: &str, id: &str, body: &str) -> Delivery {
        Delivery {
            head: Head {
                line: "POST /hook HTTP/1.1".into(),
                headers: vec![
                    ("Bootfabric-Timestamp".into(), ts.into()),
                    ("Bootfabric-Signature".into(), sig.into()),
                    ("Bootfabric-Event-Id".into(), id.into()),
                ],
            },
            body: body.as_bytes().to_vec(),
            answered: 200,
        }
    }

    #[test]
    fn verifies_timestamp_dot_body_and_refuses_anything_else() {
        let body = r#"{"id":3,"type":"host.booted"}"#;
        let mut mac = Hmac::<Sha256>::new_from_slice(b"s3cret").expect("key");
        mac.update(format!("1700000000.{body}").as_bytes());
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        let sig = format!("sha256={hex}");
        assert_eq!(
            verify(b"s3cret", &delivery("1700000000", &sig, "3", body)),
            Ok(())
        );
        assert!(verify(b"other", &delivery("1700000000", &sig, "3", body)).is_err());
        assert!(verify(b"s3cret", &delivery("1700000001", &sig, "3", body)).is_err());
        assert!(verify(b"s3cret", &delivery("1700000000", &sig, "4", body)).is_err());
        assert!(verify(b"s3cret", &delivery("1700000000", &hex, "3", body)).is_err());
    }
}
