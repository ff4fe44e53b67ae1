//! The tier stack's rules: size classes, promotion, one fill per digest, corrupt tiers skipped,
//! durability of writes.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::digest::{Digest, DigestFunction};
use crate::error::StoreError;
use crate::layers::testing::{collect, Counting, Forged, DOWN};
use crate::layers::tiered::{Tier, TieredStore};
use crate::layers::verify::Verified;
use crate::memory::MemoryStore;
use crate::store::BlobStore;

fn memory() -> Arc<MemoryStore> {
    Arc::new(MemoryStore::new(64 << 20))
}

fn blob(n: usize, seed: u8) -> (Digest, Bytes) {
    let data: Bytes = (0..n).map(|i| (i as u8).wrapping_mul(seed)).collect::<Vec<u8>>().into();
    (DigestFunction::Sha256.digest_of(&data), data)
}

#[tokio::test]
async fn size_classes_decide_which_tier_holds_a_blob() {
    let (small_tier, large_tier) = (memory(), memory());
    let stack = TieredStore::new(vec![
        Tier { max_blob: 1000, ..Tier::new("small", small_tier.clone()) },
        Tier { min_blob: 1001, ..Tier::new("large", large_tier.clone()) },
    ])
    .unwrap();
    let ((small, small_data), (large, large_data)) = (blob(10, 3), blob(5000, 5));
    stack.write(&small, small_data).await.unwrap();
    let mut writer = stack.writer(&large).await.unwrap();
    writer.append(large_data.clone()).await.unwrap();
    writer.commit().await.unwrap();
    assert_eq!(small_tier.contains(&[small, large]).await.unwrap(), vec![true, false]);
    assert_eq!(large_tier.contains(&[small, large]).await.unwrap(), vec![false, true]);
    assert_eq!(stack.contains(&[small, large]).await.unwrap(), vec![true, true]);
    assert_eq!(collect(stack.read(&large, 4990, None).await.unwrap().unwrap()).await.unwrap(), large_data.slice(4990..));

    let narrow = TieredStore::new(vec![Tier { max_blob: 100, ..Tier::new("small", memory()) }]).unwrap();
    assert!(matches!(narrow.write(&large, Bytes::new()).await, Err(StoreError::TooLarge { .. })));
}

