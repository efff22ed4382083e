//! The verification chain against hostile and broken callers. Each refusal must carry its own
//! gRPC code, reason and message, and must run nothing.

use std::time::Duration;

use mosaic_hub::certs::{self, PkiPlan};
use mosaic_hub::config::HubConfig;
use mosaic_hub::spokes::SpokeError;
use mosaic_shared::config::Env;
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::KeyPair;
use mosaic_shared::tls::{Role, TlsMaterial, TlsPaths};
use mosaic_tests::*;
use tonic::Code;

/// Sends `envelope` to spoke `a` as `tls` and returns the spoke's refusal.
async fn refuse(fed: &Federation, tls: &TlsMaterial, envelope: pb::SignedCommand) -> tonic::Status {
    let mut client = fed.raw_client("a", tls).await.expect("mTLS connection");
    client
        .execute(envelope)
        .await
        .expect_err("the spoke must refuse this command")
}

fn assert_refused(s: &tonic::Status, code: Code, reason_code: &str, message: &str) {
    assert_eq!(s.code(), code, "{s:?}");
    assert_eq!(reason(s), reason_code, "{s:?}");
    assert!(
        s.message().contains(message),
        "{:?} lacks {message:?}",
        s.message()
    );
}

#[tokio::test]
async fn forged_and_misdirected_commands_are_refused_and_run_nothing() {
    let fed = Federation::builder()
        .spoke("a")
        .spoke("b")
        .start()
        .await
        .unwrap();
    let hub_tls = fed.hub_tls(HUB);
    let hub_key = fed.key(HUB);
    let spawn = || spawn_action("true", &[]);

    // A flipped bit in the signature.
    let mut env = RawCommand::new(HUB, "a", &hub_key, spawn()).seal(&hub_key);
    env.signature[7] ^= 0x10;
    let s = refuse(&fed, &hub_tls, env).await;
    assert_refused(
        &s,
        Code::Unauthenticated,
        "bad_signature",
        "command signature is invalid",
    );

    // A flipped bit in the signed bytes.
    let mut env = RawCommand::new(HUB, "a", &hub_key, spawn()).seal(&hub_key);
    let last = env.command.len() - 1;
    env.command[last] ^= 0x01;
    let s = refuse(&fed, &hub_tls, env).await;
    assert_refused(
        &s,
        Code::Unauthenticated,
        "bad_signature",
        "does not verify",
    );

    // A key nobody configured.
    let stranger = KeyPair::generate();
    let env = RawCommand::new(HUB, "a", &stranger, spawn()).seal(&stranger);
    let s = refuse(&fed, &hub_tls, env).await;
    assert_refused(
        &s,
        Code::Unauthenticated,
        "unknown_key",
        &format!("signing key {} is not known", stranger.id()),
    );

    // A key the spoke trusts, but for another hub.
    let other_key = fed.key(OTHER_HUB);
    let env = RawCommand::new(HUB, "a", &other_key, spawn()).seal(&other_key);
    let s = refuse(&fed, &hub_tls, env).await;
    assert_refused(
        &s,
        Code::PermissionDenied,
        "key_not_trusted_for_hub",
        &format!("signing key {} is not trusted for hub hub", other_key.id()),
    );

    // Addressed to spoke b, delivered to spoke a.
    let env = RawCommand::new(HUB, "b", &hub_key, spawn()).seal(&hub_key);
    let s = refuse(&fed, &hub_tls, env).await;
    assert_refused(
        &s,
        Code::FailedPrecondition,
        "wrong_spoke",
        "command is addressed to spoke b, this is spoke a",
    );

    // Expired (skew allowance is 5 s in the test config).
    let mut cmd = RawCommand::new(HUB, "a", &hub_key, spawn());
    cmd.command.issued_at_ms -= 120_000;
    cmd.command.expires_at_ms = cmd.command.issued_at_ms + 60_000;
    let s = refuse(&fed, &hub_tls, cmd.seal(&hub_key)).await;
    assert_refused(&s, Code::OutOfRange, "expired", "command expired at");

    // Not yet valid.
    let mut cmd = RawCommand::new(HUB, "a", &hub_key, spawn());
    cmd.command.issued_at_ms += 60_000;
    cmd.command.expires_at_ms += 60_000;
    let s = refuse(&fed, &hub_tls, cmd.seal(&hub_key)).await;
    assert_refused(
        &s,
        Code::OutOfRange,
        "not_yet_valid",
        "command is not valid before",
    );

    // A validity window longer than the spoke allows.
    let mut cmd = RawCommand::new(HUB, "a", &hub_key, spawn());
    cmd.command.expires_at_ms = cmd.command.issued_at_ms + 24 * 3_600_000;
    let s = refuse(&fed, &hub_tls, cmd.seal(&hub_key)).await;
    assert_refused(
        &s,
        Code::InvalidArgument,
        "bad_validity_window",
        "validity window",
    );

    assert_eq!(fed.agent_count("a").await, 0, "a refused command ran");
    assert_eq!(fed.agent_count("b").await, 0);
}

