//! Forced recovery from permanent quorum loss (`recovery.force_new_cluster_from`).
//!
//! When most members of a cluster lost their data for good, no leader can be
//! elected again and Raft rightly refuses to go on. The way out, as etcd's
//! `--force-new-cluster`, is to take the most up-to-date survivor's data as the
//! truth and form a new cluster from it. Unlike etcd, the new cluster gets a new
//! `cluster_id`: peers that still hold the old cluster's data (a member thought
//! lost that comes back) are then refused by identity instead of merging two
//! histories, and PostgreSQL-backed members get fresh schemas.
//!
//! What the survivor does, before it serves anything:
//! 1. opens its store under the old cluster id and applies every entry of its
//!    log the state machine had not applied: with the majority gone, whether an
//!    entry was committed can no longer be known, and keeping it loses nothing
//!    that a client could have been told was written (etcd does the same);
//! 2. exports that state as a backup file (`<data_dir>/recovery/<old>.kvbak`,
//!    checksummed like any backup);
//! 3. moves the old store aside (its Raft log, and on SQLite the database, into
//!    `<data_dir>/recovery/<old>-store/`; PostgreSQL: the old schema is left as
//!    it was), never deleting it;
//! 4. forms the new cluster from the file (see [`crate::restore`]) as its single
//!    voter, sealed so members that join get the recovered keys by snapshot.
//!
//! Each step is idempotent, so a crash anywhere is finished by starting again
//! with the same settings, and a node that already recovered starts as usual.
//! Only the node named by `recovery.node_id` recovers; any other node with the
//! setting starts as an empty member of the new cluster (the operator wipes the
//! other members' volumes before it sets it).

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use futures_util::stream;
use openraft::storage::RaftLogReader;
use openraft::storage::RaftLogStorage;
use openraft::storage::RaftStateMachine;

use crate::backup::BackupError;
use crate::metrics::Metrics;
use crate::raftlog::LogError;
use crate::raftlog::LogOptions;
use crate::raftlog::RaftLog;
use crate::store::Backend;
use crate::store::StateMachine;
use crate::store::Store;
use crate::store::StoreError;
use crate::store::StoreOptions;

/// Log entries applied per state-machine batch while catching up.
const APPLY_CHUNK: u64 = 512;

