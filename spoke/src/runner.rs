//! Runs attempts as supervised child processes and records how they end.
//!
//! A launch starts the plan's program directly (never through a shell) in its own process
//! group, with a cleared environment plus the plan's variables, stdin closed and stdout/stderr
//! read by `output::pump` into events (written to the event stream by a writer task per
//! attempt, all before the attempt's end) and a bounded tail. A Claude Code profile's outcome
//! is its final `result` line; one that prints no result failed, and one that does not exit
//! within the profile's grace after its result is stopped. One task per attempt owns its
//! process: it records `running`
//! (with the pid and the process's start time, so a later spoke can tell it from a reused pid),
//! waits for exit, a stop request or the attempt's timeout, and records the attempt's end,
//! which also moves the job on (done, retry or requeue). Records go through a [`Recorder`] to
//! the scheduler, which writes whatever has queued up in one Valkey call; the attempt keeps
//! its slot until its end is written. A stop sends SIGTERM to the whole group, then SIGKILL
//! after the profile's grace; once the leader has exited the group is SIGKILLed so no child
//! outlives its attempt. This module never decides whether a spawn is allowed (`profile`) or
//! which job runs next (`scheduler`).

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use mosaic_shared::ids::{AgentId, JobId};
use mosaic_shared::time::unix_ms;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot, watch};

use crate::claude::ClaudeResult;
use crate::events::{AgentEvent, MAX_TEXT_BYTES, truncate};
use crate::job::backoff;
use crate::output::{self, Format, OutputLimits, Tail};
use crate::profile::LaunchPlan;
use crate::store::{
    AttemptEnd, AttemptEvents, AttemptRecord, Dispatched, Guarded, Outcome, Started, Store,
};
use tracing::Instrument as _;

/// Events of one attempt waiting for its writer; beyond this the pump drops and counts them.
const EVENT_BUFFER: usize = 1024;
/// Most events of one attempt written in one call.
const EVENT_BATCH: usize = 256;
/// How long an attempt's end waits for its output to be read and its events written.
const OUTPUT_DRAIN: Duration = Duration::from_secs(5);
/// Largest artifact whose digest the spoke computes.
const MAX_ARTIFACT_BYTES: u64 = 1 << 30;

/// Why a running attempt is being stopped; decides how it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// Killed on request (the reason is recorded): the job is cancelled, never retried.
    Requested(String),
    /// Ran past its attempt timeout: counts as a failure.
    Timeout(Duration),
    /// The spoke is shutting down: the job goes back to the queue without counting a failure.
    Shutdown,
    /// It printed its final result but did not exit within the profile's grace: the result
    /// decides the outcome.
    AfterResult,
}

struct Handle {
    job: JobId,
    stop: watch::Sender<Option<Stop>>,
    /// Dropped (with the handle) once the attempt's end is written: waiters then see it done.
    done: watch::Sender<()>,
}

/// An attempt record on its way to Valkey, with where to send the result (a start's sender
/// waits for it; an end's does not, and the scheduler logs how it went).
pub struct PendingRecord {
    pub record: AttemptRecord,
    pub reply: Option<oneshot::Sender<Guarded>>,
    /// When the runner sent it.
    pub sent: tokio::time::Instant,
}

/// Sends attempt records to the scheduler, which writes them in batches.
#[derive(Clone)]
pub struct Recorder(mpsc::UnboundedSender<PendingRecord>);

impl Recorder {
    /// A recorder and the receiving end for the scheduler. Unbounded, but each supervised
    /// attempt has at most one record outstanding, so it holds at most `concurrency` items.
    pub fn channel() -> (Recorder, mpsc::UnboundedReceiver<PendingRecord>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Recorder(tx), rx)
    }

    /// Queues `record`; the receiver resolves once it is written (or fails if the scheduler
    /// has stopped).
    fn send(&self, record: AttemptRecord) -> oneshot::Receiver<Guarded> {
        let (reply, rx) = oneshot::channel();
        // A send error drops `reply`, and the receiver reports that.
        let _ = self.0.send(PendingRecord {
            record,
            reply: Some(reply),
            sent: tokio::time::Instant::now(),
        });
        rx
    }

    /// Queues an attempt's end, the attempt task's last act: nothing waits for it to be
    /// written (the scheduler logs the outcome, and releases the slot when it lands), so the
    /// task ends here rather than being woken again. Returns false if the scheduler has
    /// stopped.
    fn send_end(&self, record: AttemptRecord) -> bool {
        self.0
            .send(PendingRecord {
                record,
                reply: None,
                sent: tokio::time::Instant::now(),
            })
            .is_ok()
    }
}

