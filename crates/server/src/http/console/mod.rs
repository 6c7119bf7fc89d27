//! The admin console (`--console`): server-rendered HTML pages under
//! `/console/` on the HTTP listener, for people who manage keys in a
//! browser. A signed-in console acts with exactly the rights of the
//! management key it was signed in with, because every page calls the same
//! [`ManagementService`] methods gRPC clients call ([`calls`]).
//!
//! Security, in one place ([`security_headers`] and [`session`]): the
//! management key stays on the server (the cookie holds a random session id:
//! HttpOnly, SameSite=Strict, Secure when TLS is on), every form carries a
//! CSRF token, pages are `Cache-Control: no-store`, the Content-Security-Policy
//! allows no inline script, framing is denied and no referrer is sent.
//! Sign-in attempts are limited per client address.
//!
//! Rooms: [`session`] (sessions, CSRF tokens, cookies, sign-in limits),
//! [`calls`] (requests to the management API, its errors as page errors),
//! [`forms`] (posted forms), [`views`] (the HTML), [`chart`] (the usage SVG),
//! [`handlers`] (one function per route).

use std::sync::Arc;

use axum::{
    Router,
    http::{HeaderValue, header},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use keygate_domain::environment::Environments;

use crate::{api::management::ManagementService, config::Config, hotpath::authorizer::Authorizer};

pub mod calls;
pub mod chart;
pub mod forms;
pub mod handlers;
pub mod session;
pub mod views;

/// The console's stylesheet, served from `/console/static/console.css`.
const STYLESHEET: &str = include_str!("static/console.css");
/// The console's only script (copy button, confirmations, scope chips), served from
/// `/console/static/console.js`.
const SCRIPT: &str = include_str!("static/console.js");

/// The Content-Security-Policy of every console response: own files only,
/// no inline script, no framing, forms post only to the console.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'none'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// What the console's handlers share.
#[derive(Debug, Clone)]
pub struct ConsoleState {
    pub(crate) management: ManagementService,
    pub(crate) authorizer: Arc<Authorizer>,
    pub(crate) environments: Environments,
    pub(crate) default_rate_limit: u32,
    pub(crate) trusted_proxy_hops: usize,
    pub(crate) sessions: Arc<session::Sessions>,
    pub(crate) secure_cookies: bool,
}

impl ConsoleState {
    /// The console over `management`, authenticating sign-ins through
    /// `authorizer`, as `config` says.
    pub fn new(
        management: ManagementService,
        authorizer: Arc<Authorizer>,
        config: &Config,
    ) -> Self {
        Self {
            management,
            authorizer,
            environments: config.environments.clone(),
            default_rate_limit: config.default_rate_limit_per_hour,
            trusted_proxy_hops: config.trusted_proxy_hops,
            sessions: Arc::new(session::Sessions::new(config.console_session_ttl)),
            secure_cookies: config.tls.is_some(),
        }
    }
}

/// The console's routes, to merge into the HTTP listener's router.
pub fn router(state: ConsoleState) -> Router {
    use handlers as h;
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/") }))
        .route("/console/", get(h::home))
        .route("/console/sign-in", get(h::sign_in_page).post(h::sign_in))
        .route("/console/sign-out", post(h::sign_out))
        .route("/console/keys", get(h::list_keys).post(h::create_key))
        .route("/console/keys/new", get(h::new_key))
        .route("/console/keys/{id}", get(h::key_detail))
        .route(
            "/console/keys/{id}/edit",
            get(h::edit_page).post(h::edit_key),
        )
        .route("/console/keys/{id}/{action}", post(h::key_action))
        .route("/console/audit", get(h::audit_log))
        .route(
            "/console/static/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLESHEET) }),
        )
        .route(
            "/console/static/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .fallback(h::not_found)
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Adds the console's security headers to every response; pages (anything
/// but the static files) are `no-store`.
pub async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        header::CONTENT_SECURITY_POLICY,
        CONTENT_SECURITY_POLICY,
    );
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
    response
}
