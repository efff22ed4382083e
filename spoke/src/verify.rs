//! The spoke's verification chain for incoming commands.
//!
//! Runs, in this order and stopping at the first failure: the caller's certificate identity
//! names a hub this spoke trusts (its chain to our CA was already checked by the TLS handshake);
//! the envelope's key id is known; that key is trusted for *that* hub; the signature verifies
//! strictly over the exact bytes received; only then are the bytes decoded; the signed key id
//! and hub id match the envelope and the TLS identity; the command is addressed to this spoke;
//! and it is inside its validity window. The replay check comes last, in `store`, because it
//! needs Valkey. Each failure is its own [`VerifyError`] variant with its own reason code.
//!
//! This module never executes anything and never re-encodes a command.

use std::collections::HashMap;
use std::time::Duration;

use mosaic_shared::ids::{CommandId, HubId, SpokeId};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::{Domain, KeyId, PublicKey, SignatureError};
use mosaic_shared::tls::{self, IdentityError, Role};
use prost::Message as _;
use rustls::pki_types::CertificateDer;

use crate::command::{Action, FieldError};
use crate::config::TrustedHub;

/// A command that passed every check but the replay defence.
#[derive(Debug, Clone)]
pub struct VerifiedCommand {
    pub command_id: CommandId,
    pub hub_id: HubId,
    pub key_id: KeyId,
    pub issued_at_ms: i64,
    pub expires_at_ms: i64,
    pub action: Action,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("client certificate is not a hub identity: {0}")]
    PeerIdentity(IdentityError),
    #[error("hub {0} is not trusted by this spoke")]
    UntrustedHub(String),
    #[error("signing key {0} is not known to this spoke")]
    UnknownKey(String),
    #[error("signing key {key} is not trusted for hub {hub}")]
    KeyNotTrustedForHub { key: String, hub: HubId },
    #[error(
        "signing key {key} was trusted until {not_after_ms} (unix ms) and is retired; sign with the hub's new key"
    )]
    KeyRetired { key: String, not_after_ms: i64 },
    #[error("command signature is invalid: {0}")]
    BadSignature(SignatureError),
    #[error("command bytes are not a valid command: {0}")]
    Malformed(String),
    #[error("envelope key id {envelope} differs from the signed key id {signed}")]
    KeyIdMismatch { envelope: String, signed: String },
    #[error("command is signed for hub {signed} but the connection is from hub {tls}")]
    HubMismatch { tls: HubId, signed: String },
    #[error("command is addressed to spoke {target}, this is spoke {this}")]
    WrongSpoke { target: String, this: SpokeId },
    #[error("command expired at {expires_at_ms} (now {now_ms}, allowed skew {skew_ms} ms)")]
    Expired {
        expires_at_ms: i64,
        now_ms: i64,
        skew_ms: u64,
    },
    #[error("command is not valid before {issued_at_ms} (now {now_ms}, allowed skew {skew_ms} ms)")]
    NotYetValid {
        issued_at_ms: i64,
        now_ms: i64,
        skew_ms: u64,
    },
    #[error(
        "command validity window is {window_ms} ms; it must be positive and at most {max_ms} ms"
    )]
    BadWindow { window_ms: i64, max_ms: u64 },
    #[error("{0}")]
    Field(#[from] FieldError),
}

impl VerifyError {
    /// A stable, machine-readable reason code (sent as `x-mosaic-reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            VerifyError::PeerIdentity(_) => "peer_identity",
            VerifyError::UntrustedHub(_) => "untrusted_hub",
            VerifyError::UnknownKey(_) => "unknown_key",
            VerifyError::KeyNotTrustedForHub { .. } => "key_not_trusted_for_hub",
            VerifyError::KeyRetired { .. } => "key_retired",
            VerifyError::BadSignature(_) => "bad_signature",
            VerifyError::Malformed(_) => "malformed_command",
            VerifyError::KeyIdMismatch { .. } => "key_id_mismatch",
            VerifyError::HubMismatch { .. } => "hub_mismatch",
            VerifyError::WrongSpoke { .. } => "wrong_spoke",
            VerifyError::Expired { .. } => "expired",
            VerifyError::NotYetValid { .. } => "not_yet_valid",
            VerifyError::BadWindow { .. } => "bad_validity_window",
            VerifyError::Field(_) => "invalid_field",
        }
    }

    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            VerifyError::PeerIdentity(_)
            | VerifyError::UntrustedHub(_)
            | VerifyError::KeyNotTrustedForHub { .. }
            | VerifyError::HubMismatch { .. } => Code::PermissionDenied,
            VerifyError::UnknownKey(_)
            | VerifyError::KeyRetired { .. }
            | VerifyError::BadSignature(_) => Code::Unauthenticated,
            VerifyError::Malformed(_)
            | VerifyError::KeyIdMismatch { .. }
            | VerifyError::BadWindow { .. }
            | VerifyError::Field(_) => Code::InvalidArgument,
            VerifyError::WrongSpoke { .. } => Code::FailedPrecondition,
            VerifyError::Expired { .. } | VerifyError::NotYetValid { .. } => Code::OutOfRange,
        }
    }
}

