//! An in-test Redfish BMC whose vendor quirks can be switched on one at a time: sessions,
//! ETag/`If-Match` on PATCH, a PATCH answered 200 and silently reverted, 409 to resets while
//! busy, 503 when out of sessions, dropped sessions, `202 Accepted` task monitors, slow
//! answers. Our own fixtures, shaped after DMTF's public mockup and the vendor behaviour in
//! `../shared/redfish-mockups/README.md`. Serves plain HTTP on the address given (loopback
//! of a test namespace).

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http_body_util::{BodyExt, Full};
use hyper::{body::Bytes, service::service_fn, Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

/// Which quirks the BMC shows.
#[derive(Clone, Debug, Default)]
pub struct Quirks {
    /// Offer a SessionService and require `X-Auth-Token` (else basic auth `admin:password`).
    pub sessions: bool,
    /// PATCH needs `If-Match` with the current ETag (428 without, 412 when stale).
    pub require_if_match: bool,
    /// PATCH answers 200 and changes nothing (Supermicro).
    pub revert_patch: bool,
    /// The first N resets answer 409 (iDRAC right after power off).
    pub reset_conflicts: u32,
    /// The first N requests of any kind answer 503 (busy, out of sessions).
    pub busy: u32,
    /// Sessions are forgotten after this many authenticated requests (0: never).
    pub drop_session_after: u32,
    /// PATCH answers 202 with a task monitor that completes on the second poll.
    pub patch_task: bool,
    /// Reset types advertised.
    pub reset_types: Vec<String>,
    /// Delay before every answer.
    pub delay: Duration,
}

/// What the BMC saw and holds.
#[derive(Debug, Default)]
pub struct State {
    /// Power state.
    pub power: String,
    /// Boot override target and enabled.
    pub boot_target: String,
    /// `Once`, `Continuous` or `Disabled`.
    pub boot_enabled: String,
    /// Boot mode.
    pub boot_mode: String,
    /// ETag generation.
    pub generation: u32,
    /// Resets received (accepted or not), by type.
    pub resets: Vec<String>,
    /// Sessions created and deleted.
    pub sessions_created: u32,
    /// Sessions deleted.
    pub sessions_deleted: u32,
    /// Requests by (method, path).
    pub requests: Vec<(String, String)>,
    /// Task polls left before the task completes.
    task_polls: u32,
    busy_left: u32,
    conflicts_left: u32,
    token: Option<String>,
    auth_uses: u32,
}

/// A running quirky BMC.
pub struct QuirkyBmc {
    /// Its address.
    pub addr: SocketAddr,
    /// Its state, for assertions.
    pub state: Arc<Mutex<State>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for QuirkyBmc {
    fn drop(&mut self) {
        self.task.abort();
    }
}

const SYSTEM: &str = "/redfish/v1/Systems/437XR1138R2";

impl QuirkyBmc {
    /// Starts the BMC on `127.0.0.1:0` in the current network namespace (call inside a
    /// runtime).
    pub async fn start(quirks: Quirks) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        Self::serve(listener, quirks)
    }

    /// Serves on `listener`, bound already (in whichever namespace the test made it, e.g.
    /// on a lab bridge other namespaces reach). Call inside a runtime.
    pub fn on(listener: std::net::TcpListener, quirks: Quirks) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        Self::serve(tokio::net::TcpListener::from_std(listener)?, quirks)
    }

    fn serve(listener: tokio::net::TcpListener, quirks: Quirks) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State {
            power: "Off".into(),
            boot_target: "None".into(),
            boot_enabled: "Disabled".into(),
            boot_mode: "UEFI".into(),
            busy_left: quirks.busy,
            conflicts_left: quirks.reset_conflicts,
            ..State::default()
        }));
        let quirks = Arc::new(quirks);
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let st = Arc::clone(&st);
                let q = Arc::clone(&quirks);
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = Arc::clone(&st);
                        let q = Arc::clone(&q);
                        async move { Ok::<_, Infallible>(handle(req, &q, &st).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, task })
    }

    /// The URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn error(status: StatusCode, msg: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        json!({"error": {"code": "Base.1.0.GeneralError", "message": msg}}),
    )
}

