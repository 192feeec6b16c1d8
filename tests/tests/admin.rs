//! The admin API's trust boundary, attacked the way a machine on the provisioning network
//! would: from the client namespace of the lab, with curl. Read-only endpoints stay open to
//! `admin.allow`; control (POST and DELETE /api/reboot) needs the bearer token of
//! `admin.token_file` (or, without one, a loopback peer), a JSON body, and with
//! `admin.client_ca` a client certificate. `bootfabric reboot` sends the token (and speaks
//! TLS with a client certificate); plain-http BMCs need `allow_plaintext = true`.

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::TcpListener,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    process::Command,
    time::Duration,
};

use bootfabric_lab::{
    bootfabric_bin, have_program, http_get, require, require_root, run, sample, wait_for, Daemon,
    Netns, PairLab, TempDir,
};

/// The attacker's selection: every host with a BMC.
const ALL: &str = r#"{"all":true}"#;

fn lab(test: &str) -> Option<PairLab> {
    if !require_root(test) || !require(have_program("curl"), test, "curl is missing") {
        return None;
    }
    Some(PairLab::new().expect("lab"))
}

/// A BMC stand-in in the server namespace: it only counts who connects, so the test can
/// tell that no reboot run touched it.
fn bmc_listener(ns: &Netns) -> TcpListener {
    ns.run(|| {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.set_nonblocking(true).expect("nonblocking");
        l
    })
    .expect("in namespace")
}

fn touched(bmc: &TcpListener) -> bool {
    match bmc.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("bmc accept: {e}"),
    }
}

/// A daemon whose admin API listens on the fabric address, open to the whole provisioning
/// subnet (the shape of the old Kubernetes manifest), with `admin_extra` in `[admin]`.
fn daemon(lab: &PairLab, bmc: &TcpListener, admin_extra: &str) -> Daemon {
    daemon_on(lab, bmc, "10.77.0.1:0", admin_extra)
}

/// [`daemon`] with its admin API on `listen`.
fn daemon_on(lab: &PairLab, bmc: &TcpListener, listen: &str, admin_extra: &str) -> Daemon {
    let bmc = bmc.local_addr().expect("bmc addr");
    let config = format!(
        r#"[daemon]
state_dir = "state"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "{listen}"
allow = ["10.77.0.0/24", "127.0.0.0/8"]
{admin_extra}
[xdp]
mode = "off"
"#
    );
    let inventory = format!(
        r#"[profiles.linux]
kernel = "linux/vmlinuz"
[[hosts]]
name = "node01"
mac = "52:54:00:b0:0f:01"
ip = "10.77.0.11"
profile = "linux"
bmc = {{ url = "https://{bmc}", username = "root", password_env = "BMC_PASS", fingerprint = "{pin}", timeout_s = 2, attempts = 1 }}
"#,
        pin = "ab".repeat(32)
    );
    Daemon::start(&lab.server, &config, &[("hosts.toml", &inventory)]).expect("daemon")
}

/// curl from `ns`: (status, body).
fn curl(ns: &Netns, args: &[&str]) -> (u16, String) {
    let out = run(ns
        .command("curl")
        .args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
        .args(args))
    .expect("curl");
    let (body, code) = out.rsplit_once('\n').expect("status line");
    (code.trim().parse().expect("status"), body.to_owned())
}

/// `POST url` from `ns` through curl, with `headers` and `body`: (status, body).
fn post(ns: &Netns, url: &str, headers: &[&str], body: &str) -> (u16, String) {
    let mut args = vec!["-X", "POST"];
    for h in headers {
        args.extend(["-H", h]);
    }
    args.extend(["--data", body, url]);
    curl(ns, &args)
}

fn url(daemon: &Daemon, path: &str) -> String {
    format!("http://{}{path}", daemon.admin)
}

