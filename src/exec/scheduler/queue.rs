//! The queue of jobs waiting for a bot, indexed by what they need (instance and platform): a bot
//! asking for work looks only at the platforms it can run, and takes the best job of those (lower
//! priority value first, then arrival). Kept in arrival order too, for the queue timeout.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use tokio::time::Instant;

/// What a job needs of a bot: its instance and platform properties (sorted, so equal needs are one key).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Needs {
    pub instance: String,
    pub platform: Vec<(String, String)>,
}

impl Needs {
    pub fn new(instance: String, mut platform: Vec<(String, String)>) -> Arc<Needs> {
        platform.sort();
        platform.dedup();
        Arc::new(Needs { instance, platform })
    }
}

#[derive(Default)]
pub struct Queue {
    by_needs: HashMap<Arc<Needs>, BTreeSet<(i32, u64)>>,
    entries: HashMap<u64, (Arc<Needs>, i32, Instant)>,
    by_age: BTreeSet<(Instant, u64)>,
}

impl Queue {
    pub fn push(&mut self, id: u64, needs: Arc<Needs>, priority: i32, now: Instant) {
        self.remove(id);
        self.by_needs.entry(needs.clone()).or_default().insert((priority, id));
        self.by_age.insert((now, id));
        self.entries.insert(id, (needs, priority, now));
    }

    /// When a waiting job was queued.
    pub fn queued_at(&self, id: u64) -> Option<Instant> {
        self.entries.get(&id).map(|e| e.2)
    }

    /// How many jobs wait for each set of needs.
    pub fn by_needs(&self) -> impl Iterator<Item = (&Needs, usize)> {
        self.by_needs.iter().filter(|(_, jobs)| !jobs.is_empty()).map(|(needs, jobs)| (needs.as_ref(), jobs.len()))
    }

    pub fn remove(&mut self, id: u64) {
        let Some((needs, priority, since)) = self.entries.remove(&id) else { return };
        self.by_age.remove(&(since, id));
        if let Some(group) = self.by_needs.get_mut(&needs) {
            group.remove(&(priority, id));
            if group.is_empty() {
                self.by_needs.remove(&needs);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// The best queued job among the needs that `can_run` accepts.
    pub fn best(&self, can_run: impl Fn(&Needs) -> bool) -> Option<u64> {
        self.by_needs
            .iter()
            .filter(|(needs, _)| can_run(needs))
            .filter_map(|(_, group)| group.first())
            .min()
            .map(|&(_, id)| id)
    }

    /// Jobs queued before `cutoff`, oldest first.
    pub fn queued_before(&self, cutoff: Instant) -> Vec<u64> {
        self.by_age.iter().take_while(|(since, _)| *since < cutoff).map(|&(_, id)| id).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn needs(instance: &str, platform: &[(&str, &str)]) -> Arc<Needs> {
        Needs::new(instance.into(), platform.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    #[test]
    fn the_best_job_among_the_needs_a_bot_can_meet() {
        let mut queue = Queue::default();
        let now = Instant::now();
        let (linux, mac) = (needs("", &[("OSFamily", "linux")]), needs("", &[("OSFamily", "macos")]));
        queue.push(1, linux.clone(), 0, now);
        queue.push(2, mac.clone(), -5, now);
        queue.push(3, linux.clone(), -1, now);
        queue.push(4, linux.clone(), -1, now);
        assert_eq!(queue.best(|n| *n == *linux), Some(3), "priority first, then arrival");
        assert_eq!(queue.best(|_| true), Some(2));
        assert_eq!(queue.best(|n| n.instance == "other"), None);
        queue.remove(3);
        queue.remove(3);
        assert_eq!(queue.best(|n| *n == *linux), Some(4));
        assert_eq!(queue.len(), 3);
        // Equal needs, whatever the order they were written in, are one group.
        assert_eq!(needs("", &[("a", "1"), ("b", "2")]), needs("", &[("b", "2"), ("a", "1")]));
    }

    #[test]
    fn age_is_arrival_and_a_push_again_restarts_it() {
        let mut queue = Queue::default();
        let start = Instant::now();
        let n = needs("", &[]);
        queue.push(1, n.clone(), 0, start);
        queue.push(2, n.clone(), 0, start + Duration::from_secs(5));
        assert_eq!(queue.queued_before(start + Duration::from_secs(1)), vec![1]);
        queue.push(1, n, 0, start + Duration::from_secs(10));
        assert_eq!(queue.queued_before(start + Duration::from_secs(6)), vec![2]);
        assert_eq!(queue.len(), 2);
    }
}
