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
    let __idempotent_fingerprint = ::diesel_idempotent::__private::Fingerprint::builder();
    let __idempotent_fingerprint = ::diesel_idempotent::__private::fingerprint_argument(
        __idempotent_fingerprint,
        "event",
        &(event),
    );
    let __idempotent_fingerprint = ::diesel_idempotent::__private::fingerprint_argument(
        __idempotent_fingerprint,
        "tags",
        &(tags),
    );
    let __idempotent_fingerprint = ::diesel_idempotent::__private::type_name_for_generic_argument::<
        E,
    >(__idempotent_fingerprint);
    let __idempotent_fingerprint = ::diesel_idempotent::__private::fingerprint_argument(
        __idempotent_fingerprint,
        "N",
        &N,
    );
    let __idempotent_fingerprint = __idempotent_fingerprint.finish();
    let __idempotent_key = ::diesel_idempotent::__private::hashed_key(
        &__idempotent_fingerprint,
    );
    ::diesel_idempotent::__private::Call::new("events.apply", &__idempotent_key)
        .pattern(::diesel_idempotent::__private::Pattern::Hash)
        .ttl(::diesel_idempotent::__private::Ttl::from_millis(1500))
        .fingerprint(__idempotent_fingerprint)
        .run_response(conn, |conn| -> Result<(), AppError> { Ok(()) })
}
