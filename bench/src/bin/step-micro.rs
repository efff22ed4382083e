//! `step-micro`: the queue's `STEP` script alone, without a spoke around it.
//!
//! For each batch size K, fills the queue with no-op jobs, then drives `Store::step` in
//! lockstep from one task: each call ends the K attempts the previous call created (each
//! with its start folded in, as the built-in no-op agent's ends are) and creates K new ones,
//! until the queue is empty. It prints the server's CPU time per job, the `EVALSHA` time per
//! job and the time of the commands inside it, read from `INFO cpu commandstats` around each
//! run, as the minimum and median over `--runs`. The machine's noise moves these by ±20%
//! between runs, so compare script versions interleaved, by their minima. `--commands` also
//! prints each command's calls and time per job.
//!
//! ```sh
//! MOSAIC_VALKEY_SERVER=$(deploy/ensure-valkey.sh) \
//!     cargo run --release -p mosaic-bench --bin step-micro -- --batch 3,10,50 --runs 5
//! ```

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Parser as _;
use mosaic_bench::fixture::{Fixture, NOOP_PROFILE};
use mosaic_shared::config::Env;
use mosaic_shared::time::unix_ms;
use mosaic_spoke::store::{
    AttemptEnd, AttemptRecord, DispatchRequest, Dispatched, Outcome, Started, Store,
};

#[derive(clap::Parser)]
struct Args {
    /// Jobs per run.
    #[arg(long, default_value_t = 10_000)]
    jobs: usize,
    /// Attempts ended and created per call, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,3,10,50")]
    batch: Vec<usize>,
    /// Runs per batch size.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Also print, per batch size, each command's calls and time per job (medians).
    #[arg(long)]
    commands: bool,
}

/// Per job, over one run: server CPU, `EVALSHA` time, and the commands inside the scripts.
struct Run {
    cpu_us: f64,
    evalsha_us: f64,
    inner_us: f64,
    /// Per command: (calls, µs) per job.
    commands: BTreeMap<String, (f64, f64)>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    anyhow::ensure!(
        args.jobs > 0 && args.runs > 0 && args.batch.iter().all(|&k| k > 0),
        "--jobs, --runs and every --batch must be positive"
    );
    let mut fx = Fixture::start(&Env::from_process()).await?;
    println!("per job, min / median of {} runs", args.runs);
    println!("batch    server µs      EVALSHA µs     inside µs");
    for &k in &args.batch {
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            runs.push(run(&mut fx, k, args.jobs).await?);
        }
        let stat = |f: fn(&Run) -> f64| {
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            (v[0], v[v.len() / 2])
        };
        let (cpu, eval, inner) = (
            stat(|r| r.cpu_us),
            stat(|r| r.evalsha_us),
            stat(|r| r.inner_us),
        );
        println!(
            "{k:5}  {:5.1} / {:5.1}  {:5.1} / {:5.1}  {:5.1} / {:5.1}",
            cpu.0, cpu.1, eval.0, eval.1, inner.0, inner.1
        );
        if args.commands {
            for name in runs[0].commands.keys() {
                let median = |f: fn(&(f64, f64)) -> f64| {
                    let mut v: Vec<f64> = runs
                        .iter()
                        .map(|r| r.commands.get(name).map_or(0.0, f))
                        .collect();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                println!(
                    "         {name:12} {:5.2} calls  {:5.2} µs",
                    median(|c| c.0),
                    median(|c| c.1)
                );
            }
        }
    }
    Ok(())
}

async fn run(fx: &mut Fixture, k: usize, jobs: usize) -> anyhow::Result<Run> {
    fx.flush().await?;
    let store = Store::connect(
        &mosaic_shared::valkey::Target::single(fx.valkey_url()),
        &fx.spoke_id(),
    )
    .await?;
    mosaic_bench::mosaic::fill(&store, NOOP_PROFILE, jobs).await?;
    let before = fx.server_stats().await?;
    let mut ends: Vec<AttemptRecord> = Vec::new();
    let mut done = 0;
    for call in 0usize.. {
        let now = unix_ms();
        let token = format!("step-micro-{call}");
        let request = DispatchRequest {
            count: k,
            token: &token,
            lease: Duration::from_secs(30),
            owner: "step-micro",
            repeat: false,
            total_limit: k,
            profile_limits: &[],
            promote: false,
        };
        let records: Vec<&AttemptRecord> = ends.iter().collect();
        let out = store.step(now, &records, Some(&request)).await?;
        done += ends.len();
        if out.dispatched.is_empty() {
            break;
        }
        ends = out.dispatched.into_iter().map(|d| ended(d, now)).collect();
    }
    anyhow::ensure!(done == jobs, "ended {done} of {jobs} jobs");
    let load = before.per_job(&fx.server_stats().await?, jobs);
    let evalsha_us = load.commands.get("evalsha").map_or(0.0, |c| c.usec_per_job);
    let inner_us = load
        .commands
        .iter()
        .filter(|(name, _)| *name != "evalsha")
        .map(|(_, c)| c.usec_per_job)
        .sum();
    Ok(Run {
        cpu_us: load.cpu_us_per_job,
        evalsha_us,
        inner_us,
        commands: load
            .commands
            .iter()
            .map(|(name, c)| (name.clone(), (c.calls_per_job, c.usec_per_job)))
            .collect(),
    })
}

/// The end of a no-op attempt: completed, with its start written in the same transition.
fn ended(d: Dispatched, now: i64) -> AttemptRecord {
    AttemptRecord::Ended {
        job: d.job_id,
        agent: d.agent_id,
        at_ms: now,
        end: AttemptEnd {
            outcome: Outcome::Completed,
            retry_delay: Duration::ZERO,
            error: String::new(),
            exit_code: None,
            signal: None,
            output_tail: String::new(),
            started: Some(Started {
                at_ms: now,
                process: None,
            }),
        },
    }
}
