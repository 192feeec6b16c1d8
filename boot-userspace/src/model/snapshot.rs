//! One configuration snapshot, swapped whole: the inventory, the boot settings and what is
//! derived from them, under a generation number. Every service reads the snapshot it loaded
//! for the request or packet in hand, so one answer never mixes two generations; services
//! that keep a copy of their own (DHCP's server state and the XDP maps, the ledger's host
//! index) follow each publish before readers can see it.
//!
//! A change (SIGHUP, an API write) is published in one order: build the next parts from the
//! current snapshot, ask every follower whether it can take them (any refusal refuses the
//! whole change, the running generation stays, and every follower drops what it staged for
//! it), apply them to every follower, swap, then run the [`Live::on_published`] hooks (the
//! `config.generation` event), so an announced generation is one readers already load.
//! Readers load with [`Live::load`]; in async code hold the returned `Arc`, never a guard,
//! across an `.await`.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use prometheus::{IntGauge, IntGaugeVec, Opts, Registry};

use crate::model::{
    boot::BootSettings,
    inventory::{Host, Inventory},
    render::{TemplateErrors, Templates},
};

/// One generation of the configuration every service answers from.
#[derive(Debug)]
pub struct Snapshot {
    /// 1 at start, +1 for every publish.
    pub generation: u64,
    /// The hosts and profiles in effect.
    pub inventory: Inventory,
    /// The global boot settings.
    pub boot: BootSettings,
    /// The names iPXE scripts are served under (TFTP and HTTP render them per host).
    pub scripts: Vec<String>,
    /// The config templates (`http.configs`), compiled; every host's configs and cmdlines
    /// render with this generation's inventory (checked at publish).
    pub templates: Arc<Templates>,
}

/// The parts of the next snapshot, as a change builds them; [`Live::publish`] numbers it.
#[derive(Debug)]
pub struct Next {
    /// The hosts and profiles.
    pub inventory: Inventory,
    /// The global boot settings.
    pub boot: BootSettings,
    /// The iPXE script names ([`script_names`] of the two above).
    pub scripts: Vec<String>,
    /// Newly compiled config templates ([`Templates::compile`], a reload); `None` keeps the
    /// current ones (an API change of hosts or profiles).
    pub templates: Option<Arc<Templates>>,
}

impl Next {
    /// The parts for `inventory` and `boot`, with the script names derived from them and
    /// the config templates kept.
    pub fn new(inventory: Inventory, boot: BootSettings) -> Self {
        let scripts = script_names(&boot, &inventory);
        Self {
            inventory,
            boot,
            scripts,
            templates: None,
        }
    }

    /// These parts with `templates` (compiled from the configs folder) instead of the
    /// current ones.
    pub fn with_templates(mut self, templates: Arc<Templates>) -> Self {
        self.templates = Some(templates);
        self
    }
}

/// The names iPXE scripts are served under: `boot.ipxe_script` and every profile's override.
pub fn script_names(boot: &BootSettings, inventory: &Inventory) -> Vec<String> {
    let mut names: Vec<String> = boot.ipxe_script.iter().cloned().collect();
    for p in inventory.profiles().values() {
        if let Some(s) = &p.boot.ipxe_script {
            if !names.contains(s) {
                names.push(s.clone());
            }
        }
    }
    names
}

/// Whether every template renders for every host of `next`, published after `current`: when
/// the templates and the boot settings are the same, only the hosts that changed (or whose
/// profiles changed) are rendered again, so an API write of one host costs that host's
/// renders. The server address is not known here: `0.0.0.0`.
fn renders(current: &Snapshot, next: &Snapshot) -> Result<(), TemplateErrors> {
    let every = !Arc::ptr_eq(&current.templates, &next.templates) || current.boot != next.boot;
    let before = &current.inventory;
    let profile_changed = |name: &str| before.profile(name) != next.inventory.profile(name);
    let changed = |h: &Host| {
        every
            || before.hosts().iter().find(|b| b.name == h.name) != Some(h)
            || std::iter::once(&h.profile)
                .chain(&h.menu)
                .any(|p| profile_changed(p))
    };
    let checked = next
        .templates
        .check_hosts(&next.inventory, &next.boot, changed, |_| {
            std::net::Ipv4Addr::UNSPECIFIED
        });
    if checked.errors.is_empty() {
        Ok(())
    } else {
        Err(TemplateErrors(checked.errors))
    }
}

