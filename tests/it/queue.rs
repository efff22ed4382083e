//! The spoke's job queue against a real Valkey: priority and FIFO order, delays, retries with
//! backoff, cancellation, pause, removal, concurrency limits, retention, and a property-based
//! comparison with a plain model over random sequences of operations. The scripts take "now"
//! from the caller, so time is simulated exactly here.

use std::time::Duration;

use mosaic_hub::dev::{Valkey, find_valkey_server};
use mosaic_shared::config::Env;
use mosaic_shared::ids::{AgentId, CommandId, JobId, ProfileName};
use mosaic_spoke::job::{JobOptions, JobState};
use mosaic_spoke::store::{AttemptEnd, Dispatched, Guarded, NewJob, Outcome, QueueCounts, Store};
use proptest::prelude::*;

const T0: i64 = 1_800_000_000_000;

async fn valkey() -> (tempfile::TempDir, Valkey) {
    let dir = tempfile::tempdir().unwrap();
    let bin = find_valkey_server(&Env::from_process()).unwrap();
    let v = Valkey::start(&bin, dir.path(), &[]).await.unwrap();
    (dir, v)
}

async fn store(v: &Valkey, spoke: &str) -> Store {
    Store::connect(
        &mosaic_shared::valkey::Target::single(v.url()),
        &spoke.parse().unwrap(),
    )
    .await
    .unwrap()
}

fn options(priority: u8) -> JobOptions {
    JobOptions {
        priority,
        not_before_ms: None,
        max_retries: 3,
        backoff_base: Duration::from_millis(1000),
        backoff_cap: Duration::from_millis(60_000),
        attempt_timeout: None,
    }
}

fn new_job(profile: &str, options: JobOptions) -> NewJob {
    NewJob {
        job_id: JobId::generate(),
        workspace: "ws".parse().unwrap(),
        profile: profile.parse().unwrap(),
        command_id: CommandId::generate(),
        spec: "{}".into(),
        options,
        created_at_ms: T0,
        trace: Default::default(),
    }
}

/// One dispatch call asking for one attempt, with `token` (`repeat`: a retry of a call with
/// that token); also returns the next due time.
async fn dispatch_as(
    s: &Store,
    token: &str,
    repeat: bool,
    now: i64,
    limit: usize,
    limits: &[(ProfileName, usize)],
) -> (Option<Dispatched>, Option<i64>) {
    let (mut started, next_due) = s
        .dispatch_many(
            now,
            Duration::from_secs(30),
            1,
            token,
            repeat,
            "me",
            limit,
            limits,
        )
        .await
        .unwrap();
    (started.pop(), next_due)
}

async fn dispatch(
    s: &Store,
    now: i64,
    limit: usize,
    limits: &[(ProfileName, usize)],
) -> Option<Dispatched> {
    dispatch_as(s, &fresh_token(), false, now, limit, limits)
        .await
        .0
}

/// When the earliest delayed job is due, as a dispatch at `now` (with no slot free) reports it.
async fn next_due(s: &Store, now: i64) -> Option<i64> {
    dispatch_as(s, &fresh_token(), false, now, 0, &[]).await.1
}

fn fresh_token() -> String {
    JobId::generate().to_string()
}

fn end(outcome: Outcome, delay_ms: u64) -> AttemptEnd {
    AttemptEnd {
        outcome,
        retry_delay: Duration::from_millis(delay_ms),
        error: if outcome == Outcome::Completed {
            String::new()
        } else {
            "boom".into()
        },
        exit_code: Some(if outcome == Outcome::Completed { 0 } else { 1 }),
        signal: None,
        output_tail: String::new(),
        started: None,
    }
}

