//! The S3 tier behind a site cache, measured over gRPC on 127.0.0.1 (`cargo bench --bench s3_tiers`):
//!
//! 1. FindMissingBlobs of 10,000 digests whose blobs only S3 holds (the site's memory and disk tiers
//!    start empty), with the existence cache warm: digests per second;
//! 2. a cold read of one 256 MiB blob through memory, disk and S3, against reading the same object
//!    from S3 directly with the SDK: MB/s of each and their ratio.
//!
//! The S3 server is s3s-fs in this process, or STRATA_TEST_S3_ENDPOINT (e.g. moto). Medians of
//! `RUNS` (default 5) runs, printed as a table.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::s3::*;
use common::*;
use futures::StreamExt;

const BLOBS: usize = 10_000;
const LARGE: usize = 256 << 20;

fn site_config(endpoint: &str, bucket: &str) -> String {
    format!(
        r#"
max_batch_total_size: 4MiB
storage:
  s:
    cas:
      - memory: {{ max_size: 512MiB, max_blob: 1MiB }}
      - disk: {{ path: cas, max_size: 2GiB, segment_size: 64MiB, sync: never }}
      - s3: {{ bucket: {bucket}, endpoint: "{endpoint}", path_style: true, access_key_id: {ACCESS_KEY},
              secret_access_key: {SECRET_KEY}, checksum: when_required, existence_cache: {{ max_entries: 1000000, ttl: 10m }} }}
    action_cache:
      - memory: {{ max_size: 1MiB }}
instances:
  - {{ name: "", storage: s, services: [cas, action_cache] }}
"#
    )
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Reads a blob through the site's ByteStream; returns the bytes received.
async fn read_through(site: &TestServer, digest: &reapi::Digest) -> usize {
    let name = format!("blobs/{}/{}", digest.hash, digest.size_bytes);
    let request = bazel_remote_apis::google::bytestream::ReadRequest { resource_name: name, read_offset: 0, read_limit: 0 };
    let mut stream = site.bytestream().await.read(request).await.unwrap().into_inner();
    let mut received = 0;
    while let Some(chunk) = stream.next().await {
        received += chunk.unwrap().data.len();
    }
    received
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let runs: usize = std::env::var("RUNS").ok().and_then(|r| r.parse().ok()).unwrap_or(5);
    let s3 = s3_server().await;
    let bucket = new_bucket(&s3.endpoint).await;
    let config = site_config(&s3.endpoint, &bucket);
    let tmp = tempfile::tempdir().unwrap();

    eprintln!("uploading {BLOBS} small blobs and one of 256 MiB through a site cache into S3");
    let small: Vec<Vec<u8>> = (0..BLOBS as u32).map(|i| content(i, 1024)).collect();
    let large = content(7, LARGE);
    let large_digest = sha256(&large);
    {
        let writer = TestServer::start_in(&config, &tmp.path().join("writer")).await;
        let mut cas = writer.cas().await;
        for chunk in small.chunks(1000) {
            let refs: Vec<&[u8]> = chunk.iter().map(|b| b.as_slice()).collect();
            upload(&mut cas, "", &refs).await;
        }
        bytestream_write(&writer, &large, 1 << 20).await;
        writer.stop().await;
    }
    let digests: Vec<reapi::Digest> = small.iter().map(|b| sha256(b)).collect();

    // 1. FindMissing through a site whose local tiers are empty: S3 answers once, then the cache.
    let site = TestServer::start_in(&config, &tmp.path().join("site-find")).await;
    let mut cas = site.cas().await;
    let started = Instant::now();
    assert!(missing(&mut cas, "", digests.clone()).await.is_empty(), "every blob is in S3");
    let cold = started.elapsed();
    let mut rates = Vec::new();
    for _ in 0..runs.max(5) * 4 {
        let started = Instant::now();
        assert!(missing(&mut cas, "", digests.clone()).await.is_empty());
        rates.push(BLOBS as f64 / started.elapsed().as_secs_f64());
    }
    site.stop().await;

    // 2. Cold 256 MiB reads: S3 directly, then through a site that starts empty each time.
    let s3_client = client(&s3.endpoint);
    // The tier's object for the blob, found by its hash rather than by knowing the key layout.
    let mut pages = s3_client.list_objects_v2().bucket(&bucket).into_paginator().send();
    let mut key = None;
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        key = key.or_else(|| page.contents().iter().filter_map(|o| o.key()).find(|k| k.contains(&large_digest.hash)).map(String::from));
    }
    let key = key.expect("the large blob is in the bucket");
    let (mut direct, mut through) = (Vec::new(), Vec::new());
    for run in 0..runs {
        let started = Instant::now();
        let object = s3_client.get_object().bucket(&bucket).key(&key).send().await.unwrap();
        let mut body = object.body;
        let mut received = 0;
        while let Some(chunk) = body.next().await {
            received += chunk.unwrap().len();
        }
        assert_eq!(received, LARGE);
        direct.push(LARGE as f64 / started.elapsed().as_secs_f64() / 1e6);

        let site = TestServer::start_in(&config, &tmp.path().join(format!("site-read-{run}"))).await;
        let started = Instant::now();
        assert_eq!(read_through(&site, &large_digest).await, LARGE);
        through.push(LARGE as f64 / started.elapsed().as_secs_f64() / 1e6);
        site.stop().await;
    }
    let (direct, through) = (median(direct), median(through));
    println!("| measurement | result |");
    println!("| --- | ---: |");
    println!("| FindMissingBlobs, 10,000 digests only S3 holds, first call (S3 HEADs) | {:.0} ms |", cold.as_secs_f64() * 1e3);
    println!("| FindMissingBlobs, 10,000 digests, existence cache warm (median of {}) | {:.0} digests/s |", rates.len(), median(rates));
    println!("| cold read of 256 MiB, S3 directly (SDK GET, median of {runs}) | {direct:.0} MB/s |");
    println!("| cold read of 256 MiB through memory, disk, S3 (ByteStream, median of {runs}) | {through:.0} MB/s |");
    println!("| through the site / S3 directly | {:.2} |", through / direct);
}

