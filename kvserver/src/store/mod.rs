//! Persistent storage of one node: Raft log, vote, committed index, snapshot
//! metadata and the key-value state machine, in one database reached through
//! sqlx: an embedded SQLite file (default) or a PostgreSQL schema per node.
//!
//! Both backends run the *same* code through sqlx's `Any` driver: every
//! statement is written once with `$N` placeholders (which both understand);
//! only the schema DDL and the connection set-up differ ([`Backend`]).
//!
//! Each store has two pools: a single *writer* connection that every mutation
//! (log append, vote, apply) goes through, so writes of one node never contend
//! with each other, and a small *reader* pool for replication reads, client
//! reads and snapshot builds, which see committed state only. Raft log, vote
//! and purge commits are durable when they return (SQLite WAL with
//! `synchronous=FULL`; PostgreSQL with its default `synchronous_commit=on`), so
//! a log append is on disk before openraft is told it is flushed; one
//! transaction covers a whole batch of entries, so one sync serves many writes.
//!
//! On SQLite, state-machine applies and the advisory committed index are
//! committed without their own fsync ([`Durability::Deferred`]): they are
//! derived from the durable log, so a power loss can only roll them back to an
//! earlier position, from which openraft re-applies the log on restart. They
//! share the WAL with the log, and the next durable log commit syncs them too;
//! a log purge (which follows a snapshot) is durable, so applied state is never
//! behind a purged log. A process crash loses nothing (the WAL is in the OS
//! cache). On PostgreSQL every commit stays synchronous: the database can crash
//! while kvserver keeps running, and a rolled-back apply would then go unnoticed.
//!
//! When the database is unreachable, mutations are retried with backoff
//! instead of failing (a storage error is fatal to openraft), the store is
//! marked unhealthy (the node reports not ready and reads answer 503), and
//! everything resumes when the database returns. Retried operations are
//! idempotent: appends overwrite by index, and an apply batch re-reads the
//! applied position inside its transaction and skips entries already applied.
//!
//! Submodules: [`log`] implements openraft's log storage, [`sm`] the state
//! machine and [`snapshot`] the on-disk snapshot format; `apply` the command
//! semantics, `batch` multi-row statement shapes, `script` sending a write
//! path's statements in one trip, `cache` the in-memory row cache.

mod apply;
mod batch;
pub(crate) mod cache;
pub mod log;
pub(crate) mod script;
pub mod sm;
pub mod snapshot;
pub mod watch;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::Any;
use sqlx::AnyPool;
use sqlx::Executor;
use sqlx::Row;
use sqlx::any::AnyPoolOptions;
use sqlx::any::AnyRow;
use sqlx::migrate::Migration;
use sqlx::migrate::MigrationType;
use sqlx::migrate::Migrator;

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
    #[error("storage is shutting down")]
    Closed,
}

impl StoreError {
    /// Whether the error means "the database is (temporarily) unreachable" rather than a
    /// bug or corruption: such operations are retried, and clients get a 503.
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(d) => d.code().is_some_and(|c| {
                    // SQLSTATE classes 08 (connection exception), 53 (insufficient resources),
                    // 57P (operator intervention: shutdown, cannot connect now); SQLite BUSY (5).
                    c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") || c == "5"
                }),
                _ => false,
            },
            StoreError::Io(_) => true,
            _ => false,
        }
    }
}

impl From<StoreError> for std::io::Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Io(e) => e,
            other => std::io::Error::other(other.to_string()),
        }
    }
}

/// Which database holds the node's state.
#[derive(Clone)]
pub enum Backend {
    /// `kvserver.db` in the data directory.
    Sqlite,
    /// One schema of a PostgreSQL database.
    Postgres {
        /// Connection URL (may carry a password and `sslmode`); never logged.
        url: String,
        /// Schema owned by this node.
        schema: String,
        max_connections: u32,
        acquire_timeout: Duration,
    },
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Backend::Sqlite => write!(f, "sqlite"),
            Backend::Postgres { url, schema, .. } => {
                write!(f, "postgres({}, schema {schema})", redact_url(url))
            }
        }
    }
}

