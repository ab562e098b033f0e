//! Scenario 3b: a partitioned KVCluster (issue 21). Five pods, 16 partitions of
//! 3 replicas; `kubectl scale` 5→7→5 under a continuous writer, with placement
//! balanced at each end (replicas and leaderships within one per pod, no move in
//! flight); then the pod leading the most partitions is deleted and those
//! partitions elect leaders on other pods. Every acknowledged write is read back.
//! Then an on-demand backup (`KVClusterBackup`) holds every partition, and a new
//! 3-pod KVCluster of 8 partitions restored from it (keys placed anew by hash,
//! formed on its first pod and copied to the others) reads every key back.

use std::collections::BTreeMap;
use std::time::Duration;
use std::time::Instant;

use e2e::Ctx;
use e2e::condition;
use k8s_openapi::api::core::v1::Event;
use kube::Api;
use kube::api::DeleteParams;
use kube::api::ListParams;
use kube::api::Patch;
use kube::api::PatchParams;
use kube::api::PostParams;
use operator::backup::crd::KVClusterBackup;
use operator::crd::KVCluster;
use operator::partitions::PartitionsStatus;
use serde_json::json;

use super::MIN;
use super::NS;

const NAME: &str = "shards";
const PARTITIONS: i32 = 16;
/// Keys written before the backup and read back from the restored cluster.
const KEYS: u64 = 200;

/// Waits until `status.partitions` shows every partition formed, led and in
/// place over exactly pods `0..n`, replicas and leaderships within one per pod.
async fn balanced(
    ctx: &Ctx,
    n: i64,
    timeout: Duration,
) -> anyhow::Result<(PartitionsStatus, Duration)> {
    ctx.wait_for(
        &format!("{NAME}: partitions balanced over {n} pods"),
        timeout,
        || async {
            let kvc = ctx.kvc(NS, NAME).await?;
            let Some(p) = kvc.status.as_ref().and_then(|s| s.partitions.clone()) else {
                return Ok(Err("no status.partitions yet".to_string()));
            };
            let ids: Vec<i64> = p.pods.iter().map(|x| x.id).collect();
            let spread = |f: fn(&operator::partitions::PodPartitions) -> i32| {
                let v: Vec<i32> = p.pods.iter().map(f).collect();
                v.iter().max().unwrap_or(&0) - v.iter().min().unwrap_or(&0)
            };
            let ok = p.count == PARTITIONS
                && p.forming == 0
                && p.moves_in_flight == 0
                && p.leaderless == 0
                && ids == (0..n).collect::<Vec<_>>()
                && spread(|x| x.replicas) <= 1
                && spread(|x| x.leaders) <= 1
                && condition(&kvc, "Rebalancing").0 == "False";
            Ok(if ok {
                Ok(p)
            } else {
                Err(format!(
                    "{p:?}, Rebalancing {:?}",
                    condition(&kvc, "Rebalancing")
                ))
            })
        },
    )
    .await
}

/// [`balanced`], and when it times out, what each pod's placement driver said
/// (the lines of the failure dump are mostly Raft heartbeats).
async fn balanced_or_explain(
    ctx: &Ctx,
    n: i64,
    timeout: Duration,
) -> anyhow::Result<(PartitionsStatus, Duration)> {
    match balanced(ctx, n, timeout).await {
        Ok(r) => Ok(r),
        Err(e) => {
            // Kept short: CI shows the first 40 lines of the suite's error.
            let mut said = Vec::new();
            for id in 0..n.max(7) {
                let pod = format!("{NAME}-{id}");
                if let Ok(logs) = ctx.kubectl(&["-n", NS, "logs", &pod]).await {
                    let mine: Vec<String> = logs
                        .lines()
                        .filter(|l| l.contains("partitions waiting") || l.contains("move not made"))
                        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                        .map(|v| {
                            format!(
                                "{pod} {}: {} {} {}",
                                v["timestamp"].as_str().unwrap_or(""),
                                v["message"].as_str().unwrap_or(""),
                                v["waiting"].as_str().unwrap_or(""),
                                v["change"].as_str().unwrap_or(""),
                            )
                        })
                        .collect();
                    said.extend(mine.into_iter().rev().take(3));
                }
            }
            anyhow::bail!(
                "{e}\nwhat the placement drivers last said of waiting moves:\n{}",
                said.join("\n")
            )
        }
    }
}

