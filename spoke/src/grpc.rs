//! The spoke's `mosaic.federation.v1.Federation` service.
//!
//! `Execute` runs the verification chain (`verify`), then the replay defence (`store`), then the
//! command: spawn (`profile` → `store` → `runner`), status, or kill. A command runs in its own
//! task, so a caller that hangs up or times out cannot cancel it between its claim and its
//! receipt; a retry then finds the receipt. Every refusal becomes a [`tonic::Status`] here, in
//! one mapping, with a stable reason code in the `x-mosaic-reason` metadata; internal errors are
//! logged and answered with fixed text.

use std::sync::Arc;
use std::time::Duration;

use mosaic_shared::ids::{AgentId, CommandId, JobId, WorkspaceId};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::{Domain, KeyPair};
use mosaic_shared::time::unix_ms;
use prost::Message as _;
use rustls::pki_types::CertificateDer;
use tokio::sync::{Notify, watch};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;

use crate::command::Action;
use crate::config::SpokeConfig;
use crate::events::{Cursor, Filter};
use crate::job::JobState;
use crate::metrics::SpokeMetrics;
use crate::profile::{self, PlanError};
use crate::runner::{KillOutcome, Stop, Supervisor};
use crate::store::{
    AgentRecord, Claim, Guarded, JobRecord, NewJob, Store, StoreError, TraceContext,
};
use crate::verify::{SharedVerifier, VerifiedCommand, VerifyError};

/// Metadata key carrying the machine-readable reason of a refusal.
pub const REASON_KEY: &str = "x-mosaic-reason";

/// Most event streams served at once (each holds a Valkey connection of its own).
const MAX_EVENT_STREAMS: usize = 64;
/// How long one blocking read of the event stream waits before checking for a departed
/// caller and retention again.
const EVENTS_POLL: Duration = Duration::from_secs(5);

/// Longest a kill waits for its agent to end before answering with the state at that moment
/// (the kill itself carries on). Below the hub's default request timeout of 30 s.
const KILL_ANSWER_WITHIN: Duration = Duration::from_secs(25);

/// Everything that can stop a command, mapped to a status in [`Refusal::into_status`].
#[derive(Debug, thiserror::Error)]
enum Refusal {
    #[error(transparent)]
    Verify(#[from] VerifyError),
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error("job or agent {0} not found")]
    NotFound(String),
    #[error("job {0} is {1}, not waiting in the queue; kill it instead")]
    NotQueued(JobId, String),
    #[error("command {0} is still being executed; retry later")]
    InFlight(CommandId),
    #[error(
        "attempt {0} belongs to an earlier run of this spoke; it is recovered when its lease runs out"
    )]
    NotSupervised(AgentId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("command task failed: {0}")]
    Task(String),
    #[error(
        "spoke {0} is draining before it stops and takes no new spawns; send the spawn to another spoke, or retry once it is back"
    )]
    Draining(String),
}

impl Refusal {
    /// The stable reason code (`x-mosaic-reason`, and the metrics' outcome label).
    fn reason(&self) -> &'static str {
        match self {
            Refusal::Verify(e) => e.reason(),
            Refusal::Plan(e) => e.reason(),
            Refusal::NotFound(_) => "not_found",
            Refusal::NotQueued(..) => "job_not_queued",
            Refusal::InFlight(_) => "command_in_flight",
            Refusal::NotSupervised(_) => "agent_not_supervised",
            Refusal::Store(_) => "store_unavailable",
            Refusal::Task(_) => "internal",
            Refusal::Draining(_) => "draining",
        }
    }

    fn into_status(self) -> Status {
        let reason = self.reason();
        let code = match &self {
            Refusal::Verify(e) => e.code(),
            Refusal::Plan(_) => Code::InvalidArgument,
            Refusal::NotFound(_) => Code::NotFound,
            Refusal::NotQueued(..) | Refusal::NotSupervised(_) => Code::FailedPrecondition,
            Refusal::InFlight(_) => Code::Aborted,
            Refusal::Draining(_) => Code::Unavailable,
            // Internal failures: logged in full, answered with fixed text.
            Refusal::Store(e) => {
                tracing::error!(error = %e, "state store failure");
                return status(
                    Code::Unavailable,
                    "the spoke's state store is unavailable; retry later",
                    "store_unavailable",
                );
            }
            Refusal::Task(e) => {
                tracing::error!(error = %e, "command task failed");
                return status(
                    Code::Internal,
                    "the command failed inside the spoke",
                    "internal",
                );
            }
        };
        status(code, &self.to_string(), reason)
    }
}

