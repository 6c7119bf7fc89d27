//! Input validation for management and authorization calls, done once at the
//! edge so the rest of the code handles only well-formed values. Every
//! function reports all problems at once, each naming the offending field by
//! its protobuf name (`scopes[3]`), so the server can return them as
//! `BadRequest` field violations.

use std::fmt;

use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;

use crate::allowlist;
use crate::environment::Environments;
use crate::scope::{Scope, ScopeError};

/// Longest key name, in characters.
pub const MAX_NAME_CHARS: usize = 200;
/// Longest owner id, in characters.
pub const MAX_OWNER_CHARS: usize = 200;
/// Most scopes on one key or one request.
pub const MAX_SCOPES: usize = 100;
/// Most allowlist entries on one key.
pub const MAX_ALLOWLIST: usize = 100;
/// Longest revocation reason, in characters.
pub const MAX_REASON_CHARS: usize = 500;
/// Longest key id, in characters.
pub const MAX_KEY_ID_CHARS: usize = 64;
/// Longest rotation grace period, in days.
pub const MAX_GRACE_DAYS: i64 = 30;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldViolation {
    /// The field, by its protobuf name, indexed for repeated fields (`scopes[3]`).
    pub field: String,
    /// What is wrong with it.
    pub description: String,
}

impl FieldViolation {
    /// A violation of `field`.
    pub fn new(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            description: description.into(),
        }
    }
}

impl fmt::Display for FieldViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.description)
    }
}

/// A rejected request: every problem found.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid request: {}", join(.violations))]
pub struct ValidationError {
    /// The problems, in field order.
    pub violations: Vec<FieldViolation>,
}

impl ValidationError {
    /// An error with a single violation.
    pub fn single(field: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            violations: vec![FieldViolation::new(field, description)],
        }
    }
}

fn join(violations: &[FieldViolation]) -> String {
    violations
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Collects violations; turns into a result at the end.
#[derive(Debug, Default)]
struct Violations(Vec<FieldViolation>);

impl Violations {
    fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        self.0.push(FieldViolation::new(field, description));
    }

    fn extend(&mut self, err: ValidationError) {
        self.0.extend(err.violations);
    }

    fn finish<T>(self, value: T) -> Result<T, ValidationError> {
        if self.0.is_empty() {
            Ok(value)
        } else {
            Err(ValidationError { violations: self.0 })
        }
    }
}

/// When a new key should expire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Expiry {
    /// Never.
    #[default]
    Never,
    /// At a fixed time, which must be in the future.
    At(DateTime<Utc>),
    /// After a positive time-to-live from now.
    Ttl(Duration),
}

/// A CreateKey request as received.
#[derive(Clone, Debug, Default)]
pub struct NewKeyInput {
    /// Tenant, organisation or customer.
    pub owner_id: String,
    /// Human name.
    pub name: String,
    /// Environment the key belongs to.
    pub environment: String,
    /// Scopes to grant, unparsed.
    pub scopes: Vec<String>,
    /// Allowlist entries, unparsed.
    pub ip_allowlist: Vec<String>,
    /// Per-key requests per hour.
    pub rate_limit_per_hour: Option<u32>,
    /// Expiry.
    pub expiry: Expiry,
}

/// A validated CreateKey request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewKey {
    /// Trimmed owner id.
    pub owner_id: String,
    /// Trimmed name.
    pub name: String,
    /// A configured environment.
    pub environment: String,
    /// Parsed scopes, duplicates removed, in request order.
    pub scopes: Vec<Scope>,
    /// Parsed networks, duplicates removed, in request order.
    pub ip_allowlist: Vec<IpNet>,
    /// At least 1 if set.
    pub rate_limit_per_hour: Option<u32>,
    /// In the future, if set.
    pub expires_at: Option<DateTime<Utc>>,
}

