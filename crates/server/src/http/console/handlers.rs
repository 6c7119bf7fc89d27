//! One function per console route. Each signed-in request first
//! re-authenticates the session's management key through the same path
//! management calls use ([`Authorizer::authenticate`](crate::hotpath::authorizer::Authorizer::authenticate)),
//! so a revoked, disabled or expired key ends its sessions at once; each
//! POST checks the session's CSRF token before anything else.

use std::{net::SocketAddr, time::Duration};

use axum::{
    Form,
    extract::{ConnectInfo, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
};
use chrono::Utc;
use keygate::v1::{self as pb, key_management_service_server::KeyManagementService};
use keygate_domain::{
    forwarded,
    rights::{Access, Principal},
};
use maud::Markup;
use serde::Deserialize;

use super::{
    ConsoleState,
    calls::{PageError, request},
    chart::{Bar, usage_chart},
    forms::{self, ActionForm, Expiry, KeyForm},
    session::{self, SESSION_COOKIE, SIGN_IN_COOKIE, Session},
    views::{self, AuditFilters, Detail, KeyFormView, ListFilters, Nav},
};
use crate::error::ApiError;

/// Keys per list page.
const PAGE_SIZE: usize = 50;
/// Audit events per page (and on a key's page).
const EVENTS_PAGE_SIZE: i32 = 50;

/// A signed-in request.
#[derive(Debug)]
pub struct Ctx {
    id: String,
    session: Session,
    principal: Principal,
    peer: SocketAddr,
    nav: Nav,
}

impl Ctx {
    fn request<T>(&self, message: T) -> Result<tonic::Request<T>, PageError> {
        request(&self.session.key, self.peer, message)
    }

    /// The refusal to send when `given` is not this session's CSRF token.
    fn csrf_refused(&self, given: &str) -> Option<Response> {
        if session::tokens_match(&self.session.csrf, given) {
            None
        } else {
            let error = PageError::new(
                StatusCode::FORBIDDEN,
                "the form's CSRF token is missing or wrong, so nothing was done: reload the page and try again",
            );
            Some(html(
                error.status,
                views::error_page(Some(&self.nav), &error),
            ))
        }
    }
}

fn html(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

fn with_cookie(mut response: Response, cookie: &str) -> Response {
    if let Ok(value) = HeaderValue::from_str(cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

fn client(state: &ConsoleState, peer: SocketAddr, headers: &HeaderMap) -> std::net::IpAddr {
    let forwarded_for = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok());
    forwarded::client_address(
        Some(peer.ip().to_canonical()),
        forwarded_for,
        state.trusted_proxy_hops,
    )
    .unwrap_or_else(|| peer.ip().to_canonical())
}

/// The session of this request, its key re-authenticated; otherwise the
/// response to send (back to sign-in, or unavailable).
async fn signed_in(
    state: &ConsoleState,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<Ctx, Response> {
    let to_sign_in = |notice: &str| {
        with_cookie(
            see_other(&format!("/console/sign-in?notice={notice}")),
            &session::set_cookie(SESSION_COOKIE, "", None, state.secure_cookies),
        )
    };
    let Some(id) = session::cookie(headers, SESSION_COOKIE) else {
        return Err(see_other("/console/sign-in"));
    };
    let Some(session) = state.sessions.get(id) else {
        return Err(to_sign_in("expired"));
    };
    let client = client(state, peer, headers);
    let bearer = format!("Bearer {}", session.key);
    // Checked, not counted: the page's own management call counts the use.
    let principal = match state
        .authorizer
        .verify_management_key(Some(&bearer), Some(client), Utc::now())
        .await
    {
        Ok(principal) => principal,
        Err(ApiError::Unauthenticated { .. }) => {
            state.sessions.end_all_with_key(&session.key);
            return Err(to_sign_in("key"));
        }
        Err(error) => {
            let error = PageError::from(tonic::Status::from(error));
            return Err(html(error.status, views::error_page(None, &error)));
        }
    };
    let nav = Nav {
        key_id: principal.key_id.clone(),
        owner_id: principal.owner_id.clone(),
        rights: if principal.is_admin() {
            "admin"
        } else if principal.require(Access::Write).is_ok() {
            "write"
        } else if principal.require(Access::Read).is_ok() {
            "read"
        } else {
            "no management rights"
        },
        csrf: session.csrf.clone(),
        can_write: principal.require(Access::Write).is_ok(),
        is_admin: principal.is_admin(),
    };
    Ok(Ctx {
        id: id.to_owned(),
        session,
        principal,
        peer: SocketAddr::new(client, peer.port()),
        nav,
    })
}

/// A failed call as a response: back to sign-in when the key stopped
/// authenticating, else the error page.
/// The create or edit form, with `error` (and its status) when a submit
/// was refused.
fn key_form_page(
    state: &ConsoleState,
    ctx: &Ctx,
    view: &KeyFormView,
    error: Option<&PageError>,
) -> Response {
    html(
        error.map_or(StatusCode::OK, |e| e.status),
        views::key_form(
            &ctx.nav,
            state.environments.names(),
            view,
            state.default_rate_limit,
            error,
        ),
    )
}

fn failed(state: &ConsoleState, ctx: &Ctx, error: &PageError) -> Response {
    if error.signed_out {
        state.sessions.end_all_with_key(&ctx.session.key);
        return see_other("/console/sign-in?notice=key");
    }
    html(error.status, views::error_page(Some(&ctx.nav), error))
}

macro_rules! signed_in {
    ($state:expr, $headers:expr, $peer:expr) => {
        match signed_in(&$state, &$headers, $peer).await {
            Ok(ctx) => ctx,
            Err(response) => return response,
        }
    };
}

/// `GET /console/`: the keys when signed in, else the sign-in page.
pub async fn home(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match session::cookie(&headers, SESSION_COOKIE).and_then(|id| state.sessions.get(id)) {
        Some(_) => see_other("/console/keys"),
        None => sign_in_form(&state, None, None, StatusCode::OK, &headers, peer),
    }
}

/// What `?notice=` on the sign-in page may say.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SignInQuery {
    notice: String,
}

/// `GET /console/sign-in`.
pub async fn sign_in_page(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(query): Query<SignInQuery>,
    headers: HeaderMap,
) -> Response {
    let notice = match query.notice.as_str() {
        "expired" => Some("Your session ended. Sign in again."),
        "key" => Some(
            "Your session ended: its management key no longer authenticates (revoked, disabled, expired or deleted).",
        ),
        "out" => Some("You are signed out."),
        _ => None,
    };
    sign_in_form(&state, notice, None, StatusCode::OK, &headers, peer)
}

fn sign_in_form(
    state: &ConsoleState,
    notice: Option<&str>,
    error: Option<&str>,
    status: StatusCode,
    _headers: &HeaderMap,
    _peer: SocketAddr,
) -> Response {
    let token = session::random_token();
    with_cookie(
        html(status, views::sign_in(&token, notice, error)),
        &session::set_cookie(
            SIGN_IN_COOKIE,
            &token,
            Some(Duration::from_secs(3600)),
            state.secure_cookies,
        ),
    )
}

/// The sign-in form as posted.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct SignInForm {
    csrf: String,
    key: String,
}

/// `POST /console/sign-in`: checks the form's token, the attempt limit and
/// the key, then starts a session.
pub async fn sign_in(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<SignInForm>,
) -> Response {
    let client = client(&state, peer, &headers);
    if !state.sessions.allow_sign_in(client) {
        tracing::warn!(client = %client, "console sign-in attempts over the limit");
        return sign_in_form(
            &state,
            None,
            Some("Too many sign-in attempts from your address. Wait a few minutes and try again."),
            StatusCode::TOO_MANY_REQUESTS,
            &headers,
            peer,
        );
    }
    let expected = session::cookie(&headers, SIGN_IN_COOKIE).unwrap_or_default();
    if !session::tokens_match(expected, &form.csrf) {
        return sign_in_form(
            &state,
            None,
            Some("The sign-in form expired or was not sent by this console. Try again."),
            StatusCode::FORBIDDEN,
            &headers,
            peer,
        );
    }
    let key = form.key.trim().to_owned();
    let bearer = format!("Bearer {key}");
    let result = state
        .authorizer
        .authenticate(Some(&bearer), Some(client), Utc::now())
        .await;
    match result {
        Ok(principal) if principal.require(Access::Read).is_ok() => {
            tracing::info!(actor = %principal.key_id, client = %client, "console sign-in");
            let id = state.sessions.start(key);
            let response = with_cookie(
                see_other("/console/keys"),
                &session::set_cookie(
                    SESSION_COOKIE,
                    &id,
                    Some(state.sessions.ttl()),
                    state.secure_cookies,
                ),
            );
            with_cookie(
                response,
                &session::set_cookie(SIGN_IN_COOKIE, "", None, state.secure_cookies),
            )
        }
        Ok(_) => sign_in_form(
            &state,
            None,
            Some("That key has no management rights (keys:read, keys:write or keys:admin)."),
            StatusCode::FORBIDDEN,
            &headers,
            peer,
        ),
        Err(ApiError::Unauthenticated { .. }) => sign_in_form(
            &state,
            None,
            Some(
                "That key was not accepted: it is unknown, revoked, disabled, expired or not allowed from your address.",
            ),
            StatusCode::UNAUTHORIZED,
            &headers,
            peer,
        ),
        Err(error) => {
            let error = PageError::from(tonic::Status::from(error));
            sign_in_form(
                &state,
                None,
                Some(&error.message),
                error.status,
                &headers,
                peer,
            )
        }
    }
}

/// A form with only the CSRF token.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct CsrfForm {
    csrf: String,
}

/// `POST /console/sign-out`.
pub async fn sign_out(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<CsrfForm>,
) -> Response {
    let ctx = signed_in!(state, headers, peer);
    if let Some(response) = ctx.csrf_refused(&form.csrf) {
        return response;
    }
    state.sessions.end(&ctx.id);
    with_cookie(
        see_other("/console/sign-in?notice=out"),
        &session::set_cookie(SESSION_COOKIE, "", None, state.secure_cookies),
    )
}

/// Any other console path.
pub async fn not_found() -> Response {
    let error = PageError::new(StatusCode::NOT_FOUND, "there is no such console page");
    html(error.status, views::error_page(None, &error))
}

fn status_filter(status: &str) -> Result<pb::KeyStatus, PageError> {
    Ok(match status {
        "" => pb::KeyStatus::Unspecified,
        "active" => pb::KeyStatus::Active,
        "disabled" => pb::KeyStatus::Disabled,
        "expired" => pb::KeyStatus::Expired,
        "revoked" => pb::KeyStatus::Revoked,
        "deleted" => pb::KeyStatus::Deleted,
        _ => return Err(PageError::field("status", "choose one of the statuses")),
    })
}

fn days_filter(field: &str, value: &str, allowed: &[&str]) -> Result<Option<i64>, PageError> {
    match value {
        "" => Ok(None),
        v if allowed.contains(&v) => Ok(v.parse().ok()),
        _ => Err(PageError::field(field, "choose one of the options")),
    }
}

fn timestamp(t: chrono::DateTime<Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: 0,
    }
}

