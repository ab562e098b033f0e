//! openraft's storage conformance suite against both backends, SQLite and
//! PostgreSQL: log, vote, committed index, purge, truncation, state machine
//! apply and snapshots. The PostgreSQL run uses a private server and a fresh
//! schema per store the suite builds.

mod common;

use std::sync::Arc;

use kvserver::command::TypeConfig;
use kvserver::metrics::Metrics;
use kvserver::store::Backend;
use kvserver::store::LogStore;
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

/// Builds empty stores; `pg_url` selects PostgreSQL (each build gets its own schema).
struct Builder {
    pg_url: Option<String>,
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
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
        Ok((dir, LogStore::new(store), sm))
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
