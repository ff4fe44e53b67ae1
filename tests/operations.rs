//! Operating a server: `/metrics` counts exactly what was sent, gRPC health and `/readyz` follow the
//! storage, the admin API's warm and evict do what they say, `strata status` prints a table or fails
//! clearly, and the status page and action browser show (escaped) what an action did.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::ReadRequest;
use common::exec::{self, InProcessBot};
use common::{http_get, sample, scrape, sha256, upload, TestServer};
use prost::Message;
use strata::protocol::admin as pb;
use strata::protocol::admin::admin_client::AdminClient;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

const MEMORY_CONFIG: &str = r#"
listen: 127.0.0.1:0
http: { listen: 127.0.0.1:0 }
storage:
  main:
    cas:
      - memory: { max_size: 8MiB }
    action_cache:
      - memory: { max_size: 1MiB }
instances:
  - name: ""
    storage: main
    services: [cas, action_cache]
"#;

#[tokio::test]
async fn metrics_count_exactly_what_was_sent() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(MEMORY_CONFIG, tmp.path()).await;
    let blobs: [&[u8]; 2] = [b"first blob", b"second blob"];
    upload(&mut server.cas().await, "", &blobs).await;
    let mut ac = server.action_cache().await;
    let cached = sha256(b"a cached action");
    let result = reapi::ActionResult { exit_code: 0, ..Default::default() };
    let update = reapi::UpdateActionResultRequest { action_digest: Some(cached.clone()), action_result: Some(result), ..Default::default() };
    ac.update_action_result(update).await.unwrap();
    for _ in 0..2 {
        ac.get_action_result(reapi::GetActionResultRequest { action_digest: Some(cached.clone()), ..Default::default() }).await.unwrap();
    }
    for i in 0..3 {
        let absent = sha256(format!("uncached {i}").as_bytes());
        let err = ac.get_action_result(reapi::GetActionResultRequest { action_digest: Some(absent), ..Default::default() }).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::NotFound);
    }
    let mut asked: Vec<reapi::Digest> = blobs.iter().map(|b| sha256(b)).collect();
    asked.extend((0..3).map(|i| sha256(format!("absent {i}").as_bytes())));
    assert_eq!(common::missing(&mut server.cas().await, "", asked).await.len(), 3);
    assert_eq!(common::bytestream_read(&server, &sha256(blobs[0]), 0, 0).await.unwrap(), blobs[0]);
    assert!(common::bytestream_read(&server, &sha256(b"never stored"), 0, 0).await.is_err());

    let m = scrape(&server).await;
    let lookups = |cache, op, result| sample(&m, "strata_cache_lookups_total", &[("instance", ""), ("cache", cache), ("op", op), ("result", result)]);
    assert_eq!((lookups("action_cache", "get", "hit"), lookups("action_cache", "get", "miss")), (2.0, 3.0));
    assert_eq!((lookups("cas", "find_missing", "hit"), lookups("cas", "find_missing", "miss")), (2.0, 3.0));
    assert_eq!((lookups("cas", "read", "hit"), lookups("cas", "read", "miss")), (1.0, 1.0));
    let calls = |service, method, code| sample(&m, "strata_grpc_requests_total", &[("service", service), ("method", method), ("code", code)]);
    assert_eq!(calls("ActionCache", "GetActionResult", "OK"), 2.0);
    assert_eq!(calls("ActionCache", "GetActionResult", "NOT_FOUND"), 3.0);
    assert_eq!(calls("ActionCache", "UpdateActionResult", "OK"), 1.0);
    assert_eq!(calls("ByteStream", "Read", "OK"), 1.0);
    assert_eq!(calls("ByteStream", "Read", "NOT_FOUND"), 1.0);
    assert_eq!(sample(&m, "strata_grpc_request_seconds_count", &[("service", "ActionCache"), ("method", "GetActionResult")]), 5.0);
    let bytes_in = sample(&m, "strata_grpc_bytes_total", &[("service", "ContentAddressableStorage"), ("direction", "in")]);
    assert!(bytes_in >= (blobs[0].len() + blobs[1].len()) as f64, "{bytes_in}");
    let written = sample(&m, "strata_tier_written_bytes_total", &[("role", "cas"), ("kind", "memory")]);
    assert_eq!(written, (blobs[0].len() + blobs[1].len()) as f64);
    assert_eq!(sample(&m, "strata_tier_blobs", &[("role", "cas"), ("kind", "memory")]), 2.0);
    assert!(sample(&m, "process_resident_memory_bytes", &[]) > 0.0);
    assert!(sample(&m, "process_open_fds", &[]) > 0.0);
    server.stop().await;
}

