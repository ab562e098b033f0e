//! What a node reports of each group it hosts (`Request::Groups` on the peer
//! port): the placement driver and `GET /v1/partitions` read them.

use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;

use super::GroupId;
use crate::command::NodeId;
use crate::raft;
use crate::raft::KvRaft;

/// What a node knows of one group it hosts, as its Raft metrics show it. Only a
/// leader's report has `matched` (how far each member's log is known to match).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GroupReport {
    pub group: GroupId,
    pub node: NodeId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    /// A membership change is half done (joint configuration).
    pub joint: bool,
    pub last_log_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub matched: Vec<(NodeId, Option<u64>)>,
    /// The group's revision on this node (`None` for the cluster group).
    pub revision: Option<u64>,
    /// Keys the group holds on this node and their bytes, as last counted
    /// (`None`: not counted yet, or the cluster group).
    pub keys: Option<u64>,
    pub bytes: Option<u64>,
}

/// A group's keys and the bytes of their keys and values, counted in the
/// background every few seconds (`super::driver`), so reports and metrics read
/// them without scanning.
#[derive(Debug, Default)]
pub struct GroupStats {
    keys: AtomicU64,
    bytes: AtomicU64,
    counted: AtomicBool,
}

impl GroupStats {
    /// `(keys, bytes)`, once counted.
    pub fn get(&self) -> Option<(u64, u64)> {
        self.counted.load(Ordering::Relaxed).then(|| {
            (
                self.keys.load(Ordering::Relaxed),
                self.bytes.load(Ordering::Relaxed),
            )
        })
    }

    pub fn set(&self, keys: u64, bytes: u64) {
        self.keys.store(keys, Ordering::Relaxed);
        self.bytes.store(bytes, Ordering::Relaxed);
        self.counted.store(true, Ordering::Relaxed);
    }
}

impl GroupReport {
    /// The report of group `group` from `raft`'s metrics on node `node`.
    pub fn of(
        group: GroupId,
        node: NodeId,
        raft: &KvRaft,
        revision: Option<u64>,
        stats: Option<(u64, u64)>,
    ) -> GroupReport {
        let m = raft::raft_metrics(raft);
        let membership = m.membership_config.membership();
        GroupReport {
            group,
            node,
            leader: m.current_leader,
            term: m.current_term,
            voters: membership.voter_ids().collect(),
            learners: membership.learner_ids().collect(),
            joint: membership.get_joint_config().len() > 1,
            last_log_index: m.last_log_index,
            applied_index: m.last_applied.map(|l| l.index),
            matched: m
                .replication
                .as_ref()
                .map(|r| r.iter().map(|(n, l)| (*n, l.map(|l| l.index))).collect())
                .unwrap_or_default(),
            revision,
            keys: stats.map(|s| s.0),
            bytes: stats.map(|s| s.1),
        }
    }
}
