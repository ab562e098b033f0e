//! The placement driver, and each node's side of placement. Every node runs
//! [`run`]: it follows the placement map the cluster group applied
//! (`crate::placement::map`) and opens the partition groups the map assigns it;
//! a partition's first host forms the group. On the cluster group's leader the
//! same loop also drives placement: it writes the first map once
//! `initial_nodes` (at least `replication_factor`) nodes are members, and marks partitions formed once
//! their groups report their full voter set, so that no node forms one twice.
//!
//! Why inside kvserver rather than the operator: the map must be changed
//! consistently with the cluster group (a compare-and-set on its epoch in the
//! log), every node needs it to route keys, and multi-process tests and
//! non-Kubernetes users need placement without the operator. The operator's
//! part is the pods: it reports and (next) marks pods leaving or lost.
//!
//! Who may change the map: only this loop on the cluster group's leader, by
//! proposing locally (`Command::Place` is refused from clients and peers, see
//! `crate::command::check` and `crate::auth::check_command`). Peers answer its
//! `Groups` request only to members (`crate::peer::server`).

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use tokio::task::JoinHandle;

use super::GroupId;
use super::Groups;
use super::partition_group;
use crate::command::Command;
use crate::command::NodeId;
use crate::command::Outcome;
use crate::command::now_ms;
use crate::placement::map::PlacementMap;
use crate::raft;
use crate::store::Store;

/// How often the loop looks again without a new map (retries, formed checks).
const TICK: Duration = Duration::from_millis(500);

/// How often each hosted group's keys and bytes are counted.
const COUNT_EVERY: Duration = Duration::from_secs(10);

/// Follows the placement map of `cluster` (the cluster group's store) until
/// `stop`, hosting and forming this node's groups, and driving placement while
/// this node leads the cluster group.
pub async fn run(groups: Arc<Groups>, cluster: Store, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    let mut maps = cluster.watch_placement();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut forming: HashMap<GroupId, JoinHandle<()>> = HashMap::new();
    let mut warned_mismatch = false;
    let mut count = tokio::time::interval(COUNT_EVERY);
    count.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut counting: Option<JoinHandle<()>> = None;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = tick.tick() => {}
            changed = maps.changed() => if changed.is_err() { break },
            _ = count.tick() => {
                // In its own task: a scan of a large group must not hold placement.
                if counting.as_ref().is_none_or(|c| c.is_finished()) {
                    let groups = groups.clone();
                    counting = Some(tokio::spawn(async move { groups.count().await }));
                }
                continue;
            }
        }
        let map = cluster.placement();
        if map.epoch > 0 && map.partitions != groups.ctx.config.partitions && !warned_mismatch {
            warned_mismatch = true;
            tracing::error!(
                configured = groups.ctx.config.partitions,
                placed = map.partitions,
                "this node is configured with a partition count other than the cluster's; the cluster's holds (it is fixed for the cluster's life)"
            );
        }
        host(&groups, &map, &mut forming).await;
        if raft::raft_metrics(&groups.cluster).state == ServerState::Leader
            && let Err(e) = drive(&groups, &map).await
        {
            tracing::debug!(error = %e, "placement: this round did not finish; retrying");
        }
    }
    for (_, f) in forming {
        f.abort();
    }
    if let Some(c) = counting {
        c.abort();
    }
}

/// Opens the groups `map` assigns this node, and forms those it is the first
/// host of that are not formed yet (each in its own task: one partition waiting
/// for a slow host does not hold the others).
async fn host(
    groups: &Arc<Groups>,
    map: &PlacementMap,
    forming: &mut HashMap<GroupId, JoinHandle<()>>,
) {
    let me = groups.ctx.node_id;
    forming.retain(|_, f| !f.is_finished());
    if map.epoch > 0 {
        unhost(groups, map).await;
    }
    let addrs = groups.members();
    for p in map.hosted_by(me) {
        let id = partition_group(p);
        if groups.get(id).is_none()
            && let Err(e) = groups.open(id).await
        {
            tracing::warn!(group = id, error = %e, "cannot open a group this node hosts");
            continue;
        }
        let Some(a) = map.of(p) else { continue };
        if a.formed || a.hosts.first() != Some(&me) || forming.contains_key(&id) {
            continue;
        }
        // Formed here already; the driver has yet to mark it in the map.
        let wanted: BTreeSet<NodeId> = a.hosts.iter().copied().collect();
        if groups.get(id).is_some_and(|g| {
            raft::raft_metrics(&g.raft)
                .membership_config
                .membership()
                .voter_ids()
                .collect::<BTreeSet<_>>()
                == wanted
        }) {
            continue;
        }
        let Some(hosts) = a
            .hosts
            .iter()
            .map(|n| addrs.get(n).map(|k| (*n, k.clone())))
            .collect::<Option<BTreeMap<_, _>>>()
        else {
            tracing::debug!(
                group = id,
                "a host of the group is not a cluster member (yet)"
            );
            continue;
        };
        let groups = groups.clone();
        forming.insert(
            id,
            tokio::spawn(async move {
                match groups.form(id, hosts).await {
                    Ok(_) => tracing::info!(group = id, "formed a partition group"),
                    Err(e) => {
                        tracing::debug!(group = id, error = %e, "forming the group: retrying")
                    }
                }
            }),
        );
    }
}

