//! Runs an action's command: on the host; inside bubblewrap over the host's system (the system
//! directories read-only, its own action directory writable, a private /tmp, no capabilities even
//! for a root bot, no network unless asked for, dies with the bot),
//! for clients such as Bazel and recc whose actions use the worker's tools; or hermetic, where the
//! input root is the sandbox's `/` (plus /proc, /dev and a private /tmp), for clients such as
//! BuildStream whose input root brings the whole system. The command runs in a process group of
//! its own, and a timeout, a cancellation or a dropped run kills the whole group. A root bot runs
//! host and bubblewrap actions as an unprivileged user (`RunAs`), through its spawner (`spawner.rs`)
//! or, where the user cannot run the strata binary, through setpriv per command.
//!
//! Commands are started with posix_spawn, never fork: a bot inside `strata serve` shares the
//! server's address space, and forking a process with gigabytes of cache mapped took 170 ms per
//! action (page tables are copied). The standard library uses posix_spawn only without pre-exec
//! hooks and when the program is a path, so the program is looked up in the action's PATH here.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::spawner::{self, Spawner};
use super::BotError;

/// How a bot runs commands, as configured (`--runner`, `runner:`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RunnerKind {
    /// The command sees this machine's file system.
    #[default]
    Host,
    /// The same, read-only, in a bubblewrap sandbox.
    Bubblewrap,
    /// The input root is the sandbox's `/` (as BuildStream needs).
    Hermetic,
}

#[derive(Clone, Debug)]
pub enum Runner {
    /// As the bot's own user, or (a root bot) as another one.
    Host { run_as: Option<RunAs> },
    /// With the bubblewrap arguments that show the host's system, worked out once; a root bot
    /// runs bubblewrap itself as another user where unprivileged user namespaces allow it.
    Bubblewrap { bwrap: PathBuf, system: Vec<PathBuf>, run_as: Option<RunAs> },
    Hermetic { bwrap: PathBuf },
}

/// What to run and where.
pub struct Spawn<'a> {
    pub arguments: &'a [String],
    pub environment: &'a [(String, String)],
    /// The action's directory (the input root); the only place the command may write.
    pub root: &'a Path,
    pub working_directory: &'a Path,
    /// Files that exist, for the command's stdout and stderr (the user it runs as may write them).
    pub stdout: &'a Path,
    pub stderr: &'a Path,
    pub network: bool,
}

pub enum Exit {
    Code(i32),
    TimedOut,
}

/// The search path when the action sets none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

impl Runner {
    /// `actions_dir` is where the actions' directories will be: a user it runs actions as must be
    /// able to reach it.
    /// `spawner`: the strata binary a root bot starts its commands through (see `spawner`).
    pub async fn new(kind: RunnerKind, run_as: Option<&str>, actions_dir: &Path, spawner: Option<&Path>) -> Result<Runner, BotError> {
        match kind {
            RunnerKind::Host => Ok(Runner::Host { run_as: RunAs::for_root_bot(run_as, actions_dir, spawner)? }),
            RunnerKind::Bubblewrap => {
                let bwrap = bwrap("bubblewrap")?;
                let user = match RunAs::for_root_bot(run_as, actions_dir, spawner)? {
                    Some(user) if user.can_sandbox(&bwrap).await => Some(user),
                    Some(_) if run_as.is_some() => {
                        return Err(BotError::Setup("--run-as: bubblewrap cannot make its sandbox as that user here (unprivileged user namespaces are off)".into()))
                    }
                    Some(_) => {
                        tracing::warn!("bubblewrap runs as root (without capabilities): unprivileged user namespaces are off here");
                        None
                    }
                    None => None,
                };
                Ok(Runner::Bubblewrap { bwrap, system: system_view(), run_as: user })
            }
            RunnerKind::Hermetic => Ok(Runner::Hermetic { bwrap: bwrap("hermetic")? }),
        }
    }

    /// The user the action runs as, when it is not the bot's.
    pub fn run_as(&self) -> Option<&RunAs> {
        match self {
            Runner::Host { run_as } | Runner::Bubblewrap { run_as, .. } => run_as.as_ref(),
            Runner::Hermetic { .. } => None,
        }
    }

