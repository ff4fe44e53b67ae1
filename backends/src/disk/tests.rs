//! Disk log tests: persistence, crash recovery (torn tail, damaged records, files removed behind the
//! log's back), eviction by segment with copy-forward, large blobs.

use std::path::Path;

use bytes::Bytes;

use super::*;
use crate::digest::DigestFunction;

const SEG: u64 = 64 * 1024;

fn config(dir: &Path, max_size: u64, sync: SyncPolicy) -> DiskConfig {
    DiskConfig { path: dir.to_path_buf(), max_size, segment_size: SEG, max_record: SEG / 4, sync, compression: None }
}

fn blob(i: u32, len: usize) -> (Digest, Bytes) {
    let mut data: Vec<u8> = (0..len).map(|j| (i as usize * 31 + j) as u8).collect();
    data[..4].copy_from_slice(&i.to_le_bytes());
    (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
}

/// A read of up to 1 MiB comes as one buffer; a longer one is checked as it is sent, in pieces.
async fn read_all(log: &DiskLog, d: &Digest) -> Option<Bytes> {
    match log.read(d, 0, None).await.unwrap()? {
        Blob::Bytes(b) => {
            assert!(b.len() <= 1 << 20, "{} bytes in one buffer", b.len());
            Some(b)
        }
        blob => {
            assert!(d.size > 1 << 20, "{} bytes in pieces", d.size);
            Some(blob.into_bytes().await.unwrap())
        }
    }
}

#[tokio::test]
async fn survives_restart_with_sealed_and_open_segments() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..100).map(|i| blob(i, 3000)).collect();
    {
        let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Always)).unwrap();
        for (d, data) in &blobs {
            log.write(d, data.clone()).await.unwrap();
        }
        assert!(log.inner.state.read().segments.len() > 2, "the test needs sealed segments");
    }
    let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Always)).unwrap();
    for (d, data) in &blobs {
        assert_eq!(read_all(&log, d).await.as_ref(), Some(data));
    }
    let digests: Vec<_> = blobs.iter().map(|(d, _)| *d).collect();
    assert!(log.contains(&digests).await.unwrap().iter().all(|&x| x));
    let wrong_size = Digest { size: 2999, ..digests[0] };
    assert_eq!(log.contains(&[wrong_size]).await.unwrap(), vec![false]);
    assert!(log.read(&wrong_size, 0, None).await.unwrap().is_none());
}

#[tokio::test]
async fn torn_tail_is_cut_and_later_writes_survive() {
    let dir = tempfile::tempdir().unwrap();
    let (d1, b1) = blob(1, 1000);
    let (d2, b2) = blob(2, 1000);
    let end;
    {
        let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Always)).unwrap();
        log.write(&d1, b1.clone()).await.unwrap();
        log.write(&d2, b2.clone()).await.unwrap();
        end = log.inner.writer.lock().offset;
    }
    // Simulate a crash in the middle of the second record: its last bytes never reached the disk,
    // and garbage follows the tail.
    let seg = segment::segment_path(dir.path(), 0);
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(&[0u8; 100], end - 100).unwrap();
    file.write_all_at(b"garbage after the tail", end + 64).unwrap();
    drop(file);

    let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Always)).unwrap();
    assert_eq!(read_all(&log, &d1).await, Some(b1.clone()));
    assert_eq!(read_all(&log, &d2).await, None, "a torn record is never served");
    let (d3, b3) = blob(3, 500);
    log.write(&d3, b3.clone()).await.unwrap();
    log.write(&d2, b2.clone()).await.unwrap();
    drop(log);
    let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Always)).unwrap();
    for (d, b) in [(d1, b1), (d2, b2), (d3, b3)] {
        assert_eq!(read_all(&log, &d).await, Some(b));
    }
}

#[tokio::test]
async fn damaged_record_is_never_served() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..60).map(|i| blob(i, 3000)).collect();
    let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Never)).unwrap();
    for (d, data) in &blobs {
        log.write(d, data.clone()).await.unwrap();
    }
    // Flip a byte in the payload of the first blob behind the log's back (a sealed segment).
    let seg = segment::segment_path(dir.path(), 0);
    let file = std::fs::OpenOptions::new().write(true).open(&seg).unwrap();
    use std::os::unix::fs::FileExt;
    file.write_all_at(b"X", record::HEADER_LEN as u64 + 10).unwrap();
    drop(file);
    assert_eq!(read_all(&log, &blobs[0].0).await, None);
    assert_eq!(read_all(&log, &blobs[1].0).await, Some(blobs[1].1.clone()));
    drop(log);
    let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Never)).unwrap();
    assert_eq!(read_all(&log, &blobs[0].0).await, None);
    for (d, data) in &blobs[1..] {
        assert_eq!(read_all(&log, d).await.as_ref(), Some(data));
    }
}

