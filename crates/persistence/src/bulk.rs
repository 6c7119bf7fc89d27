//! [`Store::insert_keys`]: many new keys at once, for seeding large
//! databases (the benchmark's 1 000 000 keys) where one
//! [`Store::insert_key`] transaction per key, let alone one `CreateKey` call
//! per key, takes far too long.
//!
//! The rows are exactly what [`Store::insert_key`] writes: both build them
//! with `convert.rs` (`key_to_active`, `credential_to_active`), and the
//! column lists are read from the entities, so the two cannot drift apart.
//! They are written with set-based multi-row `INSERT … VALUES (…), (…)`
//! statements, the same SQL on SQLite and PostgreSQL, all in one
//! transaction per call, and every key is announced (`pg_notify`, set-based
//! too) in that transaction like any other change, so running replicas drop
//! negative cache entries for the new lookup ids at commit.
//!
//! Nothing here makes a key: callers generate secrets and credentials with
//! the domain crate (`keygate_domain::hashing::issue_credential`), as the
//! server's `CreateKey` does; this crate still never sees a secret.

use sea_orm::{
    ActiveModelTrait, ConnectionTrait, DatabaseTransaction, DbBackend, EntityName, EntityTrait,
    IdenStatic, Iterable, Statement, TransactionTrait, Value,
};

use keygate_domain::ApiKey;

use crate::convert::{credential_to_active, key_to_active, last_use_rows};
use crate::entity::{api_key, credential, key_last_use};
use crate::error::StoreError;
use crate::notify::{CHANGE_CHANNEL, encode_payload};
use crate::store::{Store, placeholders, rows_per_statement};

impl Store {
    /// Stores many new keys and all their credentials in one transaction:
    /// the same rows and the same change notifications as
    /// [`Store::insert_key`] once per key, written with multi-row `INSERT`s
    /// (a few hundred values each, see `rows_per_statement`). All or nothing: a taken key id or lookup id is
    /// a [`StoreError::Conflict`] and nothing of the call is stored. One
    /// transaction holds every row of the call, so seed millions of keys in
    /// calls of some thousands.
    pub async fn insert_keys(&self, keys: &[ApiKey]) -> Result<(), StoreError> {
        self.observed("insert_keys", async move {
            if keys.is_empty() {
                return Ok(());
            }
            let key_rows: Vec<api_key::ActiveModel> = keys.iter().map(key_to_active).collect();
            let credential_rows: Vec<credential::ActiveModel> = keys
                .iter()
                .flat_map(|k| k.credentials.iter().map(|c| credential_to_active(&k.id, c)))
                .collect();
            let last_use_rows: Vec<key_last_use::ActiveModel> =
                keys.iter().flat_map(last_use_rows).collect();
            let txn = self.connection().begin().await?;
            insert_rows(&txn, &key_rows).await?;
            insert_rows(&txn, &credential_rows).await?;
            insert_rows(&txn, &last_use_rows).await?;
            notify_all(&txn, keys).await?;
            txn.commit().await?;
            Ok(())
        })
        .await
    }
}

/// Inserts `rows` (all of one entity, all with the same columns set) in
/// multi-row statements sized by [`rows_per_statement`]. Columns left unset (`request_count`)
/// take their defaults, as with SeaORM's own insert.
async fn insert_rows<A>(txn: &DatabaseTransaction, rows: &[A]) -> Result<(), StoreError>
where
    A: ActiveModelTrait,
{
    let Some(first) = rows.first() else {
        return Ok(());
    };
    let columns: Vec<_> = <A::Entity as EntityTrait>::Column::iter()
        .filter(|c| first.get(*c).is_set())
        .collect();
    let table = A::Entity::default();
    let column_list = columns
        .iter()
        .map(|c| c.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let backend = txn.get_database_backend();
    for chunk in rows.chunks(rows_per_statement(backend, columns.len())) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * columns.len());
        for row in chunk {
            for column in &columns {
                let value = row.get(*column).into_value().ok_or_else(|| {
                    StoreError::Corrupt(format!(
                        "bulk insert into {}: {} not set in every row",
                        table.table_name(),
                        column.as_str()
                    ))
                })?;
                values.push(value);
            }
        }
        let sql = format!(
            "INSERT INTO {} ({column_list}) VALUES {}",
            table.table_name(),
            placeholders(backend, 1, chunk.len(), columns.len())
        );
        txn.execute_raw(Statement::from_sql_and_values(backend, sql, values))
            .await?;
    }
    Ok(())
}

