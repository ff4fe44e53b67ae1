//! The admin API's answers, computed in one place for its gRPC service (`services::admin`), the
//! status page and `strata status`: what each instance's storage holds and how often it hits, the
//! scheduler's queue and bots, and the operator's actions (cancel, locate, evict, warm).

pub mod client;

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use strata_backends::{Digest, DigestFunction};
use tonic::Status;

use crate::exec::scheduler::{OpState, Outcome, Scheduler};
use crate::health::Health;
use crate::instances::{Instance, Instances};
use crate::metrics::Metrics;
use crate::protocol::admin as pb;
use crate::quote::quote;

/// Blob reads in flight at once while warming.
const WARM_CONCURRENCY: usize = 16;
/// Digests one Warm call may name.
const MAX_WARM_DIGESTS: usize = 100_000;

pub struct Admin {
    pub instances: Arc<Instances>,
    pub scheduler: Option<Arc<Scheduler>>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

impl Admin {
    pub fn status(&self) -> pb::ServerStatus {
        let instances = self.instances.all().map(|i| self.instance_status(i)).collect();
        let scheduler = match &self.scheduler {
            None => pb::SchedulerStatus::default(),
            Some(s) => {
                let snap = s.snapshot();
                pb::SchedulerStatus {
                    enabled: true,
                    queued: snap.queued.iter().map(|g| g.jobs as u64).sum(),
                    running: snap.running.len() as u64,
                    bots: snap.bots.len() as u64,
                    operations: snap.operations as u64,
                    queue: snap
                        .queued
                        .iter()
                        .map(|g| pb::QueuedPlatform {
                            instance: g.instance.clone(),
                            platform: g.platform.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
                            jobs: g.jobs as u64,
                        })
                        .collect(),
                }
            }
        };
        pb::ServerStatus {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_seconds: self.metrics.started.elapsed().as_secs(),
            instances,
            scheduler: Some(scheduler),
            ready: self.health.all_up(),
        }
    }

    fn instance_status(&self, instance: &Instance) -> pb::InstanceStatus {
        let ratio = |cache, op| {
            let count = |result| {
                let labels = crate::metrics::Lookup { instance: instance.name.clone(), cache, op, result };
                self.metrics.lookups.get(&labels).map_or(0, |c| c.get())
            };
            Some(pb::Ratio { hits: count("hit"), misses: count("miss") })
        };
        let ac = ["get", "execute"].map(|op| ratio("action_cache", op).unwrap_or_default());
        let now = std::time::SystemTime::now();
        let (storage, tiers) = match &instance.storage {
            None => (String::new(), Vec::new()),
            Some(storage) => {
                let health = self.health.stacks.iter().find(|h| Arc::ptr_eq(&h.storage, storage));
                let tiers = storage
                    .tiers
                    .iter()
                    .enumerate()
                    .map(|(n, t)| {
                        let s = t.store.stats();
                        let probe = health.and_then(|h| h.tiers.get(n)).map(|p| p.lock().clone());
                        pb::TierStatus {
                            role: t.role.to_string(),
                            name: t.name.clone(),
                            kind: t.kind.to_string(),
                            blobs: s.blobs,
                            bytes: s.bytes,
                            hits: s.hits,
                            misses: s.misses,
                            evictions: s.evictions,
                            bytes_written: s.bytes_written,
                            stored_bytes_written: s.stored_bytes_written,
                            oldest_age_seconds: s.oldest.and_then(|o| now.duration_since(o).ok()).map_or(0, |d| d.as_secs()),
                            spooled: s.spooled,
                            reachable: probe.as_ref().is_none_or(|p| p.up),
                            error: probe.and_then(|p| p.error).unwrap_or_default(),
                        }
                    })
                    .collect();
                (storage.name.clone(), tiers)
            }
        };
        pb::InstanceStatus {
            name: instance.name.clone(),
            services: instance.service_names().into_iter().map(str::to_string).collect(),
            storage_up: self.health.stack_up(&storage),
            storage,
            tiers,
            action_cache: Some(pb::Ratio { hits: ac[0].hits + ac[1].hits, misses: ac[0].misses + ac[1].misses }),
            cas_find_missing: ratio("cas", "find_missing"),
            cas_read: ratio("cas", "read"),
            asset: ratio("asset", "fetch"),
        }
    }

