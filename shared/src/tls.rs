//! Mutual TLS and SPIFFE-style identities.
//!
//! Every process in a federation holds a certificate with exactly one URI SAN,
//! `spiffe://<trust-domain>/hub/<id>` or `spiffe://<trust-domain>/spoke/<id>`. A chain that
//! verifies to the configured CA is necessary but never sufficient: each side also checks that
//! the peer's identity is the one it expects. Servers require a client certificate (tonic's
//! `client_ca_root`), and read the caller's identity from `peer_certs()`; clients dial through
//! [`connect`], whose verifier checks the chain and then the URI SAN instead of a DNS name.
//!
//! This module never decides *which* identities are trusted; callers pass what they expect.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tonic::transport::{Channel, Endpoint};

/// Which side of the federation a certificate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Hub,
    Spoke,
    /// A client of the hub's admin API that authenticates by certificate.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Hub => "hub",
            Role::Spoke => "spoke",
            Role::Admin => "admin",
        }
    }
}

/// A parsed `spiffe://<trust-domain>/<role>/<id>` identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub role: Role,
    pub id: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, role: Role, id: &str) -> Self {
        SpiffeId {
            trust_domain: trust_domain.to_owned(),
            role,
            id: id.to_owned(),
        }
    }

    /// Parses a URI; anything but exactly `spiffe://<td>/(hub|spoke|admin)/<id>` is refused.
    pub fn parse(uri: &str) -> Result<Self, IdentityError> {
        let not = || IdentityError::NotSpiffe(uri.chars().take(200).collect());
        let rest = uri.strip_prefix("spiffe://").ok_or_else(not)?;
        let mut parts = rest.split('/');
        let (Some(td), Some(role), Some(id), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(not());
        };
        let role = match role {
            "hub" => Role::Hub,
            "spoke" => Role::Spoke,
            "admin" => Role::Admin,
            _ => return Err(not()),
        };
        if td.is_empty() || id.is_empty() {
            return Err(not());
        }
        Ok(SpiffeId::new(td, role, id))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/{}/{}",
            self.trust_domain,
            self.role.as_str(),
            self.id
        )
    }
}

/// Why a peer's certificate does not carry an acceptable identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer certificate cannot be parsed")]
    Unparseable,
    #[error("the peer certificate has no URI SAN (expected spiffe://<trust-domain>/<role>/<id>)")]
    NoUriSan,
    #[error("the peer certificate has {0} URI SANs; exactly one is allowed")]
    SeveralUriSans(usize),
    #[error(
        "the peer certificate's URI SAN {0:?} is not spiffe://<trust-domain>/hub|spoke|admin/<id>"
    )]
    NotSpiffe(String),
    #[error("the peer is {found}, expected {expected}")]
    Unexpected { expected: String, found: SpiffeId },
}

/// The single SPIFFE identity in a DER certificate.
pub fn identity_of(cert: &[u8]) -> Result<SpiffeId, IdentityError> {
    let (_, parsed) =
        x509_parser::parse_x509_certificate(cert).map_err(|_| IdentityError::Unparseable)?;
    let san = parsed
        .subject_alternative_name()
        .map_err(|_| IdentityError::Unparseable)?
        .ok_or(IdentityError::NoUriSan)?;
    let uris: Vec<&str> = san
        .value
        .general_names
        .iter()
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::URI(u) => Some(*u),
            _ => None,
        })
        .collect();
    match uris.as_slice() {
        [] => Err(IdentityError::NoUriSan),
        [one] => SpiffeId::parse(one),
        many => Err(IdentityError::SeveralUriSans(many.len())),
    }
}

/// The identity of a connected peer from the certificates tonic reports, checked to be of
/// `role` in `trust_domain`. Returns the peer's id within the role.
pub fn peer_identity(
    certs: Option<&[CertificateDer<'_>]>,
    trust_domain: &str,
    role: Role,
) -> Result<SpiffeId, IdentityError> {
    let leaf = certs
        .and_then(|c| c.first())
        .ok_or(IdentityError::NoCertificate)?;
    let id = identity_of(leaf)?;
    if id.trust_domain != trust_domain || id.role != role {
        return Err(IdentityError::Unexpected {
            expected: format!("spiffe://{trust_domain}/{}/<id>", role.as_str()),
            found: id,
        });
    }
    Ok(id)
}

/// Paths to a process's TLS material, as configured.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsPaths {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key of the leaf.
    pub key: PathBuf,
    /// PEM bundle of the CA certificates that peers must chain to.
    pub ca: PathBuf,
}

