//! Digests: the digest functions Strata supports, parsing and validation of hashes and sizes (in this
//! one place), and the incremental hasher that verifies every byte entering the CAS.

use std::fmt;

/// The digest functions Strata serves. Both produce 32-byte hashes; the function is part of every
/// storage key, so the same bytes hashed two ways are two different blobs.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum DigestFunction {
    Sha256,
    Blake3,
}

impl DigestFunction {
    pub const ALL: [DigestFunction; 2] = [DigestFunction::Sha256, DigestFunction::Blake3];

    /// The value of REAPI's `DigestFunction.Value` enum.
    pub fn to_proto(self) -> i32 {
        match self {
            DigestFunction::Sha256 => 1,
            DigestFunction::Blake3 => 9,
        }
    }

    /// REAPI's enum value; UNKNOWN (0) means the default, SHA-256, as the protocol specifies for
    /// 64-character hashes.
    pub fn from_proto(value: i32) -> Result<Self, DigestError> {
        match value {
            0 | 1 => Ok(DigestFunction::Sha256),
            9 => Ok(DigestFunction::Blake3),
            other => Err(DigestError::UnsupportedFunction(format!("enum value {other}"))),
        }
    }

    /// The lowercase name used in ByteStream resource names (`blobs/blake3/{hash}/{size}`).
    pub fn name(self) -> &'static str {
        match self {
            DigestFunction::Sha256 => "sha256",
            DigestFunction::Blake3 => "blake3",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha256" => Some(DigestFunction::Sha256),
            "blake3" => Some(DigestFunction::Blake3),
            _ => None,
        }
    }

    /// A one-byte tag for on-disk records.
    pub fn tag(self) -> u8 {
        match self {
            DigestFunction::Sha256 => 1,
            DigestFunction::Blake3 => 2,
        }
    }

    pub fn from_tag(tag: u8) -> Option<Self> {
        match tag {
            1 => Some(DigestFunction::Sha256),
            2 => Some(DigestFunction::Blake3),
            _ => None,
        }
    }

    pub fn hasher(self) -> Hasher {
        match self {
            DigestFunction::Sha256 => Hasher::Sha256(Box::default()),
            DigestFunction::Blake3 => Hasher::Blake3(Box::default()),
        }
    }

    pub fn hash(self, data: &[u8]) -> [u8; 32] {
        let mut hasher = self.hasher();
        hasher.update(data);
        hasher.finish()
    }

    /// The digest of `data` under this function.
    pub fn digest_of(self, data: &[u8]) -> Digest {
        Digest { function: self, hash: self.hash(data), size: data.len() as u64 }
    }

    pub fn empty(self) -> Digest {
        self.digest_of(&[])
    }
}

/// The identity of a stored value: digest function and hash. The CAS also checks the size; the action
/// cache keys its entries by the action digest's key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub struct Key {
    pub function: DigestFunction,
    pub hash: [u8; 32],
}

/// The value of each lowercase hex digit; 0x10 marks every other byte.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0x10u8; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// A validated content digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub struct Digest {
    pub function: DigestFunction,
    pub hash: [u8; 32],
    pub size: u64,
}

impl Digest {
    /// Parses a hash given as 64 lowercase hexadecimal characters and a size that must not be
    /// negative. Every digest that comes from a client passes through here.
    pub fn parse(function: DigestFunction, hash_hex: &str, size: i64) -> Result<Self, DigestError> {
        let malformed = || DigestError::MalformedHash(hash_hex.chars().take(80).collect());
        let hex = hash_hex.as_bytes();
        if hex.len() != 64 {
            return Err(malformed());
        }
        if size < 0 {
            return Err(DigestError::NegativeSize(size));
        }
        // A hot path (FindMissingBlobs parses thousands per request): one table lookup per character.
        let mut hash = [0u8; 32];
        let mut bad = 0u8;
        for (byte, pair) in hash.iter_mut().zip(hex.chunks_exact(2)) {
            let (hi, lo) = (HEX_VALUE[pair[0] as usize], HEX_VALUE[pair[1] as usize]);
            bad |= (hi | lo) & 0x10;
            *byte = (hi << 4) | (lo & 0x0f);
        }
        if bad != 0 {
            return Err(malformed());
        }
        Ok(Digest { function, hash, size: size as u64 })
    }

    pub fn key(&self) -> Key {
        Key { function: self.function, hash: self.hash }
    }

    pub fn hash_hex(&self) -> String {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut out = Vec::with_capacity(64);
        for b in self.hash {
            out.push(DIGITS[(b >> 4) as usize]);
            out.push(DIGITS[(b & 0x0f) as usize]);
        }
        // Only ASCII hex digits were pushed.
        String::from_utf8(out).unwrap_or_default()
    }

    pub fn is_empty_blob(&self) -> bool {
        self.size == 0 && self.hash == self.function.empty().hash
    }