#[tokio::test]
async fn health_and_readyz_follow_the_storage() {
    // A port nobody listens on: bound, then closed.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = format!(
        r#"
listen: 127.0.0.1:0
http: {{ listen: 127.0.0.1:0 }}
health_probe_interval: 100ms
storage:
  good:
    cas: [ {{ memory: {{ max_size: 1MiB }} }} ]
    action_cache: [ {{ memory: {{ max_size: 1MiB }} }} ]
  gone:
    cas: [ {{ remote: {{ endpoint: "grpc://{dead}", retries: 0, connect_timeout: 1s, timeout: 2s }} }} ]
    action_cache: [ {{ memory: {{ max_size: 1MiB }} }} ]
  queued:
    cas:
      - memory: {{ max_size: 1MiB }}
      - remote: {{ endpoint: "grpc://{dead}", retries: 0, connect_timeout: 1s, timeout: 2s, when_unavailable: queue }}
    action_cache: [ {{ memory: {{ max_size: 1MiB }} }} ]
instances:
  - {{ name: "", storage: good, services: [cas] }}
  - {{ name: "upstream-only", storage: gone, services: [action_cache] }}
  - {{ name: "queued", storage: queued, services: [cas] }}
"#
    );
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(&config, tmp.path()).await;
    let mut health = HealthClient::new(server.channel().await);
    let status = |name: &'static str| {
        let mut health = health.clone();
        async move { health.check(HealthCheckRequest { service: name.into() }).await.unwrap().into_inner().status }
    };
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    while status("build.bazel.remote.execution.v2.ActionCache").await != ServingStatus::NotServing as i32 {
        assert!(tokio::time::Instant::now() < deadline, "the ActionCache service on unreachable storage never went NOT_SERVING");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(status("build.bazel.remote.execution.v2.ContentAddressableStorage").await, ServingStatus::Serving as i32);
    assert_eq!(status("").await, ServingStatus::NotServing as i32);
    let answer = health.check(HealthCheckRequest { service: "build.bazel.remote.execution.v2.Capabilities".into() }).await.unwrap();
    assert_eq!(answer.into_inner().status, ServingStatus::Serving as i32);
    let (code, body) = http_get(&server, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("storage \"gone\" FAILING") && body.contains("unreachable"), "{body}");
    assert!(body.contains("storage \"good\" serving"), "{body}");
    // Writes to a queued upstream are spooled, so its storage serves; the upstream itself is still
    // shown unreachable (the probe asks below the spool).
    // (Its stack is probed after "gone" in each round: ask until the round has reached it.)
    let queued_section = |body: &str| body.split("instance \"queued\"").nth(1).and_then(|rest| rest.split("\ninstance ").next()).unwrap_or_default().to_string();
    let mut queued = queued_section(&body);
    while !queued.contains("unreachable") && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        queued = queued_section(&http_get(&server, "/readyz").await.1);
    }
    assert!(queued.starts_with(": storage \"queued\" serving") && queued.contains("storage.queued.cas[1]") && queued.contains("unreachable"), "{queued}");
    assert_eq!(http_get(&server, "/healthz").await, (200, "ok\n".to_string()));
    server.stop().await;
}

#[tokio::test]
async fn readyz_is_ready_with_local_storage() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(MEMORY_CONFIG, tmp.path()).await;
    let (code, body) = http_get(&server, "/readyz").await;
    assert_eq!((code, body.lines().next()), (200, Some("ready")), "{body}");
    server.stop().await;
}

async fn admin(server: &TestServer) -> AdminClient<tonic::transport::Channel> {
    AdminClient::new(server.channel().await)
}

fn pb_digest(d: &reapi::Digest) -> pb::Digest {
    pb::Digest { hash: d.hash.clone(), size_bytes: d.size_bytes, digest_function: String::new() }
}

async fn present_in(server: &TestServer, d: &reapi::Digest) -> Vec<(String, bool)> {
    let request = pb::LocateBlobRequest { instance: String::new(), digest: Some(pb_digest(d)) };
    let tiers = admin(server).await.locate_blob(request).await.unwrap().into_inner().tiers;
    tiers.into_iter().map(|t| (t.tier, t.present)).collect()
}

