//! The Redfish client against an in-test BMC with one vendor quirk at a time
//! (`bootfabric_lab::redfish_server`): sessions, ETag/If-Match, a silently reverted PATCH
//! (Supermicro), 409 to resets while busy (iDRAC), 503 when busy, dropped sessions, 202 task
//! monitors, slow answers (Lenovo XCC), reset types from `@Redfish.AllowableValues` (iLO).
//! The BMC listens on the loopback of a namespace the test creates.

use std::time::Duration;

use bootfabric::redfish::{
    BmcConfig, BootMode, BootTarget, Client, PasswordSource, RedfishError, TlsPolicy,
};
use bootfabric_lab::{
    redfish_server::{Quirks, QuirkyBmc},
    require_root, Netns, TempDir,
};

fn types(t: &[&str]) -> Vec<String> {
    t.iter().map(|s| s.to_string()).collect()
}

/// Runs `f` with a BMC showing `quirks`, in a namespace of its own.
fn with_bmc<T: Send + 'static>(
    test: &str,
    quirks: Quirks,
    timeout: Duration,
    f: impl FnOnce(BmcConfig, QuirkyBmc) -> std::pin::Pin<Box<dyn std::future::Future<Output = T>>>
        + Send
        + 'static,
) -> Option<T> {
    if !require_root(test) {
        return None;
    }
    let ns = Netns::new("qbmc").expect("netns");
    ns.ip(&["link", "set", "lo", "up"]).expect("lo");
    let dir = TempDir::new().expect("dir");
    let pass = dir.path.join("pass");
    std::fs::write(&pass, "password\n").expect("password");
    let out = ns
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let bmc = QuirkyBmc::start(quirks).await.expect("bmc");
                let mut cfg = BmcConfig::new(
                    &bmc.url(),
                    "admin",
                    PasswordSource::File(pass),
                    TlsPolicy::Insecure,
                );
                cfg.timeout = timeout;
                f(cfg, bmc).await
            })
        })
        .expect("namespace");
    drop(dir);
    Some(out)
}

#[test]
fn sessions_etags_and_logout() {
    let q = Quirks {
        sessions: true,
        require_if_match: true,
        reset_types: types(&["On", "ForceOff", "ForceRestart"]),
        ..Quirks::default()
    };
    with_bmc(
        "sessions_etags_and_logout",
        q,
        Duration::from_secs(5),
        |cfg, bmc| {
            Box::pin(async move {
                let mut c = Client::connect(&cfg).await.expect("session login");
                let sys = c.the_system().await.expect("the only system");
                c.set_boot_once(&sys, BootTarget::Pxe, Some(BootMode::Uefi))
                    .await
                    .expect("override with If-Match");
                assert_eq!(c.reset(&sys).await.expect("reset"), "On");
                c.logout().await;
                let s = bmc.state.lock().expect("state");
                assert_eq!((s.sessions_created, s.sessions_deleted), (1, 1));
                assert_eq!(s.boot_target, "Pxe");
                assert_eq!(s.boot_enabled, "Once");
                assert_eq!(s.power, "On");
            })
        },
    );
}

#[test]
fn a_patch_the_bmc_silently_reverts_is_caught() {
    let q = Quirks {
        revert_patch: true,
        ..Quirks::default()
    };
    with_bmc(
        "a_patch_the_bmc_silently_reverts_is_caught",
        q,
        Duration::from_secs(5),
        |cfg, bmc| {
            Box::pin(async move {
                // Held for the test: dropping it stops the server.
                let _bmc = bmc;
                let mut c = Client::connect(&cfg).await.expect("basic auth");
                let sys = c.the_system().await.expect("system");
                let e = c
                    .set_boot_once(&sys, BootTarget::Pxe, None)
                    .await
                    .expect_err("the override did not stick");
                assert!(matches!(e, RedfishError::NotApplied(_)), "{e:?}");
            })
        },
    );
}

