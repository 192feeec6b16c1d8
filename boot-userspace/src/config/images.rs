//! `[images.<name>]`: OS images the fabric fetches, verifies, stores and updates. Validated
//! without I/O here; the key files are read and parsed by [`super::Config::load`], so a key
//! that is not one refuses the load, not the first update.
//!
//! Two shapes: a kernel and initrds fetched as files (Flatcar's PXE pair), or an ISO
//! (fetched, or a file on this machine) with the kernel and initrds read out of it by path
//! (Kairos `/boot/kernel`, Leap Micro `/boot/x86_64/loader/linux`). Either may name sums
//! files (one for all files, or one per file as Flatcar publishes them), each signed by a
//! detached OpenPGP signature or clearsigned, checked against `keys`.

use std::{collections::BTreeMap, path::PathBuf, str::FromStr as _, sync::Arc, time::Duration};

use serde::Deserialize;

use crate::{
    model::images::{valid_name, verify::Keyring},
    util::key_error::KeyError,
};

/// Versions kept per image unless `keep` says otherwise.
pub const DEFAULT_KEEP: usize = 3;
/// Default `max_bytes`: 8 GiB, more than any installer ISO.
pub const DEFAULT_MAX_BYTES: u64 = 8 << 30;
/// Default `stall_timeout_s`: a download that receives nothing for this long is retried.
pub const DEFAULT_STALL_S: u64 = 60;
/// Default `timeout_s`: six hours for one update.
pub const DEFAULT_TIMEOUT_S: u64 = 6 * 3600;
/// The system's CA bundle (Debian's `ca-certificates`), for https sources without `ca_file`.
pub const SYSTEM_CA_FILE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// One `[images.<name>]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WireImage {
    /// An ISO to read the kernel and initrds out of: an http(s) URL or an absolute path.
    pub iso: Option<String>,
    /// The kernel: a URL, or with `iso` its path inside the ISO.
    pub kernel: Option<String>,
    /// The initrds, as `kernel`.
    #[serde(default)]
    pub initrd: Vec<String>,
    /// URL of a sums file (`sha256sum`/`sha512sum` output, BSD tags or Flatcar DIGESTS)
    /// listing the fetched files (with `iso`: the ISO), or a list of them.
    pub sums: Option<OneOrMany>,
    /// URL of a detached OpenPGP signature over the sums file (a list: one per sums file,
    /// in order).
    pub signature: Option<OneOrMany>,
    /// OpenPGP public key files (armored or binary) a signature must come from.
    #[serde(default)]
    pub keys: Vec<String>,
    /// PEM CA certificates for https sources (default: the system's bundle).
    pub ca_file: Option<String>,
    /// `never` (default), `hourly`, `daily`, `weekly`, or a cron expression (UTC) with
    /// seconds first (`"0 0 3 * * Mon"`).
    pub update: Option<String>,
    /// Versions kept (2 to 50, default 3); older ones no profile pins are deleted.
    pub keep: Option<usize>,
    /// Largest file fetched, bytes (default 8 GiB).
    pub max_bytes: Option<u64>,
    /// Seconds a download may receive nothing before it is resumed (default 60).
    pub stall_timeout_s: Option<u64>,
    /// Seconds one update may take in all (default 21600: 8 GiB at 3 Mbit/s); a source that
    /// trickles is given up, the current version kept.
    pub timeout_s: Option<u64>,
}

/// A URL, or a list of them.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// One.
    One(String),
    /// Several.
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}

/// An http or https URL of a file to fetch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileUrl {
    /// The URL as written.
    pub text: String,
    /// Parsed.
    pub uri: hyper::Uri,
    /// The last path segment: the name the file is stored and looked up in sums by.
    pub file_name: String,
}

impl FileUrl {
    /// Parses an absolute http(s) URL whose path ends in a file name.
    pub fn parse(text: &str) -> Result<Self, String> {
        let uri = hyper::Uri::from_str(text).map_err(|e| format!("{text:?} is not a URL: {e}"))?;
        match uri.scheme_str() {
            Some("http") | Some("https") => {}
            _ => return Err(format!("{text:?} is not an http:// or https:// URL")),
        }
        let Some(authority) = uri.authority() else {
            return Err(format!("{text:?} has no host"));
        };
        if authority.as_str().contains('@') {
            return Err(format!(
                "{text:?}: credentials in the URL are not supported"
            ));
        }
        let file_name = uri.path().rsplit('/').next().unwrap_or_default();
        let file_name = percent_encoding::percent_decode_str(file_name)
            .decode_utf8()
            .map_err(|_| format!("{text:?}: the file name is not UTF-8"))?
            .into_owned();
        check_file_name(&file_name).map_err(|why| format!("{text:?}: {why}"))?;
        Ok(Self {
            text: text.to_owned(),
            uri,
            file_name,
        })
    }