#[tokio::test]
async fn admin_warm_fills_the_local_tier_and_evict_empties_it() {
    let tmp = tempfile::tempdir().unwrap();
    let upstream = TestServer::start_in(MEMORY_CONFIG, &tmp.path().join("upstream")).await;
    let site_config = format!(
        r#"
listen: 127.0.0.1:0
storage:
  site:
    cas:
      - memory: {{ max_size: 8MiB }}
      - remote: {{ endpoint: "grpc://{}" }}
    action_cache:
      - memory: {{ max_size: 1MiB }}
instances:
  - {{ name: "", storage: site, services: [cas, action_cache] }}
"#,
        upstream.addr
    );
    let site = TestServer::start_in(&site_config, &tmp.path().join("site")).await;
    let file = b"a file of the tree".to_vec();
    let dir = reapi::Directory {
        files: vec![reapi::FileNode { name: "f".into(), digest: Some(sha256(&file)), ..Default::default() }],
        ..Default::default()
    }
    .encode_to_vec();
    let single = b"warm me".to_vec();
    upload(&mut upstream.cas().await, "", &[&file, &dir, &single]).await;
    let memory = "storage.site.cas[0]".to_string();
    let remote = format!("storage.site.cas[1] (grpc://{})", upstream.addr);
    assert_eq!(present_in(&site, &sha256(&single)).await, vec![(memory.clone(), false), (remote.clone(), true)]);

    let mut client = admin(&site).await;
    let absent = sha256(b"nobody has this");
    let warm = pb::WarmRequest { instance: String::new(), digests: vec![pb_digest(&sha256(&single)), pb_digest(&absent)], tree_root: Some(pb_digest(&sha256(&dir))) };
    let warmed = client.warm(warm).await.unwrap().into_inner();
    assert_eq!(warmed.warmed, 3, "the blob, the Directory and its file");
    assert_eq!(warmed.bytes, (single.len() + dir.len() + file.len()) as u64);
    assert_eq!(warmed.missing, vec![pb_digest(&absent)]);
    for blob in [&single, &dir, &file] {
        assert_eq!(present_in(&site, &sha256(blob)).await, vec![(memory.clone(), true), (remote.clone(), true)]);
    }

    let evict = pb::EvictBlobRequest { instance: String::new(), digest: Some(pb_digest(&sha256(&single))) };
    let evicted = client.evict_blob(evict.clone()).await.unwrap().into_inner().evicted_from;
    assert_eq!(evicted, vec![memory.clone()]);
    assert_eq!(present_in(&site, &sha256(&single)).await, vec![(memory.clone(), false), (remote, true)]);
    assert!(client.evict_blob(evict).await.unwrap().into_inner().evicted_from.is_empty(), "a second evict finds nothing");

    let bad = pb::EvictBlobRequest { instance: String::new(), digest: Some(pb::Digest { hash: "zz".into(), size_bytes: 1, digest_function: String::new() }) };
    assert_eq!(client.evict_blob(bad).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let unknown = pb::LocateBlobRequest { instance: "nope".into(), digest: Some(pb_digest(&absent)) };
    assert_eq!(client.locate_blob(unknown).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    let empty = pb::WarmRequest { instance: String::new(), digests: vec![], tree_root: None };
    assert_eq!(client.warm(empty).await.unwrap_err().code(), tonic::Code::InvalidArgument);
    site.stop().await;
    upstream.stop().await;
}

#[tokio::test]
async fn an_evicted_disk_blob_stays_gone_after_a_restart() {
    let config = r#"
listen: 127.0.0.1:0
storage:
  main:
    cas:
      - disk: { path: cas, max_size: 16MiB, segment_size: 1MiB, sync: always }
    action_cache:
      - memory: { max_size: 1MiB }
instances:
  - { name: "", storage: main, services: [cas] }
"#;
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(config, tmp.path()).await;
    let (gone, kept) = (b"evict this one".to_vec(), b"keep this one".to_vec());
    upload(&mut server.cas().await, "", &[&gone, &kept]).await;
    let evict = pb::EvictBlobRequest { instance: String::new(), digest: Some(pb_digest(&sha256(&gone))) };
    assert_eq!(admin(&server).await.evict_blob(evict).await.unwrap().into_inner().evicted_from, vec!["storage.main.cas[0]".to_string()]);
    server.stop().await;
    let server = TestServer::start_in(config, tmp.path()).await;
    let missing = common::missing(&mut server.cas().await, "", vec![sha256(&gone), sha256(&kept)]).await;
    assert_eq!(missing, vec![sha256(&gone)], "the evicted blob is gone and the other one kept");
    assert_eq!(common::bytestream_read(&server, &sha256(&kept), 0, 0).await.unwrap(), kept);
    server.stop().await;
}

#[tokio::test]
async fn strata_status_prints_a_table_and_fails_clearly_against_a_stopped_server() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(MEMORY_CONFIG, tmp.path()).await;
    upload(&mut server.cas().await, "", &[b"one blob"]).await;
    let strata = env!("CARGO_BIN_EXE_strata");
    let target = format!("grpc://{}", server.addr);
    let out = tokio::process::Command::new(strata).args(["status", "--server", &target]).output().await.unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text} {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("instance \"\": cas, action_cache on storage \"main\""), "{text}");
    assert!(text.lines().any(|l| l.contains("memory") && l.contains("storage.main.cas[0]") && l.split_whitespace().nth(2) == Some("1")), "{text}");
    let out = tokio::process::Command::new(strata).args(["status", "--json", "--server", &target]).output().await.unwrap();
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["status"]["instances"][0]["tiers"][0]["blobs"], 1);
    server.stop().await;
    let out = tokio::process::Command::new(strata).args(["status", "--server", &target]).output().await.unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(err.contains(&format!("cannot reach {target}")) && err.contains("is `strata serve` running there?"), "{err}");
}

