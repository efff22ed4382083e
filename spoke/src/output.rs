//! Output: what an agent writes on stdout and stderr, turned into bounded [`AgentEvent`]s.
//!
//! This module owns the path from an agent's pipes to typed events: framing bytes into lines
//! ([`Framer`]), recognising the structured lines an agent may print ([`parse_structured`]),
//! batching lines into output events under a per-attempt budget ([`Coalescer`]), keeping the
//! last bytes for the attempt record ([`Tail`]), and the task that drives them ([`pump`]).
//! It must never block, slow or stop the agent: pipes are always drained, whatever the agent
//! writes and however slowly the events are consumed; what does not fit the budget or the
//! sink is dropped and counted, never queued without bound. It never spawns, signals or waits
//! for processes (`runner`), and never stores events (`store`).
//!
//! # Structured lines
//!
//! An agent may report progress by printing, on **stdout** (never stderr), a line holding one
//! JSON object whose string field `"mosaic"` names the event. The whole line must be that
//! object (surrounding whitespace allowed) and at most 8 KiB (`MAX_OUTPUT_BYTES`) long. Any
//! line that is not such an object, or whose kind is unknown or malformed, is not an error: it
//! is kept as ordinary output. Fields not listed are ignored. Strings are cut to 1 KiB
//! (`MAX_TEXT_BYTES`); names (`step`, `gate`, `tool`) must not be empty; `percent` is an
//! integer from 0 to 100 (`40.0`, `-1` or `101` make the line ordinary output); token counts
//! are non-negative integers. Optional fields may be absent or `null`.
//!
//! | kind | fields | event |
//! |------|--------|-------|
//! | `progress` | `percent`, `message`? | `Progress` |
//! | `status` | `message` | `Status` |
//! | `step.started` | `step` | `StepStarted` |
//! | `step.progress` | `step`, `percent`, `message`? | `StepProgress` |
//! | `step.completed` | `step` | `StepCompleted` |
//! | `step.failed` | `step`, `error`? | `StepFailed` |
//! | `tool` | `tool`, `call_id`?, `input`? (any JSON) | `ToolCalled` |
//! | `tokens` | `model`?, `input`, `output`, `cache_creation_input`?, `cache_read_input`? | `TokensUsed` |
//! | `artifact` | `path` | `ArtifactReported` |
//! | `gate.started` | `gate` | `GateStarted` |
//! | `gate.passed` | `gate`, `message`? | `GatePassed` |
//! | `gate.failed` | `gate`, `message`? | `GateFailed` |
//!
//! A tool's `input` is re-serialised as compact JSON and cut to 4 KiB (`MAX_TOOL_INPUT_BYTES`;
//! a cut input is no longer valid JSON). An artifact `path` must be relative to the agent's
//! working directory, name something below it (no `..`, not `.`), contain no NUL and be at
//! most 1 KiB; it is rejected, not cut. Output events carry the step most recently started
//! with `step.started` and not yet ended by `step.completed` or `step.failed` (steps nest).
//!
//! ```text
//! {"mosaic":"step.started","step":"build"}
//! {"mosaic":"progress","percent":40,"message":"compiling"}
//! {"mosaic":"tool","tool":"Bash","call_id":"c1","input":{"command":"cargo build"}}
//! {"mosaic":"tokens","model":"m","input":1200,"output":300}
//! {"mosaic":"artifact","path":"out/report.md"}
//! {"mosaic":"step.completed","step":"build"}
//! {"mosaic":"gate.failed","gate":"lint","message":"3 warnings"}
//! ```
//!
//! # Output events and the budget
//!
//! Lines are batched: consecutive whole lines of one stream share an `Output` event (joined by
//! `\n`) until it would pass 8 KiB or 256 lines, another stream or a structured event comes
//! between, or 50 ms have passed since its first line. A line longer than 8 KiB arrives as
//! pieces, each its own event, `partial` on all but the last; only the last piece counts as a
//! line. Each attempt has a budget of bytes (64 KiB/s, bursts of 512 KiB; a line costs its
//! length plus its newline) and of events (50/s, bursts of 200; structured events cost an
//! event and no bytes, so a flood of them is bounded too). What arrives while it is spent is
//! dropped; the next `Output` event says how many lines and bytes were dropped since the
//! previous one (an event with empty text is sent at the end if nothing else carries them).
//! Once a piece of a long line is dropped, the rest of that line is dropped too.

use std::collections::VecDeque;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt as _};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::claude::{ClaudeResult, ClaudeStream};
use crate::events::{
    AgentEvent, MAX_OUTPUT_BYTES, MAX_TEXT_BYTES, MAX_TOOL_INPUT_BYTES, OutputStream, truncate,
};

/// How many bytes of combined stdout/stderr an attempt's record keeps.
pub const TAIL_BYTES: usize = 4096;
/// Most open steps remembered; an agent that never ends its steps must not grow the list.
const MAX_OPEN_STEPS: usize = 32;
/// Bytes asked for per read of each pipe.
const READ_BYTES: usize = 8 * 1024;
/// Most lines in one output event, unless [`OutputLimits`] says otherwise.
const EVENT_LINES: u32 = 256;

// ---------------------------------------------------------------------------------------------
// Framing

/// One line from a stream, or one piece of a line longer than the framer's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// The text, without its `\n` or `\r\n`; invalid UTF-8 is replaced by U+FFFD.
    pub text: String,
    /// More pieces of this line follow.
    pub partial: bool,
    /// Earlier pieces of this line came before.
    pub continued: bool,
}

impl Line {
    /// Whether this is a whole line rather than a piece of a longer one.
    pub fn is_whole(&self) -> bool {
        !self.partial && !self.continued
    }
}

/// Cuts one stream's bytes, read in chunks of any size, into [`Line`]s. It holds at most its
/// limit (plus a held-back `\r`) between calls, however long a line is.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    max: usize,
    /// Pieces of the current line were already emitted.
    in_line: bool,
}

impl Default for Framer {
    fn default() -> Self {
        Framer::new(MAX_OUTPUT_BYTES)
    }
}

impl Framer {
    /// A framer whose lines and pieces are at most `max_line_bytes` (at least 4, the longest
    /// UTF-8 character, so that every piece makes progress).
    pub fn new(max_line_bytes: usize) -> Self {
        Framer {
            buf: Vec::new(),
            max: max_line_bytes.max(4),
            in_line: false,
        }
    }

    /// Bytes held for a line not yet ended.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next chunk of the stream and returns the lines and pieces it completes.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Line> {
        let mut out = Vec::new();
        while let Some(i) = bytes.iter().position(|&b| b == b'\n') {
            self.buf.extend_from_slice(&bytes[..i]);
            self.end_line(true, &mut out);
            bytes = &bytes[i + 1..];
        }
        self.buf.extend_from_slice(bytes);
        self.cut_pieces(&mut out);
        out
    }

    /// The stream ended: returns its last line if it had no final newline.
    pub fn finish(&mut self) -> Vec<Line> {
        let mut out = Vec::new();
        if !self.buf.is_empty() || self.in_line {
            self.end_line(false, &mut out);
        }
        out
    }

    fn end_line(&mut self, terminated: bool, out: &mut Vec<Line>) {
        let mut bytes = &self.buf[..];
        if terminated && bytes.last() == Some(&b'\r') {
            bytes = &bytes[..bytes.len() - 1];
        }
        let text = String::from_utf8_lossy(bytes).into_owned();
        self.buf.clear();
        let mut continued = std::mem::take(&mut self.in_line);
        if text.len() <= self.max {
            out.push(Line {
                text,
                partial: false,
                continued,
            });
            return;
        }
        // Replacement characters can make the decoded line longer than the bytes held.
        let mut rest = text.as_str();
        while rest.len() > self.max {
            let cut = floor_char_boundary(rest, self.max);
            out.push(Line {
                text: rest[..cut].to_owned(),
                partial: true,
                continued,
            });
            continued = true;
            rest = &rest[cut..];
        }
        out.push(Line {
            text: rest.to_owned(),
            partial: false,
            continued,
        });
    }

    /// Emits pieces while more than a piece's worth of an unended line is held.
    fn cut_pieces(&mut self, out: &mut Vec<Line>) {
        // A final `\r` may be the first half of `\r\n`: it must stay for `end_line` to strip.
        let end = self.buf.len() - usize::from(self.buf.last() == Some(&b'\r'));
        let mut start = 0;
        while end - start > self.max {
            let (text, used) = decode_prefix(&self.buf[start..end], self.max);
            out.push(Line {
                text,
                partial: true,
                continued: self.in_line,
            });
            self.in_line = true;
            start += used;
        }
        self.buf.drain(..start);
    }
}

