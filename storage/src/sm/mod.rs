//! The aggregation state machine of one data group: deterministic apply of [`Command`]s,
//! counters per (ad, minute[, filter]), late tallies, the dedup index and the watermark,
//! persisted in RocksDB, queried concurrently, and snapshotted for openraft.
//!
//! # Layers
//!
//! - [`apply`]: the rules. Decides each click (rejected, duplicate, late, accepted) and
//!   each registry/settings command from the entry and the in-memory [`apply::ApplyState`]
//!   alone, recording effects in a plain-data [`apply::Pending`].
//! - [`store`]: [`StateMachine`]. Commits a `Pending` as one RocksDB WriteBatch and one
//!   update of the query view; rebuilds both on open; installs snapshots.
//! - [`reader`]: [`SmReader`], the cloneable query handle (`count`, `top`, `status`,
//!   `digest`).
//! - [`live`]: the in-memory view queries read (counters of recent minutes, organised for
//!   exact top-N), [`dedup`]: the in-memory dedup index, [`filters`]: compiled filters,
//!   [`hash`]: the keyed fast hash of their maps.
//! - [`format`](mod@format): every RocksDB key/value layout; [`snapshot`]: the snapshot file format.
//!   Both are described byte by byte in `docs/state-format.md`. [`validate`]: what install
//!   checks about a snapshot's contents before it changes anything.
//! - [`raft`]: the openraft `RaftStateMachine` / `RaftSnapshotBuilder` impls.
//!
//! # Invariants
//!
//! - **Determinism.** Apply reads only the entry and the state; the leader's clock enters
//!   only through `IngestBatch::proposed_at_ms`. In-memory structures (hash maps, interned
//!   ids) never influence a decision or a stored byte, only speed.
//! - **Atomicity.** Counters, late tallies, dedup ids, watermark, filters, settings,
//!   membership and `last_applied` of a batch of entries are written by one WriteBatch,
//!   so RocksDB never holds half an entry.
//! - **Monotonic watermark.** `W` never decreases (a `Configure` raising the lateness only
//!   slows it), so a minute once final stays final and its counters never change.
//! - **Consistent reads.** A commit updates the in-memory view under its write lock,
//!   writes RocksDB without the lock, then retires what the write made final. Queries
//!   read from RocksDB only what the in-flight write cannot change (final minutes) or
//!   what the view overrides (late tallies), so every answer is exact at the view's
//!   applied id (see [`store`] and [`reader`]).
//!
//! # Durability argument (why the WAL can be off)
//!
//! State-machine writes skip RocksDB's write-ahead log: the Raft log is already a
//! write-ahead log of every committed entry, fsync'd before commit, and the log store
//! persists the committed id (`save_committed`). What must hold is that after a crash the
//! persisted state is *some prefix* of the log that the log still covers:
//!
//! 1. *Prefix.* All keys of all groups live in one column family. A WriteBatch is inserted
//!    into one memtable as a unit, and RocksDB flushes and installs memtables in order, so
//!    a crash loses a suffix of batches and never part of one. Every batch carries its
//!    `last_applied`, so the recovered `applied_state` names exactly the prefix on disk.
//!    (A server that puts other column families in the same database needs
//!    `atomic_flush` only if state-machine keys ever span several of them; they don't.)
//! 2. *Covered.* openraft purges the log only up to a snapshot it obtained from
//!    `build_snapshot`/`install_snapshot`, and those return only after the snapshot file
//!    is fsync'd and renamed into place (directory fsync'd too). On restart, if RocksDB's
//!    prefix is older than the current snapshot, openraft installs that snapshot first
//!    (`StorageHelper::get_initial_state`), then re-applies committed entries from the
//!    snapshot or the RocksDB prefix, whichever is newer: all of them are still in the log.
//! 3. *Installs.* Replacing the state from a snapshot takes several batches. The first
//!    writes a marker key with the range delete, the last removes it and is followed by
//!    a flush. If the marker is found on open, the state is wiped and `applied_state` is
//!    empty, so openraft re-installs the (already durable) current snapshot. The file is
//!    checked (format, contents, group) before it is published, so a snapshot that would
//!    not load is refused while the old state is intact; a snapshot build waits for an
//!    install in progress rather than read its intermediate state.
//!
//! Building a snapshot also flushes RocksDB, so after a crash the RocksDB prefix is
//! normally at least as new as the current snapshot and openraft only replays the log
//! tail. A clean shutdown flushes too (RocksDB flushes unpersisted memtables when the last
//! handle closes); [`StateMachine::flush`] bounds replay time when called periodically.
//!
//! [`Command`]: crate::types::Command

pub mod apply;
pub mod dedup;
pub mod filters;
pub mod format;
pub mod hash;
pub mod live;
pub mod raft;
pub mod reader;
pub mod snapshot;
pub mod store;
pub mod validate;

pub use raft::{SmSnapshotBuilder, Snapshot};
pub use reader::{CountAnswer, FilterInfo, SmReader, SmStatus, StateDigest, TopAnswer, MAX_TOP_N};
pub use snapshot::{IncomingSnapshot, SnapshotFile};
pub use store::{open_db, sm_cf_descriptor, SmOptions, StateMachine};
