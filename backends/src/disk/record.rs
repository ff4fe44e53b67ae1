//! The on-disk record: a fixed header (magic, digest function, payload form, payload length, hash,
//! payload checksum, header checksum) followed by the payload. The form says whether the payload is
//! the blob itself or its chunked zstd form (`zstd_chunks`); records of earlier versions have 0 there
//! and are the blob itself. Segments are sequences of records padded to 8
//! bytes and followed by zeros; large blobs are files holding a single record.

use crate::digest::{DigestFunction, Key};

pub const HEADER_LEN: usize = 56;
pub const MAGIC: [u8; 4] = *b"STRB";

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
    pub fn new(key: Key, form: Form, payload: &[u8]) -> Self {
        Header { key, form, payload_len: payload.len() as u64, payload_crc: crc32fast::hash(payload) }
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut buf = [0u8; HEADER_LEN];
        buf[0..4].copy_from_slice(&MAGIC);
        buf[4] = self.key.function.tag();
        buf[5] = self.form.tag();
        buf[8..16].copy_from_slice(&self.payload_len.to_le_bytes());
        buf[16..48].copy_from_slice(&self.key.hash);
        buf[48..52].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&buf[..52]);
        buf[52..56].copy_from_slice(&crc.to_le_bytes());
        buf
    }

    /// Decodes a header; `None` for anything that is not an intact header (zeros, a torn write,
    /// flipped bits).
    pub fn decode(buf: &[u8]) -> Option<Header> {
        let buf = buf.get(..HEADER_LEN)?;
        if buf[0..4] != MAGIC || crc32fast::hash(&buf[..52]).to_le_bytes() != buf[52..56] {
            return None;
        }
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

/// The space a record with `payload_len` bytes takes in a segment, padding included.
pub fn record_len(payload_len: u64) -> u64 {
    (HEADER_LEN as u64 + payload_len).div_ceil(8) * 8
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trips_and_detects_damage() {
        let key = Key { function: DigestFunction::Blake3, hash: [7; 32] };
        let header = Header::new(key, Form::ZstdChunks, b"payload");
        let mut buf = header.encode();
        assert_eq!(Header::decode(&buf), Some(header));
        let identity = Header::new(key, Form::Identity, b"payload");
        assert_eq!(Header::decode(&identity.encode()).map(|h| h.form), Some(Form::Identity));
        assert!(header.check_payload(b"payload"));
        assert!(!header.check_payload(b"paylaod"));
        buf[20] ^= 1;
        assert_eq!(Header::decode(&buf), None);
        assert_eq!(Header::decode(&[0u8; HEADER_LEN]), None);
        assert_eq!(record_len(0), 56);
        assert_eq!(record_len(1), 64);
    }
}
