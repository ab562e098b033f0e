//! One seeded run and a campaign of runs.
//!
//! A run: form a 3- or 5-voter cluster (plus one spare node for membership
//! changes), start the clients, inject a random sequence of faults for a few
//! seconds, heal everything (links, paused and killed processes, wiped
//! members re-added as learners), then check:
//! 1. the cluster serves a write again within [`RECOVERY_BOUND`] of healing and
//!    every member applies everything within [`CONVERGE_BOUND`];
//! 2. no acknowledged unique insert is missing on any member;
//! 3. the whole recorded history, plus a final read of every register key through
//!    every member, is linearizable.
//!
//! Every choice comes from the run's seed ([`Rng`]), so `kvchaos run --seed N`
//! replays the same plan (the timing of a real machine still varies).
//!
//! The partitioned mode (`partitions` above 1, docs/partitions.md) runs the same
//! faults per node against a cluster whose keys spread over several Raft groups:
//! the run waits until every partition is formed and led before the clients
//! start, the clients' keys land in different partitions (any node routes any
//! key), and the checks hold per key as before. Membership faults change the
//! cluster group, which makes the placement driver move replicas while the
//! faults go on.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use kvserver::model::PutRequest;
use serde::Serialize;

use crate::ChaosError;
use crate::checker;
use crate::cluster::Cluster;
use crate::faults;
use crate::history::Call;
use crate::history::Op;
use crate::history::Ret;
use crate::rng::Rng;
use crate::wait::wait;
use crate::workload;
use crate::workload::Recorder;
use crate::workload::Workload;

/// After healing, a write must succeed within this.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// After the clients stop, every member must have applied the leader's commit index within this.
pub const CONVERGE_BOUND: Duration = Duration::from_secs(30);
/// A partitioned cluster must have formed and led every partition within this of forming.
pub const PLACE_BOUND: Duration = Duration::from_secs(60);

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub seed: u64,
    /// Voters (3 or 5); `None`: drawn from the seed (3 in three runs of four).
    pub nodes: Option<usize>,
    /// How long faults are injected.
    pub fault_time: Duration,
    pub workload: Workload,
    /// The kvserver binary.
    pub kvserver: PathBuf,
    /// Checker step budget per key.
    pub budget: u64,
    /// Where to keep the logs, data and history of a failed run.
    pub keep_failed: Option<PathBuf>,
    /// Extra kvserver flags for every node.
    pub node_args: Vec<String>,
    /// TLS on both ports (peer mTLS with member identities, HTTPS for the
    /// clients), as every cluster in Kubernetes runs. On by default.
    pub tls: bool,
    /// A bearer token on every client request (nodes require one). On by default.
    pub auth: bool,
    /// Partitions of the key space (1: one Raft group, the default).
    pub partitions: u32,
}

impl RunConfig {
    pub fn new(seed: u64, kvserver: PathBuf) -> Self {
        RunConfig {
            seed,
            nodes: None,
            fault_time: Duration::from_secs(5),
            workload: Workload::default(),
            kvserver,
            budget: 5_000_000,
            keep_failed: None,
            // Small snapshot/purge thresholds so restarted and re-added members also
            // catch up by snapshot, not only by log replay.
            node_args: [
                "--set",
                "raft.snapshot_after_entries=300",
                "--set",
                "raft.keep_entries_after_snapshot=50",
            ]
            .map(String::from)
            .to_vec(),
            tls: true,
            auth: true,
            partitions: 1,
        }
    }
}

