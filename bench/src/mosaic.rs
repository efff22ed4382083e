//! Our side, in process against the fixture's Valkey: enqueue throughput of `Store::enqueue`,
//! and end-to-end throughput of a real spoke (`mosaic_spoke::run`: scheduler, supervisor,
//! runner, gRPC server) draining a queue that was filled before it started.
//!
//! What is timed: for enqueue, from the first request until the last reply, with
//! [`IN_FLIGHT`] requests outstanding; for end-to-end, from calling `mosaic_spoke::run` until
//! the queue counts `N` completed jobs (polled every [`POLL`]), so the spoke's own start-up is
//! included. Loading the configuration and filling the queue are not timed. The signed gRPC path (verification, replay record,
//! receipt) is not part of either: this measures the queue and scheduler.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mosaic_shared::ids::{CommandId, JobId};
use mosaic_shared::time::unix_ms;
use mosaic_spoke::job::JobOptions;
use mosaic_spoke::profile::JobSpec;
use mosaic_spoke::store::{NewJob, Store};
use tokio::sync::watch;

use crate::fixture::{Fixture, NOOP_PROFILE, PROGRAM_PROFILE, ServerStats};
use crate::report::Measured;

/// Enqueue requests outstanding at once, on both sides.
pub const IN_FLIGHT: usize = 100;
/// How often the end-to-end cases read the queue counts. Small next to any case's duration;
/// each read is one pipelined round trip.
const POLL: Duration = Duration::from_millis(5);

/// The agent the queued jobs run.
#[derive(Debug, Clone, Copy)]
pub enum Agent<'a> {
    /// The spoke's built-in no-op agent: completes in process.
    Noop,
    /// A real program, started and reaped per attempt (the profile's `program`).
    Program(&'a Path),
}

/// Enqueues `jobs` no-op jobs with [`IN_FLIGHT`] `Store::enqueue` calls outstanding.
pub async fn enqueue(fx: &Fixture, jobs: usize) -> anyhow::Result<Measured> {
    let store = Store::connect(
        &mosaic_shared::valkey::Target::single(fx.valkey_url()),
        &fx.spoke_id(),
    )
    .await?;
    let meter = Meter::start(fx).await?;
    fill(&store, NOOP_PROFILE, jobs).await?;
    let measured = meter.finish(fx, jobs).await?;
    let counts = store.queue_counts().await?;
    if counts.pending != jobs as u64 {
        bail!("enqueued {jobs} jobs but the queue counts {counts:?}");
    }
    Ok(measured)
}

/// Fills the queue with `jobs` jobs for `agent`, then times a spoke with `[queue] concurrency
/// = concurrency` from start until all of them have completed.
pub async fn end_to_end(
    fx: &Fixture,
    agent: Agent<'_>,
    concurrency: usize,
    jobs: usize,
) -> anyhow::Result<Measured> {
    let (profile, program) = match agent {
        Agent::Noop => (NOOP_PROFILE, None),
        Agent::Program(p) => (PROGRAM_PROFILE, Some(p)),
    };
    let config = fx.spoke_config(concurrency, program)?;
    let store = Store::connect(
        &mosaic_shared::valkey::Target::single(fx.valkey_url()),
        &fx.spoke_id(),
    )
    .await?;
    fill(&store, profile, jobs).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let (stop, stopped) = watch::channel(false);
    // Generous (100 jobs/s, far below any rate seen), so that only a stuck spoke trips it.
    let deadline_after = Duration::from_secs(60) + Duration::from_millis(10) * jobs as u32;

    let meter = Meter::start(fx).await?;
    let mut spoke = tokio::spawn(mosaic_spoke::run(config, listener, async move {
        let mut stopped = stopped;
        let _ = stopped.wait_for(|s| *s).await;
    }));
    let measured = loop {
        let counts = store.queue_counts().await?;
        if counts.completed >= jobs as u64 {
            break meter.finish(fx, jobs).await?;
        }
        if counts.failed + counts.cancelled > 0 {
            bail!("jobs ended other than completed: {counts:?}");
        }
        if spoke.is_finished() {
            let ended = (&mut spoke).await?;
            bail!("the spoke stopped before the queue drained: {ended:?}, {counts:?}");
        }
        if meter.started.elapsed() > deadline_after {
            bail!(
                "the spoke did not drain {jobs} jobs within {} s: {counts:?}",
                deadline_after.as_secs()
            );
        }
        tokio::time::sleep(POLL).await;
    };
    let _ = stop.send(true);
    spoke
        .await
        .context("the spoke task panicked")?
        .context("the spoke failed")?;
    Ok(measured)
}

