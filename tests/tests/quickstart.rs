//! The README's quick start for a real rack, followed step by step as a new operator would:
//! its ```sh blocks run line by line and its ```toml blocks are written where their first
//! line says, in order, in a lab that stands in for the fabric server and the rack.
//!
//! What the lab changes, and why:
//! - The fabric server is a network namespace with a veth `fabric0`; the machine `node01` is
//!   another namespace with node01's MAC behind it. Commands about the network (`ip`,
//!   `curl`, `bootfabric`) run in the server's namespace.
//! - Files the quick start puts under `/etc/bootfabric`, `/srv/bootfabric` and
//!   `/var/lib/bootfabric` go under a scratch root instead (the same paths below it), in the
//!   commands and in the TOML: a test never installs onto the machine that runs it.
//! - `cargo xtask package` is the package recipe that task runs (`bootfabric_lab::deb`) on
//!   the binary under test; `apt install ./…deb` unpacks the package into the scratch root
//!   (`dpkg-deb -x`): its maintainer scripts (the system user, systemd) are the deploy
//!   tests' business. Other `apt install` lines run as written (the packages are ones
//!   `cargo xtask setup` installs).
//! - systemd cannot run here: `systemctl enable` checks the unit is installable, and
//!   `systemctl restart` starts the unit's `ExecStart` as written in the package's unit file.
//! - Powering node01 on is its firmware's part, played by real clients we did not write:
//!   udhcpc for DHCP, tftp-hpa for the bootloader, curl for the iPXE script, the kernel and
//!   the initrd. Then the quick start's last commands (`explain`, `history`) must show it.
//!
//! A line the lab does not know how to follow fails the test: a changed quick start changes
//! this test with it.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use bootfabric_lab::{
    bootfabric_bin, require_programs, require_root, run, wait_for, Netns, TempDir,
};

const NODE01_MAC: &str = "52:54:00:00:20:01";
/// Prefixes of the paths the quick start writes, moved under the scratch root.
const MOVED: [&str; 3] = ["/etc/bootfabric", "/srv/bootfabric", "/var/lib/bootfabric"];

/// A fenced block of the quick start.
#[derive(Debug)]
enum Block {
    Sh(Vec<String>),
    Toml { path: String, text: String },
}

fn readme() -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../README.md");
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The quick start's ```sh and ```toml blocks, in order; sh lines joined where they end in
/// `\`, comments and blank lines left out.
fn blocks(readme: &str) -> Vec<Block> {
    let start = readme
        .find("<!-- quickstart:begin -->")
        .expect("README has <!-- quickstart:begin -->");
    let end = readme
        .find("<!-- quickstart:end -->")
        .expect("README has <!-- quickstart:end -->");
    let mut out = Vec::new();
    let mut lines = readme[start..end].lines();
    while let Some(line) = lines.next() {
        let kind = match line.trim() {
            "```sh" => "sh",
            "```toml" => "toml",
            _ => continue,
        };
        let body: Vec<&str> = lines.by_ref().take_while(|l| l.trim() != "```").collect();
        if kind == "toml" {
            let path = body
                .first()
                .and_then(|l| l.strip_prefix("# "))
                .expect("a TOML block starts with `# /path/of/the/file`")
                .trim()
                .to_owned();
            out.push(Block::Toml {
                path,
                text: body.join("\n") + "\n",
            });
        } else {
            let mut cmds = Vec::new();
            let mut pending = String::new();
            for l in body {
                let l = l.trim();
                if let Some(head) = l.strip_suffix('\\') {
                    pending.push_str(head);
                    pending.push(' ');
                    continue;
                }
                pending.push_str(l);
                let cmd = std::mem::take(&mut pending);
                let cmd = cmd.split(" #").next().unwrap_or("").trim().to_owned();
                if !cmd.is_empty() && !cmd.starts_with('#') {
                    cmds.push(cmd);
                }
            }
            out.push(Block::Sh(cmds));
        }
    }
    out
}

/// The lab: the scratch root, the server and node01's namespaces, the daemon once started.
struct Lab {
    root: TempDir,
    server: Netns,
    node01: Netns,
    deb: Option<PathBuf>,
    daemon: Option<Child>,
    log: PathBuf,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
    }
}

impl Lab {
    /// `text` with the quick start's own paths moved under the scratch root.
    fn moved(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for p in MOVED {
            out = out.replace(p, &format!("{}{p}", self.root.path.display()));
        }
        out
    }

    fn bin(&self) -> PathBuf {
        self.root.path.join("usr/bin/bootfabric")
    }

