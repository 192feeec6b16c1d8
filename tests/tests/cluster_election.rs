//! The cluster's leader on a real etcd (three members in namespaces): of two fabrics exactly
//! one leads, both say which, and only the leader starts reboot runs (a run asked on the
//! other is stored for the leader: tests/tests/cluster_runs.rs); the leader killed without a
//! word, the other takes over once the dead one's lease runs out, and runs start there.

use std::time::Duration;

use bootfabric_lab::{
    cluster_lab::Fabric, etcd::EtcdCluster, require_programs, require_root, sample, wait_for, Netns,
};
use serde_json::Value;

/// A fabric daemon on the etcd cluster's bridge, at `10.90.0.<host>`, in cluster mode.
fn fabric(etcd: &mut EtcdCluster, name: &str, rack: &str, host: u8) -> Fabric {
    // The same inventory on both (as a shared one would be): one host per rack, whose BMCs
    // nobody answers (the calls time out: what was done is only what the records say).
    let mut hosts = String::from("[profiles.p]\n");
    for (i, r) in ["rack-a", "rack-b"].iter().enumerate() {
        hosts += &format!(
            "[[hosts]]\nname = \"{r}-n1\"\nmac = \"52:54:00:c1:00:{i:02x}\"\n\
             profile = \"p\"\nrack = \"{r}\"\nbmc = {{ url = \"http://10.90.0.25{i}:9\", \
             username = \"admin\", password_file = \"bmc.pass\", allow_plaintext = true, \
             timeout_s = 1, attempts = 1 }}\n"
        );
    }
    Fabric::on(etcd, name, host)
        .rack(rack)
        .section(
            "[scheduler]
# A refused reset is retried a minute later: the run is still going when its leader dies.
reset_attempts = 5
retry_backoff_s = 60
post_timeout_s = 3
",
        )
        .inventory(&hosts)
        .file("bmc.pass", "pw\n")
        .start()
        .expect("fabric")
}

/// `POST /api/reboot` of every host: the status code and the body.
fn start_run(f: &Fabric) -> (u16, String) {
    let r = f
        .api(None)
        .post("/api/reboot", &serde_json::json!({"all": true}))
        .expect("POST /api/reboot");
    (r.status, r.body)
}

fn leader_metric(f: &Fabric) -> Option<f64> {
    f.sample("bootfabric_cluster_leader", &[]).expect("metrics")
}

