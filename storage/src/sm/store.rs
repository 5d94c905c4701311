//! The state machine of one group: applies entries (through [`ApplyState`]), persists
//! their effects in RocksDB, keeps the query view current, rebuilds both on open, and
//! replaces everything when a snapshot is installed.
//!
//! Write protocol: entries are decided into a [`Pending`]; a commit turns it into one
//! WriteBatch (counters as absolute values, late tallies read-modify-written, dedup ids,
//! registry, meta with `last_applied`), so RocksDB always holds a prefix of the log. The
//! view is updated under its write lock *before* the batch is written, the write itself
//! runs without the lock (it is the slow part), and minutes leave memory only after it.
//! A reader therefore always finds in memory every counter the in-flight batch changes,
//! and reads from RocksDB only final counters (immutable) and late tallies (corrected by
//! the view's late overlay): each answer is exact at the view's applied id.
//!
//! The WriteBatch skips RocksDB's WAL (see the durability argument in [`crate::sm`]).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use adclick_proto::model::Minute;
use openraft::EntryPayload;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, Options, ReadOptions, WriteBatch, WriteOptions, DB,
};

use super::apply::{ApplyState, Pending, RegistryOp};
use super::filters;
use super::format::{self, meta, tag, Keys};
use super::live::{Live, Slot};
use super::snapshot::{self, SnapshotFile, SnapshotReader};
use super::validate::RecordCheck;
use crate::error::{Error, Result};
use crate::types::{CommandResponse, Entry, LogId, SnapshotMeta, StoredMembership};

/// Tuning of a state machine. Nothing here changes what apply decides.
#[derive(Debug, Clone)]
pub struct SmOptions {
    /// Final minutes kept in memory below the watermark's minute, so "last M minutes"
    /// queries that reach a little past the open minutes stay in memory.
    pub keep_final_minutes: u32,
    /// Commit (write a batch and answer proposers) once this many clicks are pending.
    /// A commit holds the view's write lock for time proportional to its clicks, so this
    /// bounds how long a query can wait: at 1000, `count` p99 stayed under 2 ms with 50k
    /// clicks/s of ingest; 4096 raised apply throughput ~20% and `count` p99 to ~5 ms
    /// (`SM_PERF_RATE=50000 [SM_PERF_COMMIT=4096] CARGO_PROFILE_DEV_OPT_LEVEL=3 cargo test
    /// -p adclick-storage --test sm_perf -- --ignored --nocapture`).
    pub max_pending_clicks: usize,
    /// Records per WriteBatch when installing a snapshot.
    pub install_batch_records: usize,
    /// Distinct ads expected in memory at once (the open minutes' ads). Pre-sizes the ad
    /// intern table so that its growth never stalls queries; 0 lets it grow on demand,
    /// costing one stall per doubling while a group warms up.
    pub expected_ads: usize,
    /// Fault injection: apply's dedup lookup never finds an id, so a retried or duplicated
    /// click is counted again. Only for the fault suite's deliberately broken builds.
    #[cfg(feature = "fault-injection")]
    pub fault_no_dedup: bool,
}

impl Default for SmOptions {
    fn default() -> Self {
        SmOptions {
            keep_final_minutes: 10,
            max_pending_clicks: 1000,
            install_batch_records: 50_000,
            expected_ads: 0,
            #[cfg(feature = "fault-injection")]
            fault_no_dedup: false,
        }
    }
}

/// Opens (creating if needed) a RocksDB database for the state machines of a node, with
/// the [`format::CF_NAME`] column family. A server that shares the database with other
/// data can open it itself with [`sm_cf_descriptor`].
pub fn open_db(path: &Path) -> Result<Arc<DB>> {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    let db = DB::open_cf_descriptors(&opts, path, [sm_cf_descriptor()])?;
    Ok(Arc::new(db))
}

/// The column family every state machine writes to, with its options.
pub fn sm_cf_descriptor() -> ColumnFamilyDescriptor {
    let mut cf = Options::default();
    cf.set_compression_type(rocksdb::DBCompressionType::Lz4);
    ColumnFamilyDescriptor::new(format::CF_NAME, cf)
}