fn system_json(s: &State, q: &Quirks) -> Value {
    json!({
        "@odata.id": SYSTEM,
        "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
        "Id": "437XR1138R2",
        "Model": "3500RX",
        "PowerState": s.power,
        "Boot": {
            "BootSourceOverrideTarget": s.boot_target,
            "BootSourceOverrideEnabled": s.boot_enabled,
            "BootSourceOverrideMode": s.boot_mode,
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "Cd", "BiosSetup", "UefiHttp"]
        },
        "Actions": {"#ComputerSystem.Reset": {
            "target": format!("{SYSTEM}/Actions/ComputerSystem.Reset"),
            "ResetType@Redfish.AllowableValues": q.reset_types
        }}
    })
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    q: &Quirks,
    st: &Mutex<State>,
) -> Response<Full<Bytes>> {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    if let Ok(mut s) = st.lock() {
        s.requests.push((method.to_string(), path.clone()));
    }
    if !q.delay.is_zero() {
        tokio::time::sleep(q.delay).await;
    }
    let headers = req.headers().clone();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let Ok(mut s) = st.lock() else {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "poisoned");
    };
    if s.busy_left > 0 {
        s.busy_left -= 1;
        return error(StatusCode::SERVICE_UNAVAILABLE, "busy");
    }
    if path == "/redfish/v1" || path == "/redfish/v1/" {
        let mut root = json!({
            "@odata.id": "/redfish/v1",
            "RedfishVersion": "1.15.0",
            "Systems": {"@odata.id": "/redfish/v1/Systems"}
        });
        if q.sessions {
            root["SessionService"] = json!({"@odata.id": "/redfish/v1/SessionService"});
            root["Links"] =
                json!({"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}});
        }
        return reply(StatusCode::OK, root);
    }
    if q.sessions && path == "/redfish/v1/SessionService/Sessions" && method == Method::POST {
        if json["UserName"] != "admin" || json["Password"] != "password" {
            return error(StatusCode::UNAUTHORIZED, "bad credentials");
        }
        s.sessions_created += 1;
        let token = format!("token-{}", s.sessions_created);
        s.token = Some(token.clone());
        s.auth_uses = 0;
        let mut r = reply(StatusCode::CREATED, json!({"Id": s.sessions_created}));
        let loc = format!("/redfish/v1/SessionService/Sessions/{}", s.sessions_created);
        r.headers_mut()
            .insert("x-auth-token", token.parse().expect("token"));
        r.headers_mut()
            .insert(hyper::header::LOCATION, loc.parse().expect("loc"));
        return r;
    }
    // Authentication.
    let authed = if q.sessions {
        let given = headers.get("x-auth-token").and_then(|v| v.to_str().ok());
        let ok = given.is_some() && given == s.token.as_deref();
        if ok {
            s.auth_uses += 1;
            if q.drop_session_after > 0 && s.auth_uses > q.drop_session_after {
                s.token = None;
                false
            } else {
                true
            }
        } else {
            false
        }
    } else {
        // admin:password
        headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            == Some("Basic YWRtaW46cGFzc3dvcmQ=")
    };
    if !authed {
        return error(StatusCode::UNAUTHORIZED, "authentication required");
    }
    if path.starts_with("/redfish/v1/SessionService/Sessions/") && method == Method::DELETE {
        s.sessions_deleted += 1;
        return reply(StatusCode::NO_CONTENT, json!({}));
    }
    let etag = format!("\"gen-{}\"", s.generation);
    match (method.clone(), path.as_str()) {
        (Method::GET, "/redfish/v1/Systems") => reply(
            StatusCode::OK,
            json!({"Members": [{"@odata.id": SYSTEM}], "Members@odata.count": 1}),
        ),
        (Method::GET, SYSTEM) => {
            let mut r = reply(StatusCode::OK, system_json(&s, q));
            r.headers_mut()
                .insert(hyper::header::ETAG, etag.parse().expect("etag"));
            r
        }
        (Method::PATCH, SYSTEM) => {
            if q.require_if_match {
                match headers
                    .get(hyper::header::IF_MATCH)
                    .and_then(|v| v.to_str().ok())
                {
                    None => return error(StatusCode::PRECONDITION_REQUIRED, "If-Match required"),
                    Some(t) if t != etag => {
                        return error(StatusCode::PRECONDITION_FAILED, "stale ETag")
                    }
                    Some(_) => {}
                }
            }
            if !q.revert_patch {
                if let Some(t) = json
                    .pointer("/Boot/BootSourceOverrideTarget")
                    .and_then(Value::as_str)
                {
                    s.boot_target = t.to_owned();
                }
                if let Some(e) = json
                    .pointer("/Boot/BootSourceOverrideEnabled")
                    .and_then(Value::as_str)
                {
                    s.boot_enabled = e.to_owned();
                }
                if let Some(m) = json
                    .pointer("/Boot/BootSourceOverrideMode")
                    .and_then(Value::as_str)
                {
                    s.boot_mode = m.to_owned();
                }
                s.generation += 1;
            }
            if q.patch_task {
                s.task_polls = 2;
                let mut r = reply(StatusCode::ACCEPTED, json!({}));
                r.headers_mut().insert(
                    hyper::header::LOCATION,
                    "/redfish/v1/TaskService/Tasks/1/Monitor"
                        .parse()
                        .expect("loc"),
                );
                return r;
            }
            reply(StatusCode::OK, system_json(&s, q))
        }
        (Method::GET, "/redfish/v1/TaskService/Tasks/1/Monitor") => {
            if s.task_polls > 1 {
                s.task_polls -= 1;
                return reply(StatusCode::ACCEPTED, json!({"TaskState": "Running"}));
            }
            reply(StatusCode::OK, json!({"TaskState": "Completed"}))
        }
        (Method::POST, p) if p == format!("{SYSTEM}/Actions/ComputerSystem.Reset") => {
            let kind = json["ResetType"].as_str().unwrap_or("").to_owned();
            s.resets.push(kind.clone());
            if s.conflicts_left > 0 {
                s.conflicts_left -= 1;
                return error(
                    StatusCode::CONFLICT,
                    "the server is busy with a power operation",
                );
            }
            if !q.reset_types.is_empty() && !q.reset_types.contains(&kind) {
                return error(StatusCode::BAD_REQUEST, "reset type not supported");
            }
            s.power = "On".into();
            s.generation += 1;
            reply(StatusCode::NO_CONTENT, json!({}))
        }
        _ => error(StatusCode::NOT_FOUND, "no such resource"),
    }
}
