//! What the attribute's options mean at run time, on an in-memory SQLite
//! database: generic arguments keep their types apart in the fingerprint
//! (`StableName`), `ttl` keeps fractions of a second, and an argument that
//! cannot be fingerprinted is named in the error.
#![cfg(feature = "sqlite")]

use diesel::prelude::*;

#[derive(Debug)]
pub enum AppError {
    Idempotency(diesel_idempotent::Error),
    Db(diesel::result::Error),
}

impl From<diesel_idempotent::Error> for AppError {
    fn from(e: diesel_idempotent::Error) -> Self {
        AppError::Idempotency(e)
    }
}

impl From<diesel::result::Error> for AppError {
    fn from(e: diesel::result::Error) -> Self {
        AppError::Db(e)
    }
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}

/// `#[idempotent(hash)]` on a generic function: two event types whose
/// values serialize alike get two keys, because each type's `StableName`
/// joins the fingerprint.
mod hash_generics {
    use diesel::prelude::*;
    use diesel::sql_types::Text;
    use diesel_idempotent::{Fingerprint, StableName, idempotent};
    use serde::de::DeserializeOwned;
    use serde::{Deserialize, Serialize};

    use super::{AppError, Count};

    #[derive(Serialize, Deserialize)]
    struct Created {
        id: i64,
    }

    #[derive(Serialize, Deserialize)]
    struct Deleted {
        id: i64,
    }

    impl StableName for Created {
        const STABLE_NAME: &'static str = "order.created";
    }

    impl StableName for Deleted {
        const STABLE_NAME: &'static str = "order.deleted";
    }

    trait Effect {
        const KIND: &'static str;
    }

    impl Effect for Created {
        const KIND: &'static str = "created";
    }

    impl Effect for Deleted {
        const KIND: &'static str = "deleted";
    }

    /// Applies an event once: one row in `effects` per distinct event.
    #[idempotent(hash, name = "orders.apply")]
    fn apply<E: Serialize + StableName + Effect>(
        conn: &mut SqliteConnection,
        event: &E,
    ) -> Result<i64, AppError> {
        let _ = event;
        diesel::sql_query("INSERT INTO effects (kind) VALUES (?)")
            .bind::<Text, _>(E::KIND)
            .execute(conn)?;
        Ok(effects(conn))
    }

    fn effects(conn: &mut SqliteConnection) -> i64 {
        diesel::sql_query("SELECT COUNT(*) AS n FROM effects")
            .get_result::<Count>(conn)
            .expect("count")
            .n
    }

    fn database() -> SqliteConnection {
        let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
        diesel_idempotent::migrate(&mut conn).expect("migrations");
        diesel::sql_query("CREATE TABLE effects (kind TEXT NOT NULL)")
            .execute(&mut conn)
            .expect("side table");
        conn
    }

    #[test]
    fn types_that_serialize_alike_get_their_own_keys() {
        let mut conn = database();
        assert_eq!(
            serde_json::to_value(Created { id: 5 }).unwrap(),
            serde_json::to_value(Deleted { id: 5 }).unwrap(),
            "the payloads alone cannot tell the events apart"
        );
        assert_eq!(apply(&mut conn, &Created { id: 5 }).unwrap(), 1);
        assert_eq!(
            apply(&mut conn, &Deleted { id: 5 }).unwrap(),
            2,
            "not a replay"
        );
        assert_eq!(apply(&mut conn, &Created { id: 5 }).unwrap(), 1, "replayed");
        assert_eq!(apply(&mut conn, &Deleted { id: 5 }).unwrap(), 2, "replayed");
        assert_eq!(effects(&mut conn), 2, "each event ran once");
    }

