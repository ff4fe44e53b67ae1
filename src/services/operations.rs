//! Operations (google.longrunning): look up, list, cancel, delete and wait for the operations that
//! Execute created. Names are opaque and unique to this server process.

use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::google::longrunning::operations_server::Operations;
use bazel_remote_apis::google::longrunning::{
    CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest, ListOperationsResponse,
    Operation, WaitOperationRequest,
};
use bazel_remote_apis::google::protobuf::Empty;
use tonic::{Request, Response, Status};

use super::execution::{may_see, to_operation, watch_own};
use crate::auth::Access;
use crate::exec::scheduler::{OperationView, Scheduler};
use crate::quote::quote;
use crate::status;

const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
/// WaitOperation without a timeout waits at most this long before answering with the current state.
const MAX_WAIT: Duration = Duration::from_secs(60);

pub struct OperationsService {
    pub scheduler: Arc<Scheduler>,
}

fn current(view: &OperationView) -> Operation {
    to_operation(&view.name, &view.action_digest, &view.state.borrow())
}

#[tonic::async_trait]
impl Operations for OperationsService {
    async fn list_operations(&self, request: Request<ListOperationsRequest>) -> Result<Response<ListOperationsResponse>, Status> {
        let access = Access::of(&request)?.clone();
        let req = request.into_inner();
        if !req.filter.is_empty() {
            return Err(Status::invalid_argument(format!("filter {}: filters are not supported", quote(&req.filter))));
        }
        let page_size = match req.page_size {
            n if n < 0 => return Err(Status::invalid_argument(format!("page_size {n} is negative"))),
            0 => DEFAULT_PAGE,
            n => (n as usize).min(MAX_PAGE),
        };
        let (views, more) = self.scheduler.list(&req.page_token, page_size, |origin| may_see(&access, origin));
        let next_page_token = match (more, views.last()) {
            (true, Some(last)) => last.name.clone(),
            _ => String::new(),
        };
        let operations = views.iter().map(current).collect();
        Ok(Response::new(ListOperationsResponse { operations, next_page_token, unreachable: Vec::new() }))
    }

    async fn get_operation(&self, request: Request<GetOperationRequest>) -> Result<Response<Operation>, Status> {
        let view = watch_own(&self.scheduler, Access::of(&request)?, &request.get_ref().name)?;
        Ok(Response::new(current(&view)))
    }

    async fn delete_operation(&self, request: Request<DeleteOperationRequest>) -> Result<Response<Empty>, Status> {
        watch_own(&self.scheduler, Access::of(&request)?, &request.get_ref().name)?;
        self.scheduler.delete(&request.get_ref().name).map_err(status::from_scheduler)?;
        Ok(Response::new(Empty {}))
    }

    async fn cancel_operation(&self, request: Request<CancelOperationRequest>) -> Result<Response<Empty>, Status> {
        watch_own(&self.scheduler, Access::of(&request)?, &request.get_ref().name)?;
        self.scheduler.cancel(&request.get_ref().name).map_err(status::from_scheduler)?;
        Ok(Response::new(Empty {}))
    }

    async fn wait_operation(&self, request: Request<WaitOperationRequest>) -> Result<Response<Operation>, Status> {
        let mut view = watch_own(&self.scheduler, Access::of(&request)?, &request.get_ref().name)?;
        let req = request.into_inner();
        let wait = match req.timeout {
            Some(t) if t.seconds < 0 || t.nanos < 0 => return Err(Status::invalid_argument("timeout is negative")),
            Some(t) => Duration::new(t.seconds as u64, t.nanos as u32).min(MAX_WAIT),
            None => MAX_WAIT,
        };
        let done = view.state.wait_for(|s| s.outcome.is_some());
        // Past the wait (or if the operation is deleted meanwhile) the current state is the answer.
        let _ = tokio::time::timeout(wait, done).await;
        Ok(Response::new(current(&view)))
    }
}
