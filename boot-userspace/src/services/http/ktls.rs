//! Kernel TLS (kTLS) for HTTPS: rustls makes the handshake, then hands the session's keys and
//! sequence numbers to the kernel (`TCP_ULP` `tls`, `TLS_TX`, `TLS_RX`), and the connection is
//! served as plain HTTP's is: heads written in the clear and file bodies moved with
//! `sendfile(2)`, the kernel making the records, so image bytes go file → socket without
//! passing through the daemon.
//!
//! Three things make the hand-over exact:
//! - The handshake reads whole records at most ([`Records`]): rustls never holds part of a
//!   record the kernel would then miss the start of. Records of the client's requests that
//!   rustls decrypted before the hand-over are drained from it and served first.
//! - TLS 1.3 session tickets are off on a server that hands sessions over (a ticket rustls
//!   wrote but did not send would still count in its sequence numbers).
//! - `TCP_ULP` is set before the keys are taken from rustls: a kernel that refuses it leaves
//!   the session with rustls, whole. Once the keys are out, a kernel that refuses them (a
//!   cipher it lacks) costs that connection, counted.
//!
//! With `TLS_RX`, a record that is not application data (an alert, a key update) makes the
//! read fail (`EIO`), and the connection ends. On its way out the daemon sends a
//! `close_notify` alert through the kernel.

use std::{
    io::Read as _,
    os::fd::AsRawFd as _,
    pin::Pin,
    sync::Arc,
    task::{ready, Context, Poll},
    time::Duration,
};

use nix::sys::socket::{setsockopt, sockopt};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};
use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::server::TlsStream;

use super::{
    conn::{Exchange, Shared},
    epoll::{BodyError, Wire},
};

/// Bytes of a TLS record header: type, version, length.
const HEADER: usize = 5;

/// Whether this kernel has kTLS: `TCP_ULP` `tls` on a socket that is not connected fails
/// with `ENOTCONN` where the `tls` module is (or loads on demand), `ENOENT` where it is not.
pub fn kernel_has_tls() -> bool {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    let Ok(sock) = socket(
        AddressFamily::Inet,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    ) else {
        return false;
    };
    matches!(
        setsockopt(&sock, sockopt::TcpUlp::default(), b"tls"),
        Ok(()) | Err(nix::errno::Errno::ENOTCONN)
    )
}

/// The TCP stream under a TLS session. While `bounded`, a read never goes past the end of the
/// record it is in (a header is read first, then at most its body), so that what rustls has
/// read always ends at a record boundary; unbounded, reads pass through.
pub struct Records<S = TcpStream> {
    inner: S,
    bounded: bool,
    /// Header bytes of the next record read so far.
    head: [u8; HEADER],
    got: usize,
    /// Body bytes of the current record still to read.
    left: usize,
}

impl<S> Records<S> {
    /// `inner`, its reads bounded to records if `bounded`.
    pub fn new(inner: S, bounded: bool) -> Self {
        Self {
            inner,
            bounded,
            head: [0; HEADER],
            got: 0,
            left: 0,
        }
    }

    /// The stream underneath.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether a record has been begun and not finished.
    fn inside_record(&self) -> bool {
        self.got > 0 || self.left > 0
    }

    /// Reads pass through from now on.
    fn unbound(&mut self) {
        self.bounded = false;
    }

