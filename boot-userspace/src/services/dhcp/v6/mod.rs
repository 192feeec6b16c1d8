//! The DHCPv6 server (RFC 8415), with the RFC 5970 boot options and RFC 6939 client
//! link-layer addresses:
//!
//! - [`wire`]: decoding client messages (through relays) and encoding answers;
//! - [`table`]: bindings in memory and their journal records;
//! - [`server`]: the RFC 8415 decisions (pure);
//! - `service`: sockets, the journal and the receive loop.
//!
//! It shares the DHCPv4 server's journal mechanics (`leases6.journal`), boot policy and
//! inventory; hosts are matched by MAC, learnt from the relay, the DUID or the EUI-64
//! link-local address.

pub mod server;
mod service;
pub mod table;
pub mod wire;

pub use service::{journal_path, Dhcp6Error, Dhcp6Service, Sources6};
