//! Forced recovery from permanent quorum loss (`spec.recovery`): the user's
//! explicit, audited request to form a new cluster from one surviving member,
//! and the pure plan that carries it out. `controller/recovery.rs` observes and
//! acts; kvserver does the recovery itself (`kvserver::recover`).
//!
//! Never automatic: losing a majority looks the same as a long outage from
//! here, and a recovery throws away whatever the other members had. So the
//! user names the survivor (`fromMember`), confirms with the cluster's name,
//! and numbers the recovery (`epoch`); the cluster id becomes
//! `<name>-<uid8>-r<epoch>`, so a member that still holds the old cluster's
//! data is refused by identity instead of merged in.
//!
//! The plan, one step per reconcile, recorded in `status.recovery`:
//! `Stopping` (StatefulSet to 0, wait for the pods to go; then delete every
//! member volume but the survivor's) → `Starting` (StatefulSet back to size;
//! the survivor starts with the recovery settings in its config and forms the
//! new cluster alone; the others start empty) → `Completed` once the survivor
//! leads the new cluster. From there the usual membership pipeline adds the
//! others as learners and promotes them, one at a time.

use std::collections::BTreeSet;

use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;

use crate::build::BuildError;
use crate::crd::KVCluster;

/// Requests forced recovery from permanent quorum loss (docs/backup.md, runbook).
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RecoverySpec {
    /// Form a new cluster from one member whose data survived, as etcd's
    /// `--force-new-cluster`. Every other member's volume is deleted.
    pub force_new_cluster: ForceNewCluster,
}

/// Which member survives, and the confirmation.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForceNewCluster {
    /// Ordinal of the surviving member (pod `<name>-<ordinal>`): the one with the
    /// highest applied index of those left (`kvctl status`, or its last log).
    pub from_member: u32,
    /// Which recovery this is: 1 the first time, one more for each later one.
    /// The cluster id becomes `<name>-<uid8>-r<epoch>`. Leave the field in place
    /// after the recovery: it is part of the cluster's identity from then on.
    #[schemars(range(min = 1))]
    pub epoch: u32,
    /// The KVCluster's name, typed again: confirms that the other members'
    /// volumes are deleted and that writes the survivor never received are lost.
    pub confirm: String,
}

/// What the operator did for `spec.recovery`. The cluster's identity follows
/// `epoch` here (a recovery that started), never the spec alone: a request
/// that is refused changes nothing.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryStatus {
    /// The last recovery that started (0: none).
    pub epoch: u32,
    /// Its phase: Stopping, Starting or Completed.
    pub phase: String,
    /// The surviving member.
    pub from_member: u32,
    /// The lost cluster's id.
    pub from_cluster_id: String,
    /// The new cluster's id.
    pub cluster_id: String,
    /// Member volumes deleted (the survivor's is kept).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted_volumes: Vec<String>,
    /// When it started and completed (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// What is happening.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Why the request in the spec is refused (nothing was changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The cluster id of recovery `epoch` (0: the cluster as first formed).
pub fn cluster_id_at(base: &str, epoch: u32) -> String {
    match epoch {
        0 => base.to_string(),
        e => format!("{base}-r{e}"),
    }
}

fn recorded(kvc: &KVCluster) -> Option<&RecoveryStatus> {
    kvc.status.as_ref().and_then(|s| s.recovery.as_ref())
}

/// The epoch of the cluster's identity: the last recovery that started.
pub fn identity_epoch(kvc: &KVCluster) -> u32 {
    recorded(kvc)
        .filter(|r| matches!(r.phase.as_str(), "Stopping" | "Starting" | "Completed"))
        .map_or(0, |r| r.epoch)
}

/// The recovery the members' config must carry while it runs: the lost
/// cluster's id and the survivor's ordinal.
pub fn in_progress(kvc: &KVCluster) -> Option<(String, u64)> {
    recorded(kvc)
        .filter(|r| matches!(r.phase.as_str(), "Stopping" | "Starting"))
        .map(|r| (r.from_cluster_id.clone(), r.from_member as u64))
}

