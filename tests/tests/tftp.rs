//! The TFTP server against real clients in a namespace lab: tftp-hpa's `tftp`, `atftp` (with
//! blksize and windowsize) and `curl` (with --tftp-blksize) fetch byte-identical files;
//! names that leave the root are refused with an access violation; per-host files are
//! rendered from the host's profile, found by MAC, by address and by lease; transfers through
//! a relay that drops, duplicates and reorders still complete with identical bytes.
//!
//! Attacks (issue 14), each made from a client namespace as an attacker would: a flood of
//! never-acknowledged requests asking for `timeout=255`, a stranger's packets to a live
//! transfer's port, guessing the next transfer port, many netascii transfers at once, and
//! requests for a file whose open never returns.

use std::{
    net::{SocketAddr, UdpSocket},
    time::{Duration, Instant},
};

use bootfabric_lab::{
    content, have_program, http_get,
    relay::{Impairment, Relay, RelayLab},
    require, require_root, run, sample, wait_for, Bridge, Daemon, LabError, Netns, PairLab,
    TempDir,
};

/// The lab's config; `extra` goes at the end of `[daemon]`, `tftp_extra` at the end of
/// `[tftp]` (which has no transfer ports then).
fn config(root: &std::path::Path, extra: &str, tftp_extra: &str) -> String {
    let ports = if tftp_extra.contains("transfer_ports") {
        ""
    } else {
        "transfer_ports = \"50000-50099\"\n"
    };
    format!(
        "[daemon]\nstate_dir = \"state\"\n{extra}[fabric]\ninterfaces = [\"fabric0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[tftp]\nroot = \"{}\"\n{ports}{tftp_extra}",
        root.display()
    )
}

/// The namespaces of a test: a direct link, one through an impairing relay, or a switch
/// with a second client (`other`, 10.77.0.3) beside the first.
struct Net {
    relay: Option<Relay>,
    server: Netns,
    client: Netns,
    other: Option<Netns>,
    _relay_ns: Option<Netns>,
    _bridge: Option<Bridge>,
}

impl From<PairLab> for Net {
    fn from(p: PairLab) -> Self {
        Net {
            relay: None,
            server: p.server,
            client: p.client,
            other: None,
            _relay_ns: None,
            _bridge: None,
        }
    }
}

impl From<RelayLab> for Net {
    fn from(r: RelayLab) -> Self {
        Net {
            relay: Some(r.relay),
            server: r.server,
            client: r.client,
            other: None,
            _relay_ns: Some(r.relay_ns),
            _bridge: None,
        }
    }
}

/// The server, an attacker (10.77.0.2) and a bystander (10.77.0.3) on one switch.
fn switched() -> Result<Net, LabError> {
    let mut bridge = Bridge::new()?;
    let server = Netns::new("srv")?;
    let client = Netns::new("atk")?;
    let other = Netns::new("cli")?;
    bridge.plug(&server, "fabric0", "10.77.0.1/24")?;
    bridge.plug(&client, "client0", "10.77.0.2/24")?;
    bridge.plug(&other, "client0", "10.77.0.3/24")?;
    Ok(Net {
        relay: None,
        server,
        client,
        other: Some(other),
        _relay_ns: None,
        _bridge: Some(bridge),
    })
}

struct Lab {
    lab: Net,
    daemon: Daemon,
    root: std::path::PathBuf,
    _base: TempDir,
    out: TempDir,
}

fn lab(t: &str, program: &str) -> Option<Lab> {
    lab_with(t, program, || PairLab::new().map(Net::from), "", &[])
}

/// A lab whose daemon has `extra` config (at the end of `[daemon]`; what follows a `[tftp]`
/// line in it goes into `[tftp]`) and `files` beside its config.
fn lab_with(
    t: &str,
    program: &str,
    net: impl FnOnce() -> Result<Net, LabError>,
    extra: &str,
    files: &[(&str, &str)],
) -> Option<Lab> {
    let missing = format!("{program} is not installed (cargo xtask setup)");
    if !require_root(t) || !require(have_program(program), t, &missing) {
        return None;
    }
    let base = TempDir::new().expect("root");
    let root = base.path.join("tftp");
    std::fs::create_dir(&root).expect("root dir");
    // Beside the root, not in it: what a traversal would reach.
    std::fs::write(base.path.join("secret-outside"), b"x").expect("file");
    for (name, len, seed) in [
        ("empty.bin", 0usize, 1u32),
        ("small.bin", 100, 2),
        ("exact.bin", 1468 * 3, 3),
        ("ipxe.efi", 1_048_576 + 17, 4),
    ] {
        std::fs::write(root.join(name), content(len, seed)).expect("file");
    }
    let lab = net().expect("lab");
    let (extra, tftp_extra) = extra.split_once("[tftp]\n").unwrap_or((extra, ""));
    let daemon =
        Daemon::start(&lab.server, &config(&root, extra, tftp_extra), files).expect("daemon");
    Some(Lab {
        lab,
        daemon,
        root,
        _base: base,
        out: TempDir::new().expect("out"),
    })
}

impl Lab {
    /// Fetches `name` with tftp-hpa: its bytes, or the client's error output.
    fn fetch(&self, name: &str) -> Result<String, String> {
        let dest = self.out.path.join("fetched");
        let _ = std::fs::remove_file(&dest);
        let out = self
            .lab
            .client
            .tftp_get(name, &dest, None)
            .output()
            .map_err(|e| e.to_string())?;
        let said = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if said.contains("Error code") {
            return Err(said);
        }
        std::fs::read_to_string(&dest).map_err(|e| format!("{e}: {said}"))
    }

