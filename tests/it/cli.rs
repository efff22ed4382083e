//! The `mosaic-hub` and `mosaic-spoke` binaries as users run them: output, exit codes, errors.

use mosaic_tests::*;

#[tokio::test]
async fn spawn_wait_status_and_kill_through_the_cli() {
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();

    let (code, out, err) = hub_cli_as(
        &fed,
        "operator",
        &[
            "spawn",
            "--spoke",
            "a",
            "--profile",
            "echo",
            "--workspace",
            "ws-test",
            "--wait",
            "--",
            "hi",
            "there",
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state      completed"), "{out}");
    assert!(out.contains("spoke      a"), "{out}");
    assert!(
        out.contains("attempts   1 (0 failed; up to 3 retries)"),
        "{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("attempt 1  ") && l.contains("  completed  exit 0  pid ")),
        "{out}"
    );
    assert!(out.contains("output     hi there"), "{out}");

    let (code, out, err) = hub_cli_as(
        &fed,
        "operator",
        &[
            "--output",
            "json",
            "spawn",
            "--spoke",
            "a",
            "--profile",
            "sh",
            "--workspace",
            "ws-test",
            "--wait",
            "--max-retries",
            "1",
            "--backoff-base",
            "50ms",
            "--priority",
            "9",
            "--",
            "exit 3",
        ],
    );
    assert_eq!(code, 3, "a failed job under --wait exits 3: {err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spoke_id"], "a");
    let j = &v["job"];
    assert_eq!(j["state"], "JOB_STATE_FAILED");
    assert_eq!(j["priority"], 9);
    assert_eq!(
        (j["attempts"].as_u64(), j["failures"].as_u64()),
        (Some(2), Some(2))
    );
    assert_eq!(j["attempt_history"][1]["exit_code"], 3);
    assert_eq!(j["attempt_history"][1]["attempt"], 2);

    let (code, out, _) = hub_cli_as(
        &fed,
        "operator",
        &[
            "-o",
            "json",
            "spawn",
            "--spoke",
            "a",
            "--profile",
            "sh",
            "--workspace",
            "ws-test",
            "--request-id",
            "sleeper",
            "--",
            "sleep 300",
        ],
    );
    assert_eq!(code, 0);
    let job = serde_json::from_str::<serde_json::Value>(&out).unwrap()["job"]["job_id"]
        .as_str()
        .unwrap()
        .to_owned();
    // The same request id again: the same job, said so.
    let (code, out, _) = hub_cli_as(
        &fed,
        "operator",
        &[
            "spawn",
            "--spoke",
            "a",
            "--profile",
            "sh",
            "--workspace",
            "ws-test",
            "--request-id",
            "sleeper",
            "--",
            "sleep 300",
        ],
    );
    assert_eq!(code, 0);
    assert!(out.contains(&format!("job        {job}")), "{out}");
    assert!(out.contains("nothing was done again"), "{out}");

    // A viewer may look but not kill; exit codes say which refusal it was.
    let (code, _, err) = hub_cli_as(&fed, "viewer", &["kill", &job]);
    assert_eq!(code, 6, "{err}");
    assert!(err.contains("may not kill"), "{err}");
    let (code, _, err) = hub_cli_as(&fed, "other", &["kill", &job]);
    assert_eq!(code, 4, "another workspace's job is not found: {err}");

    let (code, out, err) = hub_cli_as(&fed, "operator", &["kill", &job]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("state      cancelled"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("attempt 1  ") && l.contains("  killed  signal 15")),
        "{out}"
    );
    let (code, out, _) = hub_cli_as(&fed, "viewer", &["-o", "json", "status", &job]);
    assert_eq!(code, 0);
    let v = serde_json::from_str::<serde_json::Value>(&out).unwrap();
    assert_eq!(v["job"]["state"], "JOB_STATE_CANCELLED");
    assert_eq!(
        v["job"]["attempt_history"][0]["state"],
        "AGENT_STATE_KILLED"
    );

    let missing = uuid::Uuid::now_v7().to_string();
    let (code, _, err) = hub_cli_as(&fed, "viewer", &["status", &missing]);
    assert_eq!(code, 4, "an unknown job exits 4: {err}");
    assert!(err.contains(&format!("job {missing} not found")), "{err}");

    let (code, _, err) = hub_cli_as(&fed, "viewer", &["status", "--spoke", "zz", &missing]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("spoke zz is not in the hub's config (configured: a)"),
        "{err}"
    );

    let (code, _, err) = hub_cli_as(
        &fed,
        "operator",
        &[
            "spawn",
            "--spoke",
            "a",
            "--profile",
            "echo",
            "--workspace",
            "no/slash",
        ],
    );
    assert_eq!(code, 2, "bad input is a usage error: {err}");
    assert!(err.contains("workspace"), "{err}");

    // Without a token the CLI says how to get one.
    let (code, _, err) = hub_cli(&fed, &["status", &missing]);
    assert_eq!(code, 1);
    assert!(
        err.contains("--token") && err.contains("MOSAIC_TOKEN"),
        "{err}"
    );

    // Agents: an aligned table, and JSON.
    let (code, out, err) = hub_cli_as(&fed, "viewer", &["agents", "--workspace", "ws-test"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("JOB ") && lines[0].contains("  STATE  "),
        "{out}"
    );
    let row = lines
        .iter()
        .find(|l| l.starts_with(&job))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        row.contains(" cancelled ") && row.contains(&format!("{job}.1")),
        "{out}"
    );
    let col = lines[0].find("STATE").unwrap();
    assert!(lines[1..].iter().all(|l| l.len() > col), "aligned: {out}");
    let (_, out, _) = hub_cli_as(
        &fed,
        "viewer",
        &[
            "-o",
            "json",
            "agents",
            "--state",
            "completed",
            "--state",
            "failed",
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let states: Vec<&str> = v["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| j["state"].as_str().unwrap())
        .collect();
    assert_eq!(states.len(), 2, "{v}");
    assert!(
        states
            .iter()
            .all(|s| ["JOB_STATE_COMPLETED", "JOB_STATE_FAILED"].contains(s)),
        "{v}"
    );
    let (code, _, err) = hub_cli_as(&fed, "viewer", &["agents", "--state", "sleeping"]);
    assert_eq!(code, 2);
    assert!(err.contains("--state"), "{err}");

    // Queue controls: admins only for pause.
    let (code, _, err) = hub_cli_as(&fed, "operator", &["queue", "pause", "--spoke", "a"]);
    assert_eq!(code, 6, "{err}");
    let (code, out, err) = hub_cli_as(&fed, "admin", &["queue", "pause", "--spoke", "a"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("dispatch   paused"), "{out}");
    let (code, out, _) = hub_cli_as(
        &fed,
        "admin",
        &["-o", "json", "queue", "resume", "--spoke", "a"],
    );
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["queue"]["paused"], false);

    // Audit: verified with the keys in hub.toml.
    let (code, out, err) = hub_cli_as(&fed, "admin", &["audit", "--limit", "5"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("SIGNED ") && lines[0].contains("VERIFIED"),
        "{out}"
    );
    assert!(
        lines[1].contains(" resume_queue ") && lines[1].contains(" admin "),
        "{out}"
    );
    assert!(lines[1..6].iter().all(|l| l.ends_with(" yes")), "{out}");
    assert!(
        out.contains("5 records, 5 verified by the keys in hub.toml"),
        "{out}"
    );
    let (code, _, _) = hub_cli_as(&fed, "operator", &["audit"]);
    assert_eq!(code, 6);
}

#[tokio::test]
async fn spokes_lists_reachable_and_unreachable_spokes() {
    let mut fed = Federation::builder()
        .spoke("a")
        .spoke("b")
        .labels("a", &[("zone", "x")])
        .hub_server()
        .start()
        .await
        .unwrap();
    fed.kill_spoke("b");
    let (code, out, err) = hub_cli_as(&fed, "viewer", &["spokes"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("SPOKE  ADDRESS"), "{out}");
    assert!(
        lines[1].starts_with("a ")
            && lines[1].contains(" yes ")
            && lines[1].contains(" zone=x ")
            && lines[1].ends_with("echo,sh,true"),
        "{out}"
    );
    assert!(
        lines[2].starts_with("b ") && lines[2].contains(" no "),
        "{out}"
    );

    let (_, out, _) = hub_cli_as(&fed, "viewer", &["-o", "json", "spokes"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["spokes"][0]["reachable"], true);
    assert_eq!(v["spokes"][1]["reachable"], false);
    assert!(
        v["spokes"][1]["error"]
            .as_str()
            .unwrap()
            .contains("cannot connect to spiffe://test.local/spoke/b")
    );
}

#[test]
fn a_spoke_with_a_bad_config_says_which_key() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("spoke.toml");
    std::fs::write(&cfg, "spoke_id = \"a\"\nspoke_idd = \"b\"\n").unwrap();
    let out = std::process::Command::new(binary("mosaic-spoke"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("unknown field `spoke_idd`") && err.contains("line 2"),
        "{err}"
    );
}

/// Runs `mosaic-spoke serve` on `config` and returns its stderr; it must refuse to start.
fn spoke_refuses(config: &std::path::Path) -> String {
    let out = std::process::Command::new(binary("mosaic-spoke"))
        .args(["serve", "--config"])
        .arg(config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test]
async fn a_spoke_refuses_to_start_with_the_wrong_certificate_or_program() {
    let fed = Federation::builder()
        .spoke("a")
        .spoke("b")
        .start()
        .await
        .unwrap();
    let good = std::fs::read_to_string(fed.dir().join("a.toml")).unwrap();

    let wrong_cert = fed.dir().join("wrong-cert.toml");
    let text = good
        .replace("spoke-a.crt", "spoke-b.crt")
        .replace("spoke-a.key", "spoke-b.key");
    std::fs::write(&wrong_cert, text).unwrap();
    let err = spoke_refuses(&wrong_cert);
    assert!(
        err.contains("tls.cert: certificate ") && err.contains("spoke-b.crt names spiffe://test.local/spoke/b, but this process is spiffe://test.local/spoke/a"),
        "{err}"
    );

    let missing = fed.dir().join("missing-program.toml");
    std::fs::write(
        &missing,
        good.replace("\"/bin/echo\"", "\"/nonexistent/echo\""),
    )
    .unwrap();
    let err = spoke_refuses(&missing);
    assert!(
        err.contains("profiles.echo.program: /nonexistent/echo is not an executable file"),
        "{err}"
    );

    let shared_key = fed.dir().join("shared-key.toml");
    std::fs::write(
        &shared_key,
        good.replace("keys/other-hub.pub.pem", "keys/hub.pub.pem"),
    )
    .unwrap();
    let err = spoke_refuses(&shared_key);
    assert!(
        err.contains("is already trusted for hub hub; a key may belong to one hub only"),
        "{err}"
    );
}

#[test]
fn keygen_and_certs_init_write_usable_files() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(binary("mosaic-hub"))
        .args(["-o", "json", "keygen", "--out"])
        .arg(dir.path().join("keys/k"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let key = mosaic_shared::signing::KeyPair::load(&dir.path().join("keys/k.pem")).unwrap();
    assert_eq!(v["key_id"], key.id().to_string());

    let out = std::process::Command::new(binary("mosaic-hub"))
        .args(["certs", "init", "--out"])
        .arg(dir.path().join("pki"))
        .args(["--hub", "h", "--spoke", "s"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for f in [
        "ca.crt",
        "ca.key",
        "hub-h.crt",
        "hub-h.key",
        "spoke-s.crt",
        "spoke-s.key",
    ] {
        assert!(dir.path().join("pki").join(f).is_file(), "{f}");
    }
    // Running it again never overwrites.
    let out = std::process::Command::new(binary("mosaic-hub"))
        .args(["certs", "init", "--out"])
        .arg(dir.path().join("pki"))
        .args(["--hub", "h"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ca.crt"));
}

#[test]
fn the_quickstart_demo_runs() {
    let out = std::process::Command::new(binary("mosaic-hub"))
        .args(["dev", "--exit-after-demo"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("state      completed"), "{stdout}");
    assert!(stdout.contains("output     hello from spoke-a"), "{stdout}");
    assert!(
        stdout.contains("attempts   3 (2 failed; up to 2 retries)"),
        "{stdout}"
    );
    assert!(stdout.contains("output     third time lucky"), "{stdout}");
    assert!(stdout.contains("state      cancelled"), "{stdout}");
    // The first job's events, as a watcher receives them through the hub.
    assert!(stdout.contains("4. the events of step 1's job"), "{stdout}");
    assert!(
        stdout.contains(" step.output stdout| hello from spoke-a"),
        "{stdout}"
    );
    assert!(
        stdout.contains(" job.completed completed attempt=1"),
        "{stdout}"
    );
    // The audit trail: the commands the hub signed, verified.
    assert!(stdout.contains("5. the hub's audit trail"), "{stdout}");
    assert!(
        stdout.contains(" kill ") && stdout.contains(" ok ") && stdout.contains(" verified"),
        "{stdout}"
    );
    assert!(!stdout.contains("NOT VERIFIED"), "{stdout}");
    assert!(stdout.contains("6. round trip"), "{stdout}");
}

#[test]
fn token_new_prints_a_token_whose_entry_grants_it() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(binary("mosaic-hub"))
            .args(args)
            .output()
            .expect("run mosaic-hub");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&[
        "--output",
        "json",
        "token",
        "new",
        "--name",
        "ci",
        "--role",
        "operator",
        "--workspace",
        "team-a",
    ]);
    assert_eq!(code, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let token = v["token"].as_str().unwrap();
    let entry = v["entry"].as_str().unwrap();
    assert!(
        !entry.contains(token),
        "the entry holds the hash, never the token"
    );
    let set = mosaic_hub::auth::TokenSet::from_toml(entry, std::path::Path::new("tokens.toml"))
        .expect("the printed entry is a valid tokens file");
    let who = set.authenticate(token).expect("the token authenticates");
    assert_eq!(who.name().as_str(), "ci");
    assert_eq!(who.role(), mosaic_hub::auth::Role::Operator);
    assert!(set.authenticate(&format!("{token}x")).is_none());

    // The human form shows the token once and the entry to paste.
    let (code, out, _) = run(&[
        "token",
        "new",
        "--name",
        "ops",
        "--role",
        "admin",
        "--workspace",
        "*",
    ]);
    assert_eq!(code, 0);
    assert!(out.contains("shown only this once"), "{out}");
    assert!(
        out.contains("role = \"admin\"\nworkspaces = \"*\""),
        "{out}"
    );

    // Bad values are usage errors (exit 2) that name the flag or say what to do.
    let (code, _, err) = run(&[
        "token",
        "new",
        "--name",
        "ci",
        "--role",
        "root",
        "--workspace",
        "a",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--role"), "{err}");
    let (code, _, err) = run(&[
        "token",
        "new",
        "--name",
        "ci",
        "--role",
        "admin",
        "--workspace",
        "a",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("needs workspaces = \"*\""), "{err}");
}

#[tokio::test]
async fn watch_follows_a_job_through_the_hub_until_it_ends() {
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let a = fed.client("a").await.unwrap();
    let script = "echo '{\"mosaic\":\"progress\",\"percent\":30,\"message\":\"warming up\"}'; echo hello; sleep 0.2";
    let (r, _) = fed.run_to_end(&a, spawn_action("sh", &[script])).await;
    let job = job_of(&r).job_id.clone();
    let hub = fed.hub_addr().to_string();
    let watch = |token: &str, extra: &[&str]| {
        let mut args = vec!["watch", "--hub", hub.as_str(), "--token", token];
        args.extend_from_slice(extra);
        hub_cli(&fed, &args)
    };

    // Plain lines (stdout is not a terminal), ending when the job does, exit 0.
    let (code, out, err) = watch(&fed.token("viewer"), &["--job", &job]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(" job.created pending"), "{out}");
    assert!(out.contains(" job.progress 30% warming up"), "{out}");
    assert!(out.contains(" step.output stdout| hello"), "{out}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .contains(" job.completed completed"),
        "{out}"
    );

    // JSON lines for scripts, each with the cursor to resume after.
    let (code, out, err) = watch(&fed.token("viewer"), &["--job", &job, "--output", "json"]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(
        lines
            .iter()
            .all(|l| !l["cursor"].as_str().unwrap().is_empty())
    );
    assert_eq!(lines.last().unwrap()["type"], "job.completed");
    assert_eq!(lines[0]["job_id"], job.as_str());

    // A failed job exits 3.
    let (r, _) = fed.run_to_end(&a, spawn_action("sh", &["exit 2"])).await;
    let failed = job_of(&r).job_id.clone();
    let (code, _, err) = watch(&fed.token("operator"), &["--job", &failed]);
    assert_eq!(code, 3, "{err}");

    // A bad token is refused with a message that says so, and a bad type names the flag.
    let (code, _, err) = watch("mosaic_wrong", &["--job", &job]);
    assert_eq!(code, 6, "not allowed exits 6: {err}");
    assert!(err.contains("the token is not valid"), "{err}");
    let (code, _, err) = watch(
        &fed.token("viewer"),
        &["--job", &job, "--type", "job.exploded"],
    );
    assert_eq!(code, 2);
    assert!(err.contains("--type"), "{err}");
}