#[tokio::test]
async fn tls_identity_must_match_the_signed_hub() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let other_tls = fed.hub_tls(OTHER_HUB);
    let other_key = fed.key(OTHER_HUB);
    let hub_key = fed.key(HUB);

    // Connected as other-hub, signed by other-hub's key, but claiming to be hub.
    let env = RawCommand::new(HUB, "a", &other_key, spawn_action("true", &[])).seal(&other_key);
    let s = refuse(&fed, &other_tls, env).await;
    assert_refused(
        &s,
        Code::PermissionDenied,
        "hub_mismatch",
        "command is signed for hub hub but the connection is from hub other-hub",
    );

    // Connected as other-hub, carrying a command genuinely signed by hub.
    let env = RawCommand::new(HUB, "a", &hub_key, spawn_action("true", &[])).seal(&hub_key);
    let s = refuse(&fed, &other_tls, env).await;
    assert_refused(
        &s,
        Code::PermissionDenied,
        "key_not_trusted_for_hub",
        "not trusted for hub other-hub",
    );

    // The same command from the right connection is accepted.
    let mut client = fed.raw_client("a", &fed.hub_tls(HUB)).await.unwrap();
    client.execute(env_for(&hub_key)).await.unwrap();
    assert_eq!(fed.agent_count("a").await, 1);
}

fn env_for(hub_key: &KeyPair) -> pb::SignedCommand {
    RawCommand::new(HUB, "a", hub_key, spawn_action("true", &[])).seal(hub_key)
}

#[tokio::test]
async fn a_spoke_certificate_cannot_command_another_spoke() {
    let fed = Federation::builder()
        .spoke("a")
        .spoke("b")
        .start()
        .await
        .unwrap();
    let spoke_b_tls = fed.spoke_tls("b");
    let hub_key = fed.key(HUB);
    let s = refuse(&fed, &spoke_b_tls, env_for(&hub_key)).await;
    assert_refused(
        &s,
        Code::PermissionDenied,
        "peer_identity",
        "the peer is spiffe://test.local/spoke/b, expected spiffe://test.local/hub/<id>",
    );
    assert_eq!(fed.agent_count("a").await, 0);
}

/// A connection without an acceptable client certificate must not get a command through: the
/// handshake (or, with TLS 1.3, the first request) fails.
async fn must_not_connect(fed: &Federation, tls: &TlsMaterial) -> String {
    let hub_key = fed.key(HUB);
    let err = match fed.raw_client("a", tls).await {
        Err(e) => e.to_string(),
        Ok(mut client) => match client.execute(env_for(&hub_key)).await {
            Ok(_) => panic!("a command got through without an acceptable client certificate"),
            Err(s) => format!("{s:?}"),
        },
    };
    assert_eq!(fed.agent_count("a").await, 0);
    err
}

