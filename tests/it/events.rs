//! The spoke's event stream: lifecycle events numbered per job with no gaps, resumable from
//! any cursor with no gap and no duplicate, filtered, and an explicit `resync_required` when
//! a cursor is older than what is retained.

use std::time::Duration;

use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::time::unix_ms;
use mosaic_spoke::store::Store;
use mosaic_tests::*;
use pb::EventType as T;

fn of_job<'a>(events: &'a [pb::Event], job: &str) -> Vec<&'a pb::Event> {
    events.iter().filter(|e| e.job_id == job).collect()
}

fn types(events: &[&pb::Event]) -> Vec<T> {
    events.iter().map(|e| e.r#type()).collect()
}

/// Every job's events are numbered 1, 2, 3, ... in stream order.
fn assert_dense(events: &[pb::Event]) {
    let mut next = std::collections::HashMap::new();
    for e in events {
        let n = next.entry(e.job_id.clone()).or_insert(1u64);
        assert_eq!(e.seq, *n, "job {} event {:?} out of sequence", e.job_id, e);
        *n += 1;
    }
}

#[tokio::test]
async fn lifecycle_events_are_numbered_per_job_and_resume_exactly() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    let (ok, _) = fed.run_to_end(&a, spawn_action("true", &[])).await;
    let ok = job_of(&ok).job_id.clone();
    // Fails once (retried after 50 ms), then fails for good.
    let failing = spawn_with("sh", &["exit 3"], |s| {
        s.max_retries = Some(1);
        s.backoff_base_ms = Some(50);
        s.backoff_cap_ms = Some(50);
    });
    let (bad, _) = fed.run_to_end(&a, failing).await;
    let bad = job_of(&bad).job_id.clone();

    let mut stream = fed.events("a", pb::EventsRequest::default()).await.unwrap();
    let all = read_events_until(&mut stream, Duration::from_secs(10), |seen| {
        job_ended(seen, &ok) && job_ended(seen, &bad)
    })
    .await
    .unwrap();
    assert_dense(&all);
    assert!(
        all.iter()
            .all(|e| e.spoke_id == "a" && e.workspace == "ws-test")
    );
    assert_eq!(
        types(&of_job(&all, &ok)),
        [
            T::JobCreated,
            T::JobQueued,
            T::JobStarted,
            T::AgentSpawning,
            T::AgentRunning,
            T::AgentCompleted,
            T::JobCompleted
        ]
    );
    let bad_events = of_job(&all, &bad);
    assert_eq!(
        types(&bad_events),
        [
            T::JobCreated,
            T::JobQueued,
            T::JobStarted,
            T::AgentSpawning,
            T::AgentRunning,
            T::AgentFailed,
            T::JobStatus,
            T::JobQueued,
            T::JobStarted,
            T::AgentSpawning,
            T::AgentRunning,
            T::AgentFailed,
            T::JobFailed
        ]
    );
    let Some(pb::event::Payload::Job(retry)) = &bad_events[6].payload else {
        panic!("retry has a job payload: {:?}", bad_events[6])
    };
    assert_eq!(retry.state(), pb::JobState::Delayed);
    assert_eq!(retry.error, "exited with code 3");
    assert!(retry.ready_at_ms >= bad_events[6].at_ms + 40, "{retry:?}");
    assert_eq!(bad_events[10].agent_id, format!("{bad}.2"));

    // Resuming after any event, including one inside a multi-event entry, gives exactly the
    // events after it.
    assert_resumes_after(&fed, &all, [0, 1, 4, 5, all.len() - 2]).await;

    // Filters: one job, and some types.
    let mut only_ok = fed
        .events(
            "a",
            pb::EventsRequest {
                job_id: ok.clone(),
                types: vec![T::AgentRunning.into(), T::JobCompleted.into()],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got = read_events_until(&mut only_ok, Duration::from_secs(5), |seen| {
        job_ended(seen, &ok)
    })
    .await
    .unwrap();
    assert_eq!(
        types(&got.iter().collect::<Vec<_>>()),
        [T::AgentRunning, T::JobCompleted]
    );

    // Live: a job spawned while the stream is open arrives on it.
    let (live, _) = fed.run_to_end(&a, spawn_action("true", &[])).await;
    let live = job_of(&live).job_id.clone();
    let more = read_events_until(&mut stream, Duration::from_secs(10), |seen| {
        job_ended(seen, &live)
    })
    .await
    .unwrap();
    assert_eq!(of_job(&more, &live).len(), 7);
    assert_eq!(more[0].seq, 1, "the live job starts at 1: {:?}", more[0]);
}

/// Resuming spoke `a`'s stream after event `k` of `all` (everything read from its start) gives
/// exactly the events after it, for each `k`.
async fn assert_resumes_after(
    fed: &Federation,
    all: &[pb::Event],
    ks: impl IntoIterator<Item = usize>,
) {
    for k in ks {
        let mut resumed = fed
            .events(
                "a",
                pb::EventsRequest {
                    after: all[k].cursor.clone(),
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let want = &all[k + 1..];
        let got = read_events_until(&mut resumed, Duration::from_secs(5), |seen| {
            seen.len() >= want.len()
        })
        .await
        .unwrap();
        assert_eq!(got, want, "resumed after event {k} ({})", all[k].cursor);
    }
}

/// The entry id part of a cursor (`<ms>-<n>` of `<ms>-<n>.<sub>`).
fn entry_of(cursor: &str) -> &str {
    cursor.split_once('.').map_or(cursor, |(id, _)| id)
}

#[tokio::test]
async fn one_calls_events_share_an_entry_yet_filter_and_resume_per_event() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    // Queued while paused, so that one scheduler call starts all four.
    let pause = pb::command::Action::PauseQueue(pb::PauseQueue {});
    a.execute(&fed.hub.signer, pause).await.unwrap();
    let mut jobs = Vec::new();
    for ws in ["ws-test", "ws-other", "ws-test", "ws-other"] {
        let spawn = spawn_with("true", &[], |s| {
            s.max_retries = Some(0);
            s.workspace = ws.into();
        });
        let r = a.execute(&fed.hub.signer, spawn).await.unwrap();
        jobs.push(job_of(&r).job_id.clone());
    }
    let resume = pb::command::Action::ResumeQueue(pb::ResumeQueue {});
    a.execute(&fed.hub.signer, resume).await.unwrap();

    let mut stream = fed.events("a", pb::EventsRequest::default()).await.unwrap();
    let all = read_events_until(&mut stream, Duration::from_secs(20), |seen| {
        jobs.iter().all(|j| job_ended(seen, j))
    })
    .await
    .unwrap();
    assert_dense(&all);
    for j in &jobs {
        assert_eq!(of_job(&all, j).len(), 7, "{j}: {:?}", of_job(&all, j));
    }
    // The call that started them wrote one entry for all four.
    let started: Vec<&str> = all
        .iter()
        .filter(|e| e.r#type() == T::JobStarted)
        .map(|e| entry_of(&e.cursor))
        .collect();
    assert_eq!(started.len(), 4);
    assert!(
        started.iter().all(|id| *id == started[0]),
        "starts in entries {started:?}"
    );

    // Resuming after any event, inside a shared entry or at its end, gives exactly the rest.
    assert_resumes_after(&fed, &all, 0..all.len() - 1).await;

    // One workspace's reader gets that workspace's events of the shared entries, and resumes
    // inside one.
    let other: Vec<pb::Event> = all
        .iter()
        .filter(|e| e.workspace == "ws-other")
        .cloned()
        .collect();
    assert_eq!(other.len(), 14);
    for resume_after in [None, Some(2)] {
        let after = resume_after.map_or_else(String::new, |k: usize| other[k].cursor.clone());
        let want = &other[resume_after.map_or(0, |k| k + 1)..];
        let mut filtered = fed
            .events(
                "a",
                pb::EventsRequest {
                    workspace: "ws-other".into(),
                    after,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
        let got = read_events_until(&mut filtered, Duration::from_secs(5), |seen| {
            seen.len() >= want.len()
        })
        .await
        .unwrap();
        assert_eq!(got, want, "ws-other after event {resume_after:?}");
    }
}

#[tokio::test]
async fn a_cursor_older_than_retention_is_told_to_resync() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    for _ in 0..3 {
        fed.run_to_end(&a, spawn_action("true", &[])).await;
    }
    let mut stream = fed.events("a", pb::EventsRequest::default()).await.unwrap();
    let all = read_events_until(&mut stream, Duration::from_secs(5), |seen| seen.len() >= 21)
        .await
        .unwrap();
    drop(stream);

    // Keep only the last two entries.
    let store = Store::connect(
        &mosaic_shared::valkey::Target::single(fed.valkey_url()),
        &spoke_id("a"),
    )
    .await
    .unwrap();
    let removed = store
        .trim_events(unix_ms(), Duration::from_secs(3600), 2)
        .await
        .unwrap();
    assert!(removed > 0);

    let stale = fed
        .events(
            "a",
            pb::EventsRequest {
                after: all[0].cursor.clone(),
                ..Default::default()
            },
        )
        .await
        .unwrap()
        .message()
        .await
        .expect_err("an old cursor cannot resume");
    assert_eq!(stale.code(), tonic::Code::FailedPrecondition, "{stale:?}");
    assert_eq!(reason(&stale), "resync_required");
    assert!(
        stale.message().contains("resume from an empty cursor"),
        "{stale:?}"
    );

    // The newest cursor still resumes, and an empty one starts at the oldest retained.
    let newest = all.last().unwrap().cursor.clone();
    let mut fresh = fed.events("a", pb::EventsRequest::default()).await.unwrap();
    let first = read_events_until(&mut fresh, Duration::from_secs(5), |s| !s.is_empty())
        .await
        .unwrap();
    assert!(
        first[0].seq > 1,
        "older events were trimmed: {:?}",
        first[0]
    );
    let (live, _) = fed.run_to_end(&a, spawn_action("true", &[])).await;
    let live = job_of(&live).job_id.clone();
    let mut resumed = fed
        .events(
            "a",
            pb::EventsRequest {
                after: newest,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let got = read_events_until(&mut resumed, Duration::from_secs(5), |s| {
        job_ended(s, &live)
    })
    .await
    .unwrap();
    assert_eq!(got.len(), 7, "exactly the new job's events: {got:#?}");
}

#[tokio::test]
async fn bad_event_requests_name_the_field() {
    let fed = Federation::builder()
        .spoke("a")
        .spoke("b")
        .start()
        .await
        .unwrap();
    for (req, field) in [
        (
            pb::EventsRequest {
                after: "yesterday".into(),
                ..Default::default()
            },
            "events.after",
        ),
        (
            pb::EventsRequest {
                workspace: "a/b".into(),
                ..Default::default()
            },
            "events.workspace",
        ),
        (
            pb::EventsRequest {
                types: vec![999],
                ..Default::default()
            },
            "events.types",
        ),
    ] {
        let err = fed.events("a", req).await.expect_err("refused");
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().starts_with(field), "{err:?}");
    }
    // Only a hub's identity may read events: not another spoke's.
    let mut other = fed.raw_client("a", &fed.spoke_tls("b")).await.unwrap();
    let err = other
        .events(pb::EventsRequest::default())
        .await
        .expect_err("a spoke may not read another spoke's events");
    assert_eq!(err.code(), tonic::Code::PermissionDenied, "{err:?}");
    assert_eq!(reason(&err), "peer_identity");
}