    /// Runs the command to its end, its timeout, or until the future is dropped.
    pub async fn run(&self, spawn: Spawn<'_>, timeout: Duration) -> Result<Exit, BotError> {
        let Some((program, args)) = spawn.arguments.split_first() else {
            return Err(BotError::Invalid("the command has no arguments".into()));
        };
        let (launcher, mut launch_args): (PathBuf, Vec<std::ffi::OsString>) = match self {
            Runner::Host { .. } => (resolve(program, spawn.environment), args.iter().map(Into::into).collect()),
            Runner::Bubblewrap { bwrap, system, .. } => {
                let mut a: Vec<std::ffi::OsString> = system.iter().map(Into::into).collect();
                a.extend(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--bind"].map(Into::into));
                a.extend([spawn.root.into(), spawn.root.into()]);
                a.extend(SANDBOX.map(Into::into));
                if spawn.network {
                    a.push("--share-net".into());
                }
                a.extend(["--chdir".into(), spawn.working_directory.into(), "--".into(), program.into()]);
                a.extend(args.iter().map(Into::into));
                (bwrap.clone(), a)
            }
            Runner::Hermetic { bwrap } => {
                // The working directory as the command sees it, below the sandbox's `/`.
                let inside = Path::new("/").join(spawn.working_directory.strip_prefix(spawn.root).unwrap_or(Path::new("")));
                let mut a: Vec<std::ffi::OsString> = vec!["--bind".into(), spawn.root.into(), "/".into()];
                a.extend(["--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"].map(Into::into));
                a.extend(SANDBOX.map(Into::into));
                if spawn.network {
                    a.push("--share-net".into());
                }
                a.extend(["--chdir".into(), inside.into(), "--".into(), program.into()]);
                a.extend(args.iter().map(Into::into));
                (bwrap.clone(), a)
            }
        };
        let mut environment: Vec<(std::ffi::OsString, std::ffi::OsString)> = Vec::with_capacity(spawn.environment.len() + 1);
        if !spawn.environment.iter().any(|(k, _)| k == "PATH") {
            environment.push(("PATH".into(), DEFAULT_PATH.into()));
        }
        environment.extend(spawn.environment.iter().map(|(k, v)| (k.into(), v.into())));
        if let Some(spawner) = self.run_as().and_then(|user| user.spawner.as_ref()) {
            let request = spawner::Request {
                id: 0,
                program: launcher.into(),
                args: launch_args,
                env: environment,
                cwd: spawn.working_directory.into(),
                stdout: spawn.stdout.into(),
                stderr: spawn.stderr.into(),
            };
            return run_through(spawner, request, timeout, program).await;
        }
        let open = |path: &Path| std::fs::OpenOptions::new().write(true).open(path).map_err(|e| BotError::io(path, e));
        let (launcher, launch_args) = match self.run_as() {
            // setpriv changes user and then execs: the spawn stays a posix_spawn (see above).
            Some(user) => {
                let mut prefixed = user.setpriv_args();
                prefixed.push(launcher.into());
                prefixed.append(&mut launch_args);
                (user.setpriv.clone(), prefixed)
            }
            None => (launcher, launch_args),
        };
        let prepared = command(launcher.as_os_str(), &launch_args, environment, spawn.working_directory.as_os_str(), open(spawn.stdout)?, open(spawn.stderr)?);
        let mut command = tokio::process::Command::from(prepared);
        command.kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => return Err(BotError::Spawn(format!("cannot run {program:?}: {e}"))),
        };
        let group = KillGroup(child.id());
        let exit = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => Exit::Code(exit_code(status)),
            Ok(Err(e)) => return Err(BotError::Spawn(format!("waiting for {program:?}: {e}"))),
            Err(_) => Exit::TimedOut,
        };
        // The leader is gone or timed out: whatever it left running in its group goes too.
        drop(group);
        let _ = child.wait().await;
        Ok(exit)
    }
}

/// A command as the bot and its spawner both start one: a clean environment, a process group of its
/// own, stdin from /dev/null and its output into the action's files.
pub fn command(
    program: &std::ffi::OsStr,
    args: &[std::ffi::OsString],
    environment: Vec<(std::ffi::OsString, std::ffi::OsString)>,
    working_directory: &std::ffi::OsStr,
    stdout: std::fs::File,
    stderr: std::fs::File,
) -> std::process::Command {
    use std::os::unix::process::CommandExt;
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .env_clear()
        .envs(environment)
        .current_dir(working_directory)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .process_group(0);
    command
}

