//! `strata bench`: a load generator for any REAPI endpoint (Strata or another server), so that servers
//! can be compared side by side on one machine. A bounded number of concurrent clients, each on its own
//! connection, run one scenario for a bounded time after a warm-up; the report gives throughput and
//! latency percentiles, as a table or as JSON. The `baseline` scenario measures what this machine can
//! do at all: the same bytes over a raw TCP connection on 127.0.0.1, hashed with the same function;
//! `baseline-spawn` what starting `true`, the command of `execute`, costs with no server.

mod baseline;
mod blobs;
mod client;
mod report;
mod scenarios;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use strata_backends::DigestFunction;

pub use self::report::Report;
use self::scenarios::Scenario;

#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// The server to drive, e.g. grpc://127.0.0.1:50051, or grpcs://HOST:PORT for TLS (not needed
    /// for `baseline`).
    #[arg(long, default_value = "grpc://127.0.0.1:50051")]
    pub endpoint: String,
    #[command(flatten)]
    pub credentials: crate::protocol::credentials::CredentialFlags,
    /// The instance name to use.
    #[arg(long, default_value = "")]
    pub instance: String,
    /// write-large, read-large, write-small, read-small, find-missing, ac-hit, execute, mixed, baseline,
    /// baseline-spawn.
    #[arg(long)]
    pub scenario: String,
    /// Seconds of measurement (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 1.0)]
    pub warmup: f64,
    /// Concurrent clients, each with its own connection.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
    /// sha256 or blake3.
    #[arg(long, default_value = "sha256")]
    pub digest_function: String,
    /// Blob size of the large scenarios (write-large, read-large, baseline).
    #[arg(long, default_value = "64MiB")]
    pub large_size: String,
    /// Bytes per ByteStream WriteRequest in the large uploads (Bazel sends 16 KiB, buildbox-casd
    /// up to its message limit).
    #[arg(long, default_value = "1MiB")]
    pub write_chunk: String,
    /// Blob size of the small scenarios (write-small, read-small).
    #[arg(long, default_value = "4KiB")]
    pub small_size: String,
    /// Blobs per batch request in the small scenarios.
    #[arg(long, default_value_t = 1000)]
    pub batch: usize,
    /// identity, or zstd: blobs travel zstd-compressed (compressed-blobs ByteStream names, batch
    /// compressors) in write-large, read-large, write-small and read-small.
    #[arg(long, default_value = "identity")]
    pub compressor: String,
    /// Digests per FindMissingBlobs request (half of them present).
    #[arg(long, default_value_t = 10_000)]
    pub find_missing: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// No progress line on stderr.
    #[arg(long)]
    pub quiet: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("invalid argument: {0}")]
    Usage(String),
    #[error("cannot reach {endpoint}: {message}")]
    Unreachable { endpoint: String, message: String },
    #[error("{endpoint} cannot run this scenario: {message}")]
    Unsupported { endpoint: String, message: String },
    #[error("preparing the scenario failed: {0}")]
    Setup(String),
}

/// What one operation of a scenario moved: bytes of blobs, bytes on the wire (fewer when they
/// travel compressed) and items (blobs, digests, actions).
pub struct Done {
    pub bytes: u64,
    pub wire: u64,
    pub items: u64,
}

impl Done {
    pub fn new(bytes: u64, items: u64) -> Done {
        Done { bytes, wire: bytes, items }
    }
}

/// The scenarios that can send their blobs compressed.
const COMPRESSIBLE: [&str; 4] = ["write-large", "read-large", "write-small", "read-small"];

/// The largest `--write-chunk`: room for the message's other fields within gRPC's usual 4 MiB.
const MAX_WRITE_CHUNK: usize = 3 << 20;

/// Sizes and the digest function, parsed once.
pub struct Plan {
    pub args: BenchArgs,
    pub function: DigestFunction,
    pub large_size: usize,
    pub small_size: usize,
    pub write_chunk: usize,
    /// Blobs travel zstd-compressed.
    pub compressed: bool,
}

