//! The disk tier: a segmented log on memory-mapped files.
//!
//! One file per blob does not scale (file creation and fsync cost milliseconds), so blobs are
//! appended as records to large preallocated segment files by one writer at a time and read through
//! shared mappings without copying. The in-memory index is rebuilt at start from the index files of
//! sealed segments plus a scan of the open one (`recovery.rs`). Eviction drops whole segments, oldest
//! first; blobs read or found while they sit in the oldest quarter of a nearly full log are copied
//! forward into the open segment, so hot blobs survive (a pseudo-LRU, as in Buildbarn's local store).
//! The file of an evicted segment becomes the next segment when nothing reads it any more
//! (`segment.rs` says why; `record.rs` how its old records are told from the new ones).
//! Blobs larger than `max_record` are files of their own under `large/`, in the same budget.
//! The same log serves the CAS (keys checked against sizes) and the action cache (any value).
//! With `compression`, CAS records are stored in the chunked zstd form where that is smaller
//! (`stored.rs`); large files stay as they are.

mod appender;
mod checked_read;
mod index;
mod large;
mod record;
mod recovery;
mod segment;
mod stored;
mod sync;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};

pub use self::index::{Index, Loc};
use self::large::LargeEntry;
use self::record::Form;
use self::segment::{IndexEntry, Segment};
use self::stored::Stored;
pub use self::sync::SyncPolicy;
use self::sync::{GroupCommit, SyncSource};
use crate::chunks::Chunks;
use crate::digest::{Digest, Key};
use crate::error::{Result, StoreError};
use crate::offload;
use crate::zstd_chunks::Settings;
use crate::store::{ActionCacheStore, Blob, BlobStore, BlobWriter, BufferedWriter, Counters, StoreStats};

/// Blobs from this size on are compressed on a blocking thread (about 0.3 ms of zstd at level 1).
const BLOCKING_PACK: usize = 128 * 1024;
/// Records up to this size are checked on the runtime (80 µs of CRC-32 at most here); larger ones on a
/// blocking thread (those checked whole: for a short read, a copy forward, a compressed record).
const CHECKED_ON_THE_RUNTIME: usize = 1 << 20;
/// How long a group commit waits for the appends already sent to land: a few small appends take
/// microseconds; a large one in progress is not waited for longer than this.
const SETTLE_AT_MOST: std::time::Duration = std::time::Duration::from_millis(2);

#[derive(Clone, Debug)]
pub struct DiskConfig {
    pub path: PathBuf,
    /// Bytes on disk at most: segments (counted whole) plus large files.
    pub max_size: u64,
    pub segment_size: u64,
    /// Payloads larger than this become files of their own.
    pub max_record: u64,
    pub sync: SyncPolicy,
    /// Store CAS records compressed (where that makes them smaller); `None` stores them as they are.
    pub compression: Option<Settings>,
}

impl DiskConfig {
    pub fn validate(&self) -> Result<()> {
        let fail = |msg: String| Err(StoreError::Config(format!("disk tier at {}: {msg}", self.path.display())));
        if self.segment_size < 64 * 1024 || self.segment_size > u32::MAX as u64 {
            return fail(format!("segment_size {} must be between 64KiB and 4GiB", self.segment_size));
        }
        if self.max_record == 0 || self.max_record > self.segment_size / 4 {
            return fail(format!("max_record {} must be between 1 byte and segment_size / 4", self.max_record));
        }
        if self.max_size < 2 * self.segment_size {
            return fail(format!("max_size {} must hold at least two segments of {}", self.max_size, self.segment_size));
        }
        Ok(())
    }

    fn max_segments(&self) -> u64 {
        self.max_size / self.segment_size
    }
}

/// A handle to one disk log; clones share it.
#[derive(Clone)]
pub struct DiskLog {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: DiskConfig,
    large_dir: PathBuf,
    state: RwLock<State>,
    writer: Mutex<Writer>,
    commits: Arc<GroupCommit>,
    /// Set once at open: the writer thread holds a weak reference to this `Inner`.
    appender: std::sync::OnceLock<appender::Appender>,
    counters: Counters,
}

