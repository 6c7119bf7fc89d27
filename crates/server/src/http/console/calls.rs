//! How the console calls the management API: the same
//! [`ManagementService`] methods gRPC clients reach, with the session's
//! management key as the bearer and the browser's address as the peer, so
//! rights, grant limits, validation, etags and audit events are the API's
//! own. A failed call becomes a [`PageError`]: a message, an HTTP status and
//! the API's field violations by form field.

use std::{collections::BTreeMap, net::SocketAddr};

use axum::http::StatusCode;
use tonic::{Code, Request, Status, metadata::MetadataValue, transport::server::TcpConnectInfo};
use tonic_types::StatusExt;

/// A management call the console could not make.
#[derive(Debug, Clone)]
pub struct PageError {
    /// The response status to show it with.
    pub status: StatusCode,
    /// What went wrong, for the top of the page.
    pub message: String,
    /// Messages by form field (`name`, `scopes`, `ip_allowlist`, …).
    pub fields: BTreeMap<String, String>,
    /// The session's key no longer authenticates: end the session.
    pub signed_out: bool,
}

impl PageError {
    /// An error with `status` and `message` and no field.
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
            fields: BTreeMap::new(),
            signed_out: false,
        }
    }

    /// A form error on `field`.
    pub fn field(field: &str, message: impl Into<String>) -> Self {
        let message = message.into();
        let mut error = Self::new(StatusCode::BAD_REQUEST, "please correct the marked fields");
        error.fields.insert(field.to_owned(), message);
        error
    }

    /// Adds a form error on `field` (the first one on a field wins).
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.fields
            .entry(field.to_owned())
            .or_insert_with(|| message.into());
    }

    /// The message on `field`, if any.
    pub fn on(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

impl From<Status> for PageError {
    fn from(status: Status) -> Self {
        let http = match status.code() {
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::Aborted | Code::FailedPrecondition | Code::AlreadyExists => StatusCode::CONFLICT,
            Code::Unavailable | Code::DeadlineExceeded => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let mut error = Self::new(http, status.message().to_owned());
        error.signed_out = status.code() == Code::Unauthenticated;
        if status.code() == Code::Aborted {
            error.message = format!(
                "the key changed since this page was loaded, so nothing was changed: reload it and try again ({})",
                status.message()
            );
        }
        if let Some(bad) = status.get_error_details().bad_request() {
            for violation in &bad.field_violations {
                error.add(
                    &form_field(&violation.field),
                    format!("{}: {}", violation.field, violation.description),
                );
            }
        }
        error
    }
}

/// The form field an API field path belongs to: `key.scopes[2]` → `scopes`,
/// `metadata["plan"]` → `metadata`, `ttl` → `expires_at`.
pub fn form_field(api_field: &str) -> String {
    let field = api_field.strip_prefix("key.").unwrap_or(api_field);
    let end = field.find(['[', '.']).unwrap_or(field.len());
    match &field[..end] {
        "ttl" | "expiry" => "expires_at".to_owned(),
        other => other.to_owned(),
    }
}

/// A management request carrying `key` as bearer, coming from `peer`.
pub fn request<T>(key: &str, peer: SocketAddr, message: T) -> Result<Request<T>, PageError> {
    let mut request = Request::new(message);
    let bearer = MetadataValue::try_from(format!("Bearer {key}"))
        .map_err(|_| PageError::new(StatusCode::UNAUTHORIZED, "the key is not printable text"))?;
    request.metadata_mut().insert("authorization", bearer);
    request.extensions_mut().insert(TcpConnectInfo {
        local_addr: None,
        remote_addr: Some(peer),
    });
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_fields_map_to_form_fields() {
        assert_eq!(form_field("name"), "name");
        assert_eq!(form_field("key.scopes[2]"), "scopes");
        assert_eq!(form_field("ip_allowlist[0]"), "ip_allowlist");
        assert_eq!(form_field("metadata[\"a\"]"), "metadata");
        assert_eq!(form_field("key.rate_limit_per_hour"), "rate_limit_per_hour");
        assert_eq!(form_field("ttl"), "expires_at");
    }

    #[test]
    fn statuses_become_page_errors_with_fields() {
        let status: Status =
            crate::error::ApiError::invalid("key.name", "must not be empty").into();
        let error = PageError::from(status);
        assert_eq!(error.status, StatusCode::BAD_REQUEST);
        assert_eq!(error.on("name"), Some("key.name: must not be empty"));
        let error = PageError::from(Status::unauthenticated("revoked"));
        assert!(error.signed_out);
        let error = PageError::from(Status::aborted("etag"));
        assert_eq!(error.status, StatusCode::CONFLICT);
    }
}
