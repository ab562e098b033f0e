//! Balanced assignment of slots to nodes with as few changes as possible: the
//! arithmetic under both halves of placement (which pods hold a partition's
//! replicas, which of them leads it).
//!
//! The problem: items (partitions) each need `demand` slots on distinct nodes,
//! each node may only take items it is allowed for, and every node that can take
//! new slots should end within one slot of every other such node. Among the
//! assignments that do that, we want the one closest to the current one, since
//! every changed slot is a replica copied over the network or a leadership moved.
//!
//! How: keep what the current assignment has (dropping slots on nodes that are
//! gone), cut nodes above the ceiling of the average, then fill missing slots and
//! raise nodes below the floor along augmenting paths (a bipartite b-matching
//! step: a full node passes one of its items on to a node with room, and takes
//! the new slot in its place). A greedy fill without paths gets stuck when every
//! node with room already holds the item that needs a slot; the paths are what
//! make "within one" reachable from any start. That assignment is balanced but
//! not always the cheapest, so a last step cancels negative cycles and paths of
//! slot exchanges (costing 1 per new slot, 0 per kept one) until none is left:
//! the result is a cheapest balanced assignment, which is what keeps the planner
//! from changing its mind between rounds (`placement::tests`, up to 100 pods and
//! 1,024 partitions).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;

use super::NodeId;

/// One assignment problem.
#[derive(Debug, Clone)]
pub(crate) struct Problem {
    /// Slots each item needs.
    pub demand: Vec<usize>,
    /// The nodes each item may use; `None`: any node.
    pub allowed: Vec<Option<BTreeSet<NodeId>>>,
    /// Each item's current nodes, most worth keeping first: when an item holds
    /// more slots than it needs, or a node more than its share, the slot dropped
    /// is on the most loaded node, and among equals the one listed last.
    pub current: Vec<Vec<NodeId>>,
    /// Nodes that may gain slots, and that share the load evenly.
    pub receivers: BTreeSet<NodeId>,
    /// Nodes that keep the slots they hold but gain none (a pod that is down but
    /// not yet given up for lost: its replicas stay where they are).
    pub frozen: BTreeSet<NodeId>,
}

struct State<'a> {
    p: &'a Problem,
    assign: Vec<BTreeSet<NodeId>>,
    /// Items held by each node.
    holds: BTreeMap<NodeId, BTreeSet<usize>>,
    hi: BTreeMap<NodeId, usize>,
    lo: BTreeMap<NodeId, usize>,
}

impl State<'_> {
    fn load(&self, n: NodeId) -> usize {
        self.holds.get(&n).map_or(0, BTreeSet::len)
    }

    fn may(&self, item: usize, n: NodeId) -> bool {
        self.p.receivers.contains(&n)
            && self.p.allowed[item].as_ref().is_none_or(|a| a.contains(&n))
    }

    fn add(&mut self, item: usize, n: NodeId) {
        self.assign[item].insert(n);
        self.holds.entry(n).or_default().insert(item);
    }

    fn remove(&mut self, item: usize, n: NodeId) {
        self.assign[item].remove(&n);
        if let Some(h) = self.holds.get_mut(&n) {
            h.remove(&item);
        }
    }

    /// Where `n` stands in `item`'s keep order (later = dropped first).
    fn rank(&self, item: usize, n: NodeId) -> usize {
        self.p.current[item]
            .iter()
            .position(|x| *x == n)
            .unwrap_or(usize::MAX)
    }

    /// Gives `item` one more slot along the shortest augmenting path, if any.
    fn augment(&mut self, item: usize) -> bool {
        // parent[m] = None: `item` takes m; Some((q, from)): q's slot moves from → m.
        let mut parent: BTreeMap<NodeId, Option<(usize, NodeId)>> = BTreeMap::new();
        let mut queue = VecDeque::new();
        let starts: Vec<NodeId> = self
            .p
            .receivers
            .iter()
            .copied()
            .filter(|n| !self.assign[item].contains(n) && self.may(item, *n))
            .collect();
        for n in starts {
            parent.insert(n, None);
            if self.load(n) < self.hi[&n] {
                self.unwind(item, n, &parent);
                return true;
            }
            queue.push_back(n);
        }
        while let Some(n) = queue.pop_front() {
            let held: Vec<usize> = self.holds.get(&n).into_iter().flatten().copied().collect();
            for q in held {
                if q == item {
                    continue;
                }
                let next: Vec<NodeId> = self
                    .p
                    .receivers
                    .iter()
                    .copied()
                    .filter(|m| {
                        !parent.contains_key(m) && !self.assign[q].contains(m) && self.may(q, *m)
                    })
                    .collect();
                for m in next {
                    parent.insert(m, Some((q, n)));
                    if self.load(m) < self.hi[&m] {
                        self.unwind(item, m, &parent);
                        return true;
                    }
                    queue.push_back(m);
                }
            }
        }
        false
    }

    fn unwind(
        &mut self,
        item: usize,
        end: NodeId,
        parent: &BTreeMap<NodeId, Option<(usize, NodeId)>>,
    ) {
        let mut cur = end;
        loop {
            match parent[&cur] {
                None => {
                    self.add(item, cur);
                    return;
                }
                Some((q, from)) => {
                    self.remove(q, from);
                    self.add(q, cur);
                    cur = from;
                }
            }
        }
    }

    /// Gives node `n` (below its floor) one more slot, taken from a node above
    /// its floor along the shortest path, if any.
    fn pull(&mut self, n: NodeId) -> bool {
        // parent[m] = (q, to): q's slot moves m → to.
        let mut parent: BTreeMap<NodeId, (usize, NodeId)> = BTreeMap::new();
        let mut seen = BTreeSet::from([n]);
        let mut queue = VecDeque::from([n]);
        while let Some(x) = queue.pop_front() {
            for q in 0..self.assign.len() {
                if self.assign[q].contains(&x) || !self.may(q, x) {
                    continue;
                }
                let givers: Vec<NodeId> = self.assign[q]
                    .iter()
                    .copied()
                    .filter(|m| self.p.receivers.contains(m) && !seen.contains(m))
                    .collect();
                for m in givers {
                    seen.insert(m);
                    parent.insert(m, (q, x));
                    if self.load(m) > self.lo[&m] {
                        let mut cur = m;
                        while cur != n {
                            let (q, to) = parent[&cur];
                            self.remove(q, cur);
                            self.add(q, to);
                            cur = to;
                        }
                        return true;
                    }
                    queue.push_back(m);
                }
            }
        }
        false
    }

    /// The slot of `item` to drop among `among`: most loaded node, then latest in
    /// the keep order, then highest id.
    fn worst(&self, item: usize, among: impl Iterator<Item = NodeId>) -> Option<NodeId> {
        among.max_by_key(|n| (self.load(*n), self.rank(item, *n), *n))
    }
}

