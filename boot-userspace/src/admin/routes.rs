//! The admin API's route table, as data: one list drives both dispatch ([`lookup`]) and the
//! OpenAPI document ([`super::openapi`]), so a route cannot exist without being documented,
//! nor be documented without existing (a unit test checks both directions). Pure.
//!
//! Whether a route is read-only or control is not written here: it follows from the method
//! ([`super::auth::Access::of`]), decided before a route is looked up. Some reads also need
//! the token: [`Endpoint::private`].

use hyper::{Method, StatusCode};
use serde_json::{json, Value};

/// What a route does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `GET /metrics`.
    Metrics,
    /// `GET /healthz`.
    Healthz,
    /// `GET /api/bandwidth`.
    Bandwidth,
    /// `GET /api/timeline`.
    Timeline,
    /// `GET /api/reboot`.
    RebootStatus,
    /// `POST /api/reboot`.
    RebootStart,
    /// `DELETE /api/reboot`.
    RebootCancel,
    /// `GET /api/v1/status`.
    Status,
    /// `GET /api/v1/openapi.json`.
    OpenApi,
    /// `GET /api/v1/events`: the event log as Server-Sent Events.
    Events,
    /// `GET /api/v1/hosts`.
    HostList,
    /// `POST /api/v1/hosts`.
    HostCreate,
    /// `GET /api/v1/hosts/{name}`.
    HostGet,
    /// `PUT /api/v1/hosts/{name}`.
    HostReplace,
    /// `PATCH /api/v1/hosts/{name}`.
    HostPatch,
    /// `DELETE /api/v1/hosts/{name}`.
    HostDelete,
    /// `POST /api/v1/hosts/{name}/netboot-reset`.
    HostNetbootReset,
    /// `GET /api/v1/profiles`.
    ProfileList,
    /// `POST /api/v1/profiles`.
    ProfileCreate,
    /// `GET /api/v1/profiles/{name}`.
    ProfileGet,
    /// `PUT /api/v1/profiles/{name}`.
    ProfileReplace,
    /// `PATCH /api/v1/profiles/{name}`.
    ProfilePatch,
    /// `DELETE /api/v1/profiles/{name}`.
    ProfileDelete,
    /// `GET /`: the live rack view's page ([`super::view`]).
    View,
    /// `GET /ui/app.js`: its script.
    ViewScript,
    /// `GET /ui/app.css`: its style.
    ViewStyle,
    /// `GET /ui/state`: what the page shows, at load.
    ViewState,
    /// `GET /ui/pulse`: bandwidth and the gate, which the page polls.
    ViewPulse,
    /// `GET /ui/events`: the boot events as Server-Sent Events, for the page.
    ViewEvents,
}

impl Endpoint {
    /// A read that needs the admin token like a control call: hosts carry `meta` (what
    /// templates put into configs: join tokens, SSH keys) and their BMC's user and password
    /// source, profiles the kernel command lines, and the event stream both; a reader of
    /// `admin.allow` without the token must not get them. Status, the OpenAPI document,
    /// metrics and the older reads stay open.
    pub fn private(self) -> bool {
        matches!(
            self,
            Self::HostList | Self::HostGet | Self::ProfileList | Self::ProfileGet | Self::Events
        )
    }
}

/// The statuses a private read ([`Endpoint::private`]) can also answer, before its route runs.
pub const PRIVATE_READ_REFUSALS: &[u16] = &[401, 403];

/// What a response (or request) body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Media {
    /// `application/json` of the named schema (`components.schemas`).
    Json(&'static str),
    /// `application/problem+json`.
    Problem,
    /// `text/plain`.
    Text,
    /// Prometheus text exposition.
    Metrics,
    /// `text/event-stream`: Server-Sent Events, a body that does not end on its own.
    EventStream,
    /// `text/html` (the rack view's page).
    Html,
    /// `text/javascript` (its script).
    JavaScript,
    /// `text/css` (its style).
    Css,
    /// No body.
    Empty,
}

