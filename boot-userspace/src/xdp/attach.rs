//! The attach policy, kept apart from aya so its fallback order is unit-tested without root.

use aya::programs::{Xdp, XdpMode};
use tracing::{info, warn};

use super::XdpError;
use crate::config::XdpModeSetting;

/// The XDP mode in effect on an interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachedMode {
    /// Driver mode: runs before the kernel allocates an skb.
    Native,
    /// Generic mode: runs in the stack, slower, works on every interface.
    Generic,
    /// Not attached: the interface is served from userspace only.
    None,
}

impl AttachedMode {
    /// Metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Generic => "generic",
            Self::None => "none",
        }
    }
}

/// Something XDP programs can be attached to (the kernel, or a fake in tests).
pub trait AttachTarget {
    /// Attaches to `iface` in `mode`; the error is the kernel's reason.
    fn attach(&mut self, iface: &str, mode: AttachedMode) -> Result<(), String>;
}

/// The real target: one loaded aya XDP program.
pub(super) struct AyaXdp<'a> {
    pub(super) program: &'a mut Xdp,
}

impl AttachTarget for AyaXdp<'_> {
    fn attach(&mut self, iface: &str, mode: AttachedMode) -> Result<(), String> {
        let mode = match mode {
            AttachedMode::Native => XdpMode::Driver,
            AttachedMode::Generic => XdpMode::Skb,
            AttachedMode::None => return Ok(()),
        };
        self.program.attach(iface, mode).map(|_| ()).map_err(|e| {
            match std::error::Error::source(&e) {
                Some(src) => format!("{e}: {src}"),
                None => e.to_string(),
            }
        })
    }
}

/// Attaches per `setting`: `auto` goes native → generic → none, the others insist.
pub fn attach_with_fallback(
    target: &mut impl AttachTarget,
    iface: &str,
    setting: XdpModeSetting,
) -> Result<AttachedMode, XdpError> {
    let order: &[AttachedMode] = match setting {
        XdpModeSetting::Off => return Ok(AttachedMode::None),
        XdpModeSetting::Auto => &[AttachedMode::Native, AttachedMode::Generic],
        XdpModeSetting::Native => &[AttachedMode::Native],
        XdpModeSetting::Generic => &[AttachedMode::Generic],
    };
    let mut last = String::new();
    for &mode in order {
        match target.attach(iface, mode) {
            Ok(()) => {
                info!(
                    iface,
                    mode = mode.as_str(),
                    "XDP attached to {iface} in {} mode",
                    mode.as_str()
                );
                return Ok(mode);
            }
            Err(e) => {
                warn!(iface, mode = mode.as_str(), error = %e, "XDP attach failed");
                last = e;
            }
        }
    }
    if setting == XdpModeSetting::Auto {
        warn!(iface, "no XDP on {iface}: serving it from userspace only");
        Ok(AttachedMode::None)
    } else {
        Err(XdpError::Attach {
            mode: setting,
            iface: iface.to_owned(),
            reason: last,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts only the listed modes and records every attempt.
    struct Fake {
        accepts: Vec<AttachedMode>,
        tried: Vec<AttachedMode>,
    }

    impl AttachTarget for Fake {
        fn attach(&mut self, _iface: &str, mode: AttachedMode) -> Result<(), String> {
            self.tried.push(mode);
            if self.accepts.contains(&mode) {
                Ok(())
            } else {
                Err("Operation not supported".to_owned())
            }
        }
    }

    fn run(
        accepts: &[AttachedMode],
        setting: XdpModeSetting,
    ) -> (Result<AttachedMode, String>, Vec<AttachedMode>) {
        let mut f = Fake {
            accepts: accepts.to_vec(),
            tried: vec![],
        };
        let r = attach_with_fallback(&mut f, "fabric0", setting).map_err(|e| e.to_string());
        (r, f.tried)
    }

    use AttachedMode::{Generic, Native, None as NoXdp};

    #[test]
    fn auto_prefers_native() {
        assert_eq!(
            run(&[Native, Generic], XdpModeSetting::Auto),
            (Ok(Native), vec![Native])
        );
    }

    #[test]
    fn auto_falls_back_to_generic_then_none() {
        assert_eq!(
            run(&[Generic], XdpModeSetting::Auto),
            (Ok(Generic), vec![Native, Generic])
        );
        assert_eq!(
            run(&[], XdpModeSetting::Auto),
            (Ok(NoXdp), vec![Native, Generic])
        );
    }

    #[test]
    fn explicit_modes_insist() {
        let (r, tried) = run(&[Generic], XdpModeSetting::Native);
        assert_eq!(tried, vec![Native]);
        let e = r.expect_err("native refused");
        assert!(
            e.contains("xdp.mode = native") && e.contains("fabric0"),
            "{e}"
        );
        assert_eq!(
            run(&[Native, Generic], XdpModeSetting::Generic),
            (Ok(Generic), vec![Generic])
        );
    }

    #[test]
    fn off_never_attaches() {
        assert_eq!(run(&[Native], XdpModeSetting::Off), (Ok(NoXdp), vec![]));
    }
}
