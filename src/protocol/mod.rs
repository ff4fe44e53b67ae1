//! What the server and its clients (`strata bot`, `strata bench`, the remote tier) share on the wire:
//! digest conversion, ByteStream resource names, `google.rpc.Status` values, `Any` packing and the
//! Remote Workers API messages (`rwapi`), and the client plumbing (channel, HTTP/2 windows, message
//! size, backoff). Clients depend on this module, never on `services/`.

pub mod action;
pub mod compression;
pub mod paths;
pub mod resource;
pub mod rwapi;

pub use action::{outputs, platform, timestamp};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use strata_backends::{Digest, DigestFunction};
use tonic::{Code, Status};

/// The client plumbing (channel builder, HTTP/2 windows, message size, backoff) lives with the
/// remote tier, the first client; the server's endpoints use the same windows.
pub use strata_backends::client::{channel, endpoint, Backoff, CONNECTION_WINDOW, MAX_FRAME, MAX_MESSAGE, STREAM_WINDOW};

pub fn to_proto(digest: &Digest) -> reapi::Digest {
    reapi::Digest { hash: digest.hash_hex(), size_bytes: digest.size as i64 }
}

/// A digest field of a message; the error says which field (`what`) and what is wrong with it.
pub fn from_proto(function: DigestFunction, digest: Option<&reapi::Digest>, what: &str) -> Result<Digest, String> {
    let digest = digest.ok_or_else(|| format!("{what}: digest missing"))?;
    Digest::parse(function, &digest.hash, digest.size_bytes).map_err(|e| format!("{what}: {e}"))
}

/// A `google.rpc.Status` for per-item results inside responses (batches, leases).
pub fn to_rpc(status: &Status) -> bazel_remote_apis::google::rpc::Status {
    bazel_remote_apis::google::rpc::Status {
        code: status.code() as i32,
        message: status.message().to_string(),
        details: Vec::new(),
    }
}

pub fn ok_rpc() -> bazel_remote_apis::google::rpc::Status {
    bazel_remote_apis::google::rpc::Status { code: Code::Ok as i32, message: String::new(), details: Vec::new() }
}
