//! Real firmware against the DHCP and TFTP servers: QEMU's iPXE ROM is told the iPXE script
//! URL and asks for it over HTTP; OVMF's own UEFI PXE client (arch 7) is told the x64
//! bootloader, loads it from our TFTP server, and the iPXE it loaded asks for its script. The
//! test stands in for the HTTP server with a socket that only records the first request,
//! which is the proof that the firmware took our answers.
//! QEMU runs under TCG (KVM guests hang here), inside the client namespace, on a tap bridged
//! to the server's veth.

use std::{
    io::Read,
    net::TcpListener,
    process::Stdio,
    time::{Duration, Instant},
};

use bootfabric_lab::{
    bootimage, have_program, http_get, require, require_root, sample, wait_for, Daemon, Netns,
    PairLab, TempDir,
};

const CONFIG: &str = r#"
[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[dhcp]
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
"#;

const INVENTORY: &str = r#"
[profiles.installer]
[[hosts]]
name = "vm01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.11"
profile = "installer"
"#;

/// Firmware under TCG is slow; this bounds the wait, it does not time anything.
const BOOT_BOUND: Duration = Duration::from_secs(240);

use bootfabric_lab::KillOnDrop as Qemu;

/// A lab whose client namespace holds a bridge joining the server link and a tap for QEMU.
fn lab() -> PairLab {
    bootfabric_lab::qemu::bridged_lab().expect("lab")
}

/// Starts QEMU (TCG) in `ns` with its NIC on that namespace's `tap0`, console to `log`.
fn qemu(ns: &Netns, extra: &[&str], log: &std::path::Path) -> Qemu {
    bootfabric_lab::qemu::start(ns, "tap0", extra, log).expect("qemu")
}

/// A stand-in HTTP server on 10.77.0.1:80 in `ns` that waits (bounded) for the first
/// request and returns its head and the client's address; on timeout the test fails with
/// the VM console and the daemon log.
fn first_http_request(
    ns: &Netns,
    log: &std::path::Path,
    daemon: &Daemon,
) -> (String, std::net::SocketAddr) {
    let listener = ns
        .run(|| TcpListener::bind("10.77.0.1:80"))
        .expect("server namespace")
        .expect("bind :80");
    listener.set_nonblocking(true).expect("nonblocking");
    let deadline = Instant::now() + BOOT_BOUND;
    loop {
        match listener.accept() {
            Ok((mut s, peer)) => {
                s.set_nonblocking(false).expect("blocking");
                s.set_read_timeout(Some(Duration::from_secs(10)))
                    .expect("timeout");
                let mut buf = [0u8; 1024];
                // A read that fails or times out is not an empty request: say so.
                let n = s
                    .read(&mut buf)
                    .unwrap_or_else(|e| panic!("{peer} connected but sent no request: {e}"));
                return (String::from_utf8_lossy(&buf[..n]).into_owned(), peer);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(200));
            }
            Err(e) => panic!(
                "the firmware never fetched its script ({e}).\nconsole:\n{}\ndaemon:\n{}",
                std::fs::read_to_string(log).unwrap_or_default(),
                daemon.log()
            ),
        }
    }
}

/// Whether this test can run: root, QEMU (`program`), and every file in `files` (firmware,
/// iPXE builds); otherwise it says what is missing (a failure when the lab is required).
fn require_firmware(t: &str, program: &str, files: &[&str]) -> bool {
    require_root(t)
        && require(
            have_program(program),
            t,
            "QEMU is not installed (cargo xtask setup)",
        )
        && require(
            files.iter().all(|f| std::path::Path::new(f).exists()),
            t,
            "OVMF, AAVMF or iPXE is not installed (cargo xtask setup)",
        )
}

/// QEMU's own iPXE ROM (Debian 12's, from `ipxe-qemu`) booting from the network as `mac`,
/// in `ns`.
fn ipxe_rom_vm(ns: &Netns, mac: &str, log: &std::path::Path) -> Qemu {
    let nic = format!("virtio-net-pci,netdev=n0,mac={mac}");
    qemu(ns, &["-device", &nic, "-boot", "n"], log)
}

/// The machine's timeline once it holds `booted`; on the bound, the test fails with the
/// console and the daemon's log.
fn wait_booted(lab: &PairLab, daemon: &Daemon, log: &std::path::Path) -> String {
    wait_for(BOOT_BOUND * 2, || {
        let (_, t) = http_get(
            &lab.server,
            daemon.admin,
            "/api/timeline?mac=52:54:00:b0:0f:01",
        )
        .ok()?;
        t.contains("\"phase\":\"booted\"").then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "the machine did not boot.\nconsole:\n{}\ndaemon:\n{}",
            std::fs::read_to_string(log).unwrap_or_default(),
            daemon.log()
        )
    })
}

/// Each of `steps` appears in `timeline`, in this order.
fn in_order<S: AsRef<str>>(timeline: &str, steps: &[S]) {
    let mut from = 0;
    for step in steps {
        let step = step.as_ref();
        let at = timeline[from..]
            .find(step)
            .unwrap_or_else(|| panic!("no {step} in order in {timeline}"));
        from += at + 1;
    }
}

#[test]
fn qemu_ipxe_rom_is_sent_to_the_ipxe_script_url() {
    let t = "qemu_ipxe_rom_is_sent_to_the_ipxe_script_url";
    if !require_firmware(t, "qemu-system-x86_64", &[]) {
        return;
    }
    let lab = lab();
    let daemon = Daemon::start(&lab.server, CONFIG, &[("hosts.toml", INVENTORY)]).expect("daemon");
    let dir = TempDir::new().expect("dir");
    let log = dir.path.join("qemu.log");
    let _vm = ipxe_rom_vm(&lab.client, "52:54:00:b0:0f:01", &log);
    let (request, _) = first_http_request(&lab.server, &log, &daemon);
    assert!(request.starts_with("GET /boot.ipxe "), "{request}");
    // It holds its reservation (iPXE completed DISCOVER/OFFER/REQUEST/ACK), and the lease
    // table learned it from the XDP program's events: the kernel gave both answers. Kernel
    // ACKs reach the journal up to a second late (docs/operations.md, "The lease journal"), and
    // iPXE may ask for its script sooner than that.
    let leases = wait_for(Duration::from_secs(10), || {
        let l = daemon.cli(&["leases"]).ok()?;
        (l.contains("10.77.0.11") && l.contains("52:54:00:b0:0f:01")).then_some(l)
    });
    assert!(
        leases.is_some(),
        "{}",
        daemon.cli(&["leases"]).unwrap_or_default()
    );
    let (_, metrics) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    if require(
        metrics.contains("ebpf=\"embedded\""),
        t,
        "no eBPF object: the kernel path is not checked",
    ) {
        let answered = |r: &str| {
            sample(
                &metrics,
                "bootfabric_xdp_dhcp_packets_total",
                &[("action", "answered"), ("reason", r)],
            )
            .unwrap_or(0.0)
        };
        assert!(
            answered("offer") >= 1.0 && answered("ack") >= 1.0,
            "iPXE's DHCP was not answered in the kernel:\n{metrics}"
        );
    }
}

