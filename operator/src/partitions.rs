//! `spec.partitions` in the operator. kvserver places, moves and rebalances the
//! partitions itself (its placement driver, docs/partitions.md); the operator's
//! part is the pods: it configures every member with the partition count and
//! replication factor, demotes a pod to a learner before scale-in removes it and
//! waits until it holds no replica (`crate::membership`), and reports what the
//! members report: replicas and leaderships per pod, moves in flight, a
//! `Rebalancing` condition, and an Event whenever replicas move between pods.

use std::collections::BTreeMap;

use kvserver::model::PartitionsInfo;
use schemars::JsonSchema;
use serde::Deserialize;
use serde::Serialize;

/// The partitions as the members report them.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PartitionsStatus {
    /// Partitions the cluster has (fixed when it was created).
    pub count: i32,
    /// Replicas of each partition.
    pub replication_factor: i32,
    /// The placement map's epoch: it grows with every placement change.
    pub epoch: i64,
    /// Partitions whose Raft group is not formed yet.
    #[serde(default)]
    pub forming: i32,
    /// Partitions with a replica being added or removed (a learner catching up,
    /// or hosts that differ from the group's voters).
    #[serde(default)]
    pub moves_in_flight: i32,
    /// Partitions without a known leader.
    #[serde(default)]
    pub leaderless: i32,
    /// Replicas and leaderships per pod, by node id (pod ordinal).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pods: Vec<PodPartitions>,
}

/// What one pod holds.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodPartitions {
    /// Node id (= pod ordinal).
    pub id: i64,
    /// Partition replicas it hosts.
    pub replicas: i32,
    /// Partitions it leads.
    pub leaders: i32,
}

/// Whether `info` describes a partitioned cluster (a cluster of one partition has
/// no placement map).
pub fn is_partitioned(info: &PartitionsInfo) -> bool {
    info.epoch > 0
}

/// Partition replicas per member.
pub fn hosting(info: &PartitionsInfo) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for item in &info.items {
        for n in &item.nodes {
            *out.entry(*n).or_default() += 1;
        }
    }
    out
}

/// The status of a partitioned cluster from a member's `/v1/partitions`.
pub fn status_of(info: &PartitionsInfo) -> PartitionsStatus {
    let mut pods: BTreeMap<u64, PodPartitions> = BTreeMap::new();
    let mut moving = 0;
    let mut forming = 0;
    let mut leaderless = 0;
    for item in &info.items {
        for n in &item.nodes {
            pods.entry(*n)
                .or_insert_with(|| PodPartitions {
                    id: *n as i64,
                    ..Default::default()
                })
                .replicas += 1;
        }
        match item.leader_id {
            Some(l) => {
                pods.entry(l)
                    .or_insert_with(|| PodPartitions {
                        id: l as i64,
                        ..Default::default()
                    })
                    .leaders += 1
            }
            None => leaderless += 1,
        }
        if !item.formed {
            forming += 1;
        } else {
            let mut hosts = item.nodes.clone();
            let mut voters = item.voters.clone();
            hosts.sort_unstable();
            voters.sort_unstable();
            if !item.learners.is_empty() || hosts != voters {
                moving += 1;
            }
        }
    }
    PartitionsStatus {
        count: info.partitions as i32,
        replication_factor: info.replication_factor as i32,
        epoch: info.epoch as i64,
        forming,
        moves_in_flight: moving,
        leaderless,
        pods: pods.into_values().collect(),
    }
}

/// The `Rebalancing` condition: (true, reason, message).
pub fn rebalancing(s: &PartitionsStatus) -> (bool, &'static str, String) {
    if s.forming > 0 {
        return (
            true,
            "Forming",
            format!("{} of {} partitions are being formed", s.forming, s.count),
        );
    }
    if s.moves_in_flight > 0 {
        return (
            true,
            "MovingReplicas",
            format!(
                "{} of {} partitions are moving a replica",
                s.moves_in_flight, s.count
            ),
        );
    }
    (
        false,
        "Balanced",
        format!(
            "{} partitions of {} replicas in place (epoch {})",
            s.count, s.replication_factor, s.epoch
        ),
    )
}