/// The verifier in force, replaced when the trusted hubs or keys are reloaded; a command is
/// checked against the one in force when it arrived.
pub type SharedVerifier = mosaic_shared::reload::InForce<Verifier>;

/// What the chain checks against; built from config (again at each reload).
#[derive(Debug)]
pub struct Verifier {
    spoke_id: SpokeId,
    trust_domain: String,
    /// Hub ids this spoke accepts connections from.
    hubs: Vec<HubId>,
    /// Every trusted key, with the one hub allowed to use it and when it stops being trusted.
    keys: HashMap<KeyId, (HubId, PublicKey, Option<i64>)>,
    skew: Duration,
    max_validity: Duration,
}

impl Verifier {
    /// The verifier of `config`'s trusted hubs and limits.
    pub fn of(config: &crate::config::SpokeConfig) -> Self {
        Verifier::new(
            config.spoke_id.clone(),
            config.trust_domain.clone(),
            &config.trusted_hubs,
            config.clock_skew,
            config.max_command_validity,
        )
    }

    pub fn new(
        spoke_id: SpokeId,
        trust_domain: String,
        trusted: &[TrustedHub],
        skew: Duration,
        max_validity: Duration,
    ) -> Self {
        let mut keys = HashMap::new();
        for hub in trusted {
            for k in &hub.keys {
                keys.insert(
                    k.key.id().clone(),
                    (hub.hub_id.clone(), k.key.clone(), k.not_after_ms),
                );
            }
        }
        Verifier {
            spoke_id,
            trust_domain,
            hubs: trusted.iter().map(|h| h.hub_id.clone()).collect(),
            keys,
            skew,
            max_validity,
        }
    }

