//! The I/O of one origin fetch: a GET over HTTP/1.1 (TLS for an https origin), the body
//! hashed while it is written to a temporary file in the file's own folder ([`Sink`]), and
//! renamed into place only when complete and, where a profile pins one, matching its
//! SHA-256. The temporary file is removed on any failure (also when the fetch is dropped
//! at its timeout); the image name never shows a partial or unverified file.

use std::{
    fs::File,
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use http_body_util::{BodyExt as _, Empty};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use prometheus::IntCounter;
use sha2::{Digest as _, Sha256};

use super::{digest_hex, Failure};
use crate::config::origin::OriginUrl;

/// How an origin fetch's temporary file name ends (it also begins with a `.`).
pub const PARTIAL_SUFFIX: &str = ".origin-part";

/// Path characters sent as they are; everything else is percent-encoded (`/` separates
/// the segments of a profile's name and stays).
const PATH: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Chunks in flight between the socket and the file writer.
const QUEUE: usize = 16;

/// One fetch.
pub struct Job {
    /// The origin.
    pub url: OriginUrl,
    /// TLS for an https origin.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Image root (canonical).
    pub root: PathBuf,
    /// The file, root-relative and normal (`origin::normal`).
    pub name: String,
    /// The digest a profile pins.
    pub expected: Option<[u8; 32]>,
    /// `http.origin_max_bytes`.
    pub max_bytes: u64,
    /// `bootfabric_http_origin_bytes_total`.
    pub bytes: IntCounter,
}

/// The request target of `name` under the origin's prefix.
pub fn target(url: &OriginUrl, name: &str) -> String {
    format!("{}{}", url.prefix, utf8_percent_encode(name, PATH))
}

/// Fetches `job.name` into place; the bytes stored.
pub async fn fetch(job: Job) -> Result<u64, Failure> {
    let tcp = tokio::net::TcpStream::connect((job.url.host.as_str(), job.url.port))
        .await
        .map_err(|e| Failure::Connect(format!("{}:{}: {e}", job.url.host, job.url.port)))?;
    let _ = tcp.set_nodelay(true);
    match &job.tls {
        Some(tls) => {
            let name = rustls::pki_types::ServerName::try_from(job.url.host.clone())
                .map_err(|e| Failure::Tls(format!("{}: {e}", job.url.host)))?;
            let stream = tokio_rustls::TlsConnector::from(Arc::clone(tls))
                .connect(name, tcp)
                .await
                .map_err(|e| Failure::Tls(e.to_string()))?;
            exchange(TokioIo::new(stream), &job).await
        }
        None => exchange(TokioIo::new(tcp), &job).await,
    }
}

async fn exchange<T>(io: T, job: &Job) -> Result<u64, Failure>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Connect(e.to_string()))?;
    let driver = tokio::spawn(async move {
        let _ = conn.await;
    });
    let result = async {
        let default_port = if job.url.https { 443 } else { 80 };
        let host = match (job.url.host.contains(':'), job.url.port == default_port) {
            (true, true) => format!("[{}]", job.url.host),
            (true, false) => format!("[{}]:{}", job.url.host, job.url.port),
            (false, true) => job.url.host.clone(),
            (false, false) => format!("{}:{}", job.url.host, job.url.port),
        };
        let req = hyper::Request::get(target(&job.url, &job.name))
            .header(hyper::header::HOST, host)
            .header(hyper::header::USER_AGENT, "bootfabric-origin")
            .header(hyper::header::CONNECTION, "close")
            .body(Empty::<Bytes>::new())
            .map_err(|e| Failure::Protocol(e.to_string()))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| Failure::Protocol(e.to_string()))?;
        if resp.status() != hyper::StatusCode::OK {
            return Err(Failure::Status(resp.status().as_u16()));
        }
        let announced = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if announced.is_some_and(|n| n > job.max_bytes) {
            return Err(Failure::TooLarge { max: job.max_bytes });
        }
        let sink = Sink::create(&job.root, &job.name, job.max_bytes)?;
        // The file is written (and hashed) on a blocking thread, fed through a short
        // queue: no disk write stalls the runtime, and a slow disk slows the socket.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            let mut sink = sink;
            while let Some(chunk) = rx.blocking_recv() {
                sink.write(&chunk)?;
            }
            Ok::<Sink, Failure>(sink)
        });
        let mut body = resp.into_body();
        let received = async {
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| Failure::Protocol(e.to_string()))?;
                if let Ok(data) = frame.into_data() {
                    job.bytes.inc_by(data.len() as u64);
                    if tx.send(data).await.is_err() {
                        // The writer stopped: its error is the one to report.
                        break;
                    }
                }
            }
            Ok::<(), Failure>(())
        }
        .await;
        drop(tx);
        let sink = writer
            .await
            .map_err(|e| Failure::Io(format!("the writer failed: {e}")))?;
        // A broken body fails the fetch even when the writer kept up; the sink drops (its
        // temporary file with it).
        received?;
        let sink = sink?;
        let expected = job.expected;
        tokio::task::spawn_blocking(move || sink.commit(expected))
            .await
            .map_err(|e| Failure::Io(format!("the writer failed: {e}")))?
    }
    .await;
    driver.abort();
    result
}

static PARTIAL: AtomicU64 = AtomicU64::new(0);

/// A file being fetched: a temporary file beside its final name, and the hash of what was
/// written. Removed when dropped uncommitted.
pub struct Sink {
    tmp: PathBuf,
    dest: PathBuf,
    file: Option<File>,
    hasher: Sha256,
    len: u64,
    max: u64,
}

