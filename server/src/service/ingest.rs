//! The write path: validate a batch, split it by shard, propose one Raft entry per group
//! (on this node when it leads the group, else forwarded once to the leader), and answer
//! every click with the outcome its group's apply decided.
//!
//! A batch is admitted only if the node's in-flight click budget has room (backpressure:
//! RESOURCE_EXHAUSTED with a retry hint instead of an unbounded queue). The request fails
//! as a whole if any group's part cannot be applied; parts that were applied answer
//! DUPLICATE on the retry, so retrying the whole batch with the same ids is always safe.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use adclick_proto::model::{Click, InvalidInput, Outcome};
use adclick_proto::wire::{self, grpc::IngestClient};
use adclick_storage::types::{Command, CommandResponse, IngestBatch};
use futures::future::try_join_all;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::group::{Group, Proposal};
use crate::node::{now_ms, Node};

/// How long a batch may wait for room in the in-flight budget before it is refused.
const ADMISSION_WAIT: Duration = Duration::from_millis(500);

/// Ingests `clicks`; `forwarded` is true when a peer sent them (they then all belong to
/// groups the peer believed this node leads, and are never forwarded again).
pub async fn ingest(
    node: &Arc<Node>,
    clicks: Vec<wire::Click>,
    forwarded: bool,
) -> Result<wire::IngestResponse> {
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
    let _permit = admit(budget, n).await?;

    // Validate each click on its own; group the valid ones by shard, keeping positions.
    let mut results: Vec<Option<Result<Outcome, InvalidInput>>> = Vec::with_capacity(n);
    let mut parts: BTreeMap<u64, (Vec<usize>, Vec<Click>)> = BTreeMap::new();
    for (i, w) in clicks.into_iter().enumerate() {
        match Click::try_from(w) {
            Ok(c) => {
                let g = node.group_of(&c.ad_id).id;
                let part = parts.entry(g).or_default();
                part.0.push(i);
                part.1.push(c);
                results.push(None);
            }
            Err(e) => results.push(Some(Err(e))),
        }
    }
    let answers = try_join_all(parts.into_iter().map(|(g, (positions, clicks))| {
        let node = Arc::clone(node);
        async move {
            let group = node.group(g)?.clone();
            let outcomes = write_part(&node, &group, clicks, forwarded).await?;
            Ok::<_, Error>((positions, outcomes))
        }
    }))
    .await?;
    for (positions, outcomes) in answers {
        if outcomes.len() != positions.len() {
            return Err(Error::Internal(format!(
                "a group answered {} outcomes for {} clicks",
                outcomes.len(),
                positions.len()
            )));
        }
        for (i, o) in positions.into_iter().zip(outcomes) {
            results[i] = Some(Ok(o));
        }
    }
    let resp = adclick_proto::convert::ingest_response(results.into_iter().map(|r| {
        // Every position was filled: invalid clicks above, valid ones by their group.
        r.unwrap_or(Err(InvalidInput::Missing { field: "outcome" }))
    }));
    if let Some(t) = &resp.tally {
        node.metrics.record_tally(&(*t).into());
    }
    Ok(resp)
}

/// Takes room for `n` clicks from `budget`, waiting briefly.
async fn admit(budget: &Arc<Semaphore>, n: usize) -> Result<tokio::sync::OwnedSemaphorePermit> {
    let n = u32::try_from(n).unwrap_or(u32::MAX);
    match tokio::time::timeout(ADMISSION_WAIT, Arc::clone(budget).acquire_many_owned(n)).await {
        Ok(Ok(p)) => Ok(p),
        Ok(Err(_)) => Err(Error::Unavailable("the node is shutting down".into())),
        Err(_) => Err(Error::Overloaded {
            message: "too many clicks in flight on this node".into(),
            retry_after: Duration::from_millis(200),
        }),
    }
}

/// Writes one group's part of a batch and returns its outcomes, in order.
async fn write_part(
    node: &Node,
    group: &Group,
    clicks: Vec<Click>,
    forwarded: bool,
) -> Result<Vec<Outcome>> {
    let leader = if group.is_leader() {
        None
    } else {
        Some(node.await_leader(group).await?)
    };
    let leader = match leader {
        Some(l) if l.node_id != node.id() => l,
        _ => {
            // This node leads (or just became leader): propose here. Should it have lost
            // the leadership meanwhile, the batch was not appended and the client retries.
            let cmd = Command::Ingest(IngestBatch {
                proposed_at_ms: now_ms(),
                clicks,
            });
            return match group.propose(cmd, node.request_timeout()).await? {
                Proposal::Applied(CommandResponse::Ingest(outcomes)) => Ok(outcomes),
                Proposal::Applied(other) => Err(Error::Internal(format!(
                    "group {} answered an ingest with {other:?}",
                    group.id
                ))),
                Proposal::NotLeader(leader) => Err(Error::NotLeader {
                    node: node.id(),
                    group: group.id,
                    leader,
                }),
            };
        }
    };
    if forwarded {
        return Err(Error::NotLeader {
            node: node.id(),
            group: group.id,
            leader: Some(leader),
        });
    }
    let mut client = IngestClient::new(node.peers.channel(leader.node_id, &leader.addr));
    let req = node.forwarded(wire::IngestRequest {
        clicks: clicks.iter().map(wire::Click::from).collect(),
    });
    let resp = client
        .ingest(req)
        .await
        .map_err(|s| Error::from_status(&s))?
        .into_inner();
    resp.results
        .iter()
        .map(|r| {
            Outcome::try_from(r).map_err(|e| {
                Error::Internal(format!("leader {} sent a bad result: {e}", leader.node_id))
            })
        })
        .collect()
}
