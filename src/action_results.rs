//! The action cache's completeness rule: a stored result is served only while every blob it
//! references (output files, output directory trees and the files in them, stdout and stderr) is
//! still in the CAS. A hit whose outputs are gone would fail the client in the middle of its build,
//! so it is a miss instead. GetActionResult and Execute's cache lookup both ask here.

use std::collections::HashMap;
use std::sync::Arc;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use prost::Message;
use strata_backends::{ActionCacheStore, Digest, DigestFunction};

use crate::cas::Cas;
use crate::exec::scheduler::ResultSink;
use crate::protocol::from_proto;
use crate::tree::{load, TreeError};

/// Every CAS blob a result needs, or `None` if one of them is malformed or an output tree is missing
/// (a result that cannot be complete).
pub async fn referenced_blobs(cas: &Cas, function: DigestFunction, result: &reapi::ActionResult) -> Result<Option<Vec<Digest>>, TreeError> {
    let mut digests = Vec::new();
    let parse = |d: &Option<reapi::Digest>| from_proto(function, d.as_ref(), "digest").ok();
    for file in &result.output_files {
        let Some(d) = parse(&file.digest) else { return Ok(None) };
        digests.push(d);
    }
    for std in [&result.stdout_digest, &result.stderr_digest] {
        if std.is_some() {
            let Some(d) = parse(std) else { return Ok(None) };
            digests.push(d);
        }
    }
    for dir in &result.output_directories {
        let Some(tree_digest) = parse(&dir.tree_digest) else { return Ok(None) };
        let tree = match load::<reapi::Tree>(cas, &tree_digest, "Tree").await {
            Ok(Some(tree)) => tree,
            Ok(None) | Err(TreeError::Undecodable { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        digests.push(tree_digest);
        for directory in tree.root.iter().chain(&tree.children) {
            for file in &directory.files {
                let Some(d) = parse(&file.digest) else { return Ok(None) };
                digests.push(d);
            }
        }
    }
    Ok(Some(digests))
}

/// The cached result of `action`, if there is one whose outputs are all still in the CAS.
pub async fn lookup(store: &dyn ActionCacheStore, cas: &Cas, function: DigestFunction, action: &Digest) -> Result<Option<reapi::ActionResult>, TreeError> {
    let Some(data) = store.get(action).await? else { return Ok(None) };
    let result = reapi::ActionResult::decode(data)
        .map_err(|e| TreeError::StoredResult { action: *action, reason: e.to_string() })?;
    let Some(needed) = referenced_blobs(cas, function, &result).await? else { return Ok(None) };
    if cas.contains(&needed).await?.contains(&false) {
        return Ok(None);
    }
    Ok(Some(result))
}

/// Where the scheduler puts the results bots produce: each instance's action cache.
pub struct ActionCaches(pub HashMap<String, Arc<dyn ActionCacheStore>>);

#[async_trait::async_trait]
impl ResultSink for ActionCaches {
    async fn store(&self, instance: &str, action: &Digest, result: &reapi::ActionResult) {
        let Some(cache) = self.0.get(instance) else { return };
        if let Err(e) = cache.put(action, result.encode_to_vec().into()).await {
            tracing::warn!(%action, "caching the result failed: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use strata_backends::MemoryStore;

    use super::*;
    use crate::protocol::to_proto;

    async fn stored(cas: &Cas, data: &'static [u8]) -> Digest {
        let digest = DigestFunction::Sha256.digest_of(data);
        cas.put(&digest, Bytes::from_static(data)).await.unwrap();
        digest
    }

    #[tokio::test]
    async fn a_result_is_served_only_while_everything_it_references_is_stored() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 20)));
        let store = MemoryStore::new(1 << 20);
        let out = stored(&cas, b"output").await;
        let inner_file = stored(&cas, b"inside a tree").await;
        let tree = reapi::Tree {
            root: Some(reapi::Directory {
                files: vec![reapi::FileNode { name: "x".into(), digest: Some(to_proto(&inner_file)), ..Default::default() }],
                ..Default::default()
            }),
            children: vec![],
        };
        let tree_bytes = Bytes::from(tree.encode_to_vec());
        let tree_digest = DigestFunction::Sha256.digest_of(&tree_bytes);
        cas.put(&tree_digest, tree_bytes).await.unwrap();
        let missing = DigestFunction::Sha256.digest_of(b"never stored");

        let result = |stdout: Digest| reapi::ActionResult {
            output_files: vec![reapi::OutputFile { path: "o".into(), digest: Some(to_proto(&out)), ..Default::default() }],
            output_directories: vec![reapi::OutputDirectory { path: "d".into(), tree_digest: Some(to_proto(&tree_digest)), ..Default::default() }],
            stdout_digest: Some(to_proto(&stdout)),
            ..Default::default()
        };
        let (complete, incomplete) = (DigestFunction::Sha256.digest_of(b"a1"), DigestFunction::Sha256.digest_of(b"a2"));
        store.put(&complete, result(out).encode_to_vec().into()).await.unwrap();
        store.put(&incomplete, result(missing).encode_to_vec().into()).await.unwrap();
        let f = DigestFunction::Sha256;
        let needed = referenced_blobs(&cas, f, &result(out)).await.unwrap().unwrap();
        assert_eq!(needed, vec![out, out, tree_digest, inner_file]);
        assert!(lookup(&store, &cas, f, &complete).await.unwrap().is_some());
        assert!(lookup(&store, &cas, f, &incomplete).await.unwrap().is_none(), "stdout is gone");
        assert!(lookup(&store, &cas, f, &missing).await.unwrap().is_none(), "no result at all");

        // A result whose output tree is not in the CAS, or names a malformed digest, cannot be complete.
        let mut no_tree = result(out);
        no_tree.output_directories[0].tree_digest = Some(to_proto(&missing));
        assert!(referenced_blobs(&cas, f, &no_tree).await.unwrap().is_none());
        let mut malformed = result(out);
        malformed.output_files[0].digest = Some(reapi::Digest { hash: "xyz".into(), size_bytes: 1 });
        assert!(referenced_blobs(&cas, f, &malformed).await.unwrap().is_none());

        // A stored value that is not an ActionResult is an error naming the action, not a miss.
        let junk = DigestFunction::Sha256.digest_of(b"a3");
        store.put(&junk, Bytes::from_static(b"\xff\xff")).await.unwrap();
        assert!(matches!(lookup(&store, &cas, f, &junk).await, Err(TreeError::StoredResult { .. })));
    }
}
