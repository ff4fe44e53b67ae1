//! Blobs too large for a segment record live in files of their own under `large/`, one record each
//! (the same header as in segments), under the same byte budget and eviction order as the segments.
//! They are streamed to a temporary file and renamed into place on commit, so a crash or an abandoned
//! upload leaves at most a temporary file that start-up removes.
//!
//! After the payload comes a table of CRC32s, one per `CHUNK` of payload, and a footer (magic and
//! chunk size), so that a ranged read checks only the chunks it touches: a 1-byte read of a 4 GiB
//! blob must not checksum 4 GiB. Files without the table (written by earlier versions) are checked
//! whole, against the header's checksum.
//!
//! Also here, the log's side of its large blobs: their entries, their share of the budget (reserved
//! piece by piece as an upload arrives), their renewal and eviction.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use memmap2::Mmap;

use super::record::{Form, Header, HEADER_LEN};
use super::stored::Stored;
use super::{DiskLog, Found};
use crate::chunks::Chunks;
use crate::digest::{Digest, DigestFunction, Key};
use crate::error::{Result, StoreError};
use crate::offload::{blocking, remove_soon, soon, touch_soon};
use crate::store::BlobWriter;

/// A large blob known to the log: its size, the segment id that was open when it was last written or
/// used (its place among the segments in the eviction order) and when that was (its place among the
/// other large blobs, which often share a segment id).
#[derive(Clone, Copy, Debug)]
pub struct LargeEntry {
    pub size: u64,
    pub seq: u32,
    pub used: SystemTime,
}

pub fn large_path(dir: &Path, key: &Key) -> PathBuf {
    dir.join(format!("{}-{}", key.function.name(), hex::encode(key.hash)))
}

pub fn parse_large_name(name: &str) -> Option<Key> {
    let (function, hash_hex) = name.split_once('-')?;
    let mut hash = [0u8; 32];
    hex::decode_to_slice(hash_hex, &mut hash).ok()?;
    Some(Key { function: DigestFunction::from_name(function)?, hash })
}

pub fn is_temporary(name: &str) -> bool {
    name.starts_with("tmp-")
}

/// Payload bytes per checksum of the chunk table.
pub const CHUNK: u64 = 1 << 20;
const FOOTER_MAGIC: [u8; 8] = *b"STRBCHK1";
const FOOTER_LEN: usize = 16;

/// A large file, mapped: its payload and, where the file has one, its chunk table.
pub struct LargeFile {
    pub payload: Bytes,
    /// `CHUNK`'s checksums, one per chunk of the payload, in little-endian u32s.
    pub table: Option<Bytes>,
    header: Header,
}

/// Opens and maps the large file of `key`, without checking its payload; `None` if it is missing, or
/// its header is damaged or names another key. Blocks: call it off the runtime.
pub fn open_large(dir: &Path, key: &Key) -> Option<LargeFile> {
    let file = File::open(large_path(dir, key)).ok()?;
    // SAFETY: large files are written once to a temporary name and never modified after the rename.
    let map = unsafe { Mmap::map(&file) }.ok()?;
    let header = Header::decode(&map).filter(|h| h.key == *key)?;
    let len = usize::try_from(header.payload_len).ok()?;
    map.get(HEADER_LEN..HEADER_LEN.checked_add(len)?)?;
    let table = chunk_table(&map, len);
    let map = Bytes::from_owner(map);
    let table = table.map(|at| map.slice(at));
    Some(LargeFile { payload: map.slice(HEADER_LEN..HEADER_LEN + len), table, header })
}

/// Reads a large blob whose bytes in `range` (of the payload) are intact; `None` if it is missing or
/// damaged there. The whole payload comes back (zero-copy), for the caller to slice.
pub fn read_large(dir: &Path, key: &Key, range: Range<u64>) -> Option<Bytes> {
    let file = open_large(dir, key)?;
    let intact = match &file.table {
        Some(table) => chunks_intact(&file.payload, table, range),
        None => file.header.check_payload(&file.payload),
    };
    intact.then_some(file.payload)
}

