//! ByteStream Read and Write of CAS blobs, and QueryWriteStatus.
//!
//! Writes stream into the storage as they arrive (large blobs are never held whole in memory) and are
//! hashed on the way; only a blob whose size and hash match its resource name is committed. An upload
//! interrupted before `finish_write` is parked (`crate::uploads`, bounded in time, count and bytes),
//! so the client can ask QueryWriteStatus and continue from the committed size. A blob that is already stored is
//! acknowledged at once with its full size.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use strata_backends::bytestream::byte_stream_server::ByteStream;
use strata_backends::bytestream::{
    QueryWriteStatusRequest, QueryWriteStatusResponse, ReadRequest, ReadResponse, WriteRequest, WriteResponse,
};
use strata_backends::{Blob, BlobWriter, Digest, StoreError, VerifyingWriter};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::Access;
use crate::instances::Instances;
use crate::quote::quote;
use crate::protocol::compression::{CompressionError, Compressor, Decompressor};
use crate::protocol::resource::{parse_read, parse_write};
use crate::status;
use crate::uploads::{Parking, ParkingLimits};

/// Bytes per ReadResponse: well under every client's default 4 MiB message limit.
const READ_CHUNK: usize = 1 << 20;

pub struct ByteStreamService {
    pub instances: Arc<Instances>,
    uploads: Parking<Upload>,
}

/// An upload in progress: what has been received so far, hashed and handed to the storage.
struct Upload {
    digest: Digest,
    writer: VerifyingWriter,
}

/// How one Write call's bytes travel: as they are, or as a zstd stream starting at `base`.
struct Wire {
    decoder: Option<Decompressor>,
    base: u64,
    /// Compressed bytes received in this call.
    sent: u64,
}

/// One WriteRequest, its data as the pieces it arrived in.
pub struct WriteMessage {
    pub resource_name: String,
    pub write_offset: i64,
    pub finish_write: bool,
    pub data: Vec<Bytes>,
}

/// Where a Write call's messages come from.
pub trait WriteMessages: Send {
    fn next(&mut self) -> impl Future<Output = Result<Option<WriteMessage>, Status>> + Send;
}

impl WriteMessages for Streaming<WriteRequest> {
    async fn next(&mut self) -> Result<Option<WriteMessage>, Status> {
        let message = self.message().await?;
        Ok(message.map(|m| WriteMessage { resource_name: m.resource_name, write_offset: m.write_offset, finish_write: m.finish_write, data: vec![m.data] }))
    }
}

pub(super) type ReadStream = Pin<Box<dyn Stream<Item = Result<ReadResponse, Status>> + Send>>;

impl ByteStreamService {
    pub fn new(instances: Arc<Instances>, limits: ParkingLimits) -> Self {
        ByteStreamService { instances, uploads: Parking::new(limits) }
    }

    fn park(&self, name: String, upload: Upload) {
        let bytes = upload.writer.received();
        self.uploads.park(name, upload, bytes);
    }

    /// A Write call: its messages, from tonic's decoder or from the Write route's own
    /// (`bytestream_write`), received into the storage.
    pub async fn write_messages(&self, request: Request<impl WriteMessages>) -> Result<WriteResponse, Status> {
        let access = Access::of(&request)?.clone();
        let mut messages = request.into_inner();
        let first = messages.next().await?.ok_or_else(|| Status::invalid_argument("Write stream ended before its first message"))?;
        let name = first.resource_name.clone();
        let resource = parse_write(&name)?;
        let cas = self.instances.cas(&access, &resource.instance)?;
        let digest = resource.digest;
        // Only a shortcut: if the check itself fails (an upstream is down), the upload goes ahead.
        // A compressed upload that finds the blob stored ends with -1, as REAPI asks.
        if cas.contains(&[digest]).await.is_ok_and(|present| present.first() == Some(&true)) {
            let committed_size = if resource.compressed { -1 } else { digest.size as i64 };
            return Ok(WriteResponse { committed_size });
        }
        let upload = match self.uploads.take(&name) {
            Some(upload) => upload,
            None if first.write_offset == 0 => Upload { digest, writer: cas.writer(&digest).await.map_err(status::from_store)? },
            None => {
                return Err(Status::invalid_argument(format!(
                    "write_offset {}: there is no interrupted upload named {} to resume; start at 0",
                    first.write_offset,
                    quote(&name)
                )))
            }
        };
        let base = upload.writer.received();
        let decoder = match resource.compressed {
            true => Some(Decompressor::new(digest.size - base).map_err(|e| Status::internal(e.to_string()))?),
            false => None,
        };
        if resource.compressed {
            tracing::debug!(%digest, base, "compressed write");
        }
        let mut wire = Wire { decoder, base, sent: 0 };
        match self.receive(&name, upload, &mut wire, first, &mut messages).await {
            // Compressed: the bytes this call processed, the resumption point plus what was sent.
            Ok(None) if resource.compressed => Ok(WriteResponse { committed_size: (wire.base + wire.sent) as i64 }),
            Ok(None) => Ok(WriteResponse { committed_size: digest.size as i64 }),
            Ok(Some(unfinished)) => {
                let committed = unfinished.writer.received() as i64;
                self.park(name, unfinished);
                Ok(WriteResponse { committed_size: committed })
            }
            Err((unfinished, status)) => {
                if let Some(upload) = unfinished {
                    self.park(name, upload);
                }
                Err(status)
            }
        }
    }