impl TlsPaths {
    /// The same paths, made absolute against a config file's directory.
    pub fn resolved(&self, base: &Path) -> TlsPaths {
        TlsPaths {
            cert: crate::config::resolve(base, &self.cert),
            key: crate::config::resolve(base, &self.key),
            ca: crate::config::resolve(base, &self.ca),
        }
    }
}

/// A trust domain must be a non-empty name that fits in a SPIFFE URI's authority.
pub fn check_trust_domain(td: &str) -> Result<(), String> {
    if td.is_empty() || td.contains(['/', ' ', ':', '@']) {
        return Err("must be a non-empty name without '/', ':', '@' or spaces".into());
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path} holds no usable PEM {expect}")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expect: &'static str,
    },
    #[error("invalid TLS material: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("certificate {path} does not carry an identity: {source}")]
    NoIdentity {
        path: PathBuf,
        source: IdentityError,
    },
    #[error("certificate {path} names {found}, but this process is {expected}")]
    NotOwnIdentity {
        path: PathBuf,
        found: String,
        expected: String,
    },
}

impl TlsError {
    /// The config key to blame.
    pub fn field(&self) -> &'static str {
        match self {
            TlsError::Read { what, .. } | TlsError::Empty { what, .. } => match *what {
                "certificate" => "tls.cert",
                "private key" => "tls.key",
                _ => "tls.ca",
            },
            TlsError::NoIdentity { .. } | TlsError::NotOwnIdentity { .. } => "tls.cert",
            TlsError::Rustls(_) => "tls",
        }
    }
}

/// Loaded TLS material: the PEM text (for tonic's server config) and the parsed forms (for the
/// client connector).
#[derive(Clone)]
pub struct TlsMaterial {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    /// Absent for a client that deliberately presents no certificate (tests of the server's refusal).
    key: Option<Arc<PrivateKeyDer<'static>>>,
    roots: Arc<RootCertStore>,
}

impl fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("chain_len", &self.chain.len())
            .finish_non_exhaustive()
    }
}

/// A certificate chain and its private key, read from PEM files.
struct Identity {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    fn read(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let cert_pem = read("certificate", cert)?;
        let key_pem = read("private key", key)?;
        let empty = |what, path: &Path, expect| TlsError::Empty {
            what,
            path: path.to_owned(),
            expect,
        };
        let chain: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut &cert_pem[..])
            .collect::<Result<_, _>>()
            .map_err(|_| empty("certificate", cert, "certificates"))?;
        if chain.is_empty() {
            return Err(empty("certificate", cert, "certificates"));
        }
        let parsed = rustls_pemfile::private_key(&mut &key_pem[..])
            .ok()
            .flatten()
            .ok_or_else(|| empty("private key", key, "private key"))?;
        Ok(Identity {
            cert_pem,
            key_pem,
            chain,
            key: parsed,
        })
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

impl TlsMaterial {
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        let ca_pem = read("CA bundle", &paths.ca)?;
        let empty = |what, path: &Path, expect| TlsError::Empty {
            what,
            path: path.to_owned(),
            expect,
        };
        let own = Identity::read(&paths.cert, &paths.key)?;
        let (cert_pem, key_pem, chain, key) = (own.cert_pem, own.key_pem, own.chain, own.key);
        let mut roots = RootCertStore::empty();
        for ca in rustls_pemfile::certs(&mut &ca_pem[..]) {
            let ca = ca.map_err(|_| empty("CA bundle", &paths.ca, "certificates"))?;
            roots.add(ca)?;
        }
        if roots.is_empty() {
            return Err(empty("CA bundle", &paths.ca, "certificates"));
        }
        Ok(TlsMaterial {
            cert_pem,
            key_pem,
            ca_pem,
            chain,
            key: Some(Arc::new(key)),
            roots: Arc::new(roots),
        })
    }

