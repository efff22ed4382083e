//! Logging and tracing setup for the binaries: `tracing` to stderr, human-readable or JSON, and
//! optionally spans to an OpenTelemetry collector over OTLP/gRPC.
//!
//! The filter comes from `MOSAIC_LOG` (e.g. `info,mosaic_spoke=debug`), the format from
//! `MOSAIC_LOG_FORMAT` (`text` or `json`). Traces are exported when
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT` is set (the standard
//! OpenTelemetry variables; `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_BSP_*` and
//! `OTEL_TRACES_SAMPLER[_ARG]` apply too). Called once from each `main`; libraries only emit.
//!
//! The W3C trace context crosses processes as a `traceparent` string: [`traceparent`] gives the
//! current span's, [`follow`] makes a span a child of one received.

use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::config::Env;

/// What `init` set up; [`Telemetry::shutdown`] flushes the spans not yet exported.
#[must_use = "call shutdown() before exiting, or the last spans are lost"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports what is left and stops the exporter (waits at most the exporter's timeout).
    pub async fn shutdown(self) {
        if let Some(provider) = self.provider {
            // The batch processor runs on this runtime; its shutdown blocks until it answers.
            let done = tokio::task::spawn_blocking(move || provider.shutdown()).await;
            if let Ok(Err(e)) = done {
                tracing::warn!(error = %e, "could not flush the last traces");
            }
        }
    }
}

/// Where to export traces, if anywhere: the OTLP/gRPC endpoint, e.g. `http://otel:4317`.
fn otlp_endpoint(env: &Env) -> Option<&str> {
    env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|_| env.get("OTEL_SDK_DISABLED") != Some("true"))
}

/// The sampler named by `OTEL_TRACES_SAMPLER` (default `parentbased_always_on`).
fn sampler(env: &Env) -> Result<Sampler, String> {
    let ratio = || -> Result<f64, String> {
        let arg = env.get("OTEL_TRACES_SAMPLER_ARG").unwrap_or("1.0");
        arg.parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| format!("OTEL_TRACES_SAMPLER_ARG={arg}: expected a ratio from 0 to 1"))
    };
    Ok(
        match env
            .get("OTEL_TRACES_SAMPLER")
            .unwrap_or("parentbased_always_on")
        {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::TraceIdRatioBased(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            "parentbased_traceidratio" => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio()?)))
            }
            other => {
                return Err(format!(
                    "OTEL_TRACES_SAMPLER={other}: expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ));
            }
        },
    )
}

/// Installs logging, and (when `export` and an OTLP endpoint is configured) tracing export.
/// `service` names the process in traces unless `OTEL_SERVICE_NAME` does. Must run inside the
/// Tokio runtime. A second call (tests that run two servers in one process) keeps the first
/// subscriber.
pub fn init(
    env: &Env,
    default_filter: &str,
    service: &str,
    export: bool,
) -> Result<Telemetry, String> {
    let filter = || {
        EnvFilter::try_new(env.get("MOSAIC_LOG").unwrap_or(default_filter))
            .unwrap_or_else(|_| EnvFilter::new(default_filter))
    };
    let json = env.get("MOSAIC_LOG_FORMAT") == Some("json");
    let fmt = || {
        let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
        if json {
            layer.json().boxed()
        } else {
            layer.boxed()
        }
    };
    let Some(endpoint) = otlp_endpoint(env).filter(|_| export) else {
        let _ = tracing_subscriber::registry()
            .with(fmt().with_filter(filter()))
            .try_init();
        return Ok(Telemetry { provider: None });
    };
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint)
        .build()
        .map_err(|e| format!("OTLP endpoint {endpoint}: {e}"))?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let mut resource = opentelemetry_sdk::Resource::builder();
    if env.get("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service.to_owned());
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(sampler(env)?)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("mosaic");
    let _ = tracing_subscriber::registry()
        .with(fmt().with_filter(filter()))
        .with(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_filter(filter()),
        )
        .try_init();
    Ok(Telemetry {
        provider: Some(provider),
    })
}

/// The W3C `traceparent` (and `tracestate`) of `span`, or empty strings when it is in no
/// exported trace (tracing export off, or not sampled and nothing to propagate).
pub fn traceparent(span: &tracing::Span) -> (String, String) {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return (String::new(), String::new());
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut carrier);
    (
        carrier.remove("traceparent").unwrap_or_default(),
        carrier.remove("tracestate").unwrap_or_default(),
    )
}

/// Makes `span` (not yet entered) a child of the remote span a `traceparent` names. An empty
/// or malformed context leaves `span` a root.
pub fn follow(span: &tracing::Span, traceparent: &str, tracestate: &str) {
    if traceparent.is_empty() {
        return;
    }
    let mut carrier = std::collections::HashMap::new();
    carrier.insert("traceparent".to_owned(), traceparent.to_owned());
    if !tracestate.is_empty() {
        carrier.insert("tracestate".to_owned(), tracestate.to_owned());
    }
    let cx = TraceContextPropagator::new().extract(&carrier);
    if cx.span().span_context().is_valid() {
        // Fails only without the OpenTelemetry layer (export off), when it does not matter.
        let _ = span.set_parent(cx);
    }
}

/// The trace id of a `traceparent` (`00-<trace id>-<span id>-<flags>`), if well formed.
pub fn trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_version, id) = (parts.next()?, parts.next()?);
    (id.len() == 32
        && id
            .bytes()
            .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
    .then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_come_from_well_formed_traceparents_only() {
        assert_eq!(
            trace_id("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(trace_id(""), None);
        assert_eq!(
            trace_id("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(trace_id("00-abc-00f067aa0ba902b7-01"), None);
    }

    #[test]
    fn samplers_follow_the_opentelemetry_variables() {
        let env =
            |pairs: &[(&str, &str)]| pairs.iter().fold(Env::default(), |e, (k, v)| e.with(k, v));
        assert!(matches!(
            sampler(&env(&[])).unwrap(),
            Sampler::ParentBased(_)
        ));
        assert!(matches!(
            sampler(&env(&[("OTEL_TRACES_SAMPLER", "traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.25")]))
                .unwrap(),
            Sampler::TraceIdRatioBased(r) if r == 0.25
        ));
        let e = sampler(&env(&[
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ]))
        .unwrap_err();
        assert!(e.contains("OTEL_TRACES_SAMPLER_ARG=2"), "{e}");
        let e = sampler(&env(&[("OTEL_TRACES_SAMPLER", "sometimes")])).unwrap_err();
        assert!(e.contains("parentbased_always_on"), "{e}");
        assert_eq!(
            otlp_endpoint(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")])),
            Some("http://c:4317")
        );
        assert_eq!(
            otlp_endpoint(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_SDK_DISABLED", "true")
            ])),
            None
        );
    }
}
