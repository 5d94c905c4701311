//! Helpers shared by the end-to-end scenarios: reading every ad's count through a node,
//! comparing with the expected numbers, and checking error answers.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::time::Duration;

use adclick_proto::wire;
use adclick_tests::clicks::{describe, retry_rpc};
use adclick_tests::query::{count_request, expected_top, top_request, top_rows};
use adclick_tests::{eventually, now_ms, Cluster, HttpResponse};
use tonic::Code;

/// Linearizable.
pub const LIN: wire::Consistency = wire::Consistency::Linearizable;
/// Stale.
pub const STALE: wire::Consistency = wire::Consistency::Stale;

/// How long a read is retried while the node answers UNAVAILABLE (the contract's "retry":
/// no leader yet, or a forwarded request met a stale leader).
pub const RETRY_BOUND: Duration = Duration::from_secs(10);

/// Reports reads that needed retries (visible with `--nocapture` or on failure).
fn note_retries(what: &str, attempts: u32) {
    if attempts > 1 {
        println!("note: {what} answered after {attempts} attempts (UNAVAILABLE before)");
    }
}

/// Bound on waiting for stale reads to catch up.
pub const CATCH_UP: Duration = Duration::from_secs(20);

/// A range covering every click generated since `t0_ms` (and a margin on both sides).
pub fn range_since(t0_ms: i64) -> (i64, i64) {
    (t0_ms - 60_000, now_ms() + 120_000)
}

/// `counts` with an explicit 0 for every ad of `ads` it lacks.
pub fn with_zeros(ads: &[String], counts: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    ads.iter()
        .map(|a| (a.clone(), counts.get(a).copied().unwrap_or(0)))
        .collect()
}

/// Every ad's Count response through node `node`.
pub async fn counts(
    cluster: &Cluster,
    node: u64,
    ads: &[String],
    range: (i64, i64),
    filter: &str,
    consistency: wire::Consistency,
) -> Result<BTreeMap<String, wire::CountResponse>, String> {
    let q = cluster.query(node);
    let mut out = BTreeMap::new();
    for ad in ads {
        let req = count_request(
            ad,
            adclick_tests::query::between(range.0, range.1),
            filter,
            consistency,
        );
        let (resp, attempts) = retry_rpc(RETRY_BOUND, || {
            let (mut q, req) = (q.clone(), req.clone());
            async move { q.count(req).await }
        })
        .await
        .map_err(|s| format!("Count({ad}) via node {node}: {}", describe(&s)))?;
        note_retries(&format!("Count({ad}) via node {node}"), attempts);
        let resp = resp.into_inner();
        out.insert(ad.clone(), resp);
    }
    Ok(out)
}

/// Compares every ad's count through `node` with `expected`; `Err` lists the differences.
pub async fn check_counts(
    cluster: &Cluster,
    node: u64,
    expected: &BTreeMap<String, u64>,
    range: (i64, i64),
    filter: &str,
    consistency: wire::Consistency,
) -> Result<(), String> {
    let ads: Vec<String> = expected.keys().cloned().collect();
    let got = counts(cluster, node, &ads, range, filter, consistency).await?;
    let diffs: Vec<String> = expected
        .iter()
        .filter_map(|(ad, want)| {
            let have = got.get(ad).map(|r| r.count);
            (have != Some(*want)).then(|| format!("{ad}: want {want}, got {have:?}"))
        })
        .collect();
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "node {node} {consistency:?} counts (filter {filter:?}) differ: {}",
            diffs.join(", ")
        ))
    }
}

/// Top `n` through `node` compared with the top `n` of `expected`.
pub async fn check_top(
    cluster: &Cluster,
    node: u64,
    expected: &BTreeMap<String, u64>,
    n: u32,
    range: (i64, i64),
    filter: &str,
    consistency: wire::Consistency,
) -> Result<(), String> {
    let q = cluster.query(node);
    let req = top_request(
        n,
        adclick_tests::query::between(range.0, range.1),
        filter,
        consistency,
    );
    let (resp, attempts) = retry_rpc(RETRY_BOUND, || {
        let (mut q, req) = (q.clone(), req.clone());
        async move { q.top(req).await }
    })
    .await
    .map_err(|s| format!("Top({n}) via node {node}: {}", describe(&s)))?;
    note_retries(&format!("Top({n}) via node {node}"), attempts);
    let resp = resp.into_inner();
    let want = expected_top(expected, if n == 0 { 10 } else { n as usize });
    let have = top_rows(&resp);
    if have == want {
        Ok(())
    } else {
        Err(format!(
            "node {node} {consistency:?} Top({n}, filter {filter:?}):\n  want {want:?}\n  got  {have:?}"
        ))
    }
}

