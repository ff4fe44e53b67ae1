//! Remote execution over gRPC on 127.0.0.1: Execute, WaitExecution and Operations against a real
//! server, with bots running in process or as the `strata bot` binary.

mod common;

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::exec::*;
use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;
use bazel_remote_apis::google::longrunning::{
    operation, CancelOperationRequest, DeleteOperationRequest, GetOperationRequest, ListOperationsRequest, WaitOperationRequest,
};
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

    let mut caps = server.capabilities().await;
    for (instance, enabled) in [("", true), ("cache-only", false)] {
        let request = reapi::GetCapabilitiesRequest { instance_name: instance.into() };
        let exec = caps.get_capabilities(request).await.unwrap().into_inner().execution_capabilities.unwrap();
        assert_eq!(exec.exec_enabled, enabled, "{instance:?}");
    }

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

async fn operations(server: &common::TestServer) -> OperationsClient<tonic::transport::Channel> {
    OperationsClient::new(server.channel().await)
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

fn precondition_subjects(status: &tonic::Status) -> Vec<String> {
    let details = bazel_remote_apis::google::rpc::Status::decode(status.details()).unwrap();
    let any = &details.details[0];
    assert!(any.type_url.ends_with("google.rpc.PreconditionFailure"));
    let failure = strata::protocol::rwapi::PreconditionFailure::decode(any.value.as_slice()).unwrap();
    failure.violations.iter().inspect(|v| assert_eq!(v.r#type, "MISSING")).map(|v| v.subject.clone()).collect()
}

fn subject(d: &reapi::Digest) -> String {
    format!("blobs/{}/{}", d.hash, d.size_bytes)
}

#[tokio::test]
async fn malformed_and_incomplete_requests_are_refused_with_the_right_status() {
    let (server, _tmp) = start().await;
    let good = action(&server, &sh("true")).await;
    let code = |r: Result<Vec<_>, tonic::Status>| r.unwrap_err().code();
    let with = |f: &dyn Fn(&mut reapi::ExecuteRequest)| {
        let mut req = request(&good);
        f(&mut req);
        req
    };
    use tonic::Code;
    assert_eq!(code(execute_all(&server, with(&|r| r.instance_name = "nope".into())).await), Code::InvalidArgument);
    assert_eq!(code(execute_all(&server, with(&|r| r.instance_name = "cache-only".into())).await), Code::Unimplemented);
    assert_eq!(code(execute_all(&server, with(&|r| r.action_digest = None)).await), Code::InvalidArgument);
    assert_eq!(code(execute_all(&server, with(&|r| r.action_digest.as_mut().unwrap().hash = "xyz".into())).await), Code::InvalidArgument);
    assert_eq!(code(execute_all(&server, with(&|r| r.action_digest.as_mut().unwrap().size_bytes = -1)).await), Code::InvalidArgument);
    assert_eq!(code(execute_all(&server, with(&|r| r.digest_function = 9)).await), Code::InvalidArgument, "BLAKE3 execution");

    // A missing Action is named in a PreconditionFailure.
    let absent = common::sha256(b"no such action");
    let err = execute_all(&server, request(&absent)).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    assert_eq!(precondition_subjects(&err), vec![subject(&absent)]);

    // A missing Command and a missing input file are both named.
    let command = reapi::Command { arguments: vec!["true".into()], ..Default::default() }.encode_to_vec();
    let ghost = common::sha256(b"ghost input");
    let root = reapi::Directory {
        files: vec![reapi::FileNode { name: "ghost".into(), digest: Some(ghost.clone()), ..Default::default() }],
        ..Default::default()
    }
    .encode_to_vec();
    let act = reapi::Action { command_digest: Some(common::sha256(&command)), input_root_digest: Some(common::sha256(&root)), ..Default::default() }.encode_to_vec();
    let mut cas = server.cas().await;
    common::upload(&mut cas, "", &[&root, &act]).await;
    let err = execute_all(&server, request(&common::sha256(&act))).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let mut subjects = precondition_subjects(&err);
    subjects.sort();
    let mut expected = vec![subject(&common::sha256(&command)), subject(&ghost)];
    expected.sort();
    assert_eq!(subjects, expected);
    assert!(err.message().contains("not in the CAS"), "{}", err.message());

    // An Action blob that is not an Action.
    let junk = vec![0xffu8; 7];
    common::upload(&mut cas, "", &[&junk]).await;
    assert_eq!(code(execute_all(&server, request(&common::sha256(&junk))).await), Code::InvalidArgument);

    // Commands: no arguments, escaping output paths and working directories, negative timeouts.
    let bad_specs = [
        Spec { args: vec![], ..Default::default() },
        Spec { output_files: vec!["../escape".into()], ..sh("true") },
        Spec { output_paths: vec!["/etc/passwd".into()], ..sh("true") },
        Spec { working_directory: "a".into(), output_directories: vec!["../../up".into()], ..sh("true") },
        Spec { working_directory: "../..".into(), ..sh("true") },
    ];
    for spec in &bad_specs {
        let err = execute_all(&server, request(&action(&server, spec).await)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{:?}: {}", spec.args, err.message());
    }

    // WaitExecution and Operations on unknown names.
    let err = client(&server).await.wait_execution(reapi::WaitExecutionRequest { name: "operations/nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let mut ops = operations(&server).await;
    assert_eq!(ops.get_operation(GetOperationRequest { name: "x".into() }).await.unwrap_err().code(), Code::NotFound);
    assert_eq!(ops.cancel_operation(CancelOperationRequest { name: "x".into() }).await.unwrap_err().code(), Code::NotFound);
    let list = ListOperationsRequest { filter: "done=true".into(), ..Default::default() };
    assert_eq!(ops.list_operations(list).await.unwrap_err().code(), Code::InvalidArgument);
}

#[tokio::test]
async fn hostile_input_trees_are_refused_before_they_reach_a_bot() {
    let (server, _tmp) = start().await;
    let data = b"x".to_vec();
    let file = |name: &str| reapi::FileNode { name: name.into(), digest: Some(common::sha256(&data)), ..Default::default() };
    let empty = reapi::Directory::default().encode_to_vec();
    let link = |name: &str, target: &str| reapi::SymlinkNode { name: name.into(), target: target.into(), node_properties: None };
    let hostile = [
        reapi::Directory { files: vec![file("../evil")], ..Default::default() },
        reapi::Directory { files: vec![file("a/b")], ..Default::default() },
        reapi::Directory { files: vec![file("")], ..Default::default() },
        reapi::Directory { directories: vec![reapi::DirectoryNode { name: "..".into(), digest: Some(common::sha256(&empty)) }], ..Default::default() },
        reapi::Directory { symlinks: vec![link("l", "/etc/passwd")], ..Default::default() },
        reapi::Directory { symlinks: vec![link("l", "../../outside")], ..Default::default() },
    ];
    let mut cas = server.cas().await;
    common::upload(&mut cas, "", &[&data, &empty]).await;
    for dir in hostile {
        let bytes = dir.encode_to_vec();
        common::upload(&mut cas, "", &[&bytes]).await;
        let spec = Spec { input_root: Some(common::sha256(&bytes)), ..sh("true") };
        let err = execute_all(&server, request(&action(&server, &spec).await)).await.unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{dir:?}");
        assert!(err.message().contains("input tree"), "{}", err.message());
    }
    // A chain of links each fine alone: x/up -> .. and esc -> x/up/x/up/.. resolves above the root.
    let x = reapi::Directory { symlinks: vec![link("up", "..")], ..Default::default() }.encode_to_vec();
    let chain = reapi::Directory {
        directories: vec![reapi::DirectoryNode { name: "x".into(), digest: Some(common::sha256(&x)) }],
        symlinks: vec![link("esc", "x/up/x/up/..")],
        ..Default::default()
    }
    .encode_to_vec();
    common::upload(&mut cas, "", &[&x, &chain]).await;
    let spec = Spec { input_root: Some(common::sha256(&chain)), ..sh("true") };
    let err = execute_all(&server, request(&action(&server, &spec).await)).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("esc") && err.message().contains("outside the action's directory"), "{}", err.message());
}

#[tokio::test]
async fn outputs_never_follow_symlinks_out_of_the_action_directory() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    // An output that is a symlink is reported as one, not read through.
    let mut spec = sh("ln -s /etc/passwd out");
    spec.output_paths = vec!["out".into()];
    let result = execute(&server, &action(&server, &spec).await).await.result.unwrap();
    assert!(result.output_files.is_empty());
    assert_eq!(result.output_symlinks[0].target, "/etc/passwd");
    // An output below a symlink the action made fails the action with a clear message.
    let mut spec = sh("rmdir d && ln -s /etc d");
    spec.output_paths = vec!["d/passwd".into()];
    let response = execute(&server, &action(&server, &spec).await).await;
    let status = response.status.unwrap();
    assert_eq!(status.code, tonic::Code::InvalidArgument as i32);
    assert!(status.message.contains("not a directory"), "{}", status.message);
    bot.stop().await;
}

#[tokio::test]
async fn operations_can_be_listed_in_pages_and_deleted() {
    let (server, tmp) = start().await;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 2, &[]);
    let mut names = Vec::new();
    for i in 0..5 {
        let ops = execute_all(&server, request(&action(&server, &sh(&format!("echo {i}"))).await)).await.unwrap();
        names.push(ops[0].name.clone());
    }
    let mut ops = operations(&server).await;
    let mut listed = Vec::new();
    let mut token = String::new();
    loop {
        let page = ops
            .list_operations(ListOperationsRequest { page_size: 2, page_token: token.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.operations.len() <= 2);
        assert!(page.operations.iter().all(|op| op.done));
        listed.extend(page.operations.into_iter().map(|op| op.name));
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    names.sort();
    listed.sort();
    assert_eq!(listed, names);
    ops.delete_operation(DeleteOperationRequest { name: names[0].clone() }).await.unwrap();
    let err = ops.get_operation(GetOperationRequest { name: names[0].clone() }).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);
    // WaitExecution on a finished operation answers with its result at once.
    let mut stream = client(&server).await.wait_execution(reapi::WaitExecutionRequest { name: names[1].clone() }).await.unwrap().into_inner();
    let op = stream.message().await.unwrap().unwrap();
    assert!(op.done);
    bot.stop().await;
}

/// The `strata bot` binary, as a child process.
fn spawn_bot(server: &common::TestServer, work_dir: &std::path::Path, id: &str) -> std::process::Child {
    std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
        // It records its pids in the test's own (root-only) directory.
        .args(["bot", "--server", &format!("grpc://{}", server.addr), "--capacity", "1", "--bot-id", id, "--run-as", "root", "--work-dir"])
        .arg(work_dir)
        .env("STRATA_LOG", "warn")
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn a_bot_killed_mid_action_loses_its_lease_to_another_bot() {
    let (server, tmp) = start().await;
    let mut doomed = spawn_bot(&server, &tmp.path().join("doomed"), "doomed");
    let digest = action(&server, &sh("sleep 1; echo finished")).await;
    let (name, mut stream) = started(&server, &digest).await;
    wait_for_stage(&server, &name, reapi::execution_stage::Value::Executing).await;
    doomed.kill().unwrap();
    doomed.wait().unwrap();
    let survivor = InProcessBot::start(&server, &tmp.path().join("survivor"), 1, &[]);
    let mut last = None;
    while let Some(op) = stream.message().await.unwrap() {
        last = Some(op);
    }
    let response = response(&last.unwrap());
    assert_eq!(response.status.unwrap().code, 0);
    let result = response.result.unwrap();
    assert_eq!(result.exit_code, 0);
    assert_eq!(read_blob(&server, &result.stdout_digest).await, b"finished\n");
    assert_eq!(result.execution_metadata.unwrap().worker, survivor.id);
    survivor.stop().await;
}

#[tokio::test]
async fn an_action_lost_too_often_fails_with_a_clear_status() {
    let (server, tmp) = start().await;
    // The host runner's commands outlive a killed bot: record their pids to end them afterwards.
    let pids = tmp.path().join("pids");
    let digest = action(&server, &sh(&format!("echo $$ >> {}; exec sleep 30", pids.display()))).await;
    let (name, mut stream) = started(&server, &digest).await;
    for attempt in 0..3 {
        let mut bot = spawn_bot(&server, &tmp.path().join(format!("bot{attempt}")), &format!("bot{attempt}"));
        wait_for_stage(&server, &name, reapi::execution_stage::Value::Executing).await;
        bot.kill().unwrap();
        bot.wait().unwrap();
        if attempt < 2 {
            wait_for_stage(&server, &name, reapi::execution_stage::Value::Queued).await;
        }
    }
    let mut last = None;
    while let Some(op) = stream.message().await.unwrap() {
        last = Some(op);
    }
    let status = response(&last.unwrap()).status.unwrap();
    assert_eq!(status.code, tonic::Code::Aborted as i32);
    assert!(status.message.contains("3 times"), "{}", status.message);
    for pid in std::fs::read_to_string(&pids).unwrap().lines() {
        // SAFETY: kill(2) on the sleep processes this test's actions started.
        unsafe { libc::kill(pid.trim().parse().unwrap(), libc::SIGKILL) };
    }
}

#[tokio::test]
async fn a_bot_starts_a_new_session_when_the_server_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    let server = common::TestServer::start_in(EXEC_CONFIG, &tmp.path().join("server")).await;
    let addr = server.addr;
    let bot = InProcessBot::start(&server, &tmp.path().join("bot"), 1, &[]);
    assert_eq!(execute(&server, &action(&server, &sh("echo one")).await).await.result.unwrap().exit_code, 0);
    server.stop().await;
    let server = common::TestServer::start_at(EXEC_CONFIG, &tmp.path().join("server"), addr).await;
    let result = tokio::time::timeout(Duration::from_secs(20), execute(&server, &action(&server, &sh("echo two")).await)).await;
    assert_eq!(result.expect("the bot came back").result.unwrap().exit_code, 0);
    bot.stop().await;
}

/// An execution-only server whose storage is a remote tier on a storage-only server; the bot
/// fetches from and uploads to the storage server directly.
#[tokio::test]
async fn split_deployment_runs_against_a_separate_storage_server() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = common::TestServer::start_in(common::TEST_CONFIG, &tmp.path().join("storage")).await;
    let exec_config = format!(
        r#"
listen: 127.0.0.1:0
storage:
  upstream:
    cas:
      - remote: {{ endpoint: "grpc://{0}" }}
    action_cache:
      - remote: {{ endpoint: "grpc://{0}" }}
instances:
  - name: ""
    storage: upstream
    services: [execution]
"#,
        storage.addr
    );
    let exec = common::TestServer::start_in(&exec_config, &tmp.path().join("exec")).await;
    let bot = InProcessBot::start_with(
        format!("grpc://{}", exec.addr),
        Some(format!("grpc://{}", storage.addr)),
        &tmp.path().join("bot"),
        4,
        &[],
        "host",
    );
    // The client uploads to the storage server and executes on the execution server.
    let mut spec = sh("echo split > out.txt");
    spec.output_files = vec!["out.txt".into()];
    let digest = action(&storage, &spec).await;
    let ops = execute_all(&exec, request(&digest)).await.unwrap();
    let result = response(ops.last().unwrap()).result.unwrap();
    assert_eq!(read_blob(&storage, &result.output_files[0].digest).await, b"split\n");
    // The result was cached on the storage server.
    let mut ac = storage.action_cache().await;
    let cached = ac.get_action_result(reapi::GetActionResultRequest { action_digest: Some(digest.clone()), ..Default::default() }).await;
    assert_eq!(cached.unwrap().into_inner().output_files, result.output_files);
    // Many cacheable actions finishing close together, each result cached over the network: the
    // bot abandons calls in flight to report the next result, and no result may be lost with them.
    let specs: Vec<Spec> = (0..24).map(|i| sh(&format!("sleep 0.0{}; echo {i}", i % 7))).collect();
    let digests = futures::future::join_all(specs.iter().map(|spec| action(&storage, spec))).await;
    let runs = futures::future::join_all(digests.iter().map(|d| execute_all(&exec, request(d))));
    let all = tokio::time::timeout(Duration::from_secs(30), runs).await.expect("every action completes");
    for ops in all {
        assert_eq!(response(ops.unwrap().last().unwrap()).result.unwrap().exit_code, 0);
    }
    // The execution server serves no CAS of its own.
    let mut exec_cas = exec.cas().await;
    let err = exec_cas.find_missing_blobs(reapi::FindMissingBlobsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);
    bot.stop().await;
}
