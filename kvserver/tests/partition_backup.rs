//! Backup and restore of a partitioned cluster (issue 21), across real
//! processes: a backup of a 3-node cluster of 8 partitions holds every
//! partition at its own revision (format 2), taken through a node that hosts
//! only some of them; one partition's backup is served through any node; and
//! the backup restores into a new cluster of the same partition count (every
//! key in its partition, each partition at its revision, the replicas copied
//! to the members that join), into 3 partitions and into one (keys placed anew
//! by hash): every key and value comes back, and the restored clusters take
//! writes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use anyhow::ensure;
use common::Cluster;
use common::backup::list_all;
use common::backup::typed_client;
use kvserver::backup::BackupReader;
use kvserver::placement::hash::partition_of;
use serde_json::Value;

/// `GET /v1/partitions` on node `id`, once all `count` partitions are formed,
/// led, and each on `replicas` voters.
async fn placed(c: &Cluster, id: u64, count: usize, replicas: usize) -> anyhow::Result<Value> {
    common::wait_for(
        "every partition formed, led and replicated",
        Duration::from_secs(120),
        || async {
            let (status, body) = c.get(id, "/v1/partitions").await.ok()?;
            let items = body["items"].as_array()?;
            let ready = status == 200
                && items.len() == count
                && items.iter().all(|i| {
                    i["formed"] == true
                        && i["leader_id"].is_u64()
                        && i["voters"].as_array().map(Vec::len) == Some(replicas)
                });
            ready.then_some(body)
        },
    )
    .await
}

