//! Images pulled from an origin (`http.origin`): a rack fabric that lacks a profile's file
//! under `http.root` fetches it once, on its first request, and then serves it as any other
//! file. Concurrent misses of one file wait for that one fetch.
//!
//! What a machine on the provisioning network can make happen is bounded here: only the
//! files a profile names ([`wanted`]) are ever fetched (any other missing path is a 404
//! with no origin traffic); one fetch per file at a time ([`Flights`]); after a failure the
//! file is not fetched again before a backoff that doubles up to a minute, so no request
//! pattern makes the fabric hammer the origin; and each fetch is bounded in bytes and time
//! ([`fetch`]).
//!
//! [`wanted`] and [`Flights`] are pure (no I/O, the clock passed in); [`Origin`] is the
//! shell that locks them, starts fetches on the runtime and wakes the waiting requests;
//! [`fetch`] moves the bytes.

pub mod fetch;

use std::{
    collections::HashMap,
    os::fd::{AsRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use prometheus::{IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use tokio::time::Instant;
use tracing::{error, info, warn};

use crate::{config::origin::OriginConfig, model::inventory::Inventory, redfish::tls::hex};

/// First wait after a failed fetch; each further failure doubles it.
pub const BACKOFF_FIRST: Duration = Duration::from_secs(1);
/// Longest wait between two fetches of one file after failures.
pub const BACKOFF_MAX: Duration = Duration::from_secs(60);

/// Why a fetch failed. Cloned into the answer of every request refused until the next try.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The origin could not be reached.
    #[error("cannot connect to the origin: {0}")]
    Connect(String),
    /// The TLS handshake with an https origin failed.
    #[error("TLS with the origin: {0}")]
    Tls(String),
    /// The origin answered something other than 200.
    #[error("the origin answered {0}")]
    Status(u16),
    /// The file is larger than `http.origin_max_bytes`.
    #[error("larger than http.origin_max_bytes ({max} bytes)")]
    TooLarge {
        /// The bound.
        max: u64,
    },
    /// The bytes do not hash to the profile's `sha256`.
    #[error("SHA-256 mismatch: the profile pins {expected}, the origin sent {actual}")]
    Mismatch {
        /// The profile's digest, hex.
        expected: String,
        /// The digest of what arrived, hex.
        actual: String,
    },
    /// Profiles pin different digests for this file: nothing would pass for all of them.
    #[error("profiles pin different SHA-256 digests for this file")]
    Conflict,
    /// The fetch took longer than `http.origin_timeout_s`.
    #[error("no complete file within http.origin_timeout_s ({0:?})")]
    Timeout(Duration),
    /// The response broke off or was not HTTP.
    #[error("the origin's response: {0}")]
    Protocol(String),
    /// The file could not be written here.
    #[error("storing the file: {0}")]
    Io(String),
}

impl Failure {
    /// The status a request refused for this failure gets: 502 when the origin answered
    /// badly (what it sent is wrong), 503 when it, or this fabric's disk, could not be used
    /// now (try later).
    pub fn status(&self) -> u16 {
        match self {
            Self::Status(_)
            | Self::TooLarge { .. }
            | Self::Mismatch { .. }
            | Self::Conflict
            | Self::Protocol(_)
            | Self::Tls(_) => 502,
            Self::Connect(_) | Self::Timeout(_) | Self::Io(_) => 503,
        }
    }

    /// The `result` label of `bootfabric_http_origin_fetches_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Mismatch { .. } => "mismatch",
            _ => "error",
        }
    }
}

/// Whether a root-relative name is a file some profile fetches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Wanted {
    /// No profile names it: never fetched.
    No,
    /// A profile's kernel or initrd, with the digest a profile pins for it.
    Yes(Option<[u8; 32]>),
    /// Profiles pin different digests for it.
    Conflict,
}

