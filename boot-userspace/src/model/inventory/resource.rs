//! One host or one profile at a time, for the admin API: the inventory written back in its
//! file form ([`wire`]), and a change to one record validated by the very code that validates
//! the TOML file ([`Inventory::from_wire`]), so the API and the file cannot disagree on what
//! a valid host is. Pure: records in, an inventory or the fields at fault out.
//!
//! Errors name the field inside the resource (`mac`, `bmc.url`, `meta.role`), not the file
//! position (`hosts[3].mac`): a controller knows the host it sent, not where it landed.

use std::path::Path;

use super::{wire, Host, Inventory, InventoryError, Profile};
use crate::model::boot::{wire as boot_wire, BootSettings, OptionSet};
use crate::redfish::{BmcConfig, BootMode, BootTarget, PasswordSource, TlsPolicy};

/// One field of a resource at fault, and why (RFC 9457 `errors[]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// The field inside the resource, dotted: `mac`, `bmc.url`, `meta.role`.
    pub field: String,
    /// Why, in words a caller can act on.
    pub reason: String,
}

impl FieldError {
    /// `field` is refused because of `reason`.
    pub fn new(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            reason: reason.into(),
        }
    }
}

/// Why a change to one record is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeError {
    /// The record itself is invalid (HTTP 422).
    Invalid(Vec<FieldError>),
    /// The record is valid but collides with others: a MAC or address another host has, a
    /// profile still in use (HTTP 409).
    Conflict(Vec<FieldError>),
}

/// The name used for messages when the API validates: no file is involved.
const API_PATH: &str = "api";

/// The prefix of the environment variable an API-defined BMC reads its password from: a
/// caller holding the token must not be able to make the daemon send any of its environment
/// (another service's secret, another host's BMC password) to a BMC URL of the caller's
/// choosing. The whole name is [`api_password_env`]: tied to the host.
pub const API_PASSWORD_ENV_PREFIX: &str = "BOOTFABRIC_BMC_";

/// The one environment variable an API write may name as host `name`'s BMC password:
/// `BOOTFABRIC_BMC_<NAME>_PASSWORD`, the name upper-cased with `-` as `_` (`node-07` →
/// `BOOTFABRIC_BMC_NODE_07_PASSWORD`). Exact, so a host cannot name another's (a prefix
/// would let `node1` read `BOOTFABRIC_BMC_NODE1_X_…`, `node1-x`'s).
pub fn api_password_env(name: &str) -> String {
    let host: String = name
        .chars()
        .map(|c| match c {
            '-' => '_',
            c => c.to_ascii_uppercase(),
        })
        .collect();
    format!("{API_PASSWORD_ENV_PREFIX}{host}_PASSWORD")
}

impl Inventory {
    /// The inventory in its written form: hosts in order, profiles by name. Lossless:
    /// `from_wire(to_wire(inv))` is `inv` (file paths come back absolute, as resolved).
    pub fn to_wire(&self) -> wire::InventoryFile {
        wire::InventoryFile {
            profiles: self
                .profiles
                .iter()
                .map(|(n, p)| (n.clone(), profile_to_wire(p)))
                .collect(),
            hosts: self.hosts.iter().map(host_to_wire).collect(),
        }
    }

    /// The host named `name`.
    pub fn host_named(&self, name: &str) -> Option<&Host> {
        self.by_name.get(name).map(|&i| &self.hosts[i])
    }

    /// This inventory with the host `spec.name` created or replaced by `spec`.
    pub fn with_host(&self, spec: wire::Host) -> Result<Inventory, ChangeError> {
        let name = spec.name.clone().unwrap_or_default();
        let mut file = self.to_wire();
        let index = match file
            .hosts
            .iter()
            .position(|h| h.name.as_deref() == Some(&name))
        {
            Some(i) => {
                file.hosts[i] = spec;
                i
            }
            None => {
                file.hosts.push(spec);
                file.hosts.len() - 1
            }
        };
        self.rebuilt(file, Target::Host(index))
    }

    /// This inventory without the host `name` (the caller knows it exists).
    pub fn without_host(&self, name: &str) -> Result<Inventory, ChangeError> {
        let mut file = self.to_wire();
        file.hosts.retain(|h| h.name.as_deref() != Some(name));
        self.rebuilt(file, Target::None)
    }

