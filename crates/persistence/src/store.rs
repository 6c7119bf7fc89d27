//! [`Store`]: the repository the server talks to. Every method is one short
//! transaction (or one or two queries) against SQLite or PostgreSQL, written
//! so the same SQL runs on both.
//!
//! Timestamps: PostgreSQL `timestamptz` keeps microseconds; SQLite stores the
//! RFC 3339 text sqlx writes (`2026-01-02T03:04:05.123456+00:00`, up to
//! nanoseconds). Those strings all end in `+00:00` and carry 0, 3, 6 or 9
//! fraction digits, so SQLite's text comparison orders them correctly, which
//! the expiry and `last_used_at` comparisons below rely on.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use keygate_domain::{ApiKey, KeyStatus, audit::Actor};
use sea_orm::sea_query::{Expr, Query};
use sea_orm::{
    ColumnTrait, Condition, ConnectOptions, ConnectionTrait, Database, DatabaseConnection,
    DbBackend, DbErr, EntityTrait, FromQueryResult, JoinType, QueryFilter, QueryOrder, QueryResult,
    QuerySelect, Statement, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

use crate::audit;
use crate::convert::{
    credential_to_active, key_from_rows, key_to_active, last_use_rows, with_last_uses,
};
use crate::entity::{api_key, credential, key_last_use};
use crate::error::StoreError;
use crate::migration::Migrator;
use crate::notify::{CHANGE_CHANNEL, ChangeListener, HEARTBEAT_PAYLOAD, notify_in};
use crate::observe::StoreObserver;
use crate::usage::STORED_HOURS;

/// How long connecting or waiting for a pooled connection may take before the
/// database is reported unavailable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Connections to a SQLite file (WAL: many readers, one writer at a time).
const SQLITE_POOL_SIZE: u32 = 4;
/// Connections to PostgreSQL per replica.
const POSTGRES_POOL_SIZE: u32 = 16;
/// How long SQLite waits for a competing writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Page cache of the SQLite usage writer's one connection, in KiB (SQLite's
/// `cache_size` when negative): 256 MiB at most, taken only as pages are
/// read. A usage flush walks both usage tables in key order; with SQLite's
/// default 2 MiB every page it touched was read again from the file on
/// the next flush (a `pread` and a 4 KiB copy each, a fifth of a
/// million-key flush's CPU). At a million keys the two tables take about
/// 150 MB.
const SQLITE_USAGE_WRITER_CACHE_KIB: i64 = 256 * 1024;

/// Bind parameters per set-based statement on SQLite: 2 048. sqlx binds each
/// parameter by asking SQLite for its name, which SQLite finds by a linear
/// search of the statement's named parameters (`$N` and `?N` are named), so
/// with named parameters a statement costs quadratic time in its
/// parameters: seeding 100 000 keys took about 3 s at 100 to 500
/// parameters per statement, 4.2 s at 1 000 and 11 s at 4 000, and at 256
/// that search was still the largest single cost of a usage flush (10% of
/// its CPU). [`placeholders`] therefore writes anonymous `?` on SQLite,
/// which have no name to search.
/// Since then a flush's statements of 256 parameters were its largest
/// remaining cost after the rows themselves: every statement is a round
/// trip to sqlx's SQLite thread (a futex wake and wait on each side). At
/// 2 048 a million-key usage flush cost about 25% less CPU than at 256
/// (`bench_setup usage-flush`, pinned to one CPU, lowest of four runs).
const SQLITE_PARAMETERS: usize = 2048;

/// Bind parameters per set-based statement on PostgreSQL: 512. sqlx does
/// not set `TCP_NODELAY`, so a statement whose message spans more than
/// about 16 KB waits out a delayed ACK (~40 ms) before PostgreSQL sees its
/// end: 30 000 hourly-count upserts took 4.4 s at 300 rows (1 500
/// parameters) per statement and 0.15 s at 100 to 160 rows, with the
/// client and the server idle in between.
const POSTGRES_PARAMETERS: usize = 512;

/// Rows of `columns` values each per set-based statement on `backend`.
pub(crate) fn rows_per_statement(backend: DbBackend, columns: usize) -> usize {
    let parameters = match backend {
        DbBackend::Postgres => POSTGRES_PARAMETERS,
        _ => SQLITE_PARAMETERS,
    };
    (parameters / columns.max(1)).max(1)
}

/// `($1, $2, $3), ($4, $5, $6), …` for `rows` rows of `columns` values,
/// numbered from `$first`; on SQLite `(?, ?, ?), (?, ?, ?), …`, bound in
/// order (see [`SQLITE_PARAMETERS`]), so there `first` must be 1: the
/// statement has no other parameters before these.
pub(crate) fn placeholders(
    backend: DbBackend,
    first: usize,
    rows: usize,
    columns: usize,
) -> String {
    use std::fmt::Write;
    let anonymous = backend == DbBackend::Sqlite;
    debug_assert!(!anonymous || first == 1, "anonymous parameters start at 1");
    let mut sql = String::with_capacity(rows * columns * 7);
    for row in 0..rows {
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 0..columns {
            if column > 0 {
                sql.push_str(", ");
            }
            if anonymous {
                sql.push('?');
            } else {
                let _ = write!(sql, "${}", first + row * columns + column);
            }
        }
        sql.push(')');
    }
    sql
}

/// Keygate's settings of every SQLite connection: WAL (many readers, one
/// writer), `synchronous = NORMAL`, a busy timeout, foreign keys; and a
/// page cache of `cache_kib` KiB instead of SQLite's default 2 MiB.
fn sqlite_options(
    options: sea_orm::sqlx::sqlite::SqliteConnectOptions,
    cache_kib: Option<i64>,
) -> sea_orm::sqlx::sqlite::SqliteConnectOptions {
    use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
    let options = options
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    match cache_kib {
        Some(kib) => options.pragma("cache_size", (-kib).to_string()),
        None => options,
    }
}

/// The database engine behind a [`Store`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// SQLite: one process, zero set-up.
    Sqlite,
    /// PostgreSQL: several replicas, cross-replica notifications.
    Postgres,
}