/// Hides the password of a connection URL (`postgres://user:***@host/db`).
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let Some((userinfo, host)) = rest.rsplit_once('@') else {
        return url.to_string();
    };
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
        None => url.to_string(),
    }
}

/// Options for opening a store.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub data_dir: PathBuf,
    pub node_id: NodeId,
    pub cluster_id: String,
    pub backend: Backend,
    /// Revisions of watch history kept behind the current one.
    pub watch_history: u64,
    /// Capacity of the live event feed, in applied batches.
    pub feed_capacity: usize,
    /// Budget of the in-memory row cache (0: no cache).
    pub cache_bytes: usize,
}

/// The schema. SQLite and PostgreSQL differ only in type names; `key` sorts by
/// bytes on both (`COLLATE "C"`), which prefix scans rely on.
const SQLITE_SCHEMA: &str = r#"
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

const POSTGRES_SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS raft_log (
    log_index BIGINT PRIMARY KEY,
    entry     BYTEA  NOT NULL
);
CREATE TABLE IF NOT EXISTS raft_meta (
    name  TEXT  PRIMARY KEY,
    value BYTEA NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    key             TEXT COLLATE "C" PRIMARY KEY,
    value           TEXT   NOT NULL,
    create_revision BIGINT NOT NULL,
    mod_revision    BIGINT NOT NULL,
    version         BIGINT NOT NULL,
    expires_at_ms   BIGINT,
    created_at_ms   BIGINT NOT NULL,
    updated_at_ms   BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS kv_expiry ON kv (expires_at_ms) WHERE expires_at_ms IS NOT NULL;
"#;

/// Watch history: one row per revision holding that revision's events.
const SQLITE_EVENTS: &str =
    "CREATE TABLE IF NOT EXISTS kv_events (revision INTEGER PRIMARY KEY, events BLOB NOT NULL);";
const POSTGRES_EVENTS: &str =
    "CREATE TABLE IF NOT EXISTS kv_events (revision BIGINT PRIMARY KEY, events BYTEA NOT NULL);";

fn migrator(backend: &Backend) -> Migrator {
    use sqlx::SqlSafeStr;
    let (schema, events) = match backend {
        Backend::Sqlite => (SQLITE_SCHEMA, SQLITE_EVENTS),
        Backend::Postgres { .. } => (POSTGRES_SCHEMA, POSTGRES_EVENTS),
    };
    Migrator::with_migrations(vec![
        Migration::new(
            1,
            "initial schema".into(),
            MigrationType::Simple,
            schema.into_sql_str(),
            false,
        ),
        Migration::new(
            2,
            "watch history".into(),
            MigrationType::Simple,
            events.into_sql_str(),
            false,
        ),
    ])
}

/// How a write transaction must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// On disk before the commit returns: Raft log, vote, purge marker, snapshot install.
    Sync,
    /// SQLite: committed to the WAL, synced by the next `Sync` commit (see the module docs).
    /// PostgreSQL: the same as `Sync`.
    Deferred,
}

/// A write path's statements on the writer connection, sent in as few trips as the
/// backend allows (`script.rs`): everything pending goes out with the next
/// [`WriteBatch::send`] or [`WriteBatch::commit`]; reads in between run on
/// [`WriteBatch::conn`] and see what was sent. Dropped without a successful
/// commit, the connection is closed (which rolls an open transaction back) and
/// the pool opens a fresh one, so no half-done transaction survives an error.
pub(crate) struct WriteBatch {
    pub conn: sqlx::pool::PoolConnection<Any>,
    pending: script::Script,
    one_trip: bool,
    transaction: bool,
    done: bool,
}

impl WriteBatch {
    /// Queues a statement (placeholders `$1`… within it).
    pub fn push(&mut self, sql: &'static str, args: Vec<script::Arg>) {
        self.pending.push(sql, args);
    }

    /// Sends everything queued (e.g. before a read that must see it).
    pub async fn send(&mut self) -> Result<(), StoreError> {
        let pending = std::mem::take(&mut self.pending);
        pending.run(&mut self.conn, self.one_trip).await
    }

