//! Any validators (a file's inode, size and modification time, before or after the epoch,
//! up to the end of `SystemTime`) and any `If-None-Match`, `If-Modified-Since` and `If-Range`
//! headers: `http::conditional` must never panic, and must agree with itself: the client's
//! copy with our own tag or date is current, `If-None-Match` wins over a date, and a weak
//! tag never lets a range through.
#![no_main]

use std::time::{Duration, UNIX_EPOCH};

use bootfabric::services::http::conditional::{not_modified, range_applies, Validators};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((head, rest)) = data.split_first_chunk::<25>() else {
        return;
    };
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&head[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let (inode, size, secs) = (word(0), word(8), word(16));
    let nanos = u32::from(head[24]) * 3_921_568;
    // Times a file system can hold: seconds as a signed 64-bit value around the epoch.
    let secs = secs as i64;
    let offset = Duration::new(secs.unsigned_abs(), nanos);
    let modified = if secs >= 0 {
        UNIX_EPOCH.checked_add(offset)
    } else {
        UNIX_EPOCH.checked_sub(offset)
    };
    let Some(modified) = modified else {
        return;
    };
    let v = Validators::for_file(inode, size, modified);
    let date = v.last_modified();
    assert!(v.etag.starts_with('"') && v.etag.ends_with('"') && v.etag.len() >= 3);

    // Our own validators always say "current".
    assert!(not_modified(Some(&v.etag), None, &v));
    assert!(not_modified(Some(&format!("W/{}", v.etag)), None, &v));
    assert!(not_modified(Some("*"), None, &v));
    assert!(not_modified(None, Some(&date), &v), "own date {date}");
    assert!(range_applies(None, &v));
    assert!(range_applies(Some(&v.etag), &v));
    assert!(range_applies(Some(&date), &v), "own date {date}");
    assert!(!range_applies(Some(&format!("W/{}", v.etag)), &v));

    // The client's headers, separated by newlines.
    let text = String::from_utf8_lossy(rest);
    let mut parts = text.split('\n');
    let (inm, ims, ir) = (parts.next(), parts.next(), parts.next());
    let inm = inm.filter(|s| !s.is_empty());
    let answer = not_modified(inm, ims, &v);
    if let Some(inm) = inm {
        assert_eq!(
            answer,
            not_modified(Some(inm), None, &v),
            "If-None-Match wins"
        );
    }
    if let Some(ir) = ir {
        let applies = range_applies(Some(ir), &v);
        if ir.trim().starts_with("W/") {
            assert!(!applies, "weak If-Range {ir:?}");
        }
        if applies && ir.trim().starts_with('"') {
            assert_eq!(ir.trim(), v.etag);
        }
    }
});
