//! `[[webhooks]]`: where the event log is delivered, signed. Validated without I/O here; the
//! secret file's mode, owner and contents are checked by [`super::Config::load`] (as the admin
//! token's are) and read again when the webhook service starts.
//!
//! Webhook URLs and secrets come from this file only, never from the API: a leaked admin token
//! must not be able to point the daemon at an address of its choosing.

use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{
    model::ledger::events::{EventType, TypeSet},
    redfish::{tls::parse_fingerprint, TlsPolicy},
    util::key_error::KeyError,
};

/// Most webhooks one daemon delivers to (a task and a cursor each).
pub const MAX_WEBHOOKS: usize = 16;

/// One `[[webhooks]]` entry as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireWebhook {
    /// A label for logs and metrics (default: `hook<N>`, N its place in the file).
    pub name: Option<String>,
    /// `http://host[:port]/path` or `https://…`.
    pub url: Option<String>,
    /// Event types to deliver (`["host.booted", "host.failed"]`); default every type.
    pub events: Option<Vec<String>>,
    /// File holding the HMAC secret (mode 0600 or stricter, owned by the daemon's user).
    pub secret_file: Option<String>,
    /// PEM CA certificates that sign an https receiver's certificate.
    pub ca_file: Option<String>,
    /// SHA-256 fingerprint of an https receiver's certificate (instead of `ca_file`).
    pub fingerprint: Option<String>,
    /// Seconds one delivery attempt may take (default 5).
    pub timeout_s: Option<u64>,
    /// Attempts per event before it is given up (default 8).
    pub max_attempts: Option<u32>,
}

/// One `[[webhooks]]` entry, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct WebhookConfig {
    /// Label for logs and the `hook` metric label.
    pub name: String,
    /// `scheme://host:port`, as the transport takes it.
    pub base: String,
    /// Path and query the POST goes to.
    pub path: String,
    /// How an https receiver's certificate is checked (`None` for http).
    pub tls: Option<TlsPolicy>,
    /// Types delivered.
    pub events: TypeSet,
    /// The secret's file (relative paths are resolved against the config's folder by
    /// [`super::Config::load`]).
    pub secret_file: PathBuf,
    /// Bound on one attempt.
    pub timeout: Duration,
    /// Attempts per event.
    pub max_attempts: u32,
}

/// Validates every `[[webhooks]]` entry (`webhooks[i].key` in errors).
pub fn from_wire(hooks: &[WireWebhook]) -> Result<Vec<WebhookConfig>, KeyError> {
    if hooks.len() > MAX_WEBHOOKS {
        return Err(KeyError::new(
            "webhooks",
            format!("{} webhooks; at most {MAX_WEBHOOKS}", hooks.len()),
        ));
    }
    let mut out: Vec<WebhookConfig> = Vec::with_capacity(hooks.len());
    for (i, w) in hooks.iter().enumerate() {
        let hook = one(i, w)?;
        if out.iter().any(|h| h.name == hook.name) {
            return Err(KeyError::new(
                format!("webhooks[{i}].name"),
                format!("{:?} is used by another webhook", hook.name),
            ));
        }
        out.push(hook);
    }
    Ok(out)
}

fn one(i: usize, w: &WireWebhook) -> Result<WebhookConfig, KeyError> {
    let key = |k: &str| format!("webhooks[{i}].{k}");
    let name = match &w.name {
        Some(n) => {
            let ok = !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
            if !ok {
                return Err(KeyError::new(
                    key("name"),
                    format!("{n:?}: give 1 to 64 letters, digits, '-', '_' or '.'"),
                ));
            }
            n.clone()
        }
        None => format!("hook{i}"),
    };
    let url = w
        .url
        .as_deref()
        .ok_or_else(|| KeyError::new(key("url"), "missing: where to POST events"))?;
    let (https, base, path) = split_url(url).map_err(|r| KeyError::new(key("url"), r))?;
    let tls = match (https, &w.ca_file, &w.fingerprint) {
        (false, None, None) => None,
        (false, _, _) => {
            return Err(KeyError::new(
                key("url"),
                "ca_file and fingerprint are for https URLs",
            ))
        }
        (true, Some(ca), None) => Some(TlsPolicy::CaFile(PathBuf::from(ca))),
        (true, None, Some(fp)) => Some(TlsPolicy::Fingerprint(
            parse_fingerprint(fp).map_err(|e| KeyError::new(key("fingerprint"), e.to_string()))?,
        )),
        (true, Some(_), Some(_)) => {
            return Err(KeyError::new(
                key("fingerprint"),
                "give ca_file or fingerprint, not both",
            ))
        }
        (true, None, None) => {
            return Err(KeyError::new(
                key("url"),
                "an https receiver needs ca_file or fingerprint to be checked against",
            ))
        }
    };
    let events = match &w.events {
        None => TypeSet::ALL,
        Some(list) => {
            let mut set = TypeSet::empty();
            for (j, t) in list.iter().enumerate() {
                let t: EventType =
                    t.parse()
                        .map_err(|e: crate::model::ledger::events::UnknownEventType| {
                            KeyError::new(format!("webhooks[{i}].events[{j}]"), e.to_string())
                        })?;
                set = set.with(t);
            }
            if set.is_empty() {
                return Err(KeyError::new(
                    key("events"),
                    "empty: list the event types to deliver, or leave the key out for all",
                ));
            }
            set
        }
    };
    let secret_file = w.secret_file.as_deref().ok_or_else(|| {
        KeyError::new(
            key("secret_file"),
            "missing: every delivery is signed (`bootfabric admin token create FILE` makes one)",
        )
    })?;
    let timeout_s = w.timeout_s.unwrap_or(5);
    if !(1..=60).contains(&timeout_s) {
        return Err(KeyError::new(
            key("timeout_s"),
            format!("{timeout_s}: give 1 to 60 seconds"),
        ));
    }
    let max_attempts = w.max_attempts.unwrap_or(8);
    if !(1..=100).contains(&max_attempts) {
        return Err(KeyError::new(
            key("max_attempts"),
            format!("{max_attempts}: give 1 to 100"),
        ));
    }
    Ok(WebhookConfig {
        name,
        base,
        path,
        tls,
        events,
        secret_file: PathBuf::from(secret_file),
        timeout: Duration::from_secs(timeout_s),
        max_attempts,
    })
}

