//! The CAS as the services see it: a blob store plus the rules every entry point shares. Bytes are
//! verified against their digest here before any tier sees them; the empty blob always exists.

use std::sync::Arc;

use bytes::Bytes;
use strata_backends::{Blob, BlobStore, BlobWriter, Digest, StoreError};

#[derive(Clone)]
pub struct Cas {
    store: Arc<dyn BlobStore>,
}

impl Cas {
    pub fn new(store: Arc<dyn BlobStore>) -> Self {
        Cas { store }
    }

    /// Presence of each digest (the empty blob is always present).
    pub async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>, StoreError> {
        let asked: Vec<Digest> = digests.iter().filter(|d| !d.is_empty_blob()).copied().collect();
        let mut answers = self.store.contains(&asked).await?.into_iter();
        Ok(digests.iter().map(|d| d.is_empty_blob() || answers.next().unwrap_or(false)).collect())
    }

    pub async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>, StoreError> {
        if digest.is_empty_blob() {
            return Ok(Some(Blob::Bytes(Bytes::new())));
        }
        self.store.read(digest, offset, limit).await
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
        if digest.is_empty_blob() {
            return Ok(());
        }
        self.store.write(digest, data).await
    }

    /// A streaming write; the caller verifies the bytes (ByteStream hashes as they arrive).
    pub async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>, StoreError> {
        self.store.writer(digest).await
    }
}
