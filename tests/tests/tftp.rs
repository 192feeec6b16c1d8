//! The TFTP server against real clients in a namespace lab: tftp-hpa's `tftp`, `atftp` (with
//! blksize and windowsize) and `curl` (with --tftp-blksize) fetch byte-identical files;
//! names that leave the root are refused with an access violation.

use bootfabric_lab::{have_program, require, require_root, run, Daemon, PairLab, TempDir};

fn config(root: &std::path::Path) -> String {
    format!(
        "[daemon]\nstate_dir = \"state\"\n[fabric]\ninterfaces = [\"fabric0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[tftp]\nroot = \"{}\"\ntransfer_ports = \"50000-50099\"\n",
        root.display()
    )
}

/// A deterministic pseudo-random file of `len` bytes.
fn content(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed;
    (0..len)
        .map(|_| {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            (x >> 16) as u8
        })
        .collect()
}

struct Lab {
    lab: PairLab,
    _daemon: Daemon,
    root: std::path::PathBuf,
    _base: TempDir,
    out: TempDir,
}

fn lab(t: &str, program: &str) -> Option<Lab> {
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
    let lab = PairLab::new().expect("lab");
    let daemon = Daemon::start(&lab.server, &config(&root), &[]).expect("daemon");
    Some(Lab {
        lab,
        _daemon: daemon,
        root,
        _base: base,
        out: TempDir::new().expect("out"),
    })
}

impl Lab {
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
        run(l
            .lab
            .client
            .command("tftp")
            .args(["-m", "binary", "10.77.0.1", "-c", "get", f])
            .arg(&dest))
        .expect("tftp get");
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
            .command("tftp")
            .args(["-m", "binary", "10.77.0.1", "-c", "get", name])
            .arg(&dest)
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
    run(l
        .lab
        .client
        .command("tftp")
        .args(["-m", "binary", "10.77.0.1", "-c", "get", "lossy.bin"])
        .arg(&dest))
    .expect("tftp-hpa under loss");
    l.same("lossy.bin", "lossy-hpa");
}
