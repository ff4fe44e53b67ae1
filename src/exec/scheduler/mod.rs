//! The in-process, push-based scheduler. Jobs wait in a queue indexed by what they need; a job is
//! handed to a bot session the moment one with free capacity and matching properties exists (a
//! session long-polling for work is woken at once). Each client has its own operation; identical
//! cacheable actions in flight share one job. All state sits behind one lock: every step under it is
//! a few map operations, and nothing under it awaits. The parts: `queue` (waiting jobs), `sessions`
//! (bots), `operations` (what clients watch), `expiry` (the timeouts); successful results go to a
//! `ResultSink` before their operations complete.

mod commands;
mod expiry;
pub mod metrics;
mod operations;
mod queue;
mod sessions;
#[cfg(test)]
mod tests;
mod types;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use parking_lot::Mutex;
use strata_backends::Digest;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tonic::Code;

use crate::protocol::rwapi::{BotStatus, LeaseState};
use commands::{CommandPool, COMMAND_BYTES_HELD};
use metrics::{BotSnapshot, QueuedGroup, RunningJob, SchedulerMetrics, Snapshot};
use operations::Operations;
use queue::{Needs, Queue};
use sessions::{Session, SessionLease, Sessions};
pub use types::{
    failed, Counts, Finished, LeaseReport, LeaseView, NewJob, NewSession, OpState, OperationView, Origin, Outcome, Reported, ResultSink,
    SchedulerConfig, SchedulerError, SessionView, Work,
};

use reapi::execution_stage::Value as Stage;

pub struct Scheduler {
    config: SchedulerConfig,
    /// Distinguishes this process's names from a previous one's.
    boot: String,
    state: Mutex<State>,
    sink: Arc<dyn ResultSink>,
    /// Set when the server shuts down: long polls answer at once.
    closing: watch::Sender<bool>,
    commands: Arc<CommandPool>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    jobs: HashMap<u64, Job>,
    queue: Queue,
    in_flight: HashMap<(String, Digest), u64>,
    operations: Operations,
    sessions: Sessions,
    metrics: SchedulerMetrics,
}

struct Job {
    new: NewJob,
    work: Arc<Work>,
    needs: Arc<Needs>,
    operations: Vec<String>,
    attempts: u32,
    /// The session and lease running it, and since when.
    running: Option<(String, String, Instant)>,
}

impl Scheduler {
    /// A scheduler and its timer task (which stops when the scheduler is dropped).
    pub fn start(config: SchedulerConfig, sink: Arc<dyn ResultSink>) -> Arc<Scheduler> {
        let boot = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let scheduler = Arc::new(Scheduler {
            config,
            boot: format!("{:x}", boot & 0xffff_ffff_ffff),
            state: Mutex::new(State::default()),
            sink,
            closing: watch::channel(false).0,
            commands: CommandPool::new(COMMAND_BYTES_HELD),
        });
        tokio::spawn(expiry::run(Arc::downgrade(&scheduler)));
        scheduler
    }

    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Ends the long polls in progress and to come (the server is shutting down).
    pub fn close(&self) {
        self.closing.send_replace(true);
    }