/// What readers look at.
struct State {
    index: Index,
    segments: BTreeMap<u32, Arc<Segment>>,
    large: HashMap<Key, LargeEntry>,
    large_bytes: u64,
}

/// The append position; held only by the one writer at a time.
struct Writer {
    open: Arc<Segment>,
    offset: u64,
    /// The open segment's records, for its index file when it is sealed.
    entries: Vec<IndexEntry>,
    seq: u64,
    reserved_large: u64,
    /// How far the open segment's blocks are written (with records or zeros); see `zero_ahead`.
    zeroed_to: u64,
}

impl SyncSource for Inner {
    fn latest(&self) -> (u64, Arc<Segment>) {
        let w = self.writer.lock();
        (w.seq, w.open.clone())
    }

    fn settle(&self) {
        if let Some(appender) = self.appender.get() {
            appender.settle(SETTLE_AT_MOST);
        }
    }
}

/// Where a stored value was found, for copy-forward.
enum Found {
    Segment(Loc),
    Large(LargeEntry),
}

impl DiskLog {
    /// Opens (or creates) the log, rebuilding its index from what is on disk.
    pub fn open(cfg: DiskConfig) -> Result<DiskLog> {
        cfg.validate()?;
        let recovered = recovery::recover(&cfg)?;
        let inner = Arc::new(Inner {
            large_dir: cfg.path.join("large"),
            state: RwLock::new(recovered.state),
            writer: Mutex::new(recovered.writer),
            commits: GroupCommit::new(),
            appender: std::sync::OnceLock::new(),
            counters: Counters::default(),
            cfg,
        });
        let name = inner.cfg.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let writer = appender::Appender::start(Arc::downgrade(&inner), &name).map_err(|e| StoreError::io(&inner.cfg.path, e))?;
        let _ = inner.appender.set(writer);
        inner
            .commits
            .start(Arc::downgrade(&inner), inner.cfg.sync)
            .map_err(|e| StoreError::io(&inner.cfg.path, e))?;
        let log = DiskLog { inner };
        {
            let mut w = log.inner.writer.lock();
            log.make_room(&mut w, 0, false)?;
        }
        Ok(log)
    }

    pub fn config(&self) -> &DiskConfig {
        &self.inner.cfg
    }

    fn large_dir(&self) -> &Path {
        &self.inner.large_dir
    }

    fn syncs_writes(&self) -> bool {
        self.inner.cfg.sync == SyncPolicy::Always
    }

    /// Number of values and heap bytes of the index (for the memory target and metrics).
    pub fn index_usage(&self) -> (usize, usize) {
        let st = self.inner.state.read();
        (st.index.len() + st.large.len(), st.index.heap_bytes())
    }

    /// Makes every acknowledged append durable (used at shutdown).
    pub fn flush(&self) -> Result<()> {
        let open = self.inner.writer.lock().open.clone();
        open.sync()
    }

    /// The stored value for `key` and where it was, or `None`. Damaged records count as absent and
    /// are dropped from the index.
    async fn lookup(&self, key: &Key) -> Option<(Stored, Found)> {
        self.lookup_range(key, 0..u64::MAX).await
    }

    /// As `lookup`, but a large blob is checked only in `range` (the rest is not read). A large blob's
    /// file is opened, mapped and checked on a blocking thread.
    async fn lookup_range(&self, key: &Key, range: std::ops::Range<u64>) -> Option<(Stored, Found)> {
        let in_segment = {
            let st = self.inner.state.read();
            match st.index.get(key) {
                Some(loc) => Ok((st.segments.get(&loc.segment)?.clone(), loc)),
                None => Err(*st.large.get(key)?),
            }
        };
        let (segment, loc) = match in_segment {
            Ok(found) => found,
            Err(entry) => return self.lookup_large(key, entry, range).await,
        };
        let payload = match loc.len as usize > CHECKED_ON_THE_RUNTIME {
            false => segment.payload(loc, key),
            true => {
                let (segment, key) = (segment.clone(), *key);
                match offload::blocking("checking a record", move || Ok(segment.payload(loc, &key))).await {
                    Ok(payload) => payload,
                    // A panic while checking is not evidence that the record is damaged: it stays.
                    Err(e) => {
                        tracing::warn!("{e}");
                        return None;
                    }
                }
            }
        };
        match payload.and_then(|(form, payload)| Stored::new(form, payload)) {
            Some(stored) => Some((stored, Found::Segment(loc))),
            None => {
                // Damaged payload, damaged header or a truncated segment: the entry is useless and
                // would make the blob a phantom (present to FindMissing, absent to reads). Only an
                // intact header of another key (a 96-bit prefix twin) keeps its own entry.
                if segment.header_at(loc.offset).is_none_or(|h| h.key == *key) {
                    tracing::warn!(segment = %segment.path.display(), offset = loc.offset, "damaged record dropped");
                    self.inner.state.write().index.remove(key, loc);
                }
                None
            }
        }
    }

