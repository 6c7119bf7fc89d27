//! Input validation for management and authorization calls, done once at the
//! edge so the rest of the code handles only well-formed values. Every
//! function reports all problems at once (up to [`MAX_VIOLATIONS`], then one
//! more saying how many were left out), each naming the offending field by
//! its protobuf name (`scopes[3]`), so the server can return them as
//! `BadRequest` field violations.
//!
//! Error messages quote user input only through [`quote`], which cuts it to
//! [`MAX_QUOTED_CHARS`] characters, so no request can make an error large.

use std::{collections::BTreeMap, fmt};

use chrono::{DateTime, Duration, Utc};
use ipnet::IpNet;

use crate::allowlist;
use crate::environment::Environments;
use crate::ratelimit::Quota;
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
/// Most metadata entries on one key.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Longest metadata key, in characters (of `[a-zA-Z0-9_.-]`).
pub const MAX_METADATA_KEY_CHARS: usize = 64;
/// Longest metadata value, in bytes.
pub const MAX_METADATA_VALUE_BYTES: usize = 512;
/// Most field violations reported for one request; the rest are counted in
/// one extra violation.
pub const MAX_VIOLATIONS: usize = 10;
/// Most characters of user input [`quote`] repeats in an error message.
pub const MAX_QUOTED_CHARS: usize = 64;

/// Quotes user input for an error message: `{:?}` (quotes, control
/// characters escaped) of at most [`MAX_QUOTED_CHARS`] characters, cut on a
/// character boundary and followed by `…` outside the quotes when cut. The
/// escapes count too, so what appears between the quotes is never more than
/// [`MAX_QUOTED_CHARS`] characters even for input made of control
/// characters. Every message that repeats user input goes through here.
pub fn quote(input: &str) -> String {
    let mut width = 0;
    for (at, c) in input.char_indices() {
        width += c.escape_debug().len();
        if width > MAX_QUOTED_CHARS {
            return format!("{:?}…", &input[..at]);
        }
    }
    format!("{input:?}")
}

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
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
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

    /// An error with `violations`, keeping the first [`MAX_VIOLATIONS`] and
    /// replacing the rest by one violation (on the first field left out)
    /// that says how many there were.
    pub fn new(violations: Vec<FieldViolation>) -> Self {
        let mut v = Violations::default();
        for violation in violations {
            v.push(violation);
        }
        v.into_error()
    }

    /// This error with at most [`MAX_VIOLATIONS`] violations plus the one
    /// counting the rest; see [`ValidationError::new`]. An error already
    /// within the bound is returned as it is.
    pub fn capped(self) -> Self {
        if self.violations.len() <= MAX_VIOLATIONS + 1 {
            self
        } else {
            Self::new(self.violations)
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

/// Collects violations, keeping the first [`MAX_VIOLATIONS`] and counting
/// the rest; turns into a result at the end.
#[derive(Debug, Default)]
struct Violations {
    kept: Vec<FieldViolation>,
    /// The field of the first violation left out, and how many were.
    omitted: Option<(String, usize)>,
}

impl Violations {
    fn add(&mut self, field: impl Into<String>, description: impl Into<String>) {
        if self.kept.len() < MAX_VIOLATIONS {
            self.kept.push(FieldViolation::new(field, description));
        } else {
            self.count_omitted(field.into());
        }
    }

    fn push(&mut self, violation: FieldViolation) {
        if self.kept.len() < MAX_VIOLATIONS {
            self.kept.push(violation);
        } else {
            self.count_omitted(violation.field);
        }
    }

    fn count_omitted(&mut self, field: String) {
        match &mut self.omitted {
            Some((_, n)) => *n += 1,
            None => self.omitted = Some((field, 1)),
        }
    }

    fn extend(&mut self, err: ValidationError) {
        for violation in err.violations {
            self.push(violation);
        }
    }

    fn is_empty(&self) -> bool {
        self.kept.is_empty()
    }

    fn into_error(mut self) -> ValidationError {
        if let Some((field, n)) = self.omitted {
            let description = if n == 1 {
                "1 more problem from this field on is not shown".to_owned()
            } else {
                format!("{n} more problems from this field on are not shown")
            };
            self.kept.push(FieldViolation::new(field, description));
        }
        ValidationError {
            violations: self.kept,
        }
    }

    fn finish<T>(self, value: T) -> Result<T, ValidationError> {
        if self.is_empty() {
            Ok(value)
        } else {
            Err(self.into_error())
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
    /// The owner's own data, unchecked.
    pub metadata: BTreeMap<String, String>,
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
    /// Within the metadata limits.
    pub metadata: BTreeMap<String, String>,
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
            format!("unknown environment {}", quote(&input.environment))
        };
        v.add(
            "environment",
            format!(
                "{description}; configured: {}",
                environments.names().join(", ")
            ),
        );
    }

    let scopes = scopes_into(&mut v, "scopes", &input.scopes);

    let ip_allowlist = allowlist_into(&mut v, "", &input.ip_allowlist);
    rate_limit_into(&mut v, "", input.rate_limit_per_hour);
    metadata_into(&mut v, "", &input.metadata);

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
        metadata: input.metadata,
    })
}

