//! PROVISIONAL (replaced by the lead's scaffold16): one configuration snapshot, swapped whole.

use std::sync::{Arc, Mutex, RwLock};

use prometheus::{IntGauge, Registry};

use crate::model::{boot::BootSettings, inventory::Inventory};

/// One generation of what the services answer from.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// +1 per publish, from 1 at start.
    pub generation: u64,
    /// Hosts and profiles.
    pub inventory: Inventory,
    /// Global `[boot]` settings.
    pub boot: BootSettings,
    /// The iPXE script names TFTP and HTTP answer.
    pub scripts: Vec<String>,
}

impl Snapshot {
    /// The first snapshot of a daemon (generation 1).
    pub fn first(inventory: Inventory, boot: BootSettings, scripts: Vec<String>) -> Self {
        Self {
            generation: 1,
            inventory,
            boot,
            scripts,
        }
    }
}

/// The names iPXE scripts are served under: `boot.ipxe_script` and every profile's override
/// (TFTP and HTTP render them per host). Derived from the snapshot's own inventory, so that a
/// profile added by a reload or the API is answered under its script name at once.
pub fn ipxe_script_names(boot: &BootSettings, inventory: &Inventory) -> Vec<String> {
    let mut names: Vec<String> = boot.ipxe_script.iter().cloned().collect();
    for p in inventory.profiles().values() {
        if let Some(s) = &p.boot.ipxe_script {
            names.push(s.clone());
        }
    }
    names
}

/// The parts of the next snapshot.
pub struct Next {
    /// Hosts and profiles.
    pub inventory: Inventory,
    /// Global `[boot]` settings.
    pub boot: BootSettings,
    /// The iPXE script names.
    pub scripts: Vec<String>,
}

/// A service keeping its own copy.
pub trait Follower: Send + Sync {
    /// Its name in logs and metrics.
    fn name(&self) -> &'static str;
    /// Pure; `Err` refuses the whole change.
    fn check(&self, next: &Snapshot) -> Result<(), String>;
    /// Must not fail.
    fn apply(&self, next: &Arc<Snapshot>);
}

/// Why a publish did not happen.
#[derive(Debug, thiserror::Error)]
pub enum PublishError<E> {
    /// Building the next snapshot failed.
    #[error("{0}")]
    Build(E),
    /// A follower refused it.
    #[error("{follower} refused the change: {why}")]
    Refused {
        /// The follower.
        follower: &'static str,
        /// Why.
        why: String,
    },
}

/// The current snapshot.
pub struct Live {
    current: RwLock<Arc<Snapshot>>,
    followers: Mutex<Vec<Arc<dyn Follower>>>,
    publish: Mutex<()>,
    gauge: IntGauge,
}

impl Live {
    /// Live at `first`.
    pub fn new(first: Snapshot, registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let gauge = IntGauge::new("bootfabric_config_generation", "generation")?;
        registry.register(Box::new(gauge.clone()))?;
        gauge.set(first.generation as i64);
        Ok(Arc::new(Self {
            current: RwLock::new(Arc::new(first)),
            followers: Mutex::new(Vec::new()),
            publish: Mutex::new(()),
            gauge,
        }))
    }

    /// The current snapshot.
    pub fn load(&self) -> Arc<Snapshot> {
        Arc::clone(&self.current.read().unwrap_or_else(|e| e.into_inner()))
    }

    /// The current generation.
    pub fn generation(&self) -> u64 {
        self.load().generation
    }

    /// Adds a follower.
    pub fn follow(&self, f: Arc<dyn Follower>) {
        self.followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(f);
    }

    /// Publishes the next snapshot.
    pub fn publish<E>(
        &self,
        build: impl FnOnce(&Snapshot) -> Result<Next, E>,
    ) -> Result<Arc<Snapshot>, PublishError<E>> {
        let _one = self.publish.lock().unwrap_or_else(|e| e.into_inner());
        let cur = self.load();
        let n = build(&cur).map_err(PublishError::Build)?;
        let next = Arc::new(Snapshot {
            generation: cur.generation + 1,
            inventory: n.inventory,
            boot: n.boot,
            scripts: n.scripts,
        });
        let followers = self
            .followers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        for f in &followers {
            f.check(&next).map_err(|why| PublishError::Refused {
                follower: f.name(),
                why,
            })?;
        }
        for f in &followers {
            f.apply(&next);
        }
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::clone(&next);
        self.gauge.set(next.generation as i64);
        Ok(next)
    }
}