    /// Sends the rest and commits (when in a transaction).
    pub async fn commit(mut self) -> Result<(), StoreError> {
        if self.transaction {
            self.pending.push("COMMIT", Vec::new());
        }
        self.send().await?;
        self.done = true;
        Ok(())
    }
}

impl Drop for WriteBatch {
    fn drop(&mut self) {
        if !self.done {
            self.conn.close_on_drop();
        }
    }
}

/// Shared handle on one node's database; cheap to clone.
#[derive(Clone)]
pub struct Store {
    writer: AnyPool,
    pub(crate) reader: AnyPool,
    pub(crate) snapshot_dir: PathBuf,
    /// Cluster revision after the last applied entry (mirrors `raft_meta.sm_revision`).
    pub(crate) revision: Arc<AtomicU64>,
    pub(crate) metrics: Arc<Metrics>,
    healthy: Arc<AtomicBool>,
    closing: Arc<AtomicBool>,
    backend_name: &'static str,
    pub(crate) feed: tokio::sync::broadcast::Sender<watch::Feed>,
    pub(crate) watch_history: u64,
    /// Watch history at or below this revision is deleted (mirrors `raft_meta.watch_compacted`).
    pub(crate) compacted: Arc<AtomicU64>,
    /// The committed log id openraft last reported (encoded), written with the next apply.
    committed: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    /// Recently read or written rows (see `cache.rs`).
    pub(crate) rows: Arc<cache::RowCache>,
}

fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

async fn pools(opts: &StoreOptions) -> Result<(AnyPool, AnyPool), StoreError> {
    sqlx::any::install_default_drivers();
    match &opts.backend {
        Backend::Sqlite => {
            let path = opts.data_dir.join("kvserver.db");
            let url = |mode: &str| format!("sqlite://{}?mode={mode}", path.display());
            // No ping before each acquire (sqlx's default): a connection to a local file
            // cannot go stale, and the ping was a second worker-thread round trip for
            // every statement in profiles.
            let writer = AnyPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        // WAL + FULL: every commit fsyncs the WAL, so an acknowledged append survives power loss.
                        // 2 KiB pages (new databases only; an existing file keeps its size): a put
                        // rewrites the one leaf page holding its key, so every byte of page beyond
                        // the row is WAL written, checksummed and synced for nothing (A/B against
                        // 4 KiB: 16 connections +7..+20 %, 64 connections +3..+13 %, single client
                        // and reads unchanged; 1 KiB pages checkpointed too often).
                        // Checkpoints every 40 MiB of WAL instead of SQLite's 1,000 pages: a
                        // checkpoint runs inside the commit that crosses the mark and copies each
                        // distinct page once, so with a working set smaller than the WAL, rarer
                        // checkpoints cost about as much each and stall far less often (A/B:
                        // single-client put p99 2.3 → 1.8 ms, 64 connections +11 %; no checkpoints
                        // at all made the WAL and its lookups grow without bound).
                        conn.execute("PRAGMA page_size = 2048; PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 10000;")
                            .await?;
                        let (page,): (i64,) = sqlx::query_as("PRAGMA page_size").fetch_one(&mut *conn).await?;
                        let pages = (40 << 20) / page.max(512);
                        conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA wal_autocheckpoint = {pages}")))
                            .await
                            .map(|_| ())
                    })
                })
                .connect(&url("rwc"))
                .await?;
            migrator(&opts.backend).run(&writer).await?;
            let reader = AnyPoolOptions::new()
                .max_connections(4)
                .test_before_acquire(false)
                .acquire_timeout(Duration::from_secs(30))
                .after_connect(|conn, _| {
                    Box::pin(async move {
                        conn.execute("PRAGMA busy_timeout = 10000;")
                            .await
                            .map(|_| ())
                    })
                })
                .connect(&url("ro"))
                .await?;
            Ok((writer, reader))
        }
        Backend::Postgres {
            url,
            schema,
            max_connections,
            acquire_timeout,
        } => {
            if !valid_schema(schema) {
                return Err(StoreError::Corrupt {
                    what: "storage.postgres.schema".into(),
                    detail: format!("{schema:?} must be 1-63 characters of [a-z0-9_]"),
                });
            }
            // The schema must exist before connections that put it on their search_path.
            {
                let boot = AnyPoolOptions::new()
                    .max_connections(1)
                    .acquire_timeout(*acquire_timeout)
                    .connect(url)
                    .await?;
                boot.execute(sqlx::AssertSqlSafe(format!(
                    "CREATE SCHEMA IF NOT EXISTS {schema}"
                )))
                .await?;
                boot.close().await;
            }
            let set_path = Arc::<str>::from(format!("SET search_path TO {schema}"));
            let opts_for = |max: u32, min: u32| {
                let set_path = set_path.clone();
                AnyPoolOptions::new()
                    .max_connections(max)
                    .min_connections(min)
                    .acquire_timeout(*acquire_timeout)
                    .after_connect(move |conn, _| {
                        let set_path = set_path.clone();
                        Box::pin(async move {
                            conn.execute(sqlx::AssertSqlSafe(set_path.to_string()))
                                .await
                                .map(|_| ())
                        })
                    })
            };
            let writer = opts_for(1, 1).connect(url).await?;
            migrator(&opts.backend).run(&writer).await?;
            let reader = opts_for((*max_connections).max(1), 0).connect(url).await?;
            Ok((writer, reader))
        }
    }
}

