//! `mosaic-hub serve`: the hub as a long-running server.
//!
//! Wires the parts together: the tokens file (reloaded on change), the hub's Valkey, one
//! event upstream per spoke, the log's fan-out to watchers, retention, and the admin API on
//! its listener. Shutdown is an argument: when it resolves, the admin API stops accepting,
//! open watches end with `unavailable`, and the upstreams stop.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mosaic_shared::pb::admin::v1::admin_server::AdminServer;
use mosaic_shared::time::unix_ms;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::admin::AdminService;
use crate::audit::AuditStore;
use crate::auth::TokenStore;
use crate::commander::Commander;
use crate::config::HubConfig;
use crate::fanout::Fanout;
use crate::metrics::{GrpcRequests, HubMetrics};
use crate::reload::{Live, ServerTls};
use crate::store::HubStore;
use crate::upstream::{self, Health};
use mosaic_shared::ops::Readiness;
use mosaic_shared::tls::ReloadableServerConfig;

/// How often retention runs.
const MAINTENANCE_EVERY: Duration = Duration::from_secs(5);
/// Largest admin request accepted.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("{0}")]
    NotConfigured(String),
    #[error(transparent)]
    Tokens(#[from] crate::auth::AuthConfigError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("admin API server failed: {0}")]
    Serve(String),
}

/// Serves the admin API on `listener` (and over HTTP on `http`, or else on `http_listen` if
/// the config has one) and follows every spoke's events until `shutdown` resolves.
pub async fn run(
    config: HubConfig,
    listener: TcpListener,
    http: Option<TcpListener>,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let serve = match &config.serve {
        Ok(s) => s.clone(),
        Err(e) => return Err(ServeError::NotConfigured(e.to_string())),
    };
    let health = Health::default();
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = HubMetrics::register(&mut registry, &health.metrics);
    let tokens = Arc::new(TokenStore::load(&serve.tokens)?);
    tokio::spawn(crate::auth::watch_for_changes(
        tokens.clone(),
        crate::auth::POLL_INTERVAL,
        metrics.common.clone(),
    ));
    let store = HubStore::connect(&serve.valkey, &config.hub_id).await?;
    let (stop, stopping) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let live = Live::new(config);
    let config = live.current();
    for spoke in &config.spokes {
        tasks.spawn(upstream::follow(
            spoke.clone(),
            live.clone(),
            store.clone(),
            health.clone(),
            stopping.clone(),
        ));
    }
    let fanout = Fanout::new(
        store.clone(),
        config.events.subscriber_buffer,
        metrics.subscribers.clone(),
    );
    tasks.spawn(fanout.clone().tail(stopping.clone()));
    let audit = AuditStore::new(&store);
    tasks.spawn(maintain(
        store.clone(),
        audit.clone(),
        config.events.clone(),
        config.audit.clone(),
        stopping.clone(),
    ));

    let commander = Arc::new(Commander::new(live.clone(), audit, metrics.clone()));
    let service = Arc::new(AdminService::new(
        tokens,
        fanout.clone(),
        commander.clone(),
        store.clone(),
        health.clone(),
    ));
    let http =
        match (http, serve.http_listen) {
            (Some(l), _) => Some(l),
            (None, Some(addr)) => Some(TcpListener::bind(addr).await.map_err(|e| {
                ServeError::Serve(format!("cannot listen on {addr} for HTTP: {e}"))
            })?),
            (None, None) => None,
        };
    // Both admin ports' TLS, replaced on a reload (`reload`).
    let tls_error = |e: mosaic_shared::tls::TlsError| ServeError::Tls(e.to_string());
    let servers = ServerTls {
        grpc: ReloadableServerConfig::new(
            config
                .tls
                .rustls_server_config_optional_client_auth_h2()
                .map_err(tls_error)?,
        ),
        http: match &http {
            Some(_) => Some(ReloadableServerConfig::new(
                config
                    .tls
                    .rustls_server_config_optional_client_auth()
                    .map_err(tls_error)?,
            )),
            None => None,
        },
    };
    {
        let commander = commander.clone();
        let watcher = tokio::spawn(crate::reload::watch(
            live.clone(),
            servers.clone(),
            metrics.common.clone(),
            move || commander.forget_all(),
        ));
        let mut stopping = stopping.clone();
        tasks.spawn(async move {
            let _ = stopping.wait_for(|s| *s).await;
            watcher.abort();
        });
    }
    if let (Some(listener), Some(tls)) = (http, servers.http.clone()) {
        tracing::info!(
            addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            "hub serving HTTP"
        );
        let mut stopping = stopping.clone();
        tasks.spawn(crate::http::serve(
            listener,
            tls,
            crate::http::router(service.clone()).layer(axum::middleware::from_fn_with_state(
                metrics.admin_requests.clone(),
                crate::metrics::count_http,
            )),
            async move {
                let _ = stopping.wait_for(|s| *s).await;
            },
        ));
    }
    // The ops port: metrics, liveness, readiness (the hub's Valkey answers, not stopping).
    let ops_addr = match serve.ops_listen {
        Some(addr) => {
            let ops = TcpListener::bind(addr).await.map_err(|e| {
                ServeError::Serve(format!("cannot listen on {addr} (ops_listen): {e}"))
            })?;
            let bound = ops.local_addr().ok();
            let (ready, ready_rx) = watch::channel(Readiness::NotReady("starting".into()));
            tasks.spawn(watch_health(store.clone(), stopping.clone(), ready));
            let mut ops_stopping = stopping.clone();
            tasks.spawn(async move {
                let served = mosaic_shared::ops::serve(
                    ops,
                    Arc::new(registry),
                    ready_rx,
                    "mosaic.admin.v1.Admin",
                    async move {
                        let _ = ops_stopping.wait_for(|s| *s).await;
                    },
                )
                .await;
                if let Err(e) = served {
                    tracing::warn!(error = %e, "the ops port failed");
                }
            });
            bound
        }
        None => None,
    };
    tracing::info!(
        hub = %config.hub_id,
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        ops = %ops_addr.map(|a| a.to_string()).unwrap_or_default(),
        spokes = config.spokes.len(),
        "hub serving the admin API"
    );
    let incoming = tokio_stream::wrappers::ReceiverStream::new(mosaic_shared::tls::incoming(
        listener,
        servers.grpc.clone(),
    ));
    // grpc.health.v1 (for probes: SERVING while the server runs) and server reflection (so
    // grpcurl needs no .proto files).
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<AdminServer<AdminService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(mosaic_shared::pb::DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Serve(format!("reflection: {e}")))?;
    let server = tonic::transport::Server::builder()
        .layer(GrpcRequests::layer(metrics.admin_requests.clone()))
        .concurrency_limit_per_connection(256)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            AdminServer::from_arc(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, shutdown);
    let result = server
        .await
        .map_err(|e| ServeError::Serve(mosaic_shared::tls::error_chain(&e)));
    tracing::info!("hub stopping");
    let _ = stop.send(true);
    while tasks.join_next().await.is_some() {}
    result
}

