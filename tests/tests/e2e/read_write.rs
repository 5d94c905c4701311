//! Issue test 1: clicks written through node 1 (gRPC Ingest, three batches of 1000 over 20
//! ads) are read back exactly through nodes 2 and 3: gRPC Count (linearizable, and stale
//! once replicas caught up), HTTP `aggregated_count` (epoch ms, RFC 3339 and `window=`
//! ranges), and the ranking through gRPC Top and HTTP `/ads/popular`, ties broken by
//! `ad_id` ascending. Then node 3, made leader of a data group, is frozen (SIGSTOP) while a
//! batch is committed by nodes 1 and 2, and a linearizable Count through it right after
//! SIGCONT must already include the batch.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use adclick_proto::convert::format_timestamp_ms;
use adclick_proto::wire;
use adclick_tests::clicks::{check_response, describe, retry_rpc};
use adclick_tests::query::{between, count_request, expected_top};
use adclick_tests::{
    eventually, ingest_with_retry, now_ms, ClickGen, Cluster, ClusterOptions, RetryPolicy,
};
use rand::seq::SliceRandom;
use tonic::Code;

use crate::support::{
    check_counts, check_top, http_count, http_popular, range_since, wait_stale_counts, LIN,
    RETRY_BOUND, STALE,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_one_node_are_read_exactly_through_the_others() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let t0 = now_ms();
    let mut gen = ClickGen::new(20, 1);
    let ads = gen.ads();

    // Ad i gets 60 + 20 * (i % 10) clicks: 3000 in all, and every count is shared by two
    // ads (ad-0001 and ad-0011 have 60, ...), so the ranking exercises its tie-break.
    let mut plan: Vec<String> = ads
        .iter()
        .enumerate()
        .flat_map(|(i, ad)| std::iter::repeat_n(ad.clone(), 60 + 20 * (i % 10)))
        .collect();
    plan.shuffle(gen.rng());
    assert_eq!(plan.len(), 3000);

    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut via_node1 = vec![cluster.ingest(1)];
    for chunk in plan.chunks(1000) {
        let batch = gen.batch_for(chunk);
        let (resp, attempts) =
            ingest_with_retry(&mut via_node1, 0, &batch, &RetryPolicy::default())
                .await
                .expect("a batch is ingested through node 1");
        check_response(&batch, &resp).expect("the response matches the batch");
        assert_fresh_batch_acked(&resp, attempts, batch.len());
        for ad in chunk {
            *expected.entry(ad.clone()).or_insert(0) += 1;
        }
    }
    let range = range_since(t0);

    for node in [2, 3] {
        // Linearizable reads reflect every acknowledged write at once.
        check_counts(&cluster, node, &expected, range, "", LIN)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let lin = crate::support::counts(&cluster, node, &ads, range, "", LIN)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        for (ad, r) in &lin {
            assert_eq!(r.late, 0, "{ad}: no click was late");
        }
        // Stale reads converge to the same numbers.
        wait_stale_counts(&cluster, node, &expected, range, "").await;

        for n in [20, 5, 0] {
            check_top(&cluster, node, &expected, n, range, "", LIN)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
        }
        eventually(
            &format!("node {node}'s stale top 20"),
            crate::support::CATCH_UP,
            Duration::from_millis(200),
            || check_top(&cluster, node, &expected, 20, range, "", STALE),
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

        // HTTP: every ad's count over epoch-ms bounds.
        let http = cluster.http(node);
        for (ad, want) in &expected {
            let resp = http
                .get(&format!(
                    "/ads/{ad}/aggregated_count?from={}&to={}",
                    range.0, range.1
                ))
                .await
                .expect("HTTP aggregated_count answers");
            let (count, late) =
                http_count(&resp, ad).unwrap_or_else(|e| panic!("node {node}: {e}"));
            assert_eq!((count, late), (*want, 0), "node {node}: HTTP count of {ad}");
        }
        // RFC 3339 bounds, the last-M-minutes form and a stale read give the same count.
        let ad = &ads[9];
        let want = expected[ad];
        let rfc = http
            .get(&format!(
                "/ads/{ad}/aggregated_count?from={}&to={}",
                format_timestamp_ms(range.0),
                format_timestamp_ms(range.1)
            ))
            .await
            .expect("HTTP answers");
        assert_eq!(
            http_count(&rfc, ad).map(|c| c.0),
            Ok(want),
            "RFC 3339 range: {rfc:?}"
        );
        let window = http
            .get(&format!("/ads/{ad}/aggregated_count?window=60"))
            .await
            .expect("HTTP answers");
        assert_eq!(
            http_count(&window, ad).map(|c| c.0),
            Ok(want),
            "window=60: {window:?}"
        );
        eventually(
            "a stale HTTP count",
            crate::support::CATCH_UP,
            Duration::from_millis(200),
            || async {
                let r = http
                    .get(&format!(
                        "/ads/{ad}/aggregated_count?window=60&consistency=stale"
                    ))
                    .await
                    .map_err(|e| format!("{e:#}"))?;
                match http_count(&r, ad)? {
                    (c, _) if c == want => Ok(()),
                    other => Err(format!("got {other:?}, want {want}")),
                }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));

        // HTTP top-N.
        for (query, n) in [
            (format!("count=5&from={}&to={}", range.0, range.1), 5),
            ("count=20&window=60".to_owned(), 20),
        ] {
            let resp = http
                .get(&format!("/ads/popular?{query}"))
                .await
                .expect("HTTP popular answers");
            let rows = http_popular(&resp).unwrap_or_else(|e| panic!("node {node}: {e}"));
            assert_eq!(
                rows,
                expected_top(&expected, n),
                "node {node}: /ads/popular?{query}"
            );
        }
    }

    linearizable_read_through_a_node_that_missed_writes(&cluster, &mut gen, &mut expected).await;
}

/// Every click of a fresh batch is ACCEPTED; if the batch needed several attempts, an
/// earlier attempt may have been applied with its answer lost, and the retry then
/// correctly answers DUPLICATE for those clicks.
fn assert_fresh_batch_acked(resp: &wire::IngestResponse, attempts: u32, len: usize) {
    let tally = resp.tally.unwrap_or_default();
    if attempts == 1 {
        assert_eq!(
            tally,
            wire::Tally {
                accepted: len as u64,
                ..Default::default()
            },
            "every fresh click is accepted"
        );
    } else {
        assert_eq!(
            (tally.accepted + tally.duplicate, tally.late, tally.rejected),
            (len as u64, 0, 0),
            "every fresh click is acknowledged (ACCEPTED, or DUPLICATE after {attempts} \
             attempts): {tally:?}"
        );
    }
}

/// Linearizable Count through `node`, retried only while the node answers UNAVAILABLE
/// (bounded by [`RETRY_BOUND`]).
async fn lin_count_retrying_unavailable(
    cluster: &Cluster,
    node: u64,
    ad: &str,
    range: (i64, i64),
) -> wire::CountResponse {
    let deadline = Instant::now() + RETRY_BOUND;
    let mut q = cluster.query(node);
    loop {
        let req = count_request(ad, between(range.0, range.1), "", LIN);
        match q.count(req).await {
            Ok(r) => return r.into_inner(),
            Err(s) if s.code() == Code::Unavailable && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(s) => panic!("linearizable Count({ad}) via node {node}: {}", describe(&s)),
        }
    }
}

/// A linearizable read must reflect every write acknowledged before it started, even
/// through a node that was cut off (SIGSTOP) while the writes were committed, and that
/// wakes up still believing it leads a group: its read barrier must find out it no longer
/// leads and follow the new leader, not answer from its own stale state.
async fn linearizable_read_through_a_node_that_missed_writes(
    cluster: &Cluster,
    gen: &mut ClickGen,
    expected: &mut BTreeMap<String, u64>,
) {
    const CUT_OFF: u64 = 3;
    let group = 1;
    // Make the node lead a data group, so it wakes up as a stale leader.
    let (moved, _) = retry_rpc(RETRY_BOUND, || {
        let mut admin = cluster.admin(1);
        async move {
            admin
                .transfer_leader(wire::TransferLeaderRequest {
                    group_id: group,
                    to_node_id: CUT_OFF,
                })
                .await
        }
    })
    .await
    .unwrap_or_else(|s| panic!("TransferLeader of group {group} to node {CUT_OFF}: {s}"));
    println!("TransferLeader: {:?}", moved.into_inner());
    eventually(
        &format!("node {CUT_OFF} to lead group {group}"),
        Duration::from_secs(10),
        Duration::from_millis(50),
        || async {
            match cluster.leader_of(group).await {
                Ok(Some(CUT_OFF)) => Ok(()),
                other => Err(format!("leader {other:?}")),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    let status = cluster.status().await.expect("ClusterStatus answers");
    let led: Vec<u64> = status
        .groups
        .iter()
        .filter(|g| g.group_id != 0 && g.leader_id == Some(CUT_OFF))
        .map(|g| g.group_id)
        .collect();
    println!("node {CUT_OFF} leads data groups {led:?} when it is frozen");

    // Two clicks per ad, so every group gets new entries, the node's groups included.
    let ads: Vec<String> = expected.keys().cloned().collect();
    let plan: Vec<&String> = ads.iter().flat_map(|a| [a, a]).collect();
    let batch = gen.batch_for(&plan);
    cluster.pause(CUT_OFF).expect("SIGSTOP node 3");
    // Nodes 1 and 2 commit the batch once the groups node 3 led have elected a new leader.
    let written =
        ingest_with_retry(&mut [cluster.ingest(1)], 0, &batch, &RetryPolicy::default()).await;
    cluster.resume(CUT_OFF).expect("SIGCONT node 3");
    let (resp, attempts) = written.unwrap_or_else(|e| panic!("ingest with node 3 frozen: {e}"));
    check_response(&batch, &resp).expect("the response matches the batch");
    assert_fresh_batch_acked(&resp, attempts, batch.len());
    println!("with node {CUT_OFF} frozen, the batch was committed after {attempts} attempts");
    for ad in &plan {
        *expected.get_mut(*ad).expect("a known ad") += 1;
    }

    // At once, before node 3 heard from anyone: linearizable reads through it.
    let range = (now_ms() - 60 * 60_000, now_ms() + 120_000);
    let mut diffs = Vec::new();
    for (ad, want) in expected.iter() {
        let got = lin_count_retrying_unavailable(cluster, CUT_OFF, ad, range).await;
        if got.count != *want {
            diffs.push(format!(
                "{ad}: want {want}, got {} ({:?})",
                got.count, got.position
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "linearizable counts through node {CUT_OFF} right after SIGCONT miss acknowledged \
         writes (node 3 led groups {led:?} when frozen): {}",
        diffs.join(", ")
    );
}
