//! Every Valkey key name the spoke uses, and nowhere else.
//!
//! All keys of one spoke share the hash tag `{<spoke-id>}` so that every script touches a
//! single slot and runs unchanged on Valkey Cluster. Ids inside keys were validated by
//! `mosaic_shared::ids` and cannot contain `{`, `}` or `:`.

use mosaic_shared::ids::{AgentId, CommandId, HubId, SpokeId};

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

    /// Replay record of a hub's command: empty while it executes, then the encoded signed
    /// receipt. Keyed per hub so that no hub can ever be handed another hub's receipt.
    pub fn command(&self, hub: &HubId, id: &CommandId) -> String {
        format!("{}cmd:{hub}:{id}", self.prefix)
    }

    /// Hash holding one agent's record.
    pub fn agent(&self, id: &AgentId) -> String {
        format!("{}agent:{id}", self.prefix)
    }

    /// Sorted set of agent ids scored by creation time.
    pub fn agents(&self) -> String {
        format!("{}agents", self.prefix)
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
            k.events(),
        ];
        for key in all {
            assert!(key.starts_with("mosaic:{spoke-a}:"), "{key}");
        }
    }
}