fn status(code: Code, message: &str, reason: &'static str) -> Status {
    let mut s = Status::new(code, message);
    s.metadata_mut()
        .insert(REASON_KEY, reason.parse().expect("reason codes are ascii"));
    s
}

/// The gRPC face of the spoke; its state is shared with each command's task.
pub struct FederationService {
    inner: Arc<Inner>,
}

struct Inner {
    config: Arc<SpokeConfig>,
    /// Replaced when the trusted hubs and keys are reloaded (`crate::reload`).
    verifier: SharedVerifier,
    store: Store,
    supervisor: Arc<Supervisor>,
    /// Wakes the scheduler when a job is queued or the queue resumes.
    wake: Arc<Notify>,
    receipt_key: Arc<KeyPair>,
    /// Bounds the event streams open at once.
    event_streams: Arc<tokio::sync::Semaphore>,
    metrics: SpokeMetrics,
    lifecycle: watch::Receiver<Lifecycle>,
}

/// Where the spoke is in its life, as the service sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Lifecycle {
    Serving,
    /// Spawns are refused; running agents finish; status, kill and event streams go on.
    Draining,
    /// The agents are gone and their records written: event streams send what is left and
    /// end, telling the hub to reconnect.
    Stopping,
}

impl FederationService {
    pub fn new(
        config: Arc<SpokeConfig>,
        store: Store,
        supervisor: Arc<Supervisor>,
        wake: Arc<Notify>,
        metrics: SpokeMetrics,
        lifecycle: watch::Receiver<Lifecycle>,
        verifier: SharedVerifier,
    ) -> Self {
        FederationService {
            inner: Arc::new(Inner {
                receipt_key: config.receipt_key.clone(),
                config,
                verifier,
                store,
                supervisor,
                wake,
                event_streams: Arc::new(tokio::sync::Semaphore::new(MAX_EVENT_STREAMS)),
                metrics,
                lifecycle,
            }),
        }
    }
}

impl Inner {
    /// The calling hub, for the calls that are not signed commands (events, info).
    fn peer_hub(
        &self,
        certs: Option<Arc<Vec<CertificateDer<'static>>>>,
    ) -> Result<mosaic_shared::ids::HubId, Status> {
        self.verifier
            .current()
            .peer_hub(certs.as_deref().map(|c| c.as_slice()))
            .map_err(|e| {
                self.metrics.verification_failed(e.reason());
                Refusal::from(e).into_status()
            })
    }

    async fn execute(
        &self,
        certs: Option<Arc<Vec<CertificateDer<'static>>>>,
        envelope: pb::SignedCommand,
    ) -> Result<Vec<u8>, Refusal> {
        let now = unix_ms();
        // The span joins the hub's trace before anything runs in it. The context is read from
        // the command bytes ahead of the signature check (verification is a child span); an
        // unverified command only ever names a parent, and its span records the refusal.
        let span = tracing::info_span!(
            "command",
            id = tracing::field::Empty,
            verb = tracing::field::Empty,
            hub = tracing::field::Empty,
            refused = tracing::field::Empty,
        );
        if let Ok(c) = <pb::Command as prost::Message>::decode(envelope.command.as_slice()) {
            mosaic_shared::telemetry::follow(&span, &c.traceparent, &c.tracestate);
        }
        let verifier = self.verifier.current();
        let verified = span.in_scope(|| {
            tracing::info_span!("verify").in_scope(|| {
                verifier
                    .peer_hub(certs.as_deref().map(|c| c.as_slice()))
                    .and_then(|hub| Ok((verifier.verify(&hub, &envelope, now)?, hub)))
            })
        });
        let (cmd, hub) = match verified {
            Ok(v) => v,
            Err(e) => {
                span.record("refused", e.reason());
                self.metrics.verification_failed(e.reason());
                return Err(e.into());
            }
        };
        let verb = cmd.action.verb();
        span.record("id", tracing::field::display(&cmd.command_id));
        span.record("verb", verb);
        span.record("hub", tracing::field::display(&hub));
        let result = self.run_verified(cmd, now).instrument(span).await;
        self.metrics.command(
            verb,
            match &result {
                Ok(_) => "ok",
                Err(r) => r.reason(),
            },
        );
        result
    }

