//! The backends the suite runs on.

use std::path::Path;

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::BigInt;
use diesel_idempotent::{IdempotencyRecord, idempotency_records};
use diesel_migrations::{FileBasedMigrations, MigrationHarness};

use super::statements::{Count, Id};
#[allow(
    unused_imports,
    reason = "each backend's impl expands its dialect's macros"
)]
use super::statements::{mysql_inserts, returning_inserts, row_locks, session_id};
use super::{Account, AppError, Backend, Isolation, TestConn};

/// The helpers every backend writes the same way in Diesel's DSL that only
/// a blocking connection has; expanded in each concrete connection's impl
/// next to `dsl_statements!`.
macro_rules! shared_helpers {
    () => {
        $crate::common::statements::dsl_statements!([] []);

        fn run_file_migrations(&mut self, dir: &Path) -> usize {
            self.run_pending_migrations(file_migrations(dir))
                .expect("file-based migrations")
                .len()
        }
    };
}

fn file_migrations(dir: &Path) -> FileBasedMigrations {
    FileBasedMigrations::from_path(dir).expect("a Diesel CLI migrations directory")
}

/// A database created for one test on a server whose URL is in an
/// environment variable, dropped when the handle is.
#[cfg(any(feature = "postgres", feature = "mysql"))]
struct ServerDatabase<C: Connection> {
    admin_url: String,
    url: String,
    name: String,
    drop_options: &'static str,
    connection: std::marker::PhantomData<fn() -> C>,
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<C: Connection> ServerDatabase<C>
where
    diesel::query_builder::SqlQuery: diesel::query_dsl::methods::ExecuteDsl<C>
        + diesel::query_dsl::methods::LoadQuery<'static, C, Count>,
{
    fn create(var: &str, what: &str, drop_options: &'static str) -> Self {
        let admin_url = server_url(var, what);
        let name = unique_database_name();
        let mut admin = C::establish(&admin_url)
            .unwrap_or_else(|e| panic!("cannot reach {what} at {var}: {e}"));
        diesel::sql_query(format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .expect("create test database");
        let url = database_url(&admin_url, &name);
        ServerDatabase {
            admin_url,
            url,
            name,
            drop_options,
            connection: std::marker::PhantomData,
        }
    }

    fn connect(&self) -> C {
        C::establish(&self.url).expect("connect to the test database")
    }

    /// Returns once `count_sql` (a `COUNT(*) AS n`) reaches `n`; fails after
    /// a minute.
    fn wait_until_count(&self, count_sql: &str, n: usize) {
        let mut conn = self.connect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let count = diesel::sql_query(count_sql)
                .get_result::<Count>(&mut conn)
                .expect("count query")
                .n;
            if count >= n as i64 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{n} lock waiter(s) never appeared"
            );
            std::thread::yield_now();
        }
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<C: Connection> Drop for ServerDatabase<C> {
    fn drop(&mut self) {
        if let Ok(mut admin) = C::establish(&self.admin_url) {
            let sql = format!("DROP DATABASE IF EXISTS {}{}", self.name, self.drop_options);
            let _ = admin.batch_execute(&sql);
        }
    }
}

#[cfg(any(feature = "postgres", feature = "mysql"))]
impl<C: Connection> ServerDatabase<C> {
    /// The URL of this test's database.
    fn url(&self) -> &str {
        &self.url
    }
}

/// The URL of a backend's test database (for connections the conformance
/// suite does not open itself: diesel-async pools).
pub trait DatabaseUrl {
    /// The URL (SQLite: the database file's path).
    fn url(&self) -> String;
}

#[cfg(feature = "sqlite")]
impl DatabaseUrl for Sqlite {
    fn url(&self) -> String {
        self.dir
            .path()
            .join("test.sqlite3")
            .to_string_lossy()
            .into_owned()
    }
}

#[cfg(feature = "postgres")]
impl DatabaseUrl for Postgres {
    fn url(&self) -> String {
        self.0.url().to_owned()
    }
}

#[cfg(feature = "mysql")]
impl DatabaseUrl for Mysql {
    fn url(&self) -> String {
        self.0.url().to_owned()
    }
}

/// `admin_url` with its database replaced by `name`.
#[cfg(any(feature = "postgres", feature = "mysql"))]
pub fn database_url(admin_url: &str, name: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((base, query)) => (base, format!("?{query}")),
        None => (admin_url, String::new()),
    };
    let (server, _) = base
        .rsplit_once('/')
        .filter(|(server, _)| server.contains("//"))
        .unwrap_or((base, ""));
    format!("{server}/{name}{query}")
}

/// A database name unique to this process and call.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn unique_database_name() -> String {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "di_test_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    )
}

