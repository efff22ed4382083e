//! Rotation without restarts, under load: a broken certificate file keeps the previous
//! material, a CA rollover (new CA in the spoke's bundle, then a spoke certificate from it) and
//! a hub signing-key rotation with an overlap window, while a client keeps sending commands on
//! fresh connections and none is refused.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mosaic_hub::certs::{self, PkiPlan};
use mosaic_hub::config::HubConfig;
use mosaic_hub::sign::Signer;
use mosaic_hub::spokes::{SpokeClient, SpokeError};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::KeyPair;
use mosaic_shared::tls::{Role, SpiffeId, TlsMaterial, TlsPaths};
use mosaic_tests::*;

/// The metrics text of the spoke's ops port.
async fn spoke_metrics(fed: &Federation) -> String {
    http_get(fed.spoke_ops_addr("a"), "/metrics").await.1
}

async fn wait_metric(fed: &Federation, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = spoke_metrics(fed).await;
        if m.lines().any(|l| l == line) {
            return;
        }
        assert!(Instant::now() < deadline, "no `{line}` after 10 s:\n{m}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A hub config like the federation's, with other TLS files.
fn hub_config_with(fed: &Federation, name: &str, cert: &str, key: &str, ca: &str) -> HubConfig {
    let text = std::fs::read_to_string(fed.dir().join("hub.toml")).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let line = match line.split_once(" = ") {
            Some(("cert", _)) => format!("cert = {cert:?}"),
            Some(("key", _)) => format!("key = {key:?}"),
            Some(("ca", _)) => format!("ca = {ca:?}"),
            _ => line.to_owned(),
        };
        out.push_str(&line);
        out.push('\n');
    }
    let path = fed.dir().join(name);
    std::fs::write(&path, out).unwrap();
    HubConfig::load(&path, &Default::default()).unwrap()
}

/// The DER of the certificate the server at `addr` presents to a new connection now, checked
/// as `expected` against `material`'s CA bundle.
async fn served_certificate(
    addr: std::net::SocketAddr,
    expected: SpiffeId,
    material: &TlsMaterial,
) -> Vec<u8> {
    let config = material.rustls_client_config(expected).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("peer").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The DER of the first certificate in a PEM file's bytes.
fn first_cert_der(pem: &[u8]) -> Vec<u8> {
    rustls_pemfile::certs(&mut &pem[..])
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

fn spoke_identity() -> SpiffeId {
    SpiffeId::new(TRUST_DOMAIN, Role::Spoke, "a")
}

/// RFC 3339 (UTC) of a unix time in seconds.
fn rfc3339(unix_s: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix_s)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap()
}

async fn try_status(hub: &HubConfig, job: &str) -> Result<(), SpokeError> {
    let c = SpokeClient::connect(hub, &spoke_id("a")).await?;
    c.execute(&hub.signer, status_action(job)).await.map(|_| ())
}

struct Load {
    ok: u64,
    failed: Vec<String>,
}

/// Sends status commands on fresh connections, signed with whatever `signer` holds, until
/// `stop` turns true.
async fn keep_asking(
    hub: HubConfig,
    signer: Arc<Mutex<Arc<Signer>>>,
    job: String,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Load {
    let mut load = Load {
        ok: 0,
        failed: Vec::new(),
    };
    while !*stop.borrow() {
        let s = signer.lock().unwrap().clone();
        let sent = match SpokeClient::connect(&hub, &spoke_id("a")).await {
            Ok(c) => c.execute(&s, status_action(&job)).await,
            Err(e) => Err(e),
        };
        match sent {
            Ok(_) => load.ok += 1,
            Err(e) => load.failed.push(e.to_string()),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    load
}

#[tokio::test]
async fn certificates_ca_bundles_and_trusted_keys_rotate_under_load_without_a_refusal() {
    let fed = Federation::builder().spoke("a").start().await.unwrap();
    let root = fed.dir().to_owned();
    let client = fed.client("a").await.unwrap();
    let (_, job) = fed.run_to_end(&client, spawn_action("echo", &["hi"])).await;

    // A second CA, with its own hub and spoke certificates: the CA we roll over to.
    certs::init(
        &root.join("pki2"),
        &PkiPlan {
            trust_domain: TRUST_DOMAIN.into(),
            hubs: vec!["hub".parse().unwrap()],
            spokes: vec![spoke_id("a")],
            admins: vec![],
            valid_days: 2,
        },
    )
    .unwrap();
    let (ca1, ca2) = (root.join("pki/ca.crt"), root.join("pki2/ca.crt"));
    let both = root.join("bundle.crt");
    let ca1_pem = std::fs::read_to_string(&ca1).unwrap();
    let ca2_pem = std::fs::read_to_string(&ca2).unwrap();
    std::fs::write(&both, format!("{ca1_pem}{ca2_pem}")).unwrap();
    // The load's hub trusts both CAs from the start, as an operator rolls hubs first.
    let hub_cert = certs::cert_file(Role::Hub, "hub");
    let hub_key = certs::key_file(Role::Hub, "hub");
    let load_hub = hub_config_with(
        &fed,
        "hub-load.toml",
        &format!("pki/{hub_cert}"),
        &format!("pki/{hub_key}"),
        "bundle.crt",
    );
    // The test's own commands after the spoke's certificate changed CA.
    let probe_hub = hub_config_with(
        &fed,
        "hub-probe.toml",
        &format!("pki/{hub_cert}"),
        &format!("pki/{hub_key}"),
        "bundle.crt",
    );
    let new_ca_hub = hub_config_with(
        &fed,
        "hub-ca2.toml",
        &format!("pki2/{hub_cert}"),
        &format!("pki2/{hub_key}"),
        "bundle.crt",
    );

    let old_key = fed.key(HUB);
    let signer = Arc::new(Mutex::new(Arc::new(Signer::new(
        HUB.parse().unwrap(),
        old_key,
        Duration::from_secs(60),
    ))));
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let load = tokio::spawn(keep_asking(
        load_hub,
        signer.clone(),
        job.job_id.clone(),
        stopping,
    ));
    wait_metric(&fed, "mosaic_reload_ok{what=\"tls\"} 1").await;

    // 1. A broken certificate file: refused, said in the log and the metrics; the previous
    //    certificate stays in force.
    let spoke_cert = root.join("pki").join(certs::cert_file(Role::Spoke, "a"));
    let spoke_key = root.join("pki").join(certs::key_file(Role::Spoke, "a"));
    let good_cert = std::fs::read(&spoke_cert).unwrap();
    std::fs::write(&spoke_cert, b"-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    wait_metric(&fed, "mosaic_reload_ok{what=\"tls\"} 0").await;
    assert!(
        fed.spoke_log("a")
            .contains("reload failed; the previous certificates and trusted keys stay in force"),
        "{}",
        fed.spoke_log("a")
    );
    assert_eq!(
        served_certificate(fed.spoke_addr("a"), spoke_identity(), &fed.hub_tls(HUB)).await,
        first_cert_der(&good_cert)
    );
    std::fs::write(&spoke_cert, &good_cert).unwrap();
    wait_metric(&fed, "mosaic_reload_ok{what=\"tls\"} 1").await;

    // 2. CA rollover. A hub certificate from the new CA is refused until the spoke's bundle
    //    holds that CA, then accepted.
    assert!(
        try_status(&new_ca_hub, &job.job_id).await.is_err(),
        "a hub of an untrusted CA got in"
    );
    std::fs::write(&ca1, format!("{ca1_pem}{ca2_pem}")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tried = try_status(&new_ca_hub, &job.job_id).await;
        if tried.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new CA is still refused: {tried:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    //    Then the spoke's certificate from the new CA (key first: a reload in between sees a
    //    mismatched pair, fails, and the next one succeeds).
    let new_spoke_cert = root.join("pki2").join(certs::cert_file(Role::Spoke, "a"));
    let new_spoke_key = root.join("pki2").join(certs::key_file(Role::Spoke, "a"));
    std::fs::copy(&new_spoke_key, &spoke_key).unwrap();
    std::fs::copy(&new_spoke_cert, &spoke_cert).unwrap();
    let both_cas = TlsMaterial::load(&TlsPaths {
        cert: root.join("pki").join(&hub_cert),
        key: root.join("pki").join(&hub_key),
        ca: both.clone(),
    })
    .unwrap();
    let want = first_cert_der(&std::fs::read(&new_spoke_cert).unwrap());
    let deadline = Instant::now() + Duration::from_secs(10);
    while served_certificate(fed.spoke_addr("a"), spoke_identity(), &both_cas).await != want {
        assert!(
            Instant::now() < deadline,
            "the spoke still serves its old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_metric(&fed, "mosaic_reload_ok{what=\"tls\"} 1").await;

    // 3. Signing-key rotation: trust the new key beside the old one, whose trust ends soon;
    //    switch the load to the new key; after the old key's not_after it is refused.
    let new_key = KeyPair::generate();
    let new_pub = root.join("keys/hub-next.pub.pem");
    new_key
        .write(&root.join("keys/hub-next.pem"), &new_pub)
        .unwrap();
    let not_after = mosaic_shared::time::unix_ms() / 1000 + 6;
    let spoke_toml = root.join("a.toml");
    let text = std::fs::read_to_string(&spoke_toml).unwrap();
    let old_pub = root.join(format!("keys/{HUB}.pub.pem"));
    let old_line = format!("keys = [{:?}]", old_pub.display().to_string());
    assert!(text.contains(&old_line), "{text}");
    let text = text.replacen(
        &old_line,
        &format!(
            "keys = [{{ path = {:?}, not_after = {} }}, {:?}]",
            old_pub.display().to_string(),
            rfc3339(not_after),
            new_pub.display().to_string()
        ),
        1,
    );
    std::fs::write(&spoke_toml, text).unwrap();
    let next = Arc::new(Signer::new(
        HUB.parse().unwrap(),
        KeyPair::load(&root.join("keys/hub-next.pem")).unwrap(),
        Duration::from_secs(60),
    ));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let c = SpokeClient::connect(&probe_hub, &spoke_id("a"))
            .await
            .unwrap();
        match c.execute(&next, status_action(&job.job_id)).await {
            Ok(_) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the new key is still refused: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    *signer.lock().unwrap() = next;
    while mosaic_shared::time::unix_ms() / 1000 <= not_after {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let retired = SpokeClient::connect(&probe_hub, &spoke_id("a"))
        .await
        .unwrap()
        .execute(&probe_hub.signer, status_action(&job.job_id))
        .await
        .unwrap_err();
    assert!(
        matches!(&retired, SpokeError::Refused { reason: Some(r), .. } if r == "key_retired"),
        "{retired}"
    );

    let _ = stop.send(true);
    let load = load.await.unwrap();
    assert!(
        load.failed.is_empty(),
        "{} of {} commands failed during the rotations: {:?}",
        load.failed.len(),
        load.ok + load.failed.len() as u64,
        load.failed
    );
    assert!(load.ok >= 50, "only {} commands under load", load.ok);
    let m = spoke_metrics(&fed).await;
    assert!(
        m.lines()
            .any(|l| l.starts_with("mosaic_reload_failures_total{what=\"tls\"}")),
        "{m}"
    );
    assert_eq!(job.state(), pb::JobState::Completed);
}

#[tokio::test]
async fn the_hub_rotates_its_signing_key_and_certificate_under_load_without_a_refusal() {
    use mosaic_shared::pb::admin::v1 as admin;
    let fed = Federation::builder()
        .spoke("a")
        .hub_server()
        .start()
        .await
        .unwrap();
    let root = fed.dir().to_owned();
    let mut c = fed.admin().await.unwrap();
    let token = fed.token("operator");
    let job = admin_spawn(&mut c, &token, "a", "echo", &["hi"]).await;

    // Load: status through the hub (each one a command the hub signs), on fresh connections.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    let load = {
        let (fed_dir, job, token, addr) =
            (root.clone(), job.clone(), token.clone(), fed.hub_addr());
        tokio::spawn(async move {
            let mut load = Load {
                ok: 0,
                failed: Vec::new(),
            };
            while !*stopping.borrow() {
                // The CA bundle is read for each connection: it gains the new CA below.
                let trust =
                    TlsMaterial::trust_only(&fed_dir.join("pki").join(certs::CA_CERT)).unwrap();
                let asked = async {
                    let channel = mosaic_shared::tls::connect(
                        &addr.to_string(),
                        SpiffeId::new(TRUST_DOMAIN, Role::Hub, HUB),
                        &trust,
                        Default::default(),
                    )
                    .await?;
                    admin::admin_client::AdminClient::new(channel)
                        .get_status(authed(
                            &token,
                            admin::GetStatusRequest {
                                id: job.clone(),
                                ..Default::default()
                            },
                        ))
                        .await?;
                    anyhow::Ok(())
                };
                match asked.await {
                    Ok(()) => load.ok += 1,
                    Err(e) => load.failed.push(format!("{e:#}")),
                }
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
            load
        })
    };

    // 1. Signing key: the spoke trusts the new key beside the old one; then the hub signs with
    //    the new key, keeping the old public key to check its earlier audit records.
    let new_key = KeyPair::generate();
    let (next_priv, next_pub) = (
        root.join("keys/hub-next.pem"),
        root.join("keys/hub-next.pub.pem"),
    );
    new_key.write(&next_priv, &next_pub).unwrap();
    let old_pub = root.join(format!("keys/{HUB}.pub.pem"));
    let spoke_toml = root.join("a.toml");
    let text = std::fs::read_to_string(&spoke_toml).unwrap();
    let old_line = format!("keys = [{:?}]", old_pub.display().to_string());
    let text = text.replacen(
        &old_line,
        &format!(
            "keys = [{:?}, {:?}]",
            old_pub.display().to_string(),
            next_pub.display().to_string()
        ),
        1,
    );
    std::fs::write(&spoke_toml, text).unwrap();
    let new_id = new_key.id().to_string();
    wait_log(|| fed.spoke_log("a"), &new_id, 1).await;
    let retired = root.join("keys/hub-retired.pub.pem");
    std::fs::copy(&old_pub, &retired).unwrap();
    let hub_toml = root.join("hub.toml");
    let text = std::fs::read_to_string(&hub_toml).unwrap();
    std::fs::write(
        &hub_toml,
        format!("retired_signing_keys = [\"keys/hub-retired.pub.pem\"]\n{text}"),
    )
    .unwrap();
    // Replaced in one rename, so no reload sees half a key.
    std::fs::rename(&next_priv, root.join(format!("keys/{HUB}.pem"))).unwrap();
    wait_log(
        || fed.hub_log(),
        &format!("\"signing_key\":\"{new_id}\""),
        1,
    )
    .await;

    // 2. The hub's certificate from a new CA: spokes and clients trust it first.
    certs::init(
        &root.join("pki2"),
        &PkiPlan {
            trust_domain: TRUST_DOMAIN.into(),
            hubs: vec![HUB.parse().unwrap()],
            spokes: vec![],
            admins: vec![],
            valid_days: 2,
        },
    )
    .unwrap();
    let ca = root.join("pki").join(certs::CA_CERT);
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&ca).unwrap(),
        std::fs::read_to_string(root.join("pki2").join(certs::CA_CERT)).unwrap()
    );
    const SPOKE_RELOADED: &str = "reloaded the TLS certificate, CA bundle and trusted keys";
    let before = fed.spoke_log("a").matches(SPOKE_RELOADED).count();
    std::fs::write(root.join("pki/bundle.tmp"), both).unwrap();
    std::fs::rename(root.join("pki/bundle.tmp"), &ca).unwrap();
    wait_log(|| fed.spoke_log("a"), SPOKE_RELOADED, before + 1).await;
    let (cert, key) = (
        certs::cert_file(Role::Hub, HUB),
        certs::key_file(Role::Hub, HUB),
    );
    std::fs::copy(root.join("pki2").join(&key), root.join("pki/key.tmp")).unwrap();
    std::fs::copy(root.join("pki2").join(&cert), root.join("pki/cert.tmp")).unwrap();
    std::fs::rename(root.join("pki/key.tmp"), root.join("pki").join(&key)).unwrap();
    std::fs::rename(root.join("pki/cert.tmp"), root.join("pki").join(&cert)).unwrap();
    let want = first_cert_der(&std::fs::read(root.join("pki2").join(&cert)).unwrap());
    let trust = TlsMaterial::trust_only(&ca).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let hub_identity = SpiffeId::new(TRUST_DOMAIN, Role::Hub, HUB);
    while served_certificate(fed.hub_addr(), hub_identity.clone(), &trust).await != want {
        assert!(
            Instant::now() < deadline,
            "the hub still serves its old certificate"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Commands still reach the spoke (the hub dials it with its new certificate).
    tokio::time::sleep(Duration::from_secs(1)).await;

    let _ = stop.send(true);
    let load = load.await.unwrap();
    assert!(
        load.failed.is_empty(),
        "{} of {} requests failed during the rotations: {:?}",
        load.failed.len(),
        load.ok + load.failed.len() as u64,
        load.failed
    );
    assert!(load.ok >= 30, "only {} requests under load", load.ok);

    // Every command in the audit trail still verifies, the old ones by the retired key.
    let mut c = fed.admin().await.unwrap();
    let audit = c
        .audit(authed(
            &fed.token("admin"),
            admin::AuditRequest {
                limit: 1000,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    let keys: std::collections::BTreeSet<String> = audit
        .records
        .iter()
        .filter_map(|r| r.command.as_ref().map(|c| c.key_id.clone()))
        .collect();
    assert!(keys.len() >= 2, "both keys signed commands: {keys:?}");
    for r in &audit.records {
        assert!(
            r.verified,
            "{} does not verify: {}",
            r.command_id, r.verify_error
        );
    }
}

/// Waits until `needle` occurs at least `times` times in the log.
async fn wait_log(log: impl Fn() -> String, needle: &str, times: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while log().matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log after 10 s:\n{}",
            log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
