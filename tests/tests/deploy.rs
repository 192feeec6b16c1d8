//! The shipped deployment files are valid: promtool accepts the scrape config and the alert
//! rules, the Grafana dashboard and Kubernetes manifests parse, every metric they use is one
//! the daemon documents, and the example configs of the three topologies and the
//! Kubernetes manifest's embedded config validate, with an admin token and pinned BMCs.
//! Cluster mode: the kustomize overlays (with its own etcd StatefulSet, or an existing etcd)
//! build, one fabric per rack with a config that validates with real TLS files; the systemd
//! units and drop-ins pass `systemd-analyze verify`; `etcd.default` uses only etcd's flags.
//! The alert rules pass their promtool unit tests. The unit's sandbox scores at most
//! [`EXPOSURE_MAX`] in `systemd-analyze security`. The man pages render without warnings and
//! the bash completion loads. The Debian package holds what docs/packaging.md says, passes
//! lintian without errors, and, extracted into a temporary root, checks its own config and
//! serves DHCP, TFTP and HTTP as a non-root user with only the unit's capabilities. The
//! postinst's root-run steps follow no symlink the daemon's user plants in its state folder.

use std::{
    collections::BTreeSet,
    os::unix::fs::{MetadataExt, PermissionsExt},
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
    // The reference is docs/metrics.md; a metric may also be documented beside its feature
    // (docs/images.md, docs/configuration.md), so every document counts.
    let mut docs = std::fs::read_to_string(deploy().join("../README.md")).expect("README");
    let dir = deploy().join("../docs");
    for e in std::fs::read_dir(&dir).expect("docs/").flatten() {
        if e.path().extension().is_some_and(|x| x == "md") {
            docs.push_str(&std::fs::read_to_string(e.path()).expect("a document"));
        }
    }
    let documented = metric_names(&docs);
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
            "{file} uses metrics the docs (docs/metrics.md) do not document: {unknown:?}"
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

/// The documents of a YAML file, as JSON (python3-yaml reads the YAML).
fn yaml_docs(file: &Path) -> Vec<serde_json::Value> {
    let json = run(Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import sys, yaml, json; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d]))",
        ])
        .arg(file))
    .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    serde_json::from_str(&json).expect("json")
}

/// The absolute paths quoted in a config or inventory (`"/…"`).
fn absolute_paths(text: &str) -> Vec<String> {
    text.split('"')
        .skip(1)
        .step_by(2)
        .filter(|s| s.starts_with('/') && !s.contains(' '))
        .map(str::to_owned)
        .collect()
}

