//! openraft's view of the state machine: `RaftStateMachine` and `RaftSnapshotBuilder`.
//!
//! `apply` stages a stream of entries and commits them in batches (at most
//! `max_pending_clicks` clicks per WriteBatch); responders are answered right after the
//! batch holding their entry is committed, so a proposer never hears back before readers
//! can see its effect. Snapshot building runs on a blocking thread from a RocksDB
//! snapshot, so apply continues meanwhile.

use std::io;
use std::sync::Arc;

use futures::{Stream, TryStreamExt};
use openraft::storage::{EntryResponder, RaftStateMachine};
use openraft::{OptionalSend, RaftSnapshotBuilder};

use super::apply::Pending;
use super::snapshot::SnapshotFile;
use super::store::{self, Shared, StateMachine};
use crate::types::{CommandResponse, LogId, SnapshotMeta, StoredMembership, TypeConfig};

/// A snapshot of openraft's type for this state machine.
pub type Snapshot = openraft::type_config::alias::SnapshotOf<TypeConfig, SnapshotFile>;

/// Builds snapshot files of one group; cheap to create, runs off the apply path.
#[derive(Debug, Clone)]
pub struct SmSnapshotBuilder {
    shared: Arc<Shared>,
}

impl SmSnapshotBuilder {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        SmSnapshotBuilder { shared }
    }

    /// Builds a snapshot of the group as of now (blocking; see `build_snapshot`).
    pub fn build_blocking(&self) -> crate::Result<Snapshot> {
        let (meta, path) = store::build_snapshot(&self.shared)?;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotFile::open(path)?,
        })
    }
}

impl RaftSnapshotBuilder<TypeConfig> for SmSnapshotBuilder {
    type SnapshotData = SnapshotFile;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.build_blocking())
            .await
            .map_err(|e| io::Error::other(format!("snapshot build task failed: {e}")))?
            .map_err(io::Error::from)
    }
}

fn answer(
    replies: &mut Vec<(
        openraft::storage::ApplyResponder<TypeConfig>,
        CommandResponse,
    )>,
) {
    for (responder, response) in replies.drain(..) {
        responder.send(response);
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotFile;
    type SnapshotBuilder = SmSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.state.applied, self.state.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut pending = Pending::default();
        let mut replies = Vec::new();
        loop {
            let next = match entries.try_next().await {
                Ok(next) => next,
                Err(e) => {
                    // What was staged is already in the apply state (dedup ids, clock,
                    // applied id): write it, or that state would run ahead of RocksDB
                    // and of the view, and its clicks would be lost to later applies.
                    self.commit(std::mem::take(&mut pending))?;
                    answer(&mut replies);
                    return Err(e);
                }
            };
            let Some((entry, responder)) = next else {
                break;
            };
            let response = self.stage(&entry, &mut pending)?;
            if let Some(r) = responder {
                replies.push((r, response));
            }
            if self.should_commit(&pending) {
                self.commit(std::mem::take(&mut pending))?;
                answer(&mut replies);
            }
        }
        self.commit(pending)?;
        answer(&mut replies);
        Ok(())
    }

    async fn try_create_snapshot_builder(&mut self, _force: bool) -> Option<Self::SnapshotBuilder> {
        Some(self.snapshot_builder())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.snapshot_builder()
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: SnapshotFile,
    ) -> Result<(), io::Error> {
        self.install_snapshot_file(meta, snapshot)
            .map_err(io::Error::from)
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let current = store::current_snapshot(&self.shared).map_err(io::Error::from)?;
        Ok(current.map(|(meta, snapshot)| Snapshot { meta, snapshot }))
    }
}
