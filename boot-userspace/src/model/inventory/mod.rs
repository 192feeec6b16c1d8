//! The host inventory: machines (MAC, IP, name, boot profile) and their boot profiles.
//!
//! Loaded from its own TOML file (named by `daemon.inventory`) so that provisioning tools can
//! regenerate it without touching the daemon's settings. Lookups are by MAC and by IP in
//! hash maps: a 10,000-host inventory costs nothing per packet.

use crate::redfish::{BmcConfig, BootMode, BootTarget, PasswordSource, TlsPolicy};
use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
    str::FromStr,
};

pub mod resource;
pub mod wire;

use crate::model::boot::{BootSettings, OptionSet};
use crate::util::key_error::KeyError;

/// An inventory file that cannot be used, naming the file and the entry.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The inventory file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for the inventory schema.
    #[error("{path}: {message}")]
    Parse {
        /// The inventory file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An entry has a bad or conflicting value.
    #[error("{path}: key `{key}`: {reason}")]
    Invalid {
        /// The inventory file.
        path: PathBuf,
        /// Dotted key, e.g. `hosts[3].mac`.
        key: String,
        /// Why.
        reason: String,
    },
}

/// A 48-bit Ethernet MAC address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

impl FromStr for Mac {
    type Err = String;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff`, any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split([':', '-']).collect();
        if parts.len() != 6 {
            return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"));
            }
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| format!("{s:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        }
        Ok(Mac(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// A boot profile: what a host boots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Profile {
    /// Profile name.
    pub name: String,
    /// The `[images]` image it boots (`name` or `name@version`); `kernel` and `initrd` are
    /// that version's files once the inventory's images are resolved.
    pub image: Option<String>,
    /// Kernel image, relative to the image root.
    pub kernel: Option<String>,
    /// Initrd images, relative to the image root.
    pub initrd: Vec<String>,
    /// Kernel command line.
    pub cmdline: String,
    /// Overrides of the global boot settings.
    pub boot: BootSettings,
    /// Expected SHA-256 of some of its files (`kernel`/`initrd` names), for `check`.
    pub sha256: BTreeMap<String, [u8; 32]>,
}

impl Profile {
    /// The files it fetches: the kernel, then the initrds.
    pub fn files(&self) -> impl Iterator<Item = &String> {
        self.kernel.iter().chain(&self.initrd)
    }
}

/// One machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Host name (a DNS label).
    pub name: String,
    /// MAC address of its boot NIC.
    pub mac: Mac,
    /// Its reserved address, if it has one.
    pub ip: Option<Ipv4Addr>,
    /// Its reserved IPv6 address (DHCPv6), if it has one.
    pub ipv6: Option<Ipv6Addr>,
    /// Name of its boot profile (always one of the inventory's profiles).
    pub profile: String,
    /// Other profiles its iPXE menu offers (each one of the inventory's profiles).
    pub menu: Vec<String>,
    /// Host-level DHCP options.
    pub options: OptionSet,
    /// Hardware model, if given.
    pub model: Option<String>,
    /// Rack or power domain, if given.
    pub rack: Option<String>,
    /// Its BMC, if given.
    pub bmc: Option<BmcConfig>,
    /// Whether it may boot from the network (`netboot`).
    pub netboot: Netboot,
    /// Free metadata for templates and controllers (`meta = { role = "worker" }`).
    pub meta: BTreeMap<String, serde_json::Value>,
}

/// `hosts[].netboot`: whether a host is given a network boot.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Netboot {
    /// Every boot is a network boot (the default).
    #[default]
    Allow,
    /// One network boot; once the host reports `booted`, it is told to boot from its disk
    /// (as Ironic's PXE filter and Tinkerbell's allowPXE do) until the netboot is set again.
    Once,
    /// No boot answer at all: the host gets an address, never a boot file.
    Deny,
}

impl Netboot {
    /// The name as written in the inventory and the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Netboot::Allow => "allow",
            Netboot::Once => "once",
            Netboot::Deny => "deny",
        }
    }
}

impl fmt::Display for Netboot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Netboot {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "allow" => Ok(Netboot::Allow),
            "once" => Ok(Netboot::Once),
            "deny" => Ok(Netboot::Deny),
            other => Err(format!("{other:?} is not allow, once or deny")),
        }
    }
}

/// What a host is answered when it asks to boot, from its `netboot` and whether a `once`
/// was used.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BootAnswer {
    /// Its profile: the usual network boot.
    Boot,
    /// "Boot from your disk": iPXE `exit`, pxelinux `LOCALBOOT 0`, GRUB `exit`.
    Disk,
    /// No boot answer at all.
    Deny,
}

/// Bytes a host's `meta` may take, as JSON: metadata is for templates and controllers, not
/// for images, and every service holds a copy.
pub const META_MAX_BYTES: usize = 16 * 1024;

/// Validates `meta`: identifiers as keys (so templates can say `meta.role`), scalars, lists
/// and one level of tables as values, no control characters in strings (a value reaches
/// kernel command lines and loader scripts, where a newline would add a command), and a
/// bounded size. Errors are (key under `meta`, reason).
pub fn validate_meta(meta: &BTreeMap<String, serde_json::Value>) -> Result<(), KeyError> {
    fn is_ident(k: &str) -> bool {
        let mut c = k.chars();
        matches!(c.next(), Some(f) if f.is_ascii_alphabetic() || f == '_')
            && c.all(|ch| ch.is_ascii_alphanumeric() || ch == '_')
            && k.len() <= 63
    }
    fn check(key: &str, v: &serde_json::Value, depth: usize) -> Result<(), KeyError> {
        use serde_json::Value;
        let err = |reason: &str| Err(KeyError::new(key.to_owned(), reason.to_owned()));
        match v {
            Value::Null => err("null is not a value (leave the key out)"),
            Value::Bool(_) | Value::Number(_) => Ok(()),
            Value::String(s) if s.chars().any(char::is_control) => {
                err("control characters (newlines, tabs) are not allowed")
            }
            Value::String(_) => Ok(()),
            Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if matches!(item, Value::Array(_) | Value::Object(_)) {
                        return err("a list holds strings, numbers or booleans");
                    }
                    check(&format!("{key}[{i}]"), item, depth)?;
                }
                Ok(())
            }
            Value::Object(_) if depth > 0 => err("tables nest one level at most"),
            Value::Object(map) => {
                for (k, item) in map {
                    if !is_ident(k) {
                        return Err(KeyError::new(
                            format!("{key}.{k}"),
                            "a key is letters, digits and '_', not starting with a digit"
                                .to_owned(),
                        ));
                    }
                    check(&format!("{key}.{k}"), item, depth + 1)?;
                }
                Ok(())
            }
        }
    }
    for (k, v) in meta {
        if !is_ident(k) {
            return Err(KeyError::new(
                k.clone(),
                "a key is letters, digits and '_', not starting with a digit".to_owned(),
            ));
        }
        check(k, v, 0)?;
    }
    let size = serde_json::to_vec(meta)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > META_MAX_BYTES {
        return Err(KeyError::new(
            String::new(),
            format!("{size} bytes as JSON; at most {META_MAX_BYTES}"),
        ));
    }
    Ok(())
}

/// Validates `hosts[].bmc`: errors are (key under `bmc`, reason). Relative file paths are
/// taken from the inventory file's folder.
fn bmc_from_wire(inventory: &Path, b: &wire::Bmc) -> Result<BmcConfig, KeyError> {
    let base = inventory.parent().unwrap_or(Path::new("."));
    let file = |s: &str| {
        let p = Path::new(s);
        if p.is_absolute() {
            p.to_owned()
        } else {
            base.join(p)
        }
    };
    let url = b
        .url
        .clone()
        .ok_or_else(|| KeyError::new("bmc.url".to_owned(), "missing".to_owned()))?;
    let https = url.starts_with("https://");
    if !https && !url.starts_with("http://") {
        return Err(KeyError::new(
            "bmc.url",
            format!("{url:?}: the scheme must be https (or http for lab emulators)"),
        ));
    }
    crate::redfish::transport::parse_url(&url)
        .map_err(|e| KeyError::new("bmc.url", e.to_string()))?;
    // Plain HTTP sends the BMC password (Basic auth, session login) in clear to anyone on the
    // path: only with the operator's explicit word, which start-up then logs.
    if !https && b.allow_plaintext != Some(true) {
        return Err(KeyError::new(
            "bmc.allow_plaintext",
            format!(
                "{url:?} is plain http: the BMC password would cross the network in clear; \
                 use https (with ca_file or fingerprint), or set allow_plaintext = true for a lab emulator"
            ),
        ));
    }
    if https && b.allow_plaintext == Some(true) {
        return Err(KeyError::new(
            "bmc.allow_plaintext",
            format!("{url:?} is https: allow_plaintext only applies to http:// URLs"),
        ));
    }
    let username = b
        .username
        .clone()
        .ok_or_else(|| KeyError::new("bmc.username".to_owned(), "missing".to_owned()))?;
    let password = match (&b.password_file, &b.password_env) {
        (Some(f), None) => PasswordSource::File(file(f)),
        (None, Some(v)) => PasswordSource::Env(v.clone()),
        _ => {
            return Err(KeyError::new(
                "bmc",
                "give exactly one of password_file and password_env",
            ))
        }
    };
    let tls = match (&b.ca_file, &b.fingerprint, b.insecure.unwrap_or(false)) {
        (Some(ca), None, false) => TlsPolicy::CaFile(file(ca)),
        (None, Some(fp), false) => TlsPolicy::Fingerprint(
            crate::redfish::tls::parse_fingerprint(fp)
                .map_err(|e| KeyError::new("bmc.fingerprint", e.to_string()))?,
        ),
        (None, None, true) => TlsPolicy::Insecure,
        (None, None, false) if !https => TlsPolicy::Insecure,
        (None, None, false) => {
            return Err(KeyError::new(
                "bmc",
                "https needs ca_file or fingerprint to verify the BMC (or insecure = true)",
            ))
        }
        _ => {
            return Err(KeyError::new(
                "bmc",
                "give one of ca_file, fingerprint and insecure = true",
            ))
        }
    };
    let mut cfg = BmcConfig::new(&url, &username, password, tls);
    cfg.system = b.system.clone();
    cfg.boot = match b.boot.as_deref() {
        None | Some("pxe") => BootTarget::Pxe,
        Some("uefi-http") => BootTarget::UefiHttp,
        Some(other) => {
            return Err(KeyError::new(
                "bmc.boot",
                format!("{other:?} is not one of \"pxe\", \"uefi-http\""),
            ))
        }
    };
    cfg.boot_mode = match b.boot_mode.as_deref() {
        None => None,
        Some("uefi") => Some(BootMode::Uefi),
        Some("legacy") => Some(BootMode::Legacy),
        Some(other) => {
            return Err(KeyError::new(
                "bmc.boot_mode",
                format!("{other:?} is not one of \"uefi\", \"legacy\""),
            ))
        }
    };
    match b.timeout_s {
        Some(0) => return Err(KeyError::new("bmc.timeout_s", "must be at least 1")),
        Some(s) => cfg.timeout = std::time::Duration::from_secs(s),
        None => {}
    }
    match b.attempts {
        Some(0) => return Err(KeyError::new("bmc.attempts", "must be at least 1")),
        Some(n) => cfg.attempts = n.min(20),
        None => {}
    }
    Ok(cfg)
}

/// Hosts and profiles, indexed for lookup by name, MAC and IP.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    hosts: Vec<Host>,
    /// Every API change and publish looks hosts up by name: no scan of `hosts`.
    by_name: HashMap<String, usize>,
    by_mac: HashMap<Mac, usize>,
    by_ip: HashMap<Ipv4Addr, usize>,
    by_ipv6: HashMap<Ipv6Addr, usize>,
    profiles: BTreeMap<String, Profile>,
    /// Hosts with `netboot = "once"` whose one network boot was used (reported `booted`).
    consumed: std::collections::BTreeSet<String>,
    /// The images profiles may name, resolved to versions when the configuration was
    /// loaded ([`Inventory::resolve_images`]); an API change carries them over.
    images: BTreeMap<String, crate::model::images::Resolved>,
}

impl Inventory {
    /// Resolves the profiles' images against `catalog`: every image of `configured` that
    /// has a current version, and each pinned version a profile names. Fills those
    /// profiles' `kernel` and `initrd`. Errors name each profile's key and what to do.
    pub fn resolve_images(
        &mut self,
        catalog: &crate::model::images::Catalog,
        configured: &[String],
    ) -> Result<(), Vec<(String, String)>> {
        let mut images = BTreeMap::new();
        for name in configured {
            if let Ok(r) = catalog.resolve(name) {
                images.insert(name.clone(), r);
            }
        }
        let mut errors = Vec::new();
        for p in self.profiles.values() {
            let Some(reference) = &p.image else { continue };
            if images.contains_key(reference) {
                continue;
            }
            match catalog.resolve(reference) {
                Ok(r) => {
                    images.insert(reference.clone(), r);
                }
                Err(why) => errors.push((format!("profiles.{}.image", p.name), why)),
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        self.set_images(images).map_err(|e| vec![e])
    }

    /// Takes `images` as this inventory's resolved images and fills in the files of every
    /// profile that names one; the key and reason of a profile naming one it lacks.
    pub fn set_images(
        &mut self,
        images: BTreeMap<String, crate::model::images::Resolved>,
    ) -> Result<(), (String, String)> {
        for p in self.profiles.values_mut() {
            let Some(reference) = &p.image else { continue };
            let r = images.get(reference).ok_or_else(|| {
                (
                    format!("profiles.{}.image", p.name),
                    format!("image {reference:?} is not one this configuration resolved (is it under [images]? a new pin needs a reload)"),
                )
            })?;
            p.kernel = Some(r.kernel.clone());
            p.initrd = r.initrd.clone();
        }
        self.images = images;
        Ok(())
    }

    /// The images this inventory resolved, by the reference profiles use.
    pub fn images(&self) -> &BTreeMap<String, crate::model::images::Resolved> {
        &self.images
    }

    /// What `host` is answered when it asks to boot.
    pub fn boot_answer(&self, host: &Host) -> BootAnswer {
        match host.netboot {
            Netboot::Allow => BootAnswer::Boot,
            Netboot::Deny => BootAnswer::Deny,
            Netboot::Once if self.consumed.contains(&host.name) => BootAnswer::Disk,
            Netboot::Once => BootAnswer::Boot,
        }
    }

    /// Marks `name`'s one network boot as used (or not). A name not in the inventory, or a
    /// host whose netboot is not `once`, is recorded all the same: the state follows the
    /// name, and `boot_answer` reads it only for `once` hosts.
    pub fn set_consumed(&mut self, name: &str, consumed: bool) {
        if consumed {
            self.consumed.insert(name.to_owned());
        } else {
            self.consumed.remove(name);
        }
    }

    /// Whether `name`'s one network boot was used.
    pub fn is_consumed(&self, name: &str) -> bool {
        self.consumed.contains(name)
    }

    /// The names whose one network boot was used.
    pub fn consumed(&self) -> &std::collections::BTreeSet<String> {
        &self.consumed
    }

    /// Reads and validates the inventory file at `path`.
    pub fn load(path: &Path) -> Result<Self, InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_owned(),
            source,
        })?;
        let wire: wire::InventoryFile =
            toml::from_str(&text).map_err(|e| InventoryError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?;
        Self::from_wire(path, wire)
    }

    /// Validates a parsed inventory; `path` is for messages only.
    pub fn from_wire(path: &Path, wire: wire::InventoryFile) -> Result<Self, InventoryError> {
        let invalid = |key: String, reason: String| InventoryError::Invalid {
            path: path.to_owned(),
            key,
            reason,
        };
        let mut profiles = BTreeMap::new();
        for (name, p) in wire.profiles {
            if !is_dns_label(&name) {
                return Err(invalid(
                    format!("profiles.{name}"),
                    "a profile name is letters, digits and '-', at most 63".to_owned(),
                ));
            }
            let boot = match &p.boot {
                Some(b) => BootSettings::from_wire(b, &format!("profiles.{name}.boot"))
                    .map_err(|KeyError { key, reason }| invalid(key, reason))?,
                None => BootSettings::default(),
            };
            if let Some(image) = &p.image {
                let key = format!("profiles.{name}.image");
                let (img, version) = match image.split_once('@') {
                    Some((i, v)) => (i, Some(v)),
                    None => (image.as_str(), None),
                };
                if !crate::model::images::valid_name(img)
                    || version.is_some_and(|v| !crate::model::images::valid_name(v))
                {
                    return Err(invalid(
                        key,
                        format!("{image:?} is not an image name (\"name\" or \"name@version\")"),
                    ));
                }
                if p.kernel.is_some() || !p.initrd.is_empty() || !p.sha256.is_empty() {
                    return Err(invalid(
                        key,
                        "give an image or kernel/initrd/sha256, not both (an image brings its files, verified)"
                            .to_owned(),
                    ));
                }
            }
            let mut sha256 = BTreeMap::new();
            for (file, hex) in &p.sha256 {
                let key = format!("profiles.{name}.sha256.{file:?}");
                if p.kernel.as_ref() != Some(file) && !p.initrd.contains(file) {
                    return Err(invalid(
                        key,
                        "names no file of this profile (use the kernel or initrd name as given)"
                            .to_owned(),
                    ));
                }
                let digest = crate::redfish::tls::parse_fingerprint(hex)
                    .map_err(|r| invalid(key, r.to_string()))?;
                sha256.insert(file.clone(), digest);
            }
            let profile = Profile {
                name: name.clone(),
                image: p.image,
                kernel: p.kernel,
                initrd: p.initrd,
                cmdline: p.cmdline,
                boot,
                sha256,
            };
            profiles.insert(name, profile);
        }
        let mut inv = Inventory {
            profiles,
            ..Default::default()
        };
        for (i, h) in wire.hosts.into_iter().enumerate() {
            let key = |field: &str| format!("hosts[{i}].{field}");
            let name = h
                .name
                .ok_or_else(|| invalid(key("name"), "missing".to_owned()))?;
            if !is_dns_label(&name) {
                return Err(invalid(
                    key("name"),
                    format!("{name:?} is not a host name (letters, digits, '-', at most 63)"),
                ));
            }
            if let Some(j) = inv.by_name.get(&name) {
                return Err(invalid(key("name"), format!("{name:?} is also hosts[{j}]")));
            }
            let mac: Mac = h
                .mac
                .ok_or_else(|| invalid(key("mac"), "missing".to_owned()))?
                .parse()
                .map_err(|r| invalid(key("mac"), r))?;
            if mac.0[0] & 1 == 1 {
                return Err(invalid(key("mac"), format!("{mac} is a multicast address")));
            }
            if let Some(j) = inv.by_mac.get(&mac) {
                return Err(invalid(key("mac"), format!("{mac} is also hosts[{j}]")));
            }
            let ip = match h.ip {
                None => None,
                Some(s) => {
                    let ip: Ipv4Addr = s
                        .parse()
                        .map_err(|_| invalid(key("ip"), format!("{s:?} is not an IPv4 address")))?;
                    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
                        return Err(invalid(key("ip"), format!("{ip} cannot be a host address")));
                    }
                    if let Some(j) = inv.by_ip.get(&ip) {
                        return Err(invalid(key("ip"), format!("{ip} is also hosts[{j}]")));
                    }
                    Some(ip)
                }
            };
            let ipv6 = match h.ipv6 {
                None => None,
                Some(s) => {
                    let ip: Ipv6Addr = s.parse().map_err(|_| {
                        invalid(key("ipv6"), format!("{s:?} is not an IPv6 address"))
                    })?;
                    if ip.is_unspecified()
                        || ip.is_multicast()
                        || ip.is_loopback()
                        || ip.is_unicast_link_local()
                    {
                        return Err(invalid(
                            key("ipv6"),
                            format!("{ip} cannot be a host's DHCPv6 address"),
                        ));
                    }
                    if let Some(j) = inv.by_ipv6.get(&ip) {
                        return Err(invalid(key("ipv6"), format!("{ip} is also hosts[{j}]")));
                    }
                    Some(ip)
                }
            };
            let profile = h
                .profile
                .ok_or_else(|| invalid(key("profile"), "missing".to_owned()))?;
            if !inv.profiles.contains_key(&profile) {
                return Err(invalid(
                    key("profile"),
                    format!("no profile {profile:?} in [profiles]"),
                ));
            }
            for (j, other) in h.menu.iter().enumerate() {
                if !inv.profiles.contains_key(other) {
                    return Err(invalid(
                        format!("hosts[{i}].menu[{j}]"),
                        format!("no profile {other:?} in [profiles]"),
                    ));
                }
            }
            let options = match &h.options {
                Some(o) => OptionSet::from_wire(o, &key("options"))
                    .map_err(|KeyError { key, reason }| invalid(key, reason))?,
                None => OptionSet::default(),
            };
            let bmc = match &h.bmc {
                Some(b) => {
                    Some(bmc_from_wire(path, b).map_err(|e| invalid(key(&e.key), e.reason))?)
                }
                None => None,
            };
            let netboot = match &h.netboot {
                Some(n) => n.parse().map_err(|r| invalid(key("netboot"), r))?,
                None => Netboot::Allow,
            };
            let meta = h.meta.unwrap_or_default();
            validate_meta(&meta).map_err(|e| {
                let k = if e.key.is_empty() {
                    key("meta")
                } else {
                    key(&format!("meta.{}", e.key))
                };
                invalid(k, e.reason)
            })?;
            inv.by_name.insert(name.clone(), i);
            inv.by_mac.insert(mac, i);
            if let Some(ip) = ip {
                inv.by_ip.insert(ip, i);
            }
            if let Some(ip) = ipv6 {
                inv.by_ipv6.insert(ip, i);
            }
            inv.hosts.push(Host {
                name,
                mac,
                ip,
                ipv6,
                profile,
                menu: h.menu,
                options,
                model: h.model.clone(),
                rack: h.rack.clone(),
                bmc,
                netboot,
                meta,
            });
        }
        Ok(inv)
    }

    /// All hosts, in file order.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The BMC URLs that speak plain `http://` (each allowed by `allow_plaintext = true`),
    /// once each, for the start-up warning.
    pub fn plaintext_bmc_urls(&self) -> std::collections::BTreeSet<&str> {
        self.hosts
            .iter()
            .filter_map(|h| h.bmc.as_ref())
            .map(|b| b.url.as_str())
            .filter(|u| u.starts_with("http://"))
            .collect()
    }

