//! Runs the daemon's services as tasks of one `JoinSet` under one cancellation token.
//!
//! A service is a future that runs until the token fires. If any service stops on its own
//! (an error, or an unexpected clean return), the supervisor cancels the others, so the
//! daemon never limps on with half its services; systemd or Kubernetes restarts it whole.

use std::{collections::HashMap, error::Error, fmt, future::Future, pin::Pin};

use prometheus::IntGaugeVec;
use tokio::task::{Id, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

/// Why a service stopped: any error a service returns, boxed. The supervisor only logs it,
/// so it needs no variants of its own, and a boxed error lets each service keep its own
/// typed error without this bottom layer knowing the services above it.
pub type ServiceError = Box<dyn Error + Send + Sync>;

type ServiceFuture = Pin<Box<dyn Future<Output = Result<(), ServiceError>> + Send>>;

/// A service's task that panicked (or was aborted) instead of returning.
#[derive(Debug, thiserror::Error)]
#[error("task failed: {0}")]
struct TaskFailed(tokio::task::JoinError);

/// An error and its sources, `: `-separated (what `anyhow`'s `{:#}` prints), so a service's
/// failure is logged whole whatever error type it has.
struct Chain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

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
    tasks: JoinSet<Result<(), ServiceError>>,
    /// Each task's service name: a task that panics takes its output with it, not its id.
    names: HashMap<Id, String>,
    up: IntGaugeVec,
}

impl Supervisor {
    /// A supervisor whose services stop when `cancel` fires; `up` is `bootfabric_service_up`.
    pub fn new(cancel: CancellationToken, up: IntGaugeVec) -> Self {
        Self {
            cancel,
            tasks: JoinSet::new(),
            names: HashMap::new(),
            up,
        }
    }

    /// The token every service must watch.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    /// Starts a service: a future that returns once the token fired, or with the error that
    /// stopped it.
    pub fn spawn<E>(
        &mut self,
        name: &str,
        service: impl Future<Output = Result<(), E>> + Send + 'static,
    ) where
        E: Into<ServiceError>,
    {
        self.up.with_label_values(&[name]).set(1);
        let service: ServiceFuture = Box::pin(async move { service.await.map_err(Into::into) });
        let id = self.tasks.spawn(service).id();
        self.names.insert(id, name.to_owned());
    }

    /// Waits until every service has stopped.
    pub async fn run(mut self) -> Outcome {
        let mut failed = Vec::new();
        while let Some(joined) = self.tasks.join_next_with_id().await {
            let (id, result) = match joined {
                Ok((id, r)) => (id, r),
                Err(e) => (e.id(), Err(TaskFailed(e).into())),
            };
            let name = self
                .names
                .remove(&id)
                .unwrap_or_else(|| format!("task {id}"));
            self.up.with_label_values(&[name.as_str()]).set(0);
            match result {
                Ok(()) if self.cancel.is_cancelled() => info!(service = %name, "stopped"),
                Ok(()) => {
                    error!(service = %name, "stopped unexpectedly; shutting down");
                    failed.push(name);
                }
                Err(e) => {
                    error!(service = %name, "failed: {}; shutting down", Chain(e.as_ref()));
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

    #[derive(Debug, thiserror::Error)]
    #[error("binding 10.0.0.1:69")]
    struct Bind(#[source] std::io::Error);

    #[test]
    fn a_failure_is_logged_with_its_sources() {
        let e = Bind(std::io::Error::new(
            std::io::ErrorKind::AddrInUse,
            "port in use",
        ));
        assert_eq!(Chain(&e).to_string(), "binding 10.0.0.1:69: port in use");
    }

    #[tokio::test]
    async fn cancellation_stops_all_cleanly() {
        let up = gauge();
        let cancel = CancellationToken::new();
        let mut s = Supervisor::new(cancel.clone(), up.clone());
        for name in ["a", "b"] {
            let t = s.token();
            s.spawn(name, async move {
                t.cancelled().await;
                Ok::<(), ServiceError>(())
            });
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
        s.spawn("waits", async move {
            t.cancelled().await;
            Ok::<(), ServiceError>(())
        });
        s.spawn("fails", async {
            Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                "port in use",
            ))
        });
        assert_eq!(s.run().await, Outcome::Failed(vec!["fails".to_owned()]));
        assert_eq!(up.with_label_values(&["waits"]).get(), 0);
    }

    #[tokio::test]
    async fn a_panicking_service_stops_the_others() {
        fn bug() -> Result<(), ServiceError> {
            panic!("a bug in a service (expected by this test)")
        }
        let up = gauge();
        let mut s = Supervisor::new(CancellationToken::new(), up.clone());
        let t = s.token();
        s.spawn("waits", async move {
            t.cancelled().await;
            Ok::<(), ServiceError>(())
        });
        s.spawn("panics", async { bug() });
        // The one that panicked is named, and its gauge drops like the others'.
        assert_eq!(s.run().await, Outcome::Failed(vec!["panics".to_owned()]));
        assert_eq!(up.with_label_values(&["waits"]).get(), 0);
        assert_eq!(up.with_label_values(&["panics"]).get(), 0);
    }

    #[tokio::test]
    async fn a_service_returning_early_is_a_failure() {
        let mut s = Supervisor::new(CancellationToken::new(), gauge());
        s.spawn("quits", async { Ok::<(), ServiceError>(()) });
        assert_eq!(s.run().await, Outcome::Failed(vec!["quits".to_owned()]));
    }
}
