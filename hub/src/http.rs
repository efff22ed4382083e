//! The admin API over HTTP (TLS with the hub's certificate, HTTP/1.1 or HTTP/2): every
//! operation of `mosaic.admin.v1` as JSON (the proto3 JSON mapping of the same messages, field
//! names as in the .proto), `Watch` as server-sent events, and the OpenAPI document that
//! describes them (`GET /v1/openapi.json`, generated from the .proto files and [`ROUTES`]).
//!
//! Handlers call the gRPC service's own methods with the caller's `Authorization` header as
//! metadata, so authentication, validation and authorization are the same code; they only
//! turn paths, query parameters and bodies into the request message. Refusals map from gRPC
//! codes to HTTP statuses in one place ([`http_status`]) and carry the same reason; nothing
//! internal leaks. Each SSE event's `id` is the hub cursor, so a standard client resumes with
//! `Last-Event-ID`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Extension, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::admin::v1::admin_server::Admin as _;
use mosaic_shared::pb::federation::v1 as pb;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;

use crate::admin::{AdminService, CURSOR_KEY, PeerIdentity, REASON_KEY};
use crate::openapi::{Body, Param, ParamIn, ParamSchema, Route};
use crate::render;

/// Largest request body accepted.
const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The HTTP routes, over the same service as gRPC.
pub fn router(service: Arc<AdminService>) -> Router {
    Router::new()
        .route("/v1/spokes", get(list_spokes))
        .route("/v1/jobs", post(spawn).get(list_agents))
        .route("/v1/jobs/{id}", get(get_status))
        .route("/v1/jobs/{id}/kill", post(kill))
        .route("/v1/spokes/{spoke_id}/queue", get(queue_stats))
        .route("/v1/spokes/{spoke_id}/queue/pause", post(pause_queue))
        .route("/v1/spokes/{spoke_id}/queue/resume", post(resume_queue))
        .route("/v1/audit", get(audit))
        .route("/v1/watch", get(watch))
        .route("/v1/openapi.json", get(openapi))
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(service)
}

type Svc = State<Arc<AdminService>>;

/// Calls the gRPC handler `f` with the HTTP caller's `Authorization` header as metadata and
/// its client certificate's identity as an extension, and answers with its response as JSON,
/// or with its refusal.
async fn call<Req, Resp, Fut>(
    headers: &HeaderMap,
    peer: PeerIdentity,
    request: Req,
    f: impl FnOnce(tonic::Request<Req>) -> Fut,
) -> Response
where
    Fut: std::future::Future<Output = Result<tonic::Response<Resp>, tonic::Status>>,
    Resp: serde::Serialize,
{
    let mut r = tonic::Request::new(request);
    r.extensions_mut().insert(peer);
    if let Some(v) = headers.get(header::AUTHORIZATION) {
        match v.to_str().ok().and_then(|v| v.parse().ok()) {
            Some(v) => {
                r.metadata_mut().insert("authorization", v);
            }
            None => {
                return refusal(&crate::admin::unauthenticated(
                    "the authorization header is not text",
                ));
            }
        }
    }
    match f(r).await {
        Ok(response) => Json(response.into_inner()).into_response(),
        Err(s) => refusal(&s),
    }
}

/// A JSON body as the request message (empty: all defaults). Unknown fields are refused.
fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8], what: &str) -> Result<T, String> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| format!("{what}: the body is not valid: {e}"))
}

async fn list_spokes(
    State(s): Svc,
    Extension(peer): Extension<PeerIdentity>,
    headers: HeaderMap,
) -> Response {
    call(
        &headers,
        peer,
        admin::ListSpokesRequest {},
        |r| async move { s.list_spokes(r).await },
    )
    .await
}

