//! Benchmarks of the federation. The scheduler benchmark: throughput of the spoke's job queue
//! and scheduler, against BullMQ on the same `valkey-server` and against a bare loop that
//! spawns `/bin/true`. The events benchmark: events from agents on one spoke through the hub
//! to 1, 100 and 1000 watchers. A run does both unless `--only` picks one part. Benchmarks, not tests:
//! they assert nothing and never run under `cargo test`. `./bench/run.sh` is the one command;
//! BENCHMARKS.md records the method and the figures.
//!
//! Layout:
//! - [`fixture`]: the one Valkey of a run (flushed before every measurement) and the spoke
//!   configurations (PKI, keys, `spoke.toml`) the cases load.
//! - [`events`]: the events benchmark: workload, watchers, and its figures.
//! - [`hub`]: the `mosaic-hub serve` process the events benchmark measures.
//! - [`mosaic`]: our side, in process: `Store::enqueue`, and a real spoke draining its queue.
//! - [`bullmq`]: the BullMQ side: `bullmq/bench.mjs` under `node`, one process per measurement.
//! - [`spawn`]: the process baselines: a bare spawn-and-reap loop, and one that spawns the way
//!   the spoke's runner does but without any queue.
//! - [`report`]: the machine's description, the table on stdout and the JSON file.

pub mod bullmq;
pub mod events;
pub mod fixture;
pub mod hub;
pub mod mosaic;
pub mod report;
pub mod spawn;

use std::path::PathBuf;

use anyhow::Context as _;
use mosaic_shared::config::Env;

use crate::events::Workload;
use crate::fixture::Fixture;
use crate::mosaic::Agent;
use crate::report::{Case, EventsCase, EventsReport, Report, Side};

/// Concurrency levels of the no-op end-to-end cases.
const NOOP_CONCURRENCY: [usize; 3] = [1, 10, 100];
/// Concurrency levels of the `/bin/true` cases.
const PROCESS_CONCURRENCY: [usize; 2] = [1, 10];
/// The targets: ours / BullMQ at concurrency 10 and 100 ...
const BULLMQ_TARGET: f64 = 2.0;
/// ... and ours / bare spawn loop for real processes.
const BARE_TARGET: f64 = 0.7;

/// Measures the spoke's enqueue and end-to-end throughput against BullMQ and a bare spawn loop,
/// all on one valkey-server started for the run, and events from a spoke through a
/// `mosaic-hub serve` process to 1, 100 and 1000 watchers.
#[derive(Debug, clap::Parser)]
#[command(
    version,
    after_help = "Run it with ./bench/run.sh, which installs what it needs first.\n\nEnvironment:\n  MOSAIC_VALKEY_SERVER  the valkey-server binary (default: valkey-server or redis-server on PATH)\n  MOSAIC_LOG            log filter for the spoke under test (default: warn)"
)]
pub struct Args {
    /// Jobs per no-op case (enqueue and end-to-end).
    #[arg(long, default_value_t = 20_000)]
    pub jobs: usize,
    /// Jobs per `/bin/true` case (and spawns per bare-loop measurement).
    #[arg(long, default_value_t = 2_000)]
    pub process_jobs: usize,
    /// Measure each case this many times, alternating sides; the table shows medians.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Run only one part: `rust` (the scheduler, ours and the spawn baselines), `bullmq` (the
    /// scheduler, BullMQ's side), or `events` (the event-streaming benchmark). By default,
    /// all of them.
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Measure only these scheduler cases (ids as in the table, comma-separated, e.g.
    /// `noop-c10,noop-c100`). By default, all of them.
    #[arg(long, value_delimiter = ',')]
    pub cases: Vec<String>,
    /// Events: numbers of watchers to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,100,1000")]
    pub watchers: Vec<usize>,
    /// Events: jobs in each timed section.
    #[arg(long, default_value_t = 36)]
    pub events_jobs: usize,
    /// Events: structured progress lines each job prints (at most 200 fit the spoke's
    /// per-attempt burst of events).
    #[arg(long, default_value_t = 100)]
    pub events_lines: usize,
    /// Events: the spoke's `[queue] concurrency`.
    #[arg(long, default_value_t = 64)]
    pub events_concurrency: usize,
    /// Events: events per second the steady (latency) phase aims at.
    #[arg(long, default_value_t = 100)]
    pub steady_rate: usize,
    /// Events: seconds the steady phase spawns jobs for.
    #[arg(long, default_value_t = 5.0)]
    pub steady_seconds: f64,
    /// Events: watch streams per HTTP/2 connection to the hub.
    #[arg(long, default_value_t = 100)]
    pub watchers_per_connection: usize,
    /// Events: the `mosaic-hub` binary (default: the one beside this executable).
    #[arg(long)]
    pub hub_bin: Option<PathBuf>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results.json"))]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    Rust,
    Bullmq,
    Events,
}

/// What a case measures, and so against what.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// `Store::enqueue` against BullMQ's `queue.add`, [`mosaic::IN_FLIGHT`] requests in flight.
    Enqueue,
    /// Pre-enqueued jobs of the built-in no-op agent drained by a real spoke, against a BullMQ
    /// worker with a no-op processor.
    Noop,
    /// Pre-enqueued `/bin/true` jobs drained by a real spoke, against the bare spawn loop.
    Process,
    /// `/bin/true` spawned the way the runner spawns agents but with no queue at all, against
    /// the bare loop: splits the process cases' gap into spawn style and queue costs.
    RunnerSpawn,
}

