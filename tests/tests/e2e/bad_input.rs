//! Issue test 4, second half: malformed requests are refused with a reason — gRPC
//! INVALID_ARGUMENT (NOT_FOUND for an unknown filter) with a message, HTTP 4xx with a JSON
//! `{"error": ...}` body (404 for an unknown route) — never INTERNAL or a 5xx, and every
//! node is still up and serving afterwards (Top over gRPC, Prometheus text on `/metrics`).

use std::time::Duration;

use adclick_proto::wire;
use adclick_tests::query::{between, count_request, last_minutes, top_request};
use adclick_tests::{ingest_with_retry, now_ms, ClickGen, Cluster, ClusterOptions, RetryPolicy};
use tonic::Code;

use crate::support::{expect_code, expect_http, LIN};

const INVALID: &[Code] = &[Code::InvalidArgument];
const UNKNOWN_FILTER: &[Code] = &[Code::NotFound, Code::InvalidArgument];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_refused_with_a_reason_and_nodes_stay_up() {
    let mut cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    // Some data, so queries have groups with state to answer from.
    let mut gen = ClickGen::new(4, 5);
    let batch = gen.batch(100);
    ingest_with_retry(&mut [cluster.ingest(1)], 0, &batch, &RetryPolicy::default())
        .await
        .expect("a valid batch is ingested");

    let mut q = cluster.query(2);
    let hour = || last_minutes(60);
    let count = |ad: &str| count_request(ad, last_minutes(60), "", LIN);
    expect_code(
        q.count(count("")).await,
        INVALID,
        "Count with an empty ad_id",
    );
    expect_code(
        q.count(count("bad ad")).await,
        INVALID,
        "Count with a space in ad_id",
    );
    expect_code(
        q.count(count(&"a".repeat(65))).await,
        INVALID,
        "Count with a 65-byte ad_id",
    );
    let mut no_range = count("ad-0001");
    no_range.range = None;
    expect_code(q.count(no_range).await, INVALID, "Count without a range");
    let empty_range = wire::CountRequest {
        range: Some(wire::TimeRange { range: None }),
        ..count("ad-0001")
    };
    expect_code(
        q.count(empty_range).await,
        INVALID,
        "Count with an empty TimeRange",
    );
    for minutes in [0, 527_041] {
        let req = count_request("ad-0001", last_minutes(minutes), "", LIN);
        expect_code(
            q.count(req).await,
            INVALID,
            &format!("Count over the last {minutes} minutes"),
        );
    }
    let now = now_ms();
    let backwards = count_request("ad-0001", between(now, now - 60_000), "", LIN);
    expect_code(q.count(backwards).await, INVALID, "Count with to < from");
    let bad_consistency = wire::CountRequest {
        consistency: 7,
        ..count("ad-0001")
    };
    expect_code(
        q.count(bad_consistency).await,
        INVALID,
        "Count with an unknown consistency",
    );
    let unknown_filter = count_request("ad-0001", hour(), "nosuch", LIN);
    expect_code(
        q.count(unknown_filter).await,
        UNKNOWN_FILTER,
        "Count under an unknown filter",
    );
    let bad_filter_name = count_request("ad-0001", hour(), "bad name!", LIN);
    expect_code(
        q.count(bad_filter_name).await,
        INVALID,
        "Count under an invalid filter name",
    );

    expect_code(
        q.top(top_request(1001, hour(), "", LIN)).await,
        INVALID,
        "Top with n = 1001",
    );
    let mut top_no_range = top_request(10, hour(), "", LIN);
    top_no_range.range = None;
    expect_code(q.top(top_no_range).await, INVALID, "Top without a range");
    expect_code(
        q.top(top_request(10, hour(), "nosuch", LIN)).await,
        UNKNOWN_FILTER,
        "Top under an unknown filter",
    );

    let mut admin = cluster.admin(3);
    let create = |name: &str, expr: &str| wire::CreateFilterRequest {
        name: name.into(),
        expr: expr.into(),
    };
    expect_code(
        admin.create_filter(create("broken", "country == ")).await,
        INVALID,
        "CreateFilter with a syntax error",
    );
    expect_code(
        admin
            .create_filter(create("broken", "ip starts_with \"10.\""))
            .await,
        INVALID,
        "CreateFilter with a type error",
    );
    expect_code(
        admin
            .create_filter(create("bad name", "country = \"USA\""))
            .await,
        INVALID,
        "CreateFilter with an invalid name",
    );
    expect_code(
        admin.create_filter(create("", "country = \"USA\"")).await,
        INVALID,
        "CreateFilter with an empty name",
    );
    expect_code(
        admin
            .drop_filter(wire::DropFilterRequest {
                name: "bad name".into(),
            })
            .await,
        INVALID,
        "DropFilter with an invalid name",
    );

    // HTTP.
    for node in cluster.ids() {
        let http = cluster.http(node);
        for (method, path, body, want, what) in [
            (
                "POST",
                "/clicks",
                "not json",
                &[400][..],
                "POST /clicks with a body that is not JSON",
            ),
            (
                "POST",
                "/clicks",
                "[{\"event_id\": \"x\", \"ad_id\"",
                &[400],
                "POST /clicks with truncated JSON",
            ),
            (
                "POST",
                "/clicks",
                "{\"clicks\": 5}",
                &[400],
                "POST /clicks with JSON that is no click",
            ),
            (
                "GET",
                "/ads/ad-0001/aggregated_count?from=yesterday&to=now",
                "",
                &[400],
                "aggregated_count with a bad timestamp",
            ),
            (
                "GET",
                "/ads/ad-0001/aggregated_count?from=0&to=abc",
                "",
                &[400],
                "aggregated_count with a bad 'to'",
            ),
            (
                "GET",
                "/ads/ad-0001/aggregated_count?window=abc",
                "",
                &[400],
                "aggregated_count with window=abc",
            ),
            (
                "GET",
                "/ads/ad-0001/aggregated_count?window=0",
                "",
                &[400],
                "aggregated_count with window=0",
            ),
            (
                "GET",
                "/ads/bad%20ad/aggregated_count?window=10",
                "",
                &[400],
                "aggregated_count of an invalid ad id",
            ),
            (
                "GET",
                "/ads/ad-0001/aggregated_count?window=10&filter=nosuch",
                "",
                &[400, 404],
                "aggregated_count under an unknown filter",
            ),
            (
                "GET",
                "/ads/ad-0001/aggregated_count?window=10&consistency=bogus",
                "",
                &[400],
                "aggregated_count with consistency=bogus",
            ),
            (
                "GET",
                "/ads/popular?count=abc&window=10",
                "",
                &[400],
                "popular with count=abc",
            ),
            (
                "GET",
                "/ads/popular?count=5000&window=10",
                "",
                &[400],
                "popular with count=5000",
            ),
            (
                "GET",
                "/ads/popular?count=5&window=-3",
                "",
                &[400],
                "popular with window=-3",
            ),
            ("GET", "/nope", "", &[404], "an unknown route"),
            (
                "GET",
                "/ads/ad-0001",
                "",
                &[404],
                "an unknown route under /ads",
            ),
        ] {
            let resp = http
                .request(method, path, Some("application/json"), body.as_bytes())
                .await
                .unwrap_or_else(|e| panic!("node {node}: {what}: {e:#}"));
            assert!(
                resp.status < 500,
                "node {node}: {what}: HTTP {} {}",
                resp.status,
                resp.body
            );
            expect_http(&resp, want, &format!("node {node}: {what}"));
        }

        // A click with an unparseable timestamp: refused as a whole (400) or rejected on
        // its own (200, the valid click accepted); never a 5xx.
        let now = now_ms();
        let good = gen.click("ad-0001", now);
        let body = serde_json::json!([
            {"event_id": String::from_utf8_lossy(&good.event_id), "ad_id": "ad-0001",
             "timestamp": now, "user_id": "u", "ip": "10.0.0.1", "country": "USA"},
            {"event_id": format!("bad-ts-{node}"), "ad_id": "ad-0001",
             "timestamp": "yesterday", "user_id": "u", "ip": "10.0.0.1", "country": "USA"},
        ])
        .to_string();
        let resp = http
            .post("/clicks", "application/json", body.as_bytes())
            .await
            .expect("HTTP answers");
        match resp.status {
            400 => expect_http(&resp, &[400], "a click with a bad timestamp"),
            200 => {
                let v = resp.json().expect("JSON answer");
                assert_eq!(
                    (v["accepted"].as_u64(), v["rejected"].as_u64()),
                    (Some(1), Some(1)),
                    "a click with a bad timestamp is rejected on its own: {v}"
                );
            }
            s => panic!("a click with a bad timestamp: HTTP {s} {}", resp.body),
        }
    }

    // Every node is still up and ready, and still serves.
    cluster.check_alive().expect("no node died");
    cluster
        .wait_ready(Duration::from_secs(10))
        .await
        .expect("every node is still ready");
    for node in cluster.ids() {
        let metrics = cluster
            .http(node)
            .get("/metrics")
            .await
            .expect("HTTP answers");
        assert_eq!(
            metrics.status, 200,
            "node {node}: GET /metrics: {}",
            metrics.body
        );
        assert!(
            metrics
                .body
                .lines()
                .any(|l| !l.starts_with('#') && !l.trim().is_empty()),
            "node {node}: /metrics has no samples: {:?}",
            metrics.body
        );
        cluster
            .query(node)
            .top(top_request(10, hour(), "", LIN))
            .await
            .unwrap_or_else(|s| panic!("node {node} still answers Top: {s}"));
    }
}