    /// Values last placed in a segment below the returned id are at risk of eviction soon: the log is
    /// at least three quarters full and they sit in its oldest quarter.
    fn old_before(&self, st: &State) -> u32 {
        let Some(&oldest) = st.segments.keys().next() else { return 0 };
        let max_segments = self.inner.cfg.max_segments();
        let used = st.segments.len() as u64 + st.large_bytes / self.inner.cfg.segment_size;
        if used * 4 < max_segments * 3 {
            return 0;
        }
        oldest.saturating_add(u32::try_from((max_segments / 4).max(1)).unwrap_or(u32::MAX))
    }

    fn is_old(&self, seq: u32) -> bool {
        seq < self.old_before(&self.inner.state.read())
    }

    /// Copies a value forward so that it survives the eviction of its segment.
    fn refresh(&self, key: &Key, stored: &Stored, found: &Found) {
        let seq = match found {
            Found::Segment(loc) => loc.segment,
            Found::Large(entry) => entry.seq,
        };
        if !self.is_old(seq) {
            return;
        }
        match found {
            Found::Segment(_) => {
                if let Some(appender) = self.inner.appender.get() {
                    let (form, payload) = stored.record();
                    appender.append_detached(*key, form, payload);
                }
            }
            Found::Large(_) => self.renew_large(key),
        }
    }

    /// Seals the open segment (sync, index file) and opens the next, evicting to make room. The next
    /// segment is the file of an evicted one where nothing reads that any more, a new file otherwise.
    fn roll(&self, w: &mut Writer) -> Result<()> {
        let dir = &self.inner.cfg.path;
        w.open.sync()?;
        segment::write_index(dir, w.open.id, &w.entries)?;
        let spare = self.make_room(w, self.inner.cfg.segment_size, true)?;
        let id = w.open.id + 1;
        let next = match spare.map(|old| old.reuse(dir, id)) {
            Some(Ok(reused)) => reused,
            Some(Err(e)) => {
                tracing::warn!("cannot reuse an evicted segment's file: {e}");
                Segment::create(dir, id, self.inner.cfg.segment_size, w.open.seed.salt)?
            }
            None => Segment::create(dir, id, self.inner.cfg.segment_size, w.open.seed.salt)?,
        };
        segment::sync_dir(dir)?;
        let next = Arc::new(next);
        self.inner.state.write().segments.insert(next.id, next.clone());
        // A reused file needs its blocks kept ahead too: a record that fills part of a page of it
        // would otherwise have the kernel read the page's old contents from disk first (write-small
        // into a full log measured 0.48x of a log of new files before).
        w.zeroed_to = 0;
        w.open = next;
        w.offset = 0;
        w.entries.clear();
        Ok(())
    }