/// Checks `spec.recovery` on its own (an invalid one applies nothing).
pub fn check(kvc: &KVCluster) -> Result<(), BuildError> {
    let done = identity_epoch(kvc);
    let Some(req) = kvc.spec.recovery.as_ref().map(|r| &r.force_new_cluster) else {
        return match done {
            0 => Ok(()),
            d => Err(BuildError::Invalid(format!(
                "spec.recovery: recovery {d} made this cluster's id end in -r{d}; the field must stay"
            ))),
        };
    };
    let field = "spec.recovery.forceNewCluster";
    if req.epoch < done.max(1) || req.epoch > done + 1 {
        return Err(BuildError::Invalid(format!(
            "{field}.epoch: must be {} (a new recovery) or {done} (the last one, kept)",
            done + 1
        )));
    }
    if req.epoch == done {
        return Ok(());
    }
    if req.confirm != kvc.metadata.name.clone().unwrap_or_default() {
        return Err(BuildError::Invalid(format!(
            "{field}.confirm: must be the KVCluster's name"
        )));
    }
    if req.from_member >= kvc.spec.replicas.max(1) as u32 {
        return Err(BuildError::Invalid(format!(
            "{field}.fromMember: {} is not a member (replicas {})",
            req.from_member, kvc.spec.replicas
        )));
    }
    Ok(())
}

/// What the plan sees.
#[derive(Debug, Clone, Default)]
pub struct RecoveryObs {
    /// `spec.replicas`.
    pub desired: u64,
    pub sts_replicas: u64,
    /// Member pods that still exist (terminating ones included).
    pub pods: BTreeSet<u64>,
    /// Ordinals with a data volume.
    pub pvcs: BTreeSet<u64>,
    /// The cluster id and node id of a member that leads a cluster, if any.
    pub leader: Option<(String, u64)>,
    /// The current cluster works: a leader, and a majority of its voters serve
    /// their data. A leader alone is not enough: one cut off from the others may
    /// still call itself leader.
    pub quorum: bool,
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryStep {
    /// Nothing to do: the pipeline goes on.
    Proceed,
    /// The request is refused (status and an Event); nothing changes.
    Refused(String),
    /// Record the start (phase Stopping): the identity moves to the new epoch.
    Start,
    /// Set the StatefulSet's size (0 to stop, `desired` to start).
    Scale(u64),
    /// Wait; the reason is the status message.
    Wait(String),
    /// Delete these ordinals' volumes.
    DeleteVolumes(Vec<u64>),
    /// The volumes are gone: start the members (phase Starting).
    StartMembers,
    /// The survivor leads the new cluster.
    Completed,
}

impl RecoveryStep {
    /// Whether the rest of the pipeline (StatefulSet, membership) waits.
    pub fn holds(&self) -> bool {
        !matches!(self, RecoveryStep::Proceed | RecoveryStep::Refused(_))
    }
}

/// Plans the next step of `kvc`'s recovery from what was observed (after
/// [`check`] passed).
pub fn plan(kvc: &KVCluster, base: &str, obs: &RecoveryObs) -> RecoveryStep {
    let Some(req) = kvc.spec.recovery.as_ref().map(|r| &r.force_new_cluster) else {
        return RecoveryStep::Proceed;
    };
    let survivor = req.from_member as u64;
    let st = recorded(kvc);
    let identity = identity_epoch(kvc);
    if req.epoch == identity + 1 {
        let current = cluster_id_at(base, identity);
        return match &obs.leader {
            Some((id, node)) if *id == current && obs.quorum => RecoveryStep::Refused(format!(
                "member {node} leads cluster {current} with a majority of its voters: forced recovery is for a cluster that lost its majority for good; remove spec.recovery"
            )),
            _ if !obs.pvcs.contains(&survivor) => RecoveryStep::Refused(format!(
                "member {survivor} has no volume: nothing survives there; name another member, or restore from a backup"
            )),
            _ => RecoveryStep::Start,
        };
    }
    let new_id = cluster_id_at(base, identity);
    match st.map(|s| s.phase.as_str()) {
        Some("Stopping") => {
            if obs.sts_replicas > 0 {
                RecoveryStep::Scale(0)
            } else if !obs.pods.is_empty() {
                RecoveryStep::Wait(format!("waiting for members {:?} to stop", obs.pods))
            } else if !obs.pvcs.contains(&survivor) {
                RecoveryStep::Wait(format!(
                    "the survivor's volume (member {survivor}) is gone: restore from a backup"
                ))
            } else {
                let others: Vec<u64> = obs
                    .pvcs
                    .iter()
                    .copied()
                    .filter(|o| *o != survivor)
                    .collect();
                if others.is_empty() {
                    RecoveryStep::StartMembers
                } else {
                    RecoveryStep::DeleteVolumes(others)
                }
            }
        }
        Some("Starting") => match &obs.leader {
            Some((id, node)) if *id == new_id && *node == survivor => RecoveryStep::Completed,
            _ if obs.sts_replicas != obs.desired => RecoveryStep::Scale(obs.desired),
            _ => RecoveryStep::Wait(format!(
                "waiting for member {survivor} to form cluster {new_id} from its data"
            )),
        },
        _ => RecoveryStep::Proceed,
    }
}

#[cfg(test)]
mod tests;
