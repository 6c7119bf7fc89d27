//! The one error type of the storage layer, so the server can map storage
//! failures to gRPC statuses without knowing SeaORM: an unreachable database
//! becomes `UNAVAILABLE`, a missing row `NOT_FOUND`, a collision a conflict.

use sea_orm::{DbErr, RuntimeErr, SqlErr, sqlx};

/// Everything that can go wrong in [`crate::Store`].
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be reached (connection refused, timed out,
    /// pool exhausted, busy); retrying later may succeed.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    /// Every pooled connection stayed busy for the whole acquire timeout:
    /// the database answers, but Keygate asked too much of it at once. Not an
    /// outage; shed the call and retry.
    #[error("database busy: {0}")]
    Saturated(String),
    /// The row to change does not exist.
    #[error("not found")]
    NotFound,
    /// The key is revoked, and a revoked key never changes again.
    #[error("the key is revoked")]
    KeyRevoked,
    /// The key is deleted: nothing but UndeleteKey changes it.
    #[error("the key is deleted")]
    KeyDeleted,
    /// UndeleteKey of a key that is not deleted.
    #[error("the key is not deleted")]
    NotDeleted,
    /// UndeleteKey after the key's purge time.
    #[error("the key's purge time has passed")]
    Purged,
    /// The key is no longer at the version the change was conditional on.
    #[error("the key changed: now at version {current}")]
    VersionMismatch {
        /// The key's version now.
        current: u64,
    },
    /// A unique value (key id or credential lookup id) is already taken.
    #[error("conflict: {0}")]
    Conflict(String),
    /// A stored row cannot be turned back into the domain model; names the column.
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The database URL is not one Keygate supports.
    #[error("invalid database url: {0}")]
    InvalidUrl(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] DbErr),
}

impl From<DbErr> for StoreError {
    /// Classifies connection-level failures as [`StoreError::Unavailable`],
    /// unique violations as [`StoreError::Conflict`], the rest as
    /// [`StoreError::Database`].
    fn from(err: DbErr) -> Self {
        if is_saturated(&err) {
            return Self::Saturated(err.to_string());
        }
        if err.to_string().contains(REVOKED_IS_TERMINAL) {
            return Self::KeyRevoked;
        }
        if is_unavailable(&err) {
            return Self::Unavailable(err.to_string());
        }
        if let Some(SqlErr::UniqueConstraintViolation(detail)) = err.sql_err() {
            return Self::Conflict(detail);
        }
        Self::Database(err)
    }
}

impl From<sqlx::Error> for StoreError {
    fn from(err: sqlx::Error) -> Self {
        if matches!(err, sqlx::Error::PoolTimedOut) {
            Self::Saturated(err.to_string())
        } else if sqlx_unavailable(&err) {
            Self::Unavailable(err.to_string())
        } else {
            Self::Database(DbErr::Query(RuntimeErr::SqlxError(err.into())))
        }
    }
}

/// What the database says when a statement tries to move a revoked key to
/// another state (the trigger of migration `m20261125_000002_key_versions`).
const REVOKED_IS_TERMINAL: &str = "a revoked key cannot change state";

/// A pool that handed out no connection within its acquire timeout.
fn is_saturated(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(sea_orm::error::ConnAcquireErr::Timeout) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            matches!(**e, sqlx::Error::PoolTimedOut)
        }
        _ => false,
    }
}

fn is_unavailable(err: &DbErr) -> bool {
    match err {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            sqlx_unavailable(e)
        }
        _ => false,
    }
}

/// Whether an sqlx error means "the database is not reachable right now"
/// rather than "this statement is wrong".
fn sqlx_unavailable(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                let code = pg.code();
                // class 08: connection exception; 57P0x: shutdown / cannot
                // connect now; 53300: too many connections.
                code.starts_with("08") || code.starts_with("57P") || code == "53300"
            } else if let Some(code) = db.code() {
                // SQLite (extended) result codes: the primary code is the low byte.
                // 5 BUSY, 6 LOCKED, 10 IOERR, 14 CANTOPEN.
                code.parse::<i32>()
                    .is_ok_and(|c| matches!(c & 0xff, 5 | 6 | 10 | 14))
            } else {
                false
            }
        }
        _ => false,
    }
}