/// Outcome of a kill request.
#[derive(Debug, PartialEq, Eq)]
pub enum KillOutcome {
    /// The attempt has ended and its end is recorded.
    Ended,
    /// No task of this spoke process supervises the attempt (it already ended, or it belongs to
    /// an earlier run of the spoke and awaits recovery).
    NotSupervised,
    /// The attempt had not ended when the wait ran out; the stop carries on.
    StillEnding,
}

/// The attempts this spoke process is supervising.
pub struct Supervisor {
    recorder: Recorder,
    /// Where attempts' events are written.
    store: Store,
    /// Held only to insert, look up or remove a handle; never across an await. An attempt is
    /// here, holding a slot, from launch until its end is written.
    running: Mutex<HashMap<AgentId, Handle>>,
    /// `mosaic_spoke_attempt_duration_seconds`.
    durations: crate::metrics::AttemptDurations,
}

impl Supervisor {
    pub fn new(recorder: Recorder, store: Store) -> Arc<Self> {
        Arc::new(Supervisor {
            recorder,
            store,
            running: Mutex::new(HashMap::new()),
            durations: crate::metrics::attempt_durations(),
        })
    }

    /// The attempt-duration histograms this supervisor fills (for the metrics registry).
    pub fn attempt_durations(&self) -> crate::metrics::AttemptDurations {
        self.durations.clone()
    }

    /// Starts supervising a dispatched attempt (recorded in `spawning`). `plan` is `Err` when
    /// the job can no longer be launched here (its profile was removed, say): the attempt then
    /// fails at once.
    pub fn launch(self: &Arc<Self>, d: Dispatched, plan: Result<LaunchPlan, String>) {
        let (stop_tx, stop_rx) = watch::channel(None);
        let (done, _) = watch::channel(());
        self.running
            .lock()
            .expect("supervisor map poisoned")
            .insert(
                d.agent_id.clone(),
                Handle {
                    job: d.job_id.clone(),
                    stop: stop_tx,
                    done,
                },
            );
        let recorder = self.recorder.clone();
        let store = self.store.clone();
        let durations = self.durations.clone();
        // The attempt's span joins the trace its job was queued in (the spawn command's).
        let span = tracing::info_span!("attempt", agent = %d.agent_id, profile = %d.profile);
        mosaic_shared::telemetry::follow(&span, &d.trace.traceparent, &d.trace.tracestate);
        let task = async move {
            let started = std::time::Instant::now();
            let stopped = stop_rx.borrow().clone();
            let ended = match plan {
                _ if let Some(why) = stopped => Ended::stopped(why),
                Ok(plan) if plan.profile.noop => run_noop(),
                // Boxed: a process's supervision is a large state machine (about 3 KB), which
                // would otherwise be moved into the task and allocated with it at every launch.
                Ok(plan) => {
                    Box::pin(run(&plan, &d, &recorder, &store, stop_rx))
                        .instrument(span)
                        .await
                }
                Err(error) => Ended::failed(error),
            };
            durations
                .get_or_create(&crate::metrics::AttemptLabels {
                    profile: d.profile.to_string(),
                    outcome: ended.outcome.as_str(),
                })
                .observe(started.elapsed().as_secs_f64());
            record_end(&recorder, &d, ended);
        };
        tokio::spawn(task);
    }

    /// Gives up the slot of an attempt whose end has been written (called by the scheduler).
    pub fn release(&self, agent: &AgentId) {
        self.running
            .lock()
            .expect("supervisor map poisoned")
            .remove(agent);
    }

