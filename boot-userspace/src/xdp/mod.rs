//! The in-kernel data path: loads the embedded XDP object, attaches it to the fabric's
//! interfaces and exports what it counts.
//!
//! Attach policy (`xdp.mode`): `auto` tries native (driver) mode, then generic (skb) mode,
//! then runs without XDP; `native` and `generic` insist on that mode. Without the eBPF
//! object (a plain `cargo build`) or without CAP_BPF the daemon runs in userspace-only mode
//! and says so in its log and in `bootfabric_xdp_attach_mode`.
//!
//! Minimum kernel: 5.9 for the classifier (per-CPU hash maps and `ingress_ifindex` are older;
//! XDP on veth in native mode arrived in 4.19; bpf_link-based XDP attach in 5.9, before which
//! aya falls back to netlink).

mod attach;
pub mod fastpath;
mod stats;
pub mod tftp;

use std::collections::HashMap;

use aya::{
    maps::Array,
    programs::{tc, SchedClassifier, TcAttachType, Xdp},
    Ebpf, EbpfLoader,
};
use bootfabric_abi::{
    tftp::{MAP_TFTP_CHUNKS, PROGRAM_TFTP},
    ClassifyConfig, DHCP_PATH_ANSWER, DHCP_PATH_COUNT_ONLY, DHCP_PATH_SHIELD, MAP_CLASSIFY_CONFIG,
    MAP_COUNTERS, PROGRAM_CLASSIFY,
};
use prometheus::{IntGaugeVec, Opts, Registry};
use tracing::{info, warn};

pub use attach::{attach_with_fallback, AttachError, AttachTarget, AttachedMode};

use crate::{
    config::{DhcpMode, PortRange, XdpModeSetting},
    fabric::Iface,
};
use fastpath::{FabricIface, FastPath};

/// Why the data path could not be set up the way the config demands.
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// A configured interface does not exist in the daemon's network namespace.
    #[error("fabric.interfaces: interface {name:?} does not exist")]
    NoSuchInterface {
        /// Interface name.
        name: String,
    },
    /// The eBPF object could not be loaded into the kernel.
    #[error("cannot load the XDP object: {reason}")]
    Load {
        /// Loader or verifier message.
        reason: String,
    },
    /// `xdp.mode` names a mode the interface refused.
    #[error("xdp.mode = {mode}: cannot attach to {iface}: {reason}")]
    Attach {
        /// The configured mode.
        mode: XdpModeSetting,
        /// Interface name.
        iface: String,
        /// Why the interface refused.
        reason: attach::AttachError,
    },
    /// Registering metrics failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// What the program does with DHCP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DhcpPath {
    /// Counts DHCP only: no DHCP server in this daemon (another server may own the port).
    CountOnly,
    /// The shield (malformed and over-rate requests dropped), answers left to userspace.
    Shield,
    /// The shield, and reserved hosts answered in the kernel.
    Answer,
}

impl DhcpPath {
    /// Nothing without a DHCP server in this daemon (`dhcp_mode` is `None`), kernel answers in
    /// server mode when `xdp.dhcp_fast_path` is on, else the shield only (proxyDHCP answers
    /// are not the kernel's to give).
    pub fn new(dhcp_mode: Option<DhcpMode>, fast_path: bool) -> Self {
        match dhcp_mode {
            None => Self::CountOnly,
            Some(DhcpMode::Server) if fast_path => Self::Answer,
            Some(_) => Self::Shield,
        }
    }

    /// The ABI's value for [`ClassifyConfig::dhcp_fast_path`].
    fn abi(self) -> u32 {
        match self {
            Self::CountOnly => DHCP_PATH_COUNT_ONLY,
            Self::Shield => DHCP_PATH_SHIELD,
            Self::Answer => DHCP_PATH_ANSWER,
        }
    }
}

/// What the data path is set up with: its own settings (`[xdp]`) and the values it needs
/// from other sections, which `serve` takes from where they are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    /// `xdp.mode`.
    pub mode: XdpModeSetting,
    /// `xdp.relay_rate_limit`: relayed requests per second and relay the shield lets through.
    pub relay_rate_limit: u32,
    /// What the program does with DHCP (`[dhcp]` and `xdp.dhcp_fast_path`).
    pub dhcp: DhcpPath,
    /// `dhcp.rate_limit`: requests per second and client the shield lets through; `None`
    /// without a DHCP server.
    pub client_rate_limit: Option<u32>,
    /// `tftp.transfer_ports`: the ports whose traffic the program classifies as TFTP data.
    pub tftp_transfer_ports: PortRange,
    /// Slots of the kernel's TFTP file array (`tftp.kernel_bytes`); 0 leaves TFTP to
    /// userspace.
    pub tftp_kernel_slots: u32,
}

