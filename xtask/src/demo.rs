//! `cargo xtask demo`: the README's first command.
//!
//! Builds the fabric, creates a lab network (a server namespace and a client namespace joined
//! by a veth pair, nothing on the host's interfaces), runs the daemon on
//! `deploy/examples/bootfabric.toml` in the server namespace, lets a real DHCP client
//! (BusyBox udhcpc) with a reserved host's MAC get its address, plays the first packets of a
//! PXE boot, and shows what the fabric decided and saw: `explain`, `leases` and metrics.

use std::net::UdpSocket;

use anyhow::{anyhow, Context as _};
use bootfabric_lab::{http_get, packets, Daemon, PairLab};

use crate::{build, root};

/// Runs the demo; with `keep`, leaves the lab up until Ctrl-C.
pub fn run(keep: bool) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("the demo creates network namespaces and attaches XDP: run it as root");
    }
    crate::setup::run()?;
    let built = build::run(false)?;
    std::env::set_var("BOOTFABRIC_BIN", &built.daemon);

    let examples = root().join("deploy/examples");
    let config = std::fs::read_to_string(examples.join("bootfabric.toml"))
        .context("reading deploy/examples/bootfabric.toml")?
        // Leases go to the lab's own folder, not the host's /var/lib/bootfabric.
        .replacen("[daemon]\n", "[daemon]\nstate_dir = \"state\"\n", 1);
    let hosts = std::fs::read_to_string(examples.join("hosts.toml"))
        .context("reading deploy/examples/hosts.toml")?;

    println!("\n==> lab: namespaces joined by a veth pair (fabric0 10.77.0.1 <-> client0, no address yet)");
    let lab = PairLab::unaddressed_client("client0").map_err(|e| anyhow!(e))?;
    // The MAC of rack1-node01 in deploy/examples/hosts.toml: it has a reservation.
    lab.client
        .ip(&["link", "set", "client0", "address", "52:54:00:b0:0f:01"])
        .map_err(|e| anyhow!(e))?;
    println!("    server namespace: {}", lab.server.name());
    println!("    client namespace: {}", lab.client.name());

    println!(
        "\n==> bootfabric serve --config deploy/examples/bootfabric.toml (in the server namespace)"
    );
    let daemon =
        Daemon::start(&lab.server, &config, &[("hosts.toml", &hosts)]).map_err(|e| anyhow!(e))?;
    for line in daemon.log().lines() {
        println!("    {line}");
    }

    println!("\n==> a real DHCP client (udhcpc -i client0) asks for an address");
    let out = bootfabric_lab::run(
        lab.client
            .command("udhcpc")
            .args(["-q", "-n", "-f", "-i", "client0", "-t", "5", "-T", "2"])
            .args(["-s", "/bin/true", "-V", "PXEClient:Arch:00000"]),
    )
    .map_err(|e| anyhow!(e))?;
    for line in out.lines() {
        println!("    {line}");
    }
    println!("\n==> bootfabric leases");
    let leases = daemon.cli(&["leases"]).map_err(|e| anyhow!(e))?;
    for line in leases.lines() {
        println!("    {line}");
    }
    // udhcpc ran with a no-op script: give the interface the address it was acknowledged.
    let ip = leases
        .lines()
        .find(|l| l.contains("52:54:00:b0:0f:01"))
        .and_then(|l| l.split_whitespace().next())
        .context("the reserved host holds no lease")?
        .to_owned();
    lab.client
        .ip(&["addr", "add", &format!("{ip}/24"), "dev", "client0"])
        .map_err(|e| anyhow!(e))?;

    println!(
        "\n==> bootfabric explain --mac 52:54:00:b0:0f:01 --arch 7 (a UEFI PXE ROM on that host)"
    );
    let explain = daemon
        .cli(&[
            "explain",
            "--mac",
            "52:54:00:b0:0f:01",
            "--arch",
            "7",
            "--server-ip",
            "10.77.0.1",
        ])
        .map_err(|e| anyhow!(e))?;
    for line in explain.lines() {
        println!("    {line}");
    }

    println!("\n==> the client sends the next packets of a PXE boot");
    let src = format!("{ip}:0");
    lab.client
        .run(move || -> std::io::Result<()> {
            let tftp = UdpSocket::bind(&src)?;
            tftp.send_to(&packets::tftp_rrq("ipxe.efi"), "10.77.0.1:69")?;
            tftp.send_to(&packets::tftp_ack(1), "10.77.0.1:50000")?;
            Ok(())
        })
        .map_err(|e| anyhow!(e))?
        .context("sending client packets")?;
    println!("    TFTP RRQ ipxe.efi -> 10.77.0.1:69");
    println!("    TFTP ACK          -> 10.77.0.1:50000");

    println!(
        "\n==> what the fabric saw: GET http://{}/metrics (in the server namespace)",
        daemon.admin
    );
    let (_, metrics) = http_get(&lab.server, daemon.admin, "/metrics").map_err(|e| anyhow!(e))?;
    for line in metrics.lines().filter(|l| {
        !l.starts_with('#')
            && (l.starts_with("bootfabric_xdp_packets_total")
                || l.starts_with("bootfabric_dhcp_packets_total")
                || l.starts_with("bootfabric_dhcp_leases_active")
                || l.starts_with("bootfabric_xdp_attach_mode")
                || l.starts_with("bootfabric_service_up")
                || l.starts_with("bootfabric_build_info"))
    }) {
        println!("    {line}");
    }

    if keep {
        println!(
            "\nThe lab is up. Try:\n    ip netns exec {} curl -s http://{}/metrics\nCtrl-C stops it and removes the lab.",
            lab.server.name(),
            daemon.admin
        );
        wait_for_ctrl_c()?;
    }
    println!("\n==> SIGTERM: the daemon detaches XDP and stops; the lab is removed");
    let mut daemon = daemon;
    let before = daemon.log().lines().count();
    let status = daemon
        .stop_with(nix::sys::signal::Signal::SIGTERM)
        .map_err(|e| anyhow!(e))?;
    for line in daemon.log().lines().skip(before) {
        println!("    {line}");
    }
    println!("    daemon {status}");
    drop(daemon);
    drop(lab);
    Ok(())
}

/// Blocks until SIGINT or SIGTERM, so that the lab's guards run their cleanup.
fn wait_for_ctrl_c() -> anyhow::Result<()> {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("blocking SIGINT")?;
    set.wait().context("waiting for SIGINT")?;
    Ok(())
}
