//! The statements of the test connections, written once for a blocking
//! connection's `TestConn` impl (`name!([] [] ..)`) and a diesel-async
//! connection's `AsyncTestConn` impl (`name!([async] [.await] ..)`, with
//! diesel-async's `RunQueryDsl` in scope, and the rows `Id` and `Count`
//! below). A build without some
//! backend's feature leaves that dialect's macros unused.
#![allow(unused_macros, unused_imports)]

/// A row of one id.
#[derive(diesel::QueryableByName)]
pub(crate) struct Id {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(crate) id: i64,
}

/// A row of one count.
#[derive(diesel::QueryableByName)]
pub(crate) struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub(crate) n: i64,
}

/// The test statements every backend writes the same way in Diesel's DSL,
/// for a blocking connection's `TestConn` impl (`dsl_statements!([] [])`)
/// and a diesel-async connection's `AsyncTestConn` impl
/// (`dsl_statements!([async] [.await])`).
macro_rules! dsl_statements {
    ([$($async:ident)?] [$($await:tt)*]) => {
        $($async)? fn count_payments(&mut self) -> QueryResult<i64> {
            diesel::sql_query("SELECT COUNT(*) AS n FROM payments")
                .get_result::<Count>(self)
                $($await)*
                .map(|row| row.n)
        }

        $($async)? fn count_records(&mut self) -> QueryResult<i64> {
            idempotency_records::table
                .count()
                .get_result::<i64>(self)
                $($await)*
        }

        $($async)? fn count_accounts(&mut self) -> QueryResult<i64> {
            diesel::sql_query("SELECT COUNT(*) AS n FROM accounts")
                .get_result::<Count>(self)
                $($await)*
                .map(|row| row.n)
        }

        $($async)? fn load_record(
            &mut self,
            namespace: &str,
            key: &str,
        ) -> QueryResult<IdempotencyRecord> {
            idempotency_records::table
                .filter(idempotency_records::namespace.eq(namespace))
                .filter(idempotency_records::key.eq(key))
                .select(IdempotencyRecord::as_select())
                .first(self)
                $($await)*
        }

        $($async)? fn set_record_fingerprint(
            &mut self,
            namespace: &str,
            key: &str,
            fingerprint: &str,
        ) -> QueryResult<usize> {
            diesel::update(
                idempotency_records::table
                    .filter(idempotency_records::namespace.eq(namespace))
                    .filter(idempotency_records::key.eq(key)),
            )
            .set(idempotency_records::fingerprint.eq(fingerprint))
            .execute(self)
            $($await)*
        }

        $($async)? fn record_keys(&mut self) -> QueryResult<Vec<String>> {
            idempotency_records::table
                .select(idempotency_records::key)
                .order(idempotency_records::key)
                .load(self)
                $($await)*
        }
    };
}

/// The body's inserts and the account lookup of the dialects with
/// `RETURNING` (PostgreSQL, SQLite), with their two placeholders.
macro_rules! returning_inserts {
    ([$($async:ident)?] [$($await:tt)*] $first:literal, $second:literal) => {
        $($async)? fn insert_payment(&mut self, amount: i64) -> QueryResult<i64> {
            diesel::sql_query(concat!(
                "INSERT INTO payments (amount) VALUES (",
                $first,
                ") RETURNING id"
            ))
            .bind::<BigInt, _>(amount)
            .get_result::<Id>(self)
            $($await)*
            .map(|row| row.id)
        }

        $($async)? fn insert_account(&mut self, customer_id: i64, bank_id: i64) -> QueryResult<Account> {
            diesel::sql_query(concat!(
                "INSERT INTO accounts (customer_id, bank_id) VALUES (",
                $first,
                ", ",
                $second,
                ") RETURNING id, customer_id, bank_id"
            ))
            .bind::<BigInt, _>(customer_id)
            .bind::<BigInt, _>(bank_id)
            .get_result(self)
            $($await)*
        }

        $crate::common::statements::find_account!([$($async)?] [$($await)*] $first, $second);
    };
}

