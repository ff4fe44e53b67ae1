//! Bot sessions: what each bot offers, how many leases it holds, and which of them suits a job.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use tokio::sync::Notify;
use tokio::time::{Duration, Instant};

use super::queue::Needs;
use crate::protocol::rwapi::{BotStatus, LeaseState};

pub struct Session {
    pub instance: String,
    pub owner: Option<Arc<str>>,
    pub bot_id: String,
    /// The last BotStatus the bot reported; only healthy bots get work.
    pub status: BotStatus,
    /// Bots with lower values get work first.
    pub priority: i32,
    pub properties: HashMap<String, HashSet<String>>,
    pub capacity: usize,
    pub leases: HashMap<String, SessionLease>,
    pub last_seen: Instant,
    /// Calls of this session in progress: a bot waiting in a long poll is alive.
    pub calls: u32,
    pub wake: Arc<Notify>,
}

pub struct SessionLease {
    pub job: u64,
    pub state: LeaseState,
}

impl Session {
    pub fn busy(&self) -> usize {
        self.leases.values().filter(|l| l.state != LeaseState::Cancelled).count()
    }

    pub fn has_room(&self) -> bool {
        healthy(self.status) && self.busy() < self.capacity
    }

    /// The properties as sorted name/value pairs.
    pub fn property_pairs(&self) -> Vec<(String, String)> {
        let mut pairs: Vec<(String, String)> =
            self.properties.iter().flat_map(|(k, vs)| vs.iter().map(move |v| (k.clone(), v.clone()))).collect();
        pairs.sort();
        pairs
    }

    pub fn offers(&self, key: &str, value: &str) -> bool {
        self.properties.get(key).is_some_and(|vs| vs.contains(value))
    }

    /// Whether the bot could ever run a job with these needs (whatever it is doing now).
    pub fn can_run(&self, needs: &Needs) -> bool {
        self.instance == needs.instance && needs.platform.iter().all(|(k, v)| self.offers(k, v))
    }
}

/// Bots that say nothing of their health (BotStatus unspecified) are taken as healthy.
fn healthy(status: BotStatus) -> bool {
    matches!(status, BotStatus::Ok | BotStatus::Unspecified)
}

#[derive(Default)]
pub struct Sessions {
    by_name: HashMap<String, Session>,
}

impl Sessions {
    pub fn iter(&self) -> impl Iterator<Item = (&String, &Session)> {
        self.by_name.iter()
    }

    pub fn get(&self, name: &str) -> Option<&Session> {
        self.by_name.get(name)
    }

    pub fn get_mut(&mut self, name: &str) -> Option<&mut Session> {
        self.by_name.get_mut(name)
    }

    pub fn insert(&mut self, name: String, session: Session) {
        self.by_name.insert(name, session);
    }

    pub fn remove(&mut self, name: &str) -> Option<Session> {
        self.by_name.remove(name)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// The sessions a bot id already has on an instance (it restarted), of those `owner` opened:
    /// another identity's bot of the same id is another bot, and cannot close this one's sessions.
    pub fn of_bot(&self, instance: &str, bot_id: &str, owner: &Option<Arc<str>>) -> Vec<String> {
        let mine = |s: &&Session| s.bot_id == bot_id && s.instance == instance && s.owner == *owner;
        self.by_name.iter().filter(|(_, s)| mine(s)).map(|(n, _)| n.clone()).collect()
    }

    /// The session to hand a job to now: one with room that can run it, the bot's own priority first
    /// (lower is preferred, as buildbox-worker's `--priority`), then the one with most free slots.
    pub fn best_for(&self, needs: &Needs) -> Option<String> {
        self.by_name
            .iter()
            .filter(|(_, s)| s.has_room() && s.can_run(needs))
            .min_by_key(|(_, s)| (s.priority, std::cmp::Reverse(s.capacity - s.busy())))
            .map(|(name, _)| name.clone())
    }

    /// Sessions that have not called for longer than `timeout` and are not in a call.
    pub fn silent_since(&self, cutoff: Instant) -> Vec<String> {
        self.by_name.iter().filter(|(_, s)| s.calls == 0 && s.last_seen < cutoff).map(|(n, _)| n.clone()).collect()
    }

    /// Why no connected bot can ever run a job with these needs, or `None` when one could.
    pub fn unmatched(&self, needs: &Needs) -> Option<String> {
        let bots: Vec<&Session> = self.by_name.values().filter(|s| s.instance == needs.instance).collect();
        if bots.iter().any(|s| s.can_run(needs)) {
            return None;
        }
        if bots.is_empty() {
            return Some(format!("no bot is connected to instance {:?}", needs.instance));
        }
        let missing: Vec<String> =
            needs.platform.iter().filter(|(k, v)| !bots.iter().any(|s| s.offers(k, v))).map(|(k, v)| format!("{k}={v}")).collect();
        Some(if missing.is_empty() {
            format!("no connected bot offers all of {}", describe_platform(&needs.platform))
        } else {
            format!("no connected bot offers {}", missing.join(", "))
        })
    }
}

pub fn describe_platform(platform: &[(String, String)]) -> String {
    if platform.is_empty() {
        return "{}".into();
    }
    let pairs: Vec<String> = platform.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{{{}}}", pairs.join(", "))
}

/// A timeout's cutoff: what happened before it is older than `timeout` (`None`: nothing can be,
/// the clock has not run that long).
pub fn cutoff(now: Instant, timeout: Duration) -> Option<Instant> {
    now.checked_sub(timeout)
}