    /// This inventory with the profile `name` created or replaced by `spec`.
    pub fn with_profile(&self, name: &str, spec: wire::Profile) -> Result<Inventory, ChangeError> {
        let mut file = self.to_wire();
        file.profiles.insert(name.to_owned(), spec);
        self.rebuilt(file, Target::Profile(name))
    }

    /// This inventory without the profile `name`: refused while hosts use it.
    pub fn without_profile(&self, name: &str) -> Result<Inventory, ChangeError> {
        let users: Vec<FieldError> = self
            .hosts
            .iter()
            .filter(|h| h.profile == name || h.menu.iter().any(|m| m == name))
            .map(|h| FieldError::new("name", format!("host {} uses profile {name}", h.name)))
            .collect();
        if !users.is_empty() {
            return Err(ChangeError::Conflict(users));
        }
        let mut file = self.to_wire();
        file.profiles.remove(name);
        self.rebuilt(file, Target::None)
    }

    /// Validates `file` as a whole, then carries over what is not in the file form (which
    /// `once` hosts have been consumed). `target` is the record the caller changed.
    fn rebuilt(
        &self,
        file: wire::InventoryFile,
        target: Target<'_>,
    ) -> Result<Inventory, ChangeError> {
        let names: Vec<String> = file
            .hosts
            .iter()
            .map(|h| h.name.clone().unwrap_or_default())
            .collect();
        match Inventory::from_wire(Path::new(API_PATH), file) {
            Ok(next) => {
                let mut next = self.carried_into(next);
                // The images resolved when the configuration was loaded; a profile naming
                // one they do not hold is refused (a reload resolves anew).
                next.set_images(self.images.clone())
                    .map_err(|(key, why)| field_error(&key, &why, &names, target))?;
                Ok(next)
            }
            Err(InventoryError::Invalid { key, reason, .. }) => {
                Err(field_error(&key, &reason, &names, target))
            }
            Err(other) => Err(ChangeError::Invalid(vec![FieldError::new(
                "",
                other.to_string(),
            )])),
        }
    }

    /// `next` with this inventory's run-time state (consumed `once` hosts) for the hosts it
    /// still has.
    fn carried_into(&self, mut next: Inventory) -> Inventory {
        for name in self.consumed() {
            if next.host_named(name).is_some() {
                next.set_consumed(name, true);
            }
        }
        next
    }
}

/// Which record of a rebuilt file the caller changed.
#[derive(Clone, Copy)]
enum Target<'a> {
    Host(usize),
    Profile(&'a str),
    None,
}

