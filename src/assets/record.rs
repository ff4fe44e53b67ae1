//! How an asset is stored: one record per URI, under a key derived from what a fetch names (kind,
//! digest function, URI and qualifiers), in the storage stack's key-value tiers (the ones that also
//! hold the action cache, under keys that cannot collide with action digests).

use bazel_remote_apis::build::bazel::remote::asset::v1 as asset;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use strata_backends::{Digest, DigestFunction};

/// Blob assets and directory assets are looked up apart: a directory pushed under a URI is not a
/// blob of that URI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Blob = 1,
    Directory = 2,
}

/// What a fetch or a push names: the qualifiers sorted by name, so that their order does not matter.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Name {
    pub kind: Kind,
    pub function: DigestFunction,
    pub qualifiers: Vec<(String, String)>,
}

impl Name {
    /// The storage key of this name for one URI: a digest of an encoding no action digest hashes.
    pub fn key(&self, uri: &str) -> Digest {
        let mut text = Vec::with_capacity(64 + uri.len());
        text.extend_from_slice(b"strata-asset-v1\0");
        text.push(self.kind as u8);
        for part in std::iter::once((uri, "")).chain(self.qualifiers.iter().map(|(k, v)| (k.as_str(), v.as_str()))) {
            // Length-prefixed, so that no two different names encode alike.
            for s in [part.0, part.1] {
                text.extend_from_slice(&(s.len() as u64).to_le_bytes());
                text.extend_from_slice(s.as_bytes());
            }
        }
        let mut key = self.function.digest_of(&text);
        key.size = 0;
        key
    }

    pub fn qualifiers_proto(&self) -> Vec<asset::Qualifier> {
        self.qualifiers.iter().map(|(name, value)| asset::Qualifier { name: name.clone(), value: value.clone() }).collect()
    }
}

/// One stored asset. Times are seconds since the epoch; 0 means never (for `expire_at`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    #[prost(int32, tag = "1")]
    pub kind: i32,
    #[prost(message, optional, tag = "2")]
    pub digest: Option<reapi::Digest>,
    #[prost(string, tag = "3")]
    pub uri: String,
    #[prost(message, repeated, tag = "4")]
    pub qualifiers: Vec<asset::Qualifier>,
    #[prost(int64, tag = "5")]
    pub stored_at: i64,
    #[prost(int64, tag = "6")]
    pub expire_at: i64,
    #[prost(message, repeated, tag = "7")]
    pub references_blobs: Vec<reapi::Digest>,
    #[prost(message, repeated, tag = "8")]
    pub references_directories: Vec<reapi::Digest>,
}

impl Record {
    /// Whether this record is the one `name` and `uri` ask for (the key is a hash; this is the proof).
    pub fn answers(&self, name: &Name, uri: &str) -> bool {
        let mut qualifiers: Vec<(String, String)> = self.qualifiers.iter().map(|q| (q.name.clone(), q.value.clone())).collect();
        qualifiers.sort();
        self.kind == name.kind as i32 && self.uri == uri && qualifiers == name.qualifiers
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(kind: Kind, qualifiers: &[(&str, &str)]) -> Name {
        let mut qualifiers: Vec<(String, String)> = qualifiers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        qualifiers.sort();
        Name { kind, function: DigestFunction::Sha256, qualifiers }
    }

    #[test]
    fn keys_tell_every_part_of_a_name_apart() {
        let plain = name(Kind::Blob, &[]);
        let keys = [
            plain.key("urn:a"),
            plain.key("urn:b"),
            name(Kind::Directory, &[]).key("urn:a"),
            name(Kind::Blob, &[("q", "1")]).key("urn:a"),
            name(Kind::Blob, &[("q", "2")]).key("urn:a"),
            name(Kind::Blob, &[("q1", "")]).key("urn:a"),
            name(Kind::Blob, &[("q", "1"), ("r", "2")]).key("urn:a"),
            Name { function: DigestFunction::Blake3, ..plain.clone() }.key("urn:a"),
        ];
        for (i, a) in keys.iter().enumerate() {
            for b in &keys[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(name(Kind::Blob, &[("b", "2"), ("a", "1")]).key("u"), name(Kind::Blob, &[("a", "1"), ("b", "2")]).key("u"));
    }
}
