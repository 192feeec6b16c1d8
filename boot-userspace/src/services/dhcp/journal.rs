//! The lease journal: an append-only, fsync'd file of lease records, and the group
//! committer that makes an ACK's lease durable before the ACK is sent.
//!
//! Format (one record per line, human-readable, `#` lines are comments):
//!
//! ```text
//! # bootfabric leases v1
//! 1a2b3c4d B 10.77.0.100 52:54:00:aa:00:01 1795536000 node01
//! 5e6f7a8b R 10.77.0.100 52:54:00:aa:00:01 0 -
//! ```
//!
//! Fields: CRC32 (8 hex digits) of everything after the first space; state `B`ound,
//! `R`eleased or `D`eclined; address; MAC; expiry in Unix seconds; host name or `-`. The
//! last record per address wins. A crash can leave a torn last line (no newline):
//! [`Journal::open`] cuts the file back to the end of the last complete line, so everything
//! that was durable before the crash is kept and nothing half-written is trusted.
//!
//! A complete line (newline-terminated) that does not parse or fails its CRC is never a
//! crash's doing (appends only ever tear the end): it is damage, and records after it may be
//! acknowledged leases. Cutting there would forget them and hand their addresses out twice,
//! so [`Journal::open`] refuses with the line, its byte offset and the way out, [`repair`]
//! (`bootfabric leases repair`), which keeps a copy, drops only the bad lines and says which.
//!
//! The daemon holds an exclusive `flock` on the journal while it runs, so a repair (or a
//! second daemon) cannot pull the file from under it.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc, Mutex,
    },
};

use tracing::warn;

use crate::model::inventory::Mac;

/// A record kind a journal holds: one line per record, the last per key wins. The IPv4
/// leases ([`LeaseRecord`]) and the DHCPv6 bindings (`v6::table::Lease6Record`) share the
/// journal's crash handling, group commit, compaction and repair through it.
pub trait Record: Clone + Send + std::fmt::Debug + 'static {
    /// What identifies the thing a record is about (an address).
    type Key: Eq + std::hash::Hash + Ord + Clone + Send + 'static;
    /// The file's first line.
    const HEADER: &'static str;
    /// The record's key.
    fn key(&self) -> Self::Key;
    /// The line's body (after the checksum, without the newline); no newline inside.
    fn body(&self) -> String;
    /// Parses a body; the error says what is wrong.
    fn parse(body: &str) -> Result<Self, &'static str>;
    /// Whether the record no longer says anything a restart needs at `now` (Unix seconds):
    /// compaction leaves it out. Default never: DHCPv4's pools bound its journal anyway.
    fn is_dead(&self, _now: u64) -> bool {
        false
    }
}

impl Record for LeaseRecord {
    type Key = Ipv4Addr;
    const HEADER: &'static str = "# bootfabric leases v1\n";

    fn key(&self) -> Ipv4Addr {
        self.ip
    }

    fn body(&self) -> String {
        let state = self.state.letter();
        let host = self
            .hostname
            .as_deref()
            .and_then(sanitize)
            .unwrap_or_else(|| "-".to_owned());
        format!("{state} {} {} {} {host}", self.ip, self.mac, self.expires)
    }

    fn parse(body: &str) -> Result<Self, &'static str> {
        const BAD: &str = "malformed record";
        let f: Vec<&str> = body.split(' ').collect();
        let [state, ip, mac, expires, host] = f.as_slice() else {
            return Err(BAD);
        };
        Ok(LeaseRecord {
            ip: ip.parse().map_err(|_| BAD)?,
            mac: mac.parse().map_err(|_| BAD)?,
            state: LeaseState::from_letter(state).ok_or(BAD)?,
            expires: expires.parse().map_err(|_| BAD)?,
            hostname: (*host != "-").then(|| (*host).to_owned()),
        })
    }
}

impl LeaseState {
    /// The state's letter in a journal line.
    pub fn letter(self) -> char {
        match self {
            LeaseState::Bound => 'B',
            LeaseState::Released => 'R',
            LeaseState::Declined => 'D',
        }
    }

    /// The state a journal line's letter names.
    pub fn from_letter(s: &str) -> Option<Self> {
        match s {
            "B" => Some(LeaseState::Bound),
            "R" => Some(LeaseState::Released),
            "D" => Some(LeaseState::Declined),
            _ => None,
        }
    }
}

/// What a journal record says about an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeaseState {
    /// Bound to the client until `expires`.
    Bound,
    /// Released by the client: free.
    Released,
    /// Declined by the client (in use by someone else): quarantined until `expires`.
    Declined,
}

/// One lease record. `expires` is Unix seconds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseRecord {
    /// The address.
    pub ip: Ipv4Addr,
    /// The client.
    pub mac: Mac,
    /// What the record says.
    pub state: LeaseState,
    /// Unix seconds.
    pub expires: u64,
    /// Host name, if known.
    pub hostname: Option<String>,
}

/// A journal that cannot be read or written. Clone, so one failed batch can fail all its
/// waiters.
#[derive(Clone, Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O operation on the journal failed.
    #[error("{path}: {op}: {message}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What was being done.
        op: &'static str,
        /// The OS error.
        message: String,
    },
    /// The committer thread is gone (the daemon is shutting down).
    #[error("the lease journal writer has stopped")]
    Stopped,
    /// A complete line in the journal is damaged; the records after it are not to be
    /// thrown away silently.
    #[error(
        "{path}:{line}: corrupt lease record at byte offset {offset} ({reason}); the records after it may be acknowledged leases, so the journal is not cut. Run `bootfabric leases repair` (it keeps a copy of the journal, drops the bad line and prints it)"
    )]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// Line number, from 1.
        line: usize,
        /// Byte offset of the line's start.
        offset: u64,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Another process (a running daemon) holds the journal.
    #[error("{path}: locked by another process (is bootfabric running? stop it first)")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// Too many commits are waiting for the disk already (`dhcp.commit_queue`).
    #[error("{0} lease commits are in flight already: refused")]
    QueueFull(usize),
    /// The commit did not become durable within `dhcp.commit_timeout_ms`.
    #[error("lease record not durable within {0:?}")]
    Timeout(std::time::Duration),
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl Fn(std::io::Error) -> JournalError + 'a {
    move |e| JournalError::Io {
        path: path.to_owned(),
        op,
        message: e.to_string(),
    }
}

/// Host names as stored: `[A-Za-z0-9.-]`, at most 63 bytes; anything else is dropped.
fn sanitize(h: &str) -> Option<String> {
    let ok = !h.is_empty()
        && h.len() <= 63
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    ok.then(|| h.to_owned())
}

fn encode<R: Record>(r: &R) -> String {
    let body = r.body();
    format!("{:08x} {body}\n", crc32fast::hash(body.as_bytes()))
}