/// Filters of [`Store::list_keys`]; `None` = any.
#[derive(Clone, Debug, Default)]
pub struct KeyFilter {
    /// Only keys of this owner.
    pub owner_id: Option<String>,
    /// Only keys of this environment.
    pub environment: Option<String>,
    /// Only keys with this status (`Expired` is derived from `expires_at`).
    pub status: Option<KeyStatus>,
    /// Only keys last used before this time; never used counts as before.
    pub last_used_before: Option<DateTime<Utc>>,
    /// Only keys with an expiry before this time.
    pub expires_before: Option<DateTime<Utc>>,
    /// Include soft-deleted keys (left out otherwise).
    pub show_deleted: bool,
}

/// Keygate's storage: keys, credentials, usage and shared rate-limit windows.
/// Cheap to clone (a connection pool handle).
#[derive(Clone, Debug)]
pub struct Store {
    db: DatabaseConnection,
    /// Where usage writes go ([`Store::record_usage`]): on a SQLite file a
    /// pool of its own with exactly one connection, which keeps its page
    /// cache from flush to flush (SQLite drops a connection's cache when
    /// another connection wrote since its last read, and the shared pool
    /// hands out its connections in turn); otherwise `db` itself.
    usage_writer: DatabaseConnection,
    pool_size: u32,
    pub(crate) observer: Option<Arc<dyn StoreObserver>>,
}

