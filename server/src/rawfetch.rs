//! Fetching the raw log segments a snapshot install left out.
//!
//! A replica that installed a snapshot (or whose state ran ahead of its durable log, see
//! `docs/architecture.md`) holds the aggregates of entries it never stored: its raw-click
//! store has a gap. Every couple of seconds the node asks the log for its gaps and, for
//! each, streams the covering segments from a peer (`FetchSegments`), checks each
//! segment's CRC, and hands the image to the log, which verifies every record and stores
//! only the entries inside the gap. A round that fills nothing (no peer still retains the
//! range) backs off exponentially, up to [`MAX_BACKOFF`], so a gap no peer can fill does
//! not cost a transfer every round.

use std::ops::Range;
use std::time::{Duration, Instant};

use adclick_proto::wire;
use adclick_storage::log::RawImporter;

use crate::error::{blocking, Error, Result};
use crate::group::Group;
use crate::node::Node;
use crate::raft::network::target;

/// Longest wait between fruitless fetch rounds of a group.
const MAX_BACKOFF: Duration = Duration::from_secs(300);
/// First wait after a fruitless round.
const FIRST_BACKOFF: Duration = Duration::from_secs(2);
/// Longest a peer may go quiet in the middle of a FetchSegments stream.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest segment image accepted (a peer builds them up to `IMAGE_BYTES`; one entry may
/// run over that, up to the largest batch).
const MAX_IMAGE_BYTES: usize = 4 * crate::raft::service::IMAGE_BYTES;

/// Fills the raw-log gaps of `group` from its peers, if it has any and is not backing off.
pub async fn fill_gaps(node: &Node, group: &Group) -> Result<()> {
    {
        let b = group
            .fetch_backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if Instant::now() < b.0 {
            return Ok(());
        }
    }
    let importer = group.importer.clone();
    let gaps = blocking(move || importer.raw_gaps()).await?;
    if gaps.is_empty() {
        return Ok(());
    }
    let mut filled = 0u64;
    let mut last_error = None;
    for gap in gaps {
        for (peer, addr) in &node.config.peers {
            if *peer == node.id() {
                continue;
            }
            match fetch(node, group, *peer, addr, gap.clone()).await {
                Ok(0) => continue,
                Ok(n) => {
                    tracing::info!(
                        group = group.id,
                        peer,
                        from = gap.start,
                        to = gap.end,
                        entries = n,
                        "stored raw entries fetched from a peer"
                    );
                    filled += n;
                    break;
                }
                Err(e) => last_error = Some(e),
            }
        }
    }
    let mut b = group
        .fetch_backoff
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if filled > 0 {
        *b = (Instant::now(), Duration::ZERO);
    } else {
        let next = (b.1 * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
        *b = (Instant::now() + next, next);
    }
    match last_error {
        Some(e) if filled == 0 => Err(e),
        _ => Ok(()),
    }
}

/// Streams the segments covering `gap` from `peer` and imports each; returns the number
/// of entries stored.
async fn fetch(node: &Node, group: &Group, peer: u64, addr: &str, gap: Range<u64>) -> Result<u64> {
    let mut client = node.peers.raft_client(peer, addr);
    let req = target(
        tonic::Request::new(wire::FetchSegmentsRequest {
            group_id: group.id,
            from_index: gap.start,
            to_index: gap.end,
        }),
        peer,
    );
    let mut stream = client
        .fetch_segments(req)
        .await
        .map_err(|s| Error::from_status(&s))?
        .into_inner();
    let mut stored = 0u64;
    let mut image: Vec<u8> = Vec::new();
    let mut crc = crc32fast::Hasher::new();
    loop {
        let next = tokio::time::timeout(CHUNK_TIMEOUT, stream.message())
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "peer {peer} sent no raw segment chunk in {CHUNK_TIMEOUT:?}"
                ))
            })?
            .map_err(|s| Error::from_status(&s))?;
        let Some(chunk) = next else { break };
        if image.len() + chunk.data.len() > MAX_IMAGE_BYTES {
            return Err(Error::Unavailable(format!(
                "peer {peer} sent a segment image over {MAX_IMAGE_BYTES} bytes"
            )));
        }
        if chunk.offset != image.len() as u64 {
            return Err(Error::Unavailable(format!(
                "peer {peer} sent segment {} out of order (offset {}, expected {})",
                chunk.first_index,
                chunk.offset,
                image.len()
            )));
        }
        crc.update(&chunk.data);
        image.extend_from_slice(&chunk.data);
        if !chunk.eof {
            continue;
        }
        let sum = std::mem::replace(&mut crc, crc32fast::Hasher::new()).finalize();
        if sum != chunk.crc32 {
            return Err(Error::Unavailable(format!(
                "segment {} from peer {peer} arrived damaged (crc mismatch)",
                chunk.first_index
            )));
        }
        let bytes = std::mem::take(&mut image);
        let importer: RawImporter = group.importer.clone();
        let outcome = blocking(move || importer.import_raw(&bytes)).await?;
        stored += outcome.entries;
    }
    Ok(stored)
}
