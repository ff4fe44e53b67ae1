//! Unique blobs that are cheap to make: every blob of a run shares one body and ends in a short unique
//! suffix. The hasher state after the body is computed once and cloned, so a digest costs a few
//! microseconds whatever the blob size, and the load generator spends its CPU on the wire, not on
//! hashing what it is about to send. The body compresses about as well as build outputs do, and for
//! `--compressor zstd` it is compressed once per run: a blob's zstd form is the body's frames followed
//! by a frame of its tail (a stream of several frames is still one zstd stream).

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use strata_backends::{Digest, DigestFunction};

/// Unique suffix bytes: the run's nonce and a counter.
const SUFFIX: usize = 16;

pub struct BlobFactory {
    function: DigestFunction,
    body: Bytes,
    body_state: HasherState,
    /// The body in independent 1 MiB zstd frames, when the run sends blobs compressed.
    body_zstd: Option<Bytes>,
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
    body_zstd: Option<Bytes>,
}

impl UniqueBlob {
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.body.len() + self.tail.len());
        v.extend_from_slice(&self.body);
        v.extend_from_slice(&self.tail);
        v
    }

    /// The blob as zstd frames, split in the same two parts (None unless the factory compresses).
    pub fn zstd_parts(&self) -> Option<(Bytes, Bytes)> {
        let body = self.body_zstd.clone()?;
        let tail = zstd::bulk::compress(&self.tail, ZSTD_LEVEL).ok()?;
        Some((body, Bytes::from(tail)))
    }

    pub fn zstd_vec(&self) -> Option<Vec<u8>> {
        let (body, tail) = self.zstd_parts()?;
        Some([&body[..], &tail[..]].concat())
    }
}

const ZSTD_LEVEL: i32 = 1;
const ZSTD_FRAME: usize = 1 << 20;

/// Pseudo build output: words of a small random vocabulary, the common ones picked more often, with
/// random bytes between. zstd level 1 shrinks a large body 2.8x and a 4 KiB one 1.9x (this machine's
/// object files and headers, taken together: 3.25x).
fn body_bytes(len: usize, nonce: u64) -> Vec<u8> {
    let mut state = nonce | 1;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    // Words mostly of letters, as names and text are; some of any byte, as code is.
    let letter = |r: u64| if r % 8 == 0 { (r >> 3) as u8 } else { b'a' + ((r >> 3) % 26) as u8 };
    let vocabulary: Vec<Vec<u8>> = (0..512).map(|_| (0..2 + next() % 11).map(|_| letter(next())).collect()).collect();
    let mut body = Vec::with_capacity(len + 16);
    while body.len() < len {
        let r = next();
        if r % 8 == 0 {
            body.push((r >> 8) as u8);
        } else {
            let word = ((r >> 8) % 512).min((r >> 24) % 512).min((r >> 40) % 512) as usize;
            body.extend_from_slice(&vocabulary[word]);
        }
    }
    body.truncate(len);
    body
}

impl BlobFactory {
    /// Blobs of `size` bytes (at least 16). The body is a multiple of 64 bytes, SHA-256's block.
    pub fn new(function: DigestFunction, size: usize, nonce: u64, compressed: bool) -> Result<BlobFactory, String> {
        let size = size.max(SUFFIX);
        let body_len = (size - SUFFIX) / 64 * 64;
        let body = body_bytes(body_len, nonce);
        let body_zstd = match compressed {
            false => None,
            true => {
                let mut frames = Vec::new();
                for piece in body.chunks(ZSTD_FRAME) {
                    frames.extend(zstd::bulk::compress(piece, ZSTD_LEVEL).map_err(|e| format!("zstd: {e}"))?);
                }
                Some(Bytes::from(frames))
            }
        };
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
        Ok(BlobFactory { function, body: Bytes::from(body), body_state, body_zstd, size, nonce, counter: AtomicU64::new(0) })
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
        UniqueBlob { digest, body: self.body.clone(), tail: Bytes::from(tail), body_zstd: self.body_zstd.clone() }
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
            for size in [16, 100, 4096, 70_000, 3 << 20] {
                let f = BlobFactory::new(function, size, 7, true).unwrap();
                let a = f.next();
                let b = f.next();
                assert_ne!(a.digest, b.digest);
                a.digest.verify(&a.to_vec()).unwrap();
                b.digest.verify(&b.to_vec()).unwrap();
                assert_eq!(a.to_vec().len(), size);
                let unzipped = zstd::stream::decode_all(&a.zstd_vec().unwrap()[..]).unwrap();
                assert_eq!(unzipped, a.to_vec());
            }
        }
        assert!(BlobFactory::new(DigestFunction::Sha256, 100, 7, false).unwrap().next().zstd_parts().is_none());
    }

    #[test]
    fn bodies_compress_like_build_outputs() {
        for (size, ratios) in [(4032, 1.6..2.5), (4 << 20, 2.4..4.0)] {
            let body = body_bytes(size, 99);
            let ratio = body.len() as f64 / zstd::bulk::compress(&body, ZSTD_LEVEL).unwrap().len() as f64;
            assert!(ratios.contains(&ratio), "{size} bytes: ratio {ratio:.2}");
        }
    }
}
