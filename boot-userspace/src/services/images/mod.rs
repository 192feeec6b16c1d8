//! OS images: one update (fetch, verify, extract, store, switch, collect) shared by the
//! operator's `bootfabric image …` and the daemon's schedule, and the daemon's service that
//! runs the schedule, keeps the images' metrics and has the configuration reloaded when a
//! record changes (an update of its own or an operator's), so profiles naming an image get
//! its new version.
//!
//! An update never changes what a host booting now was given: a version's folder is written
//! whole before the record names it current, and the version that was current stays on
//! disk (`keep` is at least 2, and collection skips it), so a script rendered before the
//! switch still finds its kernel and initrd.

use std::{
    collections::BTreeSet,
    fs::File,
    io::{Read as _, Write},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{
    config::images::{ImageConfig, IsoSource, Source, UpdateSchedule},
    download::{DownloadError, Fetch},
    model::images::{
        iso::Iso,
        verify::{check_file, Digest, Hasher, Sums},
        version_id, ImageState, Store, StoreError, StoredFile, Version,
    },
    redfish::tls::{client_config, TlsPolicy},
};

/// Sums files and signatures are small; anything larger is not one.
const MAX_SMALL: u64 = 1 << 20;
/// How often the service reads the records (for a change by an operator's command, and the
/// metrics).
const WATCH: Duration = Duration::from_secs(1);

/// Why an update did not land.
#[derive(Debug, thiserror::Error)]
pub enum UpdateError {
    /// The store cannot be read or written, or is busy.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be fetched.
    #[error("download: {0}")]
    Download(#[from] DownloadError),
    /// A checksum or signature did not verify: nothing of it was kept.
    #[error("verification failed: {0}")]
    Verify(String),
    /// The ISO does not hold what the image names.
    #[error("ISO: {0}")]
    Iso(String),
    /// TLS settings for an https source.
    #[error("TLS: {0}")]
    Tls(String),
    /// A local file.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> UpdateError + '_ {
    move |source| UpdateError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What an update did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A version became current; `removed` were collected.
    New {
        /// The new current version.
        version: String,
        /// The version it replaced.
        previous: Option<String>,
        /// Versions deleted.
        removed: Vec<String>,
    },
    /// The source still has the current version's bytes.
    Unchanged {
        /// The current version.
        version: String,
    },
    /// The source has the bytes of a version that was rolled back from: not made current.
    Rejected {
        /// That version.
        version: String,
    },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::New {
                version,
                previous,
                removed,
            } => {
                write!(f, "version {version} is current")?;
                if let Some(p) = previous {
                    write!(f, " (was {p})")?;
                }
                if !removed.is_empty() {
                    write!(f, "; collected {}", removed.join(", "))?;
                }
                Ok(())
            }
            Outcome::Unchanged { version } => write!(f, "unchanged: {version} is current"),
            Outcome::Rejected { version } => write!(
                f,
                "the source still serves {version}, which was rolled back from: not made current"
            ),
        }
    }
}

