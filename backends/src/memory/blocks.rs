//! The memory tier's map: entries packed into blocks of one size that the tier allocates once and
//! reuses, evicted a whole block at a time, oldest first (as Buildbarn's block-based storage). The
//! memory that evicting small blobs frees is then the very memory a large blob is written into: a
//! general allocator cannot make one large buffer of many freed small ones and takes fresh pages
//! from the kernel, which zeroes each one first (two thirds of the time of large writes into a tier
//! just filled with small blobs, measured). An entry read while its block is among the oldest
//! quarter is copied into the newest block, so what clients keep asking for stays.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::{Bytes, BytesMut};
use hashbrown::HashMap;
use parking_lot::RwLock;

use crate::digest::{Digest, Key};

/// What an entry costs beyond its bytes: its map slot and its key in its block's list, at the
/// table's load. Counted so that a flood of tiny blobs cannot exceed the budget.
pub const ENTRY_OVERHEAD: u64 = 192;

/// Lookups of a batch hold the shared lock for this many keys at a time, so that a writer waits for
/// microseconds, not for a whole FindMissingBlobs of 10,000 digests.
const KEYS_PER_READ_LOCK: usize = 256;

/// An eviction takes this many entries out of the map per hold of the write lock.
const KEYS_PER_EVICTION_LOCK: usize = 512;

/// Blocks per tier: eviction frees a sixteenth of the tier at a time.
const BLOCKS: u64 = 16;
/// Bounds of a block's size: small enough to evict little at a time in a large tier, large enough
/// that blobs of a few MiB share blocks.
const SMALLEST_BLOCK: u64 = 4 << 10;
const LARGEST_BLOCK: u64 = 64 << 20;

pub fn weight(len: usize) -> u64 {
    len as u64 + ENTRY_OVERHEAD
}

pub struct Blocks {
    capacity: u64,
    inner: RwLock<Inner>,
    evictions: AtomicU64,
}

struct Entry {
    value: Bytes,
    /// The block it is in.
    block: u64,
}

struct Block {
    id: u64,
    /// What it takes of the budget: the block size, or the weight of the one entry it holds.
    size: u64,
    /// The part of a shared block's buffer not handed out yet. Through it the buffer is taken back
    /// once nothing else refers to it. None for a block made for one entry too large to share.
    rest: Option<BytesMut>,
    /// The weight of what was put in it.
    filled: u64,
    /// The keys put in it: those whose entry still names this block go with it.
    keys: Vec<Key>,
}

/// An entry being copied forward: from which block, and how many removals had been made when it
/// was read there.
#[derive(Clone, Copy)]
struct Moving {
    from: u64,
    removals: u64,
}

/// Room handed out in a block: filled without the lock, then committed as an entry.
pub struct Region {
    block: u64,
    buf: BytesMut,
}

impl Region {
    /// Appends bytes; past the room reserved they go to memory of their own (a caller that
    /// verifies sizes never sends them).
    pub fn extend(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }
}

struct Inner {
    capacity: u64,
    block_size: u64,
    map: HashMap<Key, Entry>,
    /// Full blocks, oldest first.
    ring: VecDeque<Block>,
    /// The block new entries go into.
    head: Option<Block>,
    /// A buffer taken back from an evicted block, for the next head.
    spare: Option<BytesMut>,
    /// What the blocks (one being evicted too), the head and the spare take: at most the capacity,
    /// but while an eviction is under way (others then take new memory rather than wait for it) or
    /// when there is no full block left to evict.
    allocated: u64,
    /// The weight of the entries held.
    weight: u64,
    next_id: u64,
    /// Entries removed on request since start: a copy forward must not bring one back.
    removals: u64,
    /// A caller is taking the entries of the oldest block out of the map.
    evicting: bool,
    /// Buffers allocated for shared blocks since start: once the ring is full, none but where a
    /// reader still held an evicted block's buffer or an eviction was under way.
    buffers_made: u64,
}

