//! OS images the fabric keeps (`[images.<name>]`): versioned, content-addressed folders under
//! the HTTP root, and what the fabric knows of each version in its state folder.
//!
//! - `<http.root>/images/<name>/<version>/`: the kernel and initrds of one version, served as
//!   any other image file. `<version>` is 16 hex digits of a SHA-256 over the files' names and
//!   digests, so the same bytes always land in the same folder and a folder never changes
//!   once written: a host whose script names `images/flatcar/<v>/` gets kernel and initrd
//!   of one version however many updates land while it boots.
//! - `<state_dir>/images/<name>.json`: the versions (oldest first), the current one, the last
//!   update's result and the count of refused verifications; rewritten whole and atomically
//!   under `<name>.lock` (`flock`), so the daemon's scheduled update and an operator's
//!   `bootfabric image …` never interleave.
//! - `<state_dir>/images/<name>/<version>/`: the sums file and signature that verified it,
//!   kept for `check` (which verifies them again with the configured keys).
//!
//! Profiles name an image (`image = "flatcar"` for its current version, `"flatcar@<v>"` for
//! a pinned one); a load resolves that to the version's files ([`Catalog::resolve`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

pub mod iso;
pub mod verify;

/// The folder, under the HTTP root and under the state folder, that images live in.
pub const IMAGES_DIR: &str = "images";
/// Where downloads are staged, under `<http.root>/images/<name>/` (same file system as the
/// version folders, so a finished version moves into place with one rename).
pub const STAGING_DIR: &str = ".staging";

/// Why the store cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file or folder of the store cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file or folder.
        path: PathBuf,
        /// What the system said.
        source: std::io::Error,
    },
    /// The image's record does not parse.
    #[error("{path}: not an image record ({why}); move it aside to start the image afresh")]
    Corrupt {
        /// The record.
        path: PathBuf,
        /// The parser's reason.
        why: String,
    },
    /// Another process holds the image's lock.
    #[error("image {0} is being changed by another process (an update or an operator's command): try again when it ends")]
    Busy(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

/// One stored file of a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredFile {
    /// File name inside the version folder.
    pub name: String,
    /// SHA-256, lower-case hex.
    pub sha256: String,
    /// SHA-512, lower-case hex (sums files such as Flatcar's list only SHA-512).
    #[serde(default)]
    pub sha512: String,
    /// Bytes.
    pub size: u64,
}

/// One version of an image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// Content address: 16 hex digits ([`version_id`]).
    pub id: String,
    /// When it was stored, Unix seconds.
    pub added: u64,
    /// Where it came from (the URLs), for `image ls`.
    pub source: String,
    /// The kernel.
    pub kernel: StoredFile,
    /// The initrds, in boot order.
    pub initrd: Vec<StoredFile>,
    /// SHA-256 of the ISO it was extracted from, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso_sha256: Option<String>,
    /// SHA-512 of that ISO.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iso_sha512: Option<String>,
    /// How it was verified: "sha256", "sha512" (a sums file), and the signer's fingerprint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// The fingerprint of the key whose signature verified it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_by: Option<String>,
    /// When its sums were signed (Unix seconds): an update signed earlier is an older
    /// release, refused unless the operator allows the downgrade.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signed_at: Option<u64>,
    /// Rolled back from: an update that finds these bytes again does not make it current.
    #[serde(default)]
    pub rejected: bool,
}

impl Version {
    /// The version's files: kernel, then initrds.
    pub fn files(&self) -> impl Iterator<Item = &StoredFile> {
        std::iter::once(&self.kernel).chain(&self.initrd)
    }
}

/// The last update attempt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When it ended, Unix seconds.
    pub at: u64,
    /// Whether it succeeded (a new version, or the current one confirmed).
    pub ok: bool,
    /// What happened, in words.
    pub message: String,
}

/// Everything the fabric records of one image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageState {
    /// The version profiles naming the image get.
    pub current: Option<String>,
    /// Stored versions, oldest first.
    pub versions: Vec<Version>,
    /// The last update attempt, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt: Option<Attempt>,
    /// Updates refused because a checksum or signature did not verify.
    #[serde(default)]
    pub verify_failures: u64,
}

impl ImageState {
    /// A version by id.
    pub fn version(&self, id: &str) -> Option<&Version> {
        self.versions.iter().find(|v| v.id == id)
    }

