//! `/api/v1/hosts`: list, get, create, replace, merge-patch and delete hosts, and reset a
//! `netboot = "once"` host. A host's JSON is its inventory record (the TOML file's keys)
//! plus the read-only `source` (`file` or `api`) and `netboot_state` (`consumed` or null).
//!
//! Reads answer from the live snapshot; writes go through [`ApiState::write`]. The
//! functions here take parsed values and return answers; [`super`] does the I/O.

use std::collections::BTreeMap;

use hyper::StatusCode;
use serde_json::{json, Map, Value};

use super::{
    api::{etag, object, patched, record, ApiState, Precondition},
    problem::Problem,
    Answer,
};
use crate::{
    config::overlay::Overlay,
    model::{
        inventory::{
            resource::{api_host_checks, host_to_wire, ChangeError},
            wire, Host, Inventory, Netboot,
        },
        ledger::EventType,
        snapshot::Snapshot,
    },
};

/// Fields the server sets: accepted in a body (a GET's answer may be sent back), ignored.
const READ_ONLY: [&str; 2] = ["source", "netboot_state"];

/// A host's JSON.
pub fn host_json(inventory: &Inventory, overlay: &Overlay, h: &Host) -> Value {
    let mut v = serde_json::to_value(host_to_wire(h)).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("netboot".into(), json!(h.netboot.as_str()));
        m.insert("meta".into(), json!(h.meta));
        m.insert(
            "source".into(),
            json!(if overlay.has_host(&h.name) {
                "api"
            } else {
                "file"
            }),
        );
        let consumed = h.netboot == Netboot::Once && inventory.is_consumed(&h.name);
        m.insert(
            "netboot_state".into(),
            if consumed {
                json!("consumed")
            } else {
                Value::Null
            },
        );
    }
    v
}

fn not_found(name: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("no host {name}"))
}

fn change_problem(e: ChangeError) -> Problem {
    match e {
        ChangeError::Invalid(errors) => Problem::invalid(errors),
        ChangeError::Conflict(errors) => Problem::conflict(errors),
    }
}

/// `GET /api/v1/hosts?…`: filters `profile`, `rack`, `model`, `netboot`, `source` and
/// `meta.KEY` (a string value compares as is, others as their JSON text).
pub fn list(
    snap: &Snapshot,
    overlay: &Overlay,
    query: &[(String, String)],
) -> Result<Answer, Problem> {
    for (k, _) in query {
        let known = matches!(
            k.as_str(),
            "profile" | "rack" | "model" | "netboot" | "source"
        ) || k.strip_prefix("meta.").is_some_and(|m| !m.is_empty());
        if !known {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                format!("unknown filter {k:?} (profile, rack, model, netboot, source, meta.KEY)"),
            ));
        }
    }
    let items = listing(&snap.inventory, overlay, query);
    Ok(Answer::json(
        StatusCode::OK,
        json!({
            "generation": snap.generation,
            "items": items,
        }),
        snap.generation,
    ))
}

/// Whether `h` passes every filter of `query` (keys as [`list`] takes them; an unknown key
/// passes nothing). The one filter of the API and of the CLI's offline `hosts ls`.
pub fn host_matches(h: &Host, overlay: &Overlay, query: &[(String, String)]) -> bool {
    query.iter().all(|(k, want)| {
        let source = if overlay.has_host(&h.name) {
            "api"
        } else {
            "file"
        };
        match k.as_str() {
            "profile" => &h.profile == want,
            "rack" => h.rack.as_deref() == Some(want.as_str()),
            "model" => h.model.as_deref() == Some(want.as_str()),
            "netboot" => h.netboot.as_str() == want,
            "source" => source == want,
            other => match other.strip_prefix("meta.").and_then(|key| h.meta.get(key)) {
                Some(Value::String(s)) => s == want,
                Some(v) => &v.to_string() == want,
                None => false,
            },
        }
    })
}

