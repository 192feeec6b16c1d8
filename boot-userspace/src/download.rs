//! Whole-file HTTP(S) downloads that survive a cut connection: what is on disk is kept, and
//! the next attempt asks for the rest (`Range: bytes=<have>-`, `If-Range` with the first
//! response's validator, so a file that changed at the origin starts over instead of
//! splicing two versions). A partial file left by a killed process is resumed the same way
//! by the next run: its validator is kept beside it (`<file>.validator`).
//!
//! Knows HTTP and files, nothing of images: the caller verifies what arrives.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use http_body_util::{BodyExt as _, Empty};
use hyper::{body::Bytes, header, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWriteExt as _;

/// Attempts per file: the first and the resumptions after a cut or a stall.
pub const ATTEMPTS: u32 = 6;
/// Redirects followed per request.
pub const MAX_REDIRECTS: usize = 5;

/// Why a download failed.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    /// The URL cannot be fetched as given.
    #[error("{url}: {why}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong.
        why: String,
    },
    /// The origin answered with a status other than 200 or 206.
    #[error("{url}: the origin answered {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status.
        status: u16,
    },
    /// The file is larger than allowed.
    #[error("{url}: larger than {max} bytes (raise max_bytes if it should be)")]
    TooLarge {
        /// The URL.
        url: String,
        /// The bound.
        max: u64,
    },
    /// Every attempt failed; the last one's reason.
    #[error("{url}: {attempts} attempts failed, the last: {last}")]
    Failed {
        /// The URL.
        url: String,
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// The local file cannot be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

/// How to fetch.
#[derive(Clone)]
pub struct Fetch {
    /// TLS for https URLs.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Largest file taken.
    pub max_bytes: u64,
    /// How long a response may send nothing before the attempt is abandoned (and resumed).
    pub stall: Duration,
    /// The User-Agent sent.
    pub agent: &'static str,
    /// The pause before the first retry; it doubles with each one (up to 32 times).
    pub backoff: Duration,
}

/// What an attempt ended with.
enum Attempt {
    /// The file is complete.
    Done(u64),
    /// Try again (resuming) for this reason.
    Retry(String),
}

/// Bytes so far and the total when the origin said it.
pub type Progress<'a> = &'a mut (dyn FnMut(u64, Option<u64>) + Send);

impl Fetch {
    /// Downloads `url` into `path`, resuming what is there; the file's length when complete.
    /// Retries (with a growing pause) after a cut connection, a stall or a 5xx answer.
    pub async fn to_file(
        &self,
        url: &Uri,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<u64, DownloadError> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                tokio::time::sleep(self.backoff * (1 << (attempt - 1).min(5))).await;
            }
            match self.attempt(url, path, progress).await? {
                Attempt::Done(n) => {
                    let _ = std::fs::remove_file(validator_path(path));
                    return Ok(n);
                }
                Attempt::Retry(why) => last = why,
            }
        }
        Err(DownloadError::Failed {
            url: url.to_string(),
            attempts: ATTEMPTS,
            last,
        })
    }

    /// A small file (a sums file, a signature) into memory, at most `max` bytes.
    pub async fn to_memory(&self, url: &Uri, max: u64) -> Result<Vec<u8>, DownloadError> {
        let mut last = String::new();
        for attempt in 0..ATTEMPTS.min(3) {
            if attempt > 0 {
                tokio::time::sleep(self.backoff * (1 << (attempt - 1))).await;
            }
            let resp = match self.get(url, None).await? {
                Ok(r) => r,
                Err(why) => {
                    last = why;
                    continue;
                }
            };
            match resp.status() {
                StatusCode::OK => {}
                s if s.is_server_error() => {
                    last = format!("the origin answered {s}");
                    continue;
                }
                s => {
                    return Err(DownloadError::Status {
                        url: url.to_string(),
                        status: s.as_u16(),
                    })
                }
            }
            let mut body = resp.into_body();
            let mut out = Vec::new();
            let read = async {
                while let Some(frame) = body.frame().await {
                    let frame = frame.map_err(|e| e.to_string())?;
                    if let Ok(data) = frame.into_data() {
                        if out.len() as u64 + data.len() as u64 > max {
                            return Ok(false);
                        }
                        out.extend_from_slice(&data);
                    }
                }
                Ok::<bool, String>(true)
            };
            match tokio::time::timeout(self.stall, read).await {
                Ok(Ok(true)) => return Ok(out),
                Ok(Ok(false)) => {
                    return Err(DownloadError::TooLarge {
                        url: url.to_string(),
                        max,
                    })
                }
                Ok(Err(why)) => last = why,
                Err(_) => last = format!("nothing received for {:?}", self.stall),
            }
        }
        Err(DownloadError::Failed {
            url: url.to_string(),
            attempts: 3,
            last,
        })
    }

    async fn attempt(
        &self,
        url: &Uri,
        path: &Path,
        progress: Progress<'_>,
    ) -> Result<Attempt, DownloadError> {
        let werr = |e| DownloadError::Io {
            path: path.to_owned(),
            source: e,
        };
        let have = match tokio::fs::metadata(path).await {
            Ok(m) => m.len(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(werr(e)),
        };
        let validator = tokio::fs::read_to_string(validator_path(path)).await.ok();
        // Without a validator the bytes on disk cannot be proven to be this file's: start over.
        let resume = (have > 0)
            .then_some(())
            .and(validator.as_deref())
            .map(|v| (have, v));
        let resp = match self.get(url, resume).await? {
            Ok(r) => r,
            Err(why) => return Ok(Attempt::Retry(why)),
        };
        let status = resp.status();
        let (append, total) = match status {
            StatusCode::OK => (false, content_length(&resp)),
            StatusCode::PARTIAL_CONTENT => {
                let Some((start, total)) = content_range(&resp) else {
                    return Ok(Attempt::Retry(
                        "a 206 answer without a usable Content-Range".into(),
                    ));
                };
                if Some(start) != resume.map(|(h, _)| h) {
                    // Not the rest we asked for: start over.
                    let _ = tokio::fs::remove_file(path).await;
                    return Ok(Attempt::Retry(format!(
                        "the origin resumed at byte {start}, not {have}"
                    )));
                }
                // An origin that ignores If-Range would splice two versions of the file:
                // the rest must carry the validator the first part came with.
                if validator_of(&resp).is_some_and(|v| Some(v.as_str()) != validator.as_deref()) {
                    let _ = tokio::fs::remove_file(path).await;
                    return Ok(Attempt::Retry(
                        "the rest is of another version of the file (its validator changed)".into(),
                    ));
                }
                (true, total)
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                // Asked from past the end: what is on disk may be all of it, or a longer,
                // older file. Start over; the caller's checksum decides either way.
                let _ = tokio::fs::remove_file(path).await;
                return Ok(Attempt::Retry("the origin refused the range (416)".into()));
            }
            s if s.is_server_error() => {
                return Ok(Attempt::Retry(format!("the origin answered {s}")))
            }
            s => {
                return Err(DownloadError::Status {
                    url: url.to_string(),
                    status: s.as_u16(),
                })
            }
        };
        if total.is_some_and(|t| t > self.max_bytes) {
            return Err(DownloadError::TooLarge {
                url: url.to_string(),
                max: self.max_bytes,
            });
        }
        if !append {
            // A fresh file: remember how to resume it should this attempt be cut.
            match validator_of(&resp) {
                Some(v) => write_nofollow(&validator_path(path), v.as_bytes())
                    .await
                    .map_err(werr)?,
                None => {
                    let _ = tokio::fs::remove_file(validator_path(path)).await;
                }
            }
        }
        // Never through a symlink: the folder may be one others can write to.
        let file = tokio::fs::OpenOptions::new()
            .custom_flags(libc::O_NOFOLLOW)
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(path)
            .await
            .map_err(werr)?;
        let mut out = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut done = if append { have } else { 0 };
        progress(done, total);
        let mut body = resp.into_body();
        loop {
            let frame = match tokio::time::timeout(self.stall, body.frame()).await {
                Err(_) => {
                    out.flush().await.map_err(werr)?;
                    return Ok(Attempt::Retry(format!(
                        "nothing received for {:?} after {done} bytes",
                        self.stall
                    )));
                }
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    // Keep what arrived: the next attempt asks for the rest.
                    out.flush().await.map_err(werr)?;
                    return Ok(Attempt::Retry(format!("cut after {done} bytes: {e}")));
                }
                Ok(Some(Ok(f))) => f,
            };
            if let Ok(data) = frame.into_data() {
                done += data.len() as u64;
                if done > self.max_bytes {
                    let _ = tokio::fs::remove_file(path).await;
                    return Err(DownloadError::TooLarge {
                        url: url.to_string(),
                        max: self.max_bytes,
                    });
                }
                out.write_all(&data).await.map_err(werr)?;
                progress(done, total);
            }
        }
        out.flush().await.map_err(werr)?;
        out.into_inner().sync_all().await.map_err(werr)?;
        if let Some(t) = total.filter(|t| *t != done) {
            return Ok(Attempt::Retry(format!("ended at {done} of {t} bytes")));
        }
        Ok(Attempt::Done(done))
    }

    /// One GET, optionally of the rest of a file; the response, or why to retry.
    async fn get(
        &self,
        url: &Uri,
        resume: Option<(u64, &str)>,
    ) -> Result<Result<hyper::Response<hyper::body::Incoming>, String>, DownloadError> {
        // Mirrors redirect (download.opensuse.org sends large files to a mirror): follow a
        // few, never from https to http.
        let mut at = url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let resp = match self.get_once(&at, resume).await? {
                Ok(r) => r,
                Err(why) => return Ok(Err(why)),
            };
            if !resp.status().is_redirection() || resp.status() == StatusCode::NOT_MODIFIED {
                return Ok(Ok(resp));
            }
            let next = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| redirect_target(&at, l))
                .ok_or_else(|| DownloadError::Url {
                    url: at.to_string(),
                    why: format!("a {} without a usable Location", resp.status()),
                })?;
            if at.scheme_str() == Some("https") && next.scheme_str() != Some("https") {
                return Err(DownloadError::Url {
                    url: at.to_string(),
                    why: format!("redirected from https to {next}: refused"),
                });
            }
            at = next;
        }
        Err(DownloadError::Url {
            url: url.to_string(),
            why: format!("more than {MAX_REDIRECTS} redirects"),
        })
    }

    /// One GET of `url`, optionally of the rest of a file; the response, or why to retry.
    async fn get_once(
        &self,
        url: &Uri,
        resume: Option<(u64, &str)>,
    ) -> Result<Result<hyper::Response<hyper::body::Incoming>, String>, DownloadError> {
        let bad = |why: String| DownloadError::Url {
            url: url.to_string(),
            why,
        };
        let https = url.scheme_str() == Some("https");
        let host = url.host().ok_or_else(|| bad("no host".into()))?;
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
        let tcp =
            match tokio::time::timeout(self.stall, tokio::net::TcpStream::connect((bare, port)))
                .await
            {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => return Ok(Err(format!("connect {bare}:{port}: {e}"))),
                Err(_) => return Ok(Err(format!("connect {bare}:{port}: timed out"))),
            };
        let _ = tcp.set_nodelay(true);
        let mut req = hyper::Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
            .header(header::HOST, url.authority().map_or(host, |a| a.as_str()))
            .header(header::USER_AGENT, self.agent)
            .header(header::CONNECTION, "close");
        if let Some((have, validator)) = resume {
            req = req
                .header(header::RANGE, format!("bytes={have}-"))
                .header(header::IF_RANGE, validator);
        }
        let req = req
            .body(Empty::<Bytes>::new())
            .map_err(|e| bad(e.to_string()))?;
        let sent = if https {
            let Some(tls) = &self.tls else {
                return Err(bad("https without TLS settings".into()));
            };
            let name = rustls::pki_types::ServerName::try_from(bare.to_owned())
                .map_err(|e| bad(e.to_string()))?;
            let stream = match tokio_rustls::TlsConnector::from(Arc::clone(tls))
                .connect(name, tcp)
                .await
            {
                Ok(s) => s,
                // A certificate that does not verify will not verify on a retry either.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(bad(format!("TLS: {e}")))
                }
                Err(e) => return Ok(Err(format!("TLS: {e}"))),
            };
            send(TokioIo::new(stream), req, self.stall).await
        } else {
            send(TokioIo::new(tcp), req, self.stall).await
        };
        Ok(sent)
    }
}

