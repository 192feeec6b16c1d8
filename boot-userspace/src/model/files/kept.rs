//! Files kept open between requests, as nginx's `open_file_cache` keeps them: a name asked
//! again costs one `stat` of it, and when it still leads to the same file, unchanged since it
//! was opened and confined to the root, the kept descriptor serves it. Opened afresh, a
//! request cost a `realpath` (a `readlink` per path component), an `open`, an `fstat`, an
//! `fstatfs` and a `close`: about 3% of the ring's time on 1 MiB ranges at 32 connections
//! (`bench/results/http-experiments/2026-12-03-open-files`).
//!
//! "The same file, unchanged" is the device, the inode and the inode's change time: a rename,
//! a new hard link, a `chmod` or `chown` and any write all move the change time, so a file
//! moved out of the root, linked elsewhere or made unreadable is opened (and confined) afresh,
//! as is a file replaced by a rename (another inode). Two limits, both bounded:
//! - A change time is only as fine as its file system's clock (a kernel tick before Linux
//!   6.13, up to 2 s on some file systems): a file whose change time is within [`RACY`] of
//!   the moment it is opened is not kept, so a change after it is kept always moves the time.
//! - Moving a folder above the file out of the root (and linking it back) changes nothing of
//!   the file itself: every kept name is confined afresh [`VALID`] after it was, so such a
//!   name goes on leading to the same unchanged file for at most that long.
//!
//! Each name has its own entry: another name that leads to the same file is checked on its
//! own. Only files that were served are kept; a name found missing or refused drops its entry.
//! The size and times in each answer come from the `stat` of that request.
//!
//! A kept descriptor is shared by every response of its file at once: they read it at their
//! own offsets (`sendfile` with an offset, `pread`), never through the descriptor's position.
//!
//! Bounded: at most [`MAX_KEPT`] descriptors (the least recently used goes first), each closed
//! once nobody asked for it in [`INACTIVE`] (the owner calls [`Kept::sweep`]), so a deleted
//! image's space comes back within that. A descriptor displaced by a newer one of its name is
//! closed where the request is routed, as every request's was before files were kept.

use std::{
    collections::HashMap,
    fs::{File, Metadata},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use super::{open_joined, relative, FileError, Source};

/// At most this many files kept open.
pub const MAX_KEPT: usize = 256;
/// A kept file nobody asked for in this long is closed.
pub const INACTIVE: Duration = Duration::from_secs(60);
/// A kept name is confined afresh this long after it was.
pub const VALID: Duration = Duration::from_secs(10);
/// A file whose change time is this close to the moment it is opened is not kept.
pub const RACY: Duration = Duration::from_secs(3);

/// What makes a kept descriptor still the file a name leads to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Identity {
    dev: u64,
    ino: u64,
    ctime: i64,
    ctime_nsec: i64,
}

impl Identity {
    fn of(m: &Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            ctime: m.ctime(),
            ctime_nsec: m.ctime_nsec(),
        }
    }
}

struct Entry {
    file: Arc<File>,
    id: Identity,
    in_memory: bool,
    /// When it was opened and confined.
    since: Instant,
    used: Instant,
}

/// The clocks a lookup reads (passed in, so that tests can move them).
#[derive(Clone, Copy, Debug)]
struct Clock {
    now: Instant,
    wall: SystemTime,
}

impl Clock {
    fn now() -> Self {
        Self {
            now: Instant::now(),
            wall: SystemTime::now(),
        }
    }
}

/// The kept files of one root's server (see the module comment).
#[derive(Default)]
pub struct Kept {
    map: Mutex<HashMap<PathBuf, Entry>>,
}

impl Kept {
    /// Opens `name` under `root` (canonical) as [`super::open`] does, from a kept descriptor
    /// when the name still leads to its unchanged file.
    pub fn open(&self, root: &Path, name: &str) -> Result<Source, FileError> {
        self.open_at(root, name, Clock::now())
    }

    fn open_at(&self, root: &Path, name: &str, clock: Clock) -> Result<Source, FileError> {
        // Names are checked before anything is looked up, kept or not.
        let (rel, absolute) = relative(root, name)?;
        let joined = root.join(rel);
        if let Ok(now) = std::fs::metadata(&joined) {
            let mut map = self.lock();
            if let Some(e) = map.get_mut(&joined) {
                if e.id == Identity::of(&now)
                    && clock.now.saturating_duration_since(e.since) < VALID
                {
                    e.used = clock.now;
                    return Ok(Source {
                        file: Arc::clone(&e.file),
                        meta: now,
                        in_memory: e.in_memory,
                    });
                }
            }
        }
        match open_joined(root, &joined, absolute) {
            Ok(src) => {
                let old = self.keep(joined, &src, clock);
                drop(old);
                Ok(src)
            }
            // The name leads nowhere servable now. Other failures (a trailing `/` on a file's
            // name, an I/O error) say nothing of the kept file: its entry stays.
            Err(e @ (FileError::NotFound | FileError::Denied(_))) => {
                let old = self.lock().remove(&joined);
                drop(old);
                Err(e)
            }
            Err(e) => Err(e),
        }
    }

