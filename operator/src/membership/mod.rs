//! The membership state machine: from what was observed (desired size, the
//! StatefulSet, the pods, the Raft view of the leader, the volumes) to the
//! single next step, as a pure function.
//!
//! Rules, the core of the product's safety:
//! - The Raft membership is the truth of who votes; `spec.replicas` is the
//!   desired size; the pod count is neither. A missing or restarting pod never
//!   shrinks the membership.
//! - One change at a time, and a joint configuration is always waited out.
//! - Scale-out: grow the StatefulSet, add the new pod as a learner once it
//!   serves, promote it once caught up.
//! - Scale-in, highest ordinal first: move leadership away, remove the voter,
//!   then shrink the StatefulSet, then reclaim the volume per policy. With more
//!   than one partition the voter is first demoted to a learner, which makes
//!   kvserver's placement driver move its partition replicas off it, and it is
//!   removed only once it hosts none (docs/partitions.md).
//! - Any step that would leave fewer healthy voters than a quorum is refused
//!   (`Blocked`), and so is bootstrapping a cluster that existed before.
//! - A member whose pod came back with an empty volume (it answers
//!   "uninitialized") is removed and re-added as a learner, never re-bootstrapped.
//!
//! Because the next step is derived from observed state only, an operator
//! restarted between any two steps resumes where the cluster is.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// How close to the leader's log a learner must be to be promoted, and a voter
/// to count as healthy: one definition for a cluster's single group and for each
/// partition's group (`kvserver::placement`).
pub use kvserver::placement::CATCH_UP_LAG;
pub use kvserver::placement::HEALTHY_LAG;

/// What the operator knows about one pod (ordinal = node id).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodView {
    /// The pod object exists and is not being deleted.
    pub exists: bool,
    /// kvserver answers HTTP (its `/healthz`).
    pub serving: bool,
    /// Its readiness probe passes.
    pub ready: bool,
    /// kvserver reports no cluster (empty store).
    pub uninitialized: bool,
}

/// The Raft membership as the leader reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RaftView {
    pub leader: Option<u64>,
    pub voters: BTreeSet<u64>,
    pub learners: BTreeSet<u64>,
    /// Entries behind the leader, per member.
    pub lag: BTreeMap<u64, u64>,
    /// A two-phase membership change is not finished.
    pub joint: bool,
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    /// `spec.replicas`.
    pub desired: u64,
    /// The StatefulSet's current `spec.replicas` (0 when it does not exist yet).
    pub sts_replicas: u64,
    pub pods: BTreeMap<u64, PodView>,
    /// `None` when no member answers as part of a cluster.
    pub raft: Option<RaftView>,
    /// The cluster has been formed before (the status recorded members).
    pub formed_before: bool,
    /// Ordinals that still have a PVC.
    pub pvcs: BTreeSet<u64>,
    /// Removed members' PVCs are deleted (reclaim policy `Delete`).
    pub reclaim_delete: bool,
    /// Where the partitions' replicas are, for a cluster of more than one.
    pub partitioned: Partitioned,
}

/// Whether the cluster has partitions, and how many replicas each member hosts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Partitioned {
    /// One partition: every member holds all the data in the cluster's group.
    #[default]
    No,
    /// Partitioned, but the placement could not be read this round.
    Unknown,
    /// Partition replicas per member, as the leader's `/v1/partitions` lists them.
    Hosting(BTreeMap<u64, usize>),
}

impl Partitioned {
    /// How many partition replicas member `id` holds (`None`: not known).
    pub fn replicas_on(&self, id: u64) -> Option<usize> {
        match self {
            Partitioned::No => Some(0),
            Partitioned::Unknown => None,
            Partitioned::Hosting(m) => Some(m.get(&id).copied().unwrap_or(0)),
        }
    }
}

/// The next step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Set the StatefulSet size.
    ScaleStatefulSet(u64),
    /// Initialize a one-voter cluster on this (empty) member.
    Bootstrap(u64),
    AddLearner(u64),
    Promote(u64),
    TransferLeader {
        from: u64,
        to: u64,
    },
    /// Make a voter a learner (it keeps its data and stays a member): kvserver's
    /// placement driver then moves its partition replicas off it.
    Demote(u64),
    /// Remove a voter (or learner) from the cluster; `replace` when it lost its data.
    RemoveMember {
        id: u64,
        replace: bool,
    },
    /// Delete the volume of a member that has left.
    ReclaimVolume(u64),
    /// Nothing to do yet; the reason is reported as Progressing.
    Wait(String),
    /// Refused for safety; reported as ScalingBlocked (no retry storm: requeue slowly).
    Blocked(String),
    /// Converged.
    Idle,
}

