//! Runs an action's command: on the host, or inside bubblewrap (read-only system, writable action
//! directory, private /tmp, no network unless asked for, dies with the bot). The command runs in a
//! process group of its own, and a timeout, a cancellation or a dropped run kills the whole group;
//! the command is killed if the bot dies.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::BotError;

#[derive(Clone, Debug)]
pub enum Runner {
    Host,
    Bubblewrap { bwrap: PathBuf },
}

/// What to run and where.
pub struct Spawn<'a> {
    pub arguments: &'a [String],
    pub environment: &'a [(String, String)],
    /// The action's directory (the input root); the only place the command may write.
    pub root: &'a Path,
    pub working_directory: &'a Path,
    pub stdout: std::fs::File,
    pub stderr: std::fs::File,
    pub network: bool,
}

pub enum Exit {
    Code(i32),
    TimedOut,
}

/// The search path when the action sets none.
const DEFAULT_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

impl Runner {
    pub fn from_name(name: &str) -> Result<Runner, BotError> {
        match name {
            "host" => Ok(Runner::Host),
            "bubblewrap" => {
                let bwrap = find_in_path("bwrap").ok_or_else(|| {
                    BotError::Setup("the bubblewrap runner needs `bwrap` on PATH (Debian: apt-get install bubblewrap)".into())
                })?;
                Ok(Runner::Bubblewrap { bwrap })
            }
            other => Err(BotError::Setup(format!("unknown runner {other:?}; use host or bubblewrap"))),
        }
    }

    /// Runs the command to its end, its timeout, or until the future is dropped.
    pub async fn run(&self, spawn: Spawn<'_>, timeout: Duration) -> Result<Exit, BotError> {
        let Some((program, args)) = spawn.arguments.split_first() else {
            return Err(BotError::Invalid("the command has no arguments".into()));
        };
        let mut command = match self {
            Runner::Host => {
                let mut c = tokio::process::Command::new(program);
                c.args(args);
                c
            }
            Runner::Bubblewrap { bwrap } => {
                let mut c = tokio::process::Command::new(bwrap);
                c.args(["--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]);
                c.arg("--bind").arg(spawn.root).arg(spawn.root);
                c.args(["--unshare-all", "--die-with-parent", "--new-session"]);
                if spawn.network {
                    c.arg("--share-net");
                }
                c.arg("--chdir").arg(spawn.working_directory).arg("--").arg(program).args(args);
                c
            }
        };
        command.env_clear();
        if !spawn.environment.iter().any(|(k, _)| k == "PATH") {
            command.env("PATH", DEFAULT_PATH);
        }
        command
            .envs(spawn.environment.iter().map(|(k, v)| (k, v)))
            .current_dir(spawn.working_directory)
            .stdin(Stdio::null())
            .stdout(spawn.stdout)
            .stderr(spawn.stderr)
            .process_group(0)
            .kill_on_drop(true);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl(2), which
        // is async-signal-safe. It makes the command die with the bot (bubblewrap's
        // --die-with-parent does the same for its sandbox).
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
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

/// Kills a process group when dropped (at the end of a run, on timeout, or when the run is aborted).
struct KillGroup(Option<u32>);

impl Drop for KillGroup {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            // SAFETY: kill(2) with a negative pid signals the process group we created; no memory
            // is involved.
            unsafe {
                libc::kill(-(pid as i32), libc::SIGKILL);
            }
        }
    }
}

fn exit_code(status: std::process::ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

fn find_in_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}
