//! The process baselines, with no queue and no Valkey.
//!
//! [`bare`] is the reference: `concurrency` threads that each spawn `program` with
//! `std::process` (stdio to /dev/null, inherited environment) and wait for it, until `jobs`
//! processes have been reaped. [`runner_style`] spawns the way the spoke's runner does — tokio,
//! cleared environment, working directory created, own process group, stdout and stderr piped
//! and read to the end, start time read from /proc — so that the gap between ours and the bare
//! loop can be split into the cost of spawning that way and the cost of the queue.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Context as _, bail};
use tokio::io::AsyncReadExt as _;

use crate::report::Measured;

/// Spawns and reaps `jobs` runs of `program` from `concurrency` threads.
pub async fn bare(program: &Path, concurrency: usize, jobs: usize) -> anyhow::Result<Measured> {
    let program = program.to_owned();
    tokio::task::spawn_blocking(move || bare_blocking(&program, concurrency, jobs)).await?
}

fn bare_blocking(program: &Path, concurrency: usize, jobs: usize) -> anyhow::Result<Measured> {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        let lanes: Vec<_> = (0..concurrency.min(jobs))
            .map(|_| {
                s.spawn(|| -> anyhow::Result<()> {
                    while next.fetch_add(1, Ordering::Relaxed) < jobs {
                        let status = std::process::Command::new(program)
                            .stdin(Stdio::null())
                            .stdout(Stdio::null())
                            .stderr(Stdio::null())
                            .status()
                            .with_context(|| format!("cannot run {}", program.display()))?;
                        if !status.success() {
                            bail!("{} ended with {status}", program.display());
                        }
                    }
                    Ok(())
                })
            })
            .collect();
        lanes
            .into_iter()
            .try_for_each(|l| l.join().expect("a spawn lane panicked"))
    })?;
    Ok(Measured {
        jobs,
        seconds: started.elapsed().as_secs_f64(),
        server: None,
        client_cpu_us_per_job: None,
    })
}

/// Spawns and reaps `jobs` runs of `program` from `concurrency` tokio tasks, each the way the
/// runner starts an agent, in working directories under `workdir`.
pub async fn runner_style(
    program: &Path,
    workdir: &Path,
    concurrency: usize,
    jobs: usize,
) -> anyhow::Result<Measured> {
    let next = Arc::new(AtomicUsize::new(0));
    let workdir = workdir.join("runner-style");
    let started = Instant::now();
    let mut lanes = tokio::task::JoinSet::new();
    for _ in 0..concurrency.min(jobs) {
        let (program, workdir, next) = (program.to_owned(), workdir.clone(), next.clone());
        lanes.spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < jobs {
                spawn_like_runner(&program, &workdir).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(lane) = lanes.join_next().await {
        lane??;
    }
    Ok(Measured {
        jobs,
        seconds: started.elapsed().as_secs_f64(),
        server: None,
        client_cpu_us_per_job: None,
    })
}

async fn spawn_like_runner(program: &PathBuf, workdir: &Path) -> anyhow::Result<()> {
    tokio::fs::create_dir_all(workdir).await?;
    let mut child = tokio::process::Command::new(program)
        .env_clear()
        .current_dir(workdir)
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", program.display()))?;
    let pid = child.id().context("a just-spawned child has a pid")?;
    let _start = mosaic_spoke::runner::process_start_time(pid);
    let readers = [
        child.stdout.take().map(|s| tokio::spawn(drain(s))),
        child.stderr.take().map(|s| tokio::spawn(drain(s))),
    ];
    let status = child.wait().await?;
    for r in readers.into_iter().flatten() {
        r.await?;
    }
    if !status.success() {
        bail!("{} ended with {status}", program.display());
    }
    Ok(())
}

async fn drain(mut stream: impl tokio::io::AsyncRead + Unpin) {
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}
