//! The scenarios. Each prepares what it needs (blobs to read, cache entries to hit) before the clock
//! starts, then one `op` is one request (or one build-like step for `mixed`) of one client.

use std::sync::Arc;

use async_trait::async_trait;
use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use strata_backends::bytestream::ReadRequest;
use bazel_remote_apis::google::longrunning::operation;
use prost::Message;
use strata_backends::zstd_stream::{decompress, Decompressor};
use strata_backends::{compressed_resource_name, resource_name};
use strata_backends::Digest;

use super::blobs::{run_nonce, BlobFactory, UniqueBlob};
use super::client::{connect_all, max_batch, upload_batch, write_blob, Client, ZSTD};
use super::{BenchError, Done, Plan};
use crate::protocol::to_proto;

#[async_trait]
pub trait Scenario: Send + Sync {
    async fn op(&self, worker: usize, seq: u64) -> Result<Done, String>;
    async fn finish(&self) {}
}

/// Digests of small blobs a scenario reads, in rounds of `batch`.
const READ_SMALL_ROUNDS: usize = 8;
const AC_ENTRIES: usize = 100;
const MIXED_LARGE_EVERY: u64 = 16;
const MIXED_LARGE_SIZE: usize = 4 << 20;

pub async fn prepare(name: &str, plan: Arc<Plan>) -> Result<Arc<dyn Scenario>, BenchError> {
    let known = ["write-large", "read-large", "write-small", "read-small", "find-missing", "ac-hit", "execute", "mixed"];
    if !known.contains(&name) {
        return Err(BenchError::Usage(format!("unknown scenario {name:?}; one of {}, baseline, baseline-spawn", known.join(", "))));
    }
    let (clients, caps) = connect_all(&plan).await?;
    let nonce = run_nonce();
    let setup = |e: String| BenchError::Setup(e);
    let limit = max_batch(&caps);
    if matches!(name, "write-small" | "read-small") && (plan.args.batch * plan.small_size) as u64 > limit {
        return Err(BenchError::Usage(format!(
            "--batch {} of --small-size {} exceeds the endpoint's batch limit of {limit} bytes",
            plan.args.batch, plan.small_size
        )));
    }
    let mut c = clients[0].clone();
    Ok(match name {
        "write-large" => Arc::new(Large { plan: plan.clone(), clients, factory: BlobFactory::new(plan.function, plan.large_size, nonce, plan.compressed).map_err(setup)?, stored: vec![] }),
        "read-large" => {
            let factory = BlobFactory::new(plan.function, plan.large_size, nonce, plan.compressed).map_err(setup)?;
            let mut stored = Vec::new();
            for i in 0..plan.args.concurrency {
                let blob = factory.next();
                write_blob(&mut c, &plan, &blob, &format!("bench-{nonce}-setup-{i}")).await.map_err(setup)?;
                stored.push(blob.digest);
            }
            Arc::new(Large { plan: plan.clone(), clients, factory, stored })
        }
        "write-small" | "read-small" => {
            let factory = BlobFactory::new(plan.function, plan.small_size, nonce, plan.compressed).map_err(setup)?;
            let mut rounds = Vec::new();
            if name == "read-small" {
                for _ in 0..READ_SMALL_ROUNDS {
                    let blobs: Vec<UniqueBlob> = (0..plan.args.batch).map(|_| factory.next()).collect();
                    upload_batch(&mut c, &plan, &blobs).await.map_err(setup)?;
                    rounds.push(blobs.iter().map(|b| to_proto(&b.digest)).collect());
                }
            }
            Arc::new(Small { plan: plan.clone(), clients, factory, rounds })
        }
        "find-missing" => {
            let factory = BlobFactory::new(plan.function, 64, nonce, false).map_err(setup)?;
            let blobs: Vec<UniqueBlob> = (0..plan.args.find_missing).map(|_| factory.next()).collect();
            let present = &blobs[..blobs.len() / 2];
            let per_batch = (limit as usize / 2 / 64).clamp(1, 5000);
            for chunk in present.chunks(per_batch) {
                upload_batch(&mut c, &plan, chunk).await.map_err(setup)?;
            }
            let digests = blobs.iter().map(|b| to_proto(&b.digest)).collect();
            Arc::new(FindMissing { plan: plan.clone(), clients, digests, expect_missing: blobs.len() - present.len() })
        }
        "ac-hit" => Arc::new(AcHit::prepare(plan.clone(), clients, nonce).await.map_err(setup)?),
        "execute" => {
            let exec = caps.execution_capabilities.as_ref();
            if !exec.is_some_and(|e| e.exec_enabled) {
                return Err(BenchError::Unsupported { endpoint: plan.args.endpoint.clone(), message: "execution is not enabled".into() });
            }
            Arc::new(Execute::prepare(plan.clone(), clients).await.map_err(setup)?)
        }
        _ => Arc::new(Mixed::prepare(plan.clone(), clients, nonce).await.map_err(setup)?),
    })
}

