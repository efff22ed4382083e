//! The hub's upstream: one task per spoke that follows the spoke's event stream into the
//! hub's log, and what the hub knows of each spoke's health.
//!
//! Each task resumes from the cursor stored with the log (so a hub restart continues where it
//! stopped), appends what arrives in batches together with the new cursor and the jobs'
//! snapshots (`store::HubStore::append`), and reconnects with capped, jittered backoff when
//! the spoke is unreachable, which its health shows. A spoke that says the hub's cursor is
//! older than what it retains gets a gap recorded in the log, so watchers are told to
//! resynchronise, and is then read from its oldest event. This module never serves clients.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use mosaic_shared::ids::SpokeId;
use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::pb::federation::v1::federation_client::FederationClient;
use mosaic_shared::time::unix_ms;
use mosaic_shared::tls::{self, DialOptions, Role, SpiffeId};
use tokio::sync::watch;

use crate::config::SpokeEntry;
use crate::store::{HubStore, StoreError};

/// Most events appended in one call.
const BATCH: usize = 512;
const BACKOFF_FIRST: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the hub knows of one spoke's event upstream.
#[derive(Debug, Clone, Default)]
pub struct SpokeHealth {
    /// The event stream is open.
    pub connected: bool,
    /// When the stream last delivered events or was opened (unix ms).
    pub last_seen_ms: Option<i64>,
    /// Why the last attempt failed, while not connected.
    pub error: String,
    /// Events appended to the log since the hub started.
    pub events: u64,
    /// How old the last event was when it reached the log (ms): the upstream's lag.
    pub lag_ms: i64,
}

/// Health of every spoke's upstream, shared with the admin API.
#[derive(Clone, Default)]
pub struct Health {
    spokes: Arc<RwLock<BTreeMap<SpokeId, SpokeHealth>>>,
    /// The same, for the metrics (`mosaic_hub_upstream_*`).
    pub metrics: crate::metrics::UpstreamMetrics,
}

impl Health {
    pub fn get(&self, spoke: &SpokeId) -> SpokeHealth {
        self.spokes
            .read()
            .expect("health lock poisoned")
            .get(spoke)
            .cloned()
            .unwrap_or_default()
    }

    fn update(&self, spoke: &SpokeId, f: impl FnOnce(&mut SpokeHealth)) {
        // Held only to change one entry; never across an await.
        let mut map = self.spokes.write().expect("health lock poisoned");
        let h = map.entry(spoke.clone()).or_default();
        let events_before = h.events;
        f(h);
        let label = crate::metrics::SpokeLabel {
            spoke: spoke.to_string(),
        };
        let m = &self.metrics;
        m.connected
            .get_or_create(&label)
            .set(i64::from(h.connected));
        m.lag_seconds
            .get_or_create(&label)
            .set(h.lag_ms as f64 / 1000.0);
        m.events
            .get_or_create(&label)
            .inc_by(h.events.saturating_sub(events_before));
    }
}

/// Why one session with a spoke ended.
enum Ended {
    Shutdown,
    /// Reconnect at once (the stream ended cleanly, or the cursor moved under us).
    Again,
    /// The spoke is shutting down (a drain or a rolling restart): follow it again once it is
    /// back, without calling it a failure.
    SpokeStopping,
    Failed(String),
}

