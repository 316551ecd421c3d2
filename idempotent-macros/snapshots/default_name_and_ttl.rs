fn create(conn: &mut SqliteConnection, key: String, amount: i64) -> Result<i64, E> {
    const _: () = ::core::assert!(
        ::core::concat!(::core::module_path!(), "::", "create") .len() <= 255,
        "the namespace of `create` (its module path, `::` and its name) is longer than 255 bytes; give it a shorter one with `#[idempotent(name = \"...\")]`"
    );
    let __idempotent_fingerprint = ::diesel_idempotent::__private::Fingerprint::builder();
    let __idempotent_fingerprint = ::diesel_idempotent::__private::fingerprint_argument(
        __idempotent_fingerprint,
        "amount",
        &(amount),
    );
    let (__idempotent_fingerprint, __idempotent_key) = ::diesel_idempotent::__private::key(
        __idempotent_fingerprint,
        &(key),
    );
    let __idempotent_fingerprint = __idempotent_fingerprint.finish();
    ::diesel_idempotent::__private::Call::new(
            ::core::concat!(::core::module_path!(), "::", "create"),
            &__idempotent_key,
        )
        .ttl(::diesel_idempotent::__private::Ttl::from_secs(86400))
        .fingerprint(__idempotent_fingerprint)
        .run_response(conn, |conn| -> Result<i64, E> { Ok(amount) })
}
