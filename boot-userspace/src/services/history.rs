//! The boot history on disk: every event of an inventory host, one JSON line each
//! ([`Line`]), in `state_dir/history/`, so timelines survive a restart and
//! `bootfabric history` can show boots from long ago.
//!
//! Bounded and rotated: the history is [`SEGMENTS`] files of at most a [`SEGMENTS`]th of
//! `daemon.history_mb` each, named by the time of their first line; when the newest is full
//! a new one begins and the oldest beyond the count is deleted. Only inventory hosts are
//! journaled (the ledger's [`Journal`] hook says so): a flood of invented MACs writes
//! nothing, and the most a machine posing as an inventory host can do is push old history
//! out sooner, at the DHCP rate limit of one MAC.
//!
//! The ledger never waits for the disk: lines go through a bounded queue to one writer
//! thread, and a line that finds the queue full is dropped and counted
//! (`bootfabric_history_dropped_total`). The writer hands each batch to the kernel at once
//! (no fsync): a daemon that crashes loses nothing written, a machine that loses power may
//! lose its last seconds of history, which is not a lease.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, BufReader, Write as _},
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::{
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc,
    },
};

use prometheus::{IntCounter, Registry};
use tracing::warn;

use crate::model::{
    inventory::Mac,
    ledger::{history::Line, Event, Journal},
};

/// Files the history is kept in.
pub const SEGMENTS: u64 = 8;
/// Lines queued for the writer at most.
const QUEUE: usize = 16_384;
/// Longest line read back: a line is far shorter (its strings are cut at the ledger's
/// `DETAIL_MAX`); anything longer is damage.
const MAX_LINE: usize = 16 * 1024;

/// The history's folder under `state_dir`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("history")
}

/// Largest run report read back.
const MAX_REPORT: u64 = 16 * 1024 * 1024;

/// Reports of finished reboot runs kept (`history/runs/<id>.json`), the newest.
pub const REPORTS: usize = 64;

/// What the writer thread is handed.
enum Item {
    Line(Line),
    /// A finished run's report, as JSON, by run number.
    Report(u64, Vec<u8>),
}

/// The ledger's hook into the history: queues each line for the writer thread.
pub struct Writer {
    tx: SyncSender<Item>,
    dropped: IntCounter,
}

impl Journal for Writer {
    fn append(&self, host: &str, mac: Mac, event: &Event) {
        self.queue(Item::Line(Line::new(host, mac, event)));
    }
}

impl Writer {
    /// Keeps run `id`'s report (`json`, a document the caller reads back with
    /// [`last_report`]), replacing an earlier one of the same run.
    pub fn report(&self, id: u64, json: Vec<u8>) {
        self.queue(Item::Report(id, json));
    }

    fn queue(&self, item: Item) {
        match self.tx.try_send(item) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}

/// The newest run report kept in `dir`, if any (a damaged one is skipped for the one before).
pub fn last_report(dir: &Path) -> io::Result<Option<Vec<u8>>> {
    use std::io::Read as _;
    for path in reports(&dir.join("runs"))?.iter().rev() {
        let Ok(file) = open_regular(path, OpenOptions::new().read(true)) else {
            continue;
        };
        // A report of thousands of hosts is well under this; more is not one of ours.
        let mut bytes = Vec::new();
        if file.take(MAX_REPORT + 1).read_to_end(&mut bytes).is_err()
            || bytes.len() as u64 > MAX_REPORT
        {
            continue;
        }
        if serde_json::from_slice::<serde_json::Value>(&bytes).is_ok() {
            return Ok(Some(bytes));
        }
    }
    Ok(None)
}

/// The run reports in `dir`, oldest (lowest run number) first.
fn reports(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut files: Vec<(u64, PathBuf)> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let path = e.path();
                let id = path
                    .file_name()?
                    .to_str()?
                    .strip_suffix(".json")?
                    .parse()
                    .ok()?;
                Some((id, path))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files.into_iter().map(|(_, p)| p).collect())
}

/// Writes run `id`'s report atomically (a temporary file, then a rename) and keeps the newest
/// [`REPORTS`].
fn write_report(dir: &Path, id: u64, json: &[u8]) -> io::Result<()> {
    let runs = dir.join("runs");
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(&runs)?;
    let tmp = runs.join(format!(".{id}.json.tmp"));
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o640)
            .open(&tmp)?;
        f.write_all(json)?;
    }
    fs::rename(&tmp, runs.join(format!("{id}.json")))?;
    let all = reports(&runs)?;
    for old in &all[..all.len().saturating_sub(REPORTS)] {
        fs::remove_file(old)?;
    }
    Ok(())
}

