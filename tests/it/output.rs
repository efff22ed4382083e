//! What agents print becomes events: plain output (batched, bounded under a flood), the
//! structured lines of the documented format, artifacts with digests the spoke computes, and
//! Claude Code's `stream-json`, whose final `result` decides the outcome.

use std::time::Duration;

use mosaic_shared::pb::federation::v1 as pb;
use mosaic_tests::*;
use pb::EventType as T;
use pb::event::Payload;

/// All events of `job`, read from the spoke's stream until the job ends.
async fn job_events(fed: &Federation, spoke: &str, job: &str) -> Vec<pb::Event> {
    let mut stream = fed
        .events(
            spoke,
            pb::EventsRequest {
                job_id: job.into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let events = read_events_until(&mut stream, Duration::from_secs(30), |seen| {
        job_ended(seen, job)
    })
    .await
    .unwrap();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e.seq,
            i as u64 + 1,
            "job events are numbered without gaps: {e:?}"
        );
    }
    events
}

fn outputs(events: &[pb::Event], stream: pb::OutputStream) -> Vec<pb::Output> {
    events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::Output(o)) if o.stream() == stream => Some(o.clone()),
            _ => None,
        })
        .collect()
}

fn sh_profile(extra: &[&str]) -> ProfileSpec {
    ProfileSpec {
        program: "/bin/sh".into(),
        args: vec!["-c".into()],
        allowed_env: vec![],
        kill_grace_ms: 500,
        concurrency: None,
        extra: extra.iter().map(|s| s.to_string()).collect(),
    }
}

