/// Creates a payment.
pub async fn create_payment(
    conn: &mut AsyncPgConnection,
    key: &str,
    req: &NewPayment,
) -> Result<Payment, AppError> {
    ::diesel_idempotent::__private::require_async! {
        let __idempotent_fingerprint =
        ::diesel_idempotent::__private::Fingerprint::builder(); let
        __idempotent_fingerprint =
        ::diesel_idempotent::__private::fingerprint_argument(__idempotent_fingerprint,
        "req", & (req),); let (__idempotent_fingerprint, __idempotent_key) =
        ::diesel_idempotent::__private::key(__idempotent_fingerprint, & (key)); let
        __idempotent_fingerprint = __idempotent_fingerprint.finish(); let
        __idempotent_call = ::diesel_idempotent::__private::Call::new("payments.create",
        & __idempotent_key).ttl(::diesel_idempotent::__private::Ttl::from_secs(86400))
        .fingerprint(__idempotent_fingerprint);
        ::diesel_idempotent::__private::Call::run_response_async(__idempotent_call, conn,
        async | conn | -> Result < Payment, AppError > { let payment = insert(conn, req).
        await ?; Ok(payment) }). await
    }
}
