//! A read-only ISO 9660 reader that pulls a kernel and an initrd out of an installer image
//! without mounting it.
//!
//! Implements what a path lookup needs from ECMA-119 (ISO 9660), Joliet (Microsoft's
//! Supplementary Volume Descriptor with UCS-2 names), SUSP 1.12 (`SP`, `CE`, `ST`) and RRIP
//! 1.12 / IEEE P1282 (`NM`, `RE`, `CL`). Not implemented: multi-extent files (refused), symlinks
//! (`SL`), multi-session images (only the first volume descriptor set is read).
//!
//! The image comes from the network and may be hostile: every location and length read from it
//! is checked against the image size and against fixed budgets before it is used, so a bad
//! image gives an [`IsoError`], never a panic, an unbounded allocation or an endless loop.
//!
//! Pure: record and System Use parsing (`parse_record`, `parse_susp_area`, the name
//! helpers). Not pure: [`Iso`], which seeks and reads the image.

#![forbid(unsafe_code)]

use std::fmt;
use std::io::{self, Read, Seek, SeekFrom, Write};

/// ECMA-119 fixes the logical sector at 2048 bytes whatever the logical block size: volume
/// descriptors sit in sectors, and directory records never cross a sector.
const SECTOR: u64 = 2048;
/// Sectors 0 to 15 are the system area (boot loaders, partition tables).
const FIRST_DESCRIPTOR: u64 = 16;
/// Real images have 3 to 5 descriptors; the bound only stops a hostile chain.
const MAX_DESCRIPTORS: u64 = 64;
/// Installer directories are a few KiB; this leaves room for huge package pools.
const MAX_DIR_BYTES: u64 = 16 << 20;
/// Directory bytes one lookup may read, so a path through large (or looping) directories
/// cannot make one lookup read gigabytes.
const MAX_DIR_BYTES_PER_LOOKUP: u64 = 64 << 20;
const MAX_DEPTH: usize = 64;
const MAX_RECORDS_PER_LOOKUP: u64 = 1 << 20;
/// A name of 255 bytes needs at most one or two continuation areas; more is a loop.
const MAX_CE_PER_RECORD: u32 = 16;
const MAX_CE_PER_LOOKUP: u32 = 1 << 16;
/// libisofs may write continuation areas spanning blocks (large ACLs), but not this large.
const MAX_CE_BYTES: u64 = 64 << 10;
/// Longer than any name a Linux file system can hold; past it a name is cut short.
const MAX_NAME: usize = 1024;
const DIR_CHUNK: u64 = 16 * SECTOR;
const COPY_CHUNK: u64 = 1 << 20;
/// Names shown in a not-found error; the rest are only counted.
const LISTED_NAMES: usize = 40;

const FLAG_DIRECTORY: u8 = 1 << 1;
const FLAG_ASSOCIATED: u8 = 1 << 2;
const FLAG_MULTI_EXTENT: u8 = 1 << 7;

const NM_CONTINUE: u8 = 1 << 0;
const NM_CURRENT: u8 = 1 << 1;
const NM_PARENT: u8 = 1 << 2;

/// Why the image or a path in it cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    /// Reading the image, or writing a copied file, failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done ("reading directory /boot").
        context: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The bytes are not an ISO 9660 image at all.
    #[error("not an ISO 9660 image ({reason})")]
    NotIso {
        /// What is missing ("no CD001 at sector 16").
        reason: String,
    },
    /// The image is damaged (truncated, corrupt or hostile) at `what`.
    #[error("{what}: {problem}")]
    Corrupt {
        /// The structure at fault ("directory /boot", "volume descriptor set").
        what: String,
        /// What is wrong with it ("extent past the end of the image").
        problem: String,
    },
    /// The path asked for is not a usable absolute path.
    #[error("{path}: invalid path ({reason})")]
    BadPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A path component does not exist.
    #[error("{path}: not found; {dir} has: {names}")]
    NotFound {
        /// The path asked for.
        path: String,
        /// The directory in which a component was missing.
        dir: String,
        /// What that directory holds instead.
        names: Names,
    },
    /// A path goes through a file as if it were a directory.
    #[error("{path}: {file} is a file, not a directory")]
    NotADirectory {
        /// The path asked for.
        path: String,
        /// The leading part of it that is a file.
        file: String,
    },
    /// A file was asked for and the path names a directory.
    #[error("{path} is a directory, not a file")]
    IsADirectory {
        /// The path asked for.
        path: String,
    },
    /// The file (or a directory on its path) is split in several extents.
    #[error("{path} is in several extents (files over 4 GiB are not supported)")]
    MultiExtent {
        /// The path of the multi-extent entry.
        path: String,
    },
}

/// The names of a directory, as a not-found error shows them: the first few, and a count.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Names {
    /// The first names, in directory order.
    pub shown: Vec<String>,
    /// How many names the directory has in all.
    pub total: usize,
}

impl Names {
    fn add(&mut self, name: &[u8]) {
        self.total += 1;
        if self.shown.len() < LISTED_NAMES {
            self.shown.push(String::from_utf8_lossy(name).into_owned());
        }
    }
}

impl fmt::Display for Names {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.total == 0 {
            return f.write_str("nothing");
        }
        f.write_str(&self.shown.join(", "))?;
        let hidden = self.total.saturating_sub(self.shown.len());
        if hidden > 0 {
            write!(f, " and {hidden} more")?;
        }
        Ok(())
    }
}

/// Where a file's bytes are in the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IsoFile {
    /// Byte offset of the first byte in the image.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

/// An open ISO 9660 image.
#[derive(Debug)]
pub struct Iso<R> {
    reader: R,
    image_len: u64,
    block: u64,
    root: Extent,
    naming: Naming,
}

/// Which directory tree lookups walk and how its names are read. One tree for the whole image:
/// the Joliet tree has its own directories, so it cannot be paired record by record with the
/// primary one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Naming {
    /// The primary tree with Rock Ridge names; records without `NM` fall back to [`Self::Plain`]
    /// matching. `skip` is the SUSP `SP` skip length.
    RockRidge { skip: u8 },
    /// The Joliet tree, exact names.
    Joliet,
    /// The primary tree, ISO 9660 identifiers matched without regard to ASCII case.
    Plain,
}

/// Bytes of the image, already checked to lie inside it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Extent {
    start: u64,
    len: u64,
}

/// One directory record, borrowed from the directory's bytes (ECMA-119 9.1).
#[derive(Debug, PartialEq, Eq)]
struct Record<'a> {
    ext_attr_len: u8,
    location: u32,
    size: u32,
    flags: u8,
    ident: &'a [u8],
    system_use: &'a [u8],
}

/// What Rock Ridge says about one record.
#[derive(Debug, Default, PartialEq, Eq)]
struct RockRidge {
    name: Option<Vec<u8>>,
    /// The last `NM` had no CONTINUE flag, so later ones are not part of the name.
    name_done: bool,
    /// `RE`: a directory moved here from deep down; it is reached through its `CL` instead.
    relocated: bool,
    /// `CL`: this file record stands for the directory at this block.
    child_link: Option<u32>,
}

