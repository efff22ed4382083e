//! Every Valkey key name the spoke uses, and nowhere else.
//!
//! All keys of one spoke share the hash tag `{<spoke-id>}` so that every script touches a
//! single slot and runs unchanged on Valkey Cluster. Ids inside keys were validated by
//! `mosaic_shared::ids` and cannot contain `{`, `}` or `:`.
//!
//! Scripts that pick a job inside Valkey (dispatch with promotion, lease renewal, retention)
//! build that job's key from [`Keys::job_prefix`], and its attempts' fields with
//! [`ATTEMPT_FIELD`], which they receive as arguments, so the layout still lives in this one
//! file.

use mosaic_shared::ids::{CommandId, HubId, SpokeId};

use crate::job::JobState;

/// `<prefix>job:<id>`: hash holding one job's record and its attempts' (agents') records: the
/// attempts' ids, oldest first, in its `agents` field, and attempt `n`'s fields as
/// [`attempt_field`]`(n, name)`. An agent's id names its job and attempt number, so one read
/// finds it.
pub const JOB: &str = "job:";
/// What an attempt's field names in its job's hash start with.
pub const ATTEMPT_FIELD: &str = "a";

/// The field `name` of attempt `n` (1 = the first) in its job's hash: `a<n>.<name>`.
pub fn attempt_field(n: u32, name: &str) -> String {
    format!("{ATTEMPT_FIELD}{n}.{name}")
}

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

    /// Replay record of a hub's command: empty while it executes, then the encoded signed
    /// receipt. Keyed per hub so that no hub can ever be handed another hub's receipt.
    pub fn command(&self, hub: &HubId, id: &CommandId) -> String {
        format!("{}cmd:{hub}:{id}", self.prefix)
    }

    /// Hash holding one job's record.
    pub fn job(&self, id: &str) -> String {
        format!("{}{JOB}{id}", self.prefix)
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

    /// Stream of events: lifecycle events, appended by the same scripts that change state,
    /// and what agents report.
    pub fn events(&self) -> String {
        format!("{}events", self.prefix)
    }

    /// The id of the newest entry that retention removed from [`Keys::events`]: a cursor before
    /// it can no longer resume.
    pub fn events_trimmed(&self) -> String {
        format!("{}events:trimmed", self.prefix)
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
            k.job("j1"),
            k.pending(),
            k.delayed(),
            k.active(),
            k.done(JobState::Failed),
            k.seq(),
            k.paused(),
            k.running_by_profile(),
            k.events(),
            k.events_trimmed(),
        ];
        for key in &all {
            assert!(key.starts_with("mosaic:{spoke-a}:"), "{key}");
        }
        // What the scripts build from the layout is what the Rust builders build.
        assert_eq!(k.job("j1"), format!("{}j1", k.job_prefix()));
        assert!(k.job_prefix().ends_with(JOB));
        assert_eq!(attempt_field(3, "pid"), "a3.pid");
    }
}
