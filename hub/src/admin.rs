//! The hub's admin API (`mosaic.admin.v1`) over gRPC: authentication of every call by bearer
//! token, authorization by role and workspace, and the one mapping of refusals to statuses.
//!
//! A caller never learns that something of another workspace exists: what it may not see is
//! answered exactly like what does not exist. Handlers validate each request once into
//! domain values and hand them to the hub's parts (`fanout`, ...); this module holds no state
//! of its own beyond what it was given. Refusals carry a stable reason in `x-mosaic-reason`.

use std::collections::HashMap;
use std::sync::Arc;

use mosaic_shared::ids::{AgentId, JobId, SpokeId, WorkspaceId};
use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::PublicKey;
use mosaic_shared::tls::{self, Role as TlsRole, SpiffeId};
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status};

use crate::audit;
use crate::auth::{self, Decision, Operation, Principal, TokenStore};
use crate::commander::{self, Asker, CommandError, Commander, Done, RequestId};
use crate::fanout::{Fanout, Scope, Start, Target, WatchEnd};
use crate::placement::Labels;
use crate::spokes::SpokeError;
use crate::store::{HubStore, StoreError};
use crate::upstream::Health;

/// Metadata key of a refusal's machine-readable reason.
pub const REASON_KEY: &str = "x-mosaic-reason";
/// Metadata key of the cursor to resume from after a `resync_required` end.
pub const CURSOR_KEY: &str = "x-mosaic-cursor";
/// Items buffered between a watcher's task and its connection.
const WATCH_SEND_BUFFER: usize = 64;

fn status(code: Code, message: impl Into<String>, reason: &'static str) -> Status {
    let mut s = Status::new(code, message.into());
    s.metadata_mut()
        .insert(REASON_KEY, reason.parse().expect("reason codes are ascii"));
    s
}

pub struct AdminService {
    tokens: Arc<TokenStore>,
    fanout: Arc<Fanout>,
    commander: Arc<Commander>,
    store: HubStore,
    health: Health,
}

/// Default and largest page of `ListAgents` and `Audit`.
const DEFAULT_PAGE: u32 = 100;
const MAX_PAGE: u32 = 1000;

impl AdminService {
    pub fn new(
        tokens: Arc<TokenStore>,
        fanout: Arc<Fanout>,
        commander: Arc<Commander>,
        store: HubStore,
        health: Health,
    ) -> Self {
        AdminService {
            tokens,
            fanout,
            commander,
            store,
            health,
        }
    }

