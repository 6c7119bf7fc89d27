//! The Keygate server: the two gRPC services, authentication of management
//! calls, the verified-key cache, rate limiting, usage batching and the
//! background tasks. The `keygate` binary (`main.rs`) is a thin CLI over
//! [`server::Keygate`].
//!
//! This crate and the root `keygate` API crate are the only ones that know
//! protobuf; [`convert`] is where proto and domain types meet.

pub mod authorization;
pub mod authorizer;
pub mod cache;
pub mod config;
pub mod console;
pub mod convert;
mod dirty;
pub mod error;
pub mod ext_authz;
#[cfg(test)]
mod fixtures;
pub mod http;
pub mod interner;
pub mod limiter;
pub mod management;
pub mod metrics;
pub mod proxy;
pub mod runtime;
pub mod server;
pub mod tls;
pub mod usage;

pub use config::Config;
pub use server::{Keygate, ServeError, bootstrap};
