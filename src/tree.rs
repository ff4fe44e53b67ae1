//! Directory trees in the CAS: messages loaded by digest, and trees walked breadth first, each
//! distinct directory once, with every level's directories fetched concurrently (a deep input root
//! costs one round trip per level, not one per directory). GetTree and Execute's input admission
//! walk with this.

use std::collections::{HashSet, VecDeque};

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use strata_backends::{Digest, DigestFunction, StoreError};

use crate::cas::Cas;
use crate::protocol::from_proto;

/// Directory reads in flight at once during a walk.
pub const FETCH_CONCURRENCY: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{what} {digest} is not a valid {what} message: {reason}")]
    Undecodable { what: &'static str, digest: Digest, reason: String },
    /// A tree the request names that breaks the protocol's rules (names, paths, digests).
    #[error("{0}")]
    Invalid(String),
    /// What the action cache holds for an action is not an ActionResult: the server's data is damaged.
    #[error("the stored action result for {action} cannot be decoded: {reason}")]
    StoredResult { action: Digest, reason: String },
}

/// Reads and decodes a message; `None` when the blob is absent.
pub async fn load<M: Message + Default>(cas: &Cas, digest: &Digest, what: &'static str) -> Result<Option<M>, TreeError> {
    Ok(load_encoded(cas, digest, what).await?.map(|(message, _)| message))
}

/// `load`, with the message's bytes as stored.
pub async fn load_encoded<M: Message + Default>(cas: &Cas, digest: &Digest, what: &'static str) -> Result<Option<(M, Bytes)>, TreeError> {
    let Some(data) = cas.read_whole(digest).await? else { return Ok(None) };
    let message = M::decode(data.clone()).map_err(|e| TreeError::Undecodable { what, digest: *digest, reason: e.to_string() })?;
    Ok(Some((message, data)))
}

/// Loads every digest's Directory concurrently, answers in the order asked.
pub async fn load_all(cas: &Cas, digests: &[Digest]) -> Result<Vec<Option<reapi::Directory>>, TreeError> {
    // Collected first: a stream over a borrowing closure is not `Send` for every lifetime.
    let loads: Vec<_> = digests.iter().map(|&d| load_directory(cas.clone(), d)).collect();
    futures::stream::iter(loads).buffered(FETCH_CONCURRENCY).try_collect().await
}

/// One Directory, owning what it needs so that many can be in flight at once.
async fn load_directory(cas: Cas, digest: Digest) -> Result<Option<reapi::Directory>, TreeError> {
    load(&cas, &digest, "Directory").await
}

/// A breadth-first walk of the directories under a root, in the order GetTree pages through them.
/// Parts of the tree that are missing or not Directory messages are left out, as GetTree's contract
/// asks; a storage failure ends the walk with it.
pub struct Walk {
    cas: Cas,
    function: DigestFunction,
    ready: VecDeque<reapi::Directory>,
    next_level: Vec<Digest>,
    seen: HashSet<Digest>,
}

impl Walk {
    pub fn new(cas: Cas, function: DigestFunction, root: Digest, root_dir: reapi::Directory) -> Self {
        Walk { cas, function, ready: VecDeque::from([root_dir]), next_level: Vec::new(), seen: HashSet::from([root]) }
    }

    pub async fn next(&mut self) -> Result<Option<reapi::Directory>, TreeError> {
        if self.ready.is_empty() && !self.next_level.is_empty() {
            let level = std::mem::take(&mut self.next_level);
            let loads: Vec<_> = level.iter().map(|&d| load_directory(self.cas.clone(), d)).collect();
            let loaded: Vec<_> = futures::stream::iter(loads).buffered(FETCH_CONCURRENCY).collect().await;
            for dir in loaded {
                match dir {
                    Ok(Some(dir)) => self.ready.push_back(dir),
                    Ok(None) | Err(TreeError::Undecodable { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let Some(dir) = self.ready.pop_front() else { return Ok(None) };
        for child in &dir.directories {
            let Ok(digest) = from_proto(self.function, child.digest.as_ref(), "directory") else { continue };
            if self.seen.insert(digest) {
                self.next_level.push(digest);
            }
        }
        Ok(Some(dir))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use strata_backends::MemoryStore;

    use super::*;
    use crate::protocol::to_proto;

    async fn put(cas: &Cas, dir: &reapi::Directory) -> Digest {
        let data = Bytes::from(dir.encode_to_vec());
        let digest = DigestFunction::Sha256.digest_of(&data);
        cas.put(&digest, data).await.unwrap();
        digest
    }

    fn node(name: &str, digest: Digest) -> reapi::DirectoryNode {
        reapi::DirectoryNode { name: name.into(), digest: Some(to_proto(&digest)) }
    }

    #[tokio::test]
    async fn walks_breadth_first_each_directory_once_skipping_missing_and_garbage() {
        let cas = Cas::new(Arc::new(MemoryStore::new(1 << 20)));
        let leaf = reapi::Directory { files: vec![reapi::FileNode { name: "f".into(), ..Default::default() }], ..Default::default() };
        let leaf_digest = put(&cas, &leaf).await;
        let missing = DigestFunction::Sha256.digest_of(b"not stored");
        let garbage = DigestFunction::Sha256.digest_of(b"\xff\xff\xff");
        cas.put(&garbage, Bytes::from_static(b"\xff\xff\xff")).await.unwrap();
        let middle = reapi::Directory { directories: vec![node("leaf", leaf_digest), node("gone", missing)], ..Default::default() };
        let middle_digest = put(&cas, &middle).await;
        let root = reapi::Directory {
            directories: vec![node("a", middle_digest), node("b", middle_digest), node("c", leaf_digest), node("junk", garbage)],
            ..Default::default()
        };
        let root_digest = put(&cas, &root).await;

        let mut walk = Walk::new(cas, DigestFunction::Sha256, root_digest, root.clone());
        let mut order = Vec::new();
        while let Some(dir) = walk.next().await.unwrap() {
            order.push(dir);
        }
        assert_eq!(order, vec![root, middle, leaf], "root, then its distinct children, then theirs");
    }
}
