use diesel::prelude::*;
use diesel_idempotent::idempotent;

#[derive(serde::Serialize, serde::Deserialize)]
pub struct Payment {
    pub id: i64,
}

#[derive(serde::Serialize)]
pub struct NewPayment {
    pub amount: i64,
}

#[derive(Debug)]
pub struct AppError;

impl From<diesel_idempotent::Error> for AppError {
    fn from(_: diesel_idempotent::Error) -> Self {
        AppError
    }
}

/// Creates a payment once per key.
#[idempotent(key = key, ttl = "24h", name = "payments.create")]
#[must_use = "check the result"]
pub fn create_payment(conn: &mut SqliteConnection, key: &str, req: &NewPayment) -> Result<Payment, AppError> {
    let _ = conn;
    Ok(Payment { id: req.amount })
}

fn main() {
    let mut conn = SqliteConnection::establish(":memory:").unwrap();
    diesel_idempotent::migrate(&mut conn).unwrap();
    let payment = create_payment(&mut conn, "k", &NewPayment { amount: 3 }).unwrap();
    assert_eq!(payment.id, 3);
}
