//! The in-process, push-based scheduler. Jobs wait in one queue ordered by priority then arrival; a
//! job is handed to a bot session the moment one with free capacity and matching properties exists
//! (a session long-polling for work is woken at once). Each client has its own operation; identical
//! cacheable actions in flight share one job. All state sits behind one lock: every step under it is
//! a few map operations, and nothing under it awaits.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use parking_lot::Mutex;
use strata_backends::{ActionCacheStore, Digest};
use tokio::sync::{watch, Notify};
use tonic::Code;

use crate::protocol::rwapi::{self, BotStatus, LeaseState};

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

/// A watcher's view of one operation.
pub struct OperationView {
    pub name: String,
    pub action_digest: Digest,
    pub state: watch::Receiver<OpState>,
}

/// A job as submitted by the Execution service, after validation.
pub struct NewJob {
    pub instance: String,
    pub action_digest: Digest,
    /// The Action as the bot receives it (its timeout already capped by the server).
    pub action: reapi::Action,
    pub platform: Vec<(String, String)>,
    pub priority: i32,
    pub timeout: Duration,
    pub cacheable: bool,
}

/// A bot opening a session, for `Scheduler::create_session`.
pub struct NewSession {
    pub instance: String,
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

/// A bot session as the Bots service answers it.
pub struct SessionView {
    pub leases: Vec<rwapi::Lease>,
    pub expire_time: SystemTime,
    pub wake: Arc<Notify>,
    /// Whether the bot could take another lease now (healthy, with a free slot).
    pub has_room: bool,
}

impl SessionView {
    /// The answer to a session that has just ended (its bot is terminating).
    fn gone() -> SessionView {
        SessionView { leases: Vec::new(), expire_time: SystemTime::now(), wake: Arc::new(Notify::new()), has_room: false }
    }
}

/// What `Scheduler::report` made of a bot's update.
pub struct Reported {
    pub view: SessionView,
    /// Results to cache and deliver (`Scheduler::deliver`).
    pub finished: Vec<Finished>,
    /// The bot waits for this answer before it goes on (it accepted a lease, which buildbox-worker
    /// starts only once the server has answered, or its status changed): it must not be held. A
    /// bot reporting a result or a cancellation waits for nothing but new work, and is held like an
    /// idle one: buildbox-worker pauses 250 ms after an empty answer, which an action queued just
    /// after the result would otherwise wait out.
    pub answer_now: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("unknown bot session {}: the server may have restarted or expired it; create a new session", crate::quote::quote(.0))]
    UnknownSession(String),
    #[error("unknown operation {}", crate::quote::quote(.0))]
    UnknownOperation(String),
}

pub struct Scheduler {
    config: SchedulerConfig,
    /// Distinguishes this process's names from a previous one's.
    boot: String,
    state: Mutex<State>,
    /// Where successful results are cached, per instance name.
    action_caches: HashMap<String, Arc<dyn ActionCacheStore>>,
    /// Set when the server shuts down: long polls answer at once.
    closing: watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    next_id: u64,
    jobs: HashMap<u64, Job>,
    /// (priority, job id): lower priority values first, then arrival.
    queue: BTreeSet<(i32, u64)>,
    in_flight: HashMap<(String, Digest), u64>,
    operations: BTreeMap<String, Operation>,
    /// Finished operations, oldest first, to be forgotten after the retention time.
    finished: VecDeque<(Instant, String)>,
    sessions: HashMap<String, Session>,
}

struct Job {
    new: NewJob,
    operations: Vec<String>,
    attempts: u32,
    queued_at: Instant,
    /// The session and lease running it, and since when.
    running: Option<(String, String, Instant)>,
}

struct Operation {
    action_digest: Digest,
    job: Option<u64>,
    state: watch::Sender<OpState>,
}

struct Session {
    instance: String,
    bot_id: String,
    /// The last BotStatus the bot reported; only healthy bots get work.
    status: BotStatus,
    /// Bots with lower values get work first.
    priority: i32,
    properties: HashMap<String, HashSet<String>>,
    capacity: usize,
    leases: HashMap<String, SessionLease>,
    last_seen: Instant,
    /// Calls of this session in progress: a bot waiting in a long poll is alive.
    calls: u32,
    wake: Arc<Notify>,
}

struct SessionLease {
    job: u64,
    state: LeaseState,
    payload: Option<bazel_remote_apis::google::protobuf::Any>,
}

impl Session {
    fn busy(&self) -> usize {
        self.leases.values().filter(|l| l.state != LeaseState::Cancelled).count()
    }