/// Follows `spoke`'s events into the log until `shutdown` turns true.
pub async fn follow(
    spoke: SpokeEntry,
    live: crate::reload::Live,
    store: HubStore,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut backoff = BACKOFF_FIRST;
    loop {
        let ended = tokio::select! {
            ended = session(&spoke, &live, &store, &health) => ended,
            _ = shutdown.wait_for(|s| *s) => Ended::Shutdown,
        };
        match ended {
            Ended::Shutdown => return,
            Ended::Again => {
                backoff = BACKOFF_FIRST;
                health.update(&spoke.id, |h| h.connected = false);
            }
            Ended::SpokeStopping => {
                tracing::info!(spoke = %spoke.id, "the spoke is shutting down; following it again once it is back");
                health.update(&spoke.id, |h| {
                    h.connected = false;
                    h.error = "the spoke is shutting down".into();
                });
                backoff = BACKOFF_FIRST;
                tokio::select! {
                    () = tokio::time::sleep(BACKOFF_FIRST) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
            }
            Ended::Failed(error) => {
                tracing::warn!(spoke = %spoke.id, %error, retry_in = ?backoff, "event upstream down");
                health.update(&spoke.id, |h| {
                    h.connected = false;
                    h.error = error;
                });
                let jittered = backoff.mul_f64(0.5 + crate::jitter() / 2.0);
                tokio::select! {
                    () = tokio::time::sleep(jittered) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}

async fn session(
    spoke: &SpokeEntry,
    live: &crate::reload::Live,
    store: &HubStore,
    health: &Health,
) -> Ended {
    // Each session dials with the TLS material in force (rotation: `crate::reload`).
    let config = live.current();
    let failed = |what: &str, e: &dyn std::fmt::Display| Ended::Failed(format!("{what}: {e}"));
    let mut cursor = match store.spoke_cursor(&spoke.id).await {
        Ok(c) => c,
        Err(e) => return failed("the hub's valkey", &e),
    };
    let channel = match tls::connect(
        &spoke.address,
        SpiffeId::new(&config.trust_domain, Role::Spoke, spoke.id.as_str()),
        &config.tls,
        DialOptions::default(),
    )
    .await
    {
        Ok(c) => c,
        Err(e) => return failed("cannot connect", &e),
    };
    let request = pb::EventsRequest {
        after: cursor.clone().unwrap_or_default(),
        ..Default::default()
    };
    let mut stream = match FederationClient::new(channel).events(request).await {
        Ok(r) => r.into_inner(),
        Err(status) => return refused(spoke, store, cursor.as_deref(), status).await,
    };
    tracing::info!(spoke = %spoke.id, after = cursor.as_deref().unwrap_or(""), "event upstream connected");
    health.update(&spoke.id, |h| {
        h.connected = true;
        h.error.clear();
        h.last_seen_ms = Some(unix_ms());
    });
    loop {
        let mut batch = match stream.message().await {
            Ok(Some(e)) => vec![e],
            Ok(None) => return Ended::Again,
            Err(status) => return refused(spoke, store, cursor.as_deref(), status).await,
        };
        // Whatever else has already arrived joins the batch; a zero timeout polls once.
        while batch.len() < BATCH {
            match tokio::time::timeout(Duration::ZERO, stream.message()).await {
                Ok(Ok(Some(e))) => batch.push(e),
                _ => break,
            }
        }
        match append(store, &spoke.id, cursor.as_deref(), &batch).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(spoke = %spoke.id, "upstream cursor moved by someone else; resuming from the stored one");
                return Ended::Again;
            }
            Err(e) => return failed("the hub's valkey", &e),
        }
        let last = batch.last().expect("a batch is never empty");
        cursor = Some(last.cursor.clone());
        let now = unix_ms();
        health.update(&spoke.id, |h| {
            h.last_seen_ms = Some(now);
            h.events += batch.len() as u64;
            h.lag_ms = now - last.at_ms;
        });
    }
}

/// Handles a refusal from the spoke: a cursor it no longer retains becomes a gap in the log
/// (watchers resynchronise) and a fresh start; anything else is a failure to retry.
async fn refused(
    spoke: &SpokeEntry,
    store: &HubStore,
    cursor: Option<&str>,
    status: tonic::Status,
) -> Ended {
    let reason = status
        .metadata()
        .get("x-mosaic-reason")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if reason == "resync_required" {
        tracing::warn!(spoke = %spoke.id, cursor, "the spoke no longer has the events after the hub's cursor; recording a gap and starting over");
        return match store.record_gap(&spoke.id, cursor).await {
            Ok(_) => Ended::Again,
            Err(e) => Ended::Failed(format!("the hub's valkey: {e}")),
        };
    }
    if reason == "shutting_down" {
        return Ended::SpokeStopping;
    }
    Ended::Failed(format!(
        "event stream: {} ({:?})",
        status.message(),
        status.code()
    ))
}

/// Appends a batch with the snapshots of its jobs after it.
async fn append(
    store: &HubStore,
    spoke: &SpokeId,
    cursor: Option<&str>,
    batch: &[pb::Event],
) -> Result<bool, StoreError> {
    let jobs: Vec<&str> = {
        let mut seen: Vec<&str> = batch.iter().map(|e| e.job_id.as_str()).collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    };
    let mut snaps: HashMap<String, admin::JobSnapshot> = store.snapshots(&jobs).await?;
    let mut finished: HashMap<String, Option<i64>> = HashMap::new();
    for e in batch {
        let snap = snaps.entry(e.job_id.clone()).or_default();
        finished.insert(e.job_id.clone(), apply(snap, e));
    }
    let snaps: Vec<(admin::JobSnapshot, Option<i64>)> = snaps
        .into_iter()
        .map(|(job, s)| {
            let f = finished.get(&job).copied().flatten();
            (s, f)
        })
        .collect();
    store.append(spoke, cursor, batch, &snaps).await
}

/// Moves a job's snapshot on by one of its events; returns when the job finished, if it is
/// now in a terminal state.
pub fn apply(snap: &mut admin::JobSnapshot, e: &pb::Event) -> Option<i64> {
    use pb::event::Payload;
    snap.spoke_id.clone_from(&e.spoke_id);
    snap.workspace.clone_from(&e.workspace);
    snap.job_id.clone_from(&e.job_id);
    snap.seq = e.seq;
    snap.at_ms = e.at_ms;
    match &e.payload {
        Some(Payload::Job(j)) => {
            snap.state = j.state;
            if !j.error.is_empty() || j.state() == pb::JobState::Completed {
                snap.error.clone_from(&j.error);
            }
        }
        Some(Payload::Agent(a)) => {
            snap.agent_id.clone_from(&e.agent_id);
            snap.agent_state = a.state;
            if a.state() == pb::AgentState::Spawning {
                snap.progress = 0;
            }
            // The spoke moves the job to executing when its attempt runs; no job event says so.
            if a.state() == pb::AgentState::Running && snap.state() == pb::JobState::Assigned {
                snap.state = pb::JobState::Executing as i32;
            }
        }
        Some(Payload::Progress(p)) if e.r#type() == pb::EventType::JobProgress => {
            snap.progress = p.percent;
        }
        _ => {}
    }
    matches!(
        snap.state(),
        pb::JobState::Completed | pb::JobState::Failed | pb::JobState::Cancelled
    )
    .then_some(e.at_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::event::Payload;

    fn event(t: pb::EventType, seq: u64, payload: Payload) -> pb::Event {
        pb::Event {
            spoke_id: "s".into(),
            workspace: "w".into(),
            job_id: "j".into(),
            agent_id: "j.1".into(),
            seq,
            at_ms: seq as i64 * 10,
            r#type: t.into(),
            payload: Some(payload),
            ..Default::default()
        }
    }

    fn job(state: pb::JobState, error: &str) -> Payload {
        Payload::Job(pb::JobChange {
            state: state.into(),
            error: error.into(),
            ..Default::default()
        })
    }

    #[test]
    fn snapshots_follow_a_jobs_events() {
        use pb::EventType as T;
        let mut s = admin::JobSnapshot::default();
        assert_eq!(
            apply(
                &mut s,
                &event(T::JobCreated, 1, job(pb::JobState::Pending, ""))
            ),
            None
        );
        assert_eq!(s.state(), pb::JobState::Pending);
        apply(
            &mut s,
            &event(T::JobStarted, 2, job(pb::JobState::Assigned, "")),
        );
        apply(
            &mut s,
            &event(
                T::AgentRunning,
                2,
                Payload::Agent(pb::AgentChange {
                    state: pb::AgentState::Running.into(),
                    ..Default::default()
                }),
            ),
        );
        assert_eq!(
            (s.agent_id.as_str(), s.agent_state()),
            ("j.1", pb::AgentState::Running)
        );
        // A running attempt means an executing job, as on the spoke.
        assert_eq!(s.state(), pb::JobState::Executing);
        apply(
            &mut s,
            &event(
                T::JobProgress,
                3,
                Payload::Progress(pb::Progress {
                    percent: 40,
                    ..Default::default()
                }),
            ),
        );
        assert_eq!(s.progress, 40);
        // A step's progress is not the job's.
        let mut step = event(
            T::StepProgress,
            4,
            Payload::Progress(pb::Progress {
                percent: 90,
                step: "build".into(),
                ..Default::default()
            }),
        );
        apply(&mut s, &step);
        assert_eq!(s.progress, 40);
        step.seq = 5;
        apply(
            &mut s,
            &event(
                T::JobStatus,
                5,
                job(pb::JobState::Delayed, "exited with code 1"),
            ),
        );
        assert_eq!(s.error, "exited with code 1");
        let done = apply(
            &mut s,
            &event(
                T::JobFailed,
                6,
                job(pb::JobState::Failed, "exited with code 1"),
            ),
        );
        assert_eq!(done, Some(60));
        assert_eq!((s.seq, s.at_ms), (6, 60));
    }
}
