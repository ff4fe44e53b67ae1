//! The Remote Asset API over gRPC: BuildStream's start-up probe, pushes and fetches of blobs and
//! directories by any of their URIs with qualifiers in any order, completeness (a push of what the
//! CAS lacks is FAILED_PRECONDITION; an asset whose blob was evicted is NOT_FOUND), expiry and
//! `oldest_content_accepted`, malformed input, persistence across a restart, and a site cache that
//! chains its assets to an upstream Strata.

mod common;

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Timestamp;
use asset::fetch_client::FetchClient;
use asset::push_client::PushClient;
use common::*;
use prost::Message;
use tonic::transport::Channel;
use tonic::Code;

const ASSET_CONFIG: &str = r#"
listen: 127.0.0.1:0
storage:
  main:
    cas:
      - memory: { max_size: 8MiB, max_blob: 16KiB }
      - disk: { path: cas, max_size: 64MiB, segment_size: 1MiB, sync: always }
    action_cache:
      - memory: { max_size: 1MiB }
      - disk: { path: ac, max_size: 8MiB, segment_size: 1MiB, sync: always }
instances:
  - { name: "", storage: main, services: [cas, action_cache, asset] }
  - { name: "no-assets", storage: main, services: [cas, action_cache] }
"#;

/// A server on `config` with its data in a directory that lives as long as the guard returned.
async fn start(config: &str) -> (TestServer, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (TestServer::start_in(config, dir.path()).await, dir)
}

async fn clients(server: &TestServer) -> (FetchClient<Channel>, PushClient<Channel>) {
    let channel = server.channel().await;
    (FetchClient::new(channel.clone()), PushClient::new(channel))
}

fn q(name: &str, value: &str) -> asset::Qualifier {
    asset::Qualifier { name: name.into(), value: value.into() }
}

fn push_blob(uris: &[&str], qualifiers: Vec<asset::Qualifier>, digest: reapi::Digest) -> asset::PushBlobRequest {
    asset::PushBlobRequest { uris: uris.iter().map(|u| u.to_string()).collect(), qualifiers, blob_digest: Some(digest), ..Default::default() }
}