    /// Completes when the server shuts down.
    pub async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|c| *c).await;
    }

    /// An operation that is already complete (an action cache hit).
    pub fn completed(&self, origin: Origin, action_digest: Digest, response: reapi::ExecuteResponse) -> OperationView {
        let mut st = self.state.lock();
        let name = self.new_name(&mut st, "operations");
        st.metrics.completed("cached");
        let state = OpState { stage: Stage::Completed, outcome: Some(Outcome::Response(Arc::new(response))) };
        st.operations.insert(name, action_digest, origin, None, state, Instant::now())
    }

    /// Queues a job, or joins an identical cacheable one in flight, and returns the new operation.
    pub fn submit(&self, mut new: NewJob) -> OperationView {
        let mut st = self.state.lock();
        let name = self.new_name(&mut st, "operations");
        let action_digest = new.action_digest;
        let origin = Origin { instance: new.instance.clone(), owner: new.owner.clone() };
        let key = (new.instance.clone(), action_digest);
        let joined = if new.cacheable { st.in_flight.get(&key).copied() } else { None };
        let (job_id, stage) = match joined.and_then(|id| Some((id, st.jobs.get_mut(&id)?))) {
            Some((id, job)) => {
                job.operations.push(name.clone());
                (id, if job.running.is_some() { Stage::Executing } else { Stage::Queued })
            }
            None => {
                st.next_id += 1;
                let id = st.next_id;
                if new.cacheable {
                    st.in_flight.insert(key, id);
                }
                let needs = Needs::new(new.instance.clone(), new.platform.clone());
                st.queue.push(id, needs.clone(), new.priority, Instant::now());
                // The work lives once, shared with every lease view; the job keeps the rest.
                let work = Arc::new(std::mem::take(&mut new.work));
                st.jobs.insert(id, Job { new, work, needs, operations: vec![name.clone()], attempts: 0, running: None });
                (id, Stage::Queued)
            }
        };
        let view = st.operations.insert(name.clone(), action_digest, origin, Some(job_id), OpState { stage, outcome: None }, Instant::now());
        if joined.is_none() {
            dispatch_job(&mut st, job_id);
            if let Some(job) = st.jobs.get(&job_id).filter(|j| j.running.is_none()) {
                if let Some(why) = st.sessions.unmatched(&job.needs) {
                    tracing::warn!(operation = %name, action = %action_digest, "queued, but {why}");
                }
            }
        }
        view
    }

    pub fn watch(&self, name: &str) -> Result<OperationView, SchedulerError> {
        self.state.lock().operations.watch(name).ok_or_else(|| SchedulerError::UnknownOperation(name.to_string()))
    }

    /// Operations after `after` (by name) that `keep` lets through, at most `limit`; and whether
    /// more follow.
    pub fn list(&self, after: &str, limit: usize, keep: impl Fn(&Origin) -> bool) -> (Vec<OperationView>, bool) {
        self.state.lock().operations.list(after, limit, keep)
    }

    /// Cancels one operation; its job is cancelled when no operation waits on it any more.
    pub fn cancel(&self, name: &str) -> Result<(), SchedulerError> {
        let mut st = self.state.lock();
        if !st.operations.exists(name) {
            return Err(SchedulerError::UnknownOperation(name.to_string()));
        }
        let cancelled = Outcome::Error(Code::Cancelled, format!("operation {name} was cancelled"));
        let Some(job_id) = st.operations.end(name, cancelled, Instant::now()) else { return Ok(()) };
        let orphaned = st.jobs.get_mut(&job_id).is_some_and(|job| {
            job.operations.retain(|o| o != name);
            job.operations.is_empty()
        });
        if orphaned {
            drop_job(&mut st, job_id, true);
        }
        Ok(())
    }

    /// Forgets an operation (its job, if any, goes on for the other operations and the cache).
    pub fn delete(&self, name: &str) -> Result<(), SchedulerError> {
        let mut st = self.state.lock();
        let job = st.operations.remove(name).ok_or_else(|| SchedulerError::UnknownOperation(name.to_string()))?;
        if let Some(job) = job.and_then(|id| st.jobs.get_mut(&id)) {
            job.operations.retain(|o| o != name);
        }
        Ok(())
    }

    /// Opens a bot session and hands it whatever queued work it can take. A bot id names one bot of
    /// an instance: a session it had there before (it restarted) is closed and its leases go back
    /// to the queue at once.
    pub fn create_session(&self, new: NewSession) -> (String, SessionView) {
        let NewSession { instance, owner, bot_id, properties, capacity, status, priority } = new;
        let mut st = self.state.lock();
        for old in st.sessions.of_bot(&instance, &bot_id, &owner) {
            if let Some(s) = st.sessions.remove(&old) {
                tracing::info!(session = %old, bot_id, "bot opened a new session; its old one is closed and its leases queued again");
                s.wake.notify_one();
                requeue_leases(&mut st, s, &format!("bot {bot_id:?} restarted"), self.config.max_attempts);
            }
        }
        let name = self.new_name(&mut st, "botSessions");
        let mut offered: HashMap<String, HashSet<String>> = HashMap::new();
        for (k, v) in properties {
            offered.entry(k).or_default().insert(v);
        }
        let session = Session {
            instance,
            owner,
            bot_id: bot_id.clone(),
            status,
            priority,
            properties: offered,
            capacity: capacity.max(1),
            leases: HashMap::new(),
            last_seen: Instant::now(),
            calls: 0,
            wake: Arc::new(Notify::new()),
        };
        st.sessions.insert(name.clone(), session);
        tracing::info!(session = %name, bot_id, capacity, ?status, "bot session created");
        fill_session(&mut st, &name);
        let view = self.view(&st, &name).unwrap_or_else(SessionView::gone);
        (name, view)
    }

    /// Where jobs keep the Commands they send with their leases.
    pub fn commands(&self) -> &Arc<CommandPool> {
        &self.commands
    }

    /// The instance a session serves and the identity that opened it.
    pub fn session_origin(&self, session: &str) -> Result<Origin, SchedulerError> {
        let st = self.state.lock();
        let s = st.sessions.get(session).ok_or_else(|| SchedulerError::UnknownSession(session.to_string()))?;
        Ok(Origin { instance: s.instance.clone(), owner: s.owner.clone() })
    }

    /// Applies a bot's update: its status, and accepted, completed and acknowledged-cancelled
    /// leases. Returns the session as the bot should now see it and the results to deliver.
    pub fn report(&self, session: &str, reports: Vec<LeaseReport>, status: BotStatus) -> Result<Reported, SchedulerError> {
        let terminating = status == BotStatus::BotTerminating;
        let mut st = self.state.lock();
        let s = st.sessions.get_mut(session).ok_or_else(|| SchedulerError::UnknownSession(session.to_string()))?;
        s.last_seen = Instant::now();
        let mut answer_now = s.status != status;
        if answer_now {
            tracing::info!(session, bot_id = %s.bot_id, ?status, "bot status changed");
            s.status = status;
        }
        // A cancelled lease the bot does not mention is one it never started: nothing to tell it.
        let mentioned: HashSet<&str> = reports.iter().map(|r| r.lease_id.as_str()).collect();
        s.leases.retain(|id, l| l.state != LeaseState::Cancelled || mentioned.contains(id.as_str()));
        let mut completed = Vec::new();
        for report in reports {
            let Some(lease) = s.leases.get_mut(&report.lease_id) else { continue };
            match report.state {
                LeaseState::Pending => {}
                // The Action stays in the view: some bots (buildbox-worker) read it from the ACTIVE lease.
                LeaseState::Active => {
                    if lease.state == LeaseState::Pending {
                        lease.state = LeaseState::Active;
                        answer_now = true;
                    }
                }
                LeaseState::Completed | LeaseState::Cancelled | LeaseState::Unspecified => {
                    let (job, cancelled) = (lease.job, lease.state == LeaseState::Cancelled);
                    s.leases.remove(&report.lease_id);
                    if !cancelled && report.state == LeaseState::Completed {
                        completed.push((job, report));
                    }
                }
            }
        }
        let mut finished = Vec::new();
        for (job_id, report) in completed {
            let Some(job) = st.jobs.get_mut(&job_id) else { continue };
            job.running = None;
            let bot_status = report.status.unwrap_or_else(crate::protocol::ok_rpc);
            let ok = bot_status.code == Code::Ok as i32;
            let response = reapi::ExecuteResponse { result: report.result, cached_result: false, status: Some(bot_status), ..Default::default() };
            let cache = ok && job.new.cacheable && response.result.as_ref().is_some_and(|r| r.exit_code == 0);
            finished.push(Finished { job: job_id, instance: job.new.instance.clone(), action_digest: job.new.action_digest, response, cache });
        }
        if terminating {
            if let Some(s) = st.sessions.remove(session) {
                requeue_leases(&mut st, s, "its bot is terminating", self.config.max_attempts);
            }
        } else {
            fill_session(&mut st, session);
        }
        let view = self.view(&st, session).unwrap_or_else(SessionView::gone);
        Ok(Reported { view, finished, answer_now })
    }

    /// The session as the bot should see it now (after a wait in a long poll).
    pub fn session_view(&self, session: &str) -> Result<SessionView, SchedulerError> {
        let st = self.state.lock();
        self.view(&st, session).ok_or_else(|| SchedulerError::UnknownSession(session.to_string()))
    }

    /// Marks a call of the session as in progress (`true`) or over (`false`).
    pub fn calling(&self, session: &str, active: bool) {
        let mut st = self.state.lock();
        if let Some(s) = st.sessions.get_mut(session) {
            s.last_seen = Instant::now();
            if active {
                s.calls += 1;
            } else {
                s.calls = s.calls.saturating_sub(1);
            }
        }
    }

    /// Hands a successful result to the sink, then completes the job's operations with it.
    pub async fn deliver(&self, finished: Finished) {
        if finished.cache {
            if let Some(result) = &finished.response.result {
                self.sink.store(&finished.instance, &finished.action_digest, result).await;
            }
        }
        let mut st = self.state.lock();
        finish_job(&mut st, finished.job, Outcome::Response(Arc::new(finished.response)));
    }

    /// How much the scheduler holds now, for logs, tests and metrics.
    pub fn counts(&self) -> Counts {
        let st = self.state.lock();
        let running = st.jobs.values().filter(|j| j.running.is_some()).count();
        Counts { queued: st.queue.len(), running, sessions: st.sessions.len(), operations: st.operations.len() }
    }

    /// The counters and histograms, for the server's registry.
    pub fn metrics(&self) -> SchedulerMetrics {
        self.state.lock().metrics.clone()
    }

    /// The queue, the running jobs and the bots, for metrics and the admin API.
    pub fn snapshot(&self) -> Snapshot {
        let st = self.state.lock();
        let now = Instant::now();
        let queued = st
            .queue
            .by_needs()
            .map(|(needs, jobs)| QueuedGroup { instance: needs.instance.clone(), platform: needs.platform.clone(), jobs })
            .collect();
        let running = st
            .jobs
            .values()
            .filter_map(|j| {
                let (session, _, since) = j.running.as_ref()?;
                Some(RunningJob {
                    instance: j.new.instance.clone(),
                    action_digest: j.new.action_digest,
                    bot_id: st.sessions.get(session).map(|s| s.bot_id.clone()).unwrap_or_default(),
                    running_for: now.saturating_duration_since(*since),
                })
            })
            .collect();
        let bots = st
            .sessions
            .iter()
            .map(|(name, s)| BotSnapshot {
                session: name.clone(),
                bot_id: s.bot_id.clone(),
                instance: s.instance.clone(),
                status: format!("{:?}", s.status),
                capacity: s.capacity,
                busy: s.busy(),
                properties: s.property_pairs(),
                last_seen: now.saturating_duration_since(s.last_seen),
            })
            .collect();
        Snapshot { queued, running, bots, operations: st.operations.len() }
    }

    fn view(&self, st: &State, name: &str) -> Option<SessionView> {
        let s = st.sessions.get(name)?;
        let mut leases: Vec<LeaseView> = s
            .leases
            .iter()
            .map(|(id, l)| {
                let work = (l.state != LeaseState::Cancelled).then(|| st.jobs.get(&l.job).map(|j| j.work.clone())).flatten();
                LeaseView { id: id.clone(), state: l.state, work }
            })
            .collect();
        leases.sort_by(|a, b| a.id.cmp(&b.id));
        let expire_time = SystemTime::now() + self.config.bot_session_timeout;
        Some(SessionView { leases, expire_time, wake: s.wake.clone(), has_room: s.has_room() })
    }

    fn new_name(&self, st: &mut State, collection: &str) -> String {
        st.next_id += 1;
        format!("{collection}/{}-{}", self.boot, st.next_id)
    }
}

