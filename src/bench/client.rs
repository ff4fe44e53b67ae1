//! The benchmark's side of the wire: connections to the endpoint and the few calls every scenario
//! shares (capabilities, batch upload, streamed ByteStream write).

use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::action_cache_client::ActionCacheClient;
use bazel_remote_apis::build::bazel::remote::execution::v2::capabilities_client::CapabilitiesClient;
use bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_client::ContentAddressableStorageClient;
use bazel_remote_apis::build::bazel::remote::execution::v2::execution_client::ExecutionClient;
use strata_backends::bytestream::byte_stream_client::ByteStreamClient;
use strata_backends::bytestream::WriteRequest;
use strata_backends::{compressed_resource_name, resource_name};
use crate::protocol::{AuthChannel, ClientAuth};

use super::blobs::UniqueBlob;
use super::{BenchError, Plan};
use crate::protocol::to_proto;

use crate::protocol::MAX_MESSAGE;
pub const IDENTITY: i32 = reapi::compressor::Value::Identity as i32;
pub const ZSTD: i32 = reapi::compressor::Value::Zstd as i32;

/// One client's connection and stubs.
#[derive(Clone)]
pub struct Client {
    pub cas: ContentAddressableStorageClient<AuthChannel>,
    pub bytestream: ByteStreamClient<AuthChannel>,
    pub action_cache: ActionCacheClient<AuthChannel>,
    pub execution: ExecutionClient<AuthChannel>,
    pub capabilities: CapabilitiesClient<AuthChannel>,
}

pub async fn connect(endpoint: &str, auth: &ClientAuth) -> Result<Client, BenchError> {
    let unreachable = |message: String| BenchError::Unreachable { endpoint: endpoint.to_string(), message };
    let channel = crate::protocol::endpoint(endpoint, auth, Duration::from_secs(5))
        .map_err(|e| BenchError::Usage(e.to_string()))?
        .connect()
        .await
        .map_err(|e| unreachable(format!("{e} ({})", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default())))?;
    let channel = AuthChannel::new(channel, auth).map_err(|e| BenchError::Usage(e.to_string()))?;
    Ok(Client {
        cas: ContentAddressableStorageClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE).max_encoding_message_size(MAX_MESSAGE),
        bytestream: ByteStreamClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE),
        action_cache: ActionCacheClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE),
        execution: ExecutionClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE),
        capabilities: CapabilitiesClient::new(channel),
    })
}

/// One connection per client, and the endpoint's capabilities.
pub async fn connect_all(plan: &Plan) -> Result<(Vec<Client>, reapi::ServerCapabilities), BenchError> {
    let flags = plan.args.credentials.clone();
    let auth = tokio::task::spawn_blocking(move || flags.load())
        .await
        .map_err(|e| BenchError::Usage(e.to_string()))?
        .map_err(BenchError::Usage)?;
    let mut clients = Vec::new();
    for _ in 0..plan.args.concurrency {
        clients.push(connect(&plan.args.endpoint, &auth).await?);
    }
    let request = reapi::GetCapabilitiesRequest { instance_name: plan.args.instance.clone() };
    let caps = tokio::time::timeout(Duration::from_secs(10), clients[0].capabilities.clone().get_capabilities(request))
        .await
        .map_err(|_| BenchError::Unreachable { endpoint: plan.args.endpoint.clone(), message: "GetCapabilities timed out".into() })?
        .map_err(|s| BenchError::Unsupported { endpoint: plan.args.endpoint.clone(), message: format!("GetCapabilities: {}", s.message()) })?
        .into_inner();
    let cache = caps.cache_capabilities.as_ref().ok_or_else(|| BenchError::Unsupported {
        endpoint: plan.args.endpoint.clone(),
        message: format!("instance {:?} has no CAS", plan.args.instance),
    })?;
    let compressors = match plan.args.scenario.as_str() {
        "write-small" => &cache.supported_batch_update_compressors,
        _ => &cache.supported_compressors,
    };
    if plan.compressed && !compressors.contains(&ZSTD) {
        return Err(BenchError::Unsupported { endpoint: plan.args.endpoint.clone(), message: "zstd is not among its compressors".into() });
    }
    if !cache.digest_functions.contains(&plan.function.to_proto()) {
        return Err(BenchError::Unsupported {
            endpoint: plan.args.endpoint.clone(),
            message: format!("digest function {} is not supported", plan.function.name()),
        });
    }
    Ok((clients, caps))
}

