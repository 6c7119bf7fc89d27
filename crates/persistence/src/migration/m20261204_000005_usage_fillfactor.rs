//! Room on each PostgreSQL page for usage updates.
//!
//! The usage flushers rewrite `last_used_at` of every key and credential in
//! use about once a minute, and add to one `key_usage_hourly` row per key in
//! use. On PostgreSQL every update writes a new row version; when the page
//! holding the row has no free space, the new version goes to another page
//! and every index of the table gets a new entry too (four on `api_keys`).
//! Tables filled to 80% leave room for a heap-only-tuple (HOT) update, in
//! place and without index entries, since none of these columns is indexed.
//! Measured with `bench_setup usage-writes` (100 000 keys in use among
//! 1 000 000): one `record_last_used` flush took 5.2–6.0 s of wall time
//! before, 2.0–2.3 s after.
//!
//! Applies to pages written from now on (new keys, and rows moved by
//! updates); `VACUUM FULL` repacks existing ones. SQLite has no fill
//! factor: there the migration does nothing.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

/// Tables the usage flushers update, and their fill factor in percent.
const TABLES: [(&str, u8); 3] = [
    ("api_keys", 80),
    ("credentials", 80),
    ("key_usage_hourly", 80),
];

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            for (table, percent) in TABLES {
                db.execute_unprepared(&format!("ALTER TABLE {table} SET (fillfactor = {percent})"))
                    .await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        if db.get_database_backend() == DbBackend::Postgres {
            for (table, _) in TABLES {
                db.execute_unprepared(&format!("ALTER TABLE {table} RESET (fillfactor)"))
                    .await?;
            }
        }
        Ok(())
    }
}
