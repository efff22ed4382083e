//! The hub's durable state in its own Valkey: the event log that clients watch, each spoke's
//! upstream cursor, and the latest state of every job it has heard of (for snapshots).
//!
//! Events from a spoke are appended together with that spoke's new cursor and the jobs'
//! snapshots, in one script that first checks the cursor it replaces: so a hub restart
//! resumes each spoke exactly where the log stops, nothing is appended twice, and a snapshot
//! never disagrees with the log. The log's entry ids are the hub's cursors. Key names are
//! built here and nowhere else; they share one hash tag. This module decides no policy.

use std::collections::HashMap;
use std::time::Duration;

use mosaic_shared::ids::{HubId, SpokeId};
use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::stream::{EntryId, TRIM_SCRIPT};
use mosaic_shared::valkey::{Connection, Purpose, Target};
use prost::Message as _;
use redis::Script;

/// Most entries read from the log per call.
pub const READ_BATCH: usize = 512;
/// Most entries one retention call removes by count.
const TRIM_BATCH: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the hub's {0}")]
    Unreachable(#[from] mosaic_shared::valkey::Unreachable),
    #[error("valkey: {0}")]
    Valkey(redis::RedisError),
    #[error("record {key} is corrupt: {reason}")]
    Corrupt { key: String, reason: String },
}

/// Every failed call to the hub's Valkey (`mosaic_hub_valkey_errors_total`): counted where a
/// Valkey error becomes a [`StoreError`], which every store call goes through.
pub static VALKEY_ERRORS: std::sync::LazyLock<prometheus_client::metrics::counter::Counter> =
    std::sync::LazyLock::new(Default::default);

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        VALKEY_ERRORS.inc();
        StoreError::Valkey(e)
    }
}

const APPEND: &str = r"
-- KEYS: log, this spoke's cursor, job snapshots, finished jobs
-- ARGV: spoke, expected cursor ('' for none), new cursor, event count, then per event:
--       workspace, job, type, encoded event; then per job: job, encoded snapshot, finished_at
--       ('' while active)
-- Returns 0, changing nothing, if the spoke's cursor is not the expected one.
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return 0 end
local n = tonumber(ARGV[4])
local i = 5
for _ = 1, n do
  redis.call('XADD', KEYS[1], '*', 'spoke', ARGV[1], 'ws', ARGV[i], 'job', ARGV[i + 1],
    'type', ARGV[i + 2], 'ev', ARGV[i + 3])
  i = i + 4
end
while i <= #ARGV do
  redis.call('HSET', KEYS[3], ARGV[i], ARGV[i + 1])
  if ARGV[i + 2] ~= '' then
    redis.call('ZADD', KEYS[4], ARGV[i + 2], ARGV[i])
  end
  i = i + 3
end
redis.call('SET', KEYS[2], ARGV[3])
return 1
";

const GAP: &str = r"
-- KEYS: log, this spoke's cursor
-- ARGV: spoke, expected cursor, new cursor ('' to start over)
-- Records that events of a spoke were lost (its stream no longer holds what the hub had
-- not read), and moves its cursor.
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[2] then return 0 end
redis.call('XADD', KEYS[1], '*', 'spoke', ARGV[1], 'gap', '1')
if ARGV[3] == '' then redis.call('DEL', KEYS[2]) else redis.call('SET', KEYS[2], ARGV[3]) end
return 1
";

