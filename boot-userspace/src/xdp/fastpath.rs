//! The DHCP fast path's maps and event ring: I/O only. What the maps should hold is decided
//! by the DHCP service (`services::dhcp::templates`), which hands it over as
//! [`MapContents`]; this module writes it into the kernel's maps and reads back the events of
//! exchanges the kernel answered.
//!
//! Both halves sit behind narrow traits, [`FastPathMaps`] and [`FastPathEvents`], so the
//! service's logic is unit-tested without root against the in-memory fakes of [`fake`]
//! (test builds only); [`AyaMaps`] and [`AyaEvents`] are the kernel's.

use std::{
    collections::{BTreeMap, BTreeSet, HashSet},
    future::Future,
    io,
    net::Ipv4Addr,
    os::fd::{AsFd, OwnedFd},
    pin::Pin,
    sync::{Arc, Mutex, OnceLock, PoisonError},
};

use aya::maps::{
    lpm_trie::{Key as LpmKey, LpmTrie},
    HashMap, MapData, RingBuf,
};
use bootfabric_abi::dhcp::{
    Event, HostEntry, MacKey, Template, TemplateKey, DHCPACK, DHCPOFFER, MAP_EVENTS, MAP_HOSTS,
    MAP_RELAYS, MAP_TEMPLATES,
};
use dhcproto::v4::MessageType;
use tokio::io::{unix::AsyncFd, Interest};

use crate::{fabric::Iface, model::inventory::Mac};

/// One fabric interface as the fast path sees it.
#[derive(Clone, Debug)]
pub struct FabricIface {
    /// Interface name.
    pub name: String,
    /// Its index.
    pub ifindex: u32,
    /// The server's address on it.
    pub server_ip: Ipv4Addr,
    /// Its hardware address.
    pub mac: [u8; 6],
}

impl FabricIface {
    /// The fast path's view of `iface`, if the fabric resolved everything it needs: index,
    /// IPv4 address and MAC.
    pub fn complete(iface: &Iface) -> Option<Self> {
        Some(Self {
            name: iface.name.clone(),
            ifindex: iface.index?,
            server_ip: iface.ipv4?,
            mac: iface.mac?,
        })
    }
}

/// What the kernel's maps should hold after a sync.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MapContents {
    /// Reserved hosts the kernel answers, by MAC.
    pub hosts: BTreeMap<[u8; 6], HostEntry>,
    /// Reply templates.
    pub templates: Vec<(TemplateKey, Box<Template>)>,
    /// Relay trie entries as (prefix length, network address).
    pub relays: BTreeSet<(u32, [u8; 4])>,
}

/// What a sync wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyncReport {
    /// Hosts the kernel answers.
    pub hosts: usize,
    /// Templates written.
    pub templates: usize,
    /// Hosts removed since the last sync.
    pub removed: usize,
    /// Entries of the relay trie.
    pub relays: usize,
}

