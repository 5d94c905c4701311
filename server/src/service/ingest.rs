//! The write path: split a batch by shard, propose one Raft entry per group (on this node
//! when it leads the group, else forwarded once, untouched, to the leader), and answer
//! every click with the outcome its group's apply decided. The proposing node validates
//! each click on its own: an invalid one is answered REJECTED/INVALID and never reaches the
//! log, the rest of the batch goes on.
//!
//! A batch is admitted only if the node's in-flight click budget has room (backpressure:
//! RESOURCE_EXHAUSTED with a retry hint instead of an unbounded queue). The request fails
//! as a whole if any group's part cannot be applied; parts that were applied answer
//! DUPLICATE on the retry, so retrying the whole batch with the same ids is always safe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use adclick_proto::model::{shard_key, Click, Outcome, Tally};
use adclick_proto::wire::{self, grpc::IngestClient};
use adclick_storage::types::{Command, CommandResponse, IngestBatch};
use futures::future::try_join_all;

use crate::error::{Error, Result};
use crate::group::{Group, Proposal};
use crate::node::{group_of_key, now_ms, Node};

/// How long a batch may wait for room in the in-flight budget before it is refused.
const ADMISSION_WAIT: Duration = Duration::from_millis(500);

/// Who sent a batch, which decides whether this node forwards the parts it does not lead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A client that leaves routing to the cluster: parts for groups led elsewhere are
    /// forwarded once to their leaders.
    Client,
    /// A routing client (one that sent `x-adclick-shard-map-version`): it sent the batch to
    /// the node it believes leads the batch's group, so a part this node does not lead is
    /// answered `UNAVAILABLE` with the leader hint, and the client goes there itself next
    /// time instead of paying a forwarding hop on every batch.
    RoutedClient,
    /// A peer forwarding a client's part: never forwarded again.
    Peer,
}

/// Ingests `clicks` sent by `origin`.
pub async fn ingest(
    node: &Arc<Node>,
    clicks: Vec<wire::Click>,
    origin: Origin,
) -> Result<wire::IngestResponse> {
    let forwarded = origin == Origin::Peer;
    let n = clicks.len();
    if n == 0 {
        return Ok(adclick_proto::convert::ingest_response(std::iter::empty()));
    }
    if n > node.config.max_batch_clicks {
        return Err(Error::InvalidArgument(format!(
            "a batch holds at most {} clicks; this one has {n}: split it",
            node.config.max_batch_clicks
        )));
    }
    let budget = if forwarded {
        &node.forward_budget
    } else {
        &node.client_budget
    };
    let _permit = Node::admit(
        budget,
        n,
        ADMISSION_WAIT,
        || "too many clicks in flight on this node".into(),
        Duration::from_millis(200),
    )
    .await?;

    // Route each click by its ad id as sent (valid or not): the node that proposes a
    // group's part validates it, so a forwarded part travels exactly as the client sent it.
    let groups = node.config.groups;
    let mut parts: BTreeMap<u64, (Vec<usize>, Vec<wire::Click>)> = BTreeMap::new();
    for (i, w) in clicks.into_iter().enumerate() {
        let g = group_of_key(shard_key(w.ad_id.as_bytes()), groups);
        let part = parts.entry(g).or_default();
        part.0.push(i);
        part.1.push(w);
    }
    let answers = try_join_all(parts.into_iter().map(|(g, (positions, clicks))| {
        let node = Arc::clone(node);
        async move {
            let group = node.group(g)?.clone();
            let results = write_part(&node, &group, clicks, origin).await?;
            Ok::<_, Error>((positions, results))
        }
    }))
    .await?;
    let mut results = vec![wire::EventResult::default(); n];
    let mut tally = Tally::default();
    for (positions, part) in answers {
        if part.len() != positions.len() {
            return Err(Error::Internal(format!(
                "a group answered {} results for {} clicks",
                part.len(),
                positions.len()
            )));
        }
        for (i, r) in positions.into_iter().zip(part) {
            let outcome = Outcome::try_from(&r)
                .map_err(|e| Error::Internal(format!("a group sent a bad result: {e}")))?;
            tally.add(outcome);
            results[i] = r;
        }
    }
    if !forwarded {
        // A forwarded part is counted by the node that coordinated its batch.
        node.metrics.record_tally(&tally);
    }
    Ok(wire::IngestResponse {
        results,
        tally: Some(tally.into()),
    })
}

/// Writes one group's part of a batch and returns its results, in order: proposed here
/// when this node leads the group (validating each click; invalid ones are answered
/// without reaching the log), else forwarded once, as sent, to the leader (only for an
/// [`Origin::Client`] batch; the others are told where the leader is).
async fn write_part(
    node: &Node,
    group: &Arc<Group>,
    clicks: Vec<wire::Click>,
    origin: Origin,
) -> Result<Vec<wire::EventResult>> {
    let leader = if group.is_leader() {
        None
    } else {
        Some(node.await_leader(group).await?)
    };
    let leader = match leader {
        Some(l) if l.node_id != node.id() => l,
        _ => return propose_part(node, group, clicks).await,
    };
    if origin != Origin::Client {
        return Err(Error::NotLeader {
            node: node.id(),
            group: group.id,
            leader: Some(leader),
        });
    }
    let mut client = IngestClient::new(node.peers.channel(leader.node_id, &leader.addr))
        .max_decoding_message_size(MAX_FORWARD_RESPONSE);
    let req = node.forwarded(wire::IngestRequest { clicks });
    let resp = client
        .ingest(req)
        .await
        .map_err(|s| forward_error(&s))?
        .into_inner();
    Ok(resp.results)
}

