//! Jobs run their attempts as real processes that complete, fail, are killed and time out;
//! their state is read back through signed status commands and checked against the spoke's
//! Valkey.

use std::time::{Duration, Instant};

use mosaic_shared::pb::federation::v1 as pb;
use mosaic_spoke::store::Store;
use mosaic_tests::*;

async fn lifecycle(fed: &Federation, spoke: &str, agent: &str) -> Vec<(String, String)> {
    let store = Store::connect(
        &mosaic_shared::valkey::Target::single(fed.valkey_url()),
        &spoke_id(spoke),
    )
    .await
    .unwrap();
    store
        .lifecycle_events(&agent.parse().unwrap())
        .await
        .unwrap()
}

fn pair(from: &str, to: &str) -> (String, String) {
    (from.to_owned(), to.to_owned())
}

fn only_attempt(j: &pb::JobStatus) -> &pb::AgentStatus {
    assert_eq!(j.attempt_history.len(), 1, "{j:?}");
    &j.attempt_history[0]
}

#[tokio::test]
async fn spawn_runs_to_completed_with_output_and_events() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    let (r, job) = fed
        .run_to_end(&a, spawn_action("echo", &["hello", "world"]))
        .await;
    let queued = job_of(&r);
    assert!(
        matches!(
            queued.state(),
            pb::JobState::Pending | pb::JobState::Assigned | pb::JobState::Executing
        ),
        "{queued:?}"
    );
    assert_eq!(queued.profile, "echo");
    assert_eq!(queued.workspace, "ws-test");
    assert_eq!(queued.command_id, r.command_id.to_string());

    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    assert_eq!((job.attempts, job.failures), (1, 0));
    let done = only_attempt(&job);
    assert_eq!(done.state(), pb::AgentState::Completed);
    assert_eq!(done.job_id, job.job_id);
    assert_eq!(done.attempt, 1);
    assert_eq!(done.exit_code, Some(0));
    assert_eq!(done.signal, None);
    assert_eq!(done.error, "");
    assert_eq!(done.output_tail, "hello world\n");
    let (created, started, finished) = (
        done.created_at_ms,
        done.started_at_ms.unwrap(),
        done.finished_at_ms.unwrap(),
    );
    assert!(created <= started && started <= finished, "{done:?}");
    assert!(done.pid.is_some());

    assert_eq!(
        lifecycle(&fed, "a", &done.agent_id).await,
        vec![
            pair("", "spawning"),
            pair("spawning", "running"),
            pair("running", "completed")
        ]
    );
    // Status answers for the attempt's agent id too, with the whole job.
    let by_agent = a
        .execute(&fed.hub.signer, status_action(&done.agent_id))
        .await
        .unwrap();
    assert_eq!(job_of(&by_agent).job_id, job.job_id);
}

#[tokio::test]
async fn agent_gets_only_allowed_env_and_its_workdir() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    let spawn = spawn_with("sh", &["pwd; env | sort"], |s| {
        s.env = [("GREETING".to_string(), "hi there".to_string())].into();
        s.workdir = "jobs/42".into();
        s.max_retries = Some(0);
    });
    let (_, job) = fed.run_to_end(&a, spawn).await;
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    let mut lines = only_attempt(&job).output_tail.lines();
    let cwd = lines.next().unwrap();
    let root = fed.workdir_root("a", "sh").canonicalize().unwrap();
    assert_eq!(std::path::Path::new(cwd), root.join("jobs/42"));
    let env: Vec<&str> = lines.collect();
    assert!(env.contains(&"GREETING=hi there"), "{env:?}");
    // The spoke's own environment (PATH, MOSAIC_LOG, …) must not leak into the agent; sh
    // itself adds only PWD (and possibly SHLVL/_/OLDPWD).
    for line in &env {
        let name = line.split('=').next().unwrap();
        assert!(
            ["GREETING", "PWD", "SHLVL", "_", "OLDPWD"].contains(&name),
            "unexpected variable in agent env: {line}"
        );
    }
}

#[tokio::test]
async fn failing_program_ends_failed_with_its_exit_code() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    let (_, job) = fed
        .run_to_end(&a, spawn_action("sh", &["echo oops >&2; exit 7"]))
        .await;
    assert_eq!(job.state(), pb::JobState::Failed);
    assert_eq!(job.error, "exited with code 7");
    let done = only_attempt(&job);
    assert_eq!(done.state(), pb::AgentState::Failed);
    assert_eq!(done.exit_code, Some(7));
    assert_eq!(done.error, "exited with code 7");
    assert_eq!(done.output_tail, "oops\n");
    assert_eq!(
        lifecycle(&fed, "a", &done.agent_id).await,
        vec![
            pair("", "spawning"),
            pair("spawning", "running"),
            pair("running", "failed")
        ]
    );
}

