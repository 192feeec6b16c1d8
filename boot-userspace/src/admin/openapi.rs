//! The OpenAPI 3.1 document of the admin API (`GET /api/v1/openapi.json`), built from the
//! route table ([`super::routes`]) and hand-written JSON Schemas: the table is the truth, the
//! document follows it. Pure.

use serde_json::{json, Map, Value};

use super::routes::{routes, Media, Route, CONTROL_REFUSALS, PRIVATE_READ_REFUSALS};
use crate::model::inventory::resource::API_PASSWORD_ENV_PREFIX;

/// The document.
pub fn document() -> Value {
    let mut paths = Map::new();
    for route in routes() {
        let item = paths
            .entry(route.path.to_owned())
            .or_insert_with(|| json!({}));
        if let Value::Object(item) = item {
            item.insert(
                route.method.as_str().to_ascii_lowercase(),
                operation(&route),
            );
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Bootfabric admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Hosts and profiles of the network boot daemon, its status, metrics and reboot runs. \
                GET and HEAD are served to admin.allow, except hosts, profiles and the event stream, which need the admin token as every other method does. Every /api/v1 answer carries Bootfabric-Generation."
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": schemas(),
        },
    })
}

fn operation(route: &Route) -> Value {
    let mut op = Map::new();
    op.insert("operationId".into(), json!(format!("{:?}", route.endpoint)));
    op.insert("summary".into(), json!(route.summary));
    let mut params: Vec<Value> = Vec::new();
    if route.path.contains("{name}") {
        params.push(json!({
            "name": "name", "in": "path", "required": true,
            "schema": {"$ref": "#/components/schemas/Name"}
        }));
    }
    for (name, description) in route.query {
        params.push(json!({
            "name": name, "in": "query", "required": false, "description": description,
            "schema": {"type": "string"}
        }));
    }
    for (name, required, description) in route.headers {
        params.push(json!({
            "name": name, "in": "header", "required": required, "description": description,
            "schema": {"type": "string"}
        }));
    }
    if !params.is_empty() {
        op.insert("parameters".into(), Value::Array(params));
    }
    if let Some(body) = route.body {
        let content: Map<String, Value> = body
            .media
            .iter()
            .map(|m| {
                (
                    (*m).to_owned(),
                    json!({
                        "schema": {"$ref": format!("#/components/schemas/{}", body.schema)},
                        "example": (body.example)(),
                    }),
                )
            })
            .collect();
        op.insert(
            "requestBody".into(),
            json!({"required": true, "content": content}),
        );
    }
    let control = super::auth::Access::of(&route.method) == super::auth::Access::Control;
    let mut responses = Map::new();
    let private = route.endpoint.private();
    let refusals: &[u16] = if control {
        CONTROL_REFUSALS
    } else if private {
        PRIVATE_READ_REFUSALS
    } else {
        &[]
    };
    let extra = refusals.iter().map(|s| {
        // Refusals of the old routes are text; those of /api/v1 are problems.
        let media = if route.path.starts_with("/api/v1/") {
            Media::Problem
        } else {
            Media::Text
        };
        (*s, media)
    });
    for (status, media) in route.responses.iter().copied().chain(extra) {
        let mut r = Map::new();
        r.insert(
            "description".into(),
            json!(hyper::StatusCode::from_u16(status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("answer")),
        );
        if let Some(ct) = media.content_type() {
            let schema = match media {
                Media::Json(name) => json!({"$ref": format!("#/components/schemas/{name}")}),
                Media::Problem => json!({"$ref": "#/components/schemas/Problem"}),
                _ => json!({"type": "string"}),
            };
            r.insert("content".into(), json!({ct: {"schema": schema}}));
        }
        responses.insert(status.to_string(), Value::Object(r));
    }
    op.insert("responses".into(), Value::Object(responses));
    if control || private {
        op.insert("security".into(), json!([{"bearer": []}]));
    }
    Value::Object(op)
}

fn schemas() -> Value {
    let opt_string = json!({"type": ["string", "null"]});
    let mut all = json!({
        "Name": {"type": "string", "pattern": "^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"},
        "Empty": {"type": "object"},
        "Problem": {
            "type": "object",
            "description": "RFC 9457 problem details",
            "required": ["type", "title", "status", "detail"],
            "properties": {
                "type": {"type": "string"},
                "title": {"type": "string"},
                "status": {"type": "integer"},
                "detail": {"type": "string"},
                "errors": {"type": "array", "items": {
                    "type": "object", "required": ["field", "reason"],
                    "properties": {"field": {"type": "string"}, "reason": {"type": "string"}}
                }}
            }
        },
        "Meta": {
            "type": "object",
            "description": "Free metadata: keys are identifiers, values strings, numbers, booleans, lists or one-level tables",
            "propertyNames": {"pattern": "^[A-Za-z_][A-Za-z0-9_]*$"}
        },
        "Bmc": {
            "type": "object",
            "properties": {
                "url": {"type": "string"}, "username": {"type": "string"},
                "password_env": {"type": ["string", "null"],
                    "description": format!("from the API: the host's own variable, {API_PASSWORD_ENV_PREFIX}<NAME>_PASSWORD (the name upper-cased, '-' as '_'); the operator's source is kept only with the BMC url and TLS settings unchanged")},
                "password_file": {"type": ["string", "null"],
                    "description": "set by the inventory file only; the API may keep it unchanged"},
                "ca_file": {"type": ["string", "null"],
                    "description": "set by the inventory file only; the API may keep it unchanged"},
                "fingerprint": opt_string, "insecure": {"type": ["boolean", "null"]},
                "allow_plaintext": {"type": ["boolean", "null"]}, "system": opt_string,
                "boot": {"enum": ["pxe", "uefi-http", null]},
                "boot_mode": {"enum": ["uefi", "legacy", null]},
                "timeout_s": {"type": ["integer", "null"]}, "attempts": {"type": ["integer", "null"]}
            }
        },
        "DhcpOptions": {"type": ["object", "null"], "properties": {
            "router": opt_string, "dns": {"type": ["array", "null"], "items": {"type": "string"}},
            "domain": opt_string, "ntp": {"type": ["array", "null"], "items": {"type": "string"}},
            "mtu": {"type": ["integer", "null"]}, "lease_time": {"type": ["integer", "null"]}
        }},
        "Host": {
            "type": "object",
            "required": ["name", "mac", "profile"],
            "properties": {
                "name": {"$ref": "#/components/schemas/Name"},
                "mac": {"type": "string", "examples": ["52:54:00:aa:00:07"]},
                "ip": {"type": ["string", "null"]},
                "profile": {"type": "string"},
                "menu": {"type": "array", "items": {"type": "string"}},
                "options": {"$ref": "#/components/schemas/DhcpOptions"},
                "model": opt_string,
                "rack": opt_string,
                "netboot": {"enum": ["allow", "once", "deny"]},
                "meta": {"$ref": "#/components/schemas/Meta"},
                "bmc": {"oneOf": [{"$ref": "#/components/schemas/Bmc"}, {"type": "null"}]},
                "source": {"enum": ["file", "api"], "readOnly": true},
                "netboot_state": {"enum": ["consumed", null], "readOnly": true}
            }
        },
        "HostPatch": {"type": "object", "description": "JSON merge patch (RFC 7396) of a Host: null removes a key"},
        "HostList": {"type": "object", "required": ["generation", "items"], "properties": {
            "generation": {"type": "integer"},
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Host"}}
        }},
        "Profile": {
            "type": "object",
            "required": ["name"],
            "properties": {
                "name": {"$ref": "#/components/schemas/Name"},
                "image": {"type": ["string", "null"], "description": "an [images] image: `name` (its current version) or `name@version`; instead of kernel, initrd and sha256"},
                "files": {"type": "object", "readOnly": true, "description": "the files the image resolves to in this generation", "properties": {
                    "kernel": opt_string,
                    "initrd": {"type": "array", "items": {"type": "string"}}
                }},
                "kernel": opt_string,
                "initrd": {"type": "array", "items": {"type": "string"}},
                "cmdline": {"type": "string"},
                "boot": {"type": ["object", "null"]},
                "sha256": {"type": "object", "additionalProperties": {"type": "string"}},
                "source": {"enum": ["file", "api"], "readOnly": true}
            }
        },
        "ProfilePatch": {"type": "object", "description": "JSON merge patch (RFC 7396) of a Profile"},
        "ProfileList": {"type": "object", "required": ["generation", "items"], "properties": {
            "generation": {"type": "integer"},
            "items": {"type": "array", "items": {"$ref": "#/components/schemas/Profile"}}
        }},
        "Status": {"type": "object", "required": ["generation", "hosts", "profiles"], "properties": {
            "generation": {"type": "integer"},
            "hosts": {"type": "object"},
            "profiles": {"type": "object"},
            "cluster": {"oneOf": [{"type": "null"}, {"$ref": "#/components/schemas/Cluster"}]}
        }},
        "Cluster": {"type": "object", "required": ["fabric", "rack", "etcd", "fabrics"], "properties": {
            "fabric": {"type": "string"}, "rack": {"type": "string"},
            "etcd": {"type": "string", "enum": ["up", "down"]},
            "error": {"type": ["string", "null"]}, "seen": {"type": "integer"},
            "leader": {"type": ["string", "null"]}, "leading": {"type": "boolean"},
            "fabrics": {"type": "array", "items": {"type": "object", "required": ["name", "rack"], "properties": {
                "name": {"type": "string"}, "rack": {"type": "string"}, "version": {"type": "string"},
                "started": {"type": "integer"}, "egress_bps": {"type": "number"},
                "generation": {"type": "integer"}
            }}}
        }},
        "OpenApi": {"type": "object"},
        "Bandwidth": {"type": "object"},
        "Timeline": {"type": "object"},
        "RebootRun": {"type": "object"},
        "RebootSelection": {"type": "object", "properties": {
            "hosts": {"type": "array", "items": {"type": "string"}}, "all": {"type": "boolean"},
            "racks": {"type": "array", "items": {"type": "string"}},
            "models": {"type": "array", "items": {"type": "string"}},
            "profiles": {"type": "array", "items": {"type": "string"}},
            "dry_run": {"type": "boolean"}
        }},
        "Cancelled": {"type": "object", "properties": {"cancelled": {"type": "integer"}}},
    });
    // One json! of every schema would pass the macro's recursion limit.
    if let (Value::Object(all), Value::Object(view)) = (&mut all, view_schemas()) {
        all.extend(view);
    }
    all
}

/// The rack view's reads ([`super::view`]).
fn view_schemas() -> Value {
    let opt_string = json!({"type": ["string", "null"]});
    json!({
        "ViewPulse": {"type": "object", "required": ["now_ms", "bandwidth", "gate"], "properties": {
            "now_ms": {"type": "integer"},
            "bandwidth": {"type": "object", "properties": {
                "window_s": {"type": "integer"},
                "total_bytes_per_second": {"type": "number"},
                "bytes_per_second": {"type": "object", "additionalProperties": {"type": "number"}}
            }},
            "gate": {"type": "object", "properties": {
                "mode": {"type": "string", "enum": ["always", "reboot_runs", "off"]},
                "slots": {"type": "integer"}, "admitted": {"type": "integer"},
                "waiting": {"type": "integer"}
            }}
        }},
        "ViewState": {"type": "object", "required": ["hosts", "last_event_id"], "properties": {
            "generation": {"type": "integer"},
            "last_event_id": {"type": "integer"},
            "phases": {"type": "array", "items": {"type": "string"}},
            "hosts": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"},
                "rack": opt_string, "model": opt_string, "profile": {"type": "string"},
                "events": {"type": "array", "items": {"type": "object", "properties": {
                    "at_ms": {"type": "integer"}, "phase": {"type": "string"},
                    "detail": opt_string
                }}}
            }}}
        }},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_and_the_route_table_agree_both_ways() {
        let doc = document();
        let table = routes();
        let paths = doc["paths"].as_object().expect("paths");
        // Every route is documented, with its method.
        for r in &table {
            let op = &paths[r.path][r.method.as_str().to_ascii_lowercase()];
            assert!(op.is_object(), "{} {} is not documented", r.method, r.path);
            for (status, _) in r.responses {
                assert!(
                    op["responses"][status.to_string()].is_object(),
                    "{} {} {status}",
                    r.method,
                    r.path
                );
            }
        }
        // Every documented operation is a route, and is looked up to it.
        let mut operations = 0;
        for (path, item) in paths {
            for (method, _) in item.as_object().expect("path item") {
                let m: hyper::Method = method.to_ascii_uppercase().parse().expect("method");
                assert!(
                    table.iter().any(|r| r.path == path && r.method == m),
                    "{method} {path} is documented but not routed"
                );
                let concrete = path.replace("{name}", "node07");
                assert!(
                    super::super::routes::lookup(&m, &concrete).is_ok(),
                    "{method} {path}"
                );
                operations += 1;
            }
        }
        assert_eq!(operations, table.len());
    }

    #[test]
    fn every_schema_reference_resolves() {
        let doc = document();
        let text = doc.to_string();
        let schemas = doc["components"]["schemas"].as_object().expect("schemas");
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert!(
                schemas.contains_key(name),
                "{name} is referenced but not defined"
            );
        }
    }

    #[test]
    fn private_reads_and_control_calls_name_the_bearer_scheme() {
        let doc = document();
        for (path, method, secured) in [
            ("/api/v1/hosts", "get", true),
            ("/api/v1/hosts/{name}", "get", true),
            ("/api/v1/profiles", "get", true),
            ("/api/v1/profiles/{name}", "get", true),
            ("/api/v1/events", "get", true),
            ("/api/v1/hosts", "post", true),
            ("/api/v1/status", "get", false),
            ("/api/v1/openapi.json", "get", false),
            ("/metrics", "get", false),
        ] {
            let op = &doc["paths"][path][method];
            assert!(op.is_object(), "{method} {path}");
            assert_eq!(op["security"].is_array(), secured, "{method} {path}");
            assert_eq!(
                op["responses"]["401"].is_object(),
                secured,
                "{method} {path}"
            );
        }
        assert!(doc["paths"]["/api/v1/events"]["get"]["responses"]["400"].is_object());
    }
}
