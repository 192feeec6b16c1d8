//! Reloads of a running DHCP service: what a SIGHUP may change without a restart.

use std::sync::{Arc, Mutex};

use tracing::info;

use super::{fastpath::FastPathOwner, server::Server};
use crate::config::Config;

/// Applies reloaded configurations to a running DHCP service.
#[derive(Clone)]
pub struct Reloader {
    pub(super) server: Arc<Mutex<Server>>,
    pub(super) fast_path: Arc<Mutex<Option<FastPathOwner>>>,
}

impl Reloader {
    /// Applies a reloaded configuration: hosts, profiles, boot settings and options. The
    /// subnets and pools stay as they are (they shape the lease table; a restart changes
    /// them). The fast path's maps follow.
    pub fn reload(&self, config: &Config) -> Result<(), String> {
        let Some(dhcp) = &config.dhcp else {
            return Err("the reloaded config has no [dhcp]; restart to remove the server".into());
        };
        let mut server = self
            .server
            .lock()
            .map_err(|_| "DHCP state lock poisoned".to_owned())?;
        if server
            .dhcp
            .subnets
            .iter()
            .map(|s| s.net)
            .ne(dhcp.subnets.iter().map(|s| s.net))
            || server.dhcp.mode != dhcp.mode
        {
            return Err("dhcp.subnets or dhcp.mode changed: restart to apply".into());
        }
        server.inventory = config.inventory.clone();
        server.boot = config.boot.clone();
        server.dhcp.options = dhcp.options.clone();
        // Relays and DECLINE limits apply at once; the commit bounds at the next start.
        server.set_guards(dhcp.guards.clone());
        for (mine, new) in server.dhcp.subnets.iter_mut().zip(&dhcp.subnets) {
            mine.options = new.options.clone();
        }
        server.table.set_reservations(&config.inventory);
        if let Ok(mut slot) = self.fast_path.lock() {
            if let Some(fp) = slot.as_mut() {
                let r = fp.sync(&server).map_err(|e| e.to_string())?.written;
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
