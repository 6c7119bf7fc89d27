//! How a client command fails: a usage problem found before any call (exit
//! 2), a gRPC status from the server (exit 2 for INVALID_ARGUMENT, 1
//! otherwise) printed with its ErrorInfo reason and BadRequest field
//! violations, or anything else (exit 1). Scripts branch on the exit code;
//! people read stderr.

use std::fmt::Write as _;

use tonic::{Code, Status};
use tonic_types::{FieldViolation, StatusExt};

use super::output::clean;

/// A failed client command.
#[derive(Debug)]
pub(super) enum CliError {
    /// Bad input caught before calling the server: a missing management
    /// key, an unreadable file, flags that make no request.
    Usage(String),
    /// The server's answer.
    Status(Box<Status>),
    /// The server could not be reached, output could not be written, …
    Other(anyhow::Error),
}

impl CliError {
    pub(super) fn usage(message: impl Into<String>) -> Self {
        Self::Usage(message.into())
    }

    /// 2 for bad input (ours or the server's INVALID_ARGUMENT), 1 otherwise.
    pub(super) fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Status(status) if status.code() == Code::InvalidArgument => 2,
            Self::Status(_) | Self::Other(_) => 1,
        }
    }

    /// Prints the error on stderr.
    pub(super) fn report(&self) {
        eprint!("{}", self.message());
    }

    /// The text [`report`](Self::report) prints, ending in a newline.
    pub(super) fn message(&self) -> String {
        match self {
            Self::Usage(message) => format!("error: {message}\n"),
            Self::Other(err) => format!("error: {err:#}\n"),
            Self::Status(status) => status_message(status),
        }
    }
}

impl From<Status> for CliError {
    fn from(status: Status) -> Self {
        Self::Status(Box::new(status))
    }
}

impl From<anyhow::Error> for CliError {
    fn from(err: anyhow::Error) -> Self {
        Self::Other(err)
    }
}

/// `error: <message> (<CODE>[, <reason>])`, then one line per field
/// violation the message does not already quote. Server text is cleaned of control characters before it
/// reaches the terminal.
fn status_message(status: &Status) -> String {
    let details = status.get_error_details();
    let code = keygate_server::error::code_name(status.code());
    let mut message = clean(status.message());
    // A transport failure (connection reset, …) says why in its source.
    let mut source = std::error::Error::source(status);
    while let Some(cause) = source {
        let cause_text = clean(&cause.to_string());
        if !message.contains(&cause_text) {
            let _ = write!(message, ": {cause_text}");
        }
        source = cause.source();
    }
    if message.is_empty() {
        message = "the server gave no message".into();
    }
    let mut out = match details.error_info() {
        Some(info) if !info.reason.is_empty() && info.reason != code => {
            format!("error: {message} ({code}, {})\n", clean(&info.reason))
        }
        _ => format!("error: {message} ({code})\n"),
    };
    if let Some(bad) = details.bad_request() {
        // The message quotes the first few violations already; the rest
        // are only in the details.
        let quoted = |v: &&FieldViolation| {
            status
                .message()
                .contains(&format!("{}: {}", v.field, v.description))
        };
        for violation in bad.field_violations.iter().filter(|v| !quoted(v)) {
            let _ = writeln!(
                out,
                "  {}: {}",
                clean(&violation.field),
                clean(&violation.description)
            );
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_types::ErrorDetails;

    #[test]
    fn invalid_argument_exits_2_and_names_each_field() {
        let details = ErrorDetails::with_bad_request(vec![
            FieldViolation::new("scopes[0]", "\"NOT A SCOPE\" is not a scope"),
            FieldViolation::new("ip_allowlist[0]", "\"x\" is not a CIDR network"),
        ]);
        let status = Status::with_error_details(
            Code::InvalidArgument,
            "invalid request: scopes[0]: \"NOT A SCOPE\" is not a scope; and 1 more in the BadRequest details",
            details,
        );
        let err = CliError::from(status);
        assert_eq!(err.exit_code(), 2);
        // The violation the message quotes is not printed twice; the other
        // one gets its own line.
        assert_eq!(
            err.message(),
            "error: invalid request: scopes[0]: \"NOT A SCOPE\" is not a scope; and 1 more in \
             the BadRequest details (INVALID_ARGUMENT)\n  \
             ip_allowlist[0]: \"x\" is not a CIDR network\n"
        );
    }

    #[test]
    fn other_statuses_exit_1_with_their_reason() {
        let mut details = ErrorDetails::new();
        details.set_error_info(
            "KEY_NOT_FOUND",
            "keygate.dev",
            std::collections::HashMap::new(),
        );
        let status = Status::with_error_details(Code::NotFound, "key x not found", details);
        let err = CliError::from(status);
        assert_eq!(err.exit_code(), 1);
        assert_eq!(
            err.message(),
            "error: key x not found (NOT_FOUND, KEY_NOT_FOUND)\n"
        );
        assert_eq!(CliError::usage("no key").exit_code(), 2);
        assert_eq!(CliError::from(anyhow::anyhow!("down")).exit_code(), 1);
    }

    #[test]
    fn control_characters_from_the_server_are_not_printed_raw() {
        let err = CliError::from(Status::not_found("bad \u{1b}[31mred\u{1b}[0m"));
        assert!(!err.message().contains('\u{1b}'), "{:?}", err.message());
    }
}
