//! What `/api/v1` writes share: the overlay file (`config::overlay`) kept in step with the
//! live snapshot, strong ETags, JSON merge patch (RFC 7396), the per-caller rate limit, and
//! the answer of a write.
//!
//! A write runs inside [`Live::publish`]'s single-writer lock: the If-Match comparison, the
//! change, validation and the overlay file's atomic rewrite all happen there, so two writers
//! cannot both pass the same ETag, and a change is on disk before any service sees it or the
//! caller is answered. A change a follower refuses is rolled back on disk.
//!
//! In cluster mode (`cluster::inventory`) the overlay is etcd's: a write is an etcd
//! transaction guarded by the revisions this fabric published (a change made elsewhere since
//! answers 412, etcd without quorum 503 with `Retry-After`), made inside the same lock and
//! published here before the answer (read-your-writes); the overlay file is not written. The
//! watch hands every other fabric's change to [`ApiState`]'s [`Sink`], which publishes it the
//! same way, and keeps a local copy (`cluster-inventory.json`) for a restart without etcd.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Instant,
};

use arc_swap::ArcSwap;

use hyper::StatusCode;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256};
use tracing::{error, warn};

use super::problem::Problem;
use crate::{
    cluster::inventory::{self as shared, CommitError, InventoryStore, Mirror, Published, Sink},
    config::overlay::Overlay,
    model::{
        inventory::{wire, Inventory, Mac},
        ledger::{EventType, Ledger},
        snapshot::{Follower, Live, Next, PublishError, Snapshot},
    },
};

/// What `/api/v1` reads answer from: a snapshot and the overlay as it was when that snapshot
/// was published, swapped together, so a read never takes a lock (a write may hold the
/// overlay's for an fsync, a SIGHUP for a whole config load) and `source` and the ETag always
/// agree with the inventory.
pub struct View {
    /// The snapshot.
    pub snapshot: Arc<Snapshot>,
    /// The overlay that goes with it.
    pub overlay: Arc<Overlay>,
}

/// Keeps [`View`] in step with every publish (API writes, SIGHUP, the consumption task): a
/// follower, so the view is swapped within the publish, before readers of `Live` see it.
struct ViewFollower {
    view: Arc<ArcSwap<View>>,
    /// The overlay an API write is publishing; `None`: the overlay does not change.
    pending: Arc<Mutex<Option<Arc<Overlay>>>>,
}

impl Follower for ViewFollower {
    fn name(&self) -> &'static str {
        "api"
    }

    fn check(&self, _next: &Snapshot) -> Result<(), String> {
        Ok(())
    }

    fn apply(&self, next: &Arc<Snapshot>) {
        let pending = self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let overlay = pending.unwrap_or_else(|| self.view.load().overlay.clone());
        self.view.store(Arc::new(View {
            snapshot: next.clone(),
            overlay,
        }));
    }
}

/// The state the `/api/v1` resources are served from.
pub struct ApiState {
    /// The snapshot every service answers from.
    pub live: Arc<Live>,
    /// Where changes are announced (`host.created`, …) and boots are read from.
    pub ledger: Ledger,
    /// The operator's inventory file (to tell a file host from an API one on delete).
    pub inventory_file: Option<PathBuf>,
    overlay_path: PathBuf,
    /// The overlay as on disk. Held across a whole write, so the file and the snapshot
    /// change in the same order.
    overlay: Mutex<Overlay>,
    view: Arc<ArcSwap<View>>,
    pending: Arc<Mutex<Option<Arc<Overlay>>>>,
    limiter: Mutex<Limiter>,
    /// Cluster mode: the overlay is etcd's.
    cluster: Option<Shared>,
}

/// Cluster mode's side of [`ApiState`].
struct Shared {
    store: InventoryStore,
    /// The runtime the etcd requests run on (writes run on blocking threads).
    runtime: tokio::runtime::Handle,
    /// The revisions of what this fabric published. Locked only under the overlay's lock.
    published: Mutex<Published>,
}

/// How long a client should wait before writing again while etcd cannot take writes.
const RETRY_AFTER_S: u32 = 5;

