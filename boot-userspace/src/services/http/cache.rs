//! Whether a span of a file is in the page cache, by `cachestat(2)` (Linux 6.5): the ring
//! sends such a span itself, and hands any other to a worker that may wait for the disk.
//!
//! `mincore(2)` on a mapping is no substitute where `cachestat` is refused: for a file the
//! caller neither owns nor may write the kernel answers that every page is resident, and the
//! ring would then read a cold image from the disk itself.

use std::{
    fs::File,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        OnceLock,
    },
};

use tracing::warn;

/// `cachestat`'s number, the same on every architecture (from the generic table; libc 0.2
/// names it only for some).
const SYS_CACHESTAT: libc::c_long = 451;

/// Set once the kernel or a filter refused `cachestat` for every file: nothing is then taken
/// as cached.
static MISSING: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct Range {
    off: u64,
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Stat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Whether every page of `file` in `[off, off + len)` is in the page cache. False when the
/// kernel cannot say (then the caller takes the path that may block).
pub fn holds(file: &File, off: u64, len: u64) -> bool {
    if len == 0 {
        return true;
    }
    if MISSING.load(Ordering::Relaxed) {
        return false;
    }
    // SAFETY: sysconf has no preconditions.
    let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
        p if p > 0 => p as u64,
        _ => 4096,
    };
    match cachestat(file.as_raw_fd(), off, len) {
        // The pages the span touches, counting the partial ones at either end.
        Ok(stat) => stat.nr_cache >= (off + len).div_ceil(page) - off / page,
        Err(e) => {
            refused(&e);
            false
        }
    }
}

fn cachestat(fd: libc::c_int, off: u64, len: u64) -> std::io::Result<Stat> {
    let range = Range { off, len };
    let mut stat = Stat::default();
    // SAFETY: `range` and `stat` are valid for the call, laid out as the kernel's
    // `cachestat_range` and `cachestat`; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            fd,
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(stat)
}

/// What a refusal of `cachestat` means.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refusal {
    /// For every file: the kernel has none (ENOSYS, Linux before 6.5), or a seccomp filter
    /// refuses it (EPERM even for a file the daemon owns).
    Everywhere,
    /// For this file only: since Linux 6.14 (and stable kernels with the fix for
    /// CVE-2025-21691) the kernel answers EPERM for a file the caller neither owns nor may
    /// write, such as a root-owned image served by the packaged daemon's own user.
    ThisFile,
    /// Anything else (EBADF for a file system that cannot say, ...): this span is not vouched
    /// for.
    Span,
}

fn classify(errno: Option<i32>, owned_refused: impl FnOnce() -> bool) -> Refusal {
    match errno {
        Some(libc::ENOSYS) => Refusal::Everywhere,
        Some(libc::EPERM) if owned_refused() => Refusal::Everywhere,
        Some(libc::EPERM) => Refusal::ThisFile,
        _ => Refusal::Span,
    }
}

/// Whether `cachestat` is refused for a file the daemon owns (a memfd it creates): only a
/// filter does that. Asked once.
fn refused_for_owned() -> bool {
    static OWNED: OnceLock<bool> = OnceLock::new();
    *OWNED.get_or_init(|| {
        // SAFETY: a NUL-terminated name and valid flags; the descriptor is owned below.
        let fd = unsafe { libc::memfd_create(c"bootfabric-cachestat".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            // No memfd to ask with: take the refusal as the filter's, as before this check.
            return true;
        }
        // SAFETY: a fresh descriptor nobody else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        matches!(
            cachestat(owned.as_raw_fd(), 0, 4096).map_err(|e| e.raw_os_error()),
            Err(Some(libc::EPERM | libc::ENOSYS))
        )
    })
}

