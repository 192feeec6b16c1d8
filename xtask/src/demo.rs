//! `cargo xtask demo`: the README's first command.
//!
//! Sets up and builds everything, builds the machines' boot image, and starts a rack in a box
//! (`bootfabric_lab::rack`): QEMU machines as libvirt domains with Redfish BMCs (sushy's
//! libvirt driver), `bootfabric serve` with XDP on the lab's provisioning bridge. Then
//! `bootfabric reboot --all` reboots the rack through the BMCs and shows each machine as it
//! boots, the scheduler's report follows, and each machine's ledger timeline. The lab stays
//! up (with `/metrics`) until Ctrl-C and is torn down on exit. Nothing touches the host's
//! own interfaces.

use anyhow::{anyhow, Context as _};
use bootfabric_lab::{bootimage, http_get, rack};

use crate::{build, root};

/// The daemon settings the demo can vary, so that the boot-time budget's rows (bench/demo)
/// can be reproduced: each turns off one of the waits the fabric removes from iPXE.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    /// `fabric.router_advertisements = "auto"` (true) or `"off"`.
    pub router_advertisements: bool,
    /// `dhcp.ipxe_no_pxedhcp`.
    pub ipxe_no_pxedhcp: bool,
}

/// Runs the demo with `hosts` machines; waits for Ctrl-C at the end unless `no_wait`.
pub fn run(hosts: usize, no_wait: bool, variant: Variant) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!(
            "the demo creates network namespaces, attaches XDP and runs VMs: run it as root"
        );
    }
    if hosts == 0 || hosts > 60 {
        anyhow::bail!("--hosts must be 1 to 60");
    }
    crate::setup::run()?;
    let built = build::run(true)?;
    std::env::set_var("BOOTFABRIC_BIN", &built.daemon);

    println!(
        "\n==> boot image: Debian's kernel and a busybox initramfs whose init reports POST /booted"
    );
    let image = bootimage::ensure(&root().join("target/lab-cache")).map_err(|e| anyhow!(e))?;
    println!("    kernel    {}", image.kernel.display());
    println!("    initramfs {}", image.initramfs.display());
    let kvm = rack::kvm_works(&image.kernel);
    println!(
        "    accelerator: {}",
        if kvm {
            "KVM"
        } else {
            "TCG (KVM guests do not run here): each boot takes tens of seconds"
        }
    );

    let mix = [
        rack::Firmware::Bios,
        rack::Firmware::UefiPxe,
        rack::Firmware::UefiIpxe,
        rack::Firmware::UefiHttp,
    ];
    let machines = rack::machines(hosts, &mix);
    println!("\n==> rack: {hosts} machine(s) as libvirt domains, BMCs from sushy-emulator's libvirt driver");
    for m in &machines {
        println!(
            "    {}  {}  {}  {}",
            m.name,
            m.mac,
            m.ip,
            m.firmware.label()
        );
    }
    let fabric = format!(
        "router_advertisements = \"{}\"\n",
        if variant.router_advertisements {
            "auto"
        } else {
            "off"
        }
    );
    let dhcp = format!("ipxe_no_pxedhcp = {}\n", variant.ipxe_no_pxedhcp);
    println!(
        "    daemon: fabric.router_advertisements = {}, dhcp.ipxe_no_pxedhcp = {}",
        if variant.router_advertisements {
            "auto"
        } else {
            "off"
        },
        variant.ipxe_no_pxedhcp
    );
    let rack = rack::Rack::start(rack::RackOptions {
        machines,
        image: &image,
        kvm,
        // Two download slots, so the admission gate shows; generous timeouts for TCG.
        scheduler: "capacity_mbps = 1000\nper_host_mbps = 500\npost_guess_s = 20\nlookahead_s = 60\npost_timeout_s = 600\nboot_timeout_s = 900\ngate_retry_s = 2\n",
        fabric: &fabric,
        dhcp: &dhcp,
    })
    .map_err(|e| anyhow!(e))?;
    println!(
        "    server namespace {} (bootfabric serve on fabric0 10.77.0.1, admin {})",
        rack.server.name(),
        rack.daemon.admin
    );
    println!(
        "    switch namespace {} (bridge br0, libvirtd, BMCs at {})",
        rack.switch.ns().name(),
        rack.bmc_url
    );
    for line in rack
        .daemon
        .log()
        .lines()
        .filter(|l| l.contains("XDP") || l.contains("ready"))
    {
        println!("    {line}");
    }

    println!("\n==> bootfabric reboot --all");
    // Ctrl-C from here on reaches the reboot command (which cancels its run) and is then
    // taken here, so that the lab is torn down rather than left behind.
    let mut child = rack
        .reboot(&["--all"])
        .spawn()
        .context("starting bootfabric reboot")?;
    let signals = block_signals()?;
    let status = child.wait().context("waiting for bootfabric reboot")?;

    println!("\n==> each machine's ledger (GET /api/timeline), seconds after its reset");
    for m in &rack.machines {
        let (_, json) = http_get(
            &rack.server,
            rack.daemon.admin,
            &format!("/api/timeline?mac={}", m.mac),
        )
        .map_err(|e| anyhow!(e))?;
        println!("    {} ({})", m.name, m.firmware.label());
        for line in timeline(&json) {
            println!("      {line}");
        }
    }

    if !status.success() {
        println!(
            "\nbootfabric reboot ended with {status}; the consoles are in {}",
            rack.dir.path.display()
        );
    }
    if no_wait {
        println!("\n==> done; removing the lab");
    } else {
        println!(
            "\nThe rack is up. Try:\n    ip netns exec {} curl -s http://{}/metrics\n    ip netns exec {} bootfabric reboot --admin {} --host node01\nCtrl-C removes the lab.",
            rack.server.name(),
            rack.daemon.admin,
            rack.server.name(),
            rack.daemon.admin,
        );
        signals.wait().context("waiting for Ctrl-C")?;
        println!("\n==> removing the lab");
    }
    drop(rack);
    if status.success() {
        Ok(())
    } else {
        Err(anyhow!("not every machine booted"))
    }
}

/// Blocks SIGINT and SIGTERM in this thread (they stay pending for [`SigSet::wait`]).
fn block_signals() -> anyhow::Result<nix::sys::signal::SigSet> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT")?;
    Ok(set)
}

/// The events of an `/api/timeline` answer as lines, in seconds after the first event.
fn timeline(json: &str) -> Vec<String> {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(json) else {
        return vec![json.trim().to_owned()];
    };
    let events = v["events"].as_array().cloned().unwrap_or_default();
    let first = events
        .iter()
        .find(|e| e["phase"] == "bmc_reset")
        .or(events.first())
        .and_then(|e| e["at_ms"].as_u64())
        .unwrap_or(0);
    events
        .iter()
        .filter_map(|e| {
            let at = e["at_ms"].as_u64()?;
            if at < first {
                return None;
            }
            let detail = e["detail"]
                .as_str()
                .map(|d| format!("  {d}"))
                .unwrap_or_default();
            Some(format!(
                "{:>6.1} s  {:<13}{detail}",
                (at - first) as f64 / 1000.0,
                e["phase"].as_str().unwrap_or("?")
            ))
        })
        .collect()
}
