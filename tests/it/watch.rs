//! Watching through the hub: events flow agent → spoke → hub → client exactly once and in
//! order per job, across a hub restart, a spoke crash and a 10-second partition between hub
//! and spoke; a slow watcher does not hold up a fast one and is told to resync with a cursor
//! to resume from; a trimmed cursor, a revoked token and another workspace are refused.

use std::time::Duration;

use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_tests::*;
use tonic::Code;

/// A client that watches a scope and resumes from its cursor whenever the stream breaks.
struct Watcher {
    token: String,
    request: admin::WatchRequest,
    cursor: Option<String>,
    stream: Option<tonic::Streaming<admin::WatchResponse>>,
    events: Vec<pb::Event>,
    reconnects: usize,
}

fn workspace_watch(ws: &str) -> admin::WatchRequest {
    admin::WatchRequest {
        scope: Some(admin::watch_request::Scope::Workspace(ws.into())),
        start: Some(admin::watch_request::Start::FromOldest(true)),
        ..Default::default()
    }
}

async fn open(
    fed: &Federation,
    token: &str,
    request: admin::WatchRequest,
) -> Result<tonic::Streaming<admin::WatchResponse>, tonic::Status> {
    let mut client = fed
        .admin()
        .await
        .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
    Ok(client.watch(authed(token, request)).await?.into_inner())
}

impl Watcher {
    fn new(fed: &Federation, token: &str, request: admin::WatchRequest) -> Self {
        let _ = fed;
        Watcher {
            token: token.to_owned(),
            request,
            cursor: None,
            stream: None,
            events: Vec::new(),
            reconnects: 0,
        }
    }

    /// Reads until `done` holds for the events so far, reconnecting after the last cursor
    /// whenever the stream fails (the hub restarting, say).
    async fn read_until(
        &mut self,
        fed: &Federation,
        within: Duration,
        done: impl Fn(&[pb::Event]) -> bool,
    ) {
        let deadline = tokio::time::Instant::now() + within;
        while !done(&self.events) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "not done after {within:?}: {} events, {} reconnects",
                self.events.len(),
                self.reconnects
            );
            if self.stream.is_none() {
                let mut request = self.request.clone();
                if let Some(c) = &self.cursor {
                    request.start = Some(admin::watch_request::Start::After(c.clone()));
                }
                match open(fed, &self.token, request).await {
                    Ok(s) => self.stream = Some(s),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let stream = self.stream.as_mut().expect("opened above");
            match tokio::time::timeout_at(deadline, stream.message()).await {
                Ok(Ok(Some(item))) => {
                    self.cursor = Some(item.cursor.clone());
                    if let Some(admin::watch_response::Item::Event(e)) = item.item {
                        self.events.push(e);
                    }
                }
                Ok(Ok(None)) | Ok(Err(_)) => {
                    self.stream = None;
                    self.reconnects += 1;
                }
                Err(_) => {}
            }
        }
    }
}