/// The hosts passing `query`, as [`host_json`] documents sorted by name: the `items` of a
/// listing.
pub fn listing(inventory: &Inventory, overlay: &Overlay, query: &[(String, String)]) -> Vec<Value> {
    let mut items: Vec<(&str, Value)> = inventory
        .hosts()
        .iter()
        .filter(|h| host_matches(h, overlay, query))
        .map(|h| (h.name.as_str(), host_json(inventory, overlay, h)))
        .collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    items.into_iter().map(|(_, v)| v).collect()
}

/// `GET /api/v1/hosts/{name}`.
pub fn get(snap: &Snapshot, overlay: &Overlay, name: &str) -> Result<Answer, Problem> {
    let h = snap
        .inventory
        .host_named(name)
        .ok_or_else(|| not_found(name))?;
    Ok(Answer::resource(
        StatusCode::OK,
        host_json(&snap.inventory, overlay, h),
        snap.generation,
    ))
}

/// The record a body asks for: read-only fields dropped, the name checked against the path.
fn spec_from(mut body: Map<String, Value>, name: Option<&str>) -> Result<wire::Host, Problem> {
    for k in READ_ONLY {
        body.remove(k);
    }
    if let Some(name) = name {
        match body.get("name") {
            None => {
                body.insert("name".into(), json!(name));
            }
            Some(Value::String(n)) if n == name => {}
            Some(other) => {
                return Err(Problem::invalid(vec![
                    crate::model::inventory::resource::FieldError::new(
                        "name",
                        format!("{other} is not the name in the path ({name}); a host is renamed by creating the new one and deleting the old"),
                    ),
                ]))
            }
        }
    }
    record(body)
}

/// Validates `spec` (a new or replacing record of `name`) against `snap`, records it in
/// `overlay`, and returns the next inventory. A change of `netboot` (or a new host) starts a
/// `once` host's single network boot afresh; a write that sends the value it has (a GET's
/// answer sent back with other changes) keeps a used one used: `netboot-reset` resets it.
fn upsert(snap: &Snapshot, overlay: &mut Overlay, spec: wire::Host) -> Result<Inventory, Problem> {
    let name = spec.name.clone().unwrap_or_default();
    let before = snap.inventory.host_named(&name);
    let current = before.map(host_to_wire);
    let errors = api_host_checks(&spec, current.as_ref());
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let mut next = snap.inventory.with_host(spec).map_err(change_problem)?;
    let netboot_after = next.host_named(&name).map(|h| h.netboot);
    if before.map(|h| h.netboot) != netboot_after {
        next.set_consumed(&name, false);
        overlay.consumed.remove(&name);
    }
    // The overlay keeps the record as validated (normalised MAC, resolved names).
    let stored = next.host_named(&name).map(host_to_wire);
    overlay.hosts.insert(name, stored);
    Ok(next)
}

/// `POST /api/v1/hosts`.
pub fn create(api: &ApiState, body: &[u8]) -> Result<Answer, Problem> {
    let body = object(body)?;
    let spec = spec_from(body, None)?;
    let name = spec.name.clone().unwrap_or_default();
    if !crate::model::inventory::is_dns_label(&name) {
        return Err(Problem::invalid(vec![
            crate::model::inventory::resource::FieldError::new(
                "name",
                format!("{name:?} is not a host name (letters, digits, '-', at most 63)"),
            ),
        ]));
    }
    api.write((EventType::HostCreated, &name), |snap, overlay| {
        if snap.inventory.host_named(&name).is_some() {
            return Err(Problem::conflict(vec![
                crate::model::inventory::resource::FieldError::new(
                    "name",
                    format!("host {name} exists; PUT or PATCH it (with If-Match)"),
                ),
            ]));
        }
        upsert(snap, overlay, spec)
    })?;
    let mut a = answer_for(api, &name)?;
    a.status = StatusCode::CREATED;
    a.location = Some(format!("/api/v1/hosts/{name}"));
    Ok(a)
}

