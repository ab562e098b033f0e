//! Replica moves (issue 21): in-process nodes started with `start_node()` on
//! free loopback ports, 6 partitions of 3 replicas. The placement driver on the
//! cluster group's leader moves replicas, learner first, one step at a time per
//! partition:
//! - nodes joining get their share, and leaderships spread over them;
//! - a node demoted to a learner of the cluster group (scale-in) is drained
//!   before it is removed, and deletes the replicas it no longer holds;
//! - a node removed from the cluster while down has its replicas rebuilt on the
//!   others.
//!
//! A request routed to a node that no longer hosts its partition (a stale map)
//! is refused `wrong_node` and applied nowhere.
//!
//! At each end every key written before reads back through every node, each
//! partition's voters are exactly the hosts the map names, and every node
//! hosts within one replica of the others.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use common::inproc::*;
use kvserver::NodeHandle;
use kvserver::group::partition_group;
use kvserver::placement::map::PlacementMap;
use kvserver::raft::raft_metrics;

const PARTITIONS: u32 = 6;
const SETTLE: Duration = Duration::from_secs(120);

/// Waits until placement settled over exactly `over`: every partition's group
/// has the three voters the map lists (no learner), those nodes host it and no
/// other live node does, the replicas are balanced within one per node, and so
/// are the leaderships. Returns the map.
async fn settled(nodes: &[&NodeHandle], over: &[u64]) -> anyhow::Result<PlacementMap> {
    let over: BTreeSet<u64> = over.iter().copied().collect();
    let what = format!("placement settled over nodes {over:?}");
    common::wait_for(&what, SETTLE, || async {
        let map: PlacementMap = (*nodes[0].state.store.placement()).clone();
        if map.epoch == 0 || nodes.iter().any(|h| *h.state.store.placement() != map) {
            return None;
        }
        let mut replicas: BTreeMap<u64, usize> = over.iter().map(|n| (*n, 0)).collect();
        let mut leaders: BTreeMap<u64, usize> = over.iter().map(|n| (*n, 0)).collect();
        for (p, a) in map.assigned.iter().enumerate() {
            let g = partition_group(p as u32);
            let hosts: BTreeSet<u64> = a.hosts.iter().copied().collect();
            if !a.formed || hosts.len() != 3 || !hosts.is_subset(&over) {
                return None;
            }
            for h in nodes {
                if h.groups.get(g).is_some() != hosts.contains(&h.id) {
                    return None;
                }
            }
            let leader = nodes
                .iter()
                .filter_map(|h| h.groups.get(g))
                .map(|grp| raft_metrics(&grp.raft))
                .find(|m| m.state == openraft::ServerState::Leader)?;
            let membership = leader.membership_config.membership();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            if voters != hosts || membership.learner_ids().next().is_some() {
                return None;
            }
            for n in &hosts {
                *replicas.get_mut(n)? += 1;
            }
            *leaders.get_mut(&leader.id)? += 1;
        }
        let spread = |m: &BTreeMap<u64, usize>| {
            m.values().max().copied().unwrap_or(0) - m.values().min().copied().unwrap_or(0)
        };
        (spread(&replicas) <= 1 && spread(&leaders) <= 1).then_some(map)
    })
    .await
}

/// Whether node `h` holds no directory of any partition group.
fn holds_no_group(h: &NodeHandle, dir: &std::path::Path) -> bool {
    let root = dir.join(format!("n{}", h.id)).join("groups");
    std::fs::read_dir(root).map_or(true, |d| d.count() == 0)
}

async fn put_all(via: &NodeHandle, keys: &[String]) -> anyhow::Result<()> {
    let http = common::client();
    for key in keys {
        let resp = http
            .put(format!("http://{}/v1/kv/{key}", via.api_addr))
            .json(&serde_json::json!({"value": key}))
            .send()
            .await?;
        let status = resp.status();
        anyhow::ensure!(status == 201, "{key}: {status} {}", resp.text().await?);
    }
    Ok(())
}

/// Every key reads back with its value through every node of `nodes`.
async fn read_all(nodes: &[&NodeHandle], keys: &[String]) -> anyhow::Result<()> {
    let http = common::client();
    for h in nodes {
        for key in keys {
            let got: serde_json::Value = http
                .get(format!("http://{}/v1/kv/{key}", h.api_addr))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            anyhow::ensure!(
                got["kv"]["value"] == key.as_str(),
                "{key} via node {}: {got}",
                h.id
            );
        }
    }
    Ok(())
}

