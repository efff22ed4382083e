//! A development PKI: one CA and a certificate per hub and spoke, each with exactly one URI SAN
//! `spiffe://<trust-domain>/hub/<id>` or `…/spoke/<id>`.
//!
//! Meant for `mosaic-hub dev`, tests and trying things out; production certificates come from
//! the operator's own CA (e.g. cert-manager). Files are never overwritten and private keys are
//! written with mode 0600.

use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use mosaic_shared::ids::{HubId, SpokeId};
use mosaic_shared::tls::{Role, SpiffeId};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What to issue.
#[derive(Debug, Clone)]
pub struct PkiPlan {
    pub trust_domain: String,
    pub hubs: Vec<HubId>,
    pub spokes: Vec<SpokeId>,
    /// Admin API clients that authenticate by certificate (`spiffe://<td>/admin/<name>`).
    pub admins: Vec<String>,
    pub valid_days: u32,
}

/// File names inside the output directory.
pub fn cert_file(role: Role, id: &str) -> String {
    format!("{}-{id}.crt", role_name(role))
}
pub fn key_file(role: Role, id: &str) -> String {
    format!("{}-{id}.key", role_name(role))
}
pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";

fn role_name(role: Role) -> &'static str {
    match role {
        Role::Hub => "hub",
        Role::Spoke => "spoke",
        Role::Admin => "admin",
    }
}

/// Creates `out` (if needed) and writes the CA and every hub and spoke certificate into it.
/// Returns the files written.
pub fn init(out: &Path, plan: &PkiPlan) -> Result<Vec<PathBuf>, CertError> {
    std::fs::create_dir_all(out).map_err(|source| CertError::Write {
        path: out.to_owned(),
        source,
    })?;
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(plan.valid_days));

    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name.push(
        DnType::CommonName,
        format!("Mosaic development CA ({})", plan.trust_domain),
    );
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    ca_params.not_before = not_before;
    ca_params.not_after = not_after;
    let ca_key = KeyPair::generate()?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key)?;

    let mut written = Vec::new();
    write(out, CA_CERT, ca.pem().as_bytes(), 0o644, &mut written)?;
    write(out, CA_KEY, ca_key_pem.as_bytes(), 0o600, &mut written)?;

    let leaves = plan
        .hubs
        .iter()
        .map(|h| (Role::Hub, h.as_str()))
        .chain(plan.spokes.iter().map(|s| (Role::Spoke, s.as_str())))
        .chain(plan.admins.iter().map(|a| (Role::Admin, a.as_str())));
    for (role, id) in leaves {
        let spiffe = SpiffeId::new(&plan.trust_domain, role, id).to_string();
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, &spiffe);
        params.subject_alt_names = vec![SanType::URI(spiffe.as_str().try_into()?)];
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Both: a hub dials spokes (client) and serves its admin API (server).
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &ca)?;
        write(
            out,
            &cert_file(role, id),
            cert.pem().as_bytes(),
            0o644,
            &mut written,
        )?;
        write(
            out,
            &key_file(role, id),
            key.serialize_pem().as_bytes(),
            0o600,
            &mut written,
        )?;
    }
    Ok(written)
}

fn write(
    dir: &Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
    written: &mut Vec<PathBuf>,
) -> Result<(), CertError> {
    let path = dir.join(name);
    let err = |source| CertError::Write {
        path: path.clone(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    written.push(path);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic_shared::tls::{TlsMaterial, TlsPaths, identity_of};

    #[test]
    fn issues_loadable_certificates_with_one_spiffe_uri() {
        let dir = tempfile::tempdir().unwrap();
        let plan = PkiPlan {
            trust_domain: "td".into(),
            hubs: vec!["h".parse().unwrap()],
            spokes: vec!["s1".parse().unwrap()],
            admins: Vec::new(),
            valid_days: 1,
        };
        let files = init(dir.path(), &plan).unwrap();
        assert_eq!(files.len(), 6);
        let m = TlsMaterial::load(&TlsPaths {
            cert: dir.path().join(cert_file(Role::Spoke, "s1")),
            key: dir.path().join(key_file(Role::Spoke, "s1")),
            ca: dir.path().join(CA_CERT),
        })
        .unwrap();
        assert_eq!(
            m.own_identity().unwrap(),
            SpiffeId::new("td", Role::Spoke, "s1")
        );
        let pem = std::fs::read(dir.path().join(cert_file(Role::Hub, "h"))).unwrap();
        let der = rustls_pemfile::certs(&mut &pem[..])
            .next()
            .unwrap()
            .unwrap();
        assert_eq!(identity_of(&der).unwrap().to_string(), "spiffe://td/hub/h");
        // Never overwrites.
        assert!(matches!(
            init(dir.path(), &plan),
            Err(CertError::Write { .. })
        ));
    }
}
