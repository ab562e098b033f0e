//! The scope of a watch of a partitioned cluster: which partitions it spans,
//! the position it starts from, and which node serves each partition's part
//! (here, or as few other hosts as cover the rest). Pure but for reading
//! which groups this node hosts.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::api::ApiError;
use crate::api::AppState;
use crate::command::NodeId;
use crate::group::Group;
use crate::group::partition_group;
use crate::model::WatchPosition;
use crate::model::WatchQuery;
use crate::model::parse_partition_list;
use crate::placement::PartitionId;
use crate::placement::hash::partition_of;
use crate::placement::map::PlacementMap;

/// A part of the watch, and where it is served.
pub(super) enum Spec {
    /// A partition hosted here.
    Local(PartitionId, Arc<Group>),
    /// Partitions relayed from node `NodeId`.
    Remote(NodeId, Vec<PartitionId>),
}

/// The partitions a watch spans, from its query.
pub(super) fn spanned(q: &WatchQuery, map: &PlacementMap) -> Result<Vec<PartitionId>, ApiError> {
    let bad = |m: String| ApiError::bad("invalid_parameter", m);
    let check = |p: PartitionId| {
        if p >= map.partitions {
            Err(bad(format!(
                "partition {p} is not a partition of this cluster (0..{})",
                map.partitions
            )))
        } else {
            Ok(p)
        }
    };
    let asked: Option<Vec<PartitionId>> = match (&q.partition, &q.partitions) {
        (Some(_), Some(_)) => return Err(bad("give partition or partitions, not both".into())),
        (Some(p), None) => Some(vec![check(*p)?]),
        (None, Some(list)) => Some(
            parse_partition_list(list)
                .map_err(|e| bad(format!("partitions: {e}")))?
                .into_iter()
                .map(check)
                .collect::<Result<_, _>>()?,
        ),
        (None, None) => None,
    };
    match (&q.key, asked) {
        (Some(k), asked) => {
            let p = partition_of(k.as_bytes(), map.partitions);
            if asked.is_some_and(|a| !a.contains(&p)) {
                return Err(bad(format!("key {k:?} is in partition {p}, not watched")));
            }
            Ok(vec![p])
        }
        (None, Some(a)) => Ok(a),
        (None, None) => Ok((0..map.partitions).collect()),
    }
}

/// Where the watch starts: after the position asked for (`from_revisions`,
/// `from_revision` for a watch of one partition, or `Last-Event-ID`); the
/// partitions it does not name start now.
pub(super) fn start(
    q: &WatchQuery,
    last_event_id: Option<String>,
    parts: &[PartitionId],
) -> Result<WatchPosition, ApiError> {
    let bad = |m: String| ApiError::bad("invalid_parameter", m);
    if q.from_revision.is_some() && parts.len() > 1 {
        return Err(bad(format!(
            "from_revision names one revision, and this watch spans {} partitions, each with its own: resume with from_revisions=p:rev,… (the id of the last event received)",
            parts.len()
        )));
    }
    let pos = match (q.from_revision, &q.from_revisions, last_event_id) {
        (Some(_), Some(_), _) => {
            return Err(bad("give from_revision or from_revisions, not both".into()));
        }
        (Some(r), None, _) => WatchPosition(BTreeMap::from([(parts[0], r)])),
        (None, Some(s), _) => {
            WatchPosition::parse(s).map_err(|e| bad(format!("from_revisions: {e}")))?
        }
        (None, None, Some(id)) => match id.parse::<u64>() {
            Ok(r) if parts.len() == 1 => WatchPosition(BTreeMap::from([(parts[0], r)])),
            _ => WatchPosition::parse(&id).map_err(|e| bad(format!("Last-Event-ID: {e}")))?,
        },
        (None, None, None) => WatchPosition::default(),
    };
    if let Some(p) = pos.0.keys().find(|p| !parts.contains(p)) {
        return Err(bad(format!(
            "the position names partition {p}, which this watch does not span"
        )));
    }
    Ok(pos)
}

