//! Composition of tiers: an ordered stack, fastest first, each with a size class. Reads go down the
//! stack and copy hits into the faster tiers that admit the blob (one fill per digest at a time,
//! streamed, shared by concurrent readers); `contains` asks each tier only about what the faster tiers
//! lacked; writes go through to every tier that admits the blob and succeed when the tiers marked
//! durable have it. A blob that a slower tier serves corrupt (its `Verified` layer ends the stream
//! in `StoreError::Corrupt`) is neither promoted nor served, and the next tier is asked. This is the
//! one place where size classes are decided.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::layers::single_flight::SingleFlight;
use crate::store::{Blob, BlobStore, BlobWriter, StoreStats};

pub struct Tier {
    pub name: String,
    pub store: Arc<dyn BlobStore>,
    pub min_blob: u64,
    pub max_blob: u64,
    /// Copy blobs found in slower tiers into this one.
    pub promote: bool,
    /// A write is acknowledged only once this tier has the blob.
    pub durable: bool,
}

impl Tier {
    /// A tier for every size, promoted into, not durable: change the fields for anything else.
    pub fn new(name: impl Into<String>, store: Arc<dyn BlobStore>) -> Self {
        Tier { name: name.into(), store, min_blob: 0, max_blob: u64::MAX, promote: true, durable: false }
    }

    pub fn admits(&self, size: u64) -> bool {
        (self.min_blob..=self.max_blob).contains(&size)
    }
}

pub struct TieredStore {
    tiers: Vec<Tier>,
    /// Fills in progress: concurrent readers of one digest wait for the first one's fill.
    fills: SingleFlight<Digest, bool>,
}

impl TieredStore {
    pub fn new(tiers: Vec<Tier>) -> Result<TieredStore> {
        if tiers.is_empty() {
            return Err(StoreError::Config("a storage stack needs at least one tier".into()));
        }
        Ok(TieredStore { tiers, fills: SingleFlight::default() })
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// Copies a blob from tier `found` into the faster tiers that want it, once per digest however
    /// many readers ask at the same time. Returns whether tier `found` had the blob (intact).
    async fn fill(&self, found: usize, digest: &Digest) -> Result<bool> {
        self.fills.run(*digest, || self.copy_up(found, digest)).await
    }

    async fn copy_up(&self, found: usize, digest: &Digest) -> Result<bool> {
        let source = &self.tiers[found];
        let Some(blob) = source.store.read(digest, 0, None).await? else { return Ok(false) };
        let mut writers = Vec::new();
        for tier in self.tiers[..found].iter().filter(|t| t.promote && t.admits(digest.size)) {
            match tier.store.writer(digest).await {
                Ok(w) => writers.push((tier.name.as_str(), w)),
                Err(e) => tracing::warn!(tier = %tier.name, %digest, "cannot promote: {e}"),
            }
        }
        let mut chunks = blob.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = match chunk {
                Ok(chunk) => chunk,
                Err(e @ StoreError::Corrupt { .. }) => {
                    tracing::error!(tier = %source.name, "{e}; not served, not promoted");
                    return Ok(false);
                }
                Err(e) => return Err(e),
            };
            let mut i = 0;
            while i < writers.len() {
                if let Err(e) = writers[i].1.append(chunk.clone()).await {
                    tracing::warn!(tier = %writers[i].0, %digest, "promotion failed: {e}");
                    writers.remove(i);
                } else {
                    i += 1;
                }
            }
        }
        for (name, writer) in writers {
            if let Err(e) = writer.commit().await {
                tracing::warn!(tier = %name, %digest, "promotion failed: {e}");
            }
        }
        Ok(true)
    }

    fn wants_promotion(&self, found: usize, size: u64) -> bool {
        self.tiers[..found].iter().any(|t| t.promote && t.admits(size))
    }

    fn too_large(&self, digest: &Digest) -> StoreError {
        let limit = self.tiers.iter().map(|t| t.max_blob).max().unwrap_or(0);
        StoreError::TooLarge { digest: *digest, store: "any configured tier".into(), limit }
    }
}

