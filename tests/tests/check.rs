//! `bootfabric check` in a namespace lab: a healthy setup passes, then one thing at a time is
//! broken (interface down, address gone, port taken, file missing, checksum wrong, BMC
//! password wrong, another DHCP server on the segment, interface missing, the admin API's
//! control reachable from the DHCP subnet without a token) and exactly that
//! item fails, with its fix, and the exit status says so.

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use bootfabric_lab::{
    bootfabric_bin, content, require_programs, require_root, run,
    sushy::{FakeSystem, Sushy},
    wait_for, Bridge, KillOnDrop, Netns, TempDir,
};
use sha2::{Digest as _, Sha256};

const USER: &str = "admin";
const PASSWORD: &str = "s3cret-bmc";

struct Lab {
    srv: Netns,
    bridge: Bridge,
    dir: TempDir,
    _sushy: Sushy,
}

impl Lab {
    fn config(&self, iface: &str) -> PathBuf {
        self.config_with(iface, "10.77.0.0/24", "auto", "state")
    }

    /// A config on `iface` serving `cidr`, with `xdp.mode = xdp` and the journal in `state`.
    fn config_with(&self, iface: &str, cidr: &str, xdp: &str, state: &str) -> PathBuf {
        let d = &self.dir.path;
        let path = d.join(format!("bootfabric-{iface}-{xdp}-{state}.toml"));
        std::fs::write(
            &path,
            format!(
                r#"
[daemon]
state_dir = "{state}"
inventory = "hosts.toml"
[fabric]
interfaces = ["{iface}"]
[admin]
listen = "127.0.0.1:9370"
[xdp]
mode = "{xdp}"
[tftp]
root = "{tftp}"
[http]
root = "{images}"
[dhcp]
[[dhcp.subnets]]
cidr = "{cidr}"
interface = "{iface}"
"#,
                tftp = d.join("tftp").display(),
                images = d.join("images").display(),
            ),
        )
        .expect("config");
        path
    }

    /// Runs the checklist in the server namespace: (exit code, output).
    fn check(&self, config: &Path, extra: &[&str]) -> (i32, String) {
        let out = self
            .srv
            .command(bootfabric_bin())
            .args(["check", "--dhcp-wait-s", "2", "--config"])
            .arg(config)
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .expect("bootfabric check");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code().unwrap_or(-1), text)
    }
}

/// Unmounts its folder when dropped (also when the test fails).
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn fails(out: &str) -> Vec<&str> {
    out.lines().filter(|l| l.starts_with("FAIL")).collect()
}

/// Asserts the run failed on exactly one item, which starts with `line` and whose fix
/// contains `fix`.
fn assert_one_failure(what: &str, (code, out): (i32, String), line: &str, fix: &str) {
    eprintln!("--- {what}:\n{out}");
    assert_eq!(code, 1, "{what}: exit status\n{out}");
    let f = fails(&out);
    assert_eq!(f.len(), 1, "{what}: one failure expected\n{out}");
    assert!(f[0].starts_with(line), "{what}: {:?}\n{out}", f[0]);
    let next = out
        .lines()
        .skip_while(|l| !l.starts_with("FAIL"))
        .nth(1)
        .unwrap_or("");
    assert!(
        next.trim_start().starts_with("fix:") && next.contains(fix),
        "{what}: fix {next:?}\n{out}"
    );
}

