//! The copies of Commands that jobs keep to send with their leases, counted together: one stored
//! Command can be named by any number of Actions, so without a bound a client could make the
//! server hold a megabyte per queued job for a few hundred bytes of request each.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::rwapi;

/// Command bytes all jobs keep together at most: thousands of ordinary Commands (a few KB each).
/// Past it, a job keeps none, and its bot fetches the Command from the CAS.
pub const COMMAND_BYTES_HELD: usize = 64 << 20;

/// The bytes held, and the most that may be.
#[derive(Debug)]
pub struct CommandPool {
    held: AtomicUsize,
    max: usize,
}

/// A job's copy of its Command, given back to the pool when the job is gone.
#[derive(Debug)]
pub struct HeldCommand {
    bytes: Bytes,
    pool: Arc<CommandPool>,
}

impl CommandPool {
    pub fn new(max: usize) -> Arc<CommandPool> {
        Arc::new(CommandPool { held: AtomicUsize::new(0), max })
    }

    /// A copy of `encoded`, if it could ever go with a lease and the pool has room for it. A copy of
    /// its own: a view of the storage's buffer would keep more than the Command alive.
    pub fn hold(self: &Arc<Self>, encoded: &[u8]) -> Option<HeldCommand> {
        let len = encoded.len();
        if len > rwapi::COMMAND_BYTES_PER_ANSWER {
            return None;
        }
        self.held.fetch_update(Relaxed, Relaxed, |held| held.checked_add(len).filter(|total| *total <= self.max)).ok()?;
        Some(HeldCommand { bytes: Bytes::copy_from_slice(encoded), pool: self.clone() })
    }

    pub fn held(&self) -> usize {
        self.held.load(Relaxed)
    }
}

impl HeldCommand {
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }
}

impl PartialEq for HeldCommand {
    fn eq(&self, other: &Self) -> bool {
        self.bytes == other.bytes
    }
}

impl Drop for HeldCommand {
    fn drop(&mut self) {
        self.pool.held.fetch_sub(self.bytes.len(), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_held_within_the_pool_and_given_back_with_their_jobs() {
        let pool = CommandPool::new(3 << 20);
        let mib = vec![1u8; 1 << 20];
        let held: Vec<_> = (0..3).map(|_| pool.hold(&mib).expect("room for three")).collect();
        assert_eq!(held[0].bytes()[..], mib[..]);
        assert_eq!(pool.held(), 3 << 20);
        // Full: the fourth job keeps none, however small its Command.
        assert!(pool.hold(&mib).is_none());
        assert!(pool.hold(b"tiny").is_none());
        drop(held);
        assert_eq!(pool.held(), 0);
        // Never one too large to go with a lease, whatever the room.
        assert!(pool.hold(&vec![2u8; rwapi::COMMAND_BYTES_PER_ANSWER + 1]).is_none());
        assert!(pool.hold(&vec![3u8; rwapi::COMMAND_BYTES_PER_ANSWER]).is_some());
        assert_eq!(pool.held(), 0, "given back when dropped");
    }
}
