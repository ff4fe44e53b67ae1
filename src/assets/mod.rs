//! The Remote Asset API's domain: assets named by URIs and qualifiers, resolved to a blob or a
//! directory in the CAS. An asset is answered only while it is complete, like an action result:
//! its blob or whole tree and everything it references must still be in the CAS, and asking counts
//! as use, so a found asset keeps what it references from being evicted. Records live in the storage
//! stack's key-value tiers; a site cache asks its upstream's Remote Asset API on a miss and keeps
//! what it learns.

pub mod http;
mod record;

use std::sync::Arc;
use std::time::SystemTime;

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Timestamp;
use prost::Message;
use strata_backends::{ActionCacheStore, Digest, RemoteStore, StoreError};

use crate::cas::Cas;
use crate::exec::admission::missing_inputs;
use crate::protocol::{from_proto, to_proto};
use crate::tree::TreeError;
pub use record::{Kind, Name, Record};

/// Where one instance's assets are kept.
#[derive(Clone)]
pub struct Assets {
    pub index: Arc<dyn ActionCacheStore>,
    /// The server behind a site cache, asked on a miss and told of every push.
    pub upstream: Option<Arc<RemoteStore>>,
    /// Downloads of http(s) URIs on a miss, when the configuration allows them.
    pub http: Option<Arc<http::HttpFetcher>>,
    pub cas: Cas,
}

