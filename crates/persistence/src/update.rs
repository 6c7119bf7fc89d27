//! Changes to a key, each one conditional statement.
//!
//! A change never writes back a row it read earlier: it is an `UPDATE … WHERE
//! id = ? AND version = ? AND state <> 'revoked'` that also bumps `version`,
//! and the number of rows it touched is the answer. Two racing changes are
//! therefore ordered by the database: the second either finds the version
//! it expected (and applies on top of the first) or touches nothing and is
//! told why ([`StoreError::VersionMismatch`], [`StoreError::KeyRevoked`],
//! [`StoreError::NotFound`]), having changed nothing. The notification of a
//! change is sent in the same transaction, carrying the new version.

use chrono::{DateTime, Utc};
use keygate_domain::{ApiKey, Credential, KeyState};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
};

use crate::convert::credential_to_active;
use crate::entity::{api_key, credential};
use crate::error::StoreError;
use crate::notify::notify_in;
use crate::store::{Store, load_key, lookup_ids_of};

/// Credentials that ended longer ago than this are deleted on rotation.
const CREDENTIAL_RETENTION: chrono::TimeDelta = chrono::TimeDelta::days(1);

/// A change of a key's state or expiry, applied by [`Store::update_key`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyUpdate {
    /// Revoke for good, with an optional reason.
    Revoke {
        /// Why, for the record.
        reason: Option<String>,
    },
    /// Switch to `Active` or `Disabled` (never to `Revoked`: use `Revoke`).
    SetState(KeyState),
    /// Set or clear the expiry.
    SetExpiry(Option<DateTime<Utc>>),
}

impl Store {
    /// Applies `update` to key `id` if it is still at `version` and not
    /// revoked, bumping its version and `updated_at`; returns the key as
    /// changed. Otherwise changes nothing and fails with
    /// [`StoreError::NotFound`], [`StoreError::KeyRevoked`] or
    /// [`StoreError::VersionMismatch`], in that order of precedence.
    pub async fn update_key(
        &self,
        id: &str,
        version: u64,
        update: &KeyUpdate,
        now: DateTime<Utc>,
    ) -> Result<ApiKey, StoreError> {
        self.observed("update_key", async move {
            let txn = self.connection().begin().await?;
            let mut statement = api_key::Entity::update_many();
            statement = match update {
                KeyUpdate::Revoke { reason } => statement
                    .col_expr(
                        api_key::Column::State,
                        Expr::value(KeyState::Revoked.as_str()),
                    )
                    .col_expr(api_key::Column::RevokedAt, Expr::value(now))
                    .col_expr(api_key::Column::RevokedReason, Expr::value(reason.clone())),
                KeyUpdate::SetState(KeyState::Revoked) => {
                    return Err(StoreError::Corrupt(
                        "SetState(Revoked) is not a revocation; use KeyUpdate::Revoke".to_owned(),
                    ));
                }
                KeyUpdate::SetState(state) => {
                    statement.col_expr(api_key::Column::State, Expr::value(state.as_str()))
                }
                KeyUpdate::SetExpiry(at) => {
                    statement.col_expr(api_key::Column::ExpiresAt, Expr::value(*at))
                }
            };
            let touched = conditional(statement, id, version, now).exec(&txn).await?;
            if touched.rows_affected == 0 {
                return Err(why_unchanged(&txn, id, version).await);
            }
            let key = load_key(&txn, id).await?.ok_or(StoreError::NotFound)?;
            let lookup_ids: Vec<String> = key
                .credentials
                .iter()
                .map(|c| c.lookup_id.clone())
                .collect();
            notify_in(&txn, id, key.version, &lookup_ids).await?;
            txn.commit().await?;
            Ok(key)
        })
        .await
    }

    /// Rotates key `id` if it is still at `version` and not revoked, in one
    /// transaction: every credential that would outlive `old_expire_at` now
    /// ends then, `new` is added, credentials that ended more than a day
    /// before `now` are deleted, and the key's version and `updated_at`
    /// move on. Returns the rotated key; fails like [`Store::update_key`].
    pub async fn rotate_key(
        &self,
        id: &str,
        version: u64,
        new: &Credential,
        old_expire_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<ApiKey, StoreError> {
        self.observed("rotate_key", async move {
            let txn = self.connection().begin().await?;
            // The conditional write comes first: it decides whether the rotation
            // happens at all, and on SQLite it takes the write lock up front, so
            // a concurrent writer waits (busy timeout) instead of failing to
            // upgrade a read lock.
            let touched = conditional(api_key::Entity::update_many(), id, version, now)
                .exec(&txn)
                .await?;
            if touched.rows_affected == 0 {
                return Err(why_unchanged(&txn, id, version).await);
            }
            // Lookup ids before the clean-up, so replicas also evict deleted ones.
            let mut lookup_ids = lookup_ids_of(&txn, id).await?;
            credential::Entity::update_many()
                .col_expr(credential::Column::ExpiresAt, Expr::value(old_expire_at))
                .filter(credential::Column::KeyId.eq(id))
                .filter(
                    Condition::any()
                        .add(credential::Column::ExpiresAt.is_null())
                        .add(credential::Column::ExpiresAt.gt(old_expire_at)),
                )
                .exec(&txn)
                .await?;
            credential::Entity::delete_many()
                .filter(credential::Column::KeyId.eq(id))
                .filter(credential::Column::ExpiresAt.lt(now - CREDENTIAL_RETENTION))
                .exec(&txn)
                .await?;
            credential::Entity::insert(credential_to_active(id, new))
                .exec_without_returning(&txn)
                .await?;
            let key = load_key(&txn, id).await?.ok_or(StoreError::NotFound)?;
            lookup_ids.push(new.lookup_id.clone());
            notify_in(&txn, id, key.version, &lookup_ids).await?;
            txn.commit().await?;
            Ok(key)
        })
        .await
    }
}

/// Adds what every change does to `statement`: bump the version, stamp
/// `updated_at`, and apply only to key `id` at `version`, never to a revoked
/// key.
fn conditional(
    statement: sea_orm::UpdateMany<api_key::Entity>,
    id: &str,
    version: u64,
    now: DateTime<Utc>,
) -> sea_orm::UpdateMany<api_key::Entity> {
    statement
        .col_expr(
            api_key::Column::Version,
            Expr::col(api_key::Column::Version).add(1),
        )
        .col_expr(api_key::Column::UpdatedAt, Expr::value(now))
        .filter(api_key::Column::Id.eq(id))
        .filter(api_key::Column::Version.eq(i64::try_from(version).unwrap_or(i64::MAX)))
        .filter(api_key::Column::State.ne(KeyState::Revoked.as_str()))
}

/// Why a conditional change touched no row, read in the change's own
/// transaction (which is then rolled back).
async fn why_unchanged(txn: &DatabaseTransaction, id: &str, expected: u64) -> StoreError {
    let row = api_key::Entity::find_by_id(id.to_owned())
        .select_only()
        .column(api_key::Column::State)
        .column(api_key::Column::Version)
        .into_tuple::<(String, i64)>()
        .one(txn)
        .await;
    match row {
        Err(err) => err.into(),
        Ok(None) => StoreError::NotFound,
        Ok(Some((state, _))) if state == KeyState::Revoked.as_str() => StoreError::KeyRevoked,
        Ok(Some((_, current))) => {
            let current = u64::try_from(current).unwrap_or(0);
            if current == expected {
                // Cannot happen: the statement would have matched.
                StoreError::Corrupt(format!("api_keys.version of key {id}: {current}"))
            } else {
                StoreError::VersionMismatch { current }
            }
        }
    }
}
