//! ActionCache and Capabilities over gRPC: hits only while every referenced blob is in the CAS,
//! inlining, and malformed requests.

mod common;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use common::*;
use prost::Message;
use tonic::Code;

fn get(action: &reapi::Digest) -> reapi::GetActionResultRequest {
    reapi::GetActionResultRequest { action_digest: Some(action.clone()), ..Default::default() }
}

fn update(action: &reapi::Digest, result: reapi::ActionResult) -> reapi::UpdateActionResultRequest {
    reapi::UpdateActionResultRequest { action_digest: Some(action.clone()), action_result: Some(result), ..Default::default() }
}

fn output_file(path: &str, data: &[u8]) -> reapi::OutputFile {
    reapi::OutputFile { path: path.into(), digest: Some(sha256(data)), ..Default::default() }
}

#[tokio::test]
async fn stores_and_serves_results_whose_outputs_exist() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let mut ac = server.action_cache().await;
    let action = sha256(b"action 1");
    let (out, stdout, stderr) = (content(1, 2000), b"compiler says hi".to_vec(), b"warning".to_vec());
    let leaf = content(2, 300);
    let tree = reapi::Tree {
        root: Some(reapi::Directory { files: vec![reapi::FileNode { name: "leaf".into(), digest: Some(sha256(&leaf)), ..Default::default() }], ..Default::default() }),
        children: vec![],
    };
    let tree_bytes = tree.encode_to_vec();
    upload(&mut cas, "", &[&out, &stdout, &stderr, &leaf, &tree_bytes]).await;
    let result = reapi::ActionResult {
        output_files: vec![output_file("out/a.o", &out)],
        output_directories: vec![reapi::OutputDirectory { path: "out/dir".into(), tree_digest: Some(sha256(&tree_bytes)), ..Default::default() }],
        stdout_digest: Some(sha256(&stdout)),
        stderr_digest: Some(sha256(&stderr)),
        exit_code: 0,
        ..Default::default()
    };

    assert_eq!(ac.get_action_result(get(&action)).await.unwrap_err().code(), Code::NotFound);
    let stored = ac.update_action_result(update(&action, result.clone())).await.unwrap().into_inner();
    assert_eq!(stored, result);
    assert_eq!(ac.get_action_result(get(&action)).await.unwrap().into_inner(), result);

    let mut inline = get(&action);
    inline.inline_stdout = true;
    inline.inline_stderr = true;
    inline.inline_output_files = vec!["out/a.o".into()];
    let got = ac.get_action_result(inline).await.unwrap().into_inner();
    assert_eq!(got.stdout_raw, stdout);
    assert_eq!(got.stderr_raw, stderr);
    assert_eq!(got.output_files[0].contents, out);

    // The same result under another instance sharing the storage is visible there too.
    let mut other = get(&action);
    other.instance_name = "team/a".into();
    assert!(ac.get_action_result(other).await.is_ok());
}

#[tokio::test]
async fn a_result_whose_outputs_are_gone_is_a_miss() {
    let server = TestServer::start().await;
    let mut cas = server.cas().await;
    let mut ac = server.action_cache().await;
    let present = content(3, 100);
    upload(&mut cas, "", &[&present]).await;
    let never_uploaded = content(4, 100);

    let a1 = sha256(b"action with a missing output file");
    let result = reapi::ActionResult { output_files: vec![output_file("ok", &present), output_file("gone", &never_uploaded)], ..Default::default() };
    ac.update_action_result(update(&a1, result)).await.unwrap();
    let err = ac.get_action_result(get(&a1)).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    let a2 = sha256(b"action with missing stdout");
    let result = reapi::ActionResult { stdout_digest: Some(sha256(b"lost stdout")), ..Default::default() };
    ac.update_action_result(update(&a2, result)).await.unwrap();
    assert_eq!(ac.get_action_result(get(&a2)).await.unwrap_err().code(), Code::NotFound);

    // A tree whose files are missing.
    let tree = reapi::Tree {
        root: Some(reapi::Directory { files: vec![reapi::FileNode { name: "f".into(), digest: Some(sha256(&never_uploaded)), ..Default::default() }], ..Default::default() }),
        children: vec![],
    };
    let tree_bytes = tree.encode_to_vec();
    upload(&mut cas, "", &[&tree_bytes]).await;
    let a3 = sha256(b"action with a tree of missing files");
    let result = reapi::ActionResult {
        output_directories: vec![reapi::OutputDirectory { path: "d".into(), tree_digest: Some(sha256(&tree_bytes)), ..Default::default() }],
        ..Default::default()
    };
    ac.update_action_result(update(&a3, result)).await.unwrap();
    assert_eq!(ac.get_action_result(get(&a3)).await.unwrap_err().code(), Code::NotFound);
}

#[tokio::test]
async fn malformed_action_cache_requests() {
    let server = TestServer::start().await;
    let mut ac = server.action_cache().await;
    let bad = reapi::Digest { hash: "short".into(), size_bytes: 1 };
    assert_eq!(ac.get_action_result(get(&bad)).await.unwrap_err().code(), Code::InvalidArgument);
    let err = ac.get_action_result(reapi::GetActionResultRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("action_digest"), "{}", err.message());
    let err = ac
        .update_action_result(reapi::UpdateActionResultRequest { action_digest: Some(sha256(b"a")), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile { path: "x".into(), digest: Some(bad.clone()), ..Default::default() }],
        ..Default::default()
    };
    let err = ac.update_action_result(update(&sha256(b"a"), result)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(ac.get_action_result(get(&sha256(b"a"))).await.unwrap_err().code(), Code::NotFound, "nothing stored");
    // An instance without the action cache.
    let mut req = get(&sha256(b"a"));
    req.instance_name = "cas-only".into();
    assert_eq!(ac.get_action_result(req).await.unwrap_err().code(), Code::Unimplemented);
}

#[tokio::test]
async fn capabilities_advertise_what_bazel_needs() {
    let server = TestServer::start().await;
    let mut caps = server.capabilities().await;
    let c = caps.get_capabilities(reapi::GetCapabilitiesRequest { instance_name: String::new() }).await.unwrap().into_inner();
    let low = c.low_api_version.unwrap();
    assert_eq!((low.major, low.minor), (2, 0), "Bazel 4.x refuses servers whose low version is above 2.0");
    let high = c.high_api_version.unwrap();
    assert!(high.major == 2 && high.minor >= 1);
    let cache = c.cache_capabilities.unwrap();
    assert_eq!(cache.digest_functions, vec![1, 9]);
    assert_eq!(cache.max_batch_total_size_bytes, 1 << 20);
    assert!(cache.action_cache_update_capabilities.unwrap().update_enabled);
    assert!(!c.execution_capabilities.unwrap().exec_enabled);

    let c = caps.get_capabilities(reapi::GetCapabilitiesRequest { instance_name: "cas-only".into() }).await.unwrap().into_inner();
    assert!(!c.cache_capabilities.unwrap().action_cache_update_capabilities.unwrap().update_enabled);
    let err = caps.get_capabilities(reapi::GetCapabilitiesRequest { instance_name: "nope".into() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}
