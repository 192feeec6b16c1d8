//! The Redfish operations the fabric needs, over one BMC. One operation at a time per BMC
//! falls out of ownership: every operation takes `&mut self`.

use std::time::{Duration, Instant};

use hyper::{
    body::Bytes,
    header::{HeaderName, HeaderValue, AUTHORIZATION, ETAG, IF_MATCH, LOCATION},
    Method, StatusCode,
};
use serde_json::{json, Value};
use tracing::{debug, warn};

use crate::util::xorshift::XorShift;

use super::{
    tls,
    transport::{Endpoint, Response},
    BmcConfig, RedfishError, Secret, TlsPolicy,
};

/// Where the next boot should come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootTarget {
    /// Network boot (PXE; iPXE or UEFI PXE as the firmware does it).
    Pxe,
    /// UEFI HTTP boot.
    UefiHttp,
}

impl BootTarget {
    /// The Redfish `BootSourceOverrideTarget` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pxe => "Pxe",
            Self::UefiHttp => "UefiHttp",
        }
    }
}

/// Firmware mode for the override.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BootMode {
    /// UEFI.
    Uefi,
    /// Legacy BIOS.
    Legacy,
}

impl BootMode {
    /// The Redfish `BootSourceOverrideMode` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Uefi => "UEFI",
            Self::Legacy => "Legacy",
        }
    }
}

/// A system's power state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PowerState {
    /// On.
    On,
    /// Off.
    Off,
    /// Powering on.
    PoweringOn,
    /// Powering off.
    PoweringOff,
    /// Anything else (or missing).
    Unknown,
}

impl PowerState {
    fn parse(s: Option<&str>) -> Self {
        match s {
            Some("On") => Self::On,
            Some("Off") => Self::Off,
            Some("PoweringOn") => Self::PoweringOn,
            Some("PoweringOff") => Self::PoweringOff,
            _ => Self::Unknown,
        }
    }
}

/// What the fabric reads of a `ComputerSystem`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct System {
    /// Its `@odata.id`.
    pub path: String,
    /// Power state.
    pub power: PowerState,
    /// `Boot.BootSourceOverrideTarget`.
    pub boot_target: Option<String>,
    /// `Boot.BootSourceOverrideEnabled`.
    pub boot_enabled: Option<String>,
    /// `Boot.BootSourceOverrideMode`.
    pub boot_mode: Option<String>,
    /// Allowed override targets, when advertised.
    pub boot_targets_allowed: Vec<String>,
    /// The reset action's target URI.
    pub reset_target: Option<String>,
    /// Allowed reset types, when advertised.
    pub reset_types: Vec<String>,
    /// The resource's ETag (header or `@odata.etag`), for `If-Match`.
    pub etag: Option<String>,
    /// `Model`, for learning boot times per hardware model.
    pub model: Option<String>,
}

impl System {
    /// Reads a system from its JSON and the response's ETag header.
    pub fn parse(path: &str, v: &Value, etag_header: Option<&str>) -> Self {
        let s = |p: &[&str]| {
            let mut cur = v;
            for k in p {
                cur = cur.get(*k)?;
            }
            cur.as_str().map(str::to_owned)
        };
        let list = |x: Option<&Value>| -> Vec<String> {
            x.and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|e| e.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default()
        };
        let boot = v.get("Boot");
        let reset = v.pointer("/Actions/#ComputerSystem.Reset");
        Self {
            path: path.to_owned(),
            power: PowerState::parse(v.get("PowerState").and_then(Value::as_str)),
            boot_target: s(&["Boot", "BootSourceOverrideTarget"]),
            boot_enabled: s(&["Boot", "BootSourceOverrideEnabled"]),
            boot_mode: s(&["Boot", "BootSourceOverrideMode"]),
            boot_targets_allowed: list(
                boot.and_then(|b| b.get("BootSourceOverrideTarget@Redfish.AllowableValues")),
            ),
            reset_target: reset
                .and_then(|r| r.get("target"))
                .and_then(Value::as_str)
                .map(str::to_owned),
            reset_types: list(reset.and_then(|r| r.get("ResetType@Redfish.AllowableValues"))),
            etag: etag_header
                .map(str::to_owned)
                .or_else(|| s(&["@odata.etag"])),
            model: s(&["Model"]),
        }
    }
}

