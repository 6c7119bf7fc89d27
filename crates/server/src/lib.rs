//! The Keygate server, a room per role:
//!
//! - [`api`]: the gRPC services (management, Authorize, Envoy ext_authz) and
//!   the proto ↔ domain edge ([`api::convert`]);
//! - [`hotpath`]: the decision from memory — cache, per-key runtime, rate
//!   limiter, usage batching;
//! - [`http`]: the optional HTTP listener — forward-auth, probes,
//!   `/metrics`, the admin console;
//! - `tasks`: the background tasks (change listener, heartbeats, storage
//!   watchdog, rate-limit sharing, purge of deleted keys);
//! - [`server`]: assembly, start and graceful stop; [`config`], [`tls`],
//!   [`metrics`] and [`error`] (`ApiError` → `tonic::Status`, in one place)
//!   serve them all.
//!
//! The `keygate` binary (`main.rs`, with the operator commands in `cli/`, a
//! gRPC *client* that does not reach into these rooms) is a thin CLI over
//! [`server::Keygate`]. This crate and the root `keygate` API crate are the
//! only ones that know protobuf.

pub mod api;
mod coalesce;
pub mod config;
pub mod error;
#[cfg(test)]
mod fixtures;
pub mod hotpath;
pub mod http;
pub mod metrics;
pub mod server;
mod tasks;
pub mod tls;

pub use config::Config;
pub use server::{Keygate, ServeError, bootstrap};
