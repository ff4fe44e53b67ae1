//! The disk log's one writer. Appends run on a thread of their own, fed by a channel, so that no
//! `pwrite`, segment roll (fdatasync, index file, preallocation) or eviction runs on the async
//! runtime; callers await the append's sequence number and then, under `sync: always`, the group
//! commit that covers it. A job is a BatchUpdate's records or one record, and the thread writes
//! them in as few `pwrite`s as it can. Copy-forward appends are sent without waiting for an answer.
//! The sync thread may `settle` first, so that one sync covers a whole burst rather than the first
//! few appends of it.

use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::record::{record_len, Form, Header};
use super::segment::IndexEntry;
use super::{DiskLog, Inner, Loc, State, Writer};
use crate::chunks::Chunks;
use crate::digest::Key;
use crate::error::{Result, StoreError};

/// Payloads up to this size are copied next to their header and written with one system call.
pub(super) const COALESCE_LIMIT: usize = 64 * 1024;
/// How far ahead of the append position the open segment's blocks are kept written.
const ZERO_AHEAD: u64 = 1 << 20;
/// Most bytes of small records gathered into one `pwrite`.
const RUN_LIMIT: u64 = 1 << 20;

/// Small records gathered for one write, and their index entries. The writer thread keeps one for
/// its life: a buffer grown anew for every run cost a realloc copy of the run (2% of the server's
/// time writing small blobs).
#[derive(Default)]
struct Run {
    buf: Vec<u8>,
    entries: Vec<IndexEntry>,
}

/// How long a group commit waits for more appends once those sent are in.
const LINGER: Duration = Duration::from_micros(50);

/// A record for the log: its key, its form and the payload as stored, in the pieces it arrived in.
pub type Record = (Key, Form, Chunks);

/// Records appended in order, answered together: a BatchUpdate's blobs travel as one job, so that
/// they cost one wake-up of their caller rather than one each.
struct Job {
    records: Vec<Record>,
    reply: Option<oneshot::Sender<Vec<Result<u64>>>>,
}

pub struct Appender {
    jobs: Mutex<mpsc::Sender<Job>>,
    tickets: Arc<Tickets>,
}

/// Jobs sent and jobs done, counted so that a waiter can tell when everything sent before it is in.
#[derive(Default)]
struct Tickets {
    counts: Mutex<(u64, u64)>,
    progress: Condvar,
}

impl Appender {
    /// Starts the writer thread; it ends when the log (and so this appender) is dropped.
    pub fn start(log: Weak<Inner>, name: &str) -> std::io::Result<Appender> {
        let (tx, rx) = mpsc::channel::<Job>();
        let tickets = Arc::new(Tickets::default());
        let done = tickets.clone();
        std::thread::Builder::new().name(format!("strata-disk-{name}")).spawn(move || {
            let mut run = Run { buf: Vec::with_capacity(RUN_LIMIT as usize), entries: Vec::new() };
            while let Ok(job) = rx.recv() {
                let Some(inner) = log.upgrade() else { return };
                let log = DiskLog { inner };
                let results = log.append_all(&job.records, &mut run);
                done.counts.lock().1 += 1;
                done.progress.notify_all();
                match job.reply {
                    Some(reply) => {
                        let _ = reply.send(results);
                    }
                    None => {
                        for e in results.into_iter().filter_map(Result::err) {
                            tracing::warn!("copy-forward failed: {e}");
                        }
                    }
                }
            }
        })?;
        Ok(Appender { jobs: Mutex::new(tx), tickets })
    }

    /// Waits until the jobs sent before this call are appended, or `longest` has passed (a large
    /// append in progress need not hold up the sync of the small ones before it for long).
    pub fn settle(&self, longest: Duration) {
        let deadline = std::time::Instant::now() + longest;
        let mut counts = self.tickets.counts.lock();
        loop {
            let sent = counts.0;
            if self.tickets.progress.wait_while_until(&mut counts, |(_, done)| *done < sent, deadline).timed_out() {
                return;
            }
            // The rest of a burst may be a moment behind its first append: linger while it comes.
            if self.tickets.progress.wait_until(&mut counts, deadline.min(std::time::Instant::now() + LINGER)).timed_out() {
                return;
            }
        }
    }

    /// Appends a record; returns its sequence number (for the group commit).
    pub async fn append(&self, key: Key, form: Form, payload: Chunks) -> Result<u64> {
        self.append_many(vec![(key, form, payload)]).await?.pop().ok_or_else(stopped)?
    }

    /// Appends records in order, in one job; returns each one's sequence number or error.
    pub async fn append_many(&self, records: Vec<Record>) -> Result<Vec<Result<u64>>> {
        let (reply, answer) = oneshot::channel();
        self.send(Job { records, reply: Some(reply) })?;
        answer.await.map_err(|_| stopped())
    }

    /// Appends a record without waiting (copy-forward of a hot blob: best effort).
    pub fn append_detached(&self, key: Key, form: Form, payload: Bytes) {
        if self.send(Job { records: vec![(key, form, payload.into())], reply: None }).is_err() {
            tracing::warn!("copy-forward dropped: the disk log's writer stopped");
        }
    }

