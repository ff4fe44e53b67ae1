//! The one storage trait. Every tier (memory, disk, and later S3 and remote) implements `BlobStore`
//! for the CAS and `ActionCacheStore` for the action cache; behaviour is added by wrapping stores,
//! never by teaching a tier about its neighbours.

use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;

use crate::chunks::Chunks;
use crate::digest::Digest;
use crate::error::Result;

/// What a read returns: local tiers hand out one (often zero-copy) `Bytes`; remote tiers stream.
pub enum Blob {
    Bytes(Bytes),
    Stream(BoxStream<'static, Result<Bytes>>),
}

impl Blob {
    /// The blob as a stream of chunks, whichever form it came in.
    pub fn into_stream(self) -> BoxStream<'static, Result<Bytes>> {
        match self {
            Blob::Bytes(bytes) => Box::pin(futures::stream::once(async move { Ok(bytes) })),
            Blob::Stream(chunks) => chunks,
        }
    }

    /// Collects the blob into one buffer. Only for blobs known to be small.
    pub async fn into_bytes(self) -> Result<Bytes> {
        match self {
            Blob::Bytes(bytes) => Ok(bytes),
            Blob::Stream(mut chunks) => {
                let mut buf = Vec::new();
                while let Some(chunk) = chunks.next().await {
                    buf.extend_from_slice(&chunk?);
                }
                Ok(Bytes::from(buf))
            }
        }
    }
}

/// A streaming write of one blob whose digest is known up front. Bytes are verified by the caller
/// before `commit`; dropping the writer without committing stores nothing.
#[async_trait]
pub trait BlobWriter: Send {
    async fn append(&mut self, chunk: Bytes) -> Result<()>;
    async fn commit(self: Box<Self>) -> Result<()>;
}

/// A content-addressable blob store (one tier, or a composition of tiers).
#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Which blobs are present; a hit refreshes the blob's age.
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>>;
    /// `offset` is at most `digest.size` (the caller checks); `limit` None reads to the end.
    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>>;
    /// The blob from `offset` (uncompressed) on as a zstd stream, where this store holds it
    /// compressed: served as stored, without compressing again. `None` where it does not (absent,
    /// or stored as it is); the caller then reads it and compresses.
    async fn read_zstd(&self, _digest: &Digest, _offset: u64) -> Result<Option<Blob>> {
        Ok(None)
    }
    /// Stores a blob whose bytes the caller has verified.
    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()>;
    /// Stores several verified blobs (a BatchUpdate's), with one result each, in order. The default
    /// writes them concurrently; a tier that does better with the batch whole (the disk log: one
    /// append job and one group commit instead of one wake-up per blob each) overrides it, and so
    /// does every layer that may stand above such a tier.
    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        futures::future::join_all(blobs.into_iter().map(|(digest, data)| async move { self.write(&digest, data).await })).await
    }
    /// Starts a streaming write of a verified-as-it-goes blob (ByteStream uploads).
    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>>;
    fn stats(&self) -> StoreStats;
    /// Drops a blob from this tier now (the admin API's evict). Tiers that cannot drop one blob on
    /// request (upstreams, and layers, which the admin API never asks) keep it and say `false`.
    async fn evict(&self, _digest: &Digest) -> Result<bool> {
        Ok(false)
    }
}

/// Action results keyed by the action digest (local tiers use its key; a remote tier needs it whole).
/// Values are encoded `ActionResult` messages.
#[async_trait]
pub trait ActionCacheStore: Send + Sync + 'static {
    async fn get(&self, action: &Digest) -> Result<Option<Bytes>>;
    async fn put(&self, action: &Digest, value: Bytes) -> Result<()>;
}

/// A writer that keeps the chunks of a blob as they came (slices, not copies) and hands them to a
/// closure on commit.
pub struct BufferedWriter<F> {
    chunks: Chunks,
    on_commit: F,
}

impl<F> BufferedWriter<F> {
    pub fn new(on_commit: F) -> Self {
        BufferedWriter { chunks: Chunks::default(), on_commit }
    }
}

#[async_trait]
impl<F, Fut> BlobWriter for BufferedWriter<F>
where
    F: FnOnce(Chunks) -> Fut + Send,
    Fut: std::future::Future<Output = Result<()>> + Send,
{
    async fn append(&mut self, chunk: Bytes) -> Result<()> {
        self.chunks.push(chunk);
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let this = *self;
        (this.on_commit)(this.chunks).await
    }
}

/// A snapshot of a store's counters, for logs and metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StoreStats {
    pub blobs: u64,
    pub bytes: u64,
    pub hits: u64,
    pub misses: u64,
    pub evictions: u64,
    /// Bytes accepted for storage since start.
    pub bytes_written: u64,
    /// What those took where they were stored: less than `bytes_written` where the tier compresses.
    pub stored_bytes_written: u64,
    /// Calls to an upstream repeated after a transient failure.
    pub retries: u64,
    /// When the oldest data still held was written, where the tier knows.
    pub oldest: Option<std::time::SystemTime>,
    /// Uploads queued for an upstream that was down.
    pub spooled: u64,
    /// `fdatasync` calls of a disk tier's group commits: far fewer than writes when they share them.
    pub syncs: u64,
}

/// Hit, miss, eviction and write counters shared by the tiers.
#[derive(Default, Debug)]
pub struct Counters {
    pub hits: AtomicU64,
    pub misses: AtomicU64,
    pub evictions: AtomicU64,
    pub bytes_written: AtomicU64,
    pub stored_bytes_written: AtomicU64,
    pub retries: AtomicU64,
}

impl Counters {
    pub fn hit(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn written(&self, bytes: u64) {
        self.written_as(bytes, bytes);
    }

    /// A blob of `bytes` stored in `stored` bytes (compressed, or as it is).
    pub fn written_as(&self, bytes: u64, stored: u64) {
        self.bytes_written.fetch_add(bytes, Ordering::Relaxed);
        self.stored_bytes_written.fetch_add(stored, Ordering::Relaxed);
    }

    pub fn snapshot(&self, blobs: u64, bytes: u64) -> StoreStats {
        StoreStats {
            blobs,
            bytes,
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            bytes_written: self.bytes_written.load(Ordering::Relaxed),
            stored_bytes_written: self.stored_bytes_written.load(Ordering::Relaxed),
            retries: self.retries.load(Ordering::Relaxed),
            oldest: None,
            spooled: 0,
            syncs: 0,
        }
    }
}

/// The part of `data` that a read of `offset` and `limit` asks for.
pub fn slice_range(data: &Bytes, offset: u64, limit: Option<u64>) -> Bytes {
    let len = data.len() as u64;
    let start = offset.min(len);
    let end = limit.map_or(len, |l| start.saturating_add(l).min(len));
    data.slice(start as usize..end as usize)
}
