//! The admin API on the gRPC port: a thin shell over `crate::admin::Admin`.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::admin::Admin;
use crate::protocol::admin as pb;
use crate::protocol::admin::admin_server;

pub struct AdminService {
    pub admin: Arc<Admin>,
}

/// Operations one ListOperations answers by default.
const DEFAULT_OPERATIONS: usize = 100;

#[tonic::async_trait]
impl admin_server::Admin for AdminService {
    async fn get_status(&self, _request: Request<pb::GetStatusRequest>) -> Result<Response<pb::ServerStatus>, Status> {
        Ok(Response::new(self.admin.status()))
    }

    async fn list_bots(&self, _request: Request<pb::ListBotsRequest>) -> Result<Response<pb::ListBotsResponse>, Status> {
        Ok(Response::new(pb::ListBotsResponse { bots: self.admin.bots() }))
    }

    async fn list_operations(&self, request: Request<pb::ListOperationsRequest>) -> Result<Response<pb::ListOperationsResponse>, Status> {
        let limit = match request.get_ref().limit {
            0 => DEFAULT_OPERATIONS,
            n => n as usize,
        };
        Ok(Response::new(pb::ListOperationsResponse { operations: self.admin.operations(limit) }))
    }

    async fn cancel_operation(&self, request: Request<pb::CancelOperationRequest>) -> Result<Response<pb::CancelOperationResponse>, Status> {
        self.admin.cancel(&request.get_ref().name)?;
        Ok(Response::new(pb::CancelOperationResponse {}))
    }

    async fn locate_blob(&self, request: Request<pb::LocateBlobRequest>) -> Result<Response<pb::LocateBlobResponse>, Status> {
        let r = request.get_ref();
        let tiers = self.admin.locate(&r.instance, &digest_field(r.digest.as_ref())?).await?;
        Ok(Response::new(pb::LocateBlobResponse { tiers }))
    }

    async fn evict_blob(&self, request: Request<pb::EvictBlobRequest>) -> Result<Response<pb::EvictBlobResponse>, Status> {
        let r = request.get_ref();
        let evicted_from = self.admin.evict(&r.instance, &digest_field(r.digest.as_ref())?).await?;
        Ok(Response::new(pb::EvictBlobResponse { evicted_from }))
    }

    async fn warm(&self, request: Request<pb::WarmRequest>) -> Result<Response<pb::WarmResponse>, Status> {
        let r = request.get_ref();
        if r.digests.is_empty() && r.tree_root.is_none() {
            return Err(Status::invalid_argument("Warm needs digests, a tree_root, or both"));
        }
        Ok(Response::new(self.admin.warm(&r.instance, &r.digests, r.tree_root.as_ref()).await?))
    }
}

fn digest_field(digest: Option<&pb::Digest>) -> Result<pb::Digest, Status> {
    digest.cloned().ok_or_else(|| Status::invalid_argument("digest: missing"))
}