    fn has_room(&self) -> bool {
        healthy(self.status) && self.busy() < self.capacity
    }

    fn offers(&self, key: &str, value: &str) -> bool {
        self.properties.get(key).is_some_and(|vs| vs.contains(value))
    }

    /// Whether the bot could ever run the job (whatever it is doing now).
    fn matches(&self, instance: &str, platform: &[(String, String)]) -> bool {
        self.instance == instance && platform.iter().all(|(k, v)| self.offers(k, v))
    }
}

/// Bots that say nothing of their health (BotStatus unspecified) are taken as healthy.
fn healthy(status: BotStatus) -> bool {
    matches!(status, BotStatus::Ok | BotStatus::Unspecified)
}

fn response(code: Code, message: String) -> Outcome {
    Outcome::Response(Arc::new(reapi::ExecuteResponse {
        status: Some(bazel_remote_apis::google::rpc::Status { code: code as i32, message, details: Vec::new() }),
        ..Default::default()
    }))
}

impl Scheduler {
    /// A scheduler and its timer task (which stops when the scheduler is dropped).
    pub fn start(config: SchedulerConfig, action_caches: HashMap<String, Arc<dyn ActionCacheStore>>) -> Arc<Scheduler> {
        let boot = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_nanos();
        let scheduler = Arc::new(Scheduler {
            config,
            boot: format!("{:x}", boot & 0xffff_ffff_ffff),
            state: Mutex::new(State::default()),
            action_caches,
            closing: watch::channel(false).0,
        });
        tokio::spawn(expire_loop(Arc::downgrade(&scheduler)));
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
    pub fn completed(&self, action_digest: Digest, response: reapi::ExecuteResponse) -> OperationView {
        let mut st = self.state.lock();
        let name = self.new_name(&mut st, "operations");
        let state = OpState {
            stage: reapi::execution_stage::Value::Completed,
            outcome: Some(Outcome::Response(Arc::new(response))),
        };
        let (tx, rx) = watch::channel(state);
        st.operations.insert(name.clone(), Operation { action_digest, job: None, state: tx });
        st.finished.push_back((Instant::now(), name.clone()));
        OperationView { name, action_digest, state: rx }
    }

    /// Queues a job, or joins an identical cacheable one in flight, and returns the new operation.
    pub fn submit(&self, new: NewJob) -> OperationView {
        let mut st = self.state.lock();
        let name = self.new_name(&mut st, "operations");
        let action_digest = new.action_digest;
        let key = (new.instance.clone(), action_digest);
        let joined = if new.cacheable { st.in_flight.get(&key).copied() } else { None };
        let (job_id, stage) = match joined.and_then(|id| Some((id, st.jobs.get_mut(&id)?))) {
            Some((id, job)) => {
                job.operations.push(name.clone());
                (id, if job.running.is_some() { reapi::execution_stage::Value::Executing } else { reapi::execution_stage::Value::Queued })
            }
            None => {
                st.next_id += 1;
                let id = st.next_id;
                if new.cacheable {
                    st.in_flight.insert(key, id);
                }
                st.queue.insert((new.priority, id));
                let job = Job { new, operations: vec![name.clone()], attempts: 0, queued_at: Instant::now(), running: None };
                st.jobs.insert(id, job);
                (id, reapi::execution_stage::Value::Queued)
            }
        };
        let (tx, rx) = watch::channel(OpState { stage, outcome: None });
        st.operations.insert(name.clone(), Operation { action_digest, job: Some(job_id), state: tx });
        if joined.is_none() {
            dispatch_job(&mut st, job_id);
            if let Some(job) = st.jobs.get(&job_id).filter(|j| j.running.is_none()) {
                if let Some(why) = unmatched(&st, &job.new.instance, &job.new.platform) {
                    tracing::warn!(operation = %name, action = %action_digest, "queued, but {why}");
                }
            }
        }
        OperationView { name, action_digest, state: rx }
    }

    pub fn watch(&self, name: &str) -> Result<OperationView, SchedulerError> {
        let st = self.state.lock();
        let op = st.operations.get(name).ok_or_else(|| SchedulerError::UnknownOperation(name.to_string()))?;
        Ok(OperationView { name: name.to_string(), action_digest: op.action_digest, state: op.state.subscribe() })
    }

    /// Operations after `after` (by name), at most `limit`; and whether more follow.
    pub fn list(&self, after: &str, limit: usize) -> (Vec<OperationView>, bool) {
        let st = self.state.lock();
        let mut views = Vec::new();
        let range = st.operations.range::<str, _>((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded));
        for (name, op) in range {
            if views.len() == limit {
                return (views, true);
            }
            views.push(OperationView { name: name.clone(), action_digest: op.action_digest, state: op.state.subscribe() });
        }
        (views, false)
    }

    /// Cancels one operation; its job is cancelled when no operation waits on it any more.
    pub fn cancel(&self, name: &str) -> Result<(), SchedulerError> {
        let mut st = self.state.lock();
        let op = st.operations.get_mut(name).ok_or_else(|| SchedulerError::UnknownOperation(name.to_string()))?;
        let Some(job_id) = op.job.take() else { return Ok(()) };
        op.state.send_modify(|s| s.outcome = Some(Outcome::Error(Code::Cancelled, format!("operation {name} was cancelled"))));
        st.finished.push_back((Instant::now(), name.to_string()));
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
        let op = st.operations.remove(name).ok_or_else(|| SchedulerError::UnknownOperation(name.to_string()))?;
        if let Some(job) = op.job.and_then(|id| st.jobs.get_mut(&id)) {
            job.operations.retain(|o| o != name);
        }
        Ok(())
    }

    /// Opens a bot session and hands it whatever queued work it can take. A bot id names one bot of
    /// an instance: a session it had there before (it restarted) is closed and its leases go back
    /// to the queue at once.
    pub fn create_session(&self, new: NewSession) -> (String, SessionView) {
        let NewSession { instance, bot_id, properties, capacity, status, priority } = new;
        let mut st = self.state.lock();
        let previous: Vec<String> =
            st.sessions.iter().filter(|(_, s)| s.bot_id == bot_id && s.instance == instance).map(|(n, _)| n.clone()).collect();
        for old in previous {
            if let Some(s) = st.sessions.remove(&old) {
                tracing::info!(session = %old, bot_id, "bot opened a new session; its old one is closed and its leases queued again");
                s.wake.notify_one();
                requeue_leases(&mut st, s, &format!("bot {bot_id:?} restarted"), self.config.max_attempts);
            }
        }
        let name = self.new_name(&mut st, "botSessions");
        let mut props: HashMap<String, HashSet<String>> = HashMap::new();
        for (k, v) in properties {
            props.entry(k).or_default().insert(v);
        }
        st.sessions.insert(
            name.clone(),
            Session {
                instance,
                bot_id: bot_id.clone(),
                status,
                priority,
                properties: props,
                capacity: capacity.max(1),
                leases: HashMap::new(),
                last_seen: Instant::now(),
                calls: 0,
                wake: Arc::new(Notify::new()),
            },
        );
        tracing::info!(session = %name, bot_id, capacity, ?status, "bot session created");
        fill_session(&mut st, &name);
        let view = self.view(&st, &name).unwrap_or_else(SessionView::gone);
        (name, view)
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
        let mut finished = Vec::new();
        for report in reports {
            let Some(lease) = s.leases.get_mut(&report.lease_id) else { continue };
            match report.state {
                LeaseState::Pending => {}
                // The payload stays: some bots (buildbox-worker) read it from the ACTIVE lease.
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
                        finished.push((job, report));
                    }
                }
            }
        }
        let mut done = Vec::new();
        for (job_id, report) in finished {
            let Some(job) = st.jobs.get_mut(&job_id) else { continue };
            job.running = None;
            let bot_status = report.status.unwrap_or_else(crate::protocol::ok_rpc);
            let ok = bot_status.code == Code::Ok as i32;
            let response = reapi::ExecuteResponse {
                result: report.result,
                cached_result: false,
                status: Some(bot_status),
                ..Default::default()
            };
            let cache = ok && job.new.cacheable && response.result.as_ref().is_some_and(|r| r.exit_code == 0);
            done.push(Finished { job: job_id, instance: job.new.instance.clone(), action_digest: job.new.action_digest, response, cache });
        }
        if terminating {
            if let Some(s) = st.sessions.remove(session) {
                requeue_leases(&mut st, s, "its bot is terminating", self.config.max_attempts);
            }
        } else {
            fill_session(&mut st, session);
        }
        let view = self.view(&st, session).unwrap_or_else(SessionView::gone);
        Ok(Reported { view, finished: done, answer_now })
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

