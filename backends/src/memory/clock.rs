//! The memory tier's map: a CLOCK cache bounded in bytes. A lookup only sets the entry's credit
//! under a shared lock, so readers never queue on an ordering list as an LRU's move-to-front (or
//! moka's buffered read log) makes them; an insertion that goes over the budget moves the hand over
//! the entries in insertion order, evicting each one without credit and taking one pass of credit
//! from each one that has some (a generalised CLOCK: a read buys more passes than a new entry gets).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU8, Ordering::Relaxed};

use bytes::Bytes;
use hashbrown::hash_map::Entry as Slot;
use hashbrown::HashMap;
use parking_lot::RwLock;

use crate::digest::{Digest, Key};

/// What an entry costs beyond its bytes: its map slot (key, value handle, bit, generation) at the
/// table's load, its place on the ring, and the shared header a `Bytes` gets once it is cloned.
/// Counted so that a flood of tiny blobs cannot exceed the budget.
pub const ENTRY_OVERHEAD: u64 = 192;

/// Lookups of a batch hold the shared lock for this many keys at a time, so that a writer waits for
/// microseconds, not for a whole FindMissingBlobs of 10,000 digests.
const KEYS_PER_READ_LOCK: usize = 256;

/// Entries the hand spares before it settles for the next one not read since it last came by. Without
/// a bound, one insertion after a client asked about every entry would take a pass of credit from
/// every entry under the write lock (46 ms at 500,000 entries); with it an insertion waits some
/// 100 us, and the credit is taken over the next insertions instead. Settling for an entry with
/// credit left, rather than for the very next one, keeps a blob that clients ask about every
/// moment: as the last tier every new entry has credit, and the next one after the bound was as
/// likely the hottest blob of the cache as any other.
const SPARED_PER_EVICTION: usize = 1024;

/// After this many, the hand evicts the next entry even if it was just read: every entry it met was,
/// and an insertion must not wait for a full pass.
const SPARED_AT_MOST: usize = 4 * SPARED_PER_EVICTION;

pub fn weight(len: usize) -> u64 {
    len as u64 + ENTRY_OVERHEAD
}

/// The passes of the hand a read buys an entry. More than a new entry starts with: once every entry
/// has credit, one insertion's hand may go round more than once under the write lock, with no reader
/// able to touch anything meanwhile, and entries read since their insertion must then still outlast
/// those never read (with a single bit the hand would clear all and evict in insertion order, hot
/// or not, as FIFO does).
const READ_CREDIT: u8 = 3;

pub struct Clock {
    capacity: u64,
    /// What a new entry starts with: 1 outlives the hand's first pass.
    new_credit: u8,
    inner: RwLock<Inner>,
}

struct Entry {
    value: Bytes,
    /// Passes of the hand this entry outlasts.
    credit: AtomicU8,
    /// Tells this entry's place on the ring from a place left there by an earlier, removed entry of
    /// the same key.
    generation: u64,
}

impl Entry {
    fn touch(&self) {
        // A load first: a hot entry has full credit already, and a store would bounce its cache line.
        if self.credit.load(Relaxed) < READ_CREDIT {
            self.credit.store(READ_CREDIT, Relaxed);
        }
    }
}

#[derive(Default)]
struct Inner {
    map: HashMap<Key, Entry>,
    /// Each entry's place, in the order the hand visits them (front first), and the places of
    /// removed entries, which the hand drops as it reaches them.
    ring: VecDeque<(Key, u64)>,
    stale: usize,
    weight: u64,
    next_generation: u64,
}

/// What `Clock::stats` reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    pub entries: u64,
    pub bytes: u64,
}

impl Clock {
    pub fn new(capacity: u64, new_entries_used: bool) -> Self {
        Clock { capacity, new_credit: u8::from(new_entries_used), inner: RwLock::new(Inner::default()) }
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
        let inner = self.inner.read();
        let entry = inner.map.get(key)?;
        entry.touch();
        Some(entry.value.clone())
    }

    /// Whether each blob is held at its digest's size; those found count as used, as a client told a
    /// blob exists will soon read it.
    pub fn contains(&self, digests: &[Digest]) -> Vec<bool> {
        let mut found = Vec::with_capacity(digests.len());
        for chunk in digests.chunks(KEYS_PER_READ_LOCK) {
            let inner = self.inner.read();
            found.extend(chunk.iter().map(|digest| match inner.map.get(&digest.key()) {
                Some(entry) if entry.value.len() as u64 == digest.size => {
                    entry.touch();
                    true
                }
                _ => false,
            }));
        }
        found
    }

