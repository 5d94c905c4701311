//! The client side of the Raft transport: openraft's network traits over gRPC.
//!
//! One lazily connecting tonic [`Channel`] per peer carries every group's traffic (HTTP/2
//! multiplexes the streams), so `new_client` only clones a handle. Replication uses the
//! bidirectional `Append` stream, pipelined; snapshots are streamed in chunks from the
//! snapshot file; every call names its target node so a reused address never delivers
//! one node's traffic to another. Transport failures become openraft's `Unreachable`
//! (back off) or `NetworkError` (retry); a remote answer is never invented.
//!
//! Every node-to-node connection of the server (Raft RPCs, forwarded ingest and admin
//! calls, raw segment fetches, health and configuration probes) is made by
//! [`Peers::channel`], so a peer route (`--peer-route`: dial a peer through a proxy,
//! tunnel or NAT) applies to all of them. A route changes only where this node dials;
//! the address a caller passes (from the membership or a leader hint) stays canonical.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use adclick_proto::wire::{self, grpc::RaftClient, metadata};
use adclick_storage::sm::SnapshotFile;
use adclick_storage::types::TypeConfig;
use futures::StreamExt;
use openraft::base::{BoxFuture, BoxStream};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{
    Backoff, NetBackoff, NetSnapshot, NetStreamAppend, NetTransferLeader, NetVote, RPCOption,
    RaftNetworkFactory,
};
use openraft::raft::{
    AppendEntriesRequest, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use tonic::transport::{Channel, Endpoint};

use super::ack_guard::AckGuard;
use super::convert;
use super::Snapshot;

/// Largest gRPC message the transport sends or accepts (an append of up to
/// `max_payload_entries` batches, a snapshot chunk).
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;

/// Default snapshot chunk size when openraft does not give one.
const DEFAULT_CHUNK: usize = 1 << 20;

type RaftRpcError = RPCError<TypeConfig>;

/// What this node knows about reaching a peer.
#[derive(Debug, Clone, Copy, Default)]
pub struct PeerSeen {
    /// Last successful call.
    pub ok: Option<Instant>,
    /// Last failed call (transport or remote error).
    pub failed: Option<Instant>,
}

/// Channels to the other nodes, one per peer, and when each last answered.
#[derive(Debug)]
pub struct Peers {
    me: u64,
    /// Node id → the address dialed instead of the one callers pass (`--peer-route`).
    routes: BTreeMap<u64, String>,
    /// Node id → the address dialed and its channel.
    channels: Mutex<HashMap<u64, (String, Channel)>>,
    seen: Mutex<HashMap<u64, PeerSeen>>,
}

impl Peers {
    /// An empty pool for node `me` that dials node `id` at `routes[id]` when there is
    /// such a route, whatever address a caller names.
    pub fn new(me: u64, routes: BTreeMap<u64, String>) -> Self {
        Peers {
            me,
            routes,
            channels: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
        }
    }

    /// This node's id.
    pub fn me(&self) -> u64 {
        self.me
    }

    /// Where node `id`, known at `addr`, is dialed: its route if it has one, else `addr`.
    pub fn dial_addr<'a>(&'a self, id: u64, addr: &'a str) -> &'a str {
        self.routes.get(&id).map_or(addr, String::as_str)
    }

    /// The channel to node `id` at `addr` (dialed at its route if it has one), created
    /// (not connected) on first use; a changed address replaces it.
    pub fn channel(&self, id: u64, addr: &str) -> Channel {
        let dial = self.dial_addr(id, addr);
        let mut map = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((a, ch)) = map.get(&id) {
            if a == dial {
                return ch.clone();
            }
        }
        let ch = endpoint(dial).connect_lazy();
        map.insert(id, (dial.to_owned(), ch.clone()));
        ch
    }

    /// A Raft client for node `id`.
    pub fn raft_client(&self, id: u64, addr: &str) -> RaftClient<Channel> {
        RaftClient::new(self.channel(id, addr))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    /// Records the outcome of a call to `id`.
    pub fn record(&self, id: u64, ok: bool) {
        let mut map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let e = map.entry(id).or_default();
        if ok {
            e.ok = Some(Instant::now());
        } else {
            e.failed = Some(Instant::now());
        }
    }

    /// What is known about reaching `id`.
    pub fn seen(&self, id: u64) -> PeerSeen {
        let map = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&id).copied().unwrap_or_default()
    }
}

/// A tonic endpoint for a peer or client address, with the keepalives that detect a dead
/// peer on a long-lived stream.
pub fn endpoint(addr: &str) -> Endpoint {
    let uri = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("http://{addr}")
    };
    // An address that does not parse yields an endpoint that fails every call (with
    // Unavailable) instead of a panic; `Config` already checked the HOST:PORT form.
    Endpoint::from_shared(uri)
        .unwrap_or_else(|_| Endpoint::from_static("http://invalid.invalid:1"))
        .connect_timeout(Duration::from_secs(1))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(1))
        .keep_alive_timeout(Duration::from_secs(3))
        .keep_alive_while_idle(true)
        .http2_adaptive_window(true)
}

