//! Key versions and terminal revocation.
//!
//! `api_keys.version` starts at 1 and is bumped by every change to a key, in
//! the same conditional statement as the change, so it orders a key's states:
//! it is the key's etag, travels in change notifications, and lets a cache
//! tell an old snapshot from a new one. A trigger makes revocation terminal
//! in the database itself: whatever statement tries to move a revoked key to
//! another state fails, so no race, bug or hand-written SQL can undo it.

use sea_orm::{ConnectionTrait, DbBackend};
use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub(super) struct Migration;

#[derive(DeriveIden)]
enum ApiKeys {
    Table,
    Version,
}

const SQLITE_TRIGGER: &str = "CREATE TRIGGER IF NOT EXISTS api_keys_revoked_is_terminal \
     BEFORE UPDATE OF state ON api_keys \
     WHEN OLD.state = 'revoked' AND NEW.state <> 'revoked' \
     BEGIN SELECT RAISE(ABORT, 'keygate: a revoked key cannot change state'); END";

const POSTGRES_FUNCTION: &str = "CREATE OR REPLACE FUNCTION keygate_revoked_is_terminal() \
     RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
     IF OLD.state = 'revoked' AND NEW.state <> 'revoked' THEN \
     RAISE EXCEPTION 'keygate: a revoked key cannot change state' USING ERRCODE = 'check_violation'; \
     END IF; RETURN NEW; END $$";

const POSTGRES_TRIGGER: &str = "CREATE TRIGGER api_keys_revoked_is_terminal \
     BEFORE UPDATE OF state ON api_keys FOR EACH ROW \
     EXECUTE FUNCTION keygate_revoked_is_terminal()";

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .add_column(
                        ColumnDef::new(ApiKeys::Version)
                            .big_integer()
                            .not_null()
                            .default(1),
                    )
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        match db.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(POSTGRES_FUNCTION).await?;
                db.execute_unprepared(POSTGRES_TRIGGER).await?;
            }
            _ => {
                db.execute_unprepared(SQLITE_TRIGGER).await?;
            }
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        let db = manager.get_connection();
        match db.get_database_backend() {
            DbBackend::Postgres => {
                db.execute_unprepared(
                    "DROP TRIGGER IF EXISTS api_keys_revoked_is_terminal ON api_keys",
                )
                .await?;
                db.execute_unprepared("DROP FUNCTION IF EXISTS keygate_revoked_is_terminal()")
                    .await?;
            }
            _ => {
                db.execute_unprepared("DROP TRIGGER IF EXISTS api_keys_revoked_is_terminal")
                    .await?;
            }
        }
        manager
            .alter_table(
                Table::alter()
                    .table(ApiKeys::Table)
                    .drop_column(ApiKeys::Version)
                    .to_owned(),
            )
            .await
    }
}
