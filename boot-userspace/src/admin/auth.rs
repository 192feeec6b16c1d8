//! Who may do what on the admin API. Pure: a request's method, headers, peer address and
//! TLS identity in, a verdict out. No sockets, no files, no clock here.
//!
//! Read-only endpoints (metrics, health, the ledger's views, a run's status) are served to
//! `admin.allow`. Control (starting or cancelling a reboot run, and every mutating endpoint
//! to come) needs more: the bearer token of `admin.token_file` when there is one, else a
//! loopback peer; a client certificate too when `admin.client_ca` is set. A control body
//! must be `application/json`, which a browser cannot send cross-site without a preflight.

use std::{fmt, net::IpAddr};

use hyper::{header, http::HeaderMap, Method, StatusCode};

use crate::config::secrets::token::Token;

/// What a request may do to the daemon.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Reads state: served to `admin.allow`.
    Read,
    /// Changes state: needs the control credentials.
    Control,
}

impl Access {
    /// GET and HEAD read (HTTP says they are safe, and no route of this API mutates on
    /// them); every other method controls. Deciding from the method, before any route is
    /// looked up, means a new mutating route cannot forget to ask for credentials, and an
    /// unknown path tells an unauthenticated caller nothing.
    pub fn of(method: &Method) -> Self {
        if method == Method::GET || method == Method::HEAD {
            Self::Read
        } else {
            Self::Control
        }
    }
}

/// What control calls need, from the config.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    /// `admin.token_file`'s token; without it, control is for loopback peers only.
    pub token: Option<Token>,
    /// `admin.client_ca` is set: control also needs a verified client certificate.
    pub client_ca: bool,
}

/// What the server knows about one control request's caller.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// Peer address (IPv4-mapped IPv6 already unmapped).
    pub peer: IpAddr,
    /// The `Authorization` header, if any.
    pub authorization: Option<&'a [u8]>,
    /// Subject of the client certificate rustls verified against `admin.client_ca`.
    pub client_cert: Option<&'a str>,
    /// The `Host` header, if any.
    pub host: Option<&'a [u8]>,
}

/// How a control caller proved itself: written in the audit log line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proof {
    /// Presented the right bearer token.
    pub token: bool,
    /// Subject of its verified client certificate.
    pub client_cert: Option<String>,
}

impl fmt::Display for Proof {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.token, &self.client_cert) {
            (true, Some(s)) => write!(f, "token and client certificate {s}"),
            (true, None) => f.write_str("token"),
            (false, Some(s)) => write!(f, "loopback peer and client certificate {s}"),
            (false, None) => f.write_str("loopback peer (no admin.token_file)"),
        }
    }
}

/// Why a control request is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// No `Authorization: Bearer` header (401).
    MissingToken,
    /// A bearer token that is not `admin.token_file`'s (401).
    WrongToken,
    /// No token is configured and the peer is not loopback (403).
    NotLoopback,
    /// No token is configured, the peer is loopback, but the request names another host:
    /// a browser page whose own name resolves to a loopback address (DNS rebinding) (403).
    ForeignHost,
    /// `admin.client_ca` is set and the connection has no client certificate (403).
    NoClientCertificate,
    /// A body that is not `application/json` (415).
    NotJson,
}

impl Refusal {
    /// The status code sent.
    pub fn status(self) -> StatusCode {
        match self {
            Self::MissingToken | Self::WrongToken => StatusCode::UNAUTHORIZED,
            Self::NotLoopback | Self::ForeignHost | Self::NoClientCertificate => {
                StatusCode::FORBIDDEN
            }
            Self::NotJson => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        }
    }

    /// The `outcome` label of `bootfabric_admin_control_calls_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::WrongToken => "wrong_token",
            Self::NotLoopback => "not_loopback",
            Self::ForeignHost => "foreign_host",
            Self::NoClientCertificate => "no_client_certificate",
            Self::NotJson => "not_json",
        }
    }

    /// The reason, for the caller and the log.
    pub fn reason(self) -> &'static str {
        match self {
            Self::MissingToken => "control calls need `Authorization: Bearer <admin.token_file>`",
            Self::WrongToken => "wrong bearer token",
            Self::NotLoopback => {
                "control calls are accepted from loopback only: set admin.token_file to allow others"
            }
            Self::ForeignHost => {
                "without admin.token_file, control calls are accepted from loopback only, \
                 addressed to localhost, 127.0.0.1 or [::1]: set admin.token_file to use a name"
            }
            Self::NoClientCertificate => {
                "control calls need a client certificate signed by admin.client_ca"
            }
            Self::NotJson => {
                "control calls take a body of Content-Type application/json only \
                 (application/merge-patch+json for PATCH)"
            }
        }
    }
}