/// What the state machine and its readers share.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) db: Arc<DB>,
    pub(crate) keys: Keys,
    pub(crate) live: RwLock<Live>,
    pub(crate) snapshot_dir: PathBuf,
    /// Serialises renames and removals in `snapshot_dir`.
    pub(crate) snapshot_lock: Mutex<()>,
    /// Held by a snapshot install while it replaces the group's keys, and by a snapshot
    /// build while it takes its RocksDB snapshot: a build never reads a half-installed
    /// state (it would have to fail, and openraft treats a failed build as fatal).
    pub(crate) install_lock: Mutex<()>,
    /// The view's applied index, published after each commit's view update (and on
    /// reload), so a linearizable read can wait for exactly the commit holding its read
    /// index (see [`super::SmReader::wait_applied`]).
    pub(crate) applied_tx: tokio::sync::watch::Sender<Option<u64>>,
}

impl Shared {
    pub(crate) fn cf(&self) -> Result<&ColumnFamily> {
        self.db.cf_handle(format::CF_NAME).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "database has no column family {:?}",
                format::CF_NAME
            ))
        })
    }

    pub(crate) fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::corruption(self.db.path().join(format::CF_NAME), 0, reason)
    }

    /// The view for a query; `Closed` while it cannot be trusted (failed write, install).
    pub(crate) fn read_live(&self) -> Result<RwLockReadGuard<'_, Live>> {
        let live = self.live.read().map_err(|_| Error::Closed)?;
        if live.broken.is_some() {
            return Err(Error::Closed);
        }
        Ok(live)
    }

    fn write_live(&self) -> Result<RwLockWriteGuard<'_, Live>> {
        self.live.write().map_err(|_| Error::Closed)
    }

    fn get(&self, cf: &ColumnFamily, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get_cf(cf, key)?)
    }

    pub(crate) fn snapshot_lock(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.snapshot_lock.lock().map_err(|_| Error::Closed)
    }

    fn install_lock(&self) -> Result<std::sync::MutexGuard<'_, ()>> {
        self.install_lock.lock().map_err(|_| Error::Closed)
    }
}

/// Calls `f(key, value)` for every key in `[start, end)`, as of `snap` if given, until `f`
/// returns false. `bulk` scans skip the block cache so they don't evict hot blocks.
pub(crate) fn scan<F>(
    db: &DB,
    cf: &ColumnFamily,
    snap: Option<&rocksdb::Snapshot<'_>>,
    (start, end): (&[u8], &[u8]),
    bulk: bool,
    mut f: F,
) -> Result<()>
where
    F: FnMut(&[u8], &[u8]) -> Result<bool>,
{
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(end.to_vec());
    ro.fill_cache(!bulk);
    if let Some(s) = snap {
        ro.set_snapshot(s);
    }
    let mut it = db.raw_iterator_cf_opt(cf, ro);
    it.seek(start);
    while it.valid() {
        let (Some(k), Some(v)) = (it.key(), it.value()) else {
            break;
        };
        if !f(k, v)? {
            return Ok(());
        }
        it.next();
    }
    it.status()?;
    Ok(())
}

/// Interned ads released per commit (see `Counters::release_some`), bounding the lock
/// time one commit spends on releases.
const RELEASE_PER_COMMIT: usize = 20_000;

fn write_options() -> WriteOptions {
    let mut w = WriteOptions::default();
    // The Raft log is the write-ahead log; see the durability argument in `sm`.
    w.disable_wal(true);
    w
}

/// The aggregation state machine of one data group. Owned by openraft (by `&mut`); queries
/// go through [`StateMachine::reader`].
#[derive(Debug)]
pub struct StateMachine {
    pub(crate) shared: Arc<Shared>,
    pub(crate) state: ApplyState,
    opts: SmOptions,
    /// Set when a commit failed: memory is ahead of disk, so nothing more may be applied.
    failed: Option<String>,
}

