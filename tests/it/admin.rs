//! The hub's admin API through a real `mosaic-hub serve`: who may do what where, idempotent
//! requests across a hub restart, placement by labels and load, unreachable spokes, the audit
//! trail, the same operations over HTTP/JSON, health and reflection.

use std::time::{Duration, Instant};

use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_tests::*;
use tonic::Code;

type Admin = admin::admin_client::AdminClient<tonic::transport::Channel>;

fn spawn_request(workspace: &str, spoke: &str, script: &str) -> admin::SpawnRequest {
    admin::SpawnRequest {
        spoke_id: spoke.to_owned(),
        spawn: Some(pb::Spawn {
            profile: "sh".into(),
            workspace: workspace.into(),
            args: vec![script.into()],
            ..Default::default()
        }),
        ..Default::default()
    }
}

async fn spawn_as(
    c: &mut Admin,
    fed: &Federation,
    token: &str,
    r: admin::SpawnRequest,
) -> Result<admin::JobResponse, tonic::Status> {
    c.spawn(authed(&fed.token(token), r))
        .await
        .map(|r| r.into_inner())
}

async fn status_as(
    c: &mut Admin,
    fed: &Federation,
    token: &str,
    id: &str,
    spoke: &str,
) -> Result<admin::JobResponse, tonic::Status> {
    c.get_status(authed(
        &fed.token(token),
        admin::GetStatusRequest {
            id: id.into(),
            spoke_id: spoke.into(),
        },
    ))
    .await
    .map(|r| r.into_inner())
}

fn job_id(r: &admin::JobResponse) -> String {
    r.job.as_ref().expect("a job").job_id.clone()
}

fn state(r: &admin::JobResponse) -> pb::JobState {
    r.job.as_ref().expect("a job").state()
}

/// The refusal's code and reason.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>) -> (Code, String, String) {
    let s = r.expect_err("refused");
    (s.code(), reason(&s), s.message().to_owned())
}