    /// The replay defence, then the command; a refused command gives its id back.
    async fn run_verified(&self, cmd: VerifiedCommand, now: i64) -> Result<Vec<u8>, Refusal> {
        let ttl = self.verifier.current().replay_ttl(cmd.expires_at_ms, now);
        let token = match self
            .store
            .claim_command(&cmd.hub_id, &cmd.command_id, ttl)
            .await?
        {
            Claim::Done(receipt) => {
                tracing::info!("replayed command; returning the original receipt");
                return Ok(receipt);
            }
            Claim::InFlight => return Err(Refusal::InFlight(cmd.command_id)),
            Claim::New(token) => token,
        };
        match self.perform(&cmd).await {
            Ok(result) => {
                let receipt = self.seal(&cmd, result);
                self.store
                    .save_receipt(&cmd.hub_id, &cmd.command_id, &receipt)
                    .await?;
                Ok(receipt)
            }
            Err(refusal) => {
                // Nothing was done, so the id stays free for a corrected retry.
                if let Err(e) = self
                    .store
                    .release_command(&cmd.hub_id, &cmd.command_id, &token)
                    .await
                {
                    tracing::warn!(error = %e, "cannot release refused command id");
                }
                Err(refusal)
            }
        }
    }

    /// Executes a verified, newly claimed command; returns what the receipt reports.
    async fn perform(&self, cmd: &VerifiedCommand) -> Result<pb::receipt::Result, Refusal> {
        let job = pb::receipt::Result::Job;
        match &cmd.action {
            Action::Spawn(req) => {
                if *self.lifecycle.borrow() != Lifecycle::Serving {
                    return Err(Refusal::Draining(self.config.spoke_id.to_string()));
                }
                // Checked now so that a bad spawn is refused, not queued to fail later.
                profile::plan(&self.config.profiles, &req.profile, &req.spec)?;
                let now = unix_ms();
                let (traceparent, tracestate) =
                    mosaic_shared::telemetry::traceparent(&tracing::Span::current());
                let new = NewJob {
                    trace: TraceContext {
                        traceparent,
                        tracestate,
                    },
                    job_id: JobId::for_command(&cmd.hub_id, &cmd.command_id),
                    workspace: req.workspace.clone(),
                    profile: req.profile.clone(),
                    command_id: cmd.command_id.clone(),
                    spec: serde_json::to_string(&req.spec).expect("a job spec always encodes"),
                    options: req.options.resolve(&self.config.queue, now),
                    created_at_ms: now,
                };
                let state = self
                    .store
                    .enqueue(&new, now)
                    .instrument(tracing::info_span!("enqueue", job = %new.job_id))
                    .await?;
                self.wake.notify_one();
                tracing::info!(job = %new.job_id, profile = %new.profile, %state, "job queued");
                Ok(job(self.job_status(&new.job_id).await?))
            }
            Action::Status(id) => {
                let (rec, attempts) = self.find(id).await?;
                Ok(job(self.to_pb(&rec, &attempts).await?))
            }
            Action::Kill(id) => {
                let (rec, attempts) = self.find(id).await?;
                let reason = format!("killed by hub {} (command {})", cmd.hub_id, cmd.command_id);
                self.cancel(&rec, &attempts, &reason).await?;
                Ok(job(self.job_status(&rec.job_id).await?))
            }
            Action::RemoveJob(id) => {
                let reason = format!("removed by hub {} (command {})", cmd.hub_id, cmd.command_id);
                match self.store.remove_job(id, unix_ms(), &reason).await? {
                    Guarded::Applied(_) => Ok(job(self.job_status(id).await?)),
                    Guarded::Refused(state) => Err(Refusal::NotQueued(id.clone(), state)),
                    Guarded::Missing => Err(Refusal::NotFound(id.to_string())),
                }
            }
            Action::QueueStats => Ok(pb::receipt::Result::Queue(
                self.store.queue_counts().await?.to_pb(),
            )),
            Action::PauseQueue | Action::ResumeQueue => {
                let pause = matches!(cmd.action, Action::PauseQueue);
                self.store.set_paused(pause).await?;
                tracing::info!(paused = pause, "queue dispatch changed");
                if !pause {
                    self.wake.notify_one();
                }
                Ok(pb::receipt::Result::Queue(
                    self.store.queue_counts().await?.to_pb(),
                ))
            }
        }
    }