/// What one run did and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: usize,
    /// Partitions of the key space (1: one Raft group).
    pub partitions: u32,
    pub faults: Vec<String>,
    /// Fault counts by kind.
    pub fault_kinds: BTreeMap<String, u64>,
    pub ops_checked: usize,
    pub requests_ok: u64,
    pub requests_failed: u64,
    pub requests_unknown: u64,
    pub unique_acked: usize,
    pub unique_lost: usize,
    pub linearizable: bool,
    pub violations: Vec<(String, String)>,
    pub undecided_keys: Vec<String>,
    pub checker_steps: u64,
    /// From healing to the first acknowledged write.
    pub recovery_ms: Option<u64>,
    /// From the clients stopping to every member having applied the commit index.
    pub converge_ms: Option<u64>,
    /// A harness step that failed (the cluster did not do what it must).
    pub error: Option<String>,
    /// Where the failed run's files were kept.
    pub kept: Option<String>,
    pub duration_ms: u64,
    /// Node-to-node connections the proxies named the caller of (and so could
    /// cut), and those they could not.
    pub links_named: u64,
    pub links_unnamed: u64,
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.linearizable && self.unique_lost == 0
    }

    pub fn line(&self) -> String {
        let verdict = if self.passed() { "ok" } else { "FAILED" };
        format!(
            "seed {:>6}  {} voters{}  faults {:<2} ops {:>5} (unknown {:>3}, failed {:>3})  unique {:>4} lost {}  recovery {:>5} ms  converge {:>5} ms  {verdict}{}",
            self.seed,
            self.nodes,
            if self.partitions > 1 {
                format!(" x {} partitions", self.partitions)
            } else {
                String::new()
            },
            self.faults.len(),
            self.ops_checked,
            self.requests_unknown,
            self.requests_failed,
            self.unique_acked,
            self.unique_lost,
            self.recovery_ms
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            self.converge_ms
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into()),
            self.error
                .as_ref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default(),
        ) + &if self.undecided_keys.is_empty() {
            String::new()
        } else {
            format!(" (checker budget exhausted on {:?})", self.undecided_keys)
        }
    }
}

/// Runs one seeded run; harness failures become `error` in the report.
pub async fn run_one(cfg: &RunConfig) -> RunReport {
    let started = Instant::now();
    let mut rng = Rng::new(cfg.seed);
    let n = cfg.nodes.unwrap_or(if rng.chance(75) { 3 } else { 5 });
    let mut report = RunReport {
        seed: cfg.seed,
        nodes: n,
        partitions: cfg.partitions,
        ..RunReport::default()
    };
    let ids: Vec<u64> = (1..=n as u64 + 1).collect();
    let mut args = cfg.node_args.clone();
    if cfg.partitions > 1 {
        // Placed over every voter at once (the spare joins later, if at all).
        args.extend([
            "--set".into(),
            format!("partitions={}", cfg.partitions),
            "--set".into(),
            format!("initial_nodes={n}"),
        ]);
    }
    let built = Cluster::builder(&cfg.kvserver)
        .args(args)
        .proxies(true)
        .tls(cfg.tls)
        .auth(cfg.auth)
        .build()
        .and_then(|mut c| {
            for id in &ids {
                c.add_node(*id)?;
            }
            Ok(c)
        });
    let mut cluster = match built {
        Ok(c) => c,
        Err(e) => {
            report.error = Some(format!("setting up: {e}"));
            return report;
        }
    };
    let rec = Arc::new(Recorder::new(Instant::now()));
    let result = drive(cfg, &mut rng, &mut cluster, n, &rec, &mut report).await;
    if let Err(e) = result {
        report.error = Some(e.to_string());
    }
    let recorded = rec.take();
    report.requests_ok = recorded.ok;
    report.requests_failed = recorded.failed;
    report.requests_unknown = recorded.unknown;
    report.unique_acked = recorded.unique_acked.len();
    report.ops_checked = recorded.ops.len();
    let check = checker::check(&recorded.ops, cfg.budget);
    report.checker_steps = check.steps;
    report.linearizable = check.linearizable();
    report.violations = check.violations;
    report.undecided_keys = check.undecided;
    if !report.passed()
        && let Some(dir) = &cfg.keep_failed
    {
        report.kept = keep(&mut cluster, dir, cfg.seed, &recorded.ops);
    }
    report.duration_ms = started.elapsed().as_millis() as u64;
    report.links_named = cluster
        .links
        .named
        .load(std::sync::atomic::Ordering::Relaxed);
    report.links_unnamed = cluster
        .links
        .unnamed
        .load(std::sync::atomic::Ordering::Relaxed);
    report
}