/// Sends `body` as the raw protobuf of a unary call to `path`, bypassing the stubs'
/// encoder, and returns the status.
async fn raw_call(
    channel: tonic::transport::Channel,
    path: &'static str,
    body: Vec<u8>,
) -> tonic::Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    if let Err(e) = grpc.ready().await {
        return tonic::Status::unavailable(format!("not ready: {e}"));
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    match grpc
        .unary::<Vec<u8>, Vec<u8>, RawCodec>(tonic::Request::new(body), path, RawCodec)
        .await
    {
        Ok(_) => tonic::Status::ok("accepted"),
        Err(s) => s,
    }
}

/// A codec that sends bytes as they are and returns the answer's bytes.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// A request that is not valid protobuf — a string field holding bytes that are not UTF-8,
/// or a truncated field — is INVALID_ARGUMENT naming the problem, not tonic's INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_protobuf_is_invalid_argument() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");
    // IngestRequest { clicks: [Click { ad_id: 0xff }] }: field 1 (message, 3 bytes) holding
    // field 2 (string, 1 byte) = 0xff.
    let not_utf8 = vec![0x0a, 0x03, 0x12, 0x01, 0xff];
    // CountRequest whose ad_id (field 1) claims 10 bytes but has 2.
    let truncated = vec![0x0a, 0x0a, b'a', b'd'];
    for (path, body, what) in [
        (
            "/adclick.v1.Ingest/Ingest",
            not_utf8,
            "Ingest with a non-UTF-8 ad_id",
        ),
        (
            "/adclick.v1.Query/Count",
            truncated,
            "Count with a truncated field",
        ),
    ] {
        let status = raw_call(cluster.channel(1), path, body).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
        assert!(
            status.message().contains("malformed protobuf"),
            "{what}: the message says why: {status:?}"
        );
    }
}
