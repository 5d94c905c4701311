//! Issue test 4, first half: every click gets the outcome the contract names, and counts
//! follow the outcomes. A resent batch is all DUPLICATE; an event id twice in one batch is
//! ACCEPTED then DUPLICATE; clicks far older than the watermark are LATE and show in
//! Count's `late`, not in `count`; clicks 10 minutes in the future are REJECTED /
//! FUTURE_EVENT; a click with an invalid field is REJECTED / INVALID without failing its
//! batch. The same over HTTP `POST /clicks` (JSON array and NDJSON).

use std::collections::BTreeMap;

use adclick_proto::convert::format_timestamp_ms;
use adclick_proto::wire;
use adclick_tests::clicks::{check_response, outcomes};
use adclick_tests::{ingest_with_retry, now_ms, ClickGen, Cluster, ClusterOptions, RetryPolicy};
use bytes::Bytes;
use tonic::transport::Channel;

use adclick_proto::wire::grpc::IngestClient;
use wire::Outcome::{Accepted, Duplicate, Late, Rejected};

use crate::support::{check_counts, counts, expect_http, http_count, with_zeros, LIN};

const MINUTE: i64 = 60_000;

/// Sends `batch` (with retries) and returns the checked response and the attempts made.
async fn send(
    clients: &mut [IngestClient<Channel>],
    batch: &[wire::Click],
) -> (wire::IngestResponse, u32) {
    let (resp, attempts) = ingest_with_retry(clients, 0, batch, &RetryPolicy::default())
        .await
        .expect("the batch is answered");
    check_response(batch, &resp).expect("the response matches the batch");
    (resp, attempts)
}

/// Asserts `resp`'s outcomes are `want`. When the batch needed more than one attempt, an
/// earlier attempt may have been applied with its answer lost: the retry then answers
/// DUPLICATE for clicks the first attempt accepted, so ACCEPTED in `want` also admits
/// DUPLICATE.
fn assert_outcomes(resp: &wire::IngestResponse, attempts: u32, want: &[wire::Outcome], what: &str) {
    let got = outcomes(resp);
    let ok = got.len() == want.len()
        && got
            .iter()
            .zip(want)
            .all(|(g, w)| g == w || (attempts > 1 && *w == Accepted && *g == Duplicate));
    assert!(
        ok,
        "{what}: want {want:?}, got {got:?} ({attempts} attempts): {resp:?}"
    );
}

fn click_json(c: &wire::Click, timestamp: serde_json::Value) -> serde_json::Value {
    serde_json::json!({
        "event_id": String::from_utf8_lossy(&c.event_id),
        "ad_id": c.ad_id,
        "timestamp": timestamp,
        "user_id": c.user_id,
        "ip": c.ip,
        "country": c.country,
    })
}

