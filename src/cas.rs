//! The CAS as the services see it: a blob store behind the rules every entry point shares. Whole
//! blobs are verified against their digest before any tier sees them, streamed ones as they pass
//! (`VerifyingWriter`); the empty blob always exists (`EmptyBlob`).

use std::sync::Arc;

use bytes::Bytes;
use strata_backends::{Blob, BlobStore, Digest, EmptyBlob, StoreError, VerifyingWriter};

#[derive(Clone)]
pub struct Cas {
    store: Arc<dyn BlobStore>,
}

impl Cas {
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        Cas { store: Arc::new(EmptyBlob::new(store)) }
    }

    /// Presence of each digest.
    pub async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        self.store.contains(digests).await
    }

    pub async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>, StoreError> {
        self.store.read(digest, offset, limit).await
    }

    /// The blob from `offset` as zstd, where a tier stores it compressed (`None` otherwise).
    pub async fn read_zstd(&self, digest: &Digest, offset: u64) -> Result<Option<Blob>, StoreError> {
        self.store.read_zstd(digest, offset).await
    }

    /// A whole blob, for small ones (batch reads, Directory and Tree messages).
    pub async fn read_whole(&self, digest: &Digest) -> Result<Option<Bytes>, StoreError> {
        match self.read(digest, 0, None).await? {
            Some(blob) => Ok(Some(blob.into_bytes().await?)),
            None => Ok(None),
        }
    }

    /// Verifies `data` against `digest` and stores it.
    pub async fn put(&self, digest: &Digest, data: Bytes) -> Result<(), StoreError> {
        digest.verify(&data)?;
        self.store.write(digest, data).await
    }

    /// Verifies each blob against its digest and stores those that match, as one batch: a result
    /// each, in order.
    pub async fn put_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<(), StoreError>> {
        let mut outcomes: Vec<Result<(), StoreError>> = Vec::with_capacity(blobs.len());
        let (mut verified, mut placed) = (Vec::new(), Vec::new());
        for (digest, data) in blobs {
            match digest.verify(&data) {
                Ok(()) => {
                    placed.push(outcomes.len());
                    outcomes.push(Err(StoreError::unanswered()));
                    verified.push((digest, data));
                }
                Err(e) => outcomes.push(Err(e.into())),
            }
        }
        for (i, stored) in placed.into_iter().zip(self.store.write_many(verified).await) {
            outcomes[i] = stored;
        }
        outcomes
    }

    /// A streaming write that hashes as it goes and commits only a blob that matches `digest`.
    pub async fn writer(&self, digest: &Digest) -> Result<VerifyingWriter, StoreError> {
        Ok(VerifyingWriter::new(*digest, self.store.writer(digest).await?))
    }
}