/// Starts the writer thread on `dir` (created if missing), keeping at most `max_bytes`.
/// The thread ends when the returned writer is dropped.
pub fn start(dir: &Path, max_bytes: u64, registry: &Registry) -> io::Result<Arc<Writer>> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o750)
        .create(dir)?;
    let dropped = IntCounter::new(
        "bootfabric_history_dropped_total",
        "Boot history lines dropped because the writer fell behind (the disk is slow or full).",
    )
    .map_err(io::Error::other)?;
    let errors = IntCounter::new(
        "bootfabric_history_write_errors_total",
        "Boot history writes that failed (the log says why).",
    )
    .map_err(io::Error::other)?;
    registry
        .register(Box::new(dropped.clone()))
        .map_err(io::Error::other)?;
    registry
        .register(Box::new(errors.clone()))
        .map_err(io::Error::other)?;
    let (tx, rx) = mpsc::sync_channel(QUEUE);
    let mut segments = Segments::open(dir, (max_bytes / SEGMENTS).max(4096))?;
    std::thread::Builder::new()
        .name("bootfabric-history".into())
        .spawn(move || write_loop(&rx, &mut segments, &errors))?;
    Ok(Arc::new(Writer { tx, dropped }))
}

fn write_loop(rx: &Receiver<Item>, segments: &mut Segments, errors: &IntCounter) {
    let mut batch = Vec::with_capacity(64 * 1024);
    let mut next = rx.recv().ok();
    while let Some(item) = next {
        match item {
            Item::Line(line) => {
                push_line(&mut batch, &line);
            }
            Item::Report(id, json) => {
                if let Err(e) = write_report(&segments.dir, id, &json) {
                    errors.inc();
                    warn!(error = %e, run = id, "reboot run report not kept");
                }
            }
        }
        // What queued meanwhile goes in the same write; then the next wait.
        next = match rx.try_recv() {
            // Batches stay well under a file's size, so a file overshoots it by little.
            Ok(item)
                if (batch.len() as u64) < (segments.segment_bytes / 4).clamp(4096, 256 * 1024) =>
            {
                Some(item)
            }
            other => {
                if !batch.is_empty() {
                    if let Err(e) = segments.write(&batch) {
                        errors.inc();
                        warn!(error = %e, dir = %segments.dir.display(), "boot history not written");
                    }
                    batch.clear();
                }
                match other {
                    Ok(item) => Some(item),
                    Err(_) => rx.recv().ok(),
                }
            }
        };
    }
}

fn push_line(batch: &mut Vec<u8>, line: &Line) {
    // A Line is strings and numbers: it always serializes.
    if serde_json::to_writer(&mut *batch, line).is_ok() {
        batch.push(b'\n');
    }
}

/// The history's files: the newest is appended to.
struct Segments {
    dir: PathBuf,
    segment_bytes: u64,
    /// The file appended to, its number and its length.
    current: Option<(File, u64, u64)>,
}

impl Segments {
    fn open(dir: &Path, segment_bytes: u64) -> io::Result<Self> {
        let mut s = Self {
            dir: dir.to_owned(),
            segment_bytes,
            current: None,
        };
        if let Some((seq, newest)) = list(dir)?.pop() {
            let file = open_regular(&newest, OpenOptions::new().append(true))?;
            // A full one makes the next write begin the file after it.
            let len = file.metadata()?.len();
            s.current = Some((file, seq, len));
        }
        Ok(s)
    }

    /// Appends `bytes` (whole lines), beginning a new file first when the newest is full.
    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        let next = match &self.current {
            Some((_, seq, len)) if *len >= self.segment_bytes => Some(seq + 1),
            Some(_) => None,
            None => Some(1),
        };
        if let Some(seq) = next {
            self.current = None;
            let file = self.create(seq)?;
            self.current = Some((file, seq, 0));
            self.prune(seq)?;
        }
        if let Some((file, _, len)) = self.current.as_mut() {
            file.write_all(bytes)?;
            *len += bytes.len() as u64;
        }
        Ok(())
    }

    fn create(&self, seq: u64) -> io::Result<File> {
        // Numbered, not named by time: a clock set back (or one that ran ahead before NTP)
        // cannot make a new file sort below the old ones and be pruned as the oldest.
        let path = self.dir.join(format!("{seq:016}.jsonl"));
        OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o640)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
    }

    /// Deletes the oldest files beyond [`SEGMENTS`], never `current` (the one just begun).
    fn prune(&self, current: u64) -> io::Result<()> {
        let files = list(&self.dir)?;
        let excess = files.len().saturating_sub(SEGMENTS as usize);
        for (seq, old) in &files[..excess] {
            if *seq != current {
                fs::remove_file(old)?;
            }
        }
        Ok(())
    }
}