/// `name` with empty and `.` segments dropped and no leading `/`, as profiles and requests
/// may both spell a file (`/debian/./linux` is `debian/linux`); `None` with a `..`.
pub fn normal(name: &str) -> Option<String> {
    let mut out = Vec::new();
    for seg in name.split('/') {
        match seg {
            "" | "." => {}
            ".." => return None,
            s => out.push(s),
        }
    }
    (!out.is_empty()).then(|| out.join("/"))
}

/// Whether `name` (root-relative) is a profile's kernel or initrd, and its pinned digest.
pub fn wanted(inventory: &Inventory, name: &str) -> Wanted {
    let Some(name) = normal(name) else {
        return Wanted::No;
    };
    let mut found = false;
    let mut digest: Option<[u8; 32]> = None;
    for p in inventory.profiles().values() {
        for f in p.files() {
            if normal(f).as_deref() != Some(name.as_str()) {
                continue;
            }
            found = true;
            if let Some(d) = p.sha256.get(f) {
                match digest {
                    Some(other) if other != *d => return Wanted::Conflict,
                    _ => digest = Some(*d),
                }
            }
        }
    }
    if found {
        Wanted::Yes(digest)
    } else {
        Wanted::No
    }
}

/// One fetch in progress; the requests that wait for it are woken when it lands.
#[derive(Debug)]
pub struct Flight {
    landed: tokio::sync::watch::Sender<bool>,
}

impl Flight {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            landed: tokio::sync::watch::Sender::new(false),
        })
    }

    /// Whether the fetch has ended (stored, or failed).
    pub fn has_landed(&self) -> bool {
        *self.landed.borrow()
    }

    fn land(&self) {
        self.landed.send_replace(true);
    }

    /// Returns once the fetch has ended.
    pub async fn wait(&self) {
        let mut rx = self.landed.subscribe();
        // Err: the sender is gone, which it cannot be while `self` lives.
        let _ = rx.wait_for(|landed| *landed).await;
    }
}

enum Entry {
    Running {
        flight: Arc<Flight>,
        failures: u32,
    },
    Failed {
        failure: Failure,
        until: Instant,
        failures: u32,
    },
}

/// What to do about a request for a missing file some profile names.
#[derive(Debug)]
pub enum Decision {
    /// Fetch it (no fetch is running), and wait for this flight.
    Start(Arc<Flight>),
    /// A fetch is running: wait for it.
    Wait(Arc<Flight>),
    /// The last fetch failed and the next may not start yet.
    Refuse {
        /// Why the last fetch failed.
        failure: Failure,
        /// How long until a request may start the next.
        retry_after: Duration,
    },
}

/// The single-flight table: per file, the fetch running or the failure that holds the next
/// one back. No I/O and no clock: the caller passes `now`.
#[derive(Default)]
pub struct Flights {
    entries: HashMap<String, Entry>,
}

/// The wait after `failures` consecutive failures: 1 s, 2 s, 4 s, … up to a minute.
pub fn backoff(failures: u32) -> Duration {
    let shift = failures.saturating_sub(1).min(16);
    BACKOFF_FIRST.saturating_mul(1 << shift).min(BACKOFF_MAX)
}

impl Flights {
    /// A request for `name`, missing under the root, at `now`.
    pub fn ask(&mut self, name: &str, now: Instant) -> Decision {
        let failures = match self.entries.get(name) {
            Some(Entry::Running { flight, .. }) => return Decision::Wait(Arc::clone(flight)),
            Some(Entry::Failed {
                failure,
                until,
                failures,
            }) => {
                if now < *until {
                    return Decision::Refuse {
                        failure: failure.clone(),
                        retry_after: *until - now,
                    };
                }
                *failures
            }
            None => 0,
        };
        let flight = Flight::new();
        let running = Entry::Running {
            flight: Arc::clone(&flight),
            failures,
        };
        self.entries.insert(name.to_owned(), running);
        Decision::Start(flight)
    }

