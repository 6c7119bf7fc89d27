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

use std::{net::IpAddr, sync::Arc};

use envoy_types::{
    ext_authz::v3::pb::{
        Address, Authorization, CheckRequest, CheckResponse, DeniedHttpResponse,
        HeaderAppendAction, HeaderValue, HeaderValueOption, HttpResponse, HttpStatus,
        OkHttpResponse,
    },
    pb::google::rpc,
};
use keygate_domain::{environment::Environments, forwarded};
use tonic::{Code, Request, Response, Status};

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
            #[allow(deprecated)] // `append` is deprecated; leaving it unset is the way
            HeaderValueOption {
                header: Some(HeaderValue {
                    key: key.to_owned(),
                    value,
                    raw_value: Vec::new(),
                }),
                append: None,
                append_action: HeaderAppendAction::OverwriteIfExistsOrAdd.into(),
                keep_empty_value: true,
            }
        })
        .collect()
}

fn source_ip(request: &CheckRequest) -> Option<IpAddr> {
    let peer = request.attributes.as_ref()?.source.as_ref()?;
    match peer.address.as_ref()?.address.as_ref()? {
        Address::SocketAddress(socket) => forwarded::parse_entry(&socket.address),
        _ => None,
    }
}

fn rpc_status(code: Code, message: &str) -> rpc::Status {
    rpc::Status {
        code: code as i32,
        message: message.to_owned(),
        details: Vec::new(),
    }
}

#[tonic::async_trait]
impl Authorization for ExtAuthzService {
    async fn check(
        &self,
        request: Request<CheckRequest>,
    ) -> Result<Response<CheckResponse>, Status> {
        let check = request.into_inner();
        let attributes = check.attributes.as_ref();
        let http = attributes
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref());
        // Envoy sends header names in lowercase.
        let header = |name: &str| http.and_then(|h| h.headers.get(name)).map(String::as_str);
        let extension = |name: &str| {
            attributes
                .and_then(|a| a.context_extensions.get(name))
                .map(String::as_str)
        };
        let key = self.settings.find_key(header);
        let client_ip = forwarded::client_address(
            source_ip(&check),
            header("x-forwarded-for"),
            self.settings.trusted_proxy_hops,
        );
        let verdict = proxy::decide(
            Frontend::ExtAuthz,
            &self.authorizer,
            &self.environments,
            &self.settings,
            ProxyRequest {
                key: key.map(|(_, value)| value),
                scopes: extension(SCOPES_EXTENSION).map(|s| (SCOPES_EXTENSION, s)),
                environment: extension(ENVIRONMENT_EXTENSION).map(|e| (ENVIRONMENT_EXTENSION, e)),
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
                    status: Some(rpc_status(Code::Ok, "authorized")),
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
        Ok(Response::new(response))
    }
}
