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
//! the new slot in its place). A breadth-first search finds the shortest such
//! path, so most steps move one slot and none moves a slot that did not need to
//! move. A greedy fill without paths gets stuck when every node with room
//! already holds the item that needs a slot; the paths are what make "within one"
//! reachable from any start (`placement::tests`, 100 pods, 1,024 partitions).

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
    st.assign
}
