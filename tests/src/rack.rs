//! Rack in a box: QEMU machines as libvirt domains, each with a Redfish BMC
//! (sushy-emulator's libvirt driver, as Metal3's dev-env does), booting through a
//! `bootfabric serve` on the lab's provisioning bridge. `cargo xtask demo` and the
//! end-to-end tests build the same rack.
//!
//! Namespaces: `switch` holds the provisioning bridge `br0`, libvirtd (so the machines'
//! taps join `br0` there) and sushy on the management link; `server` holds the daemon on
//! `fabric0` (10.77.0.1/24, on `br0`) and `mgmt0` (10.78.0.1/24, to sushy at 10.78.0.2:8000).
//! libvirtd runs in a private mount namespace over the lab's folder, so it never touches a
//! libvirt the machine may run itself; its socket is in the lab's folder.

use std::{
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    bootimage::BootImage,
    run,
    sushy::{Driver, Sushy},
    veth, wait_for, Bridge, Daemon, KillOnDrop, LabError, Netns, TempDir,
};

/// How a machine boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with the NIC's iPXE ROM: iPXE does DHCP and fetches its script.
    Bios,
    /// OVMF's own UEFI PXE client (arch 7): loads `ipxe.efi` over TFTP, which then boots.
    UefiPxe,
    /// OVMF with the NIC's iPXE EFI ROM.
    UefiIpxe,
    /// OVMF's own UEFI HTTP-boot client (arch 16), its PXE entries off: loads `ipxe.efi`
    /// over HTTP, no TFTP at all.
    UefiHttp,
}

impl Firmware {
    /// Label (also the machine's model in the inventory: POST is learned per model).
    pub fn label(self) -> &'static str {
        match self {
            Self::Bios => "bios-ipxe",
            Self::UefiPxe => "uefi-pxe",
            Self::UefiIpxe => "uefi-ipxe",
            Self::UefiHttp => "uefi-http",
        }
    }
}

/// One machine of the rack.
#[derive(Clone, Debug)]
pub struct Machine {
    /// Host name (and libvirt domain name).
    pub name: String,
    /// Its NIC.
    pub mac: String,
    /// Its reserved address.
    pub ip: Ipv4Addr,
    /// libvirt UUID (its Redfish system is `/redfish/v1/Systems/<uuid>`).
    pub uuid: String,
    /// How it boots.
    pub firmware: Firmware,
}

/// `n` machines, firmware taken in turn from `mix`.
pub fn machines(n: usize, mix: &[Firmware]) -> Vec<Machine> {
    (0..n)
        .map(|i| Machine {
            name: format!("node{:02}", i + 1),
            mac: format!("52:54:00:b0:0f:{:02x}", i + 1),
            ip: Ipv4Addr::new(10, 77, 0, 11 + i as u8),
            uuid: format!("b00ff0b0-0000-4000-8000-{:012x}", i + 1),
            firmware: mix[i % mix.len()],
        })
        .collect()
}

/// The BMC user the rack's sushy accepts.
pub const BMC_USER: &str = "admin";
const BMC_PASSWORD: &str = "rack-in-a-box";
const SUSHY: (&str, u16) = ("10.78.0.2", 8000);

/// Options for [`Rack::start`].
pub struct RackOptions<'a> {
    /// The machines.
    pub machines: Vec<Machine>,
    /// What they boot.
    pub image: &'a BootImage,
    /// `true` for KVM, `false` for TCG.
    pub kvm: bool,
    /// Extra `[scheduler]` keys for the daemon's config.
    pub scheduler: &'a str,
    /// Extra `[fabric]` keys (e.g. `router_advertisements = "off"`).
    pub fabric: &'a str,
    /// Extra `[dhcp]` keys (e.g. `ipxe_no_pxedhcp = false`).
    pub dhcp: &'a str,
}

/// The running rack. Dropping it destroys the domains, stops libvirtd, sushy and the daemon
/// (by PID) and deletes the namespaces.
pub struct Rack {
    /// The daemon (first to stop).
    pub daemon: Daemon,
    _sushy: Sushy,
    libvirtd: KillOnDrop,
    /// The machines.
    pub machines: Vec<Machine>,
    /// The daemon's namespace.
    pub server: Netns,
    /// The switch (bridge, libvirtd, sushy).
    pub switch: Bridge,
    /// libvirt URI of the lab's libvirtd.
    pub libvirt: String,
    /// The BMC's URL, as the daemon reaches it.
    pub bmc_url: String,
    /// Lab folder (configs, images, consoles).
    pub dir: TempDir,
}

