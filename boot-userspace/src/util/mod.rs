//! Utilities with no knowledge of boot: a PRNG, the service supervisor, the core metrics.

pub mod key_error;
pub mod logs;
pub mod metrics;
pub mod notify;
pub mod supervisor;
pub mod xorshift;
