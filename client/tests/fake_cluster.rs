//! The client against a fake node that answers every click with its own event id (as a
//! rejection message), so a result given to the wrong click is caught. The node also
//! misbehaves on purpose: it refuses some requests as UNAVAILABLE (outcome unknown), once
//! says the shard map is stale, and answers with the map's three groups all led by itself.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adclick_client::model::{AdId, Click, Outcome, RejectReason};
use adclick_client::{Client, ClientConfig, Producer, ProducerConfig};
use adclick_proto::convert::stale_shard_map;
use adclick_proto::wire::{self, grpc};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

/// What the fake node saw and how it misbehaves.
#[derive(Debug, Default)]
struct Fake {
    addr: String,
    requests: AtomicU64,
    /// Every 3rd ingest request fails with UNAVAILABLE (before "applying" anything).
    flaky: bool,
    /// The first ingest request is refused as routed with a stale map.
    stale_once: AtomicU64,
    /// Every ingest request is refused so (nodes that disagree on the map).
    stale_always: bool,
    /// Attempts per event id, and the largest batch seen.
    sent: Mutex<HashMap<Vec<u8>, u32>>,
    largest: AtomicU64,
}

#[derive(Debug, Clone)]
struct Node(Arc<Fake>);

impl Node {
    fn map(&self) -> wire::ShardMap {
        let me = wire::NodeAddr {
            node_id: 1,
            addr: self.0.addr.clone(),
        };
        wire::ShardMap {
            version: 1,
            groups: (0..3u64)
                .map(|i| wire::ShardRoute {
                    group_id: i + 1,
                    key_range: Some(wire::KeyRange::of_group(i + 1, 3)),
                    leader: Some(me.clone()),
                    members: vec![me.clone()],
                })
                .collect(),
        }
    }
}

#[tonic::async_trait]
impl grpc::Ingest for Node {
    async fn ingest(
        &self,
        request: Request<wire::IngestRequest>,
    ) -> Result<Response<wire::IngestResponse>, Status> {
        let n = self.0.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if self.0.stale_always || self.0.stale_once.swap(0, Ordering::SeqCst) == 1 {
            return Err(stale_shard_map(1, 1));
        }
        if self.0.flaky && n.is_multiple_of(3) {
            return Err(Status::unavailable("flaky on purpose"));
        }
        let clicks = request.into_inner().clicks;
        self.0
            .largest
            .fetch_max(clicks.len() as u64, Ordering::SeqCst);
        let mut sent = self.0.sent.lock().expect("lock");
        let results = clicks
            .iter()
            .map(|c| {
                *sent.entry(c.event_id.to_vec()).or_default() += 1;
                wire::EventResult {
                    outcome: wire::Outcome::Rejected.into(),
                    reject_reason: wire::RejectReason::Invalid.into(),
                    message: String::from_utf8_lossy(&c.event_id).into_owned(),
                }
            })
            .collect();
        Ok(Response::new(wire::IngestResponse {
            results,
            tally: None,
        }))
    }
}

#[tonic::async_trait]
impl grpc::Admin for Node {
    async fn get_shard_map(
        &self,
        _: Request<wire::GetShardMapRequest>,
    ) -> Result<Response<wire::GetShardMapResponse>, Status> {
        Ok(Response::new(wire::GetShardMapResponse {
            shard_map: Some(self.map()),
        }))
    }

    async fn cluster_status(
        &self,
        _: Request<wire::ClusterStatusRequest>,
    ) -> Result<Response<wire::ClusterStatusResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn create_filter(
        &self,
        _: Request<wire::CreateFilterRequest>,
    ) -> Result<Response<wire::CreateFilterResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn list_filters(
        &self,
        _: Request<wire::ListFiltersRequest>,
    ) -> Result<Response<wire::ListFiltersResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn drop_filter(
        &self,
        _: Request<wire::DropFilterRequest>,
    ) -> Result<Response<wire::DropFilterResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn transfer_leader(
        &self,
        _: Request<wire::TransferLeaderRequest>,
    ) -> Result<Response<wire::TransferLeaderResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}

/// Starts a fake node made by `make` from its address.
async fn serve(make: impl FnOnce(String) -> Fake) -> Arc<Fake> {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let fake = Arc::new(make(listener.local_addr().expect("addr").to_string()));
    let node = Node(Arc::clone(&fake));
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(grpc::IngestServer::new(node.clone()))
            .add_service(grpc::AdminServer::new(node))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    fake
}