/// Trims a required text field and checks its length and characters.
fn text_field(v: &mut Violations, field: &str, raw: &str, max_chars: usize) -> String {
    let t = raw.trim();
    if t.is_empty() {
        v.add(field, "must not be empty");
    } else if t.chars().count() > max_chars {
        v.add(field, format!("must be at most {max_chars} characters"));
    } else if t.chars().any(char::is_control) {
        v.add(field, "must not contain control characters");
    }
    t.to_owned()
}

/// Validates a CreateKey request, reporting every problem at once.
pub fn validate_new_key(
    input: NewKeyInput,
    environments: &Environments,
    now: DateTime<Utc>,
) -> Result<NewKey, ValidationError> {
    let mut v = Violations::default();
    let owner_id = text_field(&mut v, "owner_id", &input.owner_id, MAX_OWNER_CHARS);
    let name = text_field(&mut v, "name", &input.name, MAX_NAME_CHARS);

    if !environments.contains(&input.environment) {
        let description = if input.environment.is_empty() {
            "must not be empty".to_owned()
        } else {
            format!("unknown environment {:?}", input.environment)
        };
        v.add(
            "environment",
            format!(
                "{description}; configured: {}",
                environments.names().join(", ")
            ),
        );
    }

    let scopes = validate_scopes("scopes", &input.scopes).unwrap_or_else(|e| {
        v.extend(e);
        Vec::new()
    });

    let mut ip_allowlist: Vec<IpNet> = Vec::new();
    if input.ip_allowlist.len() > MAX_ALLOWLIST {
        v.add(
            "ip_allowlist",
            format!("must have at most {MAX_ALLOWLIST} entries"),
        );
    } else {
        for (i, raw) in input.ip_allowlist.iter().enumerate() {
            match allowlist::parse_network(raw) {
                Ok(net) if !ip_allowlist.contains(&net) => ip_allowlist.push(net),
                Ok(_) => {}
                Err(e) => v.add(format!("ip_allowlist[{i}]"), e.to_string()),
            }
        }
    }

    if input.rate_limit_per_hour == Some(0) {
        v.add("rate_limit_per_hour", "must be at least 1 when set");
    }

    let expires_at = match input.expiry {
        Expiry::Never => None,
        Expiry::At(at) => validate_expiry(Some(at), now).unwrap_or_else(|e| {
            v.extend(e);
            None
        }),
        Expiry::Ttl(ttl) => {
            if ttl <= Duration::zero() {
                v.add("ttl", "must be positive");
                None
            } else if let Some(at) = now.checked_add_signed(ttl) {
                Some(at)
            } else {
                v.add("ttl", "is too large");
                None
            }
        }
    };

    v.finish(NewKey {
        owner_id,
        name,
        environment: input.environment,
        scopes,
        ip_allowlist,
        rate_limit_per_hour: input.rate_limit_per_hour,
        expires_at,
    })
}

/// Parses scopes for `field` (such as `scopes` or `required_scopes`): at most
/// [`MAX_SCOPES`], each trimmed and valid (`field[i]` names a bad one),
/// duplicates removed preserving order.
pub fn validate_scopes(field: &str, raw: &[String]) -> Result<Vec<Scope>, ValidationError> {
    let mut v = Violations::default();
    let mut out: Vec<Scope> = Vec::new();
    if raw.len() > MAX_SCOPES {
        v.add(field, format!("must have at most {MAX_SCOPES} entries"));
        return v.finish(out);
    }
    for (i, s) in raw.iter().enumerate() {
        match Scope::parse(s.trim()) {
            Ok(scope) if !out.contains(&scope) => out.push(scope),
            Ok(_) => {}
            Err(ScopeError::Empty) => v.add(format!("{field}[{i}]"), "must not be empty"),
            Err(e) => v.add(format!("{field}[{i}]"), e.to_string()),
        }
    }
    v.finish(out)
}

