//! A Debian guest for kernel TLS. The lab host's kernel may lack kTLS (`CONFIG_TLS`); Debian's
//! has it as a module. The guest (QEMU, TCG) boots Debian's kernel (the lab's boot image)
//! with an initramfs of busybox, `tls.ko` and the AEAD modules, and the daemon under test with
//! its shared libraries; the daemon serves on the guest's NIC, a tap in a namespace of the
//! lab where the clients run. Every second the guest copies `/proc/net/tls_stat` and the
//! daemon's metrics into the HTTP root (as `tls_stat` and `metrics`), where a client reads
//! them.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use crate::{bootimage, qemu, run, KillOnDrop, LabError, Netns, TempDir};

/// The guest's address; the tap's (the clients') is [`HOST_IP`], on a /24.
pub const GUEST_IP: &str = "10.77.9.2";
/// The lab side of the guest's link.
pub const HOST_IP: &str = "10.77.9.1";
/// The guest's NIC (virtio, on the tap in the lab's namespace), renamed by the init so that
/// the daemon's `fabric.interfaces` names it and nothing else.
pub const GUEST_IF: &str = "guest0";

/// What the guest loads: its NIC driver, kTLS, and the AEADs kTLS asks the crypto API for
/// (AES-GCM is built from the `gcm` template over `ctr` and `ghash`; AES itself is built in),
/// with the x86 implementations udev would load on a machine whose CPU has AES-NI, CLMUL and
/// AVX (QEMU's `-cpu max` has them), which the crypto API then prefers over the generic C.
/// The initramfs has no `modprobe` the kernel could call, so they are loaded up front.
const MODULES: [&str; 13] = [
    "virtio_pci",
    "virtio_net",
    "tls",
    "gcm",
    "ctr",
    "ghash_generic",
    "chacha20poly1305",
    "chacha_generic",
    "poly1305_generic",
    "aesni_intel",
    "ghash_clmulni_intel",
    "chacha_x86_64",
    "poly1305_x86_64",
];

/// The guest's `/init`: modules, the static address, the daemon (its log on the console), and
/// the copies of the kernel's TLS counters and the daemon's metrics into the HTTP root.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /tmp /run
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for m in $(cat /etc/modules); do
    insmod /lib/modules/$m.ko || echo "ktls-guest: insmod $m failed"