    /// Whether the URL is https.
    pub fn https(&self) -> bool {
        self.uri.scheme_str() == Some("https")
    }
}

/// A stored file's name must be one plain path segment.
fn check_file_name(name: &str) -> Result<(), &'static str> {
    if name.is_empty() || name == "." || name == ".." {
        return Err("the path does not end in a file name");
    }
    if name.starts_with('.') || name.contains('/') || name.contains('\\') {
        return Err("the file name may not start with '.' or hold a slash");
    }
    if name.chars().any(char::is_control) || name.len() > 200 {
        return Err("the file name holds a control character or is over 200 bytes");
    }
    Ok(())
}

/// Where an ISO comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum IsoSource {
    /// Fetched.
    Url(FileUrl),
    /// A file on this machine.
    Path(PathBuf),
}

impl IsoSource {
    /// The ISO's file name: what sums files list it by.
    pub fn file_name(&self) -> String {
        match self {
            IsoSource::Url(u) => u.file_name.clone(),
            IsoSource::Path(p) => p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
        }
    }
}

/// What an image is made of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Source {
    /// A kernel and initrds fetched as files.
    Files {
        /// The kernel.
        kernel: FileUrl,
        /// The initrds.
        initrd: Vec<FileUrl>,
    },
    /// An ISO and the paths inside it.
    Iso {
        /// The ISO.
        iso: IsoSource,
        /// The kernel's path inside it (absolute).
        kernel: String,
        /// The initrds' paths inside it.
        initrd: Vec<String>,
    },
}

impl Source {
    /// The names the version's files are stored under: kernel, then initrds.
    pub fn stored_names(&self) -> (String, Vec<String>) {
        match self {
            Source::Files { kernel, initrd } => (
                kernel.file_name.clone(),
                initrd.iter().map(|u| u.file_name.clone()).collect(),
            ),
            Source::Iso { kernel, initrd, .. } => {
                let last = |p: &String| p.rsplit('/').next().unwrap_or_default().to_owned();
                (last(kernel), initrd.iter().map(last).collect())
            }
        }
    }

    /// The URLs and paths it names, for records and `image ls`.
    pub fn describe(&self) -> String {
        match self {
            Source::Files { kernel, initrd } => std::iter::once(kernel)
                .chain(initrd)
                .map(|u| u.text.as_str())
                .collect::<Vec<_>>()
                .join(" "),
            Source::Iso { iso, .. } => match iso {
                IsoSource::Url(u) => u.text.clone(),
                IsoSource::Path(p) => p.display().to_string(),
            },
        }
    }
}

/// When an image is updated on its own.
#[derive(Clone, Debug, PartialEq)]
pub enum UpdateSchedule {
    /// Only by `bootfabric image update`.
    Never,
    /// At the times of a cron expression (UTC).
    Cron(Box<cron::Schedule>),
}

/// The keys an image's signature must come from, parsed at load.
#[derive(Clone)]
pub struct Keys(pub Arc<Keyring>);

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.0.fingerprints()).finish()
    }
}

/// One `[images.<name>]`, validated.
#[derive(Clone, Debug)]
pub struct ImageConfig {
    /// The image's name.
    pub name: String,
    /// What it is made of.
    pub source: Source,
    /// Its sums files (none: the bytes are taken as they arrive).
    pub sums: Vec<FileUrl>,
    /// The detached signature of each sums file, in order (none: each is clearsigned, or,
    /// without keys, not signed).
    pub signatures: Vec<FileUrl>,
    /// The key files (resolved against the config's folder at load).
    pub key_files: Vec<PathBuf>,
    /// The keys, once [`super::Config::load`] read them.
    pub keys: Option<Keys>,
    /// CA certificates for https sources.
    pub ca_file: PathBuf,
    /// When it updates on its own.
    pub update: UpdateSchedule,
    /// Versions kept.
    pub keep: usize,
    /// Largest file fetched.
    pub max_bytes: u64,
    /// How long a download may receive nothing.
    pub stall: Duration,
    /// How long one update may take.
    pub timeout: Duration,
}

/// Validates every `[images.<name>]`.
pub fn from_wire(wire: &BTreeMap<String, WireImage>) -> Result<Vec<ImageConfig>, KeyError> {
    wire.iter().map(|(name, w)| one(name, w)).collect()
}