/// Each partition's revision, as its leader reports it.
fn revisions(placed: &Value) -> BTreeMap<u64, u64> {
    placed["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| Some((i["partition"].as_u64()?, i["revision"].as_u64()?)))
        .collect()
}

async fn download(client: &kvserver::client::Client) -> anyhow::Result<Vec<u8>> {
    let mut d = client.backup().await?;
    let mut bytes = Vec::new();
    while let Some(chunk) = d.chunk().await? {
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// Every key and value of the cluster, through the spanning listing.
async fn values(c: &Cluster, id: u64) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(list_all(&typed_client(c, &[id])?)
        .await?
        .into_iter()
        .map(|(k, kv)| (k, kv.value))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partitioned_cluster_is_backed_up_and_restored_into_any_partition_count()
-> anyhow::Result<()> {
    let mut c = Cluster::new(&[
        "--set",
        "partitions=8",
        "--set",
        "replication_factor=2",
        "--set",
        "initial_nodes=3",
    ]);
    c.form(3).await?;
    placed(&c, 1, 8, 2).await?;
    let client = typed_client(&c, &[1, 2, 3])?;
    for i in 0..80 {
        let key = format!("b/{i:03}");
        client
            .put(
                &key,
                &kvserver::model::PutRequest {
                    value: format!("v{i}"),
                    ..Default::default()
                },
            )
            .await?;
    }
    for i in 0..10 {
        client.delete(&format!("b/{i:03}"), None).await?;
    }
    for i in 70..80 {
        client
            .put(
                &format!("b/{i:03}"),
                &kvserver::model::PutRequest {
                    value: "again".into(),
                    ..Default::default()
                },
            )
            .await?;
    }
    let want = values(&c, 1).await?;
    ensure!(want.len() == 70, "{} keys", want.len());
    let before = revisions(&placed(&c, 1, 8, 2).await?);

    // The whole cluster, through node 3 (which hosts only some partitions).
    let bytes = download(&typed_client(&c, &[3])?).await?;
    let mut r = BackupReader::open(&bytes[..]).await?;
    ensure!(r.partition_count() == Some(8), "{:?}", r.partition_count());
    let mut per_partition: BTreeMap<u32, usize> = BTreeMap::new();
    while let Some(kv) = r.next_kv().await? {
        let (p, _) = r.partition().context("a partition section")?;
        ensure!(partition_of(kv.key.as_bytes(), 8) == p, "{} in {p}", kv.key);
        *per_partition.entry(p).or_default() += 1;
    }
    let summary = r.summary()?;
    ensure!(summary.keys == 70, "{summary:?}");
    let backed: BTreeMap<u64, u64> = summary
        .partitions
        .clone()
        .context("partition revisions")?
        .into_iter()
        .map(|(p, r)| (u64::from(p), r))
        .collect();
    ensure!(backed == before, "revisions {backed:?}, cluster {before:?}");
    ensure!(summary.header.revision == before.values().copied().max().unwrap_or(0));

    // One partition's backup, through each node: that partition's keys only.
    for id in 1..=3 {
        let resp = c
            .http
            .get(c.url(id, "/v1/backup?partition=5"))
            .send()
            .await?;
        ensure!(
            resp.status() == 200,
            "partition 5 via node {id}: {}",
            resp.status()
        );
        let (_, keys) = common::backup::read_backup(&resp.bytes().await?).await?;
        let expect = want
            .keys()
            .filter(|k| partition_of(k.as_bytes(), 8) == 5)
            .count();
        ensure!(
            keys.len() == expect,
            "partition 5 via node {id}: {} keys",
            keys.len()
        );
        ensure!(keys.keys().all(|k| partition_of(k.as_bytes(), 8) == 5));
    }
    let (status, bad) = c.get(1, "/v1/backup?partition=8").await?;
    ensure!(status == 400, "{bad}");

    let dir = tempfile::tempdir()?;
    // Kept in a destination (as the operator's agent and `kvctl backup save` do),
    // its latest restore point is the backup as it is (what the operator's
    // restore Job writes); a point at a revision or time needs continuous
    // backup, which a partitioned cluster does not have yet, and is refused.
    let dest = kvserver::backup::Destination::open(
        &dir.path().join("dest").display().to_string(),
        &Default::default(),
    )?;
    let (_, saved) =
        kvserver::backup::save::save_to_destination(&client, &dest, dir.path()).await?;
    ensure!(
        saved.partitions.as_ref().map(|p| p.len()) == Some(8),
        "{saved:?}"
    );
    let cluster = kvserver::backup::point::pick_cluster(&dest, None).await?;
    let (point, composed) = kvserver::backup::point::compose(
        &dest,
        &cluster,
        kvserver::backup::point::Target::Latest,
        Vec::new(),
    )
    .await?;
    ensure!(
        composed.sha256 == saved.sha256 && composed.keys == 70,
        "{composed:?}"
    );
    let (_, keys) = common::backup::read_backup(&point).await?;
    ensure!(keys.len() == 70);
    let e = kvserver::backup::point::compose(
        &dest,
        &cluster,
        kvserver::backup::point::Target::Time(kvserver::command::now_ms()),
        Vec::new(),
    )
    .await
    .expect_err("no point in time without continuous backup");
    ensure!(e.to_string().contains("not built yet"), "{e}");
    // Continuous backup says so too, rather than failing on the watch.
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let (status, _) = tokio::sync::watch::channel(Default::default());
    let e = kvserver::backup::follow::follow(
        client.clone(),
        dest.clone(),
        Default::default(),
        stop,
        status,
    )
    .await
    .expect_err("continuous backup of a partitioned cluster");
    ensure!(e.to_string().contains("not built yet"), "{e}");

    let file = dir.path().join("partitioned.kvbak");
    std::fs::write(&file, &bytes)?;
    let restore_arg = format!("restore_from={}", file.display());

    // Into a new cluster of the same count: node 1 forms every partition from the
    // backup, the replicas are copied to nodes 2 and 3 as they join.
    let mut r8 = Cluster::with_id(
        "restored-8",
        None,
        &[
            "--set",
            "partitions=8",
            "--set",
            "replication_factor=2",
            "--set",
            &restore_arg,
        ],
    );
    r8.form(3).await?;
    let restored = placed(&r8, 2, 8, 2).await?;
    ensure!(
        revisions(&restored) == before,
        "each partition at its own revision: {:?}",
        revisions(&restored)
    );
    for id in 1..=3 {
        ensure!(
            values(&r8, id).await? == want,
            "restored-8 through node {id}"
        );
    }
    // Placed over all three, and writes go on from each partition's revision.
    let hosts: std::collections::BTreeSet<u64> = restored["items"]
        .as_array()
        .context("items")?
        .iter()
        .flat_map(|i| i["nodes"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_u64())
        .collect();
    ensure!(hosts.len() == 3, "replicas on {hosts:?}");
    let p = partition_of(b"after/restore", 8);
    let put = typed_client(&r8, &[3])?
        .put(
            "after/restore",
            &kvserver::model::PutRequest {
                value: "new".into(),
                ..Default::default()
            },
        )
        .await?;
    ensure!(
        put.revision == before[&u64::from(p)] + 1,
        "partition {p} continues at {}",
        put.revision
    );
    drop(r8);

    // Into 3 partitions on one node: the keys are placed anew by hash.
    let mut r3 = Cluster::with_id(
        "restored-3",
        None,
        &[
            "--set",
            "partitions=3",
            "--set",
            "replication_factor=1",
            "--set",
            &restore_arg,
        ],
    );
    r3.form(1).await?;
    placed(&r3, 1, 3, 1).await?;
    ensure!(values(&r3, 1).await? == want, "restored into 3 partitions");
    drop(r3);

    // Into one partition: every key in the cluster's own group.
    let mut r1 = Cluster::with_id("restored-1", None, &["--set", &restore_arg]);
    r1.form(1).await?;
    common::wait_for("the restored keys", Duration::from_secs(30), || async {
        (values(&r1, 1).await.ok()? == want).then_some(())
    })
    .await?;
    Ok(())
}
