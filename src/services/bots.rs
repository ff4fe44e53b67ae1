//! Bots (Remote Workers API v1test2): the gateway through which workers take leases. A bot creates a
//! session with its properties and capacity, then calls UpdateBotSession. An update that accepts a
//! lease or changes the bot's status, or that comes from a bot without a free slot, is answered at
//! once: buildbox-worker waits for that answer before it starts a job or reports another. A bot with
//! room that waits only for work (idle, or just reporting a result) is held in a long poll, which
//! returns as soon as the session has news (a new lease, a cancellation) or shortly before the
//! call's deadline. A lease's payload is its Action, or the Action and its Command for a bot that asks
//! (`rwapi::ActionAndCommand`). Results come back as `Any(ActionResult)` with a `google.rpc.Status`.

use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Empty;
use bytes::Bytes;
use tonic::{Request, Response, Status};

use crate::auth::Access;
use crate::config::Permission;
use crate::protocol;
use crate::protocol::rwapi::{self, bots_server::Bots, BotSession, BotStatus, LeaseState};
use crate::exec::scheduler::{LeaseReport, LeaseView, NewSession, Scheduler, SessionView};
use crate::instances::Instances;
use crate::quote::quote;
use crate::status;

/// A long poll never holds a call longer than this, so a bot behind a silent network is noticed.
const MAX_POLL: Duration = Duration::from_secs(30);

pub struct BotsService {
    pub instances: Arc<Instances>,
    pub scheduler: Arc<Scheduler>,
}

/// Marks a session's call as in progress for as long as it lives (a dropped call ends it too).
struct Calling<'a> {
    scheduler: &'a Scheduler,
    session: &'a str,
}

impl<'a> Calling<'a> {
    fn new(scheduler: &'a Scheduler, session: &'a str) -> Self {
        scheduler.calling(session, true);
        Calling { scheduler, session }
    }
}

impl Drop for Calling<'_> {
    fn drop(&mut self) {
        self.scheduler.calling(self.session, false);
    }
}

