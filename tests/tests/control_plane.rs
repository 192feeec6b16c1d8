//! Issue 16, "Done when" 1: a controller drives the daemon through `/api/v1` as Beskar7 or
//! Metal3 would, from its own namespace on a separate control network, with the admin
//! token, and never restarts it. It adds 20 hosts to an empty inventory and boots them
//! through the fabric (19 simulated machines playing firmware with udhcpc and curl, and one
//! QEMU machine booting the lab's kernel and initramfs under TCG); changes one host's
//! profile and metadata (its next boot renders them); lets `netboot = once` be used up (the
//! next boot is told `exit`); deletes one (its next DHCP and script treat it as unknown);
//! moves a reservation to another MAC while the old lease lives (no address on two MACs, in
//! the lease table or the XDP map, until the old MAC releases). Meanwhile an SSE client and
//! a webhook receiver record every event: each once, in order, the same sequence, every
//! signature valid (checked with the `hmac` crate, not the daemon's code), and a stream
//! resumed by `Last-Event-ID` loses nothing.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::Ipv4Addr,
    path::Path,
    time::Duration,
};

use bootfabric_lab::{
    api::Api,
    bootimage,
    control::{self, ControlLab},
    lab_required, qemu, require_programs, require_root,
    simhost::{Boot, SimHost},
    sse::{Sse, SseEvent},
    wait_for,
    webhook::{self, Receiver},
    Daemon,
};
use serde_json::{json, Value};

/// Machines under TCG are slow; this bounds the wait for every host to boot.
const BOOT_BOUND: Duration = Duration::from_secs(300);
/// Bounds a wait for the daemon to react to an API call or a boot (events, consumption).
const REACT_BOUND: Duration = Duration::from_secs(30);

const SIM_HOSTS: u8 = 19;
const HTTP_BASE: &str = "http://10.77.0.1";
const SECRET: &str = "webhook-secret-7f3a9c1e5b2d8f4a6c0e9b7d5f3a1c8e";
/// The events the webhook subscribes to.
const HOOK_EVENTS: [&str; 4] = [
    "host.created",
    "host.updated",
    "host.deleted",
    "host.booted",
];

fn cache() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab-cache")
}

fn name(i: u8) -> String {
    format!("node{i:02}")
}

fn mac(i: u8) -> String {
    format!("52:54:00:c0:00:{i:02x}")
}

/// Hosts 1-10 have a reservation, 11-19 take pool addresses.
fn reservation(i: u8) -> Option<Ipv4Addr> {
    (i <= 10).then(|| Ipv4Addr::new(10, 77, 0, 10 + i))
}

const VM: &str = "vm01";
const VM_MAC: &str = "52:54:00:c0:01:01";
const VM_IP: &str = "10.77.0.50";
/// The host whose profile and metadata change.
const PATCHED: u8 = 3;
/// The host that is deleted.
const DELETED: u8 = 5;
/// The host whose reservation moves to another MAC.
const MOVED: u8 = 8;
const MOVED_TO: &str = "52:54:00:c0:00:88";
/// The host created with `netboot = "once"`.
const ONCE: u8 = 12;

fn in_pool(ip: Ipv4Addr) -> bool {
    let o = ip.octets();
    o[..3] == [10, 77, 0] && (100..=199).contains(&o[3])
}

fn config(lab: &ControlLab, images: &Path, configs: &Path, hook: &str, secret: &Path) -> String {
    format!(
        r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
{admin}
[xdp]
mode = "auto"
[http]
root = "{images}"
configs = "{configs}"
[dhcp]
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
[[webhooks]]
url = "{hook}"
events = {events:?}
secret_file = "{secret}"
"#,
        admin = lab.admin_section(),
        images = images.display(),
        configs = configs.display(),
        secret = secret.display(),
        events = HOOK_EVENTS,
    )
}