impl Kind {
    fn label(self, concurrency: usize, program: &std::path::Path) -> String {
        match self {
            Kind::Enqueue => format!("enqueue, {concurrency} in flight"),
            Kind::Noop => format!("no-op end-to-end, concurrency {concurrency}"),
            Kind::Process => format!(
                "{} end-to-end, concurrency {concurrency}",
                program.display()
            ),
            Kind::RunnerSpawn => {
                format!("runner-style spawn (no queue), concurrency {concurrency}")
            }
        }
    }

    fn baseline(self) -> &'static str {
        match self {
            Kind::Enqueue | Kind::Noop => "BullMQ",
            Kind::Process | Kind::RunnerSpawn => "bare loop",
        }
    }

    /// The target for ours / baseline, where it sets one.
    fn target(self, concurrency: usize) -> Option<f64> {
        match self {
            Kind::Noop if concurrency >= 10 => Some(BULLMQ_TARGET),
            Kind::Process => Some(BARE_TARGET),
            _ => None,
        }
    }
}

pub async fn run(args: Args, env: &Env) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.jobs > 0 && args.process_jobs > 0 && args.rounds > 0,
        "--jobs, --process-jobs and --rounds must be positive"
    );
    anyhow::ensure!(
        args.events_jobs > 0
            && args.events_concurrency > 0
            && args.watchers_per_connection > 0
            && args.steady_rate > 0
            && args.steady_seconds > 0.0
            && !args.watchers.is_empty()
            && args.watchers.iter().all(|&n| n > 0),
        "--events-jobs, --events-concurrency, --watchers-per-connection, --steady-rate, \
         --steady-seconds and every --watchers value must be positive"
    );
    let events = matches!(args.only, None | Some(Only::Events));
    let scheduler = args.only != Some(Only::Events);
    let rust = matches!(args.only, None | Some(Only::Rust));
    let node = match args.only {
        None | Some(Only::Bullmq) => Some(bullmq::BullMq::locate()?),
        Some(Only::Rust | Only::Events) => None,
    };
    let hub_bin = if events {
        Some(hub::locate(args.hub_bin.as_deref())?)
    } else {
        None
    };
    let program = mosaic_hub::dev::find_program("true").context("`true` is not on PATH")?;
    let mut fx = Fixture::start(env).await?;
    let machine = report::Machine::describe(&mut fx, node.as_ref()).await?;
    eprintln!(
        "mosaic-bench: {} round(s); {} at {}",
        args.rounds,
        machine.valkey_version,
        fx.socket().display()
    );

    let mut cases = Vec::new();
    if scheduler {
        cases.push(Case::new(
            Kind::Enqueue,
            mosaic::IN_FLIGHT,
            args.jobs,
            &program,
        ));
    }
    for c in NOOP_CONCURRENCY.into_iter().filter(|_| scheduler) {
        cases.push(Case::new(Kind::Noop, c, args.jobs, &program));
    }
    for kind in [Kind::Process, Kind::RunnerSpawn]
        .into_iter()
        .filter(|_| scheduler)
    {
        for c in PROCESS_CONCURRENCY {
            cases.push(Case::new(kind, c, args.process_jobs, &program));
        }
    }

    if !args.cases.is_empty() {
        let known: Vec<String> = cases.iter().map(|c| c.id.clone()).collect();
        if let Some(unknown) = args.cases.iter().find(|id| !known.contains(id)) {
            anyhow::bail!(
                "--cases: no case `{unknown}`; the cases are {}",
                known.join(", ")
            );
        }
        cases.retain(|c| args.cases.contains(&c.id));
    }

    // Rounds alternate the sides case by case, so that drift in the machine hits both alike.
    let scheduler_rounds = if cases.is_empty() { 0 } else { args.rounds };
    for round in 1..=scheduler_rounds {
        eprintln!("round {round}/{}", args.rounds);
        for case in &mut cases {
            let (jobs, c) = (case.jobs, case.concurrency);
            if rust {
                fx.flush().await?;
                let ours = match case.kind {
                    Kind::Enqueue => mosaic::enqueue(&fx, jobs).await?,
                    Kind::Noop => mosaic::end_to_end(&fx, Agent::Noop, c, jobs).await?,
                    Kind::Process => {
                        mosaic::end_to_end(&fx, Agent::Program(&program), c, jobs).await?
                    }
                    Kind::RunnerSpawn => {
                        spawn::runner_style(&program, &fx.workdir(), c, jobs).await?
                    }
                };
                case.record(Side::Ours, ours);
                if matches!(case.kind, Kind::Process | Kind::RunnerSpawn) {
                    case.record(Side::Baseline, spawn::bare(&program, c, jobs).await?);
                }
            }
            if let Some(node) = &node {
                let mode = match case.kind {
                    Kind::Enqueue => Some(bullmq::Mode::Enqueue),
                    Kind::Noop => Some(bullmq::Mode::EndToEnd),
                    Kind::Process | Kind::RunnerSpawn => None,
                };
                if let Some(mode) = mode {
                    fx.flush().await?;
                    let m = node.run(&fx.socket(), mode, c, jobs).await?;
                    case.record(Side::Baseline, m);
                }
            }
            eprintln!("  {}", case.progress());
        }
    }

    let events = match hub_bin {
        Some(hub_bin) => Some(run_events(&args, &mut fx, hub_bin).await?),
        None => None,
    };

    let report = Report::new(machine, &args, cases, events);
    println!("{}", report.table());
    report.write(&args.out)?;
    eprintln!("results written to {}", args.out.display());
    Ok(())
}

/// The events benchmark: every number of watchers once per round, in turn, so that drift in
/// the machine hits them alike.
async fn run_events(
    args: &Args,
    fx: &mut Fixture,
    hub_bin: PathBuf,
) -> anyhow::Result<EventsReport> {
    let workload = Workload {
        jobs: args.events_jobs,
        lines: args.events_lines,
        concurrency: args.events_concurrency,
        per_connection: args.watchers_per_connection,
        steady_rate: args.steady_rate,
        steady_seconds: args.steady_seconds,
    };
    let mut bench = events::Bench::start(fx, hub_bin).await?;
    let mut cases: Vec<EventsCase> = args.watchers.iter().map(|&n| EventsCase::new(n)).collect();
    for round in 1..=args.rounds {
        eprintln!("events round {round}/{}", args.rounds);
        for case in &mut cases {
            let m = bench
                .measure(fx, &workload, case.watchers)
                .await
                .with_context(|| format!("{} (round {round})", case.id))?;
            case.record(m);
            eprintln!("  {}", case.progress());
        }
    }
    Ok(EventsReport::new(workload, cases))
}
