//! The operations port: Prometheus metrics, liveness and readiness for probes and scrapers.
//!
//! One plaintext listener (`ops_listen` in either binary's config) answers, on the same port:
//! - `GET /metrics`: every metric of the process's [`Registry`] in the OpenMetrics text format;
//! - `GET /healthz`: 200 while the process serves (liveness);
//! - `GET /readyz`: 200 when [`Readiness`] says ready, else 503 with the reason (readiness);
//! - `grpc.health.v1.Health` over h2c: service `""` and the binary's own service follow
//!   readiness, for Kubernetes `grpc` probes, which speak plaintext HTTP/2.
//!
//! It carries no secrets and changes nothing, so it needs no TLS or authentication; bind it
//! to an address only the cluster's scrapers and the kubelet reach.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Whether the process should receive traffic, and if not, why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    NotReady(String),
}

impl Readiness {
    pub fn is_ready(&self) -> bool {
        matches!(self, Readiness::Ready)
    }

    /// Puts `self` in `ready`, waking its watchers (the gRPC health follower) only on a
    /// change.
    pub fn publish(self, ready: &watch::Sender<Readiness>) {
        ready.send_if_modified(|r| {
            let changed = *r != self;
            *r = self;
            changed
        });
    }
}

/// The label of metrics about a reloadable piece of material.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WhatLabel {
    pub what: String,
}

/// Metrics both binaries carry: build information and the outcome of reloads.
#[derive(Clone, Default)]
pub struct CommonMetrics {
    /// Reloads that failed (the previous material stays in use), by what was reloaded.
    pub reload_failures: Family<WhatLabel, Counter>,
    /// 1 while the last reload of this material succeeded (or none was tried), 0 after a
    /// failed one.
    pub reload_ok: Family<WhatLabel, Gauge>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: String,
    binary: String,
}

impl CommonMetrics {
    /// Registers the common metrics under `mosaic_` and sets `mosaic_build_info`.
    pub fn register(registry: &mut Registry, binary: &str) -> Self {
        let m = CommonMetrics::default();
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                binary: binary.to_owned(),
            })
            .set(1);
        registry.register("mosaic_build_info", "The running build (always 1)", build);
        registry.register(
            "mosaic_reload_failures",
            "Reloads of certificates, keys or tokens that failed; the previous material stays in use",
            m.reload_failures.clone(),
        );
        registry.register(
            "mosaic_reload_ok",
            "1 while the last reload of this material succeeded, 0 after a failed one",
            m.reload_ok.clone(),
        );
        m
    }

    /// Records a reload's outcome for `what` (`tls`, `trusted_keys`, `tokens`).
    pub fn reloaded(&self, what: &str, ok: bool) {
        let label = WhatLabel {
            what: what.to_owned(),
        };
        if !ok {
            self.reload_failures.get_or_create(&label).inc();
        }
        self.reload_ok.get_or_create(&label).set(i64::from(ok));
    }
}

struct OpsState {
    registry: Arc<Registry>,
    ready: watch::Receiver<Readiness>,
}

/// Serves the operations port on `listener` until `shutdown` resolves. `service_name` is the
/// binary's main gRPC service (e.g. `mosaic.federation.v1.Federation`), reported by the health
/// service beside `""`.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    ready: watch::Receiver<Readiness>,
    service_name: &'static str,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let mut follow = ready.clone();
    let follower = tokio::spawn(async move {
        loop {
            let status = if follow.borrow_and_update().is_ready() {
                tonic_health::ServingStatus::Serving
            } else {
                tonic_health::ServingStatus::NotServing
            };
            reporter.set_service_status("", status).await;
            reporter.set_service_status(service_name, status).await;
            if follow.changed().await.is_err() {
                return;
            }
        }
    });
    let state = Arc::new(OpsState { registry, ready });
    let router = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(state)
        .merge(tonic::service::Routes::new(health).into_axum_router());
    let addr: Option<SocketAddr> = listener.local_addr().ok();
    tracing::info!(addr = ?addr, "serving metrics and health on the ops port");
    let served = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await;
    follower.abort();
    served
}

async fn metrics(State(state): State<Arc<OpsState>>) -> impl IntoResponse {
    let mut body = String::new();
    match prometheus_client::encoding::text::encode(&mut body, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            body,
        ),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("cannot encode metrics: {e}\n"),
        ),
    }
}

async fn readyz(State(state): State<Arc<OpsState>>) -> impl IntoResponse {
    match &*state.ready.borrow() {
        Readiness::Ready => (StatusCode::OK, "ready\n".to_owned()),
        Readiness::NotReady(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reloads_are_counted_and_the_gauge_follows_the_last_outcome() {
        let mut registry = Registry::default();
        let m = CommonMetrics::register(&mut registry, "test");
        m.reloaded("tls", true);
        m.reloaded("tls", false);
        m.reloaded("tokens", true);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        assert!(
            out.contains("mosaic_reload_failures_total{what=\"tls\"} 1"),
            "{out}"
        );
        assert!(out.contains("mosaic_reload_ok{what=\"tls\"} 0"), "{out}");
        assert!(out.contains("mosaic_reload_ok{what=\"tokens\"} 1"), "{out}");
        assert!(
            !out.contains("mosaic_reload_failures_total{what=\"tokens\"}"),
            "{out}"
        );
        assert!(out.contains("mosaic_build_info{version=\""), "{out}");
    }
}
