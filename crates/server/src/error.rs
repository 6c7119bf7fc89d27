//! The one place where Keygate's failures become gRPC statuses.
//!
//! Handlers return [`ApiError`]; `From<ApiError> for Status` attaches a
//! google.rpc `ErrorInfo` (an UPPER_SNAKE reason in the `keygate.dev` domain)
//! to every status, and `BadRequest` field violations to INVALID_ARGUMENT, so
//! clients in any language branch on a reason instead of parsing messages.

use std::{
    collections::HashMap,
    sync::atomic::{AtomicU64, Ordering},
    time::{SystemTime, UNIX_EPOCH},
};

use keygate_domain::{
    rights::RightsError,
    scope::Scope,
    validation::{MAX_VIOLATIONS, ValidationError},
};
use keygate_persistence::StoreError;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// The `ErrorInfo.domain` of every Keygate error.
pub const ERROR_DOMAIN: &str = "keygate.dev";

/// Every way a Keygate RPC can fail.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No usable management key was presented.
    #[error("{message}")]
    Unauthenticated {
        /// ErrorInfo reason.
        reason: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The caller is known but lacks the right.
    #[error("{message}")]
    PermissionDenied {
        /// ErrorInfo reason.
        reason: &'static str,
        /// What is missing.
        message: String,
    },
    /// No such key, or one the caller may not see.
    #[error("key {0} not found")]
    KeyNotFound(String),
    /// The request is malformed; each violation names its field.
    #[error(transparent)]
    Invalid(#[from] ValidationError),
    /// The key is in a state that forbids the operation.
    #[error("{message}")]
    FailedPrecondition {
        /// ErrorInfo reason.
        reason: &'static str,
        /// Why the operation cannot happen now.
        message: String,
    },
    /// A concurrent change won: the etag sent is stale, or the key changed
    /// under the call too often. Nothing was changed; read and retry.
    #[error("{message}")]
    Aborted {
        /// ErrorInfo reason.
        reason: &'static str,
        /// What changed.
        message: String,
    },
    /// Storage cannot be reached; retry later. The detail (such as the
    /// database driver's error) is logged, never sent: callers get
    /// [`UNAVAILABLE_MESSAGE`].
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data. The detail is logged, never sent: callers get
    /// [`INTERNAL_MESSAGE`].
    #[error("internal error: {0}")]
    Internal(String),
}

/// What callers are told when storage cannot be reached.
pub const UNAVAILABLE_MESSAGE: &str = "storage unavailable; retry later";
/// What callers are told about a bug or corrupt data.
pub const INTERNAL_MESSAGE: &str = "internal error; the server log has the details";

impl ApiError {
    /// INVALID_ARGUMENT for one field. A description that repeats user
    /// input should quote it with [`keygate_domain::validation::quote`].
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(ValidationError::single(field, description))
    }

    fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            Self::Unauthenticated { reason, .. } => (Code::Unauthenticated, reason),
            Self::PermissionDenied { reason, .. } => (Code::PermissionDenied, reason),
            Self::KeyNotFound(_) => (Code::NotFound, "KEY_NOT_FOUND"),
            Self::Invalid(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            Self::FailedPrecondition { reason, .. } => (Code::FailedPrecondition, reason),
            Self::Aborted { reason, .. } => (Code::Aborted, reason),
            Self::Unavailable(_) => (Code::Unavailable, "STORAGE_UNAVAILABLE"),
            Self::Internal(_) => (Code::Internal, "INTERNAL"),
        }
    }
}

/// The canonical name of a gRPC code (`OK`, `INVALID_ARGUMENT`, …), as
/// ErrorInfo reasons, metrics labels and other gRPC tools spell it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(msg) | StoreError::Saturated(msg) => Self::Unavailable(msg),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<RightsError> for ApiError {
    fn from(err: RightsError) -> Self {
        match &err {
            RightsError::MissingRight { .. } => Self::PermissionDenied {
                reason: "MISSING_RIGHT",
                message: err.to_string(),
            },
            RightsError::ScopeEscalation { scopes } => Self::PermissionDenied {
                reason: "SCOPE_ESCALATION",
                message: escalation_message(scopes),
            },
            RightsError::OutOfBounds => Self::PermissionDenied {
                reason: "OUT_OF_BOUNDS",
                message: err.to_string(),
            },
        }
    }
}

