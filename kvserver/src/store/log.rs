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
use std::sync::Arc;
use std::sync::Mutex;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::EntryOf;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use sqlx::Row;

use super::Durability;
use super::Store;
use super::StoreError;
use super::batch;
use super::batch::Shapes;
use super::decode;
use super::encode;
use super::put_metas;
use super::script::Arg;
use crate::command::TypeConfig;

const VOTE: &str = "vote";
pub(crate) const COMMITTED: &str = "committed";
const LAST_PURGED: &str = "last_purged";

/// Upsert of `n` entries (overwriting by index makes a retried append harmless).
static APPEND: Shapes = Shapes::new(|n| {
    format!(
        "INSERT INTO raft_log (log_index, entry) VALUES {} \
         ON CONFLICT (log_index) DO UPDATE SET entry = excluded.entry",
        batch::values(n, 2)
    )
});

/// Most entries kept in the in-memory tail of the log.
const TAIL_MAX_ENTRIES: usize = 4096;
/// Most (encoded) bytes kept in the in-memory tail of the log.
const TAIL_MAX_BYTES: usize = 8 << 20;

/// The most recently appended entries, in memory. Replication and the state
/// machine read what was just appended, and profiles showed each such read as a
/// round trip to a reader connection's thread; from here it is a copy.
///
/// Invariant: the tail is always a suffix of the stored log (consecutive indexes
/// ending at the last stored entry), or empty. Entries join after their commit,
/// truncation and purge remove them here too, and anything unusual (an append
/// that does not continue the tail) empties it; reads it cannot serve whole go to
/// the database.
#[derive(Default)]
struct Tail {
    entries: std::collections::VecDeque<(EntryOf<TypeConfig>, usize)>,
    bytes: usize,
}

