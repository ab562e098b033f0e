//! Forming a partition's group on its first host, as a cluster is formed:
//! this node initializes it alone, adds the other hosts as learners, waits until
//! they hold its whole log, then makes them voters (see [`Groups::form`]).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;

use super::FORM_TIMEOUT;
use super::Group;
use super::GroupError;
use super::GroupId;
use super::Groups;
use crate::command::NodeId;
use crate::raft;

impl Groups {
    /// The backup this node restored the cluster from, when it did: its
    /// partitions' groups are formed from it (`crate::restore`). Only the node
    /// that restored the cluster's own group has it recorded, and it is the
    /// one the restore's map names as every partition's first host.
    pub(super) async fn restoring(&self) -> Result<Option<std::path::PathBuf>, GroupError> {
        let Some(path) = self.ctx.config.restore_from.clone() else {
            return Ok(None);
        };
        let restored =
            self.cluster_store
                .restored_from()
                .await
                .map_err(|source| GroupError::Store {
                    group: super::CLUSTER_GROUP,
                    source,
                })?;
        Ok(restored.map(|_| path))
    }

    /// Forms group `id` with `members` as its voters (this node among them), as a
    /// cluster is formed: this node initializes it alone, then adds each other
    /// member as a learner (which must have opened the group) and, once they are
    /// caught up, makes them voters. Voters are never named empty: an empty store
    /// does not vote (see `crate::peer`), so a group formed with empty voters
    /// could not elect. Resumable: a group already initialized here continues
    /// from where its membership is, and one whose voters are `members` is done.
    pub async fn form(
        &self,
        id: GroupId,
        members: BTreeMap<NodeId, crate::command::KvNode>,
    ) -> Result<Arc<Group>, GroupError> {
        let me = self.ctx.node_id;
        let raft_err = |e: String| GroupError::Raft {
            group: id,
            message: e,
        };
        let own = members.get(&me).cloned().ok_or_else(|| {
            raft_err(format!(
                "node {me} forms the group but is not among its members"
            ))
        })?;
        let g = self.open(id).await?;
        let wanted: BTreeSet<NodeId> = members.keys().copied().collect();
        let voters = |g: &Group| -> BTreeSet<NodeId> {
            raft::raft_metrics(&g.raft)
                .membership_config
                .membership()
                .voter_ids()
                .collect()
        };
        if voters(&g) == wanted {
            return Ok(g);
        }
        if !raft::initialized(&g.raft) {
            let restore = self.restoring().await?;
            let select = |p| crate::store::Select::Partition {
                partition: p,
                count: self.ctx.config.partitions,
            };
            let restore = restore
                .as_deref()
                .zip(super::group_partition(id))
                .map(|(path, p)| (path, select(p)));
            crate::restore::initialize(
                &g.raft,
                &g.store,
                &g.peer.catch_up,
                me,
                &self.ctx.config.cluster_id,
                BTreeMap::from([(me, own)]),
                restore,
            )
            .await
            .map_err(|e| raft_err(e.to_string()))?;
        }
        g.raft
            .wait(Some(FORM_TIMEOUT))
            // Led, and its first entry committed: no membership change is pending.
            .metrics(
                |m| {
                    m.current_leader == Some(me)
                        && m.last_applied.is_some_and(|l| l.index >= 1)
                        && m.membership_config.membership().get_joint_config().len() == 1
                },
                "leads the new group",
            )
            .await
            .map_err(|e| raft_err(e.to_string()))?;
        let known: BTreeSet<NodeId> = raft::raft_metrics(&g.raft)
            .membership_config
            .membership()
            .nodes()
            .map(|(n, _)| *n)
            .collect();
        for (node, addr) in members.iter().filter(|(n, _)| !known.contains(*n)) {
            g.raft
                .add_learner(*node, addr.clone(), false)
                .await
                .map_err(|e| raft_err(format!("adding node {node} as a learner: {e}")))?;
        }
        let learners: Vec<NodeId> = members.keys().copied().filter(|n| *n != me).collect();
        raft::caught_up(&g.raft, &learners, FORM_TIMEOUT)
            .await
            .map_err(|e| raft_err(format!("waiting for the learners: {e}")))?;
        if voters(&g) != wanted {
            g.raft
                .change_membership(wanted, false)
                .await
                .map_err(|e| raft_err(format!("making the members voters: {e}")))?;
        }
        Ok(g)
    }
}
