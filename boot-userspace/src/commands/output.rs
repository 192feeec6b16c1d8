//! `--output table|json`: the documents the listing commands print for programs. Each is a
//! serde struct, so its shape is fixed by the type and changes only on purpose; the text
//! tables for people are built from the same rows. Pure: rows in, text out.

use std::fmt::Write as _;

use serde::Serialize;

use crate::{
    commands::check::{Item, Status},
    services::dhcp::{
        journal::{LeaseRecord, LeaseState},
        v6::table::Lease6Record,
    },
};

/// How a listing is printed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// Aligned columns, for people.
    #[default]
    Table,
    /// One JSON document, for programs.
    Json,
}

/// Pretty-printed JSON of `doc`, with a final newline.
pub fn json<T: Serialize>(doc: &T) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(doc).map(|mut s| {
        s.push('\n');
        s
    })
}

/// `bootfabric leases --output json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseList {
    /// The leases listed, in journal order.
    pub items: Vec<LeaseRow>,
}

/// One lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct LeaseRow {
    /// The address.
    pub ip: String,
    /// The client's MAC.
    pub mac: String,
    /// `bound`, `expired`, `released` or `declined`.
    pub state: &'static str,
    /// Seconds until it expires; `null` once expired.
    pub expires_in_s: Option<u64>,
    /// The host name, when known.
    pub hostname: Option<String>,
    /// A DHCPv6 binding's client DUID (hex) and IAID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duid_iaid: Option<String>,
}

/// The journal's records as rows at `now` (Unix seconds): only live bound leases unless
/// `all`.
pub fn lease_rows(records: &[LeaseRecord], now: u64, all: bool) -> LeaseList {
    let items = records
        .iter()
        .filter_map(|r| {
            let live = r.expires > now;
            if !(all || live && r.state == LeaseState::Bound) {
                return None;
            }
            let state = match (r.state, live) {
                (LeaseState::Bound, true) => "bound",
                (LeaseState::Bound, false) => "expired",
                (LeaseState::Released, _) => "released",
                (LeaseState::Declined, _) => "declined",
            };
            Some(LeaseRow {
                ip: r.ip.to_string(),
                mac: r.mac.to_string(),
                state,
                expires_in_s: live.then(|| r.expires - now),
                hostname: r.hostname.clone(),
                duid_iaid: None,
            })
        })
        .collect();
    LeaseList { items }
}

/// The DHCPv6 journal's records as rows, after the IPv4 ones of `list`; a binding's host
/// name is its inventory host's (`name_of` its MAC).
pub fn lease6_rows(
    list: &mut LeaseList,
    records: &[Lease6Record],
    now: u64,
    all: bool,
    name_of: impl Fn(&crate::model::inventory::Mac) -> Option<String>,
) {
    for r in records {
        let live = r.expires > now;
        if !(all || live && r.state == LeaseState::Bound) {
            continue;
        }
        let state = match (r.state, live) {
            (LeaseState::Bound, true) => "bound",
            (LeaseState::Bound, false) => "expired",
            (LeaseState::Released, _) => "released",
            (LeaseState::Declined, _) => "declined",
        };
        let duid: String = r.duid.iter().map(|b| format!("{b:02x}")).collect();
        list.items.push(LeaseRow {
            ip: r.ip.to_string(),
            mac: r.mac.map_or_else(|| "-".to_owned(), |m| m.to_string()),
            state,
            expires_in_s: live.then(|| r.expires - now),
            hostname: r.mac.as_ref().and_then(&name_of),
            duid_iaid: Some(format!("{duid}/{}", r.iaid)),
        });
    }
}

/// The leases as the columns `bootfabric leases` has always printed.
pub fn lease_table(list: &LeaseList) -> String {
    // IPv6 addresses are wider than the IPv4 column.
    let w = list
        .items
        .iter()
        .map(|r| r.ip.len())
        .max()
        .unwrap_or(0)
        .max(15);
    let mut out = format!(
        "{:<w$} {:<17} {:<9} {:<10} HOSTNAME\n",
        "IP", "MAC", "STATE", "EXPIRES IN"
    );
    for r in &list.items {
        let left = r
            .expires_in_s
            .map(|s| format!("{s}s"))
            .unwrap_or_else(|| "-".to_owned());
        let _ = writeln!(
            out,
            "{:<w$} {:<17} {:<9} {:<10} {}",
            r.ip,
            r.mac,
            r.state,
            left,
            r.hostname.as_deref().unwrap_or("-")
        );
    }
    out
}