/// Parses allowlist entries (field `{prefix}ip_allowlist`): at most
/// [`MAX_ALLOWLIST`], duplicates removed preserving order.
fn allowlist_into(v: &mut Violations, prefix: &str, raw: &[String]) -> Vec<IpNet> {
    let mut out: Vec<IpNet> = Vec::new();
    if raw.len() > MAX_ALLOWLIST {
        v.add(
            format!("{prefix}ip_allowlist"),
            format!(
                "must have at most {MAX_ALLOWLIST} entries, got {}",
                raw.len()
            ),
        );
        return out;
    }
    for (i, entry) in raw.iter().enumerate() {
        match allowlist::parse_network(entry) {
            Ok(net) if !out.contains(&net) => out.push(net),
            Ok(_) => {}
            Err(e) => v.add(format!("{prefix}ip_allowlist[{i}]"), e.to_string()),
        }
    }
    out
}

/// Checks a per-key rate limit (field `{prefix}rate_limit_per_hour`), if set.
fn rate_limit_into(v: &mut Violations, prefix: &str, limit: Option<u32>) {
    if let Some(n) = limit
        && Quota::per_hour(n).is_none()
    {
        v.add(
            format!("{prefix}rate_limit_per_hour"),
            "must be at least 1 when set",
        );
    }
}

/// Checks metadata (field `{prefix}metadata`): at most [`MAX_METADATA_ENTRIES`]
/// entries, keys of 1 to [`MAX_METADATA_KEY_CHARS`] characters of
/// `[a-zA-Z0-9_.-]`, values of at most [`MAX_METADATA_VALUE_BYTES`] bytes
/// without control characters. A bad entry is named `metadata["<key>"]`.
fn metadata_into(v: &mut Violations, prefix: &str, metadata: &BTreeMap<String, String>) {
    if metadata.len() > MAX_METADATA_ENTRIES {
        v.add(
            format!("{prefix}metadata"),
            format!(
                "must have at most {MAX_METADATA_ENTRIES} entries, got {}",
                metadata.len()
            ),
        );
        return;
    }
    for (key, value) in metadata {
        let field = || format!("{prefix}metadata[{}]", quote(key));
        if key.is_empty() || key.len() > MAX_METADATA_KEY_CHARS {
            v.add(
                field(),
                format!("key must be 1 to {MAX_METADATA_KEY_CHARS} characters"),
            );
        } else if !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
        {
            v.add(
                field(),
                "key must contain only letters, digits, '_', '.' and '-'",
            );
        } else if value.len() > MAX_METADATA_VALUE_BYTES {
            v.add(
                field(),
                format!(
                    "value must be at most {MAX_METADATA_VALUE_BYTES} bytes, got {}",
                    value.len()
                ),
            );
        } else if value.chars().any(char::is_control) {
            v.add(field(), "value must not contain control characters");
        }
    }
}

/// The fields UpdateKey may change, as named in its `update_mask`.
pub const UPDATABLE_FIELDS: [&str; 6] = [
    "name",
    "scopes",
    "ip_allowlist",
    "rate_limit_per_hour",
    "metadata",
    "expires_at",
];

