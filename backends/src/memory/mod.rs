//! The memory tier: blobs held in blocks the tier allocates once and reuses, evicted a block at a
//! time, oldest first, and bounded in bytes (`blocks.rs`). A blob read as its block ages is copied
//! forward, so that a scan of new blobs does not flush what clients keep asking for; what was just
//! written is the last to go. Meant for small blobs; the tier stack's size classes decide what
//! reaches it. The same type serves as an action-cache tier.

mod blocks;

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::{Digest, Key};
use crate::error::{Result, StoreError};
use crate::store::{slice_range, ActionCacheStore, Blob, BlobStore, BlobWriter, Counters, StoreStats};
use blocks::{Blocks, Region};
#[cfg(test)]
use blocks::ENTRY_OVERHEAD;

#[derive(Clone)]
pub struct MemoryStore {
    blocks: Arc<Blocks>,
    counters: Arc<Counters>,
}

impl MemoryStore {
    pub fn new(max_bytes: u64) -> Self {
        MemoryStore { blocks: Arc::new(Blocks::new(max_bytes)), counters: Arc::new(Counters::default()) }
    }

    /// Looks a blob up; an entry whose length disagrees with the digest is not the blob asked for.
    fn lookup(&self, digest: &Digest) -> Option<Bytes> {
        let found = self.blocks.get(&digest.key()).filter(|b| b.len() as u64 == digest.size);
        self.counters.hit(found.is_some());
        found
    }

    /// Refuses what could never be held: storing it would evict everything and then itself.
    fn check_fits(&self, digest: &Digest, len: u64) -> Result<()> {
        if self.blocks.fits(len) {
            return Ok(());
        }
        Err(StoreError::TooLarge { digest: *digest, store: "the memory tier".into(), limit: self.blocks.largest_value() })
    }

    fn insert(&self, key: Key, pieces: &[Bytes]) {
        self.counters.written(pieces.iter().map(|p| p.len() as u64).sum());
        self.blocks.insert(key, pieces);
    }
}

/// An upload takes its room in a block once this share of it has arrived: before, its pieces are
/// kept as they arrived (views of the receive buffers, not copies). So a client that claims a size
/// and sends little moves the tier's eviction by at most this many times what it sent, and most of
/// a large blob is copied into its block while it is still in the processor's cache, just hashed.
const RESERVE_AFTER_SHARE: u64 = 64;

struct BlockWriter {
    store: MemoryStore,
    key: Key,
    size: u64,
    received: u64,
    pieces: Vec<Bytes>,
    region: Option<Region>,
}

#[async_trait]
impl BlobWriter for BlockWriter {
    async fn append(&mut self, chunk: Bytes) -> Result<()> {
        self.received += chunk.len() as u64;
        if let Some(region) = self.region.as_mut() {
            region.extend(&chunk);
            return Ok(());
        }
        if !chunk.is_empty() {
            self.pieces.push(chunk);
        }
        if self.received.saturating_mul(RESERVE_AFTER_SHARE) >= self.size {
            let mut region = self.store.blocks.reserve(self.size as usize);
            for piece in self.pieces.drain(..) {
                region.extend(&piece);
            }
            self.region = Some(region);
        }
        Ok(())
    }

    async fn commit(self: Box<Self>) -> Result<()> {
        self.store.counters.written(self.received);
        match self.region {
            Some(region) => self.store.blocks.commit(self.key, region),
            None => self.store.blocks.insert(self.key, &self.pieces),
        }
        Ok(())
    }
}

#[async_trait]
impl BlobStore for MemoryStore {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let found = self.blocks.contains(digests);
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
        self.insert(digest.key(), &[data]);
        Ok(())
    }

    /// Inserts never wait, so a batch is a loop, not a thousand futures.
    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        blobs
            .into_iter()
            .map(|(digest, data)| {
                self.check_fits(&digest, data.len() as u64)?;
                self.insert(digest.key(), &[data]);
                Ok(())
            })
            .collect()
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        self.check_fits(digest, digest.size)?;
        let (store, key, size) = (self.clone(), digest.key(), digest.size);
        Ok(Box::new(BlockWriter { store, key, size, received: 0, pieces: Vec::new(), region: None }))
    }

    fn stats(&self) -> StoreStats {
        let held = self.blocks.held();
        let mut stats = self.counters.snapshot(held.entries, held.bytes);
        stats.evictions = self.blocks.evictions();
        stats
    }

    async fn evict(&self, digest: &Digest) -> Result<bool> {
        Ok(self.blocks.remove(&digest.key()))
    }
}

#[async_trait]
impl ActionCacheStore for MemoryStore {
    async fn get(&self, action: &Digest) -> Result<Option<Bytes>> {
        let found = self.blocks.get(&action.key());
        self.counters.hit(found.is_some());
        Ok(found)
    }

    async fn put(&self, action: &Digest, value: Bytes) -> Result<()> {
        self.check_fits(action, value.len() as u64)?;
        self.insert(action.key(), &[value]);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[tokio::test]
    async fn stores_reads_and_bounds_bytes() {
        let store = MemoryStore::new(64 * 1024);
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
        let written: Vec<Digest> = (0..200u32).map(|i| DigestFunction::Sha256.digest_of(&vec![i as u8; 1024])).chain([d]).collect();
        let blobs = store.stats().blobs;
        let held = store.contains(&written).await.unwrap().into_iter().filter(|h| *h).count() as u64;
        assert_eq!(held, blobs, "the counts are of what is held");
    }

    #[tokio::test]
    async fn stats_count_what_is_held_at_once() {
        let store = MemoryStore::new(1 << 20);
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
        let store = MemoryStore::new(64 * 1024);
        for i in 0..500u32 {
            let data = vec![i as u8; 1000];
            let d = DigestFunction::Sha256.digest_of(&[&i.to_le_bytes()[..], &data].concat());
            store.write(&d, Bytes::from([&i.to_le_bytes()[..], &data].concat())).await.unwrap();
            assert_eq!(store.contains(&[d]).await.unwrap(), vec![true], "blob {i} was not kept");
        }
    }

    #[tokio::test]
    async fn refuses_what_it_could_never_hold_and_keeps_what_it_has() {
        let store = MemoryStore::new(4096 + ENTRY_OVERHEAD);
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

    #[tokio::test]
    async fn an_upload_takes_room_in_a_block_only_once_a_share_of_it_has_arrived() {
        let store = MemoryStore::new(64 << 20);
        let data = Bytes::from((0..1_000_000u32).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
        let digest = DigestFunction::Sha256.digest_of(&data);
        let mut writer = BlockWriter { store: store.clone(), key: digest.key(), size: digest.size, received: 0, pieces: Vec::new(), region: None };
        let share = data.len() / RESERVE_AFTER_SHARE as usize;
        writer.append(data.slice(..share - 1)).await.unwrap();
        assert!(writer.region.is_none(), "a claimed size alone takes no room");
        // Odd pieces across the point where the room is taken.
        let mut at = share - 1;
        for len in [2, 7_777, 300_001] {
            writer.append(data.slice(at..at + len)).await.unwrap();
            assert!(writer.region.is_some());
            at += len;
        }
        writer.append(data.slice(at..)).await.unwrap();
        Box::new(writer).commit().await.unwrap();
        let got = store.read(&digest, 0, None).await.unwrap().unwrap().into_bytes().await.unwrap();
        assert!(got == data, "stored whole and in order");
        assert_eq!(store.stats().bytes_written, digest.size);
    }
}