const FORGET_FINISHED: &str = r"
-- KEYS: job snapshots, finished jobs
-- ARGV: finished before (ms), most finished jobs kept
local old = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[1], 'LIMIT', 0, 1000)
local excess = redis.call('ZCARD', KEYS[2]) - #old - tonumber(ARGV[2])
if excess > 0 then
  for _, j in ipairs(redis.call('ZRANGE', KEYS[2], #old, #old + math.min(excess, 1000) - 1)) do
    old[#old + 1] = j
  end
end
if #old == 0 then return 0 end
redis.call('HDEL', KEYS[1], unpack(old))
redis.call('ZREM', KEYS[2], unpack(old))
return #old
";

/// One item of the hub's log.
#[derive(Debug, Clone)]
pub struct LogItem {
    pub id: EntryId,
    pub spoke: String,
    pub kind: LogKind,
}

#[derive(Debug, Clone)]
pub enum LogKind {
    Event(Box<pb::Event>),
    /// Events of `spoke` were lost between it and the hub: watchers must resynchronise.
    Gap,
}

#[derive(Clone)]
pub struct HubStore {
    con: Connection,
    /// For connections of their own (blocking log reads).
    target: Target,
    prefix: String,
    append: Script,
    gap: Script,
    trim: Script,
    forget: Script,
}

impl HubStore {
    pub async fn connect(target: &Target, hub: &HubId) -> Result<Self, StoreError> {
        let con = target.connect(Purpose::Shared).await?;
        Ok(HubStore {
            con,
            target: target.clone(),
            prefix: format!("mosaic:{{hub-{hub}}}:"),
            append: Script::new(APPEND),
            gap: Script::new(GAP),
            trim: Script::new(TRIM_SCRIPT),
            forget: Script::new(FORGET_FINISHED),
        })
    }

    fn log(&self) -> String {
        format!("{}log", self.prefix)
    }
    fn log_trimmed(&self) -> String {
        format!("{}log:trimmed", self.prefix)
    }
    fn cursor(&self, spoke: &SpokeId) -> String {
        format!("{}upstream:{spoke}", self.prefix)
    }
    fn jobs(&self) -> String {
        format!("{}jobs", self.prefix)
    }
    fn finished(&self) -> String {
        format!("{}jobs:finished", self.prefix)
    }

    /// The audit trail's keys (see `audit`): its index, its records, where the hub placed
    /// jobs, and the link from a command to the job it placed.
    pub fn audit_keys(&self) -> [String; 4] {
        ["audit", "audit:records", "placed", "placed:by-command"]
            .map(|k| format!("{}{k}", self.prefix))
    }

    /// Whether the hub's Valkey answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let _: String = redis::cmd("PING").query_async(&mut con).await?;
        Ok(())
    }

    /// A handle on the hub's Valkey connection (multiplexed; cloning is cheap).
    pub fn connection(&self) -> Connection {
        self.con.clone()
    }

    /// Where the hub stopped reading `spoke`'s events (`None`: it never read any).
    pub async fn spoke_cursor(&self, spoke: &SpokeId) -> Result<Option<String>, StoreError> {
        let mut con = self.con.clone();
        Ok(redis::cmd("GET")
            .arg(self.cursor(spoke))
            .query_async(&mut con)
            .await?)
    }

    /// The snapshots of the jobs named, as stored (absent ones are `None`).
    pub async fn snapshots(
        &self,
        jobs: &[&str],
    ) -> Result<HashMap<String, admin::JobSnapshot>, StoreError> {
        if jobs.is_empty() {
            return Ok(HashMap::new());
        }
        let mut con = self.con.clone();
        let raw: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
            .arg(self.jobs())
            .arg(jobs)
            .query_async(&mut con)
            .await?;
        let mut out = HashMap::new();
        for (job, bytes) in jobs.iter().zip(raw) {
            if let Some(b) = bytes {
                out.insert(job.to_string(), self.decode_snapshot(&b)?);
            }
        }
        Ok(out)
    }

    fn decode_snapshot(&self, b: &[u8]) -> Result<admin::JobSnapshot, StoreError> {
        admin::JobSnapshot::decode(b).map_err(|e| StoreError::Corrupt {
            key: self.jobs(),
            reason: e.to_string(),
        })
    }

    /// Appends `events` (in order) from `spoke` with the jobs' new snapshots, and moves the
    /// spoke's cursor from `expected` to the last event's. `false`, changing nothing, if the
    /// cursor was not `expected` (another upstream moved it).
    pub async fn append(
        &self,
        spoke: &SpokeId,
        expected: Option<&str>,
        events: &[pb::Event],
        snapshots: &[(admin::JobSnapshot, Option<i64>)],
    ) -> Result<bool, StoreError> {
        let Some(last) = events.last() else {
            return Ok(true);
        };
        let mut con = self.con.clone();
        let mut inv = self.append.prepare_invoke();
        inv.key(self.log())
            .key(self.cursor(spoke))
            .key(self.jobs())
            .key(self.finished())
            .arg(spoke.as_str())
            .arg(expected.unwrap_or(""))
            .arg(&last.cursor)
            .arg(events.len());
        for e in events {
            inv.arg(&e.workspace)
                .arg(&e.job_id)
                .arg(e.r#type)
                .arg(e.encode_to_vec());
        }
        for (snap, finished) in snapshots {
            inv.arg(&snap.job_id)
                .arg(snap.encode_to_vec())
                .arg(finished.map(|t| t.to_string()).unwrap_or_default());
        }
        let applied: i64 = inv.invoke_async(&mut con).await?;
        Ok(applied == 1)
    }

    /// Records that `spoke`'s events after `expected` were lost, and restarts its cursor.
    pub async fn record_gap(
        &self,
        spoke: &SpokeId,
        expected: Option<&str>,
    ) -> Result<bool, StoreError> {
        let mut con = self.con.clone();
        let applied: i64 = self
            .gap
            .key(self.log())
            .key(self.cursor(spoke))
            .arg(spoke.as_str())
            .arg(expected.unwrap_or(""))
            .arg("")
            .invoke_async(&mut con)
            .await?;
        Ok(applied == 1)
    }

    /// Every job snapshot and the log position they are current at, read atomically.
    pub async fn snapshot_all(
        &self,
    ) -> Result<(Vec<admin::JobSnapshot>, Option<EntryId>), StoreError> {
        let mut con = self.con.clone();
        let (jobs, last): (HashMap<String, Vec<u8>>, Newest) = redis::pipe()
            .atomic()
            .cmd("HGETALL")
            .arg(self.jobs())
            .add_command(self.newest())
            .query_async(&mut con)
            .await?;
        let snaps = jobs
            .values()
            .map(|b| self.decode_snapshot(b))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((snaps, self.newest_id(&last)?))
    }

    /// The command that reads the log's newest entry.
    fn newest(&self) -> redis::Cmd {
        let mut cmd = redis::cmd("XREVRANGE");
        cmd.arg(self.log()).arg("+").arg("-").arg("COUNT").arg(1);
        cmd
    }

    fn newest_id(&self, reply: &Newest) -> Result<Option<EntryId>, StoreError> {
        reply.first().map(|(id, _)| self.parse_id(id)).transpose()
    }

    fn parse_id(&self, id: &str) -> Result<EntryId, StoreError> {
        id.parse().map_err(|reason| StoreError::Corrupt {
            key: self.log(),
            reason,
        })
    }

    /// The newest entry of the log, if any.
    pub async fn last_id(&self) -> Result<Option<EntryId>, StoreError> {
        let mut con = self.con.clone();
        let last: Newest = self.newest().query_async(&mut con).await?;
        self.newest_id(&last)
    }

    /// Applies retention to the log and to finished jobs' snapshots. Returns how many log
    /// entries were removed.
    pub async fn trim(&self, now_ms: i64, retain: Duration, max: u64) -> Result<u64, StoreError> {
        let mut con = self.con.clone();
        let oldest_kept = now_ms.saturating_sub(i64::try_from(retain.as_millis()).unwrap_or(0));
        let mut removed = 0;
        for _ in 0..20 {
            let n: u64 = self
                .trim
                .key(self.log())
                .key(self.log_trimmed())
                .arg(max)
                .arg(format!("{}-0", oldest_kept.max(0)))
                .arg(TRIM_BATCH)
                .invoke_async(&mut con)
                .await?;
            removed += n;
            if n < TRIM_BATCH as u64 {
                break;
            }
        }
        let _: i64 = self
            .forget
            .key(self.jobs())
            .key(self.finished())
            .arg(oldest_kept)
            .arg(max)
            .invoke_async(&mut con)
            .await?;
        Ok(removed)
    }

    /// A reader of the log with a connection of its own (its blocking reads hold up no one).
    pub async fn log_reader(&self) -> Result<LogReader, StoreError> {
        Ok(LogReader {
            con: self.target.connect(Purpose::Blocking).await?,
            log: self.log(),
            trimmed: self.log_trimmed(),
        })
    }
}

type RawEntry = (String, HashMap<String, Vec<u8>>);
/// A log entry whose fields are not read.
type Newest = Vec<(String, HashMap<String, redis::Value>)>;

/// Reads the hub's log in order.
pub struct LogReader {
    con: Connection,
    log: String,
    trimmed: String,
}

impl LogReader {
    /// Items after `after` (`None`: from the oldest), at most [`READ_BATCH`]; if there are
    /// none and `block` is set, waits up to that long for new ones.
    pub async fn read(
        &mut self,
        after: Option<EntryId>,
        block: Option<Duration>,
    ) -> Result<Vec<LogItem>, StoreError> {
        let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
        let mut raw: Vec<RawEntry> = redis::cmd("XRANGE")
            .arg(&self.log)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(READ_BATCH)
            .query_async(&mut self.con)
            .await?;
        if raw.is_empty()
            && let Some(block) = block
        {
            let from = after.map_or_else(|| "0-0".to_owned(), |id| id.to_string());
            let reply: Option<Vec<(String, Vec<RawEntry>)>> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
                .arg("STREAMS")
                .arg(&self.log)
                .arg(from)
                .query_async(&mut self.con)
                .await?;
            raw = reply
                .into_iter()
                .flatten()
                .flat_map(|(_, entries)| entries)
                .collect();
        }
        raw.into_iter().map(|e| self.item(e)).collect()
    }

    fn item(&self, (id, fields): RawEntry) -> Result<LogItem, StoreError> {
        let corrupt = |reason: String| StoreError::Corrupt {
            key: self.log.clone(),
            reason,
        };
        let id: EntryId = id.parse().map_err(corrupt)?;
        let spoke = fields
            .get("spoke")
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default();
        let kind = if fields.contains_key("gap") {
            LogKind::Gap
        } else {
            let bytes = fields
                .get("ev")
                .ok_or_else(|| corrupt(format!("entry {id} has no event")))?;
            LogKind::Event(Box::new(
                pb::Event::decode(bytes.as_slice())
                    .map_err(|e| corrupt(format!("entry {id}: {e}")))?,
            ))
        };
        Ok(LogItem { id, spoke, kind })
    }

    /// The newest entry retention has removed, if any.
    pub async fn trimmed(&mut self) -> Result<Option<EntryId>, StoreError> {
        let v: Option<String> = redis::cmd("GET")
            .arg(&self.trimmed)
            .query_async(&mut self.con)
            .await?;
        v.map(|s| {
            s.parse().map_err(|reason| StoreError::Corrupt {
                key: self.trimmed.clone(),
                reason,
            })
        })
        .transpose()
    }
}