/// Each single-fabric DaemonSet of `docs` (bootfabric.yaml, or a rack of the `fabric`
/// overlay): every path its config and inventory name is on a volume both of its containers
/// mount; with only what those volumes bring (the ConfigMaps' files, the node's
/// /srv/bootfabric/{tftp,images}, the Secrets' folders), the config passes
/// `check --config-only`; both containers run as uid 0 (the Secrets' files are root's).
/// Returns the racks' node selectors.
fn assert_single_fabric_pods(what: &str, docs: &[serde_json::Value]) -> Vec<String> {
    let sets = of_kind(docs, "DaemonSet");
    assert!(!sets.is_empty(), "{what}: no DaemonSet");
    let mut selectors = Vec::new();
    for ds in sets {
        let name = ds["metadata"]["name"].as_str().unwrap_or("?");
        let spec = &ds["spec"]["template"]["spec"];
        selectors.push(spec["nodeSelector"].to_string());
        let volume = |v: &str| {
            spec["volumes"]
                .as_array()
                .and_then(|vs| vs.iter().find(|x| x["name"] == v))
                .unwrap_or_else(|| panic!("{what}/{name}: no volume {v}"))
                .clone()
        };
        let main = &spec["containers"][0];
        let init = &spec["initContainers"][0];
        let cm_name = volume("config")["configMap"]["name"].clone();
        let data = |cm_name: &serde_json::Value| {
            of_kind(docs, "ConfigMap")
                .into_iter()
                .find(|c| c["metadata"]["name"] == *cm_name)
                .unwrap_or_else(|| panic!("{what}/{name}: no ConfigMap {cm_name}"))["data"]
                .as_object()
                .expect("data")
                .clone()
        };
        let files = data(&cm_name);
        let text = files["bootfabric.toml"].as_str().expect("bootfabric.toml");
        let all: String = files.values().filter_map(|v| v.as_str()).collect();
        assert!(
            !all.contains("insecure"),
            "{what}/{name}: a BMC's TLS check is skipped"
        );
        assert!(
            text.contains("token_file = "),
            "{what}/{name}: no admin token"
        );
        // The daemon's container; the init container's check opens only what the
        // materialized check below gives it.
        for c in [main] {
            let mounts: Vec<&str> = c["volumeMounts"]
                .as_array()
                .expect("mounts")
                .iter()
                .filter_map(|m| m["mountPath"].as_str())
                .collect();
            for path in absolute_paths(&all) {
                assert!(
                    mounts
                        .iter()
                        .any(|m| path == *m || path.starts_with(&format!("{m}/"))),
                    "{what}/{name}: {} sees no volume at {path}",
                    c["name"]
                );
            }
            assert_eq!(
                c["securityContext"]["runAsUser"], 0,
                "{what}/{name}: {}",
                c["name"]
            );
        }

        // Each container's volumes, made real under a temporary root: the config checks
        // with what the volumes bring and nothing else.
        for c in [init, main] {
            let root = TempDir::new().expect("tempdir");
            let mut config = None;
            for m in c["volumeMounts"].as_array().expect("mounts") {
                let at = m["mountPath"].as_str().expect("mountPath");
                let dir = root.path.join(at.trim_start_matches('/'));
                std::fs::create_dir_all(&dir).expect("dir");
                let v = volume(m["name"].as_str().expect("name"));
                if v["configMap"].is_object() {
                    for (file, body) in data(&v["configMap"]["name"]) {
                        let body = body.as_str().expect("text");
                        if file == "bootfabric.toml" {
                            config = Some(Path::new(at).join(file));
                        } else {
                            std::fs::write(
                                dir.join(&file),
                                body.replace("= \"/", &format!("= \"{}/", root.path.display())),
                            )
                            .expect("file");
                        }
                    }
                } else if v["hostPath"]["path"] == "/srv/bootfabric" {
                    // The node's layout (docs/packaging.md).
                    for sub in ["tftp", "images"] {
                        std::fs::create_dir_all(dir.join(sub)).expect("dir");
                    }
                }
            }
            let at = config
                .unwrap_or_else(|| panic!("{what}/{name}: {} has no bootfabric.toml", c["name"]));
            let path = rooted(&root.path, &at, text, &[]);
            let out = check_config_only(&path);
            assert!(out.contains("OK"), "{what}/{name}/{}: {out}", c["name"]);
            assert!(
                out.contains("1 host(s), 1 profile(s)"),
                "{what}/{name}: {out}"
            );
            let cfg = bootfabric::config::Config::load(&path).expect("config");
            assert_control_off_dhcp_subnets(what, &cfg);
        }
    }
    selectors
}

#[test]
fn kubernetes_config_validates_and_keeps_control_off_the_provisioning_network() {
    let t = "kubernetes_config_validates_and_keeps_control_off_the_provisioning_network";
    if !require_yaml(t) {
        return;
    }
    let docs = yaml_docs(&deploy().join("kubernetes/bootfabric.yaml"));
    assert_single_fabric_pods("bootfabric.yaml", &docs);
}

#[test]
fn kubernetes_fabric_overlays_build_and_every_rack_config_validates() {
    let t = "kubernetes_fabric_overlays_build_and_every_rack_config_validates";
    if !require_yaml(t) || !require(have_program("kubectl"), t, "kubectl (kustomize) is missing") {
        return;
    }
    let scratch = TempDir::new().expect("tempdir");
    let docs = kustomize(&deploy().join("kubernetes/fabric"), &scratch.path);
    let selectors = assert_single_fabric_pods("fabric", &docs);
    assert!(selectors.len() >= 2, "{selectors:?}");
    let distinct: BTreeSet<&String> = selectors.iter().collect();
    assert_eq!(
        distinct.len(),
        selectors.len(),
        "two racks on one node selector"
    );
    assert!(
        of_kind(&docs, "StatefulSet").is_empty(),
        "no etcd in single-fabric mode"
    );
}

/// `kubernetes-validate` (PyPI; bundles the schemas, so it runs offline): on PATH, else as
/// python3's module.
fn kubernetes_validate() -> Option<Command> {
    if have_program("kubernetes-validate") {
        return Some(Command::new("kubernetes-validate"));
    }
    let mut c = Command::new("python3");
    c.args(["-m", "kubernetes_validate"]);
    let works = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    works.then_some(c)
}

