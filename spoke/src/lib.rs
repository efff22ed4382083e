//! Mosaic federation spoke: verifies signed commands from trusted hubs and runs agents.
//!
//! Layout, in the order a command travels:
//! - [`grpc`]: the `Federation` service; one mapping from refusals to gRPC statuses.
//! - [`verify`]: the verification chain (identity, key, signature, addressee, validity window).
//! - [`command`]: the domain form of a command, validated field by field at the edge.
//! - [`profile`]: resolves a spawn against the operator's profiles into a launch plan.
//! - [`job`]: job states, scheduling options and retry backoff (pure policy).
//! - [`store`]: Valkey: replay records, the job queue's transition scripts, records, key names.
//! - [`scheduler`]: starts queued jobs in free slots; leases, crash recovery, retention.
//! - [`lifecycle`]: the agent (attempt) state machine's table.
//! - [`events`]: what agents report, stream entries into `Event`s, and cursors.
//! - [`runner`]: supervised child processes, stop with grace, timeouts, output tail.
//! - [`output`]: an agent's stdout/stderr into bounded output and structured events.
//! - [`claude`]: Claude Code `stream-json` lines into events and the run's result.
//! - [`metrics`]: the Prometheus metrics served on the ops port.
//! - [`config`]: `spoke.toml` into a typed [`config::SpokeConfig`].
//! - [`reload`]: rotation without restarts: TLS material and trusted keys reread on change.

pub mod claude;
pub mod command;
pub mod config;
pub mod events;
pub mod grpc;
pub mod job;
pub mod lifecycle;
pub mod metrics;
pub mod output;
pub mod profile;
pub mod reload;
pub mod runner;
pub mod scheduler;
pub mod store;
pub mod verify;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use mosaic_shared::ops::Readiness;
use mosaic_shared::pb::federation::v1::federation_server::FederationServer;
use tokio::net::TcpListener;

use crate::config::SpokeConfig;

/// Largest command a hub may send; spawns are small, so this is generous.
const MAX_MESSAGE_BYTES: usize = 1024 * 1024;
/// How long open connections may take to finish once shutdown has begun.
const SHUTDOWN_DRAIN: Duration = Duration::from_secs(2);
/// How often readiness and the queue gauges are refreshed.
const HEALTH_EVERY: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Store(#[from] store::StoreError),
    #[error("TLS setup failed: {0}")]
    Tls(String),
    #[error("gRPC server failed: {0}")]
    Serve(String),
}