#[test]
fn one_fabric_leads_and_another_takes_over_when_it_dies() {
    const TEST: &str = "one_fabric_leads_and_another_takes_over_when_it_dies";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl"])) {
        return;
    }
    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let mut a = fabric(&mut etcd, "fab-a", "rack-a", 21);
    // fab-a campaigns alone first: it leads.
    a.wait_view(|v| v["leader"] == "fab-a" && v["leading"] == true)
        .unwrap_or_else(|v| panic!("fab-a sees {v}\n{}\n{}", a.log(), etcd.logs()));
    let b = fabric(&mut etcd, "fab-b", "rack-b", 22);
    let seen_b = b
        .wait_view(|v| v["leader"].is_string())
        .unwrap_or_else(|v| panic!("fab-b sees {v}\n{}", b.log()));
    assert_eq!(seen_b["leader"], "fab-a", "{seen_b}");
    assert_eq!(seen_b["leading"], false, "one leader at a time: {seen_b}");
    assert_eq!(leader_metric(&a), Some(1.0));
    assert_eq!(leader_metric(&b), Some(0.0));
    // The key is etcd's, under the prefix, held under fab-a's lease.
    let key = etcd
        .etcdctl(
            0,
            &["get", "/bootfabric/leader/reboot", "--print-value-only"],
        )
        .expect("etcdctl get");
    assert_eq!(key.trim(), "fab-a");
    // Only the leader runs reboot runs; the other validates what it would store for the
    // leader (tests/tests/cluster_runs.rs follows such a run) and refuses an unknown host.
    let r = b
        .api(None)
        .post(
            "/api/reboot",
            &serde_json::json!({"hosts": ["no-such-host"]}),
        )
        .expect("POST /api/reboot");
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("no-such-host"), "{}", r.body);
    let (code, body) = start_run(&a);
    assert_eq!(code, 202, "the leader starts it: {body}");
    // The run is stored in etcd, and the host's intent before its BMC is called (the BMC
    // never answers: the intent stays "resetting", the outcome unknown).
    let get = |key: &str| {
        etcd.etcdctl(0, &["get", key, "--print-value-only"])
            .unwrap_or_default()
    };
    let run: Value = wait_for(Duration::from_secs(20), || {
        serde_json::from_str(&get("/bootfabric/runs/00000000000000000001")).ok()
    })
    .unwrap_or_else(|| panic!("no run in etcd\n{}", a.log()));
    assert_eq!(run["started_by"], "fab-a", "{run}");
    assert_eq!(run["hosts"][0]["name"], "rack-a-n1", "{run}");
    assert_eq!(run["hosts"][1]["name"], "rack-b-n1", "both racks: {run}");
    let record = |host: &str| -> Option<Value> {
        let key = format!("/bootfabric/run-hosts/00000000000000000001/{host}");
        serde_json::from_str(&get(&key)).ok()
    };
    for host in ["rack-a-n1", "rack-b-n1"] {
        let intent = wait_for(Duration::from_secs(20), || record(host))
            .unwrap_or_else(|| panic!("no intent of {host} in etcd\n{}", a.log()));
        assert_eq!(intent["state"], "resetting", "{intent}");
        assert_eq!(intent["fabric"], "fab-a", "{intent}");
    }

    // fab-a dies without resigning: its lease runs out (ttl 3 s) and fab-b takes over.
    a.stop_with(nix::sys::signal::Signal::SIGKILL)
        .expect("SIGKILL fab-a");
    let now_b = b
        .wait_view(|v| v["leading"] == true)
        .unwrap_or_else(|v| panic!("after fab-a died, fab-b sees {v}\n{}", b.log()));
    assert_eq!(now_b["leader"], "fab-b");
    assert_eq!(leader_metric(&b), Some(1.0));
    assert!(b.logged("this fabric leads the cluster"), "{}", b.log());
    // fab-b takes the run over: both hosts were (maybe) reset by fab-a, so neither is reset
    // again; they show no boot within the POST timeout and fail, recorded by fab-b.
    let done = wait_for(Duration::from_secs(40), || {
        let run: Value =
            serde_json::from_str(&get("/bootfabric/runs/00000000000000000001")).ok()?;
        (run["phase"] == "done").then_some(run)
    });
    assert!(done.is_some(), "run 1 not finished by fab-b\n{}", b.log());
    for host in ["rack-a-n1", "rack-b-n1"] {
        let r = record(host).expect("record");
        assert_eq!(r["state"], "failed", "{r}");
        assert_eq!(r["fabric"], "fab-b", "{r}");
    }
    assert!(
        b.logged("taking over a reboot run left running"),
        "{}",
        b.log()
    );
    let m = b.metrics().expect("metrics");
    for outcome in ["accepted", "failed"] {
        assert_eq!(
            sample(
                &m,
                "bootfabric_reboot_resets_total",
                &[("outcome", outcome)]
            ),
            Some(0.0),
            "fab-b sent no reset to hosts fab-a had reset"
        );
    }
    // Its report has both racks' hosts.
    let (code, report) = b.get("/api/reboot").expect("report");
    assert_eq!(code, 200, "{report}");
    assert!(
        report.contains("rack-a-n1") && report.contains("rack-b-n1"),
        "{report}"
    );
    let (code, body) = start_run(&b);
    assert_eq!(code, 202, "the new leader starts runs: {body}");
    let run: Value = wait_for(Duration::from_secs(20), || {
        serde_json::from_str(&get("/bootfabric/runs/00000000000000000002")).ok()
    })
    .unwrap_or_else(|| panic!("no second run in etcd\n{}", b.log()));
    assert_eq!(run["started_by"], "fab-b", "{run}");
    drop(a.ns);
}