    /// The daemon's TFTP metrics, for failure messages.
    fn tftp_metrics(&self) -> String {
        let (_, text) = http_get(&self.lab.server, self.daemon.admin, "/metrics").expect("metrics");
        text.lines()
            .filter(|l| l.starts_with("bootfabric_tftp"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = http_get(&self.lab.server, self.daemon.admin, "/metrics").expect("metrics");
        sample(&text, name, labels).unwrap_or(0.0)
    }

    fn same(&self, name: &str, fetched: &str) {
        let want = std::fs::read(self.root.join(name)).expect("source");
        let got = std::fs::read(self.out.path.join(fetched))
            .unwrap_or_else(|e| panic!("{fetched} not fetched: {e}"));
        assert!(
            got == want,
            "{name}: {} bytes fetched, {} expected, contents differ",
            got.len(),
            want.len()
        );
    }
}

const FILES: [&str; 4] = ["empty.bin", "small.bin", "exact.bin", "ipxe.efi"];

#[test]
fn tftp_hpa_fetches_identical_files() {
    let Some(l) = lab("tftp_hpa_fetches_identical_files", "tftp") else {
        return;
    };
    for f in FILES {
        let dest = l.out.path.join(format!("hpa-{f}"));
        run(&mut l.lab.client.tftp_get(f, &dest, None)).expect("tftp get");
        l.same(f, &format!("hpa-{f}"));
    }
}

#[test]
fn atftp_with_blksize_and_windowsize_fetches_identical_files() {
    let Some(l) = lab(
        "atftp_with_blksize_and_windowsize_fetches_identical_files",
        "atftp",
    ) else {
        return;
    };
    for f in FILES {
        let dest = l.out.path.join(format!("at-{f}"));
        run(l
            .lab
            .client
            .command("atftp")
            .args([
                "--option",
                "blksize 1468",
                "--option",
                "windowsize 4",
                "-g",
                "-r",
                f,
                "-l",
            ])
            .arg(&dest)
            .arg("10.77.0.1"))
        .expect("atftp");
        l.same(f, &format!("at-{f}"));
    }
}

#[test]
fn curl_with_tftp_blksize_fetches_identical_files() {
    let Some(l) = lab("curl_with_tftp_blksize_fetches_identical_files", "curl") else {
        return;
    };
    // Not the empty file: curl 7.88 fails every zero-byte TFTP download with "getpeername()
    // failed" (it does against tftpd-hpa too); tftp-hpa and atftp cover it.
    for f in ["small.bin", "exact.bin", "ipxe.efi"] {
        let dest = l.out.path.join(format!("curl-{f}"));
        run(l
            .lab
            .client
            .command("curl")
            .args(["-sS", "--fail", "--tftp-blksize", "1468", "-o"])
            .arg(&dest)
            .arg(format!("tftp://10.77.0.1/{f}")))
        .expect("curl");
        l.same(f, &format!("curl-{f}"));
    }
}

#[test]
fn names_leaving_the_root_are_refused() {
    // tftp-hpa sends the name exactly as given (curl would normalise "../" away).
    let Some(l) = lab("names_leaving_the_root_are_refused", "tftp") else {
        return;
    };
    for name in [
        "../secret-outside",
        "/etc/hostname",
        "missing.efi",
        "sub\\..\\x",
    ] {
        let dest = l.out.path.join("refused");
        let out = l
            .lab
            .client
            .tftp_get(name, &dest, None)
            .output()
            .expect("tftp");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("Error code"), "{name}: no TFTP error: {text}");
        let served = std::fs::read(&dest).map(|b| !b.is_empty()).unwrap_or(false);
        assert!(!served, "{name} was served");
    }
}

#[test]
fn transfers_survive_deterministic_loss() {
    let t = "transfers_survive_deterministic_loss";
    let Some(l) = lab(t, "tftp") else { return };
    if !require(
        have_program("iptables"),
        t,
        "iptables is not installed (cargo xtask setup)",
    ) {
        return;
    }
    // Dropped on arrival, the same packets on every run: every 5th datagram the client
    // receives (starting with DATA 1) and every 7th the server receives (starting with its
    // 4th: mid-transfer ACKs). Dropping in OUTPUT instead would fail the sender's sendto()
    // with EPERM, which is not loss.
    for (ns, every, first) in [(&l.lab.client, "5", "1"), (&l.lab.server, "7", "3")] {
        run(ns.command("iptables").args([
            "-A",
            "INPUT",
            "-p",
            "udp",
            "-m",
            "statistic",
            "--mode",
            "nth",
            "--every",
            every,
            "--packet",
            first,
            "-j",
            "DROP",
        ]))
        .expect("iptables");
    }
    std::fs::write(l.root.join("lossy.bin"), content(16 * 1024 + 5, 9)).expect("file");
    let dest = l.out.path.join("lossy-hpa");
    run(&mut l.lab.client.tftp_get("lossy.bin", &dest, None)).expect("tftp-hpa under loss");
    l.same("lossy.bin", "lossy-hpa");
}

const INVENTORY: &str = r#"
[profiles.installer]
kernel = "debian/linux"
initrd = ["debian/initrd.gz"]
cmdline = "console=ttyS0 url={http_base}/preseed/{host}.cfg"

[profiles.disk]

[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.2"
profile = "installer"

[[hosts]]
name = "node02"
mac = "52:54:00:b0:0f:02"
ip = "10.77.0.12"
profile = "disk"

[[hosts]]
name = "node03"
mac = "52:54:00:b0:0f:03"
profile = "installer"
"#;

#[test]
fn per_host_files_are_rendered_from_the_profile() {
    let t = "per_host_files_are_rendered_from_the_profile";
    let Some(l) = lab_with(
        t,
        "tftp",
        || PairLab::new().map(Net::from),
        "inventory = \"hosts.toml\"\n",
        &[("hosts.toml", INVENTORY)],
    ) else {
        return;
    };
    std::fs::create_dir_all(l.root.join("pxelinux.cfg")).expect("dir");
    std::fs::write(l.root.join("pxelinux.cfg/default"), "DEFAULT fallback\n").expect("file");
    // An operator's own file for node02 wins over rendering.
    std::fs::write(
        l.root.join("pxelinux.cfg/01-52-54-00-b0-0f-02"),
        "DEFAULT override\n",
    )
    .expect("file");
    std::fs::write(l.root.join("boot.ipxe"), "#!ipxe\necho generic\n").expect("file");

    let node01 = l
        .fetch("pxelinux.cfg/01-52-54-00-b0-0f-01")
        .expect("node01 by MAC");
    assert!(
        node01.contains("for node01 (52:54:00:b0:0f:01)"),
        "{node01}"
    );
    assert!(node01.contains("  KERNEL debian/linux\n"), "{node01}");
    assert!(node01.contains("  INITRD debian/initrd.gz\n"), "{node01}");
    assert!(
        node01.contains("APPEND console=ttyS0 url=http://10.77.0.1/preseed/node01.cfg"),
        "{node01}"
    );
    // By address in hex, as pxelinux asks after the MAC: node02 boots from disk.
    let node02 = l.fetch("pxelinux.cfg/0A4D000C").expect("node02 by address");
    assert!(
        node02.contains("for node02") && node02.contains("LOCALBOOT 0"),
        "{node02}"
    );
    assert_eq!(
        l.fetch("pxelinux.cfg/01-52-54-00-b0-0f-02")
            .expect("override"),
        "DEFAULT override\n"
    );
    // An unknown MAC and a prefix are not found, so pxelinux goes on to `default`.
    // Refused with ERROR 1 (File not found), which is what sends pxelinux on; a timeout or
    // any other code would leave it waiting or stop it.
    let not_found =
        |r: &Result<String, String>| matches!(r, Err(said) if said.contains("Error code 1:"));
    let unknown = l.fetch("pxelinux.cfg/01-52-54-00-ff-ff-ff");
    assert!(not_found(&unknown), "unknown host: {unknown:?}");
    let prefix = l.fetch("pxelinux.cfg/0A4D");
    assert!(not_found(&prefix), "address prefix: {prefix:?}");
    assert_eq!(
        l.fetch("pxelinux.cfg/default").expect("default"),
        "DEFAULT fallback\n"
    );
    let grub = l
        .fetch("grub/grub.cfg-01-52-54-00-b0-0f-01")
        .expect("grub config");
    assert!(
        grub.contains("  linux /debian/linux console=ttyS0"),
        "{grub}"
    );
    assert!(grub.contains("  initrd /debian/initrd.gz\n"), "{grub}");
    // GRUB asks with a leading slash (`(tftp)/grub/...`): the root is its `/`.
    assert_eq!(
        l.fetch("/grub/grub.cfg-01-52-54-00-b0-0f-01")
            .expect("absolute grub name"),
        grub
    );
    assert_eq!(
        l.fetch("/pxelinux.cfg/default").expect("absolute default"),
        "DEFAULT fallback\n"
    );
    // The client is 10.77.0.2, node01's reserved address: the shared script name is its own.
    let script = l.fetch("boot.ipxe").expect("script");
    assert!(script.starts_with("#!ipxe\n"), "{script}");
    assert!(
        script.contains("kernel http://10.77.0.1/debian/linux initrd=initrd.gz console=ttyS0"),
        "{script}"
    );

    assert_eq!(
        l.metric("bootfabric_tftp_rendered_total", &[("format", "pxelinux")]),
        2.0
    );
    assert_eq!(
        l.metric("bootfabric_tftp_rendered_total", &[("format", "grub")]),
        2.0
    );
    assert_eq!(
        l.metric("bootfabric_tftp_rendered_total", &[("format", "ipxe")]),
        1.0
    );
    // Every completed fetch from node01's address reached the ledger. The server records a
    // transfer when it reads the last ACK, which may be after the client has exited: wait.
    let sent = || l.metric("bootfabric_ledger_events_total", &[("phase", "tftp_sent")]);
    assert!(
        wait_for(Duration::from_secs(30), || (sent() >= 8.0).then_some(())).is_some(),
        "{} tftp_sent events",
        sent()
    );
}

/// `netboot = "deny"`, taken by a SIGHUP: the host's own files (its pxelinux and GRUB
/// configs, the script rendered for its address) are refused with an access violation, so
/// its loader gets no boot; shared files stay public and the other hosts are served.
#[test]
fn a_denied_host_gets_none_of_its_own_files() {
    let t = "a_denied_host_gets_none_of_its_own_files";
    let Some(l) = lab_with(
        t,
        "tftp",
        || PairLab::new().map(Net::from),
        "inventory = \"hosts.toml\"\n",
        &[("hosts.toml", INVENTORY)],
    ) else {
        return;
    };
    std::fs::write(l.root.join("undionly.kpxe"), "a shared loader\n").expect("file");
    let own = "pxelinux.cfg/01-52-54-00-b0-0f-01";
    let before = l.fetch(own).expect("node01 served");
    assert!(before.contains("KERNEL debian/linux"), "{before}");

    let hosts = l.daemon.config_path().with_file_name("hosts.toml");
    let denied = INVENTORY.replacen(
        "profile = \"installer\"\n",
        "profile = \"installer\"\nnetboot = \"deny\"\n",
        1,
    );
    assert!(denied.contains("netboot = \"deny\""));
    std::fs::write(&hosts, denied).expect("inventory");
    l.daemon.reload("config reloaded").expect("reload");

    let refused =
        |r: &Result<String, String>| matches!(r, Err(said) if said.contains("Error code 2:"));
    for name in [own, "grub/grub.cfg-01-52-54-00-b0-0f-01", "boot.ipxe"] {
        let r = l.fetch(name);
        assert!(refused(&r), "{name}: {r:?}");
    }
    assert_eq!(
        l.fetch("undionly.kpxe").expect("shared loader"),
        "a shared loader\n"
    );
    let node02 = l
        .fetch("pxelinux.cfg/01-52-54-00-b0-0f-02")
        .expect("node02");
    assert!(node02.contains("for node02"), "{node02}");
    assert_eq!(
        l.metric(
            "bootfabric_tftp_errors_total",
            &[("reason", "netboot_deny")]
        ),
        3.0
    );
}

/// The address a host leased is how TFTP knows it: node03 has no reservation.
#[test]
fn a_leased_host_gets_its_own_script() {
    let t = "a_leased_host_gets_its_own_script";
    if !require(
        have_program("udhcpc"),
        t,
        "udhcpc is not installed (cargo xtask setup)",
    ) {
        return;
    }
    let dhcp = "[[dhcp.subnets]]\ncidr = \"10.77.0.0/24\"\ninterface = \"fabric0\"\npools = [\"10.77.0.100-10.77.0.199\"]\n";
    let pair = || {
        let lab = PairLab::unaddressed_client("client0")?;
        lab.client
            .ip(&["link", "set", "client0", "address", "52:54:00:b0:0f:03"])?;
        Ok(Net::from(lab))
    };
    let Some(l) = lab_with(
        t,
        "tftp",
        pair,
        &format!("inventory = \"hosts.toml\"\n{dhcp}"),
        &[("hosts.toml", INVENTORY)],
    ) else {
        return;
    };
    let script = l.out.path.join("udhcpc.sh");
    std::fs::write(
        &script,
        "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr replace \"$ip/$mask\" dev \"$interface\"; ip route replace default dev \"$interface\" ;; esac\nexit 0\n",
    )
    .expect("script");
    let mut perm = std::fs::metadata(&script).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perm, 0o755);
    std::fs::set_permissions(&script, perm).expect("chmod");
    run(l
        .lab
        .client
        .command("udhcpc")
        .args([
            "-f", "-q", "-n", "-i", "client0", "-t", "10", "-T", "2", "-s",
        ])
        .arg(&script))
    .expect("udhcpc lease");
    let leased = wait_for(Duration::from_secs(10), || {
        l.lab
            .client
            .ip(&["-4", "-o", "addr", "show", "client0"])
            .ok()
            .filter(|s| s.contains("10.77.0.1"))
    });
    assert!(leased.is_some(), "no leased address on client0");
    let node03 = l.fetch("boot.ipxe").expect("script");
    assert!(
        node03.contains("for node03 (52:54:00:b0:0f:03)"),
        "{node03}"
    );
    assert!(
        node03.contains("url=http://10.77.0.1/preseed/node03.cfg"),
        "{node03}"
    );
}

/// Drops, duplicates and reorders from a seeded relay; each client fetches files of several
/// sizes under three seeds and must get identical bytes. atftp aborts on a second OACK
/// whoever sent it (a duplicate, or the resend after a lost ACK 0: a client bug no server
/// can hide), so its option handshake is spared; it runs with a window of 8 so that drops,
/// duplicates and reorders land inside windows.
#[test]
fn transfers_survive_drops_duplicates_and_reorders() {
    let t = "transfers_survive_drops_duplicates_and_reorders";
    for program in ["tftp", "atftp", "curl"] {
        if !require(
            have_program(program),
            t,
            &format!("{program} is not installed (cargo xtask setup)"),
        ) {
            return;
        }
    }
    let mut totals = std::collections::BTreeMap::new();
    for seed in [1u64, 2, 3] {
        let full = Impairment {
            drop: 30,
            duplicate: 30,
            reorder: 30,
            spare_tftp_handshake: false,
        };
        let spared = Impairment {
            spare_tftp_handshake: true,
            ..full
        };
        for (client, impair) in [("tftp", full), ("curl", full), ("atftp", spared)] {
            // Every file is one the kernel serves: lock-step transfers (tftp-hpa, curl) and
            // windows (atftp) are handed to the kernel under the same drops, duplicates and
            // reorders.
            // A resent window makes no progress when its first missing block or the ACK is
            // dropped or held back again (most frames here are impaired), and a repeated ACK of
            // an acknowledged block is deliberately no progress (Sorcerer's Apprentice, below).
            // Six such rounds in a row (the default `max_retries` of 5) happened to atftp's
            // windows in CI: the daemon rightly gave up, its ERROR was dropped, and atftp's next
            // ACK met the closed port ("unknown error"). The retry budget is not what this test
            // is about, so atftp's daemon has four times the default. The lock-step clients
            // keep the default: their resends are counted against the impairments below, and
            // a transfer the client refused (a duplicated RRQ's) is resent up to the budget.
            let retries = if client == "atftp" {
                "max_retries = 20\n"
            } else {
                ""
            };
            let tftp = format!(
                "[tftp]\nkernel_files = [\"small.bin\", \"exact.bin\", \"lossy.bin\"]\n{retries}"
            );
            let Some(l) = lab_with(
                t,
                client,
                || RelayLab::new(impair, seed).map(Net::from),
                &tftp,
                &[],
            ) else {
                return;
            };
            std::fs::write(
                l.root.join("lossy.bin"),
                content(48 * 1024 + 3, seed as u32),
            )
            .expect("file");
            // A published configuration (SIGHUP) reads new and changed files at once.
            l.daemon
                .reload("file=lossy.bin")
                .expect("lossy.bin in the kernel");
            for f in ["small.bin", "exact.bin", "lossy.bin"] {
                let dest = l.out.path.join(f);
                let cmd = &mut l.lab.client.command(client);
                match client {
                    "tftp" => cmd
                        .args(["-m", "binary", "10.77.0.1", "-c", "get", f])
                        .arg(&dest),
                    "curl" => cmd
                        .args(["-sS", "--fail", "--tftp-blksize", "1024", "-o"])
                        .arg(&dest)
                        .arg(format!("tftp://10.77.0.1/{f}")),
                    _ => cmd
                        .args(["--option", "blksize 1468", "--option", "windowsize 8"])
                        .args(["--option", "timeout 1", "-g", "-r", f, "-l"])
                        .arg(&dest)
                        .arg("10.77.0.1"),
                };
                run(cmd).unwrap_or_else(|e| {
                    panic!(
                        "{client} {f} seed {seed}: {e}\n{}\n{}",
                        l.tftp_metrics(),
                        l.daemon.log()
                    )
                });
                l.same(f, f);
            }
            let relay = l.lab.relay.as_ref().expect("relay");
            let (dropped, duplicated, reordered) = relay.stats.impaired();
            if client == "atftp" {
                // Windows go out as GSO batches, which the relay cuts and impairs one by one.
                let batches = relay
                    .stats
                    .gso_batches
                    .load(std::sync::atomic::Ordering::Relaxed);
                assert!(
                    batches > 0,
                    "atftp seed {seed}: no window was sent as one batch"
                );
            }
            let seen = totals.entry(client).or_insert((0, 0, 0));
            seen.0 += dropped;
            seen.1 += duplicated;
            seen.2 += reordered;
            if client == "atftp" {
                // Windows (atftp's 8) are handed to the kernel too. The kernel answers only
                // the ACK of the newest block, and atftp ACKs at once whatever arrives out
                // of order, so under these reorders nearly every ACK names a block inside
                // the window and userspace resends from there: the kernel may send little
                // or nothing, and every byte must still arrive.
                assert!(
                    l.metric(
                        "bootfabric_tftp_kernel_transfers_total",
                        &[("file", "lossy.bin"), ("result", "handed")]
                    ) >= 1.0,
                    "atftp seed {seed}: lossy.bin not handed to the kernel\n{}",
                    l.tftp_metrics()
                );
            } else {
                assert!(
                    l.metric("bootfabric_tftp_kernel_blocks_total", &[]) > 0.0,
                    "{client} seed {seed}: the kernel answered nothing\n{}\n{}",
                    l.tftp_metrics(),
                    l.daemon.log()
                );
                // Duplicated ACKs must not start duplicate bursts (Sorcerer's Apprentice):
                // that would resend every block after the first duplicate. With a window of
                // one, each resend is owed to a lost, late or duplicated packet (a
                // duplicated RRQ starts a transfer the client then refuses).
                let resent = l.metric("bootfabric_tftp_retransmits_total", &[]);
                assert!(
                    resent <= (dropped + reordered + duplicated) as f64,
                    "{client} seed {seed}: {resent} blocks resent for {dropped} drops, {duplicated} duplicates and {reordered} reorders"
                );
            }
        }
    }
    for (client, (dropped, duplicated, reordered)) in totals {
        assert!(
            dropped > 0 && duplicated > 0 && reordered > 0,
            "{client}: the relay did not impair every way ({dropped} dropped, {duplicated} duplicated, {reordered} reordered)"
        );
    }
}

/// The server's port 69, as the clients reach it.
const SERVER: &str = "10.77.0.1:69";

/// A read request for `name` in `mode` with `options`, as raw bytes.
fn rrq(name: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut p = vec![0, 1];
    let parts = [name, mode]
        .into_iter()
        .chain(options.iter().flat_map(|(k, v)| [*k, *v]));
    for part in parts {
        p.extend_from_slice(part.as_bytes());
        p.push(0);
    }
    p
}

/// `n` UDP sockets made in `ns` (they stay in it), each with a receive timeout of `wait`.
fn sockets(ns: &Netns, n: usize, wait: Duration) -> Vec<UdpSocket> {
    sockets_on(ns, vec!["0.0.0.0:0".parse().expect("addr"); n], wait)
}

/// UDP sockets made in `ns` and bound to `addrs`, each with a receive timeout of `wait`.
fn sockets_on(ns: &Netns, addrs: Vec<SocketAddr>, wait: Duration) -> Vec<UdpSocket> {
    ns.run(move || {
        addrs
            .into_iter()
            .map(|a| {
                let s = UdpSocket::bind(a).expect("bind");
                s.set_read_timeout(Some(wait)).expect("timeout");
                s
            })
            .collect::<Vec<_>>()
    })
    .expect("client namespace")
}

/// The first packet the server answers `sock` with, and where from.
fn answer(sock: &UdpSocket) -> Result<(Vec<u8>, SocketAddr), String> {
    let mut buf = vec![0u8; 2048];
    // A signal meant for another test's child can interrupt the wait: that is no answer
    // yet, not a missing one.
    let (n, from) = loop {
        match sock.recv_from(&mut buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => break other.map_err(|e| format!("no answer: {e}"))?,
        }
    };
    buf.truncate(n);
    Ok((buf, from))
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// A boot storm: 2000 transfers in flight at once, each with its own TID, served by a few
/// threads, with memory per transfer bounded and every file identical.
#[test]
fn thousands_of_transfers_at_once_share_bounded_memory() {
    const N: usize = 2000;
    let t = "thousands_of_transfers_at_once_share_bounded_memory";
    // Sockets for the client side, and (inherited) a socket and a file per transfer for
    // the daemon.
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: limit is a valid rlimit to fill, then to set.
    let raised = unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit) == 0
        }
    };
    if !require(
        raised && limit.rlim_cur >= 3 * N as u64,
        t,
        &format!(
            "the open files limit ({}) is under {}",
            limit.rlim_max,
            3 * N
        ),
    ) {
        return;
    }
    let Some(l) = lab_with(
        t,
        "ip",
        || PairLab::new().map(Net::from),
        // One address stands in for 2000 hosts here: the per-client caps (which stop one
        // machine hogging the server) are opened to the global ones.
        "[tftp]\ntransfer_ports = \"40000-44999\"\nmax_transfers_per_client = 5000\nrequests_per_second_per_client = 5000\n",
        &[],
    ) else {
        return;
    };
    let want = content(64 * 1024 + 7, 77);
    std::fs::write(l.root.join("storm.bin"), &want).expect("file");
    let pid = l.daemon.pid();
    let rss_before = proc_status(pid, "VmRSS:");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let fetched = std::thread::scope(|scope| {
        let client = scope.spawn(|| {
            l.lab.client.run(move || {
                bootfabric_lab::tftp_client::fetch_many(
                    "10.77.0.1:69".parse().expect("addr"),
                    "storm.bin",
                    N,
                    1468,
                    Duration::from_secs(300),
                    move || {
                        let _ = started_tx.send(());
                        let _ = go_rx.recv();
                    },
                )
            })
        });
        let all_started = started_rx.recv_timeout(Duration::from_secs(120)).is_ok();
        let active = l.metric("bootfabric_tftp_transfers_active", &[]);
        let rss_peak = proc_status(pid, "VmRSS:");
        let threads = proc_status(pid, "Threads:");
        let _ = go_tx.send(());
        let fetched = client.join().expect("client thread");
        assert!(all_started, "the transfers never were all in flight");
        assert_eq!(active, N as f64, "transfers in flight at the server");
        let per_transfer_kib = rss_peak.saturating_sub(rss_before) as f64 / N as f64;
        eprintln!("{N} transfers in flight: {threads} threads, RSS {rss_before} kB before, {rss_peak} kB with them ({per_transfer_kib:.1} KiB each)");
        assert!(threads < 64, "{threads} threads for {N} transfers");
        assert!(
            per_transfer_kib < 64.0,
            "{per_transfer_kib:.1} KiB of memory per transfer"
        );
        fetched
    })
    .expect("client namespace")
    .expect("transfers");
    let mut times: Vec<Duration> = Vec::with_capacity(N);
    for (i, f) in fetched.iter().enumerate() {
        match &f.result {
            Ok(bytes) => assert!(
                *bytes == want,
                "transfer {i}: {} bytes, contents differ",
                bytes.len()
            ),
            Err(e) => panic!("transfer {i}: {e}"),
        }
        times.push(f.elapsed);
    }
    times.sort();
    // Fairness is reported, not asserted (timings on a shared machine).
    eprintln!(
        "{N} transfers: fastest {:?}, median {:?}, slowest {:?}",
        times[0],
        times[N / 2],
        times[N - 1]
    );
    // A transfer is counted when the server reads its last ACK, which may come after the
    // client has its file: wait for the count.
    let completed = || {
        l.metric(
            "bootfabric_tftp_transfers_total",
            &[("outcome", "completed")],
        )
    };
    assert!(
        wait_for(Duration::from_secs(30), || (completed() >= N as f64)
            .then_some(()))
        .is_some(),
        "{} of {N} transfers counted as completed",
        completed()
    );
}