#[tokio::test]
async fn removed_segment_and_index_files_are_handled() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..60).map(|i| blob(i, 3000)).collect();
    {
        let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Never)).unwrap();
        for (d, data) in &blobs {
            log.write(d, data.clone()).await.unwrap();
        }
        // Removed while running: readers keep the mapping, so what is served is still right.
        std::fs::remove_file(segment::segment_path(dir.path(), 0)).unwrap();
        assert_eq!(read_all(&log, &blobs[0].0).await, Some(blobs[0].1.clone()));
    }
    // Segment 1 loses its index file: it is scanned instead.
    std::fs::remove_file(segment::index_path(dir.path(), 1)).unwrap();
    let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Never)).unwrap();
    let present = log.contains(&blobs.iter().map(|(d, _)| *d).collect::<Vec<_>>()).await.unwrap();
    let in_segment_0 = SEG as usize / record::record_len(3000) as usize;
    assert!(present[..in_segment_0].iter().all(|&p| !p));
    assert!(present[in_segment_0..].iter().all(|&p| p));
    for (d, data) in &blobs[in_segment_0..] {
        assert_eq!(read_all(&log, d).await.as_ref(), Some(data));
    }
    assert!(!segment::index_path(dir.path(), 0).exists(), "the orphaned index file is removed");
}

#[tokio::test]
async fn evicts_whole_segments_and_keeps_hot_blobs() {
    let dir = tempfile::tempdir().unwrap();
    let max = 8 * SEG;
    let log = DiskLog::open(config(dir.path(), max, SyncPolicy::Never)).unwrap();
    let (hot, hot_data) = blob(0, 3000);
    log.write(&hot, hot_data.clone()).await.unwrap();
    for i in 1..400 {
        let (d, data) = blob(i, 3000);
        log.write(&d, data).await.unwrap();
        // The client keeps asking about the hot blob, as Bazel's FindMissingBlobs does.
        assert_eq!(log.contains(&[hot]).await.unwrap(), vec![true], "hot blob lost after {i} writes");
    }
    let stats = log.stats();
    assert!(stats.bytes <= max, "{} bytes used, budget {max}", stats.bytes);
    assert!(stats.evictions > 0);
    assert_eq!(read_all(&log, &hot).await, Some(hot_data));
    assert!(log.contains(&[blob(1, 3000).0]).await.unwrap() == vec![false], "cold blobs are evicted");
    let files = std::fs::read_dir(dir.path()).unwrap().filter(|e| {
        e.as_ref().unwrap().path().extension().is_some_and(|x| x == "seg")
    });
    assert!(files.count() as u64 <= max / SEG);
}