fn fetch_blob(uris: &[&str], qualifiers: Vec<asset::Qualifier>) -> asset::FetchBlobRequest {
    asset::FetchBlobRequest { uris: uris.iter().map(|u| u.to_string()).collect(), qualifiers, ..Default::default() }
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

#[tokio::test]
async fn buildstreams_probe_and_instances_without_the_service() {
    let (server, _server_dir) = start(ASSET_CONFIG).await;
    let (mut fetch, mut push) = clients(&server).await;
    let err = fetch.fetch_blob(asset::FetchBlobRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("uris"), "{}", err.message());
    let err = push.push_blob(asset::PushBlobRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fetch.fetch_directory(asset::FetchDirectoryRequest::default()).await.unwrap_err().code(), Code::InvalidArgument);
    assert_eq!(push.push_directory(asset::PushDirectoryRequest::default()).await.unwrap_err().code(), Code::InvalidArgument);
    let other = asset::FetchBlobRequest { instance_name: "no-assets".into(), ..Default::default() };
    assert_eq!(fetch.fetch_blob(other).await.unwrap_err().code(), Code::Unimplemented);
}

#[tokio::test]
async fn a_pushed_blob_is_found_by_every_uri_with_its_qualifiers_in_any_order() {
    let (server, _server_dir) = start(ASSET_CONFIG).await;
    let (mut fetch, mut push) = clients(&server).await;
    let blob = content(1, 5000);
    upload(&mut server.cas().await, "", &[&blob]).await;
    let qualifiers = vec![q("checksum.sri", "sha256-x"), q("arch", "x86-64")];
    push.push_blob(push_blob(&["https://example.org/a.tar", "urn:a"], qualifiers, sha256(&blob))).await.unwrap();

    for uri in ["https://example.org/a.tar", "urn:a"] {
        let found = fetch.fetch_blob(fetch_blob(&["urn:unknown", uri], vec![q("arch", "x86-64"), q("checksum.sri", "sha256-x")])).await.unwrap().into_inner();
        assert_eq!(found.blob_digest, Some(sha256(&blob)));
        assert_eq!(found.uri, uri);
        assert_eq!(found.status.as_ref().map(|s| s.code), Some(0), "{:?}", found.status);
    }
    let cases = [
        fetch_blob(&["urn:a"], vec![]),
        fetch_blob(&["urn:a"], vec![q("arch", "x86-64")]),
        fetch_blob(&["urn:a"], vec![q("arch", "arm64"), q("checksum.sri", "sha256-x")]),
        fetch_blob(&["urn:b"], vec![q("arch", "x86-64"), q("checksum.sri", "sha256-x")]),
    ];
    for request in cases {
        let err = fetch.fetch_blob(request.clone()).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound, "{request:?}");
    }
    // A blob asset is not a directory asset of the same URI.
    let dir = asset::FetchDirectoryRequest { uris: vec!["urn:a".into()], qualifiers: vec![q("arch", "x86-64"), q("checksum.sri", "sha256-x")], ..Default::default() };
    assert_eq!(fetch.fetch_directory(dir).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn a_push_of_what_the_cas_lacks_names_it_and_an_evicted_blob_makes_the_asset_missing() {
    let config = ASSET_CONFIG.replace(
        "      - memory: { max_size: 8MiB, max_blob: 16KiB }\n      - disk: { path: cas, max_size: 64MiB, segment_size: 1MiB, sync: always }",
        "      - memory: { max_size: 256KiB }",
    );
    let (server, _server_dir) = start(&config).await;
    let (mut fetch, mut push) = clients(&server).await;
    let mut cas = server.cas().await;
    let (blob, reference, absent) = (content(2, 4000), content(3, 4000), content(4, 10));
    upload(&mut cas, "", &[&blob, &reference]).await;

    let err = push.push_blob(push_blob(&["urn:missing"], vec![], sha256(&absent))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&sha256(&absent).hash), "{}", err.message());
    let mut with_refs = push_blob(&["urn:refs"], vec![], sha256(&blob));
    with_refs.references_blobs = vec![sha256(&reference), sha256(&absent)];
    let err = push.push_blob(with_refs.clone()).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&sha256(&absent).hash) && !err.message().contains(&sha256(&reference).hash), "{}", err.message());
    assert_eq!(fetch.fetch_blob(fetch_blob(&["urn:refs"], vec![])).await.unwrap_err().code(), Code::NotFound, "nothing was stored");

    with_refs.references_blobs = vec![sha256(&reference)];
    push.push_blob(with_refs).await.unwrap();
    assert!(fetch.fetch_blob(fetch_blob(&["urn:refs"], vec![])).await.is_ok());
    // Write three times the 256 KiB CAS without asking about the reference (FindMissing counts as a
    // use of what it finds, and would copy it forward), so its block is evicted; the asset goes with it.
    for seed in 100..300 {
        upload(&mut cas, "", &[&content(seed, 4000)]).await;
    }
    assert_eq!(missing(&mut cas, "", vec![sha256(&reference)]).await.len(), 1, "the reference was never evicted");
    assert_eq!(fetch.fetch_blob(fetch_blob(&["urn:refs"], vec![])).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn expired_and_too_old_assets_are_not_found() {
    let (server, _server_dir) = start(ASSET_CONFIG).await;
    let (mut fetch, mut push) = clients(&server).await;
    let blob = content(5, 100);
    upload(&mut server.cas().await, "", &[&blob]).await;
    let mut expired = push_blob(&["urn:expired"], vec![], sha256(&blob));
    expired.expire_at = Some(Timestamp { seconds: now() - 10, nanos: 0 });
    push.push_blob(expired).await.unwrap();
    assert_eq!(fetch.fetch_blob(fetch_blob(&["urn:expired"], vec![])).await.unwrap_err().code(), Code::NotFound);

    let mut later = push_blob(&["urn:later"], vec![], sha256(&blob));
    later.expire_at = Some(Timestamp { seconds: now() + 3600, nanos: 0 });
    push.push_blob(later).await.unwrap();
    let found = fetch.fetch_blob(fetch_blob(&["urn:later"], vec![])).await.unwrap().into_inner();
    assert!(found.expires_at.is_some_and(|t| t.seconds > now()));
    let mut fresh_only = fetch_blob(&["urn:later"], vec![]);
    fresh_only.oldest_content_accepted = Some(Timestamp { seconds: now() + 60, nanos: 0 });
    assert_eq!(fetch.fetch_blob(fresh_only).await.unwrap_err().code(), Code::NotFound);
    let mut old_enough = fetch_blob(&["urn:later"], vec![]);
    old_enough.oldest_content_accepted = Some(Timestamp { seconds: now() - 60, nanos: 0 });
    assert!(fetch.fetch_blob(old_enough).await.is_ok());
}

#[tokio::test]
async fn malformed_requests_are_refused_and_store_nothing() {
    let (server, _server_dir) = start(ASSET_CONFIG).await;
    let (mut fetch, mut push) = clients(&server).await;
    let blob = content(6, 100);
    upload(&mut server.cas().await, "", &[&blob]).await;
    let bad_digest = reapi::Digest { hash: "not-hex".into(), size_bytes: 1 };
    let many: Vec<String> = (0..1001).map(|i| format!("urn:{i}")).collect();
    let cases: Vec<(asset::PushBlobRequest, &str)> = vec![
        (push_blob(&["urn:x"], vec![], bad_digest.clone()), "blob_digest"),
        (asset::PushBlobRequest { uris: vec!["urn:x".into()], ..Default::default() }, "blob_digest"),
        (asset::PushBlobRequest { digest_function: 77, ..push_blob(&["urn:x"], vec![], sha256(&blob)) }, "digest function"),
        (push_blob(&["urn:x", ""], vec![], sha256(&blob)), "empty"),
        (push_blob(&["urn:x"], vec![q("a", "1"), q("a", "2")], sha256(&blob)), "twice"),
        (push_blob(&["urn:x"], vec![q("", "1")], sha256(&blob)), "qualifier"),
        (asset::PushBlobRequest { uris: many.clone(), ..push_blob(&[], vec![], sha256(&blob)) }, "at most 1000"),
        (asset::PushBlobRequest { references_blobs: vec![bad_digest.clone()], ..push_blob(&["urn:x"], vec![], sha256(&blob)) }, "references_blobs[0]"),
    ];
    for (request, expected) in cases {
        let err = push.push_blob(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{expected}: {err:?}");
        assert!(err.message().contains(expected), "expected {expected:?} in {:?}", err.message());
    }
    assert_eq!(fetch.fetch_blob(fetch_blob(&["urn:x"], vec![])).await.unwrap_err().code(), Code::NotFound, "nothing was stored");
    let huge = "u".repeat(70_000);
    let err = fetch.fetch_blob(fetch_blob(&[&huge], vec![])).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().len() < 1000, "the URI is quoted bounded");
}

/// A Directory tree of two levels in the CAS; returns the root digest and a file inside it.
async fn tree(server: &TestServer) -> (reapi::Digest, Vec<u8>) {
    let file = content(7, 3000);
    let leaf = reapi::Directory {
        files: vec![reapi::FileNode { name: "f".into(), digest: Some(sha256(&file)), ..Default::default() }],
        ..Default::default()
    };
    let root = reapi::Directory {
        directories: vec![reapi::DirectoryNode { name: "sub".into(), digest: Some(sha256(&leaf.encode_to_vec())) }],
        ..Default::default()
    };
    upload(&mut server.cas().await, "", &[&file, &leaf.encode_to_vec(), &root.encode_to_vec()]).await;
    (sha256(&root.encode_to_vec()), file)
}

#[tokio::test]
async fn directories_are_pushed_and_fetched_whole_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(ASSET_CONFIG, dir.path()).await;
    let (mut fetch, mut push) = clients(&server).await;
    let (root, _) = tree(&server).await;
    let request = asset::PushDirectoryRequest { uris: vec!["urn:source:1".into()], root_directory_digest: Some(root.clone()), ..Default::default() };
    push.push_directory(request).await.unwrap();
    let ask = asset::FetchDirectoryRequest { uris: vec!["urn:source:1".into()], ..Default::default() };
    assert_eq!(fetch.fetch_directory(ask.clone()).await.unwrap().into_inner().root_directory_digest, Some(root.clone()));

    // A tree with a missing file cannot be pushed.
    let orphan = reapi::Directory {
        files: vec![reapi::FileNode { name: "gone".into(), digest: Some(sha256(b"never uploaded")), ..Default::default() }],
        ..Default::default()
    };
    upload(&mut server.cas().await, "", &[&orphan.encode_to_vec()]).await;
    let request = asset::PushDirectoryRequest { uris: vec!["urn:source:2".into()], root_directory_digest: Some(sha256(&orphan.encode_to_vec())), ..Default::default() };
    let err = push.push_directory(request).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert!(err.message().contains(&sha256(b"never uploaded").hash));

    let addr = server.addr;
    server.stop().await;
    let server = TestServer::start_at(ASSET_CONFIG, dir.path(), addr).await;
    let (mut fetch, _) = clients(&server).await;
    assert_eq!(fetch.fetch_directory(ask).await.unwrap().into_inner().root_directory_digest, Some(root), "kept across the restart");
}

