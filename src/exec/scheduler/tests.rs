//! The scheduler's state machine, driven call by call on a paused clock (`start_paused`): time moves
//! only when a test advances it, so every timeout is exact.

use std::sync::Arc;
use std::time::Duration;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use parking_lot::Mutex;
use strata_backends::{Digest, DigestFunction};
use tokio::time::Instant;
use tonic::Code;

use super::*;

#[derive(Default)]
struct Recorder(Mutex<Vec<(String, Digest, i32)>>);

#[async_trait::async_trait]
impl ResultSink for Recorder {
    async fn store(&self, instance: &str, action: &Digest, result: &reapi::ActionResult) {
        self.0.lock().push((instance.to_string(), *action, result.exit_code));
    }
}

fn config() -> SchedulerConfig {
    SchedulerConfig {
        queue_timeout: Duration::from_secs(60),
        max_execution_timeout: Duration::from_secs(600),
        bot_session_timeout: Duration::from_secs(30),
        max_attempts: 2,
        operation_retention: Duration::from_secs(120),
    }
}

fn scheduler() -> (Arc<Scheduler>, Arc<Recorder>) {
    let sink = Arc::new(Recorder::default());
    (Scheduler::start(config(), sink.clone()), sink)
}

fn job(name: &[u8], platform: &[(&str, &str)], priority: i32, cacheable: bool) -> NewJob {
    NewJob {
        owner: None,
        instance: String::new(),
        action_digest: DigestFunction::Sha256.digest_of(name),
        work: Work { action: reapi::Action { do_not_cache: !cacheable, ..Default::default() }, command: None },
        platform: platform.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        priority,
        timeout: Duration::from_secs(10),
        cacheable,
    }
}

fn bot(id: &str, properties: &[(&str, &str)], capacity: usize) -> NewSession {
    NewSession {
        instance: String::new(),
        owner: None,
        bot_id: id.into(),
        properties: properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        capacity,
        status: BotStatus::Ok,
        priority: 0,
    }
}

fn report(lease: &LeaseView, state: LeaseState, exit_code: i32) -> LeaseReport {
    let result = (state == LeaseState::Completed).then(|| reapi::ActionResult { exit_code, ..Default::default() });
    LeaseReport { lease_id: lease.id.clone(), state, status: None, result }
}

fn outcome_code(view: &OperationView) -> Option<i32> {
    match view.state.borrow().outcome.as_ref()? {
        Outcome::Response(r) => Some(r.status.as_ref().map_or(0, |s| s.code)),
        Outcome::Error(code, _) => Some(*code as i32),
    }
}

#[tokio::test(start_paused = true)]
async fn a_job_runs_on_a_bot_and_its_result_is_cached_then_delivered() {
    let (scheduler, sink) = scheduler();
    let op = scheduler.submit(job(b"a", &[], 0, true));
    assert_eq!(op.state.borrow().stage, Stage::Queued);
    let (session, view) = scheduler.create_session(bot("b1", &[], 1));
    assert_eq!(view.leases.len(), 1);
    assert!(view.leases[0].work.is_some(), "a pending lease carries its work");
    assert!(!view.has_room);
    assert_eq!(op.state.borrow().stage, Stage::Executing);

    let accepted = scheduler.report(&session, vec![report(&view.leases[0], LeaseState::Active, 0)], BotStatus::Ok).unwrap();
    assert!(accepted.answer_now, "an accepted lease is answered at once");
    assert!(accepted.view.leases[0].work.is_some(), "and keeps its work while active");

    let done = scheduler.report(&session, vec![report(&view.leases[0], LeaseState::Completed, 0)], BotStatus::Ok).unwrap();
    assert!(!done.answer_now && done.view.has_room && done.view.leases.is_empty());
    for finished in done.finished {
        scheduler.deliver(finished).await;
    }
    assert_eq!(sink.0.lock().as_slice(), &[(String::new(), op.action_digest, 0)]);
    assert_eq!(op.state.borrow().stage, Stage::Completed);
    assert_eq!(outcome_code(&op), Some(0));
}