#[test]
fn kubernetes_manifests_and_overlays_validate_against_the_schemas() {
    let t = "kubernetes_manifests_and_overlays_validate_against_the_schemas";
    let validator = kubernetes_validate();
    if !require(
        validator.is_some(),
        t,
        "kubernetes-validate is missing (cargo xtask setup)",
    ) || !require(have_program("kubectl"), t, "kubectl (kustomize) is missing")
    {
        return;
    }
    let scratch = TempDir::new().expect("tempdir");
    let k8s = deploy().join("kubernetes");
    let mut files = vec![k8s.join("bootfabric.yaml")];
    for overlay in ["fabric", "cluster/with-etcd", "cluster/existing-etcd"] {
        let yaml = run(Command::new("kubectl")
            .arg("kustomize")
            .arg(k8s.join(overlay)))
        .unwrap_or_else(|e| panic!("{overlay}: {e}"));
        let file = scratch
            .path
            .join(format!("{}.yaml", overlay.replace('/', "-")));
        std::fs::write(&file, yaml).expect("built");
        files.push(file);
    }
    for file in files {
        // --strict: a field the schema does not know (a typo) fails too.
        let mut cmd = kubernetes_validate().expect("validator");
        let out = cmd
            .args(["--strict", "--quiet"])
            .arg(&file)
            .output()
            .expect("kubernetes-validate");
        assert!(
            out.status.success(),
            "{}: {}{}",
            file.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn container_image_has_every_folder_its_config_names() {
    let file = std::fs::read_to_string(deploy().join("container/Containerfile")).expect("file");
    let config_text =
        std::fs::read_to_string(deploy().join("container/bootfabric.toml")).expect("config");
    // The image's own config is the one it runs by default, and not as root.
    assert!(file.contains("COPY deploy/container/bootfabric.toml /etc/bootfabric/bootfabric.toml"));
    assert!(
        file.contains("\nUSER bootfabric\n"),
        "the image runs as root"
    );
    assert!(file.contains("CMD [\"serve\", \"--config\", \"/etc/bootfabric/bootfabric.toml\"]"));
    // The folders the image creates: every path of the `install -d` commands.
    let created: BTreeSet<&str> = file
        .split("install -d")
        .skip(1)
        .flat_map(|rest| {
            rest.split("&&")
                .next()
                .unwrap_or("")
                .split_whitespace()
                .filter(|w| w.starts_with('/'))
        })
        .collect();
    let root = TempDir::new().expect("tempdir");
    for d in &created {
        std::fs::create_dir_all(root.path.join(d.trim_start_matches('/'))).expect("dir");
    }
    // COPY deploy/examples/configs/ /etc/bootfabric/configs/ and the inventory.
    copy_tree(
        &deploy().join("examples/configs"),
        &root.path.join("etc/bootfabric/configs"),
    );
    std::fs::copy(
        deploy().join("examples/hosts.toml"),
        root.path.join("etc/bootfabric/hosts.toml"),
    )
    .expect("hosts");
    for path in absolute_paths(&config_text) {
        let parent_created = created
            .iter()
            .any(|d| path == *d || Path::new(&path).parent() == Some(Path::new(d)));
        assert!(
            parent_created,
            "the image has no folder for {path}: {created:?}"
        );
    }
    let path = rooted(
        &root.path,
        Path::new("/etc/bootfabric/bootfabric.toml"),
        &config_text,
        &[],
    );
    let out = check_config_only(&path);
    assert!(
        out.contains("OK") && out.contains("3 host(s), 4 profile(s)"),
        "{out}"
    );
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
        unit.replace("/usr/bin/bootfabric", &bin.display().to_string()),
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

#[test]
fn alert_rules_pass_their_unit_tests() {
    let t = "alert_rules_pass_their_unit_tests";
    if !require(
        have_program("promtool"),
        t,
        "promtool is missing (cargo xtask setup)",
    ) {
        return;
    }
    // XDP off pages nobody (a warning only), a stopped DHCP service pages, and the boot
    // failures alert resolves once failures stop (deploy/prometheus/alerts.test.yml).
    let out = run(Command::new("promtool")
        .args(["test", "rules"])
        .arg(deploy().join("prometheus/alerts.test.yml")))
    .expect("promtool test rules");
    assert!(out.contains("SUCCESS"), "{out}");
}

/// The highest `systemd-analyze security` exposure the unit may score: measured 2.0 with
/// systemd 252 (docs/packaging.md), so a change that widens the sandbox fails here.
const EXPOSURE_MAX: f64 = 2.0;

#[test]
fn systemd_unit_sandbox_exposure_is_low() {
    let t = "systemd_unit_sandbox_exposure_is_low";
    if !require(
        have_program("systemd-analyze"),
        t,
        "systemd-analyze is missing",
    ) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let unit = dir.path.join("bootfabric.service");
    std::fs::copy(deploy().join("systemd/bootfabric.service"), &unit).expect("unit");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .current_dir(&dir.path)
        .output()
        .expect("systemd-analyze security");
    let text = String::from_utf8_lossy(&out.stdout);
    let level = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for bootfabric.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    eprintln!("{t}: exposure {level}");
    assert!(
        level <= EXPOSURE_MAX,
        "exposure {level} > {EXPOSURE_MAX}:\n{text}"
    );
    // The settings the exposure rests on, by name: a unit that lost them would still
    // score, just higher, so say which.
    let unit = std::fs::read_to_string(&unit).expect("unit");
    for setting in [
        "Type=notify",
        "WatchdogSec=",
        "User=bootfabric",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateDevices=yes",
        "MemoryDenyWriteExecute=yes",
        "SystemCallArchitectures=native",
        "RestrictAddressFamilies=",
    ] {
        assert!(unit.contains(setting), "the unit lost {setting}");
    }
}

#[test]
fn man_pages_render_and_completions_load() {
    let t = "man_pages_render_and_completions_load";
    if !require(
        have_program("groff") && have_program("bash"),
        t,
        "groff or bash is missing (cargo xtask setup)",
    ) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    run(Command::new(bootfabric_bin())
        .args(["man", "--out"])
        .arg(&dir.path))
    .expect("bootfabric man");
    let pages: Vec<PathBuf> = std::fs::read_dir(&dir.path)
        .expect("pages")
        .flatten()
        .map(|e| e.path())
        .collect();
    let names: BTreeSet<String> = pages
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .collect();
    for page in [
        "bootfabric.1",
        "bootfabric-serve.1",
        "bootfabric-check.1",
        "bootfabric-hosts.1",
        "bootfabric-completions.1",
    ] {
        assert!(names.contains(page), "no {page} in {names:?}");
    }
    // The hidden `man` is for packaging; `help` is clap's.
    assert!(!names.contains("bootfabric-man.1"), "{names:?}");
    assert!(!names.contains("bootfabric-help.1"), "{names:?}");
    for page in &pages {
        // As man renders it (-k: preconv, for the UTF-8 of the help texts); -ww: every
        // warning; -z: no output, so only the warnings print.
        let out = Command::new("groff")
            .args(["-k", "-man", "-Tutf8", "-ww", "-z"])
            .arg(page)
            .output()
            .expect("groff");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && stderr.trim().is_empty(),
            "{}: {stderr}",
            page.display()
        );
    }
    if have_program("man") {
        let text = run(Command::new("man")
            .args(["--warnings", "-l"])
            .arg(dir.path.join("bootfabric-check.1"))
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "80"))
        .expect("man -l");
        assert!(text.contains("--config-only"), "{text}");
    }

    let bash = dir.path.join("bootfabric.bash");
    let script = run(Command::new(bootfabric_bin()).args(["completions", "bash"]))
        .expect("completions bash");
    std::fs::write(&bash, script).expect("script");
    let loaded = run(Command::new("bash")
        .arg("-c")
        .arg("source \"$1\" && complete -p bootfabric")
        .arg("bash")
        .arg(&bash))
    .expect("bash loads the completion");
    assert!(
        loaded.contains("complete ") && loaded.contains("bootfabric"),
        "{loaded}"
    );
    // The other shells parse theirs where they are installed.
    for (shell, check) in [("zsh", "-n"), ("fish", "--no-execute")] {
        let script = run(Command::new(bootfabric_bin()).args(["completions", shell]))
            .unwrap_or_else(|e| panic!("completions {shell}: {e}"));
        assert!(script.contains("bootfabric"), "{shell}: {script}");
        if have_program(shell) {
            let file = dir.path.join(format!("bootfabric.{shell}"));
            std::fs::write(&file, script).expect("script");
            run(Command::new(shell).arg(check).arg(&file))
                .unwrap_or_else(|e| panic!("{shell}: {e}"));
        }
    }
}

/// The repository root.
fn repo() -> PathBuf {
    deploy().join("..")
}

/// Programs the package build needs (dpkg-dev, binutils; `cargo xtask setup`).
fn require_packaging(t: &str) -> bool {
    bootfabric_lab::require_programs(
        t,
        &["dpkg-deb", "dpkg-shlibdeps", "strip", "gzip", "md5sum"],
    )
}

/// The package of the binary under test, built into `dir`.
fn package(dir: &Path) -> PathBuf {
    bootfabric_lab::deb::build(&repo(), &bootfabric_bin(), &dir.join("out")).expect("package")
}

#[test]
fn debian_package_holds_the_documented_files_and_passes_lintian() {
    let t = "debian_package_holds_the_documented_files_and_passes_lintian";
    if !require_packaging(t) {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let deb = package(&dir.path);
    let name = deb
        .file_name()
        .expect("name")
        .to_string_lossy()
        .into_owned();
    let arch = bootfabric_lab::deb::architecture().expect("arch");
    assert_eq!(
        name,
        format!(
            "bootfabric_{}_{arch}.deb",
            bootfabric_lab::deb::version(&repo()).expect("version")
        )
    );

    let info = run(Command::new("dpkg-deb").arg("--info").arg(&deb)).expect("--info");
    let field = |f: &str| {
        info.lines()
            .find_map(|l| l.trim().strip_prefix(&format!("{f}: ")))
            .unwrap_or_else(|| panic!("no {f}:\n{info}"))
            .to_owned()
    };
    let depends = field("Depends");
    for dep in ["ipxe", "adduser", "libc6"] {
        assert!(
            depends.split(',').any(|d| d.trim().starts_with(dep)),
            "Depends: {depends}"
        );
    }
    assert_eq!(field("Package"), "bootfabric");
    for script in [
        "postinst",
        "prerm",
        "postrm",
        "conffiles",
        "triggers",
        "md5sums",
    ] {
        assert!(info.contains(&format!(" {script}")), "no {script}:\n{info}");
    }
    let ctl = dir.path.join("ctl");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl)).expect("control files");
    let conffiles = std::fs::read_to_string(ctl.join("conffiles")).expect("conffiles");
    for c in bootfabric_lab::deb::CONFFILES {
        assert!(conffiles.lines().any(|l| l == *c), "{c} not a conffile");
    }
    // The maintainer scripts parse as POSIX sh (they run as root on install: they are not
    // run here, where they would change the machine; lintian reads them below).
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(ctl.join(script)))
            .unwrap_or_else(|e| panic!("{script}: {e}"));
    }

    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb)).expect("--contents");
    for line in contents.lines() {
        assert!(line.contains(" root/root "), "not root's: {line}");
    }
    let has = |path: &str| contents.lines().any(|l| l.ends_with(path));
    // What may hold secrets once edited is not world-readable (postinst adds the group).
    let mode_of = |path: &str| {
        contents
            .lines()
            .find(|l| l.ends_with(&format!(" .{path}")))
            .and_then(|l| l.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {path} in:\n{contents}"))
            .to_owned()
    };
    for path in bootfabric_lab::deb::GROUP_READABLE {
        assert_eq!(mode_of(path), "-rw-r-----", "{path}");
    }
    assert_eq!(mode_of("/etc/bootfabric/bootfabric.toml"), "-rw-r--r--");
    for path in [
        "./usr/bin/bootfabric",
        "./lib/systemd/system/bootfabric.service",
        "./etc/bootfabric/bootfabric.toml",
        "./etc/bootfabric/hosts.toml",
        "./etc/bootfabric/configs/flatcar.ign",
        "./var/lib/bootfabric/tftp/",
        "./var/lib/bootfabric/images/",
        "./usr/share/man/man1/bootfabric.1.gz",
        "./usr/share/man/man1/bootfabric-serve.1.gz",
        "./usr/share/bash-completion/completions/bootfabric",
        "./usr/share/zsh/vendor-completions/_bootfabric",
        "./usr/share/fish/vendor_completions.d/bootfabric.fish",
        "./usr/share/doc/bootfabric/copyright",
        "./usr/share/doc/bootfabric/changelog.Debian.gz",
        "./usr/share/doc/bootfabric/docs/configuration.md",
    ] {
        assert!(has(path), "no {path} in:\n{contents}");
    }
    // The packaged unit runs the packaged binary.
    let unit = std::fs::read_to_string(deploy().join("systemd/bootfabric.service")).expect("unit");
    for line in unit.lines().filter(|l| l.starts_with("Exec")) {
        let program = line
            .split_once('=')
            .and_then(|(_, cmd)| cmd.split_whitespace().next())
            .unwrap_or_default();
        assert!(
            program == "/usr/bin/bootfabric" || program == "/bin/kill",
            "{line}"
        );
    }

    if !require(
        have_program("lintian"),
        t,
        "lintian is missing (cargo xtask setup)",
    ) {
        return;
    }
    // Errors fail; warnings are printed (docs/packaging.md lists the ones kept, and why).
    let out = Command::new("lintian")
        .args(["--tag-display-limit", "0", "--display-info"])
        .arg(&deb)
        .output()
        .expect("lintian");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    eprintln!("{t}: lintian:\n{text}");
    let errors: Vec<&str> = text.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{}", errors.join("\n"));
}

