//! The Redfish client against sushy-emulator (PyPI sushy-tools, fake driver), started by the
//! test on the loopback of a namespace of its own: discovery, boot override, reset and power
//! polling; refused credentials; TLS with a CA file, a fingerprint pin and the opt-out; and a
//! BMC that hangs is retried, then given up on, while another BMC is served meanwhile.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bootfabric::redfish::{
    tls::parse_fingerprint, BmcConfig, BootMode, BootTarget, Client, PasswordSource, PowerState,
    RedfishError, TlsPolicy,
};
use bootfabric_lab::{
    have_program, require, require_root, run,
    sushy::{Driver, FakeSystem, PowerLog, Sushy},
    wait_for, Netns, TempDir,
};

const USER: &str = "admin";
const PASSWORD: &str = "s3cret-bmc";

fn port() -> u16 {
    20000 + (std::process::id() % 20000) as u16
}

/// The two fake systems: node01 off, node02 on.
const SYSTEMS: [FakeSystem<'static>; 2] = [
    FakeSystem {
        name: "node01",
        uuid: "11111111-0000-0000-0000-000000000001",
        power: "Off",
        mac: "52:54:00:b0:0f:01",
    },
    FakeSystem {
        name: "node02",
        uuid: "11111111-0000-0000-0000-000000000002",
        power: "On",
        mac: "52:54:00:b0:0f:02",
    },
];

/// sushy-emulator with [`SYSTEMS`] and basic auth, over TLS when `tls` names a certificate
/// and key.
fn sushy(ns: &Netns, dir: &Path, tls: Option<(&Path, &Path)>) -> Sushy {
    Sushy::start(ns, dir, port(), &SYSTEMS, (USER, PASSWORD), tls)
}

fn config(url: &str, password_file: &Path, tls: TlsPolicy) -> BmcConfig {
    let mut c = BmcConfig::new(
        url,
        USER,
        PasswordSource::File(password_file.to_owned()),
        tls,
    );
    c.timeout = Duration::from_secs(5);
    c
}

fn password_file(dir: &Path, password: &str) -> PathBuf {
    let p = dir.join("bmc.pass");
    std::fs::write(&p, format!("{password}\n")).expect("password");
    p
}

fn lab(t: &str) -> Option<(Netns, TempDir)> {
    if !require_root(t)
        || !require(
            have_program("sushy-emulator"),
            t,
            "sushy-emulator is missing (cargo xtask setup installs sushy-tools)",
        )
    {
        return None;
    }
    let ns = Netns::new("bmc").expect("netns");
    ns.ip(&["link", "set", "lo", "up"]).expect("lo");
    Some((ns, TempDir::new().expect("dir")))
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(f)
}

