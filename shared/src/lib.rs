//! Mosaic federation: what hub and spoke share.
//!
//! - [`pb`]: the generated protobuf types and gRPC stubs (`mosaic.federation.v1` between hub
//!   and spoke, `mosaic.admin.v1` for clients), their proto3 JSON mapping (serde), and the
//!   descriptor set; only the edges of hub and spoke use them.
//! - [`ids`]: validated identifiers (hub, spoke, workspace, profile, command, agent).
//! - [`stream`]: Valkey streams as event logs: entry ids, retention that records what it
//!   removed.
//! - [`signing`]: ed25519 keys, key ids, domain-separated signatures over exact bytes.
//! - [`tls`]: mutual TLS with SPIFFE-style URI SAN identities, and the client connector.
//! - [`config`]: TOML + environment overrides into a binary's raw config struct.
//! - [`ops`]: the operations port: Prometheus metrics, liveness, readiness, gRPC health.
//! - [`reload`]: noticing changed files (polled fingerprints) and SIGHUP.
//! - [`telemetry`]: tracing setup.
//! - [`time`]: wall-clock unix milliseconds.
//! - [`valkey`]: connecting to Valkey (one server or a cluster, TLS or not).

pub mod config;
pub mod ids;
pub mod ops;
pub mod reload;
pub mod signing;
pub mod stream;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod valkey;

pub mod pb {
    //! Generated code. Clippy's pedantry does not apply to it.
    #![allow(clippy::all)]
    pub mod federation {
        pub mod v1 {
            tonic::include_proto!("mosaic.federation.v1");
            include!(concat!(env!("OUT_DIR"), "/mosaic.federation.v1.serde.rs"));
        }
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("mosaic.admin.v1");
            include!(concat!(env!("OUT_DIR"), "/mosaic.admin.v1.serde.rs"));
        }
    }
    /// Every file of `proto/`, as an encoded `FileDescriptorSet` (for gRPC server reflection).
    pub const DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/mosaic_descriptor.bin"));
}
