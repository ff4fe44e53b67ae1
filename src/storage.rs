//! Builds the storage trees that the configuration describes: one `match` over the tier kinds, then
//! the layers each tier's policy asks for. This is the only code that knows how tiers are stacked;
//! everything else sees a `BlobStore` and an `ActionCacheStore`.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use strata_backends::client::ClientAuth;
use strata_backends::{
    ActionCacheStore, BlobStore, DiskConfig, DiskLog, ExistenceCache, MemoryStore, Metered, RemoteConfig,
    RemoteStore, S3Config, S3Store, Spooled, StoreError, Tier, TieredActionCache, TieredStore, UpstreamMetrics, Verified,
};

use crate::config::{Checksum, Config, DiskTier, ExistenceCacheConfig, RemoteTier, S3Tier, TierKind, TierPolicy, WhenUnavailable};

/// The memory tier keeps blobs up to this size unless configured otherwise.
const DEFAULT_MEMORY_MAX_BLOB: u64 = 1 << 20;
/// How often uploads queued for an unavailable upstream are retried unless configured otherwise.
const DEFAULT_QUEUE_RETRY: std::time::Duration = std::time::Duration::from_secs(5);

/// One named storage stack: a CAS, an action cache, and the Remote Asset API's index.
pub struct Storage {
    pub name: String,
    /// Each tier on its own, for metrics, status and the admin API (which asks tiers one by one).
    pub tiers: Vec<TierView>,
    pub cas: Arc<dyn BlobStore>,
    pub action_cache: Arc<dyn ActionCacheStore>,
    /// The action cache's key-value tiers but the remote ones: asset records share them under keys
    /// of their own (a remote tier's action cache holds only ActionResults).
    pub asset_index: Arc<dyn ActionCacheStore>,
    /// The upstream of the first remote action-cache tier, asked through its own Remote Asset API.
    pub asset_upstream: Option<Arc<RemoteStore>>,
}

/// The asset index of a stack whose action cache is remote only: assets are kept in memory here.
/// One tier of a stack as the operator sees it.
#[derive(Clone)]
pub struct TierView {
    /// `cas` or `action_cache`.
    pub role: &'static str,
    pub name: String,
    pub kind: &'static str,
    /// A local tier (memory, disk) rather than an upstream.
    pub local: bool,
    pub store: Arc<dyn BlobStore>,
    /// What the health probe asks: the tier below a write-behind spool, which would otherwise
    /// answer for an upstream that is down.
    pub probe: Arc<dyn BlobStore>,
}

const ASSET_INDEX_MEMORY: u64 = 16 << 20;

/// Every storage stack of the configuration, plus the disk logs to flush at shutdown.
pub struct Built {
    pub stacks: BTreeMap<String, Arc<Storage>>,
    pub disks: Vec<DiskLog>,
}

/// One opened tier: the same store seen as a CAS tier and as an action-cache tier (every kind is
/// both), with the name it is logged under.
struct Opened {
    name: String,
    cas: Arc<dyn BlobStore>,
    ac: Arc<dyn ActionCacheStore>,
}

impl Opened {
    fn new<T: BlobStore + ActionCacheStore>(name: String, store: T) -> Opened {
        let store = Arc::new(store);
        Opened { name, cas: store.clone(), ac: store }
    }
}

