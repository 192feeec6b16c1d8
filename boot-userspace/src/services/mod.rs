//! The services `bootfabric serve` runs. Each owns its part (its section, its sockets) and
//! reports to the ledger; no service imports another.

pub mod admission;
pub mod dhcp;
pub mod history;
pub mod http;
pub mod images;
pub mod ra;
pub mod reboot;
pub mod tftp;
pub mod webhooks;