impl Store {
    /// Connects to `url`: `sqlite://path?mode=rwc`, `sqlite::memory:` or
    /// `postgres://…`. SQLite runs in WAL mode with a busy timeout. Connecting
    /// and acquiring a pooled connection time out after a few seconds so an
    /// outage is reported, not waited out.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        let mut options = ConnectOptions::new(url);
        let pool_size;
        let mut usage_writer = None;
        options
            .connect_timeout(CONNECT_TIMEOUT)
            .acquire_timeout(CONNECT_TIMEOUT)
            .sqlx_logging(false)
            .test_before_acquire_if_idle_for(Duration::from_secs(30));
        if url.starts_with("sqlite:") {
            let in_memory = url.contains(":memory:") || url.contains("mode=memory");
            if in_memory {
                // Every connection to an in-memory database would see its own
                // (or a shared-cache, table-locked) database: keep exactly one
                // and never let it close.
                pool_size = 1;
                options
                    .max_connections(pool_size)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
            } else {
                pool_size = SQLITE_POOL_SIZE;
                options.max_connections(pool_size).min_connections(1);
            }
            options.map_sqlx_sqlite_opts(|o| sqlite_options(o, None));
            if !in_memory {
                let mut writer = options.clone();
                writer
                    .max_connections(1)
                    .min_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None)
                    .map_sqlx_sqlite_opts(|o| {
                        sqlite_options(o, Some(SQLITE_USAGE_WRITER_CACHE_KIB))
                    });
                usage_writer = Some(writer);
            }
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            pool_size = POSTGRES_POOL_SIZE;
            options.max_connections(pool_size).min_connections(1);
        } else {
            return Err(StoreError::InvalidUrl(
                "expected a sqlite: or postgres:// url".to_owned(),
            ));
        }
        let db = Database::connect(options).await?;
        let usage_writer = match usage_writer {
            Some(options) => Database::connect(options).await?,
            None => db.clone(),
        };
        tracing::debug!(backend = ?db.get_database_backend(), "database connected");
        Ok(Store {
            db,
            usage_writer,
            pool_size,
            observer: None,
        })
    }

    /// Wraps an existing SeaORM connection whose pool holds `pool_size`
    /// connections.
    pub fn from_connection(db: DatabaseConnection, pool_size: u32) -> Store {
        Store {
            usage_writer: db.clone(),
            db,
            pool_size: pool_size.max(1),
            observer: None,
        }
    }

    /// This store, reporting every operation to `observer` (so do its
    /// clones made from then on).
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn StoreObserver>) -> Store {
        self.observer = Some(observer);
        self
    }

    /// How many connections the pool holds at most; callers that share the
    /// store bound their own concurrency below it.
    pub fn pool_size(&self) -> u32 {
        self.pool_size
    }

    /// The underlying SeaORM connection.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// The connection usage writes go through (see the field's doc).
    pub(crate) fn usage_writer(&self) -> &DatabaseConnection {
        &self.usage_writer
    }

    /// Applies pending migrations; a no-op when the schema is current.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        self.observed("migrate", async move {
            Migrator::up(&self.db, None).await?;
            Ok(())
        })
        .await
    }

    /// Which engine this store talks to.
    pub fn backend(&self) -> Backend {
        match self.db.get_database_backend() {
            DbBackend::Postgres => Backend::Postgres,
            _ => Backend::Sqlite,
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        self.observed("ping", async move {
            self.db.ping().await?;
            Ok(())
        })
        .await
    }

    /// Stores a new key and all its credentials, and `actor`'s audit event
    /// of it, in one transaction. A taken key id or lookup id is a
    /// [`StoreError::Conflict`].
    pub async fn insert_key(&self, key: &ApiKey, actor: &Actor) -> Result<(), StoreError> {
        self.observed("insert_key", async move {
            let txn = self.db.begin().await?;
            api_key::Entity::insert(key_to_active(key))
                .exec_without_returning(&txn)
                .await?;
            if !key.credentials.is_empty() {
                credential::Entity::insert_many(
                    key.credentials
                        .iter()
                        .map(|c| credential_to_active(&key.id, c)),
                )
                .exec_without_returning(&txn)
                .await?;
            }
            let last_uses: Vec<_> = last_use_rows(key).collect();
            if !last_uses.is_empty() {
                key_last_use::Entity::insert_many(last_uses)
                    .exec_without_returning(&txn)
                    .await?;
            }
            let lookup_ids: Vec<String> = key
                .credentials
                .iter()
                .map(|c| c.lookup_id.clone())
                .collect();
            notify_in(&txn, &key.id, key.version, &lookup_ids).await?;
            audit::record(&txn, actor, None, key, key.created_at).await?;
            txn.commit().await?;
            Ok(())
        })
        .await
    }

    /// Removes for good the deleted keys whose purge time has come, with
    /// their credentials and usage counts (their audit events stay);
    /// returns how many.
    pub async fn purge_deleted(&self, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.observed("purge_deleted", async move {
            let txn = self.db.begin().await?;
            // Keyed by hour first: each purged key's rows are found by
            // naming the stored hours (see `STORED_HOURS`).
            txn.execute_raw(Statement::from_sql_and_values(
                self.db.get_database_backend(),
                format!(
                    "{STORED_HOURS} DELETE FROM key_usage_hourly \
                     WHERE hour_start IN (SELECT h FROM hours) \
                     AND key_id IN (SELECT id FROM api_keys WHERE purge_at <= $1)"
                ),
                [now.into(), 0i64.into(), i64::MAX.into()],
            ))
            .await?;
            // Their credentials go with them (ON DELETE CASCADE).
            let purged = api_key::Entity::delete_many()
                .filter(api_key::Column::PurgeAt.lte(now))
                .exec(&txn)
                .await?;
            txn.commit().await?;
            Ok(purged.rows_affected)
        })
        .await
    }

    /// The key with id `id`, credentials newest first.
    pub async fn get_key(&self, id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.observed("get_key", async move { load_key(&self.db, id).await })
            .await
    }

    /// The key owning the credential `lookup_id` (current or old), with all
    /// its credentials newest first: [`Store::find_by_lookup_ids`] for one.
    pub async fn find_by_lookup_id(&self, lookup_id: &str) -> Result<Option<ApiKey>, StoreError> {
        self.observed("find_by_lookup_id", async move {
            Ok(self.load_by_lookup_ids(&[lookup_id]).await?.pop())
        })
        .await
    }

    /// The keys owning any of the credentials `lookup_ids` (current or
    /// old), each once with all its credentials newest first, in no
    /// particular order; lookup ids no key owns are left out. One round trip
    /// per statement's worth of bind parameters: this is how the hot
    /// path reads the cache misses that arrived together, so a flood of
    /// forged keys costs a query per batch, not per key.
    pub async fn find_by_lookup_ids(&self, lookup_ids: &[&str]) -> Result<Vec<ApiKey>, StoreError> {
        self.observed("find_by_lookup_ids", async move {
            let mut keys = Vec::new();
            let per_statement = rows_per_statement(self.db.get_database_backend(), 1);
            for ids in lookup_ids.chunks(per_statement) {
                keys.extend(self.load_by_lookup_ids(ids).await?);
            }
            Ok(keys)
        })
        .await
    }

    /// The keys owning `lookup_ids`: their credentials joined with the key
    /// row (one result row per credential), selected by the key ids that own
    /// `lookup_ids`, each with its last use and the key's (from
    /// `key_last_uses`, by subqueries on its primary key).
    async fn load_by_lookup_ids(&self, lookup_ids: &[&str]) -> Result<Vec<ApiKey>, StoreError> {
        let owners = Query::select()
            .column(credential::Column::KeyId)
            .from(credential::Entity)
            .and_where(credential::Column::LookupId.is_in(lookup_ids.iter().copied()))
            .to_owned();
        let rows = credential::Entity::find()
            .join(
                JoinType::InnerJoin,
                credential::Entity::belongs_to(api_key::Entity)
                    .from(credential::Column::KeyId)
                    .to(api_key::Column::Id)
                    .into(),
            )
            .filter(credential::Column::KeyId.in_subquery(owners))
            // A deleted key authorizes nothing: to Authorize it is
            // unknown, as if it never existed.
            .filter(api_key::Column::DeletedAt.is_null())
            // A key's rows together, its credentials newest first.
            .order_by_asc(credential::Column::KeyId)
            .order_by_desc(credential::Column::CreatedAt)
            .order_by_desc(credential::Column::LookupId)
            .select_two_required(api_key::Entity)
            .column_as(
                Expr::cust(
                    "(SELECT u.used_at FROM key_last_uses u WHERE u.key_id = credentials.key_id \
                     AND u.lookup_id = credentials.lookup_id)",
                ),
                CredentialRow::USED_AT,
            )
            .column_as(
                Expr::cust(
                    "(SELECT MAX(u.used_at) FROM key_last_uses u \
                     WHERE u.key_id = credentials.key_id)",
                ),
                KeyRow::LAST_USED,
            )
            .into_model::<CredentialRow, KeyRow>()
            .all(&self.db)
            .await?;
        let mut keys = Vec::new();
        let mut rows = rows.into_iter().peekable();
        while let Some((first, key)) = rows.next() {
            let mut credentials = vec![(first.credential, first.used_at)];
            while let Some((next, _)) = rows.next_if(|(c, _)| c.credential.key_id == key.key.id) {
                credentials.push((next.credential, next.used_at));
            }
            keys.push(key_from_rows(key.key, credentials, key.last_used)?);
        }
        Ok(keys)
    }

    /// One page of keys matching `filter`, ordered by id, starting after the
    /// id `after`. Status is evaluated at `now`. Credentials of the whole page
    /// are loaded in one query.
    pub async fn list_keys(
        &self,
        filter: &KeyFilter,
        after: Option<&str>,
        limit: u64,
        now: DateTime<Utc>,
    ) -> Result<Vec<ApiKey>, StoreError> {
        self.observed("list_keys", async move {
            let mut query = api_key::Entity::find();
            if let Some(owner) = &filter.owner_id {
                query = query.filter(api_key::Column::OwnerId.eq(owner.as_str()));
            }
            if let Some(env) = &filter.environment {
                query = query.filter(api_key::Column::Environment.eq(env.as_str()));
            }
            if !filter.show_deleted {
                query = query.filter(api_key::Column::DeletedAt.is_null());
            }
            if let Some(status) = filter.status {
                query = query.filter(status_condition(status, now));
            }
            if let Some(before) = filter.last_used_before {
                // No use at or after `before` (never used counts too).
                use sea_orm::sea_query::ExprTrait as _;
                let used_since = Query::select()
                    .expr(Expr::val(1))
                    .from(key_last_use::Entity)
                    .and_where(
                        Expr::col((key_last_use::Entity, key_last_use::Column::KeyId))
                            .equals((api_key::Entity, api_key::Column::Id)),
                    )
                    .and_where(key_last_use::Column::UsedAt.gte(before))
                    .to_owned();
                query = query.filter(Expr::exists(used_since).not());
            }
            if let Some(before) = filter.expires_before {
                query = query.filter(api_key::Column::ExpiresAt.lt(before));
            }
            if let Some(after) = after {
                query = query.filter(api_key::Column::Id.gt(after));
            }
            let rows = query
                .order_by_asc(api_key::Column::Id)
                .limit(limit)
                .all(&self.db)
                .await?;
            if rows.is_empty() {
                return Ok(Vec::new());
            }
            let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
            let mut by_key: HashMap<String, Vec<credential::Model>> = HashMap::new();
            for c in credential::Entity::find()
                .filter(credential::Column::KeyId.is_in(ids.iter().map(String::as_str)))
                .order_by_desc(credential::Column::CreatedAt)
                .order_by_desc(credential::Column::LookupId)
                .all(&self.db)
                .await?
            {
                by_key.entry(c.key_id.clone()).or_default().push(c);
            }
            let last_uses = last_uses_of(&self.db, &ids).await?;
            rows.into_iter()
                .map(|row| {
                    let creds = by_key.remove(&row.id).unwrap_or_default();
                    let (creds, last_used) = with_last_uses(&row.id, creds, &last_uses);
                    key_from_rows(row, creds, last_used)
                })
                .collect()
        })
        .await
    }

    /// Adds request counts to shared rate-limit windows (`window_start` in
    /// unix seconds) and returns each window's total after the whole batch,
    /// in the order given (repeated pairs are summed first and share one
    /// total). One transaction of multi-row upserts in key order, so
    /// replicas syncing at once cannot deadlock.
    pub async fn add_rate_usage(
        &self,
        deltas: &[(String, i64, u64)],
    ) -> Result<Vec<u64>, StoreError> {
        self.observed("add_rate_usage", async move {
            if deltas.is_empty() {
                return Ok(Vec::new());
            }
            // Merge duplicates (one row may be updated once per statement), in
            // key order so concurrent replicas lock rows in the same order.
            let mut merged: BTreeMap<(&str, i64), i64> = BTreeMap::new();
            for (key_id, window_start, delta) in deltas {
                let delta = i64::try_from(*delta).unwrap_or(i64::MAX);
                let sum = merged.entry((key_id.as_str(), *window_start)).or_insert(0);
                *sum = sum.saturating_add(delta);
            }
            let merged: Vec<_> = merged.into_iter().collect();
            let backend = self.db.get_database_backend();
            let mut totals: HashMap<(String, i64), u64> = HashMap::with_capacity(merged.len());
            let txn = self.db.begin().await?;
            for chunk in merged.chunks(rows_per_statement(backend, 3)) {
                let mut values = Vec::with_capacity(chunk.len() * 3);
                for ((key_id, window_start), delta) in chunk {
                    values.extend([(*key_id).into(), (*window_start).into(), (*delta).into()]);
                }
                let sql = format!(
                    "INSERT INTO rate_limit_windows (key_id, window_start, count) VALUES {} \
                     ON CONFLICT (key_id, window_start) \
                     DO UPDATE SET count = rate_limit_windows.count + excluded.count \
                     RETURNING key_id, window_start, count",
                    placeholders(backend, 1, chunk.len(), 3)
                );
                let rows = txn
                    .query_all_raw(Statement::from_sql_and_values(backend, sql, values))
                    .await?;
                for row in rows {
                    let key_id: String = row.try_get("", "key_id")?;
                    let window_start: i64 = row.try_get("", "window_start")?;
                    let count: i64 = row.try_get("", "count")?;
                    totals.insert((key_id, window_start), u64::try_from(count).unwrap_or(0));
                }
            }
            txn.commit().await?;
            deltas
                .iter()
                .map(|(key_id, window_start, _)| {
                    totals
                        .get(&(key_id.clone(), *window_start))
                        .copied()
                        .ok_or_else(|| {
                            StoreError::Corrupt(format!(
                                "rate_limit_windows: no total for key {key_id}"
                            ))
                        })
                })
                .collect()
        })
        .await
    }

    /// Deletes rate-limit windows starting before `older_than` (unix seconds);
    /// returns how many.
    pub async fn prune_rate_windows(&self, older_than: i64) -> Result<u64, StoreError> {
        self.observed("prune_rate_windows", async move {
            let result = self
                .db
                .execute_raw(Statement::from_sql_and_values(
                    self.db.get_database_backend(),
                    "DELETE FROM rate_limit_windows WHERE window_start < $1",
                    [older_than.into()],
                ))
                .await?;
            Ok(result.rows_affected())
        })
        .await
    }

    /// Listens for key changes made by any replica: `None` on SQLite (one
    /// process; nothing to listen to), a [`ChangeListener`] on PostgreSQL.
    /// The listener holds one pooled connection.
    pub async fn listen(&self) -> Result<Option<ChangeListener>, StoreError> {
        self.observed("listen", async move {
            match self.backend() {
                Backend::Sqlite => Ok(None),
                Backend::Postgres => {
                    let pool = self.db.get_postgres_connection_pool();
                    ChangeListener::start(pool).await.map(Some)
                }
            }
        })
        .await
    }

    /// Sends a heartbeat notification that every listener receives as
    /// [`crate::Change::Heartbeat`], so a listener whose connection silently
    /// stopped delivering can tell (PostgreSQL only; a no-op on SQLite).
    pub async fn send_heartbeat(&self) -> Result<(), StoreError> {
        self.observed("send_heartbeat", async move {
            if self.backend() != Backend::Postgres {
                return Ok(());
            }
            self.db
                .execute_raw(Statement::from_sql_and_values(
                    DbBackend::Postgres,
                    "SELECT pg_notify($1, $2)",
                    [CHANGE_CHANNEL.into(), HEARTBEAT_PAYLOAD.into()],
                ))
                .await?;
            Ok(())
        })
        .await
    }
}

