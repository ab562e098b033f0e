//! Backups when things go wrong: damaged backup files are refused by `kvctl
//! backup verify` and by a restore, which leaves the store empty; a leader
//! killed while it streams a backup leaves nothing that looks like a backup and
//! the next one succeeds; continuous backup survives the leader's crash and its
//! own, with no gap and no duplicate; and on a real S3-protocol server, a
//! damaged or missing segment is refused by name.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use common::backup::*;
use kvserver::backup::Destination;
use kvserver::backup::dest::S3Options;
use kvserver::backup::point::Target;
use kvserver::client::Client;
use kvserver::model::ListQuery;
use kvserver::model::PutRequest;
use kvserver::record::StoredKv;

/// Every key of the cluster, read linearizably through `client`.
async fn cluster_state(client: &Client) -> anyhow::Result<(u64, BTreeMap<String, StoredKv>)> {
    let mut keys = BTreeMap::new();
    let mut start_after = None;
    let mut revision = 0;
    loop {
        let page = client
            .list(&ListQuery {
                start_after: start_after.clone(),
                limit: Some(1000),
                ..Default::default()
            })
            .await?;
        revision = revision.max(page.revision);
        for kv in page.kvs {
            keys.insert(kv.key.clone(), StoredKv::from_api(kv));
        }
        if !page.more {
            return Ok((revision, keys));
        }
        start_after = page.next_start_after;
    }
}

/// Writers that keep going through failures (a killed leader leaves some writes'
/// outcome unknown): the cluster's final state is the oracle here.
fn spawn_tolerant_writers(
    client: &Client,
    writers: usize,
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..writers)
        .map(|w| {
            let (client, stop, failures) = (client.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("t{w}/{:03}", n % 30);
                    let ok = if n.is_multiple_of(4) {
                        client.delete(&key, None).await.is_ok()
                    } else {
                        let req = PutRequest {
                            value: format!("{w}-{n}"),
                            ..Default::default()
                        };
                        client.put(&key, &req).await.is_ok()
                    };
                    if !ok {
                        failures.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            })
        })
        .collect()
}

fn kvctl(args: &[&str]) -> anyhow::Result<(bool, serde_json::Value)> {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
        .args(args)
        .output()
        .context("running kvctl")?;
    let line = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(line.lines().last().unwrap_or("null")).unwrap_or_default();
    Ok((out.status.success(), json))
}

async fn damaged_files_refused(c: &mut Cluster) -> anyhow::Result<()> {
    c.form(1).await?;
    let client = typed_client(c, &[1])?;
    for i in 0..200 {
        client
            .put(
                &format!("k/{i:04}"),
                &PutRequest {
                    value: "v".repeat(100),
                    ..Default::default()
                },
            )
            .await?;
    }
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.kvbak");
    let s = kvserver::backup::save::save_to_file(&client, &good).await?;
    ensure!(s.keys == 200);
    let bytes = std::fs::read(&good)?;
    let (ok, out) = kvctl(&["backup", "verify", &good.display().to_string()])?;
    ensure!(
        ok && out["summary"]["keys"] == 200,
        "verify of a good backup: {out}"
    );

    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x20;
    let cases = [
        (
            "truncated",
            bytes[..bytes.len() * 2 / 3].to_vec(),
            "truncated",
        ),
        ("flipped", flipped, "damaged backup"),
        (
            "no checksum",
            bytes[..bytes.len() - 10].to_vec(),
            "truncated",
        ),
    ];
    for (what, damaged, says) in &cases {
        let path = dir.path().join(format!("{}.kvbak", what.replace(' ', "-")));
        std::fs::write(&path, damaged)?;
        let (ok, out) = kvctl(&["backup", "verify", &path.display().to_string()])?;
        let err = out["error"].as_str().unwrap_or_default().to_string();
        ensure!(
            !ok && err.contains(says),
            "verify of the {what} backup: {out}"
        );

        // A restore from it is refused at init and leaves the store empty: the same
        // node then restores the good file (a store holding half a restore would
        // refuse it as not empty).
        let restore = dir
            .path()
            .join(format!("restore-{}.kvbak", what.replace(' ', "-")));
        std::fs::write(&restore, damaged)?;
        let arg = format!("restore_from={}", restore.display());
        let mut r = Cluster::with_id(&format!("restored-{}", what.len()), None, &["--set", &arg]);
        r.add_node(1)?;
        r.wait_up(1).await?;
        let (status, body) = r.post(1, "/v1/cluster/init", serde_json::json!({})).await?;
        let msg = body["error"]["message"].as_str().unwrap_or_default();
        ensure!(
            status == 409 && body["error"]["code"] == "restore_refused" && msg.contains(says),
            "init from the {what} backup: {status} {body}"
        );
        let (_, info) = r.get(1, "/v1/cluster").await?;
        ensure!(info["initialized"] == false, "{info}");
        std::fs::copy(&good, &restore)?;
        let (status, body) = r.post(1, "/v1/cluster/init", serde_json::json!({})).await?;
        ensure!(
            status == 201,
            "init from the good backup after the {what} one: {status} {body}"
        );
        let rc = typed_client(&r, &[1])?;
        let (_, keys) = cluster_state(&rc).await?;
        ensure!(keys.len() == 200, "restored {} keys", keys.len());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_backups_are_refused_and_nothing_is_half_restored() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = damaged_files_refused(&mut c).await {
        c.fail(e);
    }
}

/// Size of the scratch download of a backup in progress, if one is there.
fn partial_size(dir: &std::path::Path) -> Option<u64> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".partial"))
        .filter_map(|e| e.metadata().ok().map(|m| m.len()))
        .max()
}

