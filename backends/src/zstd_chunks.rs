//! The at-rest form of a compressed blob: its bytes cut into chunks of `CHUNK`, each compressed as
//! an independent zstd frame, followed by a table of where each frame ends and a trailer. Frames
//! placed one after another are themselves a valid zstd stream, so a compressed read is served from
//! the stored bytes as they are; a ranged identity read decompresses only the chunks it touches.
//!
//! ```text
//! frame 0 | frame 1 | ... | end of frame i, u64 LE, for each i | size u64 | chunk u32 | count u32 | "STRZSTD1"
//! ```

use bytes::Bytes;

/// Uncompressed bytes per frame: big enough that zstd's ratio is nearly that of one frame, small
/// enough that a ranged read decompresses little (bazel-remote uses the same).
pub const CHUNK: u64 = 1 << 20;
const MAGIC: [u8; 8] = *b"STRZSTD1";
const TRAILER_LEN: usize = 24;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Settings {
    pub level: i32,
    /// Blobs smaller than this are stored as they are (compression rarely pays for them).
    pub min_size: u64,
}

impl Settings {
    /// The measured default (see README, Compression): zstd's fastest level, 4 KiB and up.
    pub const DEFAULT: Settings = Settings { level: 1, min_size: 4 << 10 };
}

/// `data` in the chunked form, if that is smaller than `data` itself; `None` otherwise (or if
/// zstd cannot allocate), and the blob is then stored as it is.
pub fn compress(data: &[u8], level: i32) -> Option<Vec<u8>> {
    let count = (data.len() as u64).div_ceil(CHUNK) as usize;
    let mut out = Vec::with_capacity(data.len() / 2);
    let mut ends = Vec::with_capacity(count);
    for chunk in data.chunks(CHUNK as usize) {
        let frame = crate::zstd_stream::compress_frame(chunk, level).ok()?;
        out.extend_from_slice(&frame);
        ends.push(out.len() as u64);
        if out.len() + ends.len() * 8 + TRAILER_LEN >= data.len() {
            return None;
        }
    }
    for end in ends {
        out.extend_from_slice(&end.to_le_bytes());
    }
    out.extend_from_slice(&(data.len() as u64).to_le_bytes());
    out.extend_from_slice(&(CHUNK as u32).to_le_bytes());
    out.extend_from_slice(&(count as u32).to_le_bytes());
    out.extend_from_slice(&MAGIC);
    Some(out)
}

/// The blob size a chunked payload's trailer declares (unchecked), if it has the trailer.
pub fn size_in_trailer(payload: &[u8]) -> Option<u64> {
    let trailer = payload.get(payload.len().checked_sub(TRAILER_LEN)?..)?;
    (trailer[16..24] == MAGIC).then(|| u64::from_le_bytes(trailer[0..8].try_into().unwrap_or_default()))
}

/// A stored compressed blob, borrowing its (often memory-mapped) payload.
#[derive(Clone, Debug)]
pub struct Chunked {
    payload: Bytes,
    size: u64,
    chunk: u64,
    count: usize,
    table: usize,
}

impl Chunked {
    /// Reads the table and trailer; `None` for anything that is not an intact chunked payload.
    pub fn parse(payload: Bytes) -> Option<Chunked> {
        let trailer = payload.get(payload.len().checked_sub(TRAILER_LEN)?..)?;
        if trailer[16..24] != MAGIC {
            return None;
        }
        let size = u64::from_le_bytes(trailer[0..8].try_into().ok()?);
        let chunk = u64::from(u32::from_le_bytes(trailer[8..12].try_into().ok()?));
        let count = u32::from_le_bytes(trailer[12..16].try_into().ok()?) as usize;
        if chunk == 0 || size.div_ceil(chunk) != count as u64 {
            return None;
        }
        let table = payload.len().checked_sub(TRAILER_LEN + count.checked_mul(8)?)?;
        let parsed = Chunked { payload, size, chunk, count, table };
        // Frame ends must rise and stay inside the frames: a damaged table is refused here, not
        // sliced out of bounds later.
        let mut previous = 0;
        for i in 0..count {
            let end = parsed.end(i);
            if end < previous || end > table as u64 {
                return None;
            }
            previous = end;
        }
        (previous == table as u64).then_some(parsed)
    }

    /// The stored payload, as it is.
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The blob's uncompressed size.
    pub fn size(&self) -> u64 {
        self.size
    }

