//! Any bytes as a lease journal file, checked against the journal's contract:
//!
//! - replay (`dhcp::journal::read_live`, `Journal::open`) accepts the file exactly when every
//!   complete line is good (a record whose checksum holds, an empty line, or a comment before
//!   the first record), and then returns the last record per address, in address order;
//! - a damaged complete line anywhere is refused with its line number and byte offset, never
//!   cut off silently (the records after it may be acknowledged leases), and a refused
//!   `open` leaves the file byte for byte as it was;
//! - only an incomplete last line (no newline: a write a crash cut short) is cut, by `open`;
//! - what replay accepted survives a round trip through the journal's own writer, and once
//!   the journal is open an appended (acknowledged) record is there on the next replay;
//! - `repair` keeps a byte-identical copy, drops exactly the damaged lines (and a torn last
//!   one), keeps every good record, and leaves a journal that replays.
//!
//! The harness decides which lines are good on its own (its own CRC check, field parsing by
//! the documented format), so a decoder that lets a corrupt record through, or a replay that
//! stops at a damaged line instead of refusing, fails here.
//!
//! A line that starts with `!` gets its checksum computed by this harness (`!body` becomes
//! `<crc32 of body> body`), so the fuzzer reaches the field parsers behind the checksum,
//! which it could not do by guessing CRCs.
#![no_main]

use std::{
    collections::BTreeMap,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use bootfabric::{
    model::inventory::Mac,
    services::dhcp::journal::{read_live, repair, Journal, JournalError, LeaseRecord, LeaseState},
};
use libfuzzer_sys::fuzz_target;

/// What the journal writes first in a new file (its documented header).
const HEADER: &[u8] = b"# bootfabric leases v1\n";

/// The `now` given to `repair`: names the copy `<path>.corrupt-1`.
const REPAIR_NOW: u64 = 1;

/// A private folder on tmpfs when there is one: replay reads a real file.
fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let base = if Path::new("/dev/shm").is_dir() {
            PathBuf::from("/dev/shm")
        } else {
            std::env::temp_dir()
        };
        let d = base.join(format!("bootfabric-fuzz-journal-{}", std::process::id()));
        std::fs::create_dir_all(&d).expect("fuzz scratch folder");
        d
    })
}

/// The journal file the fuzzer's bytes become, with `!` lines given their checksum.
fn file_bytes(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(data.len() + 64);
    for (i, line) in data.split(|b| *b == b'\n').enumerate() {
        if i > 0 {
            out.push(b'\n');
        }
        match line.strip_prefix(b"!") {
            Some(body) => {
                out.extend_from_slice(format!("{:08x} ", crc32fast::hash(body)).as_bytes());
                out.extend_from_slice(body);
            }
            None => out.extend_from_slice(line),
        }
    }
    out
}

/// The body of `line` when its checksum field is eight hex digits matching the CRC32 of
/// the rest, checked here independently of the journal's own decoder.
fn checksum_holds(line: &[u8]) -> Option<&[u8]> {
    let (crc, body) = (line.get(..8)?, line.get(9..)?);
    if line[8] != b' ' || !crc.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    (crc == crc32fast::hash(body)).then_some(body)
}

/// The record a line's body says, by the documented format: `state ip mac expires host`.
fn fields(body: &[u8]) -> Option<LeaseRecord> {
    let body = std::str::from_utf8(body).ok()?;
    let f: Vec<&str> = body.split(' ').collect();
    let [state, ip, mac, expires, host] = f.as_slice() else {
        return None;
    };
    Some(LeaseRecord {
        state: match *state {
            "B" => LeaseState::Bound,
            "R" => LeaseState::Released,
            "D" => LeaseState::Declined,
            _ => return None,
        },
        ip: ip.parse().ok()?,
        mac: mac.parse::<Mac>().ok()?,
        expires: expires.parse().ok()?,
        hostname: (*host != "-").then(|| (*host).to_owned()),
    })
}

/// One complete line as the contract sees it: `Ok(None)` for an empty line or a comment
/// before the first record, `Ok(Some)` for a good record, `Err` for damage.
fn judge(line: &[u8], records_before: usize) -> Result<Option<LeaseRecord>, ()> {
    if std::str::from_utf8(line).is_err() {
        return Err(());
    }
    if line.is_empty() {
        return Ok(None);
    }
    if line.starts_with(b"#") {
        // Only the header is ever written; a record whose first byte became `#` is damage.
        return if records_before == 0 {
            Ok(None)
        } else {
            Err(())
        };
    }
    let body = checksum_holds(line).ok_or(())?;
    fields(body).map(Some).ok_or(())
}

/// What the harness expects of a journal file.
struct Model {
    /// Good records, in file order (all of them, also after a damaged line).
    records: Vec<LeaseRecord>,
    /// Damaged complete lines: (line number from 1, byte offset of its start).
    bad: Vec<(usize, u64)>,
    /// Line number and offset of an incomplete last line.
    torn: Option<(usize, u64)>,
    /// Bytes of complete lines (where `open` cuts a torn tail).
    complete_len: usize,
}

impl Model {
    fn of(bytes: &[u8]) -> Model {
        let mut m = Model {
            records: Vec::new(),
            bad: Vec::new(),
            torn: None,
            complete_len: 0,
        };
        let mut offset = 0usize;
        let mut rest = bytes;
        let mut number = 0;
        while !rest.is_empty() {
            number += 1;
            let Some(end) = rest.iter().position(|b| *b == b'\n') else {
                m.torn = Some((number, offset as u64));
                break;
            };
            match judge(&rest[..end], m.records.len()) {
                Ok(Some(r)) => m.records.push(r),
                Ok(None) => {}
                Err(()) => m.bad.push((number, offset as u64)),
            }
            offset += end + 1;
            m.complete_len = offset;
            rest = &rest[end + 1..];
        }
        m
    }

