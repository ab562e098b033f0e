//! The key-value state machine: applies committed commands, builds snapshots
//! from a consistent read of the database and installs received ones.
//!
//! A batch of entries from openraft is applied in memory and its clients are
//! answered at once; its rows, watch events and position in the log (applied
//! log id, membership, revision) go to the database together, in batches
//! (`overlay.rs`, `persist.rs`), so the table and its recorded position can
//! never disagree after a crash: a restarted node re-applies the log from the
//! position the database holds. Snapshots are built from a consistent read of
//! the database and carry its position, never the in-memory one.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::Stream;
use futures_util::TryStreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::StoredMembership;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use openraft::type_config::alias::EntryOf;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::SnapshotMetaOf;
use openraft::type_config::alias::SnapshotOf;
use openraft::type_config::alias::StoredMembershipOf;

use super::Durability;
use super::KV_COLUMNS;
use super::Store;
use super::StoreError;
use super::apply::ApplyCtx;
use super::encode;
use super::get_meta;
use super::overlay::Pending;
use super::put_metas;
use super::replace::TableReplace;
use super::row_to_kv;
use super::snapshot::SnapshotFile;
use super::snapshot::SnapshotWriter;
use crate::command::ApplyResult;
use crate::command::TypeConfig;

pub(crate) const SM_APPLIED: &str = "sm_applied";
const SM_MEMBERSHIP: &str = "sm_membership";
pub(crate) const SM_REVISION: &str = "sm_revision";
const SNAPSHOT_CURRENT: &str = "snapshot_current";

type Snapshot = SnapshotOf<TypeConfig, SnapshotFile>;

/// The state machine half of a node's store.
pub struct StateMachine {
    store: Store,
    applied: Option<LogIdOf<TypeConfig>>,
    membership: StoredMembershipOf<TypeConfig>,
    /// Serialises updates of the "current snapshot" pointer between builds and installs.
    snapshot_lock: Arc<tokio::sync::Mutex<()>>,
}

/// What applying one batch in memory produced.
struct Applied {
    results: Vec<ApplyResult>,
    revision: u64,
    /// The placement map, if the batch replaced it.
    placement: Option<crate::placement::map::PlacementMap>,
    membership: StoredMembershipOf<TypeConfig>,
    /// Watch events of the batch, in revision order.
    events: Vec<crate::command::Change>,
    /// New watch-history compaction horizon, if the batch moved it.
    compacted: Option<u64>,
    /// Final rows of the keys the batch changed.
    changed: Vec<(String, super::cache::Row)>,
}

