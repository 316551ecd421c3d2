//! A payments API over HTTP: `POST /payments` is idempotent under the
//! `Idempotency-Key` header, on axum and diesel-async, over an embedded
//! SQLite file (no server) or PostgreSQL.
//!
//! ```text
//! cargo run --example payments_server -- --listen 127.0.0.1:0
//! cargo run --example payments_server --features postgres -- \
//!     --listen 127.0.0.1:8080 --database-url postgres://user@host/payments
//! ```
//!
//! (The example belongs to the `examples/payments` package, which turns on
//! diesel-idempotent's `sqlite`, `async` and `axum` features.)
//!
//! | flag | meaning |
//! |---|---|
//! | `--listen HOST:PORT` | where to listen (default `127.0.0.1:3000`; port 0 picks a free one) |
//! | `--database-url URL` | a SQLite file (`path` or `sqlite://path`), kept between runs, or a `postgres://` URL (build with `--features postgres`); default: a fresh SQLite file in a new temporary directory, removed at exit |
//! | `--processing-delay-ms N` | how long a new payment takes to process, inside its transaction (default 0) |
//! | `--fail-rate F` | the fraction, 0 to 1, of new payments that fail after their row was written (default 0) |
//!
//! The first line on stdout is `listening on http://HOST:PORT`, with the
//! port bound; everything else goes to stderr. Ctrl-C or SIGTERM stops the
//! server once the requests in progress are answered.
//!
//! ```text
//! curl -i http://127.0.0.1:3000/payments \
//!     -H 'Idempotency-Key: 8e03978e-40d5-43e8-bc93-6894a57f9324' \
//!     -H 'Content-Type: application/json' \
//!     -d '{"amount_cents": 4200, "currency": "BRL", "recipient": "ada@example.com"}'
//! ```
//!
//! - The first request with a key answers 201 with the payment; the same
//!   request again answers the same 201, byte for byte, with
//!   `Idempotent-Replayed: true`, and creates nothing.
//! - The same key with another body is a 422; a key whose first request is
//!   still being processed, a 409 with `Retry-After`; a missing or invalid
//!   key, a 400; an invalid body, a 400 or 422. Every error is
//!   `application/problem+json` (RFC 9457).
//! - A payment that fails (`--fail-rate`) is rolled back with its key's
//!   record: the 500 stores nothing, and a retry with the same key runs
//!   again.
//! - `GET /payments` lists every payment, `GET /payments/{id}` shows one,
//!   `GET /healthz` answers `{"status":"ok"}`.
//! - `GET /metrics` answers the library's metrics in the Prometheus text
//!   format: `idempotency_requests_total{function="payments.create",
//!   backend=..,outcome=..}` counts the calls by outcome (`executed`,
//!   `replayed`, `in_flight`, `mismatch`, ..), and
//!   `idempotency_duration_seconds` is a histogram of each phase.
//!
//! Logs go to stderr through `tracing-subscriber`, filtered by `RUST_LOG`
//! (default `info`; `RUST_LOG=diesel_idempotent=debug,idempotent_core=debug`
//! adds a line per idempotent call with its outcome).
//!
//! Both backends run the same handlers: they are generic over
//! [`PaymentsConnection`], which `payments_connection!` implements for each
//! connection type with the same Diesel statements.
//!
//! Exit codes: 0 after a shutdown by signal, 1 when the server could not
//! start or stopped on an error, 2 for invalid flags.

use std::future::Future;
use std::io::{IsTerminal as _, Write as _};
use std::ops::DerefMut;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::{NaiveDateTime, SecondsFormat, SubsecRound, Utc};
use clap::Parser;
use diesel::sqlite::SqliteConnection;
use diesel::{ConnectionError, ConnectionResult, QueryResult};
use diesel_async::pooled_connection::deadpool::{BuildError, Object, Pool, PoolError};
use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
use diesel_idempotent::axum::{IdempotencyKey, Json, Problem, Reply};
use diesel_idempotent::{AsyncIdempotentConnection, idempotent, telemetry};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use serde::{Deserialize, Serialize};
use tracing_subscriber::EnvFilter;

/// SQLite behind diesel-async's async interface.
type AsyncSqlite = SyncConnectionWrapper<SqliteConnection>;

/// Connections in the pool: enough for the handlers of a small service.
const POOL_SIZE: usize = 16;

