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
    #[error("internal error: {0}")]
    Internal(String),
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

    /// This error for each of `n` blobs that one failed call concerned (a batch's append, sync or
    /// upstream call): the first gets it as it is, the others a copy of the same kind, whose I/O
    /// source (which cannot be cloned) keeps its kind and message.
    pub fn shared_by(self, n: usize) -> Vec<StoreError> {
        let copies: Vec<StoreError> = (1..n).map(|_| self.copy()).collect();
        std::iter::once(self).chain(copies).take(n).collect()
    }

    /// What a batch write says of a blob it gave no outcome for (it never should): not stored, so
    /// a store that answered short can never acknowledge a blob it did not keep.
    pub fn unanswered() -> StoreError {
        StoreError::Internal("the batch write gave no outcome for this blob".into())
    }

    fn copy(&self) -> StoreError {
        let io = |e: &std::io::Error| std::io::Error::new(e.kind(), e.to_string());
        match self {
            StoreError::InvalidBlob(e) => StoreError::InvalidBlob(e.clone()),
            StoreError::TooLarge { digest, store, limit } => StoreError::TooLarge { digest: *digest, store: store.clone(), limit: *limit },
            StoreError::Full { store, needed, max_size } => StoreError::Full { store: store.clone(), needed: *needed, max_size: *max_size },
            StoreError::NoSpace { path, source } => StoreError::NoSpace { path: path.clone(), source: io(source) },
            StoreError::Io { path, source } => StoreError::Io { path: path.clone(), source: io(source) },
            StoreError::Config(message) => StoreError::Config(message.clone()),
            StoreError::Unavailable { upstream, message } => StoreError::Unavailable { upstream: upstream.clone(), message: message.clone() },
            StoreError::Upstream { upstream, code, message } => {
                StoreError::Upstream { upstream: upstream.clone(), code: *code, message: message.clone() }
            }
            StoreError::Corrupt { digest, tier, reason } => StoreError::Corrupt { digest: *digest, tier: tier.clone(), reason: reason.clone() },
            StoreError::Internal(message) => StoreError::Internal(message.clone()),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_shared_by_a_batch_keeps_its_kind_and_message_for_every_blob() {
        let down = StoreError::Unavailable { upstream: "grpc://up".into(), message: "connection refused".into() };
        let all = down.shared_by(3);
        assert_eq!(all.len(), 3);
        assert!(all.iter().all(|e| matches!(e, StoreError::Unavailable { .. })), "a spool layer tells these apart: {all:?}");
        let full = StoreError::io("/data/cas", std::io::Error::from_raw_os_error(libc::ENOSPC)).shared_by(2);
        assert!(full.iter().all(|e| matches!(e, StoreError::NoSpace { .. })), "{full:?}");
        assert_eq!(full[0].to_string(), full[1].to_string());
        assert!(StoreError::Config("unused".into()).shared_by(0).is_empty());
    }
}