/// Puts the target node id on a request.
pub fn target<T>(mut req: tonic::Request<T>, node: u64) -> tonic::Request<T> {
    if let Ok(v) = node.to_string().parse() {
        req.metadata_mut().insert(metadata::TARGET_NODE, v);
    }
    req
}

/// openraft's network factory for one group.
#[derive(Debug, Clone)]
pub struct GroupNetwork {
    group: u64,
    peers: Arc<Peers>,
}

impl GroupNetwork {
    /// The factory of group `group`.
    pub fn new(group: u64, peers: Arc<Peers>) -> Self {
        GroupNetwork { group, peers }
    }
}

impl RaftNetworkFactory<TypeConfig> for GroupNetwork {
    type Network = Conn;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Conn {
        Conn {
            group: self.group,
            target,
            client: self.peers.raft_client(target, &node.addr),
            peers: Arc::clone(&self.peers),
        }
    }
}

/// One group's connection to one peer.
#[derive(Debug, Clone)]
pub struct Conn {
    group: u64,
    target: u64,
    client: RaftClient<Channel>,
    peers: Arc<Peers>,
}

impl Conn {
    fn fail(&self, status: &tonic::Status) -> RaftRpcError {
        self.peers.record(self.target, false);
        status_error(status)
    }

    fn ok<T>(&self, v: T) -> T {
        self.peers.record(self.target, true);
        v
    }
}

/// How a failed call is reported to openraft.
fn status_error(status: &tonic::Status) -> RaftRpcError {
    use tonic::Code;
    match status.code() {
        // No connection, the peer is stopping, or does not host the group yet.
        Code::Unavailable | Code::NotFound | Code::FailedPrecondition | Code::Unimplemented => {
            RPCError::Unreachable(Unreachable::from_string(status_text(status)))
        }
        _ => RPCError::Network(NetworkError::from_string(status_text(status))),
    }
}

fn status_text(status: &tonic::Status) -> String {
    format!("{:?}: {}", status.code(), status.message())
}

fn malformed(e: convert::Malformed) -> RaftRpcError {
    RPCError::Network(NetworkError::new(&e))
}