    /// Checks that `data` is exactly the blob this digest names.
    pub fn verify(&self, data: &[u8]) -> Result<(), DigestError> {
        let mut hasher = self.function.hasher();
        hasher.update(data);
        hasher.verify(self, data.len() as u64)
    }
}

/// The ByteStream resource name of a blob: `{instance/}{uploads/{id}/}blobs/{function/}{hash}/{size}`.
/// The function segment is left out for SHA-256, as REAPI requires of the functions it predates.
/// (Parsing, with its validation, is the server's `resource` module.)
pub fn resource_name(instance: &str, upload: Option<&str>, digest: &Digest) -> String {
    name_of(instance, upload, "blobs/", digest)
}

/// The same for the blob's bytes zstd-compressed on the wire: `...compressed-blobs/zstd/{function/}...`.
pub fn compressed_resource_name(instance: &str, upload: Option<&str>, digest: &Digest) -> String {
    name_of(instance, upload, "compressed-blobs/zstd/", digest)
}

fn name_of(instance: &str, upload: Option<&str>, blobs: &str, digest: &Digest) -> String {
    let instance = if instance.is_empty() { String::new() } else { format!("{instance}/") };
    let upload = upload.map_or(String::new(), |id| format!("uploads/{id}/"));
    let function = match digest.function {
        DigestFunction::Sha256 => String::new(),
        f => format!("{}/", f.name()),
    };
    format!("{instance}{upload}{blobs}{function}{}/{}", digest.hash_hex(), digest.size)
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.function == DigestFunction::Sha256 {
            write!(f, "{}/{}", self.hash_hex(), self.size)
        } else {
            write!(f, "{}:{}/{}", self.function.name(), self.hash_hex(), self.size)
        }
    }
}

/// An incremental hasher for either digest function.
pub enum Hasher {
    Sha256(Box<sha2::Sha256>),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn update(&mut self, data: &[u8]) {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => h.update(data),
            Hasher::Blake3(h) => {
                h.update(data);
            }
        }
    }

    pub fn finish(self) -> [u8; 32] {
        use sha2::Digest as _;
        match self {
            Hasher::Sha256(h) => h.finalize().into(),
            Hasher::Blake3(h) => *h.finalize().as_bytes(),
        }
    }

    /// The one place where received bytes are compared with the digest they claim to be.
    pub fn verify(self, expected: &Digest, received: u64) -> Result<(), DigestError> {
        if received != expected.size {
            return Err(DigestError::SizeMismatch { digest: *expected, received });
        }
        let actual = self.finish();
        if actual != expected.hash {
            return Err(DigestError::HashMismatch { digest: *expected, actual: hex::encode(actual) });
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum DigestError {
    #[error("malformed hash {0:?}: expected 64 lowercase hexadecimal characters")]
    MalformedHash(String),
    #[error("negative size_bytes {0}")]
    NegativeSize(i64),
    #[error("unsupported digest function {0}: this server supports sha256 and blake3")]
    UnsupportedFunction(String),
    #[error("blob {digest}: received {received} bytes, but the digest declares {}", digest.size)]
    SizeMismatch { digest: Digest, received: u64 },
    #[error("blob {digest}: the data hashes to {actual}, not to the declared hash")]
    HashMismatch { digest: Digest, actual: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_digests_are_the_well_known_ones() {
        assert_eq!(
            DigestFunction::Sha256.empty().hash_hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            DigestFunction::Blake3.empty().hash_hex(),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
    }

    #[test]
    fn parse_rejects_bad_input() {
        let good = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert!(Digest::parse(DigestFunction::Sha256, good, 0).is_ok());
        assert!(Digest::parse(DigestFunction::Sha256, &good.to_uppercase(), 0).is_err());
        assert!(Digest::parse(DigestFunction::Sha256, &good[1..], 0).is_err());
        assert!(Digest::parse(DigestFunction::Sha256, "zz", 0).is_err());
        for bad in ["g", "G", "A", "/", ":", "`", "\u{e9}"] {
            let mut h = good.to_string();
            h.replace_range(10..10 + bad.len(), bad);
            assert!(Digest::parse(DigestFunction::Sha256, &h, 0).is_err(), "{h}");
        }
        let d = Digest::parse(DigestFunction::Sha256, good, 0).unwrap();
        assert_eq!(d.hash_hex(), good);
        assert_eq!(d.hash, DigestFunction::Sha256.empty().hash);
        assert!(matches!(
            Digest::parse(DigestFunction::Sha256, good, -1),
            Err(DigestError::NegativeSize(-1))
        ));
    }

    #[test]
    fn verify_reports_size_before_hash() {
        let d = DigestFunction::Blake3.digest_of(b"hello");
        assert!(d.verify(b"hello").is_ok());
        assert!(matches!(d.verify(b"hell"), Err(DigestError::SizeMismatch { .. })));
        assert!(matches!(d.verify(b"jello"), Err(DigestError::HashMismatch { .. })));
    }
}
