//! Runs Bootfabric's XDP program with `BPF_PROG_TEST_RUN`, next to the userspace DHCP
//! server built from the same config, so tests and the micro-benchmark can hold the two
//! paths' answers side by side.
//!
//! A test run without a context reports the loopback device of the caller's network
//! namespace as the ingress interface (ifindex 1): the fast path's interface entry is
//! written for that index, under the name and address the config gives the fabric interface.

use std::{net::Ipv4Addr, path::Path};

use aya::{
    maps::{Array, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
    Ebpf,
};
use bootfabric::{
    config::Config,
    services::dhcp::{fastpath::FastPathOwner, server::Server},
    xdp::fastpath::{FabricIface, FastPath, FastPathEvent, FastPathEvents},
};
use bootfabric_abi::{
    dhcp::{MAP_STATS, STAT_COUNT},
    ClassifyConfig, DHCP_PATH_ANSWER, MAP_CLASSIFY_CONFIG, PROGRAM_CLASSIFY,
};

/// The ingress ifindex a context-less test run reports (loopback).
pub const TEST_RUN_IFINDEX: u32 = 1;
/// The fabric interface's MAC in the harness.
pub const SERVER_MAC: [u8; 6] = [0x02, 0xbf, 0, 0, 0, 1];

/// The loaded program, its fast path maps, and the userspace server of the same config.
pub struct Harness {
    ebpf: Ebpf,
    /// The fast path's maps, as the DHCP service owns them.
    pub fast_path: FastPathOwner,
    /// The userspace server.
    pub server: Server,
    /// The config both were built from.
    pub config: Config,
    events: Option<std::sync::Arc<dyn FastPathEvents>>,
}

/// Why the harness could not start.
#[derive(Debug)]
pub struct HarnessError(pub String);

impl std::fmt::Display for HarnessError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn err(what: &str) -> impl FnOnce(String) -> HarnessError + '_ {
    move |e| HarnessError(format!("{what}: {e}"))
}

impl Harness {
    /// Loads the embedded object and derives the fast path from the config at `path`, whose
    /// first fabric interface is served as `server_ip`. `None` when the binary carries no
    /// eBPF object.
    pub fn new(path: &Path, server_ip: Ipv4Addr) -> Result<Option<Self>, HarnessError> {
        let Some(object) = bootfabric::xdp::embedded_object() else {
            return Ok(None);
        };
        let config = Config::load(path).map_err(|e| HarnessError(e.to_string()))?;
        let dhcp = config
            .dhcp
            .clone()
            .ok_or_else(|| HarnessError("the config has no [dhcp]".into()))?;
        let server = Server::new(
            dhcp.clone(),
            config.boot.clone(),
            config.inventory.clone(),
            &[],
            0,
        );
        let mut ebpf = Ebpf::load(object).map_err(|e| err("loading the object")(e.to_string()))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_CLASSIFY)
            .ok_or_else(|| HarnessError("no program".into()))?
            .try_into()
            .map_err(|e: aya::programs::ProgramError| err("program")(e.to_string()))?;
        program
            .load()
            .map_err(|e| err("verifier")(format!("{e:?}")))?;
        let mut cfg: Array<_, ClassifyConfig> = Array::try_from(
            ebpf.map_mut(MAP_CLASSIFY_CONFIG)
                .ok_or_else(|| HarnessError("no config map".into()))?,
        )
        .map_err(|e| err("config map")(e.to_string()))?;
        cfg.set(
            0,
            ClassifyConfig {
                dhcp_fast_path: DHCP_PATH_ANSWER,
                ..ClassifyConfig::default()
            },
            0,
        )
        .map_err(|e| err("config map")(e.to_string()))?;
        let name = config
            .interfaces
            .first()
            .cloned()
            .unwrap_or_else(|| "fabric0".into());
        let fabric = vec![FabricIface {
            name,
            ifindex: TEST_RUN_IFINDEX,
            server_ip,
            mac: SERVER_MAC,
        }];
        let FastPath {
            maps,
            events,
            fabric,
        } = FastPath::new(&mut ebpf, fabric).map_err(|e| err("fast path")(e.to_string()))?;
        let mut fast_path = FastPathOwner::new(maps, fabric);
        fast_path
            .sync(&server)
            .map_err(|e| err("sync")(e.to_string()))?;
        Ok(Some(Self {
            ebpf,
            fast_path,
            server,
            config,
            events,
        }))
    }

    /// Rewrites the program's parameters (the shield's rates, say).
    pub fn configure(&mut self, cfg: ClassifyConfig) -> Result<(), HarnessError> {
        let map = self
            .ebpf
            .map_mut(MAP_CLASSIFY_CONFIG)
            .ok_or_else(|| HarnessError("no config map".into()))?;
        let mut arr: Array<_, ClassifyConfig> =
            Array::try_from(map).map_err(|e| err("config map")(e.to_string()))?;
        arr.set(0, cfg, 0)
            .map_err(|e| err("config map")(e.to_string()))
    }

    fn program(&self) -> &Xdp {
        #[expect(clippy::expect_used, reason = "checked in new")]
        let p: &Xdp = self
            .ebpf
            .program(PROGRAM_CLASSIFY)
            .expect("program")
            .try_into()
            .expect("an XDP program");
        p
    }

    /// Runs the program once on `frame`: the XDP action and the frame as it left.
    pub fn run(&self, frame: &[u8]) -> Result<(u32, Vec<u8>), HarnessError> {
        let mut out = vec![0u8; 4096];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        let r = self
            .program()
            .test_run(opts)
            .map_err(|e| err("test run")(e.to_string()))?;
        out.truncate(r.data_size_out as usize);
        Ok((r.return_value, out))
    }

    /// Runs the program on `frame` once and returns the kernel's measured run time in ns.
    pub fn time(&self, frame: &[u8], repeat: u32) -> Result<(u32, u64), HarnessError> {
        let mut out = vec![0u8; 4096];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(frame);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat;
        let r = self
            .program()
            .test_run(opts)
            .map_err(|e| err("test run")(e.to_string()))?;
        Ok((r.return_value, r.duration.as_nanos() as u64))
    }

    /// Events the program wrote since the last call.
    pub fn events(&mut self) -> Vec<FastPathEvent> {
        let mut v = Vec::new();
        if let Some(events) = self.events.as_ref() {
            events.drain(&mut v);
        }
        v
    }

    /// The fast path's counters by `STAT_*` index, summed over CPUs.
    pub fn stats(&self) -> Vec<u64> {
        let Some(map) = self.ebpf.map(MAP_STATS) else {
            return Vec::new();
        };
        let Ok(arr) = PerCpuArray::<_, u64>::try_from(map) else {
            return Vec::new();
        };
        (0..STAT_COUNT)
            .map(|i| arr.get(&i, 0).map(|v| v.iter().sum()).unwrap_or(0))
            .collect()
    }
}