/// The SQL condition for a user-visible status at `now`.
fn status_condition(status: KeyStatus, now: DateTime<Utc>) -> Condition {
    use keygate_domain::KeyState;
    let state = |s: KeyState| api_key::Column::State.eq(s.as_str());
    let live = Condition::all().add(api_key::Column::DeletedAt.is_null());
    match status {
        KeyStatus::Deleted => Condition::all().add(api_key::Column::DeletedAt.is_not_null()),
        KeyStatus::Active => live.add(state(KeyState::Active)).add(
            Condition::any()
                .add(api_key::Column::ExpiresAt.is_null())
                .add(api_key::Column::ExpiresAt.gt(now)),
        ),
        KeyStatus::Expired => live
            .add(state(KeyState::Active))
            .add(api_key::Column::ExpiresAt.lte(now)),
        KeyStatus::Disabled => live.add(state(KeyState::Disabled)),
        KeyStatus::Revoked => live.add(state(KeyState::Revoked)),
    }
}

/// Loads a key and its credentials (newest first).
pub(crate) async fn load_key<C: ConnectionTrait>(
    db: &C,
    id: &str,
) -> Result<Option<ApiKey>, StoreError> {
    let Some(row) = api_key::Entity::find_by_id(id.to_owned()).one(db).await? else {
        return Ok(None);
    };
    let credentials = credentials_of(db, id).await?;
    let last_uses = last_uses_of(db, std::slice::from_ref(&row.id)).await?;
    let (credentials, last_used) = with_last_uses(&row.id, credentials, &last_uses);
    key_from_rows(row, credentials, last_used).map(Some)
}