#[tokio::test]
async fn client_certificates_must_exist_and_chain_to_the_ca() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();

    // With TLS 1.3 the client may only see the connection close; the spoke logs why.
    must_not_connect(&fed, &fed.hub_tls(HUB).without_client_certificate()).await;
    let log = fed.spoke_log("a");
    assert!(log.contains("peer sent no certificates"), "{log}");

    // A hub certificate with the right identity, issued by another CA: the client trusts our
    // CA (so it accepts the spoke) but presents a certificate the spoke cannot chain.
    let rogue = fed.dir().join("rogue-pki");
    certs::init(
        &rogue,
        &PkiPlan {
            trust_domain: TRUST_DOMAIN.into(),
            hubs: vec![HUB.parse().unwrap()],
            spokes: vec![],
            admins: Vec::new(),
            valid_days: 1,
        },
    )
    .unwrap();
    let rogue_tls = TlsMaterial::load(&TlsPaths {
        cert: rogue.join(certs::cert_file(Role::Hub, HUB)),
        key: rogue.join(certs::key_file(Role::Hub, HUB)),
        ca: fed.dir().join("pki").join(certs::CA_CERT),
    })
    .unwrap();
    must_not_connect(&fed, &rogue_tls).await;
    let log = fed.spoke_log("a");
    // The rogue CA carries the same subject name as ours, so the chain fails on its signature.
    assert!(
        log.contains("invalid peer certificate: BadSignature"),
        "the spoke should log why it refused: {log}"
    );
}

#[tokio::test]
async fn the_hub_checks_the_spoke_identity_and_receipt_key() {
    let fed = Federation::builder()
        .spoke("a")
        .spoke("b")
        .start()
        .await
        .unwrap();

    // Spoke a's address configured under spoke b's name: a valid chain, the wrong identity.
    let env = Env::default().with(
        "MOSAIC_HUB__SPOKES__1__ADDRESS",
        &fed.spoke_addr("a").to_string(),
    );
    let hub = HubConfig::load(&fed.hub_path, &env).unwrap();
    let err = mosaic_hub::spokes::SpokeClient::connect(&hub, &spoke_id("b"))
        .await
        .err()
        .expect("connecting to the wrong spoke must fail");
    let text = format!("{err}");
    assert!(
        text.contains(
            "the peer is spiffe://test.local/spoke/a, expected spiffe://test.local/spoke/b"
        ),
        "{text}"
    );

    // Spoke a's receipts checked against spoke b's key: the hub refuses to believe them.
    let env = Env::default().with("MOSAIC_HUB__SPOKES__0__RECEIPT_KEY", "keys/b.pub.pem");
    let hub = HubConfig::load(&fed.hub_path, &env).unwrap();
    let client = mosaic_hub::spokes::SpokeClient::connect(&hub, &spoke_id("a"))
        .await
        .unwrap();
    let err = client
        .execute(&hub.signer, spawn_action("true", &[]))
        .await
        .unwrap_err();
    assert!(matches!(err, SpokeError::BadReceipt { .. }), "{err}");
    assert!(
        err.to_string()
            .contains("sent a receipt that cannot be trusted"),
        "{err}"
    );
}

#[tokio::test]
async fn a_replayed_command_runs_once_and_returns_the_original_receipt() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let hub_key = fed.key(HUB);
    let cmd = RawCommand::new(
        HUB,
        "a",
        &hub_key,
        spawn_action("sh", &["echo ran >> runs"]),
    );
    let env = cmd.seal(&hub_key);
    let mut client = fed.raw_client("a", &fed.hub_tls(HUB)).await.unwrap();
    let first = client.execute(env.clone()).await.unwrap().into_inner();
    let second = client.execute(env).await.unwrap().into_inner();
    assert_eq!(
        first, second,
        "a replay must return the original receipt, byte for byte"
    );

    // The same command id, freshly signed with a new window: still the original receipt.
    let mut again = cmd.clone();
    again.command.issued_at_ms += 1000;
    again.command.expires_at_ms += 1000;
    let third = client
        .execute(again.seal(&hub_key))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(first, third);

    // The hub accepts a replayed receipt as the answer to that command id.
    let a = fed.client("a").await.unwrap();
    let receipt = a
        .send(
            &fed.hub.signer,
            &cmd.command.command_id.parse().unwrap(),
            cmd.seal(&hub_key),
        )
        .await
        .unwrap();
    let done = wait_for(
        &fed.hub,
        &a,
        &job_of(&receipt).job_id,
        Duration::from_secs(10),
        terminal,
    )
    .await
    .unwrap();
    assert_eq!(done.state(), pb::JobState::Completed);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let runs = std::fs::read_to_string(fed.workdir_root("a", "sh").join("runs")).unwrap();
    assert_eq!(runs, "ran\n", "the command ran more than once");
    assert_eq!(fed.agent_count("a").await, 1);
}