async fn spawn(
    State(s): Svc,
    Extension(peer): Extension<PeerIdentity>,
    headers: HeaderMap,
    bytes: Bytes,
) -> Response {
    let request: admin::SpawnRequest = match body(&bytes, "spawn") {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    call(&headers, peer, request, |r| async move { s.spawn(r).await }).await
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct SpokeQuery {
    spoke_id: Option<String>,
}

async fn get_status(
    State(s): Svc,
    Extension(peer): Extension<PeerIdentity>,
    headers: HeaderMap,
    Path(id): Path<String>,
    query: Result<Query<SpokeQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return bad_request(format!("get_status: {}", e.body_text())),
    };
    let request = admin::GetStatusRequest {
        id,
        spoke_id: q.spoke_id.unwrap_or_default(),
    };
    call(
        &headers,
        peer,
        request,
        |r| async move { s.get_status(r).await },
    )
    .await
}

async fn kill(
    State(s): Svc,
    Extension(peer): Extension<PeerIdentity>,
    headers: HeaderMap,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Response {
    let mut request: admin::KillRequest = match body(&bytes, "kill") {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    if !request.id.is_empty() && request.id != id {
        return bad_request("kill.id: the body names another job than the path".into());
    }
    request.id = id;
    call(&headers, peer, request, |r| async move { s.kill(r).await }).await
}

/// `GET /v1/jobs` parameters; `states` is comma-separated (`pending,executing` or the enum
/// names).
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentsQuery {
    workspace: Option<String>,
    spoke_id: Option<String>,
    states: Option<String>,
    limit: Option<u32>,
    page_token: Option<String>,
}

async fn list_agents(
    State(s): Svc,
    Extension(peer): Extension<PeerIdentity>,
    headers: HeaderMap,
    query: Result<Query<AgentsQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return bad_request(format!("list_agents: {}", e.body_text())),
    };
    let mut states = Vec::new();
    for name in q
        .states
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|t| !t.is_empty())
    {
        let full = if name.starts_with("JOB_STATE_") {
            name.to_owned()
        } else {
            format!("JOB_STATE_{}", name.to_ascii_uppercase())
        };
        match pb::JobState::from_str_name(&full) {
            Some(st) if st != pb::JobState::Unspecified => states.push(st as i32),
            _ => return bad_request(format!("list_agents.states: {name:?} is not a job state")),
        }
    }
    let request = admin::ListAgentsRequest {
        workspace: q.workspace.unwrap_or_default(),
        spoke_id: q.spoke_id.unwrap_or_default(),
        states,
        limit: q.limit.unwrap_or(0),
        page_token: q.page_token.unwrap_or_default(),
    };
    call(&headers, peer, request, |r| async move {
        s.list_agents(r).await
    })
    .await
}

fn queue_request(spoke_id: String) -> admin::QueueRequest {
    admin::QueueRequest { spoke_id }
}

async fn queue_stats(
    State(s): Svc,
    Extension(peer): Extension<PeerIdentity>,
    headers: HeaderMap,
    Path(spoke): Path<String>,
) -> Response {
    call(&headers, peer, queue_request(spoke), |r| async move {
        s.queue_stats(r).await
    })
    .await
}

async fn pause_queue(
    State(s): Svc,
    Extension(peer): Extension<PeerIdentity>,
    headers: HeaderMap,
    Path(spoke): Path<String>,
) -> Response {
    call(&headers, peer, queue_request(spoke), |r| async move {
        s.pause_queue(r).await
    })
    .await
}

async fn resume_queue(
    State(s): Svc,
    Extension(peer): Extension<PeerIdentity>,
    headers: HeaderMap,
    Path(spoke): Path<String>,
) -> Response {
    call(&headers, peer, queue_request(spoke), |r| async move {
        s.resume_queue(r).await
    })
    .await
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    spoke_id: Option<String>,
    command_id: Option<String>,
    limit: Option<u32>,
    page_token: Option<String>,
}

async fn audit(
    State(s): Svc,
    Extension(peer): Extension<PeerIdentity>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, QueryRejection>,
) -> Response {
    let q = match query {
        Ok(Query(q)) => q,
        Err(e) => return bad_request(format!("audit: {}", e.body_text())),
    };
    let request = admin::AuditRequest {
        spoke_id: q.spoke_id.unwrap_or_default(),
        command_id: q.command_id.unwrap_or_default(),
        limit: q.limit.unwrap_or(0),
        page_token: q.page_token.unwrap_or_default(),
    };
    call(&headers, peer, request, |r| async move { s.audit(r).await }).await
}

/// The OpenAPI document: public, like the .proto files it is generated from.
async fn openapi() -> Response {
    match crate::openapi::document(
        mosaic_shared::pb::DESCRIPTOR_SET,
        ROUTES,
        "Mosaic federation hub admin API",
        env!("CARGO_PKG_VERSION"),
    ) {
        Ok(doc) => Json(doc).into_response(),
        Err(e) => {
            tracing::error!(error = %e, "cannot build the OpenAPI document");
            refusal(&tonic::Status::internal(
                "the OpenAPI document is unavailable",
            ))
        }
    }
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: mosaic_shared::tls::ReloadableServerConfig,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    // Connections end with the server: long-lived event streams must not hold a shutdown.
    let mut connections = tokio::task::JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = tcp.set_nodelay(true);
        // The TLS configuration in force when the connection arrived (see `reload`).
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.current());
        let router = router.clone();
        connections.spawn(async move {
            let Ok(tls) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let Ok(tls) = tls else { return };
            // The TLS layer verified a client certificate against the hub's CA, if one came.
            let peer = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .and_then(|c| mosaic_shared::tls::identity_of(c).ok());
            let router = router.layer(axum::Extension(PeerIdentity(peer)));
            let service = hyper_util::service::TowerToHyperService::new(router);
            let _ =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
        });
        // Reap finished connections as we go, so the set stays small.
        while connections.try_join_next().is_some() {}
    }
}