#[tokio::test]
async fn a_site_cache_chains_its_assets_to_an_upstream_strata() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = TestServer::start_in(ASSET_CONFIG, &tmp.path().join("upstream")).await;
    let site_config = format!(
        r#"
storage:
  site:
    cas:
      - memory: {{ max_size: 8MiB }}
      - remote: {{ endpoint: "grpc://{0}", timeout: 5s }}
    action_cache:
      - memory: {{ max_size: 1MiB }}
      - remote: {{ endpoint: "grpc://{0}", timeout: 5s }}
instances:
  - {{ name: "", storage: site, services: [cas, action_cache, asset] }}
"#,
        upstream.addr
    );
    let site = TestServer::start_in(&site_config, &tmp.path().join("site")).await;
    let (mut site_fetch, mut site_push) = clients(&site).await;
    let (mut up_fetch, mut up_push) = clients(&upstream).await;

    // Pushed through the site: the upstream has it too.
    let blob = content(8, 2000);
    upload(&mut site.cas().await, "", &[&blob]).await;
    site_push.push_blob(push_blob(&["urn:artifact:a"], vec![q("p", "1")], sha256(&blob))).await.unwrap();
    let found = up_fetch.fetch_blob(fetch_blob(&["urn:artifact:a"], vec![q("p", "1")])).await.unwrap().into_inner();
    assert_eq!(found.blob_digest, Some(sha256(&blob)));

    // Pushed upstream only: the site finds it through the upstream, and keeps it.
    let other = content(9, 2000);
    upload(&mut upstream.cas().await, "", &[&other]).await;
    up_push.push_blob(push_blob(&["urn:artifact:b"], vec![], sha256(&other))).await.unwrap();
    let found = site_fetch.fetch_blob(fetch_blob(&["urn:artifact:b"], vec![])).await.unwrap().into_inner();
    assert_eq!(found.blob_digest, Some(sha256(&other)));
    // Read once through the site, the blob is in the site's memory tier; with the upstream gone, the
    // site answers from its own record and its own copy.
    let read = reapi::BatchReadBlobsRequest { digests: vec![sha256(&other)], ..Default::default() };
    assert_eq!(site.cas().await.batch_read_blobs(read).await.unwrap().into_inner().responses[0].data, other);
    upstream.stop().await;
    let found = site_fetch.fetch_blob(fetch_blob(&["urn:artifact:b"], vec![])).await.unwrap().into_inner();
    assert_eq!(found.blob_digest, Some(sha256(&other)));
    assert_eq!(site_fetch.fetch_blob(fetch_blob(&["urn:artifact:none"], vec![])).await.unwrap_err().code(), Code::Unavailable);
}

