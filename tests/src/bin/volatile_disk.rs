//! `volatile_disk MOUNTPOINT DURABLE_DIR VOLATILE_DIR`: a disk that loses what was not flushed
//! when its power is cut, for the lab's durability tests (this machine has no device mapper,
//! so no dm-flakey or dm-log-writes). It mounts a FUSE file system at MOUNTPOINT (as root,
//! with mount(2) on a `/dev/fuse` descriptor: no libfuse, no fusermount) holding one flat
//! folder of regular files, and keeps two layers:
//!
//! - the volatile layer: what reads see, changed by every WRITE, truncation, create, rename
//!   and unlink, as a page cache is;
//! - the durable layer: a file's bytes (its size included) become durable when an FSYNC of it
//!   is answered (fsync or fdatasync: both cover the data), and the folder's names when an
//!   FSYNCDIR is. A new file whose name was never made durable is lost at a cut, as on a
//!   real disk.
//!
//! Commands, one per line on stdin:
//!
//! - `cut`: the power is cut. The durable layer is written to DURABLE_DIR (one file per
//!   durable name, with its durable bytes) under the lock every request is answered under, so
//!   the image holds exactly the FSYNCs answered before it; from then on no FSYNC or
//!   FSYNCDIR is ever answered (each is printed as `held fsync`), as a dead disk never
//!   completes a flush. Prints `cut`.
//! - `fail`: from now on FSYNC and FSYNCDIR fail with EIO (printed `failed fsync`), as a disk
//!   reporting a write error does; the data stays volatile. Prints `failing`.
//! - `heal`: flushes succeed again. Prints `healed`.
//! - `quit` or the end of stdin: the volatile layer is written to VOLATILE_DIR (so a test can
//!   show what the cut threw away) and the process exits, which closes the descriptor, aborts
//!   the connection and fails every held request with ENOTCONN.
//!
//! It prints `mounted` once the file system is up, so a test waits on lines, never on time.
//! The FUSE wire format is the kernel's `include/uapi/linux/fuse.h` (protocol 7.31 answered;
//! the kernel speaks down to it).

