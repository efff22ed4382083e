//! Traces: hub and spoke export spans over OTLP/gRPC to a real receiver in the test, and the
//! W3C trace context goes from an admin request (gRPC metadata or an HTTP header) through the
//! hub's signed command to the spoke's spans (verify, enqueue, the attempt and its spawn) and
//! into the job's events.

use std::time::Duration;

use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_tests::otlp::{Collector, Span};
use mosaic_tests::*;

/// The one span named `name` from `service` in `trace`.
fn one<'a>(spans: &'a [Span], trace: &str, service: &str, name: &str) -> &'a Span {
    let found: Vec<&Span> = spans
        .iter()
        .filter(|s| s.trace_id == trace && s.service == service && s.name == name)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "{service} {name} in trace {trace}: {found:#?}\nall: {spans:#?}"
    );
    found[0]
}

/// Whether the hub's `admin` span and the spoke's `spawn` span of `trace` have both arrived
/// (each process exports in batches of its own).
fn has_both_ends(spans: &[Span], trace: &str) -> bool {
    let has = |service: &str, name: &str| {
        spans
            .iter()
            .any(|s| s.trace_id == trace && s.service == service && s.name == name)
    };
    has("mosaic-hub", "admin") && has("mosaic-spoke", "spawn")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_goes_from_the_admin_request_through_the_signed_command_to_the_spokes_spans_and_events()
 {
    let collector = Collector::start().await.unwrap();
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .process_env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector.endpoint())
        .process_env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .start()
        .await
        .unwrap();
    let token = fed.token("operator");
    let mut c = fed.admin().await.unwrap();

    // A caller with a trace of its own sends it as gRPC metadata.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let mut request = authed(
        &token,
        admin::SpawnRequest {
            spoke_id: "a".into(),
            spawn: Some(pb::Spawn {
                profile: "echo".into(),
                workspace: "ws-test".into(),
                args: vec!["traced".into()],
                ..Default::default()
            }),
            ..Default::default()
        },
    );
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{trace}-{caller_span}-01").parse().unwrap(),
    );
    let job = c
        .spawn(request)
        .await
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .job_id;

    // Every event of the job carries the trace id, through the spoke's stream and the hub.
    let events = admin_events_until_completed(&mut c, &token, &job).await;
    let types: Vec<_> = events.iter().map(|e| e.r#type()).collect();
    assert!(
        types.contains(&pb::EventType::JobQueued)
            && types.contains(&pb::EventType::AgentRunning)
            && types.contains(&pb::EventType::StepOutput),
        "{types:?}"
    );
    for e in &events {
        assert_eq!(e.trace_id, trace, "{e:?}");
    }

    // The spans: hub `admin` → hub `command` → spoke `command` → `verify`, `enqueue`, and
    // `attempt` → `spawn`, all in the caller's trace.
    let wanted = [
        ("mosaic-hub", "admin"),
        ("mosaic-hub", "command"),
        ("mosaic-spoke", "command"),
        ("mosaic-spoke", "verify"),
        ("mosaic-spoke", "enqueue"),
        ("mosaic-spoke", "attempt"),
        ("mosaic-spoke", "spawn"),
    ];
    let spans = collector
        .wait_for(Duration::from_secs(15), |spans| {
            wanted.iter().all(|(service, name)| {
                spans
                    .iter()
                    .any(|s| s.trace_id == trace && &s.service == service && &s.name == name)
            })
        })
        .await;
    let hub_admin = one(&spans, trace, "mosaic-hub", "admin");
    assert_eq!(hub_admin.parent_span_id, caller_span);
    assert_eq!(hub_admin.attributes["operation"], "Spawn");
    assert_eq!(hub_admin.attributes["transport"], "grpc");
    let hub_command = one(&spans, trace, "mosaic-hub", "command");
    assert_eq!(hub_command.parent_span_id, hub_admin.span_id);
    assert_eq!(hub_command.attributes["verb"], "spawn");
    assert_eq!(hub_command.attributes["spoke"], "a");
    let spoke_command = one(&spans, trace, "mosaic-spoke", "command");
    assert_eq!(spoke_command.parent_span_id, hub_command.span_id);
    assert_eq!(
        spoke_command.attributes["id"],
        hub_command.attributes["command_id"]
    );
    for name in ["verify", "enqueue", "attempt"] {
        let s = one(&spans, trace, "mosaic-spoke", name);
        assert_eq!(s.parent_span_id, spoke_command.span_id, "{name}: {s:?}");
    }
    assert_eq!(
        one(&spans, trace, "mosaic-spoke", "enqueue").attributes["job"],
        job
    );
    let attempt = one(&spans, trace, "mosaic-spoke", "attempt");
    assert_eq!(attempt.attributes["agent"], format!("{job}.1"));
    let spawn = one(&spans, trace, "mosaic-spoke", "spawn");
    assert_eq!(spawn.parent_span_id, attempt.span_id);
    assert_eq!(spawn.attributes["program"], "/bin/echo");

    // Over HTTP the header does the same; without one, the hub starts a trace of its own and
    // the job's events carry that.
    let other_trace = "0af7651916cd43dd8448eb211c80319c";
    let (code, _, body) = fed
        .hub_http(
            "POST",
            "/v1/jobs",
            &[
                ("Authorization", &format!("Bearer {token}")),
                (
                    "traceparent",
                    &format!("00-{other_trace}-b7ad6b7169203331-01"),
                ),
            ],
            Some(r#"{"spoke_id": "a", "spawn": {"profile": "true", "workspace": "ws-test"}}"#),
        )
        .await
        .unwrap();
    let text = body.text().await.unwrap();
    assert_eq!(code, 200, "{text}");
    let http_job = serde_json::from_str::<serde_json::Value>(&text).unwrap()["job"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let http_events = admin_events_until_completed(&mut c, &token, &http_job).await;
    assert!(
        http_events.iter().all(|e| e.trace_id == other_trace),
        "{http_events:?}"
    );
    let spans = collector
        .wait_for(Duration::from_secs(15), |spans| {
            has_both_ends(spans, other_trace)
        })
        .await;
    let http_admin = one(&spans, other_trace, "mosaic-hub", "admin");
    assert_eq!(http_admin.parent_span_id, "b7ad6b7169203331");
    assert_eq!(http_admin.attributes["transport"], "http");
    assert_eq!(http_admin.attributes["operation"], "POST /v1/jobs");

    let untraced = admin_spawn(&mut c, &token, "a", "true", &[]).await;
    let untraced_events = admin_events_until_completed(&mut c, &token, &untraced).await;
    let own = &untraced_events[0].trace_id;
    assert!(
        own.len() == 32 && own != trace && own != other_trace,
        "{untraced_events:?}"
    );
    assert!(untraced_events.iter().all(|e| &e.trace_id == own));
    let spans = collector
        .wait_for(Duration::from_secs(15), |spans| has_both_ends(spans, own))
        .await;
    assert!(
        one(&spans, own, "mosaic-hub", "admin")
            .parent_span_id
            .is_empty()
    );
}