/// `bootfabric admin token create --file PATH --print`: the token.
fn create_token(path: &Path) -> String {
    let out = run(Command::new(bootfabric_bin())
        .args(["admin", "token", "create", "--print", "--file"])
        .arg(path))
    .expect("token create");
    out.trim().to_owned()
}

/// A fresh admin token file (`admin.token` in a folder of its own, removed on drop) and
/// its token.
struct Secret {
    dir: TempDir,
    file: std::path::PathBuf,
    token: String,
}

impl Secret {
    fn new() -> Self {
        let dir = TempDir::new().expect("tempdir");
        let file = dir.path.join("admin.token");
        let token = create_token(&file);
        Secret { dir, file, token }
    }

    /// The `[admin]` key that makes a daemon require this token.
    fn key(&self) -> String {
        format!("token_file = \"{}\"", self.file.display())
    }
}

fn no_run_started(lab: &PairLab, daemon: &Daemon, bmc: &TcpListener) {
    let (status, body) = http_get(&lab.client, daemon.admin, "/api/reboot").expect("status");
    assert_eq!(status, 404, "a reboot run exists: {body}");
    assert!(!touched(bmc), "a BMC was contacted");
}

#[test]
fn an_allowed_address_without_credentials_cannot_reboot_the_fleet() {
    let t = "an_allowed_address_without_credentials_cannot_reboot_the_fleet";
    let Some(lab) = lab(t) else { return };
    let bmc = bmc_listener(&lab.server);

    // No token file: control is for loopback only, however wide admin.allow is.
    let d = daemon(&lab, &bmc, "");
    let (status, body) = post(
        &lab.client,
        &url(&d, "/api/reboot"),
        &["Content-Type: application/json"],
        ALL,
    );
    assert_eq!(
        status, 403,
        "POST /api/reboot {ALL} from 10.77.0.2 (in admin.allow) without a credential: {body}"
    );
    assert!(body.contains("loopback"), "{body}");
    no_run_started(&lab, &d, &bmc);
    // Read-only endpoints stay open to admin.allow.
    assert_eq!(
        http_get(&lab.client, d.admin, "/healthz")
            .expect("healthz")
            .0,
        200
    );
    assert!(
        d.log().contains("admin.token_file is not set"),
        "start-up warning missing:\n{}",
        d.log()
    );
    drop(d);

    // With a token file, every control call needs the token, even from loopback.
    let secret = Secret::new();
    let d = daemon(&lab, &bmc, &secret.key());
    for ns in [&lab.client, &lab.server] {
        let (status, body) = post(
            ns,
            &url(&d, "/api/reboot"),
            &["Content-Type: application/json"],
            ALL,
        );
        assert_eq!(status, 401, "{}: {body}", ns.name());
    }
    no_run_started(&lab, &d, &bmc);
    assert!(
        d.log_when(
            |log| log.contains("admin control call refused") && log.contains("peer=10.77.0.2:")
        )
        .is_some(),
        "refusal not logged with its caller:\n{}",
        d.log()
    );
}

