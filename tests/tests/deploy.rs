//! The shipped deployment files are valid: promtool accepts the scrape config and the alert
//! rules, the Grafana dashboard and Kubernetes manifests parse, every metric they use is one
//! the daemon documents, and the example configs of the three topologies and the
//! Kubernetes manifest's embedded config validate, with an admin token and pinned BMCs.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use bootfabric_lab::{bootfabric_bin, have_program, require, run, TempDir};

fn deploy() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy"))
}

/// `bootfabric_*` names used in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("bootfabric_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn prometheus_files_pass_promtool() {
    let t = "prometheus_files_pass_promtool";
    if !require(
        have_program("promtool"),
        t,
        "promtool is missing (cargo xtask setup)",
    ) {
        return;
    }
    let d = deploy().join("prometheus");
    run(Command::new("promtool")
        .args(["check", "config"])
        .arg(d.join("prometheus.yml")))
    .expect("promtool check config");
    run(Command::new("promtool")
        .args(["check", "rules"])
        .arg(d.join("alerts.yml")))
    .expect("promtool check rules");
}

#[test]
fn dashboards_and_alerts_use_documented_metrics() {
    let readme = std::fs::read_to_string(deploy().join("../README.md")).expect("README");
    let documented = metric_names(&readme);
    let dashboard =
        std::fs::read_to_string(deploy().join("grafana/bootfabric.json")).expect("dashboard");
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("dashboard JSON");
    assert!(
        json["panels"].as_array().is_some_and(|p| !p.is_empty()),
        "dashboard has panels"
    );
    let alerts =
        std::fs::read_to_string(deploy().join("prometheus/alerts.yml")).expect("alert rules");
    for (file, text) in [("dashboard", &dashboard), ("alerts", &alerts)] {
        let used = metric_names(text);
        assert!(!used.is_empty(), "{file} uses no metric");
        let unknown: Vec<&String> = used.difference(&documented).collect();
        assert!(
            unknown.is_empty(),
            "{file} uses metrics the README does not document: {unknown:?}"
        );
    }
}

/// [`require`] for python3 with PyYAML, which reads the manifests as Kubernetes would.
fn require_yaml(t: &str) -> bool {
    let parses = Command::new("/usr/bin/python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    require(parses, t, "python3-yaml is missing (cargo xtask setup)")
}

#[test]
fn kubernetes_manifests_parse() {
    let t = "kubernetes_manifests_parse";
    if !require_yaml(t) {
        return;
    }
    let kinds = run(Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, yaml; print(' '.join(d['kind'] for d in yaml.safe_load_all(open(sys.argv[1])) if d))",
        ])
        .arg(deploy().join("kubernetes/bootfabric.yaml")))
    .expect("manifests parse");
    for kind in ["Namespace", "ConfigMap", "DaemonSet", "Service"] {
        assert!(kinds.contains(kind), "{kinds}");
    }
}

