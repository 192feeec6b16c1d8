//! `http.origin`: where a rack fabric pulls the profile files it does not have. Validated
//! here into typed parts (scheme, host, port, path prefix), so the fetch never parses text.

use std::{path::PathBuf, time::Duration};

use crate::util::key_error::KeyError;

/// Default `http.origin_max_bytes`: 4 GiB, more than any kernel, initrd or live image.
pub const DEFAULT_ORIGIN_MAX_BYTES: u64 = 4 << 30;
/// Default `http.origin_timeout_s`: a 4 GiB image at about 40 Mbit/s.
pub const DEFAULT_ORIGIN_TIMEOUT_S: u64 = 900;

/// An origin's base URL, split: `http://10.80.0.1:8080/images/` is plain HTTP to
/// `10.80.0.1` port 8080, paths under `/images/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginUrl {
    /// `https` rather than `http`.
    pub https: bool,
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port (80 or 443 unless given).
    pub port: u16,
    /// The path files are under, beginning and ending with `/`.
    pub prefix: String,
}

impl OriginUrl {
    /// Parses an absolute `http` or `https` URL without query, fragment or user part.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri: hyper::Uri = text
            .parse()
            .map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => return Err(format!("{text:?}: scheme {other:?} is not http or https")),
            None => {
                return Err(format!(
                    "{text:?} is not an absolute http:// or https:// URL"
                ))
            }
        };
        let authority = uri
            .authority()
            .ok_or_else(|| format!("{text:?} has no host"))?;
        if authority.as_str().contains('@') {
            return Err(format!(
                "{text:?}: credentials in the URL are not supported"
            ));
        }
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        if host.is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        if uri.query().is_some() || text.contains('#') {
            return Err(format!("{text:?}: a base URL has no query or fragment"));
        }
        let mut prefix = uri.path().to_owned();
        if !prefix.starts_with('/') {
            prefix.insert(0, '/');
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Self {
            https,
            host,
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
            prefix,
        })
    }
}

impl std::fmt::Display for OriginUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.https { "https" } else { "http" };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{}", self.host, self.port, self.prefix)
        } else {
            write!(f, "{scheme}://{}:{}{}", self.host, self.port, self.prefix)
        }
    }
}

/// `http.origin` and its bounds, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OriginConfig {
    /// `http.origin`.
    pub url: OriginUrl,
    /// `http.origin_max_bytes`: a larger file is refused, during the fetch if the origin
    /// did not say its length first.
    pub max_bytes: u64,
    /// `http.origin_timeout_s`: one whole fetch, connect to rename.
    pub timeout: Duration,
    /// `http.origin_ca`: the CA certificates (PEM) an `https` origin is checked against
    /// (resolved against the config's folder when loaded).
    pub ca: Option<PathBuf>,
}

/// The `http.origin*` keys of `[http]`: `None` without `http.origin`. `root` says whether
/// `http.root` is set (fetched files are kept there).
pub fn from_wire(
    origin: Option<&str>,
    max_bytes: Option<u64>,
    timeout_s: Option<u64>,
    ca: Option<&str>,
    root: bool,
) -> Result<Option<OriginConfig>, KeyError> {
    let Some(text) = origin else {
        for (set, key) in [
            (max_bytes.is_some(), "http.origin_max_bytes"),
            (timeout_s.is_some(), "http.origin_timeout_s"),
            (ca.is_some(), "http.origin_ca"),
        ] {
            if set {
                return Err(KeyError::new(key, "has no effect without http.origin"));
            }
        }
        return Ok(None);
    };
    let url = OriginUrl::parse(text).map_err(|r| KeyError::new("http.origin", r))?;
    if !root {
        return Err(KeyError::new(
            "http.origin",
            "needs http.root: fetched files are kept there",
        ));
    }
    if ca.is_some() && !url.https {
        return Err(KeyError::new(
            "http.origin_ca",
            "only an https origin is checked against a CA",
        ));
    }
    if url.https && ca.is_none() {
        return Err(KeyError::new(
            "http.origin_ca",
            "an https origin needs the PEM file of the CA certificates to check it against",
        ));
    }
    let max_bytes = match max_bytes {
        Some(0) => return Err(KeyError::new("http.origin_max_bytes", "must be at least 1")),
        Some(v) => v,
        None => DEFAULT_ORIGIN_MAX_BYTES,
    };
    let timeout_s = match timeout_s {
        Some(0) => return Err(KeyError::new("http.origin_timeout_s", "must be at least 1")),
        Some(v) if v > 86_400 => {
            return Err(KeyError::new(
                "http.origin_timeout_s",
                format!("{v} is more than a day (86400)"),
            ))
        }
        Some(v) => v,
        None => DEFAULT_ORIGIN_TIMEOUT_S,
    };
    Ok(Some(OriginConfig {
        url,
        max_bytes,
        timeout: Duration::from_secs(timeout_s),
        ca: ca.map(PathBuf::from),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_split_into_typed_parts() {
        let u = OriginUrl::parse("http://10.80.0.1:8080/").expect("url");
        assert_eq!(
            u,
            OriginUrl {
                https: false,
                host: "10.80.0.1".into(),
                port: 8080,
                prefix: "/".into()
            }
        );
        let u = OriginUrl::parse("https://images.example/boot").expect("url");
        assert_eq!((u.https, u.port, u.prefix.as_str()), (true, 443, "/boot/"));
        assert_eq!(u.to_string(), "https://images.example:443/boot/");
        let u = OriginUrl::parse("http://[fd00::1]/").expect("v6");
        assert_eq!((u.host.as_str(), u.port), ("fd00::1", 80));
        assert_eq!(u.to_string(), "http://[fd00::1]:80/");
    }

    #[test]
    fn bad_origins_are_refused_with_the_key_and_the_reason() {
        let e = |origin: &str| from_wire(Some(origin), None, None, None, true).expect_err(origin);
        for (bad, why) in [
            ("10.80.0.1", "absolute"),
            ("/images", "absolute"),
            ("ftp://10.80.0.1/", "not http or https"),
            ("http://user:pw@10.80.0.1/", "credentials"),
            ("http://10.80.0.1/?x=1", "no query"),
            ("https://10.80.0.1/", "CA certificates"),
        ] {
            let err = e(bad);
            assert!(
                err.key.starts_with("http.origin") && err.reason.contains(why),
                "{bad}: {err:?}"
            );
        }
        let no_root = from_wire(Some("http://o/"), None, None, None, false).expect_err("root");
        assert!(no_root.reason.contains("http.root"), "{no_root:?}");
        let zero = from_wire(Some("http://o/"), Some(0), None, None, true).expect_err("zero");
        assert_eq!(zero.key, "http.origin_max_bytes");
        let stray = from_wire(None, None, Some(5), None, true).expect_err("stray");
        assert_eq!(stray.key, "http.origin_timeout_s");
        let ok = from_wire(Some("http://o/"), None, None, None, true)
            .expect("valid")
            .expect("set");
        assert_eq!(ok.max_bytes, DEFAULT_ORIGIN_MAX_BYTES);
        assert_eq!(ok.timeout, Duration::from_secs(DEFAULT_ORIGIN_TIMEOUT_S));
    }
}