    #[test]
    fn the_key_is_the_arguments_then_the_type_names() {
        let mut conn = database();
        apply(&mut conn, &Deleted { id: 9 }).unwrap();
        let key = Fingerprint::builder()
            .arg(&Deleted { id: 9 })
            .arg(Deleted::STABLE_NAME)
            .finish()
            .unwrap();
        let stored = diesel::sql_query(
            "SELECT COUNT(*) AS n FROM idempotency_records WHERE namespace = 'orders.apply' AND key = ?",
        )
        .bind::<Text, _>(key.as_str())
        .get_result::<Count>(&mut conn)
        .unwrap();
        assert_eq!(stored.n, 1, "a producer can derive the same key");
    }

    /// A type parameter only in the stored type: two types fetched by the
    /// same id keep their own records.
    #[idempotent(hash, name = "orders.fetch", skip(make))]
    fn fetch<T: Serialize + DeserializeOwned + StableName>(
        conn: &mut SqliteConnection,
        id: i64,
        make: fn(i64) -> T,
    ) -> Result<T, AppError> {
        diesel::sql_query("INSERT INTO effects (kind) VALUES ('fetch')").execute(conn)?;
        Ok(make(id))
    }

    #[test]
    fn a_type_parameter_of_the_stored_type_keeps_its_own_records() {
        let mut conn = database();
        let created = fetch(&mut conn, 5, |id| Created { id }).unwrap();
        assert_eq!(created.id, 5);
        let deleted = fetch(&mut conn, 5, |id| Deleted { id }).unwrap();
        assert_eq!(deleted.id, 5);
        assert_eq!(
            effects(&mut conn),
            2,
            "the second is not a replay of the first"
        );
    }

    /// A type parameter that neither an argument nor the result mentions.
    #[idempotent(hash, name = "orders.load")]
    fn load<T: Serialize + DeserializeOwned + StableName + Effect>(
        conn: &mut SqliteConnection,
        id: i64,
    ) -> Result<(String, i64), AppError> {
        diesel::sql_query("INSERT INTO effects (kind) VALUES (?)")
            .bind::<Text, _>(T::KIND)
            .execute(conn)?;
        Ok((T::KIND.to_owned(), id))
    }

    #[test]
    fn a_type_parameter_of_the_result_keeps_its_own_records() {
        let mut conn = database();
        assert_eq!(load::<Created>(&mut conn, 5).unwrap().0, "created");
        assert_eq!(
            load::<Deleted>(&mut conn, 5).unwrap().0,
            "deleted",
            "not a replay"
        );
        assert_eq!(load::<Created>(&mut conn, 5).unwrap().0, "created");
        assert_eq!(effects(&mut conn), 2);
    }

    /// The value of a const parameter is part of the type.
    #[derive(Serialize)]
    struct Tagged<const KIND: u8> {
        id: i64,
    }

    #[idempotent(hash, name = "orders.tagged")]
    fn tagged<const KIND: u8>(
        conn: &mut SqliteConnection,
        event: &Tagged<KIND>,
    ) -> Result<i64, AppError> {
        let _ = event;
        diesel::sql_query("INSERT INTO effects (kind) VALUES ('tagged')").execute(conn)?;
        Ok(effects(conn))
    }

    #[test]
    fn const_parameters_keep_their_own_records() {
        let mut conn = database();
        assert_eq!(tagged(&mut conn, &Tagged::<1> { id: 5 }).unwrap(), 1);
        assert_eq!(
            tagged(&mut conn, &Tagged::<2> { id: 5 }).unwrap(),
            2,
            "not a replay"
        );
        assert_eq!(
            tagged(&mut conn, &Tagged::<1> { id: 5 }).unwrap(),
            1,
            "replayed"
        );
    }
}

/// `ttl = "1500ms"` expires after 1.5 s of the injected clock, not after 1 s.
mod ttl_precision {
    use std::time::Duration;

    use diesel::prelude::*;
    use diesel_idempotent::{ManualClock, idempotent};

    use super::{AppError, Count};

    /// Returns how many times a body ran so far, this one included.
    #[idempotent(key = key, ttl = "1500ms", name = "ttl.precise", clock = clock)]
    fn run(conn: &mut SqliteConnection, clock: &ManualClock, key: &str) -> Result<i64, AppError> {
        diesel::sql_query("INSERT INTO runs DEFAULT VALUES").execute(conn)?;
        Ok(diesel::sql_query("SELECT COUNT(*) AS n FROM runs")
            .get_result::<Count>(conn)?
            .n)
    }