/// Decides whether `caller` may make a control call under `policy`.
pub fn authorize(policy: &Policy, caller: &Caller<'_>) -> Result<Proof, Refusal> {
    if policy.client_ca && caller.client_cert.is_none() {
        return Err(Refusal::NoClientCertificate);
    }
    let token = match &policy.token {
        Some(token) => {
            let presented = caller
                .authorization
                .and_then(bearer)
                .ok_or(Refusal::MissingToken)?;
            if !token.matches(presented) {
                return Err(Refusal::WrongToken);
            }
            true
        }
        // A loopback peer alone is not enough: a web page the operator opens can rebind its
        // own name to 127.0.0.1 and then call this server as same-origin. Its requests still
        // carry its name in Host; a loopback client of our own addresses the server by a
        // loopback address or `localhost`.
        None if caller.peer.is_loopback() && caller.host.is_none_or(loopback_host) => false,
        None if caller.peer.is_loopback() => return Err(Refusal::ForeignHost),
        None => return Err(Refusal::NotLoopback),
    };
    Ok(Proof {
        token,
        client_cert: caller.client_cert.map(str::to_owned),
    })
}

/// Whether a `Host` header names this machine by loopback: `localhost`, a loopback IPv4
/// address or `[::1]`, with or without a port.
fn loopback_host(host: &[u8]) -> bool {
    let Ok(host) = std::str::from_utf8(host) else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        Some(rest) => match rest.split_once(']') {
            Some((name, _)) => name,
            None => return false,
        },
        None => host.rsplit_once(':').map_or(host, |(name, port)| {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                name
            } else {
                host
            }
        }),
    };
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// The credentials of `Authorization: Bearer <credentials>` (scheme case-insensitive,
/// RFC 6750 section 2.1).
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(6)?;
    if !scheme.eq_ignore_ascii_case(b"bearer") {
        return None;
    }
    let rest = rest.strip_prefix(b" ")?;
    let start = rest.iter().position(|b| *b != b' ')?;
    let end = rest.iter().rposition(|b| *b != b' ')?;
    Some(&rest[start..=end])
}

