//! The faults of a run: which one comes next (seeded), injecting it, and
//! healing everything afterwards. Each fault returns the line the run report
//! shows for it.

use std::time::Duration;
use std::time::Instant;

use kvserver::model::MembershipRequest;

use crate::ChaosError;
use crate::campaign::RunConfig;
use crate::campaign::RunReport;
use crate::cluster::Cluster;
use crate::cluster::ClusterCall;
use crate::cluster::cluster_call;
use crate::rng::Rng;
use crate::wait::wait;

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

/// The fault window: one fault after another, until `fault_time` has passed.
pub(crate) async fn inject(
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
                    Some((_, took)) => format!(
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
                wipe_and_readd(cluster, victim, role, cfg.partitions > 1).await?
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
    let urls = cluster.live_urls();
    let access = cluster.access();
    let adding = !voters.contains(&spare);
    let learner = ClusterCall::AddLearner(cluster.learner_request(spare)?);
    let change = tokio::spawn(async move {
        let t = Duration::from_secs(15);
        if adding {
            cluster_call(urls.clone(), access.clone(), &learner, t).await?;
            let promote = MembershipRequest {
                add_voters: vec![spare],
                ..Default::default()
            };
            cluster_call(urls, access, &ClusterCall::ChangeMembership(promote), t).await
        } else {
            let remove = MembershipRequest {
                remove_nodes: vec![spare],
                ..Default::default()
            };
            cluster_call(urls, access, &ClusterCall::ChangeMembership(remove), t).await
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
///
/// With partitions, the node's partition replicas are whole again only once the
/// placement driver has replaced every one the wipe emptied (removed and copied
/// again): the next destructive fault waits for that, as an operator replacing
/// one volume at a time would (two replicas of a partition lost at once is a lost
/// majority, which no system with three copies survives).
async fn wipe_and_readd(
    cluster: &mut Cluster,
    victim: u64,
    role: &str,
    partitioned: bool,
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
            if info.initialized {
                // Refilled as a voter: exactly what must never happen.
                return Some(Err(ChaosError::Cluster(format!(
                    "wiped node {victim} was initialized again without being re-added: {info:?}"
                ))));
            }
            info.lost_data.then_some(Ok(()))
        },
    )
    .await??;
    let t = Duration::from_secs(20);
    let remove = MembershipRequest {
        remove_nodes: vec![victim],
        ..Default::default()
    };
    cluster
        .cluster_call(&ClusterCall::ChangeMembership(remove), t)
        .await?;
    cluster.join(victim, t).await?;
    let joined = t0.elapsed();
    if partitioned {
        cluster
            .wait_replicas_whole(victim, Duration::from_secs(30))
            .await?;
    }
    Ok(format!(
        "wipe node {victim} ({role}): refused as voter, removed, re-added as learner and promoted in {} ms{}",
        joined.as_millis(),
        if partitioned {
            format!(
                ", its partition replicas replaced in {} ms",
                t0.elapsed().as_millis()
            )
        } else {
            String::new()
        }
    ))
}

/// Heals every fault: links, paused and stopped processes, members that lost their data.
pub(crate) async fn heal(cluster: &mut Cluster) -> Result<(), ChaosError> {
    cluster.links.heal_all();
    let ids: Vec<u64> = cluster.nodes.keys().copied().collect();
    for id in &ids {
        cluster.resume(*id)?;
        cluster.start(*id)?;
    }
    Ok(())
}
