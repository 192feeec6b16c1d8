//! `[images]` against an origin in the lab: Python's HTTP server in the client namespace
//! (Range, If-Range, a download cut half-way on request), sums made by coreutils'
//! `sha256sum`, detached signatures by GnuPG with a throwaway key, ISOs built by xorriso.
//! `bootfabric image …` runs inside the server namespace, as the daemon does.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use bootfabric_lab::{
    bootfabric_bin, content, http_get, image_origin::Origin, metrics, require_programs,
    require_root, sample, wait_for, Daemon, Netns, PairLab, TempDir,
};

const ORIGIN: &str = "10.77.0.2:8080";

/// A throwaway GnuPG home with one signing key; removed (and its agent stopped) on drop.
struct Gpg {
    home: TempDir,
}

impl Gpg {
    fn new(uid: &str) -> Self {
        let home = TempDir::new().expect("gnupg home");
        let g = Self { home };
        g.run(&["--quick-gen-key", uid, "ed25519", "sign", "never"]);
        g
    }

    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("gpg")
            .env("GNUPGHOME", &self.home.path)
            .args(["--batch", "--pinentry-mode", "loopback", "--passphrase", ""])
            .args(args)
            .output()
            .expect("gpg");
        assert!(
            out.status.success(),
            "gpg {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The public key, armored, written to `path`.
    fn export(&self, path: &Path) {
        let out = self.run(&["--armor", "--export"]);
        std::fs::write(path, out.stdout).expect("key file");
    }

    /// A detached armored signature of `file` at `file.asc`.
    fn sign(&self, file: &Path) {
        let sig = PathBuf::from(format!("{}.asc", file.display()));
        let _ = std::fs::remove_file(&sig);
        self.run(&[
            "--armor",
            "--detach-sign",
            "--output",
            sig.to_str().expect("utf-8"),
            file.to_str().expect("utf-8"),
        ]);
    }
}

impl Drop for Gpg {
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .env("GNUPGHOME", &self.home.path)
            .args(["--kill", "all"])
            .output();
    }
}

/// `sha256sum` of `names` (inside `dir`) written to `dir/SHA256SUMS`.
fn sums(dir: &Path, names: &[&str]) {
    let out = Command::new("sha256sum")
        .current_dir(dir)
        .args(names)
        .output()
        .expect("sha256sum");
    assert!(out.status.success());
    std::fs::write(dir.join("SHA256SUMS"), out.stdout).expect("sums");
}

/// Flatcar's form: `<name>.DIGESTS` with MD5, SHA1 and SHA512 sections, clearsigned as
/// `<name>.DIGESTS.asc`.
fn flatcar_digests(dir: &Path, name: &str, gpg: &Gpg) {
    let mut text = String::new();
    for (tool, header) in [
        ("md5sum", "MD5"),
        ("sha1sum", "SHA1"),
        ("sha512sum", "SHA512"),
    ] {
        let out = Command::new(tool)
            .current_dir(dir)
            .arg(name)
            .output()
            .expect(tool);
        assert!(out.status.success());
        text.push_str(&format!(
            "# {header} HASH\n{}",
            String::from_utf8_lossy(&out.stdout)
        ));
    }
    let digests = dir.join(format!("{name}.DIGESTS"));
    std::fs::write(&digests, text).expect("DIGESTS");
    let asc = dir.join(format!("{name}.DIGESTS.asc"));
    let _ = std::fs::remove_file(&asc);
    gpg.run(&[
        "--clearsign",
        "--output",
        asc.to_str().expect("utf-8"),
        digests.to_str().expect("utf-8"),
    ]);
}

