//! Static files under a root, with requests confined to it. Fails closed: names with `..`,
//! backslashes and control characters are refused before the file system is touched; then
//! the resolved path is canonicalised and must still lie under the root (so a symlink cannot
//! lead out) and be a regular file.
//!
//! A name with a leading `/` means the root itself, as a chrooted tftpd-hpa and dnsmasq
//! treat it: GRUB asks for `/grub/x86_64-efi/normal.mod`. A name spelled with the root's own
//! path is taken under the root too. Any other absolute name is refused as an access
//! violation, never looked up outside.
//!
//! Reads go through the page cache with positional reads, so any number of concurrent
//! transfers of one bootloader share one copy of it in memory.

use std::{
    fs::File,
    os::unix::fs::FileExt,
    path::{Component, Path},
    sync::Arc,
};

mod kept;
pub use kept::Kept;

/// Why a request cannot be served (TFTP maps it to an error code, HTTP to a status).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    /// No such file under the root.
    #[error("file not found")]
    NotFound,
    /// The name or what it resolves to is not allowed.
    #[error("access violation: {0}")]
    Denied(&'static str),
    /// The file exists but cannot be read.
    #[error("cannot read: {0}")]
    Io(String),
}

/// The name relative to the root, and whether it was spelled absolute; checked without
/// touching the file system.
pub fn relative<'a>(root: &Path, name: &'a str) -> Result<(&'a str, bool), FileError> {
    let Some(rest) = name.strip_prefix('/') else {
        check_name(name)?;
        return Ok((name, false));
    };
    let rel = match Path::new(name).strip_prefix(root) {
        Ok(r) => r.to_str().unwrap_or(rest),
        Err(_) => rest.trim_start_matches('/'),
    };
    check_name(rel)?;
    Ok((rel, true))
}

/// Checks a relative name without touching the file system.
pub fn check_name(name: &str) -> Result<(), FileError> {
    if name.starts_with('/') {
        return Err(FileError::Denied("absolute_path"));
    }
    if name.contains('\\') {
        return Err(FileError::Denied("backslash"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(FileError::Denied("control_character"));
    }
    for c in Path::new(name).components() {
        match c {
            // Images' downloads in progress (`images/<name>/.staging`): unverified bytes,
            // never served.
            Component::Normal(c) if c == crate::model::images::STAGING_DIR => {
                return Err(FileError::Denied("staging"))
            }
            Component::Normal(_) | Component::CurDir => {}
            Component::ParentDir => return Err(FileError::Denied("parent_dir")),
            Component::RootDir | Component::Prefix(_) => {
                return Err(FileError::Denied("absolute_path"))
            }
        }
    }
    Ok(())
}

/// An open file ready to serve.
#[derive(Debug)]
pub struct Source {
    file: Arc<File>,
    meta: std::fs::Metadata,
    /// The file lives in memory (tmpfs, ramfs): a read is a copy from its pages and never
    /// waits for a disk, though such file systems refuse RWF_NOWAIT.
    in_memory: bool,
}

impl Source {
    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.meta.len()
    }

    /// The file's metadata, as read when it was opened (for validators).
    pub fn metadata(&self) -> &std::fs::Metadata {
        &self.meta
    }

    /// Whether the file lives in memory (tmpfs, ramfs): its pages are always at hand, so no
    /// read of it waits for a store.
    pub fn in_memory(&self) -> bool {
        self.in_memory
    }

    /// The open file itself.
    pub fn into_file(self) -> Arc<File> {
        self.file
    }

    /// Fills `buf` from `offset` only if the bytes are in the page cache now (RWF_NOWAIT),
    /// or the file is in memory (tmpfs, ramfs): true when filled, false when the read would
    /// wait for the store, or when the file system cannot say (then the caller reads on a
    /// blocking thread). Does not wait for a disk, so it may run on the async runtime's
    /// threads.
    pub fn read_cached_at(&self, buf: &mut [u8], offset: u64) -> bool {
        use std::os::fd::AsRawFd;
        let Ok(off) = libc::off_t::try_from(offset) else {
            return false;
        };
        // tmpfs and ramfs refuse RWF_NOWAIT (EOPNOTSUPP), though their reads never wait for
        // a store: read them here rather than hop to a blocking thread for every block (the
        // hop costs several times the copy; a tmpfs page swapped out is the rare wait).
        if self.in_memory {
            return self.read_at(buf, offset).is_ok_and(|n| n == buf.len());
        }
        let iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: one iovec over `buf`, which is valid for writes of its length for the whole
        // call; the descriptor is owned by `self.file`.
        let n = unsafe { libc::preadv2(self.file.as_raw_fd(), &iov, 1, off, libc::RWF_NOWAIT) };
        // A short read is the end of the file or a partly cached range: either way the
        // blocking path decides.
        usize::try_from(n).is_ok_and(|n| n == buf.len())
    }

    /// Reads up to `buf.len()` bytes at `offset` (short only at the end of the file).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64)? {
                0 => break,
                n => done += n,
            }
        }
        Ok(done)
    }
}

/// Opens `name` under the first of `roots` that has it, as the servers would serve it:
/// the root and the result, or `None` when no root has it. A root where it exists but may
/// not be served (a symlink out, not a regular file) ends the search with that error.
pub fn find<'r>(roots: &[&'r Path], name: &str) -> Option<(&'r Path, Result<Source, FileError>)> {
    roots.iter().find_map(|r| match open(r, name) {
        Err(FileError::NotFound) => None,
        other => Some((*r, other)),
    })
}

/// Opens `name` under `root` (which must be canonical).
pub fn open(root: &Path, name: &str) -> Result<Source, FileError> {
    let (rel, absolute) = relative(root, name)?;
    open_joined(root, &root.join(rel), absolute)
}

