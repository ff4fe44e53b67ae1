//! The disk log's one writer. Appends run on a thread of their own, fed by a channel, so that no
//! `pwrite`, segment roll (fdatasync, index file, preallocation) or eviction runs on the async
//! runtime; callers await the append's sequence number and then, under `sync: always`, the group
//! commit that covers it. Copy-forward appends are sent without waiting for an answer.

use std::sync::mpsc;
use std::sync::Weak;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::record::Form;
use super::{DiskLog, Inner};
use crate::digest::Key;
use crate::error::{Result, StoreError};

struct Job {
    key: Key,
    form: Form,
    payload: Bytes,
    reply: Option<oneshot::Sender<Result<u64>>>,
}

pub struct Appender {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Appender {
    /// Starts the writer thread; it ends when the log (and so this appender) is dropped.
    pub fn start(log: Weak<Inner>, name: &str) -> std::io::Result<Appender> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new().name(format!("strata-disk-{name}")).spawn(move || {
            while let Ok(job) = rx.recv() {
                let Some(inner) = log.upgrade() else { return };
                let result = DiskLog { inner }.append(&job.key, job.form, &job.payload);
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
        Ok(Appender { jobs: Mutex::new(tx) })
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
        self.jobs.lock().send(job).map_err(|_| stopped())
    }
}

fn stopped() -> StoreError {
    StoreError::Io { path: "disk log".into(), source: std::io::Error::other("the disk log's writer thread stopped") }
}
