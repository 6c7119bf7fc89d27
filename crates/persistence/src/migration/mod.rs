//! Schema migrations, run by `keygate migrate` and at `serve` start. The same
//! migrations build the same schema on SQLite and PostgreSQL; applied ones are
//! recorded in `seaql_migrations`, so running them again is a no-op.

use sea_orm_migration::{MigrationTrait, MigratorTrait};

mod m20261122_000001_create_keys;
mod m20261125_000002_key_versions;
mod m20261201_000003_key_usage;
mod m20261202_000004_key_lifecycle;
mod m20261204_000005_usage_fillfactor;
mod m20261205_000006_key_last_uses;
mod m20261208_000007_usage_hour_first;

/// All of Keygate's migrations, in order.
#[derive(Clone, Copy, Debug, Default)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_create_keys::Migration),
            Box::new(m20261125_000002_key_versions::Migration),
            Box::new(m20261201_000003_key_usage::Migration),
            Box::new(m20261202_000004_key_lifecycle::Migration),
            Box::new(m20261204_000005_usage_fillfactor::Migration),
            Box::new(m20261205_000006_key_last_uses::Migration),
            Box::new(m20261208_000007_usage_hour_first::Migration),
        ]
    }
}
