//! A value as its record holds it: the blob itself, or its chunked zstd form. Identity reads of a
//! compressed value decompress only the chunks they touch; compressed reads hand out the stored
//! frames without recompressing.

use bytes::Bytes;
use futures::StreamExt;

use super::record::Form;
use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::offload::blocking;
use crate::store::{slice_range, Blob};
use crate::zstd_chunks::{self, Chunked, Settings};

/// Chunks decompressed ahead of the one being sent: one per core here, and 2 MiB held at most.
const READ_AHEAD: usize = 2;

#[derive(Clone)]
pub enum Stored {
    Identity(Bytes),
    Zstd(Chunked),
}

impl Stored {
    /// `None` when a payload whose checksum holds is still no valid chunked form (never written so).
    pub fn new(form: Form, payload: Bytes) -> Option<Stored> {
        match form {
            Form::Identity => Some(Stored::Identity(payload)),
            Form::ZstdChunks => Chunked::parse(payload).map(Stored::Zstd),
        }
    }

    /// Packs `data` for a record: compressed where the settings ask and that makes it smaller.
    pub fn pack(data: Bytes, settings: Option<Settings>) -> (Form, Bytes) {
        match settings.filter(|s| data.len() as u64 >= s.min_size).and_then(|s| zstd_chunks::compress(&data, s.level)) {
            Some(packed) => (Form::ZstdChunks, Bytes::from(packed)),
            None => (Form::Identity, data),
        }
    }

    /// The blob's (uncompressed) size.
    pub fn size(&self) -> u64 {
        match self {
            Stored::Identity(data) => data.len() as u64,
            Stored::Zstd(chunked) => chunked.size(),
        }
    }

    /// The form and payload to write again (copy-forward), as they are.
    pub fn record(&self) -> (Form, Bytes) {
        match self {
            Stored::Identity(data) => (Form::Identity, data.clone()),
            Stored::Zstd(chunked) => (Form::ZstdChunks, chunked.payload().clone()),
        }
    }

    /// The blob's bytes in `offset..offset + limit`. One chunk or less decompresses at once; more
    /// stream a chunk at a time, so a large read never holds the whole blob decompressed. Streamed
    /// chunks decompress off the runtime, the next one while the last is sent.
    pub fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Blob> {
        let chunked = match self {
            Stored::Identity(data) => return Ok(Blob::Bytes(slice_range(data, offset, limit))),
            Stored::Zstd(chunked) => chunked.clone(),
        };
        let end = limit.map_or(u64::MAX, |l| offset.saturating_add(l)).min(chunked.size());
        let (chunks, _) = chunked.chunks_for(offset, end);
        let chunk_size = chunked.chunk_size();
        let digest = *digest;
        let piece = move |i: usize| -> Result<Bytes> {
            let data = chunked.chunk(i).map_err(|e| corrupt(&digest, e))?;
            let base = i as u64 * chunk_size;
            let from = offset.max(base) - base;
            let to = (end - base).min(data.len() as u64);
            Ok(data.slice(from as usize..to.max(from) as usize))
        };
        if chunks.len() <= 1 {
            return match chunks.start < chunks.end {
                true => piece(chunks.start).map(Blob::Bytes),
                false => Ok(Blob::Bytes(Bytes::new())),
            };
        }
        let decompress = move |i: usize| {
            let piece = piece.clone();
            async move {
                blocking("decompressing a stored blob", move || piece(i)).await
            }
        };
        Ok(Blob::Stream(futures::stream::iter(chunks).map(decompress).buffered(READ_AHEAD).boxed()))
    }

    /// The blob from `offset` on as a zstd stream, from the stored frames where `offset` falls on a
    /// chunk boundary; otherwise the first chunk's tail is compressed anew. `None` for an identity
    /// value (the caller compresses).
    pub fn zstd_from(&self, digest: &Digest, offset: u64, level: i32) -> Result<Option<Blob>> {
        let Stored::Zstd(chunked) = self else { return Ok(None) };
        let (chunks, skip) = chunked.chunks_for(offset, chunked.size());
        let compress = |data: &[u8]| crate::zstd_stream::compress_frame(data, level).map_err(|e| corrupt(digest, e.to_string()));
        if chunks.is_empty() {
            // Nothing left to read is still a valid (empty) zstd frame.
            return Ok(Some(Blob::Bytes(Bytes::from(compress(&[])?))));
        }
        if skip == 0 {
            return Ok(Some(Blob::Bytes(chunked.frames_from(chunks.start))));
        }
        let head = chunked.chunk(chunks.start).map_err(|e| corrupt(digest, e))?;
        let head = compress(&head[skip as usize..])?;
        let rest = chunked.frames_from(chunks.start + 1);
        Ok(Some(Blob::Stream(futures::stream::iter([Ok(Bytes::from(head)), Ok(rest)]).boxed())))
    }
}

fn corrupt(digest: &Digest, why: String) -> StoreError {
    StoreError::Corrupt { digest: *digest, tier: "disk".into(), reason: format!("compressed record: {why}") }
}
