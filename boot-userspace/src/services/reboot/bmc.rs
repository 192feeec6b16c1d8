//! The runner's one door to the BMCs: "boot from the network once, then reset", and "is it
//! powered on?" (asked only when a new leader finds a reset whose outcome it cannot know, see
//! `resume`). Behind it,
//! [`RedfishBmc`] talks Redfish; in unit tests, `FakeBmc` answers from a script, so the
//! runner is tested without a network.
//!
//! One coarse operation rather than the Redfish steps: the session (log in, find the system,
//! log out) is a detail of Redfish, not a decision of the runner. The runner adds what is
//! its policy around any `Bmc`: one operation at a time per BMC URL, and the in-flight gauge.

use std::{future::Future, pin::Pin};

use crate::redfish::{BmcConfig, Client, PowerState, RedfishError};

/// A boot-override-and-reset in progress; its output is the reset type the BMC used.
pub type ResetFuture = Pin<Box<dyn Future<Output = Result<String, RedfishError>> + Send>>;

/// A power-state query in progress.
pub type PowerFuture = Pin<Box<dyn Future<Output = Result<PowerState, RedfishError>> + Send>>;

/// What the runner asks of a host's BMC.
pub trait Bmc: Send + Sync + 'static {
    /// Sets the one-time boot override of `bmc` (`bmc.boot`, `bmc.boot_mode`) and resets the
    /// system; the future resolves to the reset type used. Nothing happens until the future
    /// is polled: the runner creates it, then waits for its turn at that BMC.
    fn boot_once_and_reset(&self, bmc: &BmcConfig) -> ResetFuture;

    /// Reads the power state of `bmc`'s system (its `PowerState`); changes nothing.
    fn power_state(&self, bmc: &BmcConfig) -> PowerFuture;
}

/// The real BMCs, through the Redfish client.
#[derive(Clone, Copy, Debug, Default)]
pub struct RedfishBmc;

impl Bmc for RedfishBmc {
    fn boot_once_and_reset(&self, bmc: &BmcConfig) -> ResetFuture {
        let bmc = bmc.clone();
        Box::pin(async move { reset_host(&bmc).await })
    }

    fn power_state(&self, bmc: &BmcConfig) -> PowerFuture {
        let bmc = bmc.clone();
        Box::pin(async move { read_power(&bmc).await })
    }
}

/// Reads the system's power state; the session is closed whatever happened after it was
/// opened.
async fn read_power(bmc: &BmcConfig) -> Result<PowerState, RedfishError> {
    let mut client = Client::connect(bmc).await?;
    let result = async {
        let path = client.the_system().await?;
        client.power_state(&path).await
    }
    .await;
    client.logout().await;
    result
}

/// Sets the one-time boot override and resets the host; returns the reset type used. The
/// session is closed whatever happened after it was opened.
async fn reset_host(bmc: &BmcConfig) -> Result<String, RedfishError> {
    let mut client = Client::connect(bmc).await?;
    let result = async {
        let path = client.the_system().await?;
        let sys = client.set_boot_once(&path, bmc.boot, bmc.boot_mode).await?;
        client.reset_system(&sys).await
    }
    .await;
    client.logout().await;
    result
}

#[cfg(test)]
pub use fake::{FakeBmc, RESET_TYPE};

// Unit tests only (the lab tests run real Redfish emulators), so it is not in the binary.
#[cfg(test)]
mod fake {
    use std::{
        collections::{HashMap, VecDeque},
        sync::{Arc, Mutex},
        time::Duration,
    };

    use super::{Bmc, PowerFuture, ResetFuture};
    use crate::redfish::{BmcConfig, PowerState, RedfishError};

    /// The reset type a fake BMC reports when its script says nothing else.
    pub const RESET_TYPE: &str = "ForceRestart";