/// What `Blocks::held` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub entries: u64,
    pub bytes: u64,
}

impl Blocks {
    pub fn new(capacity: u64) -> Self {
        // Room for the entries' overhead beside the bytes: four blobs of a power of two fill a block.
        let base = (capacity / BLOCKS).clamp(SMALLEST_BLOCK, LARGEST_BLOCK);
        let block_size = (base + base / 64).min(capacity);
        let inner = Inner {
            capacity,
            block_size,
            map: HashMap::new(),
            ring: VecDeque::new(),
            head: None,
            spare: None,
            allocated: 0,
            weight: 0,
            next_id: 0,
            removals: 0,
            evicting: false,
            buffers_made: 0,
        };
        Blocks { capacity, inner: RwLock::new(inner), evictions: AtomicU64::new(0) }
    }

    /// Whether a value of `len` bytes fits at all.
    pub fn fits(&self, len: u64) -> bool {
        len.saturating_add(ENTRY_OVERHEAD) <= self.capacity
    }

    /// The largest value that fits.
    pub fn largest_value(&self) -> u64 {
        self.capacity.saturating_sub(ENTRY_OVERHEAD)
    }

    pub fn get(&self, key: &Key) -> Option<Bytes> {
        let (value, old) = {
            let inner = self.inner.read();
            let entry = inner.map.get(key)?;
            (entry.value.clone(), inner.moving(entry.block))
        };
        if let Some(moving) = old {
            self.copy_forward(*key, &value, moving);
        }
        Some(value)
    }

    /// Whether each blob is held at its digest's size; those found count as read, as a client told a
    /// blob exists will soon read it.
    pub fn contains(&self, digests: &[Digest]) -> Vec<bool> {
        let mut found = Vec::with_capacity(digests.len());
        let mut old = Vec::new();
        for chunk in digests.chunks(KEYS_PER_READ_LOCK) {
            let inner = self.inner.read();
            found.extend(chunk.iter().map(|digest| match inner.map.get(&digest.key()) {
                Some(entry) if entry.value.len() as u64 == digest.size => {
                    if let Some(moving) = inner.moving(entry.block) {
                        old.push((digest.key(), entry.value.clone(), moving));
                    }
                    true
                }
                _ => false,
            }));
        }
        for (key, value, moving) in old {
            self.copy_forward(key, &value, moving);
        }
        found
    }

    /// Stores the concatenation of `pieces` under `key`, replacing what was there, and evicts the
    /// oldest blocks as the budget requires.
    pub fn insert(&self, key: Key, pieces: &[Bytes]) {
        let mut region = self.reserve(pieces.iter().map(Bytes::len).sum());
        for piece in pieces {
            region.extend(piece);
        }
        self.commit(key, region);
    }

    /// Room for `len` bytes in the newest block, evicting the oldest ones as the budget requires;
    /// filled without the lock, then committed. Dropped instead, it stays unused until its block goes.
    pub fn reserve(&self, len: usize) -> Region {
        loop {
            let mut inner = self.inner.write();
            if let Ok(region) = inner.try_reserve(len) {
                return region;
            }
            let oldest = inner.ring.pop_front();
            inner.evicting = oldest.is_some();
            drop(inner);
            // Asked for only when the ring has a block; with none, the next try goes over the budget.
            if let Some(oldest) = oldest {
                self.evict(oldest);
            }
        }
    }

    /// Takes the entries of an evicted block out of the map a slice at a time, so that no caller
    /// waits for more than a slice (a block of 4 KiB blobs holds some 15,000), then takes its buffer
    /// back. Meanwhile its entries can still be read.
    fn evict(&self, block: Block) {
        let mut garbage = Vec::new();
        let mut evicted = 0;
        for keys in block.keys.chunks(KEYS_PER_EVICTION_LOCK) {
            let mut inner = self.inner.write();
            evicted += inner.remove_entries(block.id, keys, &mut garbage, block.rest.is_none());
            drop(inner);
            garbage.clear();
        }
        self.inner.write().retire(block, &mut garbage);
        drop(garbage);
        self.evictions.fetch_add(evicted, Relaxed);
    }