/// The server URL in `var`, or a failure that says how to get one.
#[cfg(any(feature = "postgres", feature = "mysql"))]
fn server_url(var: &str, what: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "the {what} tests need a server: run ./scripts/test.sh, which starts one, \
             or set {var}"
        )
    })
}

/// SQLite on a temporary file in WAL mode, every connection with a busy
/// timeout so concurrent writers wait instead of failing.
#[cfg(feature = "sqlite")]
pub struct Sqlite {
    dir: tempfile::TempDir,
}

#[cfg(feature = "sqlite")]
impl Backend for Sqlite {
    const ISOLATION_LEVELS: &'static [Isolation] = &[Isolation::Serializable];
    const REJECTS_AT_ONCE: bool = false;
    type Conn = SqliteConnection;
    const NAME: &'static str = "sqlite";
    const MIGRATIONS: diesel_idempotent::migrations::Backend =
        diesel_idempotent::migrations::Backend::Sqlite;

    fn empty() -> Self {
        let db = Sqlite {
            dir: tempfile::tempdir().expect("temporary directory"),
        };
        let mut conn = db.connect();
        diesel::sql_query("PRAGMA journal_mode = WAL")
            .execute(&mut conn)
            .expect("WAL mode");
        db
    }

    fn connect(&self) -> SqliteConnection {
        let path = self.dir.path().join("test.sqlite3");
        let mut conn = SqliteConnection::establish(&path.to_string_lossy()).expect("open SQLite");
        diesel::sql_query("PRAGMA busy_timeout = 60000")
            .execute(&mut conn)
            .expect("busy timeout");
        conn
    }

    fn wait_for_lock_waiters(&self, _n: usize) {}
}

#[cfg(feature = "sqlite")]
impl TestConn for SqliteConnection {
    returning_inserts!([] [] "?", "?");
    row_locks!([] [] sqlite);
    session_id!([] [] sqlite);

    fn create_side_tables(&mut self) -> QueryResult<()> {
        diesel::sql_query(
            "CREATE TABLE payments (id INTEGER PRIMARY KEY AUTOINCREMENT, amount BIGINT NOT NULL)",
        )
        .execute(self)
        .map(drop)
    }

    fn transaction_at<R>(
        &mut self,
        level: Isolation,
        f: impl FnOnce(&mut Self) -> Result<R, AppError>,
    ) -> Result<R, AppError> {
        assert_eq!(
            level,
            Isolation::Serializable,
            "SQLite is always serializable"
        );
        self.transaction(f)
    }

    fn create_account_tables(&mut self) -> QueryResult<()> {
        diesel::sql_query(
            "CREATE TABLE accounts (id INTEGER PRIMARY KEY AUTOINCREMENT, \
             customer_id BIGINT NOT NULL, bank_id BIGINT NOT NULL, UNIQUE (customer_id, bank_id))",
        )
        .execute(self)?;
        diesel::sql_query("CREATE TABLE notes (customer_id BIGINT NOT NULL, body TEXT)")
            .execute(self)
            .map(drop)
    }

    fn create_tricky_index_tables(
        &mut self,
    ) -> QueryResult<Vec<(&'static str, &'static [&'static str], bool)>> {
        self.batch_execute(
            "CREATE TABLE emails (customer_id BIGINT NOT NULL, email TEXT NOT NULL, \
               deleted INTEGER NOT NULL DEFAULT 0); \
             CREATE UNIQUE INDEX emails_expr ON emails (customer_id, lower(email)); \
             CREATE UNIQUE INDEX emails_live ON emails (email) WHERE deleted = 0; \
             CREATE TABLE handles (handle TEXT NOT NULL UNIQUE);",
        )?;
        Ok(vec![
            ("emails", &["customer_id"], false),
            ("emails", &["customer_id", "email"], false),
            ("emails", &["email"], false),
            ("handles", &["handle"], true),
            ("payments", &["id"], true),
        ])
    }

    shared_helpers!();
}

/// A database of its own on the PostgreSQL server at
/// `DIESEL_IDEMPOTENT_PG_URL` (started by `scripts/test.sh`).
#[cfg(feature = "postgres")]
pub struct Postgres(ServerDatabase<PgConnection>);

#[cfg(feature = "postgres")]
pub const PG_URL_VAR: &str = "DIESEL_IDEMPOTENT_PG_URL";

#[cfg(feature = "postgres")]
impl Backend for Postgres {
    const ISOLATION_LEVELS: &'static [Isolation] = &[
        Isolation::ReadCommitted,
        Isolation::RepeatableRead,
        Isolation::Serializable,
    ];
    const REJECTS_AT_ONCE: bool = true;
    type Conn = PgConnection;
    const NAME: &'static str = "postgres";
    const MIGRATIONS: diesel_idempotent::migrations::Backend =
        diesel_idempotent::migrations::Backend::Postgres;

