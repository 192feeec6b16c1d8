//! A simulated machine on the provisioning fabric: one small namespace plugged into the
//! lab's bridge, its NIC carrying the machine's MAC. It asks DHCP with udhcpc (a real
//! client), then plays firmware with curl: fetches its iPXE script, follows its `kernel` and
//! `initrd` lines, fetches a config, and reports `POST /booted` to the URL on its kernel
//! command line, as the boot image's init does. Everything it was told is returned, so the
//! test checks what a machine would have booted.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::PathBuf,
    process::Stdio,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use crate::{run, wait_for, Bridge, KillOnDrop, LabError, Netns, TempDir};

/// The machine's interface inside its namespace.
pub const IFACE: &str = "sim0";

/// Bounds a DHCP exchange (udhcpc's own retries fit well inside).
const DHCP_BOUND: Duration = Duration::from_secs(40);

/// udhcpc's script: records each event with its address, and configures the interface as a
/// booting machine would.
const SCRIPT: &str = r#"#!/bin/sh
echo "$1 ip=$ip" >> "$OUT"
case "$1" in
  bound|renew) ip addr flush dev "$interface"; ip addr add "$ip/$mask" dev "$interface" ;;
  deconfig) ip addr flush dev "$interface" ;;
esac
exit 0
"#;

/// What one boot attempt was told, step by step.
#[derive(Clone, Debug, Default)]
pub struct Boot {
    /// The iPXE script as served.
    pub script: String,
    /// Its HTTP status.
    pub script_status: u16,
    /// The kernel line's arguments (the command line, with `initrd=` entries).
    pub cmdline: Option<String>,
    /// Every image URL fetched with (status, bytes).
    pub files: Vec<(String, u16, u64)>,
    /// The config asked for: (status, body).
    pub config: Option<(u16, String)>,
    /// The status `POST /booted` got, when the script booted something.
    pub booted: Option<u16>,
}

impl Boot {
    /// The script told the machine to leave for its disk (`exit`, no kernel).
    pub fn exits_to_disk(&self) -> bool {
        self.cmdline.is_none() && self.script.lines().any(|l| l.trim() == "exit")
    }

    /// The script is the "not in the inventory, asking again" one.
    pub fn unknown(&self) -> bool {
        self.script.contains("not in the inventory")
    }
}

/// One simulated machine.
pub struct SimHost {
    /// Its namespace.
    pub ns: Netns,
    /// Its MAC.
    pub mac: String,
    dir: TempDir,
    runs: AtomicU32,
}

impl SimHost {
    /// A machine with `mac` plugged into `fabric` (no address until it asks DHCP).
    pub fn new(fabric: &mut Bridge, mac: &str) -> Result<SimHost, LabError> {
        let ns = Netns::new("host")?;
        fabric.plug(&ns, IFACE, "")?;
        ns.ip(&["link", "set", IFACE, "down"])?;
        ns.ip(&["link", "set", IFACE, "address", mac])?;
        ns.ip(&["link", "set", IFACE, "up"])?;
        // Broadcast DHCP needs a route out of the interface before there is an address.
        ns.ip(&["route", "add", "default", "dev", IFACE])?;
        let dir = TempDir::new()?;
        let script = dir.path.join("udhcpc.sh");
        std::fs::write(&script, SCRIPT).map_err(|e| format!("{}: {e}", script.display()))?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        Ok(SimHost {
            ns,
            mac: mac.to_owned(),
            dir,
            runs: AtomicU32::new(0),
        })
    }

