//! Write-behind for an upstream tier whose outage must not fail local builds: when the upstream is
//! unavailable, the blob is spooled to a local directory and the write succeeds (the faster tiers have
//! it too, so it is served meanwhile). A background task retries the spooled uploads until the
//! upstream takes them. The spool is plain files (written to a temporary name, then renamed), so it
//! survives a restart, and a spooled upload is never lost: it is deleted only once the upstream has
//! the blob. While the upstream is down, existence checks report what is not local as missing, so
//! clients upload it (into the queue) instead of failing. The files are written, synced and read on
//! blocking threads, never on the async runtime.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::{Digest, DigestFunction};
use crate::error::{Result, StoreError};
use crate::offload::{blocking, remove_soon};
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

    /// A name of its own for a file being written: two uploads of one blob at once must not write
    /// into the same file. The extension marks it partial (removed at start).
    fn temporary(&self, digest: &Digest) -> PathBuf {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        self.path(digest).with_extension(format!("part{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)))
    }

    /// Queues blobs the upstream could not take, in one trip off the runtime; an outcome per blob.
    async fn spool(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        let n = blobs.len();
        let files: Vec<(PathBuf, PathBuf, Bytes)> = blobs.iter().map(|(digest, data)| (self.temporary(digest), self.path(digest), data.clone())).collect();
        let dir = self.dir.clone();
        let outcomes = blocking("spooling uploads", move || {
            let outcomes: Vec<Result<()>> = files.iter().map(|(tmp, path, data)| write_durably(tmp, path, data)).collect();
            // The renames are durable once the directory is synced; until then nothing is acknowledged.
            sync_dir(&dir).map(|()| outcomes)
        });
        let outcomes: Vec<Result<()>> = outcomes.await.unwrap_or_else(|e| e.shared_by(n).into_iter().map(Err).collect());
        for ((digest, _), outcome) in blobs.iter().zip(&outcomes) {
            if outcome.is_ok() {
                self.queued(digest);
            }
        }
        outcomes
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
        let dir = self.dir.clone();
        let listed = blocking("listing the spool", move || {
            let entries = std::fs::read_dir(dir.as_path()).map_err(|e| StoreError::io(dir.as_path(), e))?;
            Ok(entries
                .filter_map(|e| e.ok())
                .filter(|e| e.path().extension().is_none())
                .map(|e| (e.metadata().and_then(|m| m.modified()).unwrap_or(std::time::UNIX_EPOCH), e.path()))
                .collect::<Vec<_>>())
        });
        let Ok(mut entries) = listed.await else { return 0 };
        entries.sort();
        let queued = entries.len();
        let mut sent = 0;
        for (_, path) in entries {
            let Some(digest) = parse_name(&path) else { continue };
            match self.upload(&digest, &path).await {
                Ok(()) => {
                    let _ = tokio::fs::remove_file(&path).await;
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
        let data = tokio::fs::read(path).await.map_err(|e| StoreError::io(path, e))?;
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

/// Writes a spool file under a temporary name, syncs it and renames it: a queued upload survives a
/// crash whole or not at all (once the directory is synced too, `sync_dir`).
fn write_durably(tmp: &Path, path: &Path, data: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut file = std::fs::File::create(tmp).map_err(|e| StoreError::io(tmp, e))?;
    if let Err(e) = file.write_all(data).and_then(|()| file.sync_data()) {
        let _ = std::fs::remove_file(tmp);
        return Err(StoreError::io(tmp, e));
    }
    std::fs::rename(tmp, path).map_err(|e| StoreError::io(path, e))
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| StoreError::io(dir, e))
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
            Err(StoreError::Unavailable { .. }) => self.spool(vec![(*digest, data)]).await.pop().unwrap_or_else(|| Err(StoreError::unanswered())),
            other => other,
        }
    }

    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        let mut outcomes = self.inner.write_many(blobs.clone()).await;
        let refused: Vec<usize> = (0..outcomes.len()).filter(|&i| matches!(outcomes[i], Err(StoreError::Unavailable { .. }))).collect();
        if refused.is_empty() {
            return outcomes;
        }
        let spooled = self.spool(refused.iter().map(|&i| blobs[i].clone()).collect()).await;
        for (i, outcome) in refused.into_iter().zip(spooled) {
            outcomes[i] = outcome;
        }
        outcomes
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        let upstream = match self.inner.writer(digest).await {
            Ok(w) => Some(w),
            Err(StoreError::Unavailable { .. }) => None,
            Err(e) => return Err(e),
        };
        let tmp = self.temporary(digest);
        let file = tokio::fs::File::create(&tmp).await.map_err(|e| StoreError::io(&tmp, e))?;
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
    file: Option<tokio::fs::File>,
    tmp: PathBuf,
}

#[async_trait]
impl BlobWriter for SpoolingWriter {
    async fn append(&mut self, chunk: Bytes) -> Result<()> {
        use tokio::io::AsyncWriteExt;
        if let Some(file) = self.file.as_mut() {
            file.write_all(&chunk).await.map_err(|e| StoreError::io(&self.tmp, e))?;
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
                    let _ = tokio::fs::remove_file(&self.tmp).await;
                    return Ok(());
                }
                Err(StoreError::Unavailable { .. }) => {}
                Err(e) => {
                    let _ = tokio::fs::remove_file(&self.tmp).await;
                    return Err(e);
                }
            }
        }
        if let Some(mut file) = file {
            use tokio::io::AsyncWriteExt;
            // The file's writes finish before it is synced.
            file.flush().await.map_err(|e| StoreError::io(&self.tmp, e))?;
            file.sync_all().await.map_err(|e| StoreError::io(&self.tmp, e))?;
        }
        let (tmp, path, dir) = (self.tmp.clone(), self.spool.path(&self.digest), self.spool.dir.clone());
        blocking("queueing an upload", move || {
            std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
            sync_dir(&dir)
        })
        .await?;
        self.spool.queued(&self.digest);
        Ok(())
    }
}

impl Drop for SpoolingWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            remove_soon(std::mem::take(&mut self.tmp));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::testing::DOWN;

    fn spooled_files(dir: &Path) -> Vec<PathBuf> {
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect()
    }

    #[tokio::test]
    async fn two_uploads_of_one_blob_while_the_upstream_is_down_both_queue_it_whole() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spooled::new(Arc::new(DOWN), dir.path().join("spool"), Duration::from_secs(3600)).unwrap();
        let data = Bytes::from((0..300_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let digest = DigestFunction::Sha256.digest_of(&data);
        let (first, rest) = (data.slice(..100_000), data.slice(100_000..));
        // Interleaved as two clients' streams are: each writer's file must be its own.
        let mut a = spool.writer(&digest).await.unwrap();
        a.append(first.clone()).await.unwrap();
        let mut b = spool.writer(&digest).await.unwrap();
        b.append(first).await.unwrap();
        a.append(rest.clone()).await.unwrap();
        a.commit().await.unwrap();
        b.append(rest).await.unwrap();
        b.commit().await.unwrap();
        let files = spooled_files(&dir.path().join("spool"));
        assert_eq!(files, vec![spool.path(&digest)], "one queued upload, no partial file");
        assert_eq!(std::fs::read(&files[0]).unwrap(), data);
        assert_eq!(spool.stats().spooled, 2);
    }

    #[tokio::test]
    async fn a_batch_the_upstream_refuses_is_queued_blob_by_blob() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spooled::new(Arc::new(DOWN), dir.path().join("spool"), Duration::from_secs(3600)).unwrap();
        let blobs: Vec<(Digest, Bytes)> = (0..3u8)
            .map(|i| {
                let data = Bytes::from(vec![i; 1000 + i as usize]);
                (DigestFunction::Sha256.digest_of(&data), data)
            })
            .collect();
        let outcomes = spool.write_many(blobs.clone()).await;
        assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
        for (digest, data) in &blobs {
            assert_eq!(std::fs::read(spool.path(digest)).unwrap(), data.as_ref());
        }
        assert_eq!(spooled_files(&dir.path().join("spool")).len(), 3);
    }
}
