//! The spoke's scheduler: starts queued jobs when slots are free, keeps the leases of running
//! attempts alive, recovers attempts whose spoke process is gone, and applies retention.
//!
//! One task runs [`Scheduler::run`]. It dispatches until the queue has nothing runnable, then
//! sleeps until the earliest delayed job is due (a monotonic `tokio` sleep computed from the
//! stored wall-clock time, re-read from Valkey on every pass so that a reconnect or a restart
//! cannot make it drift), until an attempt ends or a job is enqueued (a [`Notify`]), or until
//! the next maintenance pass. It never busy-polls: a pass with nothing to do sleeps.
//!
//! Recovery policy: an active job whose lease has run out and that no task of this process
//! supervises belongs to a spoke process that is gone. Before anything else happens to it,
//! its attempt's process group is SIGKILLed if a process with the recorded pid *and start time*
//! still lives, and the scheduler waits until it is dead; only then is the attempt ended
//! `failed` with reason `spoke_restarted` and the job retried per its policy. So a job never
//! has two live processes. This module decides what runs when; `runner` runs it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mosaic_shared::ids::{AgentId, ProfileName};
use mosaic_shared::time::unix_ms;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::{Notify, watch};

use crate::config::SpokeConfig;
use crate::job::backoff;
use crate::profile::{self, JobSpec};
use crate::runner::{Supervisor, is_same_live_process, signal_group};
use crate::store::{AttemptEnd, ExpiredLease, Guarded, Outcome, Store, StoreError};

/// Most attempts asked for in one dispatch call.
const MAX_DISPATCH_BATCH: usize = 64;

/// The error recorded on an attempt whose spoke process disappeared.
pub const SPOKE_RESTARTED: &str = "spoke_restarted";

pub struct Scheduler {
    config: Arc<SpokeConfig>,
    store: Store,
    supervisor: Arc<Supervisor>,
    /// This spoke process's instance id: the owner recorded on the leases it holds.
    owner: String,
    wake: Arc<Notify>,
    profile_limits: Vec<(ProfileName, usize)>,
}

impl Scheduler {
    pub fn new(
        config: Arc<SpokeConfig>,
        store: Store,
        supervisor: Arc<Supervisor>,
        wake: Arc<Notify>,
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
            profile_limits,
        }
    }

    /// Runs until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let maintenance_every = self.config.queue.lease / 3;
        let mut next_maintenance = Instant::now();
        tracing::info!(owner = %self.owner, concurrency = self.config.queue.concurrency, "scheduler running");
        while !*stop.borrow() {
            if Instant::now() >= next_maintenance {
                self.maintain().await;
                next_maintenance = Instant::now() + maintenance_every;
            }
            let mut wait = next_maintenance.saturating_duration_since(Instant::now());
            match self.dispatch_all().await {
                Ok(Some(due)) => {
                    let until = Duration::from_millis((due - unix_ms()).max(0) as u64);
                    wait = wait.min(until);
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "dispatch failed; retrying shortly");
                    wait = wait.min(Duration::from_millis(500));
                }
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
                _ = stop.changed() => {}
            }
        }
        tracing::info!("scheduler stopped");
    }

    /// Starts attempts until nothing more can start now, asking for as many per call as this
    /// process has free slots. Returns when the earliest delayed job becomes due, if known.
    /// With every local slot taken it asks nothing: a slot freeing up wakes the loop.
    async fn dispatch_all(&self) -> Result<Option<i64>, StoreError> {
        loop {
            let free = self
                .config
                .queue
                .concurrency
                .saturating_sub(self.supervisor.running_count())
                .min(MAX_DISPATCH_BATCH);
            if free == 0 {
                return Ok(None);
            }
            let agents: Vec<AgentId> = (0..free).map(|_| AgentId::generate()).collect();
            let (started, next_due) = self
                .store
                .dispatch_many(
                    unix_ms(),
                    self.config.queue.lease,
                    &agents,
                    &self.owner,
                    self.config.queue.concurrency,
                    &self.profile_limits,
                )
                .await?;
            let got = started.len();
            for d in started {
                // Planned again now: the profile may have changed since the job was queued.
                let plan = serde_json::from_str::<JobSpec>(&d.spec)
                    .map_err(|e| format!("stored job spec is unreadable: {e}"))
                    .and_then(|spec| {
                        profile::plan(&self.config.profiles, &d.profile, &spec)
                            .map_err(|e| e.to_string())
                    });
                self.supervisor.launch(d, plan);
            }
            if got < free {
                return Ok(next_due);
            }
        }
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
