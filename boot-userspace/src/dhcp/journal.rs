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
//! last record per address wins. A crash can leave a torn last line (no newline, bad CRC,
//! unparsable): [`Journal::open`] cuts the file back to the end of the last good line, so
//! everything that was durable before the crash is kept and nothing half-written is trusted.

use std::{
    collections::HashMap,
    fs::{File, OpenOptions},
    io::{BufRead, BufReader, Write},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::{mpsc, Arc, Mutex},
};

use tracing::warn;

use crate::inventory::Mac;

const HEADER: &str = "# bootfabric leases v1\n";

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

fn encode(r: &LeaseRecord) -> String {
    let state = match r.state {
        LeaseState::Bound => 'B',
        LeaseState::Released => 'R',
        LeaseState::Declined => 'D',
    };
    let host = r
        .hostname
        .as_deref()
        .and_then(sanitize)
        .unwrap_or_else(|| "-".to_owned());
    let body = format!("{state} {} {} {} {host}", r.ip, r.mac, r.expires);
    format!("{:08x} {body}\n", crc32fast::hash(body.as_bytes()))
}

/// Parses one complete line (without its newline).
fn decode(line: &str) -> Option<LeaseRecord> {
    let (crc, body) = line.split_once(' ')?;
    // Eight hex digits exactly: `from_str_radix` alone also takes a sign, so a checksum field
    // with a corrupted first byte (`0` turned `+`) passed (found by fuzz/journal_replay).
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes())
        || crc.len() != 8
        || !crc.bytes().all(|b| b.is_ascii_hexdigit())
    {
        return None;
    }
    let f: Vec<&str> = body.split(' ').collect();
    let [state, ip, mac, expires, host] = f.as_slice() else {
        return None;
    };
    let state = match *state {
        "B" => LeaseState::Bound,
        "R" => LeaseState::Released,
        "D" => LeaseState::Declined,
        _ => return None,
    };
    Some(LeaseRecord {
        ip: ip.parse().ok()?,
        mac: mac.parse().ok()?,
        state,
        expires: expires.parse().ok()?,
        hostname: (*host != "-").then(|| (*host).to_owned()),
    })
}

/// Result of scanning a journal: the live set, the record count and where good data ends.
struct Scan {
    live: HashMap<Ipv4Addr, LeaseRecord>,
    records: usize,
    good_len: u64,
    torn: bool,
}

fn scan(path: &Path, file: &File) -> Result<Scan, JournalError> {
    let mut reader = BufReader::new(file);
    let mut live = HashMap::new();
    let (mut records, mut good_len, mut torn) = (0, 0u64, false);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader
            .read_until(b'\n', &mut line)
            .map_err(io_err(path, "read"))?;
        if n == 0 {
            break;
        }
        let complete = line.last() == Some(&b'\n');
        let text = std::str::from_utf8(&line)
            .ok()
            .map(|t| t.trim_end_matches('\n'));
        match text {
            Some(t) if complete && t.starts_with('#') => {}
            Some(t) if complete && !t.is_empty() => match decode(t) {
                Some(r) => {
                    records += 1;
                    live.insert(r.ip, r);
                }
                None => {
                    torn = true;
                    break;
                }
            },
            Some("") if complete => {}
            _ => {
                torn = true;
                break;
            }
        }
        good_len += n as u64;
    }
    Ok(Scan {
        live,
        records,
        good_len,
        torn,
    })
}

fn sorted(live: HashMap<Ipv4Addr, LeaseRecord>) -> Vec<LeaseRecord> {
    let mut v: Vec<LeaseRecord> = live.into_values().collect();
    v.sort_by_key(|r| r.ip);
    v
}

/// The open journal file.
pub struct Journal {
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
}

