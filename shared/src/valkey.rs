//! Connecting to Valkey: one server or a cluster, over TCP, TLS (`rediss://`) or a unix socket.
//!
//! Hub and spoke each hold a [`Target`] (validated from their config's `valkey_url`,
//! `valkey_cluster` and `[valkey_tls]`) and open two kinds of [`Connection`] from it:
//! [`Purpose::Shared`], multiplexed, reconnecting by itself and with a response timeout, for
//! every call; and [`Purpose::Blocking`], without a response timeout, for a reader that waits in
//! `XREAD BLOCK`. On a cluster, every key of one hub or spoke carries the same hash tag, so a
//! script's keys always share a slot and the scripts run unchanged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, MultiplexedConnection};
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, TlsCertificates, Value};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a shared connection waits for one reply.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// `[valkey_tls]` as written: the CA bundle that the server's certificate must chain to (the
/// system's roots when unset) and an optional client certificate and key.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// TLS material for `rediss://`, read when the config was loaded.
#[derive(Clone, Default)]
pub struct Tls {
    ca: Option<Vec<u8>>,
    client: Option<(Vec<u8>, Vec<u8>)>,
    /// The files it was read from: what `Debug` shows instead of the key material.
    files: Vec<PathBuf>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish()
    }
}

/// Where the Valkey of a hub or spoke is and how to reach it.
#[derive(Debug, Clone)]
pub struct Target {
    pub url: String,
    /// A Valkey Cluster, with `url` as the first node to ask for the others.
    pub cluster: bool,
    pub tls: Option<Tls>,
}

/// Valkey did not answer a new connection, and what to check.
#[derive(Debug, Clone, thiserror::Error)]
#[error("valkey at {url} is unreachable: {reason}")]
pub struct Unreachable {
    /// Without its password.
    pub url: String,
    pub reason: String,
}

/// A config error: the field it concerns and what is wrong.
pub type FieldError = (&'static str, String);

impl Target {
    /// Validates the config's Valkey keys; `base` is the config file's directory, against which
    /// relative paths are read.
    pub fn new(
        url: String,
        cluster: bool,
        tls: Option<&RawTls>,
        base: &Path,
    ) -> Result<Self, FieldError> {
        let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or_default();
        if !matches!(scheme, "redis" | "rediss" | "valkey" | "valkeys" | "unix") {
            return Err((
                "valkey_url",
                format!(
                    "{}: expected redis://host:port, rediss://host:port (TLS) or unix:///path",
                    redact(&url)
                ),
            ));
        }
        if cluster && scheme == "unix" {
            return Err((
                "valkey_cluster",
                "a cluster is reached over TCP: set valkey_url to redis://host:port or rediss://host:port of one of its nodes".into(),
            ));
        }
        let tls = match tls {
            None => None,
            Some(raw) => {
                if !matches!(scheme, "rediss" | "valkeys") {
                    return Err((
                        "valkey_tls",
                        format!(
                            "is set but valkey_url {} is not a TLS URL; use rediss://host:port",
                            redact(&url)
                        ),
                    ));
                }
                Some(read_tls(raw, base)?)
            }
        };
        Ok(Target { url, cluster, tls })
    }

    /// One server at `url` with the system's TLS roots if it is `rediss://` (tests, tools).
    pub fn single(url: impl Into<String>) -> Self {
        Target {
            url: url.into(),
            cluster: false,
            tls: None,
        }
    }

    /// The URL without its password, for messages.
    pub fn redacted(&self) -> String {
        redact(&self.url)
    }

    fn certificates(&self) -> Option<TlsCertificates> {
        self.tls.as_ref().map(|tls| TlsCertificates {
            client_tls: tls
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: tls.ca.clone(),
        })
    }

    fn client(&self) -> Result<redis::Client, RedisError> {
        match self.certificates() {
            Some(certs) => redis::Client::build_with_tls(self.url.as_str(), certs),
            None => redis::Client::open(self.url.as_str()),
        }
    }

    fn cluster_client(
        &self,
        purpose: Purpose,
    ) -> Result<redis::cluster::ClusterClient, RedisError> {
        let mut builder = redis::cluster::ClusterClientBuilder::new(vec![self.url.as_str()])
            .connection_timeout(CONNECT_TIMEOUT);
        if purpose == Purpose::Shared {
            builder = builder.response_timeout(RESPONSE_TIMEOUT);
        }
        if let Some(certs) = self.certificates() {
            builder = builder.certs(certs);
        }
        builder.build()
    }

    /// Opens a connection and checks that Valkey answers (a cluster: that it knows its slots).
    /// The error says what to check.
    pub async fn connect(&self, purpose: Purpose) -> Result<Connection, Unreachable> {
        let unreachable = |e: RedisError| Unreachable {
            url: self.redacted(),
            reason: connect_failure(&e),
        };
        let mut con = self.open(purpose).await.map_err(unreachable)?;
        let _: String = redis::cmd("PING")
            .query_async(&mut con)
            .await
            .map_err(unreachable)?;
        Ok(con)
    }

    async fn open(&self, purpose: Purpose) -> Result<Connection, RedisError> {
        if self.cluster {
            return Ok(Connection::Cluster(
                self.cluster_client(purpose)?.get_async_connection().await?,
            ));
        }
        let client = self.client()?;
        Ok(match purpose {
            Purpose::Shared => {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(3);
                Connection::Managed(client.get_connection_manager_with_config(config).await?)
            }
            Purpose::Blocking => {
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(None);
                Connection::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                )
            }
        })
    }
}

