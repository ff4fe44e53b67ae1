//! How a root bot starts its actions as another user. Changing user with an exec of setpriv before
//! each command's own took a third of the CPU of an Execute of `true`, so the bot starts this
//! spawner once, as that user through setpriv: the strata binary itself (`strata spawner`, not
//! listed in the help), a small process that starts each command it is asked for with the standard
//! library's spawn and reports its pid and then its exit, one JSON line each. The bot keeps the
//! timeouts and kills process groups itself (it is root); the spawner has no more rights than any
//! action, which run as the same user.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::oneshot;

use super::BotError;

/// The hidden subcommand that runs the spawner.
pub const SUBCOMMAND: &str = "spawner";

static PROGRAM: OnceLock<PathBuf> = OnceLock::new();

/// Names the strata binary that can run `strata spawner`: `main` names the running one, for the
/// bots of `strata bot` and `strata serve` (a test binary must not be taken for it).
pub fn set_program(path: PathBuf) {
    let _ = PROGRAM.set(path);
}

pub fn program() -> Option<&'static Path> {
    PROGRAM.get().map(PathBuf::as_path)
}

/// A command to start: its stdout and stderr are files that exist and the user may write.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub program: OsString,
    pub args: Vec<OsString>,
    pub env: Vec<(OsString, OsString)>,
    pub cwd: OsString,
    pub stdout: OsString,
    pub stderr: OsString,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Event {
    Started { id: u64, pid: u32 },
    Failed { id: u64, error: String },
    Exited { id: u64, code: i32 },
}

/// The spawner's side: starts what it is asked for until its stdin closes (the bot is gone).
pub fn serve() -> Result<(), String> {
    use std::io::{BufRead, Write};
    // Actions run as the same user: they must not reach this process's pipes through /proc (to
    // forge another action's exit) nor trace it.
    // SAFETY: prctl(PR_SET_DUMPABLE) takes plain integers and touches no memory of ours.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(format!("cannot make the spawner undumpable: {}", std::io::Error::last_os_error()));
    }
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = move |event: &Event| -> Result<(), String> {
        let mut line = serde_json::to_vec(event).map_err(|e| e.to_string())?;
        line.push(b'\n');
        let mut out = out.lock().map_err(|_| "stdout lock poisoned".to_string())?;
        out.write_all(&line).and_then(|()| out.flush()).map_err(|e| format!("cannot answer the bot: {e}"))
    };
    let children = Arc::new(Children::default());
    {
        let (children, say) = (children.clone(), say.clone());
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || {
                // Without its reaper the spawner would leave actions waiting for good: it ends, and
                // the bot fails what it ran and starts a new one.
                let error = reap(&children, |event| say(event));
                eprintln!("strata spawner: {error}");
                std::process::exit(1);
            })
            .map_err(|e| format!("cannot start the spawner's reaper: {e}"))?;
    }
    for line in std::io::stdin().lock().lines() {
        let line = line.map_err(|e| format!("cannot read the bot's requests: {e}"))?;
        let request: Request = serde_json::from_str(&line).map_err(|e| format!("a request from the bot cannot be decoded: {e}"))?;
        let id = request.id;
        // Started is said under the lock the reaper takes to say Exited: the bot hears them in order,
        // even for a command that ends before its spawn returns.
        let mut running = children.lock();
        match start(request) {
            Ok(child) => {
                say(&Event::Started { id, pid: child.id() })?;
                running.insert(child.id(), id);
                children.some.notify_one();
            }
            Err(error) => say(&Event::Failed { id, error })?,
        }
    }
    Ok(())
}

/// The spawner's running commands by pid, for its one reaper thread (a thread per command cost
/// a thread's start and exit for every action).
#[derive(Default)]
struct Children {
    running: Mutex<HashMap<u32, u64>>,
    /// Signalled when a command starts: the reaper sleeps on it while there is none.
    some: std::sync::Condvar,
}

impl Children {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, u64>> {
        self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Waits for any child of the spawner and says how it exited, until it cannot. It looks at an
/// exited child before reaping it, and reaps only under the lock spawns hold: a child whose exec
/// failed is reaped by the standard library inside its spawn (which fails if another wait took it
/// first), and no spawn can reuse a pid while the lock is held.
fn reap(children: &Children, say: impl Fn(&Event) -> Result<(), String>) -> String {
    loop {
        // SAFETY: siginfo_t is plain data; waitid only writes into it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: waitid writes only the siginfo_t it is given.
        if unsafe { libc::waitid(libc::P_ALL, 0, &mut info, libc::WEXITED | libc::WNOWAIT) } < 0 {
            let error = std::io::Error::last_os_error();
            match error.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::ECHILD) => {
                    // No child now; one that starts meanwhile is registered before this lock is free.
                    let running = children.lock();
                    if running.is_empty() {
                        drop(children.some.wait(running));
                    }
                    continue;
                }
                _ => return format!("cannot wait for commands: {error}"),
            }
        }
        // SAFETY: waitid filled `info` for an exited child, so its pid field is set.
        let pid = unsafe { info.si_pid() };
        let (id, status) = {
            let mut running = children.lock();
            let mut status = 0;
            // Not this pid's exit any more (reaped by its failed spawn): nothing to say. An exited
            // child nobody registered (none is expected) is reaped too, or waitid would return it
            // forever. It has exited, so this does not block.
            // SAFETY: waitpid writes only the status integer it is given.
            if unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != pid {
                continue;
            }
            let Some(id) = running.remove(&(pid as u32)) else { continue };
            (id, status)
        };
        let code = super::runner::exit_code(std::os::unix::process::ExitStatusExt::from_raw(status));
        if let Err(e) = say(&Event::Exited { id, code }) {
            return e;
        }
    }
}

