//! Unique blobs that are cheap to make: every blob of a run shares one body and ends in a short unique
//! suffix. The hasher state after the body is computed once and cloned, so a digest costs a few
//! microseconds whatever the blob size, and the load generator spends its CPU on the wire, not on
//! hashing what it is about to send.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use strata_backends::{Digest, DigestFunction};

/// Unique suffix bytes: the run's nonce and a counter.
const SUFFIX: usize = 16;

pub struct BlobFactory {
    function: DigestFunction,
    body: Bytes,
    body_state: HasherState,
    size: usize,
    nonce: u64,
    counter: AtomicU64,
}

/// A hasher that can be cloned after the shared body.
#[derive(Clone)]
enum HasherState {
    Sha256(sha2::Sha256),
    Blake3(Box<blake3::Hasher>),
}

pub struct UniqueBlob {
    pub digest: Digest,
    /// The shared body (zero-copy) and the unique tail.
    pub body: Bytes,
    pub tail: Bytes,
}

impl UniqueBlob {
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.body.len() + self.tail.len());
        v.extend_from_slice(&self.body);
        v.extend_from_slice(&self.tail);
        v
    }
}

impl BlobFactory {
    /// Blobs of `size` bytes (at least 16). The body is a multiple of 64 bytes, SHA-256's block.
    pub fn new(function: DigestFunction, size: usize, nonce: u64) -> BlobFactory {
        let size = size.max(SUFFIX);
        let body_len = (size - SUFFIX) / 64 * 64;
        let body: Vec<u8> = (0..body_len).map(|i| (i as u64).wrapping_mul(0x9E37_79B9).wrapping_add(nonce) as u8).collect();
        let body_state = match function {
            DigestFunction::Sha256 => {
                use sha2::Digest as _;
                let mut h = sha2::Sha256::new();
                h.update(&body);
                HasherState::Sha256(h)
            }
            DigestFunction::Blake3 => {
                let mut h = blake3::Hasher::new();
                h.update(&body);
                HasherState::Blake3(Box::new(h))
            }
        };
        BlobFactory { function, body: Bytes::from(body), body_state, size, nonce, counter: AtomicU64::new(0) }
    }

    pub fn next(&self) -> UniqueBlob {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let mut tail = vec![0u8; self.size - self.body.len()];
        tail[..8].copy_from_slice(&self.nonce.to_le_bytes());
        tail[8..16].copy_from_slice(&n.to_le_bytes());
        let hash = match self.body_state.clone() {
            HasherState::Sha256(mut h) => {
                use sha2::Digest as _;
                h.update(&tail);
                h.finalize().into()
            }
            HasherState::Blake3(mut h) => {
                h.update(&tail);
                *h.finalize().as_bytes()
            }
        };
        let digest = Digest { function: self.function, hash, size: self.size as u64 };
        UniqueBlob { digest, body: self.body.clone(), tail: Bytes::from(tail) }
    }
}

/// A nonce that differs between runs, so a second run against the same server uploads new blobs.
pub fn run_nonce() -> u64 {
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    (t as u64) ^ ((std::process::id() as u64) << 32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_match_the_bytes() {
        for function in DigestFunction::ALL {
            for size in [16, 100, 4096, 70_000] {
                let f = BlobFactory::new(function, size, 7);
                let a = f.next();
                let b = f.next();
                assert_ne!(a.digest, b.digest);
                a.digest.verify(&a.to_vec()).unwrap();
                b.digest.verify(&b.to_vec()).unwrap();
                assert_eq!(a.to_vec().len(), size);
            }
        }
    }
}
