//! The YAML configuration: schema, defaults, `${VAR}` substitution, sizes such as `512MiB`, and
//! validation whose errors name the offending key and file. Unknown keys are errors.

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::units::ByteSize;

/// The configuration `strata serve` runs with when given none: everything on 127.0.0.1, memory in
/// front of a disk log under the data directory, on the empty instance name.
pub const DEFAULT_CONFIG: &str = include_str!("../config/all-in-one.yaml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The address to serve gRPC on.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Where relative tier paths live.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// The largest batch request (BatchUpdateBlobs, BatchReadBlobs) the server accepts.
    #[serde(default = "default_max_batch")]
    pub max_batch_total_size: ByteSize,
    /// How long an interrupted ByteStream upload can be resumed.
    #[serde(default = "default_upload_ttl", with = "duration")]
    pub resumable_upload_ttl: Duration,
    /// How many interrupted uploads are kept at most (the oldest go first).
    #[serde(default = "default_parked_uploads")]
    pub resumable_uploads_max: usize,
    /// How many bytes interrupted uploads hold at most (the oldest go first).
    #[serde(default = "default_parked_bytes")]
    pub resumable_uploads_max_bytes: ByteSize,
    /// Named storage stacks that instances refer to.
    pub storage: BTreeMap<String, StorageConfig>,
    pub instances: Vec<InstanceConfig>,
    /// Serve gRPC over TLS with this certificate and key (PEM files).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The scheduler's limits and the bots `strata serve` runs in process (instances that list
    /// `execution` among their services use it).
    #[serde(default)]
    pub execution: ExecutionConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM.
    pub certificate: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecutionConfig {
    /// How long an action may wait for a bot before it fails with UNAVAILABLE.
    #[serde(default = "default_queue_timeout", with = "duration")]
    pub queue_timeout: Duration,
    /// The timeout of actions that set none, and the cap on those that do.
    #[serde(default = "default_max_execution_timeout", with = "duration")]
    pub max_execution_timeout: Duration,
    /// A bot that has not called for this long is gone, and its actions are queued again.
    #[serde(default = "default_bot_session_timeout", with = "duration")]
    pub bot_session_timeout: Duration,
    /// How many times an action is handed to a bot before it fails.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// How long finished operations can still be looked up.
    #[serde(default = "default_operation_retention", with = "duration")]
    pub operation_retention: Duration,
    /// Bots started inside `strata serve`, connected to it over loopback.
    #[serde(default)]
    pub bots: Vec<LocalBotConfig>,
}

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            queue_timeout: default_queue_timeout(),
            max_execution_timeout: default_max_execution_timeout(),
            bot_session_timeout: default_bot_session_timeout(),
            max_attempts: default_max_attempts(),
            operation_retention: default_operation_retention(),
            bots: Vec::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LocalBotConfig {
    /// The instance whose actions it runs.
    #[serde(default)]
    pub instance: String,
    /// Actions run at once (default: the number of cores).
    #[serde(default)]
    pub capacity: Option<usize>,
    /// `host`, `bubblewrap` or `hermetic`.
    #[serde(default = "default_runner")]
    pub runner: String,
    /// Its work directory, relative to `data_dir` unless absolute.
    #[serde(default = "default_bot_dir")]
    pub work_dir: PathBuf,
    /// The platform properties it offers.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Bytes its input cache holds at most.
    #[serde(default = "default_bot_cache_size")]
    pub cache_size: ByteSize,
}

fn default_queue_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_max_execution_timeout() -> Duration {
    Duration::from_secs(3600)
}
fn default_bot_session_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_max_attempts() -> u32 {
    3
}
fn default_operation_retention() -> Duration {
    Duration::from_secs(600)
}
fn default_runner() -> String {
    "host".into()
}
fn default_bot_cache_size() -> ByteSize {
    ByteSize(10 << 30)
}
fn default_bot_dir() -> PathBuf {
    "bot".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    // Tiers are written `- memory: {...}`, a one-key map per tier rather than YAML tags.
    #[serde(with = "yaml_serde::with::singleton_map_recursive")]
    pub cas: Vec<TierConfig>,
    #[serde(with = "yaml_serde::with::singleton_map_recursive")]
    pub action_cache: Vec<TierConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub name: String,
    pub storage: String,
    pub services: Vec<Service>,
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// ContentAddressableStorage and ByteStream.
    Cas,
    ActionCache,
    /// Execution, Operations and the Bots service for workers.
    Execution,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierConfig {
    Memory(MemoryTierConfig),
    Disk(DiskTierConfig),
    Remote(RemoteTierConfig),
    S3(S3TierConfig),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryTierConfig {
    pub max_size: ByteSize,
    #[serde(default)]
    pub min_blob: Option<ByteSize>,
    /// Blobs above this size skip the memory tier (default 1MiB).
    #[serde(default)]
    pub max_blob: Option<ByteSize>,
    #[serde(default = "yes")]
    pub promote: bool,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskTierConfig {
    /// A directory, relative to `data_dir` unless absolute.
    pub path: PathBuf,
    pub max_size: ByteSize,
    #[serde(default = "default_segment_size")]
    pub segment_size: ByteSize,
    /// Blobs above this size are stored as files of their own (default segment_size / 16).
    #[serde(default)]
    pub max_record: Option<ByteSize>,
    /// `always` (group commit before acknowledging), `never`, or an interval such as `100ms`.
    #[serde(default = "default_sync")]
    pub sync: String,
    #[serde(default)]
    pub min_blob: Option<ByteSize>,
    #[serde(default)]
    pub max_blob: Option<ByteSize>,
    #[serde(default = "yes")]
    pub promote: bool,
}

/// An upstream REAPI server (CAS and action cache).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteTierConfig {
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
    #[serde(default)]
    pub bearer_token: Option<String>,
    /// A PEM file of certificates to trust for a `grpcs://` endpoint, besides the system's.
    #[serde(default)]
    pub ca_certificate: Option<PathBuf>,
    #[serde(default)]
    pub min_blob: Option<ByteSize>,
    #[serde(default)]
    pub max_blob: Option<ByteSize>,
    /// `fail`: a write fails while the upstream is unavailable; `queue`: it succeeds once the local
    /// tiers have it, and the upload is queued on disk and retried until the upstream takes it.
    #[serde(default = "default_when_unavailable")]
    pub when_unavailable: String,
    /// How often queued uploads are retried.
    #[serde(default = "default_queue_retry", with = "duration")]
    pub queue_retry: Duration,
    #[serde(default = "yes")]
    pub durable: bool,
}

/// An S3 bucket (AWS or any S3-compatible store).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3TierConfig {
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
    /// `when_required` for stores that reject the SDK's default CRC32 checksum headers.
    #[serde(default = "default_checksum")]
    pub checksum: String,
    /// How long a "present" answer from S3 is remembered ("missing" never is).
    #[serde(default = "default_existence_ttl", with = "duration")]
    pub existence_ttl: Duration,
    #[serde(default)]
    pub min_blob: Option<ByteSize>,
    #[serde(default)]
    pub max_blob: Option<ByteSize>,
    /// `fail`: a write fails while the upstream is unavailable; `queue`: it succeeds once the local
    /// tiers have it, and the upload is queued on disk and retried until the upstream takes it.
    #[serde(default = "default_when_unavailable")]
    pub when_unavailable: String,
    /// How often queued uploads are retried.
    #[serde(default = "default_queue_retry", with = "duration")]
    pub queue_retry: Duration,
    #[serde(default = "yes")]
    pub durable: bool,
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
fn default_checksum() -> String {
    "default".into()
}
fn default_existence_ttl() -> Duration {
    Duration::from_secs(600)
}

fn default_remote_concurrency() -> usize {
    16
}
fn default_when_unavailable() -> String {
    "fail".into()
}
fn default_queue_retry() -> Duration {
    Duration::from_secs(5)
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

fn yes() -> bool {
    true
}
fn default_listen() -> String {
    "127.0.0.1:50051".into()
}
fn default_data_dir() -> PathBuf {
    "strata-data".into()
}
fn default_max_batch() -> ByteSize {
    ByteSize(4 << 20)
}
fn default_upload_ttl() -> Duration {
    Duration::from_secs(600)
}
fn default_parked_uploads() -> usize {
    1000
}
fn default_parked_bytes() -> ByteSize {
    ByteSize(1 << 30)
}
fn default_segment_size() -> ByteSize {
    ByteSize(256 << 20)
}
fn default_sync() -> String {
    "always".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{origin}: environment variable ${{{name}}} is not set")]
    UnsetVariable { origin: String, name: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

impl Config {
    /// Loads a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        Config::parse(&text, &path.display().to_string())
    }

    /// Parses configuration text; `origin` names it in errors (a file name, or "the default").
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        let text = substitute_env(text, origin)?;
        let invalid = |message: String| ConfigError::Invalid { origin: origin.to_string(), message };
        let config: Config = yaml_serde::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| format!("listen: {:?} is not HOST:PORT ({e})", self.listen))?;
        if self.max_batch_total_size.0 < 64 * 1024 {
            return Err(format!("max_batch_total_size: {} is below the minimum of 64KiB", self.max_batch_total_size));
        }
        if self.instances.is_empty() {
            return Err("instances: at least one instance is needed".into());
        }
        let mut names = HashSet::new();
        for (i, instance) in self.instances.iter().enumerate() {
            let key = format!("instances[{i}]");
            if !names.insert(instance.name.as_str()) {
                return Err(format!("{key}.name: instance {:?} is defined twice", instance.name));
            }
            check_instance_name(&instance.name).map_err(|e| format!("{key}.name: {e}"))?;
            if !self.storage.contains_key(&instance.storage) {
                return Err(format!(
                    "{key}.storage: no storage named {:?} (defined: {})",
                    instance.storage,
                    self.storage.keys().map(|k| format!("{k:?}")).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        self.validate_execution()?;
        let mut disk_paths = HashSet::new();
        for (name, storage) in &self.storage {
            for (kind, tiers) in [("cas", &storage.cas), ("action_cache", &storage.action_cache)] {
                if tiers.is_empty() {
                    return Err(format!("storage.{name}.{kind}: at least one tier is needed"));
                }
                for (i, tier) in tiers.iter().enumerate() {
                    let key = format!("storage.{name}.{kind}[{i}]");
                    match tier {
                        TierConfig::Disk(disk) => {
                            if !disk_paths.insert(self.data_path(&disk.path)) {
                                return Err(format!("{key}.path: {} is used by another disk tier", disk.path.display()));
                            }
                            parse_sync(&disk.sync).map_err(|e| format!("{key}.sync: {e}"))?;
                        }
                        TierConfig::S3(s3) => {
                            if !matches!(s3.checksum.as_str(), "default" | "when_required") {
                                return Err(format!("{key}.checksum: {:?} is not `default` or `when_required`", s3.checksum));
                            }
                            if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
                                return Err(format!("{key}: access_key_id and secret_access_key go together"));
                            }
                            check_when_unavailable(&s3.when_unavailable).map_err(|e| format!("{key}.when_unavailable: {e}"))?;
                            if s3.part_size.0 < 5 << 20 {
                                return Err(format!("{key}.part_size: {} is below S3's minimum of 5MiB", s3.part_size));
                            }
                        }
                        TierConfig::Remote(r) => check_when_unavailable(&r.when_unavailable).map_err(|e| format!("{key}.when_unavailable: {e}"))?,
                        TierConfig::Memory(_) => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// A tier path resolved against `data_dir`.
    fn validate_execution(&self) -> Result<(), String> {
        let exec = &self.execution;
        if exec.max_attempts == 0 {
            return Err("execution.max_attempts: must be at least 1".into());
        }
        for (key, value) in [
            ("queue_timeout", exec.queue_timeout),
            ("max_execution_timeout", exec.max_execution_timeout),
            ("bot_session_timeout", exec.bot_session_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("execution.{key}: must be longer than zero"));
            }
        }
        if self.tls.is_some() && !exec.bots.is_empty() {
            return Err("execution.bots: bots in the process speak plain gRPC and cannot reach a server with tls; run `strata bot` next to it instead".into());
        }
        for (i, bot) in exec.bots.iter().enumerate() {
            let key = format!("execution.bots[{i}]");
            let serves = self.instances.iter().any(|inst| inst.name == bot.instance && inst.services.contains(&Service::Execution));
            if !serves {
                return Err(format!("{key}.instance: no instance {:?} with the execution service", bot.instance));
            }
            if bot.capacity == Some(0) {
                return Err(format!("{key}.capacity: must be at least 1"));
            }
            if !["host", "bubblewrap", "hermetic"].contains(&bot.runner.as_str()) {
                return Err(format!("{key}.runner: {:?} is not one of host, bubblewrap, hermetic", bot.runner));
            }
        }
        Ok(())
    }

    pub fn data_path(&self, path: &Path) -> PathBuf {
        self.data_dir.join(path)
    }
}

/// Instance names may have several `/`-separated segments, but none may be a keyword of the
/// ByteStream resource names, or the names could not be parsed.
pub fn check_instance_name(name: &str) -> Result<(), String> {
    const RESERVED: [&str; 7] = ["blobs", "uploads", "actions", "actionResults", "operations", "capabilities", "compressed-blobs"];
    if name.is_empty() {
        return Ok(());
    }
    for segment in name.split('/') {
        if segment.is_empty() || RESERVED.contains(&segment) {
            return Err(format!("{name:?} is not a valid instance name (empty segment or reserved word {segment:?})"));
        }
    }
    Ok(())
}

fn check_when_unavailable(text: &str) -> Result<(), String> {
    match text {
        "fail" | "queue" => Ok(()),
        other => Err(format!("{other:?} is not `fail` or `queue`")),
    }
}

/// The disk tier's sync policy from its configuration string.
pub fn parse_sync(text: &str) -> Result<strata_backends::disk::SyncPolicy, String> {
    use strata_backends::disk::SyncPolicy;
    match text {
        "always" => Ok(SyncPolicy::Always),
        "never" => Ok(SyncPolicy::Never),
        other => parse_duration(other)
            .map(SyncPolicy::Interval)
            .map_err(|_| format!("{other:?} is not `always`, `never` or an interval such as `100ms`")),
    }
}

/// Replaces each `${NAME}` with the variable's value; an unset variable is an error naming it.
fn substitute_env(text: &str, origin: &str) -> Result<String, ConfigError> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(after.len());
        if end == 0 || !after[end..].starts_with('}') {
            let line = text[..text.len() - rest.len() + start].matches('\n').count() + 1;
            return Err(ConfigError::Invalid {
                origin: origin.into(),
                message: format!("line {line}: unterminated or malformed ${{...}}: write ${{NAME}} with letters, digits and _"),
            });
        }
        let name = &after[..end];
        let value = std::env::var(name)
            .map_err(|_| ConfigError::UnsetVariable { origin: origin.into(), name: name.into() })?;
        out.push_str(&value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}


/// Parses `250ms`, `10s`, `5m`, `1h`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().map_err(|_| format!("{text:?} is not a duration such as 100ms or 10s"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        "h" => Ok(Duration::from_secs(n * 3600)),
        _ => Err(format!("{text:?} is not a duration such as 100ms, 10s, 5m or 1h")),
    }
}

mod duration {
    use std::time::Duration;

    use serde::Deserialize;

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        super::parse_duration(&String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests;
