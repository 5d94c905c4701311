//! The read path. A count goes to the ad's group, a top fans out to every data group and
//! merges their local top-N (exact, because a group holds every click of its ads). Both
//! are served from this node's replicas: a linearizable read first obtains a read index
//! from the group's leader and waits until the local replica has applied it; a stale read
//! answers from the replica as it is. State-machine reads run on the blocking pool.

use std::sync::Arc;
use std::time::Duration;

use adclick_proto::convert::{CountQuery, ReadConsistency, TopQuery};
use adclick_proto::model::{sort_top, AdCount, MinuteRange};
use adclick_proto::wire;
use futures::future::try_join_all;

use crate::error::{blocking, Error, Result};
use crate::group::Group;
use crate::node::{now_ms, Node, MAX_CONCURRENT_QUERIES};

/// Answers a count query.
pub async fn count(node: &Arc<Node>, q: CountQuery) -> Result<wire::CountResponse> {
    let _permit = admit(node).await?;
    let range = q.range.resolve(now_ms())?;
    let group = Arc::clone(node.group_of(&q.ad_id));
    prepare(node, &group, q.consistency).await?;
    let reader = group.reader.clone();
    let filter = q.filter.map(|f| f.as_str().to_owned());
    let ad = q.ad_id;
    let answer = blocking(move || reader.count(&ad, range, filter.as_deref()))
        .await
        .map_err(filter_hint)?;
    Ok(wire::CountResponse {
        count: answer.count,
        late: answer.late,
        range: Some(range.into()),
        position: Some(wire::GroupPosition {
            group_id: group.id,
            node_id: node.id(),
            applied_index: answer.applied_index.unwrap_or(0),
            watermark_ms: answer.watermark_ms,
        }),
    })
}

/// Answers a top query.
pub async fn top(node: &Arc<Node>, q: TopQuery) -> Result<wire::TopResponse> {
    let _permit = admit(node).await?;
    let range: MinuteRange = q.range.resolve(now_ms())?;
    let n = q.n as usize;
    let filter = q.filter.map(|f| f.as_str().to_owned());
    let parts = try_join_all(node.data_groups().map(|g| {
        let node = Arc::clone(node);
        let group = Arc::clone(g);
        let filter = filter.clone();
        async move {
            prepare(&node, &group, q.consistency).await?;
            // The watermark is read before the counts: minutes at or before it were final
            // already, so the answer never calls a minute final that it summed early.
            let watermark_ms = group.reader.watermark_ms()?;
            let reader = group.reader.clone();
            let answer = blocking(move || reader.top(n, range, filter.as_deref()))
                .await
                .map_err(filter_hint)?;
            let position = wire::GroupPosition {
                group_id: group.id,
                node_id: node.id(),
                applied_index: answer.applied_index.unwrap_or(0),
                watermark_ms,
            };
            Ok::<_, Error>((answer.rows, position))
        }
    }))
    .await?;
    let mut rows: Vec<AdCount> = Vec::new();
    let mut positions = Vec::new();
    for (r, p) in parts {
        rows.extend(r);
        positions.push(p);
    }
    sort_top(&mut rows);
    rows.truncate(n);
    Ok(wire::TopResponse {
        rows: rows.into_iter().map(wire::AdCount::from).collect(),
        range: Some(range.into()),
        positions,
    })
}

/// Takes one of the node's query slots, waiting briefly.
async fn admit(node: &Node) -> Result<tokio::sync::OwnedSemaphorePermit> {
    Node::admit(
        &node.query_budget,
        1,
        Duration::from_millis(500),
        || format!("{MAX_CONCURRENT_QUERIES} queries already running on this node"),
        Duration::from_millis(100),
    )
    .await
}

/// Makes the replica ready to answer: the read barrier for linearizable reads. (An
/// unknown filter is the state machine's NOT_FOUND, see [`filter_hint`].)
async fn prepare(node: &Node, group: &Group, consistency: ReadConsistency) -> Result<()> {
    if consistency == ReadConsistency::Linearizable {
        node.read_barrier(group).await?;
    }
    Ok(())
}

/// Adds what to do to the state machine's NOT_FOUND for an unknown filter.
fn filter_hint(e: Error) -> Error {
    match e {
        Error::NotFound(m) => Error::NotFound(format!(
            "{m} (list them with ListFilters; a filter created moments ago may still be \
             reaching this group: retry)"
        )),
        other => other,
    }
}
