//! Micro-benchmark of the XDP program: runs it with `BPF_PROG_TEST_RUN` on DHCP frames and
//! prints the kernel's own measure of nanoseconds per packet.
//!
//! The program rewrites its input in place (the request becomes the reply), and a test run
//! with `repeat > 1` feeds the program its own previous output, so after the first round it
//! would time a BOOTREPLY passing through, not a request being answered. Each run is
//! therefore one syscall with `repeat = 1`, and the figure is the kernel-measured duration
//! of that one run (two clock reads around the program), averaged over the runs. The "not
//! DHCP" row is that floor: the classifier alone passing a UDP datagram to another port.
//!
//! Usage (root): xdp-prog-bench [RUNS]   (default 200000 per frame)

use std::net::Ipv4Addr;

use bootfabric_abi::dhcp::{DHCPDISCOVER, DHCPREQUEST};
use bootfabric_lab::{
    xdp_harness::{frame, request, Harness},
    Netns,
};

const INVENTORY: &str = r#"
[profiles.installer]
kernel = "debian/linux"
initrd = ["debian/initrd.gz"]

[[hosts]]
name = "rack1-node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.11"
profile = "installer"
"#;

const CONFIG: &str = r#"
[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[dhcp.options]
dns = ["10.77.0.1"]
domain = "rack1.example"
lease_time = 3600
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
options = { router = "10.77.0.1" }
[boot]
bios = "undionly.kpxe"
uefi_x64 = "ipxe.efi"
ipxe_script = "boot.ipxe"
http_base = "http://{server}"
"#;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const MAC: [u8; 6] = [0x52, 0x54, 0, 0xb0, 0x0f, 1];

fn main() {
    let runs: u32 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(200_000);
    let ns = match Netns::new("xdpbench") {
        Ok(ns) => ns,
        Err(e) => {
            eprintln!("cannot create a network namespace (run as root): {e}");
            std::process::exit(2);
        }
    };
    let result = ns.run(move || bench(runs));
    match result {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("namespace: {e}");
            std::process::exit(1);
        }
    }
}

fn bench(runs: u32) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("bootfabric-xdp-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let _cleanup = Cleanup(dir.clone());
    std::fs::write(dir.join("hosts.toml"), INVENTORY).map_err(|e| e.to_string())?;
    std::fs::write(dir.join("bootfabric.toml"), CONFIG).map_err(|e| e.to_string())?;
    let Some(mut h) =
        Harness::new(&dir.join("bootfabric.toml"), SERVER).map_err(|e| e.to_string())?
    else {
        return Err("this binary has no eBPF object: build with `cargo xtask build`".into());
    };
    let uuid: Vec<u8> = std::iter::once(0).chain(1..=16).collect();
    let ipxe = |kind: u8, extra: &[(u8, &[u8])]| {
        let mut o: Vec<(u8, &[u8])> = vec![
            (57, &[5, 192]),
            (93, &[0, 0]),
            (94, &[1, 2, 1]),
            (60, b"PXEClient:Arch:00000:UNDI:002001"),
            (77, b"iPXE"),
            (
                55,
                &[1, 3, 6, 7, 12, 15, 17, 26, 43, 60, 66, 67, 119, 128, 175],
            ),
            (
                175,
                &[
                    177, 5, 1, 0x10, 0xec, 0x81, 0x39, 19, 1, 1, 235, 3, 1, 21, 1,
                ],
            ),
            (97, &uuid),
        ];
        o.extend_from_slice(extra);
        request(kind, MAC, 0x1234_5678, Ipv4Addr::UNSPECIFIED, &o)
    };
    let pxe = |kind: u8, extra: &[(u8, &[u8])]| {
        let mut o: Vec<(u8, &[u8])> = vec![
            (57, &[5, 192]),
            (93, &[0, 7]),
            (94, &[1, 3, 0]),
            (60, b"PXEClient:Arch:00007:UNDI:003000"),
            (97, &uuid),
        ];
        o.extend_from_slice(extra);
        request(kind, MAC, 0x1234_5678, Ipv4Addr::UNSPECIFIED, &o)
    };
    let sid = SERVER.octets();
    let ip = [10, 77, 0, 11];
    let bcast = |p: Vec<u8>| {
        frame(
            MAC,
            [0xff; 6],
            (Ipv4Addr::UNSPECIFIED, 68),
            (Ipv4Addr::BROADCAST, 67),
            None,
            &p,
        )
    };
    let relayed = frame(
        [2, 0, 0, 0, 0, 1],
        [2, 0, 0, 0, 0, 2],
        (Ipv4Addr::new(10, 77, 0, 2), 67),
        (SERVER, 67),
        None,
        &request(
            DHCPDISCOVER,
            MAC,
            7,
            Ipv4Addr::new(10, 77, 0, 2),
            &[(82, &[1, 5, b'p', b'o', b'r', b't', b'7'])],
        ),
    );
    let cases: Vec<(&str, Vec<u8>, u32)> = vec![
        ("iPXE DISCOVER -> OFFER", bcast(ipxe(DHCPDISCOVER, &[])), 3),
        (
            "iPXE REQUEST -> ACK",
            bcast(ipxe(DHCPREQUEST, &[(54, &sid), (50, &ip)])),
            3,
        ),
        (
            "UEFI PXE DISCOVER -> OFFER",
            bcast(pxe(DHCPDISCOVER, &[])),
            3,
        ),
        (
            "UEFI PXE REQUEST -> ACK",
            bcast(pxe(DHCPREQUEST, &[(54, &sid), (50, &ip)])),
            3,
        ),
        ("relayed DISCOVER -> OFFER", relayed, 3),
        (
            "unknown MAC DISCOVER -> pass",
            frame(
                [2, 9, 9, 9, 9, 9],
                [0xff; 6],
                (Ipv4Addr::UNSPECIFIED, 68),
                (Ipv4Addr::BROADCAST, 67),
                None,
                &request(
                    DHCPDISCOVER,
                    [2, 9, 9, 9, 9, 9],
                    1,
                    Ipv4Addr::UNSPECIFIED,
                    &[],
                ),
            ),
            2,
        ),
        (
            "not DHCP (UDP to port 9999) -> pass",
            frame(
                MAC,
                [0xff; 6],
                (Ipv4Addr::new(10, 77, 0, 2), 5000),
                (SERVER, 9999),
                None,
                &[0u8; 300],
            ),
            2,
        ),
    ];
    println!("XDP program, BPF_PROG_TEST_RUN, {runs} runs per frame (kernel-measured ns per run)");
    println!("{:<38} {:>8} {:>8} {:>8}", "frame", "mean", "median", "p99");
    for (name, f, want) in cases {
        let (action, _) = h.run(&f).map_err(|e| e.to_string())?;
        if action != want {
            return Err(format!("{name}: action {action}, expected {want}"));
        }
        let mut ns: Vec<u64> = Vec::with_capacity(runs as usize);
        for i in 0..runs {
            let (_, d) = h.time(&f, 1).map_err(|e| e.to_string())?;
            ns.push(d);
            // Drain the events as the daemon does (it reads every 100 ms), so the ring never
            // fills: a full ring would make answers cheaper (no event) than they are.
            if i % 1000 == 999 {
                h.events();
            }
        }
        h.events();
        ns.sort_unstable();
        let mean = ns.iter().sum::<u64>() as f64 / ns.len() as f64;
        let median = ns[ns.len() / 2];
        let p99 = ns[ns.len() * 99 / 100];
        println!("{name:<38} {mean:>8.0} {median:>8} {p99:>8}");
    }
    Ok(())
}

struct Cleanup(std::path::PathBuf);
impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
