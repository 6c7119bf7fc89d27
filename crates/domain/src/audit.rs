//! The audit log's model: one [`AuditEvent`] per successful change to a
//! key, saying who changed what from what to what.
//!
//! What changed is worked out by comparing the key before and after
//! ([`changes`]), field by field, so every kind of change (an update, a
//! revocation, a rotation, a deletion) is described the same way and none
//! can forget a field. Values are text; a secret, its hash or its salt is
//! never among them (a rotation shows the credentials' lookup ids, which
//! ApiKey shows too).

use chrono::{DateTime, SecondsFormat, Utc};

use crate::{ApiKey, scope::Scope};

/// One field a change set.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldChange {
    /// The field, as ApiKey names it (`scopes`, `status`), or
    /// `metadata.<key>` for one metadata entry.
    pub field: String,
    /// The value before; empty when unset.
    pub old_value: String,
    /// The value after; empty when unset.
    pub new_value: String,
}

/// Who made a change and how, known before it is made; storage completes
/// it into an [`AuditEvent`] in the change's transaction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Actor {
    /// The management key making the change; empty for bootstrap.
    pub key_id: String,
    /// Its owner.
    pub owner_id: String,
    /// The RPC, such as `RevokeKey`.
    pub method: String,
    /// Where the call came from, when known.
    pub peer_address: String,
    /// The reason given with the change, if any.
    pub reason: String,
}

/// One successful change to a key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEvent {
    /// Unique, time-ordered id.
    pub event_id: String,
    /// When.
    pub time: DateTime<Utc>,
    /// The management key that made the change; empty for bootstrap.
    pub actor_key_id: String,
    /// Its owner.
    pub actor_owner_id: String,
    /// The RPC.
    pub method: String,
    /// The key changed.
    pub key_id: String,
    /// Its owner.
    pub owner_id: String,
    /// Its environment.
    pub environment: String,
    /// Where the call came from.
    pub peer_address: String,
    /// What changed.
    pub changes: Vec<FieldChange>,
    /// The reason given.
    pub reason: String,
}

impl Actor {
    /// The event for the change of `before` (`None`: created) into `after`.
    pub fn event(
        &self,
        event_id: String,
        time: DateTime<Utc>,
        before: Option<&ApiKey>,
        after: &ApiKey,
    ) -> AuditEvent {
        AuditEvent {
            event_id,
            time,
            actor_key_id: self.key_id.clone(),
            actor_owner_id: self.owner_id.clone(),
            method: self.method.clone(),
            key_id: after.id.clone(),
            owner_id: after.owner_id.clone(),
            environment: after.environment.clone(),
            peer_address: self.peer_address.clone(),
            changes: changes(before, after),
            reason: self.reason.clone(),
        }
    }
}