/// An UpdateKey request as received: the mask's paths and the values the
/// request carries for them (the others are ignored).
#[derive(Clone, Debug, Default)]
pub struct KeyPatchInput {
    /// `update_mask.paths`.
    pub paths: Vec<String>,
    /// New name.
    pub name: String,
    /// New scopes, unparsed.
    pub scopes: Vec<String>,
    /// New allowlist, unparsed.
    pub ip_allowlist: Vec<String>,
    /// New rate limit; `None` = the server default.
    pub rate_limit_per_hour: Option<u32>,
    /// New metadata.
    pub metadata: BTreeMap<String, String>,
    /// New expiry; `None` = never.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A validated UpdateKey request: `Some` for each field to change.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KeyPatch {
    /// Trimmed name.
    pub name: Option<String>,
    /// Parsed scopes, duplicates removed.
    pub scopes: Option<Vec<Scope>>,
    /// Parsed networks, duplicates removed.
    pub ip_allowlist: Option<Vec<IpNet>>,
    /// `Some(None)`: back to the server default.
    pub rate_limit_per_hour: Option<Option<u32>>,
    /// The whole new metadata.
    pub metadata: Option<BTreeMap<String, String>>,
    /// `Some(None)`: never expires.
    pub expires_at: Option<Option<DateTime<Utc>>>,
}

/// Validates an UpdateKey request, reporting every problem at once: the
/// mask must name at least one field, only [`UPDATABLE_FIELDS`], each once;
/// the named values are checked as CreateKey checks them (a name is
/// required, an expiry must be in the future).
pub fn validate_key_patch(
    input: KeyPatchInput,
    now: DateTime<Utc>,
) -> Result<KeyPatch, ValidationError> {
    let mut v = Violations::default();
    let mut patch = KeyPatch::default();
    if input.paths.is_empty() {
        v.add(
            "update_mask",
            format!(
                "must name the fields to change, of: {}",
                UPDATABLE_FIELDS.join(", ")
            ),
        );
    }
    let mut seen: Vec<&str> = Vec::new();
    for (i, path) in input.paths.iter().enumerate() {
        let field = format!("update_mask.paths[{i}]");
        let path = path.as_str();
        if seen.contains(&path) {
            v.add(field, format!("{} is named twice", quote(path)));
            continue;
        }
        seen.push(path);
        match path {
            "name" => {
                patch.name = Some(text_field(&mut v, "key.name", &input.name, MAX_NAME_CHARS));
            }
            "scopes" => patch.scopes = Some(scopes_into(&mut v, "key.scopes", &input.scopes)),
            "ip_allowlist" => {
                patch.ip_allowlist = Some(allowlist_into(&mut v, "key.", &input.ip_allowlist));
            }
            "rate_limit_per_hour" => {
                rate_limit_into(&mut v, "key.", input.rate_limit_per_hour);
                patch.rate_limit_per_hour = Some(input.rate_limit_per_hour);
            }
            "metadata" => {
                metadata_into(&mut v, "key.", &input.metadata);
                patch.metadata = Some(input.metadata.clone());
            }
            "expires_at" => {
                let at = validate_expiry(input.expires_at, now).unwrap_or_else(|e| {
                    for violation in e.violations {
                        v.add(format!("key.{}", violation.field), violation.description);
                    }
                    None
                });
                patch.expires_at = Some(at);
            }
            other => v.add(
                field,
                format!(
                    "{} cannot be updated; updatable: {}",
                    quote(other),
                    UPDATABLE_FIELDS.join(", ")
                ),
            ),
        }
    }
    v.finish(patch)
}

/// Parses scopes for `field` (such as `scopes` or `required_scopes`): at most
/// [`MAX_SCOPES`], each trimmed and valid (`field[i]` names a bad one),
/// duplicates removed preserving order.
pub fn validate_scopes(field: &str, raw: &[String]) -> Result<Vec<Scope>, ValidationError> {
    let mut v = Violations::default();
    let out = scopes_into(&mut v, field, raw);
    v.finish(out)
}

