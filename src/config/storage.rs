//! The storage part of the configuration: named stacks of tiers. A CAS tier is a kind (memory, disk,
//! remote, s3: where the bytes live) plus a policy shared by every kind (size class, promotion,
//! durability, what to do while an upstream is down, an existence cache); an action-cache tier is a
//! kind alone, so a CAS-only key on it is an error instead of being ignored.

use std::path::PathBuf;
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use strata_backends::SyncPolicy;
use yaml_serde::{Mapping, Value};

use crate::units::{duration, parse_duration, ByteSize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub cas: Vec<CasTier>,
    pub action_cache: Vec<AcTier>,
}

impl StorageConfig {
    /// The stack in a few words: `cas: memory 512MiB → disk 20GiB; action cache: ...`.
    pub fn describe(&self) -> String {
        let cas: Vec<String> = self.cas.iter().map(|t| t.kind.describe()).collect();
        let ac: Vec<String> = self.action_cache.iter().map(|t| t.kind.describe()).collect();
        format!("cas: {}; action cache: {}", cas.join(" -> "), ac.join(" -> "))
    }
}

/// A tier of a CAS stack: `- memory: { max_size: 1GiB, max_blob: 1MiB }`.
#[derive(Debug)]
pub struct CasTier {
    pub kind: TierKind,
    pub policy: TierPolicy,
}

/// A tier of an action-cache stack: the same kinds, without the CAS's policy keys.
#[derive(Debug)]
pub struct AcTier {
    pub kind: TierKind,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierKind {
    Memory(MemoryTier),
    Disk(DiskTier),
    Remote(RemoteTier),
    S3(S3Tier),
}

impl TierKind {
    pub fn name(&self) -> &'static str {
        match self {
            TierKind::Memory(_) => "memory",
            TierKind::Disk(_) => "disk",
            TierKind::Remote(_) => "remote",
            TierKind::S3(_) => "s3",
        }
    }

    /// The tier in a few words, for the start-up log.
    pub fn describe(&self) -> String {
        match self {
            TierKind::Memory(m) => format!("memory {}", m.max_size.short()),
            TierKind::Disk(d) => format!("disk {} at {}", d.max_size.short(), d.path.display()),
            TierKind::Remote(r) => format!("remote {}", r.endpoint),
            TierKind::S3(s) => format!("s3 {}/{}", s.bucket, s.prefix),
        }
    }

    /// Remote and S3 tiers are upstreams: slow, shared, not trusted, possibly down.
    pub fn is_upstream(&self) -> bool {
        matches!(self, TierKind::Remote(_) | TierKind::S3(_))
    }
}

/// The keys every CAS tier understands, each checked against the kinds it applies to at load.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierPolicy {
    /// The tier's size class.
    pub min_blob: Option<ByteSize>,
    /// Larger blobs skip the tier (memory: 1MiB unless set; others: unbounded).
    pub max_blob: Option<ByteSize>,
    /// Copy blobs found in slower tiers into this one (memory and disk; default true).
    pub promote: Option<bool>,
    /// A write fails unless this upstream takes it (remote and s3; default true).
    pub durable: Option<bool>,
    /// What a write does while the upstream is down (remote and s3).
    pub when_unavailable: Option<WhenUnavailable>,
    /// How often queued uploads are retried (remote and s3, with `when_unavailable: queue`).
    #[serde(default, with = "duration::option")]
    pub queue_retry: Option<Duration>,
    /// Remember which blobs the upstream holds (remote and s3; on for s3 unless set).
    pub existence_cache: Option<ExistenceCacheConfig>,
}

impl TierPolicy {
    const KEYS: [&'static str; 7] = ["min_blob", "max_blob", "promote", "durable", "when_unavailable", "queue_retry", "existence_cache"];

    /// The policy keys that were set but mean nothing for a tier of this kind.
    pub fn misplaced(&self, kind: &TierKind) -> Option<&'static str> {
        let upstream = kind.is_upstream();
        [
            ("promote", self.promote.is_some() && upstream),
            ("durable", self.durable.is_some() && !upstream),
            ("when_unavailable", self.when_unavailable.is_some() && !upstream),
            ("queue_retry", self.queue_retry.is_some() && !upstream),
            ("existence_cache", self.existence_cache.is_some() && !upstream),
        ]
        .into_iter()
        .find_map(|(key, wrong)| wrong.then_some(key))
    }
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum WhenUnavailable {
    /// A write fails with UNAVAILABLE while the upstream is down.
    #[default]
    Fail,
    /// A write succeeds once the local tiers have the blob; the upload is spooled and retried.
    Queue,
}

#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExistenceCacheConfig {
    /// Present blobs remembered at most (0 turns the cache off).
    pub max_entries: u64,
    /// How long each is remembered.
    #[serde(with = "duration")]
    pub ttl: Duration,
}