/// Where the chunk table after a payload of `len` bytes lies in the file, if it has one.
fn chunk_table(map: &[u8], len: usize) -> Option<Range<usize>> {
    let footer = map.get(map.len().checked_sub(FOOTER_LEN)?..)?;
    if footer[..8] != FOOTER_MAGIC || u64::from_le_bytes(footer[8..16].try_into().ok()?) != CHUNK {
        return None;
    }
    let entries = (len as u64).div_ceil(CHUNK) as usize;
    let start = HEADER_LEN + len;
    let table = start..start + entries * 4;
    (table.end + FOOTER_LEN == map.len()).then_some(table)
}

/// Whether every chunk of `payload` that overlaps `range` matches its checksum (an empty range
/// reads nothing and needs no check).
fn chunks_intact(payload: &[u8], table: &[u8], range: Range<u64>) -> bool {
    let len = payload.len() as u64;
    let end = range.end.min(len);
    if range.start >= end {
        return true;
    }
    (range.start / CHUNK..end.div_ceil(CHUNK)).all(|i| chunk_intact(payload, table, i as usize))
}

/// Whether chunk `i` of `payload` matches its checksum in `table`.
pub fn chunk_intact(payload: &[u8], table: &[u8], i: usize) -> bool {
    let chunk = CHUNK as usize;
    let bytes = &payload[i * chunk..((i + 1) * chunk).min(payload.len())];
    let expected = table.get(i * 4..i * 4 + 4).and_then(|b| <[u8; 4]>::try_from(b).ok());
    expected.map(u32::from_le_bytes) == Some(crc32fast::hash(bytes))
}

/// Reads only the header of a large file (start-up: trust the checksum later, at read time).
pub fn read_large_header(path: &Path) -> Option<Header> {
    let file = File::open(path).ok()?;
    let mut buf = [0u8; HEADER_LEN];
    file.read_exact_at(&mut buf, 0).ok()?;
    Header::decode(&buf)
}

/// The log's side of its large blobs: their entries, their share of the budget, and reading them.
impl DiskLog {
    pub(super) async fn lookup_large(&self, key: &Key, entry: LargeEntry, range: std::ops::Range<u64>) -> Option<(Stored, Found)> {
        let (dir, key) = (self.large_dir().to_path_buf(), *key);
        match blocking("reading a large blob", move || Ok(read_large(&dir, &key, range))).await {
            Ok(Some(data)) => Some((Stored::Identity(data), Found::Large(entry))),
            Ok(None) => {
                self.forget_large(&key, "missing or damaged");
                None
            }
            // A panic while reading is not evidence that the blob is damaged: its entry stays.
            Err(e) => {
                tracing::warn!("{e}");
                None
            }
        }
    }

    pub(super) fn forget_large(&self, key: &Key, why: &str) {
        let mut st = self.inner.state.write();
        if let Some(entry) = st.large.remove(key) {
            st.large_bytes -= entry.size;
            tracing::warn!(key = %hex::encode(key.hash), "large blob {why}; dropped");
        }
    }

    /// Moves a large blob to the new end of the eviction order: its entry and its file's time, which
    /// is what a restart orders large blobs by. Its bytes stay where they are, so nothing is read.
    pub(super) fn renew_large(&self, key: &Key) {
        let now = std::time::SystemTime::now();
        {
            // The newest segment is the open one (a roll adds it before it opens it): read here, not
            // from the writer, which may hold its lock through a segment's sync.
            let mut st = self.inner.state.write();
            let open = st.segments.keys().next_back().copied().unwrap_or(0);
            if let Some(entry) = st.large.get_mut(key) {
                entry.seq = open;
                entry.used = now;
            }
        }
        // A failure is logged.
        touch_soon(large_path(self.large_dir(), key), now);
    }