/// MySQL's inserts (the new id from `LAST_INSERT_ID()`) and account lookup.
macro_rules! mysql_inserts {
    ([$($async:ident)?] [$($await:tt)*]) => {
        $($async)? fn insert_payment(&mut self, amount: i64) -> QueryResult<i64> {
            diesel::sql_query("INSERT INTO payments (amount) VALUES (?)")
                .bind::<BigInt, _>(amount)
                .execute(self)
                $($await)*?;
            diesel::sql_query("SELECT CAST(LAST_INSERT_ID() AS SIGNED) AS id")
                .get_result::<Id>(self)
                $($await)*
                .map(|row| row.id)
        }

        $($async)? fn insert_account(&mut self, customer_id: i64, bank_id: i64) -> QueryResult<Account> {
            diesel::sql_query("INSERT INTO accounts (customer_id, bank_id) VALUES (?, ?)")
                .bind::<BigInt, _>(customer_id)
                .bind::<BigInt, _>(bank_id)
                .execute(self)
                $($await)*?;
            diesel::sql_query(
                "SELECT id, customer_id, bank_id FROM accounts WHERE id = LAST_INSERT_ID()",
            )
            .get_result(self)
            $($await)*
        }

        $crate::common::statements::find_account!([$($async)?] [$($await)*] "?", "?");
    };
}

/// The account lookup, with the dialect's two placeholders.
macro_rules! find_account {
    ([$($async:ident)?] [$($await:tt)*] $customer:literal, $bank:literal) => {
        $($async)? fn find_account(
            &mut self,
            customer_id: i64,
            bank_id: i64,
        ) -> QueryResult<Option<Account>> {
            diesel::sql_query(concat!(
                "SELECT id, customer_id, bank_id FROM accounts WHERE customer_id = ",
                $customer,
                " AND bank_id = ",
                $bank
            ))
            .bind::<BigInt, _>(customer_id)
            .bind::<BigInt, _>(bank_id)
            .get_result(self)
            $($await)*
            .optional()
        }
    };
}

/// The lock-wait setting and the payment's row lock, with the dialect's
/// setting and placeholder; SQLite (`sqlite`) has no row locks.
macro_rules! row_locks {
    ([$($async:ident)?] [$($await:tt)*] sqlite) => {
        $($async)? fn short_lock_waits(&mut self) -> QueryResult<()> {
            diesel::sql_query("PRAGMA busy_timeout = 0")
                .execute(self)
                $($await)*
                .map(drop)
        }

        $crate::common::statements::row_locks!(@touch [$($async)?] [$($await)*] "?");

        $($async)? fn lock_payment_nowait(&mut self, _id: i64) -> QueryResult<()> {
            unreachable!("SQLite has no row locks")
        }
    };
    ([$($async:ident)?] [$($await:tt)*] $short_waits:literal, $placeholder:literal) => {
        $($async)? fn short_lock_waits(&mut self) -> QueryResult<()> {
            diesel::sql_query($short_waits)
                .execute(self)
                $($await)*
                .map(drop)
        }

        $crate::common::statements::row_locks!(@touch [$($async)?] [$($await)*] $placeholder);

        $($async)? fn lock_payment_nowait(&mut self, id: i64) -> QueryResult<()> {
            diesel::sql_query(concat!(
                "SELECT id FROM payments WHERE id = ",
                $placeholder,
                " FOR UPDATE NOWAIT"
            ))
            .bind::<BigInt, _>(id)
            .get_result::<Id>(self)
            $($await)*
            .map(drop)
        }
    };
    (@touch [$($async:ident)?] [$($await:tt)*] $placeholder:literal) => {
        $($async)? fn touch_payment(&mut self, id: i64) -> QueryResult<()> {
            diesel::sql_query(concat!(
                "UPDATE payments SET amount = amount + 1 WHERE id = ",
                $placeholder
            ))
            .bind::<BigInt, _>(id)
            .execute(self)
            $($await)*
            .map(drop)
        }
    };
}

/// This connection's session id on the server, by the dialect's query;
/// SQLite (`sqlite`) has none.
macro_rules! session_id {
    ([$($async:ident)?] [$($await:tt)*] sqlite) => {
        $($async)? fn session_id(&mut self) -> QueryResult<i64> {
            unreachable!("SQLite has no server sessions")
        }
    };
    ([$($async:ident)?] [$($await:tt)*] $sql:literal) => {
        $($async)? fn session_id(&mut self) -> QueryResult<i64> {
            diesel::sql_query($sql)
                .get_result::<Id>(self)
                $($await)*
                .map(|row| row.id)
        }
    };
}

pub(crate) use {
    dsl_statements, find_account, mysql_inserts, returning_inserts, row_locks, session_id,
};
