//! `keygate.v1.AuthorizationService`: the per-request question "may this key
//! do this?". A deny is an answer (status OK); only a malformed request or a
//! failure to decide is an RPC error.

use std::{sync::Arc, time::Instant};

use chrono::Utc;
use keygate::v1::{self as pb, authorization_service_server::AuthorizationService};
use keygate_domain::{
    allowlist, environment::Environments, policy::AccessRequest, scope::Scope, validation,
};
use tonic::{Request, Response, Status};

use crate::{
    api::convert,
    error::ApiError,
    hotpath::authorizer::{Authorizer, Outcome},
    metrics::{Decided, Frontend},
};

/// The AuthorizationService implementation.
#[derive(Debug, Clone)]
pub struct AuthorizeService {
    authorizer: Arc<Authorizer>,
    environments: Environments,
}

impl AuthorizeService {
    /// A service deciding through `authorizer`.
    pub fn new(authorizer: Arc<Authorizer>, environments: Environments) -> Self {
        Self {
            authorizer,
            environments,
        }
    }

    async fn decide(
        &self,
        req: pb::AuthorizeRequest,
    ) -> Result<(pb::AuthorizeResponse, Decided), ApiError> {
        if req.environment.is_empty() {
            return Err(ApiError::invalid(
                "environment",
                "must name the environment the calling service runs in",
            ));
        }
        if !self.environments.contains(&req.environment) {
            return Err(ApiError::invalid(
                "environment",
                format!(
                    "unknown environment {}; configured: {}",
                    validation::quote(&req.environment),
                    self.environments.names().join(", ")
                ),
            ));
        }
        let required = validation::validate_scopes("required_scopes", &req.required_scopes)?;
        let client_ip = allowlist::parse_client_ip(&req.client_ip);
        let now = Utc::now();
        let access = AccessRequest {
            environment: &req.environment,
            required_scopes: &required,
            client_ip,
        };
        let outcome = self.authorizer.authorize(&req.key, &access, now).await?;
        let decided = Decided::of(&outcome);
        let response = match outcome {
            Outcome::Allow { key, rate } => pb::AuthorizeResponse {
                decision: pb::Decision::Allow.into(),
                reason: pb::DenyReason::Unspecified.into(),
                message: "Authorized".to_owned(),
                key_id: key.snapshot.id.to_string(),
                owner_id: key.snapshot.owner_id.to_string(),
                environment: key.snapshot.environment.to_string(),
                scopes: scope_names(&key.snapshot.scopes),
                missing_scopes: Vec::new(),
                rate_limit: Some(convert::rate_limit(&rate, now)),
                metadata: key
                    .snapshot
                    .metadata
                    .iter()
                    .flat_map(|entries| entries.iter())
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            },
            Outcome::Deny {
                reason,
                key,
                missing_scopes,
                rate,
            } => {
                let mut response = pb::AuthorizeResponse {
                    decision: pb::Decision::Deny.into(),
                    reason: convert::deny_reason(reason).into(),
                    message: reason.message().to_owned(),
                    missing_scopes: missing_scopes
                        .iter()
                        .map(|s| s.as_str().to_owned())
                        .collect(),
                    rate_limit: rate.map(|r| convert::rate_limit(&r, now)),
                    ..Default::default()
                };
                if let Some(key) = key {
                    response.key_id = key.snapshot.id.to_string();
                    response.owner_id = key.snapshot.owner_id.to_string();
                    response.environment = key.snapshot.environment.to_string();
                    response.scopes = scope_names(&key.snapshot.scopes);
                }
                response
            }
        };
        Ok((response, decided))
    }
}

fn scope_names(scopes: &[Scope]) -> Vec<String> {
    scopes.iter().map(|s| s.as_str().to_owned()).collect()
}

#[tonic::async_trait]
impl AuthorizationService for AuthorizeService {
    async fn authorize(
        &self,
        request: Request<pb::AuthorizeRequest>,
    ) -> Result<Response<pb::AuthorizeResponse>, Status> {
        let started = Instant::now();
        let result = self.decide(request.into_inner()).await;
        let decided = match &result {
            Ok((_, decided)) => *decided,
            Err(error) => Decided::failed(error),
        };
        self.authorizer
            .metrics()
            .decided(Frontend::Authorize, decided, started.elapsed());
        Ok(Response::new(result?.0))
    }
}
