//! Builds the storage trees that the configuration describes. This is the only code that knows how
//! tiers are stacked; everything else sees a `BlobStore` and an `ActionCacheStore`.

use std::collections::BTreeMap;
use std::sync::Arc;

use strata_backends::action_cache::TieredActionCache;
use strata_backends::disk::{DiskConfig, DiskLog};
use strata_backends::memory::{Admission, MemoryStore};
use strata_backends::remote::{RemoteConfig, RemoteStore};
use strata_backends::s3::{S3Config, S3Store};
use strata_backends::spool::Spooled;
use strata_backends::tiered::{Tier, TieredStore};
use strata_backends::{ActionCacheStore, BlobStore, StoreError};

use crate::config::{parse_sync, Config, DiskTierConfig, RemoteTierConfig, S3TierConfig, TierConfig};

/// The memory tier keeps blobs up to this size unless configured otherwise.
const DEFAULT_MEMORY_MAX_BLOB: u64 = 1 << 20;

/// One named storage stack: a CAS and an action cache.
pub struct Storage {
    pub cas: Arc<dyn BlobStore>,
    pub action_cache: Arc<dyn ActionCacheStore>,
}

/// Every storage stack of the configuration, plus the disk logs to flush at shutdown.
pub struct Built {
    pub stacks: BTreeMap<String, Storage>,
    pub disks: Vec<DiskLog>,
}

pub async fn build(config: &Config) -> Result<Built, StoreError> {
    let mut built = Built { stacks: BTreeMap::new(), disks: Vec::new() };
    for (name, stack) in &config.storage {
        let mut cas_tiers = Vec::new();
        for (i, tier) in stack.cas.iter().enumerate() {
            let label = format!("storage.{name}.cas[{i}]");
            let last = i + 1 == stack.cas.len();
            cas_tiers.push(match tier {
                TierConfig::Memory(m) => Tier {
                    name: label,
                    store: Arc::new(MemoryStore::new(m.max_size.0, admission(last))),
                    min_blob: m.min_blob.map_or(0, |s| s.0),
                    max_blob: m.max_blob.map_or(DEFAULT_MEMORY_MAX_BLOB, |s| s.0),
                    promote: m.promote,
                    durable: false,
                    verify: false,
                },
                TierConfig::Disk(d) => {
                    let log = open_disk(config, d, &label)?;
                    built.disks.push(log.clone());
                    Tier {
                        name: label,
                        store: Arc::new(log),
                        min_blob: d.min_blob.map_or(0, |s| s.0),
                        max_blob: d.max_blob.map_or(u64::MAX, |s| s.0),
                        promote: d.promote,
                        durable: true,
                        verify: false,
                    }
                }
                TierConfig::Remote(r) => Tier {
                    name: format!("{label} ({})", r.endpoint),
                    store: queued(config, Arc::new(open_remote(r, &label)?), &r.when_unavailable, r.queue_retry, &label)?,
                    min_blob: r.min_blob.map_or(0, |s| s.0),
                    max_blob: r.max_blob.map_or(u64::MAX, |s| s.0),
                    // The slowest tier: nothing is copied into it but writes.
                    promote: false,
                    durable: r.durable,
                    verify: true,
                },
                TierConfig::S3(c) => {
                    let store = open_s3(c, &label).await?;
                    Tier {
                        name: format!("{label} ({})", store.name()),
                        store: queued(config, Arc::new(store), &c.when_unavailable, c.queue_retry, &label)?,
                        min_blob: c.min_blob.map_or(0, |s| s.0),
                        max_blob: c.max_blob.map_or(u64::MAX, |s| s.0),
                        promote: false,
                        durable: c.durable,
                        verify: true,
                    }
                }
            });
        }
        let mut ac_tiers: Vec<(String, Arc<dyn ActionCacheStore>)> = Vec::new();
        for (i, tier) in stack.action_cache.iter().enumerate() {
            let label = format!("storage.{name}.action_cache[{i}]");
            let last = i + 1 == stack.action_cache.len();
            let store: Arc<dyn ActionCacheStore> = match tier {
                TierConfig::Memory(m) => Arc::new(MemoryStore::new(m.max_size.0, admission(last))),
                TierConfig::Disk(d) => {
                    let log = open_disk(config, d, &label)?;
                    built.disks.push(log.clone());
                    Arc::new(log)
                }
                TierConfig::Remote(r) => Arc::new(open_remote(r, &label)?),
                TierConfig::S3(c) => Arc::new(open_s3(c, &label).await?),
            };
            ac_tiers.push((label, store));
        }
        built.stacks.insert(
            name.clone(),
            Storage { cas: Arc::new(TieredStore::new(cas_tiers)?), action_cache: Arc::new(TieredActionCache::new(ac_tiers)?) },
        );
    }
    Ok(built)
}