fn read_tls(raw: &RawTls, base: &Path) -> Result<Tls, FieldError> {
    let read = |field: &'static str, path: &Path| -> Result<(PathBuf, Vec<u8>), FieldError> {
        let path = crate::config::resolve(base, path);
        let bytes = std::fs::read(&path)
            .map_err(|e| (field, format!("cannot read {}: {e}", path.display())))?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err((field, format!("{} is not a PEM file", path.display())));
        }
        Ok((path, bytes))
    };
    let mut files = Vec::new();
    let ca = match &raw.ca {
        Some(p) => {
            let (path, bytes) = read("valkey_tls.ca", p)?;
            files.push(path);
            Some(bytes)
        }
        None => None,
    };
    let client = match (&raw.cert, &raw.key) {
        (Some(cert), Some(key)) => {
            let (cert_path, cert) = read("valkey_tls.cert", cert)?;
            let (key_path, key) = read("valkey_tls.key", key)?;
            files.extend([cert_path, key_path]);
            Some((cert, key))
        }
        (None, None) => None,
        (Some(_), None) => {
            return Err((
                "valkey_tls.key",
                "not set: a client certificate needs its private key".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "valkey_tls.cert",
                "not set: a client key needs its certificate".into(),
            ));
        }
    };
    Ok(Tls { ca, client, files })
}

/// What a connection is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Shared by every call: multiplexed, reconnects by itself, replies within 10 s.
    Shared,
    /// One blocking reader's own (`XREAD BLOCK`): no response timeout.
    Blocking,
}

/// A connection to one server or to a cluster. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub enum Connection {
    Managed(ConnectionManager),
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Connection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Connection::Managed(c) => c.req_packed_command(cmd),
            Connection::Single(c) => c.req_packed_command(cmd),
            Connection::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Connection::Managed(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Connection::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Connection::Managed(c) => c.get_db(),
            Connection::Single(c) => c.get_db(),
            Connection::Cluster(c) => c.get_db(),
        }
    }
}

