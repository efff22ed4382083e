//! The agent lifecycle: `spawning → running → completed | failed | killed`.
//!
//! This module owns the transition table and nothing else. The table is enforced atomically in
//! Valkey by the queue's attempt scripts (`store::queue`), which receive the allowed source
//! states from [`AgentState::may_enter_from`]; the table therefore exists once, here, and is
//! unit-tested. Attempts are born `spawning` by dispatch. Terminal states have no way out.

use std::fmt;
use std::str::FromStr;

use mosaic_shared::pb::federation::v1 as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentState {
    Spawning,
    Running,
    Completed,
    Failed,
    Killed,
}

impl AgentState {
    pub const ALL: [AgentState; 5] = [
        AgentState::Spawning,
        AgentState::Running,
        AgentState::Completed,
        AgentState::Failed,
        AgentState::Killed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Spawning => "spawning",
            AgentState::Running => "running",
            AgentState::Completed => "completed",
            AgentState::Failed => "failed",
            AgentState::Killed => "killed",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            AgentState::Completed | AgentState::Failed | AgentState::Killed
        )
    }

    /// The states from which an agent may enter `self`. Empty for `Spawning`: an agent is born
    /// spawning (by the create script) and never returns there.
    pub fn may_enter_from(self) -> &'static [AgentState] {
        match self {
            AgentState::Spawning => &[],
            AgentState::Running => &[AgentState::Spawning],
            AgentState::Completed => &[AgentState::Running],
            // A process that never started fails or is killed straight from spawning.
            AgentState::Failed | AgentState::Killed => &[AgentState::Spawning, AgentState::Running],
        }
    }

    pub fn can_transition(from: AgentState, to: AgentState) -> bool {
        to.may_enter_from().contains(&from)
    }
}

impl fmt::Display for AgentState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for AgentState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        AgentState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| format!("unknown agent state {s:?}"))
    }
}

impl From<AgentState> for pb::AgentState {
    fn from(s: AgentState) -> Self {
        match s {
            AgentState::Spawning => pb::AgentState::Spawning,
            AgentState::Running => pb::AgentState::Running,
            AgentState::Completed => pb::AgentState::Completed,
            AgentState::Failed => pb::AgentState::Failed,
            AgentState::Killed => pb::AgentState::Killed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::AgentState::*;
    use super::*;

    #[test]
    fn transition_table() {
        let allowed = [
            (Spawning, Running),
            (Spawning, Failed),
            (Spawning, Killed),
            (Running, Completed),
            (Running, Failed),
            (Running, Killed),
        ];
        for from in AgentState::ALL {
            for to in AgentState::ALL {
                assert_eq!(
                    AgentState::can_transition(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
    }

    #[test]
    fn terminal_states_have_no_exit_and_names_round_trip() {
        for s in AgentState::ALL {
            if s.is_terminal() {
                assert!(
                    AgentState::ALL
                        .iter()
                        .all(|&t| !AgentState::can_transition(s, t))
                );
            }
            assert_eq!(s.as_str().parse::<AgentState>().unwrap(), s);
        }
        assert!("zombie".parse::<AgentState>().is_err());
    }
}
