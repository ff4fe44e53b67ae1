//! Remote Asset API v1: Fetch (FetchBlob, FetchDirectory) and Push (PushBlob, PushDirectory), on
//! instances that list the `asset` service. The rules are `crate::assets`; here requests are checked
//! and answers rendered. A request without URIs is INVALID_ARGUMENT (BuildStream probes every remote
//! with exactly that, and keeps only those that answer so).

use std::collections::HashSet;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::build::bazel::remote::asset::v1::fetch_server::Fetch;
use bazel_remote_apis::build::bazel::remote::asset::v1::push_server::Push;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::google::protobuf::Timestamp;
use strata_backends::DigestFunction;
use tonic::{Request, Response, Status};

use super::{digest_function, parse_digest, parse_digests};
use crate::auth::Access;
use crate::assets::{self, AssetError, Assets, Kind, Name, Record};
use crate::instances::Instances;
use crate::protocol;
use crate::quote::quote;
use crate::status;

/// URIs per request at most, and bytes per URI or qualifier.
const MAX_URIS: usize = 1000;
const MAX_TEXT: usize = 64 << 10;

pub struct AssetService {
    pub instances: Arc<Instances>,
}

/// The name a request gives, checked: URIs present and bounded, qualifiers unique.
fn name(kind: Kind, function: i32, uris: &[String], qualifiers: &[asset::Qualifier]) -> Result<Name, Status> {
    let function: DigestFunction = digest_function(function)?;
    if uris.is_empty() {
        return Err(Status::invalid_argument("uris is empty: name the asset by at least one URI"));
    }
    if uris.len() > MAX_URIS {
        return Err(Status::invalid_argument(format!("{} URIs in one request; at most {MAX_URIS} are accepted", uris.len())));
    }
    for uri in uris {
        if uri.is_empty() || uri.len() > MAX_TEXT {
            return Err(Status::invalid_argument(format!("URI {} is empty or longer than {MAX_TEXT} bytes", quote(uri))));
        }
    }
    let mut seen = HashSet::new();
    for q in qualifiers {
        if q.name.is_empty() || q.name.len() > MAX_TEXT || q.value.len() > MAX_TEXT {
            return Err(Status::invalid_argument(format!("qualifier {} is empty or longer than {MAX_TEXT} bytes", quote(&q.name))));
        }
        if !seen.insert(q.name.as_str()) {
            return Err(Status::invalid_argument(format!("qualifier {} is given twice", quote(&q.name))));
        }
    }
    let mut qualifiers: Vec<(String, String)> = qualifiers.iter().map(|q| (q.name.clone(), q.value.clone())).collect();
    qualifiers.sort();
    Ok(Name { kind, function, qualifiers })
}

fn not_found(uris: &[String]) -> Status {
    let shown: Vec<String> = uris.iter().take(3).map(|u| quote(u).to_string()).collect();
    let more = if uris.len() > 3 { format!(" and {} more", uris.len() - 3) } else { String::new() };
    Status::not_found(format!("no asset is stored for {}{more} (or what it names is no longer in the CAS)", shown.join(", ")))
}

fn expiry(record: &Record) -> Option<Timestamp> {
    (record.expire_at != 0).then_some(Timestamp { seconds: record.expire_at, nanos: 0 })
}

/// A fetch's answer: the asset, or why its origin could not give it (the Remote Asset API reports
/// that in the response's status, not as the call's).
enum Fetched {
    Found(Record),
    OriginFailed(bazel_remote_apis::google::rpc::Status),
}

async fn fetch(assets: &Assets, name: &Name, uris: &[String], oldest: Option<Timestamp>, count: impl FnOnce(bool)) -> Result<Fetched, Status> {
    let found = assets.fetch(name, uris, oldest.map(|t| t.seconds)).await;
    count(matches!(found, Ok(Some((_, true)))));
    // Qualifier names only: values may carry credentials (`http_header:Authorization`).
    let qualifiers: Vec<&str> = name.qualifiers.iter().map(|(k, _)| k.as_str()).collect();
    tracing::debug!(kind = ?name.kind, uri = %quote(&uris[0]), uris = uris.len(), ?qualifiers, found = matches!(found, Ok(Some(_))), "asset fetch");
    match found {
        Ok(Some((record, _))) => Ok(Fetched::Found(record)),
        Ok(None) => Err(not_found(uris)),
        Err(AssetError::Origin(e)) => Ok(Fetched::OriginFailed(protocol::to_rpc(&Status::new(e.code(), e.to_string())))),
        Err(e) => Err(status::from_asset(e)),
    }
}

/// A fetch request, whichever kind.
struct FetchAsk {
    instance: String,
    function: i32,
    uris: Vec<String>,
    qualifiers: Vec<asset::Qualifier>,
    oldest: Option<Timestamp>,
}

/// A fetch's answer, whichever kind: each RPC puts it into its own response type.
struct Answer {
    status: bazel_remote_apis::google::rpc::Status,
    uri: String,
    qualifiers: Vec<asset::Qualifier>,
    expires_at: Option<Timestamp>,
    digest: Option<reapi::Digest>,
    function: i32,
}