    /// All profiles, by name.
    pub fn profiles(&self) -> &BTreeMap<String, Profile> {
        &self.profiles
    }

    /// The host with this MAC.
    pub fn host_by_mac(&self, mac: &Mac) -> Option<&Host> {
        self.by_mac.get(mac).map(|&i| &self.hosts[i])
    }

    /// The profile named `name`.
    pub fn profile(&self, name: &str) -> Option<&Profile> {
        self.profiles.get(name)
    }

    /// The host with this reserved IP.
    pub fn host_by_ip(&self, ip: Ipv4Addr) -> Option<&Host> {
        self.by_ip.get(&ip).map(|&i| &self.hosts[i])
    }

    /// The host whose reserved IPv6 address is `ip`.
    pub fn host_by_ipv6(&self, ip: Ipv6Addr) -> Option<&Host> {
        self.by_ipv6.get(&ip).map(|&i| &self.hosts[i])
    }
}

/// RFC 1123 label: 1 to 63 letters, digits and hyphens, not starting or ending with a hyphen.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Inventory, InventoryError> {
        let wire = toml::from_str(text).map_err(|e: toml::de::Error| InventoryError::Parse {
            path: "hosts.toml".into(),
            message: e.to_string(),
        })?;
        Inventory::from_wire(Path::new("hosts.toml"), wire)
    }

    const GOOD: &str = r#"
        [profiles.debian]
        kernel = "debian/vmlinuz"
        initrd = ["debian/initrd.gz"]
        cmdline = "console=ttyS0"

        [[hosts]]
        name = "node01"
        mac = "52:54:00:AA:00:01"
        ip = "10.77.0.11"
        profile = "debian"

        [[hosts]]
        name = "node02"
        mac = "52-54-00-aa-00-02"
        profile = "debian"
    "#;

    #[test]
    fn hosts_are_indexed_by_mac_and_ip() {
        let inv = parse(GOOD).expect("valid");
        assert_eq!(inv.hosts().len(), 2);
        let mac: Mac = "52:54:00:aa:00:01".parse().expect("mac");
        assert_eq!(
            inv.host_by_mac(&mac).map(|h| h.name.as_str()),
            Some("node01")
        );
        assert_eq!(
            inv.host_by_ip("10.77.0.11".parse().expect("ip"))
                .map(|h| h.mac),
            Some(mac)
        );
        assert_eq!(inv.hosts()[1].ip, None);
        assert_eq!(
            inv.host_named("node02").map(|h| h.mac),
            Some(inv.hosts()[1].mac)
        );
        assert!(inv.host_named("node03").is_none());
        assert_eq!(inv.profiles()["debian"].initrd, ["debian/initrd.gz"]);
    }

    #[test]
    fn mac_display_round_trips() {
        let mac: Mac = "52:54:00:AA:00:01".parse().expect("mac");
        assert_eq!(mac.to_string(), "52:54:00:aa:00:01");
        for bad in [
            "",
            "52:54:00:aa:00",
            "52:54:00:aa:00:01:02",
            "5:54:00:aa:00:01",
            "zz:54:00:aa:00:01",
        ] {
            assert!(bad.parse::<Mac>().is_err(), "{bad}");
        }
    }

    #[test]
    fn conflicts_and_bad_values_name_the_entry() {
        let base = "[profiles.p]\n";
        for (hosts, key) in [
            ("[[hosts]]\nname='a'\nmac='52:54:00:00:00:01'\nprofile='p'\n[[hosts]]\nname='b'\nmac='52:54:00:00:00:01'\nprofile='p'\n", "hosts[1].mac"),
            ("[[hosts]]\nname='a'\nmac='52:54:00:00:00:01'\nip='10.0.0.1'\nprofile='p'\n[[hosts]]\nname='b'\nmac='52:54:00:00:00:02'\nip='10.0.0.1'\nprofile='p'\n", "hosts[1].ip"),
            ("[[hosts]]\nname='a'\nmac='52:54:00:00:00:01'\nprofile='p'\n[[hosts]]\nname='a'\nmac='52:54:00:00:00:02'\nprofile='p'\n", "hosts[1].name"),
            ("[[hosts]]\nname='a'\nmac='52:54:00:00:00:01'\nprofile='nope'\n", "hosts[0].profile"),
            ("[[hosts]]\nname='a'\nmac='01:54:00:00:00:01'\nprofile='p'\n", "hosts[0].mac"),
            ("[[hosts]]\nname='a'\nmac='52:54:00:00:00:01'\nip='10.0.0'\nprofile='p'\n", "hosts[0].ip"),
            ("[[hosts]]\nname='a b'\nmac='52:54:00:00:00:01'\nprofile='p'\n", "hosts[0].name"),
            ("[[hosts]]\nmac='52:54:00:00:00:01'\nprofile='p'\n", "hosts[0].name"),
        ] {
            let e = parse(&format!("{base}{hosts}")).expect_err(hosts).to_string();
            assert!(e.contains(&format!("`{key}`")), "{hosts}: {e}");
        }
    }

    #[test]
    fn netboot_and_meta_are_read_and_checked() {
        let inv = parse(
            "[profiles.p]\n[[hosts]]\nname='a'\nmac='52:54:00:00:00:01'\nprofile='p'\nnetboot='once'\nmeta={ role = 'worker', disks = ['sda', 'sdb'], bmc = { rack = 4 } }\n",
        )
        .expect("valid");
        let mut inv = inv;
        let a = inv.hosts()[0].clone();
        assert_eq!(a.netboot, Netboot::Once);
        assert_eq!(a.meta["role"], serde_json::json!("worker"));
        assert_eq!(a.meta["bmc"], serde_json::json!({"rack": 4}));
        assert_eq!(inv.boot_answer(&a), BootAnswer::Boot);
        inv.set_consumed("a", true);
        assert_eq!(inv.boot_answer(&a), BootAnswer::Disk);
        inv.set_consumed("a", false);
        assert_eq!(inv.boot_answer(&a), BootAnswer::Boot);
        let base = "[profiles.p]\n[[hosts]]\nname='a'\nmac='52:54:00:00:00:01'\nprofile='p'\n";
        for (extra, key) in [
            ("netboot='sometimes'", "hosts[0].netboot"),
            ("meta={ 1role = 'x' }", "hosts[0].meta.1role"),
            ("meta={ role = \"a\\nb\" }", "hosts[0].meta.role"),
            ("meta={ t = { u = { v = 1 } } }", "hosts[0].meta.t.u"),
            ("meta={ l = [[1]] }", "hosts[0].meta.l"),
        ] {
            let e = parse(&format!("{base}{extra}\n"))
                .expect_err(extra)
                .to_string();
            assert!(e.contains(&format!("`{key}`")), "{extra}: {e}");
        }
        let big = "x".repeat(META_MAX_BYTES);
        let e = parse(&format!("{base}meta={{ k = '{big}' }}\n")).expect_err("big");
        assert!(e.to_string().contains("`hosts[0].meta`"), "{e}");
    }

    #[test]
    fn unknown_host_key_is_refused() {
        let e = parse("[[hosts]]\nname='a'\nmacc='52:54:00:00:00:01'\n").expect_err("typo");
        assert!(e.to_string().contains("macc"), "{e}");
    }

    #[test]
    fn ten_thousand_hosts_load() {
        let mut text = String::from("[profiles.p]\n");
        for i in 0..10_000u32 {
            let b = i.to_be_bytes();
            text.push_str(&format!(
                "[[hosts]]\nname='n{i}'\nmac='52:54:{:02x}:{:02x}:{:02x}:{:02x}'\nip='10.{}.{}.{}'\nprofile='p'\n",
                b[0], b[1], b[2], b[3], 100 + b[1], b[2], b[3]
            ));
        }
        let inv = parse(&text).expect("valid");
        assert_eq!(inv.hosts().len(), 10_000);
        // Every host is found by its MAC and its address (the indexes the DHCP and TFTP
        // services look hosts up by), as itself. What this test checks is that a 10,000-host
        // inventory loads whole and indexed, not how long it takes.
        for h in inv.hosts() {
            assert_eq!(
                inv.host_by_mac(&h.mac).map(|f| &f.name),
                Some(&h.name),
                "{}",
                h.mac
            );
            let ip = h.ip.expect("every generated host has an address");
            assert_eq!(inv.host_by_ip(ip).map(|f| &f.name), Some(&h.name), "{ip}");
        }
        assert_eq!(
            inv.host_by_ip("10.100.39.15".parse().expect("ip"))
                .map(|h| h.name.as_str()),
            Some("n9999")
        );
    }

    fn with_bmc(bmc: &str) -> Result<Inventory, InventoryError> {
        let text = format!(
            "[profiles.p]\n[[hosts]]\nname = \"n1\"\nmac = \"52:54:00:00:00:01\"\nprofile = \"p\"\nmodel = \"r650\"\nrack = \"r1\"\nbmc = {{ {bmc} }}\n"
        );
        let wire = toml::from_str(&text).expect("toml");
        Inventory::from_wire(Path::new("/etc/bootfabric/hosts.toml"), wire)
    }

    fn error_key(e: InventoryError) -> (String, String) {
        match e {
            InventoryError::Invalid { key, reason, .. } => (key, reason),
            other => panic!("{other}"),
        }
    }

    #[test]
    fn bmcs_are_validated_and_their_files_resolved() {
        let inv = with_bmc(
            r#"url = "https://10.0.9.11", username = "root", password_file = "secrets/bmc.pass", fingerprint = "AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB""#,
        )
        .expect("valid");
        let h = &inv.hosts()[0];
        assert_eq!(h.model.as_deref(), Some("r650"));
        assert_eq!(h.rack.as_deref(), Some("r1"));
        let b = h.bmc.as_ref().expect("bmc");
        assert_eq!(b.tls, TlsPolicy::Fingerprint([0xab; 32]));
        assert_eq!(
            b.password,
            PasswordSource::File(Path::new("/etc/bootfabric/secrets/bmc.pass").to_owned())
        );
        let lab = with_bmc(
            r#"url = "http://127.0.0.1:8000", username = "admin", password_env = "BMC_PASS", allow_plaintext = true"#,
        )
        .expect("plain http for lab emulators, when allowed");
        assert_eq!(
            lab.hosts()[0].bmc.as_ref().map(|b| &b.tls),
            Some(&TlsPolicy::Insecure)
        );
        let http_boot = with_bmc(
            r#"url = "http://127.0.0.1:8000", username = "a", password_env = "P", allow_plaintext = true, boot = "uefi-http", boot_mode = "uefi", timeout_s = 3, attempts = 2"#,
        )
        .expect("boot settings");
        let b = http_boot.hosts()[0].bmc.as_ref().expect("bmc");
        assert_eq!(
            (b.boot, b.boot_mode, b.timeout, b.attempts),
            (
                BootTarget::UefiHttp,
                Some(BootMode::Uefi),
                std::time::Duration::from_secs(3),
                2
            )
        );

        for (bmc, key, words) in [
            (
                r#"url = "https://bmc", username = "u", password_env = "P""#,
                "hosts[0].bmc",
                "ca_file or fingerprint",
            ),
            (
                r#"url = "http://bmc", username = "u", password_env = "P""#,
                "hosts[0].bmc.allow_plaintext",
                "in clear",
            ),
            (
                r#"url = "http://bmc", username = "u", password_env = "P", allow_plaintext = false"#,
                "hosts[0].bmc.allow_plaintext",
                "in clear",
            ),
            (
                r#"url = "https://bmc", username = "u", password_env = "P", insecure = true, allow_plaintext = true"#,
                "hosts[0].bmc.allow_plaintext",
                "only applies",
            ),
            (
                r#"url = "https://bmc", username = "u", password_env = "P", password_file = "f", insecure = true"#,
                "hosts[0].bmc",
                "exactly one",
            ),
            (
                r#"url = "https://bmc", username = "u", password_env = "P", fingerprint = "abc""#,
                "hosts[0].bmc.fingerprint",
                "SHA-256",
            ),
            (
                r#"url = "ftp://bmc", username = "u", password_env = "P""#,
                "hosts[0].bmc.url",
                "scheme",
            ),
            (
                r#"url = "https://bmc/redfish/v1", username = "u", password_env = "P", insecure = true"#,
                "hosts[0].bmc.url",
                "without a path",
            ),
            (
                r#"username = "u", password_env = "P""#,
                "hosts[0].bmc.url",
                "missing",
            ),
            (
                r#"url = "https://bmc", username = "u", password_env = "P", insecure = true, ca_file = "ca.pem""#,
                "hosts[0].bmc",
                "one of",
            ),
            (
                r#"url = "http://bmc", username = "u", password_env = "P", allow_plaintext = true, boot = "usb""#,
                "hosts[0].bmc.boot",
                "uefi-http",
            ),
            (
                r#"url = "http://bmc", username = "u", password_env = "P", allow_plaintext = true, boot_mode = "bios""#,
                "hosts[0].bmc.boot_mode",
                "legacy",
            ),
            (
                r#"url = "http://bmc", username = "u", password_env = "P", allow_plaintext = true, timeout_s = 0"#,
                "hosts[0].bmc.timeout_s",
                "at least 1",
            ),
        ] {
            let (k, reason) = error_key(with_bmc(bmc).expect_err(bmc));
            assert_eq!(k, key, "{bmc}: {reason}");
            assert!(reason.contains(words), "{bmc}: {reason}");
        }
    }
}
