//! A refused setting: which key, and why. Validation below the config (boot settings, the
//! inventory, TLS files) names the key; the config loader adds the file.

/// A key whose value is refused, and the reason, in words an operator can act on.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct KeyError {
    /// The dotted key, e.g. `dhcp.options.router`.
    pub key: String,
    /// Why its value is refused.
    pub reason: String,
}

impl KeyError {
    /// `key` is refused because of `reason`.
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            reason: reason.into(),
        }
    }
}
