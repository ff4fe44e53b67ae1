//! The on-disk record: a fixed header (magic, digest function, payload form, payload length, hash,
//! payload checksum, header checksum) followed by the payload. The form says whether the payload is
//! the blob itself or its chunked zstd form (`zstd_chunks`); records of earlier versions have 0 there
//! and are the blob itself. Segments are sequences of records padded to 8
//! bytes; large blobs are files holding a single record.
//!
//! Segment files are reused once evicted, so a segment may still hold records of the file's earlier
//! lives past its last record, and a recovery scan may meet them right where the new records end.
//! Records written into segments therefore carry their own magic and a header checksum that also
//! covers the log's salt (random, kept in the log's directory) and the segment's id:
//! - a leftover record of another segment never checks out, and that is exact, not a matter of odds:
//!   the two checksums differ by the CRC of the ids' difference, a 4-byte field, which is never zero;
//! - a record forged inside a blob (a client chooses a blob's bytes) does not check out either: the
//!   client does not know the salt, so its guess at the checksum is right once in 2^32.
//!
//! Records of the first magic (large files, and segments written before files were reused) have
//! neither in their checksum. Only a segment that begins with one reads them, and no such file is
//! ever reused.

use crate::chunks::Chunks;
use crate::digest::{DigestFunction, Key};

pub const HEADER_LEN: usize = 56;
/// Records of large files, and of segments written before segment files were reused.
pub const MAGIC: [u8; 4] = *b"STRB";
/// Records of segments, their header checksum seeded with the log's salt and the segment's id.
pub const SEGMENT_MAGIC: [u8; 4] = *b"STRS";

/// What the header checksums of a segment's records cover besides the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seed {
    pub salt: u64,
    pub segment: u32,
    /// The segment began under the first magic (written before files were reused): its records of
    /// that magic are read too.
    pub legacy: bool,
}

/// A decoded record header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub key: Key,
    pub form: Form,
    pub payload_len: u64,
    pub payload_crc: u32,
}

/// What a record's payload holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Form {
    Identity,
    ZstdChunks,
}

impl Form {
    fn tag(self) -> u8 {
        match self {
            Form::Identity => 0,
            Form::ZstdChunks => 1,
        }
    }

    fn from_tag(tag: u8) -> Option<Form> {
        match tag {
            0 => Some(Form::Identity),
            1 => Some(Form::ZstdChunks),
            _ => None,
        }
    }
}

impl Header {
    pub fn new(key: Key, form: Form, payload: &Chunks) -> Self {
        Header { key, form, payload_len: payload.len() as u64, payload_crc: payload.crc32() }
    }

    /// The header of a large file's record.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        self.encode_with(MAGIC, None)
    }

    /// The header of a record in the segment of `seed`.
    pub fn encode_in_segment(&self, seed: Seed) -> [u8; HEADER_LEN] {
        self.encode_with(SEGMENT_MAGIC, Some(seed))
    }

    fn encode_with(&self, magic: [u8; 4], seed: Option<Seed>) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        buf[0..4].copy_from_slice(&magic);
        buf[4] = self.key.function.tag();
        buf[5] = self.form.tag();
        buf[8..16].copy_from_slice(&self.payload_len.to_le_bytes());
        buf[16..48].copy_from_slice(&self.key.hash);
        buf[48..52].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = header_crc(&buf, seed);
        buf[52..56].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes a large file's header; `None` for anything that is not an intact header (zeros, a
    /// torn write, flipped bits).
    pub fn decode(buf: &[u8]) -> Option<Header> {
        let buf = buf.get(..HEADER_LEN)?;
        if buf[0..4] != MAGIC || header_crc(buf, None).to_le_bytes() != buf[52..56] {
            return None;
        }
        Self::fields(buf)
    }

    /// Decodes the header of a record in the segment of `seed`: one written there, or, in a segment
    /// that began before files were reused, one of the first magic. A record left from the file's
    /// life as another segment, or forged inside a blob, is not intact here.
    pub fn decode_in_segment(buf: &[u8], seed: Seed) -> Option<Header> {
        let buf = buf.get(..HEADER_LEN)?;
        let seed = match buf[0..4].try_into() {
            Ok(SEGMENT_MAGIC) => Some(seed),
            Ok(MAGIC) if seed.legacy => None,
            _ => return None,
        };
        if header_crc(buf, seed).to_le_bytes() != buf[52..56] {
            return None;
        }
        Self::fields(buf)
    }

    fn fields(buf: &[u8]) -> Option<Header> {
        let function = DigestFunction::from_tag(buf[4])?;
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&buf[16..48]);
        Some(Header {
            key: Key { function, hash },
            form: Form::from_tag(buf[5])?,
            payload_len: u64::from_le_bytes(buf[8..16].try_into().ok()?),
            payload_crc: u32::from_le_bytes(buf[48..52].try_into().ok()?),
        })
    }

    /// Whether `payload` is the intact payload this header describes.
    pub fn check_payload(&self, payload: &[u8]) -> bool {
        payload.len() as u64 == self.payload_len && crc32fast::hash(payload) == self.payload_crc
    }
}