impl Journal {
    /// Opens (creating if missing, with parent dirs) the journal at `path`, replays it, and
    /// returns the live records: the last record per address, in address order. A torn or
    /// corrupt tail is cut off (and logged); the records before it are kept.
    pub fn open(path: &Path) -> Result<(Journal, Vec<LeaseRecord>), JournalError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io_err(dir, "create folder"))?;
        }
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(path)
            .map_err(io_err(path, "open"))?;
        let s = scan(path, &file)?;
        if s.torn {
            warn!(journal = %path.display(), kept = s.records, "lease journal has a torn or corrupt tail: cut back to the last complete record");
            file.set_len(s.good_len).map_err(io_err(path, "truncate"))?;
            file.sync_all().map_err(io_err(path, "fsync"))?;
        }
        let mut len = s.good_len;
        if len == 0 {
            file.write_all(HEADER.as_bytes())
                .map_err(io_err(path, "write"))?;
            file.sync_all().map_err(io_err(path, "fsync"))?;
            // A new file's directory entry must be durable too.
            sync_dir(path)?;
            len = HEADER.len() as u64;
        }
        let journal = Journal {
            path: path.to_owned(),
            file,
            records: s.records,
            syncs: 0,
            len,
            tail_dirty: false,
            dir_dirty: false,
            #[cfg(test)]
            fail_write_after: None,
        };
        Ok((journal, sorted(s.live)))
    }

    /// Appends the records and makes them durable (one write, one fdatasync).
    ///
    /// On error none of the records may be relied on, and the file is cut back to the
    /// records before them (now, or before the next append if that fails too).
    pub fn append(&mut self, records: &[LeaseRecord]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        self.repair_tail()?;
        let buf: String = records.iter().map(encode).collect();
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
    pub fn compact(&mut self, live: &[LeaseRecord]) -> Result<(), JournalError> {
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
        let mut buf = String::from(HEADER);
        buf.extend(live.iter().map(encode));
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

fn sync_dir(path: &Path) -> Result<(), JournalError> {
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err(dir, "fsync folder"))
}

/// Reads the live records without modifying the file; a torn tail is ignored.
pub fn read_live(path: &Path) -> Result<Vec<LeaseRecord>, JournalError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io_err(path, "open")(e)),
    };
    Ok(sorted(scan(path, &file)?.live))
}

type Waiter = tokio::sync::oneshot::Sender<Result<(), JournalError>>;

/// How long a batch of records nobody waits for gathers more before it is written: the XDP
/// fast path's ACKs left before their records could be written anyway, so one fdatasync a
/// second covers them all during a boot storm.
pub const LAZY_WINDOW: std::time::Duration = std::time::Duration::from_secs(1);

enum Job {
    Commit(LeaseRecord, Waiter),
    /// Records without waiting: written with the next batch, which waits up to
    /// [`LAZY_WINDOW`] for company when it holds nothing but these.
    Record(Vec<LeaseRecord>),
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
#[derive(Clone)]
pub struct Committer {
    tx: mpsc::Sender<Job>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Committer {
    /// Starts the writer thread over `journal`, whose live records are `live`.
    ///
    /// `delay` is how long the writer keeps gathering records after the first of a batch
    /// before it writes and syncs them (zero: write at once). A few milliseconds cost a DHCP
    /// client nothing and let one fdatasync cover many ACKs even at modest rates.
    pub fn start(journal: Journal, live: &[LeaseRecord], delay: std::time::Duration) -> Committer {
        let (tx, rx) = mpsc::channel();
        let live: HashMap<Ipv4Addr, LeaseRecord> = live.iter().map(|r| (r.ip, r.clone())).collect();
        let thread = std::thread::Builder::new()
            .name("lease-journal".into())
            .spawn(move || writer(journal, live, rx, delay))
            // Without the thread every commit fails with `Stopped`: no ACK goes out unrecorded.
            .map_err(|e| warn!(error = %e, "cannot start the lease journal thread"))
            .ok();
        Committer {
            tx,
            thread: Arc::new(Mutex::new(thread)),
        }
    }

    /// Makes `record` durable; resolves once it is fsync'd (or with the error).
    pub async fn commit(&self, record: LeaseRecord) -> Result<(), JournalError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Commit(record, done))
            .map_err(|_| JournalError::Stopped)?;
        wait.await.map_err(|_| JournalError::Stopped)?
    }

