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