#[tokio::test]
async fn large_blobs_live_in_files_under_the_same_budget() {
    let dir = tempfile::tempdir().unwrap();
    let max = 8 * SEG;
    let (big, big_data) = blob(7, 3 * SEG as usize);
    {
        let log = DiskLog::open(config(dir.path(), max, SyncPolicy::Always)).unwrap();
        let mut writer = log.writer(&big).await.unwrap();
        for chunk in big_data.chunks(10_000) {
            writer.append(Bytes::copy_from_slice(chunk)).await.unwrap();
        }
        writer.commit().await.unwrap();
        assert_eq!(read_all(&log, &big).await, Some(big_data.clone()));
        let part = log.read(&big, 5, Some(7)).await.unwrap().unwrap().into_bytes().await.unwrap();
        assert_eq!(part, big_data.slice(5..12));

        // An abandoned upload leaves nothing behind.
        let (other, _) = blob(8, 2 * SEG as usize);
        let mut writer = log.writer(&other).await.unwrap();
        writer.append(Bytes::from_static(b"partial")).await.unwrap();
        drop(writer);
        // Removed on a blocking thread: an unlink is not done on the runtime.
        let files = || std::fs::read_dir(dir.path().join("large")).unwrap().count();
        for _ in 0..500 {
            if files() == 1 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(files(), 1);

        // Too large for the budget at all.
        let huge = Digest { size: max, ..other };
        assert!(matches!(log.writer(&huge).await, Err(StoreError::TooLarge { .. })));
    }
    let log = DiskLog::open(config(dir.path(), max, SyncPolicy::Always)).unwrap();
    assert_eq!(log.contains(&[big]).await.unwrap(), vec![true]);
    assert_eq!(read_all(&log, &big).await, Some(big_data));
    // Filling the log evicts the large file in its turn.
    for i in 100..300 {
        let (d, data) = blob(i, 3000);
        log.write(&d, data).await.unwrap();
    }
    assert_eq!(log.contains(&[big]).await.unwrap(), vec![false]);
    assert!(log.stats().bytes <= max);
}

#[tokio::test]
async fn action_cache_entries_are_replaced_by_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let key = DigestFunction::Blake3.digest_of(b"action");
    {
        let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Always)).unwrap();
        log.put(&key, Bytes::from_static(b"first")).await.unwrap();
        log.put(&key, Bytes::from_static(b"second")).await.unwrap();
        assert_eq!(log.get(&key).await.unwrap(), Some(Bytes::from_static(b"second")));
    }
    let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Always)).unwrap();
    assert_eq!(log.get(&key).await.unwrap(), Some(Bytes::from_static(b"second")));
}

#[test]
fn bad_configuration_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path(), 1 << 30, SyncPolicy::Never);
    cfg.max_record = SEG;
    assert!(matches!(DiskLog::open(cfg), Err(StoreError::Config(_))));
    let cfg = config(dir.path(), SEG, SyncPolicy::Never);
    assert!(matches!(DiskLog::open(cfg), Err(StoreError::Config(_))));
}

#[tokio::test]
async fn large_blobs_alone_are_evicted_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let max = 8 * SEG;
    let log = DiskLog::open(config(dir.path(), max, SyncPolicy::Never)).unwrap();
    // Only large blobs: the open segment never rolls, so they all share one segment id.
    let blobs: Vec<_> = (0..12).map(|i| blob(200 + i, SEG as usize)).collect();
    for (i, (d, data)) in blobs.iter().enumerate() {
        log.write(d, data.clone()).await.unwrap();
        assert_eq!(log.contains(&[*d]).await.unwrap(), vec![true], "the blob just written (#{i}) was evicted");
    }
    let present = log.contains(&blobs.iter().map(|(d, _)| *d).collect::<Vec<_>>()).await.unwrap();
    let kept = present.iter().filter(|&&p| p).count();
    assert!(kept >= 6, "{present:?}");
    assert!(present[12 - kept..].iter().all(|&p| p), "the newest survive: {present:?}");
    assert!(present[..12 - kept].iter().all(|&p| !p), "the oldest go first: {present:?}");
}

#[tokio::test]
async fn a_burst_of_writes_shares_one_group_commit() {
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Always)).unwrap();
    const BURSTS: u32 = 20;
    const BURST: u32 = 15;
    for burst in 0..BURSTS {
        // As a BatchUpdateBlobs call writes its blobs: concurrently, from one task.
        let blobs: Vec<_> = (0..BURST).map(|i| blob(burst * BURST + i, 1000)).collect();
        let writes = blobs.iter().map(|(d, data)| log.write(d, data.clone()));
        for result in futures::future::join_all(writes).await {
            result.unwrap();
        }
    }
    // One sync per burst on a quiet machine (a sync per write would be 15). On a loaded one the sync
    // thread may stop waiting for a descheduled writer thread (SETTLE_AT_MOST) and split a burst.
    let syncs = log.stats().syncs;
    assert!((BURSTS as u64..=2 * BURSTS as u64).contains(&syncs), "{syncs} syncs for {BURSTS} bursts of {BURST} writes");
}

#[tokio::test]
async fn settling_waits_for_the_appends_already_sent() {
    use std::time::Duration;
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path(), 1 << 30, SyncPolicy::Never)).unwrap();
    let appender = log.inner.appender.get().unwrap();
    for i in 0..500 {
        let (digest, data) = blob(i, 100);
        appender.append_detached(digest.key(), Form::Identity, data);
    }
    appender.settle(Duration::from_secs(10));
    assert_eq!(log.inner.latest().0, 500, "settle returned before the writer had appended what was sent");
}