impl Store {
    /// Opens (creating if needed) the node's database, applies the schema and checks
    /// that it belongs to this node of this cluster.
    pub async fn open(opts: &StoreOptions, metrics: Arc<Metrics>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(&opts.data_dir)?;
        let snapshot_dir = opts.data_dir.join("snapshots");
        std::fs::create_dir_all(&snapshot_dir)?;
        let (writer, reader) = pools(opts).await?;
        let rows = Arc::new(cache::RowCache::new(
            opts.cache_bytes,
            &metrics.row_cache_lookups,
        ));
        let store = Store {
            writer,
            reader,
            snapshot_dir,
            revision: Arc::new(AtomicU64::new(0)),
            metrics,
            healthy: Arc::new(AtomicBool::new(true)),
            closing: Arc::new(AtomicBool::new(false)),
            backend_name: match opts.backend {
                Backend::Sqlite => "sqlite",
                Backend::Postgres { .. } => "postgres",
            },
            feed: tokio::sync::broadcast::channel(opts.feed_capacity.max(1)).0,
            watch_history: opts.watch_history.max(1),
            compacted: Arc::new(AtomicU64::new(0)),
            committed: Arc::new(std::sync::Mutex::new(None)),
            rows,
        };
        store
            .check_identity("node_id", &opts.node_id.to_string())
            .await?;
        store.check_identity("cluster_id", &opts.cluster_id).await?;
        let rev: Option<u64> = store.meta_get("sm_revision").await?;
        store.revision.store(rev.unwrap_or(0), Ordering::SeqCst);
        let compacted: Option<u64> = store.meta_get(watch::WATCH_COMPACTED).await?;
        store
            .compacted
            .store(compacted.unwrap_or(0), Ordering::SeqCst);
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
            None => {
                self.meta_put(field, &configured.to_string(), Durability::Sync)
                    .await
            }
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.backend_name
    }

    /// Current cluster revision as last applied on this node.
    pub fn revision(&self) -> u64 {
        self.revision.load(Ordering::SeqCst)
    }

    /// False while the database is unreachable (a retried operation is waiting).
    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Asks the database whether it answers, within `timeout`; updates the health flag.
    pub async fn ping(&self, timeout: Duration) -> bool {
        let ok = matches!(
            tokio::time::timeout(timeout, sqlx::query("SELECT 1").fetch_one(&self.reader)).await,
            Ok(Ok(_))
        );
        // A failed ping marks the store down too, so cached reads stop while it is.
        self.healthy.store(ok, Ordering::Relaxed);
        ok
    }