#[derive(Debug, thiserror::Error)]
pub enum AssetError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Tree(#[from] TreeError),
    /// A push names blobs or directories the CAS does not hold.
    #[error("{} blob(s) the asset names are not in the CAS", .0.len())]
    Missing(Vec<Digest>),
    /// Downloading the asset from its origin failed.
    #[error(transparent)]
    Origin(#[from] http::HttpFetchError),
}

/// A push, after the service has checked its fields.
pub struct Push {
    pub name: Name,
    pub uris: Vec<String>,
    pub digest: Digest,
    pub expire_at: Option<Timestamp>,
    pub references_blobs: Vec<Digest>,
    pub references_directories: Vec<Digest>,
}

fn unix_now() -> i64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Assets {
    /// The first of `uris` with a complete, unexpired record at least as new as `oldest` (seconds
    /// since the epoch), then the upstream's answer.
    /// The record answering `name` at one of `uris`, and whether the index held it (a cache hit)
    /// rather than the upstream or the origin.
    pub async fn fetch(&self, name: &Name, uris: &[String], oldest: Option<i64>) -> Result<Option<(Record, bool)>, AssetError> {
        let now = unix_now();
        for uri in uris {
            let Some(bytes) = self.index.get(&name.key(uri)).await? else { continue };
            let record = match Record::decode(bytes) {
                Ok(record) if record.answers(name, uri) => record,
                Ok(_) => continue,
                Err(e) => {
                    tracing::error!(uri, "stored asset record cannot be decoded: {e}");
                    continue;
                }
            };
            let expired = record.expire_at != 0 && record.expire_at <= now;
            let too_old = oldest.is_some_and(|o| record.stored_at < o);
            if !expired && !too_old && self.missing(name, &record).await?.is_empty() {
                return Ok(Some((record, true)));
            }
        }
        let record = match &self.upstream {
            Some(upstream) => self.fetch_upstream(upstream, name, uris, oldest).await?,
            None => None,
        };
        let record = match record {
            Some(record) if self.missing(name, &record).await?.is_empty() => Some(record),
            _ => self.download(name, uris, now).await?,
        };
        let Some(record) = record else { return Ok(None) };
        self.index.put(&name.key(&record.uri), record.encode_to_vec().into()).await?;
        Ok(Some((record, false)))
    }

    /// The first of `uris` the downloader may fetch, fetched; the last failure if all fail.
    async fn download(&self, name: &Name, uris: &[String], now: i64) -> Result<Option<Record>, AssetError> {
        let Some(http) = self.http.as_ref().filter(|_| name.kind == Kind::Blob) else { return Ok(None) };
        let mut failure = None;
        for uri in uris.iter().filter(|u| http.handles(u)) {
            match http.fetch(&self.cas, name.function, uri, &name.qualifiers).await {
                Ok(digest) => {
                    return Ok(Some(Record {
                        kind: Kind::Blob as i32,
                        digest: Some(to_proto(&digest)),
                        uri: uri.clone(),
                        qualifiers: name.qualifiers_proto(),
                        stored_at: now,
                        expire_at: 0,
                        references_blobs: Vec::new(),
                        references_directories: Vec::new(),
                    }))
                }
                Err(e) => {
                    tracing::warn!("{e}");
                    failure = Some(e);
                }
            }
        }
        failure.map_or(Ok(None), |e| Err(e.into()))
    }

    /// Records an asset under each of its URIs, once the CAS holds everything it names.
    pub async fn push(&self, push: Push) -> Result<(), AssetError> {
        let Push { name, uris, digest, expire_at, references_blobs, references_directories } = push;
        let mut record = Record {
            kind: name.kind as i32,
            digest: Some(to_proto(&digest)),
            uri: String::new(),
            qualifiers: name.qualifiers_proto(),
            stored_at: unix_now(),
            expire_at: expire_at.as_ref().map_or(0, |t| t.seconds.max(1)),
            references_blobs: references_blobs.iter().map(to_proto).collect(),
            references_directories: references_directories.iter().map(to_proto).collect(),
        };
        let missing = self.missing(&name, &record).await?;
        if !missing.is_empty() {
            return Err(AssetError::Missing(missing));
        }
        for uri in &uris {
            record.uri = uri.clone();
            self.index.put(&name.key(uri), record.encode_to_vec().into()).await?;
        }
        if let Some(upstream) = &self.upstream {
            // The records here are what this server answers from; the upstream's copy is for the
            // other caches behind it, so its failure is logged, not the client's.
            if let Err(e) = push_upstream(upstream, &name, uris, &record).await {
                tracing::warn!(uri = %record.uri, "pushing the asset upstream failed: {e}");
            }
        }
        Ok(())
    }

    /// What of a record's blob, tree and references the CAS lacks (every present blob counts as
    /// used). A tree that breaks the protocol's rules is an error.
    async fn missing(&self, name: &Name, record: &Record) -> Result<Vec<Digest>, AssetError> {
        let parse = |d: &reapi::Digest| from_proto(name.function, Some(d), "digest").map_err(TreeError::Invalid);
        let mut blobs: Vec<Digest> = record.references_blobs.iter().map(parse).collect::<Result<_, _>>()?;
        let mut directories: Vec<Digest> = record.references_directories.iter().map(parse).collect::<Result<_, _>>()?;
        let digest = parse(record.digest.as_ref().ok_or_else(|| TreeError::Invalid("asset without a digest".into()))?)?;
        if record.kind == Kind::Directory as i32 { directories.insert(0, digest) } else { blobs.insert(0, digest) }
        let mut missing = Vec::new();
        for root in directories {
            missing.extend(missing_inputs(&self.cas, name.function, root).await?);
        }
        let present = self.cas.contains(&blobs).await?;
        missing.extend(blobs.iter().zip(present).filter(|(_, p)| !p).map(|(d, _)| *d));
        Ok(missing)
    }

    async fn fetch_upstream(&self, upstream: &RemoteStore, name: &Name, uris: &[String], oldest: Option<i64>) -> Result<Option<Record>, AssetError> {
        let oldest_content_accepted = oldest.map(|seconds| Timestamp { seconds, nanos: 0 });
        let (uri, expires_at, digest) = match name.kind {
            Kind::Blob => {
                let request = asset::FetchBlobRequest {
                    uris: uris.to_vec(),
                    qualifiers: name.qualifiers_proto(),
                    oldest_content_accepted,
                    digest_function: name.function.to_proto(),
                    ..Default::default()
                };
                let Some(r) = upstream.fetch_blob(request).await? else { return Ok(None) };
                (r.uri, r.expires_at, r.blob_digest)
            }
            Kind::Directory => {
                let request = asset::FetchDirectoryRequest {
                    uris: uris.to_vec(),
                    qualifiers: name.qualifiers_proto(),
                    oldest_content_accepted,
                    digest_function: name.function.to_proto(),
                    ..Default::default()
                };
                let Some(r) = upstream.fetch_directory(request).await? else { return Ok(None) };
                (r.uri, r.expires_at, r.root_directory_digest)
            }
        };
        // An upstream that answers for a URI nobody asked about is not believed.
        if !uris.contains(&uri) || digest.is_none() {
            return Ok(None);
        }
        // Recorded under the qualifiers asked with (an upstream need not repeat them in its answer).
        let record = Record {
            kind: name.kind as i32,
            digest,
            uri,
            qualifiers: name.qualifiers_proto(),
            stored_at: unix_now(),
            expire_at: expires_at.map_or(0, |t| t.seconds.max(1)),
            references_blobs: Vec::new(),
            references_directories: Vec::new(),
        };
        Ok(Some(record))
    }
}

async fn push_upstream(upstream: &RemoteStore, name: &Name, uris: Vec<String>, record: &Record) -> Result<(), StoreError> {
    let expire_at = (record.expire_at != 0).then_some(Timestamp { seconds: record.expire_at, nanos: 0 });
    match name.kind {
        Kind::Blob => {
            let request = asset::PushBlobRequest {
                uris,
                qualifiers: record.qualifiers.clone(),
                expire_at,
                blob_digest: record.digest.clone(),
                references_blobs: record.references_blobs.clone(),
                references_directories: record.references_directories.clone(),
                digest_function: name.function.to_proto(),
                ..Default::default()
            };
            upstream.push_blob(request).await
        }
        Kind::Directory => {
            let request = asset::PushDirectoryRequest {
                uris,
                qualifiers: record.qualifiers.clone(),
                expire_at,
                root_directory_digest: record.digest.clone(),
                references_blobs: record.references_blobs.clone(),
                references_directories: record.references_directories.clone(),
                digest_function: name.function.to_proto(),
                ..Default::default()
            };
            upstream.push_directory(request).await
        }
    }
}
