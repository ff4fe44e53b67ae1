//! `strata bot`: a Remote Workers API worker. It opens a bot session with its properties and
//! capacity (and asks for each lease's Command with its Action, which Strata sends), then keeps one
//! UpdateBotSession long poll open; new leases start at once, finished ones are reported at once (the
//! poll in flight is abandoned and a new one carries the result), and a CANCELLED lease kills its
//! process group. A server that no longer knows the session (it restarted) gets a new one.

mod action;
mod beneath;
mod cache_index;
mod inputs;
mod outputs;
mod runner;
pub mod spawner;

pub use runner::RunnerKind;

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use strata_backends::{RemoteConfig, RemoteStore};
use strata_backends::{Digest, StoreError};
use tokio::sync::mpsc;
use tonic::{Code, Status};

use crate::protocol::{AuthChannel, Backoff};
use crate::protocol::rwapi::{self, bots_client::BotsClient, BotSession, BotStatus, Lease, LeaseState};
use action::Context;

/// The deadline of each long poll.
const POLL: Duration = Duration::from_secs(30);
/// How often a bot with every slot busy and nothing to report calls anyway: servers answer such a
/// bot at once (it cannot take work), and the call keeps its session alive and brings cancellations.
const BUSY_CHECK: Duration = Duration::from_secs(1);

#[derive(clap::Args, Debug, Clone)]
pub struct BotArgs {
    /// The server whose Bots service hands out work: grpc://HOST:PORT (grpcs:// for TLS).
    #[arg(long)]
    pub server: String,
    /// The CAS to fetch inputs from and upload outputs to (default: the server).
    #[arg(long)]
    pub cas: Option<String>,
    /// The instance name whose actions this bot runs.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// Actions run at once.
    #[arg(long, default_value_t = 1)]
    pub capacity: usize,
    /// A platform property offered to actions, KEY=VALUE (repeatable). `OSFamily` and `ISA` are
    /// offered from this machine (e.g. linux, x86-64) unless given here.
    #[arg(long = "property", value_parser = parse_property)]
    pub properties: Vec<(String, String)>,
    /// `host` (the command sees this machine's file system), `bubblewrap` (the same, read-only, in a
    /// sandbox) or `hermetic` (the input root is the sandbox's `/`, as BuildStream needs).
    #[arg(long, value_enum, default_value_t = RunnerKind::Host)]
    pub runner: RunnerKind,
    /// Work directory: the input cache and the actions' directories.
    #[arg(long, default_value = "strata-bot")]
    pub work_dir: PathBuf,
    /// The bot's id (default: host name and process id).
    #[arg(long)]
    pub bot_id: Option<String>,
    /// Files, directories and symlinks an input root may expand to: a small DAG of Directory
    /// blobs that share children can name millions of paths.
    #[arg(long, default_value_t = DEFAULT_MAX_INPUT_PATHS)]
    pub max_input_paths: usize,
    /// Bytes the input cache under --work-dir holds at most (least recently used files go first).
    #[arg(long, default_value = DEFAULT_CACHE_SIZE)]
    pub cache_size: crate::units::ByteSize,
    /// How the bot reaches the server and the CAS: `--token-file` names an identity with the
    /// `bot`, `read` and `write` permissions.
    #[command(flatten)]
    pub credentials: crate::protocol::credentials::CredentialFlags,
    /// The token itself, for the bots `strata serve` runs in its process.
    #[arg(skip)]
    pub token: Option<String>,
    /// The user host-runner actions run as when the bot runs as root (default: nobody), so that
    /// an action cannot change its inputs or the bot's files.
    #[arg(long)]
    pub run_as: Option<String>,
    /// The strata binary whose `spawner` a root bot starts its actions through (see `spawner`):
    /// `strata bot` and `strata serve` give their own. Without one, each action runs through setpriv.
    #[arg(skip)]
    pub spawner: Option<PathBuf>,
}

pub const DEFAULT_CACHE_SIZE: &str = "10GiB";

pub const DEFAULT_MAX_INPUT_PATHS: usize = 1_000_000;

