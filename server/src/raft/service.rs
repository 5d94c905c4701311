//! The server side of the Raft transport: the `adclick.v1.Raft` gRPC service, routing each
//! call to the group it names.
//!
//! Every call must carry this node's id in `x-adclick-target-node` (FAILED_PRECONDITION
//! otherwise); an unknown group is NOT_FOUND; a stopped group is UNAVAILABLE. Malformed
//! messages are INVALID_ARGUMENT and never reach openraft.

use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::Arc;

use adclick_proto::wire::{self, grpc, metadata};
use adclick_storage::sm::IncomingSnapshot;
use futures::{Stream, StreamExt};
use openraft::raft::TransferLeaderError;
use openraft::raft::TransferLeaderRequest;
use tonic::{Request, Response, Status, Streaming};

use super::convert::{self, Malformed};
use crate::group::Group;
use crate::node::Node;

/// Bytes per `SegmentChunk` of a FetchSegments stream.
const SEGMENT_CHUNK: usize = 1 << 20;

/// The Raft service of a node.
#[derive(Debug, Clone)]
pub struct RaftService {
    node: Arc<Node>,
}

impl RaftService {
    /// The service over `node`'s groups.
    pub fn new(node: Arc<Node>) -> Self {
        RaftService { node }
    }

    fn check_target<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let want = req
            .metadata()
            .get(metadata::TARGET_NODE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        match want {
            Some(id) if id == self.node.id() => Ok(()),
            Some(id) => Err(Status::failed_precondition(format!(
                "this is node {}, not node {id}",
                self.node.id()
            ))),
            None => Err(Status::failed_precondition(format!(
                "missing {} metadata",
                metadata::TARGET_NODE
            ))),
        }
    }

    fn group(&self, id: u64) -> Result<&Arc<Group>, Status> {
        self.node.group(id).map_err(Status::from)
    }
}

fn bad(e: Malformed) -> Status {
    Status::invalid_argument(e.to_string())
}