    fn end(&self, i: usize) -> u64 {
        let at = self.table + i * 8;
        u64::from_le_bytes(self.payload[at..at + 8].try_into().unwrap_or_default())
    }

    fn frame(&self, i: usize) -> Bytes {
        let start = if i == 0 { 0 } else { self.end(i - 1) };
        self.payload.slice(start as usize..self.end(i) as usize)
    }

    fn chunk_len(&self, i: usize) -> u64 {
        (self.size - i as u64 * self.chunk).min(self.chunk)
    }

    /// Chunk `i` decompressed; an error if its frame does not give exactly its bytes.
    pub fn chunk(&self, i: usize) -> Result<Bytes, String> {
        let expected = self.chunk_len(i) as usize;
        let data = crate::zstd_stream::decompress_frames(&self.frame(i), expected).map_err(|e| format!("chunk {i}: {e}"))?;
        match data.len() == expected {
            true => Ok(Bytes::from(data)),
            false => Err(format!("chunk {i} decompresses to {} bytes, not {expected}", data.len())),
        }
    }

    /// The whole blob decompressed.
    pub fn whole(&self) -> Result<Vec<u8>, String> {
        let mut out = Vec::with_capacity(self.size as usize);
        for i in 0..self.count {
            out.extend_from_slice(&self.chunk(i)?);
        }
        Ok(out)
    }

    /// The chunks overlapping `offset..end` (uncompressed), and the offset in the first of them.
    pub fn chunks_for(&self, offset: u64, end: u64) -> (std::ops::Range<usize>, u64) {
        let end = end.min(self.size);
        let first = (offset / self.chunk) as usize;
        let last = if end <= offset { first } else { end.div_ceil(self.chunk) as usize };
        (first..last.min(self.count), offset - first as u64 * self.chunk)
    }

    /// The stored frames from chunk `first` on, as they are: a zstd stream of the blob's bytes from
    /// `first * CHUNK`.
    pub fn frames_from(&self, first: usize) -> Bytes {
        let start = if first == 0 { 0 } else { self.end(first - 1) };
        self.payload.slice(start as usize..self.table)
    }

    /// Uncompressed bytes per chunk.
    pub fn chunk_size(&self) -> u64 {
        self.chunk
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| ((i * 7) % 251) as u8 ^ (i / 5000) as u8).collect()
    }

    #[test]
    fn round_trips_by_chunk_and_the_frames_are_one_zstd_stream() {
        let data = sample(3 * CHUNK as usize + 12_345);
        let packed = Chunked::parse(Bytes::from(compress(&data, 1).unwrap())).unwrap();
        assert_eq!(packed.size(), data.len() as u64);
        let whole: Vec<u8> = (0..4).flat_map(|i| packed.chunk(i).unwrap().to_vec()).collect();
        assert_eq!(whole, data);
        let stream = zstd::stream::decode_all(&packed.frames_from(0)[..]).unwrap();
        assert_eq!(stream, data);
        let tail = zstd::stream::decode_all(&packed.frames_from(2)[..]).unwrap();
        assert_eq!(tail, data[2 * CHUNK as usize..]);
        assert_eq!(packed.chunks_for(CHUNK - 1, CHUNK + 1), (0..2, CHUNK - 1));
        assert_eq!(packed.chunks_for(CHUNK, 2 * CHUNK), (1..2, 0));
        assert_eq!(packed.chunks_for(data.len() as u64, data.len() as u64), (3..3, 12_345));
    }

    #[test]
    fn incompressible_data_is_not_packed_and_damage_is_refused() {
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..100_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 32) as u8
            })
            .collect();
        assert!(compress(&noise, 1).is_none());
        let mut packed = compress(&sample(100_000), 1).unwrap();
        assert!(Chunked::parse(Bytes::from(packed[..packed.len() - 1].to_vec())).is_none());
        let table = packed.len() - TRAILER_LEN - 8;
        packed[table] ^= 0x40;
        assert!(Chunked::parse(Bytes::from(packed.clone())).is_none());
        packed[table] ^= 0x40;
        packed[10] ^= 0xff;
        let damaged = Chunked::parse(Bytes::from(packed)).unwrap();
        assert!(damaged.chunk(0).is_err() || damaged.chunk(0).unwrap() != sample(100_000));
    }
}
