//! Usage storage: the last use of each credential (`key_last_uses`; a key's
//! is the latest of its credentials'), and request counts per key per hour
//! (`key_usage_hourly`).
//!
//! Both are written by the server's background flushers, never by a request,
//! and always set-based: multi-row statements (`rows_per_statement`: 2 048
//! parameters on SQLite, 512 on PostgreSQL), in the tables' key order, so
//! replicas flushing at once lock rows in the same order and cannot
//! deadlock. `key_usage_hourly` is keyed by hour first (migration 7): a
//! flush updates one contiguous range of it, and a key's rows are read by
//! naming its hours ([`STORED_HOURS`]). The write load is therefore bounded by the number of keys a
//! flush covers, not by the request rate. Usage writes neither bump a key's
//! version nor notify: they change nothing a decision reads.

use chrono::{DateTime, Utc};
use keygate_domain::usage::{BUCKET_SECS, UsageBucket, UsageCounts, last_use_precision};
use std::sync::Arc;

use sea_orm::{ConnectionTrait, DbBackend, Statement, sqlx};

use crate::error::StoreError;
use crate::store::{Store, placeholders, rows_per_statement};

/// The latest use of one credential, to be stored as its and its key's
/// `last_used_at` unless a later one is stored already.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LastUsed {
    /// The key used (shared, not copied: a flush binds it as it is).
    pub key_id: Arc<str>,
    /// The credential used.
    pub lookup_id: Arc<str>,
    /// When.
    pub at: DateTime<Utc>,
}

/// Requests of one key in one hour, to be added to what is stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourlyUsage {
    /// The key (shared, not copied: a flush binds it as it is).
    pub key_id: Arc<str>,
    /// Start of the hour, unix seconds (a multiple of 3600).
    pub hour_start: i64,
    /// Requests to add.
    pub counts: UsageCounts,
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// One `key_last_uses` row to write: key, credential, time.
type UseRow<'a> = (&'a Arc<str>, &'a Arc<str>, DateTime<Utc>);

/// One `key_usage_hourly` addition: hour, key, counts.
type CountRow<'a> = (i64, &'a Arc<str>, UsageCounts);

/// Sorts `rows` by `key` unless they are in order already (the flusher
/// hands them over in order, so that is one pass), then merges runs of
/// equal keys into their first row with `merge`.
fn ordered_and_merged<T, K: Ord>(
    mut rows: Vec<T>,
    key: impl Fn(&T) -> K,
    merge: impl Fn(&mut T, &T),
) -> Vec<T> {
    if !rows.is_sorted_by(|a, b| key(a) <= key(b)) {
        rows.sort_unstable_by_key(&key);
    }
    rows.dedup_by(|later, kept| {
        let same = key(later) == key(kept);
        if same {
            merge(kept, later);
        }
        same
    });
    rows
}

/// Last uses as stored: the newest per credential, in key order, at
/// PostgreSQL's microsecond precision.
fn latest_uses(uses: &[LastUsed]) -> Vec<UseRow<'_>> {
    ordered_and_merged(
        uses.iter()
            .map(|u| (&u.key_id, &u.lookup_id, last_use_precision(u.at)))
            .collect(),
        |&(key_id, lookup_id, _)| (&**key_id, &**lookup_id),
        |kept, later| kept.2 = kept.2.max(later.2),
    )
}

/// Counts to add: one per key-hour (repeats summed), in the table's order
/// (hour, then key), almost always one hour.
fn merged_counts(counts: &[HourlyUsage]) -> Vec<CountRow<'_>> {
    ordered_and_merged(
        counts
            .iter()
            .filter(|c| !c.counts.is_empty())
            .map(|c| (c.hour_start, &c.key_id, c.counts))
            .collect(),
        |&(hour_start, key_id, _)| (hour_start, &**key_id),
        |kept, later| kept.2.merge(&later.2),
    )
}

