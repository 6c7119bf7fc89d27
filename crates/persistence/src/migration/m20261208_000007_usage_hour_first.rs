//! Hourly counts keyed by hour first: `key_usage_hourly`'s primary key
//! becomes `(hour_start, key_id)` (was `(key_id, hour_start)` plus an index
//! on `hour_start`), on SQLite as a `WITHOUT ROWID` table clustered by it.
//!
//! Why: the count flush adds to the current hour's row of every key in
//! use, once a minute. Keyed by key first, those rows lie one per key run
//! through the whole table: with a week of history for 100 000 keys, a
//! flush touched a page per key (3.4–4.9 µs of CPU per row on SQLite, and
//! 31 µs per row for the first flush of each hour, which also inserts into
//! the `hour_start` index and the rowid table). Keyed by hour first, the
//! current hour is one contiguous range of the table whatever the
//! retention: 1.4–1.6 µs per row updated and 0.8 µs per row inserted in
//! the same trial (`bench/README.md`), one B-tree instead of three, and the
//! table half the size. Pruning deletes a range at the front.
//!
//! A key's hours are no longer adjacent, so reading them (GetKeyUsage) and
//! deleting them (purge) name the hours: one primary-key lookup per hour
//! of the range (at most 31 days: 744), about a millisecond.
//!
//! Replicas of the previous version keep working during a rolling upgrade:
//! their upsert's conflict target names the same two columns, which is the
//! new primary key; their reads by key walk the table, slowly.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

/// How the table is laid out: clustered by its primary key (this
/// migration) or, on SQLite, a rowid table with an index (before).
#[derive(Clone, Copy)]
enum Layout {
    Clustered,
    Rowid,
}

/// `CREATE TABLE` for `name` with the given primary key, on `backend`.
fn create_table(backend: DbBackend, name: &str, primary_key: &str, layout: Layout) -> String {
    let storage = match (backend, layout) {
        (DbBackend::Sqlite, Layout::Clustered) => " WITHOUT ROWID",
        (DbBackend::Sqlite, Layout::Rowid) => "",
        // Room on each page for updated rows (migration 5).
        _ => " WITH (fillfactor = 80)",
    };
    format!(
        "CREATE TABLE {name} (\
         hour_start BIGINT NOT NULL, \
         key_id TEXT NOT NULL, \
         allowed BIGINT NOT NULL DEFAULT 0, \
         denied_rate_limited BIGINT NOT NULL DEFAULT 0, \
         denied_other BIGINT NOT NULL DEFAULT 0, \
         PRIMARY KEY ({primary_key})){storage}"
    )
}

/// Moves every row of `key_usage_hourly` into a new table of that name
/// keyed by `primary_key`, then runs `after` (extra indexes).
async fn rebuild(
    manager: &SchemaManager<'_>,
    primary_key: &str,
    layout: Layout,
    after: &[&str],
) -> Result<(), DbErr> {
    let db = manager.get_connection();
    let backend = db.get_database_backend();
    db.execute_unprepared(&create_table(
        backend,
        "key_usage_hourly_rebuilt",
        primary_key,
        layout,
    ))
    .await?;
    db.execute_unprepared(&format!(
        "INSERT INTO key_usage_hourly_rebuilt \
         (hour_start, key_id, allowed, denied_rate_limited, denied_other) \
         SELECT hour_start, key_id, allowed, denied_rate_limited, denied_other \
         FROM key_usage_hourly ORDER BY {primary_key}"
    ))
    .await?;
    db.execute_unprepared("DROP TABLE key_usage_hourly").await?;
    db.execute_unprepared("ALTER TABLE key_usage_hourly_rebuilt RENAME TO key_usage_hourly")
        .await?;
    for statement in after {
        db.execute_unprepared(statement).await?;
    }
    Ok(())
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    /// In one transaction on every backend: all of the rebuild or none, and
    /// on one SQLite connection (from a pool, a later statement could meet
    /// a connection whose schema still had the old table, and `RENAME`
    /// would refuse the name).
    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }

    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild(manager, "hour_start, key_id", Layout::Clustered, &[]).await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        rebuild(
            manager,
            "key_id, hour_start",
            Layout::Rowid,
            &["CREATE INDEX idx_key_usage_hourly_hour_start ON key_usage_hourly (hour_start)"],
        )
        .await
    }
}