/// Two profiles and no host: every host comes from the API. `linux` uses the legacy
/// `{http_base}` token; `rescue` renders the host's metadata.
const INVENTORY: &str = r#"[profiles.linux]
kernel = "linux/vmlinuz"
initrd = ["linux/initramfs.cpio"]
cmdline = "console=ttyS0 quiet bootfabric.booted={http_base}/booted"

[profiles.rescue]
kernel = "linux/vmlinuz"
initrd = ["linux/initramfs.cpio"]
cmdline = "console=ttyS0 bootfabric.booted={{ http_base }}/booted rescue role={{ meta.role }}"
"#;

/// A config every boot fetches: it renders the host's name, profile and metadata.
const ROLE_CFG: &str = "host={{ hostname }}\nprofile={{ profile.name }}\nrole={{ meta.role }}\n";

fn host_body(i: u8) -> Value {
    let mut h = json!({
        "name": name(i),
        "mac": mac(i),
        "profile": "linux",
        "rack": if i.is_multiple_of(2) { "r2" } else { "r1" },
        "meta": { "role": "worker", "index": i },
    });
    if let Some(ip) = reservation(i) {
        h["ip"] = json!(ip.to_string());
    }
    if i == ONCE {
        h["netboot"] = json!("once");
    }
    h
}

/// Everything the daemon logged and the events so far, for failure messages.
fn context(daemon: &Daemon, sse: &Sse) -> String {
    format!(
        "daemon log:\n{}\nevents:\n{}",
        daemon.log(),
        sse.events()
            .iter()
            .map(|e| format!("{:?} {}", e.id, e.data))
            .collect::<Vec<_>>()
            .join("\n")
    )
}

fn booted(events: &[SseEvent], host: &str) -> usize {
    events
        .iter()
        .filter(|e| e.kind() == "host.booted" && e.host().as_deref() == Some(host))
        .count()
}

/// Checks one sim host's first boot: the address it should have, the script, the images
/// whole, the config rendered for it, `/booted` accepted.
fn check_first_boot(i: u8, ip: Ipv4Addr, boot: &Boot, sizes: &BTreeMap<&str, u64>) {
    let who = name(i);
    match reservation(i) {
        Some(r) => assert_eq!(ip, r, "{who} did not get its reservation"),
        None => assert!(in_pool(ip), "{who} got {ip}, not a pool address"),
    }
    assert_eq!(boot.script_status, 200, "{who}: {boot:?}");
    let cmdline = boot.cmdline.as_deref().unwrap_or_else(|| {
        panic!("{who}: the script boots no kernel:\n{}", boot.script);
    });
    assert!(
        cmdline.contains("bootfabric.booted=http://10.77.0.1/booted"),
        "{who}: {cmdline}"
    );
    assert_eq!(boot.files.len(), 2, "{who}: {boot:?}");
    for (url, status, size) in &boot.files {
        let file = url.rsplit('/').next().unwrap_or_default();
        assert_eq!(*status, 200, "{who}: {url}");
        assert_eq!(Some(size), sizes.get(file), "{who}: {url} came short");
    }
    let (status, cfg) = boot.config.clone().unwrap_or_default();
    assert_eq!(status, 200, "{who}: role.cfg: {cfg}");
    assert_eq!(
        cfg,
        format!("host={who}\nprofile=linux\nrole=worker\n"),
        "{who}: role.cfg"
    );
    assert_eq!(boot.booted, Some(204), "{who}: POST /booted");
}

/// (address, MACs) for every address in `bootfabric leases`.
fn lease_holders(daemon: &Daemon) -> BTreeMap<Ipv4Addr, BTreeSet<String>> {
    let text = daemon.cli(&["leases"]).expect("bootfabric leases");
    let mut out: BTreeMap<Ipv4Addr, BTreeSet<String>> = BTreeMap::new();
    for line in text.lines() {
        let ip = line
            .split_whitespace()
            .find_map(|w| w.parse::<Ipv4Addr>().ok());
        let mac = line.split_whitespace().find(|w| {
            w.len() == 17 && w.split(':').count() == 6 && w.split(':').all(|p| p.len() == 2)
        });
        if let (Some(ip), Some(mac)) = (ip, mac) {
            out.entry(ip).or_default().insert(mac.to_ascii_lowercase());
        }
    }
    out
}

