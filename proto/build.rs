//! Compiles `serin/v1/*.proto` with protox (pure Rust, no system `protoc`) and generates the
//! prost messages and tonic clients and servers; also writes the encoded descriptor set that
//! `FILE_DESCRIPTOR_SET` exposes for gRPC reflection.

use std::{env, fs, io, path::PathBuf};

use prost::Message as _;

/// Directory that holds the `serin/v1/*.proto` tree, relative to the crate root.
const PROTO_ROOT: &str = ".";
/// Directory of the package's files, relative to the crate root.
const PROTO_DIR: &str = "serin/v1";
/// Name of the encoded `FileDescriptorSet` in `OUT_DIR`.
const DESCRIPTOR_FILE: &str = "serin_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");

    // Every .proto of the package, in a stable order so the output is reproducible.
    let mut protos = Vec::new();
    for entry in fs::read_dir(PROTO_DIR)? {
        let path = entry?.path();
        if path.extension().is_some_and(|ext| ext == "proto") {
            println!("cargo:rerun-if-changed={}", path.display());
            protos.push(path);
        }
    }
    protos.sort();
    if protos.is_empty() {
        return Err(io::Error::other(format!("no .proto files found in {PROTO_DIR}")).into());
    }

    // Parse and type-check. Imports (the well-known types) and comments are kept: reflection
    // clients need the whole closure, and the comments become rustdoc and reflection docs.
    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_files(&protos)?;
    let fds = compiler.file_descriptor_set();

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out_dir.join(DESCRIPTOR_FILE), fds.encode_to_vec())?;

    // prost-build needs the imported files to see the whole message graph; it maps
    // google.protobuf to prost-types instead of generating it.
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