    fn send(&self, job: Job) -> Result<()> {
        let jobs = self.jobs.lock();
        jobs.send(job).map_err(|_| stopped())?;
        // Counted under the sender's lock, so the count is never ahead of the channel.
        self.tickets.counts.lock().0 += 1;
        Ok(())
    }
}

fn stopped() -> StoreError {
    StoreError::Io { path: "disk log".into(), source: std::io::Error::other("the disk log's writer thread stopped") }
}

impl DiskLog {
    /// Appends records in order and publishes them in the index; returns each one's sequence number
    /// (for durability). Consecutive small records go out in one `pwrite`: a 4 KiB blob's record
    /// spans two pages, and the kernel's cost is per page a write touches. Blocking: only the writer
    /// thread (`appender`) calls it.
    fn append_all(&self, records: &[Record], run: &mut Run) -> Vec<Result<u64>> {
        let mut w = self.inner.writer.lock();
        let mut results = Vec::with_capacity(records.len());
        for (key, form, payload) in records {
            let rec = record_len(payload.len() as u64);
            let small = payload.len() <= COALESCE_LIMIT;
            let run_len = run.buf.len() as u64;
            if !small || run_len + rec > RUN_LIMIT || w.offset + run_len + rec > w.open.len() {
                results.extend(self.write_run(&mut w, run));
            }
            if w.offset + rec > w.open.len() {
                if let Err(e) = self.roll(&mut w) {
                    results.push(Err(e));
                    continue;
                }
            }
            let header = Header::new(*key, *form, payload).encode_in_segment(w.open.seed);
            let entry = IndexEntry { key: *key, offset: (w.offset + run.buf.len() as u64) as u32, len: payload.len() as u32 };
            if small {
                run.buf.extend_from_slice(&header);
                payload.pieces().for_each(|piece| run.buf.extend_from_slice(piece));
                run.buf.resize(run.buf.len() + (rec as usize - header.len() - payload.len()), 0);
                run.entries.push(entry);
                continue;
            }
            // A large payload is written from where its pieces are, the header after it.
            let written = Self::zero_ahead(&mut w, rec, true)
                .and_then(|()| w.open.write_chunks_at(w.offset + header.len() as u64, payload))
                .and_then(|()| w.open.write_at(w.offset, &header));
            results.extend(match written {
                Ok(()) => self.publish(&mut w, &[entry], rec).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(e)],
            });
        }
        results.extend(self.write_run(&mut w, run));
        results
    }

    /// Writes the records gathered in `run` at the end of the open segment, publishes them, and
    /// empties `run` for the next.
    fn write_run(&self, w: &mut Writer, run: &mut Run) -> Vec<Result<u64>> {
        if run.entries.is_empty() {
            return Vec::new();
        }
        let Run { buf, entries } = run;
        let results = match Self::zero_ahead(w, buf.len() as u64, false).and_then(|()| w.open.write_at(w.offset, buf)) {
            Ok(()) => {
                if self.syncs_writes() {
                    w.open.start_writeback(w.offset, buf.len() as u64);
                }
                self.publish(w, entries, buf.len() as u64).into_iter().map(Ok).collect()
            }
            Err(e) => e.shared_by(entries.len()).into_iter().map(Err).collect(),
        };
        buf.clear();
        entries.clear();
        results
    }

    /// Makes records just written (`len` bytes at the writer's offset) readable through the index:
    /// their sequence numbers, in order.
    fn publish(&self, w: &mut Writer, entries: &[IndexEntry], len: u64) -> Vec<u64> {
        w.offset += len;
        let open = w.open.id;
        let first = w.seq + 1;
        w.seq += entries.len() as u64;
        w.entries.extend_from_slice(entries);
        let mut st = self.inner.state.write();
        let State { index, segments, .. } = &mut *st;
        for e in entries {
            let loc = Loc { segment: open, offset: e.offset, len: e.len };
            index.insert(e.key, loc, |l| segments.get(&l.segment).and_then(|s| s.header_at(l.offset)).map(|h| h.key));
        }
        (first..=w.seq).collect()
    }

    /// Keeps the blocks ahead of the next record written, with zeros where no record is yet. A
    /// segment's blocks are preallocated but unwritten, and on ext4 an fdatasync after the first
    /// write into such blocks also commits the journal (measured here: 0.9 ms per group commit of
    /// a small batch, 0.4 ms once the blocks are written). Zeros are what an unwritten block reads
    /// as, so recovery sees the same bytes. A large record's own blocks are not zeroed first: its
    /// payload writes them, and it pays for a long sync anyway.
    fn zero_ahead(w: &mut Writer, rec: u64, large: bool) -> Result<()> {
        // A small segment is not zeroed whole at its first append.
        let ahead = ZERO_AHEAD.min(w.open.len() / 8);
        let end = w.offset + rec;
        if end + ahead / 2 <= w.zeroed_to {
            return Ok(());
        }
        let from = if large { w.zeroed_to.max(end) } else { w.zeroed_to.max(w.offset) };
        let to = (end + ahead).min(w.open.len());
        if from < to {
            w.open.write_zeros(from, to)?;
        }
        w.zeroed_to = w.zeroed_to.max(to);
        Ok(())
    }
}
