//! The async backends: the same test databases as [`Backend`], reached
//! through diesel-async connections and pools (feature `async`).

use std::ops::DerefMut;
use std::time::Duration;

use diesel::sql_types::BigInt;
use diesel::{
    ExpressionMethods, OptionalExtension, QueryDsl, QueryResult, QueryableByName, SelectableHelper,
};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolError, bb8, deadpool,
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use diesel_idempotent::{AsyncIdempotentConnection, IdempotencyRecord, idempotency_records};

use super::statements::{
    Count, Id, dsl_statements, mysql_inserts, returning_inserts, row_locks, session_id,
};
use super::{Account, Backend, DatabaseUrl, Isolation};

/// A pool of async connections, whatever its crate.
pub trait TestPool: Send + Sync + Clone + 'static {
    /// The connection it hands out.
    type Conn;

    /// A connection from the pool (fails the test after a minute).
    fn checkout(
        &self,
    ) -> impl Future<Output = impl DerefMut<Target = Self::Conn> + Send + '_> + Send;
}

impl<C> TestPool for deadpool::Pool<C>
where
    C: Send + 'static,
    AsyncDieselConnectionManager<C>: ::deadpool::managed::Manager<Type = C, Error = PoolError>,
{
    type Conn = C;

    async fn checkout(&self) -> impl DerefMut<Target = C> + Send + '_ {
        self.get()
            .await
            .expect("a connection from the deadpool pool")
    }
}

impl<C> TestPool for bb8::Pool<C>
where
    C: Send + 'static,
    AsyncDieselConnectionManager<C>: ::bb8::ManageConnection<Connection = C, Error = PoolError>,
{
    type Conn = C;

    async fn checkout(&self) -> impl DerefMut<Target = C> + Send + '_ {
        self.get().await.expect("a connection from the bb8 pool")
    }
}

/// A backend whose test database an async connection can reach.
pub trait AsyncBackend: Backend + DatabaseUrl + Send {
    /// Its diesel-async connection.
    type AsyncConn: AsyncIdempotentConnection + 'static;
    /// A deadpool pool of them.
    type Deadpool: TestPool<Conn = Self::AsyncConn>;
    /// A bb8 pool of them.
    type Bb8: TestPool<Conn = Self::AsyncConn>;

    /// Whether a connection whose call was dropped mid-way releases its key
    /// while it sits idle in a deadpool pool (PostgreSQL and SQLite do;
    /// MySQL's driver cannot send anything when dropped, so deadpool holds
    /// the key until the connection's next checkout).
    const DEADPOOL_RELEASES_ON_DROP: bool = true;

    /// A new connection to this test's database.
    fn connect_async(&self) -> impl Future<Output = Self::AsyncConn> + Send;

    /// [`Backend::wait_for_lock_waiters`], off the task's worker thread.
    fn wait_for_lock_waiters_async(&self, n: usize) -> impl Future<Output = ()> + Send {
        async move { tokio::task::block_in_place(|| self.wait_for_lock_waiters(n)) }
    }

    /// A deadpool pool of at most `size` connections.
    fn deadpool(&self, size: usize) -> Self::Deadpool;

    /// A bb8 pool of at most `size` connections.
    fn bb8(&self, size: u32) -> impl Future<Output = Self::Bb8> + Send;

    /// Sends `sql` on `conn`; returns the rows it changed. (Generic test
    /// bodies send their own statements through this; the counts they
    /// assert are read on a blocking [`Backend::connect`].)
    fn execute<'c>(
        conn: &'c mut Self::AsyncConn,
        sql: &'c str,
    ) -> impl Future<Output = QueryResult<usize>> + Send + 'c;
}

/// The pools of an [`AsyncBackend`] impl, from its `manager()`.
macro_rules! pools {
    () => {
        type Deadpool = deadpool::Pool<Self::AsyncConn>;
        type Bb8 = bb8::Pool<Self::AsyncConn>;

        fn deadpool(&self, size: usize) -> Self::Deadpool {
            deadpool::Pool::builder(self.manager())
                .max_size(size)
                .wait_timeout(Some(Duration::from_secs(60)))
                .runtime(::deadpool::Runtime::Tokio1)
                .build()
                .expect("deadpool pool")
        }

        fn bb8(&self, size: u32) -> impl Future<Output = Self::Bb8> + Send {
            let manager = self.manager();
            async move {
                ::bb8::Pool::builder()
                    .max_size(size)
                    .connection_timeout(Duration::from_secs(60))
                    .build(manager)
                    .await
                    .expect("bb8 pool")
            }
        }

        fn execute<'c>(
            conn: &'c mut Self::AsyncConn,
            sql: &'c str,
        ) -> impl Future<Output = QueryResult<usize>> + Send + 'c {
            diesel::sql_query(sql).execute(conn)
        }
    };
}

