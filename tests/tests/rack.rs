//! End to end, nothing mocked: a BIOS machine (SeaBIOS + the NIC's iPXE ROM), a UEFI
//! machine (OVMF's own PXE client, chainloading `ipxe.efi` over TFTP) and a UEFI HTTP-boot
//! machine (OVMF loading `ipxe.efi` over HTTP, no TFTP) as libvirt domains
//! with a Redfish BMC (sushy-emulator's libvirt driver) are rebooted by
//! `bootfabric reboot`, boot Debian's kernel and a busybox initramfs from the fabric, and
//! report `POST /booted`. The ledger shows every phase in order, and the XDP counters show
//! that the DHCP answers came from the kernel.

use std::{path::Path, time::Duration};

use bootfabric_lab::{
    bootimage, http_get, lab_required, rack, require, require_programs, require_root, sample,
    wait_for,
};

fn cache() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab-cache")
}

#[test]
fn bios_and_uefi_machines_boot_end_to_end_through_the_fabric() {
    let t = "bios_and_uefi_machines_boot_end_to_end_through_the_fabric";
    if !require_root(t)
        || !require_programs(
            t,
            &["qemu-system-x86_64", "libvirtd", "virsh", "sushy-emulator"],
        )
    {
        return;
    }
    if !require(
        Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd").exists()
            && Path::new("/usr/lib/ipxe/ipxe.efi").exists(),
        t,
        "OVMF or iPXE is missing (cargo xtask setup)",
    ) {
        return;
    }
    let image = bootimage::ensure(&cache()).expect("boot image");
    let kvm = rack::kvm_works(&image.kernel);
    eprintln!("{t}: {}", if kvm { "KVM" } else { "TCG" });
    let machines = rack::machines(
        3,
        &[
            rack::Firmware::Bios,
            rack::Firmware::UefiPxe,
            rack::Firmware::UefiHttp,
        ],
    );
    let r = rack::Rack::start(rack::RackOptions {
        machines,
        image: &image,
        kvm,
        scheduler: "capacity_mbps = 1000\nper_host_mbps = 500\npost_guess_s = 20\nlookahead_s = 60\npost_timeout_s = 600\nboot_timeout_s = 900\ngate_retry_s = 2\n",
        fabric: "",
        dhcp: "",
    })
    .expect("rack");
    let (_, m) = http_get(&r.server, r.daemon.admin, "/metrics").expect("metrics");
    let xdp = m.contains("ebpf=\"embedded\"");
    if !xdp && lab_required() {
        panic!("the daemon has no eBPF object (cargo xtask build)");
    }

    let out = r.reboot(&["--all"]).output().expect("bootfabric reboot");
    let report = String::from_utf8_lossy(&out.stdout).into_owned();
    let progress = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("{progress}{report}");
    let consoles = || {
        r.machines
            .iter()
            .map(|m| format!("--- {} console:\n{}", m.name, r.console(&m.name)))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(
        out.status.success(),
        "reboot failed:\n{report}\n{}\n{}",
        consoles(),
        r.daemon.log()
    );
    assert!(report.contains("booted 3, failed 0"), "{report}");

    for m in &r.machines {
        // The machine's own init said so on its console: the run counts a boot when the
        // report arrives, and the line comes once the answer is back and the serial console
        // has carried it (slow under TCG), so it is waited for.
        let said = wait_for(Duration::from_secs(30), || {
            r.console(&m.name)
                .contains("bootfabric-init: booted reported")
                .then_some(())
        });
        assert!(said.is_some(), "{}", consoles());
        let (_, tl) = http_get(
            &r.server,
            r.daemon.admin,
            &format!("/api/timeline?mac={}", m.mac),
        )
        .expect("timeline");
        // Reset, the firmware's DHCP (and the gate letting it through), OVMF's PXE fetching
        // ipxe.efi over TFTP, kernel and initramfs over HTTP, the OS's callback.
        let mut order = vec!["bmc_reset", "dhcp_offer", "admitted"];
        match m.firmware {
            rack::Firmware::UefiPxe => order.push("tftp_sent"),
            // ipxe.efi over HTTP, and no TFTP at all.
            rack::Firmware::UefiHttp => {
                order.push("http_sent");
                assert!(!tl.contains("\"phase\":\"tftp_"), "{}: {tl}", m.name);
            }
            _ => {}
        }
        order.extend(["http_sent", "http_sent", "booted"]);
        let mut from = 0;
        for phase in order {
            let at = tl[from..]
                .find(&format!("\"phase\":\"{phase}\""))
                .unwrap_or_else(|| panic!("{}: no {phase} in order in {tl}", m.name));
            from += at + 1;
        }
    }
    if xdp {
        let (_, m) = http_get(&r.server, r.daemon.admin, "/metrics").expect("metrics");
        let answered = |reason: &str| {
            sample(
                &m,
                "bootfabric_xdp_dhcp_packets_total",
                &[("action", "answered"), ("reason", reason)],
            )
            .unwrap_or(0.0)
        };
        // Firmware, iPXE and the booted OS each asked: all reserved, all from the kernel.
        assert!(answered("offer") >= 6.0, "{m}");
        assert!(answered("ack") >= 6.0, "{m}");
    }
}