    /// The fetch of `name` ended at `now`: on success the entry goes (the file is there
    /// now); a failure holds the next fetch back for [`backoff`]. Returns the flight, for
    /// the caller to land once the table says what the woken requests will find.
    pub fn landed(
        &mut self,
        name: &str,
        outcome: Result<(), Failure>,
        now: Instant,
    ) -> Option<Arc<Flight>> {
        let Some(Entry::Running { flight, failures }) = self.entries.remove(name) else {
            return None;
        };
        if let Err(failure) = outcome {
            let failures = failures.saturating_add(1);
            let until = now + backoff(failures);
            self.entries.insert(
                name.to_owned(),
                Entry::Failed {
                    failure,
                    until,
                    failures,
                },
            );
        }
        Some(flight)
    }

    /// Fetches running now.
    pub fn running(&self) -> usize {
        self.entries
            .values()
            .filter(|e| matches!(e, Entry::Running { .. }))
            .count()
    }
}

/// Origin metrics.
#[derive(Clone)]
pub struct Metrics {
    fetches: IntCounterVec,
    bytes: IntCounter,
    waiters: IntGauge,
}

impl Metrics {
    /// Registers the `bootfabric_http_origin_*` metrics.
    pub fn register(r: &Registry) -> Result<Self, prometheus::Error> {
        let fetches = IntCounterVec::new(
            Opts::new(
                "bootfabric_http_origin_fetches_total",
                "Files fetched from http.origin, by result (ok, mismatch, error).",
            ),
            &["result"],
        )?;
        let bytes = IntCounter::new(
            "bootfabric_http_origin_bytes_total",
            "Body bytes received from http.origin (failed fetches included).",
        )?;
        let waiters = IntGauge::new(
            "bootfabric_http_origin_waiters",
            "Requests waiting for a file being fetched from http.origin.",
        )?;
        for result in ["ok", "mismatch", "error"] {
            fetches.with_label_values(&[result]);
        }
        r.register(Box::new(fetches.clone()))?;
        r.register(Box::new(bytes.clone()))?;
        r.register(Box::new(waiters.clone()))?;
        Ok(Self {
            fetches,
            bytes,
            waiters,
        })
    }
}

/// A request waiting for a flight; counted in `bootfabric_http_origin_waiters` while it
/// lives. The transport keeps the request's bytes and routes it again once the flight has
/// landed: it then finds the file, or the failure.
pub struct Waiter {
    flight: Arc<Flight>,
    gauge: IntGauge,
}

impl Waiter {
    fn new(flight: Arc<Flight>, gauge: &IntGauge) -> Self {
        gauge.inc();
        Self {
            flight,
            gauge: gauge.clone(),
        }
    }

    /// Whether the flight has landed.
    pub fn has_landed(&self) -> bool {
        self.flight.has_landed()
    }

    /// Returns once the flight has landed.
    pub async fn wait(&self) {
        self.flight.wait().await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.gauge.dec();
    }
}

/// The answer to a request for a file missing under the root.
pub enum Answer {
    /// No profile names it: 404, nothing fetched.
    NotOurs,
    /// Wait for the fetch, then route the request again.
    Wait(Waiter),
    /// Refused for now: the status, `Retry-After` seconds (none when retrying cannot help)
    /// and why.
    Refuse {
        /// 502 or 503.
        status: u16,
        /// Seconds to send as `Retry-After`.
        retry_after_s: Option<u64>,
        /// The failure, for the body.
        failure: Failure,
    },
}

/// The origin shell: the flight table behind a lock, fetches started on the runtime the
/// service started on, and the io_uring rings' wake-up descriptors.
pub struct Origin {
    config: OriginConfig,
    root: PathBuf,
    tls: Option<Arc<rustls::ClientConfig>>,
    flights: Mutex<Flights>,
    metrics: Metrics,
    runtime: tokio::runtime::Handle,
    /// eventfds the rings wait on: each landing writes to all of them.
    wakers: Mutex<Vec<Arc<OwnedFd>>>,
}

