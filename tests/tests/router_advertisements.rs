//! The fabric answers IPv6 router solicitations with "nothing here" (router lifetime 0, no
//! prefix, M=0, O=0), as rdisc6 (package ndisc6, a client we did not write) reads it, and
//! stops answering on an interface where another router advertises.

use std::time::Duration;

use bootfabric_lab::{have_program, http_get, require, require_root, run, sample, Daemon, PairLab};

const CONFIG: &str = r#"
[daemon]
state_dir = "state"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:0"
[xdp]
mode = "off"
"#;

/// Sends one router advertisement (a real router's: lifetime 1800 s) from `iface` in the
/// client namespace, with Python's raw ICMPv6 socket.
const FOREIGN_RA: &str = r#"
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_MULTICAST_HOPS, 255)
idx = socket.if_nametoindex(sys.argv[1])
ra = bytes([134, 0, 0, 0, 64, 0, 0x07, 0x08, 0, 0, 0, 0, 0, 0, 0, 0])
s.sendto(ra, ("ff02::1", 0, 0, idx))
"#;

#[test]
fn solicitations_get_an_advertisement_that_configures_nothing() {
    answers_and_yields(
        "solicitations_get_an_advertisement_that_configures_nothing",
        true,
    );
}

/// The same with IPv6 disabled on the server's interface (`disable_ipv6`, a common hardening
/// sysctl there): the daemon answers from a packet socket, as its EUI-64 link-local address.
#[test]
fn solicitations_are_answered_with_ipv6_disabled_on_the_server() {
    answers_and_yields(
        "solicitations_are_answered_with_ipv6_disabled_on_the_server",
        false,
    );
}

fn answers_and_yields(t: &str, server_ipv6: bool) {
    if !require_root(t)
        || !require(
            have_program("rdisc6"),
            t,
            "rdisc6 is missing (cargo xtask setup installs ndisc6)",
        )
    {
        return;
    }
    let lab = PairLab::new().expect("lab");
    if !server_ipv6 {
        run(lab
            .server
            .command("sysctl")
            .args(["-qw", "net.ipv6.conf.fabric0.disable_ipv6=1"]))
        .expect("sysctl");
    }
    let daemon = Daemon::start(&lab.server, CONFIG, &[]).expect("daemon");
    // The RA service names its socket (when it needs a packet socket) before it says it
    // answers, so the second line is waited for.
    let log = daemon
        .log_when(|log| log.contains("answering IPv6 router solicitations"))
        .unwrap_or_else(|| panic!("the RA service said nothing:\n{}", daemon.log()));
    assert_eq!(
        log.contains("answering router solicitations from a packet socket"),
        !server_ipv6,
        "{}",
        daemon.log()
    );
    // The client's link-local address must finish duplicate address detection first.
    let answer = bootfabric_lab::wait_for(Duration::from_secs(20), || {
        run(lab
            .client
            .command("rdisc6")
            .args(["-1", "-w", "1500", "-r", "2", "client0"]))
        .ok()
    })
    .unwrap_or_else(|| panic!("no router advertisement:\n{}", daemon.log()));
    for want in [
        "Stateful address conf.    :           No",
        "Stateful other conf.      :           No",
        "Router lifetime           :            0 (0x00000000) seconds",
    ] {
        let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
        assert!(
            squeeze(&answer).contains(&squeeze(want)),
            "{want:?} not in\n{answer}"
        );
    }
    assert!(
        !answer.contains("Prefix"),
        "no prefix is advertised:\n{answer}"
    );
    let metric = |name: &str| {
        let (_, m) = http_get(&lab.server, daemon.admin, "/metrics").expect("metrics");
        sample(&m, name, &[("iface", "fabric0")]).unwrap_or(-1.0)
    };
    assert!(metric("bootfabric_ra_sent_total") >= 1.0);
    assert!(metric("bootfabric_ra_solicitations_total") >= 1.0);

    // Another router shows up: the fabric leaves router discovery to it.
    run(lab
        .client
        .command("python3")
        .args(["-c", FOREIGN_RA, "client0"]))
    .expect("foreign RA");
    let seen = bootfabric_lab::wait_for(Duration::from_secs(10), || {
        (metric("bootfabric_ra_foreign_total") >= 1.0).then_some(())
    });
    assert!(seen.is_some(), "{}", daemon.log());
    let sent = metric("bootfabric_ra_sent_total");
    // rdisc6 exits 2 with "No response." when its solicitations go unanswered; any other
    // failure (a missing interface, a refused socket) is not the silence checked here.
    let quiet = lab
        .client
        .command("rdisc6")
        .args(["-1", "-w", "1500", "-r", "2", "client0"])
        .output()
        .expect("rdisc6");
    assert!(
        quiet.status.code() == Some(2)
            && String::from_utf8_lossy(&quiet.stdout).contains("No response."),
        "answered after another router appeared: {quiet:?}"
    );
    assert_eq!(metric("bootfabric_ra_sent_total"), sent);
    assert!(
        daemon.logged("another IPv6 router advertises"),
        "{}",
        daemon.log()
    );
}
