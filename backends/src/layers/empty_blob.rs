//! The empty blob exists in every CAS without being stored (REAPI: clients may rely on it and
//! never upload it), so no tier is asked about it and a write of it stores nothing.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::{Blob, BlobStore, BlobWriter, BufferedWriter, StoreStats};

pub struct EmptyBlob {
    inner: Arc<dyn BlobStore>,
}

impl EmptyBlob {
    pub fn new(inner: Arc<dyn BlobStore>) -> Self {
        EmptyBlob { inner }
    }
}

#[async_trait]
impl BlobStore for EmptyBlob {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        if !digests.iter().any(Digest::is_empty_blob) {
            return self.inner.contains(digests).await;
        }
        let asked: Vec<Digest> = digests.iter().filter(|d| !d.is_empty_blob()).copied().collect();
        let mut answers = self.inner.contains(&asked).await?.into_iter();
        Ok(digests.iter().map(|d| d.is_empty_blob() || answers.next().unwrap_or(false)).collect())
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        if digest.is_empty_blob() {
            return Ok(Some(Blob::Bytes(Bytes::new())));
        }
        self.inner.read(digest, offset, limit).await
    }

    async fn read_zstd(&self, digest: &Digest, offset: u64) -> Result<Option<Blob>> {
        match digest.is_empty_blob() {
            true => Ok(None),
            false => self.inner.read_zstd(digest, offset).await,
        }
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        if digest.is_empty_blob() {
            return Ok(());
        }
        self.inner.write(digest, data).await
    }

    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        if !blobs.iter().any(|(d, _)| d.is_empty_blob()) {
            return self.inner.write_many(blobs).await;
        }
        let empty: Vec<bool> = blobs.iter().map(|(d, _)| d.is_empty_blob()).collect();
        let stored = self.inner.write_many(blobs.into_iter().filter(|(d, _)| !d.is_empty_blob()).collect()).await;
        let mut stored = stored.into_iter();
        empty.into_iter().map(|e| if e { Ok(()) } else { stored.next().unwrap_or_else(|| Err(StoreError::unanswered())) }).collect()
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        if digest.is_empty_blob() {
            return Ok(Box::new(BufferedWriter::new(|_| async { Ok(()) })));
        }
        self.inner.writer(digest).await
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::time::Duration;

    use super::*;
    use crate::digest::DigestFunction;
    use crate::layers::testing::Counting;
    use crate::memory::MemoryStore;

    #[tokio::test]
    async fn the_empty_blob_is_present_without_asking_any_tier() {
        let counting = Arc::new(Counting::new(Arc::new(MemoryStore::new(1 << 20)), Duration::ZERO));
        let store = EmptyBlob::new(counting.clone());
        let (sha, blake) = (DigestFunction::Sha256.empty(), DigestFunction::Blake3.empty());
        let other = DigestFunction::Sha256.digest_of(b"x");
        assert_eq!(store.contains(&[sha, other, blake]).await.unwrap(), vec![true, false, true]);
        assert_eq!(counting.digests_asked.load(Ordering::SeqCst), 1, "only the non-empty digest is asked");
        let read = store.read(&blake, 0, None).await.unwrap().unwrap().into_bytes().await.unwrap();
        assert!(read.is_empty());
        assert_eq!(counting.reads.load(Ordering::SeqCst), 0);
        store.write(&sha, Bytes::new()).await.unwrap();
        store.writer(&sha).await.unwrap().commit().await.unwrap();
        assert_eq!(store.stats().blobs, 0, "nothing is stored for it");
        // In a batch, the empty blobs are answered in their places and only the others stored.
        let (x, y) = (DigestFunction::Sha256.digest_of(b"x"), DigestFunction::Sha256.digest_of(b"yy"));
        let batch = vec![(sha, Bytes::new()), (x, Bytes::from_static(b"x")), (blake, Bytes::new()), (y, Bytes::from_static(b"yy"))];
        let outcomes = store.write_many(batch).await;
        assert_eq!(outcomes.iter().map(Result::is_ok).collect::<Vec<_>>(), vec![true; 4]);
        assert_eq!(store.stats().blobs, 2);
        assert_eq!(counting.contains(&[x, y, sha]).await.unwrap(), vec![true, true, false]);
        // A store that answers a batch short never acknowledges the blobs it said nothing of.
        let short = EmptyBlob::new(Arc::new(crate::layers::testing::MUTE)).write_many(vec![(sha, Bytes::new()), (x, Bytes::from_static(b"x"))]).await;
        assert!(short[0].is_ok() && matches!(short[1], Err(StoreError::Internal(_))), "{short:?}");
        // A 0-byte digest with another hash is an ordinary (missing) blob.
        let zero = Digest { size: 0, ..other };
        assert_eq!(store.contains(&[zero]).await.unwrap(), vec![false]);
    }
}