    /// Records `records` without waiting for them: they are written and synced with the next
    /// batch, within [`LAZY_WINDOW`]. For leases whose ACK has already left (the XDP fast
    /// path's).
    pub fn record(&self, records: Vec<LeaseRecord>) -> Result<(), JournalError> {
        self.tx
            .send(Job::Record(records))
            .map_err(|_| JournalError::Stopped)
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

fn writer(
    mut journal: Journal,
    mut live: HashMap<Ipv4Addr, LeaseRecord>,
    rx: mpsc::Receiver<Job>,
    delay: std::time::Duration,
) {
    let mut stop = false;
    while !stop {
        let Ok(first) = rx.recv() else { break };
        let mut batch: Vec<(LeaseRecord, Option<Waiter>)> = Vec::new();
        // A batch of lazy records waits longer; the first record someone waits for brings
        // the deadline back to `delay` from its arrival.
        let now = std::time::Instant::now();
        let mut deadline = if matches!(first, Job::Record(_)) {
            now + LAZY_WINDOW
        } else {
            now + delay
        };
        let mut job = Some(first);
        let next = |rx: &mpsc::Receiver<Job>, deadline: std::time::Instant| {
            rx.try_recv().ok().or_else(|| {
                let left = deadline.checked_duration_since(std::time::Instant::now())?;
                rx.recv_timeout(left).ok()
            })
        };
        while let Some(j) = job.take().or_else(|| next(&rx, deadline)) {
            match j {
                Job::Commit(r, w) => {
                    deadline = deadline.min(std::time::Instant::now() + delay);
                    batch.push((r, Some(w)));
                }
                Job::Record(rs) => batch.extend(rs.into_iter().map(|r| (r, None))),
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
        let records: Vec<LeaseRecord> = batch.iter().map(|(r, _)| r.clone()).collect();
        let result = journal.append(&records);
        if result.is_ok() {
            for r in records {
                live.insert(r.ip, r);
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
    }
    // Every record taken from the queue has been written above; jobs still queued after a
    // `Stop` are dropped with `rx`, so their callers see `Stopped`, not a false success.
    let _ = journal.file.sync_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
            b"\xff\xfe\n",
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

    #[test]
    fn a_flipped_byte_in_the_last_line_drops_only_that_line() {
        let (_d, p) = tmp();
        let (mut j, _) = Journal::open(&p).expect("open");
        j.append(&[
            rec(1, 1, LeaseState::Bound, 100),
            rec(2, 2, LeaseState::Bound, 100),
        ])
        .expect("append");
        drop(j);
        let mut bytes = std::fs::read(&p).expect("read");
        let n = bytes.len();
        bytes[n - 3] ^= 0x01;
        std::fs::write(&p, &bytes).expect("write");
        let (_, live) = Journal::open(&p).expect("reopen");
        assert_eq!(live, vec![rec(1, 1, LeaseState::Bound, 100)]);
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
        assert_eq!(decode(line.trim_end()).and_then(|r| r.hostname), None);
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
        let c = Committer::start(j, &live, std::time::Duration::ZERO);
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
        let c = Committer::start(j, &live, std::time::Duration::ZERO);
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
        let c = Committer::start(j, &live, std::time::Duration::ZERO);
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
        let c = Committer::start(j, &live, std::time::Duration::ZERO);
        // Hold the writer, as a running fdatasync would, while 200 commits queue up.
        let gate = c.pause();
        let waits: Vec<_> = (0..200u32)
            .map(|i| {
                let (done, wait) = tokio::sync::oneshot::channel();
                c.tx.send(Job::Commit(numbered(i), done)).expect("queue");
                wait
            })
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
        let c = Committer::start(j, &live, std::time::Duration::from_millis(5));
        let gate = c.pause();
        c.record(vec![numbered(1), numbered(2)]).expect("record");
        drop(gate);
        // A commit someone waits for does not wait out the lazy window, and takes the
        // lazy records along in the same write and fdatasync.
        let t0 = std::time::Instant::now();
        c.commit(numbered(3)).await.expect("durable");
        assert!(
            t0.elapsed() < LAZY_WINDOW,
            "the commit waited for the lazy window"
        );
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
}
