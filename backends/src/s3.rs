//! The S3 tier, for AWS S3 and S3-compatible stores (MinIO, Ceph, Garage, ...): a custom endpoint and
//! path-style addressing, a key prefix, ranged GETs for read offsets, streaming multipart uploads for
//! large blobs (memory bounded by the part size, not the blob), bounded concurrency, the SDK's retries
//! and timeouts, and a switch for stores that reject the SDK's default CRC32 checksum headers.
//!
//! S3 has no batch existence check, so `contains` sends bounded concurrent HEADs; the configuration
//! puts an `ExistenceCache` in front. What comes back from S3 is not trusted: the configuration wraps
//! the tier in `Verified`, which hashes it before it is served or promoted.
//!
//! With `compression`, a CAS blob of `min_size` up to `part_size` that zstd makes smaller is stored in
//! the chunked form of the disk tier (`zstd_chunks`, its trailer ending in the version `STRZSTD1`)
//! under a key of its own, `cas-zstd1/...`, so that an object's key alone says its form and an
//! identity object can never be taken for a compressed one. Such a tier reads both keys: the
//! compressed one first, then the identity one that older objects (and blobs that did not shrink)
//! have. A tier without `compression` reads identity keys only.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::{BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::SdkError;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_sdk_s3::Client;
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use tokio::sync::Semaphore;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::zstd_chunks::{self, Chunked, Settings};
use crate::chunks::Chunks;
use crate::store::{ActionCacheStore, Blob, BlobStore, BlobWriter, BufferedWriter, Counters, StoreStats};

#[derive(Clone, Debug)]
pub struct S3Config {
    pub bucket: String,
    /// Prepended to every key, e.g. `strata/`.
    pub prefix: String,
    pub region: String,
    /// A custom endpoint (`http://127.0.0.1:9000`) for S3-compatible stores; None for AWS.
    pub endpoint: Option<String>,
    pub path_style: bool,
    /// Static credentials; None uses the standard AWS chain (environment, profile, instance role).
    pub access_key: Option<(String, String)>,
    /// Blobs larger than this are uploaded in parts of this size (at least 5 MiB, S3's minimum).
    pub part_size: u64,
    /// Requests in flight at most.
    pub concurrency: usize,
    pub retries: u32,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Send and check checksums only when an operation requires them.
    pub checksum_when_required: bool,
    /// CAS blobs stored compressed where that pays (see the module's text).
    pub compression: Option<Settings>,
}

#[derive(Clone)]
pub struct S3Store {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: S3Config,
    client: Client,
    name: String,
    limit: Semaphore,
    counters: Counters,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Namespace {
    Cas,
    /// CAS blobs in the chunked zstd form; the version is part of the name.
    CasZstd,
    ActionCache,
}

impl S3Store {
    pub async fn new(cfg: S3Config) -> Result<S3Store> {
        if cfg.part_size < 5 << 20 {
            return Err(StoreError::Config(format!("part_size {} is below S3's minimum of 5MiB", cfg.part_size)));
        }
        let mut builder = aws_sdk_s3::config::Builder::new()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(cfg.region.clone()))
            .force_path_style(cfg.path_style)
            .retry_config(aws_sdk_s3::config::retry::RetryConfig::standard().with_max_attempts(cfg.retries + 1))
            .timeout_config(
                aws_sdk_s3::config::timeout::TimeoutConfig::builder()
                    .connect_timeout(cfg.connect_timeout)
                    .operation_attempt_timeout(cfg.timeout)
                    .build(),
            );
        if let Some(endpoint) = &cfg.endpoint {
            builder = builder.endpoint_url(endpoint.clone());
        }
        if cfg.checksum_when_required {
            builder = builder
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        builder = match &cfg.access_key {
            Some((id, secret)) => builder.credentials_provider(Credentials::new(id, secret, None, None, "strata-config")),
            None => {
                let chain = aws_config::default_provider::credentials::DefaultCredentialsChain::builder()
                    .region(Region::new(cfg.region.clone()))
                    .build()
                    .await;
                builder.credentials_provider(chain)
            }
        };
        let name = format!("s3://{}/{} at {}", cfg.bucket, cfg.prefix, cfg.endpoint.as_deref().unwrap_or("AWS"));
        Ok(S3Store {
            inner: Arc::new(Inner {
                client: Client::from_conf(builder.build()),
                limit: Semaphore::new(cfg.concurrency.max(1)),
                name,
                counters: Counters::default(),
                cfg,
            }),
        })
    }