    /// Whether this process supervises the attempt.
    pub fn supervises(&self, agent: &AgentId) -> bool {
        self.running
            .lock()
            .expect("supervisor map poisoned")
            .contains_key(agent)
    }

    /// How many attempts this process supervises now.
    pub fn running_count(&self) -> usize {
        self.running.lock().expect("supervisor map poisoned").len()
    }

    /// The jobs of the attempts this process supervises (whose leases it must renew).
    pub fn running_jobs(&self) -> Vec<JobId> {
        self.running
            .lock()
            .expect("supervisor map poisoned")
            .values()
            .map(|h| h.job.clone())
            .collect()
    }

    /// Asks the attempt's task to stop and waits up to `wait` for its end to be recorded.
    pub async fn stop(&self, agent: &AgentId, why: Stop, wait: Duration) -> KillOutcome {
        let done = {
            let running = self.running.lock().expect("supervisor map poisoned");
            let Some(h) = running.get(agent) else {
                return KillOutcome::NotSupervised;
            };
            // Only the first reason counts; a second stop does not restart the grace period.
            h.stop.send_if_modified(|r| {
                if r.is_none() {
                    *r = Some(why);
                    true
                } else {
                    false
                }
            });
            h.done.subscribe()
        };
        wait_done(done, wait).await
    }

    /// Stops every supervised attempt as a shutdown (their jobs return to the queue) and waits
    /// for all of them to be recorded, so that nothing outlives the spoke.
    pub async fn shutdown(&self, wait: Duration) {
        let dones: Vec<_> = {
            let running = self.running.lock().expect("supervisor map poisoned");
            running
                .values()
                .map(|h| {
                    h.stop.send_if_modified(|r| {
                        let first = r.is_none();
                        if first {
                            *r = Some(Stop::Shutdown);
                        }
                        first
                    });
                    h.done.subscribe()
                })
                .collect()
        };
        for done in dones {
            wait_done(done, wait).await;
        }
    }
}

/// Writes how an attempt ended (through the scheduler, which retries while Valkey is away).
fn record_end(recorder: &Recorder, d: &Dispatched, ended: Ended) {
    // Only a failure is retried; the others skip the random draw (a system call).
    let retry_delay = if ended.outcome == Outcome::Failed {
        backoff(d.backoff_base, d.backoff_cap, d.failures + 1, unit_random())
    } else {
        Duration::ZERO
    };
    let end = AttemptEnd {
        outcome: ended.outcome,
        retry_delay,
        error: ended.error,
        exit_code: ended.exit_code,
        signal: ended.signal,
        output_tail: ended.output_tail,
        started: ended.started,
    };
    let queued = recorder.send_end(AttemptRecord::Ended {
        job: d.job_id.clone(),
        agent: d.agent_id.clone(),
        at_ms: unix_ms(),
        end,
    });
    if !queued {
        tracing::warn!(agent = %d.agent_id, "{END_UNWRITTEN}");
    }
}

/// Logged for an attempt whose end the scheduler never wrote.
pub(crate) const END_UNWRITTEN: &str = "spoke stopped before the attempt's end was written; its lease will expire and recovery ends it";

