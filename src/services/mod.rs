//! The gRPC services, one file each. They are thin: parse and validate the request, call the CAS or
//! action cache, map errors through `crate::status`. Digests from requests are parsed here only.

pub mod action_cache;
pub mod admin;
pub mod asset;
pub mod bytestream;
pub mod bytestream_read;
pub mod bytestream_write;
pub mod capabilities;
pub mod bots;
pub mod cas;
pub mod cas_batch_read;
pub mod cas_batch_update;
pub mod execution;
pub mod operations;
pub mod raw_route;
pub mod request_body;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use strata_backends::{Digest, DigestFunction};
use tonic::Status;

use crate::status;

/// The digest function a request names (its `digest_function` field; unset means SHA-256).
pub fn digest_function(value: i32) -> Result<DigestFunction, Status> {
    DigestFunction::from_proto(value).map_err(status::from_digest)
}

/// Parses a digest of a request; `what` names the field in the error message.
pub fn parse_digest(function: DigestFunction, digest: Option<&reapi::Digest>, what: &str) -> Result<Digest, Status> {
    crate::protocol::from_proto(function, digest, what).map_err(Status::invalid_argument)
}

/// Parses a repeated digest field; an error names the entry (`field[i]`).
pub fn parse_digests(function: DigestFunction, digests: &[reapi::Digest], field: &str) -> Result<Vec<Digest>, Status> {
    // The entry's name is formatted only for an error: FindMissingBlobs parses thousands per call.
    digests
        .iter()
        .enumerate()
        .map(|(i, d)| match Digest::parse(function, &d.hash, d.size_bytes) {
            Ok(digest) => Ok(digest),
            Err(_) => parse_digest(function, Some(d), &format!("{field}[{i}]")),
        })
        .collect()
}

