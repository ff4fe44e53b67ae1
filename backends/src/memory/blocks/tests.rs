use super::*;
use crate::digest::DigestFunction;

/// 64 KiB: blocks of 4 KiB and their overhead's share (4,160 bytes), 15 of them in the budget, each
/// with room for 14 entries of 100 bytes.
const CAPACITY: u64 = 64 << 10;
const PER_BLOCK: u32 = 14;
const BLOCKS_HELD: u32 = 15;

fn key(n: u32) -> Key {
    DigestFunction::Sha256.digest_of(&n.to_le_bytes()).key()
}

fn value(n: u32) -> Bytes {
    Bytes::from(vec![n as u8; 100])
}

fn filled(n: u32) -> Blocks {
    let blocks = Blocks::new(CAPACITY);
    for i in 0..n {
        blocks.insert(key(i), &[value(i)]);
    }
    blocks
}

/// Where entry `n` is, without the copy forward a read may make.
fn block_of(blocks: &Blocks, n: u32) -> Option<u64> {
    blocks.inner.read().map.get(&key(n)).map(|entry| entry.block)
}

fn head_id(blocks: &Blocks) -> Option<u64> {
    blocks.inner.read().head.as_ref().map(|head| head.id)
}

#[test]
fn blocks_are_sized_from_the_capacity() {
    let blocks = Blocks::new(CAPACITY);
    assert_eq!(blocks.inner.read().block_size, 4160);
    assert_eq!(Blocks::new(2 << 30).inner.read().block_size, 65 << 20);
    assert_eq!(Blocks::new(1000).inner.read().block_size, 1000, "never larger than the tier");
}

#[test]
fn evicts_the_oldest_block_whole_and_stays_in_budget() {
    let n = 3 * PER_BLOCK * BLOCKS_HELD;
    let blocks = filled(n);
    let held: Vec<bool> = (0..n).map(|i| block_of(&blocks, i).is_some()).collect();
    let first_kept = held.iter().position(|h| *h).unwrap_or(held.len());
    assert!(held[first_kept..].iter().all(|h| *h), "evicted oldest first");
    assert_eq!(first_kept as u32 % PER_BLOCK, 0, "a whole block at a time");
    // The full blocks of the budget but one, and the open one.
    assert_eq!(n - 1 - first_kept as u32, PER_BLOCK * (BLOCKS_HELD - 1) + (n - 1) % PER_BLOCK);
    assert_eq!(blocks.evictions(), first_kept as u64);
    let inner = blocks.inner.read();
    assert!(inner.allocated <= CAPACITY);
    assert_eq!(blocks.held(), Held { entries: (n - first_kept as u32) as u64, bytes: (n - first_kept as u32) as u64 * weight(100) });
}

#[test]
fn the_buffers_of_evicted_blocks_are_written_again() {
    let blocks = filled(10 * PER_BLOCK * BLOCKS_HELD);
    assert_eq!(blocks.inner.read().buffers_made, BLOCKS_HELD as u64, "no buffer allocated once the ring was full");
    for i in (10 * PER_BLOCK * BLOCKS_HELD - 50)..(10 * PER_BLOCK * BLOCKS_HELD) {
        assert_eq!(blocks.get(&key(i)), Some(value(i)), "entry {i}");
    }
}

#[test]
fn a_reader_keeps_its_bytes_while_their_block_is_evicted_and_written_again_elsewhere() {
    let blocks = filled(PER_BLOCK);
    let read = blocks.get(&key(0));
    for i in PER_BLOCK..3 * PER_BLOCK * BLOCKS_HELD {
        blocks.insert(key(i), &[value(i)]);
    }
    assert_eq!(block_of(&blocks, 0), None);
    assert_eq!(read, Some(value(0)), "the bytes a reader holds stay as they were");
    assert_eq!(blocks.inner.read().buffers_made, BLOCKS_HELD as u64 + 1, "the held buffer was not reused");
    assert!(blocks.inner.read().allocated <= CAPACITY);
}

