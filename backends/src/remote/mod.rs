//! The remote tier: a client of an upstream REAPI server (Strata, BuildGrid, Buildbarn, ...), for the
//! CAS and the action cache. Existence checks go out as FindMissingBlobs in large batches; small blobs
//! travel in BatchReadBlobs/BatchUpdateBlobs within the upstream's advertised batch limit, large ones
//! through ByteStream, streamed both ways. Every call has a deadline and idempotent calls are retried
//! with backoff while the upstream is unavailable; an upstream that stays down is reported as
//! `StoreError::Unavailable` naming it, which the server turns into UNAVAILABLE. What comes back from
//! an upstream is not trusted: the tier stack verifies it before serving or promoting it. Where the
//! upstream advertises zstd and the tier is configured for it, blobs travel compressed both ways
//! (`compressed-blobs` names, batch compressors); the CPU work runs off the async runtime.

use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::action_cache_client::ActionCacheClient;
use bazel_remote_apis::build::bazel::remote::execution::v2::capabilities_client::CapabilitiesClient;
use bazel_remote_apis::build::bazel::remote::execution::v2::content_addressable_storage_client::ContentAddressableStorageClient;
use crate::bytestream::byte_stream_client::ByteStreamClient;
use crate::bytestream::{ReadRequest, WriteRequest};
use bytes::Bytes;
use futures::StreamExt;
use prost::Message;
use tokio::sync::{mpsc, OnceCell};
use tonic::{Code, Request, Status};

mod assets;
mod batch_write;

use crate::client::{channel, AuthChannel, Backoff, ClientAuth, MAX_MESSAGE};
use crate::digest::{compressed_resource_name, resource_name, Digest, DigestFunction};
use crate::zstd_chunks::Settings;
use crate::zstd_stream::Decompressor;
use crate::error::{Result, StoreError};
use crate::chunks::Chunks;
use crate::store::{ActionCacheStore, Blob, BlobStore, BlobWriter, BufferedWriter, Counters, StoreStats};

/// Digests per FindMissingBlobs request.
const FIND_MISSING_BATCH: usize = 10_000;
/// Bytes per ByteStream WriteRequest.
const WRITE_CHUNK: usize = 1 << 20;
/// Blobs up to this size use the batch calls (if the upstream's limit allows).
const SMALL_BLOB: u64 = 1 << 20;
/// Blob bytes per zstd frame of a compressed upload.
const FRAME: usize = 1 << 20;
const IDENTITY: i32 = reapi::compressor::Value::Identity as i32;
const ZSTD: i32 = reapi::compressor::Value::Zstd as i32;

#[derive(Clone, Debug)]
pub struct RemoteConfig {
    /// `grpc://host:port`.
    pub endpoint: String,
    /// The instance name to use upstream (instance names are mapped: clients may use another).
    pub instance: String,
    /// Deadline of each call (a ByteStream transfer gets this per megabyte on top).
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Retries of idempotent calls while the upstream is unavailable or overloaded.
    pub retries: u32,
    /// Calls in flight to the upstream at most.
    pub concurrency: usize,
    /// The token, CA and client certificate the upstream is called with.
    pub auth: ClientAuth,
    /// zstd on the wire where the upstream advertises it: the level, and the size below which
    /// blobs travel as they are.
    pub compression: Option<Settings>,
}

/// What the upstream said of itself, asked once.
#[derive(Clone, Copy, Debug)]
struct Upstream {
    max_batch: u64,
    /// ByteStream `compressed-blobs/zstd` and zstd in batch reads.
    zstd_reads: bool,
    /// zstd in BatchUpdateBlobs.
    zstd_batch_writes: bool,
}

#[derive(Clone)]
pub struct RemoteStore {
    cfg: RemoteConfig,
    channel: AuthChannel,
    upstream: std::sync::Arc<OnceCell<Upstream>>,
    /// Calls in flight at most: upstreams such as BuildGrid refuse RPCs beyond their thread pool.
    in_flight: std::sync::Arc<tokio::sync::Semaphore>,
    counters: std::sync::Arc<Counters>,
}

impl RemoteStore {
    /// Prepares the client; the connection is made on first use, so a server can start while its
    /// upstream is down and recover when it comes back.
    pub fn new(cfg: RemoteConfig) -> Result<RemoteStore> {
        let channel = channel(&cfg.endpoint, &cfg.auth, cfg.connect_timeout)?;
        let in_flight = std::sync::Arc::new(tokio::sync::Semaphore::new(cfg.concurrency.max(1)));
        Ok(RemoteStore { cfg, channel, upstream: Default::default(), in_flight, counters: Default::default() })
    }