    /// Runs a mutation until it succeeds, waiting out transient database outages.
    /// Non-transient errors (corruption, bugs) are returned at once.
    pub(crate) async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let mut delay = Duration::from_millis(50);
        let mut attempt = 0u32;
        loop {
            match op().await {
                Ok(v) => {
                    if attempt > 0 {
                        tracing::info!(
                            operation = what,
                            attempts = attempt + 1,
                            "database reachable again"
                        );
                    }
                    self.healthy.store(true, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if e.is_transient() && !self.closing.load(Ordering::Relaxed) => {
                    self.healthy.store(false, Ordering::Relaxed);
                    if attempt.is_multiple_of(20) {
                        tracing::warn!(operation = what, error = %e, "database unavailable; retrying");
                    }
                    attempt += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(1));
                }
                Err(e) if e.is_transient() => return Err(StoreError::Closed),
                Err(e) => return Err(e),
            }
        }
    }

    /// Remembers the committed log id (encoded) for the next apply transaction.
    pub(crate) fn set_pending_committed(&self, encoded: Vec<u8>) {
        if let Ok(mut c) = self.committed.lock() {
            *c = Some(encoded);
        }
    }

    /// The committed log id to record with the next apply, if openraft reported one.
    pub(crate) fn pending_committed(&self) -> Option<Vec<u8>> {
        self.committed.lock().ok().and_then(|c| c.clone())
    }

    /// Reads one value from `raft_meta` (bincode encoded).
    pub(crate) async fn meta_get<T: DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StoreError> {
        let row = sqlx::query("SELECT value FROM raft_meta WHERE name = $1")
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

    /// The writer connection with an empty script of writes at `durability`, in a
    /// transaction when `transaction` (see [`WriteBatch`]).
    pub(crate) async fn write_batch(
        &self,
        durability: Durability,
        transaction: bool,
    ) -> Result<WriteBatch, StoreError> {
        let conn = self.writer.acquire().await?;
        let sqlite = self.backend_name == "sqlite";
        let mut pending = script::Script::new();
        if sqlite {
            // `synchronous` is a property of the one writer connection: every batch
            // sets the mode it needs (inline, so it costs no trip of its own), so a
            // durable write never finds it left in NORMAL by a state-machine apply.
            pending.push(
                match durability {
                    Durability::Sync => "PRAGMA synchronous = FULL",
                    Durability::Deferred => "PRAGMA synchronous = NORMAL",
                },
                Vec::new(),
            );
        }
        if transaction {
            pending.push("BEGIN", Vec::new());
        }
        Ok(WriteBatch {
            conn,
            pending,
            one_trip: sqlite,
            transaction,
            done: false,
        })
    }

    /// Writes one value to `raft_meta` in its own transaction.
    pub(crate) async fn meta_put<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        durability: Durability,
    ) -> Result<(), StoreError> {
        let bytes = encode(value)?;
        let started = std::time::Instant::now();
        self.retrying("meta write", || async {
            let mut w = self.write_batch(durability, false).await?;
            put_metas(&mut w, &[(name, bytes.clone())]);
            w.commit().await
        })
        .await?;
        self.metrics
            .storage_sync_seconds
            .observe(started.elapsed().as_secs_f64());
        Ok(())
    }

    /// Reads a key, hiding it when its expiry is at or before `now_ms`.
    pub async fn get(&self, key: &str, now_ms: u64) -> Result<Option<KeyValue>, StoreError> {
        // While the database is known to be down, reads answer 503 like uncached ones
        // (one behaviour for every key; the outage is visible to clients and probes).
        let cached = if self.healthy() {
            self.rows.get(key)
        } else {
            None
        };
        let row = match cached {
            Some(row) => row,
            None => {
                let generation = self.rows.generation();
                let row = sqlx::query(KV_BY_KEY)
                    .bind(key)
                    .fetch_optional(&self.reader)
                    .await?
                    .map(|r| row_to_kv(&r, true))
                    .transpose()?;
                self.rows.fill(generation, key, &row);
                row
            }
        };
        Ok(row.filter(|kv| !is_expired(kv, now_ms)))
    }

