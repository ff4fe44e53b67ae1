//! One piece of work per key at a time: callers that ask for a key whose work is under way wait for
//! it and share its result instead of repeating it (the tier stack's fills: a hundred readers of one
//! blob that is only upstream cause one download). A failure is not shared as a result: the next
//! waiter tries again.

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::OnceCell;

pub struct SingleFlight<K, V> {
    flights: Mutex<HashMap<K, Arc<OnceCell<V>>>>,
}

impl<K, V> Default for SingleFlight<K, V> {
    fn default() -> Self {
        SingleFlight { flights: Mutex::new(HashMap::new()) }
    }
}

impl<K: Hash + Eq + Clone, V: Clone> SingleFlight<K, V> {
    /// Runs `work` for `key` unless it already runs, and returns its result either way.
    pub async fn run<E, F, Fut>(&self, key: K, work: F) -> Result<V, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        let cell = self.flights.lock().entry(key.clone()).or_default().clone();
        let result = cell.get_or_try_init(work).await.cloned();
        // The finished flight goes, so later callers start afresh (unless a newer one took its place).
        let mut flights = self.flights.lock();
        if flights.get(&key).is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            flights.remove(&key);
        }
        result
    }

    /// Flights under way, for tests and stats.
    pub fn in_flight(&self) -> usize {
        self.flights.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn concurrent_callers_share_one_run() {
        let flights = Arc::new(SingleFlight::<u32, u32>::default());
        let runs = Arc::new(AtomicUsize::new(0));
        let callers: Vec<_> = (0..50)
            .map(|_| {
                let (flights, runs) = (flights.clone(), runs.clone());
                tokio::spawn(async move {
                    flights
                        .run(7, || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Ok::<_, ()>(42)
                        })
                        .await
                })
            })
            .collect();
        for caller in callers {
            assert_eq!(caller.await.unwrap(), Ok(42));
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(flights.in_flight(), 0, "a finished flight is removed");
        // Once finished, the next call runs afresh.
        assert_eq!(flights.run(7, || async { Ok::<_, ()>(43) }).await, Ok(43));
    }

    #[tokio::test]
    async fn different_keys_run_apart_and_failures_are_retried() {
        let flights = SingleFlight::<u32, u32>::default();
        let (a, b) = tokio::join!(flights.run(1, || async { Ok::<_, ()>(1) }), flights.run(2, || async { Ok::<_, ()>(2) }));
        assert_eq!((a, b), (Ok(1), Ok(2)));
        assert_eq!(flights.run(3, || async { Err::<u32, _>("down") }).await, Err("down"));
        assert_eq!(flights.run(3, || async { Ok::<_, &str>(3) }).await, Ok(3));
        assert_eq!(flights.in_flight(), 0);
    }
}