    pub(super) fn evict_large(&self, key: &Key) {
        let mut st = self.inner.state.write();
        if let Some(entry) = st.large.remove(key) {
            st.large_bytes -= entry.size;
            self.inner.counters.evictions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        remove_soon(large_path(self.large_dir(), key));
    }

    /// Starts writing a large blob. Budget is reserved as its bytes arrive, never for the size an
    /// upload declares: a client that declares a huge blob and sends nothing evicts nothing.
    pub(super) async fn large_writer(&self, digest: &Digest) -> Result<LargeWriter> {
        let limit = self.inner.cfg.max_size - self.inner.cfg.segment_size;
        if digest.size > limit {
            return Err(StoreError::TooLarge { digest: *digest, store: format!("disk tier at {}", self.inner.cfg.path.display()), limit });
        }
        let (log, key) = (self.clone(), digest.key());
        blocking("starting a large blob", move || LargeWriter::create(log, key)).await
    }

    /// Makes room for `bytes` more of a large blob being written and reserves them. May wait for the
    /// writer and evict (which deletes files): call it off the runtime.
    pub(super) fn reserve(&self, bytes: u64) -> Result<()> {
        let mut w = self.inner.writer.lock();
        self.make_room(&mut w, bytes, false)?;
        w.reserved_large += bytes;
        Ok(())
    }

    /// Reserves `bytes` for a large blob if that takes no eviction and the writer is free; false
    /// otherwise, for the caller to `reserve` off the runtime. Never waits: the writer holds its lock
    /// while it writes, and while it syncs a sealed segment.
    pub(super) fn try_reserve_now(&self, bytes: u64) -> bool {
        let Some(mut w) = self.inner.writer.try_lock() else { return false };
        if self.used(&self.inner.state.read(), &w) + bytes > self.inner.cfg.max_size {
            return false;
        }
        w.reserved_large += bytes;
        true
    }

    /// Publishes a large blob just written. Waits for the writer: call it off the runtime.
    pub(super) fn register_large(&self, key: Key, size: u64, reserved: u64) {
        let mut w = self.inner.writer.lock();
        w.reserved_large -= reserved;
        let mut st = self.inner.state.write();
        self.inner.counters.written(size);
        let entry = LargeEntry { size, seq: w.open.id, used: std::time::SystemTime::now() };
        if let Some(old) = st.large.insert(key, entry) {
            st.large_bytes -= old.size;
        }
        st.large_bytes += size;
    }

    /// Gives back what an abandoned large upload reserved; from its `Drop`, so on the runtime only
    /// if the writer is free.
    pub(super) fn release_reservation(&self, reserved: u64) {
        if let Some(mut w) = self.inner.writer.try_lock() {
            w.reserved_large -= reserved;
            return;
        }
        let inner = self.inner.clone();
        soon(move || inner.writer.lock().reserved_large -= reserved);
    }
}

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// A streaming write of one large blob. Each piece's size is reserved in the budget as it arrives (so
/// that an upload the log has no room for fails at once), off the runtime where that has to wait for
/// the log's writer or evict; pieces are gathered until they make a
/// `CHUNK` and then written together in one trip off the runtime (a blob sent in 16 KiB messages
/// would otherwise cost a thread hand-off per message). Dropping the writer uncommitted removes the
/// temporary file and releases the reservation.
pub struct LargeWriter {
    log: DiskLog,
    key: Key,
    reserved: u64,
    /// Shared with the blocking tasks that write it (`write_at` takes `&File`).
    file: Option<Arc<File>>,
    tmp: PathBuf,
    /// Received (and reserved) and not yet written.
    pending: Chunks,
    /// The checksum of the payload's finished chunks, of the chunk being written, and the table of
    /// the finished ones.
    crc: crc32fast::Hasher,
    chunk_crc: crc32fast::Hasher,
    chunk_crcs: Vec<u8>,
    written: u64,
}

impl LargeWriter {
    pub fn create(log: DiskLog, key: Key) -> Result<LargeWriter> {
        let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
        let tmp = log.large_dir().join(format!("tmp-{}-{n}", std::process::id()));
        let mut writer = LargeWriter {
            log,
            key,
            reserved: 0,
            file: None,
            tmp,
            pending: Chunks::default(),
            crc: crc32fast::Hasher::new(),
            chunk_crc: crc32fast::Hasher::new(),
            chunk_crcs: Vec::new(),
            written: 0,
        };
        let file = File::create(&writer.tmp).map_err(|e| StoreError::io(&writer.tmp, e))?;
        // The header goes in last, once the checksum is known; until then the file is not a record.
        file.set_len(HEADER_LEN as u64).map_err(|e| StoreError::io(&writer.tmp, e))?;
        writer.file = Some(Arc::new(file));
        Ok(writer)
    }