    /// Reads several keys from one consistent view; returns found keys and missing names.
    pub async fn get_many(
        &self,
        keys: &[String],
        now_ms: u64,
    ) -> Result<(Vec<KeyValue>, Vec<String>), StoreError> {
        let mut tx = self.reader.begin().await?;
        let mut found = Vec::with_capacity(keys.len());
        let mut missing = Vec::new();
        for key in keys {
            let row = sqlx::query(KV_BY_KEY)
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
            "SELECT {columns} FROM kv WHERE key {op} $1 AND (expires_at_ms IS NULL OR expires_at_ms > $2) \
             ORDER BY key LIMIT $3"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
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
            "SELECT key FROM kv WHERE expires_at_ms IS NOT NULL AND expires_at_ms <= $1 ORDER BY expires_at_ms LIMIT $2",
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

    /// Closes both pools (after Raft has shut down); pending retries give up.
    pub async fn close(&self) {
        self.closing.store(true, Ordering::Relaxed);
        self.reader.close().await;
        self.writer.close().await;
    }
}

pub(crate) const KV_COLUMNS: &str = "key, value, create_revision, mod_revision, version, expires_at_ms, created_at_ms, updated_at_ms";
const KV_META_COLUMNS: &str = "key, NULL AS value, create_revision, mod_revision, version, expires_at_ms, created_at_ms, updated_at_ms";
pub(crate) const KV_BY_KEY: &str = "SELECT key, value, create_revision, mod_revision, version, expires_at_ms, created_at_ms, updated_at_ms \
     FROM kv WHERE key = $1";

pub(crate) fn row_to_kv(row: &AnyRow, with_value: bool) -> Result<KeyValue, StoreError> {
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

static META_UPSERT_MANY: batch::Shapes = batch::Shapes::new(|n| {
    format!(
        "INSERT INTO raft_meta (name, value) VALUES {} ON CONFLICT (name) DO UPDATE SET value = excluded.value",
        batch::values(n, 2)
    )
});

/// Queues upserts of several `raft_meta` rows (distinct names), one statement for up
/// to 64 rows.
pub(crate) fn put_metas(w: &mut WriteBatch, rows: &[(&str, Vec<u8>)]) {
    let mut rest = rows;
    for n in batch::insert_chunks(rows.len()) {
        let (chunk, tail) = rest.split_at(n);
        rest = tail;
        let mut args = Vec::with_capacity(2 * n);
        for (name, value) in chunk {
            args.extend([
                script::Arg::Text(name.to_string()),
                script::Arg::Blob(value.clone()),
            ]);
        }
        w.push(META_UPSERT_MANY.get(n), args);
    }
}

/// Reads one `raft_meta` row (on a transaction's or the writer's connection).
pub(crate) async fn get_meta<T: DeserializeOwned>(
    conn: &mut sqlx::AnyConnection,
    name: &str,
) -> Result<Option<T>, StoreError> {
    let row = sqlx::query("SELECT value FROM raft_meta WHERE name = $1")
        .bind(name)
        .fetch_optional(conn)
        .await?;
    match row {
        None => Ok(None),
        Some(r) => decode(name, &r.try_get::<Vec<u8>, _>(0)?).map(Some),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://kv:s3cret@db:5432/kv?sslmode=require"),
            "postgres://kv:***@db:5432/kv?sslmode=require"
        );
        assert_eq!(redact_url("postgres://kv@db/kv"), "postgres://kv@db/kv");
        assert_eq!(redact_url("not a url"), "not a url");
        let b = Backend::Postgres {
            url: "postgres://u:p@h/d".into(),
            schema: "s".into(),
            max_connections: 1,
            acquire_timeout: Duration::from_secs(1),
        };
        assert!(!format!("{b:?}").contains(":p@"));
    }

    #[test]
    fn schema_names_are_checked() {
        assert!(valid_schema("kv_orders_2"));
        assert!(!valid_schema("Robert'); DROP TABLE kv;--"));
        assert!(!valid_schema(""));
    }
}