/// A control request's body must be JSON: a POST (or PUT, PATCH) always, any other method
/// when it carries a body. A DELETE without one is fine. This is what a browser's
/// cross-site form or `text/plain` fetch cannot send without a CORS preflight (which this
/// server never answers).
pub fn body_type_ok(method: &Method, headers: &HeaderMap) -> bool {
    let has_body = method == Method::POST
        || method == Method::PUT
        || method == Method::PATCH
        || headers.contains_key(header::TRANSFER_ENCODING)
        || headers
            .get(header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0");
    if !has_body {
        return true;
    }
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| {
            let media = media.trim();
            media.eq_ignore_ascii_case("application/json")
                // RFC 7396's type, for PATCH: still not one a cross-site form can send.
                || (method == Method::PATCH
                    && media.eq_ignore_ascii_case("application/merge-patch+json"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::header::HeaderValue;

    const TOKEN: &str = "0123456789abcdef0123456789abcdef";

    fn policy(token: bool, client_ca: bool) -> Policy {
        Policy {
            token: token.then(|| Token::parse(TOKEN.as_bytes()).expect("token")),
            client_ca,
        }
    }

    fn caller<'a>(peer: &str, auth: Option<&'a str>, cert: Option<&'a str>) -> Caller<'a> {
        Caller {
            peer: peer.parse().expect("ip"),
            authorization: auth.map(str::as_bytes),
            client_cert: cert,
            host: None,
        }
    }

    #[test]
    fn a_loopback_grant_needs_a_loopback_host_so_a_rebound_page_gets_nothing() {
        let p = policy(false, false);
        for host in [
            "127.0.0.1:9370",
            "localhost:9370",
            "LOCALHOST",
            "[::1]:9370",
            "127.0.0.2",
            "[::1]",
        ] {
            let c = Caller {
                host: Some(host.as_bytes()),
                ..caller("127.0.0.1", None, None)
            };
            assert!(authorize(&p, &c).is_ok(), "{host}");
        }
        for host in [
            "evil.example:9370",
            "evil.example",
            "10.0.0.1:9370",
            "localhost.evil.example",
            "[::1",
            "",
        ] {
            let c = Caller {
                host: Some(host.as_bytes()),
                ..caller("127.0.0.1", None, None)
            };
            assert_eq!(authorize(&p, &c), Err(Refusal::ForeignHost), "{host}");
        }
        // With a token the name does not matter: a rebound page cannot know the token.
        let bearer = format!("Bearer {TOKEN}");
        let c = Caller {
            host: Some(b"fabric01.example:9370"),
            ..caller("10.0.0.5", Some(&bearer), None)
        };
        assert!(authorize(&policy(true, false), &c).is_ok());
    }

    #[test]
    fn methods_split_read_from_control() {
        assert_eq!(Access::of(&Method::GET), Access::Read);
        assert_eq!(Access::of(&Method::HEAD), Access::Read);
        for m in [
            Method::POST,
            Method::DELETE,
            Method::PUT,
            Method::PATCH,
            Method::OPTIONS,
            Method::from_bytes(b"REBOOT").expect("extension method"),
        ] {
            assert_eq!(Access::of(&m), Access::Control, "{m}");
        }
    }

    #[test]
    fn without_a_token_only_loopback_controls() {
        let p = policy(false, false);
        assert_eq!(
            authorize(&p, &caller("127.0.0.1", None, None)),
            Ok(Proof {
                token: false,
                client_cert: None
            })
        );
        assert!(authorize(&p, &caller("::1", None, None)).is_ok());
        assert_eq!(
            authorize(&p, &caller("10.77.0.2", None, None)),
            Err(Refusal::NotLoopback)
        );
        // A token nobody configured proves nothing.
        assert_eq!(
            authorize(
                &p,
                &caller("10.77.0.2", Some(&format!("Bearer {TOKEN}")), None)
            ),
            Err(Refusal::NotLoopback)
        );
    }

    #[test]
    fn with_a_token_everyone_needs_it_loopback_too() {
        let p = policy(true, false);
        let ok = format!("Bearer {TOKEN}");
        let lower = format!("bearer  {TOKEN} ");
        for peer in ["10.77.0.2", "127.0.0.1"] {
            assert_eq!(
                authorize(&p, &caller(peer, None, None)),
                Err(Refusal::MissingToken)
            );
            assert_eq!(
                authorize(&p, &caller(peer, Some(&ok), None)).map(|p| p.token),
                Ok(true)
            );
        }
        assert!(authorize(&p, &caller("10.77.0.2", Some(&lower), None)).is_ok());
        for bad in [
            "Bearer wrong-token-wrong-token",
            "Bearer",
            "Bearer ",
            &format!("Basic {TOKEN}"),
            &format!("Bearer{TOKEN}"),
            TOKEN,
        ] {
            let r = authorize(&p, &caller("10.77.0.2", Some(bad), None));
            assert!(
                matches!(r, Err(Refusal::WrongToken | Refusal::MissingToken)),
                "{bad}: {r:?}"
            );
        }
    }

    #[test]
    fn a_client_ca_adds_a_certificate_to_the_token() {
        let p = policy(true, true);
        let ok = format!("Bearer {TOKEN}");
        assert_eq!(
            authorize(&p, &caller("10.77.0.2", Some(&ok), None)),
            Err(Refusal::NoClientCertificate)
        );
        assert_eq!(
            authorize(&p, &caller("10.77.0.2", None, Some("CN=ops"))),
            Err(Refusal::MissingToken)
        );
        let proof = authorize(&p, &caller("10.77.0.2", Some(&ok), Some("CN=ops"))).expect("ok");
        assert_eq!(proof.to_string(), "token and client certificate CN=ops");
    }

    #[test]
    fn control_bodies_must_be_json() {
        let h = |pairs: &[(&str, &str)]| {
            let mut m = HeaderMap::new();
            for (k, v) in pairs {
                m.insert(
                    header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
                    HeaderValue::from_str(v).expect("value"),
                );
            }
            m
        };
        let json = h(&[("content-type", "application/json")]);
        assert!(body_type_ok(&Method::POST, &json));
        assert!(body_type_ok(
            &Method::POST,
            &h(&[("content-type", "Application/JSON; charset=utf-8")])
        ));
        for bad in [
            "text/plain",
            "text/plain;charset=UTF-8",
            "application/x-www-form-urlencoded",
            "multipart/form-data; boundary=x",
            "application/jsonp",
        ] {
            assert!(
                !body_type_ok(&Method::POST, &h(&[("content-type", bad)])),
                "{bad}"
            );
        }
        assert!(!body_type_ok(&Method::POST, &HeaderMap::new()));
        let merge = h(&[("content-type", "application/merge-patch+json")]);
        assert!(body_type_ok(&Method::PATCH, &merge));
        assert!(body_type_ok(&Method::PATCH, &json));
        assert!(
            !body_type_ok(&Method::POST, &merge),
            "merge patches are for PATCH"
        );
        assert!(body_type_ok(&Method::DELETE, &HeaderMap::new()));
        assert!(body_type_ok(
            &Method::DELETE,
            &h(&[("content-length", "0")])
        ));
        assert!(!body_type_ok(
            &Method::DELETE,
            &h(&[("content-length", "12"), ("content-type", "text/plain")])
        ));
        assert!(!body_type_ok(
            &Method::DELETE,
            &h(&[("transfer-encoding", "chunked")])
        ));
    }
}
