//! Prometheus metrics. Counters that change with requests live in `Metrics` and are updated where
//! the event happens (the RPC layer, the cache lookups, the upstream tiers, the scheduler); figures
//! that describe state (what each tier holds, the queue, the bots, the process) are read when
//! `/metrics` is scraped, by the collectors of `Exporter`, so that no request pays for them.

mod collectors;
pub mod rpc;

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use strata_backends::UpstreamMetrics;

use crate::exec::scheduler::Scheduler;
use crate::storage::Storage;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct Lookup {
    pub instance: String,
    /// `action_cache`, `cas` or `asset`.
    pub cache: &'static str,
    /// What asked: `get` (GetActionResult), `execute` (Execute's cache check), `find_missing`,
    /// `read` (ByteStream and batch reads), `fetch` (Remote Asset).
    pub op: &'static str,
    pub result: &'static str,
}

/// The event counters of one server.
pub struct Metrics {
    pub rpc: rpc::RpcMetrics,
    pub lookups: Family<Lookup, Counter>,
    pub upstream: UpstreamMetrics,
    pub started: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics { rpc: rpc::RpcMetrics::default(), lookups: Family::default(), upstream: UpstreamMetrics::default(), started: Instant::now() }
    }
}

impl Metrics {
    /// Counts `hits` hits and `misses` misses of one kind of lookup.
    pub fn looked_up(&self, instance: &str, cache: &'static str, op: &'static str, hits: u64, misses: u64) {
        for (result, n) in [("hit", hits), ("miss", misses)] {
            if n > 0 {
                self.lookups.get_or_create(&Lookup { instance: instance.to_string(), cache, op, result }).inc_by(n);
            }
        }
    }
}

/// Everything `/metrics` shows, registered once when the server starts.
pub struct Exporter {
    registry: Registry,
}

impl Exporter {
    pub fn new(metrics: &Metrics, stacks: Vec<Arc<Storage>>, scheduler: Option<Arc<Scheduler>>) -> Exporter {
        let mut registry = Registry::default();
        metrics.rpc.register(&mut registry);
        registry.register(
            "strata_cache_lookups",
            "Lookups by cache (action_cache, cas, asset), operation and result; the action cache apart from the CAS",
            metrics.lookups.clone(),
        );
        metrics.upstream.register(&mut registry);
        if let Some(scheduler) = &scheduler {
            scheduler.metrics().register(&mut registry);
        }
        registry.register_collector(Box::new(collectors::Tiers(stacks)));
        if let Some(scheduler) = scheduler {
            registry.register_collector(Box::new(collectors::SchedulerState(scheduler)));
        }
        registry.register_collector(Box::new(collectors::Process { started: metrics.started }));
        Exporter { registry }
    }

    /// The text exposition. Reads `/proc`: call it off the async runtime.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        out
    }
}