    /// Evicts the oldest segments and large files until `extra` more bytes fit in the budget. With
    /// `keep_spare`, the file of one evicted segment that can be reused is handed back instead of
    /// deleted (the caller makes it the next segment at once: it is no longer counted).
    fn make_room(&self, w: &mut Writer, extra: u64, keep_spare: bool) -> Result<Option<Segment>> {
        let mut spare = None;
        loop {
            let victim = {
                let st = self.inner.state.read();
                if self.used(&st, w) + extra <= self.inner.cfg.max_size {
                    return Ok(spare);
                }
                let oldest_segment = st.segments.keys().next().copied().filter(|&id| id != w.open.id);
                let oldest_large = st.large.iter().min_by_key(|(_, e)| (e.seq, e.used)).map(|(k, e)| (*k, e.seq));
                match (oldest_segment, oldest_large) {
                    (Some(seg), Some((key, seq))) if seq < seg => Err(key),
                    (Some(seg), _) => Ok(seg),
                    (None, Some((key, _))) => Err(key),
                    (None, None) => {
                        if let Some(unused) = spare {
                            let _ = std::fs::remove_file(&unused.path);
                        }
                        return Err(StoreError::Full {
                            store: format!("disk tier at {}", self.inner.cfg.path.display()),
                            needed: extra,
                            max_size: self.inner.cfg.max_size,
                        })
                    }
                }
            };
            match victim {
                Ok(segment) => {
                    let kept = self.evict_segment(segment, keep_spare && spare.is_none());
                    spare = spare.or(kept);
                }
                Err(key) => self.evict_large(&key),
            }
        }
    }

    /// Drops a segment from the index and deletes its files, or, with `keep`, hands its file back
    /// when it can be reused (its index file is deleted either way: its records are gone).
    fn evict_segment(&self, id: u32, keep: bool) -> Option<Segment> {
        let (segment, removed) = {
            let mut st = self.inner.state.write();
            (st.segments.remove(&id), st.index.remove_segment(id))
        };
        self.inner.counters.evictions.fetch_add(removed as u64, std::sync::atomic::Ordering::Relaxed);
        let _ = std::fs::remove_file(segment::index_path(&self.inner.cfg.path, id));
        tracing::debug!(segment = id, blobs = removed, "evicted segment");
        // A reader that still holds the segment or a slice of its mapping keeps it from reuse: its
        // bytes must not change under it. Deleting the file is safe for readers.
        let spare = segment.and_then(|s| Arc::try_unwrap(s).ok()).filter(|s| keep && s.reusable(self.inner.cfg.segment_size));
        if spare.is_none() {
            let _ = std::fs::remove_file(segment::segment_path(&self.inner.cfg.path, id));
        }
        spare
    }

    /// Bytes of the budget taken: segments (counted whole), large files and their reservations.
    fn used(&self, st: &State, w: &Writer) -> u64 {
        st.segments.len() as u64 * self.inner.cfg.segment_size + st.large_bytes + w.reserved_large
    }

    /// Appends and, under the `always` policy, waits for the group commit that covers the append.
    async fn append_durably(&self, key: &Key, size: u64, form: Form, payload: Chunks) -> Result<()> {
        let appender = self.inner.appender.get().ok_or_else(|| StoreError::Config("the disk log has no writer".into()))?;
        self.inner.counters.written_as(size, payload.len() as u64);
        let seq = appender.append(*key, form, payload).await?;
        if self.syncs_writes() {
            self.inner.commits.wait(seq).await?;
        }
        Ok(())
    }

    /// `append_durably` for several records in one job and one group commit: a result per record.
    async fn append_all_durably(&self, records: Vec<appender::Record>) -> Result<Vec<Result<()>>> {
        let appender = self.inner.appender.get().ok_or_else(|| StoreError::Config("the disk log has no writer".into()))?;
        let appended = appender.append_many(records).await?;
        let last = appended.iter().filter_map(|r| r.as_ref().ok()).max().copied();
        if let (Some(seq), true) = (last, self.syncs_writes()) {
            self.inner.commits.wait(seq).await?;
        }
        Ok(appended.into_iter().map(|r| r.map(|_| ())).collect())
    }

    /// Whether the segment record for `key` is in the compressed form (header only, no payload).
    fn holds_compressed(&self, key: &Key) -> bool {
        let st = self.inner.state.read();
        st.index.get(key).and_then(|loc| st.segments.get(&loc.segment)?.header_at(loc.offset)).is_some_and(|h| h.key == *key && h.form == Form::ZstdChunks)
    }

    async fn present(&self, digest: &Digest) -> bool {
        self.lookup(&digest.key()).await.is_some_and(|(stored, _)| stored.size() == digest.size)
    }