/// A local HTTP/1.1 server on 127.0.0.1 for the downloader's tests: `/file` answers `body`,
/// `/moved` redirects to `/file`, anything else is 404. Counts the requests it served.
async fn http_origin(body: Vec<u8>) -> (std::net::SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = served.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut socket, _)) = listener.accept().await else { return };
            let (body, count) = (body.clone(), count.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    let Ok(n) = socket.read(&mut buf).await else { return };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buf[..n]);
                }
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let target = String::from_utf8_lossy(&request).split_whitespace().nth(1).unwrap_or("").to_string();
                let path = target.split('?').next().unwrap_or("").to_string();
                let head = match path.as_str() {
                    "/file" => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", body.len()),
                    "/moved" => "HTTP/1.1 302 Found\r\nlocation: /file\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
                    _ => "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".into(),
                };
                let _ = socket.write_all(head.as_bytes()).await;
                if path == "/file" {
                    let _ = socket.write_all(&body).await;
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    (addr, served, task)
}

fn sri(data: &[u8]) -> asset::Qualifier {
    use base64::Engine as _;
    use sha2::Digest as _;
    q("checksum.sri", &format!("sha256-{}", base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(data))))
}

#[tokio::test]
async fn http_uris_are_downloaded_once_verified_and_then_served_without_the_network() {
    let body = content(10, 300_000);
    let (origin, served, task) = http_origin(body.clone()).await;
    let config = format!("{ASSET_CONFIG}http_fetch: {{ allow: [\"http://{origin}/\"], max_size: 1MiB, timeout: 10s }}\n");
    let (server, _server_dir) = start(&config).await;
    let (mut fetch, _) = clients(&server).await;
    let file = format!("http://{origin}/file");

    let found = fetch.fetch_blob(fetch_blob(&[&file], vec![sri(&body)])).await.unwrap().into_inner();
    assert_eq!(found.status.as_ref().map(|s| s.code), Some(0), "{:?}", found.status);
    assert_eq!(found.blob_digest, Some(sha256(&body)));
    assert!(missing(&mut server.cas().await, "", vec![sha256(&body)]).await.is_empty(), "stored in the CAS");
    // A redirect is followed; without a checksum the download is stored under what it hashes to.
    let moved = format!("http://{origin}/moved");
    assert_eq!(fetch.fetch_blob(fetch_blob(&[&moved], vec![])).await.unwrap().into_inner().blob_digest, Some(sha256(&body)));

    // Ten clients asking for a new URI at once cause one download.
    let before = served.load(std::sync::atomic::Ordering::SeqCst);
    let many = format!("http://{origin}/file?many");
    let asks = (0..10).map(|_| {
        let mut fetch = fetch.clone();
        let request = fetch_blob(&[&many], vec![sri(&body)]);
        async move { fetch.fetch_blob(request).await.unwrap().into_inner().blob_digest }
    });
    for digest in futures::future::join_all(asks).await {
        assert_eq!(digest, Some(sha256(&body)));
    }
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), before + 1, "one download for ten concurrent fetches");

    // The origin goes away: the same fetch is served from Strata.
    task.abort();
    let before = served.load(std::sync::atomic::Ordering::SeqCst);
    let again = fetch.fetch_blob(fetch_blob(&[&file], vec![sri(&body)])).await.unwrap().into_inner();
    assert_eq!(again.blob_digest, Some(sha256(&body)));
    assert_eq!(served.load(std::sync::atomic::Ordering::SeqCst), before);
}