    /// The current version.
    pub fn current_version(&self) -> Option<&Version> {
        self.current.as_deref().and_then(|c| self.version(c))
    }

    /// The version before the current one that a rollback returns to: the newest older
    /// version not rejected.
    pub fn previous(&self) -> Option<&Version> {
        let at = self
            .versions
            .iter()
            .position(|v| Some(&v.id) == self.current.as_ref())?;
        self.versions[..at].iter().rev().find(|v| !v.rejected)
    }

    /// Adds `v` (or, when its bytes are stored already, finds it) and makes it current;
    /// false when those bytes were rolled back from (then nothing changes).
    pub fn adopt(&mut self, v: Version) -> bool {
        if let Some(at) = self.versions.iter().position(|h| h.id == v.id) {
            if self.versions[at].rejected {
                return false;
            }
            // Newest last again: the version it replaces is the one a rollback returns to.
            let have = self.versions.remove(at);
            self.versions.push(have);
        } else {
            self.versions.push(v.clone());
        }
        self.current = Some(v.id);
        true
    }

    /// Makes `to` (or the previous version) current and marks the one it leaves rejected.
    /// Returns the new current version's id.
    pub fn rollback(&mut self, to: Option<&str>) -> Result<String, String> {
        let target = match to {
            Some(id) => self
                .version(id)
                .ok_or_else(|| format!("no version {id} (see `bootfabric image ls`)"))?
                .id
                .clone(),
            None => self
                .previous()
                .ok_or("no earlier version to roll back to")?
                .id
                .clone(),
        };
        if Some(&target) == self.current.as_ref() {
            return Err(format!("{target} is the current version already"));
        }
        let left = self.current.replace(target.clone());
        for v in &mut self.versions {
            if Some(&v.id) == left.as_ref() {
                v.rejected = true;
            }
            if v.id == target {
                v.rejected = false;
            }
        }
        Ok(target)
    }

    /// The versions to delete: beyond the `keep` newest, never the current one nor one in
    /// `pinned`. Removes them from the record and returns their ids.
    pub fn collect(&mut self, keep: usize, pinned: &BTreeSet<String>) -> Vec<String> {
        let newest: BTreeSet<String> = self
            .versions
            .iter()
            .rev()
            .take(keep)
            .map(|v| v.id.clone())
            .collect();
        let (kept, gone): (Vec<Version>, Vec<Version>) = std::mem::take(&mut self.versions)
            .into_iter()
            .partition(|v| {
                newest.contains(&v.id)
                    || Some(&v.id) == self.current.as_ref()
                    || pinned.contains(&v.id)
            });
        self.versions = kept;
        gone.into_iter().map(|v| v.id).collect()
    }
}

/// The content address of a version: 16 hex digits of a SHA-256 over each file's role, name
/// and digest.
pub fn version_id(kernel: &StoredFile, initrd: &[StoredFile]) -> String {
    let mut h = Sha256::new();
    for (role, f) in std::iter::once(("kernel", kernel)).chain(initrd.iter().map(|f| ("initrd", f)))
    {
        h.update(format!("{role} {} {}\n", f.name, f.sha256));
    }
    let d = h.finalize();
    d.iter().take(8).map(|b| format!("{b:02x}")).collect()
}

/// Whether `name` may be a stored file's name: one path segment, not hidden.
pub fn valid_file_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 200
        && !name.starts_with('.')
        && !name.contains('/')
        && !name.contains('\\')
        && !name.chars().any(char::is_control)
}

/// Whether `name` may name an image (a folder and a metric label): `[A-Za-z0-9_-]`, 1 to 64.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The image store of one fabric: its HTTP root and its state folder.
#[derive(Clone, Debug)]
pub struct Store {
    http_root: PathBuf,
    state_dir: PathBuf,
}

/// An image's lock, held while it lives.
#[derive(Debug)]
pub struct Lock {
    _file: File,
}

impl Store {
    /// The store under `http_root` (canonical) and `state_dir`.
    pub fn new(http_root: &Path, state_dir: &Path) -> Self {
        Self {
            http_root: http_root.to_owned(),
            state_dir: state_dir.to_owned(),
        }
    }

    /// `<http.root>/images/<name>`.
    pub fn image_dir(&self, name: &str) -> PathBuf {
        self.http_root.join(IMAGES_DIR).join(name)
    }

