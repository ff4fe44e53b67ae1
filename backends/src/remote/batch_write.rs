//! Small blobs to the upstream in BatchUpdateBlobs calls: a batch of them (a site cache passing a
//! client's BatchUpdateBlobs on) in as few calls as the upstream's batch limit allows, not one each.

use std::collections::HashMap;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use bytes::Bytes;
use tonic::{Code, Status};

use super::{proto, RemoteStore, IDENTITY, SMALL_BLOB, ZSTD};
use crate::digest::{Digest, DigestFunction};
use crate::error::{Result, StoreError};
use crate::store::BlobStore;
use crate::zstd_chunks::Settings;

type Entry = reapi::batch_update_blobs_request::Request;

/// Room an entry takes in a batch beside its data (its digest, the framing), counted against the
/// upstream's limit together with 1 KiB for the request itself.
const ENTRY_OVERHEAD: u64 = 256;

/// Whether a blob goes through the batch calls: small, and well inside the upstream's limit.
pub(super) fn travels_in_batches(digest: &Digest, max_batch: u64) -> bool {
    digest.size <= SMALL_BLOB && digest.size + 1024 <= max_batch
}

impl RemoteStore {
    /// Writes blobs, the small ones gathered into calls of up to the upstream's batch limit (one
    /// digest function per call), the others streamed one by one: each blob's outcome, in order.
    pub(super) async fn write_in_batches(&self, blobs: Vec<(Digest, Bytes)>) -> Vec<Result<()>> {
        let max_batch = match self.max_batch().await {
            Ok(max) => max,
            Err(e) => return e.shared_by(blobs.len()).into_iter().map(Err).collect(),
        };
        let mut outcomes: Vec<Result<()>> = Vec::with_capacity(blobs.len());
        let mut batch: Vec<usize> = Vec::new();
        let mut batch_bytes = 0;
        for (i, (digest, data)) in blobs.iter().enumerate() {
            outcomes.push(Err(StoreError::unanswered()));
            if !travels_in_batches(digest, max_batch) {
                outcomes[i] = self.write(digest, data.clone()).await;
                continue;
            }
            let cost = digest.size + ENTRY_OVERHEAD;
            let other_function = batch.first().is_some_and(|&first| blobs[first].0.function != digest.function);
            if !batch.is_empty() && (other_function || batch_bytes + cost + 1024 > max_batch) {
                self.send_batch(&blobs, std::mem::take(&mut batch), &mut outcomes).await;
                batch_bytes = 0;
            }
            batch.push(i);
            batch_bytes += cost;
        }
        self.send_batch(&blobs, batch, &mut outcomes).await;
        outcomes
    }

    async fn send_batch(&self, blobs: &[(Digest, Bytes)], batch: Vec<usize>, outcomes: &mut [Result<()>]) {
        let Some(&first) = batch.first() else { return };
        let members: Vec<(Digest, Bytes)> = batch.iter().map(|&i| blobs[i].clone()).collect();
        for (i, outcome) in batch.into_iter().zip(self.update_batch(blobs[first].0.function, &members).await) {
            outcomes[i] = outcome;
        }
    }

    /// Uploads small blobs of one digest function in one BatchUpdateBlobs call: each one's outcome.
    pub(super) async fn update_batch(&self, function: DigestFunction, blobs: &[(Digest, Bytes)]) -> Vec<Result<()>> {
        let requests = match self.batch_entries(blobs).await {
            Ok(entries) => entries,
            Err(e) => return e.shared_by(blobs.len()).into_iter().map(Err).collect(),
        };
        let message = reapi::BatchUpdateBlobsRequest { instance_name: self.cfg.instance.clone(), requests, digest_function: function.to_proto() };
        let answered = self
            .retry("BatchUpdateBlobs", || {
                let request = self.request(message.clone(), self.cfg.timeout);
                async move { self.cas().batch_update_blobs(request).await }
            })
            .await;
        let responses = match answered {
            Ok(response) => response.into_inner().responses,
            Err(e) => return e.shared_by(blobs.len()).into_iter().map(Err).collect(),
        };
        // Matched by digest: REAPI does not promise the responses in the order of the requests.
        let statuses: HashMap<(String, i64), (i32, String)> = responses
            .into_iter()
            .filter_map(|r| {
                let digest = r.digest?;
                let status = r.status.unwrap_or_default();
                Some(((digest.hash, digest.size_bytes), (status.code, status.message)))
            })
            .collect();
        blobs
            .iter()
            .map(|(digest, _)| match statuses.get(&(digest.hash_hex(), digest.size as i64)) {
                Some((0, _)) => Ok(()),
                Some((code, message)) => Err(self.failure("BatchUpdateBlobs", Status::new(Code::from_i32(*code), message.clone()))),
                None => Err(self.failure("BatchUpdateBlobs", Status::internal(format!("the upstream's answer has no status for blob {digest}")))),
            })
            .collect()
    }

    /// The BatchUpdateBlobs entries for blobs: zstd where the tier is configured for it, the
    /// upstream accepts it and the frame is smaller. A batch's compression runs in one task off the
    /// runtime: one hop to a blocking thread per 4 KiB blob cost as much as compressing it.
    async fn batch_entries(&self, blobs: &[(Digest, Bytes)]) -> Result<Vec<Entry>> {
        let accepts = self.upstream().await?.zstd_batch_writes;
        let work: Vec<(Digest, Bytes, Option<Settings>)> = blobs.iter().map(|(d, data)| (*d, data.clone(), self.compress_upload(d, accepts))).collect();
        if work.iter().all(|(_, _, settings)| settings.is_none()) {
            return Ok(entries(work));
        }
        let identity: Vec<_> = work.iter().map(|(d, data, _)| (*d, data.clone(), None)).collect();
        // A compression task that did not finish leaves the blobs to travel as they are.
        Ok(tokio::task::spawn_blocking(move || entries(work)).await.unwrap_or_else(|_| entries(identity)))
    }
}

/// Each blob as an entry, as one zstd frame where it has settings and the frame is smaller.
fn entries(work: Vec<(Digest, Bytes, Option<Settings>)>) -> Vec<Entry> {
    work.into_iter()
        .map(|(digest, data, settings)| {
            let frame = settings.and_then(|s| crate::zstd_stream::compress_frame(&data, s.level).ok().filter(|f| f.len() < data.len()));
            let (data, compressor) = match frame {
                Some(frame) => (frame, ZSTD),
                None => (data.to_vec(), IDENTITY),
            };
            Entry { digest: Some(proto(&digest)), data, compressor }
        })
        .collect()
}
