//! How `mosaic-hub watch` shows the hub's `WatchResponse` items to a person: plain lines when
//! stdout is a pipe or a file, a scrolling log with a live status block (one line per active
//! job) when it is a terminal, and one JSON object per item for `--output json`
//! ([`json_line`]). This module owns the line formats, the event type names, colors, the status
//! block and its redraw, and the decision that a followed job has ended. It never touches the
//! network, the environment (`NO_COLOR`, `COLUMNS`) or the terminal itself: the caller says
//! whether stdout is a TTY, how wide it is and whether to color, hands in the writer, and turns
//! the returned [`Progress`] into an exit code.
//!
//! Plain lines are `<time> <spoke>/<job short id> <event type> <details>`: stable and
//! greppable, scalars as `key=value`, free text (an error, a gate's message) last after `: `.
//! Text from agents is cleaned before it is shown (escape sequences removed, other control
//! characters replaced), so a job's output cannot move the cursor or recolor the terminal.

use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::io;

use mosaic_shared::pb::admin::v1 as admin;
use mosaic_shared::pb::federation::v1 as pb;
use pb::event::Payload;
use serde_json::{Value, json};

/// Jobs listed in the status block; the rest are summed up as `+N more`. Cursor-up cannot reach
/// lines that scrolled off the top, so the block must stay shorter than any usual terminal.
pub const MAX_STATUS_JOBS: usize = 10;

/// Marks an output line that continues the previous output event's piece of a long line
/// (`Output.partial`), in place of the space after `stdout|`. Pieces are still printed as whole
/// lines: holding a piece back until its line is complete would delay output by an unbounded
/// time, and printing it without a newline would break the status block below it.
pub const CONTINUED: &str = "↪";

/// Ended jobs remembered so that their stragglers (an attempt's end can follow its job's end
/// in the stream) do not bring them back into the status block. A few suffice: stragglers come
/// right after the end.
const RECENTLY_ENDED: usize = 64;
/// Cells of the progress bar in a status line.
const BAR_CELLS: usize = 10;
/// Columns a step name may take in a status line, so the last message keeps some room.
const STEP_COLS: usize = 24;
/// A tool call's input is cut so its line fits the width, but never shorter than this: a few
/// words of a command are worth a wrapped line.
const MIN_TOOL_INPUT_COLS: usize = 40;
/// Status lines need some width; a caller that could not tell gets the classic terminal's.
const FALLBACK_TTY_WIDTH: usize = 80;

/// How to render; the caller decides every field (terminal detection, `NO_COLOR`,
/// `--color`, the terminal's width).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Stdout is a terminal: keep a live status block below the scrolling lines.
    pub tty: bool,
    /// The terminal's width in columns. Status lines are fitted to it (0: 80 columns); in
    /// plain mode it only bounds tool-call inputs, and 0 means unlimited.
    pub width: usize,
    /// Color with ANSI SGR codes (also in plain mode, for `--color=always | less -R`).
    pub color: bool,
    /// The job the watch is scoped to: its end makes [`WatchRenderer::feed`] return
    /// [`Progress::JobEnded`].
    pub follow_job: Option<String>,
    /// Show the agents' stdout and stderr lines (`step.output`).
    pub show_output: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            tty: false,
            width: 0,
            color: false,
            follow_job: None,
            show_output: true,
        }
    }
}

/// Whether the watch should go on after an item.
///
/// The caller maps a followed job's end to the exit code the CLI documents for `watch --job`:
/// `Completed` → 0, `Failed` or `Cancelled` → 3.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    Continue,
    /// The followed job reached a terminal state (an event said so, or the snapshot showed it
    /// already there): stop watching.
    JobEnded {
        state: pb::JobState,
    },
}

/// Renders a watch stream item by item. Holds what the status block needs (the active jobs)
/// and what continues across events (open pieces of long output lines).
#[derive(Debug)]
pub struct WatchRenderer {
    opts: Options,
    /// Active jobs in the order they were first seen (TTY only).
    jobs: Vec<JobLine>,
    /// The last [`RECENTLY_ENDED`] jobs (spoke, job) that left the block.
    ended: VecDeque<(String, String)>,
    /// Output streams (spoke, job, agent, stream) whose last event was a partial piece.
    open_pieces: HashSet<(String, String, String, i32)>,
    /// The status block as last drawn, one rendered line each; the cursor sits on the line
    /// below it. Empty when nothing is drawn.
    drawn: Vec<String>,
}

/// One job's line in the status block.
#[derive(Debug)]
struct JobLine {
    spoke: String,
    job_id: String,
    state: i32,
    attempt: u32,
    percent: Option<u32>,
    step: String,
    message: String,
    message_paint: Paint,
}

impl WatchRenderer {
    pub fn new(options: Options) -> Self {
        WatchRenderer {
            opts: options,
            jobs: Vec::new(),
            ended: VecDeque::new(),
            open_pieces: HashSet::new(),
            drawn: Vec::new(),
        }
    }

    /// The terminal was resized; the status block is fitted to the new width when it is next
    /// drawn.
    pub fn set_width(&mut self, width: usize) {
        self.opts.width = width;
    }

    /// Writes what `item` shows (and, on a terminal, redraws the status block) and says whether
    /// the watch should stop. Each call writes at most once and flushes, so a terminal never
    /// shows a half-drawn block and a piped reader sees events as they come.
    pub fn feed(
        &mut self,
        item: &admin::WatchResponse,
        out: &mut impl io::Write,
    ) -> io::Result<Progress> {
        let mut scroll = Vec::new();
        let progress = match &item.item {
            Some(admin::watch_response::Item::Event(e)) => self.on_event(e, &mut scroll),
            Some(admin::watch_response::Item::Job(j)) => self.on_snapshot(j, &mut scroll),
            Some(admin::watch_response::Item::SnapshotEnd(end)) => {
                let mut line = Styled::default();
                line.paint(
                    Paint::Dim,
                    format!(
                        "— snapshot: {}, live events follow —",
                        plural(end.jobs, "job")
                    ),
                );
                scroll.push(line);
                Progress::Continue
            }
            // An item kind from a newer hub: nothing to show (json_line still gives its cursor).
            None => Progress::Continue,
        };
        self.write_frame(out, &scroll)?;
        Ok(progress)
    }

    /// Erases the status block (on a terminal) so the shell prompt comes back on a clean line.
    /// Call it when the watch ends for any reason; scrolled lines stay.
    pub fn finish(&mut self, out: &mut impl io::Write) -> io::Result<()> {
        if self.drawn.is_empty() {
            return Ok(());
        }
        let mut buf = String::new();
        self.erase_into(&mut buf);
        out.write_all(buf.as_bytes())?;
        out.flush()?;
        self.drawn.clear();
        Ok(())
    }