/// `bootfabric image ARGS --config CFG` inside `ns`.
fn image(ns: &Netns, cfg: &Path, args: &[&str]) -> Output {
    ns.command(bootfabric_bin())
        .arg("image")
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .expect("bootfabric image")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The image's record, as `image ls -o json` prints it.
fn record(ns: &Netns, cfg: &Path, name: &str) -> serde_json::Value {
    let o = image(ns, cfg, &["ls", name, "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    v[0].clone()
}

fn current(ns: &Netns, cfg: &Path, name: &str) -> String {
    record(ns, cfg, name)["current"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

const PAIR: [&str; 2] = [
    "flatcar_production_pxe.vmlinuz",
    "flatcar_production_pxe_image.cpio.gz",
];

fn pair_section(name: &str, key: &Path, update: &str) -> String {
    format!(
        r#"
[images.{name}]
kernel = "http://{ORIGIN}/{k}"
initrd = ["http://{ORIGIN}/{i}"]
sums = "http://{ORIGIN}/SHA256SUMS"
signature = "http://{ORIGIN}/SHA256SUMS.asc"
keys = ["{key}"]
update = "{update}"
keep = 2
"#,
        k = PAIR[0],
        i = PAIR[1],
        key = key.display(),
    )
}

/// A Flatcar-style pair at the origin (kernel and a gzip'd cpio), its sums and signature.
fn publish_pair(dir: &Path, gpg: &Gpg, seed: u32) -> (Vec<u8>, Vec<u8>) {
    let kernel = content(3 << 20, seed);
    let initrd = content((2 << 20) + 123, seed + 1);
    std::fs::write(dir.join(PAIR[0]), &kernel).expect("kernel");
    std::fs::write(dir.join(PAIR[1]), &initrd).expect("initrd");
    sums(dir, &PAIR);
    gpg.sign(&dir.join("SHA256SUMS"));
    (kernel, initrd)
}

/// A lab with an origin folder, an HTTP root and a vendor's signing key exported to a file.
struct Fixture {
    lab: PairLab,
    dir: TempDir,
    served: PathBuf,
    www: PathBuf,
    gpg: Gpg,
    key: PathBuf,
}

impl Fixture {
    fn new(lab: PairLab) -> Self {
        let dir = TempDir::new().expect("dir");
        let served = dir.path.join("origin");
        let www = dir.path.join("www");
        std::fs::create_dir_all(&served).expect("origin dir");
        std::fs::create_dir_all(&www).expect("www");
        let gpg = Gpg::new("Vendor <release@example.org>");
        let key = dir.path.join("vendor.asc");
        gpg.export(&key);
        Self {
            lab,
            dir,
            served,
            www,
            gpg,
            key,
        }
    }

    /// The origin on the client's address, serving `served`.
    fn origin(&self) -> Origin {
        Origin::start(
            &self.lab.client,
            ORIGIN.parse().expect("addr"),
            &self.served,
        )
        .expect("origin")
    }
}

#[test]
fn image_add_resumes_a_cut_download_and_stores_a_verified_pair() {
    let t = "image_add_resumes_a_cut_download_and_stores_a_verified_pair";
    if !require_root(t) || !require_programs(t, &["python3", "gpg", "sha256sum"]) {
        return;
    }
    let f = Fixture::new(PairLab::new().expect("lab"));
    let (lab, dir, served, www, gpg, key) = (&f.lab, &f.dir, &f.served, &f.www, &f.gpg, &f.key);
    let (kernel, initrd) = publish_pair(served, gpg, 7);
    // As Flatcar publishes them: a clearsigned DIGESTS file per file, SHA-512 only usable.
    for name in PAIR {
        flatcar_digests(served, name, gpg);
    }
    let origin = f.origin();
    origin.cut_once(PAIR[0]).expect("cut");
    let cfg = dir.path.join("bootfabric.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[daemon]
state_dir = "state"
[http]
root = "{www}"
[images.flatcar]
kernel = "http://{ORIGIN}/{k}"
initrd = ["http://{ORIGIN}/{i}"]
sums = ["http://{ORIGIN}/{k}.DIGESTS.asc", "http://{ORIGIN}/{i}.DIGESTS.asc"]
keys = ["{key}"]
"#,
            www = www.display(),
            k = PAIR[0],
            i = PAIR[1],
            key = key.display(),
        ),
    )
    .expect("config");

    let o = image(&lab.server, &cfg, &["add", "flatcar"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("is current"), "{}", text(&o));

    // The cut download was resumed from where it stopped, not fetched again whole.
    let requests = origin.requests();
    let kernel_gets: Vec<&String> = requests
        .iter()
        .filter(|r| r.starts_with(&format!("GET /{} ", PAIR[0])))
        .collect();
    assert_eq!(kernel_gets.len(), 2, "{requests:?}");
    assert!(kernel_gets[0].ends_with(" -"), "{requests:?}");
    let resumed_at: u64 = kernel_gets[1]
        .rsplit("bytes=")
        .next()
        .and_then(|r| r.trim_end_matches('-').parse().ok())
        .unwrap_or_else(|| panic!("second GET is not a range: {requests:?}"));
    assert!(
        resumed_at > 0 && resumed_at < kernel.len() as u64,
        "{requests:?}"
    );

    // Stored whole, byte for byte, in its content-addressed version folder.
    let rec = record(&lab.server, &cfg, "flatcar");
    let version = rec["current"].as_str().expect("current").to_owned();
    let vdir = www.join("images/flatcar").join(&version);
    assert_eq!(std::fs::read(vdir.join(PAIR[0])).expect("kernel"), kernel);
    assert_eq!(std::fs::read(vdir.join(PAIR[1])).expect("initrd"), initrd);
    let fpr = String::from_utf8_lossy(&gpg.run(&["--with-colons", "--fingerprint"]).stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("fpr:")
                .map(|r| r.trim_matches(':').to_owned())
        })
        .expect("fingerprint");
    assert_eq!(rec["versions"][0]["signed_by"].as_str(), Some(fpr.as_str()));
    assert_eq!(rec["last_attempt"]["ok"], true);

    // Nothing new at the origin: the sums say so, and nothing is downloaded again.
    let before = origin.requests().len();
    let o = image(&lab.server, &cfg, &["update", "flatcar"]);
    assert!(text(&o).contains("unchanged"), "{}", text(&o));
    let after = origin.requests();
    assert!(
        after[before..].iter().all(|r| r.contains(".DIGESTS.asc")),
        "{after:?}"
    );
    assert!(!www.join("images/flatcar/.staging").join(PAIR[0]).exists());
}

#[test]
fn tampered_images_and_bad_signatures_are_refused_and_the_served_version_stays_until_a_good_one_and_rollback(
) {
    let t = "tampered_images_and_bad_signatures_are_refused_and_the_served_version_stays_until_a_good_one_and_rollback";
    if !require_root(t) || !require_programs(t, &["python3", "gpg", "sha256sum"]) {
        return;
    }
    let f = Fixture::new(PairLab::new().expect("lab"));
    let (lab, dir, served, www, gpg, key) = (&f.lab, &f.dir, &f.served, &f.www, &f.gpg, &f.key);
    // Another key with the vendor's user id: only the configured key's signatures count.
    let attacker = Gpg::new("Vendor <release@example.org>");
    let (k1, _) = publish_pair(served, gpg, 11);
    // The first release's signed sums, for a mirror that later serves them again.
    let old_sums = std::fs::read(served.join("SHA256SUMS")).expect("sums");
    let old_sig = std::fs::read(served.join("SHA256SUMS.asc")).expect("signature");
    let _origin = f.origin();
    let config = format!(
        r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[http]
root = "{www}"
{images}"#,
        www = www.display(),
        images = pair_section("fc", key, "never"),
    );
    let inventory = r#"
[profiles.fc]
image = "fc"
cmdline = "console=ttyS0"
[[hosts]]
name = "node01"
mac = "52:54:00:0f:00:01"
ip = "10.77.0.11"
profile = "fc"
"#;
    // The first version, before the daemon starts (a profile names the image).
    // The daemon's state folder is named absolute, so this config shares it.
    let cfg0 = dir.path.join("first.toml");
    let daemon_dir = TempDir::new().expect("daemon dir");
    let state = daemon_dir.path.join("state");
    std::fs::write(
        &cfg0,
        config.replace("inventory = \"hosts.toml\"\n", "").replace(
            "state_dir = \"state\"",
            &format!("state_dir = \"{}\"", state.display()),
        ),
    )
    .expect("cfg");
    let o = image(&lab.server, &cfg0, &["add", "fc"]);
    assert!(o.status.success(), "{}", text(&o));
    let v1 = current(&lab.server, &cfg0, "fc");
    let config = config.replace(
        "state_dir = \"state\"",
        &format!("state_dir = \"{}\"", state.display()),
    );
    let daemon = Daemon::start(&lab.server, &config, &[("hosts.toml", inventory)]).expect("daemon");
    let cfg = daemon.config_path();
    let script = || {
        let (status, body) = http_get(
            &lab.server,
            "10.77.0.1:80".parse().expect("addr"),
            "/boot.ipxe?mac=52:54:00:0f:00:01",
        )
        .expect("script");
        assert_eq!(status, 200, "{body}");
        body
    };
    assert!(
        script().contains(&format!("images/fc/{v1}/{}", PAIR[0])),
        "{}",
        script()
    );

    // 1. The vendor signs a new release, but the mirror serves another kernel than the
    // signed sums list.
    let (k2, _) = publish_pair(served, gpg, 12);
    std::fs::write(served.join(PAIR[0]), content(3 << 20, 99)).expect("tamper");
    let o = image(&lab.server, &cfg, &["update", "fc"]);
    assert!(
        !o.status.success(),
        "a tampered kernel was taken: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("verification failed") && text(&o).contains(PAIR[0]),
        "{}",
        text(&o)
    );
    assert_eq!(current(&lab.server, &cfg, "fc"), v1);
    assert!(
        !www.join("images/fc/.staging").join(PAIR[0]).exists(),
        "tampered bytes were kept for a resume"
    );
    // Downloads in progress are never served.
    let (status, _) = http_get(
        &lab.server,
        "10.77.0.1:80".parse().expect("addr"),
        &format!("/images/fc/.staging/{}", PAIR[0]),
    )
    .expect("staging");
    assert_eq!(status, 403);

    // 2. New sums for the swapped kernel, signed by another key with the same user id.
    sums(served, &PAIR);
    attacker.sign(&served.join("SHA256SUMS"));
    let o = image(&lab.server, &cfg, &["update", "fc"]);
    assert!(
        !o.status.success(),
        "a foreign signature was taken: {}",
        text(&o)
    );
    assert!(
        text(&o).contains("not in the configured keys"),
        "{}",
        text(&o)
    );
    assert_eq!(current(&lab.server, &cfg, "fc"), v1);
    let rec = record(&lab.server, &cfg, "fc");
    assert_eq!(rec["verify_failures"], 2, "{rec}");
    assert_eq!(rec["last_attempt"]["ok"], false, "{rec}");

    // The daemon still serves the first version, script and files.
    assert!(
        script().contains(&format!("images/fc/{v1}/")),
        "{}",
        script()
    );
    let (status, _) = http_get(
        &lab.server,
        "10.77.0.1:80".parse().expect("addr"),
        &format!("/images/fc/{v1}/{}", PAIR[1]),
    )
    .expect("initrd");
    assert_eq!(status, 200);
    let failures = wait_for(Duration::from_secs(10), || {
        let m = metrics(&lab.server, &daemon).ok()?;
        let f = sample(
            &m,
            "bootfabric_image_verification_failures_total",
            &[("image", "fc")],
        )?;
        (f == 2.0).then_some(m)
    })
    .expect("the failures counted in /metrics");
    assert_eq!(
        sample(
            &failures,
            "bootfabric_image_last_update_success",
            &[("image", "fc")]
        ),
        Some(0.0)
    );

    // 3. The mirror serves the vendor's release as signed: it lands, and the daemon
    // serves it.
    let (again, _) = publish_pair(served, gpg, 12);
    assert_eq!(again, k2);
    let o = image(&lab.server, &cfg, &["update", "fc"]);
    assert!(o.status.success(), "{}", text(&o));
    let v2 = current(&lab.server, &cfg, "fc");
    assert_ne!(v1, v2);
    wait_for(Duration::from_secs(20), || {
        script().contains(&format!("images/fc/{v2}/")).then_some(())
    })
    .unwrap_or_else(|| panic!("the daemon still names {v1}:\n{}", daemon.log()));
    assert_ne!(k1, k2);

    // 4. Rollback: the first version again, and an update does not bring v2 back.
    let o = image(&lab.server, &cfg, &["rollback", "fc"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(current(&lab.server, &cfg, "fc"), v1);
    wait_for(Duration::from_secs(20), || {
        script().contains(&format!("images/fc/{v1}/")).then_some(())
    })
    .unwrap_or_else(|| panic!("the rollback was not served:\n{}", daemon.log()));
    let o = image(&lab.server, &cfg, &["update", "fc"]);
    assert!(text(&o).contains("rolled back from"), "{}", text(&o));
    assert_eq!(current(&lab.server, &cfg, "fc"), v1);

    // `check` verifies every stored version's files and signature again.
    let o = lab
        .server
        .command(bootfabric_bin())
        .args(["check", "--skip", "xdp,bmc,dhcp,cluster", "--config"])
        .arg(&cfg)
        .output()
        .expect("check");
    let out = text(&o);
    for v in [&v1, &v2] {
        let line = out
            .lines()
            .find(|l| l.contains(&format!("image fc version {v}")))
            .unwrap_or_else(|| panic!("no check line for {v}:\n{out}"));
        assert!(
            line.contains("signature by") && line.contains("PASS"),
            "{line}"
        );
    }
    // A stored file changed behind the fabric's back is caught.
    std::fs::write(www.join(format!("images/fc/{v2}/{}", PAIR[0])), b"x").expect("damage");
    let o = lab
        .server
        .command(bootfabric_bin())
        .args(["check", "--skip", "xdp,bmc,dhcp,cluster", "--config"])
        .arg(&cfg)
        .output()
        .expect("check");
    let out = text(&o);
    let line = out
        .lines()
        .find(|l| l.contains(&format!("image fc version {v2}")))
        .unwrap_or_else(|| panic!("no check line for {v2}:\n{out}"));
    assert!(line.contains("FAIL"), "{out}");

    // 5. A newer release lands; then the mirror serves the first release's genuinely signed
    // sums again (a rollback of the fleet by a mirror): refused as older, unless allowed.
    std::thread::sleep(Duration::from_millis(1100));
    publish_pair(served, gpg, 13);
    let o = image(&lab.server, &cfg, &["update", "fc"]);
    assert!(o.status.success(), "{}", text(&o));
    let v3 = current(&lab.server, &cfg, "fc");
    assert!(v3 != v1 && v3 != v2);
    std::fs::write(served.join("SHA256SUMS"), &old_sums).expect("old sums");
    std::fs::write(served.join("SHA256SUMS.asc"), &old_sig).expect("old signature");
    let o = image(&lab.server, &cfg, &["update", "fc"]);
    assert!(
        !o.status.success(),
        "an older release was taken: {}",
        text(&o)
    );
    assert!(text(&o).contains("older release"), "{}", text(&o));
    assert_eq!(current(&lab.server, &cfg, "fc"), v3);
    let o = image(&lab.server, &cfg, &["update", "fc", "--allow-downgrade"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(current(&lab.server, &cfg, "fc"), v1);
}

/// Builds an ISO of `tree` with xorriso (Rock Ridge and Joliet, as distributions do).
fn iso(tree: &Path, out: &Path) {
    let o = Command::new("xorriso")
        .args(["-as", "mkisofs", "-R", "-J", "-V", "TESTISO", "-o"])
        .arg(out)
        .arg(tree)
        .output()
        .expect("xorriso");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn kairos_and_leap_micro_isos_are_extracted_without_mounting() {
    let t = "kairos_and_leap_micro_isos_are_extracted_without_mounting";
    if !require_root(t) || !require_programs(t, &["python3", "xorriso", "sha256sum"]) {
        return;
    }
    let lab = PairLab::new().expect("lab");
    let dir = TempDir::new().expect("dir");
    let served = dir.path.join("origin");
    let www = dir.path.join("www");
    std::fs::create_dir_all(&served).expect("origin dir");
    std::fs::create_dir_all(&www).expect("www");
    // Kairos: /boot/kernel and /boot/initrd, the ISO fetched and listed in its sums.
    let kairos = dir.path.join("kairos");
    std::fs::create_dir_all(kairos.join("boot")).expect("tree");
    let (kk, ki) = (content(1_500_001, 3), content(2_000_000, 4));
    std::fs::write(kairos.join("boot/kernel"), &kk).expect("kernel");
    std::fs::write(kairos.join("boot/initrd"), &ki).expect("initrd");
    std::fs::write(kairos.join("README"), b"kairos").expect("readme");
    iso(&kairos, &served.join("kairos-core.iso"));
    sums(&served, &["kairos-core.iso"]);
    // Leap Micro: /boot/x86_64/loader/{linux,initrd}, an ISO already on this machine.
    let leap = dir.path.join("leap");
    std::fs::create_dir_all(leap.join("boot/x86_64/loader")).expect("tree");
    let (lk, li) = (content(900_000, 5), content(1_234_567, 6));
    std::fs::write(leap.join("boot/x86_64/loader/linux"), &lk).expect("kernel");
    std::fs::write(leap.join("boot/x86_64/loader/initrd"), &li).expect("initrd");
    let leap_iso = dir.path.join("Leap-Micro.iso");
    iso(&leap, &leap_iso);
    // A hostile ISO whose "kernel" is a Rock Ridge symlink (it reads as an empty file).
    let linked = dir.path.join("linked");
    std::fs::create_dir_all(linked.join("boot")).expect("tree");
    std::fs::write(linked.join("boot/initrd"), content(1000, 7)).expect("initrd");
    std::os::unix::fs::symlink("/etc/shadow", linked.join("boot/kernel")).expect("symlink");
    let linked_iso = dir.path.join("linked.iso");
    iso(&linked, &linked_iso);
    let _origin =
        Origin::start(&lab.client, ORIGIN.parse().expect("addr"), &served).expect("origin");
    let cfg = dir.path.join("bootfabric.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[daemon]
state_dir = "state"
[http]
root = "{www}"
[images.kairos]
iso = "http://{ORIGIN}/kairos-core.iso"
kernel = "/boot/kernel"
initrd = ["/boot/initrd"]
sums = "http://{ORIGIN}/SHA256SUMS"
[images.leap]
iso = "{leap}"
kernel = "/boot/x86_64/loader/linux"
initrd = ["/boot/x86_64/loader/initrd"]
[images.wrong]
iso = "{leap}"
kernel = "/boot/kernel"
[images.linked]
iso = "{linked}"
kernel = "/boot/kernel"
initrd = ["/boot/initrd"]
"#,
            www = www.display(),
            leap = leap_iso.display(),
            linked = linked_iso.display()
        ),
    )
    .expect("config");
    for (name, kernel, initrd, files) in [
        ("kairos", &kk, &ki, ["kernel", "initrd"]),
        ("leap", &lk, &li, ["linux", "initrd"]),
    ] {
        let o = image(&lab.server, &cfg, &["add", name]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let v = current(&lab.server, &cfg, name);
        let vdir = www.join("images").join(name).join(&v);
        assert_eq!(
            &std::fs::read(vdir.join(files[0])).expect("kernel"),
            kernel,
            "{name}"
        );
        assert_eq!(
            &std::fs::read(vdir.join(files[1])).expect("initrd"),
            initrd,
            "{name}"
        );
    }
    // The fetched ISO was only the carrier: not kept under the HTTP root.
    assert!(!www.join("images/kairos/.staging/kairos-core.iso").exists());
    // A path the ISO does not hold is named, with what the folder has.
    let o = image(&lab.server, &cfg, &["add", "wrong"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("/boot/kernel") && text(&o).contains("x86_64"),
        "{}",
        text(&o)
    );
    // A symlink is never taken as a kernel, and nothing outside the ISO is read.
    let o = image(&lab.server, &cfg, &["add", "linked"]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("/boot/kernel"), "{}", text(&o));
    assert_eq!(current(&lab.server, &cfg, "linked"), "");
    assert!(
        !www.join("images/linked/.staging/kernel").exists(),
        "a half-read file stayed"
    );
}

/// Firmware under TCG is slow; this bounds the waits, it times nothing.
const BOOT_BOUND: Duration = Duration::from_secs(300);

/// The timeline of `mac` as the admin API shows it.
fn timeline(ns: &Netns, daemon: &Daemon, mac: &str) -> String {
    http_get(ns, daemon.admin, &format!("/api/timeline?mac={mac}"))
        .map(|(_, t)| t)
        .unwrap_or_default()
}

#[test]
fn an_update_that_lands_while_a_machine_boots_leaves_it_a_matching_kernel_and_initrd() {
    let t = "an_update_that_lands_while_a_machine_boots_leaves_it_a_matching_kernel_and_initrd";
    if !require_root(t) || !require_programs(t, &["python3", "sha256sum", "qemu-system-x86_64"]) {
        return;
    }
    let cache = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/lab-cache");
    let boot = bootfabric_lab::bootimage::ensure(&cache).expect("boot image");
    let lab = bootfabric_lab::qemu::bridged_lab().expect("lab");
    let dir = TempDir::new().expect("dir");
    let served = dir.path.join("origin");
    let www = dir.path.join("www");
    std::fs::create_dir_all(&served).expect("origin dir");
    std::fs::create_dir_all(&www).expect("www");
    std::fs::copy(&boot.kernel, served.join("vmlinuz")).expect("kernel");
    std::fs::copy(&boot.initramfs, served.join("initramfs.cpio")).expect("initramfs");
    sums(&served, &["vmlinuz", "initramfs.cpio"]);
    // The origin is on the server namespace's loopback: the machine never reaches it.
    let _origin = Origin::start(
        &lab.server,
        "127.0.0.1:8081".parse().expect("addr"),
        &served,
    )
    .expect("origin");
    let state = dir.path.join("state");
    let config = format!(
        r#"[daemon]
state_dir = "{state}"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[http]
root = "{www}"
[dhcp]
[[dhcp.subnets]]
cidr = "10.77.0.0/24"
interface = "fabric0"
pools = ["10.77.0.100-10.77.0.199"]
[images.vm]
kernel = "http://127.0.0.1:8081/vmlinuz"
initrd = ["http://127.0.0.1:8081/initramfs.cpio"]
sums = "http://127.0.0.1:8081/SHA256SUMS"
"#,
        state = state.display(),
        www = www.display(),
    );
    let mac = "52:54:00:b0:0f:21";
    let inventory = format!(
        r#"[profiles.vm]
image = "vm"
cmdline = "console=ttyS0 quiet bootfabric.booted={{http_base}}/booted"
[[hosts]]
name = "vm21"
mac = "{mac}"
ip = "10.77.0.21"
profile = "vm"
"#
    );
    let first = dir.path.join("first.toml");
    std::fs::write(&first, config.replace("inventory = \"hosts.toml\"\n", "")).expect("cfg");
    let o = image(&lab.server, &first, &["add", "vm"]);
    assert!(o.status.success(), "{}", text(&o));
    let v1 = current(&lab.server, &first, "vm");
    let daemon =
        Daemon::start(&lab.server, &config, &[("hosts.toml", &inventory)]).expect("daemon");
    let console = dir.path.join("qemu.log");
    let _vm = bootfabric_lab::qemu::start(
        &lab.client,
        "tap0",
        &[
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={mac}"),
            "-boot",
            "n",
        ],
        &console,
    )
    .expect("qemu");
    let failed = |what: &str| -> ! {
        panic!(
            "{what}\ntimeline:\n{}\nconsole:\n{}\ndaemon:\n{}",
            timeline(&lab.server, &daemon, mac),
            std::fs::read_to_string(&console).unwrap_or_default(),
            daemon.log()
        )
    };
    // The machine has its script (naming v1) ...
    wait_for(BOOT_BOUND, || {
        timeline(&lab.server, &daemon, mac)
            .contains("\"phase\":\"ipxe_script\"")
            .then_some(())
    })
    .unwrap_or_else(|| failed("iPXE never fetched its script"));
    // ... when the next release lands (the initramfs with padding the kernel skips).
    let mut next = std::fs::read(&boot.initramfs).expect("initramfs");
    next.extend_from_slice(&[0u8; 4096]);
    std::fs::write(served.join("initramfs.cpio"), &next).expect("v2");
    sums(&served, &["vmlinuz", "initramfs.cpio"]);
    let o = image(&lab.server, &daemon.config_path(), &["update", "vm"]);
    assert!(o.status.success(), "{}", text(&o));
    let v2 = current(&lab.server, &daemon.config_path(), "vm");
    assert_ne!(v1, v2);
    if timeline(&lab.server, &daemon, mac).contains("\"phase\":\"booted\"") {
        failed("the machine booted before the update landed: the test proves nothing");
    }
    // New boots get v2 as soon as the daemon has reloaded.
    wait_for(Duration::from_secs(30), || {
        let (_, s) = http_get(
            &lab.server,
            "10.77.0.1:80".parse().expect("addr"),
            &format!("/boot.ipxe?mac={mac}"),
        )
        .ok()?;
        s.contains(&format!("images/vm/{v2}/")).then_some(())
    })
    .unwrap_or_else(|| failed("the daemon never served the new version"));
    // The machine boots to its callback on the pair it was given: both from v1.
    let tl = wait_for(BOOT_BOUND, || {
        let tl = timeline(&lab.server, &daemon, mac);
        tl.contains("\"phase\":\"booted\"").then_some(tl)
    })
    .unwrap_or_else(|| failed("the machine never reported booted"));
    let kernel_len = std::fs::metadata(&boot.kernel).expect("kernel").len();
    let initrd_len = std::fs::metadata(&boot.initramfs).expect("initramfs").len();
    for want in [
        format!("/images/vm/{v1}/vmlinuz: {kernel_len} bytes"),
        format!("/images/vm/{v1}/initramfs.cpio: {initrd_len} bytes"),
    ] {
        assert!(tl.contains(&want), "no {want:?} in {tl}");
    }
    assert!(!tl.contains(&format!("/images/vm/{v2}/")), "{tl}");
    // v1 is still stored (it was current when the machine got its script).
    assert!(www
        .join("images/vm")
        .join(&v1)
        .join("initramfs.cpio")
        .exists());
}

#[test]
fn the_daemon_updates_an_image_on_its_schedule_and_serves_the_new_version() {
    let t = "the_daemon_updates_an_image_on_its_schedule_and_serves_the_new_version";
    if !require_root(t) || !require_programs(t, &["python3", "gpg", "sha256sum"]) {
        return;
    }
    let f = Fixture::new(PairLab::new().expect("lab"));
    let (lab, dir, served, www, gpg, key) = (&f.lab, &f.dir, &f.served, &f.www, &f.gpg, &f.key);
    publish_pair(served, gpg, 21);
    let _origin = f.origin();
    let state = dir.path.join("state");
    // Every two seconds: the schedule, not an operator, fetches each release.
    let config = format!(
        r#"[daemon]
state_dir = "{state}"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[http]
root = "{www}"
{images}"#,
        state = state.display(),
        www = www.display(),
        images = pair_section("fc", key, "*/2 * * * * *"),
    );
    let daemon = Daemon::start(&lab.server, &config, &[]).expect("daemon");
    let cfg = daemon.config_path();
    let v1 = wait_for(Duration::from_secs(30), || {
        Some(current(&lab.server, &cfg, "fc")).filter(|v| !v.is_empty())
    })
    .unwrap_or_else(|| panic!("no scheduled first version:\n{}", daemon.log()));
    let (k2, _) = publish_pair(served, gpg, 22);
    let v2 = wait_for(Duration::from_secs(30), || {
        Some(current(&lab.server, &cfg, "fc")).filter(|v| *v != v1)
    })
    .unwrap_or_else(|| panic!("the new release was not fetched:\n{}", daemon.log()));
    assert_eq!(
        std::fs::read(www.join(format!("images/fc/{v2}/{}", PAIR[0]))).expect("kernel"),
        k2
    );
    let m = wait_for(Duration::from_secs(10), || {
        let m = metrics(&lab.server, &daemon).ok()?;
        (sample(
            &m,
            "bootfabric_image_info",
            &[("image", "fc"), ("version", &v2)],
        ) == Some(1.0))
        .then_some(m)
    })
    .expect("bootfabric_image_info names the new version");
    assert_eq!(
        sample(
            &m,
            "bootfabric_image_info",
            &[("image", "fc"), ("version", &v1)]
        ),
        None,
        "the old version is no longer shown current"
    );
    assert_eq!(
        sample(
            &m,
            "bootfabric_image_last_update_success",
            &[("image", "fc")]
        ),
        Some(1.0)
    );
    // The metrics change when the record does; the reload it starts ends a
    // moment later, so the log is waited for, not read once.
    wait_for(Duration::from_secs(30), || {
        daemon
            .log()
            .contains("image record changed: config reloaded")
            .then_some(())
    })
    .unwrap_or_else(|| panic!("no reload after the new version:\n{}", daemon.log()));
}
