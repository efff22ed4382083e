//! Claude: the lines Claude Code prints with `--output-format stream-json` (`--verbose`) turned
//! into [`AgentEvent`]s, and the run's final `result`.
//!
//! This module owns the mapping and the little state it needs: which messages' token usage
//! was already counted, tool names by call id, and the result. It never reads a pipe or stops
//! a process (the `output` pump feeds it lines and publishes the result; the runner acts on
//! it), and no line is ever an error: the CLI's output shape drifts between versions, and a
//! watcher is better served by seeing an odd line than by losing the run.
//!
//! The mapping, line by line (keys may come in any order):
//! - `assistant`: each `tool_use` (and `server_tool_use`) block becomes `ToolCalled` (`id`,
//!   `name`, `input` as compact JSON cut to 4 KiB); each `text` block becomes `Output` on
//!   stdout, the assistant's words being what a watcher wants to see (batched and cut like
//!   any output); `thinking` blocks are left out. The blocks of one message arrive as separate
//!   lines with the same `message.id`, each carrying the same `message.usage`, so usage becomes
//!   one `TokensUsed` (model from `message.model`) per message id; usage of a message without
//!   an id, or all zero (the CLI's `<synthetic>` error messages), is not reported.
//! - `user`: a `tool_result` with `is_error: true` becomes `Output` on stderr,
//!   `tool <name> failed: <content>` (name found from the call's id, else the id; content a
//!   string or text blocks, cut to 1 KiB); other user lines (results that succeeded, prompts,
//!   sub-agent prompts) are left out.
//! - `result`: recorded as a [`ClaudeResult`]. Success is `is_error == false` whatever the
//!   `subtype` says (`is_error: true` with `subtype: "success"` happens); if `is_error` is
//!   missing, anything but `subtype: "success"` is an error. Its text is `result`, or when
//!   that is missing or empty the `errors` joined by newlines. An error result also becomes
//!   `Output` on stderr, since otherwise a watcher never learns why the run failed. Per-message
//!   usage undercounts (the CLI writes it when a message starts, before most output tokens),
//!   so the result's totals top it up: per model from `modelUsage` when present, else from
//!   `usage` (for the last model seen), a `TokensUsed` for whatever the totals exceed what was
//!   already reported, field by field, never less than zero. The sum of all `TokensUsed` is
//!   thus the result's totals, never counted twice; without a `result` line it is the
//!   per-message sum.
//! - `system`: `init` gives the session id and model; `api_retry` becomes a `Status` (the run
//!   is stalled, not failed, and a watcher should see why); other subtypes are left out.
//! - `stream_event` (partial messages), `rate_limit_event` and types this mapper does not know
//!   are left out: the complete `assistant` lines carry the same content.
//! - A line that is not a JSON object with a string `type` (debug logs on stdout, a line the
//!   CLI cut short, one split by another event written into it) becomes `Output` on stdout,
//!   cut to 8 KiB; blank lines are left out.

use std::collections::{HashMap, VecDeque};

use serde_json::Value;

use crate::events::{AgentEvent, MAX_OUTPUT_BYTES, MAX_TEXT_BYTES, OutputStream, truncate};
use crate::output::{compact_json, text_events};

/// How many message ids (for usage) and tool call ids (for names) are remembered; blocks of
/// one message arrive together, so only recent ones matter, and a long run must not grow.
const REMEMBERED_IDS: usize = 1024;
/// Most models whose reported tokens are kept apart; further ones share one entry.
const MAX_MODELS: usize = 32;

/// The final `result` line of a run.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ClaudeResult {
    /// The run failed; this, not `subtype`, decides.
    pub is_error: bool,
    /// `success`, `error_max_turns`, `error_during_execution`, …
    pub subtype: String,
    /// The final answer, or the errors joined by newlines; cut to [`MAX_OUTPUT_BYTES`].
    pub text: String,
    pub num_turns: Option<u64>,
    pub duration_ms: Option<u64>,
    pub total_cost_usd: Option<f64>,
    pub session_id: String,
    /// Why the run ended, in CLIs that say (`completed`, `api_error`, …), or empty.
    pub terminal_reason: String,
}

impl ClaudeResult {
    pub fn succeeded(&self) -> bool {
        !self.is_error
    }
}

