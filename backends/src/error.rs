//! The errors a store can report. The server maps them to gRPC statuses in one place
//! (`src/status.rs`); here they only say what went wrong, with the path or digest involved.

use std::path::PathBuf;

use crate::digest::{Digest, DigestError};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    InvalidBlob(#[from] DigestError),
    #[error("blob {digest} is larger than {store} can hold ({limit} bytes at most)")]
    TooLarge { digest: Digest, store: String, limit: u64 },
    #[error("{store} is full: {needed} more bytes do not fit within its max_size of {max_size} bytes (uploads in progress hold the rest)")]
    Full { store: String, needed: u64, max_size: u64 },
    #[error("no space left on {path}: {source}")]
    NoSpace { path: PathBuf, source: std::io::Error },
    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("invalid storage configuration: {0}")]
    Config(String),
    #[error("upstream {upstream} is unavailable: {message}")]
    Unavailable { upstream: String, message: String },
    #[error("upstream {upstream} failed: {message}")]
    Upstream { upstream: String, code: i32, message: String },
    #[error("blob {digest} from {tier} does not match its digest: {reason}")]
    Corrupt { digest: Digest, tier: String, reason: String },
}

impl StoreError {
    /// Wraps an I/O error with the path it concerns, telling a full disk apart from other failures.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        let path = path.into();
        match source.raw_os_error() {
            Some(code) if code == libc::ENOSPC || code == libc::EDQUOT => StoreError::NoSpace { path, source },
            _ => StoreError::Io { path, source },
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
