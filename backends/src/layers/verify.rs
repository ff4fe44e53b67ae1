//! Verification, the one place where bytes are checked against their digest on the way through a
//! store: `Verified` wraps a tier that is not trusted (remote, S3) and hashes what it returns, and
//! `VerifyingWriter` hashes a streamed upload and refuses to commit bytes that do not match. Every
//! entry point (ByteStream, batch uploads, fills from slower tiers, bots' outputs) goes through one
//! of the two.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;

use crate::digest::{Digest, DigestError, Hasher};
use crate::error::{Result, StoreError};
use crate::store::{Blob, BlobStore, BlobWriter, StoreStats};

/// A store whose reads are hashed before they are trusted. A whole read ends in
/// `StoreError::Corrupt` instead of its last bytes when the blob does not match; a ranged read reads
/// the whole blob (a range cannot be checked on its own) and serves the range once the rest is checked.
pub struct Verified {
    inner: Arc<dyn BlobStore>,
    name: String,
}

impl Verified {
    pub fn new(inner: Arc<dyn BlobStore>, name: impl Into<String>) -> Self {
        Verified { inner, name: name.into() }
    }
}

#[async_trait]
impl BlobStore for Verified {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        self.inner.contains(digests).await
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        let Some(blob) = self.inner.read(digest, 0, None).await? else { return Ok(None) };
        let whole = verified(blob, *digest, self.name.clone());
        if offset == 0 && limit.is_none_or(|l| l >= digest.size) {
            return Ok(Some(whole));
        }
        let len = limit.map_or(digest.size - offset, |l| l.min(digest.size - offset));
        Ok(Some(range_of(whole, offset, len)))
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        self.inner.write(digest, data).await
    }

    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        self.inner.write_many(blobs).await
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        self.inner.writer(digest).await
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

/// Passes a blob through, hashing it; a blob that does not match its digest ends in an error
/// instead of its last bytes, so no reader accepts it.
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
                None => match hasher.take()?.verify(&digest, received) {
                    Ok(()) => None,
                    Err(e) => {
                        let corrupt = StoreError::Corrupt { digest, tier, reason: e.to_string() };
                        Some((Err(corrupt), (chunks, None, received)))
                    }
                },
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

/// A streaming write that hashes its bytes as they pass and commits only a blob that matches its
/// digest. More bytes than the digest declares fail at once, before they reach the store.
pub struct VerifyingWriter {
    digest: Digest,
    hasher: Hasher,
    received: u64,
    inner: Box<dyn BlobWriter>,
}

impl VerifyingWriter {
    pub fn new(digest: Digest, inner: Box<dyn BlobWriter>) -> Self {
        VerifyingWriter { digest, hasher: digest.function.hasher(), received: 0, inner }
    }

    /// Bytes accepted so far.
    pub fn received(&self) -> u64 {
        self.received
    }
}

#[async_trait]
impl BlobWriter for VerifyingWriter {
    async fn append(&mut self, chunk: Bytes) -> Result<()> {
        let received = self.received + chunk.len() as u64;
        if received > self.digest.size {
            return Err(DigestError::SizeMismatch { digest: self.digest, received }.into());
        }
        self.hasher.update(&chunk);
        self.received = received;
        self.inner.append(chunk).await
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        let VerifyingWriter { digest, hasher, received, inner } = *self;
        hasher.verify(&digest, received)?;
        inner.commit().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::layers::testing::{collect, Forged};
    use crate::memory::MemoryStore;

    fn blob(n: usize) -> (Digest, Bytes) {
        let data: Bytes = (0..n).map(|i| (i * 7) as u8).collect::<Vec<u8>>().into();
        (DigestFunction::Sha256.digest_of(&data), data)
    }

    #[tokio::test]
    async fn intact_blobs_and_ranges_pass() {
        let (digest, data) = blob(10_000);
        let memory = Arc::new(MemoryStore::new(1 << 20));
        memory.write(&digest, data.clone()).await.unwrap();
        let store = Verified::new(memory, "test");
        assert_eq!(collect(store.read(&digest, 0, None).await.unwrap().unwrap()).await.unwrap(), data);
        let range = collect(store.read(&digest, 100, Some(50)).await.unwrap().unwrap()).await.unwrap();
        assert_eq!(range, data.slice(100..150));
        assert!(store.read(&blob(3).0, 0, None).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn a_forged_blob_ends_in_corrupt_whole_or_ranged() {
        let (digest, data) = blob(10_000);
        let mut forged = data.to_vec();
        forged[9_999] ^= 1;
        let store = Verified::new(Arc::new(Forged::new(digest, forged.into())), "upstream");
        for (offset, limit) in [(0, None), (0, Some(10)), (5_000, None)] {
            let read = collect(store.read(&digest, offset, limit).await.unwrap().unwrap()).await;
            assert!(matches!(read, Err(StoreError::Corrupt { ref tier, .. }) if tier == "upstream"), "{offset} {limit:?}: {read:?}");
        }
    }

    #[tokio::test]
    async fn the_writer_commits_only_matching_bytes() {
        let (digest, data) = blob(3_000);
        let memory = Arc::new(MemoryStore::new(1 << 20));

        let mut good = Box::new(VerifyingWriter::new(digest, memory.writer(&digest).await.unwrap()));
        good.append(data.slice(..1_000)).await.unwrap();
        good.append(data.slice(1_000..)).await.unwrap();
        assert_eq!(good.received(), 3_000);
        good.commit().await.unwrap();
        assert_eq!(memory.contains(&[digest]).await.unwrap(), vec![true]);

        let other_data: Bytes = vec![1u8; 2_000].into();
        let other = DigestFunction::Sha256.digest_of(&other_data);
        let mut wrong = Box::new(VerifyingWriter::new(other, memory.writer(&other).await.unwrap()));
        wrong.append(data.slice(..2_000)).await.unwrap();
        assert!(matches!(wrong.commit().await, Err(StoreError::InvalidBlob(DigestError::HashMismatch { .. }))));
        let mut short = Box::new(VerifyingWriter::new(other, memory.writer(&other).await.unwrap()));
        short.append(other_data.slice(..10)).await.unwrap();
        assert!(matches!(short.commit().await, Err(StoreError::InvalidBlob(DigestError::SizeMismatch { .. }))));
        let mut long = Box::new(VerifyingWriter::new(other, memory.writer(&other).await.unwrap()));
        assert!(long.append(data.clone()).await.is_err());
        assert_eq!(memory.contains(&[other]).await.unwrap(), vec![false]);
    }
}
