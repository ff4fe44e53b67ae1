//! The YAML configuration: the top-level schema and loading. Storage and execution have their own
//! schema files, `${VAR}` substitution is `env`, cross-key checks are `validate`; sizes and durations
//! are `crate::units`. Unknown keys are errors, and every error names the key and the file.

mod auth;
mod env;
mod execution;
mod storage;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use crate::units::ByteSize;
use crate::units::duration;
pub use auth::{AuthConfig, Grant, IdentityConfig, JwtConfig, Permission, EVERY_INSTANCE};
pub use execution::{ExecutionConfig, LocalBotConfig};
pub use storage::{AcTier, CasTier, Checksum, DiskTier, ExistenceCacheConfig, MemoryTier, RemoteTier, S3Tier, StorageConfig, TierKind, TierPolicy, WhenUnavailable};
pub use validate::check_instance_name;

/// The configuration `strata serve` runs with when given none: everything on 127.0.0.1, memory in
/// front of a disk log under the data directory, on the empty instance name.
pub const DEFAULT_CONFIG: &str = include_str!("../../config/all-in-one.yaml");

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
    /// FetchBlob of http(s) URIs (Bazel's downloader): Strata downloads what its clients name, so it
    /// is off unless configured, and then only for the URL prefixes listed.
    #[serde(default)]
    pub http_fetch: Option<HttpFetchConfig>,
    /// The HTTP listener for `/metrics`, the status page and `/healthz`, `/readyz`.
    #[serde(default)]
    pub http: Option<HttpConfig>,
    /// How often each storage stack and tier is probed for the health services.
    #[serde(default = "default_probe_interval", with = "duration")]
    pub health_probe_interval: Duration,
    /// Identities and their permissions; without it every caller may do everything.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// HOST:PORT to serve HTTP on.
    pub listen: String,
}

fn default_probe_interval() -> Duration {
    Duration::from_secs(10)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFetchConfig {
    /// URL prefixes that may be downloaded, e.g. `https://` (any https URL) or
    /// `https://mirror.example.org/`.
    pub allow: Vec<String>,
    /// Bytes one download may have at most.
    #[serde(default = "default_download_size")]
    pub max_size: ByteSize,
    /// How long one download may take.
    #[serde(default = "default_download_timeout", with = "duration")]
    pub timeout: Duration,
}

fn default_download_size() -> ByteSize {
    ByteSize(4 << 30)
}
fn default_download_timeout() -> Duration {
    Duration::from_secs(300)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM.
    pub certificate: PathBuf,
    /// Its private key, PEM.
    pub key: PathBuf,
    /// Ask clients for certificates and accept those this CA (PEM) signed; their subjects are
    /// identities of `auth.identities`. Clients without one may still connect.
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstanceConfig {
    pub name: String,
    pub storage: String,
    pub services: Vec<Service>,
}

impl Service {
    /// The name the configuration uses.
    pub fn name(self) -> &'static str {
        match self {
            Service::Cas => "cas",
            Service::ActionCache => "action_cache",
            Service::Execution => "execution",
            Service::Asset => "asset",
        }
    }
}

#[derive(Debug, Deserialize, Clone, Copy, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Service {
    /// ContentAddressableStorage and ByteStream.
    Cas,
    ActionCache,
    /// Execution, Operations and the Bots service for workers.
    Execution,
    /// The Remote Asset API (Fetch and Push), for BuildStream's caches and Bazel's downloader.
    Asset,
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
        let text = env::substitute(text, origin)?;
        let invalid = |message: String| ConfigError::Invalid { origin: origin.to_string(), message };
        let config: Config = yaml_serde::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    /// What this configuration runs, a line per instance and per in-process bot, for the start-up log.
    pub fn summary(&self) -> Vec<String> {
        let mut lines = Vec::new();
        for instance in &self.instances {
            let services: Vec<&str> = instance.services.iter().map(|s| s.name()).collect();
            let stack = self.storage.get(&instance.storage).map_or_else(String::new, |s| s.describe());
            lines.push(format!("instance {:?}: {} on storage {:?} ({stack})", instance.name, services.join(", "), instance.storage));
        }
        for bot in &self.execution.bots {
            let capacity = bot.capacity.map_or("one per core".to_string(), |c| c.to_string());
            let runner = format!("{:?}", bot.runner).to_lowercase();
            lines.push(format!("bot for instance {:?}: {runner} runner, {capacity} slots", bot.instance));
        }
        if let Some(http) = &self.http_fetch {
            lines.push(format!("http_fetch: FetchBlob downloads URLs starting with {}", http.allow.join(", ")));
        }
        lines
    }

    pub fn data_path(&self, path: &Path) -> PathBuf {
        self.data_dir.join(path)
    }
}

#[cfg(test)]
mod tests;
