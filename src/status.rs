//! The one place where domain errors become gRPC statuses. Status codes are part of the protocol's
//! contract (clients retry UNAVAILABLE, give up on INVALID_ARGUMENT), so they are chosen here only.

use strata_backends::{DigestError, StoreError};
use tonic::{Code, Status};

pub fn from_store(error: StoreError) -> Status {
    let code = match &error {
        StoreError::InvalidBlob(_) => Code::InvalidArgument,
        StoreError::TooLarge { .. } | StoreError::NoSpace { .. } | StoreError::Full { .. } => Code::ResourceExhausted,
        StoreError::Io { .. } | StoreError::Config(_) | StoreError::Corrupt { .. } => Code::Internal,
        StoreError::Unavailable { .. } => Code::Unavailable,
        // The upstream's own answer to a request we made: our failure, reported with its words.
        StoreError::Upstream { .. } => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!("storage failure: {error}");
    }
    Status::new(code, error.to_string())
}

pub fn from_digest(error: DigestError) -> Status {
    Status::invalid_argument(error.to_string())
}

/// A `google.rpc.Status` for per-item results inside batch responses.
pub fn to_rpc(status: &Status) -> bazel_remote_apis::google::rpc::Status {
    bazel_remote_apis::google::rpc::Status {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: Vec::new(),
    }
}

pub fn ok_rpc() -> bazel_remote_apis::google::rpc::Status {
    bazel_remote_apis::google::rpc::Status { code: Code::Ok as i32, message: String::new(), details: Vec::new() }
}

pub fn from_scheduler(error: crate::exec::scheduler::SchedulerError) -> Status {
    use crate::exec::scheduler::SchedulerError;
    let code = match &error {
        SchedulerError::UnknownSession(_) | SchedulerError::UnknownOperation(_) => Code::NotFound,
    };
    Status::new(code, error.to_string())
}
