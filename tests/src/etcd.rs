//! A real etcd cluster for the lab (Debian's `etcd-server`): members in namespaces of their
//! own on one bridge (`10.90.0.0/24`, member `i` at `10.90.0.1i`), each with its data in a
//! folder of its own. Members are killed by PID (on drop too), and can be restarted on
//! their data, as a member that crashed and came back.
//!
//! [`EtcdCluster::start_tls`] starts it as production runs it: TLS on the client and peer
//! ports, client certificates required (`--client-cert-auth`), every certificate made by
//! the test with openssl ([`Pki`]: a CA, a certificate per member with its IP as SAN, a
//! client certificate, and one from another CA that etcd must refuse).

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{wait_for, Bridge, KillOnDrop, LabError, Netns, TempDir};

/// One etcd member.
pub struct Member {
    /// Its name (`m<i>`).
    pub name: String,
    /// Its namespace.
    pub ns: Netns,
    /// Its address on the cluster's bridge.
    pub ip: Ipv4Addr,
    process: Option<KillOnDrop>,
    data: TempDir,
}

/// A cluster of etcd members, and the bridge fabrics plug into to reach it.
pub struct EtcdCluster {
    /// The bridge every member (and every fabric of a test) is on.
    pub bridge: Bridge,
    /// The members.
    pub members: Vec<Member>,
    initial: String,
    token: String,
    /// The certificates, when the cluster runs TLS with client certificates.
    pub pki: Option<Pki>,
}

/// A certificate and its private key (PEM files, the key mode 0600).
#[derive(Clone, Debug)]
pub struct CertPair {
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// The certificates of a TLS cluster, made with openssl in a folder of their own.
pub struct Pki {
    /// The folder.
    pub dir: TempDir,
    /// The CA every member and client certificate is signed by (`--trusted-ca-file`).
    pub ca: PathBuf,
    /// Member `i`'s certificate: SAN `IP:<member ip>`, server and client use (peer TLS).
    pub members: Vec<CertPair>,
    /// A client certificate etcd accepts (CN `bootfabric`).
    pub client: CertPair,
    /// A client certificate from another CA: etcd must refuse it.
    pub rogue: CertPair,
}

fn openssl(args: &[&str], dir: &Path) -> Result<String, LabError> {
    crate::run(Command::new("openssl").args(args).current_dir(dir))
}

impl Pki {
    /// A CA, a certificate for each of `ips` (as SAN), a client certificate, and a client
    /// certificate signed by a second, unrelated CA.
    pub fn new(ips: &[Ipv4Addr]) -> Result<Self, LabError> {
        let dir = TempDir::new()?;
        let d = dir.path.clone();
        let ca = |name: &str| -> Result<(), LabError> {
            openssl(
                &[
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    &format!("/CN={name}"),
                    "-addext",
                    "basicConstraints=critical,CA:TRUE",
                    "-addext",
                    "keyUsage=critical,keyCertSign,cRLSign",
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.crt"),
                ],
                &d,
            )
            .map(drop)
        };
        ca("ca")?;
        ca("rogue-ca")?;
        let leaf = |name: &str, by: &str, ext: &str| -> Result<CertPair, LabError> {
            std::fs::write(d.join(format!("{name}.ext")), ext)
                .map_err(|e| format!("{name}.ext: {e}"))?;
            openssl(
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-subj",
                    &format!("/CN={name}"),
                    "-keyout",
                    &format!("{name}.key"),
                    "-out",
                    &format!("{name}.csr"),
                ],
                &d,
            )?;
            openssl(
                &[
                    "x509",
                    "-req",
                    "-days",
                    "2",
                    "-in",
                    &format!("{name}.csr"),
                    "-CA",
                    &format!("{by}.crt"),
                    "-CAkey",
                    &format!("{by}.key"),
                    "-CAcreateserial",
                    "-extfile",
                    &format!("{name}.ext"),
                    "-out",
                    &format!("{name}.crt"),
                ],
                &d,
            )?;
            let key = d.join(format!("{name}.key"));
            // As the daemon requires of a private key: only its owner reads it.
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("{}: {e}", key.display()))?;
            Ok(CertPair {
                cert: d.join(format!("{name}.crt")),
                key,
            })
        };
        let members = ips
            .iter()
            .enumerate()
            .map(|(i, ip)| {
                leaf(
                    &format!("m{i}"),
                    "ca",
                    &format!(
                        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n\
                         extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=IP:{ip}\n"
                    ),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        let client_ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";
        let client = leaf("bootfabric", "ca", client_ext)?;
        let rogue = leaf("rogue", "rogue-ca", client_ext)?;
        Ok(Self {
            ca: d.join("ca.crt"),
            dir,
            members,
            client,
            rogue,
        })
    }
}

/// How long a cluster may take to elect a leader (a bound on a wait, not a timing check).
const UP_BOUND: Duration = Duration::from_secs(60);

impl EtcdCluster {
    /// Starts `n` members and waits until every one of them reports healthy.
    pub fn start(n: usize) -> Result<Self, LabError> {
        Self::start_with(n, false)
    }

    /// [`Self::start`] with TLS on every port and client certificates required.
    pub fn start_tls(n: usize) -> Result<Self, LabError> {
        Self::start_with(n, true)
    }

    fn start_with(n: usize, tls: bool) -> Result<Self, LabError> {
        let mut bridge = Bridge::new()?;
        let mut members = Vec::with_capacity(n);
        for i in 0..n {
            let ns = Netns::new(&format!("etcd{i}"))?;
            let ip = Ipv4Addr::new(10, 90, 0, 10 + i as u8);
            bridge.plug(&ns, "etcd0", &format!("{ip}/24"))?;
            members.push(Member {
                name: format!("m{i}"),
                ns,
                ip,
                process: None,
                data: TempDir::new()?,
            });
        }
        let pki = match tls {
            true => Some(Pki::new(&members.iter().map(|m| m.ip).collect::<Vec<_>>())?),
            false => None,
        };
        let scheme = if tls { "https" } else { "http" };
        let initial = members
            .iter()
            .map(|m| format!("{}={scheme}://{}:2380", m.name, m.ip))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            bridge,
            members,
            initial,
            token: format!("bft-{}", std::process::id()),
            pki,
        };
        for i in 0..n {
            cluster.launch(i, "new")?;
        }
        cluster.wait_healthy(&(0..n).collect::<Vec<_>>())?;
        Ok(cluster)
    }

    fn scheme(&self) -> &'static str {
        if self.pki.is_some() {
            "https"
        } else {
            "http"
        }
    }