/// The one mapping from a refusal to an HTTP answer: status, and a JSON body with the
/// message, the gRPC code's name and the machine-readable reason.
fn refusal(s: &tonic::Status) -> Response {
    let reason = s
        .metadata()
        .get(REASON_KEY)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let body = serde_json::json!({
        "error": s.message(),
        "code": format!("{:?}", s.code()),
        "reason": reason,
    });
    (http_status(s.code()), Json(body)).into_response()
}

/// gRPC codes as HTTP statuses (the mapping Google's APIs use).
pub fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code as C;
    match code {
        C::Ok => StatusCode::OK,
        C::InvalidArgument | C::FailedPrecondition | C::OutOfRange => StatusCode::BAD_REQUEST,
        C::Unauthenticated => StatusCode::UNAUTHORIZED,
        C::PermissionDenied => StatusCode::FORBIDDEN,
        C::NotFound => StatusCode::NOT_FOUND,
        C::AlreadyExists | C::Aborted => StatusCode::CONFLICT,
        C::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        C::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        C::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        C::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        C::Cancelled | C::Unknown | C::Internal | C::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// `GET /v1/watch` parameters: one of `workspace`, `job_id`, `spoke_id`; `types`
/// (comma-separated names such as `step.output,job.progress`); `after` (or the
/// `Last-Event-ID` header); `from_oldest`; `snapshot`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatchQuery {
    workspace: Option<String>,
    job_id: Option<String>,
    spoke_id: Option<String>,
    types: Option<String>,
    after: Option<String>,
    #[serde(default)]
    from_oldest: bool,
    #[serde(default)]
    snapshot: bool,
}

fn bad_request(message: String) -> Response {
    refusal(&{
        let mut s = tonic::Status::invalid_argument(message);
        s.metadata_mut()
            .insert(REASON_KEY, "invalid_request".parse().expect("ascii reason"));
        s
    })
}