/// A fake node that fails every third request and/or says the map is stale once.
async fn fake(flaky: bool, stale_once: bool) -> Arc<Fake> {
    serve(|addr| Fake {
        addr,
        flaky,
        stale_once: AtomicU64::new(u64::from(stale_once)),
        ..Fake::default()
    })
    .await
}

fn clicks(n: usize) -> Vec<Click> {
    (0..n)
        .map(|i| Click {
            event_id: adclick_client::model::EventId::new(format!("id-{i:04}").into_bytes())
                .expect("valid id"),
            ad_id: AdId::new(&format!("ad-{}", i % 17)).expect("valid ad"),
            event_time_ms: 1_720_483_201_000,
            user_id: String::new(),
            ip: "10.0.0.1".parse().expect("ip"),
            country: String::new(),
        })
        .collect()
}

fn quick_config() -> ClientConfig {
    let mut c = ClientConfig::default();
    c.max_batch_clicks = 2;
    c.initial_backoff = Duration::from_millis(1);
    c.max_backoff = Duration::from_millis(5);
    c.deadline = Duration::from_secs(10);
    c
}

#[tokio::test]
async fn every_result_lands_on_its_own_click_through_chunks_retries_and_reroutes() {
    let node = fake(true, true).await;
    let client = Client::connect_with([node.addr.as_str()], quick_config())
        .await
        .expect("connect");
    let batch = clicks(41);
    let report = client.ingest(&batch).await.expect("ingest");
    assert_eq!(report.results.len(), batch.len());
    for (click, result) in batch.iter().zip(&report.results) {
        assert_eq!(
            result.outcome,
            Outcome::Rejected(RejectReason::Invalid),
            "{result:?}"
        );
        assert_eq!(
            result.message.as_bytes(),
            click.event_id.as_bytes(),
            "a result answered another click"
        );
    }
    assert_eq!(report.tally.rejected, 41);
    assert!(
        node.largest.load(Ordering::SeqCst) <= 2,
        "chunks respect max_batch_clicks"
    );
    // Every click arrived, some more than once (the flaky answers), always with its own id.
    let sent = node.sent.lock().expect("lock");
    assert_eq!(sent.len(), 41, "every event id reached the node");
    assert!(
        report.attempts > 21,
        "retries are counted: {}",
        report.attempts
    );
}

#[tokio::test]
async fn the_producer_answers_every_delivery_with_its_clicks_result() {
    let node = fake(true, false).await;
    let client = Client::connect_with([node.addr.as_str()], quick_config())
        .await
        .expect("connect");
    let mut config = ProducerConfig::default();
    config.max_batch_clicks = 7;
    config.linger = Duration::from_millis(2);
    config.max_in_flight_batches = 2;
    config.buffer_clicks = 5;
    let producer = Producer::new(client, config).expect("producer");
    let batch = clicks(50);
    let mut deliveries = Vec::new();
    for c in &batch[..20] {
        deliveries.push(producer.send(c.clone()).await.expect("send"));
    }
    producer.flush().await.expect("flush");
    assert_eq!(
        producer.stats().tally.rejected,
        20,
        "flush waits for every click sent before it"
    );
    for c in &batch[20..] {
        deliveries.push(producer.send(c.clone()).await.expect("send"));
    }
    let stats = producer.close().await;
    assert_eq!(stats.tally.rejected, 50);
    assert_eq!(stats.failed, 0);
    for (click, delivery) in batch.iter().zip(deliveries) {
        let result = delivery.await.expect("answered");
        assert_eq!(result.message.as_bytes(), click.event_id.as_bytes());
    }
}

#[tokio::test]
async fn nodes_that_keep_calling_the_map_stale_are_not_hammered() {
    let fake = serve(|addr| Fake {
        addr,
        stale_always: true,
        ..Fake::default()
    })
    .await;
    let mut config = ClientConfig::default();
    config.deadline = Duration::from_secs(1);
    config.initial_backoff = Duration::from_millis(10);
    config.max_backoff = Duration::from_millis(20);
    let client = Client::connect_with([fake.addr.as_str()], config)
        .await
        .expect("connect");
    let err = client
        .ingest(&clicks(1))
        .await
        .expect_err("the map never settles");
    assert!(
        matches!(err, adclick_client::Error::DeadlineExceeded { .. }),
        "{err}"
    );
    // One second at 10-20 ms between tries is well under 200 requests; re-routing at RPC
    // speed sent thousands.
    let requests = fake.requests.load(Ordering::SeqCst);
    assert!(requests < 200, "{requests} requests in one second");
}