/// Which node serves each partition of `parts`: this one when it hosts it (as
/// a voter, or for a routed watch at all), else a host, as few hosts as cover
/// them. `avoid` names, per partition, the node a part just failed on: another
/// host is preferred.
pub(super) fn plan(
    state: &AppState,
    map: &PlacementMap,
    parts: &[PartitionId],
    routed: bool,
    avoid: &BTreeMap<PartitionId, NodeId>,
) -> Result<Vec<Spec>, ApiError> {
    let mut specs = Vec::new();
    let mut need: BTreeMap<PartitionId, Vec<NodeId>> = BTreeMap::new();
    for &p in parts {
        let Some(a) = map.of(p).filter(|a| a.formed) else {
            return Err(ApiError::Unavailable {
                code: "partition_forming",
                message: format!("partition {p} is being formed; retry shortly"),
                retry: true,
            });
        };
        let here = a
            .hosts
            .contains(&state.id)
            .then(|| state.groups.get(partition_group(p)))
            .flatten()
            .filter(|g| routed || crate::route::target::voter_here(state, g));
        let others: Vec<NodeId> = a.hosts.iter().copied().filter(|h| *h != state.id).collect();
        let preferred: Vec<NodeId> = others
            .iter()
            .copied()
            .filter(|h| avoid.get(&p) != Some(h))
            .collect();
        match here {
            Some(g) if routed || avoid.get(&p) != Some(&state.id) || others.is_empty() => {
                specs.push(Spec::Local(p, g));
            }
            _ if routed => {
                return Err(ApiError::Unavailable {
                    code: "wrong_node",
                    message: format!(
                        "node {} does not host partition {p} at placement epoch {} (its hosts: {:?}); retry",
                        state.id, map.epoch, a.hosts
                    ),
                    retry: true,
                });
            }
            _ if !preferred.is_empty() => {
                need.insert(p, preferred);
            }
            _ if !others.is_empty() => {
                need.insert(p, others);
            }
            _ => {
                return Err(ApiError::Unavailable {
                    code: "no_host",
                    message: format!("no node hosting partition {p} is known"),
                    retry: true,
                });
            }
        }
    }
    specs.extend(cover(&need).into_iter().map(|(n, ps)| Spec::Remote(n, ps)));
    Ok(specs)
}

/// Few nodes that together host every partition of `need` (partition → the
/// nodes it may be served by): greedily the node hosting most of those left,
/// the lower id on a tie. Each partition is given to exactly one node.
fn cover(need: &BTreeMap<PartitionId, Vec<NodeId>>) -> Vec<(NodeId, Vec<PartitionId>)> {
    let mut left: BTreeMap<PartitionId, &Vec<NodeId>> = need.iter().map(|(p, n)| (*p, n)).collect();
    let mut out = Vec::new();
    while !left.is_empty() {
        let mut count: BTreeMap<NodeId, usize> = BTreeMap::new();
        for nodes in left.values() {
            for n in nodes.iter() {
                *count.entry(*n).or_default() += 1;
            }
        }
        let Some((&best, _)) = count.iter().max_by(|a, b| a.1.cmp(b.1).then(b.0.cmp(a.0))) else {
            break;
        };
        let taken: Vec<PartitionId> = left
            .iter()
            .filter(|(_, nodes)| nodes.contains(&best))
            .map(|(p, _)| *p)
            .collect();
        for p in &taken {
            left.remove(p);
        }
        out.push((best, taken));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_nodes_cover_the_partitions_each_once() {
        let need = BTreeMap::from([
            (0, vec![2, 3]),
            (1, vec![3, 4]),
            (2, vec![3]),
            (3, vec![4, 5]),
            (4, vec![5]),
        ]);
        let c = cover(&need);
        assert_eq!(c, vec![(3, vec![0, 1, 2]), (5, vec![3, 4])]);
        let mut all: Vec<PartitionId> = c.into_iter().flat_map(|(_, ps)| ps).collect();
        all.sort_unstable();
        assert_eq!(all, vec![0, 1, 2, 3, 4]);
        assert!(cover(&BTreeMap::new()).is_empty());
    }

    fn query(f: impl FnOnce(&mut WatchQuery)) -> WatchQuery {
        let mut q = WatchQuery::default();
        f(&mut q);
        q
    }

    #[test]
    fn the_position_asked_for_names_only_watched_partitions() {
        let all: Vec<PartitionId> = (0..4).collect();
        let q = query(|q| q.from_revisions = Some("1:5,3:9".into()));
        assert_eq!(start(&q, None, &all).expect("valid").to_string(), "1:5,3:9");
        // An id from the stream resumes it.
        let p = start(&WatchQuery::default(), Some("0:2,2:7".into()), &all).expect("valid");
        assert_eq!(p.to_string(), "0:2,2:7");
        // One revision is one partition's.
        let q = query(|q| q.from_revision = Some(4));
        assert!(start(&q, None, &all).is_err());
        assert_eq!(start(&q, None, &[2]).expect("valid").to_string(), "2:4");
        assert_eq!(
            start(&WatchQuery::default(), Some("6".into()), &[2])
                .expect("valid")
                .to_string(),
            "2:6"
        );
        // Partitions outside the watch, and nonsense, are refused.
        assert!(start(&WatchQuery::default(), Some("0:1,3:1".into()), &[0, 1]).is_err());
        assert!(start(&WatchQuery::default(), Some("x".into()), &all).is_err());
    }
}