/// A uniform random number in [0, 1) from the operating system (for retry jitter).
pub(crate) fn unit_random() -> f64 {
    let mut b = [0u8; 8];
    getrandom::fill(&mut b).expect("the operating system's random source is unavailable");
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

async fn wait_done(mut done: watch::Receiver<()>, wait: Duration) -> KillOutcome {
    // The sender is never used to send: it is dropped when the attempt's end is written.
    match tokio::time::timeout(wait, done.changed()).await {
        Ok(_) => KillOutcome::Ended,
        Err(_) => KillOutcome::StillEnding,
    }
}

/// How an attempt ended, ready to record.
#[derive(Debug)]
struct Ended {
    outcome: Outcome,
    exit_code: Option<i32>,
    signal: Option<i32>,
    error: String,
    output_tail: String,
    /// Set for an in-process agent, whose start is recorded with its end.
    started: Option<Started>,
}

impl Ended {
    fn failed(error: String) -> Self {
        Ended {
            outcome: Outcome::Failed,
            exit_code: None,
            signal: None,
            error,
            output_tail: String::new(),
            started: None,
        }
    }

    fn stopped(why: Stop) -> Self {
        let (outcome, error) = match why {
            Stop::Requested(reason) => (Outcome::Killed, reason),
            Stop::Timeout(t) => (
                Outcome::Failed,
                format!("timed out after {} ms", t.as_millis()),
            ),
            Stop::Shutdown => (Outcome::Interrupted, "spoke shutting down".to_owned()),
            // Replaced by the result's outcome (see `run`).
            Stop::AfterResult => (Outcome::Failed, String::new()),
        };
        Ended {
            outcome,
            ..Ended::failed(error)
        }
    }
}

/// The built-in no-op agent: it runs and completes in process, with no pid to record; its
/// start and end are recorded together, in the end's transaction.
fn run_noop() -> Ended {
    Ended {
        outcome: Outcome::Completed,
        started: Some(Started {
            at_ms: unix_ms(),
            process: None,
        }),
        ..Ended::failed(String::new())
    }
}

async fn run(
    plan: &LaunchPlan,
    d: &Dispatched,
    recorder: &Recorder,
    store: &Store,
    mut stop: watch::Receiver<Option<Stop>>,
) -> Ended {
    // Checked here, just before the directory is made and entered, rather than when the
    // scheduler planned the attempt (see `profile::replan`).
    if let Err(e) = crate::profile::check_workdir(plan) {
        return Ended::failed(e.to_string());
    }
    if let Err(e) = tokio::fs::create_dir_all(&plan.workdir).await {
        return Ended::failed(format!(
            "cannot create working directory {}: {e}",
            plan.workdir.display()
        ));
    }
    let program = &plan.profile.program;
    let spawned = tracing::info_span!("spawn", program = %program.display()).in_scope(|| {
        tokio::process::Command::new(program)
            .args(&plan.args)
            .env_clear()
            .envs(plan.env.iter().map(|(k, v)| (k, v)))
            .current_dir(&plan.workdir)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    });
    let mut child = match spawned {
        Ok(child) => child,
        Err(e) => return Ended::failed(format!("cannot start {}: {e}", program.display())),
    };
    let pid = child.id().expect("a just-spawned child has a pid");
    // process_group(0) makes the child the leader of a group whose id is its pid.
    let group = Pid::from_raw(pid as i32);
    let started = process_start_time(pid).unwrap_or(0);
    tracing::info!(job = %d.job_id, agent = %d.agent_id, attempt = d.attempt, pid, program = %program.display(), "attempt started");

    // Output: the pump reads both pipes into events and the tail; the writer stores the
    // events. Both end when the pipes close, and the end is recorded only after them.
    let tail = Arc::new(Mutex::new(Tail::default()));
    let (result_tx, mut result_rx) = watch::channel::<Option<ClaudeResult>>(None);
    let (events_tx, events_rx) = mpsc::channel(EVENT_BUFFER);
    // The writer appends nothing before the attempt's start is written, so that what the agent
    // reports follows `agent.running` in the stream (see `settle_start`).
    let (gate, gate_rx) = watch::channel(false);
    let format = plan.profile.format;
    let pump = tokio::spawn(output::pump(
        child.stdout.take().expect("stdout is piped"),
        child.stderr.take().expect("stderr is piped"),
        format,
        OutputLimits::default(),
        events_tx,
        tail.clone(),
        result_tx,
    ));
    let writer = tokio::spawn(write_events(
        store.clone(),
        d.clone(),
        plan.workdir.clone(),
        events_rx,
        gate_rx,
    ));
    let mut output = Output {
        pump: Some(pump),
        pump_end: None,
        writer,
        tail,
        result: result_rx.clone(),
        format,
    };

    // The running record is written while the process runs; an end that comes first waits
    // behind it in the recorder's queue, so the two are written in order.
    let mut running = Some(recorder.send(AttemptRecord::Running {
        job: d.job_id.clone(),
        agent: d.agent_id.clone(),
        at_ms: unix_ms(),
        pid,
        proc_start: started,
    }));
    let timeout = d.attempt_timeout;
    let deadline = timeout.map(|t| Instant::now() + t);
    // Set once a Claude Code agent has printed its result: it must exit by then.
    let mut result_deadline: Option<Instant> = None;
    let mut awaiting_result = format == Format::ClaudeStreamJson;
    let why = loop {
        tokio::select! {
            written = async { running.as_mut().expect("guarded by the branch condition").await },
                if running.is_some() =>
            {
                running = None;
                let _ = gate.send(true);
                if !matches!(written, Ok(Guarded::Applied(_))) {
                    // We cannot record that it runs, so it must not run.
                    signal_group(group, Signal::SIGKILL);
                    let _ = child.wait().await;
                    let _ = output.finish().await;
                    return Ended::failed(format!("cannot record attempt as running: {written:?}"));
                }
            }
            status = child.wait() => {
                signal_group(group, Signal::SIGKILL);
                settle_start(running.take(), &mut output, &gate).await;
                let (tail, result) = output.finish().await;
                return exited(status, tail, format, result);
            }
            // Clone inside the future: a watch guard must not live across the select's awaits.
            why = async { stop.wait_for(Option::is_some).await.map(|r| r.clone()) } => {
                break why.ok().flatten().unwrap_or(Stop::Shutdown);
            }
            () = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => break Stop::Timeout(timeout.unwrap_or_default()),
            // Only whether it happened leaves the future: a watch guard is not Send.
            got = async { result_rx.wait_for(Option::is_some).await.is_ok() },
                if awaiting_result =>
            {
                // Either way there is nothing more to wait for: a result, or a pump that
                // ended without one (the exit decides then).
                awaiting_result = false;
                if got {
                    result_deadline = Some(Instant::now() + plan.profile.result_grace);
                }
            }
            () = async {
                match result_deadline {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            } => break Stop::AfterResult,
        }
    };
    tracing::info!(agent = %d.agent_id, pid, ?why, "stopping attempt's process group");
    signal_group(group, Signal::SIGTERM);
    let status = match tokio::time::timeout(plan.profile.kill_grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::info!(agent = %d.agent_id, pid, grace = ?plan.profile.kill_grace, "grace expired; SIGKILL");
            signal_group(group, Signal::SIGKILL);
            child.wait().await
        }
    };
    signal_group(group, Signal::SIGKILL);
    settle_start(running.take(), &mut output, &gate).await;
    let (output_tail, result) = output.finish().await;
    if why == Stop::AfterResult {
        let mut ended = exited(status, output_tail, format, result);
        if ended.outcome == Outcome::Completed {
            // The result said success; that it had to be stopped is not a failure.
            ended.exit_code = None;
        }
        return ended;
    }
    let status = status.ok();
    Ended {
        signal: status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s)),
        exit_code: status.and_then(|s| s.code()),
        output_tail,
        ..Ended::stopped(why)
    }
}