/// A request routed with a stale map (what a node whose map is behind sends: a
/// request marked `x-kv-routed-by` to a node that no longer hosts the key's
/// partition) is refused with `wrong_node` and the epoch, never applied there;
/// the client's retry through any node finds the partition.
async fn stale_route_is_refused(nodes: &[&NodeHandle], map: &PlacementMap) -> anyhow::Result<()> {
    let http = common::client();
    let key = "stale/route";
    let p = kvserver::placement::hash::partition_of(key.as_bytes(), PARTITIONS);
    let hosts = &map.assigned[p as usize].hosts;
    let other = nodes
        .iter()
        .find(|h| !hosts.contains(&h.id))
        .ok_or_else(|| anyhow::anyhow!("a node that does not host partition {p}"))?;
    let resp = http
        .put(format!("http://{}/v1/kv/{key}", other.api_addr))
        .header("x-kv-routed-by", "1")
        .json(&serde_json::json!({"value": "misrouted"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "wrong_node", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("epoch {}", map.epoch)),
        "{message}"
    );
    let got = http
        .get(format!("http://{}/v1/kv/{key}", nodes[0].api_addr))
        .send()
        .await?;
    assert_eq!(got.status(), 404, "the misrouted write was applied nowhere");
    assert!(
        other.groups.get(partition_group(p)).is_none(),
        "node {} opened partition {p}",
        other.id
    );
    // Retried without the mark, through the same node: relayed to a host.
    let resp = http
        .put(format!("http://{}/v1/kv/{key}", other.api_addr))
        .json(&serde_json::json!({"value": "routed"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 201);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_follow_nodes_joining_leaving_and_lost() -> anyhow::Result<()> {
    logs();
    let dir = tempfile::tempdir()?;
    let mut nodes = partitioned(dir.path(), 3, PARTITIONS, 3).await?;
    {
        let all: Vec<&NodeHandle> = nodes.iter().collect();
        settled(&all, &[1, 2, 3]).await?;
    }
    let keys: Vec<String> = (0..30).map(|i| format!("moved/{i}")).collect();
    put_all(&nodes[0], &keys[..15]).await?;

    // Scale out: nodes 4 and 5 join the cluster group (learner, then voter), and
    // the driver copies their share of replicas onto them.
    for id in [4, 5] {
        let h = kvserver::start_node(kvserver::Config {
            partitions: PARTITIONS,
            replication_factor: 3,
            ..config(dir.path(), id)
        })
        .await?;
        nodes[0].raft.add_learner(id, member(&h), true).await?;
        kvserver::raft::caught_up(&nodes[0].raft, &[id], WAIT).await?;
        nodes.push(h);
    }
    nodes[0]
        .raft
        .change_membership(BTreeSet::from([1, 2, 3, 4, 5]), false)
        .await?;
    {
        let all: Vec<&NodeHandle> = nodes.iter().collect();
        let map = settled(&all, &[1, 2, 3, 4, 5]).await?;
        assert!(!map.hosted_by(5).is_empty() && !map.hosted_by(4).is_empty());
        put_all(&nodes[4], &keys[15..]).await?;
        read_all(&all, &keys).await?;
        stale_route_is_refused(&all, &map).await?;
    }

    // Scale in: node 5 is demoted to a learner of the cluster group; its replicas
    // move off it before it is removed, and it deletes them.
    nodes[0]
        .raft
        .change_membership(BTreeSet::from([1, 2, 3, 4]), true)
        .await?;
    {
        let all: Vec<&NodeHandle> = nodes.iter().collect();
        let map = settled(&all, &[1, 2, 3, 4]).await?;
        assert!(map.hosted_by(5).is_empty());
        common::wait_for("node 5 deleted its replicas", WAIT, || async {
            (nodes[4].groups.ids().is_empty() && holds_no_group(&nodes[4], dir.path()))
                .then_some(())
        })
        .await?;
        read_all(&all, &keys).await?;
    }
    nodes[0]
        .raft
        .change_membership(
            openraft::ChangeMembers::RemoveNodes(BTreeSet::from([5])),
            false,
        )
        .await?;
    let five = nodes.pop().ok_or_else(|| anyhow::anyhow!("node 5"))?;
    five.shutdown().await?;

    // Lost: node 2 stops and is removed from the cluster while down; its
    // replicas are rebuilt on 1, 3 and 4 from the surviving ones.
    let two = nodes.remove(1);
    two.shutdown().await?;
    nodes[0]
        .raft
        .change_membership(
            openraft::ChangeMembers::RemoveVoters(BTreeSet::from([2])),
            false,
        )
        .await?;
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    let map = settled(&all, &[1, 3, 4]).await?;
    assert!(map.hosted_by(2).is_empty());
    read_all(&all, &keys).await?;
    for h in nodes {
        h.shutdown().await?;
    }
    Ok(())
}
