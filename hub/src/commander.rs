//! Sends commands for the admin API: where a command goes (a named spoke, or placement), its
//! command id (fresh, or derived from the client's request id), its audit record, and the
//! verified receipt.
//!
//! Order for every command: look up a record of the same request (a retry answers from it and
//! does nothing again; a different request under the same id is refused), choose the spoke,
//! record the signed command as `pending`, send it, record the answer. A retry of a request
//! whose answer was never recorded (the hub died, the spoke timed out) resends the same command
//! id to the same spoke: the spoke's replay defence, and for a spawn its job id derived from
//! the command id, make that harmless.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tracing::Instrument as _;

use mosaic_shared::ids::{CommandId, JobId, ProfileName, SpokeId, WorkspaceId};
use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::time::unix_ms;
use sha2::{Digest, Sha256};

use crate::audit::{AuditStore, Outcome, Placement};
use crate::config::{HubConfig, SpokeEntry};
use crate::metrics::{CommandLabels, HubMetrics, VerbLabel};
use crate::placement::{self, Candidate, Labels, NoSpoke};
use crate::reload::Live;
use crate::spokes::{self, Receipt, SpokeClient, SpokeError};
use crate::store::StoreError;

/// Longest a spoke may take to answer `Info` for placement and `ListSpokes`.
pub const INFO_WITHIN: Duration = Duration::from_secs(3);

/// A client's idempotency key: 1-128 of letters, digits, `.`, `_`, `-`.
pub type RequestId = CommandId;

/// Who asks, and for which request.
pub struct Asker<'a> {
    /// The token's name (request ids are the caller's own).
    pub caller: &'a str,
    pub workspace: Option<&'a WorkspaceId>,
    pub request_id: Option<&'a RequestId>,
    /// What was asked, as bytes that equal requests share (see [`fingerprint`]).
    pub request: &'a [u8],
}

/// Where a command goes.
pub enum Target {
    Spoke(SpokeId),
    /// The least-loaded healthy spoke matching the selector that offers the profile.
    Place {
        selector: Labels,
        profile: ProfileName,
    },
}

/// A command that was answered.
pub struct Done {
    pub spoke: SpokeId,
    pub command_id: CommandId,
    pub receipt: Receipt,
    /// The answer to an earlier request with the same id.
    pub replayed: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Spoke(#[from] SpokeError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("request_id {0} was already used for a different request; use a new request_id")]
    RequestReused(String),
    #[error("no configured spoke has the labels {0}")]
    NoMatch(Labels),
    #[error("no spoke can take the job: {}", .0.iter().map(|(s, why)| format!("{s}: {why}")).collect::<Vec<_>>().join("; "))]
    NoSuitable(Vec<(SpokeId, String)>),
}

impl CommandError {
    /// The metrics' outcome label: the spoke's reason code for a refusal, else the kind.
    fn outcome(&self) -> String {
        match self {
            CommandError::Spoke(SpokeError::Refused { reason, code, .. }) => reason
                .clone()
                .unwrap_or_else(|| format!("{code:?}").to_lowercase()),
            CommandError::Spoke(SpokeError::Connect(_)) => "unreachable".into(),
            CommandError::Spoke(SpokeError::BadReceipt { .. }) => "bad_receipt".into(),
            CommandError::Spoke(SpokeError::Unknown(..)) => "unknown_spoke".into(),
            CommandError::Store(_) => "store_unavailable".into(),
            CommandError::RequestReused(_) => "request_reused".into(),
            CommandError::NoMatch(_) | CommandError::NoSuitable(_) => "no_spoke".into(),
        }
    }
}

/// SHA-256 (hex) of a request's bytes.
pub fn fingerprint(request: &[u8]) -> String {
    hex::encode(Sha256::digest(request))
}

/// A spoke's answer to `Info` now, or why there is none, and how long it took.
pub struct InfoAnswer {
    pub entry: SpokeEntry,
    pub info: Result<pb::InfoResponse, String>,
    pub rtt: Duration,
}

pub struct Commander {
    /// The config in force (replaced by a reload; see `reload`).
    config: Live,
    audit: AuditStore,
    metrics: HubMetrics,
    /// One channel per spoke, kept while it works (tonic reconnects it).
    clients: Mutex<HashMap<SpokeId, SpokeClient>>,
}

impl Commander {
    pub fn new(config: Live, audit: AuditStore, metrics: HubMetrics) -> Self {
        Commander {
            config,
            audit,
            metrics,
            clients: Mutex::new(HashMap::new()),
        }
    }

