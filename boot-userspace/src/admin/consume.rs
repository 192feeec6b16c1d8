//! `netboot = "once"`: the task that spends a host's one network boot. It follows the
//! ledger's event log and, on `host.booted` of a `once` host not yet consumed, publishes the
//! consumed state (every service then answers "boot from disk") and records it in the API's
//! overlay file, so a restart keeps it. `POST /api/v1/hosts/{name}/netboot-reset`, or a write
//! that sets `netboot`, gives the network boot back.
//!
//! [`to_consume`] is pure (events and the inventory in, names out); [`run`] is the loop.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::api::ApiState;
use crate::model::{
    inventory::{Inventory, Netboot},
    ledger::{ApiEvent, EventType},
};

/// Events read per wake-up.
const PAGE: usize = 256;

/// The `once` hosts, not yet consumed, that `events` say booted, each once, in order.
pub fn to_consume(events: &[ApiEvent], inventory: &Inventory) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for e in events {
        if e.kind != EventType::HostBooted {
            continue;
        }
        let Some(name) = e.host.as_deref() else {
            continue;
        };
        let once = inventory
            .host_named(name)
            .is_some_and(|h| h.netboot == Netboot::Once && !inventory.is_consumed(name));
        if once && !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    names
}

/// Follows the event log from now until `cancel` fires.
pub async fn run(api: Arc<ApiState>, cancel: CancellationToken) {
    let mut after = api.ledger.last_event_id();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = api.ledger.wait_events(after) => {}
        }
        let page = api.ledger.events_after(after, PAGE);
        if let Some((first, last)) = page.gap {
            warn!(
                first,
                last,
                "netboot once: events {first}..={last} were dropped before they were read; \
                 a `booted` among them did not consume its host"
            );
            after = after.max(last);
        }
        let Some(newest) = page.events.last().map(|e| e.id) else {
            continue;
        };
        after = after.max(newest);
        let names = to_consume(&page.events, &api.live.load().inventory);
        if names.is_empty() {
            continue;
        }
        // Publishing fsyncs the overlay and waits for the followers: a blocking thread.
        let api = Arc::clone(&api);
        let done = tokio::task::spawn_blocking(move || {
            for name in names {
                match super::hosts::consume(&api, &name) {
                    Ok(true) => {
                        info!(host = %name, "netboot once: used; the host now boots from its disk")
                    }
                    Ok(false) => {}
                    Err(p) => warn!(host = %name, detail = %p.detail, "netboot once: not recorded"),
                }
            }
        })
        .await;
        if done.is_err() {
            warn!("netboot once: the consumption task panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: u64, kind: EventType, host: &str) -> ApiEvent {
        ApiEvent {
            id,
            at_ms: 0,
            kind,
            host: Some(host.to_owned()),
            mac: None,
            data: serde_json::json!({}),
        }
    }

    #[test]
    fn only_a_booted_once_host_not_yet_consumed_is_consumed_once() {
        let wire = toml::from_str(
            "[profiles.p]\n\
             [[hosts]]\nname='a'\nmac='52:54:00:00:00:01'\nprofile='p'\nnetboot='once'\n\
             [[hosts]]\nname='b'\nmac='52:54:00:00:00:02'\nprofile='p'\n\
             [[hosts]]\nname='c'\nmac='52:54:00:00:00:03'\nprofile='p'\nnetboot='once'\n\
             [[hosts]]\nname='d'\nmac='52:54:00:00:00:04'\nprofile='p'\nnetboot='once'\n",
        )
        .expect("toml");
        let mut inv = Inventory::from_wire(std::path::Path::new("h"), wire).expect("valid");
        inv.set_consumed("c", true);
        let events = [
            event(1, EventType::HostPhase, "d"),
            event(2, EventType::HostBooted, "a"),
            event(3, EventType::HostBooted, "b"),
            event(4, EventType::HostBooted, "c"),
            event(5, EventType::HostBooted, "a"),
            event(6, EventType::HostBooted, "gone"),
            event(7, EventType::HostFailed, "d"),
        ];
        assert_eq!(to_consume(&events, &inv), ["a"]);
    }
}
