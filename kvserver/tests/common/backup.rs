//! Helpers of the backup tests: the writers' own record of what they changed
//! (the oracle every backup is compared with), continuous backup running in the
//! background, and reading backups back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use anyhow::ensure;
use kvserver::backup::BackupReader;
use kvserver::backup::Destination;
use kvserver::backup::follow::FollowOptions;
use kvserver::backup::follow::FollowStatus;
use kvserver::backup::point::Target;
use kvserver::client::Client;
use kvserver::model::PutRequest;
use kvserver::record::StoredKv;

use super::Cluster;

/// One acknowledged change: the key's record after it (`None`: deleted).
#[derive(Debug, Clone)]
pub struct Acked {
    pub revision: u64,
    pub key: String,
    pub kv: Option<StoredKv>,
}

#[derive(Default)]
pub struct History(Mutex<Vec<Acked>>);

impl History {
    pub fn push(&self, a: Acked) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(a);
    }

    pub fn all(&self) -> Vec<Acked> {
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner()).clone();
        v.sort_by_key(|a| a.revision);
        v
    }

    /// Every key as it was at `revision`.
    pub fn state_at(&self, revision: u64) -> BTreeMap<String, StoredKv> {
        let mut state = BTreeMap::new();
        for a in self.all().into_iter().filter(|a| a.revision <= revision) {
            match a.kv {
                Some(kv) => state.insert(a.key, kv),
                None => state.remove(&a.key),
            };
        }
        state
    }

    pub fn last_revision(&self) -> u64 {
        self.all().last().map_or(0, |a| a.revision)
    }
}

/// `writers` tasks putting and deleting keys `w<i>/<n>` (disjoint per writer, so
/// each key's history is one writer's) until `stop`; every write must succeed.
pub fn spawn_writers(
    client: &Client,
    writers: usize,
    history: Arc<History>,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<u64>>> {
    (0..writers)
        .map(|w| {
            let (client, history, stop) = (client.clone(), history.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = format!("w{w}/{:03}", n % 24);
                    if n.is_multiple_of(5) {
                        if let Some(d) = client.delete(&key, None).await.context("delete")? {
                            history.push(Acked {
                                revision: d.revision,
                                key,
                                kv: None,
                            });
                        }
                    } else {
                        let r = client
                            .put(
                                &key,
                                &PutRequest {
                                    value: format!("{w}-{n}-{}", "x".repeat((n % 7) as usize * 40)),
                                    ..Default::default()
                                },
                            )
                            .await
                            .context("put")?;
                        history.push(Acked {
                            revision: r.revision,
                            key,
                            kv: Some(StoredKv::from_api(r.kv)),
                        });
                    }
                }
                Ok(n)
            })
        })
        .collect()
}

/// Every key of a backup file's bytes, and its header revision.
pub async fn read_backup(bytes: &[u8]) -> anyhow::Result<(u64, BTreeMap<String, StoredKv>)> {
    let mut r = BackupReader::open(bytes).await?;
    let mut keys = BTreeMap::new();
    while let Some(kv) = r.next_kv().await? {
        keys.insert(kv.key.clone(), kv);
    }
    Ok((r.header().revision, keys))
}

pub fn same_state(
    what: &str,
    got: &BTreeMap<String, StoredKv>,
    want: &BTreeMap<String, StoredKv>,
) -> anyhow::Result<()> {
    for (k, v) in want {
        ensure!(
            got.get(k) == Some(v),
            "{what}: key {k} is {:?}, expected {v:?}",
            got.get(k)
        );
    }
    for k in got.keys() {
        ensure!(want.contains_key(k), "{what}: key {k} should not exist");
    }
    Ok(())
}

/// Every key `client`'s node holds (stale reads: that node's own state).
pub async fn list_all(client: &Client) -> anyhow::Result<BTreeMap<String, StoredKv>> {
    let mut got = BTreeMap::new();
    let mut start_after = None;
    loop {
        let page = client
            .list(&kvserver::model::ListQuery {
                start_after: start_after.clone(),
                limit: Some(1000),
                consistency: kvserver::model::Consistency::Stale,
                ..Default::default()
            })
            .await?;
        for kv in page.kvs {
            got.insert(kv.key.clone(), StoredKv::from_api(kv));
        }
        if !page.more {
            return Ok(got);
        }
        start_after = page.next_start_after;
    }
}

pub fn typed_client(c: &Cluster, ids: &[u64]) -> anyhow::Result<Client> {
    let endpoints: Vec<String> = ids.iter().map(|id| c.url(*id, "")).collect();
    Ok(c.access()
        .builder(endpoints)
        .timeout(Duration::from_secs(10))
        .build()?)
}

/// Continuous backup of `client`'s cluster into `dest`, in the background.
pub struct Follower {
    pub stop: tokio::sync::watch::Sender<bool>,
    pub status: tokio::sync::watch::Receiver<FollowStatus>,
    pub task: tokio::task::JoinHandle<Result<(), kvserver::backup::BackupError>>,
}

pub fn follow(client: &Client, dest: &Destination, scratch: &std::path::Path) -> Follower {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let (status_tx, status) = tokio::sync::watch::channel(FollowStatus::default());
    let task = tokio::spawn(kvserver::backup::follow::follow(
        client.clone(),
        dest.clone(),
        FollowOptions {
            flush_interval: Duration::from_millis(300),
            scratch: scratch.to_path_buf(),
            ..Default::default()
        },
        stop_rx,
        status_tx,
    ));
    Follower { stop, status, task }
}

impl Follower {
    pub async fn wait_shipped(&mut self, revision: u64) -> anyhow::Result<()> {
        let ok = matches!(
            tokio::time::timeout(
                Duration::from_secs(30),
                self.status.wait_for(|s| s.shipped >= revision),
            )
            .await,
            Ok(Ok(_))
        );
        ensure!(
            ok,
            "continuous backup did not ship revision {revision}: {:?}",
            *self.status.borrow()
        );
        Ok(())
    }

    pub async fn stop(self) -> anyhow::Result<FollowStatus> {
        let _ = self.stop.send(true);
        self.task.await??;
        Ok(self.status.borrow().clone())
    }
}

/// The segments of `cluster` form one chain from its first base: each starts where
/// the previous ended (no gap, no overlap).
pub async fn chain_is_contiguous(dest: &Destination, cluster: &str) -> anyhow::Result<u64> {
    let segs = dest.segments(cluster).await?;
    ensure!(!segs.is_empty(), "no segments");
    for w in segs.windows(2) {
        ensure!(
            w[1].after == w[0].upto,
            "segments {} and {} do not join",
            w[0].name,
            w[1].name
        );
    }
    Ok(segs.len() as u64)
}

pub async fn compose(
    dest: &Destination,
    cluster: &str,
    target: Target,
) -> Result<Vec<u8>, kvserver::backup::BackupError> {
    Ok(
        kvserver::backup::point::compose(dest, cluster, target, Vec::new())
            .await?
            .0,
    )
}