/// The unit's AmbientCapabilities, as setpriv names them (`bpf`, `net_admin`, …).
fn unit_capabilities() -> Vec<String> {
    let unit = std::fs::read_to_string(deploy().join("systemd/bootfabric.service")).expect("unit");
    let caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities")
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_lowercase())
        .collect();
    let bounding = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet");
    assert_eq!(
        bounding.split_whitespace().count(),
        caps.len(),
        "the bounding set is the ambient set"
    );
    caps
}

/// The user the extracted package runs as: `nobody`, so that the test adds no user to the
/// machine (the package's postinst adds `bootfabric`). Its group (`nogroup` on Debian, the
/// same id) stands for the `bootfabric` group, which may read the inventory and configs.
const NOBODY: u32 = 65534;

/// The postinst's definitions: the text before its first step (`case "$1" in`), checked to
/// be only assignments and functions, so that sourcing it runs nothing.
fn postinst_definitions(postinst: &Path) -> String {
    let text = std::fs::read_to_string(postinst).expect("postinst");
    let (defs, _) = text
        .split_once("\ncase \"$1\" in\n")
        .expect("the postinst's steps start with `case \"$1\" in`");
    for line in defs.lines() {
        let top = !line.starts_with(['\t', ' ']);
        let harmless = line.is_empty()
            || line.starts_with('#')
            || line == "}"
            || line == "set -e"
            || line.ends_with("() {")
            || line
                .split_once('=')
                .is_some_and(|(k, _)| k.chars().all(|c| c.is_ascii_uppercase() || c == '_'));
        assert!(!top || harmless, "postinst runs `{line}` before its steps");
    }
    defs.to_owned()
}