#[async_trait]
impl BlobStore for TieredStore {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let mut found = vec![false; digests.len()];
        let mut unknown: Vec<usize> = (0..digests.len()).collect();
        for tier in &self.tiers {
            let asked: Vec<usize> = unknown.iter().copied().filter(|&i| tier.admits(digests[i].size)).collect();
            if asked.is_empty() {
                continue;
            }
            let query: Vec<Digest> = asked.iter().map(|&i| digests[i]).collect();
            let answers = tier.store.contains(&query).await?;
            for (&i, hit) in asked.iter().zip(answers) {
                found[i] |= hit;
            }
            unknown.retain(|&i| !found[i]);
            if unknown.is_empty() {
                break;
            }
        }
        Ok(found)
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        for (i, tier) in self.tiers.iter().enumerate().filter(|(_, t)| t.admits(digest.size)) {
            if self.wants_promotion(i, digest.size) {
                if !self.fill(i, digest).await? {
                    continue;
                }
                for faster in self.tiers[..i].iter().filter(|t| t.promote && t.admits(digest.size)) {
                    if let Some(blob) = faster.store.read(digest, offset, limit).await? {
                        return Ok(Some(blob));
                    }
                }
                // No faster tier kept it (admission, a failed write): serve it from here.
            }
            match tier.store.read(digest, offset, limit).await? {
                Some(blob) => return Ok(Some(blob)),
                None => continue,
            }
        }
        Ok(None)
    }

    /// The first tier that holds the blob compressed serves it as stored; a blob no tier holds so is
    /// read (and promoted) the usual way by the caller.
    async fn read_zstd(&self, digest: &Digest, offset: u64) -> Result<Option<Blob>> {
        for tier in self.tiers.iter().filter(|t| t.admits(digest.size)) {
            if let Some(blob) = tier.store.read_zstd(digest, offset).await? {
                return Ok(Some(blob));
            }
        }
        Ok(None)
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        let mut stored = false;
        for tier in self.tiers.iter().filter(|t| t.admits(digest.size)) {
            match tier.store.write(digest, data.clone()).await {
                Ok(()) => stored = true,
                Err(e) if tier.durable => return Err(e),
                Err(e) => skipped(&tier.name, "write to a non-durable tier failed", &e),
            }
        }
        if stored {
            Ok(())
        } else {
            Err(self.too_large(digest))
        }
    }

    /// `write` for each blob, a tier at a time, each tier given its share of the batch whole.
    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        // Per blob: None while no tier has it; an error once a durable tier failed it, and then no
        // later tier is asked, as in `write`.
        let mut outcome: Vec<Option<Result<()>>> = blobs.iter().map(|_| None).collect();
        for tier in &self.tiers {
            let asked: Vec<usize> =
                (0..blobs.len()).filter(|&i| tier.admits(blobs[i].0.size) && !matches!(outcome[i], Some(Err(_)))).collect();
            if asked.is_empty() {
                continue;
            }
            let results = tier.store.write_many(asked.iter().map(|&i| blobs[i].clone()).collect()).await;
            for (&i, result) in asked.iter().zip(results) {
                match result {
                    Ok(()) => outcome[i] = Some(Ok(())),
                    Err(e) if tier.durable => outcome[i] = Some(Err(e)),
                    Err(e) => skipped(&tier.name, "write to a non-durable tier failed", &e),
                }
            }
        }
        outcome.into_iter().zip(&blobs).map(|(o, (digest, _))| o.unwrap_or_else(|| Err(self.too_large(digest)))).collect()
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        let mut writers = Vec::new();
        for tier in self.tiers.iter().filter(|t| t.admits(digest.size)) {
            match tier.store.writer(digest).await {
                Ok(w) => writers.push((tier.name.clone(), tier.durable, w)),
                Err(e) if tier.durable => return Err(e),
                Err(e) => skipped(&tier.name, "cannot write to a non-durable tier", &e),
            }
        }
        if writers.is_empty() {
            return Err(self.too_large(digest));
        }
        Ok(Box::new(FanOutWriter { writers }))
    }

    fn stats(&self) -> StoreStats {
        self.tiers.iter().map(|t| t.store.stats()).fold(StoreStats::default(), |a, s| StoreStats {
            blobs: a.blobs + s.blobs,
            bytes: a.bytes + s.bytes,
            hits: a.hits + s.hits,
            misses: a.misses + s.misses,
            evictions: a.evictions + s.evictions,
            bytes_written: a.bytes_written + s.bytes_written,
            stored_bytes_written: a.stored_bytes_written + s.stored_bytes_written,
            retries: a.retries + s.retries,
            oldest: match (a.oldest, s.oldest) {
                (Some(x), Some(y)) => Some(x.min(y)),
                (x, y) => x.or(y),
            },
            spooled: a.spooled + s.spooled,
            syncs: a.syncs + s.syncs,
        })
    }
}

/// Writes one stream to several tiers at once. A non-durable tier that fails is dropped from the
/// fan-out; a durable one fails the write.
struct FanOutWriter {
    writers: Vec<(String, bool, Box<dyn BlobWriter>)>,
}

#[async_trait]
impl BlobWriter for FanOutWriter {
    async fn append(&mut self, chunk: Bytes) -> Result<()> {
        let mut i = 0;
        while i < self.writers.len() {
            let (name, durable, writer) = &mut self.writers[i];
            match writer.append(chunk.clone()).await {
                Ok(()) => i += 1,
                Err(e) if *durable => return Err(e),
                Err(e) => {
                    skipped(name, "write to a non-durable tier failed", &e);
                    self.writers.remove(i);
                }
            }
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        for (name, durable, writer) in self.writers {
            match writer.commit().await {
                Ok(()) => {}
                Err(e) if durable => return Err(e),
                Err(e) => skipped(&name, "commit to a non-durable tier failed", &e),
            }
        }
        Ok(())
    }
}

/// A non-durable tier that failed a write is skipped. An unreachable upstream is logged by the
/// server's health probe once per change, not here once per request; other failures are warnings.
fn skipped(tier: &str, what: &str, error: &crate::error::StoreError) {
    match error {
        crate::error::StoreError::Unavailable { .. } => tracing::debug!(tier, "{what}: {error}"),
        _ => tracing::warn!(tier, "{what}: {error}"),
    }
}