/// How long a request waits for a pooled connection before it fails.
const POOL_WAIT: Duration = Duration::from_secs(10);

diesel::table! {
    payments (id) {
        id -> Text,
        amount_cents -> BigInt,
        currency -> Text,
        recipient -> Text,
        /// UTC.
        created_at -> Timestamp,
    }
}

/// The `payments` table on SQLite (a timestamp is text there, which sorts
/// in time order).
const SQLITE_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS payments (
        id TEXT PRIMARY KEY NOT NULL,
        amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
        currency TEXT NOT NULL,
        recipient TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS payments_by_creation ON payments (created_at, id);
";

/// The `payments` table on PostgreSQL (`created_at` in UTC).
#[cfg(feature = "postgres")]
const POSTGRES_SCHEMA: &str = "
    CREATE TABLE IF NOT EXISTS payments (
        id TEXT PRIMARY KEY,
        amount_cents BIGINT NOT NULL CHECK (amount_cents > 0),
        currency TEXT NOT NULL,
        recipient TEXT NOT NULL,
        created_at TIMESTAMP NOT NULL
    );
    CREATE INDEX IF NOT EXISTS payments_by_creation ON payments (created_at, id);
";

/// What the client sends. The key is bound to its fingerprint: the
/// canonical JSON of this struct, so member order and whitespace in the
/// request body do not matter.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NewPayment {
    amount_cents: i64,
    currency: String,
    recipient: String,
}

impl NewPayment {
    /// Why the request cannot become a payment, if it cannot.
    fn invalid(&self) -> Option<String> {
        if self.amount_cents <= 0 {
            return Some(format!(
                "amount_cents must be greater than zero; it is {}",
                self.amount_cents
            ));
        }
        if !(self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase())) {
            return Some(format!(
                "currency must be three uppercase ASCII letters, such as \"BRL\"; it is {:?}",
                self.currency
            ));
        }
        if self.recipient.trim().is_empty() {
            return Some("recipient must not be empty".to_owned());
        }
        if self.recipient.len() > 254 {
            return Some(format!(
                "recipient must be at most 254 bytes; it is {} bytes",
                self.recipient.len()
            ));
        }
        None
    }
}

/// What the API answers; stored as JSON under the key and replayed.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Payment {
    id: String,
    amount_cents: i64,
    currency: String,
    recipient: String,
    /// RFC 3339, UTC, in microseconds.
    created_at: String,
}

/// A row of `payments`.
#[derive(Debug, diesel::Queryable, diesel::Selectable, diesel::Insertable)]
#[diesel(table_name = payments)]
struct PaymentRow {
    id: String,
    amount_cents: i64,
    currency: String,
    recipient: String,
    created_at: NaiveDateTime,
}

impl PaymentRow {
    /// A new payment: a UUID v4, created now (to the microsecond, the
    /// precision PostgreSQL keeps, so that what is read back is what was
    /// answered).
    fn new(request: &NewPayment) -> Self {
        PaymentRow {
            id: uuid::Uuid::new_v4().to_string(),
            amount_cents: request.amount_cents,
            currency: request.currency.clone(),
            recipient: request.recipient.clone(),
            created_at: Utc::now().naive_utc().trunc_subsecs(6),
        }
    }
}

impl From<PaymentRow> for Payment {
    fn from(row: PaymentRow) -> Self {
        Payment {
            id: row.id,
            amount_cents: row.amount_cents,
            currency: row.currency,
            recipient: row.recipient,
            created_at: row
                .created_at
                .and_utc()
                .to_rfc3339_opts(SecondsFormat::Micros, true),
        }
    }
}

