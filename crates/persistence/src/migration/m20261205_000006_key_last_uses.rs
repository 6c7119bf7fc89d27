//! Last uses in a narrow table of their own, `key_last_uses`: one row per
//! credential ever used, `(key_id, lookup_id, used_at)`, keyed by key then
//! credential. A key's last use is the latest of its rows.
//!
//! Why: the last-used flush writes one timestamp per key in use about once
//! a minute. Stored in `api_keys.last_used_at` and `credentials.last_used_at`,
//! each use rewrote two wide rows scattered over the tables (rows sit in
//! insertion order, keys in use are random), so on SQLite a flush of
//! 100 000 keys among 1 000 000 dirtied about as many pages as rows, every
//! one copied to the WAL and back: 18–24 µs of CPU per key, in the server
//! process. Here a row is ~80 bytes and, on SQLite, the table is clustered
//! by its key (`WITHOUT ROWID`), so the flush, which writes in key order,
//! dirties each page once for all the keys on it, and one row is written
//! per key instead of two. `bench/README.md` has the figures.
//!
//! Rows outlive credentials deleted by rotation (so a key's last use stays)
//! and go with their key (`ON DELETE CASCADE`). Existing last uses are
//! copied; a key's own `last_used_at` later than all its credentials'
//! (their credential since deleted) is kept under the empty lookup id.
//!
//! The old columns stay, no longer read or written, so replicas of the
//! previous version keep running during a rolling upgrade (their last uses
//! land in the old columns until they are replaced).

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum KeyLastUses {
    Table,
    KeyId,
    LookupId,
    UsedAt,
}

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Id,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        let backend = db.get_database_backend();
        let mut table = Table::create()
            .table(KeyLastUses::Table)
            .if_not_exists()
            .col(ColumnDef::new(KeyLastUses::KeyId).text().not_null())
            .col(ColumnDef::new(KeyLastUses::LookupId).text().not_null())
            .col(
                ColumnDef::new(KeyLastUses::UsedAt)
                    .timestamp_with_time_zone()
                    .not_null(),
            )
            .primary_key(
                Index::create()
                    .col(KeyLastUses::KeyId)
                    .col(KeyLastUses::LookupId),
            )
            .foreign_key(
                ForeignKey::create()
                    .name("fk_key_last_uses_key_id")
                    .from(KeyLastUses::Table, KeyLastUses::KeyId)
                    .to(ApiKeys::Table, ApiKeys::Id)
                    .on_delete(ForeignKeyAction::Cascade),
            )
            .to_owned();
        match backend {
            // Rows stored in the primary key's b-tree, in key order.
            DbBackend::Sqlite => table.extra("WITHOUT ROWID"),
            // Room on each page for the updates to stay heap-only (see
            // migration 5).
            _ => table.extra("WITH (fillfactor = 80)"),
        };
        manager.create_table(table).await?;
        db.execute_unprepared(
            "INSERT INTO key_last_uses (key_id, lookup_id, used_at) \
             SELECT key_id, lookup_id, last_used_at FROM credentials \
             WHERE last_used_at IS NOT NULL",
        )
        .await?;
        db.execute_unprepared(
            "INSERT INTO key_last_uses (key_id, lookup_id, used_at) \
             SELECT k.id, '', k.last_used_at FROM api_keys k \
             WHERE k.last_used_at IS NOT NULL AND NOT EXISTS \
             (SELECT 1 FROM key_last_uses u WHERE u.key_id = k.id AND u.used_at >= k.last_used_at)",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // Back into the old columns, as the previous version reads them.
        let db = manager.get_connection();
        db.execute_unprepared(
            "UPDATE credentials SET last_used_at = (SELECT u.used_at FROM key_last_uses u \
             WHERE u.key_id = credentials.key_id AND u.lookup_id = credentials.lookup_id) \
             WHERE EXISTS (SELECT 1 FROM key_last_uses u \
             WHERE u.key_id = credentials.key_id AND u.lookup_id = credentials.lookup_id)",
        )
        .await?;
        db.execute_unprepared(
            "UPDATE api_keys SET last_used_at = \
             (SELECT MAX(u.used_at) FROM key_last_uses u WHERE u.key_id = api_keys.id) \
             WHERE EXISTS (SELECT 1 FROM key_last_uses u WHERE u.key_id = api_keys.id)",
        )
        .await?;
        manager
            .drop_table(
                Table::drop()
                    .table(KeyLastUses::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
