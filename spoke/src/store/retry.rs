//! A Valkey connection that retries transient failures: a dropped or refused connection, a
//! timeout, or a server still loading its data after a restart.
//!
//! Wrapping the connection manager here retries every command, pipeline and script call the
//! store makes (including the script reload after `NOSCRIPT`) in one place. A retried command
//! may already have run once, so every script is written to be safe to repeat: a claim
//! recognises its own marker, dispatch recognises its own agent id, enqueue its own job id,
//! and the attempt and removal scripts treat "already done by me" as done.

use std::time::Duration;

use mosaic_shared::valkey::Connection;
use prometheus_client::metrics::counter::Counter;
use redis::aio::ConnectionLike;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

/// Delays between tries: about 3 s in all, enough for a Valkey restart and a small AOF load.
const DELAYS_MS: [u64; 6] = [50, 100, 200, 400, 800, 1600];

#[derive(Clone)]
pub(super) struct Retrying {
    pub(super) con: Connection,
    /// Every failed call, retried or not (`mosaic_spoke_valkey_errors_total`).
    pub(super) errors: Counter,
}

/// Whether a failure says nothing about the command itself and a new try may succeed.
fn transient(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            redis::ErrorKind::Server(
                redis::ServerErrorKind::BusyLoading | redis::ServerErrorKind::TryAgain
            )
        )
}

impl Retrying {
    fn count<T>(&self, r: Result<T, RedisError>) -> Result<T, RedisError> {
        if r.is_err() {
            self.errors.inc();
        }
        r
    }
}

impl ConnectionLike for Retrying {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            for delay in DELAYS_MS {
                let r = self.con.req_packed_command(cmd).await;
                match self.count(r) {
                    Err(e) if transient(&e) => {
                        tracing::debug!(error = %e, delay_ms = delay, "valkey command failed; retrying");
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    other => return other,
                }
            }
            let last = self.con.req_packed_command(cmd).await;
            self.count(last)
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            for delay in DELAYS_MS {
                let r = self.con.req_packed_commands(pipeline, offset, count).await;
                match self.count(r) {
                    Err(e) if transient(&e) => {
                        tracing::debug!(error = %e, delay_ms = delay, "valkey pipeline failed; retrying");
                        tokio::time::sleep(Duration::from_millis(delay)).await;
                    }
                    other => return other,
                }
            }
            let last = self.con.req_packed_commands(pipeline, offset, count).await;
            self.count(last)
        })
    }

    fn get_db(&self) -> i64 {
        self.con.get_db()
    }
}
