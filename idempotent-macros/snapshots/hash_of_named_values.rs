fn record_click(
    conn: &mut PgConnection,
    tenant: &str,
    event: &ClickEvent,
) -> Result<(), AppError> {
    let __idempotent_fingerprint = ::diesel_idempotent::__private::Fingerprint::builder();
    let __idempotent_fingerprint = ::diesel_idempotent::__private::fingerprint_argument(
        __idempotent_fingerprint,
        "event.user_id",
        &(event.user_id),
    );
    let __idempotent_fingerprint = ::diesel_idempotent::__private::fingerprint_argument(
        __idempotent_fingerprint,
        "event.url",
        &(event.url),
    );
    let __idempotent_fingerprint = __idempotent_fingerprint.finish();
    let __idempotent_key = ::diesel_idempotent::__private::hashed_key(
        &__idempotent_fingerprint,
    );
    let __idempotent_scope = ::diesel_idempotent::__private::scope(&(tenant));
    ::diesel_idempotent::__private::Call::new("analytics.click", &__idempotent_key)
        .pattern(::diesel_idempotent::__private::Pattern::Hash)
        .scope(&__idempotent_scope)
        .ttl(::diesel_idempotent::__private::Ttl::from_secs(86400))
        .fingerprint(__idempotent_fingerprint)
        .run_response(conn, |conn| -> Result<(), AppError> { Ok(()) })
}