    pub fn audit(&self) -> &AuditStore {
        &self.audit
    }

    /// The config in force now.
    pub fn config(&self) -> Arc<HubConfig> {
        self.config.current()
    }

    /// Runs `f` with the spoke's channel. A kept channel that fails as a broken connection
    /// would (the spoke restarted, say) is dropped and `f` runs once more on a fresh one, so
    /// the caller sees the spoke as it is now; a repeated command is harmless (same id).
    async fn with_client<T, F, Fut>(&self, spoke: &SpokeId, f: F) -> Result<T, SpokeError>
    where
        F: Fn(SpokeClient) -> Fut,
        Fut: std::future::Future<Output = Result<T, SpokeError>>,
    {
        let kept = self
            .clients
            .lock()
            .expect("not poisoned")
            .get(spoke)
            .cloned();
        if let Some(c) = kept {
            match f(c).await {
                Err(e) if is_broken(&e) => self.forget(spoke),
                done => return done,
            }
        }
        let c = SpokeClient::connect(&self.config(), spoke).await?;
        self.clients
            .lock()
            .expect("not poisoned")
            .insert(spoke.clone(), c.clone());
        let done = f(c).await;
        if let Err(e) = &done
            && is_broken(e)
        {
            self.forget(spoke);
        }
        done
    }

    fn forget(&self, spoke: &SpokeId) {
        self.clients.lock().expect("not poisoned").remove(spoke);
    }

    /// Drops every kept channel, so that the next command dials with the TLS material in
    /// force (after a reload).
    pub fn forget_all(&self) {
        self.clients.lock().expect("not poisoned").clear();
    }

    /// `Info` from each spoke in `entries`, concurrently, each bounded by [`INFO_WITHIN`].
    pub async fn info_all(&self, entries: Vec<SpokeEntry>) -> Vec<InfoAnswer> {
        let asks = entries.into_iter().map(|entry| async move {
            let started = Instant::now();
            let info = match tokio::time::timeout(
                INFO_WITHIN,
                self.with_client(&entry.id, |c| async move { c.info().await }),
            )
            .await
            {
                Ok(Ok(i)) => Ok(i),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => {
                    self.forget(&entry.id);
                    Err(format!(
                        "spoke {} did not answer within {} s",
                        entry.id,
                        INFO_WITHIN.as_secs()
                    ))
                }
            };
            InfoAnswer {
                rtt: started.elapsed(),
                entry,
                info,
            }
        });
        futures_util::future::join_all(asks).await
    }

    async fn place(
        &self,
        selector: &Labels,
        profile: &ProfileName,
    ) -> Result<SpokeId, CommandError> {
        let entries: Vec<SpokeEntry> = self
            .config()
            .spokes
            .iter()
            .filter(|s| selector.selects(&s.labels))
            .cloned()
            .collect();
        let answers = self.info_all(entries).await;
        let candidates: Vec<Candidate<'_>> = answers
            .iter()
            .map(|a| Candidate {
                spoke: &a.entry.id,
                info: a.info.as_ref().map_err(Clone::clone),
            })
            .collect();
        match placement::choose(profile.as_str(), &candidates) {
            Ok(s) => Ok(s),
            Err(NoSpoke::NoMatch) => Err(CommandError::NoMatch(selector.clone())),
            Err(NoSpoke::Unsuitable(why)) => Err(CommandError::NoSuitable(why)),
        }
    }