async fn write_nofollow(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = tokio::fs::OpenOptions::new()
        .custom_flags(libc::O_NOFOLLOW)
        .create(true)
        .write(true)
        .truncate(true)
        .open(path)
        .await?;
    f.write_all(bytes).await
}

async fn send<T>(
    io: T,
    req: hyper::Request<Empty<Bytes>>,
    stall: Duration,
) -> Result<hyper::Response<hyper::body::Incoming>, String>
where
    T: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    match tokio::time::timeout(stall, sender.send_request(req)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer for {stall:?}")),
    }
}

/// Where a redirect points: an absolute http(s) URL, or a path on the same origin.
fn redirect_target(from: &Uri, location: &str) -> Option<Uri> {
    let to: Uri = location.parse().ok()?;
    if to.scheme().is_some() {
        return matches!(to.scheme_str(), Some("http") | Some("https")).then_some(to);
    }
    if !location.starts_with('/') {
        return None;
    }
    let mut parts = from.clone().into_parts();
    parts.path_and_query = Some(location.parse().ok()?);
    Uri::from_parts(parts).ok()
}

/// Where the validator of a partial download is kept: beside it, `<file>.validator`.
pub fn validator_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".validator");
    path.with_file_name(name)
}

/// The strong validator `If-Range` may carry: an ETag that is not weak, else Last-Modified.
fn validator_of<B>(resp: &hyper::Response<B>) -> Option<String> {
    let h = resp.headers();
    h.get(header::ETAG)
        .and_then(|v| v.to_str().ok())
        .filter(|e| !e.starts_with("W/"))
        .or_else(|| h.get(header::LAST_MODIFIED).and_then(|v| v.to_str().ok()))
        .map(str::to_owned)
}

