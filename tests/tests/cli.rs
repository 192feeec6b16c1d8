//! `bootfabric hosts` against a running daemon: the command line run from a controller's
//! namespace with the admin token, as an operator would, adding, changing, showing and
//! removing a host; `--output json` parsed as the stable document it promises; refusals
//! printed as one problem line with the right exit code; `hosts` with no daemon
//! answering listing the local inventory instead; and `leases` and `check` as documents.

use std::process::Command;

use bootfabric_lab::{
    bootfabric_bin, have_program, require, require_root, run, Daemon, Netns, PairLab, TempDir,
};
use serde_json::Value;

/// Exit code, stdout, stderr of the CLI run inside `ns` (`ip netns exec`).
fn cli_in(ns: &Netns, args: &[&str]) -> (i32, String, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name()])
        .arg(bootfabric_bin())
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run the cli");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: not JSON: {text}"))
}

const INVENTORY: &str = r#"[profiles.linux]
kernel = "linux/vmlinuz"

[profiles.rescue]
kernel = "rescue/vmlinuz"

[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.11"
profile = "linux"
"#;

#[test]
fn hosts_commands_drive_the_api_and_print_parseable_json() {
    if !require_root("hosts_commands_drive_the_api_and_print_parseable_json") {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let secret = TempDir::new().expect("tempdir");
    let token_file = secret.path.join("admin.token");
    run(Command::new(bootfabric_bin())
        .args(["admin", "token", "create", "--file"])
        .arg(&token_file))
    .expect("token create");
    let config = format!(
        r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "10.77.0.1:0"
allow = ["10.77.0.0/24"]
token_file = "{}"
[xdp]
mode = "off"
"#,
        token_file.display()
    );
    // node01 has DHCP options: `--output json` must carry every field the API sends.
    let inventory = format!("{INVENTORY}options = {{ domain = \"lab.example\" }}\n");
    let daemon =
        Daemon::start(&lab.server, &config, &[("hosts.toml", &inventory)]).expect("daemon");
    // The controller has no config of its own: the address and the token on the command line.
    let admin = daemon.admin.to_string();
    let token = token_file.to_string_lossy().into_owned();
    let none = secret.path.join("absent.toml");
    let none = none.to_string_lossy().into_owned();
    let with_api = |args: &[&str]| -> (i32, String, String) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--config", &none, "--admin", &admin, "--token-file", &token]);
        cli_in(&lab.client, &all)
    };

    // add: every option lands in the host.
    let (code, _, err) = with_api(&[
        "hosts",
        "add",
        "node02",
        "--mac",
        "52:54:00:b0:0f:02",
        "--ip",
        "10.77.0.12",
        "--profile",
        "linux",
        "--rack",
        "r1",
        "--netboot",
        "once",
        "--meta",
        "role=worker",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("added node02: generation"), "{err}");

    let (code, out, err) = with_api(&["hosts", "ls", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let list = json(&out);
    assert!(list["generation"].as_u64().is_some(), "{out}");
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|h| h["name"].as_str())
        .collect();
    assert_eq!(names, ["node01", "node02"], "{out}");
    let node02 = &list["items"][1];
    assert_eq!(node02["mac"], "52:54:00:b0:0f:02");
    assert_eq!(node02["ip"], "10.77.0.12");
    assert_eq!(node02["rack"], "r1");
    assert_eq!(node02["netboot"], "once");
    assert_eq!(node02["meta"]["role"], "worker");
    assert_eq!(node02["source"], "api");
    assert_eq!(list["items"][0]["source"], "file");
    assert_eq!(
        list["items"][0]["options"]["domain"], "lab.example",
        "{out}"
    );
    let (code, out, err) = with_api(&["hosts", "show", "node01", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(json(&out)["options"]["domain"], "lab.example", "{out}");

    // The filters reach the daemon: only node02 is a worker.
    let (code, out, err) = with_api(&["hosts", "ls", "--meta", "role=worker", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let items = json(&out)["items"].as_array().cloned().expect("items");
    assert_eq!(items.len(), 1, "{out}");
    assert_eq!(items[0]["name"], "node02");
    let (code, out, _) = with_api(&["hosts", "ls", "--profile", "linux"]);
    assert_eq!(code, 0);
    assert!(
        out.starts_with("NAME") && out.contains("node01") && out.contains("node02"),
        "{out}"
    );

    // set: a merge patch against the current ETag; null removes a key and the address.
    let (code, _, err) = with_api(&[
        "hosts",
        "set",
        "node02",
        "--profile",
        "rescue",
        "--netboot",
        "deny",
        "--meta",
        "tier=2",
        "--unset-meta",
        "role",
        "--no-ip",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("changed node02: generation"), "{err}");
    let (code, out, err) = with_api(&["hosts", "show", "node02", "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let h = json(&out);
    assert_eq!(h["profile"], "rescue", "{out}");
    assert_eq!(h["netboot"], "deny", "{out}");
    assert!(h["ip"].is_null(), "{out}");
    assert_eq!(h["meta"], serde_json::json!({"tier": "2"}), "{out}");
    let (code, out, _) = with_api(&["hosts", "show", "node02"]);
    assert_eq!(code, 0);
    assert!(out.contains("meta.tier") && out.contains("rescue"), "{out}");

    // Refusals: the API's problem as one line, exit 1; a usage error, exit 2.
    let (code, _, err) = with_api(&["hosts", "add", "bad", "--mac", "zz", "--profile", "linux"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("bootfabric: 422 "), "{err}");
    assert!(err.contains("mac: "), "{err}");
    let (code, _, err) = with_api(&["hosts", "set", "node02", "--profile", "nosuch"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("profile"), "{err}");
    let (code, _, err) = with_api(&["hosts", "set", "node02"]);
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = with_api(&["hosts", "add", "node03", "--mac", "52:54:00:b0:0f:03"]);
    assert_eq!(code, 2, "{err}");
    // Without the token the write is refused, and nothing changed.
    let (code, _, err) = cli_in(
        &lab.client,
        &[
            "hosts",
            "add",
            "node03",
            "--mac",
            "52:54:00:b0:0f:03",
            "--profile",
            "linux",
            "--config",
            &none,
            "--admin",
            &admin,
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.starts_with("bootfabric: 401"), "{err}");

    // rm, then the host is gone.
    let (code, _, err) = with_api(&["hosts", "rm", "node02"]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("removed node02"), "{err}");
    let (code, _, err) = with_api(&["hosts", "show", "node02"]);
    assert_eq!(code, 1);
    assert!(err.starts_with("bootfabric: 404"), "{err}");
    let (code, out, _) = with_api(&["hosts", "ls", "--output", "json"]);
    assert_eq!(code, 0);
    assert_eq!(
        json(&out)["items"].as_array().map(Vec::len),
        Some(1),
        "{out}"
    );

    // An API host for the offline listing to tell apart from the file's.
    let (code, _, err) = with_api(&[
        "hosts",
        "add",
        "node04",
        "--mac",
        "52:54:00:b0:0f:04",
        "--profile",
        "linux",
        "--meta",
        "role=db",
    ]);
    assert_eq!(code, 0, "{err}");

    // No daemon answering (the config's port is 0: nothing listens there): the local
    // inventory, the API's changes in state_dir included, as the API would list it, with a
    // note, as a document whose generation is null.
    let cfg = daemon.config_path().to_string_lossy().into_owned();
    let (code, out, err) = cli_in(
        &lab.client,
        &["hosts", "--config", &cfg, "--output", "json"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("listing the local inventory"), "{err}");
    let list = json(&out);
    assert!(list["generation"].is_null(), "{out}");
    assert_eq!(list["items"][0]["name"], "node01", "{out}");
    assert_eq!(list["items"][0]["source"], "file", "{out}");
    assert_eq!(
        list["items"][0]["options"]["domain"], "lab.example",
        "{out}"
    );
    assert_eq!(list["items"][1]["name"], "node04", "{out}");
    assert_eq!(list["items"][1]["source"], "api", "{out}");
    // Offline filters are the server's.
    let (code, out, err) = cli_in(
        &lab.client,
        &[
            "hosts", "ls", "--config", &cfg, "--meta", "role=db", "--output", "json",
        ],
    );
    assert_eq!(code, 0, "{err}");
    let items = json(&out)["items"].as_array().cloned().expect("items");
    assert_eq!(items.len(), 1, "{out}");
    assert_eq!(items[0]["name"], "node04", "{out}");
}

#[test]
fn leases_and_check_print_json_documents() {
    let t = "leases_and_check_print_json_documents";
    if !require_root(t)
        || !require(
            have_program("udhcpc"),
            t,
            "udhcpc is not installed (cargo xtask setup)",
        )
    {
        return;
    }
    let lab = PairLab::unaddressed_client("client0").expect("lab");
    lab.client
        .ip(&["link", "set", "client0", "address", "52:54:00:00:aa:07"])
        .expect("mac");
    let config = r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[dhcp.options]
lease_time = 600
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
[xdp]
mode = "off"
"#;
    let daemon = Daemon::start(&lab.server, config, &[("hosts.toml", INVENTORY)]).expect("daemon");
    // One lease, then udhcpc quits (-q); its script does nothing (/bin/true), so the
    // namespace keeps no address and nothing of the host is touched. Bounded by -t/-T.
    let got = lab
        .client
        .command("udhcpc")
        .args([
            "-q",
            "-n",
            "-i",
            "client0",
            "-t",
            "5",
            "-T",
            "2",
            "-s",
            "/bin/true",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("udhcpc");
    assert!(got.success(), "udhcpc got no lease:\n{}", daemon.log());

    let out = daemon
        .cli(&["leases", "--output", "json"])
        .expect("leases --output json");
    let list = json(&out);
    let items = list["items"].as_array().expect("items");
    assert_eq!(items.len(), 1, "{out}");
    assert_eq!(items[0]["mac"], "52:54:00:00:aa:07", "{out}");
    assert_eq!(items[0]["ip"], "10.77.0.100", "{out}");
    assert_eq!(items[0]["state"], "bound", "{out}");
    let left = items[0]["expires_in_s"].as_u64().expect("expires_in_s");
    assert!(left > 0 && left <= 600, "{out}");
    // The table for people lists the same lease.
    let text = daemon.cli(&["leases"]).expect("leases");
    assert!(
        text.contains("52:54:00:00:aa:07") && text.contains("bound"),
        "{text}"
    );

    // check from the client's namespace, where fabric0 does not exist: that item fails,
    // the document says so, and the exit status is 1 as for the table.
    let cfg = daemon.config_path().to_string_lossy().into_owned();
    let (code, out, err) = cli_in(
        &lab.client,
        &[
            "check",
            "--config",
            &cfg,
            "--skip",
            "xdp,bmc,dhcp,checksums",
            "--output",
            "json",
        ],
    );
    assert_eq!(code, 1, "{out}{err}");
    let report = json(&out);
    let items = report["items"].as_array().expect("items");
    let fabric = items
        .iter()
        .find(|i| i["name"] == "interface fabric0")
        .unwrap_or_else(|| panic!("no interface item: {out}"));
    assert_eq!(fabric["status"], "fail", "{out}");
    assert!(fabric["fix"].is_string(), "{out}");
    let failed = items.iter().filter(|i| i["status"] == "fail").count();
    assert_eq!(report["failed"].as_u64(), Some(failed as u64), "{out}");
    let count = |k: &str| report[k].as_u64().unwrap_or_else(|| panic!("{k}: {out}")) as usize;
    assert_eq!(
        count("passed") + count("warned") + failed,
        items.len(),
        "{out}"
    );
}
