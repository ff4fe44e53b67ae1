//! The result of a run: throughput, latency percentiles and errors, as a table or JSON.

use std::sync::atomic::Ordering;

use serde::Serialize;

use super::{Plan, Totals};

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: String,
    pub endpoint: String,
    pub concurrency: usize,
    pub duration_s: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub bytes_per_sec: f64,
    /// Bytes per second on the wire: below `bytes_per_sec` when blobs travel compressed.
    pub wire_bytes_per_sec: f64,
    /// Blobs, digests or actions per second, depending on the scenario.
    pub items_per_sec: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_error: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

impl Report {
    pub fn new(plan: &Plan, totals: &Totals, mut latencies: Vec<f64>, secs: f64, first_error: Option<String>) -> Report {
        latencies.sort_by(f64::total_cmp);
        let per_sec = |n: u64| n as f64 / secs;
        Report {
            scenario: plan.args.scenario.clone(),
            endpoint: match plan.args.scenario.as_str() {
                "baseline" => "raw TCP on 127.0.0.1".into(),
                "baseline-spawn" => "local processes".into(),
                _ => plan.args.endpoint.clone(),
            },
            concurrency: plan.args.concurrency,
            duration_s: secs,
            ops: totals.ops.load(Ordering::Relaxed),
            ops_per_sec: per_sec(totals.ops.load(Ordering::Relaxed)),
            bytes_per_sec: per_sec(totals.bytes.load(Ordering::Relaxed)),
            wire_bytes_per_sec: per_sec(totals.wire.load(Ordering::Relaxed)),
            items_per_sec: per_sec(totals.items.load(Ordering::Relaxed)),
            p50_ms: percentile(&latencies, 50.0),
            p90_ms: percentile(&latencies, 90.0),
            p99_ms: percentile(&latencies, 99.0),
            errors: totals.errors.load(Ordering::Relaxed),
            first_error,
        }
    }

    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<14} {:>12} {:>12} {:>12} {:>14} {:>9} {:>9} {:>9} {:>7}\n",
            "scenario", "ops/s", "MB/s", "wire MB/s", "items/s", "p50 ms", "p90 ms", "p99 ms", "errors"
        );
        out += &format!(
            "{:<14} {:>12.1} {:>12.1} {:>12.1} {:>14.0} {:>9.3} {:>9.3} {:>9.3} {:>7}\n",
            self.scenario,
            self.ops_per_sec,
            self.bytes_per_sec / 1e6,
            self.wire_bytes_per_sec / 1e6,
            self.items_per_sec,
            self.p50_ms,
            self.p90_ms,
            self.p99_ms,
            self.errors
        );
        if let Some(e) = &self.first_error {
            out += &format!("first error: {e}\n");
        }
        out
    }
}
