//! Crash safety and concurrency on real processes:
//! - `kill -9` in the middle of a write burst (the leader, then a follower),
//!   restart, and every acknowledged write is present on every node; again
//!   with the log purged and its segments deleted all along, and on PostgreSQL;
//! - `kill -9` of a deposed leader as it truncates the entries it appended
//!   alone, and the node rejoins with exactly the cluster's state;
//! - many concurrent clients doing compare-and-set increments on overlapping
//!   keys: the final counters equal the number of acknowledged increments.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use serde_json::Value;
use serde_json::json;
use tokio::sync::Mutex;

async fn crash_mid_burst(c: &mut Cluster) -> anyhow::Result<()> {
    let leader = c.form(3).await?;
    let follower = (1..=3).find(|id| *id != leader).context("follower")?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers = common::spawn_writers(c, 6, stop.clone());

    let cr = &*c;
    common::wait_for(
        "a few hundred acks before the crash",
        Duration::from_secs(30),
        || async move {
            let info = cr.cluster_info(leader).await.ok()?;
            (info["revision"].as_u64()? >= 300).then_some(())
        },
    )
    .await?;
    c.kill(leader);
    let cr = &*c;
    let survivor = follower;
    common::wait_for(
        "writes resume after the leader crash",
        Duration::from_secs(10),
        || async move {
            let (s, _) = cr.put_kv(survivor, "probe", "x").await.ok()?;
            (s == 200 || s == 201).then_some(())
        },
    )
    .await?;
    let new_leader = c
        .wait_leader_among(
            &[1, 2, 3]
                .into_iter()
                .filter(|x| *x != leader)
                .collect::<Vec<_>>(),
            Duration::from_secs(5),
        )
        .await?;
    let cr = &*c;
    let rev_after = cr.cluster_info(new_leader).await?["revision"]
        .as_u64()
        .context("revision")?;
    common::wait_for(
        "more acks after failover",
        Duration::from_secs(30),
        || async move {
            let info = cr.cluster_info(new_leader).await.ok()?;
            (info["revision"].as_u64()? >= rev_after + 200).then_some(())
        },
    )
    .await?;
    // A second crash, of a follower this time, still mid-burst.
    let victim = (1..=3)
        .find(|id| *id != leader && *id != new_leader)
        .context("second victim")?;
    c.kill(victim);
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut acked = Vec::new();
    for w in writers {
        acked.extend(w.await?.acked);
    }
    ensure!(
        acked.len() > 400,
        "enough acknowledged writes to mean something: {}",
        acked.len()
    );

    c.start(leader)?;
    c.start(victim)?;
    for id in 1..=3 {
        c.wait_up(id).await?;
    }
    let final_leader = c.wait_leader(Duration::from_secs(10)).await?;
    let target = c.committed_index(final_leader).await?;
    for id in 1..=3 {
        c.wait_applied(id, target, Duration::from_secs(20)).await?;
    }
    for id in 1..=3 {
        c.ensure_all_present(id, "burst/", &acked).await?;
    }
    eprintln!(
        "crash test: {} acknowledged writes, all present on all 3 nodes",
        acked.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_loses_no_acknowledged_write() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = crash_mid_burst(&mut c).await {
        c.fail(e);
    }
}

/// The same crashes while the log is purged every few dozen entries behind a
/// snapshot and its 64 KiB segments rotate and are deleted: a crash can land in
/// a purge, a rotation or a segment deletion (`raftlog/engine.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_while_the_log_is_purged_and_segments_deleted() {
    let mut c = Cluster::new(&[
        "--set",
        "raft.snapshot_after_entries=40",
        "--set",
        "raft.keep_entries_after_snapshot=5",
        "--set",
        "raft.log_segment_bytes=65536",
    ]);
    if let Err(e) = crash_mid_burst(&mut c).await {
        c.fail(e);
    }
}