/// The embedded XDP object, if this binary was built with one (`cargo xtask build`).
pub fn embedded_object() -> Option<&'static [u8]> {
    #[cfg(bootfabric_ebpf)]
    {
        static OBJECT: &[u8] =
            aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bootfabric-xdp.o"));
        Some(OBJECT)
    }
    #[cfg(not(bootfabric_ebpf))]
    {
        None
    }
}

/// The loaded and attached data path. Dropping it detaches the programs.
pub struct Dataplane {
    /// Keeps the programs and their links alive; `None` in userspace-only mode.
    ebpf: Option<Ebpf>,
    /// Mode in effect per interface.
    modes: Vec<(String, AttachedMode)>,
    /// What the program does with DHCP.
    dhcp: DhcpPath,
    /// The TC program answering TFTP is attached on every interface XDP is.
    tftp: bool,
}

impl Dataplane {
    /// Loads and attaches the XDP program to `ifaces` (the fabric) as `settings` ask,
    /// registering its metrics.
    ///
    /// Falls back to userspace-only mode (with a warning) when `xdp.mode = "auto"` and the
    /// object is missing, cannot be loaded, or no interface accepts it.
    pub fn start(
        ifaces: &[Iface],
        settings: &Settings,
        registry: &Registry,
    ) -> Result<Self, XdpError> {
        let mut ifindexes = HashMap::new();
        for iface in ifaces {
            let idx = iface.index.ok_or_else(|| XdpError::NoSuchInterface {
                name: iface.name.clone(),
            })?;
            ifindexes.insert(idx, iface.name.clone());
        }
        let mode_gauge = IntGaugeVec::new(
            Opts::new(
                "bootfabric_xdp_attach_mode",
                "1 for the XDP mode in effect on each interface (native, generic or none).",
            ),
            &["iface", "mode"],
        )?;
        registry.register(Box::new(mode_gauge.clone()))?;

        let mut dp = Dataplane {
            ebpf: None,
            modes: ifaces
                .iter()
                .map(|i| (i.name.clone(), AttachedMode::None))
                .collect(),
            dhcp: settings.dhcp,
            tftp: false,
        };
        let degrade = |why: String| -> Result<(), XdpError> {
            if matches!(
                settings.mode,
                XdpModeSetting::Native | XdpModeSetting::Generic
            ) {
                return Err(XdpError::Load { reason: why });
            }
            warn!("userspace-only mode: {why}");
            Ok(())
        };

        if settings.mode == XdpModeSetting::Off {
            info!("userspace-only mode: xdp.mode = \"off\"");
        } else if ifaces.is_empty() {
            info!("userspace-only mode: fabric.interfaces is empty");
        } else if let Some(object) = embedded_object() {
            match load(object, settings) {
                Ok(mut ebpf) => {
                    let mut any = false;
                    let program: &mut Xdp = match ebpf
                        .program_mut(PROGRAM_CLASSIFY)
                        .map(TryInto::try_into)
                    {
                        Some(Ok(p)) => p,
                        _ => {
                            return Err(XdpError::Load {
                                reason: format!("the object has no XDP program {PROGRAM_CLASSIFY}"),
                            })
                        }
                    };
                    let answers = settings.dhcp == DhcpPath::Answer;
                    for (name, mode) in dp.modes.iter_mut() {
                        let mut target = attach::AyaXdp { program };
                        let veth = answers && attach::driver_of(name).as_deref() == Some("veth");
                        *mode = attach_with_fallback(&mut target, name, settings.mode, veth)?;
                        any |= *mode != AttachedMode::None;
                    }
                    if any && settings.tftp_kernel_slots > 0 {
                        let on: Vec<&str> = dp
                            .modes
                            .iter()
                            .filter(|(_, m)| *m != AttachedMode::None)
                            .map(|(n, _)| n.as_str())
                            .collect();
                        match attach_tftp(&mut ebpf, &on) {
                            Ok(()) => dp.tftp = true,
                            Err(e) => warn!("TFTP stays in userspace: {e}"),
                        }
                    }
                    match stats::XdpStats::new(&mut ebpf, ifindexes) {
                        Ok(collector) => registry.register(Box::new(collector))?,
                        Err(e) => warn!("XDP counters unavailable: {e}"),
                    }
                    if any {
                        dp.ebpf = Some(ebpf);
                    } else {
                        degrade("no interface accepted the XDP program".to_owned())?;
                    }
                }
                Err(e) => degrade(e.to_string())?,
            }
        } else {
            degrade(
                "this binary was built without the eBPF object (use `cargo xtask build`)"
                    .to_owned(),
            )?;
        }

        for (name, mode) in &dp.modes {
            for m in [
                AttachedMode::Native,
                AttachedMode::Generic,
                AttachedMode::None,
            ] {
                mode_gauge
                    .with_label_values(&[name.as_str(), m.as_str()])
                    .set(i64::from(*mode == m));
            }
        }
        Ok(dp)
    }

