//! The state machine of one node: the key-value data, its watch history and the
//! snapshot files, in one database reached through sqlx: an embedded SQLite
//! file (default) or a PostgreSQL schema per node. The Raft log and vote live
//! beside it in `crate::raftlog` (releases before kept them here too; `legacy`
//! reads what they left so it can be moved).
//!
//! Both backends run the *same* code through sqlx's `Any` driver: every
//! statement is written once with `$N` placeholders (which both understand);
//! only the schema DDL and the connection set-up differ ([`Backend`]).
//!
//! Each store has two pools: a single *writer* connection that every mutation
//! goes through, so writes of one node never contend with each other, and a
//! small *reader* pool for client reads and snapshot builds, which see committed
//! state only.
//!
//! On SQLite, state-machine applies are committed without a sync of their own
//! ([`Durability::Deferred`], WAL with `synchronous=NORMAL`): they are derived
//! from the durable Raft log, so a power loss can only roll them back to an
//! earlier applied position, from which the node re-applies the log on restart.
//! Before the log drops entries (a purge behind a snapshot), [`Store::sync`]
//! makes the database durable, so applied state is never behind a purged log. A
//! process crash loses nothing (the WAL is in the OS cache). On PostgreSQL every
//! commit stays synchronous: the database can crash while kvserver keeps
//! running, and a rolled-back apply would then go unnoticed.
//!
//! When the database is unreachable, mutations are retried with backoff
//! instead of failing (a storage error is fatal to openraft), the store is
//! marked unhealthy (the node reports not ready and reads answer 503), and
//! everything resumes when the database returns. Retried operations are
//! idempotent: appends overwrite by index, and an apply batch re-reads the
//! applied position inside its transaction and skips entries already applied.
//!
//! Submodules: `setup` opens the database (backend, schema, pools, identity),
//! `read` serves reads, [`sm`] the state machine and [`snapshot`] the on-disk snapshot format; `backup` full
//! backups and restores of the state machine; `replace` streaming a whole
//! table in (snapshot installs, restores); `apply` the command
//! semantics, `batch` multi-row statement shapes, `script` sending a write
//! path's statements in one trip, `cache` the in-memory row cache.

mod apply;
mod backup;
mod batch;
pub(crate) mod cache;
mod legacy;
pub(crate) mod overlay;
mod persist;
mod read;
mod replace;
pub(crate) mod script;
mod setup;
pub mod sm;
pub mod snapshot;
pub mod watch;

pub use self::backup::Select;
pub(crate) use self::read::KV_COLUMNS;
pub(crate) use self::read::is_expired;
pub(crate) use self::read::row_to_kv;
pub use self::setup::Backend;
pub use self::setup::StoreOptions;
pub use self::setup::redact_url;

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
use sqlx::Row;

use crate::metrics::Metrics;
use crate::placement::map::PlacementMap;

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
    #[error("backup: {0}")]
    Backup(#[from] crate::backup::BackupError),
    #[error("restore refused: {0}")]
    RestoreRefused(String),
    #[error("the database is behind the applied state and not catching up (is it reachable?)")]
    Lagging,
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
            StoreError::Io(_) | StoreError::Lagging => true,
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

/// How long a read that scans the table waits for the database to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(10);

/// How a write transaction must reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    /// On disk before the commit returns: Raft log, vote, purge marker, snapshot install.
    Sync,
    /// SQLite: committed to the WAL, synced by the next `Sync` commit or checkpoint (see
    /// the module docs).
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
    /// Recently read or written rows (see `cache.rs`).
    pub(crate) rows: Arc<cache::RowCache>,
    /// Applied rows the database does not hold yet (see `overlay.rs`).
    pub(crate) overlay: Arc<overlay::Overlay>,
    /// The placement map as applied (mirrors `raft_meta.sm_placement`; epoch 0:
    /// none). Only the cluster group's store ever holds one.
    pub(crate) placement: Arc<tokio::sync::watch::Sender<Arc<PlacementMap>>>,
}

/// Where the applied placement map is recorded in `raft_meta`.
pub(crate) const SM_PLACEMENT: &str = "sm_placement";

impl Store {
    /// The placement map as applied here (epoch 0: none).
    pub fn placement(&self) -> Arc<PlacementMap> {
        self.placement.borrow().clone()
    }

    /// Follows the applied placement map.
    pub fn watch_placement(&self) -> tokio::sync::watch::Receiver<Arc<PlacementMap>> {
        self.placement.subscribe()
    }

    /// A read transaction in which every statement sees the same committed state:
    /// SQLite's read transactions do; PostgreSQL's default (READ COMMITTED) takes a
    /// new snapshot per statement, so a snapshot or backup read there could pair
    /// one batch's applied position with the next batch's rows.
    pub(crate) async fn consistent_read(
        &self,
    ) -> Result<sqlx::Transaction<'static, Any>, StoreError> {
        let mut tx = self.reader.begin().await?;
        if self.backend_name == "postgres" {
            sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                .execute(&mut *tx)
                .await?;
        }
        Ok(tx)
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

    /// SQLite: copies the write-ahead log into the database file and empties it, so
    /// the file alone holds everything (forced recovery moves it). PostgreSQL: nothing.
    pub async fn checkpoint(&self) -> Result<(), StoreError> {
        if self.backend_name == "sqlite" {
            sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
                .execute(&self.writer)
                .await?;
        }
        Ok(())
    }

    /// Waits (a while) until the database holds everything applied so far, for reads
    /// that scan the table; `Lagging` (a 503) if it does not get there.
    pub(crate) async fn caught_up(&self) -> Result<(), StoreError> {
        match tokio::time::timeout(CATCH_UP_TIMEOUT, self.overlay.drain()).await {
            Ok(true) => Ok(()),
            _ => Err(StoreError::Lagging),
        }
    }

    pub(crate) fn set_healthy(&self, healthy: bool) {
        self.healthy.store(healthy, Ordering::Relaxed);
    }

    /// Closes both pools (after Raft has shut down): applied writes are persisted
    /// first (for a while: what is left stays in the log); pending retries give up.
    pub async fn close(&self) {
        if tokio::time::timeout(CATCH_UP_TIMEOUT, self.overlay.drain())
            .await
            .is_err()
        {
            tracing::warn!(
                "stopping with applied writes not yet in the database; the Raft log has them and they are applied again on start"
            );
        }
        self.overlay.close();
        self.closing.store(true, Ordering::Relaxed);
        self.reader.close().await;
        self.writer.close().await;
    }
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
