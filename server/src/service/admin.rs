//! Administration: cluster status, the filter registry, leader transfer and the shard map.
//!
//! The filter registry lives in the metadata group (group 0): a create or drop is
//! committed there first (forwarded to its leader), then every data group's leader
//! carries it into its own log (`Node::reconcile_filters`), and the call returns once
//! every data-group replica on the answering node has applied it. A filter counts the
//! clicks applied after its registration in each group; earlier clicks are not
//! backfilled in this release (state `FORWARD_ONLY`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use adclick_proto::filter::{Filter, FilterName};
use adclick_proto::wire::{self, grpc::AdminClient};
use adclick_storage::types::{Command, CommandResponse, FilterDef};
use openraft::ServerState;

use crate::error::{Error, Result};
use crate::group::{Group, Proposal};
use crate::node::{Node, META_GROUP, SHARD_MAP_VERSION};

/// How long after its last successful call a peer still counts as serving.
const PEER_FRESH: Duration = Duration::from_secs(3);

/// The cluster as this node sees it.
pub fn cluster_status(node: &Node) -> wire::ClusterStatusResponse {
    let now = Instant::now();
    let wall = crate::node::now_ms();
    let nodes = node
        .config
        .peers
        .iter()
        .map(|(id, addr)| {
            let seen = node.peers.seen(*id);
            let (health, last_seen_ms) = if *id == node.id() {
                (wire::NodeHealth::Serving, Some(wall))
            } else {
                let ago = seen.ok.map(|t| now.saturating_duration_since(t));
                let fresh = ago.is_some_and(|a| a < PEER_FRESH);
                let failed_later = matches!((seen.failed, seen.ok), (Some(f), Some(o)) if f > o)
                    || (seen.failed.is_some() && seen.ok.is_none());
                let health = if fresh && !failed_later {
                    wire::NodeHealth::Serving
                } else if seen.failed.is_some() {
                    wire::NodeHealth::Unreachable
                } else {
                    wire::NodeHealth::Unknown
                };
                let ms = ago.map(|a| wall - i64::try_from(a.as_millis()).unwrap_or(i64::MAX));
                (health, ms)
            };
            wire::NodeStatus {
                node: Some(wire::NodeAddr {
                    node_id: *id,
                    addr: addr.clone(),
                }),
                health: health.into(),
                last_seen_ms,
            }
        })
        .collect();
    let groups = node.groups().map(|g| group_status(node, g)).collect();
    wire::ClusterStatusResponse {
        node_id: node.id(),
        nodes,
        groups,
        shard_map_version: SHARD_MAP_VERSION,
    }
}

fn group_status(node: &Node, g: &Group) -> wire::GroupStatus {
    let m = g.metrics();
    let membership = m.membership_config.membership();
    let voters: Vec<u64> = membership.voter_ids().collect();
    let matched = m.replication.as_ref();
    let last_log = m.last_log_index.unwrap_or(0);
    let members = membership
        .nodes()
        .map(|(id, _)| {
            let role = if voters.contains(id) {
                wire::MemberRole::Voter
            } else {
                wire::MemberRole::Learner
            };
            let matched_index = if *id == node.id() && m.state == ServerState::Leader {
                m.last_log_index
            } else {
                matched
                    .and_then(|r| r.get(id))
                    .map(|l| l.map_or(0, |l| l.index))
            };
            wire::GroupMember {
                node_id: *id,
                role: role.into(),
                matched_index,
            }
        })
        .collect();
    let committed = m.local_committed.map_or(0, |c| c.index);
    let applied = m.last_applied.map_or(0, |a| a.index);
    wire::GroupStatus {
        group_id: g.id,
        key_range: (g.id != META_GROUP).then(|| wire::KeyRange::of_group(g.id, node.config.groups)),
        leader_id: m.current_leader,
        term: m.current_term,
        members,
        committed_index: committed,
        applied_index: applied,
        commit_lag: last_log.saturating_sub(committed),
        apply_lag: committed.saturating_sub(applied),
        watermark_ms: if g.id == META_GROUP {
            None
        } else {
            g.reader.watermark_ms().ok().flatten()
        },
        reported_by: node.id(),
    }
}

