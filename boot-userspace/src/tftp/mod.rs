//! The TFTP server (RFC 1350 with option negotiation: RFC 2347 OACK, RFC 2348 blksize,
//! RFC 2349 timeout and tsize, RFC 7440 windowsize).
//!
//! Landing in steps: [`packet`] (wire format), [`options`] (negotiation) and [`transfer`]
//! (the read-transfer state machine) are the pure protocol core; file sources (confined
//! static files, rendered per-host files) and the socket loop follow.

pub mod files;
pub mod options;
pub mod packet;
pub mod service;
pub mod transfer;
