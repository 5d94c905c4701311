//! Property test: a random sequence of append / truncate / purge / commit / reopen on the
//! real log (with tiny segments, so every operation crosses segment boundaries) agrees
//! with a simple in-memory model after every step. Proptest prints the failing sequence
//! and its seed.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// Append this many entries, after raising the term by `term_bump`.
    Append {
        n: u8,
        term_bump: u8,
        clicks: u8,
    },
    /// Truncate after the entry this fraction into the unpurged log.
    Truncate {
        at: f64,
    },
    /// Purge up to this fraction of the log (fractions above 1 purge past the end).
    Purge {
        at: f64,
    },
    /// Commit everything stored.
    Commit,
    Reopen,
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1u8..6, 0u8..2, 0u8..12).prop_map(|(n, term_bump, clicks)| Op::Append { n, term_bump, clicks }),
        2 => (0.0f64..1.0).prop_map(|at| Op::Truncate { at }),
        2 => (0.0f64..1.3).prop_map(|at| Op::Purge { at }),
        1 => Just(Op::Commit),
        1 => Just(Op::Reopen),
    ]
}

/// What the log should hold.
#[derive(Debug, Default)]
struct Model {
    /// Every stored entry, purged or not (the raw store; nothing expires in this test).
    stored: BTreeMap<u64, LogId>,
    purged: Option<LogId>,
    committed: Option<LogId>,
    term: u64,
}

impl Model {
    fn live(&self) -> Vec<LogId> {
        let from = self.purged.map_or(0, |p| p.index + 1);
        self.stored.range(from..).map(|(_, id)| *id).collect()
    }

    fn last_log_id(&self) -> Option<LogId> {
        self.live().last().copied().or(self.purged)
    }

    fn next_index(&self) -> u64 {
        self.last_log_id().map_or(0, |l| l.index + 1)
    }
}

fn check(store: &LogStore, m: &Model) -> Result<(), TestCaseError> {
    prop_assert_eq!(ids(store), m.live());
    let st = store.log_state().expect("state");
    prop_assert_eq!(st.last_purged_log_id, m.purged);
    prop_assert_eq!(st.last_log_id, m.last_log_id());
    let readable = m.committed.map(|c| c.index).max(m.purged.map(|p| p.index));
    let want_raw: Vec<LogId> = match readable {
        Some(r) => m.stored.range(..=r).map(|(_, id)| *id).collect(),
        None => vec![],
    };
    prop_assert_eq!(raw_ids(store), want_raw);
    Ok(())
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut store = open(dir.path(), 700);
    let mut m = Model {
        term: 1,
        ..Model::default()
    };
    for op in ops {
        match op {
            Op::Append {
                n,
                term_bump,
                clicks,
            } => {
                m.term += u64::from(term_bump);
                let first = m.next_index();
                let entries: Vec<Entry> = (first..first + u64::from(n))
                    .map(|i| {
                        if clicks == 0 {
                            blank(m.term, i)
                        } else {
                            ingest(m.term, i, usize::from(clicks))
                        }
                    })
                    .collect();
                for e in &entries {
                    m.stored.insert(e.log_id.index, e.log_id);
                }
                append(&store, entries);
            }
            Op::Truncate { at } => {
                let live = m.live();
                if live.is_empty() {
                    continue;
                }
                // Keep `k` unpurged entries.
                let k = ((live.len() as f64) * at) as usize;
                let last = if k == 0 { m.purged } else { Some(live[k - 1]) };
                store.shared.truncate_after(last).expect("truncate");
                let from = last.map_or(0, |l| l.index + 1);
                m.stored.retain(|&i, _| i < from);
                // Raft never truncates committed entries; neither does the model.
                if m.committed.is_some_and(|c| c.index >= from) {
                    m.committed = last;
                    store.shared.save_committed(last).expect("commit");
                }
            }
            Op::Purge { at } => {
                let end = m.next_index();
                let index = ((end as f64) * at) as u64;
                if m.purged.is_some_and(|p| p.index >= index) {
                    continue;
                }
                let pid = match m.stored.get(&index) {
                    Some(id) => *id,
                    // Past the end: a snapshot from the current leader. Stored entries not
                    // known committed may be a deposed leader's: the log drops them.
                    None if index >= end => {
                        let known = m.committed.max(m.purged).map(|c| c.index);
                        m.stored.retain(|&i, _| known.is_some_and(|k| i <= k));
                        id(m.term, index)
                    }
                    None => continue,
                };
                store.shared.purge(pid).expect("purge");
                m.purged = Some(pid);
                if m.committed.is_none_or(|c| c.index < pid.index) {
                    m.committed = Some(pid);
                    store.shared.save_committed(Some(pid)).expect("commit");
                }
            }
            Op::Commit => {
                let last = m.last_log_id();
                store.shared.save_committed(last).expect("commit");
                m.committed = last;
            }
            Op::Reopen => {
                drop(store);
                store = open(dir.path(), 700);
                prop_assert_eq!(store.shared.read().expect("lock").committed, m.committed);
            }
        }
        check(&store, &m)?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn the_log_matches_a_simple_model(ops in proptest::collection::vec(arb_op(), 1..40)) {
        run(ops)?;
    }
}