/// `GET /console/keys`: the keys the session may see, filtered, a page at
/// a time. The name filter is applied to ListKeys pages as they come, so a
/// page holds up to [`PAGE_SIZE`] matching keys and the next-page link
/// continues where the API stopped.
pub async fn list_keys(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(filters): Query<ListFilters>,
) -> Response {
    let ctx = signed_in!(state, headers, peer);
    let now = Utc::now();
    let page = async {
        let status = status_filter(&filters.status)?;
        let expiring = days_filter("expiring", &filters.expiring, &["7", "30"])?;
        let unused = days_filter("unused", &filters.unused, &["30", "90"])?;
        let name = filters.name.trim().to_lowercase();
        let base = pb::ListKeysRequest {
            owner_id: if ctx.nav.is_admin {
                filters.owner.trim().to_owned()
            } else {
                String::new()
            },
            environment: filters.environment.clone(),
            status: status as i32,
            page_size: 0,
            page_token: String::new(),
            last_used_before: unused.map(|d| timestamp(now - chrono::Duration::days(d))),
            expires_before: expiring.map(|d| timestamp(now + chrono::Duration::days(d))),
            show_deleted: status == pb::KeyStatus::Deleted,
        };
        let mut keys = Vec::new();
        let mut token = filters.page.clone();
        // Bounded: a rare name over many pages shows a short page and a link.
        for _ in 0..20 {
            let want = PAGE_SIZE - keys.len();
            let request = ctx.request(pb::ListKeysRequest {
                page_size: i32::try_from(want).unwrap_or(50),
                page_token: token.clone(),
                ..base.clone()
            })?;
            let response = state.management.list_keys(request).await?.into_inner();
            keys.extend(
                response
                    .keys
                    .into_iter()
                    .filter(|k| name.is_empty() || k.name.to_lowercase().contains(&name)),
            );
            token = response.next_page_token;
            if token.is_empty() || keys.len() >= PAGE_SIZE {
                break;
            }
        }
        Ok::<_, PageError>((keys, token))
    };
    let (keys, next, error) = match page.await {
        Ok((keys, next)) => (keys, next, None),
        Err(error) if error.signed_out => return failed(&state, &ctx, &error),
        Err(error) => (Vec::new(), String::new(), Some(error)),
    };
    let status = error.as_ref().map_or(StatusCode::OK, |e| e.status);
    html(
        status,
        views::key_list(
            &ctx.nav,
            state.environments.names(),
            &filters,
            &keys,
            &next,
            state.default_rate_limit,
            now,
            error.as_ref(),
        ),
    )
}