/// A SUSP `CE` entry: where the System Use entries go on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Continuation {
    block: u32,
    offset: u32,
    len: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    File,
    Dir,
    /// A Rock Ridge child link to the directory at this block.
    ChildLink(u32),
}

/// A directory record as the lookup sees it: its name in the tree's naming, and its target.
#[derive(Debug)]
struct Entry {
    name: Vec<u8>,
    fold_case: bool,
    kind: Kind,
    multi_extent: bool,
    location: u32,
    ext_attr_len: u8,
    size: u32,
}

impl Entry {
    fn matches(&self, want: &[u8]) -> bool {
        if self.fold_case {
            self.name.eq_ignore_ascii_case(want)
        } else {
            self.name == want
        }
    }
}

/// What one lookup may still spend, so a hostile image ends it early.
#[derive(Debug, Default)]
struct Budget {
    records: u64,
    dir_bytes: u64,
    continuations: u32,
}

/// What a path resolved to.
enum Resolved {
    Dir(Extent),
    File(IsoFile),
}

impl<R: Read + Seek> Iso<R> {
    /// Reads the volume descriptors (Primary, and a Joliet Supplementary one if present).
    ///
    /// Lookups then use Rock Ridge names when the primary tree has them (a SUSP `SP` entry in
    /// the root), else the Joliet tree when there is one, else plain ISO 9660 identifiers.
    pub fn open(mut reader: R) -> Result<Self, IsoError> {
        let image_len = reader
            .seek(SeekFrom::End(0))
            .map_err(|source| IsoError::Io {
                context: "finding the image size".into(),
                source,
            })?;
        let (primary, joliet) = read_descriptors(&mut reader, image_len)?;
        let mut iso = Self {
            reader,
            image_len,
            block: primary.block,
            root: primary.root,
            naming: Naming::Plain,
        };
        if let Some(skip) = iso.susp_skip()? {
            iso.naming = Naming::RockRidge { skip };
        } else if let Some(joliet) = joliet {
            // A broken Joliet descriptor only matters when its tree is the one used.
            let joliet = joliet?;
            iso.block = joliet.block;
            iso.root = joliet.root;
            iso.naming = Naming::Joliet;
        }
        Ok(iso)
    }

    /// Looks up an absolute path ("/boot/x86_64/loader/linux").
    ///
    /// Names are matched by Rock Ridge NM name first (exact, case-sensitive) when the image has
    /// Rock Ridge, a record without NM falling back to its plain identifier; else by the Joliet
    /// tree's name (exact); else by the plain ISO 9660 identifier (case-insensitive, with the
    /// ";1" version and a trailing "." stripped). A path through a non-directory, or to a
    /// directory, is an error.
    pub fn find(&mut self, path: &str) -> Result<IsoFile, IsoError> {
        match self.resolve(path)? {
            Resolved::File(file) => Ok(file),
            Resolved::Dir(_) => Err(IsoError::IsADirectory { path: path.into() }),
        }
    }

    /// Names in a directory (for error messages such as "not found; /boot has: kernel,
    /// initrd"), in directory order, named as [`Self::find`] matches them.
    pub fn list(&mut self, dir: &str) -> Result<Vec<String>, IsoError> {
        let extent = match self.resolve(dir)? {
            Resolved::Dir(extent) => extent,
            Resolved::File(_) => {
                return Err(IsoError::NotADirectory {
                    path: dir.into(),
                    file: dir.into(),
                })
            }
        };
        let mut names: Vec<String> = Vec::new();
        let mut budget = Budget::default();
        self.scan(extent, dir, &mut budget, |entry| {
            let name = String::from_utf8_lossy(&entry.name);
            // The extents of a multi-extent file are records of the same name in a row.
            if names.last().map(String::as_str) != Some(&*name) {
                names.push(name.into_owned());
            }
            None::<()>
        })?;
        Ok(names)
    }

    /// Copies a file's bytes to `out`; returns the byte count.
    pub fn copy_to(&mut self, file: &IsoFile, out: &mut impl Write) -> Result<u64, IsoError> {
        if file.size == 0 {
            return Ok(0);
        }
        // `IsoFile` can be built by hand, so it is checked here and not only in `find`.
        if !self.inside(file.offset, file.size) {
            return Err(IsoError::Corrupt {
                what: format!("file at byte {} ({} bytes)", file.offset, file.size),
                problem: format!("past the end of the image ({} bytes)", self.image_len),
            });
        }
        self.seek(file.offset, || "seeking to the file data".into())?;
        let mut buf = vec![0u8; usize::try_from(COPY_CHUNK.min(file.size)).unwrap_or(0)];
        let mut done = 0u64;
        while done < file.size {
            let want = usize::try_from((file.size - done).min(COPY_CHUNK)).unwrap_or(0);
            let Some(chunk) = buf.get_mut(..want) else {
                break;
            };
            self.reader
                .read_exact(chunk)
                .map_err(|source| IsoError::Io {
                    context: format!("reading file data at byte {}", file.offset + done),
                    source,
                })?;
            out.write_all(chunk).map_err(|source| IsoError::Io {
                context: format!("writing the copy after {done} bytes"),
                source,
            })?;
            done += want as u64;
        }
        Ok(done)
    }

    /// Walks `path` from the root, one directory scan per component.
    fn resolve(&mut self, path: &str) -> Result<Resolved, IsoError> {
        let components = split_path(path)?;
        let mut budget = Budget::default();
        let mut dir = self.root;
        let mut dir_label = String::from("/");
        for (i, component) in components.iter().enumerate() {
            let mut names = Names::default();
            let found = self.scan(dir, &dir_label, &mut budget, |entry| {
                if entry.matches(component.as_bytes()) {
                    return Some(entry);
                }
                names.add(&entry.name);
                None
            })?;
            let label = format!("/{}", components.get(..=i).unwrap_or_default().join("/"));
            let Some(entry) = found else {
                return Err(IsoError::NotFound {
                    path: path.into(),
                    dir: dir_label,
                    names,
                });
            };
            if entry.multi_extent {
                return Err(IsoError::MultiExtent { path: label });
            }
            let last = i + 1 == components.len();
            match entry.kind {
                Kind::File if last => return self.file(&entry, &label).map(Resolved::File),
                Kind::File => {
                    return Err(IsoError::NotADirectory {
                        path: path.into(),
                        file: label,
                    })
                }
                Kind::Dir => {
                    dir = self.dir_extent(entry.location, entry.ext_attr_len, entry.size, &label)?
                }
                Kind::ChildLink(block) => dir = self.child_link(block, &label)?,
            }
            dir_label = label;
        }
        Ok(Resolved::Dir(dir))
    }

