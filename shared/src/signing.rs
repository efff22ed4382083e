//! ed25519 signing and verification of protocol envelopes, and key files.
//!
//! Owns the domain-separation prefixes and the key-id derivation. Every signature in the
//! federation is made over `prefix || bytes` where `bytes` are the exact encoded message that
//! travels; verification uses `verify_strict` over the bytes as received and never re-encodes
//! anything. Keys live in PEM files (PKCS#8 private, SPKI public); a private key is written with
//! mode 0600 and never logged.

use std::fmt;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use sha2::{Digest as _, Sha256};

/// What a signature is for. A signature made for one domain never verifies for another, so a
/// receipt can never be replayed as a command or the other way round.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    Command,
    Receipt,
}

impl Domain {
    fn prefix(self) -> &'static [u8] {
        match self {
            Domain::Command => b"mosaic.federation.v1.command\0",
            Domain::Receipt => b"mosaic.federation.v1.receipt\0",
        }
    }

    fn message(self, bytes: &[u8]) -> Vec<u8> {
        let prefix = self.prefix();
        let mut m = Vec::with_capacity(prefix.len() + bytes.len());
        m.extend_from_slice(prefix);
        m.extend_from_slice(bytes);
        m
    }
}

/// Identifies a public key: the first 8 bytes of SHA-256 over the raw 32-byte key, in hex.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId(String);

impl KeyId {
    pub fn of(key: &VerifyingKey) -> Self {
        let digest = Sha256::digest(key.as_bytes());
        KeyId(hex::encode(&digest[..8]))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("key file {path} is not an ed25519 {kind} key in PEM form ({reason})")]
    Parse {
        path: PathBuf,
        kind: &'static str,
        reason: String,
    },
    #[error("cannot write key file {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("signature must be 64 bytes, got {0}")]
    Length(usize),
    #[error("signature does not verify")]
    Invalid,
}

/// A private signing key with its key id. Only the owning process's signing module holds one.
pub struct KeyPair {
    key: SigningKey,
    id: KeyId,
}

impl fmt::Debug for KeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyPair")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl KeyPair {
    /// A new key from the operating system's random source.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).expect("the operating system's random source is unavailable");
        Self::from_signing_key(SigningKey::from_bytes(&seed))
    }

    fn from_signing_key(key: SigningKey) -> Self {
        let id = KeyId::of(&key.verifying_key());
        KeyPair { key, id }
    }

    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = read(path)?;
        let key = SigningKey::from_pkcs8_pem(&pem).map_err(|e| KeyError::Parse {
            path: path.to_owned(),
            kind: "private",
            reason: e.to_string(),
        })?;
        Ok(Self::from_signing_key(key))
    }

    /// Writes the private key (mode 0600, refusing to overwrite) and the public key beside it.
    pub fn write(&self, private: &Path, public: &Path) -> Result<(), KeyError> {
        let pem = self
            .key
            .to_pkcs8_pem(LineEnding::LF)
            .expect("an ed25519 key always encodes as PKCS#8");
        write_new(private, pem.as_bytes(), 0o600)?;
        self.public().write(public)
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    pub fn public(&self) -> PublicKey {
        PublicKey {
            key: self.key.verifying_key(),
            id: self.id.clone(),
        }
    }

    pub fn sign(&self, domain: Domain, bytes: &[u8]) -> Vec<u8> {
        self.key.sign(&domain.message(bytes)).to_bytes().to_vec()
    }
}

/// A public key with its key id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: VerifyingKey,
    id: KeyId,
}

impl PublicKey {
    pub fn load(path: &Path) -> Result<Self, KeyError> {
        let pem = read(path)?;
        let key = VerifyingKey::from_public_key_pem(&pem).map_err(|e| KeyError::Parse {
            path: path.to_owned(),
            kind: "public",
            reason: e.to_string(),
        })?;
        Ok(PublicKey {
            id: KeyId::of(&key),
            key,
        })
    }

    pub fn write(&self, path: &Path) -> Result<(), KeyError> {
        write_new(path, self.to_pem().as_bytes(), 0o644)
    }

    /// The key as SPKI PEM, as [`PublicKey::load`] reads it.
    pub fn to_pem(&self) -> String {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .expect("an ed25519 key always encodes as SPKI")
    }

    pub fn id(&self) -> &KeyId {
        &self.id
    }

    /// Strict verification (`verify_strict`: no small-order keys, canonical `s`) of `signature`
    /// over `domain`'s prefix followed by exactly `bytes`.
    pub fn verify(
        &self,
        domain: Domain,
        bytes: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let sig: [u8; 64] = signature
            .try_into()
            .map_err(|_| SignatureError::Length(signature.len()))?;
        self.key
            .verify_strict(&domain.message(bytes), &Signature::from_bytes(&sig))
            .map_err(|_| SignatureError::Invalid)
    }
}

fn read(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Read {
        path: path.to_owned(),
        source,
    })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), KeyError> {
    let err = |source| KeyError::Write {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(err)?;
    f.write_all(bytes).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sign_verify_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let (sk, pk) = (dir.path().join("k.pem"), dir.path().join("k.pub.pem"));
        let kp = KeyPair::generate();
        kp.write(&sk, &pk).unwrap();
        let loaded = KeyPair::load(&sk).unwrap();
        let public = PublicKey::load(&pk).unwrap();
        assert_eq!(loaded.id(), kp.id());
        assert_eq!(public.id(), kp.id());
        assert_eq!(kp.id().as_str().len(), 16);
        let sig = loaded.sign(Domain::Command, b"hello");
        public.verify(Domain::Command, b"hello", &sig).unwrap();
        assert_eq!(
            public.verify(Domain::Receipt, b"hello", &sig),
            Err(SignatureError::Invalid),
            "a command signature must not verify as a receipt"
        );
        assert_eq!(
            public.verify(Domain::Command, b"hello", &sig[..63]),
            Err(SignatureError::Length(63))
        );
        // Refuses to overwrite an existing key.
        assert!(matches!(kp.write(&sk, &pk), Err(KeyError::Write { .. })));
        let mode = std::fs::metadata(&sk).unwrap().permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
    }

    #[test]
    fn garbage_key_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bad.pem");
        std::fs::write(&p, "not a key").unwrap();
        let err = PublicKey::load(&p).unwrap_err().to_string();
        assert!(err.contains("bad.pem") && err.contains("public"), "{err}");
    }

    proptest! {
        #[test]
        fn any_flipped_bit_breaks_the_signature(msg in proptest::collection::vec(any::<u8>(), 0..256), bit in 0usize..(64 * 8)) {
            let kp = KeyPair::generate();
            let mut sig = kp.sign(Domain::Command, &msg);
            sig[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(kp.public().verify(Domain::Command, &msg, &sig).is_err());
        }
    }
}