    /// Accounts for `read`, the bytes just read while bounded.
    fn saw(&mut self, read: &[u8]) {
        if self.left > 0 {
            self.left -= read.len();
            return;
        }
        self.head[self.got..self.got + read.len()].copy_from_slice(read);
        self.got += read.len();
        if self.got == HEADER {
            self.left = usize::from(u16::from_be_bytes([self.head[3], self.head[4]]));
            self.got = 0;
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Records<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.bounded {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        }
        let limit = if this.left > 0 {
            this.left
        } else {
            HEADER - this.got
        };
        let limit = limit.min(buf.remaining());
        let mut part = ReadBuf::new(buf.initialize_unfilled_to(limit));
        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut part))?;
        let n = part.filled().len();
        let start = buf.filled().len();
        buf.advance(n);
        this.saw(&buf.filled()[start..]);
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Records<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// What became of a session offered to the kernel.
pub enum Handover {
    /// The kernel has it: serve the connection in the clear, `early` first (requests rustls
    /// decrypted before the hand-over).
    Kernel {
        /// The connection, in the clear.
        conn: Ktls,
        /// Request bytes rustls decrypted before the hand-over.
        early: Vec<u8>,
    },
    /// rustls keeps it (the kernel refused `TCP_ULP`), whole (boxed: a session is large, and
    /// this is the rare case).
    Userspace(Box<TlsStream<Records>>),
    /// Lost: the keys were out of rustls when the kernel refused them, or the client went
    /// away during the hand-over. `why` is a metric label.
    Lost {
        /// Why, as a metric label.
        why: &'static str,
    },
}

/// Hands the session of a finished handshake (made over bounded [`Records`]) to the kernel,
/// the hand-over bounded by `bound`.
pub async fn hand_over(mut tls: TlsStream<Records>, bound: Duration) -> Handover {
    let early = match tokio::time::timeout(bound, finish_record(&mut tls)).await {
        Ok(Ok(early)) => early,
        Ok(Err(_)) | Err(_) => {
            return Handover::Lost {
                why: "tls_handover",
            }
        }
    };
    if let Err(e) = setsockopt(
        tls.get_ref().0.get_ref(),
        sockopt::TcpUlp::default(),
        b"tls",
    ) {
        tracing::debug!(error = %e, "HTTPS: the kernel refused TCP_ULP tls; rustls keeps the session");
        return Handover::Userspace(Box::new(tls));
    }
    let keys = match take_keys(tls, early) {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!(error = %e, "HTTPS: rustls would not give up the session's keys");
            return Handover::Lost {
                why: "tls_handover",
            };
        }
    };
    let (Some(tx), Some(rx)) = (
        crypto_info(keys.version, keys.secrets.tx.0, &keys.secrets.tx.1),
        crypto_info(keys.version, keys.secrets.rx.0, &keys.secrets.rx.1),
    ) else {
        return Handover::Lost { why: "ktls_cipher" };
    };
    let set = setsockopt(&keys.tcp, sockopt::TcpTlsTx, &tx)
        .and_then(|()| setsockopt(&keys.tcp, sockopt::TcpTlsRx, &rx));
    if let Err(e) = set {
        tracing::debug!(error = %e, "HTTPS: the kernel refused the session's keys");
        return Handover::Lost { why: "ktls_cipher" };
    }
    Handover::Kernel {
        conn: Ktls(keys.tcp),
        early: keys.early,
    }
}

/// Reads to its end a record of the client's that rustls began after the handshake (it goes
/// on reading while it has no plaintext): the plaintext it gave, if any. Reads pass through
/// afterwards.
async fn finish_record(tls: &mut TlsStream<Records>) -> std::io::Result<Vec<u8>> {
    let mut early = Vec::new();
    let mut buf = [0u8; 4096];
    while tls.get_ref().0.inside_record() {
        let n = tls.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        early.extend_from_slice(&buf[..n]);
    }
    tls.get_mut().0.unbound();
    Ok(early)
}

/// A session taken out of rustls.
struct Keys {
    tcp: TcpStream,
    /// Request bytes rustls decrypted and the daemon has not served yet.
    early: Vec<u8>,
    version: ProtocolVersion,
    secrets: rustls::ExtractedSecrets,
}

/// Drains what rustls decrypted (after `early`, read before) and takes the session's keys
/// and sequence numbers out of it.
fn take_keys(tls: TlsStream<Records>, mut early: Vec<u8>) -> Result<Keys, rustls::Error> {
    let (records, mut session) = tls.into_inner();
    let mut buf = [0u8; 4096];
    loop {
        match session.reader().read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => early.extend_from_slice(&buf[..n]),
        }
    }
    let version = session
        .protocol_version()
        .ok_or(rustls::Error::HandshakeNotComplete)?;
    let secrets = session.dangerous_extract_secrets()?;
    Ok(Keys {
        tcp: records.inner,
        early,
        version,
        secrets,
    })
}