/// Once the process is gone, decides how its start is written, then opens the writer's gate.
/// If the start record has not landed yet and the agent reported nothing, it stays with the
/// scheduler, which sends it along with the end (one transition). If the agent reported
/// events, the start is written first, so that they follow `agent.running` in the stream.
async fn settle_start(
    running: Option<oneshot::Receiver<Guarded>>,
    output: &mut Output,
    gate: &watch::Sender<bool>,
) {
    if let Some(running) = running
        && output.events_reported().await > 0
    {
        let _ = running.await;
    }
    let _ = gate.send(true);
}

/// The output side of a running attempt.
struct Output {
    /// Until [`Output::events_reported`] has waited for it.
    pump: Option<tokio::task::JoinHandle<output::PumpEnd>>,
    pump_end: Option<output::PumpEnd>,
    writer: tokio::task::JoinHandle<()>,
    tail: Arc<Mutex<Tail>>,
    result: watch::Receiver<Option<ClaudeResult>>,
    format: Format,
}

impl Output {
    /// Waits (bounded) for the pipes to be read to their end; how many events the agent's
    /// output gave (all of them if it returns in time).
    async fn events_reported(&mut self) -> u64 {
        if let Some(pump) = self.pump.take()
            && let Ok(Ok(end)) = tokio::time::timeout(OUTPUT_DRAIN, pump).await
        {
            self.pump_end = Some(end);
        }
        // A pump that did not end in time may have sent some: count it as reporting.
        self.pump_end.as_ref().map_or(1, |e| e.events_sent)
    }

