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

use std::sync::Arc;
use std::time::Duration;

use mosaic_shared::ids::ProfileName;
use mosaic_shared::time::unix_ms;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{Notify, mpsc, watch};
use tokio::time::Instant;

use crate::config::SpokeConfig;
use crate::job::backoff;
use crate::profile::{self, JobSpec};
use crate::runner::{PendingRecord, Supervisor, is_same_live_process, signal_group};
use crate::store::{AttemptEnd, DispatchRequest, ExpiredLease, Guarded, Outcome, Store};

/// Most attempts asked for in one call.
const MAX_DISPATCH_BATCH: usize = 64;
/// Most attempt records written in one call.
const MAX_RECORD_BATCH: usize = 256;
/// Longest wait between retries of a failed call.
const MAX_RETRY_WAIT: Duration = Duration::from_secs(2);

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
        let mut batch: Vec<PendingRecord> = Vec::new();
        // The dispatch (token, count) of a call that failed: asked for again, so that a call
        // which ran but whose reply was lost returns what it created.
        let mut asked: Option<(String, usize)> = None;
        // Whether the queue may hold a job that could start now.
        let mut runnable = true;
        let mut next_due: Option<i64> = None;
        let mut failures = 0u32;
        tracing::info!(owner = %self.owner, concurrency = self.config.queue.concurrency, "scheduler running");
        loop {
            let now_phase = *phase.borrow();
            if now_phase == Phase::Exit {
                break;
            }
            if Instant::now() >= next_maintenance {
                self.maintain().await;
                next_maintenance = Instant::now() + maintenance_every;
                runnable = true;
            }
            while batch.len() < MAX_RECORD_BATCH {
                match self.records.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            let ending = batch.iter().filter(|r| r.record.is_end()).count();
            let busy = self.supervisor.running_count().saturating_sub(ending);
            let free = self
                .config
                .queue
                .concurrency
                .saturating_sub(busy)
                .min(MAX_DISPATCH_BATCH);
            let due = next_due.is_some_and(|t| t <= unix_ms());
            let start = now_phase == Phase::Run && (runnable || due) && free > 0;
            if batch.is_empty() && !start && !(due && now_phase == Phase::Run) {
                let mut wait = next_maintenance.saturating_duration_since(Instant::now());
                if let Some(t) = next_due {
                    wait = wait.min(Duration::from_millis((t - unix_ms()).max(0) as u64));
                }
                tokio::select! {
                    r = self.records.recv() => batch.extend(r),
                    () = self.wake.notified() => runnable = true,
                    () = tokio::time::sleep(wait) => {}
                    _ = phase.changed() => {}
                }
                continue;
            }
            if start && asked.is_none() {
                asked = Some((uuid::Uuid::now_v7().to_string(), free));
            }
            let records: Vec<_> = batch.iter().map(|p| p.record.clone()).collect();
            let (token, count) = match (&asked, start) {
                (Some((token, count)), true) => (token.as_str(), *count),
                _ => ("", 0),
            };
            let request = DispatchRequest {
                count,
                token,
                lease: self.config.queue.lease,
                owner: &self.owner,
                total_limit: self.config.queue.concurrency,
                profile_limits: &self.profile_limits,
                promote: now_phase == Phase::Run,
            };
            let dispatch = (now_phase == Phase::Run).then_some(&request);
            match self.store.step(unix_ms(), &records, dispatch).await {
                Ok(out) => {
                    failures = 0;
                    for (pending, result) in batch.drain(..).zip(out.records) {
                        if pending.record.is_end() {
                            self.supervisor.release(pending.record.agent());
                        }
                        let _ = pending.reply.send(result);
                    }
                    if dispatch.is_some() {
                        next_due = out.next_due;
                    }
                    if start {
                        // Fewer than asked: nothing more can start until something changes.
                        runnable = out.dispatched.len() == count;
                        asked = None;
                    } else if due {
                        runnable = true;
                    }
                    for d in out.dispatched {
                        // Planned again now: the profile may have changed since the job was
                        // queued.
                        let plan = serde_json::from_str::<JobSpec>(&d.spec)
                            .map_err(|e| format!("stored job spec is unreadable: {e}"))
                            .and_then(|spec| {
                                profile::plan(&self.config.profiles, &d.profile, &spec)
                                    .map_err(|e| e.to_string())
                            });
                        self.supervisor.launch(d, plan);
                    }
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    let wait = Duration::from_millis(100 << failures.min(5)).min(MAX_RETRY_WAIT);
                    tracing::warn!(error = %e, records = batch.len(), retry_in = ?wait, "cannot write to the queue; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        _ = phase.changed() => {}
                    }
                }
            }
        }
        tracing::info!("scheduler stopped");
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
            started_in_process_at_ms: None,
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
