//! openraft log storage on the node database: entries, vote, committed index
//! and the purge marker.
//!
//! Every mutating call is one transaction on the writer connection and returns
//! only after the durable commit completed, which is what lets `append` report
//! the batch flushed right away: one sync covers all entries openraft handed
//! over in that call. Every call waits out database outages (see the parent
//! module): openraft treats a storage error as fatal, and an outage is not one.

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::EntryOf;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use sqlx::Acquire;
use sqlx::Row;

use super::Durability;
use super::Store;
use super::StoreError;
use super::decode;
use super::encode;
use super::put_meta;
use crate::types::TypeConfig;

const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// The Raft log half of a node's store.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
}

impl LogStore {
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    async fn last_entry_log_id(&self) -> Result<Option<LogIdOf<TypeConfig>>, StoreError> {
        let row = self
            .store
            .retrying("read last log entry", || async {
                Ok(
                    sqlx::query("SELECT entry FROM raft_log ORDER BY log_index DESC LIMIT 1")
                        .fetch_optional(&self.store.reader)
                        .await?,
                )
            })
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let bytes: Vec<u8> = row.try_get(0)?;
                let entry: EntryOf<TypeConfig> = decode("raft_log entry", &bytes)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

fn range_to_sql<RB: RangeBounds<u64>>(range: &RB) -> (i64, i64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s as i64,
        Bound::Excluded(s) => *s as i64 + 1,
        Bound::Unbounded => 0,
    };
    // Upper bound exclusive; i64::MAX stands for "to the end".
    let end = match range.end_bound() {
        Bound::Included(e) => (*e as i64).saturating_add(1),
        Bound::Excluded(e) => *e as i64,
        Bound::Unbounded => i64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let (start, end) = range_to_sql(&range);
        let rows = self
            .store
            .retrying("read log entries", || async {
                Ok(sqlx::query("SELECT entry FROM raft_log WHERE log_index >= $1 AND log_index < $2 ORDER BY log_index")
                    .bind(start)
                    .bind(end)
                    .fetch_all(&self.store.reader)
                    .await?)
            })
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let bytes: Vec<u8> = row.try_get(0).map_err(StoreError::from)?;
            out.push(decode("raft_log entry", &bytes)?);
        }
        Ok(out)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        Ok(self
            .store
            .retrying("read vote", || self.store.meta_get(VOTE))
            .await?)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged: Option<LogIdOf<TypeConfig>> = self
            .store
            .retrying("read purge marker", || self.store.meta_get(LAST_PURGED))
            .await?;
        let last = self.last_entry_log_id().await?.or(last_purged);
        Ok(LogState {
            last_purged_log_id: last_purged,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        Ok(self.store.meta_put(VOTE, vote, Durability::Sync).await?)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        // Advisory (it only saves re-applying on restart): no sync of its own.
        Ok(self
            .store
            .meta_put(COMMITTED, &committed, Durability::Deferred)
            .await?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        let c: Option<Option<LogIdOf<TypeConfig>>> = self
            .store
            .retrying("read committed", || self.store.meta_get(COMMITTED))
            .await?;
        Ok(c.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: IOFlushed<TypeConfig>,
    ) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = EntryOf<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let started = std::time::Instant::now();
        let rows: Result<Vec<(i64, Vec<u8>)>, StoreError> = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index as i64, encode(&e)?)))
            .collect();
        let result = match rows {
            Err(e) => Err(e),
            Ok(rows) => {
                // Overwriting by index makes a retry after an unknown commit outcome harmless.
                self.store
                    .retrying("append log entries", || async {
                        let mut conn = self.store.writer(Durability::Sync).await?;
                        let mut tx = conn.begin().await?;
                        for (index, bytes) in &rows {
                            sqlx::query(
                                "INSERT INTO raft_log (log_index, entry) VALUES ($1, $2) \
                                 ON CONFLICT (log_index) DO UPDATE SET entry = excluded.entry",
                            )
                            .bind(*index)
                            .bind(bytes.clone())
                            .execute(&mut *tx)
                            .await?;
                        }
                        tx.commit().await?;
                        Ok(())
                    })
                    .await
            }
        };
        self.store
            .metrics
            .storage_sync_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                // The commit above returned after the durable sync: the batch is flushed.
                callback.io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                let e: io::Error = e.into();
                callback.io_completed(Err(io::Error::new(e.kind(), e.to_string())));
                Err(e)
            }
        }
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let keep_through = last_log_id.map(|l| l.index as i64).unwrap_or(-1);
        self.store
            .retrying("truncate log", || async {
                let mut conn = self.store.writer(Durability::Sync).await?;
                sqlx::query("DELETE FROM raft_log WHERE log_index > $1")
                    .bind(keep_through)
                    .execute(&mut *conn)
                    .await?;
                Ok(())
            })
            .await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let bytes = encode(&log_id)?;
        self.store
            .retrying("purge log", || async {
                let mut conn = self.store.writer(Durability::Sync).await?;
                let mut tx = conn.begin().await?;
                // The marker goes in the same transaction, so a crash never leaves entries
                // gone without the marker that explains their absence.
                put_meta(&mut tx, LAST_PURGED, bytes.clone()).await?;
                sqlx::query("DELETE FROM raft_log WHERE log_index <= $1")
                    .bind(log_id.index as i64)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            })
            .await?;
        Ok(())
    }
}