/// Times a section, with the server's and this process's CPU spent in it.
struct Meter {
    started: Instant,
    server: ServerStats,
    cpu: f64,
}

impl Meter {
    async fn start(fx: &Fixture) -> anyhow::Result<Self> {
        let server = fx.server_stats().await?;
        Ok(Meter {
            cpu: own_cpu_seconds()?,
            started: Instant::now(),
            server,
        })
    }

    async fn finish(&self, fx: &Fixture, jobs: usize) -> anyhow::Result<Measured> {
        let seconds = self.started.elapsed().as_secs_f64();
        let cpu = own_cpu_seconds()? - self.cpu;
        Ok(Measured {
            jobs,
            seconds,
            server: Some(self.server.per_job(&fx.server_stats().await?, jobs)),
            client_cpu_us_per_job: Some(cpu * 1e6 / jobs as f64),
        })
    }
}

/// User + system CPU time of this whole process (every thread, so the spoke under test and the
/// poller alike).
fn own_cpu_seconds() -> anyhow::Result<f64> {
    cpu_seconds_of("/proc/self/stat")
}

/// User + system CPU time of a process from its `/proc/<pid>/stat`, in clock ticks of 10 ms
/// (USER_HZ is 100 on Linux).
pub fn cpu_seconds_of(stat_path: &str) -> anyhow::Result<f64> {
    Ok(stat_ticks(stat_path)?.0)
}

/// User + system CPU time of this process, and of its children that it has reaped.
pub fn own_and_children_cpu_seconds() -> anyhow::Result<(f64, f64)> {
    stat_ticks("/proc/self/stat")
}

/// (utime + stime, cutime + cstime) of `/proc/<pid>/stat`, in seconds.
fn stat_ticks(stat_path: &str) -> anyhow::Result<(f64, f64)> {
    let stat = std::fs::read_to_string(stat_path)?;
    // Fields after the parenthesised command name: state is field 3, utime 14, stime 15,
    // cutime 16, cstime 17.
    let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
    let mut fields = rest.split_whitespace().skip(11);
    let mut tick = || -> anyhow::Result<f64> {
        Ok(fields
            .next()
            .with_context(|| format!("short {stat_path}"))?
            .parse::<f64>()?
            / 100.0)
    };
    let own = tick()? + tick()?;
    Ok((own, tick()? + tick()?))
}

/// Enqueues `jobs` jobs for `profile` from [`IN_FLIGHT`] concurrent lanes.
pub async fn fill(store: &Store, profile: &str, jobs: usize) -> anyhow::Result<()> {
    let spec = serde_json::to_string(&JobSpec::default())?;
    let template = NewJob {
        job_id: JobId::generate(),
        workspace: "bench".parse()?,
        profile: profile.parse()?,
        command_id: CommandId::generate(),
        spec,
        options: JobOptions {
            priority: 5,
            not_before_ms: None,
            max_retries: 0,
            backoff_base: Duration::from_secs(1),
            backoff_cap: Duration::from_secs(60),
            attempt_timeout: None,
        },
        created_at_ms: 0,
        trace: Default::default(),
    };
    let next = Arc::new(AtomicUsize::new(0));
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..IN_FLIGHT.min(jobs) {
        let (store, next, template) = (store.clone(), next.clone(), template.clone());
        lanes.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                let now = unix_ms();
                let job = NewJob {
                    job_id: JobId::generate(),
                    command_id: CommandId::generate(),
                    created_at_ms: now,
                    ..template.clone()
                };
                store.enqueue(&job, now).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane??;
    }
    Ok(())
}