/// Runs `calls` after the postinst's definitions, as root (as dpkg runs it), with the
/// paths moved under `root` (`var/lib/bootfabric`, `etc/bootfabric`), iPXE taken from
/// `ipxe`, and [`NOBODY`] and its group for `bootfabric`: the root-run steps of `configure`
/// (`configure_files`) and `triggered` (`copy_ipxe`), on no path of the machine's. What
/// they print (warnings) is returned.
fn postinst_steps(
    postinst: &Path,
    root: &Path,
    ipxe: &Path,
    calls: &str,
) -> Result<String, bootfabric_lab::LabError> {
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(NOBODY))
        .expect("getgrgid")
        .expect("a group of id 65534")
        .name;
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(NOBODY))
        .expect("getpwuid")
        .expect("a user of id 65534")
        .name;
    let script = format!(
        "{}\nSTATE='{}'\nETC='{}'\nIPXE='{}'\nDAEMON_USER='{user}'\nDAEMON_GROUP='{group}'\n{calls} 2>&1\n",
        postinst_definitions(postinst),
        root.join("var/lib/bootfabric").display(),
        root.join("etc/bootfabric").display(),
        ipxe.display(),
    );
    run(Command::new("sh").arg("-c").arg(script))
}

/// `setpriv` running `program` as [`NOBODY`] with exactly `caps` (ambient, inheritable and
/// bounding) and no_new_privs: what the unit's User=, AmbientCapabilities=,
/// CapabilityBoundingSet= and NoNewPrivileges= give the daemon.
fn as_unit_user(mut cmd: Command, caps: &[String], program: &Path) -> Command {
    let plus = caps
        .iter()
        .map(|c| format!("+{c}"))
        .collect::<Vec<_>>()
        .join(",");
    cmd.arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .arg("--clear-groups")
        .arg("--no-new-privs")
        .arg(format!("--inh-caps=-all,{plus}"))
        .arg(format!("--ambient-caps=-all,{plus}"))
        .arg(format!("--bounding-set=-all,{plus}"))
        .arg(program);
    cmd
}