fn time(at: Option<DateTime<Utc>>) -> String {
    at.map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn joined<T: ToString>(items: &[T]) -> String {
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

/// The status as the audit log names it: `deleted`, or the stored state
/// (`active`, `disabled`, `revoked`); expiry is not a change.
fn status(key: &ApiKey) -> String {
    if key.deleted_at.is_some() {
        "deleted".to_owned()
    } else {
        key.state.as_str().to_owned()
    }
}

/// The fields that differ between `before` (`None`: nothing, for a key
/// just created) and `after`, in ApiKey order, then one entry per metadata
/// key added, changed or removed.
pub fn changes(before: Option<&ApiKey>, after: &ApiKey) -> Vec<FieldChange> {
    type Field = (&'static str, fn(&ApiKey) -> String);
    let fields: [Field; 10] = [
        ("name", |k| k.name.clone()),
        ("scopes", |k| {
            joined(&k.scopes.iter().map(Scope::as_str).collect::<Vec<_>>())
        }),
        ("ip_allowlist", |k| joined(&k.ip_allowlist)),
        ("rate_limit_per_hour", |k| {
            k.rate_limit_per_hour
                .map(|n| n.to_string())
                .unwrap_or_default()
        }),
        ("status", status),
        ("expires_at", |k| time(k.expires_at)),
        ("credentials", |k| {
            joined(
                &k.credentials
                    .iter()
                    .map(|c| c.lookup_id.as_str())
                    .collect::<Vec<_>>(),
            )
        }),
        ("revoked_reason", |k| {
            k.revoked_reason.clone().unwrap_or_default()
        }),
        ("delete_time", |k| time(k.deleted_at)),
        ("purge_time", |k| time(k.purge_at)),
    ];
    let mut out = Vec::new();
    for (field, value) in fields {
        let old_value = before.map(value).unwrap_or_default();
        let new_value = value(after);
        if old_value != new_value {
            out.push(FieldChange {
                field: field.to_owned(),
                old_value,
                new_value,
            });
        }
    }
    let empty = std::collections::BTreeMap::new();
    let old_metadata = before.map_or(&empty, |k| &k.metadata);
    let keys: std::collections::BTreeSet<&String> =
        old_metadata.keys().chain(after.metadata.keys()).collect();
    for key in keys {
        let old_value = old_metadata.get(key).cloned().unwrap_or_default();
        let new_value = after.metadata.get(key).cloned().unwrap_or_default();
        if old_value != new_value
            || old_metadata.contains_key(key) != after.metadata.contains_key(key)
        {
            out.push(FieldChange {
                field: format!("metadata.{key}"),
                old_value,
                new_value,
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::{KeyState, hashing::issue_credential, keyformat::KeyFormat};

    fn key() -> ApiKey {
        let now = Utc.with_ymd_and_hms(2030, 1, 1, 0, 0, 0).unwrap();
        let (_, credential) = issue_credential(&KeyFormat::default(), "live", now);
        ApiKey {
            id: "k1".into(),
            owner_id: "acme".into(),
            name: "billing".into(),
            environment: "live".into(),
            scopes: vec![Scope::parse("dns:read").unwrap()],
            ip_allowlist: Vec::new(),
            rate_limit_per_hour: None,
            state: KeyState::Active,
            expires_at: None,
            prefix: "kg_live_".into(),
            created_at: now,
            updated_at: now,
            last_used_at: None,
            revoked_at: None,
            revoked_reason: None,
            version: 1,
            credentials: vec![credential],
            metadata: [("plan".to_owned(), "free".to_owned())].into(),
            deleted_at: None,
            purge_at: None,
        }
    }

    fn fields(changes: &[FieldChange]) -> Vec<(&str, &str, &str)> {
        changes
            .iter()
            .map(|c| (c.field.as_str(), c.old_value.as_str(), c.new_value.as_str()))
            .collect()
    }

    #[test]
    fn a_created_key_lists_what_it_was_created_with() {
        let key = key();
        let created = changes(None, &key);
        let names: Vec<&str> = created.iter().map(|c| c.field.as_str()).collect();
        assert_eq!(
            names,
            ["name", "scopes", "status", "credentials", "metadata.plan"]
        );
        assert!(created.iter().all(|c| c.old_value.is_empty()));
    }

    #[test]
    fn a_change_lists_only_what_differs() {
        let before = key();
        let mut after = before.clone();
        after.scopes.push(Scope::parse("dns:write").unwrap());
        after.rate_limit_per_hour = Some(60);
        after.metadata.insert("plan".into(), "pro".into());
        after.metadata.insert("tenant".into(), "t-9".into());
        assert_eq!(
            fields(&changes(Some(&before), &after)),
            [
                ("scopes", "dns:read", "dns:read,dns:write"),
                ("rate_limit_per_hour", "", "60"),
                ("metadata.plan", "free", "pro"),
                ("metadata.tenant", "", "t-9"),
            ]
        );
        assert!(changes(Some(&before), &before).is_empty());
    }

    #[test]
    fn deletion_and_revocation_show_as_status() {
        let before = key();
        let mut deleted = before.clone();
        deleted.deleted_at = Some(before.created_at);
        deleted.purge_at = Some(before.created_at + chrono::Duration::days(30));
        let deletion = changes(Some(&before), &deleted);
        let change = fields(&deletion);
        assert_eq!(change[0], ("status", "active", "deleted"));
        assert_eq!(change[1].0, "delete_time");
        assert_eq!(change[2], ("purge_time", "", "2030-01-31T00:00:00.000Z"));

        let mut revoked = before.clone();
        revoked.state = KeyState::Revoked;
        revoked.revoked_reason = Some("leaked".into());
        assert_eq!(
            fields(&changes(Some(&before), &revoked)),
            [
                ("status", "active", "revoked"),
                ("revoked_reason", "", "leaked")
            ]
        );
    }

    #[test]
    fn a_metadata_entry_set_to_empty_is_a_change() {
        let before = key();
        let mut after = before.clone();
        after.metadata.insert("plan".into(), String::new());
        assert_eq!(
            fields(&changes(Some(&before), &after)),
            [("metadata.plan", "free", "")]
        );
        after.metadata.clear();
        assert_eq!(
            fields(&changes(Some(&before), &after)),
            [("metadata.plan", "free", "")]
        );
    }
}