    /// Where a version's files are.
    pub fn version_dir(&self, name: &str, id: &str) -> PathBuf {
        self.image_dir(name).join(id)
    }

    /// Where downloads of `name` are staged.
    pub fn staging_dir(&self, name: &str) -> PathBuf {
        self.image_dir(name).join(STAGING_DIR)
    }

    /// The image's record.
    pub fn record_path(&self, name: &str) -> PathBuf {
        record_path(&self.state_dir, name)
    }

    /// Where the sums file and signature that verified a version are kept.
    pub fn evidence_dir(&self, name: &str, id: &str) -> PathBuf {
        self.state_dir.join(IMAGES_DIR).join(name).join(id)
    }

    /// Takes the image's lock without waiting: [`StoreError::Busy`] when another process
    /// holds it.
    pub fn lock(&self, name: &str) -> Result<Lock, StoreError> {
        self.flock(name, "lock")
    }

    /// [`Store::lock`], waiting up to `bound` for another process's short hold (a
    /// rollback, the end of an update) to end.
    pub fn lock_wait(&self, name: &str, bound: std::time::Duration) -> Result<Lock, StoreError> {
        let until = std::time::Instant::now() + bound;
        loop {
            match self.lock(name) {
                Err(StoreError::Busy(_)) if std::time::Instant::now() < until => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                other => return other,
            }
        }
    }

    /// The lock one update holds while it downloads (the record's own lock is taken only
    /// to read and write it, so a rollback never waits for a network).
    pub fn lock_fetch(&self, name: &str) -> Result<Lock, StoreError> {
        self.flock(name, "fetch.lock")
    }

    fn flock(&self, name: &str, suffix: &str) -> Result<Lock, StoreError> {
        use std::os::fd::AsRawFd as _;
        let dir = self.state_dir.join(IMAGES_DIR);
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let path = dir.join(format!("{name}.{suffix}"));
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io(&path))?;
        // SAFETY: flock(2) on a descriptor `file` owns and keeps open; no memory is passed.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => StoreError::Busy(name.to_owned()),
                _ => StoreError::Io { path, source: e },
            });
        }
        Ok(Lock { _file: file })
    }

    /// The image's record (empty when it has none yet).
    pub fn read(&self, name: &str) -> Result<ImageState, StoreError> {
        read_record(&self.record_path(name))
    }

    /// Rewrites the image's record whole and atomically (hold its [`Lock`]).
    pub fn write(&self, name: &str, state: &ImageState, _lock: &Lock) -> Result<(), StoreError> {
        let path = self.record_path(name);
        let bytes = serde_json::to_vec_pretty(state).map_err(|e| StoreError::Io {
            path: path.clone(),
            source: std::io::Error::other(e),
        })?;
        write_atomic(&path, &bytes)
    }

    /// Deletes a version's files and evidence (its record entry is the caller's).
    pub fn remove_version(&self, name: &str, id: &str, _lock: &Lock) -> Result<(), StoreError> {
        for dir in [self.version_dir(name, id), self.evidence_dir(name, id)] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Io {
                        path: dir,
                        source: e,
                    })
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Deletes the image: every version, its evidence and its record.
    pub fn remove_image(&self, name: &str, lock: &Lock) -> Result<(), StoreError> {
        let state = self.read(name)?;
        for v in &state.versions {
            self.remove_version(name, &v.id, lock)?;
        }
        for dir in [
            self.image_dir(name),
            self.state_dir.join(IMAGES_DIR).join(name),
        ] {
            match std::fs::remove_dir_all(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StoreError::Io {
                        path: dir,
                        source: e,
                    })
                }
                _ => {}
            }
        }
        let record = self.record_path(name);
        match std::fs::remove_file(&record) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::Io {
                path: record,
                source: e,
            }),
            _ => Ok(()),
        }
    }
}

fn record_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(IMAGES_DIR).join(format!("{name}.json"))
}

