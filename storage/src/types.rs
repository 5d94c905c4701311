//! The Raft type configuration of a data group and the commands its log carries.
//!
//! A log entry's application payload is a [`Command`]. Commands are deterministic
//! instructions: everything apply needs (including the leader's wall-clock time for the
//! future-skew check) is inside the command, so every replica reaches the same state.

use std::fmt;

use adclick_proto::model::{Click, Outcome};

openraft::declare_raft_types!(
    /// Raft types of every adclick group: `u64` node ids, [`openraft::BasicNode`] (an
    /// address), [`Command`] entries and [`CommandResponse`] answers.
    pub TypeConfig:
        D = Command,
        R = CommandResponse,
        NodeId = u64,
        Node = openraft::BasicNode,
);

/// Raft node id.
pub type NodeId = u64;
/// A log id (leader term + node, index) under [`TypeConfig`].
pub type LogId = openraft::type_config::alias::LogIdOf<TypeConfig>;
/// A vote under [`TypeConfig`].
pub type Vote = openraft::type_config::alias::VoteOf<TypeConfig>;
/// A log entry under [`TypeConfig`].
pub type Entry = openraft::type_config::alias::EntryOf<TypeConfig>;
/// Membership as stored in the state machine.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<TypeConfig>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<TypeConfig>;

/// The log id of entry `index` proposed by leader `node_id` in `term`.
pub fn log_id(term: u64, node_id: NodeId, index: u64) -> LogId {
    LogId::new(
        openraft::type_config::alias::CommittedLeaderIdOf::<TypeConfig> { term, node_id },
        index,
    )
}

/// Replicated settings of a data group. They live in the log (not in local config files)
/// because apply depends on them and every replica must apply identically.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GroupSettings {
    /// How far behind the newest counted event time an event may be and still count.
    pub allowed_lateness_ms: i64,
    /// How far ahead of the leader's `proposed_at` an event may be before it is rejected.
    pub max_future_skew_ms: i64,
}

impl Default for GroupSettings {
    /// The design's defaults: 5 minutes of lateness, 60 seconds of future skew.
    fn default() -> Self {
        Self {
            allowed_lateness_ms: 5 * 60_000,
            max_future_skew_ms: 60_000,
        }
    }
}

/// A batch of clicks proposed by a group leader: one Raft entry per group per client batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestBatch {
    /// The leader's wall-clock time when it proposed the entry, ms since the epoch. Apply
    /// uses it (never its own clock) to reject far-future events.
    pub proposed_at_ms: i64,
    /// The clicks, in the client's order; the response has one outcome per click.
    pub clicks: Vec<Click>,
}

/// A registered filter: a name and a predicate in the filter language
/// (`adclick_proto::filter`), stored as text and parsed at apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterDef {
    /// Unique name, as used in queries.
    pub name: String,
    /// The predicate's source text.
    pub expr: String,
}

/// The application payload of a log entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Count a batch of clicks.
    Ingest(IngestBatch),
    /// Replace the group's replicated settings (applies to entries after this one).
    Configure(GroupSettings),
    /// Start counting a filter from the next click on.
    CreateFilter(FilterDef),
    /// Stop counting a filter and forget its counters.
    DropFilter {
        /// The filter's name.
        name: String,
    },
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Command::Ingest(b) => {
                write!(f, "ingest({} clicks @{})", b.clicks.len(), b.proposed_at_ms)
            }
            Command::Configure(s) => write!(
                f,
                "configure(lateness={}ms, future_skew={}ms)",
                s.allowed_lateness_ms, s.max_future_skew_ms
            ),
            Command::CreateFilter(d) => write!(f, "create_filter({}: {})", d.name, d.expr),
            Command::DropFilter { name } => write!(f, "drop_filter({name})"),
        }
    }
}

/// The result of applying one [`Command`], returned to the proposer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResponse {
    /// One outcome per click of the batch, in order.
    Ingest(Vec<Outcome>),
    /// Settings replaced.
    Configured,
    /// The filter was created; it counts clicks from this log index on.
    FilterCreated {
        /// The log index of the registration (also the filter's internal id).
        since_index: u64,
    },
    /// The filter was dropped (`existed` is false if there was no such filter).
    FilterDropped {
        /// Whether a filter of that name existed.
        existed: bool,
    },
    /// The command was refused at apply (e.g. a filter name already taken, or a
    /// predicate that does not parse); state is unchanged.
    Refused(String),
    /// Blank and membership entries answer nothing.
    None,
}
