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

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;

use crate::ChaosError;
use crate::checker;
use crate::cluster::Cluster;
use crate::cluster::cluster_call;
use crate::cluster::wait;
use crate::history::Call;
use crate::history::Op;
use crate::history::Ret;
use crate::rng::Rng;
use crate::workload;
use crate::workload::Recorder;
use crate::workload::Workload;

/// After healing, a write must succeed within this.
pub const RECOVERY_BOUND: Duration = Duration::from_secs(20);
/// After the clients stop, every member must have applied the leader's commit index within this.
pub const CONVERGE_BOUND: Duration = Duration::from_secs(30);

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
        }
    }
}

/// What one run did and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunReport {
    pub seed: u64,
    pub nodes: usize,
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
}

impl RunReport {
    pub fn passed(&self) -> bool {
        self.error.is_none() && self.linearizable && self.unique_lost == 0
    }

    pub fn line(&self) -> String {
        let verdict = if self.passed() { "ok" } else { "FAILED" };
        format!(
            "seed {:>6}  {} voters  faults {:<2} ops {:>5} (unknown {:>3}, failed {:>3})  unique {:>4} lost {}  recovery {:>5} ms  converge {:>5} ms  {verdict}{}",
            self.seed,
            self.nodes,
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

#[derive(Debug, Clone, Copy)]
enum Fault {
    Kill,
    Terminate,
    Pause,
    Isolate,
    Split,
    MembershipLeaderKill,
    Wipe,
}

impl Fault {
    fn draw(rng: &mut Rng) -> Fault {
        match rng.below(100) {
            0..14 => Fault::Kill,
            14..26 => Fault::Terminate,
            26..40 => Fault::Pause,
            40..60 => Fault::Isolate,
            60..72 => Fault::Split,
            72..86 => Fault::MembershipLeaderKill,
            _ => Fault::Wipe,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Fault::Kill => "kill -9 + restart",
            Fault::Terminate => "SIGTERM (graceful stop) + restart",
            Fault::Pause => "SIGSTOP/SIGCONT",
            Fault::Isolate => "isolate node",
            Fault::Split => "partition minority|majority",
            Fault::MembershipLeaderKill => "leader kill during membership change",
            Fault::Wipe => "wiped data dir + re-add as learner",
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
        ..RunReport::default()
    };
    let ids: Vec<u64> = (1..=n as u64 + 1).collect();
    let mut cluster = match Cluster::new(&cfg.kvserver, &ids, &cfg.node_args).await {
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

    let fault_result = inject(cfg, rng, cluster, spare, report).await;
    heal(cluster).await?;
    fault_result?;

    // Serving again: a write through any live node.
    let healed = Instant::now();
    let urls = cluster.live_urls();
    let http = cluster.http.clone();
    let mut probe = 0u64;
    wait(RECOVERY_BOUND, "a write to succeed after healing", || {
        probe += 1;
        let url = urls[probe as usize % urls.len().max(1)].clone();
        let http = http.clone();
        async move {
            let r = http
                .put(format!("{url}/v1/kv/probe"))
                .json(&json!({"value": probe.to_string()}))
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .ok()?;
            r.status().is_success().then_some(())
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
    let leader = cluster.wait_leader(Duration::from_secs(10)).await?;
    let commit = cluster.info(leader).await?["committed_index"]
        .as_u64()
        .unwrap_or(0);
    for m in &members {
        let c = &*cluster;
        wait(
            CONVERGE_BOUND,
            &format!("member {m} to apply index {commit}"),
            || async move {
                let info = c.info(*m).await.ok()?;
                (info["applied_index"].as_u64()? >= commit).then_some(())
            },
        )
        .await?;
    }
    report.converge_ms = Some(stopped.elapsed().as_millis() as u64);

    // Final linearizable reads of every register key through every member join the history.
    for m in &members {
        let url = cluster.url(*m, "")?;
        for k in 0..cfg.workload.keys {
            let key = workload::key(k);
            let invoke = rec.now_us();
            let got = workload::read(&cluster.http, &url, &key, Duration::from_secs(5)).await;
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
        let present = list_keys(cluster, *m, "u/").await?;
        let lost = acked
            .iter()
            .filter(|k| !present.contains(k.as_str()))
            .count();
        if lost > 0 {
            report.unique_lost = report.unique_lost.max(lost);
            return Err(ChaosError::Cluster(format!(
                "member {m} lacks {lost} acknowledged unique inserts"
            )));
        }
    }
    Ok(())
}

/// Percent-encodes a query value (everything but unreserved characters and `/`).
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every key under `prefix` on member `m`, read locally (stale) page by page.
async fn list_keys(
    cluster: &Cluster,
    m: u64,
    prefix: &str,
) -> Result<std::collections::HashSet<String>, ChaosError> {
    let mut keys = std::collections::HashSet::new();
    let mut after: Option<String> = None;
    loop {
        let mut path = format!(
            "/v1/kv?prefix={}&keys_only=true&limit=10000&consistency=stale",
            encode(prefix)
        );
        if let Some(a) = &after {
            path.push_str(&format!("&start_after={}", encode(a)));
        }
        let r = cluster.http.get(cluster.url(m, &path)?).send().await?;
        let st = r.status().as_u16();
        let body: serde_json::Value = r.json().await?;
        if st != 200 {
            return Err(ChaosError::Cluster(format!(
                "listing {prefix} on member {m}: {st} {body}"
            )));
        }
        for kv in body["kvs"].as_array().into_iter().flatten() {
            if let Some(k) = kv["key"].as_str() {
                keys.insert(k.to_string());
            }
        }
        match body["next_start_after"].as_str() {
            Some(next) if body["more"] == true => after = Some(next.to_string()),
            _ => return Ok(keys),
        }
    }
}

/// The fault window: one fault after another, until `fault_time` has passed.
async fn inject(
    cfg: &RunConfig,
    rng: &mut Rng,
    cluster: &mut Cluster,
    spare: u64,
    report: &mut RunReport,
) -> Result<(), ChaosError> {
    let until = Instant::now() + cfg.fault_time;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(rng.range(100, 500))).await;
        let fault = Fault::draw(rng);
        let hold = Duration::from_millis(rng.range(300, 2000));
        let leader = cluster.leader().await;
        let (voters, _) = cluster.members().await?;
        let target_leader = rng.chance(50);
        let victim = match (target_leader, leader) {
            (true, Some(l)) => l,
            _ => *rng
                .pick(&voters)
                .ok_or_else(|| ChaosError::Cluster("no voters".into()))?,
        };
        let role = if Some(victim) == leader {
            "leader"
        } else {
            "follower"
        };
        let what = match fault {
            Fault::Kill => {
                cluster.kill(victim)?;
                tokio::time::sleep(hold).await;
                cluster.start(victim)?;
                format!(
                    "kill -9 node {victim} ({role}), restart after {} ms",
                    hold.as_millis()
                )
            }
            Fault::Terminate => {
                // A rolling restart: a stopping leader hands leadership over and
                // answers its in-flight writes before it exits.
                let stopped = cluster.terminate(victim, Duration::from_secs(20)).await?;
                tokio::time::sleep(hold).await;
                cluster.start(victim)?;
                match stopped {
                    Some(took) => format!(
                        "SIGTERM node {victim} ({role}), exited after {} ms, restart after {} ms",
                        took.as_millis(),
                        hold.as_millis()
                    ),
                    None => format!(
                        "SIGTERM node {victim} ({role}): no exit within 20 s, killed; restart after {} ms",
                        hold.as_millis()
                    ),
                }
            }
            Fault::Pause => {
                cluster.pause(victim)?;
                tokio::time::sleep(hold).await;
                cluster.resume(victim)?;
                format!("SIGSTOP node {victim} ({role}) for {} ms", hold.as_millis())
            }
            Fault::Isolate => {
                let others: Vec<u64> = cluster
                    .nodes
                    .keys()
                    .copied()
                    .filter(|id| *id != victim)
                    .collect();
                cluster.links.partition(&[victim], &others);
                tokio::time::sleep(hold).await;
                cluster.links.heal_all();
                format!("isolate node {victim} ({role}) for {} ms", hold.as_millis())
            }
            Fault::Split => {
                let mut all: Vec<u64> = cluster.nodes.keys().copied().collect();
                let minority_size = voters.len().saturating_sub(1) / 2;
                let mut minority = vec![victim];
                all.retain(|id| *id != victim);
                while minority.len() < minority_size.max(1) && !all.is_empty() {
                    let i = rng.below(all.len() as u64) as usize;
                    minority.push(all.remove(i));
                }
                cluster.links.partition(&minority, &all);
                tokio::time::sleep(hold).await;
                cluster.links.heal_all();
                format!(
                    "partition {minority:?} | {all:?} for {} ms (node {victim} was {role})",
                    hold.as_millis()
                )
            }
            Fault::MembershipLeaderKill => {
                let Some(l) = leader else {
                    report
                        .faults
                        .push("membership change skipped: no leader".into());
                    continue;
                };
                membership_with_leader_kill(cluster, rng, spare, &voters, l, hold).await?
            }
            Fault::Wipe => {
                // One lost member at a time, and only while the others can form a quorum.
                let live_voters = voters.iter().filter(|v| cluster.live().contains(v)).count();
                if voters.len() < 3 || live_voters < voters.len() {
                    report
                        .faults
                        .push("wipe skipped: not every voter is up".into());
                    continue;
                }
                wipe_and_readd(cluster, victim, role).await?
            }
        };
        *report
            .fault_kinds
            .entry(fault.name().to_string())
            .or_default() += 1;
        report.faults.push(what);
    }
    Ok(())
}

/// Adds (or removes) the spare as a voter and kills the leader while the change is in flight.
async fn membership_with_leader_kill(
    cluster: &mut Cluster,
    rng: &mut Rng,
    spare: u64,
    voters: &[u64],
    leader: u64,
    hold: Duration,
) -> Result<String, ChaosError> {
    let http = cluster.http.clone();
    let urls = cluster.live_urls();
    let adding = !voters.contains(&spare);
    let node = &cluster.nodes[&spare];
    let learner = json!({"id": spare, "api_addr": node.proxy_api.to_string(), "raft_addr": node.proxy_raft.to_string(), "wait": true});
    let change = tokio::spawn(async move {
        let t = Duration::from_secs(15);
        if adding {
            cluster_call(&http, urls.clone(), "/v1/cluster/learners", learner, t).await?;
            cluster_call(
                &http,
                urls,
                "/v1/cluster/membership",
                json!({"add_voters": [spare]}),
                t,
            )
            .await
        } else {
            cluster_call(
                &http,
                urls,
                "/v1/cluster/membership",
                json!({"remove_nodes": [spare]}),
                t,
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(rng.range(0, 300))).await;
    cluster.kill(leader)?;
    tokio::time::sleep(hold).await;
    cluster.start(leader)?;
    let outcome = match change.await {
        Ok(Ok(_)) => "completed".to_string(),
        Ok(Err(e)) => format!("not completed ({e})"),
        Err(e) => format!("task failed ({e})"),
    };
    Ok(format!(
        "{} node {spare} while leader {leader} is killed for {} ms: {outcome}",
        if adding { "add" } else { "remove" },
        hold.as_millis()
    ))
}

/// Wipes `victim`'s data dir, restarts it, checks it stays out (`lost_data`), then
/// removes it and adds it back as a learner that is promoted once caught up.
async fn wipe_and_readd(
    cluster: &mut Cluster,
    victim: u64,
    role: &str,
) -> Result<String, ChaosError> {
    let t0 = Instant::now();
    cluster.wipe(victim)?;
    cluster.start(victim)?;
    let c = &*cluster;
    wait(
        Duration::from_secs(15),
        &format!("wiped node {victim} to report lost_data"),
        || async move {
            let info = c.info(victim).await.ok()?;
            if info["initialized"] == true {
                // Refilled as a voter: exactly what must never happen.
                return Some(Err(ChaosError::Cluster(format!(
                    "wiped node {victim} was initialized again without being re-added: {info}"
                ))));
            }
            (info["lost_data"] == true).then_some(Ok(()))
        },
    )
    .await??;
    let t = Duration::from_secs(20);
    cluster
        .cluster_call(
            "/v1/cluster/membership",
            json!({"remove_nodes": [victim]}),
            t,
        )
        .await?;
    cluster.join(victim, t).await?;
    Ok(format!(
        "wipe node {victim} ({role}): refused as voter, removed, re-added as learner and promoted in {} ms",
        t0.elapsed().as_millis()
    ))
}

/// Heals every fault: links, paused and stopped processes, members that lost their data.
async fn heal(cluster: &mut Cluster) -> Result<(), ChaosError> {
    cluster.links.heal_all();
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in &ids {
        cluster.resume(*id)?;
        cluster.start(*id)?;
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