/// Announces every key inside `txn`, one notification per key with the
/// payload [`crate::notify::notify_in`] would send (PostgreSQL only; a no-op
/// on SQLite): `SELECT pg_notify($1, p) FROM (VALUES ($2), …) AS v(p)`.
async fn notify_all(txn: &DatabaseTransaction, keys: &[ApiKey]) -> Result<(), StoreError> {
    if txn.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    for chunk in keys.chunks(rows_per_statement(DbBackend::Postgres, 1) - 1) {
        let mut values: Vec<Value> = Vec::with_capacity(chunk.len() + 1);
        values.push(CHANGE_CHANNEL.into());
        for key in chunk {
            let lookup_ids: Vec<String> = key
                .credentials
                .iter()
                .map(|c| c.lookup_id.clone())
                .collect();
            values.push(encode_payload(&key.id, key.version, &lookup_ids).into());
        }
        let sql = format!(
            "SELECT pg_notify($1, v.p) FROM (VALUES {}) AS v(p)",
            placeholders(DbBackend::Postgres, 2, chunk.len(), 1)
        );
        txn.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use chrono::{DateTime, TimeDelta, Utc};
    use keygate_domain::scope::Scope;
    use keygate_domain::{ApiKey, KeyState};

    use crate::store::rows_per_statement;
    use crate::testing::TestDatabase;
    use crate::tests::{credential, now, open};
    use crate::{Change, StoreError};

    /// Key `i` of a bulk: the storage suite's fixture under a bulk id.
    fn key(i: usize) -> ApiKey {
        crate::tests::key(
            &format!("bulk-{i:06}"),
            "acme",
            "live",
            &format!("BULK{i:04}"),
        )
    }

    /// Plain keys, one with every field set and two credentials (newest
    /// first, as read back), one disabled at a later version: enough keys
    /// that both tables span several statements on SQLite (on PostgreSQL,
    /// `api_keys` does too).
    fn sample(t: DateTime<Utc>) -> Vec<ApiKey> {
        let count = 515;
        for backend in [sea_orm::DbBackend::Sqlite, sea_orm::DbBackend::Postgres] {
            assert!(count > 2 * rows_per_statement(backend, 16));
        }
        let mut keys: Vec<ApiKey> = (0..count).map(key).collect();
        let full = &mut keys[1];
        full.name = "Zürich — ключ 🔑".to_owned();
        full.scopes = ["dns:read", "keys:*", "*"]
            .iter()
            .map(|s| Scope::parse(s).expect("scope"))
            .collect();
        full.ip_allowlist = ["10.0.0.0/8", "2001:db8::/32"]
            .iter()
            .map(|s| s.parse().expect("net"))
            .collect();
        full.rate_limit_per_hour = Some(u32::MAX);
        full.expires_at = Some(t + TimeDelta::microseconds(123_456_789));
        full.created_at = t - TimeDelta::microseconds(1);
        full.updated_at = t + TimeDelta::microseconds(1);
        full.credentials[0].last_used_at = Some(t - TimeDelta::microseconds(999_999));
        let mut old = credential("OLDk0001", t - TimeDelta::seconds(60));
        old.expires_at = Some(t + TimeDelta::microseconds(7));
        old.last_used_at = Some(t - TimeDelta::microseconds(3));
        full.credentials.push(old);
        // A key's last use is the latest of its credentials'.
        full.last_used_at = Some(t - TimeDelta::microseconds(3));
        let disabled = &mut keys[2];
        disabled.state = KeyState::Disabled;
        disabled.version = 3;
        keys
    }

    async fn inserts_and_reads_back(db: &TestDatabase) {
        let store = open(db).await;
        let keys = sample(now());
        store.insert_keys(&keys).await.expect("bulk insert");
        for k in &keys {
            for c in &k.credentials {
                let found = store
                    .find_by_lookup_id(&c.lookup_id)
                    .await
                    .expect("find")
                    .expect("present");
                assert_eq!(&found, k, "lookup id {}", c.lookup_id);
            }
        }
        store.insert_keys(&[]).await.expect("nothing to insert");
    }

    async fn a_taken_lookup_id_stores_nothing(db: &TestDatabase) {
        let store = open(db).await;
        store
            .insert_key(&key(0), &keygate_domain::audit::Actor::default())
            .await
            .expect("insert one");
        // Keys 1 and 2 are new, key 3 reuses key 0's lookup id.
        let mut batch: Vec<ApiKey> = (1..4).map(key).collect();
        batch[2].credentials[0].lookup_id = "BULK0000".to_owned();
        let err = store.insert_keys(&batch).await.expect_err("conflict");
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        for lookup_id in ["BULK0001", "BULK0002"] {
            assert_eq!(
                store.find_by_lookup_id(lookup_id).await.expect("find"),
                None
            );
        }
        assert_eq!(store.get_key("bulk-000001").await.expect("get"), None);
    }

    #[tokio::test]
    async fn sqlite_inserts_and_reads_back() {
        inserts_and_reads_back(&TestDatabase::sqlite()).await;
    }

    #[tokio::test]
    async fn sqlite_a_taken_lookup_id_stores_nothing() {
        a_taken_lookup_id_stores_nothing(&TestDatabase::sqlite()).await;
    }

    #[tokio::test]
    async fn postgres_inserts_and_reads_back() {
        let Some(db) = TestDatabase::postgres().await else {
            return;
        };
        inserts_and_reads_back(&db).await;
    }

    #[tokio::test]
    async fn postgres_a_taken_lookup_id_stores_nothing() {
        let Some(db) = TestDatabase::postgres().await else {
            return;
        };
        a_taken_lookup_id_stores_nothing(&db).await;
    }

    /// PostgreSQL only: every key of a bulk insert is announced at commit
    /// with the payload `insert_key` sends.
    #[tokio::test]
    async fn postgres_announces_every_key() {
        let Some(db) = TestDatabase::postgres().await else {
            return;
        };
        let store = open(&db).await;
        let mut listener = store
            .listen()
            .await
            .expect("listen")
            .expect("postgres listener");
        let keys = sample(now());
        store.insert_keys(&keys).await.expect("bulk insert");
        for k in &keys {
            let change = tokio::time::timeout(Duration::from_secs(5), listener.next())
                .await
                .expect("notification")
                .expect("change");
            assert_eq!(
                change,
                Change::Key {
                    key_id: k.id.clone(),
                    version: k.version,
                    lookup_ids: k.credentials.iter().map(|c| c.lookup_id.clone()).collect(),
                }
            );
        }
    }
}