pub(super) async fn scale_partitioned(ctx: &mut Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    let mut kvc = e2e::kvcluster(NS, NAME, 5, json!({"reclaimPolicy": "Delete"}))?;
    kvc.spec.partitions = PARTITIONS;
    super::create_kvc(ctx, &kvc).await?;
    let formed = ctx.wait_converged(NS, NAME, 5, 6 * MIN).await?;
    let (first, placed) = balanced_or_explain(ctx, 5, 4 * MIN).await?;
    ctx.start_kvctl(
        NS,
        "writer-shards",
        NAME,
        &[
            "load",
            "--prefix",
            "sh/",
            "--stop-key",
            "control/stop-shards",
            "--concurrency",
            "2",
            "--interval-ms",
            "10",
        ],
    )
    .await?;
    ctx.wait_running(NS, "writer-shards").await?;
    let mut steps = vec![json!({"pods": 5, "converged_s": formed.as_secs_f64(),
        "balanced_s": placed.as_secs_f64(), "placement": first.pods})];
    for n in [7i64, 5] {
        let t0 = Instant::now();
        ctx.kubectl(&[
            "-n",
            NS,
            "scale",
            &format!("kvc/{NAME}"),
            &format!("--replicas={n}"),
        ])
        .await?;
        let converged = ctx.wait_converged(NS, NAME, n as usize, 8 * MIN).await?;
        let (p, _) = balanced_or_explain(ctx, n, 6 * MIN).await?;
        steps.push(json!({"pods": n, "converged_s": converged.as_secs_f64(),
            "balanced_s": t0.elapsed().as_secs_f64(), "epoch": p.epoch, "placement": p.pods}));
    }
    // Scale-in drained the leaving pods before removing them, and the moves were recorded.
    let events: Api<Event> = Api::namespaced(ctx.client.clone(), NS);
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    for e in events.list(&ListParams::default()).await?.items {
        if e.involved_object.name.as_deref() == Some(NAME) {
            *reasons.entry(e.reason.unwrap_or_default()).or_default() += 1;
        }
    }
    for r in ["MemberDemoted", "ReplicasMoved", "ReplicaMoved"] {
        anyhow::ensure!(reasons.contains_key(r), "no {r} event: {reasons:?}");
    }

    // The pod leading the most partitions goes: they elect elsewhere.
    let before = ctx
        .kvc(NS, NAME)
        .await?
        .status
        .and_then(|s| s.partitions)
        .ok_or_else(|| anyhow::anyhow!("no status.partitions"))?;
    let victim = before
        .pods
        .iter()
        .max_by_key(|p| (p.leaders, -p.id))
        .ok_or_else(|| anyhow::anyhow!("no pods in status.partitions"))?
        .clone();
    anyhow::ensure!(victim.leaders > 0, "no pod leads a partition: {before:?}");
    Api::<k8s_openapi::api::core::v1::Pod>::namespaced(ctx.client.clone(), NS)
        .delete(&format!("{NAME}-{}", victim.id), &DeleteParams::default())
        .await?;
    let kvc_api: Api<KVCluster> = Api::namespaced(ctx.client.clone(), NS);
    let (_, elected) = ctx
        .wait_for(
            &format!("the partitions pod {} led elect elsewhere", victim.id),
            2 * MIN,
            || async {
                let p = kvc_api.get(NAME).await?.status.and_then(|s| s.partitions);
                Ok(match p {
                    Some(p)
                        if p.leaderless == 0
                            && p.pods.iter().all(|x| x.id != victim.id || x.leaders == 0) =>
                    {
                        Ok(())
                    }
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
    ctx.wait_converged(NS, NAME, 5, 4 * MIN).await?;
    let summary =
        super::stop_writer_and_verify(ctx, NAME, "writer-shards", "sh/", "control/stop-shards")
            .await?;
    let failed = super::u64s(&summary["failed"]);
    let restored = backup_and_restore(ctx).await?;
    ctx.report.add(
        "scenario 3b: 16 partitions, scale 5→7→5 under load, pod leading partitions deleted",
        json!({"seconds": started.elapsed().as_secs(), "steps": steps,
               "events": reasons,
               "deleted_pod": victim.id, "its_leaderships": victim.leaders,
               "elected_elsewhere_s": elected.as_secs_f64(),
               "writes_acked": summary["acked"], "writes_failed": failed.len(),
               "failure_window_ms": summary["failure_window_ms"],
               "max_ack_gap_ms": summary["max_ack_gap_ms"], "lost": 0,
               "backup_and_restore": restored}),
    );
    // Its pods are not needed by the scenarios after this one.
    kvc_api.delete(NAME, &DeleteParams::default()).await?;
    Ok(())
}

/// Backs the partitioned cluster up on demand (to the suite's S3 server) and
/// restores it into a new KVCluster of another partition count.
async fn backup_and_restore(ctx: &mut Ctx) -> anyhow::Result<serde_json::Value> {
    let t0 = Instant::now();
    super::write_keys(ctx, "pt-load", NAME, "pt/", KEYS).await?;
    let endpoint = super::backup::s3_endpoint()?;
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(json!({
        "metadata": {"name": "shards-s3", "namespace": NS},
        "stringData": {"AWS_ACCESS_KEY_ID": "e2e-key", "AWS_SECRET_ACCESS_KEY": "e2e-secret"},
    }))?;
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(ctx.client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await?;
    let kvcs: Api<KVCluster> = Api::namespaced(ctx.client.clone(), NS);
    let s3 = json!({"s3": {"endpoint": endpoint, "bucket": super::backup::BUCKET,
                           "prefix": format!("{NS}/{NAME}"), "credentialsSecret": "shards-s3"}});
    // Full backups only: continuous backup of a partitioned cluster is not built
    // yet (the operator refuses `continuous: true` with `partitions` > 1).
    kvcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"backup": {"destination": s3, "continuous": false}}})),
    )
    .await?;
    super::operator_available(ctx, NS, &format!("{NAME}-backup")).await?;
    let kvcbs: Api<KVClusterBackup> = Api::namespaced(ctx.client.clone(), NS);
    let done = super::backup::on_demand(ctx, "shards-full", NAME, 3 * MIN).await?;
    anyhow::ensure!(
        done.phase.as_deref() == Some("Completed"),
        "on-demand backup of the partitioned cluster: {done:?}"
    );
    let backed_up = t0.elapsed();

    let t1 = Instant::now();
    let restored: KVCluster = serde_json::from_value(json!({
        "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster",
        "metadata": {"name": "shards-restored", "namespace": NS},
        "spec": {
            "replicas": 3,
            "partitions": 8,
            "storage": {"backend": "sqlite", "size": "64Mi", "reclaimPolicy": "Delete"},
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
            "restore": {"backup": "shards-full"},
        }
    }))?;
    super::create_kvc(ctx, &restored).await?;
    super::backup::restore_completed(ctx, "shards-restored").await?;
    ctx.wait_converged(NS, "shards-restored", 3, 5 * MIN)
        .await?;
    // Formed on the first pod, then copied: every pod ends up holding replicas.
    let (placement, _) = ctx
        .wait_for(
            "shards-restored: 8 partitions formed, led and copied to all three pods",
            4 * MIN,
            || async {
                let p = kvcs
                    .get("shards-restored")
                    .await?
                    .status
                    .and_then(|s| s.partitions);
                Ok(match p {
                    Some(p)
                        if p.count == 8
                            && p.leaderless == 0
                            && p.forming == 0
                            && p.pods.len() == 3
                            && p.pods.iter().all(|x| x.replicas == 8) =>
                    {
                        Ok(p)
                    }
                    other => Err(format!("{other:?}")),
                })
            },
        )
        .await?;
    super::read_keys(ctx, "pt-verify", "shards-restored", "pt/", KEYS).await?;
    let restored_s = t1.elapsed();
    kvcs.delete("shards-restored", &DeleteParams::default())
        .await?;
    kvcbs
        .delete("shards-full", &DeleteParams::default())
        .await?;
    Ok(
        json!({"keys": KEYS, "backup_revision": done.revision, "backup_s": backed_up.as_secs_f64(),
              "restored_into_partitions": 8, "restore_s": restored_s.as_secs_f64(),
              "placement": placement.pods}),
    )
}