    /// Keeps `src` under `joined` (unless its change time is too recent to trust); what it
    /// displaced.
    fn keep(&self, joined: PathBuf, src: &Source, clock: Clock) -> Vec<Entry> {
        let mut map = self.lock();
        let mut out = Vec::new();
        let changed = UNIX_EPOCH
            + Duration::new(
                src.meta.ctime().max(0) as u64,
                src.meta.ctime_nsec().clamp(0, 999_999_999) as u32,
            );
        // A change time in the future (a clock set back) is as untrustworthy as a recent one.
        let settled = clock
            .wall
            .duration_since(changed)
            .is_ok_and(|age| age >= RACY);
        if !settled {
            out.extend(map.remove(&joined));
            return out;
        }
        if !map.contains_key(&joined) && map.len() >= MAX_KEPT {
            let oldest = map
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(k, _)| k.clone());
            if let Some(e) = oldest.and_then(|k| map.remove(&k)) {
                out.push(e);
            }
        }
        let entry = Entry {
            file: Arc::clone(&src.file),
            id: Identity::of(&src.meta),
            in_memory: src.in_memory,
            since: clock.now,
            used: clock.now,
        };
        out.extend(map.insert(joined, entry));
        out
    }

    /// Takes out the files nobody asked for since `now - INACTIVE`: the caller drops them
    /// (closing the last descriptor of a deleted file frees its blocks, which may take a while
    /// on a disk file system, so not under the lock and not on a thread that serves).
    pub fn sweep(&self, now: Instant) -> Vec<Arc<File>> {
        let mut map = self.lock();
        let stale: Vec<PathBuf> = map
            .iter()
            .filter(|(_, e)| now.saturating_duration_since(e.used) >= INACTIVE)
            .map(|(k, _)| k.clone())
            .collect();
        stale
            .into_iter()
            .filter_map(|k| map.remove(&k))
            .map(|e| e.file)
            .collect()
    }

    /// How many files are kept open now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<PathBuf, Entry>> {
        // Nothing panics while holding it; a poisoned map is still a consistent one.
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use std::{io::Write as _, os::unix::fs::PermissionsExt as _};

    use super::*;

    fn root() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("images");
        std::fs::create_dir_all(root.join("debian")).expect("dir");
        std::fs::write(root.join("vmlinuz"), vec![1u8; 4000]).expect("file");
        std::fs::write(root.join("debian/initrd"), vec![4u8; 100]).expect("file");
        std::fs::write(d.path().join("secret"), b"outside").expect("file");
        let root = root.canonicalize().expect("canonical");
        (d, root)
    }

    /// Clocks for files written by the test a moment ago: past their racy window.
    fn later() -> Clock {
        Clock {
            now: Instant::now(),
            wall: SystemTime::now() + RACY + Duration::from_secs(1),
        }
    }

    /// Waits out the file system's timestamp tick, so that the next change moves the change
    /// time on kernels whose timestamps are coarse (before Linux 6.13).
    fn tick() {
        std::thread::sleep(Duration::from_millis(20));
    }

    fn same(a: &Source, b: &Source) -> bool {
        Arc::ptr_eq(&a.file, &b.file)
    }

    #[test]
    fn a_name_asked_again_is_served_from_its_kept_descriptor() {
        let (_d, root) = root();
        let kept = Kept::default();
        let a = kept.open_at(&root, "vmlinuz", later()).expect("open");
        let b = kept.open_at(&root, "/vmlinuz", later()).expect("open");
        assert!(same(&a, &b));
        assert_eq!(b.size(), 4000);
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn a_file_changed_a_moment_ago_is_not_kept() {
        let (_d, root) = root();
        let kept = Kept::default();
        let a = kept.open(&root, "vmlinuz").expect("open");
        let b = kept.open(&root, "vmlinuz").expect("open");
        assert!(!same(&a, &b));
        assert!(kept.is_empty());
    }

    #[test]
    fn a_file_replaced_or_changed_is_opened_afresh() {
        let (_d, root) = root();
        let kept = Kept::default();
        let a = kept.open_at(&root, "vmlinuz", later()).expect("open");
        tick();
        // Replaced by a rename, as image updates land: another inode.
        std::fs::write(root.join("next"), vec![2u8; 10]).expect("file");
        std::fs::rename(root.join("next"), root.join("vmlinuz")).expect("rename");
        let b = kept.open_at(&root, "vmlinuz", later()).expect("open");
        assert!(!same(&a, &b));
        assert_eq!(b.size(), 10);
        let mut buf = [0u8; 10];
        assert_eq!(b.read_at(&mut buf, 0).expect("read"), 10);
        assert_eq!(buf, [2u8; 10]);
        tick();
        // Written in place: the change time moves.
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(root.join("vmlinuz"))
            .expect("open");
        f.write_all(&[3u8; 5]).expect("write");
        drop(f);
        let c = kept.open_at(&root, "vmlinuz", later()).expect("open");
        assert!(!same(&b, &c));
        assert_eq!(c.size(), 15);
        tick();
        // Its mode changed: opened afresh too.
        std::fs::set_permissions(root.join("vmlinuz"), std::fs::Permissions::from_mode(0o600))
            .expect("chmod");
        let d = kept.open_at(&root, "vmlinuz", later()).expect("open");
        assert!(!same(&c, &d));
        assert!(same(
            &d,
            &kept.open_at(&root, "vmlinuz", later()).expect("open")
        ));
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn a_kept_name_turned_into_a_link_out_of_the_root_is_refused() {
        let (d, root) = root();
        let kept = Kept::default();
        kept.open_at(&root, "vmlinuz", later()).expect("open");
        std::fs::remove_file(root.join("vmlinuz")).expect("rm");
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("vmlinuz")).expect("link");
        assert_eq!(
            kept.open_at(&root, "vmlinuz", later()).err(),
            Some(FileError::Denied("outside_root"))
        );
        // The refused name is no longer kept.
        assert!(kept.is_empty());
        // A file moved out of the root and linked back: the rename moved its change time.
        kept.open_at(&root, "debian/initrd", later()).expect("open");
        tick();
        std::fs::rename(root.join("debian/initrd"), d.path().join("initrd")).expect("mv");
        std::os::unix::fs::symlink(d.path().join("initrd"), root.join("debian/initrd"))
            .expect("link");
        assert_eq!(
            kept.open_at(&root, "debian/initrd", later()).err(),
            Some(FileError::Denied("outside_root"))
        );
    }

    /// A folder above a kept file moved out of the root and linked back changes nothing of the
    /// file: the name is confined afresh once `VALID` has passed since it last was.
    #[test]
    fn a_kept_name_is_confined_afresh_after_its_validity() {
        let (d, root) = root();
        let kept = Kept::default();
        let start = later();
        let a = kept.open_at(&root, "debian/initrd", start).expect("open");
        std::fs::rename(root.join("debian"), d.path().join("debian")).expect("mv");
        std::os::unix::fs::symlink(d.path().join("debian"), root.join("debian")).expect("link");
        let within = Clock {
            now: start.now + VALID - Duration::from_secs(1),
            ..start
        };
        let b = kept
            .open_at(&root, "debian/initrd", within)
            .expect("within");
        assert!(same(&a, &b), "the same unchanged file, within the bound");
        let past = Clock {
            now: start.now + VALID,
            ..start
        };
        assert_eq!(
            kept.open_at(&root, "debian/initrd", past).err(),
            Some(FileError::Denied("outside_root"))
        );
        assert!(kept.is_empty());
    }

    #[test]
    fn names_are_refused_before_anything_kept_is_looked_up() {
        let (_d, root) = root();
        let kept = Kept::default();
        let a = kept.open_at(&root, "vmlinuz", later()).expect("open");
        for (name, want) in [
            ("../secret", FileError::Denied("parent_dir")),
            ("/etc/passwd", FileError::Denied("absolute_path")),
            ("missing", FileError::NotFound),
            (".", FileError::Denied("not_a_regular_file")),
        ] {
            assert_eq!(
                kept.open_at(&root, name, later()).err(),
                Some(want),
                "{name}"
            );
        }
        // The kept name with a trailing slash (a path equal to the kept one): refused, and the
        // kept entry stays.
        assert!(kept.open_at(&root, "vmlinuz/", later()).is_err());
        assert!(same(
            &a,
            &kept.open_at(&root, "vmlinuz", later()).expect("open")
        ));
        assert_eq!(kept.len(), 1);
    }

    #[test]
    fn a_deleted_file_is_let_go() {
        let (_d, root) = root();
        let kept = Kept::default();
        kept.open_at(&root, "vmlinuz", later()).expect("open");
        std::fs::remove_file(root.join("vmlinuz")).expect("rm");
        assert_eq!(
            kept.open_at(&root, "vmlinuz", later()).err(),
            Some(FileError::NotFound)
        );
        assert!(kept.is_empty());
    }

    #[test]
    fn kept_files_are_bounded_and_closed_when_nobody_asks() {
        let (_d, root) = root();
        let kept = Kept::default();
        let mut first = None;
        for i in 0..MAX_KEPT + 10 {
            std::fs::write(root.join(format!("f{i}")), b"x").expect("file");
            let s = kept
                .open_at(&root, &format!("f{i}"), later())
                .expect("open");
            first.get_or_insert(s);
        }
        assert_eq!(kept.len(), MAX_KEPT);
        // The first one was the least recently used: it went, and is opened afresh.
        let first = first.expect("opened");
        let reopened = kept.open_at(&root, "f0", later()).expect("open");
        assert!(!same(&first, &reopened));
        assert!(same(
            &reopened,
            &kept.open_at(&root, "f0", later()).expect("open")
        ));
        assert_eq!(kept.len(), MAX_KEPT);
        assert!(kept.sweep(Instant::now()).is_empty());
        let closed = kept.sweep(Instant::now() + INACTIVE);
        assert_eq!(closed.len(), MAX_KEPT);
        assert!(kept.is_empty());
    }
}