#[cfg(feature = "postgres")]
impl super::Postgres {
    fn manager(&self) -> AsyncDieselConnectionManager<diesel_async::AsyncPgConnection> {
        AsyncDieselConnectionManager::new(self.url())
    }
}

#[cfg(feature = "postgres")]
impl AsyncBackend for super::Postgres {
    type AsyncConn = diesel_async::AsyncPgConnection;

    fn connect_async(&self) -> impl Future<Output = Self::AsyncConn> + Send {
        let url = self.url();
        async move {
            diesel_async::AsyncPgConnection::establish(&url)
                .await
                .expect("connect to the test database")
        }
    }

    pools!();
}

#[cfg(feature = "mysql")]
impl super::Mysql {
    fn manager(&self) -> AsyncDieselConnectionManager<diesel_async::AsyncMysqlConnection> {
        AsyncDieselConnectionManager::new(self.url())
    }
}

#[cfg(feature = "mysql")]
impl AsyncBackend for super::Mysql {
    type AsyncConn = diesel_async::AsyncMysqlConnection;
    const DEADPOOL_RELEASES_ON_DROP: bool = false;

    fn connect_async(&self) -> impl Future<Output = Self::AsyncConn> + Send {
        let url = self.url();
        async move {
            diesel_async::AsyncMysqlConnection::establish(&url)
                .await
                .expect("connect to the test database")
        }
    }

    pools!();
}

/// SQLite through diesel-async's wrapper around the blocking connection.
#[cfg(feature = "sqlite")]
pub type AsyncSqlite =
    diesel_async::sync_connection_wrapper::SyncConnectionWrapper<diesel::sqlite::SqliteConnection>;

/// Opens the SQLite file at `url` with the busy timeout every test
/// connection sets.
#[cfg(feature = "sqlite")]
async fn connect_sqlite(url: String) -> diesel::ConnectionResult<AsyncSqlite> {
    let mut conn = AsyncSqlite::establish(&url).await?;
    diesel::sql_query("PRAGMA busy_timeout = 60000")
        .execute(&mut conn)
        .await
        .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
    Ok(conn)
}

#[cfg(feature = "sqlite")]
impl super::Sqlite {
    fn manager(&self) -> AsyncDieselConnectionManager<AsyncSqlite> {
        let mut config = ManagerConfig::default();
        config.custom_setup = Box::new(|url| Box::pin(connect_sqlite(url.to_owned())));
        AsyncDieselConnectionManager::new_with_config(self.url(), config)
    }
}

#[cfg(feature = "sqlite")]
impl AsyncBackend for super::Sqlite {
    type AsyncConn = AsyncSqlite;

    fn connect_async(&self) -> impl Future<Output = Self::AsyncConn> + Send {
        let url = self.url();
        async move { connect_sqlite(url).await.expect("open the test database") }
    }

    pools!();
}

/// What the async test functions need from a diesel-async connection: the
/// statements of [`TestConn`] that a body or a caller's transaction sends.
pub trait AsyncTestConn: AsyncIdempotentConnection + 'static {
    /// Inserts a payment and returns its id (the same statements as
    /// [`TestConn::insert_payment`]).
    fn insert_payment(&mut self, amount: i64) -> impl Future<Output = QueryResult<i64>> + Send;
    /// Rows in `payments`, as this connection sees them.
    fn count_payments(&mut self) -> impl Future<Output = QueryResult<i64>> + Send;
    /// Rows in `idempotency_records`, as this connection sees them.
    fn count_records(&mut self) -> impl Future<Output = QueryResult<i64>> + Send;
    /// Rows in `accounts`.
    fn count_accounts(&mut self) -> impl Future<Output = QueryResult<i64>> + Send;
    /// One record, read through the exported `idempotency_records` table.
    fn load_record(
        &mut self,
        namespace: &str,
        key: &str,
    ) -> impl Future<Output = QueryResult<IdempotencyRecord>> + Send;
    /// Overwrites one record's stored fingerprint.
    fn set_record_fingerprint(
        &mut self,
        namespace: &str,
        key: &str,
        fingerprint: &str,
    ) -> impl Future<Output = QueryResult<usize>> + Send;
    /// Every record's key, sorted.
    fn record_keys(&mut self) -> impl Future<Output = QueryResult<Vec<String>>> + Send;
    /// As [`TestConn::short_lock_waits`](super::TestConn::short_lock_waits).
    fn short_lock_waits(&mut self) -> impl Future<Output = QueryResult<()>> + Send;
    /// Updates one payment (takes its row lock).
    fn touch_payment(&mut self, id: i64) -> impl Future<Output = QueryResult<()>> + Send;
    /// `SELECT .. FOR UPDATE NOWAIT` of one payment (not on SQLite).
    fn lock_payment_nowait(&mut self, id: i64) -> impl Future<Output = QueryResult<()>> + Send;
    /// The account of a customer at a bank.
    fn find_account(
        &mut self,
        customer_id: i64,
        bank_id: i64,
    ) -> impl Future<Output = QueryResult<Option<Account>>> + Send;
    /// Inserts an account (fails with a unique violation if it exists).
    fn insert_account(
        &mut self,
        customer_id: i64,
        bank_id: i64,
    ) -> impl Future<Output = QueryResult<Account>> + Send;
    /// Makes `level` the isolation level of this session's next
    /// transactions.
    fn use_isolation(&mut self, level: Isolation) -> impl Future<Output = QueryResult<()>> + Send;
    /// This connection's session on the server (PostgreSQL's backend pid,
    /// MySQL's connection id; not on SQLite).
    fn session_id(&mut self) -> impl Future<Output = QueryResult<i64>> + Send;
    /// Ends the server session `id` from this connection.
    fn kill_session(&mut self, id: i64) -> impl Future<Output = QueryResult<()>> + Send;
}