/// The answer to a write before this fabric has loaded etcd's inventory (it serves its
/// local copy meanwhile, whose revisions it does not know).
fn not_loaded() -> Problem {
    Problem {
        retry_after: Some(RETRY_AFTER_S),
        ..Problem::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "this fabric has not loaded the cluster's inventory from etcd yet; reads answer from its local copy, retry the write later",
        )
    }
}

/// The answer to a write etcd did not take.
fn commit_problem(e: &CommitError, kind: EventType) -> Problem {
    match e {
        CommitError::Conflict
            if matches!(kind, EventType::HostCreated | EventType::ProfileCreated) =>
        {
            Problem::new(
                StatusCode::CONFLICT,
                "another fabric created it meanwhile; GET it, then PUT or PATCH it",
            )
        }
        CommitError::Conflict => Problem::new(
            StatusCode::PRECONDITION_FAILED,
            "the resource changed on another fabric since; GET it again for its ETag",
        ),
        // The write was sent and etcd did not confirm it (a timeout, the client's or etcd's,
        // a lost connection or leader): it may still commit (a majority can come back with
        // it), so a retry may find it done. Say so, as the API of any store that times out
        // must.
        CommitError::Unavailable(e) if e.outcome_unknown() => {
            error!(error = %e, "cluster inventory: etcd did not confirm the write");
            Problem {
                title: "etcd did not confirm the write".to_owned(),
                retry_after: Some(RETRY_AFTER_S),
                ..Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the cluster's etcd did not confirm the write in time; the write may still land: GET the resource before retrying (a retried create may find it, 409)",
                )
            }
        }
        CommitError::Unavailable(e) => {
            error!(error = %e, "cluster inventory: etcd cannot take the write");
            Problem {
                title: "etcd cannot take writes now".to_owned(),
                retry_after: Some(RETRY_AFTER_S),
                ..Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "the cluster's etcd is unreachable or has no quorum; reads still answer, retry the write later",
                )
            }
        }
    }
}

/// The overlay could not be read at start.
pub type OpenError = crate::config::overlay::OverlayError;

impl ApiState {
    /// Serves from `live`, with the overlay of `state_dir` (already applied to `live`'s
    /// inventory by the config loader).
    pub fn open(
        live: Arc<Live>,
        ledger: Ledger,
        inventory_file: Option<PathBuf>,
        state_dir: &std::path::Path,
    ) -> Result<Self, OpenError> {
        Self::build(
            live,
            ledger,
            inventory_file,
            Overlay::path_in(state_dir),
            None,
        )
    }

    /// Cluster mode: serves from `live`, with the local copy of etcd's overlay in
    /// `state_dir` (already applied by the config loader) until the watch of `store` (run
    /// with this state as its [`Sink`]) brings etcd's; writes go to etcd through `store`.
    /// Needs a tokio runtime.
    pub fn clustered(
        live: Arc<Live>,
        ledger: Ledger,
        inventory_file: Option<PathBuf>,
        state_dir: &std::path::Path,
        store: InventoryStore,
    ) -> Result<Self, OpenError> {
        let shared = Shared {
            store,
            runtime: tokio::runtime::Handle::current(),
            published: Mutex::new(Published::default()),
        };
        Self::build(
            live,
            ledger,
            inventory_file,
            Overlay::path_for(state_dir, true),
            Some(shared),
        )
    }

    fn build(
        live: Arc<Live>,
        ledger: Ledger,
        inventory_file: Option<PathBuf>,
        overlay_path: PathBuf,
        cluster: Option<Shared>,
    ) -> Result<Self, OpenError> {
        let overlay = Overlay::load(&overlay_path)?;
        let view = Arc::new(ArcSwap::from_pointee(View {
            snapshot: live.load(),
            overlay: Arc::new(overlay.clone()),
        }));
        let pending = Arc::new(Mutex::new(None));
        live.follow(Arc::new(ViewFollower {
            view: view.clone(),
            pending: pending.clone(),
        }));
        Ok(Self {
            live,
            ledger,
            inventory_file,
            overlay_path,
            overlay: Mutex::new(overlay),
            view,
            pending,
            limiter: Mutex::new(Limiter::default()),
            cluster,
        })
    }

