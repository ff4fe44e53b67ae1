//! ActionCache: GetActionResult and UpdateActionResult.
//!
//! A stored result is served only while every blob it references (output files, output directory
//! trees and the files in them, stdout and stderr) is still in the CAS: a hit whose outputs are gone
//! would fail the client in the middle of its build, so it is reported as a miss instead.
//! `inline_stdout`, `inline_stderr` and `inline_output_files` are honoured within the batch limit.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::action_cache_server::ActionCache;
use bytes::Bytes;
use prost::Message;
use strata_backends::{ActionCacheStore, Digest, DigestFunction};
use tonic::{Request, Response, Status};

use super::{digest_function, parse_digest};
use crate::cas::Cas;
use crate::instances::Instances;
use crate::status;

pub struct ActionCacheService {
    pub instances: Arc<Instances>,
}

/// Every CAS blob an ActionResult needs, or `None` if one of them is malformed or a tree is missing.
async fn referenced_blobs(cas: &Cas, function: DigestFunction, result: &reapi::ActionResult) -> Result<Option<Vec<Digest>>, Status> {
    let mut digests = Vec::new();
    let parse = |d: &reapi::Digest| Digest::parse(function, &d.hash, d.size_bytes).ok();
    for file in &result.output_files {
        let Some(d) = file.digest.as_ref().and_then(parse) else { return Ok(None) };
        digests.push(d);
    }
    for std in [&result.stdout_digest, &result.stderr_digest].into_iter().flatten() {
        let Some(d) = parse(std) else { return Ok(None) };
        digests.push(d);
    }
    for dir in &result.output_directories {
        let Some(tree_digest) = dir.tree_digest.as_ref().and_then(parse) else { return Ok(None) };
        let Some(data) = cas.read_whole(&tree_digest).await.map_err(status::from_store)? else { return Ok(None) };
        let Ok(tree) = reapi::Tree::decode(data) else { return Ok(None) };
        digests.push(tree_digest);
        for directory in tree.root.iter().chain(&tree.children) {
            for file in &directory.files {
                let Some(d) = file.digest.as_ref().and_then(parse) else { return Ok(None) };
                digests.push(d);
            }
        }
    }
    Ok(Some(digests))
}

/// The cached result of `action`, if there is one whose outputs are all still in the CAS.
pub async fn lookup(
    store: &dyn ActionCacheStore,
    cas: &Cas,
    function: DigestFunction,
    action: &Digest,
) -> Result<Option<reapi::ActionResult>, Status> {
    let Some(data) = store.get(action).await.map_err(status::from_store)? else { return Ok(None) };
    let result = reapi::ActionResult::decode(data)
        .map_err(|e| Status::internal(format!("the stored action result for {action} cannot be decoded: {e}")))?;
    let Some(needed) = referenced_blobs(cas, function, &result).await? else { return Ok(None) };
    if cas.contains(&needed).await.map_err(status::from_store)?.contains(&false) {
        return Ok(None);
    }
    Ok(Some(result))
}

/// Reads a small blob for inlining, if it fits in the remaining `budget`.
async fn inline(cas: &Cas, function: DigestFunction, digest: &Option<reapi::Digest>, budget: &mut u64) -> Option<Vec<u8>> {
    let d = digest.as_ref().and_then(|d| Digest::parse(function, &d.hash, d.size_bytes).ok())?;
    if d.size > *budget {
        return None;
    }
    let data = cas.read_whole(&d).await.ok()??;
    *budget -= d.size;
    Some(data.to_vec())
}

#[tonic::async_trait]
impl ActionCache for ActionCacheService {
    async fn get_action_result(
        &self,
        request: Request<reapi::GetActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let req = request.into_inner();
        let (store, cas) = self.instances.action_cache(&req.instance_name)?;
        let function = digest_function(req.digest_function)?;
        let action = parse_digest(function, req.action_digest.as_ref(), "action_digest")?;
        let mut result = lookup(store.as_ref(), cas, function, &action)
            .await?
            .ok_or_else(|| Status::not_found(format!("no action result for {action}")))?;
        let mut budget = self.instances.max_batch_total_size;
        if req.inline_stdout && result.stdout_raw.is_empty() {
            if let Some(data) = inline(cas, function, &result.stdout_digest, &mut budget).await {
                result.stdout_raw = data;
            }
        }
        if req.inline_stderr && result.stderr_raw.is_empty() {
            if let Some(data) = inline(cas, function, &result.stderr_digest, &mut budget).await {
                result.stderr_raw = data;
            }
        }
        for file in result.output_files.iter_mut().filter(|f| req.inline_output_files.contains(&f.path)) {
            if let Some(data) = inline(cas, function, &file.digest, &mut budget).await {
                file.contents = data;
            }
        }
        Ok(Response::new(result))
    }

    async fn update_action_result(
        &self,
        request: Request<reapi::UpdateActionResultRequest>,
    ) -> Result<Response<reapi::ActionResult>, Status> {
        let req = request.into_inner();
        let (store, cas) = self.instances.action_cache(&req.instance_name)?;
        let function = digest_function(req.digest_function)?;
        let action = parse_digest(function, req.action_digest.as_ref(), "action_digest")?;
        let result = req.action_result.ok_or_else(|| Status::invalid_argument("action_result missing"))?;
        if referenced_blobs(cas, function, &result).await?.is_none() {
            return Err(Status::invalid_argument(format!(
                "action_result for {action} references a malformed digest or an output tree that is not in the CAS"
            )));
        }
        let encoded = Bytes::from(result.encode_to_vec());
        if encoded.len() as u64 > self.instances.max_batch_total_size {
            return Err(Status::invalid_argument(format!(
                "action_result of {} bytes exceeds {} bytes; store large outputs in the CAS, not inline",
                encoded.len(),
                self.instances.max_batch_total_size
            )));
        }
        store.put(&action, encoded).await.map_err(status::from_store)?;
        Ok(Response::new(result))
    }
}