#[tokio::test]
async fn the_action_page_shows_an_action_escaped_and_the_status_page_its_server() {
    let tmp = tempfile::tempdir().unwrap();
    let config = format!("{}http: {{ listen: 127.0.0.1:0 }}\n", exec::EXEC_CONFIG);
    let server = TestServer::start_in(&config, &tmp.path().join("server")).await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    let digest = exec::action(&server, &exec::sh("echo '<script>alert(1)</script> & friends'; exit 3")).await;
    let response = exec::execute(&server, &digest).await;
    assert_eq!(response.result.as_ref().unwrap().exit_code, 3);

    let (code, page) = http_get(&server, &format!("/action?digest={}/{}", digest.hash, digest.size_bytes)).await;
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("exit code <span class=\"bad\">3</span>"), "{page}");
    assert!(page.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; friends"), "stdout shown, escaped: {page}");
    assert!(!page.contains("<script>"), "nothing a client chose reaches the page unescaped");
    assert!(page.contains("/bin/sh -c"), "the Command's arguments: {page}");

    let stdout = response.result.as_ref().unwrap().stdout_digest.clone().unwrap();
    let (code, body) = http_get(&server, &format!("/blob?digest={}/{}&name=stdout", stdout.hash, stdout.size_bytes)).await;
    assert_eq!((code, body.as_str()), (200, "<script>alert(1)</script> & friends\n"));

    let (code, page) = http_get(&server, "/action?digest=not-a-digest").await;
    assert_eq!(code, 400);
    assert!(page.contains("expected HASH/SIZE"), "{page}");
    let absent = sha256(b"no such action");
    let (code, page) = http_get(&server, &format!("/action?digest={}/{}", absent.hash, absent.size_bytes)).await;
    assert_eq!(code, 404);
    assert!(page.contains("No instance holds the Action"), "{page}");
    let (code, _) = http_get(&server, &format!("/blob?digest={}/{}", absent.hash, absent.size_bytes)).await;
    assert_eq!(code, 404);

    let (code, page) = http_get(&server, "/").await;
    assert_eq!(code, 200);
    for expected in ["Instance <code>&quot;&quot;</code>", "storage.main.cas[0]", "action cache", "Recent operations", "test-bot-bot", &digest.hash] {
        assert!(page.contains(expected), "{expected} missing from the status page: {page}");
    }
    bot.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn unknown_methods_of_known_services_are_not_labels() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(MEMORY_CONFIG, tmp.path()).await;
    let mut grpc = tonic::client::Grpc::new(server.channel().await);
    let codec = tonic_prost::ProstCodec::<ReadRequest, ReadRequest>::default();
    for name in ["/google.bytestream.ByteStream/MadeUp1", "/google.bytestream.ByteStream/MadeUp2", "/evil.Service/X"] {
        let path = http::uri::PathAndQuery::from_static(name);
        grpc.ready().await.unwrap();
        let err = grpc.unary(tonic::Request::new(ReadRequest::default()), path, codec.clone()).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::Unimplemented);
    }
    let m = scrape(&server).await;
    assert_eq!(sample(&m, "strata_grpc_requests_total", &[("service", "unknown"), ("method", "unknown"), ("code", "UNIMPLEMENTED")]), 3.0);
    assert!(!m.samples.iter().any(|s| s.labels.values().any(|v| v.contains("MadeUp") || v.contains("evil"))));
    server.stop().await;
}