/// A connection the payments API runs on. The handlers and the idempotent
/// function are written once, generic over it; `payments_connection!`
/// implements it for each backend's connection type with the same Diesel
/// statements. (On a concrete connection, diesel-async's query traits and
/// deadpool's pool need no bounds; on a generic one, each function that
/// runs a query or checks a connection out would have to repeat theirs.)
trait PaymentsConnection: AsyncIdempotentConnection + 'static {
    /// A pool of these connections.
    type Pool: Clone + Send + Sync + 'static;
    /// A connection checked out of the pool.
    type Pooled: DerefMut<Target = Self> + Send;

    /// Creates the record table and `payments`, on a blocking connection.
    fn prepare_database(url: &str) -> Result<(), StartError>;

    /// A pool of `POOL_SIZE` connections, each opened with the session
    /// settings.
    fn pool(url: String) -> Result<Self::Pool, BuildError>;

    fn checkout(pool: &Self::Pool) -> impl Future<Output = Result<Self::Pooled, PoolError>> + Send;

    fn insert_payment(&mut self, row: &PaymentRow) -> impl Future<Output = QueryResult<()>> + Send;

    /// Every payment, in the order they were created.
    fn all_payments(&mut self) -> impl Future<Output = QueryResult<Vec<PaymentRow>>> + Send;

    fn find_payment(
        &mut self,
        id: &str,
    ) -> impl Future<Output = QueryResult<Option<PaymentRow>>> + Send;
}

/// Implements [`PaymentsConnection`] for `$conn`, whose start-up migrations
/// run on `$blocking`, with `$session` sent on every new connection and
/// `$schema` creating `payments`.
macro_rules! payments_connection {
    ($conn:ty, blocking = $blocking:ty, session = $session:expr, schema = $schema:expr $(,)?) => {
        impl PaymentsConnection for $conn {
            type Pool = Pool<$conn>;
            type Pooled = Object<$conn>;

            fn prepare_database(url: &str) -> Result<(), StartError> {
                use diesel::connection::SimpleConnection;
                let mut conn = <$blocking as diesel::Connection>::establish(url)
                    .map_err(StartError::Connect)?;
                conn.batch_execute($session).map_err(StartError::Schema)?;
                diesel_idempotent::migrate(&mut conn).map_err(StartError::Migrate)?;
                conn.batch_execute($schema).map_err(StartError::Schema)
            }

            fn pool(url: String) -> Result<Self::Pool, BuildError> {
                async fn connect(url: String) -> ConnectionResult<$conn> {
                    use diesel_async::{AsyncConnection, SimpleAsyncConnection};
                    let mut conn = <$conn as AsyncConnection>::establish(&url).await?;
                    conn.batch_execute($session)
                        .await
                        .map_err(ConnectionError::CouldntSetupConfiguration)?;
                    Ok(conn)
                }
                let mut config = ManagerConfig::default();
                config.custom_setup = Box::new(|url| Box::pin(connect(url.to_owned())));
                let manager = AsyncDieselConnectionManager::new_with_config(url, config);
                Pool::builder(manager)
                    .max_size(POOL_SIZE)
                    .runtime(deadpool::Runtime::Tokio1)
                    .wait_timeout(Some(POOL_WAIT))
                    .create_timeout(Some(POOL_WAIT))
                    .build()
            }

            async fn checkout(pool: &Self::Pool) -> Result<Self::Pooled, PoolError> {
                pool.get().await
            }

            async fn insert_payment(&mut self, row: &PaymentRow) -> QueryResult<()> {
                use diesel_async::RunQueryDsl;
                diesel::insert_into(payments::table)
                    .values(row)
                    .execute(self)
                    .await
                    .map(drop)
            }

            async fn all_payments(&mut self) -> QueryResult<Vec<PaymentRow>> {
                use diesel::{QueryDsl, SelectableHelper};
                use diesel_async::RunQueryDsl;
                payments::table
                    .order_by((payments::created_at, payments::id))
                    .select(PaymentRow::as_select())
                    .load(self)
                    .await
            }

            async fn find_payment(&mut self, id: &str) -> QueryResult<Option<PaymentRow>> {
                use diesel::{OptionalExtension, QueryDsl, SelectableHelper};
                use diesel_async::RunQueryDsl;
                payments::table
                    .find(id)
                    .select(PaymentRow::as_select())
                    .first(self)
                    .await
                    .optional()
            }
        }
    };
}

payments_connection! {
    AsyncSqlite,
    blocking = SqliteConnection,
    // Concurrent writers wait for the database lock (up to 5 s) instead of
    // failing; readers do not block the writer (WAL).
    session = "PRAGMA busy_timeout = 5000; PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;",
    schema = SQLITE_SCHEMA,
}

#[cfg(feature = "postgres")]
payments_connection! {
    diesel_async::AsyncPgConnection,
    blocking = diesel::PgConnection,
    session = "SET application_name = 'payments_server'",
    schema = POSTGRES_SCHEMA,
}

