//! The BullMQ side: runs `bench/bullmq/bench.mjs` under `node`, one process per measurement,
//! against the fixture's valkey-server socket, and reads the one JSON line it prints.
//!
//! The script times itself (see its header), so Node's start-up and the pre-fill of the
//! end-to-end cases are outside the figure, as they are on our side. This module never
//! installs anything: a missing `node` or `node_modules` is an error that says what to run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

use crate::fixture::ServerStats;
use crate::report::Measured;

/// What the Node side of a case does (its `--mode`).
#[derive(Debug, Clone, Copy)]
pub enum Mode {
    /// `queue.add` of N jobs, as many in flight as ours.
    Enqueue,
    /// N jobs pre-filled, then a Worker with the case's concurrency drains them.
    EndToEnd,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Enqueue => "enqueue",
            Mode::EndToEnd => "e2e",
        }
    }
}

/// `node` and the installed script, with the versions the report names.
#[derive(Debug, Clone)]
pub struct BullMq {
    node: PathBuf,
    script: PathBuf,
    pub node_version: String,
    pub bullmq_version: String,
}

/// The line `bench.mjs` prints.
#[derive(serde::Deserialize)]
struct Line {
    jobs: usize,
    seconds: f64,
    /// `INFO cpu commandstats` just before and just after the timed section.
    server: InfoPair,
    /// `process.cpuUsage()` of the Node process over the timed section, user + system.
    client_cpu_seconds: f64,
}

#[derive(serde::Deserialize)]
struct InfoPair {
    before: String,
    after: String,
}

const INSTALL_HINT: &str = "run `npm ci --prefix bench/bullmq` (./bench/run.sh does)";

impl BullMq {
    /// Finds `node` on PATH and the script's installed dependencies.
    pub fn locate() -> anyhow::Result<Self> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bullmq");
        let node = mosaic_hub::dev::find_program("node").with_context(|| {
            format!("node is not on PATH: install Node.js 18 or later, then {INSTALL_HINT}")
        })?;
        let package = dir.join("node_modules/bullmq/package.json");
        let manifest: serde_json::Value = std::fs::read_to_string(&package)
            .ok()
            .and_then(|s| serde_json::from_str(&s).ok())
            .with_context(|| {
                format!(
                    "BullMQ is not installed ({} is missing): {INSTALL_HINT}",
                    package.display()
                )
            })?;
        let bullmq_version = manifest["version"].as_str().unwrap_or("unknown").to_owned();
        let out = Command::new(&node)
            .arg("--version")
            .output()
            .with_context(|| format!("cannot run {}", node.display()))?;
        let node_version = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        Ok(BullMq {
            node,
            script: dir.join("bench.mjs"),
            node_version,
            bullmq_version,
        })
    }

    /// Runs one measurement on the server listening on `socket`.
    pub async fn run(
        &self,
        socket: &Path,
        mode: Mode,
        concurrency: usize,
        jobs: usize,
    ) -> anyhow::Result<Measured> {
        let mut cmd = Command::new(&self.node);
        cmd.arg(&self.script)
            .arg("--socket")
            .arg(socket)
            .args(["--jobs", &jobs.to_string()])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--mode", mode.as_str()])
            .stdin(Stdio::null());
        let out = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .with_context(|| format!("cannot run {}", self.node.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "bench.mjs --mode {} failed ({}):\n{}{}",
                mode.as_str(),
                out.status,
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let last = stdout.lines().last().unwrap_or_default();
        let line: Line = serde_json::from_str(last)
            .with_context(|| format!("bench.mjs printed {last:?}, not its JSON result"))?;
        if line.jobs != jobs {
            bail!("bench.mjs ran {} jobs, not {jobs}", line.jobs);
        }
        Ok(Measured {
            jobs,
            seconds: line.seconds,
            server: Some(
                ServerStats::parse(&line.server.before)
                    .per_job(&ServerStats::parse(&line.server.after), jobs),
            ),
            client_cpu_us_per_job: Some(line.client_cpu_seconds * 1e6 / jobs as f64),
        })
    }
}