#[tokio::test]
async fn downloads_that_fail_or_do_not_match_store_nothing_and_say_why() {
    let body = content(11, 5000);
    let (origin, _, _task) = http_origin(body.clone()).await;
    let config = format!("{ASSET_CONFIG}http_fetch: {{ allow: [\"http://{origin}/\"], max_size: 4KiB, timeout: 10s }}\n");
    let (server, _server_dir) = start(&config).await;
    let (mut fetch, _) = clients(&server).await;
    let file = format!("http://{origin}/file");
    let status_of = |r: asset::FetchBlobResponse| r.status.map(|s| (s.code, s.message)).unwrap_or_default();

    let (code, message) = status_of(fetch.fetch_blob(fetch_blob(&[&file], vec![sri(b"other bytes")])).await.unwrap().into_inner());
    assert_eq!(code, Code::ResourceExhausted as i32, "{message}"); // 5000 bytes over the 4KiB limit, checked first
    let small = ASSET_CONFIG.to_string() + &format!("http_fetch: {{ allow: [\"http://{origin}/\"], timeout: 10s }}\n");
    let (server2, _server2_dir) = start(&small).await;
    let (mut fetch2, _) = clients(&server2).await;
    let (code, message) = status_of(fetch2.fetch_blob(fetch_blob(&[&file], vec![sri(b"other bytes")])).await.unwrap().into_inner());
    assert_eq!(code, Code::Aborted as i32, "{message}");
    assert!(message.contains("checksum.sri"), "{message}");
    assert_eq!(missing(&mut server2.cas().await, "", vec![sha256(&body)]).await.len(), 1, "a mismatch stores nothing");
    let (code, _) = status_of(fetch2.fetch_blob(fetch_blob(&[&format!("http://{origin}/nothing")], vec![])).await.unwrap().into_inner());
    assert_eq!(code, Code::NotFound as i32);
    let (code, message) = status_of(fetch2.fetch_blob(fetch_blob(&[&file], vec![q("checksum.sri", "md5-abc")])).await.unwrap().into_inner());
    assert_eq!(code, Code::PermissionDenied as i32, "{message}");

    // URLs outside the allow-list are never fetched: the asset is simply not found.
    let err = fetch.fetch_blob(fetch_blob(&["http://127.0.0.1:1/elsewhere"], vec![])).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let (plain, _plain_dir) = start(ASSET_CONFIG).await;
    let (mut fetch3, _) = clients(&plain).await;
    assert_eq!(fetch3.fetch_blob(fetch_blob(&[&file], vec![])).await.unwrap_err().code(), Code::NotFound, "off unless configured");
}