/// `--processing-delay-ms` and `--fail-rate`: how a new payment behaves.
/// Not part of the request, so not part of its fingerprint.
#[derive(Debug)]
struct Faults {
    processing_delay: Duration,
    fail_rate: f64,
}

impl Faults {
    /// Whether this payment fails: a draw with probability `fail_rate`.
    fn fail_now(&self) -> bool {
        self.fail_rate > 0.0 && fastrand::f64() < self.fail_rate
    }
}

/// What a handler can fail with.
#[derive(Debug, thiserror::Error)]
enum ApiError {
    /// The body is JSON of the right shape, but not a payment.
    #[error("invalid payment: {0}")]
    Invalid(String),
    #[error("no payment has the id {0:?}")]
    NotFound(String),
    #[error("invalid path: {0}")]
    Path(#[from] PathRejection),
    #[error(transparent)]
    Idempotency(#[from] diesel_idempotent::Error),
    #[error("database error: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("no database connection: {0}")]
    Pool(#[from] PoolError),
    #[error(
        "payment {id} failed on purpose (--fail-rate) after its row was written; \
         its transaction rolled back and nothing was stored for its key"
    )]
    InjectedFailure { id: String },
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Invalid(detail) => {
                Problem::invalid_request(StatusCode::UNPROCESSABLE_ENTITY, detail).into_response()
            }
            ApiError::NotFound(_) => not_found(self.to_string()).into_response(),
            ApiError::Path(rejection) => Problem::from(rejection).into_response(),
            // The library answers its own errors: 400, 409, 422, or a 500
            // that says nothing internal.
            ApiError::Idempotency(error) => error.into_response(),
            ApiError::Database(_) | ApiError::Pool(_) | ApiError::InjectedFailure { .. } => {
                tracing::error!(error = %self, "request failed");
                Problem::internal().into_response()
            }
        }
    }
}

fn not_found(detail: String) -> Problem {
    Problem::new(StatusCode::NOT_FOUND, "about:blank", "Not Found").with_detail(detail)
}

/// Creates a payment once per `Idempotency-Key`. The key's method and
/// route join the fingerprint with `request`; `faults` is left out.
///
/// Runs in one transaction with the key's record: an error rolls back the
/// payment and the record together, so a retry runs again.
///
/// A duplicate sent while the first request with its key runs waits at
/// most 100 ms (`wait_for`), then answers 409 with `Retry-After`; a first
/// request that finishes within the limit is replayed. The wait is bounded
/// because a waiting duplicate holds its pooled connection: waiting for
/// the whole first request (`on_conflict = "wait"`), a burst of client
/// retries of one slow payment could take every connection of the pool
/// while unrelated requests queue for one; bounded, each gives its
/// connection back after 100 ms. On SQLite, which serializes writers, the
/// limit bounds the wait for the database's write lock, which a request
/// with any key may hold: under a long processing delay a concurrent
/// request with another key can get the 409 too, and its retry runs.
#[idempotent(
    key = key,
    ttl = "24h",
    name = "payments.create",
    skip(faults),
    wait_for = "100ms"
)]
async fn create_payment<C: PaymentsConnection>(
    conn: &mut C,
    key: &IdempotencyKey,
    request: &NewPayment,
    faults: &Faults,
) -> Result<Reply<Payment>, ApiError> {
    let row = PaymentRow::new(request);
    conn.insert_payment(&row).await?;
    // Inside the transaction: a duplicate sent meanwhile finds the key in
    // flight.
    if !faults.processing_delay.is_zero() {
        tokio::time::sleep(faults.processing_delay).await;
    }
    if faults.fail_now() {
        return Err(ApiError::InjectedFailure { id: row.id });
    }
    Ok(Reply::created(Payment::from(row)))
}

/// What every handler shares.
struct App<C: PaymentsConnection> {
    pool: C::Pool,
    faults: Arc<Faults>,
    metrics: PrometheusHandle,
}

impl<C: PaymentsConnection> Clone for App<C> {
    fn clone(&self) -> Self {
        App {
            pool: self.pool.clone(),
            faults: Arc::clone(&self.faults),
            metrics: self.metrics.clone(),
        }
    }
}

