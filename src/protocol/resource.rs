//! ByteStream resource names, in the forms REAPI defines:
//! `{instance}/blobs/{digest_function/}{hash}/{size}` to read and
//! `{instance}/uploads/{uuid}/blobs/{digest_function/}{hash}/{size}{/metadata}` to write.
//! The instance name may have several segments; it ends where the first keyword segment begins.
//! A missing digest function means SHA-256 (the only supported function with 64-character hashes
//! that the protocol lets clients leave out).

use strata_backends::{Digest, DigestFunction};
use tonic::Status;

use crate::quote::quote;

#[derive(Debug, PartialEq, Eq)]
pub struct ReadResource {
    pub instance: String,
    pub digest: Digest,
    /// `compressed-blobs/zstd/...`: the bytes travel zstd-compressed.
    pub compressed: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub struct WriteResource {
    pub instance: String,
    pub uuid: String,
    pub digest: Digest,
    /// `compressed-blobs/zstd/...`: the bytes travel zstd-compressed.
    pub compressed: bool,
}

fn invalid(name: &str, why: &str) -> Status {
    Status::invalid_argument(format!("resource name {}: {why}", quote(name)))
}

pub fn parse_read(name: &str) -> Result<ReadResource, Status> {
    let segments: Vec<&str> = name.split('/').collect();
    let Some(at) = segments.iter().position(|s| *s == "blobs" || *s == "compressed-blobs") else {
        return Err(invalid(name, "expected {instance}/blobs/{hash}/{size}"));
    };
    let (digest, compressed, rest) = parse_blob_part(name, &segments[at..])?;
    if !rest.is_empty() {
        return Err(invalid(name, "unexpected segments after {hash}/{size}"));
    }
    Ok(ReadResource { instance: segments[..at].join("/"), digest, compressed })
}

pub fn parse_write(name: &str) -> Result<WriteResource, Status> {
    let segments: Vec<&str> = name.split('/').collect();
    let Some(at) = segments.iter().position(|s| *s == "uploads") else {
        return Err(invalid(name, "expected {instance}/uploads/{uuid}/blobs/{hash}/{size}"));
    };
    let uuid = match segments.get(at + 1) {
        Some(uuid) if !uuid.is_empty() && segments.get(at + 2).is_some() => uuid.to_string(),
        _ => return Err(invalid(name, "expected {instance}/uploads/{uuid}/blobs/{hash}/{size}")),
    };
    // Whatever follows {size} is optional metadata, which this server ignores.
    let (digest, compressed, _metadata) = parse_blob_part(name, &segments[at + 2..])?;
    Ok(WriteResource { instance: segments[..at].join("/"), uuid, digest, compressed })
}

/// Parses `blobs/{digest_function/}{hash}/{size}...` or `compressed-blobs/zstd/...`, returning the
/// digest, whether it is compressed, and what follows it.
fn parse_blob_part<'a>(name: &str, segments: &'a [&'a str]) -> Result<(Digest, bool, &'a [&'a str]), Status> {
    let (mut rest, compressed) = match segments.first() {
        Some(&"blobs") => (&segments[1..], false),
        Some(&"compressed-blobs") => match segments.get(1).copied().unwrap_or("") {
            "zstd" => (&segments[2..], true),
            other => {
                return Err(invalid(name, &format!("compressor {} is not supported; this server supports zstd (and identity, as blobs/)", quote(other))))
            }
        },
        _ => return Err(invalid(name, "expected blobs/{hash}/{size}")),
    };
    let mut function = DigestFunction::Sha256;
    if let Some(first) = rest.first() {
        if first.len() != 64 {
            function = DigestFunction::from_name(first).ok_or_else(|| {
                invalid(name, &format!("unknown or unsupported digest function {} (sha256 and blake3 are)", quote(first)))
            })?;
            rest = &rest[1..];
        }
    }
    let (Some(hash), Some(size)) = (rest.first(), rest.get(1)) else {
        return Err(invalid(name, "expected {hash}/{size} after blobs/"));
    };
    let size: i64 = size.parse().map_err(|_| invalid(name, &format!("size {} is not a number", quote(size))))?;
    let digest = Digest::parse(function, hash, size).map_err(|e| invalid(name, &e.to_string()))?;
    Ok((digest, compressed, &rest[2..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn reads_with_and_without_instance_and_function() {
        let r = parse_read(&format!("blobs/{H}/0")).unwrap();
        assert_eq!((r.instance.as_str(), r.digest.function), ("", DigestFunction::Sha256));
        let r = parse_read(&format!("a/b/blobs/blake3/{H}/5")).unwrap();
        assert_eq!((r.instance.as_str(), r.digest.function, r.digest.size), ("a/b", DigestFunction::Blake3, 5));
    }

    #[test]
    fn writes_keep_uuid_and_ignore_metadata() {
        let w = parse_write(&format!("main/uploads/1234/blobs/{H}/7/some/metadata")).unwrap();
        assert_eq!((w.instance.as_str(), w.uuid.as_str(), w.digest.size), ("main", "1234", 7));
    }

    #[test]
    fn names_built_by_the_clients_parse_back() {
        use strata_backends::{compressed_resource_name, resource_name};
        for function in DigestFunction::ALL {
            let d = function.digest_of(b"round trip");
            let w = parse_write(&resource_name("a/b", Some("u1"), &d)).unwrap();
            assert_eq!((w.instance.as_str(), w.uuid.as_str(), w.digest), ("a/b", "u1", d));
            let r = parse_read(&resource_name("", None, &d)).unwrap();
            assert_eq!((r.instance.as_str(), r.digest, r.compressed), ("", d, false));
            let w = parse_write(&compressed_resource_name("x", Some("u2"), &d)).unwrap();
            assert_eq!((w.instance.as_str(), w.uuid.as_str(), w.digest, w.compressed), ("x", "u2", d, true));
            let r = parse_read(&compressed_resource_name("", None, &d)).unwrap();
            assert_eq!((r.digest, r.compressed), (d, true));
        }
    }

    #[test]
    fn malformed_names_are_rejected() {
        for bad in [
            String::new(),
            format!("blobs/{H}"),
            format!("blobs/{H}/-1"),
            format!("blobs/{H}/x"),
            format!("blobs/{}/1", &H[1..]),
            format!("blobs/sha1/{H}/1"),
            format!("blobs/{H}/1/extra"),
            format!("compressed-blobs/deflate/{H}/1"),
            format!("compressed-blobs/{H}/1"),
            format!("compressed-blobs/zstd/{H}"),
        ] {
            assert!(parse_read(&bad).is_err(), "{bad}");
        }
        assert!(parse_write(&format!("uploads/u/blobs/{H}")).is_err());
        assert!(parse_write(&format!("blobs/{H}/1")).is_err());
        assert!(parse_write(&format!("uploads/u/compressed-blobs/brotli/{H}/1")).is_err());
    }

    #[test]
    fn compressed_names_parse() {
        let r = parse_read(&format!("i/compressed-blobs/zstd/{H}/7")).unwrap();
        assert!(r.compressed && r.instance == "i" && r.digest.size == 7);
        let w = parse_write(&format!("uploads/u/compressed-blobs/zstd/blake3/{H}/7/meta")).unwrap();
        assert!(w.compressed && w.digest.function == DigestFunction::Blake3);
        assert!(!parse_read(&format!("blobs/{H}/7")).unwrap().compressed);
    }
}
