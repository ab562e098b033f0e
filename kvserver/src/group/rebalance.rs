//! The placement driver's moves, once every partition is formed: observe the
//! members' group reports, ask the pure planner (`crate::placement::plan`) for
//! the next moves, keep the placement map in step with the groups' memberships,
//! and send each move to the leader of the partition it changes
//! (`super::moves`).
//!
//! The map and the memberships move in a fixed order, so that a node never
//! deletes a replica the group still counts on and never lacks the group when it
//! is added to it:
//! - a copy: the map lists the new host first (the node opens the group), and
//!   only in a later round, with that map applied, is the node added as a learner;
//! - a removal: the membership change commits first, and only then does the map
//!   drop the host (the node then deletes its replica, `super::remove`).
//!
//! Node states, from what the driver sees:
//! - `Active`: a voter of the cluster group that answered;
//! - `Leaving`: a learner of the cluster group, which takes no replicas (a node
//!   joining is one until it is promoted and holds none yet; a node the operator
//!   demoted before removing it is drained of its replicas);
//! - `Down`: a member that did not answer; it keeps its replicas;
//! - `Lost`: a node that is no longer a member of the cluster group at all; its
//!   replicas are rebuilt elsewhere.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use super::GroupReport;
use super::Groups;
use super::moves::MOVE_TIMEOUT;
use super::partition_group;
use crate::command::NodeId;
use crate::placement::GroupView;
use crate::placement::Move;
use crate::placement::NodeState;
use crate::placement::Observed;
use crate::placement::Plan;
use crate::placement::Wait;
use crate::placement::map::Assignment;
use crate::placement::map::PlacementMap;
use crate::raft;

/// Copies (learners catching up) in flight at once across the cluster: each is a
/// partition's data sent over the network while the cluster serves.
pub const MAX_COPIES: usize = 2;

/// What the driver saw of the cluster in one round.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub observed: Observed,
    /// Per partition: whether a leader's report of the current term was seen (only
    /// then is its membership trusted to change the map).
    pub known: Vec<bool>,
}

/// Builds the planner's view from the cluster group's membership (`members`,
/// of which `voters` vote) and the members' reports.
pub fn observe(
    map: &PlacementMap,
    members: &BTreeSet<NodeId>,
    voters: &BTreeSet<NodeId>,
    reports: &[GroupReport],
) -> Seen {
    let answered: BTreeSet<NodeId> = reports.iter().map(|r| r.node).collect();
    let mut nodes: BTreeMap<NodeId, NodeState> = members
        .iter()
        .map(|n| {
            let state = if !answered.contains(n) {
                NodeState::Down
            } else if voters.contains(n) {
                NodeState::Active
            } else {
                NodeState::Leaving
            };
            (*n, state)
        })
        .collect();
    let mut groups = Vec::with_capacity(map.assigned.len());
    let mut known = Vec::with_capacity(map.assigned.len());
    for p in 0..map.assigned.len() {
        let id = partition_group(p as u32);
        let of_group: Vec<&GroupReport> = reports.iter().filter(|r| r.group == id).collect();
        // The leader of the highest term any self-declared leader holds, trusted
        // unless a member of its own membership has seen a newer term (then it was
        // deposed, and its view of the membership may be behind the new leader's).
        // A node no longer in the membership does not count: removed from the group
        // before the map dropped it, it campaigns on in ever higher terms, and
        // counting it left a partition untrusted, and its move stuck, for good
        // (e2e scenario 3b, 5 → 7 pods).
        let leader = of_group
            .iter()
            .filter(|r| r.leader == Some(r.node))
            .max_by_key(|r| r.term)
            .filter(|l| {
                !of_group.iter().any(|o| {
                    o.term > l.term && (l.voters.contains(&o.node) || l.learners.contains(&o.node))
                })
            });
        let term = of_group.iter().map(|r| r.term).max();
        let view = match leader {
            Some(r) => {
                let last = r.last_log_index.unwrap_or(0);
                let mut lag: BTreeMap<NodeId, u64> = r
                    .matched
                    .iter()
                    .filter_map(|(n, m)| m.map(|m| (*n, last.saturating_sub(m))))
                    .collect();
                lag.insert(r.node, 0);
                // A voter whose own report shows the group empty lost its data (a
                // wiped volume): the leader still counts it, it counts for nothing.
                let lost = r
                    .voters
                    .iter()
                    .copied()
                    .filter(|v| {
                        of_group.iter().any(|o| {
                            o.node == *v && o.voters.is_empty() && o.last_log_index.is_none()
                        })
                    })
                    .collect();
                GroupView {
                    voters: r.voters.iter().copied().collect(),
                    learners: r.learners.iter().copied().collect(),
                    leader: Some(r.node),
                    joint: r.joint,
                    lag,
                    lost,
                }
            }
            None => {
                // No leader: the planner waits; the voters as a member last saw them.
                let voters = of_group
                    .iter()
                    .filter(|r| Some(r.term) == term)
                    .map(|r| r.voters.iter().copied().collect())
                    .next()
                    .unwrap_or_else(|| map.assigned[p].hosts.iter().copied().collect());
                GroupView {
                    voters,
                    ..Default::default()
                }
            }
        };
        for n in view.voters.iter().chain(&view.learners) {
            nodes.entry(*n).or_insert(NodeState::Lost);
        }
        known.push(leader.is_some());
        groups.push(view);
    }
    Seen {
        observed: Observed {
            replication_factor: map.replication_factor as usize,
            nodes,
            groups,
            max_copies: MAX_COPIES,
        },
        known,
    }
}