/// Opens every storage stack of the configuration; calls to upstream tiers are counted in `upstream`.
pub async fn build(config: &Config, upstream: &UpstreamMetrics) -> Result<Built, StoreError> {
    let mut built = Built { stacks: BTreeMap::new(), disks: Vec::new() };
    for (name, stack) in &config.storage {
        let (mut cas_tiers, mut views) = (Vec::new(), Vec::new());
        for (i, tier) in stack.cas.iter().enumerate() {
            let label = format!("storage.{name}.cas[{i}]");
            let mut opened = open(config, &tier.kind, &label, &mut built.disks).await?;
            if tier.kind.is_upstream() {
                opened.cas = Arc::new(Metered::new(opened.cas, opened.name.clone(), upstream.clone()));
            }
            let (tier_built, probe) = with_policy(config, opened, &tier.kind, &tier.policy, &label)?;
            views.push(TierView { probe, ..TierView::of("cas", &tier.kind, tier_built.name.clone(), tier_built.store.clone()) });
            cas_tiers.push(tier_built);
        }
        let (mut ac_tiers, mut asset_tiers, mut asset_upstream) = (Vec::new(), Vec::new(), None);
        for (i, tier) in stack.action_cache.iter().enumerate() {
            let label = format!("storage.{name}.action_cache[{i}]");
            let mut opened = open(config, &tier.kind, &label, &mut built.disks).await?;
            if tier.kind.is_upstream() {
                opened.ac = Arc::new(Metered::new(opened.ac, opened.name.clone(), upstream.clone()));
            }
            views.push(TierView::of("action_cache", &tier.kind, opened.name.clone(), opened.cas.clone()));
            match &tier.kind {
                TierKind::Remote(r) if asset_upstream.is_none() => asset_upstream = Some(Arc::new(open_remote(r, &label)?)),
                TierKind::Remote(_) => {}
                _ => asset_tiers.push((opened.name.clone(), opened.ac.clone())),
            }
            ac_tiers.push((opened.name, opened.ac));
        }
        if asset_tiers.is_empty() {
            let memory: Arc<dyn ActionCacheStore> = Arc::new(MemoryStore::new(ASSET_INDEX_MEMORY));
            asset_tiers.push((format!("storage.{name} asset index (memory)"), memory));
        }
        built.stacks.insert(
            name.clone(),
            Arc::new(Storage {
                name: name.clone(),
                tiers: views,
                cas: Arc::new(TieredStore::new(cas_tiers)?),
                action_cache: Arc::new(TieredActionCache::new(ac_tiers)?),
                asset_index: Arc::new(TieredActionCache::new(asset_tiers)?),
                asset_upstream,
            }),
        );
    }
    Ok(built)
}

impl TierView {
    fn of(role: &'static str, kind: &TierKind, name: String, store: Arc<dyn BlobStore>) -> TierView {
        let kind_name = match kind {
            TierKind::Memory(_) => "memory",
            TierKind::Disk(_) => "disk",
            TierKind::Remote(_) => "remote",
            TierKind::S3(_) => "s3",
        };
        TierView { role, name, kind: kind_name, local: !kind.is_upstream(), probe: store.clone(), store }
    }
}

async fn open(config: &Config, kind: &TierKind, label: &str, disks: &mut Vec<DiskLog>) -> Result<Opened, StoreError> {
    Ok(match kind {
        TierKind::Memory(m) => Opened::new(label.to_string(), MemoryStore::new(m.max_size.0)),
        TierKind::Disk(d) => {
            let log = open_disk(config, d, label)?;
            disks.push(log.clone());
            Opened::new(label.to_string(), log)
        }
        TierKind::Remote(r) => Opened::new(format!("{label} ({})", r.endpoint), open_remote(r, label)?),
        TierKind::S3(c) => {
            let store = open_s3(c, label).await?;
            Opened::new(format!("{label} ({})", store.name()), store)
        }
    })
}