fn content_length<B>(resp: &hyper::Response<B>) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// `Content-Range: bytes <start>-<end>/<total>`: the start, and the total when known.
fn content_range<B>(resp: &hyper::Response<B>) -> Option<(u64, Option<u64>)> {
    let v = resp.headers().get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(headers: &[(&str, &str)]) -> hyper::Response<()> {
        let mut r = hyper::Response::builder();
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        r.body(()).expect("response")
    }

    #[test]
    fn content_range_reads_start_and_total() {
        assert_eq!(
            content_range(&resp(&[("content-range", "bytes 100-199/1000")])),
            Some((100, Some(1000)))
        );
        assert_eq!(
            content_range(&resp(&[("content-range", "bytes 5-9/*")])),
            Some((5, None))
        );
        assert_eq!(
            content_range(&resp(&[("content-range", "items 1-2/3")])),
            None
        );
        assert_eq!(content_range(&resp(&[])), None);
    }

    #[test]
    fn a_weak_etag_is_no_validator_for_if_range() {
        assert_eq!(
            validator_of(&resp(&[("etag", "\"abc\"")])).as_deref(),
            Some("\"abc\"")
        );
        assert_eq!(
            validator_of(&resp(&[
                ("etag", "W/\"abc\""),
                ("last-modified", "Tue, 01 Dec 2026 10:00:00 GMT")
            ]))
            .as_deref(),
            Some("Tue, 01 Dec 2026 10:00:00 GMT")
        );
        assert_eq!(validator_of(&resp(&[("etag", "W/\"abc\"")])), None);
    }

    /// A loopback origin that answers each connection with the next scripted reply
    /// (`None`: close without answering), and records each request head.
    async fn origin(replies: Vec<Option<Vec<u8>>>) -> (Uri, Arc<std::sync::Mutex<Vec<String>>>) {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::clone(&heads);
        tokio::spawn(async move {
            for reply in replies {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let mut buf = vec![0u8; 4096];
                let n = s.read(&mut buf).await.unwrap_or(0);
                if let Ok(mut h) = seen.lock() {
                    h.push(String::from_utf8_lossy(&buf[..n]).to_lowercase());
                }
                if let Some(r) = reply {
                    let _ = s.write_all(&r).await;
                }
                let _ = s.shutdown().await;
            }
        });
        let uri: Uri = format!("http://{addr}/img/linux").parse().expect("uri");
        (uri, heads)
    }

    fn reply(status: &str, headers: &[&str], body: &[u8], announced: usize) -> Option<Vec<u8>> {
        let mut r = format!("HTTP/1.1 {status}\r\ncontent-length: {announced}\r\n");
        for h in headers {
            r.push_str(h);
            r.push_str("\r\n");
        }
        r.push_str("\r\n");
        let mut r = r.into_bytes();
        r.extend_from_slice(body);
        Some(r)
    }

    fn fetch(max_bytes: u64) -> Fetch {
        Fetch {
            tls: None,
            max_bytes,
            stall: Duration::from_secs(5),
            agent: "test",
            backoff: Duration::from_millis(1),
        }
    }

    #[tokio::test]
    async fn a_cut_download_resumes_from_what_arrived_with_if_range() {
        let body: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
        let (uri, heads) = origin(vec![
            reply("200 OK", &["etag: \"v1\""], &body[..400], 1000),
            reply(
                "206 Partial Content",
                &["etag: \"v1\"", "content-range: bytes 400-999/1000"],
                &body[400..],
                600,
            ),
        ])
        .await;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("linux");
        let n = fetch(1 << 20)
            .to_file(&uri, &path, &mut |_, _| {})
            .await
            .expect("resumed");
        assert_eq!(n, 1000);
        assert_eq!(std::fs::read(&path).expect("file"), body);
        let heads = heads.lock().expect("heads").clone();
        assert!(heads[1].contains("range: bytes=400-"), "{heads:?}");
        assert!(heads[1].contains("if-range: \"v1\""), "{heads:?}");
        assert!(
            !validator_path(&path).exists(),
            "the validator is gone once complete"
        );
    }

    #[tokio::test]
    async fn a_file_that_changed_at_the_origin_starts_over_instead_of_splicing() {
        let old: Vec<u8> = vec![1; 1000];
        let new: Vec<u8> = vec![2; 800];
        // The resume is answered whole (the If-Range validator no longer matches), then a
        // 206 that does not start where the file ends is not appended either.
        let (uri, _) = origin(vec![
            reply("200 OK", &["etag: \"old\""], &old[..300], 1000),
            reply(
                "206 Partial Content",
                &["etag: \"x\"", "content-range: bytes 0-799/800"],
                &new,
                800,
            ),
            reply("200 OK", &["etag: \"new\""], &new, 800),
        ])
        .await;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("linux");
        fetch(1 << 20)
            .to_file(&uri, &path, &mut |_, _| {})
            .await
            .expect("fetched");
        assert_eq!(std::fs::read(&path).expect("file"), new);
    }

    #[tokio::test]
    async fn oversized_and_refused_files_fail_without_retrying_or_keeping_bytes() {
        let (uri, heads) = origin(vec![reply("200 OK", &[], b"", 5000)]).await;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("linux");
        let e = fetch(4096)
            .to_file(&uri, &path, &mut |_, _| {})
            .await
            .expect_err("too large");
        assert!(
            matches!(e, DownloadError::TooLarge { max: 4096, .. }),
            "{e}"
        );
        assert!(!path.exists());
        let (uri, _) = origin(vec![reply("404 Not Found", &[], b"", 0)]).await;
        let e = fetch(4096)
            .to_file(&uri, &path, &mut |_, _| {})
            .await
            .expect_err("404");
        assert!(
            matches!(e, DownloadError::Status { status: 404, .. }),
            "{e}"
        );
        assert_eq!(heads.lock().expect("heads").len(), 1);
        // A small file larger than its bound while streaming (no length announced up front).
        let mut chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
        for _ in 0..3 {
            chunked.extend_from_slice(b"400\r\n");
            chunked.extend_from_slice(&[b'a'; 1024]);
            chunked.extend_from_slice(b"\r\n");
        }
        chunked.extend_from_slice(b"0\r\n\r\n");
        let (uri, _) = origin(vec![Some(chunked)]).await;
        let e = fetch(4096).to_memory(&uri, 2048).await.expect_err("over");
        assert!(
            matches!(e, DownloadError::TooLarge { max: 2048, .. }),
            "{e}"
        );
    }

    #[tokio::test]
    async fn attempts_are_bounded() {
        let (uri, heads) = origin(vec![None; ATTEMPTS as usize + 2]).await;
        let dir = tempfile::tempdir().expect("dir");
        let e = fetch(4096)
            .to_file(&uri, &dir.path().join("linux"), &mut |_, _| {})
            .await
            .expect_err("never answered");
        assert!(
            matches!(
                e,
                DownloadError::Failed {
                    attempts: ATTEMPTS,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(heads.lock().expect("heads").len(), ATTEMPTS as usize);
    }

    #[tokio::test]
    async fn redirects_are_followed_but_never_down_to_plain_http_and_symlinks_never_followed() {
        let body = b"kernel bytes".to_vec();
        let (target, _) = origin(vec![reply("200 OK", &[], &body, body.len())]).await;
        let (uri, _) = origin(vec![reply(
            "302 Found",
            &[&format!("location: {target}")],
            b"",
            0,
        )])
        .await;
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("linux");
        fetch(4096)
            .to_file(&uri, &path, &mut |_, _| {})
            .await
            .expect("followed");
        assert_eq!(std::fs::read(&path).expect("file"), body);
        // A relative Location stays on the origin.
        let from: Uri = "https://mirror.example/a/b.iso".parse().expect("uri");
        assert_eq!(
            redirect_target(&from, "/c/d.iso").map(|u| u.to_string()),
            Some("https://mirror.example/c/d.iso".to_owned())
        );
        assert_eq!(redirect_target(&from, "ftp://x/y"), None);
        assert_eq!(redirect_target(&from, "c/d.iso"), None);
        // A file planted as a symlink is not written through.
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep").expect("victim");
        let planted = dir.path().join("planted");
        std::os::unix::fs::symlink(&victim, &planted).expect("symlink");
        let (uri, _) = origin(vec![reply("200 OK", &[], &body, body.len())]).await;
        assert!(fetch(4096)
            .to_file(&uri, &planted, &mut |_, _| {})
            .await
            .is_err());
        assert_eq!(std::fs::read(&victim).expect("victim"), b"keep");
    }

    #[test]
    fn the_validator_sits_beside_the_file() {
        assert_eq!(
            validator_path(Path::new("/a/b/linux.part")),
            PathBuf::from("/a/b/linux.part.validator")
        );
    }
}