/// The hosts the map should list for each partition: every member of its group
/// (a member must keep the group open), a host the map lists that the plan still
/// heads for (a copy about to start), and the target of a copy the plan starts
/// now. A host that is neither a member nor wanted is dropped, which is what
/// makes its node delete its replica.
pub fn next_hosts(map: &PlacementMap, seen: &Seen, plan: &Plan) -> Vec<Assignment> {
    map.assigned
        .iter()
        .enumerate()
        .map(|(p, a)| {
            if !seen.known[p] {
                return a.clone();
            }
            let g = &seen.observed.groups[p];
            let members: BTreeSet<NodeId> = g.voters.union(&g.learners).copied().collect();
            let target = &plan.target[p];
            let mut hosts: Vec<NodeId> = a
                .hosts
                .iter()
                .copied()
                .filter(|h| members.contains(h) || target.contains(h))
                .collect();
            let copying = plan.moves.iter().filter_map(|m| match m {
                Move::AddLearner { partition, node } if *partition as usize == p => Some(*node),
                _ => None,
            });
            for n in members.iter().copied().chain(copying) {
                if !hosts.contains(&n) {
                    hosts.push(n);
                }
            }
            Assignment {
                hosts,
                formed: a.formed,
            }
        })
        .collect()
}

/// One round of moves on the cluster group's leader.
pub(super) async fn rebalance(groups: &Groups, map: &PlacementMap) -> Result<(), String> {
    let reports = groups.cluster_reports().await;
    let members: BTreeSet<NodeId> = groups.members().into_keys().collect();
    let voters: BTreeSet<NodeId> = raft::raft_metrics(&groups.cluster)
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    let seen = observe(map, &members, &voters, &reports);
    let plan = crate::placement::plan(&seen.observed);
    let hosts = next_hosts(map, &seen, &plan);
    if hosts != map.assigned {
        let mut next = map.clone();
        next.assigned = hosts;
        next.epoch = map.epoch + 1;
        tracing::info!(
            epoch = next.epoch,
            "placement: hosts follow the groups' memberships and copies"
        );
        return super::driver::place(groups, next).await;
    }
    // Why partitions wait, said once each time it changes (a move stuck behind a
    // learner that does not catch up shows here, not only in the status).
    let waits = plan
        .waiting
        .iter()
        .map(|(p, w)| match w {
            // The lag changes every round: the node is what says which copy waits.
            Wait::CatchingUp { node, .. } => format!("{p}: catching up on {node}"),
            other => format!("{p}: {other:?}"),
        })
        .collect::<Vec<_>>()
        .join(", ");
    if let Ok(mut last) = groups.last_waits.lock()
        && *last != waits
    {
        if !plan.waiting.is_empty() {
            tracing::info!(epoch = map.epoch, waiting = %waits, "placement: partitions waiting");
        }
        *last = waits;
    }
    let sends = plan.moves.iter().map(|m| {
        let p = m.partition() as usize;
        let leader = seen.observed.groups[p].leader;
        async move {
            let Some(leader) = leader else {
                return (m, Err("no leader".to_string()));
            };
            (m, send(groups, leader, *m).await)
        }
    });
    for (m, r) in futures_util::future::join_all(sends).await {
        match r {
            Ok(changed) => tracing::info!(change = ?m, changed, "placement move"),
            Err(e) => tracing::info!(change = ?m, error = %e, "placement move not made; retrying"),
        }
    }
    Ok(())
}

