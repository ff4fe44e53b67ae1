//! ContentAddressableStorage: FindMissingBlobs, BatchUpdateBlobs, BatchReadBlobs and GetTree.
//! Batches report one status per blob; a batch over the advertised size is refused whole.

use std::pin::Pin;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_server::ContentAddressableStorage;
use bytes::Bytes;
use futures::Stream;
use prost::Message;
use reapi::{batch_read_blobs_response, batch_update_blobs_response};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::cas_batch_update::BatchUpdate;
use super::{digest_function, parse_digest, parse_digests};
use crate::auth::Access;
use crate::protocol::{self, compression, to_proto};
use crate::tree::{load, Walk};
use crate::instances::Instances;
use crate::quote::quote;
use crate::status;

const IDENTITY: i32 = reapi::compressor::Value::Identity as i32;
const ZSTD: i32 = reapi::compressor::Value::Zstd as i32;

/// Directories per GetTree page when the client does not say.
const DEFAULT_TREE_PAGE: usize = 1000;

pub struct CasService {
    pub instances: Arc<Instances>,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// One blob of a BatchReadBlobs answer, its data as storage handed it out.
pub struct BatchRead {
    pub digest: reapi::Digest,
    pub data: Bytes,
    pub compressor: i32,
    pub status: bazel_remote_apis::google::rpc::Status,
}

impl CasService {
    /// BatchReadBlobs: each blob with its own status, in the order asked.
    pub async fn batch_read(&self, request: Request<reapi::BatchReadBlobsRequest>) -> Result<Vec<BatchRead>, Status> {
        let access = Access::of(&request)?.clone();
        let req = request.into_inner();
        let cas = self.instances.cas(&access, &req.instance_name)?;
        let function = digest_function(req.digest_function)?;
        let digests = parse_digests(function, &req.digests, "digests")?;
        self.check_batch_size(digests.iter().map(|d| d.size).sum(), "BatchReadBlobs")?;
        let zstd_ok = req.acceptable_compressors.contains(&ZSTD);
        let reads = digests.iter().map(|digest| async move {
            let answer = |data: Bytes, compressor, status| BatchRead { digest: to_proto(digest), data, compressor, status };
            // A blob stored compressed goes as stored (the stored form is smaller by construction).
            if zstd_ok {
                if let Ok(Some(frames)) = cas.read_zstd(digest, 0).await {
                    if let Ok(frames) = frames.into_bytes().await {
                        return answer(frames, ZSTD, protocol::ok_rpc());
                    }
                }
            }
            let (data, status) = match cas.read_whole(digest).await {
                Ok(Some(data)) => (data, protocol::ok_rpc()),
                Ok(None) => (Bytes::new(), protocol::to_rpc(&Status::not_found(format!("blob {digest} not found")))),
                Err(e) => (Bytes::new(), protocol::to_rpc(&status::from_store(e))),
            };
            // Compressed only where that makes the answer smaller.
            let (data, compressor) = match zstd_ok && !data.is_empty() {
                true => match compression::compress(&data) {
                    Some(smaller) if smaller.len() < data.len() => (Bytes::from(smaller), ZSTD),
                    _ => (data, IDENTITY),
                },
                false => (data, IDENTITY),
            };
            answer(data, compressor, status)
        });
        let reads = futures::future::join_all(reads).await;
        let missing = reads.iter().filter(|r| r.status.code == tonic::Code::NotFound as i32).count() as u64;
        let found = reads.iter().filter(|r| r.status.code == 0).count() as u64;
        self.instances.metrics.looked_up(&req.instance_name, "cas", "read", found, missing);
        Ok(reads)
    }

    fn check_batch_size(&self, total: u64, what: &str) -> Result<(), Status> {
        let limit = self.instances.max_batch_total_size;
        if total > limit {
            return Err(Status::resource_exhausted(format!(
                "{what} of {total} bytes exceeds max_batch_total_size_bytes ({limit}); split the batch or use ByteStream"
            )));
        }
        Ok(())
    }