    pub fn name(&self) -> &str {
        &self.inner.name
    }

    fn key(&self, namespace: Namespace, digest: &Digest) -> String {
        let ns = match namespace {
            Namespace::Cas => "cas",
            Namespace::CasZstd => "cas-zstd1",
            Namespace::ActionCache => "ac",
        };
        format!("{}{ns}/{}/{}-{}", self.inner.cfg.prefix, digest.function.name(), digest.hash_hex(), digest.size)
    }

    /// Unreachable or timed out: UNAVAILABLE; anything else S3 said: its words, with the store named.
    fn failure<E: std::fmt::Debug + std::error::Error + 'static, R: std::fmt::Debug>(&self, call: &str, error: SdkError<E, R>) -> StoreError {
        let message = format!("{call}: {}", aws_sdk_s3::error::DisplayErrorContext(&error));
        match error {
            SdkError::DispatchFailure(_) | SdkError::TimeoutError(_) => StoreError::Unavailable { upstream: self.inner.name.clone(), message },
            _ => StoreError::Upstream { upstream: self.inner.name.clone(), code: 13, message },
        }
    }

    /// The keys a CAS blob may be under here, in the order they are looked at.
    fn cas_forms(&self, digest: &Digest) -> &'static [Namespace] {
        match self.inner.cfg.compression {
            Some(s) if digest.size >= s.min_size && digest.size <= self.inner.cfg.part_size => &[Namespace::CasZstd, Namespace::Cas],
            Some(_) => &[Namespace::Cas, Namespace::CasZstd],
            None => &[Namespace::Cas],
        }
    }

    async fn exists(&self, digest: &Digest) -> Result<bool> {
        for &form in self.cas_forms(digest) {
            if self.exists_as(form, digest).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn exists_as(&self, form: Namespace, digest: &Digest) -> Result<bool> {
        let _permit = self.inner.limit.acquire().await.map_err(|e| StoreError::Config(e.to_string()))?;
        let result = self.inner.client.head_object().bucket(&self.inner.cfg.bucket).key(self.key(form, digest)).send().await;
        match result {
            // A compressed object is smaller than its blob; its trailer is checked when it is read.
            Ok(head) if form == Namespace::CasZstd => Ok(head.content_length().is_some_and(|n| n > 0 && n < digest.size as i64)),
            Ok(head) => Ok(head.content_length() == Some(digest.size as i64)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_not_found()) => Ok(false),
            Err(e) => Err(self.failure("HeadObject", e)),
        }
    }

    /// A compressed object's blob bytes in `offset..offset + len`, decompressed off the runtime.
    async fn unpack(&self, body: ByteStream, digest: &Digest, offset: u64, len: u64) -> Result<Bytes> {
        let name = self.inner.name.clone();
        let payload = body.collect().await.map_err(|e| StoreError::Unavailable { upstream: name.clone(), message: format!("GetObject body: {e}") })?.into_bytes();
        let key = self.key(Namespace::CasZstd, digest);
        let size = digest.size;
        let damaged = move |what: String| StoreError::Upstream { upstream: name.clone(), code: 15, message: format!("{key}: {what}") };
        tokio::task::spawn_blocking(move || {
            let packed = Chunked::parse(payload).filter(|p| p.size() == size).ok_or_else(|| damaged("not an intact compressed object of this blob".into()))?;
            let (chunks, skip) = packed.chunks_for(offset, offset + len);
            let mut out = BytesMut::with_capacity(len as usize);
            for i in chunks {
                out.extend_from_slice(&packed.chunk(i).map_err(&damaged)?);
            }
            Ok(out.freeze().slice(skip as usize..(skip + len) as usize))
        })
        .await
        .map_err(|e| StoreError::Config(format!("decompression task failed: {e}")))?
    }

    /// The object's bytes from `offset`, `limit` of them at most; `None` when it does not exist.
    async fn get(&self, key: String, offset: u64, len: Option<u64>) -> Result<Option<ByteStream>> {
        let permit = self.inner.limit.acquire().await.map_err(|e| StoreError::Config(e.to_string()))?;
        let mut request = self.inner.client.get_object().bucket(&self.inner.cfg.bucket).key(key);
        match len {
            Some(len) => request = request.range(format!("bytes={offset}-{}", offset + len - 1)),
            None if offset > 0 => request = request.range(format!("bytes={offset}-")),
            None => {}
        }
        let result = request.send().await;
        drop(permit);
        match result {
            Ok(output) => Ok(Some(output.body)),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(None),
            Err(e) => Err(self.failure("GetObject", e)),
        }
    }

    async fn put(&self, key: String, data: Bytes) -> Result<()> {
        let _permit = self.inner.limit.acquire().await.map_err(|e| StoreError::Config(e.to_string()))?;
        self.inner
            .client
            .put_object()
            .bucket(&self.inner.cfg.bucket)
            .key(key)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.failure("PutObject", e))?;
        Ok(())
    }
}