    /// Cancels a job: a waiting one is removed; a running attempt is stopped (SIGTERM, then
    /// SIGKILL after the profile's grace) and its job ends cancelled.
    async fn cancel(
        &self,
        rec: &JobRecord,
        attempts: &[AgentRecord],
        reason: &str,
    ) -> Result<(), Refusal> {
        if rec.state.is_terminal() {
            return Ok(());
        }
        if rec.state.is_queued() {
            match self
                .store
                .remove_job(&rec.job_id, unix_ms(), reason)
                .await?
            {
                Guarded::Applied(_) => return Ok(()),
                // Dispatched in the meantime: stop the attempt instead.
                Guarded::Refused(_) => {}
                Guarded::Missing => return Err(Refusal::NotFound(rec.job_id.to_string())),
            }
        }
        let current = match self.store.job_with_attempts(&rec.job_id).await? {
            Some((_, now)) => now.into_iter().last(),
            None => attempts.last().cloned(),
        };
        let Some(agent) = current else {
            return Ok(());
        };
        let grace = self
            .config
            .profiles
            .get(&rec.profile)
            .map_or(Duration::from_secs(10), |p| p.kill_grace);
        let wait = (grace + Duration::from_secs(5)).min(KILL_ANSWER_WITHIN);
        // A just-dispatched attempt is registered with the supervisor a moment after the
        // dispatch script ran, so look again briefly before calling it someone else's.
        for _ in 0..5 {
            match self
                .supervisor
                .stop(&agent.agent_id, Stop::Requested(reason.to_owned()), wait)
                .await
            {
                KillOutcome::Ended | KillOutcome::StillEnding => return Ok(()),
                KillOutcome::NotSupervised => match self.store.job(&rec.job_id).await? {
                    // It ended between our read and the request.
                    Some(j) if !j.state.is_active() => return Ok(()),
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                },
            }
        }
        Err(Refusal::NotSupervised(agent.agent_id))
    }

    /// The job with this id, or the job of the attempt (agent) with this id.
    async fn find(&self, id: &str) -> Result<(JobRecord, Vec<AgentRecord>), Refusal> {
        let not_found = || Refusal::NotFound(id.to_owned());
        let job_id: JobId = id.parse().map_err(|_| not_found())?;
        if let Some(found) = self.store.job_with_attempts(&job_id).await? {
            return Ok(found);
        }
        let agent_id: AgentId = id.parse().map_err(|_| not_found())?;
        let Some(agent) = self.store.agent(&agent_id).await? else {
            return Err(not_found());
        };
        self.store
            .job_with_attempts(&agent.job_id)
            .await?
            .ok_or_else(not_found)
    }

    async fn job_status(&self, id: &JobId) -> Result<pb::JobStatus, Refusal> {
        let (rec, attempts) = self
            .store
            .job_with_attempts(id)
            .await?
            .ok_or_else(|| Refusal::NotFound(id.to_string()))?;
        self.to_pb(&rec, &attempts).await
    }

    async fn to_pb(
        &self,
        rec: &JobRecord,
        attempts: &[AgentRecord],
    ) -> Result<pb::JobStatus, Refusal> {
        let paused = rec.state == JobState::Pending && self.store.is_paused().await?;
        Ok(rec.to_pb(attempts, paused))
    }