    /// Whether any interface has the XDP program attached.
    pub fn is_active(&self) -> bool {
        self.ebpf.is_some()
    }

    /// Hands the DHCP fast path's maps to their owner, the DHCP service, when the program
    /// is attached and answers DHCP in the kernel. Of `ifaces` (the fabric), those the
    /// program did not attach to are left out.
    pub fn take_fast_path(&mut self, ifaces: &[Iface]) -> Option<FastPath> {
        if self.dhcp != DhcpPath::Answer {
            return None;
        }
        let ebpf = self.ebpf.as_mut()?;
        let fabric: Vec<FabricIface> = self
            .modes
            .iter()
            .filter(|(_, m)| *m != AttachedMode::None)
            .filter_map(|(name, _)| {
                let f = ifaces
                    .iter()
                    .find(|i| i.name == *name)
                    .and_then(FabricIface::complete);
                if f.is_none() {
                    warn!(iface = %name, "XDP fast path: no address or MAC on {name}; its requests go to userspace");
                }
                f
            })
            .collect();
        match FastPath::new(ebpf, fabric) {
            Ok(fp) => Some(fp),
            Err(e) => {
                warn!("XDP DHCP fast path unavailable: {e}");
                None
            }
        }
    }

    /// Hands the kernel's TFTP path to the TFTP service, when its program is attached.
    pub fn take_kernel_tftp(&mut self) -> Option<tftp::KernelTftp> {
        if !self.tftp {
            return None;
        }
        match tftp::KernelTftp::new(self.ebpf.as_mut()?) {
            Ok(k) => Some(k),
            Err(e) => {
                warn!("TFTP stays in userspace: {e}");
                None
            }
        }
    }

    /// Mode in effect per interface.
    pub fn modes(&self) -> &[(String, AttachedMode)] {
        &self.modes
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        if self.ebpf.take().is_some() {
            info!("XDP programs detached");
        }
    }
}

/// GCRA parameters for `rate` packets per second with bursts of `2 * rate` (the userspace
/// limiter's shape): emission interval and burst tolerance, in nanoseconds.
pub fn gcra(rate: u32) -> (u64, u64) {
    let rate = u64::from(rate.max(1));
    let interval = 1_000_000_000 / rate;
    (interval, interval * (2 * rate - 1))
}

/// Loads the object, loads the classifier into the kernel and writes its parameters.
fn load(object: &[u8], settings: &Settings) -> Result<Ebpf, XdpError> {
    let load_err = |reason: String| XdpError::Load { reason };
    let mut ebpf = EbpfLoader::new()
        // The file array is sized by `tftp.kernel_bytes`; one slot when the path is off.
        .map_max_entries(MAP_TFTP_CHUNKS, settings.tftp_kernel_slots.max(1))
        .load(object)
        .map_err(|e| load_err(format!("{e} (needs root or CAP_BPF)")))?;
    let program: &mut Xdp = ebpf
        .program_mut(PROGRAM_CLASSIFY)
        .ok_or_else(|| load_err(format!("the object has no program {PROGRAM_CLASSIFY}")))?
        .try_into()
        .map_err(|e| load_err(format!("{PROGRAM_CLASSIFY}: {e}")))?;
    program
        .load()
        .map_err(|e| load_err(format!("{PROGRAM_CLASSIFY}: {e}")))?;
    let map = ebpf
        .map_mut(MAP_CLASSIFY_CONFIG)
        .ok_or_else(|| load_err(format!("the object has no map {MAP_CLASSIFY_CONFIG}")))?;
    let mut cfg_map: Array<_, ClassifyConfig> =
        Array::try_from(map).map_err(|e| load_err(format!("{MAP_CLASSIFY_CONFIG}: {e}")))?;
    let (client_interval_ns, client_burst_ns) =
        settings.client_rate_limit.map(gcra).unwrap_or((0, 0));
    let (relay_interval_ns, relay_burst_ns) = gcra(settings.relay_rate_limit);
    let classify = ClassifyConfig {
        tftp_data_first: settings.tftp_transfer_ports.first,
        tftp_data_last: settings.tftp_transfer_ports.last,
        dhcp_fast_path: settings.dhcp.abi(),
        client_interval_ns,
        client_burst_ns,
        relay_interval_ns,
        relay_burst_ns,
        ..ClassifyConfig::default()
    };
    cfg_map
        .set(0, classify, 0)
        .map_err(|e| load_err(format!("{MAP_CLASSIFY_CONFIG}: {e}")))?;
    if ebpf.map(MAP_COUNTERS).is_none() {
        return Err(load_err(format!("the object has no map {MAP_COUNTERS}")));
    }
    Ok(ebpf)
}

