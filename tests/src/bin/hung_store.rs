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
//! The FUSE plumbing is the lab's (`bootfabric_lab::fuse`).

use bootfabric_lab::fuse::{
    self, attr_out, entry_out, init_out, open_out, Answer, FUSE_BATCH_FORGET, FUSE_DESTROY,
    FUSE_FLUSH, FUSE_FORGET, FUSE_GETATTR, FUSE_INIT, FUSE_INTERRUPT, FUSE_LOOKUP, FUSE_OPEN,
    FUSE_OPENDIR, FUSE_READ, FUSE_RELEASE, FUSE_RELEASEDIR, ROOT,
};

const PER_KIND: u64 = 1000;
/// Size the stuck files claim: large enough that every client asks for a read.
const FILE_SIZE: u64 = 64 << 20;

fn main() {
    let Some(mountpoint) = std::env::args().nth(1) else {
        eprintln!("usage: hung_store MOUNTPOINT");
        std::process::exit(2);
    };
    let served = fuse::serve(&mountpoint, "hung_store", |session, req| {
        let answer = handle(req.opcode, req.nodeid, req.body);
        session.answer(&req, answer)
    });
    if let Err(e) = served {
        eprintln!("hung_store: {e}");
        std::process::exit(1);
    }
}

/// The size `ino` shows: the root folder's 0, a file's FILE_SIZE.
fn size(ino: u64) -> u64 {
    if ino == ROOT {
        0
    } else {
        FILE_SIZE
    }
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
                Some(ino) => Answer::Reply(entry_out(ino, FILE_SIZE, 1)),
                None => Answer::Error(libc::ENOENT),
            }
        }
        FUSE_LOOKUP => Answer::Error(libc::ENOTDIR),
        FUSE_GETATTR if nodeid == ROOT || file.is_some() => {
            Answer::Reply(attr_out(nodeid, size(nodeid), 1))
        }
        FUSE_GETATTR => Answer::Error(libc::ENOENT),
        FUSE_OPENDIR if nodeid == ROOT => Answer::Reply(open_out()),
        FUSE_OPEN | FUSE_READ => match file {
            Some((name, held)) if held == opcode => {
                Answer::Hold(format!("{} {name}", op_name(opcode)))
            }
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