/// Debian 12's iPXE (QEMU's ROM) has no HTTPS, and says so in its option 175. Told an https
/// script URL it stops; the daemon, answering it from its pool in userspace, warns with the
/// URL and the way out, which is what the operator has to go on.
#[test]
fn an_ipxe_without_https_told_an_https_script_url_is_warned_about() {
    let t = "an_ipxe_without_https_told_an_https_script_url_is_warned_about";
    if !require_firmware(t, "qemu-system-x86_64", &[]) {
        return;
    }
    let lab = lab();
    let config = format!("{CONFIG}[boot]\nhttp_base = \"https://{{server}}\"\n");
    let daemon = Daemon::start(&lab.server, &config, &[("hosts.toml", INVENTORY)]).expect("daemon");
    let dir = TempDir::new().expect("dir");
    let log = dir.path.join("qemu.log");
    // Not in the inventory: a pool address, answered in userspace.
    let _vm = ipxe_rom_vm(&lab.client, "52:54:00:b0:0f:77", &log);
    let warned = wait_for(BOOT_BOUND, || {
        let l = daemon.log();
        l.lines()
            .find(|l| l.contains("iPXE without HTTPS"))
            .map(str::to_owned)
    })
    .unwrap_or_else(|| {
        panic!(
            "no warning.\nconsole:\n{}\ndaemon:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            daemon.log()
        )
    });
    assert!(
        warned.contains("WARN")
            && warned.contains("52:54:00:b0:0f:77")
            && warned.contains("was told https://10.77.0.1/boot.ipxe"),
        "{warned}"
    );
}

/// OVMF's own UEFI PXE client (arch 7) is told the x64 bootloader, asks our TFTP server for
/// its size (`tsize 0 blksize 1468 windowsize 4`), aborts after the OACK, asks again and
/// loads it; the iPXE it loaded then asks DHCP again and fetches its script over HTTP.
#[test]
fn ovmf_uefi_pxe_loads_ipxe_over_tftp() {
    let t = "ovmf_uefi_pxe_loads_ipxe_over_tftp";
    let code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
    let vars = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    let ipxe = "/usr/lib/ipxe/ipxe.efi";
    if !require_root(t)
        || !require(
            have_program("qemu-system-x86_64"),
            t,
            "QEMU is not installed (cargo xtask setup)",
        )
        || !require(
            std::path::Path::new(code).exists(),
            t,
            "OVMF is not installed (cargo xtask setup)",
        )
        || !require(
            std::path::Path::new(ipxe).exists(),
            t,
            "iPXE is not installed (cargo xtask setup)",
        )
    {
        return;
    }
    let dir = TempDir::new().expect("dir");
    let root = dir.path.join("tftp");
    std::fs::create_dir(&root).expect("root");
    std::fs::copy(ipxe, root.join("ipxe.efi")).expect("ipxe.efi");
    let lab = lab();
    let config = format!("{CONFIG}[tftp]\nroot = \"{}\"\n", root.display());
    let daemon = Daemon::start(&lab.server, &config, &[("hosts.toml", INVENTORY)]).expect("daemon");
    let vars_copy = dir.path.join("vars.fd");
    std::fs::copy(vars, &vars_copy).expect("vars");
    let log = dir.path.join("qemu.log");
    let pflash_code = format!("if=pflash,format=raw,unit=0,readonly=on,file={code}");
    let pflash_vars = format!("if=pflash,format=raw,unit=1,file={}", vars_copy.display());
    // romfile= (empty) keeps iPXE's ROM away, so OVMF's own PXE client does the boot.
    let _vm = qemu(
        &lab.client,
        &[
            "-drive",
            &pflash_code,
            "-drive",
            &pflash_vars,
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:b0:0f:01,romfile=",
        ],
        &log,
    );
    let (request, _) = first_http_request(&lab.server, &log, &daemon);
    assert!(request.starts_with("GET /boot.ipxe "), "{request}");
    let (_, metrics) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    let outcome = |o: &str| {
        sample(
            &metrics,
            "bootfabric_tftp_transfers_total",
            &[("outcome", o)],
        )
        .unwrap_or(0.0)
    };
    assert!(
        outcome("aborted_after_oack") >= 1.0 && outcome("completed") >= 1.0,
        "OVMF's size probe and its download: {metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "bootfabric_ledger_events_total",
            &[("phase", "tftp_failed")]
        ),
        None,
        "the size probe is not a failed transfer"
    );
    // OVMF asks windowsize 4: with TFTP in the kernel on, its download is handed to the
    // kernel after the first window, and the kernel sends the windows up to the last.
    if daemon.log().contains("TFTP: the kernel answers") {
        let hot =
            |name: &str, labels: &[(&str, &str)]| sample(&metrics, name, labels).unwrap_or(0.0);
        assert!(
            hot(
                "bootfabric_tftp_kernel_transfers_total",
                &[("file", "ipxe.efi"), ("result", "handed")]
            ) >= 1.0
                && hot(
                    "bootfabric_tftp_hot_file_blocks_total",
                    &[("file", "ipxe.efi"), ("path", "kernel")]
                ) > 0.0,
            "{metrics}"
        );
    }
}