#[test]
fn installed_package_serves_as_a_non_root_user_with_the_units_capabilities() {
    let t = "installed_package_serves_as_a_non_root_user_with_the_units_capabilities";
    let ipxe = Path::new(bootfabric_lab::deb::IPXE_DIR);
    if !bootfabric_lab::require_root(t)
        || !require_packaging(t)
        || !bootfabric_lab::require_programs(t, &["setpriv", "curl", "tftp", "timeout"])
        || !require(
            ipxe.join("undionly.kpxe").is_file(),
            t,
            "the ipxe package is missing (cargo xtask setup)",
        )
    {
        return;
    }
    let dir = TempDir::new().expect("tempdir");
    let deb = package(&dir.path);
    // Installed by extraction into a root of its own: never onto the machine's.
    let root = dir.path.join("root");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root)).expect("dpkg-deb -x");

    // What postinst's `configure` does after adding the user, in that root: the package's
    // own postinst functions, with [`NOBODY`] for `bootfabric` (the state folders to the
    // user, the inventory and configs, shipped 0640, to its group so that it can read them,
    // iPXE copied into the TFTP root as the user).
    let ctl = dir.path.join("ctl");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&ctl)).expect("control files");
    postinst_steps(&ctl.join("postinst"), &root, ipxe, "configure_files")
        .expect("postinst's configure_files");
    let state = root.join("var/lib/bootfabric");
    for f in bootfabric_lab::deb::GROUP_READABLE {
        let meta = std::fs::metadata(root.join(f.trim_start_matches('/'))).expect("config");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (0, NOBODY, 0o640),
            "{f}"
        );
    }
    std::fs::write(state.join("images/hello.txt"), "served from the package\n").expect("file");
    // The shipped config, its absolute paths moved under the root.
    let config = root.join("etc/bootfabric/bootfabric.toml");
    let text = std::fs::read_to_string(&config).expect("config");
    std::fs::write(
        &config,
        text.replace("= \"/", &format!("= \"{}/", root.display())),
    )
    .expect("config");
    let bin = root.join("usr/bin/bootfabric");
    let caps = unit_capabilities();

    // ExecStartPre, as the unit's user.
    let mut check = as_unit_user(Command::new("setpriv"), &caps, &bin);
    check
        .args(["check", "--config-only", "--config"])
        .arg(&config);
    let out = run(&mut check).expect("check --config-only");
    assert!(out.contains("OK"), "{out}");

    // The config's provisioning interface and subnet, on a veth to a client namespace.
    let server = bootfabric_lab::Netns::new("pkgsrv").expect("netns");
    let client = bootfabric_lab::Netns::new("pkgcli").expect("netns");
    bootfabric_lab::veth(
        &server,
        "fabric0",
        "10.77.0.1/24",
        &client,
        "client0",
        "10.77.0.50/24",
    )
    .expect("veth");
    // The client's broadcasts leave by its only link.
    client
        .ip(&["route", "add", "default", "dev", "client0"])
        .expect("route");

    // ExecStart, as the unit's user with the unit's capabilities only.
    let log_path = dir.path.join("serve.log");
    let log = std::fs::File::create(&log_path).expect("log");
    let mut serve = as_unit_user(server.command("setpriv"), &caps, &bin);
    serve
        .args(["serve", "--config"])
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log);
    let mut daemon = bootfabric_lab::KillOnDrop(serve.spawn().expect("serve"));
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let curl = |ns: &bootfabric_lab::Netns, url: &str| {
        run(ns.command("curl").args(["-sf", "--max-time", "10", url]))
    };

    // Ready once /healthz answers; bounded, and failing at once if the daemon exits.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        if let Ok(Some(status)) = daemon.0.try_wait() {
            panic!("serve exited ({status}):\n{}", log());
        }
        if curl(&server, "http://127.0.0.1:9370/healthz").is_ok() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no /healthz after 60 s:\n{}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }

    // XDP attached with these capabilities alone (no fallback to userspace).
    let metrics = curl(&server, "http://127.0.0.1:9370/metrics").expect("metrics");
    let attached = ["native", "generic"].iter().any(|mode| {
        bootfabric_lab::sample(
            &metrics,
            "bootfabric_xdp_attach_mode",
            &[("iface", "fabric0"), ("mode", mode)],
        ) == Some(1.0)
    });
    assert!(attached, "XDP not attached:\n{}", log());
    assert!(metrics.contains("process_open_fds "), "no process metrics");

    // DHCP: the inventory's rack1-node01 gets its reserved address.
    let outcome = client
        .run(|| {
            let c = bootfabric_lab::dhcp_client::Client::bind().expect("bind :68");
            c.lease(
                [0x52, 0x54, 0x00, 0xb0, 0x0f, 0x01],
                0x0b00_7f01,
                std::time::Duration::from_secs(3),
            )
            .expect("lease")
        })
        .expect("client namespace");
    assert_eq!(
        outcome,
        bootfabric_lab::dhcp_client::Outcome::Ack(
            std::net::Ipv4Addr::new(10, 77, 0, 11),
            std::net::Ipv4Addr::new(10, 77, 0, 1)
        ),
        "{}",
        log()
    );

    // TFTP: iPXE, with tftp-hpa.
    let got = dir.path.join("undionly.kpxe");
    run(&mut client.tftp_get("undionly.kpxe", &got, Some(30))).expect("tftp get");
    assert_eq!(
        std::fs::read(&got).expect("got"),
        std::fs::read(ipxe.join("undionly.kpxe")).expect("ipxe"),
        "TFTP served other bytes"
    );

    // HTTP: a file of the HTTP root.
    let body = curl(&client, "http://10.77.0.1/hello.txt").expect("http");
    assert_eq!(body, "served from the package\n");

    // SIGTERM, as systemd stops it: a clean exit.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(daemon.0.id()).expect("pid")),
        nix::sys::signal::Signal::SIGTERM,
    )
    .expect("SIGTERM");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Ok(Some(status)) = daemon.0.try_wait() {
            break status;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no exit 30 s after SIGTERM:\n{}",
            log()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    assert!(status.success(), "{status}:\n{}", log());
}

