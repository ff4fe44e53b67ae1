//! Criterion benchmarks of the storage tiers: writes (concurrent, and as one batch) and reads of 4 KiB
//! and 1 MiB blobs into the disk log (group commit, into a fresh log and into a full one that reuses
//! its segment files) and the memory tier, uploads of 16 and 64 MiB streamed into the disk log in
//! 16 KiB pieces, `contains` of 10,000 digests (also on a memory tier
//! holding 500,000 blobs), the memory tier's worst-case eviction sweep, and start-up of a disk log
//! holding 1,000,000 blobs. Run with `cargo bench --bench storage`; the start-up benchmark also
//! prints the index's memory per blob.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use strata_backends::{DiskConfig, DiskLog, SyncPolicy};
use strata_backends::MemoryStore;
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

/// Writes `batch` blobs per iteration: concurrently, as many clients uploading at once do, and as
/// one batch.
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
    // The same blobs as one batch (a BatchUpdateBlobs call's): one append job, one group commit.
    group.bench_function(BenchmarkId::new("write-many", format!("{}KiB-x{batch}", size / 1024)), |b| {
        b.to_async(&rt).iter(|| {
            let first = counter.fetch_add(batch, Ordering::Relaxed);
            let blobs: Vec<(Digest, Bytes)> = (first..first + batch).map(|n| (fake_digest(n, size as u64), payload.clone())).collect();
            let store = store.clone();
            async move {
                for outcome in store.write_many(blobs).await {
                    outcome.unwrap();
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
    // The same group-commit writes into a log that has wrapped: every segment it opens is the file of
    // one it evicted, whose blocks were written before.
    let dir = tempfile::tempdir().unwrap();
    let cfg = DiskConfig { max_size: 1 << 30, ..disk_config(dir.path(), SyncPolicy::Always) };
    let log = DiskLog::open(cfg.clone()).unwrap();
    runtime().block_on(async {
        let payload = Bytes::from(vec![0x77; 1 << 20]);
        for n in 0..(cfg.max_size * 5 / 4) >> 20 {
            log.write(&fake_digest(1 << 50 | n, 1 << 20), payload.clone()).await.unwrap();
        }
    });
    let log: Arc<dyn BlobStore> = Arc::new(log);
    for (size, batch) in [(4 * 1024, 15), (4 * 1024, 256), (4 * 1024, 1000), (1 << 20, 16)] {
        bench_writes(c, "disk-log-full-group-commit", log.clone(), size, batch);
    }
}

/// One upload streamed through a writer in Bazel's 16 KiB pieces, each a slice of one buffer as
/// pieces of h2's receive buffers are: a 16 MiB blob (a segment record) and a 64 MiB one (a file of
/// its own, above `max_record`).
fn bench_streamed(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn BlobStore> = Arc::new(DiskLog::open(disk_config(dir.path(), SyncPolicy::Always)).unwrap());
    let counter = AtomicU64::new(1 << 40);
    let mut group = c.benchmark_group("disk-log-streamed");
    group.sample_size(10);
    for size in [16usize << 20, 64 << 20] {
        let payload = Bytes::from(vec![0x3c; size]);
        group.throughput(Throughput::Bytes(size as u64));
        group.bench_function(BenchmarkId::new("16KiB-pieces", format!("{}MiB", size >> 20)), |b| {
            b.to_async(&rt).iter(|| {
                let digest = fake_digest(counter.fetch_add(1, Ordering::Relaxed), size as u64);
                let (store, payload) = (store.clone(), payload.clone());
                async move {
                    let mut writer = store.writer(&digest).await.unwrap();
                    for at in (0..payload.len()).step_by(16 << 10) {
                        writer.append(payload.slice(at..(at + (16 << 10)).min(payload.len()))).await.unwrap();
                    }
                    writer.commit().await.unwrap();
                }
            })
        });
    }
    group.finish();
}

fn memory(c: &mut Criterion) {
    for (size, batch) in [(4 * 1024, 256), (1 << 20, 16)] {
        bench_writes(c, "memory", Arc::new(MemoryStore::new(1 << 30)), size, batch);
    }
    for size in [4 * 1024, 1 << 20] {
        bench_reads_and_contains(c, "memory", Arc::new(MemoryStore::new(1 << 30)), size);
    }
    bench_contains_when_full(c);
    bench_insert_that_evicts_a_block(c);
}

/// The memory tier's worst wait: a full tier of 4 KiB entries, and the one insertion that evicts its
/// oldest block, some 15,000 entries taken out of the map under the write lock. The time of that
/// insertion is what other callers of the tier may wait for.
fn bench_insert_that_evicts_a_block(c: &mut Criterion) {
    // 2 GiB holds about 500,000 blobs of 4 KiB with their overhead; more are written, so the tier is
    // full and every block's worth of insertions evicts one.
    const WRITTEN: u64 = 520_000;
    let rt = runtime();
    let store = Arc::new(MemoryStore::new(2 << 30));
    let payload = Bytes::from(vec![0x42; 4096]);
    let next = AtomicU64::new(0);
    let fresh = || fake_digest(next.fetch_add(1, Ordering::Relaxed), 4096);
    rt.block_on(async {
        for _ in 0..WRITTEN {
            store.write(&fresh(), payload.clone()).await.unwrap();
        }
    });
    let mut group = c.benchmark_group("memory");
    group.sample_size(10);
    group.bench_function("insert-evicting-a-block-of-4k-entries", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let (store, payload) = (store.clone(), payload.clone());
            let fresh = &fresh;
            async move {
                let mut spent = Duration::ZERO;
                for _ in 0..iters {
                    // Up to the insertion that evicts; only that one is timed.
                    loop {
                        let evicted = store.stats().evictions;
                        let start = std::time::Instant::now();
                        store.write(&fresh(), payload.clone()).await.unwrap();
                        let took = start.elapsed();
                        if store.stats().evictions > evicted {
                            spent += took;
                            break;
                        }
                    }
                }
                spent
            }
        })
    });
    group.finish();
}

/// FindMissingBlobs against a memory tier that has been filling for a while: 500,000 entries (far
/// beyond the CPU's caches, as in a running server), 10,000 digests asked, half of them present.
fn bench_contains_when_full(c: &mut Criterion) {
    const HELD: u64 = 500_000;
    let rt = runtime();
    let store = Arc::new(MemoryStore::new(8 << 30));
    let payload = Bytes::from(vec![0x42; 4096]);
    rt.block_on(async {
        for n in 0..HELD {
            store.write(&fake_digest(n, 4096), payload.clone()).await.unwrap();
        }
    });
    // Every 97th entry, spread over the whole table, and as many that were never written.
    let asked: Vec<Digest> = (0..5_000u64).flat_map(|i| [fake_digest(i * 97 % HELD, 4096), fake_digest(HELD + i, 4096)]).collect();
    let mut group = c.benchmark_group("memory");
    group.throughput(Throughput::Elements(asked.len() as u64));
    group.bench_function("contains-500k-held/10000", |b| {
        b.to_async(&rt).iter(|| {
            let store = store.clone();
            let asked = &asked;
            async move { assert_eq!(store.contains(asked).await.unwrap().iter().filter(|&&x| x).count(), 5_000) }
        })
    });
    group.finish();
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
    targets = disk, bench_streamed, memory, startup
}
criterion_main!(benches);