/// Sends move `m` to `leader`, the leader of its partition (this node's own
/// groups are changed in place).
async fn send(groups: &Groups, leader: NodeId, m: Move) -> Result<bool, String> {
    let me = groups.ctx.node_id;
    if leader == me {
        return groups.carry_out(me, m).await;
    }
    let addr = groups
        .members()
        .remove(&leader)
        .ok_or_else(|| format!("leader {leader} is not a cluster member"))?
        .raft_addr;
    let mut c =
        crate::peer::PeerClient::new(groups.ctx.dialer.clone(), leader, addr, &groups.cluster);
    c.carry_out(m, MOVE_TIMEOUT + std::time::Duration::from_secs(2))
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(
        group: u64,
        node: NodeId,
        leader: Option<NodeId>,
        term: u64,
        voters: &[NodeId],
    ) -> GroupReport {
        GroupReport {
            group,
            node,
            leader,
            term,
            voters: voters.to_vec(),
            learners: vec![],
            joint: false,
            last_log_index: Some(10),
            applied_index: Some(10),
            matched: voters.iter().map(|v| (*v, Some(10))).collect(),
            revision: Some(0),
            keys: None,
            bytes: None,
        }
    }

    fn map_of(hosts: &[&[NodeId]]) -> PlacementMap {
        PlacementMap {
            epoch: 3,
            partitions: hosts.len() as u32,
            replication_factor: 3,
            assigned: hosts
                .iter()
                .map(|h| Assignment {
                    hosts: h.to_vec(),
                    formed: true,
                })
                .collect(),
        }
    }

    fn cluster_reports(nodes: &[NodeId], partitions: &[(NodeId, &[NodeId])]) -> Vec<GroupReport> {
        let mut out: Vec<GroupReport> = nodes
            .iter()
            .map(|n| report(0, *n, Some(1), 1, nodes))
            .collect();
        for (p, (leader, voters)) in partitions.iter().enumerate() {
            for v in voters.iter() {
                out.push(report(
                    partition_group(p as u32),
                    *v,
                    Some(*leader),
                    2,
                    voters,
                ));
            }
        }
        out
    }

    #[test]
    fn states_follow_the_cluster_group_and_who_answered() {
        let map = map_of(&[&[1, 2, 3]]);
        let mut reports = cluster_reports(&[1, 2, 3, 4], &[(1, &[1, 2, 3])]);
        reports.retain(|r| r.node != 3);
        let members = BTreeSet::from([1, 2, 3, 4, 5]);
        let voters = BTreeSet::from([1, 2, 3, 4]);
        let seen = observe(&map, &members, &voters, &reports);
        let s = &seen.observed.nodes;
        assert_eq!(s[&1], NodeState::Active);
        assert_eq!(s[&3], NodeState::Down);
        assert_eq!(s[&4], NodeState::Active);
        assert_eq!(
            s[&5],
            NodeState::Down,
            "a learner that did not answer is down"
        );
        assert!(seen.known[0]);
        assert_eq!(seen.observed.groups[0].leader, Some(1));
        let seen = observe(
            &map,
            &BTreeSet::from([1, 2, 4]),
            &BTreeSet::from([1, 2, 4]),
            &reports,
        );
        assert_eq!(
            seen.observed.nodes[&3],
            NodeState::Lost,
            "a replica on a node that left the cluster"
        );
    }

    #[test]
    fn a_deposed_leader_is_not_trusted() {
        let map = map_of(&[&[1, 2, 3]]);
        let mut reports = cluster_reports(&[1, 2, 3], &[(1, &[1, 2, 3])]);
        // Node 2 saw a newer term; node 1 still believes it leads.
        for r in reports.iter_mut().filter(|r| r.group == 1 && r.node == 2) {
            r.term = 3;
            r.leader = None;
        }
        let all = BTreeSet::from([1, 2, 3]);
        let seen = observe(&map, &all, &all, &reports);
        assert!(!seen.known[0]);
        assert_eq!(seen.observed.groups[0].leader, None);
        let plan = crate::placement::plan(&seen.observed);
        assert_eq!(
            next_hosts(&map, &seen, &plan),
            map.assigned,
            "the map waits"
        );
    }

    #[test]
    fn the_map_lists_a_copy_before_it_starts_and_drops_a_host_after_it_left() {
        // Four nodes, one partition on 1,2,3; node 4 joins as a voter of the cluster
        // group. Balance needs nothing for one partition of three replicas, so make
        // node 3 leave instead: its replica is rebuilt on 4.
        let map = map_of(&[&[1, 2, 3]]);
        let reports = cluster_reports(&[1, 2, 3, 4], &[(1, &[1, 2, 3])]);
        let members = BTreeSet::from([1, 2, 3, 4]);
        let voters = BTreeSet::from([1, 2, 4]);
        let seen = observe(&map, &members, &voters, &reports);
        assert_eq!(seen.observed.nodes[&3], NodeState::Leaving);
        let plan = crate::placement::plan(&seen.observed);
        assert_eq!(
            plan.moves,
            vec![Move::AddLearner {
                partition: 0,
                node: 4
            }]
        );
        let hosts = next_hosts(&map, &seen, &plan);
        assert_eq!(
            hosts[0].hosts,
            vec![1, 2, 3, 4],
            "listed before the copy starts"
        );

        // With the map applied, the same plan sends the move and the map holds.
        let map = PlacementMap {
            assigned: hosts,
            epoch: 4,
            ..map
        };
        let seen = observe(&map, &members, &voters, &reports);
        let plan = crate::placement::plan(&seen.observed);
        assert_eq!(next_hosts(&map, &seen, &plan), map.assigned);

        // The group has replaced 3 by 4: the map drops 3.
        let reports = cluster_reports(&[1, 2, 3, 4], &[(1, &[1, 2, 4])]);
        let seen = observe(&map, &members, &voters, &reports);
        let plan = crate::placement::plan(&seen.observed);
        assert_eq!(next_hosts(&map, &seen, &plan)[0].hosts, vec![1, 2, 4]);
    }

    #[test]
    fn a_removed_replica_campaigning_does_not_block_its_partition() {
        // Node 4 was removed from the group (voters 1, 2, 3) before the map dropped
        // it; it campaigns on with higher terms. The leader is still trusted.
        let map = map_of(&[&[1, 2, 3, 4]]);
        let mut reports = cluster_reports(&[1, 2, 3, 4], &[(1, &[1, 2, 3])]);
        let mut stray = report(1, 4, None, 9, &[1, 2, 3, 4]);
        stray.matched.clear();
        reports.push(stray);
        let all = BTreeSet::from([1, 2, 3, 4]);
        let seen = observe(&map, &all, &all, &reports);
        assert!(seen.known[0]);
        assert_eq!(seen.observed.groups[0].leader, Some(1));
        let plan = crate::placement::plan(&seen.observed);
        assert!(
            !next_hosts(&map, &seen, &plan)[0].hosts.contains(&4),
            "the map drops it"
        );
    }

    #[test]
    fn a_voter_that_lost_its_data_is_replaced() {
        let map = map_of(&[&[1, 2, 3]]);
        let mut reports = cluster_reports(&[1, 2, 3], &[(1, &[1, 2, 3])]);
        // Node 2 came back with a wiped volume: it reopened the group empty.
        for r in reports.iter_mut().filter(|r| r.group == 1 && r.node == 2) {
            r.voters.clear();
            r.leader = None;
            r.term = 0;
            r.last_log_index = None;
        }
        let all = BTreeSet::from([1, 2, 3]);
        let seen = observe(&map, &all, &all, &reports);
        assert_eq!(seen.observed.groups[0].lost, BTreeSet::from([2]));
        let plan = crate::placement::plan(&seen.observed);
        assert_eq!(
            plan.moves,
            vec![Move::RemoveVoter {
                partition: 0,
                node: 2
            }]
        );
        // Removed, it is copied again (the map keeps it: the target still wants it).
        let reports = cluster_reports(&[1, 2, 3], &[(1, &[1, 3])]);
        let seen = observe(&map, &all, &all, &reports);
        let plan = crate::placement::plan(&seen.observed);
        assert_eq!(
            plan.moves,
            vec![Move::AddLearner {
                partition: 0,
                node: 2
            }]
        );
        assert_eq!(next_hosts(&map, &seen, &plan)[0].hosts, vec![1, 2, 3]);
        // A second replica lost while the first is: no majority, nothing moves.
        let mut reports = cluster_reports(&[1, 2, 3], &[(1, &[1, 2, 3])]);
        for r in reports.iter_mut().filter(|r| r.group == 1 && r.node != 1) {
            r.voters.clear();
            r.last_log_index = None;
        }
        let seen = observe(&map, &all, &all, &reports);
        let plan = crate::placement::plan(&seen.observed);
        assert!(plan.moves.is_empty(), "{plan:?}");
    }

    #[test]
    fn a_member_the_map_lacks_is_listed() {
        let map = map_of(&[&[1, 2]]);
        let reports = cluster_reports(&[1, 2, 3], &[(1, &[1, 2, 3])]);
        let all = BTreeSet::from([1, 2, 3]);
        let seen = observe(&map, &all, &all, &reports);
        let plan = crate::placement::plan(&seen.observed);
        assert_eq!(next_hosts(&map, &seen, &plan)[0].hosts, vec![1, 2, 3]);
    }
}
