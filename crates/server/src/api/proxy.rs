//! What a proxy in front of a service is told: the decision shared by
//! Envoy's ext_authz (`ext_authz.rs`) and HTTP forward-auth (`http.rs`, for nginx
//! `auth_request`, Traefik `ForwardAuth`, Caddy `forward_auth`).
//!
//! Both read the key from a request header, the required scopes and the
//! environment from the proxy's configuration, and the client from the
//! connection or `X-Forwarded-For` ([`keygate_domain::forwarded`]); both
//! answer in HTTP terms: identity headers for the upstream on allow, or
//! 401 / 403 / 429 with a JSON body `{"error", "message"}`, and rate-limit
//! headers either way. Keygate unable to decide is an error, never a deny, so
//! the proxy's own failure policy (`failure_mode_allow`) applies.

use std::{net::IpAddr, sync::Arc, time::Instant};

use chrono::Utc;
use keygate_domain::{
    environment::Environments,
    policy::{AccessRequest, DenyReason},
    ratelimit::RateDecision,
    scope::Scope,
    validation,
};

use crate::{
    error::ApiError,
    hotpath::authorizer::{Authorizer, Outcome},
    metrics::{Decided, Frontend},
};

/// Headers sent upstream on allow: the key's id, owner and scopes. Any copy
/// a client sent is replaced, never passed on.
pub const IDENTITY_HEADERS: [&str; 3] =
    ["x-keygate-key-id", "x-keygate-owner-id", "x-keygate-scopes"];

/// How Keygate reads requests that reach it through a proxy.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Request headers that may carry the key, tried in order (lowercase).
    /// `authorization` may use the `Bearer` scheme.
    pub key_headers: Vec<String>,
    /// Environment of requests whose proxy names none.
    pub default_environment: String,
    /// Proxies in front whose `X-Forwarded-For` entries are trusted; 0: the
    /// connection's peer is the client.
    pub trusted_proxy_hops: usize,
    /// Whether the key header is passed upstream (by default it is removed).
    pub forward_key: bool,
}

impl ProxySettings {
    /// The first configured key header present (name and value).
    pub fn find_key<V>(&self, header: impl Fn(&str) -> Option<V>) -> Option<(&str, V)> {
        self.key_headers
            .iter()
            .find_map(|name| header(name).map(|value| (name.as_str(), value)))
    }
}

/// One request as a proxy presents it.
#[derive(Clone, Copy, Debug)]
pub struct ProxyRequest<'a> {
    /// The key header's value, if any.
    pub key: Option<&'a str>,
    /// Required scopes, comma-separated, and the name of where they came
    /// from (for errors).
    pub scopes: Option<(&'a str, &'a str)>,
    /// The environment, and where it came from; `None`: the default.
    pub environment: Option<(&'a str, &'a str)>,
    /// The client's address.
    pub client_ip: Option<IpAddr>,
}

/// A header name and value.
pub type Header = (&'static str, String);

/// What the proxy does with the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Pass it upstream with `identity` headers; add `response` headers to
    /// the answer the client gets.
    Allow {
        /// The key's identity, for the upstream.
        identity: Vec<Header>,
        /// Rate-limit figures, for the client.
        response: Vec<Header>,
    },
    /// Answer the client directly.
    Deny {
        /// 401, 403 or 429.
        status: u16,
        /// The reason, lowercase (`key_revoked`), as the SDKs name it.
        reason: &'static str,
        /// Rate-limit figures, `retry-after`, `content-type`.
        headers: Vec<Header>,
        /// `{"error": reason, "message": …}`.
        body: String,
    },
}

/// The HTTP status a deny becomes: 401 when the key is no good here, 403
/// when it is but may not do this, 429 when it is over its limit.
pub fn http_status(reason: DenyReason) -> u16 {
    match reason {
        DenyReason::KeyInvalid
        | DenyReason::KeyExpired
        | DenyReason::KeyRevoked
        | DenyReason::KeyDisabled
        | DenyReason::EnvironmentMismatch => 401,
        DenyReason::IpNotAllowed | DenyReason::ScopeMissing => 403,
        DenyReason::RateLimited => 429,
    }
}

fn rate_headers(rate: &RateDecision, now_unix: i64) -> Vec<Header> {
    let reset_secs = rate.reset_after_nanos.div_ceil(1_000_000_000);
    let reset_at = now_unix.saturating_add(i64::try_from(reset_secs).unwrap_or(i64::MAX));
    vec![
        ("x-ratelimit-limit", rate.limit.to_string()),
        ("x-ratelimit-remaining", rate.remaining.to_string()),
        ("x-ratelimit-reset", reset_at.to_string()),
    ]
}