/// Loads the TFTP program and attaches it at ingress of each of `ifaces` (tcx links where
/// the kernel has them, 6.6 on; a clsact qdisc before).
fn attach_tftp(ebpf: &mut Ebpf, ifaces: &[&str]) -> Result<(), String> {
    let program: &mut SchedClassifier = ebpf
        .program_mut(PROGRAM_TFTP)
        .ok_or_else(|| format!("the object has no program {PROGRAM_TFTP}"))?
        .try_into()
        .map_err(|e| format!("{PROGRAM_TFTP}: {e}"))?;
    program.load().map_err(|e| format!("{PROGRAM_TFTP}: {e}"))?;
    for iface in ifaces {
        if program.attach(iface, TcAttachType::Ingress).is_err() {
            // Before tcx (6.6) the program hangs off a clsact qdisc; one already there is
            // fine (another program or an earlier run added it).
            let _ = tc::qdisc_add_clsact(iface);
            program
                .attach(iface, TcAttachType::Ingress)
                .map_err(|e| format!("{PROGRAM_TFTP} on {iface}: {e}"))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{gcra, DhcpMode, DhcpPath};
    use bootfabric_abi::{DHCP_PATH_ANSWER, DHCP_PATH_COUNT_ONLY, DHCP_PATH_SHIELD};

    /// Without a DHCP server in this daemon the program only counts (another server may own
    /// the port); the kernel answers only in server mode with `xdp.dhcp_fast_path` on.
    #[test]
    fn the_dhcp_path_follows_the_dhcp_mode_and_the_fast_path_key() {
        for fast_path in [true, false] {
            assert_eq!(DhcpPath::new(None, fast_path), DhcpPath::CountOnly);
            assert_eq!(
                DhcpPath::new(Some(DhcpMode::Proxy), fast_path),
                DhcpPath::Shield
            );
        }
        assert_eq!(
            DhcpPath::new(Some(DhcpMode::Server), true),
            DhcpPath::Answer
        );
        assert_eq!(
            DhcpPath::new(Some(DhcpMode::Server), false),
            DhcpPath::Shield
        );
        assert_eq!(DhcpPath::CountOnly.abi(), DHCP_PATH_COUNT_ONLY);
        assert_eq!(DhcpPath::Shield.abi(), DHCP_PATH_SHIELD);
        assert_eq!(DhcpPath::Answer.abi(), DHCP_PATH_ANSWER);
    }

    /// The program passes a packet while the theoretical arrival time is at most the burst
    /// tolerance ahead of now, and each pass moves it one interval: at one instant,
    /// `burst / interval + 1` packets pass. That must be the userspace limiter's `2 * rate`,
    /// with one interval (one token) per `1 / rate` seconds after it.
    #[test]
    fn gcra_matches_the_userspace_bucket() {
        for rate in [1u32, 10, 20, 50, 1000] {
            let (interval, burst) = gcra(rate);
            assert_eq!(interval, 1_000_000_000 / u64::from(rate), "rate {rate}");
            assert_eq!(burst / interval + 1, 2 * u64::from(rate), "rate {rate}");
            assert_eq!(burst % interval, 0, "rate {rate}");
        }
        // A rate of 0 is read as 1, never a division by zero.
        assert_eq!(gcra(0), gcra(1));
    }
}