#[test]
fn sushy_discovery_boot_override_reset_and_power() {
    let Some((ns, dir)) = lab("sushy_discovery_boot_override_reset_and_power") else {
        return;
    };
    // The fake driver reports each change it makes: a restart shows as the machine going
    // Off with a restart pending, then On, which a power state read before and after (On
    // both times) cannot tell from no restart at all.
    let power_log = PowerLog::start(&ns).expect("notification listener");
    let bmc = Sushy::start_with(
        &ns,
        &dir.path,
        ("127.0.0.1", port()),
        Driver::FakeNotifying {
            systems: &SYSTEMS,
            url: &power_log.url,
        },
        (USER, PASSWORD),
        None,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let pass = password_file(&dir.path, PASSWORD);
    let url = bmc.url.clone();
    let restarted = ns.run(move || {
        block_on(async move {
            let mut c = Client::connect(&config(&url, &pass, TlsPolicy::Insecure))
                .await
                .expect("connect (sushy has no SessionService: basic auth)");
            let systems = c.systems().await.expect("systems");
            assert_eq!(systems.len(), 2, "{systems:?}");
            let none = c.the_system().await;
            assert!(
                matches!(&none, Err(RedfishError::Protocol(m)) if m.contains("manages 2 systems")),
                "two systems and none configured must be refused as such: {none:?}"
            );
            for path in &systems {
                let s = c.system(path).await.expect("system");
                let name_is = |n: &str| path.ends_with(n);
                assert!(
                    name_is("11111111-0000-0000-0000-000000000001")
                        || name_is("11111111-0000-0000-0000-000000000002")
                        || path.contains("node0"),
                    "{path}"
                );
                assert!(s.reset_target.is_some(), "{s:?}");
                assert!(s.boot_targets_allowed.iter().any(|t| t == "Pxe"), "{s:?}");
            }
            // Find the machine that is off: it gets On, the one that is on a restart.
            let mut off = None;
            let mut on = None;
            for path in &systems {
                match c.power_state(path).await.expect("power") {
                    PowerState::Off => off = Some(path.clone()),
                    PowerState::On => on = Some(path.clone()),
                    other => panic!("{path}: {other:?}"),
                }
            }
            let (off, on) = (off.expect("an off system"), on.expect("an on system"));
            c.set_boot_once(&off, BootTarget::Pxe, Some(BootMode::Uefi))
                .await
                .expect("boot override");
            let s = c.system(&off).await.expect("system");
            assert_eq!(s.boot_target.as_deref(), Some("Pxe"));
            assert_eq!(s.boot_mode.as_deref(), Some("UEFI"));
            assert_eq!(c.reset(&off).await.expect("reset"), "On");
            // The fake driver applies power changes 1-11 s later.
            c.wait_power(
                &off,
                PowerState::On,
                Duration::from_secs(30),
                Duration::from_millis(500),
            )
            .await
            .expect("powered on");
            let kind = c.reset(&on).await.expect("restart");
            assert!(kind.contains("Restart"), "{kind}");
            c.wait_power(
                &on,
                PowerState::On,
                Duration::from_secs(30),
                Duration::from_millis(500),
            )
            .await
            .expect("back on after the restart");
            c.logout().await;
            on
        })
    })
    .expect("namespace");
    // The restarted machine went down with the restart pending, and came back On after it.
    let changes: Vec<_> = power_log
        .changes()
        .into_iter()
        .filter(|ch| restarted.ends_with(&format!("/{}", ch.uuid)))
        .collect();
    eprintln!("BMC changes of {restarted}: {changes:?}");
    let down = changes.iter().position(|ch| {
        ch.power == "Off" && ch.pending.as_deref().is_some_and(|p| p.contains("Restart"))
    });
    let up = down.and_then(|d| {
        changes[d..]
            .iter()
            .position(|ch| ch.power == "On" && ch.pending.is_none())
    });
    assert!(
        up.is_some(),
        "no restart seen by the BMC for {restarted:?}: {changes:?}"
    );
}

#[test]
fn refused_credentials_fail_at_once_and_never_show() {
    let Some((ns, dir)) = lab("refused_credentials_fail_at_once_and_never_show") else {
        return;
    };
    let bmc = sushy(&ns, &dir.path, None);
    let pass = password_file(&dir.path, "wrong-password");
    let url = bmc.url.clone();
    let err = ns
        .run(move || {
            block_on(async move {
                let mut c = Client::connect(&config(&url, &pass, TlsPolicy::Insecure))
                    .await
                    .expect("the service root needs no credentials");
                c.systems().await.expect_err("wrong password")
            })
        })
        .expect("namespace");
    assert!(matches!(err, RedfishError::Unauthorized(401)), "{err:?}");
    assert!(!err.is_transient());
    let shown = format!("{err} {err:?}");
    assert!(
        !shown.contains("wrong-password") && !shown.contains(PASSWORD),
        "{shown}"
    );
    // A missing password file is named, and nothing else.
    let missing = BmcConfig::new(
        "http://127.0.0.1:1",
        USER,
        PasswordSource::File(dir.path.join("nope")),
        TlsPolicy::Insecure,
    );
    let e = block_on(Client::connect(&missing)).expect_err("no password file");
    assert!(e.to_string().contains("nope"), "{e}");
}

#[test]
fn tls_is_verified_by_ca_file_or_fingerprint_and_can_be_turned_off() {
    let t = "tls_is_verified_by_ca_file_or_fingerprint_and_can_be_turned_off";
    let Some((ns, dir)) = lab(t) else {
        return;
    };
    if !require(have_program("openssl"), t, "openssl is missing") {
        return;
    }
    // A CA and a BMC certificate it signed (webpki refuses a self-signed CA certificate as
    // the server's own; self-signed BMCs are what the fingerprint pin is for).
    let ca = dir.path.join("ca.crt");
    let ca_key = dir.path.join("ca.key");
    let cert = dir.path.join("bmc.crt");
    let key = dir.path.join("bmc.key");
    let csr = dir.path.join("bmc.csr");
    let ext = dir.path.join("bmc.ext");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .expect("ext");
    let openssl = |args: &[&str], paths: &[(&str, &Path)]| {
        let mut c = std::process::Command::new("openssl");
        c.args(args);
        for (flag, p) in paths {
            c.arg(flag).arg(p);
        }
        run(&mut c).expect("openssl");
    };
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=test CA",
        ],
        &[("-keyout", &ca_key), ("-out", &ca)],
    );
    openssl(
        &[
            "req", "-new", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=bmc",
        ],
        &[("-keyout", &key), ("-out", &csr)],
    );
    openssl(
        &["x509", "-req", "-days", "1", "-CAcreateserial"],
        &[
            ("-in", &csr),
            ("-CA", &ca),
            ("-CAkey", &ca_key),
            ("-extfile", &ext),
            ("-out", &cert),
        ],
    );
    let fp = run(std::process::Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256", "-in"])
        .arg(&cert))
    .expect("fingerprint");
    let fp = parse_fingerprint(fp.trim().rsplit('=').next().unwrap_or_default()).expect("hex");
    let bmc = sushy(&ns, &dir.path, Some((&cert, &key)));
    let pass = password_file(&dir.path, PASSWORD);
    let url = bmc.url.clone();
    let mut wrong = fp;
    wrong[0] ^= 0xff;
    let results = ns
        .run(move || {
            block_on(async move {
                let mut out = Vec::new();
                for policy in [
                    TlsPolicy::CaFile(ca.clone()),
                    TlsPolicy::Fingerprint(fp),
                    TlsPolicy::Insecure,
                    TlsPolicy::Fingerprint(wrong),
                ] {
                    let r = match Client::connect(&config(&url, &pass, policy)).await {
                        Ok(mut c) => c.systems().await.map(|s| s.len()),
                        Err(e) => Err(e),
                    };
                    out.push(r.map_err(|e| e.to_string()));
                }
                out
            })
        })
        .expect("namespace");
    assert_eq!(results[0], Ok(2), "CA file");
    assert_eq!(results[1], Ok(2), "fingerprint pin");
    assert_eq!(results[2], Ok(2), "insecure");
    let e = results[3].clone().expect_err("a wrong pin must fail");
    assert!(e.contains("fingerprint"), "{e}");
}

