fn run<'a, C, T, const N: usize>(
    conn: &mut C,
    key: &'a str,
    items: [T; N],
) -> Result<usize, AppError>
where
    C: IdempotentConnection,
    T: Serialize,
{
    let __idempotent_fingerprint = ::my_app::idempotency::__private::Fingerprint::builder();
    let __idempotent_fingerprint = ::my_app::idempotency::__private::argument_must_be_serializable_or_skipped(
        __idempotent_fingerprint,
        &(items),
    );
    let __idempotent_fingerprint = __idempotent_fingerprint.finish();
    let __idempotent_key = ::my_app::idempotency::__private::key(&(key));
    ::my_app::idempotency::__private::Call::new(
            ::core::concat!(::core::module_path!(), "::", "run"),
            &__idempotent_key,
        )
        .ttl(::my_app::idempotency::__private::Ttl::from_secs(86400u64))
        .fingerprint(__idempotent_fingerprint)
        .run_response(conn, |conn| -> Result<usize, AppError> { Ok(items.len()) })
}
