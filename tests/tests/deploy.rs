//! The shipped deployment files are valid: promtool accepts the scrape config and the alert
//! rules, the Grafana dashboard and Kubernetes manifests parse, every metric they use is one
//! the daemon documents, and the example configs of the three topologies and the
//! Kubernetes manifest's embedded config validate, with an admin token and pinned BMCs.
//! Cluster mode: the kustomize overlays (with its own etcd StatefulSet, or an existing etcd)
//! build, one fabric per rack with a config that validates with real TLS files; the systemd
//! units and drop-ins pass `systemd-analyze verify`; `etcd.default` uses only etcd's flags.

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

/// `kubectl kustomize DIR` as JSON documents (python3-yaml reads the YAML).
fn kustomize(dir: &Path, scratch: &Path) -> Vec<serde_json::Value> {
    let yaml = run(Command::new("kubectl").arg("kustomize").arg(dir))
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let file = scratch.join("built.yaml");
    std::fs::write(&file, yaml).expect("built");
    let json = run(Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(&file))
    .expect("yaml");
    serde_json::from_str(&json).expect("json")
}

fn of_kind<'a>(docs: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// Each rack's DaemonSet of a built overlay: on its rack's nodes only, host networking, the
/// XDP capabilities, the etcd client Secret private; its ConfigMap's config validates (with
/// real TLS files where it names them) and names that rack. Returns the configs' etcd URLs.
fn assert_rack_fabrics(what: &str, docs: &[serde_json::Value]) -> Vec<String> {
    let sets = of_kind(docs, "DaemonSet");
    assert!(sets.len() >= 2, "{what}: {} DaemonSet(s)", sets.len());
    let pki = bootfabric_lab::etcd::Pki::new(&[]).expect("certificates");
    let mut names = BTreeSet::new();
    let mut endpoints = Vec::new();
    for ds in sets {
        let spec = &ds["spec"]["template"]["spec"];
        let rack = spec["nodeSelector"]["bootfabric.io/rack"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {} selects no rack", ds["metadata"]["name"]));
        assert_eq!(spec["hostNetwork"], true, "{what}/{rack}");
        let caps = &spec["containers"][0]["securityContext"]["capabilities"];
        for cap in ["BPF", "NET_ADMIN", "NET_RAW", "NET_BIND_SERVICE"] {
            assert!(
                caps["add"]
                    .as_array()
                    .is_some_and(|a| a.iter().any(|c| c == cap)),
                "{what}/{rack}: no {cap}"
            );
        }
        assert_eq!(caps["drop"][0], "ALL", "{what}/{rack}");
        let volume = |name: &str| {
            spec["volumes"]
                .as_array()
                .and_then(|v| v.iter().find(|v| v["name"] == name))
                .unwrap_or_else(|| panic!("{what}/{rack}: no volume {name}"))
                .clone()
        };
        let etcd_secret = volume("etcd-client");
        assert_eq!(
            etcd_secret["secret"]["defaultMode"], 0o400,
            "{what}/{rack}: cluster.key_file must be private"
        );
        let cm_name = volume("config")["configMap"]["name"].clone();
        let cm = of_kind(docs, "ConfigMap")
            .into_iter()
            .find(|c| c["metadata"]["name"] == cm_name)
            .unwrap_or_else(|| panic!("{what}/{rack}: no ConfigMap {cm_name}"));

        // The ConfigMap at /etc/bootfabric, the Secret at /etc/bootfabric/etcd: made real
        // under a temporary root, the Secret from certificates openssl made.
        let root = TempDir::new().expect("tempdir");
        let etc = root.path.join("etc/bootfabric");
        std::fs::create_dir_all(etc.join("etcd")).expect("dir");
        let mut config = None;
        for (name, text) in cm["data"].as_object().expect("data") {
            let text = text.as_str().expect("text");
            if name == "bootfabric.toml" {
                config = Some(text.to_owned());
            } else {
                std::fs::write(etc.join(name), text).expect("file");
            }
        }
        std::fs::copy(&pki.ca, etc.join("etcd/ca.crt")).expect("ca");
        std::fs::copy(&pki.client.cert, etc.join("etcd/tls.crt")).expect("cert");
        std::fs::copy(&pki.client.key, etc.join("etcd/tls.key")).expect("key");
        let text = config.unwrap_or_else(|| panic!("{what}/{rack}: no bootfabric.toml"));
        let path = rooted(
            &root.path,
            Path::new("/etc/bootfabric/bootfabric.toml"),
            &text,
            &["/srv/bootfabric/tftp", "/srv/bootfabric/images"],
        );
        let out = check_config_only(&path);
        assert!(out.contains("OK"), "{what}/{rack}: {out}");
        let cfg = bootfabric::config::Config::load(&path).expect("config");
        let cluster = cfg.cluster.as_ref().expect("[cluster]");
        assert_eq!(
            cluster.rack, rack,
            "{what}: the config's rack is its nodes'"
        );
        assert!(cluster.tls.as_ref().is_some_and(|t| t.identity.is_some()));
        assert!(
            names.insert(cluster.name.clone()),
            "{what}: {} twice",
            cluster.name
        );
        assert_control_off_dhcp_subnets(what, &cfg);
        endpoints.extend(cluster.endpoints.clone());
    }
    endpoints
}

#[test]
fn kubernetes_cluster_overlays_build_and_every_rack_config_validates() {
    let t = "kubernetes_cluster_overlays_build_and_every_rack_config_validates";
    if !require_yaml(t)
        || !require(have_program("kubectl"), t, "kubectl (kustomize) is missing")
        || !require(have_program("openssl"), t, "openssl is missing")
    {
        return;
    }
    let scratch = TempDir::new().expect("tempdir");
    let cluster = deploy().join("kubernetes/cluster");

    // With its own etcd: three members on volumes of their own, named by a headless
    // Service, TLS with client certificates, and the fabrics pointed at exactly them.
    let docs = kustomize(&cluster.join("with-etcd"), &scratch.path);
    let sts = of_kind(&docs, "StatefulSet");
    assert_eq!(sts.len(), 1, "one etcd StatefulSet");
    let sts = sts[0];
    assert_eq!(sts["spec"]["replicas"], 3);
    assert!(
        sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
            .is_string()
    );
    let service = sts["spec"]["serviceName"].as_str().expect("serviceName");
    let headless = of_kind(&docs, "Service")
        .into_iter()
        .find(|s| s["metadata"]["name"] == service)
        .expect("the StatefulSet's Service");
    assert_eq!(headless["spec"]["clusterIP"], "None");
    let args: Vec<&str> = sts["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    for flag in ["--client-cert-auth", "--peer-client-cert-auth"] {
        assert!(args.contains(&flag), "etcd without {flag}");
    }
    let initial = args
        .iter()
        .find_map(|a| a.strip_prefix("--initial-cluster="))
        .expect("--initial-cluster");
    let ns = sts["metadata"]["namespace"].as_str().expect("namespace");
    let members: Vec<String> = (0..3)
        .map(|i| format!("etcd-{i}.{service}.{ns}.svc"))
        .collect();
    for (i, m) in members.iter().enumerate() {
        assert!(
            initial.contains(&format!("etcd-{i}=https://{m}:2380")),
            "{initial}"
        );
    }
    let urls = assert_rack_fabrics("with-etcd", &docs);
    for url in &urls {
        assert!(
            members.iter().any(|m| *url == format!("https://{m}:2379")),
            "a fabric's cluster.etcd {url} is no member of the StatefulSet"
        );
    }

    // On an existing etcd: the same fabrics, no etcd of ours.
    let docs = kustomize(&cluster.join("existing-etcd"), &scratch.path);
    assert!(of_kind(&docs, "StatefulSet").is_empty());
    assert_rack_fabrics("existing-etcd", &docs);
}

#[test]
fn systemd_units_and_drop_ins_verify() {
    let t = "systemd_units_and_drop_ins_verify";
    if !require(
        have_program("systemd-analyze") && Path::new("/lib/systemd/system/etcd.service").exists(),
        t,
        "systemd-analyze or Debian's etcd-server unit is missing",
    ) {
        return;
    }
    // The units as installed (the binary where this build has it), with Debian's etcd unit
    // and our drop-ins on a unit path of their own.
    let dir = TempDir::new().expect("tempdir");
    let d = deploy().join("systemd");
    let unit = std::fs::read_to_string(d.join("bootfabric.service")).expect("unit");
    let bin = bootfabric_bin();
    std::fs::write(
        dir.path.join("bootfabric.service"),
        unit.replace("/usr/local/bin/bootfabric", &bin.display().to_string()),
    )
    .expect("unit");
    std::fs::copy(
        "/lib/systemd/system/etcd.service",
        dir.path.join("etcd.service"),
    )
    .expect("etcd unit");
    for (unit, dropin) in [
        ("bootfabric.service", "etcd.conf"),
        ("etcd.service", "bootfabric.conf"),
    ] {
        let to = dir.path.join(format!("{unit}.d"));
        std::fs::create_dir_all(&to).expect("dir");
        std::fs::copy(d.join(format!("{unit}.d")).join(dropin), to.join(dropin)).expect("drop-in");
    }
    let verify = || {
        Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(dir.path.join("bootfabric.service"))
            .arg(dir.path.join("etcd.service"))
            .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path.display()))
            .output()
            .expect("systemd-analyze")
    };
    let out = verify();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains(&dir.path.display().to_string()),
        "systemd complains about our files:\n{stderr}"
    );
    // The drop-ins are read: a bad key in one is reported.
    let bad = dir.path.join("etcd.service.d/zz-bad.conf");
    std::fs::write(&bad, "[Service]\nRestartt=always\n").expect("bad");
    let stderr = String::from_utf8_lossy(&verify().stderr).into_owned();
    assert!(stderr.contains("Restartt"), "{stderr}");
}