/// Why the origin cannot be used at start.
#[derive(Debug, thiserror::Error)]
pub enum OriginError {
    /// `http.origin_ca` cannot be read into a TLS configuration.
    #[error("http.origin_ca: {0}")]
    Ca(String),
    /// Not started inside a tokio runtime (fetches run there).
    #[error("http.origin: no async runtime to fetch on: {0}")]
    Runtime(String),
}

impl Origin {
    /// The origin of `config`, storing under `root` (canonical), fetching on the current
    /// runtime.
    pub fn new(
        config: OriginConfig,
        root: PathBuf,
        metrics: Metrics,
    ) -> Result<Arc<Self>, OriginError> {
        let tls = match &config.ca {
            Some(ca) if config.url.https => {
                let policy = crate::redfish::tls::TlsPolicy::CaFile(ca.clone());
                Some(
                    crate::redfish::tls::client_config(&policy)
                        .map_err(|e| OriginError::Ca(e.to_string()))?,
                )
            }
            _ => None,
        };
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|e| OriginError::Runtime(e.to_string()))?;
        Ok(Arc::new(Self {
            config,
            root,
            tls,
            flights: Mutex::default(),
            metrics,
            runtime,
            wakers: Mutex::default(),
        }))
    }

    /// The base URL, for logs.
    pub fn url(&self) -> String {
        self.config.url.to_string()
    }

    /// Registers an eventfd a ring waits on; every landing writes to it.
    pub fn add_waker(&self, fd: Arc<OwnedFd>) {
        if let Ok(mut w) = self.wakers.lock() {
            w.push(fd);
        }
    }

    /// A request for `name` (root-relative), which is not under the root.
    pub fn ask(self: &Arc<Self>, inventory: &Inventory, name: &str) -> Answer {
        let expected = match wanted(inventory, name) {
            Wanted::No => return Answer::NotOurs,
            Wanted::Conflict => {
                return Answer::Refuse {
                    status: Failure::Conflict.status(),
                    retry_after_s: None,
                    failure: Failure::Conflict,
                }
            }
            Wanted::Yes(d) => d,
        };
        let Some(name) = normal(name) else {
            return Answer::NotOurs;
        };
        let decision = match self.flights.lock() {
            Ok(mut f) => f.ask(&name, Instant::now()),
            Err(_) => {
                return Answer::Refuse {
                    status: 503,
                    retry_after_s: Some(1),
                    failure: Failure::Io("origin state poisoned".into()),
                }
            }
        };
        match decision {
            Decision::Wait(flight) => Answer::Wait(Waiter::new(flight, &self.metrics.waiters)),
            Decision::Start(flight) => {
                let origin = Arc::clone(self);
                let task_name = name.clone();
                self.runtime
                    .spawn(async move { origin.fly(task_name, expected).await });
                Answer::Wait(Waiter::new(flight, &self.metrics.waiters))
            }
            Decision::Refuse {
                failure,
                retry_after,
            } => Answer::Refuse {
                status: failure.status(),
                // Rounded up: a client that waits this long finds the next try allowed.
                retry_after_s: Some(retry_after.as_millis().div_ceil(1000).max(1) as u64),
                failure,
            },
        }
    }

    /// One fetch, start to landing. The fetch runs as its own task so that even a panic in
    /// it lands the flight (as a failure): a waiter is never left waiting.
    async fn fly(self: Arc<Self>, name: String, expected: Option<[u8; 32]>) {
        info!(file = %name, origin = %self.config.url, "fetching from the origin");
        let started = Instant::now();
        let job = fetch::Job {
            url: self.config.url.clone(),
            tls: self.tls.clone(),
            root: self.root.clone(),
            name: name.clone(),
            expected,
            max_bytes: self.config.max_bytes,
            bytes: self.metrics.bytes.clone(),
        };
        let timeout = self.config.timeout;
        let outcome = match tokio::spawn(async move {
            match tokio::time::timeout(timeout, fetch::fetch(job)).await {
                Ok(r) => r,
                Err(_) => Err(Failure::Timeout(timeout)),
            }
        })
        .await
        {
            Ok(r) => r,
            Err(e) => Err(Failure::Io(format!("the fetch task failed: {e}"))),
        };
        match &outcome {
            Ok(bytes) => {
                self.metrics.fetches.with_label_values(&["ok"]).inc();
                let pinned = if expected.is_some() {
                    "SHA-256 matches the profile"
                } else {
                    "no sha256 in any profile: stored unchecked"
                };
                info!(file = %name, bytes, secs = started.elapsed().as_secs_f64(), "fetched from the origin: {pinned}");
            }
            Err(f @ Failure::Mismatch { expected, actual }) => {
                self.metrics.fetches.with_label_values(&[f.label()]).inc();
                error!(file = %name, %expected, %actual, "fetched from the origin, but the SHA-256 does not match the profile: removed");
            }
            Err(f) => {
                self.metrics.fetches.with_label_values(&[f.label()]).inc();
                warn!(file = %name, error = %f, "fetch from the origin failed");
            }
        }
        let flight = match self.flights.lock() {
            Ok(mut f) => f.landed(&name, outcome.map(|_| ()), Instant::now()),
            Err(_) => None,
        };
        if let Some(flight) = flight {
            flight.land();
        }
        self.wake();
    }

    /// Wakes every ring: they route their waiting requests again.
    fn wake(&self) {
        let Ok(wakers) = self.wakers.lock() else {
            return;
        };
        for fd in wakers.iter() {
            let one = 1u64.to_ne_bytes();
            // SAFETY: an 8-byte write from a live buffer to an eventfd we hold open. A full
            // counter (EAGAIN) already means "wake up".
            unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
        }
    }
}