/// Progress of the file being fetched: its name, bytes so far, total if known.
pub type Progress<'a> = &'a mut (dyn FnMut(&str, u64, Option<u64>) + Send);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Fetches `image`, verifies it and makes it current, then collects old versions (never
/// one in `pinned`, nor the one that was current). The attempt and its result are recorded
/// (a refused verification counted) whatever happens.
pub async fn update(
    image: &ImageConfig,
    store: &Store,
    pinned: &BTreeSet<String>,
    progress: Progress<'_>,
) -> Result<Outcome, UpdateError> {
    let lock = store.lock(&image.name)?;
    let mut state = store.read(&image.name)?;
    let result = fetch_version(image, store, &state, progress).await;
    let outcome = match result {
        Ok(Found::Current(version)) => Ok(Outcome::Unchanged { version }),
        Ok(Found::Version(v)) => {
            let id = v.id.clone();
            let previous = state.current.clone();
            if state.adopt(v) {
                let mut keep = pinned.clone();
                keep.extend(previous.clone());
                let removed = state.collect(image.keep, &keep);
                for r in &removed {
                    store.remove_version(&image.name, r, &lock)?;
                }
                Ok(Outcome::New {
                    version: id,
                    previous,
                    removed,
                })
            } else {
                Ok(Outcome::Rejected { version: id })
            }
        }
        Err(e) => Err(e),
    };
    if matches!(outcome, Err(UpdateError::Verify(_))) {
        state.verify_failures += 1;
    }
    state.last_attempt = Some(crate::model::images::Attempt {
        at: now(),
        ok: outcome.is_ok(),
        message: match &outcome {
            Ok(o) => o.to_string(),
            Err(e) => e.to_string(),
        },
    });
    store.write(&image.name, &state, &lock)?;
    outcome
}

/// What the source holds now.
enum Found {
    /// The current version's bytes.
    Current(String),
    /// A version, stored (its folder complete), not yet in the record.
    Version(Version),
}

/// The verified sums of an image, and who signed them.
struct Verified {
    raw: Vec<u8>,
    signature: Option<Vec<u8>>,
    sums: Sums,
    signer: Option<String>,
}

async fn fetch_version(
    image: &ImageConfig,
    store: &Store,
    state: &ImageState,
    progress: Progress<'_>,
) -> Result<Found, UpdateError> {
    let tls = match needs_tls(image) {
        true => Some(
            client_config(&TlsPolicy::CaFile(image.ca_file.clone()))
                .map_err(|e| UpdateError::Tls(e.to_string()))?,
        ),
        false => None,
    };
    let fetch = Fetch {
        tls,
        max_bytes: image.max_bytes,
        stall: image.stall,
        agent: concat!("bootfabric/", env!("CARGO_PKG_VERSION")),
    };
    let verified = match &image.sums {
        Some(url) => Some(verify_sums(image, &fetch, &url.uri).await?),
        None => None,
    };
    if let (Some(v), Some(current)) = (&verified, state.current_version()) {
        if still_current(&image.source, &v.sums, current) {
            return Ok(Found::Current(current.id.clone()));
        }
    }
    let staging = store.staging_dir(&image.name);
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let (kernel, initrd, iso_sha256) = match &image.source {
        Source::Files { kernel, initrd } => {
            let mut files = Vec::new();
            for url in std::iter::once(kernel).chain(initrd) {
                let path = staging.join(&url.file_name);
                let name = url.file_name.clone();
                fetch
                    .to_file(&url.uri, &path, &mut |d, t| progress(&name, d, t))
                    .await?;
                let (sha256, sha512, size) = hash_file(&path).await?;
                check_sums(verified.as_ref(), &url.file_name, &sha256, &sha512, &path)?;
                files.push(StoredFile {
                    name: url.file_name.clone(),
                    sha256: sha256.hex(),
                    size,
                });
            }
            let kernel = files.remove(0);
            (kernel, files, None)
        }
        Source::Iso {
            iso,
            kernel,
            initrd,
        } => {
            let (path, name, fetched) = match iso {
                IsoSource::Url(url) => {
                    let path = staging.join(&url.file_name);
                    let name = url.file_name.clone();
                    fetch
                        .to_file(&url.uri, &path, &mut |d, t| progress(&name, d, t))
                        .await?;
                    (path, url.file_name.clone(), true)
                }
                IsoSource::Path(p) => (
                    p.clone(),
                    p.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                    false,
                ),
            };
            let (sha256, sha512, _) = hash_file(&path).await?;
            check_sums(verified.as_ref(), &name, &sha256, &sha512, &path)?;
            let inside: Vec<String> = std::iter::once(kernel).chain(initrd).cloned().collect();
            let (iso_path, out_dir) = (path.clone(), staging.clone());
            let mut files =
                tokio::task::spawn_blocking(move || extract(&iso_path, &inside, &out_dir))
                    .await
                    .map_err(|e| UpdateError::Iso(e.to_string()))??;
            if fetched {
                // The ISO was only the carrier; its digest stays in the record.
                let _ = std::fs::remove_file(&path);
            }
            let kernel = files.remove(0);
            (kernel, files, Some(sha256.hex()))
        }
    };
    let id = version_id(&kernel, &initrd);
    let dir = store.version_dir(&image.name, &id);
    let names: Vec<String> = std::iter::once(&kernel)
        .chain(&initrd)
        .map(|f| f.name.clone())
        .collect();
    if dir.is_dir() {
        // These bytes are stored already (a version rolled back from, or kept).
        for n in &names {
            let _ = std::fs::remove_file(staging.join(n));
        }
    } else {
        let next = staging.join(format!("{id}.new"));
        let _ = std::fs::remove_dir_all(&next);
        std::fs::create_dir_all(&next).map_err(io(&next))?;
        for n in &names {
            std::fs::rename(staging.join(n), next.join(n)).map_err(io(&next))?;
        }
        File::open(&next)
            .and_then(|d| d.sync_all())
            .map_err(io(&next))?;
        // One rename: the folder appears whole or not at all.
        std::fs::rename(&next, &dir).map_err(io(&dir))?;
        if let Some(parent) = dir.parent() {
            File::open(parent)
                .and_then(|d| d.sync_all())
                .map_err(io(parent))?;
        }
    }
    if let Some(v) = &verified {
        let evidence = store.evidence_dir(&image.name, &id);
        std::fs::create_dir_all(&evidence).map_err(io(&evidence))?;
        crate::model::images::write_atomic(&evidence.join("sums"), &v.raw)?;
        if let Some(sig) = &v.signature {
            crate::model::images::write_atomic(&evidence.join("signature"), sig)?;
        }
    }
    Ok(Found::Version(Version {
        id,
        added: now(),
        source: image.source.describe(),
        kernel,
        initrd,
        iso_sha256,
        checksum: verified.as_ref().map(|_| "sums".to_owned()),
        signed_by: verified.and_then(|v| v.signer),
        rejected: false,
    }))
}

fn needs_tls(image: &ImageConfig) -> bool {
    let mut urls: Vec<&crate::config::images::FileUrl> =
        image.sums.iter().chain(&image.signature).collect();
    match &image.source {
        Source::Files { kernel, initrd } => urls.extend(std::iter::once(kernel).chain(initrd)),
        Source::Iso {
            iso: IsoSource::Url(u),
            ..
        } => urls.push(u),
        Source::Iso { .. } => {}
    }
    urls.iter().any(|u| u.https())
}

/// Fetches the sums file (and its signature) and verifies them with the image's keys.
async fn verify_sums(
    image: &ImageConfig,
    fetch: &Fetch,
    url: &hyper::Uri,
) -> Result<Verified, UpdateError> {
    let raw = fetch.to_memory(url, MAX_SMALL).await?;
    let keys = image.keys.as_ref().map(|k| &k.0);
    let (text, signature, signer) = match (&image.signature, keys) {
        (Some(sig_url), Some(keys)) => {
            let sig = fetch.to_memory(&sig_url.uri, MAX_SMALL).await?;
            let signer = keys
                .verify_detached(&raw, &sig)
                .map_err(|e| UpdateError::Verify(format!("{}: {e}", sig_url.text)))?;
            let text = String::from_utf8(raw.clone())
                .map_err(|_| UpdateError::Verify("the sums file is not UTF-8 text".into()))?;
            (text, Some(sig), Some(signer))
        }
        (None, Some(keys)) => {
            if !raw.starts_with(b"-----BEGIN PGP SIGNED MESSAGE-----") {
                return Err(UpdateError::Verify(
                    "keys are configured but the sums file is neither clearsigned nor given a `signature`".into(),
                ));
            }
            let (text, signer) = keys
                .verify_cleartext(&raw)
                .map_err(|e| UpdateError::Verify(format!("{}: {e}", url)))?;
            (text, None, Some(signer))
        }
        _ => {
            let text = String::from_utf8(raw.clone())
                .map_err(|_| UpdateError::Verify("the sums file is not UTF-8 text".into()))?;
            (text, None, None)
        }
    };
    let sums = Sums::parse(&text).map_err(|e| UpdateError::Verify(format!("{url}: {e}")))?;
    Ok(Verified {
        raw,
        signature,
        sums,
        signer,
    })
}

/// Whether the sums list the current version's bytes (by SHA-256; a sums file with only
/// SHA-512 makes every update fetch, and the content address finds the same version).
fn still_current(source: &Source, sums: &Sums, current: &Version) -> bool {
    let listed = |name: &str, sha256: &str| {
        sums.lookup(name)
            .iter()
            .any(|d| matches!(d, Digest::Sha256(_)) && d.hex() == sha256)
    };
    match source {
        Source::Files { kernel, initrd } => {
            let urls: Vec<_> = std::iter::once(kernel).chain(initrd).collect();
            let stored: Vec<_> = current.files().collect();
            urls.len() == stored.len()
                && urls
                    .iter()
                    .zip(stored)
                    .all(|(u, f)| u.file_name == f.name && listed(&u.file_name, &f.sha256))
        }
        Source::Iso { iso, .. } => {
            let name = match iso {
                IsoSource::Url(u) => u.file_name.clone(),
                IsoSource::Path(p) => p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            };
            current
                .iso_sha256
                .as_deref()
                .is_some_and(|d| listed(&name, d))
        }
    }
}

/// Checks a fetched file against the sums; a file that does not match is deleted (with its
/// resume validator), so no later attempt resumes from tampered bytes.
fn check_sums(
    verified: Option<&Verified>,
    name: &str,
    sha256: &Digest,
    sha512: &Digest,
    path: &Path,
) -> Result<(), UpdateError> {
    let Some(v) = verified else { return Ok(()) };
    check_file(&v.sums, name, sha256, sha512).map_err(|e| {
        let _ = std::fs::remove_file(path);
        let mut validator = path.as_os_str().to_owned();
        validator.push(".validator");
        let _ = std::fs::remove_file(PathBuf::from(validator));
        UpdateError::Verify(e.to_string())
    })?;
    Ok(())
}

/// SHA-256, SHA-512 and length of a file, read on a blocking thread.
async fn hash_file(path: &Path) -> Result<(Digest, Digest, u64), UpdateError> {
    let p = path.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut f = File::open(&p).map_err(io(&p))?;
        let mut h = Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        loop {
            let got = f.read(&mut buf).map_err(io(&p))?;
            if got == 0 {
                break;
            }
            h.update(&buf[..got]);
            n += got as u64;
        }
        let (a, b) = h.finish();
        Ok((a, b, n))
    })
    .await
    .map_err(|e| UpdateError::Io {
        path: path.to_owned(),
        source: std::io::Error::other(e),
    })?
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hasher: Hasher,
    bytes: u64,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Reads each of `paths` out of the ISO at `iso` into `out_dir` (named by its last path
/// segment), hashed on the way.
fn extract(iso: &Path, paths: &[String], out_dir: &Path) -> Result<Vec<StoredFile>, UpdateError> {
    let file = File::open(iso).map_err(io(iso))?;
    let mut reader =
        Iso::open(std::io::BufReader::new(file)).map_err(|e| UpdateError::Iso(e.to_string()))?;
    let mut out = Vec::new();
    for p in paths {
        let entry = reader
            .find(p)
            .map_err(|e| UpdateError::Iso(format!("{}: {e}", iso.display())))?;
        let name = p.rsplit('/').next().unwrap_or_default().to_owned();
        let dest = out_dir.join(&name);
        let f = File::create(&dest).map_err(io(&dest))?;
        let mut w = Hashing {
            inner: std::io::BufWriter::new(f),
            hasher: Hasher::new(),
            bytes: 0,
        };
        reader
            .copy_to(&entry, &mut w)
            .map_err(|e| UpdateError::Iso(format!("{p}: {e}")))?;
        w.flush().map_err(io(&dest))?;
        let Hashing {
            inner,
            hasher,
            bytes,
        } = w;
        inner
            .into_inner()
            .map_err(|e| UpdateError::Io {
                path: dest.clone(),
                source: e.into_error(),
            })?
            .sync_all()
            .map_err(io(&dest))?;
        out.push(StoredFile {
            name,
            sha256: hasher.finish().0.hex(),
            size: bytes,
        });
    }
    Ok(out)
}

/// The pinned versions of `image` the inventory's profiles name (`image@version`).
pub fn pinned(inventory: &crate::model::inventory::Inventory, image: &str) -> BTreeSet<String> {
    inventory
        .profiles()
        .values()
        .filter_map(|p| p.image.as_deref()?.split_once('@'))
        .filter(|(i, _)| *i == image)
        .map(|(_, v)| v.to_owned())
        .collect()
}

/// The images' metrics, from their records.
#[derive(Clone)]
struct Metrics {
    info: IntGaugeVec,
    age: IntGaugeVec,
    versions: IntGaugeVec,
    last_update: IntGaugeVec,
    last_ok: IntGaugeVec,
    failures: IntCounterVec,
}

impl Metrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let failures = IntCounterVec::new(
            Opts::new(
                "bootfabric_image_verification_failures_total",
                "Updates refused because a checksum or signature did not verify.",
            ),
            &["image"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Self {
            info: gauge(
                "bootfabric_image_info",
                "1 for each image's current version.",
                &["image", "version"],
            )?,
            age: gauge(
                "bootfabric_image_age_seconds",
                "Seconds since the current version was stored.",
                &["image"],
            )?,
            versions: gauge("bootfabric_image_versions", "Versions stored.", &["image"])?,
            last_update: gauge(
                "bootfabric_image_last_update_timestamp_seconds",
                "When the last update attempt ended (Unix seconds).",
                &["image"],
            )?,
            last_ok: gauge(
                "bootfabric_image_last_update_success",
                "1 if the last update attempt succeeded, 0 if it failed.",
                &["image"],
            )?,
            failures,
        })
    }

    fn show(&self, name: &str, state: &ImageState, shown_failures: &mut u64) {
        for v in &state.versions {
            let _ = self.info.remove_label_values(&[name, &v.id]);
        }
        if let Some(v) = state.current_version() {
            self.info.with_label_values(&[name, &v.id]).set(1);
            self.age
                .with_label_values(&[name])
                .set(now().saturating_sub(v.added) as i64);
        }
        self.versions
            .with_label_values(&[name])
            .set(state.versions.len() as i64);
        if let Some(a) = &state.last_attempt {
            self.last_update.with_label_values(&[name]).set(a.at as i64);
            self.last_ok.with_label_values(&[name]).set(i64::from(a.ok));
        }
        let c = self.failures.with_label_values(&[name]);
        if state.verify_failures > *shown_failures {
            c.inc_by(state.verify_failures - *shown_failures);
        }
        *shown_failures = state.verify_failures;
    }
}

