//! The optional HTTP listener (`--http-listen`): forward-auth for HTTP
//! proxies, probes for HTTP-only orchestrators, metrics, and the admin
//! console ([`console`], with `--console`).
//!
//! - `/v1/authorize` (any method): what nginx `auth_request`, Traefik
//!   `ForwardAuth` and Caddy `forward_auth` call. The key comes from the
//!   configured key headers, the required scopes from the `scopes` query
//!   parameter (else the `x-keygate-scopes` header the proxy sets), the
//!   environment from `environment` (else `x-keygate-environment`, else the
//!   default), the client from the peer or `x-forwarded-for` past the
//!   trusted hops. 200 with the `x-keygate-*` identity headers, or 401 / 403
//!   / 429 with a JSON body, as [`crate::api::proxy`] decides; 503 when Keygate
//!   cannot decide, 400 when the proxy's scopes or environment are wrong.
//! - `/healthz`: the process answers. `/readyz`: storage is reachable too.
//! - `/metrics`: Prometheus metrics ([`crate::metrics`]).

pub mod console;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use axum::{
    Router,
    extract::{ConnectInfo, Query, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode},
    response::{IntoResponse, Response},
    routing::{any, get},
};
use keygate_domain::{environment::Environments, forwarded};
use tokio::{net::TcpListener, sync::watch};

use crate::{
    api::proxy::{self, Header, ProxyRequest, ProxySettings, Verdict},
    error::ApiError,
    hotpath::authorizer::Authorizer,
    metrics::{self, Frontend},
};

/// Header a proxy may name the required scopes in (the query wins).
pub const SCOPES_HEADER: &str = "x-keygate-scopes";
/// Header a proxy may name the environment in (the query wins).
pub const ENVIRONMENT_HEADER: &str = "x-keygate-environment";

/// What the HTTP handlers share.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The hot path.
    pub authorizer: Arc<Authorizer>,
    /// Configured environments.
    pub environments: Environments,
    /// How proxied requests are read.
    pub proxy: Arc<ProxySettings>,
    /// Whether storage answered the last probe (kept by the watchdog).
    pub storage_up: Arc<AtomicBool>,
}

/// The listener's routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/v1/authorize", any(forward_auth))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(prometheus))
        .with_state(state)
}

/// Serves `router` on `listener` until `stop` turns true, then lets
/// requests in flight finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> std::io::Result<()> {
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    })
    .await
}

async fn readyz(State(state): State<HttpState>) -> Response {
    if state.storage_up.load(Ordering::Acquire) {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "storage unreachable\n").into_response()
    }
}

async fn prometheus(State(state): State<HttpState>) -> Response {
    let text = state
        .authorizer
        .metrics()
        .render(state.authorizer.cache().len());
    (
        [(axum::http::header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        text,
    )
        .into_response()
}

fn with_headers(mut response: Response, headers: Vec<Header>) -> Response {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response
                .headers_mut()
                .insert(HeaderName::from_static(name), value);
        }
    }
    response
}

fn error_response(error: &ApiError) -> Response {
    let (status, reason) = match error {
        ApiError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid_request"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "authorization_unavailable"),
    };
    let message = match error {
        ApiError::Invalid(invalid) => invalid.to_string(),
        _ => "authorization service unavailable".to_owned(),
    };
    let body = serde_json::json!({ "error": reason, "message": message }).to_string();
    with_headers(
        (status, body).into_response(),
        vec![("content-type", "application/json".to_owned())],
    )
}

async fn forward_auth(
    State(state): State<HttpState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let key = state.proxy.find_key(header);
    let forwarded_for = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    let client_ip = forwarded::client_address(
        Some(peer.ip().to_canonical()),
        forwarded_for,
        state.proxy.trusted_proxy_hops,
    );
    let scopes = query
        .get("scopes")
        .map(|s| ("scopes", s.as_str()))
        .or_else(|| header(SCOPES_HEADER).map(|s| (SCOPES_HEADER, s)));
    let environment = query
        .get("environment")
        .map(|e| ("environment", e.as_str()))
        .or_else(|| header(ENVIRONMENT_HEADER).map(|e| (ENVIRONMENT_HEADER, e)));
    let verdict = proxy::decide(
        Frontend::ForwardAuth,
        &state.authorizer,
        &state.environments,
        &state.proxy,
        ProxyRequest {
            key: key.map(|(_, value)| value),
            scopes,
            environment,
            client_ip,
        },
    )
    .await;
    match verdict {
        Ok(Verdict::Allow { identity, response }) => {
            let mut all = identity;
            all.extend(response);
            with_headers(StatusCode::OK.into_response(), all)
        }
        Ok(Verdict::Deny {
            status,
            headers,
            body,
            ..
        }) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
            with_headers((status, body).into_response(), headers)
        }
        Err(error) => {
            if !matches!(error, ApiError::Invalid(_)) {
                tracing::warn!(error = %error, "forward-auth could not decide");
            }
            error_response(&error)
        }
    }
}