    /// Encodes and signs the receipt; returns the encoded `SignedReceipt`.
    fn seal(&self, cmd: &VerifiedCommand, result: pb::receipt::Result) -> Vec<u8> {
        let receipt = pb::Receipt {
            command_id: cmd.command_id.to_string(),
            spoke_id: self.config.spoke_id.to_string(),
            hub_id: cmd.hub_id.to_string(),
            key_id: self.receipt_key.id().to_string(),
            executed_at_ms: unix_ms(),
            result: Some(result),
        }
        .encode_to_vec();
        pb::SignedReceipt {
            signature: self.receipt_key.sign(Domain::Receipt, &receipt),
            receipt,
            key_id: self.receipt_key.id().to_string(),
        }
        .encode_to_vec()
    }
}

/// An `EventsRequest` checked field by field.
struct EventsQuery {
    after: Option<Cursor>,
    filter: Filter,
}

impl TryFrom<pb::EventsRequest> for EventsQuery {
    type Error = Status;
    fn try_from(r: pb::EventsRequest) -> Result<Self, Status> {
        let invalid = |field: &str, e: String| {
            status(
                Code::InvalidArgument,
                &format!("events.{field}: {e}"),
                "invalid_request",
            )
        };
        let after = if r.after.is_empty() {
            None
        } else {
            Some(r.after.parse::<Cursor>().map_err(|e| invalid("after", e))?)
        };
        let workspace = (!r.workspace.is_empty())
            .then(|| r.workspace.parse::<WorkspaceId>())
            .transpose()
            .map_err(|e| invalid("workspace", e.to_string()))?;
        let job_id = (!r.job_id.is_empty())
            .then(|| r.job_id.parse::<JobId>())
            .transpose()
            .map_err(|e| invalid("job_id", e.to_string()))?;
        if r.types.len() > 64 {
            return Err(invalid("types", "at most 64 types".into()));
        }
        let types = r
            .types
            .iter()
            .map(|&t| match pb::EventType::try_from(t) {
                Ok(pb::EventType::Unspecified) | Err(_) => {
                    Err(invalid("types", format!("{t} is not an event type")))
                }
                Ok(t) => Ok(t),
            })
            .collect::<Result<_, _>>()?;
        Ok(EventsQuery {
            after,
            filter: Filter {
                workspace: workspace.map(|w| w.to_string()),
                job_id: job_id.map(|j| j.to_string()),
                types,
            },
        })
    }
}