/// Parses one complete line (without its newline); the error says what is wrong.
fn decode<R: Record>(line: &str) -> Result<R, &'static str> {
    const BAD: &str = "malformed record";
    let (crc, body) = line.split_once(' ').ok_or(BAD)?;
    // Eight hex digits exactly: `from_str_radix` alone also takes a sign, so a checksum field
    // with a corrupted first byte (`0` turned `+`) passed (found by fuzz/journal_replay).
    // Once that holds, `from_str_radix` cannot fail: one error covers both.
    let sum = (crc.len() == 8 && crc.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u32::from_str_radix(crc, 16).ok())
        .flatten()
        .ok_or("checksum is not eight hexadecimal digits")?;
    if sum != crc32fast::hash(body.as_bytes()) {
        return Err("checksum mismatch");
    }
    R::parse(body)
}

/// One line of a journal as [`classify`] sees it.
#[derive(Debug)]
enum Line<R> {
    /// The header (or another comment before the first record).
    Comment,
    /// An empty line.
    Empty,
    /// A good record.
    Record(R),
    /// A complete line that is not a good record.
    Bad(&'static str),
    /// The last line, without its newline: a write the crash interrupted.
    Torn,
}

/// Classifies one line as read (with its newline, if it has one); `records_before` is how
/// many records came before it. Comments are allowed only before the first record: only
/// the header is ever written, and a record whose first byte flipped to `#` must not pass
/// for one.
fn classify<R: Record>(raw: &[u8], records_before: usize) -> Line<R> {
    let Some(body) = raw.strip_suffix(b"\n") else {
        return Line::Torn;
    };
    let Ok(text) = std::str::from_utf8(body) else {
        return Line::Bad("not UTF-8");
    };
    if text.is_empty() {
        Line::Empty
    } else if text.starts_with('#') {
        if records_before == 0 {
            Line::Comment
        } else {
            Line::Bad("a comment after the first record")
        }
    } else {
        match decode(text) {
            Ok(r) => Line::Record(r),
            Err(why) => Line::Bad(why),
        }
    }
}

/// Result of scanning a journal: the live set, the record count and where good data ends.
struct Scan<R: Record> {
    live: HashMap<R::Key, R>,
    records: usize,
    good_len: u64,
    torn: bool,
}

/// Reads `file` line by line (each with its newline, if it has one) and hands `each` the
/// line's number (from 1), its byte offset and its bytes, until the end or until `each`
/// returns `false`. The one reading loop of [`scan`] and [`repair`].
fn for_each_line(
    path: &Path,
    file: &File,
    mut each: impl FnMut(usize, u64, &[u8]) -> Result<bool, JournalError>,
) -> Result<(), JournalError> {
    let mut reader = BufReader::new(file);
    let (mut offset, mut raw) = (0u64, Vec::new());
    for number in 1.. {
        raw.clear();
        let n = reader
            .read_until(b'\n', &mut raw)
            .map_err(io_err(path, "read"))?;
        if n == 0 || !each(number, offset, &raw)? {
            break;
        }
        offset += n as u64;
    }
    Ok(())
}

fn scan<R: Record>(path: &Path, file: &File) -> Result<Scan<R>, JournalError> {
    let mut live = HashMap::new();
    let (mut records, mut good_len, mut torn) = (0, 0u64, false);
    for_each_line(path, file, |number, offset, raw| {
        match classify::<R>(raw, records) {
            Line::Comment | Line::Empty => {}
            Line::Record(r) => {
                records += 1;
                live.insert(r.key(), r);
            }
            Line::Bad(reason) => {
                return Err(JournalError::Corrupt {
                    path: path.to_owned(),
                    line: number,
                    offset,
                    reason,
                })
            }
            Line::Torn => {
                // `read_until` stops without a newline only at the end of the file.
                torn = true;
                return Ok(false);
            }
        }
        good_len = offset + raw.len() as u64;
        Ok(true)
    })?;
    Ok(Scan {
        live,
        records,
        good_len,
        torn,
    })
}

fn sorted<R: Record>(live: HashMap<R::Key, R>) -> Vec<R> {
    let mut v: Vec<R> = live.into_values().collect();
    v.sort_by_key(|r| r.key());
    v
}

/// The open journal file.
pub struct Journal<R: Record = LeaseRecord> {
    kind: std::marker::PhantomData<R>,
    path: PathBuf,
    file: File,
    records: usize,
    syncs: u64,
    /// Bytes of complete, trusted lines. A failed write may leave a partial line past it,
    /// which must be cut before the next append: a later record written after a torn line
    /// would be discarded by the next `open` although it was reported durable.
    len: u64,
    /// Set when a write or the repair of one failed: the file may hold bytes past `len`.
    tail_dirty: bool,
    /// Set when the folder fsync after a compaction's rename failed: until it succeeds the
    /// rename (and so every record appended since) may not survive a crash.
    dir_dirty: bool,
    /// Test hook: the next append writes only this many bytes and then fails.
    #[cfg(test)]
    fail_write_after: Option<usize>,
    /// Test hook: every fdatasync first waits for a message (or the sender's drop) here, as
    /// a hung disk would keep it waiting.
    #[cfg(test)]
    stall_sync: Option<mpsc::Receiver<()>>,
}

impl<R: Record> Journal<R> {
    /// Opens (creating if missing, with parent dirs) the journal at `path`, locks it, replays
    /// it, and returns the live records: the last record per address, in address order. A
    /// torn last line is cut off (and logged); the records before it are kept. A damaged
    /// complete line anywhere is [`JournalError::Corrupt`]: see [`repair`].
    pub fn open(path: &Path) -> Result<(Journal<R>, Vec<R>), JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir, "create folder"))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err(path, "open"))?;
        lock(path, &file)?;
        let s = scan::<R>(path, &file)?;
        if s.torn {
            warn!(journal = %path.display(), kept = s.records, "lease journal ends in an incomplete line (a write cut short by a crash): cut back to the last complete record");
            file.set_len(s.good_len).map_err(io_err(path, "truncate"))?;
            file.sync_all().map_err(io_err(path, "fsync"))?;
        }
        let mut len = s.good_len;
        if len == 0 {
            file.write_all(R::HEADER.as_bytes())
                .map_err(io_err(path, "write"))?;
            file.sync_all().map_err(io_err(path, "fsync"))?;
            // A new file's directory entry must be durable too.
            sync_dir(path)?;
            len = R::HEADER.len() as u64;
        }
        let journal = Journal {
            kind: std::marker::PhantomData,
            path: path.to_owned(),
            file,
            records: s.records,
            syncs: 0,
            len,
            tail_dirty: false,
            dir_dirty: false,
            #[cfg(test)]
            fail_write_after: None,
            #[cfg(test)]
            stall_sync: None,
        };
        Ok((journal, sorted(s.live)))
    }

    /// Appends the records and makes them durable (one write, one fdatasync).
    ///
    /// On error none of the records may be relied on, and the file is cut back to the
    /// records before them (now, or before the next append if that fails too).
    pub fn append(&mut self, records: &[R]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        self.repair_tail()?;
        let buf: String = records.iter().map(encode::<R>).collect();
        if let Err(e) = self.write_and_sync(buf.as_bytes()) {
            // After a failed fdatasync the kernel may have dropped the dirty pages and a
            // retry would "succeed" without them, so the batch is cut, never retried.
            self.tail_dirty = true;
            if let Err(cut) = self.repair_tail() {
                warn!(error = %cut, "cannot cut a failed lease journal write; will retry before the next append");
            }
            return Err(e);
        }
        self.len += buf.len() as u64;
        self.records += records.len();
        if self.dir_dirty {
            sync_dir(&self.path)?;
            self.dir_dirty = false;
        }
        Ok(())
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> Result<(), JournalError> {
        #[cfg(test)]
        if let Some(n) = self.fail_write_after.take() {
            let _ = self.file.write_all(&buf[..n.min(buf.len())]);
            return Err(io_err(&self.path, "write")(std::io::Error::other(
                "injected fault",
            )));
        }
        self.file
            .write_all(buf)
            .map_err(io_err(&self.path, "write"))?;
        #[cfg(test)]
        if let Some(gate) = &self.stall_sync {
            let _ = gate.recv();
        }
        self.file
            .sync_data()
            .map_err(io_err(&self.path, "fdatasync"))?;
        self.syncs += 1;
        Ok(())
    }

    /// Cuts whatever a failed write left past the last complete record.
    fn repair_tail(&mut self) -> Result<(), JournalError> {
        if self.tail_dirty {
            self.file
                .set_len(self.len)
                .map_err(io_err(&self.path, "truncate"))?;
            self.file
                .sync_data()
                .map_err(io_err(&self.path, "fdatasync"))?;
            self.tail_dirty = false;
        }
        Ok(())
    }

    /// Number of records in the file.
    pub fn len(&self) -> usize {
        self.records
    }

    /// Whether the file holds no records.
    pub fn is_empty(&self) -> bool {
        self.records == 0
    }

    /// Number of fdatasync calls made by [`Journal::append`] (for batching checks).
    pub fn syncs(&self) -> u64 {
        self.syncs
    }

    /// Rewrites the journal to hold exactly `live`, atomically (`<path>.tmp`, fsync, rename,
    /// fsync of the folder), and continues appending to the new file.
    ///
    /// An error before the rename leaves the old file in use, unchanged. If only the folder
    /// fsync fails, the new file is in use and the next append retries that fsync before
    /// it reports success.
    pub fn compact(&mut self, live: &[R]) -> Result<(), JournalError> {
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        // A crash during an earlier compaction can leave a stale temp file.
        match std::fs::remove_file(&tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(io_err(&tmp, "remove stale")(e))
            }
            _ => {}
        }
        // This handle is kept after the rename: reopening by name could fail afterwards
        // and leave the journal appending to the unlinked old file.
        let mut f = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&tmp)
            .map_err(io_err(&tmp, "create"))?;
        // The new file must be ours (locked) the moment it takes the journal's name.
        lock(&tmp, &f)?;
        let mut buf = String::from(R::HEADER);
        buf.extend(live.iter().map(encode::<R>));
        f.write_all(buf.as_bytes()).map_err(io_err(&tmp, "write"))?;
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path, "rename"))?;
        self.file = f;
        self.records = live.len();
        self.len = buf.len() as u64;
        self.tail_dirty = false;
        self.dir_dirty = true;
        sync_dir(&self.path)?;
        self.dir_dirty = false;
        Ok(())
    }
}

