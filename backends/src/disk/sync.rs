//! Group commit. Writers that need durability wait for the next `fdatasync` of the open segment that
//! began after their append; one sync thread serves all of them, so a burst of concurrent writes pays
//! for one sync rather than one each.

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

/// What the sync thread needs from the log: the latest append sequence number and the open segment.
pub trait SyncSource: Send + Sync + 'static {
    fn latest(&self) -> (u64, Arc<Segment>);
}

pub struct GroupCommit {
    requested: Mutex<u64>,
    wake: Condvar,
    progress: watch::Sender<Progress>,
}

impl GroupCommit {
    pub fn new() -> Arc<GroupCommit> {
        Arc::new(GroupCommit { requested: Mutex::new(0), wake: Condvar::new(), progress: watch::channel(Progress::default()).0 })
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
            {
                let mut requested = this.requested.lock();
                let idle_check = Duration::from_millis(100);
                match interval {
                    Some(every) => {
                        this.wake.wait_for(&mut requested, every);
                    }
                    None => {
                        if *requested <= this.progress.borrow().synced {
                            this.wake.wait_for(&mut requested, idle_check);
                        }
                    }
                }
            }
            let Some(source) = source.upgrade() else { return };
            let (target, segment) = source.latest();
            drop(source);
            if target <= this.progress.borrow().synced {
                continue;
            }
            let result = segment.sync();
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