/// Errors reaching the maps.
#[derive(Debug, thiserror::Error)]
pub enum FastPathError {
    /// The object lacks a map.
    #[error("the XDP object has no map {0}")]
    NoMap(&'static str),
    /// The DHCP server's state lock was poisoned (a thread panicked holding it).
    #[error("the DHCP server's state is poisoned")]
    Poisoned,
    /// A map operation failed.
    #[error("XDP map {map}: {source}")]
    Map {
        /// Map name.
        map: &'static str,
        /// Why.
        source: aya::maps::MapError,
    },
}

/// The fast path's maps, as their owner (the DHCP service) writes them.
pub trait FastPathMaps: Send {
    /// Makes the maps hold `want`. Entries that went are deleted first (hosts, relays: a
    /// missing entry only sends its requests to userspace, which answers right; a stale host
    /// entry would keep being ACKed by the kernel, a moved or deleted reservation handed to
    /// two machines), then new and changed entries are written, then templates no host
    /// entry names any more are deleted. An error may leave the maps half written: the
    /// owner then [clears](Self::clear) them.
    fn sync(&mut self, want: &MapContents) -> Result<SyncReport, FastPathError>;
    /// Empties the host and template maps: the kernel passes every request to userspace
    /// until the next sync. What a failed sync falls back to.
    fn clear(&mut self) -> Result<(), FastPathError>;
}

/// A future the event source resolves, boxed so the trait stays object safe.
pub type Wakeup<'a> = Pin<Box<dyn Future<Output = io::Result<()>> + Send + 'a>>;

/// The events of exchanges the kernel answered. Shared: the service's reader task drains on
/// its timer and wake-ups, and a reload drains too, so that it judges who holds an address
/// on every lease the kernel has given, not only on those the reader has come to.
pub trait FastPathEvents: Send + Sync {
    /// Moves every event written so far into `out`. Safe from any thread at any time; two
    /// drains never return the same event.
    fn drain(&self, out: &mut Vec<FastPathEvent>);
    /// Resolves when the producer asks for an early drain (the kernel does when a quarter
    /// of the ring is full); a reader also drains on a timer. Meant for one reader.
    fn wakeup(&self) -> Wakeup<'_>;
}

/// The fast path handed to its owner: the maps, the event source (until its reader takes
/// it) and the interfaces the program is attached to.
pub struct FastPath {
    /// The maps.
    pub maps: Box<dyn FastPathMaps>,
    /// The event source (none in tests of the maps alone).
    pub events: Option<Arc<dyn FastPathEvents>>,
    /// Interfaces the program is attached to.
    pub fabric: Vec<FabricIface>,
}

impl FastPath {
    /// Takes the fast path's maps out of `ebpf`.
    pub fn new(ebpf: &mut aya::Ebpf, fabric: Vec<FabricIface>) -> Result<Self, FastPathError> {
        Ok(Self {
            maps: Box::new(AyaMaps {
                hosts: take(ebpf, MAP_HOSTS, HashMap::try_from)?,
                templates: take(ebpf, MAP_TEMPLATES, HashMap::try_from)?,
                relays: take(ebpf, MAP_RELAYS, LpmTrie::try_from)?,
            }),
            events: Some(Arc::new(AyaEvents {
                ready: OnceLock::new(),
                ring: Mutex::new(take(ebpf, MAP_EVENTS, RingBuf::try_from)?),
            })),
            fabric,
        })
    }
}

fn take<T>(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    conv: impl FnOnce(aya::maps::Map) -> Result<T, aya::maps::MapError>,
) -> Result<T, FastPathError> {
    let map = ebpf.take_map(name).ok_or(FastPathError::NoMap(name))?;
    conv(map).map_err(|source| FastPathError::Map { map: name, source })
}

/// The kernel's maps.
pub struct AyaMaps {
    hosts: HashMap<MapData, MacKey, HostEntry>,
    templates: HashMap<MapData, TemplateKey, Template>,
    relays: LpmTrie<MapData, [u8; 4], u8>,
}

impl FastPathMaps for AyaMaps {
    fn sync(&mut self, want: &MapContents) -> Result<SyncReport, FastPathError> {
        let err = |map| move |source| FastPathError::Map { map, source };
        let stale_relays: Vec<LpmKey<[u8; 4]>> = self
            .relays
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.relays.contains(&(k.prefix_len(), k.data())))
            .collect();
        for k in &stale_relays {
            self.relays.remove(k).map_err(err(MAP_RELAYS))?;
        }
        for &(prefix, addr) in &want.relays {
            self.relays
                .insert(&LpmKey::new(prefix, addr), 1, 0)
                .map_err(err(MAP_RELAYS))?;
        }
        let stale_hosts: Vec<MacKey> = self
            .hosts
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !want.hosts.contains_key(&k.mac))
            .collect();
        for k in &stale_hosts {
            self.hosts.remove(k).map_err(err(MAP_HOSTS))?;
        }
        for (k, t) in &want.templates {
            self.templates
                .insert(k, t.as_ref(), 0)
                .map_err(err(MAP_TEMPLATES))?;
        }
        for (mac, h) in &want.hosts {
            self.hosts
                .insert(mac_key(*mac), h, 0)
                .map_err(err(MAP_HOSTS))?;
        }
        let live: HashSet<TemplateKey> = want.templates.iter().map(|(k, _)| *k).collect();
        let stale: Vec<TemplateKey> = self
            .templates
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !live.contains(k))
            .collect();
        for k in &stale {
            let _ = self.templates.remove(k);
        }
        Ok(SyncReport {
            hosts: want.hosts.len(),
            templates: want.templates.len(),
            removed: stale_hosts.len(),
            relays: want.relays.len(),
        })
    }

    fn clear(&mut self) -> Result<(), FastPathError> {
        // Hosts first: a host entry is what makes the kernel answer.
        let hosts: Vec<MacKey> = self.hosts.keys().filter_map(Result::ok).collect();
        for k in &hosts {
            self.hosts.remove(k).map_err(|source| FastPathError::Map {
                map: MAP_HOSTS,
                source,
            })?;
        }
        let templates: Vec<TemplateKey> = self.templates.keys().filter_map(Result::ok).collect();
        for k in &templates {
            self.templates
                .remove(k)
                .map_err(|source| FastPathError::Map {
                    map: MAP_TEMPLATES,
                    source,
                })?;
        }
        Ok(())
    }
}