/// The same crashes on PostgreSQL: its state machine lags the log the same way
/// (rows persisted in batches behind the acknowledgement), so what a crash takes
/// from the database comes back from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_on_postgres_loses_no_acknowledged_write() {
    let pg = common::pg::Postgres::start().expect("postgres");
    let mut c = Cluster::with_postgres(&pg, &["--set", "raft.snapshot_after_entries=200"]);
    if let Err(e) = crash_mid_burst(&mut c).await {
        eprintln!("----- postgres log tail -----\n{}", pg.log_tail());
        c.fail(e);
    }
}

#[derive(Default, Debug)]
struct Tally {
    ok: BTreeMap<String, u64>,
    conflicts: u64,
    unknown: BTreeMap<String, u64>,
}

async fn cas_increments(c: &mut Cluster) -> anyhow::Result<()> {
    c.form(3).await?;
    const CLIENTS: usize = 16;
    const INCREMENTS: usize = 15;
    const COUNTERS: usize = 3;
    let tally = Arc::new(Mutex::new(Tally::default()));
    let urls: Vec<String> = c.nodes.keys().map(|id| c.url(*id, "")).collect();
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (http, urls, tally) = (c.http.clone(), urls.clone(), tally.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut attempt = 0usize;
            while done < INCREMENTS {
                attempt += 1;
                if attempt > 2000 {
                    return Err(anyhow::anyhow!("client {client} starved"));
                }
                let key = format!("counter/{}", (client + done) % COUNTERS);
                let base = &urls[(client + attempt) % urls.len()];
                let r = http.get(format!("{base}/v1/kv/{key}")).send().await?;
                let (value, rev) = match r.status().as_u16() {
                    200 => {
                        let b: Value = r.json().await?;
                        let v: u64 = b["kv"]["value"].as_str().context("value")?.parse()?;
                        (v, b["kv"]["mod_revision"].as_u64().context("rev")?)
                    }
                    404 => (0, 0),
                    _ => continue,
                };
                let put = http
                    .put(format!("{base}/v1/kv/{key}"))
                    .json(&json!({"value": (value + 1).to_string(), "if_revision": rev}))
                    .send()
                    .await;
                let mut t = tally.lock().await;
                match put {
                    Ok(r) if r.status().is_success() => {
                        *t.ok.entry(key).or_default() += 1;
                        done += 1;
                    }
                    Ok(r) if r.status().as_u16() == 412 => t.conflicts += 1,
                    // The outcome of a request that failed in flight is unknown.
                    _ => *t.unknown.entry(key).or_default() += 1,
                }
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let t = tally.lock().await;
    let total_ok: u64 = t.ok.values().sum();
    ensure!(
        total_ok == (CLIENTS * INCREMENTS) as u64,
        "every client finished its increments: {t:?}"
    );
    ensure!(t.conflicts > 0, "clients really contended: {t:?}");
    for n in 0..COUNTERS {
        let key = format!("counter/{n}");
        let ok = t.ok.get(&key).copied().unwrap_or(0);
        let unknown = t.unknown.get(&key).copied().unwrap_or(0);
        for id in 1..=3 {
            let v: u64 = c
                .read(id, &key, false)
                .await?
                .context("counter exists")?
                .parse()?;
            ensure!(
                v >= ok && v <= ok + unknown,
                "{key} on node {id} is {v}, acknowledged increments {ok} (+{unknown} unknown)"
            );
        }
    }
    eprintln!(
        "cas test: {total_ok} increments acknowledged, {} conflicts retried, {:?} unknown",
        t.conflicts, t.unknown
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_cas_increments_are_exact() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = cas_increments(&mut c).await {
        c.fail(e);
    }
}

/// When the deposed leader of [`crash_after_truncation`] is killed.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// As soon as its metrics show the truncation (the new leader's entries that
    /// replace the dropped ones are being appended then).
    Truncated,
    /// As the partition heals: before or during the truncation, which is then
    /// redone against the log the restart finds.
    Heal,
}

/// Rounds of: isolate the leader, have it append writes no quorum will accept,
/// let the others elect a leader and acknowledge writes at the same log
/// indexes, heal, and `kill -9` the deposed leader around the truncation its
/// log then needs (`Engine::truncate`). After its restart every node holds
/// every acknowledged write and all three hold the same keys.
async fn crash_after_truncation(c: &mut Cluster) -> anyhow::Result<()> {
    use common::metric;
    c.form(3).await?;
    let mut acked: Vec<String> = Vec::new();
    for (round, kill_at) in [KillAt::Truncated, KillAt::Heal, KillAt::Truncated]
        .into_iter()
        .enumerate()
    {
        let old = c.wait_leader(Duration::from_secs(10)).await?;
        let others: Vec<u64> = (1..=3).filter(|id| *id != old).collect();
        let page = c.metrics_text(old).await?;
        let last_before = metric(&page, "kv_raft_last_log_index");
        let truncations = metric(&page, "kv_raft_log_truncations_total");
        c.links.partition(&[old], &others);
        // Appended to the isolated leader's log, never accepted by a quorum: the
        // clients give up, so whether a write later lands is theirs to find out.
        let orphans: Vec<_> = (0..10)
            .map(|i| {
                let put = c
                    .http
                    .put(c.url(old, &format!("/v1/kv/orphan/{round}/{i}")))
                    .timeout(Duration::from_millis(1500))
                    .json(&json!({"value": "orphan"}));
                tokio::spawn(async move { put.send().await.map(|r| r.status().as_u16()) })
            })
            .collect();
        let cr = &*c;
        common::wait_for(
            "the isolated leader appends entries it cannot commit",
            Duration::from_secs(10),
            || async move {
                let page = cr.metrics_text(old).await.ok()?;
                (metric(&page, "kv_raft_last_log_index") >= last_before + 10.0).then_some(())
            },
        )
        .await?;
        // The others name the old leader until their election timeout: wait for one of theirs.
        let cr = &*c;
        let new = common::wait_for(
            "the others elect a leader of their own",
            Duration::from_secs(15),
            || {
                let others = others.clone();
                async move {
                    let l = cr
                        .wait_leader_among(&others, Duration::from_millis(200))
                        .await
                        .ok()?;
                    (l != old).then_some(l)
                }
            },
        )
        .await?;
        for i in 0..30 {
            let key = format!("burst/{round}/{i}");
            let (st, body) = c.put_kv(new, &key, &key).await?;
            ensure!(
                st == 200 || st == 201,
                "PUT {key} on the new leader {new}: {st} {body}"
            );
            acked.push(key);
        }
        c.links.heal_all();
        if let KillAt::Truncated = kill_at {
            let cr = &*c;
            common::wait_for(
                "the deposed leader truncates its log",
                Duration::from_secs(10),
                || async move {
                    let page = cr.metrics_text(old).await.ok()?;
                    (metric(&page, "kv_raft_log_truncations_total") > truncations).then_some(())
                },
            )
            .await?;
        }
        c.kill(old);
        for o in orphans {
            let _ = o.await?;
        }
        c.start(old)?;
        c.wait_up(old).await?;
        let leader = c.wait_leader(Duration::from_secs(10)).await?;
        let target = c.committed_index(leader).await?;
        for id in 1..=3 {
            c.wait_applied(id, target, Duration::from_secs(20)).await?;
        }
        for id in 1..=3 {
            c.ensure_all_present(id, "burst/", &acked).await?;
        }
        let reference = c.keys(leader, "").await?;
        for id in (1..=3).filter(|id| *id != leader) {
            let keys = c.keys(id, "").await?;
            ensure!(
                keys == reference,
                "round {round} ({kill_at:?}): node {id} holds {} keys, the leader {leader} {}; \
                 only on {id}: {:?}; only on the leader: {:?}",
                keys.len(),
                reference.len(),
                keys.difference(&reference).take(5).collect::<Vec<_>>(),
                reference.difference(&keys).take(5).collect::<Vec<_>>(),
            );
        }
        eprintln!(
            "round {round}: node {old} killed at {kill_at:?}; after its restart, {} keys on every node",
            reference.len()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_around_a_deposed_leaders_log_truncation_loses_nothing() {
    let mut c = Cluster::partitionable(&[]);
    if let Err(e) = crash_after_truncation(&mut c).await {
        c.fail(e);
    }
}