/// The reset type to send: `On` (or `ForceOn`) for a machine that is off, a restart
/// otherwise, among what the BMC advertises (all standard types when it advertises none).
pub fn choose_reset(power: PowerState, offered: &[String]) -> Result<String, RedfishError> {
    let wanted: &[&str] = match power {
        PowerState::Off | PowerState::PoweringOff => &["On", "ForceOn"],
        _ => &["ForceRestart", "GracefulRestart", "PowerCycle"],
    };
    if offered.is_empty() {
        return Ok(wanted[0].to_owned());
    }
    wanted
        .iter()
        .find(|w| offered.iter().any(|o| o == *w))
        .map(|w| (*w).to_owned())
        .ok_or_else(|| RedfishError::NoResetType {
            wanted: wanted.iter().map(|w| (*w).to_owned()).collect(),
            offered: offered.to_vec(),
        })
}

/// The PATCH body for a one-time boot override.
pub fn boot_override(target: BootTarget, mode: Option<BootMode>) -> Value {
    let mut boot = json!({
        "BootSourceOverrideTarget": target.as_str(),
        "BootSourceOverrideEnabled": "Once",
    });
    if let (Some(m), Some(obj)) = (mode, boot.as_object_mut()) {
        obj.insert("BootSourceOverrideMode".into(), json!(m.as_str()));
    }
    json!({ "Boot": boot })
}

/// Backoff before attempt `n` (1-based retries): 250 ms doubling to 5 s, times a jitter
/// factor in [0.5, 1.5) so a fleet of BMC clients does not retry in lockstep.
pub fn backoff(n: u32, jitter: f64) -> Duration {
    let base = 250u64.saturating_mul(1u64 << n.min(5)).min(5000);
    Duration::from_millis((base as f64 * (0.5 + jitter.clamp(0.0, 1.0))) as u64)
}

enum Auth {
    Basic(HeaderValue),
    Session {
        token: HeaderValue,
        location: Option<String>,
    },
}

