//! `audit_events`: one row per successful change to a key.

use sea_orm::entity::prelude::*;

/// A stored audit event; `changes` is a JSON array of
/// `{"field", "old", "new"}` objects.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_events")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub event_id: String,
    pub time: DateTimeUtc,
    pub actor_key_id: String,
    pub actor_owner_id: String,
    pub method: String,
    pub key_id: String,
    pub owner_id: String,
    pub environment: String,
    pub peer_address: String,
    pub changes: String,
    pub reason: String,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
