//! Redfish BMC client: service root discovery, sessions (basic auth where a BMC has none),
//! systems, one-time boot override, reset and power state, with bounded retries.
//!
//! - [`tls`]: certificate verification policies (CA file, fingerprint pin, logged opt-out);
//! - [`transport`]: one HTTP/1.1 exchange over TCP or TLS with a timeout;
//! - [`client`]: the Redfish operations and their retry policy (pure decisions apart).
//!
//! Credentials come from a file or an environment variable and are never formatted: their
//! `Debug` prints a placeholder, and no error carries them.

pub mod client;
pub mod tls;
pub mod transport;

use std::{path::PathBuf, time::Duration};

pub use client::{BootMode, BootTarget, Client, PowerState, System};
pub use tls::TlsPolicy;

/// What can go wrong talking to a BMC. No variant carries a credential.
#[derive(Debug, thiserror::Error)]
pub enum RedfishError {
    /// TCP connect or HTTP exchange failed.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// TLS setup or verification failed.
    #[error("TLS: {0}")]
    Tls(String),
    /// The whole exchange took longer than its bound.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The BMC answered with an error status.
    #[error("{method} {path}: HTTP {status}{}", message.as_deref().map(|m| format!(": {m}")).unwrap_or_default())]
    Status {
        /// Method.
        method: String,
        /// Path.
        path: String,
        /// Status code.
        status: u16,
        /// The Redfish error message, when the body had one.
        message: Option<String>,
    },
    /// The credentials were refused.
    #[error("the BMC refused the credentials (HTTP {0})")]
    Unauthorized(u16),
    /// The BMC's answer is not what Redfish promises.
    #[error("unexpected answer: {0}")]
    Protocol(String),
    /// The BMC accepted a change but did not keep it (seen on some firmware).
    #[error("{0}")]
    NotApplied(String),
    /// A reset type this BMC does not offer.
    #[error("the BMC offers none of the reset types {wanted:?} (it has {offered:?})")]
    NoResetType {
        /// What we would have used.
        wanted: Vec<String>,
        /// What the BMC advertises.
        offered: Vec<String>,
    },
    /// Credentials could not be read.
    #[error("credentials: {0}")]
    Credentials(String),
}

impl RedfishError {
    /// Whether trying again may help: network trouble, timeouts, 5xx and 409 (the BMC is busy
    /// with another change). Client errors and refused credentials are final.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Connect(_) | Self::Timeout(_) => true,
            Self::Status { status, .. } => matches!(status, 409 | 429 | 500 | 502 | 503 | 504),
            _ => false,
        }
    }
}

/// A password that is never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `s`.
    pub fn new(s: String) -> Self {
        Self(s)
    }

    /// The secret itself, for the one place that sends it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Where a BMC password comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PasswordSource {
    /// A file holding the password (one trailing newline is ignored).
    File(PathBuf),
    /// An environment variable.
    Env(String),
}

impl PasswordSource {
    /// Reads the password. Errors name the file or variable, never the content.
    pub fn read(&self) -> Result<Secret, RedfishError> {
        match self {
            Self::File(p) => std::fs::read_to_string(p)
                .map(|s| Secret(s.strip_suffix('\n').unwrap_or(&s).to_owned()))
                .map_err(|e| RedfishError::Credentials(format!("{}: {e}", p.display()))),
            Self::Env(v) => std::env::var(v).map(Secret).map_err(|_| {
                RedfishError::Credentials(format!("environment variable {v} is not set"))
            }),
        }
    }
}

/// How to reach and log in to one BMC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmcConfig {
    /// `https://host[:port]` (or `http://` for lab emulators).
    pub url: String,
    /// User name.
    pub username: String,
    /// Where the password comes from.
    pub password: PasswordSource,
    /// Certificate check for https.
    pub tls: TlsPolicy,
    /// The system to manage (`/redfish/v1/Systems/...`); the only one when unset.
    pub system: Option<String>,
    /// Bound on one request.
    pub timeout: Duration,
    /// Attempts of one request on transient errors (at least 1).
    pub attempts: u32,
    /// What the reboot scheduler sets the one-time boot override to.
    pub boot: BootTarget,
    /// Firmware mode for the override; the BMC's current mode when unset.
    pub boot_mode: Option<BootMode>,
}

impl BmcConfig {
    /// A config with the usual bounds: 10 s per request, 4 attempts.
    pub fn new(url: &str, username: &str, password: PasswordSource, tls: TlsPolicy) -> Self {
        Self {
            url: url.to_owned(),
            username: username.to_owned(),
            password,
            tls,
            system: None,
            timeout: Duration::from_secs(10),
            attempts: 4,
            boot: BootTarget::Pxe,
            boot_mode: None,
        }
    }
}