/// Decodes (lossily) as much of `bytes` as fits in `max` bytes of text, stopping before a
/// character that does not fit or an incomplete sequence at the end (the next read may
/// complete it). Returns the text and how many bytes it used.
fn decode_prefix(bytes: &[u8], max: usize) -> (String, usize) {
    let mut text = String::new();
    let mut used = 0;
    for chunk in bytes.utf8_chunks() {
        let valid = chunk.valid();
        let room = max - text.len();
        if valid.len() > room {
            let cut = floor_char_boundary(valid, room);
            text.push_str(&valid[..cut]);
            return (text, used + cut);
        }
        text.push_str(valid);
        used += valid.len();
        let invalid = chunk.invalid();
        if invalid.is_empty() {
            continue;
        }
        if used + invalid.len() == bytes.len()
            || text.len() + char::REPLACEMENT_CHARACTER.len_utf8() > max
        {
            break;
        }
        text.push(char::REPLACEMENT_CHARACTER);
        used += invalid.len();
    }
    (text, used)
}

/// The largest char boundary of `s` at or below `max`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    end
}

// ---------------------------------------------------------------------------------------------
// Structured lines

/// The wire shape of a structured line; validated and cut by [`parse_structured`].
#[derive(Deserialize)]
#[serde(tag = "mosaic")]
enum Structured {
    #[serde(rename = "progress")]
    Progress {
        percent: u8,
        message: Option<String>,
    },
    #[serde(rename = "status")]
    Status { message: String },
    #[serde(rename = "step.started")]
    StepStarted { step: String },
    #[serde(rename = "step.progress")]
    StepProgress {
        step: String,
        percent: u8,
        message: Option<String>,
    },
    #[serde(rename = "step.completed")]
    StepCompleted { step: String },
    #[serde(rename = "step.failed")]
    StepFailed { step: String, error: Option<String> },
    #[serde(rename = "tool")]
    Tool {
        tool: String,
        call_id: Option<String>,
        input: Option<serde_json::Value>,
    },
    #[serde(rename = "tokens")]
    Tokens {
        model: Option<String>,
        input: u64,
        output: u64,
        cache_creation_input: Option<u64>,
        cache_read_input: Option<u64>,
    },
    #[serde(rename = "artifact")]
    Artifact { path: String },
    #[serde(rename = "gate.started")]
    GateStarted { gate: String },
    #[serde(rename = "gate.passed")]
    GatePassed {
        gate: String,
        message: Option<String>,
    },
    #[serde(rename = "gate.failed")]
    GateFailed {
        gate: String,
        message: Option<String>,
    },
}

/// The event a structured stdout line reports (see the module docs), or `None` if the line
/// is ordinary output.
pub fn parse_structured(line: &str) -> Option<AgentEvent> {
    // Most lines are not JSON at all; skip the parser for them.
    let trimmed = line.trim();
    if !trimmed.starts_with('{') || !trimmed.contains("\"mosaic\"") {
        return None;
    }
    let parsed: Structured = serde_json::from_str(trimmed).ok()?;
    let text = |s: String| truncate(s, MAX_TEXT_BYTES);
    let opt = |s: Option<String>| truncate(s.unwrap_or_default(), MAX_TEXT_BYTES);
    let name = |s: String| (!s.is_empty()).then(|| truncate(s, MAX_TEXT_BYTES));
    let percent = |p: u8| (p <= 100).then_some(p);
    Some(match parsed {
        Structured::Progress {
            percent: p,
            message,
        } => AgentEvent::Progress {
            percent: percent(p)?,
            message: opt(message),
        },
        Structured::Status { message } => AgentEvent::Status {
            message: text(message),
        },
        Structured::StepStarted { step } => AgentEvent::StepStarted { step: name(step)? },
        Structured::StepProgress {
            step,
            percent: p,
            message,
        } => AgentEvent::StepProgress {
            step: name(step)?,
            percent: percent(p)?,
            message: opt(message),
        },
        Structured::StepCompleted { step } => AgentEvent::StepCompleted { step: name(step)? },
        Structured::StepFailed { step, error } => AgentEvent::StepFailed {
            step: name(step)?,
            error: opt(error),
        },
        Structured::Tool {
            tool,
            call_id,
            input,
        } => AgentEvent::ToolCalled {
            tool: name(tool)?,
            call_id: opt(call_id),
            input_json: input.map(|v| compact_json(&v)).unwrap_or_default(),
        },
        Structured::Tokens {
            model,
            input,
            output,
            cache_creation_input,
            cache_read_input,
        } => AgentEvent::TokensUsed {
            model: opt(model),
            input,
            output,
            cache_creation_input: cache_creation_input.unwrap_or(0),
            cache_read_input: cache_read_input.unwrap_or(0),
        },
        Structured::Artifact { path } => AgentEvent::ArtifactReported {
            path: artifact_path(path)?,
        },
        Structured::GateStarted { gate } => AgentEvent::GateStarted { gate: name(gate)? },
        Structured::GatePassed { gate, message } => AgentEvent::GatePassed {
            gate: name(gate)?,
            message: opt(message),
        },
        Structured::GateFailed { gate, message } => AgentEvent::GateFailed {
            gate: name(gate)?,
            message: opt(message),
        },
    })
}

/// `value` as compact JSON, cut to [`MAX_TOOL_INPUT_BYTES`].
pub(crate) fn compact_json(value: &serde_json::Value) -> String {
    truncate(value.to_string(), MAX_TOOL_INPUT_BYTES)
}

