//! What a run found: the machine, the settings, every measurement of every case, the medians
//! and their ratio against the case's baseline (the scheduler cases) or against one watcher
//! (the events cases), as tables for people and JSON for files. This module measures nothing.

use std::path::Path;

use crate::bullmq::BullMq;
use crate::events::{CpuSeconds, Workload};
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
    /// The scheduler cases (empty with `--only events`).
    pub cases: Vec<Case>,
    /// The events cases, if they ran.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub events: Option<EventsReport>,
}

impl Report {
    pub fn new(
        machine: Machine,
        args: &Args,
        cases: Vec<Case>,
        events: Option<EventsReport>,
    ) -> Self {
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
            events,
        }
    }

    /// The medians as plain-text tables.
    pub fn table(&self) -> String {
        let mut out = String::new();
        if !self.cases.is_empty() {
            out.push_str(&self.scheduler_table());
        }
        if let Some(events) = &self.events {
            if !out.is_empty() {
                out.push('\n');
            }
            out.push_str(&events.table(&self.machine, &self.settings));
        }
        out
    }

    fn scheduler_table(&self) -> String {
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

/// Deliveries' end-to-end latency, in milliseconds.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Latency {
    pub deliveries: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    pub max_ms: u64,
    /// Deliveries at or above the histogram's cap (then `max_ms` is the cap).
    pub at_cap: u64,
}

impl Latency {
    /// From a histogram: `counts[ms]` deliveries took `ms` milliseconds; `cap` and above are
    /// counted at `cap`.
    pub fn of(counts: &[u64], cap: usize) -> Self {
        let deliveries: u64 = counts.iter().sum();
        let quantile = |q: f64| -> u64 {
            // The smallest latency with at least a fraction q of the deliveries at or below.
            let want = ((deliveries as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (ms, &c) in counts.iter().enumerate() {
                seen += c;
                if seen >= want {
                    return ms as u64;
                }
            }
            counts.len().saturating_sub(1) as u64
        };
        Latency {
            deliveries,
            p50_ms: quantile(0.50),
            p99_ms: quantile(0.99),
            max_ms: counts.iter().rposition(|&c| c > 0).unwrap_or(0) as u64,
            at_cap: counts.get(cap).copied().unwrap_or(0),
        }
    }
}

/// One events measurement: one number of watchers, one round.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventsMeasured {
    pub watchers: usize,
    /// HTTP/2 connections the watches were spread over.
    pub connections: usize,
    pub jobs: usize,
    /// Events of the workload each watcher received (the most any did).
    pub events_per_watcher: u64,
    /// Events the hub's log gained during the timed section.
    pub events_logged: u64,
    /// Watchers that did not receive exactly `events_logged` events (should be 0).
    pub watchers_short: usize,
    /// Jobs that ended other than completed (should be 0).
    pub jobs_not_completed: usize,
    /// From releasing the workload until the last watcher had every event.
    pub seconds: f64,
    /// From releasing the workload until the spoke stamped its last event (ms resolution).
    pub produce_seconds: f64,
    /// Events the spoke produced per second (`events_logged / produce_seconds`).
    pub produced_per_sec: f64,
    /// Events delivered per watcher per second: `events_per_watcher / seconds`.
    pub per_watcher_per_sec: f64,
    /// Events delivered to all watchers per second: deliveries / `seconds`.
    pub total_per_sec: f64,
    /// Latency of the burst's deliveries: mostly waiting behind the rest of the burst.
    pub latency: Latency,
    /// `resync_required` ends (lag) over all watchers in the burst, each followed by a resume.
    pub resyncs: usize,
    pub watchers_resynced: usize,
    /// The steady phase, at a pace the hub keeps up with.
    pub steady: SteadyMeasured,
    /// The hub's resident memory before any watcher, with the watchers open and idle, and its
    /// peak (VmHWM) at the end of the timed section, in KiB.
    pub hub_rss_before_kib: u64,
    pub hub_rss_idle_kib: u64,
    pub hub_rss_peak_kib: u64,
    /// (idle − before) / watchers.
    pub hub_kib_per_watcher: f64,
    /// The hub process's CPU time per delivery in the burst.
    pub hub_cpu_us_per_delivery: f64,
    /// CPU time of each process in the burst.
    pub cpu_seconds: CpuSeconds,
}

/// The steady phase of one measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SteadyMeasured {
    pub jobs: usize,
    /// Events each watcher received (the most any did).
    pub events_per_watcher: u64,
    /// Events the hub's log gained.
    pub events_logged: u64,
    pub latency: Latency,
    pub resyncs: usize,
}

