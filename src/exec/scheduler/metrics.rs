//! What the scheduler tells the metrics and the admin API: counters and histograms updated as jobs
//! move (queue time, execution time, outcomes), and a snapshot of the queue and the bots taken on
//! request.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use strata_backends::Digest;
use tokio::time::Duration;

use super::types::Outcome;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

#[derive(Clone)]
pub struct SchedulerMetrics {
    pub completed: Family<ResultLabel, Counter>,
    pub queue_time: Histogram,
    pub execution_time: Histogram,
}

impl Default for SchedulerMetrics {
    fn default() -> Self {
        // 1 ms to ~4.6 h: actions range from `true` to long links and test shards.
        let buckets = || exponential_buckets(0.001, 3.0, 16);
        SchedulerMetrics { completed: Family::default(), queue_time: Histogram::new(buckets()), execution_time: Histogram::new(buckets()) }
    }
}

impl SchedulerMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "strata_scheduler_completed",
            "Operations completed, by result (success, failed: non-zero exit, error, cancelled, cached)",
            self.completed.clone(),
        );
        registry.register("strata_scheduler_queue_seconds", "Time jobs waited for a bot", self.queue_time.clone());
        registry.register("strata_scheduler_execution_seconds", "Time from a lease to its result", self.execution_time.clone());
    }

    pub fn completed(&self, result: &'static str) {
        self.completed.get_or_create(&ResultLabel { result }).inc();
    }

    pub fn queued_for(&self, waited: Duration) {
        self.queue_time.observe(waited.as_secs_f64());
    }

    pub fn executed_for(&self, took: Duration) {
        self.execution_time.observe(took.as_secs_f64());
    }
}

/// The result label of an outcome.
pub fn result_of(outcome: &Outcome) -> &'static str {
    match outcome {
        Outcome::Response(r) if r.status.as_ref().is_some_and(|s| s.code != 0) => "error",
        Outcome::Response(r) if r.cached_result => "cached",
        Outcome::Response(r) if r.result.as_ref().is_some_and(|a| a.exit_code != 0) => "failed",
        Outcome::Response(_) => "success",
        Outcome::Error(tonic::Code::Cancelled, _) => "cancelled",
        Outcome::Error(..) => "error",
    }
}

/// The queue and the bots as they are now.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// Waiting jobs by instance and platform.
    pub queued: Vec<QueuedGroup>,
    pub running: Vec<RunningJob>,
    pub bots: Vec<BotSnapshot>,
    pub operations: usize,
}

#[derive(Clone, Debug)]
pub struct QueuedGroup {
    pub instance: String,
    pub platform: Vec<(String, String)>,
    pub jobs: usize,
}

#[derive(Clone, Debug)]
pub struct RunningJob {
    pub instance: String,
    pub action_digest: Digest,
    pub bot_id: String,
    pub running_for: Duration,
}

#[derive(Clone, Debug)]
pub struct BotSnapshot {
    pub session: String,
    pub bot_id: String,
    pub instance: String,
    pub status: String,
    pub capacity: usize,
    pub busy: usize,
    pub properties: Vec<(String, String)>,
    pub last_seen: Duration,
}