fn keep(cluster: &mut Cluster, dir: &std::path::Path, seed: u64, ops: &[Op]) -> Option<String> {
    let src = cluster.keep()?;
    let dst = dir.join(format!("seed-{seed}"));
    std::fs::create_dir_all(dir).ok()?;
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::rename(&src, &dst).ok()?;
    let history = serde_json::to_vec_pretty(ops).ok()?;
    std::fs::write(dst.join("history.json"), history).ok()?;
    Some(dst.display().to_string())
}

async fn drive(
    cfg: &RunConfig,
    rng: &mut Rng,
    cluster: &mut Cluster,
    n: usize,
    rec: &Arc<Recorder>,
    report: &mut RunReport,
) -> Result<(), ChaosError> {
    let voters: Vec<u64> = (1..=n as u64).collect();
    let spare = n as u64 + 1;
    cluster.form(&voters).await?;
    cluster.start(spare)?;
    if cfg.partitions > 1 {
        let client = cluster.client(voters[0], Duration::from_secs(2))?;
        wait(PLACE_BOUND, "every partition formed and led", || {
            let client = client.clone();
            async move {
                let p = client.partitions().await.ok()?;
                (p.epoch > 0
                    && p.items.len() == cfg.partitions as usize
                    && p.items.iter().all(|i| i.formed && i.leader_id.is_some()))
                .then_some(())
            }
        })
        .await?;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let nodes: Vec<(u64, String)> = cluster
        .nodes
        .values()
        .map(|node| (node.id, node.url()))
        .collect();
    let clients: Vec<_> = (0..cfg.workload.clients)
        .map(|i| {
            tokio::spawn(workload::client(
                i,
                rng.fork(1000 + i as u64),
                cluster.http.clone(),
                nodes.clone(),
                cfg.workload.clone(),
                rec.clone(),
                stop.clone(),
            ))
        })
        .collect();

    let fault_result = faults::inject(cfg, rng, cluster, spare, report).await;
    faults::heal(cluster).await?;
    fault_result?;

    // Serving again: a write through any live node.
    let healed = Instant::now();
    let probes = cluster
        .live()
        .into_iter()
        .map(|id| cluster.client(id, Duration::from_secs(2)))
        .collect::<Result<Vec<_>, _>>()?;
    let mut probe = 0u64;
    wait(RECOVERY_BOUND, "a write to succeed after healing", || {
        probe += 1;
        let client = probes.get(probe as usize % probes.len().max(1)).cloned();
        let value = probe.to_string();
        async move {
            let put = PutRequest {
                value,
                ..Default::default()
            };
            client?.put("probe", &put).await.ok().map(|_| ())
        }
    })
    .await?;
    report.recovery_ms = Some(healed.elapsed().as_millis() as u64);

    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    // Every member applies everything.
    let stopped = Instant::now();
    let (voters, learners) = cluster.members().await?;
    let members: Vec<u64> = voters.iter().chain(learners.iter()).copied().collect();
    let leader = cluster.wait_any_leader(Duration::from_secs(10)).await?;
    let commit = cluster.info(leader).await?.committed_index.unwrap_or(0);
    for m in &members {
        cluster.wait_applied(*m, commit, CONVERGE_BOUND).await?;
    }
    report.converge_ms = Some(stopped.elapsed().as_millis() as u64);

    // Final linearizable reads of every register key through every member join the history.
    for m in &members {
        let url = cluster.url(*m, "")?;
        for k in 0..cfg.workload.keys {
            let key = workload::key(k);
            let invoke = rec.now_us();
            // A 503 asks the client to retry (a leader change, a replica moving in
            // the partitioned mode): the final read does, for a while, as clients
            // do. A read changes nothing, so its window spans every try.
            let got = wait(
                Duration::from_secs(10),
                &format!("final read of {key} via member {m}"),
                || workload::read(&cluster.http, &url, &key, Duration::from_secs(5)),
            )
            .await
            .ok();
            let Some(value) = got else {
                return Err(ChaosError::Cluster(format!(
                    "final read of {key} via member {m} failed"
                )));
            };
            let op = Op {
                client: usize::MAX,
                key,
                call: Call::Read,
                ret: Ret::Read { value },
                invoke_us: invoke,
                complete_us: rec.now_us(),
                node: *m,
            };
            rec.record(op, workload::Outcome::Ok);
        }
    }

    // No acknowledged unique insert may be missing on any member.
    let acked = rec.acked_unique();
    for m in &members {
        if cfg.partitions > 1 {
            // Convergence above is the cluster group's; a partition's replica may
            // still be applying (a listing through a member reads each partition
            // at one of its replicas). It must hold every acknowledged insert
            // within the same bound (seed 200 read a lagging replica right away).
            let _ = wait(
                CONVERGE_BOUND,
                "every acknowledged insert listed",
                || async {
                    cluster
                        .missing(*m, "u/", &acked)
                        .await
                        .ok()
                        .filter(|missing| missing.is_empty())
                },
            )
            .await;
        }
        let lost = cluster.missing(*m, "u/", &acked).await?.len();
        if lost > 0 {
            report.unique_lost = report.unique_lost.max(lost);
            return Err(ChaosError::Cluster(format!(
                "member {m} lacks {lost} acknowledged unique inserts"
            )));
        }
    }
    Ok(())
}

/// Totals of a campaign.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub runs: usize,
    pub passed: usize,
    pub first_seed: u64,
    pub last_seed: u64,
    pub faults: u64,
    pub fault_kinds: BTreeMap<String, u64>,
    pub ops_checked: u64,
    pub requests: u64,
    pub violations: usize,
    pub undecided: usize,
    pub unique_acked: u64,
    pub unique_lost: u64,
    pub errors: usize,
    pub max_recovery_ms: u64,
    pub max_converge_ms: u64,
    pub failed_seeds: Vec<u64>,
    pub wall_s: u64,
}

