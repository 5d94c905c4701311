//! openraft's storage conformance suite (`openraft::testing::log::Suite`) run with the real
//! aggregation state machine beside the segmented log: apply of blank and membership
//! entries, `applied_state`, snapshot meta, and `transfer_snapshot` (build on one store,
//! install on another).

use adclick_storage::log::{LogConfig, LogStore, RetentionPolicy};
use adclick_storage::sm::{open_db, SmOptions, StateMachine};
use adclick_storage::types::TypeConfig;
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::StorageError;
use tempfile::TempDir;

/// A log and a state machine (in its own RocksDB) in one fresh temporary directory.
struct Builder;

fn err(e: impl std::error::Error + 'static) -> StorageError<TypeConfig> {
    StorageError::read(TypeConfig::err_from_error(&e))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(err)?;
        let mut config = LogConfig::new(dir.path().join("log"));
        config.retention = RetentionPolicy {
            max_age: None,
            max_bytes: None,
        };
        let log = LogStore::open(config).map_err(err)?;
        let db = open_db(&dir.path().join("sm")).map_err(err)?;
        let sm = StateMachine::open(db, 1, dir.path().join("snapshots"), SmOptions::default())
            .map_err(err)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_machine_passes_the_openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder).await
}