#[tokio::test]
async fn a_hit_in_a_slower_tier_is_copied_up_once_for_all_concurrent_readers() {
    let (fast, slow) = (memory(), memory());
    let counting = Arc::new(Counting::new(slow.clone(), Duration::from_millis(50)));
    let stack = Arc::new(
        TieredStore::new(vec![Tier::new("fast", fast.clone()), Tier { promote: false, ..Tier::new("slow", counting.clone()) }]).unwrap(),
    );
    let (digest, data) = blob(100_000, 7);
    slow.write(&digest, data.clone()).await.unwrap();
    let readers: Vec<_> = (0..20)
        .map(|_| {
            let stack = stack.clone();
            tokio::spawn(async move { collect(stack.read(&digest, 0, None).await.unwrap().unwrap()).await.unwrap() })
        })
        .collect();
    for reader in readers {
        assert_eq!(reader.await.unwrap(), data);
    }
    assert_eq!(counting.reads.load(Ordering::SeqCst), 1, "twenty readers, one fill");
    assert_eq!(fast.contains(&[digest]).await.unwrap(), vec![true]);
    // Served from the fast tier from now on.
    collect(stack.read(&digest, 10, Some(10)).await.unwrap().unwrap()).await.unwrap();
    assert_eq!(counting.reads.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_corrupt_tier_is_skipped_and_its_bytes_never_promoted() {
    let (digest, data) = blob(20_000, 11);
    let mut forged = data.to_vec();
    forged[0] ^= 0xff;
    let (fast, good) = (memory(), memory());
    good.write(&digest, data.clone()).await.unwrap();
    let stack = TieredStore::new(vec![
        Tier::new("fast", fast.clone()),
        Tier { promote: false, ..Tier::new("forging", Arc::new(Verified::new(Arc::new(Forged::new(digest, forged.into())), "forging"))) },
        Tier { promote: false, ..Tier::new("good", good) },
    ])
    .unwrap();
    assert_eq!(collect(stack.read(&digest, 0, None).await.unwrap().unwrap()).await.unwrap(), data);
    assert_eq!(collect(fast.read(&digest, 0, None).await.unwrap().unwrap()).await.unwrap(), data, "the intact copy was promoted");

    // With no intact copy anywhere, the blob is missing, not served.
    let (other, other_data) = blob(20_000, 13);
    let mut bad = other_data.to_vec();
    bad[19_999] ^= 1;
    let (fast, forging) = (memory(), Arc::new(Verified::new(Arc::new(Forged::new(other, bad.into())), "forging")));
    let stack = TieredStore::new(vec![Tier::new("fast", fast.clone()), Tier { promote: false, ..Tier::new("forging", forging) }]).unwrap();
    assert!(stack.read(&other, 0, None).await.unwrap().is_none());
    assert_eq!(fast.contains(&[other]).await.unwrap(), vec![false]);
}

#[tokio::test]
async fn writes_succeed_when_the_durable_tiers_have_the_blob() {
    let (digest, data) = blob(1000, 17);
    let local = memory();
    let best_effort = TieredStore::new(vec![
        Tier { durable: true, ..Tier::new("local", local.clone()) },
        Tier { promote: false, ..Tier::new("upstream", Arc::new(DOWN)) },
    ])
    .unwrap();
    best_effort.write(&digest, data.clone()).await.unwrap();
    let mut writer = best_effort.writer(&digest).await.unwrap();
    writer.append(data.clone()).await.unwrap();
    writer.commit().await.unwrap();
    assert_eq!(local.contains(&[digest]).await.unwrap(), vec![true]);

    let strict = TieredStore::new(vec![
        Tier::new("local", memory()),
        Tier { promote: false, durable: true, ..Tier::new("upstream", Arc::new(DOWN)) },
    ])
    .unwrap();
    assert!(matches!(strict.write(&digest, data).await, Err(StoreError::Unavailable { .. })));
    assert!(matches!(strict.writer(&digest).await, Err(StoreError::Unavailable { .. })));
}

#[tokio::test]
async fn a_batch_write_keeps_the_rules_of_single_writes_blob_by_blob() {
    let (small_tier, large_tier) = (memory(), memory());
    let stack = TieredStore::new(vec![
        Tier { max_blob: 1000, durable: true, ..Tier::new("small", small_tier.clone()) },
        Tier { min_blob: 1001, max_blob: 5000, durable: true, ..Tier::new("large", large_tier.clone()) },
    ])
    .unwrap();
    let batch = vec![blob(10, 3), blob(2000, 5), blob(6000, 7), blob(20, 9)];
    let digests: Vec<Digest> = batch.iter().map(|(d, _)| *d).collect();
    let outcomes = stack.write_many(batch).await;
    assert!(outcomes[0].is_ok() && outcomes[1].is_ok() && outcomes[3].is_ok(), "{outcomes:?}");
    assert!(matches!(outcomes[2], Err(StoreError::TooLarge { .. })), "{outcomes:?}");
    assert_eq!(small_tier.contains(&digests).await.unwrap(), vec![true, false, false, true]);
    assert_eq!(large_tier.contains(&digests).await.unwrap(), vec![false, true, false, false]);

    // A durable tier that fails a batch fails each of its blobs; a best-effort one fails none.
    let local = memory();
    let strict = TieredStore::new(vec![
        Tier::new("local", local.clone()),
        Tier { promote: false, durable: true, ..Tier::new("upstream", Arc::new(DOWN)) },
    ])
    .unwrap();
    let outcomes = strict.write_many(vec![blob(100, 11), blob(200, 13)]).await;
    assert!(outcomes.iter().all(|o| matches!(o, Err(StoreError::Unavailable { .. }))), "{outcomes:?}");
    let best_effort = TieredStore::new(vec![
        Tier { durable: true, ..Tier::new("local", local.clone()) },
        Tier { promote: false, ..Tier::new("upstream", Arc::new(DOWN)) },
    ])
    .unwrap();
    let outcomes = best_effort.write_many(vec![blob(300, 17), blob(400, 19)]).await;
    assert!(outcomes.iter().all(Result::is_ok), "{outcomes:?}");
    assert_eq!(local.contains(&[blob(300, 17).0, blob(400, 19).0]).await.unwrap(), vec![true, true]);
}

#[tokio::test]
async fn contains_asks_each_tier_only_about_what_faster_ones_lacked() {
    let (fast, slow) = (memory(), memory());
    let counting = Arc::new(Counting::new(slow.clone(), Duration::ZERO));
    let stack = TieredStore::new(vec![Tier::new("fast", fast.clone()), Tier::new("slow", counting.clone())]).unwrap();
    let ((a, a_data), (b, b_data), (c, _)) = (blob(10, 1), blob(10, 2), blob(10, 3));
    fast.write(&a, a_data).await.unwrap();
    slow.write(&b, b_data).await.unwrap();
    assert_eq!(stack.contains(&[a, b, c]).await.unwrap(), vec![true, true, false]);
    assert_eq!(counting.digests_asked.load(Ordering::SeqCst), 2);
    assert!(TieredStore::new(vec![]).is_err());
}