fn chunks(body: ByteStream, name: String) -> Blob {
    Blob::Stream(Box::pin(futures::stream::unfold(Some(body), move |body| {
        let name = name.clone();
        async move {
            let mut body = body?;
            match body.next().await? {
                Ok(bytes) => Some((Ok(bytes), Some(body))),
                Err(e) => Some((Err(StoreError::Unavailable { upstream: name, message: format!("GetObject body: {e}") }), None)),
            }
        }
    })))
}

#[async_trait]
impl BlobStore for S3Store {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let lookups: Vec<_> = digests
            .iter()
            .map(|&d| {
                let this = self.clone();
                async move { this.exists(&d).await }
            })
            .collect();
        let heads = futures::stream::iter(lookups).buffered(self.inner.cfg.concurrency.max(1)).collect::<Vec<_>>().await;
        let found = heads.into_iter().collect::<Result<Vec<bool>>>()?;
        for hit in &found {
            self.inner.counters.hit(*hit);
        }
        Ok(found)
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        let remaining = digest.size.saturating_sub(offset);
        let len = limit.map_or(remaining, |l| l.min(remaining));
        if len == 0 {
            // An empty range is not a valid HTTP range; the object must still exist.
            return Ok(self.exists(digest).await?.then(|| Blob::Bytes(Bytes::new())));
        }
        let ranged = (offset > 0 || len < digest.size).then_some(len);
        for &form in self.cas_forms(digest) {
            // Compressed objects are at most `part_size`, and fetched whole.
            let found = match form {
                Namespace::CasZstd => self.get(self.key(form, digest), 0, None).await?,
                _ => self.get(self.key(form, digest), offset, ranged).await?,
            };
            let Some(body) = found else { continue };
            self.inner.counters.hit(true);
            return Ok(Some(match form {
                Namespace::CasZstd => Blob::Bytes(self.unpack(body, digest, offset, len).await?),
                _ => chunks(body, self.inner.name.clone()),
            }));
        }
        self.inner.counters.hit(false);
        Ok(None)
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        if digest.size <= self.inner.cfg.part_size {
            if self.cas_forms(digest)[0] == Namespace::CasZstd {
                let level = self.inner.cfg.compression.map_or(1, |s| s.level);
                let raw = data.clone();
                let packed = tokio::task::spawn_blocking(move || zstd_chunks::compress(&raw, level))
                    .await
                    .map_err(|e| StoreError::Config(format!("compression task failed: {e}")))?;
                if let Some(packed) = packed {
                    let stored = packed.len() as u64;
                    self.put(self.key(Namespace::CasZstd, digest), Bytes::from(packed)).await?;
                    self.inner.counters.written_as(digest.size, stored);
                    return Ok(());
                }
            }
            self.put(self.key(Namespace::Cas, digest), data).await?;
            self.inner.counters.written_as(digest.size, digest.size);
            return Ok(());
        }
        let mut writer = Box::new(MultipartWriter::new(self.clone(), *digest));
        writer.append(data).await?;
        writer.commit().await
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        if digest.size <= self.inner.cfg.part_size {
            let this = self.clone();
            let digest = *digest;
            return Ok(Box::new(BufferedWriter::new(move |data: Chunks| async move { this.write(&digest, data.into_bytes()).await })));
        }
        Ok(Box::new(MultipartWriter::new(self.clone(), *digest)))
    }

    fn stats(&self) -> StoreStats {
        self.inner.counters.snapshot(0, 0)
    }
}

