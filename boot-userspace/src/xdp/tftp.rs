//! TFTP in the kernel, userspace half: hot files copied into the TC program's slot array,
//! and the transfers the TFTP service hands over registered in its transfer map (see the
//! ABI's `tftp` module for the layout and the program for what it answers).
//!
//! A hot file's copy is keyed by its content (SHA-256): a file that changes on disk is read
//! again into free slots and new transfers get the new copy, while transfers already
//! registered keep the slots of the copy they started with. A copy's slots return to the
//! free list when the last transfer holding it ends, so the kernel never reads a slot being
//! rewritten. Whether a transfer's file is still the hot copy is decided by the file's
//! identity as opened (device, inode, size, modification time): a file replaced since it
//! was read stays in userspace until the next refresh reads it again.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, PoisonError, Weak},
};

use aya::maps::{Array, HashMap, MapData, PerCpuArray};
use bootfabric_abi::tftp::{
    slots_for, Slot, Xfer, XferKey, CHUNK_BYTES, MAP_TFTP_CHUNKS, MAP_TFTP_STATS, MAP_TFTP_XFERS,
    SLOT_BYTES, TSTAT_ANSWERED, TSTAT_BYTES, TSTAT_COUNT, TSTAT_FAILED, TSTAT_PASSED_LAST,
    TSTAT_PASSED_OUT_OF_ORDER, WINDOW_MAX,
};
use prometheus::{
    core::{Collector, Desc},
    proto::MetricFamily,
    IntCounterVec, Opts,
};
use sha2::{Digest, Sha256};
use tracing::{info, warn};

/// Why the kernel path could not be set up or could not take a file.
#[derive(Debug, thiserror::Error)]
pub enum KernelTftpError {
    /// A map the program needs is missing or of the wrong kind.
    #[error("{map}: {reason}")]
    Map {
        /// The map's name.
        map: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not enough free slots for the file (`tftp.kernel_bytes`).
    #[error("{name}: {size} bytes do not fit the {free} free bytes of tftp.kernel_bytes")]
    Full {
        /// The file's name.
        name: String,
        /// Its size.
        size: u64,
        /// Free bytes left.
        free: u64,
    },
    /// Writing a map failed.
    #[error("{map}: {source}")]
    Write {
        /// The map.
        map: &'static str,
        /// Why.
        source: aya::maps::MapError,
    },
}

/// The file as it was opened: a copy is served only for the file it was read from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdent {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileIdent {
    /// The identity of a file from its metadata.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        Self {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.len(),
            mtime_ns: i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec()),
        }
    }
}

/// One hot copy in the slot array. Its slots go back to the free list when it is dropped:
/// after it left the file table and the last transfer holding it ended.
#[derive(Debug)]
pub struct HotCopy {
    first_slot: u32,
    slots: u32,
    size: u64,
    sha256: [u8; 32],
    /// The free list apart from the file table's lock: a copy is often dropped while that
    /// lock is held (a file table entry replaced or removed).
    owner: Weak<Mutex<FreeList>>,
}

impl HotCopy {
    /// The file's size.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for HotCopy {
    fn drop(&mut self) {
        if let Some(free) = self.owner.upgrade() {
            free.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .release(self.first_slot, self.slots);
        }
    }
}

/// Free slots as sorted, merged ranges `(first, count)`: files take consecutive slots.
#[derive(Debug, Default)]
struct FreeList(Vec<(u32, u32)>);

impl FreeList {
    fn new(slots: u32) -> Self {
        Self(if slots == 0 { vec![] } else { vec![(0, slots)] })
    }

    /// First fit.
    fn take(&mut self, n: u32) -> Option<u32> {
        let i = self.0.iter().position(|&(_, c)| c >= n)?;
        let (first, count) = self.0[i];
        if count == n {
            self.0.remove(i);
        } else {
            self.0[i] = (first + n, count - n);
        }
        Some(first)
    }