    /// `data` as its record will hold it. Compressing a large blob is CPU work of milliseconds, so
    /// it runs off the async runtime.
    async fn pack(&self, data: Chunks) -> (Form, Chunks) {
        let settings = self.inner.cfg.compression;
        if settings.is_none() {
            return (Form::Identity, data);
        }
        let data = data.into_bytes();
        let (form, payload) = if data.len() < BLOCKING_PACK {
            Stored::pack(data, settings)
        } else {
            let fallback = data.clone();
            tokio::task::spawn_blocking(move || Stored::pack(data, settings)).await.unwrap_or((Form::Identity, fallback))
        };
        (form, payload.into())
    }

    /// Stores a blob from the pieces it arrived in: a segment record written from them as they
    /// are, or a large file.
    async fn write_chunks(&self, digest: &Digest, data: Chunks) -> Result<()> {
        if self.present(digest).await {
            return Ok(());
        }
        if digest.size <= self.inner.cfg.max_record {
            let (form, payload) = self.pack(data).await;
            return self.append_durably(&digest.key(), digest.size, form, payload).await;
        }
        let mut writer = Box::new(self.large_writer(digest).await?);
        for piece in data.pieces() {
            writer.append(piece.clone()).await?;
        }
        writer.commit().await
    }
}

#[async_trait]
impl BlobStore for DiskLog {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        let mut found = Vec::with_capacity(digests.len());
        let (mut old, mut old_large) = (Vec::new(), Vec::new());
        {
            let st = self.inner.state.read();
            let old_before = self.old_before(&st);
            for digest in digests {
                let key = digest.key();
                let (seq, large) = match st.index.get(&key) {
                    // The record's header must still be there and name this key (no payload read):
                    // a damaged header or a truncated segment is reported missing, so the client
                    // uploads the blob again and the write heals the entry.
                    Some(loc)
                        if st.segments.get(&loc.segment).is_some_and(|s| {
                            s.header_at(loc.offset).is_some_and(|h| h.key == key && s.blob_size(loc, &h) == Some(digest.size))
                        }) =>
                    {
                        (Some(loc.segment), false)
                    }
                    _ => (st.large.get(&key).filter(|e| e.size == digest.size).map(|e| e.seq), true),
                };
                found.push(seq.is_some());
                if seq.is_some_and(|s| s < old_before) {
                    if large { &mut old_large } else { &mut old }.push(key);
                }
            }
        }
        // Hot blobs in the oldest part of the log are copied forward, outside the index lock: a
        // segment record (checked first: a damaged one is dropped, never copied), or a large blob's
        // place in the eviction order (its file, which a read checks, is not read for that).
        for key in old {
            if let Some((stored, at)) = self.lookup(&key).await {
                self.refresh(&key, &stored, &at);
            }
        }
        for key in old_large {
            self.renew_large(&key);
        }
        for hit in &found {
            self.inner.counters.hit(*hit);
        }
        Ok(found)
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        let key = digest.key();
        if let Some(blob) = self.read_checked_as_sent(digest, &key, offset, limit).await {
            self.inner.counters.hit(true);
            return Ok(Some(blob));
        }
        let range = offset..limit.map_or(u64::MAX, |l| offset.saturating_add(l));
        let found = self.lookup_range(&key, range).await.filter(|(stored, _)| stored.size() == digest.size);
        self.inner.counters.hit(found.is_some());
        let Some((stored, at)) = found else { return Ok(None) };
        self.refresh(&key, &stored, &at);
        stored.read(digest, offset, limit).map(Some)
    }

    async fn read_zstd(&self, digest: &Digest, offset: u64) -> Result<Option<Blob>> {
        let key = digest.key();
        // Most records are stored as they are (always, without compression): the header says so
        // before any payload is read or checksummed, and the caller then reads the usual way.
        if !self.holds_compressed(&key) {
            return Ok(None);
        }
        let Some((stored, at)) = self.lookup(&key).await.filter(|(stored, _)| stored.size() == digest.size) else { return Ok(None) };
        let level = self.inner.cfg.compression.map_or(Settings::DEFAULT.level, |s| s.level);
        let blob = stored.zstd_from(digest, offset, level)?;
        if blob.is_some() {
            self.inner.counters.hit(true);
            self.refresh(&key, &stored, &at);
        }
        Ok(blob)
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        self.write_chunks(digest, data.into()).await
    }

    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        let mut outcomes = Vec::with_capacity(blobs.len());
        let (mut records, mut placed) = (Vec::new(), Vec::new());
        for (digest, data) in blobs {
            // Blobs held already, and large ones (files of their own), go the single way.
            if digest.size > self.inner.cfg.max_record || self.present(&digest).await {
                outcomes.push(self.write(&digest, data).await);
                continue;
            }
            let (form, payload) = self.pack(data.into()).await;
            self.inner.counters.written_as(digest.size, payload.len() as u64);
            placed.push(outcomes.len());
            outcomes.push(Err(StoreError::unanswered()));
            records.push((digest.key(), form, payload));
        }
        if records.is_empty() {
            return outcomes;
        }
        match self.append_all_durably(records).await {
            Ok(results) => placed.into_iter().zip(results).for_each(|(i, result)| outcomes[i] = result),
            Err(e) => {
                let n = placed.len();
                for (i, error) in placed.into_iter().zip(e.shared_by(n)) {
                    outcomes[i] = Err(error);
                }
            }
        }
        outcomes
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        if digest.size > self.inner.cfg.max_record {
            return Ok(Box::new(self.large_writer(digest).await?));
        }
        let this = self.clone();
        let digest = *digest;
        Ok(Box::new(BufferedWriter::new(move |data| async move { this.write_chunks(&digest, data).await })))
    }

    fn stats(&self) -> StoreStats {
        let st = self.inner.state.read();
        let bytes = st.segments.len() as u64 * self.inner.cfg.segment_size + st.large_bytes;
        let oldest_segment = st.segments.values().next().map(|s| s.written);
        let oldest_large = st.large.values().map(|l| l.used).min();
        StoreStats {
            oldest: oldest_segment.into_iter().chain(oldest_large).min(),
            syncs: self.inner.commits.syncs(),
            ..self.inner.counters.snapshot((st.index.len() + st.large.len()) as u64, bytes)
        }
    }

    async fn evict(&self, digest: &Digest) -> Result<bool> {
        let key = digest.key();
        let (segment, loc) = {
            let mut st = self.inner.state.write();
            match st.index.get(&key) {
                Some(loc) => {
                    st.index.remove(&key, loc);
                    (st.segments.get(&loc.segment).cloned(), loc)
                }
                None if st.large.contains_key(&key) => {
                    drop(st);
                    self.evict_large(&key);
                    return Ok(true);
                }
                None => return Ok(false),
            }
        };
        // The record stays in its segment until the segment is evicted; clearing its magic keeps a
        // restart from finding it again.
        if let Some(segment) = segment {
            segment.invalidate(loc.offset)?;
        }
        self.inner.counters.evictions.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(true)
    }
}