/// Token counts, as in [`AgentEvent::TokensUsed`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TokenCounts {
    pub input: u64,
    pub output: u64,
    pub cache_creation_input: u64,
    pub cache_read_input: u64,
}

impl TokenCounts {
    /// From the API's `usage` object (`message.usage`, the result's `usage`).
    fn from_usage(usage: &Value) -> Self {
        TokenCounts {
            input: u64_field(usage, "input_tokens"),
            output: u64_field(usage, "output_tokens"),
            cache_creation_input: u64_field(usage, "cache_creation_input_tokens"),
            cache_read_input: u64_field(usage, "cache_read_input_tokens"),
        }
    }

    /// From one model's entry of the result's `modelUsage`.
    fn from_model_usage(usage: &Value) -> Self {
        TokenCounts {
            input: u64_field(usage, "inputTokens"),
            output: u64_field(usage, "outputTokens"),
            cache_creation_input: u64_field(usage, "cacheCreationInputTokens"),
            cache_read_input: u64_field(usage, "cacheReadInputTokens"),
        }
    }

    fn is_zero(self) -> bool {
        self == TokenCounts::default()
    }

    fn add(&mut self, other: TokenCounts) {
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.cache_creation_input = self
            .cache_creation_input
            .saturating_add(other.cache_creation_input);
        self.cache_read_input = self.cache_read_input.saturating_add(other.cache_read_input);
    }

    /// What `self` (a total) has beyond `reported`, field by field.
    fn beyond(self, reported: TokenCounts) -> TokenCounts {
        TokenCounts {
            input: self.input.saturating_sub(reported.input),
            output: self.output.saturating_sub(reported.output),
            cache_creation_input: self
                .cache_creation_input
                .saturating_sub(reported.cache_creation_input),
            cache_read_input: self
                .cache_read_input
                .saturating_sub(reported.cache_read_input),
        }
    }

    fn event(self, model: String) -> AgentEvent {
        AgentEvent::TokensUsed {
            model,
            input: self.input,
            output: self.output,
            cache_creation_input: self.cache_creation_input,
            cache_read_input: self.cache_read_input,
        }
    }
}

/// A map that forgets its oldest keys beyond [`REMEMBERED_IDS`].
#[derive(Debug)]
struct Recent<V> {
    order: VecDeque<String>,
    map: HashMap<String, V>,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Recent {
            order: VecDeque::new(),
            map: HashMap::new(),
        }
    }
}

impl<V> Recent<V> {
    /// Adds `key` unless present; returns whether it was added.
    fn insert(&mut self, key: &str, value: V) -> bool {
        if self.map.contains_key(key) {
            return false;
        }
        if self.order.len() >= REMEMBERED_IDS
            && let Some(oldest) = self.order.pop_front()
        {
            self.map.remove(&oldest);
        }
        self.order.push_back(key.to_owned());
        self.map.insert(key.to_owned(), value);
        true
    }

    fn get(&self, key: &str) -> Option<&V> {
        self.map.get(key)
    }
}

/// Maps one run's stream-json lines, in order, to events (see the module docs).
#[derive(Debug, Default)]
pub struct ClaudeStream {
    usage_counted: Recent<()>,
    tool_names: Recent<String>,
    /// Tokens reported so far, by model.
    reported: HashMap<String, TokenCounts>,
    model: String,
    session_id: String,
    result: Option<ClaudeResult>,
    results_seen: u64,
    lines: u64,
    unparsed: u64,
}

