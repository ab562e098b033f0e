//! openraft's storage conformance suite against the SQLite store: log, vote,
//! committed index, purge, truncation, state machine apply and snapshots.

use std::sync::Arc;

use kvserver::metrics::Metrics;
use kvserver::store::LogStore;
use kvserver::store::StateMachine;
use kvserver::store::Store;
use kvserver::store::StoreOptions;
use kvserver::types::TypeConfig;
use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;

struct SqliteBuilder;

fn fail<E: std::error::Error + 'static>(e: &E) -> StorageError<TypeConfig> {
    use openraft::errors::ErrorSource;
    StorageError::read(openraft::impls::BoxedErrorSource::from_error(e))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, tempfile::TempDir> for SqliteBuilder {
    async fn build(
        &self,
    ) -> Result<(tempfile::TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| fail(&e))?;
        let metrics = Arc::new(Metrics::new().map_err(|e| fail(&e))?);
        let opts = StoreOptions {
            data_dir: dir.path().to_path_buf(),
            node_id: 0,
            cluster_id: "suite".into(),
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
    Suite::test_all(SqliteBuilder).await?;
    Ok(())
}
