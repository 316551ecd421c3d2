//! Expansion snapshots: what the attribute generates for each shape, pinned
//! in `snapshots/<case>.rs`. After an intended change, regenerate them with
//! `UPDATE_SNAPSHOTS=1 cargo test -p idempotent-macros` and review the diff.

use std::path::PathBuf;

use proc_macro2::TokenStream;
use quote::quote;

use crate::expand::expand;

fn check(case: &str, attr: TokenStream, item: TokenStream) {
    let expanded = expand(attr, item);
    let file: syn::File = syn::parse2(expanded.clone())
        .unwrap_or_else(|e| panic!("{case}: the expansion does not parse ({e}):\n{expanded}"));
    let actual = prettyplease::unparse(&file);
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("snapshots")
        .join(format!("{case}.rs"));
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{case}: no snapshot at {}; run with UPDATE_SNAPSHOTS=1",
            path.display()
        )
    });
    assert_eq!(
        expected, actual,
        "{case}: the expansion changed; if intended, run with UPDATE_SNAPSHOTS=1 and review"
    );
}

#[test]
fn free_fn() {
    check(
        "free_fn",
        quote!(key = key, ttl = "24h", name = "payments.create"),
        quote! {
            /// Creates a payment.
            #[must_use]
            pub fn create_payment(
                conn: &mut PgConnection,
                key: &str,
                req: &NewPayment,
            ) -> Result<Payment, AppError> {
                let payment = insert(conn, req)?;
                Ok(payment)
            }
        },
    );
}

#[test]
fn default_name_and_ttl() {
    check(
        "default_name_and_ttl",
        quote!(key = key),
        quote! {
            fn create(conn: &mut SqliteConnection, key: String, amount: i64) -> Result<i64, E> {
                Ok(amount)
            }
        },
    );
}

#[test]
fn method_with_every_option() {
    check(
        "method_with_every_option",
        quote!(
            key = req.idempotency_key.as_str(),
            scope = tenant,
            conn = db,
            clock = self.clock,
            skip(trace),
            ttl = "15m",
            name = "svc.charge",
            on_conflict = "reject",
            mode = "optimistic",
            replay = "read_first",
            max_response_bytes = 65_536
        ),
        quote! {
            pub(crate) fn charge(
                &self,
                db: &mut PgConnection,
                tenant: TenantId,
                req: ChargeRequest,
                trace: &Span,
            ) -> Result<Outcome<Receipt>, AppError> {
                if req.amount == 0 {
                    return Err(AppError::Empty);
                }
                self.gateway.charge(db, &req).map(Into::into)
            }
        },
    );
}

#[test]
fn generic_with_crate_path() {
    check(
        "generic_with_crate_path",
        quote!(key = key, crate = "::my_app::idempotency"),
        quote! {
            fn run<'a, C, T, const N: usize>(conn: &mut C, key: &'a str, items: [T; N]) -> Result<usize, AppError>
            where
                C: IdempotentConnection,
                T: Serialize,
            {
                Ok(items.len())
            }
        },
    );
}

#[test]
fn error_keeps_the_original_function() {
    check(
        "error_keeps_the_original_function",
        quote!(key = key, ttl = "forever"),
        quote! {
            fn create(conn: &mut PgConnection, key: &str) -> Result<u32, AppError> {
                Ok(1)
            }
        },
    );
}

#[test]
fn hash_of_arguments() {
    check(
        "hash_of_arguments",
        quote!(hash, ttl = "7d", name = "analytics.click", skip(trace)),
        quote! {
            fn record_click(conn: &mut PgConnection, event: &ClickEvent, trace: TraceId) -> Result<(), AppError> {
                Ok(())
            }
        },
    );
}

#[test]
fn hash_of_named_values() {
    check(
        "hash_of_named_values",
        quote!(
            hash(event.user_id, event.url),
            scope = tenant,
            name = "analytics.click"
        ),
        quote! {
            fn record_click(conn: &mut PgConnection, tenant: &str, event: &ClickEvent) -> Result<(), AppError> {
                Ok(())
            }
        },
    );
}

#[test]
fn get_or_create() {
    check(
        "get_or_create",
        quote!(get_or_create = find_account(conn, customer.id, params.bank_id)),
        quote! {
            fn open_account(conn: &mut PgConnection, customer: &Customer, params: &NewAccount) -> QueryResult<Account> {
                insert_account(conn, customer, params)
            }
        },
    );
}

#[test]
fn generic_arguments_add_their_stable_names() {
    check(
        "generic_arguments_add_their_stable_names",
        quote!(hash, name = "events.apply", ttl = "1500ms", skip(ctx)),
        quote! {
            fn apply<'a, C, E, F, const N: usize>(
                conn: &mut C,
                event: &'a E,
                ctx: F,
                tags: [&'a str; N],
            ) -> Result<(), AppError>
            where
                C: IdempotentConnection,
                E: Serialize + StableName,
            {
                Ok(())
            }
        },
    );
}

#[test]
fn async_free_fn() {
    check(
        "async_free_fn",
        quote!(key = key, ttl = "24h", name = "payments.create"),
        quote! {
            /// Creates a payment.
            pub async fn create_payment(
                conn: &mut AsyncPgConnection,
                key: &str,
                req: &NewPayment,
            ) -> Result<Payment, AppError> {
                let payment = insert(conn, req).await?;
                Ok(payment)
            }
        },
    );
}

#[test]
fn async_method_with_every_option() {
    check(
        "async_method_with_every_option",
        quote!(
            key = req.idempotency_key.as_str(),
            scope = tenant,
            conn = db,
            clock = self.clock,
            skip(trace),
            ttl = "15m",
            abandon_after = "1m 30s",
            name = "svc.charge",
            on_conflict = "reject",
            mode = "optimistic",
            replay = "read_first",
            max_response_bytes = 65_536
        ),
        quote! {
            pub(crate) async fn charge(
                &self,
                db: &mut AsyncPgConnection,
                tenant: TenantId,
                req: ChargeRequest,
                trace: &Span,
            ) -> Result<Outcome<Receipt>, AppError> {
                if req.amount == 0 {
                    return Err(AppError::Empty);
                }
                self.gateway.charge(db, &req).await.map(Into::into)
            }
        },
    );
}

#[test]
fn async_hash_of_arguments() {
    check(
        "async_hash_of_arguments",
        quote!(hash, ttl = "7d", name = "analytics.click", skip(trace)),
        quote! {
            async fn record_click<C>(conn: &mut C, event: &ClickEvent, trace: TraceId) -> Result<(), AppError>
            where
                C: AsyncIdempotentConnection,
            {
                Ok(())
            }
        },
    );
}

#[test]
fn async_get_or_create() {
    check(
        "async_get_or_create",
        quote!(get_or_create = find_account(conn, customer.id, params.bank_id)),
        quote! {
            async fn open_account(conn: &mut AsyncPgConnection, customer: &Customer, params: &NewAccount) -> QueryResult<Account> {
                insert_account(conn, customer, params).await
            }
        },
    );
}

#[test]
fn bounded_wait() {
    check(
        "bounded_wait",
        quote!(
            key = key,
            name = "payments.create",
            on_conflict = "wait",
            wait_for = "2s 500ms"
        ),
        quote! {
            pub fn create_payment(conn: &mut PgConnection, key: &str, req: &NewPayment) -> Result<Payment, AppError> {
                insert(conn, req)
            }
        },
    );
}
