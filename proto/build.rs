//! Compiles the `adclick.v1` protobuf package without a system `protoc`.
//!
//! `protox` (a pure-Rust protobuf compiler) parses `proto/adclick/v1/*.proto` into a
//! `FileDescriptorSet`; `tonic-prost-build` turns that into Rust. Messages are generated
//! always; the tonic client and server stubs only with the crate's `grpc` feature, so the
//! storage engine (which disables it) compiles no network code. The encoded descriptor set
//! is written next to the generated code for gRPC reflection (`grpcurl`).

use std::path::PathBuf;

/// The directory the `.proto` files are imported from (import paths start below it).
const PROTO_ROOT: &str = "proto";

/// Every file of the package, relative to [`PROTO_ROOT`].
const PROTO_FILES: &[&str] = &[
    "adclick/v1/common.proto",
    "adclick/v1/click.proto",
    "adclick/v1/ingest.proto",
    "adclick/v1/query.proto",
    "adclick/v1/admin.proto",
    "adclick/v1/raft.proto",
];

/// File name of the encoded descriptor set in `OUT_DIR`; `wire.rs` includes it.
const DESCRIPTOR_FILE: &str = "adclick_v1_descriptor.bin";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    // Cargo sets this for build scripts when the feature is on; each feature set gets its
    // own build-script run and OUT_DIR, so toggling the feature regenerates the code.
    let grpc = std::env::var_os("CARGO_FEATURE_GRPC").is_some();

    println!("cargo:rerun-if-changed={PROTO_ROOT}");

    let mut compiler = protox::Compiler::new([PROTO_ROOT])?;
    // Source info carries the .proto comments: prost turns them into doc comments and
    // reflection clients (`grpcurl describe`) show them.
    compiler.include_source_info(true).include_imports(true);
    compiler.open_files(PROTO_FILES)?;
    std::fs::write(
        out_dir.join(DESCRIPTOR_FILE),
        compiler.encode_file_descriptor_set(),
    )?;

    tonic_prost_build::configure()
        .build_client(grpc)
        .build_server(grpc)
        // `bytes` fields as `bytes::Bytes`: event ids and Raft entries are sliced out of the
        // request buffer instead of copied.
        .bytes(".adclick.v1")
        // Malformed requests are INVALID_ARGUMENT, not tonic's INTERNAL (src/codec.rs).
        .codec_path("crate::codec::StrictCodec")
        .compile_fds(compiler.file_descriptor_set())?;
    Ok(())
}
