//! The admission gate: hosts a reboot run has reset but not yet given a download slot. The
//! HTTP streamer answers their iPXE script request with "ask again shortly" until the runner
//! lets them through, so a host that came up early waits at the cost of one small request
//! every few seconds instead of taking bandwidth from hosts already downloading.

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
};

use crate::model::inventory::Mac;

/// Shared handle to the set of held hosts.
#[derive(Clone, Debug, Default)]
pub struct Gate {
    held: Arc<RwLock<HashSet<Mac>>>,
}

impl Gate {
    /// Holds `mac` at the gate.
    pub fn hold(&self, mac: Mac) {
        if let Ok(mut h) = self.held.write() {
            h.insert(mac);
        }
    }

    /// Lets `mac` through.
    pub fn release(&self, mac: Mac) {
        if let Ok(mut h) = self.held.write() {
            h.remove(&mac);
        }
    }

    /// Whether `mac` must wait.
    pub fn holds(&self, mac: &Mac) -> bool {
        self.held.read().map(|h| h.contains(mac)).unwrap_or(false)
    }
}