/// `POST /payments`.
async fn create<C: PaymentsConnection>(
    State(app): State<App<C>>,
    key: IdempotencyKey,
    Json(request): Json<NewPayment>,
) -> Result<Reply<Payment>, ApiError> {
    if let Some(reason) = request.invalid() {
        return Err(ApiError::Invalid(reason));
    }
    let mut conn = C::checkout(&app.pool).await?;
    create_payment(&mut *conn, &key, &request, &app.faults).await
}

/// `GET /payments`.
async fn list<C: PaymentsConnection>(
    State(app): State<App<C>>,
) -> Result<Json<Vec<Payment>>, ApiError> {
    let mut conn = C::checkout(&app.pool).await?;
    let rows = conn.all_payments().await?;
    Ok(Json(rows.into_iter().map(Payment::from).collect()))
}

/// `GET /payments/{id}`.
async fn show<C: PaymentsConnection>(
    State(app): State<App<C>>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Payment>, ApiError> {
    let Path(id) = id?;
    let mut conn = C::checkout(&app.pool).await?;
    match conn.find_payment(&id).await? {
        Some(row) => Ok(Json(Payment::from(row))),
        None => Err(ApiError::NotFound(id)),
    }
}

/// `GET /healthz`.
async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// `GET /metrics`: every metric recorded so far, in the Prometheus text
/// format.
async fn metrics<C: PaymentsConnection>(State(app): State<App<C>>) -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        app.metrics.render(),
    )
}

/// Installs the Prometheus recorder that `GET /metrics` renders, with
/// buckets for the phase durations (from 0.5 ms to 10 s), and keeps its
/// histograms in shape (the recorder's upkeep) every 5 seconds.
fn install_metrics() -> Result<PrometheusHandle, StartError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(telemetry::DURATION_SECONDS.to_owned()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
            ],
        )
        .and_then(PrometheusBuilder::install_recorder)
        .map_err(StartError::Metrics)?;
    telemetry::describe_metrics();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(handle)
}

async fn no_route(uri: Uri) -> Problem {
    not_found(format!("there is nothing at {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Problem {
    Problem::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "about:blank",
        "Method Not Allowed",
    )
    .with_detail(format!("{} does not answer {method}", uri.path()))
}

fn router<C: PaymentsConnection>(app: App<C>) -> Router {
    Router::new()
        .route("/payments", post(create::<C>).get(list::<C>))
        .route("/payments/{id}", get(show::<C>))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics::<C>))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(app)
}

/// Payments over HTTP, idempotent under the Idempotency-Key header.
#[derive(Debug, Parser)]
#[command(name = "payments_server")]
struct Args {
    /// Where to listen; port 0 picks a free port (the first line on stdout
    /// says which).
    #[arg(long, value_name = "HOST:PORT", default_value = "127.0.0.1:3000")]
    listen: String,

    /// A SQLite file (a path, or sqlite://path), kept between runs, or a
    /// postgres:// URL (build with --features postgres). Default: a fresh
    /// SQLite file in a new temporary directory, removed at exit.
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,

    /// How long a new payment takes to process, inside its transaction, in
    /// milliseconds.
    #[arg(long, value_name = "N", default_value_t = 0)]
    processing_delay_ms: u64,

    /// The fraction of new payments that fail after their row was written
    /// (rolled back, answered 500), from 0 to 1.
    #[arg(
        long,
        value_name = "F",
        default_value_t = 0.0,
        value_parser = fail_rate,
        allow_negative_numbers = true
    )]
    fail_rate: f64,
}

fn fail_rate(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(rate) if (0.0..=1.0).contains(&rate) => Ok(rate),
        Ok(_) => Err(format!(
            "{text} is not between 0 and 1; write a fraction such as 0.1"
        )),
        Err(_) => Err(format!(
            "{text:?} is not a number; write a fraction from 0 to 1, such as 0.1"
        )),
    }
}

