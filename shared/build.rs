//! Compiles `proto/` with protox (pure Rust), so building never needs a system `protoc`:
//! messages and gRPC stubs (tonic), their proto3 JSON mapping (pbjson, for the hub's HTTP
//! API), and the encoded descriptor set (for gRPC server reflection).

use std::path::PathBuf;

use prost::Message as _;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let files = [
        "mosaic/federation/v1/federation.proto",
        "mosaic/admin/v1/admin.proto",
    ];
    let fds = protox::compile(files, [&proto_root])?;
    let descriptors = fds.encode_to_vec();
    std::fs::write(out.join("mosaic_descriptor.bin"), &descriptors)?;
    // Maps as BTreeMap: their encoding is then deterministic, so the hub can fingerprint a
    // request by its bytes.
    tonic_prost_build::configure()
        .btree_map(".")
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&descriptors)?
        .btree_map(["."])
        .preserve_proto_field_names()
        .emit_fields()
        .build(&[".mosaic"])?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}
