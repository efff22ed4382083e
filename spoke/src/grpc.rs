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

use mosaic_shared::ids::{AgentId, CommandId};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::{Domain, KeyPair};
use mosaic_shared::time::unix_ms;
use prost::Message as _;
use rustls::pki_types::CertificateDer;
use tonic::{Code, Request, Response, Status};
use tracing::Instrument as _;

use crate::command::Action;
use crate::config::SpokeConfig;
use crate::lifecycle::AgentState;
use crate::profile::{self, PlanError};
use crate::runner::{KillOutcome, Supervisor};
use crate::store::{AgentRecord, Claim, Store, StoreError};
use crate::verify::{VerifiedCommand, Verifier, VerifyError};

/// Metadata key carrying the machine-readable reason of a refusal.
pub const REASON_KEY: &str = "x-mosaic-reason";

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
    #[error("agent {0} not found")]
    NoSuchAgent(AgentId),
    #[error("command {0} is still being executed; retry later")]
    InFlight(CommandId),
    #[error("agent {0} is not supervised by this spoke process; it cannot be killed now")]
    NotSupervised(AgentId),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("command task failed: {0}")]
    Task(String),
}

impl Refusal {
    fn into_status(self) -> Status {
        let (code, reason) = match &self {
            Refusal::Verify(e) => (e.code(), e.reason()),
            Refusal::Plan(e) => (Code::InvalidArgument, e.reason()),
            Refusal::NoSuchAgent(_) => (Code::NotFound, "agent_not_found"),
            Refusal::InFlight(_) => (Code::Aborted, "command_in_flight"),
            Refusal::NotSupervised(_) => (Code::FailedPrecondition, "agent_not_supervised"),
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
    verifier: Verifier,
    store: Store,
    supervisor: Arc<Supervisor>,
    receipt_key: Arc<KeyPair>,
}

impl FederationService {
    pub fn new(config: Arc<SpokeConfig>, store: Store, supervisor: Arc<Supervisor>) -> Self {
        let verifier = Verifier::new(
            config.spoke_id.clone(),
            config.trust_domain.clone(),
            &config.trusted_hubs,
            config.clock_skew,
            config.max_command_validity,
        );
        FederationService {
            inner: Arc::new(Inner {
                receipt_key: config.receipt_key.clone(),
                config,
                verifier,
                store,
                supervisor,
            }),
        }
    }
}

impl Inner {
    async fn execute(
        &self,
        certs: Option<Arc<Vec<CertificateDer<'static>>>>,
        envelope: pb::SignedCommand,
    ) -> Result<Vec<u8>, Refusal> {
        let hub = self
            .verifier
            .peer_hub(certs.as_deref().map(|c| c.as_slice()))?;
        let now = unix_ms();
        let cmd = self.verifier.verify(&hub, &envelope, now)?;
        let span =
            tracing::info_span!("command", id = %cmd.command_id, verb = cmd.action.verb(), %hub);
        self.run_verified(cmd, now).instrument(span).await
    }

    /// The replay defence, then the command; a refused command gives its id back.
    async fn run_verified(&self, cmd: VerifiedCommand, now: i64) -> Result<Vec<u8>, Refusal> {
        let ttl = self.verifier.replay_ttl(cmd.expires_at_ms, now);
        match self
            .store
            .claim_command(&cmd.hub_id, &cmd.command_id, ttl)
            .await?
        {
            Claim::Done(receipt) => {
                tracing::info!("replayed command; returning the original receipt");
                return Ok(receipt);
            }
            Claim::InFlight => return Err(Refusal::InFlight(cmd.command_id)),
            Claim::New => {}
        }
        match self.perform(&cmd).await {
            Ok(agent) => {
                let receipt = self.seal(&cmd, agent);
                self.store
                    .save_receipt(&cmd.hub_id, &cmd.command_id, &receipt)
                    .await?;
                Ok(receipt)
            }
            Err(refusal) => {
                // Nothing was done, so the id stays free for a corrected retry.
                if let Err(e) = self
                    .store
                    .release_command(&cmd.hub_id, &cmd.command_id)
                    .await
                {
                    tracing::warn!(error = %e, "cannot release refused command id");
                }
                Err(refusal)
            }
        }
    }

    /// Executes a verified, newly claimed command; returns the agent as it left it.
    async fn perform(&self, cmd: &VerifiedCommand) -> Result<AgentRecord, Refusal> {
        match &cmd.action {
            Action::Spawn(req) => {
                let plan = profile::plan(&self.config.profiles, req)?;
                let record = AgentRecord {
                    agent_id: AgentId::generate(),
                    profile: req.profile.clone(),
                    workspace: req.workspace.clone(),
                    command_id: cmd.command_id.clone(),
                    state: AgentState::Spawning,
                    created_at_ms: unix_ms(),
                    started_at_ms: None,
                    finished_at_ms: None,
                    exit_code: None,
                    signal: None,
                    error: String::new(),
                    pid: None,
                    output_tail: String::new(),
                };
                self.store.create_agent(&record).await?;
                self.supervisor.launch(record.agent_id.clone(), plan);
                tracing::info!(agent = %record.agent_id, profile = %record.profile, "agent accepted");
                Ok(record)
            }
            Action::Status(id) => self.agent(id).await,
            Action::Kill(id) => {
                let record = self.agent(id).await?;
                if record.state.is_terminal() {
                    return Ok(record);
                }
                let grace = self
                    .config
                    .profiles
                    .get(&record.profile)
                    .map_or(Duration::from_secs(10), |p| p.kill_grace);
                let reason = format!("killed by hub {} (command {})", cmd.hub_id, cmd.command_id);
                let wait = (grace + Duration::from_secs(5)).min(KILL_ANSWER_WITHIN);
                match self.supervisor.kill(id, &reason, wait).await {
                    KillOutcome::Ended | KillOutcome::StillEnding => self.agent(id).await,
                    KillOutcome::NotSupervised => {
                        // It may have ended between our read and the kill request.
                        let now = self.agent(id).await?;
                        if now.state.is_terminal() {
                            Ok(now)
                        } else {
                            Err(Refusal::NotSupervised(id.clone()))
                        }
                    }
                }
            }
        }
    }

    async fn agent(&self, id: &AgentId) -> Result<AgentRecord, Refusal> {
        self.store
            .agent(id)
            .await?
            .ok_or_else(|| Refusal::NoSuchAgent(id.clone()))
    }

    /// Encodes and signs the receipt; returns the encoded `SignedReceipt`.
    fn seal(&self, cmd: &VerifiedCommand, agent: AgentRecord) -> Vec<u8> {
        let receipt = pb::Receipt {
            command_id: cmd.command_id.to_string(),
            spoke_id: self.config.spoke_id.to_string(),
            hub_id: cmd.hub_id.to_string(),
            key_id: self.receipt_key.id().to_string(),
            executed_at_ms: unix_ms(),
            agent: Some(agent.to_pb()),
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

#[tonic::async_trait]
impl pb::federation_server::Federation for FederationService {
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
        inner
            .verifier
            .peer_hub(certs.as_deref().map(|c| c.as_slice()))
            .map_err(|e| Refusal::from(e).into_status())?;
        Ok(Response::new(pb::InfoResponse {
            spoke_id: inner.config.spoke_id.to_string(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            receipt_key_id: inner.receipt_key.id().to_string(),
            profiles: inner
                .config
                .profiles
                .keys()
                .map(|p| p.to_string())
                .collect(),
        }))
    }
}
