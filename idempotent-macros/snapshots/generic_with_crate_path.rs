fn run<'a, C, T, const N: usize>(
    conn: &mut C,
    key: &'a str,
    items: [T; N],
) -> Result<usize, AppError>
where
    C: IdempotentConnection,
    T: Serialize,
{
    const _: () = ::core::assert!(
        ::core::concat!(::core::module_path!(), "::", "run") .len() <= 255,
        "the namespace of `run` (its module path, `::` and its name) is longer than 255 bytes; give it a shorter one with `#[idempotent(name = \"...\")]`"
    );
    let __idempotent_fingerprint = ::my_app::idempotency::__private::Fingerprint::builder();
    let __idempotent_fingerprint = ::my_app::idempotency::__private::fingerprint_argument(
        __idempotent_fingerprint,
        "items",
        &(items),
    );
    let __idempotent_fingerprint = ::my_app::idempotency::__private::type_name_for_generic_argument::<
        T,
    >(__idempotent_fingerprint);
    let __idempotent_fingerprint = ::my_app::idempotency::__private::fingerprint_argument(
        __idempotent_fingerprint,
        "N",
        &N,
    );
    let (__idempotent_fingerprint, __idempotent_key) = ::my_app::idempotency::__private::key(
        __idempotent_fingerprint,
        &(key),
    );
    let __idempotent_fingerprint = __idempotent_fingerprint.finish();
    ::my_app::idempotency::__private::Call::new(
            ::core::concat!(::core::module_path!(), "::", "run"),
            &__idempotent_key,
        )
        .ttl(::my_app::idempotency::__private::Ttl::from_secs(86400))
        .fingerprint(__idempotent_fingerprint)
        .run_response(conn, |conn| -> Result<usize, AppError> { Ok(items.len()) })
}
