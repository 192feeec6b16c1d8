//! The admin API's client, shared by every command that talks to the running daemon
//! (`reboot`, `hosts`): where the daemon listens (`admin.listen` or `--admin`), the bearer
//! token (`admin.token_file` or `--token-file`), and, when the admin server speaks TLS, its
//! certificate pinned (`admin.tls_cert`, on this machine) and `--client-cert` presented.
//!
//! Errors of `/api/v1` come back as RFC 9457 problems; [`problem_line`] turns one into the
//! single line the commands print (`bootfabric: 422 <title>: mac: <reason>`). Text from the
//! server is printed only after control characters are dropped: a terminal is not a place
//! for someone else's escape sequences.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{anyhow, Context as _};
use hyper::{
    body::Bytes,
    header::{HeaderName, HeaderValue, AUTHORIZATION, ETAG},
    Method,
};
use serde::Deserialize;

use crate::{config::Config, redfish::transport::Endpoint, redfish::RedfishError};

/// How to reach the daemon's admin API (flattened into each client command's arguments).
#[derive(Clone, Debug, clap::Args)]
pub struct ClientArgs {
    /// Config file (TOML): where the daemon's admin API listens.
    #[arg(short, long, default_value = "/etc/bootfabric/bootfabric.toml")]
    pub config: PathBuf,
    /// Admin API address (default: admin.listen from the config).
    #[arg(long)]
    pub admin: Option<SocketAddr>,
    /// File holding the admin token (default: admin.token_file from the config).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Client certificate (PEM) to present when the admin server asks for one
    /// (admin.client_ca).
    #[arg(long, requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    /// Private key (PEM) of --client-cert.
    #[arg(long, requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// Why a client could not be set up.
#[derive(Debug)]
pub enum SetupError {
    /// The config is invalid, or neither it nor `--admin` says where the daemon is (exit 2).
    Usage(String),
    /// Anything else: the token file, the certificates (exit 1).
    Other(anyhow::Error),
}

impl From<anyhow::Error> for SetupError {
    fn from(e: anyhow::Error) -> Self {
        Self::Other(e)
    }
}

/// Loads the config the client arguments name: required unless `--admin` is given, and then
/// read only when it exists (for the token file and TLS).
pub fn load_config(args: &ClientArgs) -> Result<Option<Config>, SetupError> {
    if args.admin.is_some() && !args.config.exists() {
        return Ok(None);
    }
    Config::load(&args.config)
        .map(Some)
        .map_err(|e| SetupError::Usage(format!("invalid configuration: {e}")))
}

/// The admin API of the daemon: plain HTTP, or TLS with the server's certificate pinned.
pub struct AdminClient {
    endpoint: Endpoint,
    addr: SocketAddr,
    /// `Authorization: Bearer …`, when a token file is known.
    authorization: Option<HeaderValue>,
}

/// One answer of the admin API.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status code.
    pub status: u16,
    /// The resource's `ETag`, when sent.
    pub etag: Option<HeaderValue>,
    /// `Bootfabric-Generation`, when sent (every write's answer carries it).
    pub generation: Option<u64>,
    /// The body.
    pub body: Bytes,
}

