//! Remote execution over gRPC on 127.0.0.1: Execute, WaitExecution and Operations against a real
//! server, with bots running in process or as the `strata bot` binary.

mod common;

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::exec::*;
use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;
use bazel_remote_apis::google::longrunning::{operation, CancelOperationRequest, GetOperationRequest, WaitOperationRequest};
use prost::Message;

#[tokio::test]
async fn execute_runs_the_command_uploads_outputs_then_hits_the_cache() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 2, &[("OSFamily", "linux")]);
    let mut spec = sh("echo hello; echo oops >&2; mkdir -p out/sub; echo data > out/sub/f; echo x > o.txt; ln -s o.txt link");
    spec.output_files = vec!["o.txt".into(), "link".into()];
    spec.output_directories = vec!["out".into()];
    spec.platform = vec![("OSFamily".into(), "linux".into())];
    let digest = action(&server, &spec).await;

    let ops = execute_all(&server, request(&digest)).await.unwrap();
    let stages: Vec<i32> = ops.iter().map(stage).collect();
    assert_eq!(*stages.last().unwrap(), reapi::execution_stage::Value::Completed as i32, "{stages:?}");
    let first = ops.first().unwrap();
    assert!(stages[0] == 2 || stages[0] == 3, "first stage is QUEUED or EXECUTING: {stages:?}");
    assert!(ops.iter().all(|op| op.name == first.name));
    let response = response(ops.last().unwrap());
    assert_eq!(response.status.as_ref().map(|s| s.code), Some(0));
    assert!(!response.cached_result);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(read_blob(&server, &result.stdout_digest).await, b"hello\n");
    assert_eq!(read_blob(&server, &result.stderr_digest).await, b"oops\n");
    assert_eq!(result.output_files.len(), 1);
    assert_eq!(result.output_files[0].path, "o.txt");
    assert_eq!(read_blob(&server, &result.output_files[0].digest).await, b"x\n");
    #[allow(deprecated)]
    let file_links = &result.output_file_symlinks;
    assert_eq!(file_links.len(), 1);
    assert_eq!((file_links[0].path.as_str(), file_links[0].target.as_str()), ("link", "o.txt"));
    let tree = reapi::Tree::decode(read_blob(&server, &result.output_directories[0].tree_digest).await.as_slice()).unwrap();
    let root = tree.root.unwrap();
    assert_eq!(root.directories[0].name, "sub");
    assert_eq!(tree.children[0].files[0].name, "f");
    assert_eq!(read_blob(&server, &tree.children[0].files[0].digest).await, b"data\n");
    let meta = result.execution_metadata.unwrap();
    assert_eq!(meta.worker, bot.id);
    assert!(meta.execution_start_timestamp.is_some() && meta.output_upload_completed_timestamp.is_some());

    // The server cached the result: the second execute does not run it again.
    let again = execute(&server, &digest).await;
    assert!(again.cached_result);
    assert_eq!(again.result.unwrap().stdout_digest, result.stdout_digest);
    let mut ac = server.action_cache().await;
    let cached = ac
        .get_action_result(reapi::GetActionResultRequest { action_digest: Some(digest.clone()), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cached.exit_code, 0);
    bot.stop().await;
}

/// An input tree with a file, an executable and a subdirectory; returns the root's digest.
async fn input_tree(server: &common::TestServer) -> reapi::Digest {
    let data = b"input data\n".to_vec();
    let script = b"#!/bin/sh\necho script ran\n".to_vec();
    let sub = reapi::Directory {
        files: vec![reapi::FileNode { name: "b.txt".into(), digest: Some(common::sha256(&data)), ..Default::default() }],
        ..Default::default()
    };
    let sub_bytes = sub.encode_to_vec();
    let root = reapi::Directory {
        files: vec![
            reapi::FileNode { name: "a.txt".into(), digest: Some(common::sha256(&data)), ..Default::default() },
            reapi::FileNode { name: "run.sh".into(), digest: Some(common::sha256(&script)), is_executable: true, ..Default::default() },
        ],
        directories: vec![reapi::DirectoryNode { name: "sub".into(), digest: Some(common::sha256(&sub_bytes)) }],
        ..Default::default()
    };
    let root_bytes = root.encode_to_vec();
    let mut cas = server.cas().await;
    common::upload(&mut cas, "", &[&data, &script, &sub_bytes, &root_bytes]).await;
    common::sha256(&root_bytes)
}