/// Removes the groups this node hosts that `map` no longer assigns it (the
/// driver drops a host only once the group's membership no longer names it, see
/// `super::rebalance`). The map a node applied may be behind the cluster's, most
/// of all right after a restart, while the cluster group replays its log: so the
/// node first catches up with the cluster group's leader (a read barrier) and
/// removes only what the map it then holds still leaves out.
async fn unhost(groups: &Groups, map: &PlacementMap) {
    let me = groups.ctx.node_id;
    let hosted = |m: &PlacementMap, id: GroupId| {
        super::group_partition(id).is_some_and(|p| m.of(p).is_some_and(|a| a.hosts.contains(&me)))
    };
    let extra: Vec<GroupId> = groups
        .ids()
        .into_iter()
        .filter(|id| !hosted(map, *id))
        .collect();
    if extra.is_empty() {
        return;
    }
    if let Err(e) = groups.cluster_barrier().await {
        tracing::debug!(error = %e, "not caught up with the cluster group; removing no group yet");
        return;
    }
    let current = groups.cluster_store.placement();
    for id in extra.into_iter().filter(|id| !hosted(&current, *id)) {
        if let Err(e) = groups.remove(id).await {
            tracing::warn!(group = id, error = %e, "cannot remove a group this node no longer hosts");
        }
    }
}

/// One round of the driver on the cluster group's leader.
async fn drive(groups: &Groups, map: &PlacementMap) -> Result<(), String> {
    let config = &groups.ctx.config;
    if map.epoch == 0 {
        if config.partitions <= 1 {
            return Ok(());
        }
        // A restored cluster: this node holds the backup, so it forms every
        // partition from it alone, at once; the replicas are copied to the other
        // members as they join (`super::rebalance`), like lost replicas are.
        if groups
            .restoring()
            .await
            .map_err(|e| e.to_string())?
            .is_some()
        {
            let me = groups.ctx.node_id;
            let first = PlacementMap {
                epoch: 1,
                partitions: config.partitions,
                replication_factor: config.replication_factor,
                assigned: (0..config.partitions)
                    .map(|_| crate::placement::map::Assignment {
                        hosts: vec![me],
                        formed: false,
                    })
                    .collect(),
            };
            tracing::info!(
                partitions = first.partitions,
                "placing the restored partitions on this node, to be copied to the members as they join"
            );
            return place(groups, first).await;
        }
        // The partition count is fixed when the cluster is created: keys a cluster
        // of one group already holds would vanish behind a new map.
        if groups.cluster_revision() > 0 {
            static SAID: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
            if !SAID.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::error!(
                    partitions = config.partitions,
                    "this cluster was created with one partition and holds keys: it stays one partition (the count is fixed for a cluster's life)"
                );
            }
            return Err(format!(
                "partitions: {} is configured, but this cluster was created with one partition and holds keys; the partition count is fixed for a cluster's life",
                config.partitions
            ));
        }
        let nodes: BTreeSet<NodeId> = groups.members().into_keys().collect();
        let wait_for = config.initial_nodes.max(config.replication_factor);
        if nodes.len() < wait_for as usize {
            return Ok(());
        }
        let first = PlacementMap::initial(&nodes, config.partitions, config.replication_factor);
        tracing::info!(
            partitions = first.partitions,
            replication_factor = first.replication_factor,
            nodes = nodes.len(),
            "placing the partitions"
        );
        return place(groups, first).await;
    }
    if map.assigned.iter().all(|a| a.formed) {
        return super::rebalance::rebalance(groups, map).await;
    }
    let reports = groups.cluster_reports().await;
    let mut next = map.clone();
    let mut marked = 0;
    for (p, a) in next.assigned.iter_mut().enumerate() {
        if a.formed {
            continue;
        }
        let id = partition_group(p as u32);
        let hosts: BTreeSet<NodeId> = a.hosts.iter().copied().collect();
        let formed = reports.iter().any(|r| {
            r.group == id
                && r.leader == Some(r.node)
                && !r.joint
                && r.voters.iter().copied().collect::<BTreeSet<_>>() == hosts
        });
        if formed {
            a.formed = true;
            marked += 1;
        }
    }
    if marked == 0 {
        return Ok(());
    }
    next.epoch = map.epoch + 1;
    tracing::info!(formed = marked, epoch = next.epoch, "partitions formed");
    place(groups, next).await
}

/// Proposes `map` as the next placement on the cluster group.
pub(super) async fn place(groups: &Groups, map: PlacementMap) -> Result<(), String> {
    let epoch = map.epoch;
    let cmd = Command::Place {
        map,
        now_ms: now_ms(),
    };
    let r = raft::propose(&groups.cluster, cmd, raft::CONFIRM_WAIT)
        .await
        .map_err(|e| e.to_string())?;
    match r.data.outcome {
        Some(Outcome::Placed { refused: None, .. }) => Ok(()),
        Some(Outcome::Placed {
            refused: Some(why), ..
        }) => Err(format!("placement epoch {epoch} refused: {why}")),
        other => Err(format!(
            "placement epoch {epoch}: unexpected outcome {other:?}"
        )),
    }
}