/// uid, gid and permission bits of `path` itself (a link's own, not its target's).
fn owner_mode(path: &Path) -> (u32, u32, u32) {
    let meta =
        std::fs::symlink_metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid(), meta.mode() & 0o7777)
}

#[test]
fn postinst_follows_no_link_the_daemons_user_plants_in_its_state_folder() {
    let t = "postinst_follows_no_link_the_daemons_user_plants_in_its_state_folder";
    if !bootfabric_lab::require_root(t)
        || !bootfabric_lab::require_programs(t, &["setpriv", "dpkg-statoverride", "install"])
    {
        return;
    }
    let postinst = deploy().join("debian/postinst");
    let dir = TempDir::new().expect("tempdir");
    let root = dir.path.join("root");
    let state = root.join("var/lib/bootfabric");
    let etc = root.join("etc/bootfabric");
    let mode = |p: &Path, m: u32| {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
    };
    let write = |p: &Path, text: &str, m: u32| {
        std::fs::create_dir_all(p.parent().expect("folder")).expect("folder");
        std::fs::write(p, text).expect("write");
        mode(p, m);
    };

    // What a compromised daemon leaves before an upgrade: its TFTP root swapped for a link
    // to a folder of root's (standing for /etc), a config template a link to a secret of
    // root's. As dpkg unpacked them, the state folders and configs are root's.
    let victim = dir.path.join("victim");
    write(&victim.join("shadow"), "root's\n", 0o600);
    mode(&victim, 0o755);
    std::fs::create_dir_all(state.join("images")).expect("images");
    std::os::unix::fs::symlink(&victim, state.join("tftp")).expect("symlink");
    write(&etc.join("hosts.toml"), "[[hosts]]\n", 0o640);
    write(&etc.join("configs/flatcar.ign"), "{}\n", 0o640);
    write(&etc.join("bootfabric.toml"), "", 0o644);
    let secret = dir.path.join("secret");
    write(&secret, "root's\n", 0o600);
    std::os::unix::fs::symlink(&secret, etc.join("configs/kairos.yaml")).expect("symlink");
    let ipxe = dir.path.join("ipxe");
    write(&ipxe.join("undionly.kpxe"), "iPXE for BIOS\n", 0o644);
    write(&ipxe.join("ipxe.efi"), "iPXE for UEFI\n", 0o644);

    // configure, twice: an upgrade runs it again, and set -e must hold.
    for _ in 0..2 {
        let out = postinst_steps(&postinst, &root, &ipxe, "configure_files").expect("configure");
        assert!(out.contains("is not a folder"), "no warning: {out}");
    }
    // The link's target is untouched: owner, mode, and nothing copied into it.
    assert_eq!(owner_mode(&victim), (0, 0, 0o755), "the link was followed");
    assert_eq!(owner_mode(&victim.join("shadow")), (0, 0, 0o600));
    assert_eq!(
        std::fs::read_dir(&victim).expect("victim").count(),
        1,
        "iPXE copied into the link's target"
    );
    assert!(state.join("tftp").is_symlink());
    assert_eq!(
        owner_mode(&secret),
        (0, 0, 0o600),
        "chgrp followed the link"
    );
    // The real folders and files got what they should.
    for d in [&state, &state.join("images")] {
        assert_eq!(owner_mode(d), (NOBODY, NOBODY, 0o750), "{}", d.display());
    }
    for f in ["hosts.toml", "configs/flatcar.ign"] {
        assert_eq!(owner_mode(&etc.join(f)), (0, NOBODY, 0o640), "{f}");
    }
    assert_eq!(owner_mode(&etc.join("bootfabric.toml")), (0, 0, 0o644));

    // The trigger, into a real TFTP root of the daemon's user where a link stands in
    // iPXE's place: the link is replaced, its target (a file of root's) left as it was.
    std::fs::remove_file(state.join("tftp")).expect("unlink");
    std::fs::create_dir(state.join("tftp")).expect("tftp");
    let target = dir.path.join("passwd");
    write(&target, "root's\n", 0o644);
    std::os::unix::fs::symlink(&target, state.join("tftp/undionly.kpxe")).expect("symlink");
    let out = postinst_steps(&postinst, &root, &ipxe, "configure_files").expect("configure");
    assert!(!out.contains("is not a folder"), "{out}");
    assert_eq!(owner_mode(&state.join("tftp")), (NOBODY, NOBODY, 0o750));
    for _ in 0..2 {
        postinst_steps(&postinst, &root, &ipxe, "copy_ipxe").expect("triggered");
    }
    assert_eq!(
        std::fs::read_to_string(&target).expect("target"),
        "root's\n"
    );
    assert_eq!(owner_mode(&target), (0, 0, 0o644));
    for (f, text) in [
        ("undionly.kpxe", "iPXE for BIOS\n"),
        ("ipxe.efi", "iPXE for UEFI\n"),
    ] {
        let copied = state.join("tftp").join(f);
        assert!(!copied.is_symlink(), "{f}");
        assert_eq!(std::fs::read_to_string(&copied).expect("copied"), text);
        assert_eq!(owner_mode(&copied), (NOBODY, NOBODY, 0o644), "{f}");
    }
}
