//! Issue test 1: clicks written through node 1 (gRPC Ingest, three batches of 1000 over 20
//! ads) are read back exactly through nodes 2 and 3: gRPC Count (linearizable, and stale
//! once replicas caught up), HTTP `aggregated_count` (epoch ms, RFC 3339 and `window=`
//! ranges), and the ranking through gRPC Top and HTTP `/ads/popular`, ties broken by
//! `ad_id` ascending.

use std::collections::BTreeMap;
use std::time::Duration;

use adclick_proto::convert::format_timestamp_ms;
use adclick_proto::wire;
use adclick_tests::clicks::check_response;
use adclick_tests::query::expected_top;
use adclick_tests::{
    eventually, ingest_with_retry, now_ms, ClickGen, Cluster, ClusterOptions, RetryPolicy,
};
use rand::seq::SliceRandom;

use crate::support::{
    check_counts, check_top, http_count, http_popular, range_since, wait_stale_counts, LIN, STALE,
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
        let (resp, _) = ingest_with_retry(&mut via_node1, 0, &batch, &RetryPolicy::default())
            .await
            .expect("a batch is ingested through node 1");
        check_response(&batch, &resp).expect("the response matches the batch");
        assert_eq!(
            resp.tally,
            Some(wire::Tally {
                accepted: 1000,
                ..Default::default()
            }),
            "every fresh click is accepted"
        );
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
}
