//! Stages an action's input tree. Files come from a local cache of read-only files named by digest,
//! hard-linked into the action's directory (copied when the cache is on another file system), so
//! an input used by many actions is fetched once; the cache is bounded in bytes (`cache_index`).
//! Every name from the CAS is checked first. A hard-linked input shares its inode with the cache, so
//! an action that makes it writable and changes it would change what every later action sees: after
//! each run, `check_untouched` re-hashes every cache file whose inode changed while the action ran,
//! and one that no longer matches its digest leaves the cache.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use strata_backends::{BlobStore, Digest, DigestFunction};

use super::cache_index::CacheIndex;
use super::{blocking, BotError};
use crate::protocol::paths;

/// Files fetched at once.
const FETCH_CONCURRENCY: usize = 16;

pub struct InputCache {
    dir: PathBuf,
    cas: Arc<dyn BlobStore>,
    /// Paths an input root may expand to at most.
    max_paths: usize,
    index: CacheIndex,
    /// Names temporary files uniquely.
    next: AtomicU64,
}

/// Input files linked in one trip off the runtime: a trip costs some microseconds, and a file
/// fetched early in it may be evicted (within a small budget) before the trip links it.
const LINKS_PER_TRIP: usize = 256;

/// An input tree as read from the CAS, checked, to be made on disk: directories parents first.
#[derive(Default)]
struct Tree {
    dirs: Vec<PathBuf>,
    /// Targets and where they go.
    symlinks: Vec<(String, PathBuf)>,
    files: Vec<(PathBuf, Digest, bool)>,
}

/// The cache files an action's inputs are hard links to, for `check_untouched`.
#[derive(Default)]
pub struct Staged {
    linked: Vec<(PathBuf, Digest, bool)>,
}

pub fn parse(digest: Option<&reapi::Digest>, what: &str) -> Result<Digest, BotError> {
    let d = digest.ok_or_else(|| BotError::Invalid(format!("{what}: digest missing")))?;
    Digest::parse(DigestFunction::Sha256, &d.hash, d.size_bytes).map_err(|e| BotError::Invalid(format!("{what}: {e}")))
}

/// A message whose bytes have been checked against its digest.
pub fn decode<M: Message + Default>(digest: &Digest, data: bytes::Bytes, what: &str) -> Result<M, BotError> {
    M::decode(data).map_err(|e| BotError::Invalid(format!("{what} {digest} is not a valid {what}: {e}")))
}

impl InputCache {
    pub fn open(dir: PathBuf, cas: Arc<dyn BlobStore>, max_paths: usize, max_bytes: u64) -> Result<InputCache, BotError> {
        std::fs::create_dir_all(&dir).map_err(|e| BotError::io(&dir, e))?;
        let index = CacheIndex::load(&dir, max_bytes).map_err(|e| BotError::io(&dir, e))?;
        let (files, bytes) = index.usage();
        tracing::info!(dir = %dir.display(), files, bytes, max_bytes, "input cache opened");
        Ok(InputCache { dir, cas, max_paths, index, next: AtomicU64::new(0) })
    }

    pub fn cas(&self) -> &Arc<dyn BlobStore> {
        &self.cas
    }

    /// A small blob, whole (Command and Directory messages).
    pub async fn fetch(&self, digest: &Digest) -> Result<bytes::Bytes, BotError> {
        if digest.is_empty_blob() {
            return Ok(bytes::Bytes::new());
        }
        let blob = self.cas.read(digest, 0, None).await?.ok_or(BotError::Missing(*digest))?;
        let data = blob.into_bytes().await?;
        digest.verify(&data).map_err(|e| BotError::Invalid(format!("the CAS returned bad bytes: {e}")))?;
        Ok(data)
    }

    pub async fn message<M: Message + Default>(&self, digest: &Digest, what: &str) -> Result<M, BotError> {
        let data = self.fetch(digest).await?;
        decode(digest, data, what)
    }

    /// Materialises the tree under `root` (an empty directory).
    pub async fn stage(&self, root_digest: &Digest, root: &Path) -> Result<Staged, BotError> {
        let Tree { dirs, symlinks, files } = self.walk(root_digest, root).await?;
        if !dirs.is_empty() || !symlinks.is_empty() {
            blocking("staging the input tree", move || {
                for dir in &dirs {
                    std::fs::create_dir(dir).map_err(|e| BotError::io(dir, e))?;
                }
                for (target, at) in &symlinks {
                    std::os::unix::fs::symlink(target, at).map_err(|e| BotError::io(at, e))?;
                }
                Ok(())
            })
            .await?;
        }
        let mut linked = Vec::new();
        for chunk in files.chunks(LINKS_PER_TRIP) {
            linked.extend(self.link(chunk.to_vec()).await?);
        }
        Ok(Staged { linked })
    }