    /// The last record per address among `records`, in address order.
    fn live(records: &[LeaseRecord]) -> Vec<LeaseRecord> {
        let mut last = BTreeMap::new();
        for r in records {
            last.insert(r.ip, r.clone());
        }
        last.into_values().collect()
    }
}

/// Host names as the journal stores them (its documented rule).
fn stored_host(h: &Option<String>) -> Option<String> {
    h.as_ref()
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 63
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        })
        .cloned()
}

fn as_stored(records: &[LeaseRecord]) -> Vec<LeaseRecord> {
    records
        .iter()
        .map(|r| LeaseRecord {
            hostname: stored_host(&r.hostname),
            ..r.clone()
        })
        .collect()
}

fn remove(p: &Path) {
    match std::fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{}: {e}", p.display()),
        _ => {}
    }
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(suffix);
    PathBuf::from(p)
}

fn fresh(path: &Path) {
    remove(path);
    remove(&with_suffix(path, ".tmp"));
    remove(&with_suffix(path, &format!(".corrupt-{REPAIR_NOW}")));
}

/// Asserts that `got` is the refusal of line `line` at `offset` of `path`.
fn assert_refused<T: std::fmt::Debug>(
    who: &str,
    got: Result<T, JournalError>,
    path: &Path,
    (line, offset): (usize, u64),
) {
    match got {
        Err(JournalError::Corrupt {
            path: p,
            line: l,
            offset: o,
            ..
        }) => assert_eq!(
            (p.as_path(), l, o),
            (path, line, offset),
            "{who} refused the wrong line"
        ),
        other => panic!(
            "{who} did not refuse the journal with a damaged complete line {line} \
             (byte offset {offset}): {other:?}"
        ),
    }
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("leases");
    let scratch = dir().join("scratch");
    fresh(&path);
    let bytes = file_bytes(data);
    std::fs::write(&path, &bytes).expect("write the journal");
    let model = Model::of(&bytes);
    let live = Model::live(&model.records);

    match model.bad.first() {
        Some(&first) => {
            // Damage anywhere, also in the middle: refused by both, never cut.
            assert_refused("read_live", read_live(&path), &path, first);
            assert_refused(
                "Journal::open",
                Journal::open(&path).map(|(_, r)| r),
                &path,
                first,
            );
            assert_eq!(
                std::fs::read(&path).expect("read the journal back"),
                bytes,
                "a refused open changed the journal"
            );
        }
        None => {
            assert_eq!(
                read_live(&path).expect("replay a sound journal"),
                live,
                "read_live: wrong live records"
            );

            // Round trip through the journal's writer: what replay accepted, written again,
            // reads back the same (host names as the writer stores them).
            fresh(&scratch);
            let (mut j, empty) = Journal::open(&scratch).expect("open a fresh journal");
            assert!(empty.is_empty());
            j.append(&live).expect("append to a fresh journal");
            drop(j);
            assert_eq!(
                read_live(&scratch).expect("replay our own writing"),
                as_stored(&live)
            );

            // Opening keeps what replay found and cuts only an incomplete last line (a new or
            // emptied file gets the header); a record appended after it (an acknowledged
            // lease) is in the next replay, whatever the file held before.
            let (mut j, opened) = Journal::open(&path).expect("open a sound journal");
            assert_eq!(opened, live, "open and read_live disagree");
            let kept = match &bytes[..model.complete_len] {
                [] => HEADER,
                complete => complete,
            };
            assert_eq!(
                std::fs::read(&path).expect("read the journal back"),
                kept,
                "open did not keep exactly the complete lines"
            );
            let acked = LeaseRecord {
                ip: Ipv4Addr::new(10, 200, 0, 1),
                mac: "52:54:00:fa:22:01".parse::<Mac>().expect("mac"),
                state: LeaseState::Bound,
                expires: 1_800_000_000,
                hostname: Some("acked".into()),
            };
            j.append(std::slice::from_ref(&acked))
                .expect("append after open");
            drop(j);
            let mut want: Vec<LeaseRecord> =
                live.iter().filter(|r| r.ip != acked.ip).cloned().collect();
            want.push(acked);
            want.sort_by_key(|r| r.ip);
            assert_eq!(
                read_live(&path).expect("replay after append"),
                want,
                "an acknowledged record was lost"
            );
            // Back to the fuzzer's file for the repair below.
            fresh(&path);
            std::fs::write(&path, &bytes).expect("write the journal");
        }
    }

    // Repair drops exactly the damaged lines and a torn last one, keeps every good record in
    // order, keeps the original, and what it leaves replays.
    let r = repair(&path, REPAIR_NOW).expect("repair");
    let dropped: Vec<(usize, u64)> = r.dropped.iter().map(|d| (d.line, d.offset)).collect();
    let want_dropped: Vec<(usize, u64)> = model.bad.iter().copied().chain(model.torn).collect();
    assert_eq!(dropped, want_dropped, "repair dropped other lines");
    assert_eq!(r.kept, model.records.len(), "repair kept another count");
    if want_dropped.is_empty() {
        assert_eq!(r.copy, None);
        assert_eq!(
            std::fs::read(&path).expect("read the journal back"),
            bytes,
            "repair changed a sound journal"
        );
    } else {
        let copy = r.copy.expect("a copy of a repaired journal");
        assert_eq!(
            std::fs::read(&copy).expect("read the copy"),
            bytes,
            "repair's copy is not the original"
        );
        assert_eq!(
            read_live(&path).expect("replay a repaired journal"),
            as_stored(&Model::live(&model.records)),
            "repair lost or changed a good record"
        );
    }
});
