//! The event stream in Valkey: appending what agents report, reading after a cursor, and
//! retention.
//!
//! Retention trims the stream here, not with `XADD MAXLEN`, so that it knows the newest entry
//! it removed and records it ([`Keys::events_trimmed`]): a reader whose cursor is older learns
//! that it missed events (`resync required`) instead of silently skipping them. Lifecycle
//! entries are written by the queue's scripts; this file writes only agents' reports, each
//! numbered in its job's `events` counter like the lifecycle entries.

use std::time::Duration;

use mosaic_shared::ids::{AgentId, JobId};
use redis::Script;

use super::{Store, StoreError};
use crate::events::{AgentEvent, Entry, EntryId};

/// Most entries read from the stream per call.
pub const READ_BATCH: usize = 256;
/// Most entries one retention call removes by count (removal by age has no batch: `XTRIM`
/// removes whole stream nodes cheaply).
const TRIM_BATCH: usize = 10_000;

const APPEND: &str = r"
-- KEYS: events
-- ARGV: [1-2] key layout (see the prelude), then per attempt: job id, agent id, attempt
--       number, event count, then per event: at_ms, kind, field count, fields...
-- Appends the events of attempts that are still their job's live attempt, numbering them in
-- the job's `events` counter. Returns, per attempt, 1 if written or 0 if the attempt is no
-- longer live (its events are dropped: its end was already recorded).
local out = {}
local i = 3
while i <= #ARGV do
  local id, agent, n, count = ARGV[i], ARGV[i + 1], ARGV[i + 2], tonumber(ARGV[i + 3])
  i = i + 4
  local job = job_key(id)
  local j = redis.call('HMGET', job, 'attempts', 'events', 'workspace', 'state', 'trace')
  local live = tonumber(j[1]) == tonumber(n) and (j[4] == 'assigned' or j[4] == 'executing')
  local seq = tonumber(j[2] or 0)
  for _ = 1, count do
    local at, kind, nfields = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
    i = i + 3
    if live then
      seq = seq + 1
      local e = {'kind', kind, 'job_id', id, 'workspace', j[3], 'agent_id', agent, 'seq', seq,
        'at_ms', at}
      for k = 0, nfields - 1 do e[#e + 1] = ARGV[i + k] end
      redis.call('XADD', KEYS[1], '*', unpack(traced(e, j[5])))
    end
    i = i + nfields
  end
  if live then
    if count > 0 then redis.call('HSET', job, 'events', seq) end
    out[#out + 1] = 1
  else
    out[#out + 1] = 0
  end
end
return out
";

/// What one attempt reported, in order, to append in one call with others.
#[derive(Debug, Clone)]
pub struct AttemptEvents {
    pub job: JobId,
    pub agent: AgentId,
    /// `(unix ms, event)`.
    pub events: Vec<(i64, AgentEvent)>,
}

#[derive(Clone)]
pub(super) struct EventScripts {
    append: Script,
    trim: Script,
}

impl EventScripts {
    pub(super) fn new(prelude: &str) -> Self {
        EventScripts {
            append: Script::new(&format!("{prelude}\n{APPEND}")),
            trim: Script::new(mosaic_shared::stream::TRIM_SCRIPT),
        }
    }
}

impl Store {
    /// Appends what attempts reported. Returns, per attempt, whether it was still live (the
    /// events of an attempt whose end is already written are dropped).
    pub async fn append_events(&self, batch: &[AttemptEvents]) -> Result<Vec<bool>, StoreError> {
        let mut con = self.con.clone();
        let mut inv = self.events_scripts.append.prepare_invoke();
        inv.key(self.keys.events());
        inv.arg(self.keys.job_prefix())
            .arg(super::keys::ATTEMPT_FIELD);
        for a in batch {
            let attempt = a
                .agent
                .attempt()
                .map(|(_, n)| n)
                .ok_or_else(|| StoreError::Corrupt {
                    key: self.keys.job(a.job.as_str()),
                    reason: format!("{} is not an attempt's id", a.agent),
                })?;
            let entries: Vec<_> = a
                .events
                .iter()
                .filter_map(|(at, e)| e.entry().map(|(kind, f)| (at, kind, f)))
                .collect();
            inv.arg(a.job.as_str())
                .arg(a.agent.as_str())
                .arg(attempt)
                .arg(entries.len());
            for (at, kind, fields) in entries {
                inv.arg(at).arg(kind).arg(fields.len() * 2);
                for (k, v) in fields {
                    inv.arg(k).arg(v);
                }
            }
        }
        let live: Vec<i64> = inv.invoke_async(&mut con).await?;
        Ok(live.into_iter().map(|l| l == 1).collect())
    }

    /// Applies retention: keeps at most `max` entries and none older than `retain`. Returns
    /// how many entries were removed.
    pub async fn trim_events(
        &self,
        now_ms: i64,
        retain: Duration,
        max: u64,
    ) -> Result<u64, StoreError> {
        let mut con = self.con.clone();
        let oldest_kept = now_ms.saturating_sub(i64::try_from(retain.as_millis()).unwrap_or(0));
        let mut removed = 0;
        // Removal by count is batched; a few calls catch up with a burst.
        for _ in 0..20 {
            let n: u64 = self
                .events_scripts
                .trim
                .key(self.keys.events())
                .key(self.keys.events_trimmed())
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
        Ok(removed)
    }

    /// A reader of the event stream with a connection of its own, so that its blocking reads
    /// never hold up the store's shared connection.
    pub async fn event_reader(&self) -> Result<EventReader, StoreError> {
        let con = self.target.connect(super::Purpose::Blocking).await?;
        Ok(EventReader {
            con,
            key: self.keys.events(),
            trimmed: self.keys.events_trimmed(),
        })
    }
}

/// Reads the event stream in order, for one subscriber.
pub struct EventReader {
    con: mosaic_shared::valkey::Connection,
    key: String,
    trimmed: String,
}

/// A stream entry as Valkey returns it: its id and its fields in order (an entry holds several
/// records, and a map would merge them).
pub(super) type RawEntry = (String, Vec<(String, String)>);

/// Parses entries read from the stream `key`, splitting each into its records.
pub(super) fn parse_entries(key: &str, raw: Vec<RawEntry>) -> Result<Vec<Entry>, StoreError> {
    raw.into_iter()
        .map(|(id, fields)| {
            let id = id.parse().map_err(|reason| StoreError::Corrupt {
                key: key.to_owned(),
                reason,
            })?;
            Ok(Entry::from_fields(id, fields))
        })
        .collect()
}

impl EventReader {
    /// Entries from `from` on (inclusive when `inclusive`), at most [`READ_BATCH`]; if there
    /// are none, waits up to `block` for new ones. `None` starts at the oldest retained.
    pub async fn read(
        &mut self,
        from: Option<EntryId>,
        inclusive: bool,
        block: Duration,
    ) -> Result<Vec<Entry>, StoreError> {
        let start = match from {
            None => "-".to_owned(),
            Some(id) if inclusive => id.to_string(),
            Some(id) => format!("({id}"),
        };
        let raw: Vec<RawEntry> = redis::cmd("XRANGE")
            .arg(&self.key)
            .arg(&start)
            .arg("+")
            .arg("COUNT")
            .arg(READ_BATCH)
            .query_async(&mut self.con)
            .await?;
        let raw = if raw.is_empty() {
            // XREAD waits for entries after an id; "0-0" is before every entry.
            let after = from.map_or_else(|| "0-0".to_owned(), |id| id.to_string());
            let reply: Option<Vec<(String, Vec<RawEntry>)>> = redis::cmd("XREAD")
                .arg("COUNT")
                .arg(READ_BATCH)
                .arg("BLOCK")
                .arg(u64::try_from(block.as_millis()).unwrap_or(u64::MAX).max(1))
                .arg("STREAMS")
                .arg(&self.key)
                .arg(after)
                .query_async(&mut self.con)
                .await?;
            reply
                .into_iter()
                .flatten()
                .flat_map(|(_, entries)| entries)
                .collect()
        } else {
            raw
        };
        parse_entries(&self.key, raw)
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