/// Whether `name` is an origin fetch's temporary file (never served: it is not the image
/// until renamed into place).
pub fn is_partial(name: &str) -> bool {
    Path::new(name)
        .file_name()
        .and_then(|f| f.to_str())
        .is_some_and(|f| f.starts_with('.') && f.ends_with(fetch::PARTIAL_SUFFIX))
}

/// The process that wrote an origin temporary file, from its name
/// (`.<name>.<pid>-<n>.origin-part`); `None` for any other name.
pub fn partial_writer(file_name: &str) -> Option<u32> {
    let stem = file_name
        .strip_prefix('.')?
        .strip_suffix(fetch::PARTIAL_SUFFIX)?;
    let (rest, _n) = stem.rsplit_once('-')?;
    let (_base, pid) = rest.rsplit_once('.')?;
    pid.parse().ok()
}

/// Whether a temporary file written by `writer` is left over from a fetch that can no
/// longer finish: its writer is neither this process nor a live one. (A daemon killed
/// mid-fetch leaves its file; a second daemon fetching into the same root keeps its own.)
pub fn is_stale(writer: u32, me: u32, alive: impl Fn(u32) -> bool) -> bool {
    writer != me && !alive(writer)
}

/// The most entries the start-up sweep looks at, and how deep: `http.root` may hold a whole
/// image store, and the sweep must not run long on a huge tree.
const SWEEP_ENTRIES: usize = 100_000;
const SWEEP_DEPTH: usize = 8;

