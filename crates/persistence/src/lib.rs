//! Keygate's storage: SeaORM entities, migrations and the [`Store`]
//! repository, on SQLite (one box, zero set-up) and PostgreSQL (several
//! replicas, with `LISTEN/NOTIFY` for cache invalidation).
//!
//! The crate turns rows into the domain model of `keygate-domain` and back;
//! it holds no rules of its own. No secret is ever stored: a credential is
//! its lookup id, salt, hash and hint.

mod audit;
mod bulk;
mod convert;
pub mod entity;
mod error;
pub mod migration;
mod notify;
mod observe;
mod store;
mod update;
mod usage;
mod versions;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests;

pub use audit::AuditFilter;
pub use error::StoreError;
pub use migration::Migrator;
pub use notify::{CHANGE_CHANNEL, Change, ChangeListener};
pub use observe::StoreObserver;
pub use store::{Backend, KeyFilter, Store};
pub use update::KeyUpdate;
pub use usage::{HourlyUsage, LastUsed};
pub use versions::StoredVersion;
