//! Write-behind for an upstream tier whose outage must not fail local builds: when the upstream is
//! unavailable, the blob is spooled to a local directory and the write succeeds (the faster tiers have
//! it too, so it is served meanwhile). A background task retries the spooled uploads until the
//! upstream takes them. The spool is plain files (written to a temporary name, then renamed), so it
//! survives a restart, and a spooled upload is never lost: it is deleted only once the upstream has
//! the blob. While the upstream is down, existence checks report what is not local as missing, so
//! clients upload it (into the queue) instead of failing.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::{Digest, DigestFunction};
use crate::error::{Result, StoreError};
use crate::store::{Blob, BlobStore, BlobWriter, StoreStats};

/// Bytes per chunk when a spooled blob is sent upstream.
const UPLOAD_CHUNK: usize = 1 << 20;

#[derive(Clone)]
pub struct Spooled {
    inner: Arc<dyn BlobStore>,
    dir: Arc<PathBuf>,
    /// Spooled uploads not yet taken upstream (recounted by every drain).
    pending: Arc<AtomicU64>,
}

impl Spooled {
    /// Wraps `inner`, spooling into `dir`, and starts retrying what a previous run left there.
    pub fn new(inner: Arc<dyn BlobStore>, dir: PathBuf, retry_every: Duration) -> Result<Spooled> {
        std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
        // Partial files of a previous run were never acknowledged: they go.
        for entry in std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))?.flatten() {
            if entry.path().extension().is_some() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let spooled = Spooled { inner, dir: Arc::new(dir), pending: Arc::default() };
        let weak = Arc::downgrade(&spooled.dir);
        let (inner, pending) = (spooled.inner.clone(), spooled.pending.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(retry_every).await;
                let Some(dir) = weak.upgrade() else { return };
                Spooled { inner: inner.clone(), dir, pending: pending.clone() }.drain().await;
            }
        });
        Ok(spooled)
    }

    fn path(&self, digest: &Digest) -> PathBuf {
        self.dir.join(format!("{}-{}-{}", digest.function.name(), digest.hash_hex(), digest.size))
    }

    fn spool(&self, digest: &Digest, data: &[u8]) -> Result<()> {
        let path = self.path(digest);
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, data).map_err(|e| StoreError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        self.queued(digest);
        Ok(())
    }

    /// Counts a spooled upload; the first of an outage is a warning, the rest are debug lines.
    fn queued(&self, digest: &Digest) {
        match self.pending.fetch_add(1, Ordering::Relaxed) {
            0 => tracing::warn!(%digest, "upstream unavailable; uploads are queued in {} until it is back", self.dir.display()),
            _ => tracing::debug!(%digest, "upload queued"),
        }
    }

    /// Uploads what is spooled, oldest first, until the upstream refuses again.
    pub async fn drain(&self) -> usize {
        let mut entries: Vec<(std::time::SystemTime, PathBuf)> = match std::fs::read_dir(self.dir.as_path()) {
            Ok(dir) => dir
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_none())
                .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
                .collect(),
            Err(_) => return 0,
        };
        entries.sort();
        let queued = entries.len();
        let mut sent = 0;
        for (_, path) in entries {
            let Some(digest) = parse_name(&path) else { continue };
            match self.upload(&digest, &path).await {
                Ok(()) => {
                    let _ = std::fs::remove_file(&path);
                    sent += 1;
                }
                Err(StoreError::Unavailable { .. }) => break,
                Err(e) => tracing::error!(%digest, "queued upload failed, will retry: {e}"),
            }
        }
        let left = (queued - sent) as u64;
        if self.pending.swap(left, Ordering::Relaxed) > 0 && left == 0 && sent > 0 {
            tracing::info!(uploads = sent, "queued uploads delivered upstream");
        }
        sent
    }

    async fn upload(&self, digest: &Digest, path: &Path) -> Result<()> {
        let data = std::fs::read(path).map_err(|e| StoreError::io(path, e))?;
        // A damaged spool file must not reach the upstream as the blob it names.
        digest.verify(&data)?;
        let data = Bytes::from(data);
        let mut writer = self.inner.writer(digest).await?;
        for start in (0..data.len()).step_by(UPLOAD_CHUNK) {
            writer.append(data.slice(start..(start + UPLOAD_CHUNK).min(data.len()))).await?;
        }
        writer.commit().await
    }
}

fn parse_name(path: &Path) -> Option<Digest> {
    let name = path.file_name()?.to_str()?;
    let mut parts = name.splitn(3, '-');
    let function = DigestFunction::from_name(parts.next()?)?;
    let hash = parts.next()?;
    let size: i64 = parts.next()?.parse().ok()?;
    Digest::parse(function, hash, size).ok()
}

#[async_trait]
impl BlobStore for Spooled {
    /// While the upstream is down, what it might hold is reported missing, so that clients upload
    /// it and builds go on (the uploads are queued).
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        match self.inner.contains(digests).await {
            Err(StoreError::Unavailable { .. }) => Ok(vec![false; digests.len()]),
            other => other,
        }
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        self.inner.read(digest, offset, limit).await
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        match self.inner.write(digest, data.clone()).await {
            Err(StoreError::Unavailable { .. }) => self.spool(digest, &data),
            other => other,
        }
    }

    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        let outcomes = self.inner.write_many(blobs.clone()).await;
        outcomes
            .into_iter()
            .zip(&blobs)
            .map(|(outcome, (digest, data))| match outcome {
                Err(StoreError::Unavailable { .. }) => self.spool(digest, data),
                other => other,
            })
            .collect()
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        let upstream = match self.inner.writer(digest).await {
            Ok(w) => Some(w),
            Err(StoreError::Unavailable { .. }) => None,
            Err(e) => return Err(e),
        };
        let tmp = self.path(digest).with_extension(format!("part{}", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| StoreError::io(&tmp, e))?;
        Ok(Box::new(SpoolingWriter { spool: self.clone(), digest: *digest, upstream, file: Some(file), tmp }))
    }

    fn stats(&self) -> StoreStats {
        StoreStats { spooled: self.pending.load(Ordering::Relaxed), ..self.inner.stats() }
    }
}

/// Streams upstream and into a spool file at once; the spool file is kept only if the upstream
/// failed along the way.
struct SpoolingWriter {
    spool: Spooled,
    digest: Digest,
    upstream: Option<Box<dyn BlobWriter>>,
    file: Option<std::fs::File>,
    tmp: PathBuf,
}

#[async_trait]
impl BlobWriter for SpoolingWriter {
    async fn append(&mut self, chunk: Bytes) -> Result<()> {
        use std::io::Write;
        if let Some(file) = self.file.as_mut() {
            file.write_all(&chunk).map_err(|e| StoreError::io(&self.tmp, e))?;
        }
        if let Some(up) = self.upstream.as_mut() {
            match up.append(chunk).await {
                Err(StoreError::Unavailable { .. }) => self.upstream = None,
                other => other?,
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let file = self.file.take();
        if let Some(up) = self.upstream.take() {
            match up.commit().await {
                Ok(()) => {
                    drop(file);
                    let _ = std::fs::remove_file(&self.tmp);
                    return Ok(());
                }
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => {
                    let _ = std::fs::remove_file(&self.tmp);
                    return Err(e);
                }
            }
        }
        if let Some(file) = file {
            file.sync_all().map_err(|e| StoreError::io(&self.tmp, e))?;
        }
        let path = self.spool.path(&self.digest);
        std::fs::rename(&self.tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        self.spool.queued(&self.digest);
        Ok(())
    }
}

impl Drop for SpoolingWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}