/// write-large and read-large.
struct Large {
    plan: Arc<Plan>,
    clients: Vec<Client>,
    factory: BlobFactory,
    stored: Vec<Digest>,
}

#[async_trait]
impl Scenario for Large {
    async fn op(&self, worker: usize, seq: u64) -> Result<Done, String> {
        let mut client = self.clients[worker].clone();
        if self.stored.is_empty() {
            let blob = self.factory.next();
            let wire = write_blob(&mut client, &self.plan, &blob, &format!("bench-{worker}-{seq}")).await?;
            return Ok(Done { wire, ..Done::new(blob.digest.size, 1) });
        }
        let digest = self.stored[worker % self.stored.len()];
        let instance = &self.plan.args.instance;
        let (name, mut decompressor) = match self.plan.compressed {
            false => (resource_name(instance, None, &digest), None),
            true => (compressed_resource_name(instance, None, &digest), Some(Decompressor::new(digest.size).map_err(|e| e.to_string())?)),
        };
        let mut stream = client
            .bytestream
            .read(ReadRequest { resource_name: name, read_offset: 0, read_limit: 0 })
            .await
            .map_err(|s| format!("ByteStream.Read: {}", s.message()))?
            .into_inner();
        let mut hasher = digest.function.hasher();
        let (mut received, mut wire) = (0u64, 0u64);
        while let Some(msg) = stream.message().await.map_err(|s| format!("ByteStream.Read: {}", s.message()))? {
            wire += msg.data.len() as u64;
            let data = match &mut decompressor {
                None => msg.data,
                Some(d) => d.feed(&msg.data).map_err(|e| e.to_string())?.into(),
            };
            hasher.update(&data);
            received += data.len() as u64;
        }
        hasher.verify(&digest, received).map_err(|e| e.to_string())?;
        Ok(Done { wire, ..Done::new(received, 1) })
    }
}

/// write-small and read-small.
struct Small {
    plan: Arc<Plan>,
    clients: Vec<Client>,
    factory: BlobFactory,
    rounds: Vec<Vec<reapi::Digest>>,
}

#[async_trait]
impl Scenario for Small {
    async fn op(&self, worker: usize, seq: u64) -> Result<Done, String> {
        let mut client = self.clients[worker].clone();
        let n = self.plan.args.batch as u64;
        let bytes = n * self.plan.small_size as u64;
        if self.rounds.is_empty() {
            let blobs: Vec<UniqueBlob> = (0..n).map(|_| self.factory.next()).collect();
            let wire = upload_batch(&mut client, &self.plan, &blobs).await?;
            return Ok(Done { wire, ..Done::new(bytes, n) });
        }
        let digests = self.rounds[(worker + seq as usize) % self.rounds.len()].clone();
        let request = reapi::BatchReadBlobsRequest {
            instance_name: self.plan.args.instance.clone(),
            digests,
            acceptable_compressors: if self.plan.compressed { vec![ZSTD] } else { vec![] },
            digest_function: self.plan.function.to_proto(),
        };
        let resp = client.cas.batch_read_blobs(request).await.map_err(|s| format!("BatchReadBlobs: {}", s.message()))?;
        let mut wire = 0;
        for r in resp.into_inner().responses {
            let status = r.status.unwrap_or_default();
            wire += r.data.len() as u64;
            let data = match r.compressor {
                ZSTD => decompress(&r.data, self.plan.small_size as u64).map_err(|e| format!("BatchReadBlobs: {e}"))?,
                _ => r.data,
            };
            if status.code != 0 || data.len() != self.plan.small_size {
                return Err(format!("BatchReadBlobs: blob status {} ({} bytes): {}", status.code, data.len(), status.message));
            }
        }
        Ok(Done { wire, ..Done::new(bytes, n) })
    }
}

struct FindMissing {
    plan: Arc<Plan>,
    clients: Vec<Client>,
    digests: Vec<reapi::Digest>,
    expect_missing: usize,
}

