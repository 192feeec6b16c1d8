//! How a running DHCP service follows the configuration snapshot: what a reload (SIGHUP, the
//! admin API) may change without a restart, and what it refuses.
//!
//! The DHCP server keeps its own copy of the inventory and boot settings (it decides under its
//! own lock, over plain data), so it is a [`Follower`] of [`crate::model::snapshot::Live`]:
//! [`DhcpFollower::check`] refuses a change the running server cannot take (pure: it reads,
//! never writes), [`DhcpFollower::apply`] swaps the copy, the reservations of the lease table
//! and the XDP fast path's maps before readers see the new generation.
//!
//! The `[dhcp]` section is not in the snapshot (it is the service's own section, read from the
//! TOML only): a SIGHUP [stages](DhcpFollower::stage) the reloaded section before it
//! publishes, and the publish that applies applies it too; a publish that is refused drops it
//! ([`Follower::abort`]), so no later publish applies a refused section. An API publish stages
//! nothing and keeps the running section.
//!
//! If the XDP maps cannot follow, they are emptied (the kernel then passes every request to
//! userspace, which answers from the new generation) and resynced on the housekeeping tick;
//! the follower is then not [in step](Follower::in_step), and
//! `bootfabric_config_generation_applied{service="dhcp"}` keeps the last generation the maps
//! took whole.

use std::sync::{
    atomic::{AtomicBool, Ordering},
    Arc, Mutex, MutexGuard, PoisonError,
};

use tracing::{info, warn};

