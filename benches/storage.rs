//! Criterion benchmarks of the storage tiers: writes and reads of 4 KiB and 1 MiB blobs into the disk
//! log (group commit) and the memory tier, `contains` of 10,000 digests, and start-up of a disk log
//! holding 1,000,000 blobs. Run with `cargo bench --bench storage`; the start-up benchmark also
//! prints the index's memory per blob.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strata_backends::{DiskConfig, DiskLog, SyncPolicy};
use strata_backends::{Admission, MemoryStore};
use strata_backends::{BlobStore, Digest, DigestFunction};

/// Distinct digests without hashing: the tiers trust their caller to have verified the bytes, so
/// these benchmarks measure storage, not SHA-256.
fn fake_digest(n: u64, size: u64) -> Digest {
    let mut hash = [0u8; 32];
    hash[..8].copy_from_slice(&n.wrapping_mul(0x9E37_79B9_7F4A_7C15).to_le_bytes());
    hash[8..16].copy_from_slice(&n.to_le_bytes());
    Digest { function: DigestFunction::Sha256, hash, size }
}

fn disk_config(dir: &std::path::Path, sync: SyncPolicy) -> DiskConfig {
    DiskConfig { path: dir.to_path_buf(), max_size: 4 << 30, segment_size: 256 << 20, max_record: 16 << 20, sync, compression: None }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap()
}

/// Writes `batch` blobs concurrently per iteration, as many clients uploading at once do.
fn bench_writes(c: &mut Criterion, name: &str, store: Arc<dyn BlobStore>, size: usize, batch: u64) {
    let rt = runtime();
    let payload = Bytes::from(vec![0x5a; size]);
    let counter = AtomicU64::new(0);
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(batch));
    group.bench_function(BenchmarkId::new("write", format!("{}KiB-x{batch}", size / 1024)), |b| {
        b.to_async(&rt).iter(|| {
            let first = counter.fetch_add(batch, Ordering::Relaxed);
            let store = store.clone();
            let payload = payload.clone();
            async move {
                let writes = (first..first + batch).map(|n| {
                    let store = store.clone();
                    let payload = payload.clone();
                    tokio::spawn(async move { store.write(&fake_digest(n, payload.len() as u64), payload).await })
                });
                for w in futures::future::join_all(writes).await {
                    w.unwrap().unwrap();
                }
            }
        })
    });
    group.finish();
}

fn bench_reads_and_contains(c: &mut Criterion, name: &str, store: Arc<dyn BlobStore>, size: usize) {
    let rt = runtime();
    let payload = Bytes::from(vec![0x33; size]);
    let n = if size > 64 * 1024 { 200 } else { 10_000 };
    let digests: Vec<Digest> = (0..n).map(|i| fake_digest(1 << 40 | i, size as u64)).collect();
    rt.block_on(async {
        for d in &digests {
            store.write(d, payload.clone()).await.unwrap();
        }
    });
    let mut group = c.benchmark_group(name);
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function(BenchmarkId::new("read", format!("{}KiB", size / 1024)), |b| {
        b.to_async(&rt).iter(|| {
            i = (i + 1) % digests.len();
            let d = digests[i];
            let store = store.clone();
            async move { store.read(&d, 0, None).await.unwrap().unwrap().into_bytes().await.unwrap().len() }
        })
    });
    if size <= 64 * 1024 {
        group.throughput(Throughput::Elements(digests.len() as u64));
        group.bench_function("contains/10000", |b| {
            b.to_async(&rt).iter(|| {
                let store = store.clone();
                let digests = &digests;
                async move { assert!(store.contains(digests).await.unwrap().iter().all(|&x| x)) }
            })
        });
    }
    group.finish();
}

fn disk(c: &mut Criterion) {
    // 15 small blobs at once: one BatchUpdateBlobs call of a build.
    for (size, batch) in [(4 * 1024, 15), (4 * 1024, 256), (1 << 20, 16)] {
        let dir = tempfile::tempdir().unwrap();
        let log = DiskLog::open(disk_config(dir.path(), SyncPolicy::Always)).unwrap();
        bench_writes(c, "disk-log-group-commit", Arc::new(log), size, batch);
        let dir = tempfile::tempdir().unwrap();
        let log = DiskLog::open(disk_config(dir.path(), SyncPolicy::Interval(Duration::from_millis(100)))).unwrap();
        bench_writes(c, "disk-log-sync-every-100ms", Arc::new(log), size, batch);
    }
    for size in [4 * 1024, 1 << 20] {
        let dir = tempfile::tempdir().unwrap();
        let log = DiskLog::open(disk_config(dir.path(), SyncPolicy::Never)).unwrap();
        bench_reads_and_contains(c, "disk-log", Arc::new(log), size);
    }
}

fn memory(c: &mut Criterion) {
    for (size, batch) in [(4 * 1024, 256), (1 << 20, 16)] {
        bench_writes(c, "memory", Arc::new(MemoryStore::new(1 << 30, Admission::Always)), size, batch);
    }
    for size in [4 * 1024, 1 << 20] {
        bench_reads_and_contains(c, "memory", Arc::new(MemoryStore::new(1 << 30, Admission::Always)), size);
    }
}

/// Opening a log of 1,000,000 blobs: index files of sealed segments plus a scan of the open one.
fn startup(c: &mut Criterion) {
    const BLOBS: u64 = 1_000_000;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = disk_config(dir.path(), SyncPolicy::Never);
    cfg.segment_size = 64 << 20;
    let rt = runtime();
    rt.block_on(async {
        let log = DiskLog::open(cfg.clone()).unwrap();
        let payload = Bytes::from(vec![7u8; 100]);
        for n in 0..BLOBS {
            log.write(&fake_digest(n, 100), payload.clone()).await.unwrap();
        }
        log.flush().unwrap();
    });
    {
        let log = DiskLog::open(cfg.clone()).unwrap();
        let (blobs, bytes) = log.index_usage();
        println!("disk log index: {blobs} blobs, {bytes} bytes, {:.1} bytes per blob", bytes as f64 / blobs as f64);
    }
    let mut group = c.benchmark_group("disk-log");
    group.sample_size(10).measurement_time(Duration::from_secs(20));
    group.bench_function("open/1000000-blobs", |b| b.iter(|| DiskLog::open(cfg.clone()).unwrap()));
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = disk, memory, startup
}
criterion_main!(benches);