    /// The trusted hub on the other end of the connection.
    pub fn peer_hub(&self, certs: Option<&[CertificateDer<'_>]>) -> Result<HubId, VerifyError> {
        let id = tls::peer_identity(certs, &self.trust_domain, Role::Hub)
            .map_err(VerifyError::PeerIdentity)?;
        self.hubs
            .iter()
            .find(|h| h.as_str() == id.id)
            .cloned()
            .ok_or(VerifyError::UntrustedHub(id.id))
    }

    /// Runs the chain for a command that arrived from `hub` (as established by [`peer_hub`]).
    pub fn verify(
        &self,
        hub: &HubId,
        envelope: &pb::SignedCommand,
        now_ms: i64,
    ) -> Result<VerifiedCommand, VerifyError> {
        let envelope_key = printable(&envelope.key_id);
        let (owner, key, not_after) = self
            .keys
            .iter()
            .find(|(id, _)| id.as_str() == envelope.key_id)
            .map(|(_, v)| v)
            .ok_or_else(|| VerifyError::UnknownKey(envelope_key.clone()))?;
        if owner != hub {
            return Err(VerifyError::KeyNotTrustedForHub {
                key: envelope_key,
                hub: hub.clone(),
            });
        }
        if let Some(not_after_ms) = *not_after
            && now_ms > not_after_ms
        {
            return Err(VerifyError::KeyRetired {
                key: envelope_key,
                not_after_ms,
            });
        }
        key.verify(Domain::Command, &envelope.command, &envelope.signature)
            .map_err(VerifyError::BadSignature)?;

        // Authentic bytes from this hub's key; now, and only now, decode them.
        let cmd = pb::Command::decode(envelope.command.as_slice())
            .map_err(|e| VerifyError::Malformed(e.to_string()))?;
        if cmd.key_id != envelope.key_id {
            return Err(VerifyError::KeyIdMismatch {
                envelope: envelope_key,
                signed: printable(&cmd.key_id),
            });
        }
        if cmd.hub_id != hub.as_str() {
            return Err(VerifyError::HubMismatch {
                tls: hub.clone(),
                signed: printable(&cmd.hub_id),
            });
        }
        if cmd.spoke_id != self.spoke_id.as_str() {
            return Err(VerifyError::WrongSpoke {
                target: printable(&cmd.spoke_id),
                this: self.spoke_id.clone(),
            });
        }
        self.check_window(cmd.issued_at_ms, cmd.expires_at_ms, now_ms)?;
        let command_id = CommandId::parse_field("command.command_id", cmd.command_id)
            .map_err(FieldError::from)?;
        Ok(VerifiedCommand {
            command_id,
            hub_id: hub.clone(),
            key_id: key.id().clone(),
            issued_at_ms: cmd.issued_at_ms,
            expires_at_ms: cmd.expires_at_ms,
            action: Action::try_from(cmd.action)?,
        })
    }

    fn check_window(&self, issued: i64, expires: i64, now: i64) -> Result<(), VerifyError> {
        let skew_ms = self.skew.as_millis() as u64;
        let max_ms = self.max_validity.as_millis() as u64;
        let window = expires.saturating_sub(issued);
        if window <= 0 || window as u64 > max_ms {
            return Err(VerifyError::BadWindow {
                window_ms: window,
                max_ms,
            });
        }
        if now.saturating_sub(skew_ms as i64) > expires {
            return Err(VerifyError::Expired {
                expires_at_ms: expires,
                now_ms: now,
                skew_ms,
            });
        }
        if now.saturating_add(skew_ms as i64) < issued {
            return Err(VerifyError::NotYetValid {
                issued_at_ms: issued,
                now_ms: now,
                skew_ms,
            });
        }
        Ok(())
    }

    /// How long the replay record must outlive `now`: past the command's expiry plus the skew,
    /// after which the window check alone refuses a repeat.
    pub fn replay_ttl(&self, expires_at_ms: i64, now_ms: i64) -> Duration {
        let remaining = expires_at_ms.saturating_sub(now_ms).max(0) as u64;
        Duration::from_millis(remaining) + self.skew + Duration::from_secs(60)
    }
}

/// A client-supplied string made safe to put in an error message.
fn printable(s: &str) -> String {
    s.chars()
        .take(80)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TrustedKey;
    use mosaic_shared::signing::KeyPair;

    struct Fixture {
        verifier: Verifier,
        hub: HubId,
        key: KeyPair,
        other_hub_key: KeyPair,
    }

    fn fixture() -> Fixture {
        let key = KeyPair::generate();
        let other_hub_key = KeyPair::generate();
        let hub: HubId = "hub-1".parse().unwrap();
        let trusted = vec![
            TrustedHub {
                hub_id: hub.clone(),
                keys: vec![TrustedKey {
                    key: key.public(),
                    not_after_ms: None,
                }],
            },
            TrustedHub {
                hub_id: "hub-2".parse().unwrap(),
                keys: vec![TrustedKey {
                    key: other_hub_key.public(),
                    not_after_ms: None,
                }],
            },
        ];
        Fixture {
            verifier: Verifier::new(
                "spoke-a".parse().unwrap(),
                "td".into(),
                &trusted,
                Duration::from_secs(30),
                Duration::from_secs(600),
            ),
            hub,
            key,
            other_hub_key,
        }
    }

    const NOW: i64 = 1_800_000_000_000;

    fn command(key: &KeyPair) -> pb::Command {
        pb::Command {
            command_id: "c1".into(),
            hub_id: "hub-1".into(),
            spoke_id: "spoke-a".into(),
            key_id: key.id().to_string(),
            issued_at_ms: NOW - 1000,
            expires_at_ms: NOW + 60_000,
            action: Some(pb::command::Action::Status(pb::Status { id: "a1".into() })),
            ..Default::default()
        }
    }

    fn seal(key: &KeyPair, cmd: &pb::Command) -> pb::SignedCommand {
        let bytes = cmd.encode_to_vec();
        pb::SignedCommand {
            signature: key.sign(Domain::Command, &bytes),
            command: bytes,
            key_id: key.id().to_string(),
        }
    }

    fn reason(f: &Fixture, env: &pb::SignedCommand) -> &'static str {
        f.verifier.verify(&f.hub, env, NOW).unwrap_err().reason()
    }

    #[test]
    fn a_good_command_verifies() {
        let f = fixture();
        let v = f
            .verifier
            .verify(&f.hub, &seal(&f.key, &command(&f.key)), NOW)
            .unwrap();
        assert_eq!(v.command_id.as_str(), "c1");
        assert_eq!(v.action.verb(), "status");
    }

