//! Bootfabric: the network boot fabric of a datacenter in one daemon.
//!
//! This crate is the daemon (`bootfabric`) as a library: each module is one concern, and
//! `main.rs` only parses the command line and calls [`cli::run`].

pub mod admin;
pub mod check;
pub mod cli;
pub mod config;
pub mod dhcp;
pub mod explain;
pub mod http;
pub mod inventory;
pub mod ledger;
pub mod metrics;
pub mod ra;
pub mod reboot;
pub mod redfish;
pub mod render;
pub mod scheduler;
pub mod serve;
pub mod supervisor;
pub mod tftp;
pub mod xdp;
pub mod xorshift;