async fn wait_state(
    c: &mut Admin,
    fed: &Federation,
    id: &str,
    want: pb::JobState,
) -> admin::JobResponse {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = status_as(c, fed, "admin", id, "").await.unwrap();
        if state(&r) == want {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is {:?}, not {want:?}",
            state(&r)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn every_role_may_do_exactly_what_it_should_in_its_own_workspace_only() {
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let mut c = fed.admin().await.unwrap();

    // A running job in each workspace.
    let mine = spawn_as(
        &mut c,
        &fed,
        "operator",
        spawn_request("ws-test", "a", "sleep 300"),
    )
    .await
    .unwrap();
    let theirs = spawn_as(
        &mut c,
        &fed,
        "other",
        spawn_request("ws-other", "a", "sleep 300"),
    )
    .await
    .unwrap();
    let (mine, theirs) = (job_id(&mine), job_id(&theirs));
    wait_state(&mut c, &fed, &mine, pb::JobState::Executing).await;
    wait_state(&mut c, &fed, &theirs, pb::JobState::Executing).await;

    // Spawn: operators and admins in their workspaces; viewers never; another workspace is
    // not found (not forbidden), so its existence does not show.
    for (token, ws, want) in [
        ("admin", "ws-other", Ok(())),
        ("operator", "ws-test", Ok(())),
        ("viewer", "ws-test", Err(Code::PermissionDenied)),
        ("operator", "ws-other", Err(Code::NotFound)),
        ("viewer", "ws-other", Err(Code::NotFound)),
        ("other", "ws-test", Err(Code::NotFound)),
    ] {
        let got = spawn_as(&mut c, &fed, token, spawn_request(ws, "a", "true")).await;
        assert_eq!(
            got.as_ref().map(|_| ()).map_err(|s| s.code()),
            want,
            "{token} spawning in {ws}: {got:?}"
        );
    }

    // Status: anyone who may see the workspace; for others, exactly what a made-up id gets,
    // whether the hub finds the spoke or the caller names it.
    let guessed = uuid::Uuid::now_v7().to_string();
    for token in ["admin", "operator", "viewer"] {
        assert_eq!(
            job_id(&status_as(&mut c, &fed, token, &mine, "").await.unwrap()),
            mine
        );
    }
    let (code, why, msg) = refused(status_as(&mut c, &fed, "other", &mine, "").await);
    let (code2, why2, msg2) = refused(status_as(&mut c, &fed, "other", &guessed, "").await);
    assert_eq!((code, why.as_str()), (Code::NotFound, "not_found"));
    assert_eq!((code2, why2.as_str()), (Code::NotFound, "not_found"));
    assert_eq!(msg.replace(&mine, "ID"), msg2.replace(&guessed, "ID"));
    let (code, _, msg) = refused(status_as(&mut c, &fed, "other", &mine, "a").await);
    let (_, _, msg2) = refused(status_as(&mut c, &fed, "other", &guessed, "a").await);
    assert_eq!(code, Code::NotFound);
    assert_eq!(msg.replace(&mine, "ID"), msg2.replace(&guessed, "ID"));
    // An agent id of the job is the job, for the same rules.
    let agent = format!("{mine}.1");
    assert_eq!(
        job_id(&status_as(&mut c, &fed, "viewer", &agent, "").await.unwrap()),
        mine
    );
    assert_eq!(
        refused(status_as(&mut c, &fed, "other", &agent, "").await).0,
        Code::NotFound
    );

    // Kill: a viewer may not; another workspace's job is not found and keeps running.
    let kill = |token: &str, id: &str, spoke: &str| {
        authed(
            &fed.token(token),
            admin::KillRequest {
                id: id.into(),
                spoke_id: spoke.into(),
                ..Default::default()
            },
        )
    };
    assert_eq!(
        refused(c.kill(kill("viewer", &mine, "")).await).0,
        Code::PermissionDenied
    );
    assert_eq!(
        refused(c.kill(kill("other", &mine, "")).await).0,
        Code::NotFound
    );
    assert_eq!(
        refused(c.kill(kill("other", &mine, "a")).await).0,
        Code::NotFound
    );
    assert_eq!(
        state(&status_as(&mut c, &fed, "admin", &mine, "").await.unwrap()),
        pb::JobState::Executing
    );
    let killed = c
        .kill(kill("operator", &mine, ""))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(state(&killed), pb::JobState::Cancelled);

    // ListAgents: each caller sees its own workspaces' jobs only; naming another workspace is
    // not found.
    let list = |token: &str, workspace: &str| {
        authed(
            &fed.token(token),
            admin::ListAgentsRequest {
                workspace: workspace.into(),
                ..Default::default()
            },
        )
    };
    // The hub learns of jobs from the spoke's events; wait until it has heard of both.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let all = c
            .list_agents(list("admin", ""))
            .await
            .unwrap()
            .into_inner()
            .jobs;
        if [&mine, &theirs]
            .iter()
            .all(|j| all.iter().any(|s| &&s.job_id == j))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the hub never listed both jobs: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = c
        .list_agents(list("viewer", ""))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(seen.iter().any(|j| j.job_id == mine));
    assert!(seen.iter().all(|j| j.workspace == "ws-test"), "{seen:?}");
    let seen = c
        .list_agents(list("other", ""))
        .await
        .unwrap()
        .into_inner()
        .jobs;
    assert!(seen.iter().any(|j| j.job_id == theirs));
    assert!(seen.iter().all(|j| j.workspace == "ws-other"), "{seen:?}");
    assert_eq!(
        refused(c.list_agents(list("viewer", "ws-other")).await).0,
        Code::NotFound
    );

    // Watch: another workspace by name is not found; a job of another workspace by id shows
    // nothing of it.
    let watch = |token: &str, scope: admin::watch_request::Scope| {
        authed(
            &fed.token(token),
            admin::WatchRequest {
                scope: Some(scope),
                start: Some(admin::watch_request::Start::FromOldest(true)),
                ..Default::default()
            },
        )
    };
    use admin::watch_request::Scope;
    assert_eq!(
        refused(
            c.watch(watch("other", Scope::Workspace("ws-test".into())))
                .await
        )
        .0,
        Code::NotFound
    );
    let mut peek = c
        .watch(watch("other", Scope::JobId(mine.clone())))
        .await
        .unwrap()
        .into_inner();
    let nothing = tokio::time::timeout(Duration::from_millis(700), peek.message()).await;
    assert!(
        nothing.is_err(),
        "another workspace's job showed: {nothing:?}"
    );
    let mut own = c
        .watch(watch("viewer", Scope::JobId(mine.clone())))
        .await
        .unwrap()
        .into_inner();
    let first = own.message().await.unwrap().unwrap();
    assert!(
        matches!(first.item, Some(admin::watch_response::Item::Event(ref e)) if e.job_id == mine)
    );

    // Queue: anyone sees the counts; only admins pause and resume.
    let q = |token: &str| {
        authed(
            &fed.token(token),
            admin::QueueRequest {
                spoke_id: "a".into(),
            },
        )
    };
    for token in ["viewer", "operator", "other", "admin"] {
        c.queue_stats(q(token)).await.unwrap();
    }
    for token in ["viewer", "operator", "other"] {
        assert_eq!(
            refused(c.pause_queue(q(token)).await).0,
            Code::PermissionDenied,
            "{token}"
        );
    }
    let paused = c.pause_queue(q("admin")).await.unwrap().into_inner();
    assert!(paused.queue.unwrap().paused);
    let resumed = c.resume_queue(q("admin")).await.unwrap().into_inner();
    assert!(!resumed.queue.unwrap().paused);

    // Audit: admins only.
    let audit = |token: &str| authed(&fed.token(token), admin::AuditRequest::default());
    for token in ["viewer", "operator", "other"] {
        assert_eq!(
            refused(c.audit(audit(token)).await).0,
            Code::PermissionDenied,
            "{token}"
        );
    }
    c.audit(audit("admin")).await.unwrap();

    // No token, or a wrong one: unauthenticated, for every operation.
    let mut anonymous = tonic::Request::new(admin::ListSpokesRequest {});
    assert_eq!(
        refused(c.list_spokes(anonymous).await).0,
        Code::Unauthenticated
    );
    anonymous = authed("not-a-token", admin::ListSpokesRequest {});
    assert_eq!(
        refused(c.list_spokes(anonymous).await).0,
        Code::Unauthenticated
    );
    let anon_spawn = tonic::Request::new(spawn_request("ws-test", "a", "true"));
    assert_eq!(refused(c.spawn(anon_spawn).await).0, Code::Unauthenticated);
}

#[tokio::test]
async fn a_retried_spawn_never_runs_twice_even_across_a_hub_restart() {
    let mut fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let mut c = fed.admin().await.unwrap();
    let mut request = spawn_request("ws-test", "a", "echo once >> ran; sleep 300");
    request.request_id = "build-42".into();

    let first = spawn_as(&mut c, &fed, "operator", request.clone())
        .await
        .unwrap();
    assert!(!first.replayed);
    let again = spawn_as(&mut c, &fed, "operator", request.clone())
        .await
        .unwrap();
    assert!(again.replayed);
    assert_eq!(job_id(&again), job_id(&first));

    fed.restart_hub().unwrap();
    let mut c = fed.admin().await.unwrap();
    let after = spawn_as(&mut c, &fed, "operator", request.clone())
        .await
        .unwrap();
    assert!(after.replayed);
    assert_eq!(
        (job_id(&after), after.command_id.clone()),
        (job_id(&first), first.command_id.clone())
    );

    // The same id for a different request is refused, and spawns nothing.
    let mut changed = request.clone();
    changed.spawn.as_mut().unwrap().args = vec!["echo twice".into()];
    let (code, why, msg) = refused(spawn_as(&mut c, &fed, "operator", changed).await);
    assert_eq!(
        (code, why.as_str()),
        (Code::AlreadyExists, "request_reused")
    );
    assert!(msg.contains("build-42"), "{msg}");
    // Another caller's equal request id is its own request.
    let theirs = spawn_as(&mut c, &fed, "admin", request.clone())
        .await
        .unwrap();
    assert_ne!(job_id(&theirs), job_id(&first));

    let counts = c
        .queue_stats(authed(
            &fed.token("admin"),
            admin::QueueRequest {
                spoke_id: "a".into(),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .queue
        .unwrap();
    assert_eq!(
        counts.active + counts.pending + counts.completed + counts.failed,
        2,
        "{counts:?}"
    );

    // A request whose first try found the spoke down is sent again, with the same command id,
    // when it is retried after the spoke is back: one job.
    fed.kill_spoke("a");
    let mut late = spawn_request("ws-test", "a", "true");
    late.request_id = "after-outage".into();
    let (code, why, msg) = refused(spawn_as(&mut c, &fed, "operator", late.clone()).await);
    assert_eq!(
        (code, why.as_str()),
        (Code::Unavailable, "spoke_unavailable"),
        "{msg}"
    );
    assert!(msg.contains("spoke/a") || msg.contains("spoke a:"), "{msg}");
    fed.restart_spoke("a").unwrap();
    let mut tries = 0;
    let done = loop {
        match spawn_as(&mut c, &fed, "operator", late.clone()).await {
            Ok(r) => break r,
            Err(s) if s.code() == Code::Unavailable && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(s) => panic!("{s:?}"),
        }
    };
    let twice = spawn_as(&mut c, &fed, "operator", late).await.unwrap();
    assert_eq!(job_id(&twice), job_id(&done));
    assert!(twice.replayed);

    // The audit trail has both tries of that request under one command id, recorded as
    // answered, and every record verifies.
    let records = c
        .audit(authed(
            &fed.token("admin"),
            admin::AuditRequest {
                command_id: done.command_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .records;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].outcome, "ok");
    assert_eq!(records[0].request_id, "after-outage");
    assert_eq!(records[0].caller, "operator");
    let all = c
        .audit(authed(&fed.token("admin"), admin::AuditRequest::default()))
        .await
        .unwrap()
        .into_inner();
    assert!(all.records.len() >= 4, "{:?}", all.records.len());
    for r in &all.records {
        assert!(r.verified || r.outcome != "ok", "{r:?}");
        assert!(r.command.is_some());
    }
    assert!(
        all.records.windows(2).all(|w| w[0].at_ms >= w[1].at_ms),
        "newest first"
    );
}

#[tokio::test]
async fn the_hub_places_a_spawn_on_the_least_loaded_matching_spoke_and_names_what_it_cannot_reach()
{
    let mut fed = Federation::builder()
        .spoke("a")
        .spoke("b")
        .spoke("c")
        .labels("a", &[("zone", "x")])
        .labels("b", &[("zone", "x"), ("gpu", "yes")])
        .labels("c", &[("zone", "y")])
        .hub_server()
        .start()
        .await
        .unwrap();
    let mut c = fed.admin().await.unwrap();
    let placed = |selector: &[(&str, &str)]| {
        let mut r = spawn_request("ws-test", "", "sleep 300");
        r.selector = selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        r
    };
    // Load spoke b, then place by zone=x: a is less loaded.
    for _ in 0..2 {
        spawn_as(
            &mut c,
            &fed,
            "operator",
            spawn_request("ws-test", "b", "sleep 300"),
        )
        .await
        .unwrap();
    }
    let r = spawn_as(&mut c, &fed, "operator", placed(&[("zone", "x")]))
        .await
        .unwrap();
    assert_eq!(r.spoke_id, "a");
    // Every label must match.
    let r = spawn_as(
        &mut c,
        &fed,
        "operator",
        placed(&[("zone", "x"), ("gpu", "yes")]),
    )
    .await
    .unwrap();
    assert_eq!(r.spoke_id, "b");
    let r = spawn_as(&mut c, &fed, "operator", placed(&[("zone", "y")]))
        .await
        .unwrap();
    assert_eq!(r.spoke_id, "c");
    // The hub remembers where it placed the job: status needs no spoke.
    assert_eq!(
        status_as(&mut c, &fed, "viewer", &job_id(&r), "")
            .await
            .unwrap()
            .spoke_id,
        "c"
    );

    let (code, why, msg) =
        refused(spawn_as(&mut c, &fed, "operator", placed(&[("zone", "z")])).await);
    assert_eq!((code, why.as_str()), (Code::FailedPrecondition, "no_spoke"));
    assert!(msg.contains("zone=z"), "{msg}");
    let mut no_profile = placed(&[]);
    no_profile.spawn.as_mut().unwrap().profile = "missing".into();
    let (code, _, msg) = refused(spawn_as(&mut c, &fed, "operator", no_profile).await);
    assert_eq!(code, Code::Unavailable);
    assert!(msg.contains("a: does not offer profile missing"), "{msg}");

    // A dead spoke: placement passes it over and says so; naming it fails fast, naming it.
    fed.kill_spoke("c");
    let started = Instant::now();
    let (code, _, msg) =
        refused(spawn_as(&mut c, &fed, "operator", placed(&[("zone", "y")])).await);
    assert_eq!(code, Code::Unavailable);
    assert!(msg.contains("c: "), "{msg}");
    let (code, why, msg) = refused(
        spawn_as(
            &mut c,
            &fed,
            "operator",
            spawn_request("ws-test", "c", "true"),
        )
        .await,
    );
    assert_eq!(
        (code, why.as_str()),
        (Code::Unavailable, "spoke_unavailable")
    );
    assert!(msg.contains("spoke/c") || msg.contains("spoke c:"), "{msg}");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "took {:?}",
        started.elapsed()
    );
    let r = spawn_as(&mut c, &fed, "operator", placed(&[]))
        .await
        .unwrap();
    assert_ne!(r.spoke_id, "c");

    // Bad input names the field and changes nothing.
    let mut both = placed(&[("zone", "x")]);
    both.spoke_id = "a".into();
    let (code, _, msg) = refused(spawn_as(&mut c, &fed, "operator", both).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("spoke_id or selector"), "{msg}");
    let (code, _, msg) =
        refused(spawn_as(&mut c, &fed, "operator", placed(&[("bad key", "x")])).await);
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("selector"), "{msg}");
    let (code, _, msg) = refused(
        spawn_as(
            &mut c,
            &fed,
            "operator",
            spawn_request("ws-test", "zz", "true"),
        )
        .await,
    );
    assert_eq!(code, Code::InvalidArgument);
    assert!(msg.contains("spoke zz is not in the hub's config"), "{msg}");
    let mut bad = spawn_request("ws-test", "a", "true");
    bad.request_id = "no spaces".into();
    assert!(
        refused(spawn_as(&mut c, &fed, "operator", bad).await)
            .2
            .contains("request_id")
    );
    let mut bad = spawn_request("ws-test", "a", "true");
    bad.spawn.as_mut().unwrap().priority = Some(11);
    assert!(
        refused(spawn_as(&mut c, &fed, "operator", bad).await)
            .2
            .contains("spawn.priority")
    );

    // ListSpokes shows the labels and the dead spoke by name.
    let spokes = c
        .list_spokes(authed(&fed.token("viewer"), admin::ListSpokesRequest {}))
        .await
        .unwrap()
        .into_inner()
        .spokes;
    let b = spokes.iter().find(|s| s.spoke_id == "b").unwrap();
    assert_eq!(b.labels.get("gpu").map(String::as_str), Some("yes"));
    assert_eq!(b.queue.unwrap().active, 3);
    let dead = spokes.iter().find(|s| s.spoke_id == "c").unwrap();
    assert!(!dead.reachable && !dead.error.is_empty());
}

#[tokio::test]
async fn the_http_api_serves_the_same_operations_as_json_and_describes_them() {
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let bearer = |t: &str| format!("Bearer {}", fed.token(t));
    let (op, viewer, admin_t) = (bearer("operator"), bearer("viewer"), bearer("admin"));
    let http = |method: &'static str, path: String, token: String, body: Option<String>| {
        let fed = &fed;
        async move {
            let (code, _, body_reader) = fed
                .hub_http(
                    method,
                    &path,
                    &[("Authorization", token.as_str())],
                    body.as_deref(),
                )
                .await
                .unwrap();
            let text = body_reader.text().await.unwrap();
            let json: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{method} {path}: {e}: {text}"));
            (code, json)
        }
    };

    let spawn = r#"{"spoke_id": "a", "request_id": "http-1",
        "spawn": {"profile": "sh", "workspace": "ws-test", "args": ["sleep 300"], "priority": 7}}"#;
    let (code, v) = http("POST", "/v1/jobs".into(), op.clone(), Some(spawn.into())).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["spoke_id"], "a");
    assert_eq!(v["job"]["priority"], 7);
    assert_eq!(v["replayed"], false);
    let job = v["job"]["job_id"].as_str().unwrap().to_owned();
    // The same request again is the same job.
    let (_, v) = http("POST", "/v1/jobs".into(), op.clone(), Some(spawn.into())).await;
    assert_eq!(
        (v["job"]["job_id"].as_str(), &v["replayed"]),
        (Some(job.as_str()), &serde_json::json!(true))
    );

    let (code, v) = http("GET", format!("/v1/jobs/{job}"), viewer.clone(), None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["job"]["workspace"], "ws-test");
    let (code, v) = http(
        "GET",
        "/v1/jobs?workspace=ws-test&limit=10".into(),
        viewer.clone(),
        None,
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert!(v["jobs"].is_array());
    let (code, v) = http("GET", "/v1/spokes/a/queue".into(), viewer.clone(), None).await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["queue"]["paused"], false);
    let (code, v) = http("GET", "/v1/spokes".into(), viewer.clone(), None).await;
    assert_eq!(
        (code, &v["spokes"][0]["reachable"]),
        (200, &serde_json::json!(true))
    );

    // Refusals: one mapping, the gRPC code and reason in the body, nothing internal.
    let (code, v) = http("POST", format!("/v1/jobs/{job}/kill"), viewer.clone(), None).await;
    assert_eq!(
        (code, v["code"].as_str(), v["reason"].as_str()),
        (403, Some("PermissionDenied"), Some("forbidden"))
    );
    let guessed = uuid::Uuid::now_v7();
    let (code, v) = http("GET", format!("/v1/jobs/{guessed}"), viewer.clone(), None).await;
    assert_eq!((code, v["reason"].as_str()), (404, Some("not_found")));
    let (code, v) = http("GET", "/v1/spokes".into(), "Bearer nope".into(), None).await;
    assert_eq!((code, v["reason"].as_str()), (401, Some("unauthenticated")));
    let (code, v) = http(
        "POST",
        "/v1/jobs".into(),
        op.clone(),
        Some(r#"{"spawn": {"profile": "sh", "workspace": "ws test"}}"#.into()),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("spawn.workspace"),
        "{v}"
    );
    let (code, v) = http(
        "POST",
        "/v1/jobs".into(),
        op.clone(),
        Some(r#"{"spawnn": {}}"#.into()),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("spawnn"), "{v}");
    let (code, v) = http("POST", "/v1/spokes/a/queue/pause".into(), op.clone(), None).await;
    assert_eq!(code, 403, "{v}");

    let (code, v) = http(
        "POST",
        format!("/v1/jobs/{job}/kill"),
        op.clone(),
        Some(r#"{"request_id": "k-1"}"#.into()),
    )
    .await;
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["job"]["state"], "JOB_STATE_CANCELLED");

    let (code, v) = http("GET", "/v1/audit?limit=5".into(), admin_t.clone(), None).await;
    assert_eq!(code, 200, "{v}");
    let records = v["records"].as_array().unwrap();
    assert!(!records.is_empty());
    assert!(records.iter().all(|r| r["verified"] == true), "{v}");
    assert_eq!(records[0]["verb"], "kill");

    // The OpenAPI document describes every route the server has.
    let (code, doc) = http("GET", "/v1/openapi.json".into(), String::new(), None).await;
    assert_eq!(code, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    for route in mosaic_hub::http::ROUTES {
        assert!(
            doc["paths"][route.path][route.method].is_object(),
            "{} {} missing from the document",
            route.method,
            route.path
        );
    }
    assert!(doc["components"]["schemas"]["mosaic.admin.v1.SpawnRequest"].is_object());
}

#[tokio::test]
async fn health_and_reflection_answer_for_probes_and_grpcurl() {
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let trust =
        mosaic_shared::tls::TlsMaterial::trust_only(&fed.dir().join("pki").join("ca.crt")).unwrap();
    let channel = mosaic_shared::tls::connect(
        &fed.hub_addr().to_string(),
        mosaic_shared::tls::SpiffeId::new(TRUST_DOMAIN, mosaic_shared::tls::Role::Hub, HUB),
        &trust,
        mosaic_shared::tls::DialOptions::default(),
    )
    .await
    .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    for service in ["", "mosaic.admin.v1.Admin"] {
        let r = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            r.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{service:?}"
        );
    }

    use tonic_reflection::pb::v1::{
        ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
    };
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let answer = answers.message().await.unwrap().unwrap();
    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"mosaic.admin.v1.Admin".to_owned()),
        "{names:?}"
    );
}

#[tokio::test]
async fn an_admin_client_certificate_authenticates_like_a_token_with_its_own_entry() {
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    use mosaic_shared::tls::Role;
    // `ops` is an operator in ws-test by its certificate's identity; no token is sent.
    let mut ops = fed.admin_with_cert(Role::Admin, "ops").await.unwrap();
    let spawned = ops
        .spawn(tonic::Request::new(spawn_request("ws-test", "a", "true")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(spawned.spoke_id, "a");
    let other = ops
        .spawn(tonic::Request::new(spawn_request("ws-other", "a", "true")))
        .await;
    assert_eq!(refused(other).0, Code::NotFound);
    let pause = ops
        .pause_queue(tonic::Request::new(admin::QueueRequest {
            spoke_id: "a".into(),
        }))
        .await;
    assert_eq!(refused(pause).0, Code::PermissionDenied);
    // The audit trail names the certificate's entry as the caller.
    let mut c = fed.admin().await.unwrap();
    let record = c
        .audit(authed(
            &fed.token("admin"),
            admin::AuditRequest {
                command_id: spawned.command_id.clone(),
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .records
        .remove(0);
    assert_eq!(record.caller, "ops");

    // A token, when sent, decides: the viewer token over the ops certificate may not spawn.
    let as_viewer = ops
        .spawn(authed(
            &fed.token("viewer"),
            spawn_request("ws-test", "a", "true"),
        ))
        .await;
    assert_eq!(refused(as_viewer).0, Code::PermissionDenied);

    // A valid certificate without an entry, and a spoke's certificate, are nobody.
    let mut stranger = fed.admin_with_cert(Role::Admin, "stranger").await.unwrap();
    let (code, why, msg) = refused(
        stranger
            .list_spokes(tonic::Request::new(admin::ListSpokesRequest {}))
            .await,
    );
    assert_eq!(
        (code, why.as_str()),
        (Code::Unauthenticated, "unauthenticated")
    );
    assert!(msg.contains("admin/stranger has no entry"), "{msg}");
    let mut spoke = fed.admin_with_cert(Role::Spoke, "a").await.unwrap();
    let r = spoke
        .list_spokes(tonic::Request::new(admin::ListSpokesRequest {}))
        .await;
    assert_eq!(refused(r).0, Code::Unauthenticated);

    // Over HTTP too.
    let (code, _, body) = fed
        .hub_http_as(Some("ops"), "GET", "/v1/spokes", &[], None)
        .await
        .unwrap();
    assert_eq!(code, 200, "{}", body.text().await.unwrap());
    let (code, _, _) = fed
        .hub_http_as(Some("stranger"), "GET", "/v1/spokes", &[], None)
        .await
        .unwrap();
    assert_eq!(code, 401);

    // Removing the entry revokes the certificate without a restart.
    let tokens = fed.dir().join("tokens.toml");
    let text = std::fs::read_to_string(&tokens).unwrap();
    let kept = &text[..text.find("name = \"ops\"").unwrap() - "[[tokens]]\n".len()];
    std::fs::write(&tokens, kept).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = ops
            .list_spokes(tonic::Request::new(admin::ListSpokesRequest {}))
            .await;
        match r {
            Err(s) if s.code() == Code::Unauthenticated => break,
            other => {
                assert!(Instant::now() < deadline, "still accepted: {other:?}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[test]
fn the_cli_authenticates_with_a_client_certificate() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let fed = rt
        .block_on(Federation::builder().spoke("a").hub_server().start())
        .unwrap();
    let pki = fed.dir().join("pki");
    let cert = pki.join("admin-ops.crt");
    let key = pki.join("admin-ops.key");
    let hub = fed.hub_addr().to_string();
    let (code, out, err) = hub_cli(
        &fed,
        &[
            "spokes",
            "--hub",
            &hub,
            "--client-cert",
            cert.to_str().unwrap(),
            "--client-key",
            key.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().nth(1).unwrap().starts_with("a "), "{out}");
    let (code, _, err) = hub_cli(
        &fed,
        &[
            "spokes",
            "--hub",
            &hub,
            "--client-cert",
            cert.to_str().unwrap(),
        ],
    );
    assert_eq!(
        code, 2,
        "a certificate without its key is a usage error: {err}"
    );
}
