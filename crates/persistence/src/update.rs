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
use keygate_domain::{ApiKey, Credential, KeyState, audit::Actor, validation::KeyPatch};
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{
    ColumnTrait, Condition, DatabaseTransaction, EntityTrait, QueryFilter, QuerySelect,
    TransactionTrait,
};

use crate::audit;
use crate::convert::{allowlist_json, credential_to_active, metadata_json, scopes_json};
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
    /// Change the fields the patch names (UpdateKey).
    Patch(KeyPatch),
    /// Soft-delete (a revoked key too), to be purged at `purge_at`. The
    /// state is left as it was.
    Delete {
        /// When the key is removed for good.
        purge_at: DateTime<Utc>,
    },
    /// Restore a deleted key before its purge time, in the state it had.
    Undelete,
}

/// Which keys a change may apply to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Guard {
    /// Neither revoked nor deleted.
    Live,
    /// Not deleted (revoked is fine: deleting it hides it, nothing more).
    NotDeleted,
    /// Deleted, and not yet due for purging.
    Deleted,
}

impl KeyUpdate {
    fn guard(&self) -> Guard {
        match self {
            Self::Delete { .. } => Guard::NotDeleted,
            Self::Undelete => Guard::Deleted,
            _ => Guard::Live,
        }
    }
}

impl Store {
    /// Applies `update` to key `id` if it is still at `version` and not
    /// revoked (unless deleting) or deleted (unless undeleting), bumping its
    /// version and `updated_at`, and writes `actor`'s audit event of the
    /// change from `before` (the key as read at `version`; `None`: unknown)
    /// in the same transaction; returns the key as changed. Otherwise
    /// changes nothing, writes no event, and fails with
    /// [`StoreError::NotFound`], [`StoreError::KeyDeleted`] /
    /// [`StoreError::NotDeleted`] / [`StoreError::Purged`],
    /// [`StoreError::KeyRevoked`] or [`StoreError::VersionMismatch`], in
    /// that order of precedence.
    pub async fn update_key(
        &self,
        id: &str,
        version: u64,
        update: &KeyUpdate,
        now: DateTime<Utc>,
        actor: &Actor,
        before: Option<&ApiKey>,
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
                KeyUpdate::Patch(patch) => patched(statement, patch),
                KeyUpdate::Delete { purge_at } => statement
                    .col_expr(api_key::Column::DeletedAt, Expr::value(now))
                    .col_expr(api_key::Column::PurgeAt, Expr::value(*purge_at)),
                KeyUpdate::Undelete => statement
                    .col_expr(
                        api_key::Column::DeletedAt,
                        Expr::value(None::<DateTime<Utc>>),
                    )
                    .col_expr(api_key::Column::PurgeAt, Expr::value(None::<DateTime<Utc>>)),
            };
            let guard = update.guard();
            let touched = conditional(statement, id, version, now, guard)
                .exec(&txn)
                .await?;
            if touched.rows_affected == 0 {
                return Err(why_unchanged(&txn, id, version, guard, now).await);
            }
            let key = load_key(&txn, id).await?.ok_or(StoreError::NotFound)?;
            let lookup_ids: Vec<String> = key
                .credentials
                .iter()
                .map(|c| c.lookup_id.clone())
                .collect();
            notify_in(&txn, id, key.version, &lookup_ids).await?;
            audit::record(&txn, actor, before, &key, now).await?;
            txn.commit().await?;
            Ok(key)
        })
        .await
    }

    /// Rotates key `id` if it is still at `version` and not revoked, in one
    /// transaction: every credential that would outlive `old_expire_at` now
    /// ends then, `new` is added, credentials that ended more than a day
    /// before `now` are deleted, and the key's version and `updated_at`
    /// move on, with `actor`'s audit event. Returns the rotated key; fails
    /// like [`Store::update_key`].
    #[allow(clippy::too_many_arguments)]
    pub async fn rotate_key(
        &self,
        id: &str,
        version: u64,
        new: &Credential,
        old_expire_at: DateTime<Utc>,
        now: DateTime<Utc>,
        actor: &Actor,
        before: Option<&ApiKey>,
    ) -> Result<ApiKey, StoreError> {
        self.observed("rotate_key", async move {
            let txn = self.connection().begin().await?;
            // The conditional write comes first: it decides whether the rotation
            // happens at all, and on SQLite it takes the write lock up front, so
            // a concurrent writer waits (busy timeout) instead of failing to
            // upgrade a read lock.
            let touched = conditional(
                api_key::Entity::update_many(),
                id,
                version,
                now,
                Guard::Live,
            )
            .exec(&txn)
            .await?;
            if touched.rows_affected == 0 {
                return Err(why_unchanged(&txn, id, version, Guard::Live, now).await);
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
            audit::record(&txn, actor, before, &key, now).await?;
            txn.commit().await?;
            Ok(key)
        })
        .await
    }
}

