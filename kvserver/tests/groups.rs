//! Many Raft groups per node (issue 21): three in-process nodes started with
//! `start_node()` on free loopback ports each host the cluster's group and four
//! partition groups over their one shared Raft log. Each group replicates on its
//! own (a write to one is in that group's store on every node and in no other
//! group's); the peer port carries the group a connection serves; a node that
//! does not host a group refuses it until it opens it; a restarted node reopens
//! its groups and catches up on what it missed.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use common::inproc::*;
use kvserver::NodeHandle;
use kvserver::command::KvNode;
use kvserver::command::now_ms;
use kvserver::group::GroupId;
use kvserver::raft::raft_metrics;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn partition_groups_replicate_independently_over_one_shared_log() -> anyhow::Result<()> {
    logs();
    let dir = tempfile::tempdir()?;
    let n1 = start(dir.path(), 1).await?;
    let n2 = start(dir.path(), 2).await?;
    let n3 = start(dir.path(), 3).await?;
    common::wait_for("node 1 leads the cluster group", WAIT, || async {
        (raft_metrics(&n1.raft).current_leader == Some(1)).then_some(())
    })
    .await?;
    for h in [&n2, &n3] {
        n1.raft.add_learner(h.id, member(h), true).await?;
    }
    kvserver::raft::caught_up(&n1.raft, &[2, 3], WAIT).await?;
    n1.raft
        .change_membership(BTreeSet::from([1, 2, 3]), false)
        .await?;
    // One partition: the cluster's own group, every key, leader first.
    let one: kvserver::model::PartitionsInfo = common::client()
        .get(format!("http://{}/v1/partitions", n2.api_addr))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!((one.epoch, one.partitions, one.items.len()), (0, 1, 1));
    assert_eq!(one.items[0].group, 0);
    assert_eq!(one.items[0].leader_id, Some(1));
    assert_eq!(one.items[0].nodes[0], 1);
    assert_eq!(
        (
            one.items[0].hash_first.as_str(),
            one.items[0].hash_last.as_str()
        ),
        ("0000000000000000", "ffffffffffffffff")
    );

    // Every node opens groups 1..=4; each is formed by a different node.
    let members: BTreeMap<u64, KvNode> =
        [&n1, &n2, &n3].iter().map(|h| (h.id, member(h))).collect();
    let groups: Vec<GroupId> = (1..=4).collect();
    for g in &groups {
        for h in [&n1, &n2, &n3] {
            h.groups.open(*g).await?;
        }
    }
    let nodes = [&n1, &n2, &n3];
    for g in &groups {
        let former = nodes[(*g as usize) % 3];
        former.groups.form(*g, members.clone()).await?;
    }
    for g in &groups {
        write(&nodes, *g, "k", &format!("v{g}")).await?;
    }
    for g in &groups {
        for h in nodes {
            replicated(h, *g, "k", &format!("v{g}")).await?;
        }
    }
    // Nothing crossed groups: the cluster group holds no key, each group one.
    for h in nodes {
        assert_eq!(h.state.store.get("k", now_ms()).await?, None);
        for g in &groups {
            let grp = h.groups.get(*g).context("hosted")?;
            assert_eq!(
                grp.store.key_count().await?,
                1,
                "group {g} on node {}",
                h.id
            );
        }
    }
    // One Raft log per node: the groups' directories hold databases, not logs.
    for id in 1..=3u64 {
        let data = dir.path().join(format!("n{id}"));
        assert!(data.join("raftlog").is_dir());
        for g in &groups {
            let gdir = data.join("groups").join(g.to_string());
            assert!(gdir.is_dir(), "{gdir:?}");
            assert!(!gdir.join("raftlog").exists(), "{gdir:?} has its own log");
        }
    }

    // A node that does not host a group refuses its connections until it opens
    // it: group 5, formed by node 1 alone, cannot replicate to node 2 as a learner
    // while node 2 refuses, and does once node 2 opens it.
    let alone: BTreeMap<u64, KvNode> = BTreeMap::from([(1, member(&n1))]);
    let g5 = n1.groups.form(5, alone).await?;
    g5.raft.add_learner(2, member(&n2), false).await?;
    let refused = || {
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&n2.state.metrics.registry.gather())
            .unwrap_or_default();
        text.lines()
            .any(|l| l.starts_with("kv_peer_refused_total") && l.contains("reason=\"no_group\""))
    };
    common::wait_for("node 2 refuses group 5", WAIT, || async {
        refused().then_some(())
    })
    .await?;
    assert!(n2.groups.get(5).is_none());
    n2.groups.open(5).await?;
    kvserver::raft::caught_up(&g5.raft, &[2], WAIT).await?;
    g5.raft
        .change_membership(BTreeSet::from([1, 2]), false)
        .await?;
    write(&[&n1, &n2], 5, "five", "5").await?;
    replicated(&n2, 5, "five", "5").await?;

    // Node 3 stops; every group keeps a majority and takes writes; node 3 comes
    // back with its groups reopened from its data directory and catches up.
    let (api3, raft3) = (n3.api_addr.to_string(), n3.raft_addr.to_string());
    n3.shutdown().await?;
    for g in &groups {
        write(&[&n1, &n2], *g, "while-down", &format!("w{g}")).await?;
    }
    // On the same addresses: the groups' memberships name them.
    let n3 = kvserver::start_node(kvserver::Config {
        api_addr: api3,
        raft_addr: raft3,
        ..config(dir.path(), 3)
    })
    .await?;
    assert_eq!(
        n3.groups.ids(),
        groups,
        "node 3 reopened the groups it hosts"
    );
    for g in &groups {
        replicated(&n3, *g, "while-down", &format!("w{g}")).await?;
        replicated(&n3, *g, "k", &format!("v{g}")).await?;
    }
    // And it votes and leads again in a group: hand one group's leadership to it.
    let g1 = n3.groups.get(1).context("hosted")?;
    let leader = leader_of(&[&n1, &n2, &n3], 1).await?;
    if leader != 3 {
        let h = [&n1, &n2]
            .into_iter()
            .find(|h| h.id == leader)
            .context("leader")?;
        let lg = h.groups.get(1).context("hosted")?;
        lg.raft.trigger().transfer_leader(3).await?;
    }
    common::wait_for("node 3 leads group 1", WAIT, || async {
        (raft_metrics(&g1.raft).current_leader == Some(3)).then_some(())
    })
    .await?;
    write(&[&n1, &n2, &n3], 1, "after", "a").await?;
    replicated(&n1, 1, "after", "a").await?;

    for h in [n1, n2, n3] {
        h.shutdown().await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cluster_leader_places_and_forms_the_partitions() -> anyhow::Result<()> {
    logs();
    let dir = tempfile::tempdir()?;
    let nodes = partitioned(dir.path(), 4, 8, 3).await?;
    let all: Vec<&NodeHandle> = nodes.iter().collect();
    // The driver writes the map once three nodes are members, the first host of
    // each partition forms its group, and the driver marks it formed.
    let map = common::wait_for(
        "every partition formed",
        Duration::from_secs(60),
        || async {
            let m = nodes[0].state.store.placement();
            (m.epoch > 0 && m.assigned.iter().all(|a| a.formed)).then_some(m)
        },
    )
    .await?;
    assert_eq!((map.partitions, map.replication_factor), (8, 3));
    // Every node applied the same map, and hosts exactly what it assigns it:
    // 8 partitions x 3 replicas over 4 nodes is 6 each.
    for h in &all {
        common::wait_for("the same map everywhere", WAIT, || async {
            (*h.state.store.placement() == *map).then_some(())
        })
        .await?;
        let hosted: Vec<GroupId> = map
            .hosted_by(h.id)
            .into_iter()
            .map(kvserver::group::partition_group)
            .collect();
        assert_eq!(hosted.len(), 6, "node {} hosts {hosted:?}", h.id);
        assert_eq!(h.groups.ids(), hosted, "node {}", h.id);
    }
    // Each partition's voters are exactly its hosts, and it takes writes.
    // The first hosts, who lead first, are balanced: two partitions each.
    let mut first: BTreeMap<u64, usize> = BTreeMap::new();
    for a in &map.assigned {
        *first.entry(a.hosts[0]).or_default() += 1;
    }
    assert_eq!(
        first.values().copied().collect::<Vec<_>>(),
        vec![2, 2, 2, 2],
        "{first:?}"
    );
    for (p, a) in map.assigned.iter().enumerate() {
        let g = kvserver::group::partition_group(p as u32);
        let hosts: Vec<&NodeHandle> = all
            .iter()
            .copied()
            .filter(|h| a.hosts.contains(&h.id))
            .collect();
        leader_of(&hosts, g).await?;
        for h in &hosts {
            let grp = h.groups.get(g).context("hosted")?;
            let voters: BTreeSet<u64> = raft_metrics(&grp.raft)
                .membership_config
                .membership()
                .voter_ids()
                .collect();
            assert_eq!(voters, a.hosts.iter().copied().collect(), "partition {p}");
        }
        write(&hosts, g, "p", &p.to_string()).await?;
        for h in &hosts {
            replicated(h, g, "p", &p.to_string()).await?;
        }
    }
    // Any node answers for every partition, and places any key.
    let http = common::client();
    let base = format!("http://{}", nodes[3].api_addr);
    let all: kvserver::model::PartitionsInfo = http
        .get(format!("{base}/v1/partitions"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(
        (all.epoch, all.partitions, all.items.len()),
        (map.epoch, 8, 8)
    );
    let mut last_hash = None;
    for (p, item) in all.items.iter().enumerate() {
        let hosts: BTreeSet<u64> = map.assigned[p].hosts.iter().copied().collect();
        assert_eq!(item.nodes.iter().copied().collect::<BTreeSet<_>>(), hosts);
        assert!(item.formed);
        let leader = item.leader_id.context("every partition has a leader")?;
        assert_eq!(item.nodes[0], leader, "leader first");
        assert!(item.revision.is_some_and(|r| r >= 1), "{item:?}");
        // The ranges tile the hash space in partition order.
        let first = u64::from_str_radix(&item.hash_first, 16)?;
        assert_eq!(first, last_hash.map_or(0, |l: u64| l + 1));
        last_hash = Some(u64::from_str_radix(&item.hash_last, 16)?);
    }
    assert_eq!(last_hash, Some(u64::MAX));
    for key in ["p", "orders/1", "users/ada"] {
        let at: kvserver::model::KeyPlacement = http
            .get(format!(
                "{base}/v1/partitions/key?key={}",
                key.replace('/', "%2F")
            ))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let p = kvserver::placement::hash::partition_of(key.as_bytes(), 8);
        assert_eq!(
            (at.partition, at.group),
            (p, kvserver::group::partition_group(p))
        );
        assert_eq!(at.nodes, all.items[p as usize].nodes);
    }
    let bad = http
        .get(format!("{base}/v1/partitions/key?key="))
        .send()
        .await?;
    assert_eq!(bad.status(), 400);
    let missing = http.get(format!("{base}/v1/partitions/key")).send().await?;
    assert_eq!(missing.status(), 400);

    // Metrics per partition: each node exports the partitions it hosts, and the
    // partitions' leaders add up to one each.
    let mut leading = 0;
    for h in &nodes {
        let text = http
            .get(format!("http://{}/metrics", h.api_addr))
            .send()
            .await?
            .text()
            .await?;
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("kv_partition_is_leader{"))
            .collect();
        assert_eq!(series.len(), 6, "node {}: {series:?}", h.id);
        leading += series.iter().filter(|l| l.ends_with(" 1")).count();
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("kv_partition_revision{"))
                .count(),
            6
        );
    }
    assert_eq!(leading, 8);

    // Any node serves any key: each write is proposed in its partition's group
    // (through whichever node it reached), names its partition, and reads back
    // from every node.
    let keys: Vec<String> = (0..40).map(|i| format!("routed/{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let via = &nodes[i % nodes.len()];
        let resp = http
            .put(format!("http://{}/v1/kv/{key}", via.api_addr))
            .json(&serde_json::json!({"value": key}))
            .send()
            .await?;
        assert_eq!(resp.status(), 201, "{key} via node {}", via.id);
        let p = kvserver::placement::hash::partition_of(key.as_bytes(), 8);
        let named = resp
            .headers()
            .get("x-kv-partition")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        assert_eq!(named, Some(p.to_string()), "{key}");
    }
    for key in &keys {
        let p = kvserver::placement::hash::partition_of(key.as_bytes(), 8);
        let g = kvserver::group::partition_group(p);
        for h in &nodes {
            let got: serde_json::Value = http
                .get(format!("http://{}/v1/kv/{key}", h.api_addr))
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            assert_eq!(got["kv"]["value"], key.as_str());
            // The key is only in its partition's group, on its hosts.
            let hosts = &map.assigned[p as usize].hosts;
            match h.groups.get(g) {
                Some(_) => {
                    assert!(hosts.contains(&h.id));
                    replicated(h, g, key, key).await?;
                    assert_eq!(h.state.store.get(key, now_ms()).await?, None);
                }
                None => assert!(!hosts.contains(&h.id)),
            }
        }
    }
    // A transaction within one partition runs there; across partitions it is refused.
    let (a, b) = {
        let mut by_part: BTreeMap<u32, &String> = BTreeMap::new();
        for k in &keys {
            by_part
                .entry(kvserver::placement::hash::partition_of(k.as_bytes(), 8))
                .or_insert(k);
        }
        let mut it = by_part.into_values();
        (
            it.next().context("a partition")?.clone(),
            it.next().context("another")?.clone(),
        )
    };
    let txn = |keys: &[&str]| {
        serde_json::json!({
            "compare": [],
            "success": keys.iter().map(|k| serde_json::json!({"op": "get", "key": k})).collect::<Vec<_>>(),
        })
    };
    let one = http
        .post(format!("{base}/v1/txn"))
        .json(&txn(&[&a]))
        .send()
        .await?;
    assert_eq!(one.status(), 200);
    let across = http
        .post(format!("{base}/v1/txn"))
        .json(&txn(&[&a, &b]))
        .send()
        .await?;
    assert_eq!(across.status(), 400);
    let body: serde_json::Value = across.json().await?;
    assert_eq!(body["error"]["code"], "cross_shard_txn", "{body}");
    // A listing spans every partition, in key order.
    let list: serde_json::Value = http
        .get(format!("{base}/v1/kv?prefix=routed/&keys_only=true"))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let mut sorted = keys.clone();
    sorted.sort();
    let listed: Vec<&str> = list["kvs"]
        .as_array()
        .context("kvs")?
        .iter()
        .filter_map(|kv| kv["key"].as_str())
        .collect();
    assert_eq!(listed, sorted, "{list}");
    // A backup spans the partitions: every one, in the partitioned format.
    let backup = http.get(format!("{base}/v1/backup")).send().await?;
    assert_eq!(backup.status(), 200);
    let bytes = backup.bytes().await?;
    let summary = kvserver::backup::BackupReader::open(&bytes[..])
        .await?
        .verify()
        .await?;
    assert_eq!(
        summary.partitions.as_ref().map(|p| p.len() as u64),
        Some(u64::from(map.partitions)),
        "{summary:?}"
    );
    assert!(summary.keys >= keys.len() as u64, "{summary:?}");

    // The map is the cluster group's state: a restarted node reads it back.
    let mut nodes = nodes;
    let last = nodes.pop().context("four nodes")?;
    let (api, raft) = (last.api_addr.to_string(), last.raft_addr.to_string());
    last.shutdown().await?;
    let back = kvserver::start_node(kvserver::Config {
        api_addr: api,
        raft_addr: raft,
        partitions: 8,
        replication_factor: 3,
        ..config(dir.path(), 4)
    })
    .await?;
    assert_eq!(*back.state.store.placement(), *map);
    back.shutdown().await?;
    for h in nodes {
        h.shutdown().await?;
    }
    Ok(())
}
