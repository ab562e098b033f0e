//! The placement map: the cluster's record of which pods host each partition's
//! replicas. It is replicated state of the cluster's own Raft group (group 0,
//! `crate::group`), changed only by the placement driver on that group's leader
//! with a compare-and-set on its epoch, so every node reads the same map at the
//! same log position and no two drivers (an old leader and a new one) can both
//! change it. Each node opens the groups the map assigns it; a request routed
//! with a map older than the serving node's is answered with the newer epoch
//! instead of being served against the wrong partition layout.
//!
//! The map says who must *host* a group, not who votes in it: a group's voters
//! and learners are its own Raft membership. A host listed here that is not yet
//! a member is a copy in progress (the driver opens the group there, then adds
//! it as a learner).

use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use super::NodeId;
use super::PartitionId;

/// Largest partition count a cluster may have (the planner is tested up to it).
pub const MAX_PARTITIONS: u32 = 1024;

/// The placement of every partition, at one epoch.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PlacementMap {
    /// Bumped by every change; 0: no map yet (a cluster of one partition never has one).
    pub epoch: u64,
    /// Fixed for the cluster's life: keys map to partitions by it (`super::hash`).
    pub partitions: u32,
    /// Replicas each partition keeps.
    pub replication_factor: u32,
    /// Per partition, in partition order.
    pub assigned: Vec<Assignment>,
}

/// Where one partition lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    /// The pods that host (or are about to host) a replica. Before the group is
    /// formed, the first one forms it and leads it first.
    pub hosts: Vec<NodeId>,
    /// Whether the group was formed: from then on no node forms it again, so a
    /// former that lost its disk cannot start a second history.
    pub formed: bool,
}

/// Why a map was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapError {
    #[error("partitions must be 1..={MAX_PARTITIONS}, got {0}")]
    Partitions(u32),
    #[error("replication factor must be at least 1, got {0}")]
    ReplicationFactor(u32),
    #[error("the map assigns {got} partitions but the cluster has {want}")]
    Assigned { want: u32, got: usize },
    #[error("partition {0} is hosted twice by node {1}")]
    TwiceOnOne(PartitionId, NodeId),
    #[error("partition {0} has no host")]
    Unhosted(PartitionId),
    #[error("the epoch must grow: {have} is current, the new map says {got}")]
    Epoch { have: u64, got: u64 },
    #[error("the partition count is fixed for the cluster's life: {have}, the new map says {got}")]
    Repartitioned { have: u32, got: u32 },
}

impl PlacementMap {
    /// The first map of a cluster: `partitions` partitions of `rf` replicas each
    /// over `nodes`, balanced (`super::initial`), none formed yet.
    pub fn initial(nodes: &BTreeSet<NodeId>, partitions: u32, rf: u32) -> PlacementMap {
        let assigned = super::initial(nodes, partitions, rf as usize)
            .into_iter()
            .map(|hosts| Assignment {
                hosts,
                formed: false,
            })
            .collect();
        PlacementMap {
            epoch: 1,
            partitions,
            replication_factor: rf,
            assigned,
        }
    }

    /// The partitions node `node` hosts, ascending.
    pub fn hosted_by(&self, node: NodeId) -> Vec<PartitionId> {
        self.assigned
            .iter()
            .enumerate()
            .filter(|(_, a)| a.hosts.contains(&node))
            .map(|(p, _)| p as PartitionId)
            .collect()
    }

    /// The assignment of `partition`, if the map has it.
    pub fn of(&self, partition: PartitionId) -> Option<&Assignment> {
        self.assigned.get(partition as usize)
    }

    /// Whether the map is well formed on its own.
    pub fn check(&self) -> Result<(), MapError> {
        if self.partitions == 0 || self.partitions > MAX_PARTITIONS {
            return Err(MapError::Partitions(self.partitions));
        }
        if self.replication_factor == 0 {
            return Err(MapError::ReplicationFactor(self.replication_factor));
        }
        if self.assigned.len() != self.partitions as usize {
            return Err(MapError::Assigned {
                want: self.partitions,
                got: self.assigned.len(),
            });
        }
        for (p, a) in self.assigned.iter().enumerate() {
            let p = p as PartitionId;
            if a.hosts.is_empty() {
                return Err(MapError::Unhosted(p));
            }
            let mut seen = BTreeSet::new();
            if let Some(n) = a.hosts.iter().find(|n| !seen.insert(**n)) {
                return Err(MapError::TwiceOnOne(p, *n));
            }
        }
        Ok(())
    }

    /// Whether `next` may replace this map: well formed, a later epoch, and the
    /// same partition count once there is a map.
    pub fn check_successor(&self, next: &PlacementMap) -> Result<(), MapError> {
        next.check()?;
        if next.epoch <= self.epoch {
            return Err(MapError::Epoch {
                have: self.epoch,
                got: next.epoch,
            });
        }
        if self.epoch > 0 && next.partitions != self.partitions {
            return Err(MapError::Repartitioned {
                have: self.partitions,
                got: next.partitions,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> BTreeSet<NodeId> {
        (1..=n).collect()
    }

    #[test]
    fn the_initial_map_is_balanced_and_well_formed() {
        let m = PlacementMap::initial(&nodes(5), 16, 3);
        m.check().expect("well formed");
        assert_eq!(m.epoch, 1);
        for n in 1..=5 {
            let hosted = m.hosted_by(n).len();
            assert!((9..=10).contains(&hosted), "node {n} hosts {hosted}");
        }
        assert!(m.assigned.iter().all(|a| a.hosts.len() == 3 && !a.formed));
    }

    #[test]
    fn successors_must_grow_the_epoch_and_keep_the_partition_count() {
        let none = PlacementMap::default();
        let first = PlacementMap::initial(&nodes(3), 4, 3);
        none.check_successor(&first).expect("the first map");
        assert!(matches!(
            first.check_successor(&first),
            Err(MapError::Epoch { .. })
        ));
        let mut more = PlacementMap::initial(&nodes(3), 8, 3);
        more.epoch = 2;
        assert!(matches!(
            first.check_successor(&more),
            Err(MapError::Repartitioned { .. })
        ));
        let mut twice = first.clone();
        twice.epoch = 2;
        twice.assigned[1].hosts = vec![2, 2];
        assert_eq!(
            first.check_successor(&twice),
            Err(MapError::TwiceOnOne(1, 2))
        );
        let mut short = first.clone();
        short.epoch = 2;
        short.assigned.pop();
        assert!(matches!(
            first.check_successor(&short),
            Err(MapError::Assigned { .. })
        ));
    }
}
