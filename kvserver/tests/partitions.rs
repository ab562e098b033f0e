//! Partitions across real processes (issue 21): five `kvserver` processes with
//! TLS on both ports and bearer tokens, 16 partitions of 3 replicas placed over
//! all five at once (`initial_nodes`). Every node answers every key; each
//! partition's replicas are exactly the nodes `/v1/partitions/key` names; a
//! listing, batch get and prefix delete span every partition (merged in key
//! order, continued across partitions, in the order asked); a `kill -9` of the
//! node leading some partitions keeps every partition serving from every live
//! node, and the partitions it did not lead take writes at once.
//!
//! A watch spans every partition too: one stream merging them, each event
//! naming its partition, resumable from its position on any node, counted
//! once against the watcher limits, and riding through the loss of a node it
//! relayed partitions from.

mod common;

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::Context;
use common::Cluster;
use common::sse::SseReader;
use kvserver::model::WatchPosition;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

/// `GET /v1/partitions` on node `id`, once every partition is formed and led.
async fn placed(c: &Cluster, id: u64) -> anyhow::Result<Value> {
    common::wait_for(
        "every partition formed and led",
        Duration::from_secs(90),
        || async {
            let (status, body) = c.get(id, "/v1/partitions").await.ok()?;
            let items = body["items"].as_array()?;
            let ready = status == 200
                && items.len() == 16
                && items
                    .iter()
                    .all(|i| i["formed"] == true && i["leader_id"].is_u64());
            ready.then_some(body)
        },
    )
    .await
}

/// Retries a request answered 503 (which asks a client to retry: an election
/// on a loaded machine) for up to [`WAIT`]; any other answer is returned as is.
async fn settled<F, Fut>(what: &str, f: F) -> anyhow::Result<(u16, Value)>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(u16, Value)>>,
{
    let mut last = (0, Value::Null);
    let got = common::wait_for(what, WAIT, || async {
        match f().await {
            Ok((503, _)) | Err(_) => None,
            Ok(answer) => Some(answer),
        }
    })
    .await;
    match got {
        Ok(answer) => Ok(answer),
        Err(e) => {
            if let Ok(a) = f().await {
                last = a;
            }
            anyhow::bail!("{e}: last answer {last:?}")
        }
    }
}

/// One change a watch delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    partition: u32,
    revision: u64,
    key: String,
    value: Option<String>,
}

/// Reads changes off `w` until `done` holds for those read (each checked: it
/// names its key's partition, each partition's revisions grow, and its id is
/// the stream's position); returns them and the last id.
async fn read_until(
    w: &mut SseReader,
    what: &str,
    done: impl Fn(&[Seen]) -> bool,
) -> anyhow::Result<(Vec<Seen>, String)> {
    let mut seen: Vec<Seen> = Vec::new();
    let mut position = WatchPosition::default();
    let mut last_id = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done(&seen) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let Some(ev) = w
            .next(left)
            .await
            .with_context(|| format!("{what}: {} changes read: {seen:?}", seen.len()))?
        else {
            anyhow::bail!("{what}: the stream ended after {seen:?}");
        };
        anyhow::ensure!(ev.event != "dropped", "{what}: dropped: {}", ev.data);
        let body = common::sse::json(&ev);
        let s = Seen {
            partition: body["partition"].as_u64().context("partition")? as u32,
            revision: body["revision"].as_u64().context("revision")?,
            key: body["key"].as_str().context("key")?.to_string(),
            value: body["kv"]["value"].as_str().map(str::to_string),
        };
        assert_eq!(
            s.partition,
            kvserver::placement::hash::partition_of(s.key.as_bytes(), 16),
            "{what}: {s:?}"
        );
        if let Some(prev) = position.0.get(&s.partition) {
            assert!(s.revision > *prev, "{what}: {s:?} after revision {prev}");
        }
        position.0.insert(s.partition, s.revision);
        // One key per revision here: every event ends its revision and carries
        // the position, whose entry for its partition is its revision.
        let id = ev.id.context("id")?;
        let at = WatchPosition::parse(&id).map_err(anyhow::Error::msg)?;
        assert_eq!(at.0.get(&s.partition), Some(&s.revision), "{what}: {id}");
        last_id = id;
        seen.push(s);
    }
    Ok((seen, last_id))
}