impl StateMachine {
    /// Opens the state machine of `group` in a shared database (see [`open_db`]), with
    /// its snapshots in `snapshot_dir` (one directory per group, created if missing).
    pub fn open(
        db: Arc<DB>,
        group: u64,
        snapshot_dir: impl Into<PathBuf>,
        opts: SmOptions,
    ) -> Result<Self> {
        let snapshot_dir = snapshot_dir.into();
        fs::create_dir_all(&snapshot_dir)
            .map_err(|e| Error::io(format!("create {}", snapshot_dir.display()), e))?;
        snapshot::remove_partials(&snapshot_dir)?;
        let shared = Arc::new(Shared {
            db,
            keys: Keys::new(group),
            live: RwLock::new(Live::empty()),
            snapshot_dir,
            snapshot_lock: Mutex::new(()),
            install_lock: Mutex::new(()),
            applied_tx: tokio::sync::watch::Sender::new(None),
        });
        let mut sm = StateMachine {
            shared,
            state: ApplyState::default(),
            opts,
            failed: None,
        };
        let cf = sm.shared.cf()?;
        if sm
            .shared
            .get(cf, &sm.shared.keys.meta(meta::INSTALLING))?
            .is_some()
        {
            // A snapshot install was cut short: the keys are a mix of two states. Start
            // empty; openraft then re-installs the current snapshot and replays the log.
            tracing::warn!(
                group,
                "interrupted snapshot install found; wiping the group's state"
            );
            sm.wipe()?;
        }
        sm.reload()?;
        Ok(sm)
    }

    /// Opens a database at `path` holding only this group (tests, tools).
    pub fn open_path(path: &Path, group: u64, snapshot_dir: impl Into<PathBuf>) -> Result<Self> {
        Self::open(open_db(path)?, group, snapshot_dir, SmOptions::default())
    }

    /// A cloneable read handle for queries, usable concurrently with apply.
    pub fn reader(&self) -> super::SmReader {
        super::SmReader::new(self.shared.clone())
    }

    /// Where this group's snapshots live (create [`snapshot::IncomingSnapshot`]s here).
    pub fn snapshot_dir(&self) -> &Path {
        &self.shared.snapshot_dir
    }

    /// Last applied log id.
    pub fn applied(&self) -> Option<LogId> {
        self.state.applied
    }

    /// Last applied membership.
    pub fn membership(&self) -> &StoredMembership {
        &self.state.membership
    }

    /// Applies entries in order and commits; returns one response per entry. This is
    /// what openraft's `apply` does, without responders (replay, tools, tests).
    pub fn apply_entries<I>(&mut self, entries: I) -> Result<Vec<CommandResponse>>
    where
        I: IntoIterator<Item = Entry>,
    {
        let mut pending = Pending::default();
        let mut out = Vec::new();
        for entry in entries {
            out.push(self.stage(&entry, &mut pending)?);
            if self.should_commit(&pending) {
                self.commit(std::mem::take(&mut pending))?;
            }
        }
        self.commit(pending)?;
        Ok(out)
    }

    /// Decides one entry into `p` (not yet written).
    pub(crate) fn stage(&mut self, entry: &Entry, p: &mut Pending) -> Result<CommandResponse> {
        if let Some(why) = &self.failed {
            return Err(Error::io(
                "state machine failed earlier",
                std::io::Error::other(why.clone()),
            ));
        }
        self.state.advance(entry.log_id, p);
        Ok(match &entry.payload {
            EntryPayload::Blank => CommandResponse::None,
            EntryPayload::Normal(cmd) => self.state.apply(entry.log_id.index, cmd, p),
            EntryPayload::Membership(m) => {
                self.state
                    .set_membership(StoredMembership::new(Some(entry.log_id), m.clone()), p);
                CommandResponse::None
            }
        })
    }

    /// Whether `p` has grown enough to be committed before more entries are staged.
    pub(crate) fn should_commit(&self, p: &Pending) -> bool {
        p.clicks >= self.opts.max_pending_clicks
    }

