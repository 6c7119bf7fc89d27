//! What the client commands print: aligned tables and key details for
//! people, the proto3 JSON mapping for scripts (`--json`), and the writing
//! itself (a closed pipe, as with `| head`, ends the output quietly).
//!
//! JSON goes through `prost-reflect`: the generated prost types carry no
//! serde support, and hand-written serde would drift from the proto. A
//! `DynamicMessage` built from the API's own descriptor set
//! (`keygate::FILE_DESCRIPTOR_SET`) serializes with the canonical proto3
//! JSON mapping (camelCase names, enum names, RFC 3339 timestamps, `"3600s"`
//! durations, 64-bit integers as strings), the same JSON grpcurl and the
//! Go and Python SDKs' JSON helpers print.
//!
//! The table is a few lines of code rather than a crate: columns padded to
//! their widest cell, two spaces apart, is all it needs.

use std::{
    io::{self, Write},
    sync::LazyLock,
};

use anyhow::Context;
use chrono::{DateTime, Utc};
use keygate::v1 as pb;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};

use super::{error::CliError, time};

/// A response message that can be printed as JSON: its full protobuf name.
pub(super) trait Proto: prost::Message {
    const NAME: &'static str;
}

macro_rules! proto_names {
    ($($ty:ident),* $(,)?) => {
        $(impl Proto for pb::$ty {
            const NAME: &'static str = concat!("keygate.v1.", stringify!($ty));
        })*
    };
}

proto_names!(
    CreateKeyResponse,
    GetKeyResponse,
    ListKeysResponse,
    RotateKeyResponse,
    RevokeKeyResponse,
    DisableKeyResponse,
    EnableKeyResponse,
    GetKeyUsageResponse,
    UpdateKeyResponse,
    DeleteKeyResponse,
    UndeleteKeyResponse,
    ListAuditEventsResponse,
);

/// The API's messages, decoded once from the descriptor set compiled into
/// the `keygate` crate (well-known types included).
static POOL: LazyLock<Result<DescriptorPool, String>> = LazyLock::new(|| {
    DescriptorPool::decode(keygate::FILE_DESCRIPTOR_SET).map_err(|err| err.to_string())
});

/// `message` in the proto3 JSON mapping, pretty-printed, with a newline.
pub(super) fn json<M: Proto>(message: &M) -> anyhow::Result<String> {
    let pool = POOL
        .as_ref()
        .map_err(|err| anyhow::anyhow!("the API descriptor set does not decode: {err}"))?;
    let descriptor = pool
        .get_message_by_name(M::NAME)
        .with_context(|| format!("{} is not in the API descriptor set", M::NAME))?;
    let dynamic = DynamicMessage::decode(descriptor, message.encode_to_vec().as_slice())
        .with_context(|| format!("cannot transcode {}", M::NAME))?;
    let mut out = Vec::new();
    let mut serializer = serde_json::Serializer::pretty(&mut out);
    dynamic
        .serialize_with_options(&mut serializer, &SerializeOptions::new())
        .with_context(|| format!("cannot write {} as JSON", M::NAME))?;
    let mut text = String::from_utf8(out).context("JSON is UTF-8")?;
    text.push('\n');
    Ok(text)
}

/// Writes `text` to stdout. A reader that went away (`| head`) is not an
/// error: there is nobody left to tell.
pub(super) fn stdout(text: &str) -> Result<(), CliError> {
    write_all(&mut io::stdout().lock(), text)
}

/// Writes `text` to stderr.
pub(super) fn stderr(text: &str) -> Result<(), CliError> {
    write_all(&mut io::stderr().lock(), text)
}

fn write_all(out: &mut impl Write, text: &str) -> Result<(), CliError> {
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(err) if err.kind() != io::ErrorKind::BrokenPipe => Err(anyhow::Error::new(err)
            .context("cannot write output")
            .into()),
        _ => Ok(()),
    }
}

