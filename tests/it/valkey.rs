//! Valkey options: a three-node Valkey Cluster, and a Valkey that speaks only TLS and requires
//! a client certificate (`rediss://` with `[valkey_tls]`). Hub and spokes are the real
//! binaries; jobs go through the admin API, events come back through a watch.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use mosaic_shared::pb::federation::v1 as pb;
use mosaic_tests::*;

/// The hash tag of a key (`mosaic:{a}:job:…` → `a`).
fn tag(key: &str) -> &str {
    let open = key.find('{').expect("every key has a hash tag");
    let close = key[open..].find('}').expect("closed") + open;
    &key[open + 1..close]
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_and_spokes_run_on_a_three_node_valkey_cluster() {
    let mut fed = Federation::builder()
        .spoke("a")
        .spoke("b")
        .hub_server()
        .valkey_cluster(3)
        .start()
        .await
        .unwrap();
    let mut c = fed.admin().await.unwrap();
    let op = fed.token("operator");

    // Jobs on both spokes run to completion, and a watch through the hub sees them.
    let mut jobs = Vec::new();
    for i in 0..4 {
        for spoke in ["a", "b"] {
            jobs.push(admin_spawn(&mut c, &op, spoke, "echo", &[&format!("job {i}")]).await);
        }
    }
    let seen = admin_events_until_completed(&mut c, &op, &jobs[0]).await;
    assert!(
        seen.iter().any(|e| e.r#type() == pb::EventType::JobQueued),
        "{seen:?}"
    );
    for job in &jobs {
        let s = admin_wait_job(&mut c, &op, job, Duration::from_secs(20), |s| {
            terminal(s.state())
        })
        .await;
        assert_eq!(s.state(), pb::JobState::Completed, "{s:?}");
        let last = s.attempt_history.last().expect("an attempt");
        assert!(last.output_tail.starts_with("job "), "{last:?}");
    }

    // The keys are spread over the nodes by hash tag: each tag's keys all live on one node
    // (so every script's keys share a slot), and the three tags (two spokes, the hub) do not
    // all share one node.
    let mut nodes_of: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for i in 0..fed.cluster().len() {
        for key in fed.cluster().keys_on(i, "mosaic:*").await.unwrap() {
            nodes_of.entry(tag(&key).to_owned()).or_default().insert(i);
        }
    }
    assert_eq!(
        nodes_of.keys().map(String::as_str).collect::<Vec<_>>(),
        ["a", "b", "hub-hub"],
        "{nodes_of:?}"
    );
    for (tag, nodes) in &nodes_of {
        assert_eq!(
            nodes.len(),
            1,
            "keys of {{{tag}}} on several nodes: {nodes:?}"
        );
    }
    let used: BTreeSet<usize> = nodes_of.values().flatten().copied().collect();
    assert!(used.len() >= 2, "every key on one node: {nodes_of:?}");

    // Crash recovery works on the cluster too: a spoke killed while its job runs finds the
    // orphaned attempt at its next start, fails it with `spoke_restarted`, and retries it.
    let long = admin_spawn(&mut c, &op, "a", "sh", &["sleep 1; echo survived"]).await;
    admin_wait_job(&mut c, &op, &long, Duration::from_secs(10), |s| {
        s.state() == pb::JobState::Executing
    })
    .await;
    fed.kill_spoke("a");
    fed.restart_spoke("a").unwrap();
    let s = admin_wait_job(&mut c, &op, &long, Duration::from_secs(30), |s| {
        terminal(s.state())
    })
    .await;
    assert_eq!(s.state(), pb::JobState::Completed, "{s:?}");
    assert!(s.attempt_history.len() >= 2, "{s:?}");
    assert_eq!(s.attempt_history[0].error, "spoke_restarted", "{s:?}");
    assert!(
        s.attempt_history
            .last()
            .unwrap()
            .output_tail
            .contains("survived"),
        "{s:?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_and_spoke_reach_valkey_over_tls_with_a_client_certificate() {
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .valkey_tls()
        .start()
        .await
        .unwrap();
    let mut c = fed.admin().await.unwrap();
    let op = fed.token("operator");

    // The server answers only TLS: a plaintext client to the same port gets no answer.
    let url = fed.valkey_url();
    let plain = url.replacen("rediss://", "redis://", 1);
    let refused = tokio::time::timeout(Duration::from_secs(5), async {
        let client = redis::Client::open(plain.as_str())?;
        let mut con = client.get_multiplexed_async_connection().await?;
        redis::cmd("PING").query_async::<String>(&mut con).await
    })
    .await;
    assert!(!matches!(refused, Ok(Ok(_))), "plaintext was answered");

    // Spawn, run, events: the spoke's queue, scripts and blocking event reads, and the hub's
    // log and audit, all go over TLS.
    let job = admin_spawn(&mut c, &op, "a", "echo", &["over tls"]).await;
    admin_events_until_completed(&mut c, &op, &job).await;
    let s = admin_wait_job(&mut c, &op, &job, Duration::from_secs(10), |s| {
        terminal(s.state())
    })
    .await;
    assert_eq!(s.state(), pb::JobState::Completed, "{s:?}");
    let mut plain_con = redis::Client::open(fed.valkey_socket_url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg("mosaic:{a}:*")
        .query_async(&mut plain_con)
        .await
        .unwrap();
    assert!(
        !keys.is_empty(),
        "the spoke wrote nothing to the TLS server"
    );

    // Wrong TLS settings are start-up errors that say what to check.
    let config = std::fs::read_to_string(fed.dir().join("a.toml")).unwrap();
    let other_ca = fed.dir().join("pki").join("ca.crt");
    let tls = fed.dir().join("valkey-tls");
    let cases = [
        (
            "a CA that did not sign the server's certificate",
            config.replace(
                &format!("ca = {:?}", tls.join("ca.crt").display().to_string()),
                &format!("ca = {:?}", other_ca.display().to_string()),
            ),
            "TLS handshake failed (invalid peer certificate: UnknownIssuer)",
        ),
        (
            "no client certificate",
            config
                .lines()
                .filter(|l| !l.starts_with("cert = \"") || !l.contains("valkey-tls"))
                .filter(|l| !l.starts_with("key = \"") || !l.contains("valkey-tls"))
                .collect::<Vec<_>>()
                .join("\n"),
            "TLS handshake failed (received fatal alert: CertificateRequired)",
        ),
        (
            "a plaintext URL with [valkey_tls]",
            config.replacen("rediss://", "redis://", 1),
            "valkey_tls: is set but valkey_url",
        ),
    ];
    for (what, text, expect) in cases {
        assert_ne!(text, config, "{what}: the case changed nothing");
        let bad = fed.dir().join("bad.toml");
        std::fs::write(&bad, &text).unwrap();
        let (status, stderr) = spoke_start_failure(&bad).await;
        assert!(!status.success(), "{what}: {stderr}");
        assert!(stderr.contains(expect), "{what}: {stderr}");
    }
}