/// The run records on the real etcd, driven in-process: two candidates campaign, the first
/// leads and writes a host's intent under its term; it resigns, the other takes over, and
/// the write of the first, with the fence of the term it held, is refused by etcd itself
/// (a deposed leader that still believes it leads cannot record an intent, so it does not
/// reset). The serving fabric's outcome is recorded once and never overwritten.
#[test]
fn a_replaced_leaders_run_writes_are_refused_by_etcd() {
    const TEST: &str = "a_replaced_leaders_run_writes_are_refused_by_etcd";
    if !(require_root(TEST) && require_programs(TEST, &["etcd", "etcdctl"])) {
        return;
    }
    use bootfabric::cluster::{
        election::{Election, Leadership},
        membership::ClusterView,
        runs::{HostRecord, HostState, RunHost, RunPhase, RunStore, RunsError},
        Cluster,
    };
    use bootfabric::config::cluster::ClusterConfig;
    use std::sync::Arc;
    use tokio_util::sync::CancellationToken;

    let mut etcd = EtcdCluster::start(3).expect("etcd");
    let ns = Netns::new("runs").expect("netns");
    etcd.bridge
        .plug(&ns, "fabric0", "10.90.0.31/24")
        .expect("plug");
    let endpoints = etcd.endpoints();
    let outcome = ns.run(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let config = |name: &str| ClusterConfig {
                name: name.to_owned(),
                rack: format!("rack-{name}"),
                endpoints: endpoints.clone(),
                prefix: "/bootfabric".to_owned(),
                tls: None,
                ttl: Duration::from_secs(3),
                timeout: Duration::from_secs(2),
                timeline_retention: Duration::from_secs(3600),
            };
            let candidate = |name: &'static str| async move {
                let cluster = Cluster::connect(&config(name)).await.expect("connect");
                let view = Arc::new(arc_swap_view());
                let registry = prometheus::Registry::new();
                let election = Election::new(cluster.clone(), view, &registry).expect("election");
                let leadership = election.leadership();
                let cancel = CancellationToken::new();
                let task = tokio::spawn(election.run(cancel.clone()));
                (RunStore::new(cluster), leadership, cancel, task)
            };
            fn arc_swap_view() -> arc_swap::ArcSwap<ClusterView> {
                arc_swap::ArcSwap::from_pointee(ClusterView::default())
            }
            let until = |what: &'static str, l: Leadership| async move {
                for _ in 0..200 {
                    if l.leading() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("{what} never led");
            };
            let (store_x, lead_x, cancel_x, task_x) = candidate("fab-x").await;
            until("fab-x", lead_x.clone()).await;
            let (store_y, lead_y, cancel_y, task_y) = candidate("fab-y").await;
            let hosts = vec![RunHost {
                name: "n1".into(),
                rack: "rack-fab-y".into(),
            }];
            // A run started through fab-y's API: stored for whoever leads.
            let run = store_y.create(hosts.clone(), 1).await.expect("create");
            let second = store_x.create(hosts, 2).await.expect("create");
            assert_eq!((run.id, second.id), (1, 2), "numbers are the cluster's");
            let intent = |state, fabric: &str| HostRecord {
                state,
                fabric: fabric.to_owned(),
                at_ms: 10,
                attempts: 1,
                reason: None,
            };
            let fence_x = lead_x.fence().expect("fab-x leads");
            store_x
                .record_fenced(
                    &fence_x,
                    run.id,
                    "n1",
                    &intent(HostState::Resetting, "fab-x"),
                )
                .await
                .expect("the leader writes its intent");
            assert!(!lead_y.leading(), "one leader at a time");
            assert!(lead_y.fence().is_none());

            // fab-x resigns; fab-y takes over at its next campaign.
            cancel_x.cancel();
            task_x.await.expect("join").expect("election x");
            until("fab-y", lead_y.clone()).await;
            let refused = store_x
                .record_fenced(&fence_x, run.id, "n1", &intent(HostState::Reset, "fab-x"))
                .await;
            assert!(
                matches!(refused, Err(RunsError::NotLeader)),
                "a deposed leader's write went through: {refused:?}"
            );
            let refused = store_x
                .set_phase(&fence_x, run.id, RunPhase::Cancelled)
                .await;
            assert!(matches!(refused, Err(RunsError::NotLeader)), "{refused:?}");
            let records = store_y.hosts(run.id).await.expect("hosts");
            assert_eq!(
                records,
                [("n1".to_owned(), intent(HostState::Resetting, "fab-x"))],
                "what the new leader reads: the old one's intent, outcome unknown"
            );
            let fence_y = lead_y.fence().expect("fab-y leads");
            store_y
                .record_fenced(&fence_y, run.id, "n1", &intent(HostState::Reset, "fab-y"))
                .await
                .expect("the new leader writes");
            // The serving fabric's outcome: once, then never overwritten.
            let booted = intent(HostState::Booted, "fab-y");
            assert!(store_x
                .record_outcome(run.id, "n1", &booted)
                .await
                .expect("outcome"));
            let failed = intent(HostState::Failed, "fab-x");
            assert!(!store_x
                .record_outcome(run.id, "n1", &failed)
                .await
                .expect("outcome"));
            assert_eq!(
                store_y.hosts(run.id).await.expect("hosts"),
                [("n1".to_owned(), booted)]
            );
            store_y
                .set_phase(&fence_y, run.id, RunPhase::Done)
                .await
                .expect("phase");
            let runs = store_x.runs().await.expect("runs");
            assert_eq!(
                runs.iter().map(|r| (r.id, r.phase)).collect::<Vec<_>>(),
                [(1, RunPhase::Done), (2, RunPhase::Running)]
            );
            cancel_y.cancel();
            task_y.await.expect("join").expect("election y");
        });
    });
    if let Err(e) = outcome {
        panic!("{e}\n{}", etcd.logs());
    }
}
