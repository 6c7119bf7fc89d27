//! Hourly key usage: one row per key and hour, added to by every replica's
//! flushes (set-based upserts), read by `GetKeyUsage`, and pruned after the
//! configured retention. `hour_start` is unix seconds (a multiple of 3600),
//! so both backends compare and index it as a plain integer.
//!
//! Request counts used to grow `api_keys.request_count` on every flush; that
//! column is no longer written (it stays, so older binaries still run).

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum KeyUsageHourly {
    Table,
    KeyId,
    HourStart,
    Allowed,
    DeniedRateLimited,
    DeniedOther,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let count = |column: KeyUsageHourly| {
            ColumnDef::new(column)
                .big_integer()
                .not_null()
                .default(0)
                .to_owned()
        };
        manager
            .create_table(
                Table::create()
                    .table(KeyUsageHourly::Table)
                    .if_not_exists()
                    .col(ColumnDef::new(KeyUsageHourly::KeyId).text().not_null())
                    .col(
                        ColumnDef::new(KeyUsageHourly::HourStart)
                            .big_integer()
                            .not_null(),
                    )
                    .col(count(KeyUsageHourly::Allowed))
                    .col(count(KeyUsageHourly::DeniedRateLimited))
                    .col(count(KeyUsageHourly::DeniedOther))
                    .primary_key(
                        Index::create()
                            .col(KeyUsageHourly::KeyId)
                            .col(KeyUsageHourly::HourStart),
                    )
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_key_usage_hourly_hour_start")
                    .table(KeyUsageHourly::Table)
                    .col(KeyUsageHourly::HourStart)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(KeyUsageHourly::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await
    }
}