/// Opens `path` with `options` if it is a regular file and not a link: the history folder is
/// the daemon's own, and a link or a FIFO planted in it must not make the daemon read or
/// write elsewhere, or hang.
fn open_regular(path: &Path, options: &mut OpenOptions) -> io::Result<File> {
    let file = options
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file",
            path.display()
        )));
    }
    Ok(file)
}

/// The history's files with their numbers, oldest first.
fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut files: Vec<(u64, PathBuf)> = match fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter_map(|p| {
                let stem = p.file_stem()?.to_str()?;
                let numbered = p.extension().is_some_and(|x| x == "jsonl")
                    && stem.len() == 16
                    && stem.bytes().all(|b| b.is_ascii_digit());
                Some((stem.parse().ok().filter(|_| numbered)?, p))
            })
            .collect(),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    files.sort();
    Ok(files)
}

/// What reading the history found besides its lines.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Lines read.
    pub lines: usize,
    /// Lines that were not a history line (damage, a cut last line): skipped.
    pub malformed: usize,
    /// Files that could not be read (a link, a FIFO, an I/O error): skipped, with why.
    pub unreadable: Vec<String>,
}

/// Calls `f` with every line of the history in `dir`, oldest first. A missing folder is an
/// empty history; a file that cannot be read is skipped and named in the stats (an error
/// only when the folder itself cannot be listed).
pub fn read(dir: &Path, mut f: impl FnMut(Line)) -> io::Result<ReadStats> {
    let mut stats = ReadStats::default();
    let mut buf = Vec::new();
    for (_, path) in list(dir)? {
        let file = match open_regular(&path, OpenOptions::new().read(true)) {
            Ok(f) => f,
            Err(e) => {
                stats.unreadable.push(format!("{}: {e}", path.display()));
                continue;
            }
        };
        let mut reader = BufReader::new(file);
        loop {
            buf.clear();
            let n = match read_line(&mut reader, &mut buf) {
                Ok(n) => n,
                Err(e) => {
                    stats.unreadable.push(format!("{}: {e}", path.display()));
                    break;
                }
            };
            if n == 0 {
                break;
            }
            match serde_json::from_slice::<Line>(&buf) {
                Ok(line) => {
                    stats.lines += 1;
                    f(line);
                }
                Err(_) => stats.malformed += 1,
            }
        }
    }
    Ok(stats)
}

