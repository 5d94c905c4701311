//! openraft's messages ⇄ the `adclick.v1.Raft` wire messages.
//!
//! Log entries cross the wire as opaque bytes in the storage engine's entry encoding
//! (`adclick_storage::codec`), so the transport never re-encodes commands. Everything that
//! comes off the wire is checked: a malformed message is a [`Malformed`] error, never a
//! panic.

use std::collections::{BTreeMap, BTreeSet};

use adclick_proto::wire;
use adclick_storage::codec;
use adclick_storage::types::{log_id, Entry, LogId, SnapshotMeta, StoredMembership, Vote};
use openraft::raft::{AppendEntriesRequest, VoteRequest, VoteResponse};
use openraft::type_config::alias::LeaderIdOf;
use openraft::{BasicNode, Membership};

use adclick_storage::types::TypeConfig;

/// A wire message that cannot be turned into openraft's type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed raft message: {0}")]
pub struct Malformed(pub String);

/// Wire log id of an openraft log id.
pub fn log_id_to_wire(id: &LogId) -> wire::LogId {
    wire::LogId {
        term: id.leader_id.term,
        node_id: id.leader_id.node_id,
        index: id.index,
    }
}

/// openraft log id of a wire log id.
pub fn log_id_from_wire(id: &wire::LogId) -> LogId {
    log_id(id.term, id.node_id, id.index)
}

fn opt_log_id_to_wire(id: Option<&LogId>) -> Option<wire::LogId> {
    id.map(log_id_to_wire)
}

fn opt_log_id_from_wire(id: Option<&wire::LogId>) -> Option<LogId> {
    id.map(log_id_from_wire)
}

/// Wire vote of an openraft vote.
pub fn vote_to_wire(v: &Vote) -> wire::Vote {
    wire::Vote {
        term: v.leader_id.term,
        node_id: v.leader_id.node_id,
        committed: v.committed,
    }
}

/// openraft vote of a wire vote (required field).
pub fn vote_from_wire(v: Option<&wire::Vote>) -> Result<Vote, Malformed> {
    let v = v.ok_or_else(|| Malformed("missing vote".into()))?;
    Ok(Vote {
        leader_id: LeaderIdOf::<TypeConfig> {
            term: v.term,
            node_id: v.node_id,
        },
        committed: v.committed,
    })
}

/// Wire vote request.
pub fn vote_request_to_wire(group_id: u64, r: &VoteRequest<TypeConfig>) -> wire::VoteRequest {
    wire::VoteRequest {
        group_id,
        vote: Some(vote_to_wire(&r.vote)),
        last_log_id: opt_log_id_to_wire(r.last_log_id.as_ref()),
        leadership_transfer: r.leadership_transfer,
    }
}

/// openraft vote request.
pub fn vote_request_from_wire(r: &wire::VoteRequest) -> Result<VoteRequest<TypeConfig>, Malformed> {
    Ok(VoteRequest {
        vote: vote_from_wire(r.vote.as_ref())?,
        last_log_id: opt_log_id_from_wire(r.last_log_id.as_ref()),
        leadership_transfer: r.leadership_transfer,
    })
}

