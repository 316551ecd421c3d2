pub fn create_payment(
    conn: &mut PgConnection,
    key: &str,
    req: &NewPayment,
) -> Result<Payment, AppError> {
    let __idempotent_fingerprint = ::diesel_idempotent::__private::Fingerprint::builder();
    let __idempotent_fingerprint = ::diesel_idempotent::__private::fingerprint_argument(
        __idempotent_fingerprint,
        "req",
        &(req),
    );
    let (__idempotent_fingerprint, __idempotent_key) = ::diesel_idempotent::__private::key(
        __idempotent_fingerprint,
        &(key),
    );
    let __idempotent_fingerprint = __idempotent_fingerprint.finish();
    ::diesel_idempotent::__private::Call::new("payments.create", &__idempotent_key)
        .ttl(::diesel_idempotent::__private::Ttl::from_secs(86400))
        .on_conflict(
            ::diesel_idempotent::__private::OnConflict::WaitFor(
                ::core::time::Duration::from_millis(2500),
            ),
        )
        .fingerprint(__idempotent_fingerprint)
        .run_response(conn, |conn| -> Result<Payment, AppError> { insert(conn, req) })
}
