//! Running a node: bind the gRPC and HTTP listeners, open and start the node, serve until
//! the shutdown signal, then drain and stop in order.
//!
//! Shutdown order matters: client requests in flight need Raft to finish, and peers'
//! replication streams never end on their own. So the node first hands the groups it leads
//! to followers (writes move on without waiting for an election timeout), then stops
//! taking client requests and waits for those in flight (bounded), then stops its Raft
//! groups (flushing their logs and state machines) and ends the streams peers opened into
//! it, and only then closes the listeners.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use adclick_proto::wire::{self, grpc};
use anyhow::Context;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::config::Config;
use crate::node::Node;
use crate::raft::network::MAX_MESSAGE_BYTES;
use crate::raft::service::RaftService;
use crate::service::grpc::ClientServices;

/// Largest client request accepted (a batch of `max_batch_clicks` clicks fits easily).
const MAX_CLIENT_MESSAGE: usize = 16 << 20;
/// How long a stopping node waits for the groups it leads to elect the followers it hands
/// them to.
const HANDOFF_LIMIT: Duration = Duration::from_secs(3);
/// How long each Raft group may take to stop.
const STOP_LIMIT: Duration = Duration::from_secs(5);
/// How long in-flight client requests may take to finish at shutdown.
const DRAIN_LIMIT: Duration = Duration::from_secs(10);
/// How long the listeners may take to close after the node stopped. Client requests are
/// answered by then (drained); what keeps a listener open is peers' connections with a
/// replication request stream still open on their side, which need not be waited for.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("SIGINT received"),
        () = term => tracing::info!("SIGTERM received"),
    }
}

/// Runs a node until `shutdown` resolves, then stops it cleanly.
pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let grpc_listener = TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding the gRPC address {}", config.listen))?;
    let http_listener = TcpListener::bind(config.http)
        .await
        .with_context(|| format!("binding the HTTP address {}", config.http))?;
    let node = Node::open(config)
        .await
        .context("opening the node's storage")?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<grpc::IngestServer<ClientServices>>()
        .await;
    health
        .set_serving::<grpc::QueryServer<ClientServices>>()
        .await;
    health
        .set_serving::<grpc::AdminServer<ClientServices>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(wire::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building the reflection service")?;

    let services = ClientServices::new(Arc::clone(&node));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let grpc_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(3)))
        .max_concurrent_streams(Some(4096))
        .add_service(
            grpc::RaftServer::new(RaftService::new(Arc::clone(&node)))
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            grpc::IngestServer::new(services.clone()).max_decoding_message_size(MAX_CLIENT_MESSAGE),
        )
        .add_service(grpc::QueryServer::new(services.clone()))
        .add_service(grpc::AdminServer::new(services))
        .add_service(health_service)
        .add_service(reflection)
        .serve_with_incoming_shutdown(grpc_incoming(grpc_listener), stopped(stop_rx.clone()));
    let http_server = axum::serve(http_listener, crate::http::router(Arc::clone(&node)))
        .with_graceful_shutdown(stopped(stop_rx));

    node.start();
    let mut grpc_task = tokio::spawn(grpc_server);
    let mut http_task = tokio::spawn(async move { http_server.await });
    tracing::info!(
        node = node.id(),
        grpc = %node.config.listen,
        http = %node.config.http,
        groups = node.config.groups,
        "adclickd serving"
    );

    let failure = tokio::select! {
        () = shutdown => None,
        r = &mut grpc_task => Some(format!("the gRPC server stopped: {r:?}")),
        r = &mut http_task => Some(format!("the HTTP server stopped: {r:?}")),
    };
    // Peers stopping at the same time see this and hand nothing to this node.
    health
        .set_service_status("", tonic_health::ServingStatus::NotServing)
        .await;
    tracing::info!("handing off leaderships");
    node.hand_off_leadership(HANDOFF_LIMIT).await;
    tracing::info!("draining in-flight requests");
    health
        .set_not_serving::<grpc::IngestServer<ClientServices>>()
        .await;
    node.drain(DRAIN_LIMIT).await;
    tracing::info!("stopping the Raft groups");
    node.shutdown(STOP_LIMIT).await;
    let _ = stop_tx.send(true);
    close("gRPC", grpc_task).await;
    close("HTTP", http_task).await;
    match failure {
        None => {
            tracing::info!("adclickd stopped cleanly");
            Ok(())
        }
        Some(f) => Err(anyhow::anyhow!(f)),
    }
}

/// The gRPC server's connections. The builder's `tcp_nodelay` only applies to listeners it
/// binds itself; without `with_nodelay` here, Nagle's algorithm meets the peer's delayed
/// ACK and every small answer (a vote, an append ack, a read index) waits ~40 ms.
fn grpc_incoming(listener: TcpListener) -> TcpIncoming {
    TcpIncoming::from(listener).with_nodelay(Some(true))
}

/// Waits (bounded) for a server task to finish after its shutdown signal; aborts it after.
async fn close<T>(name: &str, task: tokio::task::JoinHandle<T>) {
    if task.is_finished() {
        return;
    }
    let abort = task.abort_handle();
    if tokio::time::timeout(CLOSE_LIMIT, task).await.is_err() {
        tracing::info!("closing the {name} server's remaining (peer) connections");
        abort.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn accepted_grpc_connections_have_nodelay() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut incoming = grpc_incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let accepted = incoming
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(accepted.nodelay().expect("nodelay"), "Nagle must be off");
    }
}