impl Media {
    /// The `Content-Type` (without parameters), if there is a body.
    pub fn content_type(self) -> Option<&'static str> {
        match self {
            Self::Json(_) => Some("application/json"),
            Self::Problem => Some(super::problem::MEDIA),
            Self::Text | Self::Metrics => Some("text/plain"),
            Self::EventStream => Some("text/event-stream"),
            Self::Html => Some("text/html"),
            Self::JavaScript => Some("text/javascript"),
            Self::Css => Some("text/css"),
            Self::Empty => None,
        }
    }
}

/// A request body: its media types, schema and an example (which the lab test sends).
#[derive(Clone, Copy, Debug)]
pub struct Body {
    /// Accepted media types.
    pub media: &'static [&'static str],
    /// Schema name in `components.schemas`.
    pub schema: &'static str,
    /// A valid example.
    pub example: fn() -> Value,
}

/// A route: method, path template, what it does, and what it takes and answers.
#[derive(Clone, Debug)]
pub struct Route {
    /// The method (HEAD is served wherever GET is).
    pub method: Method,
    /// The path; `{name}` stands for one DNS label.
    pub path: &'static str,
    /// What it does.
    pub endpoint: Endpoint,
    /// One line for the document.
    pub summary: &'static str,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// Request headers it reads: (name, required, description).
    pub headers: &'static [(&'static str, bool, &'static str)],
    /// Its request body, if it takes one.
    pub body: Option<Body>,
    /// Every status it can answer, and the body of each.
    pub responses: &'static [(u16, Media)],
}

const JSON: &[&str] = &["application/json"];
const PATCH: &[&str] = &["application/merge-patch+json", "application/json"];

/// The statuses every control call can also answer, before its route runs (auth, body
/// type, rate limit) — added to every non-GET route's list by [`routes`].
pub const CONTROL_REFUSALS: &[u16] = &[401, 403, 415, 429];

/// If-Match for the writes that replace or remove one resource.
const IF_MATCH: &[(&str, bool, &str)] = &[(
    "If-Match",
    true,
    "the resource's ETag (or `*`): without it 428, stale 412",
)];

fn host_example() -> Value {
    json!({
        "name": "walk01", "mac": "52:54:00:77:00:01", "ip": null, "profile": "walk",
        "menu": [], "model": "r650", "rack": "r1", "netboot": "allow",
        "meta": {"role": "worker"}
    })
}

fn host_patch_example() -> Value {
    json!({"rack": "r2", "meta": {"role": "storage"}})
}

fn profile_example() -> Value {
    json!({"kernel": "walk/vmlinuz", "initrd": ["walk/initrd.img"], "cmdline": "console=ttyS0"})
}

fn profile_create_example() -> Value {
    json!({"name": "walk", "kernel": "walk/vmlinuz", "initrd": ["walk/initrd.img"], "cmdline": "console=ttyS0"})
}

fn profile_patch_example() -> Value {
    json!({"cmdline": "console=ttyS0 quiet"})
}

fn reboot_example() -> Value {
    // A dry run: the walk through every route must never reset a machine.
    json!({"all": true, "dry_run": true})
}

fn empty_object() -> Value {
    json!({})
}