/// Acts on a refusal: a kernel or filter without `cachestat` is asked no more (said once); a
/// file the kernel will not say for is said once, naming what to change.
fn refused(e: &std::io::Error) {
    static PER_FILE: AtomicBool = AtomicBool::new(false);
    match classify(e.raw_os_error(), refused_for_owned) {
        Refusal::Everywhere => {
            if !MISSING.swap(true, Ordering::Relaxed) {
                warn!(
                    "HTTP: cachestat(2) is unavailable ({e}): bodies are read as if not \
                     cached (io_uring: spliced by its workers, a thread hand-off per chunk; \
                     HTTPS: read on the blocking pool)"
                );
            }
        }
        Refusal::ThisFile => {
            if !PER_FILE.swap(true, Ordering::Relaxed) {
                warn!(
                    "HTTP: the kernel will not say whether a file the daemon neither owns nor \
                     may write is in the page cache (cachestat(2): {e}): such files' bodies \
                     are read as if not cached (io_uring: spliced by its workers, a thread \
                     hand-off per chunk; HTTPS: read on the blocking pool); files the daemon's \
                     user owns are sent from the page cache"
                );
            }
        }
        Refusal::Span => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A file just written is in the cache; after POSIX_FADV_DONTNEED (written back first)
    /// it is not, and the test sees the kernel say so.
    #[test]
    fn tells_cached_from_evicted_pages() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        let mut f = File::create(&path).expect("create");
        f.write_all(&vec![7u8; 1 << 20]).expect("write");
        f.sync_all().expect("fsync");
        let f = File::open(&path).expect("open");
        if MISSING.load(Ordering::Relaxed) || !holds(&f, 0, 1 << 20) {
            // Either no cachestat here (then nothing is cached by this test's measure), or
            // the kernel dropped the pages already: say which, do not pass silently.
            assert!(
                MISSING.load(Ordering::Relaxed),
                "a file just written is not cached"
            );
            eprintln!("no cachestat(2) on this kernel");
            return;
        }
        assert!(holds(&f, 4095, 2), "a span across two cached pages");
        // SAFETY: fadvise on a descriptor we own.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
        // tmpfs keeps its pages whatever is advised: only a real file system drops them.
        if holds(&f, 0, 1 << 20) {
            eprintln!("the pages stayed (tmpfs?); eviction not checked here");
            return;
        }
        assert!(!holds(&f, 512 << 10, 4096));
    }

    #[test]
    fn a_refusal_is_everywhere_only_when_an_owned_file_is_refused_too() {
        assert_eq!(
            classify(Some(libc::ENOSYS), || unreachable!()),
            Refusal::Everywhere
        );
        assert_eq!(classify(Some(libc::EPERM), || true), Refusal::Everywhere);
        assert_eq!(classify(Some(libc::EPERM), || false), Refusal::ThisFile);
        assert_eq!(
            classify(Some(libc::EBADF), || unreachable!()),
            Refusal::Span
        );
    }

    /// A daemon running as its own user, serving a root-owned image: the kernel refuses
    /// `cachestat` for that file only (Linux 6.14 and later), and files the user owns are still
    /// asked. One thread takes an unprivileged user (credentials are per thread in the kernel).
    #[test]
    fn a_file_the_daemon_may_not_write_is_refused_alone() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("not root: the unprivileged user is not taken here");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str| {
            let path = dir.path().join(name);
            let mut f = File::create(&path).expect("create");
            f.write_all(&vec![5u8; 64 << 10]).expect("write");
            f.sync_all().expect("fsync");
            File::open(&path).expect("open")
        };
        let root_owned = write("root-owned");
        let own = write("own");
        if !holds(&own, 0, 64 << 10) {
            eprintln!("no cachestat(2) here (or the pages went already): nothing to check");
            return;
        }
        std::os::unix::fs::fchown(&own, Some(65534), Some(65534)).expect("chown");
        let (refused, owned_cached) = std::thread::spawn(move || {
            // SAFETY: setresuid on this thread only (the raw call, not glibc's, which would
            // change every thread of the test process).
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(rc, 0, "setresuid");
            (!holds(&root_owned, 0, 64 << 10), holds(&own, 0, 64 << 10))
        })
        .join()
        .expect("thread");
        if MISSING.load(Ordering::Relaxed) {
            panic!("one refused file turned the page-cache check off for every file");
        }
        if !refused {
            eprintln!("this kernel answers cachestat for files the caller may not write");
        }
        assert!(
            owned_cached,
            "a file the user owns, just written, is cached"
        );
    }
}
