//! Utilities with no knowledge of boot: a PRNG, the service supervisor, the core metrics.

pub mod key_error;
pub mod metrics;
pub mod supervisor;
pub mod xorshift;