#[tokio::test(start_paused = true)]
async fn identical_cacheable_actions_share_a_job_and_failures_are_not_cached() {
    let (scheduler, sink) = scheduler();
    let first = scheduler.submit(job(b"same", &[], 0, true));
    let second = scheduler.submit(job(b"same", &[], 0, true));
    let uncached = scheduler.submit(job(b"same", &[], 0, false));
    assert_eq!(scheduler.counts().queued, 2, "the two cacheable ones are one job");
    let (session, view) = scheduler.create_session(bot("b1", &[], 4));
    assert_eq!(view.leases.len(), 2);
    let reports = view.leases.iter().map(|l| report(l, LeaseState::Completed, 1)).collect();
    for finished in scheduler.report(&session, reports, BotStatus::Ok).unwrap().finished {
        scheduler.deliver(finished).await;
    }
    for op in [&first, &second, &uncached] {
        assert_eq!(op.state.borrow().stage, Stage::Completed);
    }
    assert!(sink.0.lock().is_empty(), "a non-zero exit is not cached");
}

#[tokio::test(start_paused = true)]
async fn jobs_go_to_bots_that_offer_their_platform_best_priority_first() {
    let (scheduler, _) = scheduler();
    let linux_low = scheduler.submit(job(b"l1", &[("OSFamily", "linux")], 5, true));
    let mac = scheduler.submit(job(b"m", &[("OSFamily", "macos")], -10, true));
    let linux_high = scheduler.submit(job(b"l2", &[("OSFamily", "linux")], -1, true));
    let (_, view) = scheduler.create_session(bot("linux", &[("OSFamily", "linux")], 1));
    assert_eq!(view.leases.len(), 1);
    assert_eq!(linux_high.state.borrow().stage, Stage::Executing, "the linux job with the lower priority value");
    assert_eq!(linux_low.state.borrow().stage, Stage::Queued);
    assert_eq!(mac.state.borrow().stage, Stage::Queued, "no bot offers macos");

    // Of two bots with room, the one with the lower priority value gets the next job.
    let (preferred, _) = scheduler.create_session(NewSession { priority: -1, ..bot("fast", &[("OSFamily", "linux")], 1) });
    let (other, _) = scheduler.create_session(bot("slow", &[("OSFamily", "linux")], 1));
    let _ = (linux_low, other);
    let next = scheduler.submit(job(b"l3", &[("OSFamily", "linux")], 0, true));
    assert_eq!(next.state.borrow().stage, Stage::Executing);
    assert!(scheduler.session_view(&preferred).unwrap().leases.len() == 1);
}

#[tokio::test(start_paused = true)]
async fn a_job_no_bot_takes_fails_at_the_queue_timeout_saying_why() {
    let (scheduler, _) = scheduler();
    let op = scheduler.submit(job(b"gpu", &[("gpu", "a100")], 0, true));
    let (cpu, _) = scheduler.create_session(bot("cpu", &[("OSFamily", "linux")], 1));
    scheduler.calling(&cpu, true); // in a long poll: alive throughout
    tokio::time::advance(Duration::from_secs(59)).await;
    scheduler.expire(Instant::now());
    assert_eq!(outcome_code(&op), None, "not yet");
    tokio::time::advance(Duration::from_secs(2)).await;
    scheduler.expire(Instant::now());
    assert_eq!(outcome_code(&op), Some(Code::Unavailable as i32));
    let Some(Outcome::Response(response)) = op.state.borrow().outcome.clone() else { panic!("no response") };
    let message = response.status.as_ref().map(|s| s.message.clone()).unwrap_or_default();
    assert!(message.contains("gpu=a100") && message.contains("no connected bot offers"), "{message}");
    assert_eq!(scheduler.counts().queued, 0);
}

