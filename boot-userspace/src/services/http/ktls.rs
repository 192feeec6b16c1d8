//! Kernel TLS (kTLS) for HTTPS: rustls makes the handshake, then hands the session's keys and
//! sequence numbers to the kernel (`TCP_ULP` `tls`, `TLS_TX`, `TLS_RX`), and the connection is
//! served as plain HTTP's is: heads written in the clear and file bodies moved with
//! `sendfile(2)`, the kernel making the records, so image bytes go file → socket without
//! passing through the daemon.
//!
//! What makes the hand-over exact:
//! - The handshake reads whole records at most ([`Records`]): rustls never holds part of a
//!   record the kernel would then miss the start of. A record of the client's that the
//!   handshake began is read to its end straight into rustls, and no further (a client cannot
//!   make the daemon read on); what rustls decrypted is served first.
//! - What rustls has to send leaves before the keys do: a key update the client asked for is
//!   written out (rustls only queues it until its next write) and everything queued is
//!   flushed; should rustls still want to write after that, the session stays with it rather
//!   than lose a record (a guard: the flush leaves nothing).
//! - Under TLS 1.2 with AES-GCM the kernel sends its own explicit nonces, one more per record:
//!   they start above every one rustls used (`tls12_first_explicit_nonce`), never repeating
//!   the Finished's under the same key.
//! - Only a version (1.2, 1.3) and cipher the kernel took in a probe at start go over;
//!   `TCP_ULP` is set before the keys are taken from rustls, so a kernel that refuses it leaves
//!   the session with rustls, whole. A kernel that refuses the keys once they are out costs
//!   that connection, and its cipher is not handed over again.
//!
//! With `TLS_RX`, a record that is not application data (an alert, a key update) makes the
//! read fail (`EIO`), and the connection ends. On its way out the daemon sends a
//! `close_notify` alert through the kernel.

use std::{
    io::{Read as _, Write as _},
    os::fd::AsRawFd as _,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{ready, Context, Poll},
    time::Duration,
};

use nix::sys::socket::{setsockopt, sockopt};
use rustls::{ConnectionTrafficSecrets, ProtocolVersion};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf},
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
    /// rustls keeps it, whole (boxed: a session is large, and this is the rare case): its
    /// version or cipher is one the kernel does not take here, or the kernel refused
    /// `TCP_ULP` (or, a guard, rustls still wanted to write after the flush).
    Userspace(Box<TlsStream<Records>>),
    /// Lost: the client went quiet or away before the hand-over could be made, sent more
    /// than a request head before it, or the kernel refused the keys rustls had given up.
    /// `why` is a metric label.
    Lost {
        /// Why, as a metric label.
        why: &'static str,
    },
}

/// The AEADs the kernel's TLS can take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cipher {
    /// AES-128-GCM.
    Aes128Gcm,
    /// AES-256-GCM.
    Aes256Gcm,
    /// ChaCha20-Poly1305.
    Chacha20Poly1305,
}

impl Cipher {
    const ALL: [Cipher; 3] = [Self::Aes128Gcm, Self::Aes256Gcm, Self::Chacha20Poly1305];

    /// The cipher of a negotiated suite, if the kernel's TLS has one for it.
    fn of(suite: rustls::CipherSuite) -> Option<Self> {
        use rustls::CipherSuite as S;
        match suite {
            S::TLS13_AES_128_GCM_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            | S::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            | S::TLS_DHE_RSA_WITH_AES_128_GCM_SHA256 => Some(Self::Aes128Gcm),
            S::TLS13_AES_256_GCM_SHA384
            | S::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            | S::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            | S::TLS_DHE_RSA_WITH_AES_256_GCM_SHA384 => Some(Self::Aes256Gcm),
            S::TLS13_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            | S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => Some(Self::Chacha20Poly1305),
            _ => None,
        }
    }

