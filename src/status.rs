//! The one place where domain errors become gRPC statuses. Status codes are part of the protocol's
//! contract (clients retry UNAVAILABLE, give up on INVALID_ARGUMENT), so they are chosen here only.

use strata_backends::{DigestError, StoreError};
use tonic::{Code, Status};

pub fn from_store(error: StoreError) -> Status {
    let code = match &error {
        StoreError::InvalidBlob(_) => Code::InvalidArgument,
        StoreError::TooLarge { .. } | StoreError::NoSpace { .. } | StoreError::Full { .. } => Code::ResourceExhausted,
        StoreError::Io { .. } | StoreError::Config(_) | StoreError::Corrupt { .. } | StoreError::Internal(_) => Code::Internal,
        StoreError::Unavailable { .. } => Code::Unavailable,
        // The upstream's own answer to a request we made: our failure, reported with its words.
        StoreError::Upstream { .. } => Code::Internal,
    };
    if code == Code::Internal {
        tracing::error!("storage failure: {error}");
    }
    Status::new(code, error.to_string())
}

pub fn from_tree(error: crate::tree::TreeError) -> Status {
    use crate::tree::TreeError;
    match error {
        TreeError::Store(e) => from_store(e),
        TreeError::Undecodable { .. } | TreeError::Invalid(_) => Status::invalid_argument(error.to_string()),
        TreeError::StoredResult { .. } => {
            tracing::error!("{error}");
            Status::internal(error.to_string())
        }
    }
}

/// FAILED_PRECONDITION naming the blobs `who` needs that the CAS lacks, with the PreconditionFailure
/// details REAPI clients read to upload them (the first ten are in the message too).
pub fn missing_blobs(digests: &[strata_backends::Digest], who: &str) -> Status {
    use crate::protocol::rwapi::{self, PreconditionFailure, Violation};
    let violations = digests
        .iter()
        .map(|d| Violation { r#type: "MISSING".into(), subject: format!("blobs/{}/{}", d.hash_hex(), d.size), description: String::new() })
        .collect();
    let failure = PreconditionFailure { violations };
    let list: Vec<String> = digests.iter().take(10).map(|d| d.to_string()).collect();
    let more = if digests.len() > 10 { format!(" and {} more", digests.len() - 10) } else { String::new() };
    let message = format!("{} blob(s) {who} needs are not in the CAS: {}{more}", digests.len(), list.join(", "));
    let details = bazel_remote_apis::google::rpc::Status {
        code: Code::FailedPrecondition as i32,
        message: message.clone(),
        details: vec![rwapi::pack(rwapi::PRECONDITION_FAILURE, &failure)],
    };
    Status::with_details(Code::FailedPrecondition, message, prost::Message::encode_to_vec(&details).into())
}

pub fn from_asset(error: crate::assets::AssetError) -> Status {
    use crate::assets::AssetError;
    match error {
        AssetError::Store(e) => from_store(e),
        AssetError::Tree(e) => from_tree(e),
        AssetError::Missing(digests) => missing_blobs(&digests, "the asset"),
        AssetError::Origin(e) => Status::new(e.code(), e.to_string()),
    }
}

pub fn from_digest(error: DigestError) -> Status {
    Status::invalid_argument(error.to_string())
}


pub fn from_scheduler(error: crate::exec::scheduler::SchedulerError) -> Status {
    use crate::exec::scheduler::SchedulerError;
    let code = match &error {
        SchedulerError::UnknownSession(_) | SchedulerError::UnknownOperation(_) => Code::NotFound,
    };
    Status::new(code, error.to_string())
}

/// Statuses that tonic itself answers before any service code runs, made to keep the contract: a
/// request over the message limit is RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE, which clients read
/// as a bad read offset) and a request that does not decode is INVALID_ARGUMENT (tonic says
/// INTERNAL, which clients retry). Tonic sends these as trailers-only responses, so the status is
/// in the response headers.
#[derive(Clone, Copy)]
pub struct DecodeStatusLayer;

impl<S> tower_layer::Layer<S> for DecodeStatusLayer {
    type Service = DecodeStatus<S>;
    fn layer(&self, inner: S) -> DecodeStatus<S> {
        DecodeStatus { inner }
    }
}

#[derive(Clone)]
pub struct DecodeStatus<S> {
    inner: S,
}

impl<S, B, R> tower_service::Service<http::Request<B>> for DecodeStatus<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<R>;
    type Error = S::Error;
    type Future = futures::future::MapOk<S::Future, fn(http::Response<R>) -> http::Response<R>>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        use futures::TryFutureExt;
        self.inner.call(request).map_ok(rewrite_decode_status as fn(http::Response<R>) -> http::Response<R>)
    }
}

fn rewrite_decode_status<R>(mut response: http::Response<R>) -> http::Response<R> {
    let headers = response.headers_mut();
    let code = headers.get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<i32>().ok());
    let message = headers.get("grpc-message").map(|v| percent_decode(v.as_bytes())).unwrap_or_default();
    let rewritten = match code.map(Code::from_i32) {
        Some(Code::OutOfRange) if message.contains("decoded message length too large") => Some((
            Code::ResourceExhausted,
            format!("request too large ({message}); split it into smaller requests (see max_batch_total_size)"),
        )),
        Some(Code::Internal) if message.starts_with("failed to decode Protobuf message") => {
            Some((Code::InvalidArgument, format!("the request is not a valid protobuf message of its RPC ({message})")))
        }
        _ => None,
    };
    if let Some((code, message)) = rewritten {
        // Printable ASCII without '%' needs no percent-encoding in grpc-message.
        let message: String = message.chars().map(|c| if c.is_ascii_graphic() && c != '%' || c == ' ' { c } else { '?' }).collect();
        if let Ok(value) = http::HeaderValue::from_str(&message) {
            headers.insert("grpc-status", http::HeaderValue::from(code as i32));
            headers.insert("grpc-message", value);
        }
    }
    response
}

/// grpc-message is percent-encoded.
fn percent_decode(raw: &[u8]) -> String {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let hex = raw.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok()).and_then(|h| u8::from_str_radix(h, 16).ok());
        match (raw[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