/// An Event when replicas moved between pods since `old`: (reason, note).
pub fn moved(old: Option<&PartitionsStatus>, new: &PartitionsStatus) -> Option<(String, String)> {
    let old = old?;
    let per_pod = |s: &PartitionsStatus| -> BTreeMap<i64, i32> {
        s.pods.iter().map(|p| (p.id, p.replicas)).collect()
    };
    let (before, after) = (per_pod(old), per_pod(new));
    if before == after {
        return None;
    }
    let mut ids: Vec<i64> = before.keys().chain(after.keys()).copied().collect();
    ids.sort_unstable();
    ids.dedup();
    let changes: Vec<String> = ids
        .into_iter()
        .filter_map(|id| {
            let (b, a) = (
                before.get(&id).copied().unwrap_or(0),
                after.get(&id).copied().unwrap_or(0),
            );
            (a != b).then(|| format!("pod {id}: {b} → {a}"))
        })
        .collect();
    Some((
        "ReplicasMoved".into(),
        format!(
            "partition replicas per pod changed (epoch {} → {}): {}",
            old.epoch,
            new.epoch,
            changes.join(", ")
        ),
    ))
}

/// Each partition's replicas (pods), as observed: what [`moves`] compares.
pub type Placement = BTreeMap<u32, Vec<u64>>;

/// The placement `info` shows.
pub fn placement_of(info: &PartitionsInfo) -> Placement {
    info.items
        .iter()
        .map(|i| {
            let mut nodes = i.nodes.clone();
            nodes.sort_unstable();
            (i.partition, nodes)
        })
        .collect()
}

/// At most this many move Events per observation; more are summed up in one.
pub const MAX_MOVE_EVENTS: usize = 16;