fn mac_key(mac: [u8; 6]) -> MacKey {
    MacKey { mac, _pad: [0; 2] }
}

/// The kernel's event ring. Readiness is watched through a duplicate of its descriptor,
/// registered with the reactor on the first [`FastPathEvents::wakeup`] (inside the runtime of
/// the task that reads it); the ring itself sits behind a lock, so any thread may drain it
/// (a reload does, and so does the side-by-side test harness, which has no reactor).
pub struct AyaEvents {
    ready: OnceLock<AsyncFd<OwnedFd>>,
    ring: Mutex<RingBuf<MapData>>,
}

impl AyaEvents {
    fn ready(&self) -> io::Result<&AsyncFd<OwnedFd>> {
        if let Some(fd) = self.ready.get() {
            return Ok(fd);
        }
        let dup = self
            .ring
            .lock()
            .map_err(|_| io::Error::other("the fast path's event ring lock is poisoned"))?
            .as_fd()
            .try_clone_to_owned()?;
        // SAFETY: the AsyncFd owns the duplicate, which stays open and refers to the ring's
        // file description until the AsyncFd is dropped.
        let fd = unsafe { AsyncFd::register_with_interest(dup, Interest::READABLE) }?;
        Ok(self.ready.get_or_init(|| fd))
    }
}

impl FastPathEvents for AyaEvents {
    fn drain(&self, out: &mut Vec<FastPathEvent>) {
        // A poisoned lock still guards a ring the kernel keeps writing: read it all the same.
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(item) = ring.next() {
            match FastPathEvent::decode(&item) {
                Some(ev) => out.push(ev),
                None => tracing::debug!(len = item.len(), "unreadable fast path event"),
            }
        }
    }

    fn wakeup(&self) -> Wakeup<'_> {
        Box::pin(async move {
            // Readiness is cleared before the caller drains: anything written after the
            // drain wakes the reader again.
            self.ready()?.readable().await?.clear_ready();
            Ok(())
        })
    }
}

/// An answered exchange, decoded from the ring buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FastPathEvent {
    /// The client.
    pub mac: Mac,
    /// OFFER or ACK.
    pub kind: MessageType,
    /// The address.
    pub ip: Ipv4Addr,
    /// Ingress interface index.
    pub ifindex: u32,
    /// The lease time the reply granted, seconds (0 when it carried none).
    pub lease_secs: u32,
}

impl FastPathEvent {
    /// Decodes one ring buffer record; `None` for a record of the wrong size or kind.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < std::mem::size_of::<Event>() {
            return None;
        }
        // SAFETY: Event is repr(C) of integers and byte arrays (every bit pattern valid);
        // the length was checked and read_unaligned copes with any alignment.
        let e: Event = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
        let kind = match e.kind {
            DHCPOFFER => MessageType::Offer,
            DHCPACK => MessageType::Ack,
            _ => return None,
        };
        Some(Self {
            mac: Mac(e.mac),
            kind,
            ip: Ipv4Addr::from(e.ip),
            ifindex: e.ifindex,
            lease_secs: e.lease_secs,
        })
    }
}