/// Wire vote response.
pub fn vote_response_to_wire(group_id: u64, r: &VoteResponse<TypeConfig>) -> wire::VoteResponse {
    wire::VoteResponse {
        group_id,
        vote: Some(vote_to_wire(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_to_wire(r.last_log_id.as_ref()),
    }
}

/// openraft vote response.
pub fn vote_response_from_wire(
    r: &wire::VoteResponse,
) -> Result<VoteResponse<TypeConfig>, Malformed> {
    Ok(VoteResponse {
        vote: vote_from_wire(r.vote.as_ref())?,
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_from_wire(r.last_log_id.as_ref()),
    })
}

/// Wire append request; entries are encoded with the storage codec.
pub fn append_request_to_wire(
    group_id: u64,
    r: &AppendEntriesRequest<TypeConfig>,
) -> wire::AppendRequest {
    let entries = r
        .entries
        .iter()
        .map(|e| {
            let mut buf = Vec::new();
            codec::encode_entry(e, &mut buf);
            bytes::Bytes::from(buf)
        })
        .collect();
    wire::AppendRequest {
        group_id,
        vote: Some(vote_to_wire(&r.vote)),
        prev_log_id: opt_log_id_to_wire(r.prev_log_id.as_ref()),
        entries,
        leader_commit: opt_log_id_to_wire(r.leader_commit.as_ref()),
    }
}

/// openraft append request; decodes every entry.
pub fn append_request_from_wire(
    r: &wire::AppendRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, Malformed> {
    let entries = r
        .entries
        .iter()
        .map(|b| codec::decode_entry(b).map_err(|e| Malformed(format!("entry: {e}"))))
        .collect::<Result<Vec<Entry>, _>>()?;
    let vote = vote_from_wire(r.vote.as_ref())?;
    let prev_log_id = opt_log_id_from_wire(r.prev_log_id.as_ref());
    // openraft trusts its peers: reject what no honest leader sends before it gets there.
    let mut next = prev_log_id.map_or(Some(0), |p| p.index.checked_add(1));
    for e in &entries {
        if Some(e.log_id.index) != next {
            return Err(Malformed(format!(
                "entries not consecutive after {prev_log_id:?}: got index {}",
                e.log_id.index
            )));
        }
        if e.log_id.leader_id.term > vote.leader_id.term {
            return Err(Malformed(format!(
                "entry {} of term {} is newer than the sender's vote (term {})",
                e.log_id.index, e.log_id.leader_id.term, vote.leader_id.term
            )));
        }
        next = e.log_id.index.checked_add(1);
    }
    Ok(AppendEntriesRequest {
        vote,
        prev_log_id,
        entries,
        leader_commit: opt_log_id_from_wire(r.leader_commit.as_ref()),
    })
}

/// The outcome of one append, as the stream carries it.
pub type StreamResult = openraft::raft::StreamAppendResult<TypeConfig>;

/// Wire append response of an openraft stream-append result.
pub fn append_result_to_wire(group_id: u64, r: &StreamResult) -> wire::AppendResponse {
    use openraft::raft::StreamAppendError;
    use wire::append_response::Result as R;
    let result = match r {
        Ok(last) => R::Accepted(wire::AppendAccepted {
            last_log_id: opt_log_id_to_wire(last.as_ref()),
        }),
        Err(StreamAppendError::Conflict(id)) => R::Conflict(log_id_to_wire(id)),
        Err(StreamAppendError::HigherVote(v)) => R::HigherVote(vote_to_wire(v)),
    };
    wire::AppendResponse {
        group_id,
        result: Some(result),
    }
}

/// openraft stream-append result of a wire append response.
pub fn append_result_from_wire(r: &wire::AppendResponse) -> Result<StreamResult, Malformed> {
    use openraft::raft::StreamAppendError;
    use wire::append_response::Result as R;
    match &r.result {
        Some(R::Accepted(a)) => Ok(Ok(opt_log_id_from_wire(a.last_log_id.as_ref()))),
        Some(R::Conflict(id)) => Ok(Err(StreamAppendError::Conflict(log_id_from_wire(id)))),
        Some(R::HigherVote(v)) => Ok(Err(StreamAppendError::HigherVote(vote_from_wire(Some(v))?))),
        None => Err(Malformed("append response without a result".into())),
    }
}

/// Wire membership.
pub fn membership_to_wire(m: &Membership<u64, BasicNode>) -> wire::Membership {
    wire::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|c| wire::NodeIdSet {
                node_ids: c.iter().copied().collect(),
            })
            .collect(),
        nodes: m
            .nodes()
            .map(|(id, n)| wire::NodeAddr {
                node_id: *id,
                addr: n.addr.clone(),
            })
            .collect(),
    }
}

/// openraft membership of a wire membership.
pub fn membership_from_wire(m: &wire::Membership) -> Result<Membership<u64, BasicNode>, Malformed> {
    let configs: Vec<BTreeSet<u64>> = m
        .configs
        .iter()
        .map(|c| c.node_ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, BasicNode> = m
        .nodes
        .iter()
        .map(|n| (n.node_id, BasicNode::new(&n.addr)))
        .collect();
    Membership::new(configs, nodes).map_err(|e| Malformed(format!("membership: {e}")))
}

/// Wire snapshot meta.
pub fn snapshot_meta_to_wire(
    vote: &Vote,
    meta: &SnapshotMeta,
    size_bytes: u64,
) -> wire::SnapshotMeta {
    wire::SnapshotMeta {
        vote: Some(vote_to_wire(vote)),
        last_log_id: opt_log_id_to_wire(meta.last_log_id.as_ref()),
        last_membership_log_id: opt_log_id_to_wire(meta.last_membership.log_id().as_ref()),
        last_membership: Some(membership_to_wire(meta.last_membership.membership())),
        snapshot_id: meta
            .last_log_id
            .map_or_else(|| "empty".to_owned(), |l| l.to_string()),
        size_bytes,
    }
}

/// The vote and openraft snapshot meta of a wire snapshot meta.
pub fn snapshot_meta_from_wire(m: &wire::SnapshotMeta) -> Result<(Vote, SnapshotMeta), Malformed> {
    let vote = vote_from_wire(m.vote.as_ref())?;
    let membership = match &m.last_membership {
        Some(mm) => membership_from_wire(mm)?,
        None => return Err(Malformed("snapshot meta without a membership".into())),
    };
    // openraft asserts on a snapshot that claims entries newer than its sender's vote.
    if let Some(last) = &m.last_log_id {
        if last.term > vote.leader_id.term {
            return Err(Malformed(format!(
                "snapshot ends at term {} beyond the sender's vote (term {})",
                last.term, vote.leader_id.term
            )));
        }
    }
    let meta = SnapshotMeta {
        last_log_id: opt_log_id_from_wire(m.last_log_id.as_ref()),
        last_membership: StoredMembership::new(
            opt_log_id_from_wire(m.last_membership_log_id.as_ref()),
            membership,
        ),
    };
    Ok((vote, meta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use adclick_storage::types::{Command, IngestBatch};
    use openraft::EntryPayload;

    fn vote(term: u64, node: u64, committed: bool) -> Vote {
        Vote {
            leader_id: LeaderIdOf::<TypeConfig> {
                term,
                node_id: node,
            },
            committed,
        }
    }

    #[test]
    fn append_request_round_trips_entries_and_ids() {
        let req = AppendEntriesRequest::<TypeConfig> {
            vote: vote(3, 2, true),
            prev_log_id: Some(log_id(2, 1, 9)),
            entries: vec![
                Entry {
                    log_id: log_id(3, 2, 10),
                    payload: EntryPayload::Blank,
                },
                Entry {
                    log_id: log_id(3, 2, 11),
                    payload: EntryPayload::Normal(Command::Ingest(IngestBatch {
                        proposed_at_ms: 5,
                        clicks: vec![],
                    })),
                },
            ],
            leader_commit: Some(log_id(3, 2, 10)),
        };
        let back = append_request_from_wire(&append_request_to_wire(7, &req)).expect("decodes");
        assert_eq!(back.vote, req.vote);
        assert_eq!(back.prev_log_id, req.prev_log_id);
        assert_eq!(back.leader_commit, req.leader_commit);
        assert_eq!(back.entries, req.entries);
    }

    #[test]
    fn malformed_messages_are_errors_not_panics() {
        let mut w = append_request_to_wire(
            1,
            &AppendEntriesRequest::<TypeConfig> {
                vote: vote(1, 1, true),
                prev_log_id: None,
                entries: vec![],
                leader_commit: None,
            },
        );
        w.entries
            .push(bytes::Bytes::from_static(&[0xff, 0x00, 0x13]));
        assert!(append_request_from_wire(&w).is_err());
        w.vote = None;
        w.entries.clear();
        assert!(append_request_from_wire(&w).is_err());
        assert!(append_result_from_wire(&wire::AppendResponse {
            group_id: 1,
            result: None
        })
        .is_err());
        // Entries must follow prev_log_id one by one and be no newer than the vote.
        let mut gap = append_request_to_wire(
            1,
            &AppendEntriesRequest::<TypeConfig> {
                vote: vote(2, 1, true),
                prev_log_id: Some(log_id(1, 1, 4)),
                entries: vec![Entry {
                    log_id: log_id(2, 1, 6),
                    payload: EntryPayload::Blank,
                }],
                leader_commit: None,
            },
        );
        assert!(append_request_from_wire(&gap).is_err(), "a hole after prev");
        gap.vote = Some(vote_to_wire(&vote(1, 1, true)));
        gap.prev_log_id = Some(log_id_to_wire(&log_id(1, 1, 5)));
        assert!(
            append_request_from_wire(&gap).is_err(),
            "an entry newer than the vote"
        );
        let bad = wire::Membership {
            configs: vec![wire::NodeIdSet { node_ids: vec![4] }],
            nodes: vec![],
        };
        assert!(membership_from_wire(&bad).is_err());
    }

    #[test]
    fn snapshot_meta_round_trips() {
        let nodes: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|i| (i, BasicNode::new(format!("h:{i}"))))
            .collect();
        let m = Membership::new(vec![(1..=3).collect()], nodes).expect("membership");
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(4, 1, 100)),
            last_membership: StoredMembership::new(Some(log_id(1, 1, 0)), m),
        };
        let v = vote(4, 1, true);
        let (v2, meta2) =
            snapshot_meta_from_wire(&snapshot_meta_to_wire(&v, &meta, 10)).expect("decodes");
        assert_eq!(v2, v);
        assert_eq!(meta2, meta);

        let mut w = snapshot_meta_to_wire(&v, &meta, 10);
        w.vote = Some(vote_to_wire(&vote(3, 1, true)));
        assert!(snapshot_meta_from_wire(&w).is_err(), "ends beyond the vote");
        let mut w = snapshot_meta_to_wire(&v, &meta, 10);
        w.last_membership = None;
        assert!(snapshot_meta_from_wire(&w).is_err(), "no membership");
    }
}
