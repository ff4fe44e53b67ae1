//! The figures read at scrape time: each tier's holdings and counters, the scheduler's queue and bots,
//! and the process's memory and descriptors.

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

use crate::exec::scheduler::Scheduler;
use crate::storage::Storage;

type Labels<'a> = Vec<(&'static str, &'a str)>;

/// Writes one metric family from (labels, value) pairs.
fn family<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    values: impl IntoIterator<Item = (Labels<'a>, u64)>,
) -> Result<(), std::fmt::Error> {
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in values {
        let sample = metric.encode_family(&labels)?;
        match kind {
            MetricType::Counter => ConstCounter::new(value).encode(sample)?,
            _ => ConstGauge::new(value as i64).encode(sample)?,
        }
    }
    Ok(())
}

pub struct Tiers(pub Vec<Arc<Storage>>);

impl std::fmt::Debug for Tiers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tiers")
    }
}

impl Collector for Tiers {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let now = SystemTime::now();
        let rows: Vec<(Labels, strata_backends::StoreStats)> = self
            .0
            .iter()
            .flat_map(|stack| {
                stack.tiers.iter().map(|t| {
                    (vec![("storage", stack.name.as_str()), ("role", t.role), ("tier", t.name.as_str()), ("kind", t.kind)], t.store.stats())
                })
            })
            .collect();
        let each = |pick: fn(&strata_backends::StoreStats) -> u64| rows.iter().map(move |(l, s)| (l.clone(), pick(s)));
        use MetricType::{Counter, Gauge};
        family(&mut encoder, "strata_tier_blobs", "Blobs held by each tier", Gauge, each(|s| s.blobs))?;
        family(&mut encoder, "strata_tier_bytes", "Bytes held by each tier (stored bytes)", Gauge, each(|s| s.bytes))?;
        family(&mut encoder, "strata_tier_hits", "Lookups that found the blob in this tier", Counter, each(|s| s.hits))?;
        family(&mut encoder, "strata_tier_misses", "Lookups that did not find the blob in this tier", Counter, each(|s| s.misses))?;
        family(&mut encoder, "strata_tier_evictions", "Blobs evicted from this tier", Counter, each(|s| s.evictions))?;
        family(&mut encoder, "strata_tier_written_bytes", "Bytes written to this tier", Counter, each(|s| s.bytes_written))?;
        let stored = "What the bytes written took where they were stored (less where the tier compresses)";
        family(&mut encoder, "strata_tier_stored_written_bytes", stored, Counter, each(|s| s.stored_bytes_written))?;
        family(&mut encoder, "strata_tier_retries", "Upstream calls retried after a transient failure", Counter, each(|s| s.retries))?;
        family(&mut encoder, "strata_tier_syncs", "fdatasync calls of a disk tier's group commits", Counter, each(|s| s.syncs))?;
        family(&mut encoder, "strata_tier_spooled", "Uploads queued for an upstream that was unavailable", Gauge, each(|s| s.spooled))?;
        let ages = rows.iter().filter_map(|(l, s)| Some((l.clone(), now.duration_since(s.oldest?).unwrap_or_default().as_secs())));
        family(&mut encoder, "strata_tier_oldest_age_seconds", "Age of the oldest data a tier holds (retention)", Gauge, ages)
    }
}

pub struct SchedulerState(pub Arc<Scheduler>);

impl std::fmt::Debug for SchedulerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SchedulerState")
    }
}

impl Collector for SchedulerState {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let snapshot = self.0.snapshot();
        let platforms: Vec<(String, String, u64)> = snapshot
            .queued
            .iter()
            .map(|g| {
                let platform = g.platform.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",");
                (g.instance.clone(), platform, g.jobs as u64)
            })
            .collect();
        let queued = platforms.iter().map(|(i, p, n)| (vec![("instance", i.as_str()), ("platform", p.as_str())], *n));
        family(&mut encoder, "strata_scheduler_queued", "Jobs waiting for a bot, by instance and platform", MetricType::Gauge, queued)?;
        let running = [(vec![], snapshot.running.len() as u64)];
        family(&mut encoder, "strata_scheduler_running", "Jobs running on bots", MetricType::Gauge, running)?;
        let commands = [(vec![], self.0.commands().held() as u64)];
        family(&mut encoder, "strata_scheduler_command_bytes", "Bytes of Commands jobs keep to send with their leases", MetricType::Gauge, commands)?;
        let bots = snapshot.bots.iter().map(|b| (vec![("instance", b.instance.as_str())], 1));
        let mut per_instance: std::collections::BTreeMap<Labels, u64> = std::collections::BTreeMap::new();
        for (labels, n) in bots {
            *per_instance.entry(labels).or_default() += n;
        }
        family(&mut encoder, "strata_bots_connected", "Bot sessions, by instance", MetricType::Gauge, per_instance)?;
        let leases = snapshot.bots.iter().map(|b| (vec![("bot", b.bot_id.as_str()), ("session", b.session.as_str())], b.busy as u64));
        family(&mut encoder, "strata_bot_leases", "Leases each bot session holds", MetricType::Gauge, leases)
    }
}

pub struct Process {
    pub started: Instant,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Process")
    }
}

/// Resident memory from `/proc/self/statm` (its second field, in pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

impl Collector for Process {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let fds = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
        family(&mut encoder, "process_open_fds", "Open file descriptors", MetricType::Gauge, [(vec![], fds)])?;
        if let Some(rss) = resident_bytes() {
            family(&mut encoder, "process_resident_memory_bytes", "Resident memory", MetricType::Gauge, [(vec![], rss)])?;
        }
        let uptime = self.started.elapsed().as_secs();
        family(&mut encoder, "strata_uptime_seconds", "Seconds since the server started", MetricType::Gauge, [(vec![], uptime)])
    }
}
