//! The admin API over HTTP (TLS with the hub's certificate, HTTP/1.1 or HTTP/2): so far
//! `GET /v1/watch`, the `Watch` operation as server-sent events.
//!
//! Handlers share the gRPC service's logic (`admin::AdminService::authenticate` and
//! `start_watch`), never copy it: they only turn query parameters into the same request and
//! items into events. Refusals map from gRPC codes to HTTP statuses in one place
//! ([`http_status`]) and carry the same reason; nothing internal leaks. Each SSE event's `id`
//! is the hub cursor, so a standard client resumes with `Last-Event-ID`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event as Sse, KeepAlive};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use mosaic_shared::pb::admin::v1 as admin;
use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;

use crate::admin::{AdminService, CURSOR_KEY, REASON_KEY};
use crate::render;

/// The HTTP routes, over the same service as gRPC.
pub fn router(service: Arc<AdminService>) -> Router {
    Router::new()
        .route("/v1/watch", get(watch))
        .with_state(service)
}

/// Serves `router` over TLS on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    tls: rustls::ServerConfig,
    router: Router,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
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
        let (acceptor, router) = (acceptor.clone(), router.clone());
        connections.spawn(async move {
            let Ok(tls) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let Ok(tls) = tls else { return };
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
    headers: HeaderMap,
    query: Result<Query<WatchQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return bad_request(format!("watch: {}", e.body_text())),
    };
    let principal = match service.authenticate(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok()),
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