#[test]
fn an_entry_read_while_its_block_is_old_is_copied_forward_and_outlives_it() {
    let blocks = filled(PER_BLOCK * BLOCKS_HELD);
    let young = PER_BLOCK * BLOCKS_HELD - 1;
    let before = block_of(&blocks, young);
    assert_eq!(blocks.get(&key(young)), Some(value(young)));
    assert_eq!(block_of(&blocks, young), before, "a young entry is read where it is");
    assert_eq!(blocks.get(&key(0)), Some(value(0)));
    assert_eq!(block_of(&blocks, 0), head_id(&blocks), "copied into the head");
    // One more block evicts the one entry 0 was first in.
    for i in 0..PER_BLOCK {
        blocks.insert(key(1000 + i), &[value(i)]);
    }
    assert_eq!(block_of(&blocks, 1), None);
    assert_eq!(blocks.get(&key(0)), Some(value(0)));
    assert_eq!(blocks.held().bytes, blocks.held().entries * weight(100), "counted once");
}

#[test]
fn contains_checks_the_size_and_copies_forward_what_it_found_old() {
    let blocks = filled(PER_BLOCK * BLOCKS_HELD);
    let digest = |n: u32, size: u64| Digest { size, ..DigestFunction::Sha256.digest_of(&n.to_le_bytes()) };
    let found = blocks.contains(&[digest(0, 100), digest(1, 99), digest(999, 100)]);
    assert_eq!(found, vec![true, false, false]);
    assert_eq!(block_of(&blocks, 0), head_id(&blocks), "found: copied forward");
    assert_ne!(block_of(&blocks, 1), head_id(&blocks), "asked for at another size: left");
}

#[test]
fn a_copy_forward_of_an_entry_replaced_meanwhile_is_dropped() {
    let blocks = filled(PER_BLOCK * BLOCKS_HELD);
    let read = |n: u32| {
        let inner = blocks.inner.read();
        inner.map.get(&key(n)).and_then(|entry| Some((entry.value.clone(), inner.moving(entry.block)?)))
    };
    // Entries 0 and PER_BLOCK are the first of the oldest two blocks.
    let (Some((old, moving)), Some((_, moving_second))) = (read(0), read(PER_BLOCK)) else { panic!("both are old") };
    let new = Bytes::from_static(b"new");
    blocks.insert(key(0), &[new.clone()]);
    blocks.copy_forward(key(0), &old, moving);
    assert_eq!(blocks.get(&key(0)), Some(new), "replaced: the copy is dropped");
    // Removed, and then its block evicted: the copy must not bring it back.
    assert!(blocks.remove(&key(PER_BLOCK)));
    for i in 0..PER_BLOCK {
        blocks.insert(key(1000 + i), &[value(i)]);
    }
    assert_eq!(block_of(&blocks, PER_BLOCK + 1), None, "its block was evicted");
    blocks.copy_forward(key(PER_BLOCK), &value(PER_BLOCK), moving_second);
    assert_eq!(block_of(&blocks, PER_BLOCK), None, "removed: not brought back");
    assert_eq!(blocks.held().bytes, (blocks.held().entries - 1) * weight(100) + weight(3));
}

#[test]
fn an_entry_too_large_for_a_block_has_one_of_its_own_and_goes_in_turn() {
    let blocks = filled(PER_BLOCK * 3);
    let large = Bytes::from(vec![9u8; 10_000]);
    blocks.insert(key(500), &[large.slice(..4000), large.slice(4000..)]);
    assert_eq!(blocks.get(&key(500)), Some(large.clone()), "pieces stored as one");
    for i in 0..PER_BLOCK * BLOCKS_HELD {
        blocks.insert(key(1000 + i), &[value(i)]);
        assert!(blocks.inner.read().allocated <= CAPACITY, "over budget at {i}");
    }
    assert_eq!(block_of(&blocks, 500), None, "evicted with the blocks of its time");
    let big = Bytes::from(vec![1u8; (CAPACITY - ENTRY_OVERHEAD) as usize]);
    blocks.insert(key(501), &[big.clone()]);
    assert_eq!(blocks.held(), Held { entries: 1, bytes: CAPACITY }, "the largest that fits evicts the rest");
    assert_eq!(blocks.get(&key(501)), Some(big));
}