/// Decides on a request a proxy forwarded. Errors are requests Keygate
/// cannot judge (misconfigured scopes or environment: INVALID_ARGUMENT) or
/// could not decide (storage down: UNAVAILABLE).
pub async fn decide(
    frontend: Frontend,
    authorizer: &Arc<Authorizer>,
    environments: &Environments,
    settings: &ProxySettings,
    request: ProxyRequest<'_>,
) -> Result<Verdict, ApiError> {
    let started = Instant::now();
    let result = decide_counted(authorizer, environments, settings, request).await;
    let decided = match &result {
        Ok((_, decided)) => *decided,
        Err(error) => Decided::failed(error),
    };
    authorizer
        .metrics()
        .decided(frontend, decided, started.elapsed());
    result.map(|(verdict, _)| verdict)
}

async fn decide_counted(
    authorizer: &Arc<Authorizer>,
    environments: &Environments,
    settings: &ProxySettings,
    request: ProxyRequest<'_>,
) -> Result<(Verdict, Decided), ApiError> {
    let environment = match request.environment {
        Some((field, name)) if !environments.contains(name) => {
            return Err(ApiError::invalid(
                field,
                format!(
                    "unknown environment {}; configured: {}",
                    validation::quote(name),
                    environments.names().join(", ")
                ),
            ));
        }
        Some((_, name)) => name,
        None => settings.default_environment.as_str(),
    };
    let required: Vec<Scope> = match request.scopes {
        Some((field, list)) => {
            let names: Vec<String> = list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect();
            validation::validate_scopes(field, &names)?
        }
        None => Vec::new(),
    };
    let now = Utc::now();
    let access = AccessRequest {
        environment,
        required_scopes: &required,
        client_ip: request.client_ip,
    };
    let outcome = authorizer
        .authorize(request.key.unwrap_or_default(), &access, now)
        .await?;
    let decided = Decided::of(&outcome);
    let verdict = match outcome {
        Outcome::Allow { key, rate } => {
            let scopes: Vec<&str> = key.snapshot.scopes.iter().map(Scope::as_str).collect();
            Verdict::Allow {
                identity: vec![
                    (IDENTITY_HEADERS[0], key.snapshot.id.to_string()),
                    (IDENTITY_HEADERS[1], key.snapshot.owner_id.to_string()),
                    (IDENTITY_HEADERS[2], scopes.join(",")),
                ],
                response: rate_headers(&rate, now.timestamp()),
            }
        }
        Outcome::Deny {
            reason,
            missing_scopes,
            rate,
            ..
        } => {
            let mut headers = vec![("content-type", "application/json".to_owned())];
            if let Some(rate) = rate {
                headers.extend(rate_headers(&rate, now.timestamp()));
                if reason == DenyReason::RateLimited {
                    let secs = rate.retry_after_nanos.div_ceil(1_000_000_000).max(1);
                    headers.push(("retry-after", secs.to_string()));
                }
            }
            let status = http_status(reason);
            if status == 401 {
                headers.push(("www-authenticate", "Bearer".to_owned()));
            }
            let mut body = serde_json::json!({
                "error": reason.name(),
                "message": reason.message(),
            });
            if !missing_scopes.is_empty() {
                body["missing_scopes"] = missing_scopes.iter().map(Scope::as_str).collect();
            }
            Verdict::Deny {
                status,
                reason: reason.name(),
                headers,
                body: body.to_string(),
            }
        }
    };
    Ok((verdict, decided))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_deny_has_its_status_and_name() {
        let statuses: Vec<u16> = DenyReason::ALL.iter().map(|r| http_status(*r)).collect();
        assert_eq!(statuses, [401, 401, 401, 401, 401, 403, 403, 429]);
    }

    #[test]
    fn the_first_configured_key_header_wins() {
        let settings = ProxySettings {
            key_headers: vec!["authorization".into(), "x-api-key".into()],
            default_environment: "live".into(),
            trusted_proxy_hops: 0,
            forward_key: false,
        };
        let both = |name: &str| match name {
            "authorization" => Some("Bearer a"),
            "x-api-key" => Some("b"),
            _ => None,
        };
        assert_eq!(settings.find_key(both), Some(("authorization", "Bearer a")));
        let api_key_only = |name: &str| (name == "x-api-key").then_some("b");
        assert_eq!(settings.find_key(api_key_only), Some(("x-api-key", "b")));
        assert_eq!(settings.find_key(|_| None::<&str>), None);
    }

    #[test]
    fn rate_headers_count_whole_seconds_up() {
        let rate = RateDecision {
            allowed: true,
            limit: 10,
            remaining: 9,
            reset_after_nanos: 1_500_000_000,
            retry_after_nanos: 0,
        };
        assert_eq!(
            rate_headers(&rate, 1_000),
            [
                ("x-ratelimit-limit", "10".to_owned()),
                ("x-ratelimit-remaining", "9".to_owned()),
                ("x-ratelimit-reset", "1002".to_owned()),
            ]
        );
    }
}