    /// Stores `value` under `key`, replacing what was there, and evicts until the budget holds.
    /// Returns how many entries were evicted. The values that leave are freed after the lock is
    /// released: dropping a large one returns its memory to the kernel.
    pub fn insert(&self, key: Key, value: Bytes) -> u64 {
        let added = weight(value.len());
        let mut departed = Vec::new();
        let mut inner = self.inner.write();
        let Inner { map, ring, weight: held, next_generation, .. } = &mut *inner;
        match map.entry(key) {
            Slot::Occupied(mut slot) => {
                let entry = slot.get_mut();
                *held -= weight(entry.value.len());
                entry.touch();
                departed.push(std::mem::replace(&mut entry.value, value));
            }
            Slot::Vacant(slot) => {
                let generation = *next_generation;
                *next_generation += 1;
                slot.insert(Entry { value, credit: AtomicU8::new(self.new_credit), generation });
                ring.push_back((key, generation));
            }
        }
        *held += added;
        let evicted = inner.evict_down_to(self.capacity, &key, &mut departed);
        drop(inner);
        evicted
    }

    /// Removes the entry of `key`; whether there was one.
    pub fn remove(&self, key: &Key) -> bool {
        let mut inner = self.inner.write();
        let Some(entry) = inner.map.remove(key) else { return false };
        inner.weight -= weight(entry.value.len());
        inner.stale += 1;
        if inner.stale > inner.map.len() {
            inner.drop_stale_places();
        }
        drop(inner);
        drop(entry);
        true
    }

    pub fn held(&self) -> Held {
        let inner = self.inner.read();
        Held { entries: inner.map.len() as u64, bytes: inner.weight }
    }
}

impl Inner {
    /// Never evicts `inserted`: what was just written is kept at least until the next insertion
    /// (it fits, or it would have been refused).
    fn evict_down_to(&mut self, capacity: u64, inserted: &Key, departed: &mut Vec<Bytes>) -> u64 {
        let (mut evicted, mut spared) = (0, 0);
        // Ends: every turn either takes a place off the ring or clears a bit, and no bit is set
        // while the write lock is held.
        while self.weight > capacity {
            let Some((key, generation)) = self.ring.pop_front() else { break };
            match self.map.get(&key) {
                Some(entry) if entry.generation == generation && key == *inserted => {
                    self.ring.push_back((key, generation));
                    continue;
                }
                Some(entry) if entry.generation == generation => {
                    let credit = entry.credit.load(Relaxed);
                    let spares = match spared {
                        n if n < SPARED_PER_EVICTION => credit > 0,
                        n if n < SPARED_AT_MOST => credit == READ_CREDIT,
                        _ => false,
                    };
                    if spares {
                        entry.credit.store(credit - 1, Relaxed);
                        spared += 1;
                        self.ring.push_back((key, generation));
                        continue;
                    }
                }
                _ => {
                    self.stale -= 1;
                    continue;
                }
            }
            if let Some(entry) = self.map.remove(&key) {
                self.weight -= weight(entry.value.len());
                departed.push(entry.value);
                evicted += 1;
                spared = 0;
            }
        }
        evicted
    }

