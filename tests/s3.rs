//! The S3 tier against a real S3-compatible server on 127.0.0.1: `s3s` + `s3s-fs` started in this
//! process, or any other endpoint named by STRATA_TEST_S3_ENDPOINT (CI runs this suite a second time
//! against moto). Write-through, read-back from a site that starts empty, multipart uploads, ranged
//! reads, the action cache, an object changed behind Strata's back, and S3 going away.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_s3::primitives::ByteStream;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::*;
use tonic::Code;

const ACCESS_KEY: &str = "strata-test";
const SECRET_KEY: &str = "strata-test-secret";

struct S3Server {
    endpoint: String,
    task: Option<tokio::task::JoinHandle<()>>,
    _root: Option<tempfile::TempDir>,
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// An s3s-fs server on 127.0.0.1, serving a fresh directory.
async fn start_s3s() -> S3Server {
    let root = tempfile::tempdir().unwrap();
    let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
    let mut builder = s3s::service::S3ServiceBuilder::new(fs);
    builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
    let service = builder.build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Connections live in a JoinSet owned by the accept task, so stopping the server ends them too.
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        while let Ok((stream, _)) = listener.accept().await {
            let service = service.clone();
            connections.spawn(async move {
                let http = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
                let _ = http.serve_connection(hyper_util::rt::TokioIo::new(stream), service).await;
            });
        }
    });
    S3Server { endpoint: format!("http://{addr}"), task: Some(task), _root: Some(root) }
}

/// The server under test: STRATA_TEST_S3_ENDPOINT if set, otherwise s3s-fs in this process.
async fn s3_server() -> S3Server {
    match std::env::var("STRATA_TEST_S3_ENDPOINT") {
        Ok(endpoint) => S3Server { endpoint, task: None, _root: None },
        Err(_) => start_s3s().await,
    }
}

fn client(endpoint: &str) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .force_path_style(true)
        .credentials_provider(Credentials::new(ACCESS_KEY, SECRET_KEY, None, None, "test"))
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn new_bucket(endpoint: &str) -> String {
    let name = format!("strata-{}", std::process::id() as u64 * 1000 + rand_suffix());
    client(endpoint).create_bucket().bucket(&name).send().await.unwrap();
    name
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) + (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_micros() as u64 % 1000) * 1000
}