#[async_trait]
impl ActionCacheStore for DiskLog {
    async fn get(&self, action: &Digest) -> Result<Option<Bytes>> {
        let key = action.key();
        let found = self.lookup(&key).await;
        self.inner.counters.hit(found.is_some());
        let Some((stored, at)) = found else { return Ok(None) };
        self.refresh(&key, &stored, &at);
        match stored {
            // A copy, not a slice of the mapping: callers keep results (the memory tier above), and a
            // kept slice would pin the whole segment, its file's blocks even after eviction.
            Stored::Identity(value) => Ok(Some(Bytes::copy_from_slice(&value))),
            // Results are written as they are; decompressing keeps a log shared with a CAS readable.
            Stored::Zstd(chunked) => chunked.whole().map(|v| Some(Bytes::from(v))).map_err(|reason| StoreError::Corrupt {
                digest: *action,
                tier: "disk".into(),
                reason,
            }),
        }
    }

    async fn put(&self, action: &Digest, value: Bytes) -> Result<()> {
        if value.len() as u64 > self.inner.cfg.max_record {
            return Err(StoreError::TooLarge { digest: *action, store: "the disk action cache".into(), limit: self.inner.cfg.max_record });
        }
        self.append_durably(&action.key(), value.len() as u64, Form::Identity, value.into()).await
    }
}

#[cfg(test)]
mod compression_tests;
#[cfg(test)]
mod fault_tests;
#[cfg(test)]
mod reuse_tests;
#[cfg(test)]
mod tests;