    /// Follows one line of the quick start.
    fn follow(&mut self, cmd: &str) {
        let words: Vec<&str> = cmd.split_whitespace().collect();
        match words.as_slice() {
            ["cargo", "xtask", "package"] => {
                let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
                let out = self.root.path.join("target-debian");
                self.deb = Some(
                    bootfabric_lab::deb::build(&repo, &bootfabric_bin(), &out)
                        .expect("cargo xtask package's recipe"),
                );
            }
            ["apt", "install", "-y", deb] if deb.ends_with(".deb") => {
                let deb = self.deb.as_ref().expect("the package was built first");
                run(Command::new("dpkg-deb")
                    .arg("-x")
                    .arg(deb)
                    .arg(&self.root.path))
                .expect("the package unpacks");
            }
            ["apt", "install", "-y", ..] => {
                run(Command::new("apt-get")
                    .args(&words[1..])
                    .env("DEBIAN_FRONTEND", "noninteractive"))
                .unwrap_or_else(|e| panic!("{cmd}: {e}"));
            }
            ["systemctl", "enable", "bootfabric"] => {
                let unit = self.unit();
                assert!(
                    unit.contains("WantedBy=multi-user.target"),
                    "the unit cannot be enabled:\n{unit}"
                );
            }
            ["systemctl", "restart", "bootfabric"] => self.start_unit(),
            ["bootfabric", args @ ..] => {
                let out = self
                    .server
                    .command(self.bin())
                    .args(args.iter().map(|a| self.moved(a)))
                    .output()
                    .expect("bootfabric");
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                assert!(
                    out.status.success(),
                    "{cmd}: {}\n{text}\n{}\ndaemon log:\n{}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr),
                    self.daemon_log()
                );
                self.judge(args, &text);
            }
            ["curl", ..] | ["ip", ..] => {
                let moved = self.moved(cmd);
                run(self.server.command("sh").args(["-ec", &moved]))
                    .unwrap_or_else(|e| panic!("{cmd}: {e}\n{}", self.daemon_log()));
            }
            ["mkdir", ..] | ["cp", ..] => {
                let moved = self.moved(cmd);
                run(Command::new("sh").args(["-ec", &moved]))
                    .unwrap_or_else(|e| panic!("{cmd}: {e}"));
            }
            _ => panic!("the quick start has a step the lab does not know how to follow: {cmd}"),
        }
    }

    /// What the outputs of the quick start's last commands must show once node01 booted.
    fn judge(&self, args: &[&str], out: &str) {
        match args.first() {
            Some(&"explain") => assert!(
                out.contains("10.20.0.11") && out.contains("ipxe.efi"),
                "explain gives node01 its reservation and the UEFI loader:\n{out}"
            ),
            Some(&"history") => {
                let row = out
                    .lines()
                    .find(|l| l.contains("node01"))
                    .unwrap_or_else(|| panic!("history shows node01's boot:\n{out}"));
                // Every phase of the boot, in the order the machine reached them (the
                // kernel's DHCP answers are in the timeline before the TFTP transfer).
                let at: Vec<Option<usize>> = ["dhcp ", "loader ", "script ", "kernel "]
                    .iter()
                    .map(|p| row.find(p))
                    .collect();
                assert!(
                    at.iter().all(Option::is_some) && at.windows(2).all(|w| w[0] < w[1]),
                    "dhcp, loader, script, kernel in order:\n{out}"
                );
            }
            _ => {}
        }
    }

    fn unit(&self) -> String {
        let p = self.root.path.join("lib/systemd/system/bootfabric.service");
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// `systemctl restart bootfabric`: the unit's ExecStart, in the server's namespace.
    fn start_unit(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            let _ = d.kill();
            let _ = d.wait();
        }
        let unit = self.unit();
        let exec = unit
            .lines()
            .find_map(|l| l.strip_prefix("ExecStart="))
            .expect("the unit has an ExecStart");
        let mut words = exec.split_whitespace().map(|w| self.moved(w));
        let program = words.next().expect("ExecStart names a program");
        assert_eq!(program, "/usr/bin/bootfabric", "{exec}");
        let log = std::fs::File::create(&self.log).expect("log");
        let child = self
            .server
            .command(self.bin())
            .args(words)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start the unit's ExecStart");
        self.daemon = Some(child);
        wait_for(Duration::from_secs(60), || {
            self.daemon_log().contains("bootfabric ready").then_some(())
        })
        .unwrap_or_else(|| panic!("the daemon did not get ready:\n{}", self.daemon_log()));
    }