/// Hands a queued job to the best session that can take it now, if there is one.
fn dispatch_job(st: &mut State, job_id: u64) {
    let Some(job) = st.jobs.get(&job_id) else { return };
    if let Some(session) = st.sessions.best_for(&job.needs) {
        assign(st, job_id, &session);
    }
}

/// Gives a session queued jobs it can run, best first, until it is full.
fn fill_session(st: &mut State, session: &str) {
    loop {
        let Some(s) = st.sessions.get(session) else { return };
        if !s.has_room() {
            return;
        }
        let Some(id) = st.queue.best(|needs| s.can_run(needs)) else { return };
        assign(st, id, session);
    }
}

fn assign(st: &mut State, job_id: u64, session: &str) {
    let (Some(job), Some(s)) = (st.jobs.get_mut(&job_id), st.sessions.get_mut(session)) else { return };
    if let Some(queued) = st.queue.queued_at(job_id) {
        st.metrics.queued_for(queued.elapsed());
    }
    st.queue.remove(job_id);
    job.attempts += 1;
    let lease_id = format!("{job_id}-{}", job.attempts);
    job.running = Some((session.to_string(), lease_id.clone(), Instant::now()));
    s.leases.insert(lease_id, SessionLease { job: job_id, state: LeaseState::Pending });
    s.wake.notify_one();
    st.operations.set_stage(&job.operations, Stage::Executing);
}