/// A credential row of `find_by_lookup_id`, with its last use.
struct CredentialRow {
    credential: credential::Model,
    used_at: Option<DateTime<Utc>>,
}

impl CredentialRow {
    /// The last use's column: SeaORM names the first entity's columns `A_…`.
    const USED_AT: &'static str = "A_used_at";
}

impl FromQueryResult for CredentialRow {
    fn from_query_result(row: &QueryResult, prefix: &str) -> Result<Self, DbErr> {
        Ok(CredentialRow {
            credential: credential::Model::from_query_result(row, prefix)?,
            used_at: row.try_get(prefix, "used_at")?,
        })
    }
}

/// The key row of `find_by_lookup_id`, with the key's last use.
struct KeyRow {
    key: api_key::Model,
    last_used: Option<DateTime<Utc>>,
}

impl KeyRow {
    /// The last use's column: SeaORM names the second entity's columns `B_…`.
    const LAST_USED: &'static str = "B_last_used";
}

impl FromQueryResult for KeyRow {
    fn from_query_result(row: &QueryResult, prefix: &str) -> Result<Self, DbErr> {
        Ok(KeyRow {
            key: api_key::Model::from_query_result(row, prefix)?,
            last_used: row.try_get(prefix, "last_used")?,
        })
    }
}