#[test]
fn etcd_default_is_a_three_member_tls_cluster_of_etcd_flags() {
    let t = "etcd_default_is_a_three_member_tls_cluster_of_etcd_flags";
    if !require(have_program("etcd"), t, "etcd is missing (etcd-server)") {
        return;
    }
    let help = Command::new("etcd")
        .arg("--help")
        .output()
        .expect("etcd --help");
    let help =
        String::from_utf8_lossy(&help.stdout).into_owned() + &String::from_utf8_lossy(&help.stderr);
    let text = std::fs::read_to_string(deploy().join("systemd/etcd.default")).expect("default");
    let mut vars = std::collections::BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
    {
        let (k, v) = line.split_once('=').expect("KEY=value");
        let flag = format!(
            "--{}",
            k.strip_prefix("ETCD_")
                .expect("ETCD_ variable")
                .to_lowercase()
                .replace('_', "-")
        );
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{k}: etcd has no {flag}"
        );
        vars.insert(k.to_owned(), v.trim_matches('"').to_owned());
    }
    assert_eq!(vars["ETCD_CLIENT_CERT_AUTH"], "true");
    assert_eq!(vars["ETCD_PEER_CLIENT_CERT_AUTH"], "true");
    let initial: Vec<&str> = vars["ETCD_INITIAL_CLUSTER"].split(',').collect();
    assert_eq!(initial.len(), 3, "{initial:?}");
    assert!(
        initial.iter().all(|m| m.contains("=https://")),
        "{initial:?}"
    );
    assert!(initial.contains(
        &format!(
            "{}={}",
            vars["ETCD_NAME"], vars["ETCD_INITIAL_ADVERTISE_PEER_URLS"]
        )
        .as_str()
    ));

    // The fabric's [cluster] example, appended to a config as the operator does: it loads,
    // its TLS files (made by openssl where it names them) read, on the members' client URLs.
    let example =
        std::fs::read_to_string(deploy().join("systemd/bootfabric-cluster.toml")).expect("example");
    let root = TempDir::new().expect("tempdir");
    let pki = bootfabric_lab::etcd::Pki::new(&[]).expect("certificates");
    let etcd_dir = root.path.join("etc/bootfabric/etcd");
    std::fs::create_dir_all(&etcd_dir).expect("dir");
    std::fs::copy(&pki.ca, etcd_dir.join("ca.crt")).expect("ca");
    std::fs::copy(&pki.client.cert, etcd_dir.join("client.crt")).expect("cert");
    std::fs::copy(&pki.client.key, etcd_dir.join("client.key")).expect("key");
    let config = format!(
        "[daemon]\nstate_dir = \"/var/lib/bootfabric\"\n[fabric]\ninterfaces = [\"lo\"]\n[xdp]\nmode = \"off\"\n{example}"
    );
    let path = rooted(
        &root.path,
        Path::new("/etc/bootfabric/bootfabric.toml"),
        &config,
        &["/var/lib/bootfabric"],
    );
    let cfg = bootfabric::config::Config::load(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cluster = cfg.cluster.expect("[cluster]");
    let peers: Vec<String> = initial
        .iter()
        .filter_map(|m| m.split_once('=').map(|(_, u)| u.replace(":2380", ":2379")))
        .collect();
    assert_eq!(cluster.endpoints, peers);
    assert!(cluster.tls.is_some_and(|t| t.identity.is_some()));
}