#[test]
fn a_cross_site_text_plain_post_and_bad_tokens_are_refused() {
    let t = "a_cross_site_text_plain_post_and_bad_tokens_are_refused";
    let Some(lab) = lab(t) else { return };
    let bmc = bmc_listener(&lab.server);

    // A browser's "simple" cross-site request: text/plain needs no CORS preflight.
    let d = daemon(&lab, &bmc, "");
    let (status, body) = post(
        &lab.client,
        &url(&d, "/api/reboot"),
        &[
            "Content-Type: text/plain;charset=UTF-8",
            "Origin: http://attacker.example",
        ],
        ALL,
    );
    assert_eq!(status, 415, "cross-site text/plain POST: {body}");
    no_run_started(&lab, &d, &bmc);
    drop(d);

    let secret = Secret::new();
    let token = secret.token.as_str();
    assert_eq!(token.len(), 64, "{token}");
    let d = daemon(&lab, &bmc, &secret.key());
    let reboot = url(&d, "/api/reboot");
    let json = "Content-Type: application/json";
    let wrong = format!("Authorization: Bearer {}", "0".repeat(64));
    let right = format!("Authorization: Bearer {token}");
    for (what, args) in [
        (
            "a wrong token",
            vec![
                "-X", "POST", "-H", json, "-H", &wrong, "--data", ALL, &reboot,
            ],
        ),
        (
            "the token as Basic",
            vec![
                "-X", "POST", "-H", json, "-u", &token, "--data", ALL, &reboot,
            ],
        ),
        ("DELETE without a token", vec!["-X", "DELETE", &reboot]),
        (
            "DELETE with a wrong token",
            vec!["-X", "DELETE", "-H", &wrong, &reboot],
        ),
        (
            "an unknown control path",
            vec![
                "-X",
                "POST",
                "-H",
                json,
                "--data",
                ALL,
                &url(&d, "/api/anything"),
            ],
        ),
    ] {
        let (status, body) = curl(&lab.client, &args);
        assert_eq!(status, 401, "{what}: {body}");
    }
    // With the token but a text/plain body: still not JSON.
    let (status, body) = post(
        &lab.client,
        &reboot,
        &["Content-Type: text/plain", &right],
        ALL,
    );
    assert_eq!(status, 415, "{body}");
    no_run_started(&lab, &d, &bmc);

    // The right token goes through: a dry run plans without touching a BMC, and a DELETE
    // is authorised (there is nothing to cancel).
    let (status, body) = post(
        &lab.client,
        &reboot,
        &[json, &right],
        r#"{"all":true,"dry_run":true}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("node01"), "{body}");
    let (status, body) = curl(&lab.client, &["-X", "DELETE", "-H", &right, &reboot]);
    assert_eq!(status, 409, "{body}");
    assert!(!touched(&bmc), "a dry run contacted a BMC");
    let log = d
        .log_when(|log| {
            log.contains("admin control call by token") && log.contains("method=DELETE")
        })
        .unwrap_or_else(|| panic!("authorised call not logged:\n{}", d.log()));
    assert!(!log.contains(token), "the token leaked into the log");
    let (_, metrics) = http_get(&lab.client, d.admin, "/metrics").expect("metrics");
    let calls = |outcome: &str| {
        sample(
            &metrics,
            "bootfabric_admin_control_calls_total",
            &[("outcome", outcome)],
        )
    };
    assert_eq!(calls("wrong_token"), Some(2.0), "{metrics}");
    assert_eq!(calls("missing_token"), Some(3.0), "{metrics}");
    assert_eq!(calls("not_json"), Some(1.0), "{metrics}");
    assert_eq!(calls("allowed"), Some(2.0), "{metrics}");
}

#[test]
fn a_running_reboot_cannot_be_cancelled_without_the_token() {
    let t = "a_running_reboot_cannot_be_cancelled_without_the_token";
    let Some(lab) = lab(t) else { return };
    let bmc = bmc_listener(&lab.server);
    // On every address: the operator on the node reaches it on loopback, the machines on
    // the provisioning network on 10.77.0.1.
    let fabric = |d: &Daemon| format!("http://10.77.0.1:{}/api/reboot", d.admin.port());
    let start = |d: &Daemon, auth: &[&str]| {
        let reboot = format!("http://127.0.0.1:{}/api/reboot", d.admin.port());
        let mut args = vec!["-X", "POST", "-H", "Content-Type: application/json"];
        args.extend_from_slice(auth);
        args.extend_from_slice(&["--data", ALL, &reboot]);
        let (status, body) = curl(&lab.server, &args);
        assert_eq!(status, 202, "the operator's run did not start: {body}");
    };
    let running = |d: &Daemon| {
        let addr = std::net::SocketAddr::from(([10, 77, 0, 1], d.admin.port()));
        let (status, body) = http_get(&lab.client, addr, "/api/reboot").expect("status");
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("\"state\":\"running\""),
            "the run was stopped: {body}"
        );
    };

    // No token file: the operator starts a run from the node; a provisioned machine in
    // admin.allow tries to cancel it.
    let d = daemon_on(&lab, &bmc, "0.0.0.0:0", "");
    start(&d, &[]);
    let (status, body) = curl(&lab.client, &["-X", "DELETE", &fabric(&d)]);
    assert_eq!(status, 403, "DELETE /api/reboot from 10.77.0.2: {body}");
    running(&d);
    drop(d);

    let secret = Secret::new();
    let d = daemon_on(&lab, &bmc, "0.0.0.0:0", &secret.key());
    let right = format!("Authorization: Bearer {}", secret.token);
    start(&d, &["-H", &right]);
    let wrong = format!("Authorization: Bearer {}", "f".repeat(64));
    for args in [vec!["-X", "DELETE"], vec!["-X", "DELETE", "-H", &wrong]] {
        let reboot = fabric(&d);
        let (status, body) = curl(&lab.client, &[&args[..], &[&reboot]].concat());
        assert_eq!(status, 401, "{args:?}: {body}");
        running(&d);
    }
    let (status, body) = curl(&lab.client, &["-X", "DELETE", "-H", &right, &fabric(&d)]);
    assert_eq!(status, 200, "the token holder cannot cancel: {body}");
}

