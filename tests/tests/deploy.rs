//! The shipped deployment files are valid: promtool accepts the scrape config and the alert
//! rules, the Grafana dashboard and Kubernetes manifests parse, every metric they use is one
//! the daemon documents, and the example configs of the three topologies validate.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use bootfabric_lab::{bootfabric_bin, have_program, require, run};

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

#[test]
fn kubernetes_manifests_parse() {
    let t = "kubernetes_manifests_parse";
    let parses = Command::new("/usr/bin/python3")
        .args(["-c", "import yaml"])
        .status()
        .is_ok_and(|s| s.success());
    if !require(parses, t, "python3-yaml is missing (cargo xtask setup)") {
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

#[test]
fn topology_examples_validate() {
    for example in [
        "examples/bootfabric.toml",
        "examples/segregated/bootfabric.toml",
        "examples/relayed/bootfabric.toml",
    ] {
        let out = run(Command::new(bootfabric_bin())
            .args(["check", "--config-only", "--config"])
            .arg(deploy().join(example)))
        .unwrap_or_else(|e| panic!("{example}: {e}"));
        assert!(out.contains("OK"), "{example}: {out}");
        assert!(out.contains("3 host(s), 4 profile(s)"), "{example}: {out}");
    }
}
