//! The gRPC services a client or a proxy calls, and the edge where
//! protobuf meets the domain: `keygate.v1.KeyManagementService`
//! ([`management`]), `keygate.v1.AuthorizationService` ([`authorization`]),
//! Envoy's ext_authz ([`ext_authz`]), the decision in HTTP terms shared by
//! ext_authz and forward-auth ([`proxy`]), and [`convert`], the only place
//! proto and domain types meet.
//!
//! May import the hot path, storage and the domain; nothing below imports
//! this room except the HTTP listener (forward-auth, console), which
//! reuses its services.

pub mod authorization;
pub mod convert;
pub mod ext_authz;
pub mod management;
pub mod proxy;