/// Largest answer a leader sends to a forwarded part (one result per click, with room for
/// a rejection message each).
const MAX_FORWARD_RESPONSE: usize = 64 << 20;

/// What a failed forwarded part means for the client. Only answers that say the leader
/// refused the part before proposing it keep their meaning; anything else (a transport
/// failure, a reset stream, an answer that does not decode) leaves the outcome unknown,
/// which the client must hear as "retry with the same ids", never as "fix the request".
fn forward_error(s: &tonic::Status) -> Error {
    use tonic::Code;
    match s.code() {
        Code::InvalidArgument
        | Code::NotFound
        | Code::ResourceExhausted
        | Code::DeadlineExceeded
        | Code::Unavailable => Error::from_status(s),
        code => Error::Unavailable(format!(
            "forwarding to the group leader failed ({code:?}: {}); the clicks may or may not \
             have been applied: retry with the same event ids",
            s.message()
        )),
    }
}

/// Validates a part and proposes its valid clicks as one entry on this node, the group's
/// leader. Should it have lost the leadership meanwhile, nothing was appended and the
/// client retries.
async fn propose_part(
    node: &Node,
    group: &Arc<Group>,
    clicks: Vec<wire::Click>,
) -> Result<Vec<wire::EventResult>> {
    let mut results: Vec<Option<wire::EventResult>> = Vec::with_capacity(clicks.len());
    let mut valid = Vec::with_capacity(clicks.len());
    for w in clicks {
        match Click::try_from(w) {
            Ok(c) => {
                valid.push(c);
                results.push(None);
            }
            Err(e) => results.push(Some(wire::EventResult::from(&e))),
        }
    }
    let expected = valid.len();
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        let cmd = Command::Ingest(IngestBatch {
            proposed_at_ms: proposed_at_ms(node),
            clicks: valid,
        });
        match propose(node, group, cmd, expected).await? {
            Proposal::Applied(CommandResponse::Ingest(outcomes)) => outcomes,
            Proposal::Applied(other) => {
                return Err(Error::Internal(format!(
                    "group {} answered an ingest with {other:?}",
                    group.id
                )))
            }
            Proposal::NotLeader(leader) => {
                return Err(Error::NotLeader {
                    node: node.id(),
                    group: group.id,
                    leader,
                })
            }
        }
    };
    if outcomes.len() != expected {
        return Err(Error::Internal(format!(
            "group {} answered {} outcomes for {expected} clicks",
            group.id,
            outcomes.len()
        )));
    }
    let mut outcomes = outcomes.into_iter();
    results
        .into_iter()
        .map(|r| match r {
            Some(rejected) => Ok(rejected),
            None => outcomes
                .next()
                .map(wire::EventResult::from)
                .ok_or_else(|| Error::Internal("outcomes ran out".into())),
        })
        .collect()
}

/// The time this leader stamps on an ingest entry: its clock, plus the clock-skew fault
/// of a `fault-injection` build (the only place the skew applies).
fn proposed_at_ms(node: &Node) -> i64 {
    #[cfg(feature = "fault-injection")]
    return now_ms().saturating_add(node.faults.clock_skew_ms());
    #[cfg(not(feature = "fault-injection"))]
    {
        let _ = node;
        now_ms()
    }
}

/// Proposes an ingest entry of `clicks` clicks and waits for its apply; with the
/// ack-before-commit fault, answers at once instead.
async fn propose(node: &Node, group: &Arc<Group>, cmd: Command, clicks: usize) -> Result<Proposal> {
    #[cfg(feature = "fault-injection")]
    if node.faults.ack_before_commit() {
        return Ok(crate::fault::propose_without_waiting(
            group,
            cmd,
            node.request_timeout(),
            clicks,
        ));
    }
    let _ = clicks;
    group.propose(cmd, node.request_timeout()).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::{Code, Status};

    #[test]
    fn an_ambiguous_forwarding_failure_says_retry() {
        // Refusals before proposing keep their meaning.
        for code in [
            Code::InvalidArgument,
            Code::ResourceExhausted,
            Code::Unavailable,
        ] {
            let e = forward_error(&Status::new(code, "refused"));
            assert_eq!(
                Status::from(e).code(),
                code,
                "{code:?} is the leader's own answer"
            );
        }
        // A reset stream, an undecodable or oversized answer: the part may have been
        // applied, so the client must retry with the same ids, never "fix the request".
        for code in [
            Code::Internal,
            Code::OutOfRange,
            Code::Unknown,
            Code::DataLoss,
        ] {
            let status = Status::from(forward_error(&Status::new(code, "h2 reset")));
            assert_eq!(status.code(), Code::Unavailable, "{code:?}");
            assert!(status.message().contains("retry with the same event ids"));
        }
    }
}
