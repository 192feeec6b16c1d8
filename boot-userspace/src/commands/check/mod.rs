//! `bootfabric check`: the operator's validation checklist, run by the tool itself.
//!
//! Each check yields items that passed, warned or failed, a failure always with the fix.
//! [`admin`] asks whether the admin API's control calls are reachable, without a token,
//! from the networks the fabric serves. [`local`] looks at this machine (interfaces, ports, files and their checksums, free
//! disk); [`probe`] tries things for real (attaching XDP, logging in to every BMC, asking
//! the provisioning segment for DHCP offers from servers other than this one); [`etcd_tls`] says
//! which TLS file keeps the fabric out of etcd.

pub mod admin;
pub mod etcd_tls;
pub mod images;
pub mod local;
pub mod probe;

use std::fmt::Write as _;

use crate::config::Config;

/// An item's verdict.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Status {
    /// Fine.
    Pass,
    /// Works, but deserves a look.
    Warn,
    /// Will not work as configured.
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Self::Pass => "PASS",
            Self::Warn => "WARN",
            Self::Fail => "FAIL",
        }
    }
}

/// One line of the checklist.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The verdict.
    pub status: Status,
    /// What was checked, e.g. `interface fabric0`.
    pub subject: String,
    /// What was found.
    pub detail: String,
    /// How to fix a failure or warning.
    pub fix: Option<String>,
}

impl Item {
    /// A passed item.
    pub fn pass(subject: impl Into<String>, detail: impl Into<String>) -> Self {
        Self {
            status: Status::Pass,
            subject: subject.into(),
            detail: detail.into(),
            fix: None,
        }
    }

    /// A warning with its fix.
    pub fn warn(
        subject: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Warn,
            subject: subject.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure with its fix.
    pub fn fail(
        subject: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) -> Self {
        Self {
            status: Status::Fail,
            subject: subject.into(),
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Which checks to leave out (`--skip`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Skip {
    /// Attaching XDP.
    pub xdp: bool,
    /// Logging in to BMCs.
    pub bmc: bool,
    /// Looking for other DHCP servers.
    pub dhcp: bool,
    /// Reading every file for its checksum.
    pub checksums: bool,
    /// Asking the cluster's etcd.
    pub cluster: bool,
}

/// Runs every check for `config`.
pub fn run(config: &Config, skip: Skip, dhcp_wait: std::time::Duration) -> Vec<Item> {
    let mut items = vec![Item::pass(
        "config",
        format!(
            "{}: {} interface(s), {} host(s), {} profile(s)",
            config.path.display(),
            config.interfaces.len(),
            config.inventory.hosts().len(),
            config.inventory.profiles().len()
        ),
    )];
    items.push(admin::control(config));
    items.extend(local::interfaces(config));
    items.extend(local::ports(config));
    items.extend(local::files(config, !skip.checksums));
    items.extend(local::templates(config));
    items.extend(images::images(config, !skip.checksums));
    items.extend(local::disk(config));
    if let Some(why) = config
        .dhcp
        .as_ref()
        .and_then(crate::services::dhcp::unguarded_relays)
    {
        let fix = "list the relay agents' source addresses in dhcp.relays";
        items.push(Item::warn("dhcp.relays", why, fix));
    }
    items.extend(local::dhcp6(config));
    if !skip.xdp {
        items.extend(probe::xdp(config));
    }
    if !skip.bmc {
        items.extend(probe::bmcs(config));
    }
    if !skip.dhcp {
        items.extend(probe::other_dhcp_servers(config, dhcp_wait));
    }
    if !skip.cluster {
        items.extend(probe::cluster(config));
    }
    items
}

/// The checklist as text, and the exit status: 1 when anything failed.
pub fn render(items: &[Item]) -> (String, i32) {
    let mut out = String::new();
    for i in items {
        let _ = writeln!(out, "{}  {}: {}", i.status.label(), i.subject, i.detail);
        if let Some(fix) = &i.fix {
            let _ = writeln!(out, "      fix: {fix}");
        }
    }
    let count = |s| items.iter().filter(|i| i.status == s).count();
    let (fail, warn) = (count(Status::Fail), count(Status::Warn));
    let _ = writeln!(
        out,
        "\n{} passed, {warn} warned, {fail} failed",
        count(Status::Pass)
    );
    (out, i32::from(fail > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_set_the_exit_status_and_show_their_fix() {
        let items = vec![
            Item::pass("config", "ok"),
            Item::warn("disk /srv", "900 MiB free", "free some space"),
        ];
        let (text, code) = render(&items);
        assert_eq!(code, 0);
        assert!(text.contains("WARN  disk /srv: 900 MiB free\n      fix: free some space"));
        let mut items = items;
        items.push(Item::fail("port 67/udp", "in use", "stop dnsmasq"));
        let (text, code) = render(&items);
        assert_eq!(code, 1);
        assert!(text.ends_with("1 passed, 1 warned, 1 failed\n"), "{text}");
    }
}
