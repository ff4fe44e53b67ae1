//! Start-up: rebuild the index from what is on disk, trusting nothing blindly.
//!
//! Sealed segments load their index files (a few bytes per blob, no payload reads); a segment whose
//! index file is missing or damaged is scanned instead. The open (newest) segment is always scanned
//! record by record with payload checksums. A record that is not intact loses only itself: the scan
//! resynchronises at the next intact record (records are 8-byte aligned and start with a magic), and
//! a record found that way must also hash to its key, so that bytes inside a damaged blob can never
//! pass for a record (the action cache's values do not hash to their keys: there, what follows a
//! damaged record is dropped). Whatever follows the last intact record of the open segment (a torn
//! tail, or records a reused file kept from its life as an earlier segment) stays where it is, to be
//! overwritten by the next appends: none of it can pass for a record of this segment. A torn record
//! fails its payload checksum; a leftover of another segment, or a record forged inside a blob,
//! fails its header checksum (`record.rs`). Index files without their segment, temporary files and
//! unreadable large files are removed. A record that is damaged later is caught by the checksum
//! check on every read.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use super::index::{Index, Loc};
use super::large::{self, LargeEntry};
use super::record::{record_len, Form, Header, Seed, HEADER_LEN, MAGIC, SEGMENT_MAGIC};
use super::segment::{self, IndexEntry, Segment};
use super::{DiskConfig, State, Writer};
use crate::digest::Key;
use crate::error::{Result, StoreError};
use crate::zstd_chunks::Chunked;

pub struct Recovered {
    pub state: State,
    pub writer: Writer,
}

pub fn recover(cfg: &DiskConfig) -> Result<Recovered> {
    let dir = &cfg.path;
    let large_dir = dir.join("large");
    std::fs::create_dir_all(&large_dir).map_err(|e| StoreError::io(&large_dir, e))?;

    let mut segment_ids = Vec::new();
    let mut index_ids = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(id) = name.strip_suffix(".seg").and_then(|s| s.parse::<u32>().ok()) {
            segment_ids.push(id);
        } else if let Some(id) = name.strip_suffix(".idx").and_then(|s| s.parse::<u32>().ok()) {
            index_ids.push(id);
        } else if name.ends_with(".idx.tmp") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    segment_ids.sort_unstable();
    for id in index_ids.iter().filter(|id| segment_ids.binary_search(id).is_err()) {
        tracing::warn!(segment = id, "index file without its segment removed");
        let _ = std::fs::remove_file(segment::index_path(dir, *id));
    }

    let mut segments = BTreeMap::new();
    let mut index = Index::with_capacity(estimate_blobs(dir, &segment_ids));
    let open_id = segment_ids.last().copied();
    let mut open_entries = Vec::new();
    let mut open_end = 0;
    let salt = segment::log_salt(dir, !segment_ids.is_empty())?;
    for &id in &segment_ids {
        let seg = Arc::new(Segment::open(dir, id, salt)?);
        let entries = if Some(id) == open_id {
            let (entries, end) = scan(&seg);
            open_end = end;
            entries
        } else {
            match segment::read_index(dir, id) {
                Some(entries) => entries,
                None => {
                    let (entries, _) = scan(&seg);
                    tracing::warn!(segment = id, records = entries.len(), "index file missing or damaged; segment scanned");
                    segment::write_index(dir, id, &entries)?;
                    entries
                }
            }
        };
        segments.insert(id, seg);
        for e in &entries {
            let loc = Loc { segment: id, offset: e.offset, len: e.len };
            index.insert(e.key, loc, |l| segments.get(&l.segment).and_then(|s| s.header_at(l.offset)).map(|h| h.key));
        }
        if Some(id) == open_id {
            open_entries = entries;
        }
    }

    let open = match open_id {
        Some(id) => segments[&id].clone(),
        None => {
            let seg = Arc::new(Segment::create(dir, 0, cfg.segment_size, salt)?);
            segments.insert(0, seg.clone());
            seg
        }
    };
    let (large, large_bytes) = recover_large(&large_dir, &segments)?;
    Ok(Recovered {
        state: State { index, segments, large, large_bytes },
        writer: Writer { open, offset: open_end, entries: open_entries, seq: 0, reserved_large: 0, zeroed_to: open_end },
    })
}