#[tokio::test]
async fn inputs_are_staged_and_output_paths_get_their_parents() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    let mut spec = sh("cat a.txt sub/b.txt && ./run.sh && test ! -w a.txt -o $(id -u) = 0 && echo out > deep/er/x");
    spec.input_root = Some(input_tree(&server).await);
    spec.output_paths = vec!["deep/er/x".into()];
    let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
    assert_eq!(read_blob(&server, &result.stdout_digest).await, b"input data\ninput data\nscript ran\n");
    assert_eq!(result.exit_code, 0, "{}", String::from_utf8_lossy(&read_blob(&server, &result.stderr_digest).await));
    assert_eq!(result.output_files[0].path, "deep/er/x");

    // The same input in a working directory below the root, and a command that fails.
    spec.working_directory = "sub".into();
    spec.args = vec!["/bin/sh".into(), "-c".into(), "cat b.txt; exit 3".into()];
    spec.output_paths.clear();
    let response = execute(&server, &action(&server, &spec).await).await;
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 3);
    assert_eq!(read_blob(&server, &result.stdout_digest).await, b"input data\n");
    // A failing action is not cached.
    let again = execute(&server, &action(&server, &spec).await).await;
    assert!(!again.cached_result);
    // Inputs are cached by the bot as read-only files, shared by hard links.
    let cache = tmp.path().join("bot/cache");
    assert!(std::fs::read_dir(&cache).unwrap().count() >= 2);
    bot.stop().await;
}

#[tokio::test]
async fn identical_concurrent_executes_share_one_run() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 4, &[]);
    let digest = action(&server, &sh("sleep 0.5; date +%s%N")).await;
    let (a, b) = tokio::join!(execute_all(&server, request(&digest)), execute_all(&server, request(&digest)));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a[0].name, b[0].name, "each client has its own operation");
    let (ra, rb) = (response(a.last().unwrap()), response(b.last().unwrap()));
    assert!(!ra.cached_result && !rb.cached_result);
    let (ra, rb) = (ra.result.unwrap(), rb.result.unwrap());
    assert_eq!(ra.stdout_digest, rb.stdout_digest, "one run: the same nanosecond timestamp");
    assert_eq!(ra.execution_metadata, rb.execution_metadata);

    // do_not_cache actions are never shared.
    let mut spec = sh("sleep 0.3; date +%s%N");
    spec.do_not_cache = true;
    let digest = action(&server, &spec).await;
    let (a, b) = tokio::join!(execute(&server, &digest), execute(&server, &digest));
    assert_ne!(a.result.unwrap().stdout_digest, b.result.unwrap().stdout_digest);
    assert!(!execute(&server, &digest).await.cached_result);
    bot.stop().await;
}

#[tokio::test]
async fn skip_cache_lookup_runs_again() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    let digest = action(&server, &sh("date +%s%N")).await;
    let first = execute(&server, &digest).await.result.unwrap();
    let mut req = request(&digest);
    req.skip_cache_lookup = true;
    let ops = execute_all(&server, req).await.unwrap();
    let second = response(ops.last().unwrap());
    assert!(!second.cached_result);
    assert_ne!(second.result.unwrap().stdout_digest, first.stdout_digest);
    bot.stop().await;
}

fn operations(server: &common::TestServer) -> impl std::future::Future<Output = OperationsClient<tonic::transport::Channel>> + '_ {
    async move { OperationsClient::new(server.channel().await) }
}

/// Opens an Execute stream and returns it after its first message (the operation's name).
async fn started(
    server: &common::TestServer,
    digest: &reapi::Digest,
) -> (String, tonic::Streaming<bazel_remote_apis::google::longrunning::Operation>) {
    let mut stream = client(server).await.execute(request(digest)).await.unwrap().into_inner();
    let first = stream.message().await.unwrap().unwrap();
    (first.name, stream)
}

async fn wait_for_stage(server: &common::TestServer, name: &str, wanted: reapi::execution_stage::Value) {
    let mut ops = operations(server).await;
    for _ in 0..200 {
        let op = ops.get_operation(GetOperationRequest { name: name.into() }).await.unwrap().into_inner();
        if stage(&op) == wanted as i32 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("operation {name} never reached {wanted:?}");
}

fn cancelled(op: &bazel_remote_apis::google::longrunning::Operation) -> bool {
    op.done && matches!(&op.result, Some(operation::Result::Error(s)) if s.code == tonic::Code::Cancelled as i32)
}

#[tokio::test]
async fn cancelling_a_queued_operation_takes_it_out_of_the_queue() {
    let (server, tmp) = start().await;
    let digest = action(&server, &sh("echo ran")).await;
    let (name, mut stream) = started(&server, &digest).await;
    let (other, _other_stream) = started(&server, &digest).await;
    let mut ops = operations(&server).await;
    ops.cancel_operation(CancelOperationRequest { name: name.clone() }).await.unwrap();
    let last = stream.message().await.unwrap().unwrap();
    assert!(cancelled(&last), "{last:?}");
    assert!(stream.message().await.unwrap().is_none(), "the stream ends after the cancellation");
    // The job still runs for the other operation waiting on it.
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    let done = ops.wait_operation(WaitOperationRequest { name: other.clone(), timeout: None }).await.unwrap().into_inner();
    assert_eq!(response(&done).result.unwrap().exit_code, 0);
    let got = ops.get_operation(GetOperationRequest { name }).await.unwrap().into_inner();
    assert!(cancelled(&got));

    // Cancelled by its only operation, a queued job never runs.
    bot.stop().await;
    let marker = tmp.path().join("marker");
    let digest = action(&server, &sh(&format!("touch {}", marker.display()))).await;
    let (name, _stream) = started(&server, &digest).await;
    ops.cancel_operation(CancelOperationRequest { name }).await.unwrap();
    let bot = InProcessBot::start(&server, &tmp.path().join("bot2"), 1, &[]);
    execute(&server, &action(&server, &sh("true")).await).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!marker.exists(), "the cancelled action ran");
    bot.stop().await;
}

