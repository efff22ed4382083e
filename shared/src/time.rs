//! Wall-clock time as the protocol carries it: unix milliseconds.
//!
//! Validity windows and recorded timestamps use the wall clock because they cross machines;
//! waits and timeouts inside one process use `tokio::time` (monotonic) and never this.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the unix epoch, now.
pub fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}
