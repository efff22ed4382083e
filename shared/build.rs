//! Compiles `proto/` with protox (pure Rust), so building never needs a system `protoc`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let files = [
        "mosaic/federation/v1/federation.proto",
        "mosaic/admin/v1/admin.proto",
    ];
    let fds = protox::compile(files, [&proto_root])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    println!("cargo:rerun-if-changed={}", proto_root.display());
    Ok(())
}
