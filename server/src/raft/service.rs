//! The server side of the Raft transport: the `adclick.v1.Raft` gRPC service, routing each
//! call to the group it names.
//!
//! Every call must carry this node's id in `x-adclick-target-node` (FAILED_PRECONDITION
//! otherwise); an unknown group is NOT_FOUND; a stopped group is UNAVAILABLE. Malformed
//! messages are INVALID_ARGUMENT and never reach openraft.

use std::io::Write;
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
/// Largest segment image a FetchSegments stream builds (a run of entries is cut there).
pub const IMAGE_BYTES: usize = 8 << 20;

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

    /// A vote or, with `pre`, a pre-vote (which changes no state).
    async fn handle_vote(
        &self,
        request: Request<wire::VoteRequest>,
        pre: bool,
    ) -> Result<Response<wire::VoteResponse>, Status> {
        self.check_target(&request)?;
        let req = request.into_inner();
        let g = self.group(req.group_id)?;
        let rpc = convert::vote_request_from_wire(&req).map_err(bad)?;
        let resp = if pre {
            g.raft.pre_vote(rpc).await
        } else {
            g.raft.vote(rpc).await
        };
        let resp = resp.map_err(|e| stopped(g.id, e))?;
        Ok(Response::new(convert::vote_response_to_wire(g.id, &resp)))
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
        self.handle_vote(request, false).await
    }

    async fn pre_vote(
        &self,
        request: Request<wire::VoteRequest>,
    ) -> Result<Response<wire::VoteResponse>, Status> {
        self.handle_vote(request, true).await
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
            .map(move |r| r.ok().and_then(|m| match convert::append_request_from_wire(&m) {
                Ok(req) => Some(req),
                Err(e) => {
                    tracing::warn!(group_id, error = %e, "ending an append stream at a malformed request");
                    None
                }
            }))
            .take_while(|r| futures::future::ready(r.is_some()))
            .filter_map(futures::future::ready);
        let input = futures::stream::once(futures::future::ready(first)).chain(rest);
        // Ends when the node stops: an idle stream would otherwise wait for the peer's
        // next request and hold the listener open at shutdown.
        let out = Box::pin(g.raft.stream_append(input))
            .map(move |r| match r {
                Ok(res) => Ok(convert::append_result_to_wire(group_id, &res)),
                Err(e) => Err(stopped(group_id, e)),
            })
            .take_until(self.node.stopped());
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
        let mut file = tokio::task::spawn_blocking(move || IncomingSnapshot::create(&dir))
            .await
            .map_err(|e| Status::internal(format!("snapshot file task: {e}")))?
            .map_err(|e| Status::internal(format!("snapshot file: {e}")))?;
        let temp = file.path().to_path_buf();
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
                    file =
                        tokio::task::spawn_blocking(move || file.write_all(&data).map(|()| file))
                            .await
                            .map_err(|e| Status::internal(format!("snapshot write task: {e}")))?
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
        let file = tokio::task::spawn_blocking(move || file.finish())
            .await
            .map_err(|e| Status::internal(format!("snapshot finish task: {e}")))?
            .map_err(|e| Status::internal(format!("finishing snapshot: {e}")))?;
        let snapshot = super::Snapshot {
            meta,
            snapshot: file,
        };
        let resp = g.raft.install_full_snapshot(vote, snapshot).await;
        // Installed, the file was moved into place; declined (a stale vote, nothing newer
        // than what is committed), it is still here and nobody else will remove it.
        if let Err(e) = std::fs::remove_file(&temp) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(file = %temp.display(), error = %e, "removing a received snapshot");
            }
        }
        let resp = resp.map_err(|e| stopped(group_id, e))?;
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
        if self.node.is_leaving() {
            return Err(Status::unavailable(format!(
                "node {} is stopping and takes no leadership",
                self.node.id()
            )));
        }
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
        let Ok(permit) = Arc::clone(&self.node.fetch_budget).try_acquire_owned() else {
            return Err(Status::resource_exhausted(
                "this node is already serving raw segments to peers; retry later",
            ));
        };
        let raw = g.raw.clone();
        let group_id = g.id;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<wire::SegmentChunk, Status>>(2);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            if let Err(e) = serve_raw(&tx, group_id, &raw, req.from_index..req.to_index) {
                let _ = tx.blocking_send(Err(Status::unavailable(format!(
                    "reading the raw log: {e}"
                ))));
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
                // waits for the index only. A leader always has one (its term's first
                // entry at least); `None` only before anything was ever appended.
                let read_log_id = Some(wire::LogId {
                    term: 0,
                    node_id: 0,
                    index: index.unwrap_or(0),
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

/// Streams the committed raw entries of `range` this node holds, as segment images of
/// contiguous runs of at most [`IMAGE_BYTES`], each in chunks whose last carries the CRC of
/// the image. Only committed entries are read (`RawReader::entries` stops at the commit
/// point), so a peer never imports an entry that a new leader could still replace.
fn serve_raw(
    tx: &tokio::sync::mpsc::Sender<Result<wire::SegmentChunk, Status>>,
    group_id: u64,
    raw: &adclick_storage::log::RawReader,
    range: std::ops::Range<u64>,
) -> adclick_storage::Result<()> {
    let mut run: Vec<adclick_storage::types::Entry> = Vec::new();
    let mut run_bytes = 0usize;
    for entry in raw.entries(range)? {
        let entry = entry?;
        let contiguous = run
            .last()
            .is_none_or(|l| l.log_id.index + 1 == entry.log_id.index);
        if !contiguous || run_bytes >= IMAGE_BYTES {
            if !send_image(tx, group_id, &std::mem::take(&mut run))? {
                return Ok(());
            }
            run_bytes = 0;
        }
        run_bytes += entry_size(&entry);
        run.push(entry);
    }
    if !run.is_empty() {
        send_image(tx, group_id, &run)?;
    }
    Ok(())
}

/// About how many bytes an entry takes in a segment image (exact size is not needed: it
/// only bounds the image).
fn entry_size(e: &adclick_storage::types::Entry) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(adclick_storage::types::Command::Ingest(b)) => {
            64 + b.clicks.len() * 100
        }
        _ => 64,
    }
}

/// Sends one image of `run` in chunks; false if the caller went away.
fn send_image(
    tx: &tokio::sync::mpsc::Sender<Result<wire::SegmentChunk, Status>>,
    group_id: u64,
    run: &[adclick_storage::types::Entry],
) -> adclick_storage::Result<bool> {
    let (Some(first), Some(last)) = (run.first(), run.last()) else {
        return Ok(true);
    };
    let image = adclick_storage::log::encode_segment_image(run)?;
    let crc = crc32fast::hash(&image);
    let mut offset = 0usize;
    for piece in image.chunks(SEGMENT_CHUNK) {
        let eof = offset + piece.len() == image.len();
        let chunk = wire::SegmentChunk {
            group_id,
            first_index: first.log_id.index,
            last_index: last.log_id.index,
            offset: offset as u64,
            data: bytes::Bytes::copy_from_slice(piece),
            eof,
            crc32: if eof { crc } else { 0 },
        };
        offset += piece.len();
        if tx.blocking_send(Ok(chunk)).is_err() {
            return Ok(false);
        }
    }
    Ok(true)
}
