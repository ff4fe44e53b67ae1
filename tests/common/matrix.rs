//! The permission matrix: one call of every RPC family, made with the credentials a test chooses,
//! and the check that each of six identities (one permission each) is let through exactly where its
//! permission allows. Used by the token, JWT and client-certificate tests alike.

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::bytestream::{ReadRequest, WriteRequest};
use bazel_remote_apis::google::longrunning as lro;
use futures::StreamExt;
use strata::protocol::rwapi;
use strata::protocol::AuthChannel;
use tonic::Code;

use asset::fetch_client::FetchClient;
use asset::push_client::PushClient;
use bazel_remote_apis::google::bytestream::byte_stream_client::ByteStreamClient;
use bazel_remote_apis::google::longrunning::operations_client::OperationsClient;
use reapi::action_cache_client::ActionCacheClient;
use reapi::capabilities_client::CapabilitiesClient;
use reapi::content_addressable_storage_client::ContentAddressableStorageClient;
use reapi::execution_client::ExecutionClient;

use super::sha256;

/// The instances and services a matrix server needs: every RPC family on "" and "other".
pub const SERVICES: &str = r#"
listen: 127.0.0.1:0
storage:
  main:
    cas: [ { memory: { max_size: 64MiB } } ]
    action_cache: [ { memory: { max_size: 8MiB } } ]
instances:
  - { name: "", storage: main, services: [cas, action_cache, execution, asset] }
  - { name: other, storage: main, services: [cas, action_cache, execution, asset] }
execution: { queue_timeout: 30s, bot_session_timeout: 2s }
"#;

/// The six single-permission identities, by the name their permission has in the configuration.
pub const SINGLE: [(&str, &str); 6] =
    [("reader", "read"), ("writer", "write"), ("acwriter", "write_ac"), ("executor", "execute"), ("botter", "bot"), ("admin", "admin")];