/// A client that resets its call before its request message is whole gets nobody's fault counted:
/// CANCELLED, not the INTERNAL ("Missing request message") tonic answers to nobody. A bot breaks off
/// its long poll this way whenever an action finishes, and `/metrics` showed INTERNAL for it.
#[tokio::test]
async fn a_call_broken_off_by_its_client_counts_as_cancelled() {
    use http_body_util::StreamBody;
    use hyper::body::Frame;
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(MEMORY_CONFIG, tmp.path()).await;
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(tcp);
    let (mut sender, connection) = hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    // Nothing of the message, then half of a message's 5-byte prefix: each followed by a failure
    // of the body, which the client sends as a reset of the stream.
    for sent in [&b""[..], &b"\0\0\0"[..]] {
        let frames: Vec<Result<Frame<bytes::Bytes>, std::io::Error>> = vec![
            Ok(Frame::data(bytes::Bytes::copy_from_slice(sent))),
            Err(std::io::Error::other("the client gives up")),
        ];
        let request = http::Request::post(format!("http://{}/build.bazel.remote.execution.v2.ActionCache/GetActionResult", server.addr))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(StreamBody::new(futures::stream::iter(frames)))
            .unwrap();
        sender.ready().await.unwrap();
        // The answer, if any comes, is not the point: the stream is reset.
        let _ = sender.send_request(request).await;
    }
    let labels = |code| [("service", "ActionCache"), ("method", "GetActionResult"), ("code", code)];
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let m = scrape(&server).await;
        if sample(&m, "strata_grpc_requests_total", &labels("CANCELLED")) == 2.0 {
            assert_eq!(sample(&m, "strata_grpc_requests_total", &labels("INTERNAL")), 0.0);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "two broken-off calls were not counted as CANCELLED");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;
}

#[tokio::test]
async fn admin_lists_bots_and_operations_and_cancels_one() {
    let (server, tmp) = exec::start().await;
    let mut client = admin(&server).await;
    let digest = exec::action(&server, &exec::sh("sleep 30")).await;
    // No bot yet: the operation waits in the queue.
    let waiting = tokio::spawn({
        let request = exec::request(&digest);
        let addr = server.addr;
        async move {
            let channel = tonic::transport::Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
            let mut stream = reapi::execution_client::ExecutionClient::new(channel).execute(request).await.unwrap().into_inner();
            let mut last = None;
            while let Some(Ok(op)) = futures::StreamExt::next(&mut stream).await {
                last = Some(op);
            }
            last
        }
    });
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let op = loop {
        let ops = client.list_operations(pb::ListOperationsRequest { limit: 0 }).await.unwrap().into_inner().operations;
        if let Some(op) = ops.into_iter().find(|o| o.action_digest == Some(pb_digest(&digest))) {
            break op;
        }
        assert!(tokio::time::Instant::now() < deadline, "the operation never showed");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(op.stage, "QUEUED");
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 2, &[("OSFamily", "linux")]);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    let bots = loop {
        let bots = client.list_bots(pb::ListBotsRequest {}).await.unwrap().into_inner().bots;
        if bots.first().is_some_and(|b| b.busy == 1) {
            break bots;
        }
        assert!(tokio::time::Instant::now() < deadline, "the bot never took the lease: {bots:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!((bots.len(), bots[0].bot_id.as_str(), bots[0].capacity), (1, "test-bot-bot", 2));
    assert!(bots[0].properties.contains(&pb::Property { name: "OSFamily".into(), value: "linux".into() }), "{bots:?}");

    client.cancel_operation(pb::CancelOperationRequest { name: op.name.clone() }).await.unwrap();
    let last = waiting.await.unwrap().expect("the Execute stream ended with an operation");
    assert!(last.done, "{last:?}");
    let ops = client.list_operations(pb::ListOperationsRequest { limit: 0 }).await.unwrap().into_inner().operations;
    let cancelled = ops.iter().find(|o| o.name == op.name).unwrap();
    assert_eq!(cancelled.stage, "COMPLETED");
    assert!(cancelled.error.contains("Cancelled"), "{cancelled:?}");
    let err = client.cancel_operation(pb::CancelOperationRequest { name: "operations/none".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    bot.stop().await;
    server.stop().await;
}
