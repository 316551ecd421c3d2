async fn open_account(
    conn: &mut AsyncPgConnection,
    customer: &Customer,
    params: &NewAccount,
) -> QueryResult<Account> {
    ::diesel_idempotent::__private::require_async! {
        ::diesel_idempotent::__private::get_or_create_named_async(::core::concat!(::core::module_path!(),
        "::", "open_account"), conn, async | conn |
        ::core::result::Result::Ok((find_account(conn, customer.id, params.bank_id)).
        await ?), async | conn | -> QueryResult < Account > { insert_account(conn,
        customer, params). await }). await
    }
}