/// Reads the intact records of a segment; returns them and the end of the last one.
pub fn scan(seg: &Segment) -> (Vec<IndexEntry>, u64) {
    let bytes = seg.bytes();
    let mut entries = Vec::new();
    let (mut offset, mut end) = (0usize, 0usize);
    let mut resyncing = false;
    while offset + HEADER_LEN <= bytes.len() {
        match intact_record(bytes, seg.seed, offset, resyncing) {
            Some(entry) => {
                if resyncing {
                    tracing::warn!(segment = seg.id, offset, "intact records follow a damaged one; only that one is lost");
                    resyncing = false;
                }
                offset += record_len(u64::from(entry.len)) as usize;
                end = offset;
                entries.push(entry);
            }
            None => {
                resyncing = true;
                offset = next_magic(bytes, offset + 8);
            }
        }
    }
    (entries, end as u64)
}

/// The record at `offset` of the segment of `seed` if it is intact (and, when `verify_hash`, if its
/// payload hashes to its key).
fn intact_record(bytes: &[u8], seed: Seed, offset: usize, verify_hash: bool) -> Option<IndexEntry> {
    let header = Header::decode_in_segment(bytes.get(offset..)?, seed)?;
    let len = u32::try_from(header.payload_len).ok()?;
    let start = offset + HEADER_LEN;
    let payload = bytes.get(start..start.checked_add(len as usize)?)?;
    if !header.check_payload(payload) {
        return None;
    }
    if verify_hash && !hashes_to_key(&header, payload) {
        return None;
    }
    Some(IndexEntry { key: header.key, offset: u32::try_from(offset).ok()?, len })
}

/// Whether the blob a payload holds (decompressed, if it is compressed) hashes to the header's key.
fn hashes_to_key(header: &Header, payload: &[u8]) -> bool {
    let blob = match header.form {
        Form::Identity => std::borrow::Cow::Borrowed(payload),
        Form::ZstdChunks => match Chunked::parse(bytes::Bytes::copy_from_slice(payload)).map(|c| c.whole()) {
            Some(Ok(blob)) => std::borrow::Cow::Owned(blob),
            _ => return false,
        },
    };
    header.key.function.digest_of(&blob).hash == header.key.hash
}

/// The first 8-byte aligned offset at or after `from` where a record's magic starts, or the end.
fn next_magic(bytes: &[u8], from: usize) -> usize {
    let mut offset = from.div_ceil(8) * 8;
    while offset + HEADER_LEN <= bytes.len() {
        if bytes[offset..offset + 4] == SEGMENT_MAGIC || bytes[offset..offset + 4] == MAGIC {
            return offset;
        }
        offset += 8;
    }
    bytes.len()
}

/// A capacity hint from the sizes of the index files, so the table is not rebuilt while loading.
fn estimate_blobs(dir: &Path, ids: &[u32]) -> usize {
    ids.iter()
        .filter_map(|&id| std::fs::metadata(segment::index_path(dir, id)).ok())
        .map(|m| (m.len() / 41) as usize)
        .sum()
}

/// Lists the large files, dropping temporaries and anything without an intact header. A file's place
/// in the eviction order comes from its modification time against those of the segments.
fn recover_large(dir: &Path, segments: &BTreeMap<u32, Arc<Segment>>) -> Result<(HashMap<Key, LargeEntry>, u64)> {
    let segment_times: Vec<(u32, SystemTime)> = segments
        .values()
        .filter_map(|s| Some((s.id, s.file.metadata().ok()?.modified().ok()?)))
        .collect();
    let oldest = segments.keys().next().copied().unwrap_or(0);
    let mut large = HashMap::new();
    let mut total = 0;
    for entry in std::fs::read_dir(dir).map_err(|e| StoreError::io(dir, e))? {
        let entry = entry.map_err(|e| StoreError::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        let header = large::parse_large_name(&name)
            .filter(|_| !large::is_temporary(&name))
            .and_then(|key| Some((key, large::read_large_header(&path)?)))
            .filter(|(key, header)| header.key == *key);
        let Some((key, header)) = header else {
            tracing::warn!(file = %path.display(), "unexpected or damaged file in large/ removed");
            let _ = std::fs::remove_file(&path);
            continue;
        };
        let modified = entry.metadata().and_then(|m| m.modified()).ok();
        let seq = segment_times
            .iter()
            .take_while(|(_, t)| modified.is_some_and(|m| *t <= m))
            .last()
            .map_or(oldest, |(id, _)| *id);
        total += header.payload_len;
        let used = modified.unwrap_or(SystemTime::UNIX_EPOCH);
        large.insert(key, LargeEntry { size: header.payload_len, seq, used });
    }
    Ok((large, total))
}
