//! The FUSE plumbing of the lab's fake stores (`hung_store`, `volatile_disk`): mounting with
//! mount(2) on a `/dev/fuse` descriptor (as root: no libfuse, no fusermount), the request
//! loop, and the kernel's reply structs. The wire format is the kernel's
//! `include/uapi/linux/fuse.h`; protocol 7.31 is answered and the kernel speaks down to it.
//! Each store decides only what a request means.

use std::{
    ffi::CString,
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// `FUSE_LOOKUP` of `enum fuse_opcode`.
pub const FUSE_LOOKUP: u32 = 1;
/// `FUSE_FORGET` of `enum fuse_opcode`.
pub const FUSE_FORGET: u32 = 2;
/// `FUSE_GETATTR` of `enum fuse_opcode`.
pub const FUSE_GETATTR: u32 = 3;
/// `FUSE_SETATTR` of `enum fuse_opcode`.
pub const FUSE_SETATTR: u32 = 4;
/// `FUSE_UNLINK` of `enum fuse_opcode`.
pub const FUSE_UNLINK: u32 = 10;
/// `FUSE_RENAME` of `enum fuse_opcode`.
pub const FUSE_RENAME: u32 = 12;
/// `FUSE_OPEN` of `enum fuse_opcode`.
pub const FUSE_OPEN: u32 = 14;
/// `FUSE_READ` of `enum fuse_opcode`.
pub const FUSE_READ: u32 = 15;
/// `FUSE_WRITE` of `enum fuse_opcode`.
pub const FUSE_WRITE: u32 = 16;
/// `FUSE_STATFS` of `enum fuse_opcode`.
pub const FUSE_STATFS: u32 = 17;
/// `FUSE_RELEASE` of `enum fuse_opcode`.
pub const FUSE_RELEASE: u32 = 18;
/// `FUSE_FSYNC` of `enum fuse_opcode`.
pub const FUSE_FSYNC: u32 = 20;
/// `FUSE_FLUSH` of `enum fuse_opcode`.
pub const FUSE_FLUSH: u32 = 25;
/// `FUSE_INIT` of `enum fuse_opcode`.
pub const FUSE_INIT: u32 = 26;
/// `FUSE_OPENDIR` of `enum fuse_opcode`.
pub const FUSE_OPENDIR: u32 = 27;
/// `FUSE_READDIR` of `enum fuse_opcode`.
pub const FUSE_READDIR: u32 = 28;
/// `FUSE_RELEASEDIR` of `enum fuse_opcode`.
pub const FUSE_RELEASEDIR: u32 = 29;
/// `FUSE_FSYNCDIR` of `enum fuse_opcode`.
pub const FUSE_FSYNCDIR: u32 = 30;
/// `FUSE_ACCESS` of `enum fuse_opcode`.
pub const FUSE_ACCESS: u32 = 34;
/// `FUSE_CREATE` of `enum fuse_opcode`.
pub const FUSE_CREATE: u32 = 35;
/// `FUSE_INTERRUPT` of `enum fuse_opcode`.
pub const FUSE_INTERRUPT: u32 = 36;
/// `FUSE_DESTROY` of `enum fuse_opcode`.
pub const FUSE_DESTROY: u32 = 38;
/// `FUSE_BATCH_FORGET` of `enum fuse_opcode`.
pub const FUSE_BATCH_FORGET: u32 = 42;
/// `FUSE_RENAME2` of `enum fuse_opcode`.
pub const FUSE_RENAME2: u32 = 45;

/// The root folder's inode.
pub const ROOT: u64 = 1;

/// `struct fuse_in_header`.
const IN_HEADER: usize = 40;
/// The protocol minor version answered.
const MINOR: u32 = 31;
/// Largest write the kernel may send; the read buffer must hold it plus a header.
const MAX_WRITE: u32 = 128 * 1024;

/// One request from the kernel.
pub struct Request<'a> {
    /// What is asked (`FUSE_*`).
    pub opcode: u32,
    /// The request's id, which its answer carries.
    pub unique: u64,
    /// The inode it is about.
    pub nodeid: u64,
    /// What follows the header.
    pub body: &'a [u8],
}

