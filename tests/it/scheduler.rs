//! The scheduler with real spokes and real processes: priority order, delays, retry timing,
//! concurrency limits (checked by a ledger the agents write), `kill -9` of the spoke and a
//! restart of Valkey with AOF.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use mosaic_shared::pb::federation::v1 as pb;
use mosaic_tests::*;

/// A shell line that records the agent's start and end (nanoseconds) and its name in `ledger`
/// (in the profile's working-directory root), sleeping `secs` in between.
pub(crate) fn witness(name: &str, secs: f64) -> String {
    format!(
        "echo \"start {name} $(date +%s%N)\" >> ledger; sleep {secs}; echo \"end {name} $(date +%s%N)\" >> ledger"
    )
}

/// Parses a ledger into (name, start ns, end ns) per finished run.
pub(crate) fn ledger(path: &Path) -> Vec<(String, u128, u128)> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut open: BTreeMap<String, u128> = BTreeMap::new();
    let mut runs = Vec::new();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let (Some(kind), Some(name), Some(t)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let t: u128 = t.parse().unwrap();
        match kind {
            "start" => {
                open.insert(name.to_owned(), t);
            }
            _ => runs.push((
                name.to_owned(),
                open.remove(name).expect("end without start"),
                t,
            )),
        }
    }
    runs
}

/// The most runs that overlapped at any moment.
pub(crate) fn max_overlap(runs: &[(String, u128, u128)]) -> usize {
    let mut edges: Vec<(u128, i32)> = runs
        .iter()
        .flat_map(|(_, s, e)| [(*s, 1), (*e, -1)])
        .collect();
    // Ends before starts at the same instant: touching is not overlapping.
    edges.sort_by_key(|&(t, d)| (t, d));
    let (mut now, mut max) = (0i32, 0i32);
    for (_, d) in edges {
        now += d;
        max = max.max(now);
    }
    max as usize
}

async fn wait_all(
    fed: &Federation,
    spoke: &str,
    jobs: &[String],
    within: Duration,
) -> Vec<pb::JobStatus> {
    let client = fed.client(spoke).await.unwrap();
    let mut out = Vec::new();
    for j in jobs {
        out.push(
            wait_for(&fed.hub, &client, j, within, terminal)
                .await
                .unwrap(),
        );
    }
    out
}

async fn spawn(fed: &Federation, spoke: &str, action: pb::command::Action) -> String {
    let client = fed.client(spoke).await.unwrap();
    let r = client.execute(&fed.hub.signer, action).await.unwrap();
    job_of(&r).job_id.clone()
}

async fn queue_control(
    fed: &Federation,
    spoke: &str,
    action: pb::command::Action,
) -> pb::QueueCounts {
    let client = fed.client(spoke).await.unwrap();
    let r = client.execute(&fed.hub.signer, action).await.unwrap();
    *r.queue().expect("queue counts")
}

#[tokio::test]
async fn higher_priority_runs_first_and_fifo_within_a_priority() {
    let fed = Federation::builder()
        .spoke("a")
        .queue("concurrency", "1")
        .start()
        .await
        .unwrap();
    let paused = queue_control(
        &fed,
        "a",
        pb::command::Action::PauseQueue(pb::PauseQueue {}),
    )
    .await;
    assert!(paused.paused);
    let mut jobs = Vec::new();
    for (name, priority) in [
        ("low", 1),
        ("mid1", 5),
        ("top1", 10),
        ("mid2", 5),
        ("top2", 10),
    ] {
        let line = format!("echo {name} >> order");
        let action = spawn_with("sh", &[&line], |s| {
            s.priority = Some(priority);
            s.max_retries = Some(0);
        });
        jobs.push(spawn(&fed, "a", action).await);
    }
    let client = fed.client("a").await.unwrap();
    let r = client
        .execute(&fed.hub.signer, status_action(&jobs[0]))
        .await
        .unwrap();
    assert!(
        job_of(&r).queue_paused,
        "a pending job reports the paused queue"
    );
    let counts = queue_control(
        &fed,
        "a",
        pb::command::Action::QueueStats(pb::QueueStats {}),
    )
    .await;
    assert_eq!(
        (counts.pending, counts.active),
        (5, 0),
        "nothing runs while paused"
    );

    queue_control(
        &fed,
        "a",
        pb::command::Action::ResumeQueue(pb::ResumeQueue {}),
    )
    .await;
    let done = wait_all(&fed, "a", &jobs, Duration::from_secs(20)).await;
    assert!(done.iter().all(|j| j.state() == pb::JobState::Completed));
    let order = std::fs::read_to_string(fed.workdir_root("a", "sh").join("order")).unwrap();
    assert_eq!(order, "top1\ntop2\nmid1\nmid2\nlow\n");
}