/// Runs a command the spawner starts; the bot still owns its process group and its timeout.
async fn run_through(spawner: &Spawner, request: spawner::Request, timeout: Duration, program: &str) -> Result<Exit, BotError> {
    let started = spawner.start(request).await?;
    let group = KillGroup(Some(started.pid));
    let mut exited = started.exited;
    match tokio::time::timeout(timeout, &mut exited).await {
        Ok(Ok(code)) => Ok(Exit::Code(code)),
        Ok(Err(_)) => Err(BotError::Spawn(format!("the spawner ended while {program:?} ran"))),
        Err(_) => {
            // Killed; the spawner reaps it and says so.
            drop(group);
            let _ = exited.await;
            Ok(Exit::TimedOut)
        }
    }
}

/// Namespaces of its own, no capabilities (bubblewrap keeps them all for a root caller otherwise,
/// and `mount -o remount,rw` would then reach the host), and the sandbox ends with the bot.
const SANDBOX: [&str; 5] = ["--unshare-all", "--cap-drop", "ALL", "--die-with-parent", "--new-session"];

/// The host directories an action over the host's system sees, read-only: the system, not /home,
/// /root, /var, /srv, /opt or wherever the server and the bot keep their data.
const SYSTEM_DIRS: [&str; 8] = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"];
/// Files under /etc no action needs and a root-owned sandbox could otherwise read (dropped
/// capabilities do not stop an owner reading its own files).
const HIDDEN: [&str; 6] = ["/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/ssh", "/etc/ssl/private"];

fn system_view() -> Vec<PathBuf> {
    let mut args: Vec<PathBuf> = Vec::new();
    let mut add = |parts: &[&Path]| args.extend(parts.iter().map(|p| p.to_path_buf()));
    for dir in SYSTEM_DIRS.map(Path::new) {
        match std::fs::read_link(dir) {
            // Merged /usr: /bin -> usr/bin stays a link.
            Ok(target) => add(&[Path::new("--symlink"), &target, dir]),
            Err(_) if dir.is_dir() => add(&[Path::new("--ro-bind"), dir, dir]),
            Err(_) => {}
        }
    }
    for hidden in HIDDEN.map(Path::new) {
        match std::fs::symlink_metadata(hidden) {
            Ok(m) if m.is_dir() => add(&[Path::new("--tmpfs"), hidden]),
            Ok(_) => add(&[Path::new("--ro-bind"), Path::new("/dev/null"), hidden]),
            Err(_) => {}
        }
    }
    args
}

/// The unprivileged user a root bot's host and bubblewrap actions run as.
#[derive(Clone, Debug)]
pub struct RunAs {
    pub uid: u32,
    pub gid: u32,
    setpriv: PathBuf,
    /// Starts the commands as this user, when the strata binary is known (see `spawner`);
    /// otherwise each command is run through setpriv.
    spawner: Option<std::sync::Arc<Spawner>>,
}

impl RunAs {
    /// None unless the bot runs as root and the user is not root; `nobody` by default, unless
    /// nobody can reach the actions' directory (then the actions run as root, with a warning).
    fn for_root_bot(name: Option<&str>, actions_dir: &Path, spawner: Option<&Path>) -> Result<Option<RunAs>, BotError> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Ok(None);
        }
        let chosen = name.unwrap_or("nobody");
        let (uid, gid) = lookup_user(chosen).ok_or_else(|| BotError::Setup(format!("--run-as {chosen:?}: no such user")))?;
        if uid == 0 {
            return Ok(None);
        }
        if let Some(blocked) = unreachable_ancestor(actions_dir, uid, gid) {
            let why = format!("user {chosen:?} cannot enter {} (on the way to the work directory {})", blocked.display(), actions_dir.display());
            if name.is_some() {
                return Err(BotError::Setup(format!("--run-as: {why}; give the bot a work directory that user can reach")));
            }
            tracing::warn!("actions run as root: {why}; give the bot a work directory others can enter (chmod o+x) or set run_as");
            return Ok(None);
        }
        let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
        let setpriv = find_in_path("setpriv", &path)
            .ok_or_else(|| BotError::Setup("a root bot runs actions as another user with `setpriv` (Debian: util-linux), which is not on PATH".into()))?;
        tracing::info!("actions run as user {chosen:?} (uid {uid}, gid {gid}), not as the bot's root");
        let mut user = RunAs { uid, gid, setpriv, spawner: None };
        user.spawner = spawner.filter(|program| user.may_run(program)).map(|program| {
            std::sync::Arc::new(Spawner::new(&user.setpriv, user.setpriv_args(), program))
        });
        Ok(Some(user))
    }

    /// Whether this user can run `program` (the spawner runs as the user).
    fn may_run(&self, program: &Path) -> bool {
        use std::os::unix::fs::MetadataExt;
        let runnable = program.metadata().is_ok_and(|m| m.mode() & 0o001 != 0 || (m.uid() == self.uid && m.mode() & 0o100 != 0));
        let reachable = program.parent().is_some_and(|dir| unreachable_ancestor(dir, self.uid, self.gid).is_none());
        if !(runnable && reachable) {
            tracing::info!("user {} cannot run {}: each action is started through setpriv", self.uid, program.display());
        }
        runnable && reachable
    }

    fn setpriv_args(&self) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec![format!("--reuid={}", self.uid).into(), format!("--regid={}", self.gid).into()];
        args.extend(["--clear-groups", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"].map(Into::into));
        args
    }

    /// Whether bubblewrap can build its sandbox as this user (it needs unprivileged user namespaces).
    async fn can_sandbox(&self, bwrap: &Path) -> bool {
        let mut args = self.setpriv_args();
        args.push(bwrap.into());
        args.extend(["--ro-bind", "/", "/", "--unshare-all", "--cap-drop", "ALL", "--", "true"].map(Into::into));
        let status = tokio::process::Command::new(&self.setpriv).args(args).stdout(Stdio::null()).stderr(Stdio::null()).status().await;
        status.is_ok_and(|s| s.success())
    }

    /// Hands a file of the action's directory (its stdout or stderr) to the user.
    pub fn own_file(&self, file: &Path) -> std::io::Result<()> {
        std::os::unix::fs::chown(file, Some(self.uid), Some(self.gid))
    }

    /// Hands the action's directories to the user (its input files stay the bot's, read-only, so
    /// the action can neither change nor chmod them).
    pub fn own(&self, dir: &Path) -> std::io::Result<()> {
        let (uid, gid) = (rustix::fs::Uid::from_raw(self.uid), rustix::fs::Gid::from_raw(self.gid));
        super::beneath::for_each_dir(dir, &mut |fd| Ok(rustix::fs::fchown(fd, Some(uid), Some(gid))?))
    }
}

