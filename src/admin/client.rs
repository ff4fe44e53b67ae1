//! `strata status` and `strata admin ...`: the admin API from the command line, as tables for people
//! or JSON (`--json`) for scripts.

use std::fmt::Write as _;
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::protocol::admin as pb;
use crate::protocol::admin::admin_client::AdminClient;
use crate::units::ByteSize;

#[derive(Args, Clone, Debug)]
pub struct Target {
    /// The server's gRPC address, grpc://HOST:PORT or grpcs://HOST:PORT.
    #[arg(long, default_value = "grpc://127.0.0.1:50051")]
    pub server: String,
    #[command(flatten)]
    pub credentials: crate::protocol::credentials::CredentialFlags,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Clone, Debug)]
pub enum AdminCommand {
    /// The bot sessions attached to the scheduler.
    Bots,
    /// Operations, newest first.
    Operations {
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Cancel an operation by name.
    Cancel { name: String },
    /// Which tiers hold a blob (HASH/SIZE).
    Locate {
        digest: String,
        #[arg(long, default_value = "")]
        instance: String,
    },
    /// Drop a blob (HASH/SIZE) from the local tiers.
    Evict {
        digest: String,
        #[arg(long, default_value = "")]
        instance: String,
    },
    /// Read blobs (HASH/SIZE ...) and/or a whole tree (--tree HASH/SIZE) into the local tiers.
    Warm {
        digests: Vec<String>,
        #[arg(long)]
        tree: Option<String>,
        #[arg(long, default_value = "")]
        instance: String,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach {server} ({message}); is `strata serve` running there?")]
    Unreachable { server: String, message: String },
    #[error("{server} answered {code:?}: {message}")]
    Refused { server: String, code: tonic::Code, message: String },
}

async fn connect(target: &Target) -> Result<AdminClient<crate::protocol::AuthChannel>, AdminError> {
    let auth = target.credentials.load().map_err(AdminError::Usage)?;
    let channel = crate::protocol::channel(&target.server, &auth, Duration::from_secs(5)).map_err(|e| AdminError::Usage(e.to_string()))?;
    Ok(AdminClient::new(channel))
}

fn failed(target: &Target, status: tonic::Status) -> AdminError {
    let server = target.server.clone();
    match status.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded => AdminError::Unreachable { server, message: status.message().to_string() },
        code => AdminError::Refused { server, code, message: status.message().to_string() },
    }
}

/// `HASH/SIZE`, as Bazel prints digests.
fn digest_arg(text: &str) -> Result<pb::Digest, AdminError> {
    let (hash, size) = text.split_once('/').ok_or_else(|| AdminError::Usage(format!("{text:?}: expected HASH/SIZE")))?;
    let size_bytes = size.parse().map_err(|_| AdminError::Usage(format!("{text:?}: the size is not a number")))?;
    Ok(pb::Digest { hash: hash.to_string(), size_bytes, digest_function: String::new() })
}

fn json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}")) + "\n"
}

/// `strata status`: what the server holds and does.
pub async fn status(target: &Target) -> Result<String, AdminError> {
    let mut client = connect(target).await?;
    let status = client.get_status(pb::GetStatusRequest {}).await.map_err(|e| failed(target, e))?.into_inner();
    let bots = client.list_bots(pb::ListBotsRequest {}).await.map_err(|e| failed(target, e))?.into_inner();
    if target.json {
        return Ok(json(&serde_json::json!({ "status": status, "bots": bots.bots })));
    }
    Ok(render_status(&status, &bots.bots))
}

/// A ratio as "H hits / M misses (P%)".
pub fn ratio(r: Option<&pb::Ratio>) -> String {
    let r = r.cloned().unwrap_or_default();
    let total = r.hits + r.misses;
    if total == 0 {
        return "no lookups".into();
    }
    format!("{} hits / {} misses ({:.1}%)", r.hits, r.misses, 100.0 * r.hits as f64 / total as f64)
}