    /// Stores a filled region under `key`, replacing what was there. If its block was evicted while
    /// it was filled (an upload slower than a turn of the whole tier), it is copied into a new one.
    pub fn commit(&self, key: Key, region: Region) {
        self.commit_or_copy(key, region, None);
    }

    /// Removes the entry of `key`; whether there was one. Its bytes go with its block.
    pub fn remove(&self, key: &Key) -> bool {
        let mut inner = self.inner.write();
        let Some(entry) = inner.map.remove(key) else { return false };
        inner.weight -= weight(entry.value.len());
        inner.removals += 1;
        drop(inner);
        true
    }

    pub fn held(&self) -> Held {
        let inner = self.inner.read();
        Held { entries: inner.map.len() as u64, bytes: inner.weight }
    }

    pub fn evictions(&self) -> u64 {
        self.evictions.load(Relaxed)
    }

    /// Copies an entry read in an old block into the head, unless it was replaced, moved or
    /// removed meanwhile. Its block may have been evicted meanwhile, even to make room for the copy.
    fn copy_forward(&self, key: Key, value: &Bytes, moving: Moving) {
        let mut region = self.reserve(value.len());
        region.extend(value);
        self.commit_or_copy(key, region, Some(moving));
    }

    fn commit_or_copy(&self, key: Key, region: Region, moving: Option<Moving>) {
        let committed = self.inner.write().commit(key, region, moving);
        if let Err(late) = committed {
            // Copied once more, into a region just reserved; should a whole turn of the tier pass
            // even then, the blob goes as the oldest would.
            let data = late.buf.freeze();
            let mut region = self.reserve(data.len());
            region.extend(&data);
            let replaced = self.inner.write().commit(key, region, moving);
            drop((data, replaced));
        }
    }
}

impl Inner {
    /// An entry in `block` is to be copied forward if that block is among the oldest quarter of the
    /// full ones.
    fn moving(&self, block: u64) -> Option<Moving> {
        let front = self.ring.front()?;
        let young = self.ring.get((self.ring.len() / 4).max(1)).map_or(u64::MAX, |b| b.id);
        (block >= front.id && block < young).then_some(Moving { from: block, removals: self.removals })
    }

    /// Whether a block is still held (full or open).
    fn holds(&self, id: u64) -> bool {
        self.ring.front().is_some_and(|front| id >= front.id) || self.head.as_ref().is_some_and(|head| head.id == id)
    }

    /// Hands out room for `len` bytes, or `Err` when the oldest block must go first. While one
    /// caller evicts, others take new memory rather than evict a second block; the budget is
    /// restored as that eviction ends.
    fn try_reserve(&mut self, len: usize) -> Result<Region, ()> {
        let added = weight(len);
        if added > self.block_size {
            // Too large to share a block: a block of its own, after the head, which is closed so
            // that the ring stays in order.
            self.seal_head();
            if self.allocated + added > self.capacity && self.spare.take().is_some() {
                self.allocated -= self.block_size;
            }
            if self.allocated + added > self.capacity && !self.may_exceed() {
                return Err(());
            }
            self.allocated += added;
            let id = self.new_id();
            self.ring.push_back(Block { id, size: added, rest: None, filled: added, keys: Vec::new() });
            return Ok(Region { block: id, buf: BytesMut::with_capacity(len) });
        }
        let mut head = match self.head.take() {
            Some(head) if head.filled + added <= self.block_size => head,
            full => {
                self.ring.extend(full);
                let buf = match self.spare.take() {
                    Some(spare) => spare,
                    None if self.allocated + self.block_size <= self.capacity || self.may_exceed() => {
                        self.allocated += self.block_size;
                        self.buffers_made += 1;
                        BytesMut::with_capacity(self.block_size as usize)
                    }
                    None => return Err(()),
                };
                let id = self.new_id();
                Block { id, size: self.block_size, rest: Some(buf), filled: 0, keys: Vec::new() }
            }
        };
        head.filled += added;
        let region = match head.rest.as_mut() {
            Some(rest) => {
                let after = rest.split_off(len);
                std::mem::replace(rest, after)
            }
            None => BytesMut::with_capacity(len),
        };
        let block = head.id;
        self.head = Some(head);
        Ok(Region { block, buf: region })
    }

