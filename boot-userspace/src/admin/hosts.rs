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
    api::{etag, merge_patch, object, record, ApiState, Precondition},
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
    let inv = &snap.inventory;
    let mut items: Vec<(&str, Value)> = inv
        .hosts()
        .iter()
        .filter(|h| {
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
                    meta => {
                        let key = meta.trim_start_matches("meta.");
                        match h.meta.get(key) {
                            Some(Value::String(s)) => s == want,
                            Some(other) => &other.to_string() == want,
                            None => false,
                        }
                    }
                }
            })
        })
        .map(|h| (h.name.as_str(), host_json(inv, overlay, h)))
        .collect();
    items.sort_by(|a, b| a.0.cmp(b.0));
    Ok(Answer::json(
        StatusCode::OK,
        json!({
            "generation": snap.generation,
            "items": items.into_iter().map(|(_, v)| v).collect::<Vec<_>>(),
        }),
        snap.generation,
    ))
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
/// `overlay`, and returns the next inventory. `netboot_set`: the write names `netboot`, which
/// starts a `once` host's single network boot afresh.
fn upsert(
    snap: &Snapshot,
    overlay: &mut Overlay,
    spec: wire::Host,
    netboot_set: bool,
) -> Result<Inventory, Problem> {
    let name = spec.name.clone().unwrap_or_default();
    let current = snap.inventory.host_named(&name).map(host_to_wire);
    let errors = api_host_checks(&spec, current.as_ref());
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    let mut next = snap.inventory.with_host(spec).map_err(change_problem)?;
    if netboot_set {
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
    let snap = api.write(|snap, overlay| {
        if snap.inventory.host_named(&name).is_some() {
            return Err(Problem::conflict(vec![
                crate::model::inventory::resource::FieldError::new(
                    "name",
                    format!("host {name} exists; PUT or PATCH it (with If-Match)"),
                ),
            ]));
        }
        upsert(snap, overlay, spec, true)
    })?;
    let mut a = answer_for(api, &snap, &name)?;
    a.status = StatusCode::CREATED;
    a.location = Some(format!("/api/v1/hosts/{name}"));
    Ok(a)
}

fn answer_for(api: &ApiState, snap: &Snapshot, name: &str) -> Result<Answer, Problem> {
    let overlay = api.overlay();
    get(snap, &overlay, name)
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
    let netboot_set = body.contains_key("netboot");
    let spec = spec_from(body, Some(name))?;
    let snap = api.write(|snap, overlay| {
        let (_, tag) = current(snap, overlay, name)?;
        pre.check(&tag)?;
        upsert(snap, overlay, spec, netboot_set)
    })?;
    answer_for(api, &snap, name)
}

/// `PATCH /api/v1/hosts/{name}`: a JSON merge patch of the host's JSON.
pub fn patch(
    api: &ApiState,
    name: &str,
    pre: &Precondition,
    body: &[u8],
) -> Result<Answer, Problem> {
    let patch = Value::Object(object(body)?);
    let netboot_set = patch.get("netboot").is_some();
    let snap = api.write(|snap, overlay| {
        let (mut v, tag) = current(snap, overlay, name)?;
        pre.check(&tag)?;
        merge_patch(&mut v, &patch);
        let Value::Object(m) = v else {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "the patch must be an object",
            ));
        };
        let spec = spec_from(m, Some(name))?;
        upsert(snap, overlay, spec, netboot_set)
    })?;
    answer_for(api, &snap, name)
}

/// `DELETE /api/v1/hosts/{name}`. A host of the operator's file is hidden by a tombstone
/// (the file is not written); an API host is forgotten.
pub fn delete(api: &ApiState, name: &str, pre: &Precondition) -> Result<Answer, Problem> {
    let snap = api.write(|snap, overlay| {
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
    let snap = api.write(|snap, overlay| {
        if snap.inventory.host_named(name).is_none() {
            return Err(not_found(name));
        }
        let mut next = snap.inventory.clone();
        next.set_consumed(name, false);
        overlay.consumed.remove(name);
        Ok(next)
    })?;
    answer_for(api, &snap, name)
}

/// Marks `name`'s one network boot used (the consumption task, on `host.booted`). `Ok(false)`
/// when there is nothing to do (not a `once` host, gone, or consumed already).
pub fn consume(api: &ApiState, name: &str) -> Result<bool, Problem> {
    let mut changed = false;
    let current = api.live.load();
    let needed = current
        .inventory
        .host_named(name)
        .is_some_and(|h| h.netboot == Netboot::Once && !current.inventory.is_consumed(name));
    if !needed {
        return Ok(false);
    }
    api.write(|snap, overlay| {
        let mut next = snap.inventory.clone();
        if snap
            .inventory
            .host_named(name)
            .is_some_and(|h| h.netboot == Netboot::Once)
        {
            next.set_consumed(name, true);
            overlay.consumed.insert(name.to_owned());
            changed = true;
        }
        Ok(next)
    })?;
    Ok(changed)
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