#[tokio::test]
async fn spawns_outside_the_operators_profiles_are_refused() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let a = fed.client("a").await.unwrap();
    let refused = |e: SpokeError| match e {
        SpokeError::Refused {
            code,
            reason,
            message,
            ..
        } => (code, reason.unwrap_or_default(), message),
        other => panic!("expected a refusal, got {other}"),
    };

    let (code, why, msg) = refused(
        a.execute(&fed.hub.signer, spawn_action("rm-rf", &[]))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, why.as_str()),
        (Code::InvalidArgument, "unknown_profile")
    );
    assert_eq!(
        msg,
        "profile rm-rf is not configured on this spoke (configured: echo, sh, true)"
    );

    let mut spawn = pb::Spawn {
        profile: "sh".into(),
        workspace: "ws-test".into(),
        args: vec!["true".into()],
        env: Default::default(),
        workdir: "../../etc".into(),
        ..Default::default()
    };
    let (code, why, msg) = refused(
        a.execute(&fed.hub.signer, pb::command::Action::Spawn(spawn.clone()))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, why.as_str()),
        (Code::InvalidArgument, "invalid_field")
    );
    assert!(
        msg.starts_with("spawn.workdir \"../../etc\" is outside"),
        "{msg}"
    );

    // A symbolic link inside the root that points out of it.
    let root = fed.workdir_root("a", "sh");
    std::os::unix::fs::symlink("/tmp", root.join("out")).unwrap();
    spawn.workdir = "out/x".into();
    let (code, why, msg) = refused(
        a.execute(&fed.hub.signer, pb::command::Action::Spawn(spawn.clone()))
            .await
            .unwrap_err(),
    );
    assert_eq!(
        (code, why.as_str()),
        (Code::InvalidArgument, "workdir_outside_root")
    );
    assert!(msg.contains("resolves outside"), "{msg}");

    spawn.workdir = String::new();
    spawn.env = [("LD_PRELOAD".to_string(), "/tmp/x.so".to_string())].into();
    let (_, why, msg) = refused(
        a.execute(&fed.hub.signer, pb::command::Action::Spawn(spawn))
            .await
            .unwrap_err(),
    );
    assert_eq!(why, "env_not_allowed");
    assert!(
        msg.contains("LD_PRELOAD is not allowed by profile sh"),
        "{msg}"
    );

    assert_eq!(fed.agent_count("a").await, 0);
}

#[tokio::test]
async fn a_refused_command_id_stays_usable() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let hub_key = fed.key(HUB);
    let mut client = fed.raw_client("a", &fed.hub_tls(HUB)).await.unwrap();
    let mut cmd = RawCommand::new(HUB, "a", &hub_key, spawn_action("nope", &[]));
    let s = client.execute(cmd.seal(&hub_key)).await.unwrap_err();
    assert_eq!(reason(&s), "unknown_profile");
    // Corrected and re-signed under the same id: it runs.
    cmd.command.action = Some(spawn_action("true", &[]));
    client.execute(cmd.seal(&hub_key)).await.unwrap();
    assert_eq!(fed.agent_count("a").await, 1);
}
