//! The TFTP server (RFC 1350 with option negotiation: RFC 2347 OACK, RFC 2348 blksize,
//! RFC 2349 timeout and tsize, RFC 7440 windowsize).
//!
//! [`packet`] (wire format), [`options`] (negotiation), [`transfer`] (the read-transfer state
//! machine), [`admission`] (caps on transfers and requests) and [`names`] (which names are
//! per-host files) are the pure core; [`files`] confines requests to the root and [`service`]
//! is the socket loop.

pub mod admission;
pub mod names;
pub mod options;
pub mod packet;
pub mod service;
pub mod transfer;