#[async_trait]
impl ActionCacheStore for S3Store {
    async fn get(&self, action: &Digest) -> Result<Option<Bytes>> {
        let Some(body) = S3Store::get(self, self.key(Namespace::ActionCache, action), 0, None).await? else { return Ok(None) };
        let data = body.collect().await.map_err(|e| StoreError::Unavailable { upstream: self.inner.name.clone(), message: e.to_string() })?;
        Ok(Some(data.into_bytes()))
    }

    async fn put(&self, action: &Digest, value: Bytes) -> Result<()> {
        S3Store::put(self, self.key(Namespace::ActionCache, action), value).await
    }
}

/// A streaming multipart upload: parts of `part_size` are sent as they fill, so memory stays bounded
/// by one part whatever the blob's size. Dropped uncommitted, it aborts the upload.
struct MultipartWriter {
    store: S3Store,
    key: String,
    upload_id: Option<String>,
    buffer: BytesMut,
    parts: Vec<CompletedPart>,
}

impl MultipartWriter {
    fn new(store: S3Store, digest: Digest) -> Self {
        let key = store.key(Namespace::Cas, &digest);
        MultipartWriter { store, key, upload_id: None, buffer: BytesMut::new(), parts: Vec::new() }
    }

    async fn upload_part(&mut self) -> Result<()> {
        let inner = self.store.inner.clone();
        let upload_id = match &self.upload_id {
            Some(id) => id.clone(),
            None => {
                let created = inner
                    .client
                    .create_multipart_upload()
                    .bucket(&inner.cfg.bucket)
                    .key(&self.key)
                    .send()
                    .await
                    .map_err(|e| self.store.failure("CreateMultipartUpload", e))?;
                let id = created.upload_id().unwrap_or_default().to_string();
                self.upload_id = Some(id.clone());
                id
            }
        };
        let data = self.buffer.split().freeze();
        let number = self.parts.len() as i32 + 1;
        let _permit = inner.limit.acquire().await.map_err(|e| StoreError::Config(e.to_string()))?;
        let part = inner
            .client
            .upload_part()
            .bucket(&inner.cfg.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .part_number(number)
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.store.failure("UploadPart", e))?;
        self.parts.push(CompletedPart::builder().part_number(number).set_e_tag(part.e_tag().map(str::to_string)).build());
        Ok(())
    }
}

#[async_trait]
impl BlobWriter for MultipartWriter {
    async fn append(&mut self, chunk: Bytes) -> Result<()> {
        let part_size = self.store.inner.cfg.part_size as usize;
        let mut rest = chunk;
        while !rest.is_empty() {
            let take = rest.len().min(part_size - self.buffer.len());
            self.buffer.extend_from_slice(&rest.split_to(take));
            if self.buffer.len() == part_size {
                self.upload_part().await?;
            }
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        if !self.buffer.is_empty() || self.parts.is_empty() {
            self.upload_part().await?;
        }
        let inner = self.store.inner.clone();
        let upload_id = self.upload_id.take().unwrap_or_default();
        let parts = std::mem::take(&mut self.parts);
        inner
            .client
            .complete_multipart_upload()
            .bucket(&inner.cfg.bucket)
            .key(&self.key)
            .upload_id(upload_id)
            .multipart_upload(CompletedMultipartUpload::builder().set_parts(Some(parts)).build())
            .send()
            .await
            .map_err(|e| self.store.failure("CompleteMultipartUpload", e))?;
        Ok(())
    }
}

impl Drop for MultipartWriter {
    fn drop(&mut self) {
        let Some(upload_id) = self.upload_id.take() else { return };
        let inner = self.store.inner.clone();
        let key = std::mem::take(&mut self.key);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = inner.client.abort_multipart_upload().bucket(&inner.cfg.bucket).key(key).upload_id(upload_id).send().await;
            });
        }
    }
}
