//! Test doubles for the layers' unit tests (named as such: they stand in for a misbehaving or slow
//! upstream, which a real tier cannot be made to be on demand).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::digest::Digest;
use crate::error::Result;
use crate::store::{Blob, BlobStore, BlobWriter, BufferedWriter, StoreStats};

/// Collects a blob's stream, keeping the error a reader would see.
pub async fn collect(blob: Blob) -> Result<Bytes> {
    let mut chunks = blob.into_stream();
    let mut out = Vec::new();
    while let Some(chunk) = chunks.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out.into())
}

/// An upstream that holds one blob under `digest` whose bytes are whatever it was given.
pub struct Forged {
    digest: Digest,
    bytes: Bytes,
}

impl Forged {
    pub fn new(digest: Digest, bytes: Bytes) -> Self {
        Forged { digest, bytes }
    }
}

#[async_trait]
impl BlobStore for Forged {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        Ok(digests.iter().map(|d| *d == self.digest).collect())
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        if *digest != self.digest {
            return Ok(None);
        }
        // Served in small chunks, as a network tier would.
        let part = crate::store::slice_range(&self.bytes, offset, limit);
        let chunks: Vec<Result<Bytes>> = part.chunks(1000).map(|c| Ok(Bytes::copy_from_slice(c))).collect();
        Ok(Some(Blob::Stream(Box::pin(futures::stream::iter(chunks)))))
    }

    async fn write(&self, _: &Digest, _: Bytes) -> Result<()> {
        Ok(())
    }

    async fn writer(&self, _: &Digest) -> Result<Box<dyn BlobWriter>> {
        Ok(Box::new(BufferedWriter::new(|_| async { Ok(()) })))
    }

    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

/// Wraps a store, counting the calls that reach it and delaying reads, as a slow upstream would.
pub struct Counting {
    pub inner: Arc<dyn BlobStore>,
    pub contains_calls: AtomicUsize,
    pub digests_asked: AtomicUsize,
    pub reads: AtomicUsize,
    pub read_delay: Duration,
}

impl Counting {
    pub fn new(inner: Arc<dyn BlobStore>, read_delay: Duration) -> Self {
        Counting { inner, contains_calls: 0.into(), digests_asked: 0.into(), reads: 0.into(), read_delay }
    }
}

#[async_trait]
impl BlobStore for Counting {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        self.contains_calls.fetch_add(1, Ordering::SeqCst);
        self.digests_asked.fetch_add(digests.len(), Ordering::SeqCst);
        self.inner.contains(digests).await
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        self.reads.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.read_delay).await;
        self.inner.read(digest, offset, limit).await
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        self.inner.write(digest, data).await
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        self.inner.writer(digest).await
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

/// An upstream that is down: every call fails with UNAVAILABLE (`DOWN`). As `MUTE` it also breaks
/// the batch contract, its `write_many` answering nothing: a test double for a buggy tier.
pub struct Down {
    answers_batches: bool,
}

pub const DOWN: Down = Down { answers_batches: true };
pub const MUTE: Down = Down { answers_batches: false };

impl Down {
    fn error() -> crate::error::StoreError {
        crate::error::StoreError::Unavailable { upstream: "down".into(), message: "connection refused".into() }
    }
}

#[async_trait]
impl BlobStore for Down {
    async fn contains(&self, _: &[Digest]) -> Result<Vec<bool>> {
        Err(Down::error())
    }

    async fn read(&self, _: &Digest, _: u64, _: Option<u64>) -> Result<Option<Blob>> {
        Err(Down::error())
    }

    async fn write(&self, _: &Digest, _: Bytes) -> Result<()> {
        Err(Down::error())
    }

    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        match self.answers_batches {
            true => blobs.iter().map(|_| Err(Down::error())).collect(),
            false => Vec::new(),
        }
    }

    async fn writer(&self, _: &Digest) -> Result<Box<dyn BlobWriter>> {
        Err(Down::error())
    }

    fn stats(&self) -> StoreStats {
        StoreStats::default()
    }
}

#[async_trait]
impl crate::store::ActionCacheStore for Down {
    async fn get(&self, _: &Digest) -> Result<Option<Bytes>> {
        Err(Down::error())
    }

    async fn put(&self, _: &Digest, _: Bytes) -> Result<()> {
        Err(Down::error())
    }
}
