//! Option negotiation (RFC 2347): which of the client's options the server accepts, and the
//! values the transfer then uses. Unknown options are ignored, as the RFC requires; values out
//! of range are clamped where the RFC lets the server answer with a smaller value, and
//! dropped otherwise. A `timeout` above the server's ceiling is dropped too: RFC 2349 lets
//! the server only echo the client's value or leave the option out, and a client that could
//! pick 255 s would hold a transfer for its retries times four minutes.

/// RFC 1350 block size, used when the client asks for none.
pub const DEFAULT_BLKSIZE: u16 = 512;
/// RFC 2348 bounds.
pub const MIN_BLKSIZE: u16 = 8;
/// RFC 2348 bounds.
pub const MAX_BLKSIZE: u16 = 65464;
/// RFC 2349 timeout bounds, seconds.
pub const MAX_TIMEOUT: u8 = 255;
/// RFC 7440 windowsize bounds.
pub const MAX_WINDOWSIZE: u16 = 65535;

/// Limits the server imposes on what clients may ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest block: the path MTU minus IPv4 and UDP and TFTP headers (1500 → 1468).
    pub max_blksize: u16,
    /// Largest window the server will send without an ACK.
    pub max_windowsize: u16,
    /// Retransmission timeout when the client asks for none, seconds.
    pub default_timeout: u8,
    /// Largest `timeout` acknowledged, seconds; larger ones are left out of the OACK.
    pub max_timeout: u8,
}

impl Limits {
    /// Limits for a link with `mtu`: blocks that fit one IPv4 datagram without fragments.
    pub fn for_mtu(mtu: u16, max_windowsize: u16) -> Self {
        let max_blksize = mtu
            .saturating_sub(20 + 8 + 4)
            .clamp(MIN_BLKSIZE, MAX_BLKSIZE);
        Self {
            max_blksize,
            max_windowsize: max_windowsize.max(1),
            default_timeout: 1,
            max_timeout: MAX_TIMEOUT,
        }
    }

    /// The same limits with a ceiling on the `timeout` option (at least 1 s).
    pub fn with_max_timeout(self, max_timeout: u8) -> Self {
        Self {
            max_timeout: max_timeout.max(1),
            ..self
        }
    }
}

/// What a transfer runs with after negotiation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Bytes per DATA block.
    pub blksize: u16,
    /// Blocks sent before waiting for an ACK.
    pub windowsize: u16,
    /// Retransmission timeout, seconds.
    pub timeout: u8,
    /// The options to acknowledge in an OACK, in the client's order; empty means no OACK
    /// (RFC 1350 transfer starting with DATA 1).
    pub ack: Vec<(&'static str, String)>,
    /// The client asked for a `timeout` above the ceiling (left out of the OACK).
    pub timeout_capped: bool,
}