/// `GET /console/keys/new`.
pub async fn new_key(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let ctx = signed_in!(state, headers, peer);
    if !ctx.nav.can_write {
        let error = PageError::new(
            StatusCode::FORBIDDEN,
            "this session's key may only read keys (it lacks keys:write)",
        );
        return failed(&state, &ctx, &error);
    }
    let view = KeyFormView {
        form: KeyForm {
            csrf: ctx.session.csrf.clone(),
            owner_id: ctx.principal.owner_id.clone(),
            environment: ctx.principal.environment.clone(),
            ..KeyForm::default()
        },
        key_id: None,
    };
    key_form_page(&state, &ctx, &view, None)
}

/// `POST /console/keys`: CreateKey; the secret page on success (shown once,
/// `no-store`, never redirected to), the form with its errors otherwise.
pub async fn create_key(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Form(form): Form<KeyForm>,
) -> Response {
    let ctx = signed_in!(state, headers, peer);
    if let Some(response) = ctx.csrf_refused(&form.csrf) {
        return response;
    }
    let created = async {
        let fields = form.fields()?;
        let owner_id = if ctx.nav.is_admin && !form.owner_id.trim().is_empty() {
            form.owner_id.trim().to_owned()
        } else {
            ctx.principal.owner_id.clone()
        };
        let expiry = match fields.expiry {
            Expiry::Keep | Expiry::Never => None,
            Expiry::Days(days) => {
                Some(pb::create_key_request::Expiry::Ttl(prost_types::Duration {
                    seconds: i64::from(days) * 86_400,
                    nanos: 0,
                }))
            }
            Expiry::At(at) => Some(pb::create_key_request::Expiry::ExpiresAt(timestamp(at))),
        };
        let request = ctx.request(pb::CreateKeyRequest {
            owner_id,
            name: form.name.clone(),
            environment: form.environment.clone(),
            scopes: fields.scopes,
            ip_allowlist: fields.ip_allowlist,
            rate_limit_per_hour: fields.rate_limit_per_hour,
            metadata: fields.metadata,
            expiry,
        })?;
        Ok::<_, PageError>(state.management.create_key(request).await?.into_inner())
    };
    match created.await {
        Ok(pb::CreateKeyResponse {
            key: Some(key),
            secret,
        }) => html(StatusCode::OK, views::secret(&ctx.nav, &key, &secret, None)),
        Ok(_) => failed(
            &state,
            &ctx,
            &PageError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the key was created without its metadata",
            ),
        ),
        Err(error)
            if error.signed_out
                || error.status == StatusCode::FORBIDDEN && error.fields.is_empty() =>
        {
            failed(&state, &ctx, &error)
        }
        Err(error) => {
            let view = KeyFormView {
                form: KeyForm {
                    csrf: ctx.session.csrf.clone(),
                    ..form
                },
                key_id: None,
            };
            key_form_page(&state, &ctx, &view, Some(&error))
        }
    }
}

