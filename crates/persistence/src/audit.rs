//! The audit log in storage: events are written by the changes themselves
//! (in their transactions, see `update.rs` and [`Store::insert_key`]), and
//! read here, newest first, a page at a time.

use chrono::{DateTime, Utc};
use keygate_domain::ApiKey;
use keygate_domain::audit::{Actor, AuditEvent, FieldChange};
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};

use crate::entity::audit_event;
use crate::error::StoreError;
use crate::store::Store;

/// Filters of [`Store::list_audit_events`]; `None` = any.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Only events of this key.
    pub key_id: Option<String>,
    /// Only events of keys of this owner.
    pub owner_id: Option<String>,
    /// Only events of keys of this environment.
    pub environment: Option<String>,
    /// Only events made by this management key.
    pub actor_key_id: Option<String>,
    /// Only events of this method.
    pub method: Option<String>,
    /// Only events at or after this time.
    pub start: Option<DateTime<Utc>>,
    /// Only events before this time.
    pub end: Option<DateTime<Utc>>,
}

/// Writes the event of `actor` changing `before` (`None`: creating) into
/// `after`, on `db` (the change's transaction).
pub(crate) async fn record<C: ConnectionTrait>(
    db: &C,
    actor: &Actor,
    before: Option<&ApiKey>,
    after: &ApiKey,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let event = actor.event(uuid::Uuid::now_v7().to_string(), now, before, after);
    insert(db, &event).await
}

/// Writes `event` on `db`.
pub(crate) async fn insert<C: ConnectionTrait>(
    db: &C,
    event: &AuditEvent,
) -> Result<(), StoreError> {
    let changes: Vec<serde_json::Value> = event
        .changes
        .iter()
        .map(|c| serde_json::json!({ "field": c.field, "old": c.old_value, "new": c.new_value }))
        .collect();
    audit_event::Entity::insert(audit_event::ActiveModel {
        event_id: Set(event.event_id.clone()),
        time: Set(event.time),
        actor_key_id: Set(event.actor_key_id.clone()),
        actor_owner_id: Set(event.actor_owner_id.clone()),
        method: Set(event.method.clone()),
        key_id: Set(event.key_id.clone()),
        owner_id: Set(event.owner_id.clone()),
        environment: Set(event.environment.clone()),
        peer_address: Set(event.peer_address.clone()),
        changes: Set(serde_json::Value::Array(changes).to_string()),
        reason: Set(event.reason.clone()),
    })
    .exec_without_returning(db)
    .await?;
    Ok(())
}

fn from_row(row: audit_event::Model) -> Result<AuditEvent, StoreError> {
    let corrupt = |detail: String| {
        StoreError::Corrupt(format!(
            "audit_events.changes of event {}: {detail}",
            row.event_id
        ))
    };
    let parsed: Vec<serde_json::Value> =
        serde_json::from_str(&row.changes).map_err(|e| corrupt(e.to_string()))?;
    let text = |value: &serde_json::Value, name: &str| {
        value
            .get(name)
            .and_then(serde_json::Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| corrupt(format!("no text {name:?}")))
    };
    let changes = parsed
        .iter()
        .map(|c| {
            Ok(FieldChange {
                field: text(c, "field")?,
                old_value: text(c, "old")?,
                new_value: text(c, "new")?,
            })
        })
        .collect::<Result<Vec<_>, StoreError>>()?;
    Ok(AuditEvent {
        event_id: row.event_id,
        time: row.time,
        actor_key_id: row.actor_key_id,
        actor_owner_id: row.actor_owner_id,
        method: row.method,
        key_id: row.key_id,
        owner_id: row.owner_id,
        environment: row.environment,
        peer_address: row.peer_address,
        changes,
        reason: row.reason,
    })
}

impl Store {
    /// Up to `limit` events matching `filter`, newest first, older than
    /// event `before` when given (the last event of the previous page).
    pub async fn list_audit_events(
        &self,
        filter: &AuditFilter,
        before: Option<&str>,
        limit: u64,
    ) -> Result<Vec<AuditEvent>, StoreError> {
        self.observed("list_audit_events", async move {
            let mut query = audit_event::Entity::find();
            if let Some(key_id) = &filter.key_id {
                query = query.filter(audit_event::Column::KeyId.eq(key_id.as_str()));
            }
            if let Some(owner_id) = &filter.owner_id {
                query = query.filter(audit_event::Column::OwnerId.eq(owner_id.as_str()));
            }
            if let Some(environment) = &filter.environment {
                query = query.filter(audit_event::Column::Environment.eq(environment.as_str()));
            }
            if let Some(actor) = &filter.actor_key_id {
                query = query.filter(audit_event::Column::ActorKeyId.eq(actor.as_str()));
            }
            if let Some(method) = &filter.method {
                query = query.filter(audit_event::Column::Method.eq(method.as_str()));
            }
            if let Some(start) = filter.start {
                query = query.filter(audit_event::Column::Time.gte(start));
            }
            if let Some(end) = filter.end {
                query = query.filter(audit_event::Column::Time.lt(end));
            }
            if let Some(before) = before {
                query = query.filter(audit_event::Column::EventId.lt(before));
            }
            query
                .order_by_desc(audit_event::Column::EventId)
                .limit(limit)
                .all(self.connection())
                .await?
                .into_iter()
                .map(from_row)
                .collect()
        })
        .await
    }
}
