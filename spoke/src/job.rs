//! Jobs: what a spawn becomes on a spoke, and the policy that decides what happens to them.
//!
//! A job waits in the spoke's queue (`pending`, or `delayed` until a time), is `assigned` an
//! attempt when the scheduler finds a free slot, is `executing` while that attempt's process
//! runs, and ends `completed`, `failed` (retries exhausted) or `cancelled` (killed or removed;
//! never retried). Each attempt is an agent with its own lifecycle (`lifecycle`). This module
//! owns the job state table, the validated [`JobOptions`] and the retry [`backoff`]; it does no
//! I/O. The table is enforced in Valkey by `store`'s scripts; the pending queue's order
//! (higher priority first, FIFO within one) is the score computed by `pending_score` in
//! `store/queue.lua`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::config::QueueConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JobState {
    Pending,
    Delayed,
    Assigned,
    Executing,
    Completed,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 7] = [
        JobState::Pending,
        JobState::Delayed,
        JobState::Assigned,
        JobState::Executing,
        JobState::Completed,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Delayed => "delayed",
            JobState::Assigned => "assigned",
            JobState::Executing => "executing",
            JobState::Completed => "completed",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Failed | JobState::Cancelled
        )
    }

    /// Waiting in the queue (and so removable by an operator).
    pub fn is_queued(self) -> bool {
        matches!(self, JobState::Pending | JobState::Delayed)
    }

    /// Holding a slot: an attempt exists and may have a live process.
    pub fn is_active(self) -> bool {
        matches!(self, JobState::Assigned | JobState::Executing)
    }

    /// The states from which a job may enter `self`.
    pub fn may_enter_from(self) -> &'static [JobState] {
        use JobState::*;
        match self {
            // Delayed → pending when due; assigned/executing → pending when a shutdown
            // interrupts an attempt (no failure counted).
            Pending => &[Delayed, Assigned, Executing],
            // Born delayed, or waiting out a retry backoff.
            Delayed => &[Assigned, Executing],
            Assigned => &[Pending],
            Executing => &[Assigned],
            Completed => &[Executing],
            Failed => &[Assigned, Executing],
            Cancelled => &[Pending, Delayed, Assigned, Executing],
        }
    }

    pub fn can_transition(from: JobState, to: JobState) -> bool {
        to.may_enter_from().contains(&from)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown job state {s:?}"))
    }
}

/// Scheduling options of one job, validated; defaults come from the spoke's `[queue]` config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOptions {
    /// 1–10; 10 runs first, FIFO within a priority.
    pub priority: u8,
    /// Wall-clock time (unix ms) before which the job does not run; `None` = now.
    pub not_before_ms: Option<i64>,
    /// Retries after the first attempt fails (0 = never retry).
    pub max_retries: u32,
    pub backoff_base: Duration,
    pub backoff_cap: Duration,
    /// An attempt running longer is killed and counts as failed; `None` = no limit.
    pub attempt_timeout: Option<Duration>,
}

/// Scheduling options as a client sent them (validated for range); unset ones take the
/// spoke's defaults in [`RequestedOptions::resolve`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequestedOptions {
    pub priority: Option<u8>,
    pub delay: Option<Duration>,
    pub not_before_ms: Option<i64>,
    pub max_retries: Option<u32>,
    pub backoff_base: Option<Duration>,
    pub backoff_cap: Option<Duration>,
    pub attempt_timeout: Option<Duration>,
}

impl RequestedOptions {
    /// The job's options: the request's, else the spoke's defaults. When only one of base and
    /// cap is given, the other default gives way: a requested cap below the default base lowers
    /// the base to it, and a requested base above the default cap raises the cap to it.
    pub fn resolve(&self, defaults: &QueueConfig, now_ms: i64) -> JobOptions {
        let base = match (self.backoff_base, self.backoff_cap) {
            (Some(b), _) => b,
            (None, Some(c)) => defaults.default_backoff_base.min(c),
            (None, None) => defaults.default_backoff_base,
        };
        let cap = self
            .backoff_cap
            .unwrap_or(defaults.default_backoff_cap)
            .max(base);
        let not_before_ms = self
            .delay
            .map(|d| now_ms.saturating_add(d.as_millis() as i64))
            .or(self.not_before_ms);
        JobOptions {
            priority: self.priority.unwrap_or(defaults.default_priority),
            not_before_ms,
            max_retries: self.max_retries.unwrap_or(defaults.default_max_retries),
            backoff_base: base,
            backoff_cap: cap,
            attempt_timeout: self.attempt_timeout,
        }
    }
}