#[test]
fn a_hanging_bmc_is_retried_then_given_up_while_another_is_served() {
    let Some((ns, dir)) = lab("a_hanging_bmc_is_retried_then_given_up_while_another_is_served")
    else {
        return;
    };
    let bmc = sushy(&ns, &dir.path, None);
    let pass = password_file(&dir.path, PASSWORD);
    let good = bmc.url.clone();
    // Connections the hanging BMC accepted: one per attempt.
    let accepted = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&accepted);
    let (hung, elapsed, served) = ns
        .run(move || {
            // Accepts connections and never answers.
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let addr = listener.local_addr().expect("addr");
            let hold = std::thread::spawn(move || {
                let mut held = Vec::new();
                for s in listener.incoming().take(8).flatten() {
                    held.push(s);
                    counted.fetch_add(1, Ordering::SeqCst);
                }
                std::thread::sleep(Duration::from_secs(20));
            });
            let r = block_on(async move {
                let mut hung_cfg = config(&format!("http://{addr}"), &pass, TlsPolicy::Insecure);
                hung_cfg.timeout = Duration::from_millis(500);
                hung_cfg.attempts = 3;
                let t0 = std::time::Instant::now();
                let hung = async {
                    let r = Client::connect(&hung_cfg).await;
                    (r.map(|_| ()), t0.elapsed())
                };
                let served = async {
                    let mut c = Client::connect(&config(&good, &pass, TlsPolicy::Insecure)).await?;
                    c.systems().await.map(|s| s.len())
                };
                let ((hung, elapsed), served) = tokio::join!(hung, served);
                (hung, elapsed, served)
            });
            drop(hold);
            r
        })
        .expect("namespace");
    let e = hung.expect_err("a BMC that never answers");
    assert!(matches!(e, RedfishError::Timeout(_)), "{e:?}");
    // Three attempts, each its own connection (the BMC's accept thread may count the last
    // one a moment after the client gave up on it: wait for three, then check no more).
    let three = wait_for(Duration::from_secs(30), || {
        (accepted.load(Ordering::SeqCst) >= 3).then_some(())
    });
    assert!(
        three.is_some() && accepted.load(Ordering::SeqCst) == 3,
        "{} connections to the hanging BMC for 3 attempts",
        accepted.load(Ordering::SeqCst)
    );
    // Three attempts of 0.5 s with two backoffs in between (0.25-0.75 s, then 0.5-1.5 s): a
    // lower bound, which a slow machine can only exceed.
    assert!(
        elapsed >= Duration::from_millis(1500),
        "gave up after {elapsed:?}: no backoff between the attempts"
    );
    assert_eq!(served.expect("the other BMC"), 2);
}
