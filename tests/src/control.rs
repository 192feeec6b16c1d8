//! The lab of a controller-driven test: the provisioning fabric and a separate control
//! network, as a real deployment has them.
//!
//! - `server`: the daemon's namespace, with `fabric0` (10.77.0.1/24) on the fabric bridge
//!   and `ctl0` (10.78.0.1/24), a veth to the control namespace.
//! - `fabric`: the bridge machines plug into ([`crate::simhost::SimHost`], QEMU taps).
//! - `ctl`: the controller's namespace (10.78.0.2/24): the API client, the SSE client and the
//!   webhook receiver live there.
//!
//! The admin API listens on 10.78.0.1 with `admin.allow = ["10.78.0.0/24"]`, so a machine
//! on the fabric that routes to it is refused: the test asserts that too.

use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _, path::PathBuf, process::Command};

use crate::{bootfabric_bin, run, veth, Bridge, Daemon, LabError, Netns, TempDir};

/// The daemon's address on the control network.
pub const SERVER_CTL: &str = "10.78.0.1";
/// The controller's address.
pub const CTL: &str = "10.78.0.2";
/// The daemon's address on the fabric.
pub const SERVER_FABRIC: &str = "10.77.0.1";

/// Namespaces, links and the admin token of a control-plane lab.
pub struct ControlLab {
    /// The daemon's namespace.
    pub server: Netns,
    /// The fabric's switch.
    pub fabric: Bridge,
    /// The controller's namespace.
    pub ctl: Netns,
    /// The lab's folder (token, secrets, images, configs).
    pub dir: TempDir,
    /// The admin token (as `admin.token_file` holds it).
    pub token: String,
    /// `admin.token_file`.
    pub token_file: PathBuf,
}

impl ControlLab {
    /// Builds the namespaces and links, and a fresh admin token.
    pub fn new() -> Result<ControlLab, LabError> {
        let server = Netns::new("srv")?;
        let mut fabric = Bridge::new()?;
        fabric.plug(&server, "fabric0", &format!("{SERVER_FABRIC}/24"))?;
        let ctl = Netns::new("ctl")?;
        veth(
            &server,
            "ctl0",
            &format!("{SERVER_CTL}/24"),
            &ctl,
            "ctl1",
            &format!("{CTL}/24"),
        )?;
        let dir = TempDir::new()?;
        let token_file = dir.path.join("admin.token");
        let token = run(Command::new(bootfabric_bin())
            .args(["admin", "token", "create", "--print", "--file"])
            .arg(&token_file))?
        .trim()
        .to_owned();
        if token.is_empty() {
            return Err("bootfabric admin token create printed no token".into());
        }
        Ok(ControlLab {
            server,
            fabric,
            ctl,
            dir,
            token,
            token_file,
        })
    }

    /// The `[admin]` section: the API on the control network only, with the token.
    pub fn admin_section(&self) -> String {
        format!(
            "[admin]\nlisten = \"{SERVER_CTL}:0\"\nallow = [\"10.78.0.0/24\"]\ntoken_file = \"{}\"\n",
            self.token_file.display()
        )
    }

    /// Writes `secret` (no newline) to `name` in the lab's folder with mode 0600, as the
    /// daemon demands of secret files.
    pub fn secret_file(&self, name: &str, secret: &str) -> Result<PathBuf, LabError> {
        let path = self.dir.path.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| format!("{}: {e}", path.display()))?;
        f.write_all(secret.as_bytes())
            .map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(path)
    }

    /// A folder under the lab's folder, created.
    pub fn folder(&self, name: &str) -> Result<PathBuf, LabError> {
        let p = self.dir.path.join(name);
        std::fs::create_dir_all(&p).map_err(|e| format!("{}: {e}", p.display()))?;
        Ok(p)
    }

    /// The API client of `daemon`, in the controller's namespace, with the token.
    pub fn api<'a>(&'a self, daemon: &Daemon) -> crate::api::Api<'a> {
        crate::api::Api::new(&self.ctl, daemon.admin, Some(&self.token))
    }
}

/// The reservations in the XDP program's host map (`DHCP_HOSTS`) on `iface` in `ns`, as
/// (MAC, address) pairs read with bpftool: what the kernel answers without userspace.
/// `Ok(None)` when no XDP program is attached there.
pub fn xdp_reservations(
    ns: &Netns,
    iface: &str,
) -> Result<Option<Vec<(String, std::net::Ipv4Addr)>>, LabError> {
    let link: serde_json::Value = json(&ns.ip(&["-j", "-d", "link", "show", "dev", iface])?)?;
    let xdp = &link[0]["xdp"];
    let prog = xdp["prog"]["id"]
        .as_u64()
        .or_else(|| xdp["attached"][0]["prog"]["id"].as_u64());
    let Some(prog) = prog else {
        return Ok(None);
    };
    let bpftool = |args: &[&str]| -> Result<serde_json::Value, LabError> {
        json(&run(Command::new("bpftool").arg("-j").args(args))?)
    };
    let info = bpftool(&["prog", "show", "id", &prog.to_string()])?;
    let ids: Vec<u64> = info["map_ids"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_u64()).collect())
        .unwrap_or_default();
    for id in ids {
        let id = id.to_string();
        let map = bpftool(&["map", "show", "id", &id])?;
        if map["name"].as_str() != Some("DHCP_HOSTS") {
            continue;
        }
        let entries = bpftool(&["map", "dump", "id", &id])?;
        let bytes = |v: &serde_json::Value| -> Vec<u8> {
            v.as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|b| b.as_str())
                        .filter_map(|b| u8::from_str_radix(b.trim_start_matches("0x"), 16).ok())
                        .collect()
                })
                .unwrap_or_default()
        };
        let mut out = Vec::new();
        for e in entries.as_array().into_iter().flatten() {
            let (k, v) = (bytes(&e["key"]), bytes(&e["value"]));
            if k.len() < 6 || v.len() < 4 {
                return Err(format!("DHCP_HOSTS entry without raw bytes: {e}"));
            }
            let mac = k[..6]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            out.push((mac, std::net::Ipv4Addr::new(v[0], v[1], v[2], v[3])));
        }
        return Ok(Some(out));
    }
    Err(format!(
        "XDP program {prog} on {iface} has no DHCP_HOSTS map"
    ))
}

fn json(text: &str) -> Result<serde_json::Value, LabError> {
    serde_json::from_str(text).map_err(|e| format!("not JSON ({e}): {text}"))
}
