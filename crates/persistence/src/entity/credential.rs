//! The `credentials` table: the salted hashes of a key's secrets.

use sea_orm::entity::prelude::*;

/// One `credentials` row. Holds no secret: only salt and hash.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "credentials")]
pub struct Model {
    /// Lookup id (first 8 characters of the key body); unique.
    #[sea_orm(primary_key, auto_increment = false)]
    pub lookup_id: String,
    /// Owning key.
    pub key_id: String,
    /// 16-byte salt.
    pub salt: Vec<u8>,
    /// 32-byte `SHA-256(salt || key)`.
    pub hash: Vec<u8>,
    /// Last 4 characters of the key.
    pub hint: String,
    /// Issue time.
    pub created_at: DateTimeUtc,
    /// End of validity (rotation grace period).
    pub expires_at: Option<DateTimeUtc>,
    // `last_used_at` is no longer read or written: see `key_last_use`.
}

/// No relations are declared: queries join by hand where needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
