//! The event-streaming benchmark: events from agents on one spoke, through the hub, to 1, 100
//! and 1000 watchers of one workspace. It owns the workload, the watchers and every figure of
//! an events measurement; the hub process itself is [`crate::hub`].
//!
//! One measurement, for N watchers:
//! 1. A flushed spoke Valkey (the fixture's) and a flushed hub Valkey (a second server, as in
//!    a real deployment where the hub has its own); a real spoke in this process
//!    (`mosaic_spoke::run`, profile `/bin/sh -c`); a real `mosaic-hub serve` process
//!    following it. Jobs are spawned as the hub spawns them: signed commands over the
//!    federation API, [`SPAWN_LANES`] in flight.
//! 2. A probe watcher sees a tiny warm-up job end (so the upstream is connected and the hub's
//!    paths are warm), and is closed; then the hub's resident memory is read (*before*).
//! 3. N live watches of the workspace are opened over ⌈N / per-connection⌉ HTTP/2
//!    connections, a second warm-up job is run until every watcher has seen it end, and the
//!    hub's memory is read again (*idle*): (idle − before) / N is the memory per watcher.
//! 4. **Burst** (throughput): `jobs` jobs are spawned at once, each printing `lines`
//!    structured progress lines (`{"mosaic":"progress","percent":N}`, one `job.progress`
//!    event each) as fast as `sh` can, besides its lifecycle events. Timed from just before
//!    the first spawn until the last watcher has received the last of their events.
//! 5. **Steady** (latency): one job of [`STEADY_LINES`] lines is spawned at a fixed pace, so
//!    that the spoke produces about `steady_rate` events per second for `steady_seconds`,
//!    well below what the hub can deliver, until every watcher has every event.
//!
//! Latency of one delivery = the watcher's wall clock when the event arrived − the event's
//! `at_ms` (the spoke's wall clock when it stamped the event, just before appending it to its
//! stream). Same machine, same clock; both in whole milliseconds, so a figure is the true
//! latency to within a millisecond.
//!
//! A watcher ended with `resync_required` (fell more than the hub's `subscriber_buffer` behind)
//! resumes after the cursor the hub gives, as a real client would, and is counted.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mosaic_hub::config::HubConfig;
use mosaic_hub::dev::Valkey;
use mosaic_hub::spokes::SpokeClient;
use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::admin::v1::admin_client::AdminClient;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::time::unix_ms;
use tokio::sync::{mpsc, watch};
use tonic::transport::Channel;

use crate::fixture::{Fixture, SHELL_PROFILE};
use crate::hub::HubProcess;
use crate::report::{EventsMeasured, Latency, SteadyMeasured};

/// The workspace of every job, and what every watcher watches.
pub const WORKSPACE: &str = "bench";
/// The hub's log key in its Valkey (`store::HubStore`'s layout for hub id `hub`); read only
/// to check that every watcher got every event the hub logged.
const HUB_LOG_KEY: &str = "mosaic:{hub-hub}:log";
/// Spawn commands in flight while the burst is released.
const SPAWN_LANES: usize = 32;
/// Progress lines of each steady job: with its 7 lifecycle events (created, queued, started,
/// agent spawning, running and completed, completed), 20 events per job.
pub const STEADY_LINES: usize = 13;
/// Events of one steady job.
const STEADY_JOB_EVENTS: usize = STEADY_LINES + 7;
/// Latencies are counted per millisecond up to this; longer ones count as this.
const LATENCY_CAP_MS: usize = 120_000;
/// How long a warm-up job may take to reach every watcher.
const WARM_UP_WITHIN: Duration = Duration::from_secs(60);
/// A pause that lets the hub settle (a closed stream freed, new subscriptions made) before
/// its memory is read or the next step starts.
const SETTLE: Duration = Duration::from_millis(500);

/// What the agents do and how the watchers connect; the same for every N of a run.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Workload {
    /// Jobs of the burst.
    pub jobs: usize,
    /// Structured progress lines each job prints (one `job.progress` event each; at most 200
    /// fit the spoke's per-attempt burst of events).
    pub lines: usize,
    /// `[queue] concurrency` of the spoke.
    pub concurrency: usize,
    /// Watch streams per HTTP/2 connection.
    pub per_connection: usize,
    /// Events per second the steady phase aims at.
    pub steady_rate: usize,
    /// How long the steady phase spawns jobs.
    pub steady_seconds: f64,
}

