//! Persistent storage of one node: Raft log, vote, committed index, snapshot
//! metadata and the key-value state machine, all in one SQLite database
//! reached through sqlx.
//!
//! The database is opened with two pools: a single *writer* connection that
//! every mutation (log append, vote, apply) goes through, so SQLite never has
//! to arbitrate writers with busy-waits, and a small *reader* pool for
//! replication reads, client reads and snapshot builds; WAL mode lets those
//! readers see a consistent committed state while the writer goes on.
//! `synchronous=FULL` makes every commit durable before it returns, so a log
//! append is on disk before openraft is told it is flushed; one transaction
//! covers a whole batch of entries so one sync serves many writes.
//!
//! Submodules: [`log`] implements openraft's log storage, [`sm`] the state
//! machine and [`snapshot`] the on-disk snapshot format.

pub mod log;
pub mod sm;
pub mod snapshot;

use std::path::Path;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Row;
use sqlx::SqlitePool;
use sqlx::migrate::Migration;
use sqlx::migrate::MigrationType;
use sqlx::migrate::Migrator;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::sqlite::SqliteJournalMode;
use sqlx::sqlite::SqlitePoolOptions;
use sqlx::sqlite::SqliteSynchronous;

use crate::metrics::Metrics;
use crate::types::KeyValue;
use crate::types::NodeId;

pub use self::log::LogStore;
pub use self::sm::StateMachine;

/// Errors at the storage boundary.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("corrupt stored record {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error(
        "data directory belongs to {field} {stored:?} but this node is configured as {configured:?}; \
         refusing to start (point data_dir at this node's own volume, or wipe it to join as a new member)"
    )]
    IdentityMismatch {
        field: &'static str,
        stored: String,
        configured: String,
    },
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// The schema, applied through sqlx's migrator so later versions can evolve it.
const MIGRATION_1: &str = r#"
CREATE TABLE IF NOT EXISTS raft_log (
    log_index INTEGER PRIMARY KEY,
    entry     BLOB    NOT NULL
);
CREATE TABLE IF NOT EXISTS raft_meta (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS kv (
    key             TEXT    PRIMARY KEY,
    value           TEXT    NOT NULL,
    create_revision INTEGER NOT NULL,
    mod_revision    INTEGER NOT NULL,
    version         INTEGER NOT NULL,
    expires_at_ms   INTEGER,
    created_at_ms   INTEGER NOT NULL,
    updated_at_ms   INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expiry ON kv (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
"#;

fn migrator() -> Migrator {
    use sqlx::SqlSafeStr;
    Migrator::with_migrations(vec![Migration::new(
        1,
        "initial schema".into(),
        MigrationType::Simple,
        MIGRATION_1.into_sql_str(),
        false,
    )])
}

/// Shared handle on one node's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    pub(crate) writer: SqlitePool,
    pub(crate) reader: SqlitePool,
    pub(crate) snapshot_dir: PathBuf,
    /// Cluster revision after the last applied entry (mirrors `raft_meta.sm_revision`).
    pub(crate) revision: Arc<AtomicU64>,
    pub(crate) metrics: Arc<Metrics>,
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    pub cluster_id: String,
}

impl Store {
    /// Opens (creating if needed) the database in `data_dir`, applies the schema and
    /// checks that the directory belongs to this node of this cluster.
    pub async fn open(opts: &StoreOptions, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&opts.data_dir)?;
        let snapshot_dir = opts.data_dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)?;
        let db_path = opts.data_dir.join("kvserver.db");
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect_options(&db_path, false)?)
            .await?;
        migrator().run(&writer).await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(30))
            .connect_with(connect_options(&db_path, true)?)
            .await?;
        let store = Store {
            writer,
            reader,
            snapshot_dir,
            revision: Arc::new(AtomicU64::new(0)),
            metrics,
        };
        store
            .check_identity("node_id", &opts.node_id.to_string())
            .await?;
        store.check_identity("cluster_id", &opts.cluster_id).await?;
        let rev: Option<u64> = store.meta_get("sm_revision").await?;
        store.revision.store(rev.unwrap_or(0), Ordering::SeqCst);
        snapshot::remove_temp_files(&store.snapshot_dir);
        Ok(store)
    }

    /// Records the identity on first start; refuses a store that belongs to someone else.
    async fn check_identity(
        &self,
        field: &'static str,
        configured: &str,
    ) -> Result<(), StoreError> {
        let stored: Option<String> = self.meta_get(field).await?;
        match stored {
            Some(s) if s == configured => Ok(()),
            Some(s) => Err(StoreError::IdentityMismatch {
                field,
                stored: s,
                configured: configured.to_string(),
            }),
            None => self.meta_put(field, &configured.to_string()).await,
        }
    }

    /// Current cluster revision as last applied on this node.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// Reads one value from `raft_meta` (bincode encoded).
    pub(crate) async fn meta_get<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let row = sqlx::query("SELECT value FROM raft_meta WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.reader)
            .await?;
        match row {
            None => Ok(None),
            Some(row) => {
                let bytes: Vec<u8> = row.try_get(0)?;
                decode(name, &bytes).map(Some)
            }
        }
    }

    /// Writes one value to `raft_meta` in its own durable transaction.
    pub(crate) async fn meta_put<T: Serialize>(
        &self,
        name: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let bytes = encode(value)?;
        let started = std::time::Instant::now();
        sqlx::query("INSERT INTO raft_meta (name, value) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET value = excluded.value")
            .bind(name)
            .bind(bytes)
            .execute(&self.writer)
            .await?;
        self.metrics
            .storage_sync_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Reads a key, hiding it when its expiry is at or before `now_ms`.
    pub async fn get(&self, key: &str, now_ms: u64) -> Result<Option<KeyValue>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {KV_COLUMNS} FROM kv WHERE key = ?"
        )))
        .bind(key)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row
            .map(|r| row_to_kv(&r, true))
            .transpose()?
            .filter(|kv| !is_expired(kv, now_ms)))
    }

    /// Reads several keys from one consistent view; returns found keys and missing names.
    pub async fn get_many(
        &self,
        keys: &[String],
        now_ms: u64,
    ) -> Result<(Vec<KeyValue>, Vec<String>), StoreError> {
        let mut tx = self.reader.begin().await?;
        let sql = format!("SELECT {KV_COLUMNS} FROM kv WHERE key = ?");
        let mut found = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for key in keys {
            let row = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
                .bind(key)
                .fetch_optional(&mut *tx)
                .await?;
            match row
                .map(|r| row_to_kv(&r, true))
                .transpose()?
                .filter(|kv| !is_expired(kv, now_ms))
            {
                Some(kv) => found.push(kv),
                None => missing.push(key.clone()),
            }
        }
        tx.rollback().await?;
        Ok((found, missing))
    }

    /// Lists keys with `prefix` in key order, strictly after `start_after`, at most `limit`.
    /// Returns the keys and whether more follow.
    pub async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
        keys_only: bool,
        now_ms: u64,
    ) -> Result<(Vec<KeyValue>, bool), StoreError> {
        // Keys with a common prefix are contiguous in key order, so the scan starts at the
        // prefix (or just after the cursor) and stops at the first key without it.
        let (op, from) = match start_after {
            Some(s) if s >= prefix => (">", s),
            _ => (">=", prefix),
        };
        let columns = if keys_only {
            KV_META_COLUMNS
        } else {
            KV_COLUMNS
        };
        let sql = format!(
            "SELECT {columns} FROM kv WHERE key {op} ? AND (expires_at_ms IS NULL OR expires_at_ms > ?) \
             ORDER BY key LIMIT ?"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .bind(from)
            .bind(now_ms as i64)
            .bind((limit + 1) as i64)
            .fetch_all(&self.reader)
            .await?;
        let mut out = Vec::with_capacity(rows.len().min(limit));
        let mut more = false;
        for row in rows {
            let kv = row_to_kv(&row, !keys_only)?;
            if !kv.key.starts_with(prefix) {
                break;
            }
            if out.len() == limit {
                more = true;
                break;
            }
            out.push(kv);
        }
        Ok((out, more))
    }

    /// Keys whose expiry is at or before `now_ms` (for the leader's reaper).
    pub async fn expired_keys(&self, now_ms: u64, limit: usize) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT key FROM kv WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= ? ORDER BY expires_at_ms LIMIT ?",
        )
        .bind(now_ms as i64)
        .bind(limit as i64)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| r.try_get::<String, _>(0).map_err(StoreError::from))
            .collect()
    }

    /// Number of live keys (for `/status`).
    pub async fn key_count(&self) -> Result<u64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM kv")
            .fetch_one(&self.reader)
            .await?;
        Ok(row.try_get::<i64, _>(0)? as u64)
    }

    /// Closes both pools (after Raft has shut down).
    pub async fn close(&self) {
        self.reader.close().await;
        self.writer.close().await;
    }
}