/// A holder of its own copy of configuration that must change with each generation.
pub trait Follower: Send + Sync {
    /// The name refusals and metrics use (`dhcp`, `ledger`).
    fn name(&self) -> &'static str;
    /// Whether it can take `next` as it is; no side effect. An `Err` refuses the change.
    fn check(&self, next: &Snapshot) -> Result<(), String>;
    /// Takes `next`. Called only after every follower's `check` passed; must not fail: what
    /// it cannot take whole it must leave in a state that answers right (the DHCP follower
    /// empties the kernel's maps, so userspace answers), and say so through [`Self::in_step`].
    fn apply(&self, next: &Arc<Snapshot>);
    /// Whether the last [`Self::apply`] took its generation whole. A follower that did not is
    /// not counted as having applied it (`bootfabric_config_generation_applied` keeps the
    /// generation it last took whole).
    fn in_step(&self) -> bool {
        true
    }
    /// The change it was asked to `check` (or staged for) is not published (a refusal, a
    /// build error): whatever it holds for it is dropped, so a later publish does not apply it.
    fn abort(&self) {}
}

/// Why a change was not published.
#[derive(Debug, thiserror::Error)]
pub enum PublishError<E> {
    /// The change itself is invalid.
    #[error("{0}")]
    Build(E),
    /// A config template or cmdline would not render for some host of the change.
    #[error("templates cannot apply this change: {0}")]
    Templates(TemplateErrors),
    /// A follower cannot take it (the DHCP server cannot change its subnets while running).
    #[error("{follower} cannot apply this change: {why}")]
    Refused {
        /// The follower's name.
        follower: &'static str,
        /// Its reason.
        why: String,
    },
}

/// What runs once a generation is in effect (see [`Live::on_published`]).
type Hook = Box<dyn Fn(&Snapshot) + Send + Sync>;

/// The snapshot in effect, shared by every service.
pub struct Live {
    current: ArcSwap<Snapshot>,
    followers: Mutex<Vec<Arc<dyn Follower>>>,
    /// Run after each swap, under the writer lock, in the order they were added.
    hooks: Mutex<Vec<Hook>>,
    /// One writer at a time: SIGHUP and API writes queue here.
    writer: Mutex<()>,
    generation: IntGauge,
    /// The generation each follower applied last (`bootfabric_config_generation_applied`),
    /// set by `publish` right after the follower's `apply` returned.
    applied: IntGaugeVec,
}

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live")
            .field("generation", &self.generation())
            .finish_non_exhaustive()
    }
}

impl Live {
    /// Starts at generation 1 with `first`, and registers `bootfabric_config_generation`.
    pub fn new(first: Next, registry: &Registry) -> Result<Arc<Self>, prometheus::Error> {
        let generation = IntGauge::new(
            "bootfabric_config_generation",
            "Generation of the configuration in effect (1 at start, +1 per reload or API change)",
        )?;
        registry.register(Box::new(generation.clone()))?;
        generation.set(1);
        let applied = IntGaugeVec::new(
            Opts::new(
                "bootfabric_config_generation_applied",
                "Generation of the configuration each service keeping its own copy has applied (dhcp, ledger)",
            ),
            &["service"],
        )?;
        registry.register(Box::new(applied.clone()))?;
        Ok(Arc::new(Self {
            current: ArcSwap::from_pointee(Snapshot {
                generation: 1,
                inventory: first.inventory,
                boot: first.boot,
                scripts: first.scripts,
                templates: first.templates.unwrap_or_default(),
            }),
            followers: Mutex::default(),
            hooks: Mutex::default(),
            writer: Mutex::default(),
            generation,
            applied,
        }))
    }

    /// A snapshot without metrics, for tests and offline commands.
    pub fn unregistered(first: Next) -> Arc<Self> {
        let registry = Registry::new();
        // A fresh registry cannot hold the name already.
        match Self::new(first, &registry) {
            Ok(live) => live,
            Err(e) => unreachable!("a fresh registry refused a metric: {e}"),
        }
    }

