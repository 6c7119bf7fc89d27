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
//! used, and served by [`server::ExtAuthzServer`]; the answer is
//! envoy-types' `CheckResponse`.

mod request;
mod server;

use std::sync::Arc;

use envoy_types::{
    ext_authz::v3::pb::{
        CheckResponse, DeniedHttpResponse, HeaderAppendAction, HeaderValue, HeaderValueOption,
        HttpResponse, HttpStatus, OkHttpResponse,
    },
    pb::google::rpc,
};
use keygate_domain::{environment::Environments, forwarded};
use tonic::{Code, Status};

pub use request::CheckRequest;
pub use server::ExtAuthzServer;

use crate::{
    api::proxy::{self, Header, ProxyRequest, ProxySettings, Verdict},
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
}

impl ExtAuthzService {
    /// A service deciding through `authorizer`, reading requests as
    /// `settings` says.
    pub fn new(
        authorizer: Arc<Authorizer>,
        environments: Environments,
        settings: Arc<ProxySettings>,
    ) -> Self {
        Self {
            authorizer,
            environments,
            settings,
        }
    }
}

fn header_options(headers: Vec<Header>) -> Vec<HeaderValueOption> {
    headers
        .into_iter()
        .map(|(key, value)| {
            let keep_empty_value = value.is_empty();
            #[allow(deprecated)] // `append` is deprecated; leaving it unset is the way
            HeaderValueOption {
                header: Some(HeaderValue {
                    key: key.to_owned(),
                    value,
                    raw_value: Vec::new(),
                }),
                append: None,
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
                // Envoy drops an empty value unless told to keep it; an
                // empty x-keygate-scopes must still replace a client's copy.
                // (Only there: every other value is non-empty, and the flag
                // costs bytes on every answer.)
                keep_empty_value,
            }
        })
        .collect()
}

fn rpc_status(code: Code, message: &str) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: Vec::new(),
    }
}

impl ExtAuthzService {
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
        let response = match verdict {
            Verdict::Allow { identity, response } => {
                let headers_to_remove = match key {
                    Some((name, _)) if !self.settings.forward_key => vec![name.to_owned()],
                    _ => Vec::new(),
                };
                #[allow(deprecated)] // `dynamic_metadata` inside is deprecated
                let ok = OkHttpResponse {
                    headers: header_options(identity),
                    headers_to_remove,
                    response_headers_to_add: header_options(response),
                    ..Default::default()
                };
                CheckResponse {
                    // Envoy reads only the code of an OK; no message.
                    status: Some(rpc_status(Code::Ok, "")),
                    http_response: Some(HttpResponse::OkResponse(ok)),
                    dynamic_metadata: None,
                }
            }
            Verdict::Deny {
                status,
                reason,
                headers,
                body,
            } => {
                let code = match status {
                    401 => Code::Unauthenticated,
                    429 => Code::ResourceExhausted,
                    _ => Code::PermissionDenied,
                };
                CheckResponse {
                    status: Some(rpc_status(code, reason)),
                    http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
                        status: Some(HttpStatus {
                            code: i32::from(status),
                        }),
                        headers: header_options(headers),
                        body,
                    })),
                    dynamic_metadata: None,
                }
            }
        };
        Ok(response)
    }
}