/// Takes the exclusive lock that says "a daemon writes this journal"; held until `file`
/// is closed.
fn lock(path: &Path, file: &File) -> Result<(), JournalError> {
    use std::os::fd::AsRawFd;
    // SAFETY: flock(2) on a descriptor `file` owns and keeps open; no memory is passed.
    // (`File::try_lock` would do, but it is newer than the workspace's rust-version.)
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Err(JournalError::Locked {
            path: path.to_owned(),
        })
    } else {
        Err(io_err(path, "lock")(e))
    }
}

fn sync_dir(path: &Path) -> Result<(), JournalError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync folder"))
}

/// Reads the live records without modifying the file (nor locking it: this works while
/// the daemon runs); a torn last line is ignored, a damaged one is an error.
pub fn read_live<R: Record>(path: &Path) -> Result<Vec<R>, JournalError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, "open")(e)),
    };
    Ok(sorted(scan::<R>(path, &file)?.live))
}

/// A line [`repair`] left out.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DroppedLine {
    /// Line number, from 1.
    pub line: usize,
    /// Byte offset of its start.
    pub offset: u64,
    /// Why it was dropped.
    pub reason: &'static str,
    /// Its bytes, escaped for printing (at most 200 characters).
    pub text: String,
}

/// What [`repair`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Repair {
    /// Records kept, in their order.
    pub kept: usize,
    /// Lines left out, in file order.
    pub dropped: Vec<DroppedLine>,
    /// The untouched original, when anything was dropped.
    pub copy: Option<PathBuf>,
}

/// Repairs the journal at `path` for an operator: when any line is damaged (or the last one
/// torn), keeps the original as `<path>.corrupt-<unix seconds>`, then replaces the journal
/// (temp file, fsync, rename, fsync of the folder) with its good records, in their order,
/// and reports the lines it left out. A sound journal is left alone. Refuses while a daemon
/// holds the journal. `now` names the copy.
pub fn repair<R: Record>(path: &Path, now: u64) -> Result<Repair, JournalError> {
    let file = File::open(path).map_err(io_err(path, "open"))?;
    lock(path, &file)?;
    let mut good = String::from(R::HEADER);
    let (mut kept, mut dropped) = (0usize, Vec::new());
    for_each_line(path, &file, |number, offset, raw| {
        let why = match classify::<R>(raw, kept) {
            Line::Comment | Line::Empty => None,
            Line::Record(r) => {
                kept += 1;
                good.push_str(&encode(&r));
                None
            }
            Line::Bad(reason) => Some(reason),
            Line::Torn => Some("incomplete last line (a write cut short)"),
        };
        if let Some(reason) = why {
            let text: String = String::from_utf8_lossy(raw)
                .trim_end_matches('\n')
                .escape_debug()
                .take(200)
                .collect();
            dropped.push(DroppedLine {
                line: number,
                offset,
                reason,
                text,
            });
        }
        Ok(true)
    })?;
    if dropped.is_empty() {
        return Ok(Repair {
            kept,
            dropped,
            copy: None,
        });
    }
    let copy = (0..)
        .map(|i| {
            let mut p = path.as_os_str().to_owned();
            p.push(format!(".corrupt-{now}"));
            if i > 0 {
                p.push(format!(".{i}"));
            }
            PathBuf::from(p)
        })
        .find(|p| !p.exists())
        .unwrap_or_else(|| path.with_extension("corrupt"));
    std::fs::copy(path, &copy).map_err(io_err(&copy, "copy"))?;
    File::open(&copy)
        .and_then(|f| f.sync_all())
        .map_err(io_err(&copy, "fsync"))?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
    f.write_all(good.as_bytes())
        .map_err(io_err(&tmp, "write"))?;
    f.sync_all().map_err(io_err(&tmp, "fsync"))?;
    std::fs::rename(&tmp, path).map_err(io_err(path, "rename"))?;
    sync_dir(path)?;
    Ok(Repair {
        kept,
        dropped,
        copy: Some(copy),
    })
}