/// Serves the spoke on `listener` and runs its scheduler until `shutdown` resolves; then
/// drains: spawns are refused (`unavailable`, reason `draining`), nothing new starts, and
/// running agents may finish until `drain_deadline_ms`. Those still running then are ended
/// (SIGTERM, then SIGKILL after each profile's grace) and their jobs go back to the queue
/// without counting a failure. Event streams send what is left and end with
/// `unavailable` (reason `shutting_down`), and the server stops.
pub async fn run(
    config: SpokeConfig,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let config = Arc::new(config);
    let store = store::Store::connect(&config.valkey, &config.spoke_id).await?;
    let wake = Arc::new(tokio::sync::Notify::new());
    let max_grace = config
        .profiles
        .values()
        .map(|p| p.kill_grace)
        .max()
        .unwrap_or_default();
    let (recorder, records) = runner::Recorder::channel();
    let supervisor = runner::Supervisor::new(recorder, store.clone());
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = metrics::SpokeMetrics::register(
        &mut registry,
        store.valkey_errors(),
        supervisor.attempt_durations(),
    );
    let scheduler = scheduler::Scheduler::new(
        config.clone(),
        store.clone(),
        supervisor.clone(),
        wake.clone(),
        records,
    );
    let (phase, scheduler_phase) = tokio::sync::watch::channel(scheduler::Phase::Run);
    let scheduler = tokio::spawn(scheduler.run(scheduler_phase));
    // Ends the agents (their jobs go back to the queue) while the scheduler still writes their
    // records, then stops the scheduler.
    let stop_agents = || async {
        let _ = phase.send(scheduler::Phase::Drain);
        supervisor
            .shutdown(max_grace + Duration::from_secs(5))
            .await;
        let _ = phase.send(scheduler::Phase::Exit);
    };
    let (lifecycle, lifecycle_rx) = tokio::sync::watch::channel(grpc::Lifecycle::Serving);
    // What a reload replaces (see `reload`): the TLS configuration and the verifier.
    let material = reload::Material {
        tls: mosaic_shared::tls::ReloadableServerConfig::new(
            config
                .tls
                .rustls_server_config()
                .map_err(|e| RunError::Tls(e.to_string()))?,
        ),
        verifier: verify::SharedVerifier::new(verify::Verifier::of(&config)),
    };
    let reloader = tokio::spawn(reload::watch(
        config.clone(),
        material.clone(),
        metrics.common.clone(),
    ));
    let service = grpc::FederationService::new(
        config.clone(),
        store.clone(),
        supervisor.clone(),
        wake,
        metrics.clone(),
        lifecycle_rx.clone(),
        material.verifier.clone(),
    );

    // The ops port: metrics, liveness, readiness (Valkey answers and the spoke is serving).
    let (ops_stop, ops_stopped) = tokio::sync::oneshot::channel::<()>();
    let ops_addr = match config.ops_listen {
        Some(addr) => {
            let ops_listener = TcpListener::bind(addr).await.map_err(|e| {
                RunError::Serve(format!("cannot listen on {addr} (ops_listen): {e}"))
            })?;
            let bound = ops_listener.local_addr().ok();
            let (ready, ready_rx) =
                tokio::sync::watch::channel(Readiness::NotReady("starting".into()));
            tokio::spawn(watch_health(
                store.clone(),
                metrics.clone(),
                lifecycle_rx.clone(),
                ready,
            ));
            tokio::spawn(mosaic_shared::ops::serve(
                ops_listener,
                Arc::new(registry),
                ready_rx,
                "mosaic.federation.v1.Federation",
                async {
                    let _ = ops_stopped.await;
                },
            ));
            bound
        }
        None => None,
    };

    tracing::info!(
        spoke = %config.spoke_id,
        addr = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        ops = %ops_addr.map(|a| a.to_string()).unwrap_or_default(),
        profiles = config.profiles.len(),
        "spoke serving"
    );
    // TLS handshakes with the configuration in force (reloadable), TCP_NODELAY on every
    // connection (small request/response messages would otherwise wait on delayed ACKs).
    let incoming = tokio_stream::wrappers::ReceiverStream::new(mosaic_shared::tls::incoming(
        listener,
        material.tls.clone(),
    ));
    let (stop_serving, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(60))
        .concurrency_limit_per_connection(256)
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(1024))
        .add_service(
            FederationServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, async {
            let _ = stopped.await;
        });
    let mut server = tokio::spawn(server);
    let serve_error =
        |e: tonic::transport::Error| RunError::Serve(mosaic_shared::tls::error_chain(&e));
    tokio::select! {
        ended = &mut server => {
            // The server stopped without being asked: report why, after ending the agents.
            stop_agents().await;
            let _ = scheduler.await;
            return match ended {
                Ok(result) => result.map_err(serve_error),
                Err(e) => Err(RunError::Serve(e.to_string())),
            };
        }
        () = shutdown => {}
    }

    // Drain: refuse spawns, start nothing new, let running agents finish until the deadline.
    // Status, kill and event streams go on meanwhile.
    let running = supervisor.running_count();
    tracing::info!(
        running,
        deadline_ms = config.drain_deadline.as_millis() as u64,
        "spoke draining: refusing spawns and letting running agents finish"
    );
    let _ = lifecycle.send(grpc::Lifecycle::Draining);
    metrics.draining.set(1);
    let _ = phase.send(scheduler::Phase::Drain);
    let deadline = tokio::time::Instant::now() + config.drain_deadline;
    while supervisor.running_count() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let left = supervisor.running_count();
    if left > 0 {
        tracing::info!(
            left,
            "drain deadline reached; stopping the agents still running (their jobs go back to the queue)"
        );
    } else {
        tracing::info!("every running agent has finished");
    }
    stop_agents().await;
    let _ = scheduler.await;

    // Everything is written: event streams send what is left and end; then stop serving,
    // giving open connections a bounded time (tonic's graceful shutdown otherwise waits for
    // every client to hang up).
    let _ = lifecycle.send(grpc::Lifecycle::Stopping);
    let streams_end = tokio::time::Instant::now() + SHUTDOWN_DRAIN;
    while metrics.event_streams.get() > 0 && tokio::time::Instant::now() < streams_end {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let _ = stop_serving.send(());
    let _ = ops_stop.send(());
    reloader.abort();
    tracing::info!("spoke stopping");
    match tokio::time::timeout(SHUTDOWN_DRAIN, &mut server).await {
        Ok(Ok(result)) => result.map_err(serve_error),
        Ok(Err(e)) => Err(RunError::Serve(e.to_string())),
        Err(_) => {
            tracing::info!(drain = ?SHUTDOWN_DRAIN, "connections still open after drain; closing them");
            server.abort();
            Ok(())
        }
    }
}

/// Every [`HEALTH_EVERY`] (and at once when the lifecycle moves): reads the queue's counts
/// into the gauges, and sets readiness: ready while serving and Valkey answers.
async fn watch_health(
    store: store::Store,
    metrics: metrics::SpokeMetrics,
    mut lifecycle: tokio::sync::watch::Receiver<grpc::Lifecycle>,
    ready: tokio::sync::watch::Sender<Readiness>,
) {
    loop {
        let counts = tokio::time::timeout(HEALTH_EVERY, store.queue_counts()).await;
        let valkey = match counts {
            Ok(Ok(c)) => {
                for (state, n) in [
                    ("pending", c.pending),
                    ("delayed", c.delayed),
                    ("active", c.active),
                    ("completed", c.completed),
                    ("failed", c.failed),
                    ("cancelled", c.cancelled),
                ] {
                    metrics
                        .queue_jobs
                        .get_or_create(&metrics::StateLabel { state })
                        .set(n as i64);
                }
                Ok(())
            }
            Ok(Err(e)) => Err(format!("Valkey does not answer: {e}")),
            Err(_) => Err(format!("Valkey did not answer within {HEALTH_EVERY:?}")),
        };
        let now = match (*lifecycle.borrow_and_update(), valkey) {
            (grpc::Lifecycle::Serving, Ok(())) => Readiness::Ready,
            (grpc::Lifecycle::Serving, Err(e)) => Readiness::NotReady(e),
            (_, _) => Readiness::NotReady("draining before it stops".into()),
        };
        now.publish(&ready);
        tokio::select! {
            () = tokio::time::sleep(HEALTH_EVERY) => {}
            changed = lifecycle.changed() => if changed.is_err() { return },
        }
    }
}