#[tokio::test]
async fn a_batch_is_appended_in_runs_across_a_roll_and_survives_restart() {
    const BIG_SEG: u64 = 4 << 20;
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskConfig { segment_size: BIG_SEG, max_record: BIG_SEG / 4, ..config(dir.path(), 64 << 20, SyncPolicy::Always) };
    // Small records (gathered into runs longer than RUN_LIMIT), records too long to gather (written
    // where they are) in between, a large blob (a file of its own), one blob twice, and one stored
    // before: together more than a segment, so the batch crosses a roll.
    let mut batch: Vec<(Digest, Bytes)> = (0..900).map(|i| blob(i, 3001)).collect();
    for i in 0..30 {
        batch.insert(i * 20, blob(10_000 + i as u32, appender::COALESCE_LIMIT + 1001));
    }
    batch.push(blob(20_000, (BIG_SEG / 4 + 1) as usize));
    batch.push(batch[5].clone());
    let held = blob(30_000, 500);
    batch.insert(100, held.clone());
    assert!(batch.iter().map(|(_, b)| b.len() as u64).filter(|&n| n <= BIG_SEG / 4).sum::<u64>() > BIG_SEG);
    {
        let log = DiskLog::open(cfg.clone()).unwrap();
        log.write(&held.0, held.1.clone()).await.unwrap();
        let outcomes = log.write_many(batch.clone()).await;
        assert_eq!(outcomes.len(), batch.len());
        assert!(outcomes.iter().all(Result::is_ok), "{:?}", outcomes.iter().find(|o| o.is_err()));
        assert!(log.inner.state.read().segments.len() >= 2, "the batch crossed a roll");
        for (d, data) in &batch {
            assert_eq!(read_all(&log, d).await.as_ref(), Some(data), "blob {d} as written");
        }
    }
    let log = DiskLog::open(cfg).unwrap();
    for (d, data) in &batch {
        assert_eq!(read_all(&log, d).await.as_ref(), Some(data), "blob {d} after a restart");
    }
}

#[tokio::test]
async fn a_large_blob_sent_in_pieces_of_any_size_is_written_whole_and_in_place() {
    // Bazel's 16 KiB pieces, odd sizes and a piece over a checksum chunk: every byte must land at
    // its offset and every chunk's checksum match, across restarts too.
    let dir = tempfile::tempdir().unwrap();
    let (digest, data) = blob(21, (7 << 20) / 2 + 3);
    let sizes = [16 << 10, 7, (3 << 20) / 2, 1, 16 << 10];
    {
        let log = DiskLog::open(config(dir.path(), 64 << 20, SyncPolicy::Always)).unwrap();
        let mut writer = log.writer(&digest).await.unwrap();
        let mut at = 0;
        for size in sizes.iter().cycle() {
            if at == data.len() {
                break;
            }
            let end = (at + size).min(data.len());
            writer.append(data.slice(at..end)).await.unwrap();
            at = end;
        }
        writer.commit().await.unwrap();
        assert_eq!(read_all(&log, &digest).await, Some(data.clone()));
    }
    // The header's checksum of the whole payload (combined from the chunks') is the payload's.
    let header = large::read_large_header(&large::large_path(&dir.path().join("large"), &digest.key())).unwrap();
    assert_eq!((header.payload_len, header.payload_crc), (data.len() as u64, crc32fast::hash(&data)));
    let log = DiskLog::open(config(dir.path(), 64 << 20, SyncPolicy::Always)).unwrap();
    assert_eq!(read_all(&log, &digest).await, Some(data.clone()));
    let part = log.read(&digest, (3 << 20) - 5, Some(10)).await.unwrap().unwrap().into_bytes().await.unwrap();
    assert_eq!(part, data.slice((3 << 20) - 5..(3 << 20) + 5));
}