/// Negotiates the client's `options` for a file of `size` bytes (`None` when the size is not
/// known up front, as for rendered files streamed while produced).
pub fn negotiate(options: &[(String, String)], size: Option<u64>, limits: Limits) -> Negotiated {
    let mut n = Negotiated {
        blksize: DEFAULT_BLKSIZE.min(limits.max_blksize),
        windowsize: 1,
        timeout: limits.default_timeout,
        ack: Vec::new(),
        timeout_capped: false,
    };
    for (name, value) in options {
        match name.as_str() {
            "blksize" => {
                if let Ok(v) = value.parse::<u32>() {
                    if v >= u32::from(MIN_BLKSIZE) {
                        // RFC 2348: the server may answer a smaller size than asked.
                        let v = v
                            .min(u32::from(MAX_BLKSIZE))
                            .min(u32::from(limits.max_blksize))
                            as u16;
                        n.blksize = v;
                        n.ack.push(("blksize", v.to_string()));
                    }
                }
            }
            "windowsize" => {
                if let Ok(v) = value.parse::<u32>() {
                    if v >= 1 {
                        let v = v
                            .min(u32::from(MAX_WINDOWSIZE))
                            .min(u32::from(limits.max_windowsize))
                            as u16;
                        n.windowsize = v;
                        n.ack.push(("windowsize", v.to_string()));
                    }
                }
            }
            "timeout" => {
                // RFC 2349: the server must not change it; refuse values out of 1..=255,
                // and values over the ceiling (the transfer keeps the default timeout).
                if let Ok(v) = value.parse::<u16>() {
                    if v > u16::from(limits.max_timeout) && v <= u16::from(MAX_TIMEOUT) {
                        n.timeout_capped = true;
                    } else if (1..=u16::from(MAX_TIMEOUT)).contains(&v) {
                        n.timeout = v as u8;
                        n.ack.push(("timeout", v.to_string()));
                    }
                }
            }
            "tsize" => {
                // RFC 2349: a read request asks with 0; answer with the size when known.
                if let (Some(size), Ok(_)) = (size, value.parse::<u64>()) {
                    n.ack.push(("tsize", size.to_string()));
                }
            }
            _ => {}
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
            .collect()
    }

    const LAN: Limits = Limits {
        max_blksize: 1468,
        max_windowsize: 64,
        default_timeout: 1,
        max_timeout: MAX_TIMEOUT,
    };

    #[test]
    fn ovmf_gets_everything_it_asks_for() {
        let n = negotiate(
            &opts(&[("tsize", "0"), ("blksize", "1468"), ("windowsize", "4")]),
            Some(1_048_576),
            LAN,
        );
        assert_eq!((n.blksize, n.windowsize), (1468, 4));
        assert_eq!(
            n.ack,
            [
                ("tsize", "1048576".to_owned()),
                ("blksize", "1468".to_owned()),
                ("windowsize", "4".to_owned())
            ]
        );
    }

    #[test]
    fn no_options_means_rfc1350_and_no_oack() {
        let n = negotiate(&[], Some(10), LAN);
        assert_eq!((n.blksize, n.windowsize, n.timeout), (512, 1, 1));
        assert!(n.ack.is_empty());
    }

    #[test]
    fn oversized_values_are_clamped_to_the_path_mtu_and_window_limit() {
        let n = negotiate(
            &opts(&[("blksize", "65464"), ("windowsize", "1000")]),
            None,
            LAN,
        );
        assert_eq!((n.blksize, n.windowsize), (1468, 64));
        assert_eq!(
            n.ack,
            [
                ("blksize", "1468".to_owned()),
                ("windowsize", "64".to_owned())
            ]
        );
        let n = negotiate(&opts(&[("blksize", "99999999999")]), None, LAN);
        assert!(n.ack.is_empty(), "unparsable values are ignored: {n:?}");
    }

    #[test]
    fn invalid_values_are_ignored_not_acknowledged() {
        let n = negotiate(
            &opts(&[
                ("blksize", "7"),
                ("windowsize", "0"),
                ("timeout", "0"),
                ("timeout", "256"),
                ("tsize", "x"),
                ("multicast", ""),
            ]),
            Some(5),
            LAN,
        );
        assert!(n.ack.is_empty(), "{n:?}");
        assert_eq!((n.blksize, n.windowsize, n.timeout), (512, 1, 1));
    }

    #[test]
    fn tsize_is_only_answered_when_the_size_is_known() {
        assert!(negotiate(&opts(&[("tsize", "0")]), None, LAN)
            .ack
            .is_empty());
        assert_eq!(
            negotiate(&opts(&[("timeout", "5"), ("tsize", "0")]), Some(0), LAN).ack,
            [("timeout", "5".to_owned()), ("tsize", "0".to_owned())]
        );
    }

    #[test]
    fn limits_follow_the_mtu() {
        assert_eq!(Limits::for_mtu(1500, 16).max_blksize, 1468);
        assert_eq!(Limits::for_mtu(9000, 16).max_blksize, 8968);
        assert_eq!(
            Limits::for_mtu(0, 0),
            Limits {
                max_blksize: 8,
                max_windowsize: 1,
                default_timeout: 1,
                max_timeout: MAX_TIMEOUT,
            }
        );
        assert_eq!(Limits::for_mtu(1500, 16).with_max_timeout(0).max_timeout, 1);
    }

    #[test]
    fn a_timeout_over_the_ceiling_is_left_out_not_changed() {
        let lan = LAN.with_max_timeout(5);
        let n = negotiate(
            &opts(&[("timeout", "255"), ("blksize", "1468"), ("tsize", "0")]),
            Some(9),
            lan,
        );
        assert!(n.timeout_capped);
        assert_eq!(n.timeout, 1, "the default, not what was asked");
        assert_eq!(
            n.ack,
            [("blksize", "1468".to_owned()), ("tsize", "9".to_owned())]
        );
        // At the ceiling: echoed as asked.
        let n = negotiate(&opts(&[("timeout", "5")]), None, lan);
        assert!(!n.timeout_capped);
        assert_eq!(
            (n.timeout, n.ack.clone()),
            (5, vec![("timeout", "5".to_owned())])
        );
        // Out of the RFC's range is invalid, not capped.
        assert!(!negotiate(&opts(&[("timeout", "256")]), None, lan).timeout_capped);
    }
}
