//! Runs the daemon's services as tasks of one `JoinSet` under one cancellation token.
//!
//! A service is a future that runs until the token fires. If any service stops on its own
//! (an error, or an unexpected clean return), the supervisor cancels the others, so the
//! daemon never limps on with half its services; systemd or Kubernetes restarts it whole.

use std::{future::Future, pin::Pin};

use prometheus::IntGaugeVec;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

type ServiceFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// How the supervised services ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every service stopped after cancellation (signal or caller).
    Clean,
    /// A service failed or stopped by itself; the names of those that did.
    Failed(Vec<String>),
}

/// The set of services of one daemon.
pub struct Supervisor {
    cancel: CancellationToken,
    tasks: JoinSet<(String, anyhow::Result<()>)>,
    up: IntGaugeVec,
}

impl Supervisor {
    /// A supervisor whose services stop when `cancel` fires; `up` is `bootfabric_service_up`.
    pub fn new(cancel: CancellationToken, up: IntGaugeVec) -> Self {
        Self {
            cancel,
            tasks: JoinSet::new(),
            up,
        }
    }

    /// The token every service must watch.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Starts a service.
    pub fn spawn(&mut self, name: &str, service: ServiceFuture) {
        self.up.with_label_values(&[name]).set(1);
        let name = name.to_owned();
        self.tasks.spawn(async move { (name, service.await) });
    }

    /// Waits until every service has stopped.
    pub async fn run(mut self) -> Outcome {
        let mut failed = Vec::new();
        while let Some(joined) = self.tasks.join_next().await {
            let (name, result) = match joined {
                Ok(r) => r,
                Err(e) => (
                    "<panicked>".to_owned(),
                    Err(anyhow::anyhow!("task failed: {e}")),
                ),
            };
            self.up.with_label_values(&[name.as_str()]).set(0);
            match result {
                Ok(()) if self.cancel.is_cancelled() => info!(service = %name, "stopped"),
                Ok(()) => {
                    error!(service = %name, "stopped unexpectedly; shutting down");
                    failed.push(name);
                }
                Err(e) => {
                    error!(service = %name, "failed: {e:#}; shutting down");
                    failed.push(name);
                }
            }
            self.cancel.cancel();
        }
        if failed.is_empty() {
            Outcome::Clean
        } else {
            Outcome::Failed(failed)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Opts;

    fn gauge() -> IntGaugeVec {
        IntGaugeVec::new(Opts::new("up", "up"), &["service"]).expect("gauge")
    }

    #[tokio::test]
    async fn cancellation_stops_all_cleanly() {
        let up = gauge();
        let cancel = CancellationToken::new();
        let mut s = Supervisor::new(cancel.clone(), up.clone());
        for name in ["a", "b"] {
            let t = s.token();
            s.spawn(
                name,
                Box::pin(async move {
                    t.cancelled().await;
                    Ok(())
                }),
            );
        }
        assert_eq!(up.with_label_values(&["a"]).get(), 1);
        cancel.cancel();
        assert_eq!(s.run().await, Outcome::Clean);
        assert_eq!(up.with_label_values(&["a"]).get(), 0);
        assert_eq!(up.with_label_values(&["b"]).get(), 0);
    }

    #[tokio::test]
    async fn one_failure_stops_the_others() {
        let up = gauge();
        let mut s = Supervisor::new(CancellationToken::new(), up.clone());
        let t = s.token();
        s.spawn(
            "waits",
            Box::pin(async move {
                t.cancelled().await;
                Ok(())
            }),
        );
        s.spawn(
            "fails",
            Box::pin(async { Err(anyhow::anyhow!("port in use")) }),
        );
        assert_eq!(s.run().await, Outcome::Failed(vec!["fails".to_owned()]));
        assert_eq!(up.with_label_values(&["waits"]).get(), 0);
    }

    #[tokio::test]
    async fn a_service_returning_early_is_a_failure() {
        let mut s = Supervisor::new(CancellationToken::new(), gauge());
        s.spawn("quits", Box::pin(async { Ok(()) }));
        assert_eq!(s.run().await, Outcome::Failed(vec!["quits".to_owned()]));
    }
}