    /// BatchUpdateBlobs, from the generated server or from the route of its own (`cas_batch_update`).
    pub async fn batch_update(&self, request: Request<BatchUpdate>) -> Result<reapi::BatchUpdateBlobsResponse, Status> {
        let access = Access::of(&request)?.clone();
        let req = request.into_inner();
        let cas = self.instances.cas(&access, &req.instance_name)?;
        let function = digest_function(req.digest_function)?;
        // Compressed entries count at their uncompressed size: that bounds what decompression makes.
        let total = req.requests.iter().map(|r| if r.compressor == ZSTD { r.digest.as_ref().map_or(0, |d| d.size_bytes.max(0) as u64) } else { r.data.len() as u64 }).sum();
        self.check_batch_size(total, "BatchUpdateBlobs")?;
        let mut responses = Vec::with_capacity(req.requests.len());
        let (mut blobs, mut placed) = (Vec::new(), Vec::new());
        for (i, r) in req.requests.into_iter().enumerate() {
            let blob = (|| {
                let digest = parse_digest(function, r.digest.as_ref(), &format!("requests[{i}].digest"))?;
                let data = match r.compressor {
                    IDENTITY => r.data,
                    ZSTD => compression::decompress(&r.data, digest.size)
                        .map(Bytes::from)
                        .inspect(|_| tracing::debug!(%digest, "compressed batch upload"))
                        .map_err(|e| Status::invalid_argument(format!("requests[{i}]: blob {digest}: {e}")))?,
                    other => {
                        return Err(Status::invalid_argument(format!(
                            "requests[{i}]: compressor {other} is not supported; this server accepts identity and zstd"
                        )))
                    }
                };
                Ok((digest, data))
            })();
            let status = match blob {
                Ok(blob) => {
                    placed.push(responses.len());
                    blobs.push(blob);
                    None
                }
                Err(e) => Some(protocol::to_rpc(&e)),
            };
            responses.push(batch_update_blobs_response::Response { digest: r.digest, status });
        }
        // The blobs go down as one batch: the disk log appends them in one job under one group commit.
        for (i, stored) in placed.into_iter().zip(cas.put_many(blobs).await) {
            responses[i].status = Some(stored.map_or_else(|e| protocol::to_rpc(&status::from_store(e)), |()| protocol::ok_rpc()));
        }
        Ok(reapi::BatchUpdateBlobsResponse { responses })
    }
}

#[tonic::async_trait]
impl ContentAddressableStorage for CasService {
    async fn find_missing_blobs(
        &self,
        request: Request<reapi::FindMissingBlobsRequest>,
    ) -> Result<Response<reapi::FindMissingBlobsResponse>, Status> {
        let access = Access::of(&request)?.clone();
        let req = request.into_inner();
        let cas = self.instances.cas(&access, &req.instance_name)?;
        let function = digest_function(req.digest_function)?;
        let digests = parse_digests(function, &req.blob_digests, "blob_digests")?;
        let present = cas.contains(&digests).await.map_err(status::from_store)?;
        let hits = present.iter().filter(|p| **p).count() as u64;
        self.instances.metrics.looked_up(&req.instance_name, "cas", "find_missing", hits, present.len() as u64 - hits);
        // The client's own digest messages go back as they came: no re-encoding of hashes.
        let missing = req.blob_digests.into_iter().zip(present).filter(|(_, p)| !p).map(|(d, _)| d).collect();
        Ok(Response::new(reapi::FindMissingBlobsResponse { missing_blob_digests: missing }))
    }

    async fn batch_update_blobs(
        &self,
        request: Request<reapi::BatchUpdateBlobsRequest>,
    ) -> Result<Response<reapi::BatchUpdateBlobsResponse>, Status> {
        // Served by `cas_batch_update` over the network, which decodes the blobs without copying them.
        self.batch_update(request.map(BatchUpdate::from)).await.map(Response::new)
    }

    async fn batch_read_blobs(
        &self,
        request: Request<reapi::BatchReadBlobsRequest>,
    ) -> Result<Response<reapi::BatchReadBlobsResponse>, Status> {
        // Served by `cas_batch_read` over the network; this copy of each blob into its message is
        // what that route saves.
        let responses = self.batch_read(request).await?.into_iter().map(|read| batch_read_blobs_response::Response {
            digest: Some(read.digest),
            data: read.data.to_vec(),
            compressor: read.compressor,
            status: Some(read.status),
        });
        Ok(Response::new(reapi::BatchReadBlobsResponse { responses: responses.collect() }))
    }