    /// Loads the material and requires its certificate to name `expected`: a process must not
    /// start under someone else's identity.
    pub fn load_as(paths: &TlsPaths, expected: &SpiffeId) -> Result<Self, TlsError> {
        let material = Self::load(paths)?;
        let found = material
            .own_identity()
            .map_err(|source| TlsError::NoIdentity {
                path: paths.cert.clone(),
                source,
            })?;
        if &found != expected {
            return Err(TlsError::NotOwnIdentity {
                path: paths.cert.clone(),
                found: found.to_string(),
                expected: expected.to_string(),
            });
        }
        Ok(material)
    }

    /// The same CA trust, with `cert` and `key` as the certificate this side presents: for an
    /// admin client that authenticates by certificate.
    pub fn with_client_certificate(mut self, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let own = Identity::read(cert, key)?;
        self.cert_pem = own.cert_pem;
        self.key_pem = own.key_pem;
        self.chain = own.chain;
        self.key = Some(Arc::new(own.key));
        Ok(self)
    }

    /// The same CA trust, but no client certificate: only for exercising a server's refusal.
    pub fn without_client_certificate(mut self) -> Self {
        self.key = None;
        self
    }

    /// The identity in this process's own certificate.
    pub fn own_identity(&self) -> Result<SpiffeId, IdentityError> {
        identity_of(self.chain.first().ok_or(IdentityError::NoCertificate)?)
    }

    /// Only a CA bundle to check servers against, and no certificate of our own: for admin
    /// clients, which authenticate by token.
    pub fn trust_only(ca: &Path) -> Result<Self, TlsError> {
        let ca_pem = read("CA bundle", ca)?;
        let mut roots = RootCertStore::empty();
        for cert in rustls_pemfile::certs(&mut &ca_pem[..]) {
            let cert = cert.map_err(|_| TlsError::Empty {
                what: "CA bundle",
                path: ca.to_owned(),
                expect: "certificates",
            })?;
            roots.add(cert)?;
        }
        if roots.is_empty() {
            return Err(TlsError::Empty {
                what: "CA bundle",
                path: ca.to_owned(),
                expect: "certificates",
            });
        }
        Ok(TlsMaterial {
            cert_pem: Vec::new(),
            key_pem: Vec::new(),
            ca_pem,
            chain: Vec::new(),
            key: None,
            roots: Arc::new(roots),
        })
    }

