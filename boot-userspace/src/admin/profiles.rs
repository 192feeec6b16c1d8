//! `/api/v1/profiles`: list, get, create, replace, merge-patch and delete boot profiles. A
//! profile's JSON is its inventory record plus `name` and the read-only `source`. Deleting a
//! profile hosts still use is a conflict (409) naming them.

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
            resource::{api_profile_checks, profile_to_wire, ChangeError, FieldError},
            wire, Inventory, Profile,
        },
        ledger::EventType,
        snapshot::Snapshot,
    },
};

/// A profile's JSON.
pub fn profile_json(overlay: &Overlay, p: &Profile) -> Value {
    let mut v = serde_json::to_value(profile_to_wire(p)).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("name".into(), json!(p.name));
        if p.image.is_some() {
            // What the image resolves to in this generation (read-only, derived).
            m.insert(
                "files".into(),
                json!({"kernel": p.kernel, "initrd": p.initrd}),
            );
        }
        m.insert(
            "source".into(),
            json!(if overlay.has_profile(&p.name) {
                "api"
            } else {
                "file"
            }),
        );
    }
    v
}

fn not_found(name: &str) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, format!("no profile {name}"))
}

fn change_problem(e: ChangeError) -> Problem {
    match e {
        ChangeError::Invalid(errors) => Problem::invalid(errors),
        ChangeError::Conflict(errors) => Problem::conflict(errors),
    }
}

/// `GET /api/v1/profiles`.
pub fn list(snap: &Snapshot, overlay: &Overlay) -> Answer {
    let items: Vec<Value> = snap
        .inventory
        .profiles()
        .values()
        .map(|p| profile_json(overlay, p))
        .collect();
    Answer::json(
        StatusCode::OK,
        json!({"generation": snap.generation, "items": items}),
        snap.generation,
    )
}

/// `GET /api/v1/profiles/{name}`.
pub fn get(snap: &Snapshot, overlay: &Overlay, name: &str) -> Result<Answer, Problem> {
    let p = snap
        .inventory
        .profile(name)
        .ok_or_else(|| not_found(name))?;
    Ok(Answer::resource(
        StatusCode::OK,
        profile_json(overlay, p),
        snap.generation,
    ))
}

/// The answer of a write: the resource as readers now see it.
fn answer_for(api: &ApiState, name: &str) -> Result<Answer, Problem> {
    let view = api.view();
    get(&view.snapshot, &view.overlay, name)
}

/// The record and name a body asks for; `path` is the name in the path, if any.
fn spec_from(
    mut body: Map<String, Value>,
    path: Option<&str>,
) -> Result<(String, wire::Profile), Problem> {
    body.remove("source");
    body.remove("files");
    let name = match (body.remove("name"), path) {
        (None, Some(p)) => p.to_owned(),
        (Some(Value::String(n)), Some(p)) if n == p => n,
        (Some(Value::String(n)), None) => n,
        (other, _) => {
            return Err(Problem::invalid(vec![FieldError::new(
                "name",
                format!(
                    "{}: give the profile's name (the one in the path, for PUT and PATCH)",
                    other.unwrap_or(Value::Null)
                ),
            )]))
        }
    };
    let spec: wire::Profile = record(body)?;
    let errors = api_profile_checks(&spec);
    if !errors.is_empty() {
        return Err(Problem::invalid(errors));
    }
    Ok((name, spec))
}

fn upsert(
    snap: &Snapshot,
    overlay: &mut Overlay,
    name: &str,
    spec: wire::Profile,
) -> Result<Inventory, Problem> {
    let next = snap
        .inventory
        .with_profile(name, spec)
        .map_err(change_problem)?;
    let stored = next.profile(name).map(profile_to_wire);
    overlay.profiles.insert(name.to_owned(), stored);
    Ok(next)
}

/// `POST /api/v1/profiles`.
pub fn create(api: &ApiState, body: &[u8]) -> Result<Answer, Problem> {
    let (name, spec) = spec_from(object(body)?, None)?;
    api.write((EventType::ProfileCreated, &name), |snap, overlay| {
        if snap.inventory.profile(&name).is_some() {
            return Err(Problem::conflict(vec![FieldError::new(
                "name",
                format!("profile {name} exists; PUT or PATCH it (with If-Match)"),
            )]));
        }
        upsert(snap, overlay, &name, spec)
    })?;
    let mut a = answer_for(api, &name)?;
    a.status = StatusCode::CREATED;
    a.location = Some(format!("/api/v1/profiles/{name}"));
    Ok(a)
}

fn current(snap: &Snapshot, overlay: &Overlay, name: &str) -> Result<(Value, String), Problem> {
    let p = snap
        .inventory
        .profile(name)
        .ok_or_else(|| not_found(name))?;
    let v = profile_json(overlay, p);
    let tag = etag(&v);
    Ok((v, tag))
}

/// `PUT /api/v1/profiles/{name}`.
pub fn replace(
    api: &ApiState,
    name: &str,
    pre: &Precondition,
    body: &[u8],
) -> Result<Answer, Problem> {
    let (_, spec) = spec_from(object(body)?, Some(name))?;
    api.write((EventType::ProfileUpdated, name), |snap, overlay| {
        let (_, tag) = current(snap, overlay, name)?;
        pre.check(&tag)?;
        upsert(snap, overlay, name, spec)
    })?;
    answer_for(api, name)
}

/// `PATCH /api/v1/profiles/{name}`: a JSON merge patch of the profile's JSON.
pub fn patch(
    api: &ApiState,
    name: &str,
    pre: &Precondition,
    body: &[u8],
) -> Result<Answer, Problem> {
    let patch = object(body)?;
    api.write((EventType::ProfileUpdated, name), |snap, overlay| {
        let (v, tag) = current(snap, overlay, name)?;
        pre.check(&tag)?;
        let (_, spec) = spec_from(patched(v, &patch), Some(name))?;
        upsert(snap, overlay, name, spec)
    })?;
    answer_for(api, name)
}

/// `DELETE /api/v1/profiles/{name}`: 409 while hosts use it.
pub fn delete(api: &ApiState, name: &str, pre: &Precondition) -> Result<Answer, Problem> {
    let snap = api.write((EventType::ProfileDeleted, name), |snap, overlay| {
        let (_, tag) = current(snap, overlay, name)?;
        pre.check(&tag)?;
        let next = snap
            .inventory
            .without_profile(name)
            .map_err(change_problem)?;
        if api.in_file(false, name) {
            overlay.profiles.insert(name.to_owned(), None);
        } else {
            overlay.profiles.remove(name);
        }
        Ok(next)
    })?;
    Ok(Answer::empty(StatusCode::NO_CONTENT, snap.generation))
}

/// Counts for `/api/v1/status`.
pub fn counts(inv: &Inventory, overlay: &Overlay) -> Value {
    let api = inv
        .profiles()
        .keys()
        .filter(|n| overlay.has_profile(n))
        .count();
    json!({"total": inv.profiles().len(), "file": inv.profiles().len() - api, "api": api})
}