fn stopped(group: u64, e: impl std::fmt::Display) -> Status {
    Status::unavailable(format!("group {group} is stopped on this node: {e}"))
}

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl grpc::Raft for RaftService {
    async fn vote(
        &self,
        request: Request<wire::VoteRequest>,
    ) -> Result<Response<wire::VoteResponse>, Status> {
        self.check_target(&request)?;
        let req = request.into_inner();
        let g = self.group(req.group_id)?;
        let rpc = convert::vote_request_from_wire(&req).map_err(bad)?;
        let resp = g.raft.vote(rpc).await.map_err(|e| stopped(g.id, e))?;
        Ok(Response::new(convert::vote_response_to_wire(g.id, &resp)))
    }

    async fn pre_vote(
        &self,
        request: Request<wire::VoteRequest>,
    ) -> Result<Response<wire::VoteResponse>, Status> {
        self.check_target(&request)?;
        let req = request.into_inner();
        let g = self.group(req.group_id)?;
        let rpc = convert::vote_request_from_wire(&req).map_err(bad)?;
        let resp = g.raft.pre_vote(rpc).await.map_err(|e| stopped(g.id, e))?;
        Ok(Response::new(convert::vote_response_to_wire(g.id, &resp)))
    }

    type AppendStream = BoxStream<wire::AppendResponse>;

    async fn append(
        &self,
        request: Request<Streaming<wire::AppendRequest>>,
    ) -> Result<Response<Self::AppendStream>, Status> {
        self.check_target(&request)?;
        let mut inbound = request.into_inner();
        let Some(first) = inbound.message().await? else {
            return Ok(Response::new(Box::pin(futures::stream::empty())));
        };
        let group_id = first.group_id;
        let g = Arc::clone(self.group(group_id)?);
        let first = convert::append_request_from_wire(&first).map_err(bad)?;
        // The rest of the stream: requests of the same group, decoded; the input ends at
        // the first transport error or malformed message (the leader opens a new stream).
        let rest = inbound
            .take_while(move |r| {
                let ok = match r {
                    Ok(m) if m.group_id == group_id => true,
                    Ok(m) => {
                        tracing::warn!(
                            group_id,
                            other = m.group_id,
                            "append stream switched groups"
                        );
                        false
                    }
                    Err(s) => {
                        tracing::debug!(group_id, status = %s, "append stream ended");
                        false
                    }
                };
                futures::future::ready(ok)
            })
            .filter_map(move |r| {
                let decoded = r
                    .ok()
                    .and_then(|m| match convert::append_request_from_wire(&m) {
                        Ok(req) => Some(req),
                        Err(e) => {
                            tracing::warn!(group_id, error = %e, "dropping a malformed append");
                            None
                        }
                    });
                futures::future::ready(decoded)
            });
        let input = futures::stream::once(futures::future::ready(first)).chain(rest);
        let out = Box::pin(g.raft.stream_append(input)).map(move |r| match r {
            Ok(res) => Ok(convert::append_result_to_wire(group_id, &res)),
            Err(e) => Err(stopped(group_id, e)),
        });
        Ok(Response::new(Box::pin(out)))
    }

    async fn install_snapshot(
        &self,
        request: Request<Streaming<wire::SnapshotChunk>>,
    ) -> Result<Response<wire::InstallSnapshotResponse>, Status> {
        use wire::snapshot_chunk::Payload;
        self.check_target(&request)?;
        let mut inbound = request.into_inner();
        let Some(first) = inbound.message().await? else {
            return Err(Status::invalid_argument("empty snapshot stream"));
        };
        let group_id = first.group_id;
        let g = Arc::clone(self.group(group_id)?);
        let Some(Payload::Meta(meta)) = first.payload else {
            return Err(Status::invalid_argument(
                "a snapshot stream starts with its meta",
            ));
        };
        let (vote, meta) = convert::snapshot_meta_from_wire(&meta).map_err(bad)?;
        let dir = g.snapshot_dir.clone();
        let mut file = tokio::task::block_in_place(|| IncomingSnapshot::create(&dir))
            .map_err(|e| Status::internal(format!("snapshot file: {e}")))?;
        let mut crc = crc32fast::Hasher::new();
        let mut total = 0u64;
        let done = loop {
            let Some(chunk) = inbound.message().await? else {
                return Err(Status::invalid_argument(
                    "snapshot stream ended before `done`",
                ));
            };
            if chunk.group_id != group_id {
                return Err(Status::invalid_argument("snapshot stream switched groups"));
            }
            match chunk.payload {
                Some(Payload::Data(data)) => {
                    crc.update(&data);
                    total += data.len() as u64;
                    tokio::task::block_in_place(|| file.write_all(&data))
                        .map_err(|e| Status::internal(format!("writing snapshot: {e}")))?;
                }
                Some(Payload::Done(d)) => break d,
                _ => return Err(Status::invalid_argument("unexpected snapshot chunk")),
            }
        };
        if done.total_bytes != total || done.crc32 != crc.finalize() {
            return Err(Status::data_loss(format!(
                "snapshot transfer damaged: got {total} bytes, sender sent {}; crc mismatch \
                 or short transfer",
                done.total_bytes
            )));
        }
        let file = tokio::task::block_in_place(|| file.finish())
            .map_err(|e| Status::internal(format!("finishing snapshot: {e}")))?;
        let snapshot = super::Snapshot {
            meta,
            snapshot: file,
        };
        let resp = g
            .raft
            .install_full_snapshot(vote, snapshot)
            .await
            .map_err(|e| stopped(group_id, e))?;
        Ok(Response::new(wire::InstallSnapshotResponse {
            group_id,
            vote: Some(convert::vote_to_wire(&resp.vote)),
        }))
    }

    async fn handover(
        &self,
        request: Request<wire::HandoverRequest>,
    ) -> Result<Response<wire::HandoverResponse>, Status> {
        use wire::handover_response::Error as E;
        self.check_target(&request)?;
        let req = request.into_inner();
        let g = self.group(req.group_id)?;
        let from = convert::vote_from_wire(req.from_leader.as_ref()).map_err(bad)?;
        let last = req.last_log_id.as_ref().map(convert::log_id_from_wire);
        let rpc = TransferLeaderRequest::new(from, req.to_node_id, last);
        let resp = g
            .raft
            .handle_transfer_leader(rpc)
            .await
            .map_err(|e| stopped(g.id, e))?;
        let error = match resp {
            Ok(()) => None,
            Err(TransferLeaderError::VoteChanged { expected, actual }) => {
                Some(E::VoteChanged(wire::HandoverVoteChanged {
                    expected: Some(convert::vote_to_wire(&expected)),
                    actual: Some(convert::vote_to_wire(&actual)),
                }))
            }
            Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
                Some(E::LogNotFlushed(wire::HandoverLogNotFlushed {
                    expected: expected.as_ref().map(convert::log_id_to_wire),
                    actual: actual.as_ref().map(convert::log_id_to_wire),
                }))
            }
        };
        Ok(Response::new(wire::HandoverResponse {
            group_id: g.id,
            error,
        }))
    }

    type FetchSegmentsStream = BoxStream<wire::SegmentChunk>;

    async fn fetch_segments(
        &self,
        request: Request<wire::FetchSegmentsRequest>,
    ) -> Result<Response<Self::FetchSegmentsStream>, Status> {
        self.check_target(&request)?;
        let req = request.into_inner();
        let g = self.group(req.group_id)?;
        if req.from_index >= req.to_index {
            return Err(Status::invalid_argument(
                "from_index must be below to_index",
            ));
        }
        let segments: Vec<_> = g
            .raw
            .segments()
            .map_err(|e| Status::internal(e.to_string()))?
            .into_iter()
            .filter(|s| {
                s.last_index.is_some_and(|l| l >= req.from_index) && s.first_index < req.to_index
            })
            .collect();
        let group_id = g.id;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<wire::SegmentChunk, Status>>(4);
        tokio::task::spawn_blocking(move || {
            for s in segments {
                let sent = send_segment(&tx, group_id, &s);
                if let Err(e) = sent {
                    let _ = tx.blocking_send(Err(Status::unavailable(format!(
                        "reading segment {}: {e}",
                        s.path.display()
                    ))));
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }

    async fn read_index(
        &self,
        request: Request<wire::ReadIndexRequest>,
    ) -> Result<Response<wire::ReadIndexResponse>, Status> {
        self.check_target(&request)?;
        let req = request.into_inner();
        let g = self.group(req.group_id)?;
        match g.read_index(self.node.request_timeout()).await? {
            Ok(index) => {
                // The read log id's term and leader are not needed by the reader: it
                // waits for the index only.
                let read_log_id = index.map(|index| wire::LogId {
                    term: 0,
                    node_id: 0,
                    index,
                });
                Ok(Response::new(wire::ReadIndexResponse {
                    group_id: g.id,
                    read_log_id,
                }))
            }
            Err(leader) => Err(crate::error::Error::NotLeader {
                node: self.node.id(),
                group: g.id,
                leader,
            }
            .into()),
        }
    }
}

/// Streams one segment file (as long as it was when listed) in chunks; the last chunk
/// carries the CRC of the whole file.
fn send_segment(
    tx: &tokio::sync::mpsc::Sender<Result<wire::SegmentChunk, Status>>,
    group_id: u64,
    s: &adclick_storage::log::SegmentInfo,
) -> std::io::Result<()> {
    let mut file = std::fs::File::open(&s.path)?.take(s.bytes);
    let mut crc = crc32fast::Hasher::new();
    let mut offset = 0u64;
    let mut buf = vec![0u8; SEGMENT_CHUNK];
    loop {
        let n = read_full(&mut file, &mut buf)?;
        crc.update(&buf[..n]);
        let eof = n < buf.len() || offset + n as u64 >= s.bytes;
        let chunk = wire::SegmentChunk {
            group_id,
            first_index: s.first_index,
            last_index: s.last_index.unwrap_or(s.first_index),
            offset,
            data: bytes::Bytes::copy_from_slice(&buf[..n]),
            eof,
            crc32: if eof { crc.clone().finalize() } else { 0 },
        };
        offset += n as u64;
        if tx.blocking_send(Ok(chunk)).is_err() || eof {
            return Ok(());
        }
    }
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}