/// The kernel's description of one direction of a session: its cipher, keys and the
/// sequence number of the next record. `None` for a version or cipher kTLS has no form for.
fn crypto_info(
    version: ProtocolVersion,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> Option<sockopt::TlsCryptoInfo> {
    let version = match version {
        ProtocolVersion::TLSv1_2 => libc::TLS_1_2_VERSION,
        ProtocolVersion::TLSv1_3 => libc::TLS_1_3_VERSION,
        _ => return None,
    };
    let rec_seq = seq.to_be_bytes();
    // For AES-GCM the kernel takes the 12-byte nonce as a 4-byte salt and an 8-byte IV (TLS
    // 1.2's implicit part and the first explicit nonce); ChaCha20-Poly1305 takes all 12 as IV.
    Some(match secrets {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv } => {
            let (salt, iv) = iv.as_ref().split_at(4);
            sockopt::TlsCryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                info: libc::tls_crypto_info {
                    version,
                    cipher_type: libc::TLS_CIPHER_AES_GCM_128,
                },
                iv: iv.try_into().ok()?,
                key: key.as_ref().try_into().ok()?,
                salt: salt.try_into().ok()?,
                rec_seq,
            })
        }
        ConnectionTrafficSecrets::Aes256Gcm { key, iv } => {
            let (salt, iv) = iv.as_ref().split_at(4);
            sockopt::TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                info: libc::tls_crypto_info {
                    version,
                    cipher_type: libc::TLS_CIPHER_AES_GCM_256,
                },
                iv: iv.try_into().ok()?,
                key: key.as_ref().try_into().ok()?,
                salt: salt.try_into().ok()?,
                rec_seq,
            })
        }
        ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
            sockopt::TlsCryptoInfo::Chacha20Poly1305(libc::tls12_crypto_info_chacha20_poly1305 {
                info: libc::tls_crypto_info {
                    version,
                    cipher_type: libc::TLS_CIPHER_CHACHA20_POLY1305,
                },
                iv: iv.as_ref().try_into().ok()?,
                key: key.as_ref().try_into().ok()?,
                salt: [],
                rec_seq,
            })
        }
        _ => return None,
    })
}

/// A connection whose records the kernel makes and reads: the daemon reads and writes it in
/// the clear.
pub struct Ktls(TcpStream);

impl Ktls {
    /// Sends a `close_notify` alert (a record of type 21 through `TLS_SET_RECORD_TYPE`), so
    /// that a client reading to the end sees a clean end. Best effort: a socket with no room
    /// or a client gone already is left as it is.
    pub fn close_notify(&self) {
        const ALERT: u8 = 21;
        // Level warning (1), description close_notify (0).
        let body = [1u8, 0];
        let mut iov = libc::iovec {
            iov_base: body.as_ptr() as *mut libc::c_void,
            iov_len: body.len(),
        };
        // SAFETY: CMSG_SPACE is a pure size computation.
        let space = unsafe { libc::CMSG_SPACE(1) } as usize;
        let mut control = vec![0u8; space];
        // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer holds CMSG_SPACE(1) bytes, room for one header and one
        // byte of data; CMSG_FIRSTHDR of it is therefore not null.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_TLS;
            (*cmsg).cmsg_type = libc::TLS_SET_RECORD_TYPE;
            (*cmsg).cmsg_len = libc::CMSG_LEN(1) as _;
            *libc::CMSG_DATA(cmsg) = ALERT;
            libc::sendmsg(
                self.0.as_raw_fd(),
                &msg,
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            );
        }
    }
}

impl AsyncRead for Ktls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl AsyncWrite for Ktls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

impl Wire for Ktls {
    // As on plain TCP: the head is one write (one record) and the body sendfile's records;
    // corked, they share segments.
    const CORKS: bool = true;
    // The HTTPS runtime serves nothing else.
    const ROUTES_INLINE: bool = true;
    // The client copies records it decrypted, not the file's pages.
    const ALIGNS: bool = false;

    fn tcp(&self) -> &TcpStream {
        &self.0
    }