/// `hours(h)`: the start of every hour in `[$2, $3)` (unix seconds, `$2`
/// a multiple of an hour) from the first to the last hour that
/// `key_usage_hourly` holds, none if it holds nothing: a recursive common
/// table expression for statements on the table to begin with. Both ends
/// come from the primary key's first column (two index lookups), then one
/// row per hour.
pub(crate) const STORED_HOURS: &str = "WITH RECURSIVE \
     stored(first_hour, last_hour) AS (SELECT \
     (SELECT MIN(hour_start) FROM key_usage_hourly), \
     (SELECT MAX(hour_start) FROM key_usage_hourly)), \
     bounds(lo, hi) AS (SELECT \
     CASE WHEN first_hour < CAST($2 AS BIGINT) THEN CAST($2 AS BIGINT) ELSE first_hour END, \
     CASE WHEN last_hour >= CAST($3 AS BIGINT) THEN CAST($3 AS BIGINT) ELSE last_hour + 1 END \
     FROM stored), \
     hours(h) AS (SELECT lo FROM bounds WHERE lo < hi \
     UNION ALL SELECT h + 3600 FROM hours, bounds WHERE h + 3600 < bounds.hi)";

/// `from` moved up to the next hour boundary (hour rows start on one), and
/// kept where that cannot overflow.
pub(crate) fn first_hour_from(from: i64) -> i64 {
    let from = from.clamp(0, i64::MAX - BUCKET_SECS);
    from + (BUCKET_SECS - from % BUCKET_SECS) % BUCKET_SECS
}

/// The statement that upserts `rows` last uses into `key_last_uses` (see
/// [`Store::record_last_used`]).
///
/// Only rows that exist or credentials that exist (a key deleted
/// meanwhile would fail the foreign key, and the flush with it). The row
/// is asked first: it is almost always there (a credential's first use
/// writes it once), found by a forward walk of its primary key in key
/// order, where the credential is a random seek by lookup id. On SQLite at
/// a million keys that halves a flush's cost per key (4.3 µs to 2.2 µs).
fn upsert_last_uses_sql(backend: DbBackend, rows: usize) -> String {
    format!(
        "WITH v(key_id, lookup_id, t) AS (VALUES {}) \
         INSERT INTO key_last_uses (key_id, lookup_id, used_at) \
         SELECT v.key_id, v.lookup_id, v.t FROM v WHERE EXISTS \
         (SELECT 1 FROM key_last_uses u \
         WHERE u.key_id = v.key_id AND u.lookup_id = v.lookup_id) \
         OR EXISTS (SELECT 1 FROM credentials c \
         WHERE c.lookup_id = v.lookup_id AND c.key_id = v.key_id) \
         ON CONFLICT (key_id, lookup_id) DO UPDATE SET used_at = excluded.used_at \
         WHERE key_last_uses.used_at < excluded.used_at",
        placeholders(backend, 1, rows, 3)
    )
}

/// The statement that adds `rows` counts to `key_usage_hourly` (see
/// [`Store::add_usage_counts`]).
fn add_counts_sql(backend: DbBackend, rows: usize) -> String {
    format!(
        "INSERT INTO key_usage_hourly \
         (hour_start, key_id, allowed, denied_rate_limited, denied_other) VALUES {} \
         ON CONFLICT (hour_start, key_id) DO UPDATE SET \
         allowed = key_usage_hourly.allowed + excluded.allowed, \
         denied_rate_limited = key_usage_hourly.denied_rate_limited \
         + excluded.denied_rate_limited, \
         denied_other = key_usage_hourly.denied_other + excluded.denied_other",
        placeholders(backend, 1, rows, 5)
    )
}