    /// Calls `visit` on each record of the directory but "." and ".." and associated files,
    /// until it returns something.
    fn scan<T>(
        &mut self,
        dir: Extent,
        label: &str,
        budget: &mut Budget,
        mut visit: impl FnMut(Entry) -> Option<T>,
    ) -> Result<Option<T>, IsoError> {
        budget.dir_bytes += dir.len;
        if budget.dir_bytes > MAX_DIR_BYTES_PER_LOOKUP {
            return Err(corrupt_dir(
                label,
                "the lookup reads too many directory bytes",
            ));
        }
        let end = dir.start + dir.len;
        let mut buf = Vec::new();
        let mut pos = dir.start;
        while pos < end {
            // Chunks end on a sector boundary, so a record that does not fit in its chunk
            // crosses a sector, which ECMA-119 forbids.
            let chunk_end = end.min(pos - pos % SECTOR + DIR_CHUNK);
            buf.resize(usize::try_from(chunk_end - pos).unwrap_or(0), 0);
            read_at(&mut self.reader, pos, &mut buf, || {
                format!("reading directory {label}")
            })?;
            let mut at = 0usize;
            while let Some(&len) = buf.get(at) {
                let abs = pos + at as u64;
                if len == 0 {
                    // Zero bytes pad a sector after its last record.
                    let next_sector = abs - abs % SECTOR + SECTOR;
                    at = usize::try_from(next_sector - pos).unwrap_or(usize::MAX);
                    continue;
                }
                let offset = abs - dir.start;
                let Some(bytes) = buf.get(at..at + usize::from(len)) else {
                    return Err(corrupt_dir(
                        label,
                        format!("record at byte {offset} crosses a sector boundary"),
                    ));
                };
                at += usize::from(len);
                budget.records += 1;
                if budget.records > MAX_RECORDS_PER_LOOKUP {
                    return Err(corrupt_dir(label, "the lookup scans too many records"));
                }
                let Some(record) = parse_record(bytes) else {
                    return Err(corrupt_dir(
                        label,
                        format!("record at byte {offset} is malformed"),
                    ));
                };
                if record.ident == [0] || record.ident == [1] {
                    continue;
                }
                // An associated file (a resource fork) shares its name with the real file.
                if record.flags & FLAG_ASSOCIATED != 0 {
                    continue;
                }
                let Some(entry) = self.entry(&record, label, budget)? else {
                    continue;
                };
                if let Some(found) = visit(entry) {
                    return Ok(Some(found));
                }
            }
            pos = chunk_end;
        }
        Ok(None)
    }

    /// Names a record in the tree's naming; `None` for records the tree hides.
    fn entry(
        &mut self,
        record: &Record<'_>,
        label: &str,
        budget: &mut Budget,
    ) -> Result<Option<Entry>, IsoError> {
        let mut kind = if record.flags & FLAG_DIRECTORY != 0 {
            Kind::Dir
        } else {
            Kind::File
        };
        let (name, fold_case) = match self.naming {
            Naming::Plain => (plain_name(record.ident), true),
            Naming::Joliet => (joliet_name(record.ident), false),
            Naming::RockRidge { skip } => {
                let area = record
                    .system_use
                    .get(usize::from(skip)..)
                    .unwrap_or_default();
                let rr = self.rock_ridge(area, label, budget)?;
                if rr.relocated {
                    return Ok(None);
                }
                if let Some(block) = rr.child_link {
                    kind = Kind::ChildLink(block);
                }
                match rr.name {
                    Some(name) => (name, false),
                    None => (plain_name(record.ident), true),
                }
            }
        };
        Ok(Some(Entry {
            name,
            fold_case,
            kind,
            multi_extent: record.flags & FLAG_MULTI_EXTENT != 0,
            location: record.location,
            ext_attr_len: record.ext_attr_len,
            size: record.size,
        }))
    }

    /// Reads a record's System Use entries, following continuation areas.
    fn rock_ridge(
        &mut self,
        area: &[u8],
        label: &str,
        budget: &mut Budget,
    ) -> Result<RockRidge, IsoError> {
        let mut rr = RockRidge::default();
        let mut next = parse_susp_area(area, &mut rr);
        let mut hops = 0u32;
        let mut buf = Vec::new();
        while let Some(ce) = next {
            hops += 1;
            budget.continuations += 1;
            if hops > MAX_CE_PER_RECORD || budget.continuations > MAX_CE_PER_LOOKUP {
                return Err(corrupt_dir(
                    label,
                    "too many Rock Ridge continuation areas (a loop?)",
                ));
            }
            let start = u64::from(ce.block) * self.block + u64::from(ce.offset);
            let len = u64::from(ce.len);
            if len > MAX_CE_BYTES || !self.inside(start, len) {
                return Err(corrupt_dir(
                    label,
                    "Rock Ridge continuation area past the end of the image",
                ));
            }
            buf.resize(usize::try_from(len).unwrap_or(0), 0);
            read_at(&mut self.reader, start, &mut buf, || {
                format!("reading a Rock Ridge continuation area in directory {label}")
            })?;
            next = parse_susp_area(&buf, &mut rr);
        }
        Ok(rr)
    }

    /// Reads the root's "." record: SUSP is in use if its System Use starts with `SP`.
    fn susp_skip(&mut self) -> Result<Option<u8>, IsoError> {
        let len = self.root.len.min(SECTOR - self.root.start % SECTOR);
        let mut buf = vec![0u8; usize::try_from(len).unwrap_or(0)];
        read_at(&mut self.reader, self.root.start, &mut buf, || {
            "reading the root directory".into()
        })?;
        let Some(&len) = buf.first() else {
            return Ok(None);
        };
        let Some(dot) = buf.get(..usize::from(len)).and_then(parse_record) else {
            return Ok(None);
        };
        Ok(parse_sp(dot.system_use))
    }

    /// Follows a Rock Ridge `CL`: the directory's own "." record gives its size.
    fn child_link(&mut self, block: u32, label: &str) -> Result<Extent, IsoError> {
        let start = u64::from(block) * self.block;
        if !self.inside(start, 1) {
            return Err(corrupt_dir(label, "child link past the end of the image"));
        }
        let mut buf =
            vec![0u8; usize::try_from(self.image_len.min(start + 256) - start).unwrap_or(0)];
        read_at(&mut self.reader, start, &mut buf, || {
            format!("reading directory {label}")
        })?;
        let dot = buf
            .first()
            .and_then(|&len| buf.get(..usize::from(len)))
            .and_then(parse_record)
            .filter(|dot| dot.ident == [0] && dot.flags & FLAG_DIRECTORY != 0)
            .ok_or_else(|| corrupt_dir(label, "child link does not lead to a directory"))?;
        self.dir_extent(dot.location, dot.ext_attr_len, dot.size, label)
    }

    fn dir_extent(
        &self,
        location: u32,
        ext_attr_len: u8,
        size: u32,
        label: &str,
    ) -> Result<Extent, IsoError> {
        directory_extent(
            self.block,
            self.image_len,
            location,
            ext_attr_len,
            size,
            label,
        )
    }

    fn file(&self, entry: &Entry, label: &str) -> Result<IsoFile, IsoError> {
        let offset = (u64::from(entry.location) + u64::from(entry.ext_attr_len)) * self.block;
        let size = u64::from(entry.size);
        // Empty files get an arbitrary location; it is never read.
        if size > 0 && !self.inside(offset, size) {
            return Err(IsoError::Corrupt {
                what: format!("file {label}"),
                problem: "extent past the end of the image".into(),
            });
        }
        Ok(IsoFile { offset, size })
    }