fn one(name: &str, w: &WireImage) -> Result<ImageConfig, KeyError> {
    let key = |field: &str| format!("images.{name}.{field}");
    let err = |field: &str, reason: String| KeyError {
        key: key(field),
        reason,
    };
    if !valid_name(name) {
        return Err(KeyError {
            key: format!("images.{name}"),
            reason: "an image name is letters, digits, '-' and '_', at most 64".to_owned(),
        });
    }
    let Some(kernel) = &w.kernel else {
        return Err(err(
            "kernel",
            "missing: the kernel's URL, or its path in the ISO".into(),
        ));
    };
    let source = match &w.iso {
        None => Source::Files {
            kernel: FileUrl::parse(kernel).map_err(|r| err("kernel", r))?,
            initrd: w
                .initrd
                .iter()
                .enumerate()
                .map(|(i, u)| FileUrl::parse(u).map_err(|r| err(&format!("initrd[{i}]"), r)))
                .collect::<Result<_, _>>()?,
        },
        Some(iso) => {
            let iso = if iso.starts_with('/') {
                IsoSource::Path(PathBuf::from(iso))
            } else {
                IsoSource::Url(FileUrl::parse(iso).map_err(|r| err("iso", r))?)
            };
            let inside = |field: &str, p: &String| {
                let last = p.rsplit('/').next().unwrap_or_default();
                if !p.starts_with('/') || p.split('/').any(|s| s == "..") {
                    return Err(err(
                        field,
                        format!("{p:?}: an absolute path inside the ISO"),
                    ));
                }
                check_file_name(last).map_err(|r| err(field, format!("{p:?}: {r}")))?;
                Ok(p.clone())
            };
            Source::Iso {
                iso,
                kernel: inside("kernel", kernel)?,
                initrd: w
                    .initrd
                    .iter()
                    .enumerate()
                    .map(|(i, p)| inside(&format!("initrd[{i}]"), p))
                    .collect::<Result<_, _>>()?,
            }
        }
    };
    let (k, initrd) = source.stored_names();
    let mut seen = std::collections::BTreeSet::from([k]);
    if let Source::Iso {
        iso: IsoSource::Url(u),
        ..
    } = &source
    {
        // The ISO is staged beside the files read out of it.
        if !seen.insert(u.file_name.clone()) {
            return Err(err(
                "iso",
                format!(
                    "{:?} is also the name of a file read out of it: rename one",
                    u.file_name
                ),
            ));
        }
    }
    for (i, n) in initrd.into_iter().enumerate() {
        if !seen.insert(n.clone()) {
            return Err(err(
                &format!("initrd[{i}]"),
                format!("{n:?} is the name of another file of this image: each file needs its own"),
            ));
        }
    }
    let urls = |field: &str, v: &Option<OneOrMany>| -> Result<Vec<FileUrl>, KeyError> {
        let list = v.as_ref().map(OneOrMany::list).unwrap_or_default();
        list.iter()
            .enumerate()
            .map(|(i, u)| {
                let at = if list.len() > 1 {
                    format!("{field}[{i}]")
                } else {
                    field.to_owned()
                };
                FileUrl::parse(u).map_err(|r| err(&at, r))
            })
            .collect()
    };
    let sums = urls("sums", &w.sums)?;
    let signatures = urls("signature", &w.signature)?;
    if !signatures.is_empty() && sums.is_empty() {
        return Err(err(
            "signature",
            "a signature covers a sums file: give `sums` too".into(),
        ));
    }
    if !signatures.is_empty() && signatures.len() != sums.len() {
        return Err(err(
            "signature",
            format!(
                "{} signature(s) for {} sums file(s): give one per sums file, in order",
                signatures.len(),
                sums.len()
            ),
        ));
    }
    if !signatures.is_empty() && w.keys.is_empty() {
        return Err(err(
            "keys",
            "a signature needs the public keys it must come from".into(),
        ));
    }
    if !w.keys.is_empty() && sums.is_empty() {
        return Err(err(
            "keys",
            "keys verify signed sums files: give `sums` (and `signature` unless they are clearsigned)"
                .into(),
        ));
    }
    let update = match w.update.as_deref().unwrap_or("never") {
        "never" => UpdateSchedule::Never,
        word => {
            let expr = match word {
                "hourly" => "0 0 * * * *",
                "daily" => "0 0 3 * * *",
                "weekly" => "0 0 3 * * Mon",
                other => other,
            };
            let schedule = cron::Schedule::from_str(expr).map_err(|e| {
                err(
                    "update",
                    format!("{word:?}: not never, hourly, daily, weekly or a cron expression (seconds first: \"0 0 3 * * Mon\"): {e}"),
                )
            })?;
            UpdateSchedule::Cron(Box::new(schedule))
        }
    };
    let keep = match w.keep {
        None => DEFAULT_KEEP,
        // Two at least: the version hosts booting now were given stays while they fetch.
        Some(n @ 2..=50) => n,
        Some(n) => return Err(err("keep", format!("{n}: give 2 to 50"))),
    };
    let max_bytes = match w.max_bytes {
        None => DEFAULT_MAX_BYTES,
        Some(0) => return Err(err("max_bytes", "0: give a size in bytes".into())),
        Some(n) => n,
    };
    let stall = match w.stall_timeout_s {
        None => DEFAULT_STALL_S,
        Some(n @ 1..=3600) => n,
        Some(n) => return Err(err("stall_timeout_s", format!("{n}: give 1 to 3600"))),
    };
    let timeout = match w.timeout_s {
        None => DEFAULT_TIMEOUT_S,
        Some(n @ 60..=604_800) => n,
        Some(n) => return Err(err("timeout_s", format!("{n}: give 60 to 604800"))),
    };
    Ok(ImageConfig {
        name: name.to_owned(),
        source,
        sums,
        signatures,
        key_files: w.keys.iter().map(PathBuf::from).collect(),
        keys: None,
        ca_file: PathBuf::from(w.ca_file.as_deref().unwrap_or(SYSTEM_CA_FILE)),
        update,
        keep,
        max_bytes,
        stall: Duration::from_secs(stall),
        timeout: Duration::from_secs(timeout),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<ImageConfig>, KeyError> {
        #[derive(Deserialize)]
        struct F {
            images: BTreeMap<String, WireImage>,
        }
        let f: F = toml::from_str(text).expect("toml");
        from_wire(&f.images)
    }

    #[test]
    fn a_pair_and_an_iso_validate() {
        let got = parse(
            r#"
            [images.flatcar]
            kernel = "https://origin.example/stable/flatcar_production_pxe.vmlinuz"
            initrd = ["https://origin.example/stable/flatcar_production_pxe_image.cpio.gz"]
            sums = "https://origin.example/stable/DIGESTS"
            signature = "https://origin.example/stable/DIGESTS.asc"
            keys = ["keys/flatcar.asc"]
            update = "weekly"
            [images.leap]
            iso = "http://10.0.0.1/leap.iso"
            kernel = "/boot/x86_64/loader/linux"
            initrd = ["/boot/x86_64/loader/initrd"]
            keep = 2
            "#,
        )
        .expect("valid");
        assert_eq!(got[0].name, "flatcar");
        assert_eq!(
            got[0].source.stored_names(),
            (
                "flatcar_production_pxe.vmlinuz".to_owned(),
                vec!["flatcar_production_pxe_image.cpio.gz".to_owned()]
            )
        );
        assert!(matches!(got[0].update, UpdateSchedule::Cron(_)));
        assert_eq!(got[1].keep, 2);
        assert_eq!(got[1].update, UpdateSchedule::Never);
        assert_eq!(
            got[1].source.stored_names(),
            ("linux".to_owned(), vec!["initrd".to_owned()])
        );
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, key) in [
            ("[images.a]\ninitrd = []\n", "images.a.kernel"),
            ("[images.a]\nkernel = \"ftp://x/k\"\n", "images.a.kernel"),
            ("[images.a]\nkernel = \"http://x/\"\n", "images.a.kernel"),
            ("[images.a]\nkernel = \"http://u:p@x/k\"\n", "images.a.kernel"),
            ("[images.a]\nkernel = \"http://x/.k\"\n", "images.a.kernel"),
            ("[images.\"a/b\"]\nkernel = \"http://x/k\"\n", "images.a/b"),
            ("[images.a]\nkernel = \"http://x/k\"\ninitrd = [\"http://y/k\"]\n", "images.a.initrd[0]"),
            ("[images.a]\nkernel = \"http://x/k\"\nsignature = \"http://x/s\"\n", "images.a.signature"),
            ("[images.a]\nkernel = \"http://x/k\"\nsums = \"http://x/s\"\nsignature = \"http://x/s.asc\"\n", "images.a.keys"),
            ("[images.a]\nkernel = \"http://x/k\"\nkeys = [\"k.asc\"]\n", "images.a.keys"),
            ("[images.a]\nkernel = \"http://x/k\"\nupdate = \"fortnightly\"\n", "images.a.update"),
            ("[images.a]\nkernel = \"http://x/k\"\nsums = [\"http://x/a\", \"http://x/b\"]\nsignature = [\"http://x/a.asc\"]\nkeys = [\"k\"]\n", "images.a.signature"),
            ("[images.a]\nkernel = \"http://x/k\"\nsums = [\"http://x/a\", \"ftp://x/b\"]\n", "images.a.sums[1]"),
            ("[images.a]\nkernel = \"http://x/k\"\nkeep = 1\n", "images.a.keep"),
            ("[images.a]\niso = \"http://x/a.iso\"\nkernel = \"boot/kernel\"\n", "images.a.kernel"),
            ("[images.a]\niso = \"http://x/a.iso\"\nkernel = \"/boot/../kernel\"\n", "images.a.kernel"),
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!(e.key, key, "{text}: {}", e.reason);
        }
    }
}