/// The path if it names something below the working directory; a cut path would name a
/// different file, so a long one is refused rather than cut.
fn artifact_path(path: String) -> Option<String> {
    if path.is_empty() || path.len() > MAX_TEXT_BYTES || path.contains('\0') {
        return None;
    }
    let mut names = 0;
    for c in Path::new(&path).components() {
        match c {
            Component::Normal(_) => names += 1,
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    (names > 0).then_some(path)
}

// ---------------------------------------------------------------------------------------------
// Coalescing and budget

/// How an attempt's output is batched and how much of it is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputLimits {
    /// How long the first line of a batch may wait for more lines.
    pub flush_after: Duration,
    /// Most lines in one output event.
    pub max_event_lines: u32,
    /// Sustained output kept, in bytes per second.
    pub bytes_per_sec: u64,
    /// Output kept in a burst, in bytes.
    pub burst_bytes: u64,
    /// Sustained events sent per second.
    pub events_per_sec: u64,
    /// Events sent in a burst.
    pub burst_events: u64,
    /// Longest stdout line parsed as Claude stream JSON; its lines carry whole tool inputs and
    /// results, so they are held far beyond an output event's size. Longer lines are shown
    /// cut, not parsed.
    pub max_json_line_bytes: usize,
}

impl Default for OutputLimits {
    fn default() -> Self {
        OutputLimits {
            flush_after: Duration::from_millis(50),
            max_event_lines: EVENT_LINES,
            bytes_per_sec: 64 * 1024,
            burst_bytes: 512 * 1024,
            events_per_sec: 50,
            burst_events: 200,
            max_json_line_bytes: 1024 * 1024,
        }
    }
}

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// A token bucket counted in token-nanoseconds, so that frequent refills lose no fractions.
#[derive(Debug)]
struct Bucket {
    level: u128,
    cap: u128,
    per_sec: u128,
    last: Instant,
}

impl Bucket {
    fn new(per_sec: u64, burst: u64, now: Instant) -> Self {
        let cap = u128::from(burst) * NANOS_PER_SEC;
        Bucket {
            level: cap,
            cap,
            per_sec: u128::from(per_sec),
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        if now > self.last {
            let elapsed = (now - self.last).as_nanos();
            self.level = self
                .level
                .saturating_add(elapsed.saturating_mul(self.per_sec))
                .min(self.cap);
            self.last = now;
        }
    }

    fn has(&self, n: u64) -> bool {
        self.level >= u128::from(n) * NANOS_PER_SEC
    }

    fn take(&mut self, n: u64) {
        self.level = self.level.saturating_sub(u128::from(n) * NANOS_PER_SEC);
    }
}

#[derive(Debug)]
struct Pending {
    stream: OutputStream,
    text: String,
    lines: u32,
    since: Instant,
}

/// Turns framed lines and reported events into the events to send: batches lines, applies
/// the attempt's budget, counts what it drops, and stamps output with the current step.
/// Time is passed in so that it is deterministic to test.
#[derive(Debug)]
pub struct Coalescer {
    limits: OutputLimits,
    bytes: Bucket,
    events: Bucket,
    pending: Option<Pending>,
    /// Started and not yet ended steps, oldest first.
    steps: Vec<String>,
    /// Per stream (stdout, stderr): a piece of the current long line was dropped, so the rest
    /// of it is dropped too rather than shown with a hole in it.
    skipping: [bool; 2],
    unreported_lines: u64,
    unreported_bytes: u64,
    unreported_stream: OutputStream,
    dropped_lines: u64,
    dropped_bytes: u64,
}

fn stream_index(stream: OutputStream) -> usize {
    match stream {
        OutputStream::Stdout => 0,
        OutputStream::Stderr => 1,
    }
}

fn len_u64(n: usize) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

impl Coalescer {
    /// A coalescer whose budget starts full at `now`.
    pub fn new(limits: OutputLimits, now: Instant) -> Self {
        Coalescer {
            bytes: Bucket::new(limits.bytes_per_sec, limits.burst_bytes, now),
            events: Bucket::new(limits.events_per_sec, limits.burst_events, now),
            limits,
            pending: None,
            steps: Vec::new(),
            skipping: [false; 2],
            unreported_lines: 0,
            unreported_bytes: 0,
            unreported_stream: OutputStream::Stdout,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    /// The step output is attributed to now, or empty.
    pub fn step(&self) -> &str {
        self.steps.last().map_or("", String::as_str)
    }

    /// Bytes of output held for the batch being built.
    pub fn buffered(&self) -> usize {
        self.pending.as_ref().map_or(0, |p| p.text.len())
    }

    /// Lines and bytes dropped over the whole attempt, whether or not reported yet.
    pub fn dropped(&self) -> (u64, u64) {
        (self.dropped_lines, self.dropped_bytes)
    }

    /// When [`Coalescer::poll`] next has something to emit.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.pending
            .as_ref()
            .map(|p| p.since + self.limits.flush_after)
    }

    /// Emits the batch being built if it has waited long enough.
    pub fn poll(&mut self, now: Instant) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        if self.next_deadline().is_some_and(|at| now >= at) {
            self.flush(&mut out);
        }
        out
    }

    /// Takes one framed line of `stream`.
    pub fn line(&mut self, stream: OutputStream, line: Line, now: Instant) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        let len = line.text.len();
        if !line.is_whole() {
            self.flush(&mut out);
            let last = !line.partial;
            let i = stream_index(stream);
            if self.skipping[i] || !self.admit(len, true, now) {
                self.skipping[i] = !last;
                self.count_drop(stream, u64::from(last), len_u64(len));
            } else {
                out.push(self.output(stream, line.text, u32::from(last), line.partial));
            }
            return out;
        }
        let joins = self.pending.as_ref().is_some_and(|p| {
            p.stream == stream
                && p.lines < self.limits.max_event_lines
                && p.text.len() + 1 + len <= MAX_OUTPUT_BYTES
        });
        // A whole line also costs its newline, so that the budget bounds the text sent.
        if !self.admit(len + 1, !joins, now) {
            self.count_drop(stream, 1, len_u64(len));
            return out;
        }
        if !joins {
            self.flush(&mut out);
        }
        let full = match &mut self.pending {
            Some(p) => {
                p.text.push('\n');
                p.text.push_str(&line.text);
                p.lines += 1;
                p.lines >= self.limits.max_event_lines
            }
            None => {
                self.pending = Some(Pending {
                    stream,
                    text: line.text,
                    lines: 1,
                    since: now,
                });
                self.limits.max_event_lines <= 1
            }
        };
        if full {
            self.flush(&mut out);
        }
        out
    }

    /// Takes an event reported by the agent (a structured line, or what the Claude mapper
    /// made of a line). Output events are kept whole, within the byte budget; others cost
    /// only an event, and step events move the current step even when dropped (the agent did
    /// start or end it).
    pub fn event(&mut self, event: AgentEvent, now: Instant) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        // Whatever came before belongs before it, and to the step that was current then.
        self.flush(&mut out);
        match event {
            AgentEvent::Output {
                stream,
                text,
                lines,
                partial,
                dropped_lines,
                dropped_bytes,
                ..
            } => {
                self.unreported_lines += dropped_lines;
                self.unreported_bytes += dropped_bytes;
                let i = stream_index(stream);
                let cost = text.len() + usize::from(!partial);
                if self.skipping[i] || !self.admit(cost, true, now) {
                    // As for framed pieces: the rest of a line cut short is dropped with it.
                    self.skipping[i] = partial;
                    self.count_drop(stream, u64::from(lines), len_u64(text.len()));
                } else {
                    out.push(self.output(stream, text, lines, partial));
                }
            }
            other => {
                self.track_step(&other);
                if self.admit(0, true, now) {
                    out.push(other);
                } else {
                    self.count_drop(OutputStream::Stdout, 1, 0);
                }
            }
        }
        out
    }

    /// Counts an event that could not be delivered (the sink was full) as dropped, so the
    /// next output event reports it.
    pub fn undelivered(&mut self, event: &AgentEvent) {
        match event {
            AgentEvent::Output {
                stream,
                text,
                lines,
                partial,
                dropped_lines,
                dropped_bytes,
                ..
            } => {
                // Already counted in the totals when first dropped; only reported again.
                self.unreported_lines += dropped_lines;
                self.unreported_bytes += dropped_bytes;
                self.count_drop(*stream, u64::from(*lines), len_u64(text.len()));
                if *partial {
                    self.skipping[stream_index(*stream)] = true;
                }
            }
            _ => self.count_drop(OutputStream::Stdout, 1, 0),
        }
    }

    /// The streams ended: emits the batch being built, and an empty output event carrying the
    /// drop counts if no other event will.
    pub fn finish(&mut self) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        self.flush(&mut out);
        if self.unreported_lines > 0 || self.unreported_bytes > 0 {
            out.push(self.output(self.unreported_stream, String::new(), 0, false));
        }
        out
    }

    fn admit(&mut self, bytes: usize, new_event: bool, now: Instant) -> bool {
        self.bytes.refill(now);
        self.events.refill(now);
        let bytes = len_u64(bytes);
        if (new_event && !self.events.has(1)) || !self.bytes.has(bytes) {
            return false;
        }
        if new_event {
            self.events.take(1);
        }
        self.bytes.take(bytes);
        true
    }

    fn count_drop(&mut self, stream: OutputStream, lines: u64, bytes: u64) {
        self.unreported_lines += lines;
        self.unreported_bytes += bytes;
        self.unreported_stream = stream;
        self.dropped_lines += lines;
        self.dropped_bytes += bytes;
    }

    fn flush(&mut self, out: &mut Vec<AgentEvent>) {
        if let Some(p) = self.pending.take() {
            out.push(self.output(p.stream, p.text, p.lines, false));
        }
    }

    fn output(
        &mut self,
        stream: OutputStream,
        text: String,
        lines: u32,
        partial: bool,
    ) -> AgentEvent {
        AgentEvent::Output {
            stream,
            step: self.step().to_owned(),
            text,
            lines,
            partial,
            dropped_lines: std::mem::take(&mut self.unreported_lines),
            dropped_bytes: std::mem::take(&mut self.unreported_bytes),
        }
    }

    fn track_step(&mut self, event: &AgentEvent) {
        match event {
            AgentEvent::StepStarted { step } => {
                if self.steps.len() >= MAX_OPEN_STEPS {
                    self.steps.remove(0);
                }
                self.steps.push(step.clone());
            }
            AgentEvent::StepCompleted { step } | AgentEvent::StepFailed { step, .. } => {
                if let Some(i) = self.steps.iter().rposition(|s| s == step) {
                    self.steps.remove(i);
                }
            }
            _ => {}
        }
    }
}