/// Sets the columns `patch` names.
fn patched(
    mut statement: sea_orm::UpdateMany<api_key::Entity>,
    patch: &KeyPatch,
) -> sea_orm::UpdateMany<api_key::Entity> {
    if let Some(name) = &patch.name {
        statement = statement.col_expr(api_key::Column::Name, Expr::value(name.clone()));
    }
    if let Some(scopes) = &patch.scopes {
        statement = statement.col_expr(api_key::Column::Scopes, Expr::value(scopes_json(scopes)));
    }
    if let Some(nets) = &patch.ip_allowlist {
        statement = statement.col_expr(
            api_key::Column::IpAllowlist,
            Expr::value(allowlist_json(nets)),
        );
    }
    if let Some(limit) = patch.rate_limit_per_hour {
        statement = statement.col_expr(
            api_key::Column::RateLimitPerHour,
            Expr::value(limit.map(i64::from)),
        );
    }
    if let Some(metadata) = &patch.metadata {
        statement = statement.col_expr(
            api_key::Column::Metadata,
            Expr::value(metadata_json(metadata)),
        );
    }
    if let Some(at) = patch.expires_at {
        statement = statement.col_expr(api_key::Column::ExpiresAt, Expr::value(at));
    }
    statement
}

/// Adds what every change does to `statement`: bump the version, stamp
/// `updated_at`, and apply only to key `id` at `version` in the states
/// `guard` allows (never a revoked key, unless deleting it).
fn conditional(
    statement: sea_orm::UpdateMany<api_key::Entity>,
    id: &str,
    version: u64,
    now: DateTime<Utc>,
    guard: Guard,
) -> sea_orm::UpdateMany<api_key::Entity> {
    let statement = match guard {
        Guard::Live => statement
            .filter(api_key::Column::State.ne(KeyState::Revoked.as_str()))
            .filter(api_key::Column::DeletedAt.is_null()),
        Guard::NotDeleted => statement.filter(api_key::Column::DeletedAt.is_null()),
        Guard::Deleted => statement
            .filter(api_key::Column::DeletedAt.is_not_null())
            .filter(api_key::Column::PurgeAt.gt(now)),
    };
    statement
        .col_expr(
            api_key::Column::Version,
            Expr::col(api_key::Column::Version).add(1),
        )
        .col_expr(api_key::Column::UpdatedAt, Expr::value(now))
        .filter(api_key::Column::Id.eq(id))
        .filter(api_key::Column::Version.eq(i64::try_from(version).unwrap_or(i64::MAX)))
}

/// Why a conditional change touched no row, read in the change's own
/// transaction (which is then rolled back).
async fn why_unchanged(
    txn: &DatabaseTransaction,
    id: &str,
    expected: u64,
    guard: Guard,
    now: DateTime<Utc>,
) -> StoreError {
    let row = api_key::Entity::find_by_id(id.to_owned())
        .select_only()
        .column(api_key::Column::State)
        .column(api_key::Column::Version)
        .column(api_key::Column::DeletedAt)
        .column(api_key::Column::PurgeAt)
        .into_tuple::<(String, i64, Option<DateTime<Utc>>, Option<DateTime<Utc>>)>()
        .one(txn)
        .await;
    let revoked = KeyState::Revoked.as_str();
    match row {
        Err(err) => err.into(),
        Ok(None) => StoreError::NotFound,
        Ok(Some((_, current, deleted, purge))) if guard == Guard::Deleted => {
            match (deleted, purge) {
                (None, _) => StoreError::NotDeleted,
                (Some(_), purge) if purge.is_none_or(|at| at <= now) => StoreError::Purged,
                _ => version_mismatch(id, expected, current),
            }
        }
        Ok(Some((_, _, Some(_), _))) => StoreError::KeyDeleted,
        Ok(Some((state, ..))) if guard == Guard::Live && state == revoked => StoreError::KeyRevoked,
        Ok(Some((_, current, ..))) => version_mismatch(id, expected, current),
    }
}

/// The key is at version `current`, not the `expected` one.
fn version_mismatch(id: &str, expected: u64, current: i64) -> StoreError {
    let current = u64::try_from(current).unwrap_or(0);
    if current == expected {
        // Cannot happen: the statement would have matched.
        StoreError::Corrupt(format!("api_keys.version of key {id}: {current}"))
    } else {
        StoreError::VersionMismatch { current }
    }
}
