//! Compression at rest on real build outputs: the files of this machine's headers and libraries
//! (object files, archives, shared objects) are written into a disk log with compression off and
//! with zstd at levels 1, 3 and 9, then read back whole. It reports the bytes stored against the bytes
//! written and the CPU each way per GB, which is what the disk tier's default level is chosen from.
//!
//! Run with `cargo bench --bench corpus`. `STRATA_CORPUS` names other directories (colon-separated)
//! and `STRATA_CORPUS_BYTES` bounds the total read (default 256 MB).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use strata_backends::zstd_chunks::Settings;
use strata_backends::{BlobStore, Digest, DigestFunction, DiskConfig, DiskLog, SyncPolicy};

const MAX_RECORD: u64 = 16 << 20;

/// Headers as they are; under the library directories only what a build makes (.o, .a, .so).
fn wanted(path: &Path, headers: bool) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    headers || name.ends_with(".o") || name.ends_with(".a") || name.contains(".so")
}

fn walk(dir: &Path, headers: bool, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    let mut entries: Vec<_> = entries.flatten().collect();
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let Ok(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            walk(&entry.path(), headers, out);
        } else if kind.is_file() && wanted(&entry.path(), headers) {
            out.push(entry.path());
        }
    }
}

/// The corpus, each distinct file once, up to `limit` bytes.
fn corpus(limit: u64) -> Vec<(Digest, Bytes)> {
    let dirs = std::env::var("STRATA_CORPUS").unwrap_or_else(|_| "/usr/include:/usr/lib".into());
    let mut paths = Vec::new();
    for dir in dirs.split(':').filter(|d| !d.is_empty()) {
        walk(Path::new(dir), dir.ends_with("include"), &mut paths);
    }
    let (mut seen, mut blobs, mut total) = (HashSet::new(), Vec::new(), 0u64);
    for path in paths {
        let Ok(data) = std::fs::read(&path) else { continue };
        if data.is_empty() || data.len() as u64 > MAX_RECORD || total + data.len() as u64 > limit {
            continue;
        }
        let digest = DigestFunction::Sha256.digest_of(&data);
        if seen.insert(digest) {
            total += data.len() as u64;
            blobs.push((digest, Bytes::from(data)));
        }
    }
    blobs
}

/// This process's CPU time, user and system, from /proc (clock ticks of 10 ms).
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 11 and 12 after the name, from the state.
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

struct Measured {
    stored: u64,
    write_cpu: Duration,
    write_wall: Duration,
    read_cpu: Duration,
}

async fn measure(blobs: &[(Digest, Bytes)], compression: Option<Settings>) -> Measured {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let cfg = DiskConfig {
        path: dir.path().to_path_buf(),
        max_size: 8 << 30,
        segment_size: 256 << 20,
        max_record: MAX_RECORD,
        sync: SyncPolicy::Never,
        compression,
    };
    let log = DiskLog::open(cfg).expect("a disk log");
    let (cpu, wall) = (cpu_time(), Instant::now());
    for (digest, data) in blobs {
        log.write(digest, data.clone()).await.expect("write");
    }
    let (write_cpu, write_wall) = (cpu_time() - cpu, wall.elapsed());
    let stored = log.stats().stored_bytes_written;
    let cpu = cpu_time();
    for (digest, data) in blobs {
        let back = log.read(digest, 0, None).await.expect("read").expect("stored").into_bytes().await.expect("bytes");
        assert_eq!(back.len(), data.len(), "{digest}");
    }
    Measured { stored, write_cpu, write_wall, read_cpu: cpu_time() - cpu }
}

fn main() {
    let limit = std::env::var("STRATA_CORPUS_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(256_000_000u64);
    let blobs = corpus(limit);
    let total: u64 = blobs.iter().map(|(_, d)| d.len() as u64).sum();
    println!("corpus: {} distinct files, {:.1} MB", blobs.len(), total as f64 / 1e6);
    if total == 0 {
        println!("no files found; set STRATA_CORPUS");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("a runtime");
    let gb = total as f64 / 1e9;
    println!("{:<8} {:>10} {:>8} {:>7} {:>13} {:>12} {:>13}", "setting", "stored MB", "stored", "ratio", "write CPU s/GB", "write MB/s", "read CPU s/GB");
    let settings = [("off", None), ("zstd-1", Some(1)), ("zstd-3", Some(3)), ("zstd-9", Some(9))];
    for (name, level) in settings {
        let compression = level.map(|level| Settings { level, ..Settings::DEFAULT });
        let m = rt.block_on(measure(&blobs, compression));
        println!(
            "{name:<8} {:>10.1} {:>7.1}% {:>6.2}x {:>13.2} {:>12.0} {:>13.2}",
            m.stored as f64 / 1e6,
            100.0 * m.stored as f64 / total as f64,
            total as f64 / m.stored as f64,
            m.write_cpu.as_secs_f64() / gb,
            total as f64 / 1e6 / m.write_wall.as_secs_f64(),
            m.read_cpu.as_secs_f64() / gb,
        );
    }
}
