//! Credential files the config names: the admin token and the admin server's TLS material.
//! Config loading checks them (so a bad file is refused with its key at start), the admin API
//! serves with them, and `bootfabric reboot` and `admin token create` read and write the token.

pub mod dhe;
pub mod tls;
pub mod token;
