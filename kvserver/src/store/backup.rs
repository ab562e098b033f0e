//! Full backups of the state machine, and restoring one into an empty store.
//!
//! A backup is one consistent read ([`Store::consistent_read`]): the revision and
//! every key belong to the same committed state, and the read blocks no write
//! (SQLite readers do not block its one writer in WAL mode; PostgreSQL's
//! REPEATABLE READ takes no locks). A restore checks the whole file before it
//! writes anything, then installs it in one transaction that also records which
//! backup it was, so a crash leaves either nothing or all of it.

use std::path::Path;
use std::sync::atomic::Ordering;

use futures_util::TryStreamExt;
use tokio::io::AsyncWrite;

use super::Durability;
use super::KV_COLUMNS;
use super::Store;
use super::StoreError;
use super::encode;
use super::get_meta;
use super::put_metas;
use super::replace::TableReplace;
use super::row_to_kv;
use super::sm::SM_APPLIED;
use super::sm::SM_REVISION;
use crate::backup::BackupHeader;
use crate::backup::BackupReader;
use crate::backup::BackupSummary;
use crate::backup::BackupWriter;

/// `raft_meta` row naming the backup a store was restored from (its summary, JSON).
const RESTORED_FROM: &str = "restored_from";

/// Which of a backup's keys a store takes when it is restored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Select {
    /// Every key: a cluster of one partition (from any backup, a partitioned
    /// cluster's included), at the backup's highest revision.
    All,
    /// The keys that fall in `partition` of `count` partitions: one partition's
    /// group. At that partition's own revision when the backup has the same
    /// count (each key is where it was); else the keys are placed anew by hash
    /// and the partition starts at the backup's highest revision, which every
    /// key's revisions are at or below.
    Partition { partition: u32, count: u32 },
    /// None: the cluster group of a partitioned cluster (it holds the map, not
    /// keys), at revision 0.
    Nothing,
}

impl Select {
    fn takes(&self, key: &str) -> bool {
        match self {
            Select::All => true,
            Select::Partition { partition, count } => {
                crate::placement::hash::partition_of(key.as_bytes(), *count) == *partition
            }
            Select::Nothing => false,
        }
    }

    /// The revision the store starts at after taking its keys of `summary`.
    fn revision(&self, summary: &BackupSummary) -> u64 {
        match self {
            Select::All => summary.header.revision,
            Select::Nothing => 0,
            Select::Partition { partition, count } => summary
                .partitions
                .as_ref()
                .filter(|p| p.len() == *count as usize)
                .and_then(|p| p.get(partition).copied())
                .unwrap_or(summary.header.revision),
        }
    }
}

impl Store {
    /// Writes a backup of the current state into `out`.
    pub async fn backup_into<W: AsyncWrite + Unpin>(
        &self,
        out: W,
        cluster_id: &str,
        node_id: u64,
    ) -> Result<(W, BackupSummary), StoreError> {
        // Everything applied when the backup was asked for is in it.
        self.caught_up().await?;
        let mut tx = self.consistent_read().await?;
        let revision: u64 = get_meta(&mut tx, SM_REVISION).await?.unwrap_or(0);
        let header = BackupHeader {
            cluster_id: cluster_id.to_string(),
            revision,
            taken_at_ms: now_ms(),
            writer_version: env!("CARGO_PKG_VERSION").to_string(),
            node_id,
        };
        let mut w = BackupWriter::new(out, header).await?;
        {
            // Ordered by key: backups are merged with segments in key order, and
            // `BackupWriter` refuses anything else.
            let mut rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT {KV_COLUMNS} FROM kv ORDER BY key"
            )))
            .fetch(&mut *tx);
            while let Some(row) = rows.try_next().await? {
                w.kv(&row_to_kv(&row, true)?).await?;
            }
        }
        tx.rollback().await?;
        Ok(w.finish().await?)
    }

    /// Checks the backup at `path` and installs it as this store's state. The store
    /// must be empty (never initialized); `cluster_id` is the new cluster's, which must
    /// differ from the backup's: a restore forms a new cluster.
    ///
    /// Repeating a restore that completed (a node restarted with the same setting) is
    /// a no-op that returns the summary recorded then.
    pub async fn restore_from(
        &self,
        path: &Path,
        cluster_id: &str,
        select: Select,
    ) -> Result<BackupSummary, StoreError> {
        let file = tokio::fs::File::open(path).await.map_err(|e| {
            StoreError::RestoreRefused(format!("cannot open {}: {e}", path.display()))
        })?;
        let checked = BackupReader::open(tokio::io::BufReader::new(file))
            .await?
            .verify()
            .await?;
        if let Some(done) = self.restored_from().await? {
            if done.sha256 == checked.sha256 {
                return Ok(done);
            }
            return Err(StoreError::RestoreRefused(format!(
                "this store was already restored from another backup (revision {} of {})",
                done.header.revision, done.header.cluster_id
            )));
        }
        if checked.header.cluster_id == cluster_id {
            return Err(StoreError::RestoreRefused(format!(
                "the backup is of cluster {cluster_id:?}, the id this node is configured with; a restore forms a new cluster: give it another cluster_id"
            )));
        }
        let applied: Option<
            Option<openraft::type_config::alias::LogIdOf<crate::command::TypeConfig>>,
        > = self.meta_get(SM_APPLIED).await?;
        if applied.flatten().is_some() || self.revision() > 0 || self.key_count().await? > 0 {
            return Err(StoreError::RestoreRefused(
                "the data directory holds data: a backup is restored only into an empty store"
                    .into(),
            ));
        }
        let file = tokio::fs::File::open(path).await?;
        let mut reader = BackupReader::open(tokio::io::BufReader::new(file)).await?;
        let revision = select.revision(&checked);
        let mut w = self.write_batch(Durability::Sync, true).await?;
        let mut table = TableReplace::new(&mut w);
        // A key is provisional until the end checks out; nothing commits before.
        while let Some(kv) = reader.next_kv().await? {
            if select.takes(&kv.key) {
                table.push(kv).await?;
            }
        }
        table.finish().await?;
        let summary = reader.summary()?;
        // History starts at the backup: watching from before it answers 410.
        super::watch::reset_history(&mut w, revision)?;
        let recorded = serde_json::to_vec(&summary).map_err(|e| StoreError::Corrupt {
            what: RESTORED_FROM.into(),
            detail: e.to_string(),
        })?;
        put_metas(
            &mut w,
            &[
                (SM_REVISION, encode(&revision)?),
                (RESTORED_FROM, encode(&recorded)?),
            ],
        );
        w.commit().await?;
        self.rows.clear();
        self.revision.store(revision, Ordering::SeqCst);
        self.compacted.store(revision, Ordering::SeqCst);
        self.publish_reset(revision);
        Ok(summary)
    }

    /// The backup this store was restored from, if any.
    pub async fn restored_from(&self) -> Result<Option<BackupSummary>, StoreError> {
        let Some(bytes) = self.meta_get::<Vec<u8>>(RESTORED_FROM).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Corrupt {
                what: RESTORED_FROM.into(),
                detail: e.to_string(),
            })
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