#[tokio::test]
async fn a_program_that_cannot_start_fails_from_spawning() {
    // The spoke checks programs at start-up, so this one disappears afterwards.
    let bin = tempfile::tempdir().unwrap();
    let program = bin.path().join("agent");
    std::fs::write(&program, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(
        &program,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let fed = Federation::builder()
        .spoke("a")
        .profile(
            "missing",
            ProfileSpec {
                program: program.display().to_string(),
                args: vec![],
                allowed_env: vec![],
                kill_grace_ms: 100,
                concurrency: None,
                extra: vec![],
            },
        )
        .start()
        .await
        .unwrap();
    std::fs::remove_file(&program).unwrap();
    let a = fed.client("a").await.unwrap();
    let (_, job) = fed.run_to_end(&a, spawn_action("missing", &[])).await;
    assert_eq!(job.state(), pb::JobState::Failed);
    let done = only_attempt(&job);
    assert!(
        done.error
            .starts_with(&format!("cannot start {}: No such file", program.display())),
        "{}",
        done.error
    );
    assert_eq!(done.started_at_ms, None);
    assert_eq!(
        lifecycle(&fed, "a", &done.agent_id).await,
        vec![pair("", "spawning"), pair("spawning", "failed")]
    );
}

/// Reads whitespace-separated pids from a file the agent writes, waiting for it to appear.
pub async fn read_pids(path: &std::path::Path, count: usize) -> Vec<i32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            let pids: Vec<i32> = text
                .split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect();
            if pids.len() >= count {
                return pids;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} never listed {count} pids",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn kill_ends_the_agent_and_its_children() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    // Two grandchildren in the agent's process group, their pids written down for us.
    let script = "sleep 300 & echo $! >> pids; sleep 300 & echo $! >> pids; wait";
    let r = a
        .execute(&fed.hub.signer, spawn_action("sh", &[script]))
        .await
        .unwrap();
    let id = job_of(&r).job_id.clone();
    let children = read_pids(&fed.workdir_root("a", "sh").join("pids"), 2).await;
    let running = wait_running(&fed.hub, &a, &id).await.unwrap();
    let leader = running.pid.unwrap() as i32;
    assert!(alive(leader) && children.iter().all(|&p| alive(p)));

    let started = Instant::now();
    let killed = a.execute(&fed.hub.signer, kill_action(&id)).await.unwrap();
    let took = started.elapsed();
    let job = job_of(&killed);
    assert_eq!(job.state(), pb::JobState::Cancelled, "{job:?}");
    let attempt = only_attempt(job);
    assert_eq!(attempt.state(), pb::AgentState::Killed);
    assert_eq!(attempt.signal, Some(15), "sh dies of SIGTERM");
    assert!(
        attempt.error.starts_with("killed by hub hub"),
        "{}",
        attempt.error
    );
    assert!(job.error.starts_with("killed by hub hub"), "{}", job.error);
    // Well within the 1 s grace: SIGTERM was enough.
    assert!(took < Duration::from_secs(1), "kill took {took:?}");
    assert!(!alive(leader), "agent process {leader} survived");
    for p in children {
        assert!(
            gone_within(p, Duration::from_secs(2)).await,
            "child {p} of the killed agent survived"
        );
    }
    assert_eq!(
        lifecycle(&fed, "a", &attempt.agent_id).await,
        vec![
            pair("", "spawning"),
            pair("spawning", "running"),
            pair("running", "killed")
        ]
    );

    // Killing again is harmless and reports the same end; a killed job is never retried.
    let again = a.execute(&fed.hub.signer, kill_action(&id)).await.unwrap();
    assert_eq!(job_of(&again).state(), pb::JobState::Cancelled);
    assert_eq!(job_of(&again).finished_at_ms, job.finished_at_ms);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let later = a
        .execute(&fed.hub.signer, status_action(&id))
        .await
        .unwrap();
    assert_eq!(job_of(&later).attempts, 1);
}

#[tokio::test]
async fn an_agent_ignoring_sigterm_is_sigkilled_after_the_grace() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    let script = "trap '' TERM; echo $$ > pids; while :; do sleep 0.05; done";
    let r = a
        .execute(&fed.hub.signer, spawn_action("sh", &[script]))
        .await
        .unwrap();
    let pid = read_pids(&fed.workdir_root("a", "sh").join("pids"), 1).await[0];
    let started = Instant::now();
    let killed = a
        .execute(&fed.hub.signer, kill_action(&job_of(&r).job_id))
        .await
        .unwrap();
    let took = started.elapsed();
    let attempt = only_attempt(job_of(&killed));
    assert_eq!(attempt.state(), pb::AgentState::Killed);
    assert_eq!(attempt.signal, Some(9), "{attempt:?}");
    // The profile's grace is 1 s: SIGKILL must come after it, and promptly.
    assert!(
        took >= Duration::from_millis(1000) && took < Duration::from_secs(4),
        "kill took {took:?}"
    );
    assert!(gone_within(pid, Duration::from_secs(2)).await);
}

