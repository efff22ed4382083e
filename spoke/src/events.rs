//! Events: the closed set of what an agent reports while it runs ([`AgentEvent`]), how it is
//! written into a stream entry, how stream entries become `mosaic.federation.v1.Event`s, and
//! the cursors that name them.
//!
//! Lifecycle events are appended by the queue's transition scripts in the same step as the
//! change (`store::queue`); what agents report is appended by `store` as it arrives. A
//! script writes one entry per call, with one record per job it moved ([`Entry`]), and a record
//! stands for one to three events ([`expand`]): an attempt's end is also its job's change.
//! Those scripts count each record's events into its job's `events` field,
//! so every event of a job has its own number (`seq`) with no gaps. The counts there and here
//! must agree; the integration tests check that they do. This module owns the types and the
//! mapping; it never talks to Valkey or reads a process.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

use mosaic_shared::pb::federation::v1 as pb;
pub use mosaic_shared::stream::EntryId;

/// Which of an agent's output streams something came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// Something an agent reported while it ran: its output, or a structured event it printed
/// (see `output`'s line format and `claude`'s mapping). Every string is already cut to the
/// limits below.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentEvent {
    /// Lines of output. `text` holds whole lines joined by `\n` (no final newline), or one
    /// piece of a line longer than [`MAX_OUTPUT_BYTES`] (`partial` is set on every piece but
    /// the last).
    Output {
        stream: OutputStream,
        /// The step the agent last started and has not ended, or empty.
        step: String,
        text: String,
        lines: u32,
        partial: bool,
        /// What was dropped since the previous output event of this attempt because the
        /// agent wrote faster than its budget allows.
        dropped_lines: u64,
        dropped_bytes: u64,
    },
    /// The attempt's overall progress.
    Progress {
        percent: u8,
        message: String,
    },
    /// A free-form status line for the job.
    Status {
        message: String,
    },
    StepStarted {
        step: String,
    },
    StepProgress {
        step: String,
        percent: u8,
        message: String,
    },
    StepCompleted {
        step: String,
    },
    StepFailed {
        step: String,
        error: String,
    },
    ToolCalled {
        tool: String,
        /// The agent's id for the call, or empty.
        call_id: String,
        /// The call's input as JSON, cut to [`MAX_TOOL_INPUT_BYTES`].
        input_json: String,
    },
    TokensUsed {
        model: String,
        input: u64,
        output: u64,
        cache_creation_input: u64,
        cache_read_input: u64,
    },
    /// The agent names a file it produced, relative to its working directory; the spoke
    /// computes its digest before the event is stored ([`AgentEvent::ArtifactCreated`]).
    ArtifactReported {
        path: String,
    },
    ArtifactCreated {
        path: String,
        /// `sha256:<hex>` of the content.
        digest: String,
        size_bytes: u64,
    },
    GateStarted {
        gate: String,
    },
    GatePassed {
        gate: String,
        message: String,
    },
    GateFailed {
        gate: String,
        message: String,
    },
}

/// Longest output text in one event (bytes); longer lines arrive in pieces.
pub const MAX_OUTPUT_BYTES: usize = 8 * 1024;
/// Longest message, error, step, gate, tool or model name (bytes).
pub const MAX_TEXT_BYTES: usize = 1024;
/// Longest tool-call input kept (bytes of JSON).
pub const MAX_TOOL_INPUT_BYTES: usize = 4 * 1024;

/// `s` cut to at most `max` bytes at a character boundary.
pub fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

