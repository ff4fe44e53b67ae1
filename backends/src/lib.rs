//! Strata's storage.
//!
//! One trait, [`BlobStore`], is the CAS (and [`ActionCacheStore`] the action cache). Tiers implement
//! it: [`MemoryStore`], the disk log [`DiskLog`], an upstream REAPI CAS ([`RemoteStore`]) and S3
//! ([`S3Store`]). Layers wrap any store and add one behaviour each: [`TieredStore`] stacks tiers
//! (order, size classes, promotion, durability), [`Verified`] hashes what an untrusted tier returns,
//! [`VerifyingWriter`] refuses an upload that does not match its digest, [`ExistenceCache`]
//! remembers what a slow tier holds, [`EmptyBlob`] answers for the empty blob, [`Metered`] counts and times the calls to an upstream, and [`Spooled`] queues
//! writes for an upstream that is down. The server's configuration builds the tree; nothing else
//! knows its shape.
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use strata_backends::{BlobStore, DigestFunction, EmptyBlob, MemoryStore, Tier, TieredStore};
//!
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let memory = Tier::new("memory", Arc::new(MemoryStore::new(64 << 20)));
//! let cas = EmptyBlob::new(Arc::new(TieredStore::new(vec![memory]).unwrap()));
//! let data = Bytes::from_static(b"hello");
//! let digest = DigestFunction::Sha256.digest_of(&data);
//! cas.write(&digest, data).await.unwrap();
//! let empty = DigestFunction::Sha256.empty();
//! assert_eq!(cas.contains(&[digest, empty]).await.unwrap(), vec![true, true]);
//! # });
//! ```

pub mod bytestream;
mod chunks;
pub mod client;
mod digest;
mod disk;
mod error;
mod layers;
mod memory;
mod offload;
mod remote;
mod s3;
mod store;
pub mod zstd_chunks;
pub mod zstd_stream;

pub use chunks::Chunks;
pub use digest::{compressed_resource_name, resource_name, Digest, DigestError, DigestFunction, Hasher, Key};
pub use disk::{DiskConfig, DiskLog, SyncPolicy};
pub use error::{Result, StoreError};
pub use layers::action_cache::TieredActionCache;
pub use layers::empty_blob::EmptyBlob;
pub use layers::existence_cache::ExistenceCache;
pub use layers::metered::{Metered, UpstreamMetrics};
pub use layers::single_flight::SingleFlight;
pub use layers::spool::Spooled;
pub use layers::tiered::{Tier, TieredStore};
pub use layers::verify::{Verified, VerifyingWriter};
pub use memory::MemoryStore;
pub use remote::{RemoteConfig, RemoteStore};
pub use s3::{S3Config, S3Store};
pub use store::{slice_range, ActionCacheStore, Blob, BlobStore, BlobWriter, BufferedWriter, StoreStats};
