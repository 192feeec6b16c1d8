//! Where the runner reads the time. The scheduler's deadlines (POST and boot timeouts, retry
//! backoff, predicted slot ends) are measured on the ledger's time base, unix milliseconds,
//! so the runner asks one [`Clock`] for it: [`WallClock`] in production, the one the ledger
//! stamps events with. In unit tests, `TokioClock` reads tokio's clock from a fixed base, so
//! paused time drives the scheduler exactly as it drives the runner's ticks and the fake
//! BMCs, and a test records its events at the same clock with `Ledger::record_at`.

use crate::model::ledger;

/// A source of the time, in the ledger's time base.
pub trait Clock: Send + Sync + 'static {
    /// Unix milliseconds now.
    fn now_ms(&self) -> u64;
}

/// The system's wall clock: what the ledger stamps events with.
#[derive(Clone, Copy, Debug, Default)]
pub struct WallClock;

impl Clock for WallClock {
    fn now_ms(&self) -> u64 {
        ledger::unix_ms()
    }
}

#[cfg(test)]
pub use paused::TokioClock;

// Unit tests only: production time must agree with the ledger's own stamps.
#[cfg(test)]
mod paused {
    use tokio::time::Instant;

    use super::Clock;

    /// tokio's clock, reading `base_ms` when it was made and advancing as tokio's time does
    /// (under paused time, only when the test lets time pass).
    #[derive(Clone, Copy, Debug)]
    pub struct TokioClock {
        base_ms: u64,
        made: Instant,
    }

    impl TokioClock {
        /// A clock reading `base_ms` now. Needs a tokio runtime (with its time paused in tests).
        pub fn new(base_ms: u64) -> Self {
            Self {
                base_ms,
                made: Instant::now(),
            }
        }
    }

    impl Clock for TokioClock {
        fn now_ms(&self) -> u64 {
            let elapsed = u64::try_from(self.made.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.base_ms.saturating_add(elapsed)
        }
    }

    mod tests {
        use std::time::Duration;

        use super::*;

        #[tokio::test(start_paused = true)]
        async fn it_follows_paused_time_from_its_base() {
            let clock = TokioClock::new(1_000);
            assert_eq!(clock.now_ms(), 1_000);
            tokio::time::sleep(Duration::from_millis(2_250)).await;
            assert_eq!(clock.now_ms(), 3_250);
        }
    }
}