    /// tonic server TLS: present our chain; require a client certificate chaining to the CA.
    pub fn server_config(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(
                &self.cert_pem,
                &self.key_pem,
            ))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
    }

    /// tonic server TLS for the hub's admin API: present our chain, and accept a client
    /// certificate that chains to our CA without requiring one (callers without one
    /// authenticate by bearer token).
    pub fn server_config_optional_client_auth(&self) -> tonic::transport::ServerTlsConfig {
        self.server_config().client_auth_optional(true)
    }

    /// rustls server config for the hub's HTTP API: our chain, HTTP/2 and HTTP/1.1, and
    /// (as [`TlsMaterial::server_config_optional_client_auth`]) an optional client
    /// certificate that must chain to our CA when one is sent.
    pub fn rustls_server_config_optional_client_auth(
        &self,
    ) -> Result<rustls::ServerConfig, TlsError> {
        self.rustls_server(true, vec![b"h2".to_vec(), b"http/1.1".to_vec()])
    }

    /// rustls server config for the hub's admin gRPC port: as
    /// [`TlsMaterial::rustls_server_config_optional_client_auth`], HTTP/2 only.
    pub fn rustls_server_config_optional_client_auth_h2(
        &self,
    ) -> Result<rustls::ServerConfig, TlsError> {
        self.rustls_server(true, vec![b"h2".to_vec()])
    }

    /// rustls server config for a gRPC server that requires a client certificate chaining to
    /// our CA (as [`TlsMaterial::server_config`]), for [`incoming`]: HTTP/2 only.
    pub fn rustls_server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        self.rustls_server(false, vec![b"h2".to_vec()])
    }

    fn rustls_server(
        &self,
        optional_client_auth: bool,
        alpn: Vec<Vec<u8>>,
    ) -> Result<rustls::ServerConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let key = self
            .key
            .as_ref()
            .ok_or(TlsError::Rustls(rustls::Error::NoCertificatesPresented))?
            .clone_key();
        let builder = rustls::server::WebPkiClientVerifier::builder_with_provider(
            self.roots.clone(),
            provider.clone(),
        );
        let builder = if optional_client_auth {
            builder.allow_unauthenticated()
        } else {
            builder
        };
        let verifier = builder
            .build()
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), key)?;
        config.alpn_protocols = alpn;
        Ok(config)
    }

    /// rustls client config that checks the server is `expected` (see [`connect`]); for
    /// clients other than gRPC channels (HTTP tests). ALPN offers `h2` only; change it to
    /// speak HTTP/1.1.
    pub fn rustls_client_config(
        &self,
        expected: SpiffeId,
    ) -> Result<rustls::ClientConfig, TlsError> {
        self.client_config(expected)
    }

    fn client_config(&self, expected: SpiffeId) -> Result<rustls::ClientConfig, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = Arc::new(SpiffeServerVerifier {
            roots: self.roots.clone(),
            algorithms: provider.signature_verification_algorithms,
            expected,
        });
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match &self.key {
            Some(key) => builder.with_client_auth_cert(self.chain.clone(), key.clone_key())?,
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// Verifies a server's chain against our roots, then requires its one URI SAN to be exactly
/// the identity we dialled for. The DNS name we connected to plays no part.
#[derive(Debug)]
struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
    expected: SpiffeId,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = rustls::server::ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let found = identity_of(end_entity).map_err(other)?;
        if found != self.expected {
            return Err(other(IdentityError::Unexpected {
                expected: self.expected.to_string(),
                found,
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

fn other(e: IdentityError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(e),
    )))
}

/// Why dialling a peer failed. The message names the peer and the cause.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("invalid address {address:?}: {reason}")]
    Address { address: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("cannot connect to {expected} at {address}: {reason}")]
    Transport {
        address: String,
        expected: SpiffeId,
        reason: String,
    },
}

/// Options for an outgoing connection; every wait is bounded.
#[derive(Debug, Clone, Copy)]
pub struct DialOptions {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for DialOptions {
    fn default() -> Self {
        DialOptions {
            connect_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Dials `address` (`host:port`) over mutual TLS and checks that the server is `expected`.
pub async fn connect(
    address: &str,
    expected: SpiffeId,
    material: &TlsMaterial,
    options: DialOptions,
) -> Result<Channel, ConnectError> {
    let host = address
        .rsplit_once(':')
        .map(|(h, _)| h.trim_start_matches('[').trim_end_matches(']'))
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ConnectError::Address {
            address: address.to_owned(),
            reason: "expected host:port".into(),
        })?;
    let server_name = ServerName::try_from(host.to_owned()).map_err(|e| ConnectError::Address {
        address: address.to_owned(),
        reason: e.to_string(),
    })?;
    let connector =
        tokio_rustls::TlsConnector::from(Arc::new(material.client_config(expected.clone())?));
    let endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| ConnectError::Address {
            address: address.to_owned(),
            reason: e.to_string(),
        })?
        .connect_timeout(options.connect_timeout)
        .timeout(options.request_timeout)
        // A long-lived stream (events) must notice a peer that vanished without a word.
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .tcp_nodelay(true);
    let target = address.to_owned();
    let dial = tower::service_fn(move |_: tonic::codegen::http::Uri| {
        let (connector, server_name, target) =
            (connector.clone(), server_name.clone(), target.clone());
        async move {
            let tcp = tokio::net::TcpStream::connect(&target).await?;
            tcp.set_nodelay(true)?;
            let tls = connector.connect(server_name, tcp).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(tls))
        }
    });
    let connecting = endpoint.connect_with_connector(dial);
    match tokio::time::timeout(options.connect_timeout, connecting).await {
        Ok(Ok(channel)) => Ok(channel),
        Ok(Err(e)) => Err(ConnectError::Transport {
            address: address.to_owned(),
            expected,
            reason: identity_failure(&e).unwrap_or_else(|| error_chain(&e)),
        }),
        Err(_) => Err(ConnectError::Transport {
            address: address.to_owned(),
            expected,
            reason: format!("no answer within {:?}", options.connect_timeout),
        }),
    }
}

/// The identity check that failed the handshake, if that is what happened: rustls would
/// otherwise show it in its Debug form deep inside the transport error.
fn identity_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next = Some(e);
    while let Some(err) = next {
        // io::Error::source() skips the error it wraps, so look inside it explicitly.
        let inner = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .map(|e| e as &(dyn std::error::Error + 'static));
        for candidate in [Some(err), inner].into_iter().flatten() {
            if let Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(o))) =
                candidate.downcast_ref::<rustls::Error>()
                && let Some(identity) = o.0.downcast_ref::<IdentityError>()
            {
                return Some(format!("wrong server identity: {identity}"));
            }
        }
        next = err.source();
    }
    None
}

/// An error and its sources on one line, for messages that must say the real cause (tonic
/// wraps the TLS failure several layers deep).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A server's TLS configuration that can be replaced while it serves (certificate, key and CA
/// bundle rotation): each new connection takes the configuration in force when it arrives,
/// and open connections keep the one they began with.
pub type ReloadableServerConfig = crate::reload::InForce<rustls::ServerConfig>;

/// How long a client may take to complete its TLS handshake.
const HANDSHAKE_WITHIN: Duration = Duration::from_secs(10);

/// The TLS streams of `listener`'s connections, for tonic's `serve_with_incoming`: each TCP
/// connection (with `TCP_NODELAY`) completes its handshake in a task of its own, within 10 s,
/// with the configuration in force when it arrived. A refused handshake (no certificate, an
/// unknown CA, a bad protocol) is logged with the peer's address and the reason, and the
/// connection dropped. Accepting stops when the receiver is dropped.
pub fn incoming(
    listener: tokio::net::TcpListener,
    config: ReloadableServerConfig,
) -> tokio::sync::mpsc::Receiver<
    Result<tokio_rustls::server::TlsStream<tokio::net::TcpStream>, std::io::Error>,
> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (tcp, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = tx.closed() => return,
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = tokio_rustls::TlsAcceptor::from(config.current());
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_WITHIN, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(tls)).await;
                    }
                    Ok(Err(e)) => {
                        tracing::info!(%peer, error = %e, "TLS handshake refused");
                    }
                    Err(_) => {
                        tracing::info!(%peer, within = ?HANDSHAKE_WITHIN, "TLS handshake not completed in time");
                    }
                }
            });
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spiffe_ids_parse_strictly() {
        let id = SpiffeId::parse("spiffe://mosaic.local/hub/main").unwrap();
        assert_eq!(id, SpiffeId::new("mosaic.local", Role::Hub, "main"));
        assert_eq!(id.to_string(), "spiffe://mosaic.local/hub/main");
        let admin = SpiffeId::parse("spiffe://mosaic.local/admin/ops").unwrap();
        assert_eq!(admin.role, Role::Admin);
        for bad in [
            "https://mosaic.local/hub/main",
            "spiffe://mosaic.local/operator/main",
            "spiffe://mosaic.local/hub/main/extra",
            "spiffe://mosaic.local/hub/",
            "spiffe:///hub/main",
            "spiffe://mosaic.local/hub",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad}");
        }
    }

    fn cert_with(sans: Vec<rcgen::SanType>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names = sans;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    fn uri(s: &str) -> rcgen::SanType {
        rcgen::SanType::URI(s.try_into().unwrap())
    }

    #[test]
    fn identity_requires_exactly_one_uri_san() {
        let one = cert_with(vec![
            uri("spiffe://td/spoke/a"),
            rcgen::SanType::DnsName("localhost".try_into().unwrap()),
        ]);
        assert_eq!(
            identity_of(&one).unwrap(),
            SpiffeId::new("td", Role::Spoke, "a")
        );
        let none = cert_with(vec![rcgen::SanType::DnsName("x".try_into().unwrap())]);
        assert_eq!(identity_of(&none), Err(IdentityError::NoUriSan));
        let two = cert_with(vec![uri("spiffe://td/spoke/a"), uri("spiffe://td/hub/b")]);
        assert_eq!(identity_of(&two), Err(IdentityError::SeveralUriSans(2)));
    }

    #[test]
    fn peer_identity_checks_role_and_trust_domain() {
        let hub = CertificateDer::from(cert_with(vec![uri("spiffe://td/hub/h1")]));
        let certs = [hub];
        assert_eq!(
            peer_identity(Some(&certs), "td", Role::Hub).unwrap().id,
            "h1"
        );
        let err = peer_identity(Some(&certs), "td", Role::Spoke).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the peer is spiffe://td/hub/h1, expected spiffe://td/spoke/<id>"
        );
        assert!(peer_identity(Some(&certs), "other", Role::Hub).is_err());
        assert_eq!(
            peer_identity(None, "td", Role::Hub),
            Err(IdentityError::NoCertificate)
        );
    }
}