/// `s` safe for a terminal: control characters (newlines, escape
/// sequences) in names and server text are shown escaped, never acted on.
pub(super) fn clean(s: &str) -> String {
    if !s.chars().any(char::is_control) {
        return s.to_owned();
    }
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// Rows under a header, each column as wide as its widest cell (counted in
/// characters), two spaces apart, no trailing spaces.
#[derive(Debug)]
pub(super) struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub(super) fn new(header: &[&str]) -> Self {
        Self {
            header: header.iter().map(|h| (*h).to_owned()).collect(),
            rows: Vec::new(),
        }
    }

    pub(super) fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells.iter().map(|c| clean(c)).collect());
    }

    pub(super) fn render(&self) -> String {
        let columns = self.header.len();
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&self.header).chain(&self.rows) {
            let mut line = String::new();
            for (i, cell) in row.iter().enumerate().take(columns) {
                if i > 0 {
                    line.push_str("  ");
                }
                line.push_str(cell);
                let pad = widths[i] - cell.chars().count();
                line.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A key's status for people: `active`, `disabled`, ….
pub(super) fn status(key: &pb::ApiKey) -> &'static str {
    match key.status() {
        pb::KeyStatus::Unspecified => "unknown",
        pb::KeyStatus::Active => "active",
        pb::KeyStatus::Disabled => "disabled",
        pb::KeyStatus::Expired => "expired",
        pb::KeyStatus::Revoked => "revoked",
        pb::KeyStatus::Deleted => "deleted",
    }
}

/// One row per key: id, name, environment, status, scopes, last used,
/// expires.
pub(super) fn key_table(keys: &[pb::ApiKey], now: DateTime<Utc>) -> String {
    let mut table = Table::new(&[
        "ID",
        "NAME",
        "ENVIRONMENT",
        "STATUS",
        "SCOPES",
        "LAST USED",
        "EXPIRES",
    ]);
    for key in keys {
        table.row(vec![
            key.key_id.clone(),
            key.name.clone(),
            key.environment.clone(),
            status(key).to_owned(),
            if key.scopes.is_empty() {
                "-".to_owned()
            } else {
                key.scopes.join(",")
            },
            time::last_used(key.last_used_at.as_ref(), now),
            time::date_or(key.expires_at.as_ref(), "never"),
        ]);
    }
    table.render()
}

/// Everything about one key (never a secret; it is not in `ApiKey`), one
/// field a line.
pub(super) fn key_details(key: &pb::ApiKey, now: DateTime<Utc>) -> String {
    let mut fields: Vec<(&str, String)> = vec![
        ("id", key.key_id.clone()),
        ("name", key.name.clone()),
        ("owner", key.owner_id.clone()),
        ("environment", key.environment.clone()),
        ("status", status(key).to_owned()),
        ("scopes", list_or(&key.scopes, "none")),
        ("ip allowlist", list_or(&key.ip_allowlist, "any address")),
        (
            "rate limit",
            match key.rate_limit_per_hour {
                Some(n) => format!("{n} per hour"),
                None => "server default".to_owned(),
            },
        ),
    ];
    let mut metadata: Vec<_> = key.metadata.iter().collect();
    metadata.sort();
    if metadata.is_empty() {
        fields.push(("metadata", "none".to_owned()));
    }
    for (k, v) in metadata {
        fields.push(("metadata", format!("{k}={v}")));
    }
    fields.push(("secret", format!("{}…{}", key.prefix, key.hint)));
    fields.push(("created", time::date_or(key.created_at.as_ref(), "-")));
    fields.push(("updated", time::date_or(key.updated_at.as_ref(), "-")));
    let last_used = match key.last_used_at.as_ref() {
        Some(ts) => format!(
            "{} ({})",
            time::last_used(Some(ts), now),
            time::date_or(Some(ts), "-")
        ),
        None => "never".to_owned(),
    };
    fields.push(("last used", last_used));
    fields.push(("expires", time::date_or(key.expires_at.as_ref(), "never")));
    if let Some(revoked) = &key.revoked_at {
        let mut text = time::date_or(Some(revoked), "-");
        if !key.revoked_reason.is_empty() {
            text.push_str(&format!(" ({})", key.revoked_reason));
        }
        fields.push(("revoked", text));
    }
    if key.delete_time.is_some() {
        fields.push(("deleted", time::date_or(key.delete_time.as_ref(), "-")));
        fields.push(("purged at", time::date_or(key.purge_time.as_ref(), "-")));
    }
    // Older secrets still in their grace period after a rotation.
    for credential in key.credentials.iter().skip(1) {
        if let Some(until) = &credential.expires_at {
            fields.push((
                "older secret",
                format!(
                    "…{} works until {}",
                    credential.hint,
                    time::date_or(Some(until), "-")
                ),
            ));
        }
    }
    fields.push(("etag", key.etag.clone()));
    let width = fields.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    fields
        .iter()
        .map(|(name, value)| format!("{name:<width$}  {}\n", clean(value)))
        .collect()
}

fn list_or(items: &[String], none: &str) -> String {
    if items.is_empty() {
        none.to_owned()
    } else {
        items.join(", ")
    }
}

/// One row per hour, oldest first, and a total.
pub(super) fn usage_table(buckets: &[pb::UsageBucket]) -> String {
    let mut table = Table::new(&["HOUR (UTC)", "ALLOWED", "RATE LIMITED", "DENIED"]);
    let (mut allowed, mut limited, mut denied) = (0u64, 0u64, 0u64);
    for bucket in buckets {
        allowed = allowed.saturating_add(bucket.allowed);
        limited = limited.saturating_add(bucket.denied_rate_limited);
        denied = denied.saturating_add(bucket.denied_other);
        let hour = bucket
            .start_time
            .as_ref()
            .and_then(time::from_timestamp)
            .map_or_else(
                || "-".to_owned(),
                |t| t.format("%Y-%m-%d %H:00").to_string(),
            );
        table.row(vec![
            hour,
            bucket.allowed.to_string(),
            bucket.denied_rate_limited.to_string(),
            bucket.denied_other.to_string(),
        ]);
    }
    table.row(vec![
        "total".to_owned(),
        allowed.to_string(),
        limited.to_string(),
        denied.to_string(),
    ]);
    table.render()
}

/// One row per event, in the order given (newest first): time, method,
/// key, actor, the fields changed, the reason.
pub(super) fn audit_table(events: &[pb::AuditEvent]) -> String {
    let mut table = Table::new(&["TIME", "METHOD", "KEY", "ACTOR", "CHANGED", "REASON"]);
    for event in events {
        let changed: Vec<&str> = event.changes.iter().map(|c| c.field.as_str()).collect();
        table.row(vec![
            time::date_or(event.time.as_ref(), "-"),
            event.method.clone(),
            event.key_id.clone(),
            if event.actor_key_id.is_empty() {
                "(bootstrap)".to_owned()
            } else {
                event.actor_key_id.clone()
            },
            if changed.is_empty() {
                "-".to_owned()
            } else {
                changed.join(",")
            },
            event.reason.clone(),
        ]);
    }
    table.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_columns_without_trailing_spaces() {
        let mut table = Table::new(&["ID", "NAME", "STATUS"]);
        table.row(vec!["a".into(), "billing service".into(), "active".into()]);
        table.row(vec!["bbbb".into(), "x".into(), "".into()]);
        assert_eq!(
            table.render(),
            "ID    NAME             STATUS\n\
             a     billing service  active\n\
             bbbb  x\n"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(clean("plain ünïcode"), "plain ünïcode");
        assert_eq!(clean("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
        let mut table = Table::new(&["NAME"]);
        table.row(vec!["evil\r\u{1b}[31m".into()]);
        assert!(!table.render().contains('\u{1b}'));
    }

    #[test]
    fn json_is_the_proto3_mapping() {
        let response = pb::GetKeyResponse {
            key: Some(pb::ApiKey {
                key_id: "01abc".into(),
                owner_id: "acme".into(),
                status: pb::KeyStatus::Active.into(),
                rate_limit_per_hour: Some(10),
                expires_at: Some(prost_types::Timestamp {
                    seconds: 1_900_000_000,
                    nanos: 0,
                }),
                metadata: [("plan".to_owned(), "pro".to_owned())].into(),
                ..Default::default()
            }),
        };
        let value: serde_json::Value = serde_json::from_str(&json(&response).unwrap()).unwrap();
        let key = &value["key"];
        assert_eq!(key["keyId"], "01abc");
        assert_eq!(key["ownerId"], "acme");
        assert_eq!(key["status"], "KEY_STATUS_ACTIVE");
        assert_eq!(key["rateLimitPerHour"], 10);
        assert_eq!(key["expiresAt"], "2030-03-17T17:46:40Z");
        assert_eq!(key["metadata"]["plan"], "pro");
        // Defaults are left out, as the mapping says.
        assert!(key.get("revokedReason").is_none());

        let usage = pb::GetKeyUsageResponse {
            buckets: vec![pb::UsageBucket {
                allowed: 5,
                ..Default::default()
            }],
        };
        let value: serde_json::Value = serde_json::from_str(&json(&usage).unwrap()).unwrap();
        assert_eq!(value["buckets"][0]["allowed"], "5");
    }

    #[test]
    fn every_printed_message_is_in_the_descriptor_set() {
        fn check<M: Proto + Default>() {
            json(&M::default()).unwrap_or_else(|err| panic!("{}: {err:#}", M::NAME));
        }
        check::<pb::CreateKeyResponse>();
        check::<pb::GetKeyResponse>();
        check::<pb::ListKeysResponse>();
        check::<pb::RotateKeyResponse>();
        check::<pb::RevokeKeyResponse>();
        check::<pb::DisableKeyResponse>();
        check::<pb::EnableKeyResponse>();
        check::<pb::GetKeyUsageResponse>();
        check::<pb::UpdateKeyResponse>();
        check::<pb::DeleteKeyResponse>();
        check::<pb::UndeleteKeyResponse>();
        check::<pb::ListAuditEventsResponse>();
    }
}