/// With `tftp.mtu` above the link's (blocks that the IP layer fragments, as tftpd-hpa sends
/// them), a window cannot go out as one GSO batch: the kernel refuses it, and the transfer
/// goes on block by block.
#[test]
fn blocks_larger_than_the_link_mtu_still_go_out_in_windows() {
    let t = "blocks_larger_than_the_link_mtu_still_go_out_in_windows";
    let Some(l) = lab_with(
        t,
        "atftp",
        || PairLab::new().map(Net::from),
        "[tftp]\nmtu = 9000\n",
        &[],
    ) else {
        return;
    };
    let dest = l.out.path.join("big-window");
    run(l
        .lab
        .client
        .command("atftp")
        .args(["--option", "blksize 8192", "--option", "windowsize 8"])
        .args(["-g", "-r", "ipxe.efi", "-l"])
        .arg(&dest)
        .arg("10.77.0.1"))
    .expect("atftp with 8 KiB blocks in windows of 8");
    l.same("ipxe.efi", "big-window");
}

/// Attack: 2000 read requests asking for `timeout=255`, never acknowledged, from one address
/// (four sockets). Unchecked, each holds a transfer port for 6 × 255 s, and a bystander gets
/// no answer at all. Now the attacker gets its per-client share, the timeout it asked for is
/// left out of the OACK, and the bystander's tftp-hpa gets its bootloader at once.
#[test]
fn a_flood_of_unacked_requests_leaves_a_real_client_served() {
    const FLOOD: usize = 2000;
    let t = "a_flood_of_unacked_requests_leaves_a_real_client_served";
    let Some(l) = lab_with(t, "tftp", switched, "", &[]) else {
        return;
    };
    let pid = l.daemon.pid();
    let rss_before = proc_status(pid, "VmRSS:");
    let socks = sockets(&l.lab.client, 4, Duration::from_secs(1));
    let req = rrq(
        "ipxe.efi",
        "octet",
        &[("timeout", "255"), ("blksize", "1468"), ("tsize", "0")],
    );
    let server: SocketAddr = SERVER.parse().expect("addr");
    for i in 0..FLOOD {
        socks[i % socks.len()]
            .send_to(&req, server)
            .expect("send RRQ");
    }
    // The server has taken the flood in once transfers are running for it.
    let busy = wait_for(Duration::from_secs(30), || {
        (l.metric("bootfabric_tftp_transfers_active", &[]) > 0.0).then_some(())
    });
    assert!(busy.is_some(), "the flood started no transfer");

    let other = l.lab.other.as_ref().expect("bystander namespace");
    let dest = l.out.path.join("bystander.efi");
    let started = Instant::now();
    // tftp-hpa gives up by itself after 25 s without an answer.
    let got = run(&mut other.tftp_get("ipxe.efi", &dest, None));
    let took = started.elapsed();
    let active = l.metric("bootfabric_tftp_transfers_active", &[]);
    assert!(
        got.is_ok(),
        "the bystander got no bootloader during the flood ({active} transfers in flight): {got:?}"
    );
    l.same("ipxe.efi", "bystander.efi");
    let refused = |r: &str| l.metric("bootfabric_tftp_refused_total", &[("reason", r)]);
    let hwm = proc_status(pid, "VmHWM:");
    eprintln!(
        "flood of {FLOOD}: bystander served in {took:?}; {active} transfers in flight; refused: {} client_rate, {} client_busy, {} timeout_capped; VmRSS {rss_before} kB before, VmHWM {hwm} kB after",
        refused("client_rate"),
        refused("client_busy"),
        refused("timeout_capped")
    );
    assert!(
        active <= 9.0,
        "{active} transfers in flight: more than the attacker's share"
    );
    // Transfers running (the wait above) do not mean every request of the flood has been
    // read yet: wait for the refusals to add up rather than scrape them once.
    let refusals = || refused("client_rate") + refused("client_busy");
    assert!(
        wait_for(Duration::from_secs(30), || (refusals()
            >= (FLOOD - 8) as f64)
            .then_some(()))
        .is_some(),
        "{} of {FLOOD} requests refused",
        refusals()
    );
    assert!(refused("timeout_capped") >= 1.0);
    assert!(
        hwm.saturating_sub(rss_before) < 64 * 1024,
        "memory grew by {} kB",
        hwm.saturating_sub(rss_before)
    );
}