/// The shard map with the leaders this node knows.
pub fn shard_map(node: &Node) -> wire::ShardMap {
    let groups = node
        .data_groups()
        .map(|g| {
            let m = g.metrics();
            let members = m
                .membership_config
                .membership()
                .nodes()
                .map(|(id, n)| wire::NodeAddr {
                    node_id: *id,
                    addr: n.addr.clone(),
                })
                .collect();
            wire::ShardRoute {
                group_id: g.id,
                key_range: Some(wire::KeyRange::of_group(g.id, node.config.groups)),
                leader: g.leader().map(wire::NodeAddr::from),
                members,
            }
        })
        .collect();
    wire::ShardMap {
        version: SHARD_MAP_VERSION,
        groups,
    }
}

fn filter_info(name: String, expr: String) -> wire::FilterInfo {
    wire::FilterInfo {
        name,
        expr,
        state: wire::FilterState::ForwardOnly.into(),
        created_at_ms: 0,
    }
}

/// Registers a filter (idempotent for the same name and expression).
pub async fn create_filter(
    node: &Arc<Node>,
    req: wire::CreateFilterRequest,
    forwarded: bool,
) -> Result<wire::CreateFilterResponse> {
    let name = FilterName::new(&req.name).map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let expr = Filter::parse(&req.expr)
        .map_err(|e| Error::InvalidArgument(format!("filter expression: {e}")))?
        .to_string();
    let name = name.as_str().to_owned();
    let meta = node.group(META_GROUP)?;
    let cmd = Command::CreateFilter(FilterDef {
        name: name.clone(),
        expr: expr.clone(),
    });
    let answer = propose_meta(
        node,
        meta,
        cmd,
        forwarded,
        |mut c, r| async move { c.create_filter(r).await },
        wire::CreateFilterRequest {
            name: name.clone(),
            expr: expr.clone(),
        },
    )
    .await?;
    if let Answered::Here(resp) = answer {
        match resp {
            CommandResponse::FilterCreated { .. } => {}
            CommandResponse::Refused(why) => {
                let same = meta
                    .reader
                    .filters()?
                    .iter()
                    .any(|f| f.name == name && f.expr == expr);
                if !same {
                    return Err(Error::AlreadyExists(why));
                }
            }
            other => {
                return Err(Error::Internal(format!(
                    "the metadata group answered a filter creation with {other:?}"
                )))
            }
        }
    }
    let (n, e) = (name.clone(), expr.clone());
    await_data_groups(node, move |filters| {
        filters.iter().any(|f| f.name == n && f.expr == e)
    })
    .await?;
    Ok(wire::CreateFilterResponse {
        filter: Some(filter_info(name, expr)),
    })
}

/// Drops a filter (idempotent).
pub async fn drop_filter(
    node: &Arc<Node>,
    req: wire::DropFilterRequest,
    forwarded: bool,
) -> Result<wire::DropFilterResponse> {
    let name = FilterName::new(&req.name)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?
        .as_str()
        .to_owned();
    let meta = node.group(META_GROUP)?;
    let answer = propose_meta(
        node,
        meta,
        Command::DropFilter { name: name.clone() },
        forwarded,
        |mut c, r| async move { c.drop_filter(r).await },
        wire::DropFilterRequest { name: name.clone() },
    )
    .await?;
    let existed = match answer {
        Answered::Here(CommandResponse::FilterDropped { existed }) => existed,
        Answered::There(resp) => resp.existed,
        Answered::Here(other) => {
            return Err(Error::Internal(format!(
                "the metadata group answered a filter drop with {other:?}"
            )))
        }
    };
    let n = name.clone();
    await_data_groups(node, move |filters| !filters.iter().any(|f| f.name == n)).await?;
    Ok(wire::DropFilterResponse { existed })
}