/// Removes the temporary files of fetches that died with their daemon (see [`is_stale`])
/// under `root`, walking at most [`SWEEP_DEPTH`] folders deep and [`SWEEP_ENTRIES`]
/// entries, never following symlinks. Returns how many were removed.
pub fn sweep_stale(root: &Path) -> usize {
    let me = std::process::id();
    let alive = |pid: u32| Path::new("/proc").join(pid.to_string()).exists();
    let mut removed = 0;
    let mut seen = 0;
    let mut folders = vec![(root.to_path_buf(), 0)];
    while let Some((dir, depth)) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            seen += 1;
            if seen > SWEEP_ENTRIES {
                warn!(root = %root.display(), "origin: stopped sweeping stale temporary files after {SWEEP_ENTRIES} entries");
                return removed;
            }
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            let path = entry.path();
            if kind.is_dir() {
                if depth < SWEEP_DEPTH {
                    folders.push((path, depth + 1));
                }
                continue;
            }
            let stale = kind.is_file()
                && entry
                    .file_name()
                    .to_str()
                    .and_then(partial_writer)
                    .is_some_and(|w| is_stale(w, me, alive));
            if stale {
                match std::fs::remove_file(&path) {
                    Ok(()) => {
                        info!(file = %path.display(), "origin: removed the temporary file of a fetch its daemon did not finish");
                        removed += 1;
                    }
                    Err(e) => {
                        warn!(file = %path.display(), "origin: cannot remove a stale temporary file: {e}")
                    }
                }
            }
        }
    }
    removed
}