/// The answer of a write: the resource as readers now see it.
fn answer_for(api: &ApiState, name: &str) -> Result<Answer, Problem> {
    let view = api.view();
    get(&view.snapshot, &view.overlay, name)
}

/// The current JSON and ETag of `name` in `snap`.
fn current(snap: &Snapshot, overlay: &Overlay, name: &str) -> Result<(Value, String), Problem> {
    let h = snap
        .inventory
        .host_named(name)
        .ok_or_else(|| not_found(name))?;
    let v = host_json(&snap.inventory, overlay, h);
    let tag = etag(&v);
    Ok((v, tag))
}

/// `PUT /api/v1/hosts/{name}`: replaces the whole record (no create: POST does that).
pub fn replace(
    api: &ApiState,
    name: &str,
    pre: &Precondition,
    body: &[u8],
) -> Result<Answer, Problem> {
    let body = object(body)?;
    let spec = spec_from(body, Some(name))?;
    api.write((EventType::HostUpdated, name), |snap, overlay| {
        let (_, tag) = current(snap, overlay, name)?;
        pre.check(&tag)?;
        upsert(snap, overlay, spec)
    })?;
    answer_for(api, name)
}

/// `PATCH /api/v1/hosts/{name}`: a JSON merge patch of the host's JSON.
pub fn patch(
    api: &ApiState,
    name: &str,
    pre: &Precondition,
    body: &[u8],
) -> Result<Answer, Problem> {
    let patch = object(body)?;
    api.write((EventType::HostUpdated, name), |snap, overlay| {
        let (v, tag) = current(snap, overlay, name)?;
        pre.check(&tag)?;
        let spec = spec_from(patched(v, &patch), Some(name))?;
        upsert(snap, overlay, spec)
    })?;
    answer_for(api, name)
}

/// `DELETE /api/v1/hosts/{name}`. A host of the operator's file is hidden by a tombstone
/// (the file is not written); an API host is forgotten.
pub fn delete(api: &ApiState, name: &str, pre: &Precondition) -> Result<Answer, Problem> {
    let snap = api.write((EventType::HostDeleted, name), |snap, overlay| {
        let (_, tag) = current(snap, overlay, name)?;
        pre.check(&tag)?;
        let next = snap.inventory.without_host(name).map_err(change_problem)?;
        if api.in_file(true, name) {
            overlay.hosts.insert(name.to_owned(), None);
        } else {
            overlay.hosts.remove(name);
        }
        overlay.consumed.remove(name);
        Ok(next)
    })?;
    Ok(Answer::empty(StatusCode::NO_CONTENT, snap.generation))
}

/// `POST /api/v1/hosts/{name}/netboot-reset`: a consumed `once` host boots from the network
/// once more.
pub fn netboot_reset(api: &ApiState, name: &str) -> Result<Answer, Problem> {
    api.write((EventType::HostUpdated, name), |snap, overlay| {
        if snap.inventory.host_named(name).is_none() {
            return Err(not_found(name));
        }
        let mut next = snap.inventory.clone();
        next.set_consumed(name, false);
        overlay.consumed.remove(name);
        Ok(next)
    })?;
    answer_for(api, name)
}

/// Marks `name`'s one network boot used (the consumption task, on `host.booted`). `Ok(false)`
/// when there is nothing to do (not a `once` host, gone, or consumed already).
pub fn consume(api: &ApiState, name: &str) -> Result<bool, Problem> {
    let used = |snap: &Snapshot| {
        snap.inventory
            .host_named(name)
            .is_some_and(|h| h.netboot == Netboot::Once && !snap.inventory.is_consumed(name))
    };
    if !used(&api.live.load()) {
        return Ok(false);
    }
    // Checked again under the lock: a write in between may have made it moot, and then
    // nothing is published or announced.
    let moot = || Problem::new(StatusCode::CONFLICT, "nothing to consume");
    let written = api.write((EventType::HostUpdated, name), |snap, overlay| {
        if !used(snap) {
            return Err(moot());
        }
        let mut next = snap.inventory.clone();
        next.set_consumed(name, true);
        overlay.consumed.insert(name.to_owned());
        Ok(next)
    });
    match written {
        Ok(_) => Ok(true),
        Err(p) if p.status == 409 && p.detail == moot().detail => Ok(false),
        Err(p) => Err(p),
    }
}

