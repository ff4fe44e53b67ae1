//! Operations: the names clients watch, each bound to a job until it completes, then kept for the
//! retention time so that late WaitExecution and GetOperation calls still find the result.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Bound;

use bazel_remote_apis::build::bazel::remote::execution::v2 as reapi;
use strata_backends::Digest;
use tokio::sync::watch;
use tokio::time::Instant;

use super::{OpState, OperationView, Origin, Outcome};

struct Operation {
    action_digest: Digest,
    origin: Origin,
    job: Option<u64>,
    state: watch::Sender<OpState>,
}

impl Operation {
    fn view(&self, name: &str) -> OperationView {
        OperationView { name: name.to_string(), action_digest: self.action_digest, origin: self.origin.clone(), state: self.state.subscribe() }
    }
}

#[derive(Default)]
pub struct Operations {
    by_name: BTreeMap<String, Operation>,
    /// Finished operations, oldest first, to be forgotten after the retention time.
    finished: VecDeque<(Instant, String)>,
}

impl Operations {
    /// A new operation of `job` (or, without one, already in its final state) and its view.
    pub fn insert(&mut self, name: String, action_digest: Digest, origin: Origin, job: Option<u64>, state: OpState, now: Instant) -> OperationView {
        let done = state.outcome.is_some();
        let (tx, rx) = watch::channel(state);
        let view = OperationView { name: name.clone(), action_digest, origin: origin.clone(), state: rx };
        self.by_name.insert(name.clone(), Operation { action_digest, origin, job, state: tx });
        if done {
            self.finished.push_back((now, name));
        }
        view
    }

    pub fn watch(&self, name: &str) -> Option<OperationView> {
        self.by_name.get(name).map(|op| op.view(name))
    }

    /// Operations after `after` (by name) that `keep` lets through, at most `limit`; and whether
    /// more follow.
    pub fn list(&self, after: &str, limit: usize, keep: impl Fn(&Origin) -> bool) -> (Vec<OperationView>, bool) {
        let mut views = Vec::new();
        let range = self.by_name.range::<str, _>((Bound::Excluded(after), Bound::Unbounded));
        for (name, op) in range.filter(|(_, op)| keep(&op.origin)) {
            if views.len() == limit {
                return (views, true);
            }
            views.push(op.view(name));
        }
        (views, false)
    }

    pub fn exists(&self, name: &str) -> bool {
        self.by_name.contains_key(name)
    }

    /// Unbinds an operation from its job and ends it with `outcome`; returns the job it had.
    pub fn end(&mut self, name: &str, outcome: Outcome, now: Instant) -> Option<u64> {
        let op = self.by_name.get_mut(name)?;
        let job = op.job.take();
        op.state.send_modify(|s| {
            s.stage = reapi::execution_stage::Value::Completed;
            s.outcome = Some(outcome);
        });
        self.finished.push_back((now, name.to_string()));
        job
    }

    /// Moves the operations of a job to `stage`.
    pub fn set_stage(&self, names: &[String], stage: reapi::execution_stage::Value) {
        for op in names.iter().filter_map(|n| self.by_name.get(n)) {
            op.state.send_modify(|s| s.stage = stage);
        }
    }

    /// Forgets an operation; returns the job it was bound to.
    pub fn remove(&mut self, name: &str) -> Option<Option<u64>> {
        self.by_name.remove(name).map(|op| op.job)
    }

    /// Forgets operations that finished before `cutoff`.
    pub fn forget_finished_before(&mut self, cutoff: Instant) {
        while self.finished.front().is_some_and(|(at, _)| *at < cutoff) {
            if let Some((_, name)) = self.finished.pop_front() {
                self.by_name.remove(&name);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }
}
