//! openraft's storage conformance suite against the Raft log (`raftlog`) and
//! both state-machine backends, SQLite and PostgreSQL: log, vote, committed
//! index, purge, truncation, state machine apply and snapshots. The PostgreSQL
//! run uses a private server and a fresh schema per store the suite builds.
//!
//! The log runs with tiny segments (rotation and segment deletion happen within
//! the suite) and the group under test shares it with another group that holds
//! entries of its own, as partitions will: nothing of one may show in the other.

mod common;

use std::sync::Arc;

use kvserver::command::TypeConfig;
use kvserver::metrics::Metrics;
use kvserver::raftlog::LogOptions;
use kvserver::raftlog::RaftLog;
use kvserver::store::Backend;
use kvserver::store::StateMachine;
use kvserver::store::Store;
use kvserver::store::StoreOptions;
use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;

fn fail<E: std::error::Error + 'static>(e: &E) -> StorageError<TypeConfig> {
    use openraft::errors::ErrorSource;
    StorageError::read(openraft::impls::BoxedErrorSource::from_error(e))
}

/// The group under test (not 0: nothing may assume the node's first group).
const GROUP: u64 = 3;

/// Builds empty stores; `pg_url` selects PostgreSQL (each build gets its own schema).
struct Builder {
    pg_url: Option<String>,
}

impl StoreBuilder<TypeConfig, RaftLog, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, RaftLog, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| fail(&e))?;
        let metrics = Arc::new(Metrics::new().map_err(|e| fail(&e))?);
        let backend = match &self.pg_url {
            None => Backend::Sqlite,
            Some(url) => Backend::Postgres {
                url: url.clone(),
                schema: format!("suite_{}", uuid::Uuid::new_v4().simple()),
                max_connections: 2,
                acquire_timeout: std::time::Duration::from_secs(10),
            },
        };
        let opts = StoreOptions {
            data_dir: dir.path().to_path_buf(),
            node_id: 0,
            cluster_id: "suite".into(),
            backend,
            watch_history: 1000,
            feed_capacity: 16,
            // Small, so the suite also runs through evictions.
            cache_bytes: 64 * 1024,
        };
        let store = Store::open(&opts, metrics).await.map_err(|e| fail(&e))?;
        let sm = StateMachine::new(store.clone())
            .await
            .map_err(|e| fail(&e))?;
        let log_opts = LogOptions {
            segment_bytes: 16 * 1024,
            cache_bytes_per_group: 2 * 1024,
            ..LogOptions::for_node("suite", 0)
        };
        let engine = kvserver::raftlog::migrate::open_for_node(&store, dir.path(), log_opts)
            .await
            .map_err(|e| fail(&e))?;
        // Another group's entries in the same log (a neighbour partition).
        let neighbour: Vec<(u64, bytes::Bytes)> = (1..=50)
            .map(|i| (i, bytes::Bytes::from(vec![7u8; 300])))
            .collect();
        engine
            .append(GROUP + 1, neighbour, Box::new(|_| {}))
            .map_err(|e| fail(&e))?;
        Ok((dir, RaftLog::new(engine, GROUP, store), sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_store_passes_openraft_suite() -> anyhow::Result<()> {
    Suite::test_all(Builder { pg_url: None }).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_store_passes_openraft_suite() -> anyhow::Result<()> {
    let pg = common::pg::Postgres::start()?;
    Suite::test_all(Builder {
        pg_url: Some(pg.url()),
    })
    .await?;
    Ok(())
}