use std::{
    collections::{BTreeMap, HashMap},
    ffi::CString,
    io::{BufRead as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

const FUSE_LOOKUP: u32 = 1;
const FUSE_FORGET: u32 = 2;
const FUSE_GETATTR: u32 = 3;
const FUSE_SETATTR: u32 = 4;
const FUSE_UNLINK: u32 = 10;
const FUSE_RENAME: u32 = 12;
const FUSE_OPEN: u32 = 14;
const FUSE_READ: u32 = 15;
const FUSE_WRITE: u32 = 16;
const FUSE_STATFS: u32 = 17;
const FUSE_RELEASE: u32 = 18;
const FUSE_FSYNC: u32 = 20;
const FUSE_FLUSH: u32 = 25;
const FUSE_INIT: u32 = 26;
const FUSE_OPENDIR: u32 = 27;
const FUSE_READDIR: u32 = 28;
const FUSE_RELEASEDIR: u32 = 29;
const FUSE_FSYNCDIR: u32 = 30;
const FUSE_ACCESS: u32 = 34;
const FUSE_CREATE: u32 = 35;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_BATCH_FORGET: u32 = 42;
const FUSE_RENAME2: u32 = 45;

/// `FATTR_SIZE` in `fuse_setattr_in.valid`.
const FATTR_SIZE: u32 = 1 << 3;

/// `struct fuse_in_header`.
const IN_HEADER: usize = 40;
/// The protocol minor version answered.
const MINOR: u32 = 31;
/// Largest write the kernel may send; the read buffer must hold it plus a header.
const MAX_WRITE: u32 = 128 * 1024;
/// The largest file this disk holds (a journal in a test is a few kilobytes).
const MAX_FILE: u64 = 64 << 20;

const ROOT: u64 = 1;

/// What the disk does with a flush.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Power {
    /// Flushes make data durable.
    On,
    /// Flushes fail with EIO.
    Failing,
    /// The power is cut: flushes are never answered.
    Cut,
}

/// Both layers of the disk.
struct Disk {
    /// Volatile bytes per inode (open-but-unlinked files keep theirs).
    data: HashMap<u64, Vec<u8>>,
    /// Durable bytes per inode.
    synced: HashMap<u64, Vec<u8>>,
    /// The folder as reads see it.
    names: BTreeMap<String, u64>,
    /// The folder as it would be found after a power cut.
    durable_names: BTreeMap<String, u64>,
    next_ino: u64,
    power: Power,
}

impl Disk {
    fn size(&self, ino: u64) -> u64 {
        self.data.get(&ino).map_or(0, |d| d.len() as u64)
    }

    /// Writes one layer as plain files under `dir`.
    fn save(&self, dir: &Path, durable: bool) -> Result<usize, String> {
        let (names, bytes) = if durable {
            (&self.durable_names, &self.synced)
        } else {
            (&self.names, &self.data)
        };
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        for (name, ino) in names {
            let path = dir.join(name);
            let body = bytes.get(ino).map(Vec::as_slice).unwrap_or_default();
            std::fs::write(&path, body).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Ok(names.len())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mountpoint, durable, volatile] = args.as_slice() else {
        eprintln!("usage: volatile_disk MOUNTPOINT DURABLE_DIR VOLATILE_DIR");
        std::process::exit(2);
    };
    if let Err(e) = serve(mountpoint, PathBuf::from(durable), PathBuf::from(volatile)) {
        eprintln!("volatile_disk: {e}");
        std::process::exit(1);
    }
}

fn mount(mountpoint: &str) -> Result<OwnedFd, String> {
    let dev = CString::new("/dev/fuse").map_err(|e| e.to_string())?;
    // SAFETY: a valid C string; the descriptor is owned below.
    let raw = unsafe { libc::open(dev.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(format!("/dev/fuse: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `raw` was just opened and is owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let target = CString::new(mountpoint).map_err(|e| e.to_string())?;
    let source = CString::new("volatile_disk").map_err(|e| e.to_string())?;
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

fn serve(mountpoint: &str, durable: PathBuf, volatile: PathBuf) -> Result<(), String> {
    let fd = mount(mountpoint)?;
    let disk = Arc::new(Mutex::new(Disk {
        data: HashMap::new(),
        synced: HashMap::new(),
        names: BTreeMap::new(),
        durable_names: BTreeMap::new(),
        next_ino: ROOT + 1,
        power: Power::On,
    }));
    let commands = Arc::clone(&disk);
    std::thread::spawn(move || control(&commands, &durable, &volatile));
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
        // One lock per request, held through the reply: a `cut` lands between two answered
        // requests, never between a flush's effect and its answer.
        let mut d = disk.lock().unwrap_or_else(PoisonError::into_inner);
        match handle(&mut d, opcode, nodeid, &req[IN_HEADER..]) {
            Answer::Reply(payload) => reply(&fd, unique, 0, &payload)?,
            Answer::Error(errno) => reply(&fd, unique, -errno, &[])?,
            Answer::Hold => say("held fsync"),
            Answer::Nothing => {}
        }
    }
}

/// Reads commands from stdin until `quit` or its end.
fn control(disk: &Mutex<Disk>, durable: &Path, volatile: &Path) {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines().map_while(Result::ok) {
        let mut d = disk.lock().unwrap_or_else(PoisonError::into_inner);
        match line.trim() {
            "cut" if d.power != Power::Cut => {
                d.power = Power::Cut;
                match d.save(durable, true) {
                    Ok(n) => say(&format!("cut {n}")),
                    Err(e) => say(&format!("error {e}")),
                }
            }
            "fail" if d.power == Power::On => {
                d.power = Power::Failing;
                say("failing");
            }
            "heal" if d.power == Power::Failing => {
                d.power = Power::On;
                say("healed");
            }
            "quit" => break,
            other => say(&format!("error unknown or untimely command {other:?}")),
        }
    }
    let d = disk.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = d.save(volatile, false) {
        say(&format!("error {e}"));
    }
    std::process::exit(0);
}

enum Answer {
    Reply(Vec<u8>),
    Error(i32),
    /// A flush after the cut: never answered.
    Hold,
    /// Requests that take no answer (FORGET, INTERRUPT).
    Nothing,
}

/// The name in a request body (NUL-terminated).
fn name_in(body: &[u8]) -> Option<String> {
    let raw = body.split(|b| *b == 0).next()?;
    std::str::from_utf8(raw)
        .ok()
        .filter(|n| !n.is_empty() && !n.contains('/'))
        .map(str::to_owned)
}

/// What a flush does, by the power state; `make_durable` runs only when it succeeds.
fn flush(d: &mut Disk, make_durable: impl FnOnce(&mut Disk)) -> Answer {
    match d.power {
        Power::On => {
            make_durable(d);
            Answer::Reply(Vec::new())
        }
        Power::Failing => {
            say("failed fsync");
            Answer::Error(libc::EIO)
        }
        Power::Cut => Answer::Hold,
    }
}

fn handle(d: &mut Disk, opcode: u32, nodeid: u64, body: &[u8]) -> Answer {
    let is_file = d.data.contains_key(&nodeid);
    match opcode {
        FUSE_INIT => Answer::Reply(init_out(body)),
        FUSE_LOOKUP if nodeid == ROOT => match name_in(body).and_then(|n| d.names.get(&n)) {
            Some(&ino) => Answer::Reply(entry_out(ino, d.size(ino))),
            None => Answer::Error(libc::ENOENT),
        },
        FUSE_LOOKUP => Answer::Error(libc::ENOTDIR),
        FUSE_GETATTR if nodeid == ROOT || is_file => {
            Answer::Reply(attr_out(nodeid, d.size(nodeid)))
        }
        FUSE_SETATTR if is_file && body.len() >= 16 => {
            // `struct fuse_setattr_in`: valid, padding, fh, size. Only the size matters
            // here (modes and times are not kept).
            if u32_at(body, 0) & FATTR_SIZE != 0 {
                let size = u64_at(body, 16);
                if size > MAX_FILE {
                    return Answer::Error(libc::EFBIG);
                }
                if let Some(data) = d.data.get_mut(&nodeid) {
                    data.resize(size as usize, 0);
                }
            }
            Answer::Reply(attr_out(nodeid, d.size(nodeid)))
        }
        FUSE_SETATTR if nodeid == ROOT => Answer::Reply(attr_out(ROOT, 0)),
        FUSE_CREATE if nodeid == ROOT && body.len() > 16 => {
            // `struct fuse_create_in` (flags, mode, umask, open_flags), then the name.
            let Some(name) = name_in(&body[16..]) else {
                return Answer::Error(libc::EINVAL);
            };
            let ino = match d.names.get(&name) {
                Some(&ino) => ino,
                None => {
                    let ino = d.next_ino;
                    d.next_ino += 1;
                    d.data.insert(ino, Vec::new());
                    d.names.insert(name, ino);
                    ino
                }
            };
            let mut out = entry_out(ino, d.size(ino));
            out.extend_from_slice(&open_out());
            Answer::Reply(out)
        }
        FUSE_OPEN if is_file => Answer::Reply(open_out()),
        FUSE_OPENDIR if nodeid == ROOT => Answer::Reply(open_out()),
        FUSE_READ if is_file && body.len() >= 20 => {
            // `struct fuse_read_in`: fh, offset, size, ...
            let (offset, size) = (u64_at(body, 8), u32_at(body, 16) as u64);
            let data = d.data.get(&nodeid).map(Vec::as_slice).unwrap_or_default();
            let len = data.len() as u64;
            let (from, to) = (offset.min(len), offset.saturating_add(size).min(len));
            Answer::Reply(data[from as usize..to as usize].to_vec())
        }
        FUSE_READDIR if nodeid == ROOT && body.len() >= 20 => {
            Answer::Reply(dirents(d, u64_at(body, 8), u32_at(body, 16) as usize))
        }
        FUSE_WRITE if is_file && body.len() >= 40 => {
            // `struct fuse_write_in` (40 bytes): fh, offset, size, ...; the data follows.
            let (offset, size) = (u64_at(body, 8), u32_at(body, 16) as usize);
            let Some(bytes) = body.get(40..40 + size) else {
                return Answer::Error(libc::EINVAL);
            };
            let end = offset.saturating_add(size as u64);
            if end > MAX_FILE {
                return Answer::Error(libc::EFBIG);
            }
            if let Some(data) = d.data.get_mut(&nodeid) {
                if data.len() < end as usize {
                    data.resize(end as usize, 0);
                }
                data[offset as usize..end as usize].copy_from_slice(bytes);
            }
            let mut out = (size as u32).to_ne_bytes().to_vec();
            out.extend_from_slice(&0u32.to_ne_bytes());
            Answer::Reply(out)
        }
        FUSE_FSYNC if is_file => flush(d, |d| {
            let bytes = d.data.get(&nodeid).cloned().unwrap_or_default();
            d.synced.insert(nodeid, bytes);
        }),
        FUSE_FSYNCDIR if nodeid == ROOT => flush(d, |d| d.durable_names = d.names.clone()),
        FUSE_UNLINK if nodeid == ROOT => match name_in(body) {
            Some(name) if d.names.remove(&name).is_some() => Answer::Reply(Vec::new()),
            _ => Answer::Error(libc::ENOENT),
        },
        FUSE_RENAME | FUSE_RENAME2 if nodeid == ROOT => {
            // `struct fuse_rename_in` is newdir (8 bytes); `fuse_rename2_in` adds flags and
            // padding (8 more). The two names follow, each NUL-terminated.
            let skip = if opcode == FUSE_RENAME { 8 } else { 16 };
            if body.len() < skip || u64_at(body, 0) != ROOT {
                return Answer::Error(libc::EXDEV);
            }
            if opcode == FUSE_RENAME2 && u32_at(body, 8) != 0 {
                return Answer::Error(libc::EINVAL);
            }
            let mut parts = body[skip..].split(|b| *b == 0);
            let (Some(old), Some(new)) = (
                parts.next().and_then(name_in),
                parts.next().and_then(name_in),
            ) else {
                return Answer::Error(libc::EINVAL);
            };
            match d.names.remove(&old) {
                Some(ino) => {
                    d.names.insert(new, ino);
                    Answer::Reply(Vec::new())
                }
                None => Answer::Error(libc::ENOENT),
            }
        }
        FUSE_STATFS => Answer::Reply(statfs_out()),
        FUSE_ACCESS | FUSE_RELEASE | FUSE_RELEASEDIR | FUSE_FLUSH => Answer::Reply(Vec::new()),
        FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT | FUSE_DESTROY => Answer::Nothing,
        FUSE_GETATTR | FUSE_SETATTR | FUSE_OPEN | FUSE_READ | FUSE_WRITE | FUSE_FSYNC => {
            Answer::Error(libc::ENOENT)
        }
        _ => Answer::Error(libc::ENOSYS),
    }
}

/// `struct fuse_dirent`s of the folder from entry `from`, at most `room` bytes.
fn dirents(d: &Disk, from: u64, room: usize) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, (name, ino)) in d.names.iter().enumerate().skip(from as usize) {
        let len = 24 + name.len();
        let padded = len.div_ceil(8) * 8;
        if out.len() + padded > room {
            break;
        }
        out.extend_from_slice(&ino.to_ne_bytes());
        out.extend_from_slice(&(i as u64 + 1).to_ne_bytes()); // offset of the next entry
        out.extend_from_slice(&(name.len() as u32).to_ne_bytes());
        out.extend_from_slice(&u32::from(libc::DT_REG).to_ne_bytes());
        out.extend_from_slice(name.as_bytes());
        out.resize(out.len() + padded - len, 0);
    }
    out
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
    if let Some(s) = b.get(at..at + 4) {
        x.copy_from_slice(s);
    }
    u32::from_ne_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    if let Some(s) = b.get(at..at + 8) {
        x.copy_from_slice(s);
    }
    u64::from_ne_bytes(x)
}

/// `struct fuse_init_out` (64 bytes): protocol 7.MINOR (or the kernel's, if older), no
/// optional features: no writeback cache (every write(2) reaches us before it returns, as
/// the volatile layer needs) and no lock support (the kernel keeps flock locks itself).
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

/// `struct fuse_entry_out` (128 bytes). Names and attributes are not cached (validity 0):
/// the sizes change with every write and truncation, and the kernel must ask.
fn entry_out(ino: u64, size: u64) -> Vec<u8> {
    let mut e = Vec::with_capacity(128);
    e.extend_from_slice(&ino.to_ne_bytes()); // nodeid
    e.extend_from_slice(&0u64.to_ne_bytes()); // generation
    e.extend_from_slice(&0u64.to_ne_bytes()); // entry_valid
    e.extend_from_slice(&0u64.to_ne_bytes()); // attr_valid
    e.extend_from_slice(&0u32.to_ne_bytes());
    e.extend_from_slice(&0u32.to_ne_bytes());
    e.extend_from_slice(&attr(ino, size));
    e
}

/// `struct fuse_attr_out` (104 bytes).
fn attr_out(ino: u64, size: u64) -> Vec<u8> {
    let mut o = Vec::with_capacity(104);
    o.extend_from_slice(&0u64.to_ne_bytes()); // attr_valid
    o.extend_from_slice(&0u32.to_ne_bytes());
    o.extend_from_slice(&0u32.to_ne_bytes()); // dummy
    o.extend_from_slice(&attr(ino, size));
    o
}

/// `struct fuse_open_out` (16 bytes): handle 0, no flags.
fn open_out() -> Vec<u8> {
    vec![0u8; 16]
}

/// `struct fuse_kstatfs` in `fuse_statfs_out` (80 bytes): a 64 MiB disk, mostly free.
fn statfs_out() -> Vec<u8> {
    let mut o = Vec::with_capacity(80);
    let blocks = MAX_FILE / 4096;
    for v in [blocks, blocks, blocks, 1024u64, 1000] {
        o.extend_from_slice(&v.to_ne_bytes()); // blocks, bfree, bavail, files, ffree
    }
    for v in [4096u32, 255, 4096, 0] {
        o.extend_from_slice(&v.to_ne_bytes()); // bsize, namelen, frsize, padding
    }
    o.resize(80, 0); // spare
    o
}