/// Writes `config` (text of a config whose absolute paths are under `/`) to `root`, with
/// every absolute path moved under `root`, and creates what `check --config-only` opens
/// there: `dirs`, and the admin token with `bootfabric admin token create`. Returns the
/// config's path.
fn rooted(root: &Path, at: &Path, config: &str, dirs: &[&str]) -> PathBuf {
    let text = config.replace("= \"/", &format!("= \"{}/", root.display()));
    for d in dirs {
        std::fs::create_dir_all(root.join(d.trim_start_matches('/'))).expect("dir");
    }
    let token = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("token_file = \""))
        .map(|rest| PathBuf::from(rest.trim_end_matches('"')));
    if let Some(token) = token {
        std::fs::create_dir_all(token.parent().expect("folder")).expect("dir");
        if !token.exists() {
            run(Command::new(bootfabric_bin())
                .args(["admin", "token", "create", "--file"])
                .arg(&token))
            .expect("token create");
        }
    }
    let path = root.join(at.to_str().expect("utf8").trim_start_matches('/'));
    std::fs::create_dir_all(path.parent().expect("folder")).expect("dir");
    std::fs::write(&path, text).expect("config");
    path
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("dir");
    for entry in std::fs::read_dir(from).expect("read_dir").flatten() {
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn check_config_only(config: &Path) -> String {
    run(Command::new(bootfabric_bin())
        .args(["check", "--config-only", "--config"])
        .arg(config))
    .unwrap_or_else(|e| panic!("{}: {e}", config.display()))
}

#[test]
fn topology_examples_validate() {
    // A copy, so that the examples' absolute paths (the admin token in /etc/bootfabric)
    // can be made real in a temporary root.
    let root = TempDir::new().expect("tempdir");
    let examples = root.path.join("examples");
    copy_tree(&deploy().join("examples"), &examples);
    for example in [
        "bootfabric.toml",
        "segregated/bootfabric.toml",
        "relayed/bootfabric.toml",
    ] {
        let text = std::fs::read_to_string(examples.join(example)).expect("example");
        let at = examples.join(example);
        let rel = at.strip_prefix(&root.path).expect("under root").to_owned();
        let config = rooted(&root.path, &Path::new("/").join(rel), &text, &[]);
        let out = check_config_only(&config);
        assert!(out.contains("OK"), "{example}: {out}");
        assert!(out.contains("3 host(s), 4 profile(s)"), "{example}: {out}");
        let cfg = bootfabric::config::Config::load(&config).expect("config");
        assert!(
            cfg.admin.listen.ip().is_loopback() || cfg.admin.token_file.is_some(),
            "{example}: the admin API listens on {} without a token",
            cfg.admin.listen
        );
        assert_control_off_dhcp_subnets(example, &cfg);
    }
    let inventory = std::fs::read_to_string(examples.join("hosts.toml")).expect("hosts");
    assert!(
        !inventory.contains("insecure") && inventory.contains("fingerprint = "),
        "the example BMC must pin its certificate"
    );
}

/// The ConfigMaps' data in the Kubernetes manifest: (key, text) pairs.
fn configmap_files() -> Vec<(String, String)> {
    let json = run(Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps([d['data'] for d in yaml.safe_load_all(open(sys.argv[1])) if d and d['kind'] == 'ConfigMap']))",
        ])
        .arg(deploy().join("kubernetes/bootfabric.yaml")))
    .expect("manifest parses");
    let maps: Vec<std::collections::BTreeMap<String, String>> =
        serde_json::from_str(&json).expect("ConfigMap data");
    maps.into_iter().flatten().collect()
}

#[test]
fn kubernetes_config_validates_and_keeps_control_off_the_provisioning_network() {
    let t = "kubernetes_config_validates_and_keeps_control_off_the_provisioning_network";
    if !require_yaml(t) {
        return;
    }
    let files = configmap_files();
    let root = TempDir::new().expect("tempdir");
    // The ConfigMap is mounted at /etc/bootfabric; its other keys (the inventory) beside.
    let mut config = None;
    for (name, text) in &files {
        let at = Path::new("/etc/bootfabric").join(name);
        if name.ends_with(".toml") && text.contains("[daemon]") {
            config = Some((at, text.clone()));
        } else {
            let path = root.path.join(at.strip_prefix("/").expect("absolute"));
            std::fs::create_dir_all(path.parent().expect("folder")).expect("dir");
            std::fs::write(
                &path,
                text.replace("= \"/", &format!("= \"{}/", root.path.display())),
            )
            .expect("file");
        }
    }
    let (at, text) = config.expect("a bootfabric.toml in the ConfigMap");
    assert!(
        text.contains("token_file = "),
        "the manifest's admin API has no token"
    );
    let all = files.iter().map(|(_, t)| t.as_str()).collect::<String>();
    assert!(
        !all.contains("insecure"),
        "the manifest skips a BMC's TLS check"
    );
    let path = rooted(
        &root.path,
        &at,
        &text,
        &[
            "/srv/bootfabric/tftp",
            "/srv/bootfabric/images",
            "/etc/bootfabric/configs",
        ],
    );
    let out = check_config_only(&path);
    assert!(out.contains("OK"), "{out}");
    assert!(out.contains("1 host(s), 1 profile(s)"), "{out}");

    let cfg = bootfabric::config::Config::load(&path).expect("config");
    assert_control_off_dhcp_subnets("kubernetes", &cfg);
}

/// admin.allow does not reach the DHCP subnets: the pure check the full `check` runs, with
/// the config's DHCP subnets as the served networks.
fn assert_control_off_dhcp_subnets(what: &str, cfg: &bootfabric::config::Config) {
    let served: Vec<bootfabric::commands::check::admin::Served> = cfg
        .dhcp
        .iter()
        .flat_map(|d| &d.subnets)
        .map(|s| ("subnet".to_owned(), s.net.into()))
        .collect();
    let item = bootfabric::commands::check::admin::exposure(
        cfg.admin.listen,
        &cfg.admin.allow,
        cfg.admin.token_file.is_some(),
        cfg.admin.tls.is_some(),
        &served,
    );
    assert_ne!(
        item.status,
        bootfabric::commands::check::Status::Fail,
        "{what}: {item:?}"
    );
    assert!(
        !item.detail.contains("reachable from"),
        "{what}: admin.allow reaches a DHCP subnet: {item:?}"
    );
}