    fn drop_stale_places(&mut self) {
        let map = &self.map;
        self.ring.retain(|(key, generation)| map.get(key).is_some_and(|e| e.generation == *generation));
        self.stale = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    fn key(n: u32) -> Key {
        DigestFunction::Sha256.digest_of(&n.to_le_bytes()).key()
    }

    fn value(len: usize) -> Bytes {
        Bytes::from(vec![7u8; len])
    }

    /// Room for exactly `n` entries of 100 bytes.
    fn clock_of(n: u64, new_entries_used: bool) -> Clock {
        Clock::new(n * weight(100), new_entries_used)
    }

    /// A last tier's clock (new entries start with credit) holding entries 0..n, full.
    fn full_of_new_entries(n: u32) -> Clock {
        let clock = clock_of(n as u64, true);
        for i in 0..n {
            clock.insert(key(i), value(100));
        }
        clock
    }

    /// Which of the entries 0..=n are no longer held.
    fn evicted_of(clock: &Clock, n: u32) -> Vec<u32> {
        (0..=n).filter(|&i| clock.inner.read().map.get(&key(i)).is_none()).collect()
    }

    #[test]
    fn evicts_in_insertion_order_sparing_what_was_used_once() {
        let clock = clock_of(3, false);
        for n in 0..3 {
            assert_eq!(clock.insert(key(n), value(100)), 0);
        }
        assert!(clock.get(&key(0)).is_some());
        // Over budget: 0 was used and is spared (its bit cleared), 1 was not and goes.
        assert_eq!(clock.insert(key(3), value(100)), 1);
        assert!(clock.get(&key(1)).is_none());
        // The hand goes on from 2: not used since, so it goes next, before 0 comes round again.
        assert_eq!(clock.insert(key(4), value(100)), 1);
        assert!(clock.get(&key(2)).is_none());
        for n in [0, 3, 4] {
            assert!(clock.get(&key(n)).is_some(), "entry {n}");
        }
        assert_eq!(clock.held(), Held { entries: 3, bytes: 3 * weight(100) });
    }

    #[test]
    fn an_insertion_never_evicts_its_own_entry() {
        for starts_used in [true, false] {
            let clock = clock_of(2, starts_used);
            clock.insert(key(0), value(100));
            clock.insert(key(1), value(100));
            clock.get(&key(0));
            clock.get(&key(1));
            // Over budget with both old entries read: the hand passes over 2 until their credit is
            // spent, and 0, the oldest, goes.
            assert_eq!(clock.insert(key(2), value(100)), 1);
            assert!(clock.get(&key(2)).is_some() && clock.get(&key(0)).is_none(), "starts used: {starts_used}");
            assert_eq!(clock.held().entries, 2);
        }
    }

    #[test]
    fn read_entries_outlast_a_full_pass_that_clears_unread_new_ones() {
        // A full tier whose every entry has credit (new entries start with some as the last tier):
        // one insertion's hand goes round more than once, and must still keep what was read.
        let clock = clock_of(10, true);
        for n in 0..10 {
            clock.insert(key(n), value(100));
        }
        clock.get(&key(0));
        clock.get(&key(1));
        for n in 10..30 {
            clock.insert(key(n), value(100));
            assert!(clock.get(&key(0)).is_some() && clock.get(&key(1)).is_some(), "a read entry went at insertion {n}");
        }
    }

    #[test]
    fn replacing_and_removing_keep_the_weight_exact_and_the_ring_bounded() {
        let clock = clock_of(1000, true);
        clock.insert(key(1), value(100));
        clock.insert(key(1), value(50));
        assert_eq!(clock.held(), Held { entries: 1, bytes: weight(50) });
        assert_eq!(clock.get(&key(1)).map(|v| v.len()), Some(50));
        for round in 0..10_000 {
            clock.insert(key(2), value(10));
            assert!(clock.remove(&key(2)), "round {round}");
        }
        assert!(!clock.remove(&key(2)));
        assert_eq!(clock.held(), Held { entries: 1, bytes: weight(50) });
        assert!(clock.inner.read().ring.len() <= 3, "removed entries' places are dropped");
    }

    #[test]
    fn the_hand_spares_a_bounded_number_of_entries_per_eviction() {
        let n = SPARED_PER_EVICTION as u32 + 10;
        let clock = full_of_new_entries(n);
        // Every entry has credit: the hand spares the first SPARED_PER_EVICTION and evicts the next.
        assert_eq!(clock.insert(key(n), value(100)), 1);
        let gone = evicted_of(&clock, n);
        assert_eq!(gone, vec![SPARED_PER_EVICTION as u32]);
        // The next insertion finds the spared entries' credit spent and evicts the oldest of them.
        assert_eq!(clock.insert(key(n + 1), value(100)), 1);
        assert!(clock.inner.read().map.get(&key(0)).is_none());
    }

    #[test]
    fn past_the_bound_the_hand_still_spares_what_was_just_read() {
        // As the last tier every entry starts with credit; the entry where the bound runs out is one
        // that clients keep asking about.
        let n = SPARED_PER_EVICTION as u32 + 10;
        let clock = full_of_new_entries(n);
        let hot = SPARED_PER_EVICTION as u32;
        clock.get(&key(hot));
        assert_eq!(clock.insert(key(n), value(100)), 1);
        assert!(clock.get(&key(hot)).is_some(), "the hot entry was evicted");
        assert!(clock.inner.read().map.get(&key(hot + 1)).is_none(), "the next entry not just read goes");
    }

    #[test]
    fn when_every_entry_was_just_read_an_insertion_still_waits_for_a_bounded_part_of_a_pass() {
        let n = SPARED_AT_MOST as u32 + 10;
        let clock = full_of_new_entries(n);
        for i in 0..n {
            clock.get(&key(i));
        }
        assert_eq!(clock.insert(key(n), value(100)), 1);
        let gone = evicted_of(&clock, n);
        assert_eq!(gone, vec![SPARED_AT_MOST as u32]);
    }

    #[test]
    fn a_key_removed_and_written_again_has_one_live_place() {
        let clock = clock_of(2, false);
        clock.insert(key(0), value(100));
        clock.insert(key(1), value(100));
        clock.remove(&key(0));
        clock.insert(key(0), value(100));
        // The first 0's place is still at the front; it must not evict the new 0 out of turn.
        assert_eq!(clock.insert(key(2), value(100)), 1);
        assert!(clock.get(&key(1)).is_none(), "1 was the oldest live entry");
        assert!(clock.get(&key(0)).is_some() && clock.get(&key(2)).is_some());
    }

    #[test]
    fn contains_checks_the_size_and_marks_what_it_found_as_used() {
        let clock = Clock::new(2 * weight(1), false);
        let (a, b) = (DigestFunction::Sha256.digest_of(b"a"), DigestFunction::Sha256.digest_of(b"b"));
        clock.insert(a.key(), Bytes::from_static(b"a"));
        clock.insert(b.key(), Bytes::from_static(b"b"));
        assert_eq!(clock.contains(&[a, Digest { size: 2, ..b }]), vec![true, false]);
        // a was found, so the hand spares it; b was only asked for at the wrong size, and goes.
        assert_eq!(clock.insert(key(9), value(1)), 1);
        assert_eq!(clock.contains(&[a, b]), vec![true, false]);
    }

    #[test]
    fn a_value_larger_than_the_budget_does_not_fit() {
        let clock = Clock::new(weight(100), true);
        assert!(clock.fits(100));
        assert!(!clock.fits(101));
        assert_eq!(clock.largest_value(), 100);
    }
}