#[test]
fn busy_bmcs_are_retried_409_and_503() {
    let q = Quirks {
        reset_conflicts: 2,
        busy: 2,
        reset_types: types(&["On", "ForceRestart"]),
        ..Quirks::default()
    };
    with_bmc(
        "busy_bmcs_are_retried_409_and_503",
        q,
        Duration::from_secs(5),
        |cfg, bmc| {
            Box::pin(async move {
                // The service root answers 503 twice, then the login goes through.
                let mut c = Client::connect(&cfg).await.expect("retried past 503");
                let sys = c.the_system().await.expect("system");
                assert_eq!(c.reset(&sys).await.expect("retried past 409"), "On");
                let s = bmc.state.lock().expect("state");
                assert_eq!(s.resets, vec!["On", "On", "On"]);
                assert_eq!(s.power, "On");
            })
        },
    );
}

#[test]
fn a_dropped_session_logs_in_again_once() {
    let q = Quirks {
        sessions: true,
        drop_session_after: 2,
        ..Quirks::default()
    };
    with_bmc(
        "a_dropped_session_logs_in_again_once",
        q,
        Duration::from_secs(5),
        |cfg, bmc| {
            Box::pin(async move {
                let mut c = Client::connect(&cfg).await.expect("login");
                let sys = c.the_system().await.expect("system");
                for _ in 0..3 {
                    c.system(&sys).await.expect("read through a re-login");
                }
                assert!(bmc.state.lock().expect("state").sessions_created >= 2);
            })
        },
    );
}

#[test]
fn task_monitors_are_followed() {
    let q = Quirks {
        patch_task: true,
        ..Quirks::default()
    };
    with_bmc(
        "task_monitors_are_followed",
        q,
        Duration::from_secs(5),
        |cfg, bmc| {
            Box::pin(async move {
                let mut c = Client::connect(&cfg).await.expect("login");
                let sys = c.the_system().await.expect("system");
                c.set_boot_once(&sys, BootTarget::UefiHttp, Some(BootMode::Uefi))
                    .await
                    .expect("override through a task");
                let s = bmc.state.lock().expect("state");
                let polls = s
                    .requests
                    .iter()
                    .filter(|(_, p)| p.ends_with("/Monitor"))
                    .count();
                assert_eq!(polls, 2, "{:?}", s.requests);
                assert_eq!(s.boot_target, "UefiHttp");
            })
        },
    );
}

#[test]
fn slow_bmcs_are_waited_for_within_the_timeout_and_not_beyond() {
    let slow = Quirks {
        delay: Duration::from_millis(300),
        ..Quirks::default()
    };
    // 300 ms per answer against a 10 s timeout: what is checked is that a slow answer is
    // waited for, with room for a stalled test machine (client and BMC share one thread).
    with_bmc(
        "slow_bmcs_are_waited_for_within_the_timeout_and_not_beyond",
        slow,
        Duration::from_secs(10),
        |cfg, bmc| {
            Box::pin(async move {
                let _bmc = bmc;
                let mut c = Client::connect(&cfg).await.expect("slow but in time");
                c.systems().await.expect("systems");
            })
        },
    );
    let too_slow = Quirks {
        delay: Duration::from_millis(1500),
        ..Quirks::default()
    };
    with_bmc(
        "slow_bmcs_are_waited_for_within_the_timeout_and_not_beyond",
        too_slow,
        Duration::from_millis(400),
        |mut cfg, bmc| {
            Box::pin(async move {
                cfg.attempts = 2;
                let e = Client::connect(&cfg).await.expect_err("too slow");
                assert!(matches!(e, RedfishError::Timeout(_)), "{e:?}");
                // Two attempts reached the BMC.
                assert_eq!(bmc.state.lock().expect("state").requests.len(), 2);
            })
        },
    );
}

#[test]
fn reset_types_follow_what_the_bmc_advertises() {
    let q = Quirks {
        reset_types: types(&[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "Nmi",
        ]),
        ..Quirks::default()
    };
    with_bmc(
        "reset_types_follow_what_the_bmc_advertises",
        q,
        Duration::from_secs(5),
        |cfg, bmc| {
            Box::pin(async move {
                let mut c = Client::connect(&cfg).await.expect("login");
                let sys = c.the_system().await.expect("system");
                assert_eq!(c.reset(&sys).await.expect("power on"), "On");
                assert_eq!(c.reset(&sys).await.expect("restart"), "GracefulRestart");
                assert_eq!(
                    bmc.state.lock().expect("state").resets,
                    vec!["On", "GracefulRestart"]
                );
            })
        },
    );
}