impl Workload {
    /// Jobs of the steady phase.
    fn steady_jobs(&self) -> usize {
        ((self.steady_rate as f64 * self.steady_seconds) / STEADY_JOB_EVENTS as f64)
            .round()
            .max(1.0) as usize
    }
}

/// An agent's script: `lines` progress lines as fast as `sh` prints them.
fn script(lines: usize) -> String {
    format!(
        "i=0; while [ $i -lt {lines} ]; do echo \"{{\\\"mosaic\\\":\\\"progress\\\",\\\"percent\\\":$((i % 101))}}\"; i=$((i+1)); done"
    )
}

/// What outlives one measurement: the hub's Valkey and binary.
pub struct Bench {
    hub_bin: PathBuf,
    hub_valkey: Valkey,
    hub_admin: redis::aio::MultiplexedConnection,
}

impl Bench {
    /// Starts the hub's own Valkey (the same binary as the spoke's, its files in the fixture's
    /// directory).
    pub async fn start(fx: &Fixture, hub_bin: PathBuf) -> anyhow::Result<Self> {
        let hub_valkey = Valkey::start(fx.valkey_bin(), &fx.dir().join("hub-valkey"), &[]).await?;
        let hub_admin = redis::Client::open(hub_valkey.url())?
            .get_multiplexed_async_connection()
            .await
            .context("cannot connect to the hub's valkey-server")?;
        Ok(Bench {
            hub_bin,
            hub_valkey,
            hub_admin,
        })
    }

    /// One measurement with `watchers` watchers (see the module's documentation).
    pub async fn measure(
        &mut self,
        fx: &mut Fixture,
        workload: &Workload,
        watchers: usize,
    ) -> anyhow::Result<EventsMeasured> {
        fx.flush().await?;
        redis::cmd("FLUSHALL")
            .arg("SYNC")
            .query_async::<()>(&mut self.hub_admin)
            .await
            .context("FLUSHALL of the hub's valkey failed")?;

        let config = fx.shell_spoke_config(workload.concurrency)?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let spoke_addr = listener.local_addr()?;
        let (stop, stopped) = watch::channel(false);
        let spoke = tokio::spawn(mosaic_spoke::run(config, listener, async move {
            let mut stopped = stopped;
            let _ = stopped.wait_for(|s| *s).await;
        }));
        let hub = HubProcess::start(
            &self.hub_bin,
            fx,
            &self.hub_valkey.url(),
            spoke_addr,
            WORKSPACE,
        )
        .await?;

        let measured = async {
            // Jobs arrive as in production: commands the hub's key signs, which the spoke
            // verifies, records and answers with a signed receipt (and which wake its
            // scheduler; a job written to the queue behind its back would wait for the next
            // maintenance pass).
            let config =
                HubConfig::load(hub.config_path(), &mosaic_shared::config::Env::default())?;
            let spoke = SpokeClient::connect(&config, &fx.spoke_id()).await?;
            let spawner = Arc::new(Spawner { config, spoke });
            self.measure_with(fx, &spawner, &hub, workload, watchers)
                .await
        }
        .await;

        hub.kill().await;
        let _ = stop.send(true);
        match tokio::time::timeout(Duration::from_secs(30), spoke).await {
            Ok(ended) => ended
                .context("the spoke task panicked")?
                .context("the spoke failed")?,
            Err(_) => bail!("the spoke did not stop within 30 s"),
        }
        measured
    }