/// The largest batch the endpoint accepts (0 in its capabilities means no stated limit).
pub fn max_batch(caps: &reapi::ServerCapabilities) -> u64 {
    match caps.cache_capabilities.as_ref().map_or(0, |c| c.max_batch_total_size_bytes) {
        n if n > 0 => n as u64,
        _ => 4 << 20,
    }
}

pub fn batch_request(plan: &Plan, blobs: &[UniqueBlob]) -> Result<reapi::BatchUpdateBlobsRequest, String> {
    let mut requests = Vec::with_capacity(blobs.len());
    for b in blobs {
        let (data, compressor) = match plan.compressed {
            false => (b.to_vec(), IDENTITY),
            true => (b.zstd_vec().ok_or("the blob has no zstd form")?, ZSTD),
        };
        requests.push(reapi::batch_update_blobs_request::Request { digest: Some(to_proto(&b.digest)), data, compressor });
    }
    Ok(reapi::BatchUpdateBlobsRequest { instance_name: plan.args.instance.clone(), requests, digest_function: plan.function.to_proto() })
}

/// Uploads blobs in one batch; any failed blob is an error. Returns the bytes of data sent.
pub async fn upload_batch(client: &mut Client, plan: &Plan, blobs: &[UniqueBlob]) -> Result<u64, String> {
    let request = batch_request(plan, blobs)?;
    let wire = request.requests.iter().map(|r| r.data.len() as u64).sum();
    let resp = client.cas.batch_update_blobs(request).await.map_err(|s| format!("BatchUpdateBlobs: {}", s.message()))?;
    for r in resp.into_inner().responses {
        let status = r.status.unwrap_or_default();
        if status.code != 0 {
            return Err(format!("BatchUpdateBlobs: blob status {}: {}", status.code, status.message));
        }
    }
    Ok(wire)
}

/// Streams one blob through ByteStream Write in 1 MiB messages, built lazily: its bytes, or with
/// `--compressor zstd` its zstd frames to a `compressed-blobs` name. A compressed write's offsets
/// count the compressed bytes sent, from 0, so the same arithmetic serves both. Returns the bytes sent.
pub async fn write_blob(client: &mut Client, plan: &Plan, blob: &UniqueBlob, upload_id: &str) -> Result<u64, String> {
    let d = &blob.digest;
    let (name, body, tail) = match plan.compressed {
        false => (resource_name(&plan.args.instance, Some(upload_id), d), blob.body.clone(), blob.tail.clone()),
        true => {
            let (body, tail) = blob.zstd_parts().ok_or("the blob has no zstd form")?;
            (compressed_resource_name(&plan.args.instance, Some(upload_id), d), body, tail)
        }
    };
    let total = (body.len() + tail.len()) as u64;
    let chunk = plan.write_chunk as u64;
    let messages = futures::stream::unfold(Some(0u64), move |offset| {
        let (body, tail, name) = (body.clone(), tail.clone(), name.clone());
        async move {
            let offset = offset?;
            let body_len = body.len() as u64;
            let data = if offset < body_len {
                let end = (offset + chunk).min(body_len);
                body.slice(offset as usize..end as usize)
            } else {
                tail
            };
            let next = offset + data.len() as u64;
            let message = WriteRequest {
                resource_name: if offset == 0 { name } else { String::new() },
                write_offset: offset as i64,
                finish_write: next >= total,
                data,
            };
            Some((message, (next < total).then_some(next)))
        }
    });
    let resp = client.bytestream.write(messages).await.map_err(|s| format!("ByteStream.Write: {}", s.message()))?;
    let committed = resp.into_inner().committed_size;
    // A compressed upload commits the compressed bytes it sent, or -1 if the server already held the
    // blob; an identity upload commits the blob's size either way.
    let complete = match plan.compressed {
        false => committed == d.size as i64,
        true => committed == total as i64 || committed == -1,
    };
    if !complete {
        return Err(format!("ByteStream.Write committed {committed} of {total} bytes"));
    }
    Ok(total)
}
