//! The action cache's tier stack: look entries up fastest first, copy a hit into the faster tiers,
//! write through to all. (Whether a hit may be served, given what the CAS still holds, is decided by
//! the server, which knows what an `ActionResult` references.)

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::digest::Digest;
use crate::error::{Result, StoreError};
use crate::store::ActionCacheStore;

pub struct TieredActionCache {
    tiers: Vec<(String, Arc<dyn ActionCacheStore>)>,
}

impl TieredActionCache {
    pub fn new(tiers: Vec<(String, Arc<dyn ActionCacheStore>)>) -> Result<Self> {
        if tiers.is_empty() {
            return Err(StoreError::Config("an action cache needs at least one tier".into()));
        }
        Ok(TieredActionCache { tiers })
    }
}

#[async_trait]
impl ActionCacheStore for TieredActionCache {
    async fn get(&self, key: &Digest) -> Result<Option<Bytes>> {
        for (i, (_, tier)) in self.tiers.iter().enumerate() {
            if let Some(value) = tier.get(key).await? {
                for (name, faster) in &self.tiers[..i] {
                    if let Err(e) = faster.put(key, value.clone()).await {
                        tracing::warn!(tier = %name, "action cache promotion failed: {e}");
                    }
                }
                return Ok(Some(value));
            }
        }
        Ok(None)
    }

    async fn put(&self, key: &Digest, value: Bytes) -> Result<()> {
        for (_, tier) in &self.tiers {
            tier.put(key, value.clone()).await?;
        }
        Ok(())
    }
}