/// A memory tier with nothing behind it must keep what it is given; in front of another tier it may
/// turn away blobs that are unlikely to be read again.
fn admission(last_tier: bool) -> Admission {
    if last_tier { Admission::Always } else { Admission::Frequency }
}

/// Wraps an upstream tier in a write-behind spool under the data directory when configured to queue.
fn queued(config: &Config, store: Arc<dyn BlobStore>, when_unavailable: &str, retry: std::time::Duration, label: &str) -> Result<Arc<dyn BlobStore>, StoreError> {
    if when_unavailable != "queue" {
        return Ok(store);
    }
    let slug: String = label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
    Ok(Arc::new(Spooled::new(store, config.data_path(&std::path::Path::new("spool").join(slug)), retry)?))
}

async fn open_s3(c: &S3TierConfig, label: &str) -> Result<S3Store, StoreError> {
    let access_key = c.access_key_id.clone().zip(c.secret_access_key.clone());
    S3Store::new(S3Config {
        bucket: c.bucket.clone(),
        prefix: c.prefix.clone(),
        region: c.region.clone(),
        endpoint: c.endpoint.clone(),
        path_style: c.path_style,
        access_key,
        part_size: c.part_size.0,
        concurrency: c.concurrency,
        retries: c.retries,
        timeout: c.timeout,
        connect_timeout: c.connect_timeout,
        checksum_when_required: c.checksum == "when_required",
        existence_ttl: c.existence_ttl,
    })
    .await
    .map_err(|e| StoreError::Config(format!("{label}: {e}")))
}

fn open_remote(remote: &RemoteTierConfig, label: &str) -> Result<RemoteStore, StoreError> {
    RemoteStore::new(RemoteConfig {
        endpoint: remote.endpoint.clone(),
        instance: remote.instance.clone(),
        timeout: remote.timeout,
        connect_timeout: remote.connect_timeout,
        retries: remote.retries,
        concurrency: remote.concurrency,
        bearer_token: remote.bearer_token.clone(),
        ca_certificate: match &remote.ca_certificate {
            Some(path) => Some(
                std::fs::read(path)
                    .map_err(|e| StoreError::Config(format!("{label}.ca_certificate: cannot read {}: {e}", path.display())))?,
            ),
            None => None,
        },
    })
    .map_err(|e| StoreError::Config(format!("{label}: {e}")))
}

fn open_disk(config: &Config, disk: &DiskTierConfig, label: &str) -> Result<DiskLog, StoreError> {
    let sync = parse_sync(&disk.sync).map_err(|e| StoreError::Config(format!("{label}.sync: {e}")))?;
    let segment_size = disk.segment_size.0;
    let cfg = DiskConfig {
        path: config.data_path(&disk.path),
        max_size: disk.max_size.0,
        segment_size,
        max_record: disk.max_record.map_or(segment_size / 16, |s| s.0),
        sync,
    };
    DiskLog::open(cfg).map_err(|e| match e {
        StoreError::Config(msg) => StoreError::Config(format!("{label}: {msg}")),
        other => other,
    })
}