    fn scheduler(&self) -> Result<&Arc<Scheduler>, Status> {
        self.scheduler.as_ref().ok_or_else(|| Status::failed_precondition("this server runs no scheduler (no instance serves execution)"))
    }

    pub fn bots(&self) -> Vec<pb::Bot> {
        let Some(scheduler) = &self.scheduler else { return Vec::new() };
        let mut bots: Vec<pb::Bot> = scheduler
            .snapshot()
            .bots
            .into_iter()
            .map(|b| pb::Bot {
                session: b.session,
                bot_id: b.bot_id,
                instance: b.instance,
                status: b.status,
                capacity: u32::try_from(b.capacity).unwrap_or(u32::MAX),
                busy: u32::try_from(b.busy).unwrap_or(u32::MAX),
                properties: b.properties.into_iter().map(|(name, value)| pb::Property { name, value }).collect(),
                last_seen_seconds: b.last_seen.as_secs(),
            })
            .collect();
        bots.sort_by(|a, b| (&a.instance, &a.bot_id).cmp(&(&b.instance, &b.bot_id)));
        bots
    }

    /// Operations, newest first.
    pub fn operations(&self, limit: usize) -> Vec<pb::Operation> {
        let Some(scheduler) = &self.scheduler else { return Vec::new() };
        let (mut views, _) = scheduler.list("", usize::MAX, |_| true);
        views.sort_by_key(|v| std::cmp::Reverse(sequence(&v.name)));
        views.truncate(limit);
        views.iter().map(|v| operation(&v.name, &v.action_digest, &v.state.borrow())).collect()
    }

    /// The result of the newest operation of `action` that ran to a result (failed actions are not
    /// cached, so the action cache alone cannot show them), with the operation's name.
    pub fn latest_result(&self, action: &Digest) -> Option<(String, bazel_remote_apis::build::bazel::remote::execution::v2::ActionResult)> {
        let (views, _) = self.scheduler.as_ref()?.list("", usize::MAX, |_| true);
        views
            .iter()
            .filter(|v| v.action_digest == *action)
            .filter_map(|v| match &v.state.borrow().outcome {
                Some(Outcome::Response(r)) => Some((v.name.clone(), r.result.clone()?)),
                _ => None,
            })
            .max_by_key(|(name, _)| sequence(name))
    }

    pub fn cancel(&self, name: &str) -> Result<(), Status> {
        self.scheduler()?.cancel(name).map_err(crate::status::from_scheduler)
    }

    pub async fn locate(&self, instance: &str, digest: &pb::Digest) -> Result<Vec<pb::TierPresence>, Status> {
        let digest = parse(digest)?;
        let mut found = Vec::new();
        for tier in self.tiers(instance)?.iter().filter(|t| t.role == "cas") {
            let (present, error) = match tier.store.contains(&[digest]).await {
                Ok(p) => (p.first().copied().unwrap_or(false), String::new()),
                Err(e) => (false, e.to_string()),
            };
            found.push(pb::TierPresence { tier: tier.name.clone(), present, error });
        }
        Ok(found)
    }

    pub async fn evict(&self, instance: &str, digest: &pb::Digest) -> Result<Vec<String>, Status> {
        let digest = parse(digest)?;
        let mut evicted = Vec::new();
        for tier in self.tiers(instance)?.iter().filter(|t| t.role == "cas" && t.local) {
            if tier.store.evict(&digest).await.map_err(crate::status::from_store)? {
                evicted.push(tier.name.clone());
            }
        }
        Ok(evicted)
    }

    /// Reads each blob (and, for a tree, every Directory and file under it) through the stack.
    pub async fn warm(&self, instance: &str, digests: &[pb::Digest], tree_root: Option<&pb::Digest>) -> Result<pb::WarmResponse, Status> {
        let cas = self.instances.get(instance)?.cas.clone().ok_or_else(|| Status::failed_precondition(format!("instance {} does not serve the CAS", quote(instance))))?;
        if digests.len() > MAX_WARM_DIGESTS {
            return Err(Status::invalid_argument(format!("{} digests in one Warm call; at most {MAX_WARM_DIGESTS}", digests.len())));
        }
        let mut wanted: Vec<Digest> = digests.iter().map(parse).collect::<Result<_, _>>()?;
        if let Some(root) = tree_root {
            wanted.extend(tree_blobs(&cas, parse(root)?).await?);
        }
        let reads = futures::stream::iter(wanted.into_iter().map(|d| {
            let cas = cas.clone();
            async move {
                let Some(blob) = cas.read(&d, 0, None).await? else { return Ok::<_, strata_backends::StoreError>((d, None)) };
                let bytes = blob.into_stream().try_fold(0u64, |n, chunk| async move { Ok(n + chunk.len() as u64) }).await?;
                Ok((d, Some(bytes)))
            }
        }))
        .buffer_unordered(WARM_CONCURRENCY);
        let results: Vec<_> = reads.try_collect().await.map_err(crate::status::from_store)?;
        let mut response = pb::WarmResponse::default();
        for (digest, read) in results {
            match read {
                Some(bytes) => {
                    response.warmed += 1;
                    response.bytes += bytes;
                }
                None => response.missing.push(to_pb(&digest)),
            }
        }
        Ok(response)
    }

