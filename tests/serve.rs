//! The server as users run it: data survives a restart, `strata serve` shuts down cleanly on SIGTERM
//! without losing acknowledged writes, and a bad configuration stops it with a readable error.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_client::ContentAddressableStorageClient;
use common::*;

#[tokio::test]
async fn blobs_and_action_results_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let small = content(1, 500);
    let large = content(2, 700_000);
    let action = sha256(b"persistent action");
    let result = reapi::ActionResult { output_files: vec![reapi::OutputFile { path: "o".into(), digest: Some(sha256(&small)), ..Default::default() }], ..Default::default() };
    {
        let server = TestServer::start_in(TEST_CONFIG, dir.path()).await;
        let mut cas = server.cas().await;
        upload(&mut cas, "", &[&small]).await;
        bytestream_write(&server, &large, 100_000).await;
        let mut ac = server.action_cache().await;
        ac.update_action_result(reapi::UpdateActionResultRequest { action_digest: Some(action.clone()), action_result: Some(result.clone()), ..Default::default() })
            .await
            .unwrap();
        server.stop().await;
    }
    let server = TestServer::start_in(TEST_CONFIG, dir.path()).await;
    let mut cas = server.cas().await;
    assert!(missing(&mut cas, "", vec![sha256(&small), sha256(&large)]).await.is_empty());
    let got = bytestream_read(&server, &sha256(&large), 0, 0).await.unwrap();
    assert_eq!(got, large);
    let mut ac = server.action_cache().await;
    let got = ac.get_action_result(reapi::GetActionResultRequest { action_digest: Some(action), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(got, result);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Runs the binary; a server's HTTP listener goes on an ephemeral port (tests run side by side, and
/// the default's 9095 may be a developer's own server).
fn spawn_strata(args: &[&str]) -> Child {
    let http: &[&str] = if args.first() == Some(&"serve") { &["--http-listen", "127.0.0.1:0"] } else { &[] };
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .args(http)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

async fn connect(port: u16) -> ContentAddressableStorageClient<tonic::transport::Channel> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match ContentAddressableStorageClient::connect(format!("http://127.0.0.1:{port}")).await {
            Ok(client) => return client,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("strata did not start listening on port {port}: {e}"),
        }
    }
}

async fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "strata did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Runs `echo remote hello` through Execute and returns its stdout.
async fn execute_echo(port: u16, cas: &mut ContentAddressableStorageClient<tonic::transport::Channel>) -> Vec<u8> {
    use bazel_remote_apis::build::bazel::remote::execution::v2::execution_client::ExecutionClient;
    use prost::Message;
    let command = reapi::Command { arguments: vec!["echo".into(), "remote".into(), "hello".into()], ..Default::default() }.encode_to_vec();
    let root = reapi::Directory::default().encode_to_vec();
    let action = reapi::Action { command_digest: Some(sha256(&command)), input_root_digest: Some(sha256(&root)), ..Default::default() }.encode_to_vec();
    upload(cas, "", &[&command, &root, &action]).await;
    let mut exec = ExecutionClient::connect(format!("http://127.0.0.1:{port}")).await.unwrap();
    let request = reapi::ExecuteRequest { action_digest: Some(sha256(&action)), ..Default::default() };
    let mut stream = exec.execute(request).await.unwrap().into_inner();
    let mut last = None;
    while let Some(op) = stream.message().await.unwrap() {
        last = Some(op);
    }
    let Some(bazel_remote_apis::google::longrunning::operation::Result::Response(any)) = last.unwrap().result else { panic!("no response") };
    let result = reapi::ExecuteResponse::decode(any.value.as_slice()).unwrap().result.unwrap();
    assert_eq!(result.exit_code, 0);
    let digest = result.stdout_digest.unwrap();
    let read = reapi::BatchReadBlobsRequest { digests: vec![digest], ..Default::default() };
    cas.batch_read_blobs(read).await.unwrap().into_inner().responses.remove(0).data
}

#[tokio::test]
async fn the_binary_serves_the_embedded_default_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let blobs: Vec<Vec<u8>> = (0..50).map(|i| content(100 + i, 3000)).collect();
    let mut child = spawn_strata(&["serve", "--listen", &listen, "--data-dir", data_dir]);
    {
        let mut cas = connect(port).await;
        let refs: Vec<&[u8]> = blobs.iter().map(|b| b.as_slice()).collect();
        upload(&mut cas, "", &refs).await;
    }
    // The default runs actions too, on a bot inside the same process.
    let stdout = execute_echo(port, &mut connect(port).await).await;
    assert_eq!(stdout, b"remote hello\n");
    let status = terminate(&mut child).await;
    assert!(status.success(), "strata exited with {status}");
    assert!(dir.path().join("cas").is_dir(), "the default configuration keeps its disk log under --data-dir");

    let mut child = spawn_strata(&["serve", "--listen", &listen, "--data-dir", data_dir]);
    let mut cas = connect(port).await;
    assert!(missing(&mut cas, "", blobs.iter().map(|b| sha256(b)).collect()).await.is_empty());
    assert!(terminate(&mut child).await.success());
}

#[test]
fn a_bad_configuration_file_is_reported_and_nothing_starts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "listen: 127.0.0.1:0\nstorage: {}\ninstances: []\nbogus_key: 1\n").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_strata")).args(["serve", "--config", path.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("bad.yaml") && stderr.contains("bogus_key"), "{stderr}");

    let out = Command::new(env!("CARGO_BIN_EXE_strata")).args(["serve", "--config", "/nonexistent/strata.yaml"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read configuration file"));
}

#[tokio::test]
async fn logs_to_a_file_carry_no_colour_say_what_runs_and_can_be_json() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_strata(&["serve", "--listen", &listen, "--data-dir", data_dir]);
    connect(port).await;
    assert!(terminate(&mut child).await.success());
    let mut text = String::new();
    child.stderr.take().unwrap().read_to_string(&mut text).unwrap();
    assert!(!text.contains('\u{1b}'), "ANSI codes in a log that is not a terminal: {text}");
    for expected in [
        "instance \"hermetic\": cas, action_cache, execution, asset on storage \"local\"",
        "memory 512MiB -> disk 20GiB at cas",
        "bot for instance \"hermetic\": hermetic runner",
        "HTTP on http://127.0.0.1:",
    ] {
        assert!(text.contains(expected), "expected {expected:?} in the start-up log:\n{text}");
    }

    let mut child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--listen", &listen, "--data-dir", data_dir, "--http-listen", "127.0.0.1:0"])
        .env("STRATA_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    connect(port).await;
    assert!(terminate(&mut child).await.success());
    let mut json = String::new();
    child.stderr.take().unwrap().read_to_string(&mut json).unwrap();
    let lines: Vec<serde_json::Value> = json.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    assert!(lines.iter().any(|l| l["fields"]["message"] == "strata serving"), "{json}");
}

#[tokio::test]
async fn grpc_health_reports_every_service_serving_and_unknown_ones_not_found() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut child = spawn_strata(&["serve", "--listen", &listen, "--data-dir", dir.path().to_str().unwrap()]);
    connect(port).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await.unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["", "build.bazel.remote.execution.v2.ContentAddressableStorage", "build.bazel.remote.execution.v2.Execution", "build.bazel.remote.asset.v1.Fetch", "google.devtools.remoteworkers.v1test2.Bots"] {
        let answer = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(answer.status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32, "{service}");
    }
    let err = health.check(HealthCheckRequest { service: "no.such.Service".into() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    assert!(terminate(&mut child).await.success());
}
