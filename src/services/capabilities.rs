//! Capabilities: what this server supports, per instance. Bazel 4.x speaks only REAPI 2.0, so the
//! lowest version advertised is 2.0; execution is offered on instances that serve it.

use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bazel_remote_apis::build::bazel::remote::execution::v2::capabilities_server::Capabilities;
use bazel_remote_apis::build::bazel::semver::SemVer;
use strata_backends::DigestFunction;
use tonic::{Request, Response, Status};

use crate::auth::Access;
use crate::config::Permission;
use crate::instances::Instances;

pub struct CapabilitiesService {
    pub instances: Arc<Instances>,
}

fn version(major: i32, minor: i32) -> Option<SemVer> {
    Some(SemVer { major, minor, patch: 0, prerelease: String::new() })
}

#[tonic::async_trait]
impl Capabilities for CapabilitiesService {
    async fn get_capabilities(
        &self,
        request: Request<reapi::GetCapabilitiesRequest>,
    ) -> Result<Response<reapi::ServerCapabilities>, Status> {
        let name = &request.get_ref().instance_name;
        let access = Access::of(&request)?;
        access.check(name)?;
        let instance = self.instances.get(name)?;
        // Each caller hears what it may do: no cache updates without write_ac, no execution
        // without execute.
        let may = |p| access.caller.may(name, p);
        let digest_functions: Vec<i32> = DigestFunction::ALL.iter().map(|f| f.to_proto()).collect();
        let identity = reapi::compressor::Value::Identity as i32;
        let zstd = reapi::compressor::Value::Zstd as i32;
        let cache = reapi::CacheCapabilities {
            digest_functions: digest_functions.clone(),
            action_cache_update_capabilities: Some(reapi::ActionCacheUpdateCapabilities {
                update_enabled: instance.action_cache.is_some() && may(Permission::WriteAc),
            }),
            max_batch_total_size_bytes: self.instances.max_batch_total_size as i64,
            symlink_absolute_path_strategy: reapi::symlink_absolute_path_strategy::Value::Allowed as i32,
            supported_compressors: vec![identity, zstd],
            supported_batch_update_compressors: vec![identity, zstd],
            ..Default::default()
        };
        Ok(Response::new(reapi::ServerCapabilities {
            cache_capabilities: instance.cas.as_ref().map(|_| cache),
            execution_capabilities: Some(reapi::ExecutionCapabilities {
                digest_function: DigestFunction::Sha256.to_proto(),
                exec_enabled: instance.execution.is_some() && may(Permission::Execute),
                // Bots cannot tell SHA-256 from BLAKE3 digests in a lease (same length), so
                // execution is offered for SHA-256 only.
                digest_functions: vec![DigestFunction::Sha256.to_proto()],
                execution_priority_capabilities: Some(reapi::PriorityCapabilities {
                    priorities: vec![reapi::priority_capabilities::PriorityRange { min_priority: i32::MIN, max_priority: i32::MAX }],
                }),
                ..Default::default()
            }),
            deprecated_api_version: None,
            low_api_version: version(2, 0),
            high_api_version: version(2, 3),
        }))
    }
}