/// `(https, "scheme://host:port", "/path?query")` of a webhook URL: http or https, a host, no
/// user info (credentials belong in the signature, not the URL).
fn split_url(url: &str) -> Result<(bool, String, String), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    let https = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url:?}: the scheme must be https or http")),
    };
    let authority = uri
        .authority()
        .ok_or_else(|| format!("{url:?} has no host"))?;
    if authority.as_str().contains('@') {
        return Err(format!(
            "{url:?}: no user info in the URL; deliveries are authenticated by their signature"
        ));
    }
    let host = authority.host();
    if host.is_empty() {
        return Err(format!("{url:?} has no host"));
    }
    let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
    let scheme = if https { "https" } else { "http" };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_owned()
    };
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    let path = if path.is_empty() {
        "/".to_owned()
    } else {
        path
    };
    Ok((https, format!("{scheme}://{host}:{port}"), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<WebhookConfig>, KeyError> {
        #[derive(Deserialize)]
        struct F {
            webhooks: Vec<WireWebhook>,
        }
        let f: F = toml::from_str(text).expect("toml");
        from_wire(&f.webhooks)
    }

    #[test]
    fn a_hook_is_validated_with_its_defaults() {
        let hooks = parse(
            "[[webhooks]]\nurl = 'http://10.0.0.2:8080/hooks/boot?x=1'\nsecret_file = 's'\n\
             [[webhooks]]\nname = 'ops'\nurl = 'https://[fd00::2]/h'\nsecret_file = 's'\n\
             fingerprint = '00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff'\n\
             events = ['host.booted', 'host.failed']\ntimeout_s = 2\nmax_attempts = 3\n",
        )
        .expect("valid");
        assert_eq!(hooks[0].name, "hook0");
        assert_eq!(hooks[0].base, "http://10.0.0.2:8080");
        assert_eq!(hooks[0].path, "/hooks/boot?x=1");
        assert_eq!(hooks[0].events, TypeSet::ALL);
        assert_eq!(
            (hooks[0].timeout, hooks[0].max_attempts),
            (Duration::from_secs(5), 8)
        );
        assert_eq!(hooks[1].base, "https://[fd00::2]:443");
        assert!(matches!(hooks[1].tls, Some(TlsPolicy::Fingerprint(_))));
        assert!(hooks[1].events.contains(EventType::HostFailed));
        assert!(!hooks[1].events.contains(EventType::HostPhase));
    }

    #[test]
    fn bad_hooks_name_their_key() {
        let cases = [
            ("url = 'ftp://x/'\nsecret_file = 's'", "webhooks[0].url"),
            (
                "url = 'http://u:p@x/'\nsecret_file = 's'",
                "webhooks[0].url",
            ),
            ("url = 'https://x/'\nsecret_file = 's'", "webhooks[0].url"),
            ("url = 'http://x/'", "webhooks[0].secret_file"),
            ("secret_file = 's'", "webhooks[0].url"),
            (
                "url = 'http://x/'\nsecret_file = 's'\nevents = ['host.nope']",
                "webhooks[0].events[0]",
            ),
            (
                "url = 'http://x/'\nsecret_file = 's'\nevents = []",
                "webhooks[0].events",
            ),
            (
                "url = 'http://x/'\nsecret_file = 's'\ntimeout_s = 0",
                "webhooks[0].timeout_s",
            ),
            (
                "url = 'http://x/'\nsecret_file = 's'\nname = 'a b'",
                "webhooks[0].name",
            ),
        ];
        for (body, key) in cases {
            let err = parse(&format!("[[webhooks]]\n{body}\n")).expect_err(body);
            assert_eq!(err.key, key, "{body}: {err}");
        }
        let twice = "[[webhooks]]\nname = 'a'\nurl = 'http://x/'\nsecret_file = 's'\n".repeat(2);
        assert_eq!(parse(&twice).expect_err("dup").key, "webhooks[1].name");
    }
}