/// Every round of one number of watchers, and the medians.
#[derive(Debug, serde::Serialize)]
pub struct EventsCase {
    pub id: String,
    pub watchers: usize,
    pub rounds: Vec<EventsMeasured>,
    pub median: Option<EventsMedians>,
    /// Median per-watcher rate here / median per-watcher rate with one watcher.
    pub per_watcher_ratio_to_one: Option<f64>,
}

/// Medians over the rounds of one case.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventsMedians {
    pub events_per_watcher: f64,
    pub produced_per_sec: f64,
    pub per_watcher_per_sec: f64,
    pub total_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub steady_p50_ms: f64,
    pub steady_p99_ms: f64,
    pub hub_kib_per_watcher: f64,
    pub hub_rss_peak_kib: f64,
    pub hub_cpu_us_per_delivery: f64,
    /// Summed over the rounds, not medians: `resync_required` ends in the bursts and in the
    /// steady phases, and watchers that missed or doubled an event (should be 0).
    pub resyncs: usize,
    pub steady_resyncs: usize,
    pub watchers_short: usize,
}

impl EventsCase {
    pub fn new(watchers: usize) -> Self {
        EventsCase {
            id: format!("events-w{watchers}"),
            watchers,
            rounds: Vec::new(),
            median: None,
            per_watcher_ratio_to_one: None,
        }
    }

    /// One line for stderr after a round.
    pub fn progress(&self) -> String {
        let Some(m) = self.rounds.last() else {
            return self.id.clone();
        };
        format!(
            "{:<12} burst {} ev/watcher in {:.2} s: {:.0}/s per watcher, {:.0}/s total, p50 {} ms, p99 {} ms, {} resyncs; steady p50 {} ms, p99 {} ms; hub {:.1} KiB/watcher, {:.2} µs/delivery",
            self.id,
            m.events_per_watcher,
            m.seconds,
            m.per_watcher_per_sec,
            m.total_per_sec,
            m.latency.p50_ms,
            m.latency.p99_ms,
            m.resyncs,
            m.steady.latency.p50_ms,
            m.steady.latency.p99_ms,
            m.hub_kib_per_watcher,
            m.hub_cpu_us_per_delivery,
        )
    }

    pub fn record(&mut self, m: EventsMeasured) {
        self.rounds.push(m);
        let med = |f: fn(&EventsMeasured) -> f64| {
            median(&self.rounds.iter().map(f).collect::<Vec<_>>()).unwrap_or(0.0)
        };
        self.median = Some(EventsMedians {
            events_per_watcher: med(|m| m.events_per_watcher as f64),
            produced_per_sec: med(|m| m.produced_per_sec),
            per_watcher_per_sec: med(|m| m.per_watcher_per_sec),
            total_per_sec: med(|m| m.total_per_sec),
            p50_ms: med(|m| m.latency.p50_ms as f64),
            p99_ms: med(|m| m.latency.p99_ms as f64),
            steady_p50_ms: med(|m| m.steady.latency.p50_ms as f64),
            steady_p99_ms: med(|m| m.steady.latency.p99_ms as f64),
            hub_kib_per_watcher: med(|m| m.hub_kib_per_watcher),
            hub_rss_peak_kib: med(|m| m.hub_rss_peak_kib as f64),
            hub_cpu_us_per_delivery: med(|m| m.hub_cpu_us_per_delivery),
            resyncs: self.rounds.iter().map(|m| m.resyncs).sum(),
            steady_resyncs: self.rounds.iter().map(|m| m.steady.resyncs).sum(),
            watchers_short: self.rounds.iter().map(|m| m.watchers_short).sum(),
        });
    }
}