impl Plan {
    pub fn new(args: BenchArgs) -> Result<Plan, BenchError> {
        let size = |text: &str, what: &str| {
            text.parse::<crate::units::ByteSize>()
                .map(|s| s.0 as usize)
                .map_err(|e| BenchError::Usage(format!("{what}: {e}")))
        };
        let function = DigestFunction::from_name(&args.digest_function)
            .ok_or_else(|| BenchError::Usage(format!("digest function {:?}: use sha256 or blake3", args.digest_function)))?;
        let large_size = size(&args.large_size, "--large-size")?;
        let small_size = size(&args.small_size, "--small-size")?;
        let write_chunk = size(&args.write_chunk, "--write-chunk")?;
        if write_chunk == 0 || write_chunk > MAX_WRITE_CHUNK {
            return Err(BenchError::Usage("--write-chunk must be between 1 byte and 3 MiB (a gRPC message holds 4 MiB at most)".into()));
        }
        if args.concurrency == 0 || args.concurrency > 1024 {
            return Err(BenchError::Usage("--concurrency must be between 1 and 1024".into()));
        }
        if !(args.duration > 0.0 && args.duration <= 3600.0 && (0.0..=600.0).contains(&args.warmup)) {
            return Err(BenchError::Usage("--duration must be in (0, 3600] seconds and --warmup in [0, 600]".into()));
        }
        if args.batch == 0 || args.find_missing < 2 || large_size < 64 || small_size < 16 {
            return Err(BenchError::Usage("--batch must be positive, --find-missing at least 2, sizes at least 64 and 16 bytes".into()));
        }
        let compressed = match args.compressor.as_str() {
            "identity" => false,
            "zstd" if COMPRESSIBLE.contains(&args.scenario.as_str()) => true,
            "zstd" => return Err(BenchError::Usage(format!("--compressor zstd applies to {} only", COMPRESSIBLE.join(", ")))),
            other => return Err(BenchError::Usage(format!("--compressor {other:?}: use identity or zstd"))),
        };
        Ok(Plan { args, function, large_size, small_size, write_chunk, compressed })
    }
}

/// Runs the scenario the arguments name and reports on it.
pub async fn run(args: BenchArgs) -> Result<Report, BenchError> {
    let plan = Arc::new(Plan::new(args)?);
    let scenario: Arc<dyn Scenario> = match plan.args.scenario.as_str() {
        "baseline" => Arc::new(baseline::Baseline::start(&plan).await?),
        "baseline-spawn" => Arc::new(baseline::SpawnBaseline),
        name => scenarios::prepare(name, plan.clone()).await?,
    };
    drive(&plan, scenario).await
}

/// Runs `concurrency` clients for the warm-up and then the measured duration.
async fn drive(plan: &Plan, scenario: Arc<dyn Scenario>) -> Result<Report, BenchError> {
    let args = &plan.args;
    let warmup_end = Instant::now() + Duration::from_secs_f64(args.warmup);
    let end = warmup_end + Duration::from_secs_f64(args.duration);
    let totals = Arc::new(Totals::default());
    let mut workers = Vec::new();
    for worker in 0..args.concurrency {
        let scenario = scenario.clone();
        let totals = totals.clone();
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut first_error = None;
            let mut seq = 0u64;
            loop {
                let start = Instant::now();
                if start >= end {
                    break;
                }
                let result = scenario.op(worker, seq).await;
                seq += 1;
                let finished = Instant::now();
                if start < warmup_end {
                    continue;
                }
                match result {
                    Ok(done) => {
                        latencies.push((finished - start).as_secs_f64() * 1000.0);
                        totals.ops.fetch_add(1, Ordering::Relaxed);
                        totals.bytes.fetch_add(done.bytes, Ordering::Relaxed);
                        totals.wire.fetch_add(done.wire, Ordering::Relaxed);
                        totals.items.fetch_add(done.items, Ordering::Relaxed);
                    }
                    Err(e) => {
                        totals.errors.fetch_add(1, Ordering::Relaxed);
                        first_error.get_or_insert(e);
                        // An endpoint that fails every call must not be hammered in a tight loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (latencies, first_error)
        }));
    }
    let progress = (!args.quiet).then(|| tokio::spawn(show_progress(args.scenario.clone(), totals.clone(), warmup_end, end)));
    let mut latencies = Vec::new();
    let mut first_error = None;
    for w in workers {
        let (l, e) = w.await.map_err(|e| BenchError::Setup(format!("a client task failed: {e}")))?;
        latencies.extend(l);
        if first_error.is_none() {
            first_error = e;
        }
    }
    if let Some(p) = progress {
        p.abort();
        eprintln!();
    }
    scenario.finish().await;
    let elapsed = args.duration;
    Ok(Report::new(plan, &totals, latencies, elapsed, first_error))
}

#[derive(Default)]
pub struct Totals {
    pub ops: AtomicU64,
    pub bytes: AtomicU64,
    pub wire: AtomicU64,
    pub items: AtomicU64,
    pub errors: AtomicU64,
}

async fn show_progress(scenario: String, totals: Arc<Totals>, warmup_end: Instant, end: Instant) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = Instant::now();
        if now < warmup_end {
            eprint!("\r{scenario}: warming up ({:.0}s left)   ", (warmup_end - now).as_secs_f64());
            continue;
        }
        let secs = (now.min(end) - warmup_end).as_secs_f64().max(0.001);
        let ops = totals.ops.load(Ordering::Relaxed);
        let mb = totals.bytes.load(Ordering::Relaxed) as f64 / 1e6;
        let errors = totals.errors.load(Ordering::Relaxed);
        eprint!("\r{scenario}: {secs:.0}s, {:.0} ops/s, {:.1} MB/s, {errors} errors   ", ops as f64 / secs, mb / secs);
    }
}