    /// Receives the messages of one Write call into `upload`. Returns the upload unfinished when the
    /// client stopped before `finish_write`, or `None` once the blob is committed.
    async fn receive(
        &self,
        name: &str,
        mut upload: Upload,
        wire: &mut Wire,
        first: WriteMessage,
        messages: &mut impl WriteMessages,
    ) -> Result<Option<Upload>, (Option<Upload>, Status)> {
        let mut next = Some(first);
        loop {
            let msg = match next.take() {
                Some(msg) => msg,
                None => match messages.next().await {
                    Ok(Some(msg)) => msg,
                    Ok(None) => return Ok(Some(upload)),
                    Err(e) => return Err((Some(upload), e)),
                },
            };
            if !msg.resource_name.is_empty() && msg.resource_name != name {
                return Err((None, Status::invalid_argument(format!(
                    "resource_name changed within one Write call, from {} to {}",
                    quote(name),
                    quote(&msg.resource_name)
                ))));
            }
            let committed = upload.writer.received();
            // Identity: offsets count the blob's bytes. Compressed: the first is where the blob
            // resumes (uncompressed) and later ones add the compressed bytes sent since.
            let expected = match &wire.decoder {
                Some(_) => wire.base + wire.sent,
                None => committed,
            };
            if msg.write_offset != expected as i64 {
                return Err((None, Status::invalid_argument(format!(
                    "write_offset {} does not follow the {expected} bytes committed so far",
                    msg.write_offset
                ))));
            }
            for piece in msg.data {
                let data = match wire.decoder.as_mut() {
                    Some(decoder) => {
                        wire.sent += piece.len() as u64;
                        let plain = decoder.feed(&piece).map_err(|e| (None, Status::invalid_argument(format!("blob {}: {e}", upload.digest))))?;
                        Bytes::from(plain)
                    }
                    None => piece,
                };
                let received = upload.writer.received() + data.len() as u64;
                if received > upload.digest.size {
                    return Err((None, Status::invalid_argument(format!(
                        "blob {}: received {received} bytes or more, but the resource name declares {}",
                        upload.digest, upload.digest.size
                    ))));
                }
                if !data.is_empty() {
                    upload.writer.append(data).await.map_err(|e| (None, status::from_store(e)))?;
                }
            }
            if msg.finish_write {
                Box::new(upload.writer).commit().await.map_err(|e| (None, status::from_store(e)))?;
                return Ok(None);
            }
        }
    }
}

/// A blob's bytes (as they are, or zstd frames as stored) in messages of at most READ_CHUNK.
fn in_messages(blob: Blob) -> ReadStream {
    match blob {
        Blob::Bytes(data) if data.is_empty() => Box::pin(futures::stream::once(async { Ok(ReadResponse::default()) })),
        blob => Box::pin(read_pieces(blob).map(|piece| piece.map(|data| ReadResponse { data }).map_err(status::from_store))),
    }
}