type Waiter = tokio::sync::oneshot::Sender<Result<(), JournalError>>;

/// How long a batch of records nobody waits for gathers more before it is written: the XDP
/// fast path's ACKs left before their records could be written anyway, so one fdatasync a
/// second covers them all during a boot storm.
pub const LAZY_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

/// Bounds on the commits in flight, so a hung disk costs refused ACKs, not memory.
#[derive(Clone, Copy, Debug)]
pub struct CommitBounds {
    /// Records queued or being written at most (`dhcp.commit_queue`); beyond it commits are
    /// refused at once with [`JournalError::QueueFull`].
    pub max_in_flight: usize,
    /// How long [`Committer::commit`] waits for durability before it gives up with
    /// [`JournalError::Timeout`] (`dhcp.commit_timeout_ms`).
    pub timeout: std::time::Duration,
}

impl Default for CommitBounds {
    fn default() -> Self {
        Self::from(&crate::config::DhcpGuards::default())
    }
}

impl From<&crate::config::DhcpGuards> for CommitBounds {
    /// The bounds `dhcp.commit_queue` and `dhcp.commit_timeout_ms` set.
    fn from(g: &crate::config::DhcpGuards) -> Self {
        Self {
            max_in_flight: g.commit_queue as usize,
            timeout: g.commit_timeout,
        }
    }
}

/// A share of the in-flight bound, held by a job from submission until the writer has
/// answered it (or dropped it unanswered), so a caller that timed out does not free the
/// room its record still takes in the queue.
#[derive(Debug)]
struct Permit {
    count: Arc<AtomicUsize>,
    n: usize,
}

impl Permit {
    fn take(count: &Arc<AtomicUsize>, n: usize, max: usize) -> Option<Permit> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                (cur + n <= max).then_some(cur + n)
            })
            .ok()?;
        Some(Permit {
            count: Arc::clone(count),
            n,
        })
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.count.fetch_sub(self.n, Ordering::AcqRel);
    }
}

enum Job<R> {
    Commit(R, Waiter, Permit),
    /// Records without waiting: written with the next batch, which waits up to
    /// [`LAZY_WINDOW`] for company when it holds nothing but these.
    Record(Vec<R>, Permit),
    /// Write what came before, then stop; later jobs fail with `Stopped`.
    Stop,
    #[cfg(test)]
    Pause(mpsc::Receiver<()>),
    #[cfg(test)]
    Syncs(mpsc::Sender<u64>),
}

/// Group commit: a dedicated thread owns the journal; callers submit records and await
/// durability. Records submitted while an fdatasync runs are written together with one
/// write and one fdatasync, so a boot storm costs one flush per batch, not one per client.
pub struct Committer<R: Record = LeaseRecord> {
    tx: mpsc::Sender<Job<R>>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
    in_flight: Arc<AtomicUsize>,
    bounds: CommitBounds,
}

impl<R: Record> Clone for Committer<R> {
    fn clone(&self) -> Self {
        Self {
            tx: self.tx.clone(),
            thread: Arc::clone(&self.thread),
            in_flight: Arc::clone(&self.in_flight),
            bounds: self.bounds,
        }
    }
}

impl<R: Record> Committer<R> {
    /// Starts the writer thread over `journal`, whose live records are `live`.
    ///
    /// `delay` is how long the writer keeps gathering records after the first of a batch
    /// before it writes and syncs them (zero: write at once). A few milliseconds cost a DHCP
    /// client nothing and let one fdatasync cover many ACKs even at modest rates. `bounds`
    /// caps the records in flight and the time a commit may take.
    pub fn start(
        journal: Journal<R>,
        live: &[R],
        delay: std::time::Duration,
        bounds: CommitBounds,
    ) -> Committer<R> {
        Self::start_with_lazy_window(journal, live, delay, LAZY_WINDOW, bounds)
    }

    /// [`Committer::start`] with a lazy batch's gathering time of `lazy` instead of
    /// [`LAZY_WINDOW`] (tests make it long, so that waiting it out cannot pass unseen).
    fn start_with_lazy_window(
        journal: Journal<R>,
        live: &[R],
        delay: std::time::Duration,
        lazy: std::time::Duration,
        bounds: CommitBounds,
    ) -> Committer<R> {
        let (tx, rx) = mpsc::channel();
        let now = super::unix_now();
        let live: HashMap<R::Key, R> = live
            .iter()
            .filter(|r| !r.is_dead(now))
            .map(|r| (r.key(), r.clone()))
            .collect();
        let thread = std::thread::Builder::new()
            .name("lease-journal".into())
            .spawn(move || writer(journal, live, rx, delay, lazy))
            // Without the thread every commit fails with `Stopped`: no ACK goes out unrecorded.
            .map_err(|e| warn!(error = %e, "cannot start the lease journal thread"))
            .ok();
        Committer {
            tx,
            thread: Arc::new(Mutex::new(thread)),
            in_flight: Arc::new(AtomicUsize::new(0)),
            bounds,
        }
    }

    fn permit(&self, n: usize) -> Result<Permit, JournalError> {
        Permit::take(&self.in_flight, n, self.bounds.max_in_flight)
            .ok_or(JournalError::QueueFull(self.bounds.max_in_flight))
    }

    /// Makes `record` durable; resolves once it is fsync'd (or with the error). Refused at
    /// once when `max_in_flight` records wait already; gives up after `timeout` (the record
    /// may still be written later: the caller only must not claim it durable).
    pub async fn commit(&self, record: R) -> Result<(), JournalError> {
        let wait = self.submit(record)?;
        match tokio::time::timeout(self.bounds.timeout, wait).await {
            Ok(answer) => answer.map_err(|_| JournalError::Stopped)?,
            Err(_) => Err(JournalError::Timeout(self.bounds.timeout)),
        }
    }

