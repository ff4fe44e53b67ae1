//! The memory tier: blobs held in a CLOCK cache bounded in bytes (`clock.rs`). In front of a durable
//! tier a new entry is on probation, so that one large scan does not flush the hot set; as the last
//! tier of a stack it must keep what it is given (a client reads what it just wrote), so a new entry
//! starts as used. Meant for small blobs; the tier stack's size classes decide what reaches it. The
//! same type serves as an action-cache tier.

mod clock;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::{Digest, Key};
use crate::error::{Result, StoreError};
use crate::store::{slice_range, ActionCacheStore, Blob, BlobStore, BlobWriter, BufferedWriter, Counters, StoreStats};
use clock::Clock;
#[cfg(test)]
use clock::ENTRY_OVERHEAD;

/// How a new entry starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// On probation: evicted when the hand first reaches it unless it was read since; for a tier
    /// in front of a durable one.
    Probation,
    /// As used: it outlives the hand's first pass; for the last tier of a stack.
    Always,
}

#[derive(Clone)]
pub struct MemoryStore {
    clock: Arc<Clock>,
    counters: Arc<Counters>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64, admission: Admission) -> Self {
        let clock = Arc::new(Clock::new(max_bytes, admission == Admission::Always));
        MemoryStore { clock, counters: Arc::new(Counters::default()) }
    }

    /// Looks a blob up; an entry whose length disagrees with the digest is not the blob asked for.
    fn lookup(&self, digest: &Digest) -> Option<Bytes> {
        let found = self.clock.get(&digest.key()).filter(|b| b.len() as u64 == digest.size);
        self.counters.hit(found.is_some());
        found
    }

    /// Refuses what could never be held: storing it would evict everything and then itself.
    fn check_fits(&self, digest: &Digest, len: u64) -> Result<()> {
        if self.clock.fits(len) {
            return Ok(());
        }
        Err(StoreError::TooLarge { digest: *digest, store: "the memory tier".into(), limit: self.clock.largest_value() })
    }

    fn insert(&self, key: Key, data: Bytes) {
        self.counters.written(data.len() as u64);
        let evicted = self.clock.insert(key, data);
        self.counters.evictions.fetch_add(evicted, Relaxed);
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let found = self.clock.contains(digests);
        let hits = found.iter().filter(|f| **f).count() as u64;
        self.counters.hits.fetch_add(hits, Relaxed);
        self.counters.misses.fetch_add(found.len() as u64 - hits, Relaxed);
        Ok(found)
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        Ok(self.lookup(digest).map(|data| Blob::Bytes(slice_range(&data, offset, limit))))
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        self.check_fits(digest, data.len() as u64)?;
        self.insert(digest.key(), data);
        Ok(())
    }

    /// Inserts never wait, so a batch is a loop, not a thousand futures.
    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        blobs
            .into_iter()
            .map(|(digest, data)| {
                self.check_fits(&digest, data.len() as u64)?;
                self.insert(digest.key(), data);
                Ok(())
            })
            .collect()
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        self.check_fits(digest, digest.size)?;
        let this = self.clone();
        let key = digest.key();
        Ok(Box::new(BufferedWriter::new(digest.size, move |data| async move {
            this.insert(key, data);
            Ok(())
        })))
    }

    fn stats(&self) -> StoreStats {
        let held = self.clock.held();
        self.counters.snapshot(held.entries, held.bytes)
    }

    async fn evict(&self, digest: &Digest) -> Result<bool> {
        Ok(self.clock.remove(&digest.key()))
    }
}

#[async_trait]
impl ActionCacheStore for MemoryStore {
    async fn get(&self, action: &Digest) -> Result<Option<Bytes>> {
        let found = self.clock.get(&action.key());
        self.counters.hit(found.is_some());
        Ok(found)
    }

    async fn put(&self, action: &Digest, value: Bytes) -> Result<()> {
        self.check_fits(action, value.len() as u64)?;
        self.insert(action.key(), value);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[tokio::test]
    async fn stores_reads_and_bounds_bytes() {
        let store = MemoryStore::new(64 * 1024, Admission::Probation);
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
        assert!(store.stats().bytes <= 64 * 1024);
        assert!(store.stats().evictions > 0);
        let written = (0..200u32).map(|i| DigestFunction::Sha256.digest_of(&vec![i as u8; 1024])).chain([d]);
        let held = written.filter(|d| store.clock.get(&d.key()).is_some()).count() as u64;
        assert_eq!(held, store.stats().blobs, "the counts are of what is held");
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
            assert_eq!(store.contains(&[d]).await.unwrap(), vec![true], "blob {i} was not kept");
        }
    }

    #[tokio::test]
    async fn refuses_what_it_could_never_hold_and_keeps_what_it_has() {
        let store = MemoryStore::new(4096 + ENTRY_OVERHEAD, Admission::Always);
        let small = Bytes::from_static(b"kept");
        let ds = DigestFunction::Sha256.digest_of(&small);
        store.write(&ds, small).await.unwrap();
        let big = Bytes::from(vec![1u8; 4097]);
        let db = DigestFunction::Sha256.digest_of(&big);
        let refused = |e: StoreError| matches!(e, StoreError::TooLarge { limit: 4096, .. });
        assert!(refused(store.write(&db, big.clone()).await.unwrap_err()));
        assert!(refused(store.writer(&db).await.err().unwrap()));
        assert!(refused(ActionCacheStore::put(&store, &db, big).await.unwrap_err()));
        assert_eq!(store.contains(&[ds, db]).await.unwrap(), vec![true, false]);
        assert_eq!(store.stats().evictions, 0);
        let fits = Bytes::from(vec![2u8; 4096]);
        store.write(&DigestFunction::Sha256.digest_of(&fits), fits).await.unwrap();
        assert_eq!(store.stats().blobs, 1, "the largest blob that fits evicts the rest");
    }
}
