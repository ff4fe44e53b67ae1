//! Authentication and permissions with static bearer tokens: every permission against every RPC
//! family, per-instance grants, what Capabilities tells each caller, and the attacks of an
//! unauthenticated network: forging action results, serving as a rogue bot, reading or cancelling
//! other callers' operations. The same matrix for JWTs and client certificates is in
//! `auth_identities.rs`; the matrix itself in `common/matrix.rs`.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::ReadRequest;
use bazel_remote_apis::google::longrunning as lro;
use common::exec::InProcessBot;
use common::matrix::{self, call, denied, Family, FAMILIES};
use common::*;
use futures::StreamExt;
use prost::Message;
use strata::protocol::rwapi;
use strata::protocol::{AuthChannel, ClientAuth};
use tonic::Code;

use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;
use reapi::action_cache_client::ActionCacheClient;
use reapi::capabilities_client::CapabilitiesClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use reapi::execution_client::ExecutionClient;

/// One identity per permission, one with per-instance grants, the split of config/auth.yaml.
fn config() -> String {
    let mut ids = String::new();
    for (name, permissions) in [
        ("reader", "[read]"),
        ("writer", "[write]"),
        ("acwriter", "[write_ac]"),
        ("executor", "[execute]"),
        ("botter", "[bot]"),
        ("admin", "[admin]"),
        ("scoped", r#"{ "*": [read], other: [read, write] }"#),
        ("ci", "[read, write, write_ac, execute]"),
        ("dev", "[read, write, execute]"),
        ("dev2", "[read, write, execute]"),
        ("bot", "[bot, read, write]"),
    ] {
        ids += &format!("    - {{ name: {name}, token_sha256: \"{}\", permissions: {permissions} }}\n", hex(&token(name)));
    }
    format!("{}auth:\n  identities:\n{ids}", matrix::SERVICES)
}

fn token(name: &str) -> String {
    format!("{name}-token-0123456789abcdef")
}

fn hex(token: &str) -> String {
    use sha2::Digest as _;
    sha2::Sha256::digest(token.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

async fn start() -> (TestServer, tempfile::TempDir) {
    let tmp = tempfile::tempdir().unwrap();
    (TestServer::start_in(&config(), tmp.path()).await, tmp)
}

/// A channel that sends `token` (None: no credentials).
fn channel(server: &TestServer, token: Option<&str>) -> AuthChannel {
    let auth = ClientAuth { bearer_token: token.map(str::to_string), ..Default::default() };
    strata::protocol::channel(&format!("grpc://{}", server.addr), &auth, std::time::Duration::from_secs(5)).unwrap()
}

fn as_id(server: &TestServer, name: &str) -> AuthChannel {
    channel(server, Some(&token(name)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_permission_opens_exactly_its_rpc_families() {
    let (server, _tmp) = start().await;
    matrix::check(|identity| as_id(&server, identity), "token").await;
    // Without credentials, and with a token nobody issued, every family is UNAUTHENTICATED.
    for (family, _) in FAMILIES {
        assert_eq!(call(family, channel(&server, None), "").await, Code::Unauthenticated, "anonymous {family:?}");
        assert_eq!(call(family, channel(&server, Some("forged-token-0123456789")), "").await, Code::Unauthenticated, "forged {family:?}");
    }
    // Health needs nothing: load balancers probe without credentials.
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel(&server, None));
    assert!(health.check(tonic_health::pb::HealthCheckRequest { service: String::new() }).await.is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grants_can_differ_per_instance() {
    let (server, _tmp) = start().await;
    assert_eq!(call(Family::BatchUpdate, as_id(&server, "scoped"), "").await, Code::PermissionDenied);
    assert_eq!(call(Family::ByteStreamWrite, as_id(&server, "scoped"), "").await, Code::PermissionDenied);
    assert!(!denied(call(Family::BatchUpdate, as_id(&server, "scoped"), "other").await));
    assert!(!denied(call(Family::ByteStreamWrite, as_id(&server, "scoped"), "other").await));
    assert!(!denied(call(Family::FindMissing, as_id(&server, "scoped"), "").await));
    // The message names the identity, the permission and the instance, and nothing about blobs.
    let mut cas = ContentAddressableStorageClient::new(as_id(&server, "scoped"));
    let data = b"scoped".to_vec();
    let request = reapi::BatchUpdateBlobsRequest {
        requests: vec![reapi::batch_update_blobs_request::Request { digest: Some(sha256(&data)), data, ..Default::default() }],
        ..Default::default()
    };
    let status = cas.batch_update_blobs(request).await.unwrap_err();
    assert!(status.message().contains("\"scoped\"") && status.message().contains("write") && status.message().contains("instance \"\""), "{}", status.message());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_does_not_tell_whether_a_blob_exists() {
    let (server, _tmp) = start().await;
    let stored = b"stored blob".to_vec();
    let mut cas = ContentAddressableStorageClient::new(as_id(&server, "ci"));
    let requests = vec![reapi::batch_update_blobs_request::Request { digest: Some(sha256(&stored)), data: stored.clone(), ..Default::default() }];
    cas.batch_update_blobs(reapi::BatchUpdateBlobsRequest { requests, ..Default::default() }).await.unwrap();
    let mut answers = Vec::new();
    for digest in [sha256(&stored), sha256(b"never stored")] {
        for ch in [channel(&server, None), as_id(&server, "botter")] {
            let resource_name = format!("blobs/{}/{}", digest.hash, digest.size_bytes);
            let status = ByteStreamClient::new(ch).read(ReadRequest { resource_name, ..Default::default() }).await.unwrap_err();
            answers.push((status.code(), status.message().to_string()));
        }
    }
    assert_eq!(answers[0], answers[2]);
    assert_eq!(answers[1], answers[3]);
    assert_eq!((answers[0].0, answers[1].0), (Code::Unauthenticated, Code::PermissionDenied));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capabilities_tell_each_caller_what_it_may_do() {
    let (server, _tmp) = start().await;
    for (identity, update, exec) in [("ci", true, true), ("dev", false, true), ("reader", false, false)] {
        let caps = CapabilitiesClient::new(as_id(&server, identity))
            .get_capabilities(reapi::GetCapabilitiesRequest::default())
            .await
            .unwrap()
            .into_inner();
        let cache = caps.cache_capabilities.unwrap();
        assert_eq!(cache.action_cache_update_capabilities.unwrap().update_enabled, update, "{identity}");
        assert_eq!(caps.execution_capabilities.unwrap().exec_enabled, exec, "{identity}");
    }
}

/// Uploads a Command running `script`, an empty input root and the Action, as `identity`.
#[allow(deprecated)]
async fn action(server: &TestServer, identity: &str, script: &str) -> reapi::Digest {
    let command = reapi::Command {
        arguments: vec!["/bin/sh".into(), "-c".into(), script.into()],
        output_files: vec!["out".into()],
        environment_variables: vec![reapi::command::EnvironmentVariable { name: "PATH".into(), value: "/usr/bin:/bin".into() }],
        ..Default::default()
    }
    .encode_to_vec();
    let root = reapi::Directory::default().encode_to_vec();
    let action = reapi::Action { command_digest: Some(sha256(&command)), input_root_digest: Some(sha256(&root)), ..Default::default() }.encode_to_vec();
    let requests = [&command, &root, &action]
        .into_iter()
        .map(|b| reapi::batch_update_blobs_request::Request { digest: Some(sha256(b)), data: b.clone(), ..Default::default() })
        .collect();
    let mut cas = ContentAddressableStorageClient::new(as_id(server, identity));
    cas.batch_update_blobs(reapi::BatchUpdateBlobsRequest { requests, ..Default::default() }).await.unwrap();
    sha256(&action)
}

/// Starts an Execute as `identity` and returns the operation's name (its first message).
async fn start_execute(server: &TestServer, identity: &str, digest: &reapi::Digest) -> String {
    let request = reapi::ExecuteRequest { action_digest: Some(digest.clone()), ..Default::default() };
    let mut stream = ExecutionClient::new(as_id(server, identity)).execute(request).await.unwrap().into_inner();
    stream.next().await.unwrap().unwrap().name
}

async fn execute_to_end(server: &TestServer, identity: &str, digest: &reapi::Digest) -> reapi::ExecuteResponse {
    let request = reapi::ExecuteRequest { action_digest: Some(digest.clone()), ..Default::default() };
    let mut stream = ExecutionClient::new(as_id(server, identity)).execute(request).await.unwrap().into_inner();
    let mut last = None;
    while let Some(op) = stream.next().await {
        last = Some(op.unwrap());
    }
    common::exec::response(&last.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_developer_gets_cached_remote_builds_but_cannot_forge_results() {
    let (server, tmp) = start().await;
    let digest = action(&server, "dev", "echo built > out").await;
    // The attack: a result that says the action produced other bytes.
    let forged = reapi::UpdateActionResultRequest {
        action_digest: Some(digest.clone()),
        action_result: Some(reapi::ActionResult { exit_code: 0, stdout_raw: b"forged".to_vec(), ..Default::default() }),
        ..Default::default()
    };
    let status = ActionCacheClient::new(as_id(&server, "dev")).update_action_result(forged.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied);
    assert!(status.message().contains("write_ac"), "{}", status.message());
    let status = ActionCacheClient::new(channel(&server, None)).update_action_result(forged).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);

    // A bot with the bot token runs it; the server caches the result whoever asked.
    let mut args = InProcessBot::args(format!("grpc://{}", server.addr), None, &tmp.path().join("bot"), 1, &[], "host");
    let token_file = tmp.path().join("bot.token");
    std::fs::write(&token_file, token("bot") + "\n").unwrap();
    args.credentials.token_file = Some(token_file);
    let bot = InProcessBot::run(args);
    let first = execute_to_end(&server, "dev", &digest).await;
    assert_eq!(first.result.as_ref().unwrap().exit_code, 0);
    assert!(!first.cached_result);
    let cached = ActionCacheClient::new(as_id(&server, "dev"))
        .get_action_result(reapi::GetActionResultRequest { action_digest: Some(digest.clone()), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cached.output_files.len(), 1);
    assert!(execute_to_end(&server, "dev", &digest).await.cached_result);
    bot.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_without_the_bot_permission_gets_no_work() {
    let (server, tmp) = start().await;
    let digest = action(&server, "ci", "echo secret > out").await;
    let name = start_execute(&server, "ci", &digest).await;
    for (ch, want) in [(as_id(&server, "dev"), Code::PermissionDenied), (channel(&server, None), Code::Unauthenticated)] {
        let bot_session = rwapi::BotSession { bot_id: "rogue".into(), ..Default::default() };
        let request = rwapi::CreateBotSessionRequest { parent: String::new(), bot_session: Some(bot_session) };
        let status = rwapi::bots_client::BotsClient::new(ch).create_bot_session(request).await.unwrap_err();
        assert_eq!(status.code(), want);
    }
    // `strata bot` without a token is refused the same way, and keeps retrying without taking work.
    let anonymous = InProcessBot::run(InProcessBot::args(format!("grpc://{}", server.addr), None, &tmp.path().join("rogue"), 1, &[], "host"));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let op = OperationsClient::new(as_id(&server, "ci")).get_operation(lro::GetOperationRequest { name }).await.unwrap().into_inner();
    assert!(!op.done);
    let status = OperationsClient::new(as_id(&server, "admin")).list_operations(lro::ListOperationsRequest::default()).await.unwrap();
    assert_eq!(status.into_inner().operations.len(), 1);
    anonymous.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operations_belong_to_their_caller() {
    let (server, _tmp) = start().await;
    let digest = action(&server, "ci", "sleep 30").await;
    let ci_op = start_execute(&server, "ci", &digest).await;
    let dev_op = start_execute(&server, "dev", &digest).await;
    let mut stranger = OperationsClient::new(as_id(&server, "dev2"));
    let get = stranger.get_operation(lro::GetOperationRequest { name: ci_op.clone() }).await.unwrap_err();
    assert_eq!(get.code(), Code::NotFound);
    let cancel = stranger.cancel_operation(lro::CancelOperationRequest { name: ci_op.clone() }).await.unwrap_err();
    assert_eq!(cancel.code(), Code::NotFound);
    let delete = stranger.delete_operation(lro::DeleteOperationRequest { name: ci_op.clone() }).await.unwrap_err();
    assert_eq!(delete.code(), Code::NotFound);
    let wait = ExecutionClient::new(as_id(&server, "dev2")).wait_execution(reapi::WaitExecutionRequest { name: ci_op.clone() }).await.unwrap_err();
    assert_eq!(wait.code(), Code::NotFound);
    let listed = stranger.list_operations(lro::ListOperationsRequest::default()).await.unwrap().into_inner();
    assert!(listed.operations.is_empty());
    let own = OperationsClient::new(as_id(&server, "ci")).list_operations(lro::ListOperationsRequest::default()).await.unwrap().into_inner();
    assert_eq!(own.operations.iter().map(|o| o.name.clone()).collect::<Vec<_>>(), vec![ci_op.clone()]);
    let all = OperationsClient::new(as_id(&server, "admin")).list_operations(lro::ListOperationsRequest::default()).await.unwrap().into_inner();
    assert_eq!(all.operations.len(), 2);

    // The same action from two callers shares one job: one owner's cancel leaves the other's going.
    OperationsClient::new(as_id(&server, "ci")).cancel_operation(lro::CancelOperationRequest { name: ci_op.clone() }).await.unwrap();
    let mut dev = OperationsClient::new(as_id(&server, "dev"));
    let theirs = dev.get_operation(lro::GetOperationRequest { name: dev_op.clone() }).await.unwrap().into_inner();
    assert!(!theirs.done, "the other owner's operation was cancelled too");
    let mine = OperationsClient::new(as_id(&server, "ci")).get_operation(lro::GetOperationRequest { name: ci_op }).await.unwrap().into_inner();
    assert!(mine.done);
    // An admin may cancel anyone's.
    OperationsClient::new(as_id(&server, "admin")).cancel_operation(lro::CancelOperationRequest { name: dev_op.clone() }).await.unwrap();
    assert!(dev.get_operation(lro::GetOperationRequest { name: dev_op }).await.unwrap().into_inner().done);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_site_cache_and_strata_bench_reach_an_upstream_with_their_tokens() {
    let (upstream, tmp) = start().await;
    let write_token = |name: &str| {
        let path = tmp.path().join(format!("{name}.token"));
        std::fs::write(&path, token(name) + "\n").unwrap();
        path
    };
    let (ci, reader) = (write_token("ci"), write_token("reader"));
    let site = |token_file: &std::path::Path, dir: &str| {
        format!(
            r#"
listen: 127.0.0.1:0
storage:
  site:
    cas:
      - memory: {{ max_size: 8MiB }}
      - remote: {{ endpoint: "grpc://{}", bearer_token_file: {token_file:?}, timeout: 5s, retries: 0 }}
    action_cache: [ {{ memory: {{ max_size: 1MiB }} }} ]
instances:
  - {{ name: "", storage: site, services: [cas, action_cache] }}
"#,
            upstream.addr
        ) + &format!("data_dir: {:?}\n", tmp.path().join(dir))
    };
    // With CI's token, a blob written to the site cache reaches the upstream.
    let with_ci = TestServer::start_in(&site(&ci, "site-ci"), &tmp.path().join("site-ci")).await;
    let blob = b"through the site cache".to_vec();
    upload(&mut with_ci.cas().await, "", &[&blob]).await;
    let mut upstream_cas = ContentAddressableStorageClient::new(as_id(&upstream, "reader"));
    let request = reapi::FindMissingBlobsRequest { blob_digests: vec![sha256(&blob)], ..Default::default() };
    assert!(upstream_cas.find_missing_blobs(request).await.unwrap().into_inner().missing_blob_digests.is_empty());
    // With a reader's token, the upstream refuses the write and the site cache says so.
    let with_reader = TestServer::start_in(&site(&reader, "site-reader"), &tmp.path().join("site-reader")).await;
    let other = b"not for the upstream".to_vec();
    let requests = vec![reapi::batch_update_blobs_request::Request { digest: Some(sha256(&other)), data: other.clone(), ..Default::default() }];
    let response = with_reader.cas().await.batch_update_blobs(reapi::BatchUpdateBlobsRequest { requests, ..Default::default() }).await;
    let refused = match response {
        Ok(r) => r.into_inner().responses[0].status.as_ref().map_or(0, |s| s.code),
        Err(status) => status.code() as i32,
    };
    assert_ne!(refused, 0, "the site cache acknowledged a write its upstream refused");

    // strata bench sends its --token-file; without one it is told why it cannot run.
    let bench = |token_file: Option<std::path::PathBuf>| strata::bench::BenchArgs {
        credentials: strata::protocol::credentials::CredentialFlags { token_file, ..Default::default() },
        duration: 0.3,
        concurrency: 1,
        ..bench_args(format!("grpc://{}", upstream.addr), "ac-hit")
    };
    let report = strata::bench::run(bench(Some(ci))).await.unwrap();
    assert_eq!(report.errors, 0, "{:?}", report.first_error);
    let err = strata::bench::run(bench(None)).await.unwrap_err();
    assert!(err.to_string().contains("needs the read permission"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_pages_need_an_admin_and_the_probes_do_not() {
    let tmp = tempfile::tempdir().unwrap();
    let server = TestServer::start_in(&(config() + "http: { listen: 127.0.0.1:0 }\n"), tmp.path()).await;
    let bearer = |name: &str| format!("Authorization: Bearer {}\r\n", token(name));
    let d = sha256(b"no such blob");
    let (action, blob) = (format!("/action?digest={}/{}", d.hash, d.size_bytes), format!("/blob?digest={}/{}", d.hash, d.size_bytes));
    for page in ["/", action.as_str(), blob.as_str()] {
        let (code, body) = http_get_with(&server, page, "").await;
        assert_eq!(code, 401, "{page}: {body}");
        assert_eq!(http_get_with(&server, page, &bearer("dev")).await.0, 403, "{page}");
        assert_eq!(http_get_with(&server, page, "Authorization: Bearer forged-0123456789abcdef\r\n").await.0, 401, "{page}");
        let admin = http_get_with(&server, page, &bearer("admin")).await.0;
        assert!(![401, 403].contains(&admin), "{page}: {admin}");
    }
    for probe in ["/metrics", "/healthz", "/readyz"] {
        assert_eq!(http_get(&server, probe).await.0, 200, "{probe}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_session_belongs_to_the_identity_that_opened_it() {
    let (server, _tmp) = start().await;
    let create = |ch: AuthChannel| async move {
        let bot_session = rwapi::BotSession { bot_id: "shared-id".into(), ..Default::default() };
        let request = rwapi::CreateBotSessionRequest { parent: String::new(), bot_session: Some(bot_session) };
        rwapi::bots_client::BotsClient::new(ch).create_bot_session(request).await.unwrap().into_inner()
    };
    let update = |ch: AuthChannel, session: rwapi::BotSession| async move {
        let request = rwapi::UpdateBotSessionRequest { name: session.name.clone(), bot_session: Some(session), ..Default::default() };
        let mut request = tonic::Request::new(request);
        request.set_timeout(std::time::Duration::from_millis(500));
        rwapi::bots_client::BotsClient::new(ch).update_bot_session(request).await
    };
    let legit = create(as_id(&server, "bot")).await;
    // Another identity with the bot permission, even with the same bot id, opens a bot of its own:
    // it cannot update, read or close the first one's session.
    let rogue = create(as_id(&server, "botter")).await;
    assert_ne!(legit.name, rogue.name);
    let status = update(as_id(&server, "botter"), legit.clone()).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    update(as_id(&server, "bot"), legit).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bot_is_sent_the_commands_of_its_leases_only_if_it_may_read_them() {
    let (server, _tmp) = start().await;
    // Both bots ask for Commands with their leases. "botter" has the bot permission alone: the
    // Command (arguments, environment) would show it what it may not read from the CAS.
    for (identity, sent) in [("botter", false), ("bot", true)] {
        let mut bots = rwapi::bots_client::BotsClient::new(as_id(&server, identity));
        let asking = rwapi::BotSession {
            bot_id: format!("{identity}-1"),
            status: rwapi::BotStatus::Ok as i32,
            worker: Some(rwapi::Worker {
                configs: vec![rwapi::Property { key: rwapi::COMMAND_IN_LEASE.into(), value: "true".into() }],
                ..Default::default()
            }),
            ..Default::default()
        };
        let request = rwapi::CreateBotSessionRequest { parent: String::new(), bot_session: Some(asking.clone()) };
        let name = bots.create_bot_session(request).await.unwrap().into_inner().name;
        let digest = action(&server, "dev", &format!("echo for {identity}")).await;
        start_execute(&server, "dev", &digest).await;
        let request = rwapi::UpdateBotSessionRequest { name: name.clone(), bot_session: Some(rwapi::BotSession { name, ..asking }), ..Default::default() };
        let session = bots.update_bot_session(request).await.unwrap().into_inner();
        assert_eq!(session.leases.len(), 1, "{identity}");
        let payload = session.leases[0].payload.as_ref().unwrap();
        let expected = if sent { rwapi::ACTION_AND_COMMAND } else { rwapi::ACTION };
        assert_eq!(payload.type_url, format!("type.googleapis.com/{expected}"), "{identity}");
    }
}
