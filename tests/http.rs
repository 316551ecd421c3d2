//! `diesel_idempotent::axum` over a real SQLite file: every answer of the
//! status table through `tower::ServiceExt::oneshot`, the sync and async
//! connections, scoping, routes, terminal and transient errors, and one
//! round over real TCP with `reqwest`.

#[cfg(not(all(feature = "axum", feature = "sqlite", feature = "async")))]
#[test]
fn http_tests_skipped_feature_disabled() {
    println!("SKIPPED: tests/http.rs (build with the `axum`, `sqlite` and `async` features)");
}

#[cfg(all(feature = "axum", feature = "sqlite", feature = "async"))]
mod http {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::body::{Body, Bytes, to_bytes};
    use axum::extract::{FromRequestParts, State};
    use axum::http::request::Parts;
    use axum::http::{HeaderMap, Method, Request, StatusCode, header};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post};
    use diesel::connection::SimpleConnection;
    use diesel::sqlite::SqliteConnection;
    use diesel::{Connection, QueryableByName};
    use diesel_async::AsyncConnection;
    use diesel_async::pooled_connection::deadpool::Pool;
    use diesel_async::pooled_connection::{AsyncDieselConnectionManager, ManagerConfig};
    use diesel_async::sync_connection_wrapper::SyncConnectionWrapper;
    use diesel_idempotent::axum::{IdempotencyKey, Json, Problem, Reply, problem_types};
    use diesel_idempotent::idempotent;
    use serde::{Deserialize, Serialize};
    use serde_json::Value;
    use tokio::sync::Notify;
    use tower::ServiceExt;

    type Conn = SyncConnectionWrapper<SqliteConnection>;

    /// A request to charge `amount_cents`. Some amounts steer the body:
    /// 402 declines (terminal), 503 fails transiently, 409 waits at the
    /// gate.
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct NewPayment {
        amount_cents: i64,
        currency: String,
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Payment {
        id: i64,
        amount_cents: i64,
        currency: String,
    }

    /// A body that waits: it says when it is inside, then waits for the
    /// release.
    #[derive(Default)]
    struct Gate {
        entered: Notify,
        release: Notify,
    }

    #[derive(Clone)]
    struct App {
        pool: Pool<Conn>,
        url: Arc<str>,
        /// How often a body ran.
        runs: Arc<AtomicUsize>,
        gate: Arc<Gate>,
    }

    /// The caller's tenant, from `X-Tenant`: the principal a real service
    /// takes from its authentication.
    struct Tenant(String);

    impl<S: Send + Sync> FromRequestParts<S> for Tenant {
        type Rejection = Problem;

        async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Problem> {
            match parts.headers.get("x-tenant").and_then(|v| v.to_str().ok()) {
                Some(tenant) => Ok(Tenant(tenant.to_owned())),
                None => Err(Problem::new(
                    StatusCode::UNAUTHORIZED,
                    "https://example.com/problems/unauthenticated",
                    "Unauthenticated",
                )),
            }
        }
    }

    #[derive(Debug, thiserror::Error)]
    enum AppError {
        #[error(transparent)]
        Idempotency(#[from] diesel_idempotent::Error),
        #[error(transparent)]
        Db(#[from] diesel::result::Error),
        #[error("no connection: {0}")]
        Pool(String),
        #[error("the card network timed out")]
        Downstream,
    }

    /// How a service's own error type delegates to the library's answers.
    impl IntoResponse for AppError {
        fn into_response(self) -> Response {
            match self {
                AppError::Idempotency(e) => e.into_response(),
                AppError::Downstream => Problem::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "https://example.com/problems/network-timeout",
                    "Card network timed out",
                )
                .with_detail("nothing was charged; retry with the same key")
                .into_response(),
                AppError::Db(_) | AppError::Pool(_) => Problem::internal().into_response(),
            }
        }
    }

    const DECLINED: &str = "https://example.com/problems/card-declined";

    /// The body every payment route shares.
    async fn charge_body(
        conn: &mut Conn,
        app: &App,
        tenant: &str,
        req: &NewPayment,
    ) -> Result<Reply<Payment>, AppError> {
        use diesel_async::RunQueryDsl;
        app.runs.fetch_add(1, Ordering::SeqCst);
        diesel::sql_query("INSERT INTO payments (tenant, amount_cents) VALUES (?, ?)")
            .bind::<diesel::sql_types::Text, _>(tenant)
            .bind::<diesel::sql_types::BigInt, _>(req.amount_cents)
            .execute(conn)
            .await?;
        let id = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "last_insert_rowid()",
        ))
        .get_result::<i64>(conn)
        .await?;
        match req.amount_cents {
            402 => Ok(Reply::terminal(
                Problem::new(StatusCode::PAYMENT_REQUIRED, DECLINED, "Card declined")
                    .with_detail(format!("charge {id} was declined: insufficient funds")),
            )),
            503 => Err(AppError::Downstream),
            409 => {
                app.gate.entered.notify_one();
                app.gate.release.notified().await;
                Ok(Reply::created(payment(id, req)))
            }
            _ => Ok(Reply::created(payment(id, req))),
        }
    }

    fn payment(id: i64, req: &NewPayment) -> Payment {
        Payment {
            id,
            amount_cents: req.amount_cents,
            currency: req.currency.clone(),
        }
    }

    #[idempotent(key = key, scope = tenant, ttl = "1h", name = "http.payments", wait_for = "300ms", skip(app))]
    async fn charge(
        conn: &mut Conn,
        app: &App,
        key: &IdempotencyKey,
        tenant: &str,
        req: &NewPayment,
    ) -> Result<Reply<Payment>, AppError> {
        charge_body(conn, app, tenant, req).await
    }

    #[idempotent(key = key, scope = tenant, ttl = "1h", name = "http.refunds", skip(app))]
    async fn refund(
        conn: &mut Conn,
        app: &App,
        key: &IdempotencyKey,
        tenant: &str,
        req: &NewPayment,
    ) -> Result<Reply<Payment>, AppError> {
        charge_body(conn, app, tenant, req).await
    }

    /// A charge accepted for later: `202 Accepted` with no payment yet,
    /// whose JSON is `null`.
    #[idempotent(key = key, scope = tenant, ttl = "1h", name = "http.deferred", skip(app))]
    async fn defer(
        conn: &mut Conn,
        app: &App,
        key: &IdempotencyKey,
        tenant: &str,
        req: &NewPayment,
    ) -> Result<Reply<Option<Payment>>, AppError> {
        charge_body(conn, app, tenant, req).await?;
        Ok(Reply::new(StatusCode::ACCEPTED, None))
    }

    async fn create_deferred(
        State(app): State<App>,
        key: IdempotencyKey,
        tenant: Tenant,
        Json(req): Json<NewPayment>,
    ) -> Result<Reply<Option<Payment>>, AppError> {
        let mut conn = checkout(&app).await?;
        defer(&mut conn, &app, &key, &tenant.0, &req).await
    }

    /// A pooled connection.
    async fn checkout(
        app: &App,
    ) -> Result<diesel_async::pooled_connection::deadpool::Object<Conn>, AppError> {
        app.pool
            .get()
            .await
            .map_err(|e| AppError::Pool(e.to_string()))
    }

    async fn create_payment(
        State(app): State<App>,
        key: IdempotencyKey,
        tenant: Tenant,
        Json(req): Json<NewPayment>,
    ) -> Result<Reply<Payment>, AppError> {
        let mut conn = checkout(&app).await?;
        charge(&mut conn, &app, &key, &tenant.0, &req).await
    }

    async fn create_refund(
        State(app): State<App>,
        key: IdempotencyKey,
        tenant: Tenant,
        Json(req): Json<NewPayment>,
    ) -> Result<Reply<Payment>, AppError> {
        let mut conn = checkout(&app).await?;
        refund(&mut conn, &app, &key, &tenant.0, &req).await
    }

    /// A key is optional here: without one, every request runs.
    async fn create_tip(
        State(app): State<App>,
        key: Option<IdempotencyKey>,
        tenant: Tenant,
        Json(req): Json<NewPayment>,
    ) -> Result<Reply<Payment>, AppError> {
        let mut conn = checkout(&app).await?;
        match key {
            Some(key) => charge(&mut conn, &app, &key, &tenant.0, &req).await,
            None => charge_body(&mut conn, &app, &tenant.0, &req).await,
        }
    }

    /// The same function on a blocking connection, through
    /// `spawn_blocking`.
    #[idempotent(key = key, scope = tenant, ttl = "1h", name = "http.sync_payments", skip(runs))]
    fn charge_blocking(
        conn: &mut SqliteConnection,
        runs: &AtomicUsize,
        key: &IdempotencyKey,
        tenant: &str,
        req: &NewPayment,
    ) -> Result<Reply<Payment>, AppError> {
        use diesel::RunQueryDsl as _;
        runs.fetch_add(1, Ordering::SeqCst);
        diesel::sql_query("INSERT INTO payments (tenant, amount_cents) VALUES (?, ?)")
            .bind::<diesel::sql_types::Text, _>(tenant)
            .bind::<diesel::sql_types::BigInt, _>(req.amount_cents)
            .execute(conn)?;
        let id = diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>(
            "last_insert_rowid()",
        ))
        .get_result::<i64>(conn)?;
        Ok(Reply::created(payment(id, req)))
    }

    async fn create_payment_blocking(
        State(app): State<App>,
        key: IdempotencyKey,
        tenant: Tenant,
        Json(req): Json<NewPayment>,
    ) -> Result<Reply<Payment>, AppError> {
        tokio::task::spawn_blocking(move || {
            let mut conn = blocking_conn(&app.url);
            charge_blocking(&mut conn, &app.runs, &key, &tenant.0, &req)
        })
        .await
        .map_err(|e| AppError::Pool(e.to_string()))?
    }

    /// A GET without the extractor: untouched by any key.
    async fn count_payments(State(app): State<App>) -> axum::Json<i64> {
        axum::Json(count(&app.url, "SELECT COUNT(*) AS n FROM payments"))
    }

    fn blocking_conn(url: &str) -> SqliteConnection {
        let mut conn = SqliteConnection::establish(url).expect("open the database");
        conn.batch_execute("PRAGMA busy_timeout = 10000")
            .expect("set the busy timeout");
        conn
    }

    #[derive(QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }

    fn count(url: &str, sql: &str) -> i64 {
        use diesel::RunQueryDsl as _;
        diesel::sql_query(sql)
            .get_result::<Count>(&mut blocking_conn(url))
            .expect("count")
            .n
    }

    async fn connect(url: String) -> diesel::ConnectionResult<Conn> {
        use diesel_async::RunQueryDsl;
        let mut conn = Conn::establish(&url).await?;
        diesel::sql_query("PRAGMA busy_timeout = 10000")
            .execute(&mut conn)
            .await
            .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
        Ok(conn)
    }

    struct Server {
        app: App,
        router: Router,
        _dir: tempfile::TempDir,
    }

    impl Server {
        fn new() -> Server {
            let dir = tempfile::tempdir().expect("a temporary directory");
            let url: Arc<str> = dir
                .path()
                .join("http.sqlite3")
                .to_str()
                .expect("a UTF-8 path")
                .into();
            let mut conn = blocking_conn(&url);
            conn.batch_execute(
                "PRAGMA journal_mode = WAL;
                 CREATE TABLE payments (id INTEGER PRIMARY KEY AUTOINCREMENT,
                     tenant TEXT NOT NULL, amount_cents BIGINT NOT NULL);",
            )
            .expect("create the payments table");
            diesel_idempotent::migrate(&mut conn).expect("migrate");
            let mut config = ManagerConfig::default();
            config.custom_setup = Box::new(|url| Box::pin(connect(url.to_owned())));
            let manager = AsyncDieselConnectionManager::<Conn>::new_with_config(&*url, config);
            let pool = Pool::builder(manager).max_size(8).build().expect("a pool");
            let app = App {
                pool,
                url,
                runs: Arc::default(),
                gate: Arc::default(),
            };
            let router = Router::new()
                .route(
                    "/payments",
                    post(create_payment).put(create_payment).get(count_payments),
                )
                .nest(
                    "/nested",
                    Router::new().route("/payments", post(create_payment)),
                )
                .nest_service(
                    "/service",
                    Router::new()
                        .route("/payments", post(create_payment))
                        .with_state(app.clone()),
                )
                .route("/v2/payments", post(create_payment))
                .route("/refunds", post(create_refund))
                .route("/deferred", post(create_deferred))
                .route("/tips", post(create_tip))
                .route("/sync/payments", post(create_payment_blocking))
                .route("/healthz", get(|| async { "ok" }))
                .with_state(app.clone());
            Server {
                app,
                router,
                _dir: dir,
            }
        }

        fn runs(&self) -> usize {
            self.app.runs.load(Ordering::SeqCst)
        }

        fn payments(&self) -> i64 {
            count(&self.app.url, "SELECT COUNT(*) AS n FROM payments")
        }

        fn records(&self) -> i64 {
            count(
                &self.app.url,
                "SELECT COUNT(*) AS n FROM idempotency_records",
            )
        }

        async fn send(&self, request: Request<Body>) -> Answer {
            let response = self
                .router
                .clone()
                .oneshot(request)
                .await
                .expect("the router answers");
            Answer::read(response).await
        }

        /// `POST path` as tenant `acme` with `key` (raw header values,
        /// one line each) and `body`.
        async fn post(&self, path: &str, keys: &[&str], body: &str) -> Answer {
            self.send(post_request(path, "acme", keys, body)).await
        }
    }

    fn post_request(path: &str, tenant: &str, keys: &[&str], body: &str) -> Request<Body> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(path)
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-tenant", tenant);
        for key in keys {
            request = request.header("idempotency-key", *key);
        }
        request
            .body(Body::from(body.to_owned()))
            .expect("a request")
    }

    /// A response, read whole.
    #[derive(Debug)]
    struct Answer {
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    }

    impl Answer {
        async fn read(response: Response) -> Answer {
            let (parts, body) = response.into_parts();
            Answer {
                status: parts.status,
                headers: parts.headers,
                body: to_bytes(body, usize::MAX).await.expect("the body"),
            }
        }

        fn json(&self) -> Value {
            serde_json::from_slice(&self.body).expect("a JSON body")
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers.get(name).and_then(|v| v.to_str().ok())
        }

        fn replayed(&self) -> bool {
            self.header("idempotent-replayed") == Some("true")
        }

        /// Asserts a problem+json answer of `type_uri` with `status`.
        fn assert_problem(&self, status: StatusCode, type_uri: &str) {
            assert_eq!(self.status, status, "{self:?}");
            assert_eq!(
                self.header("content-type"),
                Some("application/problem+json"),
                "{self:?}"
            );
            let problem = self.json();
            assert_eq!(problem["type"], type_uri, "{problem}");
            assert_eq!(problem["status"], status.as_u16(), "{problem}");
            assert!(problem["title"].is_string(), "{problem}");
            assert!(problem["detail"].is_string(), "{problem}");
        }
    }

    const KEY: &str = "8e03978e-40d5-43e8-bc93-6894a57f9324";
    const BODY: &str = r#"{"amount_cents": 4200, "currency": "BRL"}"#;

    #[tokio::test]
    async fn first_answer_is_201_and_its_retry_replays_the_same_bytes() {
        let server = Server::new();
        let first = server.post("/payments", &[KEY], BODY).await;
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        assert_eq!(first.header("content-type"), Some("application/json"));
        assert_eq!(first.header("idempotent-replayed"), None);
        assert_eq!(first.json()["amount_cents"], 4200);
        let retry = server.post("/payments", &[KEY], BODY).await;
        assert_eq!(
            retry.status,
            StatusCode::CREATED,
            "the replay keeps the 201"
        );
        assert!(retry.replayed(), "{retry:?}");
        assert_eq!(retry.body, first.body, "byte-identical");
        assert_eq!(retry.header("content-type"), Some("application/json"));
        assert_eq!((server.runs(), server.payments()), (1, 1));
    }

    #[tokio::test]
    async fn key_order_and_whitespace_are_the_same_request() {
        let server = Server::new();
        let first = server
            .post(
                "/payments",
                &[KEY],
                r#"{"amount_cents":10,"currency":"EUR"}"#,
            )
            .await;
        assert_eq!(first.status, StatusCode::CREATED);
        let reordered = server
            .post(
                "/payments",
                &[KEY],
                "{ \"currency\" : \"EUR\",\n  \"amount_cents\" : 10 }",
            )
            .await;
        assert_eq!(reordered.status, StatusCode::CREATED, "{reordered:?}");
        assert!(reordered.replayed());
        assert_eq!(reordered.body, first.body);
        assert_eq!(server.runs(), 1);
    }

    #[tokio::test]
    async fn another_payload_with_the_key_is_422_key_reused() {
        let server = Server::new();
        server.post("/payments", &[KEY], BODY).await;
        let other = server
            .post(
                "/payments",
                &[KEY],
                r#"{"amount_cents": 1, "currency": "BRL"}"#,
            )
            .await;
        other.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, problem_types::KEY_REUSED);
        assert!(!other.replayed());
        assert_eq!((server.runs(), server.payments()), (1, 1));
    }

    #[tokio::test]
    async fn invalid_bodies_are_invalid_request_problems_and_store_nothing() {
        let server = Server::new();
        let malformed = server
            .post("/payments", &[KEY], "{\"amount_cents\": ")
            .await;
        malformed.assert_problem(StatusCode::BAD_REQUEST, problem_types::INVALID_REQUEST);
        let missing = server
            .post("/payments", &[KEY], r#"{"amount_cents": 5}"#)
            .await;
        missing.assert_problem(
            StatusCode::UNPROCESSABLE_ENTITY,
            problem_types::INVALID_REQUEST,
        );
        assert_ne!(
            problem_types::INVALID_REQUEST,
            problem_types::KEY_REUSED,
            "a client tells an invalid request from a reused key"
        );
        let request = Request::builder()
            .method(Method::POST)
            .uri("/payments")
            .header("x-tenant", "acme")
            .header("idempotency-key", KEY)
            .body(Body::from(BODY))
            .expect("a request");
        server.send(request).await.assert_problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            problem_types::INVALID_REQUEST,
        );
        assert_eq!((server.runs(), server.records()), (0, 0));
        // The key is still free for the valid request.
        let valid = server.post("/payments", &[KEY], BODY).await;
        assert_eq!(valid.status, StatusCode::CREATED);
        assert!(!valid.replayed());
    }

    #[tokio::test]
    async fn every_malformed_key_header_is_400() {
        let server = Server::new();
        let too_long = "k".repeat(256);
        let cases: [(&str, &[&str]); 8] = [
            ("missing", &[]),
            ("empty", &[""]),
            ("empty sf-string", &["\"\""]),
            ("over 255 bytes", &[&too_long]),
            ("a space", &["\"two words\""]),
            ("two header lines", &[KEY, "another"]),
            ("a list", &["a, b"]),
            ("an sf-string list", &["\"a\", \"b\""]),
        ];
        for (case, keys) in cases {
            let answer = server.post("/payments", keys, BODY).await;
            assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{case}: {answer:?}");
            answer.assert_problem(StatusCode::BAD_REQUEST, problem_types::INVALID_KEY);
        }
        let non_ascii = Request::builder()
            .method(Method::POST)
            .uri("/payments")
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-tenant", "acme")
            .header(
                "idempotency-key",
                axum::http::HeaderValue::from_bytes(b"cl\xe9").expect("obs-text"),
            )
            .body(Body::from(BODY))
            .expect("a request");
        server
            .send(non_ascii)
            .await
            .assert_problem(StatusCode::BAD_REQUEST, problem_types::INVALID_KEY);
        assert_eq!((server.runs(), server.records()), (0, 0));
        // The longest key is fine.
        let longest = "k".repeat(255);
        assert_eq!(
            server.post("/payments", &[&longest], BODY).await.status,
            StatusCode::CREATED
        );
    }

    #[tokio::test]
    async fn a_quoted_key_is_the_same_key_as_its_bare_form() {
        let server = Server::new();
        let bare = server.post("/payments", &[KEY], BODY).await;
        let quoted = server
            .post("/payments", &[&format!("\"{KEY}\"")], BODY)
            .await;
        assert_eq!(quoted.status, StatusCode::CREATED);
        assert!(quoted.replayed(), "{quoted:?}");
        assert_eq!(quoted.body, bare.body);
        assert_eq!(server.runs(), 1);
    }

    #[tokio::test]
    async fn an_optional_key_runs_keyless_requests_every_time() {
        let server = Server::new();
        for _ in 0..2 {
            let answer = server.post("/tips", &[], BODY).await;
            assert_eq!(answer.status, StatusCode::CREATED);
            assert!(!answer.replayed());
        }
        let keyed = server.post("/tips", &[KEY], BODY).await;
        let again = server.post("/tips", &[KEY], BODY).await;
        assert!(!keyed.replayed() && again.replayed());
        server
            .post("/tips", &["a, b"], BODY)
            .await
            .assert_problem(StatusCode::BAD_REQUEST, problem_types::INVALID_KEY);
        assert_eq!(server.runs(), 3);
        assert_eq!(server.payments(), 3);
    }

    #[tokio::test]
    async fn handlers_without_the_extractor_are_untouched() {
        let server = Server::new();
        let get = Request::builder()
            .uri("/payments")
            .header("idempotency-key", "a, b")
            .body(Body::empty())
            .expect("a request");
        let answer = server.send(get).await;
        assert_eq!(answer.status, StatusCode::OK, "{answer:?}");
        assert_eq!(answer.json(), 0);
        assert_eq!(answer.header("idempotent-replayed"), None);
    }

    #[tokio::test]
    async fn tenants_never_replay_each_others_answers() {
        let server = Server::new();
        let acme = server
            .send(post_request("/payments", "acme", &[KEY], BODY))
            .await;
        let globex = server
            .send(post_request("/payments", "globex", &[KEY], BODY))
            .await;
        assert_eq!(globex.status, StatusCode::CREATED);
        assert!(!globex.replayed(), "another tenant's key is another key");
        assert_ne!(globex.json()["id"], acme.json()["id"]);
        let acme_again = server
            .send(post_request("/payments", "acme", &[KEY], BODY))
            .await;
        assert!(acme_again.replayed());
        assert_eq!(acme_again.body, acme.body);
        // Without a principal there is no key to look up.
        let anonymous = Request::builder()
            .method(Method::POST)
            .uri("/payments")
            .header(header::CONTENT_TYPE, "application/json")
            .header("idempotency-key", KEY)
            .body(Body::from(BODY))
            .expect("a request");
        assert_eq!(
            server.send(anonymous).await.status,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(server.runs(), 2);
    }

    #[tokio::test]
    async fn the_same_key_on_another_route_never_replays() {
        let server = Server::new();
        let payment = server.post("/payments", &[KEY], BODY).await;
        assert_eq!(payment.status, StatusCode::CREATED);
        // Another function: its own records.
        let refund = server.post("/refunds", &[KEY], BODY).await;
        assert_eq!(refund.status, StatusCode::CREATED);
        assert!(!refund.replayed());
        // The same function behind another route: the route is part of the
        // request, so this is the key reused with another request.
        server
            .post("/v2/payments", &[KEY], BODY)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, problem_types::KEY_REUSED);
        assert_eq!(server.runs(), 2);
    }

    #[tokio::test]
    async fn the_same_key_with_another_method_is_key_reused() {
        let server = Server::new();
        let first = server.post("/payments", &[KEY], BODY).await;
        assert_eq!(first.status, StatusCode::CREATED);
        let mut put = post_request("/payments", "acme", &[KEY], BODY);
        *put.method_mut() = Method::PUT;
        server
            .send(put)
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, problem_types::KEY_REUSED);
        assert_eq!(server.runs(), 1);
    }

    #[tokio::test]
    async fn nested_routes_are_other_routes() {
        let server = Server::new();
        let first = server.post("/payments", &[KEY], BODY).await;
        assert_eq!(first.status, StatusCode::CREATED);
        // The matched route of a nested router is the whole path pattern,
        // prefix included, whether nested as a router or as a service.
        for path in ["/nested/payments", "/service/payments"] {
            server
                .post(path, &[KEY], BODY)
                .await
                .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, problem_types::KEY_REUSED);
        }
        let nested = server.post("/nested/payments", &["nested-key"], BODY).await;
        assert_eq!(nested.status, StatusCode::CREATED);
        assert!(
            server
                .post("/nested/payments", &["nested-key"], BODY)
                .await
                .replayed()
        );
        assert_eq!(server.runs(), 2);
    }

    #[tokio::test]
    async fn a_terminal_error_is_replayed_with_its_status_and_its_effects_roll_back() {
        let server = Server::new();
        let declined_body = r#"{"amount_cents": 402, "currency": "BRL"}"#;
        let first = server.post("/payments", &[KEY], declined_body).await;
        first.assert_problem(StatusCode::PAYMENT_REQUIRED, DECLINED);
        assert!(!first.replayed());
        assert_eq!(
            server.payments(),
            0,
            "the declined charge's row rolled back"
        );
        assert_eq!(server.records(), 1, "the answer is stored");
        let retry = server.post("/payments", &[KEY], declined_body).await;
        retry.assert_problem(StatusCode::PAYMENT_REQUIRED, DECLINED);
        assert!(retry.replayed());
        assert_eq!(retry.body, first.body);
        assert_eq!((server.runs(), server.payments()), (1, 0), "never charged");
    }

    #[tokio::test]
    async fn a_transient_error_stores_nothing_and_the_retry_runs() {
        let server = Server::new();
        let flaky = r#"{"amount_cents": 503, "currency": "BRL"}"#;
        for attempt in 1..=2 {
            let answer = server.post("/payments", &[KEY], flaky).await;
            answer.assert_problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "https://example.com/problems/network-timeout",
            );
            assert!(!answer.replayed());
            assert_eq!(server.runs(), attempt, "the retry ran the body again");
        }
        assert_eq!((server.payments(), server.records()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_duplicate_of_a_request_in_flight_is_409_with_retry_after() {
        let server = Server::new();
        let held = r#"{"amount_cents": 409, "currency": "BRL"}"#;
        let router = server.router.clone();
        let first = tokio::spawn(async move {
            Answer::read(
                router
                    .oneshot(post_request("/payments", "acme", &[KEY], held))
                    .await
                    .expect("the router answers"),
            )
            .await
        });
        server.app.gate.entered.notified().await;
        let duplicate = server.post("/payments", &[KEY], held).await;
        duplicate.assert_problem(StatusCode::CONFLICT, problem_types::IN_FLIGHT);
        assert_eq!(duplicate.header("retry-after"), Some("1"));
        server.app.gate.release.notify_one();
        let first = first.await.expect("the first request");
        assert_eq!(first.status, StatusCode::CREATED);
        let retry = server.post("/payments", &[KEY], held).await;
        assert!(retry.replayed());
        assert_eq!(retry.body, first.body);
        assert_eq!(server.runs(), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn blocking_connections_through_spawn_blocking_answer_alike() {
        let server = Server::new();
        let first = server.post("/sync/payments", &[KEY], BODY).await;
        assert_eq!(first.status, StatusCode::CREATED, "{first:?}");
        let retry = server.post("/sync/payments", &[KEY], BODY).await;
        assert!(retry.replayed());
        assert_eq!(retry.body, first.body);
        server
            .post(
                "/sync/payments",
                &[KEY],
                r#"{"amount_cents": 1, "currency": "BRL"}"#,
            )
            .await
            .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, problem_types::KEY_REUSED);
        assert_eq!(server.runs(), 1);
    }

    #[tokio::test]
    async fn the_librarys_errors_answer_with_their_status_and_no_internals() {
        use diesel::result::{DatabaseErrorKind, Error as Db};
        use diesel_idempotent::Error;
        let key = || ("ns".to_owned(), "k".to_owned());
        let cases = [
            (
                Error::InvalidKey {
                    reason: "the key is empty",
                },
                StatusCode::BAD_REQUEST,
                problem_types::INVALID_KEY,
            ),
            (
                Error::PayloadMismatch {
                    namespace: key().0,
                    key: key().1,
                },
                StatusCode::UNPROCESSABLE_ENTITY,
                problem_types::KEY_REUSED,
            ),
            (
                Error::InFlight {
                    namespace: key().0,
                    key: key().1,
                },
                StatusCode::CONFLICT,
                problem_types::IN_FLIGHT,
            ),
            (
                Error::Database(Db::DatabaseError(
                    DatabaseErrorKind::Unknown,
                    Box::new("relation \"secret_ledger\" does not exist".to_owned()),
                )),
                StatusCode::INTERNAL_SERVER_ERROR,
                problem_types::INTERNAL,
            ),
            (
                Error::Migration("idempotency_records missing".to_owned()),
                StatusCode::INTERNAL_SERVER_ERROR,
                problem_types::INTERNAL,
            ),
        ];
        for (error, status, type_uri) in cases {
            let answer = Answer::read(error.into_response()).await;
            answer.assert_problem(status, type_uri);
            let text = String::from_utf8_lossy(&answer.body).into_owned();
            for secret in ["secret_ledger", "idempotency_records", "ns"] {
                assert!(!text.contains(secret), "{text}");
            }
            assert_eq!(
                answer.header("retry-after").is_some(),
                status == StatusCode::CONFLICT,
                "{text}"
            );
        }
    }

    #[tokio::test]
    async fn a_null_body_is_stored_and_replayed_with_its_status() {
        let server = Server::new();
        let first = server.post("/deferred", &[KEY], BODY).await;
        assert_eq!(first.status, StatusCode::ACCEPTED, "{first:?}");
        assert_eq!(first.header("content-type"), Some("application/json"));
        assert_eq!(&first.body[..], b"null");
        let retry = server.post("/deferred", &[KEY], BODY).await;
        assert_eq!(retry.status, StatusCode::ACCEPTED, "{retry:?}");
        assert!(retry.replayed(), "{retry:?}");
        assert_eq!(retry.body, first.body, "byte-identical");
        assert_eq!(
            (server.runs(), server.payments(), server.records()),
            (1, 1, 1)
        );
    }

    #[tokio::test]
    async fn sf_string_parameters_are_read_as_rfc_8941_says() {
        let server = Server::new();
        // Parameters after the string are ignored, whatever their values
        // hold (a comma inside a parameter's string is no list); the key is
        // the string, the same key as its bare form.
        for (key, header) in [
            ("p-1", r#""p-1";a="x,y""#),
            ("p-2", r#""p-2";a;b=?1;c=1.5;d=tok;e=:AQ==:"#),
        ] {
            let first = server.post("/payments", &[header], BODY).await;
            assert_eq!(first.status, StatusCode::CREATED, "{header}: {first:?}");
            let bare = server.post("/payments", &[key], BODY).await;
            assert!(bare.replayed(), "{header}: {bare:?}");
            assert_eq!(bare.body, first.body, "{header}");
        }
        // What follows the string must be parameters: `;`, a lowercase key,
        // an optional `=value`, and nothing after the last one.
        let mut accepted = Vec::new();
        for header in [
            r#""p-3";"#,
            r#""p-3";;a=1"#,
            r#""p-3";A=1"#,
            r#""p-3";=1"#,
            r#""p-3";a="#,
            r#""p-3" ;a=1"#,
            r#""p-3";a=1 junk"#,
            r#""p-3";a="unterminated"#,
        ] {
            let answer = server.post("/payments", &[header], BODY).await;
            if answer.status != StatusCode::BAD_REQUEST {
                accepted.push((header, answer.status));
            } else {
                answer.assert_problem(StatusCode::BAD_REQUEST, problem_types::INVALID_KEY);
            }
        }
        assert!(
            accepted.is_empty(),
            "invalid sf-strings accepted: {accepted:?}"
        );
        assert_eq!(server.runs(), 2);
    }

    /// A record whose stored answer no longer reads back (the answer's
    /// type changed in a deploy) is a 500: the payment was made and its
    /// record is stored, so the answer must not tell the client that
    /// nothing was stored (a client that believed it could pay again under
    /// a new key).
    #[tokio::test]
    async fn a_500_for_a_stored_answer_never_says_nothing_was_stored() {
        use diesel::connection::SimpleConnection;
        let server = Server::new();
        let first = server.post("/payments", &[KEY], BODY).await;
        assert_eq!(first.status, StatusCode::CREATED);
        blocking_conn(&server.app.url)
            .batch_execute(
                r#"UPDATE idempotency_records SET response = '{"status":201,"body":{"id":"an older shape"}}'"#,
            )
            .expect("an answer stored by an older version");
        let retry = server.post("/payments", &[KEY], BODY).await;
        retry.assert_problem(StatusCode::INTERNAL_SERVER_ERROR, problem_types::INTERNAL);
        let detail = retry.json()["detail"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            !detail.contains("nothing was stored"),
            "the payment and its record exist: {detail}"
        );
        assert_eq!(
            (server.runs(), server.payments(), server.records()),
            (1, 1, 1)
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn over_tcp_with_reqwest() {
        let server = Server::new();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("an address");
        let router = server.router.clone();
        let serving = tokio::spawn(async move { axum::serve(listener, router).await });
        let client = reqwest::Client::new();
        let post = |key: &str, body: &'static str| {
            client
                .post(format!("http://{address}/payments"))
                .header("content-type", "application/json")
                .header("x-tenant", "acme")
                .header("idempotency-key", key)
                .body(body)
                .send()
        };
        let first = post(KEY, BODY).await.expect("the first answer");
        assert_eq!(first.status(), reqwest::StatusCode::CREATED);
        assert!(first.headers().get("idempotent-replayed").is_none());
        let first = first.bytes().await.expect("its body");
        let retry = post(&format!("\"{KEY}\""), BODY).await.expect("the retry");
        assert_eq!(retry.status(), reqwest::StatusCode::CREATED);
        assert_eq!(
            retry
                .headers()
                .get("idempotent-replayed")
                .map(|v| v.as_bytes()),
            Some(&b"true"[..])
        );
        assert_eq!(retry.bytes().await.expect("its body"), first);
        let mismatch = post(KEY, r#"{"amount_cents": 7, "currency": "BRL"}"#)
            .await
            .expect("the mismatch");
        assert_eq!(mismatch.status(), reqwest::StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            mismatch.headers().get("content-type").map(|v| v.as_bytes()),
            Some(&b"application/problem+json"[..])
        );
        assert_eq!(server.runs(), 1);
        serving.abort();
    }
}