impl ExistenceCacheConfig {
    /// S3's default, since S3 answers existence with one HEAD per digest.
    pub const S3_DEFAULT: ExistenceCacheConfig = ExistenceCacheConfig { max_entries: 1_000_000, ttl: Duration::from_secs(600) };
}

/// Splits a tier's map into its kind's keys and the policy keys.
fn split_tier(value: Value) -> Result<(TierKind, Mapping), String> {
    let Value::Mapping(outer) = value else { return Err("a tier is written `- memory: {...}` (or disk, remote, s3)".into()) };
    if outer.len() != 1 {
        return Err(format!("a tier is one kind (memory, disk, remote or s3), but {} keys were given", outer.len()));
    }
    let Some((kind, Value::Mapping(keys))) = outer.into_iter().next() else {
        return Err("a tier's settings are a map: `- memory: { max_size: 1GiB }`".into());
    };
    let (mut own, mut policy) = (Mapping::new(), Mapping::new());
    for (key, value) in keys {
        let is_policy = key.as_str().is_some_and(|k| TierPolicy::KEYS.contains(&k));
        if is_policy { policy.insert(key, value) } else { own.insert(key, value) };
    }
    let mut tagged = Mapping::new();
    tagged.insert(kind, Value::Mapping(own));
    let kind = yaml_serde::with::singleton_map::deserialize(Value::Mapping(tagged)).map_err(|e| e.to_string())?;
    Ok((kind, policy))
}

impl<'de> Deserialize<'de> for CasTier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, policy) = split_tier(Value::deserialize(d)?).map_err(D::Error::custom)?;
        let policy = TierPolicy::deserialize(Value::Mapping(policy)).map_err(D::Error::custom)?;
        Ok(CasTier { kind, policy })
    }
}