/// The call's own deadline (`grpc-timeout`), if the client set one.
fn deadline<T>(request: &Request<T>) -> Option<Duration> {
    let value = request.metadata().get("grpc-timeout")?.to_str().ok()?;
    let (number, unit) = value.split_at(value.len().checked_sub(1)?);
    let n: u64 = number.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The properties a bot offers: its devices' and its worker's.
fn properties(session: &BotSession) -> Vec<(String, String)> {
    let Some(worker) = &session.worker else { return Vec::new() };
    let device_props = worker.devices.iter().flat_map(|d| &d.properties);
    device_props.chain(&worker.properties).map(|p| (p.key.clone(), p.value.clone())).collect()
}

/// A worker config (`Worker.configs`) as a number or `true`/`false` (`expected` says which), or
/// `default` when the bot sends none.
fn config<T: std::str::FromStr>(session: &BotSession, key: &str, default: T, expected: &str, valid: impl Fn(&T) -> bool) -> Result<T, Status> {
    let config = session.worker.as_ref().and_then(|w| w.configs.iter().find(|c| c.key == key));
    match config {
        None => Ok(default),
        Some(c) => match c.value.parse::<T>() {
            Ok(n) if valid(&n) => Ok(n),
            _ => Err(Status::invalid_argument(format!("worker config {key} {} is not {expected}", quote(&c.value)))),
        },
    }
}

/// Whether the bot gets each lease's Command with its Action (`rwapi::ActionAndCommand`): if it asks,
/// and if its identity may read the Command from the CAS anyway. The `bot` permission alone does not
/// show it the actions' arguments and environments.
fn sends_commands(session: &BotSession, access: &Access, instance: &str) -> Result<bool, Status> {
    let asks = config(session, rwapi::COMMAND_IN_LEASE, false, "true or false", |_| true)?;
    Ok(asks && access.caller.may(instance, Permission::Read))
}

fn bot_status(session: &BotSession) -> BotStatus {
    BotStatus::try_from(session.status).unwrap_or(BotStatus::Unspecified)
}

fn reports(session: &BotSession) -> Vec<LeaseReport> {
    session
        .leases
        .iter()
        .map(|lease| {
            let mut status = lease.status.clone();
            let result = match lease.result.as_ref().map(|r| rwapi::unpack::<reapi::ActionResult>(r, rwapi::ACTION_RESULT)) {
                Some(Some(Ok(result))) => Some(result),
                Some(_) => {
                    let message = format!("the bot's result for lease {} is not an ActionResult", lease.id);
                    status = Some(protocol::to_rpc(&Status::internal(message)));
                    None
                }
                None => None,
            };
            LeaseReport {
                lease_id: lease.id.clone(),
                state: LeaseState::try_from(lease.state).unwrap_or(LeaseState::Unspecified),
                status,
                result,
            }
        })
        .collect()
}

/// Whether the server's view of the leases tells the bot anything it did not send.
fn news(sent: &BotSession, view: &SessionView) -> bool {
    view.leases.iter().any(|lease| !sent.leases.iter().any(|s| s.id == lease.id && s.state == lease.state as i32))
}

/// A lease on the wire: while the bot may run it, the Action packed as its payload, with `command`
/// when given.
fn to_lease(view: &LeaseView, command: Option<&Bytes>) -> rwapi::Lease {
    let payload = view.work.as_ref().map(|work| match command {
        Some(command) => rwapi::pack(rwapi::ACTION_AND_COMMAND, &rwapi::ActionAndCommand { action: Some(work.action.clone()), command: command.clone() }),
        None => rwapi::pack(rwapi::ACTION, &work.action),
    });
    rwapi::Lease { id: view.id.clone(), state: view.state as i32, payload, ..Default::default() }
}

/// The session as the bot sees it. A bot sent Commands gets a PENDING lease's, when it starts the
/// work, within `COMMAND_BYTES_PER_ANSWER`; every answer repeats an ACTIVE lease, which carries the
/// Action alone, so that a busy bot's answers stay small.
fn answer(name: String, mut session: BotSession, view: SessionView, send_commands: bool) -> BotSession {
    let mut room = if send_commands { rwapi::COMMAND_BYTES_PER_ANSWER } else { 0 };
    let mut command = |lease: &LeaseView| {
        let command = lease.work.as_ref()?.command.as_ref()?.bytes();
        let fits = lease.state == LeaseState::Pending && command.len() <= room;
        fits.then(|| {
            room -= command.len();
            command.clone()
        })
    };
    session.name = name;
    session.leases = view.leases.iter().map(|lease| to_lease(lease, command(lease).as_ref())).collect();
    session.expire_time = Some(crate::protocol::timestamp(view.expire_time));
    session
}

#[tonic::async_trait]
impl Bots for BotsService {
    async fn create_bot_session(&self, request: Request<rwapi::CreateBotSessionRequest>) -> Result<Response<BotSession>, Status> {
        let access = Access::of(&request)?.clone();
        let req = request.into_inner();
        self.instances.execution(&access, &req.parent)?;
        let session = req.bot_session.ok_or_else(|| Status::invalid_argument("bot_session missing"))?;
        if session.bot_id.is_empty() {
            return Err(Status::invalid_argument("bot_session.bot_id is empty; every bot needs an id"));
        }
        tracing::debug!(bot_id = %session.bot_id, ?session, "CreateBotSession");
        let send_commands = sends_commands(&session, &access, &req.parent)?;
        let new = NewSession {
            instance: req.parent.clone(),
            owner: access.caller.name.clone(),
            bot_id: session.bot_id.clone(),
            properties: properties(&session),
            // Leases at once: Strata's bot and buildbox-worker (`--concurrent-jobs`) both send it.
            capacity: config(&session, "capacity", 1usize, "a valid number", |n| *n > 0)?,
            status: bot_status(&session),
            // buildbox-worker's `--priority`: lower values are handed work first.
            priority: config(&session, "priority", 0i32, "a valid number", |_| true)?,
        };
        let (name, view) = self.scheduler.create_session(new);
        Ok(Response::new(answer(name, session, view, send_commands)))
    }

    async fn update_bot_session(&self, request: Request<rwapi::UpdateBotSessionRequest>) -> Result<Response<BotSession>, Status> {
        let wait = deadline(&request).map_or(MAX_POLL, |d| d.saturating_sub(d / 10).min(MAX_POLL));
        let access = Access::of(&request)?.clone();
        let req = request.into_inner();
        let session = req.bot_session.ok_or_else(|| Status::invalid_argument("bot_session missing"))?;
        let name = if req.name.is_empty() { session.name.clone() } else { req.name };
        if !session.name.is_empty() && session.name != name {
            return Err(Status::invalid_argument(format!("name {} and bot_session.name {} differ", quote(&name), quote(&session.name))));
        }
        tracing::trace!(session = %name, ?session, "UpdateBotSession");
        // Another identity's session is not there for this caller.
        let origin = self.scheduler.session_origin(&name).map_err(status::from_scheduler)?;
        if origin.owner != access.caller.name {
            return Err(status::from_scheduler(crate::exec::scheduler::SchedulerError::UnknownSession(name)));
        }
        let send_commands = sends_commands(&session, &access, &origin.instance)?;
        let calling = Calling::new(&self.scheduler, &name);
        let status = bot_status(&session);
        let reported = self.scheduler.report(&name, reports(&session), status).map_err(status::from_scheduler)?;
        let (mut view, finished) = (reported.view, reported.finished);
        // Results are cached and delivered on their own task: the bot may abandon this call (it does
        // when another action finishes), and a result must not be lost with it.
        if !finished.is_empty() {
            let scheduler = self.scheduler.clone();
            tokio::spawn(async move {
                for f in finished {
                    scheduler.deliver(f).await;
                }
            });
        }
        let hold = view.has_room && !reported.answer_now && status != BotStatus::BotTerminating && !news(&session, &view);
        if hold {
            let wake = view.wake.clone();
            let wait = wait.min(self.scheduler.config().bot_session_timeout / 2);
            tokio::select! {
                _ = tokio::time::timeout(wait, wake.notified()) => {}
                () = self.scheduler.closed() => {}
            }
            view = self.scheduler.session_view(&name).map_err(status::from_scheduler)?;
        }
        drop(calling);
        Ok(Response::new(answer(name, session, view, send_commands)))
    }

    async fn post_bot_event_temp(&self, request: Request<rwapi::PostBotEventTempRequest>) -> Result<Response<Empty>, Status> {
        let req = request.into_inner();
        tracing::info!(session = %req.name, kind = req.r#type, "bot event: {}", req.msg);
        Ok(Response::new(Empty {}))
    }
}
