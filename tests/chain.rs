//! A site cache chained to an upstream Strata over gRPC: write-through, read-through with local fill,
//! an upstream that goes away and comes back, and an upstream that serves bytes that do not match
//! their digest.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use common::*;
use strata::cas::Cas;
use strata::instances::Instance;
use strata::server::Server;
use strata_backends::MemoryStore;
use strata_backends::{BlobStore, Digest, DigestFunction};
use tonic::Code;

type UpdateRequest = reapi::batch_update_blobs_request::Request;

fn site_config(upstream: std::net::SocketAddr) -> String {
    format!(
        r#"
max_batch_total_size: 1MiB
storage:
  site:
    cas:
      - memory: {{ max_size: 8MiB, max_blob: 16KiB }}
      - disk: {{ path: cas, max_size: 64MiB, segment_size: 1MiB, max_record: 64KiB, sync: never }}
      - remote: {{ endpoint: "grpc://{upstream}", timeout: 5s, connect_timeout: 1s, retries: 1 }}
    action_cache:
      - memory: {{ max_size: 1MiB }}
      - remote: {{ endpoint: "grpc://{upstream}", timeout: 5s, connect_timeout: 1s, retries: 1 }}
instances:
  - name: ""
    storage: site
    services: [cas, action_cache]
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_through_and_reads_fill_the_site() {
    let upstream = TestServer::start().await;
    let site_dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&site_config(upstream.addr), site_dir.path()).await;
    let mut site_cas = site.cas().await;
    let mut up_cas = upstream.cas().await;

    // Written through the site cache: the upstream has it.
    let small = content(1, 3000);
    upload(&mut site_cas, "", &[&small]).await;
    assert!(missing(&mut up_cas, "", vec![sha256(&small)]).await.is_empty());

    // Only the upstream has these; the site serves them and keeps a copy.
    let only_up_small = content(2, 5000);
    let only_up_large = content(3, 900_000);
    upload(&mut up_cas, "", &[&only_up_small]).await;
    bytestream_write(&upstream, &only_up_large, 300_000).await;
    assert!(missing(&mut site_cas, "", vec![sha256(&only_up_small), sha256(&only_up_large)]).await.is_empty());
    let batch = site_cas
        .batch_read_blobs(reapi::BatchReadBlobsRequest { digests: vec![sha256(&only_up_small)], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(batch.responses[0].data, only_up_small);
    assert_eq!(bytestream_read(&site, &sha256(&only_up_large), 0, 0).await.unwrap(), only_up_large);

    // Upstream gone: what the site filled is still served, locally.
    upstream.stop().await;
    assert_eq!(bytestream_read(&site, &sha256(&only_up_large), 0, 0).await.unwrap(), only_up_large);
    let batch = site_cas
        .batch_read_blobs(reapi::BatchReadBlobsRequest { digests: vec![sha256(&only_up_small), sha256(&small)], ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(batch.responses.iter().all(|r| r.status.as_ref().unwrap().code == 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unavailable_upstream_fails_fast_and_recovery_needs_no_restart() {
    let upstream_dir = tempfile::tempdir().unwrap();
    let upstream = TestServer::start_in(TEST_CONFIG, upstream_dir.path()).await;
    let addr = upstream.addr;
    let site_dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&site_config(addr), site_dir.path()).await;
    let mut site_cas = site.cas().await;
    let local = content(10, 2000);
    upload(&mut site_cas, "", &[&local]).await;
    upstream.stop().await;

    // Local blobs are still found without asking the upstream.
    assert!(missing(&mut site_cas, "", vec![sha256(&local)]).await.is_empty());
    // What needs the upstream: UNAVAILABLE, naming it, in bounded time.
    let unknown = content(11, 100);
    let started = Instant::now();
    let err = site_cas
        .find_missing_blobs(reapi::FindMissingBlobsRequest { blob_digests: vec![sha256(&unknown)], ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(err.message().contains(&addr.to_string()), "{}", err.message());
    assert!(started.elapsed() < Duration::from_secs(10), "took {:?}", started.elapsed());
    let err = site_cas
        .batch_update_blobs(reapi::BatchUpdateBlobsRequest {
            requests: vec![reapi::batch_update_blobs_request::Request { digest: Some(sha256(&unknown)), data: unknown.clone(), compressor: 0 }],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(err.responses[0].status.as_ref().unwrap().code, Code::Unavailable as i32);

    // The upstream comes back on the same address: the site recovers by itself.
    let upstream = TestServer::start_at(TEST_CONFIG, upstream_dir.path(), addr).await;
    upload(&mut site_cas, "", &[&unknown]).await;
    let mut up_cas = upstream.cas().await;
    assert!(missing(&mut up_cas, "", vec![sha256(&unknown)]).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn action_results_come_through_the_chain() {
    let upstream = TestServer::start().await;
    let site_dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&site_config(upstream.addr), site_dir.path()).await;
    let out = content(20, 700);
    let mut up_cas = upstream.cas().await;
    upload(&mut up_cas, "", &[&out]).await;
    let action = sha256(b"chained action");
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile { path: "o".into(), digest: Some(sha256(&out)), ..Default::default() }],
        ..Default::default()
    };
    let mut up_ac = upstream.action_cache().await;
    up_ac.update_action_result(reapi::UpdateActionResultRequest { action_digest: Some(action.clone()), action_result: Some(result.clone()), ..Default::default() })
        .await
        .unwrap();
    let mut site_ac = site.action_cache().await;
    let got = site_ac.get_action_result(reapi::GetActionResultRequest { action_digest: Some(action.clone()), ..Default::default() }).await.unwrap();
    assert_eq!(got.into_inner(), result);
    // And updates through the site reach the upstream.
    let action2 = sha256(b"chained action 2");
    site_ac.update_action_result(reapi::UpdateActionResultRequest { action_digest: Some(action2.clone()), action_result: Some(result.clone()), ..Default::default() })
        .await
        .unwrap();
    assert!(up_ac.get_action_result(reapi::GetActionResultRequest { action_digest: Some(action2), ..Default::default() }).await.is_ok());
}

/// An upstream whose memory store holds bytes that do not match their digest (the tiers trust their
/// callers, so this is how a corrupted upstream object is planted). Named for what it is: a deliberately
/// lying upstream, built from Strata's own parts.
async fn lying_upstream(digests_and_wrong_bytes: &[(Digest, Vec<u8>)]) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let store = MemoryStore::new(64 << 20);
    for (d, wrong) in digests_and_wrong_bytes {
        store.write(d, Bytes::from(wrong.clone())).await.unwrap();
    }
    let cas = Cas::new(Arc::new(store));
    let instance = Instance { name: String::new(), cas: Some(cas), action_cache: None, execution: None, assets: None, storage: None };
    let server = Server::from_instances(vec![instance], 4 << 20, strata::uploads::ParkingLimits { ttl: Duration::from_secs(60), max_uploads: 100, max_bytes: 1 << 30 });
    let listener = Server::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(async move { server.serve(listener, std::future::pending()).await.unwrap() });
    (addr, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_that_do_not_match_their_digest_are_never_served() {
    let good_small = content(30, 4000);
    let good_large = content(31, 300_000);
    let small_digest = DigestFunction::Sha256.digest_of(&good_small);
    let large_digest = DigestFunction::Sha256.digest_of(&good_large);
    let mut bad_small = good_small.clone();
    bad_small[100] ^= 1;
    let mut bad_large = good_large.clone();
    bad_large[200_000] ^= 1;
    let (addr, task) = lying_upstream(&[(small_digest, bad_small), (large_digest, bad_large)]).await;
    let site_dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&site_config(addr), site_dir.path()).await;
    let mut site_cas = site.cas().await;
    for d in [sha256(&good_small), sha256(&good_large)] {
        let batch = site_cas.batch_read_blobs(reapi::BatchReadBlobsRequest { digests: vec![d.clone()], ..Default::default() }).await;
        match batch {
            Ok(b) => assert_ne!(b.into_inner().responses[0].status.as_ref().unwrap().code, 0),
            Err(e) => assert_ne!(e.code(), Code::Ok),
        }
        assert!(bytestream_read(&site, &d, 0, 0).await.is_err(), "corrupted bytes were served for {}", d.hash);
    }
    // A range of a blob that no local tier admits is read through, and still checked whole first.
    let remote_only = site_config(addr)
        .replace("max_size: 8MiB, max_blob: 16KiB", "max_size: 8MiB, max_blob: 1KiB")
        .replace("segment_size: 1MiB, max_record: 64KiB, sync: never", "segment_size: 1MiB, max_record: 64KiB, sync: never, max_blob: 1KiB");
    let passthrough_dir = tempfile::tempdir().unwrap();
    let passthrough = TestServer::start_in(&remote_only, passthrough_dir.path()).await;
    for (d, good) in [(sha256(&good_small), &good_small), (sha256(&good_large), &good_large)] {
        let range = bytestream_read(&passthrough, &d, 10, 50).await;
        assert!(range.is_err(), "a range of a corrupted blob was served: {:?}", range.map(|r| r == good[10..60]));
    }
    // Nothing corrupted was kept locally either: with the upstream gone, the blobs are simply absent.
    task.abort();
    let _ = task.await;
    for d in [sha256(&good_small), sha256(&good_large)] {
        assert!(bytestream_read(&site, &d, 0, 0).await.is_err());
    }
    // Abandoned write-backs remove their temporary files on a blocking thread, soon after.
    let local = || std::fs::read_dir(site_dir.path().join("cas/large")).map_or(usize::MAX, |d| d.count());
    assert!(common::eventually(|| local() == 0).await, "{} files kept", local());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_when_unavailable_queue_writes_succeed_and_reach_the_upstream_later_even_across_a_restart() {
    let upstream_dir = tempfile::tempdir().unwrap();
    let upstream = TestServer::start_in(TEST_CONFIG, upstream_dir.path()).await;
    let addr = upstream.addr;
    upstream.stop().await;

    let config = site_config(addr).replace(
        "retries: 1 }\n    action_cache",
        "retries: 1, when_unavailable: queue, queue_retry: 200ms }\n    action_cache",
    );
    assert!(config.contains("when_unavailable: queue"));
    let site_dir = tempfile::tempdir().unwrap();
    let small = content(40, 3000);
    let large = content(41, 700_000);
    {
        let site = TestServer::start_in(&config, site_dir.path()).await;
        upload(&mut site.cas().await, "", &[&small]).await;
        bytestream_write(&site, &large, 100_000).await;
        // Served locally meanwhile.
        assert_eq!(bytestream_read(&site, &sha256(&large), 0, 0).await.unwrap(), large);
        site.stop().await;
    }
    let queued = std::fs::read_dir(site_dir.path().join("spool")).unwrap().next().unwrap().unwrap().path();
    assert_eq!(std::fs::read_dir(&queued).unwrap().count(), 2, "both uploads are queued on disk");

    // The site restarts, the upstream comes back: the queue drains by itself.
    let _site = TestServer::start_in(&config, site_dir.path()).await;
    let upstream = TestServer::start_at(TEST_CONFIG, upstream_dir.path(), addr).await;
    let mut up_cas = upstream.cas().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if missing(&mut up_cas, "", vec![sha256(&small), sha256(&large)]).await.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "queued uploads never reached the upstream");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(bytestream_read(&upstream, &sha256(&large), 0, 0).await.unwrap(), large);
    assert_eq!(std::fs::read_dir(&queued).unwrap().count(), 0, "the queue is empty once delivered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ranges_of_blobs_no_local_tier_admits_are_exact() {
    let upstream_dir = tempfile::tempdir().unwrap();
    let upstream = TestServer::start_in(TEST_CONFIG, upstream_dir.path()).await;
    let blob = content(50, 700_000);
    bytestream_write(&upstream, &blob, 100_000).await;
    let config = site_config(upstream.addr)
        .replace("max_size: 8MiB, max_blob: 16KiB", "max_size: 8MiB, max_blob: 1KiB")
        .replace("max_record: 64KiB, sync: never", "max_record: 64KiB, sync: never, max_blob: 1KiB");
    let site_dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&config, site_dir.path()).await;
    let d = sha256(&blob);
    for (offset, limit) in [(0, 0), (1, 0), (65_535, 10), (100_000, 300_001), (699_999, 0), (699_999, 5), (0, 1)] {
        let end = if limit == 0 { blob.len() } else { (offset + limit).min(blob.len()) };
        let got = bytestream_read(&site, &d, offset as i64, limit as i64).await.unwrap();
        assert_eq!(got, blob[offset..end], "offset {offset}, limit {limit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reaches_the_upstream_in_as_few_calls_as_its_limit_allows() {
    let upstream_dir = tempfile::tempdir().unwrap();
    let with_metrics = TEST_CONFIG.replacen("listen: 127.0.0.1:0\n", "listen: 127.0.0.1:0\nhttp: { listen: 127.0.0.1:0 }\n", 1);
    let upstream = TestServer::start_in(&with_metrics, upstream_dir.path()).await;
    let site_dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&site_config(upstream.addr), site_dir.path()).await;
    let mut site_cas = site.cas().await;
    let calls = |m: &prometheus_parse::Scrape| {
        sample(m, "strata_grpc_requests_total", &[("service", "ContentAddressableStorage"), ("method", "BatchUpdateBlobs"), ("code", "OK")])
    };
    let before = calls(&scrape(&upstream).await);

    // 200 blobs and one whose digest is wrong: the good ones travel on in one call, the bad one
    // gets its own status and goes nowhere.
    let blobs: Vec<Vec<u8>> = (0..200).map(|i| content(1000 + i, 3000)).collect();
    let mut requests: Vec<UpdateRequest> = blobs.iter().map(|b| UpdateRequest { digest: Some(sha256(b)), data: b.clone(), compressor: 0 }).collect();
    let forged = UpdateRequest { digest: Some(sha256(b"what the digest says")), data: b"something else".to_vec(), compressor: 0 };
    requests.insert(100, forged.clone());
    let response = site_cas.batch_update_blobs(reapi::BatchUpdateBlobsRequest { requests, ..Default::default() }).await.unwrap().into_inner();
    let codes: Vec<i32> = response.responses.iter().map(|r| r.status.as_ref().unwrap().code).collect();
    assert_eq!(codes.iter().filter(|&&c| c == 0).count(), 200);
    assert_eq!(codes[100], Code::InvalidArgument as i32);
    let mut up_cas = upstream.cas().await;
    let mut asked: Vec<reapi::Digest> = blobs.iter().map(|b| sha256(b)).collect();
    asked.push(forged.digest.clone().unwrap());
    assert_eq!(missing(&mut up_cas, "", asked).await, vec![forged.digest.unwrap()]);
    assert_eq!(calls(&scrape(&upstream).await) - before, 1.0, "one upstream call for the batch");

    // 320 x 3,200 bytes fit the site's 1 MiB limit, but not the upstream's once each entry's digest
    // and framing count: two calls.
    let blobs: Vec<Vec<u8>> = (0..320).map(|i| content(5000 + i, 3200)).collect();
    upload(&mut site_cas, "", &blobs.iter().map(Vec::as_slice).collect::<Vec<_>>()).await;
    assert!(missing(&mut up_cas, "", blobs.iter().map(|b| sha256(b)).collect()).await.is_empty());
    assert_eq!(calls(&scrape(&upstream).await) - before, 3.0, "two more upstream calls");
}
