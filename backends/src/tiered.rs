//! Composition of tiers: an ordered stack, fastest first, each with a size class. Reads go down the
//! stack and copy hits into the faster tiers that admit the blob (one fill per digest at a time,
//! streamed, shared by concurrent readers); `contains` asks each tier only about what the faster tiers
//! lacked; writes go through to every tier that admits the blob and succeed when the tiers marked
//! durable have it. Blobs from tiers that are not trusted (remote, S3) are hashed on the way: a blob
//! that does not match its digest is neither promoted nor served. This is the one place where size
//! classes are decided.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
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
    /// What this tier returns must be hashed before it is trusted (remote and S3 tiers).
    pub verify: bool,
}

impl Tier {
    pub fn admits(&self, size: u64) -> bool {
        (self.min_blob..=self.max_blob).contains(&size)
    }
}

pub struct TieredStore {
    tiers: Vec<Tier>,
    /// Fills in progress: concurrent readers of one digest wait for the first one's fill.
    fills: Mutex<HashMap<Digest, Arc<OnceCell<bool>>>>,
}

impl TieredStore {
    pub fn new(tiers: Vec<Tier>) -> Result<TieredStore> {
        if tiers.is_empty() {
            return Err(StoreError::Config("a storage stack needs at least one tier".into()));
        }
        Ok(TieredStore { tiers, fills: Mutex::new(HashMap::new()) })
    }

    pub fn tiers(&self) -> &[Tier] {
        &self.tiers
    }

    /// Copies a blob from tier `found` into the faster tiers that want it, once per digest however
    /// many readers ask at the same time. Returns whether tier `found` had the blob (intact).
    async fn fill(&self, found: usize, digest: &Digest) -> Result<bool> {
        let cell = self.fills.lock().entry(*digest).or_default().clone();
        let result = cell.get_or_try_init(|| self.copy_up(found, digest)).await.copied();
        let mut fills = self.fills.lock();
        if fills.get(digest).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            fills.remove(digest);
        }
        result
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
        let mut hasher = source.verify.then(|| digest.function.hasher());
        let mut received = 0u64;
        let mut chunks = blob.into_stream();
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            received += chunk.len() as u64;
            if let Some(h) = hasher.as_mut() {
                h.update(&chunk);
            }
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
        if let Some(h) = hasher {
            if let Err(e) = h.verify(digest, received) {
                tracing::error!(tier = %source.name, "{e}; not served, not promoted");
                return Ok(false);
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
            if tier.verify {
                // A range cannot be checked on its own: read the whole blob, verify, serve the range.
                let Some(blob) = tier.store.read(digest, 0, None).await? else { continue };
                let whole = verified(blob, *digest, tier.name.clone());
                if offset == 0 && limit.is_none() {
                    return Ok(Some(whole));
                }
                let len = limit.map_or(digest.size - offset, |l| l.min(digest.size - offset));
                return Ok(Some(range_of(whole, offset, len)));
            }
            match tier.store.read(digest, offset, limit).await? {
                Some(blob) => return Ok(Some(blob)),
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

/// Passes a blob through, hashing it; a blob that turns out not to match its digest ends in an error
/// instead of its last bytes, so the client never accepts it.
fn verified(blob: Blob, digest: Digest, tier: String) -> Blob {
    let state = (blob.into_stream(), Some(digest.function.hasher()), 0u64);
    Blob::Stream(Box::pin(futures::stream::unfold(state, move |(mut chunks, mut hasher, mut received)| {
        let tier = tier.clone();
        async move {
            let h = hasher.as_mut()?;
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    h.update(&chunk);
                    received += chunk.len() as u64;
                    Some((Ok(chunk), (chunks, hasher, received)))
                }
                Some(Err(e)) => Some((Err(e), (chunks, None, received))),
                None => {
                    let h = hasher.take()?;
                    match h.verify(&digest, received) {
                        Ok(()) => None,
                        Err(e) => Some((Err(StoreError::Corrupt { digest, tier, reason: e.to_string() }), (chunks, None, received))),
                    }
                }
            }
        }
    })))
}

/// Bytes `offset..offset + len` of a verified whole-blob stream. The last piece of the range is held
/// back until the rest of the blob has been checked, so a corrupt blob ends in an error instead.
fn range_of(whole: Blob, offset: u64, len: u64) -> Blob {
    let end = offset + len;
    let state = (whole.into_stream(), 0u64, None::<Bytes>, false);
    Blob::Stream(Box::pin(futures::stream::unfold(state, move |(mut chunks, mut pos, mut held, done)| async move {
        if done {
            return None;
        }
        loop {
            match chunks.next().await {
                Some(Ok(chunk)) => {
                    let (from, to) = (pos, pos + chunk.len() as u64);
                    pos = to;
                    let (lo, hi) = (offset.max(from), end.min(to));
                    if lo < hi {
                        let piece = chunk.slice((lo - from) as usize..(hi - from) as usize);
                        if let Some(previous) = held.replace(piece) {
                            return Some((Ok(previous), (chunks, pos, held, false)));
                        }
                    }
                }
                Some(Err(e)) => return Some((Err(e), (chunks, pos, None, true))),
                None => return held.take().map(|last| (Ok(last), (chunks, pos, None, true))),
            }
        }
    })))
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