#[tokio::test]
async fn a_delayed_job_waits_its_delay_and_can_be_removed_while_waiting() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let delayed = spawn_with("true", &[], |s| {
        s.delay_ms = Some(800);
        s.max_retries = Some(0);
    });
    let client = fed.client("a").await.unwrap();
    let r = client.execute(&fed.hub.signer, delayed).await.unwrap();
    let job = job_of(&r).clone();
    assert_eq!(job.state(), pb::JobState::Delayed);
    assert!(job.ready_at_ms >= job.created_at_ms + 800);
    let done = wait_for(
        &fed.hub,
        &client,
        &job.job_id,
        Duration::from_secs(10),
        terminal,
    )
    .await
    .unwrap();
    assert_eq!(done.state(), pb::JobState::Completed);
    let started = done.attempt_history[0].started_at_ms.unwrap();
    let late = started - job.ready_at_ms;
    assert!(
        (0..1000).contains(&late),
        "started {late} ms after its time"
    );

    // Removing a waiting job cancels it; removing a finished one is refused.
    let far = spawn_with("true", &[], |s| s.delay_ms = Some(60_000));
    let far = spawn(&fed, "a", far).await;
    let remove = |id: &str| pb::command::Action::RemoveJob(pb::RemoveJob { job_id: id.into() });
    let r = client.execute(&fed.hub.signer, remove(&far)).await.unwrap();
    assert_eq!(job_of(&r).state(), pb::JobState::Cancelled);
    assert!(
        job_of(&r).error.starts_with("removed by hub hub"),
        "{:?}",
        job_of(&r)
    );
    let err = client
        .execute(&fed.hub.signer, remove(&job.job_id))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("is completed, not waiting in the queue"),
        "{err}"
    );
}

#[tokio::test]
async fn retries_wait_their_backoff_and_stop_when_retries_run_out() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let action = spawn_with("sh", &["exit 1"], |s| {
        s.max_retries = Some(2);
        s.backoff_base_ms = Some(300);
        s.backoff_cap_ms = Some(10_000);
    });
    let id = spawn(&fed, "a", action).await;
    let client = fed.client("a").await.unwrap();
    let job = wait_for(&fed.hub, &client, &id, Duration::from_secs(15), terminal)
        .await
        .unwrap();
    assert_eq!(job.state(), pb::JobState::Failed);
    assert_eq!((job.attempts, job.failures, job.max_retries), (3, 3, 2));
    let h = &job.attempt_history;
    for (n, ideal) in [(1usize, 300i64), (2, 600)] {
        let gap = h[n].started_at_ms.unwrap() - h[n - 1].finished_at_ms.unwrap();
        // Jitter takes up to 20% off; the scheduler may add a little.
        assert!(
            gap >= ideal * 8 / 10 - 5 && gap <= ideal + 500,
            "retry {n} started {gap} ms after the failure, expected about {ideal} ms"
        );
    }
}

#[tokio::test]
async fn concurrency_limits_are_never_exceeded() {
    let mut solo = default_profiles()["sh"].clone();
    solo.concurrency = Some(1);
    let fed = Federation::builder()
        .spoke("a")
        .profile("solo", solo)
        .queue("concurrency", "3")
        .start()
        .await
        .unwrap();
    let mut jobs = Vec::new();
    for i in 0..8 {
        let name = format!("sh{i}");
        jobs.push(spawn(&fed, "a", spawn_action("sh", &[&witness(&name, 0.25)])).await);
    }
    for i in 0..4 {
        let name = format!("solo{i}");
        jobs.push(spawn(&fed, "a", spawn_action("solo", &[&witness(&name, 0.25)])).await);
    }
    let done = wait_all(&fed, "a", &jobs, Duration::from_secs(30)).await;
    assert!(
        done.iter().all(|j| j.state() == pb::JobState::Completed),
        "{done:?}"
    );

    let sh = ledger(&fed.workdir_root("a", "sh").join("ledger"));
    let solo = ledger(&fed.workdir_root("a", "solo").join("ledger"));
    assert_eq!((sh.len(), solo.len()), (8, 4));
    let all: Vec<_> = sh.iter().chain(&solo).cloned().collect();
    assert!(max_overlap(&all) <= 3, "more than 3 agents at once");
    assert!(
        max_overlap(&solo) <= 1,
        "the solo profile ran twice at once"
    );
    assert!(
        max_overlap(&all) >= 2,
        "agents never ran in parallel: the limit is not being used"
    );
}