    fn udhcpc(&self, once: bool) -> Result<(KillOnDrop, PathBuf), LabError> {
        let n = self.runs.fetch_add(1, Ordering::Relaxed);
        let out = self.dir.path.join(format!("dhcp{n}.events"));
        // What udhcpc says it sent and got ("Sending discover...", "Sending select for …"),
        // kept for the error of an exchange that fails.
        let said = std::fs::File::create(out.with_extension("log"))
            .map_err(|e| format!("{}: {e}", out.display()))?;
        let mut c = self.ns.command("udhcpc");
        c.args(["-f", "-i", IFACE, "-t", "8", "-T", "2"]);
        if once {
            // Quit once bound, keeping the address (a firmware's exchange: no RELEASE).
            c.args(["-q", "-n"]);
        }
        c.arg("-s")
            .arg(self.dir.path.join("udhcpc.sh"))
            .env("OUT", &out)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(said);
        let child = c.spawn().map_err(|e| format!("udhcpc: {e}"))?;
        Ok((KillOnDrop(child), out))
    }

    fn bound_in(out: &PathBuf) -> Option<Ipv4Addr> {
        let text = std::fs::read_to_string(out).ok()?;
        text.lines()
            .rfind(|l| l.starts_with("bound ") || l.starts_with("renew "))?
            .split("ip=")
            .nth(1)?
            .trim()
            .parse()
            .ok()
    }

    /// One DHCP exchange, as firmware does it: the address bound (and configured).
    pub fn dhcp(&self) -> Result<Ipv4Addr, LabError> {
        let (mut child, out) = self.udhcpc(true)?;
        let status = wait_for(DHCP_BOUND, || child.0.try_wait().ok().flatten())
            .ok_or_else(|| format!("{}: udhcpc did not finish", self.mac))?;
        Self::bound_in(&out).ok_or_else(|| {
            format!(
                "{}: no lease (udhcpc {status}): {}\nudhcpc said:\n{}\n{}",
                self.mac,
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(out.with_extension("log")).unwrap_or_default(),
                // Whether the answers reached the interface at all (its receive counters).
                self.ns
                    .ip(&["-s", "link", "show", IFACE])
                    .unwrap_or_else(|e| e)
            )
        })
    }

    /// A DHCP client that stays (renews, and RELEASEs on [`Held::release`]): the lease it
    /// bound.
    pub fn dhcp_hold(&self) -> Result<Held, LabError> {
        let (child, out) = self.udhcpc(false)?;
        let ip = wait_for(DHCP_BOUND, || Self::bound_in(&out)).ok_or_else(|| {
            format!(
                "{}: no lease: {}\nudhcpc said:\n{}",
                self.mac,
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(out.with_extension("log")).unwrap_or_default()
            )
        })?;
        Ok(Held {
            child,
            out,
            ip,
            mac: self.mac.clone(),
        })
    }

    /// The machine's current IPv4 address on its NIC.
    pub fn addr(&self) -> Option<Ipv4Addr> {
        let out = self
            .ns
            .ip(&["-4", "-o", "addr", "show", "dev", IFACE])
            .ok()?;
        out.split_whitespace()
            .skip_while(|w| *w != "inet")
            .nth(1)?
            .split('/')
            .next()?
            .parse()
            .ok()
    }

    /// curl from the machine: (status, body). `extra` goes before the URL.
    pub fn curl(&self, extra: &[&str], url: &str) -> Result<(u16, String), LabError> {
        let out = run(self
            .ns
            .command("curl")
            .args(["-sS", "--max-time", "60", "-w", "\n%{http_code}"])
            .args(extra)
            .arg(url))?;
        let (body, code) = out.rsplit_once('\n').unwrap_or(("", out.as_str()));
        let code = code
            .trim()
            .parse()
            .map_err(|_| format!("curl {url}: no status in {out:?}"))?;
        Ok((code, body.to_owned()))
    }

    /// GETs `url` into nothing: (status, bytes received).
    fn fetch(&self, url: &str) -> Result<(u16, u64), LabError> {
        let out = run(self.ns.command("curl").args([
            "-sS",
            "--max-time",
            "120",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{size_download}",
            url,
        ]))?;
        let mut w = out.split_whitespace();
        let code = w.next().and_then(|c| c.parse().ok());
        let size = w.next().and_then(|c| c.parse().ok());
        code.zip(size).ok_or_else(|| format!("curl {url}: {out:?}"))
    }