/// Errors of forced recovery; each names what to do.
#[derive(Debug, thiserror::Error)]
pub enum RecoveryError {
    #[error("forced recovery refused: {0}")]
    Refused(String),
    #[error("forced recovery: {0}")]
    Store(#[from] StoreError),
    #[error("forced recovery: {0}")]
    Backup(#[from] BackupError),
    #[error("forced recovery: {0}")]
    Io(#[from] std::io::Error),
    #[error("forced recovery: {0}")]
    Log(#[from] LogError),
}

/// What the survivor recovered.
#[derive(Debug, Clone)]
pub struct Recovered {
    /// The backup file the new cluster is formed from.
    pub backup: PathBuf,
    /// Log entries applied on top of what the state machine had applied.
    pub entries_applied: u64,
}

/// The file the survivor exports its state to.
pub fn backup_path(data_dir: &Path, old_cluster: &str) -> PathBuf {
    data_dir
        .join("recovery")
        .join(format!("{old_cluster}.kvbak"))
}

/// Prepares forming the new cluster `new.cluster_id` from this node's store of
/// `old_cluster` (see the module docs). `Ok(None)`: this node already belongs
/// to the new cluster and has nothing to recover.
pub async fn prepare(
    old_cluster: &str,
    old_backend: Backend,
    new: &StoreOptions,
    metrics: Arc<Metrics>,
) -> Result<Option<Recovered>, RecoveryError> {
    let old = StoreOptions {
        cluster_id: old_cluster.to_string(),
        backend: old_backend,
        ..new.clone()
    };
    if let (Backend::Postgres { schema: a, .. }, Backend::Postgres { schema: b, .. }) =
        (&old.backend, &new.backend)
        && a == b
    {
        return Err(RecoveryError::Refused(format!(
            "the old and the new cluster would share the PostgreSQL schema {a:?}: unset storage.postgres.schema (one is derived from each cluster id) or shorten the cluster ids"
        )));
    }
    let file = backup_path(&new.data_dir, old_cluster);
    if crate::backup::save::verify_file(&file).await.is_ok() {
        // Exported before a crash: the old store may still have to move aside.
        set_aside(&old, metrics).await?;
        return Ok(Some(Recovered {
            backup: file,
            entries_applied: 0,
        }));
    }
    match Store::stored_cluster_id(&old, metrics.clone())
        .await?
        .as_deref()
    {
        Some(s) if s == old_cluster => {}
        Some(s) if s == new.cluster_id => return Ok(None),
        None => {
            return Err(RecoveryError::Refused(format!(
                "this node's store is empty: there is nothing of {old_cluster:?} to recover here; name the member that kept its data (recovery.node_id), or restore from a backup"
            )));
        }
        Some(other) => {
            return Err(RecoveryError::Refused(format!(
                "this node's store belongs to cluster {other:?}, not {old_cluster:?} (recovery.force_new_cluster_from)"
            )));
        }
    }
    let store = Store::open(&old, metrics.clone()).await?;
    let log_opts = LogOptions::for_node(old_cluster, old.node_id);
    let engine = match crate::raftlog::migrate::open_for_node(&store, &old.data_dir, log_opts).await
    {
        Ok(e) => e,
        Err(e) => {
            store.close().await;
            return Err(e.into());
        }
    };
    let mut result = export(&store, &engine, old_cluster, new.node_id, &file).await;
    let log = engine.clone();
    let _ = tokio::task::spawn_blocking(move || log.close()).await;
    if result.is_ok() {
        // The database file alone then holds the old store: it moves as one file.
        result = store
            .checkpoint()
            .await
            .map(|_| 0)
            .map_err(Into::into)
            .and(result);
    }
    store.close().await;
    let entries_applied = result?;
    set_aside(&old, metrics).await?;
    Ok(Some(Recovered {
        backup: file,
        entries_applied,
    }))
}

/// Applies the log tail and writes the state to `file` (via a temp file, synced).
async fn export(
    store: &Store,
    engine: &crate::raftlog::Engine,
    old_cluster: &str,
    node_id: u64,
    file: &Path,
) -> Result<u64, RecoveryError> {
    let entries_applied = apply_log_tail(store, engine).await?;
    let dir = file.parent().unwrap_or(Path::new("."));
    tokio::fs::create_dir_all(dir).await?;
    let tmp = file.with_extension("kvbak.tmp");
    let out = tokio::fs::File::create(&tmp).await?;
    let (out, summary) = store.backup_into(out, old_cluster, node_id).await?;
    out.sync_all().await?;
    drop(out);
    tokio::fs::rename(&tmp, file).await?;
    std::fs::File::open(dir)?.sync_all()?;
    tracing::warn!(
        from_cluster = %old_cluster,
        revision = summary.header.revision,
        keys = summary.keys,
        entries_applied,
        file = %file.display(),
        "forced recovery: exported the survivor's state"
    );
    Ok(entries_applied)
}

/// Applies every log entry after the state machine's applied position.
async fn apply_log_tail(
    store: &Store,
    engine: &crate::raftlog::Engine,
) -> Result<u64, RecoveryError> {
    let mut log = RaftLog::new(engine.clone(), 0, store.clone());
    let last = log
        .get_log_state()
        .await
        .map_err(StoreError::from)?
        .last_log_id
        .map(|l| l.index);
    let mut sm = StateMachine::new(store.clone()).await?;
    let (applied, _) = sm.applied_state().await.map_err(StoreError::from)?;
    let Some(last) = last else { return Ok(0) };
    let mut next = applied.map_or(0, |a| a.index + 1);
    let mut count = 0;
    while next <= last {
        let upto = (next + APPLY_CHUNK - 1).min(last);
        let entries = log
            .try_get_log_entries(next..=upto)
            .await
            .map_err(StoreError::from)?;
        if entries.len() as u64 != upto - next + 1 {
            return Err(RecoveryError::Refused(format!(
                "the log misses entries between {next} and {upto}: this store cannot be trusted as the survivor"
            )));
        }
        count += entries.len() as u64;
        sm.apply(stream::iter(entries.into_iter().map(|e| Ok((e, None)))))
            .await
            .map_err(StoreError::from)?;
        next = upto + 1;
    }
    Ok(count)
}

/// Moves the old cluster's SQLite database (and snapshots) out of the way of the
/// new one; PostgreSQL keeps the old schema where it is.
async fn set_aside(old: &StoreOptions, metrics: Arc<Metrics>) -> Result<(), RecoveryError> {
    let aside = old
        .data_dir
        .join("recovery")
        .join(format!("{}-store", old.cluster_id));
    // The old cluster's Raft log, whatever the backend (a new one starts in its place).
    let log_dir = old.data_dir.join(crate::raftlog::DIR);
    let old_log = LogOptions::identity_of(&old.cluster_id, old.node_id);
    if crate::raftlog::stored_identity(&log_dir)?.as_deref() == Some(old_log.as_str()) {
        std::fs::create_dir_all(&aside)?;
        std::fs::rename(&log_dir, aside.join(crate::raftlog::DIR))?;
        std::fs::File::open(&old.data_dir)?.sync_all()?;
    }
    if !matches!(old.backend, Backend::Sqlite) {
        return Ok(());
    }
    let db = old.data_dir.join("kvserver.db");
    if !db.exists() {
        return Ok(());
    }
    match Store::stored_cluster_id(old, metrics).await?.as_deref() {
        Some(s) if s == old.cluster_id => {}
        // The new cluster's, or empty: nothing of the old one left here.
        _ => return Ok(()),
    }
    std::fs::create_dir_all(&aside)?;
    // The write-ahead log was checkpointed into the file before (see `prepare`),
    // so the order does not lose anything; the database file goes last: until it
    // moves, a restart redoes this step.
    for name in [
        "kvserver.db-wal",
        "kvserver.db-shm",
        "snapshots",
        "kvserver.db",
    ] {
        let from = old.data_dir.join(name);
        if from.exists() {
            std::fs::rename(&from, aside.join(name))?;
        }
    }
    std::fs::File::open(&old.data_dir)?.sync_all()?;
    tracing::warn!(aside = %aside.display(), "forced recovery: the old cluster's store was moved aside (kept, never deleted)");
    Ok(())
}
