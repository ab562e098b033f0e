//! Placement on paper: runs the placement planner (`kvserver::placement`) over
//! simulated clusters and prints, per pod count, what each pod holds and leads
//! and what one scaling step moves. Writes go to a partition's leader, so with
//! leaderships spread evenly a cluster's write capacity grows with its pods until
//! partitions run out; data per pod is replicas per pod times a partition's size.
//! Every move is carried out at once and learners catch up at once: the figures
//! are the planner's decisions, not timings.
//!
//!   cargo run --release -p kvserver --example placement_sim [partitions] [rf] [max pods]

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use kvserver::placement::GroupView;
use kvserver::placement::Move;
use kvserver::placement::NodeId;
use kvserver::placement::NodeState;
use kvserver::placement::Observed;
use kvserver::placement::initial;
use kvserver::placement::plan;

/// Moves carried out until the planner has nothing left to do.
#[derive(Default)]
struct Moved {
    copies: usize,
    removals: usize,
    transfers: usize,
}

fn settle(obs: &mut Observed) -> Moved {
    let mut moved = Moved::default();
    for _ in 0..10_000 {
        let p = plan(obs);
        if p.settled() {
            return moved;
        }
        for m in p.moves {
            let g = &mut obs.groups[m.partition() as usize];
            match m {
                Move::AddLearner { node, .. } => {
                    g.learners.insert(node);
                    moved.copies += 1;
                }
                Move::Promote { node, .. } => {
                    g.learners.remove(&node);
                    g.voters.insert(node);
                }
                Move::RemoveLearner { node, .. } => {
                    g.learners.remove(&node);
                }
                Move::RemoveVoter { node, .. } => {
                    g.voters.remove(&node);
                    moved.removals += 1;
                }
                Move::TransferLeader { to, .. } => {
                    g.leader = Some(to);
                    moved.transfers += 1;
                }
            }
            // Caught up at once.
            g.lag = g
                .voters
                .iter()
                .chain(&g.learners)
                .map(|n| (*n, 0))
                .collect();
        }
    }
    eprintln!("the planner did not settle");
    std::process::exit(1);
}

/// (min, max) replicas and leaderships per pod.
fn spread(obs: &Observed) -> ((usize, usize), (usize, usize)) {
    let mut replicas: BTreeMap<NodeId, usize> = obs.nodes.keys().map(|n| (*n, 0)).collect();
    let mut leaders = replicas.clone();
    for g in &obs.groups {
        for n in &g.voters {
            *replicas.entry(*n).or_default() += 1;
        }
        if let Some(l) = g.leader {
            *leaders.entry(l).or_default() += 1;
        }
    }
    let range = |m: &BTreeMap<NodeId, usize>| {
        (
            m.values().min().copied().unwrap_or(0),
            m.values().max().copied().unwrap_or(0),
        )
    };
    (range(&replicas), range(&leaders))
}

fn main() -> Result<(), String> {
    let args = std::env::args()
        .skip(1)
        .map(|a| a.parse().map_err(|_| format!("not a number: {a}")))
        .collect::<Result<Vec<usize>, String>>()?;
    let partitions = args.first().copied().unwrap_or(64) as u32;
    let rf = args.get(1).copied().unwrap_or(3);
    let max_pods = args.get(2).copied().unwrap_or(12) as u64;
    let start = rf as u64;
    let pods: BTreeSet<NodeId> = (0..start).collect();
    let groups = initial(&pods, partitions, rf)
        .iter()
        .map(|members| GroupView::formed(members))
        .collect();
    let mut obs = Observed {
        replication_factor: rf,
        nodes: pods.iter().map(|n| (*n, NodeState::Active)).collect(),
        groups,
        max_copies: 64,
    };
    let total = partitions as usize * rf;
    println!("{partitions} partitions, RF {rf}: {total} replicas");
    println!();
    println!(
        "| pods | replicas per pod | share of the data per pod | leaderships per pod | copies to get here | share of all replicas copied | replicas removed | leadership transfers |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let mut moved = Moved::default();
    for n in start..=max_pods {
        if n > start {
            obs.nodes.insert(n - 1, NodeState::Active);
            moved = settle(&mut obs);
        }
        let ((rmin, rmax), (lmin, lmax)) = spread(&obs);
        println!(
            "| {n} | {rmin}–{rmax} | {:.1} % | {lmin}–{lmax} | {} | {:.1} % | {} | {} |",
            100.0 * rmax as f64 / partitions as f64,
            moved.copies,
            100.0 * moved.copies as f64 / total as f64,
            moved.removals,
            moved.transfers,
        );
    }
    Ok(())
}
