//! The admission gate: hosts a reboot run has reset but not yet given a download slot. The
//! HTTP streamer answers their iPXE script request with "ask again shortly" until the runner
//! lets them through, so a host that came up early waits at the cost of one small request
//! every few seconds instead of taking bandwidth from hosts already downloading.

use std::{
    collections::HashSet,
    sync::{Arc, RwLock},
};

use crate::model::inventory::Mac;

/// Seconds a held host waits before asking again, unless `scheduler.gate_retry_s` says.
pub const DEFAULT_RETRY_S: u32 = 3;

/// Shared handle to the set of held hosts, and how long they wait between asks.
#[derive(Clone, Debug)]
pub struct Gate {
    held: Arc<RwLock<HashSet<Mac>>>,
    retry_s: u32,
}

impl Default for Gate {
    fn default() -> Self {
        Self::new(DEFAULT_RETRY_S)
    }
}

impl Gate {
    /// An empty gate whose held hosts ask again every `retry_s` seconds (the reboot
    /// scheduler paces them; HTTP only tells them).
    pub fn new(retry_s: u32) -> Self {
        Self {
            held: Arc::default(),
            retry_s,
        }
    }

    /// Seconds a held host waits before asking again.
    pub fn retry_s(&self) -> u32 {
        self.retry_s
    }

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