    fn on_event(&mut self, e: &pb::Event, scroll: &mut Vec<Styled>) -> Progress {
        let kind = pb::EventType::try_from(e.r#type).ok();
        let ended = kind.and_then(ended_state);
        // Always built, even when not shown: it tracks which output pieces continue.
        let lines = self.event_lines(e, kind);
        if !self.opts.tty || kind.is_none_or(scrolls_on_tty) {
            scroll.extend(lines);
        }
        if self.opts.tty {
            self.track(e, kind, ended);
        }
        match ended {
            Some(state) => {
                self.open_pieces
                    .retain(|(spoke, job, _, _)| *spoke != e.spoke_id || *job != e.job_id);
                self.end_progress(&e.job_id, state)
            }
            None => Progress::Continue,
        }
    }

    fn on_snapshot(&mut self, j: &admin::JobSnapshot, scroll: &mut Vec<Styled>) -> Progress {
        let state = pb::JobState::try_from(j.state).ok();
        let ended = state.filter(|s| is_terminal(*s));
        let followed = self.follows(&j.job_id);
        let mut line = self.prefix(j.at_ms, &j.spoke_id, &j.job_id, "snapshot");
        let mut details = format!("{} {}%", job_state_name(j.state), j.progress);
        if !j.error.is_empty() {
            let _ = write!(details, ": {}", inline(&j.error));
        }
        line.push(" ").paint(state_paint(j.state), details);
        if !self.opts.tty {
            scroll.push(line);
        } else if ended.is_some() {
            // A terminal's block is for live jobs; of the finished ones (a workspace may have
            // many) only the followed job is worth a line, as its summary.
            if followed {
                scroll.push(line);
            }
        } else {
            let job = self.job_line(&j.spoke_id, &j.job_id);
            job.state = j.state;
            job.percent = (j.progress > 0).then_some(j.progress.min(100));
            if !j.error.is_empty() {
                job.set_message(Paint::Yellow, inline(&j.error));
            }
        }
        match ended {
            Some(state) => self.end_progress(&j.job_id, state),
            None => Progress::Continue,
        }
    }

    fn follows(&self, job_id: &str) -> bool {
        self.opts.follow_job.as_deref() == Some(job_id)
    }

    fn end_progress(&self, job_id: &str, state: pb::JobState) -> Progress {
        if self.follows(job_id) {
            Progress::JobEnded { state }
        } else {
            Progress::Continue
        }
    }

    /// The lines an event scrolls, in plain mode all of them.
    fn event_lines(&mut self, e: &pb::Event, kind: Option<pb::EventType>) -> Vec<Styled> {
        if let Some(Payload::Output(o)) = &e.payload {
            return self.output_lines(e, o);
        }
        let mut line = self.prefix(e.at_ms, &e.spoke_id, &e.job_id, &event_type_name(e.r#type));
        let paint = event_paint(kind, e.payload.as_ref());
        let details = match &e.payload {
            None | Some(Payload::Output(_)) => String::new(),
            Some(Payload::Job(j)) => {
                let mut s = job_state_name(j.state);
                if j.attempt > 0 {
                    let _ = write!(s, " attempt={}", j.attempt);
                }
                if j.ready_at_ms > 0 {
                    let _ = write!(s, " ready_at={}", self.time(j.ready_at_ms));
                }
                with_text(s, &j.error)
            }
            Some(Payload::Agent(a)) => with_text(format!("attempt={}", a.attempt), &a.error),
            Some(Payload::Progress(p)) => {
                let mut s = String::new();
                if !p.step.is_empty() {
                    let _ = write!(s, "{} ", inline(&p.step));
                }
                let _ = write!(s, "{}%", p.percent);
                if !p.message.is_empty() {
                    let _ = write!(s, " {}", inline(&p.message));
                }
                s
            }
            Some(Payload::Step(s)) => with_text(inline(&s.step), &s.error),
            Some(Payload::ToolCall(t)) => {
                let head = format!("tool {} ", inline(&t.tool));
                let input = inline(&t.input_json);
                let input = match self.opts.width {
                    0 => input,
                    w => {
                        let room = w.saturating_sub(line.cols() + 1 + cols(&head));
                        cut(&input, room.max(MIN_TOOL_INPUT_COLS))
                    }
                };
                head + &input
            }
            Some(Payload::Tokens(t)) => format!(
                "tokens in={} out={} cache_read={} cache_write={} model={}",
                t.input_tokens,
                t.output_tokens,
                t.cache_read_input_tokens,
                t.cache_creation_input_tokens,
                inline(&t.model)
            ),
            Some(Payload::Artifact(a)) => format!(
                "artifact {} {} {}",
                inline(&a.path),
                short_digest(&inline(&a.digest)),
                human_bytes(a.size_bytes)
            ),
            Some(Payload::Gate(g)) => with_text(inline(&g.gate), &g.message),
            Some(Payload::Message(m)) => inline(m),
        };
        if !details.is_empty() {
            line.push(" ").paint(paint, details);
        }
        vec![line]
    }

    fn output_lines(&mut self, e: &pb::Event, o: &pb::Output) -> Vec<Styled> {
        let key = (
            e.spoke_id.clone(),
            e.job_id.clone(),
            e.agent_id.clone(),
            o.stream,
        );
        // Whether the previous event of this stream left a piece open, remembering this one's.
        let continues = if o.partial {
            !self.open_pieces.insert(key)
        } else {
            self.open_pieces.remove(&key)
        };
        if !self.opts.show_output {
            return Vec::new();
        }
        let stream = output_stream_name(o.stream);
        let paint = if o.stream == pb::OutputStream::Stderr as i32 {
            Paint::Dim
        } else {
            Paint::Plain
        };
        let type_name = event_type_name(e.r#type);
        let mut lines = Vec::new();
        if o.dropped_lines > 0 || o.dropped_bytes > 0 {
            let what = match (o.dropped_lines, o.dropped_bytes) {
                (0, b) => plural(b, "byte"),
                (l, 0) => plural(l, "line"),
                (l, b) => format!("{}, {}", plural(l, "line"), plural(b, "byte")),
            };
            // No `|` after the stream, so grepping `stdout|` finds only what the agent wrote.
            let mut line = self.prefix(e.at_ms, &e.spoke_id, &e.job_id, &type_name);
            line.push(" ")
                .paint(Paint::Yellow, format!("{stream} [… {what} dropped]"));
            lines.push(line);
        }
        if o.text.is_empty() && o.lines == 0 {
            return lines;
        }
        let tag = if o.step.is_empty() {
            format!("{stream}|")
        } else {
            format!("{stream}|{}|", inline(&o.step))
        };
        for (i, text) in o.text.split('\n').enumerate() {
            let sep = if i == 0 && continues { CONTINUED } else { " " };
            let mut line = self.prefix(e.at_ms, &e.spoke_id, &e.job_id, &type_name);
            line.push(" ")
                .paint(paint, format!("{tag}{sep}{}", clean_output(text)));
            lines.push(line);
        }
        lines
    }

    /// `<time> <spoke>/<job short id> <type>`, without a trailing space.
    fn prefix(&self, at_ms: i64, spoke: &str, job_id: &str, type_name: &str) -> Styled {
        let mut line = Styled::default();
        line.paint(Paint::Dim, self.time(at_ms)).push(format!(
            " {}/{} {type_name}",
            inline(spoke),
            inline(short_id(job_id))
        ));
        line
    }

    /// Plain mode may end up in a file read days later: the full UTC time. A terminal shows a
    /// live stream, where the time of day is enough and the width is better spent on text.
    fn time(&self, ms: i64) -> String {
        if self.opts.tty {
            clock(ms)
        } else {
            rfc3339_ms(ms)
        }
    }

    fn job_line(&mut self, spoke: &str, job_id: &str) -> &mut JobLine {
        let i = match self
            .jobs
            .iter()
            .position(|j| j.spoke == spoke && j.job_id == job_id)
        {
            Some(i) => i,
            None => {
                self.jobs.push(JobLine {
                    spoke: spoke.to_owned(),
                    job_id: job_id.to_owned(),
                    state: pb::JobState::Unspecified as i32,
                    attempt: 0,
                    percent: None,
                    step: String::new(),
                    message: String::new(),
                    message_paint: Paint::Plain,
                });
                self.jobs.len() - 1
            }
        };
        &mut self.jobs[i]
    }

    /// Updates the status block from an event: an ended job leaves it, any other job joins it.
    fn track(&mut self, e: &pb::Event, kind: Option<pb::EventType>, ended: Option<pb::JobState>) {
        use pb::EventType as T;
        let key = (e.spoke_id.clone(), e.job_id.clone());
        if ended.is_some() {
            self.jobs
                .retain(|j| j.spoke != e.spoke_id || j.job_id != e.job_id);
            if !self.ended.contains(&key) {
                if self.ended.len() == RECENTLY_ENDED {
                    self.ended.pop_front();
                }
                self.ended.push_back(key);
            }
            return;
        }
        if self.ended.contains(&key) {
            return;
        }
        let job = self.job_line(&e.spoke_id, &e.job_id);
        // Without a snapshot the first event seen may be mid-run: anything an agent reports
        // means the job executes.
        let reported_by_agent = matches!(
            kind,
            Some(
                T::JobProgress
                    | T::StepStarted
                    | T::StepProgress
                    | T::StepOutput
                    | T::StepCompleted
                    | T::StepFailed
                    | T::AiToolCalled
                    | T::AiTokensUsed
                    | T::AiArtifactCreated
                    | T::GateStarted
                    | T::GatePassed
                    | T::GateFailed
                    | T::AgentRunning
            )
        );
        // A status message comes from the agent too (a retry's status has a job payload).
        if reported_by_agent || matches!(e.payload, Some(Payload::Message(_))) {
            job.state = pb::JobState::Executing as i32;
        }
        match &e.payload {
            None | Some(Payload::Output(_)) | Some(Payload::Tokens(_)) => {}
            Some(Payload::Job(j)) => {
                job.state = j.state;
                if j.attempt > 0 {
                    job.attempt = j.attempt;
                }
                if kind == Some(T::JobStarted) {
                    // A new attempt starts from scratch.
                    job.percent = None;
                    job.step.clear();
                    job.set_message(Paint::Plain, String::new());
                }
                if j.state == pb::JobState::Delayed as i32 && j.ready_at_ms > 0 {
                    if !j.error.is_empty() {
                        // Waiting to retry: the failed attempt's progress is history.
                        job.percent = None;
                        job.step.clear();
                    }
                    let verb = if j.error.is_empty() { "ready" } else { "retry" };
                    let text = with_text(format!("{verb} at {}", clock(j.ready_at_ms)), &j.error);
                    job.set_message(Paint::Yellow, text);
                } else if !j.error.is_empty() {
                    job.set_message(Paint::Yellow, inline(&j.error));
                }
            }
            Some(Payload::Agent(a)) => {
                if a.attempt > 0 {
                    job.attempt = a.attempt;
                }
                match kind {
                    Some(T::AgentSpawning) => job.set_message(Paint::Plain, "spawning".into()),
                    Some(T::AgentRunning) => job.set_message(Paint::Plain, "running".into()),
                    Some(T::AgentFailed) => job.set_message(
                        Paint::Red,
                        with_text(format!("attempt {} failed", a.attempt), &a.error),
                    ),
                    Some(T::AgentKilled) => job.set_message(
                        Paint::Yellow,
                        with_text(format!("attempt {} killed", a.attempt), &a.error),
                    ),
                    _ => {}
                }
            }
            Some(Payload::Progress(p)) => {
                if p.step.is_empty() {
                    job.percent = Some(p.percent.min(100));
                } else {
                    job.step = format!("{} {}%", inline(&p.step), p.percent.min(100));
                }
                if !p.message.is_empty() {
                    job.set_message(Paint::Plain, inline(&p.message));
                }
            }
            Some(Payload::Step(s)) => match kind {
                Some(T::StepStarted) => {
                    job.step = inline(&s.step);
                    job.set_message(Paint::Plain, String::new());
                }
                Some(T::StepFailed) => job.set_message(
                    Paint::Red,
                    with_text(format!("{} failed", inline(&s.step)), &s.error),
                ),
                _ => {}
            },
            Some(Payload::ToolCall(t)) => job.set_message(
                Paint::Plain,
                format!("tool {} {}", inline(&t.tool), inline(&t.input_json)),
            ),
            Some(Payload::Artifact(a)) => {
                job.set_message(Paint::Plain, format!("artifact {}", inline(&a.path)));
            }
            Some(Payload::Gate(g)) => {
                let (paint, verb) = match kind {
                    Some(T::GatePassed) => (Paint::Green, " passed"),
                    Some(T::GateFailed) => (Paint::Red, " failed"),
                    _ => (Paint::Plain, ""),
                };
                let text = with_text(format!("gate {}{verb}", inline(&g.gate)), &g.message);
                job.set_message(paint, text);
            }
            Some(Payload::Message(m)) => job.set_message(Paint::Plain, inline(m)),
        }
    }

    /// The status block's lines, rendered (TTY only).
    fn block(&self) -> Vec<String> {
        let width = match self.opts.width {
            0 => FALLBACK_TTY_WIDTH,
            w => w,
        };
        // One column spare: a line that fills the last column leaves some terminals waiting to
        // wrap, and the newline after it would then add a line the cursor-up count misses.
        let room = width.saturating_sub(1).max(1);
        let mut lines: Vec<String> = self
            .jobs
            .iter()
            .take(MAX_STATUS_JOBS)
            .map(|j| j.status_line().fit(room).render(self.opts.color))
            .collect();
        if self.jobs.len() > MAX_STATUS_JOBS {
            let mut more = Styled::default();
            more.paint(
                Paint::Dim,
                format!("+{} more", self.jobs.len() - MAX_STATUS_JOBS),
            );
            lines.push(more.fit(room).render(self.opts.color));
        }
        lines
    }

    /// Writes the scrolled lines and, on a terminal, the status block below them in one write:
    /// erase the old block, print the lines where it was, draw the block again.
    fn write_frame(&mut self, out: &mut impl io::Write, scroll: &[Styled]) -> io::Result<()> {
        let mut buf = String::new();
        let mut block = None;
        if self.opts.tty {
            let new = self.block();
            if scroll.is_empty() && new == self.drawn {
                return Ok(());
            }
            self.erase_into(&mut buf);
            block = Some(new);
        }
        for line in scroll {
            buf.push_str(&line.render(self.opts.color));
            buf.push('\n');
        }
        if let Some(block) = &block {
            for line in block {
                buf.push_str(line);
                buf.push('\n');
            }
        }
        if buf.is_empty() {
            return Ok(());
        }
        out.write_all(buf.as_bytes())?;
        out.flush()?;
        if let Some(block) = block {
            self.drawn = block;
        }
        Ok(())
    }

    /// Moves the cursor up to the block's first line and erases from there to the end of the
    /// screen. Erasing everything below (`ESC [J`) rather than each line (`ESC [2K`) matters
    /// when a scrolled line is wider than the terminal: it wraps onto the next row, and a
    /// per-line clear would leave the rest of that row's old status text visible.
    fn erase_into(&self, buf: &mut String) {
        if !self.drawn.is_empty() {
            let _ = write!(buf, "\r\x1b[{}A\x1b[J", self.drawn.len());
        }
    }
}

impl JobLine {
    fn set_message(&mut self, paint: Paint, message: String) {
        self.message = message;
        self.message_paint = paint;
    }

    /// `<job short id> <state> [######----]  40% [try N] [<step>] [<last message>]`, unfitted.
    fn status_line(&self) -> Styled {
        let state = match pb::JobState::try_from(self.state) {
            // Before the first job event says otherwise.
            Ok(pb::JobState::Unspecified) => "…".to_owned(),
            _ => job_state_name(self.state),
        };
        let filled = self
            .percent
            .map_or(0, |p| p.min(100) as usize * BAR_CELLS / 100);
        let percent = self
            .percent
            .map_or_else(|| "  ?%".to_owned(), |p| format!("{p:>3}%"));
        let mut line = Styled::default();
        line.push(format!("{} ", inline(short_id(&self.job_id))))
            .paint(state_paint(self.state), format!("{state:<9}"))
            .push(format!(
                " [{}{}] {percent}",
                "#".repeat(filled),
                "-".repeat(BAR_CELLS - filled)
            ));
        if self.attempt > 1 {
            line.push(format!(" try {}", self.attempt));
        }
        if !self.step.is_empty() {
            line.push(format!(" {}", cut(&self.step, STEP_COLS)));
        }
        if !self.message.is_empty() {
            line.push(" ")
                .paint(self.message_paint, self.message.clone());
        }
        line
    }
}

/// Which events scroll on a terminal. Lifecycle steps, progress and token counts only update
/// the job's status line; output, steps, tool calls, artifacts, gate results, status
/// messages, retries, failed attempts and job ends scroll.
fn scrolls_on_tty(kind: pb::EventType) -> bool {
    use pb::EventType as T;
    !matches!(
        kind,
        T::JobCreated
            | T::JobQueued
            | T::JobStarted
            | T::JobProgress
            | T::StepProgress
            | T::AgentSpawning
            | T::AgentRunning
            | T::AgentCompleted
            | T::AiTokensUsed
            | T::GateStarted
    )
}

/// The state a job-ending event leaves its job in.
fn ended_state(kind: pb::EventType) -> Option<pb::JobState> {
    match kind {
        pb::EventType::JobCompleted => Some(pb::JobState::Completed),
        pb::EventType::JobFailed => Some(pb::JobState::Failed),
        pb::EventType::JobCancelled => Some(pb::JobState::Cancelled),
        _ => None,
    }
}

fn is_terminal(s: pb::JobState) -> bool {
    matches!(
        s,
        pb::JobState::Completed | pb::JobState::Failed | pb::JobState::Cancelled
    )
}

fn state_paint(state: i32) -> Paint {
    match pb::JobState::try_from(state) {
        Ok(pb::JobState::Completed) => Paint::Green,
        Ok(pb::JobState::Failed) => Paint::Red,
        Ok(pb::JobState::Delayed | pb::JobState::Cancelled) => Paint::Yellow,
        _ => Paint::Plain,
    }
}

fn event_paint(kind: Option<pb::EventType>, payload: Option<&Payload>) -> Paint {
    use pb::EventType as T;
    match kind {
        Some(T::JobCompleted | T::GatePassed) => Paint::Green,
        Some(T::JobFailed | T::AgentFailed | T::StepFailed | T::GateFailed) => Paint::Red,
        Some(T::JobCancelled | T::AgentKilled) => Paint::Yellow,
        _ => match payload {
            // A retry's wait, or a delayed job's creation.
            Some(Payload::Job(j)) => state_paint(j.state),
            _ => Paint::Plain,
        },
    }
}

/// The dotted lowercase name of an event type, derived from the proto enum:
/// `EVENT_TYPE_AI_TOOL_CALLED` → `ai.tool_called`. A value this build does not know (from a
/// newer spoke) is `unknown(<n>)`.
pub fn event_type_name(value: i32) -> String {
    match pb::EventType::try_from(value) {
        Ok(t) => {
            let name = lower_name(t.as_str_name(), "EVENT_TYPE_");
            match name.split_once('_') {
                Some((group, rest)) => format!("{group}.{rest}"),
                None => name,
            }
        }
        Err(_) => format!("unknown({value})"),
    }
}

/// The event type an [`event_type_name`] names, for `watch --type`.
pub fn parse_event_type(name: &str) -> Option<pb::EventType> {
    let t = pb::EventType::from_str_name(&format!(
        "EVENT_TYPE_{}",
        name.replace('.', "_").to_ascii_uppercase()
    ))?;
    // The round trip refuses spellings the renderer never prints (`ai_tool.called`).
    (event_type_name(t as i32) == name).then_some(t)
}

/// `completed`, `executing`, … (`unknown(<n>)` for a value this build does not know).
pub fn job_state_name(value: i32) -> String {
    pb::JobState::try_from(value).map_or_else(
        |_| format!("unknown({value})"),
        |s| lower_name(s.as_str_name(), "JOB_STATE_"),
    )
}

fn agent_state_name(value: i32) -> String {
    pb::AgentState::try_from(value).map_or_else(
        |_| format!("unknown({value})"),
        |s| lower_name(s.as_str_name(), "AGENT_STATE_"),
    )
}

fn output_stream_name(value: i32) -> String {
    pb::OutputStream::try_from(value).map_or_else(
        |_| format!("unknown({value})"),
        |s| lower_name(s.as_str_name(), "OUTPUT_STREAM_"),
    )
}

fn lower_name(full: &str, prefix: &str) -> String {
    full.strip_prefix(prefix)
        .unwrap_or(full)
        .to_ascii_lowercase()
}

/// A job id short enough for a line. Job ids are UUIDv7, whose leading characters are the
/// creation time (jobs created in the same minute share them) and whose tail is random, so the
/// short id is the last 8 characters; it is still a substring of the full id for grep.
pub fn short_id(id: &str) -> &str {
    if id.chars().count() <= 12 {
        return id;
    }
    id.char_indices()
        .rev()
        .nth(7)
        .map_or(id, |(start, _)| &id[start..])
}

/// Unix milliseconds as RFC 3339 UTC with exactly three fractional digits, so lines of
/// different events align and sort as text.
pub fn rfc3339_ms(ms: i64) -> String {
    match datetime(ms) {
        Some(t) if (0..=9999).contains(&t.year()) => format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        ),
        _ => ms.to_string(),
    }
}

/// Unix milliseconds as the UTC time of day, `HH:MM:SS`.
fn clock(ms: i64) -> String {
    match datetime(ms) {
        Some(t) => format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second()),
        None => ms.to_string(),
    }
}

fn datetime(ms: i64) -> Option<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// `sha256:0123456789ab…`: enough of the digest to tell artifacts apart.
fn short_digest(digest: &str) -> String {
    match digest.split_once(':') {
        Some((algo, hex)) => format!("{algo}:{}", cut(hex, 13)),
        None => cut(digest, 20),
    }
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

fn plural(n: u64, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// `head` and, when there is one, `: <text>`.
fn with_text(mut head: String, text: &str) -> String {
    if !text.is_empty() {
        let _ = write!(head, ": {}", inline(text));
    }
    head
}

/// Text for the middle of one line: escape sequences removed, line breaks and tabs as spaces,
/// other control characters as U+FFFD.
fn inline(s: &str) -> String {
    clean(s, |c, out| {
        if matches!(c, '\n' | '\r' | '\t') {
            out.push(' ');
            true
        } else {
            false
        }
    })
}

/// One line an agent wrote, as a terminal would show it: a trailing CR (CRLF endings) dropped,
/// only the last version of a line redrawn with carriage returns (progress bars), escape
/// sequences (colors) removed, tabs kept, other control characters as U+FFFD.
fn clean_output(line: &str) -> String {
    let line = line.trim_end_matches('\r');
    let last = line.rsplit('\r').next().unwrap_or(line);
    clean(last, |c, out| {
        if c == '\t' {
            out.push(c);
            true
        } else {
            false
        }
    })
}

/// Removes escape sequences and replaces control characters; `keep` may handle a control
/// character first (returning true).
fn clean(s: &str, keep: impl Fn(char, &mut String) -> bool) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            skip_escape(&mut chars);
        } else if c.is_control() {
            if !keep(c, &mut out) {
                out.push('\u{FFFD}');
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Skips the rest of an escape sequence whose ESC was just read: CSI (`ESC [ … final`), the
/// string sequences OSC, DCS, SOS, PM and APC (up to BEL or `ESC \`), or a two-character one.
fn skip_escape(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) {
    match chars.next() {
        Some('[') => {
            for c in chars.by_ref() {
                if ('\x40'..='\x7e').contains(&c) {
                    break;
                }
            }
        }
        Some(']' | 'P' | 'X' | '^' | '_') => {
            while let Some(c) = chars.next() {
                if c == '\x07' {
                    break;
                }
                if c == '\x1b' {
                    if chars.peek() == Some(&'\\') {
                        chars.next();
                    }
                    break;
                }
            }
        }
        _ => {}
    }
}

/// Terminal columns a character takes, near enough without a Unicode table: combining marks
/// and zero-width characters 0, East Asian wide characters and emoji 2. An underestimate would
/// wrap a status line and break the block's redraw, so the wide ranges err wide.
fn char_cols(c: char) -> usize {
    match u32::from(c) {
        0x0300..=0x036F | 0x200B..=0x200F | 0xFE00..=0xFE0F => 0,
        0x1100..=0x115F
        | 0x2E80..=0x303E
        | 0x3041..=0x33FF
        | 0x3400..=0x4DBF
        | 0x4E00..=0x9FFF
        | 0xA000..=0xA4CF
        | 0xAC00..=0xD7A3
        | 0xF900..=0xFAFF
        | 0xFE30..=0xFE4F
        | 0xFF00..=0xFF60
        | 0xFFE0..=0xFFE6
        | 0x1F300..=0x1F64F
        | 0x1F900..=0x1F9FF
        | 0x20000..=0x3FFFD => 2,
        _ => 1,
    }
}

fn cols(s: &str) -> usize {
    s.chars().map(char_cols).sum()
}

/// `s` in at most `max` columns, ending in `…` when cut.
fn cut(s: &str, max: usize) -> String {
    let mut line = Styled::default();
    line.push(s);
    line.fit(max).0.into_iter().map(|(_, s)| s).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Paint {
    Plain,
    Dim,
    Green,
    Red,
    Yellow,
}

impl Paint {
    fn sgr(self) -> Option<&'static str> {
        match self {
            Paint::Plain => None,
            Paint::Dim => Some("\x1b[2m"),
            Paint::Green => Some("\x1b[32m"),
            Paint::Red => Some("\x1b[31m"),
            Paint::Yellow => Some("\x1b[33m"),
        }
    }
}

/// A line as painted pieces, so it can be measured and cut by its visible text and only then
/// get its escape codes.
#[derive(Debug, Clone, Default)]
struct Styled(Vec<(Paint, String)>);

impl Styled {
    fn push(&mut self, text: impl Into<String>) -> &mut Self {
        self.paint(Paint::Plain, text)
    }

    fn paint(&mut self, paint: Paint, text: impl Into<String>) -> &mut Self {
        self.0.push((paint, text.into()));
        self
    }

    fn cols(&self) -> usize {
        self.0.iter().map(|(_, s)| cols(s)).sum()
    }

    /// At most `max` columns, ending in `…` when cut.
    fn fit(mut self, max: usize) -> Self {
        if self.cols() <= max {
            return self;
        }
        let mut used = 0;
        let mut kept = Vec::new();
        for (paint, text) in self.0.drain(..) {
            let mut piece = String::new();
            for c in text.chars() {
                let w = char_cols(c);
                // Room for the ellipsis (one column) must remain.
                if used + w + 1 > max {
                    if max > 0 {
                        piece.push('…');
                    }
                    kept.push((paint, piece));
                    return Styled(kept);
                }
                used += w;
                piece.push(c);
            }
            kept.push((paint, piece));
        }
        Styled(kept)
    }

    fn render(&self, color: bool) -> String {
        let mut out = String::new();
        for (paint, text) in &self.0 {
            match paint.sgr().filter(|_| color && !text.is_empty()) {
                Some(sgr) => {
                    let _ = write!(out, "{sgr}{text}\x1b[0m");
                }
                None => out.push_str(text),
            }
        }
        out
    }
}

/// The `--output json` form of an item, one object per line: `cursor` (resume with
/// `--after`), `kind` (`event`, `job`, `snapshot_end`, or `unknown` for an item kind of a newer
/// hub) and the item's fields. Enums are lowercase names, times both RFC 3339 (`at`) and unix
/// milliseconds (`at_ms`); an event's `payload` has the proto fields by their proto names, or
/// is null. Texts are as the spoke sent them (a tool call's `input_json` may be cut and so not
/// parse).
pub fn json_line(item: &admin::WatchResponse) -> Value {
    match &item.item {
        Some(admin::watch_response::Item::Event(e)) => json!({
            "cursor": item.cursor,
            "kind": "event",
            "type": event_type_name(e.r#type),
            "spoke_id": e.spoke_id,
            "workspace": e.workspace,
            "job_id": e.job_id,
            "agent_id": e.agent_id,
            "seq": e.seq,
            "at": rfc3339_ms(e.at_ms),
            "at_ms": e.at_ms,
            "payload": payload_json(e.payload.as_ref()),
        }),
        Some(admin::watch_response::Item::Job(j)) => json!({
            "cursor": item.cursor,
            "kind": "job",
            "spoke_id": j.spoke_id,
            "workspace": j.workspace,
            "job_id": j.job_id,
            "state": job_state_name(j.state),
            "agent_id": j.agent_id,
            "agent_state": agent_state_name(j.agent_state),
            "seq": j.seq,
            "at": rfc3339_ms(j.at_ms),
            "at_ms": j.at_ms,
            "progress": j.progress,
            "error": j.error,
        }),
        Some(admin::watch_response::Item::SnapshotEnd(end)) => json!({
            "cursor": item.cursor,
            "kind": "snapshot_end",
            "jobs": end.jobs,
        }),
        None => json!({ "cursor": item.cursor, "kind": "unknown" }),
    }
}

fn payload_json(payload: Option<&Payload>) -> Value {
    match payload {
        None => Value::Null,
        Some(Payload::Job(j)) => json!({
            "state": job_state_name(j.state),
            "attempt": j.attempt,
            "ready_at_ms": j.ready_at_ms,
            "error": j.error,
        }),
        Some(Payload::Agent(a)) => json!({
            "state": agent_state_name(a.state),
            "attempt": a.attempt,
            "error": a.error,
        }),
        Some(Payload::Progress(p)) => json!({
            "percent": p.percent,
            "step": p.step,
            "message": p.message,
        }),
        Some(Payload::Step(s)) => json!({ "step": s.step, "error": s.error }),
        Some(Payload::Output(o)) => json!({
            "stream": output_stream_name(o.stream),
            "step": o.step,
            "text": o.text,
            "lines": o.lines,
            "partial": o.partial,
            "dropped_lines": o.dropped_lines,
            "dropped_bytes": o.dropped_bytes,
        }),
        Some(Payload::ToolCall(t)) => json!({
            "tool": t.tool,
            "call_id": t.call_id,
            "input_json": t.input_json,
        }),
        Some(Payload::Tokens(t)) => json!({
            "model": t.model,
            "input_tokens": t.input_tokens,
            "output_tokens": t.output_tokens,
            "cache_creation_input_tokens": t.cache_creation_input_tokens,
            "cache_read_input_tokens": t.cache_read_input_tokens,
        }),
        Some(Payload::Artifact(a)) => json!({
            "path": a.path,
            "digest": a.digest,
            "size_bytes": a.size_bytes,
        }),
        Some(Payload::Gate(g)) => json!({ "gate": g.gate, "message": g.message }),
        // The one payload that is not a message: an object all the same, so `payload.message`
        // works and `payload` is always an object or null.
        Some(Payload::Message(m)) => json!({ "message": m }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use admin::watch_response::Item;
    use pb::EventType as T;

    const JOB: &str = "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b";
    const OTHER: &str = "0193a1b0-0000-7000-8000-00009f8e7d6c";
    const OLD: &str = "0193a0ff-1111-7111-8111-0000deadbeef";
    /// 2026-11-18T20:53:20Z.
    const T0: i64 = 1_795_035_200_000;

    fn item(cursor: String, item: Item) -> admin::WatchResponse {
        admin::WatchResponse {
            cursor,
            item: Some(item),
        }
    }

    /// An event of `job`, attempt `attempt` (0: none), `seq` seconds after T0.
    fn ev(
        job: &str,
        attempt: u32,
        seq: u64,
        t: T,
        payload: Option<Payload>,
    ) -> admin::WatchResponse {
        item(
            format!("h-{seq}"),
            Item::Event(pb::Event {
                cursor: format!("{seq}-0"),
                spoke_id: "spoke-a".into(),
                workspace: "demo".into(),
                job_id: job.into(),
                agent_id: if attempt > 0 {
                    format!("{job}.{attempt}")
                } else {
                    String::new()
                },
                seq,
                at_ms: T0 + seq as i64 * 1000,
                r#type: t as i32,
                payload,
                ..Default::default()
            }),
        )
    }

    fn job(state: pb::JobState, attempt: u32, ready_at_ms: i64, error: &str) -> Option<Payload> {
        Some(Payload::Job(pb::JobChange {
            state: state as i32,
            attempt,
            ready_at_ms,
            error: error.into(),
        }))
    }

    fn agent(state: pb::AgentState, attempt: u32, error: &str) -> Option<Payload> {
        Some(Payload::Agent(pb::AgentChange {
            state: state as i32,
            attempt,
            error: error.into(),
        }))
    }

    fn out(stream: pb::OutputStream, step: &str, text: &str) -> pb::Output {
        pb::Output {
            stream: stream as i32,
            step: step.into(),
            text: text.into(),
            lines: text.split('\n').count() as u32,
            ..Default::default()
        }
    }

    fn progress(percent: u32, step: &str, message: &str) -> Option<Payload> {
        Some(Payload::Progress(pb::Progress {
            percent,
            step: step.into(),
            message: message.into(),
        }))
    }

    fn snap(job: &str, state: pb::JobState, progress: u32, error: &str) -> admin::WatchResponse {
        item(
            format!("s-{job}"),
            Item::Job(admin::JobSnapshot {
                spoke_id: "spoke-a".into(),
                workspace: "demo".into(),
                job_id: job.into(),
                state: state as i32,
                agent_id: format!("{job}.1"),
                agent_state: pb::AgentState::Running as i32,
                seq: 7,
                at_ms: T0 - 60_000,
                progress,
                error: error.into(),
            }),
        )
    }

    fn snap_end(jobs: u64) -> admin::WatchResponse {
        item(
            "s-end".into(),
            Item::SnapshotEnd(admin::SnapshotEnd { jobs }),
        )
    }

    /// A job's life: snapshot, a first attempt that fails a gate and its agent, a retry, and
    /// the second attempt completing.
    fn sequence() -> Vec<admin::WatchResponse> {
        use pb::AgentState as A;
        use pb::JobState as J;
        use pb::OutputStream as S;
        let mut stderr = out(S::Stderr, "build", "warning: unused variable `x`");
        stderr.dropped_lines = 3;
        stderr.dropped_bytes = 120;
        vec![
            snap(OTHER, J::Executing, 40, ""),
            snap(OLD, J::Failed, 100, "exit code 2"),
            snap_end(2),
            ev(JOB, 0, 1, T::JobCreated, job(J::Pending, 0, 0, "")),
            ev(JOB, 0, 2, T::JobQueued, job(J::Pending, 0, 0, "")),
            ev(JOB, 1, 3, T::JobStarted, job(J::Assigned, 1, 0, "")),
            ev(JOB, 1, 4, T::AgentSpawning, agent(A::Spawning, 1, "")),
            ev(JOB, 1, 5, T::AgentRunning, agent(A::Running, 1, "")),
            ev(
                JOB,
                1,
                6,
                T::StepStarted,
                Some(Payload::Step(pb::StepChange {
                    step: "build".into(),
                    error: String::new(),
                })),
            ),
            ev(
                JOB,
                1,
                7,
                T::StepOutput,
                Some(Payload::Output(out(
                    S::Stdout,
                    "build",
                    "   Compiling foo v0.1.0\n   Compiling bar v0.2.0",
                ))),
            ),
            ev(JOB, 1, 8, T::StepOutput, Some(Payload::Output(stderr))),
            ev(JOB, 1, 9, T::JobProgress, progress(40, "", "compiling")),
            ev(
                JOB,
                1,
                10,
                T::AiToolCalled,
                Some(Payload::ToolCall(pb::ToolCall {
                    tool: "Bash".into(),
                    call_id: "toolu_01".into(),
                    input_json: r#"{"command":"cargo test --workspace"}"#.into(),
                })),
            ),
            ev(
                JOB,
                1,
                11,
                T::AiTokensUsed,
                Some(Payload::Tokens(pb::TokenUsage {
                    model: "claude-sonnet-4-5".into(),
                    input_tokens: 1200,
                    output_tokens: 350,
                    cache_creation_input_tokens: 0,
                    cache_read_input_tokens: 800,
                })),
            ),
            ev(
                JOB,
                1,
                12,
                T::AiArtifactCreated,
                Some(Payload::Artifact(pb::Artifact {
                    path: "out/report.md".into(),
                    digest:
                        "sha256:abcdef0123456789abcdef0123456789abcdef0123456789abcdef0123456789"
                            .into(),
                    size_bytes: 6,
                })),
            ),
            ev(
                JOB,
                1,
                13,
                T::GateFailed,
                Some(Payload::Gate(pb::GateChange {
                    gate: "clippy".into(),
                    message: "3 warnings".into(),
                })),
            ),
            ev(
                JOB,
                1,
                14,
                T::AgentFailed,
                agent(A::Failed, 1, "exit code 101"),
            ),
            ev(
                JOB,
                1,
                15,
                T::JobStatus,
                job(
                    J::Delayed,
                    1,
                    T0 + 20_000,
                    "attempt 1 failed: exit code 101",
                ),
            ),
            ev(JOB, 0, 16, T::JobQueued, job(J::Pending, 0, 0, "")),
            ev(JOB, 2, 17, T::JobStarted, job(J::Assigned, 2, 0, "")),
            ev(JOB, 2, 18, T::AgentRunning, agent(A::Running, 2, "")),
            ev(
                JOB,
                2,
                19,
                T::JobStatus,
                Some(Payload::Message("reviewing the diff".into())),
            ),
            ev(JOB, 2, 20, T::JobProgress, progress(100, "", "done")),
            ev(JOB, 2, 21, T::AgentCompleted, agent(A::Completed, 2, "")),
            ev(JOB, 2, 22, T::JobCompleted, job(J::Completed, 2, 0, "")),
        ]
    }

    fn run(opts: Options, items: &[admin::WatchResponse]) -> (String, Vec<Progress>) {
        let mut r = WatchRenderer::new(opts);
        let mut buf = Vec::new();
        let progress = items
            .iter()
            .map(|i| r.feed(i, &mut buf).expect("writing to a Vec"))
            .collect();
        r.finish(&mut buf).expect("writing to a Vec");
        (String::from_utf8(buf).expect("utf-8"), progress)
    }

    fn plain() -> Options {
        Options {
            width: 100,
            follow_job: Some(JOB.into()),
            ..Options::default()
        }
    }

    fn tty(width: usize) -> Options {
        Options {
            tty: true,
            width,
            color: true,
            follow_job: Some(JOB.into()),
            show_output: true,
        }
    }

    #[test]
    fn plain_mode_prints_one_stable_line_per_item() {
        let (text, _) = run(plain(), &sequence());
        let expected = "\
2026-11-18T20:52:20.000Z spoke-a/9f8e7d6c snapshot executing 40%
2026-11-18T20:52:20.000Z spoke-a/deadbeef snapshot failed 100%: exit code 2
— snapshot: 2 jobs, live events follow —
2026-11-18T20:53:21.000Z spoke-a/2e3f4a5b job.created pending
2026-11-18T20:53:22.000Z spoke-a/2e3f4a5b job.queued pending
2026-11-18T20:53:23.000Z spoke-a/2e3f4a5b job.started assigned attempt=1
2026-11-18T20:53:24.000Z spoke-a/2e3f4a5b agent.spawning attempt=1
2026-11-18T20:53:25.000Z spoke-a/2e3f4a5b agent.running attempt=1
2026-11-18T20:53:26.000Z spoke-a/2e3f4a5b step.started build
2026-11-18T20:53:27.000Z spoke-a/2e3f4a5b step.output stdout|build|    Compiling foo v0.1.0
2026-11-18T20:53:27.000Z spoke-a/2e3f4a5b step.output stdout|build|    Compiling bar v0.2.0
2026-11-18T20:53:28.000Z spoke-a/2e3f4a5b step.output stderr [… 3 lines, 120 bytes dropped]
2026-11-18T20:53:28.000Z spoke-a/2e3f4a5b step.output stderr|build| warning: unused variable `x`
2026-11-18T20:53:29.000Z spoke-a/2e3f4a5b job.progress 40% compiling
2026-11-18T20:53:30.000Z spoke-a/2e3f4a5b ai.tool_called tool Bash {\"command\":\"cargo test --workspace\"}
2026-11-18T20:53:31.000Z spoke-a/2e3f4a5b ai.tokens_used tokens in=1200 out=350 cache_read=800 cache_write=0 model=claude-sonnet-4-5
2026-11-18T20:53:32.000Z spoke-a/2e3f4a5b ai.artifact_created artifact out/report.md sha256:abcdef012345… 6 B
2026-11-18T20:53:33.000Z spoke-a/2e3f4a5b gate.failed clippy: 3 warnings
2026-11-18T20:53:34.000Z spoke-a/2e3f4a5b agent.failed attempt=1: exit code 101
2026-11-18T20:53:35.000Z spoke-a/2e3f4a5b job.status delayed attempt=1 ready_at=2026-11-18T20:53:40.000Z: attempt 1 failed: exit code 101
2026-11-18T20:53:36.000Z spoke-a/2e3f4a5b job.queued pending
2026-11-18T20:53:37.000Z spoke-a/2e3f4a5b job.started assigned attempt=2
2026-11-18T20:53:38.000Z spoke-a/2e3f4a5b agent.running attempt=2
2026-11-18T20:53:39.000Z spoke-a/2e3f4a5b job.status reviewing the diff
2026-11-18T20:53:40.000Z spoke-a/2e3f4a5b job.progress 100% done
2026-11-18T20:53:41.000Z spoke-a/2e3f4a5b agent.completed attempt=2
2026-11-18T20:53:42.000Z spoke-a/2e3f4a5b job.completed completed attempt=2
";
        assert_eq!(text, expected);
        assert!(
            !text.contains('\x1b'),
            "plain mode without color has no escapes"
        );
    }

    /// What a terminal shows after `s`: the part of VT100 the renderer uses (CR; LF as CR LF,
    /// as a tty in cooked mode does; cursor up; erase below; erase line; SGR ignored). Panics on
    /// anything else, so a stray sequence fails the test.
    fn screen(s: &str) -> Vec<String> {
        let mut rows: Vec<Vec<char>> = vec![Vec::new()];
        let (mut row, mut col) = (0usize, 0usize);
        let mut chars = s.chars();
        while let Some(c) = chars.next() {
            match c {
                '\r' => col = 0,
                '\n' => {
                    row += 1;
                    col = 0;
                    if rows.len() <= row {
                        rows.push(Vec::new());
                    }
                }
                '\x1b' => {
                    assert_eq!(chars.next(), Some('['), "only CSI sequences");
                    let mut param = String::new();
                    let fin = loop {
                        match chars.next().expect("a final byte") {
                            c if c.is_ascii_digit() || c == ';' => param.push(c),
                            c => break c,
                        }
                    };
                    match fin {
                        'A' => {
                            let n: usize = param.parse().expect("a count");
                            row = row.checked_sub(n).expect("cursor up past the first line");
                        }
                        'J' => {
                            rows.truncate(row + 1);
                            rows[row].truncate(col);
                        }
                        'K' => rows[row].clear(),
                        'm' => {}
                        other => panic!("unexpected sequence ESC [{param}{other}"),
                    }
                }
                c => {
                    let r = &mut rows[row];
                    while r.len() < col {
                        r.push(' ');
                    }
                    if col < r.len() {
                        r[col] = c;
                    } else {
                        r.push(c);
                    }
                    col += 1;
                }
            }
        }
        let mut lines: Vec<String> = rows.into_iter().map(|r| r.into_iter().collect()).collect();
        while lines.last().is_some_and(|l| l.is_empty()) {
            lines.pop();
        }
        lines
    }

    /// `s` without SGR codes: what a person sees of one line.
    fn visible(s: &str) -> String {
        clean(s, |c, out| {
            let newline = c == '\n';
            if newline {
                out.push(c);
            }
            newline
        })
    }

    fn feed_all(r: &mut WatchRenderer, items: &[admin::WatchResponse]) -> String {
        let mut buf = Vec::new();
        for i in items {
            r.feed(i, &mut buf).expect("writing to a Vec");
        }
        String::from_utf8(buf).expect("utf-8")
    }

    fn status(job: &str, seq: u64, message: &str) -> admin::WatchResponse {
        ev(
            job,
            1,
            seq,
            T::JobStatus,
            Some(Payload::Message(message.into())),
        )
    }

    #[test]
    fn the_followed_jobs_completion_ends_the_watch() {
        let (_, progress) = run(plain(), &sequence());
        let (last, rest) = progress.split_last().expect("some items");
        assert_eq!(
            *last,
            Progress::JobEnded {
                state: pb::JobState::Completed
            }
        );
        // Including the snapshot of another job that had already failed.
        assert!(rest.iter().all(|p| *p == Progress::Continue), "{rest:?}");
    }

    #[test]
    fn cancellation_or_failure_ends_only_the_followed_job() {
        use pb::JobState as J;
        let other_cancelled = ev(
            OTHER,
            0,
            1,
            T::JobCancelled,
            job(J::Cancelled, 0, 0, "killed"),
        );
        let cancelled = ev(
            JOB,
            0,
            2,
            T::JobCancelled,
            job(J::Cancelled, 1, 0, "killed"),
        );
        // An end without a payload still ends the job: its type says how.
        let failed = ev(JOB, 0, 3, T::JobFailed, None);
        let (text, progress) = run(plain(), &[other_cancelled.clone(), cancelled, failed]);
        assert_eq!(
            progress,
            [
                Progress::Continue,
                Progress::JobEnded {
                    state: J::Cancelled
                },
                Progress::JobEnded { state: J::Failed },
            ]
        );
        assert!(text.contains("spoke-a/2e3f4a5b job.cancelled cancelled attempt=1: killed\n"));
        assert!(text.ends_with("spoke-a/2e3f4a5b job.failed\n"), "{text}");

        let unscoped = Options {
            follow_job: None,
            ..plain()
        };
        let (_, progress) = run(unscoped, &[other_cancelled]);
        assert_eq!(progress, [Progress::Continue]);
    }

    #[test]
    fn a_snapshot_of_the_followed_job_already_ended_ends_the_watch() {
        let items = [snap(JOB, pb::JobState::Failed, 100, "boom"), snap_end(1)];
        for opts in [plain(), tty(80)] {
            let (text, progress) = run(opts, &items);
            assert_eq!(
                progress[0],
                Progress::JobEnded {
                    state: pb::JobState::Failed
                }
            );
            assert!(
                visible(&text).contains("spoke-a/2e3f4a5b snapshot failed 100%: boom\n"),
                "{text:?}"
            );
        }
        let (text, _) = run(plain(), &[snap_end(1)]);
        assert_eq!(text, "— snapshot: 1 job, live events follow —\n");
    }

    #[test]
    fn tty_keeps_a_live_block_below_the_log() {
        let width = 72;
        let items = sequence();
        let mut r = WatchRenderer::new(tty(width));
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            r.feed(item, &mut out).expect("writing to a Vec");
            for line in &r.drawn {
                let cols = cols(&visible(line));
                assert!(cols < width, "{cols} columns after item {i}: {line:?}");
            }
            if i == 11 {
                // After `job.progress 40% compiling` of the followed job.
                let screen = screen(&String::from_utf8_lossy(&out));
                assert_eq!(
                    screen[screen.len() - 2..],
                    [
                        "9f8e7d6c executing [####------]  40%",
                        "2e3f4a5b executing [####------]  40% build compiling",
                    ]
                );
            }
        }
        let before_finish = String::from_utf8(out.clone()).expect("utf-8");
        // Erased (up over the two-line block, clear below) and redrawn, in color.
        assert!(before_finish.contains("\r\x1b[2A\x1b[J"));
        assert!(before_finish.contains("\x1b[32mcompleted attempt=2\x1b[0m"));
        assert!(
            before_finish
                .contains("\x1b[33mdelayed  \x1b[0m [----------]   ?% \x1b[33mretry at 20:53:40")
        );
        assert!(before_finish.contains("\x1b[2mstderr|build| warning"));
        let log = [
            "— snapshot: 2 jobs, live events follow —",
            "20:53:26 spoke-a/2e3f4a5b step.started build",
            "20:53:27 spoke-a/2e3f4a5b step.output stdout|build|    Compiling foo v0.1.0",
            "20:53:27 spoke-a/2e3f4a5b step.output stdout|build|    Compiling bar v0.2.0",
            "20:53:28 spoke-a/2e3f4a5b step.output stderr [… 3 lines, 120 bytes dropped]",
            "20:53:28 spoke-a/2e3f4a5b step.output stderr|build| warning: unused variable `x`",
            r#"20:53:30 spoke-a/2e3f4a5b ai.tool_called tool Bash {"command":"cargo test --workspace"}"#,
            "20:53:32 spoke-a/2e3f4a5b ai.artifact_created artifact out/report.md sha256:abcdef012345… 6 B",
            "20:53:33 spoke-a/2e3f4a5b gate.failed clippy: 3 warnings",
            "20:53:34 spoke-a/2e3f4a5b agent.failed attempt=1: exit code 101",
            "20:53:35 spoke-a/2e3f4a5b job.status delayed attempt=1 ready_at=20:53:40: attempt 1 failed: exit code 101",
            "20:53:39 spoke-a/2e3f4a5b job.status reviewing the diff",
            "20:53:42 spoke-a/2e3f4a5b job.completed completed attempt=2",
        ];
        // The followed job left the block when it ended; the other one is still running.
        let mut expected = log.to_vec();
        expected.push("9f8e7d6c executing [####------]  40%");
        assert_eq!(screen(&before_finish), expected);

        r.finish(&mut out).expect("writing to a Vec");
        let after = String::from_utf8(out).expect("utf-8");
        assert!(after.ends_with("\r\x1b[1A\x1b[J"));
        assert_eq!(
            screen(&after),
            log,
            "finish erases the block, the log stays"
        );
        assert!(r.drawn.is_empty());
    }

    #[test]
    fn long_texts_are_cut_in_the_status_line_but_whole_in_the_log() {
        let width = 60;
        let long = "refactoring the scheduler so that retries keep their backoff across restarts";
        let wide = "编译中".repeat(20);
        let mut r = WatchRenderer::new(tty(width));
        let text = feed_all(&mut r, &[status(JOB, 1, long)]);
        assert!(screen(&text).iter().any(|l| l.ends_with(long)), "{text:?}");
        let line = visible(&r.drawn[0]);
        assert!(line.starts_with("2e3f4a5b executing [----------]   ?% refactoring"));
        assert!(line.ends_with('…'));
        assert!(cols(&line) <= width, "{line}");

        let text = feed_all(&mut r, &[status(JOB, 2, &wide)]);
        assert!(text.contains(&wide), "the log has it whole");
        let line = visible(&r.drawn[0]);
        assert!(line.contains("编译中") && line.ends_with('…'), "{line}");
        assert!(cols(&line) <= width, "{} columns: {line}", cols(&line));

        // A terminal too narrow for even the bar still gets lines that fit.
        r.set_width(12);
        feed_all(&mut r, &[status(JOB, 3, "x")]);
        assert!(cols(&visible(&r.drawn[0])) <= 12);
    }

    #[test]
    fn tool_input_is_cut_to_the_width_with_a_floor() {
        let input = format!(r#"{{"command":"{}"}}"#, "echo hello; ".repeat(20));
        let call = ev(
            JOB,
            1,
            1,
            T::AiToolCalled,
            Some(Payload::ToolCall(pb::ToolCall {
                tool: "Bash".into(),
                call_id: String::new(),
                input_json: input.clone(),
            })),
        );
        let wide = Options {
            width: 120,
            ..plain()
        };
        let (text, _) = run(wide, std::slice::from_ref(&call));
        let line = text.trim_end();
        assert_eq!(cols(line), 120);
        assert!(line.ends_with('…'));
        let narrow = Options {
            width: 50,
            ..plain()
        };
        let (text, _) = run(narrow, std::slice::from_ref(&call));
        let (_, shown) = text
            .trim_end()
            .split_once("tool Bash ")
            .expect("a tool line");
        assert_eq!(cols(shown), MIN_TOOL_INPUT_COLS);
        let unlimited = Options {
            width: 0,
            ..plain()
        };
        let (text, _) = run(unlimited, &[call]);
        assert!(text.trim_end().ends_with(&input));
    }

    #[test]
    fn more_than_ten_jobs_collapse_into_a_count() {
        let ids: Vec<String> = (0..12).map(|n| format!("job-{n:02}")).collect();
        let created: Vec<_> = ids
            .iter()
            .map(|id| {
                ev(
                    id,
                    0,
                    1,
                    T::JobCreated,
                    job(pb::JobState::Pending, 0, 0, ""),
                )
            })
            .collect();
        let mut r = WatchRenderer::new(tty(80));
        feed_all(&mut r, &created);
        assert_eq!(r.drawn.len(), MAX_STATUS_JOBS + 1);
        assert_eq!(visible(&r.drawn[MAX_STATUS_JOBS]), "+2 more");
        let done = ev(
            &ids[0],
            0,
            2,
            T::JobCompleted,
            job(pb::JobState::Completed, 1, 0, ""),
        );
        let text = feed_all(&mut r, &[done]);
        assert_eq!(visible(&r.drawn[MAX_STATUS_JOBS]), "+1 more");
        assert!(visible(&r.drawn[0]).starts_with("job-01 pending"));
        assert!(text.contains(&format!("\r\x1b[{}A\x1b[J", MAX_STATUS_JOBS + 1)));
    }

    #[test]
    fn events_after_a_jobs_end_do_not_bring_it_back() {
        let mut r = WatchRenderer::new(tty(80));
        feed_all(
            &mut r,
            &[
                ev(
                    JOB,
                    1,
                    1,
                    T::JobStarted,
                    job(pb::JobState::Executing, 1, 0, ""),
                ),
                ev(
                    JOB,
                    1,
                    2,
                    T::JobCompleted,
                    job(pb::JobState::Completed, 1, 0, ""),
                ),
                ev(
                    JOB,
                    1,
                    3,
                    T::AgentCompleted,
                    agent(pb::AgentState::Completed, 1, ""),
                ),
            ],
        );
        assert!(r.jobs.is_empty());
        assert!(r.drawn.is_empty());
    }

    #[test]
    fn pieces_of_a_long_line_are_marked_as_continued() {
        let piece = |seq, stream, text: &str, partial| {
            let mut o = out(stream, "", text);
            o.partial = partial;
            ev(JOB, 1, seq, T::StepOutput, Some(Payload::Output(o)))
        };
        use pb::OutputStream::{Stderr, Stdout};
        let items = [
            piece(1, Stdout, "aaaa", true),
            piece(2, Stderr, "an unrelated error", false),
            piece(3, Stdout, "bbbb", true),
            piece(4, Stdout, "cccc\nnext line", false),
            piece(5, Stdout, "after", false),
        ];
        let (text, _) = run(plain(), &items);
        let shown: Vec<&str> = text
            .lines()
            .map(|l| l.split_once(" step.output ").expect("an output line").1)
            .collect();
        assert_eq!(
            shown,
            [
                "stdout| aaaa",
                "stderr| an unrelated error",
                "stdout|↪bbbb",
                "stdout|↪cccc",
                "stdout| next line",
                "stdout| after",
            ]
        );
        assert!(run(plain(), &items[..1]).0.contains("stdout| aaaa"));
    }

    #[test]
    fn agent_text_cannot_drive_the_terminal() {
        assert_eq!(
            clean_output("\x1b[1;31merror\x1b[0m: bad\x07 \x1b]0;pwned\x07title\tkept"),
            "error: bad\u{FFFD} title\tkept"
        );
        assert_eq!(clean_output("  3/10\r  7/10\r 10/10"), " 10/10");
        assert_eq!(clean_output("windows line\r"), "windows line");
        assert_eq!(
            clean_output("osc with st \x1b]8;;http://x\x1b\\link"),
            "osc with st link"
        );
        assert_eq!(
            inline("two\nlines\tand\r\x1b[2Jclear"),
            "two lines and clear"
        );
        let mut o = out(pb::OutputStream::Stdout, "", "\x1b[2J\x1b[Hgotcha");
        o.lines = 1;
        let (text, _) = run(
            plain(),
            &[ev(JOB, 1, 1, T::StepOutput, Some(Payload::Output(o)))],
        );
        assert!(text.ends_with("stdout| gotcha\n"), "{text:?}");
    }

    #[test]
    fn without_output_only_the_output_is_hidden() {
        let opts = Options {
            show_output: false,
            ..plain()
        };
        let (text, _) = run(opts, &sequence());
        assert!(!text.contains("step.output"));
        assert!(text.contains("job.progress 40% compiling"));
        assert_eq!(text.lines().count(), 27 - 4);
    }

    #[test]
    fn colors_only_when_the_caller_asks() {
        let colored = Options {
            color: true,
            ..plain()
        };
        let (text, _) = run(colored, &sequence());
        assert!(text.contains("\x1b[2m2026-11-18T20:53:42.000Z\x1b[0m spoke-a/2e3f4a5b job.completed \x1b[32mcompleted attempt=2\x1b[0m\n"));
        assert!(!text.contains("\x1b[J"), "no cursor movement in plain mode");
        let (text, _) = run(
            Options {
                color: false,
                ..tty(80)
            },
            &sequence(),
        );
        assert!(!text.contains("\x1b[0m"), "no SGR codes without color");
        assert!(text.contains("\x1b[J"));
    }

    #[test]
    fn event_type_names_derive_from_the_enum() {
        assert_eq!(event_type_name(T::AiToolCalled as i32), "ai.tool_called");
        assert_eq!(event_type_name(T::StepOutput as i32), "step.output");
        assert_eq!(event_type_name(T::JobCreated as i32), "job.created");
        assert_eq!(event_type_name(T::AgentKilled as i32), "agent.killed");
        assert_eq!(event_type_name(T::AiTokensUsed as i32), "ai.tokens_used");
        assert_eq!(event_type_name(99), "unknown(99)");
        let mut named = 0;
        for value in 1..100 {
            if let Ok(t) = T::try_from(value) {
                let name = event_type_name(value);
                assert!(name.contains('.'), "{name}");
                assert_eq!(parse_event_type(&name), Some(t), "{name}");
                named += 1;
            }
        }
        assert_eq!(named, 24);
        assert_eq!(parse_event_type("ai_tool.called"), None);
        assert_eq!(parse_event_type("AI.TOOL_CALLED"), None);
        assert_eq!(parse_event_type("job.nope"), None);
    }

    #[test]
    fn json_line_has_the_proto_fields_by_name() {
        let mut o = out(pb::OutputStream::Stderr, "build", "warning: x");
        o.dropped_lines = 3;
        o.dropped_bytes = 120;
        let item = ev(JOB, 1, 8, T::StepOutput, Some(Payload::Output(o)));
        assert_eq!(
            json_line(&item),
            json!({
                "cursor": "h-8",
                "kind": "event",
                "type": "step.output",
                "spoke_id": "spoke-a",
                "workspace": "demo",
                "job_id": JOB,
                "agent_id": format!("{JOB}.1"),
                "seq": 8,
                "at": "2026-11-18T20:53:28.000Z",
                "at_ms": T0 + 8000,
                "payload": {
                    "stream": "stderr",
                    "step": "build",
                    "text": "warning: x",
                    "lines": 1,
                    "partial": false,
                    "dropped_lines": 3,
                    "dropped_bytes": 120,
                },
            })
        );
        let done = json_line(&ev(
            JOB,
            2,
            22,
            T::JobCompleted,
            job(pb::JobState::Completed, 2, 0, ""),
        ));
        assert_eq!(done["type"], "job.completed");
        assert_eq!(
            done["payload"],
            json!({"state": "completed", "attempt": 2, "ready_at_ms": 0, "error": ""})
        );
        let failed = json_line(&ev(
            JOB,
            1,
            3,
            T::AgentFailed,
            agent(pb::AgentState::Failed, 1, "exit 1"),
        ));
        assert_eq!(failed["payload"]["state"], "failed");
        let tokens = json_line(&sequence()[13]);
        assert_eq!(tokens["payload"]["cache_read_input_tokens"], 800);
        assert_eq!(tokens["payload"]["model"], "claude-sonnet-4-5");
        let message = json_line(&status(JOB, 4, "hello"));
        assert_eq!(message["payload"], json!({"message": "hello"}));
        assert_eq!(
            json_line(&ev(JOB, 0, 5, T::JobFailed, None))["payload"],
            Value::Null
        );

        let row = json_line(&snap(OTHER, pb::JobState::Executing, 40, ""));
        assert_eq!(
            row,
            json!({
                "cursor": format!("s-{OTHER}"),
                "kind": "job",
                "spoke_id": "spoke-a",
                "workspace": "demo",
                "job_id": OTHER,
                "state": "executing",
                "agent_id": format!("{OTHER}.1"),
                "agent_state": "running",
                "seq": 7,
                "at": "2026-11-18T20:52:20.000Z",
                "at_ms": T0 - 60_000,
                "progress": 40,
                "error": "",
            })
        );
        assert_eq!(
            json_line(&snap_end(2)),
            json!({"cursor": "s-end", "kind": "snapshot_end", "jobs": 2})
        );
        let unknown = admin::WatchResponse {
            cursor: "c".into(),
            item: None,
        };
        assert_eq!(
            json_line(&unknown),
            json!({"cursor": "c", "kind": "unknown"})
        );
        assert_eq!(
            run(plain(), &[unknown]).0,
            "",
            "nothing to show for an unknown item"
        );
    }

    #[test]
    fn small_formats() {
        assert_eq!(short_id(JOB), "2e3f4a5b");
        assert_eq!(short_id("job-1"), "job-1");
        assert_eq!(human_bytes(6), "6 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024), "5.0 MiB");
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(T0 + 7), "2026-11-18T20:53:20.007Z");
        assert_eq!(
            short_digest("sha256:0123456789abcdef"),
            "sha256:0123456789ab…"
        );
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
        assert_eq!(job_state_name(42), "unknown(42)");
    }
}