impl Tail {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index)
    }

    /// Adds entries just committed after the current last stored entry.
    fn extend(&mut self, appended: Vec<(EntryOf<TypeConfig>, usize)>) {
        let Some(first_new) = appended.first().map(|(e, _)| e.log_id.index) else {
            return;
        };
        if self.last().is_some_and(|last| first_new != last + 1) {
            // An overwrite or a gap: the stored log may hold entries we cannot see here.
            self.clear();
        }
        for (entry, size) in appended {
            self.bytes += size;
            self.entries.push_back((entry, size));
        }
        while self.entries.len() > TAIL_MAX_ENTRIES || self.bytes > TAIL_MAX_BYTES {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }

    /// Keeps entries up to and including `index` (all removed for `None`).
    fn truncate_after(&mut self, index: Option<u64>) {
        while let Some(last) = self.last() {
            if index.is_some_and(|i| last <= i) {
                break;
            }
            if let Some((_, size)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// Removes entries up to and including `index`.
    fn purge(&mut self, index: u64) {
        while self.first().is_some_and(|f| f <= index) {
            self.pop_front();
        }
    }

    /// Entries with `start <= index < end`, if the tail holds all of them that exist.
    fn get(&self, start: u64, end: u64) -> Option<Vec<EntryOf<TypeConfig>>> {
        let (first, last) = (self.first()?, self.last()?);
        if start < first {
            return None;
        }
        let end = end.min(last + 1);
        if start >= end {
            return Some(Vec::new());
        }
        let from = (start - first) as usize;
        let to = (end - first) as usize;
        Some(
            self.entries
                .range(from..to)
                .map(|(e, _)| e.clone())
                .collect(),
        )
    }
}

/// The Raft log half of a node's store.
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    tail: Arc<Mutex<Tail>>,
}

impl LogStore {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            tail: Arc::default(),
        }
    }

    fn tail(&self) -> std::sync::MutexGuard<'_, Tail> {
        // A panic while holding the lock leaves a consistent deque (no partial updates
        // that matter: at worst a shorter tail), so a poisoned lock is still usable.
        self.tail.lock().unwrap_or_else(|p| p.into_inner())
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
        if let Some(hit) = self.tail().get(start as u64, end as u64) {
            return Ok(hit);
        }
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
        // Advisory (it only lets a restarted node apply up to it before hearing from a
        // leader), so it costs no statement of its own: the next apply transaction
        // records it, and a crash loses at most the last value.
        self.store.set_pending_committed(encode(&committed)?);
        Ok(())
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
        let entries: Vec<EntryOf<TypeConfig>> = entries.into_iter().collect();
        let rows: Result<Vec<(i64, Vec<u8>)>, StoreError> = entries
            .iter()
            .map(|e| Ok((e.log_id.index as i64, encode(e)?)))
            .collect();
        let result = match rows {
            Err(e) => Err(e),
            Ok(rows) => {
                let sizes: Vec<usize> = rows.iter().map(|(_, b)| b.len()).collect();
                // Overwriting by index makes a retry after an unknown commit outcome harmless.
                self.store
                    .retrying("append log entries", || async {
                        if rows.is_empty() {
                            // Nothing to write (openraft may hand over an empty batch).
                            return Ok(());
                        }
                        let chunks: Vec<usize> = batch::insert_chunks(rows.len()).collect();
                        // One multi-row statement is its own transaction: one sync.
                        let mut w = self
                            .store
                            .write_batch(Durability::Sync, chunks.len() > 1)
                            .await?;
                        let mut rest = &rows[..];
                        for n in chunks {
                            let (chunk, tail) = rest.split_at(n);
                            rest = tail;
                            let mut args = Vec::with_capacity(2 * n);
                            for (index, bytes) in chunk {
                                args.push(Arg::Int(*index));
                                args.push(Arg::Blob(bytes.clone()));
                            }
                            w.push(APPEND.get(n), args);
                        }
                        w.commit().await
                    })
                    .await
                    .map(|()| self.tail().extend(entries.into_iter().zip(sizes).collect()))
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
        // Before the delete: a tail entry the table no longer has must never be served.
        self.tail().truncate_after(last_log_id.map(|l| l.index));
        self.store
            .retrying("truncate log", || async {
                let mut w = self.store.write_batch(Durability::Sync, false).await?;
                w.push(
                    "DELETE FROM raft_log WHERE log_index > $1",
                    vec![Arg::Int(keep_through)],
                );
                w.commit().await
            })
            .await?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        let bytes = encode(&log_id)?;
        self.tail().purge(log_id.index);
        self.store
            .retrying("purge log", || async {
                let mut w = self.store.write_batch(Durability::Sync, true).await?;
                // The marker goes in the same transaction, so a crash never leaves entries
                // gone without the marker that explains their absence.
                put_metas(&mut w, &[(LAST_PURGED, bytes.clone())]);
                w.push(
                    "DELETE FROM raft_log WHERE log_index <= $1",
                    vec![Arg::Int(log_id.index as i64)],
                );
                w.commit().await
            })
            .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use openraft::EntryPayload;
    use openraft::vote::RaftLeaderIdExt;

    use super::*;

    fn entry(index: u64) -> (EntryOf<TypeConfig>, usize) {
        let leader = openraft::type_config::alias::LeaderIdOf::<TypeConfig>::new_committed(1, 1);
        let e = EntryOf::<TypeConfig> {
            log_id: openraft::LogId::new(leader, index),
            payload: EntryPayload::Blank,
        };
        (e, 100)
    }

    fn indexes(v: Option<Vec<EntryOf<TypeConfig>>>) -> Option<Vec<u64>> {
        v.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn tail_serves_only_what_it_holds_whole() {
        let mut t = Tail::default();
        assert_eq!(
            indexes(t.get(0, u64::MAX)),
            None,
            "empty tail serves nothing"
        );
        t.extend((5..=9).map(entry).collect());
        assert_eq!(indexes(t.get(6, 8)), Some(vec![6, 7]));
        assert_eq!(indexes(t.get(7, u64::MAX)), Some(vec![7, 8, 9]));
        assert_eq!(indexes(t.get(10, u64::MAX)), Some(vec![]), "past the end");
        assert_eq!(indexes(t.get(4, 8)), None, "starts before the tail");
        t.truncate_after(Some(7));
        assert_eq!(indexes(t.get(5, u64::MAX)), Some(vec![5, 6, 7]));
        t.purge(5);
        assert_eq!(indexes(t.get(5, u64::MAX)), None);
        assert_eq!(indexes(t.get(6, u64::MAX)), Some(vec![6, 7]));
        // Continuing appends join; anything else empties the tail.
        t.extend(vec![entry(8)]);
        assert_eq!(t.last(), Some(8));
        t.extend(vec![entry(7)]);
        assert_eq!((t.first(), t.last()), (Some(7), Some(7)));
        t.extend(vec![entry(9)]);
        assert_eq!((t.first(), t.last()), (Some(9), Some(9)));
        t.truncate_after(None);
        assert_eq!(t.bytes, 0);
        assert!(t.entries.is_empty());
    }

    #[test]
    fn tail_is_bounded() {
        let mut t = Tail::default();
        t.extend((1..=(TAIL_MAX_ENTRIES as u64 + 10)).map(entry).collect());
        assert_eq!(t.entries.len(), TAIL_MAX_ENTRIES);
        assert_eq!(t.first(), Some(11));
        assert_eq!(t.bytes, TAIL_MAX_ENTRIES * 100);
    }
}