    async fn measure_with(
        &mut self,
        fx: &Fixture,
        spawner: &Arc<Spawner>,
        hub: &HubProcess,
        workload: &Workload,
        n: usize,
    ) -> anyhow::Result<EventsMeasured> {
        // The probe: proves the path works end to end, then leaves.
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let probe = Watcher::open(hub, hub.connect().await?, vec![], done_tx.clone()).await?;
        let probe = tokio::spawn(probe.run());
        spawner.spawn(1, ":").await?;
        wait_phase(&mut done_rx, 1, WARM_UP_WITHIN, "the warm-up").await?;
        probe.await??;
        tokio::time::sleep(SETTLE).await;
        let (rss_before, _) = hub.memory_kib()?;

        // N watchers, idle.
        let connections = n.div_ceil(workload.per_connection);
        let mut clients = Vec::with_capacity(connections);
        for _ in 0..connections {
            clients.push(hub.connect().await?);
        }
        let steady_jobs = workload.steady_jobs();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..n {
            let client = clients[i / workload.per_connection].clone();
            let phases = vec![workload.jobs, steady_jobs];
            let w = Watcher::open(hub, client, phases, done_tx.clone()).await?;
            tasks.spawn(w.run());
        }
        drop(done_tx);
        // The hub subscribes a watch in a task of its own, just after answering it.
        tokio::time::sleep(SETTLE).await;
        spawner.spawn(1, ":").await?;
        wait_phase(&mut done_rx, n, WARM_UP_WITHIN, "the warm-up").await?;
        tokio::time::sleep(SETTLE).await;
        let (rss_idle, _) = hub.memory_kib()?;

        // Burst.
        let logged_before = self.log_len().await?;
        let cpu = Cpu::read(fx, hub, &mut self.hub_admin).await?;
        let t0 = Instant::now();
        let t0_ms = unix_ms();
        spawner
            .spawn(workload.jobs, &script(workload.lines))
            .await?;
        // Generous: far beyond any rate seen, so that only a stuck pipeline trips it.
        let within = Duration::from_secs(120)
            + Duration::from_micros(50) * (workload.jobs * (workload.lines + 7) * n) as u32;
        wait_phase(&mut done_rx, n, within, "the burst").await?;
        let burst_cpu = cpu.since(fx, hub, &mut self.hub_admin).await?;
        let (_, rss_peak) = hub.memory_kib()?;
        let burst_logged = self.log_len().await? - logged_before;

        // Steady: one job every `pace`, each started on time however long the last spawn took.
        let logged_before = self.log_len().await?;
        let pace = Duration::from_secs_f64(workload.steady_seconds / steady_jobs as f64);
        let steady_start = tokio::time::Instant::now();
        let steady_script = script(STEADY_LINES);
        for k in 0..steady_jobs {
            tokio::time::sleep_until(steady_start + pace * k as u32).await;
            spawner.spawn(1, &steady_script).await?;
        }
        wait_phase(
            &mut done_rx,
            n,
            Duration::from_secs(120),
            "the steady phase",
        )
        .await?;
        let steady_logged = self.log_len().await? - logged_before;

        let mut stats = Vec::with_capacity(n);
        while let Some(done) = tasks.join_next().await {
            stats.push(done??);
        }
        drop(clients);
        Ok(summarise(Summary {
            workload,
            watchers: n,
            connections,
            stats,
            t0,
            t0_ms,
            logged: (burst_logged, steady_logged),
            memory: (rss_before, rss_idle, rss_peak),
            cpu: burst_cpu,
        }))
    }

    async fn log_len(&mut self) -> anyhow::Result<u64> {
        Ok(redis::cmd("XLEN")
            .arg(HUB_LOG_KEY)
            .query_async(&mut self.hub_admin)
            .await?)
    }
}

/// Waits until `n` watchers have reported the end of a phase (`what`, for errors).
async fn wait_phase(
    done: &mut mpsc::UnboundedReceiver<Result<(), String>>,
    n: usize,
    within: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + within;
    for seen in 0..n {
        match tokio::time::timeout_at(deadline, done.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => bail!("a watcher failed during {what}: {e}"),
            Ok(None) => bail!("the watchers ended during {what} ({seen} of {n} done)"),
            Err(_) => bail!(
                "only {seen} of {n} watchers had every event of {what} within {} s",
                within.as_secs()
            ),
        }
    }
    Ok(())
}

/// Sends signed spawn commands to the spoke, as the hub does.
struct Spawner {
    config: HubConfig,
    spoke: SpokeClient,
}