fn strata_config(endpoint: &str, bucket: &str) -> String {
    let s3 = format!(
        "{{ bucket: {bucket}, prefix: test/, endpoint: \"{endpoint}\", path_style: true, access_key_id: {ACCESS_KEY}, \
         secret_access_key: {SECRET_KEY}, part_size: 5MiB, checksum: when_required, retries: 1, timeout: 10s, connect_timeout: 1s }}"
    );
    format!(
        r#"
max_batch_total_size: 1MiB
storage:
  s:
    cas:
      - memory: {{ max_size: 8MiB, max_blob: 16KiB }}
      - disk: {{ path: cas, max_size: 256MiB, segment_size: 1MiB, max_record: 64KiB, sync: never }}
      - s3: {s3}
    action_cache:
      - memory: {{ max_size: 1MiB }}
      - s3: {s3}
instances:
  - {{ name: "", storage: s, services: [cas, action_cache] }}
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blobs_and_results_go_through_to_s3_and_come_back_to_an_empty_site() {
    let s3 = s3_server().await;
    let bucket = new_bucket(&s3.endpoint).await;
    let config = strata_config(&s3.endpoint, &bucket);
    let small = content(1, 3000);
    let large = content(2, 12 << 20); // three multipart parts of 5 MiB
    let action = sha256(b"an action cached in S3");
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile { path: "out".into(), digest: Some(sha256(&small)), ..Default::default() }],
        ..Default::default()
    };
    {
        let dir = tempfile::tempdir().unwrap();
        let site = TestServer::start_in(&config, dir.path()).await;
        upload(&mut site.cas().await, "", &[&small]).await;
        bytestream_write(&site, &large, 1 << 20).await;
        site.action_cache()
            .await
            .update_action_result(reapi::UpdateActionResultRequest { action_digest: Some(action.clone()), action_result: Some(result.clone()), ..Default::default() })
            .await
            .unwrap();
    }
    // The objects are in the bucket, under the prefix.
    let s3c = client(&s3.endpoint);
    for data in [&small, &large] {
        let d = sha256(data);
        let head = s3c.head_object().bucket(&bucket).key(format!("test/cas/sha256/{}-{}", d.hash, d.size_bytes)).send().await.unwrap();
        assert_eq!(head.content_length(), Some(data.len() as i64));
    }
    // A second site with nothing local finds and serves them from S3.
    let dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&config, dir.path()).await;
    let mut cas = site.cas().await;
    assert!(missing(&mut cas, "", vec![sha256(&small), sha256(&large)]).await.is_empty());
    assert_eq!(missing(&mut cas, "", vec![sha256(b"never uploaded")]).await.len(), 1);
    assert_eq!(bytestream_read(&site, &sha256(&large), 7 << 20, 1000).await.unwrap(), large[7 << 20..(7 << 20) + 1000]);
    assert_eq!(bytestream_read(&site, &sha256(&large), 0, 0).await.unwrap(), large);
    assert_eq!(bytestream_read(&site, &sha256(&small), 0, 0).await.unwrap(), small);
    let got = site.action_cache().await.get_action_result(reapi::GetActionResultRequest { action_digest: Some(action), ..Default::default() }).await;
    assert_eq!(got.unwrap().into_inner(), result);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_object_changed_behind_stratas_back_is_never_served() {
    let s3 = s3_server().await;
    let bucket = new_bucket(&s3.endpoint).await;
    let config = strata_config(&s3.endpoint, &bucket);
    let small = content(3, 5000);
    let large = content(4, 6 << 20);
    {
        let dir = tempfile::tempdir().unwrap();
        let site = TestServer::start_in(&config, dir.path()).await;
        upload(&mut site.cas().await, "", &[&small]).await;
        bytestream_write(&site, &large, 1 << 20).await;
    }
    let s3c = client(&s3.endpoint);
    for data in [&small, &large] {
        let d = sha256(data);
        let mut wrong = data.clone();
        wrong[data.len() / 2] ^= 0x55;
        s3c.put_object()
            .bucket(&bucket)
            .key(format!("test/cas/sha256/{}-{}", d.hash, d.size_bytes))
            .body(ByteStream::from(wrong))
            .send()
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&config, dir.path()).await;
    for data in [&small, &large] {
        let d = sha256(data);
        assert!(bytestream_read(&site, &d, 0, 0).await.is_err(), "changed bytes were served");
        let batch = site.cas().await.batch_read_blobs(reapi::BatchReadBlobsRequest { digests: vec![d.clone()], ..Default::default() }).await;
        if let Ok(b) = batch {
            assert_ne!(b.into_inner().responses[0].status.as_ref().unwrap().code, 0, "changed bytes were served");
        }
    }
    assert_eq!(std::fs::read_dir(dir.path().join("cas/large")).unwrap().count(), 0, "nothing corrupted was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_s3_goes_away_local_blobs_are_served_and_the_rest_is_unavailable() {
    let s3 = start_s3s().await;
    let bucket = new_bucket(&s3.endpoint).await;
    let config = strata_config(&s3.endpoint, &bucket);
    let dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&config, dir.path()).await;
    let local = content(5, 2000);
    upload(&mut site.cas().await, "", &[&local]).await;
    drop(s3);
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut cas = site.cas().await;
    assert!(missing(&mut cas, "", vec![sha256(&local)]).await.is_empty());
    assert_eq!(bytestream_read(&site, &sha256(&local), 0, 0).await.unwrap(), local);
    let started = Instant::now();
    let err = cas
        .find_missing_blobs(reapi::FindMissingBlobsRequest { blob_digests: vec![sha256(b"unknown")], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&bucket), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(15), "took {:?}", started.elapsed());
}