    /// A TLS 1.3 description of this cipher with keys of zeros (for the probe; a kernel with
    /// kTLS for TLS 1.2 only, before 5.1, keeps every session with rustls, which is safe).
    fn zeros(self) -> sockopt::TlsCryptoInfo {
        let info = |cipher_type| libc::tls_crypto_info {
            version: libc::TLS_1_3_VERSION,
            cipher_type,
        };
        match self {
            Self::Aes128Gcm => {
                sockopt::TlsCryptoInfo::Aes128Gcm(libc::tls12_crypto_info_aes_gcm_128 {
                    info: info(libc::TLS_CIPHER_AES_GCM_128),
                    iv: [0; 8],
                    key: [0; 16],
                    salt: [0; 4],
                    rec_seq: [0; 8],
                })
            }
            Self::Aes256Gcm => {
                sockopt::TlsCryptoInfo::Aes256Gcm(libc::tls12_crypto_info_aes_gcm_256 {
                    info: info(libc::TLS_CIPHER_AES_GCM_256),
                    iv: [0; 8],
                    key: [0; 32],
                    salt: [0; 4],
                    rec_seq: [0; 8],
                })
            }
            Self::Chacha20Poly1305 => sockopt::TlsCryptoInfo::Chacha20Poly1305(
                libc::tls12_crypto_info_chacha20_poly1305 {
                    info: info(libc::TLS_CIPHER_CHACHA20_POLY1305),
                    iv: [0; 12],
                    key: [0; 32],
                    salt: [],
                    rec_seq: [0; 8],
                },
            ),
        }
    }
}

/// The ciphers sessions may be handed over with: those the kernel took in the probe at start,
/// less any it has refused since (a refusal costs the one connection whose keys were out).
#[derive(Debug)]
pub struct Ciphers([AtomicBool; 3]);

impl Ciphers {
    /// Asks the kernel, on a loopback connection per cipher, whether it takes `TLS_TX` and
    /// `TLS_RX` with each. Where no loopback connection can be made (tried once: a second
    /// would only wait as long again), every cipher is tried on real sessions instead, and
    /// dropped at its first refusal.
    pub fn probe() -> Self {
        let mut unreachable = false;
        Self(Cipher::ALL.map(|c| {
            let took = if unreachable { None } else { probe_cipher(c) };
            unreachable |= took.is_none();
            AtomicBool::new(took != Some(false))
        }))
    }

    /// No cipher: nothing is handed to the kernel.
    pub fn none() -> Self {
        Self(Cipher::ALL.map(|_| AtomicBool::new(false)))
    }

    fn has(&self, c: Cipher) -> bool {
        self.0[c as usize].load(Ordering::Relaxed)
    }

    fn refused(&self, c: Cipher) {
        if self.0[c as usize].swap(false, Ordering::Relaxed) {
            tracing::warn!(
                cipher = ?c,
                "HTTPS: the kernel refused kTLS keys for this cipher; its sessions stay with rustls from now on"
            );
        }
    }

    /// The ciphers sessions go to the kernel with.
    pub fn usable(&self) -> Vec<Cipher> {
        Cipher::ALL.into_iter().filter(|c| self.has(*c)).collect()
    }
}

/// Whether the kernel takes `TLS_TX` and `TLS_RX` with `cipher` on a loopback connection:
/// `None` where no such connection can be made within a second (a firewall dropping loopback
/// must not hold up the start).
fn probe_cipher(cipher: Cipher) -> Option<bool> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").ok()?;
    let addr = listener.local_addr().ok()?;
    // The connection is left in the listener's backlog, never accepted (an accept could wait):
    // the client's end is established, which is all TCP_ULP asks, and both close here.
    let client = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    if setsockopt(&client, sockopt::TcpUlp::default(), b"tls").is_err() {
        return Some(false);
    }
    let keys = cipher.zeros();
    Some(
        setsockopt(&client, sockopt::TcpTlsTx, &keys).is_ok()
            && setsockopt(&client, sockopt::TcpTlsRx, &keys).is_ok(),
    )
}

/// Most request bytes rustls may have decrypted before the hand-over: a request head, and the
/// rest of the record it came in.
const MAX_EARLY: usize = super::conn::MAX_HEAD + 16 * 1024;