pub const MIN_PRIORITY: u8 = 1;
pub const MAX_PRIORITY: u8 = 10;
pub const MAX_RETRIES: u32 = 100;
/// Longest backoff or delay a client may ask for.
pub const MAX_WAIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// Delay before the retry that follows failure number `failures` (1 for the first failure):
/// `min(base * 2^(failures-1), cap)`, scaled by a jitter factor in `[0.8, 1.0]` so that a
/// burst of failures does not retry in lockstep. `unit` is a uniform random number in [0, 1).
pub fn backoff(base: Duration, cap: Duration, failures: u32, unit: f64) -> Duration {
    let exp = failures.saturating_sub(1).min(40);
    let raw = base.saturating_mul(1u32 << exp.min(31)).min(cap);
    let raw = if exp > 31 { cap } else { raw };
    raw.mul_f64(0.8 + 0.2 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::JobState::*;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn terminal_states_are_final() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
            if s.is_terminal() {
                for t in JobState::ALL {
                    assert!(!JobState::can_transition(s, t), "{s} -> {t}");
                }
            }
        }
        assert!(JobState::can_transition(Pending, Assigned));
        assert!(
            JobState::can_transition(Executing, Delayed),
            "retry after a failure"
        );
        assert!(
            !JobState::can_transition(Pending, Executing),
            "must be assigned first"
        );
        assert!(!JobState::can_transition(Delayed, Completed));
    }

    #[test]
    fn backoff_doubles_until_the_cap() {
        let (b, c) = (Duration::from_millis(1000), Duration::from_millis(60_000));
        assert_eq!(backoff(b, c, 1, 1.0), Duration::from_millis(1000));
        assert_eq!(backoff(b, c, 2, 1.0), Duration::from_millis(2000));
        assert_eq!(backoff(b, c, 4, 1.0), Duration::from_millis(8000));
        assert_eq!(backoff(b, c, 7, 1.0), Duration::from_millis(60_000));
        assert_eq!(backoff(b, c, 1000, 1.0), Duration::from_millis(60_000));
        assert_eq!(backoff(b, c, 1, 0.0), Duration::from_millis(800));
    }

    fn defaults() -> QueueConfig {
        QueueConfig {
            concurrency: 5,
            default_priority: 5,
            default_max_retries: 3,
            default_backoff_base: Duration::from_millis(1000),
            default_backoff_cap: Duration::from_millis(60_000),
            lease: Duration::from_secs(15),
            retain_finished: Duration::from_secs(3600),
            retain_finished_max: 100,
        }
    }

    #[test]
    fn options_resolve_against_the_defaults() {
        let d = defaults();
        let o = RequestedOptions::default().resolve(&d, 1000);
        assert_eq!((o.priority, o.max_retries, o.not_before_ms), (5, 3, None));
        let ms = Duration::from_millis;
        let lone_cap = RequestedOptions {
            backoff_cap: Some(ms(200)),
            ..Default::default()
        };
        let o = lone_cap.resolve(&d, 0);
        assert_eq!((o.backoff_base, o.backoff_cap), (ms(200), ms(200)));
        let lone_base = RequestedOptions {
            backoff_base: Some(ms(90_000)),
            ..Default::default()
        };
        let o = lone_base.resolve(&d, 0);
        assert_eq!((o.backoff_base, o.backoff_cap), (ms(90_000), ms(90_000)));
        let delayed = RequestedOptions {
            delay: Some(ms(500)),
            ..Default::default()
        };
        assert_eq!(delayed.resolve(&d, 1000).not_before_ms, Some(1500));
    }

    proptest! {
        #[test]
        fn backoff_stays_within_jittered_bounds(base in 1u64..10_000, cap in 1u64..100_000, n in 1u32..200, unit in 0.0f64..1.0) {
            let (b, c) = (Duration::from_millis(base), Duration::from_millis(cap));
            let d = backoff(b, c, n, unit);
            let ideal = (base as u128 * (1u128 << (n - 1).min(60))).min(cap as u128) as f64;
            prop_assert!(d.as_secs_f64() * 1000.0 <= ideal + 1e-6);
            prop_assert!(d.as_secs_f64() * 1000.0 >= ideal * 0.8 - 1e-6);
        }
    }
}