/// What `?done=` on a key's page may say.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct DetailQuery {
    done: String,
}

/// `GET /console/keys/{id}`.
pub async fn key_detail(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<DetailQuery>,
) -> Response {
    let ctx = signed_in!(state, headers, peer);
    let notice = match query.done.as_str() {
        "revoke" => Some("The key is revoked."),
        "disable" => Some("The key is disabled."),
        "enable" => Some("The key is enabled."),
        "delete" => Some("The key is deleted; it can be undeleted until it is purged."),
        "undelete" => Some("The key is restored."),
        "edit" => Some("Your changes are saved."),
        _ => None,
    };
    detail_page(&state, &ctx, &id, notice, None).await
}

async fn usage(
    state: &ConsoleState,
    ctx: &Ctx,
    id: &str,
    hours: i64,
) -> Result<Vec<Bar>, PageError> {
    let now = Utc::now();
    let request = ctx.request(pb::GetKeyUsageRequest {
        key_id: id.to_owned(),
        start_time: Some(timestamp(now - chrono::Duration::hours(hours))),
        end_time: Some(timestamp(now)),
    })?;
    let response = state.management.get_key_usage(request).await?.into_inner();
    Ok(response
        .buckets
        .into_iter()
        .map(|b| Bar {
            hour: b.start_time.map_or(0, |t| t.seconds),
            allowed: b.allowed,
            denied: b.denied_rate_limited.saturating_add(b.denied_other),
        })
        .collect())
}