/// Every route of the admin API.
pub fn routes() -> Vec<Route> {
    use Endpoint as E;
    use Media::{Empty, Json, Metrics, Problem, Text};
    let r = |method: Method,
             path: &'static str,
             endpoint,
             summary,
             body: Option<Body>,
             responses: &'static [(u16, Media)]| Route {
        method,
        path,
        endpoint,
        summary,
        query: &[],
        headers: &[],
        body,
        responses,
    };
    let body = |media, schema, example| {
        Some(Body {
            media,
            schema,
            example,
        })
    };
    let mut table =
        vec![
        r(
            Method::GET,
            "/metrics",
            E::Metrics,
            "Prometheus metrics",
            None,
            &[(200, Metrics)],
        ),
        r(
            Method::GET,
            "/healthz",
            E::Healthz,
            "Liveness",
            None,
            &[(200, Text)],
        ),
        r(
            Method::GET,
            "/api/bandwidth",
            E::Bandwidth,
            "The fabric's measured egress",
            None,
            &[(200, Json("Bandwidth"))],
        ),
        Route {
            query: &[("mac", "the host's MAC address")],
            ..r(
                Method::GET,
                "/api/timeline",
                E::Timeline,
                "One host's boot events (cluster mode: every fabric's, each named, `partial` when etcd cannot be read)",
                None,
                &[(200, Json("Timeline")), (400, Text)],
            )
        },
        r(
            Method::GET,
            "/api/reboot",
            E::RebootStatus,
            "The last reboot run (cluster mode, on a fabric that does not run it: read from etcd, `source: cluster`)",
            None,
            &[(200, Json("RebootRun")), (404, Text), (503, Text)],
        ),
        r(
            Method::POST,
            "/api/reboot",
            E::RebootStart,
            "Start (or plan, with dry_run) a reboot run (cluster mode, on a follower: stored in etcd for the leader, `state: requested`)",
            body(JSON, "RebootSelection", reboot_example),
            &[
                (200, Json("RebootRun")),
                (202, Json("RebootRun")),
                (400, Text),
                (409, Text),
                (413, Text),
                (429, Text),
                (500, Text),
                (503, Text),
            ],
        ),
        r(
            Method::DELETE,
            "/api/reboot",
            E::RebootCancel,
            "Cancel the reboot run",
            None,
            &[(200, Json("Cancelled")), (409, Text)],
        ),
        r(
            Method::GET,
            "/api/v1/status",
            E::Status,
            "Configuration generation and counts",
            None,
            &[(200, Json("Status"))],
        ),
        r(
            Method::GET,
            "/api/v1/openapi.json",
            E::OpenApi,
            "This document",
            None,
            &[(200, Json("OpenApi"))],
        ),
        Route {
            method: Method::GET,
            path: "/api/v1/events",
            endpoint: E::Events,
            summary: "The event log as Server-Sent Events, resumable by Last-Event-ID",
            query: &[
                ("types", "comma-separated event types to send (default: all)"),
                ("host", "only this host's events"),
                ("last_event_id", "resume after this id (as the Last-Event-ID header)"),
            ],
            headers: &[(
                "Last-Event-ID",
                false,
                "resume after this id: events still in the log are replayed, a gap is announced",
            )],
            body: None,
            responses: &[
                (200, Media::EventStream),
                (400, Media::Problem),
                (503, Media::Problem),
            ],
        },
        Route {
            query: &[
                ("profile", "only hosts of this profile"),
                ("rack", "only hosts in this rack"),
                ("model", "only hosts of this model"),
                ("netboot", "only hosts with this netboot setting"),
                ("source", "only hosts from `file` or `api`"),
            ],
            ..r(
                Method::GET,
                "/api/v1/hosts",
                E::HostList,
                "List hosts (also `meta.KEY=VALUE` filters)",
                None,
                &[(200, Json("HostList")), (400, Problem)],
            )
        },
        r(
            Method::POST,
            "/api/v1/hosts",
            E::HostCreate,
            "Create a host",
            body(JSON, "Host", host_example),
            &[
                (201, Json("Host")),
                (400, Problem),
                (409, Problem),
                (413, Problem),
                (422, Problem),
                (503, Problem),
            ],
        ),
        r(
            Method::GET,
            "/api/v1/hosts/{name}",
            E::HostGet,
            "One host",
            None,
            &[(200, Json("Host")), (404, Problem)],
        ),
        Route {
            headers: IF_MATCH,
            ..r(
                Method::PUT,
                "/api/v1/hosts/{name}",
                E::HostReplace,
                "Replace a host",
                body(JSON, "Host", host_example),
                &[
                    (200, Json("Host")),
                    (400, Problem),
                    (404, Problem),
                    (409, Problem),
                    (412, Problem),
                    (413, Problem),
                    (422, Problem),
                    (428, Problem),
                    (503, Problem),
                ],
            )
        },
        Route {
            headers: IF_MATCH,
            ..r(
                Method::PATCH,
                "/api/v1/hosts/{name}",
                E::HostPatch,
                "Change a host (JSON merge patch, RFC 7396)",
                body(PATCH, "HostPatch", host_patch_example),
                &[
                    (200, Json("Host")),
                    (400, Problem),
                    (404, Problem),
                    (409, Problem),
                    (412, Problem),
                    (413, Problem),
                    (422, Problem),
                    (428, Problem),
                    (503, Problem),
                ],
            )
        },
        Route {
            headers: IF_MATCH,
            ..r(
                Method::DELETE,
                "/api/v1/hosts/{name}",
                E::HostDelete,
                "Delete a host",
                None,
                &[
                    (204, Empty),
                    (404, Problem),
                    (412, Problem),
                    (428, Problem),
                    (503, Problem),
                ],
            )
        },
        r(
            Method::POST,
            "/api/v1/hosts/{name}/netboot-reset",
            E::HostNetbootReset,
            "Let a `netboot = once` host boot from the network once more",
            body(JSON, "Empty", empty_object),
            &[
                (200, Json("Host")),
                (404, Problem),
                (413, Problem),
                (503, Problem),
            ],
        ),
        r(
            Method::GET,
            "/api/v1/profiles",
            E::ProfileList,
            "List profiles",
            None,
            &[(200, Json("ProfileList"))],
        ),
        r(
            Method::POST,
            "/api/v1/profiles",
            E::ProfileCreate,
            "Create a profile",
            body(JSON, "Profile", profile_create_example),
            &[
                (201, Json("Profile")),
                (400, Problem),
                (409, Problem),
                (413, Problem),
                (422, Problem),
                (503, Problem),
            ],
        ),
        r(
            Method::GET,
            "/api/v1/profiles/{name}",
            E::ProfileGet,
            "One profile",
            None,
            &[(200, Json("Profile")), (404, Problem)],
        ),
        Route {
            headers: IF_MATCH,
            ..r(
                Method::PUT,
                "/api/v1/profiles/{name}",
                E::ProfileReplace,
                "Replace a profile",
                body(JSON, "Profile", profile_example),
                &[
                    (200, Json("Profile")),
                    (400, Problem),
                    (404, Problem),
                    (409, Problem),
                    (412, Problem),
                    (413, Problem),
                    (422, Problem),
                    (428, Problem),
                    (503, Problem),
                ],
            )
        },
        Route {
            headers: IF_MATCH,
            ..r(
                Method::PATCH,
                "/api/v1/profiles/{name}",
                E::ProfilePatch,
                "Change a profile (JSON merge patch, RFC 7396)",
                body(PATCH, "ProfilePatch", profile_patch_example),
                &[
                    (200, Json("Profile")),
                    (400, Problem),
                    (404, Problem),
                    (409, Problem),
                    (412, Problem),
                    (413, Problem),
                    (422, Problem),
                    (428, Problem),
                    (503, Problem),
                ],
            )
        },
        Route {
            headers: IF_MATCH,
            ..r(
                Method::DELETE,
                "/api/v1/profiles/{name}",
                E::ProfileDelete,
                "Delete a profile (409 while hosts use it)",
                None,
                &[
                    (204, Empty),
                    (404, Problem),
                    (409, Problem),
                    (412, Problem),
                    (428, Problem),
                    (503, Problem),
                ],
            )
        },
        r(
            Method::GET,
            "/",
            E::View,
            "The live rack view (a page; no token needed, admin.allow applies)",
            None,
            &[(200, Media::Html), (304, Empty)],
        ),
        r(
            Method::GET,
            "/ui/app.js",
            E::ViewScript,
            "The rack view's script",
            None,
            &[(200, Media::JavaScript), (304, Empty)],
        ),
        r(
            Method::GET,
            "/ui/app.css",
            E::ViewStyle,
            "The rack view's style",
            None,
            &[(200, Media::Css), (304, Empty)],
        ),
        r(
            Method::GET,
            "/ui/state",
            E::ViewState,
            "What the rack view shows: every host (name, rack, model, profile; no MAC or address) with its boot events, bandwidth, the gate",
            None,
            &[(200, Json("ViewState"))],
        ),
        r(
            Method::GET,
            "/ui/pulse",
            E::ViewPulse,
            "The measured bandwidth and the admission gate, for the rack view to poll",
            None,
            &[(200, Json("ViewPulse"))],
        ),
        Route {
            query: &[
                (
                    "types",
                    "comma-separated event types to send, of host.phase, host.booted, host.failed (default: those three)",
                ),
                ("host", "only this host's events"),
                (
                    "last_event_id",
                    "resume after this id (as the Last-Event-ID header)",
                ),
            ],
            headers: &[(
                "Last-Event-ID",
                false,
                "resume after this id: events still in the log are replayed, a gap is announced",
            )],
            ..r(
                Method::GET,
                "/ui/events",
                E::ViewEvents,
                "The boot events (host.phase, host.booted, host.failed) as Server-Sent Events, for the rack view",
                None,
                &[
                    (200, Media::EventStream),
                    (400, Media::Problem),
                    (503, Media::Problem),
                ],
            )
        },
    ];
    table.shrink_to_fit();
    table
}