    /// Reads the tree's Directory messages and checks every name and symlink in it.
    async fn walk(&self, root_digest: &Digest, root: &Path) -> Result<Tree, BotError> {
        let mut tree = Tree::default();
        let mut dirs: HashMap<Digest, reapi::Directory> = HashMap::new();
        let mut pending = vec![(*root_digest, root.to_path_buf(), 0usize)];
        let mut paths = 0usize;
        let mut links = crate::protocol::paths::Symlinks::default();
        while let Some((digest, path, depth)) = pending.pop() {
            let dir = match dirs.get(&digest) {
                Some(d) => d.clone(),
                None => {
                    let d: reapi::Directory = self.message(&digest, "Directory").await?;
                    dirs.insert(digest, d.clone());
                    d
                }
            };
            paths += dir.files.len() + dir.directories.len() + dir.symlinks.len();
            if paths > self.max_paths {
                return Err(BotError::Invalid(format!(
                    "the input tree expands to more than {} files, directories and symlinks (this bot's --max-input-paths)",
                    self.max_paths
                )));
            }
            let bad = |name: &str, e: String| BotError::Invalid(format!("input tree at {}: entry {name:?}: {e}", path.display()));
            paths::check_distinct(&dir).map_err(|e| BotError::Invalid(format!("input tree at {}: {e}", path.display())))?;
            for file in &dir.files {
                paths::check_name(&file.name).map_err(|e| bad(&file.name, e))?;
                tree.files.push((path.join(&file.name), parse(file.digest.as_ref(), &file.name)?, file.is_executable));
            }
            for sub in &dir.directories {
                paths::check_name(&sub.name).map_err(|e| bad(&sub.name, e))?;
                let child = path.join(&sub.name);
                tree.dirs.push(child.clone());
                pending.push((parse(sub.digest.as_ref(), &sub.name)?, child, depth + 1));
            }
            for link in &dir.symlinks {
                paths::check_name(&link.name).map_err(|e| bad(&link.name, e))?;
                paths::check_symlink_target(&link.target, depth).map_err(|e| bad(&link.name, e))?;
                let below: Vec<&str> = path.strip_prefix(root).unwrap_or(&path).iter().filter_map(|c| c.to_str()).collect();
                links.add(&below, &link.name, &link.target);
                tree.symlinks.push((link.target.clone(), path.join(&link.name)));
            }
        }
        // Before anything runs: targets resolved through the tree's other links stay inside it.
        links.check().map_err(|e| BotError::Invalid(format!("input tree: {e}")))?;
        Ok(tree)
    }