fn tally_of(resp: &adclick_tests::HttpResponse) -> [u64; 4] {
    assert_eq!(
        resp.status, 200,
        "POST /clicks: {} {}",
        resp.status, resp.body
    );
    let v = resp.json().expect("JSON answer");
    ["accepted", "duplicate", "late", "rejected"].map(|k| {
        v[k].as_u64()
            .unwrap_or_else(|| panic!("POST /clicks answer lacks {k:?}: {v}"))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_click_gets_its_outcome_and_is_counted_at_most_once() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    let mut gen = ClickGen::new(4, 4);
    let ads = gen.ads();
    let mut clients = vec![cluster.ingest(1), cluster.ingest(2), cluster.ingest(3)];
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut count = |ad: &str, n: u64| *expected.entry(ad.to_owned()).or_insert(0) += n;

    // Current clicks: 50 per ad. They set each group's watermark to about now - 5 min.
    let plan: Vec<&String> = ads
        .iter()
        .flat_map(|a| std::iter::repeat_n(a, 50))
        .collect();
    let batch = gen.batch_for(&plan);
    let (resp, attempts) = send(&mut clients, &batch).await;
    assert_outcomes(
        &resp,
        attempts,
        &vec![Accepted; batch.len()],
        "fresh clicks",
    );
    for ad in &ads {
        count(ad, 50);
    }

    // The same batch again (through another node): every click is a duplicate.
    let (resp, _) = send(&mut clients[1..], &batch).await;
    assert_eq!(
        resp.tally,
        Some(wire::Tally {
            duplicate: batch.len() as u64,
            ..Default::default()
        }),
        "a resent batch is all DUPLICATE"
    );

    // One event id twice in a batch, and a batch mixing a fresh and an old click.
    let c = gen.click(&ads[0], now_ms());
    let (resp, attempts) = send(&mut clients, &[c.clone(), c]).await;
    assert_outcomes(
        &resp,
        attempts,
        &[Accepted, Duplicate],
        "same id twice in a batch",
    );
    count(&ads[0], 1);
    let fresh = gen.click(&ads[1], now_ms());
    let (resp, attempts) = send(&mut clients, &[fresh, batch[0].clone()]).await;
    assert_outcomes(
        &resp,
        attempts,
        &[Accepted, Duplicate],
        "fresh + resent click",
    );
    count(&ads[1], 1);

    // Late: 30 minutes old, far behind the watermark of ads[0]'s group.
    let late: Vec<wire::Click> = (0..3)
        .map(|_| gen.click(&ads[0], now_ms() - 30 * MINUTE))
        .collect();
    let (resp, _) = send(&mut clients, &late).await;
    assert_eq!(
        outcomes(&resp),
        vec![Late; 3],
        "clicks older than the watermark: {resp:?}"
    );

    // Future: 10 minutes ahead of the leader's clock.
    let future = gen.click(&ads[1], now_ms() + 10 * MINUTE);
    let (resp, _) = send(&mut clients, &[future]).await;
    assert_eq!(outcomes(&resp), vec![Rejected]);
    assert_eq!(
        resp.results[0].reject_reason(),
        wire::RejectReason::FutureEvent,
        "a far-future click: {resp:?}"
    );

    // Invalid fields: each such click is rejected on its own, the others are ingested.
    let now = now_ms();
    let good1 = gen.click(&ads[2], now);
    let good2 = gen.click(&ads[3], now);
    let mut bad_ip = gen.click(&ads[2], now);
    bad_ip.ip = "1.2.3".into();
    let mut no_id = gen.click(&ads[2], now);
    no_id.event_id = Bytes::new();
    let mut bad_ad = gen.click(&ads[2], now);
    bad_ad.ad_id = "bad ad".into();
    let mut no_time = gen.click(&ads[2], now);
    no_time.event_time_ms = 0;
    let mut no_ip = gen.click(&ads[2], now);
    no_ip.ip = String::new();
    let (resp, attempts) = send(
        &mut clients,
        &[good1, bad_ip, no_id, bad_ad, no_time, no_ip, good2],
    )
    .await;
    assert_outcomes(
        &resp,
        attempts,
        &[
            Accepted, Rejected, Rejected, Rejected, Rejected, Rejected, Accepted,
        ],
        "invalid clicks in a batch",
    );
    for r in &resp.results[1..6] {
        assert_eq!(r.reject_reason(), wire::RejectReason::Invalid, "{r:?}");
        assert!(
            !r.message.is_empty(),
            "an INVALID rejection explains itself: {r:?}"
        );
    }
    count(&ads[2], 1);
    count(&ads[3], 1);

    // HTTP POST /clicks: a JSON array (RFC 3339 and epoch-ms timestamps), the same array
    // again, NDJSON, and an array with one invalid click.
    let http = cluster.http(2);
    let now = now_ms();
    let a = gen.click(&ads[3], now);
    let b = gen.click(&ads[3], now);
    let c = gen.click(&ads[3], now);
    let array = serde_json::Value::Array(vec![
        click_json(&a, format_timestamp_ms(now).into()),
        click_json(&b, now.into()),
        click_json(&c, now.into()),
    ])
    .to_string();
    let resp = http
        .post("/clicks", "application/json", array.as_bytes())
        .await
        .expect("HTTP answers");
    assert_eq!(tally_of(&resp), [3, 0, 0, 0], "JSON array: {}", resp.body);
    let resp = http
        .post("/clicks", "application/json", array.as_bytes())
        .await
        .expect("HTTP answers");
    assert_eq!(
        tally_of(&resp),
        [0, 3, 0, 0],
        "the same array again: {}",
        resp.body
    );
    count(&ads[3], 3);
    let d = gen.click(&ads[0], now);
    let e = gen.click(&ads[0], now);
    let ndjson = format!(
        "{}\n{}\n",
        click_json(&d, now.into()),
        click_json(&e, now.into())
    );
    let resp = http
        .post("/clicks", "application/x-ndjson", ndjson.as_bytes())
        .await
        .expect("HTTP answers");
    assert_eq!(tally_of(&resp), [2, 0, 0, 0], "NDJSON: {}", resp.body);
    count(&ads[0], 2);
    let f = gen.click(&ads[1], now);
    let mut g = gen.click(&ads[1], now);
    g.ip = "not-an-ip".into();
    let mixed =
        serde_json::Value::Array(vec![click_json(&f, now.into()), click_json(&g, now.into())])
            .to_string();
    let resp = http
        .post("/clicks", "application/json", mixed.as_bytes())
        .await
        .expect("HTTP answers");
    assert_eq!(
        tally_of(&resp),
        [1, 0, 0, 1],
        "one invalid click of two: {}",
        resp.body
    );
    count(&ads[1], 1);
    expect_http(&resp, &[200], "mixed batch");

    // Counts: every accepted click once; late clicks only in `late`. The range reaches past
    // the rejected future click (now + 10 min), so counting it would show.
    let range = (now_ms() - 40 * MINUTE, now_ms() + 15 * MINUTE);
    let expected = with_zeros(&ads, &expected);
    for node in cluster.ids() {
        check_counts(&cluster, node, &expected, range, "", LIN)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let got = counts(&cluster, node, &ads, range, "", LIN)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let late: Vec<u64> = ads.iter().map(|a| got[a].late).collect();
        assert_eq!(late, vec![3, 0, 0, 0], "node {node}: late tallies per ad");
    }
    let resp = cluster
        .http(3)
        .get(&format!(
            "/ads/{}/aggregated_count?from={}&to={}",
            ads[0], range.0, range.1
        ))
        .await
        .expect("HTTP answers");
    assert_eq!(
        http_count(&resp, &ads[0]),
        Ok((expected[&ads[0]], 3)),
        "{resp:?}"
    );
}
