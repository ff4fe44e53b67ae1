//! One lease: fetch the Command, stage the inputs, run, collect and upload the outputs, and answer
//! with an ActionResult (with its execution metadata) or a status that says what went wrong.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::{Any, Timestamp};
use bytes::Bytes;
use parking_lot::Mutex;

use super::beneath::Beneath;
use super::inputs::{decode, parse, InputCache};
use super::outputs::{self, Uploads};
use super::runner::{Exit, RunAs, Runner, Spawn};
use super::{blocking, BotError};
use crate::protocol::paths;
use crate::protocol::rwapi;
use crate::protocol::to_proto;

/// The platform property that lets an action use the network in the bubblewrap runner.
const NETWORK_PROPERTY: &str = "network";

/// The files of an action's directory, beside its `root`, that its stdout and stderr go to.
const STDOUT: &str = "stdout";
const STDERR: &str = "stderr";

pub struct Context {
    pub bot_id: String,
    pub cache: InputCache,
    pub runner: Runner,
    /// The actions' directories.
    pub scratches: Arc<Scratches>,
}

fn now() -> Option<Timestamp> {
    Some(crate::protocol::timestamp(SystemTime::now()))
}

/// Action directories, each emptied when its action ends and kept for a later one rather than
/// removed. Creating and removing four inodes per action (the directory, `root`, stdout, stderr)
/// costs little by itself, but ext4 does not hand out an inode freed in the last seconds again: at
/// hundreds of actions a second its allocator scanned past ever more of them, 40% of the machine
/// running `true` (a work directory on tmpfs ran 1.6x the actions).
pub struct Scratches {
    dir: PathBuf,
    free: Mutex<Vec<PathBuf>>,
    made: AtomicU64,
}

impl Scratches {
    pub fn new(dir: PathBuf) -> Self {
        Scratches { dir, free: Mutex::new(Vec::new()), made: AtomicU64::new(0) }
    }

    /// A directory for one action, with an empty `root` in it (a kept one has it already).
    async fn take(self: &Arc<Self>) -> Result<Scratch, BotError> {
        if let Some(dir) = self.free.lock().pop() {
            return Ok(Scratch { dir, pool: self.clone() });
        }
        let scratch = Scratch { dir: self.dir.join(self.made.fetch_add(1, Relaxed).to_string()), pool: self.clone() };
        let root = scratch.root();
        blocking("making an action directory", move || std::fs::create_dir_all(&root).map_err(|e| BotError::io(&root, e))).await?;
        Ok(scratch)
    }

    /// Empties an action's directory and keeps it, or removes it if it cannot be emptied.
    fn recycle(&self, dir: PathBuf) {
        make_writable(&dir);
        match own_files_intact(&dir).and_then(|()| empty(&dir.join("root"))) {
            Ok(()) => self.free.lock().push(dir),
            Err(e) => {
                tracing::debug!(dir = %dir.display(), "an action directory is removed, not kept: {e}");
                if let Err(e) = std::fs::remove_dir_all(&dir) {
                    tracing::warn!(dir = %dir.display(), "cannot remove an action directory: {e}");
                }
            }
        }
    }
}

/// An action's directory, emptied and given back when the run ends, however it ends; removed instead
/// if it cannot be emptied.
struct Scratch {
    dir: PathBuf,
    pool: Arc<Scratches>,
}

impl Scratch {
    fn root(&self) -> PathBuf {
        self.dir.join("root")
    }

    /// Gives the directory back, emptied, before the run's answer goes out: the next action may
    /// find it at once.
    async fn release(self) {
        if let Err(e) = tokio::task::spawn_blocking(move || self.recycle()).await {
            tracing::warn!("emptying an action directory: {e}");
        }
    }

    /// `release` for a caller already off the async runtime.
    fn recycle(mut self) {
        self.pool.recycle(std::mem::take(&mut self.dir));
    }
}

