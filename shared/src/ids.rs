//! Validated identifiers shared by hub and spoke.
//!
//! Every name a client or a config file supplies (hub, spoke, workspace, profile, command and
//! agent ids) is parsed here once into a newtype whose existence proves it is well formed. The
//! rules are deliberately narrow (ASCII letters, digits, `.`, `_`, `-`) because these names end
//! up inside Valkey keys, SPIFFE URIs, file names and log lines. Nothing here performs I/O.

use std::fmt;

/// Why a name was refused. `field` names what the caller sent, so the message can say which
/// input to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{field} must not be empty")]
    Empty { field: &'static str },
    #[error("{field} is {len} characters long; at most {max} are allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error(
        "{field} {value:?} has a character that is not allowed (use ASCII letters, digits, '.', '_' or '-', starting with a letter or digit)"
    )]
    BadCharacter { field: &'static str, value: String },
}

fn check(field: &'static str, value: &str, max: usize) -> Result<(), IdError> {
    if value.is_empty() {
        return Err(IdError::Empty { field });
    }
    if value.len() > max {
        return Err(IdError::TooLong {
            field,
            len: value.len(),
            max,
        });
    }
    let mut chars = value.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !first_ok || !rest_ok {
        return Err(IdError::BadCharacter {
            field,
            value: value.chars().take(80).collect(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $field:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The longest accepted value, in bytes.
            pub const MAX_LEN: usize = $max;
            /// What this id is called in error messages.
            pub const FIELD: &'static str = $field;

            /// Parses `value`, naming `field` in the error; use this where the value arrives
            /// under another name (a proto field, a config key).
            pub fn parse_field(field: &'static str, value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                check(field, &value, $max)?;
                Ok(Self(value))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::parse_field($field, s)
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::parse_field($field, s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A hub's identity: in its certificate (`spiffe://<td>/hub/<id>`) and in every command it signs.
    HubId, "hub_id", 64
);
id_type!(
    /// A spoke's identity: in its certificate (`spiffe://<td>/spoke/<id>`), its Valkey keys and its receipts.
    SpokeId, "spoke_id", 64
);
id_type!(
    /// The workspace an agent belongs to; clients are confined to workspaces.
    WorkspaceId, "workspace", 64
);
id_type!(
    /// The name of an agent profile that a spoke's operator configured.
    ProfileName, "profile", 64
);
id_type!(
    /// A command's unique id; the spoke's replay defence is keyed on it.
    CommandId, "command_id", 128
);
id_type!(
    /// An agent's id: one attempt at running a job, named `<job id>.<attempt number>` by the
    /// spoke when it dispatches (see [`AgentId::of_attempt`]).
    AgentId, "agent_id", 80
);
id_type!(
    /// A job's id, chosen by the spoke when it accepts a spawn.
    JobId, "job_id", 64
);

impl CommandId {
    /// A fresh, time-ordered command id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl AgentId {
    /// The id of attempt `attempt` (1 = the first) of `job`: `<job>.<attempt>`. Always valid: a
    /// job id is at most 64 characters and starts with a letter or digit.
    pub fn of_attempt(job: &JobId, attempt: u32) -> Self {
        Self(format!("{job}.{attempt}"))
    }

    /// The job and attempt number this id names, if it has the shape [`AgentId::of_attempt`]
    /// gives (any other id names no agent).
    pub fn attempt(&self) -> Option<(JobId, u32)> {
        let (job, n) = self.0.rsplit_once('.')?;
        let n: u32 = n.parse().ok().filter(|n| *n > 0)?;
        if n.to_string().len() != self.0.len() - job.len() - 1 {
            // Leading zeros or a sign: not the canonical spelling, so not an agent's id.
            return None;
        }
        Some((job.parse().ok()?, n))
    }
}

impl JobId {
    /// A fresh, time-ordered job id.
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }

    /// The id of the job that command `command` of hub `hub` creates: a UUID (version 8) from
    /// SHA-256 of both. A spawn replayed after the spoke forgot its command id still lands on
    /// the same job, which the queue then reports instead of creating a second one.
    pub fn for_command(hub: &HubId, command: &CommandId) -> Self {
        Self(derived_uuid(&[
            b"mosaic.job",
            hub.as_str().as_bytes(),
            command.as_str().as_bytes(),
        ]))
    }
}

impl CommandId {
    /// The id of the command that carries request `request` (a client's idempotency key) of
    /// `caller` for `verb`, on hub `hub`: the same request always yields the same command, and
    /// different callers' equal request ids never meet.
    pub fn for_request(hub: &HubId, caller: &str, verb: &str, request: &str) -> Self {
        Self(derived_uuid(&[
            b"mosaic.request",
            hub.as_str().as_bytes(),
            caller.as_bytes(),
            verb.as_bytes(),
            request.as_bytes(),
        ]))
    }
}

/// A version-8 UUID from the SHA-256 of `parts`, each length-prefixed so that no two lists of
/// parts share an encoding.
fn derived_uuid(parts: &[&[u8]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for p in parts {
        h.update((p.len() as u64).to_be_bytes());
        h.update(p);
    }
    let digest = h.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Uuid::new_v8(bytes).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_names() {
        for ok in ["a", "spoke-1", "hub.eu_west", "0abc", &"x".repeat(64)] {
            assert!(SpokeId::parse_field("spoke_id", ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refusals_name_the_field() {
        let err = WorkspaceId::parse_field("spawn.workspace", "").unwrap_err();
        assert_eq!(err.to_string(), "spawn.workspace must not be empty");
        let err = WorkspaceId::parse_field("spawn.workspace", "a/b").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("spawn.workspace \"a/b\" has a character")
        );
        let err = HubId::parse_field("hub_id", "h".repeat(65)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "hub_id is 65 characters long; at most 64 are allowed"
        );
        assert!(HubId::parse_field("hub_id", "-lead").is_err());
        assert!(HubId::parse_field("hub_id", "a{b}").is_err());
    }

    #[test]
    fn derived_ids_are_stable_valid_and_distinct() {
        let hub: HubId = "hub".parse().unwrap();
        let c = CommandId::for_request(&hub, "alice", "spawn", "r1");
        assert_eq!(c, CommandId::for_request(&hub, "alice", "spawn", "r1"));
        assert_ne!(c, CommandId::for_request(&hub, "bob", "spawn", "r1"));
        assert_ne!(c, CommandId::for_request(&hub, "alice", "kill", "r1"));
        // Length prefixes: moving a byte between parts changes the id.
        assert_ne!(
            CommandId::for_request(&hub, "ab", "c", "r"),
            CommandId::for_request(&hub, "a", "bc", "r")
        );
        assert_eq!(CommandId::parse_field("x", c.as_str()).unwrap(), c);
        let j = JobId::for_command(&hub, &c);
        assert_eq!(j, JobId::for_command(&hub, &c));
        assert_eq!(JobId::parse_field("x", j.as_str()).unwrap(), j);
        assert_ne!(j.as_str(), c.as_str());
    }

    #[test]
    fn generated_ids_parse() {
        let c = CommandId::generate();
        assert_eq!(CommandId::parse_field("x", c.as_str()).unwrap(), c);
        let job = JobId::generate();
        let a = AgentId::of_attempt(&job, 3);
        assert_eq!(AgentId::parse_field("x", a.as_str()).unwrap(), a);
        assert_eq!(a.attempt(), Some((job.clone(), 3)));
        let longest: JobId = "j".repeat(JobId::MAX_LEN).parse().unwrap();
        let a = AgentId::of_attempt(&longest, u32::MAX);
        assert_eq!(AgentId::parse_field("x", a.as_str()).unwrap(), a);
    }

    #[test]
    fn only_canonical_attempt_ids_name_an_attempt() {
        for not in [
            "job", "job.", "job.0", "job.01", "job.+1", ".1", "job.x", "job.1.a",
        ] {
            let id = AgentId::parse_field("x", not);
            assert!(id.map_or(true, |a| a.attempt().is_none()), "{not}");
        }
        let a: AgentId = "j.b.12".parse().unwrap();
        assert_eq!(a.attempt(), Some(("j.b".parse().unwrap(), 12)));
    }

    proptest! {
        #[test]
        fn accepted_names_never_contain_key_or_uri_syntax(s in "\\PC{0,80}") {
            if let Ok(id) = SpokeId::parse_field("spoke_id", s) {
                let v = id.as_str();
                let forbidden = ['{', '}', ':', '/', ' ', '\n', '*'];
                prop_assert!(!v.contains(forbidden), "{:?}", v);
                prop_assert!(v.len() <= SpokeId::MAX_LEN);
            }
        }
    }
}
