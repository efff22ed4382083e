//! The spoke's scheduler: starts queued jobs when slots are free, keeps the leases of running
//! attempts alive, recovers attempts whose spoke process is gone, and applies retention.
//!
//! One task runs [`Scheduler::run`], and it is the only writer of attempt transitions. Each
//! pass takes every attempt record the runners have queued (started running, ended; see
//! `runner::Recorder`) and, if slots are free and the queue may hold runnable jobs, asks for
//! new attempts, all in one `Store::step` call: a job's end and the next job's start share a
//! round trip, and under load one call carries many attempts. Ends free their slots as soon as
//! they are written. With nothing to write and nothing to start, it sleeps until a record
//! arrives, a job is enqueued or the queue resumed (a [`Notify`]), the earliest delayed job is
//! due (a monotonic `tokio` sleep computed from the stored wall-clock time, re-read from Valkey
//! on every promotion so that a reconnect or a restart cannot make it drift), or the next
//! maintenance pass. It never busy-polls. When a call fails (Valkey away), it keeps the batch
//! and the new attempts' ids and retries with backoff: every record and the dispatch are safe
//! to repeat, so nothing is lost or created twice.
//!
//! Recovery policy: an active job whose lease has run out and that no task of this process
//! supervises belongs to a spoke process that is gone. Before anything else happens to it,
//! its attempt's process group is SIGKILLed if a process with the recorded pid *and start time*
//! still lives, and the scheduler waits until it is dead; only then is the attempt ended
//! `failed` with reason `spoke_restarted` and the job retried per its policy. So a job never
//! has two live processes. This module decides what runs when; `runner` runs it.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mosaic_shared::ids::{AgentId, ProfileName};
use mosaic_shared::time::unix_ms;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{Notify, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config::SpokeConfig;
use crate::job::backoff;
use crate::profile::{self, JobSpec, LaunchPlan};
use crate::runner::{PendingRecord, Supervisor, is_same_live_process, signal_group};
use crate::store::{
    AttemptEnd, AttemptRecord, DispatchRequest, Dispatched, ExpiredLease, Guarded, Outcome,
    Started, Stepped, Store, StoreError,
};

/// Most attempts asked for in one call.
const MAX_DISPATCH_BATCH: usize = 64;
/// Most attempt records written in one call.
const MAX_RECORD_BATCH: usize = 256;
/// How long a start record waits before it is sent, so that the end of a process that exits
/// at once finds it and takes it along (`Pipeline::take`): one transition instead of two. The
/// attempt shows `running` that much later; it is already `spawning`, and the process is
/// supervised from its first instant either way.
const START_LINGER: Duration = Duration::from_millis(5);
/// Longest wait between retries of a failed call.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);
/// Calls in flight at once: Valkey works on one while this process handles another's reply.
/// Each may carry records and new attempts, so that with few slots the attempts form cohorts
/// that take turns instead of waiting for one another.
const MAX_IN_FLIGHT: usize = 2;

/// A call on its way to Valkey.
struct Flight {
    records: Vec<PendingRecord>,
    /// The dispatch's token and count, if it creates attempts.
    dispatch: Option<(String, usize)>,
    /// Whether the dispatch repeats one whose call failed.
    repeat: bool,
    /// Whether it promotes due delayed jobs (and reads when the next is due).
    promote: bool,
    /// `Pipeline::raised` when it was sent.
    raised: u64,
    /// For a promotion: how many changes to the delayed set had been seen when it was sent
    /// (see `Pipeline::delays_seen`). Its answer covers those, and only those.
    delays_seen: u64,
}

/// The scheduler loop's bookkeeping between calls.
#[derive(Default)]
struct Pipeline {
    /// Records waiting to be sent, oldest first.
    batch: Vec<PendingRecord>,
    /// Attempts with a record in flight; their next records wait, so each lands in order.
    busy_agents: HashSet<AgentId>,
    /// Slots asked for by the dispatch in flight.
    reserved: usize,
    /// Ends in flight: their attempts have finished, and their slots free up when they land.
    ending: usize,
    /// Attempts that calls' tasks have launched whose calls the loop has not yet seen land:
    /// counted both by the supervisor and in `reserved` until then.
    launched_unseen: Arc<AtomicUsize>,
    /// At most one call promotes at a time, so its answer about the delayed set (next due)
    /// is never overtaken by an older one.
    promote_in_flight: bool,
    /// The dispatches (token, count) of calls that failed: each is asked for again, so that a
    /// call which ran but whose reply was lost returns what it created.
    asked: Vec<(String, usize)>,
    /// Whether the queue may hold a job that could start now.
    runnable: bool,
    /// How many times `runnable` was raised (an enqueue's wake-up, slots freed, a promotion,
    /// maintenance). A dispatch that found too few jobs clears `runnable` only if nothing
    /// raised it since the dispatch was sent: calls in flight together may run in either
    /// order, and an older answer must not hide jobs that a newer event announced.
    raised: u64,
    /// When the earliest delayed job is due (unix ms), as last read.
    next_due: Option<i64>,
    /// Whether the delayed set may have changed since `next_due` was read (a delayed job
    /// enqueued, an attempt failed into a retry backoff): the next dispatching call promotes
    /// and re-reads it.
    check_due: bool,
    /// Changes to the delayed set seen so far, each done in Valkey when counted: a call with a
    /// failed attempt's record landed, a wake-up for an enqueue, maintenance. A call sent after
    /// one is executed after it, but calls in flight together may be executed in either order,
    /// so a promotion answers only for the changes seen before it was sent.
    delays_seen: u64,
    /// Whether the promotion in flight was for a due time that has passed.
    promoted_due: bool,
    failures: u32,
    /// No call is sent before this, after a failure.
    retry_at: Option<Instant>,
}

impl Pipeline {
    /// The queue may hold a job that could start now.
    fn raise(&mut self) {
        self.runnable = true;
        self.raised += 1;
    }

    /// Adds a runner's record to the batch. An end whose attempt's start still waits in the
    /// batch (a process that ended before its start was sent) takes the start along: the end's
    /// transition then writes spawning → running first, as for an in-process agent, and the
    /// start's own write is dropped. Its sender no longer waits for it: a runner sends the end
    /// only after its process is gone.
    fn take(&mut self, mut r: PendingRecord) {
        if let AttemptRecord::Ended { agent, end, .. } = &mut r.record
            && end.started.is_none()
            && let Some(i) = self.batch.iter().position(
                |p| matches!(&p.record, AttemptRecord::Running { agent: a, .. } if a == agent),
            )
            && let AttemptRecord::Running {
                at_ms,
                pid,
                proc_start,
                ..
            } = self.batch.remove(i).record
        {
            end.started = Some(Started {
                at_ms,
                process: Some((pid, proc_start)),
            });
        }
        self.batch.push(r);
    }

    /// The delayed set may have changed, and the change is done in Valkey: the next promotion
    /// re-reads when its earliest job is due.
    fn delay_may_have_changed(&mut self) {
        self.delays_seen += 1;
        self.check_due = true;
    }
}

/// What a call did, and how many attempts its task launched (each with a plan, or the reason
/// there is none).
type Landed = (Stepped, usize);

/// Plans a new attempt again from its stored spec: the profile may have changed since the job
/// was queued. A job that no longer plans is launched with the error, so its attempt fails at
/// once. The working directory's symbolic links are checked by the attempt's own task
/// (`profile::replan`), so this makes no system calls.
fn plan_attempt(config: &SpokeConfig, d: &Dispatched) -> Result<LaunchPlan, String> {
    let spec = serde_json::from_str::<JobSpec>(&d.spec)
        .map_err(|e| format!("stored job spec is unreadable: {e}"))?;
    profile::replan(&config.profiles, &d.profile, &spec).map_err(|e| e.to_string())
}

/// What the scheduler is doing; the spoke moves it forward on shutdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Writing records and starting jobs.
    Run,
    /// Writing records (of attempts being stopped) but starting nothing.
    Drain,
    /// Stopped.
    Exit,
}

