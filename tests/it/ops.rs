//! Operations: the spoke's ops port (Prometheus metrics, liveness, readiness, gRPC health over
//! h2c) and its graceful drain, with real processes: a rolling restart under load loses no
//! job and never runs one twice at once.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mosaic_hub::config::HubConfig;
use mosaic_hub::spokes::{SpokeClient, SpokeError};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_tests::*;

use crate::scheduler::{ledger, max_overlap, witness};

/// The value of the sample named `series` (with its labels, as printed), if present.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

/// Polls `GET path` until `ok` holds for (status, body), or fails with the last answer.
async fn wait_http(
    addr: SocketAddr,
    path: &str,
    within: Duration,
    ok: impl Fn(u16, &str) -> bool,
) -> (u16, String) {
    let deadline = Instant::now() + within;
    loop {
        let (code, body) = http_get(addr, path).await;
        if ok(code, &body) {
            return (code, body);
        }
        assert!(
            Instant::now() < deadline,
            "GET {path} still answers {code} after {within:?}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn grpc_health(addr: SocketAddr, service: &str) -> i32 {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = tonic_health::pb::health_client::HealthClient::new(channel);
    client
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
}

const SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::Serving as i32;
const NOT_SERVING: i32 = tonic_health::pb::health_check_response::ServingStatus::NotServing as i32;

#[tokio::test]
async fn the_ops_port_serves_metrics_liveness_readiness_and_grpc_health() {
    let mut fed = Federation::builder().spoke("a").start().await.unwrap();
    let ops = fed.spoke_ops_addr("a");
    let client = fed.client("a").await.unwrap();
    for _ in 0..3 {
        let (_, job) = fed.run_to_end(&client, spawn_action("echo", &["hi"])).await;
        assert_eq!(job.state(), pb::JobState::Completed);
    }
    // A command signed with a key the spoke does not trust for this hub.
    let stranger = fed.key(OTHER_HUB);
    let refused = client
        .execute(
            &mosaic_hub::sign::Signer::new(
                fed.hub.hub_id.clone(),
                stranger,
                Duration::from_secs(60),
            ),
            status_action("nothing"),
        )
        .await;
    assert!(refused.is_err(), "{refused:?}");

    assert_eq!(http_get(ops, "/healthz").await.0, 200);
    wait_http(ops, "/readyz", Duration::from_secs(10), |c, _| c == 200).await;
    assert_eq!(grpc_health(ops, "").await, SERVING);
    assert_eq!(
        grpc_health(ops, "mosaic.federation.v1.Federation").await,
        SERVING
    );

    // The queue gauges refresh every 2 s.
    let (code, metrics) = wait_http(ops, "/metrics", Duration::from_secs(10), |_, b| {
        sample(b, "mosaic_spoke_queue_jobs{state=\"completed\"}") == Some(3.0)
    })
    .await;
    assert_eq!(code, 200);
    assert_eq!(
        sample(
            &metrics,
            "mosaic_spoke_commands_total{verb=\"spawn\",outcome=\"ok\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    assert!(
        sample(
            &metrics,
            "mosaic_spoke_commands_total{verb=\"status\",outcome=\"ok\"}"
        )
        .is_some_and(|n| n >= 3.0),
        "{metrics}"
    );
    let verification: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("mosaic_spoke_verification_failures_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(verification, 1.0, "{metrics}");
    assert_eq!(
        sample(
            &metrics,
            "mosaic_spoke_attempt_duration_seconds_count{profile=\"echo\",outcome=\"completed\"}"
        ),
        Some(3.0),
        "{metrics}"
    );
    assert_eq!(sample(&metrics, "mosaic_spoke_draining"), Some(0.0));
    assert_eq!(
        sample(&metrics, "mosaic_spoke_valkey_errors_total"),
        Some(0.0)
    );
    assert!(metrics.contains("mosaic_build_info{"), "{metrics}");
    assert!(metrics.ends_with("# EOF\n"), "{metrics}");

    // Without Valkey the spoke is alive but not ready, and says why; it recovers by itself.
    fed.stop_valkey().await;
    let (_, why) = wait_http(ops, "/readyz", Duration::from_secs(15), |c, _| c == 503).await;
    assert!(why.contains("Valkey"), "{why}");
    assert_eq!(http_get(ops, "/healthz").await.0, 200);
    assert_eq!(grpc_health(ops, "").await, NOT_SERVING);
    fed.restart_valkey().await.unwrap();
    wait_http(ops, "/readyz", Duration::from_secs(15), |c, _| c == 200).await;
    assert_eq!(grpc_health(ops, "").await, SERVING);
    let (_, metrics) = http_get(ops, "/metrics").await;
    assert!(
        sample(&metrics, "mosaic_spoke_valkey_errors_total").is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
}

/// Keeps spawning `witness` jobs until told to stop, retrying a spawn that a draining or
/// absent spoke refuses; returns the ids of the jobs the spoke took and how many spawns were
/// refused as `draining`.
async fn keep_spawning(
    hub: HubConfig,
    stop: tokio::sync::watch::Receiver<bool>,
) -> (Vec<String>, u32) {
    let mut jobs = Vec::new();
    let mut refused_draining = 0;
    let mut n = 0;
    while !*stop.borrow() {
        let name = format!("load{n}");
        let action = spawn_with("sh", &[&witness(&name, 0.2)], |s| s.max_retries = Some(0));
        loop {
            let sent = match SpokeClient::connect(&hub, &spoke_id("a")).await {
                Ok(client) => client.execute(&hub.signer, action.clone()).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(r) => {
                    jobs.push(job_of(&r).job_id.clone());
                    break;
                }
                Err(SpokeError::Refused {
                    code: tonic::Code::Unavailable,
                    reason: Some(r),
                    ..
                }) if r == "draining" => refused_draining += 1,
                // Down between its drain and its restart.
                Err(SpokeError::Connect(_) | SpokeError::Refused { .. }) => {}
                Err(e) => panic!("spawn {name}: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    (jobs, refused_draining)
}

#[tokio::test]
async fn a_rolling_restart_under_load_drains_and_loses_no_job() {
    let mut fed = Federation::builder()
        .spoke("a")
        .spoke_setting("drain_deadline_ms", "2500")
        .queue("concurrency", "4")
        .start()
        .await
        .unwrap();
    let client = fed.client("a").await.unwrap();
    // A long job that the drain deadline overtakes: stopped, re-queued, run again after the
    // restart, without counting a failure (it allows none).
    let long = job_of(
        &client
            .execute(
                &fed.hub.signer,
                spawn_with("sh", &[&witness("long", 6.0)], |s| s.max_retries = Some(0)),
            )
            .await
            .unwrap(),
    )
    .job_id
    .clone();
    wait_running(&fed.hub, &client, &long).await.unwrap();

    let (stop_load, load_stop) = tokio::sync::watch::channel(false);
    let hub = HubConfig::load(&fed.dir().join("hub.toml"), &Default::default()).unwrap();
    let load = tokio::spawn(keep_spawning(hub, load_stop));
    let mut shorts = Vec::new();
    for round in 0..2 {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let client = fed.client("a").await.unwrap();
        // A job running when the drain starts finishes normally during the drain.
        let short = job_of(
            &client
                .execute(
                    &fed.hub.signer,
                    spawn_with("sh", &["sleep 0.8"], |s| s.priority = Some(10)),
                )
                .await
                .unwrap(),
        )
        .job_id
        .clone();
        wait_running(&fed.hub, &client, &short).await.unwrap();
        let began = Instant::now();
        fed.signal_spoke("a", nix::sys::signal::Signal::SIGTERM);
        // Draining: Info says so, and spawns are refused with the reason.
        let deadline = Instant::now() + Duration::from_secs(2);
        while !client.info().await.unwrap().draining {
            assert!(
                Instant::now() < deadline,
                "round {round}: Info never said draining"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let refused = client
            .execute(&fed.hub.signer, spawn_action("echo", &["late"]))
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, SpokeError::Refused { code: tonic::Code::Unavailable, reason: Some(r), message, .. }
                if r == "draining" && message.contains("draining")),
            "{refused}"
        );
        let done = wait_for(&fed.hub, &client, &short, Duration::from_secs(5), terminal)
            .await
            .unwrap();
        assert_eq!(
            done.state(),
            pb::JobState::Completed,
            "round {round}: {done:?}"
        );
        assert_eq!(done.attempts, 1, "{done:?}");
        shorts.push(short);

        let status = fed
            .wait_spoke_exit("a", Duration::from_secs(15))
            .await
            .expect("the spoke exits after its drain");
        let took = began.elapsed();
        assert!(status.success(), "round {round}: {status}");
        // The deadline (2.5 s), then at most the kill grace (1 s) for what was still running.
        assert!(
            took >= Duration::from_millis(2400) && took < Duration::from_secs(8),
            "round {round}: the drain took {took:?}"
        );
        fed.restart_spoke("a").unwrap();
    }
    let _ = stop_load.send(true);
    let (jobs, refused_draining) = load.await.unwrap();
    assert!(jobs.len() >= 20, "only {} jobs under load", jobs.len());
    assert!(refused_draining >= 1, "no load spawn met a draining spoke");

    let client = fed.client("a").await.unwrap();
    let mut all = jobs.clone();
    all.extend(shorts);
    all.push(long.clone());
    for j in &all {
        let done = wait_for(&fed.hub, &client, j, Duration::from_secs(40), terminal)
            .await
            .unwrap();
        assert_eq!(done.state(), pb::JobState::Completed, "{done:?}");
        for w in done.attempt_history.windows(2) {
            assert!(
                w[0].finished_at_ms.unwrap() <= w[1].started_at_ms.unwrap(),
                "job {j} overlapped attempts: {:?}",
                done.attempt_history
            );
        }
        if *j == long {
            // Stopped by both drains (running each time the deadline passed), then finished.
            assert!(done.attempts >= 2, "{done:?}");
            assert_eq!(
                done.failures, 0,
                "a drain must not count a failure: {done:?}"
            );
            assert_eq!(done.attempt_history[0].state(), pb::AgentState::Failed);
        }
    }
    // From the agents' side: no job ran twice at once.
    let runs = ledger(&fed.workdir_root("a", "sh").join("ledger"));
    let mut names: Vec<&str> = runs.iter().map(|r| r.0.as_str()).collect();
    names.sort_unstable();
    names.dedup();
    for name in names {
        let mine: Vec<_> = runs.iter().filter(|r| r.0 == name).cloned().collect();
        assert!(max_overlap(&mine) <= 1, "{name} ran twice at once");
    }
    assert!(
        runs.iter().any(|r| r.0 == "long"),
        "the long job never finished a run"
    );
}

#[tokio::test]
async fn the_hub_counts_commands_requests_upstreams_watchers_and_token_reloads() {
    use mosaic_shared::pb::admin::v1 as admin;
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let ops = fed.hub_ops_addr();
    wait_http(ops, "/readyz", Duration::from_secs(10), |c, _| c == 200).await;
    assert_eq!(grpc_health(ops, "mosaic.admin.v1.Admin").await, SERVING);

    let mut c = fed.admin().await.unwrap();
    let job = admin_spawn(&mut c, &fed.token("operator"), "a", "echo", &["hi"]).await;
    // A viewer may not spawn: counted with its code.
    let refused = c
        .spawn(authed(
            &fed.token("viewer"),
            admin::SpawnRequest {
                spoke_id: "a".into(),
                spawn: Some(pb::Spawn {
                    profile: "echo".into(),
                    workspace: "ws-test".into(),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    let (code, _, _) = fed
        .hub_http_get(
            &format!("/v1/jobs/{job}"),
            &[(
                "authorization",
                &format!("Bearer {}", fed.token("operator")),
            )],
        )
        .await
        .unwrap();
    assert_eq!(code, 200);
    // A watch open now is counted while it lasts.
    let mut watch = admin_watch_job(&mut c, &fed.token("operator"), &job).await;
    watch.message().await.unwrap().unwrap();

    let (_, m) = wait_http(ops, "/metrics", Duration::from_secs(10), |_, b| {
        sample(b, "mosaic_hub_upstream_events_total{spoke=\"a\"}").is_some_and(|n| n >= 1.0)
            && sample(b, "mosaic_hub_subscribers") == Some(1.0)
    })
    .await;
    for (series, want) in [
        (
            "mosaic_hub_commands_total{verb=\"spawn\",outcome=\"ok\"}",
            1.0,
        ),
        (
            "mosaic_hub_admin_requests_total{transport=\"grpc\",operation=\"Spawn\",code=\"Ok\"}",
            1.0,
        ),
        (
            "mosaic_hub_admin_requests_total{transport=\"grpc\",operation=\"Spawn\",code=\"PermissionDenied\"}",
            1.0,
        ),
        (
            "mosaic_hub_admin_requests_total{transport=\"http\",operation=\"GET /v1/jobs/{id}\",code=\"200\"}",
            1.0,
        ),
        (
            "mosaic_hub_command_duration_seconds_count{verb=\"spawn\"}",
            1.0,
        ),
        ("mosaic_hub_upstream_connected{spoke=\"a\"}", 1.0),
        ("mosaic_reload_ok{what=\"tokens\"}", 1.0),
    ] {
        assert_eq!(sample(&m, series), Some(want), "{series} in:\n{m}");
    }
    drop(watch);
    wait_http(ops, "/metrics", Duration::from_secs(10), |_, b| {
        sample(b, "mosaic_hub_subscribers") == Some(0.0)
    })
    .await;

    // A broken tokens file is refused, counted, and the previous tokens stay in force.
    let tokens = fed.dir().join("tokens.toml");
    let good = std::fs::read_to_string(&tokens).unwrap();
    std::fs::write(&tokens, "this is = not [ toml").unwrap();
    let (_, m) = wait_http(ops, "/metrics", Duration::from_secs(10), |_, b| {
        sample(b, "mosaic_reload_ok{what=\"tokens\"}") == Some(0.0)
    })
    .await;
    assert_eq!(
        sample(&m, "mosaic_reload_failures_total{what=\"tokens\"}"),
        Some(1.0),
        "{m}"
    );
    let still = c
        .get_status(authed(
            &fed.token("operator"),
            admin::GetStatusRequest {
                id: job.clone(),
                ..Default::default()
            },
        ))
        .await;
    assert!(still.is_ok(), "{still:?}");
    std::fs::write(&tokens, good + "\n").unwrap();
    wait_http(ops, "/metrics", Duration::from_secs(10), |_, b| {
        sample(b, "mosaic_reload_ok{what=\"tokens\"}") == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn hub_and_spoke_use_a_valkey_acl_user_and_a_wrong_password_is_a_clear_start_error() {
    use mosaic_shared::pb::admin::v1 as admin;
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .valkey_user("mosaic", "s3cret-pw")
        .start()
        .await
        .unwrap();
    // Without the user, Valkey refuses: the default user is off.
    let anonymous = fed.valkey_url().split('?').next().unwrap().to_owned();
    let refused = async {
        let client = redis::Client::open(anonymous.as_str())?;
        let mut con = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut con).await
    }
    .await;
    assert!(refused.is_err(), "{refused:?}");

    // Through the hub: spawn, run, events; both processes work as the ACL user.
    let mut c = fed.admin().await.unwrap();
    let job = admin_spawn(&mut c, &fed.token("operator"), "a", "echo", &["hi"]).await;
    let mut watch = admin_watch_job(&mut c, &fed.token("operator"), &job).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let item = tokio::time::timeout_at(deadline.into(), watch.message())
            .await
            .expect("the job's completion arrives")
            .unwrap()
            .unwrap();
        if let Some(admin::watch_response::Item::Event(e)) = item.item
            && e.r#type() == pb::EventType::JobCompleted
        {
            break;
        }
    }

    // A spoke with a wrong password stops at start-up, says why, and never prints it.
    let config = std::fs::read_to_string(fed.dir().join("a.toml")).unwrap();
    let bad = fed.dir().join("bad.toml");
    std::fs::write(&bad, config.replace("pass=s3cret-pw", "pass=not-it")).unwrap();
    let (status, stderr) = spoke_start_failure(&bad).await;
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("authentication failed")
            && stderr.contains("check the user and password")
            && stderr.contains("pass=***"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("not-it"),
        "the password was printed: {stderr}"
    );
}
