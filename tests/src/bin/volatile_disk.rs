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
//! The FUSE plumbing is the lab's (`bootfabric_lab::fuse`).

use std::{
    collections::{BTreeMap, HashMap},
    io::BufRead as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError},
};

use bootfabric_lab::fuse::{
    self, attr_out, entry_out, init_out, open_out, say, u32_at, u64_at, Answer, FUSE_ACCESS,
    FUSE_BATCH_FORGET, FUSE_CREATE, FUSE_DESTROY, FUSE_FLUSH, FUSE_FORGET, FUSE_FSYNC,
    FUSE_FSYNCDIR, FUSE_GETATTR, FUSE_INIT, FUSE_INTERRUPT, FUSE_LOOKUP, FUSE_OPEN, FUSE_OPENDIR,
    FUSE_READ, FUSE_READDIR, FUSE_RELEASE, FUSE_RELEASEDIR, FUSE_RENAME, FUSE_RENAME2,
    FUSE_SETATTR, FUSE_STATFS, FUSE_UNLINK, FUSE_WRITE, ROOT,
};

/// `FATTR_SIZE` in `fuse_setattr_in.valid`.
const FATTR_SIZE: u32 = 1 << 3;

/// The largest file this disk holds (a journal in a test is a few kilobytes).
const MAX_FILE: u64 = 64 << 20;

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

fn serve(mountpoint: &str, durable: PathBuf, volatile: PathBuf) -> Result<(), String> {
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
    fuse::serve(mountpoint, "volatile_disk", |session, req| {
        // One lock per request, held through the reply: a `cut` lands between two answered
        // requests, never between a flush's effect and its answer.
        let mut d = disk.lock().unwrap_or_else(PoisonError::into_inner);
        let answer = handle(&mut d, req.opcode, req.nodeid, req.body);
        session.answer(&req, answer)
    })
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
        Power::Cut => Answer::Hold("fsync".into()),
    }
}

fn handle(d: &mut Disk, opcode: u32, nodeid: u64, body: &[u8]) -> Answer {
    let is_file = d.data.contains_key(&nodeid);
    match opcode {
        FUSE_INIT => Answer::Reply(init_out(body)),
        FUSE_LOOKUP if nodeid == ROOT => match name_in(body).and_then(|n| d.names.get(&n)) {
            Some(&ino) => Answer::Reply(entry_out(ino, d.size(ino), 0)),
            None => Answer::Error(libc::ENOENT),
        },
        FUSE_LOOKUP => Answer::Error(libc::ENOTDIR),
        FUSE_GETATTR if nodeid == ROOT || is_file => {
            Answer::Reply(attr_out(nodeid, d.size(nodeid), 0))
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
            Answer::Reply(attr_out(nodeid, d.size(nodeid), 0))
        }
        FUSE_SETATTR if nodeid == ROOT => Answer::Reply(attr_out(ROOT, 0, 0)),
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
            let mut out = entry_out(ino, d.size(ino), 0);
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
