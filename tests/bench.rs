//! `strata bench` against a Strata started in the test: every scenario runs briefly with non-zero
//! throughput and no errors; a stopped endpoint and a missing capability fail clearly.

mod common;

use common::TestServer;
use strata::bench::{run, BenchArgs, BenchError};

/// In memory: these tests check the client, and half-second runs must not wait on `fdatasync`, which
/// stalls for longer than that while the machine writes back a build (seen in CI).
const MEMORY_CONFIG: &str = r#"
listen: 127.0.0.1:0
storage:
  main:
    cas: [ { memory: { max_size: 256MiB, max_blob: 64MiB } } ]
    action_cache: [ { memory: { max_size: 16MiB } } ]
instances:
  - { name: "", storage: main, services: [cas, action_cache] }
"#;

async fn start() -> (TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    (TestServer::start_in(MEMORY_CONFIG, tmp.path()).await, tmp)
}

fn args(endpoint: String, scenario: &str) -> BenchArgs {
    common::bench_args(endpoint, scenario)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_runs_without_errors() {
    let (server, _tmp) = start().await;
    for scenario in ["baseline", "baseline-spawn", "write-large", "read-large", "write-small", "read-small", "find-missing", "ac-hit", "mixed"] {
        for function in ["sha256", "blake3"] {
            let mut a = args(format!("grpc://{}", server.addr), scenario);
            a.digest_function = function.into();
            // Uploads in Bazel's 16 KiB pieces with one function, in 1 MiB ones with the other.
            if function == "blake3" {
                a.write_chunk = "16KiB".into();
            }
            let report = run(a).await.unwrap_or_else(|e| panic!("{scenario}/{function}: {e}"));
            assert_eq!(report.errors, 0, "{scenario}/{function}: {:?}", report.first_error);
            assert!(report.ops > 0 && report.ops_per_sec > 0.0, "{scenario}/{function}: no operations");
            assert!(report.p50_ms > 0.0 && report.p50_ms <= report.p99_ms);
            let json = serde_json::to_value(&report).unwrap();
            for key in ["scenario", "ops_per_sec", "bytes_per_sec", "p50_ms", "p90_ms", "p99_ms", "errors"] {
                assert!(json.get(key).is_some(), "JSON lacks {key}");
            }
        }
    }
}

/// With `--compressor zstd` blobs travel compressed both ways, are checked after decompression (a
/// wrong byte would be an error of the run), and fewer bytes cross the wire than the blobs hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_scenarios_move_fewer_bytes_on_the_wire() {
    let (server, _tmp) = start().await;
    for scenario in ["write-large", "read-large", "write-small", "read-small"] {
        let mut a = args(format!("grpc://{}", server.addr), scenario);
        a.compressor = "zstd".into();
        a.small_size = "4KiB".into();
        let report = run(a).await.unwrap_or_else(|e| panic!("{scenario}: {e}"));
        assert_eq!(report.errors, 0, "{scenario}: {:?}", report.first_error);
        assert!(report.ops > 0, "{scenario}: no operations");
        assert!(report.wire_bytes_per_sec < report.bytes_per_sec / 1.5, "{scenario}: {report:?}");
        let identity = run(args(format!("grpc://{}", server.addr), scenario)).await.unwrap();
        assert_eq!(identity.wire_bytes_per_sec, identity.bytes_per_sec, "{scenario}");
    }
    let endpoint = format!("grpc://{}", server.addr);
    let mut a = args(endpoint.clone(), "ac-hit");
    a.compressor = "zstd".into();
    assert!(run(a).await.unwrap_err().to_string().contains("applies to write-large"));
    let mut a = args(endpoint, "read-large");
    a.compressor = "brotli".into();
    assert!(run(a).await.unwrap_err().to_string().contains("use identity or zstd"));
}

#[tokio::test]
async fn a_stopped_endpoint_fails_clearly() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let err = run(args(format!("grpc://127.0.0.1:{port}"), "ac-hit")).await.unwrap_err();
    assert!(matches!(err, BenchError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains(&format!("127.0.0.1:{port}")), "{err}");
}

#[tokio::test]
async fn missing_capabilities_and_bad_arguments_are_reported() {
    let (server, _tmp) = start().await;
    let endpoint = format!("grpc://{}", server.addr);
    let err = run(args(endpoint.clone(), "execute")).await.unwrap_err();
    assert!(matches!(err, BenchError::Unsupported { .. }) && err.to_string().contains("execution"), "{err}");
    let err = run(args(endpoint.clone(), "teleport")).await.unwrap_err();
    assert!(matches!(err, BenchError::Usage(_)) && err.to_string().contains("teleport"), "{err}");
    let mut a = args(endpoint.clone(), "write-small");
    a.batch = 5000;
    a.small_size = "4KiB".into();
    assert!(run(a).await.unwrap_err().to_string().contains("batch limit"));
    let mut a = args(endpoint.clone(), "ac-hit");
    a.instance = "nope".into();
    assert!(matches!(run(a).await.unwrap_err(), BenchError::Unsupported { .. }));
    for chunk in ["0", "4MiB", "lots"] {
        let mut a = args(endpoint.clone(), "write-large");
        a.write_chunk = chunk.into();
        let err = run(a).await.unwrap_err();
        assert!(matches!(err, BenchError::Usage(_)) && err.to_string().contains("--write-chunk"), "{chunk}: {err}");
    }
    let mut a = args("http//oops".into(), "ac-hit");
    a.concurrency = 1;
    assert!(matches!(run(a).await.unwrap_err(), BenchError::Usage(_)));
}