#[tokio::test]
async fn kill_9_of_the_spoke_loses_no_job_and_never_runs_a_job_twice_at_once() {
    let mut fed = Federation::builder()
        .spoke("a")
        .queue("concurrency", "2")
        .queue("lease_ms", "1500")
        .start()
        .await
        .unwrap();
    // Two that will be running when the spoke dies (they record their pid), ...
    let mut jobs = Vec::new();
    let retried = |s: &mut pb::Spawn| {
        s.max_retries = Some(3);
        s.backoff_base_ms = Some(100);
    };
    for i in 0..2 {
        let line = format!("echo $$ >> pids; {}", witness(&format!("long{i}"), 1.0));
        jobs.push(spawn(&fed, "a", spawn_with("sh", &[&line], retried)).await);
    }
    // ... three queued behind them, ...
    for i in 0..3 {
        jobs.push(
            spawn(
                &fed,
                "a",
                spawn_action("sh", &[&witness(&format!("queued{i}"), 0.1)]),
            )
            .await,
        );
    }
    // ... and one waiting out a retry backoff (its first attempt fails at once).
    let flaky = "if [ -e flaky-ran ]; then true; else touch flaky-ran; exit 1; fi";
    jobs.push(
        spawn(
            &fed,
            "a",
            spawn_with("sh", &[flaky], |s| {
                s.max_retries = Some(3);
                s.backoff_base_ms = Some(2000);
                s.priority = Some(10);
            }),
        )
        .await,
    );
    let pids = crate::agents::read_pids(&fed.workdir_root("a", "sh").join("pids"), 2).await;
    tokio::time::sleep(Duration::from_millis(200)).await;

    fed.kill_spoke("a");
    assert!(
        pids.iter().all(|&p| alive(p)),
        "the orphans live on after kill -9 of their spoke"
    );
    fed.restart_spoke("a").unwrap();

    let done = wait_all(&fed, "a", &jobs, Duration::from_secs(40)).await;
    for j in &done {
        assert_eq!(j.state(), pb::JobState::Completed, "{j:?}");
    }
    for p in pids {
        assert!(
            !alive(p),
            "orphaned agent {p} was not killed by the restarted spoke"
        );
    }
    // The interrupted jobs failed their first attempt with spoke_restarted and ran again.
    for j in &done[..2] {
        assert_eq!(j.attempt_history[0].error, "spoke_restarted", "{j:?}");
        assert!(j.attempts >= 2);
    }
    // No job ever had two attempts alive at once: each attempt ended (was recorded dead)
    // before the next one started.
    for j in &done {
        for w in j.attempt_history.windows(2) {
            let (prev, next) = (&w[0], &w[1]);
            assert!(
                prev.finished_at_ms.unwrap() <= next.started_at_ms.unwrap(),
                "job {} overlapped attempts: {prev:?} {next:?}",
                j.job_id
            );
        }
    }
    // The ledger confirms it from the agents' side: no name ran twice at once.
    let runs = ledger(&fed.workdir_root("a", "sh").join("ledger"));
    for name in ["long0", "long1", "queued0", "queued1", "queued2"] {
        let mine: Vec<_> = runs.iter().filter(|r| r.0 == name).cloned().collect();
        assert!(!mine.is_empty(), "{name} never finished a run");
        assert!(max_overlap(&mine) <= 1, "{name} ran twice at once");
    }
}

#[tokio::test]
async fn a_valkey_restart_with_aof_loses_nothing_and_needs_no_manual_step() {
    let mut fed = Federation::builder()
        .spoke("a")
        .persistent_valkey()
        .start()
        .await
        .unwrap();
    let client = fed.client("a").await.unwrap();
    let (_, finished) = fed
        .run_to_end(&client, spawn_action("echo", &["before"]))
        .await;
    let delayed = spawn(
        &fed,
        "a",
        spawn_with("echo", &["after"], |s| {
            s.delay_ms = Some(1500);
            s.max_retries = Some(0);
        }),
    )
    .await;

    let restarted = Instant::now();
    fed.restart_valkey().await.unwrap();

    // The finished job is still there, the delayed one still runs on time, and new work is
    // accepted: scripts are reloaded after NOSCRIPT without anyone's help.
    let r = match client
        .execute(&fed.hub.signer, status_action(&finished.job_id))
        .await
    {
        Ok(r) => r,
        Err(e) => panic!("{e}\n{}", fed.spoke_log("a")),
    };
    assert_eq!(job_of(&r).state(), pb::JobState::Completed);
    assert_eq!(job_of(&r).attempt_history[0].output_tail, "before\n");
    let after = wait_for(
        &fed.hub,
        &client,
        &delayed,
        Duration::from_secs(15),
        terminal,
    )
    .await
    .unwrap();
    assert_eq!(after.state(), pb::JobState::Completed, "{after:?}");
    assert_eq!(after.attempt_history[0].output_tail, "after\n");
    let (_, fresh) = fed
        .run_to_end(&client, spawn_action("echo", &["new"]))
        .await;
    assert_eq!(fresh.state(), pb::JobState::Completed);
    assert!(restarted.elapsed() < Duration::from_secs(15));
}
