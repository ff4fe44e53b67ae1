//! Metering of an upstream tier (remote REAPI, S3): every call counted by operation and outcome,
//! with its latency, into metric families the server registers and exports. It sits directly on the
//! upstream, below verification and caching, so that it sees the calls that really leave the process.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::digest::Digest;
use crate::error::Result;
use crate::store::{ActionCacheStore, Blob, BlobStore, BlobWriter, StoreStats};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamCall {
    pub tier: String,
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamOp {
    pub tier: String,
    pub op: &'static str,
}

/// The upstream call metrics of a server, shared by all its upstream tiers.
#[derive(Clone)]
pub struct UpstreamMetrics {
    calls: Family<UpstreamCall, Counter>,
    latency: Family<UpstreamOp, Histogram>,
}

impl Default for UpstreamMetrics {
    fn default() -> Self {
        UpstreamMetrics {
            calls: Family::default(),
            // 100 µs to ~26 s.
            latency: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.0001, 4.0, 10))),
        }
    }
}

impl UpstreamMetrics {
    pub fn register(&self, registry: &mut Registry) {
        registry.register("strata_upstream_calls", "Calls to upstream tiers, by operation and result", self.calls.clone());
        registry.register("strata_upstream_call_seconds", "Latency of calls to upstream tiers", self.latency.clone());
    }

    fn record_outcome(&self, tier: &str, op: &'static str, started: Instant, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.calls.get_or_create(&UpstreamCall { tier: tier.to_string(), op, result }).inc();
        self.latency.get_or_create(&UpstreamOp { tier: tier.to_string(), op }).observe(started.elapsed().as_secs_f64());
    }
}

/// An upstream's CAS (`Metered<dyn BlobStore>`) or action cache (`Metered<dyn ActionCacheStore>`),
/// metered.
pub struct Metered<S: ?Sized = dyn BlobStore> {
    inner: Arc<S>,
    tier: String,
    metrics: UpstreamMetrics,
}

impl<S: ?Sized> Metered<S> {
    pub fn new(inner: Arc<S>, tier: impl Into<String>, metrics: UpstreamMetrics) -> Self {
        Metered { inner, tier: tier.into(), metrics }
    }

    /// Awaits one call to the upstream and counts it under `op`, with its outcome and latency.
    async fn timed<T>(&self, op: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
        let started = Instant::now();
        let outcome = call.await;
        self.metrics.record_outcome(&self.tier, op, started, outcome.is_ok());
        outcome
    }
}

#[async_trait]
impl ActionCacheStore for Metered<dyn ActionCacheStore> {
    async fn get(&self, action: &Digest) -> Result<Option<Bytes>> {
        self.timed("get_action_result", self.inner.get(action)).await
    }

    async fn put(&self, action: &Digest, value: Bytes) -> Result<()> {
        self.timed("update_action_result", self.inner.put(action, value)).await
    }
}

#[async_trait]
impl BlobStore for Metered<dyn BlobStore> {
    async fn contains(&self, digests: &[Digest]) -> Result<Vec<bool>> {
        self.timed("contains", self.inner.contains(digests)).await
    }

    async fn read(&self, digest: &Digest, offset: u64, limit: Option<u64>) -> Result<Option<Blob>> {
        self.timed("read", self.inner.read(digest, offset, limit)).await
    }

    async fn write(&self, digest: &Digest, data: Bytes) -> Result<()> {
        self.timed("write", self.inner.write(digest, data)).await
    }

    /// Counted as one call (a batch goes up in one, or a few), an error if any blob failed.
    async fn write_many(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        let started = Instant::now();
        let outcomes = self.inner.write_many(blobs).await;
        self.metrics.record_outcome(&self.tier, "write_batch", started, outcomes.iter().all(Result::is_ok));
        outcomes
    }

    async fn writer(&self, digest: &Digest) -> Result<Box<dyn BlobWriter>> {
        self.timed("start_write", self.inner.writer(digest)).await
    }

    fn stats(&self) -> StoreStats {
        self.inner.stats()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::DigestFunction;
    use crate::layers::testing::DOWN;
    use crate::memory::MemoryStore;

    #[tokio::test]
    async fn counts_calls_by_outcome() {
        let metrics = UpstreamMetrics::default();
        let (store, gone): (Arc<dyn BlobStore>, Arc<dyn BlobStore>) = (Arc::new(MemoryStore::new(1 << 20)), Arc::new(DOWN));
        let up = Metered::new(store, "up", metrics.clone());
        let down = Metered::new(gone, "down", metrics.clone());
        let d = DigestFunction::Sha256.digest_of(b"x");
        up.write(&d, Bytes::from_static(b"x")).await.unwrap();
        up.contains(&[d]).await.unwrap();
        assert!(down.contains(&[d]).await.is_err());
        let count = |tier: &str, op, result| metrics.calls.get_or_create(&UpstreamCall { tier: tier.into(), op, result }).get();
        assert_eq!((count("up", "write", "ok"), count("up", "contains", "ok")), (1, 1));
        assert_eq!((count("down", "contains", "error"), count("down", "contains", "ok")), (1, 0));
        // A batch is one call, an error if any of its blobs failed.
        let e = DigestFunction::Sha256.digest_of(b"e");
        assert!(up.write_many(vec![(d, Bytes::from_static(b"x")), (e, Bytes::from_static(b"e"))]).await.iter().all(Result::is_ok));
        assert!(down.write_many(vec![(d, Bytes::from_static(b"x")), (e, Bytes::from_static(b"e"))]).await.iter().all(Result::is_err));
        assert_eq!((count("up", "write_batch", "ok"), count("down", "write_batch", "error"), count("up", "write", "ok")), (1, 1, 1));

        let cache: Arc<dyn ActionCacheStore> = Arc::new(MemoryStore::new(1 << 20));
        let ac = Metered::new(cache, "up", metrics.clone());
        ac.put(&d, Bytes::from_static(b"result")).await.unwrap();
        assert_eq!(ac.get(&d).await.unwrap().as_deref(), Some(&b"result"[..]));
        assert_eq!(ac.get(&DigestFunction::Sha256.digest_of(b"y")).await.unwrap(), None);
        assert_eq!((count("up", "update_action_result", "ok"), count("up", "get_action_result", "ok")), (1, 2));
        let down: Arc<dyn ActionCacheStore> = Arc::new(DOWN);
        assert!(Metered::new(down, "down", metrics.clone()).get(&d).await.is_err());
        assert_eq!(count("down", "get_action_result", "error"), 1);
    }
}
