//! What releases before the separate Raft log (`crate::raftlog`) kept in the
//! database: the `raft_log` table and the vote, committed id and purge marker
//! rows of `raft_meta`. Read once to move them (`raftlog::migrate`), then deleted.

use sqlx::Row;

use super::Durability;
use super::Store;
use super::StoreError;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The old log's metadata rows, encoded as they are.
#[derive(Debug, Default)]
pub(crate) struct LegacyMeta {
    pub vote: Option<Vec<u8>>,
    pub committed: Option<Vec<u8>>,
    pub last_purged: Option<Vec<u8>>,
}

impl Store {
    async fn meta_raw(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query("SELECT value FROM raft_meta WHERE name = $1")
            .bind(name)
            .fetch_optional(&self.reader)
            .await?;
        Ok(match row {
            None => None,
            Some(r) => Some(r.try_get(0)?),
        })
    }

    pub(crate) async fn legacy_log_meta(&self) -> Result<LegacyMeta, StoreError> {
        Ok(LegacyMeta {
            vote: self.meta_raw(VOTE).await?,
            committed: self.meta_raw(COMMITTED).await?,
            last_purged: self.meta_raw(LAST_PURGED).await?,
        })
    }

    /// First and last index in the old log table, if it holds any entry.
    pub(crate) async fn legacy_log_bounds(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let row = sqlx::query("SELECT MIN(log_index), MAX(log_index) FROM raft_log")
            .fetch_one(&self.reader)
            .await?;
        let first: Option<i64> = row.try_get(0)?;
        let last: Option<i64> = row.try_get(1)?;
        Ok(first.zip(last))
    }

    /// Old log rows with `from <= index < to`, in order.
    pub(crate) async fn legacy_log_rows(
        &self,
        from: i64,
        to: i64,
    ) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let rows = sqlx::query(
            "SELECT log_index, entry FROM raft_log WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index",
        )
        .bind(from)
        .bind(to)
        .fetch_all(&self.reader)
        .await?;
        rows.into_iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Deletes the old log (once the new one holds it); nothing to do on later starts.
    pub(crate) async fn clear_legacy_log(&self) -> Result<(), StoreError> {
        let meta = self.legacy_log_meta().await?;
        let any_meta =
            meta.vote.is_some() || meta.committed.is_some() || meta.last_purged.is_some();
        if !any_meta && self.legacy_log_bounds().await?.is_none() {
            return Ok(());
        }
        let mut w = self.write_batch(Durability::Sync, true).await?;
        w.push("DELETE FROM raft_log", Vec::new());
        w.push(
            "DELETE FROM raft_meta WHERE name IN ('vote', 'committed', 'last_purged')",
            Vec::new(),
        );
        w.commit().await
    }

    /// Makes every state-machine commit so far durable (SQLite commits applies
    /// without a sync of their own: `Durability::Deferred`). Before the log drops
    /// entries, the database must hold what they produced.
    pub async fn sync(&self) -> Result<(), StoreError> {
        self.meta_put("synced", &1u8, Durability::Sync).await
    }
}