/// Sends the stream's events after `query.after` that match its filter, stored then live,
/// until the caller leaves or retention overtakes it.
async fn feed_events(
    store: Store,
    spoke: String,
    query: EventsQuery,
    tx: tokio::sync::mpsc::Sender<Result<pb::Event, Status>>,
    mut lifecycle: watch::Receiver<Lifecycle>,
) {
    let unavailable = |e: StoreError| {
        tracing::warn!(error = %e, "event stream read failed");
        status(
            Code::Unavailable,
            "the spoke's event store is unavailable; resume from your cursor later",
            "store_unavailable",
        )
    };
    let mut reader = match store.event_reader().await {
        Ok(r) => r,
        Err(e) => {
            let _ = tx.send(Err(unavailable(e))).await;
            return;
        }
    };
    let filter = query.filter;
    let mut pos = query.after;
    loop {
        let (from, inclusive) = match pos {
            None => (None, false),
            // Inside an entry: read that entry again for its remaining events.
            Some(c) => (Some(c.id), c.sub.is_some()),
        };
        // Once the spoke is stopping, everything is written: read without waiting, and end
        // the stream when caught up.
        let stopping = *lifecycle.borrow() == Lifecycle::Stopping;
        let entries = if stopping {
            tokio::select! {
                read = reader.read(from, inclusive, Duration::from_millis(1)) => read,
                () = tx.closed() => return,
            }
        } else {
            tokio::select! {
                read = reader.read(from, inclusive, EVENTS_POLL) => read,
                () = tx.closed() => return,
                _ = lifecycle.wait_for(|l| *l == Lifecycle::Stopping) => continue,
            }
        };
        // Checked after the read: retention only removes the oldest entries, so if the
        // cursor is still retained now, nothing after it was missing when we read.
        let checked = match entries {
            Ok(entries) => reader.trimmed().await.map(|t| (entries, t)),
            Err(e) => Err(e),
        };
        let (entries, trimmed) = match checked {
            Ok(v) => v,
            Err(e) => {
                let _ = tx.send(Err(unavailable(e))).await;
                return;
            }
        };
        if let Some(c) = pos
            && !c.is_retained(trimmed)
        {
            let message = format!(
                "events after cursor {c} are no longer retained (retention removed up to {}); \
                 resynchronise (read current job states) and resume from an empty cursor",
                trimmed.map(|t| t.to_string()).unwrap_or_default()
            );
            let _ = tx
                .send(Err(status(
                    Code::FailedPrecondition,
                    &message,
                    "resync_required",
                )))
                .await;
            return;
        }
        if stopping && entries.is_empty() {
            let _ = tx
                .send(Err(status(
                    Code::Unavailable,
                    "the spoke is shutting down; reconnect and resume from your cursor",
                    "shutting_down",
                )))
                .await;
            return;
        }
        for entry in &entries {
            if filter.may_match(entry) {
                match crate::events::expand(&spoke, entry) {
                    Ok(events) => {
                        for (i, event) in events.into_iter().enumerate() {
                            let after_pos = pos.is_none_or(|c| c.is_before(entry.id, i as u32));
                            if after_pos
                                && filter.matches(&event)
                                && tx.send(Ok(event)).await.is_err()
                            {
                                return;
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "skipping an unreadable event entry"),
                }
            }
            pos = Some(Cursor {
                id: entry.id,
                sub: None,
            });
        }
    }
}

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
    type EventsStream = tokio_stream::wrappers::ReceiverStream<Result<pb::Event, Status>>;

    async fn events(
        &self,
        request: Request<pb::EventsRequest>,
    ) -> Result<Response<Self::EventsStream>, Status> {
        let certs = request.peer_certs();
        let inner = &self.inner;
        let hub = inner.peer_hub(certs)?;
        let query = EventsQuery::try_from(request.into_inner())?;
        let permit = inner.event_streams.clone().try_acquire_owned().map_err(|_| {
            status(
                Code::ResourceExhausted,
                &format!("this spoke serves at most {MAX_EVENT_STREAMS} event streams at once; retry later"),
                "too_many_streams",
            )
        })?;
        tracing::info!(%hub, after = ?query.after.map(|c| c.to_string()), "event stream opened");
        let (tx, rx) = tokio::sync::mpsc::channel(crate::store::READ_BATCH);
        let store = inner.store.clone();
        let spoke = inner.config.spoke_id.to_string();
        let lifecycle = inner.lifecycle.clone();
        let open = inner.metrics.event_streams.clone();
        open.inc();
        tokio::spawn(async move {
            feed_events(store, spoke, query, tx, lifecycle).await;
            open.dec();
            drop(permit);
        });
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn execute(
        &self,
        request: Request<pb::SignedCommand>,
    ) -> Result<Response<pb::SignedReceipt>, Status> {
        let certs = request.peer_certs();
        let inner = self.inner.clone();
        // Detached: once verified and claimed, a command finishes even if the caller leaves.
        let outcome = tokio::spawn(async move { inner.execute(certs, request.into_inner()).await })
            .await
            .unwrap_or_else(|e| Err(Refusal::Task(e.to_string())));
        match outcome {
            Ok(bytes) => pb::SignedReceipt::decode(bytes.as_slice())
                .map(Response::new)
                .map_err(|e| {
                    Refusal::Task(format!("stored receipt does not decode: {e}")).into_status()
                }),
            Err(refusal) => {
                tracing::info!(error = %refusal, "command refused");
                Err(refusal.into_status())
            }
        }
    }

    async fn info(
        &self,
        request: Request<pb::InfoRequest>,
    ) -> Result<Response<pb::InfoResponse>, Status> {
        let certs = request.peer_certs();
        let inner = &self.inner;
        inner.peer_hub(certs)?;
        let queue = inner
            .store
            .queue_counts()
            .await
            .map_err(|e| Refusal::from(e).into_status())?;
        Ok(Response::new(pb::InfoResponse {
            queue: Some(queue.to_pb()),
            spoke_id: inner.config.spoke_id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            receipt_key_id: inner.receipt_key.id().to_string(),
            profiles: inner
                .config
                .profiles
                .keys()
                .map(|p| p.to_string())
                .collect(),
            draining: *inner.lifecycle.borrow() != Lifecycle::Serving,
        }))
    }
}
