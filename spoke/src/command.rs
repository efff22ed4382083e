//! Domain form of a verified command, converted from protobuf once at the edge.
//!
//! [`Action::try_from`] checks every client-supplied field for shape and size and names the
//! field in its error; nothing past this module sees a prost type or an unchecked string. Whether
//! a profile exists and where the working directory lands is `profile`'s business, because
//! those depend on this spoke's configuration.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use std::time::Duration;

use mosaic_shared::ids::{IdError, JobId, ProfileName, WorkspaceId};
use mosaic_shared::pb::federation::v1 as pb;

use crate::config::valid_env_name;
use crate::job::{MAX_PRIORITY, MAX_RETRIES, MAX_WAIT, MIN_PRIORITY, RequestedOptions};
use crate::profile::JobSpec;

/// Most arguments a spawn may pass.
pub const MAX_ARGS: usize = 256;
/// Longest single argument or environment value, in bytes.
pub const MAX_ARG_BYTES: usize = 16 * 1024;
/// Most environment entries a spawn may pass.
pub const MAX_ENV: usize = 64;
/// Longest working-directory path, in bytes.
pub const MAX_WORKDIR_BYTES: usize = 1024;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Spawn(SpawnRequest),
    /// A job id or the agent id of one of its attempts.
    Status(String),
    Kill(String),
    QueueStats,
    PauseQueue,
    ResumeQueue,
    RemoveJob(JobId),
}

