//! The execution part of the configuration: the scheduler's limits and the bots `strata serve`
//! runs in process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::bot::RunnerKind;
use crate::units::{duration, ByteSize};

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
    #[serde(default)]
    pub runner: RunnerKind,
    /// Its work directory, relative to `data_dir` unless absolute.
    #[serde(default = "default_bot_dir")]
    pub work_dir: PathBuf,
    /// The platform properties it offers.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Bytes its input cache holds at most.
    #[serde(default = "default_bot_cache_size")]
    pub cache_size: ByteSize,
    /// The user host-runner actions run as when the bot runs as root (default `nobody`).
    #[serde(default)]
    pub run_as: Option<String>,
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
fn default_bot_cache_size() -> ByteSize {
    ByteSize(10 << 30)
}
fn default_bot_dir() -> PathBuf {
    "bot".into()
}