/// `hosts[3]` in a reason becomes `host node03`: an API caller knows hosts by name.
fn name_hosts(reason: &str, names: &[String]) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(at) = rest.find("hosts[") {
        out.push_str(&rest[..at]);
        let after = &rest[at + "hosts[".len()..];
        let parsed = after
            .find(']')
            .and_then(|end| Some((after[..end].parse::<usize>().ok()?, end)));
        match parsed.and_then(|(i, end)| Some((names.get(i)?, end))) {
            Some((name, end)) => {
                out.push_str("host ");
                out.push_str(name);
                rest = &after[end + 1..];
            }
            None => {
                out.push_str("hosts[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// Maps a file-form error key to the changed resource's field, or to a conflict.
fn field_error(key: &str, reason: &str, names: &[String], target: Target<'_>) -> ChangeError {
    let reason = name_hosts(reason, names);
    let conflict = reason.contains(" is also host ");
    let own = match target {
        Target::Host(i) => key
            .strip_prefix(&format!("hosts[{i}]"))
            .map(|rest| rest.strip_prefix('.').unwrap_or(rest)),
        Target::Profile(p) => key
            .strip_prefix(&format!("profiles.{p}"))
            .map(|rest| rest.strip_prefix('.').unwrap_or("name")),
        Target::None => None,
    };
    match own {
        Some(field) => {
            let field = if field.is_empty() { "bmc" } else { field };
            let e = vec![FieldError::new(field, reason)];
            if conflict {
                ChangeError::Conflict(e)
            } else {
                ChangeError::Invalid(e)
            }
        }
        // Another record is now invalid because of this change (a profile it names is
        // gone): the change conflicts with it.
        None => ChangeError::Conflict(vec![FieldError::new(name_hosts(key, names), reason)]),
    }
}

/// The checks an API write gets on top of the file's: paths a caller could use to make the
/// daemon read files of its choosing, and secrets it could have sent where it likes.
/// `current` is the record being replaced. The operator's secret source (a `password_file`,
/// or a `password_env` other than the host's own [`api_password_env`]) may be kept only with
/// the BMC `url` and TLS settings (`fingerprint`, `ca_file`, `insecure`, `allow_plaintext`)
/// it was written with: otherwise a caller could point the host's BMC at its own server and
/// have the next reboot log in there with the operator's password.
pub fn api_host_checks(spec: &wire::Host, current: Option<&wire::Host>) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let Some(bmc) = &spec.bmc else {
        return errors;
    };
    let name = spec.name.as_deref().unwrap_or_default();
    let old = current.and_then(|c| c.bmc.as_ref());
    // Where the password goes, and how its receiver is verified.
    let same_target = old.is_some_and(|o| {
        (
            &o.url,
            &o.fingerprint,
            &o.ca_file,
            o.insecure,
            o.allow_plaintext,
        ) == (
            &bmc.url,
            &bmc.fingerprint,
            &bmc.ca_file,
            bmc.insecure,
            bmc.allow_plaintext,
        )
    });
    let moved = "the BMC's url or TLS settings (fingerprint, ca_file, insecure, allow_plaintext) \
                 change while the operator's password source is kept: send the host's own \
                 variable";
    if let Some(f) = &bmc.password_file {
        let kept = old.and_then(|o| o.password_file.as_ref()) == Some(f);
        if !kept {
            errors.push(FieldError::new(
                "bmc.password_file",
                format!(
                    "the API does not set password files (the daemon would read any file it is \
                     pointed at and send it to the BMC URL); use password_env {}, or the \
                     inventory file",
                    api_password_env(name)
                ),
            ));
        } else if !same_target {
            errors.push(FieldError::new(
                "bmc.password_file",
                format!("{moved} ({})", api_password_env(name)),
            ));
        }
    }
    if let Some(v) = &bmc.password_env {
        let own = *v == api_password_env(name);
        let kept = old.and_then(|o| o.password_env.as_ref()) == Some(v);
        if !own && !kept {
            errors.push(FieldError::new(
                "bmc.password_env",
                format!(
                    "{v:?}: from the API, the variable must be the host's own, {}",
                    api_password_env(name)
                ),
            ));
        } else if !own && !same_target {
            errors.push(FieldError::new(
                "bmc.password_env",
                format!("{moved} ({})", api_password_env(name)),
            ));
        }
    }
    if let Some(f) = &bmc.ca_file {
        if old.and_then(|o| o.ca_file.as_ref()) != Some(f) {
            errors.push(FieldError::new(
                "bmc.ca_file",
                "the API does not set file paths; use fingerprint, or the inventory file",
            ));
        }
    }
    errors
}

/// A profile's file names from the API must stay under the image roots: relative, without
/// `..` (the servers would refuse them at boot; the API refuses them at write time).
pub fn api_profile_checks(spec: &wire::Profile) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let mut check = |field: String, name: &str| {
        let p = Path::new(name);
        if name.is_empty()
            || p.is_absolute()
            || p.components()
                .any(|c| !matches!(c, std::path::Component::Normal(_)))
            || name.chars().any(char::is_control)
        {
            errors.push(FieldError::new(
                field,
                format!("{name:?}: a file name relative to the image root, without `..`"),
            ));
        }
    };
    if let Some(k) = &spec.kernel {
        check("kernel".to_owned(), k);
    }
    for (i, f) in spec.initrd.iter().enumerate() {
        check(format!("initrd[{i}]"), f);
    }
    if spec.cmdline.chars().any(char::is_control) {
        errors.push(FieldError::new(
            "cmdline",
            "one line, without control characters",
        ));
    }
    errors
}

fn boot_to_wire(b: &BootSettings) -> boot_wire::Boot {
    boot_wire::Boot {
        next_server: b.next_server.map(|ip| ip.to_string()),
        http_base: b.http_base.clone(),
        bios: b.bios.clone(),
        uefi_x64: b.uefi_x64.clone(),
        uefi_x86: b.uefi_x86.clone(),
        uefi_arm64: b.uefi_arm64.clone(),
        ipxe_script: b.ipxe_script.clone(),
        uefi_http_x64: b.uefi_http_x64.clone(),
        uefi_http_arm64: b.uefi_http_arm64.clone(),
        secure_boot: b.secure_boot,
        shim_x64: b.shim_x64.clone(),
    }
}

fn options_to_wire(o: &OptionSet) -> boot_wire::DhcpOptions {
    let ips = |v: &Vec<std::net::Ipv4Addr>| v.iter().map(|ip| ip.to_string()).collect();
    boot_wire::DhcpOptions {
        router: o.router.map(|ip| ip.to_string()),
        dns: o.dns.as_ref().map(ips),
        domain: o.domain.clone(),
        ntp: o.ntp.as_ref().map(ips),
        mtu: o.mtu,
        lease_time: o.lease_time,
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A profile in its written form.
pub fn profile_to_wire(p: &Profile) -> wire::Profile {
    // An image's files are derived (resolved at load), never written back.
    let derived = p.image.is_some();
    wire::Profile {
        image: p.image.clone(),
        kernel: p.kernel.clone().filter(|_| !derived),
        initrd: if derived {
            Vec::new()
        } else {
            p.initrd.clone()
        },
        cmdline: p.cmdline.clone(),
        boot: (p.boot != BootSettings::default()).then(|| boot_to_wire(&p.boot)),
        sha256: p.sha256.iter().map(|(f, d)| (f.clone(), hex(d))).collect(),
    }
}

fn bmc_to_wire(b: &BmcConfig) -> wire::Bmc {
    let https = b.url.starts_with("https://");
    let (password_file, password_env) = match &b.password {
        PasswordSource::File(p) => (Some(p.to_string_lossy().into_owned()), None),
        PasswordSource::Env(v) => (None, Some(v.clone())),
    };
    let (ca_file, fingerprint, insecure) = match &b.tls {
        TlsPolicy::CaFile(p) => (Some(p.to_string_lossy().into_owned()), None, None),
        TlsPolicy::Fingerprint(d) => (None, Some(hex(d)), None),
        // Plain http has no certificate to check: `insecure` is implied, not written.
        TlsPolicy::Insecure => (None, None, https.then_some(true)),
    };
    wire::Bmc {
        url: Some(b.url.clone()),
        username: Some(b.username.clone()),
        password_file,
        password_env,
        ca_file,
        fingerprint,
        insecure,
        allow_plaintext: (!https).then_some(true),
        system: b.system.clone(),
        boot: match b.boot {
            BootTarget::Pxe => None,
            BootTarget::UefiHttp => Some("uefi-http".to_owned()),
        },
        boot_mode: b.boot_mode.map(|m| {
            match m {
                BootMode::Uefi => "uefi",
                BootMode::Legacy => "legacy",
            }
            .to_owned()
        }),
        timeout_s: Some(b.timeout.as_secs()),
        attempts: Some(b.attempts),
    }
}

/// A host in its written form.
pub fn host_to_wire(h: &Host) -> wire::Host {
    wire::Host {
        name: Some(h.name.clone()),
        mac: Some(h.mac.to_string()),
        ip: h.ip.map(|ip| ip.to_string()),
        ipv6: h.ipv6.map(|ip| ip.to_string()),
        profile: Some(h.profile.clone()),
        menu: h.menu.clone(),
        options: (h.options != OptionSet::default()).then(|| options_to_wire(&h.options)),
        model: h.model.clone(),
        rack: h.rack.clone(),
        bmc: h.bmc.as_ref().map(bmc_to_wire),
        netboot: (h.netboot != super::Netboot::Allow).then(|| h.netboot.to_string()),
        meta: (!h.meta.is_empty()).then(|| h.meta.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(text: &str) -> Inventory {
        let wire = toml::from_str(text).expect("toml");
        Inventory::from_wire(Path::new("/etc/bootfabric/hosts.toml"), wire).expect("valid")
    }

    #[test]
    fn api_changes_keep_the_images_a_load_resolved_and_refuse_others() {
        use crate::model::images::{Catalog, ImageState, StoredFile, Version};
        let mut inv = inventory(
            "[profiles.fc]\nimage = \"fc\"\n[[hosts]]\nname = \"n1\"\nmac = \"52:54:00:00:00:01\"\nprofile = \"fc\"\n",
        );
        assert_eq!(inv.profile("fc").and_then(|p| p.kernel.clone()), None);
        let f = |n: &str| StoredFile {
            name: n.into(),
            sha256: "ab".repeat(32),
            sha512: String::new(),
            size: 1,
        };
        let mut state = ImageState::default();
        state.adopt(Version {
            id: "0123456789abcdef".into(),
            added: 0,
            source: String::new(),
            kernel: f("vmlinuz"),
            initrd: vec![f("initrd")],
            iso_sha256: None,
            iso_sha512: None,
            checksum: None,
            signed_by: None,
            signed_at: None,
            rejected: false,
        });
        let catalog = Catalog::from_states([("fc".to_owned(), state)].into());
        inv.resolve_images(&catalog, &["fc".to_owned()])
            .expect("resolves");
        let kernel = Some("images/fc/0123456789abcdef/vmlinuz".to_owned());
        assert_eq!(inv.profile("fc").and_then(|p| p.kernel.clone()), kernel);
        // The written form names the image, not its derived files.
        let w = profile_to_wire(inv.profile("fc").expect("fc"));
        assert_eq!((w.image.as_deref(), w.kernel), (Some("fc"), None));
        // A host written through the API: the image stays resolved.
        let next = inv
            .with_host(host_to_wire(&inv.hosts()[0]))
            .expect("host write");
        assert_eq!(next.profile("fc").and_then(|p| p.kernel.clone()), kernel);
        // A new profile naming the image gets it; one naming another version is refused.
        let spec = |image: &str| wire::Profile {
            image: Some(image.into()),
            ..Default::default()
        };
        let next = inv.with_profile("fc2", spec("fc")).expect("same image");
        assert_eq!(next.profile("fc2").and_then(|p| p.kernel.clone()), kernel);
        let e = inv.with_profile("fc3", spec("fc@ffffffffffffffff"));
        assert!(e.is_err(), "{e:?}");
        // An image and files at once is refused.
        let both = wire::Profile {
            image: Some("fc".into()),
            kernel: Some("x/vmlinuz".into()),
            ..Default::default()
        };
        assert!(inv.with_profile("fc4", both).is_err());
    }

    const INV: &str = r#"
        [profiles.debian]
        kernel = "debian/vmlinuz"
        initrd = ["debian/initrd.gz"]
        cmdline = "console=ttyS0"
        sha256 = { "debian/vmlinuz" = "abababababababababababababababababababababababababababababababab" }
        boot = { ipxe_script = "debian.ipxe", next_server = "10.0.0.1" }
        [profiles.rescue]

        [[hosts]]
        name = "node01"
        mac = "52:54:00:aa:00:01"
        ip = "10.77.0.11"
        profile = "debian"
        menu = ["rescue"]
        options = { router = "10.77.0.1", dns = ["10.77.0.2"], mtu = 9000 }
        model = "r650"
        rack = "r1"
        bmc = { url = "https://10.0.9.11", username = "root", password_file = "secrets/bmc.pass", fingerprint = "AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB:AB", boot = "uefi-http", boot_mode = "uefi" }

        [[hosts]]
        name = "node02"
        mac = "52:54:00:aa:00:02"
        profile = "rescue"
        netboot = "once"
        meta = { role = "worker", disks = ["sda"], bmc = { slot = 4 } }
        bmc = { url = "http://127.0.0.1:8000", username = "a", password_env = "P", allow_plaintext = true, timeout_s = 3 }
    "#;

    #[test]
    fn the_written_form_round_trips() {
        let inv = inventory(INV);
        let again = Inventory::from_wire(Path::new("elsewhere/x.toml"), inv.to_wire())
            .expect("its own written form is valid");
        assert_eq!(again.hosts(), inv.hosts());
        assert_eq!(again.profiles(), inv.profiles());
    }

    #[test]
    fn a_change_keeps_the_consumed_once_hosts_it_still_has() {
        let mut inv = inventory(INV);
        inv.set_consumed("node02", true);
        inv.set_consumed("node01", true);
        let next = inv.without_host("node01").expect("valid");
        assert!(next.is_consumed("node02"));
        assert!(!next.is_consumed("node01"), "gone with its host");
    }

    fn spec(json: serde_json::Value) -> wire::Host {
        serde_json::from_value(json).expect("wire host")
    }

    #[test]
    fn a_bad_field_is_named_inside_the_resource() {
        let inv = inventory(INV);
        let bad =
            spec(serde_json::json!({"name": "node03", "mac": "52:54:00", "profile": "debian"}));
        let Err(ChangeError::Invalid(e)) = inv.with_host(bad) else {
            panic!("a bad MAC is invalid")
        };
        assert_eq!(e[0].field, "mac");
        let bad = spec(
            serde_json::json!({"name": "node03", "mac": "52:54:00:aa:00:03", "profile": "debian",
            "bmc": {"url": "ftp://x", "username": "u", "password_env": "BOOTFABRIC_BMC_X"}}),
        );
        let Err(ChangeError::Invalid(e)) = inv.with_host(bad) else {
            panic!("a bad BMC URL is invalid")
        };
        assert_eq!(e[0].field, "bmc.url");
        let bad = spec(
            serde_json::json!({"name": "node03", "mac": "52:54:00:aa:00:03", "profile": "nope"}),
        );
        let Err(ChangeError::Invalid(e)) = inv.with_host(bad) else {
            panic!("an unknown profile is invalid")
        };
        assert_eq!(e[0].field, "profile");
    }

    #[test]
    fn a_duplicate_mac_or_address_conflicts_naming_the_other_host() {
        let inv = inventory(INV);
        let dup = spec(
            serde_json::json!({"name": "node03", "mac": "52:54:00:aa:00:02", "profile": "debian"}),
        );
        let Err(ChangeError::Conflict(e)) = inv.with_host(dup) else {
            panic!("a duplicate MAC conflicts")
        };
        assert_eq!(e[0].field, "mac");
        assert!(e[0].reason.contains("host node02"), "{}", e[0].reason);
        let dup = spec(
            serde_json::json!({"name": "node03", "mac": "52:54:00:aa:00:03", "ip": "10.77.0.11", "profile": "debian"}),
        );
        let Err(ChangeError::Conflict(e)) = inv.with_host(dup) else {
            panic!("a duplicate address conflicts")
        };
        assert_eq!(e[0].field, "ip");
        assert!(e[0].reason.contains("host node01"), "{}", e[0].reason);
    }

    #[test]
    fn hosts_are_replaced_in_place_and_removed() {
        let inv = inventory(INV);
        let mut node02 = host_to_wire(&inv.hosts()[1]);
        node02.rack = Some("r9".to_owned());
        let next = inv.with_host(node02).expect("valid");
        assert_eq!(next.hosts()[1].rack.as_deref(), Some("r9"));
        assert_eq!(next.hosts().len(), 2);
        let next = next.without_host("node01").expect("valid");
        assert_eq!(next.hosts().len(), 1);
        assert!(next.host_named("node01").is_none());
        assert!(next.host_by_ip("10.77.0.11".parse().expect("ip")).is_none());
    }

    #[test]
    fn a_profile_in_use_cannot_go() {
        let inv = inventory(INV);
        let Err(ChangeError::Conflict(e)) = inv.without_profile("rescue") else {
            panic!("in use")
        };
        let hosts: Vec<&str> = e.iter().map(|e| e.reason.as_str()).collect();
        assert_eq!(
            hosts,
            [
                "host node01 uses profile rescue",
                "host node02 uses profile rescue"
            ]
        );
        let next = inv
            .with_profile("spare", wire::Profile::default())
            .expect("valid")
            .without_profile("spare")
            .expect("unused");
        assert_eq!(next.profiles().len(), 2);
        let bad = wire::Profile {
            sha256: [("other".to_owned(), "ab".to_owned())].into(),
            ..Default::default()
        };
        let Err(ChangeError::Invalid(e)) = inv.with_profile("x", bad) else {
            panic!("invalid")
        };
        assert!(e[0].field.starts_with("sha256"), "{e:?}");
    }

    #[test]
    fn the_api_cannot_point_the_daemon_at_files() {
        let new = spec(
            serde_json::json!({"name": "n", "bmc": {"password_file": "/etc/shadow", "ca_file": "/etc/passwd"}}),
        );
        let fields: Vec<String> = api_host_checks(&new, None)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["bmc.password_file", "bmc.ca_file"]);
        // The operator's own paths (from the file) may be kept by a write that changes
        // something else.
        assert!(api_host_checks(&new, Some(&new)).is_empty());
        let env = spec(
            serde_json::json!({"name": "n", "bmc": {"password_env": "AWS_SECRET_ACCESS_KEY"}}),
        );
        assert_eq!(api_host_checks(&env, None)[0].field, "bmc.password_env");
        let env =
            spec(serde_json::json!({"name": "n", "bmc": {"password_env": "BOOTFABRIC_BMC_N"}}));
        assert_eq!(
            api_host_checks(&env, None)[0].field,
            "bmc.password_env",
            "another host's variable"
        );
        let env = spec(
            serde_json::json!({"name": "n-1", "bmc": {"password_env": "BOOTFABRIC_BMC_N_1_PASSWORD"}}),
        );
        assert!(api_host_checks(&env, None).is_empty());

        let p: wire::Profile = serde_json::from_value(serde_json::json!(
            {"kernel": "../../etc/shadow", "initrd": ["ok/initrd", "/abs"], "cmdline": "a\nimgfetch x"}))
        .expect("wire profile");
        let fields: Vec<String> = api_profile_checks(&p)
            .into_iter()
            .map(|e| e.field)
            .collect();
        assert_eq!(fields, ["kernel", "initrd[1]", "cmdline"]);
    }

    /// A token holder must not be able to send the operator's BMC password to its own server.
    #[test]
    fn the_operators_bmc_password_stays_with_the_operators_bmc() {
        let file = |bmc: serde_json::Value| spec(serde_json::json!({"name": "node07", "bmc": bmc}));
        for secret in [
            serde_json::json!({"password_file": "/etc/bootfabric/bmc07"}),
            serde_json::json!({"password_env": "BMC_PASS"}),
        ] {
            let field = format!(
                "bmc.{}",
                secret
                    .as_object()
                    .and_then(|o| o.keys().next())
                    .expect("key")
            );
            let mut bmc = serde_json::json!({"url": "https://10.0.9.7", "username": "root",
                "fingerprint": "ab:cd"});
            merge(&mut bmc, &secret);
            let current = file(bmc.clone());
            // Something else changes (the user name): the password source is kept.
            let mut other = bmc.clone();
            other["username"] = "admin".into();
            assert!(api_host_checks(&file(other), Some(&current)).is_empty());
            // Only the URL, or only a TLS setting, changes: refused.
            for (key, value) in [
                ("url", serde_json::json!("https://10.6.6.6")),
                ("fingerprint", serde_json::json!("66:66")),
                ("insecure", serde_json::json!(true)),
                ("allow_plaintext", serde_json::json!(true)),
            ] {
                let mut moved = bmc.clone();
                moved[key] = value;
                let errors = api_host_checks(&file(moved), Some(&current));
                assert_eq!(
                    errors.iter().map(|e| e.field.as_str()).collect::<Vec<_>>(),
                    [field.as_str()],
                    "{key}"
                );
            }
            // With the host's own variable instead, the BMC may move.
            let mut own = bmc.clone();
            own["url"] = "https://10.6.6.6".into();
            if let Some(o) = own.as_object_mut() {
                o.remove("password_file");
                o.insert(
                    "password_env".into(),
                    "BOOTFABRIC_BMC_NODE07_PASSWORD".into(),
                );
            }
            assert!(api_host_checks(&file(own), Some(&current)).is_empty());
        }
    }

    fn merge(into: &mut serde_json::Value, from: &serde_json::Value) {
        if let (Some(a), Some(b)) = (into.as_object_mut(), from.as_object()) {
            a.extend(b.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
    }
}
