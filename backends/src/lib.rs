//! Strata's storage. One trait (`BlobStore` for the CAS, `ActionCacheStore` for the action cache),
//! tiers that implement it (memory, disk), and layers that compose tiers (tiered stores with size
//! classes). The server's configuration builds the tree; nothing else knows its shape.

pub mod action_cache;
pub mod digest;
pub mod disk;
pub mod error;
pub mod memory;
pub mod remote;
pub mod s3;
pub mod spool;
pub mod store;
pub mod tiered;

pub use digest::{Digest, DigestError, DigestFunction, Hasher, Key};
pub use error::StoreError;
pub use store::{ActionCacheStore, Blob, BlobStore, BlobWriter, StoreStats};