async fn leader_crash_mid_backup(c: &mut Cluster) -> anyhow::Result<()> {
    c.form(3).await?;
    let all = typed_client(c, &[1, 2, 3])?;
    // 48 MiB in 96 values: big enough that streaming it takes a while.
    let value = "b".repeat(512 * 1024);
    for i in 0..96 {
        all.put(
            &format!("big/{i:03}"),
            &PutRequest {
                value: value.clone(),
                ..Default::default()
            },
        )
        .await?;
    }
    let dest_dir = tempfile::tempdir()?;
    let dest = Destination::open(
        &dest_dir.path().display().to_string(),
        &S3Options::default(),
    )?;
    let scratch = tempfile::tempdir()?;
    // The kill must land while the bytes flow; if the whole backup arrived first,
    // bring the node back and try again.
    let mut interrupted = false;
    for attempt in 1..=3 {
        let leader = c.wait_leader(Duration::from_secs(10)).await?;
        let only_leader = typed_client(c, &[leader])?;
        let (dest2, scratch2) = (dest.clone(), scratch.path().to_path_buf());
        let save = tokio::spawn(async move {
            kvserver::backup::save::save_to_destination(&only_leader, &dest2, &scratch2).await
        });
        wait_for("the download to start", Duration::from_secs(30), || async {
            partial_size(scratch.path())
                .filter(|n| *n > 0)
                .or_else(|| save.is_finished().then_some(0))
        })
        .await?;
        c.kill(leader);
        let result = save.await?;
        ensure!(
            partial_size(scratch.path()).is_none(),
            "attempt {attempt}: the partial download was left behind"
        );
        c.start(leader)?;
        c.wait_up(leader).await?;
        if result.is_ok() {
            eprintln!("attempt {attempt}: the backup completed before the kill; again");
            std::fs::remove_dir_all(dest_dir.path().join(common_cluster_id(&all).await?))?;
            continue;
        }
        eprintln!(
            "attempt {attempt}: interrupted as intended: {}",
            result.err().map(|e| e.to_string()).unwrap_or_default()
        );
        interrupted = true;
        break;
    }
    ensure!(
        interrupted,
        "could not kill the leader mid-backup in 3 attempts"
    );
    c.wait_leader(Duration::from_secs(20)).await?;
    let cluster = common_cluster_id(&all).await?;
    ensure!(
        dest.full_backups(&cluster).await?.is_empty(),
        "an interrupted backup left an object"
    );
    let (name, s) =
        kvserver::backup::save::save_to_destination(&all, &dest, scratch.path()).await?;
    ensure!(s.keys == 96, "the next backup holds {} keys", s.keys);
    ensure!(dest.full_backups(&cluster).await?.len() == 1, "{name}");
    Ok(())
}

