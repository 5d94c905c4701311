//! The operator's view: gRPC health and server reflection (what `grpcurl` needs to list
//! and call the services without .proto files), and the metric families `/metrics` is
//! documented to expose.

use std::time::Duration;

use adclick_tests::{ingest_with_retry, ClickGen, Cluster, ClusterOptions, RetryPolicy};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reflection_and_metrics_serve_operators() {
    let cluster = Cluster::start(ClusterOptions::default())
        .await
        .expect("cluster starts");

    let mut health = HealthClient::new(cluster.channel(2));
    for service in [
        "",
        "adclick.v1.Ingest",
        "adclick.v1.Query",
        "adclick.v1.Admin",
    ] {
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap_or_else(|e| panic!("health of {service:?}: {e}"))
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service:?}");
    }

    // grpcurl's `list`: one ListServices request on the v1 reflection stream.
    let mut reflection = ServerReflectionClient::new(cluster.channel(3));
    let answer = reflect(&mut reflection, MessageRequest::ListServices(String::new())).await;
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("expected a service list, got {answer:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in [
        "adclick.v1.Ingest",
        "adclick.v1.Query",
        "adclick.v1.Admin",
        "grpc.health.v1.Health",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    // grpcurl's `describe`: the file defining a service resolves.
    let answer = reflect(
        &mut reflection,
        MessageRequest::FileContainingSymbol("adclick.v1.Query".into()),
    )
    .await;
    assert!(
        matches!(
            answer.message_response,
            Some(MessageResponse::FileDescriptorResponse(ref f)) if !f.file_descriptor_proto.is_empty()
        ),
        "expected the descriptor of adclick.v1.Query, got {answer:?}"
    );

    // Metrics after some traffic.
    let mut gen = ClickGen::new(4, 7);
    let batch = gen.batch(50);
    let (_, attempts) =
        ingest_with_retry(&mut [cluster.ingest(1)], 0, &batch, &RetryPolicy::default())
            .await
            .expect("a batch is ingested");
    let resp = cluster.http(1).get("/metrics").await.expect("GET /metrics");
    let body = resp.body;
    assert_eq!(resp.status, 200, "{body}");
    for family in [
        "adclick_ingest_clicks_total",
        "adclick_requests_total",
        "adclick_request_duration_seconds",
        "adclick_raft_is_leader",
        "adclick_raft_applied_index",
        "adclick_raft_apply_lag",
        "adclick_watermark_delay_seconds",
    ] {
        assert!(
            body.contains(family),
            "{family} missing from /metrics:\n{body}"
        );
    }
    // Whole lines: a substring test for `... 50` would also match `... 500`.
    let value = |outcome: &str| -> Option<u64> {
        let prefix = format!("adclick_ingest_clicks_total{{node=\"1\",outcome=\"{outcome}\"}} ");
        body.lines()
            .find_map(|l| l.strip_prefix(prefix.as_str()))
            .map(|v| {
                v.parse()
                    .unwrap_or_else(|_| panic!("{prefix}{v}: not a count:\n{body}"))
            })
    };
    if attempts == 1 {
        assert!(
            body.lines()
                .any(|l| l == "adclick_ingest_clicks_total{node=\"1\",outcome=\"accepted\"} 50"),
            "node 1 coordinated 50 accepted clicks:\n{body}"
        );
    } else {
        // An attempt applied with its answer lost makes the retry answer DUPLICATE.
        let (accepted, duplicate) = (value("accepted"), value("duplicate"));
        assert!(
            accepted.is_some_and(|a| a <= 50)
                && accepted.unwrap_or(0) + duplicate.unwrap_or(0) >= 50,
            "node 1 coordinated at most 50 accepted clicks, and 50 acknowledged ones over \
             {attempts} attempts (accepted {accepted:?}, duplicate {duplicate:?}):\n{body}"
        );
    }
}

/// Bound on waiting for one message of a reflection stream.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// One request on a reflection stream and its first answer, bounded in time.
async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> tonic_reflection::pb::v1::ServerReflectionResponse {
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream_once(request))
        .await
        .expect("reflection answers")
        .into_inner();
    tokio::time::timeout(ANSWER_TIMEOUT, answers.message())
        .await
        .expect("a reflection answer in time")
        .expect("a reflection answer")
        .expect("one message")
}

/// A request stream of one message.
fn tokio_stream_once<T: Send + 'static>(item: T) -> impl futures::Stream<Item = T> {
    futures::stream::once(std::future::ready(item))
}