    fn inside(&self, start: u64, len: u64) -> bool {
        start
            .checked_add(len)
            .is_some_and(|end| end <= self.image_len)
    }

    fn seek(&mut self, offset: u64, context: impl FnOnce() -> String) -> Result<(), IsoError> {
        self.reader
            .seek(SeekFrom::Start(offset))
            .map(drop)
            .map_err(|source| IsoError::Io {
                context: context(),
                source,
            })
    }
}

/// The parts of a volume descriptor a lookup needs.
#[derive(Debug)]
struct Descriptor {
    block: u64,
    root: Extent,
}

/// Joliet's first descriptor is what [`Iso::open`] may fall back to; its errors are returned
/// inside, to be raised only if it is used.
type Descriptors = (Descriptor, Option<Result<Descriptor, IsoError>>);

/// Reads the volume descriptor set: the first primary descriptor and the first Joliet one.
fn read_descriptors<R: Read + Seek>(
    reader: &mut R,
    image_len: u64,
) -> Result<Descriptors, IsoError> {
    let mut primary = None;
    let mut joliet = None;
    let mut vd = [0u8; SECTOR as usize];
    for sector in FIRST_DESCRIPTOR..FIRST_DESCRIPTOR + MAX_DESCRIPTORS {
        let at = sector * SECTOR;
        let first = sector == FIRST_DESCRIPTOR;
        if at + SECTOR > image_len {
            return Err(if first {
                IsoError::NotIso {
                    reason: format!("{image_len} bytes, too short to hold sector 16"),
                }
            } else {
                corrupt(
                    "volume descriptor set",
                    format!("image ends at sector {sector}, before the set terminator"),
                )
            });
        }
        read_at(reader, at, &mut vd, || {
            format!("reading the volume descriptor at sector {sector}")
        })?;
        if vd.get(1..6) != Some(b"CD001") {
            return Err(if first {
                IsoError::NotIso {
                    reason: "no CD001 at sector 16".into(),
                }
            } else {
                corrupt(
                    "volume descriptor set",
                    format!("sector {sector} has no CD001 and no terminator came before it"),
                )
            });
        }
        match vd.first() {
            Some(1) if primary.is_none() => {
                primary = Some(parse_descriptor(
                    &vd,
                    image_len,
                    "primary volume descriptor",
                )?)
            }
            Some(2) if joliet.is_none() && is_joliet(&vd) => {
                joliet = Some(parse_descriptor(&vd, image_len, "Joliet volume descriptor"))
            }
            Some(255) => {
                let primary = primary.ok_or_else(|| IsoError::NotIso {
                    reason: "no primary volume descriptor".into(),
                })?;
                return Ok((primary, joliet));
            }
            _ => {}
        }
    }
    Err(corrupt(
        "volume descriptor set",
        format!("no terminator within {MAX_DESCRIPTORS} descriptors"),
    ))
}

/// Reads the logical block size and the root directory of a primary or supplementary
/// descriptor (ECMA-119 8.4).
fn parse_descriptor(vd: &[u8], image_len: u64, what: &str) -> Result<Descriptor, IsoError> {
    let block = le_u16(vd, 128).map_or(0, u64::from);
    if !(512..=SECTOR).contains(&block) || !block.is_power_of_two() {
        return Err(corrupt(
            what,
            format!("logical block size {block} is not 512, 1024 or 2048"),
        ));
    }
    let root = vd
        .get(156..190)
        .and_then(parse_record)
        .filter(|root| root.flags & FLAG_DIRECTORY != 0)
        .ok_or_else(|| corrupt(what, "root directory record is malformed"))?;
    let root = directory_extent(
        block,
        image_len,
        root.location,
        root.ext_attr_len,
        root.size,
        "/",
    )?;
    Ok(Descriptor { block, root })
}

/// Joliet marks its descriptor with a UCS-2 level escape sequence: `%/@`, `%/C` or `%/E`.
fn is_joliet(vd: &[u8]) -> bool {
    matches!(vd.get(88..91), Some([0x25, 0x2f, 0x40 | 0x43 | 0x45]))
}

/// Where a directory's bytes are, refusing what would overrun the image or a memory bound.
fn directory_extent(
    block: u64,
    image_len: u64,
    location: u32,
    ext_attr_len: u8,
    size: u32,
    label: &str,
) -> Result<Extent, IsoError> {
    let len = u64::from(size);
    if len > MAX_DIR_BYTES {
        return Err(corrupt_dir(
            label,
            format!("{len} bytes, over the {} MiB limit", MAX_DIR_BYTES >> 20),
        ));
    }
    let start = (u64::from(location) + u64::from(ext_attr_len)) * block;
    if start.checked_add(len).is_none_or(|end| end > image_len) {
        return Err(corrupt_dir(label, "extent past the end of the image"));
    }
    Ok(Extent { start, len })
}

/// Parses one directory record; `bytes` is exactly the record (its length is byte 0).
fn parse_record(bytes: &[u8]) -> Option<Record<'_>> {
    let ident_len = usize::from(*bytes.get(32)?);
    if ident_len == 0 || usize::from(*bytes.first()?) != bytes.len() {
        return None;
    }
    let ident = bytes.get(33..33 + ident_len)?;
    // A pad byte keeps the System Use area on an even offset.
    let system_use_at = 33 + ident_len + usize::from(ident_len % 2 == 0);
    Some(Record {
        ext_attr_len: *bytes.get(1)?,
        location: le_u32(bytes, 2)?,
        size: le_u32(bytes, 10)?,
        flags: *bytes.get(25)?,
        ident,
        system_use: bytes.get(system_use_at..).unwrap_or_default(),
    })
}

/// The SUSP skip length, if `system_use` (of the root's "." record) starts with an `SP` entry.
fn parse_sp(system_use: &[u8]) -> Option<u8> {
    match system_use.get(..7)? {
        [b'S', b'P', 7, 1, 0xbe, 0xef, skip] => Some(*skip),
        _ => None,
    }
}

/// Reads the System Use entries in `area` into `rr`; returns the continuation, if any.
fn parse_susp_area(area: &[u8], rr: &mut RockRidge) -> Option<Continuation> {
    let mut next = None;
    let mut at = 0usize;
    while let Some(&[s0, s1, len, _version]) = area.get(at..at + 4) {
        let len = usize::from(len);
        // Shorter than a header: padding, or garbage that cannot be walked past.
        let Some(entry) = area.get(at..at + len).filter(|_| len >= 4) else {
            break;
        };
        let data = entry.get(4..).unwrap_or_default();
        match (s0, s1) {
            (b'S', b'T') => break,
            (b'C', b'E') => next = Continuation::parse(entry),
            (b'N', b'M') => rr.push_name(data),
            (b'R', b'E') => rr.relocated = true,
            (b'C', b'L') => rr.child_link = le_u32(entry, 4),
            _ => {}
        }
        at += len;
    }
    next
}