    fn set_applied(&self, follower: &str, generation: u64) {
        self.applied
            .with_label_values(&[follower])
            .set(i64::try_from(generation).unwrap_or(i64::MAX));
    }

    /// The snapshot in effect. Load once per request or packet and answer from it.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// The generation in effect.
    pub fn generation(&self) -> u64 {
        self.current.load().generation
    }

    /// Adds a follower; it is not applied the current snapshot (it was built from it).
    pub fn follow(&self, f: Arc<dyn Follower>) {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.set_applied(f.name(), self.generation());
        self.followers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(f);
    }

    /// Adds `hook`, run with every generation published from now on, once readers can load
    /// it, and before the next publish begins (under the writer lock): what announces a
    /// generation (`config.generation`) never names one that readers cannot see yet, and
    /// announces generations in order.
    pub fn on_published(&self, hook: impl Fn(&Snapshot) + Send + Sync + 'static) {
        self.hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Box::new(hook));
    }

    /// Publishes the next generation, built by `build` from the current one: every template
    /// is rendered for every host it concerns (a failure refuses the change as follower
    /// `templates`, naming host, file and line), every follower checks it (one refusal
    /// refuses all), every follower applies it, then readers see it.
    /// Blocking (followers sync kernel maps, templates render): call it from a blocking thread.
    pub fn publish<E>(
        &self,
        build: impl FnOnce(&Snapshot) -> Result<Next, E>,
    ) -> Result<Arc<Snapshot>, PublishError<E>> {
        let _writer = self
            .writer
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let current = self.current.load_full();
        let followers = self
            .followers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        // Whatever `build` staged in a follower (SIGHUP's `[dhcp]`) goes with a refusal:
        // a later publish must not apply what this one refused.
        let abort = |e| {
            for f in &followers {
                f.abort();
            }
            e
        };
        let next = build(&current).map_err(|e| abort(PublishError::Build(e)))?;
        let next = Arc::new(Snapshot {
            generation: current.generation + 1,
            inventory: next.inventory,
            boot: next.boot,
            scripts: next.scripts,
            templates: next.templates.unwrap_or_else(|| current.templates.clone()),
        });
        // Here rather than in each builder: whoever changes hosts, profiles or templates,
        // a host whose config or cmdline no longer renders refuses the change.
        renders(&current, &next).map_err(|errors| abort(PublishError::Templates(errors)))?;
        for f in &followers {
            f.check(&next).map_err(|why| {
                abort(PublishError::Refused {
                    follower: f.name(),
                    why,
                })
            })?;
        }
        for f in &followers {
            f.apply(&next);
            if f.in_step() {
                self.set_applied(f.name(), next.generation);
            } else {
                tracing::warn!(
                    follower = f.name(),
                    generation = next.generation,
                    "a follower did not take generation {} whole; \
                     bootfabric_config_generation_applied keeps its last whole one",
                    next.generation
                );
            }
        }
        self.current.store(next.clone());
        self.generation
            .set(i64::try_from(next.generation).unwrap_or(i64::MAX));
        for hook in self
            .hooks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            hook(&next);
        }
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};

    struct Counting {
        refuse: bool,
        seen: AtomicU64,
    }

    impl Follower for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn check(&self, _next: &Snapshot) -> Result<(), String> {
            if self.refuse {
                Err("cannot".to_owned())
            } else {
                Ok(())
            }
        }
        fn apply(&self, next: &Arc<Snapshot>) {
            self.seen.store(next.generation, Ordering::SeqCst);
        }
    }

    fn empty() -> Next {
        Next::new(Inventory::default(), BootSettings::default())
    }

    #[test]
    fn a_publish_numbers_the_generation_and_reaches_followers_first() {
        let live = Live::unregistered(empty());
        let f = Arc::new(Counting {
            refuse: false,
            seen: AtomicU64::new(0),
        });
        live.follow(f.clone());
        assert_eq!(live.generation(), 1);
        let next = live
            .publish(|_| Ok::<_, String>(empty()))
            .map_err(|e| e.to_string());
        assert_eq!(next.map(|s| s.generation), Ok(2));
        assert_eq!(f.seen.load(Ordering::SeqCst), 2);
        assert_eq!(live.load().generation, 2);
    }

    #[test]
    fn one_refusal_refuses_the_whole_change() {
        let live = Live::unregistered(empty());
        let ok = Arc::new(Counting {
            refuse: false,
            seen: AtomicU64::new(0),
        });
        live.follow(ok.clone());
        live.follow(Arc::new(Counting {
            refuse: true,
            seen: AtomicU64::new(0),
        }));
        let refused = live.publish(|_| Ok::<_, String>(empty()));
        assert!(matches!(
            refused,
            Err(PublishError::Refused {
                follower: "counting",
                ..
            })
        ));
        assert_eq!(ok.seen.load(Ordering::SeqCst), 0, "nobody applied it");
        assert_eq!(live.generation(), 1);
        let bad = live.publish(|_| Err::<Next, _>("bad".to_owned()));
        assert!(matches!(bad, Err(PublishError::Build(b)) if b == "bad"));
        assert_eq!(live.generation(), 1);
    }

    fn inventory(meta: &str) -> Inventory {
        let text = format!(
            "[profiles.p]\nkernel = \"k\"\ncmdline = \"role={{{{ meta.role }}}}\"\n[[hosts]]\nname = \"node01\"\nmac = \"52:54:00:aa:00:01\"\nprofile = \"p\"\n{meta}\n"
        );
        let wire = toml::from_str(&text).expect("toml");
        Inventory::from_wire(std::path::Path::new("hosts.toml"), wire).expect("inventory")
    }

    #[test]
    fn a_change_a_template_cannot_render_is_refused_naming_host_file_and_line() {
        let templates = Arc::new(
            Templates::from_texts([("role.cfg", "# role\n{{ meta.role }}\n")]).expect("compile"),
        );
        let first = Next::new(
            inventory("meta = { role = \"worker\" }"),
            BootSettings::default(),
        )
        .with_templates(templates.clone());
        let live = Live::unregistered(first);
        // An API change that drops the host's meta: its config and its cmdline fail.
        let refused =
            live.publish(|_| Ok::<_, String>(Next::new(inventory(""), BootSettings::default())));
        let Err(PublishError::Templates(errors)) = refused else {
            panic!("published: {refused:?}");
        };
        let why = errors.to_string();
        assert!(
            why.contains("configs/role.cfg:2: host node01: undefined value"),
            "{why}"
        );
        assert!(
            why.contains("profiles.p.cmdline:1: host node01: undefined value"),
            "{why}"
        );
        assert_eq!(live.generation(), 1);
        // A change that keeps it renderable goes through, and keeps the templates.
        let next = live
            .publish(|_| {
                Ok::<_, String>(Next::new(
                    inventory("meta = { role = \"storage\" }"),
                    BootSettings::default(),
                ))
            })
            .expect("published");
        assert!(Arc::ptr_eq(&next.templates, &templates));
    }

    /// Per apply: the follower, the generation applied, the generation readers saw then.
    type Applies = Arc<Mutex<Vec<(&'static str, u64, u64)>>>;

    /// Records, at each apply, its name and the generation readers see at that moment.
    struct Recording {
        name: &'static str,
        live: std::sync::OnceLock<Arc<Live>>,
        log: Applies,
    }

    impl Follower for Recording {
        fn name(&self) -> &'static str {
            self.name
        }
        fn check(&self, _next: &Snapshot) -> Result<(), String> {
            Ok(())
        }
        fn apply(&self, next: &Arc<Snapshot>) {
            let seen = self.live.get().map_or(0, |l| l.load().generation);
            self.log
                .lock()
                .expect("log")
                .push((self.name, next.generation, seen));
        }
    }

    fn gauge(registry: &Registry, name: &str, service: Option<&str>) -> Option<i64> {
        registry
            .gather()
            .iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().iter())
            .find(|m| service.is_none_or(|s| m.get_label().iter().any(|l| l.value() == s)))
            .map(|m| m.get_gauge().get_value() as i64)
    }

    #[test]
    fn followers_apply_in_order_before_readers_see_the_generation() {
        let registry = Registry::new();
        let live = Live::new(empty(), &registry).expect("live");
        let log = Arc::new(Mutex::new(Vec::new()));
        for name in ["dhcp", "ledger"] {
            let f = Arc::new(Recording {
                name,
                live: std::sync::OnceLock::new(),
                log: Arc::clone(&log),
            });
            let _ = f.live.set(Arc::clone(&live));
            live.follow(f);
        }
        assert_eq!(
            gauge(
                &registry,
                "bootfabric_config_generation_applied",
                Some("dhcp")
            ),
            Some(1)
        );
        live.publish(|_| Ok::<_, String>(empty()))
            .expect("published");
        assert_eq!(
            *log.lock().expect("log"),
            [("dhcp", 2, 1), ("ledger", 2, 1)],
            "each follower in the order it followed, while readers still load generation 1"
        );
        assert_eq!(live.load().generation, 2);
        assert_eq!(
            gauge(&registry, "bootfabric_config_generation", None),
            Some(2)
        );
        for service in ["dhcp", "ledger"] {
            assert_eq!(
                gauge(
                    &registry,
                    "bootfabric_config_generation_applied",
                    Some(service)
                ),
                Some(2),
                "{service}"
            );
        }
        // A refused change moves no gauge.
        let refused = live.publish(|_| Err::<Next, _>("bad".to_owned()));
        assert!(refused.is_err());
        assert_eq!(
            gauge(&registry, "bootfabric_config_generation", None),
            Some(2)
        );
        assert_eq!(log.lock().expect("log").len(), 2);
    }

    /// A follower that counts its aborts and may be out of step after an apply.
    struct Aborting {
        aborts: AtomicU64,
        whole: bool,
    }

    impl Follower for Aborting {
        fn name(&self) -> &'static str {
            "aborting"
        }
        fn check(&self, _next: &Snapshot) -> Result<(), String> {
            Ok(())
        }
        fn apply(&self, _next: &Arc<Snapshot>) {}
        fn in_step(&self) -> bool {
            self.whole
        }
        fn abort(&self) {
            self.aborts.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_generation_is_announced_after_readers_can_load_it_and_in_order() {
        let live = Live::unregistered(empty());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (weak, log) = (Arc::downgrade(&live), Arc::clone(&seen));
        live.on_published(move |s| {
            let loaded = weak.upgrade().map_or(0, |l| l.load().generation);
            log.lock().expect("log").push((s.generation, loaded));
        });
        live.publish(|_| Ok::<_, String>(empty()))
            .expect("published");
        live.publish(|_| Ok::<_, String>(empty()))
            .expect("published");
        assert!(live.publish(|_| Err::<Next, _>("bad".to_owned())).is_err());
        assert_eq!(
            *seen.lock().expect("log"),
            [(2, 2), (3, 3)],
            "each generation announced once readers load it; a refused one never"
        );
    }

    #[test]
    fn every_refusal_aborts_every_follower_and_a_publish_does_not() {
        let live = Live::unregistered(empty());
        let f = Arc::new(Aborting {
            aborts: AtomicU64::new(0),
            whole: true,
        });
        live.follow(f.clone());
        assert!(live.publish(|_| Err::<Next, _>("bad".to_owned())).is_err());
        assert_eq!(f.aborts.load(Ordering::SeqCst), 1, "a build error");
        live.follow(Arc::new(Counting {
            refuse: true,
            seen: AtomicU64::new(0),
        }));
        assert!(live.publish(|_| Ok::<_, String>(empty())).is_err());
        assert_eq!(
            f.aborts.load(Ordering::SeqCst),
            2,
            "another follower's refusal"
        );
        let live = Live::unregistered(empty());
        live.follow(f.clone());
        live.publish(|_| Ok::<_, String>(empty()))
            .expect("published");
        assert_eq!(
            f.aborts.load(Ordering::SeqCst),
            2,
            "published: nothing aborted"
        );
    }

    #[test]
    fn a_follower_that_did_not_apply_whole_keeps_its_last_whole_generation() {
        let registry = Registry::new();
        let live = Live::new(empty(), &registry).expect("live");
        live.follow(Arc::new(Aborting {
            aborts: AtomicU64::new(0),
            whole: false,
        }));
        live.publish(|_| Ok::<_, String>(empty()))
            .expect("published");
        assert_eq!(live.generation(), 2);
        assert_eq!(
            gauge(
                &registry,
                "bootfabric_config_generation_applied",
                Some("aborting")
            ),
            Some(1)
        );
    }
}
