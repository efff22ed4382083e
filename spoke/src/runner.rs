//! Runs agents as supervised child processes and records how they end.
//!
//! A launch starts the plan's program directly (never through a shell) in its own process
//! group, with a cleared environment plus the plan's variables, stdin closed and stdout/stderr
//! captured into a bounded tail. One task per agent owns its process: it records `running`,
//! waits for exit or a kill request, and records the terminal state through `store`'s
//! transition scripts. A kill sends SIGTERM to the whole group, then SIGKILL after the
//! profile's grace; when the leader has exited, the group is SIGKILLed so no child outlives
//! its agent. This module never decides whether a spawn is allowed (that is `profile`).

use std::collections::{HashMap, VecDeque};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use mosaic_shared::ids::AgentId;
use mosaic_shared::time::unix_ms;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::watch;

use crate::lifecycle::AgentState;
use crate::profile::LaunchPlan;
use crate::store::{Store, Transition, Transitioned};

/// How many bytes of combined stdout/stderr an agent's record keeps.
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// Why an agent is being killed; recorded as its error.
pub type KillReason = String;

struct Handle {
    kill: watch::Sender<Option<KillReason>>,
    done: watch::Receiver<bool>,
}

/// Outcome of a kill request.
#[derive(Debug, PartialEq, Eq)]
pub enum KillOutcome {
    /// The agent has reached a terminal state.
    Ended,
    /// No process of this spoke is supervising the agent (it already ended, or it belongs to an
    /// earlier run of the spoke).
    NotSupervised,
    /// The agent had not ended when the wait ran out.
    StillEnding,
}

/// The agents this spoke process is supervising.
pub struct Supervisor {
    store: Store,
    /// Held only to insert, look up or remove a handle; never across an await.
    running: Mutex<HashMap<AgentId, Handle>>,
}