#[test]
fn bootfabric_reboot_sends_the_token() {
    let t = "bootfabric_reboot_sends_the_token";
    let Some(lab) = lab(t) else { return };
    let bmc = bmc_listener(&lab.server);
    let secret = Secret::new();
    let d = daemon(&lab, &bmc, &secret.key());
    let cli = |extra: &[&str]| {
        lab.client
            .command(bootfabric_bin())
            .args(["reboot", "--all", "--dry-run", "--config"])
            .arg(d.config_path())
            .args(["--admin", &d.admin.to_string()])
            .args(extra)
            .output()
            .expect("bootfabric reboot")
    };
    let out = cli(&[]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("node01"));

    let other = secret.dir.path.join("other.token");
    create_token(&other);
    let out = cli(&["--token-file", other.to_str().expect("utf8")]);
    // 1: the run failed (2 is kept for an invalid configuration).
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("wrong bearer token"), "{err}");

    // Creating over an existing token needs --force.
    let out = Command::new(bootfabric_bin())
        .args(["admin", "token", "create", "--file"])
        .arg(&secret.file)
        .output()
        .expect("token create");
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--force"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mode = std::fs::metadata(&secret.file)
        .expect("meta")
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}

/// openssl: a CA, a server certificate for 10.77.0.1 and a client certificate, all signed by it.
fn pki(dir: &Path) {
    use bootfabric_lab::pki::{issue, Leaf};
    issue(
        dir,
        &[
            Leaf {
                name: "server",
                cn: "bootfabric-admin",
                ext: "subjectAltName = IP:10.77.0.1",
            },
            Leaf {
                name: "client",
                cn: "operator-alice",
                ext: "extendedKeyUsage = clientAuth",
            },
        ],
    )
    .expect("openssl");
}

