//! What the scheduler takes and gives: jobs and sessions as the services hand them in, and the views
//! of operations and sessions the services render on the wire.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use strata_backends::Digest;
use tokio::sync::{watch, Notify};
use tonic::Code;

use super::commands::HeldCommand;
use crate::protocol::rwapi::{BotStatus, LeaseState};

/// The scheduler's limits (the `execution` section of the configuration).
#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    /// How long a job may wait for a bot before it fails.
    pub queue_timeout: Duration,
    /// The execution timeout of actions that set none, and the cap on those that do.
    pub max_execution_timeout: Duration,
    /// A bot session that has not called for this long is gone; its leases go back to the queue.
    pub bot_session_timeout: Duration,
    /// How many times a job is handed to a bot before it fails.
    pub max_attempts: u32,
    /// How long finished operations can still be looked up.
    pub operation_retention: Duration,
}

/// Where an operation stands, as its watchers see it.
#[derive(Clone, Debug)]
pub struct OpState {
    pub stage: reapi::execution_stage::Value,
    pub outcome: Option<Outcome>,
}

#[derive(Clone, Debug)]
pub enum Outcome {
    /// The action ran, failed to run, or was served from the cache.
    Response(Arc<reapi::ExecuteResponse>),
    /// The operation itself ended without a response (cancelled).
    Error(Code, String),
}

/// An outcome that is an ExecuteResponse carrying only a status (the action never ran to its end).
pub fn failed(code: Code, message: String) -> Outcome {
    Outcome::Response(Arc::new(reapi::ExecuteResponse {
        status: Some(bazel_remote_apis::google::rpc::Status { code: code as i32, message, details: Vec::new() }),
        ..Default::default()
    }))
}

/// Where an operation was started and by whom (None: a caller without credentials).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub instance: String,
    pub owner: Option<Arc<str>>,
}

/// A watcher's view of one operation.
pub struct OperationView {
    pub name: String,
    pub action_digest: Digest,
    pub origin: Origin,
    pub state: watch::Receiver<OpState>,
}

/// A job as submitted by the Execution service, after validation.
pub struct NewJob {
    pub instance: String,
    /// The identity that asked for it (the owner of its first operation).
    pub owner: Option<Arc<str>>,
    pub action_digest: Digest,
    /// The Action as the bot receives it (its timeout already capped by the server), with its
    /// Command.
    pub work: Work,
    pub platform: Vec<(String, String)>,
    pub priority: i32,
    pub timeout: Duration,
    pub cacheable: bool,
}

/// What a bot needs to start a job: the Action and its Command, encoded as stored (bots that ask
/// get it with the lease). Shared by the job and its leases' views.
#[derive(Debug, Default, PartialEq)]
pub struct Work {
    pub action: reapi::Action,
    /// None for a Command too large to go with a lease, or past `COMMAND_BYTES_HELD`: the bot
    /// fetches it.
    pub command: Option<HeldCommand>,
}

/// A bot opening a session, for `Scheduler::create_session`.
pub struct NewSession {
    pub instance: String,
    /// The identity that opened it: only it may update the session.
    pub owner: Option<Arc<str>>,
    pub bot_id: String,
    pub properties: Vec<(String, String)>,
    pub capacity: usize,
    pub status: BotStatus,
    pub priority: i32,
}

/// What a bot reported for one lease, for `Scheduler::report`.
pub struct LeaseReport {
    pub lease_id: String,
    pub state: LeaseState,
    pub status: Option<bazel_remote_apis::google::rpc::Status>,
    pub result: Option<reapi::ActionResult>,
}

/// One lease of a session as the bot should see it; its work while it is pending or active.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseView {
    pub id: String,
    pub state: LeaseState,
    pub work: Option<Arc<Work>>,
}

/// A bot session as the Bots service answers it.
pub struct SessionView {
    pub leases: Vec<LeaseView>,
    pub expire_time: SystemTime,
    pub wake: Arc<Notify>,
    /// Whether the bot could take another lease now (healthy, with a free slot).
    pub has_room: bool,
}

impl SessionView {
    /// The answer to a session that has just ended (its bot is terminating).
    pub fn gone() -> SessionView {
        SessionView { leases: Vec::new(), expire_time: SystemTime::now(), wake: Arc::new(Notify::new()), has_room: false }
    }
}

/// What `Scheduler::report` made of a bot's update.
pub struct Reported {
    pub view: SessionView,
    /// Results to hand to the sink and deliver (`Scheduler::deliver`).
    pub finished: Vec<Finished>,
    /// The bot waits for this answer before it goes on (it accepted a lease, which buildbox-worker
    /// starts only once the server has answered, or its status changed): it must not be held. A
    /// bot reporting a result or a cancellation waits for nothing but new work, and is held like an
    /// idle one: buildbox-worker pauses 250 ms after an empty answer, which an action queued just
    /// after the result would otherwise wait out.
    pub answer_now: bool,
}

/// A job whose bot reported a result, to be cached and delivered.
pub struct Finished {
    pub(super) job: u64,
    pub(super) instance: String,
    pub(super) action_digest: Digest,
    pub(super) response: reapi::ExecuteResponse,
    pub(super) cache: bool,
}

/// Where successful results go before their operations complete (the action cache).
#[async_trait::async_trait]
pub trait ResultSink: Send + Sync {
    async fn store(&self, instance: &str, action: &Digest, result: &reapi::ActionResult);
}

/// A snapshot of what the scheduler holds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub queued: usize,
    pub running: usize,
    pub sessions: usize,
    /// Operations clients can still look up (running or within their retention).
    pub operations: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("unknown bot session {}: the server may have restarted or expired it; create a new session", crate::quote::quote(.0))]
    UnknownSession(String),
    #[error("unknown operation {}", crate::quote::quote(.0))]
    UnknownOperation(String),
}