#[tokio::test]
async fn a_record_that_arrives_in_many_pieces_is_written_from_them_whole() {
    // More pieces than one pwritev takes, of odd sizes, for a record too long to gather with
    // others: it is written from the pieces where they are.
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskConfig { segment_size: 4 << 20, max_record: 1 << 20, ..config(dir.path(), 64 << 20, SyncPolicy::Always) };
    let (digest, data) = blob(40, 3000 * 97 + 5);
    assert!(data.len() > appender::COALESCE_LIMIT);
    {
        let log = DiskLog::open(cfg.clone()).unwrap();
        let mut writer = log.writer(&digest).await.unwrap();
        for at in (0..data.len()).step_by(97) {
            writer.append(data.slice(at..(at + 97).min(data.len()))).await.unwrap();
        }
        writer.commit().await.unwrap();
        assert_eq!(read_all(&log, &digest).await, Some(data.clone()));
    }
    let log = DiskLog::open(cfg).unwrap();
    assert_eq!(read_all(&log, &digest).await, Some(data), "after a restart (its header checks out)");
}

/// FindMissingBlobs of a large blob in the oldest quarter of a nearly full log renews its place in
/// the eviction order without reading its file (a 1 GiB blob was read and checksummed whole for it).
/// Its bytes are checked when they are read, as they always were.
#[tokio::test]
async fn finding_an_old_large_blob_renews_it_without_reading_it() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path(), 16 * SEG, SyncPolicy::Never)).unwrap();
    let (big, big_data) = blob(900, 100_000);
    log.write(&big, big_data).await.unwrap();
    let mut i = 0;
    while log.inner.writer.lock().open.id < 11 {
        let (d, data) = blob(i, 3000);
        log.write(&d, data).await.unwrap();
        i += 1;
    }
    let seq = |log: &DiskLog| log.inner.state.read().large.get(&big.key()).map(|e| e.seq);
    assert_eq!(seq(&log), Some(0));
    assert!(log.is_old(0), "12 of 16 segments' worth in use: the first is in the oldest quarter");
    // Damage the payload: a check of it would drop the blob.
    let file = std::fs::OpenOptions::new().write(true).open(large::large_path(&dir.path().join("large"), &big.key())).unwrap();
    file.write_all_at(b"damage", (record::HEADER_LEN + 50_000) as u64).unwrap();
    assert_eq!(log.contains(&[big]).await.unwrap(), vec![true]);
    assert_eq!(seq(&log), Some(11), "renewed to the open segment, and not read");
    assert!(log.read(&big, 0, None).await.unwrap().is_none(), "a read checks it");
}

/// A long read of an old large blob renews it and is checked as it is sent, like any long read of a
/// large blob (it was checked whole first, on a blocking thread, before its first byte).
#[tokio::test]
async fn a_long_read_of_an_old_large_blob_renews_it_and_streams() {
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path(), 160 * SEG, SyncPolicy::Never)).unwrap();
    let (big, big_data) = blob(901, (3 << 20) + 7);
    log.write(&big, big_data.clone()).await.unwrap();
    let mut i = 0;
    while !log.is_old(0) {
        let (d, data) = blob(i, 3000);
        log.write(&d, data).await.unwrap();
        i += 1;
    }
    let Some(blob) = log.read(&big, 0, None).await.unwrap() else { panic!("present") };
    assert!(matches!(blob, Blob::Stream(_)), "checked as it is sent");
    assert!(blob.into_bytes().await.unwrap() == big_data);
    let open = log.inner.writer.lock().open.id;
    assert_eq!(log.inner.state.read().large.get(&big.key()).map(|e| e.seq), Some(open), "renewed");
}

/// What large uploads reserve is given back whole: by the blob once it is published, by the upload
/// when it is abandoned.
#[tokio::test]
async fn large_uploads_give_back_what_they_reserved() {
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path(), 64 * SEG, SyncPolicy::Always)).unwrap();
    let reserved = |log: &DiskLog| log.inner.writer.lock().reserved_large;
    for i in 0..3 {
        let (d, data) = blob(960 + i, 100_000 + i as usize);
        let mut writer = log.writer(&d).await.unwrap();
        writer.append(data.slice(..30_000)).await.unwrap();
        writer.append(data.slice(30_000..)).await.unwrap();
        assert_eq!(reserved(&log), data.len() as u64);
        writer.commit().await.unwrap();
        assert_eq!(reserved(&log), 0, "published blob {i}");
    }
    let (d, data) = blob(970, 100_000);
    let mut writer = log.writer(&d).await.unwrap();
    writer.append(data.slice(..50_000)).await.unwrap();
    drop(writer);
    assert_eq!(reserved(&log), 0, "abandoned");
    assert_eq!(log.stats().bytes, (100_000 + 100_001 + 100_002) as u64 + log.inner.state.read().segments.len() as u64 * SEG);
}