/// `digest` as lowercase hex (logs and failures).
pub fn digest_hex(digest: &[u8; 32]) -> String {
    hex(digest)
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn inventory(text: &str) -> Inventory {
        let wire = toml::from_str(text).expect("toml");
        Inventory::from_wire(Path::new("hosts.toml"), wire).expect("inventory")
    }

    const PIN: &str = "abababababababababababababababababababababababababababababababab";

    #[test]
    fn only_the_files_profiles_name_are_wanted() {
        let inv = inventory(&format!(
            r#"
            [profiles.a]
            kernel = "/debian/linux"
            initrd = ["debian/initrd.gz"]
            sha256 = {{ "/debian/linux" = "{PIN}" }}

            [profiles.b]
            kernel = "debian/./linux"
            "#
        ));
        assert_eq!(wanted(&inv, "debian/linux"), Wanted::Yes(Some([0xab; 32])));
        assert_eq!(
            wanted(&inv, "/debian//linux"),
            Wanted::Yes(Some([0xab; 32]))
        );
        assert_eq!(wanted(&inv, "debian/initrd.gz"), Wanted::Yes(None));
        for other in ["debian/other", "debian", "", "debian/../debian/linux", "/"] {
            assert_eq!(wanted(&inv, other), Wanted::No, "{other:?}");
        }
        let clash = inventory(&format!(
            r#"
            [profiles.a]
            kernel = "k"
            sha256 = {{ k = "{PIN}" }}

            [profiles.b]
            kernel = "k"
            sha256 = {{ k = "{}" }}
            "#,
            "cd".repeat(32)
        ));
        assert_eq!(wanted(&clash, "k"), Wanted::Conflict);
    }

    #[test]
    fn concurrent_misses_share_one_flight_until_it_lands() {
        let mut f = Flights::default();
        let t0 = Instant::now();
        let Decision::Start(first) = f.ask("k", t0) else {
            panic!("the first miss starts the fetch");
        };
        for _ in 0..5 {
            let Decision::Wait(same) = f.ask("k", t0) else {
                panic!("a second miss must wait, not fetch again");
            };
            assert!(Arc::ptr_eq(&first, &same));
        }
        // Another file flies on its own.
        assert!(matches!(f.ask("i", t0), Decision::Start(_)));
        assert_eq!(f.running(), 2);
        let landed = f.landed("k", Ok(()), t0).expect("was running");
        assert!(Arc::ptr_eq(&first, &landed));
        // Stored: the table forgets it (a later miss, the file deleted, fetches anew).
        assert!(matches!(f.ask("k", t0), Decision::Start(_)));
        assert!(f.landed("nothing", Ok(()), t0).is_none());
    }

    #[test]
    fn a_failure_holds_the_next_fetch_back_with_a_doubling_backoff() {
        let mut f = Flights::default();
        let mut now = Instant::now();
        let bad = Failure::Status(500);
        let mut waits = Vec::new();
        for _ in 0..9 {
            assert!(matches!(f.ask("k", now), Decision::Start(_)));
            f.landed("k", Err(bad.clone()), now);
            // Every request until the backoff ends is refused with the failure, and no
            // request starts a fetch: a client cannot hammer the origin.
            let Decision::Refuse {
                failure,
                retry_after,
            } = f.ask("k", now)
            else {
                panic!("retried at once");
            };
            assert_eq!(failure, bad);
            waits.push(retry_after.as_secs());
            let half = now + retry_after / 2;
            assert!(matches!(f.ask("k", half), Decision::Refuse { .. }));
            now += retry_after;
        }
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        // A success resets the count.
        assert!(matches!(f.ask("k", now), Decision::Start(_)));
        f.landed("k", Ok(()), now);
        assert!(matches!(f.ask("k", now), Decision::Start(_)));
        f.landed("k", Err(bad), now);
        let Decision::Refuse { retry_after, .. } = f.ask("k", now) else {
            panic!("retried at once");
        };
        assert_eq!(retry_after, BACKOFF_FIRST);
    }

    #[test]
    fn failures_map_to_a_status_and_a_result() {
        let m = Failure::Mismatch {
            expected: "a".into(),
            actual: "b".into(),
        };
        assert_eq!((m.status(), m.label()), (502, "mismatch"));
        assert_eq!(Failure::Connect("x".into()).status(), 503);
        assert_eq!(Failure::Timeout(Duration::from_secs(1)).label(), "error");
        assert!(is_partial("debian/.linux.123-4.origin-part"));
        assert!(!is_partial("debian/linux"));
        assert!(!is_partial("debian/linux.origin-part"));
    }

    #[test]
    fn a_temporary_file_names_its_writer_and_is_stale_once_that_writer_is_gone() {
        assert_eq!(partial_writer(".linux.123-4.origin-part"), Some(123));
        assert_eq!(partial_writer(".initrd.img.77-0.origin-part"), Some(77));
        assert_eq!(partial_writer("linux.123-4.origin-part"), None);
        assert_eq!(partial_writer(".linux.x-4.origin-part"), None);
        assert_eq!(partial_writer(".linux.123-4.part"), None);
        // Our own, and a live writer's, are in use; a dead writer's can never finish.
        assert!(!is_stale(10, 10, |_| false));
        assert!(!is_stale(11, 10, |_| true));
        assert!(is_stale(11, 10, |_| false));
    }

    #[test]
    fn the_sweep_removes_only_a_dead_writers_temporary_files() {
        let root = std::env::temp_dir().join(format!("bootfabric-sweep-{}", std::process::id()));
        let dir = root.join("debian");
        std::fs::create_dir_all(&dir).expect("mkdir");
        // /proc/0 does not exist: pid 0 stands for a writer that is gone.
        let dead = dir.join(".linux.0-1.origin-part");
        let mine = dir.join(format!(".linux.{}-2.origin-part", std::process::id()));
        let image = dir.join("linux");
        for f in [&dead, &mine, &image] {
            std::fs::write(f, b"x").expect("write");
        }
        assert_eq!(sweep_stale(&root), 1);
        assert!(!dead.exists());
        assert!(mine.exists() && image.exists());
        std::fs::remove_dir_all(&root).expect("cleanup");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_wakes_when_its_flight_lands() {
        let registry = Registry::new();
        let metrics = Metrics::register(&registry).expect("metrics");
        let mut f = Flights::default();
        let Decision::Start(flight) = f.ask("k", Instant::now()) else {
            panic!("start");
        };
        let waiter = Waiter::new(Arc::clone(&flight), &metrics.waiters);
        assert_eq!(metrics.waiters.get(), 1);
        let task = tokio::spawn(async move {
            waiter.wait().await;
            waiter.has_landed()
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!task.is_finished(), "woke before the landing");
        f.landed("k", Ok(()), Instant::now())
            .expect("running")
            .land();
        assert!(task.await.expect("joined"));
        assert_eq!(metrics.waiters.get(), 0, "the waiter left the gauge");
    }
}
