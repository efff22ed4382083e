//! The audit trail: every command the hub signed, as signed, with the receipt the spoke signed,
//! in the hub's own Valkey, bounded by count and age. It doubles as the record of client
//! request ids (a record's command id is derived from one), which makes Spawn and Kill
//! idempotent across hub restarts, and of where the hub placed each job.
//!
//! A record is written before its command is sent (`pending`) and completed with the answer,
//! so a hub that dies in between leaves a record that says so, and a retry of the same request
//! resends the same command id rather than a new one. [`verify`] checks a record against the
//! hub's key and the spoke's receipt key; the server runs it when listing, and the CLI can run
//! it again with keys of its own.

use std::collections::HashMap;
use std::time::Duration;

use mosaic_shared::ids::{CommandId, JobId, SpokeId, WorkspaceId};
use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::{Domain, PublicKey};
use mosaic_shared::valkey::Connection;
use prost::Message as _;
use redis::Script;

use crate::store::{HubStore, StoreError};

/// What became of a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Sent; no answer recorded (yet).
    Pending,
    /// A verified receipt.
    Ok,
    /// The spoke refused it.
    Refused,
    /// No answer: unreachable, timed out, or a receipt that did not verify.
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Ok => "ok",
            Outcome::Refused => "refused",
            Outcome::Failed => "failed",
        }
    }
}

const BEGIN: &str = r"
-- KEYS: index, records, placed, placed-by-command
-- ARGV: index member, command id, encoded record, job ('' none), placement ('' none)
-- Records a command about to be sent; 0, changing nothing, if the command id has a record.
if redis.call('HEXISTS', KEYS[2], ARGV[2]) == 1 then return 0 end
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
if ARGV[4] ~= '' then
  redis.call('HSET', KEYS[3], ARGV[4], ARGV[5])
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[4])
end
return 1
";

const UPDATE: &str = r"
-- KEYS: records
-- ARGV: command id, encoded record
-- Replaces a record that still exists (retention may have removed it meanwhile).
if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
";