/// Counts for `/api/v1/status`.
pub fn counts(inv: &Inventory, overlay: &Overlay) -> Value {
    let mut by_netboot: BTreeMap<&str, usize> = BTreeMap::new();
    let mut api = 0;
    for h in inv.hosts() {
        *by_netboot.entry(h.netboot.as_str()).or_default() += 1;
        if overlay.has_host(&h.name) {
            api += 1;
        }
    }
    json!({
        "total": inv.hosts().len(),
        "file": inv.hosts().len() - api,
        "api": api,
        "netboot": by_netboot,
        "consumed": inv.hosts().iter().filter(|h| h.netboot == Netboot::Once && inv.is_consumed(&h.name)).count(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        ledger::Ledger,
        snapshot::{Follower, Live, Next},
    };
    use std::sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    };

    /// A follower that refuses while `refuse` is set (the DHCP server refusing a change).
    struct Picky(AtomicBool);

    impl Follower for Picky {
        fn name(&self) -> &'static str {
            "picky"
        }
        fn check(&self, _next: &Snapshot) -> Result<(), String> {
            if self.0.load(Ordering::SeqCst) {
                Err("not now".to_owned())
            } else {
                Ok(())
            }
        }
        fn apply(&self, _next: &Arc<Snapshot>) {}
    }

    fn state(dir: &std::path::Path) -> (ApiState, Ledger, Arc<Picky>) {
        let wire = toml::from_str("[profiles.p]\n").expect("toml");
        let inv = Inventory::from_wire(std::path::Path::new("h"), wire).expect("valid");
        let live = Live::unregistered(Next::new(inv, Default::default()));
        let picky = Arc::new(Picky(AtomicBool::new(false)));
        live.follow(picky.clone());
        let ledger = Ledger::new(&prometheus::Registry::new()).expect("ledger");
        let api = ApiState::open(live, ledger.clone(), None, dir).expect("state");
        (api, ledger, picky)
    }

    #[test]
    fn a_write_is_on_disk_announced_and_rolled_back_when_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (api, ledger, picky) = state(dir.path());
        let body = br#"{"name":"n1","mac":"52:54:00:00:00:01","profile":"p","netboot":"once"}"#;
        let a = create(&api, body).expect("created");
        assert_eq!(a.status, StatusCode::CREATED);
        let path = Overlay::path_in(dir.path());
        let on_disk = Overlay::load(&path).expect("load");
        assert_eq!(
            on_disk.hosts["n1"].as_ref().and_then(|h| h.mac.as_deref()),
            Some("52:54:00:00:00:01")
        );
        let events = ledger.events_after(0, 10).events;
        assert_eq!(events.len(), 1);
        assert_eq!(
            (events[0].kind, events[0].host.as_deref()),
            (EventType::HostCreated, Some("n1"))
        );

        // Consumption is persisted and announced; a second `booted` changes nothing.
        assert_eq!(consume(&api, "n1").map_err(|p| p.status), Ok(true));
        assert_eq!(consume(&api, "n1").map_err(|p| p.status), Ok(false));
        assert!(Overlay::load(&path).expect("load").consumed.contains("n1"));
        assert!(api.live.load().inventory.is_consumed("n1"));

        // A follower refuses: nothing changes, on disk or live, and nothing is announced.
        picky.0.store(true, Ordering::SeqCst);
        let before = std::fs::read(&path).expect("read");
        let generation = api.live.generation();
        let p = delete(&api, "n1", &Precondition::Any).expect_err("refused");
        assert_eq!(p.status, 503);
        assert!(p.title.contains("picky"), "{}", p.title);
        assert_eq!(std::fs::read(&path).expect("read"), before);
        assert_eq!(api.live.generation(), generation);
        assert!(api.live.load().inventory.host_named("n1").is_some());
        assert_eq!(api.overlay().hosts.len(), 1);
        assert_eq!(ledger.events_after(0, 10).events.len(), 2);

        picky.0.store(false, Ordering::SeqCst);
        delete(&api, "n1", &Precondition::Any).expect("deleted");
        let on_disk = Overlay::load(&path).expect("load");
        assert!(
            on_disk.hosts.is_empty(),
            "an API host is forgotten, not tombstoned"
        );
        assert!(on_disk.consumed.is_empty());
    }

    /// A write that changes nothing (a reset of a host not consumed, a PATCH to the values it
    /// has) publishes nothing and announces nothing, and answers the current resource.
    #[test]
    fn a_write_that_changes_nothing_publishes_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (api, ledger, _) = state(dir.path());
        let body = br#"{"name":"n1","mac":"52:54:00:00:00:01","profile":"p","netboot":"once"}"#;
        let created = create(&api, body).expect("created");
        let generation = api.live.generation();
        let reset = netboot_reset(&api, "n1").expect("reset");
        assert_eq!(reset.status, StatusCode::OK);
        let patched =
            patch(&api, "n1", &Precondition::Any, br#"{"netboot":"once"}"#).expect("patched");
        assert_eq!(api.live.generation(), generation);
        assert_eq!(
            ledger.events_after(0, 10).events.len(),
            1,
            "only the create"
        );
        assert_eq!(reset.etag, patched.etag);
        assert_eq!((created.etag, created.body), (patched.etag, patched.body));
        assert_eq!(patched.generation, generation);
    }

    /// A change after which a host's cmdline no longer renders is a 422 naming the template,
    /// its line and the host; nothing changes on disk or live.
    #[test]
    fn a_change_a_template_cannot_render_is_a_validation_problem() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wire =
            toml::from_str("[profiles.p]\ncmdline = \"role={{ meta.role }}\"\n").expect("toml");
        let inv = Inventory::from_wire(std::path::Path::new("h"), wire).expect("valid");
        let live = Live::unregistered(Next::new(inv, Default::default()));
        let ledger = Ledger::new(&prometheus::Registry::new()).expect("ledger");
        let api = ApiState::open(live, ledger, None, dir.path()).expect("state");
        let body = br#"{"name":"n1","mac":"52:54:00:00:00:01","profile":"p","meta":{"role":"w"}}"#;
        create(&api, body).expect("created");
        let path = Overlay::path_in(dir.path());
        let before = std::fs::read(&path).expect("read");
        let generation = api.live.generation();
        let p = patch(&api, "n1", &Precondition::Any, br#"{"meta":{"role":null}}"#)
            .expect_err("refused");
        assert_eq!(p.status, 422);
        assert_eq!(p.errors.len(), 1, "{:?}", p.errors);
        assert_eq!(p.errors[0].field, "profiles.p.cmdline");
        assert!(
            p.errors[0].reason.contains("host n1: undefined value"),
            "{}",
            p.errors[0].reason
        );
        assert_eq!(std::fs::read(&path).expect("read"), before);
        assert_eq!(api.live.generation(), generation);
    }

    fn body_of(a: &Answer) -> Vec<u8> {
        serde_json::to_vec(a.body.as_ref().expect("a body")).expect("json")
    }

    #[test]
    fn a_get_sent_back_keeps_a_used_once_and_a_netboot_change_resets_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (api, _ledger, _picky) = state(dir.path());
        let body = br#"{"name":"n1","mac":"52:54:00:00:00:01","profile":"p","netboot":"once"}"#;
        create(&api, body).expect("created");
        assert_eq!(consume(&api, "n1").map_err(|p| p.status), Ok(true));

        // Read-modify-write of meta: the GET's body, netboot included, as a PUT.
        let view = api.view();
        let got = get(&view.snapshot, &view.overlay, "n1").expect("get");
        let mut v: Value = serde_json::from_slice(&body_of(&got)).expect("json");
        v["meta"] = json!({"role": "worker"});
        let a = replace(
            &api,
            "n1",
            &Precondition::Any,
            &serde_json::to_vec(&v).expect("json"),
        )
        .expect("replaced");
        let after: Value = serde_json::from_slice(&body_of(&a)).expect("json");
        assert_eq!(after["netboot_state"], json!("consumed"));
        assert!(api.live.load().inventory.is_consumed("n1"));
        // The same with a merge patch that names the value the host has.
        let a = patch(&api, "n1", &Precondition::Any, br#"{"netboot":"once"}"#).expect("patched");
        let after: Value = serde_json::from_slice(&body_of(&a)).expect("json");
        assert_eq!(after["netboot_state"], json!("consumed"));

        // A change of netboot and back starts the one boot afresh.
        patch(&api, "n1", &Precondition::Any, br#"{"netboot":"allow"}"#).expect("patched");
        let a = patch(&api, "n1", &Precondition::Any, br#"{"netboot":"once"}"#).expect("patched");
        let after: Value = serde_json::from_slice(&body_of(&a)).expect("json");
        assert_eq!(after["netboot_state"], Value::Null);
        assert!(!Overlay::load(&Overlay::path_in(dir.path()))
            .expect("load")
            .consumed
            .contains("n1"));
    }

    #[test]
    fn host_events_come_in_generation_order_whatever_the_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (api, ledger, _picky) = state(dir.path());
        let api = Arc::new(api);
        let writers: Vec<_> = (0..4)
            .map(|w| {
                let api = Arc::clone(&api);
                std::thread::spawn(move || {
                    for i in 0..10 {
                        let body = format!(
                            r#"{{"name":"w{w}h{i}","mac":"52:54:00:00:{w:02x}:{i:02x}","profile":"p"}}"#
                        );
                        create(&api, body.as_bytes()).expect("created");
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().expect("writer");
        }
        let generations: Vec<u64> = ledger
            .events_after(0, 100)
            .events
            .iter()
            .map(|e| e.data["generation"].as_u64().expect("generation"))
            .collect();
        assert_eq!(generations.len(), 40);
        assert!(
            generations.windows(2).all(|w| w[0] < w[1]),
            "{generations:?}"
        );
    }

    #[test]
    fn reads_answer_while_a_writer_holds_the_overlay() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (api, _ledger, _picky) = state(dir.path());
        create(
            &api,
            br#"{"name":"n1","mac":"52:54:00:00:00:01","profile":"p"}"#,
        )
        .expect("created");
        let api = Arc::new(api);
        // A write in its fsync, or a SIGHUP loading the config: the lock is held.
        let held = api.overlay();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = Arc::clone(&api);
        std::thread::spawn(move || {
            let view = reader.view();
            let _ = tx.send(get(&view.snapshot, &view.overlay, "n1").map(|a| a.status));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(30))
            .expect("a read must not wait for the overlay lock");
        assert_eq!(got.map_err(|p| p.status), Ok(StatusCode::OK));
        drop(held);

        // A publish that is not an API write (SIGHUP) moves the view with the snapshot and
        // keeps the overlay: the host is still from the API.
        api.live
            .publish(|s| Ok::<_, String>(Next::new(s.inventory.clone(), s.boot.clone())))
            .expect("published");
        let view = api.view();
        assert_eq!(view.snapshot.generation, api.live.generation());
        assert!(view.overlay.has_host("n1"));
    }
}