/// Whether `path` (a request's) matches `template` (a route's), and the `{name}` it holds.
fn matches<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut name = None;
    let mut t = template.split('/');
    let mut p = path.split('/');
    loop {
        match (t.next(), p.next()) {
            (None, None) => return Some(name),
            (Some("{name}"), Some(seg)) if crate::model::inventory::is_dns_label(seg) => {
                name = Some(seg);
            }
            (Some(a), Some(b)) if a == b => {}
            _ => return None,
        }
    }
}

/// The route for a method and path and the `{name}` in it, or the status to answer instead
/// (404 for an unknown path, 405 for a known path and another method).
pub fn lookup(method: &Method, path: &str) -> Result<(Endpoint, Option<String>), StatusCode> {
    let method = if method == Method::HEAD {
        &Method::GET
    } else {
        method
    };
    let mut known_path = false;
    for route in routes() {
        if let Some(name) = matches(route.path, path) {
            known_path = true;
            if route.method == method {
                return Ok((route.endpoint, name.map(str::to_owned)));
            }
        }
    }
    Err(if known_path {
        StatusCode::METHOD_NOT_ALLOWED
    } else {
        StatusCode::NOT_FOUND
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::admin::auth::Access;

    #[test]
    fn lookup_fills_the_name_and_tells_404_from_405() {
        assert_eq!(
            lookup(&Method::GET, "/api/v1/hosts/node07"),
            Ok((Endpoint::HostGet, Some("node07".to_owned())))
        );
        assert_eq!(
            lookup(&Method::POST, "/api/v1/hosts/node07/netboot-reset"),
            Ok((Endpoint::HostNetbootReset, Some("node07".to_owned())))
        );
        assert_eq!(
            lookup(&Method::HEAD, "/api/v1/hosts"),
            Ok((Endpoint::HostList, None))
        );
        assert_eq!(
            lookup(&Method::POST, "/api/v1/hosts/node07"),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
        // Not a DNS label: not a host's path at all.
        for bad in [
            "/api/v1/hosts/..",
            "/api/v1/hosts/a%2Fb",
            "/api/v1/hosts/",
            "/api/v1/hosts/node07/",
        ] {
            assert_eq!(
                lookup(&Method::GET, bad),
                Err(StatusCode::NOT_FOUND),
                "{bad}"
            );
        }
        assert_eq!(
            lookup(&Method::GET, "/metrics"),
            Ok((Endpoint::Metrics, None))
        );
        assert_eq!(
            lookup(&Method::POST, "/metrics"),
            Err(StatusCode::METHOD_NOT_ALLOWED)
        );
    }

    #[test]
    fn the_writes_are_exactly_the_control_routes_and_each_route_is_unique() {
        let table = routes();
        for r in &table {
            let writes = !matches!(
                r.endpoint,
                Endpoint::Metrics
                    | Endpoint::Healthz
                    | Endpoint::Bandwidth
                    | Endpoint::Timeline
                    | Endpoint::RebootStatus
                    | Endpoint::Status
                    | Endpoint::OpenApi
                    | Endpoint::Events
                    | Endpoint::HostList
                    | Endpoint::HostGet
                    | Endpoint::ProfileList
                    | Endpoint::ProfileGet
                    | Endpoint::View
                    | Endpoint::ViewScript
                    | Endpoint::ViewStyle
                    | Endpoint::ViewState
                    | Endpoint::ViewPulse
                    | Endpoint::ViewEvents
            );
            assert_eq!(
                writes,
                Access::of(&r.method) == Access::Control,
                "{}",
                r.path
            );
            let same = table
                .iter()
                .filter(|o| o.path == r.path && o.method == r.method)
                .count();
            assert_eq!(same, 1, "{} {}", r.method, r.path);
        }
    }
}
