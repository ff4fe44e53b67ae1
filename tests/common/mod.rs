//! Test support: a real Strata server on 127.0.0.1 (an ephemeral port) with its own data directory,
//! and gRPC clients connected to it over TCP.

#![allow(dead_code)]

pub mod exec;
pub mod matrix;
pub mod s3;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::action_cache_client::ActionCacheClient;
use bazel_remote_apis::build::bazel::remote::execution::v2::capabilities_client::CapabilitiesClient;
use bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_client::ContentAddressableStorageClient;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use sha2::Digest as _;
use strata::config::Config;
use strata::server::Server;
use tokio::sync::oneshot;
use tonic::transport::Channel;

/// A small configuration: memory in front of a disk log with tiny segments, so tests cross segment
/// boundaries and reach the large-blob path (blobs over 64KiB) quickly.
pub const TEST_CONFIG: &str = r#"
listen: 127.0.0.1:0
max_batch_total_size: 1MiB
storage:
  main:
    cas:
      - memory: { max_size: 8MiB, max_blob: 16KiB }
      - disk: { path: cas, max_size: 64MiB, segment_size: 1MiB, max_record: 64KiB, sync: always }
    action_cache:
      - memory: { max_size: 1MiB }
      - disk: { path: ac, max_size: 8MiB, segment_size: 1MiB, sync: always }
instances:
  - name: ""
    storage: main
    services: [cas, action_cache]
  - name: "team/a"
    storage: main
    services: [cas, action_cache]
  - name: "cas-only"
    storage: main
    services: [cas]
"#;

pub struct TestServer {
    pub addr: std::net::SocketAddr,
    /// The HTTP listener's address, when the configuration has an `http` section.
    pub http: Option<std::net::SocketAddr>,
    pub data_dir: std::path::PathBuf,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _tmp: Option<tempfile::TempDir>,
}

impl TestServer {
    pub async fn start() -> TestServer {
        let tmp = tempfile::tempdir().unwrap();
        let mut server = TestServer::start_in(TEST_CONFIG, tmp.path()).await;
        server._tmp = Some(tmp);
        server
    }

    pub async fn start_in(config_text: &str, data_dir: &std::path::Path) -> TestServer {
        TestServer::start_at(config_text, data_dir, "127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on a given address (to bring a stopped server back where its clients expect it).
    pub async fn start_at(config_text: &str, data_dir: &std::path::Path, addr: std::net::SocketAddr) -> TestServer {
        let mut config = Config::parse(config_text, "test configuration").unwrap();
        config.data_dir = data_dir.to_path_buf();
        let mut server = Server::build(&config).await.unwrap();
        let listener = Server::bind(&addr.to_string()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut http = None;
        if let Some(h) = &config.http {
            let listener = Server::bind(&h.listen).await.unwrap();
            http = Some(listener.local_addr().unwrap());
            server = server.with_http(listener);
        }
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            server.serve(listener, async { let _ = stopped.await; }).await.unwrap();
        });
        TestServer { addr, http, data_dir: data_dir.to_path_buf(), stop: Some(stop), task: Some(task), _tmp: None }
    }

    /// Stops the server gracefully and waits until it has flushed its storage.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.unwrap();
        }
    }

    pub async fn channel(&self) -> Channel {
        Channel::from_shared(format!("http://{}", self.addr)).unwrap().connect().await.unwrap()
    }

    pub async fn cas(&self) -> ContentAddressableStorageClient<Channel> {
        ContentAddressableStorageClient::new(self.channel().await)
            .max_decoding_message_size(64 << 20)
            .max_encoding_message_size(64 << 20)
    }

    pub async fn bytestream(&self) -> ByteStreamClient<Channel> {
        ByteStreamClient::new(self.channel().await).max_decoding_message_size(64 << 20)
    }

    pub async fn action_cache(&self) -> ActionCacheClient<Channel> {
        ActionCacheClient::new(self.channel().await)
    }

    pub async fn capabilities(&self) -> CapabilitiesClient<Channel> {
        CapabilitiesClient::new(self.channel().await)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// GET over HTTP/1.0 from the server's HTTP listener: the status code and the body.
pub async fn http_get(server: &TestServer, path: &str) -> (u16, String) {
    http_get_with(server, path, "").await
}

/// A GET with extra header lines (each ending in \r\n).
pub async fn http_get_with(server: &TestServer, path: &str, headers: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.http.expect("the configuration has no http section")).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.0\r\nHost: test\r\n{headers}\r\n").as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (code, body.to_string())
}

