//! Whether a span of a file is in the page cache, by `cachestat(2)` (Linux 6.5): the ring
//! sends such a span itself, and hands any other to a worker that may wait for the disk.

use std::{
    fs::File,
    os::fd::AsRawFd,
    sync::atomic::{AtomicBool, Ordering},
};

use tracing::warn;

/// `cachestat`'s number, the same on every architecture (from the generic table; libc 0.2
/// names it only for some).
const SYS_CACHESTAT: libc::c_long = 451;

/// Set once the kernel said it has no `cachestat`: nothing is then taken as cached.
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
    let range = Range { off, len };
    let mut stat = Stat::default();
    // SAFETY: `range` and `stat` are valid for the call, laid out as the kernel's
    // `cachestat_range` and `cachestat`; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &range as *const Range,
            &mut stat as *mut Stat,
            0u32,
        )
    };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        // ENOSYS (Linux before 6.5) or EPERM (a seccomp filter): it will not work later
        // either, so it is asked no more, and said once.
        if matches!(e.raw_os_error(), Some(libc::ENOSYS | libc::EPERM))
            && !MISSING.swap(true, Ordering::Relaxed)
        {
            warn!(
                "HTTP: cachestat(2) is unavailable ({e}): bodies are read as if not cached \
                 (io_uring: spliced by its workers, a thread hand-off per chunk; HTTPS: read \
                 on the blocking pool)"
            );
        }
        return false;
    }
    // The pages the span touches, counting the partial ones at either end.
    let pages = (off + len).div_ceil(page) - off / page;
    stat.nr_cache >= pages
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
}