    /// Plays the firmware after DHCP: the script from `http_base` (gate answers are waited
    /// out, boundedly), the images it names, `config` from `/configs/` when given, then
    /// `POST /booted`. A script that boots nothing (`exit`, unknown machine) ends the boot
    /// there.
    pub fn boot(&self, http_base: &str, config: Option<&str>) -> Result<Boot, LabError> {
        self.boot_steps(http_base, config)
            .map_err(|e| format!("{}: {e}\n{}", self.mac, self.describe()))
    }

    /// The machine's addresses, routes and DHCP client events, for failure messages.
    pub fn describe(&self) -> String {
        let mut out = String::new();
        for args in [
            &["-4", "addr", "show"][..],
            &["route", "show"],
            &["neigh", "show"],
        ] {
            out.push_str(&self.ns.ip(args).unwrap_or_else(|e| e));
        }
        for n in 0..self.runs.load(Ordering::Relaxed) {
            let f = self.dir.path.join(format!("dhcp{n}.events"));
            out.push_str(&format!(
                "udhcpc run {n}:\n{}",
                std::fs::read_to_string(f).unwrap_or_default()
            ));
        }
        out
    }

    fn boot_steps(&self, http_base: &str, config: Option<&str>) -> Result<Boot, LabError> {
        let mut boot = Boot::default();
        for _ in 0..60 {
            let (status, script) = self.curl(&[], &format!("{http_base}/boot.ipxe"))?;
            boot.script_status = status;
            boot.script = script;
            if !boot.script.contains("waits for a download slot") {
                break;
            }
            // The gate: ask again after the pause the script names.
            let pause = boot
                .script
                .lines()
                .find_map(|l| l.trim().strip_prefix("sleep "))
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(1u64);
            std::thread::sleep(Duration::from_secs(pause.min(5)));
        }
        if boot.script_status != 200 {
            return Ok(boot);
        }
        let mut booted_url = None;
        for line in boot.script.clone().lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first().copied() {
                Some("kernel") => {
                    let url = words.get(1).ok_or("kernel line without URL")?;
                    boot.cmdline = Some(words[2..].join(" "));
                    booted_url = words[2..]
                        .iter()
                        .find_map(|w| w.strip_prefix("bootfabric.booted="))
                        .map(str::to_owned);
                    let (code, size) = self.fetch(url)?;
                    boot.files.push(((*url).to_owned(), code, size));
                }
                Some("initrd") => {
                    let url = words.last().ok_or("initrd line without URL")?;
                    let (code, size) = self.fetch(url)?;
                    boot.files.push(((*url).to_owned(), code, size));
                }
                _ => {}
            }
        }
        if boot.cmdline.is_none() {
            return Ok(boot);
        }
        if let Some(name) = config {
            boot.config = Some(self.curl(&[], &format!("{http_base}/configs/{name}"))?);
        }
        if let Some(url) = booted_url {
            let (code, _) = self.curl(&["-X", "POST", "--data", ""], &url)?;
            boot.booted = Some(code);
        }
        Ok(boot)
    }
}

/// A udhcpc that holds its lease.
pub struct Held {
    child: KillOnDrop,
    out: PathBuf,
    /// The address it bound.
    pub ip: Ipv4Addr,
    mac: String,
}

impl Held {
    /// Makes udhcpc RELEASE its lease (SIGUSR2) and waits until it did.
    pub fn release(&self) -> Result<(), LabError> {
        let pid = nix::unistd::Pid::from_raw(self.child.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2)
            .map_err(|e| format!("SIGUSR2 udhcpc: {e}"))?;
        wait_for(DHCP_BOUND, || {
            let t = std::fs::read_to_string(&self.out).ok()?;
            // After the bound line, the deconfig that the release runs.
            let after = t.split_once("bound ")?.1;
            after.contains("deconfig").then_some(())
        })
        .ok_or_else(|| {
            format!(
                "{}: udhcpc did not release: {}",
                self.mac,
                std::fs::read_to_string(&self.out).unwrap_or_default()
            )
        })
    }
}