/// "cannot grant scopes beyond your own: …", naming at most
/// [`MAX_VIOLATIONS`] of the scopes (a request may ask for a hundred).
fn escalation_message(scopes: &[Scope]) -> String {
    let named: Vec<&str> = scopes
        .iter()
        .take(MAX_VIOLATIONS)
        .map(Scope::as_str)
        .collect();
    let mut message = format!("cannot grant scopes beyond your own: {}", named.join(", "));
    let rest = scopes.len().saturating_sub(MAX_VIOLATIONS);
    if rest > 0 {
        message.push_str(&format!(" and {rest} more"));
    }
    message
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let (code, reason) = err.code_and_reason();
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new());
        let message = match err {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                INTERNAL_MESSAGE.to_owned()
            }
            ApiError::Unavailable(detail) => {
                log_unavailable(&detail);
                UNAVAILABLE_MESSAGE.to_owned()
            }
            ApiError::Invalid(validation) => {
                // Bounded however the error was built.
                let validation = validation.capped();
                for violation in &validation.violations {
                    details.add_bad_request_violation(&violation.field, &violation.description);
                }
                invalid_message(&validation)
            }
            other => other.to_string(),
        };
        Status::with_error_details(code, message, details)
    }
}

/// Field violations repeated in an INVALID_ARGUMENT message; the
/// `BadRequest` details carry them all.
const MESSAGE_VIOLATIONS: usize = 3;

/// The message of an INVALID_ARGUMENT status: the first few violations,
/// then how many more the details hold. (The encoded details repeat the
/// message, so every violation in it is sent twice.)
fn invalid_message(validation: &ValidationError) -> String {
    let shown: Vec<String> = validation
        .violations
        .iter()
        .take(MESSAGE_VIOLATIONS)
        .map(ToString::to_string)
        .collect();
    let mut message = format!("invalid request: {}", shown.join("; "));
    let rest = validation
        .violations
        .len()
        .saturating_sub(MESSAGE_VIOLATIONS);
    if rest > 0 {
        message.push_str(&format!("; and {rest} more in the BadRequest details"));
    }
    message
}