fn start(request: Request) -> Result<std::process::Child, String> {
    let open = |path: &OsString| {
        std::fs::OpenOptions::new().write(true).open(path).map_err(|e| format!("cannot open {}: {e}", Path::new(path).display()))
    };
    let (stdout, stderr) = (open(&request.stdout)?, open(&request.stderr)?);
    super::runner::command(&request.program, &request.args, request.env, &request.cwd, stdout, stderr)
        .spawn()
        .map_err(|e| format!("cannot run {:?}: {e}", Path::new(&request.program)))
}

/// The bot's side: one spawner, started on first use and again if it ends.
#[derive(Debug)]
pub struct Spawner {
    /// setpriv and its arguments, then the strata binary and `spawner`.
    launch: (PathBuf, Vec<OsString>),
    next_id: AtomicU64,
    live: tokio::sync::Mutex<Option<Live>>,
}

#[derive(Debug)]
struct Live {
    stdin: tokio::process::ChildStdin,
    shared: Arc<Shared>,
    _process: tokio::process::Child,
}

/// What the bot and the listener of the spawner's answers share.
#[derive(Debug, Default)]
struct Shared {
    waiting: Mutex<HashMap<u64, Waiting>>,
    /// The spawner's stdout closed: it is gone.
    ended: AtomicBool,
}

impl Shared {
    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waiting>> {
        self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Whether the waiter was registered: not once the spawner has ended.
    fn register(&self, id: u64, waiter: Waiting) -> bool {
        let mut waiting = self.waiting();
        if self.ended.load(Relaxed) {
            return false;
        }
        waiting.insert(id, waiter);
        true
    }
}

#[derive(Debug)]
struct Waiting {
    started: Option<oneshot::Sender<Result<u32, String>>>,
    exited: oneshot::Sender<i32>,
}

/// A started command: its process group is `pid`; `exited` gives its exit code.
pub struct Started {
    pub pid: u32,
    pub exited: oneshot::Receiver<i32>,
}

impl Spawner {
    pub fn new(setpriv: &Path, mut setpriv_args: Vec<OsString>, program: &Path) -> Spawner {
        setpriv_args.extend([program.into(), SUBCOMMAND.into()]);
        Spawner { launch: (setpriv.to_path_buf(), setpriv_args), next_id: AtomicU64::new(0), live: Default::default() }
    }

    pub async fn start(&self, mut request: Request) -> Result<Started, BotError> {
        request.id = self.next_id.fetch_add(1, Relaxed);
        let mut line = serde_json::to_vec(&request).map_err(|e| BotError::Spawn(format!("cannot encode a request to the spawner: {e}")))?;
        line.push(b'\n');
        let (started_tx, started) = oneshot::channel();
        let (exited_tx, exited) = oneshot::channel();
        {
            let mut live = self.live.lock().await;
            let l = match live.take() {
                Some(l) if !l.shared.ended.load(Relaxed) => live.insert(l),
                _ => live.insert(self.launch()?),
            };
            if !l.shared.register(request.id, Waiting { started: Some(started_tx), exited: exited_tx }) {
                *live = None;
                return Err(BotError::Spawn("the spawner ended as the command was sent; the next action starts a new one".into()));
            }
            if let Err(e) = l.stdin.write_all(&line).await {
                l.shared.waiting().remove(&request.id);
                *live = None;
                return Err(BotError::Spawn(format!("the spawner is gone ({e}); the next action starts a new one")));
            }
        }
        match started.await {
            Ok(Ok(pid)) => Ok(Started { pid, exited }),
            Ok(Err(error)) => Err(BotError::Spawn(error)),
            Err(_) => Err(BotError::Spawn("the spawner ended before it started the command".into())),
        }
    }

    fn launch(&self) -> Result<Live, BotError> {
        let (setpriv, args) = &self.launch;
        let mut process = tokio::process::Command::new(setpriv)
            .args(args)
            .env_clear()
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| BotError::Spawn(format!("cannot start the spawner ({}): {e}", setpriv.display())))?;
        let (Some(stdin), Some(stdout)) = (process.stdin.take(), process.stdout.take()) else {
            return Err(BotError::Spawn("the spawner has no pipes".into()));
        };
        let shared = Arc::new(Shared::default());
        tokio::spawn(listen(stdout, shared.clone()));
        Ok(Live { stdin, shared, _process: process })
    }
}

/// Hands each event to whoever waits for it; when the spawner ends, every waiter learns so.
async fn listen(stdout: tokio::process::ChildStdout, shared: Arc<Shared>) {
    let mut lines = BufReader::new(stdout).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Ok(event) = serde_json::from_str::<Event>(&line) else {
            tracing::warn!("the spawner said something that is not an event: {:.200}", line);
            continue;
        };
        let mut waiting = shared.waiting();
        match event {
            Event::Started { id, pid } => {
                let started = waiting.get_mut(&id).and_then(|w| w.started.take());
                if started.is_none_or(|started| started.send(Ok(pid)).is_err()) {
                    // Nobody waits for it any more (the run was dropped): it must not run on.
                    super::runner::kill_group(pid);
                }
            }
            Event::Failed { id, error } => {
                if let Some(started) = waiting.remove(&id).and_then(|w| w.started) {
                    let _ = started.send(Err(error));
                }
            }
            Event::Exited { id, code } => {
                if let Some(w) = waiting.remove(&id) {
                    let _ = w.exited.send(code);
                }
            }
        }
    }
    tracing::warn!("the spawner ended; the next action starts a new one");
    let mut waiting = shared.waiting();
    shared.ended.store(true, Relaxed);
    // Dropping the senders tells every waiter.
    waiting.clear();
}
