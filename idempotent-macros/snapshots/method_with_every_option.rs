pub(crate) fn charge(
    &self,
    db: &mut PgConnection,
    tenant: TenantId,
    req: ChargeRequest,
    trace: &Span,
) -> Result<Outcome<Receipt>, AppError> {
    let __idempotent_fingerprint = ::diesel_idempotent::__private::Fingerprint::builder();
    let __idempotent_fingerprint = ::diesel_idempotent::__private::fingerprint_argument(
        __idempotent_fingerprint,
        "req",
        &(req),
    );
    let (__idempotent_fingerprint, __idempotent_key) = ::diesel_idempotent::__private::key(
        __idempotent_fingerprint,
        &(req.idempotency_key.as_str()),
    );
    let __idempotent_fingerprint = __idempotent_fingerprint.finish();
    let __idempotent_scope = ::diesel_idempotent::__private::scope(&(tenant));
    ::diesel_idempotent::__private::Call::new("svc.charge", &__idempotent_key)
        .scope(&__idempotent_scope)
        .ttl(::diesel_idempotent::__private::Ttl::from_secs(900))
        .clock(&(self.clock))
        .on_conflict(::diesel_idempotent::__private::OnConflict::Reject)
        .mode(::diesel_idempotent::__private::Mode::Optimistic)
        .replay(::diesel_idempotent::__private::Replay::ReadFirst)
        .max_response_bytes(65536)
        .fingerprint(__idempotent_fingerprint)
        .run_response(
            db,
            |db| -> Result<Outcome<Receipt>, AppError> {
                if req.amount == 0 {
                    return Err(AppError::Empty);
                }
                self.gateway.charge(db, &req).map(Into::into)
            },
        )
}