    type GetTreeStream = ResponseStream<reapi::GetTreeResponse>;

    async fn get_tree(&self, request: Request<reapi::GetTreeRequest>) -> Result<Response<Self::GetTreeStream>, Status> {
        let access = Access::of(&request)?.clone();
        let req = request.into_inner();
        let cas = self.instances.cas(&access, &req.instance_name)?.clone();
        let function = digest_function(req.digest_function)?;
        let root = parse_digest(function, req.root_digest.as_ref(), "root_digest")?;
        if req.page_size < 0 {
            return Err(Status::invalid_argument(format!("page_size {} is negative", req.page_size)));
        }
        let page_size = if req.page_size == 0 { DEFAULT_TREE_PAGE } else { req.page_size as usize };
        let skip = match req.page_token.as_str() {
            "" => 0,
            token => token.parse::<usize>().map_err(|_| {
                Status::invalid_argument(format!("page_token {} was not issued by this server", quote(token)))
            })?,
        };
        let root_dir = load::<reapi::Directory>(&cas, &root, "Directory")
            .await
            .map_err(status::from_tree)?
            .ok_or_else(|| Status::not_found(format!("root directory {root} not found")))?;
        let (tx, rx) = mpsc::channel(2);
        let max_page_bytes = self.instances.max_batch_total_size as usize;
        tokio::spawn(send_pages(Walk::new(cas, function, root, root_dir), skip, page_size, max_page_bytes, tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn split_blob(&self, _: Request<reapi::SplitBlobRequest>) -> Result<Response<reapi::SplitBlobResponse>, Status> {
        Err(Status::unimplemented("SplitBlob is not supported by this server (no chunking)"))
    }

    type GetChunkMappingStream = ResponseStream<reapi::GetChunkMappingResponse>;

    async fn get_chunk_mapping(
        &self,
        _: Request<reapi::GetChunkMappingRequest>,
    ) -> Result<Response<Self::GetChunkMappingStream>, Status> {
        Err(Status::unimplemented("GetChunkMapping is not supported by this server (no chunking)"))
    }

    async fn splice_blob(&self, _: Request<reapi::SpliceBlobRequest>) -> Result<Response<reapi::SpliceBlobResponse>, Status> {
        Err(Status::unimplemented("SpliceBlob is not supported by this server (no chunking)"))
    }

    async fn register_chunk_mapping(
        &self,
        _: Request<Streaming<reapi::RegisterChunkMappingRequest>>,
    ) -> Result<Response<reapi::RegisterChunkMappingResponse>, Status> {
        Err(Status::unimplemented("RegisterChunkMapping is not supported by this server (no chunking)"))
    }
}

/// Sends pages of at most `page_size` directories and `max_page_bytes` from the walk, skipping the
/// `skip` directories that earlier pages returned.
async fn send_pages(mut walk: Walk, skip: usize, page_size: usize, max_page_bytes: usize, tx: mpsc::Sender<Result<reapi::GetTreeResponse, Status>>) {
    let mut position = 0usize;
    let mut page = Vec::new();
    let mut page_bytes = 0usize;
    loop {
        let dir = match walk.next().await {
            Ok(Some(dir)) => dir,
            Ok(None) => break,
            Err(e) => {
                let _ = tx.send(Err(status::from_tree(e))).await;
                return;
            }
        };
        position += 1;
        if position <= skip {
            continue;
        }
        let len = dir.encoded_len();
        if !page.is_empty() && (page.len() >= page_size || page_bytes + len > max_page_bytes) {
            let response = reapi::GetTreeResponse {
                directories: std::mem::take(&mut page),
                next_page_token: (position - 1).to_string(),
            };
            page_bytes = 0;
            if tx.send(Ok(response)).await.is_err() {
                return;
            }
        }
        page_bytes += len;
        page.push(dir);
    }
    let _ = tx.send(Ok(reapi::GetTreeResponse { directories: page, next_page_token: String::new() })).await;
}