/// Logs why storage was unavailable: a warning at most once a second (an
/// outage fails every call that needs storage, and one line a second says
/// as much as thousands), the rest at debug.
fn log_unavailable(detail: &str) {
    static LAST_WARNED_SECOND: AtomicU64 = AtomicU64::new(0);
    let second = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let last = LAST_WARNED_SECOND.load(Ordering::Relaxed);
    if second > last
        && LAST_WARNED_SECOND
            .compare_exchange(last, second, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!(error = %detail, "storage unavailable; answering UNAVAILABLE");
    } else {
        tracing::debug!(error = %detail, "storage unavailable; answering UNAVAILABLE");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_argument_names_the_field_in_bad_request() {
        let status = Status::from(ApiError::invalid("name", "must not be empty"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains("name"), "{}", status.message());
        let details = status.get_error_details();
        let info = details.error_info().expect("error info");
        assert_eq!(info.reason, "INVALID_ARGUMENT");
        assert_eq!(info.domain, ERROR_DOMAIN);
        let bad = details.bad_request().expect("bad request");
        assert_eq!(bad.field_violations[0].field, "name");
    }

    /// Everything a caller receives of a status, as text.
    fn wire_text(status: &Status) -> String {
        format!(
            "{} {}",
            status.message(),
            String::from_utf8_lossy(status.details())
        )
    }

    #[test]
    fn internal_errors_do_not_leak_details() {
        let status = Status::from(ApiError::Internal("row 7 has bad json".into()));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), INTERNAL_MESSAGE);
        assert!(!wire_text(&status).contains("row 7"));
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "INTERNAL"
        );
        let status = Status::from(ApiError::from(StoreError::Corrupt(
            "api_key 7: bad scopes column \"x\"".into(),
        )));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), INTERNAL_MESSAGE);
        assert!(!wire_text(&status).contains("api_key 7"));
    }

    #[test]
    fn out_of_reach_storage_is_unavailable_without_the_driver_error() {
        let detail = "error communicating with database: Connection refused (os error 111) \
                      at postgres://keygate:hunter2@db.internal:5432/keygate";
        for err in [
            ApiError::from(StoreError::Unavailable(detail.into())),
            ApiError::Unavailable(detail.into()),
        ] {
            // The detail stays available to the log.
            assert!(err.to_string().contains("Connection refused"), "{err}");
            let status = Status::from(err);
            assert_eq!(status.code(), Code::Unavailable);
            assert_eq!(status.message(), UNAVAILABLE_MESSAGE);
            let text = wire_text(&status);
            for secret in ["refused", "hunter2", "db.internal", "5432", "os error"] {
                assert!(
                    !text.contains(secret),
                    "{secret} reached the caller: {text}"
                );
            }
            assert_eq!(
                status.get_error_details().error_info().unwrap().reason,
                "STORAGE_UNAVAILABLE"
            );
        }
    }

    #[test]
    fn other_errors_keep_their_message_and_reason() {
        let status = Status::from(ApiError::Aborted {
            reason: "ETAG_MISMATCH",
            message: "key k changed; read it again".into(),
        });
        assert_eq!(status.code(), Code::Aborted);
        assert_eq!(status.message(), "key k changed; read it again");
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "ETAG_MISMATCH"
        );
        let status = Status::from(ApiError::KeyNotFound("k1".into()));
        assert_eq!(status.code(), Code::NotFound);
        assert_eq!(status.message(), "key k1 not found");
    }

    #[test]
    fn many_violations_make_a_small_status() {
        let violations = (0..5_000)
            .map(|i| {
                keygate_domain::validation::FieldViolation::new(
                    format!("scopes[{i}]"),
                    "x".repeat(200),
                )
            })
            .collect();
        let status = Status::from(ApiError::Invalid(ValidationError { violations }));
        assert_eq!(status.code(), Code::InvalidArgument);
        let bad = status.get_error_details().bad_request().unwrap().clone();
        assert_eq!(bad.field_violations.len(), MAX_VIOLATIONS + 1);
        assert_eq!(bad.field_violations[MAX_VIOLATIONS].field, "scopes[10]");
        assert!(
            bad.field_violations[MAX_VIOLATIONS]
                .description
                .starts_with("4990 more")
        );
        // The message names the first few; the details hold the rest.
        assert!(
            status
                .message()
                .starts_with("invalid request: scopes[0]: xxx"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("scopes[2]: "));
        assert!(!status.message().contains("scopes[3]"));
        assert!(
            status
                .message()
                .ends_with("; and 8 more in the BadRequest details"),
            "{}",
            status.message()
        );
        let size = status.message().len() + status.details().len();
        assert!(size < 4 * 1024, "{size} bytes");
    }

    #[test]
    fn scope_escalation_names_at_most_ten_scopes() {
        let scopes = |n: usize| -> Vec<Scope> {
            (0..n)
                .map(|i| Scope::parse(&format!("r{i}:{}", "a".repeat(64))).unwrap())
                .collect()
        };
        let status = Status::from(ApiError::from(RightsError::ScopeEscalation {
            scopes: scopes(2),
        }));
        assert_eq!(status.code(), Code::PermissionDenied);
        assert_eq!(
            status.message(),
            format!(
                "cannot grant scopes beyond your own: r0:{0}, r1:{0}",
                "a".repeat(64)
            )
        );
        let status = Status::from(ApiError::from(RightsError::ScopeEscalation {
            scopes: scopes(100),
        }));
        assert!(status.message().contains("r9:"));
        assert!(!status.message().contains("r10:"));
        assert!(
            status.message().ends_with(" and 90 more"),
            "{}",
            status.message()
        );
        assert!(status.message().len() < 1024);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "SCOPE_ESCALATION"
        );
    }

    #[test]
    fn few_violations_are_all_in_the_message() {
        let err = ValidationError {
            violations: vec![
                keygate_domain::validation::FieldViolation::new("name", "must not be empty"),
                keygate_domain::validation::FieldViolation::new("ttl", "must be positive"),
            ],
        };
        let status = Status::from(ApiError::Invalid(err));
        assert_eq!(
            status.message(),
            "invalid request: name: must not be empty; ttl: must be positive"
        );
    }
}