/// The properties the bot offers: those given, plus `OSFamily` and `ISA` of this machine unless
/// given (BuildStream always asks for both; BuildGrid's workers declare them too).
fn offered_properties(given: &[(String, String)]) -> Vec<(String, String)> {
    let mut properties = given.to_vec();
    let isa = match std::env::consts::ARCH {
        "x86_64" => "x86-64",
        "x86" => "x86-32",
        "arm" => "aarch32",
        other => other,
    };
    for (key, value) in [("OSFamily", std::env::consts::OS), ("ISA", isa)] {
        if !given.iter().any(|(k, _)| k == key) {
            properties.push((key.to_string(), value.to_string()));
        }
    }
    properties
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum BotError {
    #[error("{0}")]
    Setup(String),
    #[error("{0}")]
    Invalid(String),
    #[error("blob {0} is not in the CAS")]
    Missing(Digest),
    #[error("CAS: {0}")]
    Store(#[from] StoreError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Spawn(String),
    #[error("the action did not finish within its timeout of {timeout:?}")]
    TimedOut { timeout: Duration, partial: Box<reapi::ActionResult> },
}

/// Runs file system work off the async runtime: a bot in the server's process shares that runtime
/// with the services, and an input tree of thousands of files is thousands of syscalls.
pub(crate) async fn blocking<T: Send + 'static>(what: &str, work: impl FnOnce() -> Result<T, BotError> + Send + 'static) -> Result<T, BotError> {
    tokio::task::spawn_blocking(work).await.map_err(|e| BotError::Setup(format!("{what}: {e}")))?
}

impl BotError {
    pub fn io(path: &Path, source: std::io::Error) -> BotError {
        BotError::Io { path: path.to_path_buf(), source }
    }

    /// The status a lease reports for this failure.
    fn code(&self) -> Code {
        match self {
            BotError::Invalid(_) => Code::InvalidArgument,
            BotError::Missing(_) => Code::FailedPrecondition,
            BotError::TimedOut { .. } => Code::DeadlineExceeded,
            BotError::Store(StoreError::Unavailable { .. }) => Code::Unavailable,
            BotError::Setup(_) | BotError::Store(_) | BotError::Io { .. } | BotError::Spawn(_) => Code::Internal,
        }
    }
}

/// A lease this bot knows of.
enum Slot {
    Running(tokio::task::JoinHandle<()>),
    /// Finished, to be reported until the server has seen it.
    Done { result: Option<Box<reapi::ActionResult>>, status: bazel_remote_apis::google::rpc::Status },
    /// Cancelled by the server; to be acknowledged.
    Cancelled,
}

fn bot_id(args: &BotArgs) -> String {
    args.bot_id.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
        format!("{host}-{}", std::process::id())
    })
}

/// Runs the bot until `shutdown` completes; errors only for a setup it cannot work with.
pub async fn run(args: BotArgs, shutdown: impl Future<Output = ()>) -> Result<(), BotError> {
    if args.capacity == 0 {
        return Err(BotError::Setup("--capacity must be at least 1".into()));
    }
    let cas_endpoint = args.cas.clone().unwrap_or_else(|| args.server.clone());
    let mut auth = args.credentials.load().map_err(BotError::Setup)?;
    if let Some(token) = &args.token {
        auth.bearer_token = Some(token.clone());
    }
    let cas = RemoteStore::new(RemoteConfig {
        endpoint: cas_endpoint,
        instance: args.instance.clone(),
        timeout: Duration::from_secs(60),
        connect_timeout: Duration::from_secs(5),
        retries: 3,
        concurrency: 32,
        auth: auth.clone(),
        // Inputs are fetched over the local network from the server, where zstd costs more CPU
        // than the bytes it saves.
        compression: None,
    })?;
    let cache = inputs::InputCache::open(args.work_dir.join("cache"), Arc::new(cas), args.max_input_paths, args.cache_size.0)?;
    let actions_dir = args.work_dir.join("actions");
    // Directories of actions that were running when a previous bot died.
    let _ = std::fs::remove_dir_all(&actions_dir);
    std::fs::create_dir_all(&actions_dir).map_err(|e| BotError::io(&actions_dir, e))?;
    let absolute = std::path::absolute(&actions_dir).map_err(|e| BotError::io(&actions_dir, e))?;
    let runner = runner::Runner::new(args.runner, args.run_as.as_deref(), &absolute, args.spawner.as_deref()).await?;
    let ctx = Arc::new(Context { bot_id: bot_id(&args), cache, runner, scratches: Arc::new(action::Scratches::new(actions_dir)) });
    let client = BotsClient::new(crate::protocol::channel(&args.server, &auth, Duration::from_secs(5))?);
    let mut bot = Bot { args, ctx, client, slots: HashMap::new(), current: None, version: String::new() };
    tokio::select! {
        () = bot.serve() => Ok(()),
        () = shutdown => {
            bot.terminate().await;
            Ok(())
        }
    }
}