    #[test]
    fn a_ttl_of_1500ms_expires_after_one_and_a_half_seconds() {
        let mut conn = SqliteConnection::establish(":memory:").expect("in-memory SQLite");
        diesel_idempotent::migrate(&mut conn).expect("migrations");
        diesel::sql_query("CREATE TABLE runs (id INTEGER PRIMARY KEY)")
            .execute(&mut conn)
            .expect("side table");
        let clock = ManualClock::at_unix_seconds(1_700_000_000);

        assert_eq!(run(&mut conn, &clock, "k").unwrap(), 1);
        clock.advance(Duration::from_millis(1000));
        assert_eq!(run(&mut conn, &clock, "k").unwrap(), 1, "kept at +1.0 s");
        clock.advance(Duration::from_millis(400));
        assert_eq!(run(&mut conn, &clock, "k").unwrap(), 1, "kept at +1.4 s");
        clock.advance(Duration::from_millis(100));
        assert_eq!(run(&mut conn, &clock, "k").unwrap(), 2, "expired at +1.5 s");
    }
}

/// A fingerprinted argument that cannot be fingerprinted is named in the
/// error as it is written in the source (a raw identifier without `r#`),
/// and the body does not run.
mod argument_names {
    use diesel::prelude::*;
    use diesel_idempotent::idempotent;
    use serde::Serialize;

    #[derive(Serialize)]
    pub struct Reading {
        pub value: f64,
    }

    #[idempotent(key = key, name = "tests.reading")]
    fn record(
        conn: &mut SqliteConnection,
        key: &str,
        r#type: &str,
        reading: &Reading,
    ) -> Result<String, super::AppError> {
        let _ = conn;
        Ok(format!("{}={}", r#type, reading.value))
    }

    #[idempotent(hash(reading.value), name = "tests.reading_value")]
    fn record_value(
        conn: &mut SqliteConnection,
        reading: &Reading,
    ) -> Result<f64, super::AppError> {
        let _ = conn;
        Ok(reading.value)
    }

    fn database() -> SqliteConnection {
        let mut conn = SqliteConnection::establish(":memory:").unwrap();
        diesel_idempotent::migrate(&mut conn).unwrap();
        conn
    }

    fn message(err: super::AppError) -> String {
        match err {
            super::AppError::Idempotency(e) => e.to_string(),
            super::AppError::Db(e) => panic!("not a fingerprint error: {e}"),
        }
    }

    #[test]
    fn a_nan_argument_is_an_error_naming_it() {
        let mut conn = database();
        let nan = Reading { value: f64::NAN };
        let err = record(&mut conn, "k", "t", &nan).unwrap_err();
        assert!(message(err).contains("argument `reading`"));
        let err = record_value(&mut conn, &nan).unwrap_err();
        assert!(message(err).contains("argument `reading.value`"));
        let fine = Reading { value: 1.5 };
        assert_eq!(record(&mut conn, "k", "t", &fine).unwrap(), "t=1.5");
        assert_eq!(record_value(&mut conn, &fine).unwrap(), 1.5);
    }

    /// Fails to serialize, like a type with a NaN inside: names `type`.
    pub struct Unserializable;

    impl Serialize for Unserializable {
        fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
            Err(serde::ser::Error::custom("refused"))
        }
    }

    #[idempotent(key = key, name = "tests.raw_name")]
    fn raw_name(
        conn: &mut SqliteConnection,
        key: &str,
        r#type: &Unserializable,
    ) -> Result<u8, super::AppError> {
        let _ = (conn, r#type);
        Ok(1)
    }

    #[test]
    fn a_raw_identifier_is_named_without_its_prefix() {
        let mut conn = database();
        let text = message(raw_name(&mut conn, "k", &Unserializable).unwrap_err());
        assert!(text.contains("argument `type`"), "{text}");
    }
}
