//! A fabric daemon in cluster mode, in a namespace of its own on an [`EtcdCluster`]'s
//! bridge: what every cluster lab test starts. [`Fabric::on`] gives a builder with the
//! options those tests vary (rack, inventory, a client LAN, more config sections, the XDP
//! section, the admin token, TLS files); [`FabricBuilder::start`] writes the config, starts
//! the daemon and returns a [`Fabric`]: the namespace, the daemon, and the reads the tests
//! repeat (the status's `cluster` view, a bounded wait on it, metrics, `bootfabric check`).
//!
//! Every fabric gets the same cluster timing (`ttl_s = 3`, `timeout_s = 2`): a dead fabric's
//! lease runs out in seconds and a request to an etcd without quorum fails fast.

use std::{
    ops::{Deref, DerefMut},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use serde_json::Value;

use crate::{
    api::Api, bootfabric_bin, etcd::CertPair, etcd::EtcdCluster, http_get, metrics, run, sample,
    wait_for, Bridge, Daemon, LabError, Netns, TempDir,
};

/// How long [`Fabric::wait_view`] waits for a view (a bound on a wait, not a timing check).
const VIEW_BOUND: Duration = Duration::from_secs(40);

/// An admin token made by `bootfabric admin token create`, in a folder of its own: the file
/// every fabric of a test reads ([`FabricBuilder::admin_token`]) and the token its API
/// clients send.
pub struct AdminToken {
    /// The token file (`admin.token_file`).
    pub file: PathBuf,
    /// The token, as a client sends it.
    pub token: String,
    _dir: TempDir,
}

impl AdminToken {
    /// Creates a token (and its file) with the daemon's own command.
    pub fn create() -> Result<Self, LabError> {
        let dir = TempDir::new()?;
        let file = dir.path.join("admin.token");
        let token = run(Command::new(bootfabric_bin())
            .args(["admin", "token", "create", "--print", "--file"])
            .arg(&file))?
        .trim()
        .to_owned();
        Ok(Self {
            file,
            token,
            _dir: dir,
        })
    }
}

/// A client namespace (`role`) on `bridge`, its end `ifname` at `addr` (a CIDR), whose
/// limited broadcasts (a DHCP DISCOVER) leave by the default route.
pub fn client_on(
    bridge: &mut Bridge,
    role: &str,
    ifname: &str,
    addr: &str,
) -> Result<Netns, LabError> {
    let ns = Netns::new(role)?;
    bridge.plug(&ns, ifname, addr)?;
    ns.ip(&["route", "add", "default", "dev", ifname])?;
    Ok(ns)
}

/// What [`Fabric::on`] starts; see the module's documentation.
pub struct FabricBuilder<'a> {
    etcd: &'a mut EtcdCluster,
    host: u8,
    /// The clients' bridge and `fabric0`'s address on it.
    lan: Option<(&'a mut Bridge, String)>,
    config: FabricConfig,
    files: Vec<(String, String)>,
}

/// The config's parts the tests vary; [`FabricConfig::render`] makes the TOML (pure).
#[derive(Clone, Debug)]
struct FabricConfig {
    name: String,
    rack: Option<String>,
    /// More `[daemon]` lines.
    daemon: Vec<String>,
    /// More `[admin]` lines.
    admin: Vec<String>,
    /// The `[xdp]` section's lines.
    xdp: String,
    /// Whole sections, before `[cluster]`.
    sections: String,
    /// More `[cluster]` lines.
    cluster: Vec<String>,
}

/// A fabric daemon in cluster mode and its namespace. It derefs to its [`Daemon`]
/// (`log()`, `stop_with`, `restart`, `admin`, ...).
pub struct Fabric {
    /// The daemon (declared first: dropped, so killed, before its namespace goes).
    pub daemon: Daemon,
    /// Its namespace.
    pub ns: Netns,
}

impl Fabric {
    /// A fabric named `name` on `etcd`'s bridge at `10.90.0.<host>/24`. Without
    /// [`FabricBuilder::lan`] the bridge is its `fabric0`, the interface it serves.
    pub fn on<'a>(etcd: &'a mut EtcdCluster, name: &str, host: u8) -> FabricBuilder<'a> {
        FabricBuilder {
            etcd,
            host,
            lan: None,
            config: FabricConfig::new(name),
            files: Vec::new(),
        }
    }

    /// The `cluster` member of `/api/v1/status`; an error unless it answers 200.
    pub fn view(&self) -> Result<Value, LabError> {
        let (status, body) = http_get(&self.ns, self.daemon.admin, "/api/v1/status")?;
        if status != 200 {
            return Err(format!("/api/v1/status answered {status}: {body}"));
        }
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("{e}: {body}"))?;
        Ok(v["cluster"].clone())
    }

    /// Waits (bounded) until the fabric's view of the cluster satisfies `ok`; the last view
    /// otherwise. A status that does not answer 200 panics at once: that is no view to wait
    /// for, but a fabric that is broken.
    pub fn wait_view(&self, ok: impl Fn(&Value) -> bool) -> Result<Value, Value> {
        let mut last = Value::Null;
        wait_for(VIEW_BOUND, || {
            last = self.view().unwrap_or_else(|e| panic!("status: {e}"));
            ok(&last).then(|| last.clone())
        })
        .ok_or(last)
    }

    /// Waits (bounded by `bound`) until the fabric has logged `text`; whether it did.
    pub fn wait_log(&self, text: &str, bound: Duration) -> bool {
        wait_for(bound, || self.log().contains(text).then_some(())).is_some()
    }

    /// `GET /metrics` (an error unless it answers 200).
    pub fn metrics(&self) -> Result<String, LabError> {
        metrics(&self.ns, &self.daemon)
    }

    /// One sample of `GET /metrics` (see [`sample`]).
    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Result<Option<f64>, LabError> {
        Ok(sample(&self.metrics()?, name, labels))
    }

    /// `GET path` from the admin server: (status, body).
    pub fn get(&self, path: &str) -> Result<(u16, String), LabError> {
        http_get(&self.ns, self.daemon.admin, path)
    }

    /// An admin API client of this fabric, with `token` when the API wants one.
    pub fn api(&self, token: Option<&str>) -> Api<'_> {
        Api::new(&self.ns, self.daemon.admin, token)
    }

    /// `bootfabric check --skip <skip> --config <the fabric's config>` run in its
    /// namespace (where etcd is reachable): its report, whatever the exit status (a FAIL
    /// makes it 1).
    pub fn check(&self, skip: &str) -> Result<String, LabError> {
        let out = self
            .ns
            .command(crate::bootfabric_bin())
            .args(["check", "--skip", skip, "--config"])
            .arg(self.daemon.config_path())
            .output()
            .map_err(|e| format!("check: {e}"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Deref for Fabric {
    type Target = Daemon;

    fn deref(&self) -> &Daemon {
        &self.daemon
    }
}

impl DerefMut for Fabric {
    fn deref_mut(&mut self) -> &mut Daemon {
        &mut self.daemon
    }
}

impl<'a> FabricBuilder<'a> {
    /// `cluster.rack` (none by default: the daemon's own default).
    pub fn rack(mut self, rack: &str) -> Self {
        self.config.rack = Some(rack.to_owned());
        self
    }

    /// Plugs the fabric into `lan`, the clients' bridge, as `fabric0` at `addr` (a CIDR);
    /// the etcd bridge is then its `etcd0`, an interface it does not serve.
    pub fn lan(mut self, lan: &'a mut Bridge, addr: &str) -> Self {
        self.lan = Some((lan, addr.to_owned()));
        self
    }

    /// `daemon.inventory`: `text` written as `hosts.toml` beside the config.
    pub fn inventory(mut self, text: &str) -> Self {
        self.config
            .daemon
            .push("inventory = \"hosts.toml\"".to_owned());
        self.file("hosts.toml", text)
    }

    /// A file written beside the config (a BMC password file, ...).
    pub fn file(mut self, name: &str, text: &str) -> Self {
        self.files.push((name.to_owned(), text.to_owned()));
        self
    }

    /// `daemon.log` (the daemon's own default otherwise).
    pub fn log(mut self, level: &str) -> Self {
        self.config.daemon.push(format!("log = {level:?}"));
        self
    }

    /// `admin.token_file`: the admin API wants `token`.
    pub fn admin_token(mut self, token: &AdminToken) -> Self {
        self.config
            .admin
            .push(format!("token_file = \"{}\"", token.file.display()));
        self
    }

    /// The `[xdp]` section's lines (`mode = "off"` by default).
    pub fn xdp(mut self, lines: &str) -> Self {
        self.config.xdp = lines.to_owned();
        self
    }

    /// More sections (`[dhcp]`, `[http]`, `[scheduler]`, ...), as TOML text.
    pub fn section(mut self, toml: &str) -> Self {
        self.config.sections.push_str(toml);
        if !toml.ends_with('\n') {
            self.config.sections.push('\n');
        }
        self
    }

    /// `cluster.ca_file`, and the client certificate when given.
    pub fn tls(mut self, ca: &Path, client: Option<&CertPair>) -> Self {
        self.config.cluster.push(format!("ca_file = {ca:?}"));
        if let Some(p) = client {
            self.config
                .cluster
                .push(format!("cert_file = {:?}", p.cert));
            self.config.cluster.push(format!("key_file = {:?}", p.key));
        }
        self
    }

    /// Creates the namespace, plugs it in, writes the config and its files and starts the
    /// daemon (waiting for its admin server).
    pub fn start(self) -> Result<Fabric, LabError> {
        let ns = Netns::new(&self.config.name)?;
        let on_etcd = format!("10.90.0.{}/24", self.host);
        let config = self.config.render(&self.etcd.endpoints_toml());
        match self.lan {
            Some((lan, addr)) => {
                self.etcd.bridge.plug(&ns, "etcd0", &on_etcd)?;
                lan.plug(&ns, "fabric0", &addr)?;
            }
            None => self.etcd.bridge.plug(&ns, "fabric0", &on_etcd)?,
        }
        let files: Vec<(&str, &str)> = self
            .files
            .iter()
            .map(|(n, t)| (n.as_str(), t.as_str()))
            .collect();
        let daemon = Daemon::start(&ns, &config, &files)?;
        Ok(Fabric { daemon, ns })
    }
}

impl FabricConfig {
    fn new(name: &str) -> Self {
        Self {
            name: name.to_owned(),
            rack: None,
            daemon: Vec::new(),
            admin: Vec::new(),
            xdp: "mode = \"off\"".to_owned(),
            sections: String::new(),
            cluster: Vec::new(),
        }
    }

    /// The config file, `cluster.etcd` being `endpoints` (TOML). The fabric serves
    /// `fabric0`, its admin API listens on the namespace's loopback.
    fn render(&self, endpoints: &str) -> String {
        let lines = |l: &[String]| l.iter().map(|s| format!("{s}\n")).collect::<String>();
        let rack = self
            .rack
            .as_ref()
            .map(|r| format!("rack = {r:?}\n"))
            .unwrap_or_default();
        format!(
            "[daemon]\nstate_dir = \"state\"\n{daemon}\
             [fabric]\ninterfaces = [\"fabric0\"]\n\
             [admin]\nlisten = \"127.0.0.1:9370\"\n{admin}\
             [xdp]\n{xdp}\n\
             {sections}\
             [cluster]\nname = {name:?}\n{rack}etcd = {endpoints}\nttl_s = 3\ntimeout_s = 2\n{cluster}",
            daemon = lines(&self.daemon),
            admin = lines(&self.admin),
            xdp = self.xdp,
            sections = self.sections,
            name = self.name,
            cluster = lines(&self.cluster),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each option lands in its own section, sections before `[cluster]`, in the order
    /// given (a key under the wrong table would be refused by the daemon, or worse, read
    /// as another section's).
    #[test]
    fn every_option_lands_in_its_section() {
        let mut c = FabricConfig::new("fab-a");
        c.rack = Some("rack-a".into());
        c.daemon = vec!["log = \"warn\"".into(), "inventory = \"hosts.toml\"".into()];
        c.admin = vec!["token_file = \"/t/admin.token\"".into()];
        c.xdp = "mode = \"generic\"\nrelay_rate_limit = 10".into();
        c.sections = "[dhcp]\nrate_limit = 5\n".into();
        c.cluster = vec!["ca_file = \"/p/ca.crt\"".into()];
        assert_eq!(
            c.render("[\"http://10.90.0.10:2379\"]"),
            r#"[daemon]
state_dir = "state"
log = "warn"
inventory = "hosts.toml"
[fabric]
interfaces = ["fabric0"]
[admin]
listen = "127.0.0.1:9370"
token_file = "/t/admin.token"
[xdp]
mode = "generic"
relay_rate_limit = 10
[dhcp]
rate_limit = 5
[cluster]
name = "fab-a"
rack = "rack-a"
etcd = ["http://10.90.0.10:2379"]
ttl_s = 3
timeout_s = 2
ca_file = "/p/ca.crt"
"#
        );
        // No rack given: no rack line (the daemon's default applies).
        assert!(!FabricConfig::new("fab-b").render("[]").contains("rack"));
    }
}