/// A BOOTREQUEST of message type `kind` from `mac` with the given options (53 and the end
/// option are added), relayed through `giaddr` unless it is unspecified.
pub fn request(
    kind: u8,
    mac: [u8; 6],
    xid: u32,
    giaddr: Ipv4Addr,
    options: &[(u8, &[u8])],
) -> Vec<u8> {
    let mut p = vec![0u8; 240];
    p[0] = 1;
    p[1] = 1;
    p[2] = 6;
    p[4..8].copy_from_slice(&xid.to_be_bytes());
    p[10] = 0x80;
    p[24..28].copy_from_slice(&giaddr.octets());
    p[28..34].copy_from_slice(&mac);
    p[236..240].copy_from_slice(&[99, 130, 83, 99]);
    p.extend_from_slice(&[53, 1, kind]);
    for (code, v) in options {
        p.push(*code);
        p.push(v.len() as u8);
        p.extend_from_slice(v);
    }
    p.push(255);
    p
}

/// Ethernet + IPv4 + UDP around `payload`, with an optional 802.1Q tag.
pub fn frame(
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: (Ipv4Addr, u16),
    dst: (Ipv4Addr, u16),
    vlan: Option<u16>,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::with_capacity(payload.len() + 46);
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    if let Some(tag) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&tag.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0, 0, 64, 17, 0, 0];
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip.extend_from_slice(&src.0.octets());
    ip.extend_from_slice(&dst.0.octets());
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let ulen = (8 + payload.len()) as u16;
    let mut udp = Vec::with_capacity(ulen as usize);
    udp.extend_from_slice(&src.1.to_be_bytes());
    udp.extend_from_slice(&dst.1.to_be_bytes());
    udp.extend_from_slice(&ulen.to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let c = udp_checksum(src.0, dst.0, &udp);
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&udp);
    f
}

/// The Internet checksum of `data` with `seed` added (RFC 1071).
pub fn checksum(data: &[u8], seed: u32) -> u16 {
    let mut sum = seed as u64;
    for pair in data.chunks(2) {
        let w = u16::from_be_bytes([pair[0], *pair.get(1).unwrap_or(&0)]);
        sum += u64::from(w);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The UDP checksum of `udp` (header with zero checksum, and payload) between `src` and `dst`.
pub fn udp_checksum(src: Ipv4Addr, dst: Ipv4Addr, udp: &[u8]) -> u16 {
    let s = src.octets();
    let d = dst.octets();
    let pseudo = u32::from(u16::from_be_bytes([s[0], s[1]]))
        + u32::from(u16::from_be_bytes([s[2], s[3]]))
        + u32::from(u16::from_be_bytes([d[0], d[1]]))
        + u32::from(u16::from_be_bytes([d[2], d[3]]))
        + 17
        + udp.len() as u32;
    let c = checksum(udp, pseudo);
    if c == 0 {
        0xffff
    } else {
        c
    }
}
