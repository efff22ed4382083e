//! Resolves a spawn request against the operator's agent profiles into a [`LaunchPlan`].
//!
//! The hub chooses a profile by name and passes arguments, environment values and a working
//! directory; this module decides whether this spoke allows them. It never runs anything: the
//! plan it returns is all `runner` may start. It reads the file system (to see where an
//! existing directory really points) but never writes to it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mosaic_shared::ids::ProfileName;

use crate::config::Profile;

/// What a job runs, as the hub asked: stored with the job (as JSON) so that every attempt, even
/// after a spoke restart, is planned again from it against the profiles configured then.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct JobSpec {
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    /// Relative, with no `..` or root component (checked by `command`).
    pub workdir: PathBuf,
}

/// Exactly what the runner will start: the program, its full argument list, its whole
/// environment, and where.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    pub profile: Arc<Profile>,
    /// The profile's fixed arguments followed by the request's.
    pub args: Vec<String>,
    /// The complete environment of the agent: the profile's fixed variables, overridden by the
    /// request's allowed ones (the spoke's own environment is cleared).
    pub env: Vec<(String, String)>,
    /// Inside the profile's root; created by the runner if missing.
    pub workdir: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("profile {name} is not configured on this spoke (configured: {offered})")]
    UnknownProfile { name: ProfileName, offered: String },
    #[error("spawn.env: {name} is not allowed by profile {profile} (allowed: {allowed})")]
    EnvNotAllowed {
        name: String,
        profile: ProfileName,
        allowed: String,
    },
    #[error("spawn.workdir {workdir} resolves outside the profile's working-directory root")]
    WorkdirEscapes { workdir: String },
}

impl PlanError {
    pub fn reason(&self) -> &'static str {
        match self {
            PlanError::UnknownProfile { .. } => "unknown_profile",
            PlanError::EnvNotAllowed { .. } => "env_not_allowed",
            PlanError::WorkdirEscapes { .. } => "workdir_outside_root",
        }
    }
}

/// Plans a spawn request, with every check: what [`replan`] checks, and that the working
/// directory does not lead out of the profile's root through an existing symbolic link
/// ([`check_workdir`]). Used where a spawn arrives.
pub fn plan(
    profiles: &BTreeMap<ProfileName, Arc<Profile>>,
    profile: &ProfileName,
    req: &JobSpec,
) -> Result<LaunchPlan, PlanError> {
    let plan = replan(profiles, profile, req)?;
    check_workdir(&plan)?;
    Ok(plan)
}

/// Plans a queued job's attempt against the profiles configured now, without touching the file
/// system: the profile, the environment names it allows, and the working directory's place
/// under the root (lexically; `req.workdir` was checked relative when the job was queued). The
/// scheduler calls it for every new attempt, so it must stay cheap; the runner calls
/// [`check_workdir`] just before it creates and enters the directory.
pub fn replan(
    profiles: &BTreeMap<ProfileName, Arc<Profile>>,
    profile: &ProfileName,
    req: &JobSpec,
) -> Result<LaunchPlan, PlanError> {
    let profile = profiles
        .get(profile)
        .ok_or_else(|| PlanError::UnknownProfile {
            name: profile.clone(),
            offered: list(profiles.keys().map(|k| k.as_str())),
        })?;
    if let Some(name) = req
        .env
        .keys()
        .find(|n| !profile.allowed_env.iter().any(|a| a == *n))
    {
        return Err(PlanError::EnvNotAllowed {
            name: name.clone(),
            profile: profile.name.clone(),
            allowed: list(profile.allowed_env.iter().map(String::as_str)),
        });
    }
    let workdir = profile.workdir_root.join(&req.workdir);
    let mut args = profile.args.clone();
    args.extend(req.args.iter().cloned());
    Ok(LaunchPlan {
        profile: profile.clone(),
        args,
        env: profile
            .env
            .iter()
            .chain(&req.env)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect::<BTreeMap<_, _>>()
            .into_iter()
            .collect(),
        workdir,
    })
}