#[tokio::test(start_paused = true)]
async fn a_silent_bot_loses_its_leases_to_another_until_attempts_run_out() {
    let (scheduler, _) = scheduler();
    let op = scheduler.submit(job(b"x", &[], 0, true));
    let (first, view) = scheduler.create_session(bot("b1", &[], 1));
    assert_eq!(view.leases.len(), 1);
    tokio::time::advance(Duration::from_secs(31)).await;
    scheduler.expire(Instant::now());
    assert!(scheduler.session_view(&first).is_err(), "the silent session is gone");
    assert_eq!(op.state.borrow().stage, Stage::Queued);

    let (second, view) = scheduler.create_session(bot("b2", &[], 1));
    assert_eq!(view.leases.len(), 1, "the job is handed out again");
    assert_eq!(op.state.borrow().stage, Stage::Executing);
    // A bot in a long poll is alive however long the poll lasts.
    scheduler.calling(&second, true);
    tokio::time::advance(Duration::from_secs(31)).await;
    scheduler.expire(Instant::now());
    assert!(scheduler.session_view(&second).is_ok());
    scheduler.calling(&second, false);
    tokio::time::advance(Duration::from_secs(31)).await;
    scheduler.expire(Instant::now());
    assert_eq!(outcome_code(&op), Some(Code::Aborted as i32), "two attempts, both lost");
}

#[tokio::test(start_paused = true)]
async fn a_restarted_bot_gets_its_old_leases_back_at_once() {
    let (scheduler, _) = scheduler();
    let op = scheduler.submit(job(b"r", &[], 0, true));
    let (old, _) = scheduler.create_session(bot("same-id", &[], 1));
    let (_, view) = scheduler.create_session(bot("same-id", &[], 1));
    assert!(scheduler.session_view(&old).is_err());
    assert_eq!(view.leases.len(), 1);
    assert_eq!(op.state.borrow().stage, Stage::Executing);
}

#[tokio::test(start_paused = true)]
async fn cancelling_the_last_operation_cancels_the_lease_on_the_bot() {
    let (scheduler, _) = scheduler();
    let op = scheduler.submit(job(b"c", &[], 0, false));
    let (session, view) = scheduler.create_session(bot("b", &[], 1));
    scheduler.cancel(&op.name).unwrap();
    assert_eq!(outcome_code(&op), Some(Code::Cancelled as i32));
    let cancelled = scheduler.session_view(&session).unwrap();
    assert_eq!(cancelled.leases[0].state, LeaseState::Cancelled);
    assert!(cancelled.leases[0].work.is_none(), "a cancelled lease carries no work");
    assert!(cancelled.has_room, "a cancelled lease does not hold a slot");
    let acknowledged = scheduler.report(&session, vec![report(&view.leases[0], LeaseState::Cancelled, 0)], BotStatus::Ok).unwrap();
    assert!(acknowledged.view.leases.is_empty());
    assert!(matches!(scheduler.cancel("operations/none"), Err(SchedulerError::UnknownOperation(_))));
}

#[tokio::test(start_paused = true)]
async fn finished_operations_are_kept_for_the_retention_time() {
    let (scheduler, _) = scheduler();
    let done = scheduler.completed(Origin { instance: String::new(), owner: None }, DigestFunction::Sha256.digest_of(b"hit"), reapi::ExecuteResponse::default());
    tokio::time::advance(Duration::from_secs(119)).await;
    scheduler.expire(Instant::now());
    assert!(scheduler.watch(&done.name).is_ok());
    tokio::time::advance(Duration::from_secs(2)).await;
    scheduler.expire(Instant::now());
    assert!(matches!(scheduler.watch(&done.name), Err(SchedulerError::UnknownOperation(_))));
    assert_eq!(scheduler.counts(), Counts::default());
}

#[tokio::test(start_paused = true)]
async fn an_unhealthy_bot_gets_no_work_and_a_terminating_one_hands_it_back() {
    let (scheduler, _) = scheduler();
    let (sick, view) = scheduler.create_session(NewSession { status: BotStatus::Unhealthy, ..bot("sick", &[], 1) });
    assert!(!view.has_room);
    let op = scheduler.submit(job(b"h", &[], 0, true));
    assert_eq!(op.state.borrow().stage, Stage::Queued);
    let recovered = scheduler.report(&sick, vec![], BotStatus::Ok).unwrap();
    assert!(recovered.answer_now, "a status change is answered at once");
    assert_eq!(recovered.view.leases.len(), 1);
    let leaving = scheduler.report(&sick, vec![], BotStatus::BotTerminating).unwrap();
    assert!(leaving.view.leases.is_empty());
    assert_eq!(op.state.borrow().stage, Stage::Queued);
    assert_eq!(scheduler.counts().queued, 1);
}