#[tokio::test]
async fn an_attempt_past_its_timeout_is_killed_and_counts_as_a_failure() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    let spawn = spawn_with("sh", &["sleep 30"], |s| {
        s.attempt_timeout_ms = Some(300);
        s.max_retries = Some(1);
        s.backoff_base_ms = Some(100);
    });
    let started = Instant::now();
    let (_, job) = fed.run_to_end(&a, spawn).await;
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(job.state(), pb::JobState::Failed, "{job:?}");
    assert_eq!(
        (job.attempts, job.failures),
        (2, 2),
        "retried once, then out of retries"
    );
    for attempt in &job.attempt_history {
        assert_eq!(attempt.state(), pb::AgentState::Failed);
        assert_eq!(attempt.error, "timed out after 300 ms");
        assert_eq!(attempt.signal, Some(15));
    }
}

#[tokio::test]
async fn status_of_an_unknown_id_is_not_found() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    let id = uuid::Uuid::now_v7().to_string();
    let err = a
        .execute(&fed.hub.signer, status_action(&id))
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains(&format!("job or agent {id} not found")) && text.contains("NotFound"),
        "{text}"
    );
    let err = a
        .execute(&fed.hub.signer, kill_action(&id))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("not found"), "{err}");
}

#[tokio::test]
async fn stopping_a_spoke_ends_its_attempts_and_requeues_their_jobs() {
    let mut fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    let r = a
        .execute(
            &fed.hub.signer,
            spawn_action("sh", &["echo $$ > pids; sleep 300"]),
        )
        .await
        .unwrap();
    let pid = read_pids(&fed.workdir_root("a", "sh").join("pids"), 1).await[0];
    assert!(alive(pid));
    // Graceful stop: SIGTERM to the spoke, which ends its attempts before it exits.
    fed.kill_spoke_gracefully("a");
    assert!(
        gone_within(pid, Duration::from_secs(2)).await,
        "agent {pid} outlived its spoke"
    );
    let store = Store::connect(
        &mosaic_shared::valkey::Target::single(fed.valkey_url()),
        &spoke_id("a"),
    )
    .await
    .unwrap();
    let (job, attempts) = store
        .job_with_attempts(&job_of(&r).job_id.parse().unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        job.state.as_str(),
        "pending",
        "an interrupted job goes back to the queue"
    );
    assert_eq!(job.failures, 0, "a shutdown is not the job's failure");
    assert_eq!(attempts[0].state.as_str(), "failed");
    assert_eq!(attempts[0].error, "spoke shutting down");
}

#[tokio::test]
async fn a_command_whose_caller_gave_up_still_finishes_and_answers_the_retry() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    // Ignores SIGTERM, so the kill takes the profile's whole 1 s grace.
    let script = "trap '' TERM; echo $$ > pids; while :; do sleep 0.05; done";
    let r = a
        .execute(&fed.hub.signer, spawn_action("sh", &[script]))
        .await
        .unwrap();
    read_pids(&fed.workdir_root("a", "sh").join("pids"), 1).await;

    let hub_key = fed.key(HUB);
    let kill = RawCommand::new(HUB, "a", &hub_key, kill_action(&job_of(&r).job_id)).seal(&hub_key);
    let mut client = fed.raw_client("a", &fed.hub_tls(HUB)).await.unwrap();
    let mut impatient = tonic::Request::new(kill.clone());
    impatient.set_timeout(Duration::from_millis(100));
    let err = client.execute(impatient).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::Cancelled, "{err:?}");

    // The kill carried on without its caller; the retry gets its receipt, not "in flight".
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let receipt = client.execute(kill).await.unwrap().into_inner();
    let receipt = <pb::Receipt as prost::Message>::decode(receipt.receipt.as_slice()).unwrap();
    let Some(pb::receipt::Result::Job(job)) = receipt.result else {
        panic!("no job in {receipt:?}");
    };
    assert_eq!(job.state(), pb::JobState::Cancelled);
    assert_eq!(only_attempt(&job).signal, Some(9));
}
