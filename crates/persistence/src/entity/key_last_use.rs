//! The `key_last_uses` table: the latest stored use of each credential a key
//! was ever used with. A key's last use is the latest of its rows; rows
//! outlive credentials deleted by rotation and go with their key.

use sea_orm::entity::prelude::*;

/// One `key_last_uses` row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "key_last_uses")]
pub struct Model {
    /// The key.
    #[sea_orm(primary_key, auto_increment = false)]
    pub key_id: String,
    /// The credential's lookup id; empty for a use carried over from before
    /// migration 6 whose credential was already deleted.
    #[sea_orm(primary_key, auto_increment = false)]
    pub lookup_id: String,
    /// The latest stored use.
    pub used_at: DateTimeUtc,
}

/// No relations are declared: queries join by hand where needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
