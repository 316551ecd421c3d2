fn create(conn: &mut SqliteConnection, key: String, amount: i64) -> Result<i64, E> {
    let __idempotent_fingerprint = ::diesel_idempotent::__private::Fingerprint::builder();
    let __idempotent_fingerprint = ::diesel_idempotent::__private::argument_must_be_serializable_or_skipped(
        __idempotent_fingerprint,
        &(amount),
    );
    let __idempotent_fingerprint = __idempotent_fingerprint.finish();
    let __idempotent_key = ::diesel_idempotent::__private::key(&(key));
    ::diesel_idempotent::__private::Call::new(
            ::core::concat!(::core::module_path!(), "::", "create"),
            &__idempotent_key,
        )
        .ttl(::diesel_idempotent::__private::Ttl::from_secs(86400u64))
        .fingerprint(__idempotent_fingerprint)
        .run_response(conn, |conn| -> Result<i64, E> { Ok(amount) })
}