#[test]
fn mutual_tls_needs_a_client_certificate_for_control_only() {
    let t = "mutual_tls_needs_a_client_certificate_for_control_only";
    let Some(lab) = lab(t) else { return };
    if !require(have_program("openssl"), t, "openssl is missing") {
        return;
    }
    let bmc = bmc_listener(&lab.server);
    let pki_dir = TempDir::new().expect("tempdir");
    pki(&pki_dir.path);
    let token_file = pki_dir.path.join("admin.token");
    let token = create_token(&token_file);
    let p = |f: &str| pki_dir.path.join(f).display().to_string();
    let d = daemon(
        &lab,
        &bmc,
        &format!(
            "token_file = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\nclient_ca = \"{}\"",
            p("admin.token"),
            p("server.pem"),
            p("server.key"),
            p("ca.pem")
        ),
    );
    let base = format!("https://{}", d.admin);
    let ca = p("ca.pem");
    let right = format!("Authorization: Bearer {token}");
    let json = "Content-Type: application/json";
    let dry = r#"{"all":true,"dry_run":true}"#;
    let reboot = format!("{base}/api/reboot");

    // Read-only: no client certificate needed.
    let (status, body) = curl(&lab.client, &["--cacert", &ca, &format!("{base}/healthz")]);
    // The first line is the probe's; the generation follows (1: no reload yet).
    assert_eq!((status, body.as_str()), (200, "ok\ngeneration 1\n"));
    // Control with the token but no certificate: refused.
    let (status, body) = curl(
        &lab.client,
        &[
            "--cacert", &ca, "-X", "POST", "-H", json, "-H", &right, "--data", dry, &reboot,
        ],
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("client certificate"), "{body}");
    // With the certificate and the token: accepted, and logged with the certificate's name.
    let (cert, key) = (p("client.pem"), p("client.key"));
    let with_cert = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    let (status, body) = curl(
        &lab.client,
        &[
            &with_cert[..],
            &[
                "-X", "POST", "-H", json, "-H", &right, "--data", dry, &reboot,
            ],
        ]
        .concat(),
    );
    assert_eq!(status, 200, "{body}");
    // The certificate alone is not enough when there is a token file.
    let (status, body) = curl(
        &lab.client,
        &[
            &with_cert[..],
            &["-X", "POST", "-H", json, "--data", dry, &reboot],
        ]
        .concat(),
    );
    assert_eq!(status, 401, "{body}");
    assert!(
        d.logged("CN=operator-alice"),
        "client certificate not in the audit log:\n{}",
        d.log()
    );
    // Plain HTTP to the TLS port gets no HTTP: a TLS alert record (content type 21), then
    // the close. (curl reports it as "Received HTTP/0.9 when not allowed", exit 1; a
    // timeout or a refused connection would be other failures, not this one.)
    let admin = d.admin;
    let plain = lab
        .client
        .run(move || -> Result<Vec<u8>, String> {
            let mut s = std::net::TcpStream::connect(admin).map_err(|e| e.to_string())?;
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .map_err(|e| e.to_string())?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: admin\r\n\r\n")
                .map_err(|e| e.to_string())?;
            let mut answer = Vec::new();
            s.read_to_end(&mut answer)
                .map_err(|e| format!("{:?}: {e}", e.kind()))?;
            Ok(answer)
        })
        .expect("client namespace");
    assert!(
        matches!(&plain, Ok(a) if a.first() == Some(&21) && !a.windows(5).any(|w| w == b"HTTP/")),
        "plain HTTP to the TLS port: {plain:?}"
    );

    // The CLI: pins the server's certificate from admin.tls_cert and presents its own.
    let out = lab
        .client
        .command(bootfabric_bin())
        .args(["reboot", "--all", "--dry-run", "--config"])
        .arg(d.config_path())
        .args([
            "--admin",
            &d.admin.to_string(),
            "--client-cert",
            &cert,
            "--client-key",
            &key,
        ])
        .output()
        .expect("bootfabric reboot");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!touched(&bmc), "a dry run contacted a BMC");
}