/// `text` as output events of `stream`, ready to send: lines joined up to the size and line
/// limits, lines longer than [`MAX_OUTPUT_BYTES`] in pieces. Leading and trailing blank lines
/// are left out. For text that arrives whole rather than from a pipe (an assistant's words).
pub fn text_events(stream: OutputStream, text: &str) -> Vec<AgentEvent> {
    let text = text.trim_matches(['\n', '\r']);
    if text.is_empty() {
        return Vec::new();
    }
    let mut framer = Framer::default();
    let mut lines = framer.push(text.as_bytes());
    lines.extend(framer.finish());
    let mut out = Vec::new();
    let mut batch: Option<(String, u32)> = None;
    let event = |text: String, lines: u32, partial: bool| AgentEvent::Output {
        stream,
        step: String::new(),
        text,
        lines,
        partial,
        dropped_lines: 0,
        dropped_bytes: 0,
    };
    for line in lines {
        if !line.is_whole() {
            if let Some((t, n)) = batch.take() {
                out.push(event(t, n, false));
            }
            out.push(event(line.text, u32::from(!line.partial), line.partial));
            continue;
        }
        match &mut batch {
            Some((t, n))
                if *n < EVENT_LINES && t.len() + 1 + line.text.len() <= MAX_OUTPUT_BYTES =>
            {
                t.push('\n');
                t.push_str(&line.text);
                *n += 1;
            }
            _ => {
                if let Some((t, n)) = batch.replace((line.text, 1)) {
                    out.push(event(t, n, false));
                }
            }
        }
    }
    if let Some((t, n)) = batch {
        out.push(event(t, n, false));
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Tail

/// The last [`TAIL_BYTES`] of what an attempt wrote, both streams interleaved as read.
#[derive(Debug, Default)]
pub struct Tail(VecDeque<u8>);

impl Tail {
    pub fn push(&mut self, bytes: &[u8]) {
        let keep = bytes.len().min(TAIL_BYTES);
        self.0.extend(&bytes[bytes.len() - keep..]);
        let excess = self.0.len().saturating_sub(TAIL_BYTES);
        self.0.drain(..excess);
    }

    /// The tail as text; a character cut by the start of the tail is left out rather than
    /// shown as a replacement character.
    pub fn text(&self) -> String {
        let skip = self
            .0
            .iter()
            .take(3)
            .take_while(|&&b| b & 0b1100_0000 == 0b1000_0000)
            .count();
        let bytes: Vec<u8> = self.0.iter().skip(skip).copied().collect();
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// The pump

/// What an agent prints on stdout (a profile's `format` in spoke.toml: `"plain"` or
/// `"claude-stream-json"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Format {
    /// Text, with structured lines (see the module docs).
    #[default]
    Plain,
    /// Claude Code's `--output-format stream-json` (see `claude`); structured lines are not
    /// recognised.
    ClaudeStreamJson,
}

/// How a pump ended: what it saw and what it could not pass on.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PumpEnd {
    /// The last `result` line of a Claude stream, if one came.
    pub claude_result: Option<ClaudeResult>,
    pub bytes_read: u64,
    pub events_sent: u64,
    /// Events the sink had no room for (counted in the drops too).
    pub events_undelivered: u64,
    /// Lines and bytes dropped over the attempt: over budget or undelivered.
    pub dropped_lines: u64,
    pub dropped_bytes: u64,
    /// Most bytes held at once by the framers and the batch being built.
    pub peak_buffered_bytes: usize,
    /// Errors reading a stream (which then counts as ended).
    pub read_errors: Vec<String>,
}

/// Reads an agent's stdout and stderr until both end, sending what they carry to `sink` as
/// events and keeping the raw tail in `tail` (shared so that it survives the pump being
/// abandoned). It never waits on `sink`: events it has no room for (or all events, once it
/// is closed) are dropped and counted, and reading goes on.
/// For [`Format::ClaudeStreamJson`], every `result` line is published on `result` as it
/// arrives, so the runner can give a process that outlives its result a grace and then stop
/// it; the last one is also returned.
pub async fn pump(
    mut stdout: impl AsyncRead + Unpin,
    mut stderr: impl AsyncRead + Unpin,
    format: Format,
    limits: OutputLimits,
    sink: mpsc::Sender<AgentEvent>,
    tail: Arc<Mutex<Tail>>,
    result: watch::Sender<Option<ClaudeResult>>,
) -> PumpEnd {
    let stdout_line = match format {
        Format::Plain => MAX_OUTPUT_BYTES,
        Format::ClaudeStreamJson => limits.max_json_line_bytes.max(MAX_OUTPUT_BYTES),
    };
    let mut p = Pumping {
        framers: [Framer::new(stdout_line), Framer::default()],
        coalescer: Coalescer::new(limits, Instant::now()),
        claude: (format == Format::ClaudeStreamJson).then(ClaudeStream::default),
        results_seen: 0,
        sink,
        tail,
        result,
        end: PumpEnd::default(),
    };
    let mut out_buf = vec![0u8; READ_BYTES];
    let mut err_buf = vec![0u8; READ_BYTES];
    let (mut out_open, mut err_open) = (true, true);
    let timer = tokio::time::sleep(Duration::ZERO);
    tokio::pin!(timer);
    while out_open || err_open {
        let deadline = p.coalescer.next_deadline();
        if let Some(at) = deadline
            && timer.deadline() != at
        {
            timer.as_mut().reset(at);
        }
        // Reads are cancel-safe: a read not chosen has taken no bytes.
        tokio::select! {
            r = stdout.read(&mut out_buf), if out_open => {
                out_open = p.read(OutputStream::Stdout, r, &out_buf);
            }
            r = stderr.read(&mut err_buf), if err_open => {
                err_open = p.read(OutputStream::Stderr, r, &err_buf);
            }
            () = &mut timer, if deadline.is_some() => {
                let events = p.coalescer.poll(Instant::now());
                p.send(events);
            }
        }
    }
    p.finish()
}

struct Pumping {
    /// Stdout, stderr.
    framers: [Framer; 2],
    coalescer: Coalescer,
    claude: Option<ClaudeStream>,
    results_seen: u64,
    sink: mpsc::Sender<AgentEvent>,
    tail: Arc<Mutex<Tail>>,
    result: watch::Sender<Option<ClaudeResult>>,
    end: PumpEnd,
}

impl Pumping {
    /// Handles one read; returns whether the stream is still open.
    fn read(&mut self, stream: OutputStream, read: std::io::Result<usize>, buf: &[u8]) -> bool {
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                self.end
                    .read_errors
                    .push(format!("cannot read {}: {e}", stream.as_str()));
                0
            }
        };
        let now = Instant::now();
        let framer = &mut self.framers[stream_index(stream)];
        let lines = if n == 0 {
            framer.finish()
        } else {
            let bytes = &buf[..n];
            self.end.bytes_read += len_u64(n);
            // A panic elsewhere while holding the lock leaves the bytes intact; keep using them.
            let mut tail = self.tail.lock().unwrap_or_else(|e| e.into_inner());
            tail.push(bytes);
            drop(tail);
            framer.push(bytes)
        };
        let held = self.framers.iter().map(Framer::buffered).sum::<usize>()
            + self.coalescer.buffered()
            + lines.iter().map(|l| l.text.len()).sum::<usize>();
        self.end.peak_buffered_bytes = self.end.peak_buffered_bytes.max(held);
        for line in lines {
            self.route(stream, line, now);
        }
        let events = self.coalescer.poll(now);
        self.send(events);
        n != 0
    }

    fn route(&mut self, stream: OutputStream, line: Line, now: Instant) {
        let events = match (stream, &mut self.claude) {
            (OutputStream::Stdout, Some(claude)) => {
                // The first piece of a line too long to parse already stands for all of it.
                if line.continued {
                    return;
                }
                let mapped = claude.line(&line.text);
                if claude.results_seen() != self.results_seen {
                    self.results_seen = claude.results_seen();
                    self.result.send_replace(claude.result().cloned());
                }
                let mut events = Vec::new();
                for event in mapped {
                    events.extend(self.coalescer.event(event, now));
                }
                events
            }
            (OutputStream::Stdout, None) if line.is_whole() => match parse_structured(&line.text) {
                Some(event) => self.coalescer.event(event, now),
                None => self.coalescer.line(stream, line, now),
            },
            _ => self.coalescer.line(stream, line, now),
        };
        self.send(events);
    }

    fn send(&mut self, events: Vec<AgentEvent>) {
        for event in events {
            match self.sink.try_send(event) {
                Ok(()) => self.end.events_sent += 1,
                Err(TrySendError::Full(event) | TrySendError::Closed(event)) => {
                    self.end.events_undelivered += 1;
                    self.coalescer.undelivered(&event);
                }
            }
        }
    }

    fn finish(mut self) -> PumpEnd {
        let events = self.coalescer.finish();
        self.send(events);
        (self.end.dropped_lines, self.end.dropped_bytes) = self.coalescer.dropped();
        self.end.claude_result = self.claude.as_ref().and_then(|c| c.result().cloned());
        self.end
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncWriteExt as _;

    fn whole(text: &str) -> Line {
        Line {
            text: text.into(),
            partial: false,
            continued: false,
        }
    }

    fn out(stream: OutputStream, step: &str, text: &str, lines: u32) -> AgentEvent {
        AgentEvent::Output {
            stream,
            step: step.into(),
            text: text.into(),
            lines,
            partial: false,
            dropped_lines: 0,
            dropped_bytes: 0,
        }
    }

    fn texts(lines: &[Line]) -> Vec<&str> {
        lines.iter().map(|l| l.text.as_str()).collect()
    }

    // --- Framer

    #[test]
    fn frames_lines_across_chunks() {
        let mut f = Framer::default();
        assert!(f.push(b"hel").is_empty());
        let lines = f.push(b"lo\nwor");
        assert_eq!(texts(&lines), ["hello"]);
        let lines = f.push(b"ld\r\n\nlast");
        assert_eq!(texts(&lines), ["world", ""]);
        assert_eq!(texts(&f.finish()), ["last"]);
        assert!(f.finish().is_empty());
        assert!(lines.iter().all(Line::is_whole));
    }

    #[test]
    fn strips_only_a_final_cr_and_keeps_one_at_eof() {
        let mut f = Framer::default();
        let lines = f.push(b"a\rb\r\r\nc\r");
        assert_eq!(texts(&lines), ["a\rb\r"]);
        assert_eq!(texts(&f.finish()), ["c\r"]);
    }

    #[test]
    fn replaces_invalid_utf8_but_not_a_character_split_across_reads() {
        let mut f = Framer::default();
        let e_acute = "é".as_bytes();
        assert!(f.push(&[b'x', e_acute[0]]).is_empty());
        let lines = f.push(&[e_acute[1], 0xff, b'y', b'\n']);
        assert_eq!(texts(&lines), ["xé\u{fffd}y"]);
    }

    #[test]
    fn cuts_long_lines_into_pieces_at_char_boundaries() {
        let mut f = Framer::new(8);
        let lines = f.push("aaaaaaaéé bbb\n".as_bytes());
        assert_eq!(texts(&lines), ["aaaaaaa", "éé bbb"]);
        assert!(lines[0].partial && !lines[0].continued);
        assert!(!lines[1].partial && lines[1].continued);

        // Streamed one byte at a time, pieces go out as soon as they are full.
        let mut f = Framer::new(4);
        let mut lines = Vec::new();
        for b in b"0123456789\r\nxy\n" {
            lines.extend(f.push(&[*b]));
            assert!(f.buffered() <= 5);
        }
        assert_eq!(texts(&lines), ["0123", "4567", "89", "xy"]);
        let flags: Vec<_> = lines.iter().map(|l| (l.partial, l.continued)).collect();
        assert_eq!(
            flags,
            [(true, false), (true, true), (false, true), (false, false)]
        );
    }

    #[test]
    fn a_line_of_a_piece_plus_crlf_split_before_the_lf_is_one_line() {
        let mut f = Framer::new(4);
        assert!(f.push(b"abcd\r").is_empty());
        let lines = f.push(b"\n");
        assert_eq!(lines, [whole("abcd")]);
    }

    #[test]
    fn holds_no_more_than_a_piece_of_an_endless_line() {
        let mut f = Framer::default();
        let chunk = vec![b'z'; 64 * 1024 + 7];
        let mut pieces = 0;
        for _ in 0..200 {
            for l in f.push(&chunk) {
                assert!(l.partial && l.text.len() <= MAX_OUTPUT_BYTES);
                pieces += 1;
            }
            assert!(f.buffered() <= MAX_OUTPUT_BYTES);
        }
        let last = f.finish();
        assert_eq!(last.len(), 1);
        assert!(!last[0].partial && last[0].continued);
        assert_eq!(
            pieces * MAX_OUTPUT_BYTES + last[0].text.len(),
            200 * chunk.len()
        );
    }

    fn frame_all(input: &[u8], cuts: &[usize], max: usize) -> Vec<Line> {
        let mut f = Framer::new(max);
        let mut lines = Vec::new();
        let mut at = 0;
        for &cut in cuts.iter().chain([&input.len()]) {
            let cut = cut.clamp(at, input.len());
            lines.extend(f.push(&input[at..cut]));
            assert!(f.buffered() <= max + 1, "buffered {}", f.buffered());
            at = cut;
        }
        lines.extend(f.finish());
        lines
    }

    proptest! {
        #[test]
        fn framer_keeps_every_byte_whatever_the_chunking(
            input in prop_oneof!["[a-zé😀\r\n ]{0,300}", "(?s).{0,200}"],
            mut cuts in prop::collection::vec(0usize..320, 0..12),
            max in prop_oneof![4usize..24, Just(MAX_OUTPUT_BYTES)],
        ) {
            cuts.sort_unstable();
            let lines = frame_all(input.as_bytes(), &cuts, max);
            let mut rebuilt: Vec<String> = Vec::new();
            let mut open = false;
            for l in &lines {
                prop_assert!(l.text.len() <= max);
                prop_assert_eq!(l.continued, open);
                if open {
                    if let Some(s) = rebuilt.last_mut() {
                        s.push_str(&l.text);
                    }
                } else {
                    rebuilt.push(l.text.clone());
                }
                open = l.partial;
            }
            prop_assert!(!open);
            let mut expected: Vec<String> = input.split('\n').map(str::to_owned).collect();
            let last = expected.pop().unwrap_or_default();
            for line in &mut expected {
                if line.ends_with('\r') {
                    line.pop();
                }
            }
            if !last.is_empty() {
                expected.push(last);
            }
            prop_assert_eq!(rebuilt, expected);
        }
    }

    // --- Structured lines

    #[test]
    fn parses_every_kind() {
        let cases = [
            (
                r#"{"mosaic":"progress","percent":40,"message":"compiling"}"#,
                AgentEvent::Progress {
                    percent: 40,
                    message: "compiling".into(),
                },
            ),
            (
                r#"  {"message":"x","mosaic":"progress","percent":100,"extra":[1]}  "#,
                AgentEvent::Progress {
                    percent: 100,
                    message: "x".into(),
                },
            ),
            (
                r#"{"mosaic":"status","message":"waiting for lock"}"#,
                AgentEvent::Status {
                    message: "waiting for lock".into(),
                },
            ),
            (
                r#"{"mosaic":"step.started","step":"build"}"#,
                AgentEvent::StepStarted {
                    step: "build".into(),
                },
            ),
            (
                r#"{"mosaic":"step.progress","step":"build","percent":0}"#,
                AgentEvent::StepProgress {
                    step: "build".into(),
                    percent: 0,
                    message: String::new(),
                },
            ),
            (
                r#"{"mosaic":"step.completed","step":"build"}"#,
                AgentEvent::StepCompleted {
                    step: "build".into(),
                },
            ),
            (
                r#"{"mosaic":"step.failed","step":"test","error":"2 failed"}"#,
                AgentEvent::StepFailed {
                    step: "test".into(),
                    error: "2 failed".into(),
                },
            ),
            (
                r#"{"mosaic":"step.failed","step":"test","error":null}"#,
                AgentEvent::StepFailed {
                    step: "test".into(),
                    error: String::new(),
                },
            ),
            (
                r#"{"mosaic":"tool","tool":"Bash","call_id":"c1","input":{ "command" : "ls" }}"#,
                AgentEvent::ToolCalled {
                    tool: "Bash".into(),
                    call_id: "c1".into(),
                    input_json: r#"{"command":"ls"}"#.into(),
                },
            ),
            (
                r#"{"mosaic":"tool","tool":"Read"}"#,
                AgentEvent::ToolCalled {
                    tool: "Read".into(),
                    call_id: String::new(),
                    input_json: String::new(),
                },
            ),
            (
                r#"{"mosaic":"tokens","model":"m1","input":10,"output":20,"cache_read_input":5}"#,
                AgentEvent::TokensUsed {
                    model: "m1".into(),
                    input: 10,
                    output: 20,
                    cache_creation_input: 0,
                    cache_read_input: 5,
                },
            ),
            (
                r#"{"mosaic":"artifact","path":"out/report.md"}"#,
                AgentEvent::ArtifactReported {
                    path: "out/report.md".into(),
                },
            ),
            (
                r#"{"mosaic":"gate.started","gate":"lint"}"#,
                AgentEvent::GateStarted {
                    gate: "lint".into(),
                },
            ),
            (
                r#"{"mosaic":"gate.passed","gate":"lint"}"#,
                AgentEvent::GatePassed {
                    gate: "lint".into(),
                    message: String::new(),
                },
            ),
            (
                r#"{"mosaic":"gate.failed","gate":"lint","message":"3 warnings"}"#,
                AgentEvent::GateFailed {
                    gate: "lint".into(),
                    message: "3 warnings".into(),
                },
            ),
        ];
        for (line, want) in cases {
            assert_eq!(parse_structured(line), Some(want), "{line}");
        }
    }

    #[test]
    fn anything_else_stays_plain_output() {
        for line in [
            "",
            "compiling foo",
            "{}",
            r#"{"mosaic":"progress","percent":101}"#,
            r#"{"mosaic":"progress","percent":-1}"#,
            r#"{"mosaic":"progress","percent":40.0}"#,
            r#"{"mosaic":"progress","percent":"40"}"#,
            r#"{"mosaic":"progress"}"#,
            r#"{"mosaic":"status"}"#,
            r#"{"mosaic":"launch","target":"moon"}"#,
            r#"{"mosaic":7}"#,
            r#"{"mosaic":"step.started","step":""}"#,
            r#"{"mosaic":"tokens","input":-3,"output":1}"#,
            r#"{"mosaic":"tokens","output":1}"#,
            r#"{"mosaic":"status","message":"x"} trailing"#,
            r#"{"mosaic":"status","message":"x""#,
            r#"["mosaic","status"]"#,
            r#"{"mosaic":"artifact","path":"/etc/passwd"}"#,
            r#"{"mosaic":"artifact","path":"out/../../secret"}"#,
            r#"{"mosaic":"artifact","path":".."}"#,
            r#"{"mosaic":"artifact","path":"./"}"#,
            r#"{"mosaic":"artifact","path":""}"#,
            r#"{"mosaic":"artifact","path":"a\u0000b"}"#,
        ] {
            assert_eq!(parse_structured(line), None, "{line}");
        }
        let long_path = format!(r#"{{"mosaic":"artifact","path":"{}"}}"#, "a".repeat(1025));
        assert_eq!(parse_structured(&long_path), None);
    }

    #[test]
    fn cuts_strings_and_tool_input() {
        let long = "é".repeat(MAX_TEXT_BYTES);
        let line = format!(r#"{{"mosaic":"status","message":"{long}"}}"#);
        let Some(AgentEvent::Status { message }) = parse_structured(&line) else {
            panic!("not a status");
        };
        assert_eq!(message.len(), MAX_TEXT_BYTES);

        let line = format!(
            r#"{{"mosaic":"tool","tool":"Write","input":{{"content":"{}"}}}}"#,
            "x".repeat(6000)
        );
        let Some(AgentEvent::ToolCalled { input_json, .. }) = parse_structured(&line) else {
            panic!("not a tool call");
        };
        assert_eq!(input_json.len(), MAX_TOOL_INPUT_BYTES);
        assert!(input_json.starts_with(r#"{"content":"xxx"#));
    }

    // --- Coalescer

    fn t0() -> Instant {
        Instant::now()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn joins_a_burst_and_flushes_after_the_delay() {
        let start = t0();
        let mut c = Coalescer::new(OutputLimits::default(), start);
        assert!(c.line(OutputStream::Stdout, whole("a"), start).is_empty());
        assert!(
            c.line(OutputStream::Stdout, whole("b"), start + ms(10))
                .is_empty()
        );
        assert_eq!(c.next_deadline(), Some(start + ms(50)));
        assert!(c.poll(start + ms(49)).is_empty());
        assert_eq!(
            c.poll(start + ms(50)),
            [out(OutputStream::Stdout, "", "a\nb", 2)]
        );
        assert_eq!(c.next_deadline(), None);
        assert!(c.finish().is_empty());
    }

    #[test]
    fn another_stream_or_a_full_event_starts_a_new_one() {
        let now = t0();
        let mut c = Coalescer::new(OutputLimits::default(), now);
        c.line(OutputStream::Stdout, whole("a"), now);
        let evs = c.line(OutputStream::Stderr, whole("e"), now);
        assert_eq!(evs, [out(OutputStream::Stdout, "", "a", 1)]);
        let big = "x".repeat(MAX_OUTPUT_BYTES - 1);
        let evs = c.line(OutputStream::Stderr, whole(&big), now);
        assert_eq!(evs, [out(OutputStream::Stderr, "", "e", 1)]);
        let evs = c.line(OutputStream::Stderr, whole("y"), now);
        assert_eq!(evs, [out(OutputStream::Stderr, "", &big, 1)]);
        assert_eq!(c.finish(), [out(OutputStream::Stderr, "", "y", 1)]);

        let mut c = Coalescer::new(OutputLimits::default(), now);
        let mut evs = Vec::new();
        for i in 0..300 {
            evs.extend(c.line(OutputStream::Stdout, whole(&i.to_string()), now));
        }
        assert_eq!(evs.len(), 1);
        let AgentEvent::Output { lines, text, .. } = &evs[0] else {
            panic!("not output");
        };
        assert_eq!(*lines, 256);
        assert!(text.starts_with("0\n1\n") && text.ends_with("\n255"));
    }

    #[test]
    fn pieces_are_events_of_their_own() {
        let now = t0();
        let mut c = Coalescer::new(OutputLimits::default(), now);
        c.line(OutputStream::Stdout, whole("before"), now);
        let piece = |text: &str, partial, continued| Line {
            text: text.into(),
            partial,
            continued,
        };
        let evs = c.line(OutputStream::Stdout, piece("p1", true, false), now);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[0], out(OutputStream::Stdout, "", "before", 1));
        assert!(
            matches!(&evs[1], AgentEvent::Output { text, lines: 0, partial: true, .. } if text == "p1")
        );
        let evs = c.line(OutputStream::Stdout, piece("p2", false, true), now);
        assert_eq!(evs, [out(OutputStream::Stdout, "", "p2", 1)]);
    }

    #[test]
    fn drops_over_budget_and_reports_the_counts_on_the_next_event() {
        let start = t0();
        // Each whole line costs its length plus its newline.
        let limits = OutputLimits {
            bytes_per_sec: 10,
            burst_bytes: 12,
            ..OutputLimits::default()
        };
        let mut c = Coalescer::new(limits, start);
        c.line(OutputStream::Stdout, whole("123456"), start);
        c.line(OutputStream::Stdout, whole("7890"), start);
        c.line(OutputStream::Stdout, whole("dropped"), start);
        c.line(OutputStream::Stderr, whole("gone"), start);
        assert_eq!(c.dropped(), (2, 11));
        // The drops ride on the next event out, here the batch that was already kept.
        let evs = c.poll(start + ms(50));
        assert_eq!(
            evs,
            [AgentEvent::Output {
                stream: OutputStream::Stdout,
                step: String::new(),
                text: "123456\n7890".into(),
                lines: 2,
                partial: false,
                dropped_lines: 2,
                dropped_bytes: 11,
            }]
        );
        assert!(
            c.line(OutputStream::Stderr, whole("no"), start + ms(200))
                .is_empty()
        );
        // One second refills ten bytes: enough for one more line.
        let evs = c.line(OutputStream::Stderr, whole("back"), start + ms(1000));
        assert!(evs.is_empty());
        let evs = c.finish();
        assert_eq!(
            evs,
            [AgentEvent::Output {
                stream: OutputStream::Stderr,
                step: String::new(),
                text: "back".into(),
                lines: 1,
                partial: false,
                dropped_lines: 1,
                dropped_bytes: 2,
            }]
        );
    }

    #[test]
    fn reports_drops_at_the_end_when_no_event_carries_them() {
        let now = t0();
        let limits = OutputLimits {
            burst_bytes: 0,
            ..OutputLimits::default()
        };
        let mut c = Coalescer::new(limits, now);
        c.line(OutputStream::Stderr, whole("abc"), now);
        c.line(OutputStream::Stderr, whole("de"), now);
        assert_eq!(
            c.finish(),
            [AgentEvent::Output {
                stream: OutputStream::Stderr,
                step: String::new(),
                text: String::new(),
                lines: 0,
                partial: false,
                dropped_lines: 2,
                dropped_bytes: 5,
            }]
        );
        assert!(c.finish().is_empty());
    }

    #[test]
    fn the_event_budget_covers_structured_events() {
        let start = t0();
        let limits = OutputLimits {
            events_per_sec: 1,
            burst_events: 2,
            ..OutputLimits::default()
        };
        let mut c = Coalescer::new(limits, start);
        let status = |m: &str| AgentEvent::Status { message: m.into() };
        assert_eq!(c.event(status("1"), start), [status("1")]);
        c.line(OutputStream::Stdout, whole("out"), start);
        c.line(OutputStream::Stdout, whole("joins"), start);
        // The batch is flushed first (it was already paid for), then the status is dropped.
        let evs = c.event(status("2"), start);
        assert_eq!(evs, [out(OutputStream::Stdout, "", "out\njoins", 2)]);
        assert!(c.line(OutputStream::Stdout, whole("x"), start).is_empty());
        assert_eq!(c.dropped(), (2, 1));
        assert_eq!(c.event(status("3"), start + ms(1000)), [status("3")]);
    }

    #[test]
    fn a_dropped_piece_drops_the_rest_of_its_line() {
        let now = t0();
        let limits = OutputLimits {
            bytes_per_sec: 0,
            burst_bytes: 5,
            ..OutputLimits::default()
        };
        let mut c = Coalescer::new(limits, now);
        let piece = |text: &str, partial, continued| Line {
            text: text.into(),
            partial,
            continued,
        };
        assert_eq!(
            c.line(OutputStream::Stdout, piece("abc", true, false), now)
                .len(),
            1
        );
        assert!(
            c.line(OutputStream::Stdout, piece("def", true, true), now)
                .is_empty()
        );
        // Would fit, but would show the line with a hole in it.
        assert!(
            c.line(OutputStream::Stdout, piece("g", false, true), now)
                .is_empty()
        );
        assert_eq!(c.dropped(), (1, 4));
        assert_eq!(c.line(OutputStream::Stdout, whole("h"), now), []);
        let evs = c.finish();
        assert!(
            matches!(&evs[..], [AgentEvent::Output { text, dropped_lines: 1, dropped_bytes: 4, .. }] if text == "h")
        );
    }

    #[test]
    fn reported_pieces_are_dropped_to_the_end_of_their_line_too() {
        let now = t0();
        let limits = OutputLimits {
            bytes_per_sec: 0,
            burst_bytes: 10,
            ..OutputLimits::default()
        };
        let mut c = Coalescer::new(limits, now);
        let piece = |text: &str, partial: bool| AgentEvent::Output {
            stream: OutputStream::Stdout,
            step: String::new(),
            text: text.into(),
            lines: u32::from(!partial),
            partial,
            dropped_lines: 0,
            dropped_bytes: 0,
        };
        assert_eq!(c.event(piece("abcdef", true), now).len(), 1);
        assert!(c.event(piece("ghijkl", true), now).is_empty());
        assert!(c.event(piece("m", false), now).is_empty());
        assert_eq!(c.dropped(), (1, 7));
        assert_eq!(c.event(piece("n", false), now).len(), 1);
    }

    #[test]
    fn output_carries_the_innermost_open_step() {
        let now = t0();
        let mut c = Coalescer::new(OutputLimits::default(), now);
        let started = |s: &str| AgentEvent::StepStarted { step: s.into() };
        c.event(started("build"), now);
        c.line(OutputStream::Stdout, whole("a"), now);
        let evs = c.event(started("link"), now);
        assert_eq!(evs[0], out(OutputStream::Stdout, "build", "a", 1));
        c.line(OutputStream::Stderr, whole("b"), now);
        let evs = c.event(
            AgentEvent::StepFailed {
                step: "link".into(),
                error: String::new(),
            },
            now,
        );
        assert_eq!(evs[0], out(OutputStream::Stderr, "link", "b", 1));
        assert_eq!(c.step(), "build");
        c.event(
            AgentEvent::StepCompleted {
                step: "build".into(),
            },
            now,
        );
        assert_eq!(c.step(), "");
        for i in 0..100 {
            c.event(started(&i.to_string()), now);
        }
        assert_eq!(c.steps.len(), MAX_OPEN_STEPS);
        assert_eq!(c.step(), "99");
    }

    #[test]
    fn undelivered_events_count_as_dropped() {
        let now = t0();
        let mut c = Coalescer::new(OutputLimits::default(), now);
        let lost = AgentEvent::Output {
            stream: OutputStream::Stdout,
            step: String::new(),
            text: "abc\nd".into(),
            lines: 2,
            partial: false,
            dropped_lines: 3,
            dropped_bytes: 30,
        };
        c.undelivered(&lost);
        c.undelivered(&AgentEvent::Status {
            message: "s".into(),
        });
        assert_eq!(c.dropped(), (3, 5));
        c.line(OutputStream::Stdout, whole("next"), now);
        let evs = c.finish();
        assert!(matches!(
            &evs[..],
            [AgentEvent::Output {
                dropped_lines: 6,
                dropped_bytes: 35,
                ..
            }]
        ));
    }

    #[test]
    fn text_events_batch_and_cut() {
        assert!(text_events(OutputStream::Stdout, "\n\n").is_empty());
        assert_eq!(
            text_events(OutputStream::Stdout, "\nhello\n\nworld\n"),
            [out(OutputStream::Stdout, "", "hello\n\nworld", 3)]
        );
        let long = format!("a\n{}\nb", "y".repeat(MAX_OUTPUT_BYTES + 1));
        let evs = text_events(OutputStream::Stderr, &long);
        let shape: Vec<_> = evs
            .iter()
            .map(|e| match e {
                AgentEvent::Output {
                    text,
                    lines,
                    partial,
                    ..
                } => (text.len(), *lines, *partial),
                _ => panic!("not output"),
            })
            .collect();
        assert_eq!(
            shape,
            [
                (1, 1, false),
                (MAX_OUTPUT_BYTES, 0, true),
                (1, 1, false),
                (1, 1, false)
            ]
        );
    }

    #[test]
    fn tail_keeps_the_last_bytes_as_text() {
        let mut t = Tail::default();
        t.push(&vec![b'a'; TAIL_BYTES - 1]);
        t.push(b"xyz");
        assert_eq!(t.0.len(), TAIL_BYTES);
        assert!(t.text().ends_with("axyz"));
        t.push(&vec![b'b'; TAIL_BYTES * 3]);
        assert!(t.0.iter().all(|&b| b == b'b'));
        // A character cut by the start of the tail is left out.
        let mut t = Tail::default();
        t.push("é".repeat(TAIL_BYTES).as_bytes());
        t.push(b"z");
        assert!(t.text().starts_with('é') && t.text().ends_with("éz"));
        assert_eq!(t.text().len(), TAIL_BYTES - 1);
    }

    // --- The pump

    struct Pumped {
        end: PumpEnd,
        events: Vec<AgentEvent>,
        tail: String,
        result: Option<ClaudeResult>,
    }

    async fn pump_bytes(stdout: &[u8], stderr: &[u8], format: Format) -> Pumped {
        let (tx, mut rx) = mpsc::channel(1024);
        let tail = Arc::new(Mutex::new(Tail::default()));
        let (result_tx, result_rx) = watch::channel(None);
        let end = pump(
            stdout,
            stderr,
            format,
            OutputLimits::default(),
            tx,
            tail.clone(),
            result_tx,
        )
        .await;
        let mut events = Vec::new();
        while let Ok(e) = rx.try_recv() {
            events.push(e);
        }
        let tail = tail.lock().map(|t| t.text()).unwrap_or_default();
        let result = result_rx.borrow().clone();
        Pumped {
            end,
            events,
            tail,
            result,
        }
    }

    #[tokio::test]
    async fn pumps_plain_output_and_structured_lines() {
        let stdout = concat!(
            "starting\n",
            "{\"mosaic\":\"step.started\",\"step\":\"build\"}\n",
            "compiling a\r\n",
            "compiling b\n",
            "{\"mosaic\":\"progress\",\"percent\":50}\n",
            "{\"mosaic\":\"step.completed\",\"step\":\"build\"}\n",
            "done"
        );
        let stderr = "{\"mosaic\":\"status\",\"message\":\"not on stderr\"}\n";
        let p = pump_bytes(stdout.as_bytes(), stderr.as_bytes(), Format::Plain).await;
        let mut stdout_events: Vec<_> = p
            .events
            .iter()
            .filter(|e| {
                !matches!(
                    e,
                    AgentEvent::Output {
                        stream: OutputStream::Stderr,
                        ..
                    }
                )
            })
            .cloned()
            .collect();
        stdout_events.retain(|e| !matches!(e, AgentEvent::Output { text, .. } if text.is_empty()));
        assert_eq!(
            stdout_events,
            [
                out(OutputStream::Stdout, "", "starting", 1),
                AgentEvent::StepStarted {
                    step: "build".into()
                },
                out(OutputStream::Stdout, "build", "compiling a\ncompiling b", 2),
                AgentEvent::Progress {
                    percent: 50,
                    message: String::new()
                },
                AgentEvent::StepCompleted {
                    step: "build".into()
                },
                out(OutputStream::Stdout, "", "done", 1),
            ]
        );
        assert!(p.events.contains(&out(
            OutputStream::Stderr,
            "",
            r#"{"mosaic":"status","message":"not on stderr"}"#,
            1
        )));
        assert_eq!(p.end.bytes_read, len_u64(stdout.len() + stderr.len()));
        assert_eq!(p.end.events_sent, len_u64(p.events.len()));
        assert_eq!((p.end.dropped_lines, p.end.events_undelivered), (0, 0));
        assert!(p.tail.contains("compiling b") && p.tail.contains("not on stderr"));
        assert_eq!(p.result, None);
        assert_eq!(p.end.claude_result, None);
    }

    #[tokio::test]
    async fn pumps_claude_stream_json_and_publishes_the_result() {
        let stdout = concat!(
            r#"{"type":"system","subtype":"init","session_id":"s1","model":"m"}"#,
            "\n",
            r#"{"type":"assistant","message":{"id":"msg1","model":"m","content":[{"type":"tool_use","id":"t1","name":"Bash","input":{"command":"ls"}}],"usage":{"input_tokens":5,"output_tokens":2}}}"#,
            "\n",
            "[debug] not json\n",
            r#"{"type":"assistant","message":{"id":"msg2","model":"m","content":[{"type":"text","text":"All done."}],"usage":{"input_tokens":1,"output_tokens":3}}}"#,
            "\n",
            r#"{"subtype":"success","is_error":false,"result":"All done.","num_turns":2,"type":"result"}"#,
            "\n",
        );
        // A structured line is not stream JSON: it is shown, not obeyed.
        let stdout = format!("{stdout}{}\n", r#"{"mosaic":"status","message":"x"}"#);
        let p = pump_bytes(stdout.as_bytes(), b"warning\n", Format::ClaudeStreamJson).await;
        let result = p.result.expect("the result is published");
        assert!(!result.is_error && result.text == "All done." && result.num_turns == Some(2));
        assert_eq!(p.end.claude_result, Some(result));
        let tools: Vec<_> = p
            .events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::ToolCalled { tool, call_id, .. } => {
                    Some((tool.as_str(), call_id.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(tools, [("Bash", "t1")]);
        let outputs: Vec<_> = p
            .events
            .iter()
            .filter_map(|e| match e {
                AgentEvent::Output { stream, text, .. } => Some((*stream, text.as_str())),
                _ => None,
            })
            .collect();
        // The two streams are read concurrently: only each one's order is given.
        let (stdout_texts, stderr_texts): (Vec<_>, Vec<_>) = outputs
            .into_iter()
            .partition(|(stream, _)| *stream == OutputStream::Stdout);
        assert_eq!(
            stdout_texts,
            [
                (OutputStream::Stdout, "[debug] not json"),
                (OutputStream::Stdout, "All done."),
                (OutputStream::Stdout, r#"{"mosaic":"status","message":"x"}"#),
            ]
        );
        assert_eq!(stderr_texts, [(OutputStream::Stderr, "warning")]);
        assert!(
            p.events
                .iter()
                .all(|e| !matches!(e, AgentEvent::Status { .. }))
        );
    }

    #[tokio::test]
    async fn publishes_the_result_while_the_process_still_runs() {
        let (mut writer, reader) = tokio::io::duplex(4096);
        let (tx, _rx) = mpsc::channel(16);
        let (result_tx, mut result_rx) = watch::channel(None);
        let pumping = tokio::spawn(pump(
            reader,
            tokio::io::empty(),
            Format::ClaudeStreamJson,
            OutputLimits::default(),
            tx,
            Arc::default(),
            result_tx,
        ));
        writer
            .write_all(b"{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false}\n")
            .await
            .expect("write");
        // The pipe stays open, as when the CLI hangs after its result.
        let seen =
            tokio::time::timeout(Duration::from_secs(10), result_rx.wait_for(Option::is_some))
                .await
                .expect("the result is published before the stream ends")
                .expect("the pump is alive")
                .clone();
        assert!(seen.is_some_and(|r| r.succeeded()));
        drop(writer);
        let end = pumping.await.expect("pump");
        assert!(end.claude_result.is_some());
    }

    #[tokio::test]
    async fn flushes_a_quiet_batch_without_waiting_for_the_end() {
        let (mut writer, reader) = tokio::io::duplex(4096);
        let (tx, mut rx) = mpsc::channel(16);
        let (result_tx, _) = watch::channel(None);
        let pumping = tokio::spawn(pump(
            reader,
            tokio::io::empty(),
            Format::Plain,
            OutputLimits::default(),
            tx,
            Arc::default(),
            result_tx,
        ));
        writer.write_all(b"one\ntwo\n").await.expect("write");
        let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a batch is sent once it has waited flush_after");
        assert_eq!(first, Some(out(OutputStream::Stdout, "", "one\ntwo", 2)));
        drop(writer);
        let end = pumping.await.expect("pump");
        assert_eq!(end.events_sent, 1);
    }

    #[tokio::test]
    async fn a_claude_line_too_long_to_parse_shows_once_cut() {
        let limits = OutputLimits {
            max_json_line_bytes: 20_000,
            ..OutputLimits::default()
        };
        let long = format!(
            r#"{{"type":"user","message":{{"content":"{}"}}}}"#,
            "z".repeat(50_000)
        );
        let stdout = format!("{long}\n{}\n", r#"{"type":"result","is_error":true}"#);
        let (tx, mut rx) = mpsc::channel(64);
        let (result_tx, _result_rx) = watch::channel(None);
        let end = pump(
            stdout.as_bytes(),
            &b""[..],
            Format::ClaudeStreamJson,
            limits,
            tx,
            Arc::default(),
            result_tx,
        )
        .await;
        let first = rx.try_recv().expect("an output event");
        assert!(
            matches!(&first, AgentEvent::Output { text, partial: false, .. }
            if text.len() == MAX_OUTPUT_BYTES && long.starts_with(text.as_str()))
        );
        assert!(end.claude_result.is_some_and(|r| r.is_error));
    }

    #[tokio::test]
    async fn a_full_sink_never_blocks_and_counts_as_dropped() {
        let (tx, mut rx) = mpsc::channel(1);
        let (result_tx, _) = watch::channel(None);
        let line = "x".repeat(99) + "\n";
        let stdout = line.repeat(20_000);
        let end = tokio::time::timeout(
            Duration::from_secs(30),
            pump(
                stdout.as_bytes(),
                &b""[..],
                Format::Plain,
                OutputLimits::default(),
                tx,
                Arc::default(),
                result_tx,
            ),
        )
        .await
        .expect("the pump finishes although nobody reads its events");
        assert_eq!(end.events_sent, 1);
        assert!(end.events_undelivered > 0);
        let Ok(AgentEvent::Output { lines, .. }) = rx.try_recv() else {
            panic!("one output event");
        };
        assert_eq!(u64::from(lines) + end.dropped_lines, 20_000);
    }

    /// Writes `total` bytes of `pattern` into a pipe as fast as the pump reads it; returns how
    /// the pump ended and the lines, bytes and reported drops of the events received.
    async fn flood(total: usize, pattern: Vec<u8>) -> (PumpEnd, u64, u64, u64) {
        let (mut writer, reader) = tokio::io::duplex(64 * 1024);
        let writing = tokio::spawn(async move {
            let mut written = 0;
            while written < total {
                if writer.write_all(&pattern).await.is_err() {
                    break;
                }
                written += pattern.len();
            }
            written
        });
        let (tx, mut rx) = mpsc::channel(256);
        let reading = tokio::spawn(async move {
            let (mut lines, mut bytes, mut reported) = (0u64, 0u64, 0u64);
            while let Some(e) = rx.recv().await {
                if let AgentEvent::Output {
                    text,
                    lines: n,
                    dropped_lines,
                    ..
                } = e
                {
                    lines += u64::from(n);
                    bytes += len_u64(text.len());
                    reported += dropped_lines;
                }
            }
            (lines, bytes, reported)
        });
        let (result_tx, _) = watch::channel(None);
        let started = std::time::Instant::now();
        let end = pump(
            reader,
            &b""[..],
            Format::Plain,
            OutputLimits::default(),
            tx,
            Arc::default(),
            result_tx,
        )
        .await;
        let written = writing.await.expect("writer");
        let (lines, bytes, reported) = reading.await.expect("reader");
        // The budget: a burst plus the sustained rate over the time taken (a second's slack).
        let secs = started.elapsed().as_secs() + 1;
        assert!(
            bytes <= 512 * 1024 + 64 * 1024 * secs,
            "kept {bytes} bytes in {secs}s"
        );
        assert_eq!(end.bytes_read, len_u64(written));
        (end, lines, bytes, reported)
    }

    #[tokio::test]
    async fn a_flood_of_lines_keeps_memory_bounded_and_reports_drops() {
        // 50 MB of 100-byte lines.
        let pattern = ("y".repeat(99) + "\n").repeat(650).into_bytes();
        let (end, lines, _, reported) = flood(50_000_000, pattern).await;
        let written_lines = end.bytes_read / 100;
        assert_eq!(lines + end.dropped_lines, written_lines);
        assert!(end.dropped_lines > written_lines / 2);
        assert_eq!(reported, end.dropped_lines, "every drop is reported");
        assert!(
            end.peak_buffered_bytes <= 2 * MAX_OUTPUT_BYTES + READ_BYTES,
            "held {} bytes",
            end.peak_buffered_bytes
        );
    }

    #[tokio::test]
    async fn an_endless_line_keeps_memory_bounded() {
        let pattern = vec![b'q'; 64 * 1024];
        let (end, lines, _, reported) = flood(20_000_000, pattern).await;
        // The one line was cut short by the budget, so it counts as one dropped line.
        assert_eq!((lines, end.dropped_lines, reported), (0, 1, 1));
        assert!(end.dropped_bytes > 19_000_000);
        assert!(end.peak_buffered_bytes <= 2 * MAX_OUTPUT_BYTES + READ_BYTES);
    }
}
