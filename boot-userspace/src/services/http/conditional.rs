//! Validators and conditional requests (RFC 9110 §8.8 and §13): strong ETags from a file's
//! identity, `Last-Modified`, `If-None-Match`, `If-Modified-Since` and `If-Range`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The last second an HTTP date can name (9999-12-31 23:59:59 UTC): `httpdate` panics on
/// anything later, and a file's modification time can be anything (`touch -d 10000-01-01`).
const LAST_HTTP_DATE: u64 = 253_402_300_799;

/// What identifies one version of a body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Validators {
    /// Strong entity tag, quoted (`"…"`).
    pub etag: String,
    /// Modification time, to the second.
    pub modified: SystemTime,
}

impl Validators {
    /// Validators of a file: its inode, size and modification time in nanoseconds make the
    /// tag, so a file replaced in place (same name, new content) gets a new one. A time past
    /// what an HTTP date can say is capped to the last one it can (the tag still differs).
    pub fn for_file(inode: u64, size: u64, modified: SystemTime) -> Self {
        let nanos = modified
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let seconds = modified
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs().min(LAST_HTTP_DATE))
            .unwrap_or(0);
        Self {
            etag: format!("\"{inode:x}-{size:x}-{nanos:x}\""),
            modified: UNIX_EPOCH + Duration::from_secs(seconds),
        }
    }

    /// `Last-Modified` value.
    pub fn last_modified(&self) -> String {
        httpdate::fmt_http_date(self.modified)
    }
}

/// Whether an `If-None-Match` list (`*`, or tags, weak or strong) matches by the weak
/// comparison RFC 9110 §13.1.2 asks for.
pub fn none_match(header: &str, etag: &str) -> bool {
    let header = header.trim();
    if header == "*" {
        return true;
    }
    let bare = |t: &str| t.trim().trim_start_matches("W/").to_owned();
    header.split(',').any(|t| bare(t) == bare(etag))
}

/// Whether the request's `If-None-Match` / `If-Modified-Since` say the client's copy is
/// current, so a GET or HEAD gets `304 Not Modified`. `If-None-Match` wins when present.
pub fn not_modified(
    if_none_match: Option<&str>,
    if_modified_since: Option<&str>,
    v: &Validators,
) -> bool {
    if let Some(h) = if_none_match {
        return none_match(h, &v.etag);
    }
    match if_modified_since.and_then(|h| httpdate::parse_http_date(h.trim()).ok()) {
        Some(since) => v.modified <= since,
        None => false,
    }
}

/// Whether a `Range` may be honoured given `If-Range` (RFC 9110 §13.1.5): without it, yes;
/// with an entity tag, only on a strong match; with a date, only if it is exactly the
/// modification time.
pub fn range_applies(if_range: Option<&str>, v: &Validators) -> bool {
    let Some(h) = if_range.map(str::trim) else {
        return true;
    };
    if h.starts_with("W/") {
        return false;
    }
    if h.starts_with('"') {
        return h == v.etag;
    }
    httpdate::parse_http_date(h).is_ok_and(|d| d == v.modified)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v() -> Validators {
        Validators::for_file(
            0x1234,
            1000,
            UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
        )
    }

    #[test]
    fn tags_change_with_the_file() {
        let a = v();
        assert_eq!(
            a.etag,
            format!("\"1234-3e8-{:x}\"", 1_700_000_000_123_456_789u128)
        );
        let b = Validators::for_file(0x1234, 1001, a.modified);
        assert_ne!(a.etag, b.etag);
        assert_eq!(a.last_modified(), "Tue, 14 Nov 2023 22:13:20 GMT");
    }

    #[test]
    fn times_past_year_9999_are_capped_not_a_panic() {
        // Found by fuzz/fuzz_targets/http_conditional.rs: `Last-Modified` of a file dated
        // after 9999 panicked the HTTP worker.
        let far = UNIX_EPOCH + Duration::from_secs(400_000_000_000);
        let v = Validators::for_file(1, 2, far);
        assert_eq!(v.last_modified(), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert!(range_applies(Some(&v.last_modified()), &v));
        assert_ne!(v.etag, Validators::for_file(1, 2, v.modified).etag);
    }

    #[test]
    fn if_none_match() {
        let v = v();
        assert!(not_modified(Some(&v.etag), None, &v));
        assert!(not_modified(
            Some(&format!("\"x\", W/{}", v.etag)),
            None,
            &v
        ));
        assert!(not_modified(Some("*"), None, &v));
        assert!(!not_modified(Some("\"other\""), None, &v));
        // If-None-Match wins over a matching date.
        assert!(!not_modified(
            Some("\"other\""),
            Some(&v.last_modified()),
            &v
        ));
    }

    #[test]
    fn if_modified_since() {
        let v = v();
        assert!(not_modified(None, Some(&v.last_modified()), &v));
        assert!(not_modified(
            None,
            Some("Wed, 15 Nov 2023 00:00:00 GMT"),
            &v
        ));
        assert!(!not_modified(
            None,
            Some("Mon, 13 Nov 2023 00:00:00 GMT"),
            &v
        ));
        assert!(!not_modified(None, Some("garbage"), &v));
    }

    #[test]
    fn if_range() {
        let v = v();
        assert!(range_applies(None, &v));
        assert!(range_applies(Some(&v.etag), &v));
        assert!(!range_applies(Some("\"old\""), &v));
        assert!(!range_applies(Some(&format!("W/{}", v.etag)), &v));
        assert!(range_applies(Some(&v.last_modified()), &v));
        assert!(!range_applies(Some("Mon, 13 Nov 2023 00:00:00 GMT"), &v));
    }
}