/// In-memory maps and events for unit tests of the fast path's owner.
#[cfg(test)]
pub mod fake {
    use std::{
        collections::{BTreeMap, BTreeSet, HashMap, VecDeque},
        sync::{Arc, Mutex},
    };

    use bootfabric_abi::dhcp::{HostEntry, Template, TemplateKey};

    use super::{FastPathError, FastPathEvent, FastPathEvents, FastPathMaps, MapContents};
    use super::{SyncReport, Wakeup};

    /// What the fake kernel holds; shared so a test reads it after the owner took the maps.
    #[derive(Debug, Default)]
    pub struct FakeState {
        /// Hosts by MAC.
        pub hosts: BTreeMap<[u8; 6], HostEntry>,
        /// Templates by key.
        pub templates: HashMap<TemplateKey, Template>,
        /// Relay trie entries.
        pub relays: BTreeSet<(u32, [u8; 4])>,
        /// Syncs so far.
        pub syncs: usize,
        /// Clears so far.
        pub clears: usize,
        /// A sync fails (a full map) when it comes to insert this many-th host (0: the first).
        pub fail_after_hosts: Option<usize>,
    }

    /// Maps in memory, with [`FastPathMaps::sync`]'s order (stale hosts out, then writes).
    #[derive(Clone, Default)]
    pub struct FakeMaps(pub Arc<Mutex<FakeState>>);

    impl FastPathMaps for FakeMaps {
        fn sync(&mut self, want: &MapContents) -> Result<SyncReport, FastPathError> {
            let mut s = self.0.lock().map_err(|_| FastPathError::Poisoned)?;
            s.syncs += 1;
            let before = s.hosts.len();
            s.hosts.retain(|m, _| want.hosts.contains_key(m));
            let removed = before - s.hosts.len();
            s.relays = want.relays.clone();
            for (k, t) in &want.templates {
                s.templates.insert(*k, **t);
            }
            for (i, (mac, h)) in want.hosts.iter().enumerate() {
                if s.fail_after_hosts == Some(i) {
                    // As a full kernel map refuses an insert: what was written stays.
                    return Err(FastPathError::NoMap("fake: hosts map full"));
                }
                s.hosts.insert(*mac, *h);
            }
            s.templates
                .retain(|k, _| want.templates.iter().any(|(w, _)| w == k));
            Ok(SyncReport {
                hosts: want.hosts.len(),
                templates: want.templates.len(),
                removed,
                relays: want.relays.len(),
            })
        }

        fn clear(&mut self) -> Result<(), FastPathError> {
            let mut s = self.0.lock().map_err(|_| FastPathError::Poisoned)?;
            s.clears += 1;
            s.hosts.clear();
            s.templates.clear();
            Ok(())
        }
    }

    /// Events a test pushes; `wakeup` resolves once something is queued.
    #[derive(Clone, Default)]
    pub struct FakeEvents {
        queue: Arc<Mutex<VecDeque<FastPathEvent>>>,
        notify: Arc<tokio::sync::Notify>,
    }

    impl FakeEvents {
        /// Queues `ev` as if the kernel had answered, and wakes the reader.
        pub fn push(&self, ev: FastPathEvent) {
            if let Ok(mut q) = self.queue.lock() {
                q.push_back(ev);
            }
            self.notify.notify_one();
        }
    }

    impl FastPathEvents for FakeEvents {
        fn drain(&self, out: &mut Vec<FastPathEvent>) {
            if let Ok(mut q) = self.queue.lock() {
                out.extend(q.drain(..));
            }
        }

        fn wakeup(&self) -> Wakeup<'_> {
            let notify = std::sync::Arc::clone(&self.notify);
            Box::pin(async move {
                notify.notified().await;
                Ok(())
            })
        }
    }
}