impl Continuation {
    /// Reads a whole `CE` entry, header included (SUSP 5.1).
    fn parse(entry: &[u8]) -> Option<Self> {
        Some(Self {
            block: le_u32(entry, 4)?,
            offset: le_u32(entry, 12)?,
            len: le_u32(entry, 20)?,
        })
    }
}

impl RockRidge {
    /// Adds one `NM` entry's data (flags byte, then name bytes).
    fn push_name(&mut self, data: &[u8]) {
        if self.name_done {
            return;
        }
        let flags = data.first().copied().unwrap_or(0);
        let part = data.get(1..).unwrap_or_default();
        let name = self.name.get_or_insert_with(Vec::new);
        if flags & NM_CURRENT != 0 {
            *name = b".".to_vec();
        } else if flags & NM_PARENT != 0 {
            *name = b"..".to_vec();
        } else {
            let room = MAX_NAME.saturating_sub(name.len());
            name.extend_from_slice(part.get(..room.min(part.len())).unwrap_or_default());
        }
        self.name_done = flags & NM_CONTINUE == 0 || flags & (NM_CURRENT | NM_PARENT) != 0;
    }
}

/// An ISO 9660 identifier as a name: "KERNEL.;1" is "KERNEL".
fn plain_name(ident: &[u8]) -> Vec<u8> {
    let name = strip_version(ident);
    name.strip_suffix(b".").unwrap_or(name).to_vec()
}

/// A Joliet identifier (UCS-2 big-endian) as UTF-8, version stripped.
fn joliet_name(ident: &[u8]) -> Vec<u8> {
    let units = ident.chunks_exact(2).map(|pair| {
        u16::from_be_bytes([
            pair.first().copied().unwrap_or(0),
            pair.get(1).copied().unwrap_or(0),
        ])
    });
    let name: String = char::decode_utf16(units)
        .map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER))
        .collect();
    strip_version(name.as_bytes()).to_vec()
}

/// Drops a `;<digits>` file version.
fn strip_version(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|&b| b == b';') {
        Some(semi)
            if name
                .get(semi + 1..)
                .unwrap_or_default()
                .iter()
                .all(u8::is_ascii_digit) =>
        {
            name.get(..semi).unwrap_or(name)
        }
        _ => name,
    }
}

/// The components of an absolute path; "." and empty ones are dropped.
fn split_path(path: &str) -> Result<Vec<&str>, IsoError> {
    let bad = |reason| IsoError::BadPath {
        path: path.into(),
        reason,
    };
    let Some(rest) = path.strip_prefix('/') else {
        return Err(bad("not absolute"));
    };
    let components: Vec<&str> = rest
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if components.contains(&"..") {
        return Err(bad("\"..\" is not allowed"));
    }
    if components.len() > MAX_DEPTH {
        return Err(bad("more than 64 components"));
    }
    Ok(components)
}

fn read_at<R: Read + Seek>(
    reader: &mut R,
    offset: u64,
    buf: &mut [u8],
    context: impl FnOnce() -> String,
) -> Result<(), IsoError> {
    reader
        .seek(SeekFrom::Start(offset))
        .and_then(|_| reader.read_exact(buf))
        .map_err(|source| IsoError::Io {
            context: format!("{} at byte {offset}", context()),
            source,
        })
}

fn le_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

/// The little-endian half of a both-byte-order field (ECMA-119 7.3.3).
fn le_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

fn corrupt(what: impl Into<String>, problem: impl Into<String>) -> IsoError {
    IsoError::Corrupt {
        what: what.into(),
        problem: problem.into(),
    }
}

