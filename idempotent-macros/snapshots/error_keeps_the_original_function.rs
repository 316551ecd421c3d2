::core::compile_error! {
    "invalid ttl \"forever\": expected number at 0; write it like \"30s\", \"15m\", \"24h\" or \"7d\""
}
fn create(conn: &mut PgConnection, key: &str) -> Result<u32, AppError> {
    Ok(1)
}
