//! The hub's admin API (`mosaic.admin.v1`) over gRPC: authentication of every call by bearer
//! token, authorization by role and workspace, and the one mapping of refusals to statuses.
//!
//! A caller never learns that something of another workspace exists: what it may not see is
//! answered exactly like what does not exist. Handlers validate each request once into
//! domain values and hand them to the hub's parts (`fanout`, ...); this module holds no state
//! of its own beyond what it was given. Refusals carry a stable reason in `x-mosaic-reason`.

use std::sync::Arc;

use mosaic_shared::ids::{JobId, SpokeId, WorkspaceId};
use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use tokio::sync::mpsc;
use tonic::{Code, Request, Response, Status};

use std::time::{Duration, Instant};

use crate::auth::{self, Decision, Operation, Principal, TokenStore};
use crate::config::{HubConfig, SpokeEntry};
use crate::fanout::{Fanout, Scope, Start, Target, WatchEnd};
use crate::spokes::SpokeClient;
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
    config: Arc<HubConfig>,
    health: Health,
}

/// Longest a spoke may take to answer `Info` for `ListSpokes`.
const INFO_WITHIN: Duration = Duration::from_secs(3);

impl AdminService {
    pub fn new(
        tokens: Arc<TokenStore>,
        fanout: Arc<Fanout>,
        config: Arc<HubConfig>,
        health: Health,
    ) -> Self {
        AdminService {
            tokens,
            fanout,
            config,
            health,
        }
    }

    /// The caller, from its bearer token; default deny.
    fn principal<T>(&self, request: &Request<T>) -> Result<Principal, Status> {
        let header = match request.metadata().get("authorization") {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .map_err(|_| unauthenticated("the authorization header is not text"))?,
            ),
        };
        self.authenticate(header)
    }

    /// The caller, from the value of its `authorization` header (gRPC metadata or HTTP).
    pub fn authenticate(&self, header: Option<&str>) -> Result<Principal, Status> {
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
            };
            if let Some(s) = end {
                let _ = tx.send(Err(s)).await;
            }
        });
        Ok(rx)
    }
}

fn unauthenticated(why: &str) -> Status {
    status(
        Code::Unauthenticated,
        format!(
            "{why}; send `authorization: Bearer <token>` with a token from the hub's tokens file"
        ),
        "unauthenticated",
    )
}

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

/// One spoke's health: `Info` now (bounded), and its event upstream.
async fn spoke_health(
    config: &HubConfig,
    entry: &SpokeEntry,
    health: &Health,
) -> admin::SpokeHealth {
    let started = Instant::now();
    let info = tokio::time::timeout(INFO_WITHIN, async {
        SpokeClient::connect(config, &entry.id).await?.info().await
    })
    .await;
    let u = health.get(&entry.id);
    let mut h = admin::SpokeHealth {
        spoke_id: entry.id.to_string(),
        address: entry.address.clone(),
        events: Some(admin::EventUpstream {
            connected: u.connected,
            last_seen_ms: u.last_seen_ms.unwrap_or(0),
            error: u.error,
            events: u.events,
            lag_ms: u.lag_ms,
        }),
        ..Default::default()
    };
    match info {
        Ok(Ok(i)) => {
            h.reachable = true;
            h.rtt_ms = (started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
            h.version = i.version;
            h.profiles = i.profiles;
            h.queue = i.queue;
        }
        Ok(Err(e)) => h.error = e.to_string(),
        Err(_) => {
            h.error = format!(
                "spoke {} did not answer within {} s",
                entry.id,
                INFO_WITHIN.as_secs()
            );
        }
    }
    h
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
        let mut asks = tokio::task::JoinSet::new();
        for (i, entry) in self.config.spokes.iter().enumerate() {
            let (config, entry, health) = (self.config.clone(), entry.clone(), self.health.clone());
            asks.spawn(async move { (i, spoke_health(&config, &entry, &health).await) });
        }
        let mut spokes = vec![admin::SpokeHealth::default(); self.config.spokes.len()];
        while let Some(done) = asks.join_next().await {
            let (i, h) = done.map_err(|e| status(Code::Internal, e.to_string(), "internal"))?;
            spokes[i] = h;
        }
        Ok(Response::new(admin::ListSpokesResponse { spokes }))
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
