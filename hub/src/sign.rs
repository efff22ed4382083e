//! Builds and signs commands. The only module that touches the hub's private key.
//!
//! A command is encoded once; the signature covers exactly those bytes (after the command
//! domain prefix) and the bytes travel as they are, so the spoke verifies what was signed.

use std::time::Duration;

use mosaic_shared::ids::{CommandId, HubId, SpokeId};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::signing::{Domain, KeyPair};
use prost::Message as _;

pub struct Signer {
    hub_id: HubId,
    key: KeyPair,
    ttl: Duration,
}

impl Signer {
    pub fn new(hub_id: HubId, key: KeyPair, ttl: Duration) -> Self {
        Signer { hub_id, key, ttl }
    }

    pub fn hub_id(&self) -> &HubId {
        &self.hub_id
    }

    /// The key that verifies this signer's commands.
    pub fn public(&self) -> mosaic_shared::signing::PublicKey {
        self.key.public()
    }

    /// A command for `spoke`, valid from `now_ms` for the configured TTL, signed. It carries
    /// the trace context of the current span, if that span is in an exported trace.
    pub fn seal(
        &self,
        command_id: &CommandId,
        spoke: &SpokeId,
        action: pb::command::Action,
        now_ms: i64,
    ) -> pb::SignedCommand {
        let (traceparent, tracestate) =
            mosaic_shared::telemetry::traceparent(&tracing::Span::current());
        let command = pb::Command {
            traceparent,
            tracestate,
            command_id: command_id.to_string(),
            hub_id: self.hub_id.to_string(),
            spoke_id: spoke.to_string(),
            key_id: self.key.id().to_string(),
            issued_at_ms: now_ms,
            expires_at_ms: now_ms + self.ttl.as_millis() as i64,
            action: Some(action),
        }
        .encode_to_vec();
        pb::SignedCommand {
            signature: self.key.sign(Domain::Command, &command),
            command,
            key_id: self.key.id().to_string(),
        }
    }
}