    async fn send_file(
        &mut self,
        file: &Arc<std::fs::File>,
        offset: u64,
        len: u64,
        in_memory: bool,
        shared: &Shared,
        x: &mut Exchange,
    ) -> Result<(), BodyError> {
        // `sendfile` into a kTLS socket: the kernel encrypts the file's pages into records.
        self.0
            .send_file(file, offset, len, in_memory, shared, x)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bounded_read_stops_at_each_record_end() {
        // Two records (5 and 3 bytes of body) and the start of a third.
        let mut wire = vec![23, 3, 3, 0, 5, 1, 2, 3, 4, 5, 23, 3, 3, 0, 3, 6, 7, 8];
        wire.extend_from_slice(&[23, 3, 3, 0, 9, 9]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut r = Records::new(&wire[..], true);
            let mut reads = Vec::new();
            let mut buf = [0u8; 64];
            loop {
                let n = r.read(&mut buf).await.expect("read");
                if n == 0 {
                    break;
                }
                reads.push(buf[..n].to_vec());
            }
            assert_eq!(
                reads,
                vec![
                    vec![23, 3, 3, 0, 5],
                    vec![1, 2, 3, 4, 5],
                    vec![23, 3, 3, 0, 3],
                    vec![6, 7, 8],
                    vec![23, 3, 3, 0, 9],
                    vec![9],
                ]
            );
            assert!(r.inside_record(), "a record was begun and not finished");
        });
    }

    #[test]
    fn a_header_read_in_pieces_is_still_one_header() {
        let mut r = Records::new((), true);
        r.saw(&[23, 3]);
        assert!(r.inside_record());
        r.saw(&[3, 0x01]);
        r.saw(&[0x02]);
        assert_eq!(r.left, 0x102);
        r.saw(&[0; 0x100]);
        r.saw(&[0; 2]);
        assert!(!r.inside_record());
    }

    #[test]
    fn unbounded_reads_pass_through() {
        let wire = [23u8, 3, 3, 0, 1, 9, 23, 3, 3, 0, 0];
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut r = Records::new(&wire[..], false);
            let mut buf = [0u8; 64];
            assert_eq!(r.read(&mut buf).await.expect("read"), wire.len());
        });
    }

    #[test]
    fn nonces_are_split_as_the_kernel_takes_them() {
        let iv: [u8; 12] = std::array::from_fn(|i| i as u8);
        let key: [u8; 32] = std::array::from_fn(|i| 100 + i as u8);
        let aes = |key| ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from(key),
            iv: rustls::crypto::cipher::Iv::new(iv),
        };
        let Some(sockopt::TlsCryptoInfo::Aes256Gcm(info)) =
            crypto_info(ProtocolVersion::TLSv1_3, 0x0102, &aes(key))
        else {
            panic!("AES-256-GCM has a kernel form");
        };
        assert_eq!(info.info.version, libc::TLS_1_3_VERSION);
        assert_eq!(info.info.cipher_type, libc::TLS_CIPHER_AES_GCM_256);
        assert_eq!(info.salt, [0, 1, 2, 3]);
        assert_eq!(info.iv, [4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(info.key, key);
        assert_eq!(info.rec_seq, [0, 0, 0, 0, 0, 0, 1, 2]);
        // A key of the wrong length for its cipher has no form (AES-128 takes 16 bytes).
        let long = ConnectionTrafficSecrets::Aes128Gcm {
            key: rustls::crypto::cipher::AeadKey::from(key),
            iv: rustls::crypto::cipher::Iv::new(iv),
        };
        assert!(crypto_info(ProtocolVersion::TLSv1_3, 0, &long).is_none());

        let chacha = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: rustls::crypto::cipher::AeadKey::from([9u8; 32]),
            iv: rustls::crypto::cipher::Iv::new(iv),
        };
        let Some(sockopt::TlsCryptoInfo::Chacha20Poly1305(info)) =
            crypto_info(ProtocolVersion::TLSv1_2, 5, &chacha)
        else {
            panic!("ChaCha20-Poly1305 has a kernel form");
        };
        assert_eq!(info.info.version, libc::TLS_1_2_VERSION);
        assert_eq!(info.iv, iv);
        assert_eq!(info.rec_seq[7], 5);
        assert!(crypto_info(ProtocolVersion::TLSv1_1, 0, &chacha).is_none());
    }

    /// A self-signed P-256 certificate for `localhost` (not a CA, to 2036) and its key, made
    /// with `openssl req -x509 -newkey ec -addext basicConstraints=critical,CA:FALSE`.
    const CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBjzCCATagAwIBAgIUVyFA4Pdym2r9p8WIQpPUYdB34d8wCgYIKoZIzj0EAwIw