impl Drop for Rack {
    fn drop(&mut self) {
        for m in &self.machines {
            let _ = self.virsh(&["destroy", &m.name]);
            let _ = self.virsh(&["undefine", "--nvram", &m.name]);
        }
        let _ = self.libvirtd.0.kill();
        let _ = self.libvirtd.0.wait();
    }
}

/// Runs libvirtd in `ns`, its state in `dir`; returns it and its socket URI.
fn libvirtd(ns: &Netns, dir: &Path) -> Result<(KillOnDrop, String), LabError> {
    let sub = |s: &str| {
        let p = dir.join(s);
        std::fs::create_dir_all(&p)
            .map(|_| p)
            .map_err(|e| format!("{s}: {e}"))
    };
    let (run_dir, etc, lib, cache, log) = (
        sub("run")?,
        sub("etc")?,
        sub("lib")?,
        sub("cache")?,
        sub("log")?,
    );
    let conf = dir.join("libvirtd.conf");
    std::fs::write(
        &conf,
        format!(
            "unix_sock_dir = \"{}\"\nunix_sock_rw_perms = \"0700\"\nauth_unix_rw = \"none\"\nauth_unix_ro = \"none\"\nlog_outputs = \"3:file:{}\"\n",
            run_dir.display(),
            dir.join("libvirtd.log").display()
        ),
    )
    .map_err(|e| format!("libvirtd.conf: {e}"))?;
    // Root everywhere, no cgroups or per-domain namespaces (containers lack them), console
    // logs written by libvirtd itself (no virtlogd).
    std::fs::write(
        etc.join("qemu.conf"),
        "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\nremember_owner = 0\nsecurity_driver = \"none\"\nstdio_handler = \"file\"\nnamespaces = []\ncgroup_controllers = []\n",
    )
    .map_err(|e| format!("qemu.conf: {e}"))?;
    let script = format!(
        "set -e; mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt; \
         mount --bind {etc} /etc/libvirt; mount -t tmpfs tmpfs /run/libvirt; \
         mount --bind {lib} /var/lib/libvirt; mount --bind {cache} /var/cache/libvirt; \
         mount --bind {log} /var/log/libvirt; exec libvirtd -f {conf}",
        etc = etc.display(),
        lib = lib.display(),
        cache = cache.display(),
        log = log.display(),
        conf = conf.display()
    );
    let out = std::fs::File::create(dir.join("libvirtd.out")).map_err(|e| e.to_string())?;
    let child = ns
        .command("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .spawn()
        .map_err(|e| format!("libvirtd: {e}"))?;
    let guard = KillOnDrop(child);
    let sock = run_dir.join("libvirt-sock");
    let uri = format!("qemu+unix:///system?socket={}", sock.display());
    let up = wait_for(Duration::from_secs(30), || {
        Command::new("virsh")
            .args(["-c", &uri, "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .ok()
            .filter(|s| s.success())
    });
    if up.is_none() {
        return Err(format!(
            "libvirtd did not come up:\n{}\n{}",
            std::fs::read_to_string(dir.join("libvirtd.out")).unwrap_or_default(),
            std::fs::read_to_string(dir.join("libvirtd.log")).unwrap_or_default()
        ));
    }
    Ok((guard, uri))
}

/// A folder holding only Debian's libvirt Python binding, for sushy's Python.
fn libvirt_python(dir: &Path) -> Result<PathBuf, LabError> {
    let out = dir.join("pylibvirt");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let src = Path::new("/usr/lib/python3/dist-packages");
    let mut found = false;
    for e in std::fs::read_dir(src)
        .map_err(|e| format!("{}: {e}", src.display()))?
        .flatten()
    {
        let name = e.file_name();
        let n = name.to_string_lossy();
        if n.starts_with("libvirt") && (n.ends_with(".py") || n.ends_with(".so")) {
            std::os::unix::fs::symlink(e.path(), out.join(&name)).map_err(|e| e.to_string())?;
            found |= n == "libvirt.py";
        }
    }
    if !found {
        return Err("python3-libvirt is not installed (cargo xtask setup)".into());
    }
    Ok(out)
}

fn domain_xml(m: &Machine, dir: &Path, kvm: bool) -> String {
    let uefi = matches!(
        m.firmware,
        Firmware::UefiPxe | Firmware::UefiIpxe | Firmware::UefiHttp
    );
    let loader = if uefi {
        format!(
            "<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader><nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>{}</nvram>",
            dir.join(format!("{}_VARS.fd", m.name)).display()
        )
    } else {
        String::new()
    };
    // OVMF's own PXE and HTTP-boot clients only boot when no iPXE ROM is on the NIC.
    let rom = if matches!(m.firmware, Firmware::UefiPxe | Firmware::UefiHttp) {
        "<rom enabled='no'/>"
    } else {
        ""
    };
    // OVMF reads these from fw_cfg: with its PXE entries off, only HTTP boot is left.
    let sysinfo = if m.firmware == Firmware::UefiHttp {
        "<sysinfo type='fwcfg'><entry name='opt/org.tianocore/IPv4PXESupport'>no</entry><entry name='opt/org.tianocore/IPv6PXESupport'>no</entry></sysinfo>"
    } else {
        ""
    };
    let console = dir.join(format!("{}.console", m.name));
    format!(
        "<domain type='{kind}'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>512</memory>
  <vcpu>1</vcpu>
  {sysinfo}
  <os><type arch='x86_64' machine='pc'>hvm</type>{loader}<boot dev='network'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='bridge'><source bridge='br0'/><mac address='{mac}'/><model type='virtio'/>{rom}</interface>
    <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>
    <console type='file'><source path='{console}' append='on'/><target type='serial' port='0'/></console>
  </devices>
</domain>
",
        kind = if kvm { "kvm" } else { "qemu" },
        name = m.name,
        uuid = m.uuid,
        mac = m.mac,
        console = console.display(),
    )
}

impl Rack {
    /// Builds the rack: namespaces, bridge, libvirtd with the machines defined (powered
    /// off), sushy, and the daemon serving the image.
    pub fn start(opts: RackOptions<'_>) -> Result<Rack, LabError> {
        let dir = TempDir::new()?;
        let d = dir.path.clone();
        // What the fabric serves.
        let images = d.join("images");
        let tftp = d.join("tftp");
        std::fs::create_dir_all(images.join("linux")).map_err(|e| e.to_string())?;
        std::fs::create_dir_all(&tftp).map_err(|e| e.to_string())?;
        std::fs::copy(&opts.image.kernel, images.join("linux/vmlinuz"))
            .map_err(|e| format!("kernel: {e}"))?;
        std::fs::copy(&opts.image.initramfs, images.join("linux/initramfs.cpio"))
            .map_err(|e| format!("initramfs: {e}"))?;
        for f in ["ipxe.efi", "undionly.kpxe"] {
            std::fs::copy(Path::new("/usr/lib/ipxe").join(f), tftp.join(f))
                .map_err(|e| format!("/usr/lib/ipxe/{f} (package ipxe): {e}"))?;
        }
        // UEFI HTTP boot loads ipxe.efi from the HTTP server.
        std::fs::copy("/usr/lib/ipxe/ipxe.efi", images.join("ipxe.efi"))
            .map_err(|e| format!("/usr/lib/ipxe/ipxe.efi (package ipxe): {e}"))?;

        let server = Netns::new("srv")?;
        server.ip(&["link", "set", "lo", "up"])?;
        let mut switch = Bridge::new()?;
        switch.ns().ip(&["link", "set", "lo", "up"])?;
        switch.plug(&server, "fabric0", "10.77.0.1/24")?;
        veth(
            &server,
            "mgmt0",
            "10.78.0.1/24",
            switch.ns(),
            "bmc0",
            "10.78.0.2/24",
        )?;

        let lv = d.join("libvirt");
        let (libvirtd, libvirt) = libvirtd(switch.ns(), &lv)?;
        let virsh = |args: &[&str]| run(Command::new("virsh").args(["-c", &libvirt]).args(args));
        for m in &opts.machines {
            let xml = d.join(format!("{}.xml", m.name));
            std::fs::write(&xml, domain_xml(m, &d, opts.kvm)).map_err(|e| e.to_string())?;
            virsh(&["define", &xml.display().to_string()])?;
        }
        let pythonpath = libvirt_python(&d)?;
        let sushy_dir = d.join("sushy");
        std::fs::create_dir_all(&sushy_dir).map_err(|e| e.to_string())?;
        let sushy = Sushy::start_with(
            switch.ns(),
            &sushy_dir,
            SUSHY,
            Driver::Libvirt {
                uri: &libvirt,
                pythonpath: &pythonpath,
            },
            (BMC_USER, BMC_PASSWORD),
            None,
        )?;
        let bmc_url = sushy.url.clone();

        let config = format!(
            r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
{fabric}
[admin]
listen = "127.0.0.1:9370"
[xdp]
mode = "auto"
[tftp]
root = "{tftp}"
[http]
root = "{images}"
[dhcp]
{dhcp}
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
[scheduler]
{scheduler}
"#,
            tftp = tftp.display(),
            images = images.display(),
            scheduler = opts.scheduler,
            fabric = opts.fabric,
            dhcp = opts.dhcp,
        );
        let mut inventory = String::from(
            "[profiles.linux]\nkernel = \"linux/vmlinuz\"\ninitrd = [\"linux/initramfs.cpio\"]\ncmdline = \"console=ttyS0 quiet bootfabric.booted={http_base}/booted\"\n",
        );
        for m in &opts.machines {
            inventory.push_str(&format!(
                "\n[[hosts]]\nname = \"{}\"\nmac = \"{}\"\nip = \"{}\"\nprofile = \"linux\"\nmodel = \"{}\"\nrack = \"lab\"\nbmc = {{ url = \"{bmc_url}\", username = \"{BMC_USER}\", password_file = \"bmc.pass\", allow_plaintext = true, system = \"/redfish/v1/Systems/{}\" }}\n",
                m.name,
                m.mac,
                m.ip,
                m.firmware.label(),
                m.uuid
            ));
        }
        let daemon = Daemon::start(
            &server,
            &config,
            &[
                ("hosts.toml", &inventory),
                ("bmc.pass", &format!("{BMC_PASSWORD}\n")),
            ],
        )?;
        Ok(Rack {
            daemon,
            _sushy: sushy,
            libvirtd,
            machines: opts.machines,
            server,
            switch,
            libvirt,
            bmc_url,
            dir,
        })
    }

    /// Runs `virsh ARGS` against the lab's libvirtd.
    pub fn virsh(&self, args: &[&str]) -> Result<String, LabError> {
        run(Command::new("virsh").args(["-c", &self.libvirt]).args(args))
    }

    /// `bootfabric reboot ARGS` against the rack's daemon, in its namespace.
    pub fn reboot(&self, args: &[&str]) -> Command {
        let mut c = self.server.command(crate::bootfabric_bin());
        c.arg("reboot")
            .args(args)
            .args(["--admin", &self.daemon.admin.to_string()]);
        c
    }

    /// A machine's serial console so far.
    pub fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path.join(format!("{name}.console"))).unwrap_or_default()
    }
}

/// Whether KVM guests run here: a kernel started under KVM must print within a few seconds
/// (on some hosts `/dev/kvm` exists but guests hang).
pub fn kvm_works(kernel: &Path) -> bool {
    if !Path::new("/dev/kvm").exists() {
        return false;
    }
    let Ok(child) = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "kvm",
            "-cpu",
            "max",
            "-m",
            "256",
            "-nographic",
            "-no-reboot",
            "-nic",
            "none",
            "-kernel",
        ])
        .arg(kernel)
        .args(["-append", "console=ttyS0 panic=-1 earlyprintk=serial"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    let mut guard = KillOnDrop(child);
    let Some(mut out) = guard.0.stdout.take() else {
        return false;
    };
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::Read as _;
        let mut seen = Vec::new();
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            seen.extend_from_slice(&buf[..n]);
            if seen.windows(13).any(|w| w == b"Linux version") {
                let _ = tx.send(());
                break;
            }
        }
    });
    let ok = rx.recv_timeout(Duration::from_secs(8)).is_ok();
    drop(guard);
    ok
}