    /// Makes all of `records` durable, in their order; they are queued together, so one
    /// batch's fdatasync usually covers them all. The first failure is the answer.
    pub async fn commit_all(&self, records: Vec<R>) -> Result<(), JournalError> {
        let waits = records
            .into_iter()
            .map(|r| self.submit(r))
            .collect::<Result<Vec<_>, _>>()?;
        let deadline = tokio::time::Instant::now() + self.bounds.timeout;
        for wait in waits {
            match tokio::time::timeout_at(deadline, wait).await {
                Ok(answer) => answer.map_err(|_| JournalError::Stopped)??,
                Err(_) => return Err(JournalError::Timeout(self.bounds.timeout)),
            }
        }
        Ok(())
    }

    /// Queues `record` under a permit; the receiver gets the writer's answer.
    fn submit(
        &self,
        record: R,
    ) -> Result<tokio::sync::oneshot::Receiver<Result<(), JournalError>>, JournalError> {
        let permit = self.permit(1)?;
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Commit(record, done, permit))
            .map_err(|_| JournalError::Stopped)?;
        Ok(wait)
    }

    /// Records `records` without waiting for them: they are written and synced with the next
    /// batch, within [`LAZY_WINDOW`]. For leases whose ACK has already left (the XDP fast
    /// path's). They count against `max_in_flight` like commits.
    pub fn record(&self, records: Vec<R>) -> Result<(), JournalError> {
        let permit = self.permit(records.len())?;
        self.tx
            .send(Job::Record(records, permit))
            .map_err(|_| JournalError::Stopped)
    }

    /// Records queued or being written now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Stops the writer after it has flushed what was submitted (dropping every handle
    /// does the same), and waits for it: this blocks for up to one batch's fdatasync.
    /// Commits through other handles afterwards fail with [`JournalError::Stopped`].
    pub fn shutdown(self) {
        let _ = self.tx.send(Job::Stop);
        let handle = self
            .thread
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            if h.join().is_err() {
                warn!("the lease journal thread panicked");
            }
        }
    }

    /// Test hook: the writer stops taking jobs until the returned sender is dropped or
    /// sent to, so tests can queue many commits deterministically.
    #[cfg(test)]
    fn pause(&self) -> mpsc::Sender<()> {
        let (tx, rx) = mpsc::channel();
        let _ = self.tx.send(Job::Pause(rx));
        tx
    }
}

