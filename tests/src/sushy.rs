//! sushy-emulator (PyPI sushy-tools) with its fake driver: a real Redfish service the tests
//! did not write, on the loopback of a lab namespace, with basic auth (sushy has no
//! SessionService) and optionally TLS. Killed by PID when dropped.

use std::{
    io::{BufRead, BufReader, ErrorKind, Read, Write},
    net::TcpListener,
    path::Path,
    process::{Child, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
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
    /// The fake driver with its external notifier on: every change to a system (a reset
    /// taking it down, the pending power state applied) is PUT to `url` as the system's JSON.
    FakeNotifying {
        /// The machines.
        systems: &'a [FakeSystem<'a>],
        /// Where the notifications go (a [`PowerLog`]'s URL).
        url: &'a str,
    },
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
        let fake = |systems: &[FakeSystem<'_>], notify: Option<&str>| {
            let fakes: Vec<String> = systems
                .iter()
                .map(|s| {
                    format!(
                        "    {{'uuid': '{}', 'name': '{}', 'power_state': '{}', 'nics': [{{'mac': '{}'}}], 'external_notifier': {}}},",
                        s.uuid,
                        s.name,
                        s.power,
                        s.mac,
                        if notify.is_some() { "True" } else { "False" }
                    )
                })
                .collect();
            let mut text = format!(
                "SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [\n{}\n]\n",
                fakes.join("\n")
            );
            if let Some(url) = notify {
                text.push_str(&format!("EXTERNAL_NOTIFICATION_URL = '{url}'\n"));
            }
            text
        };
        match driver {
            Driver::Fake(systems) => cfg.push_str(&fake(systems, None)),
            Driver::FakeNotifying { systems, url } => cfg.push_str(&fake(systems, Some(url))),
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

/// The fake driver's change notifications, as a list of (system name, power state, pending
/// power state) in the order they came. Listens on 127.0.0.1 of the namespace it was made in;
/// the listener ends when this is dropped.
pub struct PowerLog {
    /// `http://127.0.0.1:port` inside the namespace, for [`Driver::FakeNotifying`].
    pub url: String,
    seen: Arc<Mutex<Vec<PowerChange>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// One notification: the system's state right after a change.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PowerChange {
    /// The system's name.
    pub name: String,
    /// Its UUID (the last segment of its Redfish path).
    pub uuid: String,
    /// Its power state (`On`, `Off`).
    pub power: String,
    /// The power state it is heading for (`On`, `Off`, `GracefulRestart`...), if any.
    pub pending: Option<String>,
}

impl PowerLog {
    /// Starts listening in `ns`.
    pub fn start(ns: &Netns) -> Result<PowerLog, LabError> {
        let listener = ns
            .run(|| TcpListener::bind("127.0.0.1:0"))?
            .map_err(|e| format!("notification listener: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        // Non-blocking accepts so that the thread sees `stop` without a connection.
        listener
            .set_nonblocking(true)
            .map_err(|e| format!("notification listener: {e}"))?;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (seen, stop) = (Arc::clone(&seen), Arc::clone(&stop));
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((conn, _)) => {
                            // Recorded before the answer, so that whatever the emulator
                            // does after the notification returns sees it in the log.
                            answer(conn, |change| {
                                if let Ok(mut s) = seen.lock() {
                                    s.push(change);
                                }
                            });
                        }
                        // Polled, not a wait in a test: the listener has nothing to do.
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(_) => return,
                    }
                }
            })
        };
        Ok(PowerLog {
            url: format!("http://{addr}"),
            seen,
            stop,
            thread: Some(thread),
        })
    }

    /// The notifications so far.
    pub fn changes(&self) -> Vec<PowerChange> {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for PowerLog {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Reads one notification (an HTTP PUT with the system's JSON), hands it to `record`,
/// answers 200 and closes.
fn answer(conn: std::net::TcpStream, record: impl FnOnce(PowerChange)) -> Option<()> {
    conn.set_nonblocking(false).ok()?;
    conn.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    let mut reader = BufReader::new(conn.try_clone().ok()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&body).ok()?;
    let change = PowerChange {
        name: v.get("name")?.as_str()?.to_owned(),
        uuid: v.get("uuid")?.as_str()?.to_owned(),
        power: v.get("power_state")?.as_str()?.to_owned(),
        pending: v
            .get("pending_power")
            .and_then(|p| p.get("power_state"))
            .and_then(|p| p.as_str())
            .map(str::to_owned),
    };
    record(change);
    let mut conn = conn;
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        .ok()
}
