//! The one place where Keygate's failures become gRPC statuses.
//!
//! Handlers return [`ApiError`]; `From<ApiError> for Status` attaches a
//! google.rpc `ErrorInfo` (an UPPER_SNAKE reason in the `keygate.dev` domain)
//! to every status, and `BadRequest` field violations to INVALID_ARGUMENT, so
//! clients in any language branch on a reason instead of parsing messages.

use std::collections::HashMap;

use keygate_domain::{rights::RightsError, validation::ValidationError};
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
    /// Storage cannot be reached; retry later.
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    /// A bug or corrupt data; details are logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    /// INVALID_ARGUMENT for one field.
    pub fn invalid(field: &str, description: impl Into<String>) -> Self {
        Self::Invalid(ValidationError {
            violations: vec![keygate_domain::validation::FieldViolation {
                field: field.to_owned(),
                description: description.into(),
            }],
        })
    }

    fn code_and_reason(&self) -> (Code, &'static str) {
        match self {
            Self::Unauthenticated { reason, .. } => (Code::Unauthenticated, reason),
            Self::PermissionDenied { reason, .. } => (Code::PermissionDenied, reason),
            Self::KeyNotFound(_) => (Code::NotFound, "KEY_NOT_FOUND"),
            Self::Invalid(_) => (Code::InvalidArgument, "INVALID_ARGUMENT"),
            Self::FailedPrecondition { reason, .. } => (Code::FailedPrecondition, reason),
            Self::Unavailable(_) => (Code::Unavailable, "STORAGE_UNAVAILABLE"),
            Self::Internal(_) => (Code::Internal, "INTERNAL"),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::Unavailable(msg) => Self::Unavailable(msg),
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
            RightsError::ScopeEscalation { .. } => Self::PermissionDenied {
                reason: "SCOPE_ESCALATION",
                message: err.to_string(),
            },
            RightsError::OutOfBounds => Self::PermissionDenied {
                reason: "OUT_OF_BOUNDS",
                message: err.to_string(),
            },
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Self {
        let (code, reason) = err.code_and_reason();
        let message = match &err {
            ApiError::Internal(detail) => {
                tracing::error!(error = %detail, "internal error");
                "internal error".to_owned()
            }
            other => other.to_string(),
        };
        let mut details = ErrorDetails::new();
        details.set_error_info(reason, ERROR_DOMAIN, HashMap::<String, String>::new());
        if let ApiError::Invalid(validation) = &err {
            for violation in &validation.violations {
                details.add_bad_request_violation(&violation.field, &violation.description);
            }
        }
        Status::with_error_details(code, message, details)
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

    #[test]
    fn internal_errors_do_not_leak_details() {
        let status = Status::from(ApiError::Internal("row 7 has bad json".into()));
        assert_eq!(status.code(), Code::Internal);
        assert_eq!(status.message(), "internal error");
    }

    #[test]
    fn out_of_reach_storage_is_unavailable() {
        let status = Status::from(ApiError::from(StoreError::Unavailable("refused".into())));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(
            status.get_error_details().error_info().unwrap().reason,
            "STORAGE_UNAVAILABLE"
        );
    }
}