    fn launch(&mut self, i: usize, state: &str) -> Result<(), LabError> {
        let (initial, token, scheme) = (self.initial.clone(), self.token.clone(), self.scheme());
        let tls = self
            .pki
            .as_ref()
            .map(|p| (p.ca.clone(), p.members[i].clone()));
        let m = &mut self.members[i];
        let log = std::fs::File::create(m.data.path.join("etcd.log"))
            .map_err(|e| format!("etcd log: {e}"))?;
        let mut cmd = m.ns.command("etcd");
        if let Some((ca, pair)) = &tls {
            // Clients and peers alike must show a certificate signed by the CA.
            for (flag, file) in [
                ("--trusted-ca-file", ca),
                ("--cert-file", &pair.cert),
                ("--key-file", &pair.key),
                ("--peer-trusted-ca-file", ca),
                ("--peer-cert-file", &pair.cert),
                ("--peer-key-file", &pair.key),
            ] {
                cmd.arg(flag).arg(file);
            }
            cmd.args(["--client-cert-auth", "--peer-client-cert-auth"]);
        }
        let child = cmd
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(m.data.path.join("data"))
            .args(["--listen-client-urls", &format!("{scheme}://{}:2379", m.ip)])
            .args([
                "--advertise-client-urls",
                &format!("{scheme}://{}:2379", m.ip),
            ])
            .args(["--listen-peer-urls", &format!("{scheme}://{}:2380", m.ip)])
            .args([
                "--initial-advertise-peer-urls",
                &format!("{scheme}://{}:2380", m.ip),
            ])
            .args(["--initial-cluster", &initial])
            .args(["--initial-cluster-state", state])
            .args(["--initial-cluster-token", &token])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("etcd: {e}"))?;
        m.process = Some(KillOnDrop(child));
        Ok(())
    }

    /// Waits until every member of `which` answers `etcdctl endpoint health`.
    pub fn wait_healthy(&self, which: &[usize]) -> Result<(), LabError> {
        let endpoints: Vec<String> = which
            .iter()
            .map(|&i| format!("{}://{}:2379", self.scheme(), self.members[i].ip))
            .collect();
        let ns = &self.members[which[0]].ns;
        wait_for(UP_BOUND, || {
            let ok = self
                .with_client_tls(&mut ns.command("etcdctl"))
                .args(["--endpoints", &endpoints.join(","), "endpoint", "health"])
                .args(["--command-timeout", "2s"])
                .env("ETCDCTL_API", "3")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            ok.then_some(())
        })
        .ok_or_else(|| format!("etcd members {which:?} not healthy:\n{}", self.logs()))
    }

    /// Every member's client URL, for `cluster.etcd`.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://{}:2379", self.scheme(), m.ip))
            .collect()
    }

    /// `cmd` (etcdctl) with the client certificate, when the cluster runs TLS.
    fn with_client_tls<'a>(&self, cmd: &'a mut Command) -> &'a mut Command {
        if let Some(p) = &self.pki {
            cmd.arg("--cacert")
                .arg(&p.ca)
                .arg("--cert")
                .arg(&p.client.cert)
                .arg("--key")
                .arg(&p.client.key);
        }
        cmd
    }

    /// `cluster.etcd = [...]` as TOML.
    pub fn endpoints_toml(&self) -> String {
        let quoted: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("[{}]", quoted.join(", "))
    }

    /// SIGKILLs member `i` (by PID).
    pub fn kill(&mut self, i: usize) {
        self.members[i].process = None;
    }

    /// Starts member `i` again on its data, as a member that crashed and came back.
    pub fn restart(&mut self, i: usize) -> Result<(), LabError> {
        self.launch(i, "existing")
    }

    /// `etcdctl ARGS` against every member, from member `via`'s namespace.
    pub fn etcdctl(&self, via: usize, args: &[&str]) -> Result<String, LabError> {
        crate::run(
            self.with_client_tls(&mut self.members[via].ns.command("etcdctl"))
                .args(["--endpoints", &self.endpoints().join(",")])
                .args(["--command-timeout", "5s"])
                .args(args)
                .env("ETCDCTL_API", "3"),
        )
    }

    /// Every member's log, for a failure's message.
    pub fn logs(&self) -> String {
        self.members
            .iter()
            .map(|m| {
                let log = std::fs::read_to_string(m.data.path.join("etcd.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                format!(
                    "--- etcd {} ---\n{}",
                    m.name,
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}
