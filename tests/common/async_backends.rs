//! The async backends: the same test databases as [`Backend`], reached
//! through diesel-async connections and pools (feature `async`).

use std::ops::DerefMut;
use std::time::Duration;

use diesel::QueryResult;
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, PoolError, bb8, deadpool,
};
use diesel_async::{AsyncConnection, RunQueryDsl};
use diesel_idempotent::AsyncIdempotentConnection;

use super::{Backend, DatabaseUrl};

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