struct Bot {
    args: BotArgs,
    ctx: Arc<Context>,
    client: BotsClient<AuthChannel>,
    slots: HashMap<String, Slot>,
    /// The session in use, to be closed on shutdown.
    current: Option<String>,
    /// The version of the session the server last sent.
    version: String,
}

impl Bot {
    fn session(&self, name: &str, status: BotStatus) -> BotSession {
        let device = rwapi::Device {
            handle: self.ctx.bot_id.clone(),
            properties: offered_properties(&self.args.properties)
                .into_iter()
                .map(|(key, value)| rwapi::Property { key, value })
                .collect(),
        };
        let configs = vec![
            rwapi::Property { key: "capacity".into(), value: self.args.capacity.to_string() },
            // Servers that know it send each lease's Command along (Strata); others ignore it.
            rwapi::Property { key: rwapi::COMMAND_IN_LEASE.into(), value: "true".into() },
        ];
        let leases = self
            .slots
            .iter()
            .map(|(id, slot)| match slot {
                Slot::Running(_) => Lease { id: id.clone(), state: LeaseState::Active as i32, ..Default::default() },
                Slot::Done { result, status } => Lease {
                    id: id.clone(),
                    state: LeaseState::Completed as i32,
                    result: result.as_ref().map(|r| rwapi::pack(rwapi::ACTION_RESULT, r.as_ref())),
                    status: Some(status.clone()),
                    ..Default::default()
                },
                Slot::Cancelled => Lease { id: id.clone(), state: LeaseState::Cancelled as i32, ..Default::default() },
            })
            .collect();
        BotSession {
            name: name.to_string(),
            bot_id: self.ctx.bot_id.clone(),
            status: status as i32,
            worker: Some(rwapi::Worker { devices: vec![device], properties: Vec::new(), configs }),
            leases,
            expire_time: None,
            // The server's token, sent back as received (BuildGrid long-polls only on its own).
            version: self.version.clone(),
        }
    }

