//! Scenario 8: backups. `orders` gets `spec.backup` to the S3-protocol server
//! the run script started (continuous, every 10 s a full backup, keep 2) until
//! retention is seen pruning; the schedule stops; keys are written and their
//! prefix is deleted by mistake; a new KVCluster restores the state at the
//! revision before the delete (newest full backup + continuous segments), and
//! every key is back. The restored cluster
//! backs itself up to a PersistentVolumeClaim on a schedule with retention, and
//! an on-demand `KVClusterBackup` with `deletionPolicy: Delete` is taken, then
//! deleted with its object.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use e2e::Ctx;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::DeleteParams;
use kube::api::Patch;
use kube::api::PatchParams;
use kube::api::PostParams;
use operator::backup::crd::KVClusterBackup;
use operator::crd::KVCluster;
use serde_json::Value;
use serde_json::json;

use super::MIN;
use super::NS;

pub(super) const BUCKET: &str = "kvc-e2e-backups";
pub(super) const KEYS: u64 = 300;

pub(super) fn s3_endpoint() -> anyhow::Result<String> {
    std::env::var("E2E_S3_ENDPOINT")
        .context("E2E_S3_ENDPOINT (an S3-protocol server reachable from pods) is required")
}

/// The S3 destination as the test process reaches it.
fn s3_dest(prefix: &str) -> anyhow::Result<kvserver::backup::Destination> {
    Ok(kvserver::backup::Destination::open(
        &format!("s3://{BUCKET}/{prefix}"),
        &kvserver::backup::dest::S3Options {
            endpoint: Some(s3_endpoint()?),
            region: None,
            credentials: Some(("e2e-key".into(), "e2e-secret".into())),
        },
    )?)
}

async fn backup_status(
    ctx: &Ctx,
    name: &str,
) -> anyhow::Result<operator::backup::crd::BackupStatus> {
    Ok(ctx
        .kvc(NS, name)
        .await?
        .status
        .and_then(|s| s.backup)
        .unwrap_or_default())
}

/// Waits until the agent of `name` shipped `revision` (continuous backup).
async fn wait_shipped(ctx: &Ctx, name: &str, revision: u64) -> anyhow::Result<Duration> {
    let (_, took) = ctx
        .wait_for(
            &format!("{name}: revision {revision} backed up"),
            2 * MIN,
            || async {
                let b = backup_status(ctx, name).await?;
                Ok(match b.shipped_revision {
                    Some(r) if r >= revision => Ok(()),
                    other => Err(format!(
                        "shipped {other:?}, failures {}, {:?}",
                        b.consecutive_failures, b.last_error
                    )),
                })
            },
        )
        .await?;
    Ok(took)
}

/// The agent's config digest, as its pod template carries it.
async fn agent_config(ctx: &Ctx, name: &str) -> anyhow::Result<String> {
    let d = Api::<Deployment>::namespaced(ctx.client.clone(), NS)
        .get(name)
        .await?;
    d.spec
        .and_then(|s| s.template.metadata)
        .and_then(|m| m.annotations)
        .and_then(|a| a.get("kvcluster.io/agent-config").cloned())
        .context("agent config annotation")
}

/// Waits until the agent runs a config other than `before`, alone (Recreate).
async fn agent_rolled_out(ctx: &Ctx, name: &str, before: &str) -> anyhow::Result<()> {
    let api: Api<Deployment> = Api::namespaced(ctx.client.clone(), NS);
    ctx.wait_for(&format!("{name} rolled out"), 3 * MIN, || async {
        let d = api.get(name).await?;
        let now = agent_config(ctx, name).await?;
        let generation = d.metadata.generation.unwrap_or(0);
        let st = d.status.unwrap_or_default();
        let done = now != before
            && st.observed_generation.unwrap_or(0) >= generation
            && st.updated_replicas == Some(1)
            && st.ready_replicas == Some(1)
            && st.replicas == Some(1);
        Ok(if done { Ok(()) } else { Err(format!("{st:?}")) })
    })
    .await?;
    Ok(())
}

/// `kvctl backup list` in a pod mounting the claim: the unlabelled full backups.
async fn list_volume(ctx: &Ctx, pod: &str, claim: &str) -> anyhow::Result<Value> {
    let p: Pod = serde_json::from_value(json!({
        "metadata": {"name": pod, "namespace": NS},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": true, "runAsUser": 10001, "fsGroup": 10001,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "list", "image": e2e::KVSERVER_IMAGE, "imagePullPolicy": "IfNotPresent",
                "command": ["/usr/local/bin/kvctl", "backup", "list", "--dest", "/backup"],
                "volumeMounts": [{"name": "b", "mountPath": "/backup", "readOnly": true}],
                "securityContext": {"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}},
            }],
            "volumes": [{"name": "b", "persistentVolumeClaim": {"claimName": claim, "readOnly": true}}],
        }
    }))?;
    Api::<Pod>::namespaced(ctx.client.clone(), NS)
        .create(&PostParams::default(), &p)
        .await?;
    let (ok, out) = ctx.finish_kvctl(NS, pod, 2 * MIN).await?;
    anyhow::ensure!(ok, "kvctl backup list: {out}");
    Ok(out)
}