impl Action {
    pub fn verb(&self) -> &'static str {
        match self {
            Action::Spawn(_) => "spawn",
            Action::Status(_) => "status",
            Action::Kill(_) => "kill",
            Action::QueueStats => "queue_stats",
            Action::PauseQueue => "pause_queue",
            Action::ResumeQueue => "resume_queue",
            Action::RemoveJob(_) => "remove_job",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpawnRequest {
    pub profile: ProfileName,
    pub workspace: WorkspaceId,
    pub spec: JobSpec,
    pub options: RequestedOptions,
}

/// A field that failed validation: which one, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FieldError(pub String);

impl From<IdError> for FieldError {
    fn from(e: IdError) -> Self {
        FieldError(e.to_string())
    }
}

impl TryFrom<Option<pb::command::Action>> for Action {
    type Error = FieldError;

    fn try_from(action: Option<pb::command::Action>) -> Result<Self, FieldError> {
        match action {
            None => Err(FieldError(
                "command.action is missing (expected spawn, status, kill or a queue control)"
                    .into(),
            )),
            // Job and agent ids follow the same rules; the spoke resolves which one it is.
            Some(pb::command::Action::Status(s)) => Ok(Action::Status(
                JobId::parse_field("status.id", s.id)?.into(),
            )),
            Some(pb::command::Action::Kill(k)) => {
                Ok(Action::Kill(JobId::parse_field("kill.id", k.id)?.into()))
            }
            Some(pb::command::Action::Spawn(s)) => Ok(Action::Spawn(SpawnRequest::try_from(s)?)),
            Some(pb::command::Action::QueueStats(_)) => Ok(Action::QueueStats),
            Some(pb::command::Action::PauseQueue(_)) => Ok(Action::PauseQueue),
            Some(pb::command::Action::ResumeQueue(_)) => Ok(Action::ResumeQueue),
            Some(pb::command::Action::RemoveJob(r)) => Ok(Action::RemoveJob(JobId::parse_field(
                "remove_job.job_id",
                r.job_id,
            )?)),
        }
    }
}

impl TryFrom<pb::Spawn> for SpawnRequest {
    type Error = FieldError;

    fn try_from(s: pb::Spawn) -> Result<Self, FieldError> {
        let options = requested_options(&s)?;
        let profile = ProfileName::parse_field("spawn.profile", s.profile)?;
        let workspace = WorkspaceId::parse_field("spawn.workspace", s.workspace)?;
        if s.args.len() > MAX_ARGS {
            return Err(FieldError(format!(
                "spawn.args has {} entries; at most {MAX_ARGS} are allowed",
                s.args.len()
            )));
        }
        if let Some(i) = s.args.iter().position(|a| a.len() > MAX_ARG_BYTES) {
            return Err(FieldError(format!(
                "spawn.args[{i}] is {} bytes; at most {MAX_ARG_BYTES} are allowed",
                s.args[i].len()
            )));
        }
        if let Some(i) = s.args.iter().position(|a| a.contains('\0')) {
            return Err(FieldError(format!("spawn.args[{i}] contains a NUL byte")));
        }
        if s.env.len() > MAX_ENV {
            return Err(FieldError(format!(
                "spawn.env has {} entries; at most {MAX_ENV} are allowed",
                s.env.len()
            )));
        }
        let mut env = BTreeMap::new();
        for (name, value) in s.env {
            if !valid_env_name(&name) {
                return Err(FieldError(format!(
                    "spawn.env: {:?} is not an environment variable name",
                    name.chars().take(80).collect::<String>()
                )));
            }
            if value.len() > MAX_ARG_BYTES || value.contains('\0') {
                return Err(FieldError(format!(
                    "spawn.env[{name}] must be at most {MAX_ARG_BYTES} bytes without NUL"
                )));
            }
            env.insert(name, value);
        }
        let workdir = relative_workdir(&s.workdir)?;
        Ok(SpawnRequest {
            profile,
            workspace,
            spec: JobSpec {
                args: s.args,
                env,
                workdir,
            },
            options,
        })
    }
}

fn requested_options(s: &pb::Spawn) -> Result<RequestedOptions, FieldError> {
    let wait =
        |field: &str, ms: Option<u64>, min_ms: u64| -> Result<Option<Duration>, FieldError> {
            match ms {
                Some(v) if v < min_ms || Duration::from_millis(v) > MAX_WAIT => {
                    Err(FieldError(format!(
                        "spawn.{field} must be between {min_ms} and {} ms",
                        MAX_WAIT.as_millis()
                    )))
                }
                other => Ok(other.map(Duration::from_millis)),
            }
        };
    let priority = match s.priority {
        Some(p) if !(u32::from(MIN_PRIORITY)..=u32::from(MAX_PRIORITY)).contains(&p) => {
            return Err(FieldError(format!(
                "spawn.priority must be between {MIN_PRIORITY} and {MAX_PRIORITY}, got {p}"
            )));
        }
        p => p.map(|p| p as u8),
    };
    if s.delay_ms.is_some() && s.not_before_ms.is_some() {
        return Err(FieldError(
            "spawn.delay_ms and spawn.not_before_ms exclude each other; give one".into(),
        ));
    }
    if let Some(r) = s.max_retries.filter(|&r| r > MAX_RETRIES) {
        return Err(FieldError(format!(
            "spawn.max_retries must be at most {MAX_RETRIES}, got {r}"
        )));
    }
    let base = wait("backoff_base_ms", s.backoff_base_ms, 1)?;
    let cap = wait("backoff_cap_ms", s.backoff_cap_ms, 1)?;
    if let (Some(b), Some(c)) = (base, cap)
        && c < b
    {
        return Err(FieldError(
            "spawn.backoff_cap_ms must be at least spawn.backoff_base_ms".into(),
        ));
    }
    Ok(RequestedOptions {
        priority,
        delay: wait("delay_ms", s.delay_ms, 0)?,
        not_before_ms: s.not_before_ms,
        max_retries: s.max_retries,
        backoff_base: base,
        backoff_cap: cap,
        attempt_timeout: wait("attempt_timeout_ms", s.attempt_timeout_ms, 100)?,
    })
}

/// A working directory must be relative and may not climb: `a/b` is fine, `/etc`, `../x` and
/// `a/../../x` are refused before anything touches the file system.
fn relative_workdir(raw: &str) -> Result<PathBuf, FieldError> {
    if raw.len() > MAX_WORKDIR_BYTES || raw.contains('\0') {
        return Err(FieldError(format!(
            "spawn.workdir must be at most {MAX_WORKDIR_BYTES} bytes without NUL"
        )));
    }
    let path = Path::new(raw);
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => {
                return Err(FieldError(format!(
                    "spawn.workdir {raw:?} is outside the profile's working-directory root (give a relative path without '..')"
                )));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spawn() -> pb::Spawn {
        pb::Spawn {
            profile: "echo".into(),
            workspace: "ws".into(),
            args: vec!["a".into()],
            env: [("FOO".to_string(), "bar".to_string())].into(),
            workdir: "jobs/1".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_good_spawn_converts() {
        let r = SpawnRequest::try_from(spawn()).unwrap();
        assert_eq!(r.spec.workdir, PathBuf::from("jobs/1"));
        assert_eq!(r.profile.as_str(), "echo");
        assert_eq!(r.options, RequestedOptions::default());
        let mut s = spawn();
        (s.priority, s.max_retries, s.delay_ms) = (Some(10), Some(0), Some(500));
        let o = SpawnRequest::try_from(s).unwrap().options;
        assert_eq!((o.priority, o.max_retries), (Some(10), Some(0)));
        assert_eq!(o.delay, Some(Duration::from_millis(500)));
    }

    #[test]
    fn bad_fields_are_named() {
        type Mutation = Box<dyn Fn(&mut pb::Spawn)>;
        let cases: Vec<(Mutation, &str)> = vec![
            (Box::new(|s| s.profile = String::new()), "spawn.profile"),
            (Box::new(|s| s.workspace = "a b".into()), "spawn.workspace"),
            (
                Box::new(|s| s.args = vec!["x".into(); MAX_ARGS + 1]),
                "spawn.args",
            ),
            (
                Box::new(|s| s.args = vec!["x".repeat(MAX_ARG_BYTES + 1)]),
                "spawn.args[0]",
            ),
            (
                Box::new(|s| {
                    s.env.insert("BAD-NAME".into(), "v".into());
                }),
                "spawn.env",
            ),
            (Box::new(|s| s.workdir = "/etc".into()), "spawn.workdir"),
            (Box::new(|s| s.workdir = "../x".into()), "spawn.workdir"),
            (
                Box::new(|s| s.workdir = "a/../../x".into()),
                "spawn.workdir",
            ),
        ];
        for (mutate, field) in cases {
            let mut s = spawn();
            mutate(&mut s);
            let err = SpawnRequest::try_from(s).unwrap_err().to_string();
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn missing_action_and_bad_agent_ids_are_refused() {
        assert!(
            Action::try_from(None)
                .unwrap_err()
                .0
                .contains("command.action")
        );
        let err = Action::try_from(Some(pb::command::Action::Kill(pb::Kill {
            id: "../x".into(),
        })))
        .unwrap_err();
        assert!(err.0.starts_with("kill.id"), "{err}");
    }
}