/// Writes `latest` and `merged` in one transaction of multi-row
/// statements, bound through sqlx itself rather than SeaORM's `Value`s:
/// a key id is bound as the `Arc<str>` the caller holds (SeaORM copies
/// every text value into a `String`, clones the list, and sqlx wraps each
/// again), which was most of the flusher's own CPU at a million keys.
async fn write_usage<DB>(
    pool: &sqlx::Pool<DB>,
    backend: DbBackend,
    latest: &[UseRow<'_>],
    merged: &[CountRow<'_>],
) -> Result<(), StoreError>
where
    DB: sqlx::Database,
    for<'c> &'c mut DB::Connection: sqlx::Executor<'c, Database = DB>,
    DB::Arguments: sqlx::IntoArguments<DB>,
    for<'e> Arc<str>: sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    for<'e> i64: sqlx::Encode<'e, DB> + sqlx::Type<DB>,
    for<'e> DateTime<Utc>: sqlx::Encode<'e, DB> + sqlx::Type<DB>,
{
    use sqlx::Arguments;

    /// A bind that cannot fail for these types short of a driver bug.
    fn bound(result: Result<(), sqlx::error::BoxDynError>) -> Result<(), StoreError> {
        result.map_err(|err| StoreError::Database(sea_orm::DbErr::Custom(err.to_string())))
    }
    let mut txn = pool.begin().await?;
    for chunk in latest.chunks(rows_per_statement(backend, 3)) {
        let mut args = DB::Arguments::default();
        for (key_id, lookup_id, at) in chunk {
            bound(args.add(Arc::clone(key_id)))?;
            bound(args.add(Arc::clone(lookup_id)))?;
            bound(args.add(*at))?;
        }
        let sql = upsert_last_uses_sql(backend, chunk.len());
        sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
            .execute(&mut *txn)
            .await?;
    }
    for chunk in merged.chunks(rows_per_statement(backend, 5)) {
        let mut args = DB::Arguments::default();
        for (hour_start, key_id, c) in chunk {
            bound(args.add(*hour_start))?;
            bound(args.add(Arc::clone(key_id)))?;
            bound(args.add(to_i64(c.allowed)))?;
            bound(args.add(to_i64(c.denied_rate_limited)))?;
            bound(args.add(to_i64(c.denied_other)))?;
        }
        let sql = add_counts_sql(backend, chunk.len());
        sqlx::query_with(sqlx::AssertSqlSafe(sql), args)
            .execute(&mut *txn)
            .await?;
    }
    txn.commit().await?;
    Ok(())
}

impl Store {
    /// Stores last uses, in one transaction of multi-row upserts into
    /// `key_last_uses`, in key order: per credential, the stored use becomes
    /// the given time if none is stored or the stored one is earlier (a key's
    /// last use is the latest of its credentials'). A row already as recent
    /// is not touched (no write at all, which matters on PostgreSQL, where
    /// every update is a new row version). Uses of unknown keys and
    /// credentials are ignored.
    pub async fn record_last_used(&self, uses: &[LastUsed]) -> Result<(), StoreError> {
        self.record_usage(uses, &[]).await
    }

    /// Adds request counts to the hourly rows, in one transaction of
    /// multi-row upserts (`INSERT … ON CONFLICT … DO UPDATE SET allowed =
    /// allowed + excluded.allowed, …`): counts of every replica add up.
    /// Repeated key-hours are summed first. Counts for unknown keys are
    /// stored too (a key deleted meanwhile leaves rows that retention
    /// prunes).
    pub async fn add_usage_counts(&self, counts: &[HourlyUsage]) -> Result<(), StoreError> {
        self.record_usage(&[], counts).await
    }

    /// Both of the above in one transaction: all of it is stored, or none.
    /// One pass over a batch of keys writes both tables, and on SQLite one
    /// commit writes each page the batch touched once, however many of its
    /// rows changed: the cost of a row falls with the size of the batch
    /// (4.5 µs in a batch of 83 000 rows among a million keys, 1.8 µs in a
    /// batch of all of them).
    pub async fn record_usage(
        &self,
        uses: &[LastUsed],
        counts: &[HourlyUsage],
    ) -> Result<(), StoreError> {
        let name = match (uses.is_empty(), counts.is_empty()) {
            (false, true) => "record_last_used",
            (true, false) => "add_usage_counts",
            _ => "record_usage",
        };
        self.observed(name, async move {
            let (latest, merged) = (latest_uses(uses), merged_counts(counts));
            if latest.is_empty() && merged.is_empty() {
                return Ok(());
            }
            let writer = self.usage_writer();
            match writer.get_database_backend() {
                DbBackend::Postgres => {
                    let pool = writer.get_postgres_connection_pool();
                    write_usage(pool, DbBackend::Postgres, &latest, &merged).await
                }
                _ => {
                    let pool = writer.get_sqlite_connection_pool();
                    write_usage(pool, DbBackend::Sqlite, &latest, &merged).await
                }
            }
        })
        .await
    }

    /// A key's stored hourly counts for hours starting in `[from, to)` (unix
    /// seconds), oldest first; hours without requests have no row.
    ///
    /// The table is keyed by hour first, so the key's rows are found by
    /// naming each hour of the range (one primary-key lookup each), the
    /// range first narrowed to the hours stored at all.
    pub async fn usage_buckets(
        &self,
        key_id: &str,
        from: i64,
        to: i64,
    ) -> Result<Vec<UsageBucket>, StoreError> {
        self.observed("usage_buckets", async move {
            let backend = self.connection().get_database_backend();
            let rows = self
                .connection()
                .query_all_raw(Statement::from_sql_and_values(
                    backend,
                    format!(
                        "{STORED_HOURS} \
                         SELECT hour_start, allowed, denied_rate_limited, denied_other \
                         FROM key_usage_hourly WHERE key_id = $1 \
                         AND hour_start IN (SELECT h FROM hours) ORDER BY hour_start"
                    ),
                    [key_id.into(), first_hour_from(from).into(), to.into()],
                ))
                .await?;
            rows.into_iter()
                .map(|row| {
                    Ok(UsageBucket {
                        hour_start: row.try_get("", "hour_start")?,
                        counts: UsageCounts {
                            allowed: to_u64(row.try_get("", "allowed")?),
                            denied_rate_limited: to_u64(row.try_get("", "denied_rate_limited")?),
                            denied_other: to_u64(row.try_get("", "denied_other")?),
                        },
                    })
                })
                .collect()
        })
        .await
    }

    /// Deletes hourly counts of hours starting before `older_than` (unix
    /// seconds); returns how many rows.
    pub async fn prune_usage(&self, older_than: i64) -> Result<u64, StoreError> {
        self.observed("prune_usage", async move {
            let result = self
                .connection()
                .execute_raw(Statement::from_sql_and_values(
                    self.connection().get_database_backend(),
                    "DELETE FROM key_usage_hourly WHERE hour_start < $1",
                    [older_than.into()],
                ))
                .await?;
            Ok(result.rows_affected())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_in_order_or_not_come_out_ordered_and_merged() {
        let merged = |rows: Vec<(u8, u32)>| {
            ordered_and_merged(rows, |&(k, _)| k, |kept, later| kept.1 += later.1)
        };
        // In order already (the flusher's case): runs merged in place.
        assert_eq!(
            merged(vec![(1, 1), (2, 2), (2, 3), (5, 4)]),
            [(1, 1), (2, 5), (5, 4)]
        );
        // Out of order, with repeats apart: sorted first, then merged.
        assert_eq!(
            merged(vec![(5, 4), (2, 2), (1, 1), (2, 3), (5, 10)]),
            [(1, 1), (2, 5), (5, 14)]
        );
        assert!(merged(Vec::new()).is_empty());
    }

    #[test]
    fn the_first_hour_is_the_next_boundary_and_never_overflows() {
        assert_eq!(first_hour_from(0), 0);
        assert_eq!(first_hour_from(1), 3600);
        assert_eq!(first_hour_from(3600), 3600);
        assert_eq!(first_hour_from(7199), 7200);
        assert_eq!(first_hour_from(-5), 0);
        let last = first_hour_from(i64::MAX);
        assert_eq!(last % 3600, 0);
        assert!(last > i64::MAX - 2 * 3600);
    }
}