    /// Caches a successful result, then completes the job's operations with it.
    pub async fn deliver(&self, finished: Finished) {
        if finished.cache {
            if let (Some(ac), Some(result)) = (self.action_caches.get(&finished.instance), &finished.response.result) {
                let encoded = bytes::Bytes::from(prost::Message::encode_to_vec(result));
                if let Err(e) = ac.put(&finished.action_digest, encoded).await {
                    tracing::warn!(action = %finished.action_digest, "caching the result failed: {e}");
                }
            }
        }
        let mut st = self.state.lock();
        finish_job(&mut st, finished.job, Outcome::Response(Arc::new(finished.response)));
    }

    fn view(&self, st: &State, name: &str) -> Option<SessionView> {
        let s = st.sessions.get(name)?;
        let mut leases: Vec<rwapi::Lease> = s
            .leases
            .iter()
            .map(|(id, l)| rwapi::Lease {
                id: id.clone(),
                state: l.state as i32,
                payload: l.payload.clone(),
                ..Default::default()
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

    /// Enforces the queue, execution and bot-session timeouts, and forgets old operations.
    fn expire(&self) {
        let now = Instant::now();
        let mut st = self.state.lock();
        let lost: Vec<String> = st
            .sessions
            .iter()
            .filter(|(_, s)| s.calls == 0 && now.duration_since(s.last_seen) > self.config.bot_session_timeout)
            .map(|(name, _)| name.clone())
            .collect();
        for name in lost {
            if let Some(s) = st.sessions.remove(&name) {
                tracing::warn!(session = %name, bot_id = %s.bot_id, "bot session expired; its leases go back to the queue");
                let reason = format!("the session of bot {:?} expired", s.bot_id);
                requeue_leases(&mut st, s, &reason, self.config.max_attempts);
            }
        }
        let queue_timeout = self.config.queue_timeout;
        let stale: Vec<u64> = st
            .queue
            .iter()
            .filter(|(_, id)| st.jobs.get(id).is_some_and(|j| now.duration_since(j.queued_at) > queue_timeout))
            .map(|(_, id)| *id)
            .collect();
        for id in stale {
            let Some(job) = st.jobs.get(&id) else { continue };
            let platform = describe_platform(&job.new.platform);
            let why = unmatched(&st, &job.new.instance, &job.new.platform).unwrap_or_else(|| "every matching bot was busy".into());
            let message = format!(
                "no bot took the action within the queue timeout of {queue_timeout:?} (platform {platform}): {why}; \
                 attach a bot with these properties or raise execution.queue_timeout"
            );
            finish_job(&mut st, id, response(Code::Unavailable, message));
        }
        // The bot enforces the action's timeout; this catches bots that do not.
        let overdue: Vec<(u64, Duration)> = st
            .jobs
            .iter()
            .filter_map(|(id, j)| {
                let (_, _, since) = j.running.as_ref()?;
                (now.duration_since(*since) > j.new.timeout + self.config.bot_session_timeout).then_some((*id, j.new.timeout))
            })
            .collect();
        for (id, timeout) in overdue {
            let message = format!("the action did not finish within its execution timeout of {timeout:?}");
            drop_job(&mut st, id, false);
            finish_job(&mut st, id, response(Code::DeadlineExceeded, message));
        }
        let retention = self.config.operation_retention;
        while let Some((at, _)) = st.finished.front() {
            if now.duration_since(*at) < retention {
                break;
            }
            if let Some((_, name)) = st.finished.pop_front() {
                st.operations.remove(&name);
            }
        }
    }
}

/// A job whose bot reported a result, to be cached and delivered.
pub struct Finished {
    job: u64,
    instance: String,
    action_digest: Digest,
    response: reapi::ExecuteResponse,
    cache: bool,
}

async fn expire_loop(scheduler: Weak<Scheduler>) {
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(scheduler) = scheduler.upgrade() else { return };
        scheduler.expire();
    }
}

fn describe_platform(platform: &[(String, String)]) -> String {
    if platform.is_empty() {
        return "{}".into();
    }
    let pairs: Vec<String> = platform.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// Why no connected bot can ever run a job of this platform, or `None` when one could.
fn unmatched(st: &State, instance: &str, platform: &[(String, String)]) -> Option<String> {
    let bots: Vec<&Session> = st.sessions.values().filter(|s| s.instance == instance).collect();
    if bots.iter().any(|s| s.matches(instance, platform)) {
        return None;
    }
    if bots.is_empty() {
        return Some(format!("no bot is connected to instance {instance:?}"));
    }
    let missing: Vec<String> =
        platform.iter().filter(|(k, v)| !bots.iter().any(|s| s.offers(k, v))).map(|(k, v)| format!("{k}={v}")).collect();
    Some(if missing.is_empty() {
        format!("no connected bot offers all of {}", describe_platform(platform))
    } else {
        format!("no connected bot offers {}", missing.join(", "))
    })
}

/// Hands a queued job to a matching session with free capacity, if there is one.
fn dispatch_job(st: &mut State, job_id: u64) {
    let Some(job) = st.jobs.get(&job_id) else { return };
    let session = st
        .sessions
        .iter()
        .filter(|(_, s)| s.has_room() && s.matches(&job.new.instance, &job.new.platform))
        // The bot's own priority first (lower is preferred, as buildbox-worker's --priority), then
        // the one with most free slots.
        .min_by_key(|(_, s)| (s.priority, std::cmp::Reverse(s.capacity - s.busy())))
        .map(|(name, _)| name.clone());
    if let Some(session) = session {
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
        let next = st.queue.iter().find(|(_, id)| st.jobs.get(id).is_some_and(|j| s.matches(&j.new.instance, &j.new.platform)));
        let Some(&(_, id)) = next else { return };
        assign(st, id, session);
    }
}

fn assign(st: &mut State, job_id: u64, session: &str) {
    let (Some(job), Some(s)) = (st.jobs.get_mut(&job_id), st.sessions.get_mut(session)) else { return };
    st.queue.remove(&(job.new.priority, job_id));
    job.attempts += 1;
    let lease_id = format!("{job_id}-{}", job.attempts);
    job.running = Some((session.to_string(), lease_id.clone(), Instant::now()));
    let payload = rwapi::pack(rwapi::ACTION, &job.new.action);
    s.leases.insert(lease_id, SessionLease { job: job_id, state: LeaseState::Pending, payload: Some(payload) });
    s.wake.notify_one();
    for name in &job.operations {
        if let Some(op) = st.operations.get(name) {
            op.state.send_modify(|o| o.stage = reapi::execution_stage::Value::Executing);
        }
    }
}

/// Puts the leases of a session that is gone back in the queue (or fails jobs out of attempts).
fn requeue_leases(st: &mut State, session: Session, reason: &str, max_attempts: u32) {
    for lease in session.leases.into_values().filter(|l| l.state != LeaseState::Cancelled) {
        let Some(job) = st.jobs.get_mut(&lease.job) else { continue };
        job.running = None;
        if job.attempts >= max_attempts {
            let message = format!("the action was handed to a bot {} times and lost each time (last: {reason})", job.attempts);
            finish_job(st, lease.job, response(Code::Aborted, message));
            continue;
        }
        job.queued_at = Instant::now();
        st.queue.insert((job.new.priority, lease.job));
        for name in &job.operations {
            if let Some(op) = st.operations.get(name) {
                op.state.send_modify(|o| o.stage = reapi::execution_stage::Value::Queued);
            }
        }
        dispatch_job(st, lease.job);
    }
}

/// Takes a job out of the queue or off its bot (whose next update tells it CANCELLED).
fn drop_job(st: &mut State, job_id: u64, forget: bool) {
    let Some(job) = st.jobs.get_mut(&job_id) else { return };
    st.queue.remove(&(job.new.priority, job_id));
    if let Some((session, lease, _)) = job.running.take() {
        if let Some(s) = st.sessions.get_mut(&session) {
            if let Some(l) = s.leases.get_mut(&lease) {
                l.state = LeaseState::Cancelled;
                l.payload = None;
            }
            s.wake.notify_one();
        }
    }
    if forget {
        if let Some(job) = st.jobs.remove(&job_id) {
            let key = (job.new.instance, job.new.action_digest);
            if st.in_flight.get(&key) == Some(&job_id) {
                st.in_flight.remove(&key);
            }
        }
    }
}

/// Completes every operation of a job with `outcome` and forgets the job.
fn finish_job(st: &mut State, job_id: u64, outcome: Outcome) {
    drop_job(st, job_id, false);
    let Some(job) = st.jobs.remove(&job_id) else { return };
    let key = (job.new.instance, job.new.action_digest);
    if st.in_flight.get(&key) == Some(&job_id) {
        st.in_flight.remove(&key);
    }
    let now = Instant::now();
    for name in &job.operations {
        if let Some(op) = st.operations.get_mut(name) {
            op.job = None;
            st.finished.push_back((now, name.clone()));
            op.state.send_modify(|o| {
                o.stage = reapi::execution_stage::Value::Completed;
                o.outcome = Some(outcome.clone());
            });
        }
    }
}