fn check_config_only(dir: &Path, inventory: &str) -> (i32, String) {
    std::fs::write(dir.join("hosts.toml"), inventory).expect("inventory");
    let cfg = dir.join("bootfabric.toml");
    std::fs::write(&cfg, "[daemon]\ninventory = \"hosts.toml\"\n").expect("config");
    let out = Command::new(bootfabric_bin())
        .args(["check", "--config-only", "--config"])
        .arg(&cfg)
        .output()
        .expect("bootfabric check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

#[test]
fn a_plain_http_bmc_needs_allow_plaintext() {
    let dir = TempDir::new().expect("tempdir");
    let host = |n: u8, bmc: &str| {
        format!(
            "[[hosts]]\nname = \"node0{n}\"\nmac = \"52:54:00:b0:0f:0{n}\"\nprofile = \"linux\"\nbmc = {{ url = \"http://10.78.0.1:8000\", username = \"root\", password_env = \"BMC_PASS\"{bmc} }}\n"
        )
    };
    let profiles = "[profiles.linux]\nkernel = \"linux/vmlinuz\"\n";
    let (code, out) = check_config_only(&dir.path, &format!("{profiles}{}", host(1, "")));
    assert_eq!(code, 2, "an http:// BMC was accepted: {out}");
    assert!(
        out.contains("hosts[0].bmc.allow_plaintext") && out.contains("in clear"),
        "{out}"
    );
    let allowed = format!(
        "{profiles}{}{}",
        host(1, ", allow_plaintext = true"),
        host(2, ", allow_plaintext = true")
    );
    let (code, out) = check_config_only(&dir.path, &allowed);
    assert_eq!(code, 0, "{out}");

    // Allowed, it is said once per BMC URL at start.
    if !require_root("a_plain_http_bmc_needs_allow_plaintext (daemon part)") {
        return;
    }
    let ns = Netns::new("plain").expect("netns");
    let d = Daemon::start(
        &ns,
        "[daemon]\nstate_dir = \"state\"\ninventory = \"hosts.toml\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[xdp]\nmode = \"off\"\n",
        &[("hosts.toml", &allowed)],
    )
    .expect("daemon");
    // The warnings come after the admin server's "listening" line (which `start` waits
    // for) and before "bootfabric ready", in the same task.
    let log = wait_for(Duration::from_secs(30), || {
        let log = d.log();
        log.contains("bootfabric ready").then_some(log)
    })
    .unwrap_or_else(|| panic!("the daemon never became ready:\n{}", d.log()));
    assert_eq!(
        log.matches("BMC over plain http").count(),
        1,
        "one warning for the one URL:\n{log}"
    );
    assert!(log.contains("http://10.78.0.1:8000"), "{log}");
}

#[test]
fn token_files_readable_by_others_are_refused_naming_the_key() {
    let dir = TempDir::new().expect("tempdir");
    let token = dir.path.join("admin.token");
    let cfg = dir.path.join("bootfabric.toml");
    std::fs::write(&cfg, "[admin]\ntoken_file = \"admin.token\"\n").expect("config");
    // The token goes where the config says, and is printed only when asked.
    let out = Command::new(bootfabric_bin())
        .args(["admin", "token", "create", "--config"])
        .arg(&cfg)
        .output()
        .expect("token create");
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stdout.is_empty(),
        "the token was printed without --print"
    );
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains(&token.display().to_string()), "{said}");
    let text = std::fs::read_to_string(&token).expect("token file");
    assert!(!said.contains(text.trim()), "the token was printed: {said}");
    let check = || {
        Command::new(bootfabric_bin())
            .args(["check", "--config-only", "--config"])
            .arg(&cfg)
            .output()
            .expect("check")
    };
    assert!(check().status.success());
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = check();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.token_file") && err.contains("0600"),
        "{err}"
    );
}

#[test]
fn metrics_carry_the_standard_process_metrics() {
    let t = "metrics_carry_the_standard_process_metrics";
    let Some(lab) = lab(t) else { return };
    let bmc = bmc_listener(&lab.server);
    let d = daemon(&lab, &bmc, "");
    let (status, metrics) = http_get(&lab.client, d.admin, "/metrics").expect("metrics");
    assert_eq!(status, 200, "{metrics}");
    // The names every exporter uses, so the usual fd and memory alerts apply as they are.
    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_virtual_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        let v = sample(&metrics, name, &[]).unwrap_or_else(|| panic!("no {name}:\n{metrics}"));
        // The crate counts CPU in whole seconds: 0 for a daemon just started.
        let least = if name == "process_cpu_seconds_total" {
            0.0
        } else {
            1.0
        };
        assert!(v >= least, "{name} = {v}");
    }
}