/// `bootfabric check --output json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Every item, in the order checked.
    pub items: Vec<CheckItem>,
    /// Items that passed.
    pub passed: usize,
    /// Items that warned.
    pub warned: usize,
    /// Items that failed (the exit status is 1 when any did).
    pub failed: usize,
}

/// One item of the checklist.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CheckItem {
    /// What was checked, e.g. `interface fabric0`.
    pub name: String,
    /// `pass`, `warn` or `fail`.
    pub status: &'static str,
    /// What was found.
    pub detail: String,
    /// How to fix a failure or warning.
    pub fix: Option<String>,
}

/// The checklist as a document.
pub fn check_report(items: &[Item]) -> CheckReport {
    let count = |s| items.iter().filter(|i| i.status == s).count();
    CheckReport {
        items: items
            .iter()
            .map(|i| CheckItem {
                name: i.subject.clone(),
                status: match i.status {
                    Status::Pass => "pass",
                    Status::Warn => "warn",
                    Status::Fail => "fail",
                },
                detail: i.detail.clone(),
                fix: i.fix.clone(),
            })
            .collect(),
        passed: count(Status::Pass),
        warned: count(Status::Warn),
        failed: count(Status::Fail),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::*;
    use crate::model::inventory::Mac;

    fn mac(last: u8) -> Mac {
        match format!("52:54:00:00:00:{last:02x}").parse() {
            Ok(m) => m,
            Err(e) => panic!("{e:?}"),
        }
    }

    fn parsed<T: Serialize>(doc: &T) -> Value {
        match json(doc).map(|t| serde_json::from_str::<Value>(&t)) {
            Ok(Ok(v)) => v,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn leases_list_live_bound_ones_unless_all_and_print_as_json() {
        let rec = |last, state, expires, hostname: Option<&str>| LeaseRecord {
            ip: std::net::Ipv4Addr::new(10, 0, 0, last),
            mac: mac(last),
            state,
            expires,
            hostname: hostname.map(str::to_owned),
        };
        let records = [
            rec(1, LeaseState::Bound, 1_100, Some("n1")),
            rec(2, LeaseState::Bound, 900, None),
            rec(3, LeaseState::Declined, 2_000, None),
        ];
        let live = lease_rows(&records, 1_000, false);
        assert_eq!(
            parsed(&live),
            json!({"items": [{"ip": "10.0.0.1", "mac": "52:54:00:00:00:01", "state": "bound",
                              "expires_in_s": 100, "hostname": "n1"}]})
        );
        let all = lease_rows(&records, 1_000, true);
        let states: Vec<&str> = all.items.iter().map(|r| r.state).collect();
        assert_eq!(states, ["bound", "expired", "declined"]);
        assert_eq!(all.items[1].expires_in_s, None);
        let text = lease_table(&all);
        assert!(text.starts_with("IP "), "{text}");
        assert!(
            text.contains("10.0.0.1        52:54:00:00:00:01 bound     100s       n1"),
            "{text}"
        );
    }

    #[test]
    fn the_checklist_prints_as_a_document_with_its_counts() {
        let mut fail = Item::pass("port 67/udp", "taken by dnsmasq");
        fail.status = Status::Fail;
        fail.fix = Some("stop it".to_owned());
        let items = [Item::pass("config", "ok"), fail];
        assert_eq!(
            parsed(&check_report(&items)),
            json!({"items": [
                {"name": "config", "status": "pass", "detail": "ok", "fix": null},
                {"name": "port 67/udp", "status": "fail", "detail": "taken by dnsmasq",
                 "fix": "stop it"}],
                "passed": 1, "warned": 0, "failed": 1})
        );
    }
}
