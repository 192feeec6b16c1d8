//! Any `Range` header against any body length: `http::range::plan` must never panic, a
//! partial answer must lie within the body, and the range it picked, asked for again
//! explicitly, must give the same answer.
#![no_main]

use bootfabric::services::http::range::{plan, Plan};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((len, header)) = data.split_first_chunk::<8>() else {
        return;
    };
    // Small lengths are where off-by-one errors live; large ones where overflows do.
    let raw = u64::from_le_bytes(*len);
    let len = if raw & 1 == 0 {
        raw >> 1
    } else {
        (raw >> 1) % 4096
    };
    let Ok(header) = std::str::from_utf8(header) else {
        return;
    };
    assert_eq!(plan(None, len), Plan::Full);
    match plan(Some(header), len) {
        Plan::Full => {}
        Plan::Partial { first, last } => {
            assert!(first <= last, "{first}-{last}");
            assert!(last < len, "{first}-{last} outside {len} bytes");
            let again = format!("bytes={first}-{last}");
            assert_eq!(plan(Some(&again), len), Plan::Partial { first, last });
            // What Content-Range will say, and the length sent, fit in a u64.
            assert!((last - first).checked_add(1).is_some());
        }
        Plan::Unsatisfiable => {
            // Only a range that starts past the end can be unsatisfiable, so a body with
            // bytes always serves its first byte.
            if len > 0 {
                assert_eq!(
                    plan(Some("bytes=0-0"), len),
                    Plan::Partial { first: 0, last: 0 }
                );
            }
        }
    }
});