    fn daemon_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// node01 powers on: its firmware's DHCP, TFTP and HTTP, by clients we did not write.
    fn power_on_node01(&self) {
        let script = self.root.path.join("udhcpc.sh");
        std::fs::write(
            &script,
            "#!/bin/sh\ncase \"$1\" in bound|renew) ip addr replace \"$ip/24\" dev \"$interface\";; esac\n",
        )
        .expect("script");
        run(Command::new("chmod").arg("755").arg(&script)).expect("chmod");
        run(self
            .node01
            .command("udhcpc")
            .args(["-f", "-q", "-n", "-t", "5", "-T", "2", "-i", "nic0", "-s"])
            .arg(&script))
        .expect("udhcpc: node01 gets an address");
        let addr = run(self
            .node01
            .command("ip")
            .args(["-4", "addr", "show", "nic0"]))
        .expect("ip addr");
        assert!(
            addr.contains("10.20.0.11/24"),
            "node01's reservation:\n{addr}"
        );
        // The BIOS's PXE ROM fetches the bootloader over TFTP.
        let got = self.root.path.join("undionly.kpxe");
        run(self
            .node01
            .command("tftp")
            .args(["10.20.0.1", "-m", "binary", "-c", "get", "undionly.kpxe"])
            .arg(&got))
        .expect("tftp undionly.kpxe");
        assert_eq!(
            std::fs::read(&got).expect("fetched"),
            std::fs::read("/usr/lib/ipxe/undionly.kpxe").expect("ipxe's"),
            "the bootloader byte for byte"
        );
        // iPXE then fetches its script, and the script the kernel and initrd.
        let script = run(self
            .node01
            .command("curl")
            .args(["-sSf", "http://10.20.0.1/boot.ipxe"]))
        .expect("the iPXE script");
        for file in ["debian/linux", "debian/initrd.gz"] {
            assert!(script.contains(file), "{file} in the script:\n{script}");
            let size = run(self.node01.command("curl").args([
                "-sSf",
                "-o",
                "/dev/null",
                "-w",
                "%{size_download}",
                &format!("http://10.20.0.1/{file}"),
            ]))
            .unwrap_or_else(|e| panic!("{file}: {e}"));
            let want = std::fs::metadata(self.root.path.join("srv/bootfabric/http").join(file))
                .expect("the file")
                .len();
            assert_eq!(size.trim(), want.to_string(), "{file}");
        }
    }
}

#[test]
fn the_readme_quick_start_boots_node01_followed_step_by_step() {
    let t = "the_readme_quick_start_boots_node01_followed_step_by_step";
    if !require_root(t) || !require_programs(t, &["dpkg-deb", "udhcpc", "tftp", "curl", "apt-get"])
    {
        return;
    }
    let steps = blocks(&readme());
    assert!(steps.len() >= 5, "the quick start's blocks: {steps:?}");
    let root = TempDir::new().expect("root");
    let server = Netns::new("fabric").expect("server");
    let node01 = Netns::new("node01").expect("node01");
    bootfabric_lab::veth(&server, "fabric0", "", &node01, "nic0", "").expect("link");
    node01
        .ip(&["link", "set", "nic0", "address", NODE01_MAC])
        .expect("node01's MAC");
    let log = root.path.join("daemon.log");
    let mut lab = Lab {
        root,
        server,
        node01,
        deb: None,
        daemon: None,
        log,
    };
    // The last sh block is what the operator runs once the machine is powered on.
    let last_sh = steps
        .iter()
        .rposition(|b| matches!(b, Block::Sh(_)))
        .expect("sh blocks");
    for (i, step) in steps.iter().enumerate() {
        if i == last_sh {
            lab.power_on_node01();
        }
        match step {
            Block::Sh(cmds) => {
                for cmd in cmds {
                    lab.follow(cmd);
                }
            }
            Block::Toml { path, text } => {
                let p = PathBuf::from(lab.moved(path));
                std::fs::create_dir_all(p.parent().expect("a folder")).expect("folder");
                std::fs::write(&p, lab.moved(text)).expect("write the file");
            }
        }
    }
    assert!(lab.daemon.is_some(), "the quick start starts the daemon");
}

#[test]
fn the_quick_start_blocks_are_found() {
    let steps = blocks(&readme());
    let tomls: Vec<&str> = steps
        .iter()
        .filter_map(|b| match b {
            Block::Toml { path, .. } => Some(path.as_str()),
            Block::Sh(_) => None,
        })
        .collect();
    assert_eq!(
        tomls,
        [
            "/etc/bootfabric/bootfabric.toml",
            "/etc/bootfabric/hosts.toml"
        ]
    );
    let first = match &steps[0] {
        Block::Sh(c) => c.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(first[0], "cargo xtask package");
}
