//! The DHCPv4 server (RFC 2131, 2132; PXE per RFC 4578; relay agent information per
//! RFC 3046).
//!
//! - [`wire`]: checks and decodes requests, refusing malformed ones with a reason;
//! - [`policy`]: which boot file, script or URL a client gets (pure);
//! - [`table`]: leases, offers and free pools in memory;
//! - [`server`]: the RFC 2131 decisions over the table (pure);
//! - [`journal`]: the durable lease journal with group commit;
//! - [`ratelimit`]: per-client token buckets;
//! - [`templates`]: the XDP fast path's maps derived from the server (pure);
//! - [`step`]: one datagram in, the actions it calls for out (pure);
//! - `recv`: the receive loop of one socket (decode, handle, act);
//! - `service`: [`DhcpService`], its sockets and shared state; `fastpath`: the fast path's
//!   owner; `reload`: what a SIGHUP changes; `metrics`: the service's metrics;
//! - this module: the journal's place, reply encoding and the `leases` commands.
//!
//! An ACK leaves only after its lease record is fsync'd: the socket loop hands the record
//! to the journal's group committer and sends the reply when it is durable.

pub mod fastpath;
pub mod journal;
mod metrics;
pub mod policy;
pub mod ratelimit;
mod recv;
mod reload;
pub mod server;
mod service;
mod shared;
pub mod step;
pub mod table;
pub mod templates;
#[cfg(test)]
mod testkit;
/// DHCPv6.
pub mod v6;
pub mod wire;

use std::{
    path::{Path, PathBuf},
    time::{SystemTime, UNIX_EPOCH},
};

use dhcproto::{Encodable, Encoder};

use journal::LeaseRecord;

pub use reload::{DhcpFollower, ReloadError, Reloader};
pub use service::{bind_on_device, DhcpService, Ports, Sources};
pub use step::ledger_event;

/// File name of the lease journal inside `daemon.state_dir`.
pub const JOURNAL_FILE: &str = "leases.journal";

/// Errors starting the DHCP service.
#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    /// The lease journal could not be opened.
    #[error("lease journal: {0}")]
    Journal(#[from] journal::JournalError),
    /// The lease journal has a damaged line: the daemon does not start on it.
    #[error(
        "lease journal: {journal}\n  with this config: bootfabric leases repair --config {config}"
    )]
    CorruptJournal {
        /// Where and what (not a `source`: the message says it all already).
        journal: journal::JournalError,
        /// The config file, for the repair command.
        config: PathBuf,
    },
    /// An interface has no IPv4 address to serve from.
    #[error(
        "interface {iface:?} has no IPv4 address: the DHCP server needs one as its identifier"
    )]
    NoAddress {
        /// Interface name.
        iface: String,
    },
    /// A socket could not be set up.
    #[error("DHCP socket on {iface}: {source}")]
    Socket {
        /// Interface name.
        iface: String,
        /// Why.
        source: std::io::Error,
    },
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Path of the lease journal in `state_dir` (`daemon.state_dir`).
pub fn journal_path(state_dir: &Path) -> PathBuf {
    state_dir.join(JOURNAL_FILE)
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A reply as it goes on the wire: encoded, then padded with zeros to RFC 2131's minimum
/// BOOTP size (some PXE ROMs drop shorter messages; the XDP fast path pads the same way).
pub fn encode_reply(msg: &dhcproto::v4::Message) -> Result<Vec<u8>, dhcproto::error::EncodeError> {
    let mut out = Vec::with_capacity(576);
    msg.encode(&mut Encoder::new(&mut out))?;
    if out.len() < bootfabric_abi::dhcp::REPLY_MIN {
        out.resize(bootfabric_abi::dhcp::REPLY_MIN, 0);
    }
    Ok(out)
}

/// For `bootfabric check`: why `dhcp` trusts relays it should not, if it does (relayed
/// subnets configured but `dhcp.relays` unset, so any machine may set a giaddr).
pub fn unguarded_relays(dhcp: &crate::config::DhcpConfig) -> Option<String> {
    if dhcp.guards.relays.is_some() {
        return None;
    }
    let relayed: Vec<String> = dhcp
        .subnets
        .iter()
        .filter(|s| s.interface.is_none())
        .map(|s| s.net.to_string())
        .collect();
    (!relayed.is_empty()).then(|| {
        format!(
            "unset: relayed requests for {} are accepted from any source address",
            relayed.join(", ")
        )
    })
}

/// Reads the live leases for `bootfabric leases` (works while the daemon runs).
pub fn read_leases(path: &Path) -> Result<Vec<LeaseRecord>, journal::JournalError> {
    journal::read_live(path)
}

/// `bootfabric leases repair`: repairs both journals under `state_dir` (DHCPv4's and
/// DHCPv6's, see [`journal::repair`]) and prints what it did. Exit code 0 when both are
/// sound now, 1 when one could not be repaired.
pub fn repair_leases(state_dir: &Path) -> i32 {
    let v4 = repair_journal::<LeaseRecord>(&journal_path(state_dir));
    let v6 = repair_journal::<v6::table::Lease6Record>(&v6::journal_path(state_dir));
    v4.max(v6)
}

fn repair_journal<R: journal::Record>(path: &Path) -> i32 {
    if !path.exists() {
        println!("{}: no lease journal: nothing to repair", path.display());
        return 0;
    }
    match journal::repair::<R>(path, unix_now()) {
        Ok(r) if r.dropped.is_empty() => {
            println!(
                "{}: {} records, no damaged line: nothing to repair",
                path.display(),
                r.kept
            );
            0
        }
        Ok(r) => {
            for d in &r.dropped {
                println!(
                    "dropped line {} (byte offset {}): {}: \"{}\"",
                    d.line, d.offset, d.reason, d.text
                );
            }
            if let Some(copy) = &r.copy {
                println!("original kept as {}", copy.display());
            }
            println!(
                "{}: {} records kept, {} line(s) dropped. A dropped record may have been a client's lease: check the addresses above before the daemon hands them out again.",
                path.display(),
                r.kept,
                r.dropped.len()
            );
            0
        }
        Err(e) => {
            eprintln!("bootfabric: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_warns_about_relayed_subnets_without_relays() {
        let dhcp = |keys: &str| {
            let w: crate::config::wire::Dhcp = toml::from_str(keys).expect("toml");
            crate::config::DhcpConfig::from_wire(&w).expect("valid")
        };
        let local = "[[subnets]]\ncidr = \"10.77.0.0/24\"\ninterface = \"fabric0\"\n";
        let relayed = "[[subnets]]\ncidr = \"10.88.0.0/24\"\n";
        assert_eq!(unguarded_relays(&dhcp(local)), None);
        let why = unguarded_relays(&dhcp(&format!("{local}{relayed}"))).expect("a warning");
        assert!(
            why.contains("10.88.0.0/24") && !why.contains("10.77.0.0/24"),
            "{why}"
        );
        let guarded = format!("relays = [\"10.77.0.254\"]\n{local}{relayed}");
        assert_eq!(unguarded_relays(&dhcp(&guarded)), None);
    }
}