/// A blob's chunks cut into pieces of at most READ_CHUNK.
fn read_pieces(blob: Blob) -> impl futures::Stream<Item = Result<Bytes, StoreError>> {
    blob.into_stream().flat_map(|chunk| {
        let pieces: Vec<Result<Bytes, _>> = match chunk {
            Ok(data) => (0..data.len().div_ceil(READ_CHUNK)).map(|i| Ok(data.slice(i * READ_CHUNK..((i + 1) * READ_CHUNK).min(data.len())))).collect(),
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(pieces)
    })
}

/// A blob (from its read offset on) as one zstd frame, compressed a piece at a time: at most
/// READ_CHUNK of input per step keeps every message small and the CPU work in short slices.
fn compressed(blob: Blob) -> ReadStream {
    let pieces = read_pieces(blob);
    let internal = |e: CompressionError| Status::internal(format!("compressing the read: {e}"));
    let state = (Box::pin(pieces), Some(Compressor::new()));
    Box::pin(futures::stream::unfold(state, move |(mut pieces, mut compressor)| async move {
        loop {
            let c = match compressor.as_mut()? {
                Ok(c) => c,
                Err(_) => {
                    let e = compressor.take()?.err()?;
                    return Some((Err(internal(e)), (pieces, None)));
                }
            };
            let (out, more) = match pieces.next().await {
                Some(Ok(data)) => (c.feed(&data), true),
                Some(Err(e)) => return Some((Err(status::from_store(e)), (pieces, None))),
                None => (c.finish(), false),
            };
            match out {
                Ok(out) if more && out.is_empty() => continue,
                Ok(data) => return Some((Ok(ReadResponse { data: Bytes::from(data) }), (pieces, if more { compressor } else { None }))),
                Err(e) => return Some((Err(internal(e)), (pieces, None))),
            }
        }
    }))
}

#[tonic::async_trait]
impl ByteStream for ByteStreamService {
    type ReadStream = ReadStream;

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadStream>, Status> {
        let access = Access::of(&request)?.clone();
        let req = request.into_inner();
        let resource = parse_read(&req.resource_name)?;
        let cas = self.instances.cas(&access, &resource.instance)?;
        let digest = resource.digest;
        // The ByteStream contract: an offset outside the blob (negative or past its end) is
        // OUT_OF_RANGE; a negative limit is a malformed request.
        if req.read_offset < 0 {
            return Err(Status::out_of_range(format!("read_offset {} is negative", req.read_offset)));
        }
        if req.read_limit < 0 {
            return Err(Status::invalid_argument(format!("read_limit {} must not be negative", req.read_limit)));
        }
        let offset = req.read_offset as u64;
        if offset > digest.size {
            return Err(Status::out_of_range(format!(
                "read_offset {offset} is past the end of blob {digest} ({} bytes)",
                digest.size
            )));
        }
        if resource.compressed && req.read_limit != 0 {
            return Err(Status::invalid_argument(format!(
                "read_limit {} on a compressed read: REAPI allows none (the compressed size is not known ahead)",
                req.read_limit
            )));
        }
        let limit = (req.read_limit > 0).then_some(req.read_limit as u64);
        // A blob stored compressed is served as stored; any other is compressed as it streams.
        let stored_zstd = match resource.compressed {
            true => cas.read_zstd(&digest, offset).await.map_err(status::from_store)?,
            false => None,
        };
        let stored_zstd_hit = stored_zstd.is_some();
        let found = match stored_zstd {
            Some(frames) => Some(frames),
            None => cas.read(&digest, offset, limit).await.map_err(status::from_store)?,
        };
        let hit = found.is_some();
        self.instances.metrics.looked_up(&resource.instance, "cas", "read", u64::from(hit), u64::from(!hit));
        let blob = found.ok_or_else(|| Status::not_found(format!("blob {digest} not found")))?;
        if resource.compressed {
            tracing::debug!(%digest, offset, as_stored = stored_zstd_hit, "compressed read");
        }
        let stream: ReadStream = match blob {
            blob if resource.compressed && !stored_zstd_hit => compressed(blob),
            blob => in_messages(blob),
        };
        Ok(Response::new(stream))
    }

    async fn write(&self, request: Request<Streaming<WriteRequest>>) -> Result<Response<WriteResponse>, Status> {
        self.write_messages(request).await.map(Response::new)
    }

    async fn query_write_status(
        &self,
        request: Request<QueryWriteStatusRequest>,
    ) -> Result<Response<QueryWriteStatusResponse>, Status> {
        let access = Access::of(&request)?.clone();
        let name = request.into_inner().resource_name;
        let resource = parse_write(&name)?;
        let cas = self.instances.cas(&access, &resource.instance)?;
        let digest = resource.digest;
        if cas.contains(&[digest]).await.map_err(status::from_store)?.first() == Some(&true) {
            return Ok(Response::new(QueryWriteStatusResponse { committed_size: digest.size as i64, complete: true }));
        }
        match self.uploads.committed(&name) {
            Some(committed) => Ok(Response::new(QueryWriteStatusResponse { committed_size: committed as i64, complete: false })),
            None => Err(Status::not_found(format!("no upload named {} is in progress or stored", quote(&name)))),
        }
    }
}
