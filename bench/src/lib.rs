//! Throughput benchmark of the spoke's job queue and scheduler, against BullMQ on the same
//! `valkey-server` and against a bare loop that spawns `/bin/true`. A benchmark, not a test:
//! it asserts nothing and never runs under `cargo test`. `./bench/run.sh` is the one command;
//! BENCHMARKS.md records the method and the figures.
//!
//! Layout:
//! - [`fixture`]: the one Valkey of a run (flushed before every measurement) and the spoke
//!   configurations (PKI, keys, `spoke.toml`) the cases load.
//! - [`mosaic`]: our side, in process: `Store::enqueue`, and a real spoke draining its queue.
//! - [`bullmq`]: the BullMQ side: `bullmq/bench.mjs` under `node`, one process per measurement.
//! - [`spawn`]: the process baselines: a bare spawn-and-reap loop, and one that spawns the way
//!   the spoke's runner does but without any queue.
//! - [`report`]: the machine's description, the table on stdout and the JSON file.

pub mod bullmq;
pub mod fixture;
pub mod mosaic;
pub mod report;
pub mod spawn;

use std::path::PathBuf;

use anyhow::Context as _;
use mosaic_shared::config::Env;

use crate::fixture::Fixture;
use crate::mosaic::Agent;
use crate::report::{Case, Report, Side};

/// Concurrency levels of the no-op end-to-end cases.
const NOOP_CONCURRENCY: [usize; 3] = [1, 10, 100];
/// Concurrency levels of the `/bin/true` cases.
const PROCESS_CONCURRENCY: [usize; 2] = [1, 10];
/// The targets: ours / BullMQ at concurrency 10 and 100 ...
const BULLMQ_TARGET: f64 = 2.0;
/// ... and ours / bare spawn loop for real processes.
const BARE_TARGET: f64 = 0.7;

/// Measures the spoke's enqueue and end-to-end throughput against BullMQ and a bare spawn loop,
/// all on one valkey-server started for the run.
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
    /// Run only one side: `rust` (ours and the spawn baselines) or `bullmq`.
    #[arg(long, value_enum)]
    pub only: Option<Only>,
    /// Where to write the results as JSON.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/results.json"))]
    pub out: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Only {
    Rust,
    Bullmq,
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
    let rust = args.only != Some(Only::Bullmq);
    let node = if args.only == Some(Only::Rust) {
        None
    } else {
        Some(bullmq::BullMq::locate()?)
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

    let mut cases = vec![Case::new(
        Kind::Enqueue,
        mosaic::IN_FLIGHT,
        args.jobs,
        &program,
    )];
    for c in NOOP_CONCURRENCY {
        cases.push(Case::new(Kind::Noop, c, args.jobs, &program));
    }
    for kind in [Kind::Process, Kind::RunnerSpawn] {
        for c in PROCESS_CONCURRENCY {
            cases.push(Case::new(kind, c, args.process_jobs, &program));
        }
    }

    // Rounds alternate the sides case by case, so that drift in the machine hits both alike.
    for round in 1..=args.rounds {
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

    let report = Report::new(machine, &args, cases);
    println!("{}", report.table());
    report.write(&args.out)?;
    eprintln!("results written to {}", args.out.display());
    Ok(())
}