    fn release(&mut self, first: u32, n: u32) {
        let i = self.0.partition_point(|&(f, _)| f < first);
        self.0.insert(i, (first, n));
        // Merge with the neighbours.
        let mut merged: Vec<(u32, u32)> = Vec::with_capacity(self.0.len());
        for &(f, c) in &self.0 {
            match merged.last_mut() {
                Some((lf, lc)) if *lf + *lc == f => *lc += c,
                _ => merged.push((f, c)),
            }
        }
        self.0 = merged;
    }

    fn free_slots(&self) -> u64 {
        self.0.iter().map(|&(_, c)| u64::from(c)).sum()
    }
}

/// A hot file: its name under the root, the identity it was read with, its copy.
#[derive(Debug)]
struct HotFile {
    ident: FileIdent,
    copy: Arc<HotCopy>,
}

type Xfers = Arc<Mutex<HashMap<MapData, XferKey, Xfer>>>;

/// The kernel's TFTP path, as the TFTP service holds it.
///
/// Each map has its own lock: loading a file writes megabytes of slots, and the transfers'
/// registrations and progress reads must not wait behind it. Locks are taken in the order
/// `files`, `chunks`, `free`; `xfers` is never held with another.
pub struct KernelTftp {
    files: Mutex<BTreeMap<String, HotFile>>,
    chunks: Mutex<Array<MapData, Slot>>,
    xfers: Xfers,
    free: Arc<Mutex<FreeList>>,
    stats: Arc<Mutex<PerCpuArray<MapData, u64>>>,
    ttl: u8,
    total_slots: u32,
}

/// What the kernel did for one registered transfer, as last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Highest block sent (by either side).
    pub sent: u64,
    /// Blocks the kernel sent.
    pub answered: u64,
    /// Monotonic nanoseconds of the kernel's last block (0: none).
    pub last_ns: u64,
}

/// A transfer the kernel carries; dropping it takes it back (the entry is deleted, the copy
/// released).
pub struct Registration {
    key: XferKey,
    /// The entry as written, for [`Registration::advance`].
    entry: Xfer,
    xfers: Xfers,
    _copy: Arc<HotCopy>,
}

impl Registration {
    /// Userspace sent blocks up to `sent` itself (the last block, or one the kernel could
    /// not build): the kernel must know, or it would answer the ACK of a block it believes
    /// newest, and after 65,536 blocks that number names a block again.
    pub fn advance(&mut self, sent: u64) {
        let mut xfers = self.xfers.lock().unwrap_or_else(PoisonError::into_inner);
        let now = xfers.get(&self.key, 0).ok();
        if now.is_some_and(|x| x.sent >= sent) {
            return;
        }
        self.entry.sent = sent;
        if let Some(x) = now {
            self.entry.answered = x.answered;
            self.entry.last_ns = x.last_ns;
        }
        if xfers.insert(self.key, self.entry, 0).is_err() {
            // Cannot keep it in step: take the transfer back whole.
            let _ = xfers.remove(&self.key);
        }
    }

    /// What the kernel has done so far; `None` if the entry is gone.
    pub fn progress(&self) -> Option<Progress> {
        let xfers = self.xfers.lock().unwrap_or_else(PoisonError::into_inner);
        xfers.get(&self.key, 0).ok().map(|x| Progress {
            sent: x.sent,
            answered: x.answered,
            last_ns: x.last_ns,
        })
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut xfers = self.xfers.lock().unwrap_or_else(PoisonError::into_inner);
        let _ = xfers.remove(&self.key);
    }
}

/// Why a transfer is not handed to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decline {
    /// The file is not in the hot list, or could not be loaded.
    NotHot,
    /// The file on disk is not the copy in the kernel (changed since it was read).
    Changed,
    /// A window larger than `WINDOW_MAX`, a block size over the frame or not a multiple of 4.
    Options,
    /// The transfer map is full.
    Full,
}

impl Decline {
    /// Label value in metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::NotHot => "not_hot",
            Self::Changed => "changed",
            Self::Options => "options",
            Self::Full => "map_full",
        }
    }
}

