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
        self.validate_auth()?;
        self.validate_storage()
    }

    fn validate_auth(&self) -> Result<(), String> {
        let Some(auth) = &self.auth else { return Ok(()) };
        check_grant(self, &auth.anonymous).map_err(|e| format!("auth.anonymous: {e}"))?;
        if let Some(jwt) = &auth.jwt {
            if jwt.key_files.is_empty() && jwt.jwks_file.is_none() {
                return Err("auth.jwt: give key_files or a jwks_file to verify tokens with".into());
            }
        }
        let mut names = HashSet::new();
        for (i, id) in auth.identities.iter().enumerate() {
            let key = format!("auth.identities[{i}]");
            if id.name.is_empty() || id.name.len() > 128 || id.name.chars().any(|c| c.is_control()) {
                return Err(format!("{key}.name: must be 1 to 128 printable characters"));
            }
            if !names.insert(id.name.as_str()) {
                return Err(format!("{key}.name: identity {:?} is defined twice", id.name));
            }
            let credentials = [id.token_file.is_some(), id.token_sha256.is_some(), id.jwt_subject.is_some(), id.certificate_subject.is_some()];
            if credentials.iter().filter(|c| **c).count() != 1 {
                return Err(format!("{key}: give exactly one of token_file, token_sha256, jwt_subject, certificate_subject"));
            }
            if let Some(hash) = &id.token_sha256 {
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(format!("{key}.token_sha256: expected 64 hex digits (the SHA-256 of the token, e.g. from `sha256sum`)"));
                }
            }
            if id.jwt_subject.is_some() && auth.jwt.is_none() {
                return Err(format!("{key}.jwt_subject: needs auth.jwt (the issuer, audience and keys to verify tokens with)"));
            }
            if id.certificate_subject.is_some() && self.tls.as_ref().is_none_or(|t| t.client_ca.is_none()) {
                return Err(format!("{key}.certificate_subject: needs tls.client_ca (the CA that signs client certificates)"));
            }
            check_grant(self, &id.permissions).map_err(|e| format!("{key}.permissions: {e}"))?;
        }
        Ok(())
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
                if list == "action_cache" && kind.compression_set() {
                    return Err(format!("{key}.compression applies to CAS tiers only: action results are small and kept as they are"));
                }
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
/// A grant names only instances that exist (or `*`).
fn check_grant(config: &Config, grant: &super::Grant) -> Result<(), String> {
    for instance in grant.0.keys() {
        if instance != super::EVERY_INSTANCE && !config.instances.iter().any(|i| &i.name == instance) {
            return Err(format!("no instance named {instance:?} (use \"*\" for every instance)"));
        }
    }
    Ok(())
}

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