/// The checksum of a header's first 52 bytes, preceded by the salt and segment id where there are.
fn header_crc(buf: &[u8], seed: Option<Seed>) -> u32 {
    let mut crc = crc32fast::Hasher::new();
    if let Some(seed) = seed {
        crc.update(&seed.salt.to_le_bytes());
        crc.update(&seed.segment.to_le_bytes());
    }
    crc.update(&buf[..52]);
    crc.finalize()
}

/// The space a record with `payload_len` bytes takes in a segment, padding included.
pub fn record_len(payload_len: u64) -> u64 {
    (HEADER_LEN as u64 + payload_len).div_ceil(8) * 8
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload() -> Chunks {
        Chunks::from(bytes::Bytes::from_static(b"payload"))
    }

    #[test]
    fn header_round_trips_and_detects_damage() {
        let key = Key { function: DigestFunction::Blake3, hash: [7; 32] };
        let header = Header::new(key, Form::ZstdChunks, &payload());
        let mut buf = header.encode();
        assert_eq!(Header::decode(&buf), Some(header));
        let identity = Header::new(key, Form::Identity, &payload());
        assert_eq!(Header::decode(&identity.encode()).map(|h| h.form), Some(Form::Identity));
        assert!(header.check_payload(b"payload"));
        assert!(!header.check_payload(b"paylaod"));
        buf[20] ^= 1;
        assert_eq!(Header::decode(&buf), None);
        assert_eq!(Header::decode(&[0u8; HEADER_LEN]), None);
        assert_eq!(record_len(0), 56);
        assert_eq!(record_len(1), 64);
    }

    #[test]
    fn a_segment_record_checks_out_only_in_its_own_segment() {
        let key = Key { function: DigestFunction::Sha256, hash: [3; 32] };
        let header = Header::new(key, Form::Identity, &payload());
        let seed = |segment| Seed { salt: 0x5eed_5a17, segment, legacy: false };
        let ids = [0u32, 1, 2, 7, 255, 256, 65_535, 65_536, 1 << 24, u32::MAX - 1, u32::MAX];
        for id in ids {
            let buf = header.encode_in_segment(seed(id));
            assert_eq!(Header::decode_in_segment(&buf, seed(id)), Some(header));
            assert_eq!(Header::decode(&buf), None, "a segment record is not a large file's");
            for other in ids.iter().copied().filter(|&o| o != id) {
                assert_eq!(Header::decode_in_segment(&buf, seed(other)), None, "{id} read as {other}");
            }
        }
        // Every other id gives another checksum for the same bytes: a million of them.
        let buf = header.encode_in_segment(seed(12_345));
        let mut ids = (0u32..1_000_000).map(|i| i.wrapping_mul(2_654_435_761));
        assert!(ids.all(|id| id == 12_345 || Header::decode_in_segment(&buf, seed(id)).is_none()));
        // Another log's salt (or a client's guess at it) does not check out.
        assert_eq!(Header::decode_in_segment(&buf, Seed { salt: 1, ..seed(12_345) }), None);
        // Records of the first magic read only in a segment that began with one.
        let legacy = header.encode();
        assert_eq!(Header::decode_in_segment(&legacy, seed(9)), None);
        assert_eq!(Header::decode_in_segment(&legacy, Seed { legacy: true, ..seed(9) }), Some(header));
    }
}