/// What a store does with a request.
pub enum Answer {
    /// Success with this payload.
    Reply(Vec<u8>),
    /// Failure with this errno.
    Error(i32),
    /// Never answered (the kernel keeps the caller waiting until the store dies); printed as
    /// `held <text>` so that a test waits on lines.
    Hold(String),
    /// Requests that take no answer (FORGET, INTERRUPT).
    Nothing,
}

/// The mounted connection.
pub struct Session {
    fd: OwnedFd,
}

impl Session {
    /// Sends (or withholds) the answer to `req`.
    pub fn answer(&self, req: &Request<'_>, answer: Answer) -> Result<(), String> {
        match answer {
            Answer::Reply(payload) => self.reply(req.unique, 0, &payload),
            Answer::Error(errno) => self.reply(req.unique, -errno, &[]),
            Answer::Hold(text) => {
                say(&format!("held {text}"));
                Ok(())
            }
            Answer::Nothing => Ok(()),
        }
    }

    fn reply(&self, unique: u64, error: i32, payload: &[u8]) -> Result<(), String> {
        let mut out = Vec::with_capacity(16 + payload.len());
        out.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
        out.extend_from_slice(&error.to_ne_bytes());
        out.extend_from_slice(&unique.to_ne_bytes());
        out.extend_from_slice(payload);
        // SAFETY: `out` is readable for its whole length.
        let n = unsafe { libc::write(self.fd.as_raw_fd(), out.as_ptr().cast(), out.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            // The caller was interrupted and is gone: nothing to answer any more.
            if e.raw_os_error() == Some(libc::ENOENT) {
                return Ok(());
            }
            return Err(format!("writing /dev/fuse: {e}"));
        }
        Ok(())
    }
}

/// Mounts a FUSE file system named `source` at `mountpoint`, prints `mounted`, and hands
/// every request to `on_request` (which answers it through the session) until the file
/// system is unmounted.
pub fn serve(
    mountpoint: &str,
    source: &str,
    mut on_request: impl FnMut(&Session, Request<'_>) -> Result<(), String>,
) -> Result<(), String> {
    let session = Session {
        fd: mount(mountpoint, source)?,
    };
    say("mounted");
    let mut buf = vec![0u8; MAX_WRITE as usize + 64 * 1024];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::read(session.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                // A request the caller gave up on before we read it, or a signal.
                Some(libc::ENOENT) | Some(libc::EINTR) | Some(libc::EAGAIN) => continue,
                // Unmounted: nothing more will come.
                Some(libc::ENODEV) => return Ok(()),
                _ => return Err(format!("reading /dev/fuse: {e}")),
            }
        }
        let req = &buf[..n as usize];
        if req.len() < IN_HEADER {
            continue;
        }
        let request = Request {
            opcode: u32_at(req, 4),
            unique: u64_at(req, 8),
            nodeid: u64_at(req, 16),
            body: &req[IN_HEADER..],
        };
        on_request(&session, request)?;
    }
}

fn mount(mountpoint: &str, source: &str) -> Result<OwnedFd, String> {
    let dev = CString::new("/dev/fuse").map_err(|e| e.to_string())?;
    // SAFETY: a valid C string; the descriptor is owned below.
    let raw = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(format!("/dev/fuse: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let target = CString::new(mountpoint).map_err(|e| e.to_string())?;
    let source = CString::new(source).map_err(|e| e.to_string())?;
    let fstype = CString::new("fuse").map_err(|e| e.to_string())?;
    let data = CString::new(format!(
        "fd={raw},rootmode=40000,user_id=0,group_id=0,allow_other"
    ))
    .map_err(|e| e.to_string())?;
    // SAFETY: every pointer is a valid C string that outlives the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(format!(
            "mount {mountpoint}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(fd)
}

/// Prints one line for the test and flushes it at once.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The native-endian u32 at `at`, 0 where the body is too short.
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_ne_bytes(x)
}

/// The native-endian u64 at `at`, 0 where the body is too short.
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_ne_bytes(x)
}