pub fn code<T>(result: Result<T, tonic::Status>) -> Code {
    result.map_or_else(|s| s.code(), |_| Code::Ok)
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Family {
    Capabilities,
    FindMissing,
    BatchRead,
    GetTree,
    ByteStreamRead,
    GetActionResult,
    FetchBlob,
    BatchUpdate,
    ByteStreamWrite,
    PushBlob,
    UpdateActionResult,
    Execute,
    ListOperations,
    CreateBotSession,
    AdminStatus,
}

pub const FAMILIES: [(Family, &str); 15] = [
    (Family::Capabilities, "read"),
    (Family::FindMissing, "read"),
    (Family::BatchRead, "read"),
    (Family::GetTree, "read"),
    (Family::ByteStreamRead, "read"),
    (Family::GetActionResult, "read"),
    (Family::FetchBlob, "read"),
    (Family::BatchUpdate, "write"),
    (Family::ByteStreamWrite, "write"),
    (Family::PushBlob, "write"),
    (Family::UpdateActionResult, "write_ac"),
    (Family::Execute, "execute"),
    (Family::ListOperations, "execute"),
    (Family::CreateBotSession, "bot"),
    (Family::AdminStatus, "admin"),
];

/// One call of `family` on `instance`; the code it ends with.
pub async fn call(family: Family, ch: AuthChannel, instance: &str) -> Code {
    let blob = b"matrix blob".to_vec();
    let digest = sha256(&blob);
    let instance_name = instance.to_string();
    match family {
        Family::Capabilities => code(CapabilitiesClient::new(ch).get_capabilities(reapi::GetCapabilitiesRequest { instance_name }).await),
        Family::FindMissing => code(
            ContentAddressableStorageClient::new(ch)
                .find_missing_blobs(reapi::FindMissingBlobsRequest { instance_name, blob_digests: vec![digest], ..Default::default() })
                .await,
        ),
        Family::BatchRead => code(
            ContentAddressableStorageClient::new(ch)
                .batch_read_blobs(reapi::BatchReadBlobsRequest { instance_name, digests: vec![digest], ..Default::default() })
                .await,
        ),
        Family::GetTree => {
            let request = reapi::GetTreeRequest { instance_name, root_digest: Some(digest), ..Default::default() };
            match ContentAddressableStorageClient::new(ch).get_tree(request).await {
                Ok(response) => response.into_inner().next().await.map_or(Code::Ok, code),
                Err(status) => status.code(),
            }
        }
        Family::ByteStreamRead => {
            let resource_name = format!("{}blobs/{}/{}", prefix(instance), digest.hash, digest.size_bytes);
            match ByteStreamClient::new(ch).read(ReadRequest { resource_name, ..Default::default() }).await {
                Ok(response) => response.into_inner().next().await.map_or(Code::Ok, code),
                Err(status) => status.code(),
            }
        }
        Family::GetActionResult => code(
            ActionCacheClient::new(ch)
                .get_action_result(reapi::GetActionResultRequest { instance_name, action_digest: Some(digest), ..Default::default() })
                .await,
        ),
        Family::FetchBlob => code(
            FetchClient::new(ch)
                .fetch_blob(asset::FetchBlobRequest { instance_name, uris: vec!["https://example.invalid/a".into()], ..Default::default() })
                .await,
        ),
        Family::BatchUpdate => {
            let requests = vec![reapi::batch_update_blobs_request::Request { digest: Some(digest), data: blob, ..Default::default() }];
            code(ContentAddressableStorageClient::new(ch).batch_update_blobs(reapi::BatchUpdateBlobsRequest { instance_name, requests, ..Default::default() }).await)
        }
        Family::ByteStreamWrite => {
            let resource_name = format!("{}uploads/u1/blobs/{}/{}", prefix(instance), digest.hash, digest.size_bytes);
            let first = WriteRequest { resource_name, write_offset: 0, finish_write: true, data: blob };
            code(ByteStreamClient::new(ch).write(futures::stream::iter(vec![first])).await)
        }
        Family::PushBlob => code(
            PushClient::new(ch)
                .push_blob(asset::PushBlobRequest { instance_name, uris: vec!["https://example.invalid/a".into()], blob_digest: Some(digest), ..Default::default() })
                .await,
        ),
        Family::UpdateActionResult => code(
            ActionCacheClient::new(ch)
                .update_action_result(reapi::UpdateActionResultRequest {
                    instance_name,
                    action_digest: Some(digest),
                    action_result: Some(reapi::ActionResult { exit_code: 0, ..Default::default() }),
                    ..Default::default()
                })
                .await,
        ),
        Family::Execute => {
            let request = reapi::ExecuteRequest { instance_name, action_digest: Some(digest), ..Default::default() };
            code(ExecutionClient::new(ch).execute(request).await)
        }
        Family::ListOperations => {
            code(OperationsClient::new(ch).list_operations(lro::ListOperationsRequest { name: instance_name, ..Default::default() }).await)
        }
        Family::CreateBotSession => {
            let bot_session = rwapi::BotSession { bot_id: format!("matrix-{instance}"), ..Default::default() };
            let request = rwapi::CreateBotSessionRequest { parent: instance_name, bot_session: Some(bot_session) };
            code(rwapi::bots_client::BotsClient::new(ch).create_bot_session(request).await)
        }
        Family::AdminStatus => code(
            strata::protocol::admin::admin_client::AdminClient::new(ch).get_status(strata::protocol::admin::GetStatusRequest::default()).await,
        ),
    }
}

fn prefix(instance: &str) -> String {
    if instance.is_empty() { String::new() } else { format!("{instance}/") }
}

pub fn denied(code: Code) -> bool {
    matches!(code, Code::PermissionDenied | Code::Unauthenticated)
}


/// Every single-permission identity against every family: allowed exactly where its permission is
/// the one needed (and an admin may list operations), PERMISSION_DENIED elsewhere.
pub async fn check(channel_of: impl Fn(&str) -> AuthChannel, kind: &str) {
    for (identity, has) in SINGLE {
        for (family, needs) in FAMILIES {
            let got = call(family, channel_of(identity), "").await;
            let allowed = has == needs || (family == Family::ListOperations && has == "admin");
            if allowed {
                assert!(!denied(got), "{kind} {identity} {family:?}: {got:?}");
            } else {
                assert_eq!(got, Code::PermissionDenied, "{kind} {identity} {family:?}");
            }
        }
    }
}
