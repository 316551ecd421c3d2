fn open_account(
    conn: &mut PgConnection,
    customer: &Customer,
    params: &NewAccount,
) -> QueryResult<Account> {
    ::diesel_idempotent::__private::get_or_create_named(
        ::core::concat!(::core::module_path!(), "::", "open_account"),
        conn,
        |conn| ::core::result::Result::Ok(
            (find_account(conn, customer.id, params.bank_id))?,
        ),
        |conn| -> QueryResult<Account> { insert_account(conn, customer, params) },
    )
}