    /// Fetches what the cache lacks of `files` and links them all in one trip off the runtime. The
    /// cache files it links are returned, for `check_untouched`.
    async fn link(&self, files: Vec<(PathBuf, Digest, bool)>) -> Result<Vec<(PathBuf, Digest, bool)>, BotError> {
        let wanted: Vec<(Digest, bool)> = files.iter().map(|(_, digest, executable)| (*digest, *executable)).collect();
        let cached: Vec<PathBuf> = futures::stream::iter(wanted)
            .map(|(digest, executable)| async move { self.cached(&digest, executable, false).await })
            .buffered(FETCH_CONCURRENCY)
            .try_collect()
            .await?;
        let (mut linked, evicted) = blocking("linking the inputs", move || {
            let (mut linked, mut evicted) = (Vec::new(), Vec::new());
            for ((path, digest, executable), cached) in files.into_iter().zip(cached) {
                match link_or_copy(&cached, &path) {
                    Ok(true) => linked.push((cached, digest, executable)),
                    Ok(false) => {}
                    Err(BotError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => evicted.push((path, digest, executable)),
                    Err(e) => return Err(e),
                }
            }
            Ok((linked, evicted))
        })
        .await?;
        // Evicted between the lookup and the link (the budget is full): fetched again, one at a time.
        for (path, digest, executable) in evicted {
            let cached = self.cached(&digest, executable, true).await?;
            let from = cached.clone();
            if blocking("linking an input", move || link_or_copy(&from, &path)).await? {
                linked.push((cached, digest, executable));
            }
        }
        Ok(linked)
    }

    /// After a run that started at `since` (a ctime, see `ctime`): every hard-linked input whose cache
    /// file's inode changed since then (ctime, which no one can set back) is hashed again; so are
    /// inputs linked within the same clock tick as the start. One that still matches gets its
    /// read-only mode back; one that does not is removed from the cache, so later actions fetch the
    /// original again. The action itself stands: it ran on the right bytes and changed them itself.
    /// Inodes untouched cost one `stat` each.
    /// File system work: call it off the async runtime.
    pub fn check_untouched(&self, staged: Staged, since: std::time::SystemTime) {
        let mut changed = 0;
        for (cached, digest, executable) in staged.linked {
            let Ok(ctime) = ctime(&cached) else { continue }; // evicted meanwhile
            if ctime < since {
                continue;
            }
            if hash_file(&cached, &digest).unwrap_or(false) {
                let mode = if executable { 0o555 } else { 0o444 };
                let _ = std::fs::set_permissions(&cached, std::fs::Permissions::from_mode(mode));
                continue;
            }
            let _ = std::fs::remove_file(&cached);
            if let Some(name) = cached.file_name().and_then(|n| n.to_str()) {
                self.index.remove(name);
            }
            changed += 1;
        }
        if changed > 0 {
            tracing::warn!(files = changed, "an action changed input files in place; dropped from the cache, later actions fetch them again");
        }
    }

    /// The cache file of a blob, fetched if the index does not hold it, or `again` (the file the
    /// index named was gone when it was linked).
    async fn cached(&self, digest: &Digest, executable: bool, again: bool) -> Result<PathBuf, BotError> {
        let name = format!("{}{}", digest.hash_hex(), if executable { "-x" } else { "" });
        let path = self.dir.join(&name);
        if !again && self.index.touch(&name) {
            return Ok(path);
        }
        let tmp = self.dir.join(format!("tmp-{}-{}", std::process::id(), self.next.fetch_add(1, Ordering::Relaxed)));
        let result = self.download(digest, &tmp, executable).await;
        if result.is_err() {
            let _ = tokio::fs::remove_file(&tmp).await;
        }
        result?;
        tokio::fs::rename(&tmp, &path).await.map_err(|e| BotError::io(&path, e))?;
        for evicted in self.index.insert(&name, digest.size) {
            let _ = tokio::fs::remove_file(self.dir.join(evicted)).await;
        }
        Ok(path)
    }

    /// Writes through tokio's file, which does the syscalls off the runtime.
    async fn download(&self, digest: &Digest, tmp: &Path, executable: bool) -> Result<(), BotError> {
        use tokio::io::AsyncWriteExt;
        let mut file = tokio::fs::File::create(tmp).await.map_err(|e| BotError::io(tmp, e))?;
        if !digest.is_empty_blob() {
            let blob = self.cas.read(digest, 0, None).await?.ok_or(BotError::Missing(*digest))?;
            let mut hasher = digest.function.hasher();
            let mut received = 0u64;
            let mut chunks = blob.into_stream();
            while let Some(chunk) = chunks.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                received += chunk.len() as u64;
                file.write_all(&chunk).await.map_err(|e| BotError::io(tmp, e))?;
            }
            hasher
                .verify(digest, received)
                .map_err(|e| BotError::Invalid(format!("the CAS returned bad bytes: {e}")))?;
        }
        file.flush().await.map_err(|e| BotError::io(tmp, e))?;
        let mode = if executable { 0o555 } else { 0o444 };
        file.set_permissions(std::fs::Permissions::from_mode(mode)).await.map_err(|e| BotError::io(tmp, e))?;
        Ok(())
    }
}

/// Hard-links a cache file into an action's directory (true), or copies it across file systems.
fn link_or_copy(from: &Path, to: &Path) -> Result<bool, BotError> {
    match std::fs::hard_link(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
            std::fs::copy(from, to).map_err(|e| BotError::io(to, e))?;
            Ok(false)
        }
        Err(e) => Err(BotError::io(to, e)),
    }
}

/// A file's inode change time. The kernel stamps it from a clock coarser than `SystemTime::now()`,
/// so the start of a run is taken as the ctime of a file made just before it, not from the clock.
pub fn ctime(path: &Path) -> std::io::Result<std::time::SystemTime> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path)?;
    Ok(std::time::UNIX_EPOCH + std::time::Duration::new(meta.ctime().max(0) as u64, meta.ctime_nsec().clamp(0, 999_999_999) as u32))
}

/// Whether a file's bytes still match `digest`.
fn hash_file(path: &Path, digest: &Digest) -> std::io::Result<bool> {
    use std::io::Read;
    let mut file = std::fs::File::open(path)?;
    let mut hasher = digest.function.hasher();
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok(hasher.verify(digest, total).is_ok())
}
