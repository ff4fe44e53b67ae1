//! Execution: Execute and WaitExecution. Execute checks the action before it is queued — the Action,
//! its Command and every input blob must be in the CAS (else FAILED_PRECONDITION naming each missing
//! digest), names and paths must be sane — looks it up in the action cache unless told not to, and
//! then streams the operation's stages until its result.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::execution_server::Execution;
use bazel_remote_apis::google::longrunning::{operation, Operation};
use futures::Stream;
use strata_backends::{Digest, DigestFunction};
use tonic::{Request, Response, Status};

use super::{digest_function, parse_digest};
use crate::protocol::{self, to_proto};
use crate::exec::admission;
use crate::tree::{load, load_encoded};
use crate::protocol::rwapi;
use crate::auth::Access;
use crate::exec::scheduler::{NewJob, OpState, OperationView, Origin, Outcome, Scheduler, Work};
use crate::instances::Instances;
use crate::status;

pub type OperationStream = Pin<Box<dyn Stream<Item = Result<Operation, Status>> + Send>>;

pub struct ExecutionService {
    pub instances: Arc<Instances>,
    pub scheduler: Arc<Scheduler>,
}

/// The longrunning form of an operation's state.
pub fn to_operation(name: &str, action_digest: &Digest, state: &OpState) -> Operation {
    let metadata = reapi::ExecuteOperationMetadata {
        stage: state.stage as i32,
        action_digest: Some(to_proto(action_digest)),
        ..Default::default()
    };
    let result = state.outcome.as_ref().map(|outcome| match outcome {
        Outcome::Response(response) => {
            operation::Result::Response(rwapi::pack(rwapi::EXECUTE_RESPONSE, response.as_ref()))
        }
        Outcome::Error(code, message) => operation::Result::Error(bazel_remote_apis::google::rpc::Status {
            code: *code as i32,
            message: message.clone(),
            details: Vec::new(),
        }),
    });
    Operation {
        name: name.to_string(),
        metadata: Some(rwapi::pack(rwapi::EXECUTE_METADATA, &metadata)),
        done: result.is_some(),
        result,
    }
}

/// Every change of an operation, from its current state until it is done.
pub fn operation_stream(view: OperationView) -> OperationStream {
    let stream = futures::stream::unfold(Some((view, true)), |next| async move {
        let (mut view, first) = next?;
        if !first && view.state.changed().await.is_err() {
            let gone = Status::not_found(format!("operation {} was deleted", view.name));
            return Some((Err(gone), None));
        }
        let state = view.state.borrow_and_update().clone();
        let op = to_operation(&view.name, &view.action_digest, &state);
        let more = (!op.done).then_some((view, false));
        Some((Ok(op), more))
    });
    Box::pin(stream)
}

/// Whether the caller may see an operation: its own (with `execute` on its instance), or anyone's
/// with `admin` there.
pub fn may_see(access: &Access, origin: &Origin) -> bool {
    use crate::config::Permission;
    let caller = &access.caller;
    caller.may(&origin.instance, Permission::Admin) || (caller.name == origin.owner && caller.may(&origin.instance, Permission::Execute))
}

/// An operation the caller may see; another's is NOT_FOUND, as if it did not exist.
pub fn watch_own(scheduler: &Scheduler, access: &Access, name: &str) -> Result<OperationView, Status> {
    let view = scheduler.watch(name).map_err(status::from_scheduler)?;
    if !may_see(access, &view.origin) {
        return Err(status::from_scheduler(crate::exec::scheduler::SchedulerError::UnknownOperation(name.to_string())));
    }
    Ok(view)
}

impl ExecutionService {
    async fn start(&self, access: &Access, req: reapi::ExecuteRequest) -> Result<OperationView, Status> {
        let (action_cache, cas) = self.instances.execution(access, &req.instance_name)?;
        let owner = access.caller.name.clone();
        let function = digest_function(req.digest_function)?;
        if function != DigestFunction::Sha256 {
            return Err(Status::invalid_argument(format!("execution supports SHA-256 digests only, not {function:?}")));
        }
        let action_digest = parse_digest(function, req.action_digest.as_ref(), "action_digest")?;
        let Some(mut action) = load::<reapi::Action>(cas, &action_digest, "Action").await.map_err(status::from_tree)? else {
            return Err(status::missing_blobs(&[action_digest], "the action"));
        };
        let command_digest = parse_digest(function, action.command_digest.as_ref(), "action.command_digest")?;
        let input_root = parse_digest(function, action.input_root_digest.as_ref(), "action.input_root_digest")?;
        let command = load_encoded::<reapi::Command>(cas, &command_digest, "Command").await.map_err(status::from_tree)?;
        let mut missing = admission::missing_inputs(cas, function, input_root).await.map_err(status::from_tree)?;
        if command.is_none() {
            missing.insert(0, command_digest);
        }
        let Some((command, encoded_command)) = command.filter(|_| missing.is_empty()) else { return Err(status::missing_blobs(&missing, "the action")) };
        admission::check_command(&command).map_err(status::from_tree)?;

        let max = self.scheduler.config().max_execution_timeout;
        let timeout = match &action.timeout {
            Some(t) if t.seconds < 0 || t.nanos < 0 => {
                return Err(Status::invalid_argument(format!("action.timeout {}s is negative", t.seconds)))
            }
            Some(t) if t.seconds > 0 || t.nanos > 0 => Duration::new(t.seconds as u64, t.nanos as u32).min(max),
            _ => max,
        };
        action.timeout = Some(bazel_remote_apis::google::protobuf::Duration {
            seconds: timeout.as_secs() as i64,
            nanos: timeout.subsec_nanos() as i32,
        });
        let cacheable = !action.do_not_cache;
        if cacheable && !req.skip_cache_lookup {
            let cached = crate::action_results::lookup(action_cache.as_ref(), cas, function, &action_digest).await.map_err(status::from_tree)?;
            let hit = cached.is_some();
            self.instances.metrics.looked_up(&req.instance_name, "action_cache", "execute", u64::from(hit), u64::from(!hit));
            if let Some(result) = cached {
                let response = reapi::ExecuteResponse { result: Some(result), cached_result: true, status: Some(protocol::ok_rpc()), ..Default::default() };
                let origin = Origin { instance: req.instance_name, owner };
                return Ok(self.scheduler.completed(origin, action_digest, response));
            }
        }
        let platform = crate::protocol::platform(&action, &command).map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let priority = req.execution_policy.as_ref().map_or(0, |p| p.priority);
        Ok(self.scheduler.submit(NewJob {
            instance: req.instance_name,
            owner,
            action_digest,
            work: Work { action, command: self.scheduler.commands().hold(&encoded_command) },
            platform,
            priority,
            timeout,
            cacheable,
        }))
    }
}

#[tonic::async_trait]
impl Execution for ExecutionService {
    type ExecuteStream = OperationStream;

    async fn execute(&self, request: Request<reapi::ExecuteRequest>) -> Result<Response<Self::ExecuteStream>, Status> {
        let access = Access::of(&request)?.clone();
        let view = self.start(&access, request.into_inner()).await?;
        Ok(Response::new(operation_stream(view)))
    }

    type WaitExecutionStream = OperationStream;

    async fn wait_execution(
        &self,
        request: Request<reapi::WaitExecutionRequest>,
    ) -> Result<Response<Self::WaitExecutionStream>, Status> {
        let view = watch_own(&self.scheduler, Access::of(&request)?, &request.get_ref().name)?;
        Ok(Response::new(operation_stream(view)))
    }
}
