//! A real etcd cluster for the lab (Debian's `etcd-server`): members in namespaces of their
//! own on one bridge (`10.90.0.0/24`, member `i` at `10.90.0.1i`), each with its data in a
//! folder of its own. Members are killed by PID (on drop too), and can be restarted on
//! their data, as a member that crashed and came back.

use std::{net::Ipv4Addr, process::Stdio, time::Duration};

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
}

/// How long a cluster may take to elect a leader (a bound on a wait, not a timing check).
const UP_BOUND: Duration = Duration::from_secs(60);

impl EtcdCluster {
    /// Starts `n` members and waits until every one of them reports healthy.
    pub fn start(n: usize) -> Result<Self, LabError> {
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
        let initial = members
            .iter()
            .map(|m| format!("{}=http://{}:2380", m.name, m.ip))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Self {
            bridge,
            members,
            initial,
            token: format!("bft-{}", std::process::id()),
        };
        for i in 0..n {
            cluster.launch(i, "new")?;
        }
        cluster.wait_healthy(&(0..n).collect::<Vec<_>>())?;
        Ok(cluster)
    }

    fn launch(&mut self, i: usize, state: &str) -> Result<(), LabError> {
        let (initial, token) = (self.initial.clone(), self.token.clone());
        let m = &mut self.members[i];
        let log = std::fs::File::create(m.data.path.join("etcd.log"))
            .map_err(|e| format!("etcd log: {e}"))?;
        let child =
            m.ns.command("etcd")
                .args(["--name", &m.name])
                .arg("--data-dir")
                .arg(m.data.path.join("data"))
                .args(["--listen-client-urls", &format!("http://{}:2379", m.ip)])
                .args(["--advertise-client-urls", &format!("http://{}:2379", m.ip)])
                .args(["--listen-peer-urls", &format!("http://{}:2380", m.ip)])
                .args([
                    "--initial-advertise-peer-urls",
                    &format!("http://{}:2380", m.ip),
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
            .map(|&i| format!("http://{}:2379", self.members[i].ip))
            .collect();
        let ns = &self.members[which[0]].ns;
        wait_for(UP_BOUND, || {
            let ok = ns
                .command("etcdctl")
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
            .map(|m| format!("http://{}:2379", m.ip))
            .collect()
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
            self.members[via]
                .ns
                .command("etcdctl")
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