/// Checks an expiry time (field `expires_at`) is in the future, if set.
pub fn validate_expiry(
    expires_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
) -> Result<Option<DateTime<Utc>>, ValidationError> {
    match expires_at {
        Some(at) if at <= now => Err(ValidationError::single(
            "expires_at",
            "must be in the future",
        )),
        other => Ok(other),
    }
}

/// Checks a rotation grace period (field `grace_period`): not negative, at
/// most [`MAX_GRACE_DAYS`] days. Zero ends the old secret at once.
pub fn validate_grace_period(grace: Duration) -> Result<Duration, ValidationError> {
    if grace < Duration::zero() {
        Err(ValidationError::single(
            "grace_period",
            "must not be negative",
        ))
    } else if grace > Duration::days(MAX_GRACE_DAYS) {
        Err(ValidationError::single(
            "grace_period",
            format!("must be at most {MAX_GRACE_DAYS} days"),
        ))
    } else {
        Ok(grace)
    }
}

/// Trims a revocation reason (field `reason`) and checks its length. Empty is
/// allowed.
pub fn validate_reason(reason: &str) -> Result<String, ValidationError> {
    let t = reason.trim();
    if t.chars().count() > MAX_REASON_CHARS {
        return Err(ValidationError::single(
            "reason",
            format!("must be at most {MAX_REASON_CHARS} characters"),
        ));
    }
    Ok(t.to_owned())
}