impl AgentEvent {
    /// The stream entry's kind and fields (besides the ids, `seq` and time, which the store
    /// adds). `ArtifactReported` has no entry: the spoke turns it into `ArtifactCreated`.
    pub fn entry(&self) -> Option<(&'static str, Vec<(&'static str, String)>)> {
        Some(match self {
            AgentEvent::Output {
                stream,
                step,
                text,
                lines,
                partial,
                dropped_lines,
                dropped_bytes,
            } => {
                let mut f = vec![
                    ("stream", stream.as_str().to_owned()),
                    ("text", text.clone()),
                    ("lines", lines.to_string()),
                ];
                if !step.is_empty() {
                    f.push(("step", step.clone()));
                }
                if *partial {
                    f.push(("partial", "1".to_owned()));
                }
                if *dropped_lines > 0 || *dropped_bytes > 0 {
                    f.push(("dropped_lines", dropped_lines.to_string()));
                    f.push(("dropped_bytes", dropped_bytes.to_string()));
                }
                ("step.output", f)
            }
            AgentEvent::Progress { percent, message } => (
                "job.progress",
                vec![
                    ("percent", percent.to_string()),
                    ("message", message.clone()),
                ],
            ),
            AgentEvent::Status { message } => ("job.status", vec![("message", message.clone())]),
            AgentEvent::StepStarted { step } => ("step.started", vec![("step", step.clone())]),
            AgentEvent::StepProgress {
                step,
                percent,
                message,
            } => (
                "step.progress",
                vec![
                    ("step", step.clone()),
                    ("percent", percent.to_string()),
                    ("message", message.clone()),
                ],
            ),
            AgentEvent::StepCompleted { step } => ("step.completed", vec![("step", step.clone())]),
            AgentEvent::StepFailed { step, error } => (
                "step.failed",
                vec![("step", step.clone()), ("error", error.clone())],
            ),
            AgentEvent::ToolCalled {
                tool,
                call_id,
                input_json,
            } => (
                "ai.tool_called",
                vec![
                    ("tool", tool.clone()),
                    ("call_id", call_id.clone()),
                    ("input", input_json.clone()),
                ],
            ),
            AgentEvent::TokensUsed {
                model,
                input,
                output,
                cache_creation_input,
                cache_read_input,
            } => (
                "ai.tokens_used",
                vec![
                    ("model", model.clone()),
                    ("input", input.to_string()),
                    ("output", output.to_string()),
                    ("cache_creation", cache_creation_input.to_string()),
                    ("cache_read", cache_read_input.to_string()),
                ],
            ),
            AgentEvent::ArtifactReported { .. } => return None,
            AgentEvent::ArtifactCreated {
                path,
                digest,
                size_bytes,
            } => (
                "ai.artifact_created",
                vec![
                    ("path", path.clone()),
                    ("digest", digest.clone()),
                    ("size", size_bytes.to_string()),
                ],
            ),
            AgentEvent::GateStarted { gate } => ("gate.started", vec![("gate", gate.clone())]),
            AgentEvent::GatePassed { gate, message } => (
                "gate.passed",
                vec![("gate", gate.clone()), ("message", message.clone())],
            ),
            AgentEvent::GateFailed { gate, message } => (
                "gate.failed",
                vec![("gate", gate.clone()), ("message", message.clone())],
            ),
        })
    }
}

/// A position in the spoke's event stream: after the whole entry `id`, or after its event
/// number `sub` (0-based) when more events of that entry follow. Written `<ms>-<n>` or
/// `<ms>-<n>.<sub>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub id: EntryId,
    /// `None`: after the entry's last event.
    pub sub: Option<u32>,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.sub {
            None => write!(f, "{}", self.id),
            Some(sub) => write!(f, "{}.{sub}", self.id),
        }
    }
}

impl FromStr for Cursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() > 64 {
            return Err("an event cursor is at most 64 characters".into());
        }
        let (id, sub) = match s.split_once('.') {
            Some((id, sub)) => (
                id,
                Some(
                    sub.parse()
                        .map_err(|_| format!("{s:?} is not an event cursor"))?,
                ),
            ),
            None => (s, None),
        };
        Ok(Cursor {
            id: id.parse()?,
            sub,
        })
    }
}

impl Cursor {
    /// Whether every event after this cursor is still stored, given that retention removed
    /// the entries up to and including `trimmed` (see `store::events`).
    pub fn is_retained(&self, trimmed: Option<EntryId>) -> bool {
        match trimmed {
            None => true,
            // After a whole entry: only what follows it must still be there.
            Some(t) if self.sub.is_none() => self.id >= t,
            // Inside an entry: the entry itself must still be there.
            Some(t) => self.id > t,
        }
    }

    /// Whether event `sub` of entry `id` comes after this cursor.
    pub fn is_before(&self, id: EntryId, sub: u32) -> bool {
        match self.sub {
            None => id > self.id,
            Some(s) => id > self.id || (id == self.id && sub > s),
        }
    }
}

