//! Group commit. Writers that need durability wait for the next `fdatasync` of the open segment that
//! began after their append; one sync thread serves all of them, so a burst of concurrent writes pays
//! for one sync rather than one each.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use tokio::sync::watch;

use super::segment::Segment;
use crate::error::{Result, StoreError};

/// When the log makes appends durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncPolicy {
    /// A write is acknowledged after the group commit that covers it.
    Always,
    /// Sync every interval; a crash may lose the writes of the last interval.
    Interval(Duration),
    /// Leave it to the kernel (a cache that can be rebuilt); segments are still synced when sealed.
    Never,
}

#[derive(Clone, Debug, Default)]
struct Progress {
    synced: u64,
    failed_upto: u64,
    error: Option<Arc<str>>,
}

impl Progress {
    /// Appends up to this one have their answer: durable, or told that their sync failed.
    fn answered(&self) -> u64 {
        self.synced.max(self.failed_upto)
    }
}

/// What the sync thread needs from the log: the latest append sequence number and the open segment.
pub trait SyncSource: Send + Sync + 'static {
    fn latest(&self) -> (u64, Arc<Segment>);
    /// Lets the appends already on their way land first, so that one sync covers them all.
    fn settle(&self) {}
}

pub struct GroupCommit {
    requested: Mutex<u64>,
    syncs: AtomicU64,
    wake: Condvar,
    progress: watch::Sender<Progress>,
}

impl GroupCommit {
    pub fn new() -> Arc<GroupCommit> {
        Arc::new(GroupCommit { requested: Mutex::new(0), syncs: AtomicU64::new(0), wake: Condvar::new(), progress: watch::channel(Progress::default()).0 })
    }

    /// Starts the sync thread. It stops by itself once the source is dropped.
    pub fn start<S: SyncSource>(self: &Arc<Self>, source: Weak<S>, policy: SyncPolicy) -> std::io::Result<()> {
        let interval = match policy {
            SyncPolicy::Never => return Ok(()),
            SyncPolicy::Always => None,
            SyncPolicy::Interval(every) => Some(every),
        };
        let this = self.clone();
        std::thread::Builder::new().name("strata-disk-sync".into()).spawn(move || loop {
            let asked = {
                let mut requested = this.requested.lock();
                let idle_check = Duration::from_millis(100);
                match interval {
                    Some(every) => {
                        this.wake.wait_for(&mut requested, every);
                    }
                    None => {
                        if *requested <= this.progress.borrow().answered() {
                            this.wake.wait_for(&mut requested, idle_check);
                        }
                    }
                }
                *requested
            };
            let Some(source) = source.upgrade() else { return };
            if interval.is_none() {
                // Under `always` a sync is made when a writer waits for one, not on the idle timer
                // (which only notices that the log is gone). Appends whose sync failed have had
                // their answer: the next attempt waits for a writer that asks for a later one.
                if asked <= this.progress.borrow().answered() {
                    continue;
                }
                source.settle();
            }
            let (target, segment) = source.latest();
            drop(source);
            if target <= this.progress.borrow().synced {
                continue;
            }
            let result = segment.sync();
            this.syncs.fetch_add(1, Ordering::Relaxed);
            this.progress.send_modify(|p| match result {
                Ok(()) => p.synced = p.synced.max(target),
                Err(e) => {
                    tracing::error!("disk log sync failed: {e}");
                    p.failed_upto = target;
                    p.error = Some(e.to_string().into());
                }
            });
        })?;
        Ok(())
    }

    /// Group commits made so far.
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Waits until append number `seq` is durable.
    pub async fn wait(&self, seq: u64) -> Result<()> {
        {
            let mut requested = self.requested.lock();
            *requested = (*requested).max(seq);
        }
        self.wake.notify_one();
        let mut rx = self.progress.subscribe();
        let progress = rx
            .wait_for(|p| p.synced >= seq || p.failed_upto >= seq)
            .await
            .map_err(|_| StoreError::Config("the disk log's sync thread stopped".into()))?
            .clone();
        match progress.error {
            Some(error) if progress.synced < seq => Err(StoreError::Io {
                path: "disk log".into(),
                source: std::io::Error::other(error.to_string()),
            }),
            _ => Ok(()),
        }
    }
}
