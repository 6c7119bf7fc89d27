//! The whole key lifecycle: metadata, soft deletion and the audit log.
//!
//! - `api_keys.metadata`: the owner's own data about a key, a JSON object
//!   of strings (`{}` for none).
//! - `api_keys.deleted_at` / `purge_at`: a soft-deleted key keeps its
//!   `state` (so restoring it restores that state) and is removed for good,
//!   with its credentials, after `purge_at`.
//! - `audit_events`: one row per successful change, written in the change's
//!   own transaction. `event_id` is a UUIDv7, so its order is the order of
//!   time; pages are read newest first by it. Events outlive their key.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Metadata,
    DeletedAt,
    PurgeAt,
}

#[derive(DeriveIden)]
enum AuditEvents {
    Table,
    EventId,
    Time,
    ActorKeyId,
    ActorOwnerId,
    Method,
    KeyId,
    OwnerId,
    Environment,
    PeerAddress,
    Changes,
    Reason,
}

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // SQLite adds one column per ALTER TABLE.
        for column in [
            ColumnDef::new(ApiKeys::Metadata)
                .text()
                .not_null()
                .default("{}")
                .to_owned(),
            ColumnDef::new(ApiKeys::DeletedAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
            ColumnDef::new(ApiKeys::PurgeAt)
                .timestamp_with_time_zone()
                .null()
                .to_owned(),
        ] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .add_column(column)
                        .to_owned(),
                )
                .await?;
        }
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_api_keys_purge_at")
                    .table(ApiKeys::Table)
                    .col(ApiKeys::PurgeAt)
                    .to_owned(),
            )
            .await?;
        let text = |column: AuditEvents| ColumnDef::new(column).text().not_null().to_owned();
        manager
            .create_table(
                Table::create()
                    .table(AuditEvents::Table)
                    .if_not_exists()
                    .col(
                        ColumnDef::new(AuditEvents::EventId)
                            .text()
                            .not_null()
                            .primary_key(),
                    )
                    .col(
                        ColumnDef::new(AuditEvents::Time)
                            .timestamp_with_time_zone()
                            .not_null(),
                    )
                    .col(text(AuditEvents::ActorKeyId))
                    .col(text(AuditEvents::ActorOwnerId))
                    .col(text(AuditEvents::Method))
                    .col(text(AuditEvents::KeyId))
                    .col(text(AuditEvents::OwnerId))
                    .col(text(AuditEvents::Environment))
                    .col(text(AuditEvents::PeerAddress))
                    .col(text(AuditEvents::Changes))
                    .col(text(AuditEvents::Reason))
                    .to_owned(),
            )
            .await?;
        for (name, column) in [
            ("idx_audit_events_key_id", AuditEvents::KeyId),
            ("idx_audit_events_owner_id", AuditEvents::OwnerId),
            ("idx_audit_events_time", AuditEvents::Time),
        ] {
            manager
                .create_index(
                    Index::create()
                        .if_not_exists()
                        .name(name)
                        .table(AuditEvents::Table)
                        .col(column)
                        .col(AuditEvents::EventId)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_table(
                Table::drop()
                    .table(AuditEvents::Table)
                    .if_exists()
                    .to_owned(),
            )
            .await?;
        manager
            .drop_index(
                Index::drop()
                    .if_exists()
                    .name("idx_api_keys_purge_at")
                    .table(ApiKeys::Table)
                    .to_owned(),
            )
            .await?;
        for column in [ApiKeys::Metadata, ApiKeys::DeletedAt, ApiKeys::PurgeAt] {
            manager
                .alter_table(
                    Table::alter()
                        .table(ApiKeys::Table)
                        .drop_column(column)
                        .to_owned(),
                )
                .await?;
        }
        Ok(())
    }
}
