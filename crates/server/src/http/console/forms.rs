//! The console's forms as posted, and their conversion into API requests.
//! Only what the API cannot say is checked here (a rate limit that is not a
//! number, a date that is not a date, a metadata line without `=`); names,
//! scopes, networks, limits and expiries are validated by the API itself,
//! whose field violations come back next to the same fields.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use serde::Deserialize;

use super::calls::PageError;

/// The create and edit forms (edit leaves `owner_id` and `environment`
/// empty and may send `expiry=keep`).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct KeyForm {
    /// The session's CSRF token.
    pub csrf: String,
    /// Owner of a new key (admins; others create for their own owner).
    pub owner_id: String,
    /// The key's name.
    pub name: String,
    /// Environment of a new key.
    pub environment: String,
    /// Scopes separated by spaces, commas or lines.
    pub scopes: String,
    /// One CIDR network per line.
    pub ip_allowlist: String,
    /// Requests per hour; empty means the server default.
    pub rate_limit_per_hour: String,
    /// `key = value` lines.
    pub metadata: String,
    /// `30d`, `90d`, `365d`, `never`, `custom` or (edit) `keep`.
    pub expiry: String,
    /// The date of a `custom` expiry, `YYYY-MM-DD` (UTC midnight).
    pub expires_on: String,
    /// The etag of the key as the edit form showed it.
    pub etag: String,
}

/// When a key should expire, as a form chose it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Leave it as it is (edit only).
    Keep,
    /// Never.
    Never,
    /// This many days from now.
    Days(u32),
    /// At this time.
    At(DateTime<Utc>),
}

/// A [`KeyForm`] read into API values.
#[derive(Debug, Clone)]
pub struct KeyFields {
    /// Scopes, as typed.
    pub scopes: Vec<String>,
    /// Networks, as typed.
    pub ip_allowlist: Vec<String>,
    /// The rate limit, `None` for the server default.
    pub rate_limit_per_hour: Option<u32>,
    /// Metadata entries.
    pub metadata: HashMap<String, String>,
    /// The expiry chosen.
    pub expiry: Expiry,
}

impl KeyForm {
    /// Reads the form's values; the error names each field it cannot read.
    pub fn fields(&self) -> Result<KeyFields, PageError> {
        let mut error = PageError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "please correct the marked fields",
        );
        let scopes = self
            .scopes
            .split(|c: char| c.is_whitespace() || c == ',')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let ip_allowlist = lines(&self.ip_allowlist).map(str::to_owned).collect();
        let rate = self.rate_limit_per_hour.trim();
        let rate_limit_per_hour = if rate.is_empty() {
            None
        } else {
            match rate.parse::<u32>() {
                Ok(n) => Some(n),
                Err(_) => {
                    error.add(
                        "rate_limit_per_hour",
                        "must be a whole number of requests per hour, or empty for the default",
                    );
                    None
                }
            }
        };
        let mut metadata = HashMap::new();
        for (i, line) in lines(&self.metadata).enumerate() {
            match line.split_once('=') {
                Some((k, v)) => {
                    metadata.insert(k.trim().to_owned(), v.trim().to_owned());
                }
                None => error.add("metadata", format!("line {}: write key = value", i + 1)),
            }
        }
        let expiry = match self.expiry.as_str() {
            "keep" => Expiry::Keep,
            "" | "never" => Expiry::Never,
            "30d" => Expiry::Days(30),
            "90d" => Expiry::Days(90),
            "365d" => Expiry::Days(365),
            "custom" => match parse_date(&self.expires_on) {
                Some(at) => Expiry::At(at),
                None => {
                    error.add("expires_at", "pick a date (YYYY-MM-DD) for a custom expiry");
                    Expiry::Never
                }
            },
            _ => {
                error.add("expires_at", "choose one of the expiry options");
                Expiry::Never
            }
        };
        if error.fields.is_empty() {
            Ok(KeyFields {
                scopes,
                ip_allowlist,
                rate_limit_per_hour,
                metadata,
                expiry,
            })
        } else {
            Err(error)
        }
    }
}

fn lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().map(str::trim).filter(|l| !l.is_empty())
}

/// `YYYY-MM-DD` as midnight UTC.
pub fn parse_date(text: &str) -> Option<DateTime<Utc>> {
    NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// A `datetime-local` value (`YYYY-MM-DDTHH:MM`, seconds optional) or a
/// date, read as UTC.
pub fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
        .map(|t| t.and_utc())
        .ok()
        .or_else(|| parse_date(text))
}

/// Metadata as the edit form shows it: sorted `key = value` lines.
pub fn metadata_lines(metadata: &HashMap<String, String>) -> String {
    let mut entries: Vec<_> = metadata.iter().collect();
    entries.sort();
    entries
        .into_iter()
        .map(|(k, v)| format!("{k} = {v}\n"))
        .collect()
}

/// The body of a form with only the CSRF token and optional extras: the
/// key actions (rotate, revoke, disable, …).
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(default)]
pub struct ActionForm {
    /// The session's CSRF token.
    pub csrf: String,
    /// The key's etag as the page showed it.
    pub etag: String,
    /// Rotation grace: `0`, `1h`, `24h` or `7d`.
    pub grace: String,
    /// Why a key is revoked.
    pub reason: String,
    /// The key's name, typed to confirm a revocation.
    pub confirm: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_read_into_api_values() {
        let form = KeyForm {
            scopes: "dns:read, dns:write\nbilling:*".into(),
            ip_allowlist: "10.0.0.0/8\n\n 192.168.1.1/32 \n".into(),
            rate_limit_per_hour: " 500 ".into(),
            metadata: "plan = pro\nteam=core = x\n".into(),
            expiry: "90d".into(),
            ..KeyForm::default()
        };
        let fields = form.fields().expect("valid");
        assert_eq!(fields.scopes, ["dns:read", "dns:write", "billing:*"]);
        assert_eq!(fields.ip_allowlist, ["10.0.0.0/8", "192.168.1.1/32"]);
        assert_eq!(fields.rate_limit_per_hour, Some(500));
        assert_eq!(fields.metadata["team"], "core = x");
        assert_eq!(fields.expiry, Expiry::Days(90));
    }

    #[test]
    fn unreadable_fields_are_named() {
        let form = KeyForm {
            rate_limit_per_hour: "lots".into(),
            metadata: "no equals sign".into(),
            expiry: "custom".into(),
            expires_on: "tomorrow".into(),
            ..KeyForm::default()
        };
        let error = form.fields().unwrap_err();
        assert!(error.on("rate_limit_per_hour").is_some());
        assert!(error.on("metadata").is_some_and(|m| m.contains("line 1")));
        assert!(error.on("expires_at").is_some());
    }

    #[test]
    fn times_parse_as_utc() {
        assert_eq!(
            parse_time("2030-01-02T03:04").map(|t| t.to_rfc3339()),
            Some("2030-01-02T03:04:00+00:00".into())
        );
        assert!(parse_time("2030-01-02").is_some());
        assert!(parse_time("soon").is_none());
    }
}