impl NetStreamAppend<TypeConfig> for Conn {
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        _option: RPCOption,
    ) -> BoxFuture<
        's,
        Result<
            BoxStream<'s, Result<openraft::raft::StreamAppendResult<TypeConfig>, RaftRpcError>>,
            RaftRpcError,
        >,
    >
    where
        S: futures::Stream<Item = AppendEntriesRequest<TypeConfig>> + Send + Unpin + 'static,
    {
        let group = self.group;
        Box::pin(async move {
            // openraft would credit an answer to an entry-less append queued behind the
            // one it answers, with that append's later send time (see `ack_guard`).
            let guard = AckGuard::new();
            let requests = guard
                .requests(input)
                .map(move |r| convert::append_request_to_wire(group, &r));
            let req = target(tonic::Request::new(requests), self.target);
            // No deadline: the stream lives as long as the replication session; a dead
            // peer is detected by the HTTP/2 keepalive.
            let responses = match self.client.append(req).await {
                Ok(r) => self.ok(r.into_inner()),
                Err(s) => return Err(self.fail(&s)),
            };
            let conn = self.clone();
            let out = responses.map(move |item| match item {
                Ok(resp) => convert::append_result_from_wire(&resp).map_err(malformed),
                Err(s) => Err(conn.fail(&s)),
            });
            Ok(Box::pin(guard.answers(out)) as BoxStream<'s, _>)
        })
    }
}

impl NetVote<TypeConfig> for Conn {
    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RaftRpcError> {
        self.send_vote(rpc, option, false).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RaftRpcError> {
        self.send_vote(rpc, option, true).await
    }
}

impl Conn {
    /// Sends a vote or, with `pre`, a pre-vote request.
    async fn send_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
        pre: bool,
    ) -> Result<VoteResponse<TypeConfig>, RaftRpcError> {
        let mut req = target(
            tonic::Request::new(convert::vote_request_to_wire(self.group, &rpc)),
            self.target,
        );
        req.set_timeout(option.hard_ttl());
        let resp = if pre {
            self.client.pre_vote(req).await
        } else {
            self.client.vote(req).await
        };
        match resp {
            Ok(r) => convert::vote_response_from_wire(&self.ok(r.into_inner())).map_err(malformed),
            Err(s) => Err(self.fail(&s)),
        }
    }
}

impl NetTransferLeader<TypeConfig> for Conn {
    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RaftRpcError> {
        use openraft::raft::TransferLeaderError;
        use wire::handover_response::Error as E;
        let msg = wire::HandoverRequest {
            group_id: self.group,
            from_leader: Some(convert::vote_to_wire(req.from_leader())),
            to_node_id: *req.to_node_id(),
            last_log_id: req.last_log_id().map(convert::log_id_to_wire),
        };
        let mut r = target(tonic::Request::new(msg), self.target);
        r.set_timeout(option.hard_ttl());
        let resp = match self.client.handover(r).await {
            Ok(r) => self.ok(r.into_inner()),
            Err(s) => return Err(self.fail(&s)),
        };
        Ok(match resp.error {
            None => Ok(()),
            Some(E::VoteChanged(v)) => Err(TransferLeaderError::VoteChanged {
                expected: convert::vote_from_wire(v.expected.as_ref()).map_err(malformed)?,
                actual: convert::vote_from_wire(v.actual.as_ref()).map_err(malformed)?,
            }),
            Some(E::LogNotFlushed(l)) => Err(TransferLeaderError::LogNotFlushed {
                expected: l.expected.as_ref().map(convert::log_id_from_wire),
                actual: l.actual.as_ref().map(convert::log_id_from_wire),
            }),
        })
    }
}

impl NetSnapshot<TypeConfig> for Conn {
    type SnapshotData = SnapshotFile;

    async fn full_snapshot(
        &mut self,
        vote: adclick_storage::types::Vote,
        snapshot: Snapshot,
        cancel: impl std::future::Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let chunk = option
            .snapshot_chunk_size()
            .unwrap_or(DEFAULT_CHUNK)
            .clamp(4096, MAX_MESSAGE_BYTES / 2);
        let send = self.send_snapshot(vote, snapshot, chunk);
        tokio::select! {
            closed = cancel => Err(StreamingError::Closed(closed)),
            r = send => r,
        }
    }
}