impl ClaudeStream {
    /// The events one line of stdout (without its newline) stands for.
    pub fn line(&mut self, line: &str) -> Vec<AgentEvent> {
        self.lines += 1;
        if line.trim().is_empty() {
            return Vec::new();
        }
        let value: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(_) => return self.unparsed(line),
        };
        match value.get("type").and_then(Value::as_str) {
            Some("assistant") => self.assistant(&value),
            Some("user") => self.user(&value),
            Some("result") => self.final_result(&value),
            Some("system") => self.system(&value),
            Some(_) => Vec::new(),
            None => self.unparsed(line),
        }
    }

    /// The last `result` line seen.
    pub fn result(&self) -> Option<&ClaudeResult> {
        self.result.as_ref()
    }

    /// How many `result` lines were seen (normally one; a run stopped after its result may
    /// write another).
    pub fn results_seen(&self) -> u64 {
        self.results_seen
    }

    /// The session id, from `system` `init` or the result, or empty.
    pub fn session_id(&self) -> &str {
        &self.session_id
    }

    /// The model of the last assistant message (or `init`), or empty.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The sum of all `TokensUsed` events returned so far.
    pub fn tokens(&self) -> TokenCounts {
        let mut sum = TokenCounts::default();
        for t in self.reported.values() {
            sum.add(*t);
        }
        sum
    }

    /// Tokens reported so far for `model`.
    pub fn tokens_of(&self, model: &str) -> TokenCounts {
        self.reported.get(model).copied().unwrap_or_default()
    }

    /// Lines taken, and how many of them were not stream JSON.
    pub fn lines_seen(&self) -> (u64, u64) {
        (self.lines, self.unparsed)
    }

    fn unparsed(&mut self, line: &str) -> Vec<AgentEvent> {
        self.unparsed += 1;
        vec![AgentEvent::Output {
            stream: OutputStream::Stdout,
            step: String::new(),
            text: truncate(line.to_owned(), MAX_OUTPUT_BYTES),
            lines: 1,
            partial: false,
            dropped_lines: 0,
            dropped_bytes: 0,
        }]
    }

    fn assistant(&mut self, line: &Value) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        let Some(message) = line.get("message") else {
            return out;
        };
        let model = str_field(message, "model");
        if !model.is_empty() {
            self.model = cut(model);
        }
        for block in array_field(message, "content") {
            match str_field(block, "type") {
                "text" => out.extend(text_events(OutputStream::Stdout, str_field(block, "text"))),
                "tool_use" | "server_tool_use" => {
                    let id = str_field(block, "id");
                    let name = str_field(block, "name");
                    if !id.is_empty() {
                        self.tool_names.insert(id, cut(name));
                    }
                    out.push(AgentEvent::ToolCalled {
                        tool: cut(name),
                        call_id: cut(id),
                        input_json: block.get("input").map(compact_json).unwrap_or_default(),
                    });
                }
                _ => {}
            }
        }
        let id = str_field(message, "id");
        if let Some(usage) = message.get("usage")
            && !id.is_empty()
            && self.usage_counted.insert(id, ())
        {
            let tokens = TokenCounts::from_usage(usage);
            if !tokens.is_zero() {
                let model = if model.is_empty() {
                    self.model.clone()
                } else {
                    cut(model)
                };
                out.push(self.count(model, tokens));
            }
        }
        out
    }

    fn user(&mut self, line: &Value) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        let blocks = line.get("message").map(|m| array_field(m, "content"));
        for block in blocks.into_iter().flatten() {
            if str_field(block, "type") != "tool_result"
                || block.get("is_error").and_then(Value::as_bool) != Some(true)
            {
                continue;
            }
            let id = str_field(block, "tool_use_id");
            let name = match self.tool_names.get(id) {
                Some(name) if !name.is_empty() => name.as_str(),
                _ if id.is_empty() => "?",
                _ => id,
            };
            let content = truncate(content_text(block.get("content")), MAX_TEXT_BYTES);
            let text = if content.is_empty() {
                format!("tool {name} failed")
            } else {
                format!("tool {name} failed: {content}")
            };
            out.extend(text_events(OutputStream::Stderr, &text));
        }
        out
    }

    fn final_result(&mut self, line: &Value) -> Vec<AgentEvent> {
        let subtype = str_field(line, "subtype");
        let is_error = line
            .get("is_error")
            .and_then(Value::as_bool)
            .unwrap_or(subtype != "success");
        let text = match line.get("result").and_then(Value::as_str) {
            Some(text) if !text.is_empty() => text.to_owned(),
            _ => errors_text(line.get("errors")),
        };
        let result = ClaudeResult {
            is_error,
            subtype: cut(subtype),
            text: truncate(text, MAX_OUTPUT_BYTES),
            num_turns: line.get("num_turns").and_then(Value::as_u64),
            duration_ms: line.get("duration_ms").and_then(Value::as_u64),
            total_cost_usd: line.get("total_cost_usd").and_then(Value::as_f64),
            session_id: cut(str_field(line, "session_id")),
            terminal_reason: cut(str_field(line, "terminal_reason")),
        };
        let mut out = self.top_up_tokens(line);
        if result.is_error {
            let text = if result.text.is_empty() {
                format!("claude ended with an error, subtype {}", result.subtype)
            } else {
                format!(
                    "claude ended with an error, subtype {}: {}",
                    result.subtype, result.text
                )
            };
            out.extend(text_events(OutputStream::Stderr, &text));
        }
        if !result.session_id.is_empty() {
            self.session_id.clone_from(&result.session_id);
        }
        self.result = Some(result);
        self.results_seen += 1;
        out
    }

    /// Reports what the result's totals have beyond what was reported per message.
    fn top_up_tokens(&mut self, line: &Value) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        let by_model = line
            .get("modelUsage")
            .and_then(Value::as_object)
            .filter(|m| !m.is_empty());
        if let Some(by_model) = by_model {
            for (model, usage) in by_model {
                let model = cut(model);
                let missing = TokenCounts::from_model_usage(usage).beyond(self.tokens_of(&model));
                if !missing.is_zero() {
                    out.push(self.count(model, missing));
                }
            }
        } else if let Some(usage) = line.get("usage") {
            let missing = TokenCounts::from_usage(usage).beyond(self.tokens());
            if !missing.is_zero() {
                out.push(self.count(self.model.clone(), missing));
            }
        }
        out
    }

    /// Records `tokens` as reported for `model` and returns the event reporting them.
    fn count(&mut self, model: String, tokens: TokenCounts) -> AgentEvent {
        let key = if self.reported.contains_key(&model) || self.reported.len() < MAX_MODELS {
            model.clone()
        } else {
            String::new()
        };
        self.reported.entry(key).or_default().add(tokens);
        tokens.event(model)
    }

    fn system(&mut self, line: &Value) -> Vec<AgentEvent> {
        match str_field(line, "subtype") {
            "init" => {
                let session = str_field(line, "session_id");
                if !session.is_empty() {
                    self.session_id = cut(session);
                }
                let model = str_field(line, "model");
                if !model.is_empty() {
                    self.model = cut(model);
                }
                Vec::new()
            }
            "api_retry" => vec![AgentEvent::Status {
                message: cut(&retry_message(line)),
            }],
            _ => Vec::new(),
        }
    }
}

