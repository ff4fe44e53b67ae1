//! The disk log's one writer. Appends run on a thread of their own, fed by a channel, so that no
//! `pwrite`, segment roll (fdatasync, index file, preallocation) or eviction runs on the async
//! runtime; callers await the append's sequence number and then, under `sync: always`, the group
//! commit that covers it. Copy-forward appends are sent without waiting for an answer. The sync
//! thread may `settle` first, so that one sync covers a whole burst (a BatchUpdate's blobs) rather
//! than the first few appends of it.

use std::sync::mpsc;
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Condvar, Mutex};
use tokio::sync::oneshot;

use super::record::Form;
use super::{DiskLog, Inner};
use crate::digest::Key;
use crate::error::{Result, StoreError};

/// How long a group commit waits for more appends once those sent are in.
const LINGER: Duration = Duration::from_micros(50);

struct Job {
    key: Key,
    form: Form,
    payload: Bytes,
    reply: Option<oneshot::Sender<Result<u64>>>,
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
            while let Ok(job) = rx.recv() {
                let Some(inner) = log.upgrade() else { return };
                let result = DiskLog { inner }.append(&job.key, job.form, &job.payload);
                done.counts.lock().1 += 1;
                done.progress.notify_all();
                match job.reply {
                    Some(reply) => {
                        let _ = reply.send(result);
                    }
                    None => {
                        if let Err(e) = result {
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
    pub async fn append(&self, key: Key, form: Form, payload: Bytes) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.send(Job { key, form, payload, reply: Some(reply) })?;
        answer.await.map_err(|_| stopped())?
    }

    /// Appends a record without waiting (copy-forward of a hot blob: best effort).
    pub fn append_detached(&self, key: Key, form: Form, payload: Bytes) {
        if self.send(Job { key, form, payload, reply: None }).is_err() {
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