    /// Waits (bounded) for the pipes to be read to their end and the events to be written;
    /// returns the tail and, for Claude Code, its last result.
    async fn finish(mut self) -> (String, Option<ClaudeResult>) {
        // The group was SIGKILLed, so the pipes close promptly; bound the wait regardless (a
        // process that left the group could hold them open).
        let pump = self.pump.take();
        let pump_end = self.pump_end.take();
        let drained = async {
            let end = match pump {
                Some(pump) => pump.await.ok(),
                None => pump_end,
            };
            if let Some(end) = end
                && (end.dropped_lines > 0 || end.events_undelivered > 0)
            {
                tracing::info!(
                    dropped_lines = end.dropped_lines,
                    dropped_bytes = end.dropped_bytes,
                    undelivered = end.events_undelivered,
                    "agent output over its budget was dropped"
                );
            }
            let _ = self.writer.await;
        };
        if tokio::time::timeout(OUTPUT_DRAIN, drained).await.is_err() {
            tracing::warn!("agent output not drained in time; ending the attempt without the rest");
        }
        let tail = self.tail.lock().expect("tail poisoned").text();
        let result = match self.format {
            Format::ClaudeStreamJson => self.result.borrow().clone(),
            Format::Plain => None,
        };
        (tail, result)
    }
}

/// Writes one attempt's events in order, in batches, until its pump ends. An artifact's
/// digest is computed here, from the file, never taken from the agent.
async fn write_events(
    store: Store,
    d: Dispatched,
    workdir: std::path::PathBuf,
    mut events: mpsc::Receiver<AgentEvent>,
    mut gate: watch::Receiver<bool>,
) {
    let mut batch = Vec::with_capacity(EVENT_BATCH);
    while events.recv_many(&mut batch, EVENT_BATCH).await > 0 {
        // Closed only if the attempt's task is gone; then write what there is.
        let _ = gate.wait_for(|open| *open).await;
        let mut stamped = Vec::with_capacity(batch.len());
        for event in batch.drain(..) {
            let event = match event {
                AgentEvent::ArtifactReported { path } => match artifact(&workdir, &path).await {
                    Ok(created) => created,
                    Err(why) => AgentEvent::Output {
                        stream: crate::events::OutputStream::Stderr,
                        step: String::new(),
                        text: truncate(
                            format!("artifact {path} not recorded: {why}"),
                            MAX_TEXT_BYTES,
                        ),
                        lines: 1,
                        partial: false,
                        dropped_lines: 0,
                        dropped_bytes: 0,
                    },
                },
                other => other,
            };
            stamped.push((unix_ms(), event));
        }
        let write = [AttemptEvents {
            job: d.job_id.clone(),
            agent: d.agent_id.clone(),
            events: stamped,
        }];
        match store.append_events(&write).await {
            Ok(live) if live.first() == Some(&false) => {
                tracing::warn!(agent = %d.agent_id, "events of an attempt that is no longer live were dropped");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(agent = %d.agent_id, error = %e, "cannot write agent events; dropping this batch");
            }
        }
    }
}