/// The value of one sample of a scrape, by name and labels (0 when absent).
pub fn sample(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        // The parser drops empty labels (instance ""): absent reads as empty.
        .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k).unwrap_or("") == *v))
        .map(|s| match &s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(h) => h.last().map_or(0.0, |b| b.count),
            prometheus_parse::Value::Summary(_) => 0.0,
        })
        .sum()
}

/// The server's `/metrics`, parsed.
pub async fn scrape(server: &TestServer) -> prometheus_parse::Scrape {
    let (code, body) = http_get(server, "/metrics").await;
    assert_eq!(code, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("/metrics parses as the Prometheus text format")
}

/// `strata bench` arguments for a short run of `scenario` against `endpoint` (JSON, quiet).
pub fn bench_args(endpoint: String, scenario: &str) -> strata::bench::BenchArgs {
    strata::bench::BenchArgs {
        endpoint,
        credentials: Default::default(),
        instance: String::new(),
        scenario: scenario.into(),
        duration: 0.5,
        // No warm-up: an operation started in a warm-up is not counted, and on a loaded machine one
        // slow debug-build operation could outlast the whole run and leave it with none.
        warmup: 0.0,
        concurrency: 2,
        digest_function: "sha256".into(),
        large_size: "2MiB".into(),
        small_size: "1KiB".into(),
        write_chunk: "1MiB".into(),
        batch: 50,
        compressor: "identity".into(),
        find_missing: 1000,
        json: true,
        quiet: true,
    }
}

/// Waits up to 5 s for `condition`, which work done on a blocking thread (removing a file) makes true
/// a moment after the call that caused it returned; whether it held in the end.
pub async fn eventually(condition: impl Fn() -> bool) -> bool {
    for _ in 0..500 {
        if condition() {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    condition()
}

pub fn sha256(data: &[u8]) -> reapi::Digest {
    reapi::Digest { hash: hex::encode(sha2::Sha256::digest(data)), size_bytes: data.len() as i64 }
}

pub fn blake3(data: &[u8]) -> reapi::Digest {
    reapi::Digest { hash: blake3::hash(data).to_hex().to_string(), size_bytes: data.len() as i64 }
}

/// Deterministic test content of `len` bytes, different for each `seed`.
pub fn content(seed: u32, len: usize) -> Vec<u8> {
    let mut data: Vec<u8> = (0..len).map(|i| (i as u32).wrapping_mul(2654435761).wrapping_add(seed) as u8).collect();
    if len >= 4 {
        data[..4].copy_from_slice(&seed.to_le_bytes());
    }
    data
}

pub async fn upload(cas: &mut ContentAddressableStorageClient<Channel>, instance: &str, blobs: &[&[u8]]) {
    let requests = blobs
        .iter()
        .map(|b| reapi::batch_update_blobs_request::Request { digest: Some(sha256(b)), data: b.to_vec(), compressor: 0 })
        .collect();
    let resp = cas
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest { instance_name: instance.into(), requests, digest_function: 0 })
        .await
        .unwrap()
        .into_inner();
    for r in resp.responses {
        assert_eq!(r.status.unwrap().code, 0);
    }
}

pub async fn missing(cas: &mut ContentAddressableStorageClient<Channel>, instance: &str, digests: Vec<reapi::Digest>) -> Vec<reapi::Digest> {
    cas.find_missing_blobs(reapi::FindMissingBlobsRequest { instance_name: instance.into(), blob_digests: digests, digest_function: 0 })
        .await
        .unwrap()
        .into_inner()
        .missing_blob_digests
}

/// Uploads `data` through ByteStream Write in messages of `chunk` bytes.
pub async fn bytestream_write(server: &TestServer, data: &[u8], chunk: usize) {
    let d = sha256(data);
    let name = format!("uploads/test/blobs/{}/{}", d.hash, d.size_bytes);
    let msgs: Vec<_> = data
        .chunks(chunk)
        .enumerate()
        .map(|(i, c)| bazel_remote_apis::google::bytestream::WriteRequest {
            resource_name: name.clone(),
            write_offset: (i * chunk) as i64,
            finish_write: (i + 1) * chunk >= data.len(),
            data: c.to_vec(),
        })
        .collect();
    let resp = server.bytestream().await.write(futures::stream::iter(msgs)).await.unwrap().into_inner();
    assert_eq!(resp.committed_size, data.len() as i64);
}

/// Reads a blob through ByteStream Read.
pub async fn bytestream_read(server: &TestServer, d: &reapi::Digest, offset: i64, limit: i64) -> Result<Vec<u8>, tonic::Status> {
    let name = format!("blobs/{}/{}", d.hash, d.size_bytes);
    let request = bazel_remote_apis::google::bytestream::ReadRequest { resource_name: name, read_offset: offset, read_limit: limit };
    let mut stream = server.bytestream().await.read(request).await?.into_inner();
    let mut out = Vec::new();
    while let Some(m) = stream.message().await? {
        out.extend(m.data);
    }
    Ok(out)
}

/// Text-like bytes: compressible, but not to nothing.
pub fn text(seed: u32, len: usize) -> Vec<u8> {
    let words = ["cc_library", "genrule", "srcs", "deps", "visibility", "//pkg:target", "hdrs", "copts"];
    let mut state = seed.wrapping_mul(2_654_435_761) | 1;
    let mut out = Vec::with_capacity(len + 16);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        out.extend_from_slice(words[(state % 8) as usize].as_bytes());
        out.push(b' ');
    }
    out.truncate(len);
    out
}

/// Bytes that do not compress: a chain of SHA-256 blocks.
pub fn noise(seed: u32, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = sha2::Sha256::digest(seed.to_le_bytes());
    while out.len() < len {
        out.extend_from_slice(&block);
        block = sha2::Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// A whole compressed ByteStream read from `offset`, decompressed.
pub async fn read_compressed(server: &TestServer, d: &reapi::Digest, offset: i64) -> Vec<u8> {
    let resource_name = format!("compressed-blobs/zstd/{}/{}", d.hash, d.size_bytes);
    let mut stream = server.bytestream().await.read(bazel_remote_apis::google::bytestream::ReadRequest { resource_name, read_offset: offset, read_limit: 0 }).await.unwrap().into_inner();
    let mut frames = Vec::new();
    while let Some(msg) = stream.message().await.unwrap() {
        assert!(msg.data.len() <= 2 << 20, "messages stay small");
        frames.extend(msg.data);
    }
    zstd::stream::decode_all(&frames[..]).expect("a valid zstd stream")
}

/// A compressed ByteStream upload of `data` (one zstd frame, level 3); the committed size.
pub async fn write_compressed(server: &TestServer, data: &[u8]) -> i64 {
    let d = sha256(data);
    let frame = zstd::bulk::compress(data, 3).unwrap();
    let name = format!("uploads/{}/compressed-blobs/zstd/{}/{}", uuid_for(&d), d.hash, d.size_bytes);
    let pieces: Vec<&[u8]> = frame.chunks(100_000).collect();
    let mut offset = 0;
    let requests: Vec<bazel_remote_apis::google::bytestream::WriteRequest> = pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let request = bazel_remote_apis::google::bytestream::WriteRequest {
                resource_name: if i == 0 { name.clone() } else { String::new() },
                write_offset: offset,
                finish_write: i + 1 == pieces.len(),
                data: piece.to_vec(),
            };
            offset += piece.len() as i64;
            request
        })
        .collect();
    server.bytestream().await.write(futures::stream::iter(requests)).await.unwrap().into_inner().committed_size
}

pub fn uuid_for(d: &reapi::Digest) -> String {
    format!("00000000-0000-4000-8000-{}", &d.hash[..12])
}