#[tokio::test]
async fn higher_priority_first_and_fifo_within_a_priority() {
    let (_d, v) = valkey().await;
    let s = store(&v, "a").await;
    let mut expected: Vec<(u8, usize, JobId)> = Vec::new();
    for (i, p) in [5u8, 10, 1, 5, 10, 7, 5, 1].into_iter().enumerate() {
        let j = new_job("p", options(p));
        assert_eq!(s.enqueue(&j, T0).await.unwrap(), JobState::Pending);
        expected.push((p, i, j.job_id));
    }
    expected.sort_by_key(|(p, i, _)| (std::cmp::Reverse(*p), *i));
    let mut got = Vec::new();
    while let Some(d) = dispatch(&s, T0, 100, &[]).await {
        assert_eq!(d.attempt, 1);
        got.push(d.job_id);
    }
    assert_eq!(
        got,
        expected
            .into_iter()
            .map(|(_, _, id)| id)
            .collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn delayed_jobs_wait_for_their_time() {
    let (_d, v) = valkey().await;
    let s = store(&v, "a").await;
    let mut o = options(5);
    o.not_before_ms = Some(T0 + 5_000);
    let j = new_job("p", o);
    assert_eq!(s.enqueue(&j, T0).await.unwrap(), JobState::Delayed);
    assert_eq!(next_due(&s, T0).await, Some(T0 + 5_000));
    assert!(dispatch(&s, T0 + 4_999, 10, &[]).await.is_none());
    let d = dispatch(&s, T0 + 5_000, 10, &[])
        .await
        .expect("due at its time");
    assert_eq!(d.job_id, j.job_id);
    assert_eq!(next_due(&s, T0 + 5_000).await, None);
}

#[tokio::test]
async fn failures_retry_with_the_given_backoff_until_retries_run_out() {
    let (_d, v) = valkey().await;
    let s = store(&v, "a").await;
    let mut o = options(5);
    o.max_retries = 2;
    let j = new_job("p", o);
    s.enqueue(&j, T0).await.unwrap();
    let mut now = T0;
    for attempt in 1..=3u32 {
        let d = dispatch(&s, now, 10, &[]).await.expect("dispatchable");
        assert_eq!((d.attempt, d.failures), (attempt, attempt - 1));
        let r = s
            .attempt_running(&d.job_id, &d.agent_id, now, 4242, 1)
            .await
            .unwrap();
        assert_eq!(r, Guarded::Applied("spawning".into()));
        let delay = 1000 * u64::from(attempt);
        let next = s
            .attempt_ended(
                &d.job_id,
                &d.agent_id,
                now + 10,
                &end(Outcome::Failed, delay),
            )
            .await
            .unwrap();
        let rec = s.job(&j.job_id).await.unwrap().unwrap();
        if attempt < 3 {
            assert_eq!(next, Guarded::Applied("delayed".into()));
            assert_eq!(rec.ready_at_ms, now + 10 + delay as i64);
            assert!(
                dispatch(&s, rec.ready_at_ms - 1, 10, &[]).await.is_none(),
                "too early"
            );
            now = rec.ready_at_ms;
        } else {
            assert_eq!(next, Guarded::Applied("failed".into()));
            assert_eq!(rec.state, JobState::Failed);
            assert_eq!(rec.failures, 3);
            assert_eq!(rec.attempt_ids.len(), 3);
            assert_eq!(rec.error, "boom");
        }
    }
    assert!(dispatch(&s, now + 1_000_000, 10, &[]).await.is_none());
    let c = s.queue_counts().await.unwrap();
    assert_eq!((c.failed, c.active, c.pending, c.delayed), (1, 0, 0, 0));
}

#[tokio::test]
async fn killed_jobs_are_cancelled_never_retried_and_interrupted_ones_requeue() {
    let (_d, v) = valkey().await;
    let s = store(&v, "a").await;
    let j = new_job("p", options(5));
    s.enqueue(&j, T0).await.unwrap();
    let d = dispatch(&s, T0, 10, &[]).await.unwrap();
    let r = s
        .attempt_ended(&d.job_id, &d.agent_id, T0, &end(Outcome::Killed, 0))
        .await
        .unwrap();
    assert_eq!(r, Guarded::Applied("cancelled".into()));
    assert!(dispatch(&s, T0 + 1_000_000, 10, &[]).await.is_none());
    // Ending the same attempt twice is refused: the lifecycle is over.
    let again = s
        .attempt_ended(&d.job_id, &d.agent_id, T0, &end(Outcome::Failed, 0))
        .await
        .unwrap();
    assert_eq!(again, Guarded::Refused("killed".into()));

    let j2 = new_job("p", options(5));
    s.enqueue(&j2, T0).await.unwrap();
    let d = dispatch(&s, T0, 10, &[]).await.unwrap();
    let r = s
        .attempt_ended(&d.job_id, &d.agent_id, T0, &end(Outcome::Interrupted, 0))
        .await
        .unwrap();
    assert_eq!(r, Guarded::Applied("pending".into()));
    let d2 = dispatch(&s, T0, 10, &[]).await.unwrap();
    assert_eq!(
        (d2.job_id.clone(), d2.attempt, d2.failures),
        (j2.job_id.clone(), 2, 0)
    );
}

#[tokio::test]
async fn pause_remove_limits_and_counts() {
    let (_d, v) = valkey().await;
    let s = store(&v, "a").await;
    let jobs: Vec<NewJob> = (0..4)
        .map(|i| new_job(if i < 3 { "heavy" } else { "light" }, options(5)))
        .collect();
    for j in &jobs {
        s.enqueue(j, T0).await.unwrap();
    }
    s.set_paused(true).await.unwrap();
    assert!(dispatch(&s, T0, 10, &[]).await.is_none(), "paused");
    assert!(s.queue_counts().await.unwrap().paused);
    s.set_paused(false).await.unwrap();

    // heavy is limited to 1 at a time: after one heavy, the light job jumps ahead.
    let limits = [("heavy".parse().unwrap(), 1)];
    let first = dispatch(&s, T0, 10, &limits).await.unwrap();
    assert_eq!(first.job_id, jobs[0].job_id);
    let second = dispatch(&s, T0, 10, &limits).await.unwrap();
    assert_eq!(
        second.job_id, jobs[3].job_id,
        "light passes the blocked heavy jobs"
    );
    assert!(dispatch(&s, T0, 10, &limits).await.is_none());
    // Total limit of 2 reached too.
    assert!(dispatch(&s, T0, 2, &[]).await.is_none());

    // Remove a pending job; a running one cannot be removed.
    let r = s
        .remove_job(&jobs[1].job_id, T0, "removed by operator")
        .await
        .unwrap();
    assert_eq!(r, Guarded::Applied("pending".into()));
    let r = s
        .remove_job(&jobs[0].job_id, T0, "removed by operator")
        .await
        .unwrap();
    assert_eq!(r, Guarded::Refused("assigned".into()));
    assert_eq!(
        s.remove_job(&JobId::generate(), T0, "x").await.unwrap(),
        Guarded::Missing
    );

    let c = s.queue_counts().await.unwrap();
    assert_eq!(
        c,
        QueueCounts {
            pending: 1,
            delayed: 0,
            active: 2,
            completed: 0,
            failed: 0,
            cancelled: 1,
            paused: false
        }
    );
}

#[tokio::test]
async fn retention_deletes_old_and_excess_finished_jobs_with_their_attempts() {
    let (_d, v) = valkey().await;
    let s = store(&v, "a").await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let j = new_job("p", options(5));
        s.enqueue(&j, T0).await.unwrap();
        let d = dispatch(&s, T0, 10, &[]).await.unwrap();
        s.attempt_running(&d.job_id, &d.agent_id, T0, 1, 1)
            .await
            .unwrap();
        s.attempt_ended(
            &d.job_id,
            &d.agent_id,
            T0 + i * 1000,
            &end(Outcome::Completed, 0),
        )
        .await
        .unwrap();
        ids.push((j.job_id, d.agent_id));
    }
    // Keep at most 3, and nothing finished before T0 + 1000: jobs 0 and 1 go.
    let removed = s
        .trim_finished(T0 + 11_000, Duration::from_secs(10), 3)
        .await
        .unwrap();
    assert_eq!(removed, 2);
    for (i, (job, agent)) in ids.iter().enumerate() {
        let kept = s.job(job).await.unwrap().is_some();
        assert_eq!(kept, i >= 2, "job {i}");
        assert_eq!(
            s.agent(agent).await.unwrap().is_some(),
            i >= 2,
            "attempt of job {i}"
        );
    }
    assert_eq!(s.queue_counts().await.unwrap().completed, 3);
}

/// A plain model of the queue, to compare the scripts with.
#[derive(Clone, Debug)]
struct ModelJob {
    id: JobId,
    priority: u8,
    seq: u64,
    profile: &'static str,
    state: JobState,
    ready_at: i64,
    failures: u32,
    max_retries: u32,
    attempt: Option<(AgentId, bool)>,
    /// The pid recorded for the current attempt once it runs.
    pid: Option<u32>,
}

#[derive(Default)]
struct Model {
    jobs: Vec<ModelJob>,
    paused: bool,
    seq: u64,
}

const LIMIT: usize = 4;
const PROFILE_LIMIT: usize = 2;

impl Model {
    fn promote(&mut self, now: i64) {
        for j in &mut self.jobs {
            if j.state == JobState::Delayed && j.ready_at <= now {
                j.state = JobState::Pending;
            }
        }
    }

    fn active(&self, profile: Option<&str>) -> usize {
        self.jobs
            .iter()
            .filter(|j| j.state.is_active() && profile.is_none_or(|p| p == j.profile))
            .count()
    }

    /// The job dispatch should pick, if any.
    fn pick(&mut self, now: i64) -> Option<usize> {
        self.promote(now);
        if self.paused || self.active(None) >= LIMIT {
            return None;
        }
        let mut pending: Vec<usize> = (0..self.jobs.len())
            .filter(|&i| self.jobs[i].state == JobState::Pending)
            .collect();
        pending.sort_by_key(|&i| (10 - self.jobs[i].priority, self.jobs[i].seq));
        pending.truncate(64);
        pending.into_iter().find(|&i| {
            self.jobs[i].profile != "limited" || self.active(Some("limited")) < PROFILE_LIMIT
        })
    }

    fn counts(&self) -> QueueCounts {
        let n = |s: JobState| self.jobs.iter().filter(|j| j.state == s).count() as u64;
        QueueCounts {
            pending: n(JobState::Pending),
            delayed: n(JobState::Delayed),
            active: self.active(None) as u64,
            completed: n(JobState::Completed),
            failed: n(JobState::Failed),
            cancelled: n(JobState::Cancelled),
            paused: self.paused,
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Enqueue {
        priority: u8,
        delay: i64,
        limited: bool,
        retries: u32,
    },
    Dispatch,
    Start(usize),
    End(usize, u8),
    Remove(usize),
    Pause(bool),
    Advance(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u8..=10, prop_oneof![Just(0i64), 1i64..3000], any::<bool>(), 0u32..3)
            .prop_map(|(priority, delay, limited, retries)| Op::Enqueue { priority, delay, limited, retries }),
        4 => Just(Op::Dispatch),
        2 => (0usize..8).prop_map(Op::Start),
        2 => ((0usize..8), 0u8..4).prop_map(|(i, o)| Op::End(i, o)),
        1 => (0usize..16).prop_map(Op::Remove),
        1 => any::<bool>().prop_map(Op::Pause),
        2 => (1i64..2000).prop_map(Op::Advance),
    ]
}

async fn check(s: &Store, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut m = Model::default();
    let mut now = T0;
    let limits = [("limited".parse().unwrap(), PROFILE_LIMIT)];
    for (step, op) in ops.into_iter().enumerate() {
        match op {
            Op::Enqueue {
                priority,
                delay,
                limited,
                retries,
            } => {
                let profile = if limited { "limited" } else { "free" };
                let mut o = options(priority);
                o.max_retries = retries;
                o.not_before_ms = (delay > 0).then_some(now + delay);
                let j = new_job(profile, o);
                let state = s.enqueue(&j, now).await.unwrap();
                m.seq += 1;
                let expect = if delay > 0 {
                    JobState::Delayed
                } else {
                    JobState::Pending
                };
                prop_assert_eq!(state, expect);
                m.jobs.push(ModelJob {
                    id: j.job_id,
                    priority,
                    seq: m.seq,
                    profile,
                    state,
                    ready_at: now + delay,
                    failures: 0,
                    max_retries: retries,
                    attempt: None,
                    pid: None,
                });
            }
            Op::Dispatch => {
                let want = m.pick(now);
                let got = dispatch(s, now, LIMIT, &limits).await;
                prop_assert_eq!(
                    got.as_ref().map(|d| d.job_id.clone()),
                    want.map(|i| m.jobs[i].id.clone())
                );
                if let (Some(i), Some(d)) = (want, got) {
                    prop_assert_eq!(d.failures, m.jobs[i].failures);
                    m.jobs[i].state = JobState::Assigned;
                    m.jobs[i].attempt = Some((d.agent_id, false));
                    m.jobs[i].pid = None;
                }
            }
            Op::Start(k) | Op::End(k, _) if m.active(None) == 0 => {
                let _ = k;
            }
            Op::Start(k) => {
                let i = m
                    .jobs
                    .iter()
                    .enumerate()
                    .filter(|(_, j)| j.state.is_active())
                    .map(|(i, _)| i)
                    .nth(k % m.active(None))
                    .unwrap();
                let (agent, started) = m.jobs[i].attempt.clone().unwrap();
                // Two possible pids: a repeat with the recorded pid is a retried call and
                // counts as done; another pid is refused.
                let pid = 100 + (k % 2) as u32;
                let r = s
                    .attempt_running(&m.jobs[i].id, &agent, now, pid, 1)
                    .await
                    .unwrap();
                if started {
                    let expect = if m.jobs[i].pid == Some(pid) {
                        Guarded::Applied("spawning".into())
                    } else {
                        Guarded::Refused("running".into())
                    };
                    prop_assert_eq!(r, expect);
                } else {
                    m.jobs[i].pid = Some(pid);
                    prop_assert_eq!(r, Guarded::Applied("spawning".into()));
                    m.jobs[i].state = JobState::Executing;
                    m.jobs[i].attempt = Some((agent, true));
                }
            }
            Op::End(k, o) => {
                let i = m
                    .jobs
                    .iter()
                    .enumerate()
                    .filter(|(_, j)| j.state.is_active())
                    .map(|(i, _)| i)
                    .nth(k % m.active(None))
                    .unwrap();
                let outcome = [
                    Outcome::Completed,
                    Outcome::Failed,
                    Outcome::Killed,
                    Outcome::Interrupted,
                ][o as usize];
                let (agent, started) = m.jobs[i].attempt.take().unwrap();
                let r = s
                    .attempt_ended(&m.jobs[i].id, &agent, now, &end(outcome, 500))
                    .await
                    .unwrap();
                if outcome == Outcome::Completed && !started {
                    // Only a running attempt can complete; nothing changes.
                    prop_assert_eq!(r, Guarded::Refused("spawning".into()));
                    m.jobs[i].attempt = Some((agent, started));
                    continue;
                }
                let j = &mut m.jobs[i];
                j.state = match outcome {
                    Outcome::Completed => JobState::Completed,
                    Outcome::Killed => JobState::Cancelled,
                    Outcome::Interrupted => JobState::Pending,
                    Outcome::Failed => {
                        j.failures += 1;
                        if j.failures <= j.max_retries {
                            j.ready_at = now + 500;
                            JobState::Delayed
                        } else {
                            JobState::Failed
                        }
                    }
                };
                prop_assert_eq!(r, Guarded::Applied(j.state.as_str().into()));
            }
            Op::Remove(k) => {
                if m.jobs.is_empty() {
                    continue;
                }
                let i = k % m.jobs.len();
                let reason = format!("removed at step {step}");
                let r = s.remove_job(&m.jobs[i].id, now, &reason).await.unwrap();
                let before = m.jobs[i].state;
                if before.is_queued() {
                    prop_assert_eq!(r, Guarded::Applied(before.as_str().into()));
                    m.jobs[i].state = JobState::Cancelled;
                } else {
                    prop_assert_eq!(r, Guarded::Refused(before.as_str().into()));
                }
            }
            Op::Pause(p) => {
                s.set_paused(p).await.unwrap();
                m.paused = p;
            }
            Op::Advance(ms) => now += ms,
        }
        prop_assert_eq!(s.queue_counts().await.unwrap(), m.counts());
        for j in &m.jobs {
            let rec = s.job(&j.id).await.unwrap().unwrap();
            prop_assert_eq!(rec.state, j.state, "job {}", j.id);
            prop_assert_eq!(rec.failures, j.failures);
        }
    }
    Ok(())
}

#[test]
fn the_queue_matches_a_simple_model() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (_dir, v) = rt.block_on(valkey());
    let case = std::sync::atomic::AtomicU32::new(0);
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    runner
        .run(&proptest::collection::vec(op(), 1..60), |ops| {
            // A fresh keyspace per case: a new spoke id.
            let n = case.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rt.block_on(async {
                let s = store(&v, &format!("case-{n}")).await;
                check(&s, ops).await
            })
        })
        .unwrap();
}

#[tokio::test]
async fn repeated_calls_are_safe_to_retry() {
    // The store retries a command whose connection dropped, and the first try may have run:
    // every script must treat its own repeat as done.
    let (_d, v) = valkey().await;
    let s = store(&v, "a").await;
    let j = new_job("p", options(5));
    assert_eq!(s.enqueue(&j, T0).await.unwrap(), JobState::Pending);
    assert_eq!(s.enqueue(&j, T0).await.unwrap(), JobState::Pending);
    assert_eq!(
        s.queue_counts().await.unwrap().pending,
        1,
        "one job, not two"
    );

    let token = fresh_token();
    let first = dispatch_as(&s, &token, false, T0, 10, &[]).await.0.unwrap();
    let agent = first.agent_id.clone();
    // A second job waiting must not be taken by the repeat.
    s.enqueue(&new_job("p", options(5)), T0).await.unwrap();
    let again = dispatch_as(&s, &token, true, T0, 10, &[]).await.0.unwrap();
    assert_eq!(
        (again.job_id, again.attempt),
        (first.job_id.clone(), first.attempt)
    );
    let c = s.queue_counts().await.unwrap();
    assert_eq!((c.active, c.pending), (1, 1));

    let run = |pid| s.attempt_running(&first.job_id, &agent, T0, pid, 7);
    assert_eq!(run(42).await.unwrap(), Guarded::Applied("spawning".into()));
    assert_eq!(run(42).await.unwrap(), Guarded::Applied("spawning".into()));
    assert_eq!(run(43).await.unwrap(), Guarded::Refused("running".into()));
    let (done, killed) = (end(Outcome::Completed, 0), end(Outcome::Killed, 0));
    let finish = |e| s.attempt_ended(&first.job_id, &agent, T0, e);
    let completed = Guarded::Applied("completed".into());
    assert_eq!(finish(&done).await.unwrap(), completed);
    assert_eq!(finish(&done).await.unwrap(), completed);
    assert_eq!(
        finish(&killed).await.unwrap(),
        Guarded::Refused("completed".into()),
        "a different end of an ended attempt is refused"
    );
    assert_eq!(
        s.queue_counts().await.unwrap().completed,
        1,
        "the repeat moved nothing"
    );

    let queued = new_job("p", options(5));
    s.enqueue(&queued, T0).await.unwrap();
    let remove = |why| s.remove_job(&queued.job_id, T0, why);
    assert_eq!(
        remove("by command c1").await.unwrap(),
        Guarded::Applied("pending".into())
    );
    assert_eq!(
        remove("by command c1").await.unwrap(),
        Guarded::Applied("cancelled".into())
    );
    assert_eq!(
        remove("by command c2").await.unwrap(),
        Guarded::Refused("cancelled".into())
    );

    // A repeat whose first try never ran (no attempt carries its token) dispatches anew: the
    // job still waiting since the first dispatch.
    let waiting = s.queue_counts().await.unwrap();
    assert_eq!((waiting.active, waiting.pending), (0, 1));
    let fresh = dispatch_as(&s, &fresh_token(), true, T0, 10, &[]).await.0;
    let fresh = fresh.expect("the waiting job is dispatched");
    assert_ne!(fresh.job_id, first.job_id);
    assert_eq!(s.queue_counts().await.unwrap().active, 1);
}