fn lab(t: &str) -> Option<Lab> {
    if !require_root(t) || !require_programs(t, &["sushy-emulator", "dnsmasq"]) {
        return None;
    }
    let dir = TempDir::new().expect("dir");
    let d = &dir.path;
    for sub in ["tftp", "images/linux"] {
        std::fs::create_dir_all(d.join(sub)).expect("dir");
    }
    for f in ["undionly.kpxe", "ipxe.efi"] {
        std::fs::write(d.join("tftp").join(f), content(4096, 3)).expect("loader");
    }
    let kernel = content(300_000, 1);
    std::fs::write(d.join("images/linux/vmlinuz"), &kernel).expect("kernel");
    std::fs::write(d.join("images/linux/initrd.img"), content(100_000, 2)).expect("initrd");
    std::fs::write(d.join("bmc.pass"), format!("{PASSWORD}\n")).expect("password");

    let srv = Netns::new("srv").expect("netns");
    srv.ip(&["link", "set", "lo", "up"]).expect("lo");
    let mut bridge = Bridge::new().expect("bridge");
    bridge.plug(&srv, "fabric0", "10.77.0.1/24").expect("plug");
    let port = 20000 + ((std::process::id() + 11) % 20000) as u16;
    let sushy = Sushy::start(
        &srv,
        d,
        port,
        &[FakeSystem {
            name: "node01",
            uuid: "11111111-0000-0000-0000-0000000000c1",
            power: "On",
            mac: "52:54:00:b0:0f:01",
        }],
        (USER, PASSWORD),
        None,
    );
    let digest: String = Sha256::digest(&kernel)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(
        d.join("hosts.toml"),
        format!(
            r#"
[profiles.linux]
kernel = "linux/vmlinuz"
initrd = ["linux/initrd.img"]
sha256 = {{ "linux/vmlinuz" = "{digest}" }}

[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.11"
profile = "linux"
bmc = {{ url = "{}", username = "{USER}", password_file = "bmc.pass", allow_plaintext = true, timeout_s = 3 }}
"#,
            sushy.url
        ),
    )
    .expect("inventory");
    Some(Lab {
        srv,
        bridge,
        dir,
        _sushy: sushy,
    })
}

#[test]
fn check_passes_a_healthy_setup_and_names_each_broken_thing() {
    let Some(mut lab) = lab("check_passes_a_healthy_setup_and_names_each_broken_thing") else {
        return;
    };
    let cfg = lab.config("fabric0");
    let d = lab.dir.path.clone();

    let (code, out) = lab.check(&cfg, &[]);
    assert_eq!(code, 0, "{out}");
    for item in [
        "PASS  config",
        "PASS  interface fabric0: up, 10.77.0.1",
        "PASS  admin control: admin.listen 127.0.0.1:9370 is loopback only; control needs a loopback peer",
        "PASS  port 67/udp",
        "PASS  port 69/udp",
        "PASS  port 80/tcp",
        "PASS  profile linux file linux/vmlinuz: 300000 bytes",
        "SHA-256 matches",
        "PASS  profile linux file linux/initrd.img",
        "PASS  bootloader undionly.kpxe",
        "PASS  bootloader ipxe.efi",
        "WARN  HTTP-boot program ipxe.efi: not found under http.root",
        "PASS  disk state",
        "PASS  bmc http://127.0.0.1:",
        "PASS  dhcp servers on fabric0: no other DHCP server answered",
    ] {
        assert!(out.contains(item), "missing {item:?}\n{out}");
    }
    // XDP attaches when the binary carries its eBPF object (always, under `cargo xtask test`).
    assert!(
        out.contains("PASS  xdp on fabric0: attaches in")
            || (!bootfabric_lab::lab_required() && out.contains("has no eBPF object")),
        "{out}"
    );

    // The interface down.
    lab.srv
        .ip(&["link", "set", "fabric0", "down"])
        .expect("down");
    assert_one_failure(
        "interface down",
        lab.check(&cfg, &[]),
        "FAIL  interface fabric0: is down",
        "ip link set fabric0 up",
    );
    lab.srv.ip(&["link", "set", "fabric0", "up"]).expect("up");

    // Its address gone.
    lab.srv
        .ip(&["addr", "flush", "dev", "fabric0"])
        .expect("flush");
    assert_one_failure(
        "no address",
        lab.check(&cfg, &[]),
        "FAIL  interface fabric0: is up but has no IPv4 address",
        "ip addr add",
    );
    // An address outside the DHCP subnet.
    lab.srv
        .ip(&["addr", "add", "10.99.0.1/24", "dev", "fabric0"])
        .expect("addr");
    assert_one_failure(
        "wrong subnet",
        lab.check(&cfg, &["--skip", "dhcp"]),
        "FAIL  interface fabric0: has 10.99.0.1 but no address in its DHCP subnet 10.77.0.0/24",
        "ip addr add",
    );
    lab.srv
        .ip(&["addr", "flush", "dev", "fabric0"])
        .expect("flush");
    lab.srv
        .ip(&["addr", "add", "10.77.0.1/24", "dev", "fabric0"])
        .expect("addr");

    // The admin API on every address, open to a /8 that holds the DHCP subnet, no token:
    // a provisioned machine could reboot the fleet (the old Kubernetes manifest).
    let text = std::fs::read_to_string(&cfg).expect("config");
    let open = d.join("bootfabric-open-admin.toml");
    let exposed = "listen = \"0.0.0.0:9370\"\nallow = [\"10.0.0.0/8\", \"127.0.0.0/8\"]";
    std::fs::write(&open, text.replace("listen = \"127.0.0.1:9370\"", exposed)).expect("config");
    assert_one_failure(
        "admin control reachable",
        lab.check(&open, &["--skip", "dhcp"]),
        "FAIL  admin control: admin.listen 0.0.0.0:9370 with admin.allow 10.0.0.0/8, 127.0.0.0/8 is reachable from dhcp.subnets[0] 10.77.0.0/24, interface fabric0 10.77.0.0/24",
        "admin token create",
    );
    // With a token file and the management network only, it passes the item (a warning
    // says the token crosses in clear without TLS).
    run(Command::new(bootfabric_bin())
        .args(["admin", "token", "create", "--file"])
        .arg(d.join("admin.token")))
    .expect("token create");
    std::fs::write(
        &open,
        text.replace(
            "listen = \"127.0.0.1:9370\"",
            "listen = \"0.0.0.0:9370\"\nallow = [\"10.20.0.0/24\"]\ntoken_file = \"admin.token\"",
        ),
    )
    .expect("config");
    let (code, out) = lab.check(&open, &["--skip", "dhcp"]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("WARN  admin control: control needs the token; admin.allow 10.20.0.0/24; but the token crosses the network in clear"),
        "{out}"
    );

    // Port 67 taken (by anything bound to it without address reuse).
    let held = lab
        .srv
        .run(|| std::net::UdpSocket::bind("0.0.0.0:67").expect("bind 67"))
        .expect("namespace");
    assert_one_failure(
        "port taken",
        lab.check(&cfg, &["--skip", "dhcp"]),
        "FAIL  port 67/udp: in use",
        "ss -ulpn",
    );
    drop(held);

    // A profile file missing.
    let initrd = d.join("images/linux/initrd.img");
    std::fs::rename(&initrd, d.join("initrd.away")).expect("move");
    assert_one_failure(
        "missing file",
        lab.check(&cfg, &[]),
        "FAIL  profile linux file linux/initrd.img: not found under",
        "put it at",
    );
    std::fs::rename(d.join("initrd.away"), &initrd).expect("move back");

    // The kernel changed under its checksum.
    let kernel = d.join("images/linux/vmlinuz");
    let good = std::fs::read(&kernel).expect("kernel");
    std::fs::write(&kernel, content(300_000, 9)).expect("other kernel");
    assert_one_failure(
        "checksum",
        lab.check(&cfg, &[]),
        "FAIL  profile linux file linux/vmlinuz: SHA-256 is",
        "update the checksum",
    );
    std::fs::write(&kernel, good).expect("kernel back");

    // The BMC password wrong.
    std::fs::write(d.join("bmc.pass"), "not-the-password\n").expect("password");
    let (code, out) = lab.check(&cfg, &[]);
    assert_one_failure(
        "bmc credentials",
        (code, out.clone()),
        "FAIL  bmc http://127.0.0.1:",
        "username and the password",
    );
    assert!(out.contains("refused the credentials"), "{out}");
    assert!(!out.contains("not-the-password"), "a password was printed");
    std::fs::write(d.join("bmc.pass"), format!("{PASSWORD}\n")).expect("password");

    // Another DHCP server on the segment.
    let rogue = Netns::new("rogue").expect("netns");
    lab.bridge
        .plug(&rogue, "r0", "10.77.0.250/24")
        .expect("plug");
    let script = d.join("noop.sh");
    std::fs::write(&script, "#!/bin/sh\n").expect("script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let _dnsmasq = KillOnDrop(
        rogue
            .command("dnsmasq")
            .args([
                "--no-daemon",
                "--port=0",
                "--interface=r0",
                "--bind-interfaces",
                "--dhcp-range=10.77.0.200,10.77.0.210,1h",
                "--no-resolv",
                "--no-hosts",
                "--no-ping",
            ])
            .arg(format!(
                "--dhcp-leasefile={}",
                d.join("rogue.leases").display()
            ))
            .arg(format!("--pid-file={}", d.join("rogue.pid").display()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("dnsmasq"),
    );
    // Wait until dnsmasq listens on the DHCP port (a sleep would be a guess at how long it
    // takes to start on a loaded machine).
    let listening = wait_for(std::time::Duration::from_secs(30), || {
        let socks = run(rogue.command("ss").args(["-Hlun", "sport = :67"])).ok()?;
        (!socks.trim().is_empty()).then_some(())
    });
    assert!(listening.is_some(), "the rogue dnsmasq never bound port 67");
    assert_one_failure(
        "rogue dhcp",
        lab.check(&cfg, &[]),
        "FAIL  dhcp servers on fabric0: another DHCP server answers: 10.77.0.250 (offered 10.77.0.2",
        "dhcp.mode = \"proxy\"",
    );
    drop(_dnsmasq);

    // The journal's file system nearly full: a 16 MiB tmpfs, below the 64 MiB floor.
    let small = d.join("small");
    std::fs::create_dir_all(&small).expect("dir");
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=16m", "tmpfs"])
        .arg(&small))
    .expect("mount tmpfs");
    let unmount = Unmount(small.clone());
    assert_one_failure(
        "disk",
        lab.check(
            &lab.config_with("fabric0", "10.77.0.0/24", "auto", "small"),
            &[],
        ),
        "FAIL  disk state",
        "free space",
    );
    drop(unmount);

    // Native XDP on an interface whose driver has none (a bridge): the attach fails.
    lab.srv
        .ip(&["link", "add", "nox0", "type", "bridge"])
        .expect("bridge");
    lab.srv.ip(&["link", "set", "nox0", "up"]).expect("up");
    lab.srv
        .ip(&["addr", "add", "10.77.5.1/24", "dev", "nox0"])
        .expect("addr");
    let native = lab.config_with("nox0", "10.77.5.0/24", "native", "state");
    let (code, out) = lab.check(&native, &["--skip", "dhcp"]);
    if bootfabric_lab::lab_required() || !out.contains("has no eBPF object") {
        assert_one_failure(
            "xdp native",
            (code, out),
            "FAIL  xdp: cannot load or attach",
            "for a driver without native XDP set xdp.mode = \"generic\" or \"auto\"",
        );
    }

    // An interface that does not exist (XDP cannot attach to it either: left out here).
    let ghost = lab.config("ghost0");
    assert_one_failure(
        "missing interface",
        lab.check(&ghost, &["--skip", "xdp,dhcp"]),
        "FAIL  interface ghost0: does not exist",
        "correct fabric.interfaces",
    );
}

/// Runs `bootfabric check <args> --config <config>` here (no namespace: the config is refused
/// before anything is probed): (exit code, stdout + stderr).
fn check_here(config: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(bootfabric_bin())
        .arg("check")
        .args(args)
        .arg("--config")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("run bootfabric check (build it first: cargo build -p bootfabric)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Item 4 of issue 16: a template mistake is a configuration error naming host, file and line,
/// found by `check` (and by the daemon's load) for every host, never at boot. node01 has the
/// metadata the template uses, node02 does not; a profile's cmdline is checked the same way.
#[test]
fn a_template_error_names_host_file_and_line() {
    let dir = TempDir::new().expect("dir");
    let d = &dir.path;
    std::fs::create_dir_all(d.join("configs/node01")).expect("configs");
    let hosts = |cmdline: &str| {
        format!(
            r#"
[profiles.installer]
kernel = "linux/vmlinuz"
cmdline = "{cmdline}"

[[hosts]]
name = "node01"
mac = "52:54:00:aa:00:01"
profile = "installer"
meta = {{ role = "worker" }}

[[hosts]]
name = "node02"
mac = "52:54:00:aa:00:02"
profile = "installer"
"#
        )
    };
    std::fs::write(d.join("hosts.toml"), hosts("console=ttyS0")).expect("hosts");
    let config = d.join("bootfabric.toml");
    std::fs::write(
        &config,
        "[daemon]\ninventory = \"hosts.toml\"\n[fabric]\ninterfaces = [\"fabric0\"]\n[http]\nconfigs = \"configs\"\n",
    )
    .expect("config");
    let role = "# role of {{ hostname }}\n\nrole: {{ meta.role }}\n";
    std::fs::write(d.join("configs/role.cfg"), role).expect("template");
    // node01's own folder is rendered for node01 only: its `meta.role` is there.
    std::fs::write(d.join("configs/node01/extra.cfg"), "{{ meta.role }}\n").expect("override");

    for args in [&["--config-only"][..], &[]] {
        let (code, out) = check_here(&config, args);
        assert_eq!(code, 2, "check {args:?}: exit status\n{out}");
        assert!(
            out.contains("configs/role.cfg:3: host node02: undefined value"),
            "check {args:?}: host, file and line not named\n{out}"
        );
        assert!(!out.contains("host node01"), "node01 has the value: {out}");
    }

    // Guarded, it renders for both; a cmdline that does not is found the same way.
    let guarded =
        "{% if meta.role is defined %}role: {{ meta.role }}{% else %}role: none{% endif %}\n";
    std::fs::write(d.join("configs/role.cfg"), guarded).expect("template");
    let (code, out) = check_here(&config, &["--config-only"]);
    assert_eq!(code, 0, "{out}");
    std::fs::write(
        d.join("hosts.toml"),
        hosts("console=ttyS0 rack={{ host.rack }}"),
    )
    .expect("hosts");
    let (code, out) = check_here(&config, &["--config-only"]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("profiles.installer.cmdline:1: host node01: undefined value")
            && out.contains("profiles.installer.cmdline:1: host node02: undefined value"),
        "{out}"
    );
    // A syntax error names file and line too.
    std::fs::write(d.join("hosts.toml"), hosts("console=ttyS0")).expect("hosts");
    std::fs::write(d.join("configs/role.cfg"), "ok\n{% if %}\n").expect("template");
    let (code, out) = check_here(&config, &["--config-only"]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("configs/role.cfg:2: "), "{out}");
}