impl Step {
    /// The `status.operation.kind` this step belongs to, if any.
    pub fn operation_kind(&self, obs: &Observed) -> Option<&'static str> {
        let voters = obs
            .raft
            .as_ref()
            .map(|r| r.voters.len() as u64)
            .unwrap_or(0);
        match self {
            Step::Bootstrap(_) => Some("Bootstrap"),
            Step::RemoveMember { replace: true, .. } => Some("ReplaceMember"),
            Step::AddLearner(_) | Step::Promote(_) => Some("ScaleOut"),
            Step::TransferLeader { .. }
            | Step::Demote(_)
            | Step::RemoveMember { .. }
            | Step::ReclaimVolume(_) => Some("ScaleIn"),
            Step::ScaleStatefulSet(n) if *n > obs.sts_replicas => Some("ScaleOut"),
            Step::ScaleStatefulSet(_) if voters >= obs.desired => Some("ScaleIn"),
            _ => None,
        }
    }
}

/// Majority of `n` voters.
pub fn quorum(n: usize) -> usize {
    n / 2 + 1
}

fn healthy(obs: &Observed, id: u64) -> bool {
    let pod = obs.pods.get(&id);
    pod.is_some_and(|p| p.exists && p.serving && !p.uninitialized)
        && obs.raft.as_ref().is_some_and(|r| {
            r.lag.get(&id).copied().unwrap_or(u64::MAX) <= HEALTHY_LAG || r.leader == Some(id)
        })
}

fn serving_empty(obs: &Observed, id: u64) -> bool {
    obs.pods
        .get(&id)
        .is_some_and(|p| p.exists && p.serving && p.uninitialized)
}

/// Decides the next step. Pure: same input, same step.
pub fn plan(obs: &Observed) -> Step {
    let Some(raft) = &obs.raft else {
        return plan_unformed(obs);
    };
    if raft.joint {
        return Step::Wait("a membership change is still being committed".into());
    }
    let Some(leader) = raft.leader else {
        // Without a leader nothing can change. When too few voters even serve
        // for an election, a requested resize is refused (reported as such)
        // rather than silently waited on.
        let serving = raft
            .voters
            .iter()
            .filter(|id| {
                obs.pods
                    .get(id)
                    .is_some_and(|p| p.exists && p.serving && !p.uninitialized)
            })
            .count();
        if obs.desired != raft.voters.len() as u64 && serving < quorum(raft.voters.len()) {
            return Step::Blocked(format!(
                "the cluster has no leader: {serving} of {} voters serve (quorum {}); resizing to {} waits for a quorum",
                raft.voters.len(),
                quorum(raft.voters.len()),
                obs.desired
            ));
        }
        return Step::Wait("the cluster has no leader right now".into());
    };
    let healthy_voters: BTreeSet<u64> = raft
        .voters
        .iter()
        .copied()
        .filter(|id| healthy(obs, *id))
        .collect();

    // Members that came back with an empty volume: remove, then they rejoin as learners.
    for id in raft.voters.iter().chain(raft.learners.iter()).copied() {
        if serving_empty(obs, id) && id != leader {
            if raft.voters.contains(&id) {
                let remaining = raft.voters.len() - 1;
                if remaining == 0 || healthy_voters.len() < quorum(remaining) {
                    return Step::Blocked(format!(
                        "member {id} lost its data, but removing it would leave {} healthy of {remaining} voters (quorum {})",
                        healthy_voters.len(),
                        quorum(remaining)
                    ));
                }
            }
            return Step::RemoveMember { id, replace: true };
        }
    }

    let voters = raft.voters.len() as u64;
    if obs.desired > voters {
        return plan_scale_out(obs, raft, &healthy_voters);
    }
    if obs.desired < voters {
        return plan_scale_in(obs, raft, leader, &healthy_voters);
    }
    // Voter count is right. Learners that are not wanted as voters leave.
    if let Some(id) = raft
        .learners
        .iter()
        .rev()
        .copied()
        .find(|id| *id >= obs.desired)
    {
        return match obs.partitioned.replicas_on(id) {
            Some(0) => Step::RemoveMember { id, replace: false },
            Some(n) => Step::Wait(format!(
                "member {id} is being drained: {n} partition replicas are still on it"
            )),
            None => Step::Wait(format!(
                "member {id} leaves once it holds no partition replica; the placement is not known yet"
            )),
        };
    }
    // A learner below `desired` while a voter sits at or above it (e.g. after replacing
    // a member): promote when caught up, then the extra voter is scaled in above.
    if let Some(id) = raft.learners.iter().copied().next() {
        return promote_if_safe(obs, raft, id, &healthy_voters);
    }
    let top = raft
        .voters
        .iter()
        .copied()
        .max()
        .map(|m| m + 1)
        .unwrap_or(0);
    let want_sts = top.max(obs.desired);
    if obs.sts_replicas < want_sts {
        return Step::ScaleStatefulSet(want_sts);
    }
    if obs.sts_replicas > want_sts {
        // Pods above every member: nothing of the cluster lives there.
        return Step::ScaleStatefulSet(want_sts);
    }
    if obs.reclaim_delete
        && let Some(id) = obs
            .pvcs
            .iter()
            .copied()
            .find(|id| *id >= obs.sts_replicas && !obs.pods.get(id).is_some_and(|p| p.exists))
    {
        return Step::ReclaimVolume(id);
    }
    if healthy_voters.len() < raft.voters.len() {
        return Step::Wait(format!(
            "{} of {} voters healthy",
            healthy_voters.len(),
            raft.voters.len()
        ));
    }
    Step::Idle
}

