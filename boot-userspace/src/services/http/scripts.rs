//! iPXE scripts as last rendered for each inventory host, served again while nothing they
//! were rendered from has changed. A script is a pure function of the configuration
//! generation (hosts, profiles, `[boot]`, templates), the host's lease address, the server
//! address it was asked on and the nonce of the boot in progress; rendering it (templates,
//! formatting, a dozen small allocations) cost more than all the rest of a script request.
//! Those four are the key, so a kept script is never one the request would not have
//! rendered.
//!
//! One entry per inventory host at most (callers pass hosts of the generation in hand, and
//! a new generation empties the cache): a peer cannot grow it by asking under other names.

use std::{collections::HashMap, net::IpAddr, sync::Mutex};

use crate::model::inventory::Mac;

/// What a script was rendered for, besides its host.
#[derive(Debug)]
pub struct Key<'a> {
    /// The configuration generation.
    pub generation: u64,
    /// The host's lease address, if it has one.
    pub ip: Option<IpAddr>,
    /// The server address the request reached.
    pub server: IpAddr,
    /// The nonce of the host's boot in progress.
    pub nonce: Option<&'a str>,
}

struct Entry {
    ip: Option<IpAddr>,
    server: IpAddr,
    nonce: Option<String>,
    text: Vec<u8>,
}

impl Entry {
    fn matches(&self, key: &Key<'_>) -> bool {
        self.ip == key.ip && self.server == key.server && self.nonce.as_deref() == key.nonce
    }
}

#[derive(Default)]
struct Kept {
    generation: u64,
    hosts: HashMap<Mac, Entry>,
}

/// The rendered scripts, shared by the transports' workers.
#[derive(Default)]
pub struct Rendered {
    kept: Mutex<Kept>,
}

impl Rendered {
    /// `mac`'s script for `key`: the kept one, else what `render` returns (kept when it
    /// rendered). The lock is not held while rendering: two workers may both render the same
    /// script once, and either result is the same text.
    pub fn get<E>(
        &self,
        mac: Mac,
        key: &Key<'_>,
        render: impl FnOnce() -> Option<Result<String, E>>,
    ) -> Option<Result<Vec<u8>, E>> {
        if let Ok(kept) = self.kept.lock() {
            if kept.generation == key.generation {
                if let Some(e) = kept.hosts.get(&mac).filter(|e| e.matches(key)) {
                    return Some(Ok(e.text.clone()));
                }
            }
        }
        let text = match render()? {
            Ok(text) => text.into_bytes(),
            Err(e) => return Some(Err(e)),
        };
        if let Ok(mut kept) = self.kept.lock() {
            // An older generation's request finishing late must not empty a newer cache.
            if key.generation > kept.generation {
                kept.generation = key.generation;
                kept.hosts.clear();
            }
            if key.generation == kept.generation {
                let entry = Entry {
                    ip: key.ip,
                    server: key.server,
                    nonce: key.nonce.map(str::to_owned),
                    text: text.clone(),
                };
                kept.hosts.insert(mac, entry);
            }
        }
        Some(Ok(text))
    }
}

#[cfg(test)]
mod tests {
    use std::{cell::Cell, convert::Infallible, net::Ipv4Addr};

    use super::*;

    const A: Mac = Mac([0x52, 0x54, 0, 0, 0, 1]);
    const B: Mac = Mac([0x52, 0x54, 0, 0, 0, 2]);

    fn key(generation: u64, ip: u8, server: u8, nonce: Option<&str>) -> Key<'_> {
        Key {
            generation,
            ip: Some(IpAddr::V4(Ipv4Addr::new(10, 77, 0, ip))),
            server: IpAddr::V4(Ipv4Addr::new(10, 77, 0, server)),
            nonce,
        }
    }

    /// Renders `text`, counting the calls.
    fn renders<'a>(
        calls: &'a Cell<u32>,
        text: &'a str,
    ) -> impl FnOnce() -> Option<Result<String, Infallible>> + 'a {
        move || {
            calls.set(calls.get() + 1);
            Some(Ok(text.to_owned()))
        }
    }

    fn text(r: Option<Result<Vec<u8>, Infallible>>) -> String {
        match r {
            Some(Ok(t)) => String::from_utf8(t).expect("utf-8"),
            Some(Err(e)) => match e {},
            None => "none".to_owned(),
        }
    }

    #[test]
    fn a_script_is_rendered_once_for_the_same_key() {
        let s = Rendered::default();
        let calls = Cell::new(0);
        let k = key(1, 11, 1, Some("n1"));
        assert_eq!(text(s.get(A, &k, renders(&calls, "one"))), "one");
        assert_eq!(text(s.get(A, &k, renders(&calls, "two"))), "one");
        assert_eq!(calls.get(), 1);
    }

    #[test]
    fn every_part_of_the_key_renders_again() {
        let s = Rendered::default();
        let calls = Cell::new(0);
        s.get(A, &key(1, 11, 1, Some("n1")), renders(&calls, "first"));
        for (k, expect) in [
            (key(1, 12, 1, Some("n1")), "lease"),
            (key(1, 12, 2, Some("n1")), "server"),
            (key(1, 12, 2, Some("n2")), "nonce"),
            (key(1, 12, 2, None), "no nonce"),
            (key(2, 12, 2, None), "generation"),
        ] {
            assert_eq!(text(s.get(A, &k, renders(&calls, expect))), expect);
        }
        assert_eq!(calls.get(), 6);
    }

    #[test]
    fn hosts_are_kept_apart_and_a_new_generation_forgets_the_old() {
        let s = Rendered::default();
        let calls = Cell::new(0);
        let k1 = key(1, 11, 1, None);
        s.get(A, &k1, renders(&calls, "a"));
        s.get(B, &k1, renders(&calls, "b"));
        assert_eq!(text(s.get(A, &k1, renders(&calls, "x"))), "a");
        assert_eq!(text(s.get(B, &k1, renders(&calls, "x"))), "b");
        assert_eq!(calls.get(), 2);
        s.get(A, &key(2, 11, 1, None), renders(&calls, "a2"));
        assert_eq!(s.kept.lock().expect("lock").hosts.len(), 1);
        // A request of generation 1 finishing after generation 2 was seen keeps nothing.
        assert_eq!(text(s.get(B, &k1, renders(&calls, "b1"))), "b1");
        assert_eq!(text(s.get(B, &k1, renders(&calls, "b1 again"))), "b1 again");
    }

    #[test]
    fn errors_and_unknown_profiles_are_not_kept() {
        let s = Rendered::default();
        let k = key(1, 11, 1, None);
        let e: Option<Result<Vec<u8>, &str>> = s.get(A, &k, || Some(Err("bad cmdline")));
        assert_eq!(e, Some(Err("bad cmdline")));
        assert_eq!(s.get::<&str>(A, &k, || None), None);
        let calls = Cell::new(0);
        assert_eq!(text(s.get(A, &k, renders(&calls, "ok"))), "ok");
        assert_eq!(calls.get(), 1);
    }
}