/// The assignment: each item's nodes.
pub(crate) fn solve(p: &Problem) -> Vec<BTreeSet<NodeId>> {
    let items = p.demand.len();
    let mut st = State {
        p,
        assign: vec![BTreeSet::new(); items],
        holds: BTreeMap::new(),
        hi: BTreeMap::new(),
        lo: BTreeMap::new(),
    };
    // 1. Keep the current slots on nodes that are still here and allowed.
    for (i, cur) in p.current.iter().enumerate() {
        for n in cur {
            let here = p.receivers.contains(n) || p.frozen.contains(n);
            if here && p.allowed[i].as_ref().is_none_or(|a| a.contains(n)) {
                st.add(i, *n);
            }
        }
    }
    // What each item can have: no more nodes than it may use.
    let demand: Vec<usize> = (0..items)
        .map(|i| {
            let usable = match &p.allowed[i] {
                None => p.receivers.len(),
                Some(a) => a.iter().filter(|n| p.receivers.contains(n)).count(),
            };
            let frozen_held = st.assign[i].iter().filter(|n| p.frozen.contains(n)).count();
            p.demand[i].min(usable + frozen_held)
        })
        .collect();
    // Items over their demand (a move under way: the new replica is in, the old
    // not yet out) drop slots on the most loaded nodes first, across all items at
    // once: dropping each item's worst in isolation picked the same node for all
    // of them and left another over its share, which then moved a replica that
    // needed no move (`adding_a_pod_moves_only_its_share`).
    loop {
        let worst = (0..items)
            .filter(|i| st.assign[*i].len() > demand[*i])
            .filter_map(|i| {
                let n = st.worst(i, st.assign[i].iter().copied())?;
                Some((st.load(n), st.rank(i, n), n, i))
            })
            .max();
        let Some((_, _, n, i)) = worst else { break };
        st.remove(i, n);
    }
    // 2. Shares: frozen nodes keep what they hold; receivers split the rest.
    let frozen_load: usize = p.frozen.iter().map(|n| st.load(*n)).sum();
    let total: usize = demand.iter().sum::<usize>().saturating_sub(frozen_load);
    let r = p.receivers.len().max(1);
    let (floor, ceil) = (total / r, total.div_ceil(r));
    for n in &p.receivers {
        st.hi.insert(*n, ceil);
        st.lo.insert(*n, floor);
    }
    for n in &p.frozen {
        let l = st.load(*n);
        st.hi.insert(*n, l);
        st.lo.insert(*n, l);
    }
    // 3. Cut receivers above the ceiling.
    for n in p.receivers.clone() {
        while st.load(n) > ceil {
            let held: Vec<usize> = st.holds[&n].iter().copied().collect();
            // An item not cut yet (cutting one twice makes it take a slot from a
            // full node later: a copy more than balance needs), then the one that
            // keeps this node least: latest in keep order.
            let Some(i) = held
                .into_iter()
                .max_by_key(|i| (st.assign[*i].len() >= demand[*i], st.rank(*i, n), *i))
            else {
                break;
            };
            st.remove(i, n);
        }
    }
    // 4. Fill every missing slot, then raise every node below the floor.
    for (i, want) in demand.iter().enumerate() {
        while st.assign[i].len() < *want && st.augment(i) {}
    }
    for n in p.receivers.clone() {
        while st.load(n) < floor && st.pull(n) {}
    }
    // 5. Fewest new slots among the balanced assignments.
    while st.improve() {}
    st.assign
}

