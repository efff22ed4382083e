//! Every Valkey key name the spoke uses, and nowhere else.
//!
//! All keys of one spoke share the hash tag `{<spoke-id>}` so that every script touches a
//! single slot and runs unchanged on Valkey Cluster. Ids inside keys were validated by
//! `mosaic_shared::ids` and cannot contain `{`, `}` or `:`.
//!
//! Scripts that pick a job inside Valkey (dispatch with promotion, lease renewal, retention)
//! build that job's keys from [`Keys::job_prefix`], [`ATTEMPTS`] and [`Keys::agent_prefix`],
//! which they receive as arguments, so the layout still lives in this one file.

use mosaic_shared::ids::{AgentId, CommandId, HubId, SpokeId};

use crate::job::JobState;

/// `<prefix>job:<id>`: hash holding one job's record.
pub const JOB: &str = "job:";
/// `<prefix>job:<id>` + this: list of the job's attempt (agent) ids, oldest first.
pub const ATTEMPTS: &str = ":attempts";
/// `<prefix>agent:<id>`: hash holding one agent's (attempt's) record.
pub const AGENT: &str = "agent:";

#[derive(Debug, Clone)]
pub struct Keys {
    /// `mosaic:{<spoke>}:` — the prefix with the hash tag.
    prefix: String,
}

impl Keys {
    pub fn new(spoke: &SpokeId) -> Self {
        Keys {
            prefix: format!("mosaic:{{{spoke}}}:"),
        }
    }

    /// `<prefix>job:`: what a job id is appended to, for scripts that build job keys.
    pub fn job_prefix(&self) -> String {
        format!("{}{JOB}", self.prefix)
    }

    /// `<prefix>agent:`: what an agent id is appended to, for scripts that build agent keys.
    pub fn agent_prefix(&self) -> String {
        format!("{}{AGENT}", self.prefix)
    }

    /// Replay record of a hub's command: empty while it executes, then the encoded signed
    /// receipt. Keyed per hub so that no hub can ever be handed another hub's receipt.
    pub fn command(&self, hub: &HubId, id: &CommandId) -> String {
        format!("{}cmd:{hub}:{id}", self.prefix)
    }

    /// Hash holding one agent's record.
    pub fn agent(&self, id: &AgentId) -> String {
        format!("{}{AGENT}{id}", self.prefix)
    }

    /// Sorted set of agent ids scored by creation time.
    pub fn agents(&self) -> String {
        format!("{}agents", self.prefix)
    }

    /// Hash holding one job's record.
    pub fn job(&self, id: &str) -> String {
        format!("{}{JOB}{id}", self.prefix)
    }

    /// List of a job's attempt ids.
    pub fn job_attempts(&self, id: &str) -> String {
        format!("{}{JOB}{id}{ATTEMPTS}", self.prefix)
    }

    /// Sorted set of job ids scored by creation time.
    pub fn jobs(&self) -> String {
        format!("{}jobs", self.prefix)
    }

    /// Jobs ready to run, scored by [`crate::job::pending_score`].
    pub fn pending(&self) -> String {
        format!("{}q:pending", self.prefix)
    }

    /// Jobs waiting for a time (a delay or a retry backoff), scored by that time (unix ms).
    pub fn delayed(&self) -> String {
        format!("{}q:delayed", self.prefix)
    }

    /// Jobs holding a slot, scored by the expiry of their attempt's lease (unix ms).
    pub fn active(&self) -> String {
        format!("{}q:active", self.prefix)
    }

    /// Finished jobs in one terminal state, scored by finish time, for counts and retention.
    pub fn done(&self, state: JobState) -> String {
        debug_assert!(state.is_terminal());
        format!("{}q:done:{}", self.prefix, state.as_str())
    }

    /// Counter giving every enqueued job its FIFO sequence number.
    pub fn seq(&self) -> String {
        format!("{}q:seq", self.prefix)
    }

    /// Present while dispatch is paused.
    pub fn paused(&self) -> String {
        format!("{}q:paused", self.prefix)
    }

    /// Hash: profile name → number of active jobs of that profile.
    pub fn running_by_profile(&self) -> String {
        format!("{}q:running", self.prefix)
    }

    /// Stream of lifecycle events, appended by the same scripts that change state.
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_share_one_hash_tag() {
        let k = Keys::new(&"spoke-a".parse().unwrap());
        let all = [
            k.command(&"h".parse().unwrap(), &"c1".parse().unwrap()),
            k.agent(&"a1".parse().unwrap()),
            k.agents(),
            k.job("j1"),
            k.job_attempts("j1"),
            k.jobs(),
            k.pending(),
            k.delayed(),
            k.active(),
            k.done(JobState::Failed),
            k.seq(),
            k.paused(),
            k.running_by_profile(),
            k.events(),
        ];
        for key in &all {
            assert!(key.starts_with("mosaic:{spoke-a}:"), "{key}");
        }
        // What the scripts build from the layout is what the Rust builders build.
        assert_eq!(k.job("j1"), format!("{}j1", k.job_prefix()));
        assert_eq!(
            k.job_attempts("j1"),
            format!("{}j1{ATTEMPTS}", k.job_prefix())
        );
        let agent = k.agent(&"a1".parse().unwrap());
        assert_eq!(agent, format!("{}a1", k.agent_prefix()));
        assert!(k.job_prefix().ends_with(JOB) && k.agent_prefix().ends_with(AGENT));
    }
}