    /// Writes `p` as one WriteBatch and publishes it to readers.
    pub(crate) fn commit(&mut self, p: Pending) -> Result<()> {
        if p.is_empty() {
            return Ok(());
        }
        let result = self.try_commit(p);
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    fn try_commit(&mut self, p: Pending) -> Result<()> {
        let shared = self.shared.clone();
        let (db, keys, cf) = (&shared.db, shared.keys, shared.cf()?);
        let st = &self.state;
        let mut batch = WriteBatch::default();

        // Phase 1, no lock: meta, registry and late tallies. Only this thread writes, so
        // reads of RocksDB here see the last commit.
        if let Some(applied) = &st.applied {
            batch.put_cf(cf, keys.meta(meta::APPLIED), format::encode_log_id(applied));
        }
        if p.membership_changed {
            batch.put_cf(
                cf,
                keys.meta(meta::MEMBERSHIP),
                format::encode_membership(&st.membership),
            );
        }
        if p.settings_changed {
            batch.put_cf(
                cf,
                keys.meta(meta::SETTINGS),
                format::encode_settings(&st.settings),
            );
        }
        if let (true, Some(clock)) = (p.clock_changed, &st.clock) {
            batch.put_cf(cf, keys.meta(meta::CLOCK), format::encode_clock(clock));
        }
        // In apply order: a filter created and dropped in one batch must end up dropped.
        for op in &p.registry {
            match op {
                RegistryOp::Create { name, record } => {
                    batch.put_cf(cf, keys.filter(name), format::encode_filter(record));
                }
                RegistryOp::Drop { name, id } => {
                    batch.delete_cf(cf, keys.filter(name));
                    let (a, b) = keys.filter_count_all(*id);
                    batch.delete_range_cf(cf, a, b);
                }
            }
        }
        // Late tallies are the only read-modify-write: they can hit any past minute, so
        // they live on disk only.
        let mut late = BTreeMap::new();
        for ((ad, minute), n) in &p.late {
            let key = keys.late(ad.as_bytes(), *minute);
            let cur = match db.get_pinned_cf(cf, &key)? {
                Some(v) => format::decode_count(&v).map_err(|m| shared.corrupt(m.0))?,
                None => 0,
            };
            batch.put_cf(cf, key, format::encode_u64(cur + n));
            late.insert((ad.clone(), *minute), cur + n);
        }

        // Phase 2, write lock: publish the new state in memory, noting the counters' new
        // absolute values. Only the in-memory updates happen under the lock; their keys
        // are built and put into the batch after it is released.
        let mut counted: Vec<(Slot, Minute, &[u8], u64)> = Vec::with_capacity(
            p.counts
                .values()
                .flat_map(|m| m.values())
                .map(|d| 1 + d.filters.len())
                .sum(),
        );
        {
            let mut live = shared.write_live()?;
            for (&minute, per_ad) in &p.counts {
                assert!(
                    live.mem_floor.is_none_or(|f| minute >= f),
                    "counted into minute {minute:?} below the in-memory floor {:?}",
                    live.mem_floor
                );
                live.counters.add_minute(
                    minute,
                    per_ad
                        .iter()
                        .map(|(ad, d)| (ad.as_bytes(), d.all, d.filters.as_slice())),
                    |ad, slot, v| counted.push((slot, minute, ad, v)),
                );
            }
            for op in &p.registry {
                match op {
                    RegistryOp::Create { name, record } => {
                        live.filters.insert(name.clone(), record.clone());
                    }
                    RegistryOp::Drop { name, id } => {
                        live.filters.remove(name);
                        live.counters.drop_filter(*id);
                    }
                }
            }
            live.applied = st.applied;
            // Membership only changes through `set_membership`, which flags the pending
            // batch; cloning it (a map of node addresses) on every commit is waste.
            if p.membership_changed {
                live.membership = st.membership.clone();
            }
            live.settings = st.settings;
            live.clock = st.clock;
            live.late_overlay = Some(late);
        }
        shared.applied_tx.send_replace(st.applied.map(|l| l.index));
        // Counters of a filter dropped in this batch are not written (its range delete
        // is already in the batch).
        let dropped: Vec<u64> = p
            .registry
            .iter()
            .filter_map(|op| match op {
                RegistryOp::Drop { id, .. } => Some(*id),
                RegistryOp::Create { .. } => None,
            })
            .collect();
        // One key buffer for the rest of the commit: no allocation per key.
        let mut key = Vec::with_capacity(128);
        // Counter keys go into the batch in key order: RocksDB's memtable (a skip list)
        // inserts a key that follows the previous one from where that one went, instead
        // of searching from the top, which made these inserts the largest single cost
        // of a loaded node. All the keys are built into one buffer, then sorted.
        let mut arena: Vec<u8> = Vec::with_capacity(counted.len() * 40);
        let mut sorted: Vec<(std::ops::Range<usize>, u64)> = Vec::with_capacity(counted.len());
        for &(slot, minute, ad, v) in &counted {
            if matches!(slot, Slot::Filter(id) if dropped.contains(&id)) {
                continue;
            }
            keys.slot_count_into(&mut key, slot, minute, ad);
            let start = arena.len();
            arena.extend_from_slice(&key);
            sorted.push((start..arena.len(), v));
        }
        sorted.sort_unstable_by(|a, b| arena[a.0.clone()].cmp(&arena[b.0.clone()]));
        // Every key is distinct (one delta per ad, minute and slot), so the unstable sort
        // cannot make replicas write different values for one key.
        debug_assert!(sorted
            .windows(2)
            .all(|w| arena[w[0].0.clone()] != arena[w[1].0.clone()]));
        for (range, v) in sorted {
            batch.put_cf(cf, &arena[range], format::encode_u64(v));
        }
        for ((minute, index, part), block) in p.dedup.blocks() {
            keys.dedup_block_into(&mut key, minute, index, part);
            batch.put_cf(cf, &key, block);
        }
        // After the ids: ids of this batch in minutes that expired meanwhile go too.
        if let Some(floor) = p.dedup_floor {
            for (a, b) in keys.dedup_below(floor) {
                batch.delete_range_cf(cf, a, b);
            }
        }

        // Phase 3, no lock: the RocksDB write. Readers meanwhile see the new view; the
        // only RocksDB data they read that this batch changes are late tallies, which
        // the overlay corrects. Minutes leaving memory wait until the write is done.
        let written = db.write_opt(batch, &write_options());

        // Phase 4, write lock (short): retire the overlay and minutes now final on disk.
        let mut live = shared.write_live()?;
        live.late_overlay = None;
        if let Err(e) = written {
            live.broken = Some(format!("write failed: {e}"));
            return Err(e.into());
        }
        let mut garbage = None;
        if let Some(clock) = st.clock {
            let floor = mem_floor(clock.floor(), self.opts.keep_final_minutes);
            if live.mem_floor.is_none_or(|f| floor > f) {
                let leaving: Vec<Minute> =
                    live.counters.minutes().take_while(|m| *m < floor).collect();
                live.disk_minutes.extend(leaving);
                garbage = Some(live.counters.drop_below(floor));
                live.mem_floor = Some(floor);
            }
        }
        live.counters.release_some(RELEASE_PER_COMMIT);
        drop(live);
        // Freeing a million-entry minute takes milliseconds: not under the lock.
        drop(garbage);
        Ok(())
    }

    /// Flushes the group's memtables, making everything applied so far durable without
    /// replay. Not needed for correctness (the log replays), only to shorten recovery.
    pub fn flush(&self) -> Result<()> {
        Ok(self.shared.db.flush_cf(self.shared.cf()?)?)
    }

    /// Deletes every key of the group, durably.
    fn wipe(&mut self) -> Result<()> {
        let cf = self.shared.cf()?;
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(
            cf,
            self.shared.keys.group_start(),
            self.shared.keys.group_end(),
        );
        self.shared.db.write_opt(batch, &write_options())?;
        self.flush()
    }

    /// Rebuilds the in-memory state (apply side and query view) from RocksDB.
    fn reload(&mut self) -> Result<()> {
        let (state, live) = self.load()?;
        self.state = state;
        let applied = live.applied.map(|l| l.index);
        *self.shared.write_live()? = live;
        self.shared.applied_tx.send_replace(applied);
        Ok(())
    }

    fn load(&self) -> Result<(ApplyState, Live)> {
        let sh = &*self.shared;
        let (db, keys, cf) = (&*sh.db, sh.keys, sh.cf()?);
        let bad = |m: format::Malformed| sh.corrupt(m.0);
        let mut st = ApplyState::default();
        #[cfg(feature = "fault-injection")]
        {
            st.fault_no_dedup = self.opts.fault_no_dedup;
        }
        let mut live = Live::empty();
        live.counters.reserve_ads(self.opts.expected_ads);
        if let Some(v) = sh.get(cf, &keys.meta(meta::APPLIED))? {
            st.applied = Some(format::decode_log_id(&v).map_err(bad)?);
        }
        if let Some(v) = sh.get(cf, &keys.meta(meta::MEMBERSHIP))? {
            st.membership = format::decode_membership(&v).map_err(bad)?;
        }
        if let Some(v) = sh.get(cf, &keys.meta(meta::SETTINGS))? {
            st.settings = format::decode_settings(&v).map_err(bad)?;
        }
        if let Some(v) = sh.get(cf, &keys.meta(meta::CLOCK))? {
            st.clock = Some(format::decode_clock(&v).map_err(bad)?);
        }
        let (a, b) = keys.filter_range();
        scan(db, cf, None, (&a, &b), false, |k, v| {
            let name = format::parse_filter_key(&keys, k).map_err(bad)?;
            let record = format::decode_filter(v).map_err(bad)?;
            let active = filters::reload(name, &record).map_err(|why| {
                sh.corrupt(format!("stored filter {name:?} no longer compiles: {why}"))
            })?;
            st.filters.push(active);
            live.filters.insert(name.to_owned(), record);
            Ok(true)
        })?;
        st.filters.sort_by_key(|f| f.id);

        if let Some(clock) = st.clock {
            st.dedup.raise_floor(clock.floor());
        }
        // Ids of an open minute: insert each once (a retry of an expired id may have been
        // counted again in a newer minute, so the same id can appear twice).
        fn add_id(st: &mut ApplyState, minute: Minute, id: &[u8]) {
            if st.dedup.is_live(minute) && st.dedup.lookup(id).is_none() {
                st.dedup.insert(id, minute);
            }
        }
        // The first layout, one key per id (written by older versions).
        let (a, b) = keys.dedup_all(tag::DEDUP_IDS);
        scan(db, cf, None, (&a, &b), true, |k, _| {
            let (minute, id) = format::parse_dedup_id_key(&keys, k).map_err(bad)?;
            add_id(&mut st, minute, id);
            Ok(true)
        })?;
        let (a, b) = keys.dedup_all(tag::DEDUP);
        scan(db, cf, None, (&a, &b), true, |k, v| {
            let (minute, _, _) = format::parse_dedup_block_key(&keys, k).map_err(bad)?;
            // Expired blocks are range-deleted with the floor; skip any that survived.
            if st.dedup.is_live(minute) {
                format::decode_dedup_block(v, |id| add_id(&mut st, minute, id)).map_err(bad)?;
            }
            Ok(true)
        })?;

        let floor = st
            .clock
            .map(|c| mem_floor(c.floor(), self.opts.keep_final_minutes));
        let from = floor.unwrap_or(Minute(i64::MIN));
        // `All` first: a filter slot only holds ads its minute's `All` slot holds.
        let slots = std::iter::once(Slot::All).chain(st.filters.iter().map(|f| Slot::Filter(f.id)));
        for slot in slots {
            let (a, b) = keys.slot_count_range(slot, from, Minute(i64::MAX));
            scan(db, cf, None, (&a, &b), true, |k, v| {
                let (minute, ad) = format::parse_slot_count_key(&keys, slot, k).map_err(bad)?;
                let n = format::decode_count(v).map_err(bad)?;
                if n > 0 {
                    live.counters.add(slot, minute, &ad, n);
                }
                Ok(true)
            })?;
        }
        if let Some(floor) = floor {
            live.disk_minutes = counter_minutes(db, cf, &keys, floor).map_err(|e| match e {
                Error::Corruption { reason, .. } => sh.corrupt(reason),
                other => other,
            })?;
        }

        live.applied = st.applied;
        live.membership = st.membership.clone();
        live.settings = st.settings;
        live.clock = st.clock;
        live.mem_floor = floor;
        Ok((st, live))
    }

    /// Installs a snapshot file: verifies every byte, makes it the current snapshot,
    /// replaces the group's keys with its records, and reloads. Refuses (without changing
    /// anything) a file that fails a check (format, contents, another group's snapshot)
    /// or whose header differs from `meta`. A file outside the snapshot directory is
    /// copied in first and left as it was.
    pub fn install_snapshot_file(&mut self, meta: &SnapshotMeta, file: SnapshotFile) -> Result<()> {
        let file = if file.path().parent() == Some(self.shared.snapshot_dir.as_path()) {
            file
        } else {
            snapshot::copy_into(&self.shared.snapshot_dir, file)?
        };
        let path = file.path().to_path_buf();
        let checked = self.verify_snapshot(file).and_then(|header| {
            if header == *meta {
                Ok(())
            } else {
                Err(Error::corruption(
                    &path,
                    0,
                    format!("snapshot header says {header}, install was asked for {meta}"),
                ))
            }
        });
        if let Err(e) = checked {
            // A refused file received into our directory would otherwise pile up until
            // the next open; files elsewhere belong to the caller.
            if path.parent() == Some(self.shared.snapshot_dir.as_path())
                && snapshot::is_partial(&path)
            {
                let _ = fs::remove_file(&path);
            }
            return Err(e);
        }
        let current = {
            let _g = self.shared.snapshot_lock()?;
            snapshot::publish(&self.shared.snapshot_dir, &path, meta)?
        };
        let shared = self.shared.clone();
        let _installing = shared.install_lock()?;
        // Queries get `Closed` until the new state is loaded: RocksDB is in between.
        self.shared.write_live()?.broken = Some("installing a snapshot".into());
        if let Err(e) = self.replace_from(&current).and_then(|()| self.reload()) {
            // RocksDB is half replaced (the marker says so to the next open): refuse to
            // apply anything on top of it.
            self.failed = Some(format!("snapshot install failed: {e}"));
            return Err(e);
        }
        self.failed = None;
        tracing::info!(snapshot = %meta, "snapshot installed");
        Ok(())
    }

    /// Reads the whole file: its format, that it is this group's, and that every record
    /// is state this group can load (see [`super::validate`]). Returns the header's meta.
    fn verify_snapshot(&self, file: SnapshotFile) -> Result<SnapshotMeta> {
        let mut r = SnapshotReader::new(file)?;
        let path = r.path().to_path_buf();
        let group = self.shared.keys.group();
        if r.group() != group {
            return Err(Error::corruption(
                &path,
                0,
                format!(
                    "snapshot of group {}, installing into group {group}",
                    r.group()
                ),
            ));
        }
        let header = r.meta().clone();
        let mut check = RecordCheck::new(self.shared.keys, &header);
        loop {
            let at = r.records();
            let Some((key, value)) = r.next_record()? else {
                break;
            };
            check.record(&key, &value).map_err(|m| {
                Error::corruption(&path, 0, format!("record {at} (key {key:02x?}): {}", m.0))
            })?;
        }
        check
            .finish()
            .map_err(|m| Error::corruption(&path, 0, m.0))?;
        Ok(header)
    }

    /// Replaces the group's keys with the records of the (verified) snapshot at `path`.
    /// The marker key makes an interrupted replace visible to the next open.
    fn replace_from(&mut self, path: &Path) -> Result<()> {
        let sh = self.shared.clone();
        let (db, keys, cf) = (&sh.db, sh.keys, sh.cf()?);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(cf, keys.group_start(), keys.group_end());
        batch.put_cf(cf, keys.meta(meta::INSTALLING), []);
        db.write_opt(batch, &write_options())?;
        let mut r = SnapshotReader::new(SnapshotFile::open(path)?)?;
        let mut batch = WriteBatch::default();
        let mut full = Vec::new();
        while let Some((key, value)) = r.next_record()? {
            keys.rehome_into(&mut full, &key);
            batch.put_cf(cf, &full, value);
            if batch.len() >= self.opts.install_batch_records {
                db.write_opt(std::mem::take(&mut batch), &write_options())?;
            }
        }
        batch.delete_cf(cf, keys.meta(meta::INSTALLING));
        db.write_opt(batch, &write_options())?;
        self.flush()
    }

    /// A snapshot builder reading a consistent point of this group.
    pub fn snapshot_builder(&self) -> super::SmSnapshotBuilder {
        super::SmSnapshotBuilder::new(self.shared.clone())
    }
}

/// The distinct minutes below `below` that have counters: one seek per minute, not one
/// step per key.
fn counter_minutes(
    db: &DB,
    cf: &ColumnFamily,
    keys: &Keys,
    below: Minute,
) -> Result<BTreeSet<Minute>> {
    let (start, end) = keys.count_range(Minute(i64::MIN), below);
    let mut ro = ReadOptions::default();
    ro.set_iterate_upper_bound(end);
    ro.fill_cache(false);
    let mut it = db.raw_iterator_cf_opt(cf, ro);
    let mut out = BTreeSet::new();
    it.seek(start);
    while let Some(k) = it.key() {
        let (minute, _) =
            format::parse_count_key(keys, k).map_err(|m| Error::corruption("rocksdb", 0, m.0))?;
        out.insert(minute);
        let Some(next) = minute.0.checked_add(1) else {
            break;
        };
        it.seek(keys.count_range(Minute(next), below).0);
    }
    it.status()?;
    Ok(out)
}

fn mem_floor(floor: Minute, keep: u32) -> Minute {
    Minute(floor.0.saturating_sub(i64::from(keep)))
}

/// Builds the snapshot of `shared` as of one RocksDB snapshot; returns its meta and path.
pub(crate) fn build_snapshot(shared: &Shared) -> Result<(SnapshotMeta, PathBuf)> {
    let (db, keys, cf) = (&*shared.db, shared.keys, shared.cf()?);
    let snap = {
        // Not in the middle of an install: its batches together are one state change.
        let _g = shared.install_lock()?;
        db.snapshot()
    };
    let bad = |m: format::Malformed| shared.corrupt(m.0);
    if snap.get_cf(cf, keys.meta(meta::INSTALLING))?.is_some() {
        // Only a failed install leaves the marker behind, and it also stops the group.
        return Err(Error::Closed);
    }
    let last_log_id = match snap.get_cf(cf, keys.meta(meta::APPLIED))? {
        Some(v) => Some(format::decode_log_id(&v).map_err(bad)?),
        None => None,
    };
    let last_membership = match snap.get_cf(cf, keys.meta(meta::MEMBERSHIP))? {
        Some(v) => format::decode_membership(&v).map_err(bad)?,
        None => StoredMembership::default(),
    };
    let meta = SnapshotMeta {
        last_log_id,
        last_membership,
    };
    let mut w = snapshot::SnapshotWriter::create(&shared.snapshot_dir, keys.group(), &meta)?;
    let (a, b) = (keys.group_start(), keys.group_end());
    let written = scan(db, cf, Some(&snap), (&a, &b), true, |k, v| {
        let key = keys
            .strip(k)
            .ok_or_else(|| shared.corrupt("key outside the group range"))?;
        w.record(key, v)?;
        Ok(true)
    });
    if let Err(e) = written {
        w.abandon();
        return Err(e);
    }
    let (tmp, records) = w.finish()?;
    // Not needed for safety (the snapshot file covers the purged log), but it makes the
    // RocksDB state at least as new as the snapshot, so a restart resumes from RocksDB
    // instead of re-installing the whole snapshot.
    db.flush_cf(cf)?;
    let path = {
        let _g = shared.snapshot_lock()?;
        snapshot::publish(&shared.snapshot_dir, &tmp, &meta)?
    };
    tracing::info!(snapshot = %meta, records, path = %path.display(), "snapshot built");
    Ok((meta, path))
}

/// The newest complete snapshot in `shared`'s directory, with the meta of its header.
pub(crate) fn current_snapshot(shared: &Shared) -> Result<Option<(SnapshotMeta, SnapshotFile)>> {
    let _g = shared.snapshot_lock()?;
    let Some(path) = snapshot::list(&shared.snapshot_dir)?.pop() else {
        return Ok(None);
    };
    let meta = snapshot::read_meta(&path)?;
    Ok(Some((meta, SnapshotFile::open(path)?)))
}