impl Reply {
    /// A 2xx answer.
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Why a call got no answer.
#[derive(Debug)]
pub enum CallError {
    /// Nothing answered at the address (refused, unreachable, timed out): the daemon is not
    /// running there. `hosts ls` falls back to the local inventory on this one only.
    Unreachable(String),
    /// Something answered but the exchange failed (TLS, protocol).
    Failed(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unreachable(why) => write!(f, "{why} (is `bootfabric serve` running?)"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

impl AdminClient {
    /// The client the arguments and the config (if any) describe.
    pub fn new(cfg: Option<&Config>, args: &ClientArgs) -> Result<Self, SetupError> {
        let addr = match (args.admin, cfg) {
            (Some(a), _) => a,
            (None, Some(cfg)) => {
                let mut a = cfg.admin.listen;
                if a.ip().is_unspecified() {
                    a.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
                }
                a
            }
            (None, None) => return Err(SetupError::Usage("give --admin or a config".into())),
        };
        let token_file = args
            .token_file
            .clone()
            .or_else(|| cfg.and_then(|c| c.admin.token_file.clone()));
        let authorization = match token_file {
            Some(path) => {
                let token = crate::config::secrets::token::read_for_client(&path)
                    .map_err(|e| anyhow!("admin token: {e}"))?;
                let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                    .context("the admin token is not a header value")?;
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };
        let tls = cfg.and_then(|c| c.admin.tls.as_ref());
        let endpoint = match tls {
            None => Endpoint::new(&format!("http://{addr}"), None, Duration::from_secs(30)),
            Some(tls) => Endpoint::new(
                &format!("https://{addr}"),
                Some(client_tls(&tls.cert, args)?),
                Duration::from_secs(30),
            ),
        }
        .map_err(|e| anyhow!(e))?;
        Ok(Self {
            endpoint,
            addr,
            authorization,
        })
    }

    /// Where the daemon is expected.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one request (`path` with its query), with the token and `headers`.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(HeaderName, HeaderValue)],
        body: Option<Bytes>,
    ) -> Result<Reply, CallError> {
        let mut all: Vec<(HeaderName, HeaderValue)> = headers.to_vec();
        if let Some(auth) = &self.authorization {
            all.push((AUTHORIZATION, auth.clone()));
        }
        let r = self
            .endpoint
            .send(method, path, &all, body)
            .await
            .map_err(|e| match e {
                RedfishError::Connect(_) | RedfishError::Timeout(_) => {
                    CallError::Unreachable(format!("admin API at {}: {e}", self.addr))
                }
                other => CallError::Failed(format!("admin API at {}: {other}", self.addr)),
            })?;
        let generation = r
            .headers
            .get("bootfabric-generation")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse().ok());
        Ok(Reply {
            status: r.status.as_u16(),
            etag: r.headers.get(ETAG).cloned(),
            generation,
            body: r.body,
        })
    }
}

/// An RFC 9457 problem, as the admin API sends it; every field optional so a partial or
/// foreign body still prints something.
#[derive(Debug, Default, Deserialize)]
pub struct Problem {
    /// Short summary of the kind.
    #[serde(default)]
    pub title: Option<String>,
    /// This occurrence.
    #[serde(default)]
    pub detail: Option<String>,
    /// Fields at fault.
    #[serde(default)]
    pub errors: Vec<ProblemField>,
}

/// One field at fault.
#[derive(Debug, Deserialize)]
pub struct ProblemField {
    /// Dotted field name (`mac`, `meta.role`).
    #[serde(default)]
    pub field: String,
    /// Why.
    #[serde(default)]
    pub reason: String,
}

/// Longest server text printed in one problem line.
const MAX_LINE: usize = 400;

/// The one line printed for an error answer: `bootfabric: 422 <title>: mac: <reason>` (one
/// `field: reason` per field at fault, `; `-separated), or the detail when no field is named,
/// or the body's text when it is not a problem at all.
pub fn problem_line(status: u16, body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Problem>(body) {
        Ok(p) => {
            let title = p.title.unwrap_or_default();
            let what = if p.errors.is_empty() {
                p.detail.unwrap_or_default()
            } else {
                p.errors
                    .iter()
                    .map(|e| {
                        if e.field.is_empty() {
                            e.reason.clone()
                        } else {
                            format!("{}: {}", e.field, e.reason)
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            };
            match (title.is_empty(), what.is_empty()) {
                (false, false) => format!("{title}: {what}"),
                (false, true) => title,
                (true, _) => what,
            }
        }
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    };
    let text = printable(&text);
    if text.is_empty() {
        format!("bootfabric: {status}")
    } else {
        format!("bootfabric: {status} {text}")
    }
}

/// `text` without control characters (newlines become spaces), at most [`MAX_LINE`] chars.
pub fn printable(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c == '\n' || c == '\t' { ' ' } else { c })
        .filter(|c| !c.is_control())
        .take(MAX_LINE)
        .collect();
    if text.chars().count() > MAX_LINE {
        out.push('…');
    }
    out
}

/// A current-thread runtime for one command.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
}

/// TLS towards the admin server: its certificate (`admin.tls_cert`, readable on this
/// machine) pinned by SHA-256, and the operator's client certificate when given.
fn client_tls(server_cert: &Path, args: &ClientArgs) -> anyhow::Result<Arc<rustls::ClientConfig>> {
    use rustls::pki_types::{pem::PemObject as _, CertificateDer, PrivateKeyDer};
    use sha2::{Digest as _, Sha256};
    let leaf = CertificateDer::pem_file_iter(server_cert)
        .with_context(|| format!("admin.tls_cert {}", server_cert.display()))?
        .next()
        .ok_or_else(|| {
            anyhow!(
                "admin.tls_cert {} holds no certificate",
                server_cert.display()
            )
        })?
        .with_context(|| format!("admin.tls_cert {}", server_cert.display()))?;
    let pin: [u8; 32] = Sha256::digest(leaf.as_ref()).into();
    let identity = match (&args.client_cert, &args.client_key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .with_context(|| format!("--client-cert {}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("--client-cert {}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .with_context(|| format!("--client-key {}", key.display()))?;
            Some((chain, key))
        }
        _ => None,
    };
    crate::redfish::tls::pinned_with_identity(pin, identity).map_err(|e| anyhow!(e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_validation_problem_prints_status_title_and_each_field() {
        let body = br#"{"type":"https://bootfabric.dev/problems/validation",
            "title":"The request has invalid fields","status":422,"detail":"mac: bad",
            "errors":[{"field":"mac","reason":"\"zz\" is not a MAC address"},
                      {"field":"meta.role","reason":"too long"}]}"#;
        assert_eq!(
            problem_line(422, body),
            "bootfabric: 422 The request has invalid fields: mac: \"zz\" is not a MAC address; \
             meta.role: too long"
        );
    }

    #[test]
    fn a_problem_without_fields_prints_its_detail_and_other_bodies_their_text() {
        let body =
            br#"{"type":"about:blank","title":"Not Found","status":404,"detail":"no host node9"}"#;
        assert_eq!(
            problem_line(404, body),
            "bootfabric: 404 Not Found: no host node9"
        );
        assert_eq!(
            problem_line(502, b"bad gateway\n"),
            "bootfabric: 502 bad gateway"
        );
        assert_eq!(problem_line(500, b""), "bootfabric: 500");
    }

    #[test]
    fn server_text_loses_its_escape_sequences_and_is_bounded() {
        let body = br#"{"title":"x\u001b[2J","detail":"a\nb"}"#;
        assert_eq!(problem_line(400, body), "bootfabric: 400 x[2J: a b");
        let long = "y".repeat(5000);
        let line = problem_line(400, long.as_bytes());
        assert!(line.chars().count() < MAX_LINE + 20, "{}", line.len());
        assert!(line.ends_with('…'));
    }
}