#[tokio::test]
async fn cancelling_a_running_operation_kills_its_processes() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    let pidfile = tmp.path().join("pid");
    let digest = action(&server, &sh(&format!("sleep 60 & echo $! > {}.tmp; mv {0}.tmp {0}; wait", pidfile.display()))).await;
    let (name, mut stream) = started(&server, &digest).await;
    let mut pid = None;
    for _ in 0..200 {
        if let Ok(text) = std::fs::read_to_string(&pidfile) {
            pid = Some(text.trim().parse::<i32>().unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let pid = pid.expect("the action started");
    assert!(alive(pid));
    operations(&server).await.cancel_operation(CancelOperationRequest { name }).await.unwrap();
    let last = stream.message().await.unwrap().unwrap();
    assert!(cancelled(&last));
    let mut gone = false;
    for _ in 0..200 {
        if !alive(pid) {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(gone, "sleep (pid {pid}) still runs after the cancellation");
    // The bot is free again.
    assert_eq!(execute(&server, &action(&server, &sh("true")).await).await.result.unwrap().exit_code, 0);
    bot.stop().await;
}

#[tokio::test]
async fn execution_timeout_kills_the_action() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    let mut spec = sh("echo started; sleep 30");
    spec.timeout = Some(Duration::from_secs(1));
    let began = std::time::Instant::now();
    let response = execute(&server, &action(&server, &spec).await).await;
    assert!(began.elapsed() < Duration::from_secs(10));
    let status = response.status.unwrap();
    assert_eq!(status.code, tonic::Code::DeadlineExceeded as i32, "{status:?}");
    assert!(status.message.contains("timeout"), "{}", status.message);
    let partial = response.result.unwrap();
    assert_eq!(read_blob(&server, &partial.stdout_digest).await, b"started\n");
    assert!(!execute(&server, &action(&server, &spec).await).await.cached_result, "a timed-out run is not cached");
    bot.stop().await;
}

#[tokio::test]
async fn platform_mismatch_waits_then_times_out_in_the_queue() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 2, &[("OSFamily", "linux")]);
    let mut windows = sh("true");
    windows.platform = vec![("OSFamily".into(), "windows".into())];
    let mut gpu = sh("true");
    gpu.platform = vec![("OSFamily".into(), "linux".into()), ("gpu".into(), "yes".into())];
    let began = std::time::Instant::now();
    let (a, b) = tokio::join!(execute_all(&server, request(&action(&server, &windows).await)), execute_all(&server, request(&action(&server, &gpu).await)));
    for ops in [a.unwrap(), b.unwrap()] {
        assert!(ops[..ops.len() - 1].iter().all(|op| stage(op) == reapi::execution_stage::Value::Queued as i32));
        let status = response(ops.last().unwrap()).status.unwrap();
        assert_eq!(status.code, tonic::Code::Unavailable as i32);
        assert!(status.message.contains("queue timeout"), "{}", status.message);
    }
    assert!(began.elapsed() >= Duration::from_secs(4), "the queue timeout is 4s");
    // A matching action runs on the same bot.
    let mut linux = sh("true");
    linux.platform = vec![("OSFamily".into(), "linux".into())];
    assert_eq!(execute(&server, &action(&server, &linux).await).await.result.unwrap().exit_code, 0);
    bot.stop().await;
}

#[tokio::test]
async fn priorities_order_the_queue() {
    let (server, tmp) = start().await;
    let order = tmp.path().join("order");
    let mut streams = Vec::new();
    for priority in [5, -1, 3] {
        let digest = action(&server, &sh(&format!("echo {priority} >> {}", order.display()))).await;
        let mut req = request(&digest);
        req.execution_policy = Some(reapi::ExecutionPolicy { priority });
        let mut stream = client(&server).await.execute(req).await.unwrap().into_inner();
        stream.message().await.unwrap();
        streams.push(stream);
    }
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    for mut stream in streams {
        while stream.message().await.unwrap().is_some() {}
    }
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "-1\n3\n5\n");
    bot.stop().await;
}
