//! The disk log with compression: what is stored compressed and what is not, identity and
//! compressed reads at chunk boundaries, restart, a torn compressed tail and copy-forward.

use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use futures::StreamExt;

use super::*;
use crate::digest::DigestFunction;
use crate::zstd_chunks::CHUNK;

const SEG: u64 = 16 << 20;

fn config(dir: &Path) -> DiskConfig {
    DiskConfig {
        path: dir.to_path_buf(),
        max_size: 4 * SEG,
        segment_size: SEG,
        max_record: SEG / 4,
        sync: SyncPolicy::Always,
        compression: Some(Settings::DEFAULT),
    }
}

/// Text-like bytes that zstd compresses well but not to nothing.
fn text(seed: u32, len: usize) -> (Digest, Bytes) {
    let words = ["alpha ", "beta ", "gamma ", "delta ", "epsilon ", "zeta\n", "eta ", "theta "];
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        data.extend_from_slice(words[(state % 8) as usize].as_bytes());
    }
    data.truncate(len);
    (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
}

/// Bytes zstd cannot shrink (xorshift64).
fn noise(len: usize) -> (Digest, Bytes) {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 32) as u8
        })
        .collect();
    (DigestFunction::Sha256.digest_of(&data), Bytes::from(data))
}

async fn collect(blob: Blob) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunks = blob.into_stream();
    while let Some(chunk) = chunks.next().await {
        out.extend_from_slice(&chunk.unwrap());
    }
    out
}

async fn read(log: &DiskLog, d: &Digest, offset: u64, limit: Option<u64>) -> Vec<u8> {
    collect(log.read(d, offset, limit).await.unwrap().unwrap()).await
}

async fn read_zstd(log: &DiskLog, d: &Digest, offset: u64) -> Option<Vec<u8>> {
    let frames = collect(log.read_zstd(d, offset).await.unwrap()?).await;
    Some(zstd::stream::decode_all(&frames[..]).unwrap())
}

#[tokio::test]
async fn compressible_blobs_are_stored_compressed_and_read_back_in_any_range() {
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path())).unwrap();
    let (d, data) = text(1, 3 * CHUNK as usize + 777);
    log.write(&d, data.clone()).await.unwrap();
    let stats = log.stats();
    assert_eq!(stats.bytes_written, data.len() as u64);
    assert!(stats.stored_bytes_written * 2 < stats.bytes_written, "{stats:?}");

    assert_eq!(read(&log, &d, 0, None).await, data);
    for (offset, limit) in [(0, 1), (CHUNK - 1, 2), (CHUNK, CHUNK), (CHUNK + 5, 2 * CHUNK), (3 * CHUNK, 777), (3 * CHUNK + 777, 0)] {
        let want = &data[offset as usize..(offset + limit) as usize];
        assert_eq!(read(&log, &d, offset, Some(limit)).await, want, "offset {offset} limit {limit}");
    }
    for offset in [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 776, data.len() as u64] {
        assert_eq!(read_zstd(&log, &d, offset).await.unwrap(), &data[offset as usize..], "compressed from {offset}");
    }
    assert_eq!(log.contains(&[d, Digest { size: d.size - 1, ..d }]).await.unwrap(), vec![true, false]);
}

#[tokio::test]
async fn small_and_incompressible_blobs_stay_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path())).unwrap();
    let (small, small_data) = text(2, 1000);
    let (random, random_data) = noise(200_000);
    log.write(&small, small_data.clone()).await.unwrap();
    log.write(&random, random_data.clone()).await.unwrap();
    assert_eq!(log.stats().stored_bytes_written, log.stats().bytes_written);
    assert!(log.read_zstd(&small, 0).await.unwrap().is_none());
    assert!(log.read_zstd(&random, 0).await.unwrap().is_none());
    assert_eq!(read(&log, &random, 0, None).await, random_data);
}

#[tokio::test]
async fn compressed_records_survive_restart_and_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let blobs: Vec<_> = (0..3).map(|i| text(10 + i, 300_000)).collect();
    let end;
    {
        let log = DiskLog::open(config(dir.path())).unwrap();
        for (d, data) in &blobs {
            log.write(d, data.clone()).await.unwrap();
        }
        end = log.inner.writer.lock().offset;
    }
    {
        let log = DiskLog::open(config(dir.path())).unwrap();
        for (d, data) in &blobs {
            assert_eq!(read(&log, d, 0, None).await, *data);
        }
    }
    // A crash inside the last record, and a damaged first one: the middle one is found again by
    // the scan, which must decompress it to check its hash.
    let file = std::fs::OpenOptions::new().write(true).open(segment::segment_path(dir.path(), 0)).unwrap();
    file.write_all_at(&[0u8; 64], end - 64).unwrap();
    file.write_all_at(b"XXXX", record::HEADER_LEN as u64 + 100).unwrap();
    drop(file);
    let log = DiskLog::open(config(dir.path())).unwrap();
    assert!(log.read(&blobs[0].0, 0, None).await.unwrap().is_none(), "a damaged record is never served");
    assert_eq!(read(&log, &blobs[1].0, 0, None).await, blobs[1].1);
    assert_eq!(read_zstd(&log, &blobs[1].0, 0).await.unwrap(), blobs[1].1);
    assert!(log.read(&blobs[2].0, 0, None).await.unwrap().is_none(), "a torn record is never served");
    assert_eq!(log.contains(&[blobs[0].0, blobs[1].0, blobs[2].0]).await.unwrap(), vec![false, true, false]);
}

#[tokio::test]
async fn hot_compressed_blobs_are_copied_forward_as_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let log = DiskLog::open(config(dir.path())).unwrap();
    let (hot, hot_data) = text(20, 500_000);
    log.write(&hot, hot_data.clone()).await.unwrap();
    let stored_once = log.stats().stored_bytes_written;
    // Fill the log past three quarters with blobs that do not compress, reading the hot one back
    // each time it sits in the oldest quarter.
    for i in 0..100u32 {
        let mut data = noise(1 << 20).1.to_vec();
        data[..4].copy_from_slice(&i.to_le_bytes());
        let d = DigestFunction::Sha256.digest_of(&data);
        log.write(&d, Bytes::from(data)).await.unwrap();
        assert!(log.contains(&[hot]).await.unwrap()[0], "the hot blob was evicted after {i} writes");
    }
    assert!(log.stats().evictions > 0, "the test must evict");
    assert_eq!(read(&log, &hot, 0, None).await, hot_data);
    assert_eq!(read_zstd(&log, &hot, 0).await.unwrap(), hot_data);
    assert!(stored_once * 2 < hot_data.len() as u64);
}
