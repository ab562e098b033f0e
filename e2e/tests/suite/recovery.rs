//! Scenario 8b: permanent quorum loss. `orders-restored` (3 members, from
//! scenario 8) takes 400 acknowledged writes; then two members lose their
//! volumes for good (PVC and pod deleted), leaving the leader as the only
//! member with data. `spec.recovery.forceNewCluster` names it; the operator
//! stops the members, deletes the other volumes, and the survivor forms the
//! new cluster `<id>-r1` from its data; the others rejoin as learners and are
//! promoted. Every acknowledged write, and every key restored in scenario 8, is
//! there, and the cluster takes writes again.

use std::time::Instant;

use anyhow::Context as _;
use e2e::Ctx;
use k8s_openapi::api::core::v1::PersistentVolumeClaim;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::ResourceExt;
use kube::api::DeleteParams;
use kube::api::Patch;
use kube::api::PatchParams;
use operator::crd::KVCluster;
use serde_json::json;

use super::MIN;
use super::NS;

const NAME: &str = "orders-restored";
const KEYS: u64 = 400;

pub(super) async fn quorum_loss(ctx: &mut Ctx, restored_keys: u64) -> anyhow::Result<()> {
    let started = Instant::now();
    ctx.wait_converged(NS, NAME, 3, 3 * MIN).await?;
    super::write_keys(ctx, "dr-load", NAME, "dr/", KEYS).await?;
    let kvcs: Api<KVCluster> = Api::namespaced(ctx.client.clone(), NS);
    let before = kvcs.get(NAME).await?.status.unwrap_or_default();
    // The leader has every acknowledged write: it is the member to keep.
    let survivor = before.leader.context("a leader before the loss")? as u64;
    let lost: Vec<u64> = (0..3).filter(|o| *o != survivor).collect();

    // Two volumes gone for good: their claims and pods deleted.
    let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(ctx.client.clone(), NS);
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), NS);
    let mut old_uids = Vec::new();
    for o in &lost {
        let claim = format!("data-{NAME}-{o}");
        old_uids.push(pvcs.get(&claim).await?.uid().unwrap_or_default());
        pvcs.delete(&claim, &DeleteParams::default()).await?;
        pods.delete(&format!("{NAME}-{o}"), &DeleteParams::default())
            .await?;
    }
    let t_loss = Instant::now();

    // The explicit, confirmed recovery from the survivor.
    kvcs.patch(
        NAME,
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"recovery": {"forceNewCluster": {
            "fromMember": survivor, "epoch": 1, "confirm": NAME,
        }}}})),
    )
    .await?;
    let (recovery, _) = ctx
        .wait_for(&format!("{NAME}: recovery completed"), 5 * MIN, || async {
            let st = kvcs.get(NAME).await?.status.unwrap_or_default();
            Ok(match st.recovery {
                Some(r) if r.phase == "Completed" => Ok(r),
                other => Err(format!("{other:?}")),
            })
        })
        .await?;
    let recovered_after = t_loss.elapsed();
    // The lost claims may already be gone by the time the members stopped (their
    // deletion only waited for the pods): the operator deletes what is left of
    // them, and never the survivor's.
    let lost_claims: Vec<String> = lost.iter().map(|o| format!("data-{NAME}-{o}")).collect();
    anyhow::ensure!(
        recovery.cluster_id.ends_with("-r1")
            && recovery.from_member as u64 == survivor
            && recovery
                .deleted_volumes
                .iter()
                .all(|v| lost_claims.contains(v))
            && recovery.refused.is_none(),
        "status.recovery: {recovery:?}"
    );
    for (o, uid) in lost.iter().zip(&old_uids) {
        let now = pvcs.get_opt(&format!("data-{NAME}-{o}")).await?;
        anyhow::ensure!(
            now.as_ref().and_then(|p| p.uid()).as_ref() != Some(uid),
            "member {o}'s old volume is still there"
        );
    }
    let converged = ctx.wait_converged(NS, NAME, 3, 5 * MIN).await?;

    // Nothing acknowledged before the loss is missing, and writes go on.
    super::read_keys(ctx, "dr-verify", NAME, "dr/", KEYS).await?;
    super::read_keys(ctx, "dr-verify-bk", NAME, "bk/", restored_keys).await?;
    super::write_keys(ctx, "dr-after", NAME, "dr-after/", 50).await?;
    let reasons: Vec<String> = ctx
        .kubectl(&[
            "get",
            "events",
            "-n",
            NS,
            "--field-selector",
            &format!("involvedObject.name={NAME}"),
            "-o",
            "jsonpath={.items[*].reason}",
        ])
        .await?
        .split_whitespace()
        .map(str::to_string)
        .collect();
    for r in ["RecoveryStarted", "RecoveryCompleted"] {
        anyhow::ensure!(reasons.iter().any(|x| x == r), "no {r} event: {reasons:?}");
    }
    ctx.report.add(
        "scenario 8b: forced recovery from permanent quorum loss",
        json!({"seconds": started.elapsed().as_secs(), "survivor": survivor,
               "recovered_after_loss_s": recovered_after.as_secs_f64(),
               "converged_at_3_voters_s": converged.as_secs_f64(),
               "cluster_id": recovery.cluster_id, "volumes_deleted_by_the_operator": recovery.deleted_volumes,
               "acknowledged_keys_checked": KEYS + restored_keys}),
    );
    Ok(())
}