/// The artifact an agent reported at `path` (relative to its working directory): its
/// digest and size, if it is a regular file inside the working directory.
async fn artifact(workdir: &Path, path: &str) -> Result<AgentEvent, String> {
    let root = tokio::fs::canonicalize(workdir)
        .await
        .map_err(|e| format!("working directory: {e}"))?;
    let file = tokio::fs::canonicalize(root.join(path))
        .await
        .map_err(|e| e.to_string())?;
    // A symlink must not lead the spoke to read (and reveal digests of) files elsewhere.
    if !file.starts_with(&root) {
        return Err("it resolves outside the working directory".into());
    }
    let meta = tokio::fs::metadata(&file)
        .await
        .map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    if meta.len() > MAX_ARTIFACT_BYTES {
        return Err(format!("larger than {MAX_ARTIFACT_BYTES} bytes"));
    }
    let digest = tokio::task::spawn_blocking(move || -> std::io::Result<(String, u64)> {
        use sha2::Digest as _;
        let mut f = std::fs::File::open(&file)?;
        let mut h = sha2::Sha256::new();
        let n = std::io::copy(&mut f, &mut h)?;
        Ok((hex::encode(h.finalize()), n))
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    Ok(AgentEvent::ArtifactCreated {
        path: path.to_owned(),
        digest: format!("sha256:{}", digest.0),
        size_bytes: digest.1,
    })
}

fn exited(
    status: std::io::Result<std::process::ExitStatus>,
    output_tail: String,
    format: Format,
    result: Option<ClaudeResult>,
) -> Ended {
    let status = match status {
        Ok(s) => s,
        Err(e) => return Ended::failed(format!("cannot wait for the attempt: {e}")),
    };
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    let (outcome, error) = match (status.code(), signal) {
        (Some(0), _) => (Outcome::Completed, String::new()),
        (Some(code), _) => (Outcome::Failed, format!("exited with code {code}")),
        (None, Some(sig)) => (Outcome::Failed, format!("terminated by signal {sig}")),
        (None, None) => (Outcome::Failed, "ended without an exit status".into()),
    };
    // A Claude Code run is judged by its result line, not its exit status alone.
    let (outcome, error) = match (format, result) {
        (Format::Plain, _) => (outcome, error),
        (Format::ClaudeStreamJson, None) => (
            Outcome::Failed,
            if error.is_empty() {
                "claude exited without a result line".to_owned()
            } else {
                format!("claude exited without a result line ({error})")
            },
        ),
        (Format::ClaudeStreamJson, Some(r)) if r.succeeded() => (Outcome::Completed, String::new()),
        (Format::ClaudeStreamJson, Some(r)) => (
            Outcome::Failed,
            truncate(
                format!("claude reported an error ({}): {}", r.subtype, r.text),
                MAX_TEXT_BYTES,
            ),
        ),
    };
    Ended {
        outcome,
        exit_code: status.code(),
        signal,
        error,
        output_tail,
        started: None,
    }
}

/// Signals every process in the group; a group that is already gone is not an error.
pub(crate) fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(?group, ?signal, error = %e, "cannot signal process group"),
    }
}

/// A process's start time (clock ticks since boot, `/proc/<pid>/stat` field 22): with the pid,
/// it identifies one process even after the pid is reused.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may contain anything; count after it.
    let (_, rest) = stat.rsplit_once(") ")?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Whether `pid` is a live (not zombie) process that started at `start` (see
/// [`process_start_time`]).
pub fn is_same_live_process(pid: u32, start: u64) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let Some((_, rest)) = stat.rsplit_once(") ") else {
        return false;
    };
    let mut fields = rest.split_whitespace();
    let state = fields.next().unwrap_or("");
    let started = fields.nth(18).and_then(|s| s.parse::<u64>().ok());
    state != "Z" && started == Some(start)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_this_process_by_pid_and_start_time() {
        let me = std::process::id();
        let start = process_start_time(me).expect("own /proc entry");
        assert!(is_same_live_process(me, start));
        assert!(
            !is_same_live_process(me, start + 1),
            "a different start time is another process"
        );
        assert!(!is_same_live_process(u32::MAX - 1, start));
    }

    #[test]
    fn random_units_are_in_range() {
        for _ in 0..1000 {
            let u = unit_random();
            assert!((0.0..1.0).contains(&u));
        }
    }
}