/// An exchange of slots: item `.1` moves from node `.0` to the edge's head.
type Edge = (usize, usize);

impl State<'_> {
    /// 0 to keep a current slot, 1 for a new one (a copy, or a leadership moved).
    fn cost(&self, item: usize, n: NodeId) -> i64 {
        i64::from(!self.p.current[item].contains(&n))
    }

    /// Makes one exchange that lowers the number of new slots and keeps every
    /// node within its bounds, if there is one: a negative cycle of slot moves
    /// between nodes, or a negative path from a node above its floor to one below
    /// its ceiling (Bellman-Ford over the nodes; an edge a→b is the cheapest item
    /// on a that could move to b). Without this step the target is balanced but
    /// not the cheapest, and because it is recomputed every round the planner
    /// changed its mind on the way: adding a pod cost up to a third more copies
    /// than its share (`adding_a_pod_moves_only_its_share`). With it, each round's
    /// target is cheapest for the cluster as it is, so the copies made on the way
    /// never exceed what the first round's target needed.
    fn improve(&mut self) -> bool {
        let nodes: Vec<NodeId> = self.p.receivers.iter().copied().collect();
        let ix: BTreeMap<NodeId, usize> = nodes.iter().enumerate().map(|(k, n)| (*n, k)).collect();
        let k = nodes.len();
        // The cheapest item for each (from, to), and its weight.
        let mut best: BTreeMap<(usize, usize), (i64, usize)> = BTreeMap::new();
        for (i, held) in self.assign.iter().enumerate() {
            for a in held.iter().filter_map(|n| ix.get(n)) {
                let leave = self.cost(i, nodes[*a]);
                for (b, m) in nodes.iter().enumerate() {
                    if held.contains(m) || !self.may(i, *m) {
                        continue;
                    }
                    let w = self.cost(i, *m) - leave;
                    let e = best.entry((*a, b)).or_insert((w, i));
                    if w < e.0 {
                        *e = (w, i);
                    }
                }
            }
        }
        let edges: Vec<(usize, usize, i64, usize)> = best
            .into_iter()
            .map(|((a, b), (w, i))| (a, b, w, i))
            .collect();
        // Negative cycles first (every node a source), then paths from givers.
        for cycles in [true, false] {
            let mut dist: Vec<i64> = nodes
                .iter()
                .map(|n| {
                    if cycles || self.load(*n) > self.lo[n] {
                        0
                    } else {
                        i64::MAX
                    }
                })
                .collect();
            let mut pred: Vec<Option<Edge>> = vec![None; k];
            let mut last = None;
            for _ in 0..k {
                last = None;
                for (a, b, w, i) in &edges {
                    if dist[*a] != i64::MAX && dist[*a] + w < dist[*b] {
                        dist[*b] = dist[*a] + w;
                        pred[*b] = Some((*a, *i));
                        last = Some(*b);
                    }
                }
                if last.is_none() {
                    break;
                }
            }
            if let Some(mut v) = last {
                // Still relaxing after k rounds: v leads back into a negative cycle.
                for _ in 0..k {
                    v = pred[v].map_or(v, |(a, _)| a);
                }
                let mut cycle = Vec::new();
                let mut u = v;
                loop {
                    let Some((a, i)) = pred[u] else { return false };
                    cycle.push((a, u, i));
                    u = a;
                    if u == v {
                        break;
                    }
                }
                for (a, b, i) in cycle {
                    self.remove(i, nodes[a]);
                    self.add(i, nodes[b]);
                }
                return true;
            }
            if cycles {
                continue;
            }
            let end = (0..k)
                .filter(|b| dist[*b] < 0 && self.load(nodes[*b]) < self.hi[&nodes[*b]])
                .min_by_key(|b| (dist[*b], *b));
            if let Some(mut u) = end {
                while let Some((a, i)) = pred[u] {
                    self.remove(i, nodes[a]);
                    self.add(i, nodes[u]);
                    u = a;
                    if dist[u] == 0 && pred[u].is_none() {
                        break;
                    }
                }
                return true;
            }
        }
        false
    }
}
