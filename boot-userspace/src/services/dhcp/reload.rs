//! Reloads of a running DHCP service: what a SIGHUP may change without a restart.

use std::sync::{Arc, Mutex};

use tracing::info;

use super::{fastpath::FastPathOwner, server::Server};
use crate::{
    config::DhcpConfig,
    model::{boot::BootSettings, inventory::Inventory},
    xdp::fastpath::FastPathError,
};

/// Why a reload was not applied (the running configuration stays).
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration has no `[dhcp]`.
    #[error("the reloaded config has no [dhcp]; restart to remove the server")]
    NoDhcp,
    /// The DHCP state lock was poisoned (a thread panicked holding it).
    #[error("DHCP state lock poisoned")]
    Poisoned,
    /// A setting that shapes the lease table changed.
    #[error("dhcp.subnets or dhcp.mode changed: restart to apply")]
    NeedsRestart,
    /// The fast path's maps could not follow.
    #[error(transparent)]
    FastPath(#[from] FastPathError),
}

/// Applies reloaded configurations to a running DHCP service.
#[derive(Clone)]
pub struct Reloader {
    pub(super) server: Arc<Mutex<Server>>,
    pub(super) fast_path: Arc<Mutex<Option<FastPathOwner>>>,
}

impl Reloader {
    /// Applies a reloaded configuration: `dhcp` (the new `[dhcp]`, if any), boot settings,
    /// hosts and profiles. The subnets and pools stay as they are (they shape the lease
    /// table; a restart changes them). The fast path's maps follow.
    pub fn reload(
        &self,
        dhcp: Option<&DhcpConfig>,
        boot: &BootSettings,
        inventory: &Inventory,
    ) -> Result<(), ReloadError> {
        let dhcp = dhcp.ok_or(ReloadError::NoDhcp)?;
        let mut server = self.server.lock().map_err(|_| ReloadError::Poisoned)?;
        if server
            .dhcp
            .subnets
            .iter()
            .map(|s| s.net)
            .ne(dhcp.subnets.iter().map(|s| s.net))
            || server.dhcp.mode != dhcp.mode
        {
            return Err(ReloadError::NeedsRestart);
        }
        server.inventory = inventory.clone();
        server.boot = boot.clone();
        server.dhcp.options = dhcp.options.clone();
        // Relays and DECLINE limits apply at once; the commit bounds at the next start.
        server.set_guards(dhcp.guards.clone());
        for (mine, new) in server.dhcp.subnets.iter_mut().zip(&dhcp.subnets) {
            mine.options = new.options.clone();
        }
        server.table.set_reservations(inventory);
        if let Ok(mut slot) = self.fast_path.lock() {
            if let Some(fp) = slot.as_mut() {
                let r = fp.sync(&server)?.written;
                info!(
                    hosts = r.hosts,
                    removed = r.removed,
                    "XDP DHCP fast path resynced"
                );
            }
        }
        Ok(())
    }
}