/// The key's page, with `error` from an action shown on it (and as its
/// status).
async fn detail_page(
    state: &ConsoleState,
    ctx: &Ctx,
    id: &str,
    notice: Option<&str>,
    error: Option<PageError>,
) -> Response {
    let loaded = async {
        let key = state
            .management
            .get_key(ctx.request(pb::GetKeyRequest {
                key_id: id.to_owned(),
            })?)
            .await?
            .into_inner()
            .key
            .unwrap_or_default();
        let day = usage(state, ctx, id, 24).await?;
        let week = usage(state, ctx, id, 24 * 7).await?;
        let events = state
            .management
            .list_audit_events(ctx.request(pb::ListAuditEventsRequest {
                key_id: id.to_owned(),
                page_size: EVENTS_PAGE_SIZE,
                ..Default::default()
            })?)
            .await?
            .into_inner()
            .events;
        Ok::<_, PageError>((key, day, week, events))
    };
    match loaded.await {
        Ok((key, day, week, events)) => {
            let detail = Detail {
                key: &key,
                usage: (
                    usage_chart("Last 24 hours, hourly", &day),
                    usage_chart("Last 7 days, hourly", &week),
                ),
                events: &events,
                default_rate: state.default_rate_limit,
                notice,
                error: error.as_ref(),
            };
            let status = error.as_ref().map_or(StatusCode::OK, |e| e.status);
            html(status, views::key_detail(&ctx.nav, &detail, Utc::now()))
        }
        Err(load_error) => failed(state, ctx, &load_error),
    }
}

/// `GET /console/keys/{id}/edit`.
pub async fn edit_page(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let ctx = signed_in!(state, headers, peer);
    let key = async {
        let request = ctx.request(pb::GetKeyRequest { key_id: id.clone() })?;
        Ok::<_, PageError>(state.management.get_key(request).await?.into_inner().key)
    };
    let key = match key.await {
        Ok(Some(key)) => key,
        Ok(None) => return not_found().await,
        Err(error) => return failed(&state, &ctx, &error),
    };
    let expires_on = views::time(key.expires_at.as_ref())
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default();
    let view = KeyFormView {
        form: KeyForm {
            csrf: ctx.session.csrf.clone(),
            name: key.name.clone(),
            scopes: key.scopes.join(" "),
            ip_allowlist: key.ip_allowlist.join("\n"),
            rate_limit_per_hour: key
                .rate_limit_per_hour
                .map(|n| n.to_string())
                .unwrap_or_default(),
            metadata: forms::metadata_lines(&key.metadata),
            expiry: "keep".into(),
            expires_on,
            etag: key.etag.clone(),
            ..KeyForm::default()
        },
        key_id: Some(key.key_id.clone()),
    };
    key_form_page(&state, &ctx, &view, None)
}