/// The error recorded on an attempt whose spoke process disappeared.
pub const SPOKE_RESTARTED: &str = "spoke_restarted";

pub struct Scheduler {
    config: Arc<SpokeConfig>,
    store: Store,
    supervisor: Arc<Supervisor>,
    /// This spoke process's instance id: the owner recorded on the leases it holds.
    owner: String,
    wake: Arc<Notify>,
    records: mpsc::UnboundedReceiver<PendingRecord>,
    profile_limits: Vec<(ProfileName, usize)>,
}

impl Scheduler {
    pub fn new(
        config: Arc<SpokeConfig>,
        store: Store,
        supervisor: Arc<Supervisor>,
        wake: Arc<Notify>,
        records: mpsc::UnboundedReceiver<PendingRecord>,
    ) -> Self {
        let profile_limits = config
            .profiles
            .values()
            .filter_map(|p| p.concurrency.map(|c| (p.name.clone(), c)))
            .collect();
        Scheduler {
            config,
            store,
            supervisor,
            owner: uuid::Uuid::now_v7().to_string(),
            wake,
            records,
            profile_limits,
        }
    }

    /// Runs until `phase` reaches [`Phase::Exit`].
    pub async fn run(mut self, mut phase: watch::Receiver<Phase>) {
        let maintenance_every = self.config.queue.lease / 3;
        let mut next_maintenance = Instant::now();
        let mut st = Pipeline {
            runnable: true,
            check_due: true,
            ..Pipeline::default()
        };
        let mut flights: JoinSet<(Flight, Result<Landed, StoreError>)> = JoinSet::new();
        // Whether the last call to land launched attempts.
        let mut launched = false;
        tracing::info!(owner = %self.owner, concurrency = self.config.queue.concurrency, "scheduler running");
        loop {
            let now_phase = *phase.borrow();
            if now_phase == Phase::Exit {
                break;
            }
            if Instant::now() >= next_maintenance {
                self.maintain().await;
                next_maintenance = Instant::now() + maintenance_every;
                st.raise();
                st.delay_may_have_changed();
            }
            while st.batch.len() < MAX_RECORD_BATCH {
                match self.records.try_recv() {
                    Ok(r) => st.take(r),
                    Err(_) => break,
                }
            }
            let may_send =
                flights.len() < MAX_IN_FLIGHT && st.retry_at.is_none_or(|t| Instant::now() >= t);
            if may_send && !flights.is_empty() && std::mem::take(&mut launched) {
                // Valkey is busy with the other call: give the attempts just launched one turn
                // of the runtime, so that the ends of those that finish at once go in this call
                // rather than trickling into calls of their own.
                tokio::task::yield_now().await;
                continue;
            }
            if may_send && let Some(flight) = self.next_flight(&mut st, now_phase == Phase::Run) {
                let store = self.store.clone();
                let config = self.config.clone();
                let supervisor = self.supervisor.clone();
                let launches = st.launched_unseen.clone();
                let (owner, limits) = (self.owner.clone(), self.profile_limits.clone());
                flights.spawn(async move {
                    let records: Vec<_> = flight.records.iter().map(|p| &p.record).collect();
                    let (token, count) = flight
                        .dispatch
                        .as_ref()
                        .map_or(("", 0), |(t, c)| (t.as_str(), *c));
                    let request = DispatchRequest {
                        count,
                        token,
                        lease: config.queue.lease,
                        owner: &owner,
                        repeat: flight.repeat,
                        total_limit: config.queue.concurrency,
                        profile_limits: &limits,
                        promote: flight.promote,
                    };
                    let dispatch =
                        (flight.dispatch.is_some() || flight.promote).then_some(&request);
                    let out = store.step(unix_ms(), &records, dispatch).await;
                    // The new attempts are planned and launched here, as soon as the answer
                    // comes, beside the loop rather than in it. A launch only adds to the
                    // supervisor's count before the loop frees the dispatch's reservation, so
                    // the loop's view of the slots in use errs high, never low.
                    let out = out.map(|mut stepped| {
                        let launched = stepped.dispatched.len();
                        for d in stepped.dispatched.drain(..) {
                            let plan = plan_attempt(&config, &d);
                            supervisor.launch(d, plan);
                            // After the launch: until the loop sees this land, the slot is
                            // counted twice or (just before this) once, never not at all.
                            launches.fetch_add(1, Ordering::Release);
                        }
                        (stepped, launched)
                    });
                    (flight, out)
                });
                continue;
            }
            let mut wait = next_maintenance.saturating_duration_since(Instant::now());
            // A due time matters only to a call that may promote: with a promotion in flight,
            // its landing wakes the loop instead.
            if now_phase == Phase::Run
                && !st.promote_in_flight
                && let Some(t) = st.next_due
            {
                wait = wait.min(Duration::from_millis((t - unix_ms()).max(0) as u64));
            }
            if let Some(t) = st.retry_at {
                wait = wait.min(t.saturating_duration_since(Instant::now()));
            }
            // A lingering start is sent when its time is up.
            if let Some(sent) = st
                .batch
                .iter()
                .filter(|p| !p.record.is_end() && !st.busy_agents.contains(p.record.agent()))
                .map(|p| p.sent)
                .min()
            {
                wait = wait.min((sent + START_LINGER).saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                Some(done) = flights.join_next(), if !flights.is_empty() => match done {
                    Ok((flight, out)) => launched = self.landed(&mut st, flight, out),
                    Err(e) => tracing::error!(error = %e, "a queue write task failed"),
                },
                r = self.records.recv() => {
                    if let Some(r) = r {
                        st.take(r);
                    }
                }
                () = self.wake.notified() => {
                    // The enqueue that woke us is done in Valkey: a promotion sent from now on
                    // sees its job if it is delayed.
                    st.raise();
                    st.delay_may_have_changed();
                }
                () = tokio::time::sleep(wait) => {}
                _ = phase.changed() => {}
            }
        }
        // Ends that never reached Valkey: nothing waits for them, so say so here.
        self.records.close();
        while let Ok(p) = self.records.try_recv() {
            st.take(p);
        }
        for p in st.batch.iter().filter(|p| p.record.is_end()) {
            tracing::warn!(agent = %p.record.agent(), "{}", crate::runner::END_UNWRITTEN);
        }
        tracing::info!("scheduler stopped");
    }

    /// The next call to make, if there is anything to write or to start now: the records
    /// whose attempts have no record in flight (so one attempt's records land in order), new
    /// attempts for free slots (a failed dispatch first), and, unless a promotion is already in
    /// flight, promotion of due delayed jobs.
    fn next_flight(&self, st: &mut Pipeline, running: bool) -> Option<Flight> {
        let mut records = Vec::new();
        let mut held = Vec::new();
        let now = Instant::now();
        for p in st.batch.drain(..) {
            let lingering = !p.record.is_end() && now < p.sent + START_LINGER;
            if lingering || st.busy_agents.contains(p.record.agent()) {
                held.push(p);
            } else {
                st.busy_agents.insert(p.record.agent().clone());
                records.push(p);
            }
        }
        st.batch = held;
        let ending = records.iter().filter(|r| r.record.is_end()).count();
        let mut dispatch = None;
        let mut repeat = false;
        let mut promote = false;
        if running {
            // Ends in this call land before its dispatch. Ends in a call already in flight
            // most likely land before it too (it was sent first); if not, Valkey still counts
            // them active and starts fewer, and their landing asks again. Valkey's count of
            // active jobs is what enforces the limit.
            let occupied = (self.supervisor.running_count() + st.reserved)
                .saturating_sub(ending + st.ending + st.launched_unseen.load(Ordering::Acquire));
            let free = self
                .config
                .queue
                .concurrency
                .saturating_sub(occupied)
                .min(MAX_DISPATCH_BATCH);
            let due = st.next_due.is_some_and(|t| t <= unix_ms());
            if !st.promote_in_flight {
                promote = due || st.check_due;
                // A promotion makes delayed jobs runnable.
                st.promoted_due |= due;
            }
            if (st.runnable || (due && promote)) && free > 0 {
                dispatch = Some(match st.asked.pop() {
                    Some(failed) => {
                        repeat = true;
                        failed
                    }
                    None => (uuid::Uuid::now_v7().to_string(), free),
                });
            }
        }
        if records.is_empty() && dispatch.is_none() && !promote {
            return None;
        }
        st.promote_in_flight |= promote;
        st.reserved += dispatch.as_ref().map_or(0, |(_, c)| *c);
        st.ending += ending;
        Some(Flight {
            records,
            dispatch,
            repeat,
            promote,
            raised: st.raised,
            delays_seen: st.delays_seen,
        })
    }

    /// Applies what a call did (or puts it back to be retried, if it failed). Returns whether
    /// it launched attempts.
    fn landed(&self, st: &mut Pipeline, flight: Flight, out: Result<Landed, StoreError>) -> bool {
        let ending = flight.records.iter().filter(|r| r.record.is_end()).count();
        st.ending -= ending;
        st.reserved -= flight.dispatch.as_ref().map_or(0, |(_, c)| *c);
        if flight.promote {
            st.promote_in_flight = false;
        }
        for p in &flight.records {
            st.busy_agents.remove(p.record.agent());
        }
        if let Ok((_, n)) = &out {
            st.launched_unseen.fetch_sub(*n, Ordering::AcqRel);
        }
        let (out, launched) = match out {
            Ok(out) => out,
            Err(e) => {
                st.failures = st.failures.saturating_add(1);
                let wait = Duration::from_millis(100 << st.failures.min(5)).min(MAX_RETRY_WAIT);
                tracing::warn!(error = %e, records = flight.records.len(), retry_in = ?wait, "cannot write to the queue; retrying");
                st.retry_at = Some(Instant::now() + wait);
                // Older than anything still waiting for the same attempts: they go first.
                let mut records = flight.records;
                records.append(&mut st.batch);
                st.batch = records;
                st.asked.extend(flight.dispatch);
                if flight.promote {
                    st.check_due = true;
                }
                return false;
            }
        };
        st.failures = 0;
        st.retry_at = None;
        if flight.records.iter().any(|r| r.record.may_delay_job()) {
            // Counted when it has landed, not when sent: a promotion in flight beside it may
            // have run before it.
            st.delay_may_have_changed();
        }
        for (pending, result) in flight.records.into_iter().zip(out.records) {
            if let AttemptRecord::Ended {
                job, agent, end, ..
            } = &pending.record
            {
                self.supervisor.release(agent);
                match &result {
                    Guarded::Applied(job_state) => {
                        tracing::info!(%job, %agent, outcome = ?end.outcome, %job_state, "attempt ended");
                    }
                    other => {
                        tracing::warn!(%job, %agent, ?other, "attempt end refused");
                    }
                }
            }
            if let Some(reply) = pending.reply {
                let _ = reply.send(result);
            }
        }
        if flight.promote {
            st.next_due = out.next_due;
            // A change seen after it was sent may be missing from its answer: read again.
            st.check_due = st.delays_seen != flight.delays_seen;
            if std::mem::take(&mut st.promoted_due) {
                st.raise();
            }
        }
        if let Some((_, count)) = flight.dispatch {
            if launched == count {
                st.runnable = true;
            } else if st.raised == flight.raised {
                // Fewer than asked, and nothing announced since it was sent: nothing more can
                // start until something changes. (An older answer that lands after a newer
                // one can be stale only while attempts it did not see are running, and their
                // ends raise it again.)
                st.runnable = false;
            }
        }
        if ending > 0 {
            // Freed slots: a dispatch that found the spoke full may succeed now.
            st.raise();
        }
        launched > 0
    }

    async fn maintain(&self) {
        let now = unix_ms();
        let until = now + self.config.queue.lease.as_millis() as i64;
        let ours = self.supervisor.running_jobs();
        if let Err(e) = self.store.renew_leases(&self.owner, &ours, until).await {
            tracing::warn!(error = %e, "cannot renew leases");
        }
        match self.store.expired_leases(now).await {
            Ok(expired) => {
                for lease in expired {
                    self.recover(lease).await;
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot list expired leases"),
        }
        let q = &self.config.queue;
        match self
            .store
            .trim_finished(now, q.retain_finished, q.retain_finished_max)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "retention removed finished jobs"),
            Err(e) => tracing::warn!(error = %e, "retention failed"),
        }
        let e = &self.config.events;
        match self.store.trim_events(now, e.retain, e.retain_max).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "retention removed events"),
            Err(e) => tracing::warn!(error = %e, "event retention failed"),
        }
    }

    /// Ends an attempt whose spoke process is gone, after making sure its processes are dead.
    async fn recover(&self, lease: ExpiredLease) {
        let Some(agent) = lease.agent_id else {
            tracing::warn!(job = %lease.job_id, "active job without an attempt; leaving it");
            return;
        };
        if self.supervisor.supervises(&agent) {
            // Ours and alive: the lease lapsed while we were busy; the next renewal fixes it.
            return;
        }
        let record = match self.store.agent(&agent).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(%agent, error = %e, "cannot read attempt to recover");
                return;
            }
        };
        if let Some(rec) = &record
            && let (Some(pid), Some(start)) = (rec.pid, rec.proc_start)
            && !ensure_dead(pid, start).await
        {
            tracing::error!(%agent, pid, "orphaned attempt survives SIGKILL; not retrying its job yet");
            return;
        }
        let job = match self.store.job(&lease.job_id).await {
            Ok(Some(j)) => j,
            other => {
                tracing::warn!(job = %lease.job_id, ?other, "cannot read job to recover");
                return;
            }
        };
        let end = AttemptEnd {
            outcome: Outcome::Failed,
            retry_delay: backoff(
                job.backoff_base,
                job.backoff_cap,
                job.failures + 1,
                crate::runner::unit_random(),
            ),
            error: SPOKE_RESTARTED.into(),
            exit_code: None,
            signal: None,
            output_tail: String::new(),
            started: None,
        };
        match self
            .store
            .attempt_ended(&lease.job_id, &agent, unix_ms(), &end)
            .await
        {
            Ok(Guarded::Applied(state)) => {
                tracing::info!(job = %lease.job_id, %agent, previous_owner = %lease.owner, job_state = %state, "recovered attempt of a stopped spoke");
                self.wake.notify_one();
            }
            other => {
                tracing::warn!(job = %lease.job_id, %agent, ?other, "cannot end orphaned attempt")
            }
        }
    }
}

