//! `hung_store MOUNTPOINT`: an image store that never answers, for the lab's "storage never
//! blocks the network" test. It mounts a FUSE file system at MOUNTPOINT (as root, with
//! mount(2) on a `/dev/fuse` descriptor: no libfuse, no fusermount) holding, for N from 0 to
//! 999, the files
//!
//! - `read-N.img`: looks up, stats and opens like any file, but no READ is ever answered, as
//!   a dying disk or an NFS server gone away behaves;
//! - `open-N.img`: its OPEN is never answered.
//!
//! (one file per client, so that each held request names the caller that waits on it: two
//! readers of one file would wait on one READ).
//!
//! Everything else is answered at once (the root folder, lookups of other names with ENOENT,
//! releases). Unanswered requests are not stored: the kernel keeps the caller waiting until
//! this process dies, which closes the descriptor, aborts the connection and fails every
//! waiting call with ENOTCONN. It prints `mounted` when the file system is up and one `held
//! <op> <name>` line per request it leaves unanswered, so a test waits on lines, never on time.
//! The test kills it by PID and unmounts lazily.
//!
//! The FUSE wire format is the kernel's `include/uapi/linux/fuse.h` (protocol 7.31 answered;
//! the kernel speaks down to it).

use std::{
    ffi::CString,
    io::Write as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_RELEASE: u32 = 18;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_OPENDIR: u32 = 27;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;

/// `struct fuse_in_header`.
const IN_HEADER: usize = 40;
/// The protocol minor version answered.
const MINOR: u32 = 31;
/// Largest write the kernel may send; the read buffer must hold it plus a header.
const MAX_WRITE: u32 = 128 * 1024;

const ROOT: u64 = 1;
/// Files of each kind: `read-0.img` to `read-999.img`, the same for `open-`.
const PER_KIND: u64 = 1000;
/// Size the stuck files claim: large enough that every client asks for a read.
const FILE_SIZE: u64 = 64 << 20;

fn main() {
    let Some(mountpoint) = std::env::args().nth(1) else {
        eprintln!("usage: hung_store MOUNTPOINT");
        std::process::exit(2);
    };
    if let Err(e) = serve(&mountpoint) {
        eprintln!("hung_store: {e}");
        std::process::exit(1);
    }
}

fn serve(mountpoint: &str) -> Result<(), String> {
    let dev = CString::new("/dev/fuse").map_err(|e| e.to_string())?;
    // SAFETY: a valid C string; the descriptor is owned below.
    let raw = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(format!("/dev/fuse: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let target = CString::new(mountpoint).map_err(|e| e.to_string())?;
    let source = CString::new("hung_store").map_err(|e| e.to_string())?;
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
    say("mounted");
    let mut buf = vec![0u8; MAX_WRITE as usize + 64 * 1024];
    loop {
        // SAFETY: `buf` is writable for its whole length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
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
        let opcode = u32_at(req, 4);
        let unique = u64_at(req, 8);
        let nodeid = u64_at(req, 16);
        let body = &req[IN_HEADER..];
        let answer = handle(opcode, nodeid, body);
        match answer {
            Answer::Reply(payload) => reply(&fd, unique, 0, &payload)?,
            Answer::Error(errno) => reply(&fd, unique, -errno, &[])?,
            Answer::Hold(name) => say(&format!("held {} {name}", op_name(opcode))),
            Answer::Nothing => {}
        }
    }
}

enum Answer {
    Reply(Vec<u8>),
    Error(i32),
    /// Never answered: the point of this file system.
    Hold(String),
    /// Requests that take no answer (FORGET, INTERRUPT of a held request).
    Nothing,
}

/// The inode of a file name: `read-N.img` is 2 + 2N, `open-N.img` 3 + 2N.
fn inode(name: &[u8]) -> Option<u64> {
    let name = std::str::from_utf8(name).ok()?.strip_suffix(".img")?;
    let (kind, n) = name.split_once('-')?;
    let n: u64 = n.parse().ok().filter(|n| *n < PER_KIND)?;
    match kind {
        "read" => Some(2 + 2 * n),
        "open" => Some(3 + 2 * n),
        _ => None,
    }
}

/// The name of file inode `ino`, and the request it never answers.
fn file(ino: u64) -> Option<(String, u32)> {
    if !(2..2 + 2 * PER_KIND).contains(&ino) {
        return None;
    }
    let n = (ino - 2) / 2;
    Some(if ino.is_multiple_of(2) {
        (format!("read-{n}.img"), FUSE_READ)
    } else {
        (format!("open-{n}.img"), FUSE_OPEN)
    })
}

fn handle(opcode: u32, nodeid: u64, body: &[u8]) -> Answer {
    let file = file(nodeid);
    match opcode {
        FUSE_INIT => Answer::Reply(init_out(body)),
        FUSE_LOOKUP if nodeid == ROOT => {
            let name = body.split(|b| *b == 0).next().unwrap_or_default();
            match inode(name) {
                Some(ino) => Answer::Reply(entry_out(ino)),
                None => Answer::Error(libc::ENOENT),
            }
        }
        FUSE_LOOKUP => Answer::Error(libc::ENOTDIR),
        FUSE_GETATTR if nodeid == ROOT || file.is_some() => Answer::Reply(attr_out(nodeid)),
        FUSE_GETATTR => Answer::Error(libc::ENOENT),
        FUSE_OPENDIR if nodeid == ROOT => Answer::Reply(open_out()),
        FUSE_OPEN | FUSE_READ => match file {
            Some((name, held)) if held == opcode => Answer::Hold(name),
            Some(_) if opcode == FUSE_OPEN => Answer::Reply(open_out()),
            // Reads of a file whose open is held cannot come; anything else is not ours.
            _ => Answer::Error(libc::EIO),
        },
        FUSE_RELEASE | FUSE_RELEASEDIR | FUSE_FLUSH => Answer::Reply(Vec::new()),
        FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT | FUSE_DESTROY => Answer::Nothing,
        _ => Answer::Error(libc::ENOSYS),
    }
}

fn op_name(opcode: u32) -> &'static str {
    match opcode {
        FUSE_OPEN => "open",
        FUSE_READ => "read",
        _ => "other",
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn reply(fd: &OwnedFd, unique: u64, error: i32, payload: &[u8]) -> Result<(), String> {
    let mut out = Vec::with_capacity(16 + payload.len());
    out.extend_from_slice(&(16 + payload.len() as u32).to_ne_bytes());
    out.extend_from_slice(&error.to_ne_bytes());
    out.extend_from_slice(&unique.to_ne_bytes());
    out.extend_from_slice(payload);
    // SAFETY: `out` is readable for its whole length.
    let n = unsafe { libc::write(fd.as_raw_fd(), out.as_ptr().cast(), out.len()) };
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

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_ne_bytes(x)
}

/// `struct fuse_init_out` (64 bytes): protocol 7.MINOR (or the kernel's, if older), no
/// optional features.
fn init_out(init_in: &[u8]) -> Vec<u8> {
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

/// `struct fuse_attr` (88 bytes) of `ino`.
fn attr(ino: u64) -> Vec<u8> {
    let (mode, nlink, size) = if ino == ROOT {
        (libc::S_IFDIR | 0o755, 2u32, 0u64)
    } else {
        (libc::S_IFREG | 0o644, 1u32, FILE_SIZE)
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

/// `struct fuse_entry_out` (128 bytes): one second of caching for the name and attributes.
fn entry_out(ino: u64) -> Vec<u8> {
    let mut e = Vec::with_capacity(128);
    e.extend_from_slice(&ino.to_ne_bytes()); // nodeid
    e.extend_from_slice(&0u64.to_ne_bytes()); // generation
    e.extend_from_slice(&1u64.to_ne_bytes()); // entry_valid
    e.extend_from_slice(&1u64.to_ne_bytes()); // attr_valid
    e.extend_from_slice(&0u32.to_ne_bytes());
    e.extend_from_slice(&0u32.to_ne_bytes());
    e.extend_from_slice(&attr(ino));
    e
}

/// `struct fuse_attr_out` (104 bytes).
fn attr_out(ino: u64) -> Vec<u8> {
    let mut o = Vec::with_capacity(104);
    o.extend_from_slice(&1u64.to_ne_bytes()); // attr_valid
    o.extend_from_slice(&0u32.to_ne_bytes());
    o.extend_from_slice(&0u32.to_ne_bytes()); // dummy
    o.extend_from_slice(&attr(ino));
    o
}

/// `struct fuse_open_out` (16 bytes): handle 0, no flags.
fn open_out() -> Vec<u8> {
    vec![0u8; 16]
}