/// Hands the session of a finished handshake (made over bounded [`Records`]) to the kernel,
/// by `deadline`, with one of `ciphers`.
pub async fn hand_over(
    mut tls: TlsStream<Records>,
    deadline: tokio::time::Instant,
    ciphers: &Ciphers,
) -> Handover {
    match tokio::time::timeout_at(deadline, prepare(&mut tls)).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) | Err(_) => {
            return Handover::Lost {
                why: "tls_handover",
            }
        }
    }
    let session = &tls.get_ref().1;
    let cipher = session
        .negotiated_cipher_suite()
        .and_then(|s| Cipher::of(s.suite()));
    let version = session
        .protocol_version()
        .filter(|v| matches!(v, ProtocolVersion::TLSv1_2 | ProtocolVersion::TLSv1_3));
    let (Some(cipher), Some(version)) = (cipher, version) else {
        return Handover::Userspace(Box::new(tls));
    };
    if !ciphers.has(cipher) || session.wants_write() {
        return Handover::Userspace(Box::new(tls));
    }
    if let Err(e) = setsockopt(
        tls.get_ref().0.get_ref(),
        sockopt::TcpUlp::default(),
        b"tls",
    ) {
        tracing::debug!(error = %e, "HTTPS: the kernel refused TCP_ULP tls; rustls keeps the session");
        return Handover::Userspace(Box::new(tls));
    }
    let keys = match take_keys(tls) {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!(error = %e, "HTTPS: rustls would not give up the session's keys");
            return Handover::Lost {
                why: "tls_handover",
            };
        }
    };
    if keys.early.len() > MAX_EARLY {
        return Handover::Lost {
            why: "tls_handover",
        };
    }
    let (Some(tx), Some(rx)) = (
        crypto_info(
            version,
            Direction::Send,
            keys.secrets.tx.0,
            &keys.secrets.tx.1,
        ),
        crypto_info(
            version,
            Direction::Receive,
            keys.secrets.rx.0,
            &keys.secrets.rx.1,
        ),
    ) else {
        return Handover::Lost { why: "ktls_cipher" };
    };
    let set = setsockopt(&keys.tcp, sockopt::TcpTlsTx, &tx)
        .and_then(|()| setsockopt(&keys.tcp, sockopt::TcpTlsRx, &rx));
    if let Err(e) = set {
        tracing::debug!(error = %e, "HTTPS: the kernel refused the session's keys");
        ciphers.refused(cipher);
        return Handover::Lost { why: "ktls_cipher" };
    }
    Handover::Kernel {
        conn: Ktls(keys.tcp),
        early: keys.early,
    }
}

/// Makes the session ready to leave rustls: reads to its end a record of the client's that
/// the handshake began (straight into rustls and no further: a client cannot make it read
/// on), then writes out what rustls has to send (a key update the client asked for is only
/// queued until the next write). Reads pass through afterwards.
async fn prepare(tls: &mut TlsStream<Records>) -> std::io::Result<()> {
    {
        let (records, session) = tls.get_mut();
        while records.inside_record() {
            let n = std::future::poll_fn(|cx| {
                let mut io = Polled {
                    io: &mut *records,
                    cx,
                };
                match session.read_tls(&mut io) {
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Poll::Pending,
                    other => Poll::Ready(other),
                }
            })
            .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            session
                .process_new_packets()
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        }
        records.unbound();
        // An empty write (write_all would make none) moves a queued key update out.
        let written = session.writer().write(&[])?;
        debug_assert_eq!(written, 0);
    }
    tls.flush().await
}

/// An `AsyncRead` read as a `std::io::Read` within one poll: `WouldBlock` when it is not
/// ready (its waker registered).
struct Polled<'a, 'b, R> {
    io: &'a mut R,
    cx: &'a mut Context<'b>,
}

impl<R: AsyncRead + Unpin> std::io::Read for Polled<'_, '_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        match Pin::new(&mut *self.io).poll_read(self.cx, &mut buf) {
            Poll::Ready(Ok(())) => Ok(buf.filled().len()),
            Poll::Ready(Err(e)) => Err(e),
            Poll::Pending => Err(std::io::ErrorKind::WouldBlock.into()),
        }
    }
}

/// A session taken out of rustls.
struct Keys {
    tcp: TcpStream,
    /// Request bytes rustls decrypted and the daemon has not served yet.
    early: Vec<u8>,
    secrets: rustls::ExtractedSecrets,
}

/// Drains what rustls decrypted and takes the session's keys and sequence numbers out of it.
fn take_keys(tls: TlsStream<Records>) -> Result<Keys, rustls::Error> {
    let (records, mut session) = tls.into_inner();
    let mut early = Vec::new();
    let mut buf = [0u8; 4096];
    while early.len() <= MAX_EARLY {
        match session.reader().read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => early.extend_from_slice(&buf[..n]),
        }
    }
    let secrets = session.dangerous_extract_secrets()?;
    Ok(Keys {
        tcp: records.inner,
        early,
        secrets,
    })
}

/// Which way a direction's records go.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Send,
    Receive,
}

/// The first explicit nonce the kernel may send under TLS 1.2 AES-GCM. rustls sent its record
/// `s` with the explicit nonce `used ^ s` (`used`: the IV's 8 bytes after the salt); the kernel
/// sends its IV field as the explicit nonce and adds one per record. Started at `used`, its
/// first record would repeat the nonce of rustls's first (the Finished) under the same key,
/// which gives the authentication key away; so it starts above every `used ^ s` for
/// `s < sent`, which differ from `used` only in the bits below `sent`'s next power of two.
fn tls12_first_explicit_nonce(used: u64, sent: u64) -> u64 {
    let low = sent.checked_next_power_of_two().map_or(u64::MAX, |p| p - 1);
    (used | low).wrapping_add(1)
}

