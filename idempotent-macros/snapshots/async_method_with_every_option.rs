pub(crate) async fn charge(
    &self,
    db: &mut AsyncPgConnection,
    tenant: TenantId,
    req: ChargeRequest,
    trace: &Span,
) -> Result<Outcome<Receipt>, AppError> {
    ::diesel_idempotent::__private::require_async! {
        let __idempotent_fingerprint =
        ::diesel_idempotent::__private::Fingerprint::builder(); let
        __idempotent_fingerprint =
        ::diesel_idempotent::__private::fingerprint_argument(__idempotent_fingerprint,
        "req", & (req),); let (__idempotent_fingerprint, __idempotent_key) =
        ::diesel_idempotent::__private::key(__idempotent_fingerprint, & (req
        .idempotency_key.as_str())); let __idempotent_fingerprint =
        __idempotent_fingerprint.finish(); let __idempotent_scope =
        ::diesel_idempotent::__private::scope(& (tenant)); let __idempotent_call =
        ::diesel_idempotent::__private::Call::new("svc.charge", & __idempotent_key)
        .scope(& __idempotent_scope)
        .ttl(::diesel_idempotent::__private::Ttl::from_secs(900)).clock(& (self.clock))
        .on_conflict(::diesel_idempotent::__private::OnConflict::Reject)
        .mode(::diesel_idempotent::__private::Mode::Optimistic)
        .replay(::diesel_idempotent::__private::Replay::ReadFirst)
        .max_response_bytes(65536)
        .abandon_after(::core::time::Duration::from_millis(90000))
        .fingerprint(__idempotent_fingerprint);
        ::diesel_idempotent::__private::Call::run_response_async(__idempotent_call, db,
        async | db | -> Result < Outcome < Receipt >, AppError > { if req.amount == 0 {
        return Err(AppError::Empty); } self.gateway.charge(db, & req). await
        .map(Into::into) }). await
    }
}