/// The events benchmark's part of a run.
#[derive(Debug, serde::Serialize)]
pub struct EventsReport {
    pub workload: Workload,
    pub cases: Vec<EventsCase>,
}

impl EventsReport {
    pub fn new(workload: Workload, cases: Vec<EventsCase>) -> Self {
        let mut report = EventsReport { workload, cases };
        report.ratios();
        report
    }

    /// Each case's per-watcher rate against the one-watcher case's, medians of the same run.
    fn ratios(&mut self) {
        let one = self
            .cases
            .iter()
            .find(|c| c.watchers == 1)
            .and_then(|c| c.median.as_ref())
            .map(|m| m.per_watcher_per_sec);
        for c in &mut self.cases {
            c.per_watcher_ratio_to_one = one
                .zip(c.median.as_ref())
                .map(|(one, m)| m.per_watcher_per_sec / one);
        }
    }

    fn table(&self, m: &Machine, settings: &Settings) -> String {
        let w = &self.workload;
        let mut out = format!(
            "mosaic {} events; {} CPU(s) {}, {}; medians of {} round(s)\n\
             burst: {} jobs × {} progress lines, spoke concurrency {}; steady: ~{} events/s for {} s; \
             {} watches per HTTP/2 connection\n\n",
            settings.revision.as_deref().unwrap_or("(unknown revision)"),
            m.nproc,
            m.cpu_model,
            m.valkey_version,
            settings.rounds,
            w.jobs,
            w.lines,
            w.concurrency,
            w.steady_rate,
            w.steady_seconds,
            w.per_connection,
        );
        let row = |c: [&str; 13]| {
            format!(
                "{:<12} {:>6} {:>10} {:>9} {:>8} {:>7} {:>7} {:>7} {:>7} {:>7} {:>7} {:>8} {:>7}\n",
                c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12]
            )
        };
        out.push_str(&row([
            "", "burst", "", "", "", "", "", "", "", "steady", "", "hub", "",
        ]));
        out.push_str(&row([
            "case",
            "events",
            "produced/s",
            "/watcher/s",
            "total/s",
            "ratio",
            "p50 ms",
            "p99 ms",
            "resyncs",
            "p50 ms",
            "p99 ms",
            "KiB/wtchr",
            "µs/dlv",
        ]));
        for c in &self.cases {
            let Some(md) = &c.median else { continue };
            out.push_str(&row([
                &c.id,
                &format!("{:.0}", md.events_per_watcher),
                &format!("{:.0}", md.produced_per_sec),
                &format!("{:.0}", md.per_watcher_per_sec),
                &format!("{:.0}", md.total_per_sec),
                &c.per_watcher_ratio_to_one
                    .map_or("-".into(), |r| format!("{r:.3}×")),
                &format!("{:.0}", md.p50_ms),
                &format!("{:.0}", md.p99_ms),
                &format!("{}+{}", md.resyncs, md.steady_resyncs),
                &format!("{:.0}", md.steady_p50_ms),
                &format!("{:.0}", md.steady_p99_ms),
                &format!("{:.1}", md.hub_kib_per_watcher),
                &format!("{:.2}", md.hub_cpu_us_per_delivery),
            ]));
        }
        out.push_str(
            "\nburst: events = workload events each watcher received; produced/s = the spoke's rate; \
             /watcher/s = events / time until the last watcher had them all;\ntotal/s = all \
             deliveries / the same time; ratio = /watcher/s over the 1-watcher case's; latency = \
             receipt − the event's at_ms (ms resolution;\nin the burst, mostly waiting behind the \
             rest of it); resyncs = resync_required ends, burst+steady, summed over rounds.\nhub: \
             KiB/wtchr = hub RSS with N idle watchers minus with none, / N; µs/dlv = hub process \
             CPU per delivery in the burst.\n",
        );
        if let Some(short) = self
            .cases
            .iter()
            .filter_map(|c| c.median.as_ref())
            .map(|m| m.watchers_short)
            .max()
            .filter(|&s| s > 0)
        {
            out.push_str(&format!(
                "WARNING: up to {short} watcher(s) per case did not receive exactly the events the hub logged\n"
            ));
        }
        out
    }
}