/// One stream entry as read from Valkey: one or more event records. A transition script writes
/// the lifecycle events of every job it moved as one entry, each record beginning with its
/// `kind` field (so no record has another field of that name); an agent's report is an entry
/// of one record.
#[derive(Debug, Clone)]
pub struct Entry {
    pub id: EntryId,
    pub records: Vec<Record>,
}

impl Entry {
    /// Splits an entry's fields, in stream order, into records at each `kind`.
    pub fn from_fields(id: EntryId, fields: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut records: Vec<Record> = Vec::new();
        for (k, v) in fields {
            match records.last_mut() {
                Some(r) if k != "kind" => {
                    r.fields.insert(k, v);
                }
                _ => records.push(Record {
                    id,
                    fields: HashMap::from([(k, v)]),
                }),
            }
        }
        Entry { id, records }
    }
}

/// One event record of an entry: a `kind` and its fields.
#[derive(Debug, Clone)]
pub struct Record {
    /// The entry's id, to name it in errors.
    pub id: EntryId,
    pub fields: HashMap<String, String>,
}

impl Record {
    fn field(&self, k: &str) -> &str {
        self.fields.get(k).map(String::as_str).unwrap_or("")
    }

    fn number(&self, k: &str) -> Result<u64, String> {
        let v = self.field(k);
        if v.is_empty() {
            return Ok(0);
        }
        v.parse::<u64>()
            .map_err(|_| format!("event {}: {k} is not a number", self.id))
    }
}

/// The events an entry stands for, in order, each with its cursor (the entry's id, and the
/// event's place among all of the entry's events unless it is the last); `spoke` is their
/// spoke id. A record of a kind this version does not know, or a damaged one, is an error
/// naming the entry.
pub fn expand(spoke: &str, entry: &Entry) -> Result<Vec<pb::Event>, String> {
    let mut events = Vec::new();
    for record in &entry.records {
        events.extend(record_events(spoke, record)?);
    }
    let last = events.len().saturating_sub(1);
    for (i, e) in events.iter_mut().enumerate() {
        e.cursor = Cursor {
            id: entry.id,
            sub: (i < last).then_some(i as u32),
        }
        .to_string();
    }
    Ok(events)
}