/// `POST /console/keys/{id}/edit`: UpdateKey with the etag the form was
/// shown with, so a change made meanwhile is reported, not overwritten.
pub async fn edit_key(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(form): Form<KeyForm>,
) -> Response {
    let ctx = signed_in!(state, headers, peer);
    if let Some(response) = ctx.csrf_refused(&form.csrf) {
        return response;
    }
    let updated = async {
        let fields = form.fields()?;
        let mut paths: Vec<String> = [
            "name",
            "scopes",
            "ip_allowlist",
            "rate_limit_per_hour",
            "metadata",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        let expires_at = match fields.expiry {
            Expiry::Keep => None,
            Expiry::Never => {
                paths.push("expires_at".into());
                None
            }
            Expiry::Days(days) => {
                paths.push("expires_at".into());
                Some(timestamp(
                    Utc::now() + chrono::Duration::days(i64::from(days)),
                ))
            }
            Expiry::At(at) => {
                paths.push("expires_at".into());
                Some(timestamp(at))
            }
        };
        let request = ctx.request(pb::UpdateKeyRequest {
            key: Some(pb::ApiKey {
                key_id: id.clone(),
                name: form.name.clone(),
                scopes: fields.scopes,
                ip_allowlist: fields.ip_allowlist,
                rate_limit_per_hour: fields.rate_limit_per_hour,
                metadata: fields.metadata,
                expires_at,
                ..Default::default()
            }),
            update_mask: Some(prost_types::FieldMask { paths }),
            etag: form.etag.clone(),
        })?;
        state.management.update_key(request).await?;
        Ok::<_, PageError>(())
    };
    match updated.await {
        Ok(()) => see_other(&format!("/console/keys/{id}?done=edit")),
        Err(error)
            if error.signed_out
                || matches!(error.status, StatusCode::FORBIDDEN | StatusCode::NOT_FOUND)
                    && error.fields.is_empty() =>
        {
            failed(&state, &ctx, &error)
        }
        Err(error) => {
            let view = KeyFormView {
                form: KeyForm {
                    csrf: ctx.session.csrf.clone(),
                    ..form
                },
                key_id: Some(id),
            };
            key_form_page(&state, &ctx, &view, Some(&error))
        }
    }
}

fn grace(value: &str) -> Result<Option<prost_types::Duration>, PageError> {
    let seconds = match value {
        "" | "0" => return Ok(None),
        "1h" => 3600,
        "24h" => 86_400,
        "7d" => 7 * 86_400,
        _ => return Err(PageError::field("grace", "choose one of the grace periods")),
    };
    Ok(Some(prost_types::Duration { seconds, nanos: 0 }))
}

/// `POST /console/keys/{id}/{action}`: rotate, revoke, disable, enable,
/// delete or undelete, with the etag the page was shown with.
pub async fn key_action(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    Form(form): Form<ActionForm>,
) -> Response {
    let ctx = signed_in!(state, headers, peer);
    if let Some(response) = ctx.csrf_refused(&form.csrf) {
        return response;
    }
    let m = &state.management;
    let etag = form.etag.clone();
    let done = async {
        match action.as_str() {
            "rotate" => {
                let request = ctx.request(pb::RotateKeyRequest {
                    key_id: id.clone(),
                    grace_period: grace(&form.grace)?,
                    etag,
                })?;
                let rotated = m.rotate_key(request).await?.into_inner();
                return Ok(Some(rotated));
            }
            "revoke" => {
                let mut error = PageError::new(
                    StatusCode::BAD_REQUEST,
                    "the key was not revoked: please correct the marked fields",
                );
                if form.reason.trim().is_empty() {
                    error.add("reason", "say why the key is revoked");
                }
                let key = m
                    .get_key(ctx.request(pb::GetKeyRequest { key_id: id.clone() })?)
                    .await?
                    .into_inner()
                    .key
                    .unwrap_or_default();
                if form.confirm.trim() != key.name {
                    error.add("confirm", "type the key's name exactly to confirm");
                }
                if !error.fields.is_empty() {
                    return Err(error);
                }
                let request = ctx.request(pb::RevokeKeyRequest {
                    key_id: id.clone(),
                    reason: form.reason.trim().to_owned(),
                    etag,
                })?;
                m.revoke_key(request).await?;
            }
            "disable" => {
                let request = ctx.request(pb::DisableKeyRequest {
                    key_id: id.clone(),
                    etag,
                })?;
                m.disable_key(request).await?;
            }
            "enable" => {
                let request = ctx.request(pb::EnableKeyRequest {
                    key_id: id.clone(),
                    etag,
                })?;
                m.enable_key(request).await?;
            }
            "delete" => {
                let request = ctx.request(pb::DeleteKeyRequest {
                    key_id: id.clone(),
                    etag,
                })?;
                m.delete_key(request).await?;
            }
            "undelete" => {
                let request = ctx.request(pb::UndeleteKeyRequest { key_id: id.clone() })?;
                m.undelete_key(request).await?;
            }
            _ => {
                return Err(PageError::new(
                    StatusCode::NOT_FOUND,
                    "there is no such key action",
                ));
            }
        }
        Ok::<_, PageError>(None)
    };
    match done.await {
        Ok(Some(rotated)) => {
            let key = rotated.key.unwrap_or_default();
            let note = views::time(rotated.previous_secret_expires_at.as_ref())
                .map(|t| {
                    format!(
                        "The previous secret keeps working until {}.",
                        views::exact(t)
                    )
                })
                .unwrap_or_else(|| "The previous secret stopped working.".to_owned());
            html(
                StatusCode::OK,
                views::secret(&ctx.nav, &key, &rotated.secret, Some(&note)),
            )
        }
        Ok(None) => see_other(&format!("/console/keys/{id}?done={action}")),
        Err(error) if error.signed_out => failed(&state, &ctx, &error),
        Err(error) if error.status == StatusCode::NOT_FOUND => failed(&state, &ctx, &error),
        Err(error) => detail_page(&state, &ctx, &id, None, Some(error)).await,
    }
}

/// `GET /console/audit`: audit events, newest first, filtered.
pub async fn audit_log(
    State(state): State<ConsoleState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    Query(filters): Query<AuditFilters>,
) -> Response {
    let ctx = signed_in!(state, headers, peer);
    let page = async {
        let time = |field: &str, text: &str| match text.trim() {
            "" => Ok(None),
            text => forms::parse_time(text)
                .map(|t| Some(timestamp(t)))
                .ok_or_else(|| PageError::field(field, "write a date and time")),
        };
        let request = ctx.request(pb::ListAuditEventsRequest {
            key_id: filters.key.trim().to_owned(),
            owner_id: String::new(),
            actor_key_id: filters.actor.trim().to_owned(),
            method: filters.method.clone(),
            start_time: time("start_time", &filters.from)?,
            end_time: time("end_time", &filters.to)?,
            page_size: EVENTS_PAGE_SIZE,
            page_token: filters.page.clone(),
        })?;
        Ok::<_, PageError>(
            state
                .management
                .list_audit_events(request)
                .await?
                .into_inner(),
        )
    };
    let (events, next, error) = match page.await {
        Ok(page) => (page.events, page.next_page_token, None),
        Err(error) if error.signed_out => return failed(&state, &ctx, &error),
        Err(error) => (Vec::new(), String::new(), Some(error)),
    };
    let status = error.as_ref().map_or(StatusCode::OK, |e| e.status);
    html(
        status,
        views::audit_log(&ctx.nav, &filters, &events, &next, error.as_ref()),
    )
}