/// The first directory on the way to `dir` that the user cannot search, if any.
fn unreachable_ancestor(dir: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let mut at = PathBuf::from("/");
    for part in dir.components().skip(1) {
        at.push(part);
        let Ok(m) = std::fs::metadata(&at) else { break };
        let searchable = if m.uid() == uid { m.mode() & 0o100 != 0 } else if m.gid() == gid { m.mode() & 0o010 != 0 } else { m.mode() & 0o001 != 0 };
        if !searchable {
            return Some(at);
        }
    }
    None
}

/// A user's uid and primary gid, by name or number.
fn lookup_user(name: &str) -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/etc/passwd").ok()?;
    text.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        let (user, uid, gid) = (fields.first()?, fields.get(2)?.parse().ok()?, fields.get(3)?.parse().ok()?);
        (*user == name || name.parse::<u32>() == Ok(uid)).then_some((uid, gid))
    })
}

/// Finds `bwrap` for a runner that needs it.
fn bwrap(runner: &str) -> Result<PathBuf, BotError> {
    let path = std::env::var("PATH").unwrap_or_else(|_| DEFAULT_PATH.into());
    find_in_path("bwrap", &path).ok_or_else(|| {
        BotError::Setup(format!("the {runner} runner needs `bwrap` on PATH (Debian: apt-get install bubblewrap)"))
    })
}

/// Kills a process group when dropped (at the end of a run, on timeout, or when the run is aborted).
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            kill_group(pid);
        }
    }
}

/// Kills the process group a command was started in (its leader's pid).
pub fn kill_group(pid: u32) {
    // SAFETY: kill(2) with a negative pid signals the process group we created; no memory is
    // involved.
    unsafe {
        libc::kill(-(pid as i32), libc::SIGKILL);
    }
}

pub fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

/// The program to run: a path as given (relative ones to the working directory), or the first
/// executable file of that name in the action's PATH (the default PATH if it sets none).
fn resolve(program: &str, environment: &[(String, String)]) -> PathBuf {
    if program.contains('/') {
        return PathBuf::from(program);
    }
    let path = environment.iter().find(|(k, _)| k == "PATH").map_or(DEFAULT_PATH, |(_, v)| v.as_str());
    // Not found: spawning the bare name fails with a clear "No such file" for the action.
    find_in_path(program, path).unwrap_or_else(|| PathBuf::from(program))
}

fn find_in_path(program: &str, path: &str) -> Option<PathBuf> {
    let executable = |p: &Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    path.split(':').filter(|dir| dir.starts_with('/')).map(|dir| Path::new(dir).join(program)).find(|p| executable(p))
}
