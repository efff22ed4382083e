//! Valkey topologies beyond one plain server: a cluster of real `valkey-server` nodes formed
//! with CLUSTER ADDSLOTSRANGE and CLUSTER MEET, and a server that only speaks TLS, with a CA,
//! server and client certificates made at test time.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use mosaic_hub::dev::Valkey;
use mosaic_shared::config::Env;

/// How hub and spokes reach the test's Valkey, as config lines.
#[derive(Clone)]
pub struct ValkeyToml {
    pub url: String,
    pub cluster: bool,
    pub tls: Option<TlsFiles>,
}

impl ValkeyToml {
    pub fn plain(url: String) -> Self {
        ValkeyToml {
            url,
            cluster: false,
            tls: None,
        }
    }

    /// Top-level keys.
    pub fn top(&self) -> String {
        let mut s = format!("valkey_url = {:?}\n", self.url);
        if self.cluster {
            s.push_str("valkey_cluster = true\n");
        }
        s
    }

    /// The `[valkey_tls]` table, if any; goes after the top-level keys.
    pub fn table(&self) -> String {
        match &self.tls {
            Some(t) => format!(
                "\n[valkey_tls]\nca = {:?}\ncert = {:?}\nkey = {:?}\n",
                t.ca.display().to_string(),
                t.client_cert.display().to_string(),
                t.client_key.display().to_string()
            ),
            None => String::new(),
        }
    }
}

/// A port that is free now, whose cluster bus port (`+ 10000`) is free too.
fn free_cluster_port() -> anyhow::Result<u16> {
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if port < 55_000 && TcpListener::bind(("127.0.0.1", port + 10_000)).is_ok() {
            return Ok(port);
        }
    }
    bail!("no free port pair for a cluster node")
}

/// A Valkey Cluster of primaries on loopback, the slots split evenly between them.
pub struct ValkeyCluster {
    nodes: Vec<Valkey>,
    ports: Vec<u16>,
}

impl ValkeyCluster {
    pub async fn start(bin: &Path, dir: &Path, n: usize) -> anyhow::Result<Self> {
        let mut nodes = Vec::new();
        let mut ports = Vec::new();
        for i in 0..n {
            let port = free_cluster_port()?;
            let port_arg = port.to_string();
            let node = Valkey::start(
                bin,
                &dir.join(format!("node-{i}")),
                &[
                    "--port",
                    &port_arg,
                    "--bind",
                    "127.0.0.1",
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ],
            )
            .await?;
            nodes.push(node);
            ports.push(port);
        }
        let cluster = ValkeyCluster { nodes, ports };
        let per = 16384 / n;
        for i in 0..n {
            let first = i * per;
            let last = if i + 1 == n { 16383 } else { first + per - 1 };
            let mut con = cluster.node(i).await?;
            let _: () = redis::cmd("CLUSTER")
                .arg("ADDSLOTSRANGE")
                .arg(first)
                .arg(last)
                .query_async(&mut con)
                .await
                .context("CLUSTER ADDSLOTSRANGE")?;
        }
        let mut first = cluster.node(0).await?;
        for port in &cluster.ports[1..] {
            let _: () = redis::cmd("CLUSTER")
                .arg("MEET")
                .arg("127.0.0.1")
                .arg(*port)
                .query_async(&mut first)
                .await
                .context("CLUSTER MEET")?;
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        'nodes: for i in 0..n {
            loop {
                let mut con = cluster.node(i).await?;
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query_async(&mut con)
                    .await?;
                if info.contains("cluster_state:ok")
                    && info.contains(&format!("cluster_known_nodes:{n}"))
                {
                    continue 'nodes;
                }
                if Instant::now() > deadline {
                    bail!("cluster node {i} not ready within 20 s:\n{info}");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(cluster)
    }

    /// The seed URL that hub and spokes are given.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.ports[0])
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// A plain connection to node `i` alone (over its unix socket), to see what it holds.
    pub async fn node(&self, i: usize) -> anyhow::Result<redis::aio::MultiplexedConnection> {
        let client = redis::Client::open(self.nodes[i].url())?;
        Ok(client.get_multiplexed_async_connection().await?)
    }

    /// The keys node `i` holds that match `pattern`.
    pub async fn keys_on(&self, i: usize, pattern: &str) -> anyhow::Result<Vec<String>> {
        let mut con = self.node(i).await?;
        Ok(redis::cmd("KEYS")
            .arg(pattern)
            .query_async(&mut con)
            .await?)
    }
}

/// The certificates a TLS Valkey and its clients use.
#[derive(Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A CA of its own (not the federation's), a server certificate for 127.0.0.1 and
    /// localhost, and a client certificate.
    pub fn make(dir: &Path) -> anyhow::Result<Self> {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair, KeyUsagePurpose, SanType,
        };
        std::fs::create_dir_all(dir)?;
        let mut ca_params = CertificateParams::default();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "valkey test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let leaf = |name: &str, sans: Vec<SanType>| -> anyhow::Result<(String, String)> {
            let key = KeyPair::generate()?;
            let mut p = CertificateParams::default();
            p.distinguished_name.push(DnType::CommonName, name);
            p.subject_alt_names = sans;
            p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let cert = p.signed_by(&key, &ca)?;
            Ok((cert.pem(), key.serialize_pem()))
        };
        let (server_cert, server_key) = leaf(
            "valkey",
            vec![
                SanType::IpAddress("127.0.0.1".parse()?),
                SanType::DnsName("localhost".try_into()?),
            ],
        )?;
        let (client_cert, client_key) = leaf("mosaic", vec![])?;
        let files = TlsFiles {
            ca: dir.join("ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
        };
        std::fs::write(&files.ca, ca.pem())?;
        std::fs::write(&files.server_cert, server_cert)?;
        std::fs::write(&files.server_key, server_key)?;
        std::fs::write(&files.client_cert, client_cert)?;
        std::fs::write(&files.client_key, client_key)?;
        Ok(files)
    }

    /// `valkey-server` arguments: TLS only on `port` (no plaintext TCP), client certificates
    /// required.
    pub fn server_args(&self, port: u16) -> Vec<String> {
        let p = |p: &PathBuf| p.display().to_string();
        vec![
            "--port".into(),
            "0".into(),
            "--bind".into(),
            "127.0.0.1".into(),
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            p(&self.server_cert),
            "--tls-key-file".into(),
            p(&self.server_key),
            "--tls-ca-cert-file".into(),
            p(&self.ca),
            "--tls-auth-clients".into(),
            "yes".into(),
        ]
    }
}

/// A `valkey-server` (or `redis-server`) built with TLS: `$MOSAIC_VALKEY_TLS_SERVER`, which
/// `deploy/test.sh` sets (see `deploy/ensure-valkey-tls.sh`).
pub fn find_tls_server(env: &Env) -> anyhow::Result<PathBuf> {
    match env.get("MOSAIC_VALKEY_TLS_SERVER") {
        Some(p) if Path::new(p).is_file() => Ok(PathBuf::from(p)),
        Some(p) => bail!("MOSAIC_VALKEY_TLS_SERVER={p} is not a file"),
        None => bail!(
            "the TLS tests need a valkey-server built with TLS: set MOSAIC_VALKEY_TLS_SERVER to \
             one, or run them through deploy/test.sh, which installs one \
             (deploy/ensure-valkey-tls.sh)"
        ),
    }
}

/// A free TCP port on loopback.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