/// No address in the lease table or the XDP host map belongs to two MACs; returns the
/// holders of `ip` in both.
fn holders_of(lab: &ControlLab, daemon: &Daemon, ip: Ipv4Addr) -> (Vec<String>, Vec<String>) {
    let leases = lease_holders(daemon);
    for (addr, macs) in &leases {
        assert!(macs.len() <= 1, "{addr} leased to {macs:?}");
    }
    let leased = leases
        .get(&ip)
        .map(|m| m.iter().cloned().collect())
        .unwrap_or_default();
    let mut kernel = Vec::new();
    if let Some(map) = control::xdp_reservations(&lab.server, "fabric0").expect("XDP map") {
        let mut by_ip: BTreeMap<Ipv4Addr, Vec<String>> = BTreeMap::new();
        for (m, a) in map {
            by_ip.entry(a).or_default().push(m);
        }
        for (addr, macs) in &by_ip {
            assert!(macs.len() <= 1, "XDP map: {addr} reserved for {macs:?}");
        }
        kernel = by_ip.remove(&ip).unwrap_or_default();
    }
    (leased, kernel)
}

#[test]
fn a_controller_provisions_through_the_api() {
    let t = "a_controller_provisions_through_the_api";
    if !require_root(t) || !require_programs(t, &["udhcpc", "curl", "qemu-system-x86_64"]) {
        return;
    }
    let image = bootimage::ensure(&cache()).expect("boot image");
    let mut lab = ControlLab::new().expect("lab");
    let images = lab.folder("images/linux").expect("images");
    std::fs::copy(&image.kernel, images.join("vmlinuz")).expect("kernel");
    std::fs::copy(&image.initramfs, images.join("initramfs.cpio")).expect("initramfs");
    let sizes: BTreeMap<&str, u64> = [
        (
            "vmlinuz",
            std::fs::metadata(images.join("vmlinuz"))
                .expect("size")
                .len(),
        ),
        (
            "initramfs.cpio",
            std::fs::metadata(images.join("initramfs.cpio"))
                .expect("size")
                .len(),
        ),
    ]
    .into();
    let configs = lab.folder("configs").expect("configs");
    std::fs::write(configs.join("role.cfg"), ROLE_CFG).expect("role.cfg");

    // The controller's webhook receiver, failing its first delivery (a retry, not a dup).
    let receiver = Receiver::start(&lab.ctl, &format!("{}:0", control::CTL), 1).expect("receiver");
    let secret = lab.secret_file("webhook.secret", SECRET).expect("secret");
    let hook = format!("http://{}/hook", receiver.addr);
    let cfg = config(
        &lab,
        lab.dir.path.join("images").as_path(),
        &configs,
        &hook,
        &secret,
    );

    // The machines exist before the daemon knows them (namespace creation is the slow part).
    let sims: Vec<SimHost> = (1..=SIM_HOSTS)
        .map(|i| SimHost::new(&mut lab.fabric, &mac(i)).expect("sim host"))
        .collect();
    let moved_nic = SimHost::new(&mut lab.fabric, MOVED_TO).expect("sim host");
    qemu::tap_on_bridge(lab.fabric.ns(), "tap0", "br0").expect("tap");

    let daemon = Daemon::start(&lab.server, &cfg, &[("hosts.toml", INVENTORY)]).expect("daemon");
    let pid = daemon.pid();
    let xdp = bootfabric_lab::metrics(&lab.server, &daemon)
        .expect("metrics")
        .contains("ebpf=\"embedded\"");
    if !xdp && lab_required() {
        panic!("the daemon has no eBPF object (cargo xtask build)");
    }
    let api = lab.api(&daemon);

    // Empty to begin with; two streams open from the start: one live, one replaying
    // everything after id 0 (closed mid-way and resumed later).
    let list = api
        .get("/api/v1/hosts")
        .expect("list")
        .expect(200)
        .expect("json");
    assert_eq!(list["items"], json!([]), "{list}");
    let sse = Sse::open(
        &lab.ctl,
        daemon.admin,
        "/api/v1/events",
        None,
        Some(&lab.token),
    )
    .expect("SSE");
    let resumed_part1 = Sse::open(
        &lab.ctl,
        daemon.admin,
        "/api/v1/events",
        Some(0),
        Some(&lab.token),
    )
    .expect("SSE with Last-Event-ID");

    // Writes need the token.
    let anon = api
        .anonymous()
        .post("/api/v1/hosts", &host_body(1))
        .expect("POST");
    assert_eq!(anon.status, 401, "{anon:?}");
    // So do reads of hosts (their meta feeds configs).
    let anon = api.anonymous().get("/api/v1/hosts").expect("GET");
    assert_eq!(anon.status, 401, "{anon:?}");

    // The controller adds 20 hosts.
    let mut last_generation = 0;
    let mut bodies: Vec<Value> = (1..=SIM_HOSTS).map(host_body).collect();
    bodies.push(json!({
        "name": VM, "mac": VM_MAC, "ip": VM_IP, "profile": "linux",
        "meta": { "role": "worker" }, "model": "bios-ipxe",
    }));
    for body in &bodies {
        let r = api.post("/api/v1/hosts", body).expect("POST");
        let got = r
            .expect(201)
            .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
        let n = body["name"].as_str().unwrap_or_default();
        assert_eq!(got["name"], body["name"], "{got}");
        assert_eq!(got["source"], json!("api"), "{got}");
        assert!(
            r.header("location")
                .is_some_and(|l| l.ends_with(&format!("/api/v1/hosts/{n}"))),
            "{r:?}"
        );
        r.etag().expect("ETag");
        let generation = r.generation().expect("Bootfabric-Generation");
        assert!(generation > last_generation, "{r:?}");
        last_generation = generation;
    }
    let list = api
        .get("/api/v1/hosts")
        .expect("list")
        .expect(200)
        .expect("json");
    assert_eq!(list["items"].as_array().map(Vec::len), Some(20), "{list}");
    assert_eq!(list["generation"], json!(last_generation), "{list}");

    // The QEMU machine first: it is the slow one.
    let console = lab.dir.path.join("vm01.console");
    let vm = qemu::start(
        lab.fabric.ns(),
        "tap0",
        &[
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={VM_MAC}"),
            "-boot",
            "n",
        ],
        &console,
    )
    .expect("qemu");

    // 19 machines boot in parallel, as firmware would: DHCP, script, images, config, booted.
    // The one whose reservation will move keeps its DHCP client running (its lease lives).
    let moved_idx = usize::from(MOVED - 1);
    let (firsts, held) = std::thread::scope(|s| {
        let held = s.spawn(|| {
            let h = sims[moved_idx].dhcp_hold().expect("dhcp");
            let b = sims[moved_idx]
                .boot(HTTP_BASE, Some("role.cfg"))
                .expect("boot");
            (h, b)
        });
        let others: Vec<_> = sims
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != moved_idx)
            .map(|(k, sim)| {
                let daemon = &daemon;
                s.spawn(move || {
                    // A lost lease says why: the daemon's log goes with it.
                    let ip = sim.dhcp().unwrap_or_else(|e| {
                        panic!("{}: {e}\ndaemon:\n{}", name(k as u8 + 1), daemon.log())
                    });
                    let b = sim.boot(HTTP_BASE, Some("role.cfg")).expect("boot");
                    (k as u8 + 1, ip, b)
                })
            })
            .collect();
        let firsts: Vec<(u8, Ipv4Addr, Boot)> = others
            .into_iter()
            .map(|h| h.join().expect("sim host thread"))
            .collect();
        (firsts, held.join().expect("held thread"))
    });
    let (held, held_boot) = held;
    for (i, ip, boot) in &firsts {
        check_first_boot(*i, *ip, boot, &sizes);
    }
    check_first_boot(MOVED, held.ip, &held_boot, &sizes);

    // The fabric side cannot reach the API: the TCP connection is made (so routing is not
    // what stops it), and admin.allow drops it unanswered.
    let probe = &sims[0];
    probe
        .ns
        .ip(&[
            "route",
            "add",
            "10.78.0.0/24",
            "via",
            control::SERVER_FABRIC,
        ])
        .expect("route to the control network");
    assert!(bootfabric_lab::api::connect(&probe.ns, daemon.admin).is_ok());
    let from_fabric = Api::new(&probe.ns, daemon.admin, Some(&lab.token));
    let attempt = from_fabric.post("/api/v1/hosts", &host_body(99));
    assert!(attempt.is_err(), "the fabric reached the API: {attempt:?}");
    assert_eq!(api.get("/api/v1/hosts/node99").expect("GET").status, 404);

    // Every host booted: the events say so (the QEMU machine too, under TCG).
    let names: Vec<String> = (1..=SIM_HOSTS).map(name).chain([VM.to_owned()]).collect();
    sse.wait(BOOT_BOUND, |e| names.iter().all(|n| booted(e, n) >= 1))
        .unwrap_or_else(|e| {
            panic!(
                "{e}\nvm01 console:\n{}\n{}",
                std::fs::read_to_string(&console).unwrap_or_default(),
                daemon.log()
            )
        });
    // The daemon publishes the event when the report arrives; the init prints its line once
    // the answer is back and the serial console has carried it (slow under TCG): waited for.
    let reported = wait_for(REACT_BOUND, || {
        std::fs::read_to_string(&console)
            .unwrap_or_default()
            .contains("bootfabric-init: booted reported")
            .then_some(())
    });
    assert!(
        reported.is_some(),
        "vm01 did not report booted itself:\n{}",
        std::fs::read_to_string(&console).unwrap_or_default()
    );
    drop(vm);

    // Mid-way, the second stream drops; it resumes later by Last-Event-ID.
    let part1 = resumed_part1.close();
    let resume_from = part1
        .last()
        .and_then(|e| e.id)
        .expect("events before the drop");

    // PATCH one host's profile and metadata: its next boot renders them.
    let path = format!("/api/v1/hosts/{}", name(PATCHED));
    let (stale, r) = api
        .patch_current(
            &path,
            &json!({ "profile": "rescue", "meta": { "role": "storage" } }),
        )
        .expect("PATCH");
    let patched = r
        .expect(200)
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    assert_eq!(patched["profile"], json!("rescue"), "{patched}");
    assert_eq!(patched["meta"]["role"], json!("storage"), "{patched}");
    assert_eq!(
        patched["meta"]["index"],
        json!(PATCHED),
        "merge patch kept meta.index"
    );
    let again = api
        .patch(&path, &stale, &json!({ "meta": { "role": "x" } }))
        .expect("stale PATCH");
    assert_eq!(again.status, 412, "{again:?}");
    assert!(
        again
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/problem+json")),
        "{again:?}"
    );
    let sim = &sims[usize::from(PATCHED - 1)];
    sim.dhcp().expect("dhcp");
    let second = sim.boot(HTTP_BASE, Some("role.cfg")).expect("boot");
    let cmdline = second.cmdline.clone().unwrap_or_default();
    assert!(
        cmdline.contains("rescue") && cmdline.contains("role=storage"),
        "{}: {second:?}",
        name(PATCHED)
    );
    assert!(
        cmdline.contains("bootfabric.booted=http://10.77.0.1/booted"),
        "{cmdline}"
    );
    assert_eq!(
        second.config,
        Some((
            200,
            format!("host={}\nprofile=rescue\nrole=storage\n", name(PATCHED))
        )),
        "{second:?}"
    );
    assert_eq!(second.booted, Some(204), "{second:?}");

    // netboot = once: used by the first boot, so the next one is told to boot from disk.
    let once_path = format!("/api/v1/hosts/{}", name(ONCE));
    wait_for(REACT_BOUND, || {
        let h = api.get(&once_path).ok()?.json().ok()?;
        (h["netboot_state"] == json!("consumed")).then_some(())
    })
    .unwrap_or_else(|| {
        panic!(
            "{} never consumed its once\n{}",
            name(ONCE),
            context(&daemon, &sse)
        )
    });
    let sim = &sims[usize::from(ONCE - 1)];
    sim.dhcp().expect("dhcp");
    let disk = sim.boot(HTTP_BASE, None).expect("boot");
    assert!(disk.exits_to_disk(), "{}: {disk:?}", name(ONCE));
    assert!(disk.files.is_empty() && disk.booted.is_none(), "{disk:?}");

    // DELETE: the host's next DHCP gets no reservation, its script says it is unknown.
    let del_path = format!("/api/v1/hosts/{}", name(DELETED));
    let etag = api.get(&del_path).expect("GET").etag().expect("ETag");
    let gone = api.delete(&del_path, &etag).expect("DELETE");
    assert!(matches!(gone.status, 200 | 204), "{gone:?}");
    assert_eq!(api.get(&del_path).expect("GET").status, 404);
    let sim = &sims[usize::from(DELETED - 1)];
    let ip = sim.dhcp().expect("dhcp");
    assert_ne!(
        Some(ip),
        reservation(DELETED),
        "a deleted host kept its reservation"
    );
    let unknown = sim.boot(HTTP_BASE, None).expect("boot");
    assert!(unknown.unknown(), "{unknown:?}");

    // Move a reservation to another NIC while the old one's lease lives.
    let moved_ip = reservation(MOVED).expect("reserved");
    let move_path = format!("/api/v1/hosts/{}", name(MOVED));
    let (_, r) = api
        .patch_current(&move_path, &json!({ "mac": MOVED_TO }))
        .expect("PATCH mac");
    r.expect(200)
        .unwrap_or_else(|e| panic!("{e}\n{}", daemon.log()));
    let interim = moved_nic.dhcp().expect("dhcp");
    assert_ne!(
        interim, moved_ip,
        "the reservation was handed out while leased"
    );
    assert!(in_pool(interim), "{interim}");
    let (leased, kernel) = holders_of(&lab, &daemon, moved_ip);
    assert!(
        !leased.contains(&MOVED_TO.to_owned()) && !kernel.contains(&MOVED_TO.to_owned()),
        "{moved_ip}: leases {leased:?}, XDP {kernel:?}"
    );
    held.release().expect("release");
    let after = moved_nic.dhcp().expect("dhcp");
    assert_eq!(
        after, moved_ip,
        "the freed reservation did not reach its new MAC"
    );
    // The journal and the XDP map follow the table within moments: wait for both.
    let new_owner = vec![MOVED_TO.to_owned()];
    let settled = wait_for(REACT_BOUND, || {
        let (l, k) = holders_of(&lab, &daemon, moved_ip);
        (l == new_owner && (!xdp || k == new_owner)).then_some(())
    });
    assert!(
        settled.is_some(),
        "{moved_ip}: leases and XDP map {:?}",
        holders_of(&lab, &daemon, moved_ip)
    );

    // Every event once, in order; the same sequence at the webhook, every signature valid.
    let stream = sse.events();
    let last = stream.last().and_then(|e| e.id).expect("events");
    let ids: Vec<u64> = stream
        .iter()
        .map(|e| e.id.expect("every event has an id"))
        .collect();
    for w in ids.windows(2) {
        assert_eq!(w[1], w[0] + 1, "ids not consecutive: {ids:?}");
    }
    let created: Vec<String> = stream
        .iter()
        .filter(|e| e.kind() == "host.created")
        .filter_map(SseEvent::host)
        .collect();
    assert_eq!(created, names, "host.created once each, in POST order");
    let deleted: Vec<String> = stream
        .iter()
        .filter(|e| e.kind() == "host.deleted")
        .filter_map(SseEvent::host)
        .collect();
    assert_eq!(deleted, [name(DELETED)]);
    assert_eq!(
        booted(&stream, &name(PATCHED)),
        2,
        "{}",
        context(&daemon, &sse)
    );
    for n in &names {
        if *n != name(PATCHED) {
            assert_eq!(booted(&stream, n), 1, "{n}: {}", context(&daemon, &sse));
        }
    }

    let hooked: Vec<&SseEvent> = stream
        .iter()
        .filter(|e| HOOK_EVENTS.contains(&e.kind().as_str()))
        .collect();
    let want: Vec<u64> = hooked.iter().filter_map(|e| e.id).collect();
    let last_hooked = *want.last().expect("hook events");
    let deliveries = receiver
        .wait(REACT_BOUND, |d| {
            d.iter()
                .any(|d| d.accepted() && d.id() == Some(last_hooked))
        })
        .expect("webhook");
    for d in &deliveries {
        webhook::verify(SECRET.as_bytes(), d).unwrap_or_else(|e| panic!("bad signature: {e}"));
    }
    let accepted: Vec<&webhook::Delivery> = deliveries
        .iter()
        .filter(|d| d.accepted() && d.id() <= Some(last_hooked))
        .collect();
    let got: Vec<u64> = accepted.iter().filter_map(|d| d.id()).collect();
    assert_eq!(
        got, want,
        "the webhook's sequence differs from the stream's"
    );
    for (d, e) in accepted.iter().zip(&hooked) {
        assert_eq!(
            d.json(),
            e.json(),
            "the webhook's body differs from the stream's"
        );
    }
    // The first delivery was answered 500 and retried: the same event, once accepted.
    assert_eq!(deliveries[0].answered, 500);
    assert_eq!(deliveries[1].id(), deliveries[0].id(), "not retried first");
    assert_eq!(deliveries[1].body, deliveries[0].body);
    assert!(
        deliveries[0]
            .head
            .header("content-type")
            .is_some_and(|c| c.starts_with("application/json")),
        "{:?}",
        deliveries[0].head
    );

    // The resumed stream: what it missed while down, then live; nothing lost or repeated.
    let part2 = Sse::open(
        &lab.ctl,
        daemon.admin,
        "/api/v1/events",
        Some(resume_from),
        Some(&lab.token),
    )
    .expect("SSE resume");
    let part2 = part2
        .wait(REACT_BOUND, |e| e.last().and_then(|e| e.id) >= Some(last))
        .expect("resumed stream");
    let joined: Vec<&SseEvent> = part1.iter().chain(&part2).collect();
    let joined_ids: Vec<u64> = joined.iter().filter_map(|e| e.id).collect();
    for w in joined_ids.windows(2) {
        assert_eq!(
            w[1],
            w[0] + 1,
            "the resumed stream lost or repeated: {joined_ids:?}"
        );
    }
    let resumed: BTreeMap<u64, &str> = joined
        .iter()
        .filter_map(|e| Some((e.id?, e.data.as_str())))
        .collect();
    for e in &stream {
        let id = e.id.expect("id");
        assert_eq!(
            resumed.get(&id).copied(),
            Some(e.data.as_str()),
            "event {id}: the resumed stream disagrees with the live one"
        );
    }

    // All of it without a restart.
    assert_eq!(daemon.pid(), pid);
    assert_eq!(
        daemon.log().matches("admin server listening on").count(),
        1,
        "the daemon restarted"
    );
    let status = api
        .get("/api/v1/status")
        .expect("status")
        .expect(200)
        .expect("json");
    assert!(
        status["generation"].as_u64() > Some(last_generation),
        "{status}"
    );
}
