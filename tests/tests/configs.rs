//! Attacks on provisioning configs and the `/booted` callback, made as a machine on the
//! provisioning network would make them: curl from a client namespace wearing a known host's
//! address (or a stranger's). Each of these was served before the fix (see the report of
//! issue 14); now each is refused, recorded and counted.

use std::{net::SocketAddr, path::PathBuf, process::Command, time::Duration};

use bootfabric_lab::{
    bootfabric_bin, dhcp_client, http_get, require_programs, require_root, sample, Bridge, Daemon,
    Netns, TempDir,
};

const INVENTORY: &str = r#"
[profiles.installer]
kernel = "debian/linux"
cmdline = "console=ttyS0 ignition.config.url={http_base}/configs/node.ign?nonce={nonce}"

[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.2"
profile = "installer"
rack = "r1"
meta = { role = "worker", disks = ["sda", "sdb"] }

[[hosts]]
name = "node02"
mac = "52:54:00:b0:0f:02"
ip = "10.77.0.12"
profile = "installer"

# No reservation: its address is whatever it leases.
[[hosts]]
name = "node03"
mac = "52:54:00:b0:0f:03"
profile = "installer"
"#;

/// A template on the engine: per-host metadata, a loop, conditionals for what a host lacks.
const ROLE: &str = "# {{ hostname }} ({{ host.mac }}), profile {{ profile.name }}
{% if meta.role is defined %}role: {{ meta.role }}
{% for d in meta.disks %}disk: {{ d }}
{% endfor %}{% else %}role: none
{% endif %}rack: {{ host.rack | default(\"-\") }}
nonce: {{ nonce }}
";

/// Renders at load (check's stand-in nonce is zeros) and runs out of fuel at a boot: the one
/// way a checked template can still fail at request time.
const SPIN: &str = "begin\n{% if nonce != \"00000000000000000000000000000000\" %}{% for i in range(1000) %}{% for j in range(1000) %}x{% endfor %}{% endfor %}{% endif %}end\n";

const NODE02_SECRET: &str = r#"{"only":"node02","token":"join-node02-secret"}"#;

/// A switch with the daemon's namespace and a client machine on it. Fields drop in order: the
/// daemon first, then the machines, then the switch.
struct Lab {
    daemon: Daemon,
    server: Netns,
    client: Netns,
    switch: Bridge,
    _dir: TempDir,
    out: TempDir,
}

/// The daemon in the server namespace (`fabric0`, 10.77.0.1), serving `configs/` (a shared
/// template and node02's override); the client machine has node01's reserved address,
/// 10.77.0.2.
fn lab(t: &str) -> Option<Lab> {
    lab_with(t, "")
}

/// [`lab`] with `extra` appended to the daemon's config (a `[dhcp]` section, say).
fn lab_with(t: &str, extra: &str) -> Option<Lab> {
    if !require_root(t) || !require_programs(t, &["curl"]) {
        return None;
    }
    let dir = TempDir::new().expect("dir");
    let images = dir.path.join("images");
    let configs = dir.path.join("configs");
    std::fs::create_dir_all(images.join("debian")).expect("images");
    std::fs::create_dir_all(configs.join("node02")).expect("configs");
    std::fs::write(images.join("debian/linux"), b"kernel").expect("kernel");
    std::fs::write(
        configs.join("node.ign"),
        r#"{"host":"{host}","token":"join-{host}","nonce":"{nonce}"}"#,
    )
    .expect("template");
    std::fs::write(configs.join("node02/node.ign"), NODE02_SECRET).expect("override");
    std::fs::write(configs.join("role.cfg"), ROLE).expect("template");
    std::fs::write(configs.join("spin.cfg"), SPIN).expect("template");
    let config = format!(
        "[daemon]\nstate_dir = \"state\"\ninventory = \"hosts.toml\"\n[fabric]\ninterfaces = [\"fabric0\"]\n[admin]\nlisten = \"127.0.0.1:0\"\n[xdp]\nmode = \"off\"\n[http]\nroot = \"{}\"\nconfigs = \"{}\"\nbackend = \"epoll\"\n",
        images.display(),
        configs.display()
    ) + extra;
    let mut switch = Bridge::new().expect("switch");
    let server = Netns::new("srv").expect("server");
    let client = Netns::new("node01").expect("client");
    switch
        .plug(&server, "fabric0", "10.77.0.1/24")
        .expect("server port");
    switch
        .plug(&client, "client0", "10.77.0.2/24")
        .expect("client port");
    let daemon = Daemon::start(&server, &config, &[("hosts.toml", INVENTORY)]).expect("daemon");
    Some(Lab {
        daemon,
        server,
        client,
        switch,
        _dir: dir,
        out: TempDir::new().expect("out"),
    })
}

impl Lab {
    /// curl from the client machine; see [`Lab::curl_from`].
    fn curl(&self, path: &str, args: &[&str]) -> (u16, String) {
        self.curl_from(&self.client, path, args)
    }

    /// curl from the machine `ns` (`--path-as-is`: the attacker's path reaches the server as
    /// typed; `-g`: braces are sent, not globbed); the status and the body.
    fn curl_from(&self, ns: &Netns, path: &str, args: &[&str]) -> (u16, String) {
        let body = self.out.path.join("body");
        let _ = std::fs::remove_file(&body);
        let out = ns
            .command("curl")
            .args(["-sS", "-g", "--path-as-is", "-o"])
            .arg(&body)
            .args(["-w", "%{http_code}"])
            .args(args)
            .arg(format!("http://10.77.0.1{path}"))
            .output()
            .expect("curl");
        assert!(
            out.status.success(),
            "curl {path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let status = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("status");
        (
            status,
            String::from_utf8_lossy(&std::fs::read(&body).unwrap_or_default()).into_owned(),
        )
    }

    fn add_address(&self, cidr: &str) {
        self.client
            .ip(&["addr", "add", cidr, "dev", "client0"])
            .expect("address");
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, text) = http_get(&self.server, self.daemon.admin, "/metrics").expect("metrics");
        sample(&text, name, labels).unwrap_or(0.0)
    }

    fn timeline(&self, mac: &str) -> String {
        http_get(
            &self.server,
            self.daemon.admin,
            &format!("/api/timeline?mac={mac}"),
        )
        .expect("timeline")
        .1
    }
}

#[test]
fn dot_and_empty_segments_do_not_reach_another_hosts_config() {
    let Some(l) = lab("dot_and_empty_segments_do_not_reach_another_hosts_config") else {
        return;
    };
    // node01's boot is in progress (its iPXE script was served), so only the path decides.
    assert_eq!(l.curl("/boot.ipxe", &[]).0, 200);
    for path in [
        "/configs/./node02/node.ign",
        "/configs/%2e/node02/node.ign",
        "/configs/%2E%2fnode02/node.ign",
        "/configs/node01//node02/node.ign",
        "/configs/node01/node02/node.ign",
        "/configs/node01/./node02/node.ign",
        "/configs/%252e/node02/node.ign",
        "/configs/.\\node02/node.ign",
    ] {
        let (status, body) = l.curl(path, &[]);
        assert!(
            status != 200 && !body.contains("node02"),
            "{path} from node01's address: {status} {body}"
        );
        assert!(
            status == 400 || status == 403,
            "{path}: {status} (refused as a bad path or another host's, before any lookup)"
        );
    }
    assert!(
        l.metric(
            "bootfabric_http_config_refused_total",
            &[("reason", "path")]
        ) >= 5.0
    );
    // node01's own config is still its own.
    let (status, body) = l.curl("/configs/node.ign", &[]);
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"host\":\"node01\""), "{body}");
}

#[test]
fn an_address_thief_gets_409_and_is_recorded() {
    let Some(mut l) = lab("an_address_thief_gets_409_and_is_recorded") else {
        return;
    };
    // node01 boots: its script, then its config, passing back the boot's nonce.
    let (status, script) = l.curl("/boot.ipxe", &[]);
    assert_eq!(status, 200, "{script}");
    let nonce = script
        .split("nonce=")
        .nth(1)
        .map(|s| s.split_whitespace().next().unwrap_or(""))
        .unwrap_or("");
    let (status, mine) = l.curl(&format!("/configs/node.ign?nonce={nonce}"), &[]);
    assert_eq!(status, 200, "{mine}");
    assert!(
        mine.contains("join-node01") && mine.contains(nonce),
        "{mine}"
    );
    // Then node01 goes quiet (powered off by a run, say) and another machine on the switch,
    // with its own MAC, takes node01's reserved address and asks for node01's config: with
    // no nonce, by the owner's folder, or with a guessed nonce.
    l.client
        .ip(&["link", "set", "client0", "down"])
        .expect("node01 off");
    let thief = Netns::new("thief").expect("thief");
    l.switch
        .plug(&thief, "client0", "10.77.0.2/24")
        .expect("thief port");
    let (status, stolen) = l.curl_from(&thief, "/configs/node.ign", &[]);
    assert_eq!(status, 409, "the thief got node01's config: {stolen}");
    assert!(!stolen.contains("join-node01"), "{stolen}");
    assert_eq!(nonce.len(), 32, "no 128-bit nonce in the script: {script}");
    let (status, stolen) = l.curl_from(&thief, "/configs/node01/node.ign", &[]);
    assert_eq!(status, 409, "{stolen}");
    let (status, stolen) = l.curl_from(
        &thief,
        "/configs/node.ign?nonce=00000000000000000000000000000000",
        &[],
    );
    assert_eq!(status, 403, "{stolen}");
    assert_eq!(
        l.metric(
            "bootfabric_http_config_refused_total",
            &[("reason", "again")]
        ),
        2.0
    );
    assert_eq!(
        l.metric(
            "bootfabric_http_config_refused_total",
            &[("reason", "nonce")]
        ),
        1.0
    );
    let timeline = l.timeline("52:54:00:b0:0f:01");
    for want in [
        "\"phase\":\"config_served\",\"ip\":\"10.77.0.2\",\"detail\":\"node.ign\"",
        "\"phase\":\"config_refused\",\"ip\":\"10.77.0.2\",\"detail\":\"again, first served to 10.77.0.2: node.ign\"",
        "\"phase\":\"config_refused\",\"ip\":\"10.77.0.2\",\"detail\":\"wrong nonce: node.ign\"",
    ] {
        assert!(timeline.contains(want), "{want} not in {timeline}");
    }
    // node01 comes back (the thief leaves); once it reports its boot, the window is closed:
    // nothing until its next boot.
    drop(thief);
    l.client
        .ip(&["link", "set", "client0", "up"])
        .expect("node01 on");
    assert_eq!(l.curl("/booted", &["-X", "POST"]).0, 204);
    assert_eq!(l.curl("/configs/node.ign", &[]).0, 409);
    assert_eq!(
        l.metric(
            "bootfabric_http_config_refused_total",
            &[("reason", "no_boot")]
        ),
        1.0
    );
    // Its next boot (a new script) opens a new window with a new nonce.
    let (_, again) = l.curl("/boot.ipxe", &[]);
    assert!(!again.contains(nonce), "the nonce did not change: {again}");
    // A HEAD would spend the one delivery on no body: refused, and spends nothing.
    assert_eq!(l.curl("/configs/node.ign", &["-I"]).0, 405);
    assert_eq!(l.curl("/configs/node.ign", &[]).0, 200);
}

#[test]
fn a_stranger_cannot_report_an_unreserved_host_booted() {
    let Some(l) = lab("a_stranger_cannot_report_an_unreserved_host_booted") else {
        return;
    };
    l.add_address("10.77.0.50/24");
    // node03 has no reservation and no lease: nobody's address is its.
    let (status, body) = l.curl(
        "/booted?mac=52:54:00:b0:0f:03",
        &["-X", "POST", "--interface", "10.77.0.50"],
    );
    assert_eq!(status, 403, "a stranger marked node03 booted: {body}");
    assert_eq!(
        l.metric("bootfabric_ledger_events_total", &[("phase", "booted")]),
        0.0
    );
    assert!(
        !l.timeline("52:54:00:b0:0f:03").contains("\"booted\""),
        "booted recorded for node03"
    );
    // Nor from a known host's address.
    let (status, _) = l.curl("/booted?mac=52:54:00:b0:0f:03", &["-X", "POST"]);
    assert_eq!(status, 403);
}

/// node02's reservation moves to node03 by a SIGHUP while node02's lease on it lives: the
/// address is still node02's (the reservation waits for the lease), so the machine on it
/// cannot post node03's `booted` (which would free node03's slot, hide its failure and spend
/// a `once` host's install); it can post its own.
#[test]
fn the_old_holder_of_a_moved_reservation_cannot_report_the_new_owner_booted() {
    const DHCP: &str = "[[dhcp.subnets]]\ncidr = \"10.77.0.0/24\"\ninterface = \"fabric0\"\npools = [\"10.77.0.100-10.77.0.199\"]\n";
    let Some(mut l) = lab_with(
        "the_old_holder_of_a_moved_reservation_cannot_report_the_new_owner_booted",
        DHCP,
    ) else {
        return;
    };
    let holder = Netns::new("holder").expect("holder");
    l.switch
        .plug(&holder, "client0", "10.77.0.12/24")
        .expect("holder port");
    holder
        .ip(&["route", "add", "default", "dev", "client0"])
        .expect("route");
    let node02 = [0x52, 0x54, 0x00, 0xb0, 0x0f, 0x02];
    let lease = holder
        .run(move || {
            let c = dhcp_client::Client::bind().expect("port 68");
            c.lease(node02, 0x0f12_0001, Duration::from_secs(5))
                .expect("exchange")
        })
        .expect("in the holder's namespace");
    assert_eq!(
        lease,
        dhcp_client::Outcome::Ack([10, 77, 0, 12].into(), [10, 77, 0, 1].into()),
        "node02 did not lease its reservation"
    );
    let moved = INVENTORY.replacen("ip = \"10.77.0.12\"\n", "", 1).replacen(
        "mac = \"52:54:00:b0:0f:03\"\n",
        "mac = \"52:54:00:b0:0f:03\"\nip = \"10.77.0.12\"\n",
        1,
    );
    assert_ne!(moved, INVENTORY);
    let hosts = l.daemon.config_path().with_file_name("hosts.toml");
    std::fs::write(&hosts, moved).expect("inventory");
    l.daemon
        .reload("config reloaded, generation 2")
        .expect("reload");
    let (status, body) = l.curl_from(&holder, "/booted?mac=52:54:00:b0:0f:03", &["-X", "POST"]);
    assert_eq!(status, 403, "the old holder reported node03 booted: {body}");
    assert!(
        !l.timeline("52:54:00:b0:0f:03").contains("\"booted\""),
        "booted recorded for node03"
    );
    let (status, body) = l.curl_from(&holder, "/booted?mac=52:54:00:b0:0f:02", &["-X", "POST"]);
    assert_eq!(status, 204, "the holder cannot report itself: {body}");
}

#[test]
fn check_refuses_configs_inside_the_http_root() {
    let dir = TempDir::new().expect("dir");
    let root: PathBuf = dir.path.join("images");
    std::fs::create_dir_all(root.join("configs")).expect("dirs");
    std::fs::create_dir_all(dir.path.join("tftp")).expect("tftp");
    for (name, config) in [
        (
            "configs inside http.root",
            "[http]\nroot = \"images\"\nconfigs = \"images/configs\"\n",
        ),
        (
            "http.root inside configs",
            "[http]\nroot = \"images/configs\"\nconfigs = \"images\"\n",
        ),
        (
            "configs inside tftp.root",
            "[tftp]\nroot = \"images\"\n[http]\nconfigs = \"images/configs\"\n",
        ),
    ] {
        let path = dir.path.join("bootfabric.toml");
        std::fs::write(&path, config).expect("config");
        let out = Command::new(bootfabric_bin())
            .args(["check", "--config-only", "--config"])
            .arg(&path)
            .output()
            .expect("run bootfabric check (build it first: cargo build -p bootfabric)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name} accepted: {text}");
        let other = if config.contains("[tftp]") {
            "tftp.root"
        } else {
            "http.root"
        };
        assert!(
            text.contains("http.configs") && text.contains(other),
            "{name}: both keys not named: {text}"
        );
    }
    // Side by side is fine.
    std::fs::create_dir_all(dir.path.join("configs")).expect("configs");
    let path = dir.path.join("bootfabric.toml");
    std::fs::write(
        &path,
        "[tftp]\nroot = \"tftp\"\n[http]\nroot = \"images\"\nconfigs = \"configs\"\n",
    )
    .expect("config");
    let out = Command::new(bootfabric_bin())
        .args(["check", "--config-only", "--config"])
        .arg(&path)
        .output()
        .expect("check");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The attack: after node01 reports `booted`, a machine anywhere on the switch sends
/// DISCOVERs with node01's MAC in `chaddr` until node01's bounded timeline (32 events) has
/// lost the `booted`. The ended boot then looked open until its TTL (an hour), and node01's
/// own next boot was refused its config (409 `again`), with a false alert of a thief.
#[test]
fn flushing_a_hosts_timeline_does_not_refuse_its_next_boot() {
    const DHCP: &str = "[dhcp]\nrate_limit = 1000\n[[dhcp.subnets]]\ncidr = \"10.77.0.0/24\"\ninterface = \"fabric0\"\npools = [\"10.77.0.100-10.77.0.199\"]\n";
    let Some(mut l) = lab_with(
        "flushing_a_hosts_timeline_does_not_refuse_its_next_boot",
        DHCP,
    ) else {
        return;
    };
    // node01 boots: script, config, `booted`.
    assert_eq!(l.curl("/boot.ipxe", &[]).0, 200);
    let (status, body) = l.curl("/configs/node.ign", &[]);
    assert_eq!(status, 200, "{body}");
    assert_eq!(l.curl("/booted", &["-X", "POST"]).0, 204);
    // The flood, from another machine (bounded: 40 DISCOVERs, each waiting for its OFFER).
    let attacker = Netns::new("flood").expect("attacker");
    l.switch
        .plug(&attacker, "client0", "10.77.0.60/24")
        .expect("attacker port");
    // Broadcasts to 255.255.255.255 need a route out of the port.
    attacker
        .ip(&["route", "add", "default", "dev", "client0"])
        .expect("route");
    let node01 = [0x52, 0x54, 0x00, 0xb0, 0x0f, 0x01];
    let offers = attacker
        .run(move || {
            let c = dhcp_client::Client::bind().expect("port 68");
            let to = SocketAddr::from(([255, 255, 255, 255], 67));
            (0..40u32)
                .filter(|i| {
                    let xid = 0x0f10_0000 + i;
                    let m = dhcp_client::Client::message(
                        node01,
                        xid,
                        dhcproto::v4::MessageType::Discover,
                    );
                    c.send_to(&m, to).expect("send");
                    c.reply(xid, Duration::from_secs(30)).is_some()
                })
                .count()
        })
        .expect("in the attacker's namespace");
    assert_eq!(offers, 40, "the server did not answer every DISCOVER");
    let timeline = l.timeline("52:54:00:b0:0f:01");
    assert!(
        !timeline.contains("\"booted\""),
        "the flood did not push `booted` out: {timeline}"
    );
    // node01 reboots by itself (no BMC reset) within the hour: its own script, its config.
    assert_eq!(l.curl("/boot.ipxe", &[]).0, 200);
    let (status, body) = l.curl("/configs/node.ign", &[]);
    assert_eq!(
        status, 200,
        "node01's next boot was refused its config after the flood: {body}"
    );
    assert!(body.contains("join-node01"), "{body}");
}

/// The host's script carries its boot's nonce; its config is rendered with it.
fn boot_nonce(script: &str) -> &str {
    script
        .split("nonce=")
        .nth(1)
        .map(|s| s.split_whitespace().next().unwrap_or(""))
        .unwrap_or("")
}

/// Each host's config is rendered from its own metadata and fields, with conditionals for
/// what a host lacks (node02 has no `meta`, no rack), and the legacy `{host}` template next
/// to it still serves.
#[test]
fn a_template_renders_each_hosts_metadata_and_conditionals() {
    let Some(l) = lab("a_template_renders_each_hosts_metadata_and_conditionals") else {
        return;
    };
    let (status, script) = l.curl("/boot.ipxe", &[]);
    assert_eq!(status, 200, "{script}");
    let nonce = boot_nonce(&script).to_owned();
    assert_eq!(nonce.len(), 32, "{script}");
    let (status, role) = l.curl(&format!("/configs/role.cfg?nonce={nonce}"), &[]);
    assert_eq!(status, 200, "{role}");
    assert_eq!(
        role,
        format!("# node01 (52:54:00:b0:0f:01), profile installer\nrole: worker\ndisk: sda\ndisk: sdb\nrack: r1\nnonce: {nonce}\n")
    );
    let (status, legacy) = l.curl(&format!("/configs/node.ign?nonce={nonce}"), &[]);
    assert_eq!(status, 200, "{legacy}");
    assert_eq!(
        legacy,
        format!(r#"{{"host":"node01","token":"join-node01","nonce":"{nonce}"}}"#)
    );

    // node02, from its own address.
    l.add_address("10.77.0.12/24");
    let from02 = ["--interface", "10.77.0.12"];
    let (status, script) = l.curl("/boot.ipxe", &from02);
    assert_eq!(status, 200, "{script}");
    let nonce = boot_nonce(&script).to_owned();
    let (status, role) = l.curl(&format!("/configs/role.cfg?nonce={nonce}"), &from02);
    assert_eq!(status, 200, "{role}");
    assert_eq!(
        role,
        format!("# node02 (52:54:00:b0:0f:02), profile installer\nrole: none\nrack: -\nnonce: {nonce}\n")
    );
    // Its own override wins over the shared template, as before.
    let (status, own) = l.curl(&format!("/configs/node.ign?nonce={nonce}"), &from02);
    assert_eq!((status, own.as_str()), (200, NODE02_SECRET));

    // A render that fails at request time (fuel): a generic 500, no part of the body, the
    // refusal recorded and counted.
    let (status, body) = l.curl(&format!("/configs/spin.cfg?nonce={nonce}"), &from02);
    assert_eq!(
        (status, body.as_str()),
        (500, "cannot render this config\n")
    );
    assert_eq!(
        l.metric(
            "bootfabric_http_config_refused_total",
            &[("reason", "template")]
        ),
        1.0
    );
    let timeline = l.timeline("52:54:00:b0:0f:02");
    assert!(
        timeline.contains("\"detail\":\"template error: spin.cfg\""),
        "{timeline}"
    );
}

/// One boot of node01 (from the client machine): its script, the config `name` with the
/// boot's nonce, then `booted`. The config's status and body.
fn boot_and_fetch(l: &Lab, name: &str) -> (u16, String) {
    let (status, script) = l.curl("/boot.ipxe", &[]);
    assert_eq!(status, 200, "{script}");
    let nonce = boot_nonce(&script).to_owned();
    let got = l.curl(&format!("/configs/{name}?nonce={nonce}"), &[]);
    assert_eq!(l.curl("/booted", &["-X", "POST"]).0, 204);
    got
}

/// Templates live in the snapshot: an edit reaches boots at the next reload (never half-way,
/// never by a disk read per request), and an edit that does not render for some host is
/// refused with host, file and line while the running templates keep serving.
#[test]
fn an_edited_template_serves_after_a_reload_and_a_broken_one_is_refused() {
    let Some(l) = lab("an_edited_template_serves_after_a_reload_and_a_broken_one_is_refused")
    else {
        return;
    };
    let role = l._dir.path.join("configs/role.cfg");
    let first = boot_and_fetch(&l, "role.cfg");
    assert_eq!(first.0, 200, "{}", first.1);
    assert!(first.1.contains("role: worker"), "{}", first.1);

    std::fs::write(
        &role,
        "v2 {{ hostname }} {{ meta.role | default(\"none\") }}\n",
    )
    .expect("edit");
    let before_reload = boot_and_fetch(&l, "role.cfg");
    assert!(
        before_reload.0 == 200 && before_reload.1.contains("role: worker"),
        "served the edit before a reload: {before_reload:?}"
    );
    l.daemon
        .reload("config reloaded, generation 2")
        .expect("reload");
    assert_eq!(
        boot_and_fetch(&l, "role.cfg"),
        (200, "v2 node01 worker\n".into())
    );

    // node02 and node03 have no meta.role: refused, named, and v2 keeps serving.
    std::fs::write(&role, "# v3\n{{ meta.role }}\n").expect("edit");
    l.daemon.reload("config not reloaded").expect("refused");
    let log = l.daemon.log();
    for host in ["node02", "node03"] {
        let want = format!("configs/role.cfg:2: host {host}: undefined value");
        assert!(log.contains(&want), "{want} not in the log:\n{log}");
    }
    assert_eq!(
        boot_and_fetch(&l, "role.cfg"),
        (200, "v2 node01 worker\n".into())
    );
}
