//! Throwaway databases for tests, here and in the server's end-to-end tests:
//! a SQLite file in a temporary directory, or a fresh PostgreSQL database
//! created on the server named by `KEYGATE_TEST_POSTGRES_URL` and dropped
//! again afterwards.
//!
//! Without `KEYGATE_TEST_POSTGRES_URL`, PostgreSQL tests are skipped with a
//! message, except under CI (`CI` set), where they panic: a CI run must not
//! pass by silently testing one backend only.

use sea_orm::sqlx::{Connection, Executor, postgres::PgConnection};

/// The environment variable naming the PostgreSQL server for tests, such as
/// `postgres://postgres:keygate@127.0.0.1:5432/postgres`.
pub const POSTGRES_URL_ENV: &str = "KEYGATE_TEST_POSTGRES_URL";

/// A database that exists for the lifetime of this value.
#[derive(Debug)]
pub struct TestDatabase {
    /// URL to hand to [`crate::Store::connect`].
    pub url: String,
    /// Keeps the SQLite file's directory alive.
    _dir: Option<tempfile::TempDir>,
    /// PostgreSQL: the server URL (maintenance database) and the database to drop.
    postgres: Option<(String, String)>,
}

impl TestDatabase {
    /// A fresh SQLite database file in a temporary directory.
    pub fn sqlite() -> TestDatabase {
        let dir = tempfile::tempdir().expect("create temporary directory");
        let path = dir.path().join("keygate.db");
        TestDatabase {
            url: format!("sqlite://{}?mode=rwc", path.display()),
            _dir: Some(dir),
            postgres: None,
        }
    }

    /// A fresh PostgreSQL database, or `None` (after printing why) when
    /// `KEYGATE_TEST_POSTGRES_URL` is unset. Panics if it is unset under CI,
    /// or if the database cannot be created.
    pub async fn postgres() -> Option<TestDatabase> {
        let Ok(server_url) = std::env::var(POSTGRES_URL_ENV) else {
            if std::env::var_os("CI").is_some() {
                panic!("{POSTGRES_URL_ENV} is not set: PostgreSQL tests must run under CI");
            }
            eprintln!("skipping postgres test: {POSTGRES_URL_ENV} is not set");
            return None;
        };
        let name = format!("kg_test_{}", uuid::Uuid::now_v7().simple());
        let mut conn = PgConnection::connect(&server_url)
            .await
            .unwrap_or_else(|e| panic!("connect to {POSTGRES_URL_ENV}: {e}"));
        conn.execute(sea_orm::sqlx::AssertSqlSafe(format!(
            r#"CREATE DATABASE "{name}""#
        )))
        .await
        .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let _ = conn.close().await;
        Some(TestDatabase {
            url: with_database(&server_url, &name),
            _dir: None,
            postgres: Some((server_url, name)),
        })
    }
}

impl Drop for TestDatabase {
    /// Drops the PostgreSQL database (best effort, forcing other sessions
    /// off); the SQLite directory goes with its `TempDir`.
    fn drop(&mut self) {
        let Some((server_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop may run inside or outside a runtime: use a thread of our own.
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&server_url).await {
                    let sql = format!(r#"DROP DATABASE IF EXISTS "{name}" WITH (FORCE)"#);
                    if let Err(e) = conn.execute(sea_orm::sqlx::AssertSqlSafe(sql)).await {
                        eprintln!("could not drop test database {name}: {e}");
                    }
                    let _ = conn.close().await;
                }
            });
        });
        let _ = handle.join();
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{}", &base[..path_start], name);
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_database_name() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