/// Refuses a plan whose working directory, lexically inside the profile's root, leads out of
/// it once the symbolic links along its existing part are followed.
pub fn check_workdir(plan: &LaunchPlan) -> Result<(), PlanError> {
    let root = &plan.profile.workdir_root;
    if stays_inside(root, &plan.workdir) {
        Ok(())
    } else {
        // As the spawn named it: relative to the root.
        let requested = plan.workdir.strip_prefix(root).unwrap_or(&plan.workdir);
        Err(PlanError::WorkdirEscapes {
            workdir: requested.display().to_string(),
        })
    }
}

/// Whether `path` (lexically inside `root`, which is canonical) still lies inside `root` once
/// symbolic links along its existing part are followed.
fn stays_inside(root: &Path, path: &Path) -> bool {
    let mut existing = path;
    loop {
        match existing.canonicalize() {
            Ok(real) => return real.starts_with(root),
            Err(_) => match existing.parent() {
                Some(parent) => existing = parent,
                None => return false,
            },
        }
    }
}

fn list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let v: Vec<&str> = items.collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn setup() -> (tempfile::TempDir, BTreeMap<ProfileName, Arc<Profile>>) {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir_all(&root).unwrap();
        let root = root.canonicalize().unwrap();
        std::os::unix::fs::symlink("/etc", root.join("escape")).unwrap();
        let name: ProfileName = "echo".parse().unwrap();
        let p = Profile {
            name: name.clone(),
            program: "/bin/echo".into(),
            noop: false,
            args: vec!["fixed".into()],
            allowed_env: vec!["FOO".into()],
            env: [
                ("FOO".to_string(), "default".to_string()),
                ("HOME".to_string(), "/h".to_string()),
            ]
            .into(),
            workdir_root: root,
            kill_grace: Duration::from_secs(1),
            concurrency: None,
            format: crate::output::Format::Plain,
            result_grace: Duration::from_secs(5),
        };
        (dir, [(name, Arc::new(p))].into())
    }

    fn req(workdir: &str) -> JobSpec {
        JobSpec {
            args: vec!["x".into()],
            env: [("FOO".to_string(), "1".to_string())].into(),
            workdir: workdir.into(),
        }
    }

    fn echo() -> ProfileName {
        "echo".parse().unwrap()
    }

    #[test]
    fn plans_fixed_args_first_inside_the_root() {
        let (_d, profiles) = setup();
        let p = plan(&profiles, &echo(), &req("a/b")).unwrap();
        assert_eq!(p.args, vec!["fixed", "x"]);
        // The request's allowed value overrides the profile's; the profile's others stay.
        let env = vec![("FOO".into(), "1".into()), ("HOME".into(), "/h".into())];
        assert_eq!(p.env, env);
        assert!(p.workdir.ends_with("root/a/b"));
    }

    #[test]
    fn refusals() {
        let (_d, profiles) = setup();
        let nope = "nope".parse().unwrap();
        assert_eq!(
            plan(&profiles, &nope, &req("")).unwrap_err().reason(),
            "unknown_profile"
        );
        let mut r = req("");
        r.env.insert("PATH".into(), "/x".into());
        let err = plan(&profiles, &echo(), &r).unwrap_err();
        assert_eq!(err.reason(), "env_not_allowed");
        assert!(err.to_string().contains("PATH"), "{err}");
        assert_eq!(
            plan(&profiles, &echo(), &req("escape/sub"))
                .unwrap_err()
                .reason(),
            "workdir_outside_root"
        );
        // Planning again at dispatch leaves the file system alone; the runner's check before
        // it makes the directory refuses the same escape, naming it as the spawn did.
        let again = replan(&profiles, &echo(), &req("escape/sub")).unwrap();
        let err = check_workdir(&again).unwrap_err();
        assert_eq!(err.reason(), "workdir_outside_root");
        assert!(err.to_string().contains("escape/sub"), "{err}");
        let inside = replan(&profiles, &echo(), &req("inside/sub")).unwrap();
        assert_eq!(check_workdir(&inside), Ok(()));
    }
}