/// A push request, whichever kind; `field` names its digest in errors.
struct PushAsk {
    instance: String,
    function: i32,
    uris: Vec<String>,
    qualifiers: Vec<asset::Qualifier>,
    digest: Option<reapi::Digest>,
    field: &'static str,
    references_blobs: Vec<reapi::Digest>,
    references_directories: Vec<reapi::Digest>,
    expire_at: Option<Timestamp>,
}

impl AssetService {
    async fn answer(&self, access: &Access, kind: Kind, ask: FetchAsk) -> Result<Answer, Status> {
        // The instance first: one without the service answers UNIMPLEMENTED even to an empty probe.
        let assets = self.instances.assets(access, &ask.instance)?;
        let name = name(kind, ask.function, &ask.uris, &ask.qualifiers)?;
        let function = name.function.to_proto();
        let metrics = &self.instances.metrics;
        let count = |hit: bool| metrics.looked_up(&ask.instance, "asset", "fetch", u64::from(hit), u64::from(!hit));
        Ok(match fetch(assets, &name, &ask.uris, ask.oldest, count).await? {
            Fetched::Found(record) => Answer {
                status: protocol::ok_rpc(),
                expires_at: expiry(&record),
                uri: record.uri,
                qualifiers: ask.qualifiers,
                digest: record.digest,
                function,
            },
            Fetched::OriginFailed(status) => {
                let uri = ask.uris.into_iter().next().unwrap_or_default();
                Answer { status, uri, qualifiers: ask.qualifiers, expires_at: None, digest: None, function }
            }
        })
    }

    async fn record(&self, access: &Access, kind: Kind, ask: PushAsk) -> Result<(), Status> {
        let assets = self.instances.assets(access, &ask.instance)?;
        let name = name(kind, ask.function, &ask.uris, &ask.qualifiers)?;
        let push = assets::Push {
            digest: parse_digest(name.function, ask.digest.as_ref(), ask.field)?,
            references_blobs: parse_digests(name.function, &ask.references_blobs, "references_blobs")?,
            references_directories: parse_digests(name.function, &ask.references_directories, "references_directories")?,
            expire_at: ask.expire_at,
            uris: ask.uris,
            name,
        };
        tracing::debug!(kind = ?push.name.kind, uri = %quote(&push.uris[0]), uris = push.uris.len(), "asset push");
        assets.push(push).await.map_err(status::from_asset)
    }
}

#[tonic::async_trait]
impl Fetch for AssetService {
    async fn fetch_blob(&self, request: Request<asset::FetchBlobRequest>) -> Result<Response<asset::FetchBlobResponse>, Status> {
        let access = Access::of(&request)?.clone();
        let r = request.into_inner();
        let ask = FetchAsk { instance: r.instance_name, function: r.digest_function, uris: r.uris, qualifiers: r.qualifiers, oldest: r.oldest_content_accepted };
        let a = self.answer(&access, Kind::Blob, ask).await?;
        Ok(Response::new(asset::FetchBlobResponse {
            status: Some(a.status),
            uri: a.uri,
            qualifiers: a.qualifiers,
            expires_at: a.expires_at,
            blob_digest: a.digest,
            digest_function: a.function,
        }))
    }

    async fn fetch_directory(&self, request: Request<asset::FetchDirectoryRequest>) -> Result<Response<asset::FetchDirectoryResponse>, Status> {
        let access = Access::of(&request)?.clone();
        let r = request.into_inner();
        let ask = FetchAsk { instance: r.instance_name, function: r.digest_function, uris: r.uris, qualifiers: r.qualifiers, oldest: r.oldest_content_accepted };
        let a = self.answer(&access, Kind::Directory, ask).await?;
        Ok(Response::new(asset::FetchDirectoryResponse {
            status: Some(a.status),
            uri: a.uri,
            qualifiers: a.qualifiers,
            expires_at: a.expires_at,
            root_directory_digest: a.digest,
            digest_function: a.function,
        }))
    }
}

#[tonic::async_trait]
impl Push for AssetService {
    async fn push_blob(&self, request: Request<asset::PushBlobRequest>) -> Result<Response<asset::PushBlobResponse>, Status> {
        let access = Access::of(&request)?.clone();
        let r = request.into_inner();
        let ask = PushAsk {
            instance: r.instance_name,
            function: r.digest_function,
            uris: r.uris,
            qualifiers: r.qualifiers,
            digest: r.blob_digest,
            field: "blob_digest",
            references_blobs: r.references_blobs,
            references_directories: r.references_directories,
            expire_at: r.expire_at,
        };
        self.record(&access, Kind::Blob, ask).await?;
        Ok(Response::new(asset::PushBlobResponse {}))
    }

    async fn push_directory(&self, request: Request<asset::PushDirectoryRequest>) -> Result<Response<asset::PushDirectoryResponse>, Status> {
        let access = Access::of(&request)?.clone();
        let r = request.into_inner();
        let ask = PushAsk {
            instance: r.instance_name,
            function: r.digest_function,
            uris: r.uris,
            qualifiers: r.qualifiers,
            digest: r.root_directory_digest,
            field: "root_directory_digest",
            references_blobs: r.references_blobs,
            references_directories: r.references_directories,
            expire_at: r.expire_at,
        };
        self.record(&access, Kind::Directory, ask).await?;
        Ok(Response::new(asset::PushDirectoryResponse {}))
    }
}
