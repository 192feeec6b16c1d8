//! sushy-emulator (PyPI sushy-tools) with its fake driver: a real Redfish service the tests
//! did not write, on the loopback of a lab namespace, with basic auth (sushy has no
//! SessionService) and optionally TLS. Killed by PID when dropped.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use crate::{run, wait_for, LabError, Netns};

/// One fake machine behind the emulator.
pub struct FakeSystem<'a> {
    /// Its name (`Name` in Redfish).
    pub name: &'a str,
    /// Its UUID (the fake driver's identity).
    pub uuid: &'a str,
    /// `On` or `Off`.
    pub power: &'a str,
    /// Its NIC.
    pub mac: &'a str,
}

/// Where the emulator's systems come from.
pub enum Driver<'a> {
    /// Its fake driver: machines that exist only in the emulator.
    Fake(&'a [FakeSystem<'a>]),
    /// libvirt domains behind `uri`; `pythonpath` holds the libvirt Python binding.
    Libvirt {
        /// libvirt connection URI.
        uri: &'a str,
        /// Folder with Debian's libvirt Python module.
        pythonpath: &'a Path,
    },
}

/// A running sushy-emulator.
pub struct Sushy {
    child: Child,
    /// `http(s)://127.0.0.1:port`, inside the namespace it was started in.
    pub url: String,
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sushy {
    /// Starts the emulator in `ns` on 127.0.0.1:`port` with the fake `systems`, user `user`
    /// with `password` (bcrypt in an htpasswd file in `dir`), over TLS when `tls` names a
    /// certificate and key. Waits until it accepts connections; its log is `dir/sushy.log`.
    pub fn start(
        ns: &Netns,
        dir: &Path,
        port: u16,
        systems: &[FakeSystem<'_>],
        creds: (&str, &str),
        tls: Option<(&Path, &Path)>,
    ) -> Sushy {
        Self::start_with(
            ns,
            dir,
            ("127.0.0.1", port),
            Driver::Fake(systems),
            creds,
            tls,
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    /// Starts the emulator in `ns` on `ip:port` with `driver`; see [`Sushy::start`].
    pub fn start_with(
        ns: &Netns,
        dir: &Path,
        (ip, port): (&str, u16),
        driver: Driver<'_>,
        (user, password): (&str, &str),
        tls: Option<(&Path, &Path)>,
    ) -> Result<Sushy, LabError> {
        let htpasswd = dir.join("htpasswd");
        let hash = run(ns.command("python3").args([
            "-c",
            &format!(
                "import bcrypt; print(bcrypt.hashpw(b'{password}', bcrypt.gensalt(rounds=4)).decode())"
            ),
        ]))?;
        std::fs::write(&htpasswd, format!("{user}:{}\n", hash.trim()))
            .map_err(|e| format!("htpasswd: {e}"))?;
        let mut cfg = format!(
            "SUSHY_EMULATOR_AUTH_FILE = '{}'\nSUSHY_EMULATOR_STATE_DIR = '{}'\n",
            htpasswd.display(),
            dir.join("state").display(),
        );
        let mut pythonpath = None;
        match driver {
            Driver::Fake(systems) => {
                let fakes: Vec<String> = systems
                    .iter()
                    .map(|s| {
                        format!(
                            "    {{'uuid': '{}', 'name': '{}', 'power_state': '{}', 'nics': [{{'mac': '{}'}}]}},",
                            s.uuid, s.name, s.power, s.mac
                        )
                    })
                    .collect();
                cfg.push_str(&format!(
                    "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [\n{}\n]\n",
                    fakes.join("\n")
                ));
            }
            Driver::Libvirt { uri, pythonpath: p } => {
                cfg.push_str(&format!(
                    "SUSHY_EMULATOR_LIBVIRT_URI = '{uri}'\nSUSHY_EMULATOR_IGNORE_BOOT_DEVICE = False\n"
                ));
                pythonpath = Some(p.to_owned());
            }
        }
        if let Some((cert, key)) = tls {
            cfg.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n",
                cert.display(),
                key.display()
            ));
        }
        let conf = dir.join("sushy.conf");
        std::fs::write(&conf, cfg).map_err(|e| format!("sushy config: {e}"))?;
        let log = std::fs::File::create(dir.join("sushy.log")).map_err(|e| format!("log: {e}"))?;
        let mut cmd = ns.command("sushy-emulator");
        if let Some(p) = &pythonpath {
            cmd.env("PYTHONPATH", p);
        }
        let child = cmd
            .arg("--config")
            .arg(&conf)
            .args(["-i", ip, "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("sushy-emulator: {e}"))?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let s = Sushy {
            child,
            url: format!("{scheme}://{ip}:{port}"),
        };
        let addr: std::net::SocketAddr = format!("{ip}:{port}")
            .parse()
            .map_err(|e| format!("{ip}:{port}: {e}"))?;
        let up = wait_for(Duration::from_secs(30), || {
            ns.run(move || std::net::TcpStream::connect(addr).ok())
                .ok()
                .flatten()
        });
        if up.is_none() {
            return Err(format!(
                "sushy-emulator did not start:\n{}",
                std::fs::read_to_string(dir.join("sushy.log")).unwrap_or_default()
            ));
        }
        Ok(s)
    }
}
