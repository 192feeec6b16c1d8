//! The shared core every service and command reads: the boot settings, the host inventory,
//! the ledger, per-host rendering, the file source and the admission gate. Plain data and
//! shared handles; nothing here knows a socket or a protocol.

pub mod boot;
pub mod files;
pub mod gate;
pub mod images;
pub mod inventory;
pub mod ledger;
pub mod render;
pub mod snapshot;