    pub fn endpoint(&self) -> &str {
        &self.cfg.endpoint
    }

    fn request<T>(&self, message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        request
    }

    fn cas(&self) -> ContentAddressableStorageClient<AuthChannel> {
        ContentAddressableStorageClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    fn bytestream(&self) -> ByteStreamClient<AuthChannel> {
        ByteStreamClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    fn action_cache(&self) -> ActionCacheClient<AuthChannel> {
        ActionCacheClient::new(self.channel.clone()).max_decoding_message_size(MAX_MESSAGE)
    }

    /// What an upstream failure means to our callers: UNAVAILABLE when it cannot be reached or did
    /// not answer in time, otherwise the upstream's own complaint, named.
    fn failure(&self, call: &str, status: Status) -> StoreError {
        let unreachable = matches!(status.code(), Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled)
            || (status.code() == Code::Unknown && status.message().contains("transport"));
        let message = format!("{call}: {}", status.message());
        if unreachable {
            StoreError::Unavailable { upstream: self.cfg.endpoint.clone(), message }
        } else {
            StoreError::Upstream { upstream: self.cfg.endpoint.clone(), code: status.code() as i32, message }
        }
    }

    /// Runs an idempotent call, retrying with backoff while the upstream is unavailable or
    /// overloaded (RESOURCE_EXHAUSTED), with at most `concurrency` calls in flight.
    async fn retry<T, F, Fut>(&self, call: &str, mut attempt: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, Status>>,
    {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
        let mut tries = 0;
        loop {
            let permit = self.in_flight.acquire().await.map_err(|e| StoreError::Config(e.to_string()))?;
            let outcome = attempt().await;
            drop(permit);
            match outcome {
                Ok(value) => return Ok(value),
                Err(status) => {
                    let overloaded = status.code() == Code::ResourceExhausted;
                    let error = self.failure(call, status);
                    let retryable = overloaded || matches!(error, StoreError::Unavailable { .. });
                    if !retryable || tries >= self.cfg.retries {
                        return Err(error);
                    }
                    tries += 1;
                    self.counters.retries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// The upstream's batch limit and compressors, asked once.
    async fn upstream(&self) -> Result<Upstream> {
        self.upstream
            .get_or_try_init(|| async {
                let caps = self
                    .retry("GetCapabilities", || {
                        let request = self.request(reapi::GetCapabilitiesRequest { instance_name: self.cfg.instance.clone() }, self.cfg.timeout);
                        async move { CapabilitiesClient::new(self.channel.clone()).get_capabilities(request).await }
                    })
                    .await?
                    .into_inner();
                let cache = caps.cache_capabilities.unwrap_or_default();
                let advertised = cache.max_batch_total_size_bytes;
                let wanted = self.cfg.compression.is_some();
                Ok::<Upstream, StoreError>(Upstream {
                    max_batch: if advertised > 0 { (advertised as u64).min(MAX_MESSAGE as u64 / 2) } else { 4 << 20 },
                    zstd_reads: wanted && cache.supported_compressors.contains(&ZSTD),
                    zstd_batch_writes: wanted && cache.supported_batch_update_compressors.contains(&ZSTD),
                })
            })
            .await
            .copied()
    }

    async fn max_batch(&self) -> Result<u64> {
        Ok(self.upstream().await?.max_batch)
    }

    /// The settings to compress an upload of this blob with, if it is to travel compressed.
    fn compress_upload(&self, digest: &Digest, upstream_takes_it: bool) -> Option<Settings> {
        self.cfg.compression.filter(|s| upstream_takes_it && digest.size >= s.min_size)
    }

    async fn is_small(&self, digest: &Digest) -> Result<bool> {
        Ok(batch_write::travels_in_batches(digest, self.max_batch().await?))
    }

    fn resource(&self, digest: &Digest, upload: Option<&str>, compressed: bool) -> String {
        match compressed {
            false => resource_name(&self.cfg.instance, upload, digest),
            true => compressed_resource_name(&self.cfg.instance, upload, digest),
        }
    }

    fn transfer_timeout(&self, size: u64) -> Duration {
        self.cfg.timeout + self.cfg.timeout.mul_f64(size as f64 / (64u64 << 20) as f64)
    }

    /// Starts a ByteStream upload fed by the returned channel, compressed if the upstream reads zstd.
    async fn start_upload(&self, digest: &Digest) -> Result<UploadWriter> {
        let zstd = self.compress_upload(digest, self.upstream().await?.zstd_reads);
        let (tx, rx) = mpsc::channel::<WriteRequest>(4);
        let request = self.request(tokio_stream::wrappers::ReceiverStream::new(rx), self.transfer_timeout(digest.size));
        let mut client = self.bytestream();
        let call = tokio::spawn(async move { client.write(request).await.map(|r| r.into_inner().committed_size) });
        let upload_id = format!("{:016x}{:016x}", rand_u64(), rand_u64());
        Ok(UploadWriter {
            store: self.clone(),
            digest: *digest,
            name: Some(self.resource(digest, Some(&upload_id), zstd.is_some())),
            tx: Some(tx),
            call: Some(call),
            offset: 0,
            zstd,
            pending: Vec::new(),
        })
    }
}

/// A random-enough identifier for upload names (uniqueness, not secrecy).
fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.finish()
}

/// Streams one blob upstream through ByteStream Write.
pub struct UploadWriter {
    store: RemoteStore,
    digest: Digest,
    name: Option<String>,
    tx: Option<mpsc::Sender<WriteRequest>>,
    call: Option<tokio::task::JoinHandle<std::result::Result<i64, Status>>>,
    /// Bytes sent: of the blob, or of its zstd frames when compressed (REAPI's compressed offsets).
    offset: u64,
    zstd: Option<Settings>,
    /// Blob bytes waiting to fill a frame (compressed uploads only).
    pending: Vec<u8>,
}

impl UploadWriter {
    /// Compressed uploads go as independent 1 MiB frames (one zstd stream, as REAPI allows),
    /// compressed off the runtime; `finish` sends what is left.
    async fn push(&mut self, data: Bytes, finish: bool) -> Result<()> {
        let Some(settings) = self.zstd else { return self.send(data, finish).await };
        self.pending.extend_from_slice(&data);
        while self.pending.len() >= FRAME || (finish && !self.pending.is_empty()) {
            let rest = self.pending.split_off(self.pending.len().min(FRAME));
            let piece = std::mem::replace(&mut self.pending, rest);
            let frame = tokio::task::spawn_blocking(move || crate::zstd_stream::compress_frame(&piece, settings.level))
                .await
                .map_err(|e| StoreError::Config(format!("compression task failed: {e}")))?
                .map_err(|e| StoreError::Config(format!("zstd compression failed: {e}")))?;
            self.send(Bytes::from(frame), false).await?;
            if self.call.is_none() {
                return Ok(()); // the upstream ended the call: it has the blob, or refused it
            }
        }
        match finish {
            true => self.send(Bytes::new(), true).await,
            false => Ok(()),
        }
    }

    async fn send(&mut self, data: Bytes, finish: bool) -> Result<()> {
        let mut chunks: Vec<Bytes> = (0..data.len()).step_by(WRITE_CHUNK).map(|i| data.slice(i..(i + WRITE_CHUNK).min(data.len()))).collect();
        if chunks.is_empty() {
            chunks.push(Bytes::new());
        }
        let last = chunks.len() - 1;
        for (i, chunk) in chunks.into_iter().enumerate() {
            let size = chunk.len() as u64;
            let message = WriteRequest {
                resource_name: self.name.take().unwrap_or_default(),
                write_offset: self.offset as i64,
                finish_write: finish && i == last,
                data: chunk,
            };
            self.offset += size;
            let sent = match &self.tx {
                Some(tx) => tx.send(message).await.is_ok(),
                None => false,
            };
            if !sent {
                // The call ended early: the upstream already has the blob, or refused it.
                return self.finish().await;
            }
        }
        Ok(())
    }

    async fn finish(&mut self) -> Result<()> {
        self.tx.take();
        let Some(call) = self.call.take() else { return Ok(()) };
        let committed = call
            .await
            .map_err(|e| StoreError::Unavailable { upstream: self.store.cfg.endpoint.clone(), message: format!("upload task failed: {e}") })?
            .map_err(|s| self.store.failure("ByteStream.Write", s))?;
        // A compressed upload commits the compressed bytes sent (some servers say the blob's size),
        // or -1 when the upstream already had the blob.
        let complete = match self.zstd {
            None => committed == self.digest.size as i64,
            Some(_) => committed == self.offset as i64 || committed == self.digest.size as i64 || committed == -1,
        };
        if !complete {
            return Err(StoreError::Upstream {
                upstream: self.store.cfg.endpoint.clone(),
                code: Code::Internal as i32,
                message: format!("ByteStream.Write of {} committed {committed} bytes", self.digest),
            });
        }
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for UploadWriter {
    async fn append(&mut self, chunk: Bytes) -> Result<()> {
        if self.call.is_none() {
            return Ok(()); // already complete upstream
        }
        self.push(chunk, false).await
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if self.call.is_some() && self.tx.is_some() {
            self.push(Bytes::new(), true).await?;
        }
        self.finish().await
    }
}

impl Drop for UploadWriter {
    fn drop(&mut self) {
        // Dropping the sender without finish_write leaves nothing committed upstream.
        if let Some(call) = self.call.take() {
            call.abort();
        }
    }
}

#[async_trait]
impl BlobStore for RemoteStore {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let mut found = vec![true; digests.len()];
        for function in DigestFunction::ALL {
            let indices: Vec<usize> = (0..digests.len()).filter(|&i| digests[i].function == function).collect();
            for chunk in indices.chunks(FIND_MISSING_BATCH) {
                let message = reapi::FindMissingBlobsRequest {
                    instance_name: self.cfg.instance.clone(),
                    blob_digests: chunk.iter().map(|&i| proto(&digests[i])).collect(),
                    digest_function: function.to_proto(),
                };
                let missing = self
                    .retry("FindMissingBlobs", || {
                        let request = self.request(message.clone(), self.cfg.timeout);
                        async move { self.cas().find_missing_blobs(request).await }
                    })
                    .await?
                    .into_inner()
                    .missing_blob_digests;
                let missing: std::collections::HashSet<(String, i64)> = missing.into_iter().map(|d| (d.hash, d.size_bytes)).collect();
                for &i in chunk {
                    found[i] = !missing.contains(&(digests[i].hash_hex(), digests[i].size as i64));
                }
            }
        }
        for hit in &found {
            self.counters.hit(*hit);
        }
        Ok(found)
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        let zstd = self.upstream().await?.zstd_reads;
        if self.is_small(digest).await? {
            let message = reapi::BatchReadBlobsRequest {
                instance_name: self.cfg.instance.clone(),
                digests: vec![proto(digest)],
                acceptable_compressors: if zstd { vec![ZSTD] } else { vec![] },
                digest_function: digest.function.to_proto(),
            };
            let response = self
                .retry("BatchReadBlobs", || {
                    let request = self.request(message.clone(), self.cfg.timeout);
                    async move { self.cas().batch_read_blobs(request).await }
                })
                .await?
                .into_inner();
            let Some(entry) = response.responses.into_iter().next() else { return Ok(None) };
            let status = entry.status.unwrap_or_default();
            if status.code == Code::NotFound as i32 {
                self.counters.hit(false);
                return Ok(None);
            }
            if status.code != 0 {
                return Err(self.failure("BatchReadBlobs", Status::new(Code::from_i32(status.code), status.message)));
            }
            self.counters.hit(true);
            let data = match entry.compressor {
                IDENTITY => Bytes::from(entry.data),
                ZSTD => Bytes::from(unzstd(entry.data, digest.size).await.map_err(|e| self.failure("BatchReadBlobs", e))?),
                other => return Err(self.failure("BatchReadBlobs", Status::internal(format!("answered with compressor {other}, which was not asked for")))),
            };
            return Ok(Some(Blob::Bytes(crate::store::slice_range(&data, offset, limit))));
        }
        // A compressed read cannot carry a limit (REAPI): ranges with one travel as they are.
        let compressed = zstd && limit.is_none() && offset < digest.size;
        let message = ReadRequest {
            resource_name: self.resource(digest, None, compressed),
            read_offset: offset as i64,
            read_limit: limit.map_or(0, |l| l as i64),
        };
        let stream = self.retry("ByteStream.Read", || {
            let request = self.request(message.clone(), self.transfer_timeout(digest.size));
            async move { self.bytestream().read(request).await }
        });
        let mut stream = match stream.await {
            Ok(response) => response.into_inner(),
            Err(StoreError::Upstream { code, .. }) if code == Code::NotFound as i32 => {
                self.counters.hit(false);
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        // The first message tells a missing blob from a present one before anything is served.
        let first = match stream.message().await {
            Ok(first) => first,
            Err(status) if status.code() == Code::NotFound => {
                self.counters.hit(false);
                return Ok(None);
            }
            Err(status) => return Err(self.failure("ByteStream.Read", status)),
        };
        self.counters.hit(true);
        let this = self.clone();
        let head = futures::stream::iter(first.map(|m| Ok(m.data)));
        let rest = stream.map(move |m| m.map(|m| m.data).map_err(|s| this.failure("ByteStream.Read", s)));
        let body = Box::pin(head.chain(rest));
        if !compressed {
            return Ok(Some(Blob::Stream(body)));
        }
        Ok(Some(Blob::Stream(self.decompressing(body, digest.size - offset)?)))
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        if self.is_small(digest).await? {
            let mut outcomes = self.update_batch(digest.function, &[(*digest, data)]).await;
            return outcomes.pop().unwrap_or_else(|| Err(StoreError::unanswered()));
        }
        let mut writer = Box::new(self.start_upload(digest).await?);
        writer.append(data).await?;
        writer.commit().await
    }

    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        self.write_in_batches(blobs).await
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        if self.is_small(digest).await? {
            let this = self.clone();
            let digest = *digest;
            return Ok(Box::new(BufferedWriter::new(move |data: Chunks| async move { this.write(&digest, data.into_bytes()).await })));
        }
        Ok(Box::new(self.start_upload(digest).await?))
    }

    fn stats(&self) -> StoreStats {
        self.counters.snapshot(0, 0)
    }
}

#[async_trait]
impl ActionCacheStore for RemoteStore {
    async fn get(&self, action: &Digest) -> Result<Option<Bytes>> {
        let message = reapi::GetActionResultRequest {
            instance_name: self.cfg.instance.clone(),
            action_digest: Some(proto(action)),
            digest_function: action.function.to_proto(),
            ..Default::default()
        };
        let result = self
            .retry("GetActionResult", || {
                let request = self.request(message.clone(), self.cfg.timeout);
                async move { self.action_cache().get_action_result(request).await }
            })
            .await;
        match result {
            Ok(response) => Ok(Some(Bytes::from(response.into_inner().encode_to_vec()))),
            Err(StoreError::Upstream { code, .. }) if code == Code::NotFound as i32 => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn put(&self, action: &Digest, value: Bytes) -> Result<()> {
        let result = reapi::ActionResult::decode(value).map_err(|e| StoreError::Config(format!("not an ActionResult: {e}")))?;
        let message = reapi::UpdateActionResultRequest {
            instance_name: self.cfg.instance.clone(),
            action_digest: Some(proto(action)),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: action.function.to_proto(),
        };
        self.retry("UpdateActionResult", || {
            let request = self.request(message.clone(), self.cfg.timeout);
            async move { self.action_cache().update_action_result(request).await }
        })
        .await?;
        Ok(())
    }
}

impl RemoteStore {
    /// The blob bytes of a compressed read, decompressed piece by piece off the runtime, never
    /// more than `expected` (a bomb is cut off there) and never fewer (a cut stream is an error).
    fn decompressing(&self, body: futures::stream::BoxStream<'static, Result<Bytes>>, expected: u64) -> Result<futures::stream::BoxStream<'static, Result<Bytes>>> {
        let decompressor = Decompressor::new(expected).map_err(|e| self.failure("ByteStream.Read", Status::internal(e.to_string())))?;
        let this = self.clone();
        let state = Some((body, decompressor, 0u64));
        Ok(Box::pin(futures::stream::unfold(state, move |state| {
            let this = this.clone();
            async move {
                let (mut body, mut decompressor, produced) = state?;
                let wrong = |message: String| Some((Err(this.failure("ByteStream.Read", Status::data_loss(message))), None));
                match body.next().await {
                    Some(Err(e)) => Some((Err(e), None)),
                    Some(Ok(frame)) => {
                        let outcome = tokio::task::spawn_blocking(move || {
                            let out = decompressor.feed(&frame);
                            (decompressor, out)
                        })
                        .await;
                        match outcome {
                            Ok((decompressor, Ok(out))) => {
                                let produced = produced + out.len() as u64;
                                Some((Ok(Bytes::from(out)), Some((body, decompressor, produced))))
                            }
                            Ok((_, Err(e))) => wrong(format!("the upstream's zstd stream: {e}")),
                            Err(e) => wrong(format!("decompression task failed: {e}")),
                        }
                    }
                    None if produced != expected => wrong(format!("the upstream's zstd stream ended after {produced} of {expected} bytes")),
                    None => None,
                }
            }
        })))
    }
}

/// Decompresses a batch answer off the runtime, bounded by the blob's size.
async fn unzstd(data: Vec<u8>, size: u64) -> std::result::Result<Vec<u8>, Status> {
    tokio::task::spawn_blocking(move || crate::zstd_stream::decompress(&data, size))
        .await
        .map_err(|e| Status::internal(format!("decompression task failed: {e}")))?
        .map_err(|e| Status::data_loss(format!("the upstream's zstd data: {e}")))
}

fn proto(digest: &Digest) -> reapi::Digest {
    reapi::Digest { hash: digest.hash_hex(), size_bytes: digest.size as i64 }
}