/// Puts the leases of a session that is gone back in the queue (or fails jobs out of attempts).
fn requeue_leases(st: &mut State, session: Session, reason: &str, max_attempts: u32) {
    for lease in session.leases.into_values().filter(|l| l.state != LeaseState::Cancelled) {
        let Some(job) = st.jobs.get_mut(&lease.job) else { continue };
        job.running = None;
        if job.attempts >= max_attempts {
            let message = format!("the action was handed to a bot {} times and lost each time (last: {reason})", job.attempts);
            finish_job(st, lease.job, failed(Code::Aborted, message));
            continue;
        }
        st.queue.push(lease.job, job.needs.clone(), job.new.priority, Instant::now());
        st.operations.set_stage(&job.operations, Stage::Queued);
        dispatch_job(st, lease.job);
    }
}

/// Takes a job out of the queue or off its bot (whose next update tells it CANCELLED).
fn drop_job(st: &mut State, job_id: u64, forget: bool) {
    let Some(job) = st.jobs.get_mut(&job_id) else { return };
    st.queue.remove(job_id);
    if let Some((session, lease, _)) = job.running.take() {
        if let Some(s) = st.sessions.get_mut(&session) {
            if let Some(l) = s.leases.get_mut(&lease) {
                l.state = LeaseState::Cancelled;
            }
            s.wake.notify_one();
        }
    }
    if forget {
        if let Some(job) = st.jobs.remove(&job_id) {
            forget_in_flight(st, &job, job_id);
        }
    }
}

fn forget_in_flight(st: &mut State, job: &Job, job_id: u64) {
    let key = (job.new.instance.clone(), job.new.action_digest);
    if st.in_flight.get(&key) == Some(&job_id) {
        st.in_flight.remove(&key);
    }
}

/// Completes every operation of a job with `outcome` and forgets the job.
fn finish_job(st: &mut State, job_id: u64, outcome: Outcome) {
    if let Some((_, _, since)) = st.jobs.get(&job_id).and_then(|j| j.running.as_ref()) {
        st.metrics.executed_for(since.elapsed());
    }
    if st.jobs.contains_key(&job_id) {
        st.metrics.completed(metrics::result_of(&outcome));
    }
    drop_job(st, job_id, false);
    let Some(job) = st.jobs.remove(&job_id) else { return };
    forget_in_flight(st, &job, job_id);
    let now = Instant::now();
    for name in &job.operations {
        st.operations.end(name, outcome.clone(), now);
    }
}