    #[derive(Default)]
    struct State {
        /// Answers per BMC URL, in order; an empty or missing script accepts.
        script: HashMap<String, VecDeque<Result<String, RedfishError>>>,
        /// URLs of the operations started, in order.
        calls: Vec<String>,
        /// Power states per BMC URL, in order; the last one stays (none scripted: `On`).
        power: HashMap<String, VecDeque<Result<PowerState, RedfishError>>>,
        /// URLs of the power queries, in order.
        power_calls: Vec<String>,
        /// Operations in progress per URL, and the most seen at once.
        in_flight: HashMap<String, usize>,
        most_in_flight: HashMap<String, usize>,
    }

    /// BMCs that answer from a script, after `delay` (tokio time: pause it in tests).
    #[derive(Clone, Default)]
    pub struct FakeBmc {
        state: Arc<Mutex<State>>,
        delay: Duration,
    }

    impl FakeBmc {
        /// BMCs that accept every reset at once.
        pub fn new() -> Self {
            Self::default()
        }

        /// Each operation takes `delay` before it answers.
        pub fn with_delay(mut self, delay: Duration) -> Self {
            self.delay = delay;
            self
        }

        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|e| e.into_inner())
        }

        /// The next answers of the BMC at `url`, after which it accepts again.
        pub fn script(
            &self,
            url: &str,
            answers: impl IntoIterator<Item = Result<String, RedfishError>>,
        ) {
            self.state()
                .script
                .entry(url.to_owned())
                .or_default()
                .extend(answers);
        }

        /// What the BMC at `url` answers to the next power queries, in order; the last
        /// answer stays (a BMC says the same until its host changes). Unscripted: `On`.
        pub fn power(
            &self,
            url: &str,
            answers: impl IntoIterator<Item = Result<PowerState, RedfishError>>,
        ) {
            self.state()
                .power
                .entry(url.to_owned())
                .or_default()
                .extend(answers);
        }

        /// The URLs of the power queries so far, in order.
        pub fn power_calls(&self) -> Vec<String> {
            self.state().power_calls.clone()
        }

        /// The URLs of the operations started so far, in order.
        pub fn calls(&self) -> Vec<String> {
            self.state().calls.clone()
        }

        /// The most operations that were in progress at once at `url`.
        pub fn most_in_flight(&self, url: &str) -> usize {
            self.state().most_in_flight.get(url).copied().unwrap_or(0)
        }
    }

    impl Bmc for FakeBmc {
        fn boot_once_and_reset(&self, bmc: &BmcConfig) -> ResetFuture {
            let url = bmc.url.clone();
            let fake = self.clone();
            Box::pin(async move {
                {
                    let mut s = fake.state();
                    s.calls.push(url.clone());
                    let now = {
                        let n = s.in_flight.entry(url.clone()).or_default();
                        *n += 1;
                        *n
                    };
                    let most = s.most_in_flight.entry(url.clone()).or_default();
                    *most = (*most).max(now);
                }
                tokio::time::sleep(fake.delay).await;
                let mut s = fake.state();
                if let Some(n) = s.in_flight.get_mut(&url) {
                    *n -= 1;
                }
                s.script
                    .get_mut(&url)
                    .and_then(VecDeque::pop_front)
                    .unwrap_or_else(|| Ok(RESET_TYPE.to_owned()))
            })
        }

        fn power_state(&self, bmc: &BmcConfig) -> PowerFuture {
            let url = bmc.url.clone();
            let fake = self.clone();
            Box::pin(async move {
                tokio::time::sleep(fake.delay).await;
                let mut s = fake.state();
                s.power_calls.push(url.clone());
                let Some(script) = s.power.get_mut(&url) else {
                    return Ok(PowerState::On);
                };
                // The last state stays; an error (it cannot be cloned) is answered once.
                match script.front() {
                    Some(Ok(p)) if script.len() == 1 => Ok(*p),
                    _ => script.pop_front().unwrap_or(Ok(PowerState::On)),
                }
            })
        }
    }
}