fn corrupt_dir(label: &str, problem: impl Into<String>) -> IsoError {
    corrupt(format!("directory {label}"), problem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::io::Cursor;
    use std::path::Path;
    use std::process::Command;

    /// Rock Ridge and Joliet, as installer images are usually made.
    const RR_JOLIET: &[&str] = &["-R", "-J"];
    /// Joliet without Rock Ridge (xorriso writes Rock Ridge unless told not to).
    const JOLIET: &[&str] = &["--norock", "-J"];
    /// Bare ISO 9660 level 1 names (8.3, upper case).
    const PLAIN: &[&str] = &["--norock"];
    /// Bare ISO 9660 level 3 names of up to 31 characters.
    const PLAIN_LONG: &[&str] = &["--norock", "-iso-level", "3", "-l"];
    const EVERY_NAMING: [&[&str]; 4] = [RR_JOLIET, JOLIET, PLAIN, PLAIN_LONG];

    /// Builds an image of `files` (path, content) with `xorriso -as mkisofs <args>`.
    fn build(files: &[(&str, Vec<u8>)], args: &[&str]) -> Vec<u8> {
        let work = tempfile::tempdir().expect("tempdir");
        let tree = work.path().join("tree");
        fs::create_dir(&tree).expect("tree");
        for (path, content) in files {
            let path = tree.join(path.trim_start_matches('/'));
            fs::create_dir_all(path.parent().expect("parent")).expect("parent dir");
            fs::write(&path, content).expect("write file");
        }
        build_tree(&tree, args)
    }

    fn build_tree(tree: &Path, args: &[&str]) -> Vec<u8> {
        let out = tree.with_extension("iso");
        let run = Command::new("xorriso")
            .args(["-as", "mkisofs"])
            .args(args)
            .arg("-o")
            .arg(&out)
            .arg(tree)
            .output();
        let run = match run {
            Ok(run) => run,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                panic!("xorriso is missing: install xorriso (cargo xtask setup)")
            }
            Err(e) => panic!("running xorriso: {e}"),
        };
        assert!(
            run.status.success(),
            "xorriso {args:?} failed: {}",
            String::from_utf8_lossy(&run.stderr)
        );
        fs::read(&out).expect("read image")
    }

    /// Deterministic noise (xorshift64*), so a failure is reproducible.
    fn noise(seed: u64, len: usize) -> Vec<u8> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..len)
            .map(|_| {
                state ^= state >> 12;
                state ^= state << 25;
                state ^= state >> 27;
                (state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
            })
            .collect()
    }

    fn open(image: &[u8]) -> Iso<Cursor<Vec<u8>>> {
        Iso::open(Cursor::new(image.to_vec())).expect("open image")
    }

    fn read(iso: &mut Iso<Cursor<Vec<u8>>>, path: &str) -> Vec<u8> {
        let file = iso
            .find(path)
            .unwrap_or_else(|e| panic!("find {path}: {e}"));
        let mut out = Vec::new();
        let copied = iso.copy_to(&file, &mut out).expect("copy");
        assert_eq!(copied, file.size, "{path}");
        out
    }

    fn kairos() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            // Not a multiple of 2048, so the last sector is partial.
            ("boot/kernel", noise(1, 300 * 1024 + 123)),
            ("boot/initrd", noise(2, 150 * 2048)),
            ("boot/empty", Vec::new()),
        ]
    }

    fn leap_micro() -> Vec<(&'static str, Vec<u8>)> {
        vec![
            ("boot/x86_64/loader/linux", noise(3, 200 * 1024 + 7)),
            ("boot/x86_64/loader/initrd", noise(4, 100 * 2048)),
            ("boot/x86_64/efi", noise(5, 4096)),
            ("README", b"read me".to_vec()),
        ]
    }

    fn assert_layout(files: &[(&str, Vec<u8>)], args: &[&str]) {
        let mut iso = open(&build(files, args));
        for (path, content) in files {
            let path = format!("/{path}");
            assert!(read(&mut iso, &path) == *content, "{path} with {args:?}");
        }
    }

    /// Byte offset and length of a record in the primary tree, found by its plain name.
    fn primary_record(image: &[u8], dir: Extent, name: &str) -> (usize, Extent) {
        let mut at = dir.start as usize;
        let end = (dir.start + dir.len) as usize;
        while at < end {
            let len = usize::from(image[at]);
            if len == 0 {
                at = (at / 2048 + 1) * 2048;
                continue;
            }
            let record = parse_record(&image[at..at + len]).expect("record");
            if plain_name(record.ident).eq_ignore_ascii_case(name.as_bytes()) {
                let start = u64::from(record.location) * 2048;
                let len = u64::from(record.size);
                return (at, Extent { start, len });
            }
            at += len;
        }
        panic!("no record {name}");
    }

    fn primary_root(image: &[u8]) -> Extent {
        let root = parse_record(&image[16 * 2048 + 156..16 * 2048 + 190]).expect("root");
        Extent {
            start: u64::from(root.location) * 2048,
            len: u64::from(root.size),
        }
    }

    /// Points the record at `at` at another extent (both byte orders).
    fn repoint(image: &mut [u8], at: usize, target: Extent) {
        let block = (target.start / 2048) as u32;
        let size = target.len as u32;
        image[at + 2..at + 6].copy_from_slice(&block.to_le_bytes());
        image[at + 6..at + 10].copy_from_slice(&block.to_be_bytes());
        image[at + 10..at + 14].copy_from_slice(&size.to_le_bytes());
        image[at + 14..at + 18].copy_from_slice(&size.to_be_bytes());
    }

    #[test]
    fn kairos_layout_is_copied_byte_for_byte_in_every_naming() {
        for args in EVERY_NAMING {
            assert_layout(&kairos(), args);
        }
    }

    #[test]
    fn leap_micro_layout_is_copied_byte_for_byte_in_every_naming() {
        for args in EVERY_NAMING {
            assert_layout(&leap_micro(), args);
        }
    }

    #[test]
    fn the_richest_naming_is_used() {
        let files = kairos();
        let naming = |args| open(&build(&files, args)).naming;
        assert!(matches!(naming(RR_JOLIET), Naming::RockRidge { .. }));
        assert!(matches!(naming(&["-R"]), Naming::RockRidge { .. }));
        assert_eq!(naming(JOLIET), Naming::Joliet);
        assert_eq!(naming(PLAIN), Naming::Plain);
    }

    #[test]
    fn long_rock_ridge_names_are_found() {
        // 250 bytes do not fit in one directory record: the name goes on in a CE area.
        let long = "k".repeat(120);
        let longer = format!("{}-vmlinuz", "x".repeat(241));
        let files = [
            (format!("boot/{long}"), noise(6, 5000)),
            (format!("boot/{longer}"), noise(7, 3000)),
        ];
        let files: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
        let mut iso = open(&build(&files, RR_JOLIET));
        assert_eq!(read(&mut iso, &format!("/boot/{long}")), files[0].1);
        assert_eq!(read(&mut iso, &format!("/boot/{longer}")), files[1].1);
        let mut listed = iso.list("/boot").expect("list");
        listed.sort();
        assert_eq!(listed, vec![long, longer]);
    }

    fn deep_path(prefix: &str, depth: usize) -> String {
        let dirs: Vec<String> = (0..depth).map(|i| format!("{prefix}{i}")).collect();
        format!("{}/vmlinuz", dirs.join("/"))
    }

    #[test]
    fn deep_paths_are_found_in_every_naming() {
        // Joliet drops paths over 240 characters, so its names stay short.
        let short = deep_path("d", 30);
        let long = deep_path("level", 40);
        let files = vec![
            (short.as_str(), noise(8, 7000)),
            (long.as_str(), noise(16, 7000)),
        ];
        for args in EVERY_NAMING {
            let mut iso = open(&build(&files, args));
            assert_eq!(read(&mut iso, &format!("/{short}")), files[0].1, "{args:?}");
            if args != JOLIET {
                assert_eq!(read(&mut iso, &format!("/{long}")), files[1].1, "{args:?}");
            }
        }
    }

    #[test]
    fn relocated_deep_directories_are_followed_through_child_links() {
        let path = deep_path("level", 12);
        let files = vec![
            (path.as_str(), noise(9, 7000)),
            ("boot/kernel", noise(10, 100)),
        ];
        let image = build(&files, &["-R", "-rr_reloc_dir", "RR_MOVED"]);
        // The plain tree has the deep directories moved; only CL leads back to them.
        primary_record(&image, primary_root(&image), "RR_MOVED");
        let mut iso = open(&image);
        assert_eq!(read(&mut iso, &format!("/{path}")), files[0].1);
        let deepest_dir = format!("/{}", path.trim_end_matches("/vmlinuz"));
        assert_eq!(iso.list(&deepest_dir).expect("list"), vec!["vmlinuz"]);
    }

    #[test]
    fn rock_ridge_names_are_case_sensitive() {
        let files = vec![
            ("boot/Kernel", noise(11, 3000)),
            ("boot/kernel", noise(12, 3000)),
            ("Boot/INITRD", noise(13, 3000)),
        ];
        let mut iso = open(&build(&files, RR_JOLIET));
        assert_eq!(read(&mut iso, "/boot/Kernel"), files[0].1);
        assert_eq!(read(&mut iso, "/boot/kernel"), files[1].1);
        assert_eq!(read(&mut iso, "/Boot/INITRD"), files[2].1);
        assert!(matches!(
            iso.find("/boot/KERNEL"),
            Err(IsoError::NotFound { .. })
        ));
        assert!(matches!(
            iso.find("/boot/INITRD"),
            Err(IsoError::NotFound { .. })
        ));
    }

    #[test]
    fn joliet_names_are_exact() {
        let files = vec![("boot/Kernel", noise(14, 3000))];
        let mut iso = open(&build(&files, JOLIET));
        assert_eq!(read(&mut iso, "/boot/Kernel"), files[0].1);
        assert!(matches!(
            iso.find("/boot/kernel"),
            Err(IsoError::NotFound { .. })
        ));
        assert_eq!(iso.list("/boot").expect("list"), vec!["Kernel"]);
    }

    #[test]
    fn plain_names_ignore_case_version_and_trailing_dot() {
        let files = kairos();
        let mut iso = open(&build(&files, PLAIN));
        assert_eq!(
            iso.list("/boot").expect("list"),
            vec!["EMPTY", "INITRD", "KERNEL"]
        );
        assert_eq!(read(&mut iso, "/BOOT/Kernel"), files[0].1);
        assert_eq!(read(&mut iso, "/boot/initrd"), files[1].1);
    }

    #[test]
    fn a_directory_spanning_several_sectors_is_read_whole() {
        let files: Vec<(String, Vec<u8>)> = (0..300)
            .map(|i| {
                (
                    format!("pool/package-{i:03}.rpm"),
                    noise(100 + i, 64 + i as usize),
                )
            })
            .collect();
        let files: Vec<(&str, Vec<u8>)> =
            files.iter().map(|(p, c)| (p.as_str(), c.clone())).collect();
        for args in EVERY_NAMING {
            let image = build(&files, args);
            let pool = primary_record(&image, primary_root(&image), "pool").1;
            assert!(pool.len >= 4 * SECTOR, "{args:?}: only {} bytes", pool.len);
            let mut iso = open(&image);
            let listed = iso.list("/pool").expect("list");
            assert_eq!(listed.len(), 300, "{args:?}");
            for i in [0, 150, 299] {
                // Plain names are mangled ("PACKAGE_000.RPM"), so they are taken as listed.
                let path = if args == RR_JOLIET || args == JOLIET {
                    format!("/pool/package-{i:03}.rpm")
                } else {
                    format!("/pool/{}", listed[i])
                };
                assert_eq!(read(&mut iso, &path), files[i].1, "{args:?} {path}");
            }
        }
    }

    #[test]
    fn a_missing_file_error_lists_the_directory() {
        for args in [RR_JOLIET, JOLIET] {
            let mut iso = open(&build(&kairos(), args));
            let err = iso.find("/boot/vmlinuz").expect_err("missing");
            assert_eq!(
                err.to_string(),
                "/boot/vmlinuz: not found; /boot has: empty, initrd, kernel",
                "{args:?}"
            );
            let err = iso.find("/isolinux/vmlinuz").expect_err("missing");
            assert_eq!(err.to_string(), "/isolinux/vmlinuz: not found; / has: boot");
        }
        let mut iso = open(&build(&kairos(), PLAIN));
        let err = iso.find("/boot/vmlinuz").expect_err("missing");
        assert_eq!(
            err.to_string(),
            "/boot/vmlinuz: not found; /boot has: EMPTY, INITRD, KERNEL"
        );
    }

    #[test]
    fn a_long_directory_listing_is_cut_short_in_errors() {
        let names: Vec<String> = (0..100).map(|i| format!("boot/f{i:03}")).collect();
        let files: Vec<(&str, Vec<u8>)> = names.iter().map(|n| (n.as_str(), Vec::new())).collect();
        let mut iso = open(&build(&files, RR_JOLIET));
        let err = iso.find("/boot/kernel").expect_err("missing");
        assert!(err.to_string().ends_with("f039 and 60 more"), "{err}");
    }

    #[test]
    fn paths_through_files_and_to_directories_are_refused() {
        let mut iso = open(&build(&kairos(), RR_JOLIET));
        let err = iso.find("/boot/kernel/initrd").expect_err("through a file");
        assert_eq!(
            err.to_string(),
            "/boot/kernel/initrd: /boot/kernel is a file, not a directory"
        );
        let err = iso.find("/boot").expect_err("a directory");
        assert_eq!(err.to_string(), "/boot is a directory, not a file");
        assert!(matches!(iso.find("/"), Err(IsoError::IsADirectory { .. })));
        assert!(matches!(
            iso.list("/boot/kernel"),
            Err(IsoError::NotADirectory { .. })
        ));
        assert_eq!(iso.list("/").expect("root"), vec!["boot"]);
        assert_eq!(read(&mut iso, "//boot/./kernel"), kairos()[0].1);
    }

    #[test]
    fn bad_paths_are_refused() {
        let mut iso = open(&build(&kairos(), RR_JOLIET));
        for path in ["boot/kernel", "", "/boot/../boot/kernel"] {
            assert!(
                matches!(iso.find(path), Err(IsoError::BadPath { .. })),
                "{path:?}"
            );
        }
        let deep = "/boot".repeat(65);
        assert!(matches!(iso.find(&deep), Err(IsoError::BadPath { .. })));
    }

    #[test]
    fn garbage_is_not_an_iso() {
        for (seed, len) in [(0, 0), (1, 100), (2, 16 * 2048), (3, 40_000), (4, 1 << 20)] {
            let err = Iso::open(Cursor::new(noise(seed, len))).expect_err("garbage");
            assert!(matches!(err, IsoError::NotIso { .. }), "{len}: {err}");
        }
        let err = Iso::open(Cursor::new(vec![0u8; 1 << 20])).expect_err("zeros");
        assert_eq!(
            err.to_string(),
            "not an ISO 9660 image (no CD001 at sector 16)"
        );
    }

    /// Runs everything a caller would on `image`, ignoring errors: it must return.
    fn exercise(image: Vec<u8>, paths: &[&str]) -> Result<(), IsoError> {
        let mut iso = Iso::open(Cursor::new(image))?;
        let _ = iso.list("/");
        let _ = iso.list("/boot");
        let mut first_error = Ok(());
        for path in paths {
            let copied = iso
                .find(path)
                .and_then(|file| iso.copy_to(&file, &mut io::sink()));
            if let Err(e) = copied {
                first_error = first_error.and(Err(e));
            }
        }
        first_error
    }

    #[test]
    fn truncated_images_give_errors() {
        let image = build(&kairos(), RR_JOLIET);
        let kernel = open(&image).find("/boot/kernel").expect("kernel");
        let kernel_end = (kernel.offset + kernel.size) as usize;
        let mut cuts: Vec<usize> = (0..kernel_end).step_by(2048).collect();
        cuts.extend([
            100,
            16 * 2048 + 1000,
            kernel_end - 1,
            kernel_end,
            image.len() - 1,
        ]);
        for cut in cuts {
            let result = exercise(image[..cut].to_vec(), &["/boot/kernel"]);
            if cut < kernel_end {
                assert!(result.is_err(), "cut at {cut}");
            }
        }
    }

    #[test]
    fn random_corruption_never_panics_or_hangs() {
        for args in [RR_JOLIET, PLAIN] {
            let image = build(&leap_micro(), args);
            let data_start = open(&image)
                .find("/README")
                .expect("readme")
                .offset
                .min(image.len() as u64) as usize;
            let boot = primary_record(&image, primary_root(&image), "boot").1;
            let paths = [
                "/boot/x86_64/loader/linux",
                "/boot/x86_64/loader/initrd",
                "/README",
            ];
            for seed in 0..400u64 {
                let mut damaged = image.clone();
                let picks = noise(seed, 64);
                for pair in picks.chunks_exact(4).take(1 + (seed % 16) as usize) {
                    let at = u32::from_le_bytes([pair[0], pair[1], pair[2], 0]) as usize;
                    let at = 16 * 2048 + at % (data_start - 16 * 2048);
                    damaged[at] = pair[3];
                }
                let _ = exercise(damaged, &paths);
            }
            // Whole directories of noise: records and System Use entries of every shape.
            let x86 = primary_record(&image, boot, "x86_64").1;
            for (seed, dir) in (0..200u64).zip([boot, x86].iter().cycle()) {
                let mut damaged = image.clone();
                let (start, len) = (dir.start as usize, dir.len as usize);
                damaged[start..start + len].copy_from_slice(&noise(1000 + seed, len));
                let _ = exercise(damaged, &paths);
            }
        }
    }

    #[test]
    fn a_directory_extent_past_the_end_is_reported() {
        let mut image = build(&kairos(), &["-R"]);
        let (at, _) = primary_record(&image, primary_root(&image), "boot");
        let beyond = Extent {
            start: (image.len() as u64 / 2048 + 10) * 2048,
            len: 2048,
        };
        repoint(&mut image, at, beyond);
        let err = open(&image).find("/boot/kernel").expect_err("past the end");
        assert_eq!(
            err.to_string(),
            "directory /boot: extent past the end of the image"
        );
    }

    #[test]
    fn a_file_extent_past_the_end_is_reported() {
        let image = build(&kairos(), &["-R"]);
        let kernel = open(&image).find("/boot/kernel").expect("kernel");
        let cut = &image[..(kernel.offset + kernel.size - 1) as usize];
        let err = open(cut).find("/boot/kernel").expect_err("past the end");
        assert_eq!(
            err.to_string(),
            "file /boot/kernel: extent past the end of the image"
        );
        let err = open(cut)
            .copy_to(&kernel, &mut io::sink())
            .expect_err("past the end");
        assert!(matches!(err, IsoError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn directory_loops_terminate() {
        let mut image = build(&leap_micro(), &["-R"]);
        let root = primary_root(&image);
        let (boot_at, boot) = primary_record(&image, root, "boot");
        let (x86_at, _) = primary_record(&image, boot, "x86_64");
        // /boot/x86_64 is /boot again, and /boot is the root again.
        repoint(&mut image, x86_at, boot);
        repoint(&mut image, boot_at, root);
        let mut iso = open(&image);
        let err = iso.find("/boot/x86_64/loader/linux").expect_err("loop");
        assert!(matches!(err, IsoError::NotFound { .. }), "{err}");
        let circular = format!("{}/kernel", "/boot".repeat(60));
        let err = iso.find(&circular).expect_err("loop");
        assert!(matches!(err, IsoError::NotFound { .. }), "{err}");
    }

    #[test]
    fn continuation_loops_terminate() {
        let long = "v".repeat(250);
        let path = format!("boot/{long}");
        let mut image = build(&[(path.as_str(), noise(15, 100))], &["-R"]);
        let boot = primary_record(&image, primary_root(&image), "boot").1;
        // Points the record's CE at the record's own System Use area, which holds that CE.
        let mut at = boot.start as usize;
        let patched = loop {
            let len = usize::from(image[at]);
            assert!(len > 0, "no record with a CE entry");
            let record = parse_record(&image[at..at + len]).expect("record");
            let su_at = at + len - record.system_use.len();
            if let Some(ce) = record.system_use.windows(2).position(|w| w == b"CE") {
                let ce = su_at + ce;
                let block = (su_at / 2048) as u32;
                let offset = (su_at % 2048) as u32;
                let area = record.system_use.len() as u32;
                for (field, value) in [(4, block), (12, offset), (20, area)] {
                    image[ce + field..ce + field + 4].copy_from_slice(&value.to_le_bytes());
                    image[ce + field + 4..ce + field + 8].copy_from_slice(&value.to_be_bytes());
                }
                break true;
            }
            at += len;
        };
        assert!(patched);
        let err = open(&image).find(&format!("/{path}")).expect_err("loop");
        assert!(
            err.to_string()
                .contains("too many Rock Ridge continuation areas"),
            "{err}"
        );
    }

    #[test]
    fn multi_extent_files_are_refused() {
        let mut image = build(&kairos(), &["-R"]);
        let boot = primary_record(&image, primary_root(&image), "boot").1;
        let (kernel_at, _) = primary_record(&image, boot, "kernel");
        image[kernel_at + 25] |= FLAG_MULTI_EXTENT;
        let err = open(&image).find("/boot/kernel").expect_err("multi-extent");
        assert_eq!(
            err.to_string(),
            "/boot/kernel is in several extents (files over 4 GiB are not supported)"
        );
    }

    #[test]
    fn hidden_files_are_found() {
        let mut image = build(&kairos(), &["-R"]);
        let boot = primary_record(&image, primary_root(&image), "boot").1;
        let (kernel_at, _) = primary_record(&image, boot, "kernel");
        image[kernel_at + 25] |= 1;
        assert_eq!(read(&mut open(&image), "/boot/kernel"), kairos()[0].1);
    }

    #[test]
    fn copy_errors_name_the_failing_side() {
        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Err(io::Error::new(io::ErrorKind::StorageFull, "disk full"))
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut iso = open(&build(&kairos(), RR_JOLIET));
        let kernel = iso.find("/boot/kernel").expect("kernel");
        let err = iso.copy_to(&kernel, &mut Full).expect_err("full");
        assert_eq!(err.to_string(), "writing the copy after 0 bytes: disk full");
        let empty = iso.find("/boot/empty").expect("empty");
        assert_eq!(iso.copy_to(&empty, &mut Full).expect("nothing to write"), 0);
    }

    #[test]
    fn name_helpers() {
        assert_eq!(plain_name(b"KERNEL.;1"), b"KERNEL");
        assert_eq!(plain_name(b"INITRD.GZ;1"), b"INITRD.GZ");
        assert_eq!(plain_name(b"BOOT"), b"BOOT");
        assert_eq!(plain_name(b"A;B"), b"A;B");
        let joliet: Vec<u8> = "linux;1"
            .encode_utf16()
            .flat_map(u16::to_be_bytes)
            .collect();
        assert_eq!(joliet_name(&joliet), b"linux");
        assert_eq!(joliet_name(&[0xd8, 0x00, 0x00]), "\u{fffd}".as_bytes());
    }

    #[test]
    fn rock_ridge_names_continue_across_entries() {
        let mut area = Vec::new();
        area.extend_from_slice(&[b'N', b'M', 8, 1, NM_CONTINUE, b'v', b'm', b'l']);
        area.extend_from_slice(&[b'N', b'M', 9, 1, 0, b'i', b'n', b'u', b'z']);
        area.extend_from_slice(&[b'N', b'M', 6, 1, 0, b'x']);
        let mut rr = RockRidge::default();
        assert_eq!(parse_susp_area(&area, &mut rr), None);
        assert_eq!(rr.name.as_deref(), Some(&b"vmlinuz"[..]));

        let mut rr = RockRidge::default();
        parse_susp_area(&[b'N', b'M', 5, 1, NM_CURRENT], &mut rr);
        assert_eq!(rr.name.as_deref(), Some(&b"."[..]));

        // A zero length would never advance.
        let mut rr = RockRidge::default();
        assert_eq!(parse_susp_area(&[b'N', b'M', 0, 1, 0, 0], &mut rr), None);
        assert_eq!(rr, RockRidge::default());
    }
}
