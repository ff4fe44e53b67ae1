//! The S3 tier against a real S3-compatible server on 127.0.0.1: `s3s` + `s3s-fs` started in this
//! process, or any other endpoint named by STRATA_TEST_S3_ENDPOINT (CI runs this suite a second time
//! against moto). Write-through, read-back from a site that starts empty, multipart uploads, ranged
//! reads, the action cache, an object changed behind Strata's back, and S3 going away.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::primitives::ByteStream;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::s3::*;
use common::*;
use tonic::Code;

fn strata_config(endpoint: &str, bucket: &str) -> String {
    strata_config_with(endpoint, bucket, "")
}

/// The same, with `cas_extra` added to the CAS tier's S3 settings.
fn strata_config_with(endpoint: &str, bucket: &str, cas_extra: &str) -> String {
    let s3 = format!(
        "{{ bucket: {bucket}, prefix: test/, endpoint: \"{endpoint}\", path_style: true, access_key_id: {ACCESS_KEY}, \
         secret_access_key: {SECRET_KEY}, part_size: 5MiB, checksum: when_required, retries: 1, timeout: 10s, connect_timeout: 1s }}"
    );
    let s3_cas = format!("{}{cas_extra} }}", s3.trim_end_matches('}').trim_end());
    format!(
        r#"
max_batch_total_size: 1MiB
storage:
  s:
    cas:
      - memory: {{ max_size: 8MiB, max_blob: 16KiB }}
      - disk: {{ path: cas, max_size: 256MiB, segment_size: 1MiB, max_record: 64KiB, sync: never }}
      - s3: {s3_cas}
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
async fn compressed_objects_have_keys_of_their_own_and_old_identity_objects_still_read() {
    let s3 = s3_server().await;
    let bucket = new_bucket(&s3.endpoint).await;
    let plain = strata_config(&s3.endpoint, &bucket);
    let zstd = strata_config_with(&s3.endpoint, &bucket, ", compression: zstd");
    let old = text(10, 200_000);
    let packed = text(11, (2 << 20) + 300_000); // three chunks of the compressed form
    let noise = noise(12, 100_000);
    let large = text(13, 7 << 20); // above part_size: multipart, as it is
    let tiny = text(14, 1000); // below min_size
    {
        let dir = tempfile::tempdir().unwrap();
        let site = TestServer::start_in(&plain, dir.path()).await;
        upload(&mut site.cas().await, "", &[&old]).await;
    }
    {
        let dir = tempfile::tempdir().unwrap();
        let site = TestServer::start_in(&zstd, dir.path()).await;
        upload(&mut site.cas().await, "", &[&noise, &tiny]).await;
        bytestream_write(&site, &packed, 1 << 20).await;
        bytestream_write(&site, &large, 1 << 20).await;
    }
    let s3c = client(&s3.endpoint);
    let head = |form: &str, data: &[u8]| {
        let d = sha256(data);
        let key = format!("test/{form}/sha256/{}-{}", d.hash, d.size_bytes);
        let request = s3c.head_object().bucket(&bucket).key(key);
        async move { request.send().await.ok().and_then(|h| h.content_length()) }
    };
    let stored = head("cas-zstd1", &packed).await.expect("the compressed object");
    assert!(stored < packed.len() as i64 / 2, "{stored} bytes stored for {}", packed.len());
    assert_eq!(head("cas", &packed).await, None, "one object per blob");
    for (data, what) in [(&noise, "incompressible"), (&large, "above part_size"), (&tiny, "below min_size"), (&old, "old")] {
        assert_eq!(head("cas", data).await, Some(data.len() as i64), "{what}: stored as it is");
        assert_eq!(head("cas-zstd1", data).await, None, "{what}");
    }

    // A compressing site with nothing local reads every form, whole and in ranges across chunks.
    let dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&zstd, dir.path()).await;
    let all = [&old, &packed, &noise, &large, &tiny];
    assert!(missing(&mut site.cas().await, "", all.iter().map(|d| sha256(d)).collect()).await.is_empty());
    for data in all {
        assert_eq!(&bytestream_read(&site, &sha256(data), 0, 0).await.unwrap(), data);
    }
    let across = (1 << 20) - 10;
    assert_eq!(bytestream_read(&site, &sha256(&packed), across as i64, (1 << 20) + 20).await.unwrap(), &packed[across..across + (1 << 20) + 20]);
    let tail = packed.len() - 5;
    assert_eq!(bytestream_read(&site, &sha256(&packed), tail as i64, 0).await.unwrap(), &packed[tail..]);
    // Compressed transfers from the client go through to S3 and back to another empty site.
    let zipped = text(15, 600_000);
    assert_eq!(write_compressed(&site, &zipped).await, zstd::bulk::compress(&zipped, 3).unwrap().len() as i64);
    assert!(head("cas-zstd1", &zipped).await.is_some());
    let dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&zstd, dir.path()).await;
    for data in [&zipped, &packed, &old] {
        assert_eq!(&read_compressed(&site, &sha256(data), 0).await, data);
    }
    assert_eq!(read_compressed(&site, &sha256(&packed), across as i64).await, &packed[across..]);

    // A site without compression reads identity keys only: the compressed blob is missing to it.
    let dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&plain, dir.path()).await;
    assert_eq!(missing(&mut site.cas().await, "", vec![sha256(&packed), sha256(&old)]).await, vec![sha256(&packed)]);

    // A damaged compressed object is refused, never served.
    let d = sha256(&packed);
    let key = format!("test/cas-zstd1/sha256/{}-{}", d.hash, d.size_bytes);
    let object = s3c.get_object().bucket(&bucket).key(&key).send().await.unwrap().body.collect().await.unwrap().into_bytes();
    let mut cut = object.to_vec();
    cut.truncate(object.len() - 30);
    cut.extend_from_slice(&object[object.len() - 24..]);
    s3c.put_object().bucket(&bucket).key(&key).body(ByteStream::from(cut)).send().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&zstd, dir.path()).await;
    let err = bytestream_read(&site, &d, 0, 0).await.unwrap_err();
    assert!(err.message().contains("not an intact compressed object"), "{err:?}");
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
    // An abandoned write-back removes its temporary file on a blocking thread, soon after the read
    // has failed (not before its error reaches the client); a file that stays fails the test.
    let large = || std::fs::read_dir(dir.path().join("cas/large")).map_or(usize::MAX, |d| d.count());
    assert!(common::eventually(|| large() == 0).await, "nothing corrupted was kept, but {} files are", large());
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_kept_in_s3_are_shared_by_sites_that_start_empty() {
    use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
    let s3 = s3_server().await;
    let bucket = new_bucket(&s3.endpoint).await;
    let config = strata_config(&s3.endpoint, &bucket).replace("services: [cas, action_cache]", "services: [cas, action_cache, asset]");
    let blob = content(9, 4000);
    let uris = vec!["urn:fdc:example:artifact:1".to_string()];
    {
        let dir = tempfile::tempdir().unwrap();
        let site = TestServer::start_in(&config, dir.path()).await;
        upload(&mut site.cas().await, "", &[&blob]).await;
        let push = asset::PushBlobRequest { uris: uris.clone(), blob_digest: Some(sha256(&blob)), ..Default::default() };
        asset::push_client::PushClient::new(site.channel().await).push_blob(push).await.unwrap();
        site.stop().await;
    }
    // Another site with nothing local: the record and the blob both come from the bucket.
    let dir = tempfile::tempdir().unwrap();
    let site = TestServer::start_in(&config, dir.path()).await;
    let fetch = asset::FetchBlobRequest { uris, ..Default::default() };
    let found = asset::fetch_client::FetchClient::new(site.channel().await).fetch_blob(fetch).await.unwrap().into_inner();
    assert_eq!(found.blob_digest, Some(sha256(&blob)));
}
