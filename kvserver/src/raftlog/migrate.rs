//! Opening a node's log, moving it out of the database first when the data
//! directory was written by a release that kept the Raft log in SQLite or
//! PostgreSQL (`raft_log` table; vote, committed id and purge marker in
//! `raft_meta`).
//!
//! The bytes are copied as they are (the encoding did not change) into a new log
//! built under a temporary name and synced, which is then renamed into place; only
//! after that are the old rows deleted. A crash at any point leaves either the old
//! rows alone (the copy starts over) or the new log (the rows are deleted again),
//! never neither: `kvserver/tests/migrate.rs` opens a data directory written by the
//! release before.

use std::path::Path;

use bytes::Bytes;
use openraft::type_config::alias::LogIdOf;

use super::DIR;
use super::Engine;
use super::LogError;
use super::LogOptions;
use super::segment;
use crate::command::TypeConfig;
use crate::store::Store;

/// Rows copied per read from the old table.
const CHUNK: i64 = 512;

fn db(e: crate::store::StoreError) -> LogError {
    LogError::Migrate(e.to_string())
}

/// Opens the log of the node whose database is `store`, in `data_dir`; group 0 is
/// the node's (only, for now) Raft group.
pub async fn open_for_node(
    store: &Store,
    data_dir: &Path,
    opts: LogOptions,
) -> Result<Engine, LogError> {
    let dir = data_dir.join(DIR);
    if !dir.exists() {
        let tmp = data_dir.join(format!("{DIR}.migrating"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(LogError::io(&tmp))?;
        }
        let engine = open_blocking(&tmp, opts.clone()).await?;
        let copied = copy(store, &engine).await;
        engine.close();
        let copied = copied?;
        std::fs::rename(&tmp, &dir).map_err(LogError::io(&dir))?;
        segment::sync_dir(data_dir)?;
        if copied > 0 {
            tracing::info!(entries = copied, dir = %dir.display(), "moved the raft log out of the database");
        }
    }
    store.clear_legacy_log().await.map_err(db)?;
    open_blocking(&dir, opts).await
}

/// Opens the log off the async workers (a replay reads whole segments).
pub async fn open_blocking(dir: &Path, opts: LogOptions) -> Result<Engine, LogError> {
    let dir = dir.to_path_buf();
    tokio::task::spawn_blocking(move || Engine::open(&dir, opts))
        .await
        .map_err(|e| LogError::Failed(format!("opening the raft log: {e}")))?
}

/// Copies the old rows into `engine`; returns how many entries.
async fn copy(store: &Store, engine: &Engine) -> Result<u64, LogError> {
    let legacy = store.legacy_log_meta().await.map_err(db)?;
    if let Some(purged) = legacy.last_purged {
        let id: LogIdOf<TypeConfig> = bincode::deserialize(&purged)
            .map_err(|e| LogError::Migrate(format!("purge marker: {e}")))?;
        engine.purge(0, id.index, Bytes::from(purged)).await?;
    }
    if let Some(vote) = legacy.vote {
        engine.save_vote(0, Bytes::from(vote)).await?;
    }
    if let Some(c) = legacy.committed {
        engine.save_committed(0, Bytes::from(c)).await?;
    }
    let mut copied = 0u64;
    if let Some((first, last)) = store.legacy_log_bounds().await.map_err(db)? {
        let mut from = first;
        while from <= last {
            let rows = store
                .legacy_log_rows(from, from.saturating_add(CHUNK))
                .await
                .map_err(db)?;
            let entries: Vec<(u64, Bytes)> = rows
                .into_iter()
                .map(|(i, b)| (i as u64, Bytes::from(b)))
                .collect();
            copied += entries.len() as u64;
            engine.append(0, entries, Box::new(|_| {}))?;
            from = from.saturating_add(CHUNK);
        }
    }
    engine.flush().await?;
    Ok(copied)
}