    /// Sends `action` for `asker` to `target`; see the module's documentation for the order.
    /// Counted and timed in the metrics by verb and outcome.
    pub async fn execute(
        &self,
        asker: Asker<'_>,
        target: Target,
        action: pb::command::Action,
    ) -> Result<Done, CommandError> {
        let verb = verb(&action);
        let started = Instant::now();
        let span = tracing::info_span!(
            "command",
            verb,
            spoke = tracing::field::Empty,
            command_id = tracing::field::Empty
        );
        let done = self
            .execute_inner(asker, target, action)
            .instrument(span.clone())
            .await;
        if let Ok(d) = &done {
            span.record("spoke", d.spoke.as_str());
            span.record("command_id", d.command_id.as_str());
        }
        let outcome = match &done {
            Ok(d) if d.replayed => "replayed".to_owned(),
            Ok(_) => "ok".to_owned(),
            Err(e) => e.outcome(),
        };
        self.metrics
            .commands
            .get_or_create(&CommandLabels { verb, outcome })
            .inc();
        self.metrics
            .command_duration
            .get_or_create(&VerbLabel { verb })
            .observe(started.elapsed().as_secs_f64());
        done
    }

    async fn execute_inner(
        &self,
        asker: Asker<'_>,
        target: Target,
        action: pb::command::Action,
    ) -> Result<Done, CommandError> {
        let config = self.config();
        let hub = config.signer.hub_id();
        let verb = verb(&action);
        let print = fingerprint(asker.request);
        let (command_id, prior) = match asker.request_id {
            Some(r) => {
                let id = CommandId::for_request(hub, asker.caller, verb, r.as_str());
                let prior = self.audit.get(&id).await?;
                (id, prior)
            }
            None => (CommandId::generate(), None),
        };
        let fresh = prior.is_none();
        let mut record = match prior {
            Some(p) => {
                if p.request_fingerprint != print {
                    return Err(CommandError::RequestReused(p.request_id));
                }
                if p.outcome == Outcome::Ok.as_str()
                    && let Some(signed) = p.receipt.clone()
                {
                    let spoke: SpokeId = p.spoke_id.parse().map_err(|_| corrupt(&p))?;
                    let entry = self.entry(&spoke)?;
                    let receipt = spokes::verify_receipt(&entry, hub, &command_id, signed)?;
                    return Ok(Done {
                        spoke,
                        command_id,
                        receipt,
                        replayed: true,
                    });
                }
                p
            }
            None => {
                let spoke = match target {
                    Target::Spoke(s) => {
                        self.entry(&s)?;
                        s
                    }
                    Target::Place { selector, profile } => self.place(&selector, &profile).await?,
                };
                admin::AuditRecord {
                    command_id: command_id.to_string(),
                    at_ms: unix_ms(),
                    spoke_id: spoke.to_string(),
                    verb: verb.to_owned(),
                    caller: asker.caller.to_owned(),
                    workspace: asker.workspace.map(ToString::to_string).unwrap_or_default(),
                    request_id: asker
                        .request_id
                        .map(ToString::to_string)
                        .unwrap_or_default(),
                    request_fingerprint: print,
                    job_id: match &action {
                        pb::command::Action::Spawn(_) => {
                            JobId::for_command(hub, &command_id).to_string()
                        }
                        _ => String::new(),
                    },
                    outcome: Outcome::Pending.as_str().to_owned(),
                    ..Default::default()
                }
            }
        };
        let spoke: SpokeId = record.spoke_id.parse().map_err(|_| corrupt(&record))?;
        let envelope = config.signer.seal(&command_id, &spoke, action, unix_ms());
        record.command = Some(envelope.clone());
        record.outcome = Outcome::Pending.as_str().to_owned();
        let placement = match (asker.workspace, record.job_id.parse::<JobId>()) {
            (Some(w), Ok(job)) => Some((
                job,
                Placement {
                    spoke: spoke.clone(),
                    workspace: w.clone(),
                },
            )),
            _ => None,
        };
        // A concurrent twin may have recorded it first; then this is a resend like any other.
        if !fresh
            || !self
                .audit
                .begin(&record, placement.as_ref().map(|(j, p)| (j, p)))
                .await?
        {
            self.audit.update(&record).await?;
        }
        let signer = &config.signer;
        let sent = self
            .with_client(&spoke, |c| {
                let (envelope, command_id) = (envelope.clone(), &command_id);
                async move { c.send(signer, command_id, envelope).await }
            })
            .await;
        match sent {
            Ok(receipt) => {
                record.outcome = Outcome::Ok.as_str().to_owned();
                record.receipt = Some(receipt.signed.clone());
                record.error.clear();
                self.record_answer(&record).await;
                Ok(Done {
                    spoke,
                    command_id,
                    receipt,
                    replayed: false,
                })
            }
            Err(e) => {
                record.outcome = match e {
                    SpokeError::Refused { code, .. }
                        if !matches!(
                            code,
                            tonic::Code::Unavailable | tonic::Code::DeadlineExceeded
                        ) =>
                    {
                        Outcome::Refused
                    }
                    _ => Outcome::Failed,
                }
                .as_str()
                .to_owned();
                record.error = e.to_string();
                self.record_answer(&record).await;
                Err(e.into())
            }
        }
    }