/// Lists the registered filters (linearizable on the metadata group).
pub async fn list_filters(node: &Arc<Node>) -> Result<wire::ListFiltersResponse> {
    let meta = node.group(META_GROUP)?;
    node.read_barrier(meta).await?;
    let filters = meta
        .reader
        .filters()?
        .into_iter()
        .map(|f| filter_info(f.name, f.expr))
        .collect();
    Ok(wire::ListFiltersResponse { filters })
}

/// Who answered a metadata change.
enum Answered<T> {
    /// This node leads the metadata group: the state machine's answer.
    Here(CommandResponse),
    /// The leader did, through the forwarded admin call.
    There(T),
}

/// Proposes `cmd` to the metadata group here if this node leads it, else forwards the
/// admin call `forward` (with `req`) to its leader.
async fn propose_meta<R, T, F, Fut>(
    node: &Arc<Node>,
    meta: &Group,
    cmd: Command,
    forwarded: bool,
    forward: F,
    req: R,
) -> Result<Answered<T>>
where
    F: FnOnce(AdminClient<tonic::transport::Channel>, tonic::Request<R>) -> Fut,
    Fut: std::future::Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
{
    let leader = node.await_leader(meta).await?;
    if leader.node_id == node.id() {
        match meta.propose(cmd, node.request_timeout()).await? {
            Proposal::Applied(r) => return Ok(Answered::Here(r)),
            Proposal::NotLeader(hint) => {
                return Err(Error::NotLeader {
                    node: node.id(),
                    group: META_GROUP,
                    leader: hint,
                })
            }
        }
    }
    if forwarded {
        return Err(Error::NotLeader {
            node: node.id(),
            group: META_GROUP,
            leader: Some(leader),
        });
    }
    let client = AdminClient::new(node.peers.channel(leader.node_id, &leader.addr));
    let resp = forward(client, node.forwarded(req))
        .await
        .map_err(|s| Error::from_status(&s))?;
    Ok(Answered::There(resp.into_inner()))
}

/// Waits until every data-group replica on this node satisfies `done` (bounded).
async fn await_data_groups<F>(node: &Arc<Node>, done: F) -> Result<()>
where
    F: Fn(&[adclick_storage::sm::FilterInfo]) -> bool,
{
    let deadline = Instant::now() + node.request_timeout();
    loop {
        let mut all = true;
        for g in node.data_groups() {
            if !done(&g.reader.filters()?) {
                all = false;
                break;
            }
        }
        if all {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(Error::Timeout(
                "the metadata group committed the change but not every data group has \
                 applied it yet; it will, and repeating the call is safe"
                    .into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Moves a group's leadership to `to`.
pub async fn transfer_leader(
    node: &Arc<Node>,
    req: wire::TransferLeaderRequest,
    forwarded: bool,
) -> Result<wire::TransferLeaderResponse> {
    let g = node.group(req.group_id)?;
    let to = req.to_node_id;
    let voters: Vec<u64> = g
        .metrics()
        .membership_config
        .membership()
        .voter_ids()
        .collect();
    if !voters.contains(&to) {
        return Err(Error::InvalidArgument(format!(
            "node {to} is not a voter of group {} (voters: {voters:?})",
            g.id
        )));
    }
    let leader = node.await_leader(g).await?;
    if leader.node_id != to {
        if leader.node_id == node.id() {
            g.raft
                .trigger()
                .transfer_leader(to)
                .await
                .map_err(|e| Error::Unavailable(format!("group {}: {e}", g.id)))?;
        } else if forwarded {
            return Err(Error::NotLeader {
                node: node.id(),
                group: g.id,
                leader: Some(leader),
            });
        } else {
            let mut client = AdminClient::new(node.peers.channel(leader.node_id, &leader.addr));
            client
                .transfer_leader(node.forwarded(req))
                .await
                .map_err(|s| Error::from_status(&s))?;
        }
    }
    let m = g
        .raft
        .wait(Some(node.request_timeout()))
        .metrics(|m| m.current_leader == Some(to), "leader transfer")
        .await
        .map_err(|e| Error::Timeout(format!("group {}: transfer to {to} not seen: {e}", g.id)))?;
    Ok(wire::TransferLeaderResponse {
        leader: g.leader().map(wire::NodeAddr::from),
        term: m.current_term,
    })
}