/// [`validate_scopes`], adding its violations to `v`.
fn scopes_into(v: &mut Violations, field: &str, raw: &[String]) -> Vec<Scope> {
    let mut out: Vec<Scope> = Vec::new();
    if raw.len() > MAX_SCOPES {
        v.add(
            field,
            format!("must have at most {MAX_SCOPES} entries, got {}", raw.len()),
        );
        return out;
    }
    for (i, s) in raw.iter().enumerate() {
        match Scope::parse(s.trim()) {
            Ok(scope) if !out.contains(&scope) => out.push(scope),
            Ok(_) => {}
            Err(ScopeError::Empty) => v.add(format!("{field}[{i}]"), "must not be empty"),
            Err(e) => v.add(format!("{field}[{i}]"), e.to_string()),
        }
    }
    out
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
    use proptest::prelude::*;

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
            metadata: [("plan".to_owned(), "pro".to_owned())].into(),
        }
    }

    fn metadata(entries: &[(&str, &str)]) -> BTreeMap<String, String> {
        entries
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metadata_limits_name_the_entry() {
        let long_key = "k".repeat(MAX_METADATA_KEY_CHARS + 1);
        let long_value = "v".repeat(MAX_METADATA_VALUE_BYTES + 1);
        let input = NewKeyInput {
            metadata: metadata(&[
                ("plan", "pro"),
                ("bad key", "x"),
                ("", "x"),
                (&long_key, "x"),
                ("big", &long_value),
                ("ctl", "a\nb"),
                ("fits", &"v".repeat(MAX_METADATA_VALUE_BYTES)),
            ]),
            ..good()
        };
        let err = validate(input).unwrap_err();
        let described: Vec<String> = err.violations.iter().map(ToString::to_string).collect();
        assert_eq!(err.violations.len(), 5, "{described:?}");
        assert!(
            described
                .iter()
                .any(|d| d.contains("metadata[\"bad key\"]") && d.contains("only letters"))
        );
        assert!(
            described
                .iter()
                .any(|d| d.contains("metadata[\"big\"]") && d.contains("at most 512 bytes"))
        );
        assert!(
            described
                .iter()
                .any(|d| d.contains("metadata[\"ctl\"]") && d.contains("control"))
        );

        let too_many: BTreeMap<String, String> = (0..=MAX_METADATA_ENTRIES)
            .map(|i| (format!("k{i}"), "v".to_owned()))
            .collect();
        let err = validate(NewKeyInput {
            metadata: too_many,
            ..good()
        })
        .unwrap_err();
        assert_eq!(err.violations[0].field, "metadata");
        assert!(err.violations[0].description.contains("at most 32 entries"));
        let k = validate(good()).unwrap();
        assert_eq!(k.metadata, metadata(&[("plan", "pro")]));
    }

    fn patch(paths: &[&str]) -> KeyPatchInput {
        KeyPatchInput {
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
            name: " renamed ".into(),
            scopes: vec!["dns:read".into(), "dns:read".into()],
            ip_allowlist: vec!["10.0.0.0/8".into()],
            rate_limit_per_hour: Some(60),
            metadata: metadata(&[("tier", "gold")]),
            expires_at: Some(now() + Duration::days(1)),
        }
    }

    #[test]
    fn a_patch_changes_only_the_masked_fields() {
        let p = validate_key_patch(patch(&["name", "rate_limit_per_hour"]), now()).unwrap();
        assert_eq!(p.name.as_deref(), Some("renamed"));
        assert_eq!(p.rate_limit_per_hour, Some(Some(60)));
        assert_eq!(
            (p.scopes, p.ip_allowlist, p.metadata, p.expires_at),
            (None, None, None, None)
        );

        let all = validate_key_patch(patch(&UPDATABLE_FIELDS), now()).unwrap();
        assert_eq!(all.scopes.unwrap().len(), 1);
        assert_eq!(all.metadata.unwrap(), metadata(&[("tier", "gold")]));
        assert_eq!(all.expires_at, Some(Some(now() + Duration::days(1))));

        // Named but unset: cleared.
        let cleared = validate_key_patch(
            KeyPatchInput {
                rate_limit_per_hour: None,
                expires_at: None,
                metadata: BTreeMap::new(),
                scopes: Vec::new(),
                ..patch(&["rate_limit_per_hour", "expires_at", "metadata", "scopes"])
            },
            now(),
        )
        .unwrap();
        assert_eq!(cleared.rate_limit_per_hour, Some(None));
        assert_eq!(cleared.expires_at, Some(None));
        assert_eq!(cleared.metadata, Some(BTreeMap::new()));
        assert_eq!(cleared.scopes, Some(Vec::new()));
    }

    #[test]
    fn a_bad_patch_names_every_problem() {
        let err = validate_key_patch(patch(&[]), now()).unwrap_err();
        assert_eq!(fields::<KeyPatch>(Err(err)), ["update_mask"]);

        let input = KeyPatchInput {
            name: "  ".into(),
            rate_limit_per_hour: Some(0),
            expires_at: Some(now()),
            ..patch(&[
                "name",
                "state",
                "rate_limit_per_hour",
                "expires_at",
                "name",
                "owner_id",
            ])
        };
        let err = validate_key_patch(input, now()).unwrap_err();
        let described: Vec<String> = err.violations.iter().map(ToString::to_string).collect();
        assert_eq!(
            fields::<KeyPatch>(Err(err)),
            [
                "key.name",
                "update_mask.paths[1]",
                "key.rate_limit_per_hour",
                "key.expires_at",
                "update_mask.paths[4]",
                "update_mask.paths[5]",
            ],
            "{described:?}"
        );
        assert!(described[1].contains("\"state\" cannot be updated; updatable: name, scopes"));
        assert!(described[4].contains("named twice"));
    }

    fn validate(input: NewKeyInput) -> Result<NewKey, ValidationError> {
        validate_new_key(input, &Environments::default(), now())
    }

    fn fields<T: std::fmt::Debug>(r: Result<T, ValidationError>) -> Vec<String> {
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
            metadata: Default::default(),
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
    fn quote_cuts_long_input_on_a_char_boundary() {
        assert_eq!(quote(""), r#""""#);
        assert_eq!(quote("prod"), r#""prod""#);
        assert_eq!(quote("a\nb\u{7}"), r#""a\nb\u{7}""#);
        let exact = "x".repeat(MAX_QUOTED_CHARS);
        assert_eq!(quote(&exact), format!("{exact:?}"));
        let long = "y".repeat(5_000);
        assert_eq!(quote(&long), format!("{:?}…", "y".repeat(MAX_QUOTED_CHARS)));
        // Multi-byte characters are counted as characters and never split.
        let wide = "é".repeat(MAX_QUOTED_CHARS + 1);
        assert_eq!(quote(&wide), format!("{:?}…", "é".repeat(MAX_QUOTED_CHARS)));
        // Escapes count: 64 control characters are cut to 12 (`\u{1}` is 5
        // characters), and what is quoted stays within 64 characters.
        let control = "\u{1}".repeat(MAX_QUOTED_CHARS);
        assert_eq!(quote(&control), format!("{:?}…", "\u{1}".repeat(12)));
        assert_eq!(quote("\n\n"), r#""\n\n""#);
        let mixed = format!("{}😀😀", "a".repeat(MAX_QUOTED_CHARS - 1));
        assert_eq!(
            quote(&mixed),
            format!("\"{}😀\"…", "a".repeat(MAX_QUOTED_CHARS - 1))
        );
    }

    #[test]
    fn long_input_is_quoted_short_and_the_field_named() {
        let huge = "Z".repeat(5_000);
        let err = validate_scopes("required_scopes", std::slice::from_ref(&huge)).unwrap_err();
        assert_eq!(err.violations.len(), 1);
        assert_eq!(err.violations[0].field, "required_scopes[0]");
        let d = &err.violations[0].description;
        assert!(d.contains(&quote(&huge)), "{d}");
        assert!(quote(&huge).ends_with('…'));
        assert!(d.contains("too long"), "{d}");
        assert!(d.len() < 400, "{} bytes: {d}", d.len());

        let mut input = good();
        input.environment = huge.clone();
        input.ip_allowlist = vec![huge.clone()];
        let err = validate(input).unwrap_err();
        assert_eq!(err.violations[0].field, "environment");
        assert_eq!(err.violations[1].field, "ip_allowlist[0]");
        for v in &err.violations {
            assert!(!v.description.contains(&"Z".repeat(65)), "{v}");
            assert!(v.description.len() < 400, "{v}");
        }
    }

    #[test]
    fn violations_are_capped_with_a_count_of_the_rest() {
        let mut input = good();
        input.scopes = (0..MAX_SCOPES).map(|i| format!("BAD{i}")).collect();
        input.ip_allowlist = (0..MAX_ALLOWLIST).map(|i| format!("nope{i}")).collect();
        let err = validate(input).unwrap_err();
        assert_eq!(err.violations.len(), MAX_VIOLATIONS + 1);
        assert_eq!(err.violations[0].field, "scopes[0]");
        assert_eq!(err.violations[MAX_VIOLATIONS - 1].field, "scopes[9]");
        let last = &err.violations[MAX_VIOLATIONS];
        assert_eq!(last.field, "scopes[10]");
        assert_eq!(
            last.description,
            "190 more problems from this field on are not shown"
        );
        assert!(err.to_string().len() < 4 * 1024, "{err}");

        let err = validate_scopes(
            "required_scopes",
            &(0..11).map(|_| "x".to_owned()).collect::<Vec<_>>(),
        )
        .unwrap_err();
        assert_eq!(err.violations.len(), MAX_VIOLATIONS + 1);
        assert_eq!(
            err.violations[MAX_VIOLATIONS],
            FieldViolation::new(
                "required_scopes[10]",
                "1 more problem from this field on is not shown"
            )
        );

        // Too many entries is one violation, not one per entry.
        let many: Vec<String> = (0..10_000).map(|_| "x".repeat(1_000)).collect();
        let err = validate_scopes("scopes", &many).unwrap_err();
        assert_eq!(
            err.violations,
            [FieldViolation::new(
                "scopes",
                "must have at most 100 entries, got 10000"
            )]
        );
    }

    #[test]
    fn errors_built_elsewhere_are_capped_too() {
        let many: Vec<FieldViolation> = (0..25)
            .map(|i| FieldViolation::new(format!("f{i}"), "bad"))
            .collect();
        let err = ValidationError::new(many.clone());
        assert_eq!(err.violations.len(), MAX_VIOLATIONS + 1);
        assert_eq!(err.violations[MAX_VIOLATIONS].field, "f10");
        assert!(
            err.violations[MAX_VIOLATIONS]
                .description
                .starts_with("15 more")
        );
        let capped = ValidationError {
            violations: many.clone(),
        }
        .capped();
        assert_eq!(capped, err);
        let small = ValidationError {
            violations: many[..3].to_vec(),
        };
        assert_eq!(small.clone().capped(), small);
    }

    #[test]
    fn every_positive_rate_limit_is_accepted_and_safe() {
        let mut input = good();
        input.rate_limit_per_hour = Some(u32::MAX);
        let k = validate(input).unwrap();
        let quota = Quota::per_hour(k.rate_limit_per_hour.unwrap()).unwrap();
        assert!(quota.window_nanos() <= crate::ratelimit::PERIOD_NANOS);
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

    /// Arbitrary text: printable, any character, or bytes read lossily.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "\\PC{0,80}",
            ".{0,300}",
            proptest::collection::vec(any::<u8>(), 0..300)
                .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        ]
    }

    const FIELDS: &[&str] = &[
        "owner_id",
        "name",
        "environment",
        "scopes",
        "ip_allowlist",
        "rate_limit_per_hour",
    ];

    proptest! {
        #[test]
        fn any_new_key_input_is_judged_with_bounded_named_errors(
            owner_id in text(),
            name in text(),
            environment in text(),
            scopes in proptest::collection::vec(text(), 0..120),
            ip_allowlist in proptest::collection::vec(text(), 0..120),
            rate_limit_per_hour in any::<Option<u32>>(),
        ) {
            let input = NewKeyInput {
                owner_id, name, environment, scopes, ip_allowlist, rate_limit_per_hour,
                expiry: Expiry::Never,
                metadata: Default::default(),
            };
            if let Err(err) = validate(input) {
                prop_assert!(!err.violations.is_empty());
                prop_assert!(err.violations.len() <= MAX_VIOLATIONS + 1);
                for v in &err.violations {
                    let root = v.field.split('[').next().unwrap_or_default();
                    prop_assert!(FIELDS.contains(&root), "unknown field {}", v.field);
                    prop_assert!(!v.description.is_empty());
                    // 64 quoted characters of at most 4 bytes each.
                    prop_assert!(v.description.len() <= 4 * MAX_QUOTED_CHARS + 300, "{}", v);
                }
            }
        }

        #[test]
        fn quote_is_bounded_and_a_prefix_of_the_debug_form(input in text()) {
            let q = quote(&input);
            let width: usize = input.chars().map(|c| c.escape_debug().len()).sum();
            prop_assert_eq!(q.ends_with('…'), width > MAX_QUOTED_CHARS);
            let inner = q.strip_suffix('…').unwrap_or(&q);
            // The Debug form of a prefix of the input, quotes included.
            prop_assert!(inner.starts_with('"') && inner.ends_with('"'), "{}", q);
            let full = format!("{input:?}");
            prop_assert!(full.starts_with(&inner[..inner.len() - 1]), "{} / {}", q, full);
            prop_assert!(inner.chars().count() <= MAX_QUOTED_CHARS + 2, "{}", q);
            if width <= MAX_QUOTED_CHARS {
                prop_assert_eq!(q, full);
            }
        }
    }
}