    /// Records an answer. The command has run by now, so a failure to record is logged, not
    /// returned: the record stays `pending`, and a retry of the request resends safely.
    async fn record_answer(&self, record: &admin::AuditRecord) {
        if let Err(e) = self.audit.update(record).await {
            tracing::warn!(command = %record.command_id, error = %e, "cannot record a command's answer in the audit trail");
        }
    }

    fn entry(&self, spoke: &SpokeId) -> Result<SpokeEntry, SpokeError> {
        let config = self.config();
        config.spoke(spoke).cloned().ok_or_else(|| {
            let known: Vec<&str> = config.spokes.iter().map(|s| s.id.as_str()).collect();
            SpokeError::Unknown(spoke.clone(), known.join(", "))
        })
    }

    /// Where the hub placed `job`, if it remembers.
    pub async fn placement(&self, job: &JobId) -> Result<Option<Placement>, StoreError> {
        self.audit.placement(job).await
    }
}

/// A failure that may be the connection's rather than the spoke's answer.
fn is_broken(e: &SpokeError) -> bool {
    match e {
        SpokeError::Connect(_) => true,
        // Not a deadline: the spoke may still be working on it (a kill waits for the agent).
        SpokeError::Refused { code, .. } => {
            matches!(code, tonic::Code::Unavailable | tonic::Code::Unknown)
        }
        _ => false,
    }
}

fn corrupt(r: &admin::AuditRecord) -> StoreError {
    StoreError::Corrupt {
        key: "audit:records".into(),
        reason: format!("record {} names spoke {:?}", r.command_id, r.spoke_id),
    }
}

/// The verb a command is recorded under.
pub fn verb(action: &pb::command::Action) -> &'static str {
    use pb::command::Action as A;
    match action {
        A::Spawn(_) => "spawn",
        A::Status(_) => "status",
        A::Kill(_) => "kill",
        A::QueueStats(_) => "queue_stats",
        A::PauseQueue(_) => "pause_queue",
        A::ResumeQueue(_) => "resume_queue",
        A::RemoveJob(_) => "remove_job",
    }
}

/// The bytes a request is fingerprinted by: its encoding with the request id cleared (maps
/// encode in key order, so equal requests give equal bytes).
pub fn request_bytes<M: prost::Message + Clone>(m: &M, clear: impl FnOnce(&mut M)) -> Vec<u8> {
    let mut m = m.clone();
    clear(&mut m);
    m.encode_to_vec()
}