/// Waits until stale counts through `node` equal `expected`.
pub async fn wait_stale_counts(
    cluster: &Cluster,
    node: u64,
    expected: &BTreeMap<String, u64>,
    range: (i64, i64),
    filter: &str,
) {
    eventually(
        &format!("node {node}'s stale counts to match"),
        CATCH_UP,
        Duration::from_millis(200),
        move || check_counts(cluster, node, expected, range, filter, STALE),
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Asserts a gRPC call failed with one of `codes` and a non-empty message.
pub fn expect_code<T: Debug>(
    result: Result<tonic::Response<T>, tonic::Status>,
    codes: &[Code],
    what: &str,
) {
    match result {
        Ok(r) => panic!(
            "{what}: expected {codes:?}, got a success: {:?}",
            r.into_inner()
        ),
        Err(s) => {
            assert!(
                codes.contains(&s.code()),
                "{what}: expected {codes:?}, got {}",
                adclick_tests::clicks::describe(&s)
            );
            assert!(
                !s.message().is_empty(),
                "{what}: {:?} without a message",
                s.code()
            );
        }
    }
}

/// Asserts an HTTP answer is `status` and, for a 4xx, carries a JSON `{"error": "..."}`.
pub fn expect_http(resp: &HttpResponse, status: &[u16], what: &str) {
    assert!(
        status.contains(&resp.status),
        "{what}: expected HTTP {status:?}, got {} {}",
        resp.status,
        resp.body
    );
    if resp.status == 400 {
        let msg = resp.error_message();
        assert!(
            msg.as_deref().is_some_and(|m| !m.is_empty()),
            "{what}: a 400 must carry a JSON error message, got {:?}",
            resp.body
        );
    }
}

/// The `count` field of an HTTP aggregated_count answer, after checking its `ad_id`.
pub fn http_count(resp: &HttpResponse, ad: &str) -> Result<(u64, u64), String> {
    if resp.status != 200 {
        return Err(format!("HTTP {} {}", resp.status, resp.body));
    }
    let v = resp.json().map_err(|e| format!("{e:#}"))?;
    if v["ad_id"] != ad {
        return Err(format!("ad_id {} for {ad}: {v}", v["ad_id"]));
    }
    let count = v["count"]
        .as_u64()
        .ok_or_else(|| format!("no count: {v}"))?;
    let late = v["late"].as_u64().ok_or_else(|| format!("no late: {v}"))?;
    Ok((count, late))
}

/// The `(ad_id, count)` rows of an HTTP /ads/popular answer.
pub fn http_popular(resp: &HttpResponse) -> Result<Vec<(String, u64)>, String> {
    if resp.status != 200 {
        return Err(format!("HTTP {} {}", resp.status, resp.body));
    }
    let v = resp.json().map_err(|e| format!("{e:#}"))?;
    let ads = v["ads"]
        .as_array()
        .ok_or_else(|| format!("no ads array: {v}"))?;
    ads.iter()
        .map(|row| {
            Ok((
                row["ad_id"]
                    .as_str()
                    .ok_or_else(|| format!("row without ad_id: {row}"))?
                    .to_owned(),
                row["count"]
                    .as_u64()
                    .ok_or_else(|| format!("row without count: {row}"))?,
            ))
        })
        .collect()
}

/// After a fault run has settled its ledger: nothing pending, fresh clicks neither late nor
/// rejected, every attempted id acknowledged, and every node in `nodes` answering exactly
/// the acknowledged count per ad (linearizable). With the exact counts, nothing attempted
/// was lost or counted twice. Returns the acknowledged counts per ad.
pub async fn check_settled(
    cluster: &Cluster,
    nodes: &[u64],
    ledger: &adclick_tests::Ledger,
    ads: &[String],
    t0: i64,
) -> BTreeMap<String, u64> {
    assert_eq!(
        (ledger.late, ledger.rejected),
        (0, 0),
        "fresh clicks are never late or rejected"
    );
    assert_eq!(ledger.pending_batches(), 0, "no batch is left unanswered");
    assert_eq!(
        ledger.acked(),
        ledger.attempted(),
        "every attempted event id is acknowledged once settled"
    );
    let acked = with_zeros(ads, &ledger.acked_per_ad());
    assert_eq!(
        acked,
        with_zeros(ads, &ledger.attempted_per_ad()),
        "acknowledged and attempted event ids per ad"
    );
    let range = range_since(t0);
    for &node in nodes {
        check_counts(cluster, node, &acked, range, "", LIN)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    acked
}