FDESMBAGA1UEAwwJbG9jYWxob3N0MB4XDTI2MTIwNDA2NDcxNFoXDTM2MTIwMTA2
NDcxNFowFDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0CAQYIKoZIzj0D
AQcDQgAEdjsGPI00zPooT8+9eeCnwBbzZRTR06J1P5dG0fbmcEGRnYV5bj+UiLOH
Y+z1j0ER3tDe+XyzHDSi7bEIGBQUlqNmMGQwHQYDVR0OBBYEFLL5mhaMWf4Fs28f
qnhk8gfDJJunMB8GA1UdIwQYMBaAFLL5mhaMWf4Fs28fqnhk8gfDJJunMAwGA1Ud
EwEB/wQCMAAwFAYDVR0RBA0wC4IJbG9jYWxob3N0MAoGCCqGSM49BAMCA0cAMEQC
IGn+dfMAq9zlad6Mm2+fOgvTp03a7Be/wYpT3ORIgEvsAiAeJ9SXYiU6e3fvIVZj
JJgjFN7LsYFaA3ZdYPR/lqU/EQ==
-----END CERTIFICATE-----
";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgq8++X7EHlJ2Rau4R
vqOMsKaGVjnX4L0gFrAFldX/McGhRANCAAR2OwY8jTTM+ihPz7154KfAFvNlFNHT
onU/l0bR9uZwQZGdhXluP5SIs4dj7PWPQRHe0N75fLMcNKLtsQgYFBSW
-----END PRIVATE KEY-----
";

    const REQUESTS: [&str; 2] = [
        "GET /a HTTP/1.1\r\nHost: localhost\r\n\r\n",
        "GET /b HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
    ];
    const ANSWER: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\n";

    /// One direction of a TLS 1.3 session, as the kernel would run it from the keys handed
    /// over: the AEAD, its IV and the next record's sequence number.
    struct Direction {
        key: ring::aead::LessSafeKey,
        iv: [u8; 12],
        seq: u64,
    }

    impl Direction {
        fn new((seq, secrets): (u64, ConnectionTrafficSecrets)) -> Self {
            use ring::aead;
            let (alg, key, iv) = match &secrets {
                ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&aead::AES_128_GCM, key, iv),
                ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&aead::AES_256_GCM, key, iv),
                ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => {
                    (&aead::CHACHA20_POLY1305, key, iv)
                }
                _ => panic!("an AEAD rustls's ring provider does not have"),
            };
            Self {
                key: aead::LessSafeKey::new(aead::UnboundKey::new(alg, key.as_ref()).expect("key")),
                iv: iv.as_ref().try_into().expect("iv"),
                seq,
            }
        }

        fn nonce(&mut self) -> ring::aead::Nonce {
            let mut n = self.iv;
            for (b, s) in n[4..].iter_mut().zip(self.seq.to_be_bytes()) {
                *b ^= s;
            }
            self.seq += 1;
            ring::aead::Nonce::assume_unique_for_key(n)
        }

        /// The application data of one TLS 1.3 record.
        fn open(&mut self, record: &[u8]) -> Vec<u8> {
            let (header, body) = record.split_at(HEADER);
            let mut body = body.to_vec();
            let nonce = self.nonce();
            let plain = self
                .key
                .open_in_place(nonce, ring::aead::Aad::from(header), &mut body)
                .expect("the record opens with the handed-over key and sequence number");
            let mut plain = plain.to_vec();
            while plain.last() == Some(&0) {
                plain.pop();
            }
            assert_eq!(plain.pop(), Some(23), "application data");
            plain
        }

        /// One TLS 1.3 record of application data.
        fn seal(&mut self, data: &[u8]) -> Vec<u8> {
            let mut inner = data.to_vec();
            inner.push(23);
            let len = (inner.len() + 16) as u16;
            let [hi, lo] = len.to_be_bytes();
            let header = [23, 3, 3, hi, lo];
            let nonce = self.nonce();
            self.key
                .seal_in_place_append_tag(nonce, ring::aead::Aad::from(header), &mut inner)
                .expect("seal");
            [&header[..], &inner].concat()
        }
    }

    /// The client: its Finished and the start of its first request's record in one write,
    /// the rest of that record and the second request later; returns the plaintext it read.
    fn client(addr: std::net::SocketAddr) -> Vec<u8> {
        use rustls_pki_types::{pem::PemObject as _, CertificateDer, ServerName};
        use std::io::Write as _;
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(CERT.as_bytes()).expect("cert"))
            .expect("root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        let mut sock = std::net::TcpStream::connect(addr).expect("connect");
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        while conn.is_handshaking() {
            while conn.wants_write() && conn.is_handshaking() {
                conn.write_tls(&mut sock).expect("write");
            }
            if conn.is_handshaking() {
                conn.read_tls(&mut sock).expect("read");
                conn.process_new_packets().expect("handshake");
            }
        }
        let mut records = Vec::new();
        for r in REQUESTS {
            conn.writer().write_all(r.as_bytes()).expect("plaintext");
        }
        while conn.wants_write() {
            conn.write_tls(&mut records).expect("records");
        }
        // Everything up to 7 bytes into the first request's record (its header and 2 bytes).
        let finished = records.len()
            - REQUESTS
                .iter()
                .map(|r| r.len() + 1 + 16 + HEADER)
                .sum::<usize>();
        sock.write_all(&records[..finished + 7])
            .expect("first write");
        std::thread::sleep(Duration::from_millis(200));
        sock.write_all(&records[finished + 7..])
            .expect("second write");
        let mut plain = Vec::new();
        while plain.len() < ANSWER.len() {
            if conn.read_tls(&mut sock).expect("read") == 0 {
                break;
            }
            conn.process_new_packets().expect("records");
            let mut buf = [0u8; 1024];
            while let Ok(n) = conn.reader().read(&mut buf) {
                if n == 0 {
                    break;
                }
                plain.extend_from_slice(&buf[..n]);
            }
        }
        plain
    }

    #[test]
    fn a_session_taken_from_rustls_goes_on_where_rustls_left_it() {
        use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
        use std::io::{Read as _, Write as _};
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(CERT.as_bytes()).expect("cert")],
            PrivateKeyDer::from_pem_slice(KEY.as_bytes()).expect("key"),
        )
        .expect("config");
        config.enable_secret_extraction = true;
        config.send_tls13_tickets = 0;
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let addr = listener.local_addr().expect("addr");
            let client = std::thread::spawn(move || client(addr));
            let (stream, _) = listener.accept().await.expect("accept");
            let mut tls = acceptor
                .accept(Records::new(stream, true))
                .await
                .expect("handshake");
            let early = finish_record(&mut tls).await.expect("the record begun");
            let keys = take_keys(tls, early).expect("keys");
            assert_eq!(keys.version, ProtocolVersion::TLSv1_3);
            // What rustls did not decrypt is in the socket as whole records, from the
            // sequence number handed over: read as the kernel would.
            let mut rx = Direction::new(keys.secrets.rx);
            let mut tx = Direction::new(keys.secrets.tx);
            let mut got = keys.early.clone();
            let want = REQUESTS.concat().into_bytes();
            let mut tcp = keys.tcp.into_std().expect("std");
            tcp.set_nonblocking(false).expect("blocking");
            while got.len() < want.len() {
                let mut record = vec![0u8; HEADER];
                tcp.read_exact(&mut record).expect("header");
                let len = usize::from(u16::from_be_bytes([record[3], record[4]]));
                record.resize(HEADER + len, 0);
                tcp.read_exact(&mut record[HEADER..]).expect("body");
                got.extend(rx.open(&record));
            }
            assert_eq!(String::from_utf8_lossy(&got), REQUESTS.concat());
            // And the client reads what is sealed from the sequence number handed over.
            tcp.write_all(&tx.seal(ANSWER)).expect("answer");
            assert_eq!(client.join().expect("client"), ANSWER);
        });
    }
}
