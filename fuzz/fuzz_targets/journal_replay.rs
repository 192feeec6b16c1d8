//! Any bytes as a lease journal file: replay (`dhcp::journal::read_live`, `Journal::open`)
//! must never panic and never accept a corrupt record as valid; a record it accepts must
//! survive a round trip through the journal's own writer; and once the journal is open, an
//! appended (acknowledged) record must be there on the next replay.
//!
//! A line that starts with `!` gets its checksum computed by this harness (`!body` becomes
//! `<crc32 of body> body`), so the fuzzer reaches the field parsers behind the checksum,
//! which it could not do by guessing CRCs.
#![no_main]

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    sync::OnceLock,
};

use bootfabric::{
    dhcp::journal::{read_live, Journal, LeaseRecord, LeaseState},
    inventory::Mac,
};
use libfuzzer_sys::fuzz_target;

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

/// Whether `line` holds a checksum that matches its body, checked here independently of
/// the journal's own decoder.
fn checksum_holds(line: &[u8]) -> Option<&[u8]> {
    let (crc, body) = (line.get(..8)?, line.get(9..)?);
    if line[8] != b' ' || !crc.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let crc = u32::from_str_radix(std::str::from_utf8(crc).ok()?, 16).ok()?;
    (crc == crc32fast::hash(body)).then_some(body)
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

fn fresh(path: &Path) {
    for p in [path.to_path_buf(), path.with_extension("tmp")] {
        match std::fs::remove_file(&p) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => panic!("{}: {e}", p.display()),
            _ => {}
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let path = dir().join("leases");
    let scratch = dir().join("scratch");
    fresh(&path);
    let bytes = file_bytes(data);
    std::fs::write(&path, &bytes).expect("write the journal");

    let Ok(live) = read_live(&path) else {
        return;
    };

    // Never a corrupt record: each one comes from a complete line whose checksum holds and
    // whose fields say this state and address.
    let complete: Vec<&[u8]> = {
        let mut lines: Vec<&[u8]> = bytes.split(|b| *b == b'\n').collect();
        lines.pop(); // the part after the last newline is not a complete line
        lines
    };
    for r in &live {
        let state = match r.state {
            LeaseState::Bound => "B",
            LeaseState::Released => "R",
            LeaseState::Declined => "D",
        };
        let from_a_good_line = complete
            .iter()
            .filter_map(|l| checksum_holds(l))
            .any(|body| {
                let mut f = body.split(|b| *b == b' ');
                f.next() == Some(state.as_bytes())
                    && f.next()
                        .and_then(|ip| std::str::from_utf8(ip).ok())
                        .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
                        == Some(r.ip)
            });
        assert!(from_a_good_line, "{r:?} accepted without a good line");
    }
    let mut ips: Vec<Ipv4Addr> = live.iter().map(|r| r.ip).collect();
    ips.dedup();
    assert_eq!(
        ips.len(),
        live.len(),
        "one live record per address, in order"
    );
    assert!(live.windows(2).all(|w| w[0].ip < w[1].ip));

    // Round trip through the journal's writer: what replay accepted, written again, reads
    // back the same (host names as the writer stores them).
    fresh(&scratch);
    let (mut j, empty) = Journal::open(&scratch).expect("open a fresh journal");
    assert!(empty.is_empty());
    j.append(&live).expect("append to a fresh journal");
    drop(j);
    let expected: Vec<LeaseRecord> = live
        .iter()
        .map(|r| LeaseRecord {
            hostname: stored_host(&r.hostname),
            ..r.clone()
        })
        .collect();
    assert_eq!(
        read_live(&scratch).expect("replay our own writing"),
        expected
    );

    // Opening the journal keeps what replay found, and a record appended after it (an
    // acknowledged lease) is in the next replay, whatever the file held before.
    let Ok((mut j, opened)) = Journal::open(&path) else {
        return;
    };
    assert_eq!(opened, live, "open and read_live disagree");
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
    let mut want: Vec<LeaseRecord> = live.into_iter().filter(|r| r.ip != acked.ip).collect();
    want.push(acked);
    want.sort_by_key(|r| r.ip);
    assert_eq!(
        read_live(&path).expect("replay after append"),
        want,
        "an acknowledged record was lost"
    );
});