/// SIGKILLs the process group led by `pid` if that process (same pid *and* start time) still
/// lives, and waits up to 5 s for it to die. Returns whether it is gone.
async fn ensure_dead(pid: u32, start: u64) -> bool {
    if !is_same_live_process(pid, start) {
        return true;
    }
    tracing::info!(pid, "killing the process group of an orphaned attempt");
    signal_group(Pid::from_raw(pid as i32), Signal::SIGKILL);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if !is_same_live_process(pid, start) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_shared::ids::JobId;

    fn pending(record: AttemptRecord) -> PendingRecord {
        PendingRecord {
            record,
            reply: Some(tokio::sync::oneshot::channel().0),
            sent: Instant::now(),
        }
    }

    fn running(job: &JobId, n: u32) -> AttemptRecord {
        AttemptRecord::Running {
            job: job.clone(),
            agent: AgentId::of_attempt(job, n),
            at_ms: 100 + i64::from(n),
            pid: 4000 + n,
            proc_start: 77,
        }
    }

    fn ended(job: &JobId, n: u32, started: Option<Started>) -> AttemptRecord {
        AttemptRecord::Ended {
            job: job.clone(),
            agent: AgentId::of_attempt(job, n),
            at_ms: 200,
            end: AttemptEnd {
                outcome: Outcome::Completed,
                retry_delay: Duration::ZERO,
                error: String::new(),
                exit_code: Some(0),
                signal: None,
                output_tail: String::new(),
                started,
            },
        }
    }

    fn started_of(p: &PendingRecord) -> Option<Started> {
        match &p.record {
            AttemptRecord::Ended { end, .. } => end.started,
            AttemptRecord::Running { .. } => None,
        }
    }

    #[test]
    fn an_end_takes_along_its_attempts_unsent_start_and_nothing_else() {
        let (a, b) = (JobId::generate(), JobId::generate());
        let mut st = Pipeline::default();
        st.take(pending(running(&a, 1)));
        st.take(pending(running(&b, 1)));
        st.take(pending(ended(&a, 1, None)));
        // b's start stays, a's start went into a's end.
        assert_eq!(st.batch.len(), 2);
        assert!(matches!(&st.batch[0].record, AttemptRecord::Running { job, .. } if *job == b));
        assert_eq!(
            started_of(&st.batch[1]),
            Some(Started {
                at_ms: 101,
                process: Some((4001, 77)),
            })
        );

        // An end whose start was sent already (not in the batch) goes as it is, and so does
        // one that carries its own start (an in-process agent).
        let mut st = Pipeline::default();
        st.take(pending(ended(&a, 2, None)));
        let own = Some(Started {
            at_ms: 5,
            process: None,
        });
        st.take(pending(running(&b, 3)));
        st.take(pending(ended(&b, 3, own)));
        assert_eq!(st.batch.len(), 3);
        assert_eq!(started_of(&st.batch[0]), None);
        assert_eq!(started_of(&st.batch[2]), own);
    }
}
