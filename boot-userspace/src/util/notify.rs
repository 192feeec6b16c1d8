//! The service manager's readiness protocol (`sd_notify(3)`): READY once every service
//! listens, RELOADING and READY around a config reload, STOPPING on the way out, and the
//! watchdog's keep-alives. Without `NOTIFY_SOCKET` (not started by systemd with
//! `Type=notify`) every call is a no-op.
//!
//! A message that cannot be sent is logged and otherwise ignored: the daemon serves whether
//! or not its supervisor hears it (systemd restarts a service whose watchdog it stops
//! hearing, which is the point of the watchdog).

use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::debug;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "sd_notify failed");
    }
}

/// Every service is listening: start-up is over (`READY=1`), with `status` for
/// `systemctl status`.
pub fn ready(status: &str) {
    send(&[NotifyState::Ready, NotifyState::Status(status)]);
}

/// A config reload begins (`RELOADING=1` with the monotonic time systemd wants with it).
pub fn reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[NotifyState::Reloading, now]),
        Err(_) => send(&[NotifyState::Reloading]),
    }
}

/// The daemon is shutting down (`STOPPING=1`).
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Sends `WATCHDOG=1` at half the interval systemd asked for (`WatchdogSec=`, passed as
/// `WATCHDOG_USEC`) until `cancel` fires; returns at once when no watchdog is set.
///
/// The keep-alive runs on the network runtime, beside the tasks that answer DHCP: a runtime
/// wedged so hard that none of its tasks runs stops this too, and systemd restarts it. It
/// does not see a single stuck task, nor the file runtime (TFTP, HTTP), whose stalls the
/// metrics and `/healthz` show instead.
pub async fn watchdog(cancel: CancellationToken) {
    let Some(interval) = sd_notify::watchdog_enabled() else {
        return;
    };
    let every = (interval / 2).max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => send(&[NotifyState::Watchdog]),
        }
    }
}