impl Conn {
    async fn send_snapshot(
        &mut self,
        vote: adclick_storage::types::Vote,
        snapshot: Snapshot,
        chunk: usize,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let group = self.group;
        let mut file = snapshot.snapshot.into_file();
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        let (tx, rx) = tokio::sync::mpsc::channel::<wire::SnapshotChunk>(4);
        let meta = wire::SnapshotChunk {
            group_id: group,
            payload: Some(wire::snapshot_chunk::Payload::Meta(
                convert::snapshot_meta_to_wire(&vote, &snapshot.meta, size),
            )),
        };
        // The file is read on a blocking thread and streamed; the channel's bound keeps at
        // most a few chunks in memory. A dropped receiver (call failed) ends the reader.
        let reader = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            use wire::snapshot_chunk::Payload;
            if tx.blocking_send(meta).is_err() {
                return Ok(());
            }
            let mut crc = crc32fast::Hasher::new();
            let mut total = 0u64;
            let mut buf = vec![0u8; chunk];
            loop {
                let n = file.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                crc.update(&buf[..n]);
                total += n as u64;
                let msg = wire::SnapshotChunk {
                    group_id: group,
                    payload: Some(Payload::Data(bytes::Bytes::copy_from_slice(&buf[..n]))),
                };
                if tx.blocking_send(msg).is_err() {
                    return Ok(());
                }
            }
            let done = wire::SnapshotChunk {
                group_id: group,
                payload: Some(Payload::Done(wire::SnapshotDone {
                    total_bytes: total,
                    crc32: crc.finalize(),
                })),
            };
            let _ = tx.blocking_send(done);
            Ok(())
        });
        let req = target(
            tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx)),
            self.target,
        );
        let result = self.client.install_snapshot(req).await;
        let read = reader.await;
        match read {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(StreamingError::Network(NetworkError::from_string(format!(
                    "reading the snapshot file: {e}"
                ))))
            }
            Err(e) => {
                return Err(StreamingError::Network(NetworkError::from_string(format!(
                    "snapshot reader: {e}"
                ))))
            }
        }
        let resp = match result {
            Ok(r) => self.ok(r.into_inner()),
            Err(s) => return Err(self.fail(&s).into()),
        };
        let vote = convert::vote_from_wire(resp.vote.as_ref()).map_err(malformed)?;
        Ok(SnapshotResponse { vote })
    }
}

impl NetBackoff<TypeConfig> for Conn {
    fn backoff(&self) -> Option<Backoff> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_routed_peer_is_dialed_at_its_route_whatever_address_is_named() {
        let peers = Peers::new(1, BTreeMap::from([(2, "127.0.0.1:9402".to_owned())]));
        assert_eq!(peers.dial_addr(2, "10.0.0.2:7402"), "127.0.0.1:9402");
        assert_eq!(peers.dial_addr(2, "10.9.9.9:1"), "127.0.0.1:9402");
        assert_eq!(peers.dial_addr(3, "10.0.0.3:7403"), "10.0.0.3:7403");
    }

    /// A call to a routed peer reaches the route's listener, not the named address.
    #[tokio::test]
    async fn a_call_to_a_routed_peer_connects_to_the_route() {
        use tonic_health::pb::health_client::HealthClient;
        use tonic_health::pb::HealthCheckRequest;
        let route = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let route_addr = route.local_addr().expect("addr").to_string();
        // Port 1 on localhost refuses connections: reaching it would fail the call at once.
        let peers = Peers::new(1, BTreeMap::from([(2, route_addr)]));
        let mut client = HealthClient::new(peers.channel(2, "127.0.0.1:1"));
        let call = tokio::spawn(async move {
            let mut req = tonic::Request::new(HealthCheckRequest::default());
            req.set_timeout(Duration::from_secs(5));
            client.check(req).await
        });
        let accepted = tokio::time::timeout(Duration::from_secs(5), route.accept()).await;
        assert!(
            matches!(accepted, Ok(Ok(_))),
            "the route's listener got the connection"
        );
        call.abort();
    }
}
