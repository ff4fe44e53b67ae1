//! The compact in-memory index of the disk log: digest key -> (segment, offset, length).
//!
//! To stay under 64 bytes per blob, the map is keyed by the first 96 bits of the hash (with the
//! digest function folded in) rather than the full 256: an entry is 12 + 12 bytes plus the table's
//! control byte. Every read compares the full hash stored in the record header, so a prefix match is
//! never served as the wrong blob. Two stored blobs whose prefixes collide (astronomically unlikely
//! by chance, 2^48 work on purpose) keep the second one in a small exact-key overflow map.

use hashbrown::HashMap;

use crate::digest::Key;

/// Where a record lives: segment id, offset of its header, payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Loc {
    pub segment: u32,
    pub offset: u32,
    pub len: u32,
}

type Prefix = [u8; 12];

fn prefix(key: &Key) -> Prefix {
    let mut p = [0u8; 12];
    p.copy_from_slice(&key.hash[..12]);
    p[11] ^= key.function.tag();
    p
}

#[derive(Default)]
pub struct Index {
    by_prefix: HashMap<Prefix, Loc>,
    overflow: HashMap<Key, Loc>,
}

impl Index {
    pub fn with_capacity(n: usize) -> Self {
        Index { by_prefix: HashMap::with_capacity(n), overflow: HashMap::new() }
    }

    /// The location to check for `key`; the caller confirms the full key from the record header.
    pub fn get(&self, key: &Key) -> Option<Loc> {
        if !self.overflow.is_empty() {
            if let Some(loc) = self.overflow.get(key) {
                return Some(*loc);
            }
        }
        self.by_prefix.get(&prefix(key)).copied()
    }

    /// Records `loc` for `key`. `key_at` reads the full key of an existing record, to tell a newer
    /// copy of the same blob (replace) from a prefix collision (overflow).
    pub fn insert(&mut self, key: Key, loc: Loc, key_at: impl Fn(Loc) -> Option<Key>) {
        if let Some(existing) = self.overflow.get_mut(&key) {
            *existing = loc;
            return;
        }
        match self.by_prefix.entry(prefix(&key)) {
            hashbrown::hash_map::Entry::Vacant(v) => {
                v.insert(loc);
            }
            hashbrown::hash_map::Entry::Occupied(mut o) => match key_at(*o.get()) {
                Some(other) if other != key => {
                    self.overflow.insert(key, loc);
                }
                _ => {
                    o.insert(loc);
                }
            },
        }
    }

    /// Forgets one blob, if the index still points at `loc` for it.
    pub fn remove(&mut self, key: &Key, loc: Loc) {
        if self.overflow.get(key) == Some(&loc) {
            self.overflow.remove(key);
        } else if self.by_prefix.get(&prefix(key)) == Some(&loc) {
            self.by_prefix.remove(&prefix(key));
        }
    }

    /// Forgets every blob in `segment` (eviction of a whole segment).
    pub fn remove_segment(&mut self, segment: u32) -> usize {
        let before = self.len();
        self.by_prefix.retain(|_, loc| loc.segment != segment);
        self.overflow.retain(|_, loc| loc.segment != segment);
        before - self.len()
    }

    pub fn len(&self) -> usize {
        self.by_prefix.len() + self.overflow.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Heap bytes held by the index, for the memory target and metrics.
    pub fn heap_bytes(&self) -> usize {
        let slot = std::mem::size_of::<(Prefix, Loc)>() + 1;
        let overflow_slot = std::mem::size_of::<(Key, Loc)>() + 1;
        self.by_prefix.capacity() * slot + self.overflow.capacity() * overflow_slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;

    #[test]
    fn prefix_collisions_go_to_overflow() {
        let a = Key { function: DigestFunction::Sha256, hash: [1; 32] };
        let mut b_hash = [1; 32];
        b_hash[31] = 2;
        let b = Key { function: DigestFunction::Sha256, hash: b_hash };
        let mut index = Index::default();
        let la = Loc { segment: 0, offset: 0, len: 1 };
        let lb = Loc { segment: 0, offset: 64, len: 1 };
        index.insert(a, la, |_| None);
        index.insert(b, lb, |_| Some(a));
        assert_eq!(index.get(&a), Some(la));
        assert_eq!(index.get(&b), Some(lb));
        assert_eq!(index.remove_segment(0), 2);
        assert!(index.is_empty());
    }

    #[test]
    fn entry_stays_compact() {
        assert_eq!(std::mem::size_of::<(Prefix, Loc)>(), 24);
    }
}
