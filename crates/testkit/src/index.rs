//! Fresh, isolated indexes on each engine: a SQLite file in a temporary directory, or a
//! database of its own on the PostgreSQL server the test command started
//! ([`POSTGRES_URL_ENV`]), created with a random name and dropped afterwards, so tests run in
//! parallel.

use tessera_index::InstanceIndex;

use crate::backend::service_missing;

/// Environment variable with the URL of a PostgreSQL server (its maintenance database, as a
/// role that may create databases), e.g. `postgres://postgres@127.0.0.1:5432/postgres`.
pub const POSTGRES_URL_ENV: &str = "TESSERA_TEST_POSTGRES_URL";

/// An index engine the suites run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexEngine {
    /// A SQLite file.
    Sqlite,
    /// A database on the test PostgreSQL server.
    Postgres,
}

/// A new, empty database (not yet opened) and what must live as long as it.
pub struct FreshDatabase {
    /// The index URL to open it with.
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    _postgres: Option<PostgresDatabase>,
}

/// An opened fresh index.
pub struct TestIndex {
    /// The index, schema up to date, empty.
    pub index: InstanceIndex,
    /// Its URL and lifetime.
    pub database: FreshDatabase,
}

impl IndexEngine {
    /// A new, empty database, or `None` (after saying why) when the engine's server is not
    /// available and not required.
    pub async fn fresh_database(self) -> Option<FreshDatabase> {
        match self {
            Self::Sqlite => {
                let dir = tempfile::tempdir().expect("temporary directory");
                let url = format!("sqlite://{}/index/index.db", dir.path().display());
                Some(FreshDatabase {
                    url,
                    _dir: Some(dir),
                    _postgres: None,
                })
            }
            Self::Postgres => {
                let Ok(admin) = std::env::var(POSTGRES_URL_ENV) else {
                    service_missing("PostgreSQL", POSTGRES_URL_ENV);
                    return None;
                };
                let database = PostgresDatabase::create(&admin).await;
                Some(FreshDatabase {
                    url: database.url.clone(),
                    _dir: None,
                    _postgres: Some(database),
                })
            }
        }
    }

    /// A new, empty, opened index (see [`Self::fresh_database`]).
    pub async fn fresh(self) -> Option<TestIndex> {
        let database = self.fresh_database().await?;
        let index = InstanceIndex::open(&database.url)
            .await
            .unwrap_or_else(|e| panic!("opening a fresh {self:?} index: {e}"));
        Some(TestIndex { index, database })
    }
}

/// A database with a random name on the test server, dropped (with its connections) on drop.
struct PostgresDatabase {
    admin: String,
    name: String,
    url: String,
}

impl PostgresDatabase {
    async fn create(admin: &str) -> Self {
        use sqlx::Connection;
        let name = format!("tessera_test_{}", uuid::Uuid::new_v4().simple());
        let mut url = url::Url::parse(admin)
            .unwrap_or_else(|e| panic!("{POSTGRES_URL_ENV} is not a URL: {e}"));
        url.set_path(&name);
        let mut connection = sqlx::PgConnection::connect(admin)
            .await
            .unwrap_or_else(|e| panic!("connecting to {POSTGRES_URL_ENV}: {e}"));
        // An identifier cannot be bound; the name is ours (letters, digits, underscores).
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut connection)
            .await
            .unwrap_or_else(|e| panic!("creating database {name}: {e}"));
        let _ = connection.close().await;
        Self {
            admin: admin.to_owned(),
            name,
            url: url.to_string(),
        }
    }
}

impl Drop for PostgresDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin.clone(), self.name.clone());
        // Drop runs inside the test's runtime, which cannot be blocked on: a thread of its own.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                use sqlx::Connection;
                let mut connection = sqlx::PgConnection::connect(&admin).await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut connection)
                .await?;
                connection.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}", self.name);
        }
    }
}