/// The watch streams node `id` serves (`kv_watch_streams`).
async fn watch_streams(c: &Cluster, id: u64) -> anyhow::Result<u64> {
    let text = c
        .http
        .get(c.url(id, "/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find_map(|l| l.strip_prefix("kv_watch_streams "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
        .context("kv_watch_streams in /metrics")
}

async fn watch_on(
    c: &Cluster,
    id: u64,
    path: &str,
    from: Option<&str>,
) -> anyhow::Result<SseReader> {
    SseReader::resume(&c.http, &c.url(id, path), from)
        .await?
        .map_err(|(status, body)| anyhow::anyhow!("watch on node {id}: {status} {body}"))
}

fn nodes_of(item: &Value) -> Vec<u64> {
    item["nodes"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_u64).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_sixteen_partitions_serve_every_key_through_a_node_loss() -> anyhow::Result<()> {
    let mut c = Cluster::new(&[
        "--set",
        "partitions=16",
        "--set",
        "replication_factor=3",
        "--set",
        "initial_nodes=5",
        // A merged watch counts once per node it touches, not once per partition.
        "--set",
        "limits.max_watchers_per_principal=2",
    ]);
    c.form(5).await?;
    let all = placed(&c, 1).await?;
    assert_eq!(all["partitions"], 16);
    // Placed over all five: 48 replicas, 9 or 10 per node; replicas are the voters.
    let mut per_node: BTreeMap<u64, usize> = BTreeMap::new();
    let items = all["items"].as_array().context("items")?.clone();
    for item in &items {
        let nodes = nodes_of(item);
        assert_eq!(nodes.len(), 3, "{item}");
        let voters: BTreeSet<u64> = item["voters"]
            .as_array()
            .context("voters")?
            .iter()
            .filter_map(Value::as_u64)
            .collect();
        assert_eq!(voters, nodes.iter().copied().collect(), "{item}");
        for n in nodes {
            *per_node.entry(n).or_default() += 1;
        }
    }
    assert_eq!(per_node.len(), 5, "{per_node:?}");
    assert!(
        per_node.values().all(|n| (9..=10).contains(n)),
        "{per_node:?}"
    );

    // Every node takes writes for every partition and answers every key.
    let keys: Vec<String> = (0..64).map(|i| format!("part/{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        let via = (i as u64 % 5) + 1;
        let (status, body) = settled(key, || c.put_kv(via, key, "v1")).await?;
        // 200 when a try answered 503 had been applied after all (a retried put).
        assert!(matches!(status, 200 | 201), "{key} via node {via}: {body}");
    }
    for key in &keys {
        for id in 1..=5 {
            let path = format!("/v1/kv/{key}");
            let (status, body) = settled(key, || c.get(id, &path)).await?;
            assert_eq!(
                (status, body["kv"]["value"].as_str()),
                (200, Some("v1")),
                "{key} on {id}"
            );
        }
    }
    // Keys and bytes per partition (counted in the background every 10 s), and
    // each node's share in /status.
    let mut want: BTreeMap<u64, u64> = BTreeMap::new();
    for key in &keys {
        *want
            .entry(u64::from(kvserver::placement::hash::partition_of(
                key.as_bytes(),
                16,
            )))
            .or_default() += 1;
    }
    let counted = common::wait_for("every partition's keys counted", WAIT, || async {
        let (_, body) = c.get(2, "/v1/partitions").await.ok()?;
        let items = body["items"].as_array()?.clone();
        let got: BTreeMap<u64, u64> = items
            .iter()
            .filter_map(|i| Some((i["partition"].as_u64()?, i["keys"].as_u64()?)))
            .filter(|(_, k)| *k > 0)
            .collect();
        (got == want).then_some(items)
    })
    .await?;
    for item in &counted {
        let keys = item["keys"].as_u64().unwrap_or(0);
        // "part/N" and "v1": at least 8 bytes a key.
        assert!(item["bytes"].as_u64().unwrap_or(0) >= keys * 8, "{item}");
    }
    let (_, status) = c.get(1, "/status").await?;
    let share = &status["partitions"];
    assert_eq!(share["count"], 16, "{status}");
    assert_eq!(share["cluster_nodes"], 5, "{status}");
    let hosted: Vec<u64> = share["hosted"]
        .as_array()
        .context("hosted")?
        .iter()
        .filter_map(Value::as_u64)
        .collect();
    let expect_hosted: Vec<u64> = items
        .iter()
        .enumerate()
        .filter(|(_, i)| nodes_of(i).contains(&1))
        .map(|(p, _)| p as u64)
        .collect();
    assert_eq!(hosted, expect_hosted, "{status}");
    let local: u64 = hosted
        .iter()
        .map(|p| want.get(p).copied().unwrap_or(0))
        .sum();
    common::wait_for("node 1's local keys counted", WAIT, || async {
        let (_, st) = c.get(1, "/status").await.ok()?;
        (st["partitions"]["local_keys"].as_u64() == Some(local)).then_some(())
    })
    .await?;

    // The nodes a key lookup names are its partition's replicas, leader first.
    for key in keys.iter().take(16) {
        let (status, at) = c
            .get(
                3,
                &format!("/v1/partitions/key?key={}", key.replace('/', "%2F")),
            )
            .await?;
        assert_eq!(status, 200, "{at}");
        let p = at["partition"].as_u64().context("partition")? as usize;
        assert_eq!(
            p as u32,
            kvserver::placement::hash::partition_of(key.as_bytes(), 16)
        );
        assert_eq!(nodes_of(&at), nodes_of(&items[p]), "{key}");
        assert_eq!(at["leader_id"], items[p]["leader_id"]);
    }

    // The typed client (and kvctl partitions, which prints what it returns).
    let client = common::backup::typed_client(&c, &[4])?;
    let typed = client.partitions().await?;
    assert_eq!((typed.partitions, typed.items.len()), (16, 16));
    let at = client.partition_of("part/7").await?;
    assert_eq!(
        at.partition,
        kvserver::placement::hash::partition_of(b"part/7", 16)
    );
    assert_eq!(at.nodes, typed.items[at.partition as usize].nodes);

    // A watch spanning every partition, opened on node 2: its own partitions fed
    // here, the others relayed from their hosts, merged into one stream.
    let mut w = watch_on(&c, 2, "/v1/watch?prefix=w%2F", None).await?;
    let from = WatchPosition::parse(w.from.as_deref().context("x-kv-watch-from")?)
        .map_err(anyhow::Error::msg)?;
    assert_eq!(from.0.len(), 16, "{from}");
    // It holds one of the principal's two slots on node 2 (not one per
    // partition): a second stream opens, a third is refused.
    let second = watch_on(&c, 2, "/v1/watch?prefix=w%2F", None).await?;
    let (status, body) = c.get(2, "/v1/watch?prefix=w%2F").await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (429, Some("too_many_watchers")),
        "{body}"
    );
    drop(second);
    let wkeys: Vec<String> = (0..48).map(|i| format!("w/{i}")).collect();
    for (i, key) in wkeys.iter().enumerate() {
        let (status, body) = settled(key, || c.put_kv((i as u64 % 5) + 1, key, "w1")).await?;
        assert!(matches!(status, 200 | 201), "{key}: {body}");
    }
    let all_of = |want: &[String]| {
        let want: BTreeSet<String> = want.iter().cloned().collect();
        move |seen: &[Seen]| seen.iter().map(|s| s.key.clone()).collect::<BTreeSet<_>>() == want
    };
    let (seen, last) = read_until(&mut w, "the merged watch", all_of(&wkeys)).await?;
    // Each change once (a put retried after a 503 may be two changes).
    let unique: BTreeSet<(u32, u64)> = seen.iter().map(|s| (s.partition, s.revision)).collect();
    assert_eq!(unique.len(), seen.len(), "each change once: {seen:?}");
    assert!(seen.iter().all(|s| s.value.as_deref() == Some("w1")));
    // Resumed from its last id on another node, it gets what came after, once.
    drop(w);
    let later: Vec<String> = (0..16).map(|i| format!("w/later/{i}")).collect();
    for (i, key) in later.iter().enumerate() {
        let (status, body) = settled(key, || c.put_kv((i as u64 % 5) + 1, key, "w2")).await?;
        assert!(matches!(status, 200 | 201), "{key}: {body}");
    }
    let mut w = watch_on(&c, 5, "/v1/watch?prefix=w%2F", Some(&last)).await?;
    let (resumed, _) = read_until(&mut w, "the resumed watch", all_of(&later)).await?;
    assert!(
        resumed.iter().all(|s| s.key.starts_with("w/later/")),
        "nothing before the id again: {resumed:?}"
    );
    drop(w);
    // Narrowed to one partition, from its start: that partition's keys only.
    let p3: BTreeSet<String> = wkeys
        .iter()
        .chain(&later)
        .filter(|k| kvserver::placement::hash::partition_of(k.as_bytes(), 16) == 3)
        .cloned()
        .collect();
    let mut w = watch_on(
        &c,
        1,
        "/v1/watch?prefix=w%2F&partition=3&from_revision=0",
        None,
    )
    .await?;
    let (narrow, _) = read_until(&mut w, "partition 3", |s| s.len() >= p3.len()).await?;
    let got: BTreeSet<String> = narrow.iter().map(|s| s.key.clone()).collect();
    assert_eq!(got, p3);
    drop(w);
    let (status, body) = c.get(1, "/v1/watch?prefix=w%2F&from_revision=0").await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (400, Some("invalid_parameter")),
        "{body}"
    );
    // The typed client follows a partitioned watch the same way.
    {
        use futures_util::StreamExt;
        // From a position read before the writes (the id of the merged watch's
        // last event), so none is missed while the stream connects.
        let stream = client.watch_from_position(
            "w/typed/",
            WatchPosition::parse(&last).map_err(anyhow::Error::msg)?,
        );
        futures_util::pin_mut!(stream);
        let typed_keys: Vec<String> = (0..8).map(|i| format!("w/typed/{i}")).collect();
        let writer = async {
            for (i, key) in typed_keys.iter().enumerate() {
                let (status, body) =
                    settled(key, || c.put_kv((i as u64 % 5) + 1, key, "t")).await?;
                anyhow::ensure!(matches!(status, 200 | 201), "{key}: {body}");
            }
            anyhow::Ok(())
        };
        let reader = async {
            let mut got = BTreeSet::new();
            while got.len() < typed_keys.len() {
                let ev = tokio::time::timeout(WAIT, stream.next())
                    .await
                    .context("typed watch: no event")?
                    .context("typed watch ended")??;
                anyhow::ensure!(ev.partition.is_some(), "{ev:?}");
                got.insert(ev.key);
            }
            anyhow::Ok(got)
        };
        let (wrote, got) = tokio::join!(writer, reader);
        wrote?;
        assert_eq!(got?, typed_keys.iter().cloned().collect::<BTreeSet<_>>());
    }

    // Requests that span every partition: a listing merged in key order whose
    // continuation works across partitions, one narrowed to a partition, a batch
    // get grouped by partition, a prefix delete in every partition.
    let mut sorted = keys.clone();
    sorted.sort();
    let mut listed = Vec::new();
    let mut after = None;
    loop {
        let page = client
            .list(&kvserver::model::ListQuery {
                prefix: "part/".into(),
                start_after: after.take(),
                limit: Some(10),
                ..Default::default()
            })
            .await?;
        assert!(page.count <= 10, "{page:?}");
        assert_eq!(page.revisions.as_ref().map(|r| r.len()), Some(16));
        listed.extend(page.kvs.iter().map(|kv| kv.key.clone()));
        match page.next_start_after {
            Some(next) if page.more => after = Some(next),
            _ => break,
        }
    }
    assert_eq!(listed, sorted, "every key once, in key order");
    let p3: Vec<String> = sorted
        .iter()
        .filter(|k| kvserver::placement::hash::partition_of(k.as_bytes(), 16) == 3)
        .cloned()
        .collect();
    for id in [1, 5] {
        let (status, page) = settled("partition 3", || {
            c.get(id, "/v1/kv?prefix=part%2F&partition=3")
        })
        .await?;
        assert_eq!(status, 200, "{page}");
        let got: Vec<&str> = page["kvs"]
            .as_array()
            .context("kvs")?
            .iter()
            .filter_map(|kv| kv["key"].as_str())
            .collect();
        assert_eq!(got, p3, "partition 3 through node {id}");
    }
    let (status, bad) = c.get(2, "/v1/kv?partition=16").await?;
    assert_eq!(
        (status, &bad["error"]["code"]),
        (400, &Value::from("invalid_parameter"))
    );
    let mut asked: Vec<String> = keys.iter().rev().cloned().collect();
    asked.push("part/none".into());
    asked.push(keys[0].clone());
    let got = client
        .batch_get(asked.clone(), kvserver::model::Consistency::Linearizable)
        .await?;
    let found: Vec<&str> = got.kvs.iter().map(|kv| kv.key.as_str()).collect();
    let expect: Vec<&str> = keys.iter().rev().map(String::as_str).collect();
    assert_eq!(found, expect, "the order asked, each once");
    assert_eq!(got.missing, vec!["part/none".to_string()]);
    for i in 0..20 {
        let key = format!("gone/{i}");
        let (status, body) = settled(&key, || c.put_kv((i % 5) + 1, &key, "x")).await?;
        assert!(matches!(status, 200 | 201), "{body}");
    }
    let deleted = client.delete_prefix("gone/").await?;
    assert_eq!(deleted.deleted, 20, "{deleted:?}");
    assert_eq!(deleted.revisions.as_ref().map(|r| r.len()), Some(16));
    let (status, left) = settled("gone/", || c.get(3, "/v1/kv?prefix=gone%2F")).await?;
    assert_eq!((status, left["count"].as_u64()), (200, Some(0)), "{left}");

    // A merged watch on node 1 relays the partitions node 1 does not host from
    // their hosts (each counts the stream once). kill -9 one of those hosts: the
    // watch resumes its parts elsewhere and misses none of the writes below. The
    // partitions the victim did not lead keep their leaders and take a write
    // through every live node at once; every partition serves every key from
    // every live node within seconds.
    let mut before = BTreeMap::new();
    for id in 2..=5 {
        before.insert(id, watch_streams(&c, id).await?);
    }
    let mut w = watch_on(&c, 1, "/v1/watch?prefix=part%2F", None).await?;
    let mut relays = Vec::new();
    for id in 2..=5 {
        if watch_streams(&c, id).await? > before[&id] {
            relays.push(id);
        }
    }
    let victim = *relays.first().context("the watch relays from no node")?;
    let now = placed(&c, 1).await?;
    let led: BTreeSet<usize> = now["items"]
        .as_array()
        .context("items")?
        .iter()
        .enumerate()
        .filter(|(_, i)| i["leader_id"].as_u64() == Some(victim))
        .map(|(p, _)| p)
        .collect();
    let live: Vec<u64> = (1..=5).filter(|n| *n != victim).collect();
    c.kill(victim);
    let part_of = |k: &str| kvserver::placement::hash::partition_of(k.as_bytes(), 16) as usize;
    for (i, key) in keys
        .iter()
        .enumerate()
        .filter(|(_, k)| !led.contains(&part_of(k)))
    {
        let via = live[i % live.len()];
        let (status, body) = c.put_kv(via, key, "v2").await?;
        assert_eq!(
            status,
            200,
            "{key} (partition {}) via node {via}: {body}",
            part_of(key)
        );
    }
    for (i, key) in keys
        .iter()
        .enumerate()
        .filter(|(_, k)| led.contains(&part_of(k)))
    {
        let via = live[i % live.len()];
        common::wait_for(&format!("{key} writable after the kill"), WAIT, || async {
            let (status, _) = c.put_kv(via, key, "v2").await.ok()?;
            (status == 200).then_some(())
        })
        .await?;
    }
    for key in &keys {
        for id in &live {
            let (status, body) = c.get(*id, &format!("/v1/kv/{key}")).await?;
            assert_eq!(
                (status, body["kv"]["value"].as_str()),
                (200, Some("v2")),
                "{key} on {id}: {body}"
            );
        }
    }
    let (through, _) = read_until(&mut w, "the watch through the kill", |seen| {
        keys.iter().all(|k| {
            seen.iter()
                .any(|s| s.key == *k && s.value.as_deref() == Some("v2"))
        })
    })
    .await?;
    let revisions: BTreeSet<(u32, u64)> =
        through.iter().map(|s| (s.partition, s.revision)).collect();
    assert_eq!(
        revisions.len(),
        through.len(),
        "no change twice: {through:?}"
    );
    drop(w);
    // The partitions it led elected leaders among their live replicas.
    let after = placed(&c, live[0]).await?;
    for p in &led {
        let leader = after["items"][*p]["leader_id"].as_u64().context("leader")?;
        assert_ne!(leader, victim, "partition {p}");
        assert!(nodes_of(&items[*p]).contains(&leader), "partition {p}");
    }
    Ok(())
}
