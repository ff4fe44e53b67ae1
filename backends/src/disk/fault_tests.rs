//! Regression tests for the disk log faults an adversarial run found: a damaged record cost every
//! record after it, damaged or truncated records stayed "present" while unreadable (phantoms), and an
//! upload's declared size evicted the log before any byte arrived.

use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;

use super::*;
use crate::digest::DigestFunction;

const SEG: u64 = 64 * 1024;

fn config(dir: &Path, max_size: u64) -> DiskConfig {
    DiskConfig { path: dir.to_path_buf(), max_size, segment_size: SEG, max_record: SEG / 4, sync: SyncPolicy::Always, compression: None }
}

fn blob(i: u32, len: usize) -> (Digest, Bytes) {
    let data: Vec<u8> = (0..len).map(|j| (i as usize * 7 + j * 13) as u8).collect();
    (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
}

fn flip(path: &Path, offset: u64) {
    let file = std::fs::OpenOptions::new().read(true).write(true).open(path).unwrap();
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, offset).unwrap();
    file.write_all_at(&[byte[0] ^ 0x40], offset).unwrap();
}

async fn readable(log: &DiskLog, d: &Digest) -> bool {
    log.read(d, 0, None).await.unwrap().is_some()
}

#[tokio::test]
async fn a_damaged_record_loses_only_itself_in_the_open_and_in_an_unindexed_segment() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..40).map(|i| blob(i, 3000)).collect();
    let record = record::record_len(3000);
    {
        let log = DiskLog::open(config(dir.path(), 1 << 30)).unwrap();
        for (d, data) in &blobs {
            log.write(d, data.clone()).await.unwrap();
        }
    }
    let per_segment = (SEG / record) as usize;
    assert!(blobs.len() > per_segment, "the test needs a sealed segment and an open one");
    // One flipped payload byte in record 3 of the sealed segment (whose index file is gone, so it is
    // scanned) and one in record 2 of the open segment.
    flip(&segment::segment_path(dir.path(), 0), 3 * record + 100);
    std::fs::remove_file(segment::index_path(dir.path(), 0)).unwrap();
    flip(&segment::segment_path(dir.path(), 1), 2 * record + 100);

    let log = DiskLog::open(config(dir.path(), 1 << 30)).unwrap();
    let lost = [3, per_segment + 2];
    for (i, (d, data)) in blobs.iter().enumerate() {
        let got = log.read(d, 0, None).await.unwrap();
        if lost.contains(&i) {
            assert!(got.is_none(), "damaged blob {i} is never served");
        } else {
            assert_eq!(got.unwrap().into_bytes().await.unwrap(), data, "intact blob {i} survives");
        }
    }
    // New writes land after the last intact record and survive another restart.
    let (d, data) = blob(99, 500);
    log.write(&d, data.clone()).await.unwrap();
    drop(log);
    let log = DiskLog::open(config(dir.path(), 1 << 30)).unwrap();
    assert_eq!(log.read(&d, 0, None).await.unwrap().unwrap().into_bytes().await.unwrap(), data);
    assert!(readable(&log, &blobs[blobs.len() - 1].0).await);
}

#[tokio::test]
async fn damaged_headers_and_truncated_segments_leave_no_phantoms_and_a_rewrite_heals() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..30).map(|i| blob(i, 3000)).collect();
    let record = record::record_len(3000);
    let log = DiskLog::open(config(dir.path(), 1 << 30)).unwrap();
    for (d, data) in &blobs {
        log.write(d, data.clone()).await.unwrap();
    }
    // A flipped bit in the header of record 1 (the hash), while the server runs.
    flip(&segment::segment_path(dir.path(), 0), record + 20);
    let damaged = blobs[1].0;
    assert_eq!(log.contains(&[damaged]).await.unwrap(), vec![false], "FindMissing says missing, as reads do");
    assert!(!readable(&log, &damaged).await);
    log.write(&damaged, blobs[1].1.clone()).await.unwrap();
    assert_eq!(log.contains(&[damaged]).await.unwrap(), vec![true]);
    assert!(readable(&log, &damaged).await, "the re-upload healed it");
    drop(log);

    // Segment 0 is cut short behind the log's back while its index file survives.
    let seg0 = segment::segment_path(dir.path(), 0);
    std::fs::OpenOptions::new().write(true).open(&seg0).unwrap().set_len(4 * record).unwrap();
    let log = DiskLog::open(config(dir.path(), 1 << 30)).unwrap();
    let cut = blobs[10].0;
    assert_eq!(log.contains(&[cut]).await.unwrap(), vec![false]);
    assert!(!readable(&log, &cut).await);
    assert!(readable(&log, &blobs[2].0).await, "records before the cut still read");
    log.write(&cut, blobs[10].1.clone()).await.unwrap();
    assert!(readable(&log, &cut).await);
}

