//! Issue test 5: filters registered before ingestion (`country = "USA"`, and
//! `country = "USA" and ip in 10.0.0.0/8`) count exactly the matching clicks — compared
//! with a local recount — for Count and Top, over gRPC and HTTP, on every node.
//! CreateFilter is idempotent for the same expression and refuses another one under the
//! same name; ListFilters shows the filters; DropFilter removes one (and says whether it
//! existed) without disturbing the other.

use std::collections::BTreeMap;

use adclick_proto::wire;
use adclick_tests::clicks::retry_rpc;
use adclick_tests::query::{between, count_request, expected_top};
use adclick_tests::{ingest_with_retry, now_ms, ClickGen, Cluster, ClusterOptions, RetryPolicy};
use tonic::Code;

use crate::support::{
    check_counts, check_top, expect_code, http_count, http_popular, range_since, with_zeros, LIN,
    RETRY_BOUND,
};

fn create(name: &str, expr: &str) -> wire::CreateFilterRequest {
    wire::CreateFilterRequest {
        name: name.into(),
        expr: expr.into(),
    }
}

async fn filter_names(cluster: &Cluster, node: u64) -> Vec<String> {
    let admin = cluster.admin(node);
    retry_rpc(RETRY_BOUND, || {
        let mut admin = admin.clone();
        async move { admin.list_filters(wire::ListFiltersRequest {}).await }
    })
    .await
    .expect("ListFilters answers")
    .0
    .into_inner()
    .filters
    .into_iter()
    .map(|f| f.name)
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_counts_exactly_the_matching_clicks() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let usa = "country = \"USA\"";
    let usp = "country = \"USA\" and ip in 10.0.0.0/8";
    let mut admin = cluster.admin(2);
    let created = retry_rpc(RETRY_BOUND, || {
        let mut admin = admin.clone();
        async move { admin.create_filter(create("usa", usa)).await }
    })
    .await
    .expect("CreateFilter usa")
    .0
    .into_inner()
    .filter
    .expect("the response carries the filter");
    assert_eq!(created.name, "usa");
    assert!(created.expr.contains("USA"), "{created:?}");
    admin
        .create_filter(create("usa", usa))
        .await
        .expect("the same filter again succeeds");
    expect_code(
        admin
            .create_filter(create("usa", "country = \"CAN\""))
            .await,
        &[Code::AlreadyExists],
        "another expression under a taken name",
    );
    retry_rpc(RETRY_BOUND, || {
        let mut admin = admin.clone();
        async move { admin.create_filter(create("us_private", usp)).await }
    })
    .await
    .expect("CreateFilter us_private");
    for node in cluster.ids() {
        assert_eq!(
            filter_names(&cluster, node).await,
            vec!["us_private".to_owned(), "usa".to_owned()],
            "node {node}: ListFilters, by name"
        );
    }

    let t0 = now_ms();
    let mut gen = ClickGen::new(20, 5);
    let ads = gen.ads();
    let mut all = BTreeMap::new();
    let mut in_usa = BTreeMap::new();
    let mut in_usp = BTreeMap::new();
    let mut via_node1 = vec![cluster.ingest(1)];
    for _ in 0..2 {
        let batch = gen.batch(1000);
        let (resp, attempts) =
            ingest_with_retry(&mut via_node1, 0, &batch, &RetryPolicy::default())
                .await
                .expect("the batch is ingested");
        let tally = resp.tally.unwrap_or_default();
        if attempts == 1 {
            assert_eq!(
                tally.accepted, 1000,
                "every fresh click is accepted: {tally:?}"
            );
        } else {
            // An earlier attempt may have been applied with its answer lost: the retry
            // then answers DUPLICATE for the clicks it accepted.
            assert_eq!(
                tally.accepted + tally.duplicate,
                1000,
                "every fresh click is acknowledged after {attempts} attempts: {tally:?}"
            );
        }
        for c in &batch {
            *all.entry(c.ad_id.clone()).or_insert(0u64) += 1;
            if c.country == "USA" {
                *in_usa.entry(c.ad_id.clone()).or_insert(0u64) += 1;
                if c.ip.starts_with("10.") {
                    *in_usp.entry(c.ad_id.clone()).or_insert(0u64) += 1;
                }
            }
        }
    }
    let (all, in_usa, in_usp) = (
        with_zeros(&ads, &all),
        with_zeros(&ads, &in_usa),
        with_zeros(&ads, &in_usp),
    );
    assert!(
        in_usa.values().sum::<u64>() < 1000,
        "the filter must leave clicks out"
    );

    let range = range_since(t0);
    for node in cluster.ids() {
        for (filter, expected) in [("", &all), ("usa", &in_usa), ("us_private", &in_usp)] {
            check_counts(&cluster, node, expected, range, filter, LIN)
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            for n in [20, 5] {
                check_top(&cluster, node, expected, n, range, filter, LIN)
                    .await
                    .unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }
    let http = cluster.http(3);
    for ad in &ads {
        let resp = http
            .get(&format!(
                "/ads/{ad}/aggregated_count?from={}&to={}&filter=usa",
                range.0, range.1
            ))
            .await
            .expect("HTTP answers");
        assert_eq!(
            http_count(&resp, ad).map(|c| c.0),
            Ok(in_usa[ad]),
            "HTTP count of {ad} under usa"
        );
    }
    let resp = http
        .get(&format!(
            "/ads/popular?count=10&from={}&to={}&filter=us_private",
            range.0, range.1
        ))
        .await
        .expect("HTTP answers");
    assert_eq!(
        http_popular(&resp),
        Ok(expected_top(&in_usp, 10)),
        "HTTP popular under us_private"
    );

    // Dropping a filter removes it (and only it).
    let dropped = retry_rpc(RETRY_BOUND, || {
        let mut admin = admin.clone();
        async move {
            admin
                .drop_filter(wire::DropFilterRequest { name: "usa".into() })
                .await
        }
    })
    .await
    .expect("DropFilter usa")
    .0
    .into_inner();
    assert!(dropped.existed, "usa existed");
    for node in cluster.ids() {
        assert_eq!(
            filter_names(&cluster, node).await,
            vec!["us_private".to_owned()],
            "node {node}: ListFilters after the drop"
        );
        let req = count_request(&ads[0], between(range.0, range.1), "usa", LIN);
        expect_code(
            cluster.query(node).count(req).await,
            &[Code::NotFound, Code::InvalidArgument],
            "Count under a dropped filter",
        );
    }
    let again = admin
        .drop_filter(wire::DropFilterRequest { name: "usa".into() })
        .await
        .expect("dropping again succeeds")
        .into_inner();
    assert!(!again.existed, "usa no longer exists");
    check_counts(&cluster, 1, &in_usp, range, "us_private", LIN)
        .await
        .unwrap_or_else(|e| panic!("after dropping usa: {e}"));
}
