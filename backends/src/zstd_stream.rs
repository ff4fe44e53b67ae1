//! zstd on the wire, as REAPI defines it: blobs travel compressed (`compressed-blobs/zstd/...`,
//! batch `compressor: ZSTD`) but are named, checked and stored by their uncompressed digest. Both
//! directions stream: a compressed upload is decompressed as it arrives, with its output bounded by
//! the digest's size, so a small frame that expands without end (a zstd bomb) is stopped there.
//! Whole-buffer work (batch blobs, the chunks stored at rest) goes through one compression and one
//! decompression context per thread: making a context costs more than a 4 KiB blob's compression.

use std::cell::RefCell;

use zstd::stream::raw::{Decoder, Encoder, InBuffer, Operation, OutBuffer};

thread_local! {
    static COMPRESSOR: RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> = const { RefCell::new(None) };
}

/// `data` as one zstd frame at `level`, with this thread's context.
pub fn compress_frame(data: &[u8], level: i32) -> std::io::Result<Vec<u8>> {
    COMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let context = match cell.as_mut() {
            Some((at, context)) if *at == level => context,
            _ => &mut cell.insert((level, zstd::bulk::Compressor::new(level)?)).1,
        };
        context.compress(data)
    })
}

/// The bytes of one or more zstd frames, `capacity` of them at most (more is an error).
pub fn decompress_frames(frames: &[u8], capacity: usize) -> std::io::Result<Vec<u8>> {
    DECOMPRESSOR.with(|cell| {
        let mut cell = cell.borrow_mut();
        let context = match cell.as_mut() {
            Some(context) => context,
            None => cell.insert(zstd::bulk::Decompressor::new()?),
        };
        context.decompress(frames, capacity)
    })
}

/// The level compressed reads are made with: zstd's fastest, as bazel-remote and Buildbarn use.
pub const LEVEL: i32 = 1;
/// Output produced per step.
const STEP: usize = 128 << 10;

#[derive(Debug, thiserror::Error)]
pub enum CompressionError {
    #[error("the zstd data is not valid: {0}")]
    Corrupt(String),
    #[error("the zstd data decompresses to more than the {limit} bytes its digest declares")]
    TooLong { limit: u64 },
}

/// Decompresses an upload piece by piece, never past `limit` bytes of output.
pub struct Decompressor {
    decoder: Decoder<'static>,
    limit: u64,
    produced: u64,
}

impl Decompressor {
    pub fn new(limit: u64) -> Result<Decompressor, CompressionError> {
        let decoder = Decoder::new().map_err(|e| CompressionError::Corrupt(e.to_string()))?;
        Ok(Decompressor { decoder, limit, produced: 0 })
    }

    /// The decompressed bytes this input gives (a frame may span several inputs).
    pub fn feed(&mut self, input: &[u8]) -> Result<Vec<u8>, CompressionError> {
        let mut out = Vec::new();
        let mut input = InBuffer::around(input);
        let mut step = vec![0u8; STEP];
        loop {
            let mut output = OutBuffer::around(&mut step[..]);
            self.decoder.run(&mut input, &mut output).map_err(|e| CompressionError::Corrupt(e.to_string()))?;
            let written = output.pos();
            self.produced += written as u64;
            if self.produced > self.limit {
                return Err(CompressionError::TooLong { limit: self.limit });
            }
            out.extend_from_slice(&step[..written]);
            // Done when the input is used up and the decoder had nothing more to give.
            if input.pos() == input.src.len() && written < STEP {
                return Ok(out);
            }
        }
    }
}

/// Decompresses a whole (batch) blob of at most `limit` bytes. Batch blobs are small enough to be
/// decompressed in one call; if that fails, the streaming decoder says why.
pub fn decompress(data: &[u8], limit: u64) -> Result<Vec<u8>, CompressionError> {
    if limit <= BULK_LIMIT {
        if let Ok(out) = decompress_frames(data, limit as usize) {
            return Ok(out);
        }
    }
    Decompressor::new(limit)?.feed(data)
}

/// Blobs up to this size are decompressed in one call (which sets aside `limit` bytes first).
const BULK_LIMIT: u64 = 16 << 20;

/// Compresses a whole (batch) blob; `None` if zstd could not (it cannot allocate), and the blob
/// then goes as it is.
pub fn compress(data: &[u8]) -> Option<Vec<u8>> {
    compress_frame(data, LEVEL).ok()
}

/// Compresses a read piece by piece into one zstd frame. A failure (zstd could not allocate) is an
/// error, never a silently truncated frame.
pub struct Compressor {
    encoder: Encoder<'static>,
}

fn failed(e: std::io::Error) -> CompressionError {
    CompressionError::Corrupt(format!("zstd compression failed: {e}"))
}

impl Compressor {
    pub fn new() -> Result<Compressor, CompressionError> {
        Ok(Compressor { encoder: Encoder::new(LEVEL).map_err(failed)? })
    }

    /// Compressed bytes for this input (possibly none yet: zstd buffers).
    pub fn feed(&mut self, data: &[u8]) -> Result<Vec<u8>, CompressionError> {
        let mut out = Vec::new();
        let mut input = InBuffer::around(data);
        let mut step = vec![0u8; STEP];
        while input.pos() < input.src.len() {
            let mut output = OutBuffer::around(&mut step[..]);
            self.encoder.run(&mut input, &mut output).map_err(failed)?;
            let written = output.pos();
            out.extend_from_slice(&step[..written]);
        }
        Ok(out)
    }

    /// The rest of the frame.
    pub fn finish(&mut self) -> Result<Vec<u8>, CompressionError> {
        let mut out = Vec::new();
        let mut step = vec![0u8; STEP];
        loop {
            let mut output = OutBuffer::around(&mut step[..]);
            let remaining = self.encoder.finish(&mut output, true).map_err(failed)?;
            let written = output.pos();
            out.extend_from_slice(&step[..written]);
            if remaining == 0 {
                return Ok(out);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i % 251) as u8 ^ (i / 4096) as u8).collect()
    }

    #[test]
    fn streams_round_trip_in_any_pieces() {
        let data = sample(1 << 20);
        let mut c = Compressor::new().unwrap();
        let mut frame = Vec::new();
        for piece in data.chunks(100_000) {
            frame.extend(c.feed(piece).unwrap());
        }
        frame.extend(c.finish().unwrap());
        assert!(frame.len() < data.len() / 2);
        let mut d = Decompressor::new(data.len() as u64).unwrap();
        let mut back = Vec::new();
        for piece in frame.chunks(7_777) {
            back.extend(d.feed(piece).unwrap());
        }
        assert_eq!(back, data);
        assert_eq!(decompress(&compress(&data).unwrap(), data.len() as u64).unwrap(), data);
        assert_eq!(decompress(&compress(b"").unwrap(), 0).unwrap(), b"");
    }

    #[test]
    fn bombs_stop_at_the_declared_size_and_garbage_is_refused() {
        let zeros = vec![0u8; 64 << 20];
        let bomb = compress(&zeros).unwrap();
        assert!(bomb.len() < 64 << 10, "{} bytes", bomb.len());
        assert!(matches!(decompress(&bomb, 1000), Err(CompressionError::TooLong { limit: 1000 })));
        let mut d = Decompressor::new(1 << 20).unwrap();
        let outcome = bomb.chunks(1000).try_for_each(|piece| d.feed(piece).map(|_| ()));
        assert!(matches!(outcome, Err(CompressionError::TooLong { .. })));
        assert!(matches!(decompress(b"not zstd at all", 100), Err(CompressionError::Corrupt(_))));
    }
}
