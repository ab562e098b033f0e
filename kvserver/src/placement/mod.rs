//! Placement of partitions: which pods hold each partition's replicas and which
//! of them leads it, and the next moves that get a cluster there, as a pure
//! function of what was observed (like the operator's `membership::plan` for a
//! single group). Built without the `server` feature: the operator and kvctl use
//! it too.
//!
//! Rules:
//! - Each partition has `replication_factor` replicas on distinct pods; every pod
//!   that can take replicas ends within one replica of every other, and within one
//!   leadership ([`balance`]). The target is derived from the current placement so
//!   that only what balance requires moves (adding one pod to N moves about 1/(N+1)
//!   of the replicas, all onto the new pod).
//! - A pod that is `Down` keeps its replicas (it may come back) but gets no new
//!   ones; a pod that is `Lost` (the loss is clear) or `Leaving` (scale-in) has its
//!   replicas rebuilt elsewhere.
//! - Moves are learner first: add a learner on the new pod, promote it once caught
//!   up, then remove the replica it replaces (moving leadership off it first). At
//!   most one move per partition at a time, and no move that would leave a
//!   partition without a healthy majority of its voters, counting the old and the
//!   new configuration (a membership change commits in both).
//! - The plan depends only on the observation, so a planner restarted between any
//!   two moves resumes where the cluster is; moves already made (a learner added)
//!   are kept in the target, which is what makes it converge instead of undoing
//!   its own work.

mod balance;
pub mod hash;
pub mod map;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

/// A pod's node id (its StatefulSet ordinal).
pub type NodeId = u64;
/// A partition's index, `0..partitions`.
pub type PartitionId = u32;

/// A learner this close to its leader's log may be promoted.
pub const CATCH_UP_LAG: u64 = 100;

/// A voter this close to its leader's log counts toward a healthy majority.
/// Looser than [`CATCH_UP_LAG`]: under write load a connected follower is
/// routinely some entries behind.
pub const HEALTHY_LAG: u64 = 1000;

/// What placement knows of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NodeState {
    /// Serving: holds replicas and may take more.
    Active,
    /// Not answering, not yet given up for lost: keeps its replicas, takes none.
    Down,
    /// Being scaled in: its replicas move off before the pod goes.
    Leaving,
    /// Gone for good: its replicas are rebuilt on other pods.
    Lost,
}

/// One partition's Raft group as its leader reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupView {
    pub voters: BTreeSet<NodeId>,
    pub learners: BTreeSet<NodeId>,
    pub leader: Option<NodeId>,
    /// A two-phase membership change is not finished.
    pub joint: bool,
    /// Entries behind the leader, per member (absent: unknown, i.e. far behind).
    pub lag: BTreeMap<NodeId, u64>,
    /// Voters whose replica lost its data (their node reports the group empty:
    /// a wiped volume). They count for nothing and are replaced: removed, then
    /// copied again like any new replica.
    #[serde(default)]
    pub lost: BTreeSet<NodeId>,
}

impl GroupView {
    /// A group just formed on `members` (the first one leads), all caught up:
    /// what [`initial`] places, as the planner sees it once it runs.
    pub fn formed(members: &[NodeId]) -> GroupView {
        GroupView {
            voters: members.iter().copied().collect(),
            leader: members.first().copied(),
            lag: members.iter().map(|n| (*n, 0)).collect(),
            ..Default::default()
        }
    }

    fn members(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters.iter().chain(&self.learners).copied()
    }
}

/// Everything the planner looks at.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub replication_factor: usize,
    pub nodes: BTreeMap<NodeId, NodeState>,
    /// Index = partition id.
    pub groups: Vec<GroupView>,
    /// At most this many learners catching up at once across the cluster (each is
    /// a copy of a partition over the network).
    pub max_copies: usize,
}