/// Creates `KVClusterBackup` `name` of cluster `cluster` (deleted with its
/// object) and waits until it completed or failed: its status.
pub(super) async fn on_demand(
    ctx: &Ctx,
    name: &str,
    cluster: &str,
    timeout: Duration,
) -> anyhow::Result<operator::backup::crd::KVClusterBackupStatus> {
    let kvcbs: Api<KVClusterBackup> = Api::namespaced(ctx.client.clone(), NS);
    let b: KVClusterBackup = serde_json::from_value(json!({
        "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVClusterBackup",
        "metadata": {"name": name, "namespace": NS},
        "spec": {"cluster": cluster, "deletionPolicy": "Delete"},
    }))?;
    kvcbs.create(&PostParams::default(), &b).await?;
    let (done, _) = ctx
        .wait_for(
            &format!("KVClusterBackup {name} completed"),
            timeout,
            || async {
                let st = kvcbs.get(name).await?.status.unwrap_or_default();
                Ok(match st.phase.as_deref() {
                    Some("Completed") | Some("Failed") => Ok(st),
                    other => Err(format!("phase {other:?}")),
                })
            },
        )
        .await?;
    Ok(done)
}

/// Waits until KVCluster `name`'s restore finished, and fails at once, with its
/// reason, when the restore Job failed.
pub(super) async fn restore_completed(ctx: &Ctx, name: &str) -> anyhow::Result<()> {
    let (restore, _) = ctx
        .wait_for(&format!("{name}: restore finished"), 5 * MIN, || async {
            let st = ctx.kvc(NS, name).await?.status.unwrap_or_default();
            Ok(match st.restore {
                Some(r) if r.phase == "Completed" || r.phase == "Failed" => Ok(r),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
    anyhow::ensure!(restore.phase == "Completed", "{name} restore: {restore:?}");
    Ok(())
}

pub(super) async fn backups(ctx: &mut Ctx) -> anyhow::Result<()> {
    let started = Instant::now();
    let endpoint = s3_endpoint()?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "backup-s3", "namespace": NS},
        "stringData": {"AWS_ACCESS_KEY_ID": "e2e-key", "AWS_SECRET_ACCESS_KEY": "e2e-secret"},
    }))?;
    Api::<Secret>::namespaced(ctx.client.clone(), NS)
        .create(&PostParams::default(), &secret)
        .await?;
    let kvcs: Api<KVCluster> = Api::namespaced(ctx.client.clone(), NS);
    kvcs.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"backup": {
            "destination": {"s3": {"endpoint": endpoint, "bucket": BUCKET, "credentialsSecret": "backup-s3"}},
            "schedule": "*/10 * * * * *",
            "retention": {"keep": 2},
            "flushIntervalSeconds": 1,
        }}})),
    )
    .await?;
    super::operator_available(ctx, NS, "orders-backup").await?;

    // Scheduled full backups to S3 with retention (keep 2): at least three
    // taken, two kept.
    let agent_config = agent_config(ctx, "orders-backup").await?;
    let cluster_id = {
        let (id, _) = ctx
            .wait_for("orders: continuous backup running", 2 * MIN, || async {
                let b = backup_status(ctx, "orders").await?;
                Ok(b.cluster_id.clone().ok_or_else(|| format!("{b:?}")))
            })
            .await?;
        id
    };
    let dest = s3_dest(&format!("{NS}/orders"))?;
    let seen = std::sync::Mutex::new(std::collections::BTreeSet::new());
    let (fulls, _) = ctx
        .wait_for(
            "three scheduled backups taken, two kept",
            2 * MIN,
            || async {
                let kept = dest.full_backups(&cluster_id).await?;
                let mut seen = seen.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                seen.extend(
                    kept.iter()
                        .filter(|f| f.label.is_none())
                        .map(|f| f.name.clone()),
                );
                Ok(if kept.len() == 2 && seen.len() >= 3 {
                    Ok(kept)
                } else {
                    Err(format!("{} kept, {} seen", kept.len(), seen.len()))
                })
            },
        )
        .await?;
    // The schedule stops, so retention stops too: what follows is restored
    // from the newest kept full backup plus the continuous segments after it.
    // (With a schedule every 10 s and keep 2 the restore window is 20 s, which
    // a restore Job can outlive: CI run of 2026-12-03 pruned the base mid-restore.)
    kvcs.patch(
        "orders",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"backup": {"schedule": null}}})),
    )
    .await?;
    agent_rolled_out(ctx, "orders-backup", &agent_config).await?;

    // Keys, a mistake, and the continuous backup of both.
    super::write_keys(ctx, "bk-load", "orders", "bk/", KEYS).await?;
    let (ok, del) = ctx
        .kvctl(NS, "bk-mistake", "orders", &["delete-prefix", "bk/"])
        .await?;
    anyhow::ensure!(ok && del["deleted"] == KEYS, "prefix delete: {del}");
    let deleted_at = del["revision"].as_u64().context("revision of the delete")?;
    let shipped_after = wait_shipped(ctx, "orders", deleted_at).await?;
    let base = dest
        .full_backups(&cluster_id)
        .await?
        .iter()
        .map(|f| f.revision)
        .max()
        .context("a full backup")?;
    anyhow::ensure!(
        base < deleted_at - KEYS,
        "the newest full backup (revision {base}) must predate the keys, so the restore replays segments"
    );

    // Restore a new cluster to the revision before the mistake.
    let restored: KVCluster = serde_json::from_value(json!({
        "apiVersion": "kvcluster.io/v1alpha1", "kind": "KVCluster",
        "metadata": {"name": "orders-restored", "namespace": NS},
        "spec": {
            "replicas": 3,
            "storage": {"backend": "sqlite", "size": "64Mi", "reclaimPolicy": "Delete"},
            "resources": {"requests": {"cpu": "50m", "memory": "32Mi"}, "limits": {"memory": "256Mi"}},
            "restore": {
                "destination": {"s3": {"endpoint": endpoint, "bucket": BUCKET, "prefix": format!("{NS}/orders"),
                                        "credentialsSecret": "backup-s3"}},
                "clusterId": cluster_id,
                "toRevision": deleted_at - 1,
            },
        }
    }))?;
    let t0 = Instant::now();
    super::create_kvc(ctx, &restored).await?;
    restore_completed(ctx, "orders-restored").await?;
    let converged = ctx
        .wait_converged(NS, "orders-restored", 3, 5 * MIN)
        .await?;
    super::read_keys(ctx, "bk-verify", "orders-restored", "bk/", KEYS).await?;
    let restore_s = t0.elapsed();

    // The restored cluster backs up to a volume, on a schedule, keeping 2.
    let pvc: PersistentVolumeClaim = serde_json::from_value(json!({
        "metadata": {"name": "restored-backups", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "64Mi"}}},
    }))?;
    Api::<PersistentVolumeClaim>::namespaced(ctx.client.clone(), NS)
        .create(&PostParams::default(), &pvc)
        .await?;
    kvcs.patch(
        "orders-restored",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"backup": {
            "destination": {"volume": {"claimName": "restored-backups"}},
            "schedule": "*/10 * * * * *",
            "retention": {"keep": 2},
            "continuous": false,
        }}})),
    )
    .await?;
    super::operator_available(ctx, NS, "orders-restored-backup").await?;
    // An on-demand backup, deleted with its object.
    let kvcbs: Api<KVClusterBackup> = Api::namespaced(ctx.client.clone(), NS);
    let done = on_demand(ctx, "before-upgrade", "orders-restored", 2 * MIN).await?;
    anyhow::ensure!(
        done.phase.as_deref() == Some("Completed") && done.revision == Some(deleted_at - 1),
        "on-demand backup: {done:?}"
    );
    let (_, scheduled) = ctx
        .wait_for(
            "orders-restored: scheduled backups pruned to 2",
            2 * MIN,
            || async {
                let l = list_volume(
                    ctx,
                    &format!("bk-list-{}", rand_suffix()),
                    "restored-backups",
                )
                .await?;
                let full = l["full"].as_array().cloned().unwrap_or_default();
                let scheduled = full
                    .iter()
                    .filter(|f| !f["name"].as_str().unwrap_or("").contains("before-upgrade"))
                    .count();
                let labelled = full.len() - scheduled;
                let st = backup_status(ctx, "orders-restored").await?;
                Ok(
                    if scheduled == 2 && labelled == 1 && st.last_success.is_some() {
                        Ok(())
                    } else {
                        Err(format!(
                            "{scheduled} scheduled, {labelled} on-demand in the volume"
                        ))
                    },
                )
            },
        )
        .await?;
    kvcbs
        .delete("before-upgrade", &DeleteParams::default())
        .await?;
    ctx.wait_for("before-upgrade and its object deleted", 2 * MIN, || async {
        let gone = kvcbs.get_opt("before-upgrade").await?.is_none();
        let l = list_volume(
            ctx,
            &format!("bk-list-{}", rand_suffix()),
            "restored-backups",
        )
        .await?;
        let left = l["full"]
            .as_array()
            .map(|f| {
                f.iter()
                    .filter(|x| x["name"].as_str().unwrap_or("").contains("before-upgrade"))
                    .count()
            })
            .unwrap_or(0);
        Ok(if gone && left == 0 {
            Ok(())
        } else {
            Err(format!("resource gone {gone}, objects left {left}"))
        })
    })
    .await?;
    let failing = e2e::condition(&ctx.kvc(NS, "orders").await?, "BackupFailing");
    anyhow::ensure!(failing.0 == "False", "BackupFailing on orders: {failing:?}");
    ctx.report.add(
        "scenario 8: backups, point-in-time restore",
        json!({"seconds": started.elapsed().as_secs(),
               "delete_backed_up_after_s": shipped_after.as_secs_f64(),
               "s3_full_backups_kept": fulls.len(),
               "restored_and_converged_s": converged.as_secs_f64(), "restore_total_s": restore_s.as_secs_f64(),
               "volume_retention_observed_after_s": scheduled.as_secs()}),
    );
    Ok(())
}

fn rand_suffix() -> String {
    format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    )
}