impl StateMachine {
    /// Loads the applied position and membership recorded in the store.
    pub async fn new(store: Store) -> Result<Self, StoreError> {
        let applied: Option<Option<LogIdOf<TypeConfig>>> = store.meta_get(SM_APPLIED).await?;
        let membership: Option<StoredMembershipOf<TypeConfig>> =
            store.meta_get(SM_MEMBERSHIP).await?;
        Ok(Self {
            store,
            applied: applied.flatten(),
            membership: membership.unwrap_or_default(),
            snapshot_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// Applies `batch` in memory (reads go through the overlay, the row cache and
    /// the database); nothing is written yet.
    async fn compute(&self, batch: &[EntryOf<TypeConfig>]) -> Result<Applied, StoreError> {
        let mut membership = self.membership.clone();
        let mut results = Vec::with_capacity(batch.len());
        let mut ctx = ApplyCtx::new(&self.store, self.store.revision());
        let commands: Vec<&crate::command::Command> = batch
            .iter()
            .filter_map(|e| match &e.payload {
                EntryPayload::Normal(cmd) => Some(cmd),
                _ => None,
            })
            .collect();
        ctx.prefetch(&commands).await?;
        for entry in batch {
            let result = match &entry.payload {
                EntryPayload::Blank => ApplyResult::none(ctx.rev),
                EntryPayload::Normal(cmd) => {
                    let outcome = ctx.command(cmd.clone()).await?;
                    ApplyResult {
                        revision: ctx.rev,
                        outcome: Some(outcome),
                    }
                }
                EntryPayload::Membership(m) => {
                    membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    ApplyResult::none(ctx.rev)
                }
            };
            results.push(result);
        }
        let placement = ctx.placement.take();
        let (rev, events, changed) = ctx.finish();
        let compacted = super::watch::horizon(
            rev,
            self.store.watch_history,
            self.store.compacted.load(Ordering::SeqCst),
        );
        Ok(Applied {
            results,
            revision: rev,
            placement,
            membership,
            events,
            compacted,
            changed,
        })
    }

    async fn apply_batch<S>(&mut self, mut entries: S) -> Result<(), StoreError>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some((entry, responder)) = entries.try_next().await? {
            batch.push(entry);
            responders.push(responder);
        }
        let Some(last) = batch.last().map(|e| e.log_id) else {
            return Ok(());
        };
        // A database that cannot keep up (or is down) holds applies here, bounded.
        self.store.overlay.wait_for_room().await;
        let applied = self
            .store
            .retrying("apply entries", || self.compute(&batch))
            .await?;
        let mut meta = vec![
            (SM_APPLIED, encode(&Some(last))?),
            (SM_REVISION, encode(&applied.revision)?),
        ];
        if applied.membership != self.membership {
            meta.push((SM_MEMBERSHIP, encode(&applied.membership)?));
        }
        if let Some(horizon) = applied.compacted {
            meta.push((super::watch::WATCH_COMPACTED, encode(&horizon)?));
        }
        if let Some(map) = &applied.placement {
            meta.push((super::SM_PLACEMENT, encode(map)?));
        }
        let bytes = applied
            .changed
            .iter()
            .map(|(k, r)| k.len() + r.as_ref().map_or(0, |kv| kv.value.len() + 64))
            .sum();
        // Pinned before anything below makes the batch visible: a read that sees
        // the new revision finds the rows.
        self.store.overlay.push(Pending {
            applied_index: last.index + 1,
            rows: applied.changed,
            events: applied.events.clone(),
            meta,
            compact_to: applied.compacted,
            bytes,
            entries: batch.len() as u64,
            ..Pending::default()
        });
        self.applied = Some(last);
        self.membership = applied.membership;
        if let Some(horizon) = applied.compacted {
            self.store.compacted.store(horizon, Ordering::SeqCst);
        }
        self.store
            .revision
            .store(applied.revision, Ordering::SeqCst);
        if let Some(map) = applied.placement {
            self.store.placement.send_replace(Arc::new(map));
        }
        // After the commit and the revision: a watcher that reads history up to the
        // revision and then follows the feed sees every event exactly once.
        self.store.publish(applied.events);
        for (responder, result) in responders.into_iter().zip(applied.results) {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn install_once(
        &self,
        meta: &SnapshotMetaOf<TypeConfig>,
        path: &std::path::Path,
    ) -> Result<(u64, Option<crate::placement::map::PlacementMap>), StoreError> {
        let mut reader = SnapshotFile::open(path).await?.reader();
        let revision = reader.header().await?;
        let mut w = self.store.write_batch(Durability::Sync, true).await?;
        let mut table = TableReplace::new(&mut w);
        while let Some(kv) = reader.next_kv().await? {
            table.push(kv).await?;
        }
        table.finish().await?;
        // The event history does not travel with snapshots: it restarts at the snapshot.
        super::watch::reset_history(&mut w, revision)?;
        let mut metas = vec![
            (SM_APPLIED, encode(&meta.last_log_id)?),
            (SM_MEMBERSHIP, encode(&meta.last_membership)?),
            (SM_REVISION, encode(&revision)?),
        ];
        let placement = reader.placement.take();
        if let Some(map) = &placement {
            metas.push((super::SM_PLACEMENT, encode(map)?));
        }
        put_metas(&mut w, &metas);
        w.commit().await?;
        Ok((revision, placement))
    }

    async fn install(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: SnapshotFile,
    ) -> Result<(), StoreError> {
        let received_path = snapshot.path.clone();
        drop(snapshot);
        // Everything applied before goes to the table first: the persister must not
        // write older rows over the snapshot's.
        self.store.caught_up().await?;
        let (revision, placement) = self
            .store
            .retrying("install snapshot", || {
                self.install_once(meta, &received_path)
            })
            .await?;
        if let Some(map) = placement {
            self.store.placement.send_replace(Arc::new(map));
        }
        // The table was replaced wholesale.
        self.store
            .overlay
            .reset(meta.last_log_id.map_or(0, |l| l.index + 1));
        self.store.rows.clear();
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.store.revision.store(revision, Ordering::SeqCst);
        // `reset_history` moved the horizon to the snapshot's revision.
        self.store.compacted.store(revision, Ordering::SeqCst);
        self.store.publish_reset(revision);

        let final_path = snapshot_path(&self.store, &meta.last_log_id);
        if received_path != final_path {
            tokio::fs::rename(&received_path, &final_path).await?;
        }
        set_current_snapshot(&self.store, &self.snapshot_lock, meta, &final_path).await
    }

    async fn current(&self) -> Result<Option<Snapshot>, StoreError> {
        // The pointer is read and its file opened under the lock `set_current_snapshot`
        // holds while it moves the pointer and deletes the files nobody points at.
        // Without it, a snapshot built between the two steps deleted the file just read
        // from the pointer: the leader answered "snapshot not found" to the replication
        // of a lagging follower, which openraft treats as a storage failure, and its Raft
        // stopped (`cluster.rs::restarted_node_catches_up_by_snapshot_after_purge`, a
        // snapshot every 20 entries, once in a fresh-clone run). Once open, the file
        // stays readable whatever happens to its name.
        let _guard = self.snapshot_lock.lock().await;
        let cur: Option<(SnapshotMetaOf<TypeConfig>, String)> = self
            .store
            .retrying("read snapshot pointer", || {
                self.store.meta_get(SNAPSHOT_CURRENT)
            })
            .await?;
        let Some((meta, name)) = cur else {
            return Ok(None);
        };
        let path = self.store.snapshot_dir.join(name);
        match SnapshotFile::open(&path).await {
            Ok(file) => Ok(Some(Snapshot {
                meta,
                snapshot: file,
            })),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "current snapshot file is missing");
                Ok(None)
            }
        }
    }
}

fn snapshot_path(store: &Store, last: &Option<LogIdOf<TypeConfig>>) -> std::path::PathBuf {
    let name = match last {
        Some(l) => format!("snap-{}-{}.snap", l.index, l.leader_id),
        None => "snap-empty.snap".to_string(),
    };
    store.snapshot_dir.join(name.replace(['/', ' ', ':'], "_"))
}

/// Points "current snapshot" at `path` unless a newer one is already current, then
/// removes snapshot files nobody points at.
async fn set_current_snapshot(
    store: &Store,
    lock: &tokio::sync::Mutex<()>,
    meta: &SnapshotMetaOf<TypeConfig>,
    path: &std::path::Path,
) -> Result<(), StoreError> {
    let _guard = lock.lock().await;
    let cur: Option<(SnapshotMetaOf<TypeConfig>, String)> = store
        .retrying("read snapshot pointer", || store.meta_get(SNAPSHOT_CURRENT))
        .await?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let keep = match &cur {
        Some((m, n)) if m.last_log_id > meta.last_log_id && *n != name => n.clone(),
        _ => {
            store
                .meta_put(
                    SNAPSHOT_CURRENT,
                    &(meta.clone(), name.clone()),
                    Durability::Sync,
                )
                .await?;
            name
        }
    };
    if let Ok(entries) = std::fs::read_dir(&store.snapshot_dir) {
        for e in entries.flatten() {
            let fname = e.file_name().to_string_lossy().into_owned();
            if fname.ends_with(".snap") && fname != keep {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    Ok(())
}

/// Builds a snapshot from a consistent read of the database.
pub struct SnapshotBuilder {
    store: Store,
    lock: Arc<tokio::sync::Mutex<()>>,
}

impl SnapshotBuilder {
    async fn build_once(
        &self,
    ) -> Result<(SnapshotMetaOf<TypeConfig>, std::path::PathBuf), StoreError> {
        // Everything applied when the snapshot was asked for is in it: callers wait
        // for a snapshot to cover what they applied (`restore.rs` seals a restored
        // cluster this way; the backup test hung when snapshots lagged the overlay).
        self.store.caught_up().await?;
        // One read transaction sees one committed state: the applied position, the
        // membership, the revision and every key below belong to the same instant.
        let mut tx = self.store.consistent_read().await?;
        let applied: Option<LogIdOf<TypeConfig>> =
            get_meta::<Option<LogIdOf<TypeConfig>>>(&mut tx, SM_APPLIED)
                .await?
                .flatten();
        let membership: StoredMembershipOf<TypeConfig> =
            get_meta(&mut tx, SM_MEMBERSHIP).await?.unwrap_or_default();
        let revision: u64 = get_meta(&mut tx, SM_REVISION).await?.unwrap_or(0);
        let placement: Option<crate::placement::map::PlacementMap> =
            get_meta(&mut tx, super::SM_PLACEMENT).await?;
        let mut writer = SnapshotWriter::create(&self.store.snapshot_dir, revision).await?;
        if let Some(map) = &placement {
            writer.placement(map).await?;
        }
        {
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {KV_COLUMNS} FROM kv ORDER BY key"
            )))
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                writer.kv(row_to_kv(&row, true)?).await?;
            }
        }
        tx.rollback().await?;
        let path = snapshot_path(&self.store, &applied);
        writer.finish(&path).await?;
        Ok((
            SnapshotMetaOf::<TypeConfig> {
                last_log_id: applied,
                last_membership: membership,
            },
            path,
        ))
    }

    async fn build(&mut self) -> Result<Snapshot, StoreError> {
        let (meta, path) = self
            .store
            .retrying("build snapshot", || self.build_once())
            .await?;
        // Opened before it is published: once published, a newer snapshot may delete it.
        let file = SnapshotFile::open(&path).await?;
        set_current_snapshot(&self.store, &self.lock, &meta, &path).await?;
        let bytes = file.len().await.unwrap_or(0);
        tracing::info!(last_log_id = ?meta.last_log_id, bytes, "built snapshot");
        Ok(Snapshot {
            meta,
            snapshot: file,
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        Ok(self.build().await?)
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogIdOf<TypeConfig>>, StoredMembershipOf<TypeConfig>), io::Error> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        Ok(self.apply_batch(entries).await?)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        SnapshotBuilder {
            store: self.store.clone(),
            lock: self.snapshot_lock.clone(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMetaOf<TypeConfig>,
        snapshot: Self::SnapshotData,
    ) -> Result<(), io::Error> {
        Ok(self.install(meta, snapshot).await?)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        Ok(self.current().await?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use openraft::storage::RaftSnapshotBuilder;
    use openraft::type_config::alias::CommittedLeaderIdOf;
    use openraft::type_config::alias::EntryOf;

    use super::*;
    use crate::store::Backend;
    use crate::store::StoreOptions;

    fn blank(index: u64) -> EntryOf<TypeConfig> {
        let leader = CommittedLeaderIdOf::<TypeConfig> {
            term: 1,
            node_id: 1,
        };
        EntryOf::<TypeConfig> {
            log_id: LogIdOf::<TypeConfig>::new(leader, index),
            payload: EntryPayload::Blank,
        }
    }

    /// Replication reads the current snapshot while newer ones are built and
    /// published, each deleting the file of the one before: every read must find one
    /// (a miss stops the leader's Raft, see `current`).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_current_snapshot_stays_readable_while_newer_ones_replace_it() -> anyhow::Result<()>
    {
        let dir = tempfile::tempdir()?;
        let opts = StoreOptions {
            data_dir: dir.path().to_path_buf(),
            node_id: 1,
            cluster_id: "snapshots".into(),
            backend: Backend::Sqlite,
            watch_history: 100,
            feed_capacity: 16,
            cache_bytes: 1 << 20,
        };
        let store = Store::open(&opts, Arc::new(crate::metrics::Metrics::new()?)).await?;
        let mut sm = StateMachine::new(store.clone()).await?;
        let mut builder = sm.get_snapshot_builder().await;
        // openraft asks the state machine for the current snapshot and its builder
        // for new ones: both share one lock, as here.
        let reader = StateMachine {
            snapshot_lock: sm.snapshot_lock.clone(),
            ..StateMachine::new(store).await?
        };
        let mut index = 0;
        sm.apply_batch(futures_util::stream::iter([Ok((blank(index), None))]))
            .await?;
        builder.build_snapshot().await?;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reads = tokio::spawn({
            let done = done.clone();
            async move {
                let mut n = 0u32;
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let found = reader.current().await?;
                    anyhow::ensure!(found.is_some(), "read {n}: no current snapshot");
                    n += 1;
                    tokio::task::yield_now().await;
                }
                Ok(n)
            }
        });
        for _ in 0..200 {
            index += 1;
            sm.apply_batch(futures_util::stream::iter([Ok((blank(index), None))]))
                .await?;
            builder.build_snapshot().await?;
        }
        done.store(true, std::sync::atomic::Ordering::Relaxed);
        let n = reads.await??;
        anyhow::ensure!(n > 0, "the reader never ran");
        Ok(())
    }
}