    fn file(&self) -> Result<Arc<File>> {
        self.file.clone().ok_or_else(|| StoreError::Config("large blob writer used after commit".into()))
    }

    /// Writes what is pending after what is written, and checksums it.
    async fn flush(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        if pending.is_empty() {
            return Ok(());
        }
        let offset = HEADER_LEN as u64 + self.written;
        // Checksummed here, before the pieces move to the blocking thread that writes them.
        pending.pieces().for_each(|piece| self.checksum(piece));
        let (file, tmp) = (self.file()?, self.tmp.clone());
        blocking("writing a large blob", move || pending.write_all_at(&file, offset).map_err(|e| StoreError::io(&tmp, e))).await
    }

    /// Adds `data`, the payload's next bytes, to the checksums. The chunk table's cover fixed
    /// CHUNK-sized pieces, whatever the appends' sizes; the whole payload's is theirs combined.
    fn checksum(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let room = (CHUNK - self.written % CHUNK) as usize;
            let (piece, more) = data.split_at(room.min(data.len()));
            self.chunk_crc.update(piece);
            self.written += piece.len() as u64;
            if self.written % CHUNK == 0 {
                self.finish_chunk();
            }
            data = more;
        }
    }

    fn finish_chunk(&mut self) {
        let done = std::mem::replace(&mut self.chunk_crc, crc32fast::Hasher::new());
        self.crc.combine(&done);
        self.chunk_crcs.extend_from_slice(&done.finalize().to_le_bytes());
    }
}

#[async_trait]
impl BlobWriter for LargeWriter {
    async fn append(&mut self, chunk: Bytes) -> Result<()> {
        let bytes = chunk.len() as u64;
        if !self.log.try_reserve_now(bytes) {
            let log = self.log.clone();
            blocking("making room for a large blob", move || log.reserve(bytes)).await?;
        }
        self.reserved += bytes;
        self.pending.push(chunk);
        if self.pending.len() as u64 >= CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        self.flush().await?;
        if self.written % CHUNK != 0 {
            self.finish_chunk();
        }
        let header = Header { key: self.key, form: Form::Identity, payload_len: self.written, payload_crc: self.crc.clone().finalize() };
        let tmp = self.tmp.clone();
        let durable = self.log.syncs_writes();
        let file = self.file.take().ok_or_else(|| StoreError::Config("large blob committed twice".into()))?;
        let mut table = std::mem::take(&mut self.chunk_crcs);
        table.extend_from_slice(&FOOTER_MAGIC);
        table.extend_from_slice(&CHUNK.to_le_bytes());
        let (end, dir) = (HEADER_LEN as u64 + self.written, self.log.large_dir().to_path_buf());
        let path = large_path(&dir, &self.key);
        // The reservation goes with the blocking task, which completes even if this call is dropped:
        // the blob is published under it, or it is given back.
        let (log, key, written, reserved) = (self.log.clone(), self.key, self.written, std::mem::take(&mut self.reserved));
        blocking("committing a large blob", move || {
            let publish = || -> Result<()> {
                file.write_all_at(&table, end).map_err(|e| StoreError::io(&tmp, e))?;
                file.write_all_at(&header.encode(), 0).map_err(|e| StoreError::io(&tmp, e))?;
                if durable {
                    file.sync_data().map_err(|e| StoreError::io(&tmp, e))?;
                }
                std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
                if durable {
                    if let Ok(dir) = File::open(&dir) {
                        let _ = dir.sync_all();
                    }
                }
                Ok(())
            };
            let published = publish();
            match published {
                Ok(()) => log.register_large(key, written, reserved),
                Err(_) => {
                    log.release_reservation(reserved);
                    let _ = std::fs::remove_file(&tmp);
                }
            }
            published
        })
        .await
    }
}

impl Drop for LargeWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            remove_soon(std::mem::take(&mut self.tmp));
        }
        if self.reserved > 0 {
            self.log.release_reservation(self.reserved);
        }
    }
}

