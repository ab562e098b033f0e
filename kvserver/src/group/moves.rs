//! Carrying out one placement move (`crate::placement::Move`) on the leader of
//! the partition it changes. The placement driver runs on the cluster group's
//! leader, which need not lead the partition: it sends the move over the peer
//! port (`Request::Move`) to the partition's leader, which changes its group's
//! membership or hands its leadership over.
//!
//! Who may ask: a verified member (the peer port serves nothing else but
//! replication to anyone, see `crate::peer::admit`) that this node sees leading
//! the cluster group, the only node whose driver may change placement. Every move
//! is idempotent: one whose effect is in place answers `false` without
//! proposing, so a driver that lost the answer repeats it safely.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::ServerState;

use super::Groups;
use super::partition_group;
use crate::command::NodeId;
use crate::placement::Move;
use crate::raft;

/// How long a membership change may take before the move is reported failed
/// (the driver looks again next round; a change still under way shows as joint).
pub const MOVE_TIMEOUT: Duration = Duration::from_secs(10);

impl Groups {
    /// Carries out `m`, sent by member `from`. `Ok(changed)`, or why not.
    pub async fn carry_out(&self, from: NodeId, m: Move) -> Result<bool, String> {
        let cluster_leader = raft::raft_metrics(&self.cluster).current_leader;
        if cluster_leader != Some(from) {
            return Err(format!(
                "not_driver: node {from} does not lead the cluster group as node {} sees it (leader: {cluster_leader:?})",
                self.ctx.node_id
            ));
        }
        let group = partition_group(m.partition());
        let g = self.get(group).ok_or_else(|| {
            format!(
                "no_group: node {} does not host group {group}",
                self.ctx.node_id
            )
        })?;
        let me = self.ctx.node_id;
        let metrics = raft::raft_metrics(&g.raft);
        if metrics.state != ServerState::Leader {
            return Err(format!(
                "not_leader: node {me} does not lead group {group} (leader: {:?})",
                metrics.current_leader
            ));
        }
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let learners: BTreeSet<NodeId> = membership.learner_ids().collect();
        let change = async {
            match m {
                Move::AddLearner { node, .. } => {
                    if voters.contains(&node) || learners.contains(&node) {
                        return Ok(false);
                    }
                    let addr = self
                        .members()
                        .remove(&node)
                        .ok_or_else(|| format!("node {node} is not a member of the cluster"))?;
                    g.raft
                        .add_learner(node, addr, false)
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Move::Promote { node, .. } => {
                    if voters.contains(&node) {
                        return Ok(false);
                    }
                    if !learners.contains(&node) {
                        return Err(format!("node {node} is not a learner of group {group}"));
                    }
                    g.raft
                        .change_membership(
                            ChangeMembers::AddVoterIds(BTreeSet::from([node])),
                            false,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Move::RemoveLearner { node, .. } => {
                    if !learners.contains(&node) {
                        return Ok(false);
                    }
                    g.raft
                        .change_membership(
                            ChangeMembers::RemoveNodes(BTreeSet::from([node])),
                            false,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Move::RemoveVoter { node, .. } => {
                    if !voters.contains(&node) {
                        return Ok(false);
                    }
                    if node == me {
                        return Err(format!(
                            "node {me} leads group {group}: its leadership moves before it is removed"
                        ));
                    }
                    // retain = false: the node leaves the group, not only its voters.
                    g.raft
                        .change_membership(
                            ChangeMembers::RemoveVoters(BTreeSet::from([node])),
                            false,
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Move::TransferLeader { to, .. } => {
                    if to == me {
                        return Ok(false);
                    }
                    if !voters.contains(&to) {
                        return Err(format!("node {to} is not a voter of group {group}"));
                    }
                    g.raft
                        .trigger()
                        .transfer_leader(to)
                        .await
                        .map_err(|e| e.to_string())?;
                }
            }
            Ok(true)
        };
        let changed = tokio::time::timeout(MOVE_TIMEOUT, change)
            .await
            .map_err(|_| {
                format!("the change of group {group} did not commit within {MOVE_TIMEOUT:?}")
            })??;
        if changed {
            tracing::info!(group, change = ?m, driver = from, "placement move carried out");
        }
        Ok(changed)
    }
}
