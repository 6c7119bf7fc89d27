//! `envoy.service.auth.v3.Authorization/Check`: Envoy's (and Istio's)
//! external authorization, served on the gRPC port beside Keygate's own
//! services, so a mesh can put Keygate in front of services that never call
//! it themselves.
//!
//! A `CheckRequest` becomes a [`ProxyRequest`]: the key from the first
//! configured key header, the required scopes from the route's
//! `context_extensions["keygate_scopes"]` (comma-separated), the environment
//! from `context_extensions["keygate_environment"]` or the configured
//! default, the client from `attributes.source.address` or, with trusted
//! proxy hops, from `x-forwarded-for`. The [`Verdict`] becomes an
//! `ok_response` (identity headers overwrite whatever the client sent, the
//! key header is removed upstream unless configured otherwise, rate-limit
//! headers go back to the client) or a `denied_response` (401/403/429 with a
//! JSON body). When Keygate cannot decide, Check fails with an error status,
//! so Envoy's `failure_mode_allow` decides.
//!
//! The request is read through [`request::CheckRequest`], the few fields
//! used, the answer written as [`response::CheckResponse`], the few fields
//! set, and both served by [`server::ExtAuthzServer`].

mod request;
mod response;
mod server;

use std::sync::Arc;

use keygate_domain::{environment::Environments, forwarded};
use prost::bytes::Bytes;
use tonic::Status;

pub use request::CheckRequest;
pub use response::CheckResponse;
pub use server::ExtAuthzServer;

use crate::{
    api::proxy::{self, ProxyRequest, ProxySettings},
    hotpath::authorizer::Authorizer,
    metrics::Frontend,
};

/// Context extension naming the route's required scopes.
pub const SCOPES_EXTENSION: &str = "keygate_scopes";
/// Context extension naming the route's environment.
pub const ENVIRONMENT_EXTENSION: &str = "keygate_environment";

/// The ext_authz v3 Authorization service.
#[derive(Debug, Clone)]
pub struct ExtAuthzService {
    authorizer: Arc<Authorizer>,
    environments: Environments,
    settings: Arc<ProxySettings>,
    /// `settings.key_headers` as the bytes `headers_to_remove` sends.
    key_header_names: Vec<Bytes>,
}

impl ExtAuthzService {
    /// A service deciding through `authorizer`, reading requests as
    /// `settings` says.
    pub fn new(
        authorizer: Arc<Authorizer>,
        environments: Environments,
        settings: Arc<ProxySettings>,
    ) -> Self {
        let key_header_names = settings
            .key_headers
            .iter()
            .map(|name| Bytes::from(name.clone()))
            .collect();
        Self {
            authorizer,
            environments,
            settings,
            key_header_names,
        }
    }

    /// Answers one Check.
    pub async fn check(&self, check: &CheckRequest) -> Result<CheckResponse, Status> {
        let key = self.settings.find_key(|name| check.header(name));
        let client_ip = forwarded::client_address(
            check.source_address().and_then(forwarded::parse_entry),
            check.header("x-forwarded-for").as_deref(),
            self.settings.trusted_proxy_hops,
        );
        let verdict = proxy::decide(
            Frontend::ExtAuthz,
            &self.authorizer,
            &self.environments,
            &self.settings,
            ProxyRequest {
                key: key.as_ref().map(|(_, value)| value.as_ref()),
                scopes: check
                    .extension(SCOPES_EXTENSION)
                    .map(|s| (SCOPES_EXTENSION, s)),
                environment: check
                    .extension(ENVIRONMENT_EXTENSION)
                    .map(|e| (ENVIRONMENT_EXTENSION, e)),
                client_ip,
            },
        )
        .await?;
        let remove = match key {
            Some((name, _)) if !self.settings.forward_key => self
                .key_header_names
                .iter()
                .find(|n| n.as_ref() == name.as_bytes())
                .cloned(),
            _ => None,
        };
        Ok(CheckResponse::of(verdict, remove))
    }
}
