//! The scheduler's timeouts, checked ten times a second: bot sessions that went silent (their
//! leases go back to the queue), jobs that waited too long for a bot, jobs whose bot overran the
//! execution timeout, and finished operations past their retention.

use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;
use tonic::Code;

use super::sessions::{cutoff, describe_platform};
use super::{drop_job, failed, finish_job, requeue_leases, Scheduler};

/// How often the timeouts are checked.
const TICK: Duration = Duration::from_millis(100);

pub async fn run(scheduler: Weak<Scheduler>) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(scheduler) = scheduler.upgrade() else { return };
        scheduler.expire(Instant::now());
    }
}

impl Scheduler {
    pub(super) fn expire(&self, now: Instant) {
        let config = &self.config;
        let mut st = self.state.lock();
        for name in cutoff(now, config.bot_session_timeout).map(|c| st.sessions.silent_since(c)).unwrap_or_default() {
            if let Some(s) = st.sessions.remove(&name) {
                tracing::warn!(session = %name, bot_id = %s.bot_id, "bot session expired; its leases go back to the queue");
                let reason = format!("the session of bot {:?} expired", s.bot_id);
                requeue_leases(&mut st, s, &reason, config.max_attempts);
            }
        }
        let queue_timeout = config.queue_timeout;
        for id in cutoff(now, queue_timeout).map(|c| st.queue.queued_before(c)).unwrap_or_default() {
            let Some(job) = st.jobs.get(&id) else { continue };
            let platform = describe_platform(&job.needs.platform);
            let why = st.sessions.unmatched(&job.needs).unwrap_or_else(|| "every matching bot was busy".into());
            let message = format!(
                "no bot took the action within the queue timeout of {queue_timeout:?} (platform {platform}): {why}; \
                 attach a bot with these properties or raise execution.queue_timeout"
            );
            finish_job(&mut st, id, failed(Code::Unavailable, message));
        }
        // The bot enforces the action's timeout; this catches bots that do not.
        let overdue: Vec<(u64, Duration)> = st
            .jobs
            .iter()
            .filter_map(|(id, j)| {
                let (_, _, since) = j.running.as_ref()?;
                (now.duration_since(*since) > j.new.timeout + config.bot_session_timeout).then_some((*id, j.new.timeout))
            })
            .collect();
        for (id, timeout) in overdue {
            let message = format!("the action did not finish within its execution timeout of {timeout:?}");
            drop_job(&mut st, id, false);
            finish_job(&mut st, id, failed(Code::DeadlineExceeded, message));
        }
        if let Some(c) = cutoff(now, config.operation_retention) {
            st.operations.forget_finished_before(c);
        }
    }
}