    /// The overlay as on disk, locked: held by a writer (a write, a SIGHUP) for its whole
    /// change. Never from an async worker: reads use [`Self::view`].
    pub fn overlay(&self) -> MutexGuard<'_, Overlay> {
        self.overlay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The overlay file this state writes: fixed at start, so a reload that moves it
    /// (`daemon.state_dir`) is refused.
    pub fn overlay_path(&self) -> &std::path::Path {
        &self.overlay_path
    }

    /// What reads answer from, lock-free.
    pub fn view(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// Whether `peer` may make another write now (else 429).
    pub fn admit(&self, peer: IpAddr) -> bool {
        self.limiter
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take(peer, Instant::now())
    }

    /// Publishes a change: `change` gets the current snapshot and a copy of the overlay to
    /// edit, and returns the next inventory. Once published, `event` (a kind and the host's
    /// or profile's name) is announced while the overlay lock is still held, so the log's
    /// `host.*`/`profile.*` events come in the order of their generations. Blocking (fsync,
    /// followers): call it from a blocking thread.
    pub fn write(
        &self,
        event: (EventType, &str),
        change: impl FnOnce(&Snapshot, &mut Overlay) -> Result<Inventory, Problem>,
    ) -> Result<Arc<Snapshot>, Problem> {
        let (kind, name) = event;
        let mut overlay = self.overlay();
        let mut next_overlay = overlay.clone();
        let mut mac_before = None;
        let mut unchanged = false;
        // Cluster mode: what etcd took, and at which revision.
        let mut committed: Option<(Vec<shared::Op>, i64)> = None;
        let result = self.live.publish(|snap| {
            mac_before = snap.inventory.host_named(name).map(|h| h.mac);
            let inventory = change(snap, &mut next_overlay)?;
            // The effective inventory is the file's with the overlay over it: the same
            // overlay is the same inventory. A write that changes nothing (a reset of a host
            // not consumed, a PUT of the record as it is) makes no generation and no event.
            if serde_json::to_value(&*overlay).ok() == serde_json::to_value(&next_overlay).ok() {
                unchanged = true;
                return Err(Problem::new(StatusCode::OK, "unchanged"));
            }
            match &self.cluster {
                None => next_overlay.save(&self.overlay_path).map_err(|e| {
                    error!(error = %e, "cannot persist an API change; it is not applied");
                    Problem::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the change could not be written to the state folder; it is not applied",
                    )
                })?,
                Some(c) => {
                    if !c.lock().loaded {
                        return Err(not_loaded());
                    }
                    let ops = shared::ops(&overlay, &next_overlay);
                    let guards = c.guards(&ops);
                    let rev = c
                        .runtime
                        .block_on(c.store.commit(&ops, &guards))
                        .map_err(|e| commit_problem(&e, kind))?;
                    committed = Some((ops, rev));
                }
            }
            // Last, so nothing after it can fail but a follower's check (cleared below).
            *self.pending.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Arc::new(next_overlay.clone()));
            Ok(Next::new(inventory, snap.boot.clone()))
        });
        if result.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        if let (Some(c), Some((ops, rev))) = (&self.cluster, &committed) {
            let mut published = c.lock();
            published.record(ops, *rev);
            if result.is_err() {
                // etcd has a change this fabric refused: put the previous records back, if
                // nobody changed them since (then the watch brings whatever they are).
                let back = shared::ops(&next_overlay, &overlay);
                let guards = c.guards_with(&back, &published);
                match c.runtime.block_on(c.store.commit(&back, &guards)) {
                    Ok(rev) => published.record(&back, rev),
                    Err(e) => error!(error = %e, "cannot roll back a refused API change in etcd"),
                }
            }
        }
        match result {
            Ok(snap) => {
                if self.cluster.is_some() {
                    // The local copy for a restart while etcd is down; etcd has the change.
                    if let Err(e) = next_overlay.save(&self.overlay_path) {
                        warn!(error = %e, "cluster inventory: cannot update the local copy");
                    }
                }
                *overlay = next_overlay;
                let mac = snap
                    .inventory
                    .host_named(name)
                    .map(|h| h.mac)
                    .or(mac_before);
                self.announce(kind, name, mac, snap.generation);
                Ok(snap)
            }
            Err(PublishError::Build(_)) if unchanged => Ok(self.live.load()),
            Err(PublishError::Build(p)) => Err(p),
            Err(PublishError::Templates(errors)) => {
                if let Err(e) = self.roll_back(&overlay) {
                    error!(error = %e, "cannot roll back a refused API change on disk");
                }
                // A template that no longer renders for some host is the change's fault (a
                // meta key it removed, a profile it moved to): a validation error, each
                // naming the template (file or profile cmdline), its line and the host.
                Err(Problem::invalid(
                    errors
                        .0
                        .iter()
                        .map(|e| {
                            crate::model::inventory::resource::FieldError::new(
                                e.template(),
                                e.to_string(),
                            )
                        })
                        .collect(),
                ))
            }
            Err(PublishError::Refused { follower, why }) => {
                // The file already holds the change: put the previous one back.
                if let Err(e) = self.roll_back(&overlay) {
                    error!(error = %e, "cannot roll back a refused API change on disk");
                }
                warn!(follower, why, "an API change was refused");
                Err(Problem {
                    title: format!("{follower} cannot apply this change"),
                    ..Problem::new(StatusCode::SERVICE_UNAVAILABLE, why)
                })
            }
        }
    }

    /// Puts `overlay` (the one before a refused change) back on disk; in cluster mode the
    /// file was not written, and etcd's copy was rolled back already.
    fn roll_back(&self, overlay: &Overlay) -> Result<(), crate::config::overlay::OverlayError> {
        match self.cluster {
            None => overlay.save(&self.overlay_path),
            Some(_) => Ok(()),
        }
    }

    /// The operator's inventory file as on disk now (none: empty).
    fn base_file(&self) -> Result<wire::InventoryFile, String> {
        let Some(path) = &self.inventory_file else {
            return Ok(wire::InventoryFile::default());
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Announces a change on the event log (SSE, webhooks): `kind` of `name` (with its MAC,
    /// for hosts), published as `generation`.
    fn announce(&self, kind: EventType, name: &str, mac: Option<Mac>, generation: u64) {
        let (host, mac, data) = match kind {
            EventType::ProfileCreated | EventType::ProfileUpdated | EventType::ProfileDeleted => (
                None,
                None,
                serde_json::json!({"profile": name, "generation": generation}),
            ),
            _ => (
                Some(name),
                mac,
                serde_json::json!({"generation": generation}),
            ),
        };
        self.ledger.emit(kind, host, mac, data);
    }

    /// Whether the operator's inventory file defines the host (`hosts`) or profile
    /// (`profiles`) `name` now. Unreadable: assumed so (a tombstone is then written, which
    /// is right either way).
    pub fn in_file(&self, host: bool, name: &str) -> bool {
        let Some(path) = &self.inventory_file else {
            return false;
        };
        let file: Option<wire::InventoryFile> = std::fs::read_to_string(path)
            .ok()
            .and_then(|t| toml::from_str(&t).ok());
        match file {
            None => true,
            Some(f) if host => f.hosts.iter().any(|h| h.name.as_deref() == Some(name)),
            Some(f) => f.profiles.contains_key(name),
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Published> {
        self.published
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Each key of `ops` with the revision etcd must still have for it.
    fn guards(&self, ops: &[shared::Op]) -> Vec<(String, i64)> {
        self.guards_with(ops, &self.lock())
    }

    fn guards_with(&self, ops: &[shared::Op], published: &Published) -> Vec<(String, i64)> {
        ops.iter()
            .map(|op| (op.key().to_owned(), published.guard(op.key())))
            .collect()
    }
}

impl ApiState {
    /// Publishes the operator's file with `next` over it (validated, every template
    /// rendered, every follower asked), `next` becoming what the API's reads show. Under
    /// the overlay's lock.
    fn publish_overlay(&self, next: &Overlay) -> Result<Arc<Snapshot>, String> {
        let base = self.base_file()?;
        let named = self
            .inventory_file
            .clone()
            .unwrap_or_else(|| self.overlay_path.clone());
        let result = self.live.publish(|snap| {
            let inventory =
                crate::config::overlay::effective(&named, base, next, &self.overlay_path)
                    .map_err(|e| e.to_string())?;
            *self.pending.lock().unwrap_or_else(PoisonError::into_inner) =
                Some(Arc::new(next.clone()));
            Ok::<_, String>(Next::new(inventory, snap.boot.clone()))
        });
        if result.is_err() {
            self.pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
        }
        result.map_err(|e| match e {
            PublishError::Build(e) => e,
            PublishError::Templates(errors) => format!("templates: {errors}"),
            PublishError::Refused { follower, why } => format!("{follower}: {why}"),
        })
    }
}

/// The watch's side: etcd's inventory, published like an API write (validated with the
/// operator's file, every template rendered, every follower asked). When the whole of it is
/// refused, its changes go one record at a time: a record this fabric refuses is named and
/// left out (it stays what it was here), the others are published.
impl Sink for ApiState {
    fn adopt(&self, mirror: &Mirror) -> Vec<String> {
        let Some(c) = &self.cluster else {
            return Vec::new();
        };
        let mut overlay = self.overlay();
        let mut published = c.lock();
        let (next_overlay, next_published) = shared::merge(&overlay, &published, mirror);
        let changes = shared::ops(&overlay, &next_overlay);
        if changes.is_empty() {
            *published = next_published;
            return Vec::new();
        }
        let mut refused = Vec::new();
        let mut taken = next_published.clone();
        if let Err(why) = self.publish_overlay(&next_overlay) {
            warn!(
                why,
                "cluster inventory: etcd's changes refused together; trying each"
            );
            let mut current = overlay.clone();
            for op in &changes {
                let key = op.key();
                let mut candidate = current.clone();
                if shared::set(&mut candidate, key, shared::get(&next_overlay, key)).is_err() {
                    continue;
                }
                match self.publish_overlay(&candidate) {
                    Ok(_) => current = candidate,
                    Err(why) => {
                        // What this fabric has of it stays, with its revision: a write of
                        // it here is guarded by that and fails until the record is fixed.
                        match published.revs.get(key) {
                            Some(r) => taken.revs.insert(key.to_owned(), *r),
                            None => taken.revs.remove(key),
                        };
                        taken.local.remove(key);
                        refused.push(format!("{key}: {why}"));
                    }
                }
            }
            if refused.len() == changes.len() {
                return refused;
            }
            *overlay = current;
        } else {
            *overlay = next_overlay;
        }
        if let Err(e) = overlay.save(&self.overlay_path) {
            warn!(error = %e, "cluster inventory: cannot update the local copy");
        }
        *published = taken;
        tracing::info!(
            generation = self.live.generation(),
            revision = mirror.revision,
            "cluster inventory: published etcd's changes"
        );
        refused
    }
}

/// A strong ETag of a resource's representation: SHA-256 of its canonical JSON (keys
/// sorted at every level), so equal content always gives the same tag.
pub fn etag(v: &Value) -> String {
    let mut text = String::new();
    canonical(v, &mut text);
    let digest = Sha256::digest(text.as_bytes());
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("\"{hex}\"")
}

fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&m[k], out);
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, item) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// What `If-Match` asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// No header: 428 (RFC 6585), so a writer cannot overwrite a change it never saw.
    Missing,
    /// `*`: the resource exists.
    Any,
    /// One of these tags.
    Tags(Vec<String>),
}

impl Precondition {
    /// From the `If-Match` header's value.
    pub fn from_header(value: Option<&[u8]>) -> Self {
        let Some(value) = value.and_then(|v| std::str::from_utf8(v).ok()) else {
            return Self::Missing;
        };
        if value.trim() == "*" {
            return Self::Any;
        }
        Self::Tags(
            value
                .split(',')
                .map(|t| t.trim().to_owned())
                .filter(|t| !t.is_empty())
                .collect(),
        )
    }

    /// `Ok` when a resource whose tag is `current` may be changed, else the problem
    /// (428, or 412 with the current tag in `detail`). Weak tags never match (strong
    /// comparison, RFC 9110 section 13.1.1).
    pub fn check(&self, current: &str) -> Result<(), Problem> {
        match self {
            Self::Missing => Err(Problem::new(
                StatusCode::PRECONDITION_REQUIRED,
                "send If-Match with the ETag of the version you change (GET it first), or `*`",
            )),
            Self::Any => Ok(()),
            Self::Tags(tags) if tags.iter().any(|t| t == current) => Ok(()),
            Self::Tags(_) => Err(Problem::new(
                StatusCode::PRECONDITION_FAILED,
                format!("the resource changed since; its ETag is now {current}"),
            )),
        }
    }
}

/// Applies a JSON merge patch (RFC 7396) to `target`: objects merge key by key, `null`
/// removes a key, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(t) = target {
        for (k, v) in patch {
            if v.is_null() {
                t.remove(k);
            } else {
                merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
    }
}

/// A resource's JSON `current` with the merge patch `patch` applied. A patch that is an
/// object always leaves an object (RFC 7396: the target becomes one first).
pub fn patched(mut current: Value, patch: &Map<String, Value>) -> Map<String, Value> {
    merge_patch(&mut current, &Value::Object(patch.clone()));
    match current {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A JSON object from a request body, or the problem (400).
pub fn object(body: &[u8]) -> Result<Map<String, Value>, Problem> {
    match serde_json::from_slice(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        )),
        Err(e) => Err(Problem::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not JSON: {e}"),
        )),
    }
}

/// A record of the file form from a JSON object, or the problem (422 naming the field
/// serde names: an unknown key, a wrong type).
pub fn record<T: serde::de::DeserializeOwned>(m: Map<String, Value>) -> Result<T, Problem> {
    serde_json::from_value(Value::Object(m)).map_err(|e| {
        let msg = e.to_string();
        // serde names the field in backticks: "unknown field `macc`, expected …".
        let field = msg.split('`').nth(1).unwrap_or("").to_owned();
        Problem::invalid(vec![crate::model::inventory::resource::FieldError::new(
            field, msg,
        )])
    })
}

/// Writes a caller may make per second, steadily, and in a burst.
const RATE_PER_S: f64 = 50.0;
const BURST: f64 = 100.0;
/// Callers tracked at most (admin.allow bounds them in practice; this bounds memory).
const MAX_CALLERS: usize = 4096;

/// A token bucket per caller address: a leaked token cannot rewrite the state file without
/// bound. Pure: the clock is an argument.
#[derive(Debug, Default)]
pub struct Limiter {
    buckets: HashMap<IpAddr, (f64, Instant)>,
}

impl Limiter {
    /// Takes one token of `peer`'s bucket at `now`; false when it is empty.
    pub fn take(&mut self, peer: IpAddr, now: Instant) -> bool {
        if self.buckets.len() >= MAX_CALLERS && !self.buckets.contains_key(&peer) {
            // Forget callers whose bucket has refilled: they are idle.
            self.buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * RATE_PER_S < BURST
            });
            if self.buckets.len() >= MAX_CALLERS {
                return false;
            }
        }
        let (tokens, at) = self.buckets.entry(peer).or_insert((BURST, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * RATE_PER_S).min(BURST);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn etags_are_strong_and_follow_content_not_key_order() {
        let a = etag(&json!({"name": "n", "meta": {"a": 1, "b": [1, 2]}}));
        let b: Value =
            serde_json::from_str(r#"{"meta":{"b":[1,2],"a":1},"name":"n"}"#).expect("json");
        assert_eq!(a, etag(&b));
        assert_ne!(
            a,
            etag(&json!({"name": "n", "meta": {"a": 2, "b": [1, 2]}}))
        );
        assert!(
            a.starts_with('"') && a.ends_with('"') && a.len() == 34,
            "{a}"
        );
    }

    #[test]
    fn if_match_needs_the_current_tag() {
        let tag = "\"0123\"";
        assert_eq!(
            Precondition::from_header(None)
                .check(tag)
                .map_err(|p| p.status),
            Err(428)
        );
        assert_eq!(
            Precondition::from_header(Some(b"\"9999\""))
                .check(tag)
                .map_err(|p| p.status),
            Err(412)
        );
        assert_eq!(
            Precondition::from_header(Some(b"W/\"0123\""))
                .check(tag)
                .map_err(|p| p.status),
            Err(412),
            "a weak tag never matches strongly"
        );
        assert!(Precondition::from_header(Some(b"\"1\", \"0123\""))
            .check(tag)
            .is_ok());
        assert!(Precondition::from_header(Some(b"*")).check(tag).is_ok());
    }

    #[test]
    fn merge_patch_follows_rfc_7396() {
        // RFC 7396 appendix A, some of its cases.
        for (target, patch, result) in [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (json!(["a", "b"]), json!(["c", "d"]), json!(["c", "d"])),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
            (
                json!({}),
                json!({"a": {"bb": {"ccc": null}}}),
                json!({"a": {"bb": {}}}),
            ),
        ] {
            let mut t = target.clone();
            merge_patch(&mut t, &patch);
            assert_eq!(t, result, "{target} + {patch}");
        }
        // `null` in meta removes that key only.
        let mut host = json!({"name": "n", "meta": {"role": "worker", "rack": 4}});
        merge_patch(&mut host, &json!({"meta": {"role": null}}));
        assert_eq!(host, json!({"name": "n", "meta": {"rack": 4}}));
    }

    #[test]
    fn the_limiter_allows_a_burst_then_the_steady_rate() {
        let mut l = Limiter::default();
        let t0 = Instant::now();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let allowed = (0..150).filter(|_| l.take(a, t0)).count();
        assert_eq!(allowed, 100);
        assert!(l.take(b, t0), "callers have their own buckets");
        assert!(!l.take(a, t0));
        let later = t0 + std::time::Duration::from_millis(100);
        let allowed = (0..10).filter(|_| l.take(a, later)).count();
        assert_eq!(allowed, 5, "50 per second");
    }

    /// A guard that fails is the client's stale view (412; 409 for a create that raced
    /// another fabric's); etcd that cannot take the write is 503 with `Retry-After`.
    #[test]
    fn etcd_refusals_map_to_http_answers() {
        assert_eq!(
            commit_problem(&CommitError::Conflict, EventType::HostUpdated).status,
            412
        );
        assert_eq!(
            commit_problem(&CommitError::Conflict, EventType::HostDeleted).status,
            412
        );
        assert_eq!(
            commit_problem(&CommitError::Conflict, EventType::ProfileCreated).status,
            409
        );
        let down = CommitError::Unavailable(crate::cluster::ClusterError::Timeout(
            std::time::Duration::from_secs(2),
        ));
        let p = commit_problem(&down, EventType::HostCreated);
        assert_eq!((p.status, p.retry_after), (503, Some(RETRY_AFTER_S)));
        assert!(p.detail.contains("may still land"), "{p:?}");
        let resp = p.response();
        assert_eq!(resp.headers()[hyper::header::RETRY_AFTER], "5");
        assert_eq!(not_loaded().status, 503);
        // tonic's deadline is a timeout too; "no leader" is refused before any proposal.
        let grpc = |s| {
            CommitError::Unavailable(crate::cluster::ClusterError::Etcd(
                etcd_client::Error::GRpcStatus(s),
            ))
        };
        let deadline = commit_problem(
            &grpc(tonic::Status::cancelled("Timeout expired")),
            EventType::HostCreated,
        );
        assert!(deadline.detail.contains("may still land"), "{deadline:?}");
        let no_leader = commit_problem(
            &grpc(tonic::Status::unavailable("etcdserver: no leader")),
            EventType::HostCreated,
        );
        assert_eq!(
            (no_leader.status, no_leader.retry_after),
            (503, Some(RETRY_AFTER_S))
        );
        assert!(
            !no_leader.detail.contains("may still land"),
            "{no_leader:?}"
        );
    }

    #[test]
    fn bodies_must_be_objects_and_records_name_bad_fields() {
        assert_eq!(object(b"[1]").map_err(|p| p.status), Err(400));
        assert_eq!(object(b"{").map_err(|p| p.status), Err(400));
        let m = object(br#"{"name":"n","macc":"x"}"#).expect("object");
        let p = record::<wire::Host>(m).expect_err("unknown field");
        assert_eq!(p.status, 422);
        assert_eq!(p.errors[0].field, "macc");
    }
}