const TRIM: &str = r"
-- KEYS: index, records, placed, placed-by-command
-- ARGV: oldest member kept (exclusive bound, e.g. '(0001700000000000'), most records kept
-- Removes at most 1000 records that are too old or over the count, and their placements.
local old = redis.call('ZRANGE', KEYS[1], '-', ARGV[1], 'BYLEX', 'LIMIT', 0, 1000)
local excess = redis.call('ZCARD', KEYS[1]) - #old - tonumber(ARGV[2])
if excess > 0 then
  for _, m in ipairs(redis.call('ZRANGE', KEYS[1], #old, #old + math.min(excess, 1000) - 1)) do
    old[#old + 1] = m
  end
end
if #old == 0 then return 0 end
local ids = {}
for i, m in ipairs(old) do ids[i] = string.sub(m, 18) end
local jobs = {}
for i, raw in ipairs(redis.call('HMGET', KEYS[2], unpack(ids))) do
  if raw then
    local job = redis.call('HGET', KEYS[4], ids[i])
    if job then jobs[#jobs + 1] = job end
  end
end
redis.call('HDEL', KEYS[2], unpack(ids))
if #jobs > 0 then redis.call('HDEL', KEYS[3], unpack(jobs)) end
redis.call('HDEL', KEYS[4], unpack(ids))
redis.call('ZREM', KEYS[1], unpack(old))
return #old
";

/// The index member of a record: its time, fixed width so that lexical order is time order,
/// then its command id (the 17th character on).
fn member(at_ms: i64, command: &str) -> String {
    format!("{:016}:{command}", at_ms.max(0))
}

/// Where the hub placed a job: its spoke and workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub spoke: SpokeId,
    pub workspace: WorkspaceId,
}

#[derive(Clone)]
pub struct AuditStore {
    con: Connection,
    index: String,
    records: String,
    placed: String,
    placed_by_command: String,
    begin: Script,
    update: Script,
    trim: Script,
}

/// One page of records, newest first.
pub struct Page {
    pub records: Vec<admin::AuditRecord>,
    /// Pass back to continue; `None`: no more.
    pub next: Option<String>,
}

/// Most records one listing reads from Valkey, however many its filter drops.
const SCAN_LIMIT: usize = 5_000;

impl AuditStore {
    pub fn new(store: &HubStore) -> Self {
        let [index, records, placed, placed_by_command] = store.audit_keys();
        AuditStore {
            con: store.connection(),
            index,
            records,
            placed,
            placed_by_command,
            begin: Script::new(BEGIN),
            update: Script::new(UPDATE),
            trim: Script::new(TRIM),
        }
    }

    /// The record of `command`, if the hub still has it.
    pub async fn get(&self, command: &CommandId) -> Result<Option<admin::AuditRecord>, StoreError> {
        let mut con = self.con.clone();
        let raw: Option<Vec<u8>> = redis::cmd("HGET")
            .arg(&self.records)
            .arg(command.as_str())
            .query_async(&mut con)
            .await?;
        raw.map(|b| self.decode(&b)).transpose()
    }

    fn decode(&self, b: &[u8]) -> Result<admin::AuditRecord, StoreError> {
        admin::AuditRecord::decode(b).map_err(|e| StoreError::Corrupt {
            key: self.records.clone(),
            reason: e.to_string(),
        })
    }

    /// Records a command before it is sent, and where its job goes (spawn). `false`, changing
    /// nothing, if its command id already has a record.
    pub async fn begin(
        &self,
        record: &admin::AuditRecord,
        placement: Option<(&JobId, &Placement)>,
    ) -> Result<bool, StoreError> {
        let mut con = self.con.clone();
        let mut inv = self.begin.prepare_invoke();
        inv.key(&self.index)
            .key(&self.records)
            .key(&self.placed)
            .key(&self.placed_by_command)
            .arg(member(record.at_ms, &record.command_id))
            .arg(&record.command_id)
            .arg(record.encode_to_vec());
        match placement {
            Some((job, p)) => inv
                .arg(job.as_str())
                .arg(format!("{}\n{}", p.spoke, p.workspace)),
            None => inv.arg("").arg(""),
        };
        let done: i64 = inv.invoke_async(&mut con).await?;
        Ok(done == 1)
    }

    /// Replaces a record (its answer, or the envelope of a resend).
    pub async fn update(&self, record: &admin::AuditRecord) -> Result<(), StoreError> {
        let mut con = self.con.clone();
        let _: i64 = self
            .update
            .key(&self.records)
            .arg(&record.command_id)
            .arg(record.encode_to_vec())
            .invoke_async(&mut con)
            .await?;
        Ok(())
    }

    /// Where the hub placed `job`, if it did (and still remembers).
    pub async fn placement(&self, job: &JobId) -> Result<Option<Placement>, StoreError> {
        let mut con = self.con.clone();
        let raw: Option<String> = redis::cmd("HGET")
            .arg(&self.placed)
            .arg(job.as_str())
            .query_async(&mut con)
            .await?;
        let corrupt = |reason: &str| StoreError::Corrupt {
            key: self.placed.clone(),
            reason: format!("{job}: {reason}"),
        };
        raw.map(|v| {
            let (s, w) = v.split_once('\n').ok_or_else(|| corrupt("no separator"))?;
            Ok(Placement {
                spoke: s.parse().map_err(|_| corrupt("bad spoke id"))?,
                workspace: w.parse().map_err(|_| corrupt("bad workspace"))?,
            })
        })
        .transpose()
    }

    /// Records newest first, from `after` (a page token) on, that `keep` accepts: at most
    /// `limit`, reading at most [`SCAN_LIMIT`] records, so a page may hold fewer when the
    /// filter drops many; `next` says whether to go on.
    pub async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
        keep: impl Fn(&admin::AuditRecord) -> bool,
    ) -> Result<Page, StoreError> {
        let mut con = self.con.clone();
        let mut bound = match after {
            Some(t) => format!("({t}"),
            None => "+".to_owned(),
        };
        let mut records = Vec::new();
        let mut scanned = 0;
        loop {
            let batch = (limit - records.len()).clamp(16, 500);
            let members: Vec<String> = redis::cmd("ZRANGE")
                .arg(&self.index)
                .arg(&bound)
                .arg("-")
                .arg("BYLEX")
                .arg("REV")
                .arg("LIMIT")
                .arg(0)
                .arg(batch)
                .query_async(&mut con)
                .await?;
            let Some(last) = members.last() else {
                return Ok(Page {
                    records,
                    next: None,
                });
            };
            bound = format!("({last}");
            let ids: Vec<&str> = members.iter().map(|m| m.get(17..).unwrap_or("")).collect();
            let raw: Vec<Option<Vec<u8>>> = redis::cmd("HMGET")
                .arg(&self.records)
                .arg(&ids)
                .query_async(&mut con)
                .await?;
            for (m, r) in members.iter().zip(raw) {
                scanned += 1;
                if let Some(r) = r {
                    let r = self.decode(&r)?;
                    if keep(&r) {
                        records.push(r);
                    }
                }
                if records.len() == limit || scanned >= SCAN_LIMIT {
                    return Ok(Page {
                        records,
                        next: Some(m.clone()),
                    });
                }
            }
            if members.len() < batch {
                return Ok(Page {
                    records,
                    next: None,
                });
            }
        }
    }

    /// Removes records older than `retain` or beyond the newest `max`, with their
    /// placements; returns how many.
    pub async fn trim(&self, now_ms: i64, retain: Duration, max: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms - retain.as_millis() as i64;
        let mut con = self.con.clone();
        let mut removed = 0;
        loop {
            let n: u64 = self
                .trim
                .key(&self.index)
                .key(&self.records)
                .key(&self.placed)
                .key(&self.placed_by_command)
                .arg(format!("({:016}", cutoff.max(0)))
                .arg(max)
                .invoke_async(&mut con)
                .await?;
            removed += n;
            if n < 1000 {
                return Ok(removed);
            }
        }
    }
}

/// Checks a record: the command's signature with the hub's key, and that it is the command
/// the record says; the receipt's (if any) with the spoke's receipt key, and that it answers
/// this command from that spoke. `Err` says what does not hold.
pub fn verify(
    record: &admin::AuditRecord,
    hub_keys: &HashMap<String, PublicKey>,
    spoke_keys: &HashMap<String, PublicKey>,
) -> Result<(), String> {
    let signed = record
        .command
        .as_ref()
        .ok_or("the record holds no command")?;
    let hub_key = hub_keys.get(&signed.key_id).ok_or_else(|| {
        format!(
            "signed with key {}, which is not a known hub key",
            signed.key_id
        )
    })?;
    hub_key
        .verify(Domain::Command, &signed.command, &signed.signature)
        .map_err(|e| format!("the command's signature: {e}"))?;
    let command = pb::Command::decode(signed.command.as_slice())
        .map_err(|e| format!("the command does not decode: {e}"))?;
    if command.command_id != record.command_id || command.spoke_id != record.spoke_id {
        return Err(format!(
            "the signed command is {} for spoke {}, not what the record says",
            command.command_id, command.spoke_id
        ));
    }
    let Some(receipt) = &record.receipt else {
        return if record.outcome == Outcome::Ok.as_str() {
            Err("the outcome is ok but the record holds no receipt".into())
        } else {
            Ok(())
        };
    };
    let spoke_key = spoke_keys.get(&record.spoke_id).ok_or_else(|| {
        format!(
            "spoke {} has no configured receipt key to check with",
            record.spoke_id
        )
    })?;
    if receipt.key_id != spoke_key.id().as_str() {
        return Err(format!(
            "the receipt is signed with key {}, not spoke {}'s key {}",
            receipt.key_id,
            record.spoke_id,
            spoke_key.id()
        ));
    }
    spoke_key
        .verify(Domain::Receipt, &receipt.receipt, &receipt.signature)
        .map_err(|e| format!("the receipt's signature: {e}"))?;
    let r = pb::Receipt::decode(receipt.receipt.as_slice())
        .map_err(|e| format!("the receipt does not decode: {e}"))?;
    if r.command_id != record.command_id || r.spoke_id != record.spoke_id {
        return Err(format!(
            "the receipt answers command {} from spoke {}",
            r.command_id, r.spoke_id
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_shared::ids::HubId;
    use mosaic_shared::signing::KeyPair;

    fn signed_pair() -> (admin::AuditRecord, PublicKey, KeyPair) {
        let spoke = KeyPair::generate();
        let signer = crate::sign::Signer::new(
            "hub".parse::<HubId>().unwrap(),
            KeyPair::generate(),
            Duration::from_secs(60),
        );
        let id = CommandId::generate();
        let command = signer.seal(
            &id,
            &"a".parse().unwrap(),
            pb::command::Action::QueueStats(pb::QueueStats {}),
            1,
        );
        let receipt = pb::Receipt {
            command_id: id.to_string(),
            spoke_id: "a".into(),
            hub_id: "hub".into(),
            key_id: spoke.id().to_string(),
            executed_at_ms: 2,
            result: Some(pb::receipt::Result::Queue(pb::QueueCounts::default())),
        }
        .encode_to_vec();
        let record = admin::AuditRecord {
            command_id: id.to_string(),
            spoke_id: "a".into(),
            outcome: "ok".into(),
            command: Some(command),
            receipt: Some(pb::SignedReceipt {
                signature: spoke.sign(Domain::Receipt, &receipt),
                receipt,
                key_id: spoke.id().to_string(),
            }),
            ..Default::default()
        };
        (record, signer.public(), spoke)
    }

    fn keys(k: PublicKey, name: &str) -> HashMap<String, PublicKey> {
        HashMap::from([(name.to_owned(), k)])
    }

    #[test]
    fn a_true_record_verifies_and_any_change_is_caught() {
        let (record, hub, spoke) = signed_pair();
        let hubs = keys(hub.clone(), hub.id().as_str());
        let spokes = keys(spoke.public(), "a");
        assert_eq!(verify(&record, &hubs, &spokes), Ok(()));

        let mut r = record.clone();
        r.command.as_mut().unwrap().command[3] ^= 1;
        assert!(
            verify(&r, &hubs, &spokes)
                .unwrap_err()
                .contains("command's signature")
        );

        let mut r = record.clone();
        r.receipt.as_mut().unwrap().receipt[3] ^= 1;
        assert!(
            verify(&r, &hubs, &spokes)
                .unwrap_err()
                .contains("receipt's signature")
        );

        let mut r = record.clone();
        r.command_id = CommandId::generate().to_string();
        assert!(
            verify(&r, &hubs, &spokes)
                .unwrap_err()
                .contains("not what the record says")
        );

        let other = KeyPair::generate();
        let err = verify(&record, &hubs, &keys(other.public(), "a")).unwrap_err();
        assert!(err.contains("not spoke a's key"), "{err}");
        let foreign = keys(other.public(), hub.id().as_str());
        assert!(
            verify(&record, &foreign, &spokes)
                .unwrap_err()
                .contains("command's signature")
        );

        let mut r = record;
        r.receipt = None;
        assert!(
            verify(&r, &hubs, &spokes)
                .unwrap_err()
                .contains("no receipt")
        );
        r.outcome = "failed".into();
        assert_eq!(verify(&r, &hubs, &spokes), Ok(()));
    }

    #[test]
    fn members_sort_by_time() {
        let a = member(999, "x");
        let b = member(1_000, "a");
        assert!(a < b);
        assert_eq!(&b[17..], "a");
    }
}