use super::{
    fastpath::{ending_reservations, FastPathOwner},
    server::Server,
    unix_now,
};
use crate::{
    config::DhcpConfig,
    model::snapshot::{Follower, Snapshot},
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

/// Handles on a running DHCP service's state, for its [`DhcpFollower`].
#[derive(Clone)]
pub struct Reloader {
    pub(super) server: Arc<Mutex<Server>>,
    pub(super) fast_path: Arc<Mutex<Option<FastPathOwner>>>,
}

impl Reloader {
    /// The follower that keeps this service on the current snapshot.
    pub fn follower(self) -> Arc<DhcpFollower> {
        Arc::new(DhcpFollower {
            handles: self,
            staged: Mutex::new(None),
            in_step: AtomicBool::new(true),
        })
    }
}

/// The DHCP service as a follower of the configuration snapshot.
pub struct DhcpFollower {
    handles: Reloader,
    /// A reloaded `[dhcp]` admitted by [`Self::stage`], applied by the next `apply`.
    staged: Mutex<Option<DhcpConfig>>,
    /// Whether the last apply took its generation whole (the XDP maps included).
    in_step: AtomicBool,
}

/// The test of a reloaded section against the running server: the subnets and the mode shape
/// the lease table (a restart changes them).
fn admissible(server: &Server, dhcp: &DhcpConfig) -> Result<(), ReloadError> {
    let same_subnets = server
        .dhcp
        .subnets
        .iter()
        .map(|s| s.net)
        .eq(dhcp.subnets.iter().map(|s| s.net));
    if !same_subnets || server.dhcp.mode != dhcp.mode {
        return Err(ReloadError::NeedsRestart);
    }
    Ok(())
}

impl DhcpFollower {
    fn server(&self) -> Result<MutexGuard<'_, Server>, ReloadError> {
        self.handles
            .server
            .lock()
            .map_err(|_| ReloadError::Poisoned)
    }

    /// Admits a reloaded `[dhcp]` section (`None`: the reloaded config has none) for the next
    /// publish. Called from inside the publish's `build`, so that no other publish comes
    /// between the staging and its check and apply. A section the running server cannot take
    /// is refused here, and nothing is staged.
    pub fn stage(&self, dhcp: Option<&DhcpConfig>) -> Result<(), ReloadError> {
        let dhcp = dhcp.ok_or(ReloadError::NoDhcp)?;
        admissible(&*self.server()?, dhcp)?;
        *self.staged.lock().map_err(|_| ReloadError::Poisoned)? = Some(dhcp.clone());
        Ok(())
    }

    /// Swaps the server's copy and resyncs the fast path's maps; errors of the maps are
    /// returned (the userspace server answers right either way).
    ///
    /// With the fast path attached, the kernel's answers are brought in first (see the
    /// [`fastpath`](super::fastpath) module): the reservations this generation ends leave the
    /// maps, the ring is drained into the table against the running generation, and only
    /// then is the inventory swapped and every reservation judged. The server lock is held
    /// throughout, so userspace answers nobody in between either.
    fn apply_to(&self, next: &Snapshot) -> Result<(), ReloadError> {
        let staged = self
            .staged
            .lock()
            .map_err(|_| ReloadError::Poisoned)?
            .take();
        let now = unix_now();
        let mut server = self.server()?;
        // A poisoned slot still holds the maps, and maps left behind would answer from the
        // old generation: sync them all the same.
        let mut slot = self
            .handles
            .fast_path
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut taken = None;
        if let Some(fp) = slot.as_mut() {
            let ending = ending_reservations(&server.inventory, &next.inventory);
            if !ending.is_empty() {
                // On an error the maps were emptied, which withholds them all.
                if let Err(e) = fp.withhold(&server, &ending, now) {
                    warn!("XDP DHCP fast path: withholding ending reservations failed: {e}");
                }
            }
            if let Some(answers) = fp.answers() {
                taken = Some((answers.clone(), answers.take(&mut server, now)));
            }
        }
        server.inventory = next.inventory.clone();
        server.boot = next.boot.clone();
        if let Some(dhcp) = staged {
            server.dhcp.options = dhcp.options.clone();
            // Relays and DECLINE limits apply at once; the commit bounds at the next start.
            server.set_guards(dhcp.guards.clone());
            for (mine, new) in server.dhcp.subnets.iter_mut().zip(&dhcp.subnets) {
                mine.options = new.options.clone();
            }
        }
        server.table.set_reservations(&next.inventory);
        let synced = match slot.as_mut() {
            Some(fp) => fp.sync_at(&server, now).map(|r| {
                info!(
                    hosts = r.written.hosts,
                    removed = r.written.removed,
                    generation = next.generation,
                    "XDP DHCP fast path resynced"
                );
            }),
            None => Ok(()),
        };
        drop(slot);
        drop(server);
        if let Some((answers, taken)) = taken {
            answers.settle(taken);
        }
        Ok(synced?)
    }
}

impl Follower for DhcpFollower {
    fn name(&self) -> &'static str {
        "dhcp"
    }

    fn check(&self, _next: &Snapshot) -> Result<(), String> {
        // What `stage` admitted is checked again under the server lock: the running section
        // is the server's own, and nothing else in a snapshot can be refused by DHCP (hosts
        // and profiles were validated when the snapshot was built).
        let staged = self.staged.lock().map_err(|_| "DHCP lock poisoned")?;
        match staged.as_ref() {
            Some(dhcp) => admissible(&*self.server().map_err(|e| e.to_string())?, dhcp)
                .map_err(|e| e.to_string()),
            None => Ok(()),
        }
    }

    fn apply(&self, next: &Arc<Snapshot>) {
        let result = self.apply_to(next);
        self.in_step.store(result.is_ok(), Ordering::Release);
        if let Err(e) = result {
            // The kernel has no generation check: an entry left from the old maps would be
            // answered. A failed sync has emptied the maps (`FastPathOwner::sync_at`), so
            // userspace, which follows this generation, answers until a resync succeeds.
            warn!(
                generation = next.generation,
                "DHCP did not follow the new snapshot whole: {e}"
            );
        }
    }

    fn in_step(&self) -> bool {
        self.in_step.load(Ordering::Acquire)
    }

    fn abort(&self) {
        // A poisoned lock still holds the staged section: drop it all the same.
        *self.staged.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }
}
