//! The daemon as an operator meets it: `check` rejects bad configs naming the key, `serve`
//! exports valid Prometheus metrics, runs without XDP when told to, and stops cleanly on
//! SIGTERM and SIGINT, detaching its XDP program.

use std::process::Command;

use bootfabric_lab::{
    bootfabric_bin, have_program, http_get, require, require_root, run, sample, Daemon, PairLab,
    TempDir,
};
use nix::sys::signal::Signal;

fn check(config: &str, files: &[(&str, &str)]) -> (i32, String) {
    let dir = TempDir::new().expect("tempdir");
    let path = dir.path.join("bootfabric.toml");
    std::fs::write(&path, config).expect("write config");
    for (name, text) in files {
        std::fs::write(dir.path.join(name), text).expect("write file");
    }
    let out = Command::new(bootfabric_bin())
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run bootfabric check (build it first: cargo build -p bootfabric)");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_rejects_bad_configs_naming_the_key() {
    let (code, out) = check("[admin]\nlisten_addres = \"127.0.0.1:1\"\n", &[]);
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("listen_addres"), "typo not named: {out}");

    let (code, out) = check(
        "[admin]\nallow = [\"10.0.0.0/8\", \"192.168.1.0/40\"]\n",
        &[],
    );
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("admin.allow[1]") && out.contains("192.168.1.0/40"),
        "{out}"
    );

    let (code, out) = check("[daemon]\ninventory = \"racks/hosts.toml\"\n", &[]);
    assert_eq!(code, 2, "{out}");
    assert!(
        out.contains("racks/hosts.toml"),
        "missing file not named: {out}"
    );

    let (code, out) = check(
        "[daemon]\ninventory = \"hosts.toml\"\n",
        &[("hosts.toml", "[profiles.p]\n[[hosts]]\nname = \"n1\"\nmac = \"52:54:00:00:00:01\"\nprofile = \"q\"\n")],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("hosts[0].profile"), "{out}");
}

#[test]
fn check_accepts_the_example_config() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../deploy/examples/bootfabric.toml"
    );
    // Config only: the full checklist would probe the example's interfaces.
    let out =
        run(Command::new(bootfabric_bin()).args(["check", "--config-only", "--config", example]))
            .expect("example config is valid");
    assert!(out.contains("OK"), "{out}");
    let out =
        run(Command::new(bootfabric_bin()).args(["hosts", "--config", example])).expect("hosts");
    assert!(out.contains("52:54:00:b0:0f:01"), "{out}");
}

#[test]
fn metrics_pass_promtool() {
    if !require_root("metrics_pass_promtool")
        || !require(
            have_program("promtool"),
            "metrics_pass_promtool",
            "promtool is not installed (cargo xtask setup)",
        )
    {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let config = "[fabric]\ninterfaces = [\"fabric0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let daemon = Daemon::start(&lab.server, config, &[]).expect("daemon");
    let (status, text) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    assert_eq!(status, 200);
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool");
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin.write_all(text.as_bytes()).expect("feed promtool");
    }
    let out = child.wait_with_output().expect("promtool output");
    assert!(
        out.status.success(),
        "promtool rejected /metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "bootfabric_build_info",
        "bootfabric_service_up",
        "bootfabric_xdp_attach_mode",
    ] {
        assert!(text.contains(name), "{name} missing:\n{text}");
    }
    let (status, _) = http_get(&lab.server, daemon.admin, "/nope").expect("404");
    assert_eq!(status, 404);
}