    /// Whether room may be taken beyond the budget: when there is no full block to evict, or while
    /// another caller evicts one.
    fn may_exceed(&self) -> bool {
        self.ring.is_empty() || self.evicting
    }

    fn seal_head(&mut self) {
        self.ring.extend(self.head.take());
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Removes those of `keys` whose entry is still in block `id`; how many. A shared block's
    /// entries are views of its buffer: dropping them only counts down, and the buffer can then be
    /// taken back; a block of its own's entry is freed after the lock is released.
    fn remove_entries(&mut self, id: u64, keys: &[Key], garbage: &mut Vec<Bytes>, own_block: bool) -> u64 {
        let mut removed = 0;
        for key in keys {
            if self.map.get(key).is_none_or(|entry| entry.block != id) {
                continue;
            }
            if let Some(entry) = self.map.remove(key) {
                self.weight -= weight(entry.value.len());
                removed += 1;
                if own_block {
                    garbage.push(entry.value);
                }
            }
        }
        removed
    }

    /// Ends an eviction: the block's buffer becomes the spare if nothing refers to it any more (no
    /// reader, no upload still copying into it) and the budget allows; otherwise it is let go.
    fn retire(&mut self, block: Block, garbage: &mut Vec<Bytes>) {
        self.evicting = false;
        match block.rest {
            Some(mut rest) => {
                let room = self.spare.is_none() && self.allocated <= self.capacity;
                if room && rest.try_reclaim(self.block_size as usize) {
                    self.spare = Some(rest);
                } else {
                    // Still read from or written into: freed by whoever lets go of it last.
                    self.allocated -= block.size;
                    garbage.push(rest.freeze());
                }
            }
            None => self.allocated -= block.size,
        }
    }

    fn block_mut(&mut self, id: u64) -> Option<&mut Block> {
        if self.head.as_ref().is_some_and(|head| head.id == id) {
            return self.head.as_mut();
        }
        let at = self.ring.binary_search_by_key(&id, |block| block.id).ok()?;
        self.ring.get_mut(at)
    }

    /// Makes the region's bytes the entry of `key`; returns what it replaced, to be dropped after the
    /// lock is released, or the region back if its block was evicted meanwhile. A copy forward is
    /// committed if the entry is still where it was read, or went only because its block was
    /// evicted.
    fn commit(&mut self, key: Key, region: Region, moving: Option<Moving>) -> Result<Option<Bytes>, Region> {
        if !self.holds(region.block) {
            return Err(region);
        }
        let value = region.buf.freeze();
        if let Some(Moving { from, removals }) = moving {
            let still_there = match self.map.get(&key) {
                Some(entry) => entry.block == from,
                None => !self.holds(from) && removals == self.removals,
            };
            if !still_there {
                return Ok(Some(value));
            }
        }
        let Some(block) = self.block_mut(region.block) else { return Ok(Some(value)) };
        block.keys.push(key);
        self.weight += weight(value.len());
        let Some(replaced) = self.map.insert(key, Entry { value, block: region.block }) else { return Ok(None) };
        self.weight -= weight(replaced.value.len());
        Ok(Some(replaced.value))
    }
}

#[cfg(test)]
mod tests;