    fn empty() -> Self {
        Postgres(ServerDatabase::create(
            PG_URL_VAR,
            "PostgreSQL",
            " WITH (FORCE)",
        ))
    }

    fn connect(&self) -> PgConnection {
        self.0.connect()
    }

    fn wait_for_lock_waiters(&self, n: usize) {
        self.0.wait_until_count(
            "SELECT COUNT(*) AS n FROM pg_stat_activity \
             WHERE datname = current_database() AND wait_event_type = 'Lock'",
            n,
        );
    }
}

#[cfg(feature = "postgres")]
impl TestConn for PgConnection {
    returning_inserts!([] [] "$1", "$2");
    row_locks!([] [] "SET lock_timeout = '200ms'", "$1");
    session_id!([] [] "SELECT CAST(pg_backend_pid() AS BIGINT) AS id");

    fn create_side_tables(&mut self) -> QueryResult<()> {
        diesel::sql_query(
            "CREATE TABLE payments (id BIGSERIAL PRIMARY KEY, amount BIGINT NOT NULL)",
        )
        .execute(self)
        .map(drop)
    }

    fn transaction_at<R>(
        &mut self,
        level: Isolation,
        f: impl FnOnce(&mut Self) -> Result<R, AppError>,
    ) -> Result<R, AppError> {
        let builder = self.build_transaction();
        let mut builder = match level {
            Isolation::ReadCommitted => builder.read_committed(),
            Isolation::RepeatableRead => builder.repeatable_read(),
            Isolation::Serializable => builder.serializable(),
        };
        builder.run(f)
    }

    fn create_account_tables(&mut self) -> QueryResult<()> {
        diesel::sql_query(
            "CREATE TABLE accounts (id BIGSERIAL PRIMARY KEY, customer_id BIGINT NOT NULL, \
             bank_id BIGINT NOT NULL, UNIQUE (customer_id, bank_id))",
        )
        .execute(self)?;
        diesel::sql_query("CREATE TABLE notes (customer_id BIGINT NOT NULL, body TEXT)")
            .execute(self)
            .map(drop)
    }

    fn create_tricky_index_tables(
        &mut self,
    ) -> QueryResult<Vec<(&'static str, &'static [&'static str], bool)>> {
        self.batch_execute(
            "CREATE TABLE emails (customer_id BIGINT NOT NULL, email TEXT NOT NULL, \
               deleted BOOLEAN NOT NULL DEFAULT false); \
             CREATE UNIQUE INDEX emails_expr ON emails (customer_id, lower(email)); \
             CREATE UNIQUE INDEX emails_live ON emails (email) WHERE NOT deleted; \
             CREATE TABLE codes (code TEXT NOT NULL, \
               CONSTRAINT codes_code UNIQUE (code) DEFERRABLE INITIALLY DEFERRED); \
             CREATE TABLE tickets (ticket TEXT NOT NULL, \
               CONSTRAINT tickets_ticket UNIQUE (ticket) DEFERRABLE INITIALLY IMMEDIATE); \
             CREATE TABLE handles (handle TEXT NOT NULL, note TEXT, \
               CONSTRAINT handles_handle UNIQUE (handle) INCLUDE (note));",
        )?;
        Ok(vec![
            ("emails", &["customer_id"], false),
            ("emails", &["customer_id", "email"], false),
            ("emails", &["email"], false),
            ("codes", &["code"], false),
            ("tickets", &["ticket"], false),
            ("handles", &["handle"], true),
            ("payments", &["id"], true),
        ])
    }

    shared_helpers!();
}

/// A database of its own on the MySQL/MariaDB server at
/// `DIESEL_IDEMPOTENT_MYSQL_URL` (started by `scripts/test.sh`).
#[cfg(feature = "mysql")]
pub struct Mysql(ServerDatabase<MysqlConnection>);

#[cfg(feature = "mysql")]
pub const MYSQL_URL_VAR: &str = "DIESEL_IDEMPOTENT_MYSQL_URL";

#[cfg(feature = "mysql")]
impl Backend for Mysql {
    const ISOLATION_LEVELS: &'static [Isolation] = &[
        Isolation::ReadCommitted,
        Isolation::RepeatableRead,
        Isolation::Serializable,
    ];
    const REJECTS_AT_ONCE: bool = true;
    type Conn = MysqlConnection;
    const NAME: &'static str = "mysql";
    const MIGRATIONS: diesel_idempotent::migrations::Backend =
        diesel_idempotent::migrations::Backend::Mysql;