async fn watch(
    State(service): State<Arc<AdminService>>,
    Extension(peer): Extension<PeerIdentity>,
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(format!("watch: {}", e.body_text())),
    };
    let principal = match service.authenticate(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
        peer.0.as_ref(),
    ) {
        Ok(p) => p,
        Err(s) => return refusal(&s),
    };
    use admin::watch_request::{Scope, Start};
    let scope = match (q.workspace, q.job_id, q.spoke_id) {
        (Some(w), None, None) => Some(Scope::Workspace(w)),
        (None, Some(j), None) => Some(Scope::JobId(j)),
        (None, None, Some(s)) => Some(Scope::SpokeId(s)),
        (None, None, None) => None,
        _ => {
            return bad_request(
                "watch.scope: give only one of workspace, job_id or spoke_id".into(),
            );
        }
    };
    let mut types = Vec::new();
    for name in q
        .types
        .iter()
        .flat_map(|t| t.split(','))
        .filter(|t| !t.is_empty())
    {
        match render::parse_event_type(name) {
            Some(t) => types.push(i32::from(t)),
            None => {
                return bad_request(format!("watch.types: {name:?} is not an event type"));
            }
        }
    }
    let after = q.after.or_else(|| {
        headers
            .get("last-event-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let start = match after {
        Some(c) => Some(Start::After(c)),
        None if q.from_oldest => Some(Start::FromOldest(true)),
        None => None,
    };
    let request = admin::WatchRequest {
        scope,
        types,
        start,
        snapshot: q.snapshot,
    };
    let rx = match service.start_watch(principal, request) {
        Ok(rx) => rx,
        Err(s) => return refusal(&s),
    };
    let events = tokio_stream::wrappers::ReceiverStream::new(rx).map(|item| {
        Ok::<_, Infallible>(match item {
            Ok(item) => {
                let line = render::json_line(&item);
                let kind = match &item.item {
                    Some(admin::watch_response::Item::Event(e)) => {
                        render::event_type_name(e.r#type)
                    }
                    Some(admin::watch_response::Item::Job(_)) => "job".into(),
                    Some(admin::watch_response::Item::SnapshotEnd(_)) => "snapshot_end".into(),
                    None => "unknown".into(),
                };
                Sse::default()
                    .id(item.cursor.clone())
                    .event(kind)
                    .data(line.to_string())
            }
            // Why the watch ended, as its last event (the response status is already sent).
            Err(s) => {
                let meta = |k: &str| {
                    s.metadata()
                        .get(k)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned()
                };
                Sse::default().event("error").data(
                    serde_json::json!({
                        "error": s.message(),
                        "code": format!("{:?}", s.code()),
                        "reason": meta(REASON_KEY),
                        "cursor": meta(CURSOR_KEY),
                    })
                    .to_string(),
                )
            }
        })
    });
    axum::response::sse::Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// Every HTTP route, for the OpenAPI document (a test checks it against the router).
pub const ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/v1/spokes",
        operation_id: "ListSpokes",
        summary: "Every configured spoke with its health, labels, profiles and queue.",
        params: &[],
        request: Body::None,
        response: Body::Message("mosaic.admin.v1.ListSpokesResponse"),
        sse: false,
    },
    Route {
        method: "post",
        path: "/v1/jobs",
        operation_id: "Spawn",
        summary: "Queue a job on a named spoke, or let the hub place it by labels and load. \
                  Idempotent with request_id.",
        params: &[],
        request: Body::Message("mosaic.admin.v1.SpawnRequest"),
        response: Body::Message("mosaic.admin.v1.JobResponse"),
        sse: false,
    },
    Route {
        method: "get",
        path: "/v1/jobs",
        operation_id: "ListAgents",
        summary: "Jobs the hub has heard of, newest first, with their current agent.",
        params: &[
            Param {
                name: "workspace",
                location: ParamIn::Query,
                required: false,
                description: "Only this workspace.",
                schema: ParamSchema::String,
            },
            Param {
                name: "spoke_id",
                location: ParamIn::Query,
                required: false,
                description: "Only jobs on this spoke.",
                schema: ParamSchema::String,
            },
            Param {
                name: "states",
                location: ParamIn::Query,
                required: false,
                description: "Only these states: pending, delayed, assigned, executing, \
                              completed, failed, cancelled.",
                schema: ParamSchema::CommaList,
            },
            LIMIT,
            PAGE_TOKEN,
        ],
        request: Body::None,
        response: Body::Message("mosaic.admin.v1.ListAgentsResponse"),
        sse: false,
    },
    Route {
        method: "get",
        path: "/v1/jobs/{id}",
        operation_id: "GetStatus",
        summary: "A job (by job id or the agent id of an attempt) with every attempt.",
        params: &[JOB_ID, SPOKE_QUERY],
        request: Body::None,
        response: Body::Message("mosaic.admin.v1.JobResponse"),
        sse: false,
    },
    Route {
        method: "post",
        path: "/v1/jobs/{id}/kill",
        operation_id: "Kill",
        summary: "Cancel a job; a running attempt is stopped. Idempotent with request_id.",
        params: &[JOB_ID],
        request: Body::Message("mosaic.admin.v1.KillRequest"),
        response: Body::Message("mosaic.admin.v1.JobResponse"),
        sse: false,
    },
    Route {
        method: "get",
        path: "/v1/spokes/{spoke_id}/queue",
        operation_id: "QueueStats",
        summary: "A spoke's jobs by state, and whether dispatch is paused.",
        params: &[SPOKE_PATH],
        request: Body::None,
        response: Body::Message("mosaic.admin.v1.QueueResponse"),
        sse: false,
    },
    Route {
        method: "post",
        path: "/v1/spokes/{spoke_id}/queue/pause",
        operation_id: "PauseQueue",
        summary: "Stop starting jobs on a spoke; running attempts continue. Admin only.",
        params: &[SPOKE_PATH],
        request: Body::None,
        response: Body::Message("mosaic.admin.v1.QueueResponse"),
        sse: false,
    },
    Route {
        method: "post",
        path: "/v1/spokes/{spoke_id}/queue/resume",
        operation_id: "ResumeQueue",
        summary: "Start jobs on a spoke again. Admin only.",
        params: &[SPOKE_PATH],
        request: Body::None,
        response: Body::Message("mosaic.admin.v1.QueueResponse"),
        sse: false,
    },
    Route {
        method: "get",
        path: "/v1/audit",
        operation_id: "Audit",
        summary: "Commands the hub signed, newest first, with the spokes' signed receipts, \
                  each verified. Admin only.",
        params: &[
            Param {
                name: "spoke_id",
                location: ParamIn::Query,
                required: false,
                description: "Only commands sent to this spoke.",
                schema: ParamSchema::String,
            },
            Param {
                name: "command_id",
                location: ParamIn::Query,
                required: false,
                description: "Only this command.",
                schema: ParamSchema::String,
            },
            LIMIT,
            PAGE_TOKEN,
        ],
        request: Body::None,
        response: Body::Message("mosaic.admin.v1.AuditResponse"),
        sse: false,
    },
    Route {
        method: "get",
        path: "/v1/watch",
        operation_id: "Watch",
        summary: "Events as server-sent events: each event's id is the hub cursor (resume \
                  with Last-Event-ID), its name the event type (e.g. step.output, or job and \
                  snapshot_end in a snapshot), its data the same JSON object that \
                  `mosaic-hub watch --output json` prints per line (cursor, spoke, job_id, \
                  type, at, and the payload's fields).",
        params: &[
            Param {
                name: "workspace",
                location: ParamIn::Query,
                required: false,
                description: "Watch a workspace (give exactly one of workspace, job_id, spoke_id).",
                schema: ParamSchema::String,
            },
            Param {
                name: "job_id",
                location: ParamIn::Query,
                required: false,
                description: "Watch one job.",
                schema: ParamSchema::String,
            },
            Param {
                name: "spoke_id",
                location: ParamIn::Query,
                required: false,
                description: "Watch a spoke.",
                schema: ParamSchema::String,
            },
            Param {
                name: "types",
                location: ParamIn::Query,
                required: false,
                description: "Only these event types, e.g. step.output,job.progress.",
                schema: ParamSchema::CommaList,
            },
            Param {
                name: "after",
                location: ParamIn::Query,
                required: false,
                description: "Resume after this cursor (or send Last-Event-ID).",
                schema: ParamSchema::String,
            },
            Param {
                name: "from_oldest",
                location: ParamIn::Query,
                required: false,
                description: "Start from the oldest event the hub retains.",
                schema: ParamSchema::Boolean,
            },
            Param {
                name: "snapshot",
                location: ParamIn::Query,
                required: false,
                description: "Start with every job's current state, then a snapshot_end.",
                schema: ParamSchema::Boolean,
            },
        ],
        request: Body::None,
        response: Body::None,
        sse: true,
    },
];

const LIMIT: Param = Param {
    name: "limit",
    location: ParamIn::Query,
    required: false,
    description: "At most this many (1-1000; default 100).",
    schema: ParamSchema::Integer,
};
const PAGE_TOKEN: Param = Param {
    name: "page_token",
    location: ParamIn::Query,
    required: false,
    description: "The next_page_token of the previous page.",
    schema: ParamSchema::String,
};
const JOB_ID: Param = Param {
    name: "id",
    location: ParamIn::Path,
    required: true,
    description: "A job id, or the agent id of one of its attempts.",
    schema: ParamSchema::String,
};
const SPOKE_QUERY: Param = Param {
    name: "spoke_id",
    location: ParamIn::Query,
    required: false,
    description: "The job's spoke; default: where the hub placed it or heard of it.",
    schema: ParamSchema::String,
};
const SPOKE_PATH: Param = Param {
    name: "spoke_id",
    location: ParamIn::Path,
    required: true,
    description: "The spoke.",
    schema: ParamSchema::String,
};
