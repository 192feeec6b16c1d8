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
    collections::{BTreeMap, BTreeSet},
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

use std::os::unix::fs::OpenOptionsExt as _;

use crate::{
    config::images::{ImageConfig, IsoSource, Source, UpdateSchedule},
    download::{DownloadError, Fetch},
    model::images::{
        iso::Iso,
        verify::{check_file, Digest, Hasher, Signed, Sums},
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
    /// The signed sums are older than the current version's: an older release (a mirror
    /// rolling hosts back), refused unless the operator allows it.
    #[error("verification failed: the sums were signed {signed}, before the current version's ({current}): an older release; `bootfabric image update --allow-downgrade` takes it")]
    Downgrade {
        /// When the offered sums were signed.
        signed: String,
        /// When the current version's were.
        current: String,
    },
    /// The update took longer than `timeout_s`.
    #[error("gave up after {0:?} (images.<name>.timeout_s)")]
    Timeout(Duration),
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
/// one in `keep_also`, nor the one that was current). The attempt and its result are
/// recorded (a refused verification counted) whatever happens. The download runs under the
/// image's fetch lock; the record's own lock is held only to read and write it, so a
/// rollback never waits for a network. A release signed before the current version's is
/// refused unless `allow_downgrade`.
pub async fn update(
    image: &ImageConfig,
    store: &Store,
    keep_also: &BTreeSet<String>,
    allow_downgrade: bool,
    progress: Progress<'_>,
) -> Result<Outcome, UpdateError> {
    let _fetching = store.lock_fetch(&image.name).map_err(|e| match e {
        StoreError::Busy(n) => StoreError::Busy(format!("{n} (an update is running)")),
        other => other,
    })?;
    let before = store.read(&image.name)?;
    let found = match tokio::time::timeout(
        image.timeout,
        fetch_version(image, store, &before, allow_downgrade, progress),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(UpdateError::Timeout(image.timeout)),
    };
    let (s, name) = (store.clone(), image.name.clone());
    let lock = tokio::task::spawn_blocking(move || s.lock_wait(&name, Duration::from_secs(10)))
        .await
        .map_err(|e| UpdateError::Iso(e.to_string()))??;
    // The record as it is now: an operator may have rolled back while this downloaded.
    let mut state = store.read(&image.name)?;
    let outcome = match found {
        Ok(Found::Version(v)) if state.current.as_deref() == Some(v.id.as_str()) => {
            Ok(Outcome::Unchanged { version: v.id })
        }
        Ok(Found::Current(version)) => Ok(Outcome::Unchanged { version }),
        Ok(Found::Version(v)) => {
            let id = v.id.clone();
            let previous = state.current.clone();
            if state.adopt(*v) {
                let mut keep = keep_also.clone();
                keep.extend(previous.clone());
                let removed = state.collect(image.keep, &keep);
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
    if matches!(
        outcome,
        Err(UpdateError::Verify(_) | UpdateError::Downgrade { .. })
    ) {
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
    // Deleted once the record no longer names them: a failure leaves a folder behind,
    // never a record naming a missing one.
    if let Ok(Outcome::New { removed, .. }) = &outcome {
        for r in removed {
            if let Err(e) = store.remove_version(&image.name, r, &lock) {
                warn!(image = %image.name, version = %r, "images: collecting: {e}");
            }
        }
    }
    outcome
}

/// What the source holds now.
enum Found {
    /// The current version's bytes.
    Current(String),
    /// A version, stored (its folder complete), not yet in the record.
    Version(Box<Version>),
}

/// The verified sums of an image, and who signed them.
struct Verified {
    raw: Vec<u8>,
    signature: Option<Vec<u8>>,
    sums: Sums,
    signer: Option<Signed>,
}

async fn fetch_version(
    image: &ImageConfig,
    store: &Store,
    state: &ImageState,
    allow_downgrade: bool,
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
        backoff: Duration::from_millis(500),
    };
    let mut verified = Vec::new();
    for (i, url) in image.sums.iter().enumerate() {
        verified.push(verify_sums(image, &fetch, url, image.signatures.get(i)).await?);
    }
    if let (false, Some(current)) = (verified.is_empty(), state.current_version()) {
        if listed_in(&image.source, &verified, current) {
            return Ok(Found::Current(current.id.clone()));
        }
    }
    let signed_at = verified
        .iter()
        .filter_map(|v| v.signer.as_ref())
        .map(|s| s.created)
        .max();
    if let (Some(offered), Some(have)) =
        (signed_at, state.current_version().and_then(|c| c.signed_at))
    {
        if offered < have && !allow_downgrade {
            return Err(UpdateError::Downgrade {
                signed: crate::model::images::verify::date(offered),
                current: crate::model::images::verify::date(have),
            });
        }
    }
    // Bytes stored already (kept, or rolled back from): no download.
    if !verified.is_empty() {
        if let Some(v) = state
            .versions
            .iter()
            .rev()
            .find(|v| listed_in(&image.source, &verified, v))
        {
            return Ok(Found::Version(Box::new(v.clone())));
        }
    }
    let staging = staging_dir(store, &image.name)?;
    let (kernel, initrd, iso_digests) = match &image.source {
        Source::Files { kernel, initrd } => {
            let mut files = Vec::new();
            for url in std::iter::once(kernel).chain(initrd) {
                let path = staging.join(&url.file_name);
                let name = url.file_name.clone();
                fetch
                    .to_file(&url.uri, &path, &mut |d, t| progress(&name, d, t))
                    .await?;
                let (sha256, sha512, size) = hash_file(&path).await?;
                check_sums(&verified, &url.file_name, &sha256, &sha512, &path)?;
                files.push(StoredFile {
                    name: url.file_name.clone(),
                    sha256: sha256.hex(),
                    sha512: sha512.hex(),
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
                IsoSource::Path(p) => (p.clone(), iso.file_name(), false),
            };
            let (sha256, sha512, _) = hash_file(&path).await?;
            check_sums(&verified, &name, &sha256, &sha512, &path)?;
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
            (kernel, files, Some((sha256.hex(), sha512.hex())))
        }
    };
    let id = version_id(&kernel, &initrd);
    let dir = store.version_dir(&image.name, &id);
    let names: Vec<String> = std::iter::once(&kernel)
        .chain(&initrd)
        .map(|f| f.name.clone())
        .collect();
    if dir.symlink_metadata().is_ok_and(|m| m.is_dir()) {
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
    // What verified it, for `check` to verify again: `sums.<i>` and `signature.<i>`.
    let evidence = store.evidence_dir(&image.name, &id);
    for (i, v) in verified.iter().enumerate() {
        std::fs::create_dir_all(&evidence).map_err(io(&evidence))?;
        crate::model::images::write_atomic(&evidence.join(format!("sums.{i}")), &v.raw)?;
        if let Some(sig) = &v.signature {
            crate::model::images::write_atomic(&evidence.join(format!("signature.{i}")), sig)?;
        }
    }
    let signers: BTreeSet<&str> = verified
        .iter()
        .filter_map(|v| v.signer.as_ref().map(|s| s.fingerprint.as_str()))
        .collect();
    Ok(Found::Version(Box::new(Version {
        id,
        added: now(),
        source: image.source.describe(),
        kernel,
        initrd,
        iso_sha256: iso_digests.as_ref().map(|d| d.0.clone()),
        iso_sha512: iso_digests.map(|d| d.1),
        checksum: (!verified.is_empty()).then(|| "sums".to_owned()),
        signed_by: (!signers.is_empty()).then(|| signers.into_iter().collect::<Vec<_>>().join(",")),
        signed_at,
        rejected: false,
    })))
}

fn needs_tls(image: &ImageConfig) -> bool {
    let mut urls: Vec<&crate::config::images::FileUrl> =
        image.sums.iter().chain(&image.signatures).collect();
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

/// Fetches a sums file (and its signature) and verifies them with the image's keys.
async fn verify_sums(
    image: &ImageConfig,
    fetch: &Fetch,
    sums: &crate::config::images::FileUrl,
    signature: Option<&crate::config::images::FileUrl>,
) -> Result<Verified, UpdateError> {
    let url = &sums.text;
    let raw = fetch.to_memory(&sums.uri, MAX_SMALL).await?;
    let keys = image.keys.as_ref().map(|k| &k.0);
    let (text, signature, signer) = match (signature, keys) {
        (Some(sig_url), Some(keys)) => {
            let sig = fetch.to_memory(&sig_url.uri, MAX_SMALL).await?;
            let signer = keys
                .verify_detached_signed(&raw, &sig)
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
                .verify_cleartext_signed(&raw)
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

/// Whether the verified sums list `version`'s bytes (by SHA-256 or SHA-512, whichever they
/// give).
fn listed_in(source: &Source, verified: &[Verified], version: &Version) -> bool {
    let listed = |name: &str, sha256: &str, sha512: &str| {
        verified.iter().any(|v| {
            v.sums.lookup(name).iter().any(|d| match d {
                Digest::Sha256(_) => d.hex() == sha256,
                Digest::Sha512(_) => !sha512.is_empty() && d.hex() == sha512,
            })
        })
    };
    match source {
        Source::Files { kernel, initrd } => {
            let urls: Vec<_> = std::iter::once(kernel).chain(initrd).collect();
            let stored: Vec<_> = version.files().collect();
            urls.len() == stored.len()
                && urls.iter().zip(stored).all(|(u, f)| {
                    u.file_name == f.name && listed(&u.file_name, &f.sha256, &f.sha512)
                })
        }
        Source::Iso { iso, .. } => {
            let name = iso.file_name();
            let (a, b) = (
                version.iso_sha256.as_deref().unwrap_or_default(),
                version.iso_sha512.as_deref().unwrap_or_default(),
            );
            !a.is_empty() && listed(&name, a, b)
        }
    }
}

/// The staging folder of `name`: created private (0700), refused if something made it a
/// symlink (files are written into it as the daemon's user).
fn staging_dir(store: &Store, name: &str) -> Result<PathBuf, UpdateError> {
    use std::os::unix::fs::PermissionsExt as _;
    let staging = store.staging_dir(name);
    if let Ok(m) = staging.symlink_metadata() {
        if !m.is_dir() {
            return Err(UpdateError::Io {
                path: staging,
                source: std::io::Error::other("not a folder (a symlink?): remove it"),
            });
        }
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    std::fs::set_permissions(&staging, std::fs::Permissions::from_mode(0o700))
        .map_err(io(&staging))?;
    Ok(staging)
}

/// Checks a fetched file against the sums; a file that does not match is deleted (with its
/// resume validator), so no later attempt resumes from tampered bytes.
fn check_sums(
    verified: &[Verified],
    name: &str,
    sha256: &Digest,
    sha512: &Digest,
    path: &Path,
) -> Result<(), UpdateError> {
    let Some(first) = verified.first() else {
        return Ok(());
    };
    // The sums file that lists it (one per file, as Flatcar publishes them, or one for all);
    // when none does, the first one's error says so.
    let sums = verified
        .iter()
        .find(|v| !v.sums.lookup(name).is_empty())
        .unwrap_or(first);
    check_file(&sums.sums, name, sha256, sha512).map_err(|e| {
        let _ = std::fs::remove_file(path);
        let _ = std::fs::remove_file(crate::download::validator_path(path));
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
    let extracted = extract_files(iso, paths, out_dir);
    if extracted.is_err() {
        // Nothing half-read stays staged.
        for p in paths {
            let _ = std::fs::remove_file(out_dir.join(p.rsplit('/').next().unwrap_or_default()));
        }
    }
    extracted
}

fn extract_files(
    iso: &Path,
    paths: &[String],
    out_dir: &Path,
) -> Result<Vec<StoredFile>, UpdateError> {
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
        let f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&dest)
            .map_err(io(&dest))?;
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
        if bytes == 0 {
            // A Rock Ridge symlink or a placeholder reads as an empty file: never a kernel.
            return Err(UpdateError::Iso(format!(
                "{p} is empty in {} (a symlink or a placeholder?)",
                iso.display()
            )));
        }
        let (sha256, sha512) = hasher.finish();
        out.push(StoredFile {
            name,
            sha256: sha256.hex(),
            sha512: sha512.hex(),
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

    /// Shows `state` as `name`'s metrics; `w` remembers what was shown.
    fn show(&self, name: &str, state: &ImageState, w: &mut Watched) {
        if let Some(old) = w.shown_version.take() {
            let _ = self.info.remove_label_values(&[name, &old]);
        }
        if let Some(v) = state.current_version() {
            self.info.with_label_values(&[name, &v.id]).set(1);
            w.shown_version = Some(v.id.clone());
        }
        w.added = state.current_version().map(|v| v.added);
        self.versions
            .with_label_values(&[name])
            .set(state.versions.len() as i64);
        if let Some(a) = &state.last_attempt {
            self.last_update.with_label_values(&[name]).set(a.at as i64);
            self.last_ok.with_label_values(&[name]).set(i64::from(a.ok));
        }
        // The record's count is the truth (an operator's command counts too); the counter
        // only ever moves up by what it adds.
        if state.verify_failures > w.failures {
            self.failures
                .with_label_values(&[name])
                .inc_by(state.verify_failures - w.failures);
        }
        w.failures = state.verify_failures;
    }

    /// Drops the series of an image no longer configured.
    fn forget(&self, name: &str, w: &Watched) {
        if let Some(v) = &w.shown_version {
            let _ = self.info.remove_label_values(&[name, v]);
        }
        for g in [&self.age, &self.versions, &self.last_update, &self.last_ok] {
            let _ = g.remove_label_values(&[name]);
        }
    }
}

/// What the service keeps of one image between ticks.
#[derive(Default)]
struct Watched {
    /// The record's modification time, length and inode when last read (a rewrite is a
    /// rename: a new inode).
    stamp: Option<(SystemTime, u64, u64)>,
    /// The current version and the stored ones when last read: a change reloads.
    shape: Option<(Option<String>, Vec<String>)>,
    shown_version: Option<String>,
    added: Option<u64>,
    failures: u64,
    schedule: Option<UpdateSchedule>,
    next: Option<chrono::DateTime<chrono::Utc>>,
    running: Option<tokio::task::JoinHandle<()>>,
}

/// The images' configuration in effect: the daemon's reload replaces it, so a key removed
/// from `keys` is not trusted by the next scheduled update.
pub type ImagesConfig = Arc<arc_swap::ArcSwap<Vec<ImageConfig>>>;

/// The daemon's images service.
pub struct ImagesService {
    images: ImagesConfig,
    store: Store,
    live: Arc<crate::model::snapshot::Live>,
    reload: Arc<Notify>,
    metrics: Metrics,
}

impl ImagesService {
    /// The service for the images of `images` stored in `store`; `reload` is notified when a
    /// record's current or stored versions change; collection keeps what `live`'s inventory
    /// serves.
    pub fn start(
        images: ImagesConfig,
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
        use std::os::unix::fs::MetadataExt as _;
        let mut watched: BTreeMap<String, Watched> = BTreeMap::new();
        let mut tick = tokio::time::interval(WATCH);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => {
                    for h in watched.values_mut().filter_map(|w| w.running.take()) {
                        h.abort();
                    }
                    return Ok(());
                }
                _ = tick.tick() => {}
            }
            let images = self.images.load_full();
            watched.retain(|name, w| {
                let keep = images.iter().any(|i| &i.name == name);
                if !keep {
                    self.metrics.forget(name, w);
                }
                keep
            });
            let mut changed = false;
            for image in images.iter() {
                let w = watched.entry(image.name.clone()).or_default();
                if w.schedule.as_ref() != Some(&image.update) {
                    w.schedule = Some(image.update.clone());
                    w.next = match &image.update {
                        UpdateSchedule::Cron(s) => s.upcoming(chrono::Utc).next(),
                        UpdateSchedule::Never => None,
                    };
                }
                let stamp = std::fs::metadata(self.store.record_path(&image.name))
                    .ok()
                    .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())));
                if stamp != w.stamp {
                    w.stamp = stamp;
                    match self.store.read(&image.name) {
                        Ok(state) => {
                            self.metrics.show(&image.name, &state, w);
                            let shape = (
                                state.current.clone(),
                                state.versions.iter().map(|v| v.id.clone()).collect(),
                            );
                            changed |= w.shape.as_ref().is_some_and(|s| *s != shape);
                            w.shape = Some(shape);
                        }
                        Err(e) => warn!(image = %image.name, "images: {e}"),
                    }
                }
                if let Some(added) = w.added {
                    self.metrics
                        .age
                        .with_label_values(&[&image.name])
                        .set(now().saturating_sub(added) as i64);
                }
                let due = w.next.is_some_and(|t| t <= chrono::Utc::now());
                let idle = w.running.as_ref().is_none_or(|h| h.is_finished());
                if due && idle {
                    if let UpdateSchedule::Cron(s) = &image.update {
                        w.next = s.upcoming(chrono::Utc).next();
                    }
                    w.running = Some(self.spawn_update(image.clone()));
                }
            }
            if changed {
                info!("images: a current or stored version changed; reloading the configuration");
                self.reload.notify_one();
            }
        }
    }

    fn spawn_update(&self, image: ImageConfig) -> tokio::task::JoinHandle<()> {
        let store = self.store.clone();
        let keep = served(&self.live.load().inventory, &image.name);
        tokio::spawn(async move {
            info!(image = %image.name, "images: scheduled update");
            match update(&image, &store, &keep, false, &mut |_, _, _| {}).await {
                Ok(o) => info!(image = %image.name, "images: {o}"),
                Err(e) => warn!(image = %image.name, "images: update failed: {e}"),
            }
        })
    }
}

/// The versions of `image` the inventory serves now (each profile's, pinned or current), so
/// collection never deletes one a host may be given, even while reloads fail.
pub fn served(inventory: &crate::model::inventory::Inventory, image: &str) -> BTreeSet<String> {
    inventory
        .images()
        .iter()
        .filter(|(reference, _)| reference.split('@').next() == Some(image))
        .map(|(_, r)| r.version.clone())
        .chain(pinned(inventory, image))
        .collect()
}
