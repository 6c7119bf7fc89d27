//! [`Store::current_versions`]: whether cached keys are still current, for
//! many keys in one query.
//!
//! Every change of what a decision reads bumps a key's `version` (see
//! `update.rs`), so a cache entry past its lifetime whose version storage
//! still holds is the stored key: it needs its lifetime renewed, not a full
//! read of the key and its credentials. At a million keys cached for 5
//! minutes that is over 3 000 keys a second; one narrow query per few
//! hundred of them keeps that cost from growing with the key count.
//!
//! [`Store::versions_unchanged`] is the cheaper first question: whether
//! storage still holds every one of a batch's versions, answered by one row
//! (a count of the keys still at their version) rather than a row per key,
//! and without each key's last use, which doubled the per-key cost on
//! SQLite (a second index descent, into `key_last_uses`). Only when it
//! answers no does a cache need [`Store::current_versions`] to learn which
//! keys moved.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, FromQueryResult, QueryFilter, QueryResult,
    QuerySelect, Statement, Value, sea_query::Expr,
};

use crate::entity::api_key;
use crate::error::StoreError;
use crate::store::{Store, placeholders};

/// Ids asked for in one statement: far below both backends' parameter
/// limits, and a short statement for the database to plan.
const IDS_PER_STATEMENT: usize = 500;

/// A key's stored version, as [`Store::current_versions`] reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredVersion {
    /// The key's id.
    pub key_id: String,
    /// Its version: bumped by every change a decision could see.
    pub version: u64,
    /// Its newest stored use (any replica's), as a full read returns it.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl FromQueryResult for StoredVersion {
    fn from_query_result(row: &QueryResult, prefix: &str) -> Result<Self, DbErr> {
        let version: i64 = row.try_get(prefix, "version")?;
        Ok(StoredVersion {
            key_id: row.try_get(prefix, "id")?,
            version: u64::try_from(version)
                .map_err(|_| DbErr::Type(format!("negative key version {version}")))?,
            last_used_at: row.try_get(prefix, "last_used")?,
        })
    }
}

impl Store {
    /// The stored versions of the keys among `key_ids` that exist and are
    /// not deleted (to Authorize a deleted key is unknown), in no particular
    /// order; an id missing from the answer has no such key. Several
    /// statements of a few hundred ids each when given more.
    pub async fn current_versions(
        &self,
        key_ids: &[&str],
    ) -> Result<Vec<StoredVersion>, StoreError> {
        self.observed("current_versions", async move {
            let mut found = Vec::with_capacity(key_ids.len());
            for ids in key_ids.chunks(IDS_PER_STATEMENT) {
                let rows = api_key::Entity::find()
                    .select_only()
                    .column(api_key::Column::Id)
                    .column(api_key::Column::Version)
                    .column_as(
                        Expr::cust(
                            "(SELECT MAX(u.used_at) FROM key_last_uses u \
                             WHERE u.key_id = api_keys.id)",
                        ),
                        "last_used",
                    )
                    .filter(api_key::Column::Id.is_in(ids.iter().copied()))
                    .filter(api_key::Column::DeletedAt.is_null())
                    .into_model::<StoredVersion>()
                    .all(self.connection())
                    .await?;
                found.extend(rows);
            }
            Ok(found)
        })
        .await
    }

    /// Whether storage still holds exactly these keys at exactly these
    /// versions: every `(key id, version)` names a key that exists, is not
    /// deleted and is at that version. One row per statement answers it
    /// (how many of the pairs match a live key), not a row per key. An id
    /// given twice with two versions is answered `false` (one of them
    /// cannot be current).
    pub async fn versions_unchanged(&self, expected: &[(&str, u64)]) -> Result<bool, StoreError> {
        self.observed("versions_unchanged", async move {
            // In id order: SQLite then walks the index forward, as it does
            // for an IN list, instead of seeking at random (about twice the
            // cost per key at a million keys).
            let mut pairs: BTreeMap<&str, i64> = BTreeMap::new();
            for &(id, version) in expected {
                // No stored version is that large: it cannot match.
                let Ok(version) = i64::try_from(version) else {
                    return Ok(false);
                };
                if *pairs.entry(id).or_insert(version) != version {
                    return Ok(false);
                }
            }
            let pairs: Vec<(&str, i64)> = pairs.into_iter().collect();
            let backend = self.connection().get_database_backend();
            for chunk in pairs.chunks(IDS_PER_STATEMENT) {
                let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * 2);
                for &(id, version) in chunk {
                    values.extend([id.into(), version.into()]);
                }
                let sql = format!(
                    "WITH v(id, version) AS (VALUES {}) \
                     SELECT COUNT(*) AS matching FROM v \
                     JOIN api_keys k ON k.id = v.id AND k.version = v.version \
                     WHERE k.deleted_at IS NULL",
                    placeholders(backend, 1, chunk.len(), 2)
                );
                let row = self
                    .connection()
                    .query_one_raw(Statement::from_sql_and_values(backend, sql, values))
                    .await?
                    .ok_or_else(|| DbErr::RecordNotFound("COUNT(*) returned no row".into()))?;
                let matching: i64 = row.try_get("", "matching")?;
                if usize::try_from(matching).ok() != Some(chunk.len()) {
                    return Ok(false);
                }
            }
            Ok(true)
        })
        .await
    }
}