/// The spoke's own record of a workspace's events: the ground truth a watcher must match.
async fn truth(fed: &Federation, spoke: &str, ws: &str, jobs: &[String]) -> Vec<pb::Event> {
    let mut stream = fed
        .events(
            spoke,
            pb::EventsRequest {
                workspace: ws.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    read_events_until(&mut stream, Duration::from_secs(30), |seen| {
        jobs.iter().all(|j| job_ended(seen, j))
    })
    .await
    .unwrap()
}

fn ended_all(jobs: &[String]) -> impl Fn(&[pb::Event]) -> bool + '_ {
    move |seen| jobs.iter().all(|j| job_ended(seen, j))
}

async fn spawn_job(fed: &Federation, spoke: &str, script: &str) -> String {
    let client = fed.client(spoke).await.unwrap();
    let r = client
        .execute(&fed.hub.signer, spawn_action("sh", &[script]))
        .await
        .unwrap();
    job_of(&r).job_id.clone()
}

async fn run_job(fed: &Federation, spoke: &str, script: &str) -> String {
    let client = fed.client(spoke).await.unwrap();
    let (r, _) = fed.run_to_end(&client, spawn_action("sh", &[script])).await;
    job_of(&r).job_id.clone()
}

const CHATTY: &str = "for i in 1 2 3; do echo line $i; echo '{\"mosaic\":\"progress\",\"percent\":'$((i*30))'}'; sleep 0.05; done";

#[tokio::test]
async fn a_watcher_resumes_across_a_hub_restart_exactly_once() {
    let mut fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let mut w = Watcher::new(&fed, &fed.token("operator"), workspace_watch("ws-test"));
    let mut jobs = vec![run_job(&fed, "a", CHATTY).await];
    w.read_until(&fed, Duration::from_secs(20), ended_all(&jobs))
        .await;

    fed.kill_hub();
    // While the hub is down, the spoke keeps working and keeps its events.
    jobs.push(run_job(&fed, "a", CHATTY).await);
    jobs.push(run_job(&fed, "a", "echo while the hub was away").await);
    fed.restart_hub().unwrap();
    w.read_until(&fed, Duration::from_secs(30), ended_all(&jobs))
        .await;

    assert!(w.reconnects >= 1);
    assert_eq!(w.events, truth(&fed, "a", "ws-test", &jobs).await);
}

#[tokio::test]
async fn a_watcher_sees_everything_across_a_spoke_crash() {
    let mut fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .queue("lease_ms", "2000")
        .start()
        .await
        .unwrap();
    let mut w = Watcher::new(&fed, &fed.token("operator"), workspace_watch("ws-test"));
    let mut jobs = vec![run_job(&fed, "a", CHATTY).await];
    // A job that is running when the spoke dies: recovered after its lease, then retried.
    let interrupted = spawn_job(&fed, "a", "echo started; sleep 1; echo finished").await;
    jobs.push(interrupted.clone());
    w.read_until(&fed, Duration::from_secs(20), |seen| {
        seen.iter()
            .any(|e| e.job_id == interrupted && e.r#type() == pb::EventType::AgentRunning)
    })
    .await;
    fed.kill_spoke("a");
    fed.restart_spoke("a").unwrap();
    jobs.push(run_job(&fed, "a", CHATTY).await);
    w.read_until(&fed, Duration::from_secs(40), ended_all(&jobs))
        .await;
    assert_eq!(w.events, truth(&fed, "a", "ws-test", &jobs).await);
    assert!(
        w.events
            .iter()
            .any(|e| e.job_id == interrupted && e.r#type() == pb::EventType::AgentFailed),
        "the crashed attempt's end is seen"
    );
}

#[tokio::test]
async fn a_watcher_sees_everything_across_a_partition_between_hub_and_spoke() {
    let fed = Federation::builder()
        .spoke("a")
        .via_proxy("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let mut w = Watcher::new(&fed, &fed.token("viewer"), workspace_watch("ws-test"));
    let mut jobs = vec![run_job(&fed, "a", CHATTY).await];
    w.read_until(&fed, Duration::from_secs(20), ended_all(&jobs))
        .await;

    let proxy = fed.proxy("a");
    let connections = proxy.connections();
    proxy.partition();
    // The spoke goes on working (the test reaches it directly); the hub cannot see it.
    for _ in 0..3 {
        jobs.push(run_job(&fed, "a", CHATTY).await);
    }
    tokio::time::sleep(Duration::from_secs(10)).await;
    let during = w.events.len();
    proxy.heal();
    w.read_until(&fed, Duration::from_secs(30), ended_all(&jobs))
        .await;

    assert!(proxy.connections() > connections, "the hub reconnected");
    assert!(w.events.len() > during);
    assert_eq!(w.events, truth(&fed, "a", "ws-test", &jobs).await);
}

#[tokio::test]
async fn a_slow_watcher_does_not_hold_up_a_fast_one_and_resumes_from_its_cursor() {
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .hub_events("subscriber_buffer", "16")
        .queue("concurrency", "20")
        .start()
        .await
        .unwrap();
    let token = fed.token("admin");
    // Opened and never read until the end.
    let mut slow = open(&fed, &token, workspace_watch("ws-test"))
        .await
        .unwrap();
    let mut fast = Watcher::new(&fed, &token, workspace_watch("ws-test"));

    // 150 jobs of 64 KiB output each: about 10 MB through the hub, more than the slow
    // watcher's buffers and connection can hold.
    let script = "head -c 65536 /dev/zero | tr '\\0' x | fold -w 1000";
    let client = fed.client("a").await.unwrap();
    let mut jobs = Vec::new();
    for _ in 0..150 {
        let r = client
            .execute(&fed.hub.signer, spawn_action("sh", &[script]))
            .await
            .unwrap();
        jobs.push(job_of(&r).job_id.clone());
    }
    fast.read_until(&fed, Duration::from_secs(90), ended_all(&jobs))
        .await;
    assert_eq!(fast.reconnects, 0, "the fast watcher was never cut off");
    let all = truth(&fed, "a", "ws-test", &jobs).await;
    assert_eq!(fast.events, all);

    // The slow one was ended with a cursor to resume from, after what it had received.
    let mut got = Vec::new();
    let mut last_cursor = String::new();
    let status = loop {
        match slow.message().await {
            Ok(Some(item)) => {
                last_cursor = item.cursor.clone();
                if let Some(admin::watch_response::Item::Event(e)) = item.item {
                    got.push(e);
                }
            }
            Ok(None) => panic!("the slow watch ended without a status"),
            Err(s) => break s,
        }
    };
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(reason(&status), "resync_required");
    let resume = status
        .metadata()
        .get("x-mosaic-cursor")
        .and_then(|v| v.to_str().ok())
        .expect("a cursor to resume from")
        .to_owned();
    assert_eq!(resume, last_cursor, "resume after the last item received");
    assert!(got.len() < all.len());
    let mut rest = Watcher::new(&fed, &token, workspace_watch("ws-test"));
    rest.cursor = Some(resume);
    rest.read_until(&fed, Duration::from_secs(30), |seen| {
        got.len() + seen.len() >= all.len()
    })
    .await;
    got.extend(rest.events);
    assert_eq!(got, all, "received once each, in order, across the resync");
}

#[tokio::test]
async fn trimmed_cursors_revoked_tokens_and_other_workspaces_are_refused() {
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let jobs = vec![
        run_job(&fed, "a", "echo one").await,
        run_job(&fed, "a", "echo two").await,
    ];
    let mut w = Watcher::new(&fed, &fed.token("operator"), workspace_watch("ws-test"));
    w.read_until(&fed, Duration::from_secs(20), ended_all(&jobs))
        .await;

    // No token, a wrong token.
    let err = fed
        .admin()
        .await
        .unwrap()
        .watch(workspace_watch("ws-test"))
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    let err = open(&fed, "mosaic_nope", workspace_watch("ws-test"))
        .await
        .expect_err("wrong token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // Another workspace is not found, never forbidden; its jobs' events are not shown.
    let err = open(&fed, &fed.token("other"), workspace_watch("ws-test"))
        .await
        .expect_err("other workspace");
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    let mut by_job = open(
        &fed,
        &fed.token("other"),
        admin::WatchRequest {
            scope: Some(admin::watch_request::Scope::JobId(jobs[0].clone())),
            start: Some(admin::watch_request::Start::FromOldest(true)),
            snapshot: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(1), by_job.message())
            .await
            .is_err(),
        "nothing of another workspace's job arrives"
    );

    // A snapshot: current states, then a marker, then live events.
    let mut snap = open(
        &fed,
        &fed.token("viewer"),
        admin::WatchRequest {
            scope: Some(admin::watch_request::Scope::Workspace("ws-test".into())),
            snapshot: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut rows = Vec::new();
    loop {
        let item = snap.message().await.unwrap().unwrap();
        match item.item.unwrap() {
            admin::watch_response::Item::Job(j) => rows.push(j),
            admin::watch_response::Item::SnapshotEnd(end) => {
                assert_eq!(end.jobs, 2);
                break;
            }
            other => panic!("unexpected before the marker: {other:?}"),
        }
    }
    assert!(
        rows.iter()
            .all(|r| r.state() == pb::JobState::Completed && r.workspace == "ws-test")
    );

    // A cursor older than the hub retains.
    let store = mosaic_hub::store::HubStore::connect(
        &mosaic_shared::valkey::Target::single(fed.valkey_url()),
        &HUB.parse().unwrap(),
    )
    .await
    .unwrap();
    store
        .trim(mosaic_shared::time::unix_ms(), Duration::from_secs(3600), 1)
        .await
        .unwrap();
    let mut request = workspace_watch("ws-test");
    // A well-formed cursor from before everything retained.
    request.start = Some(admin::watch_request::Start::After("1-0".into()));
    let err = open(&fed, &fed.token("operator"), request)
        .await
        .unwrap()
        .message()
        .await
        .expect_err("a trimmed cursor cannot resume");
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert_eq!(reason(&err), "resync_required");

    // A token removed from the tokens file ends its open watches.
    let mut live = open(
        &fed,
        &fed.token("operator"),
        admin::WatchRequest {
            scope: Some(admin::watch_request::Scope::Workspace("ws-test".into())),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let tokens = fed.dir().join("tokens.toml");
    let text = std::fs::read_to_string(&tokens).unwrap();
    let kept: Vec<&str> = text
        .split("[[tokens]]")
        .filter(|e| !e.contains("name = \"operator\""))
        .collect();
    std::fs::write(&tokens, kept.join("[[tokens]]")).unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), live.message())
        .await
        .expect("the watch ends within seconds")
        .expect_err("with an error");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    let err = open(&fed, &fed.token("operator"), workspace_watch("ws-test"))
        .await
        .expect_err("the removed token no longer works");
    assert_eq!(err.code(), Code::Unauthenticated);
}

async fn list_spokes(fed: &Federation, token: &str) -> Vec<admin::SpokeHealth> {
    fed.admin()
        .await
        .unwrap()
        .list_spokes(authed(token, admin::ListSpokesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .spokes
}

#[tokio::test]
async fn list_spokes_shows_each_spokes_health_and_an_unreachable_one_at_once() {
    let mut fed = Federation::builder()
        .spoke("a")
        .spoke("b")
        .hub_server()
        .start()
        .await
        .unwrap();
    run_job(&fed, "a", "echo hi").await;
    // Both upstreams connect; a's has carried the job's events.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let spokes = loop {
        let s = list_spokes(&fed, &fed.token("viewer")).await;
        let a_events = s[0].events.as_ref().map_or(0, |e| e.events);
        if (s
            .iter()
            .all(|h| h.events.as_ref().is_some_and(|e| e.connected))
            && a_events >= 8)
            || std::time::Instant::now() > deadline
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        spokes
            .iter()
            .map(|s| s.spoke_id.as_str())
            .collect::<Vec<_>>(),
        ["a", "b"]
    );
    for s in &spokes {
        assert!(s.reachable, "{s:?}");
        assert!(s.error.is_empty(), "{s:?}");
        assert!(s.profiles.contains(&"sh".to_owned()), "{s:?}");
        assert!(s.events.as_ref().unwrap().connected, "{s:?}");
    }
    assert_eq!(spokes[0].queue.as_ref().unwrap().completed, 1);
    assert!(
        spokes[0].events.as_ref().unwrap().events >= 8,
        "{:?}",
        spokes[0]
    );

    // A dead spoke is reported at once, named, and its upstream as down.
    fed.kill_spoke("b");
    let started = std::time::Instant::now();
    let deadline = started + Duration::from_secs(10);
    let b = loop {
        let b = list_spokes(&fed, &fed.token("viewer")).await.remove(1);
        if !b.events.as_ref().unwrap().connected || std::time::Instant::now() > deadline {
            break b;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(!b.reachable);
    assert!(b.error.contains("spoke/b"), "{}", b.error);
    let upstream = b.events.unwrap();
    assert!(!upstream.connected);
    assert!(!upstream.error.is_empty());
    assert!(started.elapsed() < Duration::from_secs(10));

    // Without a token: refused.
    let err = fed
        .admin()
        .await
        .unwrap()
        .list_spokes(admin::ListSpokesRequest {})
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
}

/// Server-sent events as (id, event, data) until `done` says stop.
async fn read_sse(
    body: &mut HttpBody,
    done: impl Fn(&str) -> bool,
) -> Vec<(String, String, serde_json::Value)> {
    let mut out = Vec::new();
    let (mut id, mut event) = (String::new(), String::new());
    let read = async {
        while let Some(line) = body.line().await.unwrap() {
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_owned();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_owned();
            } else if let Some(v) = line.strip_prefix("data: ") {
                let data: serde_json::Value = serde_json::from_str(v).unwrap();
                out.push((id.clone(), event.clone(), data));
                if done(&event) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .expect("the events arrive");
    out
}

#[tokio::test]
async fn watch_over_http_is_server_sent_events_resumable_with_last_event_id() {
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let job = run_job(&fed, "a", CHATTY).await;
    let bearer = format!("Bearer {}", fed.token("viewer"));
    let path = format!("/v1/watch?job_id={job}&from_oldest=true");
    let (code, head, mut body) = fed
        .hub_http_get(&path, &[("Authorization", &bearer)])
        .await
        .unwrap();
    assert_eq!(code, 200, "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    let events = read_sse(&mut body, |e| e == "job.completed").await;
    let kinds: Vec<&str> = events.iter().map(|(_, e, _)| e.as_str()).collect();
    assert_eq!(kinds.first(), Some(&"job.created"));
    assert!(
        kinds.contains(&"step.output") && kinds.contains(&"job.progress"),
        "{kinds:?}"
    );
    // The data is the same JSON line as `watch --output json`, with the cursor as the id.
    let (id, _, data) = &events[2];
    assert_eq!(data["cursor"].as_str(), Some(id.as_str()));
    assert_eq!(data["job_id"].as_str(), Some(job.as_str()));

    // Resume after the third event with the standard header: exactly the rest.
    let (code, _, mut resumed) = fed
        .hub_http_get(
            &format!("/v1/watch?job_id={job}"),
            &[("Authorization", &bearer), ("Last-Event-ID", id)],
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    let rest = read_sse(&mut resumed, |e| e == "job.completed").await;
    assert_eq!(rest, events[3..].to_vec());

    // Refusals: the same reasons as over gRPC, as HTTP statuses with a JSON body.
    let (code, _, body) = fed.hub_http_get(&path, &[]).await.unwrap();
    assert_eq!(code, 401);
    let body: serde_json::Value = serde_json::from_str(&body.text().await.unwrap()).unwrap();
    assert_eq!(body["reason"], "unauthenticated");
    let other = format!("Bearer {}", fed.token("other"));
    let (code, _, body) = fed
        .hub_http_get("/v1/watch?workspace=ws-test", &[("Authorization", &other)])
        .await
        .unwrap();
    assert_eq!(code, 404, "another workspace is not found");
    let body: serde_json::Value = serde_json::from_str(&body.text().await.unwrap()).unwrap();
    assert_eq!(body["reason"], "not_found");
    let (code, _, body) = fed
        .hub_http_get(
            "/v1/watch?workspace=ws-test&types=job.exploded",
            &[("Authorization", &bearer)],
        )
        .await
        .unwrap();
    assert_eq!(code, 400);
    assert!(body.text().await.unwrap().contains("watch.types"));
}
