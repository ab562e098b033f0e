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
//!   then shrink the StatefulSet, then reclaim the volume per policy.
//! - Any step that would leave fewer healthy voters than a quorum is refused
//!   (`Blocked`), and so is bootstrapping a cluster that existed before.
//! - A member whose pod came back with an empty volume (it answers
//!   "uninitialized") is removed and re-added as a learner, never re-bootstrapped.
//!
//! Because the next step is derived from observed state only, an operator
//! restarted between any two steps resumes where the cluster is.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// A learner this close to the leader's log may be promoted.
pub const CATCH_UP_LAG: u64 = 100;

/// A voter this close to the leader's log counts as healthy. Looser than
/// [`CATCH_UP_LAG`]: under write load a connected follower is routinely some
/// entries behind, and counting it unhealthy would refuse safe steps.
pub const HEALTHY_LAG: u64 = 1000;

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
            Step::TransferLeader { .. } | Step::RemoveMember { .. } | Step::ReclaimVolume(_) => {
                Some("ScaleIn")
            }
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
        return Step::RemoveMember { id, replace: false };
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
    let _ = obs;
    Step::RemoveMember {
        id: victim,
        replace: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(serving: bool, uninitialized: bool) -> PodView {
        PodView {
            exists: true,
            serving,
            ready: serving && !uninitialized,
            uninitialized,
        }
    }

    /// A simulated cluster that applies the planner's steps, for multi-step scenarios.
    #[derive(Clone, Debug)]
    struct Sim {
        obs: Observed,
        /// Pods that never start (node down).
        dead: BTreeSet<u64>,
    }

    impl Sim {
        fn new(desired: u64) -> Self {
            Sim {
                obs: Observed {
                    desired,
                    reclaim_delete: true,
                    ..Default::default()
                },
                dead: BTreeSet::new(),
            }
        }

        /// The world reacts: StatefulSet pods appear/disappear, learners catch up.
        fn settle(&mut self) {
            let o = &mut self.obs;
            for id in 0..o.sts_replicas {
                if !o.pods.contains_key(&id) && !self.dead.contains(&id) {
                    let member = o
                        .raft
                        .as_ref()
                        .is_some_and(|r| r.voters.contains(&id) || r.learners.contains(&id));
                    o.pods.insert(id, pod(true, !member));
                    o.pvcs.insert(id);
                }
            }
            o.pods.retain(|id, _| *id < o.sts_replicas);
            if let Some(r) = &mut o.raft {
                for id in r.voters.iter().chain(r.learners.iter()) {
                    r.lag.insert(*id, 0);
                }
            }
        }

        fn apply(&mut self, step: &Step) {
            let o = &mut self.obs;
            match step {
                Step::ScaleStatefulSet(n) => o.sts_replicas = *n,
                Step::Bootstrap(id) => {
                    o.raft = Some(RaftView {
                        leader: Some(*id),
                        voters: [*id].into(),
                        ..Default::default()
                    });
                    o.formed_before = true;
                    if let Some(p) = o.pods.get_mut(id) {
                        p.uninitialized = false;
                    }
                }
                Step::AddLearner(id) => {
                    let r = o.raft.as_mut().expect("raft");
                    r.learners.insert(*id);
                    r.lag.insert(*id, 500);
                    if let Some(p) = o.pods.get_mut(id) {
                        p.uninitialized = false;
                    }
                }
                Step::Promote(id) => {
                    let r = o.raft.as_mut().expect("raft");
                    r.learners.remove(id);
                    r.voters.insert(*id);
                }
                Step::TransferLeader { to, .. } => {
                    o.raft.as_mut().expect("raft").leader = Some(*to)
                }
                Step::RemoveMember { id, .. } => {
                    let r = o.raft.as_mut().expect("raft");
                    r.voters.remove(id);
                    r.learners.remove(id);
                    r.lag.remove(id);
                }
                Step::ReclaimVolume(id) => {
                    o.pvcs.remove(id);
                }
                _ => {}
            }
        }

        /// Runs the planner until Idle/Blocked (or a step budget); returns the steps.
        fn run(&mut self) -> Vec<Step> {
            let mut steps = Vec::new();
            for _ in 0..100 {
                self.settle();
                let s = plan(&self.obs);
                if matches!(s, Step::Idle | Step::Blocked(_))
                    || (matches!(s, Step::Wait(_)) && steps.last() == Some(&s))
                {
                    steps.push(s);
                    break;
                }
                self.check_safety(&s);
                self.apply(&s);
                steps.push(s);
            }
            steps
        }

        /// No step may leave the cluster without a healthy quorum.
        fn check_safety(&self, s: &Step) {
            let Some(r) = &self.obs.raft else { return };
            let mut voters = r.voters.clone();
            match s {
                Step::RemoveMember { id, .. } => {
                    voters.remove(id);
                }
                Step::Promote(id) => {
                    voters.insert(*id);
                }
                _ => return,
            }
            let healthy = voters
                .iter()
                .filter(|v| {
                    self.obs
                        .pods
                        .get(v)
                        .is_some_and(|p| p.serving && !p.uninitialized)
                })
                .count();
            assert!(
                healthy >= quorum(voters.len()),
                "{s:?} would break quorum: {healthy}/{}",
                voters.len()
            );
        }

        fn voters(&self) -> Vec<u64> {
            self.obs
                .raft
                .as_ref()
                .map(|r| r.voters.iter().copied().collect())
                .unwrap_or_default()
        }
    }

    #[test]
    fn bootstrap_then_grow_to_three() {
        let mut sim = Sim::new(3);
        let steps = sim.run();
        assert_eq!(steps[0], Step::ScaleStatefulSet(1));
        assert_eq!(steps[1], Step::Bootstrap(0));
        assert!(steps.contains(&Step::AddLearner(1)) && steps.contains(&Step::Promote(2)));
        assert_eq!(steps.last(), Some(&Step::Idle));
        assert_eq!(sim.voters(), vec![0, 1, 2]);
        assert_eq!(sim.obs.sts_replicas, 3);
        // Learners are added only after the pod exists, and promoted only after catching up.
        let add1 = steps
            .iter()
            .position(|s| *s == Step::AddLearner(1))
            .expect("add");
        let scale2 = steps
            .iter()
            .position(|s| *s == Step::ScaleStatefulSet(2))
            .expect("scale");
        assert!(scale2 < add1);
    }

    #[test]
    fn one_three_five_three_one() {
        let mut sim = Sim::new(1);
        sim.run();
        assert_eq!(sim.voters(), vec![0]);
        for (size, want) in [
            (3, vec![0, 1, 2]),
            (5, vec![0, 1, 2, 3, 4]),
            (3, vec![0, 1, 2]),
            (1, vec![0]),
        ] {
            sim.obs.desired = size;
            let steps = sim.run();
            assert_eq!(steps.last(), Some(&Step::Idle), "to {size}: {steps:?}");
            assert_eq!(sim.voters(), want);
            assert_eq!(sim.obs.sts_replicas, size);
            assert!(
                sim.obs.pvcs.iter().all(|id| *id < size),
                "volumes of removed members reclaimed: {:?}",
                sim.obs.pvcs
            );
            if size < 5 {
                // Scale-in removes the member before its pod: never the other way round.
                let rm = steps
                    .iter()
                    .position(|s| matches!(s, Step::RemoveMember { .. }));
                let shrink = steps
                    .iter()
                    .position(|s| matches!(s, Step::ScaleStatefulSet(_)));
                if let (Some(rm), Some(shrink)) = (rm, shrink) {
                    assert!(rm < shrink, "{steps:?}");
                }
            }
        }
    }

    #[test]
    fn leadership_moves_off_a_leaving_node() {
        let mut sim = Sim::new(5);
        sim.run();
        sim.obs.raft.as_mut().expect("raft").leader = Some(4);
        sim.obs.desired = 4;
        sim.settle();
        assert!(matches!(
            plan(&sim.obs),
            Step::TransferLeader { from: 4, .. }
        ));
        let steps = sim.run();
        assert!(steps.contains(&Step::RemoveMember {
            id: 4,
            replace: false
        }));
        assert_ne!(sim.obs.raft.as_ref().and_then(|r| r.leader), Some(4));
    }

    #[test]
    fn unsafe_scale_in_is_refused() {
        let mut sim = Sim::new(3);
        sim.run();
        // Two pods down: going to 2 voters would leave 1 healthy of 2 (quorum 2).
        for id in [0, 1] {
            sim.obs.pods.get_mut(&id).expect("pod").serving = false;
        }
        sim.obs.raft.as_mut().expect("raft").leader = Some(2);
        sim.obs.desired = 2;
        match plan(&sim.obs) {
            Step::Blocked(reason) => assert!(reason.contains("quorum"), "{reason}"),
            other => panic!("expected Blocked, got {other:?}"),
        }
        // Promoting when voters are unhealthy is refused too.
        let mut sim = Sim::new(1);
        sim.run();
        sim.obs.desired = 2;
        sim.obs.sts_replicas = 2;
        sim.settle();
        sim.apply(&Step::AddLearner(1));
        sim.obs.raft.as_mut().expect("raft").lag.insert(1, 0);
        sim.obs.pods.get_mut(&0).expect("pod").serving = false;
        assert!(matches!(plan(&sim.obs), Step::Blocked(_)));
    }

    #[test]
    fn missing_pod_is_not_a_scale_in() {
        let mut sim = Sim::new(3);
        sim.run();
        sim.obs.pods.remove(&1);
        sim.dead.insert(1);
        for _ in 0..5 {
            let s = plan(&sim.obs);
            assert!(
                !matches!(s, Step::RemoveMember { .. } | Step::ScaleStatefulSet(_)),
                "{s:?}"
            );
            sim.apply(&s);
        }
        assert_eq!(sim.voters(), vec![0, 1, 2]);
    }

    #[test]
    fn member_with_an_empty_volume_is_replaced_not_rebootstrapped() {
        let mut sim = Sim::new(3);
        sim.run();
        // Pod 2 comes back with an empty volume.
        sim.obs.pods.insert(2, pod(true, true));
        sim.obs.raft.as_mut().expect("raft").lag.insert(2, u64::MAX);
        let s = plan(&sim.obs);
        assert_eq!(
            s,
            Step::RemoveMember {
                id: 2,
                replace: true
            }
        );
        let steps = sim.run();
        assert!(
            steps.contains(&Step::AddLearner(2)) && steps.contains(&Step::Promote(2)),
            "{steps:?}"
        );
        assert!(!steps.iter().any(|s| matches!(s, Step::Bootstrap(_))));
        assert_eq!(sim.voters(), vec![0, 1, 2]);
    }

    #[test]
    fn never_bootstraps_over_a_lost_cluster() {
        let mut sim = Sim::new(3);
        sim.run();
        // Every volume lost: all pods serve, all uninitialized, no Raft view.
        sim.obs.raft = None;
        for p in sim.obs.pods.values_mut() {
            p.uninitialized = true;
        }
        assert!(matches!(plan(&sim.obs), Step::Blocked(r) if r.contains("empty volume")));
        // Merely unreachable (pods restarting): wait.
        for p in sim.obs.pods.values_mut() {
            p.serving = false;
        }
        assert!(matches!(plan(&sim.obs), Step::Wait(_)));
    }

    #[test]
    fn restarted_operator_resumes_from_any_point() {
        // Run 1 → 5 → 2, and at every intermediate state check that a fresh planner
        // (a restarted operator) continues to the same end state.
        let mut sim = Sim::new(1);
        sim.run();
        for target in [5, 2] {
            sim.obs.desired = target;
            loop {
                sim.settle();
                let s = plan(&sim.obs);
                let mut fresh = sim.clone();
                let steps = fresh.run();
                assert_eq!(steps.last(), Some(&Step::Idle), "resume from {s:?}");
                assert_eq!(fresh.voters(), (0..target).collect::<Vec<_>>());
                if s == Step::Idle {
                    break;
                }
                sim.apply(&s);
            }
        }
    }

    #[test]
    fn retained_volume_rejoins_as_a_learner() {
        let mut sim = Sim::new(3);
        sim.run();
        sim.obs.desired = 4;
        sim.obs.sts_replicas = 4;
        // Pod 3 comes up with data of an old membership (not empty, not a member).
        sim.obs.pods.insert(3, pod(true, false));
        assert_eq!(plan(&sim.obs), Step::AddLearner(3));
    }

    #[test]
    fn resize_without_quorum_is_refused_not_waited_on() {
        let mut sim = Sim::new(3);
        sim.run();
        sim.obs.raft.as_mut().expect("raft").leader = None;
        sim.obs.pods.get_mut(&1).expect("pod").serving = false;
        sim.obs.pods.get_mut(&2).expect("pod").exists = false;
        sim.obs.desired = 1;
        assert!(matches!(plan(&sim.obs), Step::Blocked(r) if r.contains("no leader")));
        // No resize asked for: just wait for the election.
        sim.obs.desired = 3;
        assert!(matches!(plan(&sim.obs), Step::Wait(_)));
    }

    #[test]
    fn joint_config_and_no_leader_wait() {
        let mut sim = Sim::new(3);
        sim.run();
        sim.obs.raft.as_mut().expect("raft").joint = true;
        assert!(matches!(plan(&sim.obs), Step::Wait(_)));
        sim.obs.raft.as_mut().expect("raft").joint = false;
        sim.obs.raft.as_mut().expect("raft").leader = None;
        assert!(matches!(plan(&sim.obs), Step::Wait(_)));
    }
}
