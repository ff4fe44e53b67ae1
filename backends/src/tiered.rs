//! Composition of tiers: an ordered stack, fastest first, each with a size class. Reads go down the
//! stack and copy hits into the faster tiers that admit the blob; `contains` asks each tier only about
//! what the faster tiers lacked; writes go through to every tier that admits the blob and succeed
//! when the tiers marked durable have it. This is the one place where size classes are decided.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::{slice_range, Blob, BlobStore, BlobWriter, StoreStats};

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
    pub fn admits(&self, size: u64) -> bool {
        (self.min_blob..=self.max_blob).contains(&size)
    }
}

pub struct TieredStore {
    tiers: Vec<Tier>,
}

impl TieredStore {
    pub fn new(tiers: Vec<Tier>) -> Result<TieredStore> {
        if tiers.is_empty() {
            return Err(StoreError::Config("a storage stack needs at least one tier".into()));
        }
        Ok(TieredStore { tiers })
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// Copies a blob found in tier `found` into the faster tiers that want it. A failed copy costs a
    /// later miss, not this read.
    async fn promote(&self, found: usize, digest: &Digest, data: &Bytes) {
        for tier in self.tiers[..found].iter().filter(|t| t.promote && t.admits(digest.size)) {
            if let Err(e) = tier.store.write(digest, data.clone()).await {
                tracing::warn!(tier = %tier.name, %digest, "promotion failed: {e}");
            }
        }
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
            if !self.wants_promotion(i, digest.size) {
                if let Some(blob) = tier.store.read(digest, offset, limit).await? {
                    return Ok(Some(blob));
                }
                continue;
            }
            match tier.store.read(digest, 0, None).await? {
                Some(Blob::Bytes(data)) => {
                    // A zero-copy slice of a mapping would pin it; the faster tier gets its own copy.
                    let owned = Bytes::copy_from_slice(&data);
                    self.promote(i, digest, &owned).await;
                    return Ok(Some(Blob::Bytes(slice_range(&data, offset, limit))));
                }
                Some(stream) => {
                    // Streamed tiers are remote; promoting from them is the fill path of the
                    // remote tiers, so here the blob is served as it is.
                    let data = stream.into_bytes().await?;
                    return Ok(Some(Blob::Bytes(slice_range(&data, offset, limit))));
                }
                None => continue,
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
                Err(e) => tracing::warn!(tier = %tier.name, %digest, "write to a non-durable tier failed: {e}"),
            }
        }
        if stored {
            Ok(())
        } else {
            Err(self.too_large(digest))
        }
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        let mut writers = Vec::new();
        for tier in self.tiers.iter().filter(|t| t.admits(digest.size)) {
            match tier.store.writer(digest).await {
                Ok(w) => writers.push((tier.name.clone(), tier.durable, w)),
                Err(e) if tier.durable => return Err(e),
                Err(e) => tracing::warn!(tier = %tier.name, %digest, "cannot write to a non-durable tier: {e}"),
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
                    tracing::warn!(tier = %name, "write to a non-durable tier failed: {e}");
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
                Err(e) => tracing::warn!(tier = %name, "commit to a non-durable tier failed: {e}"),
            }
        }
        Ok(())
    }
}
