//! What a run found: the machine, the settings, every measurement of every case, the medians
//! and their ratio against the case's baseline, as a table for people and JSON for files.
//! This module measures nothing.

use std::path::Path;

use crate::bullmq::BullMq;
use crate::fixture::{Fixture, ServerLoad};
use crate::{Args, Kind, mosaic};

/// One timed measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measured {
    pub jobs: usize,
    pub seconds: f64,
    /// What valkey-server spent during the timed section; `None` where no server is involved.
    pub server: Option<ServerLoad>,
    /// CPU time of the client process (ours: the whole benchmark process, spoke included;
    /// BullMQ: the Node process), microseconds per job; `None` for the spawn loops.
    pub client_cpu_us_per_job: Option<f64>,
}

impl Measured {
    pub fn rate(&self) -> f64 {
        self.jobs as f64 / self.seconds
    }
}

#[derive(Debug, Clone, Copy)]
pub enum Side {
    Ours,
    /// BullMQ or the bare spawn loop, per the case.
    Baseline,
}

/// Every measurement of one side of a case.
#[derive(Debug, Default, serde::Serialize)]
pub struct Samples {
    /// Jobs (or spawns) per second, one per round, in order.
    pub rates: Vec<f64>,
    pub seconds: Vec<f64>,
    /// Server-side cost per job, one per round (queue cases only).
    pub server: Vec<ServerLoad>,
    /// Client CPU per job, one per round (queue cases only).
    pub client_cpu_us: Vec<f64>,
    pub median: Option<f64>,
}

impl Samples {
    fn push(&mut self, m: Measured) {
        self.rates.push(m.rate());
        self.seconds.push(m.seconds);
        self.server.extend(m.server.clone());
        self.client_cpu_us.extend(m.client_cpu_us_per_job);
        self.median = median(&self.rates);
    }

    /// Median server CPU per job, in microseconds.
    pub fn server_cpu_us(&self) -> Option<f64> {
        median(
            &self
                .server
                .iter()
                .map(|s| s.cpu_us_per_job)
                .collect::<Vec<_>>(),
        )
    }

    /// Median client CPU per job, in microseconds.
    pub fn client_cpu_us(&self) -> Option<f64> {
        median(&self.client_cpu_us)
    }

    /// Median commands per job.
    pub fn server_calls(&self) -> Option<f64> {
        median(
            &self
                .server
                .iter()
                .map(|s| s.calls_per_job)
                .collect::<Vec<_>>(),
        )
    }
}