fn writer<R: Record>(
    mut journal: Journal<R>,
    mut live: HashMap<R::Key, R>,
    rx: mpsc::Receiver<Job<R>>,
    delay: std::time::Duration,
    lazy: std::time::Duration,
) {
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        let mut batch: Vec<(R, Option<Waiter>)> = Vec::new();
        // Released once the batch is answered: until then its records hold their room.
        let mut permits: Vec<Permit> = Vec::new();
        // A batch of lazy records waits longer; the first record someone waits for brings
        // the deadline back to `delay` from its arrival.
        let now = std::time::Instant::now();
        let mut deadline = if matches!(first, Job::Record(..)) {
            now + lazy
        } else {
            now + delay
        };
        let mut job = Some(first);
        let next = |rx: &mpsc::Receiver<Job<R>>, deadline: std::time::Instant| {
            rx.try_recv().ok().or_else(|| {
                let left = deadline.checked_duration_since(std::time::Instant::now())?;
                rx.recv_timeout(left).ok()
            })
        };
        while let Some(j) = job.take().or_else(|| next(&rx, deadline)) {
            match j {
                Job::Commit(r, w, p) => {
                    deadline = deadline.min(std::time::Instant::now() + delay);
                    batch.push((r, Some(w)));
                    permits.push(p);
                }
                Job::Record(rs, p) => {
                    batch.extend(rs.into_iter().map(|r| (r, None)));
                    permits.push(p);
                }
                Job::Stop => {
                    stop = true;
                    break;
                }
                #[cfg(test)]
                Job::Pause(gate) => {
                    let _ = gate.recv();
                }
                #[cfg(test)]
                Job::Syncs(reply) => {
                    let _ = reply.send(journal.syncs());
                }
            }
        }
        let records: Vec<R> = batch.iter().map(|(r, _)| r.clone()).collect();
        let result = journal.append(&records);
        if result.is_ok() {
            let now = super::unix_now();
            for r in records {
                // A record that frees its key (a release, an expired binding) ends it.
                if r.is_dead(now) {
                    live.remove(&r.key());
                } else {
                    live.insert(r.key(), r);
                }
            }
            if journal.len() > (4 * live.len()).max(10_000) {
                let snapshot = sorted(live.clone());
                if let Err(e) = journal.compact(&snapshot) {
                    warn!(error = %e, "lease journal compaction failed; still appending (see Journal::compact)");
                }
            }
        }
        if let Err(e) = &result {
            if batch.iter().any(|(_, w)| w.is_none()) {
                warn!(error = %e, "lease records of kernel-answered exchanges not written");
            }
        }
        for (_, w) in batch {
            if let Some(w) = w {
                let _ = w.send(result.clone());
            }
        }
        drop(permits);
    }
    // Every record taken from the queue has been written above; jobs still queued after a
    // `Stop` are dropped with `rx`, so their callers see `Stopped`, not a false success.
    let _ = journal.file.sync_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    // The IPv4 journal, which these tests exercise (the mechanics are shared).
    type Journal = super::Journal<LeaseRecord>;
    type Committer = super::Committer<LeaseRecord>;

    fn read_live(p: &Path) -> Result<Vec<LeaseRecord>, JournalError> {
        super::read_live::<LeaseRecord>(p)
    }

    fn repair(p: &Path, now: u64) -> Result<Repair, JournalError> {
        super::repair::<LeaseRecord>(p, now)
    }

    fn rec(ip: u8, mac: u8, state: LeaseState, expires: u64) -> LeaseRecord {
        LeaseRecord {
            ip: Ipv4Addr::new(10, 0, 0, ip),
            mac: Mac([2, 0, 0, 0, 0, mac]),
            state,
            expires,
            hostname: Some(format!("h{mac}")),
        }
    }

    fn tmp() -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let p = d.path().join("state/leases.journal");
        (d, p)
    }

    #[test]
    fn round_trip_keeps_the_last_record_per_address() {
        let (_d, p) = tmp();
        let (mut j, live) = Journal::open(&p).expect("open");
        assert!(live.is_empty());
        j.append(&[
            rec(1, 1, LeaseState::Bound, 100),
            rec(2, 2, LeaseState::Bound, 100),
        ])
        .expect("append");
        j.append(&[
            rec(1, 1, LeaseState::Released, 0),
            rec(3, 3, LeaseState::Declined, 50),
        ])
        .expect("append");
        drop(j);
        let (j, live) = Journal::open(&p).expect("reopen");
        assert_eq!(j.len(), 4);
        assert_eq!(
            live,
            vec![
                rec(1, 1, LeaseState::Released, 0),
                rec(2, 2, LeaseState::Bound, 100),
                rec(3, 3, LeaseState::Declined, 50)
            ]
        );
    }

    #[test]
    fn torn_tails_are_cut_and_appends_continue() {
        for damage in [
            &b"1234"[..],
            b"deadbeef B 10.0.0.9 02:00:00:00:00:09 5 -",
            b"\xff\xfe",
            b"\0\0\0\0",
        ] {
            let (_d, p) = tmp();
            let (mut j, _) = Journal::open(&p).expect("open");
            j.append(&[
                rec(1, 1, LeaseState::Bound, 100),
                rec(2, 2, LeaseState::Bound, 100),
            ])
            .expect("append");
            drop(j);
            let good = std::fs::metadata(&p).expect("meta").len();
            OpenOptions::new()
                .append(true)
                .open(&p)
                .and_then(|mut f| f.write_all(damage))
                .expect("damage");
            let (mut j, live) = Journal::open(&p).expect("reopen");
            assert_eq!(live.len(), 2, "{damage:?}");
            assert_eq!(std::fs::metadata(&p).expect("meta").len(), good);
            j.append(&[rec(3, 3, LeaseState::Bound, 100)])
                .expect("append after repair");
            drop(j);
            assert_eq!(Journal::open(&p).expect("reopen").1.len(), 3);
        }
    }

    /// A journal of three records (lines 2 to 4 after the header) and its bytes.
    fn three(p: &Path) -> Vec<u8> {
        let (mut j, _) = Journal::open(p).expect("open");
        j.append(&[
            rec(1, 1, LeaseState::Bound, 100),
            rec(2, 2, LeaseState::Bound, 100),
            rec(3, 3, LeaseState::Bound, 100),
        ])
        .expect("append");
        drop(j);
        std::fs::read(p).expect("read")
    }

    /// Byte offset of line `n` (from 1).
    fn line_offset(bytes: &[u8], n: usize) -> usize {
        bytes
            .split_inclusive(|b| *b == b'\n')
            .take(n - 1)
            .map(<[u8]>::len)
            .sum()
    }

    #[test]
    fn a_damaged_complete_line_refuses_open_with_line_and_offset() {
        // (line, byte within it to damage, replacement, expected reason)
        for (line, at, with, reason) in [
            (3, 12, None, "checksum mismatch"),
            (4, 12, None, "checksum mismatch"),
            (3, 0, Some(b'#'), "a comment after the first record"),
            (2, 3, Some(0xff), "not UTF-8"),
            (3, 4, Some(b'x'), "checksum is not eight hexadecimal digits"),
            // `from_str_radix` alone would read `+` as a sign and replay the line.
            (4, 0, Some(b'+'), "checksum is not eight hexadecimal digits"),
        ] {
            let (_d, p) = tmp();
            let mut bytes = three(&p);
            let off = line_offset(&bytes, line);
            match with {
                Some(b) => bytes[off + at] = b,
                None => bytes[off + at] ^= 0x01,
            }
            std::fs::write(&p, &bytes).expect("write");
            match Journal::open(&p) {
                Err(JournalError::Corrupt {
                    line: l,
                    offset,
                    reason: r,
                    ..
                }) => {
                    assert_eq!((l, offset, r), (line, off as u64, reason));
                }
                Err(e) => panic!("line {line}: {e}"),
                Ok(_) => panic!("line {line}: a damaged journal was opened"),
            }
            // Nothing was cut, and the listing refuses too rather than show a short list.
            assert_eq!(std::fs::read(&p).expect("read"), bytes);
            assert!(matches!(read_live(&p), Err(JournalError::Corrupt { .. })));
        }
        let (_d, p) = tmp();
        let mut bytes = three(&p);
        let off = line_offset(&bytes, 3);
        bytes[off + 12] ^= 0x01;
        std::fs::write(&p, &bytes).expect("write");
        let msg = Journal::open(&p).err().expect("refused").to_string();
        assert!(
            msg.contains(&format!(
                "leases.journal:3: corrupt lease record at byte offset {off}"
            )) && msg.contains("bootfabric leases repair"),
            "{msg}"
        );
    }

    #[test]
    fn repair_keeps_a_copy_drops_only_bad_lines_and_the_rest_opens() {
        let (d, p) = tmp();
        let mut bytes = three(&p);
        let off = line_offset(&bytes, 3);
        bytes[off + 12] ^= 0x01;
        // ... and a torn last line after the damage.
        bytes.extend_from_slice(b"0123");
        std::fs::write(&p, &bytes).expect("write");
        let r = repair(&p, 1_700_000_000).expect("repair");
        assert_eq!(r.kept, 2);
        assert_eq!(
            r.dropped
                .iter()
                .map(|x| (x.line, x.offset))
                .collect::<Vec<_>>(),
            vec![(3, off as u64), (5, (bytes.len() - 4) as u64)]
        );
        assert_eq!(r.dropped[0].reason, "checksum mismatch");
        assert!(
            r.dropped[0].text.contains("02:00:00:00:00:02"),
            "{:?}",
            r.dropped
        );
        let copy = r.copy.expect("a copy");
        assert_eq!(
            copy,
            d.path().join("state/leases.journal.corrupt-1700000000")
        );
        assert_eq!(std::fs::read(&copy).expect("copy"), bytes);
        let (_, live) = Journal::open(&p).expect("repaired journal opens");
        assert_eq!(
            live,
            vec![
                rec(1, 1, LeaseState::Bound, 100),
                rec(3, 3, LeaseState::Bound, 100)
            ]
        );
        // A sound journal is left alone; a second copy of the same second gets its own name.
        let again = repair(&p, 1_700_000_000).expect("repair");
        assert!(again.dropped.is_empty() && again.copy.is_none());
        std::fs::write(&p, &bytes).expect("write");
        let third = repair(&p, 1_700_000_000).expect("repair");
        assert_eq!(
            third.copy,
            Some(d.path().join("state/leases.journal.corrupt-1700000000.1"))
        );
    }

    #[test]
    fn a_journal_in_use_is_neither_opened_twice_nor_repaired() {
        let (_d, p) = tmp();
        let (j, _) = Journal::open(&p).expect("open");
        assert!(matches!(
            Journal::open(&p),
            Err(JournalError::Locked { .. })
        ));
        assert!(matches!(repair(&p, 1), Err(JournalError::Locked { .. })));
        // The lock follows the file through a compaction.
        let mut j = j;
        j.compact(&[rec(1, 1, LeaseState::Bound, 1)])
            .expect("compact");
        assert!(matches!(
            Journal::open(&p),
            Err(JournalError::Locked { .. })
        ));
        drop(j);
        assert!(Journal::open(&p).is_ok());
    }

    #[test]
    fn compaction_shrinks_and_keeps_the_live_set() {
        let (_d, p) = tmp();
        let (mut j, _) = Journal::open(&p).expect("open");
        for i in 0..500u64 {
            j.append(&[rec((i % 5) as u8, 1, LeaseState::Bound, i)])
                .expect("append");
        }
        let before = std::fs::metadata(&p).expect("meta").len();
        drop(j);
        let (mut j, live) = Journal::open(&p).expect("reopen");
        j.compact(&live).expect("compact");
        assert_eq!(j.len(), 5);
        assert!(std::fs::metadata(&p).expect("meta").len() < before / 50);
        j.append(&[rec(9, 9, LeaseState::Bound, 1)])
            .expect("append");
        drop(j);
        let (_, again) = Journal::open(&p).expect("reopen");
        assert_eq!(again.len(), 6);
        assert_eq!(&again[..5], &live[..]);
    }

    #[test]
    fn a_failed_write_is_cut_so_later_appends_survive() {
        let (_d, p) = tmp();
        let (mut j, _) = Journal::open(&p).expect("open");
        j.append(&[rec(1, 1, LeaseState::Bound, 100)])
            .expect("append");
        let good = std::fs::metadata(&p).expect("meta").len();
        // A short write (ENOSPC, EIO) leaves half a line behind.
        j.fail_write_after = Some(10);
        assert!(j.append(&[rec(2, 2, LeaseState::Bound, 100)]).is_err());
        assert_eq!(std::fs::metadata(&p).expect("meta").len(), good);
        assert_eq!(j.len(), 1);
        // Were the half line kept, this record would follow a torn line and the next open
        // would cut it although it was reported durable.
        j.append(&[rec(3, 3, LeaseState::Bound, 100)])
            .expect("append after a failure");
        drop(j);
        let (j, live) = Journal::open(&p).expect("reopen");
        assert_eq!(j.len(), 2);
        assert_eq!(
            live,
            vec![
                rec(1, 1, LeaseState::Bound, 100),
                rec(3, 3, LeaseState::Bound, 100)
            ]
        );
    }

    #[test]
    fn compaction_uses_path_dot_tmp_and_survives_a_stale_one() {
        let (_d, p) = tmp();
        let (mut j, _) = Journal::open(&p).expect("open");
        j.append(&[
            rec(1, 1, LeaseState::Bound, 1),
            rec(1, 1, LeaseState::Bound, 2),
        ])
        .expect("append");
        let tmp = p.with_file_name("leases.journal.tmp");
        std::fs::write(&tmp, "left by a crash mid-compaction").expect("stale");
        j.compact(&[rec(1, 1, LeaseState::Bound, 2)])
            .expect("compact");
        assert!(!tmp.exists());
        j.append(&[rec(2, 2, LeaseState::Bound, 3)])
            .expect("append");
        drop(j);
        let (j, live) = Journal::open(&p).expect("reopen");
        assert_eq!(j.len(), 2);
        assert_eq!(
            live,
            vec![
                rec(1, 1, LeaseState::Bound, 2),
                rec(2, 2, LeaseState::Bound, 3)
            ]
        );
    }

    #[test]
    fn read_live_leaves_a_torn_file_alone() {
        let (_d, p) = tmp();
        let (mut j, _) = Journal::open(&p).expect("open");
        j.append(&[rec(1, 1, LeaseState::Bound, 100)])
            .expect("append");
        drop(j);
        OpenOptions::new()
            .append(true)
            .open(&p)
            .and_then(|mut f| f.write_all(b"torn"))
            .expect("damage");
        let len = std::fs::metadata(&p).expect("meta").len();
        assert_eq!(read_live(&p).expect("read").len(), 1);
        assert_eq!(std::fs::metadata(&p).expect("meta").len(), len);
        assert!(read_live(&p.with_extension("missing"))
            .expect("missing is empty")
            .is_empty());
    }

    #[test]
    fn hostnames_are_sanitized() {
        assert_eq!(sanitize("node-01.rack1"), Some("node-01.rack1".to_owned()));
        for bad in ["", "a b", "x\n1 B 10.0.0.1", &"a".repeat(64), "é"] {
            assert_eq!(sanitize(bad), None, "{bad:?}");
        }
        let r = LeaseRecord {
            hostname: Some("evil\nline".into()),
            ..rec(1, 1, LeaseState::Bound, 1)
        };
        let line = encode(&r);
        assert_eq!(line.matches('\n').count(), 1);
        assert_eq!(
            decode::<LeaseRecord>(line.trim_end())
                .ok()
                .and_then(|r| r.hostname),
            None
        );
    }

    fn numbered(i: u32) -> LeaseRecord {
        let b = i.to_be_bytes();
        LeaseRecord {
            ip: Ipv4Addr::new(10, 1, b[2], b[3]),
            mac: Mac([2, 0, 0, 0, b[2], b[3]]),
            state: LeaseState::Bound,
            expires: 99,
            hostname: None,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_are_all_durable() {
        let (_d, p) = tmp();
        let (j, live) = Journal::open(&p).expect("open");
        let c = Committer::start(j, &live, std::time::Duration::ZERO, CommitBounds::default());
        let tasks: Vec<_> = (0..200u32)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.commit(numbered(i)).await })
            })
            .collect();
        for t in tasks {
            t.await.expect("task").expect("durable");
        }
        // Every commit has resolved: the records are on disk without a clean shutdown.
        let live = read_live(&p).expect("read");
        assert_eq!(live.len(), 200);
        c.shutdown();
        let (j, live) = Journal::open(&p).expect("reopen");
        assert_eq!(j.len(), 200);
        assert_eq!(live, (0..200).map(numbered).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn shutdown_flushes_and_stops_every_handle() {
        let (_d, p) = tmp();
        let (j, live) = Journal::open(&p).expect("open");
        let c = Committer::start(j, &live, std::time::Duration::ZERO, CommitBounds::default());
        let other = c.clone();
        c.commit(numbered(1)).await.expect("durable");
        c.shutdown();
        assert!(matches!(
            other.commit(numbered(2)).await,
            Err(JournalError::Stopped)
        ));
        assert_eq!(Journal::open(&p).expect("reopen").1, vec![numbered(1)]);
    }

    #[tokio::test]
    async fn dhcpv6_releases_and_expired_bindings_leave_the_journal_at_compaction() {
        use crate::services::dhcp::v6::table::Lease6Record;
        let (_d, p) = tmp();
        let (j, live) = super::Journal::<Lease6Record>::open(&p).expect("open");
        let c =
            super::Committer::start(j, &live, std::time::Duration::ZERO, CommitBounds::default());
        let far = super::super::unix_now() + 3600;
        let rec6 = |i: u32, state: LeaseState, expires: u64| Lease6Record {
            ip: std::net::Ipv6Addr::from(
                0x2001_0db8_0000_0000_0000_0000_0001_0000u128 + u128::from(i),
            ),
            duid: vec![0, 3, 0, 1, 2, 0, 0, 0, (i >> 8) as u8, i as u8],
            iaid: 1,
            mac: None,
            state,
            expires,
        };
        // 15,000 clients bind a fresh address each and release it: 30,000 records, each
        // address new, none live at the end. Kept, the releases alone would be 15,000 lines
        // after the last compaction; dropped, the file stays within the compaction bound.
        let mut batch = Vec::new();
        for i in 0..15_000 {
            batch.push(rec6(i, LeaseState::Bound, far));
            batch.push(rec6(i, LeaseState::Released, 0));
        }
        batch.push(rec6(17_000, LeaseState::Bound, 1));
        for chunk in batch.chunks(2_000) {
            c.commit_all(chunk.to_vec()).await.expect("durable");
        }
        c.commit(rec6(19_000, LeaseState::Bound, far))
            .await
            .expect("durable");
        c.shutdown();
        let (j, live) = super::Journal::<Lease6Record>::open(&p).expect("reopen");
        assert!(live.contains(&rec6(19_000, LeaseState::Bound, far)));
        assert!(
            j.len() <= 12_000,
            "{} records: the releases were kept through compactions",
            j.len()
        );
    }

    #[tokio::test]
    async fn the_committer_compacts_a_long_journal() {
        let (_d, p) = tmp();
        let (mut j, _) = Journal::open(&p).expect("open");
        let churn: Vec<LeaseRecord> = (0..10_000u64)
            .map(|i| rec(1, 1, LeaseState::Bound, i))
            .collect();
        j.append(&churn).expect("append");
        drop(j);
        let (j, live) = Journal::open(&p).expect("reopen");
        assert_eq!(j.len(), 10_000);
        let c = Committer::start(j, &live, std::time::Duration::ZERO, CommitBounds::default());
        c.commit(rec(2, 2, LeaseState::Bound, 7))
            .await
            .expect("durable");
        c.shutdown();
        let (j, live) = Journal::open(&p).expect("reopen");
        assert_eq!(j.len(), 2);
        assert_eq!(
            live,
            vec![
                rec(1, 1, LeaseState::Bound, 9_999),
                rec(2, 2, LeaseState::Bound, 7)
            ]
        );
    }

    #[tokio::test]
    async fn commits_queued_during_a_flush_share_one_fdatasync() {
        let (_d, p) = tmp();
        let (j, live) = Journal::open(&p).expect("open");
        let c = Committer::start(j, &live, std::time::Duration::ZERO, CommitBounds::default());
        // Hold the writer, as a running fdatasync would, while 200 commits queue up.
        let gate = c.pause();
        let waits: Vec<_> = (0..200u32)
            .map(|i| c.submit(numbered(i)).expect("queue"))
            .collect();
        drop(gate);
        for w in waits {
            w.await.expect("answer").expect("durable");
        }
        let (tx, rx) = mpsc::channel();
        c.tx.send(Job::Syncs(tx)).expect("ask");
        assert_eq!(rx.recv().expect("syncs"), 1);
        let mut raw = String::new();
        File::open(&p)
            .and_then(|mut f| f.read_to_string(&mut raw))
            .expect("read");
        assert_eq!(raw.lines().filter(|l| !l.starts_with('#')).count(), 200);
    }

    #[tokio::test]
    async fn lazy_records_ride_with_the_next_commit_and_survive_shutdown() {
        let (_d, p) = tmp();
        let (j, live) = Journal::open(&p).expect("open");
        // A lazy window of an hour: a commit that waited it out would not resolve within
        // the test's bound, so no clock reading decides the outcome.
        let lazy = std::time::Duration::from_secs(3600);
        let c = Committer::start_with_lazy_window(
            j,
            &live,
            std::time::Duration::from_millis(5),
            lazy,
            CommitBounds {
                timeout: lazy,
                ..CommitBounds::default()
            },
        );
        let gate = c.pause();
        c.record(vec![numbered(1), numbered(2)]).expect("record");
        drop(gate);
        // A commit someone waits for does not wait out the lazy window, and takes the
        // lazy records along in the same write and fdatasync.
        tokio::time::timeout(std::time::Duration::from_secs(60), c.commit(numbered(3)))
            .await
            .expect("the commit waited for the lazy window")
            .expect("durable");
        let (tx, rx) = mpsc::channel();
        c.tx.send(Job::Syncs(tx)).expect("ask");
        assert_eq!(rx.recv().expect("syncs"), 1);
        c.record(vec![numbered(4)]).expect("record");
        c.shutdown();
        let live = read_live(&p).expect("read");
        let ips: Vec<Ipv4Addr> = live.iter().map(|r| r.ip).collect();
        for i in 1..=4 {
            assert!(ips.contains(&numbered(i).ip), "record {i} missing: {ips:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_hung_fdatasync_refuses_commits_beyond_the_bound_and_times_out() {
        use std::time::Duration;
        let (_d, p) = tmp();
        let (mut j, live) = Journal::open(&p).expect("open");
        let (release, gate) = mpsc::channel();
        j.stall_sync = Some(gate);
        let bounds = CommitBounds {
            max_in_flight: 8,
            timeout: Duration::from_millis(300),
        };
        let c = Committer::start(j, &live, Duration::ZERO, bounds);
        let waiting: Vec<_> = (0..8u32)
            .map(|i| {
                let c = c.clone();
                tokio::spawn(async move { c.commit(numbered(i)).await })
            })
            .collect();
        tokio::time::timeout(Duration::from_secs(30), async {
            while c.in_flight() < 8 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("8 commits in flight");
        // The disk hangs: the ninth commit and lazy records are refused at once.
        assert!(matches!(
            c.commit(numbered(100)).await,
            Err(JournalError::QueueFull(8))
        ));
        assert!(matches!(
            c.record(vec![numbered(101)]),
            Err(JournalError::QueueFull(8))
        ));
        // The eight give up after the timeout: no ACK goes out for them.
        for w in waiting {
            assert!(matches!(
                w.await.expect("task"),
                Err(JournalError::Timeout(t)) if t == bounds.timeout
            ));
        }
        // Their records still hold their room (they are queued or being written), so what
        // the hang costs stays bounded however long it lasts.
        assert_eq!(c.in_flight(), 8);
        assert!(matches!(
            c.commit(numbered(102)).await,
            Err(JournalError::QueueFull(8))
        ));
        // The disk comes back: the room frees and commits are durable again.
        drop(release);
        tokio::time::timeout(Duration::from_secs(30), async {
            while c.in_flight() > 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the queue drains once the disk answers");
        c.commit(numbered(200))
            .await
            .expect("durable after the hang");
        let ips: Vec<Ipv4Addr> = read_live(&p).expect("read").iter().map(|r| r.ip).collect();
        assert!(
            ips.contains(&numbered(200).ip) && ips.contains(&numbered(7).ip),
            "{ips:?}"
        );
        assert!(!ips.contains(&numbered(100).ip) && !ips.contains(&numbered(102).ip));
        c.shutdown();
    }
}
