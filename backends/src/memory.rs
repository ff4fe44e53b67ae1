//! The memory tier: a `moka` cache weighted by blob size and bounded in bytes. In front of a durable
//! tier it uses TinyLFU admission, so that one large scan does not flush the hot set; as the last tier
//! of a stack it must keep what it is given (a client reads what it just wrote), so it evicts the
//! least recently used entries instead. Meant for small blobs; the tier stack's size classes decide
//! what reaches it. The same type serves as an action-cache tier.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use moka::future::Cache;
use moka::policy::EvictionPolicy;

use crate::digest::{Digest, Key};
use crate::error::Result;
use crate::store::{slice_range, ActionCacheStore, Blob, BlobStore, BlobWriter, BufferedWriter, Counters, StoreStats};

/// What an entry costs beyond its bytes (key, `Bytes` header, cache bookkeeping), so that a flood of
/// tiny blobs cannot exceed the budget.
const ENTRY_OVERHEAD: u64 = 96;

/// Whether a new entry must win its place against the entries it would evict.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// TinyLFU: admit only entries likely to be used more than what they would evict.
    Frequency,
    /// Admit everything, evict the least recently used.
    Always,
}

#[derive(Clone)]
pub struct MemoryStore {
    cache: Cache<Key, Bytes>,
    counters: Arc<Counters>,
    /// Entries and weighted bytes held, kept here because moka's own counts lag until its next
    /// maintenance (which an idle cache never runs).
    held: Arc<Held>,
}

#[derive(Default, Debug)]
struct Held {
    entries: std::sync::atomic::AtomicI64,
    bytes: std::sync::atomic::AtomicI64,
}

impl Held {
    fn add(&self, value: &Bytes, sign: i64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.entries.fetch_add(sign, Relaxed);
        self.bytes.fetch_add(sign * weight(value) as i64, Relaxed);
    }
}

fn weight(value: &Bytes) -> u64 {
    value.len() as u64 + ENTRY_OVERHEAD
}

impl MemoryStore {
    pub fn new(max_bytes: u64, admission: Admission) -> Self {
        let counters = Arc::new(Counters::default());
        let held = Arc::new(Held::default());
        let (evictions, removed) = (counters.clone(), held.clone());
        let cache = Cache::builder()
            .max_capacity(max_bytes)
            .eviction_policy(match admission {
                Admission::Frequency => EvictionPolicy::tiny_lfu(),
                Admission::Always => EvictionPolicy::lru(),
            })
            .weigher(|_key: &Key, value: &Bytes| u32::try_from(weight(value)).unwrap_or(u32::MAX))
            // Called for every entry that leaves: replaced, removed, evicted, or refused admission.
            .eviction_listener(move |_key, value, cause| {
                removed.add(&value, -1);
                if cause.was_evicted() {
                    evictions.evictions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
            .build();
        MemoryStore { cache, counters, held }
    }

    /// Looks a blob up; an entry whose length disagrees with the digest is not the blob asked for.
    async fn lookup(&self, digest: &Digest) -> Option<Bytes> {
        let found = self.cache.get(&digest.key()).await.filter(|b| b.len() as u64 == digest.size);
        self.counters.hit(found.is_some());
        found
    }

    async fn insert(&self, key: Key, data: Bytes) {
        self.counters.written(data.len() as u64);
        self.held.add(&data, 1);
        self.cache.insert(key, data).await;
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let mut found = Vec::with_capacity(digests.len());
        for digest in digests {
            found.push(self.lookup(digest).await.is_some());
        }
        Ok(found)
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        Ok(self.lookup(digest).await.map(|data| Blob::Bytes(slice_range(&data, offset, limit))))
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        self.insert(digest.key(), data).await;
        Ok(())
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        let this = self.clone();
        let key = digest.key();
        Ok(Box::new(BufferedWriter::new(digest.size, move |data| async move {
            this.insert(key, data).await;
            Ok(())
        })))
    }

    fn stats(&self) -> StoreStats {
        use std::sync::atomic::Ordering::Relaxed;
        let (entries, bytes) = (self.held.entries.load(Relaxed).max(0), self.held.bytes.load(Relaxed).max(0));
        self.counters.snapshot(entries as u64, bytes as u64)
    }

    async fn evict(&self, digest: &Digest) -> Result<bool> {
        Ok(self.cache.remove(&digest.key()).await.is_some())
    }
}

#[async_trait]
impl ActionCacheStore for MemoryStore {
    async fn get(&self, action: &Digest) -> Result<Option<Bytes>> {
        let found = self.cache.get(&action.key()).await;
        self.counters.hit(found.is_some());
        Ok(found)
    }

    async fn put(&self, action: &Digest, value: Bytes) -> Result<()> {
        self.insert(action.key(), value).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[tokio::test]
    async fn stores_reads_and_bounds_bytes() {
        let store = MemoryStore::new(64 * 1024, Admission::Frequency);
        let d = DigestFunction::Sha256.digest_of(b"abc");
        store.write(&d, Bytes::from_static(b"abc")).await.unwrap();
        assert_eq!(store.contains(&[d]).await.unwrap(), vec![true]);
        let got = store.read(&d, 1, Some(1)).await.unwrap().unwrap().into_bytes().await.unwrap();
        assert_eq!(&got[..], b"b");
        // The same hash with another size is another blob.
        let other = Digest { size: 4, ..d };
        assert_eq!(store.contains(&[other]).await.unwrap(), vec![false]);
        for i in 0..200u32 {
            let data = vec![i as u8; 1024];
            let d = DigestFunction::Sha256.digest_of(&data);
            store.write(&d, Bytes::from(data)).await.unwrap();
        }
        store.cache.run_pending_tasks().await;
        assert!(store.stats().bytes <= 64 * 1024);
        assert_eq!(store.stats().blobs, store.cache.entry_count(), "own counts agree with moka's once it has caught up");
    }

    #[tokio::test]
    async fn stats_count_what_is_held_at_once() {
        let store = MemoryStore::new(1 << 20, Admission::Always);
        let (a, b) = (Bytes::from_static(b"aaaa"), Bytes::from_static(b"bb"));
        let (da, db) = (DigestFunction::Sha256.digest_of(&a), DigestFunction::Sha256.digest_of(&b));
        store.write(&da, a.clone()).await.unwrap();
        store.write(&db, b.clone()).await.unwrap();
        store.write(&da, a).await.unwrap();
        let s = store.stats();
        assert_eq!((s.blobs, s.bytes, s.bytes_written), (2, 6 + 2 * ENTRY_OVERHEAD, 10));
        assert!(store.evict(&db).await.unwrap());
        assert!(!store.evict(&db).await.unwrap());
        assert_eq!((store.stats().blobs, store.stats().bytes), (1, 4 + ENTRY_OVERHEAD));
    }

    #[tokio::test]
    async fn as_the_last_tier_it_keeps_what_was_just_written() {
        let store = MemoryStore::new(64 * 1024, Admission::Always);
        for i in 0..500u32 {
            let data = vec![i as u8; 1000];
            let d = DigestFunction::Sha256.digest_of(&[&i.to_le_bytes()[..], &data].concat());
            store.write(&d, Bytes::from([&i.to_le_bytes()[..], &data].concat())).await.unwrap();
            store.cache.run_pending_tasks().await;
            assert_eq!(store.contains(&[d]).await.unwrap(), vec![true], "blob {i} was not kept");
        }
    }
}