/// A logged-in connection to one BMC.
pub struct Client {
    endpoint: Endpoint,
    username: String,
    password: Secret,
    auth: Auth,
    systems: String,
    sessions: Option<String>,
    attempts: u32,
    rng: XorShift,
    /// The configured system, if any.
    pub system: Option<String>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

fn basic(user: &str, password: &Secret) -> Result<HeaderValue, RedfishError> {
    use base64::Engine as _;
    let raw = format!("{user}:{}", password.expose());
    HeaderValue::from_str(&format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
    .map_err(|_| RedfishError::Credentials("user name or password is not valid in a header".into()))
}

/// The message of a Redfish error body (`@Message.ExtendedInfo` first, then `message`).
pub fn error_message(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.pointer("/error/@Message.ExtendedInfo/0/Message")
        .or_else(|| v.pointer("/error/message"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

fn json_of(r: &Response) -> Result<Value, RedfishError> {
    serde_json::from_slice(&r.body).map_err(|e| RedfishError::Protocol(format!("not JSON: {e}")))
}

impl Client {
    /// Reads the credentials, discovers the service root and logs in: a session where the
    /// service offers one, basic auth otherwise.
    pub async fn connect(cfg: &BmcConfig) -> Result<Self, RedfishError> {
        let tls = if cfg.url.starts_with("https://") {
            if cfg.tls == TlsPolicy::Insecure {
                warn!(bmc = %cfg.url, "TLS verification is off for this BMC (insecure = true)");
            }
            Some(tls::client_config(&cfg.tls)?)
        } else {
            None
        };
        let endpoint = Endpoint::new(&cfg.url, tls, cfg.timeout)
            .map_err(|e| RedfishError::Protocol(e.to_string()))?;
        let password = cfg.password.read()?;
        let auth = Auth::Basic(basic(&cfg.username, &password)?);
        let mut c = Self {
            endpoint,
            username: cfg.username.clone(),
            password,
            auth,
            systems: "/redfish/v1/Systems".into(),
            sessions: None,
            attempts: cfg.attempts.max(1),
            // Seeded per client from the clock: BMCs retried at once must not retry in step.
            rng: XorShift::from_time(),
            system: cfg.system.clone(),
        };
        let root = c.call(Method::GET, "/redfish/v1", None, None).await?;
        let root = ServiceRoot::parse(&json_of(&root)?);
        if let Some(p) = root.systems {
            c.systems = p;
        }
        c.sessions = root.sessions;
        c.login().await?;
        Ok(c)
    }

    async fn login(&mut self) -> Result<(), RedfishError> {
        let Some(sessions) = self.sessions.clone() else {
            debug!(bmc = ?self.endpoint, "no SessionService: basic auth");
            self.auth = Auth::Basic(basic(&self.username, &self.password)?);
            return Ok(());
        };
        let body = json!({ "UserName": self.username, "Password": self.password.expose() });
        let r = self
            .endpoint
            .send(
                Method::POST,
                &sessions,
                &[],
                Some(Bytes::from(body.to_string())),
            )
            .await?;
        match r.status {
            s if s.is_success() => {
                let token = r.headers.get("x-auth-token").cloned().ok_or_else(|| {
                    RedfishError::Protocol("session created without X-Auth-Token".into())
                })?;
                let location = r
                    .headers
                    .get(LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .map(|l| path_of(l).to_owned());
                self.auth = Auth::Session { token, location };
                Ok(())
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                Err(RedfishError::Unauthorized(r.status.as_u16()))
            }
            // Sessions advertised but not usable: many older BMCs; basic auth works there.
            StatusCode::NOT_FOUND
            | StatusCode::METHOD_NOT_ALLOWED
            | StatusCode::NOT_IMPLEMENTED => {
                self.auth = Auth::Basic(basic(&self.username, &self.password)?);
                Ok(())
            }
            s => Err(RedfishError::Status {
                method: "POST".into(),
                path: sessions,
                status: s.as_u16(),
                message: error_message(&r.body),
            }),
        }
    }

    fn jitter(&mut self) -> f64 {
        self.rng.unit()
    }

    /// One request with the retry policy: transient errors are retried with backoff and
    /// jitter up to the configured attempts; a 401 on a session logs in again once.
    async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        if_match: Option<&str>,
    ) -> Result<Response, RedfishError> {
        let mut relogged = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut headers: Vec<(HeaderName, HeaderValue)> = Vec::new();
            match &self.auth {
                Auth::Basic(v) => headers.push((AUTHORIZATION, v.clone())),
                Auth::Session { token, .. } => {
                    headers.push((HeaderName::from_static("x-auth-token"), token.clone()))
                }
            }
            if let Some(tag) = if_match.and_then(|t| HeaderValue::from_str(t).ok()) {
                headers.push((IF_MATCH, tag));
            }
            let sent = self
                .endpoint
                .send(
                    method.clone(),
                    path,
                    &headers,
                    body.map(|b| Bytes::from(b.to_string())),
                )
                .await;
            let err = match sent {
                Ok(r) if r.status.is_success() => return Ok(r),
                Ok(r)
                    if r.status == StatusCode::UNAUTHORIZED
                        && !relogged
                        && matches!(self.auth, Auth::Session { .. }) =>
                {
                    // The BMC dropped our session (reboot, timeout): log in again once.
                    relogged = true;
                    self.login().await?;
                    attempt -= 1;
                    continue;
                }
                Ok(r) if matches!(r.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                    return Err(RedfishError::Unauthorized(r.status.as_u16()))
                }
                Ok(r) => RedfishError::Status {
                    method: method.to_string(),
                    path: path.to_owned(),
                    status: r.status.as_u16(),
                    message: error_message(&r.body),
                },
                Err(e) => e,
            };
            if !err.is_transient() || attempt >= self.attempts {
                return Err(err);
            }
            let wait = backoff(attempt, self.jitter());
            debug!(bmc = ?self.endpoint, %path, error = %err, ?wait, "retrying");
            tokio::time::sleep(wait).await;
        }
    }

    /// The systems the BMC manages (`@odata.id` of each).
    pub async fn systems(&mut self) -> Result<Vec<String>, RedfishError> {
        let path = self.systems.clone();
        let r = self.call(Method::GET, &path, None, None).await?;
        Ok(members(&json_of(&r)?))
    }

    /// The configured system, or the only one; an error when there are several and none is
    /// configured.
    pub async fn the_system(&mut self) -> Result<String, RedfishError> {
        if let Some(s) = &self.system {
            return Ok(s.clone());
        }
        let all = self.systems().await?;
        match all.as_slice() {
            [one] => {
                self.system = Some(one.clone());
                Ok(one.clone())
            }
            [] => Err(RedfishError::Protocol("the BMC lists no system".into())),
            many => Err(RedfishError::Protocol(format!(
                "the BMC manages {} systems: name one with `system`",
                many.len()
            ))),
        }
    }

    /// Reads a system.
    pub async fn system(&mut self, path: &str) -> Result<System, RedfishError> {
        let r = self.call(Method::GET, path, None, None).await?;
        let v = json_of(&r)?;
        let etag = r.headers.get(ETAG).and_then(|e| e.to_str().ok());
        Ok(System::parse(path, &v, etag))
    }

    /// The system's power state.
    pub async fn power_state(&mut self, path: &str) -> Result<PowerState, RedfishError> {
        Ok(self.system(path).await?.power)
    }

    /// Sets a one-time boot override and checks it stuck (some firmware accepts the PATCH
    /// and silently keeps the old value). Sends `If-Match` with the system's ETag when it
    /// has one, and follows a task monitor when the BMC answers 202. Returns the system as
    /// read back, which [`Client::reset_system`] can use without reading it again.
    pub async fn set_boot_once(
        &mut self,
        path: &str,
        target: BootTarget,
        mode: Option<BootMode>,
    ) -> Result<System, RedfishError> {
        let before = self.system(path).await?;
        if !before.boot_targets_allowed.is_empty()
            && !before
                .boot_targets_allowed
                .iter()
                .any(|t| t == target.as_str())
        {
            return Err(RedfishError::Protocol(format!(
                "boot override target {} is not offered (the BMC has {:?})",
                target.as_str(),
                before.boot_targets_allowed
            )));
        }
        let body = boot_override(target, mode);
        let r = match self
            .call(Method::PATCH, path, Some(&body), before.etag.as_deref())
            .await
        {
            // The ETag went stale between read and write: read again, try once more.
            Err(RedfishError::Status { status: 412, .. }) => {
                let fresh = self.system(path).await?;
                self.call(Method::PATCH, path, Some(&body), fresh.etag.as_deref())
                    .await?
            }
            other => other?,
        };
        if r.status == StatusCode::ACCEPTED {
            self.follow_task(&r).await?;
        }
        let after = self.system(path).await?;
        // Some BMCs (and sushy-emulator's libvirt heritage) report an override they keep as
        // "Continuous" whatever was asked: it still boots from the network next, which is
        // what the fabric needs, so it is accepted with a warning.
        if after.boot_enabled.as_deref() == Some("Continuous")
            && after.boot_target.as_deref() == Some(target.as_str())
        {
            warn!(bmc = ?self.endpoint, system = %path, "the BMC keeps the boot override continuous, not once");
            return Ok(after);
        }
        if after.boot_target.as_deref() != Some(target.as_str())
            || after.boot_enabled.as_deref() != Some("Once")
        {
            return Err(RedfishError::NotApplied(format!(
                "boot override to {} did not stick (the BMC reports {:?}, {:?})",
                target.as_str(),
                after.boot_target,
                after.boot_enabled
            )));
        }
        Ok(after)
    }

    /// Resets the system: `On` when it is off, a restart otherwise, among the reset types
    /// the BMC advertises. Returns the type used.
    pub async fn reset(&mut self, path: &str) -> Result<String, RedfishError> {
        let sys = self.system(path).await?;
        self.reset_system(&sys).await
    }

    /// [`Client::reset`] for a system just read (its power state and reset types).
    pub async fn reset_system(&mut self, sys: &System) -> Result<String, RedfishError> {
        let kind = choose_reset(sys.power, &sys.reset_types)?;
        let target = sys
            .reset_target
            .clone()
            .unwrap_or_else(|| format!("{}/Actions/ComputerSystem.Reset", sys.path));
        let r = self
            .call(
                Method::POST,
                &target,
                Some(&json!({ "ResetType": kind })),
                None,
            )
            .await?;
        if r.status == StatusCode::ACCEPTED {
            self.follow_task(&r).await?;
        }
        Ok(kind)
    }

    /// Polls the power state every `every` until it is `want`, for at most `bound`.
    pub async fn wait_power(
        &mut self,
        path: &str,
        want: PowerState,
        bound: Duration,
        every: Duration,
    ) -> Result<(), RedfishError> {
        let deadline = Instant::now() + bound;
        loop {
            let now = self.power_state(path).await?;
            if now == want {
                return Ok(());
            }
            if Instant::now() + every > deadline {
                return Err(RedfishError::NotApplied(format!(
                    "power state is {now:?}, not {want:?}, after {bound:?}"
                )));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Follows a `202 Accepted` task monitor until the task ends (bounded by the request
    /// timeout times the attempts, at one poll a second).
    async fn follow_task(&mut self, accepted: &Response) -> Result<(), RedfishError> {
        let Some(monitor) = accepted
            .headers
            .get(LOCATION)
            .and_then(|l| l.to_str().ok())
            .map(|l| path_of(l).to_owned())
        else {
            return Ok(());
        };
        let deadline = Instant::now() + self.endpoint.timeout * self.attempts.max(1) * 3;
        loop {
            let r = self.call(Method::GET, &monitor, None, None).await?;
            if r.status != StatusCode::ACCEPTED {
                return match failed_task_state(&r.body) {
                    Some(state) => Err(RedfishError::NotApplied(format!(
                        "task {monitor} ended {state:?}"
                    ))),
                    None => Ok(()),
                };
            }
            if Instant::now() > deadline {
                return Err(RedfishError::NotApplied(format!(
                    "task {monitor} did not finish"
                )));
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// Deletes the session (if any). Errors are logged: the BMC expires it anyway.
    pub async fn logout(mut self) {
        if let Auth::Session {
            location: Some(loc),
            ..
        } = &self.auth
        {
            let loc = loc.clone();
            if let Err(e) = self.call(Method::DELETE, &loc, None, None).await {
                debug!(bmc = ?self.endpoint, error = %e, "session delete failed");
            }
        }
    }
}

/// What the fabric reads of the service root (`/redfish/v1`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServiceRoot {
    /// `Systems.@odata.id`: where the systems collection is.
    pub systems: Option<String>,
    /// `Links.Sessions.@odata.id`: where sessions are created, when the service has them.
    pub sessions: Option<String>,
}

impl ServiceRoot {
    /// Reads a service root from its JSON.
    pub fn parse(v: &Value) -> Self {
        let s = |p: &str| v.pointer(p).and_then(Value::as_str).map(str::to_owned);
        Self {
            systems: s("/Systems/@odata.id"),
            sessions: s("/Links/Sessions/@odata.id"),
        }
    }
}

/// The `@odata.id` of each member of a collection (members without one are skipped).
pub fn members(v: &Value) -> Vec<String> {
    v.get("Members")
        .and_then(Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(|e| e.get("@odata.id").and_then(Value::as_str))
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The `TaskState` of a finished task's body when it says the task failed (`Exception`,
/// `Killed`, `Cancelled`); `None` for success or a body that says nothing usable.
pub fn failed_task_state(body: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(body).ok()?;
    match v.get("TaskState").and_then(Value::as_str) {
        Some(s @ ("Exception" | "Killed" | "Cancelled")) => Some(s.to_owned()),
        _ => None,
    }
}

/// The path of a `Location` that may be an absolute URL.
pub fn path_of(location: &str) -> &str {
    match location.find("://") {
        Some(i) => location[i + 3..]
            .find('/')
            .map(|j| &location[i + 3 + j..])
            .unwrap_or("/"),
        None => location,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_is_on_for_off_machines_and_a_restart_otherwise() {
        let all: Vec<String> = [
            "On",
            "ForceOff",
            "GracefulRestart",
            "ForceRestart",
            "PowerCycle",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            choose_reset(PowerState::Off, &all).ok().as_deref(),
            Some("On")
        );
        assert_eq!(
            choose_reset(PowerState::On, &all).ok().as_deref(),
            Some("ForceRestart")
        );
        let graceful = vec!["ForceOn".to_string(), "GracefulRestart".to_string()];
        assert_eq!(
            choose_reset(PowerState::Off, &graceful).ok().as_deref(),
            Some("ForceOn")
        );
        assert_eq!(
            choose_reset(PowerState::On, &graceful).ok().as_deref(),
            Some("GracefulRestart")
        );
        assert_eq!(
            choose_reset(PowerState::On, &[]).ok().as_deref(),
            Some("ForceRestart")
        );
        assert!(matches!(
            choose_reset(PowerState::On, &["Nmi".to_string()]),
            Err(RedfishError::NoResetType { .. })
        ));
    }

    #[test]
    fn boot_override_is_once_with_an_optional_mode() {
        assert_eq!(
            boot_override(BootTarget::Pxe, Some(BootMode::Uefi)),
            json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once", "BootSourceOverrideMode": "UEFI"}})
        );
        assert_eq!(
            boot_override(BootTarget::UefiHttp, None),
            json!({"Boot": {"BootSourceOverrideTarget": "UefiHttp", "BootSourceOverrideEnabled": "Once"}})
        );
    }

    #[test]
    fn systems_parse_the_standard_shape() {
        let v = json!({
            "@odata.id": "/redfish/v1/Systems/1",
            "@odata.etag": "W/\"abc\"",
            "Model": "R650",
            "PowerState": "On",
            "Boot": {
                "BootSourceOverrideTarget": "None",
                "BootSourceOverrideEnabled": "Disabled",
                "BootSourceOverrideMode": "UEFI",
                "BootSourceOverrideTarget@Redfish.AllowableValues": ["None", "Pxe", "Hdd", "UefiHttp"]
            },
            "Actions": {"#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": ["On", "ForceRestart"]
            }}
        });
        let s = System::parse("/redfish/v1/Systems/1", &v, None);
        assert_eq!(s.power, PowerState::On);
        assert_eq!(s.boot_targets_allowed.len(), 4);
        assert_eq!(s.reset_types, vec!["On", "ForceRestart"]);
        assert_eq!(s.etag.as_deref(), Some("W/\"abc\""));
        assert_eq!(s.model.as_deref(), Some("R650"));
        let s = System::parse("/x", &v, Some("\"hdr\""));
        assert_eq!(s.etag.as_deref(), Some("\"hdr\""), "the header wins");
    }

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        assert_eq!(backoff(1, 0.5), Duration::from_millis(500));
        assert_eq!(backoff(2, 0.5), Duration::from_millis(1000));
        assert_eq!(backoff(10, 0.5), Duration::from_millis(5000));
        assert_eq!(backoff(1, 0.0), Duration::from_millis(250));
        assert!(backoff(1, 0.99) < Duration::from_millis(750));
    }

    #[test]
    fn locations_become_paths() {
        assert_eq!(
            path_of("https://bmc:443/redfish/v1/TaskService/Tasks/1"),
            "/redfish/v1/TaskService/Tasks/1"
        );
        assert_eq!(path_of("/redfish/v1/Sessions/5"), "/redfish/v1/Sessions/5");
    }

    #[test]
    fn transient_errors_are_network_trouble_busy_and_server_errors() {
        let st = |status| RedfishError::Status {
            method: "GET".into(),
            path: "/".into(),
            status,
            message: None,
        };
        assert!(st(503).is_transient() && st(409).is_transient() && st(500).is_transient());
        assert!(!st(400).is_transient() && !st(404).is_transient());
        assert!(RedfishError::Timeout(Duration::from_secs(1)).is_transient());
        assert!(!RedfishError::Unauthorized(401).is_transient());
    }

    #[test]
    fn secrets_never_print() {
        let s = Secret::new("hunter2".into());
        assert_eq!(format!("{s:?}"), "<redacted>");
        let e = RedfishError::Credentials("/etc/bmc.pass: No such file".into());
        assert!(!e.to_string().contains("hunter2"));
    }
}