fn plan_unformed(obs: &Observed) -> Step {
    if obs.formed_before {
        let all_empty =
            !obs.pods.is_empty() && (0..obs.sts_replicas).all(|id| serving_empty(obs, id));
        if all_empty {
            return Step::Blocked(
                "every member came back with an empty volume: the cluster's data is gone; refusing to bootstrap a new, empty cluster over it (restore the volumes, or delete and recreate the KVCluster)"
                    .into(),
            );
        }
        return Step::Wait("no member answers as part of the cluster yet".into());
    }
    if obs.sts_replicas == 0 {
        return Step::ScaleStatefulSet(1);
    }
    if serving_empty(obs, 0) {
        return Step::Bootstrap(0);
    }
    Step::Wait("waiting for pod 0 to serve".into())
}

fn plan_scale_out(obs: &Observed, raft: &RaftView, healthy_voters: &BTreeSet<u64>) -> Step {
    // Lowest ordinal that is not yet a voter.
    let Some(id) = (0..obs.desired).find(|id| !raft.voters.contains(id)) else {
        return Step::Wait("voter ids do not match ordinals".into());
    };
    if obs.sts_replicas < id + 1 {
        return Step::ScaleStatefulSet(id + 1);
    }
    if raft.learners.contains(&id) {
        return promote_if_safe(obs, raft, id, healthy_voters);
    }
    // An empty pod, or one holding data of an earlier membership (a retained
    // volume): both join as learners. A learner never votes; the leader finds
    // where the old log matches its own, replaces the rest, and the member is
    // promoted only once caught up.
    match obs.pods.get(&id) {
        Some(p) if p.exists && p.serving => Step::AddLearner(id),
        _ => Step::Wait(format!("waiting for pod {id} to start")),
    }
}

fn promote_if_safe(
    obs: &Observed,
    raft: &RaftView,
    id: u64,
    healthy_voters: &BTreeSet<u64>,
) -> Step {
    let lag = raft.lag.get(&id).copied().unwrap_or(u64::MAX);
    if lag > CATCH_UP_LAG || !obs.pods.get(&id).is_some_and(|p| p.serving) {
        return Step::Wait(format!(
            "learner {id} is catching up ({} entries behind)",
            if lag == u64::MAX {
                "?".to_string()
            } else {
                lag.to_string()
            }
        ));
    }
    let after = raft.voters.len() + 1;
    if healthy_voters.len() + 1 < quorum(after) {
        return Step::Blocked(format!(
            "promoting {id} would make {after} voters needing {} healthy, but only {} voters are healthy",
            quorum(after),
            healthy_voters.len() + 1
        ));
    }
    Step::Promote(id)
}

fn plan_scale_in(
    obs: &Observed,
    raft: &RaftView,
    leader: u64,
    healthy_voters: &BTreeSet<u64>,
) -> Step {
    let Some(victim) = raft.voters.iter().copied().max() else {
        return Step::Idle;
    };
    let remaining: BTreeSet<u64> = raft
        .voters
        .iter()
        .copied()
        .filter(|v| *v != victim)
        .collect();
    let healthy_after = remaining
        .iter()
        .filter(|v| healthy_voters.contains(v))
        .count();
    if remaining.is_empty() || healthy_after < quorum(remaining.len()) {
        return Step::Blocked(format!(
            "removing member {victim} would leave {healthy_after} healthy of {} voters (quorum {})",
            remaining.len(),
            quorum(remaining.len().max(1))
        ));
    }
    if leader == victim {
        let to = remaining
            .iter()
            .copied()
            .filter(|v| healthy_voters.contains(v))
            .min_by_key(|v| (raft.lag.get(v).copied().unwrap_or(u64::MAX), *v));
        return match to {
            Some(to) => Step::TransferLeader { from: victim, to },
            None => Step::Blocked("no healthy voter to take over leadership".into()),
        };
    }
    // A member holding partition replicas is drained first (as a learner it takes
    // none, and the placement driver moves its replicas to the voters).
    match obs.partitioned.replicas_on(victim) {
        Some(0) => Step::RemoveMember {
            id: victim,
            replace: false,
        },
        _ => Step::Demote(victim),
    }
}

#[cfg(test)]
mod tests;
