//! openraft's storage conformance suite (`openraft::testing::log::Suite`) run against the
//! segmented log. The suite needs a state machine too; this one is a trivial in-memory
//! stand-in (last applied + membership) so the test pins the *log's* behaviour
//! independently of the real aggregation state machine.

use std::io;
use std::sync::{Arc, Mutex};

use adclick_storage::log::{LogConfig, LogStore, RetentionPolicy};
use adclick_storage::types::{CommandResponse, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use futures::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine, Snapshot};
use openraft::testing::log::{StoreBuilder, Suite};
use openraft::type_config::TypeConfigExt;
use openraft::{EntryPayload, StorageError};
use tempfile::TempDir;

type MemSnapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, ()>;

#[derive(Debug, Default)]
struct MemState {
    applied: Option<LogId>,
    membership: StoredMembership,
    snapshot: Option<SnapshotMeta>,
}

/// A state machine that only remembers what openraft itself needs.
#[derive(Debug, Clone, Default)]
struct MemSm(Arc<Mutex<MemState>>);

impl MemSm {
    fn state(&self) -> std::sync::MutexGuard<'_, MemState> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl RaftSnapshotBuilder<TypeConfig> for MemSm {
    type SnapshotData = ();

    async fn build_snapshot(&mut self) -> Result<MemSnapshot, io::Error> {
        let mut st = self.state();
        let meta = SnapshotMeta {
            last_log_id: st.applied,
            last_membership: st.membership.clone(),
        };
        st.snapshot = Some(meta.clone());
        Ok(Snapshot { meta, snapshot: () })
    }
}

impl RaftStateMachine<TypeConfig> for MemSm {
    type SnapshotData = ();
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        let st = self.state();
        Ok((st.applied, st.membership.clone()))
    }

    async fn apply<S>(&mut self, mut entries: S) -> Result<(), io::Error>
    where
        S: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + Send,
    {
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            {
                let mut st = self.state();
                st.applied = Some(entry.log_id);
                if let EntryPayload::Membership(m) = &entry.payload {
                    st.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                }
            }
            if let Some(r) = responder {
                r.send(CommandResponse::None);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self {
        self.clone()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        _snapshot: (),
    ) -> Result<(), io::Error> {
        let mut st = self.state();
        st.applied = meta.last_log_id;
        st.membership = meta.last_membership.clone();
        st.snapshot = Some(meta.clone());
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<MemSnapshot>, io::Error> {
        Ok(self
            .state()
            .snapshot
            .clone()
            .map(|meta| Snapshot { meta, snapshot: () }))
    }
}

/// Builds a log in a fresh temporary directory (small segments, so the suite's logs span
/// several of them) and an empty state machine.
struct Builder;

impl StoreBuilder<TypeConfig, LogStore, MemSm, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, MemSm), StorageError<TypeConfig>> {
        let dir =
            tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let mut config = LogConfig::new(dir.path());
        config.segment_size = 256;
        config.retention = RetentionPolicy {
            max_age: None,
            max_bytes: None,
        };
        let log = LogStore::open(config)
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        Ok((dir, log, MemSm::default()))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segmented_log_passes_the_openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    Suite::test_all(Builder).await
}