/// QEMU's iPXE ROM gets the script URL from DHCP, and our HTTP server renders the host's
/// script; iPXE then fetches the kernel (iPXE's own bzImage build, a real Linux-format
/// kernel) and the initrd, and the ledger holds both downloads with every byte sent.
#[test]
fn qemu_ipxe_fetches_script_kernel_and_initrd_over_http() {
    let t = "qemu_ipxe_fetches_script_kernel_and_initrd_over_http";
    let lkrn = "/usr/lib/ipxe/ipxe.lkrn";
    if !require_firmware(t, "qemu-system-x86_64", &[lkrn]) {
        return;
    }
    let dir = TempDir::new().expect("dir");
    let images = dir.path.join("images");
    std::fs::create_dir_all(images.join("vm")).expect("images");
    std::fs::copy(lkrn, images.join("vm/kernel.lkrn")).expect("kernel");
    let kernel_len = std::fs::metadata(images.join("vm/kernel.lkrn"))
        .expect("meta")
        .len();
    let initrd: Vec<u8> = (0..300_007u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(images.join("vm/initrd.img"), &initrd).expect("initrd");
    let config = format!("{CONFIG}[http]\nroot = \"{}\"\n", images.display());
    let inventory = INVENTORY.replace(
        "[profiles.installer]",
        "[profiles.installer]\nkernel = \"vm/kernel.lkrn\"\ninitrd = [\"vm/initrd.img\"]\ncmdline = \"console=ttyS0\"",
    );
    let lab = lab();
    let daemon =
        Daemon::start(&lab.server, &config, &[("hosts.toml", &inventory)]).expect("daemon");
    let log = dir.path.join("qemu.log");
    let _vm = ipxe_rom_vm(&lab.client, "52:54:00:b0:0f:01", &log);
    let want = [
        format!("/vm/kernel.lkrn: {kernel_len} bytes"),
        "/vm/initrd.img: 300007 bytes".to_owned(),
    ];
    let timeline = wait_for(BOOT_BOUND, || {
        let (_, t) = http_get(
            &lab.server,
            daemon.admin,
            "/api/timeline?mac=52:54:00:b0:0f:01",
        )
        .ok()?;
        want.iter().all(|w| t.contains(w.as_str())).then_some(t)
    })
    .unwrap_or_else(|| {
        panic!(
            "iPXE did not fetch kernel and initrd.\nconsole:\n{}\ndaemon:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            daemon.log()
        )
    });
    assert!(timeline.contains("\"phase\":\"dhcp_ack\""), "{timeline}");
    let (_, metrics) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    assert_eq!(
        sample(
            &metrics,
            "bootfabric_http_requests_total",
            &[("route", "script"), ("code", "200")]
        ),
        Some(1.0),
        "the script was rendered once"
    );
}

#[test]
fn proxy_dhcp_boots_ipxe_next_to_dnsmasq() {
    let t = "proxy_dhcp_boots_ipxe_next_to_dnsmasq";
    if !require_root(t)
        || !require(
            have_program("qemu-system-x86_64"),
            t,
            "QEMU is not installed (cargo xtask setup)",
        )
        || !require(
            have_program("dnsmasq"),
            t,
            "dnsmasq is not installed (cargo xtask setup)",
        )
    {
        return;
    }
    // One segment: our proxy (10.77.0.1), dnsmasq handing out addresses (10.77.0.2), and a
    // VM on a tap, all on one bridge.
    let mut switch = bootfabric_lab::Bridge::new().expect("bridge");
    let server = Netns::new("srv").expect("server");
    let dhcp = Netns::new("dns").expect("dnsmasq");
    switch
        .plug(&server, "fabric0", "10.77.0.1/24")
        .expect("plug server");
    switch
        .plug(&dhcp, "dns0", "10.77.0.2/24")
        .expect("plug dnsmasq");
    for args in [
        &["tuntap", "add", "tap0", "mode", "tap"][..],
        &["link", "set", "tap0", "master", "br0"],
        &["link", "set", "tap0", "up"],
    ] {
        switch.ns().ip(args).expect("tap");
    }
    let dir = TempDir::new().expect("dir");
    let _dnsmasq = Qemu(
        dhcp.command("dnsmasq")
            .args([
                "--no-daemon",
                "--port=0",
                "--conf-file=/dev/null",
                "--interface=dns0",
            ])
            .args([
                "--bind-interfaces",
                "--dhcp-range=10.77.0.100,10.77.0.199,255.255.255.0,1h",
            ])
            .args(["--dhcp-authoritative", "--no-ping"])
            .arg(format!(
                "--dhcp-leasefile={}",
                dir.path.join("leases").display()
            ))
            .arg(format!("--pid-file={}", dir.path.join("pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    let config = "[fabric]\ninterfaces = [\"fabric0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[daemon]\nstate_dir = \"state\"\n[dhcp]\nmode = \"proxy\"\n";
    let daemon = Daemon::start(&server, config, &[]).expect("daemon");
    let log = dir.path.join("qemu.log");
    let _vm = ipxe_rom_vm(switch.ns(), "52:54:00:c0:ff:01", &log);
    let (request, peer) = first_http_request(&server, &log, &daemon);
    assert!(request.starts_with("GET /boot.ipxe "), "{request}");
    // The VM's address came from dnsmasq's range, not from us.
    let leases = std::fs::read_to_string(dir.path.join("leases")).unwrap_or_default();
    assert!(
        leases.contains("52:54:00:c0:ff:01") && leases.contains(&peer.ip().to_string()),
        "dnsmasq leases: {leases} (VM at {peer})"
    );
}

/// pxelinux (Debian's `pxelinux` and `syslinux-common`), chainloaded from QEMU's iPXE ROM,
/// loads `ldlinux.c32`, its per-host config, Debian's kernel and the lab's initramfs over
/// lock-step TFTP with the kernel answering (every one of them is in `tftp.kernel_files`),
/// and the kernel boots into the initramfs. The machine is not in the inventory, as a new
/// rack's machines are not: iPXE gets the operator's generic script from the HTTP root,
/// which chains `pxelinux.0` over TFTP (with pxelinux's path prefix, option 210, set as
/// syslinux documents for iPXE), and pxelinux finds the operator's file for its MAC
/// (`pxelinux.cfg/01-<mac>`).
#[test]
fn pxelinux_chainloaded_from_ipxe_boots_over_tftp_answered_in_the_kernel() {
    let t = "pxelinux_chainloaded_from_ipxe_boots_over_tftp_answered_in_the_kernel";
    let pxelinux = "/usr/lib/PXELINUX/pxelinux.0";
    let ldlinux = "/usr/lib/syslinux/modules/bios/ldlinux.c32";
    if !require_root(t)
        || !require(
            have_program("qemu-system-x86_64"),
            t,
            "QEMU is not installed (cargo xtask setup)",
        )
        || !require(
            std::path::Path::new(pxelinux).exists() && std::path::Path::new(ldlinux).exists(),
            t,
            "pxelinux or syslinux-common is not installed (cargo xtask setup)",
        )
    {
        return;
    }
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab-cache");
    let image = bootimage::ensure(&cache).expect("boot image");
    let dir = TempDir::new().expect("dir");
    let root = dir.path.join("tftp");
    let images = dir.path.join("images");
    std::fs::create_dir_all(root.join("pxelinux.cfg")).expect("root");
    std::fs::create_dir_all(&images).expect("images");
    std::fs::copy(pxelinux, root.join("pxelinux.0")).expect("pxelinux.0");
    std::fs::copy(ldlinux, root.join("ldlinux.c32")).expect("ldlinux.c32");
    std::fs::copy(&image.kernel, root.join("linux")).expect("kernel");
    std::fs::copy(&image.initramfs, root.join("initramfs")).expect("initramfs");
    std::fs::write(
        root.join("pxelinux.cfg/01-52-54-00-b0-0f-09"),
        "DEFAULT linux\nPROMPT 0\nTIMEOUT 0\nLABEL linux\n  KERNEL linux\n  INITRD initramfs\n  APPEND console=ttyS0 quiet\n",
    )
    .expect("pxelinux config");
    std::fs::write(
        images.join("boot.ipxe"),
        // Option 210 (PXELINUX's path prefix): without it pxelinux takes its folder from
        // the file name iPXE was given, here an http:// URL, which pxelinux cannot read.
        "#!ipxe\nset 210:string tftp://10.77.0.1/\nchain tftp://10.77.0.1/pxelinux.0\n",
    )
    .expect("script");
    let config = format!(
        "{CONFIG}[tftp]\nroot = \"{}\"\nkernel_files = [\"pxelinux.0\", \"ldlinux.c32\", \"linux\", \"initramfs\"]\nkernel_bytes = 134217728\n[http]\nroot = \"{}\"\n",
        root.display(),
        images.display()
    );
    let lab = lab();
    let daemon = Daemon::start(&lab.server, &config, &[("hosts.toml", INVENTORY)]).expect("daemon");
    if !daemon.log().contains("TFTP: the kernel answers") && bootfabric_lab::lab_required() {
        panic!("TFTP in the kernel is not on:\n{}", daemon.log());
    }
    let log = dir.path.join("qemu.log");
    let _vm = qemu(
        &lab.client,
        &[
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:b0:0f:09",
            "-boot",
            "n",
            "-m",
            "512",
        ],
        &log,
    );
    // The initramfs's /init says so on the serial console once the kernel runs it.
    wait_for(BOOT_BOUND, || {
        std::fs::read_to_string(&log)
            .ok()?
            .contains("bootfabric-init: kernel up")
            .then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "the kernel did not come up.\nconsole:\n{}\ndaemon:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            daemon.log()
        )
    });
    let (_, metrics) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    for file in ["pxelinux.0", "ldlinux.c32", "linux", "initramfs"] {
        assert!(
            sample(
                &metrics,
                "bootfabric_tftp_kernel_transfers_total",
                &[("file", file), ("result", "handed")]
            )
            .unwrap_or(0.0)
                >= 1.0,
            "{file} was not handed to the kernel: {metrics}\n{}",
            daemon.log()
        );
    }
    let kernel_bytes = sample(&metrics, "bootfabric_tftp_kernel_bytes_total", &[]).unwrap_or(0.0);
    let images = std::fs::metadata(root.join("linux")).expect("meta").len()
        + std::fs::metadata(root.join("initramfs"))
            .expect("meta")
            .len();
    assert!(
        kernel_bytes >= images as f64 * 0.9,
        "the kernel sent {kernel_bytes} bytes of {images}: {metrics}"
    );
}

/// UEFI HTTP boot, no TFTP at all: OVMF's own HTTP-boot client (vendor class
/// `HTTPClient`, arch 16) is told a URL, loads `ipxe.efi` from it, and the iPXE it started
/// boots Debian's kernel and initramfs from the fabric to the booted callback. Over `https`
/// every stage comes over TLS: the firmware trusts the lab's CA (enrolled through fw_cfg as
/// OVMF reads it), and so does the iPXE it loads (Debian trixie's, which trusts the CAs the
/// firmware holds; bookworm's has no HTTPS) for its script, kernel and initramfs. Only the
/// booted OS's callback stays on plain HTTP (busybox's `wget` verifies no certificate).
fn ovmf_http_boot(t: &str, https: bool) {
    use bootfabric_lab::{bootimage, capture::Capture, pki};
    let code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
    let vars = "/usr/share/OVMF/OVMF_VARS_4M.fd";
    let bookworm_ipxe = "/usr/lib/ipxe/ipxe.efi";
    if !require_firmware(t, "qemu-system-x86_64", &[code, vars, bookworm_ipxe])
        || !require(have_program("openssl"), t, "openssl is not installed")
    {
        return;
    }
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab-cache");
    let image = bootimage::ensure(&cache).expect("boot image");
    let ipxe = if https {
        bootfabric_lab::ipxe::trixie(&cache)
            .expect("trixie's iPXE")
            .amd64
    } else {
        bookworm_ipxe.into()
    };
    let dir = TempDir::new().expect("dir");
    let root = dir.path.join("http");
    std::fs::create_dir_all(root.join("linux")).expect("root");
    let ipxe_len = std::fs::copy(&ipxe, root.join("ipxe.efi")).expect("ipxe.efi");
    std::fs::copy(&image.kernel, root.join("linux/vmlinuz")).expect("kernel");
    std::fs::copy(&image.initramfs, root.join("linux/initramfs.cpio")).expect("initramfs");
    let mut config = format!("{CONFIG}[http]\nroot = \"{}\"\n", root.display());
    let mut profile = String::from(
        "[profiles.installer]\nkernel = \"linux/vmlinuz\"\ninitrd = [\"linux/initramfs.cpio\"]\ncmdline = \"console=ttyS0 quiet bootfabric.booted={http_base}/booted\"\n",
    );
    let mut fw_cfg = vec![
        // Only the HTTP-boot entries: PXE stays out of the boot order.
        "name=opt/org.tianocore/IPv4PXESupport,string=no".to_owned(),
        "name=opt/org.tianocore/IPv6PXESupport,string=no".to_owned(),
    ];
    if https {
        let pki_dir = dir.path.join("pki");
        std::fs::create_dir(&pki_dir).expect("pki");
        pki::issue_rsa(
            &pki_dir,
            &[pki::Leaf {
                name: "server",
                cn: "10.77.0.1",
                ext: "subjectAltName = IP:10.77.0.1",
            }],
        )
        .expect("openssl");
        config.push_str(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            pki_dir.join("server.pem").display(),
            pki_dir.join("server.key").display()
        ));
        // The firmware's program, iPXE's script and the images under an https base; the
        // callback named on its own, over plain HTTP.
        profile = profile.replace("{http_base}/booted", "http://{server}/booted");
        profile.push_str("[profiles.installer.boot]\nhttp_base = \"https://{server}\"\n");
        let esl = dir.path.join("cacerts.esl");
        std::fs::write(&esl, signature_list(&pki_dir.join("ca.pem"))).expect("esl");
        fw_cfg.push(format!(
            "name=etc/edk2/https/cacerts,file={}",
            esl.display()
        ));
    }
    let inventory = INVENTORY.replace("[profiles.installer]\n", &profile);
    let lab = lab();
    let daemon =
        Daemon::start(&lab.server, &config, &[("hosts.toml", &inventory)]).expect("daemon");
    let vars_copy = dir.path.join("vars.fd");
    std::fs::copy(vars, &vars_copy).expect("vars");
    let log = dir.path.join("qemu.log");
    let pflash_code = format!("if=pflash,format=raw,unit=0,readonly=on,file={code}");
    let pflash_vars = format!("if=pflash,format=raw,unit=1,file={}", vars_copy.display());
    let capture = Capture::start(&lab.client, "tap0").expect("capture");
    let mut args = vec![
        "-drive",
        &pflash_code,
        "-drive",
        &pflash_vars,
        // romfile= (empty) keeps iPXE's ROM away: OVMF's own network stack boots.
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:b0:0f:01,romfile=",
    ];
    for f in &fw_cfg {
        args.extend(["-fw_cfg", f.as_str()]);
    }
    let _vm = qemu(&lab.client, &args, &log);
    // The firmware gives up on the network in its console ("Remote boot cancelled") and goes
    // on to its shell: stop waiting then.
    let gave_up = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("EFI Internal Shell")
    };
    let timeline = wait_for(BOOT_BOUND * 2, || {
        let (_, t) = http_get(
            &lab.server,
            daemon.admin,
            "/api/timeline?mac=52:54:00:b0:0f:01",
        )
        .ok()?;
        if gave_up() {
            return Some(Err(t));
        }
        t.contains("\"phase\":\"booted\"").then_some(Ok(t))
    })
    .and_then(Result::ok)
    .unwrap_or_else(|| {
        panic!(
            "the machine did not boot.\nconsole:\n{}\ndaemon:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            daemon.log()
        )
    });
    // The firmware's program, iPXE's script, kernel and initramfs, the OS's callback.
    in_order(
        &timeline,
        &[
            format!("\"detail\":\"/ipxe.efi: {ipxe_len} bytes\""),
            "\"phase\":\"ipxe_script\"".to_owned(),
            "\"detail\":\"/linux/vmlinuz: ".to_owned(),
            "\"detail\":\"/linux/initramfs.cpio: ".to_owned(),
            "\"phase\":\"booted\"".to_owned(),
        ],
    );
    // `check` finds the program the firmware loaded and, over HTTPS, a certificate it can
    // verify (ports are in use by the running daemon: only these lines are read).
    let check = lab
        .server
        .command(bootfabric_lab::bootfabric_bin())
        .args(["check", "--skip", "xdp,bmc,dhcp,cluster", "--config"])
        .arg(daemon.config_path())
        .output()
        .expect("check");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(said.contains("PASS  HTTP-boot program ipxe.efi"), "{said}");
    assert_eq!(
        said.contains("PASS  HTTPS for UEFI HTTP boot"),
        https,
        "{said}"
    );
    let frames = capture.finish();
    let sent = |proto: u8, port: u16| {
        frames
            .iter()
            .filter(|f| dst_port(f, proto) == Some(port))
            .count()
    };
    assert_eq!(sent(17, 69), 0, "the machine sent TFTP requests");
    if https {
        assert!(sent(6, 443) > 0, "the firmware never reached port 443");
        // Every download of the timeline above came over TLS: nothing was asked for in
        // plain text (the callback is a POST).
        let plain = frames
            .iter()
            .filter(|f| dst_port(f, 6) == Some(80))
            .find_map(|f| {
                let at = f.windows(5).position(|w| w == b"GET /")?;
                Some(String::from_utf8_lossy(&f[at..(at + 40).min(f.len())]).into_owned())
            });
        assert_eq!(plain, None, "a download over plain HTTP");
    }
}

/// The destination port of an Ethernet frame carrying IPv4 and `proto` (6 TCP, 17 UDP).
fn dst_port(frame: &[u8], proto: u8) -> Option<u16> {
    if frame.get(12..14)? != [0x08, 0x00] || *frame.get(23)? != proto {
        return None;
    }
    let ihl = usize::from(frame.get(14)? & 0x0f) * 4;
    let l4 = frame.get(14 + ihl..)?;
    Some(u16::from_be_bytes([*l4.get(2)?, *l4.get(3)?]))
}

/// `pem` (one certificate) as an EFI signature list holding one X.509 entry: the format
/// OVMF reads its trusted HTTPS CAs in (UEFI 2.x, EFI_SIGNATURE_LIST).
fn signature_list(pem: &std::path::Path) -> Vec<u8> {
    let out = std::process::Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(pem)
        .output()
        .expect("openssl");
    assert!(
        out.status.success() && !out.stdout.is_empty(),
        "openssl x509: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let der = out.stdout;
    // EFI_CERT_X509_GUID a5c059a1-94e4-4aa7-87b5-ab155c2bf072, in UEFI's byte order.
    const X509: [u8; 16] = [
        0xa1, 0x59, 0xc0, 0xa5, 0xe4, 0x94, 0xa7, 0x4a, 0x87, 0xb5, 0xab, 0x15, 0x5c, 0x2b, 0xf0,
        0x72,
    ];
    let owner = [0x42u8; 16];
    let entry = 16 + der.len();
    let mut out = Vec::with_capacity(28 + entry);
    out.extend_from_slice(&X509);
    out.extend_from_slice(&((28 + entry) as u32).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(entry as u32).to_le_bytes());
    out.extend_from_slice(&owner);
    out.extend_from_slice(&der);
    out
}

#[test]
fn ovmf_http_boot_loads_ipxe_and_boots_linux_without_tftp() {
    ovmf_http_boot(
        "ovmf_http_boot_loads_ipxe_and_boots_linux_without_tftp",
        false,
    );
}

/// HTTPS from the firmware's first request to the kernel and initramfs iPXE loads: iPXE over
/// HTTPS, trusting the CA enrolled in the firmware.
#[test]
fn ovmf_https_boot_and_ipxe_over_https_trust_the_enrolled_ca() {
    ovmf_http_boot(
        "ovmf_https_boot_and_ipxe_over_https_trust_the_enrolled_ca",
        true,
    );
}

/// iPXE configures IPv6 router discovery beside DHCP and fetches its script only when both
/// are done: unanswered, its solicitations cost about 13 s per start. With IPv6 disabled on
/// the server's interface the daemon still answers them (from a packet socket), so iPXE's
/// script request follows its DHCP within seconds. The bound is far above the ~1 s this
/// takes under TCG and far below the 13 s wait it guards against.
#[test]
fn ipxe_skips_the_router_wait_with_ipv6_disabled_on_the_server() {
    let t = "ipxe_skips_the_router_wait_with_ipv6_disabled_on_the_server";
    let lkrn = "/usr/lib/ipxe/ipxe.lkrn";
    if !require_firmware(t, "qemu-system-x86_64", &[lkrn]) {
        return;
    }
    let dir = TempDir::new().expect("dir");
    let images = dir.path.join("images");
    std::fs::create_dir_all(images.join("vm")).expect("images");
    std::fs::copy(lkrn, images.join("vm/kernel.lkrn")).expect("kernel");
    let config = format!("{CONFIG}[http]\nroot = \"{}\"\n", images.display());
    let inventory = INVENTORY.replace(
        "[profiles.installer]",
        "[profiles.installer]\nkernel = \"vm/kernel.lkrn\"\ncmdline = \"console=ttyS0\"",
    );
    let lab = lab();
    bootfabric_lab::run(
        lab.server
            .command("sysctl")
            .args(["-qw", "net.ipv6.conf.fabric0.disable_ipv6=1"]),
    )
    .expect("sysctl");
    let daemon =
        Daemon::start(&lab.server, &config, &[("hosts.toml", &inventory)]).expect("daemon");
    assert!(
        daemon.logged("answering router solicitations from a packet socket"),
        "{}",
        daemon.log()
    );
    let log = dir.path.join("qemu.log");
    let _vm = ipxe_rom_vm(&lab.client, "52:54:00:b0:0f:01", &log);
    let events = wait_for(BOOT_BOUND, || {
        let (_, t) = http_get(
            &lab.server,
            daemon.admin,
            "/api/timeline?mac=52:54:00:b0:0f:01",
        )
        .ok()?;
        let v: serde_json::Value = serde_json::from_str(&t).ok()?;
        let events = v["events"].as_array()?.clone();
        events
            .iter()
            .any(|e| e["phase"] == "ipxe_script")
            .then_some(events)
    })
    .unwrap_or_else(|| {
        panic!(
            "iPXE never asked for its script.\nconsole:\n{}\ndaemon:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            daemon.log()
        )
    });
    let at = |phase: &str| {
        events
            .iter()
            .find(|e| e["phase"] == phase)
            .and_then(|e| e["at_ms"].as_u64())
            .unwrap_or_else(|| panic!("no {phase} in {events:?}"))
    };
    let gap = at("ipxe_script").saturating_sub(at("dhcp_offer"));
    assert!(
        gap < 8_000,
        "{gap} ms from iPXE's DHCP offer to its script request: the router wait is back\n{events:?}"
    );
    let (_, metrics) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    assert!(
        sample(
            &metrics,
            "bootfabric_ra_sent_total",
            &[("iface", "fabric0")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
}

/// The Secure Boot firmware of these tests: OVMF built with SMM and Secure Boot, its
/// variables holding Microsoft's keys (Debian's `OVMF_VARS_4M.ms.fd`), enforcing.
const SB_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const SB_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

/// Starts a Secure Boot OVMF machine (q35 with SMM) whose own PXE client boots.
fn secure_boot_vm(
    lab: &bootfabric_lab::PairLab,
    dir: &std::path::Path,
) -> (Qemu, std::path::PathBuf) {
    let vars_copy = dir.join("vars.fd");
    std::fs::copy(SB_VARS, &vars_copy).expect("vars");
    let log = dir.join("qemu.log");
    let pflash_code = format!("if=pflash,format=raw,unit=0,readonly=on,file={SB_CODE}");
    let pflash_vars = format!("if=pflash,format=raw,unit=1,file={}", vars_copy.display());
    let vm = qemu(
        &lab.client,
        &[
            "-machine",
            "q35,smm=on",
            "-global",
            "driver=cfi.pflash01,property=secure,value=on",
            "-drive",
            &pflash_code,
            "-drive",
            &pflash_vars,
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:b0:0f:01,romfile=",
        ],
        &log,
    );
    (vm, log)
}

/// The files of a Secure Boot lab: Debian's shim and signed network GRUB, the unsigned
/// `ipxe.efi`, Debian's (signed) kernel and the lab's initramfs, under one root served by
/// TFTP and HTTP. `None` when something is missing (the test says why).
fn secure_boot_root(t: &str, dir: &std::path::Path) -> Option<std::path::PathBuf> {
    use bootfabric_lab::bootimage;
    if !require_firmware(
        t,
        "qemu-system-x86_64",
        &[SB_CODE, SB_VARS, "/usr/lib/ipxe/ipxe.efi"],
    ) {
        return None;
    }
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab-cache");
    let image = bootimage::ensure(&cache).expect("boot image");
    let (shim, grub) = bootimage::secure_boot_loaders(&cache).expect("shim and GRUB");
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("linux")).expect("root");
    for (from, to) in [
        (shim.as_path(), "shimx64.efi"),
        (grub.as_path(), "grubx64.efi"),
        (std::path::Path::new("/usr/lib/ipxe/ipxe.efi"), "ipxe.efi"),
        (image.kernel.as_path(), "linux/vmlinuz"),
        (image.initramfs.as_path(), "linux/initramfs.cpio"),
    ] {
        std::fs::copy(from, root.join(to)).unwrap_or_else(|e| panic!("{to}: {e}"));
    }
    Some(root)
}

fn secure_boot_config(root: &std::path::Path) -> String {
    format!(
        "{CONFIG}[tftp]\nroot = \"{r}\"\n[http]\nroot = \"{r}\"\n",
        r = root.display()
    )
}

/// Secure Boot enforced, end to end: a profile marked `secure_boot` hands OVMF's PXE client
/// (Microsoft's keys enrolled) Debian's shim, which loads the signed network GRUB beside it;
/// GRUB asks for `grub/grub.cfg`, rendered for this host, and loads Debian's signed kernel
/// and the initramfs over TFTP; the kernel boots locked down and reports `booted`.
#[test]
fn secure_boot_boots_shim_grub_and_the_signed_kernel() {
    let t = "secure_boot_boots_shim_grub_and_the_signed_kernel";
    let dir = TempDir::new().expect("dir");
    let Some(root) = secure_boot_root(t, &dir.path) else {
        return;
    };
    let inventory = INVENTORY.replace(
        "[profiles.installer]\n",
        "[profiles.installer]\nkernel = \"linux/vmlinuz\"\ninitrd = [\"linux/initramfs.cpio\"]\ncmdline = \"console=ttyS0 bootfabric.booted={http_base}/booted\"\n[profiles.installer.boot]\nsecure_boot = true\n",
    );
    let lab = lab();
    let daemon = Daemon::start(
        &lab.server,
        &secure_boot_config(&root),
        &[("hosts.toml", &inventory)],
    )
    .expect("daemon");
    let (_vm, log) = secure_boot_vm(&lab, &dir.path);
    let timeline = wait_booted(&lab, &daemon, &log);
    in_order(
        &timeline,
        &[
            "\"detail\":\"shimx64.efi",
            "\"detail\":\"grubx64.efi",
            "\"detail\":\"/grub/grub.cfg",
            "\"detail\":\"/linux/vmlinuz",
            "\"detail\":\"/linux/initramfs.cpio",
            "\"phase\":\"booted\"",
        ],
    );
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        console.contains("Secure boot enabled") && console.contains("locked down"),
        "the kernel did not run under Secure Boot:\n{console}"
    );
    let (_, metrics) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    assert!(
        sample(
            &metrics,
            "bootfabric_tftp_rendered_total",
            &[("format", "grub")]
        )
        .unwrap_or(0.0)
            >= 1.0,
        "{metrics}"
    );
    // `check` finds every program of the chain signed.
    let check = lab
        .server
        .command(bootfabric_lab::bootfabric_bin())
        .args(["check", "--skip", "xdp,bmc,dhcp,cluster", "--config"])
        .arg(daemon.config_path())
        .output()
        .expect("check");
    let said = String::from_utf8_lossy(&check.stdout);
    for item in [
        "PASS  secure boot shim shimx64.efi: signed",
        "PASS  secure boot GRUB grubx64.efi: signed",
        "PASS  secure boot kernel linux/vmlinuz: signed",
    ] {
        assert!(said.contains(item), "{item:?} not in\n{said}");
    }
}

/// The same firmware refuses what is not signed: a profile without `secure_boot` hands it
/// Debian's (unsigned) iPXE, and OVMF will not run it ("Access Denied"); `check` warns about
/// a Secure Boot profile whose shim is that unsigned program.
#[test]
fn secure_boot_firmware_refuses_an_unsigned_program() {
    let t = "secure_boot_firmware_refuses_an_unsigned_program";
    let dir = TempDir::new().expect("dir");
    let Some(root) = secure_boot_root(t, &dir.path) else {
        return;
    };
    let lab = lab();
    let daemon = Daemon::start(
        &lab.server,
        &secure_boot_config(&root),
        &[("hosts.toml", INVENTORY)],
    )
    .expect("daemon");
    let (_vm, log) = secure_boot_vm(&lab, &dir.path);
    let refused = wait_for(BOOT_BOUND, || {
        let console = std::fs::read_to_string(&log).ok()?;
        console
            .lines()
            .find(|l| l.contains("UEFI PXEv4") && l.contains("Access Denied"))
            .map(str::to_owned)
    });
    assert!(
        refused.is_some(),
        "no refusal.\nconsole:\n{}\ndaemon:\n{}",
        std::fs::read_to_string(&log).unwrap_or_default(),
        daemon.log()
    );
    let (_, timeline) = http_get(
        &lab.server,
        daemon.admin,
        "/api/timeline?mac=52:54:00:b0:0f:01",
    )
    .expect("timeline");
    assert!(timeline.contains("\"detail\":\"ipxe.efi"), "{timeline}");
    // A Secure Boot profile pointing its shim at that program is warned about.
    let config = daemon.config_path();
    let marked = INVENTORY.replace(
        "[profiles.installer]\n",
        "[profiles.installer]\n[profiles.installer.boot]\nsecure_boot = true\nshim_x64 = \"ipxe.efi\"\n",
    );
    std::fs::write(config.with_file_name("hosts.toml"), marked).expect("inventory");
    let check = lab
        .server
        .command(bootfabric_lab::bootfabric_bin())
        .args(["check", "--skip", "xdp,bmc,dhcp,cluster", "--config"])
        .arg(&config)
        .output()
        .expect("check");
    let said = String::from_utf8_lossy(&check.stdout);
    assert!(
        said.contains("WARN  secure boot shim ipxe.efi: not signed"),
        "{said}"
    );
}

/// An arm64 UEFI machine (QEMU's `virt` board, AAVMF) boots Debian's arm64 kernel through
/// the fabric to the booted callback: by UEFI PXE (arch 11: `boot.uefi_arm64` over TFTP) or
/// by UEFI HTTP boot (arch 19: `boot.uefi_http_arm64`, PXE entries off), iPXE for arm64
/// then fetching its script, kernel and initramfs over HTTP.
fn arm64_boot(t: &str, http: bool) {
    use bootfabric_lab::arm64;
    if !require_firmware(t, arm64::QEMU, &[arm64::CODE, arm64::VARS]) {
        return;
    }
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab-cache");
    let payload = arm64::ensure(&cache).expect("arm64 kernel, initramfs and iPXE");
    let dir = TempDir::new().expect("dir");
    let root = dir.path.join("root");
    std::fs::create_dir_all(root.join("linux")).expect("root");
    for (from, to) in [
        (&payload.ipxe, "ipxe-arm64.efi"),
        (&payload.kernel, "linux/vmlinuz"),
        (&payload.initramfs, "linux/initramfs.cpio"),
    ] {
        std::fs::copy(from, root.join(to)).unwrap_or_else(|e| panic!("{to}: {e}"));
    }
    let config = format!(
        "{CONFIG}[tftp]\nroot = \"{r}\"\n[http]\nroot = \"{r}\"\n[boot]\nuefi_arm64 = \"ipxe-arm64.efi\"\nuefi_http_arm64 = \"ipxe-arm64.efi\"\n",
        r = root.display()
    );
    let inventory = INVENTORY.replace(
        "[profiles.installer]\n",
        "[profiles.installer]\nkernel = \"linux/vmlinuz\"\ninitrd = [\"linux/initramfs.cpio\"]\ncmdline = \"console=ttyAMA0 bootfabric.booted={http_base}/booted\"\n",
    );
    let lab = lab();
    let daemon =
        Daemon::start(&lab.server, &config, &[("hosts.toml", &inventory)]).expect("daemon");
    let vars_copy = dir.path.join("vars.fd");
    std::fs::copy(arm64::VARS, &vars_copy).expect("vars");
    let log = dir.path.join("qemu.log");
    let pflash_code = format!("if=pflash,format=raw,readonly=on,file={}", arm64::CODE);
    let pflash_vars = format!("if=pflash,format=raw,file={}", vars_copy.display());
    let mut args = vec![
        "-M",
        "virt",
        "-cpu",
        "cortex-a57",
        "-drive",
        &pflash_code,
        "-drive",
        &pflash_vars,
        "-device",
        "virtio-net-pci,netdev=n0,mac=52:54:00:b0:0f:01,romfile=",
    ];
    if http {
        args.extend([
            "-fw_cfg",
            "name=opt/org.tianocore/IPv4PXESupport,string=no",
            "-fw_cfg",
            "name=opt/org.tianocore/IPv6PXESupport,string=no",
        ]);
    }
    let _vm = bootfabric_lab::qemu::start_program(arm64::QEMU, &lab.client, "tap0", &args, &log)
        .expect("qemu");
    let timeline = wait_booted(&lab, &daemon, &log);
    let first = if http {
        "\"phase\":\"http_sent\",\"ip\":\"10.77.0.11\",\"detail\":\"/ipxe-arm64.efi"
    } else {
        "\"phase\":\"tftp_sent\",\"ip\":\"10.77.0.11\",\"detail\":\"ipxe-arm64.efi"
    };
    in_order(
        &timeline,
        &[
            first,
            "\"phase\":\"ipxe_script\"",
            "\"detail\":\"/linux/vmlinuz: ",
            "\"detail\":\"/linux/initramfs.cpio: ",
            "\"phase\":\"booted\"",
        ],
    );
    let console = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        console.contains("aarch64") || console.contains("arm64"),
        "{console}"
    );
}

#[test]
fn arm64_uefi_pxe_boots_linux_through_the_fabric() {
    arm64_boot("arm64_uefi_pxe_boots_linux_through_the_fabric", false);
}

#[test]
fn arm64_uefi_http_boot_boots_linux_through_the_fabric() {
    arm64_boot("arm64_uefi_http_boot_boots_linux_through_the_fabric", true);
}

/// The IPv6-only provisioning network of the tests below: DHCPv6 on 2001:db8:77::/64 (the
/// firmware's host reserved at ::11), no DHCPv4 server, HTTP on port 80 from `root`.
fn ipv6_config(root: &std::path::Path) -> String {
    format!(
        r#"
[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[tftp]
root = "{root}"
[http]
root = "{root}"
[dhcp6]
[[dhcp6.subnets]]
cidr = "2001:db8:77::/64"
interface = "fabric0"
pools = ["2001:db8:77::1000-2001:db8:77::1fff"]
"#,
        root = root.display()
    )
}

/// The inventory of the IPv6 tests: vm01 reserved 2001:db8:77::11; its kernel reads that
/// address from its command line (`{ip}`: the initramfs has no DHCPv6 client).
const IPV6_INVENTORY: &str = r#"
[profiles.installer]
kernel = "linux/vmlinuz"
initrd = ["linux/initramfs.cpio"]
cmdline = "console=ttyS0 quiet bootfabric.ip6={ip} bootfabric.booted={http_base}/booted"
[[hosts]]
name = "vm01"
mac = "52:54:00:b0:0f:01"
ipv6 = "2001:db8:77::11"
profile = "installer"
"#;

/// Boots the firmware `args` name over IPv6 only, to the `booted` callback, and returns the
/// machine's timeline and the daemon's log.
fn ipv6_boot(
    t: &str,
    files: &[&str],
    with_ipxe_efi: bool,
    args: &[&str],
) -> Option<(String, String)> {
    if !require_firmware(t, "qemu-system-x86_64", files) {
        return None;
    }
    let cache = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab-cache");
    let image = bootimage::ensure(&cache).expect("boot image");
    let dir = TempDir::new().expect("dir");
    let root = dir.path.join("root");
    std::fs::create_dir_all(root.join("linux")).expect("root");
    std::fs::copy(&image.kernel, root.join("linux/vmlinuz")).expect("kernel");
    std::fs::copy(&image.initramfs, root.join("linux/initramfs.cpio")).expect("initramfs");
    if with_ipxe_efi {
        std::fs::copy("/usr/lib/ipxe/ipxe.efi", root.join("ipxe.efi")).expect("ipxe.efi");
    }
    let lab = lab();
    lab.server
        .ip(&[
            "addr",
            "add",
            "2001:db8:77::1/64",
            "dev",
            "fabric0",
            "nodad",
        ])
        .expect("server IPv6 address");
    let daemon = Daemon::start(
        &lab.server,
        &ipv6_config(&root),
        &[("hosts.toml", IPV6_INVENTORY)],
    )
    .expect("daemon");
    let log = dir.path.join("qemu.log");
    let vars_copy = dir.path.join("vars.fd");
    let mut full: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    if let Some(i) = full.iter().position(|a| a == "VARS") {
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars_copy).expect("vars");
        full[i] = format!("if=pflash,format=raw,unit=1,file={}", vars_copy.display());
    }
    let full: Vec<&str> = full.iter().map(String::as_str).collect();
    let started = Instant::now();
    let _vm = qemu(&lab.client, &full, &log);
    let timeline = wait_booted(&lab, &daemon, &log);
    // Reported, not asserted: TCG's speed is the machine's.
    eprintln!(
        "{t}: booted {:.1} s after QEMU started",
        started.elapsed().as_secs_f64()
    );
    Some((timeline, daemon.log()))
}

/// The machine's timeline holds `steps` (phase, start of its detail) in this order, and
/// every event that names an address names the host's IPv6 reservation: nothing went over
/// IPv4.
fn steps_over_ipv6(timeline: &str, log: &str, steps: &[(&str, &str)]) {
    let v: serde_json::Value = serde_json::from_str(timeline).expect("timeline JSON");
    let events = v["events"].as_array().cloned().unwrap_or_default();
    let mut at = 0;
    for (phase, detail) in steps {
        let found = events[at..].iter().position(|e| {
            e["phase"] == *phase && e["detail"].as_str().unwrap_or("").starts_with(detail)
        });
        let Some(i) = found else {
            panic!("no {phase} {detail:?} after event {at}: {timeline}\n{log}");
        };
        at += i + 1;
    }
    for e in &events {
        if let Some(ip) = e["ip"].as_str() {
            assert_eq!(ip, "2001:db8:77::11", "{e}\n{timeline}");
        }
    }
}

/// iPXE (QEMU's ROM) on an IPv6-only network: the managed router advertisement starts its
/// DHCPv6 (Solicit, Advertise, Request, Reply with the RFC 5970 boot file URL, the script
/// URL with the server's IPv6 address), then script, kernel and initramfs over HTTP over
/// IPv6, and the booted callback from the host's DHCPv6 address.
#[test]
fn ipxe_boots_linux_over_ipv6_with_dhcpv6_and_http() {
    let t = "ipxe_boots_linux_over_ipv6_with_dhcpv6_and_http";
    let Some((timeline, log)) = ipv6_boot(
        t,
        &[],
        false,
        &[
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:b0:0f:01",
            "-boot",
            "n",
        ],
    ) else {
        return;
    };
    steps_over_ipv6(
        &timeline,
        &log,
        &[
            ("dhcp_offer", ""),
            ("dhcp_ack", ""),
            ("ipxe_script", ""),
            ("http_sent", "/linux/vmlinuz: "),
            ("http_sent", "/linux/initramfs.cpio: "),
            ("booted", ""),
        ],
    );
}

/// OVMF's UEFI PXE over IPv6 (its PXEv6 entry, arch 7): DHCPv6 hands it a tftp:// URL, it
/// loads ipxe.efi over TFTP over IPv6; that iPXE asks DHCPv6 again (user class iPXE), is
/// given the script URL, and boots Linux over HTTP over IPv6 to the booted callback.
#[test]
fn ovmf_pxe_over_ipv6_loads_ipxe_over_tftp_and_boots_linux_over_http() {
    let t = "ovmf_pxe_over_ipv6_loads_ipxe_over_tftp_and_boots_linux_over_http";
    let code = "/usr/share/OVMF/OVMF_CODE_4M.fd";
    let pflash_code = format!("if=pflash,format=raw,unit=0,readonly=on,file={code}");
    let Some((timeline, log)) = ipv6_boot(
        t,
        &[
            code,
            "/usr/share/OVMF/OVMF_VARS_4M.fd",
            "/usr/lib/ipxe/ipxe.efi",
        ],
        true,
        &[
            "-drive",
            &pflash_code,
            "-drive",
            "VARS",
            // OVMF's own network stack (no iPXE ROM), its IPv6 PXE entry first.
            "-device",
            "virtio-net-pci,netdev=n0,mac=52:54:00:b0:0f:01,romfile=",
            "-fw_cfg",
            "name=opt/org.tianocore/IPv4PXESupport,string=no",
        ],
    ) else {
        return;
    };
    steps_over_ipv6(
        &timeline,
        &log,
        &[
            ("dhcp_ack", ""),
            ("tftp_sent", "ipxe.efi"),
            ("dhcp_ack", ""),
            ("ipxe_script", ""),
            ("http_sent", "/linux/vmlinuz: "),
            ("booted", ""),
        ],
    );
}
