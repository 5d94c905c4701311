//! The history of a fault run: every event (click) the workload made, every operation it
//! invoked with when it started and ended and what came back, and every fault the nemesis
//! injected. The checker reads nothing else about what the clients saw.
//!
//! An operation's result is one of three kinds, as in Jepsen:
//! - `Ok`: the cluster answered; for an ingest, one [`Answer`] per click;
//! - `Fail`: the operation provably had no effect (a failed read; no ingest error proves
//!   that, see `workload`);
//! - `Info`: indeterminate. Timeouts, transport errors and every ambiguous answer land
//!   here: the clicks may or may not have been counted.
//!
//! Times are microseconds since the run started, from one monotonic clock shared by every
//! client task, so "completed before invoked" comparisons across processes are sound.
//!
//! A history is saved as JSON lines ([`History::save`]): one `{"event": ...}`, `{"op": ...}`
//! or `{"fault": ...}` object per line, after a `{"run": ...}` header with the seed and
//! schedule, so a failing run can be read back and re-checked.

use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

/// Index of an event in [`History::events`].
pub type EventIdx = u32;

/// A click the workload created: its id and what decides where it counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// The event id (unique per run; retries and deliberate duplicates reuse it).
    pub id: String,
    /// Index of the ad (`ad_name(ad)` is its id).
    pub ad: u32,
    /// The click's event time, ms since the epoch; every send of the event carries it.
    pub event_time_ms: i64,
}

/// The id of ad number `i` in fault runs.
pub fn ad_name(i: u32) -> String {
    format!("fad-{i:03}")
}

/// The number of the ad named `name` by [`ad_name`], if it is one.
pub fn ad_index(name: &str) -> Option<u32> {
    let digits = name.strip_prefix("fad-")?;
    let i: u32 = digits.parse().ok()?;
    (ad_name(i) == name).then_some(i)
}

/// What the cluster answered for one click of an ingest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Counted by this request.
    Accepted,
    /// Already counted (by an earlier request or an earlier attempt of this one).
    Duplicate,
    /// Older than the watermark: not counted.
    Late,
    /// Refused (invalid, or too far ahead of the leader's clock): not counted.
    Rejected,
}

impl Answer {
    /// Whether the answer says the click is counted.
    pub fn acked(self) -> bool {
        matches!(self, Answer::Accepted | Answer::Duplicate)
    }
}

/// The result of an operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome<T> {
    /// The cluster answered.
    Ok(T),
    /// Provably no effect.
    Fail(String),
    /// Indeterminate.
    Info(String),
}

impl<T> Outcome<T> {
    /// The value, if the operation succeeded.
    pub fn ok(&self) -> Option<&T> {
        match self {
            Outcome::Ok(v) => Some(v),
            _ => None,
        }
    }
}

/// What an operation did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// Ingest of these events (fresh ones, retries, deliberate duplicates), in order.
    Ingest {
        /// The events sent.
        events: Vec<EventIdx>,
        /// One answer per event, or why there is none.
        result: Outcome<Vec<Answer>>,
    },
    /// A linearizable count of one ad over the run's query range.
    Count {
        /// The ad's index.
        ad: u32,
        /// The count.
        result: Outcome<u64>,
        /// The node that answered and the applied index it answered at, when it said.
        #[serde(default)]
        served_by: Option<(u64, u64)>,
    },
    /// A linearizable top-N over the run's query range.
    Top {
        /// N.
        n: u32,
        /// `(ad id, count)` rows, as answered.
        result: Outcome<Vec<(String, u64)>>,
    },
}

/// One operation of one client process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// The client process (task) that ran it.
    pub process: u32,
    /// The node it was sent to, for clients pinned to one node; `None` for the routing
    /// client (it picks leaders itself).
    pub node: Option<u64>,
    /// When it was invoked, µs since the run started.
    pub invoked_us: u64,
    /// When its result arrived, µs since the run started.
    pub completed_us: u64,
    /// What it did and what came back.
    pub kind: OpKind,
}

/// A fault the nemesis injected, and when it was healed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fault {
    /// The nemesis' name (see `nemesis::Nemesis::name`).
    pub nemesis: String,
    /// What exactly was done, for a person.
    pub detail: String,
    /// Nodes that cannot acknowledge anything while the fault holds (a partition's
    /// minority side, a node cut off from hearing its peers); empty when there is none.
    pub minority: Vec<u64>,
    /// Whether writes must be refused altogether while it holds (a majority is down).
    pub no_quorum: bool,
    /// When the nemesis began injecting it, µs since the run started (a rolling restart
    /// takes a while).
    pub injected_us: u64,
    /// When it was fully in place, µs since the run started.
    pub start_us: u64,
    /// When its heal began, µs since the run started.
    pub heal_us: u64,
}

