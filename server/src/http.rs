//! The HTTP surface on `--http`: the JSON API for non-gRPC users, `/healthz` and
//! `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::node::Node;

/// The HTTP routes of `node`.
pub fn router(node: Arc<Node>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(node)
}

/// 200 once the node serves and every group has a known leader; 503 otherwise.
async fn healthz(State(node): State<Arc<Node>>) -> Response {
    let leaderless: Vec<u64> = node
        .groups()
        .filter(|g| g.metrics().current_leader.is_none())
        .map(|g| g.id)
        .collect();
    let serving = leaderless.is_empty() && !node.is_draining();
    let body = serde_json::json!({
        "status": if serving { "serving" } else if node.is_draining() { "draining" } else { "starting" },
        "node_id": node.id(),
        "groups_without_leader": leaderless,
    });
    let code = if serving {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

async fn metrics(State(node): State<Arc<Node>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        node.metrics.render(&node),
    )
        .into_response()
}
