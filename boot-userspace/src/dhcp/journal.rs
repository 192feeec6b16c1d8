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
    sync::mpsc,
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
    if u32::from_str_radix(crc, 16).ok()? != crc32fast::hash(body.as_bytes()) || crc.len() != 8 {
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
        if s.good_len == 0 {
            file.write_all(HEADER.as_bytes())
                .map_err(io_err(path, "write"))?;
            file.sync_all().map_err(io_err(path, "fsync"))?;
            // A new file's directory entry must be durable too.
            sync_dir(path)?;
        }
        let journal = Journal {
            path: path.to_owned(),
            file,
            records: s.records,
            syncs: 0,
        };
        Ok((journal, sorted(s.live)))
    }

    /// Appends the records and makes them durable (one write, one fdatasync).
    pub fn append(&mut self, records: &[LeaseRecord]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let buf: String = records.iter().map(encode).collect();
        self.file
            .write_all(buf.as_bytes())
            .map_err(io_err(&self.path, "write"))?;
        self.file
            .sync_data()
            .map_err(io_err(&self.path, "fdatasync"))?;
        self.syncs += 1;
        self.records += records.len();
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

    /// Rewrites the journal to hold exactly `live`, atomically (temp file, fsync, rename,
    /// fsync of the folder), and continues appending to the new file.
    pub fn compact(&mut self, live: &[LeaseRecord]) -> Result<(), JournalError> {
        let tmp = self.path.with_extension("journal.tmp");
        let mut f = File::create(&tmp).map_err(io_err(&tmp, "create"))?;
        let mut buf = String::from(HEADER);
        buf.extend(live.iter().map(encode));
        f.write_all(buf.as_bytes()).map_err(io_err(&tmp, "write"))?;
        f.sync_all().map_err(io_err(&tmp, "fsync"))?;
        std::fs::rename(&tmp, &self.path).map_err(io_err(&self.path, "rename"))?;
        sync_dir(&self.path)?;
        self.file = OpenOptions::new()
            .append(true)
            .read(true)
            .open(&self.path)
            .map_err(io_err(&self.path, "open"))?;
        self.records = live.len();
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

enum Job {
    Commit(LeaseRecord, Waiter),
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
        std::thread::Builder::new()
            .name("lease-journal".into())
            .spawn(move || writer(journal, live, rx, delay))
            .map(|_| ())
            .unwrap_or_else(|e| warn!(error = %e, "cannot start the lease journal thread"));
        Committer { tx }
    }

    /// Makes `record` durable; resolves once it is fsync'd (or with the error).
    pub async fn commit(&self, record: LeaseRecord) -> Result<(), JournalError> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.tx
            .send(Job::Commit(record, done))
            .map_err(|_| JournalError::Stopped)?;
        wait.await.map_err(|_| JournalError::Stopped)?
    }

    /// Stops the writer after it has flushed what was submitted (dropping every handle
    /// does the same).
    pub fn shutdown(self) {}

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
    while let Ok(first) = rx.recv() {
        let mut batch: Vec<(LeaseRecord, Waiter)> = Vec::new();
        let deadline = std::time::Instant::now() + delay;
        let mut job = Some(first);
        let next = |rx: &mpsc::Receiver<Job>| {
            rx.try_recv().ok().or_else(|| {
                let left = deadline.checked_duration_since(std::time::Instant::now())?;
                rx.recv_timeout(left).ok()
            })
        };
        while let Some(j) = job.take().or_else(|| next(&rx)) {
            match j {
                Job::Commit(r, w) => batch.push((r, w)),
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
                    warn!(error = %e, "lease journal compaction failed; still appending");
                }
            }
        }
        for (_, w) in batch {
            let _ = w.send(result.clone());
        }
    }
    // All handles dropped: every submitted record has been written above.
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
}