/// One Event note per partition whose replicas changed pods between two
/// observations ("partition 7: pod 5 added, pod 2 removed"), in partition
/// order; past [`MAX_MOVE_EVENTS`], the rest in one note. kvserver makes the
/// moves itself, learner first; the operator reports what it saw change.
pub fn moves(old: &Placement, new: &Placement) -> Vec<String> {
    let mut notes: Vec<String> = Vec::new();
    let mut more = Vec::new();
    for (p, after) in new {
        let Some(before) = old.get(p) else { continue };
        let added: Vec<u64> = after
            .iter()
            .copied()
            .filter(|n| !before.contains(n))
            .collect();
        let removed: Vec<u64> = before
            .iter()
            .copied()
            .filter(|n| !after.contains(n))
            .collect();
        if added.is_empty() && removed.is_empty() {
            continue;
        }
        if notes.len() + 1 >= MAX_MOVE_EVENTS {
            more.push(*p);
            continue;
        }
        let list = |v: &[u64]| {
            v.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut parts = Vec::new();
        if !added.is_empty() {
            parts.push(format!("pod {} added", list(&added)));
        }
        if !removed.is_empty() {
            parts.push(format!("pod {} removed", list(&removed)));
        }
        notes.push(format!(
            "partition {p}: {} (replicas now on pods {})",
            parts.join(", "),
            list(after)
        ));
    }
    if !more.is_empty() {
        notes.push(format!(
            "{} more partitions moved replicas: {more:?}",
            more.len()
        ));
    }
    notes
}

/// Why the spec's partition count cannot hold for this cluster, if it cannot.
pub fn fixed_count_problem(spec_partitions: i32, info: &PartitionsInfo) -> Option<String> {
    let has = if is_partitioned(info) {
        info.partitions as i32
    } else {
        1
    };
    (spec_partitions != has).then(|| {
        format!(
            "spec.partitions is {spec_partitions}, but this cluster was created with {has} partition(s); the count is fixed for a cluster's life (create a new KVCluster and restore a backup into it to change it)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvserver::model::PartitionInfo;

    fn item(
        p: u32,
        nodes: &[u64],
        voters: &[u64],
        learners: &[u64],
        leader: Option<u64>,
    ) -> PartitionInfo {
        PartitionInfo {
            partition: p,
            group: u64::from(p) + 1,
            hash_first: String::new(),
            hash_last: String::new(),
            nodes: nodes.to_vec(),
            leader_id: leader,
            voters: voters.to_vec(),
            learners: learners.to_vec(),
            formed: true,
            revision: Some(1),
            keys: Some(10),
            bytes: Some(100),
        }
    }

    fn info(items: Vec<PartitionInfo>) -> PartitionsInfo {
        PartitionsInfo {
            node_id: 0,
            epoch: 7,
            partitions: items.len() as u32,
            replication_factor: 3,
            items,
        }
    }

    #[test]
    fn status_counts_replicas_leaders_and_moves() {
        let i = info(vec![
            item(0, &[0, 1, 2], &[0, 1, 2], &[], Some(0)),
            item(1, &[1, 2, 3], &[1, 2], &[3], Some(1)),
            item(2, &[2, 0, 3], &[2, 0, 3], &[], None),
        ]);
        let s = status_of(&i);
        assert_eq!(
            (s.count, s.moves_in_flight, s.leaderless, s.forming),
            (3, 1, 1, 0)
        );
        let by: BTreeMap<i64, (i32, i32)> = s
            .pods
            .iter()
            .map(|p| (p.id, (p.replicas, p.leaders)))
            .collect();
        assert_eq!(by[&0], (2, 1));
        assert_eq!(by[&2], (3, 0));
        assert_eq!(by[&3], (2, 0));
        assert_eq!(hosting(&i)[&2], 3);
        assert!(rebalancing(&s).0);
        let settled = status_of(&info(vec![item(0, &[0, 1, 2], &[0, 1, 2], &[], Some(0))]));
        assert_eq!(rebalancing(&settled).1, "Balanced");
    }

    #[test]
    fn an_event_names_the_pods_whose_replicas_changed() {
        let a = status_of(&info(vec![item(0, &[0, 1, 2], &[0, 1, 2], &[], Some(0))]));
        let b = status_of(&info(vec![item(0, &[0, 1, 3], &[0, 1, 3], &[], Some(0))]));
        assert_eq!(moved(Some(&a), &a), None);
        assert_eq!(moved(None, &b), None);
        let (reason, note) = moved(Some(&a), &b).expect("an event");
        assert_eq!(reason, "ReplicasMoved");
        assert!(
            note.contains("pod 2: 1 → 0") && note.contains("pod 3: 0 → 1"),
            "{note}"
        );
    }

    #[test]
    fn each_partition_that_moved_gets_an_event() {
        let old = placement_of(&info(vec![
            item(0, &[0, 1, 2], &[0, 1, 2], &[], Some(0)),
            item(1, &[0, 1, 2], &[0, 1, 2], &[], Some(1)),
        ]));
        let new = placement_of(&info(vec![
            item(0, &[0, 1, 2], &[0, 1, 2], &[], Some(0)),
            item(1, &[0, 1, 5], &[0, 1, 5], &[], Some(1)),
        ]));
        assert!(moves(&old, &old).is_empty());
        assert_eq!(
            moves(&old, &new),
            vec!["partition 1: pod 5 added, pod 2 removed (replicas now on pods 0, 1, 5)"]
        );
        // A learner being added shows as added; many moves are capped.
        let wide_old: Placement = (0..40).map(|p| (p, vec![0, 1, 2])).collect();
        let wide_new: Placement = (0..40).map(|p| (p, vec![0, 1, 2, 3])).collect();
        let notes = moves(&wide_old, &wide_new);
        assert_eq!(notes.len(), MAX_MOVE_EVENTS);
        assert!(
            notes[0].starts_with("partition 0: pod 3 added"),
            "{notes:?}"
        );
        assert!(
            notes[MAX_MOVE_EVENTS - 1].starts_with("25 more partitions"),
            "{notes:?}"
        );
    }

    #[test]
    fn the_partition_count_is_fixed() {
        let i = info(vec![item(0, &[0, 1, 2], &[0, 1, 2], &[], Some(0))]);
        assert_eq!(fixed_count_problem(1, &i), None);
        assert!(fixed_count_problem(16, &i).is_some_and(|m| m.contains("created with 1")));
        let one = PartitionsInfo { epoch: 0, ..i };
        assert_eq!(fixed_count_problem(1, &one), None);
        assert!(fixed_count_problem(8, &one).is_some());
    }
}