/// Why connecting to Valkey failed, with what to do when it is the credentials.
pub fn connect_failure(e: &RedisError) -> String {
    let text = e.to_string();
    let lower = text.to_lowercase();
    if e.kind() == redis::ErrorKind::AuthenticationFailed
        || text.contains("WRONGPASS")
        || text.contains("NOAUTH")
    {
        format!(
            "authentication failed ({e}); check the user and password in the URL (redis://user:password@host:port, unix:///path?user=…&pass=…) or VALKEY_USERNAME / VALKEY_PASSWORD"
        )
    } else if ["certificate", "tls", "alert", "handshake"]
        .iter()
        .any(|w| lower.contains(w))
    {
        format!(
            "TLS handshake failed ({e}); check that [valkey_tls] ca is the CA that signed the server's certificate, that the certificate names the host in valkey_url, and that the server accepts the client certificate"
        )
    } else {
        text
    }
}

/// A Valkey URL without its password, for messages and logs.
pub fn redact(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***@{}", &url[..scheme], &url[at + 1..])
        }
        _ => url.to_owned(),
    };
    // unix:///path?user=…&pass=… carries the password as a query parameter.
    match url.split_once('?') {
        Some((base, query)) => {
            let query: Vec<String> = query
                .split('&')
                .map(|kv| match kv.split_once('=') {
                    Some(("pass", _)) => "pass=***".to_owned(),
                    _ => kv.to_owned(),
                })
                .collect();
            format!("{base}?{}", query.join("&"))
        }
        None => url,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("redis://:pw@h:6379"), "redis://***@h:6379");
        assert_eq!(redact("unix:///tmp/v.sock"), "unix:///tmp/v.sock");
        assert_eq!(
            redact("unix:///tmp/v.sock?user=m&pass=s3cret&db=1"),
            "unix:///tmp/v.sock?user=m&pass=***&db=1"
        );
        assert_eq!(redact("redis://m:s3cret@h:6379"), "redis://***@h:6379");
    }

    fn target(url: &str, cluster: bool, tls: Option<&RawTls>) -> Result<Target, FieldError> {
        Target::new(url.into(), cluster, tls, Path::new("/nonexistent"))
    }

    #[test]
    fn refuses_what_cannot_work() {
        assert_eq!(
            target("http://h:1", false, None).unwrap_err().0,
            "valkey_url"
        );
        let (field, msg) = target("unix:///s", true, None).unwrap_err();
        assert_eq!(field, "valkey_cluster");
        assert!(msg.contains("redis://"), "{msg}");
        let (field, msg) = target("redis://:pw@h:1", false, Some(&RawTls::default())).unwrap_err();
        assert_eq!(field, "valkey_tls");
        assert!(msg.contains("rediss://") && !msg.contains("pw"), "{msg}");
        let half = RawTls {
            cert: Some("c.pem".into()),
            ..RawTls::default()
        };
        assert_eq!(
            target("rediss://h:1", false, Some(&half)).unwrap_err().0,
            "valkey_tls.key"
        );
        let missing = RawTls {
            ca: Some("ca.pem".into()),
            ..RawTls::default()
        };
        let (field, msg) = target("rediss://h:1", false, Some(&missing)).unwrap_err();
        assert_eq!(field, "valkey_tls.ca");
        assert!(msg.contains("/nonexistent/ca.pem"), "{msg}");
    }

    #[test]
    fn reads_tls_files_relative_to_the_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), "-----BEGIN CERTIFICATE-----\n").unwrap();
        std::fs::write(dir.path().join("junk.pem"), "not pem").unwrap();
        let raw = RawTls {
            ca: Some("ca.pem".into()),
            ..RawTls::default()
        };
        let t = Target::new("rediss://h:1".into(), true, Some(&raw), dir.path()).unwrap();
        assert!(t.cluster);
        assert_eq!(t.tls.unwrap().files, vec![dir.path().join("ca.pem")]);
        let junk = RawTls {
            ca: Some("junk.pem".into()),
            ..RawTls::default()
        };
        let (field, msg) =
            Target::new("rediss://h:1".into(), false, Some(&junk), dir.path()).unwrap_err();
        assert_eq!(field, "valkey_tls.ca");
        assert!(msg.contains("not a PEM file"), "{msg}");
    }
}