#[tokio::test]
async fn a_declared_size_evicts_nothing_and_a_full_log_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let max = 16 * SEG;
    let log = DiskLog::open(config(dir.path(), max)).unwrap();
    let small: Vec<_> = (0..100).map(|i| blob(i, 3000)).collect();
    for (d, data) in &small {
        log.write(d, data.clone()).await.unwrap();
    }
    let before = log.stats();
    // An upload that declares 14 segments' worth and sends a few bytes evicts nothing.
    let (declared, _) = blob(500, 1);
    let declared = Digest { size: 14 * SEG, ..declared };
    let mut parked = log.writer(&declared).await.unwrap();
    parked.append(Bytes::from_static(b"a few bytes")).await.unwrap();
    assert_eq!(log.stats().evictions, before.evictions);
    let all: Vec<Digest> = small.iter().map(|(d, _)| *d).collect();
    assert!(log.contains(&all).await.unwrap().iter().all(|&p| p));
    // Other writes go on while it is parked.
    let (other, data) = blob(600, 3000);
    log.write(&other, data).await.unwrap();

    // Two large uploads that each hold more than half the budget: the second cannot get room and
    // is told the log is full (RESOURCE_EXHAUSTED), not an internal error.
    drop(parked);
    let (big_a, a) = blob(700, 9 * SEG as usize);
    let (big_b, b) = blob(701, 9 * SEG as usize);
    let mut wa = log.writer(&big_a).await.unwrap();
    let mut wb = log.writer(&big_b).await.unwrap();
    wa.append(a.clone()).await.unwrap();
    let err = wb.append(b.clone()).await.unwrap_err();
    assert!(matches!(err, StoreError::Full { .. }), "{err}");
    assert!(err.to_string().contains("is full"), "{err}");
    drop(wb);
    wa.commit().await.unwrap();
    assert!(readable(&log, &big_a).await);
    assert!(log.stats().bytes <= max);
}

#[tokio::test]
async fn a_ranged_read_of_a_large_blob_checks_only_the_chunks_it_touches() {
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path(), 64 << 20)).unwrap();
    let chunk = large::CHUNK as usize;
    let (big, data) = blob(800, 3 * chunk + 12_345);
    let mut writer = log.writer(&big).await.unwrap();
    for piece in data.chunks(100_000) {
        writer.append(Bytes::copy_from_slice(piece)).await.unwrap();
    }
    writer.commit().await.unwrap();
    let range = |offset: u64, limit: u64| {
        let log = log.clone();
        async move {
            match log.read(&big, offset, Some(limit)).await.unwrap() {
                Some(blob) => Some(blob.into_bytes().await.unwrap()),
                None => None,
            }
        }
    };
    // Damage one byte in the last chunk.
    let path = large::large_path(&dir.path().join("large"), &big.key());
    flip(&path, (record::HEADER_LEN + 3 * chunk + 10) as u64);
    // A read inside the first chunks is served, from intact bytes only.
    assert_eq!(range(5, 1).await.unwrap(), data.slice(5..6));
    assert_eq!(range(chunk as u64 - 10, 20).await.unwrap(), data.slice(chunk - 10..chunk + 10));
    // A read that touches the damaged chunk is never served, nor is the whole blob.
    assert!(range(3 * chunk as u64, 1).await.is_none());
    assert!(log.read(&big, 0, None).await.unwrap().is_none());

    // Uploaded again and damaged again: a read of more than one chunk is checked a chunk at a time as
    // it is sent, so it serves the intact chunks before the damaged one, then ends in Corrupt.
    log.write(&big, data.clone()).await.unwrap();
    flip(&path, (record::HEADER_LEN + 3 * chunk + 10) as u64);
    let Some(Blob::Stream(pieces)) = log.read(&big, chunk as u64 + 7, None).await.unwrap() else { panic!("read in pieces") };
    let pieces: Vec<Result<Bytes>> = pieces.collect().await;
    let lens: Vec<usize> = pieces.iter().filter_map(|p| p.as_ref().ok().map(Bytes::len)).collect();
    assert_eq!(lens, [chunk - 7, chunk], "the rest of chunk 1, then chunk 2");
    assert!(matches!(pieces.last(), Some(Err(StoreError::Corrupt { reason, .. })) if reason.contains("chunk 3")), "{:?}", pieces.last());
    assert_eq!(log.contains(&[big]).await.unwrap(), vec![false], "dropped once found damaged");
}

#[tokio::test]
async fn large_files_without_a_chunk_table_are_checked_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (big, data) = blob(801, 100_000);
    // The format of earlier versions: the record header, then the payload, nothing after it.
    std::fs::create_dir_all(dir.path().join("large")).unwrap();
    let header = record::Header::new(big.key(), record::Form::Identity, &data.clone().into()).encode();
    let path = large::large_path(&dir.path().join("large"), &big.key());
    std::fs::write(&path, [header.as_slice(), &data].concat()).unwrap();
    let log = DiskLog::open(config(dir.path(), 64 << 20)).unwrap();
    let whole = log.read(&big, 0, None).await.unwrap().unwrap().into_bytes().await.unwrap();
    assert_eq!(whole, data);
    flip(&path, (record::HEADER_LEN + 90_000) as u64);
    assert!(log.read(&big, 0, Some(10)).await.unwrap().is_none(), "no table: any damage fails every read");
}