/// Opens `joined` (a checked name under `root`), confined to `root` once resolved.
fn open_joined(root: &Path, joined: &Path, absolute: bool) -> Result<Source, FileError> {
    let real = match joined.canonicalize() {
        Ok(p) => p,
        // An absolute name that is not under the root names something outside it.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && absolute => {
            return Err(FileError::Denied("absolute_path"))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(FileError::NotFound),
        Err(e) => return Err(FileError::Io(e.to_string())),
    };
    if !real.starts_with(root) {
        return Err(FileError::Denied("outside_root"));
    }
    let file = File::open(&real).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => FileError::NotFound,
        std::io::ErrorKind::PermissionDenied => FileError::Denied("permission"),
        _ => FileError::Io(e.to_string()),
    })?;
    let meta = file.metadata().map_err(|e| FileError::Io(e.to_string()))?;
    if !meta.is_file() {
        return Err(FileError::Denied("not_a_regular_file"));
    }
    let in_memory = in_memory(&file);
    Ok(Source {
        file: Arc::new(file),
        meta,
        in_memory,
    })
}

/// Whether `file` is on a file system that keeps its data in memory (tmpfs, ramfs).
fn in_memory(file: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: statfs is plain data; zeroed is a valid start for fstatfs to fill.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid descriptor and a statfs the call may write.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    // linux/magic.h; compared as the 32 bits the kernel defines them in.
    const RAMFS_MAGIC: u32 = 0x8584_58f6;
    let kind = st.f_type as u32;
    kind == libc::TMPFS_MAGIC as u32 || kind == RAMFS_MAGIC
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let root = d.path().join("tftp");
        std::fs::create_dir_all(root.join("pxelinux.cfg")).expect("dirs");
        std::fs::write(root.join("ipxe.efi"), vec![7u8; 3000]).expect("file");
        std::fs::write(root.join("pxelinux.cfg/default"), b"DEFAULT local\n").expect("file");
        std::fs::write(d.path().join("secret"), b"no").expect("file");
        std::os::unix::fs::symlink(d.path().join("secret"), root.join("escape")).expect("link");
        std::os::unix::fs::symlink("ipxe.efi", root.join("alias.efi")).expect("link");
        let root = root.canonicalize().expect("canonical");
        (d, root)
    }

    /// tmpfs refuses RWF_NOWAIT; its files are read at once all the same (a file on
    /// /dev/shm, where the machine has one).
    #[test]
    fn files_in_memory_are_read_without_the_blocking_pool() {
        let Ok(d) = tempfile::tempdir_in("/dev/shm") else {
            return;
        };
        std::fs::write(d.path().join("boot.efi"), vec![9u8; 5000]).expect("file");
        let root = d.path().canonicalize().expect("canonical");
        let s = open(&root, "boot.efi").expect("open");
        assert!(s.in_memory, "/dev/shm is tmpfs");
        let mut buf = [0u8; 512];
        assert!(s.read_cached_at(&mut buf, 4096));
        assert_eq!(buf, [9u8; 512]);
        // Past the end: short, left to the blocking path.
        assert!(!s.read_cached_at(&mut buf, 4800));
    }

    #[test]
    fn serves_files_and_links_inside_the_root() {
        let (_d, root) = root();
        let s = open(&root, "ipxe.efi").expect("open");
        assert_eq!(s.size(), 3000);
        let mut buf = vec![0u8; 1468];
        assert_eq!(s.read_at(&mut buf, 2936).expect("read"), 64);
        assert_eq!(
            open(&root, "./pxelinux.cfg/default").expect("open").size(),
            14
        );
        assert_eq!(open(&root, "alias.efi").expect("open").size(), 3000);
    }

    #[test]
    fn a_leading_slash_means_the_root() {
        let (_d, root) = root();
        assert_eq!(open(&root, "/ipxe.efi").expect("open").size(), 3000);
        assert_eq!(
            open(&root, "//pxelinux.cfg/default").expect("open").size(),
            14
        );
        let spelled = format!("{}/ipxe.efi", root.display());
        assert_eq!(open(&root, &spelled).expect("open").size(), 3000);
        assert_eq!(
            open(&root, "/../secret").err(),
            Some(FileError::Denied("parent_dir"))
        );
    }

    #[test]
    fn refuses_every_way_out() {
        let (_d, root) = root();
        for (name, want) in [
            ("../secret", FileError::Denied("parent_dir")),
            ("pxelinux.cfg/../../secret", FileError::Denied("parent_dir")),
            ("/etc/passwd", FileError::Denied("absolute_path")),
            ("pxelinux.cfg\\default", FileError::Denied("backslash")),
            ("a\nb", FileError::Denied("control_character")),
            ("escape", FileError::Denied("outside_root")),
            ("pxelinux.cfg", FileError::Denied("not_a_regular_file")),
            ("missing.efi", FileError::NotFound),
            ("images/fc/.staging/vmlinuz", FileError::Denied("staging")),
        ] {
            assert_eq!(open(&root, name).err(), Some(want), "{name}");
        }
    }

    #[test]
    fn cached_reads_fill_the_buffer_or_say_no() {
        let (_d, root) = root();
        let s = open(&root, "ipxe.efi").expect("open");
        // Just written, so in the page cache (tmpfs or a disk file system alike).
        let mut buf = vec![0u8; 1000];
        if s.read_cached_at(&mut buf, 100) {
            assert_eq!(buf, vec![7u8; 1000]);
        }
        // Past the end the read is short: never "filled".
        assert!(!s.read_cached_at(&mut buf, 2500));
    }
}
