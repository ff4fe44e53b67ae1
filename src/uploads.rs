//! Interrupted ByteStream uploads, parked so that their clients can resume them from the committed
//! size. Parking is bounded three ways, because an abandoned upload holds what it received (memory
//! for a small blob, a temporary file and disk budget for a large one): a time to live, enforced by
//! a timer whether or not other uploads come; a number of uploads; and a number of bytes. Over a
//! bound the oldest parked upload goes first; its client starts again from offset 0.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// The bounds of parking (configuration keys `resumable_upload_ttl`, `resumable_uploads_max` and
/// `resumable_uploads_max_bytes`).
#[derive(Clone, Copy, Debug)]
pub struct ParkingLimits {
    pub ttl: Duration,
    pub max_uploads: usize,
    pub max_bytes: u64,
}

pub struct Parking<U> {
    limits: ParkingLimits,
    parked: Arc<Mutex<HashMap<String, Parked<U>>>>,
}

struct Parked<U> {
    upload: U,
    bytes: u64,
    since: Instant,
}

impl<U: Send + 'static> Parking<U> {
    /// A parking whose expired uploads are dropped by a timer task (when there is a runtime; it
    /// ends with the parking).
    pub fn new(limits: ParkingLimits) -> Parking<U> {
        let parked = Arc::new(Mutex::new(HashMap::new()));
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(expire_loop(Arc::downgrade(&parked), limits.ttl));
        }
        Parking { limits, parked }
    }

    /// Parks `upload`, which holds `bytes`, under `name`; evicts the oldest over the bounds.
    pub fn park(&self, name: String, upload: U, bytes: u64) {
        let evicted = {
            let mut parked = self.parked.lock();
            parked.insert(name, Parked { upload, bytes, since: Instant::now() });
            let mut evicted = Vec::new();
            let mut total: u64 = parked.values().map(|p| p.bytes).sum();
            while parked.len() > self.limits.max_uploads || total > self.limits.max_bytes {
                let Some(oldest) = parked.iter().min_by_key(|(_, p)| p.since).map(|(n, _)| n.clone()) else { break };
                if let Some(p) = parked.remove(&oldest) {
                    total -= p.bytes;
                    tracing::info!(upload = %oldest, bytes = p.bytes, "parked upload dropped: too many parked uploads");
                    evicted.push(p);
                }
            }
            evicted
        };
        // Dropping an upload can remove a temporary file: not under the lock.
        drop(evicted);
    }

    /// Takes the upload parked under `name`, if it has not expired.
    pub fn take(&self, name: &str) -> Option<U> {
        let parked = self.parked.lock().remove(name)?;
        (parked.since.elapsed() < self.limits.ttl).then_some(parked.upload)
    }

    /// The bytes the upload parked under `name` holds, if it has not expired.
    pub fn committed(&self, name: &str) -> Option<u64> {
        let parked = self.parked.lock();
        parked.get(name).filter(|p| p.since.elapsed() < self.limits.ttl).map(|p| p.bytes)
    }

    /// Uploads parked now (expired ones included until the timer drops them).
    pub fn len(&self) -> usize {
        self.parked.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

async fn expire_loop<U>(parked: Weak<Mutex<HashMap<String, Parked<U>>>>, ttl: Duration) {
    let mut tick = tokio::time::interval((ttl / 4).clamp(Duration::from_millis(50), Duration::from_secs(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(parked) = parked.upgrade() else { return };
        let expired: Vec<Parked<U>> = {
            let mut parked = parked.lock();
            let names: Vec<String> = parked.iter().filter(|(_, p)| p.since.elapsed() >= ttl).map(|(n, _)| n.clone()).collect();
            names.iter().filter_map(|n| parked.remove(n)).collect()
        };
        drop(expired);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An upload that counts its drops, as a real one releases its buffer or temporary file.
    struct Counted(Arc<AtomicUsize>);
    impl Drop for Counted {
        fn drop(&mut self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn limits(ttl_ms: u64, max_uploads: usize, max_bytes: u64) -> ParkingLimits {
        ParkingLimits { ttl: Duration::from_millis(ttl_ms), max_uploads, max_bytes }
    }

    #[tokio::test]
    async fn expired_uploads_are_dropped_by_the_timer_without_other_calls() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let parking = Parking::new(limits(100, 10, 1 << 20));
        for i in 0..5 {
            parking.park(format!("u{i}"), Counted(dropped.clone()), 10);
        }
        assert_eq!(parking.committed("u0"), Some(10));
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(dropped.load(Ordering::SeqCst), 5, "every expired upload released what it held");
        assert!(parking.is_empty());
        assert!(parking.take("u1").is_none());
    }

    #[tokio::test]
    async fn the_oldest_go_first_over_the_count_or_the_bytes() {
        let dropped = Arc::new(AtomicUsize::new(0));
        let parking = Parking::new(limits(60_000, 3, 100));
        for i in 0..5 {
            parking.park(format!("u{i}"), Counted(dropped.clone()), 1);
        }
        assert_eq!(parking.len(), 3);
        assert!(parking.committed("u0").is_none() && parking.committed("u1").is_none());
        assert_eq!(parking.committed("u4"), Some(1));
        // 99 bytes more than fit with what is parked: the oldest give way.
        parking.park("big".into(), Counted(dropped.clone()), 99);
        assert_eq!(parking.committed("big"), Some(99));
        assert!(parking.len() <= 2);
        assert!(parking.take("big").is_some());
        assert!(parking.take("big").is_none(), "taken once");
    }
}