    /// The caller, from its bearer token or else its client certificate; default deny.
    fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let header = match request.metadata().get("authorization") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| unauthenticated("the authorization header is not text"))?,
            ),
        };
        // HTTP puts the verified peer identity in the request; gRPC has the peer's chain.
        let peer = match request.extensions().get::<PeerIdentity>() {
            Some(p) => p.0.clone(),
            None => request
                .peer_certs()
                .and_then(|certs| certs.first().and_then(|c| tls::identity_of(c).ok())),
        };
        self.authenticate(header, peer.as_ref())
    }

    /// The caller, from the value of its `authorization` header (gRPC metadata or HTTP), or,
    /// without one, from the identity of the client certificate it presented (verified
    /// against the hub's CA by the TLS layer).
    pub fn authenticate(
        &self,
        header: Option<&str>,
        peer: Option<&SpiffeId>,
    ) -> Result<Principal, Status> {
        if header.is_none()
            && let Some(id) = peer.filter(|id| id.role == TlsRole::Admin)
        {
            return self.tokens.authenticate_identity(id).ok_or_else(|| {
                unauthenticated(&format!(
                    "the client certificate {id} has no entry in the hub's tokens file"
                ))
            });
        }
        let header = header.ok_or_else(|| unauthenticated("no token"))?;
        let token = auth::bearer_token(header)
            .ok_or_else(|| unauthenticated("the authorization header is not `Bearer <token>`"))?;
        self.tokens
            .authenticate(token)
            .ok_or_else(|| unauthenticated("the token is not valid"))
    }

    /// Starts a watch for `principal` (the one implementation behind gRPC and HTTP): items,
    /// then at most one final status saying why it ended.
    pub fn start_watch(
        &self,
        principal: Principal,
        request: admin::WatchRequest,
    ) -> Result<mpsc::Receiver<Result<admin::WatchResponse, Status>>, Status> {
        let (scope, start) = watch_query(request, &principal)?;
        let (items_tx, mut items_rx) = mpsc::channel(WATCH_SEND_BUFFER);
        let (tx, rx) = mpsc::channel(WATCH_SEND_BUFFER);
        let fanout = self.fanout.clone();
        let tokens = self.tokens.clone();
        tracing::info!(token = %principal.name(), ?scope, ?start, "watch opened");
        tokio::spawn(async move {
            let forward = async {
                while let Some(item) = items_rx.recv().await {
                    if tx.send(Ok(item)).await.is_err() {
                        break;
                    }
                }
            };
            let watched = async {
                let end = fanout.watch(&scope, start, &items_tx).await;
                drop(items_tx);
                end
            };
            let end = tokio::select! {
                (end, ()) = async { tokio::join!(watched, forward) } => end_status(end),
                () = tokens.revoked(&principal) => Some(status(
                    Code::Unauthenticated,
                    "the token of this watch was revoked or changed",
                    "unauthenticated",
                )),
                // The caller hung up: end now, not at the next event in its scope.
                () = tx.closed() => None,
            };
            if let Some(s) = end {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(rx)
    }
}

pub(crate) fn unauthenticated(why: &str) -> Status {
    status(
        Code::Unauthenticated,
        format!(
            "{why}; send `authorization: Bearer <token>` with a token from the hub's tokens file, or a client certificate that an entry there names"
        ),
        "unauthenticated",
    )
}

/// The verified identity of an HTTP caller's client certificate, if it sent one, put in each
/// request by the HTTP server (gRPC handlers read the peer's chain instead).
#[derive(Debug, Clone, Default)]
pub struct PeerIdentity(pub Option<SpiffeId>);

/// Refuses what the decision does not allow; `what` names the thing for a not-found answer.
fn authorize(decision: Decision, op: Operation, what: &str) -> Result<(), Status> {
    match decision {
        Decision::Allow => Ok(()),
        Decision::Forbidden => Err(status(
            Code::PermissionDenied,
            format!("this token's role may not {}", op.as_str()),
            "forbidden",
        )),
        Decision::NotFound => Err(status(
            Code::NotFound,
            format!("{what} not found"),
            "not_found",
        )),
    }
}

fn invalid(field: &str, message: impl std::fmt::Display) -> Status {
    status(
        Code::InvalidArgument,
        format!("watch.{field}: {message}"),
        "invalid_request",
    )
}

/// A field of a request that is not acceptable; the message names it.
fn invalid_field(message: impl std::fmt::Display) -> Status {
    status(
        Code::InvalidArgument,
        message.to_string(),
        "invalid_request",
    )
}

/// What a caller that may not see a job, and one asking for a job that does not exist, both
/// hear.
fn job_not_found(id: &str) -> Status {
    status(Code::NotFound, format!("job {id} not found"), "not_found")
}

fn store_unavailable(e: &StoreError) -> Status {
    tracing::error!(error = %e, "the hub's store failed");
    status(
        Code::Unavailable,
        "the hub's store is unavailable; retry later",
        "store_unavailable",
    )
}

/// The one mapping of a failed command to a status. `job` is the id asked about, so a spoke's
/// "not found" reads exactly like the hub's own.
fn command_status(e: CommandError, job: Option<&str>) -> Status {
    match e {
        CommandError::Store(e) => store_unavailable(&e),
        CommandError::RequestReused(_) => {
            status(Code::AlreadyExists, e.to_string(), "request_reused")
        }
        CommandError::NoMatch(_) => status(Code::FailedPrecondition, e.to_string(), "no_spoke"),
        CommandError::NoSuitable(_) => status(Code::Unavailable, e.to_string(), "no_spoke"),
        CommandError::Spoke(SpokeError::Unknown(..)) => status(
            Code::InvalidArgument,
            format!("spoke_id: {e}"),
            "unknown_spoke",
        ),
        CommandError::Spoke(SpokeError::Connect(c)) => {
            status(Code::Unavailable, c.to_string(), "spoke_unavailable")
        }
        CommandError::Spoke(SpokeError::BadReceipt { spoke, problem }) => {
            tracing::error!(%spoke, %problem, "a spoke's receipt did not verify");
            status(
                Code::Unavailable,
                format!(
                    "spoke {spoke} answered with a receipt that does not verify; see the hub's log"
                ),
                "bad_receipt",
            )
        }
        CommandError::Spoke(SpokeError::Refused {
            code: Code::NotFound,
            ..
        }) if job.is_some() => job_not_found(job.unwrap_or_default()),
        CommandError::Spoke(SpokeError::Refused {
            spoke,
            code,
            reason,
            message,
        }) => {
            // The spoke's own reason passes through (it is one of a closed set); the message
            // names the spoke.
            let fallback = match code {
                Code::Unavailable | Code::DeadlineExceeded => "spoke_unavailable",
                _ => "spoke_refused",
            };
            let reason = reason
                .filter(|r| r.len() <= 64 && r.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'))
                .unwrap_or_else(|| fallback.to_owned());
            let mut s = Status::new(code, format!("spoke {spoke}: {message}"));
            if let Ok(v) = reason.parse() {
                s.metadata_mut().insert(REASON_KEY, v);
            }
            s
        }
    }
}

/// A `WatchRequest` checked field by field.
fn watch_query(r: admin::WatchRequest, principal: &Principal) -> Result<(Scope, Start), Status> {
    use admin::watch_request::{Scope as S, Start as St};
    let (target, workspace) = match r.scope {
        None => {
            return Err(invalid(
                "scope",
                "give one of workspace, job_id or spoke_id",
            ));
        }
        Some(S::Workspace(w)) => {
            let w: WorkspaceId = w.parse().map_err(|e| invalid("workspace", e))?;
            (Target::Workspace(w.to_string()), Some(w))
        }
        Some(S::JobId(j)) => {
            let j: JobId = j.parse().map_err(|e| invalid("job_id", e))?;
            (Target::Job(j.to_string()), None)
        }
        Some(S::SpokeId(s)) => {
            let s: SpokeId = s.parse().map_err(|e| invalid("spoke_id", e))?;
            (Target::Spoke(s.to_string()), None)
        }
    };
    // A job or a spoke is watched through the workspaces the caller may see: another
    // workspace's events are filtered out, so a job there looks like one that does not exist.
    authorize(
        principal.may(Operation::Watch, workspace.as_ref()),
        Operation::Watch,
        &format!(
            "workspace {}",
            workspace.as_ref().map(|w| w.as_str()).unwrap_or("")
        ),
    )?;
    if r.types.len() > 64 {
        return Err(invalid("types", "at most 64 types"));
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
    let start = match r.start {
        Some(St::After(c)) if !c.is_empty() => Start::After(c.parse().map_err(|e: String| {
            invalid("after", format!("{e}; pass a cursor the hub gave you"))
        })?),
        Some(St::FromOldest(true)) => Start::Oldest,
        _ if r.snapshot => Start::Snapshot,
        _ => Start::Live,
    };
    Ok((
        Scope {
            target,
            types,
            visible: principal.visible_workspaces().clone(),
        },
        start,
    ))
}

/// How a watch that could not go on ends.
fn end_status(end: WatchEnd) -> Option<Status> {
    let resync = |message: String, cursor: Option<String>| {
        let mut s = status(Code::FailedPrecondition, message, "resync_required");
        if let Some(c) = cursor.and_then(|c| c.parse().ok()) {
            s.metadata_mut().insert(CURSOR_KEY, c);
        }
        s
    };
    match end {
        WatchEnd::Left => None,
        WatchEnd::Shutdown => Some(status(
            Code::Unavailable,
            "the hub is stopping; resume from your last cursor",
            "shutting_down",
        )),
        WatchEnd::Trimmed { trimmed } => Some(resync(
            format!(
                "the cursor is older than the events the hub retains (removed up to {trimmed}); \
                 resynchronise with a snapshot"
            ),
            None,
        )),
        WatchEnd::Lagged { cursor } => {
            let c = cursor.map(|c| c.to_string()).unwrap_or_default();
            Some(resync(
                format!(
                    "this watcher fell too far behind and was ended; resume after cursor {c:?} \
                     (it is in x-mosaic-cursor)"
                ),
                Some(c),
            ))
        }
        WatchEnd::Gap { spoke, cursor } => Some(resync(
            format!(
                "events of spoke {spoke} were lost before the hub read them; resynchronise \
                 with a snapshot, then resume after cursor {cursor}"
            ),
            Some(cursor.to_string()),
        )),
        WatchEnd::Store(e) => {
            tracing::error!(error = %e, "watch failed in the hub's store");
            Some(status(
                Code::Unavailable,
                "the hub's event store is unavailable; resume from your last cursor later",
                "store_unavailable",
            ))
        }
    }
}

/// Parses an optional id field: empty is `None`.
fn optional<T>(
    value: &str,
    parse: impl FnOnce(&str) -> Result<T, mosaic_shared::ids::IdError>,
) -> Result<Option<T>, Status> {
    if value.is_empty() {
        Ok(None)
    } else {
        parse(value).map(Some).map_err(invalid_field)
    }
}

fn request_id(value: &str) -> Result<Option<RequestId>, Status> {
    optional(value, |v| RequestId::parse_field("request_id", v))
}

fn page_size(limit: u32) -> Result<usize, Status> {
    match limit {
        0 => Ok(DEFAULT_PAGE as usize),
        1..=MAX_PAGE => Ok(limit as usize),
        _ => Err(invalid_field(format!(
            "limit must be between 1 and {MAX_PAGE} (0: {DEFAULT_PAGE})"
        ))),
    }
}

/// The job an id names: a job id, or the agent id `<job>.<attempt>` of one of its attempts.
fn job_of(id: &str) -> Result<JobId, Status> {
    if let Ok(agent) = AgentId::parse_field("id", id)
        && let Some((job, _)) = agent.attempt()
    {
        return Ok(job);
    }
    JobId::parse_field("id", id).map_err(invalid_field)
}

/// Where a job is, as far as the hub knows: its spoke and workspace.
struct Located {
    spoke: SpokeId,
    workspace: Option<WorkspaceId>,
}

impl AdminService {
    /// Finds the spoke of `job` (or takes the caller's), and refuses, as "not found", a job in a
    /// workspace the caller may not see.
    async fn locate(
        &self,
        principal: &Principal,
        op: Operation,
        id: &str,
        job: &JobId,
        spoke: Option<SpokeId>,
    ) -> Result<Located, Status> {
        let placed = self
            .commander
            .placement(job)
            .await
            .map_err(|e| store_unavailable(&e))?;
        let known = match placed {
            Some(p) => Some((p.spoke, Some(p.workspace))),
            None => {
                let snaps = self
                    .store
                    .snapshots(&[job.as_str()])
                    .await
                    .map_err(|e| store_unavailable(&e))?;
                snaps
                    .get(job.as_str())
                    .and_then(|s| Some((s.spoke_id.parse().ok()?, s.workspace.parse().ok())))
            }
        };
        let located = match (known, spoke) {
            (Some((at, ws)), Some(asked)) if at == asked => Located {
                spoke: at,
                workspace: ws,
            },
            // The caller names a spoke the hub does not know the job on: ask it; the answer's
            // workspace is checked before anything is shown.
            (_, Some(asked)) => Located {
                spoke: asked,
                workspace: None,
            },
            (Some((at, ws)), None) => Located {
                spoke: at,
                workspace: ws,
            },
            (None, None) => return Err(job_not_found(id)),
        };
        if let Some(ws) = &located.workspace {
            authorize(principal.may(op, Some(ws)), op, &format!("job {id}")).map_err(|s| {
                if s.code() == Code::NotFound {
                    job_not_found(id)
                } else {
                    s
                }
            })?;
        } else {
            // Unknown workspace: the role must allow the operation anywhere it could be.
            authorize(principal.may(op, None), op, &format!("job {id}"))?;
        }
        Ok(located)
    }

    /// The job in a receipt, if the caller may see its workspace; "not found" otherwise.
    fn visible_job(
        principal: &Principal,
        op: Operation,
        id: &str,
        done: &Done,
    ) -> Result<pb::JobStatus, Status> {
        let job = done.receipt.job().cloned().ok_or_else(|| {
            status(
                Code::Internal,
                format!("spoke {} answered without a job", done.spoke),
                "bad_receipt",
            )
        })?;
        let ws: Option<WorkspaceId> = job.workspace.parse().ok();
        match ws {
            Some(ws) if principal.may(op, Some(&ws)) == Decision::Allow => Ok(job),
            _ => Err(job_not_found(id)),
        }
    }

    async fn queue_command(
        &self,
        request: Request<admin::QueueRequest>,
        op: Operation,
        action: pb::command::Action,
    ) -> Result<Response<admin::QueueResponse>, Status> {
        let principal = self.principal(&request)?;
        let r = request.into_inner();
        authorize(principal.may(op, None), op, "queue")?;
        let spoke = SpokeId::parse_field("spoke_id", r.spoke_id).map_err(invalid_field)?;
        let done = self
            .commander
            .execute(
                Asker {
                    caller: principal.name().as_str(),
                    workspace: None,
                    request_id: None,
                    request: &[],
                },
                commander::Target::Spoke(spoke),
                action,
            )
            .await
            .map_err(|e| command_status(e, None))?;
        let queue = done.receipt.queue().copied().ok_or_else(|| {
            status(
                Code::Internal,
                format!("spoke {} answered without queue counts", done.spoke),
                "bad_receipt",
            )
        })?;
        Ok(Response::new(admin::QueueResponse {
            spoke_id: done.spoke.to_string(),
            command_id: done.command_id.to_string(),
            queue: Some(queue),
        }))
    }

    /// The keys audit records are checked with: the hub's command key, each spoke's receipt
    /// key.
    fn audit_keys(&self) -> (HashMap<String, PublicKey>, HashMap<String, PublicKey>) {
        let config = self.commander.config();
        let hubs = config.hub_keys();
        let spokes = config
            .spokes
            .iter()
            .map(|s| (s.id.to_string(), s.receipt_key.clone()))
            .collect();
        (hubs, spokes)
    }
}

fn job_response(job: pb::JobStatus, done: &Done) -> admin::JobResponse {
    admin::JobResponse {
        spoke_id: done.spoke.to_string(),
        command_id: done.command_id.to_string(),
        job: Some(job),
        replayed: done.replayed,
    }
}

/// Newest first: by the time of the job's last event, then by id.
fn newer_first(a: &admin::JobSnapshot, b: &admin::JobSnapshot) -> std::cmp::Ordering {
    b.at_ms.cmp(&a.at_ms).then_with(|| b.job_id.cmp(&a.job_id))
}

/// A `ListAgents` page token: the last job of the page, as `<at_ms>:<job id>`.
fn agents_token(s: &admin::JobSnapshot) -> String {
    format!("{}:{}", s.at_ms, s.job_id)
}

fn parse_agents_token(t: &str) -> Result<admin::JobSnapshot, Status> {
    let bad = || invalid_field("page_token: pass the next_page_token of a previous response");
    let (at, job) = t.split_once(':').ok_or_else(bad)?;
    Ok(admin::JobSnapshot {
        at_ms: at.parse().map_err(|_| bad())?,
        job_id: JobId::parse_field("page_token", job)
            .map_err(|_| bad())?
            .to_string(),
        ..Default::default()
    })
}

#[tonic::async_trait]
impl admin::admin_server::Admin for AdminService {
    async fn list_spokes(
        &self,
        request: Request<admin::ListSpokesRequest>,
    ) -> Result<Response<admin::ListSpokesResponse>, Status> {
        let principal = self.principal(&request)?;
        authorize(
            principal.may(Operation::ListSpokes, None),
            Operation::ListSpokes,
            "spokes",
        )?;
        let answers = self
            .commander
            .info_all(self.commander.config().spokes.clone())
            .await;
        let spokes = answers
            .into_iter()
            .map(|a| {
                let u = self.health.get(&a.entry.id);
                let mut h = admin::SpokeHealth {
                    spoke_id: a.entry.id.to_string(),
                    address: a.entry.address.clone(),
                    labels: a
                        .entry
                        .labels
                        .iter()
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect(),
                    events: Some(admin::EventUpstream {
                        connected: u.connected,
                        last_seen_ms: u.last_seen_ms.unwrap_or(0),
                        error: u.error,
                        events: u.events,
                        lag_ms: u.lag_ms,
                    }),
                    ..Default::default()
                };
                match a.info {
                    Ok(i) => {
                        h.reachable = true;
                        h.rtt_ms = (a.rtt.as_secs_f64() * 10_000.0).round() / 10.0;
                        h.version = i.version;
                        h.profiles = i.profiles;
                        h.queue = i.queue;
                        h.draining = i.draining;
                    }
                    Err(e) => h.error = e,
                }
                h
            })
            .collect();
        Ok(Response::new(admin::ListSpokesResponse { spokes }))
    }

    async fn spawn(
        &self,
        request: Request<admin::SpawnRequest>,
    ) -> Result<Response<admin::JobResponse>, Status> {
        let principal = self.principal(&request)?;
        let r = request.into_inner();
        let bytes = commander::request_bytes(&r, |r| r.request_id.clear());
        let request_id = request_id(&r.request_id)?;
        let spawn = r.spawn.ok_or_else(|| {
            invalid_field("spawn is missing: give at least spawn.profile and spawn.workspace")
        })?;
        let checked =
            mosaic_spoke::command::SpawnRequest::try_from(spawn.clone()).map_err(invalid_field)?;
        authorize(
            principal.may(Operation::Spawn, Some(&checked.workspace)),
            Operation::Spawn,
            &format!("workspace {}", checked.workspace),
        )?;
        let spoke = optional(&r.spoke_id, |v| SpokeId::parse_field("spoke_id", v))?;
        let target = match spoke {
            Some(_) if !r.selector.is_empty() => {
                return Err(invalid_field("give spoke_id or selector, not both"));
            }
            Some(s) => commander::Target::Spoke(s),
            None => commander::Target::Place {
                selector: Labels::new(r.selector)
                    .map_err(|e| invalid_field(format!("selector: {e}")))?,
                profile: checked.profile.clone(),
            },
        };
        let done = self
            .commander
            .execute(
                Asker {
                    caller: principal.name().as_str(),
                    workspace: Some(&checked.workspace),
                    request_id: request_id.as_ref(),
                    request: &bytes,
                },
                target,
                pb::command::Action::Spawn(spawn),
            )
            .await
            .map_err(|e| command_status(e, None))?;
        let job = done.receipt.job().cloned().ok_or_else(|| {
            status(
                Code::Internal,
                format!("spoke {} answered without a job", done.spoke),
                "bad_receipt",
            )
        })?;
        tracing::info!(token = %principal.name(), spoke = %done.spoke, job = %job.job_id, replayed = done.replayed, "spawned");
        Ok(Response::new(job_response(job, &done)))
    }

    async fn get_status(
        &self,
        request: Request<admin::GetStatusRequest>,
    ) -> Result<Response<admin::JobResponse>, Status> {
        let principal = self.principal(&request)?;
        let r = request.into_inner();
        let job = job_of(&r.id)?;
        let spoke = optional(&r.spoke_id, |v| SpokeId::parse_field("spoke_id", v))?;
        let op = Operation::GetStatus;
        let at = self.locate(&principal, op, &r.id, &job, spoke).await?;
        let done = self
            .commander
            .execute(
                Asker {
                    caller: principal.name().as_str(),
                    workspace: at.workspace.as_ref(),
                    request_id: None,
                    request: &[],
                },
                commander::Target::Spoke(at.spoke),
                pb::command::Action::Status(pb::Status { id: r.id.clone() }),
            )
            .await
            .map_err(|e| command_status(e, Some(&r.id)))?;
        let job = Self::visible_job(&principal, op, &r.id, &done)?;
        Ok(Response::new(job_response(job, &done)))
    }

    async fn kill(
        &self,
        request: Request<admin::KillRequest>,
    ) -> Result<Response<admin::JobResponse>, Status> {
        let principal = self.principal(&request)?;
        let r = request.into_inner();
        let bytes = commander::request_bytes(&r, |r| r.request_id.clear());
        let request_id = request_id(&r.request_id)?;
        let job = job_of(&r.id)?;
        let spoke = optional(&r.spoke_id, |v| SpokeId::parse_field("spoke_id", v))?;
        let op = Operation::Kill;
        let mut at = self.locate(&principal, op, &r.id, &job, spoke).await?;
        if at.workspace.is_none() {
            // Never kill what the caller may not see: learn the job's workspace first.
            let done = self
                .commander
                .execute(
                    Asker {
                        caller: principal.name().as_str(),
                        workspace: None,
                        request_id: None,
                        request: &[],
                    },
                    commander::Target::Spoke(at.spoke.clone()),
                    pb::command::Action::Status(pb::Status { id: r.id.clone() }),
                )
                .await
                .map_err(|e| command_status(e, Some(&r.id)))?;
            let seen = Self::visible_job(&principal, op, &r.id, &done)?;
            at.workspace = seen.workspace.parse().ok();
        }
        let done = self
            .commander
            .execute(
                Asker {
                    caller: principal.name().as_str(),
                    workspace: at.workspace.as_ref(),
                    request_id: request_id.as_ref(),
                    request: &bytes,
                },
                commander::Target::Spoke(at.spoke),
                pb::command::Action::Kill(pb::Kill { id: r.id.clone() }),
            )
            .await
            .map_err(|e| command_status(e, Some(&r.id)))?;
        let job = Self::visible_job(&principal, op, &r.id, &done)?;
        tracing::info!(token = %principal.name(), spoke = %done.spoke, job = %job.job_id, "killed");
        Ok(Response::new(job_response(job, &done)))
    }

    async fn list_agents(
        &self,
        request: Request<admin::ListAgentsRequest>,
    ) -> Result<Response<admin::ListAgentsResponse>, Status> {
        let principal = self.principal(&request)?;
        let r = request.into_inner();
        let workspace = optional(&r.workspace, |v| WorkspaceId::parse_field("workspace", v))?;
        let op = Operation::ListAgents;
        authorize(
            principal.may(op, workspace.as_ref()),
            op,
            &format!("workspace {}", r.workspace),
        )?;
        let spoke = optional(&r.spoke_id, |v| SpokeId::parse_field("spoke_id", v))?;
        let limit = page_size(r.limit)?;
        if r.states.len() > 16 {
            return Err(invalid_field("states: at most 16"));
        }
        let states = r
            .states
            .iter()
            .map(|&s| match pb::JobState::try_from(s) {
                Ok(pb::JobState::Unspecified) | Err(_) => {
                    Err(invalid_field(format!("states: {s} is not a job state")))
                }
                Ok(s) => Ok(s as i32),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let after = if r.page_token.is_empty() {
            None
        } else {
            Some(parse_agents_token(&r.page_token)?)
        };
        let (mut jobs, _) = self
            .store
            .snapshot_all()
            .await
            .map_err(|e| store_unavailable(&e))?;
        let visible = principal.visible_workspaces();
        jobs.retain(|j| {
            let ws_ok = j.workspace.parse().is_ok_and(|w: WorkspaceId| {
                visible.contains(&w) && workspace.as_ref().is_none_or(|want| want == &w)
            });
            ws_ok
                && spoke.as_ref().is_none_or(|s| s.as_str() == j.spoke_id)
                && (states.is_empty() || states.contains(&j.state))
                && after
                    .as_ref()
                    .is_none_or(|a| newer_first(a, j) == std::cmp::Ordering::Less)
        });
        jobs.sort_by(newer_first);
        let more = jobs.len() > limit;
        jobs.truncate(limit);
        let next_page_token = match jobs.last() {
            Some(last) if more => agents_token(last),
            _ => String::new(),
        };
        Ok(Response::new(admin::ListAgentsResponse {
            jobs,
            next_page_token,
        }))
    }

    async fn queue_stats(
        &self,
        request: Request<admin::QueueRequest>,
    ) -> Result<Response<admin::QueueResponse>, Status> {
        self.queue_command(
            request,
            Operation::QueueStats,
            pb::command::Action::QueueStats(pb::QueueStats {}),
        )
        .await
    }

    async fn pause_queue(
        &self,
        request: Request<admin::QueueRequest>,
    ) -> Result<Response<admin::QueueResponse>, Status> {
        self.queue_command(
            request,
            Operation::PauseQueue,
            pb::command::Action::PauseQueue(pb::PauseQueue {}),
        )
        .await
    }

    async fn resume_queue(
        &self,
        request: Request<admin::QueueRequest>,
    ) -> Result<Response<admin::QueueResponse>, Status> {
        self.queue_command(
            request,
            Operation::ResumeQueue,
            pb::command::Action::ResumeQueue(pb::ResumeQueue {}),
        )
        .await
    }

    async fn audit(
        &self,
        request: Request<admin::AuditRequest>,
    ) -> Result<Response<admin::AuditResponse>, Status> {
        let principal = self.principal(&request)?;
        let r = request.into_inner();
        authorize(
            principal.may(Operation::Audit, None),
            Operation::Audit,
            "audit",
        )?;
        let spoke = optional(&r.spoke_id, |v| SpokeId::parse_field("spoke_id", v))?;
        let command = optional(&r.command_id, |v| {
            mosaic_shared::ids::CommandId::parse_field("command_id", v)
        })?;
        let limit = page_size(r.limit)?;
        let token_ok = r.page_token.len() <= 160 && r.page_token.as_bytes().get(16) == Some(&b':');
        if !r.page_token.is_empty() && !token_ok {
            return Err(invalid_field(
                "page_token: pass the next_page_token of a previous response",
            ));
        }
        let audit = self.commander.audit();
        let (mut records, next) = match command {
            Some(c) => (
                audit
                    .get(&c)
                    .await
                    .map_err(|e| store_unavailable(&e))?
                    .into_iter()
                    .collect(),
                None,
            ),
            None => {
                let page = audit
                    .list(
                        (!r.page_token.is_empty()).then_some(r.page_token.as_str()),
                        limit,
                        |rec| spoke.as_ref().is_none_or(|s| s.as_str() == rec.spoke_id),
                    )
                    .await
                    .map_err(|e| store_unavailable(&e))?;
                (page.records, page.next)
            }
        };
        let (hubs, spokes) = self.audit_keys();
        for rec in &mut records {
            match audit::verify(rec, &hubs, &spokes) {
                Ok(()) => rec.verified = true,
                Err(why) => rec.verify_error = why,
            }
        }
        let keys = hubs
            .values()
            .chain(spokes.values())
            .map(|k| (k.id().to_string(), k.to_pem()))
            .collect();
        Ok(Response::new(admin::AuditResponse {
            records,
            next_page_token: next.unwrap_or_default(),
            keys,
        }))
    }

    type WatchStream = tokio_stream::wrappers::ReceiverStream<Result<admin::WatchResponse, Status>>;

    async fn watch(
        &self,
        request: Request<admin::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let principal = self.principal(&request)?;
        let rx = self.start_watch(principal, request.into_inner())?;
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }
}