/// The `key_last_uses` rows of the keys `key_ids`.
async fn last_uses_of<C: ConnectionTrait>(
    db: &C,
    key_ids: &[String],
) -> Result<Vec<key_last_use::Model>, StoreError> {
    Ok(key_last_use::Entity::find()
        .filter(key_last_use::Column::KeyId.is_in(key_ids.iter().map(String::as_str)))
        .all(db)
        .await?)
}

async fn credentials_of<C: ConnectionTrait>(
    db: &C,
    key_id: &str,
) -> Result<Vec<credential::Model>, StoreError> {
    Ok(credential::Entity::find()
        .filter(credential::Column::KeyId.eq(key_id))
        .order_by_desc(credential::Column::CreatedAt)
        .order_by_desc(credential::Column::LookupId)
        .all(db)
        .await?)
}

pub(crate) async fn lookup_ids_of<C: ConnectionTrait>(
    db: &C,
    key_id: &str,
) -> Result<Vec<String>, StoreError> {
    Ok(credential::Entity::find()
        .select_only()
        .column(credential::Column::LookupId)
        .filter(credential::Column::KeyId.eq(key_id))
        .into_tuple::<String>()
        .all(db)
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_on_postgres_and_anonymous_on_sqlite() {
        assert_eq!(
            placeholders(DbBackend::Postgres, 2, 2, 2),
            "($2, $3), ($4, $5)"
        );
        assert_eq!(
            placeholders(DbBackend::Sqlite, 1, 2, 3),
            "(?, ?, ?), (?, ?, ?)"
        );
    }
}
