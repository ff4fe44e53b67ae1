//! Storage health, for gRPC health, `/readyz` and the status page. Each stack with an upstream tier
//! is probed on a timer (one existence check of a blob nobody stores, for the stack as a whole and
//! for each upstream tier alone); local tiers answer from memory and are not probed. A state changes
//! only after two probes in a row disagree with it, so one slow answer does not flap the health, and
//! each change is logged once.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use strata_backends::{BlobStore, DigestFunction};

use crate::storage::Storage;

/// How long a probe may take before it counts as a failure.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Probes in a row that must disagree with a state to change it.
const TO_FLIP: u32 = 2;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Probe {
    pub up: bool,
    /// Why the last probe failed, while it does.
    pub error: Option<String>,
    streak: u32,
}

impl Default for Probe {
    fn default() -> Self {
        Probe { up: true, error: None, streak: 0 }
    }
}

impl Probe {
    /// Takes one result; true when the state changed.
    fn observe(&mut self, result: Result<(), String>) -> bool {
        let ok = result.is_ok();
        self.error = result.err();
        if ok == self.up {
            self.streak = 0;
            return false;
        }
        self.streak += 1;
        if self.streak < TO_FLIP {
            return false;
        }
        self.up = ok;
        self.streak = 0;
        true
    }
}

/// The health of one stack and of its upstream tiers.
pub struct StackHealth {
    pub storage: Arc<Storage>,
    pub stack: Mutex<Probe>,
    /// One per tier of `storage.tiers` (local tiers stay up).
    pub tiers: Vec<Mutex<Probe>>,
}

pub struct Health {
    pub stacks: Vec<StackHealth>,
}

async fn probe(store: &dyn BlobStore) -> Result<(), String> {
    // A digest of bytes nobody uploads: the answer is "missing", from every tier that can answer.
    let digest = DigestFunction::Sha256.digest_of(b"strata health probe");
    match tokio::time::timeout(PROBE_TIMEOUT, store.contains(&[digest])).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer in {PROBE_TIMEOUT:?}")),
    }
}

impl Health {
    pub fn new(stacks: Vec<Arc<Storage>>) -> Health {
        let stacks = stacks
            .into_iter()
            .map(|storage| StackHealth { tiers: storage.tiers.iter().map(|_| Mutex::default()).collect(), stack: Mutex::default(), storage })
            .collect();
        Health { stacks }
    }

    /// Whether the named stack serves (unknown names do).
    pub fn stack_up(&self, name: &str) -> bool {
        self.stacks.iter().filter(|s| s.storage.name == name).all(|s| s.stack.lock().up)
    }

    pub fn all_up(&self) -> bool {
        self.stacks.iter().all(|s| s.stack.lock().up)
    }

    /// Probes every stack that has an upstream once; true if any state changed.
    pub async fn probe_all(&self) -> bool {
        let mut changed = false;
        for s in &self.stacks {
            if s.storage.tiers.iter().all(|t| t.local) {
                continue;
            }
            for (tier, state) in s.storage.tiers.iter().zip(&s.tiers).filter(|(t, _)| !t.local) {
                let result = probe(tier.probe.as_ref()).await;
                let mut state = state.lock();
                if state.observe(result) {
                    match &state.error {
                        None => tracing::info!(tier = %tier.name, "upstream reachable again"),
                        Some(e) => tracing::warn!(tier = %tier.name, "upstream unreachable: {e}"),
                    }
                }
            }
            let result = probe(s.storage.cas.as_ref()).await;
            let mut state = s.stack.lock();
            if state.observe(result) {
                changed = true;
                match &state.error {
                    None => tracing::info!(storage = %s.storage.name, "storage serves again"),
                    Some(e) => tracing::error!(storage = %s.storage.name, "storage fails; its services report NOT_SERVING: {e}"),
                }
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::Probe;

    #[test]
    fn a_state_changes_after_two_disagreeing_probes() {
        let mut p = Probe::default();
        assert!(!p.observe(Err("down".into())));
        assert!(p.up, "one failure does not flip");
        assert!(!p.observe(Ok(())));
        assert!(!p.observe(Err("down".into())));
        assert!(p.observe(Err("down".into())));
        assert!(!p.up);
        assert_eq!(p.error.as_deref(), Some("down"));
        assert!(!p.observe(Ok(())));
        assert!(p.observe(Ok(())));
        assert!(p.up && p.error.is_none());
    }
}
