//! Keygate's rules, free of I/O: the key format and its checksum, secret
//! hashing, scopes and their grants, IP allowlists, environments, the
//! authorization decision, management rights, input validation and the
//! rate-limit maths.
//!
//! Nothing here knows protobuf, SQL or tokio, so every rule is unit-tested
//! with plain values, and the server and persistence crates only move data
//! in and out.

pub mod allowlist;
pub mod audit;
pub mod environment;
pub mod etag;
pub mod forwarded;
pub mod hashing;
pub mod keyformat;
pub mod model;
pub mod page_token;
pub mod policy;
pub mod ratelimit;
pub mod rights;
pub mod scope;
pub mod snapshot;
pub mod usage;
pub mod validation;

pub use model::{ApiKey, Credential, KeyState, KeyStatus};