impl Sink {
    /// A temporary file for `name` (root-relative, normal) in its folder under `root`
    /// (created if needed, and checked to lie under `root` once resolved: a symlinked
    /// folder cannot lead the write out).
    pub fn create(root: &Path, name: &str, max: u64) -> Result<Self, Failure> {
        let dest = root.join(name);
        let dir = dest
            .parent()
            .ok_or_else(|| Failure::Io(format!("{name}: no folder")))?;
        let base = dest
            .file_name()
            .and_then(|b| b.to_str())
            .ok_or_else(|| Failure::Io(format!("{name}: no file name")))?
            .to_owned();
        std::fs::create_dir_all(dir).map_err(|e| Failure::Io(format!("{}: {e}", dir.display())))?;
        let real = dir
            .canonicalize()
            .map_err(|e| Failure::Io(format!("{}: {e}", dir.display())))?;
        if !real.starts_with(root) {
            return Err(Failure::Io(format!(
                "{} resolves outside http.root",
                dir.display()
            )));
        }
        let n = PARTIAL.fetch_add(1, Ordering::Relaxed);
        let tmp = real.join(format!(
            ".{base}.{}-{n}{PARTIAL_SUFFIX}",
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .map_err(|e| Failure::Io(format!("{}: {e}", tmp.display())))?;
        Ok(Self {
            tmp,
            dest: real.join(base),
            file: Some(file),
            hasher: Sha256::new(),
            len: 0,
            max,
        })
    }

    /// Appends `chunk`, refusing to grow past the bound.
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), Failure> {
        self.len += chunk.len() as u64;
        if self.len > self.max {
            return Err(Failure::TooLarge { max: self.max });
        }
        self.hasher.update(chunk);
        let file = self
            .file
            .as_mut()
            .ok_or_else(|| Failure::Io("written after commit".into()))?;
        file.write_all(chunk)
            .map_err(|e| Failure::Io(format!("{}: {e}", self.tmp.display())))
    }

    /// Checks the digest against `expected` (when pinned), makes the file durable and
    /// renames it into place; the bytes stored. A mismatch removes it.
    pub fn commit(mut self, expected: Option<[u8; 32]>) -> Result<u64, Failure> {
        let actual: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
        if let Some(expected) = expected.filter(|e| *e != actual) {
            return Err(Failure::Mismatch {
                expected: digest_hex(&expected),
                actual: digest_hex(&actual),
            });
        }
        let io = |e: std::io::Error| Failure::Io(format!("{}: {e}", self.tmp.display()));
        let file = self
            .file
            .take()
            .ok_or_else(|| io(std::io::Error::other("committed twice")))?;
        file.sync_all().map_err(io)?;
        drop(file);
        std::fs::rename(&self.tmp, &self.dest).map_err(io)?;
        // The rename itself, durable: a crash now leaves the whole file or none.
        if let Some(dir) = self.dest.parent() {
            if let Ok(d) = File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(self.len)
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sha(bytes: &[u8]) -> [u8; 32] {
        Sha256::digest(bytes).into()
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_matching_file_is_renamed_into_place() {
        let root = tempfile::tempdir().expect("tmp");
        let root = root.path().canonicalize().expect("root");
        let mut s = Sink::create(&root, "debian/linux", 100).expect("sink");
        assert_eq!(names(&root.join("debian")).len(), 1, "the temporary file");
        assert!(
            !root.join("debian/linux").exists(),
            "not visible before the end"
        );
        s.write(b"hello ").expect("write");
        s.write(b"world").expect("write");
        assert_eq!(s.commit(Some(sha(b"hello world"))).expect("commit"), 11);
        assert_eq!(names(&root.join("debian")), ["linux"]);
        assert_eq!(
            std::fs::read(root.join("debian/linux")).expect("read"),
            b"hello world"
        );
    }

    #[test]
    fn a_mismatch_removes_the_file_and_names_both_digests() {
        let root = tempfile::tempdir().expect("tmp");
        let root = root.path().canonicalize().expect("root");
        let mut s = Sink::create(&root, "k", 100).expect("sink");
        s.write(b"tampered").expect("write");
        let Err(Failure::Mismatch { expected, actual }) = s.commit(Some(sha(b"genuine"))) else {
            panic!("a mismatch passed");
        };
        assert_eq!(expected, digest_hex(&sha(b"genuine")));
        assert_eq!(actual, digest_hex(&sha(b"tampered")));
        assert!(names(&root).is_empty(), "{:?}", names(&root));
    }

    #[test]
    fn the_bound_and_a_drop_leave_nothing_behind() {
        let root = tempfile::tempdir().expect("tmp");
        let root = root.path().canonicalize().expect("root");
        let mut s = Sink::create(&root, "k", 10).expect("sink");
        s.write(&[0; 10]).expect("at the bound");
        assert_eq!(s.write(&[0]), Err(Failure::TooLarge { max: 10 }));
        drop(s);
        assert!(names(&root).is_empty());
    }

    #[test]
    fn a_symlinked_folder_cannot_lead_the_write_out() {
        let d = tempfile::tempdir().expect("tmp");
        let root = d.path().join("root");
        std::fs::create_dir_all(&root).expect("root");
        std::fs::create_dir_all(d.path().join("elsewhere")).expect("elsewhere");
        std::os::unix::fs::symlink(d.path().join("elsewhere"), root.join("debian")).expect("link");
        let root = root.canonicalize().expect("root");
        assert!(matches!(
            Sink::create(&root, "debian/linux", 10),
            Err(Failure::Io(_))
        ));
        assert!(names(&d.path().join("elsewhere")).is_empty());
    }

    #[test]
    fn targets_are_percent_encoded_under_the_prefix() {
        let url = OriginUrl::parse("http://o:8080/images").expect("url");
        assert_eq!(target(&url, "debian/linux"), "/images/debian/linux");
        assert_eq!(target(&url, "a b/c?d#e%"), "/images/a%20b/c%3Fd%23e%25");
    }
}
