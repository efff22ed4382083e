//! The spoke's Prometheus metrics, served on the ops port (`mosaic_shared::ops`).
//!
//! Each metric is owned by the part that changes it: the store counts Valkey errors, the
//! supervisor times attempts, the gRPC service counts commands, verification failures and event
//! streams, and `run` keeps the queue gauges and the draining flag. This module registers them
//! under their names, in one place, so that the names the dashboards use are listed here.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use mosaic_shared::ops::CommonMetrics;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CommandLabels {
    pub verb: &'static str,
    /// `ok`, or the refusal's reason code (`x-mosaic-reason`).
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttemptLabels {
    pub profile: String,
    /// completed, failed, killed or interrupted.
    pub outcome: &'static str,
}

/// Attempt durations from 10 ms to about 45 minutes, by factors of 4.
pub type AttemptDurations = Family<AttemptLabels, Histogram>;

pub fn attempt_durations() -> AttemptDurations {
    Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.01, 4.0, 10)))
}

/// What the gRPC service and `run` update.
#[derive(Clone)]
pub struct SpokeMetrics {
    pub common: CommonMetrics,
    pub commands: Family<CommandLabels, Counter>,
    pub verification_failures: Family<ReasonLabel, Counter>,
    pub queue_jobs: Family<StateLabel, Gauge>,
    pub event_streams: Gauge,
    pub draining: Gauge,
}

impl SpokeMetrics {
    /// Registers every spoke metric; `valkey_errors` and `attempts` are the store's and the
    /// supervisor's own.
    pub fn register(
        registry: &mut Registry,
        valkey_errors: Counter,
        attempts: AttemptDurations,
    ) -> Self {
        let m = SpokeMetrics {
            common: CommonMetrics::register(registry, "mosaic-spoke"),
            commands: Family::default(),
            verification_failures: Family::default(),
            queue_jobs: Family::default(),
            event_streams: Gauge::default(),
            draining: Gauge::default(),
        };
        registry.register(
            "mosaic_spoke_commands",
            "Signed commands executed, by verb and outcome (ok or the refusal's reason)",
            m.commands.clone(),
        );
        registry.register(
            "mosaic_spoke_verification_failures",
            "Commands and streams refused by the verification chain, by reason",
            m.verification_failures.clone(),
        );
        registry.register(
            "mosaic_spoke_queue_jobs",
            "Jobs in the queue by state (read every few seconds)",
            m.queue_jobs.clone(),
        );
        registry.register(
            "mosaic_spoke_attempt_duration_seconds",
            "Attempts from launch to end, by profile and outcome",
            attempts,
        );
        registry.register(
            "mosaic_spoke_event_streams",
            "Event streams open to hubs",
            m.event_streams.clone(),
        );
        registry.register(
            "mosaic_spoke_valkey_errors",
            "Failed Valkey calls, including those retried",
            valkey_errors,
        );
        registry.register(
            "mosaic_spoke_draining",
            "1 while the spoke drains before it stops",
            m.draining.clone(),
        );
        m
    }

    pub fn verification_failed(&self, reason: &'static str) {
        self.verification_failures
            .get_or_create(&ReasonLabel { reason })
            .inc();
    }

    pub fn command(&self, verb: &'static str, outcome: &'static str) {
        self.commands
            .get_or_create(&CommandLabels { verb, outcome })
            .inc();
    }
}