/// Checks a key id (field `key_id`): non-empty, at most 64 characters of
/// `[0-9a-zA-Z-]`.
pub fn validate_key_id(id: &str) -> Result<&str, ValidationError> {
    let description = if id.is_empty() {
        "must not be empty".to_owned()
    } else if id.len() > MAX_KEY_ID_CHARS {
        format!("must be at most {MAX_KEY_ID_CHARS} characters")
    } else if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
        "must contain only letters, digits and '-'".to_owned()
    } else {
        return Ok(id);
    };
    Err(ValidationError::single("key_id", description))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap()
    }

    fn good() -> NewKeyInput {
        NewKeyInput {
            owner_id: " acme ".into(),
            name: "CI deploys".into(),
            environment: "live".into(),
            scopes: vec!["dns:read".into(), "dns:*".into(), "dns:read".into()],
            ip_allowlist: vec!["10.0.0.1/8".into(), "10.0.0.0/8".into(), "::1".into()],
            rate_limit_per_hour: Some(100),
            expiry: Expiry::Ttl(Duration::days(1)),
        }
    }

    fn validate(input: NewKeyInput) -> Result<NewKey, ValidationError> {
        validate_new_key(input, &Environments::default(), now())
    }

    fn fields(r: Result<NewKey, ValidationError>) -> Vec<String> {
        r.unwrap_err()
            .violations
            .into_iter()
            .map(|v| v.field)
            .collect()
    }

    #[test]
    fn valid_input_is_normalised() {
        let k = validate(good()).unwrap();
        assert_eq!(k.owner_id, "acme");
        assert_eq!(k.name, "CI deploys");
        assert_eq!(k.environment, "live");
        assert_eq!(
            k.scopes.iter().map(Scope::as_str).collect::<Vec<_>>(),
            ["dns:read", "dns:*"]
        );
        assert_eq!(
            k.ip_allowlist
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["10.0.0.0/8", "::1/128"]
        );
        assert_eq!(k.rate_limit_per_hour, Some(100));
        assert_eq!(k.expires_at, Some(now() + Duration::days(1)));
    }

    #[test]
    fn minimal_input() {
        let k = validate(NewKeyInput {
            owner_id: "o".into(),
            name: "n".into(),
            environment: "test".into(),
            ..Default::default()
        })
        .unwrap();
        assert!(k.scopes.is_empty());
        assert!(k.ip_allowlist.is_empty());
        assert_eq!(k.rate_limit_per_hour, None);
        assert_eq!(k.expires_at, None);
    }

    #[test]
    fn collects_all_violations() {
        let input = NewKeyInput {
            owner_id: "  ".into(),
            name: "a\u{7}b".into(),
            environment: "prod".into(),
            scopes: vec!["dns:read".into(), "".into(), "dns:x".into(), "BAD".into()],
            ip_allowlist: vec!["10.0.0.0/8".into(), "nope".into()],
            rate_limit_per_hour: Some(0),
            expiry: Expiry::At(now()),
        };
        assert_eq!(
            fields(validate(input)),
            [
                "owner_id",
                "name",
                "environment",
                "scopes[1]",
                "scopes[3]",
                "ip_allowlist[1]",
                "rate_limit_per_hour",
                "expires_at"
            ]
        );
    }

    #[test]
    fn owner_and_name_lengths_count_chars() {
        let mut input = good();
        input.name = "é".repeat(MAX_NAME_CHARS);
        input.owner_id = "ü".repeat(MAX_OWNER_CHARS);
        let k = validate(input).unwrap();
        assert_eq!(k.name.chars().count(), 200);
        assert!(k.name.len() > 200);

        let mut input = good();
        input.name = "é".repeat(MAX_NAME_CHARS + 1);
        input.owner_id = format!("  {}  ", "x".repeat(MAX_OWNER_CHARS + 1));
        let err = validate(input).unwrap_err();
        assert_eq!(
            err.violations[0],
            FieldViolation::new("owner_id", "must be at most 200 characters")
        );
        assert_eq!(
            err.violations[1],
            FieldViolation::new("name", "must be at most 200 characters")
        );

        // Trimmed before counting.
        let mut input = good();
        input.name = format!("  {}  ", "n".repeat(MAX_NAME_CHARS));
        assert!(validate(input).is_ok());
    }

    #[test]
    fn empty_and_control_characters() {
        let mut input = good();
        input.owner_id = "".into();
        input.name = "line\nbreak".into();
        let err = validate(input).unwrap_err();
        assert_eq!(
            err.violations[0],
            FieldViolation::new("owner_id", "must not be empty")
        );
        assert_eq!(
            err.violations[1],
            FieldViolation::new("name", "must not contain control characters")
        );
    }

    #[test]
    fn environment_message_lists_configured() {
        let mut input = good();
        input.environment = "prod".into();
        let err = validate(input).unwrap_err();
        assert_eq!(err.violations[0].field, "environment");
        assert!(
            err.violations[0].description.contains("live, test"),
            "{}",
            err.violations[0].description
        );
        let mut input = good();
        input.environment = "".into();
        assert_eq!(fields(validate(input)), ["environment"]);
        let envs = Environments::new(["prod"]).unwrap();
        let mut input = good();
        input.environment = "prod".into();
        assert!(validate_new_key(input, &envs, now()).is_ok());
    }

    #[test]
    fn scope_limits() {
        let mut input = good();
        input.scopes = (0..=MAX_SCOPES).map(|i| format!("r{i}:read")).collect();
        assert_eq!(fields(validate(input)), ["scopes"]);
        let mut input = good();
        input.scopes = (0..MAX_SCOPES).map(|i| format!("r{i}:read")).collect();
        assert_eq!(validate(input).unwrap().scopes.len(), MAX_SCOPES);
        let err = validate_scopes("required_scopes", &["a:b".into(), " ".into()]).unwrap_err();
        assert_eq!(
            err.violations,
            [FieldViolation::new(
                "required_scopes[1]",
                "must not be empty"
            )]
        );
        assert_eq!(
            validate_scopes("required_scopes", &[" a:b ".into(), "a:b".into()]).unwrap(),
            [Scope::parse("a:b").unwrap()]
        );
        let err = validate_scopes("scopes", &["x".into()]).unwrap_err();
        assert!(err.violations[0].description.contains("resource:action"));
    }

    #[test]
    fn allowlist_limits() {
        let mut input = good();
        input.ip_allowlist = (0..=MAX_ALLOWLIST)
            .map(|i| format!("10.0.{i}.0/24"))
            .collect();
        assert_eq!(fields(validate(input)), ["ip_allowlist"]);
        let mut input = good();
        input.ip_allowlist = vec!["1.2.3.4".into(), "10.0.0.0/33".into()];
        let err = validate(input).unwrap_err();
        assert_eq!(err.violations[0].field, "ip_allowlist[1]");
        assert!(err.violations[0].description.contains("10.0.0.0/33"));
        let mut input = good();
        input.ip_allowlist = vec!["::ffff:1.2.3.4".into(), "1.2.3.4".into()];
        assert_eq!(validate(input).unwrap().ip_allowlist.len(), 1);
    }

    #[test]
    fn rate_limit() {
        let mut input = good();
        input.rate_limit_per_hour = Some(1);
        assert!(validate(input).is_ok());
        let mut input = good();
        input.rate_limit_per_hour = Some(0);
        assert_eq!(fields(validate(input)), ["rate_limit_per_hour"]);
    }

    #[test]
    fn expiry_rules() {
        let at = |e| {
            let mut input = good();
            input.expiry = e;
            validate(input)
        };
        assert_eq!(at(Expiry::Never).unwrap().expires_at, None);
        let future = now() + Duration::seconds(1);
        assert_eq!(at(Expiry::At(future)).unwrap().expires_at, Some(future));
        assert_eq!(fields(at(Expiry::At(now()))), ["expires_at"]);
        assert_eq!(
            fields(at(Expiry::At(now() - Duration::days(1)))),
            ["expires_at"]
        );
        assert_eq!(fields(at(Expiry::Ttl(Duration::zero()))), ["ttl"]);
        assert_eq!(fields(at(Expiry::Ttl(Duration::seconds(-5)))), ["ttl"]);
        assert_eq!(fields(at(Expiry::Ttl(Duration::MAX))), ["ttl"]);
        assert_eq!(validate_expiry(None, now()), Ok(None));
        assert_eq!(validate_expiry(Some(future), now()), Ok(Some(future)));
        assert_eq!(
            validate_expiry(Some(now()), now()).unwrap_err().violations[0].field,
            "expires_at"
        );
    }

    #[test]
    fn grace_period() {
        assert_eq!(
            validate_grace_period(Duration::zero()),
            Ok(Duration::zero())
        );
        assert_eq!(
            validate_grace_period(Duration::days(30)),
            Ok(Duration::days(30))
        );
        let err = validate_grace_period(Duration::days(30) + Duration::seconds(1)).unwrap_err();
        assert_eq!(err.violations[0].field, "grace_period");
        let err = validate_grace_period(Duration::seconds(-1)).unwrap_err();
        assert_eq!(
            err.violations[0],
            FieldViolation::new("grace_period", "must not be negative")
        );
    }

    #[test]
    fn reason() {
        assert_eq!(validate_reason("  leaked  ").unwrap(), "leaked");
        assert_eq!(validate_reason("").unwrap(), "");
        assert!(validate_reason(&"ü".repeat(MAX_REASON_CHARS)).is_ok());
        let err = validate_reason(&"ü".repeat(MAX_REASON_CHARS + 1)).unwrap_err();
        assert_eq!(err.violations[0].field, "reason");
    }

    #[test]
    fn key_id() {
        assert_eq!(
            validate_key_id("0190abcd-ef01-7000-8000-000000000000"),
            Ok("0190abcd-ef01-7000-8000-000000000000")
        );
        for bad in ["", "a b", "a_b", "é", &"a".repeat(65)] {
            assert_eq!(
                validate_key_id(bad).unwrap_err().violations[0].field,
                "key_id",
                "{bad:?}"
            );
        }
        assert!(validate_key_id(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn error_display() {
        let e = ValidationError {
            violations: vec![
                FieldViolation::new("name", "must not be empty"),
                FieldViolation::new("ttl", "must be positive"),
            ],
        };
        assert_eq!(
            e.to_string(),
            "invalid request: name: must not be empty; ttl: must be positive"
        );
    }
}