#[test]
fn replacing_and_removing_keep_the_weight_exact() {
    let blocks = Blocks::new(CAPACITY);
    blocks.insert(key(1), &[Bytes::from(vec![1u8; 100])]);
    blocks.insert(key(1), &[Bytes::from(vec![2u8; 50])]);
    assert_eq!(blocks.held(), Held { entries: 1, bytes: weight(50) });
    assert_eq!(blocks.get(&key(1)).map(|v| v.len()), Some(50));
    // Within the budget: removed entries' bytes stay until their block goes.
    for round in 0..100 {
        blocks.insert(key(2), &[Bytes::from_static(b"0123456789")]);
        assert!(blocks.remove(&key(2)), "round {round}");
    }
    assert!(!blocks.remove(&key(2)));
    assert_eq!(blocks.held(), Held { entries: 1, bytes: weight(50) });
    assert!(blocks.inner.read().allocated <= CAPACITY);
}

#[test]
fn a_value_larger_than_the_budget_does_not_fit() {
    let blocks = Blocks::new(weight(100));
    assert!(blocks.fits(100));
    assert!(!blocks.fits(101));
    assert_eq!(blocks.largest_value(), 100);
}

#[test]
fn a_region_whose_block_was_evicted_while_it_was_filled_is_copied_into_a_new_one() {
    let blocks = filled(PER_BLOCK);
    let mut region = blocks.reserve(100);
    region.extend(&value(7)[..50]);
    // A whole turn of the tier while the upload is slow.
    for i in 0..3 * PER_BLOCK * BLOCKS_HELD {
        blocks.insert(key(1000 + i), &[value(i)]);
    }
    region.extend(&value(7)[50..]);
    blocks.commit(key(999), region);
    assert_eq!(block_of(&blocks, 999), head_id(&blocks));
    assert_eq!(blocks.get(&key(999)), Some(value(7)));
    assert_eq!(blocks.held().bytes, blocks.held().entries * weight(100));
    assert!(blocks.inner.read().allocated <= CAPACITY);
}

#[test]
fn an_eviction_of_thousands_of_entries_takes_every_one_out() {
    // 16 MiB: blocks of about 1 MiB, some 3,600 entries of 100 bytes each, evicted a slice at a time.
    let blocks = Blocks::new(16 << 20);
    let n = 200_000;
    for i in 0..n {
        blocks.insert(key(i), &[value(i)]);
    }
    let per_block = (blocks.inner.read().block_size / weight(100)) as u32;
    let first_kept = (0..n).position(|i| block_of(&blocks, i).is_some()).unwrap_or(n as usize) as u32;
    assert!((first_kept..n).all(|i| block_of(&blocks, i).is_some()), "evicted oldest first");
    assert_eq!(first_kept % per_block, 0, "whole blocks");
    assert_eq!(blocks.evictions(), first_kept as u64);
    assert_eq!(blocks.held().entries, (n - first_kept) as u64);
    let inner = blocks.inner.read();
    assert!(inner.allocated <= 16 << 20 && !inner.evicting);
    assert_eq!(inner.buffers_made, (16 << 20) / inner.block_size);
}

#[test]
fn concurrent_writers_and_readers_never_see_another_entrys_bytes() {
    let blocks = std::sync::Arc::new(Blocks::new(CAPACITY));
    // Entry n holds n's byte, at a length of its own: a region handed out twice, or a commit into
    // the wrong place, shows as a wrong byte or length.
    let entry = |n: u32| Bytes::from(vec![n as u8; 20 + (n as usize * 7) % 300]);
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let blocks = blocks.clone();
            std::thread::spawn(move || {
                for i in 0..20_000u32 {
                    let n = t * 100_000 + i;
                    blocks.insert(key(n), &[entry(n)]);
                    for m in [1, 50, 400].map(|back| n.saturating_sub(back)) {
                        if let Some(got) = blocks.get(&key(m)) {
                            assert_eq!(got, entry(m), "entry {m}");
                        }
                    }
                }
            })
        })
        .collect();
    for thread in threads {
        assert!(thread.join().is_ok(), "a thread failed");
    }
    let inner = blocks.inner.read();
    assert!(!inner.evicting);
    assert!(inner.allocated <= CAPACITY + 4 * inner.block_size, "over the budget by at most a block per caller");
    let weight_held: u64 = inner.map.values().map(|e| weight(e.value.len())).sum();
    assert_eq!(weight_held, inner.weight);
    let written: HashMap<Key, u32> = (0..4u32).flat_map(|t| (0..20_000u32).map(move |i| t * 100_000 + i)).map(|n| (key(n), n)).collect();
    for (k, e) in inner.map.iter() {
        assert!(written.get(k).is_some_and(|&n| e.value == entry(n)), "a held entry has its own bytes");
    }
}