/// A blob that begins with a marker no other blob holds anywhere, so it can be found in a segment.
fn marked_blob(i: u32, len: usize) -> (Digest, Bytes) {
    let mut data = blob(i, len).1.to_vec();
    data[..16].copy_from_slice(&[&b"marked-"[..], &i.to_le_bytes(), &[0xff; 5]].concat());
    (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
}

/// Where `data` (a marked blob) starts in segment `id`.
fn offset_in_segment(dir: &Path, id: u32, data: &[u8]) -> u64 {
    let bytes = std::fs::read(segment::segment_path(dir, id)).unwrap();
    bytes.windows(16).position(|w| w == &data[..16]).unwrap() as u64
}

/// A record read in more than one piece is checked as it is sent, and a damaged one ends its read in
/// `Corrupt` before its last piece. In the oldest quarter of a nearly full log, where a read copies
/// the record forward, it is checked whole first instead: a damaged record reads as absent and is
/// never copied forward under a new checksum of its damaged bytes.
#[tokio::test]
async fn a_damaged_record_fails_its_read_in_pieces_and_is_checked_whole_before_a_copy_forward() {
    let dir = tempfile::tempdir().unwrap();
    let seg = 8 << 20;
    let cfg = DiskConfig { path: dir.path().to_path_buf(), max_size: 4 * seg, segment_size: seg, max_record: 2 << 20, sync: SyncPolicy::Never, compression: None };
    let log = DiskLog::open(cfg).unwrap();
    let len = (1 << 20) + 500;
    let (old, old_data) = marked_blob(0, len);
    log.write(&old, old_data.clone()).await.unwrap();
    let mut i = 1;
    while log.inner.writer.lock().open.id < 2 {
        let (d, data) = blob(i, len);
        log.write(&d, data).await.unwrap();
        i += 1;
    }
    let (young, young_data) = marked_blob(i, len);
    log.write(&young, young_data.clone()).await.unwrap();
    assert!(log.is_old(0) && !log.is_old(2), "three segments of four: the first is in the oldest quarter");

    flip(&segment::segment_path(dir.path(), 2), offset_in_segment(dir.path(), 2, &young_data) + 10);
    let Some(Blob::Stream(pieces)) = log.read(&young, 0, None).await.unwrap() else { panic!("read in pieces") };
    let pieces: Vec<Result<Bytes>> = pieces.collect().await;
    assert_eq!(pieces.len(), 2, "the first piece, then the error in place of the last");
    assert!(matches!(&pieces[1], Err(StoreError::Corrupt { .. })), "{:?}", pieces.iter().map(|p| p.as_ref().map(Bytes::len)).collect::<Vec<_>>());
    assert_eq!(log.contains(&[young]).await.unwrap(), vec![false], "dropped once found damaged");

    flip(&segment::segment_path(dir.path(), 0), offset_in_segment(dir.path(), 0, &old_data) + 10);
    assert!(log.read(&old, 0, None).await.unwrap().is_none(), "checked whole: absent, not a read that fails");
    assert_eq!(log.contains(&[old]).await.unwrap(), vec![false], "dropped, and nothing was copied forward");
}

/// A large upload's piece never waits for the log's writer on the runtime: the writer holds its lock
/// while it writes, and while it syncs a sealed segment or deletes evicted ones. With the lock held
/// elsewhere, the piece waits off the runtime, and the runtime (one thread here) goes on.
#[tokio::test(flavor = "current_thread")]
async fn a_large_upload_waits_for_the_writer_off_the_runtime() {
    use std::sync::mpsc;
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path(), 64 << 20)).unwrap();
    let (big, data) = blob(950, 200_000);
    let mut writer = log.writer(&big).await.unwrap();
    let (held_tx, held) = mpsc::channel();
    let (release, release_rx) = mpsc::channel::<()>();
    let holder = {
        let log = log.clone();
        std::thread::spawn(move || {
            let _writer = log.inner.writer.lock();
            held_tx.send(()).unwrap();
            // Only the runtime sends this, and only if the append left it free to.
            release_rx.recv_timeout(std::time::Duration::from_secs(10)).is_ok()
        })
    };
    held.recv().unwrap();
    let first = data.slice(..100_000);
    let append = tokio::spawn(async move { writer.append(first).await.map(|()| writer) });
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    assert!(!append.is_finished(), "the piece waits for room while the writer is busy");
    release.send(()).unwrap();
    assert!(holder.join().unwrap(), "the runtime was free while the piece waited");
    let mut writer = append.await.unwrap().unwrap();
    writer.append(data.slice(100_000..)).await.unwrap();
    writer.commit().await.unwrap();
    assert!(log.read(&big, 0, None).await.unwrap().unwrap().into_bytes().await.unwrap() == data);
}