/// Why the server could not start, or stopped.
#[derive(Debug, thiserror::Error)]
enum StartError {
    #[error("{0}")]
    Usage(String),
    #[error("could not create a temporary directory for the database: {0}")]
    TempDir(std::io::Error),
    #[error("could not connect to the database: {0}")]
    Connect(ConnectionError),
    #[error("could not create the record table: {0}")]
    Migrate(diesel_idempotent::Error),
    #[error("could not create the payments table: {0}")]
    Schema(diesel::result::Error),
    #[error("could not set up the connection pool: {0}")]
    Pool(#[from] BuildError),
    #[error("could not listen on {address}: {source}")]
    Listen {
        address: String,
        source: std::io::Error,
    },
    #[error("could not install the metrics recorder: {0}")]
    Metrics(metrics_exporter_prometheus::BuildError),
    #[error("the server stopped on an error: {0}")]
    Serve(std::io::Error),
}

impl StartError {
    fn exit_code(&self) -> ExitCode {
        match self {
            StartError::Usage(_) => ExitCode::from(2),
            _ => ExitCode::FAILURE,
        }
    }
}

/// The database `--database-url` names.
enum Database {
    /// A SQLite file; with the temporary directory that holds it, removed
    /// when this is dropped, if it is the default database.
    Sqlite {
        path: PathBuf,
        _temporary: Option<tempfile::TempDir>,
    },
    #[cfg(feature = "postgres")]
    Postgres(String),
}

impl Database {
    fn from_flag(url: Option<&str>) -> Result<Self, StartError> {
        let Some(url) = url else {
            let directory = tempfile::Builder::new()
                .prefix("payments-server-")
                .tempdir()
                .map_err(StartError::TempDir)?;
            let path = directory.path().join("payments.sqlite3");
            tracing::info!(
                "database: {} (a fresh SQLite file, removed at exit)",
                path.display()
            );
            return Ok(Database::Sqlite {
                path,
                _temporary: Some(directory),
            });
        };
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            #[cfg(feature = "postgres")]
            {
                tracing::info!("database: PostgreSQL (--database-url)");
                return Ok(Database::Postgres(url.to_owned()));
            }
            #[cfg(not(feature = "postgres"))]
            return Err(StartError::Usage(
                "--database-url names a PostgreSQL database, but this build has no PostgreSQL \
                 support; build it with `--features postgres` as well"
                    .to_owned(),
            ));
        }
        let path = url.strip_prefix("sqlite://").unwrap_or(url);
        if path.is_empty() || path.contains("://") {
            return Err(StartError::Usage(format!(
                "--database-url {url:?} is neither a SQLite file (a path, or sqlite://path) \
                 nor a postgres:// URL"
            )));
        }
        tracing::info!("database: {path} (SQLite)");
        Ok(Database::Sqlite {
            path: PathBuf::from(path),
            _temporary: None,
        })
    }
}

/// Prepares the database, then serves until Ctrl-C or SIGTERM.
async fn serve<C: PaymentsConnection>(
    url: String,
    listen: &str,
    faults: Faults,
) -> Result<(), StartError> {
    let blocking_url = url.clone();
    tokio::task::spawn_blocking(move || C::prepare_database(&blocking_url))
        .await
        .unwrap_or_else(|panicked| std::panic::resume_unwind(panicked.into_panic()))?;

    let pool = C::pool(url)?;
    let app = App::<C> {
        pool,
        faults: Arc::new(faults),
        metrics: install_metrics()?,
    };

    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| StartError::Listen {
            address: listen.to_owned(),
            source,
        })?;
    let address = listener.local_addr().map_err(|source| StartError::Listen {
        address: listen.to_owned(),
        source,
    })?;
    // The one line on stdout: programs that start the server read the port
    // from it.
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "listening on http://{address}");
    let _ = stdout.flush();

    axum::serve(listener, router(app))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(StartError::Serve)
}

/// Resolves on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                terminate.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutting down: answering the requests in progress");
}

async fn run(args: Args) -> Result<(), StartError> {
    let faults = Faults {
        processing_delay: Duration::from_millis(args.processing_delay_ms),
        fail_rate: args.fail_rate,
    };
    match Database::from_flag(args.database_url.as_deref())? {
        Database::Sqlite { path, _temporary } => {
            let url = path.to_str().ok_or_else(|| {
                StartError::Usage(format!(
                    "the database path {} is not UTF-8; choose another",
                    path.display()
                ))
            })?;
            // `_temporary` lives until the server has stopped.
            serve::<AsyncSqlite>(url.to_owned(), &args.listen, faults).await
        }
        #[cfg(feature = "postgres")]
        Database::Postgres(url) => {
            serve::<diesel_async::AsyncPgConnection>(url, &args.listen, faults).await
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("payments_server: {error}");
            error.exit_code()
        }
    }
}