/// The events one record stands for, in order, without cursors.
fn record_events(spoke: &str, entry: &Record) -> Result<Vec<pb::Event>, String> {
    use pb::event::Payload;
    use pb::{AgentState as A, EventType as T, JobState as J};
    let f = |k: &str| entry.field(k).to_owned();
    let kind = entry.field("kind");
    let agent = entry.field("agent_id");
    let attempt = agent
        .rsplit_once('.')
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .unwrap_or(0);
    let at = entry.number("at_ms")? as i64;
    let job = |state: J, ready_at_ms: u64| {
        Payload::Job(pb::JobChange {
            state: state.into(),
            attempt,
            ready_at_ms: ready_at_ms as i64,
            error: f("error"),
        })
    };
    let agent_change = |state: A| {
        Payload::Agent(pb::AgentChange {
            state: state.into(),
            attempt,
            error: if state == A::Completed {
                String::new()
            } else {
                f("error")
            },
        })
    };
    let percent = || -> Result<u32, String> { Ok(entry.number("percent")?.min(100) as u32) };
    // (type, payload, time): an in-process start carries its own time.
    let mut list: Vec<(T, Payload, i64)> = Vec::new();
    // An attempt's end: its start first if it ran in process, then the agent's end.
    let attempt_end = |list: &mut Vec<(T, Payload, i64)>, to: A, t: T| -> Result<(), String> {
        let started = entry.number("started_at_ms")?;
        if started > 0 {
            list.push((T::AgentRunning, agent_change(A::Running), started as i64));
        }
        list.push((t, agent_change(to), at));
        Ok(())
    };
    match kind {
        "job.created" => {
            let ready_at = entry.number("ready_at_ms")?;
            if ready_at as i64 > at {
                list.push((T::JobCreated, job(J::Delayed, ready_at), at));
            } else {
                list.push((T::JobCreated, job(J::Pending, ready_at), at));
                list.push((T::JobQueued, job(J::Pending, 0), at));
            }
        }
        "job.ready" => list.push((T::JobQueued, job(J::Pending, 0), at)),
        "job.started" => {
            list.push((T::JobStarted, job(J::Assigned, 0), at));
            list.push((T::AgentSpawning, agent_change(A::Spawning), at));
        }
        "agent.running" => list.push((T::AgentRunning, agent_change(A::Running), at)),
        "job.completed" => {
            attempt_end(&mut list, A::Completed, T::AgentCompleted)?;
            list.push((T::JobCompleted, job(J::Completed, 0), at));
        }
        "job.failed" => {
            attempt_end(&mut list, A::Failed, T::AgentFailed)?;
            list.push((T::JobFailed, job(J::Failed, 0), at));
        }
        "job.retry" => {
            attempt_end(&mut list, A::Failed, T::AgentFailed)?;
            let ready_at = entry.number("ready_at_ms")?;
            list.push((T::JobStatus, job(J::Delayed, ready_at), at));
        }
        "job.requeued" => {
            attempt_end(&mut list, A::Failed, T::AgentFailed)?;
            list.push((T::JobQueued, job(J::Pending, 0), at));
        }
        "job.cancelled" => {
            if !agent.is_empty() {
                attempt_end(&mut list, A::Killed, T::AgentKilled)?;
            }
            list.push((T::JobCancelled, job(J::Cancelled, 0), at));
        }
        "step.output" => list.push((
            T::StepOutput,
            Payload::Output(pb::Output {
                stream: match entry.field("stream") {
                    "stderr" => pb::OutputStream::Stderr,
                    _ => pb::OutputStream::Stdout,
                }
                .into(),
                step: f("step"),
                text: f("text"),
                lines: entry.number("lines")?.min(u32::MAX as u64) as u32,
                partial: entry.field("partial") == "1",
                dropped_lines: entry.number("dropped_lines")?,
                dropped_bytes: entry.number("dropped_bytes")?,
            }),
            at,
        )),
        "job.progress" => list.push((
            T::JobProgress,
            Payload::Progress(pb::Progress {
                percent: percent()?,
                step: String::new(),
                message: f("message"),
            }),
            at,
        )),
        "job.status" => list.push((T::JobStatus, Payload::Message(f("message")), at)),
        "step.started" | "step.completed" | "step.failed" => list.push((
            match kind {
                "step.started" => T::StepStarted,
                "step.completed" => T::StepCompleted,
                _ => T::StepFailed,
            },
            Payload::Step(pb::StepChange {
                step: f("step"),
                error: f("error"),
            }),
            at,
        )),
        "step.progress" => list.push((
            T::StepProgress,
            Payload::Progress(pb::Progress {
                percent: percent()?,
                step: f("step"),
                message: f("message"),
            }),
            at,
        )),
        "ai.tool_called" => list.push((
            T::AiToolCalled,
            Payload::ToolCall(pb::ToolCall {
                tool: f("tool"),
                call_id: f("call_id"),
                input_json: f("input"),
            }),
            at,
        )),
        "ai.tokens_used" => list.push((
            T::AiTokensUsed,
            Payload::Tokens(pb::TokenUsage {
                model: f("model"),
                input_tokens: entry.number("input")?,
                output_tokens: entry.number("output")?,
                cache_creation_input_tokens: entry.number("cache_creation")?,
                cache_read_input_tokens: entry.number("cache_read")?,
            }),
            at,
        )),
        "ai.artifact_created" => list.push((
            T::AiArtifactCreated,
            Payload::Artifact(pb::Artifact {
                path: f("path"),
                digest: f("digest"),
                size_bytes: entry.number("size")?,
            }),
            at,
        )),
        "gate.started" | "gate.passed" | "gate.failed" => list.push((
            match kind {
                "gate.started" => T::GateStarted,
                "gate.passed" => T::GatePassed,
                _ => T::GateFailed,
            },
            Payload::Gate(pb::GateChange {
                gate: f("gate"),
                message: f("message"),
            }),
            at,
        )),
        other => return Err(format!("event {} has unknown kind {other:?}", entry.id)),
    }
    let first = entry.number("seq")?;
    if first == 0 {
        return Err(format!("event {} has no seq", entry.id));
    }
    Ok(list
        .into_iter()
        .enumerate()
        .map(|(i, (t, payload, at_ms))| pb::Event {
            cursor: String::new(),
            spoke_id: spoke.to_owned(),
            workspace: f("workspace"),
            job_id: f("job_id"),
            agent_id: agent.to_owned(),
            seq: first + i as u64,
            at_ms,
            r#type: t.into(),
            trace_id: f("trace"),
            payload: Some(payload),
        })
        .collect())
}