/// One membership or leadership change of one partition. Externally tagged:
/// it crosses the peer port in bincode (`Request::Move`), which cannot read an
/// internally tagged enum (the first try closed every connection it was sent on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Move {
    AddLearner {
        partition: PartitionId,
        node: NodeId,
    },
    Promote {
        partition: PartitionId,
        node: NodeId,
    },
    RemoveLearner {
        partition: PartitionId,
        node: NodeId,
    },
    RemoveVoter {
        partition: PartitionId,
        node: NodeId,
    },
    TransferLeader {
        partition: PartitionId,
        to: NodeId,
    },
}

impl Move {
    pub fn partition(&self) -> PartitionId {
        match *self {
            Move::AddLearner { partition, .. }
            | Move::Promote { partition, .. }
            | Move::RemoveLearner { partition, .. }
            | Move::RemoveVoter { partition, .. }
            | Move::TransferLeader { partition, .. } => partition,
        }
    }
}

/// Why a partition that is not where it should be makes no move now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "camelCase")]
pub enum Wait {
    /// No leader known: nothing can change until one is elected.
    NoLeader,
    /// A two-phase membership change is still in its joint phase.
    Joint,
    /// A learner is not yet close enough to the leader to be promoted.
    CatchingUp { node: NodeId, lag: Option<u64> },
    /// The move would leave fewer healthy voters than a majority.
    Quorum { healthy: usize, voters: usize },
    /// The cluster-wide limit of copies in flight is reached.
    CopyLimit,
    /// Only the leadership is off target; it moves once every partition's
    /// replicas are in place.
    Placing,
}

/// The planner's answer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// At most one per partition.
    pub moves: Vec<Move>,
    /// Partitions away from their target that wait, and why.
    pub waiting: Vec<(PartitionId, Wait)>,
    /// Where each partition's replicas are headed.
    pub target: Vec<BTreeSet<NodeId>>,
    /// Which pod each partition's leadership is headed to (`None`: no healthy replica).
    pub target_leaders: Vec<Option<NodeId>>,
}

impl Plan {
    /// Every partition is where it should be, leaders included.
    pub fn settled(&self) -> bool {
        self.moves.is_empty() && self.waiting.is_empty()
    }
}

fn majority(n: usize) -> usize {
    n / 2 + 1
}

struct Ctx<'a> {
    obs: &'a Observed,
}

impl Ctx<'_> {
    fn state(&self, n: NodeId) -> NodeState {
        self.obs.nodes.get(&n).copied().unwrap_or(NodeState::Lost)
    }

    /// Counts toward a majority: serving and close to the leader.
    fn healthy(&self, g: &GroupView, n: NodeId) -> bool {
        !g.lost.contains(&n)
            && matches!(self.state(n), NodeState::Active | NodeState::Leaving)
            && (g.leader == Some(n) || g.lag.get(&n).is_some_and(|l| *l <= HEALTHY_LAG))
    }

    /// `None` when changing the voters of `g` to `after` keeps a healthy majority
    /// of both configurations; otherwise why not.
    fn guard(&self, g: &GroupView, after: &BTreeSet<NodeId>) -> Option<Wait> {
        for set in [&g.voters, after] {
            let healthy = set.iter().filter(|n| self.healthy(g, **n)).count();
            if healthy < majority(set.len()) {
                return Some(Wait::Quorum {
                    healthy,
                    voters: set.len(),
                });
            }
        }
        None
    }
}

/// The target replicas of every partition: balanced over the pods that take
/// replicas, as close to the current placement as balance allows.
fn target_replicas(obs: &Observed) -> Vec<BTreeSet<NodeId>> {
    let receivers = nodes_in(obs, NodeState::Active);
    let frozen = nodes_in(obs, NodeState::Down);
    let current = obs
        .groups
        .iter()
        .map(|g| {
            // Keep order: the leader, then learners (a move under way is kept),
            // then the other voters.
            let mut order: Vec<NodeId> = g.leader.into_iter().collect();
            for n in g.learners.iter().chain(&g.voters) {
                if !order.contains(n) {
                    order.push(*n);
                }
            }
            order
        })
        .collect();
    balance::solve(&balance::Problem {
        demand: vec![obs.replication_factor; obs.groups.len()],
        allowed: vec![None; obs.groups.len()],
        current,
        receivers,
        frozen,
    })
}