#[async_trait]
impl Scenario for FindMissing {
    async fn op(&self, worker: usize, _seq: u64) -> Result<Done, String> {
        let mut client = self.clients[worker].clone();
        let request = reapi::FindMissingBlobsRequest {
            instance_name: self.plan.args.instance.clone(),
            blob_digests: self.digests.clone(),
            digest_function: self.plan.function.to_proto(),
        };
        let resp = client.cas.find_missing_blobs(request).await.map_err(|s| format!("FindMissingBlobs: {}", s.message()))?;
        let missing = resp.into_inner().missing_blob_digests.len();
        if missing != self.expect_missing {
            return Err(format!("FindMissingBlobs reported {missing} missing, expected {}", self.expect_missing));
        }
        Ok(Done::new(0, self.digests.len() as u64))
    }
}

struct AcHit {
    plan: Arc<Plan>,
    clients: Vec<Client>,
    actions: Vec<reapi::Digest>,
}

impl AcHit {
    async fn prepare(plan: Arc<Plan>, clients: Vec<Client>, nonce: u64) -> Result<AcHit, String> {
        let mut c = clients[0].clone();
        let outputs = BlobFactory::new(plan.function, 256, nonce, false)?;
        let actions = BlobFactory::new(plan.function, 100, nonce ^ 0xac, false)?;
        let mut digests = Vec::new();
        for _ in 0..AC_ENTRIES {
            let out = outputs.next();
            upload_batch(&mut c, &plan, std::slice::from_ref(&out)).await?;
            let action = to_proto(&actions.next().digest);
            put_result(&mut c, &plan, &action, &out.digest).await?;
            digests.push(action);
        }
        Ok(AcHit { plan, clients, actions: digests })
    }
}

async fn put_result(c: &mut Client, plan: &Plan, action: &reapi::Digest, output: &Digest) -> Result<(), String> {
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile { path: "out".into(), digest: Some(to_proto(output)), ..Default::default() }],
        ..Default::default()
    };
    c.action_cache
        .update_action_result(reapi::UpdateActionResultRequest {
            instance_name: plan.args.instance.clone(),
            action_digest: Some(action.clone()),
            action_result: Some(result),
            results_cache_policy: None,
            digest_function: plan.function.to_proto(),
        })
        .await
        .map_err(|s| format!("UpdateActionResult: {}", s.message()))?;
    Ok(())
}

fn get_result(plan: &Plan, action: &reapi::Digest) -> reapi::GetActionResultRequest {
    reapi::GetActionResultRequest {
        instance_name: plan.args.instance.clone(),
        action_digest: Some(action.clone()),
        digest_function: plan.function.to_proto(),
        ..Default::default()
    }
}

#[async_trait]
impl Scenario for AcHit {
    async fn op(&self, worker: usize, seq: u64) -> Result<Done, String> {
        let mut client = self.clients[worker].clone();
        let action = &self.actions[(worker * 7 + seq as usize) % self.actions.len()];
        client.action_cache.get_action_result(get_result(&self.plan, action)).await.map_err(|s| format!("GetActionResult: {}", s.message()))?;
        Ok(Done::new(0, 1))
    }
}

/// Execute of `true` with no inputs, never cached, so every op runs on a worker.
struct Execute {
    plan: Arc<Plan>,
    clients: Vec<Client>,
    action: reapi::Digest,
}

impl Execute {
    async fn prepare(plan: Arc<Plan>, clients: Vec<Client>) -> Result<Execute, String> {
        let mut c = clients[0].clone();
        let command = reapi::Command { arguments: vec!["true".into()], ..Default::default() }.encode_to_vec();
        let command_digest = plan.function.digest_of(&command);
        let input_root = plan.function.digest_of(&[]);
        let action = reapi::Action {
            command_digest: Some(to_proto(&command_digest)),
            input_root_digest: Some(to_proto(&input_root)),
            do_not_cache: true,
            ..Default::default()
        }
        .encode_to_vec();
        let action_digest = plan.function.digest_of(&action);
        let blobs = [(command_digest, command), (action_digest, action), (input_root, Vec::new())];
        let request = reapi::BatchUpdateBlobsRequest {
            instance_name: plan.args.instance.clone(),
            requests: blobs
                .into_iter()
                .map(|(d, data)| reapi::batch_update_blobs_request::Request { digest: Some(to_proto(&d)), data, compressor: 0 })
                .collect(),
            digest_function: plan.function.to_proto(),
        };
        c.cas.batch_update_blobs(request).await.map_err(|s| format!("BatchUpdateBlobs: {}", s.message()))?;
        Ok(Execute { plan, clients, action: to_proto(&action_digest) })
    }
}

