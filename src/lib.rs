//! The Keygate API crate: the `keygate.v1` messages and gRPC stubs generated
//! from `proto/`, the descriptor set for reflection, and [`client`], a small
//! ergonomic Rust client.
//!
//! This crate is the wire contract and nothing else: it knows no storage and
//! no policy, so every other crate (and every Rust user) can depend on it.

pub mod client;

/// Generated code for the `keygate.v1` protobuf package.
pub mod v1 {
    #![allow(
        missing_docs,
        unreachable_pub,
        clippy::all,
        clippy::doc_lazy_continuation
    )]
    tonic::include_proto!("keygate.v1");
}

/// The encoded `FileDescriptorSet` of every file in `proto/`, for gRPC
/// reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("keygate_descriptor");

pub use client::Client;