    #[test]
    fn a_key_is_trusted_until_its_not_after_and_refused_after() {
        let old = KeyPair::generate();
        let new = KeyPair::generate();
        let hub: HubId = "hub-1".parse().unwrap();
        let verifier = Verifier::new(
            "spoke-a".parse().unwrap(),
            "td".into(),
            &[TrustedHub {
                hub_id: hub.clone(),
                keys: vec![
                    TrustedKey {
                        key: old.public(),
                        not_after_ms: Some(NOW),
                    },
                    TrustedKey {
                        key: new.public(),
                        not_after_ms: None,
                    },
                ],
            }],
            Duration::from_secs(30),
            Duration::from_secs(600),
        );
        let by_old = seal(&old, &command(&old));
        assert!(
            verifier.verify(&hub, &by_old, NOW).is_ok(),
            "until not_after"
        );
        let e = verifier.verify(&hub, &by_old, NOW + 1).unwrap_err();
        assert_eq!(e.reason(), "key_retired");
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(
            verifier
                .verify(&hub, &seal(&new, &command(&new)), NOW + 1)
                .is_ok()
        );
    }

    #[test]
    fn each_check_has_its_own_reason() {
        let f = fixture();
        let good = seal(&f.key, &command(&f.key));

        let mut flipped = good.clone();
        flipped.signature[10] ^= 0x01;
        assert_eq!(reason(&f, &flipped), "bad_signature");

        let mut tampered = good.clone();
        tampered.command[3] ^= 0x01;
        assert_eq!(reason(&f, &tampered), "bad_signature");

        let stranger = KeyPair::generate();
        assert_eq!(
            reason(&f, &seal(&stranger, &command(&stranger))),
            "unknown_key"
        );

        let mut c = command(&f.other_hub_key);
        c.hub_id = "hub-1".into();
        assert_eq!(
            reason(&f, &seal(&f.other_hub_key, &c)),
            "key_not_trusted_for_hub"
        );

        let mut c = command(&f.key);
        c.hub_id = "hub-2".into();
        assert_eq!(reason(&f, &seal(&f.key, &c)), "hub_mismatch");

        let mut c = command(&f.key);
        c.spoke_id = "spoke-b".into();
        assert_eq!(reason(&f, &seal(&f.key, &c)), "wrong_spoke");

        let mut c = command(&f.key);
        c.issued_at_ms = NOW - 120_000;
        c.expires_at_ms = NOW - 31_000;
        assert_eq!(reason(&f, &seal(&f.key, &c)), "expired");

        let mut c = command(&f.key);
        c.issued_at_ms = NOW + 31_000;
        c.expires_at_ms = NOW + 90_000;
        assert_eq!(reason(&f, &seal(&f.key, &c)), "not_yet_valid");

        let mut c = command(&f.key);
        c.expires_at_ms = c.issued_at_ms + 3_600_000;
        assert_eq!(reason(&f, &seal(&f.key, &c)), "bad_validity_window");

        let mut c = command(&f.key);
        c.key_id = "0000".into();
        assert_eq!(reason(&f, &seal(&f.key, &c)), "key_id_mismatch");

        let mut c = command(&f.key);
        c.action = None;
        assert_eq!(reason(&f, &seal(&f.key, &c)), "invalid_field");

        let mut garbage = good.clone();
        garbage.command = vec![0xff, 0xff, 0xff];
        garbage.signature = f.key.sign(Domain::Command, &garbage.command);
        assert_eq!(reason(&f, &garbage), "malformed_command");
    }

    #[test]
    fn skew_is_allowed_at_both_ends() {
        let f = fixture();
        let mut c = command(&f.key);
        c.issued_at_ms = NOW + 29_000;
        c.expires_at_ms = NOW + 90_000;
        assert!(f.verifier.verify(&f.hub, &seal(&f.key, &c), NOW).is_ok());
        let mut c = command(&f.key);
        c.issued_at_ms = NOW - 60_000;
        c.expires_at_ms = NOW - 29_000;
        assert!(f.verifier.verify(&f.hub, &seal(&f.key, &c), NOW).is_ok());
    }

    #[test]
    fn replay_ttl_outlives_expiry_plus_skew() {
        let f = fixture();
        let ttl = f.verifier.replay_ttl(NOW + 10_000, NOW);
        assert!(ttl >= Duration::from_millis(10_000 + 30_000));
    }
}