fn read_record(path: &Path) -> Result<ImageState, StoreError> {
    match std::fs::read(path) {
        Ok(bytes) => {
            let corrupt = |why: String| StoreError::Corrupt {
                path: path.to_owned(),
                why,
            };
            let state: ImageState =
                serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
            // Ids and names become paths that are deleted and served: only what an update
            // writes is taken.
            for v in &state.versions {
                if v.id.len() != 16 || !v.id.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(corrupt(format!("{:?} is not a version id", v.id)));
                }
                if let Some(f) = v.files().find(|f| !valid_file_name(&f.name)) {
                    return Err(corrupt(format!("{:?} is not a file name", f.name)));
                }
            }
            if let Some(c) = state
                .current
                .as_ref()
                .filter(|c| state.version(c).is_none())
            {
                return Err(corrupt(format!(
                    "the current version {c} is not among its versions"
                )));
            }
            Ok(state)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ImageState::default()),
        Err(e) => Err(StoreError::Io {
            path: path.to_owned(),
            source: e,
        }),
    }
}

/// Writes `bytes` to `path` atomically and durably: a temporary file, fsync, rename, fsync of
/// the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(bytes).map_err(io(&tmp))?;
        f.sync_all().map_err(io(&tmp))?;
    }
    std::fs::rename(&tmp, path).map_err(io(path))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io(dir))
}

/// What a load knows of every image: the records, read once, to resolve profiles from.
#[derive(Clone, Debug, Default)]
pub struct Catalog {
    images: BTreeMap<String, ImageState>,
    /// Records that do not read: an error only for the profiles naming them.
    unreadable: BTreeMap<String, String>,
}

impl Catalog {
    /// Reads the records of `names` from `state_dir`. A record that does not read is kept
    /// as its reason: it fails the profiles that name the image, not the whole load.
    pub fn load<'a>(state_dir: &Path, names: impl IntoIterator<Item = &'a str>) -> Self {
        let mut catalog = Self::default();
        for name in names {
            match read_record(&record_path(state_dir, name)) {
                Ok(state) => {
                    catalog.images.insert(name.to_owned(), state);
                }
                Err(e) => {
                    catalog.unreadable.insert(name.to_owned(), e.to_string());
                }
            }
        }
        catalog
    }

    /// A catalog of the given records (tests, and callers that hold them already).
    pub fn from_states(images: BTreeMap<String, ImageState>) -> Self {
        Self {
            images,
            unreadable: BTreeMap::new(),
        }
    }

    /// Resolves a profile's `image` (`name` or `name@version`) to the version's kernel and
    /// initrds, as paths under the HTTP root. The error says what the operator can do.
    pub fn resolve(&self, reference: &str) -> Result<Resolved, String> {
        let (name, pinned) = match reference.split_once('@') {
            Some((n, v)) => (n, Some(v)),
            None => (reference, None),
        };
        if let Some(why) = self.unreadable.get(name) {
            return Err(why.clone());
        }
        let state = self
            .images
            .get(name)
            .ok_or_else(|| format!("no [images.{name}] in the config"))?;
        let version = match pinned {
            Some(id) => state.version(id).ok_or_else(|| {
                format!("image {name} has no version {id} (see `bootfabric image ls {name}`)")
            })?,
            None => state.current_version().ok_or_else(|| {
                format!("image {name} has no version yet: run `bootfabric image add {name}`")
            })?,
        };
        let path = |f: &StoredFile| format!("{IMAGES_DIR}/{name}/{}/{}", version.id, f.name);
        Ok(Resolved {
            version: version.id.clone(),
            kernel: path(&version.kernel),
            initrd: version.initrd.iter().map(path).collect(),
        })
    }
}

