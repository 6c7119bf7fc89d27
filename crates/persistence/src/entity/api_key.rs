//! The `api_keys` table: one row per logical key.

use sea_orm::entity::prelude::*;

/// One `api_keys` row.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_keys")]
pub struct Model {
    /// Stable key id (UUIDv7 string).
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: String,
    /// Owner (tenant).
    pub owner_id: String,
    /// Human name.
    pub name: String,
    /// Environment.
    pub environment: String,
    /// JSON array of scope strings.
    pub scopes: String,
    /// JSON array of CIDR strings.
    pub ip_allowlist: String,
    /// Requests per hour override.
    pub rate_limit_per_hour: Option<i64>,
    /// `active`, `disabled` or `revoked`.
    pub state: String,
    /// Key expiry.
    pub expires_at: Option<DateTimeUtc>,
    /// Visible key prefix such as `kg_live_`.
    pub prefix: String,
    /// Creation time.
    pub created_at: DateTimeUtc,
    /// Last change.
    pub updated_at: DateTimeUtc,
    // `last_used_at` is no longer read or written: last uses are in
    // `key_last_uses` (migration 6).
    /// When revoked.
    pub revoked_at: Option<DateTimeUtc>,
    /// Why revoked.
    pub revoked_reason: Option<String>,
    /// Requests authorized with this key, flushed from usage batches.
    pub request_count: i64,
    /// Bumped by every change to the key (not by usage); starts at 1.
    pub version: i64,
    pub metadata: String,
    pub deleted_at: Option<DateTimeUtc>,
    pub purge_at: Option<DateTimeUtc>,
}

/// No relations are declared: queries join by hand where needed.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