/// The header of a saved history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunInfo {
    /// The run's seed.
    pub seed: u64,
    /// The schedule, as `nemesis::Schedule::describe` prints it.
    pub schedule: String,
    /// The query range every read used, `[from_ms, to_ms)`.
    pub range_ms: (i64, i64),
}

/// A run's history, shared by every client task while the run goes on.
#[derive(Debug, Clone)]
pub struct Recorder {
    start: Instant,
    inner: Arc<Mutex<History>>,
}

/// Everything recorded; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// Every event made, indexed by [`EventIdx`].
    pub events: Vec<Event>,
    /// Every operation, in completion order.
    pub ops: Vec<Op>,
    /// Every fault, in order.
    pub faults: Vec<Fault>,
}

impl Recorder {
    /// An empty history whose clock starts now.
    pub fn new() -> Self {
        Recorder {
            start: Instant::now(),
            inner: Arc::new(Mutex::new(History::default())),
        }
    }

    /// µs since the run started.
    pub fn now_us(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, History> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a new event and returns its index.
    pub fn event(&self, event: Event) -> EventIdx {
        let mut h = self.lock();
        let idx = EventIdx::try_from(h.events.len()).expect("fewer than 2^32 events per run");
        h.events.push(event);
        idx
    }

    /// The event `idx`.
    pub fn get_event(&self, idx: EventIdx) -> Event {
        self.lock().events[idx as usize].clone()
    }

    /// Records a completed operation.
    pub fn op(&self, op: Op) {
        self.lock().ops.push(op);
    }

    /// Records a healed fault.
    pub fn fault(&self, fault: Fault) {
        self.lock().faults.push(fault);
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> History {
        self.lock().clone()
    }
}

impl Default for Recorder {
    fn default() -> Self {
        Recorder::new()
    }
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Line {
    Run(RunInfo),
    Event(Event),
    Op(Op),
    Fault(Fault),
}

impl History {
    /// Writes the history as JSON lines after a header (see the module docs).
    pub fn save(&self, info: &RunInfo, path: &Path) -> anyhow::Result<()> {
        let file =
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
        let mut w = std::io::BufWriter::new(file);
        let mut line = |l: &Line| -> anyhow::Result<()> {
            serde_json::to_writer(&mut w, l)?;
            w.write_all(b"\n")?;
            Ok(())
        };
        line(&Line::Run(info.clone()))?;
        for e in &self.events {
            line(&Line::Event(e.clone()))?;
        }
        for o in &self.ops {
            line(&Line::Op(o.clone()))?;
        }
        for f in &self.faults {
            line(&Line::Fault(f.clone()))?;
        }
        w.flush()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// Reads back a history written by [`History::save`].
    pub fn load(path: &Path) -> anyhow::Result<(RunInfo, History)> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut info = None;
        let mut h = History::default();
        for (n, l) in text.lines().enumerate() {
            match serde_json::from_str(l)
                .with_context(|| format!("{}:{}: not a history line", path.display(), n + 1))?
            {
                Line::Run(r) => info = Some(r),
                Line::Event(e) => h.events.push(e),
                Line::Op(o) => h.ops.push(o),
                Line::Fault(f) => h.faults.push(f),
            }
        }
        let info = info.with_context(|| format!("{} has no run header", path.display()))?;
        Ok((info, h))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_history_reads_back_the_same() {
        let rec = Recorder::new();
        let e = rec.event(Event {
            id: "e1".into(),
            ad: 3,
            event_time_ms: 1_700_000_000_000,
        });
        rec.op(Op {
            process: 1,
            node: Some(2),
            invoked_us: 5,
            completed_us: 9,
            kind: OpKind::Ingest {
                events: vec![e],
                result: Outcome::Ok(vec![Answer::Duplicate]),
            },
        });
        rec.op(Op {
            process: 2,
            node: None,
            invoked_us: 6,
            completed_us: 10,
            kind: OpKind::Top {
                n: 2,
                result: Outcome::Info("timeout".into()),
            },
        });
        rec.fault(Fault {
            nemesis: "pause".into(),
            detail: "SIGSTOP node 2".into(),
            minority: vec![],
            no_quorum: false,
            injected_us: 1,
            start_us: 1,
            heal_us: 2,
        });
        let info = RunInfo {
            seed: 7,
            schedule: "pause".into(),
            range_ms: (0, 60_000),
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("h.jsonl");
        let h = rec.snapshot();
        h.save(&info, &path).expect("saved");
        let (info2, h2) = History::load(&path).expect("loaded");
        assert_eq!(info2, info);
        assert_eq!(h2, h);
    }
}
