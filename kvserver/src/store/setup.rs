//! Backend set-up: which database a node uses ([`Backend`], [`StoreOptions`]),
//! the schema and its migrations, the writer and reader pools with their
//! per-backend connection settings, and [`Store::open`] with the identity check
//! (a store of another node or cluster is refused).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sqlx::AnyPool;
use sqlx::Executor;
use sqlx::any::AnyPoolOptions;
use sqlx::migrate::Migration;
use sqlx::migrate::MigrationType;
use sqlx::migrate::Migrator;

use super::Durability;
use super::Store;
use super::StoreError;
use super::cache;
use super::snapshot;
use super::watch;
use crate::command::NodeId;
use crate::metrics::Metrics;

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

/// Hides the passwords of a connection URL: in the user info
/// (`postgres://user:***@host/db`) and in `password=` query parameters.
pub fn redact_url(url: &str) -> String {
    let (main, query) = match url.split_once('?') {
        Some((m, q)) => (m, Some(q)),
        None => (url, None),
    };
    let main = match main.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, host)) => match userinfo.split_once(':') {
                Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
                None => main.to_string(),
            },
            None => main.to_string(),
        },
        None => main.to_string(),
    };
    match query {
        None => main,
        Some(q) => {
            let q: Vec<String> = q
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some((name, _)) if name.eq_ignore_ascii_case("password") => {
                        format!("{name}=***")
                    }
                    _ => kv.to_string(),
                })
                .collect();
            format!("{main}?{}", q.join("&"))
        }
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

/// Runs `statement` (`{}` is the schema's name, checked first) on a connection
/// of its own: creating or dropping the schema that pools put on their path.
async fn on_schema(
    url: &str,
    schema: &str,
    acquire_timeout: Duration,
    statement: &str,
) -> Result<(), StoreError> {
    if !valid_schema(schema) {
        return Err(StoreError::Corrupt {
            what: "storage.postgres.schema".into(),
            detail: format!("{schema:?} must be 1-63 characters of [a-z0-9_]"),
        });
    }
    let boot = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(acquire_timeout)
        .connect(url)
        .await?;
    let done = boot
        .execute(sqlx::AssertSqlSafe(statement.replace("{}", schema)))
        .await;
    boot.close().await;
    done?;
    Ok(())
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
                        // 512 KiB of page cache per reader instead of SQLite's 2 MiB: point
                        // reads are served from the row cache and the in-memory overlay, so
                        // readers mostly scan (listings, backups, snapshots), and four full
                        // caches were ~6 MiB of a node's peak RSS holding pages the kernel's
                        // page cache holds anyway.
                        conn.execute("PRAGMA busy_timeout = 10000; PRAGMA cache_size = -512;")
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
            // The schema must exist before connections that put it on their search_path.
            on_schema(
                url,
                schema,
                *acquire_timeout,
                "CREATE SCHEMA IF NOT EXISTS {}",
            )
            .await?;
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
        let store = Self::open_unchecked(opts, metrics).await?;
        store
            .check_identity("node_id", &opts.node_id.to_string())
            .await?;
        store.check_identity("cluster_id", &opts.cluster_id).await?;
        Ok(store)
    }

    /// Deletes what a closed store keeps outside its data directory: on
    /// PostgreSQL its schema and every table in it (a partition group this node no
    /// longer hosts, see `crate::group`); nothing on SQLite, whose database lives
    /// in the data directory the caller removes.
    pub async fn destroy_schema(backend: &Backend) -> Result<(), StoreError> {
        let Backend::Postgres {
            url,
            schema,
            acquire_timeout,
            ..
        } = backend
        else {
            return Ok(());
        };
        on_schema(
            url,
            schema,
            *acquire_timeout,
            "DROP SCHEMA IF EXISTS {} CASCADE",
        )
        .await
    }

    /// The cluster a store at `opts` belongs to (`None`: never started), without
    /// recording an identity in it. Used by forced recovery (`crate::recover`).
    pub async fn stored_cluster_id(
        opts: &StoreOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Option<String>, StoreError> {
        let store = Self::open_unchecked(opts, metrics).await?;
        let id = store.meta_get("cluster_id").await;
        store.close().await;
        id
    }

    async fn open_unchecked(
        opts: &StoreOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, StoreError> {
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
            rows,
            overlay: Arc::new(super::overlay::Overlay::new(0)),
            placement: Arc::new(tokio::sync::watch::channel(Arc::default()).0),
        };
        let rev: Option<u64> = store.meta_get("sm_revision").await?;
        store.revision.store(rev.unwrap_or(0), Ordering::SeqCst);
        let placement: Option<crate::placement::map::PlacementMap> =
            store.meta_get(super::SM_PLACEMENT).await?;
        if let Some(map) = placement {
            store.placement.send_replace(Arc::new(map));
        }
        let compacted: Option<u64> = store.meta_get(watch::WATCH_COMPACTED).await?;
        store
            .compacted
            .store(compacted.unwrap_or(0), Ordering::SeqCst);
        snapshot::remove_temp_files(&store.snapshot_dir);
        tokio::spawn(super::persist::run(store.clone()));
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
        assert_eq!(
            redact_url("postgres://db/kv?user=kv&password=s3cret&sslmode=verify-full"),
            "postgres://db/kv?user=kv&password=***&sslmode=verify-full"
        );
        assert_eq!(
            redact_url("postgres://kv:a@b@db/kv?PASSWORD=x"),
            "postgres://kv:***@db/kv?PASSWORD=***"
        );
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
