//! ActionCache: GetActionResult and UpdateActionResult. A result is served only while it is complete
//! (`crate::action_results`); `inline_stdout`, `inline_stderr` and `inline_output_files` are honoured
//! within the batch limit.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::action_cache_server::ActionCache;
use bytes::Bytes;
use prost::Message;
use strata_backends::{Digest, DigestFunction};
use tonic::{Request, Response, Status};

use super::{digest_function, parse_digest};
use crate::auth::Access;
use crate::action_results::{lookup, referenced_blobs};
use crate::cas::Cas;
use crate::instances::Instances;
use crate::status;

pub struct ActionCacheService {
    pub instances: Arc<Instances>,
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
        let access = Access::of(&request)?.clone();
        let req = request.into_inner();
        let (store, cas) = self.instances.action_cache(&access, &req.instance_name)?;
        let function = digest_function(req.digest_function)?;
        let action = parse_digest(function, req.action_digest.as_ref(), "action_digest")?;
        let found = lookup(store.as_ref(), cas, function, &action).await.map_err(status::from_tree)?;
        let hit = found.is_some();
        self.instances.metrics.looked_up(&req.instance_name, "action_cache", "get", u64::from(hit), u64::from(!hit));
        let mut result = found.ok_or_else(|| Status::not_found(format!("no action result for {action}")))?;
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
        let access = Access::of(&request)?.clone();
        let req = request.into_inner();
        let (store, cas) = self.instances.action_cache(&access, &req.instance_name)?;
        let function = digest_function(req.digest_function)?;
        let action = parse_digest(function, req.action_digest.as_ref(), "action_digest")?;
        let result = req.action_result.ok_or_else(|| Status::invalid_argument("action_result missing"))?;
        if referenced_blobs(cas, function, &result).await.map_err(status::from_tree)?.is_none() {
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