/// Which events a reader wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub workspace: Option<String>,
    pub job_id: Option<String>,
    /// Empty: every type.
    pub types: Vec<pb::EventType>,
}

impl Filter {
    /// Whether any of an entry's events may match, from its records' ids alone (before
    /// expanding).
    pub fn may_match(&self, entry: &Entry) -> bool {
        entry.records.iter().any(|r| {
            self.workspace
                .as_deref()
                .is_none_or(|w| r.field("workspace") == w)
                && self
                    .job_id
                    .as_deref()
                    .is_none_or(|j| r.field("job_id") == j)
        })
    }

    /// Whether an event matches (an entry holds the events of many jobs).
    pub fn matches(&self, e: &pb::Event) -> bool {
        self.workspace.as_deref().is_none_or(|w| e.workspace == w)
            && self.job_id.as_deref().is_none_or(|j| e.job_id == j)
            && (self.types.is_empty() || self.types.contains(&e.r#type()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: &str, fields: &[(&str, &str)]) -> Entry {
        Entry::from_fields(
            id.parse().unwrap(),
            fields.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    fn types(events: &[pb::Event]) -> Vec<pb::EventType> {
        events.iter().map(|e| e.r#type()).collect()
    }

    #[test]
    fn cursors_round_trip_and_order() {
        for s in ["1700000000000-0", "1700000000000-3.1", "5-5.0"] {
            assert_eq!(s.parse::<Cursor>().unwrap().to_string(), s);
        }
        let long = "9".repeat(70);
        for bad in ["", "x", "1-", "1-2.x", "1.2", long.as_str()] {
            assert!(bad.parse::<Cursor>().is_err(), "{bad}");
        }
        let id = |s: &str| s.parse::<EntryId>().unwrap();
        let c: Cursor = "10-1.0".parse().unwrap();
        assert!(!c.is_before(id("10-1"), 0));
        assert!(c.is_before(id("10-1"), 1));
        assert!(c.is_before(id("10-2"), 0));
        let whole: Cursor = "10-1".parse().unwrap();
        assert!(!whole.is_before(id("10-1"), 5));
        assert!(whole.is_before(id("11-0"), 0));
    }

    #[test]
    fn retention_decides_whether_a_cursor_can_resume() {
        let t = Some("10-1".parse().unwrap());
        let c = |s: &str| s.parse::<Cursor>().unwrap();
        assert!(c("10-1").is_retained(t), "after the last trimmed entry");
        assert!(!c("10-1.0").is_retained(t), "inside a trimmed entry");
        assert!(!c("9-7").is_retained(t));
        assert!(c("10-2.0").is_retained(t));
        assert!(c("9-7").is_retained(None));
    }

    #[test]
    fn an_attempt_end_is_the_agent_change_then_the_job_change() {
        let e = entry(
            "5-0",
            &[
                ("kind", "job.retry"),
                ("job_id", "j1"),
                ("workspace", "w"),
                ("agent_id", "j1.2"),
                ("seq", "7"),
                ("at_ms", "100"),
                ("error", "exited with code 3"),
                ("ready_at_ms", "1100"),
            ],
        );
        let ev = expand("s", &e).unwrap();
        assert_eq!(
            types(&ev),
            [pb::EventType::AgentFailed, pb::EventType::JobStatus]
        );
        assert_eq!(ev[0].cursor, "5-0.0");
        assert_eq!(ev[1].cursor, "5-0");
        assert_eq!((ev[0].seq, ev[1].seq), (7, 8));
        let Some(pb::event::Payload::Job(j)) = &ev[1].payload else {
            panic!("job payload")
        };
        assert_eq!(
            (j.state(), j.ready_at_ms, j.attempt),
            (pb::JobState::Delayed, 1100, 2)
        );
        assert_eq!(j.error, "exited with code 3");
    }

    #[test]
    fn an_in_process_attempt_is_started_in_its_end() {
        let e = entry(
            "5-1",
            &[
                ("kind", "job.completed"),
                ("job_id", "j1"),
                ("workspace", "w"),
                ("agent_id", "j1.1"),
                ("seq", "5"),
                ("at_ms", "100"),
                ("started_at_ms", "99"),
            ],
        );
        let ev = expand("s", &e).unwrap();
        assert_eq!(
            types(&ev),
            [
                pb::EventType::AgentRunning,
                pb::EventType::AgentCompleted,
                pb::EventType::JobCompleted
            ]
        );
        assert_eq!(ev[0].at_ms, 99);
        assert_eq!(ev.iter().map(|e| e.seq).collect::<Vec<_>>(), [5, 6, 7]);
    }

    #[test]
    fn created_is_also_queued_when_ready() {
        let base = [("kind", "job.created"), ("job_id", "j"), ("seq", "1")];
        let ready = entry(
            "1-0",
            &[&base[..], &[("at_ms", "10"), ("ready_at_ms", "10")]].concat(),
        );
        assert_eq!(
            types(&expand("s", &ready).unwrap()),
            [pb::EventType::JobCreated, pb::EventType::JobQueued]
        );
        let later = entry(
            "1-0",
            &[&base[..], &[("at_ms", "10"), ("ready_at_ms", "99")]].concat(),
        );
        assert_eq!(
            types(&expand("s", &later).unwrap()),
            [pb::EventType::JobCreated]
        );
    }

    #[test]
    fn agent_events_round_trip_through_entries() {
        let all = [
            AgentEvent::Output {
                stream: OutputStream::Stderr,
                step: "build".into(),
                text: "a\nb".into(),
                lines: 2,
                partial: true,
                dropped_lines: 3,
                dropped_bytes: 40,
            },
            AgentEvent::Progress {
                percent: 40,
                message: "half".into(),
            },
            AgentEvent::TokensUsed {
                model: "m".into(),
                input: 1,
                output: 2,
                cache_creation_input: 3,
                cache_read_input: 4,
            },
            AgentEvent::GateFailed {
                gate: "lint".into(),
                message: "2 errors".into(),
            },
        ];
        for a in all {
            let (kind, fields) = a.entry().unwrap();
            let mut f: Vec<(&str, &str)> = vec![
                ("kind", kind),
                ("job_id", "j"),
                ("agent_id", "j.1"),
                ("seq", "3"),
                ("at_ms", "1"),
            ];
            f.extend(fields.iter().map(|(k, v)| (*k, v.as_str())));
            let ev = expand("s", &entry("2-0", &f)).unwrap();
            assert_eq!(ev.len(), 1, "{kind}");
            assert_eq!(ev[0].cursor, "2-0");
            let back = match ev[0].payload.clone().unwrap() {
                pb::event::Payload::Output(o) => AgentEvent::Output {
                    stream: if o.stream() == pb::OutputStream::Stderr {
                        OutputStream::Stderr
                    } else {
                        OutputStream::Stdout
                    },
                    step: o.step,
                    text: o.text,
                    lines: o.lines,
                    partial: o.partial,
                    dropped_lines: o.dropped_lines,
                    dropped_bytes: o.dropped_bytes,
                },
                pb::event::Payload::Progress(p) => AgentEvent::Progress {
                    percent: p.percent as u8,
                    message: p.message,
                },
                pb::event::Payload::Tokens(t) => AgentEvent::TokensUsed {
                    model: t.model,
                    input: t.input_tokens,
                    output: t.output_tokens,
                    cache_creation_input: t.cache_creation_input_tokens,
                    cache_read_input: t.cache_read_input_tokens,
                },
                pb::event::Payload::Gate(g) => AgentEvent::GateFailed {
                    gate: g.gate,
                    message: g.message,
                },
                other => panic!("unexpected payload {other:?}"),
            };
            assert_eq!(back, a);
        }
    }

    #[test]
    fn an_entry_of_several_records_is_their_events_in_order_under_one_id() {
        // As STEP writes it: one job started, another's in-process attempt completed.
        let e = entry(
            "7-0",
            &[
                ("kind", "job.started"),
                ("job_id", "j1"),
                ("workspace", "w1"),
                ("seq", "3"),
                ("at_ms", "10"),
                ("agent_id", "j1.1"),
                ("kind", "job.completed"),
                ("job_id", "j2"),
                ("workspace", "w2"),
                ("seq", "5"),
                ("at_ms", "11"),
                ("agent_id", "j2.1"),
                ("started_at_ms", "9"),
            ],
        );
        assert_eq!(e.records.len(), 2);
        let ev = expand("s", &e).unwrap();
        assert_eq!(
            types(&ev),
            [
                pb::EventType::JobStarted,
                pb::EventType::AgentSpawning,
                pb::EventType::AgentRunning,
                pb::EventType::AgentCompleted,
                pb::EventType::JobCompleted
            ]
        );
        let cursors: Vec<&str> = ev.iter().map(|e| e.cursor.as_str()).collect();
        assert_eq!(cursors, ["7-0.0", "7-0.1", "7-0.2", "7-0.3", "7-0"]);
        let of = |e: &pb::Event| (e.job_id.clone(), e.workspace.clone(), e.seq);
        assert_eq!(of(&ev[1]), ("j1".into(), "w1".into(), 4));
        assert_eq!(of(&ev[2]), ("j2".into(), "w2".into(), 5));
        assert_eq!(ev[2].agent_id, "j2.1");

        // A reader of one workspace gets that workspace's events of the entry, no others.
        let w2 = Filter {
            workspace: Some("w2".into()),
            ..Filter::default()
        };
        assert!(w2.may_match(&e));
        let kept: Vec<_> = ev.iter().filter(|e| w2.matches(e)).collect();
        assert_eq!(kept.len(), 3);
        assert!(kept.iter().all(|e| e.job_id == "j2"));
        let elsewhere = Filter {
            job_id: Some("j3".into()),
            ..Filter::default()
        };
        assert!(!elsewhere.may_match(&e));
    }

    #[test]
    fn no_agent_event_has_a_field_named_kind() {
        // `kind` starts a record (Entry::from_fields): a field of that name would split one.
        let t = || "x".to_string();
        let every = [
            AgentEvent::Output {
                stream: OutputStream::Stdout,
                step: t(),
                text: t(),
                lines: 1,
                partial: false,
                dropped_lines: 0,
                dropped_bytes: 0,
            },
            AgentEvent::Progress {
                percent: 1,
                message: t(),
            },
            AgentEvent::Status { message: t() },
            AgentEvent::StepStarted { step: t() },
            AgentEvent::StepProgress {
                step: t(),
                percent: 1,
                message: t(),
            },
            AgentEvent::StepCompleted { step: t() },
            AgentEvent::StepFailed {
                step: t(),
                error: t(),
            },
            AgentEvent::ToolCalled {
                tool: t(),
                call_id: t(),
                input_json: t(),
            },
            AgentEvent::TokensUsed {
                model: t(),
                input: 1,
                output: 1,
                cache_creation_input: 1,
                cache_read_input: 1,
            },
            AgentEvent::ArtifactCreated {
                path: t(),
                digest: t(),
                size_bytes: 1,
            },
            AgentEvent::GateStarted { gate: t() },
            AgentEvent::GatePassed {
                gate: t(),
                message: t(),
            },
            AgentEvent::GateFailed {
                gate: t(),
                message: t(),
            },
        ];
        for a in every {
            let (_, fields) = a.entry().unwrap();
            assert!(fields.iter().all(|(k, _)| *k != "kind"), "{a:?}");
        }
    }

    #[test]
    fn unknown_kinds_are_errors() {
        let e = entry("1-0", &[("kind", "job.exploded"), ("seq", "1")]);
        assert!(expand("s", &e).unwrap_err().contains("job.exploded"));
    }

    #[test]
    fn truncates_at_char_boundaries() {
        assert_eq!(truncate("héllo".into(), 2), "h");
        assert_eq!(truncate("héllo".into(), 3), "hé");
        assert_eq!(truncate("abc".into(), 10), "abc");
    }
}
