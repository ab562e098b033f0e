//! Status: conditions, members and the operation in flight, computed purely
//! from what was observed and planned.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use super::observe::Seen;
use crate::build;
use crate::crd::KVCluster;
use crate::crd::KVClusterStatus;
use crate::crd::MemberStatus;
use crate::crd::MembershipOperation;
use crate::membership;
use crate::membership::Step;

fn condition(
    old: &[Condition],
    type_: &str,
    ok: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) -> Condition {
    let status = if ok { "True" } else { "False" };
    let prev = old.iter().find(|c| c.type_ == type_);
    let since = match prev {
        Some(p) if p.status == status => p.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        message: message.chars().take(1000).collect(),
        last_transition_time: since,
        observed_generation: generation,
    }
}

pub(super) fn status_of(
    kvc: &KVCluster,
    seen: &Seen,
    step: &Step,
    pdb_problem: Option<&str>,
) -> KVClusterStatus {
    let old = kvc.status.clone().unwrap_or_default();
    let gen_ = kvc.metadata.generation;
    let raft = seen.obs.raft.as_ref();
    let voters: BTreeSet<u64> = raft.map(|r| r.voters.clone()).unwrap_or_default();
    let ready_voters = voters
        .iter()
        .filter(|v| seen.obs.pods.get(v).is_some_and(|p| p.ready))
        .count();
    let available = raft.is_some_and(|r| r.leader.is_some())
        && ready_voters >= membership::quorum(voters.len().max(1));
    let members = seen
        .info
        .as_ref()
        .map(|i| {
            i.members
                .iter()
                .map(|m| MemberStatus {
                    id: m.id as i64,
                    role: m.role.clone(),
                    ready: seen.obs.pods.get(&m.id).is_some_and(|p| p.ready),
                    lag: m.lag.map(|l| l as i64),
                })
                .collect()
        })
        .unwrap_or(old.members.clone());
    let in_flight = !matches!(step, Step::Idle | Step::Blocked(_));
    let phase = match step {
        Step::Blocked(_) => "Blocked",
        _ if raft.is_none() => "Bootstrapping",
        _ if in_flight
            && (seen.obs.desired != voters.len() as u64 || !matches!(step, Step::Wait(_))) =>
        {
            "Scaling"
        }
        _ if !available || ready_voters < voters.len() => "Degraded",
        _ => "Running",
    };
    let operation = step.operation_kind(&seen.obs).map(|kind| {
        let (node, step_name) = match step {
            Step::Bootstrap(i) => (*i, "Bootstrap"),
            Step::AddLearner(i) => (*i, "AddLearner"),
            Step::Promote(i) => (*i, "Promote"),
            Step::TransferLeader { from, .. } => (*from, "TransferLeader"),
            Step::Demote(i) => (*i, "Demote"),
            Step::RemoveMember { id, .. } => (*id, "RemoveVoter"),
            Step::ReclaimVolume(i) => (*i, "ReclaimVolume"),
            Step::ScaleStatefulSet(n) => (n.saturating_sub(1), "ScaleStatefulSet"),
            _ => (0, "Wait"),
        };
        let started_at = old
            .operation
            .as_ref()
            .filter(|o| o.kind == kind && o.node_id == node as i64)
            .and_then(|o| o.started_at.clone());
        MembershipOperation {
            kind: kind.into(),
            node_id: node as i64,
            step: step_name.into(),
            started_at: started_at.or(Some(Timestamp::now().to_string())),
        }
    });
    let blocked_reason = match step {
        Step::Blocked(r) => r.clone(),
        _ => String::new(),
    };
    let progress_msg = match step {
        Step::Wait(r) => r.clone(),
        Step::Idle => "converged".into(),
        other => format!("{other:?}"),
    };
    let partitions = seen
        .partitions
        .as_ref()
        .filter(|p| crate::partitions::is_partitioned(p))
        .map(crate::partitions::status_of);
    let fixed_problem = seen
        .partitions
        .as_ref()
        .and_then(|p| crate::partitions::fixed_count_problem(kvc.spec.partitions, p));
    let degraded_problem = pdb_problem.map(str::to_string).or(fixed_problem.clone());
    let mut conditions = vec![
        condition(
            &old.conditions,
            "Available",
            available,
            if available {
                "QuorumHealthy"
            } else {
                "NoQuorum"
            },
            &format!(
                "{ready_voters} of {} voters ready, leader {:?}",
                voters.len(),
                raft.and_then(|r| r.leader)
            ),
            gen_,
        ),
        condition(
            &old.conditions,
            "Progressing",
            in_flight,
            if in_flight {
                "MembershipChanging"
            } else {
                "Converged"
            },
            &progress_msg,
            gen_,
        ),
        condition(
            &old.conditions,
            "Degraded",
            ready_voters < voters.len() || degraded_problem.is_some(),
            if pdb_problem.is_some() {
                "PodDisruptionBudgetUnavailable"
            } else if fixed_problem.is_some() {
                "PartitionsFixed"
            } else if ready_voters < voters.len() {
                "MembersNotReady"
            } else {
                "AllReady"
            },
            &degraded_problem
                .unwrap_or_else(|| format!("{ready_voters} of {} voters ready", voters.len())),
            gen_,
        ),
        condition(
            &old.conditions,
            "ScalingBlocked",
            !blocked_reason.is_empty(),
            if blocked_reason.is_empty() {
                "NotBlocked"
            } else {
                "WouldLoseQuorumOrData"
            },
            // Never an empty message: some API servers (1.20) read "" as null here.
            if blocked_reason.is_empty() {
                "no membership step is refused"
            } else {
                &blocked_reason
            },
            gen_,
        ),
    ];
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    if let Some((failing, reason, message)) =
        crate::backup::health::backup_failing(kvc.spec.backup.as_ref(), old.backup.as_ref(), now_ms)
    {
        conditions.push(condition(
            &old.conditions,
            "BackupFailing",
            failing,
            reason,
            &message,
            gen_,
        ));
    }
    if let Some(p) = &partitions {
        let (moving, reason, message) = crate::partitions::rebalancing(p);
        conditions.push(condition(
            &old.conditions,
            "Rebalancing",
            moving,
            reason,
            &message,
            gen_,
        ));
    }
    conditions.sort_by(|a, b| a.type_.cmp(&b.type_));
    KVClusterStatus {
        observed_generation: gen_,
        phase: Some(phase.into()),
        replicas: voters.len() as i32,
        ready_replicas: ready_voters as i32,
        leader: raft.and_then(|r| r.leader).map(|l| l as i64),
        term: seen.info.as_ref().map(|i| i.term as i64),
        selector: Some(build::selector_string(kvc)),
        members,
        operation,
        conditions,
        // Written by the backup agent under its own field manager, never here.
        backup: None,
        restore: old.restore.clone(),
        recovery: old.recovery.clone(),
        // Kept while the members cannot be asked, like `members`.
        partitions: partitions.or(old.partitions.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::KVClusterSpec;
    use crate::membership::Observed;
    use crate::membership::PodView;
    use crate::membership::RaftView;
    use std::collections::BTreeMap;

    fn kvc() -> KVCluster {
        let mut k = KVCluster::new(
            "orders",
            KVClusterSpec {
                ..serde_yaml::from_str("{}").expect("spec")
            },
        );
        k.metadata.namespace = Some("shop".into());
        k.metadata.uid = Some("0123456789".into());
        k.metadata.generation = Some(4);
        k
    }

    fn seen(voters: &[u64], ready: &[u64], leader: Option<u64>) -> Seen {
        let mut obs = Observed {
            desired: 3,
            sts_replicas: 3,
            ..Default::default()
        };
        for id in 0..3 {
            obs.pods.insert(
                id,
                PodView {
                    exists: true,
                    serving: true,
                    ready: ready.contains(&id),
                    uninitialized: false,
                },
            );
        }
        obs.raft = Some(RaftView {
            leader,
            voters: voters.iter().copied().collect(),
            ..Default::default()
        });
        Seen {
            obs,
            urls: BTreeMap::new(),
            resolve: Vec::new(),
            tls: None,
            token: None,
            info: None,
            partitions: None,
            sts_exists: true,
            volumes: Vec::new(),
        }
    }

    fn cond<'a>(s: &'a KVClusterStatus, t: &str) -> &'a Condition {
        s.conditions
            .iter()
            .find(|c| c.type_ == t)
            .expect("condition")
    }

    #[test]
    fn status_running_degraded_blocked() {
        let k = kvc();
        let s = status_of(
            &k,
            &seen(&[0, 1, 2], &[0, 1, 2], Some(0)),
            &Step::Idle,
            None,
        );
        assert_eq!(s.phase.as_deref(), Some("Running"));
        // 1.20 API servers read an empty string as null and refuse the status.
        assert!(s.conditions.iter().all(|c| !c.message.is_empty()), "{s:?}");
        assert_eq!(
            (
                s.replicas,
                s.ready_replicas,
                s.leader,
                s.observed_generation
            ),
            (3, 3, Some(0), Some(4))
        );
        assert_eq!(cond(&s, "Available").status, "True");
        assert_eq!(cond(&s, "ScalingBlocked").status, "False");
        assert_eq!(
            s.selector.as_deref(),
            Some("app.kubernetes.io/instance=orders,app.kubernetes.io/name=kvserver")
        );

        let s = status_of(
            &k,
            &seen(&[0, 1, 2], &[0, 1], Some(0)),
            &Step::Wait("1 not ready".into()),
            None,
        );
        assert_eq!(s.phase.as_deref(), Some("Degraded"));
        assert_eq!(cond(&s, "Degraded").status, "True");
        assert_eq!(
            cond(&s, "Available").status,
            "True",
            "2 of 3 is still a quorum"
        );

        let s = status_of(
            &k,
            &seen(&[0, 1, 2], &[0], Some(0)),
            &Step::Blocked("would lose quorum".into()),
            None,
        );
        assert_eq!(s.phase.as_deref(), Some("Blocked"));
        assert_eq!(cond(&s, "ScalingBlocked").status, "True");
        assert_eq!(cond(&s, "ScalingBlocked").message, "would lose quorum");
        assert_eq!(cond(&s, "Available").status, "False");

        let s = status_of(
            &k,
            &seen(&[0, 1, 2], &[0, 1, 2], Some(0)),
            &Step::Idle,
            Some("no PDB API"),
        );
        assert_eq!(
            cond(&s, "Degraded").reason,
            "PodDisruptionBudgetUnavailable"
        );
    }

    #[test]
    fn operation_in_flight_is_recorded_and_keeps_its_start() {
        let mut k = kvc();
        let mut sn = seen(&[0, 1], &[0, 1], Some(0));
        sn.obs.desired = 3;
        let s = status_of(&k, &sn, &Step::AddLearner(2), None);
        let op = s.operation.clone().expect("operation");
        assert_eq!(
            (op.kind.as_str(), op.node_id, op.step.as_str()),
            ("ScaleOut", 2, "AddLearner")
        );
        assert_eq!(s.phase.as_deref(), Some("Scaling"));
        assert_eq!(cond(&s, "Progressing").status, "True");
        // The next pass of the same operation keeps started_at; the transition time of an
        // unchanged condition is kept too.
        k.status = Some(s.clone());
        let s2 = status_of(&k, &sn, &Step::Promote(2), None);
        assert_eq!(
            s2.operation.as_ref().and_then(|o| o.started_at.clone()),
            op.started_at
        );
        assert_eq!(
            cond(&s2, "Progressing").last_transition_time,
            cond(&s, "Progressing").last_transition_time
        );
        let s3 = status_of(
            &k,
            &seen(&[0, 1, 2], &[0, 1, 2], Some(0)),
            &Step::Idle,
            None,
        );
        assert!(s3.operation.is_none());
    }
}