impl Supervisor {
    pub fn new(store: Store) -> Arc<Self> {
        Arc::new(Supervisor {
            store,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// Starts supervising an agent whose record exists in `spawning`.
    pub fn launch(self: &Arc<Self>, agent: AgentId, plan: LaunchPlan) {
        let (kill_tx, kill_rx) = watch::channel(None);
        let (done_tx, done_rx) = watch::channel(false);
        self.running
            .lock()
            .expect("supervisor map poisoned")
            .insert(
                agent.clone(),
                Handle {
                    kill: kill_tx,
                    done: done_rx,
                },
            );
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = run(&plan, &agent, &this.store, kill_rx).await;
            this.record(&agent, outcome).await;
            this.running
                .lock()
                .expect("supervisor map poisoned")
                .remove(&agent);
            let _ = done_tx.send(true);
        });
    }

    /// Asks the agent's supervisor to kill it and waits up to `wait` for it to end.
    pub async fn kill(&self, agent: &AgentId, reason: &str, wait: Duration) -> KillOutcome {
        let done = {
            let running = self.running.lock().expect("supervisor map poisoned");
            let Some(h) = running.get(agent) else {
                return KillOutcome::NotSupervised;
            };
            // Only the first reason counts; a second kill does not restart the grace period.
            h.kill.send_if_modified(|r| {
                if r.is_none() {
                    *r = Some(reason.to_owned());
                    true
                } else {
                    false
                }
            });
            h.done.clone()
        };
        wait_done(done, wait).await
    }

    /// Kills every supervised agent (SIGTERM, then SIGKILL after its grace) and waits for all of
    /// them to be recorded, so that nothing outlives the spoke.
    pub async fn shutdown(&self, reason: &str, wait: Duration) {
        let dones: Vec<_> = {
            let running = self.running.lock().expect("supervisor map poisoned");
            running
                .values()
                .map(|h| {
                    let _ = h.kill.send(Some(reason.to_owned()));
                    h.done.clone()
                })
                .collect()
        };
        for done in dones {
            wait_done(done, wait).await;
        }
    }

    async fn record(&self, agent: &AgentId, outcome: Outcome) {
        let t = Transition::finished(
            outcome.state,
            unix_ms(),
            outcome.exit_code,
            outcome.signal,
            &outcome.error,
            &outcome.output_tail,
        );
        // Valkey may be restarting; the connection manager reconnects, so retry for a while
        // rather than leave the agent looking alive.
        for attempt in 0..20u32 {
            match self.store.transition(agent, &t).await {
                Ok(Transitioned::Applied { .. }) => {
                    tracing::info!(%agent, state = %outcome.state, error = %outcome.error, "agent ended");
                    return;
                }
                Ok(Transitioned::Refused { current }) => {
                    tracing::warn!(%agent, %current, wanted = %outcome.state, "terminal transition refused");
                    return;
                }
                Err(e) => {
                    tracing::warn!(%agent, attempt, error = %e, "cannot record agent end; retrying");
                    tokio::time::sleep(Duration::from_millis(250 * u64::from(attempt + 1))).await;
                }
            }
        }
        tracing::error!(%agent, "gave up recording agent end");
    }
}

async fn wait_done(mut done: watch::Receiver<bool>, wait: Duration) -> KillOutcome {
    match tokio::time::timeout(wait, done.wait_for(|d| *d)).await {
        // A dropped sender also means the task has finished.
        Ok(_) => KillOutcome::Ended,
        Err(_) => KillOutcome::StillEnding,
    }
}

/// How an agent ended, ready to record.
#[derive(Debug)]
struct Outcome {
    state: AgentState,
    exit_code: Option<i32>,
    signal: Option<i32>,
    error: String,
    output_tail: String,
}

impl Outcome {
    fn failed(error: String) -> Self {
        Outcome {
            state: AgentState::Failed,
            exit_code: None,
            signal: None,
            error,
            output_tail: String::new(),
        }
    }
}

async fn run(
    plan: &LaunchPlan,
    agent: &AgentId,
    store: &Store,
    mut kill: watch::Receiver<Option<KillReason>>,
) -> Outcome {
    if let Some(reason) = kill.borrow().clone() {
        return Outcome {
            state: AgentState::Killed,
            ..Outcome::failed(reason)
        };
    }
    if let Err(e) = tokio::fs::create_dir_all(&plan.workdir).await {
        return Outcome::failed(format!(
            "cannot create working directory {}: {e}",
            plan.workdir.display()
        ));
    }
    let program = &plan.profile.program;
    let mut child = match tokio::process::Command::new(program)
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
    {
        Ok(child) => child,
        Err(e) => {
            return Outcome::failed(format!("cannot start {}: {e}", program.display()));
        }
    };
    let pid = child.id().expect("a just-spawned child has a pid");
    // process_group(0) makes the child the leader of a group whose id is its pid.
    let group = Pid::from_raw(pid as i32);
    tracing::info!(%agent, pid, program = %program.display(), "agent started");

    let tail = Arc::new(Mutex::new(Tail::default()));
    let readers = [
        child.stdout.take().map(|s| spawn_reader(s, tail.clone())),
        child.stderr.take().map(|s| spawn_reader(s, tail.clone())),
    ];

    match store
        .transition(agent, &Transition::running(unix_ms(), pid))
        .await
    {
        Ok(Transitioned::Applied { .. }) => {}
        other => {
            // We cannot record that it runs, so it must not run.
            signal_group(group, Signal::SIGKILL);
            let _ = child.wait().await;
            return Outcome::failed(format!("cannot record agent as running: {other:?}"));
        }
    }

    let kill_reason = tokio::select! {
        status = child.wait() => {
            signal_group(group, Signal::SIGKILL);
            let tail = collect_tail(readers, &tail).await;
            return exited(status, tail);
        }
        // Clone inside the future: a watch guard must not live across the select's awaits.
        reason = async { kill.wait_for(Option::is_some).await.map(|r| r.clone().unwrap_or_default()) } => reason,
    };
    let reason = kill_reason.unwrap_or_else(|_| "supervisor stopped".to_owned());
    tracing::info!(%agent, pid, %reason, "killing agent's process group");
    signal_group(group, Signal::SIGTERM);
    let status = match tokio::time::timeout(plan.profile.kill_grace, child.wait()).await {
        Ok(status) => status,
        Err(_) => {
            tracing::info!(%agent, pid, grace = ?plan.profile.kill_grace, "grace expired; SIGKILL");
            signal_group(group, Signal::SIGKILL);
            child.wait().await
        }
    };
    signal_group(group, Signal::SIGKILL);
    let output_tail = collect_tail(readers, &tail).await;
    let status = status.ok();
    let signal = status.and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
    let exit_code = status.and_then(|s| s.code());
    Outcome {
        state: AgentState::Killed,
        exit_code,
        signal,
        error: reason,
        output_tail,
    }
}

fn exited(status: std::io::Result<std::process::ExitStatus>, output_tail: String) -> Outcome {
    let status = match status {
        Ok(s) => s,
        Err(e) => return Outcome::failed(format!("cannot wait for agent: {e}")),
    };
    let signal = std::os::unix::process::ExitStatusExt::signal(&status);
    let (state, error) = match (status.code(), signal) {
        (Some(0), _) => (AgentState::Completed, String::new()),
        (Some(code), _) => (AgentState::Failed, format!("exited with code {code}")),
        (None, Some(sig)) => (AgentState::Failed, format!("terminated by signal {sig}")),
        (None, None) => (AgentState::Failed, "ended without an exit status".into()),
    };
    Outcome {
        state,
        exit_code: status.code(),
        signal,
        error,
        output_tail,
    }
}

/// Signals every process in the group; a group that is already gone is not an error.
fn signal_group(group: Pid, signal: Signal) {
    match killpg(group, signal) {
        Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
        Err(e) => tracing::warn!(?group, ?signal, error = %e, "cannot signal process group"),
    }
}

/// The last [`OUTPUT_TAIL_BYTES`] of what an agent wrote.
#[derive(Default)]
struct Tail(VecDeque<u8>);

impl Tail {
    fn push(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(OUTPUT_TAIL_BYTES);
        self.0.extend(&bytes[bytes.len() - keep..]);
        let excess = self.0.len().saturating_sub(OUTPUT_TAIL_BYTES);
        self.0.drain(..excess);
    }
}

fn spawn_reader(
    mut stream: impl AsyncRead + Unpin + Send + 'static,
    tail: Arc<Mutex<Tail>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 8192];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
            tail.lock().expect("tail poisoned").push(&buf[..n]);
        }
    })
}

async fn collect_tail(
    readers: [Option<tokio::task::JoinHandle<()>>; 2],
    tail: &Mutex<Tail>,
) -> String {
    for r in readers.into_iter().flatten() {
        // The group was SIGKILLed, so the pipes close promptly; bound the wait regardless.
        let _ = tokio::time::timeout(Duration::from_secs(2), r).await;
    }
    let bytes: Vec<u8> = tail
        .lock()
        .expect("tail poisoned")
        .0
        .iter()
        .copied()
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(&vec![b'a'; OUTPUT_TAIL_BYTES - 1]);
        t.push(b"xyz");
        assert_eq!(t.0.len(), OUTPUT_TAIL_BYTES);
        assert!(t.0.iter().rev().take(3).eq(b"zyx".iter()));
        t.push(&vec![b'b'; OUTPUT_TAIL_BYTES * 3]);
        assert!(t.0.iter().all(|&b| b == b'b'));
    }
}
