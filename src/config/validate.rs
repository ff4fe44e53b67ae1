//! The checks that need more than one key at a time, run once at load. Each error names the key.

use std::collections::HashSet;
use std::net::SocketAddr;

use super::storage::{CasTier, TierKind};
use super::{Config, Service};

impl Config {
    pub(super) fn validate(&self) -> Result<(), String> {
        self.listen
            .parse::<SocketAddr>()
            .map_err(|e| format!("listen: {:?} is not HOST:PORT ({e})", self.listen))?;
        if self.max_batch_total_size.0 < 64 * 1024 {
            return Err(format!("max_batch_total_size: {} is below the minimum of 64KiB", self.max_batch_total_size));
        }
        self.validate_instances()?;
        if let Some(http) = &self.http_fetch {
            for (i, prefix) in http.allow.iter().enumerate() {
                if !(prefix.starts_with("http://") || prefix.starts_with("https://")) {
                    return Err(format!("http_fetch.allow[{i}]: {prefix:?} is not an http:// or https:// URL prefix"));
                }
            }
            if http.timeout.is_zero() {
                return Err("http_fetch.timeout: must be longer than zero".into());
            }
        }
        if self.health_probe_interval < std::time::Duration::from_millis(10) {
            return Err("health_probe_interval: must be at least 10ms".into());
        }
        if let Some(http) = &self.http {
            if http.listen.parse::<std::net::SocketAddr>().is_err() && !http.listen.contains(':') {
                return Err(format!("http.listen: {:?} is not HOST:PORT", http.listen));
            }
        }
        self.validate_execution()?;
        self.validate_storage()
    }

    fn validate_instances(&self) -> Result<(), String> {
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
        Ok(())
    }

    fn validate_storage(&self) -> Result<(), String> {
        let mut disk_paths = HashSet::new();
        for (name, storage) in &self.storage {
            if storage.cas.is_empty() {
                return Err(format!("storage.{name}.cas: at least one tier is needed"));
            }
            if storage.action_cache.is_empty() {
                return Err(format!("storage.{name}.action_cache: at least one tier is needed"));
            }
            for (i, tier) in storage.cas.iter().enumerate() {
                let key = format!("storage.{name}.cas[{i}]");
                check_policy(tier).map_err(|e| format!("{key}.{e}"))?;
            }
            let kinds = storage.cas.iter().map(|t| &t.kind).zip(std::iter::repeat("cas"));
            let ac_kinds = storage.action_cache.iter().map(|t| &t.kind).zip(std::iter::repeat("action_cache"));
            let mut index = std::collections::HashMap::new();
            for (kind, list) in kinds.chain(ac_kinds) {
                let i = index.entry(list).and_modify(|i| *i += 1).or_insert(0usize);
                let key = format!("storage.{name}.{list}[{i}]");
                match kind {
                    TierKind::Disk(disk) => {
                        if !disk_paths.insert(self.data_path(&disk.path)) {
                            return Err(format!("{key}.path: {} is used by another disk tier", disk.path.display()));
                        }
                    }
                    TierKind::S3(s3) => {
                        if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
                            return Err(format!("{key}: access_key_id and secret_access_key go together"));
                        }
                        if s3.part_size.0 < 5 << 20 {
                            return Err(format!("{key}.part_size: {} is below S3's minimum of 5MiB", s3.part_size));
                        }
                    }
                    TierKind::Remote(_) | TierKind::Memory(_) => {}
                }
            }
        }
        Ok(())
    }

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
        }
        Ok(())
    }
}

/// A policy key set on a kind of tier it means nothing for; an empty size class.
fn check_policy(tier: &CasTier) -> Result<(), String> {
    let policy = &tier.policy;
    if let Some(key) = policy.misplaced(&tier.kind) {
        let applies = if tier.kind.is_upstream() { "memory and disk tiers" } else { "remote and s3 tiers" };
        return Err(format!("{key}: applies to {applies} only, not to a {} tier", tier.kind.name()));
    }
    if let (Some(min), Some(max)) = (policy.min_blob, policy.max_blob) {
        if min.0 > max.0 {
            return Err(format!("min_blob: {min} is above max_blob ({max}): the tier would hold nothing"));
        }
    }
    if policy.queue_retry.is_some_and(|d| d.is_zero()) {
        return Err("queue_retry: must be longer than zero".into());
    }
    Ok(())
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
