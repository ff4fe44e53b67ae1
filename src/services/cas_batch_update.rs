//! BatchUpdateBlobs without copying its blobs on the way in. Through the generated server each blob
//! was copied twice before the storage saw it: tonic's decoder copies the request into a buffer of
//! its own, and prost copies each blob out of that into a `Vec`. This route decodes the request
//! from the pieces h2 received (`request_body`) into a message whose blobs are `Bytes`: each blob
//! is a slice of what arrived, or one copy where it straddles two pieces.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;

use super::cas::CasService;
use super::raw_route::{self, Handler};

pub const BATCH_UPDATE_PATH: &str = "/build.bazel.remote.execution.v2.ContentAddressableStorage/BatchUpdateBlobs";

/// REAPI's BatchUpdateBlobsRequest, field for field, with its blobs as `Bytes`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BatchUpdate {
    #[prost(string, tag = "1")]
    pub instance_name: String,
    #[prost(message, repeated, tag = "2")]
    pub requests: Vec<BlobUpdate>,
    /// An enumeration, which protobuf encodes as an int32.
    #[prost(int32, tag = "5")]
    pub digest_function: i32,
}

/// REAPI's BatchUpdateBlobsRequest.Request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct BlobUpdate {
    #[prost(message, optional, tag = "1")]
    pub digest: Option<reapi::Digest>,
    #[prost(bytes = "bytes", tag = "2")]
    pub data: Bytes,
    #[prost(int32, tag = "3")]
    pub compressor: i32,
}

impl From<reapi::BatchUpdateBlobsRequest> for BatchUpdate {
    fn from(request: reapi::BatchUpdateBlobsRequest) -> Self {
        let requests = request.requests.into_iter().map(|r| BlobUpdate { digest: r.digest, data: Bytes::from(r.data), compressor: r.compressor });
        BatchUpdate { instance_name: request.instance_name, requests: requests.collect(), digest_function: request.digest_function }
    }
}

/// Answers BatchUpdateBlobs calls with `service`.
pub fn batch_update_handler(service: Arc<CasService>, max_request: usize) -> Handler {
    let update = move |request| {
        let service = service.clone();
        async move { service.batch_update(request).await }
    };
    raw_route::handler::<BatchUpdate, _, _, _>(max_request, "BatchUpdateBlobsRequest", update, raw_route::unary_response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::request_body::Pieces;
    use prost::Message;

    /// What a client encodes as REAPI's message decodes to the same fields, the blobs sliced out of
    /// the pieces that arrived; a blob across two pieces is whole.
    #[test]
    fn decodes_reapi_requests_with_the_blobs_sliced_out_of_what_arrived() {
        let blob = |len: usize, seed: u8| (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect::<Vec<u8>>();
        let request = reapi::BatchUpdateBlobsRequest {
            instance_name: "main".into(),
            requests: [(4096, 3, 0), (0, 5, 0), (70_000, 7, 1)]
                .into_iter()
                .map(|(len, seed, compressor)| reapi::batch_update_blobs_request::Request {
                    digest: Some(reapi::Digest { hash: "ab".repeat(32), size_bytes: len as i64 }),
                    data: blob(len, seed),
                    compressor,
                })
                .collect(),
            digest_function: 1,
        };
        let encoded = Bytes::from(request.encode_to_vec());
        let arrived = encoded.as_ptr_range();
        let cut = encoded.len() - 1000;
        let mut pieces = Pieces::default();
        pieces.push(encoded.slice(..cut));
        pieces.push(encoded.slice(cut..));
        let decoded = BatchUpdate::decode(pieces).unwrap();
        assert_eq!(decoded, BatchUpdate::from(request));
        assert!(arrived.contains(&decoded.requests[0].data.as_ptr()), "a blob within one piece is not copied");
        let decoded = BatchUpdate::decode(&encoded[..]).unwrap();
        assert_eq!(decoded.requests[2].data.len(), 70_000);
    }
}
