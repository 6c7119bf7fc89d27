//! The hot path: everything an Authorize call touches, from memory. The
//! [`authorizer`] turns a presented key into a decision through the
//! verified-key [`cache`], each key's [`runtime`] (rate-limit state, unwritten
//! usage, newest version heard of), the [`limiter`] and the [`usage`]
//! recorder and its background flusher; [`dirty`] lists keys with pending
//! work, [`interner`] shares what many snapshots have in common, [`misses`]
//! gathers cache misses to be read together, [`renewal`] queues entries
//! past their lifetime for a batched version check, both taken by the
//! on-demand [`workers`] of one bounded queue.
//!
//! Knows no protobuf: it speaks domain types and `ApiError`, so the gRPC
//! services, the proxy front ends and management authentication all share
//! it. Storage is read only on a cache miss or to renew entries past their
//! lifetime, never written here (the flusher writes usage in the
//! background).

pub mod authorizer;
pub mod cache;
pub(crate) mod dirty;
pub mod interner;
pub mod limiter;
pub mod misses;
pub mod renewal;
pub mod runtime;
pub mod usage;
pub mod workers;