impl Drop for Scratch {
    /// A run dropped before its end (its lease cancelled) gives the directory back here.
    fn drop(&mut self) {
        if self.dir.as_os_str().is_empty() {
            return;
        }
        let (dir, pool) = (std::mem::take(&mut self.dir), self.pool.clone());
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || pool.recycle(dir))),
            Err(_) => pool.recycle(dir),
        }
    }
}

/// A file of the bot's own in an action directory (stdout, stderr), empty. A kept file is truncated,
/// never followed if an action made it a symlink, and its times set: the ctime of stdout marks the
/// start of the run (see `inputs::ctime`), and setting times stamps it as creating did.
fn fresh_file(dir: &Path, name: &str) -> Result<PathBuf, BotError> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .and_then(|file| file.set_modified(SystemTime::now()))
        .map_err(|e| BotError::io(&path, e))?;
    Ok(path)
}

/// Whether the bot's own files in an action directory are still what it made them: an action may have
/// replaced them with a symlink, or with a hard link to a file the next truncation would empty.
fn own_files_intact(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    for name in [STDOUT, STDERR] {
        match std::fs::symlink_metadata(dir.join(name)) {
            Ok(meta) if !meta.is_file() || meta.nlink() != 1 => return Err(std::io::Error::other(format!("{name} is no longer a file of its own"))),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    Ok(())
}

/// Removes everything in `root`, which must still be a directory (an action may have replaced it).
fn empty(root: &Path) -> std::io::Result<()> {
    if !std::fs::symlink_metadata(root)?.is_dir() {
        return Err(std::io::Error::other("root is no longer a directory"));
    }
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        match entry.file_type()?.is_dir() {
            true => std::fs::remove_dir_all(entry.path())?,
            false => std::fs::remove_file(entry.path())?,
        }
    }
    Ok(())
}

/// Actions may leave read-only directories behind, which could not be removed otherwise.
fn make_writable(dir: &Path) {
    let writable = rustix::fs::Mode::from_raw_mode(0o755);
    // What cannot be made writable shows when the directory is emptied.
    let _ = super::beneath::for_each_dir(dir, &mut |fd| {
        let _ = rustix::fs::fchmod(fd, writable);
        Ok(())
    });
}

/// The Action of a lease, and its Command if the server sent it along: packed with the Action (Strata,
/// which this bot asks for), the Action alone, or its digest, to fetch (BuildGrid).
async fn resolve(ctx: &Context, payload: &Any) -> Result<(reapi::Action, Option<Bytes>), BotError> {
    let decode = |e: prost::DecodeError| BotError::Invalid(format!("the lease's payload cannot be decoded: {e}"));
    if let Some(both) = rwapi::unpack::<rwapi::ActionAndCommand>(payload, rwapi::ACTION_AND_COMMAND) {
        let both = both.map_err(decode)?;
        let action = both.action.ok_or_else(|| BotError::Invalid("the lease's payload has no Action".into()))?;
        return Ok((action, Some(both.command)));
    }
    if let Some(action) = rwapi::unpack::<reapi::Action>(payload, rwapi::ACTION) {
        return Ok((action.map_err(decode)?, None));
    }
    if let Some(digest) = rwapi::unpack::<reapi::Digest>(payload, rwapi::DIGEST) {
        let digest = parse(Some(&digest.map_err(decode)?), "the lease's action digest")?;
        return Ok((ctx.cache.message(&digest, "Action").await?, None));
    }
    Err(BotError::Invalid(format!("the lease's payload {:?} is neither an Action nor an Action digest", payload.type_url)))
}

/// The Command the server sent with a lease, if its bytes are the ones the Action names.
fn sent_command(digest: &strata_backends::Digest, data: Bytes) -> Result<reapi::Command, BotError> {
    digest.verify(&data).map_err(|e| BotError::Invalid(format!("the Command sent with the lease is not the Action's: {e}")))?;
    decode(digest, data, "Command")
}

/// Runs the action of a lease. `Err` is a failure to run it (not a failing command).
pub async fn run(ctx: Arc<Context>, payload: Any) -> Result<reapi::ActionResult, BotError> {
    let (action, sent) = resolve(&ctx, &payload).await?;
    let metadata = reapi::ExecutedActionMetadata {
        worker: ctx.bot_id.clone(),
        worker_start_timestamp: now(),
        input_fetch_start_timestamp: now(),
        ..Default::default()
    };
    let command_digest = parse(action.command_digest.as_ref(), "action.command_digest")?;
    let command: reapi::Command = match sent {
        Some(data) => sent_command(&command_digest, data)?,
        None => ctx.cache.message(&command_digest, "Command").await?,
    };
    let started = std::time::Instant::now();
    let scratch = ctx.scratches.take().await?;
    run_in(&ctx, &action, Arc::new(command), scratch, metadata, started).await
}

/// What the run needs from its prepared directory.
struct Prepared {
    workdir: PathBuf,
    stdout: PathBuf,
    stderr: PathBuf,
    /// The ctime of stdout, just before the spawn.
    spawned: SystemTime,
}

async fn run_in(
    ctx: &Arc<Context>,
    action: &reapi::Action,
    command: Arc<reapi::Command>,
    scratch: Scratch,
    mut metadata: reapi::ExecutedActionMetadata,
    started: std::time::Instant,
) -> Result<reapi::ActionResult, BotError> {
    let input_root = parse(action.input_root_digest.as_ref(), "action.input_root_digest")?;
    // The action's timeout covers staging its inputs too.
    let timeout = action.timeout.as_ref().map_or(Duration::from_secs(3600), |t| Duration::new(t.seconds.max(0) as u64, t.nanos.max(0) as u32));
    let root = scratch.root();
    let staged = match tokio::time::timeout(timeout, ctx.cache.stage(&input_root, &root)).await {
        Ok(staged) => staged?,
        Err(_) => return Err(BotError::TimedOut { timeout, partial: Box::default() }),
    };
    metadata.input_fetch_completed_timestamp = now();

    let workdir_parts: Vec<String> = paths::check_relative(&command.working_directory)
        .map_err(|e| BotError::Invalid(format!("working_directory: {e}")))?
        .into_iter()
        .map(String::from)
        .collect();
    let prepared = {
        let (command, root, dir, parts, user) = (command.clone(), root.clone(), scratch.dir.clone(), workdir_parts.clone(), ctx.runner.run_as().cloned());
        blocking("preparing the action directory", move || prepare(&command, &root, &dir, &parts, user.as_ref())).await?
    };
    let environment: Vec<(String, String)> = command.environment_variables.iter().map(|v| (v.name.clone(), v.value.clone())).collect();
    let network = crate::protocol::platform(action, &command).any(|(k, v)| k == NETWORK_PROPERTY && v != "off");
    let spawn = Spawn {
        arguments: &command.arguments,
        environment: &environment,
        root: &root,
        working_directory: &prepared.workdir,
        stdout: &prepared.stdout,
        stderr: &prepared.stderr,
        network,
    };
    metadata.execution_start_timestamp = now();
    let exit = ctx.runner.run(spawn, timeout.saturating_sub(started.elapsed())).await?;
    metadata.execution_completed_timestamp = now();
    metadata.output_upload_start_timestamp = now();
    let spawned = prepared.spawned;
    let context = ctx.clone();
    let (mut result, uploads, scratch) = blocking("collecting outputs", move || {
        context.cache.check_untouched(staged, spawned);
        let mut result = reapi::ActionResult::default();
        let mut uploads = Uploads::default();
        let own = Beneath::open(&scratch.dir)?;
        result.stdout_digest = Some(to_proto(&uploads.add_file(&own, Path::new(STDOUT))?.0));
        result.stderr_digest = Some(to_proto(&uploads.add_file(&own, Path::new(STDERR))?.0));
        let workdir: Vec<&str> = workdir_parts.iter().map(String::as_str).collect();
        outputs::collect(&command, &root, &workdir, &mut result, &mut uploads)?;
        // Outputs all held in memory (most actions'): the directory is emptied on this same trip.
        let scratch = if uploads.reads_files() {
            Some(scratch)
        } else {
            scratch.recycle();
            None
        };
        Ok((result, uploads, scratch))
    })
    .await?;
    uploads.upload(ctx.cache.cas()).await?;
    if let Some(scratch) = scratch {
        scratch.release().await;
    }
    metadata.output_upload_completed_timestamp = now();
    metadata.worker_completed_timestamp = now();
    result.execution_metadata = Some(metadata);
    match exit {
        Exit::Code(code) => {
            result.exit_code = code;
            Ok(result)
        }
        Exit::TimedOut => Err(BotError::TimedOut { timeout, partial: Box::new(result) }),
    }
}

/// The staged directory made ready to run in: the working directory and the outputs' parents exist,
/// stdout and stderr are empty, and all of it belongs to the user actions run as.
fn prepare(command: &reapi::Command, root: &Path, dir: &Path, workdir_parts: &[String], user: Option<&RunAs>) -> Result<Prepared, BotError> {
    let parts: Vec<&str> = workdir_parts.iter().map(String::as_str).collect();
    let workdir = below(root, &parts);
    std::fs::create_dir_all(&workdir).map_err(|e| BotError::io(&workdir, e))?;
    create_output_parents(command, root, &parts)?;
    let (stdout, stderr) = (fresh_file(dir, STDOUT)?, fresh_file(dir, STDERR)?);
    if let Some(user) = user {
        user.own(root).map_err(|e| BotError::io(root, e))?;
        // The command's stdout and stderr are opened by the spawner, as the user.
        for log in [&stdout, &stderr] {
            user.own_file(log).map_err(|e| BotError::io(log, e))?;
        }
    }
    // Inputs whose inodes change from here on were touched by the action (see `check_untouched`).
    let spawned = super::inputs::ctime(&stdout).map_err(|e| BotError::io(&stdout, e))?;
    Ok(Prepared { workdir, stdout, stderr, spawned })
}

/// The path of `parts` below `root`.
fn below(root: &Path, parts: &[&str]) -> PathBuf {
    parts.iter().fold(root.to_path_buf(), |p, part| p.join(part))
}

/// Outputs' parent directories exist before the command runs, as the protocol promises.
fn create_output_parents(command: &reapi::Command, root: &Path, workdir: &[&str]) -> Result<(), BotError> {
    for output in crate::protocol::outputs(command) {
        let parts = paths::resolve(workdir, output).map_err(|e| BotError::Invalid(format!("output path: {e}")))?;
        let Some((_, parents)) = parts.split_last() else { continue };
        // An input symlink on the way could point anywhere; parents must be plain directories.
        let mut at = root.to_path_buf();
        for part in parents {
            at.push(part);
            if std::fs::symlink_metadata(&at).is_ok_and(|m| !m.is_dir()) {
                return Err(BotError::Invalid(format!("output path {output:?}: {part:?} is not a directory")));
            }
        }
        std::fs::create_dir_all(&at).map_err(|e| BotError::io(&at, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use strata_backends::DigestFunction;

    #[test]
    fn a_command_sent_with_a_lease_must_be_the_one_its_action_names() {
        let command = reapi::Command { arguments: vec!["true".into()], ..Default::default() };
        let encoded = Bytes::from(command.encode_to_vec());
        let digest = DigestFunction::Sha256.digest_of(&encoded);
        assert_eq!(sent_command(&digest, encoded.clone()).unwrap(), command);
        // Other bytes of the same size, and the right bytes under another size: refused, never run.
        let other = Bytes::from(reapi::Command { arguments: vec!["echo".into()], ..Default::default() }.encode_to_vec());
        assert_eq!(other.len(), encoded.len());
        let mut wrong_size = digest;
        wrong_size.size += 1;
        for (digest, data) in [(digest, other), (wrong_size, encoded)] {
            let err = sent_command(&digest, data).unwrap_err();
            assert!(matches!(err, BotError::Invalid(_)), "{err}");
            assert!(err.to_string().contains("not the Action's"), "{err}");
        }
    }
}