/// The layers a CAS tier's policy asks for, and its place in the stack. Upstreams (remote, S3) are
/// not trusted, so what they return is verified; nothing is promoted into them; an existence cache
/// and a write-behind spool go in front when configured. Also returns the store below the spool.
fn with_policy(config: &Config, opened: Opened, kind: &TierKind, policy: &TierPolicy, label: &str) -> Result<(Tier, Arc<dyn BlobStore>), StoreError> {
    let Opened { name, cas: mut store, .. } = opened;
    let mut probe = store.clone();
    let upstream = kind.is_upstream();
    if upstream {
        store = Arc::new(Verified::new(store, name.clone()));
        let existence = match kind {
            TierKind::S3(_) => policy.existence_cache.or(Some(ExistenceCacheConfig::S3_DEFAULT)),
            _ => policy.existence_cache,
        };
        if let Some(cache) = existence.filter(|c| c.max_entries > 0) {
            store = Arc::new(ExistenceCache::new(store, cache.max_entries, cache.ttl));
        }
        probe = store.clone();
        if policy.when_unavailable == Some(WhenUnavailable::Queue) {
            let slug: String = label.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
            let dir = config.data_path(&Path::new("spool").join(slug));
            store = Arc::new(Spooled::new(store, dir, policy.queue_retry.unwrap_or(DEFAULT_QUEUE_RETRY))?);
        }
    }
    let max_blob = match kind {
        // A memory tier cannot hold a blob larger than itself; saying so here routes such a blob to
        // the next tier instead of failing it there.
        TierKind::Memory(m) => policy.max_blob.map_or(DEFAULT_MEMORY_MAX_BLOB, |s| s.0).min(m.max_size.0),
        _ => policy.max_blob.map_or(u64::MAX, |s| s.0),
    };
    let tier = Tier {
        name,
        store,
        min_blob: policy.min_blob.map_or(0, |s| s.0),
        max_blob,
        // Upstreams are the slowest tiers: nothing is copied into them but writes.
        promote: !upstream && policy.promote.unwrap_or(true),
        // The disk log is always durable; memory never is.
        durable: match kind {
            TierKind::Memory(_) => false,
            TierKind::Disk(_) => true,
            TierKind::Remote(_) | TierKind::S3(_) => policy.durable.unwrap_or(true),
        },
    };
    Ok((tier, probe))
}

async fn open_s3(c: &S3Tier, label: &str) -> Result<S3Store, StoreError> {
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
        checksum_when_required: c.checksum == Checksum::WhenRequired,
        compression: c.compression.settings(),
    })
    .await
    .map_err(|e| StoreError::Config(format!("{label}: {e}")))
}

/// The credentials a remote tier calls its upstream with, read from their files.
fn remote_auth(remote: &RemoteTier, label: &str) -> Result<ClientAuth, StoreError> {
    let read = |path: &Option<std::path::PathBuf>, key: &str| -> Result<Option<Vec<u8>>, StoreError> {
        let Some(path) = path else { return Ok(None) };
        std::fs::read(path).map(Some).map_err(|e| StoreError::Config(format!("{label}.{key}: cannot read {}: {e}", path.display())))
    };
    let file_token = ClientAuth::token_from_file(remote.bearer_token_file.as_deref()).map_err(|e| StoreError::Config(format!("{label}.bearer_token_file: {e}")))?;
    let certificate = match (read(&remote.client_certificate, "client_certificate")?, read(&remote.client_key, "client_key")?) {
        (Some(certificate), Some(key)) => Some((certificate, key)),
        (None, None) => None,
        _ => return Err(StoreError::Config(format!("{label}: client_certificate and client_key go together"))),
    };
    Ok(ClientAuth { ca_certificate: read(&remote.ca_certificate, "ca_certificate")?, bearer_token: file_token.or_else(|| remote.bearer_token.clone()), certificate })
}

fn open_remote(remote: &RemoteTier, label: &str) -> Result<RemoteStore, StoreError> {
    RemoteStore::new(RemoteConfig {
        endpoint: remote.endpoint.clone(),
        instance: remote.instance.clone(),
        timeout: remote.timeout,
        connect_timeout: remote.connect_timeout,
        retries: remote.retries,
        concurrency: remote.concurrency,
        auth: remote_auth(remote, label)?,
        compression: remote.wire_compression(),
    })
    .map_err(|e| StoreError::Config(format!("{label}: {e}")))
}

fn open_disk(config: &Config, disk: &DiskTier, label: &str) -> Result<DiskLog, StoreError> {
    let segment_size = disk.segment_size.0;
    let cfg = DiskConfig {
        path: config.data_path(&disk.path),
        max_size: disk.max_size.0,
        segment_size,
        max_record: disk.max_record.map_or(segment_size / 16, |s| s.0),
        sync: disk.sync,
        compression: disk.compression.settings(),
    };
    DiskLog::open(cfg).map_err(|e| match e {
        StoreError::Config(msg) => StoreError::Config(format!("{label}: {msg}")),
        other => other,
    })
}