#[cfg(feature = "postgres")]
#[derive(QueryableByName)]
struct Count32 {
    #[diesel(sql_type = diesel::sql_types::Integer)]
    n: i32,
}

#[cfg(feature = "postgres")]
impl AsyncTestConn for diesel_async::AsyncPgConnection {
    returning_inserts!([async] [.await] "$1", "$2");
    row_locks!([async] [.await] "SET lock_timeout = '200ms'", "$1");
    session_id!([async] [.await] "SELECT CAST(pg_backend_pid() AS BIGINT) AS id");

    async fn use_isolation(&mut self, level: Isolation) -> QueryResult<()> {
        diesel_async::SimpleAsyncConnection::batch_execute(
            self,
            &format!(
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL {}",
                isolation_sql(level)
            ),
        )
        .await
    }

    async fn kill_session(&mut self, id: i64) -> QueryResult<()> {
        // Returns once the backend is gone (waits up to 10 s).
        let killed = diesel::sql_query(
            "SELECT CAST(pg_terminate_backend(CAST($1 AS INTEGER), 10000) AS INTEGER) AS n",
        )
        .bind::<BigInt, _>(id)
        .get_result::<Count32>(self)
        .await?;
        assert_eq!(killed.n, 1, "backend {id} terminated");
        Ok(())
    }

    dsl_statements!([async] [.await]);
}

#[cfg(feature = "mysql")]
impl AsyncTestConn for diesel_async::AsyncMysqlConnection {
    mysql_inserts!([async] [.await]);
    row_locks!([async] [.await] "SET SESSION innodb_lock_wait_timeout = 1", "?");
    session_id!([async] [.await] "SELECT CAST(CONNECTION_ID() AS SIGNED) AS id");

    async fn use_isolation(&mut self, level: Isolation) -> QueryResult<()> {
        // The session's level, which the library reads (as the blocking
        // suite sets it).
        diesel_async::SimpleAsyncConnection::batch_execute(
            self,
            &format!(
                "SET SESSION TRANSACTION ISOLATION LEVEL {}",
                isolation_sql(level)
            ),
        )
        .await
    }

    async fn kill_session(&mut self, id: i64) -> QueryResult<()> {
        diesel_async::SimpleAsyncConnection::batch_execute(self, &format!("KILL CONNECTION {id}"))
            .await
    }

    dsl_statements!([async] [.await]);
}

#[cfg(feature = "sqlite")]
impl AsyncTestConn for AsyncSqlite {
    returning_inserts!([async] [.await] "?", "?");
    row_locks!([async] [.await] sqlite);
    session_id!([async] [.await] sqlite);

    async fn use_isolation(&mut self, level: Isolation) -> QueryResult<()> {
        assert_eq!(
            level,
            Isolation::Serializable,
            "SQLite is always serializable"
        );
        Ok(())
    }

    async fn kill_session(&mut self, _id: i64) -> QueryResult<()> {
        unreachable!("SQLite has no server sessions")
    }

    dsl_statements!([async] [.await]);
}

fn isolation_sql(level: Isolation) -> &'static str {
    match level {
        Isolation::ReadCommitted => "READ COMMITTED",
        Isolation::RepeatableRead => "REPEATABLE READ",
        Isolation::Serializable => "SERIALIZABLE",
    }
}

/// A backend the async suite runs on: its diesel-async connection has the
/// test statements.
pub trait AsyncSuiteBackend: AsyncBackend<AsyncConn: AsyncTestConn> {}

impl<B: AsyncBackend<AsyncConn: AsyncTestConn>> AsyncSuiteBackend for B {}