/// The target leader of every partition: one of its target replicas that is a
/// healthy voter now, balanced over the active pods, kept where it is if balance allows.
fn target_leaders(obs: &Observed, target: &[BTreeSet<NodeId>]) -> Vec<Option<NodeId>> {
    let ctx = Ctx { obs };
    let active = nodes_in(obs, NodeState::Active);
    let allowed: Vec<BTreeSet<NodeId>> = obs
        .groups
        .iter()
        .zip(target)
        .map(|(g, t)| {
            t.iter()
                .copied()
                .filter(|n| active.contains(n) && ctx.healthy(g, *n))
                .collect()
        })
        .collect();
    let solved = balance::solve(&balance::Problem {
        demand: allowed.iter().map(|a| usize::from(!a.is_empty())).collect(),
        current: obs
            .groups
            .iter()
            .map(|g| g.leader.into_iter().collect())
            .collect(),
        allowed: allowed.into_iter().map(Some).collect(),
        receivers: active,
        frozen: BTreeSet::new(),
    });
    solved.into_iter().map(|s| s.first().copied()).collect()
}

fn nodes_in(obs: &Observed, state: NodeState) -> BTreeSet<NodeId> {
    obs.nodes
        .iter()
        .filter(|(_, s)| **s == state)
        .map(|(n, _)| *n)
        .collect()
}

/// The initial placement of a new cluster's partitions over `nodes` (each
/// partition's replicas, its first member the one to lead).
pub fn initial(nodes: &BTreeSet<NodeId>, partitions: u32, rf: usize) -> Vec<Vec<NodeId>> {
    let obs = Observed {
        replication_factor: rf,
        nodes: nodes.iter().map(|n| (*n, NodeState::Active)).collect(),
        groups: vec![GroupView::default(); partitions as usize],
        max_copies: 0,
    };
    let target = target_replicas(&obs);
    // Leaders: balance over the replicas as if each were a healthy voter.
    let groups: Vec<GroupView> = target
        .iter()
        .map(|t| GroupView {
            voters: t.clone(),
            lag: t.iter().map(|n| (*n, 0)).collect(),
            ..Default::default()
        })
        .collect();
    let leaders = target_leaders(&Observed { groups, ..obs }, &target);
    target
        .iter()
        .zip(leaders)
        .map(|(t, l)| {
            let mut v: Vec<NodeId> = l.into_iter().collect();
            v.extend(t.iter().filter(|n| Some(**n) != l));
            v
        })
        .collect()
}

/// The next moves: at most one per partition, learner copies limited by
/// `max_copies`.
pub fn plan(obs: &Observed) -> Plan {
    let ctx = Ctx { obs };
    let target = target_replicas(obs);
    let leaders = target_leaders(obs, &target);
    let mut copies = obs.groups.iter().map(|g| g.learners.len()).sum::<usize>();
    let mut out = Plan::default();
    let mut balance = Vec::new();
    for (i, g) in obs.groups.iter().enumerate() {
        let p = i as PartitionId;
        match step(&ctx, p, g, &target[i], leaders[i]) {
            Next::Settled => {}
            Next::Lead(m) => balance.push(m),
            Next::Wait(w) => out.waiting.push((p, w)),
            Next::Move(m @ Move::AddLearner { .. }) => {
                if copies < obs.max_copies {
                    copies += 1;
                    out.moves.push(m);
                } else {
                    out.waiting.push((p, Wait::CopyLimit));
                }
            }
            Next::Move(m) => out.moves.push(m),
        }
    }
    // Leaderships are balanced once every replica is in place: while replicas
    // move, the leadership target moves with them, and transfers made on the way
    // are undone (the simulation moved one partition's leadership twice).
    if out.moves.is_empty() && out.waiting.is_empty() {
        out.moves = balance;
    } else {
        out.waiting
            .extend(balance.iter().map(|m| (m.partition(), Wait::Placing)));
    }
    out.target = target;
    out.target_leaders = leaders;
    out
}

enum Next {
    Settled,
    /// A leadership transfer for balance only.
    Lead(Move),
    Wait(Wait),
    Move(Move),
}

