async fn record_click<C>(
    conn: &mut C,
    event: &ClickEvent,
    trace: TraceId,
) -> Result<(), AppError>
where
    C: AsyncIdempotentConnection,
{
    ::diesel_idempotent::__private::require_async! {
        let __idempotent_fingerprint =
        ::diesel_idempotent::__private::Fingerprint::builder(); let
        __idempotent_fingerprint =
        ::diesel_idempotent::__private::fingerprint_argument(__idempotent_fingerprint,
        "event", & (event),); let __idempotent_fingerprint = __idempotent_fingerprint
        .finish(); let __idempotent_key = ::diesel_idempotent::__private::hashed_key(&
        __idempotent_fingerprint); let __idempotent_call =
        ::diesel_idempotent::__private::Call::new("analytics.click", & __idempotent_key)
        .pattern(::diesel_idempotent::__private::Pattern::Hash)
        .ttl(::diesel_idempotent::__private::Ttl::from_secs(604800))
        .fingerprint(__idempotent_fingerprint);
        ::diesel_idempotent::__private::Call::run_response_async(__idempotent_call, conn,
        async | conn | -> Result < (), AppError > { Ok(()) }). await
    }
}