/// A profile's image, resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Resolved {
    /// The version.
    pub version: String,
    /// The kernel, under the HTTP root.
    pub kernel: String,
    /// The initrds, under the HTTP root.
    pub initrd: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(name: &str, fill: char) -> StoredFile {
        StoredFile {
            name: name.into(),
            sha256: fill.to_string().repeat(64),
            sha512: String::new(),
            size: 1,
        }
    }

    fn version(kernel: char) -> Version {
        let k = file("vmlinuz", kernel);
        let i = vec![file("initrd", 'f')];
        Version {
            id: version_id(&k, &i),
            added: 0,
            source: String::new(),
            kernel: k,
            initrd: i,
            iso_sha256: None,
            iso_sha512: None,
            checksum: None,
            signed_by: None,
            signed_at: None,
            rejected: false,
        }
    }

    #[test]
    fn a_version_id_is_its_content() {
        let (a, b) = (version('a'), version('b'));
        assert_eq!(a.id, version('a').id);
        assert_ne!(a.id, b.id);
        assert_eq!(a.id.len(), 16);
        // The role counts: the same file as an initrd is another version.
        let k = file("x", 'a');
        assert_ne!(
            version_id(&k, &[]),
            version_id(&file("y", 'a'), std::slice::from_ref(&k))
        );
    }

    #[test]
    fn rollback_rejects_what_it_leaves_and_an_update_does_not_bring_it_back() {
        let mut s = ImageState::default();
        let (a, b) = (version('a'), version('b'));
        assert!(s.adopt(a.clone()));
        assert!(s.adopt(b.clone()));
        assert_eq!(s.current.as_deref(), Some(b.id.as_str()));
        assert_eq!(s.rollback(None), Ok(a.id.clone()));
        assert!(s.version(&b.id).expect("b").rejected);
        // The same bytes again (the upstream has not moved): refused, a stays.
        assert!(!s.adopt(b.clone()));
        assert_eq!(s.current.as_deref(), Some(a.id.as_str()));
        // An operator can still choose b by name.
        assert_eq!(s.rollback(Some(&b.id)), Ok(b.id.clone()));
        assert!(s.version(&a.id).expect("a").rejected);
        assert!(s.rollback(Some(&b.id)).is_err(), "already current");
        assert!(s.rollback(Some("0000")).is_err());
        assert!(s.rollback(None).is_err(), "a is rejected: nothing earlier");
    }

    #[test]
    fn collection_keeps_the_newest_the_current_and_the_pinned() {
        let mut s = ImageState::default();
        let v: Vec<Version> = ['a', 'b', 'c', 'd', 'e'].map(version).into();
        for x in &v {
            s.adopt(x.clone());
        }
        s.current = Some(v[1].id.clone());
        let pinned = BTreeSet::from([v[0].id.clone()]);
        let mut gone = s.collect(2, &pinned);
        gone.sort();
        assert_eq!(gone, vec![v[2].id.clone()]);
        let ids: Vec<&str> = s.versions.iter().map(|x| x.id.as_str()).collect();
        assert_eq!(ids, [&v[0].id, &v[1].id, &v[3].id, &v[4].id]);
    }

    #[test]
    fn resolve_names_the_current_or_the_pinned_version_and_says_what_is_missing() {
        let mut s = ImageState::default();
        let (a, b) = (version('a'), version('b'));
        s.adopt(a.clone());
        s.adopt(b.clone());
        let c = Catalog::from_states(
            [("fc".to_owned(), s), ("new".into(), ImageState::default())].into(),
        );
        let r = c.resolve("fc").expect("current");
        assert_eq!(r.kernel, format!("images/fc/{}/vmlinuz", b.id));
        assert_eq!(r.initrd, [format!("images/fc/{}/initrd", b.id)]);
        let r = c.resolve(&format!("fc@{}", a.id)).expect("pinned");
        assert_eq!(r.version, a.id);
        assert!(c
            .resolve("nope")
            .expect_err("unknown")
            .contains("[images.nope]"));
        assert!(c
            .resolve("new")
            .expect_err("no version")
            .contains("image add new"));
        assert!(c
            .resolve("fc@0123")
            .expect_err("no such version")
            .contains("no version 0123"));
    }

    #[test]
    fn records_write_atomically_read_back_and_a_corrupt_one_is_named() {
        let dir = tempfile::tempdir().expect("dir");
        let store = Store::new(&dir.path().join("www"), &dir.path().join("state"));
        assert_eq!(store.read("fc").expect("none yet"), ImageState::default());
        let lock = store.lock("fc").expect("lock");
        assert!(matches!(store.lock("fc"), Err(StoreError::Busy(_))));
        let mut s = ImageState::default();
        s.adopt(version('a'));
        store.write("fc", &s, &lock).expect("write");
        assert_eq!(store.read("fc").expect("read"), s);
        std::fs::write(store.record_path("fc"), b"{").expect("corrupt");
        let e = store.read("fc").expect_err("corrupt");
        assert!(e.to_string().contains("move it aside"), "{e}");
    }

    #[test]
    fn image_names_are_folder_and_label_safe() {
        assert!(valid_name("flatcar-stable_2"));
        for bad in ["", "../x", "a/b", "a b", ".hidden", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