/// The daemon's images service.
pub struct ImagesService {
    images: Vec<ImageConfig>,
    store: Store,
    live: Arc<crate::model::snapshot::Live>,
    reload: Arc<Notify>,
    metrics: Metrics,
}

impl ImagesService {
    /// The service for `images` stored in `store`; `reload` is notified when a record
    /// changes, and the pins of `live`'s inventory are kept by collection.
    pub fn start(
        images: Vec<ImageConfig>,
        store: Store,
        live: Arc<crate::model::snapshot::Live>,
        reload: Arc<Notify>,
        registry: &Registry,
    ) -> Result<Self, prometheus::Error> {
        Ok(Self {
            images,
            store,
            live,
            reload,
            metrics: Metrics::register(registry)?,
        })
    }

    /// Runs until `cancel`: the schedules, and the watch of the records.
    pub async fn run(self, cancel: CancellationToken) -> Result<(), std::convert::Infallible> {
        let mut seen: Vec<Option<(SystemTime, u64)>> = vec![None; self.images.len()];
        let mut shown: Vec<u64> = vec![0; self.images.len()];
        let mut next: Vec<Option<chrono::DateTime<chrono::Utc>>> = self
            .images
            .iter()
            .map(|i| match &i.update {
                UpdateSchedule::Cron(s) => s.upcoming(chrono::Utc).next(),
                UpdateSchedule::Never => None,
            })
            .collect();
        let mut running: Vec<Option<tokio::task::JoinHandle<()>>> =
            (0..self.images.len()).map(|_| None).collect();
        let mut first = true;
        let mut tick = tokio::time::interval(WATCH);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    for h in running.iter_mut().flatten() {
                        h.abort();
                    }
                    return Ok(());
                }
                _ = tick.tick() => {}
            }
            let mut changed = false;
            for (i, image) in self.images.iter().enumerate() {
                let stamp = std::fs::metadata(self.store.record_path(&image.name))
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len())));
                if stamp != seen[i] {
                    seen[i] = stamp;
                    changed |= !first;
                }
                // Read every tick: the age moves, and a record may be rewritten within
                // one modification-time granule.
                match self.store.read(&image.name) {
                    Ok(state) => self.metrics.show(&image.name, &state, &mut shown[i]),
                    Err(e) if stamp != seen[i] => warn!(image = %image.name, "images: {e}"),
                    Err(_) => {}
                }
                let due = next[i].is_some_and(|t| t <= chrono::Utc::now());
                let idle = running[i].as_ref().is_none_or(|h| h.is_finished());
                if due && idle {
                    if let UpdateSchedule::Cron(s) = &image.update {
                        next[i] = s.upcoming(chrono::Utc).next();
                    }
                    running[i] = Some(self.spawn_update(image.clone()));
                }
            }
            first = false;
            if changed {
                info!("images: a record changed; reloading the configuration");
                self.reload.notify_one();
            }
        }
    }

    fn spawn_update(&self, image: ImageConfig) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let pins = pinned(&self.live.load().inventory, &image.name);
        tokio::spawn(async move {
            info!(image = %image.name, "images: scheduled update");
            match update(&image, &store, &pins, &mut |_, _, _| {}).await {
                Ok(o) => info!(image = %image.name, "images: {o}"),
                Err(e) => warn!(image = %image.name, "images: update failed: {e}"),
            }
        })
    }
}