fn connect_options(path: &Path, read_only: bool) -> Result<SqliteConnectOptions, StoreError> {
    let url = format!("sqlite://{}", path.display());
    Ok(SqliteConnectOptions::from_str(&url)?
        .create_if_missing(!read_only)
        .read_only(read_only)
        .journal_mode(SqliteJournalMode::Wal)
        // FULL: the WAL is fsynced at every commit, so an acknowledged append survives power loss.
        .synchronous(SqliteSynchronous::Full)
        .busy_timeout(Duration::from_secs(10))
        .statement_cache_capacity(128))
}

pub(crate) const KV_COLUMNS: &str = "key, value, create_revision, mod_revision, version, expires_at_ms, created_at_ms, updated_at_ms";
const KV_META_COLUMNS: &str = "key, NULL AS value, create_revision, mod_revision, version, expires_at_ms, created_at_ms, updated_at_ms";

pub(crate) fn row_to_kv(
    row: &sqlx::sqlite::SqliteRow,
    with_value: bool,
) -> Result<KeyValue, StoreError> {
    let value: Option<String> = if with_value { row.try_get(1)? } else { None };
    Ok(KeyValue {
        key: row.try_get(0)?,
        value,
        create_revision: row.try_get::<i64, _>(2)? as u64,
        mod_revision: row.try_get::<i64, _>(3)? as u64,
        version: row.try_get::<i64, _>(4)? as u64,
        expires_at_ms: row.try_get::<Option<i64>, _>(5)?.map(|v| v as u64),
        created_at_ms: row.try_get::<i64, _>(6)? as u64,
        updated_at_ms: row.try_get::<i64, _>(7)? as u64,
    })
}

pub(crate) fn is_expired(kv: &KeyValue, now_ms: u64) -> bool {
    matches!(kv.expires_at_ms, Some(t) if t <= now_ms)
}

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    bincode::serialize(value).map_err(|e| StoreError::Corrupt {
        what: "encode".into(),
        detail: e.to_string(),
    })
}

pub(crate) fn decode<T: DeserializeOwned>(what: &str, bytes: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(bytes).map_err(|e| StoreError::Corrupt {
        what: what.to_string(),
        detail: e.to_string(),
    })
}