    fn tiers(&self, instance: &str) -> Result<&[crate::storage::TierView], Status> {
        let i = self.instances.get(instance)?;
        let storage = i.storage.as_ref().ok_or_else(|| Status::failed_precondition(format!("instance {} has no storage stack", quote(instance))))?;
        Ok(&storage.tiers)
    }
}

/// Operation names end in a counter: the newest has the largest number (not the last string).
fn sequence(name: &str) -> u64 {
    name.rsplit('-').next().and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Every Directory under `root` and every file they name (the root included).
async fn tree_blobs(cas: &crate::cas::Cas, root: Digest) -> Result<Vec<Digest>, Status> {
    let function = root.function;
    let root_dir = crate::tree::load(cas, &root, "Directory")
        .await
        .map_err(crate::status::from_tree)?
        .ok_or_else(|| Status::not_found(format!("tree root {root} is not in the CAS")))?;
    let mut blobs = vec![root];
    let mut walk = crate::tree::Walk::new(cas.clone(), function, root, root_dir);
    while let Some(dir) = walk.next().await.map_err(crate::status::from_tree)? {
        for file in &dir.files {
            if let Ok(d) = crate::protocol::from_proto(function, file.digest.as_ref(), "file") {
                blobs.push(d);
            }
        }
        for sub in &dir.directories {
            if let Ok(d) = crate::protocol::from_proto(function, sub.digest.as_ref(), "directory") {
                blobs.push(d);
            }
        }
    }
    blobs.sort_by_key(|d| (d.hash_hex(), d.size));
    blobs.dedup();
    Ok(blobs)
}

pub fn parse(digest: &pb::Digest) -> Result<Digest, Status> {
    let function = match digest.digest_function.as_str() {
        "" => DigestFunction::Sha256,
        name => DigestFunction::from_name(name)
            .ok_or_else(|| Status::invalid_argument(format!("unknown digest function {}; sha256 or blake3", quote(name))))?,
    };
    Digest::parse(function, &digest.hash, digest.size_bytes).map_err(|e| Status::invalid_argument(format!("digest: {e}")))
}

pub fn to_pb(digest: &Digest) -> pb::Digest {
    let function = if digest.function == DigestFunction::Sha256 { String::new() } else { digest.function.name().to_string() };
    pb::Digest { hash: digest.hash_hex(), size_bytes: digest.size as i64, digest_function: function }
}

fn operation(name: &str, action: &Digest, state: &OpState) -> pb::Operation {
    let stage = match state.stage {
        bazel_remote_apis::build::bazel::remote::execution::v2::execution_stage::Value::Queued => "QUEUED",
        bazel_remote_apis::build::bazel::remote::execution::v2::execution_stage::Value::Executing => "EXECUTING",
        bazel_remote_apis::build::bazel::remote::execution::v2::execution_stage::Value::Completed => "COMPLETED",
        _ => "UNKNOWN",
    };
    let mut op = pb::Operation { name: name.to_string(), action_digest: Some(to_pb(action)), stage: stage.to_string(), ..Default::default() };
    match &state.outcome {
        Some(Outcome::Response(r)) => {
            op.exit_code = r.result.as_ref().map_or(0, |a| a.exit_code);
            op.error = r.status.as_ref().filter(|s| s.code != 0).map(|s| s.message.clone()).unwrap_or_default();
            op.cached = r.cached_result;
        }
        Some(Outcome::Error(code, message)) => op.error = format!("{code:?}: {message}"),
        None => {}
    }
    op
}
