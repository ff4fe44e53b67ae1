//! Blobs too large for a segment record live in files of their own under `large/`, one record each
//! (the same header as in segments), under the same byte budget and eviction order as the segments.
//! They are streamed to a temporary file and renamed into place on commit, so a crash or an abandoned
//! upload leaves at most a temporary file that start-up removes.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use async_trait::async_trait;
use bytes::Bytes;
use memmap2::Mmap;

use super::record::{Header, HEADER_LEN};
use super::DiskLog;
use crate::digest::{DigestFunction, Key};
use crate::error::{Result, StoreError};
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

/// Reads a large blob, checking its header and checksum; `None` if it is missing or damaged.
pub fn read_large(dir: &Path, key: &Key) -> Option<Bytes> {
    let file = File::open(large_path(dir, key)).ok()?;
    // SAFETY: large files are written once to a temporary name and never modified after the rename.
    let map = unsafe { Mmap::map(&file) }.ok()?;
    let header = Header::decode(&map)?;
    let payload = map.get(HEADER_LEN..)?;
    if header.key != *key || !header.check_payload(payload) {
        return None;
    }
    Some(Bytes::from_owner(map).slice(HEADER_LEN..))
}

/// Reads only the header of a large file (start-up: trust the checksum later, at read time).
pub fn read_large_header(path: &Path) -> Option<Header> {
    let file = File::open(path).ok()?;
    let mut buf = [0u8; HEADER_LEN];
    file.read_exact_at(&mut buf, 0).ok()?;
    Header::decode(&buf)
}

static NEXT_TMP: AtomicU64 = AtomicU64::new(0);

/// A streaming write of one large blob. Each chunk's size is reserved in the budget before it is
/// written; dropping the writer uncommitted removes the temporary file and releases the reservation.
pub struct LargeWriter {
    log: DiskLog,
    key: Key,
    reserved: u64,
    file: Option<File>,
    tmp: PathBuf,
    crc: crc32fast::Hasher,
    written: u64,
}

impl LargeWriter {
    pub fn create(log: DiskLog, key: Key) -> Result<LargeWriter> {
        let n = NEXT_TMP.fetch_add(1, Ordering::Relaxed);
        let tmp = log.large_dir().join(format!("tmp-{}-{n}", std::process::id()));
        let mut writer = LargeWriter { log, key, reserved: 0, file: None, tmp, crc: crc32fast::Hasher::new(), written: 0 };
        let file = File::create(&writer.tmp).map_err(|e| StoreError::io(&writer.tmp, e))?;
        // The header goes in last, once the checksum is known; until then the file is not a record.
        file.set_len(HEADER_LEN as u64).map_err(|e| StoreError::io(&writer.tmp, e))?;
        writer.file = Some(file);
        Ok(writer)
    }

    fn file(&mut self) -> Result<&mut File> {
        self.file.as_mut().ok_or_else(|| StoreError::Config("large blob writer used after commit".into()))
    }
}

#[async_trait]
impl BlobWriter for LargeWriter {
    async fn append(&mut self, chunk: Bytes) -> Result<()> {
        self.log.reserve(chunk.len() as u64)?;
        self.reserved += chunk.len() as u64;
        let offset = HEADER_LEN as u64 + self.written;
        let tmp = self.tmp.clone();
        self.file()?.write_all_at(&chunk, offset).map_err(|e| StoreError::io(&tmp, e))?;
        self.crc.update(&chunk);
        self.written += chunk.len() as u64;
        Ok(())
    }

    async fn commit(mut self: Box<Self>) -> Result<()> {
        let header = Header { key: self.key, payload_len: self.written, payload_crc: self.crc.clone().finalize() };
        let tmp = self.tmp.clone();
        let durable = self.log.syncs_writes();
        let mut file = self.file.take().ok_or_else(|| StoreError::Config("large blob committed twice".into()))?;
        file.write_all_at(&header.encode(), 0).map_err(|e| StoreError::io(&tmp, e))?;
        file.flush().map_err(|e| StoreError::io(&tmp, e))?;
        if durable {
            file.sync_data().map_err(|e| StoreError::io(&tmp, e))?;
        }
        let path = large_path(self.log.large_dir(), &self.key);
        std::fs::rename(&tmp, &path).map_err(|e| StoreError::io(&path, e))?;
        if durable {
            if let Ok(dir) = File::open(self.log.large_dir()) {
                let _ = dir.sync_all();
            }
        }
        let reserved = std::mem::take(&mut self.reserved);
        self.log.register_large(self.key, self.written, reserved);
        Ok(())
    }
}

impl Drop for LargeWriter {
    fn drop(&mut self) {
        if self.file.is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        if self.reserved > 0 {
            self.log.release_reservation(self.reserved);
        }
    }
}