#[test]
fn userspace_only_mode_is_reported() {
    if !require_root("userspace_only_mode_is_reported") {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let config = "[fabric]\ninterfaces = [\"fabric0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[xdp]\nmode = \"off\"\n";
    let daemon = Daemon::start(&lab.server, config, &[]).expect("daemon");
    let (_, text) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    let mode = |m| {
        sample(
            &text,
            "bootfabric_xdp_attach_mode",
            &[("iface", "fabric0"), ("mode", m)],
        )
    };
    assert_eq!(mode("none"), Some(1.0), "{text}");
    assert_eq!(mode("native"), Some(0.0), "{text}");
    assert_eq!(
        sample(&text, "bootfabric_service_up", &[("service", "xdp")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, "bootfabric_service_up", &[("service", "admin")]),
        Some(1.0)
    );
    assert!(
        daemon.log().contains("userspace-only mode"),
        "{}",
        daemon.log()
    );
    let link = lab.server.ip(&["link", "show", "fabric0"]).expect("link");
    assert!(!link.contains("xdp"), "{link}");
}

#[test]
fn missing_interface_is_refused() {
    if !require_root("missing_interface_is_refused") {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let config = "[fabric]\ninterfaces = [\"nosuch0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    let err = Daemon::start(&lab.server, config, &[])
        .err()
        .expect("daemon must refuse");
    assert!(
        err.contains("nosuch0") && err.contains("exited with"),
        "{err}"
    );
}

#[test]
fn sigterm_and_sigint_stop_cleanly_and_detach_xdp() {
    if !require_root("sigterm_and_sigint_stop_cleanly_and_detach_xdp") {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let config = "[fabric]\ninterfaces = [\"fabric0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    for signal in [Signal::SIGTERM, Signal::SIGINT] {
        let mut daemon = Daemon::start(&lab.server, config, &[]).expect("daemon");
        let (_, text) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
        let attached =
            sample(&text, "bootfabric_xdp_attach_mode", &[("mode", "none")]) == Some(0.0);
        if attached {
            let link = lab.server.ip(&["link", "show", "fabric0"]).expect("link");
            assert!(link.contains("xdp"), "XDP not visible on the link: {link}");
        }
        let status = daemon.stop_with(signal).expect("stops");
        assert_eq!(
            status.code(),
            Some(0),
            "{signal}: {status}\n{}",
            daemon.log()
        );
        assert!(
            daemon.log().contains("bootfabric stopped"),
            "{}",
            daemon.log()
        );
        let link = lab.server.ip(&["link", "show", "fabric0"]).expect("link");
        assert!(
            !link.contains("xdp"),
            "XDP left attached after {signal}: {link}"
        );
    }
}

/// A reload is published whole or not at all: a config whose `[dhcp]` the running server
/// cannot take (a changed subnet) is refused with the service and the reason, and the host it
/// adds is served by nobody (HTTP included) while the generation stays; the same hosts with
/// the running subnet are then published and served at once.
#[test]
fn a_reload_dhcp_cannot_take_is_refused_whole() {
    if !require_root("a_reload_dhcp_cannot_take_is_refused_whole") {
        return;
    }
    let images = TempDir::new().expect("images");
    let config = |cidr: &str| {
        format!(
            "[daemon]\nstate_dir = \"state\"\ninventory = \"hosts.toml\"\n[fabric]\ninterfaces = [\"fabric0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[xdp]\nmode = \"off\"\n[http]\nroot = \"{}\"\n[dhcp]\n[[dhcp.subnets]]\ncidr = \"{cidr}\"\ninterface = \"fabric0\"\npools = [\"10.77.0.100-10.77.0.199\"]\n",
            images.path.display()
        )
    };
    let hosts = "[profiles.p]\nkernel = \"vmlinuz\"\n[[hosts]]\nname = \"node01\"\nmac = \"52:54:00:b0:0f:01\"\nip = \"10.77.0.2\"\nprofile = \"p\"\n";
    let lab = PairLab::new().expect("lab");
    let daemon = Daemon::start(
        &lab.server,
        &config("10.77.0.0/24"),
        &[("hosts.toml", hosts)],
    )
    .expect("daemon");
    let healthz = || {
        http_get(&lab.server, daemon.admin, "/healthz")
            .expect("healthz")
            .1
    };
    let http: std::net::SocketAddr = "10.77.0.1:80".parse().expect("addr");
    let node30 = || {
        http_get(&lab.server, http, "/boot.ipxe?mac=52:54:00:b0:0f:30")
            .expect("script")
            .1
    };
    assert_eq!(healthz(), "ok\ngeneration 1\n");

    let added = format!(
        "{hosts}[[hosts]]\nname = \"node30\"\nmac = \"52:54:00:b0:0f:30\"\nip = \"10.77.0.30\"\nprofile = \"p\"\n"
    );
    let dir = daemon.config_path();
    std::fs::write(dir.with_file_name("hosts.toml"), &added).expect("hosts");
    std::fs::write(&dir, config("10.77.0.0/23")).expect("config");
    daemon.reload("config not reloaded").expect("refused");
    assert!(
        daemon.log().contains(
            "config not reloaded: dhcp: dhcp.subnets or dhcp.mode changed: restart to apply"
        ),
        "{}",
        daemon.log()
    );
    assert_eq!(healthz(), "ok\ngeneration 1\n");
    assert!(node30().contains("not in the inventory"), "{}", node30());

    std::fs::write(&dir, config("10.77.0.0/24")).expect("config");
    daemon
        .reload("config reloaded, generation 2")
        .expect("reload");
    assert_eq!(healthz(), "ok\ngeneration 2\n");
    assert!(node30().contains("for node30"), "{}", node30());
    if have_program("curl") {
        let url = format!("http://{}/healthz", daemon.admin);
        let head = run(lab.server.command("curl").args(["-sSi", &url])).expect("curl");
        assert!(
            head.to_ascii_lowercase()
                .contains("bootfabric-generation: 2\r\n"),
            "{head}"
        );
    }
    let (_, metrics) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
    for service in ["dhcp", "ledger"] {
        assert_eq!(
            sample(
                &metrics,
                "bootfabric_config_generation_applied",
                &[("service", service)]
            ),
            Some(2.0),
            "{service}"
        );
    }
}