/// Reads one line into `buf` (without its newline), keeping at most [`MAX_LINE`] bytes of
/// it (a longer one is left unparseable); returns the bytes consumed, 0 at the end.
fn read_line(reader: &mut impl io::BufRead, buf: &mut Vec<u8>) -> io::Result<usize> {
    let mut consumed = 0;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(consumed);
        }
        let (line, used, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], i + 1, true),
            None => (chunk, chunk.len(), false),
        };
        let room = (MAX_LINE + 1).saturating_sub(buf.len());
        buf.extend_from_slice(&line[..line.len().min(room)]);
        reader.consume(used);
        consumed += used;
        if done {
            return Ok(consumed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ledger::EventKind;

    fn event(at: u64) -> Event {
        Event {
            at_ms: at,
            ip: None,
            kind: EventKind::HttpStarted {
                path: "/vmlinuz".into(),
            },
        }
    }

    #[test]
    fn lines_come_back_in_order_across_rotated_files_and_the_oldest_go() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut seg = Segments::open(dir.path(), 4096).expect("open");
        let mac = Mac([2, 0, 0, 0, 0, 1]);
        for at in 0..2_000u64 {
            let mut b = Vec::new();
            push_line(&mut b, &Line::new("node01", mac, &event(at)));
            seg.write(&b).expect("write");
        }
        let files = list(dir.path()).expect("list");
        assert_eq!(files.len(), SEGMENTS as usize);
        let mut seen = Vec::new();
        let stats = read(dir.path(), |l| seen.push(l.at)).expect("read");
        assert_eq!(stats.malformed, 0);
        // Only the newest files stay; what stays is in order and ends with the last line.
        assert!(seen.len() < 2_000 && seen.len() > 100, "{}", seen.len());
        assert!(seen.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(seen.last(), Some(&1_999));
        // Reopening appends to the newest file rather than starting another.
        drop(seg);
        let seg = Segments::open(dir.path(), 4096).expect("reopen");
        assert!(seg.current.is_some() || list(dir.path()).expect("list").len() == 8);
    }

    #[test]
    fn the_newest_run_reports_are_kept_and_the_last_readable_one_is_read_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert_eq!(last_report(dir.path()).expect("none"), None);
        for id in 1..=(REPORTS as u64 + 5) {
            write_report(dir.path(), id, format!("{{\"id\":{id}}}").as_bytes()).expect("write");
        }
        let kept = reports(&dir.path().join("runs")).expect("list");
        assert_eq!(kept.len(), REPORTS);
        assert!(kept[0].ends_with("6.json"), "{kept:?}");
        let last = REPORTS as u64 + 5;
        assert_eq!(
            last_report(dir.path()).expect("read"),
            Some(format!("{{\"id\":{last}}}").into_bytes())
        );
        // A damaged newest report: the one before it.
        fs::write(dir.path().join(format!("runs/{}.json", last + 1)), b"{cut").expect("damage");
        assert_eq!(
            last_report(dir.path()).expect("read"),
            Some(format!("{{\"id\":{last}}}").into_bytes())
        );
    }

    #[test]
    fn a_planted_link_or_fifo_is_skipped_not_followed_or_waited_on() {
        let dir = tempfile::tempdir().expect("tempdir");
        let outside = dir.path().join("outside.jsonl");
        let mut text = Vec::new();
        push_line(
            &mut text,
            &Line::new("node01", Mac([2, 0, 0, 0, 0, 1]), &event(1)),
        );
        fs::write(&outside, &text).expect("outside");
        let hist = dir.path().join("history");
        fs::create_dir(&hist).expect("history");
        std::os::unix::fs::symlink(&outside, hist.join(format!("{:016}.jsonl", 1))).expect("link");
        nix::unistd::mkfifo(
            &hist.join(format!("{:016}.jsonl", 2)),
            nix::sys::stat::Mode::from_bits_truncate(0o600),
        )
        .expect("fifo");
        fs::write(hist.join(format!("{:016}.jsonl", 3)), &text).expect("real");
        let mut seen = 0;
        let stats = read(&hist, |_| seen += 1).expect("read");
        assert_eq!(seen, 1, "only the regular file is read");
        assert_eq!(stats.unreadable.len(), 2, "{:?}", stats.unreadable);
        // The writer does not append through the link either: it begins file 4.
        let mut seg = Segments::open(&hist, 1 << 20).expect("open");
        seg.write(b"{}\n").expect("write");
        assert_eq!(fs::read(&outside).expect("outside"), text);
    }

    #[test]
    fn damaged_and_overlong_lines_are_skipped_and_counted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut text = Vec::new();
        push_line(
            &mut text,
            &Line::new("node01", Mac([2, 0, 0, 0, 0, 1]), &event(1)),
        );
        text.extend_from_slice(b"{not json\n");
        text.extend(std::iter::repeat_n(b'x', MAX_LINE * 3));
        text.push(b'\n');
        push_line(
            &mut text,
            &Line::new("node01", Mac([2, 0, 0, 0, 0, 1]), &event(2)),
        );
        // A cut last line (the writer stopped mid-write).
        text.extend_from_slice(b"{\"at\":3,\"ho");
        fs::write(dir.path().join(format!("{:016}.jsonl", 1)), &text).expect("write");
        let mut seen = Vec::new();
        let stats = read(dir.path(), |l| seen.push(l.at)).expect("read");
        assert_eq!(seen, [1, 2]);
        assert_eq!(stats.malformed, 3);
    }

    #[test]
    fn the_writer_thread_journals_what_the_ledger_hands_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let registry = Registry::new();
        let writer = start(dir.path(), 1 << 20, &registry).expect("start");
        let mac = Mac([2, 0, 0, 0, 0, 7]);
        for at in 1..=10 {
            writer.append("node07", mac, &event(at));
        }
        drop(writer);
        // The thread ends once the queue is drained and closed: wait for the lines.
        let mut seen = Vec::new();
        for _ in 0..500 {
            seen.clear();
            read(dir.path(), |l| seen.push(l.at)).expect("read");
            if seen.len() == 10 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(seen, (1..=10).collect::<Vec<_>>());
    }
}