/// Removes voter `n` of partition `p`, if a healthy majority of both the current
/// and the resulting voter set allows it.
fn remove_voter(ctx: &Ctx<'_>, p: PartitionId, g: &GroupView, n: NodeId) -> Next {
    let mut after = g.voters.clone();
    after.remove(&n);
    match ctx.guard(g, &after) {
        Some(w) => Next::Wait(w),
        None => Next::Move(Move::RemoveVoter {
            partition: p,
            node: n,
        }),
    }
}

/// The one next step of partition `p` toward `target` and `leader`.
fn step(
    ctx: &Ctx<'_>,
    p: PartitionId,
    g: &GroupView,
    target: &BTreeSet<NodeId>,
    leader: Option<NodeId>,
) -> Next {
    let members: BTreeSet<NodeId> = g.members().collect();
    let placed =
        members == *target && g.learners.is_empty() && !g.lost.iter().any(|n| g.voters.contains(n));
    if placed && (leader.is_none() || g.leader == leader) && !g.joint {
        return Next::Settled;
    }
    if g.joint {
        return Next::Wait(Wait::Joint);
    }
    let Some(current_leader) = g.leader else {
        return Next::Wait(Wait::NoLeader);
    };
    // A voter that lost its data is removed first (it is then copied again, as
    // the target still wants a replica there): it holds nothing, refuses to vote,
    // and a second loss would cost the partition its majority (the chaos
    // campaign's partitioned mode, seed 306: two replicas of every partition
    // wiped one after the other).
    if let Some(n) = g
        .lost
        .iter()
        .find(|n| g.voters.contains(n) && Some(**n) != g.leader)
    {
        return remove_voter(ctx, p, g, *n);
    }
    // A learner that is not wanted goes (no vote, no majority to mind).
    if let Some(n) = g.learners.iter().find(|n| !target.contains(n)) {
        return Next::Move(Move::RemoveLearner {
            partition: p,
            node: *n,
        });
    }
    // A wanted learner is promoted once caught up.
    if let Some(n) = g.learners.iter().next() {
        let lag = g.lag.get(n).copied();
        if ctx.state(*n) != NodeState::Active || lag.is_none_or(|l| l > CATCH_UP_LAG) {
            return Next::Wait(Wait::CatchingUp { node: *n, lag });
        }
        let mut after = g.voters.clone();
        after.insert(*n);
        return match ctx.guard(g, &after) {
            Some(w) => Next::Wait(w),
            None => Next::Move(Move::Promote {
                partition: p,
                node: *n,
            }),
        };
    }
    // A missing replica is copied first; the one it replaces goes after.
    if let Some(n) = target.iter().find(|n| !members.contains(n)) {
        return match ctx.guard(g, &g.voters) {
            Some(w) => Next::Wait(w),
            None => Next::Move(Move::AddLearner {
                partition: p,
                node: *n,
            }),
        };
    }
    // An unwanted voter goes, dead ones first; leadership leaves it first.
    let unwanted = g
        .voters
        .iter()
        .filter(|n| !target.contains(n))
        .min_by_key(|n| (ctx.healthy(g, **n), **n));
    if let Some(n) = unwanted {
        if *n == current_leader {
            let to = leader
                .filter(|l| g.voters.contains(l) && ctx.healthy(g, *l))
                .or_else(|| {
                    target
                        .iter()
                        .copied()
                        .find(|t| g.voters.contains(t) && ctx.healthy(g, *t))
                });
            return match to {
                Some(to) => Next::Move(Move::TransferLeader { partition: p, to }),
                None => Next::Wait(Wait::Quorum {
                    healthy: 0,
                    voters: g.voters.len(),
                }),
            };
        }
        return remove_voter(ctx, p, g, *n);
    }
    // Placed: only the leadership is off target.
    match leader {
        Some(to) if g.voters.contains(&to) && ctx.healthy(g, to) => {
            Next::Lead(Move::TransferLeader { partition: p, to })
        }
        _ => Next::Settled,
    }
}