#[tokio::test]
async fn output_and_structured_lines_become_events_in_order() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    let script = r#"
echo '{"mosaic":"step.started","step":"build"}'
echo compiling
echo careful >&2
echo '{"mosaic":"progress","percent":40,"message":"half way"}'
printf report > report.md
echo '{"mosaic":"artifact","path":"report.md"}'
ln -s /etc/hostname leak
echo '{"mosaic":"artifact","path":"leak"}'
echo '{"mosaic":"tool","tool":"Bash","call_id":"c1","input":{"command":"make"}}'
echo '{"mosaic":"tokens","model":"m1","input":10,"output":5}'
echo '{"mosaic":"gate.passed","gate":"lint","message":"clean"}'
echo '{"mosaic":"step.completed","step":"build"}'
echo '{"mosaic":"progress","percent":400}'
echo done
"#;
    let (r, job) = fed.run_to_end(&a, spawn_action("sh", &[script])).await;
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    let events = job_events(&fed, "a", &job_of(&r).job_id).await;

    // Between running and completed, in the order printed (stderr is another pipe, so only
    // stdout's order is fixed).
    let running = events
        .iter()
        .position(|e| e.r#type() == T::AgentRunning)
        .unwrap();
    let done = events
        .iter()
        .position(|e| e.r#type() == T::AgentCompleted)
        .unwrap();
    let middle: Vec<&pb::Event> = events[running + 1..done]
        .iter()
        .filter(|e| {
            !matches!(&e.payload, Some(Payload::Output(o)) if o.stream() == pb::OutputStream::Stderr)
        })
        .collect();
    let kinds: Vec<T> = middle.iter().map(|e| e.r#type()).collect();
    assert_eq!(
        kinds,
        [
            T::StepStarted,
            T::StepOutput,
            T::JobProgress,
            T::AiArtifactCreated,
            T::AiToolCalled,
            T::AiTokensUsed,
            T::GatePassed,
            T::StepCompleted,
            T::StepOutput,
        ],
        "{middle:#?}"
    );
    let Some(Payload::Output(compiling)) = &middle[1].payload else {
        panic!()
    };
    assert_eq!(
        (compiling.text.as_str(), compiling.step.as_str()),
        ("compiling", "build")
    );
    let Some(Payload::Progress(p)) = &middle[2].payload else {
        panic!()
    };
    assert_eq!((p.percent, p.message.as_str()), (40, "half way"));
    let Some(Payload::Artifact(art)) = &middle[3].payload else {
        panic!()
    };
    assert_eq!(art.path, "report.md");
    assert_eq!(art.size_bytes, 6);
    assert_eq!(art.digest, format!("sha256:{}", sha256_hex(b"report")));
    let Some(Payload::ToolCall(tool)) = &middle[4].payload else {
        panic!()
    };
    assert_eq!((tool.tool.as_str(), tool.call_id.as_str()), ("Bash", "c1"));
    assert_eq!(tool.input_json, r#"{"command":"make"}"#);
    let Some(Payload::Tokens(t)) = &middle[5].payload else {
        panic!()
    };
    assert_eq!(
        (t.model.as_str(), t.input_tokens, t.output_tokens),
        ("m1", 10, 5)
    );
    // An out-of-range progress line is plain output, after the step ended.
    let Some(Payload::Output(last)) = &middle[8].payload else {
        panic!()
    };
    assert_eq!(last.text, "{\"mosaic\":\"progress\",\"percent\":400}\ndone");
    assert_eq!(last.step, "");

    let stderr: Vec<String> = outputs(&events, pb::OutputStream::Stderr)
        .into_iter()
        .map(|o| o.text)
        .collect();
    assert!(stderr.contains(&"careful".to_owned()), "{stderr:?}");
    // A symlink out of the working directory is refused, and said so.
    assert!(
        stderr
            .iter()
            .any(|t| t == "artifact leak not recorded: it resolves outside the working directory"),
        "{stderr:?}"
    );
    assert_eq!(
        events
            .iter()
            .filter(|e| e.r#type() == T::AiArtifactCreated)
            .count(),
        1
    );
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(data))
}

#[tokio::test]
async fn a_flood_of_output_is_dropped_and_counted_and_the_spoke_stays_bounded() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    // 2,000,000 lines of 99 characters (200 MB), written as fast as the pipe takes them.
    let script = "head -c 198000000 /dev/zero | tr '\\0' x | fold -w 99";
    let started = std::time::Instant::now();
    let (r, job) = fed
        .run_to_end_within(&a, spawn_action("sh", &[script]), Duration::from_secs(120))
        .await;
    let took = started.elapsed();
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    let events = job_events(&fed, "a", &job_of(&r).job_id).await;

    let out = outputs(&events, pb::OutputStream::Stdout);
    let kept_lines: u64 = out.iter().map(|o| u64::from(o.lines)).sum();
    let dropped_lines: u64 = out.iter().map(|o| o.dropped_lines).sum();
    let kept_bytes: u64 = out
        .iter()
        .map(|o| o.text.len() as u64 + u64::from(o.lines))
        .sum();
    assert_eq!(
        kept_lines + dropped_lines,
        2_000_000,
        "every line is kept or counted"
    );
    assert!(
        dropped_lines > 1_000_000,
        "most of the flood is dropped: {dropped_lines}"
    );
    // The budget: a 512 KiB burst, then 64 KiB/s.
    let budget = 512 * 1024 + 64 * 1024 * (took.as_secs() + 2);
    assert!(
        kept_bytes <= budget,
        "kept {kept_bytes} bytes in {took:?}, budget {budget}"
    );
    assert!(
        out.len() < 200 + 50 * (took.as_secs() as usize + 2),
        "{} output events in {took:?}",
        out.len()
    );
    // The spoke's peak memory stays far below the flood's size.
    let status = std::fs::read_to_string(format!("/proc/{}/status", fed.spoke_pid("a"))).unwrap();
    let peak_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!(
        "flood: {took:?}, kept {kept_lines} lines in {} events, dropped {dropped_lines}, spoke peak RSS {peak_kb} kB",
        out.len()
    );
    assert!(
        peak_kb < 64 * 1024,
        "spoke peak RSS {peak_kb} kB during a 200 MB flood"
    );
    // The attempt's tail still holds the end of the output.
    let tail = &job.attempt_history[0].output_tail;
    assert!(tail.trim_end().ends_with(&"x".repeat(99)), "{tail:?}");
}

fn claude_profile() -> ProfileSpec {
    sh_profile(&["format = \"claude-stream-json\"", "result_grace_ms = 300"])
}

fn transcript(name: &str) -> String {
    format!(
        "{}/../spoke/testdata/claude-stream-json/{name}",
        env!("CARGO_MANIFEST_DIR")
    )
}

#[tokio::test]
async fn claude_stream_json_maps_tool_calls_and_tokens_and_its_result_decides() {
    let fed = Federation::builder()
        .spoke("a")
        .profile("claude", claude_profile())
        .start()
        .await
        .unwrap();
    let a = fed.client("a").await.unwrap();

    // A successful 2026-shape run.
    let cat = |file: &str| format!("cat '{}'", transcript(file));
    let (r, job) = fed
        .run_to_end(
            &a,
            spawn_action("claude", &[&cat("constructed-2026-shape.jsonl")]),
        )
        .await;
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    let events = job_events(&fed, "a", &job_of(&r).job_id).await;
    let tools: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match &e.payload {
            Some(Payload::ToolCall(t)) => Some((t.tool.clone(), t.call_id.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        tools.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        ["Bash", "Agent", "Grep", "Edit"],
        "{tools:?}"
    );
    assert_eq!(tools[0].1, "toolu_01A");
    assert!(
        events.iter().any(|e| e.r#type() == T::AiTokensUsed),
        "token usage is reported"
    );

    // is_error with subtype success is a failure, with the result's text as the error.
    let (_, job) = fed
        .run_to_end(
            &a,
            spawn_with(
                "claude",
                &[&cat("constructed-is-error-success.jsonl")],
                |s| s.max_retries = Some(0),
            ),
        )
        .await;
    assert_eq!(job.state(), pb::JobState::Failed, "{job:?}");
    assert!(
        job.error
            .starts_with("claude reported an error (success): "),
        "{}",
        job.error
    );

    // No result line: a failure, even though the process exited 0.
    let (_, job) = fed
        .run_to_end(
            &a,
            spawn_action("claude", &[&cat("constructed-no-result.jsonl")]),
        )
        .await;
    assert_eq!(job.state(), pb::JobState::Failed, "{job:?}");
    assert_eq!(job.error, "claude exited without a result line");
    assert_eq!(job.attempt_history[0].exit_code, Some(0));

    // A result, then the process hangs: stopped after the grace, and the result decides.
    let hang = format!("{}; exec sleep 30", cat("constructed-2026-shape.jsonl"));
    let started = std::time::Instant::now();
    let (_, job) = fed.run_to_end(&a, spawn_action("claude", &[&hang])).await;
    assert_eq!(job.state(), pb::JobState::Completed, "{job:?}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "stopped after the grace"
    );
    assert_eq!(job.attempt_history[0].signal, Some(15), "{job:?}");
}