pub fn render_status(status: &pb::ServerStatus, bots: &[pb::Bot]) -> String {
    let mut out = String::new();
    let ready = if status.ready { "ready" } else { "NOT READY (storage failing)" };
    let _ = writeln!(out, "strata {} up {}s, {ready}", status.version, status.uptime_seconds);
    for i in &status.instances {
        let _ = writeln!(out, "\ninstance {:?}: {} on storage {:?}", i.name, i.services.join(", "), i.storage);
        let _ = writeln!(out, "  action cache  {}", ratio(i.action_cache.as_ref()));
        let _ = writeln!(out, "  cas find      {}", ratio(i.cas_find_missing.as_ref()));
        let _ = writeln!(out, "  cas read      {}", ratio(i.cas_read.as_ref()));
        let _ = writeln!(out, "  {:<13} {:<8} {:>10} {:>10} {:>10} {:>10} {:>9}  tier", "role", "kind", "blobs", "bytes", "hits", "misses", "evicted");
        for t in &i.tiers {
            let reach = if t.reachable { String::new() } else { format!("  UNREACHABLE: {}", t.error) };
            let _ = writeln!(
                out,
                "  {:<13} {:<8} {:>10} {:>10} {:>10} {:>10} {:>9}  {}{reach}",
                t.role,
                t.kind,
                t.blobs,
                ByteSize(t.bytes).human(),
                t.hits,
                t.misses,
                t.evictions,
                t.name
            );
        }
    }
    if let Some(s) = status.scheduler.as_ref().filter(|s| s.enabled) {
        let _ = writeln!(out, "\nscheduler: {} queued, {} running, {} operations held", s.queued, s.running, s.operations);
        for q in &s.queue {
            let _ = writeln!(out, "  queued {:>5}  instance {:?} platform {}", q.jobs, q.instance, q.platform);
        }
        let _ = writeln!(out, "bots: {}", bots.len());
        for b in bots {
            let _ = writeln!(out, "  {:<30} instance {:?} {}/{} busy, {}, seen {}s ago", b.bot_id, b.instance, b.busy, b.capacity, b.status, b.last_seen_seconds);
        }
    }
    out
}

/// `strata admin ...`.
pub async fn admin(target: &Target, command: &AdminCommand) -> Result<String, AdminError> {
    let mut client = connect(target).await?;
    let fail = |e| failed(target, e);
    match command {
        AdminCommand::Bots => {
            let bots = client.list_bots(pb::ListBotsRequest {}).await.map_err(fail)?.into_inner().bots;
            if target.json {
                return Ok(json(&bots));
            }
            let mut out = format!("{:<30} {:<10} {:>4}/{:<4} {:<12} properties\n", "bot", "instance", "busy", "cap", "status");
            for b in &bots {
                let props: Vec<String> = b.properties.iter().map(|p| format!("{}={}", p.name, p.value)).collect();
                let _ = writeln!(out, "{:<30} {:<10} {:>4}/{:<4} {:<12} {}", b.bot_id, format!("{:?}", b.instance), b.busy, b.capacity, b.status, props.join(","));
            }
            Ok(out)
        }
        AdminCommand::Operations { limit } => {
            let ops = client.list_operations(pb::ListOperationsRequest { limit: *limit }).await.map_err(fail)?.into_inner().operations;
            if target.json {
                return Ok(json(&ops));
            }
            let mut out = format!("{:<40} {:<10} {:>5}  action\n", "operation", "stage", "exit");
            for o in &ops {
                let d = o.action_digest.clone().unwrap_or_default();
                let note = if o.error.is_empty() { String::new() } else { format!("  ({})", o.error) };
                let _ = writeln!(out, "{:<40} {:<10} {:>5}  {}/{}{note}", o.name, o.stage, o.exit_code, d.hash, d.size_bytes);
            }
            Ok(out)
        }
        AdminCommand::Cancel { name } => {
            client.cancel_operation(pb::CancelOperationRequest { name: name.clone() }).await.map_err(fail)?;
            Ok(if target.json { json(&serde_json::json!({ "cancelled": name })) } else { format!("cancelled {name}\n") })
        }
        AdminCommand::Locate { digest, instance } => {
            let request = pb::LocateBlobRequest { instance: instance.clone(), digest: Some(digest_arg(digest)?) };
            let tiers = client.locate_blob(request).await.map_err(fail)?.into_inner().tiers;
            if target.json {
                return Ok(json(&tiers));
            }
            let mut out = String::new();
            for t in &tiers {
                let state = if !t.error.is_empty() { format!("cannot tell: {}", t.error) } else if t.present { "present".into() } else { "absent".into() };
                let _ = writeln!(out, "{:<10} {}", state, t.tier);
            }
            Ok(out)
        }
        AdminCommand::Evict { digest, instance } => {
            let request = pb::EvictBlobRequest { instance: instance.clone(), digest: Some(digest_arg(digest)?) };
            let evicted = client.evict_blob(request).await.map_err(fail)?.into_inner().evicted_from;
            if target.json {
                return Ok(json(&evicted));
            }
            Ok(match evicted.len() {
                0 => "no local tier held it\n".into(),
                _ => format!("evicted from {}\n", evicted.join(", ")),
            })
        }
        AdminCommand::Warm { digests, tree, instance } => {
            let digests = digests.iter().map(|d| digest_arg(d)).collect::<Result<Vec<_>, _>>()?;
            let tree_root = tree.as_deref().map(digest_arg).transpose()?;
            let warmed = client.warm(pb::WarmRequest { instance: instance.clone(), digests, tree_root }).await.map_err(fail)?.into_inner();
            if target.json {
                return Ok(json(&warmed));
            }
            let mut out = format!("warmed {} blobs, {}\n", warmed.warmed, ByteSize(warmed.bytes).human());
            for m in &warmed.missing {
                let _ = writeln!(out, "missing {}/{}", m.hash, m.size_bytes);
            }
            Ok(out)
        }
    }
}
