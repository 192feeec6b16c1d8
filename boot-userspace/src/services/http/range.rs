//! Byte ranges (RFC 9110 §14): parsing a `Range` header and resolving it against a
//! representation's length. One range is served as `206`; a set of several is served whole
//! (`200`), which RFC 9110 §14.2 allows a server to do with any range request, so no
//! `multipart/byteranges` is ever built.

/// What to send for a request, given its `Range` header and the body length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The whole body, `200`.
    Full,
    /// Bytes `first..=last`, `206` with `Content-Range`.
    Partial {
        /// First byte.
        first: u64,
        /// Last byte (inclusive).
        last: u64,
    },
    /// `416` with `Content-Range: bytes */len`.
    Unsatisfiable,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Spec {
    /// `first-last` or `first-`.
    From(u64, Option<u64>),
    /// `-n`: the last n bytes.
    Suffix(u64),
}

fn parse_one(s: &str) -> Option<Spec> {
    let (a, b) = s.trim().split_once('-')?;
    let num = |t: &str| -> Option<u64> {
        if t.is_empty() || !t.bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        t.parse().ok()
    };
    match (a.trim(), b.trim()) {
        ("", n) => num(n).map(Spec::Suffix),
        (f, "") => num(f).map(|f| Spec::From(f, None)),
        (f, l) => {
            let (f, l) = (num(f)?, num(l)?);
            (f <= l).then_some(Spec::From(f, Some(l)))
        }
    }
}

/// Decides how to answer `range` (the header's value, if any) for a body of `len` bytes.
/// A header that does not parse is ignored (RFC 9110: a server MAY ignore it), as is a
/// unit other than `bytes`.
pub fn plan(range: Option<&str>, len: u64) -> Plan {
    let Some(value) = range else {
        return Plan::Full;
    };
    let Some(set) = value.trim().strip_prefix("bytes=") else {
        return Plan::Full;
    };
    let specs: Option<Vec<Spec>> = set.split(',').map(parse_one).collect();
    let Some(specs) = specs else {
        return Plan::Full;
    };
    match specs.as_slice() {
        [one] => resolve(*one, len),
        // Several ranges: served whole rather than as multipart/byteranges.
        _ => Plan::Full,
    }
}

fn resolve(spec: Spec, len: u64) -> Plan {
    match spec {
        Spec::From(first, _) if first >= len => Plan::Unsatisfiable,
        Spec::From(first, last) => Plan::Partial {
            first,
            last: last.map_or(len - 1, |l| l.min(len - 1)),
        },
        Spec::Suffix(0) => Plan::Unsatisfiable,
        Spec::Suffix(_) if len == 0 => Plan::Unsatisfiable,
        Spec::Suffix(n) => Plan::Partial {
            first: len.saturating_sub(n),
            last: len - 1,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(first: u64, last: u64) -> Plan {
        Plan::Partial { first, last }
    }

    #[test]
    fn single_ranges() {
        assert_eq!(plan(Some("bytes=0-99"), 1000), p(0, 99));
        assert_eq!(plan(Some("bytes=500-"), 1000), p(500, 999));
        assert_eq!(plan(Some("bytes=-100"), 1000), p(900, 999));
        assert_eq!(plan(Some("bytes=-5000"), 1000), p(0, 999));
        assert_eq!(plan(Some("bytes=900-5000"), 1000), p(900, 999));
        assert_eq!(plan(Some("bytes= 1 - 2 "), 1000), p(1, 2));
    }

    #[test]
    fn unsatisfiable_ranges() {
        assert_eq!(plan(Some("bytes=1000-"), 1000), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=1000-2000"), 1000), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=-0"), 1000), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=0-"), 0), Plan::Unsatisfiable);
        assert_eq!(plan(Some("bytes=-1"), 0), Plan::Unsatisfiable);
    }

    #[test]
    fn ignored_headers_serve_everything() {
        for h in [
            "bytes=5-1",
            "bytes=a-b",
            "items=0-1",
            "bytes=",
            "bytes=-",
            "bytes=0-1,5-6",
            "bytes=+1-2",
        ] {
            assert_eq!(plan(Some(h), 1000), Plan::Full, "{h}");
        }
        assert_eq!(plan(None, 1000), Plan::Full);
    }
}
