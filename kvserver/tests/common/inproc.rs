//! In-process nodes for the partition tests (issue 21): nodes started with
//! `start_node()` on free loopback ports, a cluster of them formed learner first,
//! and helpers that find a group's leader, write through it and wait until a
//! write reached a node's replica.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use kvserver::NodeHandle;
use kvserver::command::Command;
use kvserver::command::KvNode;
use kvserver::command::now_ms;
use kvserver::group::GroupId;
use kvserver::raft::raft_metrics;

pub const WAIT: Duration = Duration::from_secs(20);

/// The nodes' logs under `RUST_LOG`, shown for a failing test.
pub fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn config(dir: &std::path::Path, id: u64) -> kvserver::Config {
    kvserver::Config {
        node_id: Some(id),
        cluster_id: "groups".into(),
        data_dir: dir.join(format!("n{id}")),
        api_addr: "127.0.0.1:0".into(),
        raft_addr: "127.0.0.1:0".into(),
        bootstrap: id == 1,
        ..kvserver::Config::default()
    }
}

pub fn member(h: &NodeHandle) -> KvNode {
    KvNode {
        api_addr: h.api_addr.to_string(),
        raft_addr: h.raft_addr.to_string(),
    }
}

pub fn put(key: &str, value: &str) -> Command {
    Command::Put {
        key: key.into(),
        value: value.into(),
        expires_at_ms: None,
        if_revision: None,
        now_ms: now_ms(),
    }
}

/// The node among `nodes` that all of them see leading group `g`.
pub async fn leader_of(nodes: &[&NodeHandle], g: GroupId) -> anyhow::Result<u64> {
    super::wait_for(&format!("a leader of group {g}"), WAIT, || async {
        let seen: BTreeSet<Option<u64>> = nodes
            .iter()
            .map(|h| {
                h.groups
                    .get(g)
                    .and_then(|grp| raft_metrics(&grp.raft).current_leader)
            })
            .collect();
        match seen.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(l)] if nodes.iter().any(|h| h.id == *l) => Some(*l),
            _ => None,
        }
    })
    .await
}

/// Writes `key` to group `g` through its leader among `nodes`.
pub async fn write(
    nodes: &[&NodeHandle],
    g: GroupId,
    key: &str,
    value: &str,
) -> anyhow::Result<()> {
    let leader = leader_of(nodes, g).await?;
    let h = nodes
        .iter()
        .find(|h| h.id == leader)
        .context("the leader is one of the nodes")?;
    let grp = h.groups.get(g).context("the leader hosts the group")?;
    kvserver::raft::propose(&grp.raft, put(key, value), Duration::from_secs(2))
        .await
        .with_context(|| format!("write {key} to group {g}"))?;
    Ok(())
}

/// Waits until `key` has `value` in group `g`'s store on node `h`.
pub async fn replicated(h: &NodeHandle, g: GroupId, key: &str, value: &str) -> anyhow::Result<()> {
    let grp = h.groups.get(g).context("the node hosts the group")?;
    super::wait_for(
        &format!("{key} in group {g} on node {}", h.id),
        WAIT,
        || async {
            match grp.store.get(key, now_ms()).await {
                Ok(Some(kv)) if kv.value == value => Some(()),
                _ => None,
            }
        },
    )
    .await
}

pub async fn start(dir: &std::path::Path, id: u64) -> anyhow::Result<NodeHandle> {
    Ok(kvserver::start_node(config(dir, id)).await?)
}

/// Starts `n` in-process nodes configured with `partitions` and `rf`, node 1
/// forming the cluster and the others joining it (learner first, then voters).
pub async fn partitioned(
    dir: &std::path::Path,
    n: u64,
    partitions: u32,
    rf: u32,
) -> anyhow::Result<Vec<NodeHandle>> {
    let mut nodes = Vec::new();
    for id in 1..=n {
        nodes.push(
            kvserver::start_node(kvserver::Config {
                partitions,
                replication_factor: rf,
                ..config(dir, id)
            })
            .await?,
        );
    }
    let first = &nodes[0];
    super::wait_for("node 1 leads the cluster group", WAIT, || async {
        (raft_metrics(&first.raft).current_leader == Some(1)).then_some(())
    })
    .await?;
    if partitions > 1 {
        // Until the partitions are placed nothing is served: a key written to the
        // cluster group now would vanish behind the map.
        let early = super::client()
            .put(format!("http://{}/v1/kv/early", first.api_addr))
            .json(&serde_json::json!({"value": "x"}))
            .send()
            .await?;
        assert_eq!(early.status(), 503);
        let body: serde_json::Value = early.json().await?;
        assert_eq!(body["error"]["code"], "placement_pending", "{body}");
    }
    for h in &nodes[1..] {
        first.raft.add_learner(h.id, member(h), true).await?;
    }
    let others: Vec<u64> = nodes[1..].iter().map(|h| h.id).collect();
    kvserver::raft::caught_up(&first.raft, &others, WAIT).await?;
    first
        .raft
        .change_membership((1..=n).collect::<BTreeSet<_>>(), false)
        .await?;
    Ok(nodes)
}