    fn empty() -> Self {
        Mysql(ServerDatabase::create(MYSQL_URL_VAR, "MySQL", ""))
    }

    fn connect(&self) -> MysqlConnection {
        self.0.connect()
    }

    fn wait_for_lock_waiters(&self, n: usize) {
        // A claim (or an insert into `accounts`, whose unique row a held
        // first call inserted) that is executing cannot finish while the
        // first call holds its lock, so it is (or is about to be) waiting.
        self.0.wait_until_count(
            "SELECT COUNT(*) AS n FROM information_schema.PROCESSLIST \
             WHERE DB = DATABASE() AND (INFO LIKE 'INSERT IGNORE INTO idempotency_records%' \
             OR INFO LIKE 'INSERT INTO accounts%')",
            n,
        );
    }
}

#[cfg(feature = "mysql")]
impl TestConn for MysqlConnection {
    mysql_inserts!([] []);
    row_locks!([] [] "SET SESSION innodb_lock_wait_timeout = 1", "?");
    session_id!([] [] "SELECT CAST(CONNECTION_ID() AS SIGNED) AS id");

    fn create_side_tables(&mut self) -> QueryResult<()> {
        diesel::sql_query(
            "CREATE TABLE payments (id BIGINT AUTO_INCREMENT PRIMARY KEY, amount BIGINT NOT NULL) \
             ENGINE = InnoDB",
        )
        .execute(self)
        .map(drop)
    }

    fn create_tricky_index_tables(
        &mut self,
    ) -> QueryResult<Vec<(&'static str, &'static [&'static str], bool)>> {
        // MariaDB has neither expression nor partial indexes; a prefix
        // index on a column still makes the column unique.
        self.batch_execute(
            "CREATE TABLE handles (handle VARCHAR(64) NOT NULL, note TEXT, \
               UNIQUE KEY handles_prefix (handle(16))) ENGINE = InnoDB; \
             CREATE TABLE emails (customer_id BIGINT NOT NULL, email VARCHAR(64) NOT NULL, \
               UNIQUE KEY emails_pair (customer_id, email)) ENGINE = InnoDB;",
        )?;
        Ok(vec![
            ("handles", &["handle"], true),
            ("emails", &["customer_id"], false),
            ("emails", &["customer_id", "email"], true),
            ("payments", &["id"], true),
        ])
    }

    fn transaction_at<R>(
        &mut self,
        level: Isolation,
        f: impl FnOnce(&mut Self) -> Result<R, AppError>,
    ) -> Result<R, AppError> {
        let level = match level {
            Isolation::ReadCommitted => "READ COMMITTED",
            Isolation::RepeatableRead => "REPEATABLE READ",
            Isolation::Serializable => "SERIALIZABLE",
        };
        // The session's level, which the library reads (a `SET TRANSACTION`
        // for the next transaction only would not show).
        diesel::sql_query(format!("SET SESSION TRANSACTION ISOLATION LEVEL {level}"))
            .execute(self)?;
        self.transaction(f)
    }

    fn create_account_tables(&mut self) -> QueryResult<()> {
        diesel::sql_query(
            "CREATE TABLE accounts (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             customer_id BIGINT NOT NULL, bank_id BIGINT NOT NULL, \
             UNIQUE KEY accounts_natural (customer_id, bank_id)) ENGINE = InnoDB",
        )
        .execute(self)?;
        diesel::sql_query("CREATE TABLE notes (customer_id BIGINT NOT NULL, body TEXT)")
            .execute(self)
            .map(drop)
    }

    shared_helpers!();
}
