//! openraft's log storage for one Raft group on the node's shared log.
//!
//! Entries, votes and log ids are stored bincode-encoded, the same bytes the
//! database held before (`migrate.rs` copies them as they are). `append`
//! returns once the entries are readable and openraft hears through its
//! callback when they are durable; a vote and a truncation return durable; the
//! committed id rides along with the next write (advisory). A purge first makes
//! the state machine's database durable up to what it has applied, since the
//! log is the only other copy of what it drops (`Store::sync`).

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;

use bytes::Bytes;
use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::EntryOf;
use openraft::type_config::alias::LogIdOf;
use openraft::type_config::alias::VoteOf;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::Engine;
use super::LogError;
use crate::command::TypeConfig;
use crate::store::Store;

/// The log of one group.
#[derive(Clone)]
pub struct RaftLog {
    engine: Engine,
    group: u64,
    /// The group's state machine database, synced before a purge.
    store: Store,
}

fn encode<T: Serialize>(v: &T) -> Result<Bytes, LogError> {
    bincode::serialize(v)
        .map(Bytes::from)
        .map_err(|e| LogError::Codec(e.to_string()))
}

fn decode<T: DeserializeOwned>(what: &str, b: &[u8]) -> Result<T, LogError> {
    bincode::deserialize(b).map_err(|e| LogError::Codec(format!("{what}: {e}")))
}

fn bounds<RB: RangeBounds<u64>>(range: &RB) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.saturating_add(1),
        Bound::Excluded(e) => *e,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLog {
    pub fn new(engine: Engine, group: u64, store: Store) -> RaftLog {
        RaftLog {
            engine,
            group,
            store,
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Entries `start <= index < end`, decoded; reads that need the disk run off the
    /// async workers.
    async fn entries(&self, start: u64, end: u64) -> Result<Vec<EntryOf<TypeConfig>>, LogError> {
        let raw = if self.engine.read_needs_disk(self.group, start, end) {
            let engine = self.engine.clone();
            let group = self.group;
            tokio::task::spawn_blocking(move || engine.read(group, start, end))
                .await
                .map_err(|e| LogError::Failed(format!("log read task: {e}")))??
        } else {
            self.engine.read(self.group, start, end)?
        };
        raw.iter().map(|b| decode("raft log entry", b)).collect()
    }
}

impl RaftLogReader<TypeConfig> for RaftLog {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<EntryOf<TypeConfig>>, io::Error> {
        let (start, end) = bounds(&range);
        Ok(self.entries(start, end).await?)
    }

    async fn read_vote(&mut self) -> Result<Option<VoteOf<TypeConfig>>, io::Error> {
        match self.engine.vote(self.group) {
            None => Ok(None),
            Some(b) => Ok(Some(decode("vote", &b)?)),
        }
    }
}

impl RaftLogStorage<TypeConfig> for RaftLog {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let state = self.engine.state(self.group);
        let purged: Option<LogIdOf<TypeConfig>> = match &state.purged {
            None => None,
            Some((_, b)) => Some(decode("purged log id", b)?),
        };
        let last = match state.last {
            None => purged,
            Some(i) => self.entries(i, i + 1).await?.pop().map(|e| e.log_id),
        };
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &VoteOf<TypeConfig>) -> Result<(), io::Error> {
        Ok(self.engine.save_vote(self.group, encode(vote)?).await?)
    }

    async fn save_committed(
        &mut self,
        committed: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        Ok(self
            .engine
            .save_committed(self.group, encode(&committed)?)
            .await?)
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<TypeConfig>>, io::Error> {
        match self.engine.committed(self.group) {
            None => Ok(None),
            Some(b) => Ok(decode::<Option<LogIdOf<TypeConfig>>>("committed", &b)?),
        }
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
        let mut rows = Vec::new();
        for e in entries {
            rows.push((e.log_id.index, encode(&e)?));
        }
        self.engine.append(
            self.group,
            rows,
            Box::new(move |r| callback.io_completed(r)),
        )?;
        Ok(())
    }

    async fn truncate_after(
        &mut self,
        last_log_id: Option<LogIdOf<TypeConfig>>,
    ) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |l| l.index + 1);
        Ok(self.engine.truncate(self.group, from).await?)
    }

    async fn purge(&mut self, log_id: LogIdOf<TypeConfig>) -> Result<(), io::Error> {
        self.store.sync().await?;
        Ok(self
            .engine
            .purge(self.group, log_id.index, encode(&log_id)?)
            .await?)
    }
}