impl Spawner {
    /// Spawns `jobs` jobs running `sh -c script` in [`WORKSPACE`], [`SPAWN_LANES`] commands
    /// in flight, and returns when the spoke has accepted them all.
    async fn spawn(self: &Arc<Self>, jobs: usize, script: &str) -> anyhow::Result<()> {
        let action = pb::command::Action::Spawn(pb::Spawn {
            profile: SHELL_PROFILE.into(),
            workspace: WORKSPACE.into(),
            args: vec![script.to_owned()],
            max_retries: Some(0),
            ..Default::default()
        });
        let next = Arc::new(AtomicUsize::new(0));
        let mut lanes = tokio::task::JoinSet::new();
        for _ in 0..SPAWN_LANES.min(jobs) {
            let (this, next, action) = (self.clone(), next.clone(), action.clone());
            lanes.spawn(async move {
                while next.fetch_add(1, Ordering::Relaxed) < jobs {
                    this.spoke
                        .execute(&this.config.signer, action.clone())
                        .await
                        .context("the spoke refused a spawn")?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(lane) = lanes.join_next().await {
            lane??;
        }
        Ok(())
    }
}

/// One watch of the workspace, live, and what it received phase by phase.
struct Watcher {
    client: AdminClient<Channel>,
    token: String,
    stream: tonic::Streaming<admin::WatchResponse>,
    /// Jobs to see end in each phase after the warm-up (whose one job is the first to end:
    /// nothing else runs then).
    phases: Vec<usize>,
    /// The phase now: 0 is the warm-up, whose events are not counted.
    phase: usize,
    /// Told the end of each phase, or why the watcher failed.
    done: mpsc::UnboundedSender<Result<(), String>>,
    /// Per phase after the warm-up.
    stats: Vec<PhaseStats>,
}

/// What one watcher received in one phase.
#[derive(Debug, Default)]
struct PhaseStats {
    events: u64,
    /// Jobs seen ending (completed, failed or cancelled) ...
    ended: usize,
    /// ... of which not completed.
    not_completed: usize,
    /// When the last event arrived.
    last: Option<Instant>,
    /// Deliveries by latency in whole milliseconds (index), up to [`LATENCY_CAP_MS`].
    latency: Vec<u64>,
    /// Newest `at_ms` seen: when the spoke stamped the phase's last event.
    newest_at_ms: i64,
    /// Times the hub ended this watch with `resync_required`.
    resyncs: usize,
}

fn live_request() -> admin::WatchRequest {
    admin::WatchRequest {
        scope: Some(admin::watch_request::Scope::Workspace(WORKSPACE.into())),
        ..Default::default()
    }
}

fn authed<T>(token: &str, message: T) -> anyhow::Result<tonic::Request<T>> {
    let mut r = tonic::Request::new(message);
    r.metadata_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    Ok(r)
}

impl Watcher {
    async fn open(
        hub: &HubProcess,
        mut client: AdminClient<Channel>,
        phases: Vec<usize>,
        done: mpsc::UnboundedSender<Result<(), String>>,
    ) -> anyhow::Result<Self> {
        let stream = client
            .watch(authed(hub.token(), live_request())?)
            .await
            .context("the hub refused a watch")?
            .into_inner();
        Ok(Watcher {
            client,
            token: hub.token().to_owned(),
            stream,
            stats: phases.iter().map(|_| PhaseStats::default()).collect(),
            phases,
            phase: 0,
            done,
        })
    }

    /// Reads until the warm-up job and then every phase's jobs have ended; a failure is also
    /// reported on `done`, so that whoever waits for a phase learns it at once.
    async fn run(mut self) -> anyhow::Result<Vec<PhaseStats>> {
        let result = self.read_all().await;
        if let Err(e) = &result {
            let _ = self.done.send(Err(format!("{e:#}")));
        }
        result.map(|()| self.stats)
    }

    async fn read_all(&mut self) -> anyhow::Result<()> {
        while self.phase <= self.phases.len() {
            match self.stream.message().await {
                Ok(Some(item)) => self.received(item),
                Ok(None) => bail!("the hub ended a watch without a status"),
                Err(status) => self.resume(status).await?,
            }
        }
        Ok(())
    }

    fn received(&mut self, item: admin::WatchResponse) {
        let Some(admin::watch_response::Item::Event(e)) = item.item else {
            return;
        };
        let ended = matches!(
            e.r#type(),
            pb::EventType::JobCompleted | pb::EventType::JobFailed | pb::EventType::JobCancelled
        );
        if self.phase > 0 {
            let now = unix_ms();
            let s = &mut self.stats[self.phase - 1];
            s.events += 1;
            s.last = Some(Instant::now());
            s.newest_at_ms = s.newest_at_ms.max(e.at_ms);
            let ms = usize::try_from(now - e.at_ms)
                .unwrap_or(0)
                .min(LATENCY_CAP_MS);
            if s.latency.len() <= ms {
                s.latency.resize(ms + 1, 0);
            }
            s.latency[ms] += 1;
            if ended {
                s.ended += 1;
                if e.r#type() != pb::EventType::JobCompleted {
                    s.not_completed += 1;
                }
            }
        }
        // A phase ends with its last job's end, the last of that job's events; the next
        // phase's jobs are spawned only once every watcher is through, so whatever comes
        // after belongs to it.
        let phase_ended = match self.phase {
            0 => ended,
            p => self.stats[p - 1].ended >= self.phases[p - 1],
        };
        if phase_ended {
            self.phase += 1;
            let _ = self.done.send(Ok(()));
        }
    }

    /// After `resync_required` for lag, resumes after the cursor the hub gave; any other end
    /// is a failure of the measurement.
    async fn resume(&mut self, status: tonic::Status) -> anyhow::Result<()> {
        let meta = |k: &str| {
            status
                .metadata()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let cursor = meta(mosaic_hub::admin::CURSOR_KEY).filter(|c| !c.is_empty());
        let (Some("resync_required"), Some(cursor)) =
            (meta(mosaic_hub::admin::REASON_KEY).as_deref(), cursor)
        else {
            bail!("the hub ended a watch: {status}");
        };
        if let Some(s) = self
            .phase
            .checked_sub(1)
            .and_then(|p| self.stats.get_mut(p))
        {
            s.resyncs += 1;
        }
        let request = admin::WatchRequest {
            start: Some(admin::watch_request::Start::After(cursor)),
            ..live_request()
        };
        self.stream = self
            .client
            .watch(authed(&self.token, request)?)
            .await
            .context("the hub refused to resume a watch")?
            .into_inner();
        Ok(())
    }
}

/// CPU time spent by each process involved, in seconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuSeconds {
    /// The `mosaic-hub serve` process.
    pub hub: f64,
    /// The hub's valkey-server.
    pub hub_valkey: f64,
    /// The spoke's valkey-server.
    pub spoke_valkey: f64,
    /// This process: the spoke (reading its agents' output, not running them) and the
    /// watchers' clients.
    pub bench: f64,
    /// The agents (`sh`), this process's children, counted as they are reaped.
    pub agents: f64,
    /// Everything else on the machine (from `/proc/stat`): other users of a shared machine.
    pub other: f64,
}

impl CpuSeconds {
    fn ours(&self) -> f64 {
        self.hub + self.hub_valkey + self.spoke_valkey + self.bench + self.agents
    }
}

/// The counters behind [`CpuSeconds`] at one moment; `machine` is every CPU's busy time.
struct Cpu {
    at: CpuSeconds,
    machine: f64,
}

impl Cpu {
    async fn read(
        fx: &Fixture,
        hub: &HubProcess,
        hub_valkey: &mut redis::aio::MultiplexedConnection,
    ) -> anyhow::Result<Self> {
        let info: String = redis::cmd("INFO")
            .arg("cpu")
            .query_async(hub_valkey)
            .await?;
        let (bench, agents) = crate::mosaic::own_and_children_cpu_seconds()?;
        Ok(Cpu {
            at: CpuSeconds {
                hub: hub.cpu_seconds()?,
                hub_valkey: crate::fixture::ServerStats::parse(&info).cpu_seconds,
                spoke_valkey: fx.server_stats().await?.cpu_seconds,
                bench,
                agents,
                other: 0.0,
            },
            machine: machine_busy_seconds()?,
        })
    }

    async fn since(
        &self,
        fx: &Fixture,
        hub: &HubProcess,
        hub_valkey: &mut redis::aio::MultiplexedConnection,
    ) -> anyhow::Result<CpuSeconds> {
        let now = Cpu::read(fx, hub, hub_valkey).await?;
        let (a, b) = (&now.at, &self.at);
        let mut spent = CpuSeconds {
            hub: a.hub - b.hub,
            hub_valkey: a.hub_valkey - b.hub_valkey,
            spoke_valkey: a.spoke_valkey - b.spoke_valkey,
            bench: a.bench - b.bench,
            agents: a.agents - b.agents,
            other: 0.0,
        };
        // Ticks of 10 ms on both sides: a small negative remainder is rounding.
        spent.other = (now.machine - self.machine - spent.ours()).max(0.0);
        Ok(spent)
    }
}

/// Busy time of all CPUs so far (`/proc/stat`: user, nice, system, irq, softirq, steal), in
/// seconds of 100 ticks.
fn machine_busy_seconds() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let line = stat
        .lines()
        .find(|l| l.starts_with("cpu "))
        .context("no cpu line in /proc/stat")?;
    let f: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    let field = |i: usize| f.get(i).copied().unwrap_or(0.0);
    // user nice system idle iowait irq softirq steal
    Ok((field(0) + field(1) + field(2) + field(5) + field(6) + field(7)) / 100.0)
}

struct Summary<'a> {
    workload: &'a Workload,
    watchers: usize,
    connections: usize,
    /// Per watcher, per phase (burst, steady).
    stats: Vec<Vec<PhaseStats>>,
    /// When the burst was released, on the monotonic and on the wall clock.
    t0: Instant,
    t0_ms: i64,
    /// Events the hub's log gained in the burst and in the steady phase.
    logged: (u64, u64),
    /// Hub RSS before the watchers, with them idle, and its peak after the burst (KiB).
    memory: (u64, u64, u64),
    /// CPU time spent during the burst.
    cpu: CpuSeconds,
}

/// What all watchers received in one phase: events each (the most any got), watchers that
/// did not get exactly `logged`, deliveries, the latency histogram merged, resyncs, watchers
/// resynced, jobs not completed (the most any saw), the last arrival and the newest `at_ms`.
struct Merged {
    events: u64,
    short: usize,
    deliveries: u64,
    latency: Latency,
    resyncs: usize,
    resynced: usize,
    not_completed: usize,
    last: Option<Instant>,
    newest_at_ms: i64,
}

fn merge<'a>(phase: impl Iterator<Item = &'a PhaseStats> + Clone, logged: u64) -> Merged {
    let mut histogram: Vec<u64> = Vec::new();
    for w in phase.clone() {
        if histogram.len() < w.latency.len() {
            histogram.resize(w.latency.len(), 0);
        }
        for (ms, count) in w.latency.iter().enumerate() {
            histogram[ms] += count;
        }
    }
    Merged {
        events: phase.clone().map(|w| w.events).max().unwrap_or(0),
        short: phase.clone().filter(|w| w.events != logged).count(),
        deliveries: phase.clone().map(|w| w.events).sum(),
        latency: Latency::of(&histogram, LATENCY_CAP_MS),
        resyncs: phase.clone().map(|w| w.resyncs).sum(),
        resynced: phase.clone().filter(|w| w.resyncs > 0).count(),
        not_completed: phase.clone().map(|w| w.not_completed).max().unwrap_or(0),
        last: phase.clone().filter_map(|w| w.last).max(),
        newest_at_ms: phase.map(|w| w.newest_at_ms).max().unwrap_or(0),
    }
}

