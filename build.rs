//! Compiles `proto/keygate/v1/*.proto` with protox (pure Rust, so no system
//! `protoc` is needed), writes the encoded descriptor set into `OUT_DIR` for
//! gRPC reflection, and generates the prost messages and tonic stubs from it.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "proto/keygate/v1/keys.proto",
    "proto/keygate/v1/authorization.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);

    let fds = protox::compile(PROTOS, ["proto"])?;
    fs::write(out_dir.join("keygate_descriptor.bin"), fds.encode_to_vec())?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)?;
    Ok(())
}