    /// Session after session: a new one whenever the server forgets the last.
    async fn serve(&mut self) {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            self.version.clear();
            let session = self.session("", BotStatus::Ok);
            let mut request = tonic::Request::new(rwapi::CreateBotSessionRequest { parent: self.args.instance.clone(), bot_session: Some(session) });
            // Some servers (BuildGrid) hold CreateBotSession open until they have work.
            request.set_timeout(POLL);
            match self.client.create_bot_session(request).await {
                Ok(response) => {
                    backoff.reset();
                    let session = response.into_inner();
                    tracing::info!(session = %session.name, bot_id = %self.ctx.bot_id, "bot session opened");
                    self.poll(session).await;
                }
                Err(status) => {
                    let delay = backoff.next_delay();
                    tracing::warn!("cannot open a bot session at {}: {} ({:?}); retrying in {delay:?}", self.args.server, status.message(), status.code());
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The long-poll loop of one session; returns when the server no longer knows it.
    async fn poll(&mut self, first: BotSession) {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let name = first.name.clone();
        self.current = Some(name.clone());
        self.apply(&first, &[], &done_tx);
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
        loop {
            let reported: Vec<String> = self.slots.iter().filter(|(_, s)| !matches!(s, Slot::Running(_))).map(|(id, _)| id.clone()).collect();
            if reported.is_empty() && self.slots.len() >= self.args.capacity {
                tokio::select! {
                    Some((id, slot)) = done_rx.recv() => {
                        self.finished(id, slot);
                        continue;
                    }
                    () = tokio::time::sleep(BUSY_CHECK) => {}
                }
            }
            let session = self.session(&name, BotStatus::Ok);
            let mut request = tonic::Request::new(rwapi::UpdateBotSessionRequest { name: name.clone(), bot_session: Some(session), update_mask: None });
            request.set_timeout(POLL);
            let mut client = self.client.clone();
            tokio::select! {
                answer = client.update_bot_session(request) => match answer {
                    Ok(response) => {
                        backoff.reset();
                        self.apply(&response.into_inner(), &reported, &done_tx);
                    }
                    Err(status) if status.code() == Code::NotFound => {
                        tracing::warn!("the server forgot bot session {name}: {}; starting a new one", status.message());
                        for (_, slot) in self.slots.drain() {
                            if let Slot::Running(task) = slot {
                                task.abort();
                            }
                        }
                        return;
                    }
                    Err(status) if status.code() == Code::DeadlineExceeded => {}
                    Err(status) => {
                        let delay = backoff.next_delay();
                        tracing::warn!("UpdateBotSession failed: {} ({:?}); retrying in {delay:?}", status.message(), status.code());
                        tokio::time::sleep(delay).await;
                    }
                },
                Some((id, slot)) = done_rx.recv() => self.finished(id, slot),
            }
        }
    }

    /// Records a finished action, unless its lease was dropped meanwhile (cancelled, session lost).
    fn finished(&mut self, id: String, slot: Slot) {
        if self.slots.contains_key(&id) {
            self.slots.insert(id, slot);
        }
    }

    /// Applies the server's view: starts new leases, kills cancelled ones, and forgets the results
    /// (`reported`) that the server has now received.
    fn apply(&mut self, session: &BotSession, reported: &[String], done: &mpsc::UnboundedSender<(String, Slot)>) {
        self.version = session.version.clone();
        for id in reported {
            // Dropped from the session, or echoed as finished: either way the server has it.
            let finished = |l: &Lease| l.state == LeaseState::Completed as i32 || l.state == LeaseState::Cancelled as i32;
            let acknowledged = session.leases.iter().find(|l| &l.id == id).is_none_or(finished);
            if acknowledged && !matches!(self.slots.get(id), Some(Slot::Running(_))) {
                self.slots.remove(id);
            }
        }
        for lease in &session.leases {
            let state = LeaseState::try_from(lease.state).unwrap_or(LeaseState::Unspecified);
            tracing::debug!(lease = %lease.id, ?state, "lease from the server");
            match state {
                // BuildGrid hands out new leases as ACTIVE: any lease this bot does not know is work.
                LeaseState::Pending | LeaseState::Active if !self.slots.contains_key(&lease.id) => {
                    let slot = self.start(lease, done.clone());
                    self.slots.insert(lease.id.clone(), slot);
                }
                LeaseState::Cancelled => {
                    if let Some(slot) = self.slots.get_mut(&lease.id) {
                        if let Slot::Running(task) = slot {
                            task.abort();
                            tracing::info!(lease = %lease.id, "lease cancelled; its processes are killed");
                        }
                        *slot = Slot::Cancelled;
                    }
                }
                _ => {}
            }
        }
    }

    fn start(&self, lease: &Lease, done: mpsc::UnboundedSender<(String, Slot)>) -> Slot {
        let payload = lease.payload.clone().unwrap_or_default();
        let ctx = self.ctx.clone();
        let id = lease.id.clone();
        Slot::Running(tokio::spawn(async move {
            let started = std::time::Instant::now();
            let slot = match action::run(ctx, payload).await {
                Ok(result) => {
                    tracing::info!(lease = %id, exit_code = result.exit_code, elapsed = ?started.elapsed(), "action finished");
                    Slot::Done { result: Some(Box::new(result)), status: crate::protocol::ok_rpc() }
                }
                Err(BotError::TimedOut { timeout, partial }) => {
                    let message = format!("the action did not finish within its timeout of {timeout:?}");
                    Slot::Done { result: Some(partial), status: crate::protocol::to_rpc(&Status::deadline_exceeded(message)) }
                }
                Err(e) => {
                    tracing::warn!(lease = %id, "action failed to run: {e}");
                    Slot::Done { result: None, status: crate::protocol::to_rpc(&Status::new(e.code(), e.to_string())) }
                }
            };
            let _ = done.send((id, slot));
        }))
    }

    /// Tells the server the bot is going, so its leases are queued again at once.
    async fn terminate(&mut self) {
        for slot in self.slots.values_mut() {
            if let Slot::Running(task) = slot {
                task.abort();
                *slot = Slot::Cancelled;
            }
        }
        let Some(name) = self.current.take() else { return };
        let session = self.session(&name, BotStatus::BotTerminating);
        let mut request = tonic::Request::new(rwapi::UpdateBotSessionRequest { name, bot_session: Some(session), update_mask: None });
        request.set_timeout(Duration::from_secs(2));
        if let Err(status) = self.client.update_bot_session(request).await {
            tracing::warn!("could not close the bot session: {}", status.message());
        }
    }
}