/// Attack: while a transfer waits for its client's ACK, a stranger (same address, another
/// port) keeps sending to its port. Unchecked, each stranger packet restarts the transfer's
/// timer, so it never times out; and each gets an ERROR back. Now the transfer times out on
/// schedule, the strangers are counted, and only a few of them get an answer.
#[test]
fn a_strangers_packets_do_not_keep_a_transfer_alive() {
    let t = "a_strangers_packets_do_not_keep_a_transfer_alive";
    let Some(l) = lab_with(
        t,
        "ip",
        || PairLab::new().map(Net::from),
        "[tftp]\nmax_retries = 2\n",
        &[],
    ) else {
        return;
    };
    let socks = sockets(&l.lab.client, 2, Duration::from_millis(100));
    let (victim, stranger) = (&socks[0], &socks[1]);
    victim
        .send_to(&rrq("ipxe.efi", "octet", &[]), SERVER)
        .expect("RRQ");
    let mut first = None;
    for _ in 0..100 {
        if let Ok(a) = answer(victim) {
            first = Some(a);
            break;
        }
    }
    let (data, tid) = first.expect("no DATA 1 for the victim");
    assert_eq!(&data[..4], &[0, 3, 0, 1], "DATA 1");
    // Unanswered, the transfer ends after 1 + 2 retries of 1 s; the stranger keeps going for
    // 30 s at most (paced: that is the attack, not a wait).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0u32;
    let mut errors_back = 0u32;
    let timed_out = loop {
        if l.metric("bootfabric_tftp_transfers_total", &[("outcome", "timeout")]) >= 1.0 {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        stranger.send_to(&[0, 4, 0, 1], tid).expect("stranger ACK");
        sent += 1;
        if let Ok((p, _)) = answer(stranger) {
            if p.starts_with(&[0, 5, 0, 5]) {
                errors_back += 1;
            }
        }
    };
    let strangers = l.metric("bootfabric_tftp_refused_total", &[("reason", "stranger")]);
    eprintln!("{sent} stranger packets, {errors_back} ERROR 5 back, {strangers} counted; timed out: {timed_out}");
    assert!(
        timed_out,
        "the transfer was still alive after {sent} stranger packets over 30 s"
    );
    assert!(strangers >= 1.0, "strangers not counted");
    assert!(
        errors_back <= 4,
        "{errors_back} answers to {sent} stranger packets"
    );
}

/// Attack: guessing the next transfer port (to aim blind ACKs at a transfer whose client is
/// spoofed). Unchecked, ports are handed out in order. Now 20 transfers' ports are spread
/// over the range.
#[test]
fn transfer_ports_are_not_sequential() {
    let t = "transfer_ports_are_not_sequential";
    let Some(l) = lab(t, "ip") else { return };
    let sock = &sockets(&l.lab.client, 1, Duration::from_secs(10))[0];
    let mut ports = Vec::new();
    for _ in 0..20 {
        sock.send_to(&rrq("small.bin", "octet", &[]), SERVER)
            .expect("RRQ");
        let (data, tid) = answer(sock).expect("DATA 1");
        assert_eq!(&data[..4], &[0, 3, 0, 1], "DATA 1 from {tid}");
        // The whole file was that block: ACK it so the transfer ends.
        sock.send_to(&[0, 4, 0, 1], tid).expect("ACK");
        ports.push(tid.port());
    }
    let in_order = ports.windows(2).filter(|w| w[1] == w[0] + 1).count();
    eprintln!("transfer ports: {ports:?}");
    assert!(
        ports.iter().all(|p| (50000..=50099).contains(p)),
        "a port outside tftp.transfer_ports: {ports:?}"
    );
    assert!(
        in_order < 5,
        "{in_order} of 19 transfer ports follow the one before: {ports:?}"
    );
}

/// Attack: 40 netascii requests at once for an 8 MiB text file (never acknowledged), from
/// ten addresses (four each, under the per-client cap). Unchecked, each holds its own
/// converted copy of the file. Now all conversions share one budget (the default 64 MiB):
/// requests past it are refused with an ERROR and counted, and memory stays bounded.
#[test]
fn netascii_transfers_share_one_memory_budget() {
    const N: usize = 40;
    const BUDGET_KIB: u64 = 64 * 1024;
    let t = "netascii_transfers_share_one_memory_budget";
    let Some(l) = lab_with(
        t,
        "tftp",
        || PairLab::new().map(Net::from),
        // Unanswered transfers live 31 s: all of them are held at once.
        "[tftp]\nmax_retries = 30\n",
        &[],
    ) else {
        return;
    };
    let addrs: Vec<SocketAddr> = (0..N)
        .map(|i| format!("10.77.0.{}:0", 10 + i % 10).parse().expect("addr"))
        .collect();
    for i in 0..10 {
        l.lab
            .client
            .ip(&[
                "addr",
                "add",
                &format!("10.77.0.{}/24", 10 + i),
                "dev",
                "client0",
            ])
            .expect("address");
    }
    // A real client first: netascii still converts line ends both ways.
    std::fs::write(l.root.join("hello.txt"), "one\ntwo\r\nthree\n").expect("file");
    let dest = l.out.path.join("hello.txt");
    run(l
        .lab
        .client
        .command("tftp")
        .args(["-m", "netascii", "10.77.0.1", "-c", "get", "hello.txt"])
        .arg(&dest))
    .expect("tftp-hpa netascii");
    l.same("hello.txt", "hello.txt");

    let line = b"a line of a text file served as netascii\n";
    let text: Vec<u8> = line.iter().copied().cycle().take(8 << 20).collect();
    std::fs::write(l.root.join("big.txt"), &text).expect("file");
    let pid = l.daemon.pid();
    let rss_before = proc_status(pid, "VmRSS:");
    let socks = sockets_on(&l.lab.client, addrs, Duration::from_secs(120));
    for s in &socks {
        s.send_to(&rrq("big.txt", "netascii", &[]), SERVER)
            .expect("RRQ");
    }
    let (mut served, mut refused) = (0, 0);
    for s in &socks {
        match answer(s) {
            Ok((p, _)) if p.starts_with(&[0, 3]) => served += 1,
            Ok((p, _)) if p.starts_with(&[0, 5]) => refused += 1,
            other => panic!("unexpected answer: {other:?}"),
        }
    }
    let hwm = proc_status(pid, "VmHWM:");
    let counted = l.metric(
        "bootfabric_tftp_refused_total",
        &[("reason", "netascii_budget")],
    );
    let grew = hwm.saturating_sub(rss_before);
    eprintln!("{N} netascii requests of 8 MiB: {served} served, {refused} refused ({counted} counted); VmRSS {rss_before} kB before, VmHWM {hwm} kB after (+{grew} kB)");
    // The budget, and as much again for everything else.
    assert!(
        grew < 2 * BUDGET_KIB,
        "memory grew by {grew} kB for a budget of {BUDGET_KIB} kB"
    );
    assert!(
        refused >= 1 && counted == refused as f64,
        "{refused} refused, {counted} counted"
    );
    assert!(served >= 1, "the budget admits at least one conversion");
}

/// Attack (item 9): requests for a file whose open never returns, as on a hung NFS or FUSE
/// store (here a FIFO with no writer). Unchecked, each hung open takes a runtime thread, and
/// with as many as the machine has cores nothing else is served and /metrics stops. Now file
/// operations run on a bounded blocking pool: another client is served, /metrics answers.
#[test]
fn a_hung_file_open_stalls_only_its_transfer() {
    let t = "a_hung_file_open_stalls_only_its_transfer";
    let Some(mut l) = lab(t, "tftp") else { return };
    run(std::process::Command::new("mkfifo").arg(l.root.join("hung.efi"))).expect("mkfifo");
    let hung = sockets(&l.lab.client, 4, Duration::from_secs(1));
    for s in &hung {
        s.send_to(&rrq("hung.efi", "octet", &[]), SERVER)
            .expect("RRQ");
    }
    let dest = l.out.path.join("meanwhile.bin");
    let got = run(&mut l.lab.client.tftp_get("small.bin", &dest, None));
    assert!(
        got.is_ok(),
        "no file served while opens hang on the store: {got:?}"
    );
    l.same("small.bin", "meanwhile.bin");
    let metrics = http_get(&l.lab.server, l.daemon.admin, "/metrics");
    assert!(
        matches!(metrics, Ok((200, _))),
        "/metrics while opens hang: {metrics:?}"
    );
    // A stop is not held by the opens still stuck (bounded by `stop_with`).
    let stopped = l.daemon.stop_with(nix::sys::signal::Signal::SIGTERM);
    assert!(stopped.is_ok(), "SIGTERM with opens hung: {stopped:?}");
}

/// A slow drip: a client that acknowledges each block just in time keeps its transfer (and
/// its port) forever unless the transfer has a lifetime. With `tftp.max_transfer_s = 3`, the
/// transfer ends after 3 s with an ERROR to the client, counted as `lifetime`.
#[test]
fn a_slow_drip_client_is_cut_at_the_transfer_lifetime() {
    let t = "a_slow_drip_client_is_cut_at_the_transfer_lifetime";
    let Some(l) = lab_with(
        t,
        "ip",
        || PairLab::new().map(Net::from),
        "[tftp]\nmax_transfer_s = 3\n",
        &[],
    ) else {
        return;
    };
    let sock = &sockets(&l.lab.client, 1, Duration::from_secs(10))[0];
    sock.send_to(&rrq("ipxe.efi", "octet", &[]), SERVER)
        .expect("RRQ");
    // 2049 blocks of 512 bytes; acknowledged every 200 ms (paced: that is the attack) the
    // file would take seven minutes. The loop is bounded by the blocks of the file.
    let mut blocks = 0u32;
    let ended = loop {
        let (p, tid) = answer(sock).expect("an answer from the transfer");
        match p.as_slice() {
            [0, 3, hi, lo, ..] => {
                blocks += 1;
                assert!(blocks < 2049, "the whole file went out");
                std::thread::sleep(Duration::from_millis(200));
                sock.send_to(&[0, 4, *hi, *lo], tid).expect("ACK");
            }
            [0, 5, ..] => break String::from_utf8_lossy(&p[4..]).into_owned(),
            other => panic!("unexpected packet {other:?}"),
        }
    };
    let counted = l.metric("bootfabric_tftp_refused_total", &[("reason", "lifetime")]);
    eprintln!("cut after {blocks} blocks: {ended:?}");
    assert_eq!(counted, 1.0, "lifetime refusals");
    // The transfer's outcome is counted as it ends, after the ERROR went out: wait for it,
    // then check there is exactly one.
    let ended_for_lifetime = || {
        l.metric(
            "bootfabric_tftp_transfers_total",
            &[("outcome", "lifetime")],
        )
    };
    assert!(
        wait_for(Duration::from_secs(30), || (ended_for_lifetime() >= 1.0)
            .then_some(()))
        .is_some(),
        "the transfer's end was never counted"
    );
    assert_eq!(ended_for_lifetime(), 1.0);
}

/// TFTP in the kernel (issue 18): lock-step transfers of a `tftp.kernel_files` file (here the
/// default, the `[boot]` bootloaders, of which the lab has `ipxe.efi`) are carried by the TC
/// program after their first block (windowed ones after their first window); real clients
/// get identical bytes, userspace sends the first and the last block (window), and a window
/// over the kernel's largest stays in userspace, counted as such.
#[test]
fn lock_step_transfers_of_bootloaders_are_answered_in_the_kernel() {
    const T: &str = "lock_step_transfers_of_bootloaders_are_answered_in_the_kernel";
    let Some(l) = lab(T, "tftp") else {
        return;
    };
    if !require(
        have_program("curl"),
        T,
        "curl is not installed (cargo xtask setup)",
    ) || !require(
        have_program("atftp"),
        T,
        "atftp is not installed (cargo xtask setup)",
    ) {
        return;
    }
    let size = std::fs::metadata(l.root.join("ipxe.efi"))
        .expect("size")
        .len();
    let blocks = |blksize: u64| size / blksize + 1;
    // tftp-hpa: RFC 1350, 512-byte blocks, no options.
    let dest = l.out.path.join("hpa");
    run(&mut l.lab.client.tftp_get("ipxe.efi", &dest, None)).expect("tftp get");
    l.same("ipxe.efi", "hpa");
    let kernel_blocks = l.metric("bootfabric_tftp_kernel_blocks_total", &[]);
    // Userspace sends block 1 and the last; the kernel every block between.
    // The kernel sends the blocks between the first and the last. Where a kernel answer
    // fails (counted as `failed`, e.g. a buffer that cannot grow on a loaded machine)
    // userspace sends that block itself: the split may shift, the totals may not.
    let middle = (blocks(512) - 2) as f64;
    assert!(
        kernel_blocks <= middle && kernel_blocks >= 0.9 * middle,
        "{kernel_blocks} of {middle}\n{}",
        l.daemon.log()
    );
    assert_eq!(
        l.metric(
            "bootfabric_tftp_kernel_transfers_total",
            &[("file", "ipxe.efi"), ("result", "handed")]
        ),
        1.0
    );
    assert_eq!(
        l.metric("bootfabric_tftp_kernel_bytes_total", &[]),
        kernel_blocks * 512.0
    );
    // The bytes counter counts the kernel's blocks too: the whole file, once.
    assert_eq!(l.metric("bootfabric_tftp_bytes_total", &[]), size as f64);
    // Per file and path: the kernel the middle, userspace block 1 and the last.
    let hot = |metric: &str, path: &str| l.metric(metric, &[("file", "ipxe.efi"), ("path", path)]);
    assert_eq!(
        hot("bootfabric_tftp_hot_file_blocks_total", "kernel"),
        kernel_blocks
    );
    assert_eq!(
        hot("bootfabric_tftp_hot_file_blocks_total", "kernel")
            + hot("bootfabric_tftp_hot_file_blocks_total", "userspace"),
        blocks(512) as f64
    );
    let userspace_before = hot("bootfabric_tftp_hot_file_blocks_total", "userspace");
    assert_eq!(
        hot("bootfabric_tftp_hot_file_bytes_total", "kernel")
            + hot("bootfabric_tftp_hot_file_bytes_total", "userspace"),
        size as f64
    );

    // curl: blksize 1468 (the largest a 1500-byte link carries), lock-step.
    let dest = l.out.path.join("curl");
    run(l
        .lab
        .client
        .command("curl")
        .args(["-sS", "--fail", "--tftp-blksize", "1468", "-o"])
        .arg(&dest)
        .arg("tftp://10.77.0.1/ipxe.efi"))
    .expect("curl");
    l.same("ipxe.efi", "curl");
    let by_kernel = l.metric("bootfabric_tftp_kernel_blocks_total", &[]) - kernel_blocks;
    let middle = (blocks(1468) - 2) as f64;
    assert!(
        by_kernel <= middle && by_kernel >= 0.9 * middle,
        "{by_kernel} of {middle}"
    );
    let userspace_before = userspace_before + blocks(1468) as f64 - by_kernel;

    // atftp, lock-step with 1,468-byte blocks, then with windowsize 4 (OVMF's window): the
    // kernel sends every block (window) between the first and the one with the last block.
    let atftp = |dest: &str, options: &[&str]| {
        let dest = l.out.path.join(dest);
        let mut cmd = l.lab.client.command("atftp");
        cmd.args(["--option", "blksize 1468"]);
        for o in options {
            cmd.args(["--option", o]);
        }
        run(cmd
            .args(["-g", "-r", "ipxe.efi", "-l"])
            .arg(&dest)
            .arg("10.77.0.1"))
        .expect("atftp");
    };
    let kernel_before = l.metric("bootfabric_tftp_kernel_blocks_total", &[]);
    atftp("atftp1", &[]);
    l.same("ipxe.efi", "atftp1");
    let by_kernel = l.metric("bootfabric_tftp_kernel_blocks_total", &[]) - kernel_before;
    let middle = (blocks(1468) - 2) as f64;
    assert!(
        by_kernel <= middle && by_kernel >= 0.9 * middle,
        "atftp lock-step: {by_kernel} of {middle}"
    );
    let userspace_before = userspace_before + blocks(1468) as f64 - by_kernel;
    let kernel_before = l.metric("bootfabric_tftp_kernel_blocks_total", &[]);
    atftp("atftp", &["windowsize 4"]);
    l.same("ipxe.efi", "atftp");
    let by_kernel = l.metric("bootfabric_tftp_kernel_blocks_total", &[]) - kernel_before;
    // The first window is userspace's, and the one that reaches the file's last block: the
    // kernel answers the ACKs of blocks 4, 8, … while 4 more blocks end before the last.
    let final_sent = ((blocks(1468) - 4).div_ceil(4) * 4).max(4);
    let middle = (final_sent - 4) as f64;
    assert!(
        by_kernel <= middle && by_kernel >= 0.9 * middle,
        "atftp windowsize 4: {by_kernel} of {middle}\n{}",
        l.daemon.log()
    );
    assert_eq!(
        l.metric(
            "bootfabric_tftp_kernel_transfers_total",
            &[("file", "ipxe.efi"), ("result", "handed")]
        ),
        4.0
    );
    let userspace_before = userspace_before + blocks(1468) as f64 - by_kernel;
    // A window over the kernel's largest stays in userspace, and says why.
    atftp("atftp16", &["windowsize 16"]);
    l.same("ipxe.efi", "atftp16");
    assert_eq!(
        l.metric(
            "bootfabric_tftp_hot_file_blocks_total",
            &[("file", "ipxe.efi"), ("path", "userspace")]
        ) - userspace_before,
        blocks(1468) as f64
    );
    assert_eq!(
        l.metric(
            "bootfabric_tftp_kernel_transfers_total",
            &[("file", "ipxe.efi"), ("result", "options")]
        ),
        1.0
    );
    // A file not listed never reaches the kernel.
    let dest = l.out.path.join("exact");
    run(&mut l.lab.client.tftp_get("exact.bin", &dest, None)).expect("tftp get");
    l.same("exact.bin", "exact");
    assert_eq!(
        l.metric(
            "bootfabric_tftp_kernel_transfers_total",
            &[("file", "exact.bin"), ("result", "handed")]
        ),
        0.0
    );
    assert_eq!(
        l.metric(
            "bootfabric_tftp_transfers_total",
            &[("outcome", "completed")]
        ),
        6.0
    );
}

/// The DATA frames of `capture` (UDP from the server to the client, opcode 3), in order,
/// each repeat of the block just before dropped (a retransmission).
fn data_frames(capture: Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = Vec::new();
    for f in capture {
        let is_data = f.len() >= 46
            && f[12..14] == [0x08, 0x00]
            && f[23] == 17
            && f[26..30] == [10, 77, 0, 1]
            && f[42..44] == [0, 3];
        if !is_data {
            continue;
        }
        if out.last().is_some_and(|l| l[44..46] == f[44..46]) {
            continue;
        }
        out.push(f);
    }
    out
}

/// A frame with what differs between two labs and two transfers blanked: the MACs (each lab's
/// veth pair has its own), the ports (each transfer's TID) and the UDP checksum (over them),
/// and the IPv4 identification with the header checksum over it: the stack draws the ID of
/// a don't-fragment datagram from a keyed hash the kernel keeps secret, the TC program sends
/// 0, and RFC 6864 gives the field no meaning in an atomic datagram.
fn normalised(f: &[u8]) -> Vec<u8> {
    let mut f = f.to_vec();
    f[..12].fill(0);
    f[18..20].fill(0);
    f[24..26].fill(0);
    f[34..38].fill(0);
    f[40..42].fill(0);
    f
}

/// Whether the UDP checksum field of DATA frame `f` is one a receiver takes: the full
/// checksum, or, for a datagram whose sum the sending stack left to offload (a local socket
/// over veth, CHECKSUM_PARTIAL), the pseudo-header sum. Which one a frame carries follows the
/// ACK it answers, as it would for the stack's own frames on that link.
fn udp_checksum_ok_or_partial(f: &[u8]) -> bool {
    let word = |a: u8, b: u8| u32::from(u16::from_be_bytes([a, b]));
    let fold = |mut s: u32| {
        while s >> 16 != 0 {
            s = (s & 0xffff) + (s >> 16);
        }
        s
    };
    let udp_len = word(f[38], f[39]);
    let pseudo = word(f[26], f[27])
        + word(f[28], f[29])
        + word(f[30], f[31])
        + word(f[32], f[33])
        + 17
        + udp_len;
    let field = word(f[40], f[41]);
    let mut all = pseudo;
    let udp = &f[34..34 + udp_len as usize];
    for w in udp.chunks(2) {
        all += word(w[0], *w.get(1).unwrap_or(&0));
    }
    fold(all) == 0xffff || field == fold(pseudo)
}

/// Whether the IPv4 header checksum of frame `f` verifies.
fn ip_checksum_ok(f: &[u8]) -> bool {
    let sum: u32 = f[14..34]
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    let folded = (sum & 0xffff) + (sum >> 16);
    (folded & 0xffff) + (folded >> 16) == 0xffff
}

/// One truth (issue 18): the frames the kernel sends are the frames the userspace path sends.
/// The same lock-step transfer (curl, blksize 8, so that block numbers roll over past
/// 65535; atftp 0.8 mishandles the rollover against any server) is captured on the client's link from a daemon without the kernel path and from one
/// with it: the DATA frames are the same, byte for byte but for the MACs, ports and UDP
/// checksum. Within the kernel run, every frame the kernel built has the headers the
/// kernel's stack gave block 1 (same MACs, IPv4 header, ports, checksum convention).
#[test]
fn kernel_frames_are_the_userspace_paths_frames_across_a_rollover() {
    const T: &str = "kernel_frames_are_the_userspace_paths_frames_across_a_rollover";
    // 65,540 blocks of 8 bytes, the last one 3 bytes: past the 16-bit block number.
    let size = 65_539 * 8 + 3;
    let fetch = |kernel: bool| -> Option<(Vec<Vec<u8>>, Lab)> {
        let extra = if kernel {
            "[tftp]\nkernel_files = [\"rollover.bin\"]\n"
        } else {
            "[tftp]\nkernel_files = []\n"
        };
        let l = lab_with(T, "curl", || PairLab::new().map(Net::from), extra, &[])?;
        std::fs::write(l.root.join("rollover.bin"), content(size, 9)).expect("file");
        if kernel {
            // The file appeared after start: the next refresh (5 s) loads it.
            wait_for(Duration::from_secs(30), || {
                (l.daemon.log().contains("file=rollover.bin")).then_some(())
            })
            .expect("rollover.bin loaded into the kernel");
        }
        let capture =
            bootfabric_lab::capture::Capture::start(&l.lab.client, "client0").expect("capture");
        let dest = l.out.path.join("rollover");
        run(l
            .lab
            .client
            .command("curl")
            .args(["-sS", "--fail", "--tftp-blksize", "8", "-o"])
            .arg(&dest)
            .arg("tftp://10.77.0.1/rollover.bin"))
        .expect("curl");
        let raw = capture.finish();
        let frames = data_frames(raw);
        l.same("rollover.bin", "rollover");
        Some((frames, l))
    };
    let Some((user, _a)) = fetch(false) else {
        return;
    };
    let Some((kern, b)) = fetch(true) else {
        return;
    };
    let blocks = size / 8 + 1;
    assert_eq!(
        user.len(),
        blocks,
        "userspace path: one DATA frame per block"
    );
    assert_eq!(kern.len(), blocks, "kernel path: one DATA frame per block");
    let kernel_blocks = b.metric("bootfabric_tftp_kernel_blocks_total", &[]);
    assert_eq!(kernel_blocks, (blocks - 2) as f64, "{}", b.daemon.log());
    for (i, (u, k)) in user.iter().zip(&kern).enumerate() {
        assert_eq!(
            normalised(u),
            normalised(k),
            "block {} (index {i}) differs between the paths",
            i + 1
        );
    }
    // Block 1 is the stack's; every full block after it the kernel's but the last. Within
    // one transfer the MACs, ports and checksum convention are the same too.
    let first = &kern[0];
    let headers = |f: &[u8]| {
        let mut h = f[..44].to_vec();
        h[18..20].fill(0);
        h[24..26].fill(0);
        h[40..42].fill(0);
        h
    };
    for (i, k) in kern.iter().enumerate().take(blocks - 1).skip(1) {
        assert_eq!(
            headers(k),
            headers(first),
            "block {}: the kernel's headers differ from the stack's: {:02x?} / {:02x?}",
            i + 1,
            &k[..46],
            &first[..46]
        );
        assert!(ip_checksum_ok(k), "block {}: bad IPv4 checksum", i + 1);
        assert!(
            udp_checksum_ok_or_partial(k),
            "block {}: bad UDP checksum: {:02x?}",
            i + 1,
            &k[..46]
        );
    }
    // The wire block numbers roll over: 65535, then 0.
    assert_eq!(kern[65_534][44..46], [0xff, 0xff]);
    assert_eq!(kern[65_535][44..46], [0, 0]);
}