fn summarise(s: Summary<'_>) -> EventsMeasured {
    let n = s.watchers;
    let burst = merge(s.stats.iter().map(|w| &w[0]), s.logged.0);
    let steady = merge(s.stats.iter().map(|w| &w[1]), s.logged.1);
    let seconds = burst
        .last
        .unwrap_or(s.t0)
        .duration_since(s.t0)
        .as_secs_f64();
    let produce_seconds = (burst.newest_at_ms - s.t0_ms).max(1) as f64 / 1000.0;
    let (before, idle, peak) = s.memory;
    EventsMeasured {
        watchers: n,
        connections: s.connections,
        jobs: s.workload.jobs,
        events_per_watcher: burst.events,
        events_logged: s.logged.0,
        watchers_short: burst.short + steady.short,
        jobs_not_completed: burst.not_completed + steady.not_completed,
        seconds,
        produce_seconds,
        produced_per_sec: s.logged.0 as f64 / produce_seconds,
        per_watcher_per_sec: burst.events as f64 / seconds,
        total_per_sec: burst.deliveries as f64 / seconds,
        latency: burst.latency,
        resyncs: burst.resyncs,
        watchers_resynced: burst.resynced,
        steady: SteadyMeasured {
            jobs: s.workload.steady_jobs(),
            events_per_watcher: steady.events,
            events_logged: s.logged.1,
            latency: steady.latency,
            resyncs: steady.resyncs,
        },
        hub_rss_before_kib: before,
        hub_rss_idle_kib: idle,
        hub_rss_peak_kib: peak,
        hub_kib_per_watcher: (idle as f64 - before as f64) / n as f64,
        hub_cpu_us_per_delivery: s.cpu.hub * 1e6 / burst.deliveries.max(1) as f64,
        cpu_seconds: s.cpu,
    }
}