impl Summary {
    pub fn add(&mut self, r: &RunReport) {
        if self.runs == 0 {
            self.first_seed = r.seed;
        }
        self.runs += 1;
        self.last_seed = r.seed;
        if r.passed() {
            self.passed += 1;
        } else {
            self.failed_seeds.push(r.seed);
        }
        self.faults += r.fault_kinds.values().sum::<u64>();
        for (k, v) in &r.fault_kinds {
            *self.fault_kinds.entry(k.clone()).or_default() += v;
        }
        self.ops_checked += r.ops_checked as u64;
        self.requests += r.requests_ok + r.requests_failed + r.requests_unknown;
        self.violations += r.violations.len();
        self.undecided += r.undecided_keys.len();
        self.unique_acked += r.unique_acked as u64;
        self.unique_lost += r.unique_lost as u64;
        self.errors += usize::from(r.error.is_some());
        self.max_recovery_ms = self.max_recovery_ms.max(r.recovery_ms.unwrap_or(0));
        self.max_converge_ms = self.max_converge_ms.max(r.converge_ms.unwrap_or(0));
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "runs {} (seeds {}..={}), passed {}, failed {:?}\n\
             faults injected {}\n",
            self.runs, self.first_seed, self.last_seed, self.passed, self.failed_seeds, self.faults
        );
        for (k, v) in &self.fault_kinds {
            out.push_str(&format!("  {v:>5}  {k}\n"));
        }
        out.push_str(&format!(
            "operations checked {} (of {} requests)\n\
             linearizability violations {}, undecided keys {}\n\
             acknowledged unique inserts {}, lost {}\n\
             harness errors {}\n\
             max recovery after healing {} ms, max convergence {} ms\n\
             wall time {} s\n",
            self.ops_checked,
            self.requests,
            self.violations,
            self.undecided,
            self.unique_acked,
            self.unique_lost,
            self.errors,
            self.max_recovery_ms,
            self.max_converge_ms,
            self.wall_s
        ));
        out
    }
}