impl KernelTftp {
    /// Takes the program's maps from `ebpf` (the slot array sized at load).
    pub fn new(ebpf: &mut aya::Ebpf) -> Result<Self, KernelTftpError> {
        let map_err = |map: &'static str| {
            move |e: aya::maps::MapError| KernelTftpError::Map {
                map,
                reason: e.to_string(),
            }
        };
        let missing = |map: &'static str| KernelTftpError::Map {
            map,
            reason: "not in the object".to_owned(),
        };
        let chunks: Array<MapData, Slot> = Array::try_from(
            ebpf.take_map(MAP_TFTP_CHUNKS)
                .ok_or_else(|| missing(MAP_TFTP_CHUNKS))?,
        )
        .map_err(map_err(MAP_TFTP_CHUNKS))?;
        let xfers: HashMap<MapData, XferKey, Xfer> = HashMap::try_from(
            ebpf.take_map(MAP_TFTP_XFERS)
                .ok_or_else(|| missing(MAP_TFTP_XFERS))?,
        )
        .map_err(map_err(MAP_TFTP_XFERS))?;
        let stats: PerCpuArray<MapData, u64> = PerCpuArray::try_from(
            ebpf.take_map(MAP_TFTP_STATS)
                .ok_or_else(|| missing(MAP_TFTP_STATS))?,
        )
        .map_err(map_err(MAP_TFTP_STATS))?;
        let total_slots = chunks.len();
        // The socket would send with the kernel's default TTL; the frames the program
        // builds must carry the same.
        let ttl = std::fs::read_to_string("/proc/sys/net/ipv4/ip_default_ttl")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(64);
        Ok(Self {
            files: Mutex::new(BTreeMap::new()),
            chunks: Mutex::new(chunks),
            xfers: Arc::new(Mutex::new(xfers)),
            free: Arc::new(Mutex::new(FreeList::new(total_slots))),
            stats: Arc::new(Mutex::new(stats)),
            ttl,
            total_slots,
        })
    }

    /// Bytes the slot array holds.
    pub fn capacity_bytes(&self) -> u64 {
        u64::from(self.total_slots) * CHUNK_BYTES as u64
    }

    /// Reads each of `names` under `root` whose file changed (or was never read) and
    /// publishes its copy; names no longer listed are dropped. Blocking: file reads and
    /// map writes. Returns one line per file that could not be loaded.
    pub fn refresh(&self, root: &Path, names: &[String]) -> Vec<String> {
        let mut problems = Vec::new();
        self.file_table().retain(|n, _| names.contains(n));
        for name in names {
            // Opened as the TFTP service opens it: confined to the root (no symlink out, a
            // regular file), so the kernel never holds what a read request could not get.
            let source = match crate::model::files::open(root, name) {
                Ok(s) => s,
                Err(e) => {
                    problems.push(format!("{name}: {e}"));
                    self.file_table().remove(name);
                    continue;
                }
            };
            let ident = FileIdent::of(source.metadata());
            if self
                .file_table()
                .get(name)
                .is_some_and(|f| f.ident == ident)
            {
                continue;
            }
            let path = root.join(name);
            match self.load(name, &path, source) {
                Ok((ident, copy)) => {
                    info!(file = %name, bytes = copy.size, slots = copy.slots, "TFTP: file loaded into the kernel");
                    self.file_table()
                        .insert(name.clone(), HotFile { ident, copy });
                }
                Err(e) => {
                    warn!(file = %name, error = %e, "TFTP: file stays in userspace");
                    self.file_table().remove(name);
                    problems.push(e.to_string());
                }
            }
        }
        problems
    }

    /// Reads the opened file (`path` names it in errors) into free slots, or shares the copy
    /// of a file with the same bytes. The identity returned is the one read: a file that changed while it was
    /// read is caught by the identity check before any transfer uses it.
    fn load(
        &self,
        name: &str,
        path: &Path,
        source: crate::model::files::Source,
    ) -> Result<(FileIdent, Arc<HotCopy>), KernelTftpError> {
        let read_err = |source| KernelTftpError::Read {
            path: path.to_owned(),
            source,
        };
        let ident = FileIdent::of(source.metadata());
        let size = source.size();
        let file = source.into_file();
        let slots = slots_for(size);
        let free = self.free_list().free_slots();
        if slots > free {
            return Err(KernelTftpError::Full {
                name: name.to_owned(),
                size,
                free: free * CHUNK_BYTES as u64,
            });
        }
        let mut bytes = Vec::with_capacity(size as usize);
        std::io::Read::read_to_end(&mut std::io::Read::take(&*file, size), &mut bytes)
            .map_err(read_err)?;
        if bytes.len() as u64 != size {
            return Err(read_err(std::io::Error::other("changed while it was read")));
        }
        let sha256: [u8; 32] = Sha256::digest(&bytes).into();
        if let Some(same) = self.file_table().values().find(|f| f.copy.sha256 == sha256) {
            return Ok((ident, Arc::clone(&same.copy)));
        }
        let slots = slots as u32;
        let first = {
            let mut free = self.free_list();
            free.take(slots).ok_or(KernelTftpError::Full {
                name: name.to_owned(),
                size,
                free: free.free_slots() * CHUNK_BYTES as u64,
            })?
        };
        let mut slot = Box::new(Slot {
            bytes: [0; SLOT_BYTES],
        });
        // Held for the writes only; the slots are this copy's alone until it is published.
        let mut chunks = self.chunks.lock().unwrap_or_else(PoisonError::into_inner);
        for i in 0..slots {
            let start = i as usize * CHUNK_BYTES;
            let end = (start + SLOT_BYTES).min(bytes.len());
            slot.bytes.fill(0);
            if start < end {
                slot.bytes[..end - start].copy_from_slice(&bytes[start..end]);
            }
            if let Err(source) = chunks.set(first + i, slot.as_ref(), 0) {
                self.free_list().release(first, slots);
                return Err(KernelTftpError::Write {
                    map: MAP_TFTP_CHUNKS,
                    source,
                });
            }
        }
        Ok((
            ident,
            Arc::new(HotCopy {
                first_slot: first,
                slots,
                size,
                sha256,
                owner: Arc::downgrade(&self.free),
            }),
        ))
    }

    /// The hot copy of `name`, if the file opened (`meta`) is the one it was read from.
    pub fn copy_of(&self, name: &str, meta: &std::fs::Metadata) -> Result<Arc<HotCopy>, Decline> {
        let files = self.file_table();
        let f = files.get(name).ok_or(Decline::NotHot)?;
        if f.ident != FileIdent::of(meta) {
            return Err(Decline::Changed);
        }
        Ok(Arc::clone(&f.copy))
    }

    /// Hands a transfer to the kernel: from now on it answers the ACK of block `sent` with
    /// the next `window` blocks. Call it before block `sent` goes out, so that its ACK
    /// cannot reach the socket first.
    #[allow(clippy::too_many_arguments)]
    pub fn register(
        &self,
        key: XferKey,
        copy: Arc<HotCopy>,
        blksize: u16,
        window: u16,
        blocks: u64,
        sent: u64,
    ) -> Result<Registration, Decline> {
        let window = u8::try_from(window)
            .ok()
            .filter(|w| (1..=WINDOW_MAX).contains(&u16::from(*w)))
            .ok_or(Decline::Options)?;
        let entry = Xfer {
            sent,
            answered: 0,
            last_ns: 0,
            blocks,
            size: copy.size,
            first_slot: copy.first_slot,
            slots: copy.slots,
            blksize,
            ttl: self.ttl,
            window,
            _pad: [0; 4],
        };
        if self
            .xfers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(key, entry, 0)
            .is_err()
        {
            return Err(Decline::Full);
        }
        Ok(Registration {
            key,
            entry,
            xfers: Arc::clone(&self.xfers),
            _copy: copy,
        })
    }

    /// Files in the kernel now, with their sizes.
    pub fn files(&self) -> Vec<(String, u64)> {
        self.file_table()
            .iter()
            .map(|(n, f)| (n.clone(), f.copy.size))
            .collect()
    }

    /// The program's counters as Prometheus metrics.
    pub fn collector(&self) -> Result<KernelTftpStats, prometheus::Error> {
        KernelTftpStats::new(Arc::clone(&self.stats))
    }

    fn file_table(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, HotFile>> {
        self.files.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn free_list(&self) -> std::sync::MutexGuard<'_, FreeList> {
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Exports the TC program's per-CPU counters, summed, at each scrape.
pub struct KernelTftpStats {
    stats: Arc<Mutex<PerCpuArray<MapData, u64>>>,
    blocks: IntCounterVec,
    bytes: IntCounterVec,
    passed: IntCounterVec,
}

impl KernelTftpStats {
    fn new(stats: Arc<Mutex<PerCpuArray<MapData, u64>>>) -> Result<Self, prometheus::Error> {
        Ok(Self {
            stats,
            blocks: IntCounterVec::new(
                Opts::new(
                    "bootfabric_tftp_kernel_blocks_total",
                    "DATA blocks the kernel sent in answer to in-order ACKs of handed-over transfers.",
                ),
                &[],
            )?,
            bytes: IntCounterVec::new(
                Opts::new(
                    "bootfabric_tftp_kernel_bytes_total",
                    "File bytes the kernel sent in those blocks.",
                ),
                &[],
            )?,
            passed: IntCounterVec::new(
                Opts::new(
                    "bootfabric_tftp_kernel_passed_total",
                    "Packets of handed-over transfers the kernel left to userspace, by reason: out_of_order (duplicate or stale ACK), last_block, failed (a helper failed; the timer recovers).",
                ),
                &["reason"],
            )?,
        })
    }

    fn read(&self) -> [u64; TSTAT_COUNT as usize] {
        let stats = self.stats.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = [0u64; TSTAT_COUNT as usize];
        for (i, v) in out.iter_mut().enumerate() {
            if let Ok(per_cpu) = stats.get(&(i as u32), 0) {
                *v = per_cpu.iter().sum();
            }
        }
        out
    }
}

impl Collector for KernelTftpStats {
    fn desc(&self) -> Vec<&Desc> {
        let mut d = self.blocks.desc();
        d.extend(self.bytes.desc());
        d.extend(self.passed.desc());
        d
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let v = self.read();
        // Counters are set to the kernel's totals: reset and add, as the XDP counters do.
        self.blocks.reset();
        self.blocks
            .with_label_values(&[] as &[&str])
            .inc_by(v[TSTAT_ANSWERED as usize]);
        self.bytes.reset();
        self.bytes
            .with_label_values(&[] as &[&str])
            .inc_by(v[TSTAT_BYTES as usize]);
        self.passed.reset();
        for (reason, i) in [
            ("out_of_order", TSTAT_PASSED_OUT_OF_ORDER),
            ("last_block", TSTAT_PASSED_LAST),
            ("failed", TSTAT_FAILED),
        ] {
            self.passed
                .with_label_values(&[reason])
                .inc_by(v[i as usize]);
        }
        let mut out = self.blocks.collect();
        out.extend(self.bytes.collect());
        out.extend(self.passed.collect());
        out
    }
}

#[cfg(test)]
mod tests {
    use super::FreeList;

    #[test]
    fn the_free_list_takes_first_fit_and_merges_what_returns() {
        let mut f = FreeList::new(10);
        assert_eq!(f.take(3), Some(0));
        assert_eq!(f.take(3), Some(3));
        assert_eq!(f.take(5), None);
        assert_eq!(f.take(4), Some(6));
        assert_eq!(f.free_slots(), 0);
        f.release(3, 3);
        assert_eq!(f.take(4), None, "3 free slots are not 4");
        f.release(0, 3);
        assert_eq!(f.0, vec![(0, 6)], "neighbours merge");
        f.release(6, 4);
        assert_eq!(f.0, vec![(0, 10)]);
        assert_eq!(f.take(10), Some(0));
    }
}
