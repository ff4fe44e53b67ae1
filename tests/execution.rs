//! Remote execution over gRPC on 127.0.0.1: Execute, WaitExecution and Operations against a real
//! server, with bots running in process or as the `strata bot` binary.

mod common;

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::exec::*;
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