fn revision() -> Option<String> {
    let out = std::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn median(values: &[f64]) -> Option<f64> {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    match n {
        0 => None,
        _ if n % 2 == 1 => Some(sorted[n / 2]),
        _ => Some((sorted[n / 2 - 1] + sorted[n / 2]) / 2.0),
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Case {
    pub id: String,
    pub kind: Kind,
    pub label: String,
    pub jobs: usize,
    pub concurrency: usize,
    /// What `ours` is compared with: "BullMQ" or "bare loop".
    pub baseline_name: &'static str,
    pub ours: Samples,
    pub baseline: Samples,
    /// Median of ours / median of the baseline.
    pub ratio: Option<f64>,
    /// The lower bound for `ratio`, where it sets one.
    pub target: Option<f64>,
    pub target_met: Option<bool>,
}

impl Case {
    pub fn new(kind: Kind, concurrency: usize, jobs: usize, program: &Path) -> Self {
        let id = match kind {
            Kind::Enqueue => "enqueue".to_owned(),
            Kind::Noop => format!("noop-c{concurrency}"),
            Kind::Process => format!("true-c{concurrency}"),
            Kind::RunnerSpawn => format!("runner-spawn-c{concurrency}"),
        };
        Case {
            id,
            kind,
            label: kind.label(concurrency, program),
            jobs,
            concurrency,
            baseline_name: kind.baseline(),
            ours: Samples::default(),
            baseline: Samples::default(),
            ratio: None,
            target: kind.target(concurrency),
            target_met: None,
        }
    }

    pub fn record(&mut self, side: Side, m: Measured) {
        match side {
            Side::Ours => self.ours.push(m),
            Side::Baseline => self.baseline.push(m),
        }
        self.ratio = self
            .ours
            .median
            .zip(self.baseline.median)
            .map(|(o, b)| o / b);
        self.target_met = self.target.zip(self.ratio).map(|(t, r)| r >= t);
    }

    /// One line for stderr after a round of this case.
    pub fn progress(&self) -> String {
        let last = |s: &Samples| s.rates.last().map_or("-".into(), |r| format!("{r:.0}/s"));
        format!(
            "{:<16} ours {:>9}  {} {:>9}",
            self.id,
            last(&self.ours),
            self.baseline_name,
            last(&self.baseline)
        )
    }
}

/// The machine and software a run measured on.
#[derive(Debug, serde::Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub kernel: String,
    pub valkey_version: String,
    pub valkey_bin: String,
    pub node_version: Option<String>,
    pub bullmq_version: Option<String>,
}

impl Machine {
    pub async fn describe(fx: &mut Fixture, node: Option<&BullMq>) -> anyhow::Result<Self> {
        let info = fx.server_info().await?;
        let field = |k: &str| info.iter().find(|(f, _)| f == k).map(|(_, v)| v.clone());
        let valkey_version = match field("valkey_version") {
            Some(v) => format!("Valkey {v}"),
            None => format!(
                "Redis {}",
                field("redis_version").unwrap_or_else(|| "unknown".into())
            ),
        };
        let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        Ok(Machine {
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model,
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".into(), |s| s.trim().to_owned()),
            valkey_version,
            valkey_bin: fx.valkey_bin().display().to_string(),
            node_version: node.map(|n| n.node_version.clone()),
            bullmq_version: node.map(|n| n.bullmq_version.clone()),
        })
    }
}

#[derive(Debug, serde::Serialize)]
pub struct Settings {
    /// `git describe --always --dirty` of the workspace measured, if git can tell.
    pub revision: Option<String>,
    pub jobs: usize,
    pub process_jobs: usize,
    pub rounds: usize,
    pub enqueue_in_flight: usize,
    pub only: Option<String>,
}

#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub machine: Machine,
    pub settings: Settings,
    pub cases: Vec<Case>,
}

impl Report {
    pub fn new(machine: Machine, args: &Args, cases: Vec<Case>) -> Self {
        Report {
            machine,
            settings: Settings {
                revision: revision(),
                jobs: args.jobs,
                process_jobs: args.process_jobs,
                rounds: args.rounds,
                enqueue_in_flight: mosaic::IN_FLIGHT,
                only: args.only.map(|o| format!("{o:?}").to_lowercase()),
            },
            cases,
        }
    }

    /// The medians as a plain-text table.
    pub fn table(&self) -> String {
        let m = &self.machine;
        let mut out = format!(
            "mosaic {}; {} CPU(s) {}, {}, node {}, BullMQ {}; medians of {} round(s)\n\n",
            self.settings
                .revision
                .as_deref()
                .unwrap_or("(unknown revision)"),
            m.nproc,
            m.cpu_model,
            m.valkey_version,
            m.node_version.as_deref().unwrap_or("-"),
            m.bullmq_version.as_deref().unwrap_or("-"),
            self.settings.rounds
        );
        let row = |c: [&str; 11]| {
            format!(
                "{:<16} {:>6} {:>4} {:>9} {:<9} {:>10} {:>6}  {:<13} {:>15} {:>15} {:>11}\n",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10]
            )
        };
        out.push_str(&row([
            "case",
            "jobs",
            "c",
            "ours/s",
            "baseline",
            "baseline/s",
            "ratio",
            "target",
            "valkey µs/job",
            "client µs/job",
            "cmds/job",
        ]));
        let num = |r: Option<f64>, digits: usize| r.map_or("-".into(), |r| format!("{r:.digits$}"));
        let pair = |a: Option<f64>, b: Option<f64>, digits: usize| match (a, b) {
            (None, None) => String::new(),
            _ => format!("{} / {}", num(a, digits), num(b, digits)),
        };
        for c in &self.cases {
            let target = match (c.target, c.target_met) {
                (Some(t), Some(met)) => {
                    format!("≥{t:.1}× {}", if met { "met" } else { "NOT met" })
                }
                (Some(t), None) => format!("≥{t:.1}×"),
                (None, _) => String::new(),
            };
            out.push_str(&row([
                &c.id,
                &c.jobs.to_string(),
                &c.concurrency.to_string(),
                &num(c.ours.median, 0),
                c.baseline_name,
                &num(c.baseline.median, 0),
                &c.ratio.map_or("-".into(), |r| format!("{r:.2}×")),
                &target,
                &pair(c.ours.server_cpu_us(), c.baseline.server_cpu_us(), 0),
                &pair(c.ours.client_cpu_us(), c.baseline.client_cpu_us(), 0),
                &pair(c.ours.server_calls(), c.baseline.server_calls(), 0),
            ]));
        }
        out.push_str(
            "\nratio = ours / baseline (medians). Per job in the timed section, ours / BullMQ: \
             valkey µs = valkey-server CPU time;\nclient µs = CPU time of the client process \
             (ours: the bench process with the spoke in it; BullMQ: node);\ncmds = commands \
             the server executed (each script call and each command inside it counts).\n",
        );
        out
    }

    pub fn write(&self, path: &Path) -> anyhow::Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, serde_json::to_string_pretty(self)? + "\n")?;
        Ok(())
    }
}
