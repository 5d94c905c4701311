//! The `adclick.v1` Ingest, Query and Admin gRPC services over the shared operations.
//! Every call is counted and timed, refused while the node drains, and its errors go
//! through the one `Error -> Status` mapping.

use std::sync::Arc;

use adclick_proto::convert::{CountQuery, TopQuery};
use adclick_proto::wire::{self, grpc, metadata};
use tonic::{Request, Response, Status};

use super::{admin, ingest, query};
use crate::error::Result;
use crate::metrics::Op;
use crate::node::{Node, SHARD_MAP_VERSION};

/// The three client services of a node.
#[derive(Debug, Clone)]
pub struct ClientServices {
    node: Arc<Node>,
}

impl ClientServices {
    /// Services over `node`.
    pub fn new(node: Arc<Node>) -> Self {
        ClientServices { node }
    }

    async fn serve<T, F>(&self, op: Op, f: F) -> std::result::Result<Response<T>, Status>
    where
        F: std::future::Future<Output = Result<T>>,
    {
        self.node
            .serve(op, f)
            .await
            .map(Response::new)
            .map_err(Status::from)
    }
}

/// Refuses a request routed with another shard map version than this node's
/// (`x-adclick-shard-map-version`; absent means the client does not route itself).
fn check_shard_map<T>(req: &Request<T>) -> std::result::Result<(), Status> {
    match adclick_proto::convert::shard_map_version(req.metadata()) {
        Some(v) if v != SHARD_MAP_VERSION => Err(adclick_proto::convert::stale_shard_map(
            v,
            SHARD_MAP_VERSION,
        )),
        _ => Ok(()),
    }
}

/// Whether a peer forwarded this request.
fn is_forwarded<T>(req: &Request<T>) -> bool {
    req.metadata().contains_key(metadata::FORWARDED_BY)
}

#[tonic::async_trait]
impl grpc::Ingest for ClientServices {
    async fn ingest(
        &self,
        request: Request<wire::IngestRequest>,
    ) -> std::result::Result<Response<wire::IngestResponse>, Status> {
        check_shard_map(&request)?;
        let (origin, op) = if is_forwarded(&request) {
            (ingest::Origin::Peer, Op::IngestForwarded)
        } else if adclick_proto::convert::shard_map_version(request.metadata()).is_some() {
            (ingest::Origin::RoutedClient, Op::Ingest)
        } else {
            (ingest::Origin::Client, Op::Ingest)
        };
        let clicks = request.into_inner().clicks;
        self.serve(op, ingest::ingest(&self.node, clicks, origin))
            .await
    }
}

#[tonic::async_trait]
impl grpc::Query for ClientServices {
    async fn count(
        &self,
        request: Request<wire::CountRequest>,
    ) -> std::result::Result<Response<wire::CountResponse>, Status> {
        check_shard_map(&request)?;
        let node = &self.node;
        self.serve(Op::Count, async move {
            let q = CountQuery::try_from(request.into_inner())?;
            query::count(node, q).await
        })
        .await
    }

    async fn top(
        &self,
        request: Request<wire::TopRequest>,
    ) -> std::result::Result<Response<wire::TopResponse>, Status> {
        check_shard_map(&request)?;
        let node = &self.node;
        self.serve(Op::Top, async move {
            let q = TopQuery::try_from(request.into_inner())?;
            query::top(node, q).await
        })
        .await
    }
}

#[tonic::async_trait]
impl grpc::Admin for ClientServices {
    async fn cluster_status(
        &self,
        _request: Request<wire::ClusterStatusRequest>,
    ) -> std::result::Result<Response<wire::ClusterStatusResponse>, Status> {
        let node = &self.node;
        self.serve(Op::Admin, async move { Ok(admin::cluster_status(node)) })
            .await
    }

    async fn create_filter(
        &self,
        request: Request<wire::CreateFilterRequest>,
    ) -> std::result::Result<Response<wire::CreateFilterResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.serve(Op::Admin, admin::create_filter(&self.node, req, forwarded))
            .await
    }

    async fn list_filters(
        &self,
        _request: Request<wire::ListFiltersRequest>,
    ) -> std::result::Result<Response<wire::ListFiltersResponse>, Status> {
        self.serve(Op::Admin, admin::list_filters(&self.node)).await
    }

    async fn drop_filter(
        &self,
        request: Request<wire::DropFilterRequest>,
    ) -> std::result::Result<Response<wire::DropFilterResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.serve(Op::Admin, admin::drop_filter(&self.node, req, forwarded))
            .await
    }

    async fn transfer_leader(
        &self,
        request: Request<wire::TransferLeaderRequest>,
    ) -> std::result::Result<Response<wire::TransferLeaderResponse>, Status> {
        let forwarded = is_forwarded(&request);
        let req = request.into_inner();
        self.serve(
            Op::Admin,
            admin::transfer_leader(&self.node, req, forwarded),
        )
        .await
    }

    async fn get_shard_map(
        &self,
        _request: Request<wire::GetShardMapRequest>,
    ) -> std::result::Result<Response<wire::GetShardMapResponse>, Status> {
        let node = &self.node;
        self.serve(Op::Admin, async move {
            Ok(wire::GetShardMapResponse {
                shard_map: Some(admin::shard_map(node)),
            })
        })
        .await
    }
}