/// How often readiness is checked.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

/// Ready while the hub's Valkey answers and the hub is not stopping.
async fn watch_health(
    store: HubStore,
    mut stopping: watch::Receiver<bool>,
    ready: watch::Sender<Readiness>,
) {
    loop {
        let now = if *stopping.borrow() {
            Readiness::NotReady("stopping".into())
        } else {
            match tokio::time::timeout(HEALTH_EVERY, store.ping()).await {
                Ok(Ok(())) => Readiness::Ready,
                Ok(Err(e)) => Readiness::NotReady(format!("the hub's Valkey does not answer: {e}")),
                Err(_) => Readiness::NotReady(format!(
                    "the hub's Valkey did not answer within {HEALTH_EVERY:?}"
                )),
            }
        };
        now.publish(&ready);
        tokio::select! {
            () = tokio::time::sleep(HEALTH_EVERY) => {}
            _ = stopping.wait_for(|s| *s) => {
                ready.send_replace(Readiness::NotReady("stopping".into()));
                return;
            }
        }
    }
}

async fn maintain(
    store: HubStore,
    audit: AuditStore,
    events: crate::config::EventsConfig,
    audit_retention: crate::config::AuditConfig,
    mut stopping: watch::Receiver<bool>,
) {
    loop {
        match audit
            .trim(
                unix_ms(),
                audit_retention.retain,
                audit_retention.retain_max,
            )
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "retention removed audit records"),
            Err(e) => tracing::warn!(error = %e, "audit retention failed"),
        }
        match store
            .trim(unix_ms(), events.retain, events.retain_max)
            .await
        {
            Ok(0) => {}
            Ok(n) => tracing::debug!(removed = n, "retention removed log entries"),
            Err(e) => tracing::warn!(error = %e, "log retention failed"),
        }
        tokio::select! {
            () = tokio::time::sleep(MAINTENANCE_EVERY) => {}
            _ = stopping.wait_for(|s| *s) => return,
        }
    }
}