/// The kernel's description of one direction of a session: its cipher, keys and the
/// sequence number of the next record. `None` for a version or cipher kTLS has no form for.
fn crypto_info(
    version: ProtocolVersion,
    direction: Direction,
    seq: u64,
    secrets: &ConnectionTrafficSecrets,
) -> Option<sockopt::TlsCryptoInfo> {
    let tls12 = version == ProtocolVersion::TLSv1_2;
    let version = match version {
        ProtocolVersion::TLSv1_2 => libc::TLS_1_2_VERSION,
        ProtocolVersion::TLSv1_3 => libc::TLS_1_3_VERSION,
        _ => return None,
    };
    let rec_seq = seq.to_be_bytes();
    // The kernel's first explicit nonce for TLS 1.2 AES-GCM records it sends (see
    // `tls12_first_explicit_nonce`); it reads the client's from each record.
    let gcm_iv = |iv: &[u8]| -> Option<[u8; 8]> {
        let iv: [u8; 8] = iv.try_into().ok()?;
        Some(if tls12 && direction == Direction::Send {
            tls12_first_explicit_nonce(u64::from_be_bytes(iv), seq).to_be_bytes()
        } else {
            iv
        })
    };
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
                iv: gcm_iv(iv)?,
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
                iv: gcm_iv(iv)?,
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
        // u64s: the control buffer must be aligned as a cmsghdr (CMSG_SPACE(1) is 24 bytes).
        let mut control = [0u64; 4];
        if space > std::mem::size_of_val(&control) {
            return;
        }
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
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

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
        use Direction::{Receive, Send};
        let iv: [u8; 12] = std::array::from_fn(|i| i as u8);
        let key: [u8; 32] = std::array::from_fn(|i| 100 + i as u8);
        let aes = |key| ConnectionTrafficSecrets::Aes256Gcm {
            key: rustls::crypto::cipher::AeadKey::from(key),
            iv: rustls::crypto::cipher::Iv::new(iv),
        };
        let gcm = |version, direction, seq| match crypto_info(version, direction, seq, &aes(key)) {
            Some(sockopt::TlsCryptoInfo::Aes256Gcm(info)) => info,
            _ => panic!("AES-256-GCM has a kernel form"),
        };
        let info = gcm(ProtocolVersion::TLSv1_3, Send, 0x0102);
        assert_eq!(info.info.version, libc::TLS_1_3_VERSION);
        assert_eq!(info.info.cipher_type, libc::TLS_CIPHER_AES_GCM_256);
        assert_eq!(info.salt, [0, 1, 2, 3]);
        assert_eq!(info.iv, [4, 5, 6, 7, 8, 9, 10, 11]);
        assert_eq!(info.key, key);
        assert_eq!(info.rec_seq, [0, 0, 0, 0, 0, 0, 1, 2]);
        // TLS 1.2: the kernel reads the client's explicit nonces from its records, and sends
        // its own from above the ones rustls used (the Finished's, at sequence 0).
        let info = gcm(ProtocolVersion::TLSv1_2, Receive, 3);
        assert_eq!(info.iv, [4, 5, 6, 7, 8, 9, 10, 11]);
        let info = gcm(ProtocolVersion::TLSv1_2, Send, 1);
        assert_eq!(info.iv, [4, 5, 6, 7, 8, 9, 10, 12]);
        assert_eq!(info.salt, [0, 1, 2, 3]);
        // A key of the wrong length for its cipher has no form (AES-128 takes 16 bytes).
        let long = ConnectionTrafficSecrets::Aes128Gcm {
            key: rustls::crypto::cipher::AeadKey::from(key),
            iv: rustls::crypto::cipher::Iv::new(iv),
        };
        assert!(crypto_info(ProtocolVersion::TLSv1_3, Send, 0, &long).is_none());

        let chacha = ConnectionTrafficSecrets::Chacha20Poly1305 {
            key: rustls::crypto::cipher::AeadKey::from([9u8; 32]),
            iv: rustls::crypto::cipher::Iv::new(iv),
        };
        let Some(sockopt::TlsCryptoInfo::Chacha20Poly1305(info)) =
            crypto_info(ProtocolVersion::TLSv1_2, Send, 5, &chacha)
        else {
            panic!("ChaCha20-Poly1305 has a kernel form");
        };
        // ChaCha20-Poly1305 has no explicit nonce: the sequence number makes each one.
        assert_eq!(info.info.version, libc::TLS_1_2_VERSION);
        assert_eq!(info.iv, iv);
        assert_eq!(info.rec_seq[7], 5);
        assert!(crypto_info(ProtocolVersion::TLSv1_1, Send, 0, &chacha).is_none());
    }

    #[test]
    fn the_kernels_tls12_nonces_never_repeat_rustls_ones() {
        for used in [0u64, 1, 0x55, 0x8000_0000_0000_0000, 0x1234_5678_9abc_def0] {
            for sent in [0u64, 1, 2, 3, 4, 5, 100, 1000] {
                let first = tls12_first_explicit_nonce(used, sent);
                let rustls: Vec<u64> = (0..sent).map(|s| used ^ s).collect();
                // The kernel's next 10,000 records.
                for k in 0..10_000u64 {
                    let n = first.wrapping_add(k);
                    assert!(!rustls.contains(&n), "{used:#x} after {sent}: {n:#x} again");
                }
            }
        }
        assert_eq!(tls12_first_explicit_nonce(7, 1), 8);
    }

    #[test]
    fn ciphers_are_named_by_their_suites() {
        use rustls::CipherSuite as S;
        assert_eq!(
            Cipher::of(S::TLS13_AES_128_GCM_SHA256),
            Some(Cipher::Aes128Gcm)
        );
        assert_eq!(
            Cipher::of(S::TLS_DHE_RSA_WITH_AES_256_GCM_SHA384),
            Some(Cipher::Aes256Gcm)
        );
        assert_eq!(
            Cipher::of(S::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256),
            Some(Cipher::Chacha20Poly1305)
        );
        assert_eq!(Cipher::of(S::TLS_RSA_WITH_AES_128_CBC_SHA), None);
        let c = Ciphers::none();
        assert!(c.usable().is_empty());
        let c = Ciphers(Cipher::ALL.map(|_| AtomicBool::new(true)));
        c.refused(Cipher::Aes256Gcm);
        assert_eq!(
            c.usable(),
            vec![Cipher::Aes128Gcm, Cipher::Chacha20Poly1305]
        );
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

    /// One direction of a session as the kernel runs it from the description it was given:
    /// the nonce is the IV with the sequence number mixed into its last 8 bytes, but for
    /// TLS 1.2 with AES-GCM, where it is the salt and an explicit part carried in the record
    /// (the IV field, one more per record).
    struct Kernel {
        key: ring::aead::LessSafeKey,
        salt: [u8; 4],
        iv: u64,
        seq: u64,
        tls12: bool,
        explicit: bool,
    }

    impl Kernel {
        fn new(info: sockopt::TlsCryptoInfo) -> Self {
            use ring::aead;
            let (alg, key, salt, iv, seq, version) = match &info {
                sockopt::TlsCryptoInfo::Aes128Gcm(i) => (
                    &aead::AES_128_GCM,
                    &i.key[..],
                    i.salt,
                    i.iv,
                    i.rec_seq,
                    i.info.version,
                ),
                sockopt::TlsCryptoInfo::Aes256Gcm(i) => (
                    &aead::AES_256_GCM,
                    &i.key[..],
                    i.salt,
                    i.iv,
                    i.rec_seq,
                    i.info.version,
                ),
                sockopt::TlsCryptoInfo::Chacha20Poly1305(i) => {
                    let (salt, iv) = i.iv.split_at(4);
                    (
                        &aead::CHACHA20_POLY1305,
                        &i.key[..],
                        salt.try_into().expect("4"),
                        iv.try_into().expect("8"),
                        i.rec_seq,
                        i.info.version,
                    )
                }
            };
            let tls12 = version == libc::TLS_1_2_VERSION;
            let aes = !matches!(info, sockopt::TlsCryptoInfo::Chacha20Poly1305(_));
            Self {
                key: aead::LessSafeKey::new(aead::UnboundKey::new(alg, key).expect("key")),
                salt,
                iv: u64::from_be_bytes(iv),
                seq: u64::from_be_bytes(seq),
                tls12,
                explicit: tls12 && aes,
            }
        }

        /// The nonce of the next record (the explicit part comes from the record when
        /// reading TLS 1.2); advances.
        fn nonce(&mut self, explicit: Option<[u8; 8]>) -> ring::aead::Nonce {
            let mut n = [0u8; 12];
            n[..4].copy_from_slice(&self.salt);
            let tail = if self.explicit {
                explicit.map_or(self.iv, u64::from_be_bytes)
            } else {
                self.iv ^ self.seq
            };
            n[4..].copy_from_slice(&tail.to_be_bytes());
            ring::aead::Nonce::assume_unique_for_key(n)
        }

        fn aad(&self, len: usize, header: [u8; 5]) -> Vec<u8> {
            if self.tls12 {
                let mut a = self.seq.to_be_bytes().to_vec();
                a.extend_from_slice(&header[..3]);
                a.extend_from_slice(&(len as u16).to_be_bytes());
                a
            } else {
                header.to_vec()
            }
        }

        /// The application data of one record from the client.
        fn open(&mut self, record: &[u8]) -> Vec<u8> {
            let header: [u8; 5] = record[..HEADER].try_into().expect("header");
            let mut body = record[HEADER..].to_vec();
            let explicit = self
                .explicit
                .then(|| body.drain(..8).collect::<Vec<u8>>().try_into().expect("8"));
            let nonce = self.nonce(explicit);
            let aad = self.aad(body.len() - 16, header);
            let plain = self
                .key
                .open_in_place(nonce, ring::aead::Aad::from(aad), &mut body)
                .expect("the record opens with the handed-over key and sequence number");
            let mut plain = plain.to_vec();
            self.seq += 1;
            if !self.tls12 {
                while plain.last() == Some(&0) {
                    plain.pop();
                }
                assert_eq!(plain.pop(), Some(23), "application data");
            }
            plain
        }

        /// One record of application data to the client, and the explicit nonce it carries
        /// (TLS 1.2).
        fn seal(&mut self, data: &[u8]) -> (Vec<u8>, Option<u64>) {
            let mut inner = data.to_vec();
            if !self.tls12 {
                inner.push(23);
            }
            let explicit = self.explicit.then_some(self.iv);
            let len = inner.len() + 16 + if self.explicit { 8 } else { 0 };
            let [hi, lo] = (len as u16).to_be_bytes();
            let header = [23, 3, 3, hi, lo];
            let nonce = self.nonce(None);
            let aad = self.aad(inner.len(), header);
            self.key
                .seal_in_place_append_tag(nonce, ring::aead::Aad::from(aad), &mut inner)
                .expect("seal");
            self.seq += 1;
            if self.explicit {
                self.iv = self.iv.wrapping_add(1);
            }
            let mut record = header.to_vec();
            if let Some(e) = explicit {
                record.extend(e.to_be_bytes());
            }
            record.extend(inner);
            (record, explicit)
        }
    }

    /// Reads from a socket and keeps every byte read.
    struct Tap<'a> {
        sock: &'a mut std::net::TcpStream,
        seen: Vec<u8>,
    }

    impl std::io::Read for Tap<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.sock.read(buf)?;
            self.seen.extend_from_slice(&buf[..n]);
            Ok(n)
        }
    }

    /// The explicit nonce of the server's Finished under TLS 1.2: the first record after
    /// its ChangeCipherSpec, in what the client read.
    fn finished_nonce(mut seen: &[u8]) -> Option<u64> {
        let mut after_ccs = false;
        while seen.len() >= HEADER {
            let len = usize::from(u16::from_be_bytes([seen[3], seen[4]]));
            let body = seen.get(HEADER..HEADER + len)?;
            if after_ccs {
                return Some(u64::from_be_bytes(body.get(..8)?.try_into().ok()?));
            }
            after_ccs = seen[0] == 20;
            seen = &seen[HEADER + len..];
        }
        None
    }

    /// A client of the test's server over `version` (with `suite` only, if given), its
    /// handshake made on `sock`; and the bytes it read, for the records they hold.
    fn client_session(
        sock: &mut std::net::TcpStream,
        version: &'static rustls::SupportedProtocolVersion,
        suite: Option<rustls::SupportedCipherSuite>,
    ) -> (rustls::ClientConnection, Vec<u8>) {
        use rustls_pki_types::{pem::PemObject as _, CertificateDer, ServerName};
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(CERT.as_bytes()).expect("cert"))
            .expect("root");
        let mut provider = rustls::crypto::ring::default_provider();
        if let Some(suite) = suite {
            provider.cipher_suites = vec![suite];
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        let name = ServerName::try_from("localhost").expect("name");
        let mut conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
        sock.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let mut tap = Tap {
            sock,
            seen: Vec::new(),
        };
        while conn.is_handshaking() {
            while conn.wants_write() && conn.is_handshaking() {
                conn.write_tls(tap.sock).expect("write");
            }
            if conn.is_handshaking() {
                conn.read_tls(&mut tap).expect("read");
                conn.process_new_packets().expect("handshake");
            }
        }
        (conn, tap.seen)
    }

    /// The client: its Finished and the start of its first request's record in one write,
    /// the rest of that record and the second request later. Returns the plaintext it read
    /// and, under TLS 1.2, the explicit nonce of the server's Finished.
    fn client(
        addr: std::net::SocketAddr,
        version: &'static rustls::SupportedProtocolVersion,
        suite: Option<rustls::SupportedCipherSuite>,
        key_update: bool,
    ) -> (Vec<u8>, Option<u64>) {
        let mut sock = std::net::TcpStream::connect(addr).expect("connect");
        let (mut conn, seen) = client_session(&mut sock, version, suite);
        let finished = finished_nonce(&seen);
        let mut records = Vec::new();
        while conn.wants_write() {
            conn.write_tls(&mut records).expect("finished");
        }
        if key_update {
            // A key update that asks for the server's in return, before the requests.
            conn.refresh_traffic_keys().expect("key update");
            while conn.wants_write() {
                conn.write_tls(&mut records).expect("key update");
            }
        }
        let before = records.len();
        for r in REQUESTS {
            conn.writer().write_all(r.as_bytes()).expect("plaintext");
        }
        while conn.wants_write() {
            conn.write_tls(&mut records).expect("records");
        }
        // Everything up to 7 bytes into the first request's record (its header and 2 bytes).
        sock.write_all(&records[..before + 7]).expect("first write");
        std::thread::sleep(Duration::from_millis(200));
        sock.write_all(&records[before + 7..])
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
        (plain, finished)
    }

    /// A server config as the daemon's when it hands sessions over, with [`CERT`].
    fn acceptor() -> tokio_rustls::TlsAcceptor {
        use rustls_pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
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
        tokio_rustls::TlsAcceptor::from(Arc::new(config))
    }

    /// A server session over bounded records, its handshake made with a client that runs
    /// `client` on a thread of its own; then `serve`, with the session and that thread.
    fn with_session<T, Fut>(
        client: impl FnOnce(std::net::SocketAddr) -> T + Send + 'static,
        serve: impl FnOnce(TlsStream<Records>, std::thread::JoinHandle<T>) -> Fut,
    ) where
        T: Send + 'static,
        Fut: std::future::Future<Output = ()>,
    {
        let acceptor = acceptor();
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
            let tls = acceptor
                .accept(Records::new(stream, true))
                .await
                .expect("handshake");
            serve(tls, client).await;
        });
    }

    /// Reads the client's [`REQUESTS`] (after `got`, what was had before) from `conn` and
    /// writes it the [`ANSWER`]; what was read.
    async fn answer<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        conn: &mut S,
        mut got: Vec<u8>,
    ) -> Vec<u8> {
        let want = REQUESTS.concat().into_bytes();
        let mut buf = [0u8; 512];
        while got.len() < want.len() {
            let n = conn.read(&mut buf).await.expect("read");
            assert_ne!(n, 0, "the client's requests end early");
            got.extend_from_slice(&buf[..n]);
        }
        conn.write_all(ANSWER).await.expect("answer");
        conn.flush().await.expect("flush");
        got
    }

    /// A handshake over bounded records, the hand-over's steps up to the keys (this machine's
    /// kernel may have no kTLS), then the records left in the socket read, and an answer
    /// sealed, as the kernel would from the description it would be given.
    fn hand_over_round_trip(
        version: &'static rustls::SupportedProtocolVersion,
        suite: Option<rustls::SupportedCipherSuite>,
        key_update: bool,
    ) {
        let client = move |addr| client(addr, version, suite, key_update);
        with_session(client, |mut tls, client| async move {
            prepare(&mut tls).await.expect("the record begun");
            let negotiated = tls.get_ref().1.protocol_version().expect("version");
            assert_eq!(negotiated, version.version);
            if let Some(suite) = suite {
                assert_eq!(
                    tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
                    Some(suite.suite())
                );
            }
            assert!(!tls.get_ref().1.wants_write(), "rustls has records to send");
            let keys = take_keys(tls).expect("keys");
            let info = |d, (seq, secrets): &(u64, ConnectionTrafficSecrets)| {
                crypto_info(negotiated, d, *seq, secrets).expect("a kernel form")
            };
            let mut rx = Kernel::new(info(Direction::Receive, &keys.secrets.rx));
            let mut tx = Kernel::new(info(Direction::Send, &keys.secrets.tx));
            // What rustls did not decrypt is in the socket as whole records, from the
            // sequence number handed over: read as the kernel would.
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
            let (record, explicit) = tx.seal(ANSWER);
            tcp.write_all(&record).expect("answer");
            let (plain, finished) = client.join().expect("client");
            assert_eq!(plain, ANSWER);
            if let Some(explicit) = explicit {
                let finished = finished.expect("a Finished");
                assert_ne!(
                    finished, explicit,
                    "the kernel would repeat the Finished's nonce"
                );
            }
        });
    }

    #[test]
    fn a_tls13_session_taken_from_rustls_goes_on_where_rustls_left_it() {
        hand_over_round_trip(&rustls::version::TLS13, None, false);
    }

    #[test]
    fn a_key_update_the_client_asked_for_is_sent_before_the_keys_leave_rustls() {
        hand_over_round_trip(&rustls::version::TLS13, None, true);
    }

    #[test]
    fn a_tls12_session_taken_from_rustls_goes_on_without_repeating_a_nonce() {
        hand_over_round_trip(&rustls::version::TLS12, None, false);
    }

    /// `hand_over` whole, on this machine's kernel, with the ciphers its probe found and with
    /// every cipher allowed (as where loopback could not be probed): where the kernel takes
    /// the session the requests and answer pass in the clear through the socket; where it
    /// does not (cipher not taken, or `TCP_ULP` refused) rustls keeps the session, and
    /// nothing it had read or queued is lost on the way.
    #[test]
    fn a_session_handed_over_is_served_on_whichever_side_takes_it() {
        let probed = Ciphers::probe();
        handed_over_and_served(&probed, kernel_has_tls() && probed.has(Cipher::Aes256Gcm));
        let all = Ciphers(Cipher::ALL.map(|_| AtomicBool::new(true)));
        handed_over_and_served(&all, kernel_has_tls());
    }

    /// One session through `hand_over` with `ciphers` (the client's TLS 1.3 default,
    /// AES-256-GCM): to the kernel if `to_kernel`, else kept by rustls.
    fn handed_over_and_served(ciphers: &Ciphers, to_kernel: bool) {
        let client = |addr| client(addr, &rustls::version::TLS13, None, false);
        with_session(client, |tls, client| async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
            assert_eq!(
                tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite()),
                Some(rustls::CipherSuite::TLS13_AES_256_GCM_SHA384)
            );
            let got = match hand_over(tls, deadline, ciphers).await {
                Handover::Kernel { mut conn, early } => {
                    assert!(to_kernel, "handed to the kernel, which should not take it");
                    answer(&mut conn, early).await
                }
                Handover::Userspace(mut tls) => {
                    assert!(!to_kernel, "kept by rustls where the kernel takes it");
                    answer(&mut *tls, Vec::new()).await
                }
                Handover::Lost { why } => panic!("lost the session: {why}"),
            };
            assert_eq!(String::from_utf8_lossy(&got), REQUESTS.concat());
            let (plain, _) = client.join().expect("client");
            assert_eq!(plain, ANSWER);
        });
    }

    #[test]
    fn chacha20_sessions_taken_from_rustls_go_on_where_rustls_left_them() {
        use rustls::crypto::ring::cipher_suite as S;
        hand_over_round_trip(
            &rustls::version::TLS13,
            Some(S::TLS13_CHACHA20_POLY1305_SHA256),
            false,
        );
        hand_over_round_trip(
            &rustls::version::TLS12,
            Some(S::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256),
            false,
        );
    }

    #[test]
    fn a_flood_of_records_after_the_finished_stays_in_the_socket() {
        // The Finished and 2,000 one-byte records.
        let client = |addr| {
            let mut sock = std::net::TcpStream::connect(addr).expect("connect");
            let (mut conn, _) = client_session(&mut sock, &rustls::version::TLS13, None);
            let mut flood = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut flood).expect("finished");
            }
            let finished = flood.len();
            for _ in 0..2000 {
                conn.writer().write_all(b"x").expect("plaintext");
                while conn.wants_write() {
                    conn.write_tls(&mut flood).expect("records");
                }
            }
            // The handshake ends inside the first record of data: the hand-over must
            // finish that one record, and read no further.
            sock.write_all(&flood[..finished + 3]).expect("flood");
            std::thread::sleep(Duration::from_millis(200));
            sock.write_all(&flood[finished + 3..]).expect("flood");
            // Held open until the server is done.
            let mut buf = [0u8; 1];
            let _ = sock.read(&mut buf);
        };
        with_session(client, |mut tls, client| async move {
            prepare(&mut tls).await.expect("prepare");
            let keys = take_keys(tls).expect("keys");
            // rustls stopped at the first record of data: the rest is the kernel's to read.
            assert!(
                keys.early.len() <= 1,
                "{} bytes read early",
                keys.early.len()
            );
            assert!(keys.secrets.rx.0 <= 1);
            drop(keys);
            client.join().expect("client");
        });
    }
}