#[async_trait]
impl Scenario for Execute {
    async fn op(&self, worker: usize, _seq: u64) -> Result<Done, String> {
        let mut client = self.clients[worker].clone();
        let request = reapi::ExecuteRequest {
            instance_name: self.plan.args.instance.clone(),
            skip_cache_lookup: true,
            action_digest: Some(self.action.clone()),
            digest_function: self.plan.function.to_proto(),
            ..Default::default()
        };
        let mut stream = client.execution.execute(request).await.map_err(|s| format!("Execute: {}", s.message()))?.into_inner();
        while let Some(op) = stream.message().await.map_err(|s| format!("Execute: {}", s.message()))? {
            if !op.done {
                continue;
            }
            // Read the stream to its trailers: a stream dropped before them is reset, and h2 closes
            // a connection that has reset 1,024 streams whose frames were still arriving.
            while stream.message().await.map_err(|s| format!("Execute: {}", s.message()))?.is_some() {}
            return match op.result {
                Some(operation::Result::Response(any)) => {
                    let resp = reapi::ExecuteResponse::decode(any.value.as_slice()).map_err(|e| format!("ExecuteResponse: {e}"))?;
                    let status = resp.status.unwrap_or_default();
                    let exit = resp.result.map_or(-1, |r| r.exit_code);
                    if status.code != 0 || exit != 0 {
                        return Err(format!("action failed: status {} {}, exit code {exit}", status.code, status.message));
                    }
                    Ok(Done::new(0, 1))
                }
                Some(operation::Result::Error(status)) => Err(format!("operation failed: {} {}", status.code, status.message)),
                None => Err("operation done without a result".into()),
            };
        }
        Err("Execute stream ended before the operation was done".into())
    }
}

/// A build-like mix: per step, FindMissingBlobs of 100 digests (80 known), upload of the 20 missing
/// 4 KiB blobs, an action cache miss followed by an update, and every 16th step a 4 MiB ByteStream
/// upload.
struct Mixed {
    plan: Arc<Plan>,
    clients: Vec<Client>,
    known: Vec<reapi::Digest>,
    small: BlobFactory,
    large: BlobFactory,
    actions: BlobFactory,
}

impl Mixed {
    async fn prepare(plan: Arc<Plan>, clients: Vec<Client>, nonce: u64) -> Result<Mixed, String> {
        let small = BlobFactory::new(plan.function, 4096, nonce, false)?;
        let known: Vec<UniqueBlob> = (0..80).map(|_| small.next()).collect();
        upload_batch(&mut clients[0].clone(), &plan, &known).await?;
        Ok(Mixed {
            known: known.iter().map(|b| to_proto(&b.digest)).collect(),
            large: BlobFactory::new(plan.function, MIXED_LARGE_SIZE, nonce, false)?,
            actions: BlobFactory::new(plan.function, 128, nonce ^ 0x31, false)?,
            plan,
            clients,
            small,
        })
    }
}

#[async_trait]
impl Scenario for Mixed {
    async fn op(&self, worker: usize, seq: u64) -> Result<Done, String> {
        let mut client = self.clients[worker].clone();
        let new: Vec<UniqueBlob> = (0..20).map(|_| self.small.next()).collect();
        let mut asked = self.known.clone();
        asked.extend(new.iter().map(|b| to_proto(&b.digest)));
        let request = reapi::FindMissingBlobsRequest {
            instance_name: self.plan.args.instance.clone(),
            blob_digests: asked,
            digest_function: self.plan.function.to_proto(),
        };
        let missing = client.cas.find_missing_blobs(request).await.map_err(|s| format!("FindMissingBlobs: {}", s.message()))?;
        if missing.into_inner().missing_blob_digests.len() != new.len() {
            return Err("FindMissingBlobs did not report exactly the new blobs".into());
        }
        upload_batch(&mut client, &self.plan, &new).await?;
        let mut bytes = 20 * 4096;
        let action = to_proto(&self.actions.next().digest);
        match client.action_cache.get_action_result(get_result(&self.plan, &action)).await {
            Err(s) if s.code() == tonic::Code::NotFound => {}
            Err(s) => return Err(format!("GetActionResult: {}", s.message())),
            Ok(_) => return Err("GetActionResult hit an action that was never stored".into()),
        }
        put_result(&mut client, &self.plan, &action, &new[0].digest).await?;
        if seq % MIXED_LARGE_EVERY == 0 {
            let blob = self.large.next();
            write_blob(&mut client, &self.plan, &blob, &format!("mixed-{worker}-{seq}")).await?;
            bytes += blob.digest.size;
        }
        Ok(Done::new(bytes, 1))
    }
}
