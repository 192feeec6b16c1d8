//! Bootfabric: the network boot fabric of a datacenter in one daemon.
//!
//! This crate is the daemon (`bootfabric`) as a library, in layers (docs/architecture.md): each
//! module may import only the ones listed before it. `main.rs` only parses the command line and
//! calls [`commands::run`].

pub mod admin;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod download;
pub mod fabric;
pub mod model;
pub mod redfish;
pub mod services;
pub mod util;
pub mod xdp;
