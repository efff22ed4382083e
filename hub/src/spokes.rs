//! Talking to spokes: dial over mutual TLS (checking the spoke's SPIFFE identity), send a signed
//! command, and verify the spoke's signed receipt before believing a word of it.
//!
//! A receipt is accepted only if it verifies (strictly, over the exact bytes received) with the
//! receipt key configured for that spoke, and answers this command from this hub for this spoke.

use std::time::Duration;

use mosaic_shared::ids::{CommandId, HubId, SpokeId};
use mosaic_shared::pb::federation::v1 as pb;
use mosaic_shared::pb::federation::v1::federation_client::FederationClient;
use mosaic_shared::signing::{Domain, SignatureError};
use mosaic_shared::time::unix_ms;
use mosaic_shared::tls::{self, ConnectError, DialOptions, Role, SpiffeId};
use prost::Message as _;
use tonic::transport::Channel;

use crate::config::{HubConfig, SpokeEntry};
use crate::sign::Signer;

#[derive(Debug, thiserror::Error)]
pub enum SpokeError {
    #[error("spoke {0} is not in the hub's config (configured: {1})")]
    Unknown(SpokeId, String),
    #[error(transparent)]
    Connect(#[from] ConnectError),
    #[error("spoke {spoke} refused the command: {message} ({code:?}{})", reason.as_deref().map(|r| format!(", {r}")).unwrap_or_default())]
    Refused {
        spoke: SpokeId,
        code: tonic::Code,
        /// The spoke's machine-readable reason (`x-mosaic-reason`), when it sent one.
        reason: Option<String>,
        message: String,
    },
    #[error("spoke {spoke} sent a receipt that cannot be trusted: {problem}")]
    BadReceipt { spoke: SpokeId, problem: String },
}

impl SpokeError {
    fn from_status(spoke: &SpokeId, s: tonic::Status) -> Self {
        SpokeError::Refused {
            spoke: spoke.clone(),
            code: s.code(),
            reason: s
                .metadata()
                .get("x-mosaic-reason")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            message: s.message().to_owned(),
        }
    }
}

/// A receipt that verified: the spoke's word on what the command did.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub command_id: CommandId,
    pub spoke_id: SpokeId,
    pub executed_at_ms: i64,
    pub result: pb::receipt::Result,
    /// The envelope as received, kept for audit.
    pub signed: pb::SignedReceipt,
}

impl Receipt {
    /// The job the command concerned (spawn, status, kill, remove).
    pub fn job(&self) -> Option<&pb::JobStatus> {
        match &self.result {
            pb::receipt::Result::Job(j) => Some(j),
            pb::receipt::Result::Queue(_) => None,
        }
    }

    /// The queue as a queue control left it.
    pub fn queue(&self) -> Option<&pb::QueueCounts> {
        match &self.result {
            pb::receipt::Result::Queue(q) => Some(q),
            pb::receipt::Result::Job(_) => None,
        }
    }
}

/// A connection to one spoke.
#[derive(Clone)]
pub struct SpokeClient {
    entry: SpokeEntry,
    client: FederationClient<Channel>,
}

impl SpokeClient {
    pub async fn connect(config: &HubConfig, spoke: &SpokeId) -> Result<Self, SpokeError> {
        let entry = config.spoke(spoke).cloned().ok_or_else(|| {
            let known: Vec<&str> = config.spokes.iter().map(|s| s.id.as_str()).collect();
            SpokeError::Unknown(spoke.clone(), known.join(", "))
        })?;
        let expected = SpiffeId::new(&config.trust_domain, Role::Spoke, entry.id.as_str());
        let channel = tls::connect(
            &entry.address,
            expected,
            &config.tls,
            DialOptions {
                connect_timeout: Duration::from_secs(5).min(config.request_timeout),
                request_timeout: config.request_timeout,
            },
        )
        .await?;
        Ok(SpokeClient {
            entry,
            client: FederationClient::new(channel),
        })
    }

    pub fn id(&self) -> &SpokeId {
        &self.entry.id
    }

    /// Sends an already signed command and verifies the receipt against `command_id`.
    pub async fn send(
        &self,
        signer: &Signer,
        command_id: &CommandId,
        envelope: pb::SignedCommand,
    ) -> Result<Receipt, SpokeError> {
        let signed = self
            .client
            .clone()
            .execute(envelope)
            .await
            .map_err(|s| SpokeError::from_status(&self.entry.id, s))?
            .into_inner();
        verify_receipt(&self.entry, signer.hub_id(), command_id, signed)
    }

    /// Signs `action` under a fresh command id, sends it and verifies the receipt.
    pub async fn execute(
        &self,
        signer: &Signer,
        action: pb::command::Action,
    ) -> Result<Receipt, SpokeError> {
        let id = CommandId::generate();
        let envelope = signer.seal(&id, &self.entry.id, action, unix_ms());
        self.send(signer, &id, envelope).await
    }

    pub async fn info(&self) -> Result<pb::InfoResponse, SpokeError> {
        self.client
            .clone()
            .info(pb::InfoRequest {})
            .await
            .map(tonic::Response::into_inner)
            .map_err(|s| SpokeError::from_status(&self.entry.id, s))
    }
}

/// Believes `signed` only if it verifies (strictly, over the exact bytes) with `entry`'s
/// receipt key and answers `command_id` from hub `hub` for that spoke.
pub fn verify_receipt(
    entry: &SpokeEntry,
    hub: &HubId,
    command_id: &CommandId,
    signed: pb::SignedReceipt,
) -> Result<Receipt, SpokeError> {
    let bad = |problem: String| SpokeError::BadReceipt {
        spoke: entry.id.clone(),
        problem,
    };
    let key = &entry.receipt_key;
    if signed.key_id != key.id().as_str() {
        return Err(bad(format!(
            "signed with key {:?}, but the configured receipt key is {}",
            signed.key_id.chars().take(40).collect::<String>(),
            key.id()
        )));
    }
    key.verify(Domain::Receipt, &signed.receipt, &signed.signature)
        .map_err(|e: SignatureError| bad(e.to_string()))?;
    let receipt = pb::Receipt::decode(signed.receipt.as_slice())
        .map_err(|e| bad(format!("does not decode: {e}")))?;
    if receipt.command_id != command_id.as_str() {
        return Err(bad(format!(
            "answers command {:?}, not {command_id}",
            receipt.command_id
        )));
    }
    if receipt.spoke_id != entry.id.as_str() || receipt.hub_id != hub.as_str() {
        return Err(bad(format!(
            "is addressed from spoke {:?} to hub {:?}",
            receipt.spoke_id, receipt.hub_id
        )));
    }
    let result = receipt
        .result
        .ok_or_else(|| bad("carries no result".into()))?;
    Ok(Receipt {
        command_id: command_id.clone(),
        spoke_id: entry.id.clone(),
        executed_at_ms: receipt.executed_at_ms,
        result,
        signed,
    })
}