/// `claude api retry 2/10 after status 529: overloaded (next in 1000 ms)`, with what is known.
fn retry_message(line: &Value) -> String {
    let mut message = String::from("claude api retry");
    if let Some(attempt) = line.get("attempt").and_then(Value::as_u64) {
        message.push_str(&format!(" {attempt}"));
        if let Some(max) = line.get("max_retries").and_then(Value::as_u64) {
            message.push_str(&format!("/{max}"));
        }
    }
    if let Some(status) = line.get("error_status").and_then(Value::as_u64) {
        message.push_str(&format!(" after status {status}"));
    }
    match line.get("error") {
        Some(Value::String(e)) if !e.is_empty() => message.push_str(&format!(": {e}")),
        Some(e @ Value::Object(_)) => message.push_str(&format!(": {e}")),
        _ => {}
    }
    if let Some(delay) = line.get("retry_delay_ms").and_then(Value::as_u64) {
        message.push_str(&format!(" (next in {delay} ms)"));
    }
    message
}

/// A tool result's content: a string, or the text of its text blocks joined by newlines.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// A result's `errors`, strings or objects with a `message`, joined by newlines.
fn errors_text(errors: Option<&Value>) -> String {
    let Some(Value::Array(errors)) = errors else {
        return String::new();
    };
    errors
        .iter()
        .map(|e| match e {
            Value::String(s) => s.clone(),
            other => other
                .get("message")
                .and_then(Value::as_str)
                .map_or_else(|| other.to_string(), str::to_owned),
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn str_field<'a>(value: &'a Value, key: &str) -> &'a str {
    value.get(key).and_then(Value::as_str).unwrap_or("")
}

fn u64_field(value: &Value, key: &str) -> u64 {
    value.get(key).and_then(Value::as_u64).unwrap_or(0)
}

fn array_field<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

fn cut(s: &str) -> String {
    truncate(s.to_owned(), MAX_TEXT_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/claude-stream-json");

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(format!("{FIXTURES}/{name}"))
            .unwrap_or_else(|e| panic!("cannot read fixture {name}: {e}"))
    }

    /// Each line's events, by line number (from 1), with the stream after the last line.
    fn run_lines<'a>(
        lines: impl Iterator<Item = &'a str>,
    ) -> (Vec<(usize, AgentEvent)>, ClaudeStream) {
        let mut stream = ClaudeStream::default();
        let mut events = Vec::new();
        for (i, line) in lines.enumerate() {
            events.extend(stream.line(line).into_iter().map(|e| (i + 1, e)));
        }
        (events, stream)
    }

    fn run(name: &str) -> (Vec<(usize, AgentEvent)>, ClaudeStream) {
        let text = fixture(name);
        run_lines(text.lines())
    }

    /// A short, comparable description of an event.
    fn describe(e: &AgentEvent) -> String {
        match e {
            AgentEvent::Output {
                stream,
                text,
                lines,
                partial,
                ..
            } => format!(
                "{} {lines}{} {text}",
                stream.as_str(),
                if *partial { "+" } else { "" }
            ),
            AgentEvent::ToolCalled { tool, call_id, .. } => format!("tool {tool} {call_id}"),
            AgentEvent::TokensUsed {
                model,
                input,
                output,
                cache_creation_input,
                cache_read_input,
            } => {
                format!("tokens {model} {input}/{output}/{cache_creation_input}/{cache_read_input}")
            }
            AgentEvent::Status { message } => format!("status {message}"),
            other => format!("{other:?}"),
        }
    }

    fn described(events: &[(usize, AgentEvent)]) -> Vec<(usize, String)> {
        events.iter().map(|(n, e)| (*n, describe(e))).collect()
    }

    fn tools(events: &[(usize, AgentEvent)]) -> Vec<(String, String)> {
        events
            .iter()
            .filter_map(|(_, e)| match e {
                AgentEvent::ToolCalled { tool, call_id, .. } => {
                    Some((tool.clone(), call_id.clone()))
                }
                _ => None,
            })
            .collect()
    }

    fn tokens(input: u64, output: u64, creation: u64, read: u64) -> TokenCounts {
        TokenCounts {
            input,
            output,
            cache_creation_input: creation,
            cache_read_input: read,
        }
    }

    fn input_of(events: &[(usize, AgentEvent)], id: &str) -> Value {
        events
            .iter()
            .find_map(|(_, e)| match e {
                AgentEvent::ToolCalled {
                    call_id,
                    input_json,
                    ..
                } if call_id == id => serde_json::from_str(input_json).ok(),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no tool call {id}"))
    }

    #[test]
    fn maps_the_real_transcript_with_failing_tools() {
        // Each line wraps the CLI's object as `.raw`.
        let wrapped = fixture("tool-errors-wrapped.jsonl");
        let raw: Vec<String> = wrapped
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).expect("fixture lines are JSON");
                v["raw"].to_string()
            })
            .collect();
        let (events, stream) = run_lines(raw.iter().map(String::as_str));
        let opus = "claude-opus-4-20250514";
        assert_eq!(
            described(&events),
            [
                (2, "stdout 1 I'll write 'Hello World' to the specified file path.".into()),
                (2, format!("tokens {opus} 3/4/1650/12945")),
                (3, "tool Write toolu_01HE8KxH8o14khT9uUXxrvVK".into()),
                (
                    4,
                    "stderr 1 tool Write failed: ENOENT: no such file or directory, mkdir '/nonexistent/path'"
                        .into()
                ),
                (
                    5,
                    "stdout 1 The directory `/nonexistent/path/` doesn't exist. Let me create it first:"
                        .into()
                ),
                (5, format!("tokens {opus} 7/1/264/14595")),
                (6, "tool Bash toolu_01D5sXwJL8a7cgqD6b4PP9vN".into()),
                (
                    7,
                    "stderr 1 tool Bash failed: Claude requested permissions to use Bash, but you haven't granted it yet."
                        .into()
                ),
                (
                    8,
                    "stdout 1 I cannot write to `/nonexistent/path/test.txt` because the directory doesn't exist and I don't have permission to create it with Bash."
                        .into()
                ),
                (8, format!("tokens {opus} 7/2/136/14859")),
                // The result's usage has 240 output tokens where the messages said 7.
                (9, format!("tokens {opus} 0/233/0/0")),
            ]
        );
        assert_eq!(
            input_of(&events, "toolu_01HE8KxH8o14khT9uUXxrvVK"),
            json!({"file_path": "/nonexistent/path/test.txt", "content": "Hello World"})
        );
        assert_eq!(stream.tokens(), tokens(17, 240, 2050, 42399));
        let result = stream.result().expect("a result");
        assert!(result.succeeded());
        assert_eq!(result.subtype, "success");
        assert_eq!(result.num_turns, Some(7));
        assert_eq!(result.duration_ms, Some(17488));
        assert!(
            result
                .total_cost_usd
                .is_some_and(|c| (c - 0.1211318).abs() < 1e-9)
        );
        assert!(result.text.starts_with("I cannot write to"));
        assert_eq!(stream.session_id(), "5e3bd3ed-d968-4b1c-b026-d0c25df96d43");
        assert_eq!(stream.lines_seen(), (9, 0));
    }

    #[test]
    fn maps_the_2026_shape() {
        let (events, stream) = run("constructed-2026-shape.jsonl");
        let sonnet = "claude-sonnet-5";
        let haiku = "claude-haiku-4-5";
        let (before_result, from_result): (Vec<_>, Vec<_>) =
            events.iter().cloned().partition(|(n, _)| *n < 37);
        assert_eq!(
            described(&before_result),
            [
                (9, format!("tokens {sonnet} 6/9/3000/12000")),
                (12, "stdout 1 I'll run the failing test first.".into()),
                (17, "tool Bash toolu_01A".into()),
                (
                    19,
                    "stderr 2 tool Bash failed: error[E0425]: cannot find value `x` in this scope\n  --> src/lib.rs:3:5"
                        .into()
                ),
                (
                    23,
                    "status claude api retry 1/10 after status 529: overloaded (next in 500 ms)".into()
                ),
                (24, "tool Agent toolu_01B".into()),
                (24, format!("tokens {sonnet} 4/80/500/15000")),
                (27, "tool Grep toolu_01C".into()),
                (27, format!("tokens {haiku} 900/40/0/0")),
                (29, "stdout 1 x is defined in src/lib.rs on line 12.".into()),
                (29, format!("tokens {haiku} 950/20/0/0")),
                (32, "stdout 3 Found it.\n\nFixing the import:".into()),
                (32, "tool Edit toolu_01E".into()),
                (32, format!("tokens {sonnet} 3/60/200/15500")),
                (34, "stdout 1 Fixed: the test now finds `x`.".into()),
                (34, format!("tokens {sonnet} 2/30/100/15700")),
            ]
        );
        // The result tops up each model's output tokens from `modelUsage` (in whatever order).
        let mut top_ups: Vec<_> = from_result.iter().map(|(_, e)| describe(e)).collect();
        top_ups.sort();
        assert_eq!(
            top_ups,
            [
                format!("tokens {haiku} 0/35/0/0"),
                format!("tokens {sonnet} 0/241/0/0")
            ]
        );
        assert_eq!(stream.tokens_of(sonnet), tokens(15, 420, 3800, 58200));
        assert_eq!(stream.tokens_of(haiku), tokens(1850, 95, 0, 0));
        assert_eq!(
            input_of(&events, "toolu_01A"),
            json!({"command": "cargo test -p spoke", "description": "Run the failing test"})
        );
        let result = stream.result().expect("a result");
        assert!(result.succeeded());
        assert_eq!(result.terminal_reason, "completed");
        assert_eq!(result.num_turns, Some(4));
        assert_eq!(result.total_cost_usd, Some(0.2345));
        assert_eq!(result.text, "Fixed: the test now finds `x`.");
        assert_eq!(stream.session_id(), "7f3c2a10-2026-4e7b-9c1d-5a6b7c8d9e0f");
        assert_eq!(stream.model(), sonnet);
        assert_eq!(stream.lines_seen(), (37, 0));
    }

    #[test]
    fn is_error_decides_even_when_the_subtype_says_success() {
        let (events, stream) = run("constructed-is-error-success.jsonl");
        let result = stream.result().expect("a result");
        assert!(result.is_error && !result.succeeded());
        assert_eq!(result.subtype, "success");
        assert_eq!(result.terminal_reason, "api_error");
        assert!(result.text.starts_with("API Error: 404"));
        // The synthetic message has all-zero usage: no tokens at all.
        assert_eq!(stream.tokens(), TokenCounts::default());
        let d = described(&events);
        assert_eq!(d.len(), 2);
        assert!(d[0].1.starts_with("stdout 1 API Error: 404"));
        assert!(
            d[1].1.starts_with(
                "stderr 1 claude ended with an error, subtype success: API Error: 404"
            )
        );
    }

    #[test]
    fn an_error_result_without_a_result_key_uses_its_errors() {
        let (events, stream) = run("constructed-error-no-result-key.jsonl");
        let result = stream.result().expect("a result");
        assert!(result.is_error);
        assert_eq!(result.subtype, "error_during_execution");
        assert_eq!(
            result.text,
            "Request was aborted.\nprocess terminated by signal SIGTERM"
        );
        assert_eq!(result.num_turns, Some(2));
        assert_eq!(
            tools(&events),
            [("Bash".to_owned(), "toolu_01S".to_owned())]
        );
        let last = events.last().map(|(_, e)| describe(e)).unwrap_or_default();
        assert_eq!(
            last,
            "stderr 2 claude ended with an error, subtype error_during_execution: Request was aborted.\nprocess terminated by signal SIGTERM"
        );
        // No `modelUsage`: the top-up comes from `usage`, for the last model seen.
        assert_eq!(stream.tokens_of("claude-sonnet-5"), tokens(12, 50, 0, 9000));
    }

    #[test]
    fn lines_that_are_not_stream_json_become_output() {
        let text = fixture("constructed-cut-lines.jsonl");
        let (events, stream) = run("constructed-cut-lines.jsonl");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[1].chars().count(), 8000);
        let raw = |n: usize| (n, format!("stdout 1 {}", lines[n - 1]));
        assert_eq!(
            described(&events),
            [
                raw(2),
                (4, "stdout 1 Written.".into()),
                (4, "tokens claude-sonnet-5 4/10/0/100".into()),
                raw(5),
                raw(6),
                (8, "tokens claude-sonnet-5 0/390/0/0".into()),
            ]
        );
        // The cut tool call is lost, and its result's success says nothing.
        assert!(tools(&events).is_empty());
        assert!(stream.result().is_some_and(ClaudeResult::succeeded));
        assert_eq!(stream.lines_seen(), (8, 3));
    }

    #[test]
    fn debug_log_lines_mixed_into_stdout_become_output() {
        let (events, stream) = run("constructed-debug-logs.jsonl");
        let d = described(&events);
        let outputs: Vec<&str> = d
            .iter()
            .filter_map(|(_, s)| s.strip_prefix("stdout 1 "))
            .collect();
        assert_eq!(
            outputs,
            [
                "[log_3f9a1c] sending request {",
                "  method: 'post',",
                "  path: '/v1/messages?beta=true',",
                "}",
                "[log_3f9a1c] response start { url: 'https://api.anthropic.com/v1/messages?beta=true', status: 200 }",
                r#"{"level":"debug","msg":"tool permission check","tool":"Read"}"#,
                "Reading the config.",
                "The config sets `retries = 3`.",
            ]
        );
        assert_eq!(
            tools(&events),
            [("Read".to_owned(), "toolu_01R".to_owned())]
        );
        assert!(stream.result().is_some_and(ClaudeResult::succeeded));
        assert_eq!(stream.lines_seen().1, 6);
    }

    #[test]
    fn a_transcript_without_a_result_keeps_the_per_message_tokens() {
        let (events, stream) = run("constructed-no-result.jsonl");
        assert_eq!(stream.result(), None);
        assert_eq!(stream.results_seen(), 0);
        assert_eq!(
            tools(&events),
            [
                ("Bash".to_owned(), "toolu_01N".to_owned()),
                ("Read".to_owned(), "toolu_01M".to_owned())
            ]
        );
        assert_eq!(stream.tokens(), tokens(8, 23, 1200, 30000));
    }

    #[test]
    fn odd_lines_never_fail() {
        let mut s = ClaudeStream::default();
        let deep = "[".repeat(10_000);
        let odd = [
            "",
            "   ",
            "42",
            "null",
            "[1,2]",
            "{}",
            r#"{"type":7}"#,
            r#"{"type":"assistant"}"#,
            r#"{"type":"assistant","message":{"content":"just a string"}}"#,
            r#"{"type":"assistant","message":{"content":[{"type":"tool_use"}]}}"#,
            r#"{"type":"user","message":{"content":[{"type":"tool_result","is_error":true}]}}"#,
            r#"{"type":"result"}"#,
            r#"{"type":"future_thing","x":1}"#,
            r#"{"type":"stream_event","event":{"type":"content_block_delta"}}"#,
            r#"{"type":"rate_limit_event","rate_limit_info":{"status":"allowed"}}"#,
            deep.as_str(),
        ];
        let events: Vec<_> = odd
            .iter()
            .flat_map(|l| s.line(l))
            .map(|e| describe(&e))
            .collect();
        assert_eq!(
            events,
            [
                "stdout 1 42",
                "stdout 1 null",
                "stdout 1 [1,2]",
                "stdout 1 {}",
                r#"stdout 1 {"type":7}"#,
                "tool  ",
                "stderr 1 tool ? failed",
                "stderr 1 claude ended with an error, subtype ",
                &format!("stdout 1 {}", "[".repeat(MAX_OUTPUT_BYTES)),
            ]
        );
        // Without `is_error`, only `success` is success.
        assert!(s.result().is_some_and(|r| r.is_error));
        s.line(r#"{"type":"result","subtype":"success"}"#);
        assert!(s.result().is_some_and(ClaudeResult::succeeded));
        assert_eq!(s.results_seen(), 2);
    }

    #[test]
    fn usage_is_counted_once_per_message_and_ids_are_bounded() {
        let mut s = ClaudeStream::default();
        let line = |id: usize| {
            json!({"type":"assistant","message":{"id":format!("msg_{id}"),"model":"m",
                "content":[],"usage":{"input_tokens":1,"output_tokens":1}}})
            .to_string()
        };
        assert_eq!(s.line(&line(0)).len(), 1);
        assert!(s.line(&line(0)).is_empty());
        for id in 1..=REMEMBERED_IDS * 2 {
            s.line(&line(id));
        }
        assert_eq!(s.usage_counted.map.len(), REMEMBERED_IDS);
        assert_eq!(s.tokens().input, 1 + 2 * REMEMBERED_IDS as u64);
        // Without an id the usage cannot be told apart from a repeat: left to the result.
        let no_id = r#"{"type":"assistant","message":{"model":"m","content":[],"usage":{"input_tokens":5}}}"#;
        assert!(s.line(no_id).is_empty());
    }

    #[test]
    fn long_tool_input_and_failures_are_cut() {
        let mut s = ClaudeStream::default();
        let call = json!({"type":"assistant","message":{"id":"m1","content":[
            {"type":"tool_use","id":"t1","name":"Write","input":{"content":"x".repeat(10_000)}}]}});
        let events = s.line(&call.to_string());
        let [AgentEvent::ToolCalled { input_json, .. }] = &events[..] else {
            panic!("one tool call: {events:?}");
        };
        assert_eq!(input_json.len(), crate::events::MAX_TOOL_INPUT_BYTES);
        let failed = json!({"type":"user","message":{"content":[{"type":"tool_result",
            "tool_use_id":"t1","is_error":true,
            "content":[{"type":"text","text":"y".repeat(5000)},{"type":"image"}]}]}});
        let events = s.line(&failed.to_string());
        let [AgentEvent::Output { text, .. }] = &events[..] else {
            panic!("one output: {events:?}");
        };
        assert!(text.starts_with("tool Write failed: yyy"));
        assert_eq!(text.len(), "tool Write failed: ".len() + MAX_TEXT_BYTES);
    }
}
