//! The hub's Prometheus metrics, served on the ops port (`mosaic_shared::ops`).
//!
//! Registered here by name, in one place; each is updated by the part it describes: the
//! commander counts and times signed commands, [`GrpcRequests`] and [`count_http`] count admin
//! requests, the upstreams keep their gauges in `upstream::Health`, the fan-out counts
//! watchers, and the store counts Valkey errors.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tracing::Instrument as _;

use axum::extract::{MatchedPath, State};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use mosaic_shared::ops::CommonMetrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub verb: &'static str,
    /// `ok`, `replayed` (answered from the audit trail), or why not.
    pub outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabel {
    pub verb: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AdminLabels {
    /// `grpc` or `http`.
    pub transport: &'static str,
    /// The gRPC method (`Spawn`), or the HTTP method and route (`POST /v1/jobs`).
    pub operation: String,
    /// The gRPC code (`Ok`, `NotFound`, …) or the HTTP status (`200`, `404`, …).
    pub code: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SpokeLabel {
    pub spoke: String,
}

/// The upstreams' gauges and counters, kept by `upstream::Health`.
#[derive(Clone, Default)]
pub struct UpstreamMetrics {
    pub connected: Family<SpokeLabel, Gauge>,
    /// Age of the newest event when it reached the hub's log, in seconds.
    pub lag_seconds: Family<SpokeLabel, Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub events: Family<SpokeLabel, Counter>,
}

#[derive(Clone)]
pub struct HubMetrics {
    pub common: CommonMetrics,
    pub commands: Family<CommandLabels, Counter>,
    pub command_duration: Family<VerbLabel, Histogram>,
    pub admin_requests: Family<AdminLabels, Counter>,
    pub subscribers: Gauge,
}

impl HubMetrics {
    pub fn register(registry: &mut Registry, upstream: &UpstreamMetrics) -> Self {
        let m = HubMetrics {
            common: CommonMetrics::register(registry, "mosaic-hub"),
            commands: Family::default(),
            // From 1 ms to about 4.4 minutes, by factors of 4.
            command_duration: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.001, 4.0, 10))
            }),
            admin_requests: Family::default(),
            subscribers: Gauge::default(),
        };
        registry.register(
            "mosaic_hub_commands",
            "Signed commands sent to spokes, by verb and outcome",
            m.commands.clone(),
        );
        registry.register(
            "mosaic_hub_command_duration_seconds",
            "Time from an admin request's command to the spoke's verified receipt, by verb",
            m.command_duration.clone(),
        );
        registry.register(
            "mosaic_hub_admin_requests",
            "Admin API requests by transport, operation and answer",
            m.admin_requests.clone(),
        );
        registry.register(
            "mosaic_hub_upstream_connected",
            "1 while the hub follows the spoke's events",
            upstream.connected.clone(),
        );
        registry.register(
            "mosaic_hub_upstream_lag_seconds",
            "How old the spoke's newest event was when it reached the hub's log",
            upstream.lag_seconds.clone(),
        );
        registry.register(
            "mosaic_hub_upstream_events",
            "Events taken from each spoke since the hub started",
            upstream.events.clone(),
        );
        registry.register(
            "mosaic_hub_subscribers",
            "Open watches (gRPC and server-sent events)",
            m.subscribers.clone(),
        );
        registry.register(
            "mosaic_hub_valkey_errors",
            "Failed calls to the hub's Valkey",
            crate::store::VALKEY_ERRORS.clone(),
        );
        m
    }
}

/// Counts admin gRPC requests by method and the status the response carries in its headers
/// (a refusal is a trailers-only response; a response without one began with data: `Ok`).
#[derive(Clone)]
pub struct GrpcRequests<S> {
    inner: S,
    counts: Family<AdminLabels, Counter>,
}

impl<S> GrpcRequests<S> {
    pub fn layer(
        counts: Family<AdminLabels, Counter>,
    ) -> impl tower::Layer<S, Service = GrpcRequests<S>> + Clone {
        tower::layer::layer_fn(move |inner| GrpcRequests {
            inner,
            counts: counts.clone(),
        })
    }
}

const ADMIN_PATH: &str = "/mosaic.admin.v1.Admin/";

impl<S, B, R> tower::Service<axum::http::Request<B>> for GrpcRequests<S>
where
    S: tower::Service<axum::http::Request<B>, Response = axum::http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        // Health and reflection are not admin operations.
        let operation = req.uri().path().strip_prefix(ADMIN_PATH).map(str::to_owned);
        let counts = self.counts.clone();
        let span = request_span("grpc", operation.as_deref().unwrap_or("-"), req.headers());
        let fut = span.in_scope(|| self.inner.call(req)).instrument(span);
        Box::pin(async move {
            let res = fut.await?;
            if let Some(operation) = operation {
                let code = res
                    .headers()
                    .get("grpc-status")
                    .map_or(tonic::Code::Ok, |v| tonic::Code::from_bytes(v.as_bytes()));
                counts
                    .get_or_create(&AdminLabels {
                        transport: "grpc",
                        operation,
                        code: format!("{code:?}"),
                    })
                    .inc();
            }
            Ok(res)
        })
    }
}

/// The span of one admin request, a child of the caller's span when the request carries a W3C
/// `traceparent` header (gRPC metadata is headers too).
fn request_span(
    transport: &'static str,
    operation: &str,
    headers: &axum::http::HeaderMap,
) -> tracing::Span {
    let span = tracing::info_span!("admin", transport, operation);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
    };
    mosaic_shared::telemetry::follow(&span, header("traceparent"), header("tracestate"));
    span
}

/// Axum middleware: counts admin HTTP requests by method, route and status.
pub async fn count_http(
    State(counts): State<Family<AdminLabels, Counter>>,
    path: Option<MatchedPath>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = req.method().clone();
    let span = request_span(
        "http",
        &format!(
            "{method} {}",
            path.as_ref().map_or("(no route)", |p| p.as_str())
        ),
        req.headers(),
    );
    let res = next.run(req).instrument(span).await;
    counts
        .get_or_create(&AdminLabels {
            transport: "http",
            operation: format!(
                "{method} {}",
                path.as_ref().map_or("(no route)", |p| p.as_str())
            ),
            code: res.status().as_u16().to_string(),
        })
        .inc();
    res
}
