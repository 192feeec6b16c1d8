//! QEMU machines for lab tests: TCG (KVM guests hang on some hosts), console to a file, the
//! NIC on a tap inside a namespace of the lab. Killed by PID when the guard drops.

use std::{path::Path, process::Stdio};

use crate::{KillOnDrop, LabError, Netns};

/// Starts QEMU (TCG) in `ns` with its NIC backend on that namespace's tap `tap`, console
/// and monitor output to `log`; `extra` adds devices (the NIC itself, with its MAC), `-boot`
/// and firmware options.
pub fn start(ns: &Netns, tap: &str, extra: &[&str], log: &Path) -> Result<KillOnDrop, LabError> {
    start_program("qemu-system-x86_64", ns, tap, extra, log)
}

/// As [`start`], with another QEMU (`qemu-system-aarch64`: `extra` then names the board).
pub fn start_program(
    program: &str,
    ns: &Netns,
    tap: &str,
    extra: &[&str],
    log: &Path,
) -> Result<KillOnDrop, LabError> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    let child = ns
        .command(program)
        .args([
            "-accel",
            "tcg",
            "-m",
            "512",
            "-smp",
            "1",
            "-nographic",
            "-no-reboot",
        ])
        .args([
            "-netdev",
            &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
        ])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("{program}: {e}"))?;
    Ok(KillOnDrop(child))
}

/// Creates tap `tap` in `ns`, enslaves it to `bridge` there and brings it up.
pub fn tap_on_bridge(ns: &Netns, tap: &str, bridge: &str) -> Result<(), LabError> {
    ns.ip(&["tuntap", "add", tap, "mode", "tap"])?;
    ns.ip(&["link", "set", tap, "master", bridge])?;
    ns.ip(&["link", "set", tap, "up"])?;
    Ok(())
}

/// A [`PairLab`](crate::PairLab) whose client namespace holds a bridge `br0` joining the
/// server link (`up0`, unaddressed: the machine asks DHCP) and a tap `tap0` for QEMU.
pub fn bridged_lab() -> Result<crate::PairLab, LabError> {
    let lab = crate::PairLab::unaddressed_client("up0")?;
    lab.client.ip(&["link", "add", "br0", "type", "bridge"])?;
    lab.client.ip(&["link", "set", "up0", "master", "br0"])?;
    tap_on_bridge(&lab.client, "tap0", "br0")?;
    lab.client.ip(&["link", "set", "br0", "up"])?;
    Ok(lab)
}
