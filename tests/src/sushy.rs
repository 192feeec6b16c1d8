//! sushy-emulator (PyPI sushy-tools) with its fake driver: a real Redfish service the tests
//! did not write, on the loopback of a lab namespace, with basic auth (sushy has no
//! SessionService) and optionally TLS. Killed by PID when dropped.

use std::{
    path::Path,
    process::{Child, Stdio},
    time::Duration,
};

use crate::{run, wait_for, Netns};

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
    /// Starts the emulator in `ns` on 127.0.0.1:`port` with `systems`, user `user` with
    /// `password` (bcrypt in an htpasswd file in `dir`), over TLS when `tls` names a
    /// certificate and key. Waits until it accepts connections; its log is `dir/sushy.log`.
    pub fn start(
        ns: &Netns,
        dir: &Path,
        port: u16,
        systems: &[FakeSystem<'_>],
        (user, password): (&str, &str),
        tls: Option<(&Path, &Path)>,
    ) -> Sushy {
        let htpasswd = dir.join("htpasswd");
        let hash = run(ns.command("python3").args([
            "-c",
            &format!(
                "import bcrypt; print(bcrypt.hashpw(b'{password}', bcrypt.gensalt(rounds=4)).decode())"
            ),
        ]))
        .expect("bcrypt");
        std::fs::write(&htpasswd, format!("{user}:{}\n", hash.trim())).expect("htpasswd");
        let fakes: Vec<String> = systems
            .iter()
            .map(|s| {
                format!(
                    "    {{'uuid': '{}', 'name': '{}', 'power_state': '{}', 'nics': [{{'mac': '{}'}}]}},",
                    s.uuid, s.name, s.power, s.mac
                )
            })
            .collect();
        let mut cfg = format!(
            "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_AUTH_FILE = '{}'\nSUSHY_EMULATOR_STATE_DIR = '{}'\nSUSHY_EMULATOR_FAKE_SYSTEMS = [\n{}\n]\n",
            htpasswd.display(),
            dir.join("state").display(),
            fakes.join("\n")
        );
        if let Some((cert, key)) = tls {
            cfg.push_str(&format!(
                "SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n",
                cert.display(),
                key.display()
            ));
        }
        let conf = dir.join("sushy.conf");
        std::fs::write(&conf, cfg).expect("config");
        let log = std::fs::File::create(dir.join("sushy.log")).expect("log");
        let child = ns
            .command("sushy-emulator")
            .arg("--config")
            .arg(&conf)
            .args(["-i", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("sushy-emulator");
        let scheme = if tls.is_some() { "https" } else { "http" };
        let s = Sushy {
            child,
            url: format!("{scheme}://127.0.0.1:{port}"),
        };
        let up = wait_for(Duration::from_secs(30), || {
            ns.run(move || std::net::TcpStream::connect(("127.0.0.1", port)).ok())
                .ok()
                .flatten()
        });
        assert!(
            up.is_some(),
            "sushy-emulator did not start:\n{}",
            std::fs::read_to_string(dir.join("sushy.log")).unwrap_or_default()
        );
        s
    }
}