async fn common_cluster_id(client: &Client) -> anyhow::Result<String> {
    Ok(client.cluster().await?.cluster_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_crash_during_a_backup_fails_cleanly_and_the_next_succeeds() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = leader_crash_mid_backup(&mut c).await {
        c.fail(e);
    }
}

async fn continuous_through_crashes(c: &mut Cluster) -> anyhow::Result<()> {
    c.form(3).await?;
    let client = typed_client(c, &[1, 2, 3])?;
    let dest_dir = tempfile::tempdir()?;
    let dest = Destination::open(
        &dest_dir.path().display().to_string(),
        &S3Options::default(),
    )?;
    let scratch = tempfile::tempdir()?;
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let writers = spawn_tolerant_writers(&client, 4, stop.clone(), failures.clone());
    let follower = follow(&client, &dest, scratch.path());
    tokio::time::sleep(Duration::from_millis(700)).await;

    // The leader dies while changes flow to the backup (its watch stream breaks).
    let leader = c.wait_leader(Duration::from_secs(10)).await?;
    c.kill(leader);
    c.wait_leader_among(
        &[1, 2, 3]
            .into_iter()
            .filter(|i| *i != leader)
            .collect::<Vec<_>>(),
        Duration::from_secs(10),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.start(leader)?;

    // Continuous backup itself crashes (no goodbye, buffer lost) and starts again.
    let before = follower.status.borrow().shipped;
    follower.task.abort();
    let _ = follower.task.await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let mut follower = follow(&client, &dest, scratch.path());
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await?;
    }
    let (revision, state) = cluster_state(&client).await?;
    follower.wait_shipped(revision).await?;
    let st = follower.stop().await?;
    let segments = chain_is_contiguous(&dest, &st.cluster_id).await?;
    eprintln!(
        "revision {revision}, {} keys, {segments} segments, {} writes failed around the crash, shipped {before} before the backup's own crash",
        state.len(),
        failures.load(Ordering::Relaxed)
    );
    ensure!(
        before > 0 && revision > before,
        "the crash did not happen mid-stream"
    );
    let composed =
        kvserver::backup::point::compose(&dest, &st.cluster_id, Target::Latest, Vec::new())
            .await?
            .0;
    let (rev, keys) = read_backup(&composed).await?;
    ensure!(
        rev == revision,
        "the backups reach {rev}, the cluster is at {revision}"
    );
    same_state("continuous backup after crashes", &keys, &state)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continuous_backup_resumes_after_leader_and_own_crashes() {
    let mut c = Cluster::new(&[]);
    if let Err(e) = continuous_through_crashes(&mut c).await {
        c.fail(e);
    }
}

async fn on_s3(c: &mut Cluster, s3: &common::s3::S3Server) -> anyhow::Result<()> {
    c.form(1).await?;
    let client = typed_client(c, &[1])?;
    let url = format!("s3://{}/team/orders", common::s3::BUCKET);
    let dest = Destination::open(&url, &s3.options())?;
    let scratch = tempfile::tempdir()?;
    let history = Arc::new(History::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut follower = follow(&client, &dest, scratch.path());
    let writers = spawn_writers(&client, 4, history.clone(), stop.clone());
    tokio::time::sleep(Duration::from_millis(1200)).await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await??;
    }
    let last = history.last_revision();
    follower.wait_shipped(last).await?;
    let st = follower.stop().await?;
    let cluster = st.cluster_id.clone();
    let segments = chain_is_contiguous(&dest, &cluster).await?;
    ensure!(segments >= 3, "only {segments} segments");

    // kvctl composes a restore point from the bucket, as a user would.
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("point.kvbak");
    let mid = last / 2;
    let run = |target: String| {
        let out = out.display().to_string();
        let endpoint = s3.endpoint();
        let url = url.clone();
        async move {
            let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_kvctl"))
                .args([
                    "backup",
                    "restore-point",
                    "--dest",
                    &url,
                    "--s3-endpoint",
                    &endpoint,
                ])
                .args(["--to-revision", &target, "--out", &out])
                .env("AWS_ACCESS_KEY_ID", "test-key")
                .env("AWS_SECRET_ACCESS_KEY", "test-secret")
                .output()
                .await?;
            let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            anyhow::Ok((o.status.success(), json))
        }
    };
    let (ok, json) = run(mid.to_string()).await?;
    ensure!(ok, "kvctl restore-point: {json}");
    let (rev, keys) = read_backup(&std::fs::read(&out)?).await?;
    ensure!(rev == mid);
    same_state("restore point from S3", &keys, &history.state_at(mid))?;

    // A flipped byte in a segment the point needs: refused, naming the segment.
    let segs = dest.segments(&cluster).await?;
    let victim = segs
        .iter()
        .find(|s| s.after < mid && s.upto >= mid)
        .context("the segment holding the middle")?;
    let mut bytes = dest.get(&victim.name).await?;
    let at = bytes.len() / 2;
    bytes[at] ^= 1;
    dest.put(&victim.name, bytes.clone()).await?;
    let (ok, json) = run(mid.to_string()).await?;
    let err = json["error"].as_str().unwrap_or_default();
    ensure!(
        !ok && err.contains("damaged segment") && err.contains(&victim.name),
        "{json}"
    );
    // The segment missing altogether: a gap, named, never skipped.
    dest.delete(&victim.name).await?;
    let (ok, json) = run(last.to_string()).await?;
    let err = json["error"].as_str().unwrap_or_default();
    ensure!(
        !ok && err.contains(&format!(
            "revisions {}..={} are missing",
            victim.after + 1,
            victim.upto
        )),
        "{json}"
    );
    ensure!(
        !out.with_extension("partial").exists(),
        "a refused restore point left its partial file"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn continuous_backup_to_s3_and_damaged_segments_are_refused() {
    let s3 = common::s3::S3Server::start().await.expect("S3 test server");
    let mut c = Cluster::new(&[]);
    if let Err(e) = on_s3(&mut c, &s3).await {
        c.fail(e);
    }
}

async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, f: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    common::wait_for(what, timeout, f).await
}
