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

/// Why an interface refused the program.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// The loader or the kernel refused: aya's error, followed by its cause (the kernel's
    /// reason) when it has one.
    #[error("{}", with_cause(.0))]
    Refused(aya::programs::ProgramError),
}

/// `e`, then `: ` and its source when it has one: aya's own message names only the call.
fn with_cause(e: &aya::programs::ProgramError) -> String {
    match std::error::Error::source(e) {
        Some(src) => format!("{e}: {src}"),
        None => e.to_string(),
    }
}

/// Something XDP programs can be attached to (the kernel, or a fake in tests).
pub trait AttachTarget {
    /// Attaches to `iface` in `mode`.
    fn attach(&mut self, iface: &str, mode: AttachedMode) -> Result<(), AttachError>;
}

/// The real target: one loaded aya XDP program.
pub(super) struct AyaXdp<'a> {
    pub(super) program: &'a mut Xdp,
}

impl AttachTarget for AyaXdp<'_> {
    fn attach(&mut self, iface: &str, mode: AttachedMode) -> Result<(), AttachError> {
        let mode = match mode {
            AttachedMode::Native => XdpMode::Driver,
            AttachedMode::Generic => XdpMode::Skb,
            AttachedMode::None => return Ok(()),
        };
        self.program
            .attach(iface, mode)
            .map(|_| ())
            .map_err(AttachError::Refused)
    }
}

/// The kernel driver behind `iface` (`ETHTOOL_GDRVINFO`), e.g. `veth`, `mlx5_core`.
pub fn driver_of(iface: &str) -> Option<String> {
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        data: *mut DrvInfo,
        _pad: [u8; 16],
    }
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 3;
    let name = iface.as_bytes();
    if name.len() >= 16 {
        return None;
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    let mut req = IfReq {
        name: [0; 16],
        data: &mut info,
        _pad: [0; 16],
    };
    req.name[..name.len()].copy_from_slice(name);
    // SAFETY: a datagram socket for the ioctl, closed below; `req` and `info` outlive the
    // call and have the layout the kernel expects.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        if fd < 0 {
            return None;
        }
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|b| *b == 0).unwrap_or(32);
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Attaches per `setting`: `auto` goes native → generic → none, the others insist.
///
/// `tx_needs_peer` (a veth in auto mode while the program answers with XDP_TX): native
/// XDP_TX on a veth delivers only when its peer has GRO or an XDP program, which this
/// daemon cannot see from its namespace, so `auto` starts with generic mode there, whose
/// XDP_TX always delivers. `xdp.mode = "native"` still forces native.
pub fn attach_with_fallback(
    target: &mut impl AttachTarget,
    iface: &str,
    setting: XdpModeSetting,
    tx_needs_peer: bool,
) -> Result<AttachedMode, XdpError> {
    let order: &[AttachedMode] = match setting {
        XdpModeSetting::Off => return Ok(AttachedMode::None),
        XdpModeSetting::Auto if tx_needs_peer => &[AttachedMode::Generic, AttachedMode::Native],
        XdpModeSetting::Auto => &[AttachedMode::Native, AttachedMode::Generic],
        XdpModeSetting::Native => &[AttachedMode::Native],
        XdpModeSetting::Generic => &[AttachedMode::Generic],
    };
    let mut last = None;
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
                last = Some(e);
            }
        }
    }
    match last {
        Some(source) if setting != XdpModeSetting::Auto => Err(XdpError::Attach {
            mode: setting,
            iface: iface.to_owned(),
            reason: source,
        }),
        // Auto (every mode refused), or a setting with no mode to try.
        _ => {
            warn!(iface, "no XDP on {iface}: serving it from userspace only");
            Ok(AttachedMode::None)
        }
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
        fn attach(&mut self, _iface: &str, mode: AttachedMode) -> Result<(), AttachError> {
            self.tried.push(mode);
            if self.accepts.contains(&mode) {
                Ok(())
            } else {
                // What a driver without this mode answers.
                Err(AttachError::Refused(
                    aya::programs::ProgramError::SyscallError(aya::sys::SyscallError {
                        call: "bpf_link_create",
                        io_error: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                    }),
                ))
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
        let r = attach_with_fallback(&mut f, "fabric0", setting, false).map_err(|e| e.to_string());
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
    fn auto_starts_generic_where_native_tx_depends_on_the_peer() {
        let mut f = Fake {
            accepts: vec![Native, Generic],
            tried: vec![],
        };
        let r = attach_with_fallback(&mut f, "veth0", XdpModeSetting::Auto, true);
        assert_eq!(r.ok(), Some(Generic));
        let mut f = Fake {
            accepts: vec![Native, Generic],
            tried: vec![],
        };
        let r = attach_with_fallback(&mut f, "veth0", XdpModeSetting::Native, true);
        assert_eq!(r.ok(), Some(Native));
    }

    #[test]
    fn off_never_attaches() {
        assert_eq!(run(&[Native], XdpModeSetting::Off), (Ok(NoXdp), vec![]));
    }
}