impl<'de> Deserialize<'de> for AcTier {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let (kind, policy) = split_tier(Value::deserialize(d)?).map_err(D::Error::custom)?;
        if let Some(key) = policy.keys().next().and_then(Value::as_str) {
            return Err(D::Error::custom(format!(
                "`{key}` applies to CAS tiers only: an action cache tier keeps every result it is given"
            )));
        }
        Ok(AcTier { kind })
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryTier {
    pub max_size: ByteSize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskTier {
    /// A directory, relative to `data_dir` unless absolute.
    pub path: PathBuf,
    pub max_size: ByteSize,
    #[serde(default = "default_segment_size")]
    pub segment_size: ByteSize,
    /// Blobs above this size are stored as files of their own (default segment_size / 16).
    #[serde(default)]
    pub max_record: Option<ByteSize>,
    /// `always` (group commit before acknowledging), `never`, or an interval such as `100ms`.
    #[serde(default = "default_sync", deserialize_with = "sync_policy")]
    pub sync: SyncPolicy,
    /// `off`, `zstd` (level 1, blobs of 4KiB and up) or `{ zstd: { level: 3, min_size: 16KiB } }`.
    #[serde(default)]
    pub compression: Compression,
}

impl TierKind {
    /// Whether the tier's configuration asks for compression (at rest, or on the wire upstream).
    pub fn compression_set(&self) -> bool {
        match self {
            TierKind::Disk(d) => d.compression != Compression::Off,
            TierKind::S3(s) => s.compression != Compression::Off,
            TierKind::Remote(r) => r.compression.is_some(),
            TierKind::Memory(_) => false,
        }
    }
}

/// How a tier stores blobs at rest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    #[default]
    Off,
    Zstd(strata_backends::zstd_chunks::Settings),
}

impl Compression {
    pub fn settings(self) -> Option<strata_backends::zstd_chunks::Settings> {
        match self {
            Compression::Off => None,
            Compression::Zstd(settings) => Some(settings),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ZstdKeys {
    #[serde(default = "default_zstd_level")]
    level: i32,
    #[serde(default = "default_zstd_min_size")]
    min_size: ByteSize,
}

impl<'de> Deserialize<'de> for Compression {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let shape = "compression is `off`, `zstd`, or `{ zstd: { level: 1, min_size: 4KiB } }`";
        let keys = match Value::deserialize(d)? {
            Value::String(s) if s == "off" => return Ok(Compression::Off),
            Value::String(s) if s == "zstd" => return Ok(Compression::Zstd(strata_backends::zstd_chunks::Settings::DEFAULT)),
            Value::Mapping(map) if map.len() == 1 && map.contains_key("zstd") => map.get("zstd").cloned().unwrap_or(Value::Null),
            Value::String(other) => return Err(D::Error::custom(format!("{shape}, not {other:?}"))),
            _ => return Err(D::Error::custom(shape)),
        };
        let keys = match keys {
            Value::Null => Value::Mapping(Mapping::new()),
            keys => keys,
        };
        let keys = ZstdKeys::deserialize(keys).map_err(|e| D::Error::custom(format!("compression.zstd: {e}")))?;
        if !(1..=19).contains(&keys.level) {
            return Err(D::Error::custom(format!("compression.zstd.level {} must be between 1 and 19", keys.level)));
        }
        Ok(Compression::Zstd(strata_backends::zstd_chunks::Settings { level: keys.level, min_size: keys.min_size.0 }))
    }
}

fn default_zstd_level() -> i32 {
    strata_backends::zstd_chunks::Settings::DEFAULT.level
}
fn default_zstd_min_size() -> ByteSize {
    ByteSize(strata_backends::zstd_chunks::Settings::DEFAULT.min_size)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteTier {
    /// `grpc://HOST:PORT`, or `grpcs://HOST:PORT` for TLS.
    pub endpoint: String,
    /// The instance name used upstream, whatever name the client used here.
    #[serde(default)]
    pub instance: String,
    /// Deadline of each call (large transfers get more in proportion to their size).
    #[serde(default = "default_remote_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Retries while the upstream is unavailable, with backoff from 50 ms.
    #[serde(default = "default_retries")]
    pub retries: u32,
    /// Calls in flight to the upstream at most.
    #[serde(default = "default_remote_concurrency")]
    pub concurrency: usize,
    /// A bearer token sent with every call (prefer `bearer_token_file`, which keeps it out of
    /// the configuration).
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// A file holding the bearer token.
    #[serde(default)]
    pub bearer_token_file: Option<PathBuf>,
    /// A PEM file of certificates to trust for a `grpcs://` endpoint, besides the system's.
    #[serde(default)]
    pub ca_certificate: Option<PathBuf>,
    /// A client certificate chain (PEM) for an upstream that asks for one, with `client_key`.
    #[serde(default)]
    pub client_certificate: Option<PathBuf>,
    #[serde(default)]
    pub client_key: Option<PathBuf>,
    /// zstd on the wire where the upstream advertises it: `zstd` unless set (level 1, blobs of
    /// 4KiB and up), `off`, or `{ zstd: { level: 3, min_size: 16KiB } }`. CAS tiers only.
    #[serde(default)]
    pub compression: Option<Compression>,
}

impl RemoteTier {
    pub fn wire_compression(&self) -> Option<strata_backends::zstd_chunks::Settings> {
        self.compression.unwrap_or(Compression::Zstd(strata_backends::zstd_chunks::Settings::DEFAULT)).settings()
    }
}

/// An S3 bucket (AWS or any S3-compatible store).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Tier {
    pub bucket: String,
    /// Prepended to every object key.
    #[serde(default)]
    pub prefix: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// A custom endpoint such as `http://127.0.0.1:9000` (MinIO, Ceph, Garage, ...).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Path-style addressing (`endpoint/bucket/key`), which most S3-compatible stores need.
    #[serde(default)]
    pub path_style: bool,
    /// Static credentials; without them the standard AWS chain is used (AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY, profiles, instance roles).
    #[serde(default)]
    pub access_key_id: Option<String>,
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// Blobs above this size are uploaded in parts of this size (at least 5MiB).
    #[serde(default = "default_part_size")]
    pub part_size: ByteSize,
    /// S3 requests in flight at most.
    #[serde(default = "default_s3_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_s3_retries")]
    pub retries: u32,
    #[serde(default = "default_remote_timeout", with = "duration")]
    pub timeout: Duration,
    #[serde(default = "default_s3_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    #[serde(default)]
    pub checksum: Checksum,
    /// CAS blobs stored zstd-compressed where that pays: `off` (the default), `zstd` or
    /// `{ zstd: { level, min_size } }`. Objects above `part_size` stay as they are.
    #[serde(default)]
    pub compression: Compression,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Checksum {
    /// The SDK's default CRC32 checksum headers.
    #[default]
    Default,
    /// Only where an operation requires them, for stores that reject the default ones.
    WhenRequired,
}

fn sync_policy<'de, D: Deserializer<'de>>(d: D) -> Result<SyncPolicy, D::Error> {
    match String::deserialize(d)?.as_str() {
        "always" => Ok(SyncPolicy::Always),
        "never" => Ok(SyncPolicy::Never),
        other => parse_duration(other)
            .map(SyncPolicy::Interval)
            .map_err(|_| D::Error::custom(format!("sync: {other:?} is not `always`, `never` or an interval such as `100ms`"))),
    }
}

fn default_sync() -> SyncPolicy {
    SyncPolicy::Always
}
fn default_segment_size() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_part_size() -> ByteSize {
    ByteSize(8 << 20)
}
fn default_s3_concurrency() -> usize {
    64
}
fn default_s3_retries() -> u32 {
    3
}
fn default_s3_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_remote_concurrency() -> usize {
    16
}
fn default_remote_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_retries() -> u32 {
    2
}