done
ip link set lo up
nic=""
for n in 1 2 3 4 5 6 7 8 9 10; do
    for d in /sys/class/net/*; do
        [ "${d##*/}" = lo ] || nic="${d##*/}"
    done
    [ -n "$nic" ] && break
    sleep 1
done
ip link set "$nic" name GUEST_IF
ip link set GUEST_IF up
ip addr add GUEST_IP/24 dev GUEST_IF
echo "ktls-guest: upper layer protocols: $(cat /proc/sys/net/ipv4/tcp_available_ulp)"
cd /srv
RUST_LOG=info NO_COLOR=1 /srv/bootfabric serve --config /srv/bootfabric.toml > /dev/console 2>&1 &
echo "ktls-guest: daemon started"
[ -x /srv/more-init ] && /srv/more-init
while true; do
    cat /proc/net/tls_stat > /srv/images/tls_stat.new && mv /srv/images/tls_stat.new /srv/images/tls_stat
    wget -q -O /srv/images/metrics.new http://127.0.0.1:9370/metrics && mv /srv/images/metrics.new /srv/images/metrics
    sleep 1
done
"#;

/// A running guest: QEMU (killed by PID when dropped) in its own namespace.
pub struct Guest {
    /// The namespace of the guest's tap, where clients run.
    pub ns: Netns,
    qemu: Option<KillOnDrop>,
    console: PathBuf,
    _dir: TempDir,
}

impl Guest {
    /// Builds the initramfs (the daemon `daemon` stripped, with the shared libraries `ldd`
    /// names; `config` as `/srv/bootfabric.toml`; each of `files` under `/srv`) and boots it.
    /// The daemon's admin server must listen on `127.0.0.1:9370` and its HTTP root be
    /// `/srv/images`.
    pub fn start(
        cache: &Path,
        daemon: &Path,
        config: &str,
        files: &[(&str, Vec<u8>)],
    ) -> Result<Self, LabError> {
        let files: Vec<_> = files
            .iter()
            .map(|(name, bytes)| (format!("srv/{name}"), 0o644, bytes.clone()))
            .collect();
        Self::start_with(cache, daemon, config, &files, &[])
    }

    /// As [`start`](Self::start), with `files` anywhere (path from `/`, mode, bytes; an
    /// executable `srv/more-init` is run after the daemon starts) and more `programs`, each
    /// at its own path with its libraries.
    pub fn start_with(
        cache: &Path,
        daemon: &Path,
        config: &str,
        files: &[bootimage::InitramfsFile],
        programs: &[&Path],
    ) -> Result<Self, LabError> {
        let image = bootimage::ensure(cache)?;
        let modules = cache.join("linux/root/lib/modules").join(&image.version);
        let dir = TempDir::new()?;
        let stripped = dir.path.join("bootfabric");
        run(Command::new("strip").arg("-o").arg(&stripped).arg(daemon))?;
        let mut extra = vec![
            ("srv/bootfabric".to_owned(), 0o755, read(&stripped)?),
            (
                "srv/bootfabric.toml".to_owned(),
                0o644,
                config.as_bytes().to_vec(),
            ),
        ];
        let mut libs = std::collections::BTreeSet::new();
        for program in std::iter::once(daemon).chain(programs.iter().copied()) {
            libs.extend(libraries(&run(Command::new("ldd").arg(program))?));
        }
        for lib in libs {
            let inside = lib.trim_start_matches('/').to_owned();
            extra.push((inside, 0o755, read(Path::new(&lib))?));
        }
        for program in programs {
            let inside = program.to_string_lossy().trim_start_matches('/').to_owned();
            extra.push((inside, 0o755, read(program)?));
        }
        extra.extend(files.iter().cloned());
        let initramfs = dir.path.join("initramfs.cpio");
        bootimage::build_initramfs_with(
            &modules,
            &MODULES,
            Path::new("/bin/busybox"),
            &INIT
                .replace("GUEST_IP", GUEST_IP)
                .replace("GUEST_IF", GUEST_IF),
            &extra,
            &initramfs,
        )?;
        let ns = Netns::new("ktls")?;
        ns.ip(&["tuntap", "add", "tap0", "mode", "tap"])?;
        ns.ip(&["addr", "add", &format!("{HOST_IP}/24"), "dev", "tap0"])?;
        ns.ip(&["link", "set", "tap0", "up"])?;
        ns.ip(&["link", "set", "lo", "up"])?;
        let console = dir.path.join("console.log");
        let kernel = image.kernel.display().to_string();
        let initrd = initramfs.display().to_string();
        let qemu = qemu::start(
            &ns,
            "tap0",
            &[
                "-m",
                "1024",
                "-cpu",
                "max",
                "-kernel",
                &kernel,
                "-initrd",
                &initrd,
                "-append",
                "console=ttyS0 panic=-1",
                "-device",
                "virtio-net-pci,netdev=n0,mac=52:54:00:77:09:02",
            ],
            &console,
        )?;
        Ok(Self {
            ns,
            qemu: Some(qemu),
            console,
            _dir: dir,
        })
    }

    /// The guest's console so far (the kernel's, the init's and the daemon's log).
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.console).unwrap_or_default()
    }

    /// Fetches `http://GUEST_IP/<path>` with curl in the guest's namespace: the body, if the
    /// answer was 200 within 10 s.
    pub fn http_get(&self, path: &str) -> Option<Vec<u8>> {
        self.get(&format!("http://{GUEST_IP}/{path}"), 10)
    }

    /// Fetches `url` with curl in the guest's namespace: the body, if the answer was 200
    /// within `max_time_s`.
    pub fn get(&self, url: &str, max_time_s: u32) -> Option<Vec<u8>> {
        let out = self
            .ns
            .command("curl")
            .args(["-sf", "--max-time", &max_time_s.to_string(), url])
            .output()
            .ok()?;
        out.status.success().then_some(out.stdout)
    }

    /// Waits up to `bound` for the guest's daemon to serve `path` over plain HTTP (a boot
    /// under TCG takes tens of seconds).
    pub fn wait_serving(&self, path: &str, bound: Duration) -> Result<(), LabError> {
        crate::wait_for(bound, || self.http_get(path))
            .map(|_| ())
            .ok_or_else(|| {
                format!(
                    "the guest's daemon did not serve /{path} within {bound:?}; console:\n{}",
                    self.console()
                )
            })
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        // QEMU first: the namespace is deleted after it.
        self.qemu.take();
    }
}

/// The shared libraries `ldd` lists (`name => /path (0x…)` and the loader's `/path (0x…)`).
fn libraries(ldd: &str) -> Vec<String> {
    ldd.lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=>").map_or(l, |(_, p)| p.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, LabError> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_lines_give_library_paths() {
        let ldd = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            libraries(ldd),
            vec![
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
        );
    }
}