/// `struct fuse_init_out` (64 bytes): protocol 7.MINOR (or the kernel's, if older), no
/// optional features: no writeback cache (every write(2) reaches the store before it
/// returns) and no lock support (the kernel keeps flock locks itself).
pub fn init_out(init_in: &[u8]) -> Vec<u8> {
    let kernel_minor = if init_in.len() >= 8 {
        u32_at(init_in, 4)
    } else {
        MINOR
    };
    let mut o = Vec::with_capacity(64);
    o.extend_from_slice(&7u32.to_ne_bytes()); // major
    o.extend_from_slice(&kernel_minor.min(MINOR).to_ne_bytes()); // minor
    o.extend_from_slice(&(128u32 * 1024).to_ne_bytes()); // max_readahead
    o.extend_from_slice(&0u32.to_ne_bytes()); // flags
    o.extend_from_slice(&16u16.to_ne_bytes()); // max_background
    o.extend_from_slice(&12u16.to_ne_bytes()); // congestion_threshold
    o.extend_from_slice(&MAX_WRITE.to_ne_bytes()); // max_write
    o.extend_from_slice(&1u32.to_ne_bytes()); // time_gran
    o.extend_from_slice(&32u16.to_ne_bytes()); // max_pages
    o.extend_from_slice(&0u16.to_ne_bytes()); // map_alignment
    o.extend_from_slice(&0u32.to_ne_bytes()); // flags2
    o.resize(64, 0); // max_stack_depth, unused
    o
}

/// `struct fuse_attr` (88 bytes) of `ino`: the root is a folder, anything else a regular file
/// of `size` bytes.
fn attr(ino: u64, size: u64) -> Vec<u8> {
    let (mode, nlink) = if ino == ROOT {
        (libc::S_IFDIR | 0o755, 2u32)
    } else {
        (libc::S_IFREG | 0o644, 1u32)
    };
    let mut a = Vec::with_capacity(88);
    a.extend_from_slice(&ino.to_ne_bytes());
    a.extend_from_slice(&size.to_ne_bytes());
    a.extend_from_slice(&size.div_ceil(512).to_ne_bytes()); // blocks
    for _ in 0..3 {
        a.extend_from_slice(&1_700_000_000u64.to_ne_bytes()); // atime, mtime, ctime
    }
    for _ in 0..3 {
        a.extend_from_slice(&0u32.to_ne_bytes()); // their nanoseconds
    }
    a.extend_from_slice(&mode.to_ne_bytes());
    a.extend_from_slice(&nlink.to_ne_bytes());
    a.extend_from_slice(&0u32.to_ne_bytes()); // uid
    a.extend_from_slice(&0u32.to_ne_bytes()); // gid
    a.extend_from_slice(&0u32.to_ne_bytes()); // rdev
    a.extend_from_slice(&4096u32.to_ne_bytes()); // blksize
    a.extend_from_slice(&0u32.to_ne_bytes()); // flags
    a
}

/// `struct fuse_entry_out` (128 bytes); the kernel may cache the name and the attributes
/// for `valid_s` seconds.
pub fn entry_out(ino: u64, size: u64, valid_s: u64) -> Vec<u8> {
    let mut e = Vec::with_capacity(128);
    e.extend_from_slice(&ino.to_ne_bytes()); // nodeid
    e.extend_from_slice(&0u64.to_ne_bytes()); // generation
    e.extend_from_slice(&valid_s.to_ne_bytes()); // entry_valid
    e.extend_from_slice(&valid_s.to_ne_bytes()); // attr_valid
    e.extend_from_slice(&0u32.to_ne_bytes());
    e.extend_from_slice(&0u32.to_ne_bytes());
    e.extend_from_slice(&attr(ino, size));
    e
}

/// `struct fuse_attr_out` (104 bytes), cacheable for `valid_s` seconds.
pub fn attr_out(ino: u64, size: u64, valid_s: u64) -> Vec<u8> {
    let mut o = Vec::with_capacity(104);
    o.extend_from_slice(&valid_s.to_ne_bytes()); // attr_valid
    o.extend_from_slice(&0u32.to_ne_bytes());
    o.extend_from_slice(&0u32.to_ne_bytes()); // dummy
    o.extend_from_slice(&attr(ino, size));
    o
}

/// `struct fuse_open_out` (16 bytes): handle 0, no flags.
pub fn open_out() -> Vec<u8> {
    vec![0u8; 16]
}
