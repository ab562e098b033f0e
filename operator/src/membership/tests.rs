//! Tests of the planner: hand-written scenarios and property tests against
//! simulated clusters.

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
            // kvserver's placement driver: voters take replicas, learners are drained.
            if let Partitioned::Hosting(h) = &mut o.partitioned {
                h.retain(|id, _| r.voters.contains(id) || r.learners.contains(id));
                for id in &r.voters {
                    let n = h.entry(*id).or_default();
                    *n = (*n).max(3);
                }
                for id in &r.learners {
                    h.insert(*id, 0);
                }
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
            Step::TransferLeader { to, .. } => o.raft.as_mut().expect("raft").leader = Some(*to),
            Step::Demote(id) => {
                let r = o.raft.as_mut().expect("raft");
                assert_ne!(r.leader, Some(*id), "the leader is never demoted");
                r.voters.remove(id);
                r.learners.insert(*id);
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
            Step::RemoveMember { id, replace } => {
                if !replace {
                    assert_eq!(
                        self.obs.partitioned.replicas_on(*id),
                        Some(0),
                        "member {id} removed while it holds partition replicas"
                    );
                }
                voters.remove(id);
            }
            Step::Demote(id) => {
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

#[test]
fn a_partitioned_member_is_drained_before_it_is_removed() {
    for (from, to) in [(5u64, 3u64), (7, 5), (3, 1)] {
        let mut sim = Sim::new(from);
        sim.obs.partitioned = Partitioned::Hosting(BTreeMap::new());
        sim.run();
        assert_eq!(sim.voters(), (0..from).collect::<Vec<_>>());
        sim.obs.desired = to;
        let steps = sim.run();
        assert_eq!(steps.last(), Some(&Step::Idle), "{from} to {to}: {steps:?}");
        assert_eq!(sim.voters(), (0..to).collect::<Vec<_>>());
        for id in to..from {
            let demoted = steps.iter().position(|s| *s == Step::Demote(id));
            let removed = steps
                .iter()
                .position(|s| *s == Step::RemoveMember { id, replace: false });
            assert!(
                matches!((demoted, removed), (Some(d), Some(r)) if d < r),
                "member {id}: demoted, then removed: {steps:?}"
            );
        }
    }
}

#[test]
fn a_member_still_holding_replicas_or_an_unknown_placement_waits() {
    let mut sim = Sim::new(3);
    sim.run();
    let r = sim.obs.raft.as_mut().expect("raft");
    r.voters.remove(&2);
    r.learners.insert(2);
    sim.obs.desired = 2;
    sim.obs.partitioned = Partitioned::Hosting(BTreeMap::from([(0, 4), (1, 4), (2, 2)]));
    assert!(matches!(plan(&sim.obs), Step::Wait(w) if w.contains("drained")));
    sim.obs.partitioned = Partitioned::Unknown;
    assert!(matches!(plan(&sim.obs), Step::Wait(w) if w.contains("not known")));
    sim.obs.partitioned = Partitioned::Hosting(BTreeMap::from([(0, 5), (1, 5)]));
    assert_eq!(
        plan(&sim.obs),
        Step::RemoveMember {
            id: 2,
            replace: false
        }
    );
    // Unpartitioned: removed directly, as before.
    sim.obs.partitioned = Partitioned::No;
    assert_eq!(
        plan(&sim.obs),
        Step::RemoveMember {
            id: 2,
            replace: false
        }
    );
}
